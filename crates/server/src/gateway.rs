//! The gateway's use cases, free of gRPC. A mutating use case is split in two: its
//! [`Prepared`] identity (what the protocol claims and stores) and its work (state rules
//! against Klarna's view, then the Klarna call under the operation's deterministic key), which
//! the protocol runs at most once. Reads are plain calls.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use refund_gateway_domain::{
    Caller, ExtendDueDate, ExtendDueDateOption, ExtendDueDateOptions, ExtendDueDateOptionsQuery,
    GatewayError, IdempotencyKey, KlarnaApi, KlarnaApiKind, KlarnaError, KlarnaReference,
    KlarnaRefund, LinkOutcome, NewOperation, OperationId, OperationStore, Order, OrderId,
    OrderQuery, OrderReference, PartnerRefund, PaymentTransaction, PaymentsApi, Precondition,
    PreconditionReason, ReceiptReference, ReferenceKind, ReferenceQuery, Refund, RefundCapture,
    RefundOrder, RefundQuery, RefundTransaction, ReleaseAuthorization, ResourceKind, ResourceRef,
    Route, RouteRequest, RouteSource, Routing, RoutingConfigError, Rpc, Store, StoreId,
    TransactionQuery, rules,
};

use tracing::Instrument;

use crate::protocol::{AnswerContext, KlarnaCall, encoding};

/// One configured Klarna account: an Order Management merchant account or a partner
/// account of the Payments API.
#[derive(Debug, Clone)]
pub enum KlarnaAccount {
    /// Order Management (`kind = "order_management"`, the default).
    OrderManagement(Arc<dyn KlarnaApi>),
    /// The partner Payments API (`kind = "partner"`).
    Partner(Arc<dyn PaymentsApi>),
}

impl KlarnaAccount {
    /// The API the account speaks.
    pub fn api(&self) -> KlarnaApiKind {
        match self {
            Self::OrderManagement(_) => KlarnaApiKind::OrderManagement,
            Self::Partner(_) => KlarnaApiKind::Payments,
        }
    }
}

/// The configured Klarna accounts, by name, and how requests are routed to them.
#[derive(Debug, Clone)]
pub struct Accounts {
    by_name: BTreeMap<String, KlarnaAccount>,
    routing: Arc<Routing>,
}

impl Accounts {
    /// Accounts from (name, account) pairs, without stores or routes.
    pub fn new(accounts: impl IntoIterator<Item = (String, KlarnaAccount)>) -> Self {
        let by_name: BTreeMap<String, KlarnaAccount> = accounts.into_iter().collect();
        let routing = Routing::accounts_only(by_name.iter().map(|(n, a)| (n.clone(), a.api())));
        Self {
            by_name,
            routing: Arc::new(routing),
        }
    }

    /// These accounts with the configured stores and routes, which must name them.
    pub fn with_routing(
        self,
        stores: Vec<Store>,
        routes: Vec<Route>,
    ) -> Result<Self, RoutingConfigError> {
        let kinds = self.by_name.iter().map(|(n, a)| (n.clone(), a.api()));
        let routing = Routing::new(kinds, stores, routes)?;
        Ok(Self {
            routing: Arc::new(routing),
            ..self
        })
    }

    /// The account a request naming `name` (or none) goes to; see [`Self::route`].
    pub fn resolve(
        &self,
        name: Option<&str>,
        api: KlarnaApiKind,
    ) -> Result<(&str, &KlarnaAccount), GatewayError> {
        self.route(
            RouteRequest {
                account: name,
                ..RouteRequest::default()
            },
            api,
        )
    }

    /// The account `request` goes to for an RPC speaking `api`: named, its store's, the
    /// first matching route's, or the only one of that kind ([`Routing::route`]). An
    /// account of the other kind is refused (`WRONG_ACCOUNT_KIND`) before anything is sent.
    pub fn route(
        &self,
        request: RouteRequest<'_>,
        api: KlarnaApiKind,
    ) -> Result<(&str, &KlarnaAccount), GatewayError> {
        let (name, source) = self.routing.route(request, api)?;
        let Some((name, account)) = self.by_name.get_key_value(name) else {
            return Err(GatewayError::Internal(format!(
                "account {name} is routed to but not configured"
            )));
        };
        if source != RouteSource::Named {
            tracing::debug!(account = %name, route = %source.describe(), "request routed");
        }
        Ok((name.as_str(), account))
    }

    /// The stores and routes.
    pub fn routing(&self) -> &Routing {
        &self.routing
    }

    /// The Order Management client of the account a request names (see [`Self::resolve`]).
    pub fn order_management(
        &self,
        name: Option<&str>,
    ) -> Result<(&str, &Arc<dyn KlarnaApi>), GatewayError> {
        match self.resolve(name, KlarnaApiKind::OrderManagement)? {
            (name, KlarnaAccount::OrderManagement(client)) => Ok((record_account(name), client)),
            (name, KlarnaAccount::Partner(_)) => Err(GatewayError::Internal(format!(
                "account {name} changed kind"
            ))),
        }
    }

    /// The Payments API client of the partner account a request names.
    pub fn partner(
        &self,
        name: Option<&str>,
    ) -> Result<(&str, &Arc<dyn PaymentsApi>), GatewayError> {
        match self.resolve(name, KlarnaApiKind::Payments)? {
            (name, KlarnaAccount::Partner(client)) => Ok((record_account(name), client)),
            (name, KlarnaAccount::OrderManagement(_)) => Err(GatewayError::Internal(format!(
                "account {name} changed kind"
            ))),
        }
    }

    /// The only configured account, when there is exactly one.
    pub fn sole(&self) -> Option<&str> {
        let mut names = self.by_name.keys();
        match (names.next(), names.next()) {
            (Some(name), None) => Some(name.as_str()),
            _ => None,
        }
    }

    /// The account `name`.
    pub fn get(&self, name: &str) -> Option<KlarnaAccount> {
        self.by_name.get(name).cloned()
    }

    /// Every account, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &KlarnaAccount)> {
        self.by_name.iter().map(|(n, a)| (n.as_str(), a))
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
    /// Read by the partner limits, which count the gateway's own operations on a transaction.
    store: Arc<dyn OperationStore>,
    /// Learns the references of orders refunded without being read.
    learner: Arc<ReferenceLearner>,
}

/// The orders (account, order id) this process has seen in the reference index, or linked
/// there itself, so that a refund of an order refunded before costs no read of the index. A
/// cache: it forgets everything at once when full, and a miss costs one read.
#[derive(Debug, Default)]
struct IndexedOrders {
    known: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
}

impl IndexedOrders {
    /// Most orders remembered (a few MiB at most).
    const CAPACITY: usize = 65_536;

    fn contains(&self, account: &str, order_id: &str) -> bool {
        self.known
            .lock()
            .map(|k| k.contains(&(account.to_owned(), order_id.to_owned())))
            .unwrap_or(false)
    }

    fn insert(&self, account: &str, order_id: &str) {
        if let Ok(mut known) = self.known.lock() {
            if known.len() >= Self::CAPACITY {
                known.clear();
            }
            known.insert((account.to_owned(), order_id.to_owned()));
        }
    }
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
    key: &IdempotencyKey,
    account: &str,
    call: &KlarnaCall,
    expected_currency: Option<&str>,
    capture_id: Option<String>,
    amount: Option<i64>,
    reference: Option<String>,
) -> NewOperation {
    let (resource_kind, resource_id) = call.serialized_on();
    let klarna_request = encoding::encode_call(call);
    NewOperation {
        operation_id: OperationId::derive(caller, rpc, key),
        caller: caller.clone(),
        rpc,
        idempotency_key: key.clone(),
        fingerprint: encoding::fingerprint(rpc, account, &klarna_request, expected_currency),
        klarna_account: account.to_owned(),
        order_id: call.order_id().map(ToString::to_string).unwrap_or_default(),
        resource_kind,
        resource_id,
        capture_id,
        amount,
        currency: expected_currency.map(str::to_owned),
        reference,
        klarna_request,
        trace_id: None,
        traceparent: None,
    }
}

impl Gateway {
    /// A gateway over `accounts`, reading its own operations from `store`.
    pub fn new(accounts: Accounts, store: Arc<dyn OperationStore>) -> Self {
        Self {
            accounts,
            store,
            learner: Arc::default(),
        }
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
        let (account, klarna) = self
            .accounts
            .order_management(cmd.klarna_account.as_deref())?;
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
        let store = self.store.clone();
        let learner = self.learner.clone();
        let work = async move {
            let read = check_refund_rules(klarna.as_ref(), &cmd, (&store, &account)).await?;
            let accepted = call
                .send(&KlarnaAccount::OrderManagement(klarna.clone()), &op)
                .await
                .map_err(klarna_error(ResourceRef::Order(cmd.order_id.to_string())))?;
            if !read {
                learner.learn_after_refund(&store, &account, &klarna, &cmd.order_id);
            }
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
        let (account, klarna) = self
            .accounts
            .order_management(cmd.klarna_account.as_deref())?;
        let op = OperationId::derive(caller, Rpc::RefundOrder, &cmd.idempotency_key);
        check_refund_rules(klarna.as_ref(), &cmd, (&self.store, account)).await?;
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
        let (account, klarna) = self
            .accounts
            .order_management(cmd.klarna_account.as_deref())?;
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
                .send(&KlarnaAccount::OrderManagement(klarna.clone()), &op)
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
        let (account, klarna) = self
            .accounts
            .order_management(cmd.klarna_account.as_deref())?;
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
                .send(&KlarnaAccount::OrderManagement(klarna.clone()), &op)
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
        let (_, klarna) = self
            .accounts
            .order_management(q.klarna_account.as_deref())?;
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
        let (name, klarna) = self
            .accounts
            .order_management(q.klarna_account.as_deref())?;
        let order = klarna
            .get_order(&q.order_id)
            .await
            .map_err(klarna_error(ResourceRef::Order(q.order_id.to_string())))?;
        learn_references(&self.store, name, &order);
        Ok(order)
    }

    /// Reads a refund.
    pub async fn refund(&self, q: RefundQuery) -> Result<Refund, GatewayError> {
        let (_, klarna) = self
            .accounts
            .order_management(q.klarna_account.as_deref())?;
        klarna
            .get_refund(&q.order_id, &q.refund_id)
            .await
            .map_err(klarna_error(ResourceRef::Refund {
                order_id: q.order_id.to_string(),
                refund_id: q.refund_id.to_string(),
            }))
    }
}

/// In-store refunds by receipt: the index of order references (Klarna's Order Management API
/// cannot search by reference), kept in the operation store per account.
impl Gateway {
    /// Links `receipt` to `order_id` in the account `account` names: the order must exist at
    /// Klarna (its read is NOT_FOUND otherwise). Returns the account's name and whether the
    /// link is new; the same reference linked to another order is RECEIPT_ALREADY_LINKED.
    pub async fn link_receipt(
        &self,
        account: Option<&str>,
        receipt: ReceiptReference,
        order_id: OrderId,
        store_id: Option<StoreId>,
    ) -> Result<(String, bool), GatewayError> {
        let (name, klarna) = self.accounts.order_management(account)?;
        let order = klarna
            .get_order(&order_id)
            .await
            .map_err(klarna_error(ResourceRef::Order(order_id.to_string())))?;
        learn_references(&self.store, name, &order);
        let outcome = self
            .store
            .link_reference(OrderReference {
                klarna_account: name.to_owned(),
                kind: ReferenceKind::Receipt,
                reference: receipt.to_string(),
                order_id: order_id.to_string(),
                store_id: store_id.map(String::from),
                linked_at: time::OffsetDateTime::now_utc(),
            })
            .await
            .map_err(|e| GatewayError::StoreUnavailable(e.to_string()))?;
        match outcome {
            LinkOutcome::Linked => Ok((name.to_owned(), true)),
            LinkOutcome::AlreadyLinked => Ok((name.to_owned(), false)),
            LinkOutcome::LinkedElsewhere { order_id: other } => Err(Precondition {
                reason: PreconditionReason::ReceiptAlreadyLinked,
                subject: format!("receipts/{receipt}"),
                description: format!(
                    "receipt reference {receipt:?} is linked to order {other} of account {name:?}"
                ),
            }
            .into()),
        }
    }

    /// The order `query` names in the account `account` names (index only, nothing read):
    /// the account's name and the order id; REFERENCE_NOT_FOUND when the index has none.
    pub async fn order_of_reference(
        &self,
        account: Option<&str>,
        query: &ReferenceQuery,
    ) -> Result<(String, OrderId), GatewayError> {
        let (name, _) = self.accounts.order_management(account)?;
        let (kind, field, reference) = match query {
            ReferenceQuery::Receipt(r) => (ReferenceKind::Receipt, "receipt_reference", r.as_str()),
            ReferenceQuery::Klarna(k) => (ReferenceKind::Klarna, "klarna_reference", k.as_str()),
        };
        let found = self
            .store
            .find_reference(name, kind, reference)
            .await
            .map_err(|e| GatewayError::StoreUnavailable(e.to_string()))?;
        let not_found = || GatewayError::ReferenceNotFound {
            account: name.to_owned(),
            field,
            reference: reference.to_owned(),
        };
        let link = found.ok_or_else(not_found)?;
        // Written by the gateway from a valid id; a row that is not one is not an order.
        let order_id = OrderId::parse(&link.order_id).map_err(|_| not_found())?;
        Ok((name.to_owned(), order_id))
    }

    /// The order `query` names, read fresh from Klarna, with its account's name.
    pub async fn find_order(
        &self,
        account: Option<&str>,
        query: &ReferenceQuery,
    ) -> Result<(String, Order), GatewayError> {
        let (name, order_id) = self.order_of_reference(account, query).await?;
        let order = self
            .order(OrderQuery {
                klarna_account: Some(name.clone()),
                order_id,
            })
            .await?;
        Ok((name, order))
    }
}

/// Links the references of an order just read in `account` (`merchant_reference1` as its
/// receipt reference, `klarna_reference`), in the background: a read never waits for, or fails
/// on, the index. A reference already linked to another order keeps its first order.
fn learn_references(store: &Arc<dyn OperationStore>, account: &str, order: &Order) {
    let references = references_of(account, order);
    if references.is_empty() {
        return;
    }
    let store = store.clone();
    tokio::spawn(async move {
        link_references(store.as_ref(), references).await;
    });
}

/// The references of `order` worth linking in `account`: none when Klarna's order id or both
/// references are not valid.
fn references_of(account: &str, order: &Order) -> Vec<OrderReference> {
    let Ok(order_id) = OrderId::parse(&order.order_id) else {
        return Vec::new();
    };
    [
        (ReferenceKind::Receipt, order.merchant_reference1.as_str()),
        (ReferenceKind::Klarna, order.klarna_reference.as_str()),
    ]
    .into_iter()
    .filter_map(|(kind, text)| {
        let reference = match kind {
            ReferenceKind::Receipt => ReceiptReference::parse(text).ok()?.to_string(),
            ReferenceKind::Klarna => KlarnaReference::parse(text).ok()?.to_string(),
        };
        Some(OrderReference {
            klarna_account: account.to_owned(),
            kind,
            reference,
            order_id: order_id.to_string(),
            store_id: None,
            linked_at: time::OffsetDateTime::now_utc(),
        })
    })
    .collect()
}

/// Links each of `references`; true when the store took every one (linked now, before, or to
/// another order, which keeps it).
async fn link_references(store: &dyn OperationStore, references: Vec<OrderReference>) -> bool {
    let mut all = true;
    for reference in references {
        match store.link_reference(reference).await {
            Ok(LinkOutcome::LinkedElsewhere { order_id }) => {
                tracing::debug!(%order_id, "reference already linked to another order; kept");
            }
            Ok(_) => {}
            Err(e) => {
                all = false;
                tracing::debug!(error = %e, "order reference not indexed");
            }
        }
    }
    all
}

/// A partner refund (capture or transaction), as the shared part of both use cases sees it.
struct PartnerRefundCommand {
    rpc: Rpc,
    key: IdempotencyKey,
    account: Option<String>,
    transaction_id: refund_gateway_domain::PaymentTransactionId,
    capture_id: Option<refund_gateway_domain::PaymentCaptureId>,
    refund: PartnerRefund,
}

impl Gateway {
    /// Prepares a refund of one payment capture: its identity, and work that reads the
    /// transaction, checks the partner rules and sends it.
    pub fn refund_capture(
        &self,
        caller: &Caller,
        cmd: RefundCapture,
    ) -> Result<
        Prepared<impl Future<Output = Result<RefundOutcome, GatewayError>> + Send + 'static>,
        GatewayError,
    > {
        let op = OperationId::derive(caller, Rpc::RefundCapture, &cmd.idempotency_key);
        self.partner_refund(
            caller,
            PartnerRefundCommand {
                rpc: Rpc::RefundCapture,
                refund: capture_refund(&cmd, op),
                key: cmd.idempotency_key,
                account: cmd.klarna_account,
                transaction_id: cmd.transaction_id,
                capture_id: Some(cmd.capture_id),
            },
        )
    }

    /// Prepares a refund of a payment transaction by line items.
    pub fn refund_transaction(
        &self,
        caller: &Caller,
        cmd: RefundTransaction,
    ) -> Result<
        Prepared<impl Future<Output = Result<RefundOutcome, GatewayError>> + Send + 'static>,
        GatewayError,
    > {
        let op = OperationId::derive(caller, Rpc::RefundTransaction, &cmd.idempotency_key);
        self.partner_refund(
            caller,
            PartnerRefundCommand {
                rpc: Rpc::RefundTransaction,
                refund: transaction_refund(&cmd, op),
                key: cmd.idempotency_key,
                account: cmd.klarna_account,
                transaction_id: cmd.transaction_id,
                capture_id: None,
            },
        )
    }

    /// Checks a capture refund (`validate_only`): every rule, reading the transaction, and
    /// sends nothing.
    pub async fn validate_capture_refund(
        &self,
        caller: &Caller,
        cmd: RefundCapture,
    ) -> Result<RefundOutcome, GatewayError> {
        let op = OperationId::derive(caller, Rpc::RefundCapture, &cmd.idempotency_key);
        let refund = capture_refund(&cmd, op);
        self.validate_partner_refund(
            op,
            cmd.klarna_account.as_deref(),
            &cmd.transaction_id,
            Some(&cmd.capture_id),
            refund,
        )
        .await
    }

    /// Checks a transaction refund (`validate_only`) and sends nothing.
    pub async fn validate_transaction_refund(
        &self,
        caller: &Caller,
        cmd: RefundTransaction,
    ) -> Result<RefundOutcome, GatewayError> {
        let op = OperationId::derive(caller, Rpc::RefundTransaction, &cmd.idempotency_key);
        let refund = transaction_refund(&cmd, op);
        self.validate_partner_refund(
            op,
            cmd.klarna_account.as_deref(),
            &cmd.transaction_id,
            None,
            refund,
        )
        .await
    }

    /// Reads a payment transaction.
    pub async fn transaction(
        &self,
        q: TransactionQuery,
    ) -> Result<PaymentTransaction, GatewayError> {
        let (_, payments) = self.accounts.partner(q.klarna_account.as_deref())?;
        payments
            .get_transaction(&q.transaction_id)
            .await
            .map_err(klarna_error(ResourceRef::Transaction(
                q.transaction_id.to_string(),
            )))
    }

    async fn validate_partner_refund(
        &self,
        op: OperationId,
        account: Option<&str>,
        transaction_id: &refund_gateway_domain::PaymentTransactionId,
        capture_id: Option<&refund_gateway_domain::PaymentCaptureId>,
        refund: PartnerRefund,
    ) -> Result<RefundOutcome, GatewayError> {
        let (account, payments) = self.accounts.partner(account)?;
        check_partner_rules(
            payments.as_ref(),
            self.store.as_ref(),
            account,
            op,
            transaction_id,
            capture_id,
            &refund,
        )
        .await?;
        Ok(RefundOutcome {
            operation_id: op,
            refund_id: None,
            correlation_id: None,
            reference: refund.reference,
        })
    }

    fn partner_refund(
        &self,
        caller: &Caller,
        cmd: PartnerRefundCommand,
    ) -> Result<
        Prepared<impl Future<Output = Result<RefundOutcome, GatewayError>> + Send + 'static>,
        GatewayError,
    > {
        let (account, payments) = self.accounts.partner(cmd.account.as_deref())?;
        let (account, payments) = (account.to_owned(), payments.clone());
        let klarna = KlarnaAccount::Partner(payments.clone());
        let store = self.store.clone();
        let op = OperationId::derive(caller, cmd.rpc, &cmd.key);
        let reference = cmd.refund.reference.clone();
        let amount = cmd.refund.amount.minor_units();
        let currency = cmd.refund.currency.to_string();
        let transaction_id = cmd.transaction_id;
        let capture_id = cmd.capture_id;
        let call = match &capture_id {
            Some(capture_id) => KlarnaCall::RefundCapture {
                transaction_id: transaction_id.clone(),
                capture_id: capture_id.clone(),
                refund: cmd.refund.clone(),
            },
            None => KlarnaCall::RefundTransaction {
                transaction_id: transaction_id.clone(),
                refund: cmd.refund.clone(),
            },
        };
        let new = new_operation(
            caller,
            cmd.rpc,
            &cmd.key,
            &account,
            &call,
            Some(&currency),
            capture_id.as_ref().map(ToString::to_string),
            Some(amount),
            Some(reference.clone()),
        );
        let refund = cmd.refund;
        let work = async move {
            check_partner_rules(
                payments.as_ref(),
                store.as_ref(),
                &account,
                op,
                &transaction_id,
                capture_id.as_ref(),
                &refund,
            )
            .await?;
            let accepted = call
                .send(&klarna, &op)
                .await
                .map_err(klarna_error(call.resource()))?;
            tracing::info!(
                operation_id = %op,
                payment_transaction_id = %transaction_id,
                payment_refund_id = accepted.refund_id.as_deref().unwrap_or(""),
                amount,
                correlation_id = accepted.correlation_id.as_deref().unwrap_or(""),
                "partner refund made"
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
}

/// The refund a partner refund request sends: `payment_refund_reference` is the caller's
/// reference, else the operation id.
fn sent_refund(
    op: OperationId,
    amount: refund_gateway_domain::Amount,
    currency: &refund_gateway_domain::Currency,
    reference: Option<&String>,
    description: Option<&String>,
    line_items: Vec<refund_gateway_domain::LineItem>,
) -> PartnerRefund {
    PartnerRefund {
        amount,
        currency: currency.clone(),
        reference: reference.cloned().unwrap_or_else(|| op.to_string()),
        description: description.cloned(),
        line_items,
    }
}

/// The refund a `RefundCapture` sends.
fn capture_refund(cmd: &RefundCapture, op: OperationId) -> PartnerRefund {
    sent_refund(
        op,
        cmd.amount,
        &cmd.currency,
        cmd.reference.as_ref(),
        cmd.description.as_ref(),
        Vec::new(),
    )
}

/// The refund a `RefundTransaction` sends.
fn transaction_refund(cmd: &RefundTransaction, op: OperationId) -> PartnerRefund {
    sent_refund(
        op,
        cmd.amount,
        &cmd.currency,
        cmd.reference.as_ref(),
        cmd.description.as_ref(),
        cmd.line_items.clone(),
    )
}

/// The partner refund's state rules: reads the transaction and the gateway's own operations
/// on it (this one, `op`, excluded), then checks them.
async fn check_partner_rules(
    payments: &dyn PaymentsApi,
    store: &dyn OperationStore,
    account: &str,
    op: OperationId,
    transaction_id: &refund_gateway_domain::PaymentTransactionId,
    capture_id: Option<&refund_gateway_domain::PaymentCaptureId>,
    refund: &PartnerRefund,
) -> Result<(), GatewayError> {
    let transaction = payments
        .get_transaction(transaction_id)
        .await
        .map_err(klarna_error(ResourceRef::Transaction(
            transaction_id.to_string(),
        )))?;
    let own = store
        .resource_operations(account, ResourceKind::Transaction, transaction_id.as_str())
        .await
        .map_err(|e| GatewayError::StoreUnavailable(e.to_string()))?;
    let unlisted = rules::unlisted_own_refunds(&own, op, &transaction);
    rules::check_partner_refund(
        rules::PartnerRefundRequest {
            transaction_id,
            capture_id,
            amount: refund.amount,
            currency: &refund.currency,
        },
        &transaction,
        unlisted,
    )?;
    Ok(())
}

/// The refund's state rules, reading the order only when a rule needs it (and then learning
/// its references). True when the order was read.
async fn check_refund_rules(
    klarna: &dyn KlarnaApi,
    cmd: &RefundOrder,
    learn: (&Arc<dyn OperationStore>, &str),
) -> Result<bool, GatewayError> {
    if !cmd.needs_order() {
        return Ok(false);
    }
    let order = klarna
        .get_order(&cmd.order_id)
        .await
        .map_err(klarna_error(ResourceRef::Order(cmd.order_id.to_string())))?;
    learn_references(learn.0, learn.1, &order);
    rules::check_refund(cmd, &order)?;
    Ok(true)
}

/// After a refund of an order the gateway never read, reads the order once in the background
/// to learn its references, so that a later return can find it by receipt: one extra read per
/// order, never on the refund's path, skipped when its references are known already.
///
/// The orders wait in a bounded queue (an account and an order id each, a few hundred bytes)
/// that one task works through, a few at a time. A task per order instead held a Klarna
/// call's futures each (kilobytes) and competed with the refunds for Klarna's connections,
/// without bound, in a burst of new orders. An order that finds the queue full is not
/// learned now; its next refund tries again, and the point of sale can link it.
#[derive(Debug)]
struct ReferenceLearner {
    /// Orders waiting at most.
    capacity: usize,
    /// Orders read at once at most.
    parallelism: usize,
    /// Orders whose references this process knows are in the index.
    indexed: Arc<IndexedOrders>,
    /// The queue, and its task, made at the first order to learn (inside the runtime).
    queue: std::sync::OnceLock<tokio::sync::mpsc::Sender<OrderToLearn>>,
}

/// An order waiting for its references to be learned.
struct OrderToLearn {
    account: String,
    order_id: OrderId,
    klarna: Arc<dyn KlarnaApi>,
}

impl Default for ReferenceLearner {
    /// 4,096 orders waiting (about a megabyte), 8 read at once.
    fn default() -> Self {
        Self::new(4096, 8)
    }
}

impl ReferenceLearner {
    fn new(capacity: usize, parallelism: usize) -> Self {
        Self {
            capacity,
            parallelism,
            indexed: Arc::default(),
            queue: std::sync::OnceLock::new(),
        }
    }

    fn learn_after_refund(
        &self,
        store: &Arc<dyn OperationStore>,
        account: &str,
        klarna: &Arc<dyn KlarnaApi>,
        order_id: &OrderId,
    ) {
        if self.indexed.contains(account, order_id.as_str()) {
            return;
        }
        let queue = self.queue.get_or_init(|| {
            let (queue, orders) = tokio::sync::mpsc::channel(self.capacity);
            // The task holds the store and the cache, not the learner: it ends when the
            // gateway (the queue's sender) is dropped.
            let (store, indexed) = (store.clone(), self.indexed.clone());
            let orders = futures::stream::unfold(orders, |mut orders| async move {
                orders.recv().await.map(|order| (order, orders))
            });
            tokio::spawn(futures::StreamExt::for_each_concurrent(
                orders,
                self.parallelism,
                move |order| learn_order(store.clone(), indexed.clone(), order),
            ));
            queue
        });
        let order = OrderToLearn {
            account: account.to_owned(),
            order_id: order_id.clone(),
            klarna: klarna.clone(),
        };
        if queue.try_send(order).is_err() {
            tracing::debug!(%order_id, "order references not learned now: the queue is full");
        }
    }
}

/// Reads `order` from Klarna, unless its references are in the index, and links them; the
/// order goes to `indexed` once they are linked.
async fn learn_order(
    store: Arc<dyn OperationStore>,
    indexed: Arc<IndexedOrders>,
    order: OrderToLearn,
) {
    let OrderToLearn {
        account,
        order_id,
        klarna,
    } = order;
    // A span of its own: the refund's trace has ended by now.
    let span = tracing::info_span!("learn_order_references", order_id = %order_id);
    let learn = async move {
        match store.order_is_indexed(&account, order_id.as_str()).await {
            Ok(false) => {}
            Ok(true) => {
                indexed.insert(&account, order_id.as_str());
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "order references not checked");
                return;
            }
        }
        match klarna.get_order(&order_id).await {
            // Remembered once its references are in the index, or when it has none to learn:
            // its next refunds then cost no read of the index (nor of Klarna).
            Ok(order) => {
                if link_references(store.as_ref(), references_of(&account, &order)).await {
                    indexed.insert(&account, order_id.as_str());
                }
            }
            Err(e) => tracing::debug!(error = %e, "order not read to learn its references"),
        }
    };
    learn.instrument(span).await;
}

/// Names `account` on the current span (the RPC's) as the account its Klarna calls go to:
/// once per request, where the use case takes the account's client (the routing and grant
/// checks before it resolve the same account without recording it, which the text log format
/// would print once per record).
fn record_account(account: &str) -> &str {
    tracing::Span::current().record("klarna.account", account);
    account
}

#[cfg(test)]
mod tests {
    use super::*;
    use refund_gateway_domain::{
        CaptureId, ExtendDueDateOptions, KlarnaReceipt, RefundCreated, RefundId,
    };
    use tokio::sync::{Semaphore, watch};

    /// Klarna whose order reads each wait for a permit, and which counts them; it is asked
    /// nothing else.
    #[derive(Debug)]
    struct HeldReads {
        permits: Semaphore,
        reads: watch::Sender<Vec<String>>,
        /// Answer each read with an order whose references are `RCPT-{id}` and `KR-{id}`;
        /// otherwise with no answer.
        answer: bool,
    }

    #[tonic::async_trait]
    impl KlarnaApi for HeldReads {
        async fn get_order(&self, order_id: &OrderId) -> Result<Order, KlarnaError> {
            self.reads.send_modify(|r| r.push(order_id.to_string()));
            let _permit = self.permits.acquire().await;
            if !self.answer {
                return Err(KlarnaError::NoAnswer("held".into()));
            }
            Ok(Order {
                order_id: order_id.to_string(),
                status: refund_gateway_domain::OrderStatus::Captured,
                klarna_status: "CAPTURED".into(),
                order_amount: 100,
                original_order_amount: 100,
                captured_amount: 100,
                refunded_amount: 0,
                remaining_authorized_amount: 0,
                currency: "SEK".into(),
                purchase_country: "SE".into(),
                merchant_reference1: format!("RCPT-{order_id}"),
                merchant_reference2: String::new(),
                klarna_reference: format!("KR-{order_id}"),
                order_lines: Vec::new(),
                payment_method_type: None,
                captures: Vec::new(),
                refunds: Vec::new(),
            })
        }
        async fn create_refund(
            &self,
            _: &OrderId,
            _: &KlarnaRefund,
            _: &OperationId,
        ) -> Result<RefundCreated, KlarnaError> {
            unreachable!("only orders are read")
        }
        async fn get_refund(&self, _: &OrderId, _: &RefundId) -> Result<Refund, KlarnaError> {
            unreachable!("only orders are read")
        }
        async fn release_remaining_authorization(
            &self,
            _: &OrderId,
            _: &OperationId,
        ) -> Result<KlarnaReceipt, KlarnaError> {
            unreachable!("only orders are read")
        }
        async fn get_extend_due_date_options(
            &self,
            _: &OrderId,
            _: &CaptureId,
        ) -> Result<ExtendDueDateOptions, KlarnaError> {
            unreachable!("only orders are read")
        }
        async fn extend_due_date(
            &self,
            _: &OrderId,
            _: &CaptureId,
            _: i32,
            _: &OperationId,
        ) -> Result<KlarnaReceipt, KlarnaError> {
            unreachable!("only orders are read")
        }
    }

    /// Counts the records of `klarna.account` on any span.
    #[derive(Clone, Default)]
    struct AccountRecords(Arc<std::sync::Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AccountRecords {
        fn on_record(
            &self,
            _: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Visit<'a>(&'a mut Vec<String>);
            impl tracing::field::Visit for Visit<'_> {
                fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                    if field.name() == "klarna.account" {
                        self.0.push(value.to_owned());
                    }
                }
                fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
            }
            let mut seen = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            values.record(&mut Visit(&mut seen));
        }
    }

    /// The routing and the grant check resolve the account before the use case takes its
    /// client; only the last names it on the RPC's span (the text log format prints a field
    /// once per record).
    #[test]
    fn only_taking_the_client_names_the_account_on_the_span() {
        use tracing_subscriber::layer::SubscriberExt;
        let held: Arc<dyn KlarnaApi> = Arc::new(HeldReads {
            permits: Semaphore::new(0),
            reads: watch::channel(Vec::new()).0,
            answer: false,
        });
        let accounts = Accounts::new([("eu".to_owned(), KlarnaAccount::OrderManagement(held))]);
        let records = AccountRecords::default();
        let subscriber = tracing_subscriber::registry().with(records.clone());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("rpc", klarna.account = tracing::field::Empty);
            let _entered = span.enter();
            let api = KlarnaApiKind::OrderManagement;
            let (routed, _) = accounts
                .route(RouteRequest::default(), api)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(routed, "eu");
            accounts
                .resolve(Some("eu"), api)
                .unwrap_or_else(|e| panic!("{e}"));
            accounts
                .order_management(Some("eu"))
                .unwrap_or_else(|e| panic!("{e}"));
        });
        let seen = records
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        assert_eq!(seen, ["eu"]);
    }

    /// A store in a temporary directory, kept as long as the directory is.
    async fn sqlite_store() -> (tempfile::TempDir, Arc<dyn OperationStore>) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = refund_gateway_store::SqliteStore::open(&dir.path().join("ops.db"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (dir, Arc::new(store))
    }

    fn order(n: u32) -> OrderId {
        OrderId::parse(&format!("00000000-0000-4000-8000-{n:012}"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Orders wait in the queue while Klarna is slow; one that finds it full is not read
    /// (its next refund tries again), and the ones queued are read in order.
    #[tokio::test]
    async fn orders_beyond_the_queue_are_skipped_not_piled_up() {
        let (_dir, store) = sqlite_store().await;
        let (reads, mut seen) = watch::channel(Vec::new());
        let held = Arc::new(HeldReads {
            permits: Semaphore::new(0),
            reads,
            answer: false,
        });
        let klarna: Arc<dyn KlarnaApi> = held.clone();
        let learner = ReferenceLearner::new(2, 1);
        let read_count = async |seen: &mut watch::Receiver<Vec<String>>, n: usize| {
            seen.wait_for(|r| r.len() >= n)
                .await
                .map(|r| r.clone())
                .unwrap_or_else(|e| panic!("{e}"))
        };

        learner.learn_after_refund(&store, "eu", &klarna, &order(1));
        read_count(&mut seen, 1).await;
        // Order 1 is being read: 2 and 3 fill the queue, 4 and 5 find it full.
        for n in 2..=5 {
            learner.learn_after_refund(&store, "eu", &klarna, &order(n));
        }
        held.permits.add_permits(1_000);
        // 6, queued after the others were read or dropped, is read right after 2 and 3.
        read_count(&mut seen, 3).await;
        learner.learn_after_refund(&store, "eu", &klarna, &order(6));
        let reads = read_count(&mut seen, 4).await;
        let expected: Vec<String> = [1, 2, 3, 6].map(|n| order(n).to_string()).to_vec();
        assert_eq!(reads, expected);
    }

    /// An order whose references the learner linked is remembered: its next refund costs no
    /// read of the index (and none of Klarna).
    #[tokio::test]
    async fn an_order_learned_is_remembered() {
        let (_dir, store) = sqlite_store().await;
        let (reads, mut seen) = watch::channel(Vec::new());
        let klarna: Arc<dyn KlarnaApi> = Arc::new(HeldReads {
            permits: Semaphore::new(1_000),
            reads,
            answer: true,
        });
        // One order at a time: order 2 is read only once order 1's learning has ended.
        let learner = ReferenceLearner::new(8, 1);
        learner.learn_after_refund(&store, "eu", &klarna, &order(1));
        learner.learn_after_refund(&store, "eu", &klarna, &order(2));
        seen.wait_for(|r| r.len() >= 2)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let linked = store
            .find_reference("eu", ReferenceKind::Receipt, &format!("RCPT-{}", order(1)))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            linked.map(|r| r.order_id),
            Some(order(1).to_string()),
            "order 1's references are linked"
        );
        assert!(learner.indexed.contains("eu", order(1).as_str()));
    }
}
