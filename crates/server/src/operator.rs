//! `refundgateway.v1.OperatorService`: what needs a person's attention, and settling by hand
//! what the gateway could not (see docs/architecture.md#operators). Its methods are granted
//! by `operator = true` in the callers file alone (`auth::OPERATOR_RPCS`).

use std::time::Duration;

use futures::StreamExt;
use refund_gateway_domain::{
    AuditEvent, Caller, GatewayError, ListedRefund, MismatchKind, Operation, OperationFilter,
    OperationName, OperationPage, OperationState, OrderId, OrderQuery, PaymentTransactionId,
    Precondition, PreconditionReason, Resolution, ResourceKind, Rpc, StoredResponse,
    TransactionQuery, Violations, compare_refunds,
};
use refund_gateway_proto::v1 as pb;
use refund_gateway_proto::v1::operator_service_server::OperatorService;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use crate::auth::CallerGrant;
use crate::convert;
use crate::gateway::Gateway;
use crate::grpc::{authorize, fail};
use crate::protocol::Protocol;
use crate::status::{to_status, to_stored};

/// PENDING operations older than this need attention when the request names no threshold:
/// the reconciler settles most within seconds.
pub const DEFAULT_PENDING_THRESHOLD: Duration = Duration::from_secs(5 * 60);

/// Operations of each kind listed when the request names no page size.
const DEFAULT_PAGE_SIZE: u32 = 100;

/// The longest reason an operator may give.
const MAX_REASON_CHARS: usize = 1000;

/// The operator service.
#[derive(Debug, Clone)]
pub struct OperatorApi {
    gateway: Gateway,
    protocol: Protocol,
}

impl OperatorApi {
    /// The service.
    pub fn new(gateway: Gateway, protocol: Protocol) -> Self {
        Self { gateway, protocol }
    }

    /// Up to `size` operations matching `filter`, oldest first.
    async fn oldest(
        &self,
        filter: &OperationFilter,
        size: u32,
    ) -> Result<Vec<pb::OperationRecord>, GatewayError> {
        let page = self
            .protocol
            .store()
            .list(filter, size, None)
            .await
            .map_err(|e| GatewayError::StoreUnavailable(e.to_string()))?;
        let mut records = convert::operation_page(page).operations;
        // The store pages newest first; a person works oldest first.
        records.reverse();
        Ok(records)
    }

    /// The operation of id `operation_id`, with its events.
    async fn operation(
        &self,
        operation_id: &str,
    ) -> Result<(Operation, Vec<AuditEvent>), GatewayError> {
        let filter = OperationFilter {
            operation_id: Some(operation_id.to_owned()),
            ..OperationFilter::default()
        };
        let page = self
            .protocol
            .store()
            .list(&filter, 1, None)
            .await
            .map_err(|e| GatewayError::StoreUnavailable(e.to_string()))?;
        page.operations
            .into_iter()
            .next()
            .ok_or_else(|| GatewayError::OperationNotFound {
                operation_id: operation_id.to_owned(),
            })
    }

    /// For an order refund settled as succeeded: Klarna's order must list `refund_id` with the
    /// operation's amount.
    async fn check_refund_at_klarna(
        &self,
        op: &Operation,
        refund_id: &str,
    ) -> Result<(), GatewayError> {
        let order_id = refund_gateway_domain::OrderId::parse(&op.new.order_id)
            .map_err(|e| GatewayError::Internal(format!("stored order id: {e}")))?;
        let order = self
            .gateway
            .order(refund_gateway_domain::OrderQuery {
                klarna_account: Some(op.new.klarna_account.clone()),
                order_id,
            })
            .await?;
        let listed = order
            .refunds
            .iter()
            .find(|r| r.refund_id.eq_ignore_ascii_case(refund_id));
        match listed {
            Some(refund) if Some(refund.refunded_amount) == op.new.amount => Ok(()),
            Some(refund) => Err(not_at_klarna(
                op,
                format!(
                    "Klarna lists refund {refund_id} with {} minor units; the operation is for {}",
                    refund.refunded_amount,
                    op.new.amount.unwrap_or_default()
                ),
            )),
            None => Err(not_at_klarna(
                op,
                format!(
                    "Klarna's order {} lists no refund {refund_id}",
                    op.new.order_id
                ),
            )),
        }
    }
}

fn not_at_klarna(op: &Operation, description: String) -> GatewayError {
    Precondition {
        reason: PreconditionReason::RefundNotAtKlarna,
        subject: format!("operations/{}", op.new.operation_id),
        description,
    }
    .into()
}

fn not_in_review(op: &Operation) -> GatewayError {
    Precondition {
        reason: PreconditionReason::OperationNotInReview,
        subject: format!("operations/{}", op.new.operation_id),
        description: format!(
            "operation {} is {}, not REQUIRES_REVIEW: only the gateway settles it",
            op.new.operation_id, op.state
        ),
    }
    .into()
}

/// `ListAttention`'s `pending_older_than` (else [`DEFAULT_PENDING_THRESHOLD`]) as the time
/// PENDING operations must have been created before: `now` less the threshold, the earliest
/// time there is when that is earlier still; `None` when the threshold is negative. Both
/// panics this avoids came up fuzzing the `request` target (`fuzz/README.md`): prost-types'
/// `Duration::try_from` negates the seconds of a negative duration, which overflows on
/// `i64::MIN` (with overflow checks on), and subtracting a threshold of millennia from `now`
/// left time's range.
pub fn pending_cutoff(
    requested: Option<prost_types::Duration>,
    now: OffsetDateTime,
) -> Option<OffsetDateTime> {
    let threshold = match requested.map(|d| d.normalized()) {
        None => DEFAULT_PENDING_THRESHOLD,
        Some(d) if d.seconds < 0 || d.nanos < 0 => return None,
        Some(d) => Duration::try_from(d).ok()?,
    };
    Some(
        time::Duration::try_from(threshold)
            .ok()
            .and_then(|t| now.checked_sub(t))
            .unwrap_or(time::PrimitiveDateTime::MIN.assume_utc()),
    )
}

/// `Reconcile`'s window [`from`, `to`): `to` defaults to `now` and `from` to a day before
/// `to` (to itself when that is before the earliest time there is: subtracting the day
/// panicked, which came up fuzzing the `request` target); `from` must be before `to`.
pub fn reconcile_window(
    from: Option<prost_types::Timestamp>,
    to: Option<prost_types::Timestamp>,
    now: OffsetDateTime,
) -> Result<(OffsetDateTime, OffsetDateTime), Violations> {
    let mut v = Violations::new();
    let to = v.check("to", convert::time_in(to)).flatten().unwrap_or(now);
    let from = v
        .check("from", convert::time_in(from))
        .flatten()
        .unwrap_or_else(|| to.checked_sub(time::Duration::days(1)).unwrap_or(to));
    if from >= to {
        v.push("from", "must be before to");
    }
    v.into_result(|| (from, to))
}

/// A validated ResolveOperation request.
#[derive(Debug, PartialEq, Eq)]
pub struct Resolve {
    /// The operation's id, as the store keys it.
    pub operation_id: String,
    /// SUCCEEDED (true) or FAILED (false).
    pub succeeded: bool,
    /// The refund id Klarna gave, when the operator knows it.
    pub refund_id: Option<String>,
    /// Why, for the audit trail: trimmed, not empty.
    pub reason: String,
}

/// ResolveOperation's checks: every field's violation, or the request as the service acts on
/// it.
pub fn validate_resolve(r: pb::ResolveOperationRequest) -> Result<Resolve, Violations> {
    let mut v = Violations::new();
    let by_id = OperationName::parse(&r.operation_id, "", "", "", &Caller::anonymous());
    let operation_id = match by_id {
        Ok(name) if !r.operation_id.is_empty() => name.id_text(),
        _ => {
            v.push("operation_id", "must be the operation's id (a UUID)");
            String::new()
        }
    };
    let succeeded = match pb::ResolutionOutcome::try_from(r.outcome) {
        Ok(pb::ResolutionOutcome::Succeeded) => true,
        Ok(pb::ResolutionOutcome::Failed) => false,
        _ => {
            v.push("outcome", "must be SUCCEEDED or FAILED");
            false
        }
    };
    let reason = r.reason.trim().to_owned();
    if reason.is_empty() {
        v.push("reason", "is required: say why, for the audit trail");
    }
    v.max_chars("reason", &reason, MAX_REASON_CHARS);
    let refund_id = r.refund_id.trim();
    v.max_chars("refund_id", refund_id, 255);
    v.into_result(|| Resolve {
        operation_id,
        succeeded,
        refund_id: (!refund_id.is_empty()).then(|| refund_id.to_owned()),
        reason,
    })
}

#[tonic::async_trait]
impl OperatorService for OperatorApi {
    async fn list_attention(
        &self,
        request: Request<pb::ListAttentionRequest>,
    ) -> Result<Response<pb::ListAttentionResponse>, Status> {
        const RPC: &str = "ListAttention";
        authorize(RPC, &request)?;
        let r = request.into_inner();
        let Some(older_than) = pending_cutoff(r.pending_older_than, OffsetDateTime::now_utc())
        else {
            return Err(fail(
                RPC,
                Violations::single("pending_older_than", "must not be negative").into(),
            ));
        };
        let size = match r.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n @ 1..=500 => n.unsigned_abs(),
            _ => {
                return Err(fail(
                    RPC,
                    Violations::single("page_size", "must be between 1 and 500 (0 means 100)")
                        .into(),
                ));
            }
        };
        let pending = OperationFilter {
            state: Some(OperationState::Pending),
            created_to: Some(older_than),
            ..OperationFilter::default()
        };
        let review = OperationFilter {
            state: Some(OperationState::RequiresReview),
            ..OperationFilter::default()
        };
        let (pending, requires_review) =
            futures::try_join!(self.oldest(&pending, size), self.oldest(&review, size))
                .map_err(|e| fail(RPC, e))?;
        Ok(Response::new(pb::ListAttentionResponse {
            pending,
            requires_review,
        }))
    }

    async fn resolve_operation(
        &self,
        request: Request<pb::ResolveOperationRequest>,
    ) -> Result<Response<pb::ResolveOperationResponse>, Status> {
        const RPC: &str = "ResolveOperation";
        let grant = authorize(RPC, &request)?;
        let resolve = validate_resolve(request.into_inner()).map_err(|v| fail(RPC, v.into()))?;
        let (op, _) = self
            .operation(&resolve.operation_id)
            .await
            .map_err(|e| fail(RPC, e))?;
        if op.state != OperationState::RequiresReview {
            return Err(fail(RPC, not_in_review(&op)));
        }
        if resolve.succeeded && op.new.rpc == Rpc::RefundOrder {
            let Some(refund_id) = resolve.refund_id.as_deref() else {
                return Err(fail(
                    RPC,
                    Violations::single(
                        "refund_id",
                        "is required to settle an order refund as succeeded",
                    )
                    .into(),
                ));
            };
            self.check_refund_at_klarna(&op, refund_id)
                .await
                .map_err(|e| fail(RPC, e))?;
        }
        let resolution = resolution(&grant, &op, resolve);
        let resolved = self
            .protocol
            .store()
            .resolve_review(op.new.operation_id, resolution, OffsetDateTime::now_utc())
            .await
            .map_err(|e| fail(RPC, GatewayError::StoreUnavailable(e.to_string())))?;
        if !resolved {
            // Settled by someone else meanwhile.
            return Err(fail(RPC, not_in_review(&op)));
        }
        tracing::info!(
            operation_id = %op.new.operation_id,
            operator = grant.name(),
            "operation settled by an operator"
        );
        let (settled, events) = self
            .operation(&resolve_id(&op))
            .await
            .map_err(|e| fail(RPC, e))?;
        let record = convert::operation_page(OperationPage {
            operations: vec![(settled, events)],
            next_page_token: None,
        })
        .operations
        .into_iter()
        .next();
        Ok(Response::new(pb::ResolveOperationResponse {
            operation: record,
        }))
    }

    async fn reconcile(
        &self,
        request: Request<pb::ReconcileRequest>,
    ) -> Result<Response<pb::ReconcileResponse>, Status> {
        const RPC: &str = "Reconcile";
        authorize(RPC, &request)?;
        let r = request.into_inner();
        let account = match (r.klarna_account.as_str(), self.gateway.accounts().sole()) {
            ("", Some(only)) => only.to_owned(),
            ("", None) => {
                return Err(fail(
                    RPC,
                    Violations::single(
                        "klarna_account",
                        "is required: several accounts are configured",
                    )
                    .into(),
                ));
            }
            (named, _) if self.gateway.accounts().get(named).is_some() => named.to_owned(),
            (named, _) => {
                return Err(fail(
                    RPC,
                    Violations::single("klarna_account", format!("unknown account {named:?}"))
                        .into(),
                ));
            }
        };
        let (from, to) = reconcile_window(r.from, r.to, OffsetDateTime::now_utc())
            .map_err(|v| fail(RPC, v.into()))?;
        let operations = self
            .operations_in(&account, from, to)
            .await
            .map_err(|e| fail(RPC, e))?;
        let mut resources: Vec<(ResourceKind, String)> = operations
            .iter()
            .map(|op| (op.new.resource_kind, op.new.resource_id.clone()))
            .collect();
        resources.sort();
        resources.dedup();
        let results: Vec<Result<Vec<pb::ReconcileMismatch>, String>> =
            futures::stream::iter(resources.clone())
                .map(|(kind, id)| {
                    let (this, account) = (self.clone(), account.clone());
                    async move { this.reconcile_resource(&account, kind, &id).await }
                })
                .buffered(RECONCILE_PARALLELISM)
                .collect()
                .await;
        let mut mismatches = Vec::new();
        let mut unread = Vec::new();
        for result in results {
            match result {
                Ok(found) => mismatches.extend(found),
                Err(why) => unread.push(why),
            }
        }
        tracing::info!(
            klarna_account = %account,
            operations = operations.len(),
            resources = resources.len(),
            mismatches = mismatches.len(),
            unread = unread.len(),
            "reconciliation report"
        );
        Ok(Response::new(pb::ReconcileResponse {
            klarna_account: account,
            operations_checked: i32::try_from(operations.len()).unwrap_or(i32::MAX),
            resources_checked: i32::try_from(resources.len()).unwrap_or(i32::MAX),
            mismatches,
            unread,
        }))
    }
}

/// The most operations one reconciliation reads from the store; a larger window is refused.
pub const MAX_RECONCILE_OPERATIONS: usize = 10_000;

/// How many resources one reconciliation reads from Klarna at a time (each a read against
/// the account's quota).
const RECONCILE_PARALLELISM: usize = 4;

impl OperatorApi {
    /// Every operation of `account` created in [`from`, `to`).
    async fn operations_in(
        &self,
        account: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<Operation>, GatewayError> {
        let filter = OperationFilter {
            created_from: Some(from),
            created_to: Some(to),
            ..OperationFilter::default()
        };
        let mut out = Vec::new();
        let mut token = None;
        let mut seen = 0usize;
        loop {
            let page = self
                .protocol
                .store()
                .list(&filter, 500, token.as_deref())
                .await
                .map_err(|e| GatewayError::StoreUnavailable(e.to_string()))?;
            seen += page.operations.len();
            if seen > MAX_RECONCILE_OPERATIONS {
                return Err(Violations::single(
                    "from",
                    format!(
                        "the window holds more than {MAX_RECONCILE_OPERATIONS} operations: reconcile a shorter one"
                    ),
                )
                .into());
            }
            out.extend(
                page.operations
                    .into_iter()
                    .map(|(op, _)| op)
                    .filter(|op| op.new.klarna_account == account),
            );
            match page.next_page_token {
                Some(next) => token = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// The refunds Klarna lists on one resource of `account`.
    async fn listed_refunds(
        &self,
        account: &str,
        kind: ResourceKind,
        id: &str,
    ) -> Result<Vec<ListedRefund>, GatewayError> {
        let invalid = |e: refund_gateway_domain::validation::InvalidValue| {
            GatewayError::Internal(format!("stored resource id {id:?}: {e}"))
        };
        match kind {
            ResourceKind::Order => {
                let order = self
                    .gateway
                    .order(OrderQuery {
                        klarna_account: Some(account.to_owned()),
                        order_id: OrderId::parse(id).map_err(invalid)?,
                    })
                    .await?;
                Ok(order
                    .refunds
                    .into_iter()
                    .map(|r| ListedRefund {
                        refund_id: r.refund_id,
                        amount: r.refunded_amount,
                    })
                    .collect())
            }
            ResourceKind::Transaction => {
                let transaction = self
                    .gateway
                    .transaction(TransactionQuery {
                        klarna_account: Some(account.to_owned()),
                        transaction_id: PaymentTransactionId::parse(id).map_err(invalid)?,
                    })
                    .await?;
                Ok(transaction
                    .refunds
                    .into_iter()
                    .map(|r| ListedRefund {
                        refund_id: r.payment_refund_id,
                        amount: r.amount,
                    })
                    .collect())
            }
        }
    }

    /// One resource reconciled: its mismatches, or why it could not be read.
    async fn reconcile_resource(
        &self,
        account: &str,
        kind: ResourceKind,
        id: &str,
    ) -> Result<Vec<pb::ReconcileMismatch>, String> {
        let listed = self
            .listed_refunds(account, kind, id)
            .await
            .map_err(|e| format!("{} {id}: {e}", kind.as_str()))?;
        // Every operation on it, whenever made: a refund made before the window is not a
        // stranger.
        let operations = self
            .protocol
            .store()
            .resource_operations(account, kind, id)
            .await
            .map_err(|e| format!("{} {id}: {e}", kind.as_str()))?;
        Ok(compare_refunds(&listed, &operations)
            .into_iter()
            .map(|m| pb::ReconcileMismatch {
                kind: match m.kind {
                    MismatchKind::UnknownToGateway => pb::MismatchKind::UnknownToGateway,
                    MismatchKind::MissingAtKlarna => pb::MismatchKind::MissingAtKlarna,
                    MismatchKind::AmountDiffers => pb::MismatchKind::AmountDiffers,
                }
                .into(),
                order_id: if kind == ResourceKind::Order {
                    id.to_owned()
                } else {
                    String::new()
                },
                payment_transaction_id: if kind == ResourceKind::Transaction {
                    id.to_owned()
                } else {
                    String::new()
                },
                refund_id: m.refund_id,
                operation_id: m.operation_id.unwrap_or_default(),
                gateway_amount: m.gateway_amount.unwrap_or_default(),
                klarna_amount: m.klarna_amount.unwrap_or_default(),
            })
            .collect())
    }
}

fn resolve_id(op: &Operation) -> String {
    op.new.operation_id.to_string()
}

/// What the store records for the operator's decision. A success keeps no answer body: a
/// replay rebuilds it from the stored call and Klarna's refund id, as for an answer purged
/// after the retention period. A failure's replay answers RESOLVED_AS_FAILED.
fn resolution(grant: &CallerGrant, op: &Operation, resolve: Resolve) -> Resolution {
    let (state, response) = if resolve.succeeded {
        (
            OperationState::Succeeded,
            StoredResponse {
                code: 0,
                message: String::new(),
                payload: Vec::new(),
            },
        )
    } else {
        let refusal = GatewayError::Precondition(Precondition {
            reason: PreconditionReason::ResolvedAsFailed,
            subject: format!("operations/{}", op.new.operation_id),
            description: format!(
                "an operator found that Klarna did not do it: {}",
                resolve.reason
            ),
        });
        (OperationState::Failed, to_stored(&to_status(&refusal)))
    };
    Resolution {
        state,
        response,
        refund_id: resolve.refund_id,
        operator: grant.name().to_owned(),
        reason: resolve.reason,
        otel_trace_id: crate::telemetry::current_trace_id(),
    }
}
