//! The gateway's use cases, free of gRPC: each takes a validated domain command and the
//! caller, runs the state rules against Klarna's view where they need it, and makes the
//! Klarna call under the operation's deterministic idempotency key.

use std::collections::BTreeMap;
use std::sync::Arc;

use refund_gateway_domain::{
    Caller, ExtendDueDate, ExtendDueDateOption, ExtendDueDateOptions, ExtendDueDateOptionsQuery,
    GatewayError, KlarnaApi, KlarnaError, KlarnaRefund, OperationId, Order, OrderQuery, Refund,
    RefundOrder, RefundQuery, ReleaseAuthorization, ResourceRef, Rpc, Violations, rules,
};

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

/// The use cases.
#[derive(Debug, Clone)]
pub struct Gateway {
    accounts: Accounts,
}

/// Maps a failed Klarna call of a mutating operation: an ambiguous outcome becomes
/// `OutcomePending`, never a failure.
fn mutation_error(
    op: OperationId,
    resource: ResourceRef,
) -> impl FnOnce(KlarnaError) -> GatewayError {
    move |error| {
        if error.outcome_unknown() {
            GatewayError::OutcomePending {
                operation_id: op.to_string(),
                error,
            }
        } else {
            GatewayError::Klarna { error, resource }
        }
    }
}

fn read_error(resource: ResourceRef) -> impl FnOnce(KlarnaError) -> GatewayError {
    move |error| GatewayError::Klarna { error, resource }
}

impl Gateway {
    /// A gateway over `accounts`.
    pub fn new(accounts: Accounts) -> Self {
        Self { accounts }
    }

    /// Refunds (or, with `validate_only`, checks) `cmd` for `caller`.
    pub async fn refund_order(
        &self,
        caller: &Caller,
        cmd: RefundOrder,
    ) -> Result<RefundOutcome, GatewayError> {
        let (_, klarna) = self.accounts.resolve(cmd.klarna_account.as_deref())?;
        let op = OperationId::derive(caller, Rpc::RefundOrder, &cmd.idempotency_key);
        let order_ref = ResourceRef::Order(cmd.order_id.to_string());
        if cmd.needs_order() {
            let order = klarna
                .get_order(&cmd.order_id)
                .await
                .map_err(read_error(order_ref.clone()))?;
            rules::check_refund(&cmd, &order)?;
        }
        let reference = cmd.reference.clone().unwrap_or_else(|| op.to_string());
        if cmd.validate_only {
            return Ok(RefundOutcome {
                operation_id: op,
                refund_id: None,
                correlation_id: None,
                reference,
            });
        }
        let refund = KlarnaRefund {
            refunded_amount: cmd.refunded_amount,
            description: cmd.description,
            reference: reference.clone(),
            order_lines: cmd.order_lines,
        };
        let created = klarna
            .create_refund(&cmd.order_id, &refund, &op)
            .await
            .map_err(mutation_error(op, order_ref))?;
        Ok(RefundOutcome {
            operation_id: op,
            refund_id: Some(created.refund_id),
            correlation_id: created.correlation_id,
            reference,
        })
    }

    /// Releases the remaining authorization of an order.
    pub async fn release_authorization(
        &self,
        caller: &Caller,
        cmd: ReleaseAuthorization,
    ) -> Result<ReceiptOutcome, GatewayError> {
        let (_, klarna) = self.accounts.resolve(cmd.klarna_account.as_deref())?;
        let op = OperationId::derive(caller, Rpc::ReleaseAuthorization, &cmd.idempotency_key);
        let receipt = klarna
            .release_remaining_authorization(&cmd.order_id, &op)
            .await
            .map_err(mutation_error(
                op,
                ResourceRef::Order(cmd.order_id.to_string()),
            ))?;
        Ok(ReceiptOutcome {
            operation_id: op,
            correlation_id: receipt.correlation_id,
        })
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
            .map_err(read_error(ResourceRef::Capture {
                order_id: q.order_id.to_string(),
                capture_id: q.capture_id.to_string(),
            }))
    }

    /// Extends a capture's due date by an offered number of days; refuses days Klarna did
    /// not offer without sending the PATCH. Returns the offer taken and its currency.
    pub async fn extend_due_date(
        &self,
        caller: &Caller,
        cmd: ExtendDueDate,
    ) -> Result<(ReceiptOutcome, ExtendDueDateOption, String), GatewayError> {
        let (_, klarna) = self.accounts.resolve(cmd.klarna_account.as_deref())?;
        let op = OperationId::derive(caller, Rpc::ExtendDueDate, &cmd.idempotency_key);
        let capture = ResourceRef::Capture {
            order_id: cmd.order_id.to_string(),
            capture_id: cmd.capture_id.to_string(),
        };
        let offered = klarna
            .get_extend_due_date_options(&cmd.order_id, &cmd.capture_id)
            .await
            .map_err(read_error(capture.clone()))?;
        let option = rules::check_extension_offered(&cmd, &offered)?;
        let receipt = klarna
            .extend_due_date(&cmd.order_id, &cmd.capture_id, cmd.number_of_days, &op)
            .await
            .map_err(mutation_error(op, capture))?;
        Ok((
            ReceiptOutcome {
                operation_id: op,
                correlation_id: receipt.correlation_id,
            },
            option,
            offered.currency,
        ))
    }

    /// Reads an order.
    pub async fn order(&self, q: OrderQuery) -> Result<Order, GatewayError> {
        let (_, klarna) = self.accounts.resolve(q.klarna_account.as_deref())?;
        klarna
            .get_order(&q.order_id)
            .await
            .map_err(read_error(ResourceRef::Order(q.order_id.to_string())))
    }

    /// Reads a refund.
    pub async fn refund(&self, q: RefundQuery) -> Result<Refund, GatewayError> {
        let (_, klarna) = self.accounts.resolve(q.klarna_account.as_deref())?;
        klarna
            .get_refund(&q.order_id, &q.refund_id)
            .await
            .map_err(read_error(ResourceRef::Refund {
                order_id: q.order_id.to_string(),
                refund_id: q.refund_id.to_string(),
            }))
    }
}
