//! The adapter against the Klarna simulator over real HTTP: what it sends, what it reads, and
//! how it classifies each error row of docs/klarna.md#errors and each transport failure; and,
//! against a raw server, answers framed as another implementation of Klarna's API may frame
//! them (HTTP/1.0 closing the connection, chunks). Tests about the classification of a single
//! answer use a client that does not resend; resending has its own tests in `retry.rs`.

use std::time::Duration;

use base64::Engine as _;
use klarna_sim::{FaultKind, FaultSpec, OrderSeed, RunningSimulator, SimConfig};
use refund_gateway_domain::{
    Amount, Caller, CaptureId, IdempotencyKey, KlarnaApi, KlarnaError, KlarnaErrorResponse,
    KlarnaRefund, OperationId, OrderId, OrderLine, OrderLineType, OrderStatus, RefundId, Rpc,
};
use refund_gateway_klarna::{
    BaseUrl, KlarnaClient, KlarnaClientConfig, KlarnaCredentials, RetryConfig,
};

const ORDERS: &str = "/ordermanagement/v1/orders";

async fn sim() -> RunningSimulator {
    klarna_sim::spawn(SimConfig::default())
        .await
        .unwrap_or_else(|e| panic!("cannot start the simulator: {e}"))
}

fn config(sim: &RunningSimulator, password: &str) -> KlarnaClientConfig {
    KlarnaClientConfig::new(
        BaseUrl::parse(&sim.base_url).unwrap_or_else(|e| panic!("{e}")),
        KlarnaCredentials::new(sim.username(), password),
    )
}

fn client(sim: &RunningSimulator) -> KlarnaClient {
    KlarnaClient::new(config(sim, sim.password())).unwrap_or_else(|e| panic!("{e}"))
}

/// A client making one attempt per call, so that a test sees how one answer is classified.
fn client_without_retries(sim: &RunningSimulator) -> KlarnaClient {
    let mut config = config(sim, sim.password());
    config.transport.retry = RetryConfig::no_retries();
    KlarnaClient::new(config).unwrap_or_else(|e| panic!("{e}"))
}

/// One attempt per call, limited to `attempt_timeout`.
fn client_with_timeout(sim: &RunningSimulator, attempt_timeout: Duration) -> KlarnaClient {
    let mut config = config(sim, sim.password());
    config.transport.attempt_timeout = attempt_timeout;
    config.transport.retry = RetryConfig::no_retries();
    KlarnaClient::new(config).unwrap_or_else(|e| panic!("{e}"))
}

/// A fresh operation id, as the server derives it.
fn op() -> OperationId {
    let key =
        IdempotencyKey::parse(&uuid::Uuid::new_v4().to_string()).unwrap_or_else(|e| panic!("{e}"));
    OperationId::derive(&Caller::anonymous(), Rpc::RefundOrder, &key)
}

fn order_id(id: &str) -> OrderId {
    OrderId::parse(id).unwrap_or_else(|e| panic!("{e}"))
}

fn capture_id(id: &str) -> CaptureId {
    CaptureId::parse(id).unwrap_or_else(|e| panic!("{e}"))
}

fn refund(amount: i64) -> KlarnaRefund {
    KlarnaRefund {
        refunded_amount: Amount::parse(amount).unwrap_or_else(|e| panic!("{e}")),
        description: None,
        reference: uuid::Uuid::new_v4().to_string(),
        order_lines: Vec::new(),
    }
}

fn line(line_type: OrderLineType, name: &str, unit_price: i64) -> OrderLine {
    OrderLine {
        line_type: Some(line_type),
        name: name.to_owned(),
        quantity: 1,
        quantity_unit: None,
        unit_price,
        total_amount: unit_price,
        total_discount_amount: 0,
        tax_rate: 0,
        total_tax_amount: 0,
        reference: None,
        merchant_data: None,
        product_url: None,
        image_url: None,
        product_identifiers: None,
        subscription: None,
    }
}

/// A captured order: `amount` authorized, captured in `captures`.
fn seed(sim: &RunningSimulator, amount: i64, captures: Vec<i64>) -> (OrderId, Vec<CaptureId>) {
    let seeded = sim.sim.seed_order(OrderSeed {
        order_amount: amount,
        captures,
        ..Default::default()
    });
    (
        order_id(&seeded.order_id),
        seeded.capture_ids.iter().map(|c| capture_id(c)).collect(),
    )
}

fn answered<T: std::fmt::Debug>(result: Result<T, KlarnaError>) -> KlarnaErrorResponse {
    match result {
        Err(KlarnaError::Answered(r)) => *r,
        other => panic!("expected an error answer, got {other:?}"),
    }
}

fn assert_answer(r: &KlarnaErrorResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.error_code.as_deref(), Some(code), "{r:?}");
    assert!(!r.messages.is_empty(), "{r:?}");
    let correlation = r.correlation_id.as_deref().unwrap_or_default();
    assert!(uuid::Uuid::try_parse(correlation).is_ok(), "{r:?}");
}

fn status_fault(
    path: String,
    status: u16,
    body: Option<&str>,
    retry_after: Option<u64>,
) -> FaultSpec {
    FaultSpec {
        method: None,
        path,
        times: 1,
        kind: FaultKind::Status {
            status,
            body: body.map(str::to_owned),
            retry_after_secs: retry_after,
        },
    }
}

#[tokio::test]
async fn every_request_carries_credentials_agent_and_accept() {
    let sim = sim().await;
    let klarna = client(&sim);
    let (order, captures) = seed(&sim, 10_000, vec![4_000]);
    let (refund_key, release_key, extend_key) = (op(), op(), op());

    klarna
        .get_order(&order)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    klarna
        .create_refund(&order, &refund(1_000), &refund_key)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    klarna
        .get_extend_due_date_options(&order, &captures[0])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    klarna
        .extend_due_date(&order, &captures[0], 14, &extend_key)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    klarna
        .release_remaining_authorization(&order, &release_key)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("sim-user:sim-password")
    );
    let log = sim.sim.requests();
    let calls: Vec<(&str, &str)> = log
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    let o = order.as_str();
    let c = captures[0].as_str();
    assert_eq!(
        calls,
        [
            ("GET", format!("{ORDERS}/{o}").as_str()),
            ("POST", format!("{ORDERS}/{o}/refunds").as_str()),
            (
                "GET",
                format!("{ORDERS}/{o}/captures/{c}/extend-due-date-options").as_str()
            ),
            (
                "PATCH",
                format!("{ORDERS}/{o}/captures/{c}/extend-due-date").as_str()
            ),
            (
                "POST",
                format!("{ORDERS}/{o}/release-remaining-authorization").as_str()
            ),
        ]
    );
    for r in &log {
        assert_eq!(r.header("authorization"), Some(basic.as_str()), "{r:?}");
        assert_eq!(r.header("accept"), Some("application/json"), "{r:?}");
        assert_eq!(
            r.header("user-agent"),
            Some(refund_gateway_klarna::user_agent(None).as_str())
        );
        assert!(
            r.header("user-agent")
                .is_some_and(|ua| ua.starts_with("Library/refund-gateway_")),
            "{r:?}"
        );
        assert!(r.status < 300, "{r:?}");
    }
    let key = |i: usize| log[i].header("klarna-idempotency-key");
    assert_eq!(key(0), None);
    assert_eq!(key(1), Some(refund_key.to_string().as_str()));
    assert_eq!(key(2), None);
    assert_eq!(key(3), Some(extend_key.to_string().as_str()));
    assert_eq!(key(4), Some(release_key.to_string().as_str()));

    assert_eq!(log[1].header("content-type"), Some("application/json"));
    assert_eq!(log[3].header("content-type"), Some("application/json"));
    assert_eq!(log[3].body, r#"{"number_of_days":14}"#);
    assert_eq!(log[4].header("content-type"), None);
    assert_eq!(log[4].body, "");
    assert_eq!(log[0].header("content-type"), None);
}

#[tokio::test]
async fn user_agent_suffix_is_appended() {
    let sim = sim().await;
    let mut config = config(&sim, sim.password());
    config.transport.user_agent_suffix = Some("eu-playground".into());
    let klarna = KlarnaClient::new(config).unwrap_or_else(|e| panic!("{e}"));
    let (order, _) = seed(&sim, 100, vec![]);
    klarna
        .get_order(&order)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let log = sim.sim.requests();
    let ua = log[0].header("user-agent").unwrap_or_default();
    assert!(ua.ends_with(" eu-playground"), "{ua}");
    assert!(ua.contains(" Language/Rust OS/"), "{ua}");
}

#[tokio::test]
async fn refund_is_created_and_read_back() {
    let sim = sim().await;
    let klarna = client(&sim);
    let (order, captures) = seed(&sim, 10_000, vec![10_000]);
    let mut request = refund(9_500);
    request.description = Some("Returned T-shirt".into());
    request.order_lines = vec![
        line(OrderLineType::Physical, "T-Shirt", 10_000),
        line(OrderLineType::ReturnFee, "Return fee", -500),
    ];

    let created = klarna
        .create_refund(&order, &request, &op())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!created.refund_id.is_empty());
    let logged = sim.sim.requests();
    assert_eq!(
        logged[0].response_header("refund-id"),
        Some(created.refund_id.as_str())
    );
    let body: serde_json::Value =
        serde_json::from_str(&logged[0].body).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body["refunded_amount"], 9_500);
    assert_eq!(body["order_lines"][1]["type"], "return_fee");

    let refund_id = RefundId::parse(&created.refund_id).unwrap_or_else(|e| panic!("{e}"));
    let read = klarna
        .get_refund(&order, &refund_id)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read.refund_id, created.refund_id);
    assert_eq!(read.refunded_amount, 9_500);
    assert_eq!(read.description, "Returned T-shirt");
    assert_eq!(read.reference, request.reference);
    assert_eq!(read.order_lines, request.order_lines);
    assert!(read.refunded_at.is_some());

    let o = klarna
        .get_order(&order)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(o.order_id, order.as_str());
    assert_eq!(o.status, OrderStatus::Captured);
    assert_eq!(o.klarna_status, "CAPTURED");
    assert_eq!((o.order_amount, o.original_order_amount), (10_000, 10_000));
    assert_eq!((o.captured_amount, o.refunded_amount), (10_000, 9_500));
    assert_eq!(o.remaining_authorized_amount, 0);
    assert_eq!(
        (o.currency.as_str(), o.purchase_country.as_str()),
        ("SEK", "SE")
    );
    assert_eq!(o.payment_method_type.as_deref(), Some("INVOICE"));
    assert!(!o.klarna_reference.is_empty());
    assert_eq!(o.captures.len(), 1);
    assert_eq!(o.captures[0].capture_id, captures[0].as_str());
    assert_eq!(o.captures[0].captured_amount, 10_000);
    assert_eq!(o.captures[0].refunded_amount, 9_500);
    assert!(o.captures[0].captured_at.is_some());
    assert_eq!(o.refunds.len(), 1);
    assert_eq!(o.refunds[0].refund_id, created.refund_id);
    assert_eq!(o.refunds[0].order_lines, request.order_lines);
}

#[tokio::test]
async fn same_operation_id_twice_is_the_same_refund() {
    let sim = sim().await;
    let klarna = client(&sim);
    let (order, _) = seed(&sim, 10_000, vec![10_000]);
    let key = op();
    let first = klarna
        .create_refund(&order, &refund(1_000), &key)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Only the key matters to Klarna: a different body under it is the same refund.
    let second = klarna
        .create_refund(&order, &refund(2_000), &key)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.refund_id, second.refund_id);
    let other = klarna
        .create_refund(&order, &refund(1_000), &op())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(other.refund_id, first.refund_id);
    let o = klarna
        .get_order(&order)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(o.refunded_amount, 2_000);
    let replayed: Vec<bool> = sim.sim.requests().iter().map(|r| r.replayed).collect();
    assert_eq!(replayed, [false, true, false, false]);
}

#[tokio::test]
async fn wrong_password_is_401_and_never_printed() {
    let sim = sim().await;
    let klarna =
        KlarnaClient::new(config(&sim, "not-the-Pa55word")).unwrap_or_else(|e| panic!("{e}"));
    let (order, _) = seed(&sim, 100, vec![100]);
    let result = klarna.get_order(&order).await;
    let shown = format!("{result:?} {klarna:?}");
    let r = answered(result);
    assert_answer(&r, 401, "UNAUTHORIZED");
    assert!(!shown.contains("not-the-Pa55word"), "{shown}");
    assert!(!shown.contains("Basic "), "{shown}");
    let error = KlarnaError::Answered(Box::new(r));
    assert!(!error.outcome_unknown());
    assert!(!error.to_string().contains("Pa55word"));
}

#[tokio::test]
async fn an_api_key_is_taken_as_the_whole_basic_credential() {
    let sim = sim().await;
    let with_key = |key: &str| {
        KlarnaClient::new(KlarnaClientConfig::new(
            BaseUrl::parse(&sim.base_url).unwrap_or_else(|e| panic!("{e}")),
            KlarnaCredentials::api_key(key),
        ))
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let (order, _) = seed(&sim, 1_000, vec![1_000]);
    let created = with_key(sim.api_key())
        .create_refund(&order, &refund(400), &op())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!created.refund_id.is_empty());
    let sent = sim.sim.requests();
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Basic {}", sim.api_key()).as_str())
    );

    let wrong = with_key("klarna_test_api_not-the-K3y");
    let result = wrong.get_order(&order).await;
    let shown = format!("{result:?} {wrong:?}");
    assert_answer(&answered(result), 401, "UNAUTHORIZED");
    assert!(!shown.contains("not-the-K3y"), "{shown}");
}

#[tokio::test]
async fn refund_refusals_are_403_refund_not_allowed() {
    let sim = sim().await;
    let klarna = client(&sim);

    let (uncaptured, _) = seed(&sim, 10_000, vec![]);
    let r = answered(klarna.create_refund(&uncaptured, &refund(100), &op()).await);
    assert_answer(&r, 403, "REFUND_NOT_ALLOWED");
    assert_eq!(r.messages, ["Order has no captures. Refund not possible"]);

    let (captured, _) = seed(&sim, 10_000, vec![5_000]);
    let r = answered(klarna.create_refund(&captured, &refund(5_001), &op()).await);
    assert_answer(&r, 403, "REFUND_NOT_ALLOWED");
    assert_eq!(
        r.messages,
        ["Over refund is not allowed. Refund not possible."]
    );
    assert!(!KlarnaError::Answered(Box::new(r)).outcome_unknown());
    let o = klarna
        .get_order(&captured)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(o.refunded_amount, 0);
}

#[tokio::test]
async fn release_of_a_fully_captured_order_is_403_not_allowed() {
    let sim = sim().await;
    let klarna = client(&sim);
    let (order, _) = seed(&sim, 10_000, vec![10_000]);
    let r = answered(klarna.release_remaining_authorization(&order, &op()).await);
    assert_answer(&r, 403, "NOT_ALLOWED");
    assert_eq!(
        r.messages,
        ["Order is fully captured. Remaining authorization cannot be released."]
    );
}

#[tokio::test]
async fn unknown_order_capture_and_refund_are_404() {
    let sim = sim().await;
    let klarna = client(&sim);
    let missing = order_id(&uuid::Uuid::new_v4().to_string());
    let r = answered(klarna.get_order(&missing).await);
    assert_answer(&r, 404, "NO_SUCH_ORDER");

    let (order, _) = seed(&sim, 10_000, vec![10_000]);
    let no_capture = capture_id(&uuid::Uuid::new_v4().to_string());
    let r = answered(
        klarna
            .get_extend_due_date_options(&order, &no_capture)
            .await,
    );
    assert_answer(&r, 404, "NO_SUCH_CAPTURE");

    let no_refund =
        RefundId::parse(&uuid::Uuid::new_v4().to_string()).unwrap_or_else(|e| panic!("{e}"));
    let r = answered(klarna.get_refund(&order, &no_refund).await);
    assert_answer(&r, 404, "NOT_FOUND");
    assert_eq!(
        r.messages,
        [format!(
            "Refund {no_refund} cannot be found for order {order}"
        )]
    );
}

#[tokio::test]
async fn schema_violation_is_422() {
    let sim = sim().await;
    let klarna = client(&sim);
    let (order, _) = seed(&sim, 10_000, vec![10_000]);
    // Neither can come out of the domain's validation; Klarna's schema refuses both.
    let mut request = refund(1_000);
    request.description = Some("d".repeat(256));
    let mut long_unit = line(OrderLineType::Physical, "T-Shirt", 1_000);
    long_unit.quantity_unit = Some("pieces-of-cloth".into());
    request.order_lines = vec![long_unit];
    let r = answered(klarna.create_refund(&order, &request, &op()).await);
    assert_answer(&r, 422, "UNPROCESSABLE_ENTITY");
    assert_eq!(r.messages.len(), 2, "{r:?}");
    assert!(
        r.messages.iter().any(|m| m.starts_with("description")),
        "{r:?}"
    );
    assert!(
        r.messages
            .iter()
            .any(|m| m.starts_with("order_lines[0].quantity_unit")),
        "{r:?}"
    );
    assert!(!KlarnaError::Answered(Box::new(r)).outcome_unknown());
}

#[tokio::test]
async fn body_over_one_megabyte_is_413() {
    let sim = sim().await;
    let klarna = client(&sim);
    let (order, _) = seed(&sim, 10_000, vec![10_000]);
    let mut request = refund(1_000);
    request.description = Some("x".repeat(1024 * 1024 + 1));
    let r = answered(klarna.create_refund(&order, &request, &op()).await);
    assert_answer(&r, 413, "REQUEST_TOO_LARGE");
}

#[tokio::test]
async fn rate_limit_is_429_with_retry_after() {
    let sim = klarna_sim::spawn(SimConfig {
        rate_limit_per_second: Some(1),
        ..SimConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // A resend would wait out the Retry-After and succeed.
    let klarna = client_without_retries(&sim);
    let (order, _) = seed(&sim, 100, vec![]);
    // One call per second is admitted: in a burst of five, at least one is refused even
    // on a slow, busy machine.
    let mut refused = Vec::new();
    for _ in 0..5 {
        if let Err(e) = klarna.get_order(&order).await {
            refused.push(answered::<()>(Err(e)));
        }
    }
    let r = refused
        .first()
        .unwrap_or_else(|| panic!("no 429 in a burst of 5"));
    assert_answer(r, 429, "TOO_MANY_REQUESTS");
    assert_eq!(r.retry_after, Some(Duration::from_secs(1)));
    assert!(!KlarnaError::Answered(Box::new(r.clone())).outcome_unknown());
}

#[tokio::test]
async fn injected_error_statuses_are_classified() {
    let sim = sim().await;
    let klarna = client_without_retries(&sim);
    let (order, _) = seed(&sim, 10_000, vec![10_000]);
    let path = format!("{ORDERS}/{order}/refunds");
    let cases = [
        (400, "BAD_VALUE", None),
        (409, "CONFLICT", None),
        (413, "REQUEST_TOO_LARGE", None),
        (429, "TOO_MANY_REQUESTS", Some(3)),
        (500, "INTERNAL_SERVER_ERROR", None),
        (502, "TEMPORARILY_UNAVAILABLE", None),
        (503, "TEMPORARILY_UNAVAILABLE", Some(5)),
        (504, "TEMPORARILY_UNAVAILABLE", None),
    ];
    for (status, code, retry_after) in cases {
        sim.sim
            .inject_fault(status_fault(path.clone(), status, None, retry_after));
        let error = klarna
            .create_refund(&order, &refund(100), &op())
            .await
            .err()
            .unwrap_or_else(|| panic!("{status}: no error"));
        assert_eq!(error.outcome_unknown(), status >= 500, "{status}");
        assert!(error.correlation_id().is_some(), "{status}");
        let r = answered::<()>(Err(error));
        assert_answer(&r, status, code);
        assert_eq!(
            r.retry_after,
            retry_after.map(Duration::from_secs),
            "{status}"
        );
    }
    // One attempt each, and no injected fault executed anything.
    assert_eq!(sim.sim.requests().len(), cases.len());
    let o = klarna
        .get_order(&order)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(o.refunded_amount, 0);
}

#[tokio::test]
async fn odd_error_bodies_are_understood() {
    let sim = sim().await;
    let klarna = client_without_retries(&sim);
    let (order, _) = seed(&sim, 10_000, vec![10_000]);
    let path = format!("{ORDERS}/{order}");

    sim.sim.inject_fault(status_fault(
        path.clone(),
        502,
        Some("<html><body><h1>502 Bad Gateway</h1></body></html>"),
        None,
    ));
    let r = answered(klarna.get_order(&order).await);
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code, None);
    assert_eq!(
        r.messages,
        ["<html><body><h1>502 Bad Gateway</h1></body></html>"]
    );
    assert_eq!(r.correlation_id, None);

    sim.sim
        .inject_fault(status_fault(path.clone(), 503, Some(""), Some(2)));
    let r = answered(klarna.get_order(&order).await);
    assert_eq!(
        r,
        KlarnaErrorResponse {
            status: 503,
            retry_after: Some(Duration::from_secs(2)),
            ..Default::default()
        }
    );

    sim.sim.inject_fault(status_fault(
        path.clone(),
        500,
        Some(r#"{"error_code": "UNEXPECTED_ERROR", "error_message": "Something went wrong", "correlation_id": "c-1"}"#),
        None,
    ));
    let r = answered(klarna.get_order(&order).await);
    assert_eq!(r.error_code.as_deref(), Some("UNEXPECTED_ERROR"));
    assert_eq!(r.messages, ["Something went wrong"]);
    assert_eq!(r.correlation_id.as_deref(), Some("c-1"));
}

#[tokio::test]
async fn success_with_unreadable_body_is_bad_response() {
    let sim = sim().await;
    let klarna = client(&sim);
    let (order, _) = seed(&sim, 10_000, vec![10_000]);
    sim.sim.inject_fault(status_fault(
        format!("{ORDERS}/{order}"),
        200,
        Some(r#"{"order_id": "x", "order_amount": 12.5}"#),
        None,
    ));
    let error = klarna.get_order(&order).await.err();
    assert!(
        matches!(error, Some(KlarnaError::BadResponse(ref m)) if m.contains("status 200")),
        "{error:?}"
    );

    // A 201 without Refund-Id or Location names no refund: unknown outcome, not success.
    sim.sim.inject_fault(status_fault(
        format!("{ORDERS}/{order}/refunds"),
        201,
        Some(""),
        None,
    ));
    let error = klarna
        .create_refund(&order, &refund(100), &op())
        .await
        .err();
    assert!(
        matches!(error, Some(KlarnaError::BadResponse(_))),
        "{error:?}"
    );
    assert!(error.is_some_and(|e| e.outcome_unknown()));

    // Another Klarna that answers 200 with the refund in a JSON body still made a refund.
    sim.sim.inject_fault(status_fault(
        format!("{ORDERS}/{order}/refunds"),
        200,
        Some(r#"{"refund_id": "b7a1c2d3-0000-4000-8000-000000000001", "extra": true}"#),
        None,
    ));
    let created = klarna.create_refund(&order, &refund(100), &op()).await;
    assert_eq!(
        created.map(|c| c.refund_id).ok().as_deref(),
        Some("b7a1c2d3-0000-4000-8000-000000000001")
    );
}

#[tokio::test]
async fn closed_port_is_not_sent() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    drop(listener);
    let mut config = KlarnaClientConfig::new(
        BaseUrl::parse(&format!("http://{addr}")).unwrap_or_else(|e| panic!("{e}")),
        KlarnaCredentials::new("user", "s3cret-pw"),
    );
    config.transport.retry = RetryConfig::no_retries();
    let klarna = KlarnaClient::new(config).unwrap_or_else(|e| panic!("{e}"));
    let order = order_id(&uuid::Uuid::new_v4().to_string());
    let error = klarna
        .create_refund(&order, &refund(100), &op())
        .await
        .err();
    assert!(matches!(error, Some(KlarnaError::NotSent(_))), "{error:?}");
    let shown = format!("{error:?}");
    assert!(!shown.contains("s3cret-pw"), "{shown}");
    assert!(error.is_some_and(|e| !e.outcome_unknown()));
}

#[tokio::test]
async fn dropped_connection_after_commit_is_no_answer() {
    let sim = sim().await;
    let klarna = client_without_retries(&sim);
    let (order, _) = seed(&sim, 10_000, vec![10_000]);
    sim.sim.inject_fault(FaultSpec {
        method: Some("POST".into()),
        path: format!("{ORDERS}/{order}/refunds"),
        times: 1,
        kind: FaultKind::CommitThenDrop,
    });
    let key = op();
    let error = klarna.create_refund(&order, &refund(700), &key).await.err();
    assert!(matches!(error, Some(KlarnaError::NoAnswer(_))), "{error:?}");
    assert!(error.is_some_and(|e| e.outcome_unknown()));

    // It did happen; resending under the same key reveals it without refunding twice.
    let created = klarna
        .create_refund(&order, &refund(700), &key)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let o = klarna
        .get_order(&order)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(o.refunded_amount, 700);
    assert_eq!(o.refunds.len(), 1);
    assert_eq!(o.refunds[0].refund_id, created.refund_id);
}

#[tokio::test]
async fn latency_beyond_the_attempt_timeout_is_no_answer() {
    let sim = sim().await;
    let klarna = client_with_timeout(&sim, Duration::from_millis(200));
    let (order, _) = seed(&sim, 10_000, vec![10_000]);
    sim.sim.inject_fault(FaultSpec {
        method: Some("GET".into()),
        path: format!("{ORDERS}/{order}"),
        times: 1,
        kind: FaultKind::Latency { millis: 5_000 },
    });
    let error = klarna.get_order(&order).await.err();
    assert!(
        matches!(error, Some(KlarnaError::NoAnswer(ref m)) if m.contains("attempt timeout")),
        "{error:?}"
    );

    sim.sim.inject_fault(FaultSpec {
        method: Some("POST".into()),
        path: format!("{ORDERS}/{order}/refunds"),
        times: 1,
        kind: FaultKind::CommitThenHold { millis: 5_000 },
    });
    let error = klarna
        .create_refund(&order, &refund(300), &op())
        .await
        .err();
    assert!(matches!(error, Some(KlarnaError::NoAnswer(_))), "{error:?}");
    // The refund was committed although no answer came in time.
    let o = klarna
        .get_order(&order)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(o.refunded_amount, 300);
}

#[tokio::test]
async fn release_and_due_date_extension() {
    let sim = sim().await;
    let klarna = client(&sim);
    let (order, captures) = seed(&sim, 10_000, vec![4_000]);

    let options = klarna
        .get_extend_due_date_options(&order, &captures[0])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The simulator sends the currency in lower case, as Klarna's sample does.
    let raw = &sim.sim.requests()[0].response_body;
    assert!(raw.contains(r#""currency":"sek""#), "{raw}");
    assert_eq!(options.currency, "SEK");
    let days: Vec<i32> = options.options.iter().map(|o| o.number_of_days).collect();
    assert_eq!(days, [7, 14, 30]);
    assert!(options.options.iter().all(|o| o.amount > 0));

    let r = answered(klarna.extend_due_date(&order, &captures[0], 5, &op()).await);
    assert_eq!(
        (r.status, r.error_code.as_deref()),
        (403, Some("NOT_ALLOWED"))
    );
    klarna
        .extend_due_date(&order, &captures[0], 14, &op())
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let before = klarna
        .get_order(&order)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(before.status, OrderStatus::PartCaptured);
    assert_eq!(before.remaining_authorized_amount, 6_000);
    klarna
        .release_remaining_authorization(&order, &op())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let after = klarna
        .get_order(&order)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(after.remaining_authorized_amount, 0);
    let statuses: Vec<u16> = sim.sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 403, 204, 200, 204, 200]);
}

#[tokio::test]
async fn card_capture_cannot_be_extended() {
    let sim = sim().await;
    let klarna = client(&sim);
    let seeded = sim.sim.seed_order(OrderSeed {
        order_amount: 1_000,
        captures: vec![1_000],
        payment_method_type: Some("CARD".into()),
        ..Default::default()
    });
    let order = order_id(&seeded.order_id);
    let capture = capture_id(&seeded.capture_ids[0]);
    let r = answered(klarna.get_extend_due_date_options(&order, &capture).await);
    assert_eq!(r.status, 403);
    let o = klarna
        .get_order(&order)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(o.payment_method_type.as_deref(), Some("CARD"));
}

/// A Klarna that answers each connection once with `answers[n]` (raw HTTP) and closes it,
/// after reading the request's head and body; returns its base URL.
fn raw_klarna(answers: Vec<Vec<u8>>) -> String {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    std::thread::spawn(move || {
        for answer in answers {
            let (stream, _) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader
                    .read_line(&mut line)
                    .unwrap_or_else(|e| panic!("{e}"));
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or_else(|e| panic!("{e}"));
                }
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader
                .read_exact(&mut body)
                .unwrap_or_else(|e| panic!("{e}"));
            let mut stream = reader.into_inner();
            stream.write_all(&answer).unwrap_or_else(|e| panic!("{e}"));
            // Dropped: the connection closes, which ends a body without a length.
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn answers_framed_by_closing_or_in_chunks_are_read() {
    let order = fixture_text("get_order_200_docs_sample.json");
    let refund_id = "b7a1c2d3-0000-4000-8000-000000000002";
    let location = format!("{ORDERS}/7849fd84-47dc-4919-a7ce-000000000001/refunds/{refund_id}");
    let mut chunked = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
        Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    let (first, second) = order.split_at(order.len() / 2);
    for part in [first, second] {
        chunked.extend_from_slice(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let base = raw_klarna(vec![
        // HTTP/1.0: no keep-alive, the body ends when the connection closes.
        format!("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{order}").into_bytes(),
        format!("HTTP/1.0 201 Created\r\nLocation: {location}\r\n\r\n").into_bytes(),
        chunked,
    ]);
    let mut config = KlarnaClientConfig::new(
        BaseUrl::parse(&base).unwrap_or_else(|e| panic!("{e}")),
        KlarnaCredentials::new("user", "secret"),
    );
    config.transport.retry = RetryConfig::no_retries();
    let klarna = KlarnaClient::new(config).unwrap_or_else(|e| panic!("{e}"));
    let id = order_id("7849fd84-47dc-4919-a7ce-000000000001");
    let read = klarna
        .get_order(&id)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read.captured_amount, 200);
    let created = klarna
        .create_refund(&id, &refund(50), &op())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(created.refund_id, refund_id);
    let again = klarna
        .get_order(&id)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.captured_amount, 200);
}

fn fixture_text(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}
