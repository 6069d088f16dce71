//! An OTLP trace receiver inside the test process: the collector's `TraceService` (OTLP over
//! gRPC) on a free loopback port, and OTLP over HTTP (protobuf, `POST /v1/traces`) on another,
//! keeping every span it is sent, so that a test can start the
//! real `refund-gateway` binary with `OTEL_EXPORTER_OTLP_ENDPOINT` set to
//! [`OtlpReceiver::endpoint`] and check the spans it exports.
//!
//! Spans are flattened into [`ReceivedSpan`]s (ids as lowercase hex, attributes as JSON values,
//! the resource's attributes beside each span). [`OtlpReceiver::wait_for`] waits for a
//! condition on the spans received so far; it is woken by every export, never by a timer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use super::WAIT_LIMIT;

/// One span as the receiver got it, flattened out of its resource and scope.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// 16 lowercase hex digits; empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// `"internal"`, `"server"`, `"client"`, `"producer"`, `"consumer"` or `"unspecified"`.
    pub kind: String,
    /// The span's attributes; see [`any_value_to_json`] for how values are represented.
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// `(trace_id, span_id)` of each linked span, lowercase hex.
    pub links: Vec<(String, String)>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    /// The instrumentation scope's name (the tracer's name).
    pub scope_name: String,
    /// The resource attribute `service.name`; empty when there is none.
    pub service_name: String,
    /// Every resource attribute, in the string form of [`ReceivedSpan::attr`].
    pub resource: BTreeMap<String, String>,
}

impl ReceivedSpan {
    /// The attribute `key` as a string: a string as it is, an integer in decimal, a boolean as
    /// `true`/`false`, anything else as its JSON text.
    pub fn attr(&self, key: &str) -> Option<String> {
        self.attributes.get(key).map(json_to_string)
    }

    /// Whether this span is a root span (it has no parent).
    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_empty()
    }
}

/// A running OTLP trace receiver; the server stops when this is dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    http_addr: SocketAddr,
    /// Every span received, in order of arrival; replaced (and receivers woken) on each export.
    spans: watch::Sender<Vec<ReceivedSpan>>,
    server: JoinHandle<()>,
    http_server: JoinHandle<()>,
}

impl OtlpReceiver {
    /// Binds a free port on 127.0.0.1 and serves OTLP traces over gRPC on it in a task.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the OTLP receiver")?;
        let addr = listener.local_addr()?;
        let (spans, _) = watch::channel(Vec::new());
        let service = Collector {
            spans: spans.clone(),
        };
        let server = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
            if let Err(e) = served {
                eprintln!("OTLP receiver on {addr} stopped: {e}");
            }
        });
        // OTLP over HTTP: `POST /v1/traces` with the same request as protobuf.
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the OTLP/HTTP receiver")?;
        let http_addr = http_listener.local_addr()?;
        let http_spans = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let spans = http_spans.clone();
                async move {
                    use prost::Message as _;
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(request) => {
                            let received = flatten(request);
                            spans.send_modify(|all| all.extend(received));
                            (
                                axum::http::StatusCode::OK,
                                [("content-type", "application/x-protobuf")],
                                ExportTraceServiceResponse {
                                    partial_success: None,
                                }
                                .encode_to_vec(),
                            )
                        }
                        Err(_) => (
                            axum::http::StatusCode::BAD_REQUEST,
                            [("content-type", "text/plain")],
                            b"not an ExportTraceServiceRequest".to_vec(),
                        ),
                    }
                }
            }),
        );
        let http_server = tokio::spawn(async move {
            if let Err(e) = axum::serve(http_listener, app).await {
                eprintln!("OTLP/HTTP receiver on {http_addr} stopped: {e}");
            }
        });
        Ok(Self {
            addr,
            http_addr,
            spans,
            server,
            http_server,
        })
    }

    /// `http://127.0.0.1:PORT` of OTLP over HTTP (protobuf), for
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` with `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`.
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// `http://127.0.0.1:PORT`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, in order of arrival.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.borrow().clone()
    }

    /// Waits until `condition` holds for the spans received so far (checked now and after each
    /// export) and returns them; fails after [`WAIT_LIMIT`] with the names of the spans
    /// received.
    pub async fn wait_for(
        &self,
        condition: impl FnMut(&[ReceivedSpan]) -> bool,
    ) -> anyhow::Result<Vec<ReceivedSpan>> {
        self.wait_for_within(WAIT_LIMIT, condition).await
    }

    /// [`OtlpReceiver::wait_for`] with another upper bound.
    pub async fn wait_for_within(
        &self,
        limit: Duration,
        mut condition: impl FnMut(&[ReceivedSpan]) -> bool,
    ) -> anyhow::Result<Vec<ReceivedSpan>> {
        let mut changes = self.spans.subscribe();
        let give_up = tokio::time::Instant::now() + limit;
        loop {
            // Marked seen before the check, so an export during the check wakes the next wait.
            let spans = changes.borrow_and_update().clone();
            if condition(&spans) {
                return Ok(spans);
            }
            match tokio::time::timeout_at(give_up, changes.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives in `self`; it cannot be gone while `self` is borrowed.
                Ok(Err(_)) => bail!("the OTLP receiver stopped"),
                Err(_) => {
                    let names: Vec<String> = self.spans().into_iter().map(|s| s.name).collect();
                    bail!(
                        "the OTLP receiver's spans did not meet the condition within {limit:?}; \
                         {} spans received: {names:?}",
                        names.len()
                    );
                }
            }
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
        self.http_server.abort();
    }
}

/// The `TraceService` implementation: flattens each export into the shared list.
struct Collector {
    spans: watch::Sender<Vec<ReceivedSpan>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let received = flatten(request.into_inner());
        // `send_modify` notifies even when nobody is subscribed yet, and always stores.
        self.spans.send_modify(|spans| spans.extend(received));
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The spans of one export request, each with its resource and scope.
fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource: BTreeMap<String, String> = resource_spans
            .resource
            .map(|r| attributes_to_json(r.attributes))
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, json_to_string(&v)))
            .collect();
        let service_name = resource.get("service.name").cloned().unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            let scope_name = scope_spans.scope.map(|s| s.name).unwrap_or_default();
            for span in scope_spans.spans {
                let kind = SpanKind::try_from(span.kind)
                    .map(span_kind_name)
                    .unwrap_or("unknown")
                    .to_owned();
                let (status_code, status_message) =
                    span.status.map(|s| (s.code, s.message)).unwrap_or_default();
                out.push(ReceivedSpan {
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    name: span.name,
                    kind,
                    attributes: attributes_to_json(span.attributes),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                        .collect(),
                    status_code,
                    status_message,
                    scope_name: scope_name.clone(),
                    service_name: service_name.clone(),
                    resource: resource.clone(),
                });
            }
        }
    }
    out
}

fn span_kind_name(kind: SpanKind) -> &'static str {
    match kind {
        SpanKind::Unspecified => "unspecified",
        SpanKind::Internal => "internal",
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
    }
}

fn attributes_to_json(attributes: Vec<KeyValue>) -> BTreeMap<String, serde_json::Value> {
    attributes
        .into_iter()
        .map(|kv| (kv.key, any_value_to_json(kv.value)))
        .collect()
}

/// An OTLP attribute value as JSON: strings, booleans and integers as themselves, a double as a
/// number (a string when not finite), bytes as lowercase hex, arrays and key-value lists as
/// arrays and objects, no value as `null`, a string-table index as `{"string_value_strindex": i}`.
pub fn any_value_to_json(value: Option<AnyValue>) -> serde_json::Value {
    use serde_json::Value as J;
    let Some(value) = value.and_then(|v| v.value) else {
        return J::Null;
    };
    match value {
        any_value::Value::StringValue(s) => J::String(s),
        any_value::Value::BoolValue(b) => J::Bool(b),
        any_value::Value::IntValue(i) => J::from(i),
        any_value::Value::DoubleValue(d) => serde_json::Number::from_f64(d)
            .map(J::Number)
            .unwrap_or_else(|| J::String(d.to_string())),
        any_value::Value::ArrayValue(a) => J::Array(
            a.values
                .into_iter()
                .map(|v| any_value_to_json(Some(v)))
                .collect(),
        ),
        any_value::Value::KvlistValue(l) => J::Object(
            l.values
                .into_iter()
                .map(|kv| (kv.key, any_value_to_json(kv.value)))
                .collect(),
        ),
        any_value::Value::BytesValue(b) => J::String(hex::encode(b)),
        // An index into a dictionary (profiles only); traces never use it.
        any_value::Value::StringValueStrindex(i) => {
            serde_json::json!({ "string_value_strindex": i })
        }
    }
}

/// The string form of an attribute value: a string without quotes, anything else as JSON text
/// (so integers in decimal and booleans as `true`/`false`).
fn json_to_string(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
