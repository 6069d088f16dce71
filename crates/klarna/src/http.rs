//! The outbound path: a tower [`Service`] stack from a ready [`OutboundRequest`] to an
//! [`OutboundResponse`] whose body has been read in full.
//!
//! ```text
//! Retry             resends when safe, within the call's deadline (retry.rs)
//!  └ AttemptTrace   one CLIENT span per attempt, counting resends
//!     └ OutboundLimit   one permit of the account's rate limit per attempt (limit.rs; optional)
//!        └ InFlightLimit   at most MAX_IN_FLIGHT attempts at once per account
//!           └ AttemptTimeout   per attempt: min(attempt timeout, time left to the deadline)
//!              └ HttpService   hyper's pooled client over rustls, no retries of its own
//! ```
//!
//! Every layer speaks [`KlarnaError`] (only `NotSent`, `Throttled`, `NoAnswer`, `BadResponse`;
//! a Klarna error status is a response here, classified later), so the retry policy above
//! [`AttemptTraceLayer`] decides from the error or the status alone whether resending is safe.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ::http::header::{HeaderMap, HeaderName, HeaderValue};
use ::http::{Method, StatusCode, Uri};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opentelemetry::propagation::Injector;
use opentelemetry::trace::TraceContextExt as _;
use refund_gateway_domain::KlarnaError;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::Semaphore;
use tower::retry::RetryLayer;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::contract::{CORRELATION_ID_HEADERS, MAX_RESPONSE_BYTES};
use crate::error::{correlation_id, error_chain, error_response, transport_error};
use crate::limit::{OutboundLimitLayer, OutboundLimiter};
use crate::retry::{RetryPolicy, current_deadline};

/// A request to Klarna. Its body is whole in memory, so a resend is a cheap clone.
pub type OutboundRequest = ::http::Request<Bytes>;

/// An answer from Klarna, its body read in full (at most [`MAX_RESPONSE_BYTES`]).
pub type OutboundResponse = ::http::Response<Bytes>;

/// The whole outbound stack, boxed: `Clone + Send + Sync`, so a client can clone it per call.
pub type OutboundService = BoxCloneSyncService<OutboundRequest, OutboundResponse, KlarnaError>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// TLS settings beyond the defaults (the system's roots, no client certificate).
#[derive(Default)]
pub(crate) struct Tls {
    /// Client certificate chain and key for mutual TLS.
    pub(crate) identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    /// Roots trusted in addition to the system's.
    pub(crate) extra_roots: Vec<CertificateDer<'static>>,
}

/// The client the stack ends in: pooled connections (HTTP/1.1, or h2 where the server offers
/// it), rustls verifying against the system's roots plus `tls.extra_roots`, a connect timeout,
/// no Nagle delay. It follows no redirects (a 3xx is an answer to classify, not an invitation
/// to resend a refund elsewhere) and resends nothing itself (resending is the retry layer's
/// decision, made with the idempotency key in view); the one exception is the pool's own: a
/// request whose pooled connection closed before the request was written to it goes on a
/// fresh connection, which cannot send it twice.
pub(crate) fn http_service(
    connect_timeout: Duration,
    tls: Tls,
) -> Result<HttpService, rustls::Error> {
    // A provider installed by the process wins; otherwise aws-lc-rs, the one built in.
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let verifier = if tls.extra_roots.is_empty() {
        rustls_platform_verifier::Verifier::new(provider.clone())?
    } else {
        // Merged with the system's roots, not instead of them.
        rustls_platform_verifier::Verifier::new_with_extra_roots(tls.extra_roots, provider.clone())?
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        // Not dangerous: the platform verifier checks chains and names as a browser would.
        .with_custom_certificate_verifier(Arc::new(verifier));
    let config = match tls.identity {
        Some((chain, key)) => config.with_client_auth_cert(chain, key)?,
        None => config.with_no_client_auth(),
    };
    let mut http = HttpConnector::new();
    // The TLS connector below takes https; plain http is the base URL's to allow or refuse.
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    let client = Client::builder(TokioExecutor::new())
        // The timer reaps connections idle for longer than the pool keeps them.
        .pool_timer(TokioTimer::new())
        // No more idle connections kept than attempts can be in flight at once.
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .build(connector);
    Ok(HttpService { client })
}

/// Builds the stack over `http`: calls resent by `policy`, each attempt taking a permit
/// from `limiter` (when there is one) and limited to `attempt_timeout` and to the call's
/// deadline.
pub(crate) fn outbound_stack(
    http: HttpService,
    attempt_timeout: Duration,
    policy: RetryPolicy,
    limiter: Option<OutboundLimiter>,
) -> OutboundService {
    let stack = ServiceBuilder::new()
        // Outermost: a resend goes through everything below again, so that each attempt gets
        // its own span (and resend count), its own permit and its own timeout. tower's Retry
        // calls its service for the first attempt and a copy of it, taken just after, for the
        // resends: the trace below counts 0, 1, 2, … as long as each call starts from a fresh
        // copy of the stack, which the client's per-call clone guarantees.
        .layer(RetryLayer::new(policy))
        // Outermost of one attempt: its span covers everything the attempt does, including
        // waiting for its permit or being refused one, and running out of time, and records
        // the answer's status and correlation id.
        .layer(AttemptTraceLayer)
        // Below the retry, so that every attempt takes a permit (Klarna counts each request
        // against the quota); above the timeout, so that waiting for a permit does not eat
        // into the attempt's own time (the wait is bounded by the call's deadline instead).
        .option_layer(limiter.map(OutboundLimitLayer::new))
        // Above the timeout for the same reason as the rate limit: waiting for a slot is
        // bounded by the call's deadline, not by the attempt's own time.
        .layer(InFlightLimitLayer::new(MAX_IN_FLIGHT))
        // Innermost limit, so that it bounds one attempt, not a call with its resends; it
        // covers reading the body because HttpService reads it in full.
        .layer(AttemptTimeoutLayer { attempt_timeout })
        .service(http);
    BoxCloneSyncService::new(stack)
}

/// Most attempts in flight at once to one account's Klarna. Without a bound, every call
/// waiting on Klarna holds a connection of its own: 1,000 concurrent refunds opened about 900
/// connections, each with its buffers (peak RSS 136 MiB; 81 MiB with this bound). 128 keeps
/// Klarna's own rate limit (200 requests/s on live) the tighter bound even at 600 ms per
/// answer; a lower bound measured no less memory. Calls beyond it wait for a slot, cheaply.
pub(crate) const MAX_IN_FLIGHT: usize = 128;

/// Adds [`InFlightLimit`] with `slots` slots shared by every clone.
#[derive(Debug, Clone)]
pub(crate) struct InFlightLimitLayer {
    slots: Arc<Semaphore>,
}

impl InFlightLimitLayer {
    pub(crate) fn new(slots: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots)),
        }
    }
}

impl<S> Layer<S> for InFlightLimitLayer {
    type Service = InFlightLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlightLimit {
            inner,
            slots: self.slots.clone(),
        }
    }
}

/// Holds one of the shared slots while each attempt runs; waits for one, at most until the
/// call's deadline ([`current_deadline`]): no slot in time is [`KlarnaError::NotSent`] (the
/// request was not passed on). Does nothing before its future is polled.
#[derive(Debug, Clone)]
pub(crate) struct InFlightLimit<S> {
    inner: S,
    slots: Arc<Semaphore>,
}

impl<S> Service<OutboundRequest> for InFlightLimit<S>
where
    S: Service<OutboundRequest, Error = KlarnaError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = KlarnaError;
    type Future = BoxFuture<Result<S::Response, KlarnaError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: OutboundRequest) -> Self::Future {
        // As in `OutboundLimit`: the ready service goes with the request, a clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let slots = self.slots.clone();
        Box::pin(async move {
            let not_sent = || {
                KlarnaError::NotSent(
                    "the call's deadline passed while waiting for a connection to Klarna"
                        .to_owned(),
                )
            };
            let slot = match current_deadline() {
                Some(deadline) => tokio::time::timeout_at(deadline, slots.acquire_owned())
                    .await
                    .map_err(|_elapsed| not_sent())?,
                None => slots.acquire_owned().await,
            }
            // The semaphore is never closed.
            .map_err(|_closed| not_sent())?;
            let result = inner.call(request).await;
            drop(slot);
            result
        })
    }
}

/// Adds [`AttemptTimeout`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttemptTimeoutLayer {
    attempt_timeout: Duration,
}

impl<S> Layer<S> for AttemptTimeoutLayer {
    type Service = AttemptTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttemptTimeout {
            inner,
            attempt_timeout: self.attempt_timeout,
        }
    }
}

/// Limits one attempt to `attempt_timeout` or to the time left before the call's deadline
/// ([`current_deadline`]), whichever is shorter; running out is [`KlarnaError::NoAnswer`]
/// (the request may have left). An attempt with no time left at all is not started and
/// fails as [`KlarnaError::NotSent`]: that relies on the service below doing nothing before
/// its future is polled, which holds for [`HttpService`] (the request is handed to hyper
/// inside its future).
#[derive(Debug, Clone)]
pub(crate) struct AttemptTimeout<S> {
    inner: S,
    attempt_timeout: Duration,
}

impl<S> Service<OutboundRequest> for AttemptTimeout<S>
where
    S: Service<OutboundRequest, Response = OutboundResponse, Error = KlarnaError>,
    S::Future: Send + 'static,
{
    type Response = OutboundResponse;
    type Error = KlarnaError;
    type Future = BoxFuture<Result<OutboundResponse, KlarnaError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: OutboundRequest) -> Self::Future {
        let attempt = self.inner.call(request);
        let attempt_timeout = self.attempt_timeout;
        Box::pin(async move {
            // Read when polled, in the caller's task, where the deadline is in scope.
            let left = current_deadline()
                .map(|deadline| deadline.saturating_duration_since(tokio::time::Instant::now()));
            let limit = left.map_or(attempt_timeout, |left| left.min(attempt_timeout));
            if limit.is_zero() {
                return Err(KlarnaError::NotSent(
                    "the call's deadline passed before the request was sent".to_owned(),
                ));
            }
            match tokio::time::timeout(limit, attempt).await {
                Ok(result) => result,
                Err(_elapsed) if limit < attempt_timeout => Err(KlarnaError::NoAnswer(format!(
                    "no complete answer before the call's deadline (attempt cut to {limit:?})"
                ))),
                Err(_elapsed) => Err(KlarnaError::NoAnswer(format!(
                    "no complete answer within the attempt timeout of {attempt_timeout:?}"
                ))),
            }
        })
    }
}

/// hyper's client as a tower service that also reads the response body in full, so that a
/// body cut off mid-way fails the attempt (as [`KlarnaError::NoAnswer`]) inside the stack,
/// where timeouts, traces and retries see it, rather than later in the caller. Built by the
/// clients, with their TLS settings.
#[derive(Clone)]
pub struct HttpService {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl fmt::Debug for HttpService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpService").finish_non_exhaustive()
    }
}

impl Service<OutboundRequest> for HttpService {
    type Response = OutboundResponse;
    type Error = KlarnaError;
    type Future = BoxFuture<Result<OutboundResponse, KlarnaError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pool queues internally; the client is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: OutboundRequest) -> Self::Future {
        let client = self.client.clone();
        Box::pin(async move {
            let response = client
                .request(request.map(Full::new))
                .await
                .map_err(|e| transport_error(&e))?;
            read_whole(response).await
        })
    }
}

/// The response with its whole body, at most [`MAX_RESPONSE_BYTES`]; a body cut off is
/// [`KlarnaError::NoAnswer`].
async fn read_whole(
    response: ::http::Response<hyper::body::Incoming>,
) -> Result<OutboundResponse, KlarnaError> {
    let (parts, mut body) = response.into_parts();
    // Most answers come in one chunk: kept as it is, copied only when a second one comes.
    let mut first: Option<Bytes> = None;
    let mut more = BytesMut::new();
    let mut length = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            KlarnaError::NoAnswer(format!(
                "the answer's body was cut off: {}",
                error_chain(&e)
            ))
        })?;
        let Ok(chunk) = frame.into_data() else {
            // Trailers: nothing Klarna sends, nothing read.
            continue;
        };
        length += chunk.len();
        if length > MAX_RESPONSE_BYTES {
            return Err(KlarnaError::BadResponse(format!(
                "answer body larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        match &first {
            None => first = Some(chunk),
            Some(first) => {
                if more.is_empty() {
                    more.extend_from_slice(first);
                }
                more.extend_from_slice(&chunk);
            }
        }
    }
    let body = if more.is_empty() {
        first.unwrap_or_default()
    } else {
        more.freeze()
    };
    Ok(::http::Response::from_parts(parts, body))
}

/// What every attempt of one call shares, set by the transport around the stack: the
/// operation's name (the `operation` label of the attempt metrics) and where this API puts
/// its correlation id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallLabels {
    /// e.g. `create_refund`.
    pub(crate) operation: &'static str,
    /// The API's correlation id headers, first found wins.
    pub(crate) correlation_headers: &'static [&'static str],
}

/// Outside any [`with_call_labels`] (the stack driven directly, as in tests).
const UNLABELLED: CallLabels = CallLabels {
    operation: "unknown",
    correlation_headers: &CORRELATION_ID_HEADERS,
};

tokio::task_local! {
    static CALL: CallLabels;
}

/// Runs `f` (one call through the stack) with `labels` for its attempts.
pub(crate) async fn with_call_labels<F: Future>(labels: CallLabels, f: F) -> F::Output {
    CALL.scope(labels, f).await
}

/// Name of the counter of HTTP attempts to Klarna, labelled `operation`, `status` (the HTTP
/// status, `none` without an answer) and `error_code` (Klarna's, `""` without one).
pub const ATTEMPTS_METRIC: &str = "klarna_attempts_total";

/// Name of the histogram of attempt durations, in seconds, with the labels of
/// [`ATTEMPTS_METRIC`].
pub const ATTEMPT_DURATION_METRIC: &str = "klarna_attempt_duration_seconds";

/// Adds [`AttemptTrace`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AttemptTraceLayer;

impl<S> Layer<S> for AttemptTraceLayer {
    type Service = AttemptTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttemptTrace { inner, attempts: 0 }
    }
}

/// One CLIENT span per attempt, named `HTTP {method}` with OpenTelemetry's HTTP client
/// conventions: `http.request.method`, `url.full` (never with credentials), `server.address`,
/// `server.port`, `http.request.resend_count`, and after the answer
/// `http.response.status_code`, `klarna.correlation_id`, `klarna.error_code` and `error.type`.
/// The span's W3C trace context (`traceparent`, `tracestate`) is sent with the attempt, so
/// Klarna's side of the call joins the caller's trace; a subscriber that leaves the attempt
/// spans out of its trace ([`ATTEMPT_SPAN_TARGET`]) gets the context of the span the attempt
/// is made in sent instead. Each attempt is also counted in
/// [`ATTEMPTS_METRIC`] and timed in [`ATTEMPT_DURATION_METRIC`]. Other headers are never
/// recorded.
///
/// Resends are counted per service value: the n-th call on a copy is the (n-1)-th resend. The
/// client clones the stack for every call, and tower's `Retry` above makes the first attempt
/// on that copy and the resends on a clone taken right after it, so one call counts 0, 1, 2…
#[derive(Debug, Clone)]
pub struct AttemptTrace<S> {
    inner: S,
    attempts: u32,
}

/// The target of the attempt spans: a subscriber may leave them out of its trace, its logs
/// or both. An attempt span outside the trace sends the trace context it was made in.
pub const ATTEMPT_SPAN_TARGET: &str = "refund_gateway_klarna::attempt";

macro_rules! attempt_span {
    ($name:literal, $method:expr, $url:expr, $resends:expr, $operation:expr) => {
        tracing::info_span!(
            target: "refund_gateway_klarna::attempt",
            $name,
            otel.kind = "client",
            otel.status_code = Empty,
            http.request.method = %$method,
            url.full = %traced_url($url),
            server.address = server_address($url),
            server.port = server_port($url),
            http.request.resend_count = $resends,
            klarna.operation = $operation,
            http.response.status_code = Empty,
            klarna.correlation_id = Empty,
            klarna.error_code = Empty,
            error.type = Empty,
        )
    };
}

fn span_for(method: &Method, url: &Uri, resends: u32, operation: &str) -> tracing::Span {
    // Span names must be static strings: one literal per method Klarna is sent.
    match *method {
        Method::GET => attempt_span!("HTTP GET", method, url, resends, operation),
        Method::POST => attempt_span!("HTTP POST", method, url, resends, operation),
        Method::PATCH => attempt_span!("HTTP PATCH", method, url, resends, operation),
        Method::DELETE => attempt_span!("HTTP DELETE", method, url, resends, operation),
        Method::PUT => attempt_span!("HTTP PUT", method, url, resends, operation),
        _ => attempt_span!("HTTP", method, url, resends, operation),
    }
}

/// The URL as traced: without user name or password, should one ever be configured in it.
fn traced_url(uri: &Uri) -> std::borrow::Cow<'_, str> {
    match uri.authority() {
        Some(authority) if authority.as_str().contains('@') => {
            let host_and_port = authority.as_str().rsplit('@').next().unwrap_or_default();
            let path = uri.path_and_query().map_or("/", |path| path.as_str());
            let scheme = uri.scheme_str().unwrap_or("https");
            format!("{scheme}://{host_and_port}{path}").into()
        }
        _ => uri.to_string().into(),
    }
}

/// The host, an IPv6 address without its brackets.
fn server_address(uri: &Uri) -> &str {
    let host = uri.host().unwrap_or_default();
    host.strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host)
}

/// The port, else the scheme's.
fn server_port(uri: &Uri) -> Option<u16> {
    uri.port_u16().or(match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    })
}

/// Writes a span's trace context into the request's headers.
struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

impl<S> Service<OutboundRequest> for AttemptTrace<S>
where
    S: Service<OutboundRequest, Response = OutboundResponse, Error = KlarnaError>,
    S::Future: Send + 'static,
{
    type Response = OutboundResponse;
    type Error = KlarnaError;
    type Future = BoxFuture<Result<OutboundResponse, KlarnaError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: OutboundRequest) -> Self::Future {
        let resends = self.attempts;
        self.attempts = self.attempts.saturating_add(1);
        let labels = CALL.try_with(|labels| *labels).unwrap_or(UNLABELLED);
        let span = span_for(request.method(), request.uri(), resends, labels.operation);
        let mut trace_context = span.context();
        if !trace_context.span().span_context().is_valid() {
            // Not traced (see ATTEMPT_SPAN_TARGET): the request's trace goes on from the
            // span the attempt is made in.
            trace_context = tracing::Span::current().context();
        }
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&trace_context, &mut HeaderInjector(request.headers_mut()));
        });
        let future = span.in_scope(|| self.inner.call(request));
        let recorder = span.clone();
        let started = std::time::Instant::now();
        Box::pin(
            async move {
                let (result, seen) = match future.await {
                    Ok(response) => {
                        let seen = record_answer(&recorder, &response, labels);
                        (Ok(response), seen)
                    }
                    Err(error) => (Err(error), Seen::default()),
                };
                if let Err(error) = &result {
                    recorder.record("otel.status_code", "ERROR");
                    recorder.record("error.type", error_type(error));
                }
                count_attempt(labels.operation, &seen, started.elapsed());
                result
            }
            .instrument(span),
        )
    }
}

/// What an attempt's answer said, for its metrics.
#[derive(Debug, Default)]
struct Seen {
    status: Option<StatusCode>,
    error_code: Option<String>,
}

/// Counts and times one attempt. The label values are borrowed where they can be (the
/// operation, the usual statuses, no error code): the metrics copy each label per call.
fn count_attempt(operation: &'static str, seen: &Seen, elapsed: Duration) {
    let status: Cow<'static, str> = seen.status.map_or(Cow::Borrowed("none"), status_label);
    let error_code: Cow<'static, str> = seen
        .error_code
        .as_deref()
        .map_or(Cow::Borrowed(""), |code| Cow::Owned(error_code_label(code)));
    let labels = [
        ("operation", Cow::Borrowed(operation)),
        ("status", status),
        ("error_code", error_code),
    ];
    metrics::counter!(ATTEMPTS_METRIC, &labels).increment(1);
    metrics::histogram!(ATTEMPT_DURATION_METRIC, &labels).record(elapsed.as_secs_f64());
}

/// The status as a label value: a constant for the statuses Klarna's APIs document.
fn status_label(status: StatusCode) -> Cow<'static, str> {
    Cow::Borrowed(match status.as_u16() {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        other => return Cow::Owned(other.to_string()),
    })
}

/// At most this many distinct Klarna error codes become label values; the rest count as
/// `other`. Klarna's codes are a short list, but they come from outside, and a label with
/// unbounded values would grow the metrics without end.
const MAX_ERROR_CODE_LABELS: usize = 64;

/// `code` as a label value: upper-case letters, digits and `_` up to 64 characters, one of the
/// first [`MAX_ERROR_CODE_LABELS`] codes seen; anything else is `other`.
fn error_code_label(code: &str) -> String {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let shaped = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !shaped {
        return "other".to_owned();
    }
    let mut seen = SEEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if seen.iter().any(|c| c == code) {
        return code.to_owned();
    }
    if seen.len() < MAX_ERROR_CODE_LABELS {
        seen.push(code.to_owned());
        return code.to_owned();
    }
    "other".to_owned()
}

/// Records the status, Klarna's correlation id (from a header, or for an error answer from
/// its body) and error code; the body is already read in full.
fn record_answer(span: &tracing::Span, response: &OutboundResponse, labels: CallLabels) -> Seen {
    let status = response.status();
    let mut seen = Seen {
        status: Some(status),
        error_code: None,
    };
    span.record("http.response.status_code", status.as_u16());
    let header_id = correlation_id(response.headers(), labels.correlation_headers);
    if let Some(id) = &header_id {
        span.record("klarna.correlation_id", id.as_str());
    }
    if !(status.is_client_error() || status.is_server_error()) {
        return seen;
    }
    span.record("otel.status_code", "ERROR");
    span.record("error.type", status.as_str());
    let answer = error_response(
        status,
        response.headers(),
        response.body(),
        labels.correlation_headers,
    );
    if header_id.is_none()
        && let Some(id) = &answer.correlation_id
    {
        span.record("klarna.correlation_id", id.as_str());
    }
    if let Some(code) = &answer.error_code {
        span.record("klarna.error_code", code.as_str());
    }
    seen.error_code = answer.error_code;
    seen
}

fn error_type(error: &KlarnaError) -> &'static str {
    match error {
        KlarnaError::Answered(_) => "answered",
        KlarnaError::NotSent(_) => "not_sent",
        KlarnaError::Throttled(_) => "throttled",
        KlarnaError::NoAnswer(_) => "no_answer",
        KlarnaError::BadResponse(_) => "bad_response",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::with_deadline;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tower::ServiceExt;

    fn request() -> OutboundRequest {
        ::http::Request::get("https://api.klarna.com/ordermanagement/v1/orders/o")
            .body(Bytes::new())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Answers 200 after `delay`, counting the attempts it started.
    fn slow(
        delay: Duration,
        started: Arc<AtomicU32>,
    ) -> AttemptTimeout<
        impl Service<
            OutboundRequest,
            Response = OutboundResponse,
            Error = KlarnaError,
            Future = impl Future<Output = Result<OutboundResponse, KlarnaError>> + Send + 'static,
        >,
    > {
        let inner = tower::service_fn(move |_: OutboundRequest| {
            let started = started.clone();
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                Ok::<_, KlarnaError>(::http::Response::new(Bytes::new()))
            }
        });
        AttemptTimeoutLayer {
            attempt_timeout: Duration::from_secs(2),
        }
        .layer(inner)
    }

    #[test]
    fn status_labels_are_the_status_codes() {
        for code in 100..=599 {
            let status = StatusCode::from_u16(code).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(status_label(status), code.to_string());
        }
        assert!(matches!(
            status_label(StatusCode::CREATED),
            Cow::Borrowed("201")
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn attempt_timeout_applies_without_a_deadline() {
        let started = Arc::new(AtomicU32::new(0));
        let e = slow(Duration::from_secs(5), started.clone())
            .oneshot(request())
            .await
            .err();
        assert!(
            matches!(e, Some(KlarnaError::NoAnswer(ref m)) if m.contains("attempt timeout of 2s")),
            "{e:?}"
        );
        let ok = slow(Duration::from_secs(1), started.clone())
            .oneshot(request())
            .await;
        assert!(ok.is_ok(), "{ok:?}");
        assert_eq!(started.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_shortens_an_attempt() {
        let started = Arc::new(AtomicU32::new(0));
        let begin = tokio::time::Instant::now();
        let deadline = begin + Duration::from_millis(500);
        let e = with_deadline(
            deadline,
            slow(Duration::from_secs(1), started.clone()).oneshot(request()),
        )
        .await
        .err();
        assert!(
            matches!(e, Some(KlarnaError::NoAnswer(ref m)) if m.contains("deadline")),
            "{e:?}"
        );
        assert_eq!(begin.elapsed(), Duration::from_millis(500));
        // A deadline further out than the attempt timeout changes nothing.
        let e = with_deadline(
            begin + Duration::from_secs(60),
            slow(Duration::from_secs(5), started.clone()).oneshot(request()),
        )
        .await
        .err();
        assert!(
            matches!(e, Some(KlarnaError::NoAnswer(ref m)) if m.contains("attempt timeout")),
            "{e:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_attempt_is_started_after_the_deadline() {
        let started = Arc::new(AtomicU32::new(0));
        let past = tokio::time::Instant::now();
        tokio::time::advance(Duration::from_millis(1)).await;
        let e = with_deadline(
            past,
            slow(Duration::ZERO, started.clone()).oneshot(request()),
        )
        .await
        .err();
        assert!(matches!(e, Some(KlarnaError::NotSent(_))), "{e:?}");
        assert_eq!(started.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_beyond_the_slots_wait_and_give_up_at_the_deadline_unsent() {
        let started = Arc::new(AtomicU32::new(0));
        let counted = started.clone();
        let inner = tower::service_fn(move |_: OutboundRequest| {
            let started = counted.clone();
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, KlarnaError>(::http::Response::new(Bytes::new()))
            }
        });
        let limited = InFlightLimitLayer::new(2).layer(inner);
        let begin = tokio::time::Instant::now();
        // Three attempts, two slots: the third starts when one of the first two ends.
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let call = limited.clone().oneshot(request());
                tokio::spawn(async move { (call.await.is_ok(), begin.elapsed()) })
            })
            .collect();
        let mut ended = Vec::new();
        for call in calls {
            ended.push(call.await.unwrap_or_else(|e| panic!("{e}")));
        }
        let second = Duration::from_secs(1);
        assert_eq!(
            ended,
            vec![(true, second), (true, second), (true, 2 * second)]
        );
        assert_eq!(started.load(Ordering::SeqCst), 3);
        // Both slots held for a second: a call whose deadline comes first is not sent.
        let holders: Vec<_> = (0..2)
            .map(|_| tokio::spawn(limited.clone().oneshot(request())))
            .collect();
        tokio::task::yield_now().await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        let e = with_deadline(deadline, limited.clone().oneshot(request()))
            .await
            .err();
        assert!(
            matches!(e, Some(KlarnaError::NotSent(ref m)) if m.contains("waiting for a connection")),
            "{e:?}"
        );
        for holder in holders {
            let answer = holder.await.unwrap_or_else(|e| panic!("{e}"));
            assert!(answer.is_ok(), "{answer:?}");
        }
        assert_eq!(started.load(Ordering::SeqCst), 5);
    }
}
