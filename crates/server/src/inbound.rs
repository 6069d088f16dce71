//! The inbound tower stack (see `docs/architecture.md#middleware`): [`inbound_stack`], the
//! one function that builds it (for `main` and every test, through [`crate::start`]), and its
//! protective layers: the per-caller rate limit, the server-wide concurrency limit with its
//! queue and load shedding, and the answer to a request larger than the gateway decodes. Each
//! refuses with a status built by `crate::status`, at once, and only `refundgateway.*` calls:
//! health checks and reflection keep answering under a flood.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::{Request, Response};
use refund_gateway_domain::GatewayError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use tower::layer::util::{Identity, Stack};
use tower_http::classify::{GrpcErrorsAsFailures, SharedClassifier};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnBodyChunk, DefaultOnEos, TraceLayer};

use crate::auth::{AuthLayer, AuthenticatedCaller, Authentication};
use crate::grpc::grpc_timeout_header;
use crate::middleware::{REQUEST_ID, RpcEnd, RpcFailure, RpcMetricsLayer, RpcSpan, RpcStart};
use crate::status::to_status;

/// The inbound stack's layers, outermost first.
pub type InboundStack = tower::ServiceBuilder<
    Stack<
        MessageSizeLayer,
        Stack<
            ShedLayer,
            Stack<
                CallerRateLimitLayer,
                Stack<
                    AuthLayer,
                    Stack<
                        PropagateRequestIdLayer,
                        Stack<
                            RpcMetricsLayer,
                            Stack<
                                TraceLayer<
                                    SharedClassifier<GrpcErrorsAsFailures>,
                                    RpcSpan,
                                    RpcStart,
                                    RpcEnd,
                                    DefaultOnBodyChunk,
                                    DefaultOnEos,
                                    RpcFailure,
                                >,
                                Stack<SetRequestIdLayer<MakeRequestUuid>, Identity>,
                            >,
                        >,
                    >,
                >,
            >,
        >,
    >,
>;

/// The inbound stack, outermost first; each layer's comment says why it sits where it does.
pub fn inbound_stack(
    authentication: Authentication,
    max_concurrent_rpcs: usize,
    max_running_rpcs: usize,
    max_message_bytes: usize,
    deadline_margin: Duration,
) -> InboundStack {
    tower::ServiceBuilder::new()
        // Outermost: give every call a request id before anything logs about it, so the span,
        // the handler's lines and the caller's response carry the same one.
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        // The RPC span next: everything below, refusals by later layers included, is inside it.
        .layer(
            TraceLayer::new_for_grpc()
                .make_span_with(RpcSpan)
                .on_request(RpcStart)
                .on_response(RpcEnd)
                .on_failure(RpcFailure),
        )
        // Counted inside the span, around everything that can refuse the call, so refusals
        // by authentication, rate limits and shedding are counted with their codes.
        .layer(RpcMetricsLayer)
        // Echo the id to the caller from inside the span, so the echo belongs to the call.
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        // Who is calling, inside the span (so a refusal is logged and traced with its call) and
        // before anything that spends work or quota on the call.
        .layer(AuthLayer::new(authentication))
        // Each caller's rate, keyed by the identity just established: one caller's flood is
        // refused before it takes a slot from the others.
        .layer(CallerRateLimitLayer::default())
        // The server-wide concurrency limit after the per-caller one, so a flooding caller's
        // refused calls never hold a slot; beyond it calls are shed at once. Before the
        // service, so a call waiting for its turn has not been decoded or started anything.
        .layer(ShedLayer::new(
            max_concurrent_rpcs,
            max_running_rpcs,
            deadline_margin,
        ))
        // Innermost: tonic's answer to an oversized message becomes RESOURCE_EXHAUSTED.
        .layer(MessageSizeLayer::new(max_message_bytes))
}

/// The package whose calls the layers guard.
const GUARDED_PREFIX: &str = "/refundgateway.";

fn guarded<B>(request: &Request<B>) -> bool {
    request.uri().path().starts_with(GUARDED_PREFIX)
}

/// Limits each authenticated caller to its `requests_per_second` (burst: its `burst`, else
/// one second's worth), each caller with its own bucket, so one caller's flood never limits
/// another. Callers without a rate are not limited.
#[derive(Debug, Clone, Default)]
pub struct CallerRateLimitLayer {
    buckets: Arc<Mutex<HashMap<String, Bucket>>>,
}

/// A caller's bucket, with the rate (per second, burst) it was made for.
type Bucket = ((u32, u32), Arc<DefaultDirectRateLimiter>);

impl CallerRateLimitLayer {
    /// The bucket of `name` at `rate`; a changed rate (a reloaded callers file) starts a new one.
    fn bucket(&self, name: &str, rate: (u32, u32)) -> Arc<DefaultDirectRateLimiter> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((r, bucket)) = buckets.get(name)
            && *r == rate
        {
            return bucket.clone();
        }
        let per_second = NonZeroU32::new(rate.0).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(rate.1).unwrap_or(per_second);
        let bucket = Arc::new(RateLimiter::direct(
            Quota::per_second(per_second).allow_burst(burst),
        ));
        buckets.insert(name.to_owned(), (rate, bucket.clone()));
        bucket
    }
}

impl<S> tower::Layer<S> for CallerRateLimitLayer {
    type Service = Gated<S, Self>;

    fn layer(&self, inner: S) -> Self::Service {
        Gated {
            inner,
            gate: self.clone(),
        }
    }
}

impl Gate for CallerRateLimitLayer {
    type Pass = ();

    fn admit<B>(&self, request: &Request<B>) -> Result<Admission<()>, GatewayError> {
        let Some(caller) = request.extensions().get::<AuthenticatedCaller>() else {
            return Ok(Admission::Now(()));
        };
        let caller = &caller.0;
        let Some(rate) = caller.rate() else {
            return Ok(Admission::Now(()));
        };
        let checked = self.bucket(caller.name(), rate).check();
        checked.map(Admission::Now).map_err(|not_until| {
            metrics::counter!("rpc_caller_rate_limited_total", "caller" => caller.name().to_owned())
                .increment(1);
            GatewayError::CallerRateLimited {
                caller: caller.name().to_owned(),
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            }
        })
    }
}

/// At most `limit` `refundgateway.*` calls at once across the whole server (not per
/// connection), of which at most `running` are served at once and the rest wait their turn, in
/// order of arrival. One more than `limit` is refused at once rather than queued, so a flood
/// cannot grow an unbounded queue or starve the health checks.
///
/// A waiting call holds only its request: it has not been decoded, claimed anything or
/// reached Klarna, and its deadline (`grpc-timeout`) runs while it waits, so a call that
/// waits too long is answered DEADLINE_EXCEEDED with nothing done. Served calls are
/// what cost memory (tens of KiB each: the handler, the operation, its Klarna call), so the
/// queue bounds the gateway's memory under a burst without refusing it.
#[derive(Debug, Clone)]
pub struct ShedLayer {
    admitted: Arc<Semaphore>,
    running: Arc<Semaphore>,
    limit: usize,
    margin: Duration,
}

impl ShedLayer {
    /// A server-wide limit of `limit` concurrent calls, `running` of them served at once (at
    /// most `limit`). A waiting call with a deadline (`grpc-timeout`) gives up `margin` before
    /// it, answering DEADLINE_EXCEEDED `WAITED_PAST_DEADLINE` while the caller still listens.
    pub fn new(limit: usize, running: usize, margin: Duration) -> Self {
        // Exported from the start, at 0 until a call waits, so a dashboard sees "none" rather
        // than "no data".
        metrics::gauge!(WAITING).increment(0.0);
        Self {
            admitted: Arc::new(Semaphore::new(limit)),
            running: Arc::new(Semaphore::new(running.min(limit))),
            limit,
            margin,
        }
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Gated<S, Self>;

    fn layer(&self, inner: S) -> Self::Service {
        Gated {
            inner,
            gate: self.clone(),
        }
    }
}

impl Gate for ShedLayer {
    /// A place among the calls taken and a turn among those served, held until the call's
    /// answer is ready.
    type Pass = (OwnedSemaphorePermit, OwnedSemaphorePermit);

    fn admit<B>(&self, request: &Request<B>) -> Result<Admission<Self::Pass>, GatewayError> {
        let taken = self.admitted.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("rpc_load_shed_total").increment(1);
            GatewayError::Overloaded { limit: self.limit }
        })?;
        Ok(match self.running.clone().try_acquire_owned() {
            Ok(turn) => Admission::Now((taken, turn)),
            Err(_) => {
                let running = self.running.clone();
                let limit = self.limit;
                let waiting = Waiting::start();
                // From now: tonic starts its own timer of the deadline after this stack has
                // made the call's future, so this wait always ends first.
                let arrived = tokio::time::Instant::now();
                let give_up = grpc_timeout_header(request.headers())
                    .map(|timeout| arrived + timeout.saturating_sub(self.margin));
                Admission::Later(Box::pin(async move {
                    let turn = match give_up {
                        Some(give_up) => tokio::select! {
                            turn = running.acquire_owned() => turn,
                            () = tokio::time::sleep_until(give_up) => {
                                return Err(GatewayError::WaitedPastDeadline {
                                    waited: arrived.elapsed(),
                                });
                            }
                        },
                        // The semaphore is never closed: the wait ends with a turn.
                        None => running.acquire_owned().await,
                    };
                    drop(waiting);
                    turn.map(|turn| (taken, turn))
                        .map_err(|_| GatewayError::Overloaded { limit })
                }))
            }
        })
    }
}

/// The gauge of calls taken and waiting for their turn.
const WAITING: &str = "rpc_waiting";

/// A call counted in [`WAITING`] from its admission until its turn comes or it ends first
/// (its deadline passed, its client went away): the count goes down when this is dropped,
/// whichever way the wait ends.
struct Waiting;

impl Waiting {
    fn start() -> Self {
        metrics::gauge!(WAITING).increment(1.0);
        Self
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        metrics::gauge!(WAITING).decrement(1.0);
    }
}

/// A check a `refundgateway.*` call must pass before it goes on: what it yields is held until
/// the call's answer is ready; a refusal is answered at once.
pub trait Gate: Clone + Send + Sync + 'static {
    /// What an admitted call holds while it runs.
    type Pass: Send + 'static;

    /// Admits `request`, now or when its turn comes, or says why not.
    fn admit<B>(&self, request: &Request<B>) -> Result<Admission<Self::Pass>, GatewayError>;
}

/// A [`Gate`]'s admission of a call.
pub enum Admission<P> {
    /// The call goes on now, holding `P`.
    Now(P),
    /// The call waits for this, then goes on holding `P` or is refused.
    Later(BoxFuture<'static, Result<P, GatewayError>>),
}

impl<P: std::fmt::Debug> std::fmt::Debug for Admission<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Now(pass) => f.debug_tuple("Now").field(pass).finish(),
            Self::Later(_) => f.write_str("Later"),
        }
    }
}

/// The service of a [`Gate`]'s layer.
#[derive(Debug, Clone)]
pub struct Gated<S, G> {
    inner: S,
    gate: G,
}

impl<S, G, B, ResBody> tower::Service<Request<B>> for Gated<S, G>
where
    S: tower::Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    G: Gate,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if !guarded(&request) {
            return Box::pin(self.inner.call(request));
        }
        match self.gate.admit(&request) {
            Ok(Admission::Now(pass)) => {
                let call = self.inner.call(request);
                Box::pin(async move {
                    let response = call.await;
                    drop(pass);
                    response
                })
            }
            Ok(Admission::Later(turn)) => {
                // The service made ready by `poll_ready` goes with the call (tower's rule:
                // call only a ready service) and a clone takes its place here.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move {
                    let pass = match turn.await {
                        Ok(pass) => pass,
                        Err(error) => return Ok(to_status(&error).into_http()),
                    };
                    let response = inner.call(request).await;
                    drop(pass);
                    response
                })
            }
            Err(error) => {
                let response = to_status(&error).into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

/// Answers what tonic's decoder refuses the gateway's way: a request larger than
/// `max_message_bytes` with RESOURCE_EXHAUSTED, the gRPC convention, where tonic says
/// OUT_OF_RANGE; a request that is not a valid protobuf message (a string that is not UTF-8,
/// a truncated field) with INVALID_ARGUMENT naming the field, where tonic says INTERNAL: the
/// caller's bytes are at fault, not the gateway.
#[derive(Debug, Clone, Copy)]
pub struct MessageSizeLayer {
    limit: usize,
}

impl MessageSizeLayer {
    /// Requests above `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> tower::Layer<S> for MessageSizeLayer {
    type Service = MessageSize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageSize {
            inner,
            limit: self.limit,
        }
    }
}

/// [`MessageSizeLayer`]'s service.
#[derive(Debug, Clone)]
pub struct MessageSize<S> {
    inner: S,
    limit: usize,
}

impl<S, B, ResBody> tower::Service<Request<B>> for MessageSize<S>
where
    S: tower::Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let limit = self.limit;
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            if crate::status::is_message_too_large(response.headers()) {
                return Ok(to_status(&GatewayError::MessageTooLarge { limit }).into_http());
            }
            if let Some(violations) = crate::status::malformed_request(response.headers()) {
                return Ok(to_status(&GatewayError::InvalidArgument(violations)).into_http());
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::FutureExt;
    use tower::{Layer, Service, ServiceExt};

    use super::*;

    const REFUND: &str = "/refundgateway.v1.RefundGatewayService/RefundOrder";
    const HEALTH: &str = "/grpc.health.v1.Health/Check";
    const MARGIN: Duration = Duration::from_millis(250);

    /// A service that counts the calls it was given and answers each once `release` has a
    /// permit for it.
    #[derive(Clone)]
    struct Held {
        started: Arc<AtomicUsize>,
        release: Arc<Semaphore>,
    }

    impl Held {
        fn new() -> Self {
            Self {
                started: Arc::new(AtomicUsize::new(0)),
                release: Arc::new(Semaphore::new(0)),
            }
        }

        fn started(&self) -> usize {
            self.started.load(Ordering::SeqCst)
        }
    }

    impl Service<Request<()>> for Held {
        type Response = Response<String>;
        type Error = Infallible;
        type Future = BoxFuture<'static, Result<Response<String>, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: Request<()>) -> Self::Future {
            self.started.fetch_add(1, Ordering::SeqCst);
            let release = self.release.clone();
            Box::pin(async move {
                release
                    .acquire()
                    .await
                    .unwrap_or_else(|e| panic!("never closed: {e}"))
                    .forget();
                Ok(Response::new(String::new()))
            })
        }
    }

    type Call = BoxFuture<'static, Result<Response<String>, Infallible>>;

    async fn call(service: &mut Gated<Held, ShedLayer>, path: &str) -> Call {
        call_with(service, path, None).await
    }

    /// [`call`] with a `grpc-timeout` header.
    async fn call_with(
        service: &mut Gated<Held, ShedLayer>,
        path: &str,
        grpc_timeout: Option<&str>,
    ) -> Call {
        let mut request = Request::builder().uri(path);
        if let Some(timeout) = grpc_timeout {
            request = request.header("grpc-timeout", timeout);
        }
        let request = request
            .body(())
            .unwrap_or_else(|e| panic!("a valid request: {e}"));
        service
            .ready()
            .await
            .unwrap_or_else(|e| match e {})
            .call(request)
    }

    /// Polls `call` once: its answer if it has one now.
    fn poll(call: &mut Call) -> Option<Response<String>> {
        call.now_or_never().map(|answer| match answer {
            Ok(response) => response,
        })
    }

    /// The answer's gRPC code (`grpc-status`; none: OK, a plain answer).
    fn code(response: &Response<String>) -> tonic::Code {
        response
            .headers()
            .get("grpc-status")
            .map_or(tonic::Code::Ok, |code| {
                tonic::Code::from_bytes(code.as_bytes())
            })
    }

    #[tokio::test]
    async fn past_the_running_limit_a_call_waits_its_turn_and_past_the_limit_it_is_shed() {
        let held = Held::new();
        let layer = ShedLayer::new(3, 2, MARGIN);
        let mut service = layer.layer(held.clone());

        let mut first = call(&mut service, REFUND).await;
        let mut second = call(&mut service, REFUND).await;
        assert!(poll(&mut first).is_none() && poll(&mut second).is_none());
        assert_eq!(held.started(), 2);

        // The third is taken but not served: the service has not seen it.
        let mut third = call(&mut service, REFUND).await;
        assert!(poll(&mut third).is_none());
        assert_eq!(
            held.started(),
            2,
            "a third call was served past the running limit"
        );

        // A fourth is past `max_concurrent_rpcs` (the waiting call counts): shed at once.
        let mut fourth = call(&mut service, REFUND).await;
        let shed = poll(&mut fourth).unwrap_or_else(|| panic!("a shed call is answered at once"));
        assert_eq!(code(&shed), tonic::Code::ResourceExhausted);
        assert_eq!(held.started(), 2);

        // Health checks neither wait nor count.
        let mut health = call(&mut service, HEALTH).await;
        assert!(poll(&mut health).is_none());
        assert_eq!(held.started(), 3);

        // The first call ends: the third's turn comes, in its own time.
        held.release.add_permits(1);
        let answered = poll(&mut first).unwrap_or_else(|| panic!("the first call was released"));
        assert_eq!(code(&answered), tonic::Code::Ok);
        assert!(poll(&mut third).is_none());
        assert_eq!(
            held.started(),
            4,
            "the waiting call was not served when a turn freed"
        );

        // A waiting call given up (its caller gone, its deadline past) frees its place.
        let mut waiting = call(&mut service, REFUND).await;
        assert!(poll(&mut waiting).is_none());
        let mut shed = call(&mut service, REFUND).await;
        assert_eq!(
            code(&poll(&mut shed).unwrap_or_else(|| panic!("shed"))),
            tonic::Code::ResourceExhausted
        );
        drop(waiting);
        let mut taken = call(&mut service, REFUND).await;
        assert!(
            poll(&mut taken).is_none(),
            "a dropped waiting call kept its place"
        );
        assert_eq!(held.started(), 4);

        held.release.add_permits(3);
        for mut call in [second, third, health] {
            let answered = poll(&mut call).unwrap_or_else(|| panic!("released"));
            assert_eq!(code(&answered), tonic::Code::Ok);
        }
        assert!(poll(&mut taken).is_none());
        assert_eq!(held.started(), 5);
        held.release.add_permits(1);
        assert_eq!(
            code(&poll(&mut taken).unwrap_or_else(|| panic!("released"))),
            tonic::Code::Ok
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_call_gives_up_its_margin_before_its_deadline_with_deadline_exceeded() {
        let held = Held::new();
        let mut service = ShedLayer::new(3, 1, MARGIN).layer(held.clone());
        let mut first = call(&mut service, REFUND).await;
        assert!(poll(&mut first).is_none());

        // A one-second deadline, behind the one call served: it waits until 750 ms.
        let mut waiting = call_with(&mut service, REFUND, Some("1000m")).await;
        assert!(poll(&mut waiting).is_none());
        tokio::time::advance(Duration::from_millis(740)).await;
        assert!(
            poll(&mut waiting).is_none(),
            "gave up before its deadline less the margin"
        );
        tokio::time::advance(Duration::from_millis(20)).await;
        let answer = poll(&mut waiting)
            .unwrap_or_else(|| panic!("still waiting past its deadline less the margin"));
        assert_eq!(code(&answer), tonic::Code::DeadlineExceeded);
        assert!(answer.headers().contains_key("grpc-status-details-bin"));
        assert_eq!(held.started(), 1, "the call that gave up was served");

        // Without a deadline a call waits as long as it takes, and its place was freed by the
        // one that gave up: two can wait again, a third past them is shed.
        let mut patient = call(&mut service, REFUND).await;
        let mut second = call(&mut service, REFUND).await;
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(poll(&mut patient).is_none() && poll(&mut second).is_none());
        let mut shed = call(&mut service, REFUND).await;
        assert_eq!(
            code(&poll(&mut shed).unwrap_or_else(|| panic!("shed"))),
            tonic::Code::ResourceExhausted
        );
        held.release.add_permits(1);
        assert!(poll(&mut first).is_some());
        assert!(poll(&mut patient).is_none());
        assert_eq!(
            held.started(),
            2,
            "the patient call was not served in its turn"
        );
    }
}
