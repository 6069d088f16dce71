//! The pieces of the inbound tower stack (see docs/architecture.md#middleware): the RPC span
//! and its metrics. The stack itself is built by [`crate::inbound::inbound_stack`], where each
//! layer's comment says why it sits where it does.

use std::time::Duration;

use http::{HeaderName, Request, Response};
use tower_http::classify::GrpcFailureClass;
use tower_http::trace::{MakeSpan, OnFailure, OnRequest, OnResponse};
use tracing::Span;

/// Header carrying the request id, set when the caller sent none and echoed in the response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Splits `/refundgateway.v1.RefundGatewayService/RefundOrder` into service and method.
fn rpc_parts(path: &str) -> (&str, &str) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    (parts.next().unwrap_or(""), parts.next().unwrap_or(""))
}

/// One INFO span per RPC, named and attributed per OpenTelemetry's RPC conventions, so a
/// handler's events and the Klarna client's spans nest under the call that caused them.
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
        tracing::info_span!(
            "rpc",
            otel.name = %format!("{service}/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            request_id = %request_id,
            caller = tracing::field::Empty,
            rpc.grpc.status_code = tracing::field::Empty,
        )
    }
}

/// Counts the request; nothing is logged per request at INFO (the handlers log outcomes).
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcStart;

impl<B> OnRequest<B> for RpcStart {
    fn on_request(&mut self, request: &Request<B>, _span: &Span) {
        let (_, method) = rpc_parts(request.uri().path());
        metrics::counter!("rpc_requests_total", "method" => method.to_owned()).increment(1);
    }
}

/// Records the gRPC status (from the headers of a trailers-only answer, else OK) and the
/// latency histogram.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcEnd;

impl<B> OnResponse<B> for RpcEnd {
    fn on_response(self, response: &Response<B>, latency: Duration, span: &Span) {
        let code = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0")
            .to_owned();
        span.record("rpc.grpc.status_code", code.as_str());
        metrics::histogram!("rpc_duration_seconds", "grpc_status" => code)
            .record(latency.as_secs_f64());
    }
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
