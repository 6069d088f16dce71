//! The tonic service: converts each request to a domain command (through [`crate::convert`]),
//! runs reads directly and mutations through the exactly-once [`Protocol`], and maps the
//! result back (errors through [`crate::status`]).

use std::time::Duration;

use futures::{FutureExt, TryFutureExt};
use prost::Message;
use std::sync::Arc;

use refund_gateway_domain::{
    Amount, Caller, Currency, ExtendDueDate, ExtendDueDateOptionsQuery, GatewayError,
    KlarnaApiKind, OperationId, OperationName, OrderQuery, OrderSelector, ReferenceQuery,
    RefundCapture, RefundOrder, RefundQuery, RefundTransaction, ReleaseAuthorization, RouteRequest,
    TransactionQuery,
};
use refund_gateway_proto::v1 as pb;
use refund_gateway_proto::v1::refund_gateway_service_server::RefundGatewayService;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::auth::{AuthenticatedCaller, CallerGrant};
use crate::convert;
use crate::gateway::{Gateway, Prepared};
use crate::protocol::{Answer, DailyReservation, Encoded, Protocol};
use crate::status::{mark_replayed, stored, to_status};

pub use crate::status::REPLAYED_HEADER;

/// `refundgateway.v1.RefundGatewayService` over a [`Gateway`] and a [`Protocol`].
#[derive(Debug, Clone)]
pub struct RefundGatewayApi {
    gateway: Gateway,
    protocol: Protocol,
}

impl RefundGatewayApi {
    /// The service.
    pub fn new(gateway: Gateway, protocol: Protocol) -> Self {
        Self { gateway, protocol }
    }

    /// Runs a read with its Klarna calls and their resends bounded by the caller's deadline
    /// (its `grpc-timeout`, or the default one), less the margin that lets the answer leave
    /// before tonic cancels the call.
    async fn read<T>(
        &self,
        caller_deadline: Option<Duration>,
        read: impl std::future::Future<Output = Result<T, GatewayError>>,
    ) -> Result<T, GatewayError> {
        let settings = self.protocol.settings();
        let deadline = caller_deadline
            .unwrap_or(settings.default_deadline)
            .saturating_sub(settings.deadline_margin);
        refund_gateway_klarna::with_deadline(tokio::time::Instant::now() + deadline, read).await
    }
}

/// A valid order id standing in for one a request named badly (or by reference), so that
/// the request's other fields are checked too; it never reaches Klarna or the store.
const PLACEHOLDER_ORDER_ID: &str = "00000000-0000-4000-8000-000000000000";

/// True when the record's state is final (nothing more will happen to it).
fn is_final(record: &pb::OperationRecord) -> bool {
    use pb::OperationState as S;
    matches!(
        S::try_from(record.state),
        Ok(S::Succeeded | S::Failed | S::RequiresReview)
    )
}

/// What follows `first` in a watch: what `next` gives from the last record sent, until it
/// gives `None` or an error (which ends the stream after it).
fn records_after<F, Fut>(
    first: pb::OperationRecord,
    next: F,
) -> impl futures::Stream<Item = Result<pb::WatchOperationResponse, Status>> + Send
where
    F: Fn(pb::OperationRecord) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<Result<pb::OperationRecord, Status>>> + Send,
{
    // Each item is sent as soon as it is known; the next is looked for only when asked.
    futures::stream::unfold((Some(first), next), |(last, next)| async move {
        let last = last?;
        let item = match next(last.clone()).await {
            None => return None,
            Some(item) => item,
        };
        let following = item.as_ref().ok().cloned();
        let answer = item.map(|record| pb::WatchOperationResponse {
            operation: Some(record),
        });
        Some((answer, (following, next)))
    })
}

/// How long a watch lasts when the caller gives no deadline.
const MAX_WATCH: Duration = Duration::from_secs(15 * 60);

/// How often a watch reads the operation again. Transitions may be made by another replica,
/// so the store is the one place that sees them all.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);

impl RefundGatewayApi {
    /// The operation `name` names, with its audit trail, when `grant` may see it.
    async fn visible_operation(
        &self,
        grant: &CallerGrant,
        name: &OperationName,
    ) -> Result<pb::OperationRecord, GatewayError> {
        let operation_id = name.id_text();
        let filter = refund_gateway_domain::OperationFilter {
            operation_id: Some(operation_id.clone()),
            // A caller without `*` for RPCs sees its own operations only.
            caller: (!grant.sees_all_operations()).then(|| grant.scope().to_string()),
            ..Default::default()
        };
        let page = self
            .protocol
            .store()
            .list(&filter, 1, None)
            .await
            .map_err(|e| GatewayError::StoreUnavailable(e.to_string()))?;
        convert::operation_page(page)
            .operations
            .into_iter()
            .next()
            .ok_or(GatewayError::OperationNotFound { operation_id })
    }

    /// The order id a reference names in the request's account, for a caller that may use
    /// that account (checked before the index is read).
    async fn order_of_reference(
        &self,
        rpc: &'static str,
        grant: &CallerGrant,
        klarna_account: &str,
        query: ReferenceQuery,
    ) -> Result<String, Status> {
        let account = (!klarna_account.is_empty()).then_some(klarna_account);
        self.check_account(rpc, grant, account, KlarnaApiKind::OrderManagement)?;
        let (_, order_id) = self
            .gateway
            .order_of_reference(account, &query)
            .await
            .map_err(|e| fail(rpc, e))?;
        Ok(order_id.to_string())
    }
}

/// The caller the authentication layer identified, if it may call `rpc`. A request that
/// did not pass the layer (it always does in the served stack) is not let in.
pub(crate) fn authorize<T>(
    rpc: &'static str,
    request: &Request<T>,
) -> Result<Arc<CallerGrant>, Status> {
    let grant = request
        .extensions()
        .get::<AuthenticatedCaller>()
        .map(|c| c.0.clone())
        .ok_or_else(|| {
            fail(
                rpc,
                GatewayError::Unauthenticated("the call was not authenticated".to_owned()),
            )
        })?;
    grant.check_rpc(rpc).map_err(|e| fail(rpc, e))?;
    Ok(grant)
}

/// The request id the inbound stack gave this call; recorded as the trace id of the
/// operation's audit events, so an event leads back to the call's log lines.
fn request_id<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get(crate::middleware::REQUEST_ID.as_str())
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The longest deadline the gateway works with: the gRPC spec's largest timeout is 8 digits
/// of hours, far beyond anything a refund waits for, and instants cannot hold much more.
const MAX_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// The caller's deadline from `grpc-timeout` (`<digits><unit>`: at most 8 digits, unit one of
/// H M S m u n), at most [`MAX_DEADLINE`]. A value outside the spec is ignored, as if absent.
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)
}

/// [`grpc_timeout`] from a request's HTTP headers, for the layers before tonic's decoding.
pub fn grpc_timeout_header(headers: &http::HeaderMap) -> Option<Duration> {
    parse_grpc_timeout(headers.get("grpc-timeout")?.to_str().ok()?)
}

fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(
        match unit {
            "H" => Duration::from_secs(n.saturating_mul(3600)),
            "M" => Duration::from_secs(n.saturating_mul(60)),
            "S" => Duration::from_secs(n),
            "m" => Duration::from_millis(n),
            "u" => Duration::from_micros(n),
            "n" => Duration::from_nanos(n),
            _ => return None,
        }
        .min(MAX_DEADLINE),
    )
}

/// Logs a failed use case with what an operator needs to follow it up (Klarna's correlation
/// id and error code). Invalid input is the caller's business and logs at debug only.
fn log_failure(rpc: &'static str, error: &GatewayError) {
    match error {
        GatewayError::InvalidArgument(v) => {
            tracing::debug!(rpc, violations = %v, "request refused")
        }
        GatewayError::OperationNotFound { .. } => {
            tracing::debug!(rpc, error = %error, "operation not found")
        }
        GatewayError::ReferenceNotFound { field, .. } => {
            // The reference itself is the caller's input, typed from a receipt: not logged.
            tracing::info!(rpc, field, "no order is known by that reference")
        }
        GatewayError::Precondition(p) => {
            tracing::info!(rpc, reason = p.reason.as_str(), subject = %p.subject, "request refused by a state rule");
        }
        GatewayError::OutcomePending {
            operation_id,
            error,
        } => tracing::warn!(
            rpc,
            operation_id = %operation_id,
            correlation_id = error.correlation_id().unwrap_or(""),
            error = %error,
            "outcome of a Klarna call unknown"
        ),
        GatewayError::Klarna { error, resource } => tracing::warn!(
            rpc,
            resource = %resource,
            klarna_status = error.status().unwrap_or(0),
            correlation_id = error.correlation_id().unwrap_or(""),
            error = %error,
            "Klarna call failed"
        ),
        GatewayError::KeyReused { .. } | GatewayError::KeyInUse { .. } => {
            tracing::info!(rpc, error = %error, "request refused by the idempotency rules")
        }
        GatewayError::Unauthenticated(_) | GatewayError::PermissionDenied { .. } => {
            tracing::info!(rpc, error = %error, "request refused by the caller's grants")
        }
        GatewayError::CallerRateLimited { .. }
        | GatewayError::Overloaded { .. }
        | GatewayError::WaitedPastDeadline { .. }
        | GatewayError::DeadlineTooShort { .. }
        | GatewayError::MessageTooLarge { .. } => {
            tracing::info!(rpc, error = %error, "request refused by the gateway's limits")
        }
        GatewayError::StoreUnavailable(_)
        | GatewayError::RequiresReview { .. }
        | GatewayError::Internal(_) => tracing::error!(rpc, error = %error, "request failed"),
    }
}

pub(crate) fn fail(rpc: &'static str, error: GatewayError) -> Status {
    log_failure(rpc, &error);
    to_status(&error)
}

/// Decodes a stored success into `T`, marks a replay, or returns the stored error.
fn answer<T: Message + Default>(
    rpc: &'static str,
    answer: Result<Answer, GatewayError>,
    set_replayed: impl FnOnce(&mut T, bool),
) -> Result<Response<T>, Status> {
    let Answer { response, replayed } = answer.map_err(|e| fail(rpc, e))?;
    if response.code != 0 {
        return Err(stored(response, replayed));
    }
    let mut message = T::decode(response.payload.as_slice()).map_err(|e| {
        fail(
            rpc,
            GatewayError::Internal(format!("the stored answer is unreadable: {e}")),
        )
    })?;
    set_replayed(&mut message, replayed);
    let mut response = Response::new(message);
    if replayed {
        mark_replayed(response.metadata_mut());
    }
    Ok(response)
}

/// What every mutating call carries besides its message.
struct CallContext {
    /// What the caller may do.
    grant: Arc<CallerGrant>,
    /// The identity its operations are scoped to.
    caller: Caller,
    deadline: Option<Duration>,
    request_id: Option<String>,
}

impl CallContext {
    /// The context of a call of `rpc`, refused when its caller may not call it.
    fn of<T>(rpc: &'static str, request: &Request<T>) -> Result<Self, Status> {
        let grant = authorize(rpc, request)?;
        Ok(Self {
            caller: grant.scope(),
            grant,
            deadline: grpc_timeout(request.metadata()),
            request_id: request_id(request),
        })
    }
}

impl RefundGatewayApi {
    /// Routes a request that names no account: sets `klarna_account` to the account its
    /// store (`store_id`) and currency lead to (see [`refund_gateway_domain::Routing`]), so
    /// that everything after, the fingerprint included, sees the account used. A bad or
    /// unknown store is refused here; any other routing refusal is left for where the account
    /// is resolved, so it comes with the request's other bad fields.
    fn route(
        &self,
        rpc: &'static str,
        klarna_account: &mut String,
        store_id: &str,
        currency: &str,
        api: KlarnaApiKind,
    ) -> Result<(), Status> {
        let store_id = convert::store_id(store_id).map_err(|v| fail(rpc, v.into()))?;
        let currency = Currency::parse(currency).ok();
        let request = RouteRequest {
            account: (!klarna_account.is_empty()).then_some(klarna_account.as_str()),
            store_id: store_id.as_ref(),
            currency: currency.as_ref(),
        };
        match self.gateway.accounts().route(request, api) {
            Ok((name, _)) => *klarna_account = name.to_owned(),
            Err(e) if e.violates("store_id") => return Err(fail(rpc, e)),
            Err(_) => {}
        }
        Ok(())
    }

    /// Refuses the call unless `grant` may use the Klarna account the request resolves to
    /// (its `klarna_account`, or the only account of the RPC's kind). A name that does not
    /// resolve is left for the use case to refuse with its own error.
    fn check_account(
        &self,
        rpc: &'static str,
        grant: &CallerGrant,
        name: Option<&str>,
        api: KlarnaApiKind,
    ) -> Result<(), Status> {
        match self.gateway.accounts().resolve(name, api) {
            Ok((resolved, _)) => grant.check_account(resolved).map_err(|e| fail(rpc, e)),
            Err(_) => Ok(()),
        }
    }

    /// Refuses a refund above the caller's cap, judged in the order's currency: the request's,
    /// else the order's, read from Klarna (only for a capped caller).
    async fn check_order_refund_amount(
        &self,
        rpc: &'static str,
        grant: &CallerGrant,
        cmd: &RefundOrder,
        caller_deadline: Option<Duration>,
    ) -> Result<Option<Currency>, Status> {
        if !grant.has_amount_caps() {
            return Ok(None);
        }
        let currency = match &cmd.currency {
            Some(currency) => currency.clone(),
            None => {
                let order = self
                    .read(
                        caller_deadline,
                        self.gateway.order(OrderQuery {
                            klarna_account: cmd.klarna_account.clone(),
                            order_id: cmd.order_id.clone(),
                        }),
                    )
                    .await
                    .map_err(|e| fail(rpc, e))?;
                Currency::parse(&order.currency).map_err(|e| {
                    fail(
                        rpc,
                        GatewayError::Internal(format!("the order's currency is unreadable: {e}")),
                    )
                })?
            }
        };
        grant
            .check_amount(cmd.refunded_amount.minor_units(), &currency)
            .map_err(|e| fail(rpc, e))?;
        Ok(Some(currency))
    }

    /// The grants a partner refund needs (its account, its amount in its currency); what it
    /// spends, for the daily cap.
    fn check_partner_refund(
        &self,
        rpc: &'static str,
        grant: &CallerGrant,
        account: Option<&str>,
        amount: Amount,
        currency: &Currency,
    ) -> Result<Option<(i64, Currency)>, Status> {
        self.check_account(rpc, grant, account, KlarnaApiKind::Payments)?;
        grant
            .check_amount(amount.minor_units(), currency)
            .map_err(|e| fail(rpc, e))?;
        Ok(Some((amount.minor_units(), currency.clone())))
    }

    /// Reserves `amount` in the caller's total of `currency` for today when it has a cap per
    /// day there; DAILY_LIMIT_REACHED when the total would pass it. The protocol gives the
    /// reservation back if the operation moves no money.
    ///
    /// Owns its arguments: it runs in the operation's task ([`Protocol::execute`]).
    async fn reserve_daily(
        protocol: Protocol,
        grant: Arc<CallerGrant>,
        spend: Option<(i64, Currency)>,
        operation_id: OperationId,
    ) -> Result<Option<DailyReservation>, GatewayError> {
        let Some((amount, currency)) = spend else {
            return Ok(None);
        };
        let Some(cap) = grant.daily_cap(&currency) else {
            return Ok(None);
        };
        // A retry of an operation already made moves no new money, so it reserves nothing (two
        // first requests racing both reserve, and the claim gives the loser's back). Read only
        // here: a caller without a daily cap pays no read before its claim.
        let known = protocol
            .store()
            .get(operation_id)
            .await
            .map_err(|e| GatewayError::StoreUnavailable(e.to_string()))?
            .is_some();
        if known {
            return Ok(None);
        }
        let day = time::OffsetDateTime::now_utc().date();
        let reserved = protocol
            .store()
            .reserve_daily(grant.name(), currency.as_str(), day, amount, cap)
            .await
            .map_err(|e| GatewayError::StoreUnavailable(e.to_string()))?;
        if !reserved {
            return Err(GatewayError::PermissionDenied {
                reason: "DAILY_LIMIT_REACHED",
                description: format!(
                    "caller {} has reached its limit of {cap} {currency} today (UTC)",
                    grant.name()
                ),
            });
        }
        Ok(Some(DailyReservation {
            caller: grant.name().to_owned(),
            currency: currency.to_string(),
            day,
            amount,
        }))
    }

    /// The one path of every mutating RPC once its command is prepared: the work runs through
    /// the exactly-once protocol, its outcome is encoded by `encode` (built in `convert`), and
    /// the stored answer (or a replay of it) is decoded into the response.
    ///
    /// A plain function returning the future, and `prepared` taken apart before it: an
    /// `async fn` keeps its arguments in its state next to the locals moved out of them, so the
    /// call's state held the prepared command (and its unboxed work) twice.
    fn mutate<O, T>(
        &self,
        rpc: &'static str,
        context: CallContext,
        prepared: Prepared<
            impl std::future::Future<Output = Result<O, GatewayError>> + Send + 'static,
        >,
        encode: impl FnOnce(O) -> Encoded + Send + 'static,
        set_replayed: impl FnOnce(&mut T, bool),
        spend: Option<(i64, Currency)>,
    ) -> impl std::future::Future<Output = Result<Response<T>, Status>>
    where
        O: Send + 'static,
        T: Message + Default,
    {
        let Prepared {
            mut new,
            work,
            context: answer_context,
        } = prepared;
        let work = work
            .inspect_err(move |e| log_failure(rpc, e))
            .map_ok(encode)
            .boxed();
        async move {
            let minimum = self.protocol.settings().min_deadline;
            if let Some(remaining) = context.deadline.filter(|d| *d < minimum) {
                return Err(fail(
                    rpc,
                    GatewayError::DeadlineTooShort { remaining, minimum },
                ));
            }
            // Taken in the operation's task, so that a caller gone before its claim cannot
            // leave the amount reserved.
            let reserve = Self::reserve_daily(
                self.protocol.clone(),
                context.grant,
                spend,
                new.operation_id,
            );
            new.trace_id = context.request_id;
            new.traceparent = crate::telemetry::current_traceparent();
            let span = tracing::Span::current();
            span.record("refund.operation_id", new.operation_id.to_string());
            let stored = self
                .protocol
                .execute(new, context.deadline, work, answer_context, reserve)
                .await;
            if let Ok(stored) = &stored {
                span.record("refund.idempotency_replayed", stored.replayed);
            }
            answer(rpc, stored, set_replayed)
        }
    }
}

#[tonic::async_trait]
impl RefundGatewayService for RefundGatewayApi {
    async fn refund_order(
        &self,
        request: Request<pb::RefundOrderRequest>,
    ) -> Result<Response<pb::RefundOrderResponse>, Status> {
        const RPC: &str = "RefundOrder";
        let context = CallContext::of(RPC, &request)?;
        let mut r = request.into_inner();
        let (store_id, currency) = (std::mem::take(&mut r.store_id), r.currency.clone());
        self.route(
            RPC,
            &mut r.klarna_account,
            &store_id,
            &currency,
            KlarnaApiKind::OrderManagement,
        )?;
        // A receipt or Klarna reference names the order through the index; from here on the
        // request is the same as one naming the order id, fingerprint included.
        let selector =
            match OrderSelector::parse(&r.order_id, &r.receipt_reference, &r.klarna_reference) {
                Ok(selector) => selector,
                Err(mut violations) => {
                    // Every bad field at once: the others are checked as for a valid order id.
                    let mut rest = r.clone();
                    rest.order_id = PLACEHOLDER_ORDER_ID.to_owned();
                    if let Err(others) = RefundOrder::validate(convert::refund_order_draft(rest)) {
                        for v in others.as_slice() {
                            violations.push(v.field.clone(), v.description.clone());
                        }
                    }
                    return Err(fail(RPC, violations.into()));
                }
            };
        match selector {
            OrderSelector::Id(_) => {}
            OrderSelector::Receipt(receipt) => {
                r.order_id = self
                    .order_of_reference(
                        RPC,
                        &context.grant,
                        &r.klarna_account,
                        ReferenceQuery::Receipt(receipt),
                    )
                    .await?;
            }
            OrderSelector::Klarna(reference) => {
                r.order_id = self
                    .order_of_reference(
                        RPC,
                        &context.grant,
                        &r.klarna_account,
                        ReferenceQuery::Klarna(reference),
                    )
                    .await?;
            }
        }
        let cmd = RefundOrder::validate(convert::refund_order_draft(r))
            .map_err(|v| fail(RPC, v.into()))?;
        let grant = &context.grant;
        self.check_account(
            RPC,
            grant,
            cmd.klarna_account.as_deref(),
            KlarnaApiKind::OrderManagement,
        )?;
        let capped_currency = self
            .check_order_refund_amount(RPC, grant, &cmd, context.deadline)
            .await?;
        let spend = capped_currency.map(|c| (cmd.refunded_amount.minor_units(), c));
        if cmd.validate_only {
            let (order_id, amount) = (cmd.order_id.to_string(), cmd.refunded_amount.minor_units());
            let outcome = self
                .gateway
                .validate_refund(&context.caller, cmd)
                .await
                .map_err(|e| fail(RPC, e))?;
            return Ok(Response::new(convert::refund_response(
                &order_id, amount, &outcome, true,
            )));
        }
        let (order_id, amount) = (cmd.order_id.to_string(), cmd.refunded_amount.minor_units());
        let prepared = self
            .gateway
            .refund_order(&context.caller, cmd)
            .map_err(|e| fail(RPC, e))?;
        self.mutate(
            RPC,
            context,
            prepared,
            move |outcome| convert::refund_encoded(&order_id, amount, outcome),
            |m: &mut pb::RefundOrderResponse, r| m.replayed = r,
            spend,
        )
        .await
    }

    async fn release_authorization(
        &self,
        request: Request<pb::ReleaseAuthorizationRequest>,
    ) -> Result<Response<pb::ReleaseAuthorizationResponse>, Status> {
        const RPC: &str = "ReleaseAuthorization";
        let context = CallContext::of(RPC, &request)?;
        let mut r = request.into_inner();
        let store_id = std::mem::take(&mut r.store_id);
        let api = KlarnaApiKind::OrderManagement;
        self.route(RPC, &mut r.klarna_account, &store_id, "", api)?;
        let cmd = ReleaseAuthorization::validate(convert::release_draft(r))
            .map_err(|v| fail(RPC, v.into()))?;
        self.check_account(
            RPC,
            &context.grant,
            cmd.klarna_account.as_deref(),
            KlarnaApiKind::OrderManagement,
        )?;
        let order_id = cmd.order_id.to_string();
        let prepared = self
            .gateway
            .release_authorization(&context.caller, cmd)
            .map_err(|e| fail(RPC, e))?;
        self.mutate(
            RPC,
            context,
            prepared,
            move |outcome| convert::release_encoded(order_id, outcome),
            |m: &mut pb::ReleaseAuthorizationResponse, r| m.replayed = r,
            None,
        )
        .await
    }

    async fn get_extend_due_date_options(
        &self,
        request: Request<pb::GetExtendDueDateOptionsRequest>,
    ) -> Result<Response<pb::GetExtendDueDateOptionsResponse>, Status> {
        const RPC: &str = "GetExtendDueDateOptions";
        let grant = authorize(RPC, &request)?;
        let (metadata, _, r) = request.into_parts();
        let q = ExtendDueDateOptionsQuery::validate(r.klarna_account, &r.order_id, &r.capture_id)
            .map_err(|v| fail(RPC, v.into()))?;
        self.check_account(
            RPC,
            &grant,
            q.klarna_account.as_deref(),
            KlarnaApiKind::OrderManagement,
        )?;
        let options = self
            .read(
                grpc_timeout(&metadata),
                self.gateway.extend_due_date_options(q),
            )
            .await
            .map_err(|e| fail(RPC, e))?;
        Ok(Response::new(convert::extend_due_date_options(options)))
    }

    async fn extend_due_date(
        &self,
        request: Request<pb::ExtendDueDateRequest>,
    ) -> Result<Response<pb::ExtendDueDateResponse>, Status> {
        const RPC: &str = "ExtendDueDate";
        let context = CallContext::of(RPC, &request)?;
        let mut r = request.into_inner();
        let store_id = std::mem::take(&mut r.store_id);
        let api = KlarnaApiKind::OrderManagement;
        self.route(RPC, &mut r.klarna_account, &store_id, "", api)?;
        let cmd = ExtendDueDate::validate(convert::extend_due_date_draft(r))
            .map_err(|v| fail(RPC, v.into()))?;
        self.check_account(
            RPC,
            &context.grant,
            cmd.klarna_account.as_deref(),
            KlarnaApiKind::OrderManagement,
        )?;
        let (order_id, capture_id) = (cmd.order_id.to_string(), cmd.capture_id.to_string());
        let prepared = self
            .gateway
            .extend_due_date(&context.caller, cmd)
            .map_err(|e| fail(RPC, e))?;
        self.mutate(
            RPC,
            context,
            prepared,
            move |(outcome, option, currency)| {
                convert::extension_encoded(order_id, capture_id, outcome, option, currency)
            },
            |m: &mut pb::ExtendDueDateResponse, r| m.replayed = r,
            None,
        )
        .await
    }

    async fn link_receipt(
        &self,
        request: Request<pb::LinkReceiptRequest>,
    ) -> Result<Response<pb::LinkReceiptResponse>, Status> {
        const RPC: &str = "LinkReceipt";
        let grant = authorize(RPC, &request)?;
        let (metadata, _, mut r) = request.into_parts();
        let api = KlarnaApiKind::OrderManagement;
        self.route(RPC, &mut r.klarna_account, &r.store_id.clone(), "", api)?;
        let link = convert::link_receipt(r).map_err(|v| fail(RPC, v.into()))?;
        self.check_account(
            RPC,
            &grant,
            link.klarna_account.as_deref(),
            KlarnaApiKind::OrderManagement,
        )?;
        let (account, created) = self
            .read(
                grpc_timeout(&metadata),
                self.gateway.link_receipt(
                    link.klarna_account.as_deref(),
                    link.receipt.clone(),
                    link.order_id.clone(),
                    link.store_id,
                ),
            )
            .await
            .map_err(|e| fail(RPC, e))?;
        Ok(Response::new(pb::LinkReceiptResponse {
            receipt_reference: link.receipt.to_string(),
            order_id: link.order_id.to_string(),
            klarna_account: account,
            created,
        }))
    }

    async fn find_order(
        &self,
        request: Request<pb::FindOrderRequest>,
    ) -> Result<Response<pb::FindOrderResponse>, Status> {
        const RPC: &str = "FindOrder";
        let grant = authorize(RPC, &request)?;
        let (metadata, _, mut r) = request.into_parts();
        let store_id = std::mem::take(&mut r.store_id);
        let api = KlarnaApiKind::OrderManagement;
        self.route(RPC, &mut r.klarna_account, &store_id, "", api)?;
        let query = ReferenceQuery::parse(&r.receipt_reference, &r.klarna_reference)
            .map_err(|v| fail(RPC, v.into()))?;
        let account = (!r.klarna_account.is_empty()).then_some(r.klarna_account.as_str());
        self.check_account(RPC, &grant, account, KlarnaApiKind::OrderManagement)?;
        let (account, order) = self
            .read(
                grpc_timeout(&metadata),
                self.gateway.find_order(account, &query),
            )
            .await
            .map_err(|e| fail(RPC, e))?;
        Ok(Response::new(convert::find_order_response(account, &order)))
    }

    async fn get_operation(
        &self,
        request: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::GetOperationResponse>, Status> {
        const RPC: &str = "GetOperation";
        let grant = authorize(RPC, &request)?;
        let r = request.into_inner();
        let name = OperationName::parse(
            &r.operation_id,
            &r.rpc,
            &r.idempotency_key,
            &r.caller,
            &grant.scope(),
        )
        .map_err(|v| fail(RPC, v.into()))?;
        let operation = self
            .visible_operation(&grant, &name)
            .await
            .map_err(|e| fail(RPC, e))?;
        Ok(Response::new(pb::GetOperationResponse {
            operation: Some(operation),
        }))
    }

    type WatchOperationStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<pb::WatchOperationResponse, Status>> + Send>,
    >;

    async fn watch_operation(
        &self,
        request: Request<pb::WatchOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        const RPC: &str = "WatchOperation";
        let grant = authorize(RPC, &request)?;
        let watch_for = grpc_timeout(request.metadata())
            .unwrap_or(MAX_WATCH)
            .min(MAX_WATCH)
            .saturating_sub(self.protocol.settings().deadline_margin);
        let r = request.into_inner();
        let name = OperationName::parse(
            &r.operation_id,
            &r.rpc,
            &r.idempotency_key,
            &r.caller,
            &grant.scope(),
        )
        .map_err(|v| fail(RPC, v.into()))?;
        // Unknown or not visible: refused now, not as a stream that ends at once.
        let first = self
            .visible_operation(&grant, &name)
            .await
            .map_err(|e| fail(RPC, e))?;
        let api = self.clone();
        let until = tokio::time::Instant::now() + watch_for;
        let head = futures::stream::once(std::future::ready(Ok::<_, Status>(
            pb::WatchOperationResponse {
                operation: Some(first.clone()),
            },
        )));
        let stream = futures::StreamExt::chain(
            head,
            records_after(first, move |last| {
                let api = api.clone();
                let grant = grant.clone();
                let name = name.clone();
                async move {
                    loop {
                        if is_final(&last) || tokio::time::Instant::now() >= until {
                            return None;
                        }
                        tokio::time::sleep_until(
                            (tokio::time::Instant::now() + WATCH_INTERVAL).min(until),
                        )
                        .await;
                        match api.visible_operation(&grant, &name).await {
                            Ok(now) if now != last => return Some(Ok(now)),
                            Ok(_) => {}
                            Err(e) => return Some(Err(fail(RPC, e))),
                        }
                    }
                }
            }),
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        const RPC: &str = "GetOrder";
        let grant = authorize(RPC, &request)?;
        let (metadata, _, r) = request.into_parts();
        let q =
            OrderQuery::validate(r.klarna_account, &r.order_id).map_err(|v| fail(RPC, v.into()))?;
        self.check_account(
            RPC,
            &grant,
            q.klarna_account.as_deref(),
            KlarnaApiKind::OrderManagement,
        )?;
        let order = self
            .read(grpc_timeout(&metadata), self.gateway.order(q))
            .await
            .map_err(|e| fail(RPC, e))?;
        Ok(Response::new(convert::get_order_response(order)))
    }

    async fn get_refund(
        &self,
        request: Request<pb::GetRefundRequest>,
    ) -> Result<Response<pb::GetRefundResponse>, Status> {
        const RPC: &str = "GetRefund";
        let grant = authorize(RPC, &request)?;
        let (metadata, _, r) = request.into_parts();
        let q = RefundQuery::validate(r.klarna_account, &r.order_id, &r.refund_id)
            .map_err(|v| fail(RPC, v.into()))?;
        self.check_account(
            RPC,
            &grant,
            q.klarna_account.as_deref(),
            KlarnaApiKind::OrderManagement,
        )?;
        let refund = self
            .read(grpc_timeout(&metadata), self.gateway.refund(q))
            .await
            .map_err(|e| fail(RPC, e))?;
        Ok(Response::new(convert::get_refund_response(refund)))
    }

    async fn refund_capture(
        &self,
        request: Request<pb::RefundCaptureRequest>,
    ) -> Result<Response<pb::RefundCaptureResponse>, Status> {
        const RPC: &str = "RefundCapture";
        let context = CallContext::of(RPC, &request)?;
        let mut r = request.into_inner();
        let (store_id, currency) = (std::mem::take(&mut r.store_id), r.currency.clone());
        self.route(
            RPC,
            &mut r.klarna_account,
            &store_id,
            &currency,
            KlarnaApiKind::Payments,
        )?;
        let cmd = RefundCapture::validate(convert::refund_capture_draft(r))
            .map_err(|v| fail(RPC, v.into()))?;
        let spend = self.check_partner_refund(
            RPC,
            &context.grant,
            cmd.klarna_account.as_deref(),
            cmd.amount,
            &cmd.currency,
        )?;
        let answer = cmd.clone();
        if cmd.validate_only {
            let outcome = self
                .gateway
                .validate_capture_refund(&context.caller, cmd)
                .await
                .map_err(|e| fail(RPC, e))?;
            return Ok(Response::new(convert::capture_refund_response(
                &answer, &outcome,
            )));
        }
        let prepared = self
            .gateway
            .refund_capture(&context.caller, cmd)
            .map_err(|e| fail(RPC, e))?;
        self.mutate(
            RPC,
            context,
            prepared,
            move |outcome| {
                convert::partner_refund_encoded(
                    convert::capture_refund_response(&answer, &outcome),
                    outcome,
                )
            },
            |m: &mut pb::RefundCaptureResponse, r| m.replayed = r,
            spend,
        )
        .await
    }

    async fn refund_transaction(
        &self,
        request: Request<pb::RefundTransactionRequest>,
    ) -> Result<Response<pb::RefundTransactionResponse>, Status> {
        const RPC: &str = "RefundTransaction";
        let context = CallContext::of(RPC, &request)?;
        let mut r = request.into_inner();
        let (store_id, currency) = (std::mem::take(&mut r.store_id), r.currency.clone());
        self.route(
            RPC,
            &mut r.klarna_account,
            &store_id,
            &currency,
            KlarnaApiKind::Payments,
        )?;
        let cmd = RefundTransaction::validate(convert::refund_transaction_draft(r))
            .map_err(|v| fail(RPC, v.into()))?;
        let spend = self.check_partner_refund(
            RPC,
            &context.grant,
            cmd.klarna_account.as_deref(),
            cmd.amount,
            &cmd.currency,
        )?;
        let answer = cmd.clone();
        if cmd.validate_only {
            let outcome = self
                .gateway
                .validate_transaction_refund(&context.caller, cmd)
                .await
                .map_err(|e| fail(RPC, e))?;
            return Ok(Response::new(convert::transaction_refund_response(
                &answer, &outcome,
            )));
        }
        let prepared = self
            .gateway
            .refund_transaction(&context.caller, cmd)
            .map_err(|e| fail(RPC, e))?;
        self.mutate(
            RPC,
            context,
            prepared,
            move |outcome| {
                convert::partner_refund_encoded(
                    convert::transaction_refund_response(&answer, &outcome),
                    outcome,
                )
            },
            |m: &mut pb::RefundTransactionResponse, r| m.replayed = r,
            spend,
        )
        .await
    }

    async fn get_transaction(
        &self,
        request: Request<pb::GetTransactionRequest>,
    ) -> Result<Response<pb::GetTransactionResponse>, Status> {
        const RPC: &str = "GetTransaction";
        let grant = authorize(RPC, &request)?;
        let (metadata, _, r) = request.into_parts();
        let q = TransactionQuery::validate(r.klarna_account, &r.payment_transaction_id)
            .map_err(|v| fail(RPC, v.into()))?;
        self.check_account(
            RPC,
            &grant,
            q.klarna_account.as_deref(),
            KlarnaApiKind::Payments,
        )?;
        let transaction = self
            .read(grpc_timeout(&metadata), self.gateway.transaction(q))
            .await
            .map_err(|e| fail(RPC, e))?;
        Ok(Response::new(convert::get_transaction_response(
            transaction,
        )))
    }

    async fn list_operations(
        &self,
        request: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsResponse>, Status> {
        const RPC: &str = "ListOperations";
        let grant = authorize(RPC, &request)?;
        let (mut filter, page_size, page_token) =
            convert::operation_filter(request.into_inner()).map_err(|v| fail(RPC, v.into()))?;
        // A caller without `*` for RPCs sees its own operations only, whatever it asks for.
        if !grant.sees_all_operations() {
            filter.caller = Some(grant.scope().to_string());
        }
        let page = self
            .protocol
            .store()
            .list(&filter, page_size, page_token.as_deref())
            .await
            .map_err(|e| match e {
                refund_gateway_domain::StoreError::InvalidPageToken => fail(
                    RPC,
                    refund_gateway_domain::Violations::single(
                        "page_token",
                        "is not a token this gateway issued",
                    )
                    .into(),
                ),
                other => fail(RPC, GatewayError::StoreUnavailable(other.to_string())),
            })?;
        Ok(Response::new(convert::operation_page(page)))
    }
}
