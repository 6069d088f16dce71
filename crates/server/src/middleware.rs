//! The pieces of the inbound tower stack (see docs/architecture.md#middleware): the RPC span
//! and its metrics. The stack itself is built by [`crate::inbound::inbound_stack`], where each
//! layer's comment says why it sits where it does.

use std::time::Duration;

use http::{HeaderName, Request, Response};
use opentelemetry::propagation::Extractor;
use tower_http::classify::GrpcFailureClass;
use tower_http::trace::{MakeSpan, OnFailure, OnRequest, OnResponse};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Header carrying the request id, set when the caller sent none and echoed in the response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Splits `/refundgateway.v1.RefundGatewayService/RefundOrder` into service and method.
fn rpc_parts(path: &str) -> (&str, &str) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    (parts.next().unwrap_or(""), parts.next().unwrap_or(""))
}

/// Reads the caller's W3C trace context from the request's headers (gRPC metadata).
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// One SERVER span per RPC, named and attributed per OpenTelemetry's RPC conventions, and a
/// child of the caller's span when the call carries a W3C `traceparent`: a handler's events,
/// the operation task and the Klarna client's spans nest under the call that caused them.
/// The gateway's own attributes (`refund.caller`, `refund.operation_id`,
/// `refund.idempotency_replayed`, `klarna.account`) are recorded by the layers and handlers
/// that learn them.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcSpan;

impl<B> MakeSpan<B> for RpcSpan {
    fn make_span(&mut self, request: &Request<B>) -> Span {
        let (service, method) = rpc_parts(request.uri().path());
        let request_id = request
            .headers()
            .get(&REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let span = tracing::info_span!(
            "rpc",
            otel.name = %format!("{service}/{method}"),
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.system.name = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = Empty,
            rpc.response.status_code = Empty,
            error.type = Empty,
            request_id = %request_id,
            refund.caller = Empty,
            refund.operation_id = Empty,
            refund.idempotency_replayed = Empty,
            klarna.account = Empty,
        );
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(request.headers()))
        });
        // Fails only when the span is disabled or OpenTelemetry is not installed (tests'
        // subscribers): the span is then simply not part of a trace.
        let _ = span.set_parent(parent);
        span
    }
}

/// Nothing per request: the handlers log outcomes, and the RPC is counted when it ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcStart;

impl<B> OnRequest<B> for RpcStart {
    fn on_request(&mut self, _request: &Request<B>, _span: &Span) {}
}

/// Records the gRPC status (from the headers of a trailers-only answer, else OK) on the span;
/// a status the server is to blame for marks the span as an error.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcEnd;

impl<B> OnResponse<B> for RpcEnd {
    fn on_response(self, response: &Response<B>, _latency: Duration, span: &Span) {
        let code = grpc_status(response);
        let name = crate::status::code_name(tonic::Code::from_i32(code));
        span.record("rpc.grpc.status_code", code);
        span.record("rpc.response.status_code", name);
        if is_server_error(code) {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", name);
        }
    }
}

/// Adds [`RpcMetrics`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

/// Counts (`rpc_requests_total`) and times (`rpc_duration_seconds`) every RPC by `method` and
/// `grpc_status` (the code of a trailers-only answer, else 0). The method label is one of the
/// methods the server serves, `unknown` for any other path: a label must never take values
/// from the caller.
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, B, R> tower::Service<Request<B>> for RpcMetrics<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Response<R>, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let method = known_method(rpc_parts(request.uri().path()).1);
        let started = std::time::Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            let code = match &answer {
                Ok(response) => grpc_status(response),
                // The transport failed the call: the caller saw no status at all.
                Err(_) => 2,
            };
            let labels = [("method", method), ("grpc_status", code_label(code))];
            metrics::counter!("rpc_requests_total", &labels).increment(1);
            metrics::histogram!("rpc_duration_seconds", &labels)
                .record(started.elapsed().as_secs_f64());
            answer
        })
    }
}

/// The status of a trailers-only answer (every refusal), else 0: a normal answer's status is
/// in its trailers, and the gateway's unary answers with a body are OK.
fn grpc_status<B>(response: &Response<B>) -> i32 {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0)
}

/// `code` as a static label value.
fn code_label(code: i32) -> &'static str {
    const LABELS: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| LABELS.get(i))
        .copied()
        .unwrap_or("2")
}

/// `method` when the server serves a method of that name (the gateway's API, health and
/// reflection), else `unknown`.
fn known_method(method: &str) -> &'static str {
    static METHODS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let methods = METHODS.get_or_init(|| {
        use prost::Message as _;
        let mut names = vec![
            "Check".to_owned(),
            "Watch".to_owned(),
            "ServerReflectionInfo".to_owned(),
        ];
        // The descriptor set is built into the binary by the proto crate; a decoding failure
        // would only leave every gateway method labelled `unknown`.
        if let Ok(set) =
            prost_types::FileDescriptorSet::decode(refund_gateway_proto::FILE_DESCRIPTOR_SET)
        {
            for file in set.file {
                for service in file.service {
                    names.extend(service.method.into_iter().filter_map(|m| m.name));
                }
            }
        }
        names
    });
    methods
        .iter()
        .find(|m| m.as_str() == method)
        .map_or("unknown", String::as_str)
}

/// Codes a server span marks as errors, per OpenTelemetry's gRPC conventions: the server
/// failed, not the caller.
fn is_server_error(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// Failures are logged by the handlers with their details; the layer adds nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcFailure;

impl OnFailure<GrpcFailureClass> for RpcFailure {
    fn on_failure(&mut self, _class: GrpcFailureClass, _latency: Duration, _span: &Span) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_grpc_paths() {
        assert_eq!(
            rpc_parts("/refundgateway.v1.RefundGatewayService/RefundOrder"),
            ("refundgateway.v1.RefundGatewayService", "RefundOrder")
        );
        assert_eq!(rpc_parts("/"), ("", ""));
    }
}
