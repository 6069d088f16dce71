//! The partner Payments API client against a local stand-in for Klarna that records every
//! request: the exact paths under both kinds of prefix (KRNs percent-encoded as path
//! segments), the headers (the API key as Basic credential, idempotency key, an alphanumeric
//! `Partner-Correlation-Id`, `Klarna-Partner-Account` only when configured), the bodies, how
//! answers are read, and how each kind of error is classified and resent. Mutual TLS end to
//! end is tested against the simulator; here only that identities are checked when the client
//! is built, and never printed.

use std::time::{Duration, Instant};

use refund_gateway_domain::{
    Amount, Attempt, Caller, Currency, IdempotencyKey, KlarnaApi, KlarnaApiKind, KlarnaError,
    KlarnaErrorResponse, KlarnaFieldError, KlarnaRefund, LineItem, OperationId, OrderId,
    PartnerRefund, PaymentCaptureId, PaymentTransactionId, PaymentsApi, ReadVerdict, Rpc,
    TransactionState, Verdict, classify_mutation, classify_read,
};
use refund_gateway_klarna::{
    BaseUrl, ClientIdentity, KlarnaClient, KlarnaClientConfig, KlarnaConfigError,
    KlarnaCredentials, PaymentsClient, PaymentsClientConfig, RetryConfig, recording_attempts,
    user_agent,
};
use serde_json::{Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const API_KEY: &str = "klarna_test_api_T3stK3yNeverPrinted";
const ACCOUNT: &str = "krn:partner:global:account:test:ABC123";
const TRANSACTION: &str = "krn:payment:eu1:transaction:6b1f3c2e-0d4a-4b8e-9f1a-2c3d4e5f6a70";
const CAPTURE: &str = "krn:payment:eu1:transaction:6b1f3c2e-0d4a-4b8e-9f1a-2c3d4e5f6a70:capture:1";
const REFUND: &str = "krn:payment:eu1:refund:0f7e5c4a-1b2c-4d3e-8f9a-0b1c2d3e4f5a";

fn fast_retries() -> RetryConfig {
    RetryConfig {
        base_backoff: Duration::from_millis(2),
        max_backoff: Duration::from_millis(5),
        ..RetryConfig::default()
    }
}

fn config(server: &MockServer, prefix: &str) -> PaymentsClientConfig {
    let mut config = PaymentsClientConfig::new(
        BaseUrl::parse(&server.uri()).unwrap_or_else(|e| panic!("{e}")),
        API_KEY,
        prefix,
    );
    config.transport.retry = fast_retries();
    config
}

fn partner_client(server: &MockServer) -> PaymentsClient {
    let mut config = config(server, &format!("/v2/accounts/{ACCOUNT}"));
    config.on_behalf_of = Some("krn:partner:global:account:test:MERCHANT".into());
    PaymentsClient::new(config).unwrap_or_else(|e| panic!("{e}"))
}

fn direct_client(server: &MockServer) -> PaymentsClient {
    PaymentsClient::new(config(server, "/v2")).unwrap_or_else(|e| panic!("{e}"))
}

fn op() -> OperationId {
    let key =
        IdempotencyKey::parse(&uuid::Uuid::new_v4().to_string()).unwrap_or_else(|e| panic!("{e}"));
    OperationId::derive(&Caller::anonymous(), Rpc::RefundOrder, &key)
}

fn transaction() -> PaymentTransactionId {
    PaymentTransactionId::parse(TRANSACTION).unwrap_or_else(|e| panic!("{e}"))
}

fn capture() -> PaymentCaptureId {
    PaymentCaptureId::parse(CAPTURE).unwrap_or_else(|e| panic!("{e}"))
}

fn refund(line_items: Vec<LineItem>, description: Option<&str>) -> PartnerRefund {
    PartnerRefund {
        amount: Amount::parse(5000).unwrap_or_else(|e| panic!("{e}")),
        currency: Currency::parse("sek").unwrap_or_else(|e| panic!("{e}")),
        reference: "order-4711-return-1".into(),
        description: description.map(str::to_owned),
        line_items,
    }
}

fn shoes() -> LineItem {
    LineItem {
        name: "Running shoes".into(),
        quantity: 2,
        unit_price: 2000,
        total_amount: 4000,
        total_tax_amount: Some(800),
        tax_rate: Some(2500),
        reference: Some("SKU-1".into()),
        item_type: Some("physical".into()),
    }
}

fn shipping() -> LineItem {
    LineItem {
        name: "Shipping".into(),
        quantity: 1,
        unit_price: 1000,
        total_amount: 1000,
        total_tax_amount: None,
        tax_rate: None,
        reference: None,
        item_type: None,
    }
}

async fn answer(server: &MockServer, verb: &str, response: ResponseTemplate) {
    Mock::given(method(verb))
        .respond_with(response)
        .mount(server)
        .await;
}

/// Answers `first` to the first `times` requests, then `then`.
async fn answer_then(
    server: &MockServer,
    times: u64,
    first: ResponseTemplate,
    then: ResponseTemplate,
) {
    Mock::given(method("POST"))
        .respond_with(first)
        .up_to_n_times(times)
        .with_priority(1)
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .respond_with(then)
        .with_priority(2)
        .mount(server)
        .await;
}

async fn requests(server: &MockServer) -> Vec<Request> {
    server
        .received_requests()
        .await
        .unwrap_or_else(|| panic!("request recording is on by default"))
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

fn body(request: &Request) -> Value {
    serde_json::from_slice(&request.body).unwrap_or_else(|e| panic!("{e}"))
}

fn created() -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(json!({
        "payment_refund_id": REFUND,
        "payment_transaction_id": TRANSACTION,
        "amount": 5000,
        "currency": "SEK",
        "state": "SUCCEEDED",
        "created_at": "2025-05-01T10:00:00Z"
    }))
}

fn answered(error: Result<impl std::fmt::Debug, KlarnaError>) -> KlarnaErrorResponse {
    match error {
        Err(KlarnaError::Answered(response)) => *response,
        other => panic!("expected Klarna's answer, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// What is sent

#[tokio::test]
async fn a_transaction_refund_is_sent_as_assumed() {
    let server = MockServer::start().await;
    answer(
        &server,
        "POST",
        created().insert_header("Partner-Correlation-Id", "echoed1"),
    )
    .await;
    let key = op();
    let sent = refund(vec![shoes(), shipping()], Some("Returned shoes"));

    let made = partner_client(&server)
        .refund_transaction(&transaction(), &sent, &key)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(made.payment_refund_id, REFUND);
    assert_eq!(made.correlation_id.as_deref(), Some("echoed1"));
    let recorded = requests(&server).await;
    assert_eq!(recorded.len(), 1);
    let r = &recorded[0];
    assert_eq!(r.method.as_str(), "POST");
    // `:` may stay literal in a path segment: the KRNs appear as they are.
    assert_eq!(
        r.url.path(),
        format!("/v2/accounts/{ACCOUNT}/payment/transactions/{TRANSACTION}/refunds")
    );
    assert_eq!(r.url.query(), None);
    assert_eq!(
        header(r, "authorization"),
        Some(format!("Basic {API_KEY}").as_str())
    );
    assert_eq!(
        header(r, "klarna-idempotency-key"),
        Some(key.to_string().as_str())
    );
    let correlation = header(r, "partner-correlation-id").unwrap_or_default();
    assert_eq!(correlation, key.as_uuid().simple().to_string());
    assert_eq!(correlation.len(), 32);
    assert!(correlation.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(
        header(r, "klarna-partner-account"),
        Some("krn:partner:global:account:test:MERCHANT")
    );
    assert_eq!(header(r, "content-type"), Some("application/json"));
    assert_eq!(header(r, "accept"), Some("application/json"));
    assert_eq!(header(r, "user-agent"), Some(user_agent(None).as_str()));
    assert_eq!(
        body(r),
        json!({
            "amount": 5000,
            "currency": "SEK",
            "line_items": [
                {"name": "Running shoes", "quantity": 2, "unit_price": 2000,
                 "total_amount": 4000, "total_tax_amount": 800, "tax_rate": 2500,
                 "reference": "SKU-1", "type": "physical"},
                {"name": "Shipping", "quantity": 1, "unit_price": 1000, "total_amount": 1000}
            ],
            "payment_refund_reference": "order-4711-return-1",
            "description": "Returned shoes"
        })
    );
}

#[tokio::test]
async fn a_capture_refund_is_sent_under_the_direct_prefix() {
    let server = MockServer::start().await;
    // No body: the id comes from Location; no echo: Klarna's correlation header is used.
    answer(
        &server,
        "POST",
        ResponseTemplate::new(201)
            .insert_header("Location", format!("/v2/payment/refunds/{REFUND}").as_str())
            .insert_header("Klarna-Correlation-Id", "k-corr-1"),
    )
    .await;
    let key = op();

    let made = direct_client(&server)
        .refund_capture(&capture(), &refund(Vec::new(), None), &key)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(made.payment_refund_id, REFUND);
    assert_eq!(made.correlation_id.as_deref(), Some("k-corr-1"));
    let recorded = requests(&server).await;
    let r = &recorded[0];
    assert_eq!(
        r.url.path(),
        format!("/v2/payment/captures/{CAPTURE}/refunds")
    );
    assert_eq!(header(r, "klarna-partner-account"), None);
    assert_eq!(
        header(r, "klarna-idempotency-key"),
        Some(key.to_string().as_str())
    );
    assert_eq!(
        header(r, "partner-correlation-id"),
        Some(key.as_uuid().simple().to_string().as_str())
    );
    assert_eq!(
        body(r),
        json!({
            "amount": 5000,
            "currency": "SEK",
            "payment_refund_reference": "order-4711-return-1"
        })
    );
}

#[tokio::test]
async fn krns_are_single_percent_encoded_segments() {
    let server = MockServer::start().await;
    answer(&server, "POST", created()).await;
    answer(
        &server,
        "GET",
        ResponseTemplate::new(200).set_body_json(json!({"state": "AUTHORIZED"})),
    )
    .await;
    // Characters a KRN may hold but a path segment may not are escaped; `:` stays literal.
    let odd = PaymentTransactionId::parse("krn:payment:eu1:transaction:a<b>{c}")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut c = config(
        &server,
        "/v2/accounts/krn%3Apartner%3Aglobal%3Aaccount%3Atest%3AX/",
    );
    c.on_behalf_of = None;
    let client = PaymentsClient::new(c).unwrap_or_else(|e| panic!("{e}"));

    client
        .refund_transaction(&odd, &refund(vec![shoes()], None), &op())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let read = client
        .get_transaction(&odd)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(read.payment_transaction_id, odd.as_str());
    let paths: Vec<String> = requests(&server)
        .await
        .iter()
        .map(|r| r.url.path().to_owned())
        .collect();
    assert_eq!(
        paths,
        [
            "/v2/accounts/krn:partner:global:account:test:X/payment/transactions/krn:payment:eu1:transaction:a%3Cb%3E%7Bc%7D/refunds",
            "/v2/accounts/krn:partner:global:account:test:X/payment/transactions/krn:payment:eu1:transaction:a%3Cb%3E%7Bc%7D",
        ]
    );
}

#[tokio::test]
async fn a_transaction_is_read() {
    let server = MockServer::start().await;
    answer(
        &server,
        "GET",
        ResponseTemplate::new(200).set_body_json(json!({
            "payment_transaction_id": TRANSACTION,
            "state": "AUTHORIZED",
            "amount": 10000,
            "currency": "sek",
            "captured_amount": 6000,
            "refunded_amount": 1000,
            "payment_funding": {"type": "GUARANTEED", "state": "FUNDED"},
            "line_items": [{"name": "Running shoes", "quantity": 1}],
            "captures": [{"payment_capture_id": CAPTURE, "amount": 6000,
                          "refunded_amount": 1000, "created_at": "2025-05-01T09:00:00Z"}],
            "refunds": [{"payment_refund_id": REFUND, "payment_capture_id": CAPTURE,
                         "amount": 1000, "payment_refund_reference": "r-1",
                         "created_at": "2025-05-01T10:00:00Z"}],
            "klarna_network_data": {"unknown": true}
        })),
    )
    .await;

    let t = partner_client(&server)
        .get_transaction(&transaction())
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(t.payment_transaction_id, TRANSACTION);
    assert_eq!(t.state, TransactionState::Authorized);
    assert_eq!(t.currency, "SEK");
    assert_eq!(t.amount, 10000);
    assert_eq!(t.captured_amount, Some(6000));
    assert_eq!(t.refunded_amount, Some(1000));
    assert_eq!(t.refundable(), Some(5000));
    assert_eq!(t.captures.len(), 1);
    assert_eq!(t.captures[0].payment_capture_id, CAPTURE);
    assert_eq!(t.captures[0].refunded_amount, Some(1000));
    assert_eq!(t.refunds.len(), 1);
    assert_eq!(t.refunds[0].reference.as_deref(), Some("r-1"));
    assert_eq!(t.refunds[0].payment_capture_id.as_deref(), Some(CAPTURE));

    let recorded = requests(&server).await;
    let r = &recorded[0];
    assert_eq!(r.method.as_str(), "GET");
    assert_eq!(
        r.url.path(),
        format!("/v2/accounts/{ACCOUNT}/payment/transactions/{TRANSACTION}")
    );
    assert_eq!(
        header(r, "authorization"),
        Some(format!("Basic {API_KEY}").as_str())
    );
    assert_eq!(header(r, "klarna-idempotency-key"), None);
    assert_eq!(header(r, "content-type"), None);
    assert!(r.body.is_empty());
    // A fresh id per read, alphanumeric as Klarna requires.
    let correlation = header(r, "partner-correlation-id").unwrap_or_default();
    assert_eq!(correlation.len(), 32, "{correlation}");
    assert!(correlation.bytes().all(|b| b.is_ascii_alphanumeric()));
}

#[tokio::test]
async fn a_bare_transaction_leaves_amounts_to_be_derived() {
    let server = MockServer::start().await;
    answer(
        &server,
        "GET",
        ResponseTemplate::new(200).set_body_json(json!({
            "state": "completed",
            "amount": 3000,
            "currency": "EUR",
            "captures": [{"payment_capture_id": CAPTURE, "amount": 3000}, null],
            "refunds": null
        })),
    )
    .await;

    let t = direct_client(&server)
        .get_transaction(&transaction())
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(t.payment_transaction_id, TRANSACTION);
    assert_eq!(t.state, TransactionState::Completed);
    assert_eq!(t.captured_amount, None);
    assert_eq!(t.refunded_amount, None);
    assert_eq!(t.captured(), Some(3000));
    assert_eq!(t.refunded(), 0);
    assert!(t.refunds.is_empty());
}

#[tokio::test]
async fn a_success_without_a_readable_refund_id_is_a_bad_response() {
    let server = MockServer::start().await;
    answer(
        &server,
        "POST",
        ResponseTemplate::new(201).set_body_json(json!({"state": "SUCCEEDED"})),
    )
    .await;
    let (result, attempts) = recording_attempts(direct_client(&server).refund_capture(
        &capture(),
        &refund(Vec::new(), None),
        &op(),
    ))
    .await;
    assert!(
        matches!(result, Err(KlarnaError::BadResponse(ref m)) if m.contains("payment_refund_id")),
        "{result:?}"
    );
    assert_eq!(attempts, [Attempt::Unreadable]);
    assert_eq!(requests(&server).await.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Errors

#[tokio::test]
async fn an_input_error_carries_its_field_errors() {
    let server = MockServer::start().await;
    answer(
        &server,
        "POST",
        ResponseTemplate::new(400).set_body_json(json!({
            "error_id": "9c0c2b8e-3f0a-4f5e-9d3c-1a2b3c4d5e6f",
            "error_type": "INPUT_ERROR",
            "error_code": "VALIDATION_ERROR",
            "error_message": "The request body is invalid.",
            "doc_url": "https://docs.klarna.com/",
            "errors": [
                {"parameter": "line_items[0].total_amount", "error_message": "must equal quantity x unit_price", "doc_url": "x"},
                {"parameter": "currency", "error_message": "does not match the transaction"}
            ]
        })),
    )
    .await;
    let (result, attempts) = recording_attempts(partner_client(&server).refund_transaction(
        &transaction(),
        &refund(vec![shoes()], None),
        &op(),
    ))
    .await;
    let r = answered(result);
    assert_eq!(r.status, 400);
    assert_eq!(r.api, KlarnaApiKind::Payments);
    assert!(r.error_object);
    assert_eq!(r.error_type.as_deref(), Some("INPUT_ERROR"));
    assert_eq!(r.error_code.as_deref(), Some("VALIDATION_ERROR"));
    assert_eq!(r.messages, ["The request body is invalid."]);
    assert_eq!(
        r.correlation_id.as_deref(),
        Some("9c0c2b8e-3f0a-4f5e-9d3c-1a2b3c4d5e6f")
    );
    assert_eq!(
        r.field_errors,
        [
            KlarnaFieldError {
                parameter: "line_items[0].total_amount".into(),
                message: "must equal quantity x unit_price".into(),
            },
            KlarnaFieldError {
                parameter: "currency".into(),
                message: "does not match the transaction".into(),
            },
        ]
    );
    assert_eq!(
        classify_mutation(KlarnaApiKind::Payments, &attempts),
        Verdict::Refused
    );
    assert_eq!(requests(&server).await.len(), 1);
}

#[tokio::test]
async fn a_forbidden_operation_is_a_refusal() {
    let server = MockServer::start().await;
    answer(
        &server,
        "POST",
        ResponseTemplate::new(403).set_body_json(json!({
            "error_id": "e-403",
            "error_type": "ACCESS_ERROR",
            "error_code": "OPERATION_FORBIDDEN",
            "error_message": "Maximum number of refunds reached for the transaction."
        })),
    )
    .await;
    let (result, attempts) = recording_attempts(direct_client(&server).refund_capture(
        &capture(),
        &refund(Vec::new(), None),
        &op(),
    ))
    .await;
    let r = answered(result);
    assert_eq!(r.status, 403);
    assert!(r.error_object);
    assert_eq!(r.error_code.as_deref(), Some("OPERATION_FORBIDDEN"));
    assert_eq!(r.correlation_id.as_deref(), Some("e-403"));
    assert_eq!(attempts, [Attempt::Answered(403)]);
    assert_eq!(
        classify_mutation(KlarnaApiKind::Payments, &attempts),
        Verdict::Refused
    );
    assert_eq!(requests(&server).await.len(), 1);
}

#[tokio::test]
async fn a_forbidden_without_an_error_object_is_the_ddos_shield_and_sent_once() {
    for shield in [
        ResponseTemplate::new(403),
        ResponseTemplate::new(403)
            .set_body_raw("<html><body>Request blocked</body></html>", "text/html"),
    ] {
        let server = MockServer::start().await;
        answer(&server, "POST", shield).await;
        let (result, attempts) = recording_attempts(partner_client(&server).refund_transaction(
            &transaction(),
            &refund(vec![shoes()], None),
            &op(),
        ))
        .await;
        let r = answered(result);
        assert_eq!(r.status, 403);
        assert_eq!(r.api, KlarnaApiKind::Payments);
        assert!(!r.error_object);
        assert_eq!(r.error_code, None);
        assert_eq!(attempts, [Attempt::ForbiddenWithoutError]);
        assert_eq!(
            classify_mutation(KlarnaApiKind::Payments, &attempts),
            Verdict::NothingHappened
        );
        // A keyed POST, but a 403 is never resent.
        assert_eq!(requests(&server).await.len(), 1);
    }
}

#[tokio::test]
async fn an_unknown_transaction_is_not_found() {
    let server = MockServer::start().await;
    answer(
        &server,
        "GET",
        ResponseTemplate::new(404).set_body_json(json!({
            "error_id": "e-404",
            "error_type": "RESOURCE_ERROR",
            "error_code": "RESOURCE_NOT_FOUND",
            "error_message": "The payment transaction was not found."
        })),
    )
    .await;
    let result = partner_client(&server)
        .get_transaction(&transaction())
        .await;
    let error = result.as_ref().err().cloned();
    let r = answered(result);
    assert_eq!(r.status, 404);
    assert_eq!(r.api, KlarnaApiKind::Payments);
    assert_eq!(r.error_code.as_deref(), Some("RESOURCE_NOT_FOUND"));
    assert_eq!(
        error.as_ref().map(classify_read),
        Some(ReadVerdict::Refused)
    );
    assert_eq!(requests(&server).await.len(), 1);
}

#[tokio::test]
async fn a_rate_limit_is_waited_out_and_resent_under_the_same_key() {
    let server = MockServer::start().await;
    answer_then(
        &server,
        1,
        ResponseTemplate::new(429)
            .insert_header("Retry-After", "1")
            .set_body_json(json!({"error_id": "e-429", "error_type": "TECHNICAL_ERROR",
                                  "error_code": "RATE_LIMITED", "error_message": "Slow down"})),
        created(),
    )
    .await;
    let key = op();
    let started = Instant::now();
    let (result, attempts) = recording_attempts(partner_client(&server).refund_transaction(
        &transaction(),
        &refund(vec![shoes()], None),
        &key,
    ))
    .await;
    assert_eq!(
        result.map(|r| r.payment_refund_id).ok().as_deref(),
        Some(REFUND)
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After waited for"
    );
    assert_eq!(attempts, [Attempt::Answered(429), Attempt::Answered(201)]);
    let recorded = requests(&server).await;
    assert_eq!(recorded.len(), 2);
    for r in &recorded {
        assert_eq!(
            header(r, "klarna-idempotency-key"),
            Some(key.to_string().as_str())
        );
        assert_eq!(
            header(r, "partner-correlation-id"),
            Some(key.as_uuid().simple().to_string().as_str())
        );
    }
    assert_eq!(recorded[0].body, recorded[1].body);
}

#[tokio::test]
async fn unavailability_is_resent_under_the_same_key() {
    let server = MockServer::start().await;
    answer_then(&server, 2, ResponseTemplate::new(503), created()).await;
    let key = op();
    let (result, attempts) = recording_attempts(direct_client(&server).refund_capture(
        &capture(),
        &refund(Vec::new(), None),
        &key,
    ))
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        attempts,
        [
            Attempt::Answered(503),
            Attempt::Answered(503),
            Attempt::Answered(201)
        ]
    );
    let recorded = requests(&server).await;
    let sent: Vec<_> = recorded
        .iter()
        .map(|r| header(r, "klarna-idempotency-key"))
        .collect();
    assert_eq!(sent, vec![Some(key.to_string().as_str()); 3]);
}

#[tokio::test]
async fn order_management_errors_stay_order_management() {
    let server = MockServer::start().await;
    answer(&server, "POST", ResponseTemplate::new(403)).await;
    let client = KlarnaClient::new(KlarnaClientConfig::new(
        BaseUrl::parse(&server.uri()).unwrap_or_else(|e| panic!("{e}")),
        KlarnaCredentials::new("PK_1", "secret"),
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let order =
        OrderId::parse("0b1d9815-165e-42e2-8867-35bc03789e00").unwrap_or_else(|e| panic!("{e}"));
    let sent = KlarnaRefund {
        refunded_amount: Amount::parse(100).unwrap_or_else(|e| panic!("{e}")),
        description: None,
        reference: "r".into(),
        order_lines: Vec::new(),
    };
    let (result, attempts) = recording_attempts(client.create_refund(&order, &sent, &op())).await;
    let r = answered(result);
    assert_eq!(r.api, KlarnaApiKind::OrderManagement);
    assert!(!r.error_object);
    assert_eq!(
        classify_mutation(KlarnaApiKind::OrderManagement, &attempts),
        Verdict::Refused
    );
    let recorded = requests(&server).await;
    assert_eq!(header(&recorded[0], "partner-correlation-id"), None);
}

// ---------------------------------------------------------------------------------------------
// Configuration

fn self_signed() -> (String, String) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["partner.test".to_owned()])
            .unwrap_or_else(|e| panic!("{e}"));
    (cert.pem(), signing_key.serialize_pem())
}

/// Every base64 line of a PEM key: none may ever be printed.
fn key_lines(key_pem: &str) -> Vec<String> {
    key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_client_identity_builds_and_nothing_secret_is_printed() {
    let server = MockServer::start().await;
    let (cert, key) = self_signed();
    let (ca, _) = self_signed();
    let mut config = config(&server, &format!("/v2/accounts/{ACCOUNT}"));
    config.client_identity = Some(ClientIdentity::from_pem(cert, key.clone().into_bytes()));
    config.extra_root_certificates = vec![ca.into_bytes()];
    let shown_config = format!("{config:?} {config:#?}");
    let client = PaymentsClient::new(config).unwrap_or_else(|e| panic!("{e}"));
    let shown = format!("{shown_config} {client:?} {client:#?}");
    assert!(!shown.contains(API_KEY), "{shown}");
    assert!(!shown.contains("T3stK3y"), "{shown}");
    for line in key_lines(&key) {
        assert!(!shown.contains(&line), "{shown}");
    }
    assert!(shown.contains(ACCOUNT), "{shown}");
}

#[tokio::test]
async fn unusable_identities_are_refused_without_echo() {
    let server = MockServer::start().await;
    let (cert, key) = self_signed();
    let (_, other_key) = self_signed();
    let cases = [
        ("certificate without key", cert.clone(), String::new()),
        ("garbage chain", "garbage".to_owned(), key.clone()),
        ("garbage key", cert.clone(), "garbage".to_owned()),
        ("key as certificate", key.clone(), key.clone()),
        ("certificate as key", cert.clone(), cert.clone()),
        (
            "key of another certificate",
            cert.clone(),
            other_key.clone(),
        ),
    ];
    for (case, chain, private_key) in cases {
        let mut config = config(&server, "/v2");
        config.client_identity = Some(ClientIdentity::from_pem(chain, private_key.into_bytes()));
        let e = PaymentsClient::new(config).err();
        let text = format!(
            "{e:?} {}",
            e.as_ref().map(ToString::to_string).unwrap_or_default()
        );
        assert!(
            matches!(
                e,
                Some(
                    KlarnaConfigError::InvalidClientIdentity(_) | KlarnaConfigError::HttpClient(_)
                )
            ),
            "{case}: {text}"
        );
        for line in key_lines(&key).iter().chain(&key_lines(&other_key)) {
            assert!(!text.contains(line.as_str()), "{case}: {text}");
        }
        assert!(!text.contains("PRIVATE KEY"), "{case}: {text}");
    }
}

#[tokio::test]
async fn api_keys_and_prefixes_are_checked_at_construction() {
    let server = MockServer::start().await;
    let mut bad_key = config(&server, "/v2");
    bad_key.api_key = "klarna_test_api_with space".into();
    let e = PaymentsClient::new(bad_key).err();
    assert!(
        matches!(e, Some(KlarnaConfigError::InvalidApiKey(_))),
        "{e:?}"
    );
    assert!(!format!("{e:?}").contains("with space"));
    for prefix in ["v2", "/v2?account=1", "/v2#x", "/v2/../x"] {
        assert!(
            matches!(
                PaymentsClient::new(config(&server, prefix)),
                Err(KlarnaConfigError::InvalidPathPrefix { .. })
            ),
            "{prefix}"
        );
    }
}
