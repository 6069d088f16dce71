//! The gateway's use cases, free of gRPC. A mutating use case is split in two: its
//! [`Prepared`] identity (what the protocol claims and stores) and its work (state rules
//! against Klarna's view, then the Klarna call under the operation's deterministic key), which
//! the protocol runs at most once. Reads are plain calls.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use refund_gateway_domain::{
    Caller, ExtendDueDate, ExtendDueDateOption, ExtendDueDateOptions, ExtendDueDateOptionsQuery,
    GatewayError, KlarnaApi, KlarnaError, KlarnaRefund, NewOperation, OperationId, Order,
    OrderQuery, Refund, RefundOrder, RefundQuery, ReleaseAuthorization, ResourceRef, Rpc,
    Violations, rules,
};

use crate::protocol::{AnswerContext, KlarnaCall, encoding};

/// The configured Klarna accounts, by name.
#[derive(Debug, Clone)]
pub struct Accounts {
    by_name: BTreeMap<String, Arc<dyn KlarnaApi>>,
}

impl Accounts {
    /// Accounts from (name, client) pairs.
    pub fn new(accounts: impl IntoIterator<Item = (String, Arc<dyn KlarnaApi>)>) -> Self {
        Self {
            by_name: accounts.into_iter().collect(),
        }
    }

    /// The account a request names; an empty name means the only account, when there is
    /// exactly one.
    pub fn resolve(&self, name: Option<&str>) -> Result<(&str, &Arc<dyn KlarnaApi>), GatewayError> {
        let found = match name {
            Some(name) => self.by_name.get_key_value(name),
            None if self.by_name.len() == 1 => self.by_name.iter().next(),
            None => {
                return Err(Violations::single(
                    "klarna_account",
                    format!(
                        "is required: the gateway has several accounts ({})",
                        self.names().join(", ")
                    ),
                )
                .into());
            }
        };
        found.map(|(n, c)| (n.as_str(), c)).ok_or_else(|| {
            Violations::single(
                "klarna_account",
                format!(
                    "unknown account {:?}; configured: {}",
                    name.unwrap_or_default(),
                    self.names().join(", ")
                ),
            )
            .into()
        })
    }

    /// The client of account `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn KlarnaApi>> {
        self.by_name.get(name).cloned()
    }

    fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }
}

/// The result of a refund (or of its validation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundOutcome {
    /// The operation.
    pub operation_id: OperationId,
    /// Klarna's refund id; `None` for validate_only.
    pub refund_id: Option<String>,
    /// Klarna's correlation id, when it sent one.
    pub correlation_id: Option<String>,
    /// The reference sent (or that would be sent) to Klarna.
    pub reference: String,
}

/// The result of a release or a due-date extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptOutcome {
    /// The operation.
    pub operation_id: OperationId,
    /// Klarna's correlation id, when it sent one.
    pub correlation_id: Option<String>,
}

/// A mutating operation ready for the protocol: what to claim, and the work to run once.
#[derive(Debug)]
pub struct Prepared<W> {
    /// The operation to claim.
    pub new: NewOperation,
    /// State rules and the Klarna call.
    pub work: W,
    /// What the work leaves for its answer.
    pub context: AnswerContext,
}

/// The use cases.
#[derive(Debug, Clone)]
pub struct Gateway {
    accounts: Accounts,
}

/// A failed Klarna call about `resource`. What a failed mutation proves (final, unknown, or
/// nothing happened) is not decided here but by the protocol, from all its attempts.
fn klarna_error(resource: ResourceRef) -> impl FnOnce(KlarnaError) -> GatewayError {
    move |error| GatewayError::Klarna { error, resource }
}

#[allow(clippy::too_many_arguments)]
fn new_operation(
    caller: &Caller,
    rpc: Rpc,
    key: &refund_gateway_domain::IdempotencyKey,
    account: &str,
    call: &KlarnaCall,
    expected_currency: Option<&str>,
    capture_id: Option<String>,
    amount: Option<i64>,
    reference: Option<String>,
) -> NewOperation {
    let (resource_kind, resource_id) = call.serialized_on();
    NewOperation {
        operation_id: OperationId::derive(caller, rpc, key),
        caller: caller.clone(),
        rpc,
        idempotency_key: key.clone(),
        fingerprint: encoding::fingerprint(rpc, account, call, expected_currency),
        klarna_account: account.to_owned(),
        order_id: call.order_id().to_string(),
        resource_kind,
        resource_id,
        capture_id,
        amount,
        currency: expected_currency.map(str::to_owned),
        reference,
        klarna_request: encoding::encode_call(call),
        trace_id: None,
    }
}

impl Gateway {
    /// A gateway over `accounts`.
    pub fn new(accounts: Accounts) -> Self {
        Self { accounts }
    }

    /// The accounts.
    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// Prepares a refund: its identity, and work that checks the state rules and sends it.
    pub fn refund_order(
        &self,
        caller: &Caller,
        cmd: RefundOrder,
    ) -> Result<
        Prepared<impl Future<Output = Result<RefundOutcome, GatewayError>> + Send + 'static>,
        GatewayError,
    > {
        let (account, klarna) = self.accounts.resolve(cmd.klarna_account.as_deref())?;
        let (account, klarna) = (account.to_owned(), klarna.clone());
        let op = OperationId::derive(caller, Rpc::RefundOrder, &cmd.idempotency_key);
        let reference = cmd.reference.clone().unwrap_or_else(|| op.to_string());
        let call = KlarnaCall::CreateRefund {
            order_id: cmd.order_id.clone(),
            refund: KlarnaRefund {
                refunded_amount: cmd.refunded_amount,
                description: cmd.description.clone(),
                reference: reference.clone(),
                order_lines: cmd.order_lines.clone(),
            },
        };
        let new = new_operation(
            caller,
            Rpc::RefundOrder,
            &cmd.idempotency_key,
            &account,
            &call,
            cmd.currency.as_ref().map(|c| c.as_str()),
            None,
            Some(cmd.refunded_amount.minor_units()),
            Some(reference.clone()),
        );
        let work = async move {
            check_refund_rules(klarna.as_ref(), &cmd).await?;
            let accepted = call
                .send(klarna.as_ref(), &op)
                .await
                .map_err(klarna_error(ResourceRef::Order(cmd.order_id.to_string())))?;
            tracing::info!(
                operation_id = %op,
                order_id = %cmd.order_id,
                refund_id = accepted.refund_id.as_deref().unwrap_or(""),
                refunded_amount = cmd.refunded_amount.minor_units(),
                correlation_id = accepted.correlation_id.as_deref().unwrap_or(""),
                "refunded"
            );
            Ok(RefundOutcome {
                operation_id: op,
                refund_id: accepted.refund_id,
                correlation_id: accepted.correlation_id,
                reference,
            })
        };
        Ok(Prepared {
            new,
            work,
            context: AnswerContext::default(),
        })
    }

    /// Checks a refund (`validate_only`): every rule, reading the order if a rule needs it,
    /// and sends nothing.
    pub async fn validate_refund(
        &self,
        caller: &Caller,
        cmd: RefundOrder,
    ) -> Result<RefundOutcome, GatewayError> {
        let (_, klarna) = self.accounts.resolve(cmd.klarna_account.as_deref())?;
        let op = OperationId::derive(caller, Rpc::RefundOrder, &cmd.idempotency_key);
        check_refund_rules(klarna.as_ref(), &cmd).await?;
        Ok(RefundOutcome {
            operation_id: op,
            refund_id: None,
            correlation_id: None,
            reference: cmd.reference.unwrap_or_else(|| op.to_string()),
        })
    }

    /// Prepares the release of an order's remaining authorization.
    pub fn release_authorization(
        &self,
        caller: &Caller,
        cmd: ReleaseAuthorization,
    ) -> Result<
        Prepared<impl Future<Output = Result<ReceiptOutcome, GatewayError>> + Send + 'static>,
        GatewayError,
    > {
        let (account, klarna) = self.accounts.resolve(cmd.klarna_account.as_deref())?;
        let klarna = klarna.clone();
        let call = KlarnaCall::ReleaseRemainingAuthorization {
            order_id: cmd.order_id.clone(),
        };
        let new = new_operation(
            caller,
            Rpc::ReleaseAuthorization,
            &cmd.idempotency_key,
            account,
            &call,
            None,
            None,
            None,
            None,
        );
        let op = new.operation_id;
        let work = async move {
            let accepted = call
                .send(klarna.as_ref(), &op)
                .await
                .map_err(klarna_error(ResourceRef::Order(cmd.order_id.to_string())))?;
            tracing::info!(operation_id = %op, order_id = %cmd.order_id, "authorization released");
            Ok(ReceiptOutcome {
                operation_id: op,
                correlation_id: accepted.correlation_id,
            })
        };
        Ok(Prepared {
            new,
            work,
            context: AnswerContext::default(),
        })
    }

    /// Prepares a due-date extension: the work refuses days Klarna did not offer without
    /// sending the PATCH, and returns the offer taken with its currency.
    #[allow(clippy::type_complexity)]
    pub fn extend_due_date(
        &self,
        caller: &Caller,
        cmd: ExtendDueDate,
    ) -> Result<
        Prepared<
            impl Future<Output = Result<(ReceiptOutcome, ExtendDueDateOption, String), GatewayError>>
            + Send
            + 'static,
        >,
        GatewayError,
    > {
        let (account, klarna) = self.accounts.resolve(cmd.klarna_account.as_deref())?;
        let klarna = klarna.clone();
        let call = KlarnaCall::ExtendDueDate {
            order_id: cmd.order_id.clone(),
            capture_id: cmd.capture_id.clone(),
            number_of_days: cmd.number_of_days,
        };
        let new = new_operation(
            caller,
            Rpc::ExtendDueDate,
            &cmd.idempotency_key,
            account,
            &call,
            None,
            Some(cmd.capture_id.to_string()),
            None,
            None,
        );
        let op = new.operation_id;
        let context = AnswerContext::default();
        let answer_context = context.clone();
        let work = async move {
            let capture = ResourceRef::Capture {
                order_id: cmd.order_id.to_string(),
                capture_id: cmd.capture_id.to_string(),
            };
            let offered = klarna
                .get_extend_due_date_options(&cmd.order_id, &cmd.capture_id)
                .await
                .map_err(klarna_error(capture.clone()))?;
            let option = rules::check_extension_offered(&cmd, &offered)?;
            answer_context.set(encoding::encode_extension_fee(
                option.amount,
                &offered.currency,
            ));
            let accepted = call
                .send(klarna.as_ref(), &op)
                .await
                .map_err(klarna_error(capture))?;
            tracing::info!(
                operation_id = %op,
                order_id = %cmd.order_id,
                capture_id = %cmd.capture_id,
                number_of_days = option.number_of_days,
                "due date extended"
            );
            Ok((
                ReceiptOutcome {
                    operation_id: op,
                    correlation_id: accepted.correlation_id,
                },
                option,
                offered.currency,
            ))
        };
        Ok(Prepared { new, work, context })
    }

    /// Lists the due-date extensions offered for a capture.
    pub async fn extend_due_date_options(
        &self,
        q: ExtendDueDateOptionsQuery,
    ) -> Result<ExtendDueDateOptions, GatewayError> {
        let (_, klarna) = self.accounts.resolve(q.klarna_account.as_deref())?;
        klarna
            .get_extend_due_date_options(&q.order_id, &q.capture_id)
            .await
            .map_err(klarna_error(ResourceRef::Capture {
                order_id: q.order_id.to_string(),
                capture_id: q.capture_id.to_string(),
            }))
    }

    /// Reads an order.
    pub async fn order(&self, q: OrderQuery) -> Result<Order, GatewayError> {
        let (_, klarna) = self.accounts.resolve(q.klarna_account.as_deref())?;
        klarna
            .get_order(&q.order_id)
            .await
            .map_err(klarna_error(ResourceRef::Order(q.order_id.to_string())))
    }

    /// Reads a refund.
    pub async fn refund(&self, q: RefundQuery) -> Result<Refund, GatewayError> {
        let (_, klarna) = self.accounts.resolve(q.klarna_account.as_deref())?;
        klarna
            .get_refund(&q.order_id, &q.refund_id)
            .await
            .map_err(klarna_error(ResourceRef::Refund {
                order_id: q.order_id.to_string(),
                refund_id: q.refund_id.to_string(),
            }))
    }
}

/// The refund's state rules, reading the order only when a rule needs it.
async fn check_refund_rules(klarna: &dyn KlarnaApi, cmd: &RefundOrder) -> Result<(), GatewayError> {
    if cmd.needs_order() {
        let order = klarna
            .get_order(&cmd.order_id)
            .await
            .map_err(klarna_error(ResourceRef::Order(cmd.order_id.to_string())))?;
        rules::check_refund(cmd, &order)?;
    }
    Ok(())
}
