//! The tests' OTLP trace receiver (`common::otlp`) on its own: a span exported to it by a plain
//! OTLP gRPC client comes out of `wait_for` with its ids, kind, attributes, links, status and
//! resource, a condition that never holds fails with the names of the spans received, and the
//! port closes when the receiver is dropped.

mod common;

use std::time::Duration;

use anyhow::{Context, ensure};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Link, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

use common::otlp::OtlpReceiver;
use common::{WAIT_LIMIT, wait_until};

const TRACE_ID: [u8; 16] = [
    0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
];
const SPAN_ID: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];
const PARENT_ID: [u8; 8] = [0x53, 0x99, 0x5c, 0x3f, 0x42, 0xcd, 0x8a, 0xd8];
const LINKED_TRACE_ID: [u8; 16] = [0xab; 16];
const LINKED_SPAN_ID: [u8; 8] = [0xcd; 8];

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn one_span_request(name: &str, parent: &[u8]) -> ExportTraceServiceRequest {
    let span = Span {
        trace_id: TRACE_ID.to_vec(),
        span_id: SPAN_ID.to_vec(),
        parent_span_id: parent.to_vec(),
        name: name.to_owned(),
        kind: SpanKind::Client as i32,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_250_000_000,
        attributes: vec![
            kv(
                "rpc.method",
                any_value::Value::StringValue("RefundOrder".to_owned()),
            ),
            kv("http.response.status_code", any_value::Value::IntValue(201)),
            kv("retry", any_value::Value::BoolValue(false)),
        ],
        links: vec![Link {
            trace_id: LINKED_TRACE_ID.to_vec(),
            span_id: LINKED_SPAN_ID.to_vec(),
            ..Default::default()
        }],
        status: Some(Status {
            message: "refused".to_owned(),
            code: StatusCode::Error as i32,
        }),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv(
                        "service.name",
                        any_value::Value::StringValue("otlp-receiver-test".to_owned()),
                    ),
                    kv("service.instance.id", any_value::Value::IntValue(7)),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "test-scope".to_owned(),
                    ..Default::default()
                }),
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test]
async fn an_exported_span_is_received_with_its_attributes_and_resource() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let endpoint = receiver.endpoint();
    ensure!(
        endpoint.starts_with("http://127.0.0.1:"),
        "endpoint {endpoint}"
    );
    ensure!(receiver.spans().is_empty(), "spans before any export");

    // The condition is waited on before the export happens: the export must wake it.
    let waited = receiver.wait_for(|spans| spans.iter().any(|s| s.name == "klarna.refund_order"));
    let export = async {
        let mut client = TraceServiceClient::connect(endpoint.clone()).await?;
        client
            .export(one_span_request("klarna.refund_order", &PARENT_ID))
            .await?;
        anyhow::Ok(())
    };
    let (spans, exported) = tokio::join!(waited, export);
    exported.context("exporting")?;
    let spans = spans?;

    ensure!(spans.len() == 1, "spans: {spans:#?}");
    let span = &spans[0];
    ensure!(
        span.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736",
        "{span:#?}"
    );
    ensure!(span.span_id == "00f067aa0ba902b7", "{span:#?}");
    ensure!(span.parent_span_id == "53995c3f42cd8ad8", "{span:#?}");
    ensure!(!span.is_root(), "{span:#?}");
    ensure!(span.kind == "client", "{span:#?}");
    ensure!(
        span.attr("rpc.method").as_deref() == Some("RefundOrder"),
        "{span:#?}"
    );
    ensure!(
        span.attr("http.response.status_code").as_deref() == Some("201"),
        "{span:#?}"
    );
    ensure!(
        span.attributes.get("http.response.status_code") == Some(&serde_json::json!(201)),
        "{span:#?}"
    );
    ensure!(span.attr("retry").as_deref() == Some("false"), "{span:#?}");
    ensure!(span.attr("absent").is_none(), "{span:#?}");
    ensure!(
        span.links == vec![("ab".repeat(16), "cd".repeat(8))],
        "{span:#?}"
    );
    ensure!(span.status_code == StatusCode::Error as i32, "{span:#?}");
    ensure!(span.status_message == "refused", "{span:#?}");
    ensure!(span.scope_name == "test-scope", "{span:#?}");
    ensure!(span.service_name == "otlp-receiver-test", "{span:#?}");
    ensure!(
        span.resource.get("service.instance.id").map(String::as_str) == Some("7"),
        "{span:#?}"
    );
    ensure!(receiver.spans() == spans, "spans() and wait_for disagree");

    // A second export adds to what was received; a root span has no parent id.
    let mut client = TraceServiceClient::connect(endpoint).await?;
    client.export(one_span_request("RefundOrder", &[])).await?;
    let spans = receiver.wait_for(|spans| spans.len() == 2).await?;
    ensure!(
        spans[1].name == "RefundOrder" && spans[1].is_root(),
        "{spans:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_condition_that_never_holds_fails_naming_the_spans_received() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let mut client = TraceServiceClient::connect(receiver.endpoint()).await?;
    client
        .export(one_span_request("klarna.get_order", &PARENT_ID))
        .await?;
    let error = receiver
        .wait_for_within(Duration::from_millis(200), |spans| {
            spans.iter().any(|s| s.name == "never sent")
        })
        .await
        .err()
        .context("a condition that never holds was met")?;
    let message = error.to_string();
    ensure!(
        message.contains("1 spans received") && message.contains("\"klarna.get_order\""),
        "error message: {message}"
    );
    Ok(())
}

#[tokio::test]
async fn dropping_the_receiver_closes_its_port() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let addr = receiver.endpoint().trim_start_matches("http://").to_owned();
    tokio::net::TcpStream::connect(&addr)
        .await
        .context("connecting to the running receiver")?;
    drop(receiver);
    wait_until(
        "the dropped receiver's port to close",
        WAIT_LIMIT,
        async || {
            anyhow::Ok(
                tokio::net::TcpStream::connect(&addr)
                    .await
                    .err()
                    .map(|_| ()),
            )
        },
    )
    .await
}
