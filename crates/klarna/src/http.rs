//! The outbound path: a tower [`Service`] stack from a ready [`reqwest::Request`] to a
//! [`reqwest::Response`] whose body has been read in full.
//!
//! ```text
//! AttemptTrace   one CLIENT span per attempt
//!  └ MapErr      Timeout's BoxError back to KlarnaError
//!     └ Timeout  per-attempt limit
//!        └ HttpService   reqwest: pooled, rustls, its own retries off
//! ```
//!
//! Every layer speaks [`KlarnaError`] (only `NotSent`, `NoAnswer`, `BadResponse`; a Klarna
//! error status is a response here, classified later), so a retry policy slotted in above
//! [`AttemptTraceLayer`] can decide from the error alone whether resending is safe.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use refund_gateway_domain::KlarnaError;
use reqwest::Method;
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue};
use tower::timeout::error::Elapsed;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, Service, ServiceBuilder};
use tracing::Instrument;
use tracing::field::Empty;

use crate::contract::MAX_RESPONSE_BYTES;
use crate::error::{correlation_id, error_chain, error_response, transport_error};

/// The whole outbound stack, boxed: `Clone + Send + Sync`, so a client can clone it per call.
pub type OutboundService = BoxCloneSyncService<reqwest::Request, reqwest::Response, KlarnaError>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The reqwest client the stack ends in: pooled connections, rustls, a connect timeout,
/// no redirects (a 3xx is an answer to classify, not an invitation to resend a refund
/// elsewhere), and none of reqwest's own retries (resending is the retry layer's decision,
/// made with the idempotency key in view).
pub(crate) fn reqwest_client(
    connect_timeout: Duration,
    user_agent: HeaderValue,
) -> Result<reqwest::Client, reqwest::Error> {
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    reqwest::Client::builder()
        .user_agent(user_agent)
        .default_headers(headers)
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .retry(reqwest::retry::never())
        .build()
}

/// Builds the stack over `client`, each attempt limited to `attempt_timeout`.
pub(crate) fn outbound_stack(
    client: reqwest::Client,
    attempt_timeout: Duration,
) -> OutboundService {
    let stack = ServiceBuilder::new()
        // Outermost of one attempt: its span covers everything the attempt does, including
        // running out of time, and records the answer's status and correlation id. A retry
        // layer goes directly above it, so that each resend gets its own span (the layer
        // counts resends), and a per-account rate limit directly below it, so that waiting
        // for a permit shows inside the attempt's span but does not eat its timeout.
        .layer(AttemptTraceLayer)
        // Timeout reports `BoxError`; turning it back into `KlarnaError` right here gives every
        // layer above one classified error type.
        .map_err(move |error: BoxError| timeout_error(error, attempt_timeout))
        // Innermost limit, so that it bounds one attempt, not a call with its retries; it
        // covers reading the body because HttpService reads it in full.
        .timeout(attempt_timeout)
        .service(HttpService::new(client));
    BoxCloneSyncService::new(stack)
}

fn timeout_error(error: BoxError, attempt_timeout: Duration) -> KlarnaError {
    match error.downcast::<KlarnaError>() {
        Ok(error) => *error,
        Err(error) if error.is::<Elapsed>() => KlarnaError::NoAnswer(format!(
            "no complete answer within the attempt timeout of {attempt_timeout:?}"
        )),
        Err(error) => KlarnaError::NoAnswer(error_chain(&*error)),
    }
}

/// `reqwest::Client` as a tower service that also reads the response body in full, so that a
/// body cut off mid-way fails the attempt (as [`KlarnaError::NoAnswer`]) inside the stack,
/// where timeouts, traces and retries see it, rather than later in the caller.
#[derive(Debug, Clone)]
pub struct HttpService {
    client: reqwest::Client,
}

impl HttpService {
    /// Wraps a configured client.
    pub fn new(client: reqwest::Client) -> Self {
        Self { client }
    }
}

impl Service<reqwest::Request> for HttpService {
    type Response = reqwest::Response;
    type Error = KlarnaError;
    type Future = BoxFuture<Result<reqwest::Response, KlarnaError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // reqwest's pool queues internally; the client is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: reqwest::Request) -> Self::Future {
        let client = self.client.clone();
        Box::pin(async move {
            let response = client
                .execute(request)
                .await
                .map_err(|e| transport_error(&e))?;
            read_whole(response).await.map(reqwest::Response::from)
        })
    }
}

/// The response with its whole body, at most [`MAX_RESPONSE_BYTES`]. Reading an already
/// buffered body again is instant.
pub(crate) async fn read_whole(
    mut response: reqwest::Response,
) -> Result<::http::Response<Bytes>, KlarnaError> {
    let mut head = ::http::Response::new(());
    *head.status_mut() = response.status();
    *head.version_mut() = response.version();
    *head.headers_mut() = std::mem::take(response.headers_mut());
    *head.extensions_mut() = std::mem::take(response.extensions_mut());
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport_error(&e))? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(KlarnaError::BadResponse(format!(
                "answer body larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    let (parts, ()) = head.into_parts();
    Ok(::http::Response::from_parts(parts, body.freeze()))
}

/// Adds [`AttemptTrace`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AttemptTraceLayer;

impl<S> Layer<S> for AttemptTraceLayer {
    type Service = AttemptTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttemptTrace { inner, attempts: 0 }
    }
}

/// One INFO span per attempt, named `HTTP {method}` with OpenTelemetry's HTTP client fields:
/// `otel.kind = "client"`, `http.request.method`, `server.address`, `url.path`,
/// `http.request.resend_count`, and after the answer `http.response.status_code` and
/// `klarna.correlation_id` (or `error.type`). Headers are never recorded.
///
/// Resends are counted per service value: the client clones the stack for every call, and a
/// retry layer above calls its own copy once per attempt, so the n-th call on a copy is the
/// (n-1)-th resend.
#[derive(Debug, Clone)]
pub struct AttemptTrace<S> {
    inner: S,
    attempts: u32,
}

macro_rules! attempt_span {
    ($name:literal, $method:expr, $host:expr, $path:expr, $resends:expr) => {
        tracing::info_span!(
            $name,
            otel.kind = "client",
            otel.status_code = Empty,
            http.request.method = %$method,
            server.address = $host,
            url.path = $path,
            http.request.resend_count = $resends,
            http.response.status_code = Empty,
            klarna.correlation_id = Empty,
            error.type = Empty,
        )
    };
}

fn span_for(method: &Method, host: &str, path: &str, resends: u32) -> tracing::Span {
    // Span names must be static strings: one literal per method Klarna is sent.
    match *method {
        Method::GET => attempt_span!("HTTP GET", method, host, path, resends),
        Method::POST => attempt_span!("HTTP POST", method, host, path, resends),
        Method::PATCH => attempt_span!("HTTP PATCH", method, host, path, resends),
        Method::DELETE => attempt_span!("HTTP DELETE", method, host, path, resends),
        Method::PUT => attempt_span!("HTTP PUT", method, host, path, resends),
        _ => attempt_span!("HTTP", method, host, path, resends),
    }
}

impl<S> Service<reqwest::Request> for AttemptTrace<S>
where
    S: Service<reqwest::Request, Response = reqwest::Response, Error = KlarnaError>,
    S::Future: Send + 'static,
{
    type Response = reqwest::Response;
    type Error = KlarnaError;
    type Future = BoxFuture<Result<reqwest::Response, KlarnaError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: reqwest::Request) -> Self::Future {
        let resends = self.attempts;
        self.attempts = self.attempts.saturating_add(1);
        let url = request.url();
        let span = span_for(
            request.method(),
            url.host_str().unwrap_or_default(),
            url.path(),
            resends,
        );
        let future = span.in_scope(|| self.inner.call(request));
        let recorder = span.clone();
        Box::pin(
            async move {
                let result = match future.await {
                    Ok(response) => record_answer(&recorder, response).await,
                    Err(error) => Err(error),
                };
                if let Err(error) = &result {
                    recorder.record("otel.status_code", "ERROR");
                    recorder.record("error.type", error_type(error));
                }
                result
            }
            .instrument(span),
        )
    }
}

/// Records the status and Klarna's correlation id: from a header, or for an error answer from
/// its body (already read in full, so peeking costs no I/O).
async fn record_answer(
    span: &tracing::Span,
    response: reqwest::Response,
) -> Result<reqwest::Response, KlarnaError> {
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_client_error() || status.is_server_error() {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", status.as_str());
    }
    if let Some(id) = correlation_id(response.headers()) {
        span.record("klarna.correlation_id", id.as_str());
        return Ok(response);
    }
    if status.is_success() {
        return Ok(response);
    }
    let whole = read_whole(response).await?;
    let answer = error_response(status, whole.headers(), whole.body());
    if let Some(id) = &answer.correlation_id {
        span.record("klarna.correlation_id", id.as_str());
    }
    Ok(reqwest::Response::from(whole))
}

fn error_type(error: &KlarnaError) -> &'static str {
    match error {
        KlarnaError::Answered(_) => "answered",
        KlarnaError::NotSent(_) => "not_sent",
        KlarnaError::NoAnswer(_) => "no_answer",
        KlarnaError::BadResponse(_) => "bad_response",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_becomes_no_answer() {
        let e = timeout_error(Box::new(Elapsed::new()), Duration::from_millis(50));
        assert!(
            matches!(e, KlarnaError::NoAnswer(ref m) if m.contains("50ms")),
            "{e:?}"
        );
        let e = timeout_error(
            Box::new(KlarnaError::NotSent("refused".into())),
            Duration::from_secs(1),
        );
        assert_eq!(e, KlarnaError::NotSent("refused".into()));
    }
}
