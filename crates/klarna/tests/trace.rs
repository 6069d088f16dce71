//! What the adapter tells tracing: one CLIENT span per attempt with OpenTelemetry's HTTP
//! fields, one log event per call, and never a credential.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use klarna_sim::{FaultKind, FaultSpec, OrderSeed, SimConfig};
use std::time::Duration;

use refund_gateway_domain::{
    Amount, Caller, IdempotencyKey, KlarnaApi, KlarnaError, KlarnaRefund, OperationId, OrderId, Rpc,
};
use refund_gateway_klarna::{
    AttemptTraceLayer, BaseUrl, KlarnaClient, KlarnaClientConfig, KlarnaCredentials,
    OutboundRequest, OutboundResponse, RetryConfig,
};
use tower::{Layer as _, Service, ServiceExt};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, Clone)]
struct Captured {
    name: &'static str,
    level: Level,
    fields: BTreeMap<String, String>,
}

/// A layer that keeps every span (with its final fields) and every event.
#[derive(Debug, Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Vec<(u64, Captured)>>>,
    events: Arc<Mutex<Vec<Captured>>>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let span = Captured {
            name: attrs.metadata().name(),
            level: *attrs.metadata().level(),
            fields,
        };
        self.spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id.into_u64(), span));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, span)) = spans.iter_mut().rev().find(|(i, _)| *i == id.into_u64()) {
            values.record(&mut Fields(&mut span.fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Captured {
                name: event.metadata().name(),
                level: *event.metadata().level(),
                fields,
            });
    }
}

impl Capture {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    fn spans(&self) -> Vec<Captured> {
        let spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        spans.iter().map(|(_, s)| s.clone()).collect()
    }

    fn events(&self) -> Vec<Captured> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn field<'a>(c: &'a Captured, name: &str) -> Option<&'a str> {
    c.fields.get(name).map(String::as_str)
}

fn op() -> OperationId {
    let key =
        IdempotencyKey::parse(&uuid::Uuid::new_v4().to_string()).unwrap_or_else(|e| panic!("{e}"));
    OperationId::derive(&Caller::anonymous(), Rpc::RefundOrder, &key)
}

fn refund(amount: i64) -> KlarnaRefund {
    KlarnaRefund {
        refunded_amount: Amount::parse(amount).unwrap_or_else(|e| panic!("{e}")),
        description: None,
        reference: "ref-1".into(),
        order_lines: Vec::new(),
    }
}

#[tokio::test]
async fn one_client_span_per_attempt_and_one_event_per_call() {
    let capture = Capture::default();
    let _guard = capture.install();
    let sim = klarna_sim::spawn(SimConfig::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let klarna = KlarnaClient::new(KlarnaClientConfig::new(
        BaseUrl::parse(&sim.base_url).unwrap_or_else(|e| panic!("{e}")),
        KlarnaCredentials::new(sim.username(), sim.password()),
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let seeded = sim.sim.seed_order(OrderSeed {
        order_amount: 1_000,
        captures: vec![1_000],
        ..Default::default()
    });
    let order = OrderId::parse(&seeded.order_id).unwrap_or_else(|e| panic!("{e}"));

    klarna
        .create_refund(&order, &refund(400), &op())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let refused = klarna.create_refund(&order, &refund(5_000), &op()).await;
    let correlation = match &refused {
        Err(KlarnaError::Answered(r)) => r.correlation_id.clone().unwrap_or_default(),
        other => panic!("expected 403, got {other:?}"),
    };
    assert!(!correlation.is_empty());

    let path = format!("/ordermanagement/v1/orders/{order}/refunds");
    let spans: Vec<Captured> = capture
        .spans()
        .into_iter()
        .filter(|s| s.name.starts_with("HTTP"))
        .collect();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    for (span, status) in spans.iter().zip(["201", "403"]) {
        assert_eq!(span.name, "HTTP POST");
        assert_eq!(span.level, Level::INFO);
        assert_eq!(field(span, "otel.kind"), Some("client"));
        assert_eq!(field(span, "http.request.method"), Some("POST"));
        let url = field(span, "url.full").unwrap_or_default();
        assert!(
            url.starts_with("http://127.0.0.1:") && url.ends_with(&path),
            "{url}"
        );
        assert_eq!(field(span, "server.address"), Some("127.0.0.1"));
        assert_eq!(field(span, "klarna.operation"), Some("create_refund"));
        assert_eq!(field(span, "http.request.resend_count"), Some("0"));
        assert_eq!(field(span, "http.response.status_code"), Some(status));
    }
    assert_eq!(field(&spans[0], "error.type"), None);
    assert_eq!(field(&spans[1], "error.type"), Some("403"));
    assert_eq!(field(&spans[1], "otel.status_code"), Some("ERROR"));
    assert_eq!(
        field(&spans[1], "klarna.error_code"),
        Some("REFUND_NOT_ALLOWED")
    );
    assert_eq!(
        field(&spans[1], "klarna.correlation_id"),
        Some(correlation.as_str())
    );

    let events: Vec<Captured> = capture
        .events()
        .into_iter()
        .filter(|e| field(e, "klarna.operation").is_some())
        .collect();
    assert_eq!(events.len(), 2, "{events:#?}");
    // A success is logged at DEBUG (its span, metrics and the audit trail hold it); a
    // refusal at WARN.
    assert_eq!(events[0].level, Level::DEBUG);
    assert_eq!(field(&events[0], "klarna.operation"), Some("create_refund"));
    assert_eq!(field(&events[0], "http.response.status_code"), Some("201"));
    assert_eq!(field(&events[0], "url.path"), Some(path.as_str()));
    assert!(field(&events[0], "elapsed_ms").is_some());
    assert_eq!(events[1].level, Level::WARN);
    assert_eq!(
        field(&events[1], "klarna.error_code"),
        Some("REFUND_NOT_ALLOWED")
    );
    assert_eq!(
        field(&events[1], "klarna.correlation_id"),
        Some(correlation.as_str())
    );
    assert_eq!(field(&events[1], "http.response.status_code"), Some("403"));
    assert_eq!(field(&events[1], "outcome_unknown"), Some("false"));

    let basic = base64::engine::general_purpose::STANDARD.encode("sim-user:sim-password");
    let everything = format!("{:?} {:?}", capture.spans(), capture.events());
    for secret in ["sim-password", basic.as_str(), "Basic ", "authorization"] {
        assert!(
            !everything
                .to_ascii_lowercase()
                .contains(&secret.to_ascii_lowercase()),
            "{secret} leaked: {everything}"
        );
    }
}

fn request() -> OutboundRequest {
    http::Request::post("https://api.klarna.com/ordermanagement/v1/orders/o/refunds")
        .body(Bytes::new())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn answer(status: u16, correlation: Option<&'static str>) -> OutboundResponse {
    let mut response = http::Response::builder().status(status);
    if let Some(id) = correlation {
        response = response.header("Klarna-Correlation-Id", id);
    }
    response
        .body(Bytes::new())
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn resends_are_counted_per_service_copy() {
    let capture = Capture::default();
    let _guard = capture.install();
    // What a retry layer above the trace layer does: call its own copy once per attempt.
    let inner = tower::service_fn(|_: OutboundRequest| async {
        Ok::<_, KlarnaError>(answer(503, Some("corr-503")))
    });
    let mut attempts = AttemptTraceLayer.layer(inner);
    let fresh = attempts.clone();
    for _ in 0..3 {
        let response = attempts
            .ready()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .call(request())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status(), 503);
    }
    fresh
        .oneshot(request())
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let spans = capture.spans();
    let counts: Vec<&str> = spans
        .iter()
        .filter_map(|s| field(s, "http.request.resend_count"))
        .collect();
    assert_eq!(counts, ["0", "1", "2", "0"]);
    for span in &spans {
        assert_eq!(field(span, "http.response.status_code"), Some("503"));
        assert_eq!(field(span, "klarna.correlation_id"), Some("corr-503"));
        assert_eq!(field(span, "error.type"), Some("503"));
    }
}

#[tokio::test]
async fn transport_failures_are_typed_on_the_span() {
    let capture = Capture::default();
    let _guard = capture.install();
    let failing = tower::service_fn(|_: OutboundRequest| async {
        Err::<OutboundResponse, _>(KlarnaError::NotSent("connection refused".into()))
    });
    let error = AttemptTraceLayer
        .layer(failing)
        .oneshot(request())
        .await
        .err();
    assert!(matches!(error, Some(KlarnaError::NotSent(_))), "{error:?}");
    let ok = tower::service_fn(|_: OutboundRequest| async {
        Ok::<_, KlarnaError>(answer(201, Some("corr-201")))
    });
    AttemptTraceLayer
        .layer(ok)
        .oneshot(request())
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let spans = capture.spans();
    assert_eq!(spans.len(), 2);
    assert_eq!(field(&spans[0], "error.type"), Some("not_sent"));
    assert_eq!(field(&spans[0], "otel.status_code"), Some("ERROR"));
    assert_eq!(field(&spans[0], "http.response.status_code"), None);
    assert_eq!(field(&spans[1], "http.response.status_code"), Some("201"));
    assert_eq!(field(&spans[1], "klarna.correlation_id"), Some("corr-201"));
    assert_eq!(field(&spans[1], "error.type"), None);
}

/// Default policy, backoffs of at most `max_backoff`.
fn retry_config(max_backoff: Duration) -> RetryConfig {
    RetryConfig {
        base_backoff: max_backoff / 2,
        max_backoff,
        ..RetryConfig::default()
    }
}

fn http_spans(capture: &Capture) -> Vec<Captured> {
    capture
        .spans()
        .into_iter()
        .filter(|s| s.name.starts_with("HTTP"))
        .collect()
}

#[tokio::test]
async fn each_resend_gets_its_own_span_and_count() {
    let capture = Capture::default();
    let _guard = capture.install();
    let sim = klarna_sim::spawn(SimConfig::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut config = KlarnaClientConfig::new(
        BaseUrl::parse(&sim.base_url).unwrap_or_else(|e| panic!("{e}")),
        KlarnaCredentials::new(sim.username(), sim.password()),
    );
    config.transport.retry = retry_config(Duration::from_millis(4));
    let klarna = KlarnaClient::new(config).unwrap_or_else(|e| panic!("{e}"));
    let seeded = sim.sim.seed_order(OrderSeed {
        order_amount: 1_000,
        ..Default::default()
    });
    let order = OrderId::parse(&seeded.order_id).unwrap_or_else(|e| panic!("{e}"));
    sim.sim.inject_fault(FaultSpec {
        method: Some("GET".into()),
        path: format!("/ordermanagement/v1/orders/{order}"),
        times: 2,
        kind: FaultKind::Status {
            status: 503,
            body: None,
            retry_after_secs: None,
        },
    });

    klarna
        .get_order(&order)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The next call on the same client counts from zero again.
    klarna
        .get_order(&order)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let spans = http_spans(&capture);
    let seen: Vec<(Option<&str>, Option<&str>)> = spans
        .iter()
        .map(|s| {
            (
                field(s, "http.request.resend_count"),
                field(s, "http.response.status_code"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (Some("0"), Some("503")),
            (Some("1"), Some("503")),
            (Some("2"), Some("200")),
            (Some("0"), Some("200")),
        ]
    );
    let resends: Vec<Captured> = capture
        .events()
        .into_iter()
        .filter(|e| field(e, "reason").is_some())
        .collect();
    assert_eq!(resends.len(), 2, "{resends:#?}");
    assert!(
        resends
            .iter()
            .all(|e| field(e, "reason") == Some("status_5xx"))
    );
}

#[tokio::test]
async fn a_closed_port_is_retried_then_not_sent() {
    let capture = Capture::default();
    let _guard = capture.install();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    drop(listener);
    let mut config = KlarnaClientConfig::new(
        BaseUrl::parse(&format!("http://{addr}")).unwrap_or_else(|e| panic!("{e}")),
        KlarnaCredentials::new("user", "s3cret-pw"),
    );
    config.transport.retry = retry_config(Duration::from_millis(10));
    let klarna = KlarnaClient::new(config).unwrap_or_else(|e| panic!("{e}"));
    let order = OrderId::parse(&uuid::Uuid::new_v4().to_string()).unwrap_or_else(|e| panic!("{e}"));

    // Not sent is safe to resend whatever the method: an unkeyed GET and a keyed POST alike.
    let error = klarna.get_order(&order).await.err();
    assert!(matches!(error, Some(KlarnaError::NotSent(_))), "{error:?}");
    let error = klarna
        .create_refund(&order, &refund(100), &op())
        .await
        .err();
    assert!(matches!(error, Some(KlarnaError::NotSent(_))), "{error:?}");

    let spans = http_spans(&capture);
    let counts: Vec<&str> = spans
        .iter()
        .filter_map(|s| field(s, "http.request.resend_count"))
        .collect();
    assert_eq!(counts, ["0", "1", "2", "3", "0", "1", "2", "3"]);
    assert!(
        spans
            .iter()
            .all(|s| field(s, "error.type") == Some("not_sent")),
        "{spans:#?}"
    );
}
