//! The partner Payments API over real HTTP: both refund operations and their rules, the
//! partner headers and error body, idempotency and faults on partner paths, the admin
//! additions, demo transactions, signed webhooks (delivery, retries, manual mode, no event on
//! replay) and mutual TLS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hmac::{Hmac, Mac};
use klarna_sim::{
    CaptureSeed, DEFAULT_PARTNER_ACCOUNT_ID, DEFAULT_PARTNER_API_KEY, DEFAULT_SIGNING_KEY_ID,
    DEFAULT_WEBHOOK_SECRET, FaultKind, FaultSpec, LineItem, SeededTransaction, SimConfig,
    TlsConfig, TransactionSeed, TransactionState, WebhookMode, WebhookTarget, demo,
};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

/// The acquiring-partner prefix for the default account.
fn account_prefix() -> String {
    format!("/v2/accounts/{DEFAULT_PARTNER_ACCOUNT_ID}")
}

fn transaction_path(id: &str) -> String {
    format!("{}/payment/transactions/{id}", account_prefix())
}

fn transaction_refunds_path(id: &str) -> String {
    format!("{}/refunds", transaction_path(id))
}

fn capture_refunds_path(capture_id: &str) -> String {
    format!("{}/payment/captures/{capture_id}/refunds", account_prefix())
}

impl Harness {
    /// A partner call with the configured API key.
    fn partner(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header("Authorization", format!("Basic {DEFAULT_PARTNER_API_KEY}"))
    }

    async fn partner_get(&self, path: &str) -> Response {
        self.partner(Method::GET, path).send().await.unwrap()
    }

    async fn partner_post(&self, path: &str, body: &Value, key: &str) -> Response {
        self.partner(Method::POST, path)
            .header("Klarna-Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn transaction(&self, id: &str) -> Value {
        let response = self.partner_get(&transaction_path(id)).await;
        assert_eq!(response.status(), StatusCode::OK, "GET transaction {id}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, self.sim().transaction_json(id).unwrap());
        body
    }

    /// A transaction of `captures` (oldest first) for their total, in SEK.
    fn captured_transaction(&self, captures: &[i64]) -> SeededTransaction {
        self.sim().seed_transaction(TransactionSeed {
            amount: captures.iter().sum(),
            captures: captures.iter().copied().map(CaptureSeed::new).collect(),
            ..Default::default()
        })
    }
}

fn key() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn line(name: &str, total: i64) -> Value {
    json!({"name": name, "quantity": 1, "unit_price": total, "total_amount": total})
}

fn transaction_refund(amount: i64) -> Value {
    json!({"amount": amount, "currency": "SEK", "line_items": [line("Item", amount)]})
}

fn capture_refund(amount: i64) -> Value {
    json!({"amount": amount, "currency": "SEK"})
}

/// Asserts a partner error answer and returns its body.
async fn expect_partner_error(
    response: Response,
    status: StatusCode,
    error_type: &str,
    code: &str,
) -> Value {
    assert_eq!(response.status(), status, "status");
    let body: Value = response.json().await.expect("partner error body is JSON");
    assert_eq!(body["error_type"], error_type, "{body}");
    assert_eq!(body["error_code"], code, "{body}");
    assert!(
        body["error_message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        body["doc_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://docs.klarna.com/")),
        "{body}"
    );
    let id = uuid::Uuid::try_parse(body["error_id"].as_str().expect("error_id")).unwrap();
    assert_eq!(id.get_version_num(), 4, "error_id is a UUID v4");
    assert!(
        body.get("error_messages").is_none(),
        "not the Order Management shape"
    );
    body
}

/// The `parameter`s of a validation error, in order.
fn parameters(body: &Value) -> Vec<&str> {
    body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            assert!(e["error_message"].as_str().is_some_and(|m| !m.is_empty()));
            e["parameter"].as_str().unwrap()
        })
        .collect()
}

async fn forbidden(response: Response, message_start: &str) {
    let body = expect_partner_error(
        response,
        StatusCode::FORBIDDEN,
        "ACCESS_ERROR",
        "OPERATION_FORBIDDEN",
    )
    .await;
    let message = body["error_message"].as_str().unwrap();
    assert!(message.starts_with(message_start), "{message}");
}

#[tokio::test]
async fn transaction_refund_is_allocated_oldest_capture_first() {
    let h = start().await;
    let seeded = h.captured_transaction(&[3_000, 5_000, 2_000]);
    let id = &seeded.payment_transaction_id;
    let [first, second, third] = &seeded.payment_capture_ids[..] else {
        panic!("three captures")
    };

    let response = h
        .partner_post(
            &transaction_refunds_path(id),
            &json!({
                "amount": 4_000,
                "currency": "SEK",
                "payment_refund_reference": "RMA-1",
                "description": "Returned shirt",
                "line_items": [
                    {"name": "Shirt", "quantity": 2, "unit_price": 1_500, "total_amount": 3_000,
                     "total_tax_amount": 600, "tax_rate": 2_500, "reference": "SH-1", "type": "PHYSICAL"},
                    line("Shipping", 1_000)
                ]
            }),
            &key(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(header(&response, "content-type"), "application/json");
    let refund: Value = response.json().await.unwrap();
    let refund_id = refund["payment_refund_id"].as_str().unwrap();
    let uuid = refund_id.strip_prefix(&format!("{id}:refund:")).unwrap();
    assert!(uuid::Uuid::try_parse(uuid).is_ok(), "{refund_id}");
    assert_eq!(refund["payment_transaction_id"], id.as_str());
    assert!(
        refund.get("payment_capture_id").is_none(),
        "spread over two captures"
    );
    assert_eq!(refund["amount"], 4_000);
    assert_eq!(refund["currency"], "SEK");
    assert_eq!(refund["payment_refund_reference"], "RMA-1");
    assert_eq!(refund["description"], "Returned shirt");
    assert_eq!(refund["state"], "SUCCEEDED");
    assert_timestamp(&refund["created_at"]);

    let transaction = h.transaction(id).await;
    assert_eq!(transaction["refunded_amount"], 4_000);
    assert_eq!(transaction["captured_amount"], 10_000);
    let refunded: Vec<&Value> = transaction["captures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["refunded_amount"])
        .collect();
    assert_eq!(refunded, [&json!(3_000), &json!(1_000), &json!(0)]);
    assert_eq!(transaction["refunds"][0]["payment_refund_id"], refund_id);
    assert_eq!(transaction["refunds"][0]["amount"], 4_000);

    // The next one fits in the second capture alone, and names it.
    let response = h
        .partner_post(
            &transaction_refunds_path(id),
            &transaction_refund(4_000),
            &key(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let refund: Value = response.json().await.unwrap();
    assert_eq!(refund["payment_capture_id"], second.as_str());
    assert!(refund["payment_refund_reference"].is_null());
    let transaction = h.transaction(id).await;
    assert_eq!(transaction["captures"][1]["refunded_amount"], 5_000);
    assert_eq!(
        transaction["refunds"][1]["payment_capture_id"],
        second.as_str()
    );
    assert_eq!(transaction["refunded_amount"], 8_000);

    // 2 000 are left, all in the third capture.
    forbidden(
        h.partner_post(
            &transaction_refunds_path(id),
            &transaction_refund(2_001),
            &key(),
        )
        .await,
        "Refund amount exceeds the refundable amount",
    )
    .await;
    let response = h
        .partner_post(&capture_refunds_path(first), &capture_refund(1), &key())
        .await;
    forbidden(response, "Refund amount exceeds the refundable amount").await;
    let response = h
        .partner_post(&capture_refunds_path(third), &capture_refund(2_000), &key())
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(h.transaction(id).await["refunded_amount"], 10_000);
}

#[tokio::test]
async fn capture_refund_works_under_both_prefixes_with_encoded_krns() {
    let h = start().await;
    let seeded = h.captured_transaction(&[6_000, 4_000]);
    let id = &seeded.payment_transaction_id;
    let second = &seeded.payment_capture_ids[1];

    let response = h
        .partner_post(
            &capture_refunds_path(second),
            &json!({"amount": 1_500, "currency": "SEK", "payment_refund_reference": "R-9"}),
            &key(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let refund: Value = response.json().await.unwrap();
    assert_eq!(refund["payment_capture_id"], second.as_str());
    assert_eq!(refund["payment_transaction_id"], id.as_str());
    assert_eq!(refund["amount"], 1_500);
    assert_eq!(refund["state"], "SUCCEEDED");

    // The direct-integration prefix, with the capture KRN percent-encoded.
    let encoded = second.replace(':', "%3A");
    let response = h
        .partner_post(
            &format!("/v2/payment/captures/{encoded}/refunds"),
            &capture_refund(500),
            &key(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);

    let direct = h
        .partner_get(&format!(
            "/v2/payment/transactions/{}",
            id.replace(':', "%3A")
        ))
        .await;
    assert_eq!(direct.status(), StatusCode::OK);
    let transaction: Value = direct.json().await.unwrap();
    assert_eq!(transaction, h.transaction(id).await);
    assert_eq!(transaction["payment_transaction_id"], id.as_str());
    assert_eq!(transaction["state"], "AUTHORIZED");
    assert_eq!(transaction["currency"], "SEK");
    assert_eq!(transaction["amount"], 10_000);
    assert_eq!(
        transaction["payment_funding"],
        json!({"type": "GUARANTEED", "state": "FUNDED"})
    );
    assert_eq!(transaction["refunded_amount"], 2_000);
    assert_eq!(transaction["captures"][0]["refunded_amount"], 0);
    assert_eq!(transaction["captures"][1]["refunded_amount"], 2_000);
    assert_eq!(
        transaction["captures"][1]["payment_capture_id"],
        second.as_str()
    );
    assert_timestamp(&transaction["captures"][1]["created_at"]);
    assert_timestamp(&transaction["created_at"]);
    assert_eq!(transaction["line_items"][0]["total_amount"], 10_000);
    let refunds = transaction["refunds"].as_array().unwrap();
    assert_eq!(refunds.len(), 2);
    assert_eq!(refunds[0]["payment_refund_reference"], "R-9");
    assert_eq!(refunds[0]["currency"], "SEK");
    assert!(refunds[1].get("payment_refund_reference").is_none());
}

#[tokio::test]
async fn authentication_and_accounts() {
    let h = start().await;
    let seeded = h.captured_transaction(&[1_000]);
    let path = transaction_path(&seeded.payment_transaction_id);
    let url = h.url(&path);
    use base64::Engine as _;
    let encoded_key =
        base64::engine::general_purpose::STANDARD.encode(format!("{DEFAULT_PARTNER_API_KEY}:"));
    for authorization in [
        None,
        Some("Basic klarna_test_api_wrong".to_owned()),
        Some(format!("Basic {encoded_key}")),
        Some(format!("Bearer {DEFAULT_PARTNER_API_KEY}")),
    ] {
        let mut request = h.client.get(&url);
        if let Some(value) = &authorization {
            request = request.header("Authorization", value);
        }
        let response = request.send().await.unwrap();
        expect_partner_error(
            response,
            StatusCode::UNAUTHORIZED,
            "ACCESS_ERROR",
            "UNAUTHORIZED",
        )
        .await;
    }
    // The Order Management credential is not a partner key, and the other way round.
    let response = h
        .client
        .get(&url)
        .basic_auth("sim-user", Some("sim-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = h
        .client
        .get(h.url(&format!("{ORDERS}/{}", demo::SE_INVOICE_ORDER_ID)))
        .header("Authorization", format!("Basic {DEFAULT_PARTNER_API_KEY}"))
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;

    // Another account's path is refused; Klarna-Partner-Account is accepted and logged.
    let other = format!(
        "/v2/accounts/krn:partner:global:account:live:00000000-0000-4000-8000-000000000000/payment/transactions/{}",
        seeded.payment_transaction_id
    );
    forbidden(h.partner_get(&other).await, "Partner account").await;
    let response = h
        .partner(Method::GET, &path)
        .header("Klarna-Partner-Account", "merchant-account-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let log = h.sim().requests();
    assert_eq!(
        log.last().unwrap().header("klarna-partner-account"),
        Some("merchant-account-42")
    );
}

#[tokio::test]
async fn input_errors_list_every_bad_field() {
    let h = start().await;
    let seeded = h.captured_transaction(&[5_000]);
    let id = &seeded.payment_transaction_id;
    let refunds = transaction_refunds_path(id);

    let response = h
        .partner_post(
            &refunds,
            &json!({
                "amount": 12.5,
                "currency": "SE",
                "payment_refund_reference": "r".repeat(256),
                "description": "d".repeat(256),
                "line_items": [
                    line("ok", 100),
                    {"name": "", "quantity": 0, "unit_price": "1", "total_amount": 1.0, "tax_rate": 10_001,
                     "reference": "x".repeat(256)}
                ]
            }),
            &key(),
        )
        .await;
    let body = expect_partner_error(
        response,
        StatusCode::BAD_REQUEST,
        "INPUT_ERROR",
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(
        parameters(&body),
        [
            "amount",
            "currency",
            "payment_refund_reference",
            "description",
            "line_items[1].name",
            "line_items[1].quantity",
            "line_items[1].unit_price",
            "line_items[1].total_amount",
            "line_items[1].tax_rate",
            "line_items[1].reference",
        ]
    );

    let cases = [
        (
            json!({"amount": 0, "currency": "SEK", "line_items": []}),
            "amount",
        ),
        (
            json!({"amount": -1, "currency": "SEK", "line_items": []}),
            "amount",
        ),
        (json!({"currency": "SEK", "line_items": []}), "amount"),
        (json!({"amount": 100, "currency": "SEK"}), "line_items"),
        (
            json!({"amount": 100, "currency": "SEK", "line_items": [line("a", 60), line("b", 30)]}),
            "line_items",
        ),
        (
            json!({"amount": 100, "currency": "SEK", "line_items": [{"quantity": 1, "unit_price": 100, "total_amount": 100}]}),
            "line_items[0].name",
        ),
        // A currency other than the transaction's.
        (
            transaction_refund(100)
                .as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o.insert("currency".into(), json!("EUR"));
                    Value::Object(o)
                })
                .unwrap(),
            "currency",
        ),
    ];
    for (body, parameter) in cases {
        let response = h.partner_post(&refunds, &body, &key()).await;
        let error = expect_partner_error(
            response,
            StatusCode::BAD_REQUEST,
            "INPUT_ERROR",
            "VALIDATION_ERROR",
        )
        .await;
        assert_eq!(parameters(&error), [parameter], "{body}");
    }
    let not_json = h
        .partner(Method::POST, &refunds)
        .header("Klarna-Idempotency-Key", key())
        .body("{nope")
        .send()
        .await
        .unwrap();
    let error = expect_partner_error(
        not_json,
        StatusCode::BAD_REQUEST,
        "INPUT_ERROR",
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(parameters(&error), ["body"]);

    // A partner POST without an idempotency key is refused before anything happens.
    let unkeyed = h
        .partner(Method::POST, &refunds)
        .json(&transaction_refund(100))
        .send()
        .await
        .unwrap();
    let error = expect_partner_error(
        unkeyed,
        StatusCode::BAD_REQUEST,
        "INPUT_ERROR",
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(parameters(&error), ["Klarna-Idempotency-Key"]);
    assert_eq!(
        h.transaction(id).await["refunded_amount"],
        0,
        "nothing executed"
    );
}

#[tokio::test]
async fn refusals_and_not_found() {
    let h = start().await;
    let closed = h.sim().seed_transaction(TransactionSeed {
        amount: 1_000,
        state: Some(TransactionState::Closed),
        captures: vec![CaptureSeed::new(1_000)],
        ..Default::default()
    });
    forbidden(
        h.partner_post(
            &transaction_refunds_path(&closed.payment_transaction_id),
            &transaction_refund(10),
            &key(),
        )
        .await,
        "Transaction is closed",
    )
    .await;
    forbidden(
        h.partner_post(
            &capture_refunds_path(&closed.payment_capture_ids[0]),
            &capture_refund(10),
            &key(),
        )
        .await,
        "Transaction is closed",
    )
    .await;

    let uncaptured = h.sim().seed_transaction(TransactionSeed {
        amount: 1_000,
        ..Default::default()
    });
    forbidden(
        h.partner_post(
            &transaction_refunds_path(&uncaptured.payment_transaction_id),
            &transaction_refund(10),
            &key(),
        )
        .await,
        "Transaction has no captures",
    )
    .await;

    // EXPIRED and COMPLETED transactions with captures can be refunded.
    for state in [TransactionState::Expired, TransactionState::Completed] {
        let seeded = h.sim().seed_transaction(TransactionSeed {
            amount: 1_000,
            state: Some(state),
            captures: vec![CaptureSeed::new(400)],
            ..Default::default()
        });
        let response = h
            .partner_post(
                &transaction_refunds_path(&seeded.payment_transaction_id),
                &transaction_refund(400),
                &key(),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "{state:?}");
    }

    let unknown = "krn:payment:eu1:transaction:00000000-0000-4000-8000-000000000000";
    for response in [
        h.partner_get(&transaction_path(unknown)).await,
        h.partner_post(
            &transaction_refunds_path(unknown),
            &transaction_refund(1),
            &key(),
        )
        .await,
        h.partner_post(
            &capture_refunds_path(&format!("{unknown}:capture:1")),
            &capture_refund(1),
            &key(),
        )
        .await,
        h.partner_get("/v2/payment/nothing-here").await,
        h.partner_get("/v2").await,
    ] {
        expect_partner_error(
            response,
            StatusCode::NOT_FOUND,
            "RESOURCE_ERROR",
            "RESOURCE_NOT_FOUND",
        )
        .await;
    }
}

#[tokio::test]
async fn the_201st_refund_and_the_501st_operation_are_refused() {
    let h = start().await;
    let at_199 = h.sim().seed_transaction(TransactionSeed {
        amount: 10_000,
        captures: vec![CaptureSeed::new(10_000)],
        prior_refunds: 199,
        ..Default::default()
    });
    let refunds = transaction_refunds_path(&at_199.payment_transaction_id);
    assert_eq!(
        h.transaction(&at_199.payment_transaction_id).await["refunds"]
            .as_array()
            .unwrap()
            .len(),
        199
    );
    let response = h
        .partner_post(&refunds, &transaction_refund(100), &key())
        .await;
    assert_eq!(response.status(), StatusCode::CREATED, "the 200th refund");
    forbidden(
        h.partner_post(&refunds, &transaction_refund(100), &key())
            .await,
        "Maximum number of refunds (200) reached for this transaction",
    )
    .await;
    let transaction = h.transaction(&at_199.payment_transaction_id).await;
    assert_eq!(transaction["refunds"].as_array().unwrap().len(), 200);
    assert_eq!(transaction["refunded_amount"], 199 + 100);

    // 1 capture + 100 refunds + 398 other operations = 499: one more operation is allowed.
    let at_499 = h.sim().seed_transaction(TransactionSeed {
        amount: 10_000,
        captures: vec![CaptureSeed::new(10_000)],
        prior_refunds: 100,
        other_operations: 398,
        ..Default::default()
    });
    let capture = &at_499.payment_capture_ids[0];
    let response = h
        .partner_post(&capture_refunds_path(capture), &capture_refund(1), &key())
        .await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "the 500th operation"
    );
    forbidden(
        h.partner_post(&capture_refunds_path(capture), &capture_refund(1), &key())
            .await,
        "Maximum number of operations (500) reached",
    )
    .await;
    assert_eq!(
        h.transaction(&at_499.payment_transaction_id).await["refunded_amount"],
        101
    );
}

#[tokio::test]
async fn partner_correlation_id_is_checked_and_echoed() {
    let h = start().await;
    let seeded = h.captured_transaction(&[1_000]);
    let path = transaction_path(&seeded.payment_transaction_id);

    let response = h
        .partner(Method::GET, &path)
        .header("Partner-Correlation-Id", "abc123XYZ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "Partner-Correlation-Id"), "abc123XYZ");

    // Echoed on errors too, and on a created refund.
    let response = h
        .partner(Method::GET, &transaction_path("krn:nope"))
        .header("Partner-Correlation-Id", "corr404")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&response, "Partner-Correlation-Id"), "corr404");
    let response = h
        .partner(
            Method::POST,
            &capture_refunds_path(&seeded.payment_capture_ids[0]),
        )
        .header("Klarna-Idempotency-Key", key())
        .header("Partner-Correlation-Id", "corr201")
        .json(&capture_refund(10))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(header(&response, "Partner-Correlation-Id"), "corr201");

    let absent = h.partner_get(&path).await;
    assert!(absent.headers().get("Partner-Correlation-Id").is_none());

    for bad in [
        "4f3c2a71-8d5e-4b6a-9c1f-2e7d8a9b0c11".to_owned(),
        "has space".to_owned(),
        "a".repeat(256),
        String::new(),
    ] {
        let response = h
            .partner(Method::GET, &path)
            .header("Partner-Correlation-Id", &bad)
            .send()
            .await
            .unwrap();
        assert!(response.headers().get("Partner-Correlation-Id").is_none());
        let error = expect_partner_error(
            response,
            StatusCode::BAD_REQUEST,
            "INPUT_ERROR",
            "VALIDATION_ERROR",
        )
        .await;
        assert_eq!(parameters(&error), ["Partner-Correlation-Id"], "{bad:?}");
    }
    let longest = "a".repeat(255);
    let response = h
        .partner(Method::GET, &path)
        .header("Partner-Correlation-Id", &longest)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn idempotent_replay_is_identical_and_executes_once() {
    let h = start().await;
    let seeded = h.captured_transaction(&[10_000]);
    let id = &seeded.payment_transaction_id;
    let refunds = transaction_refunds_path(id);

    let first = h
        .partner_post(&refunds, &transaction_refund(700), "key-1")
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first_headers: Vec<(String, String)> = first
        .headers()
        .iter()
        .filter(|(name, _)| *name != "date")
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    let first_body = first.text().await.unwrap();

    // Same key, another body (even an invalid one): the first answer, byte for byte.
    for body in [transaction_refund(900), json!({"amount": "nonsense"})] {
        let replay = h.partner_post(&refunds, &body, "key-1").await;
        assert_eq!(replay.status(), StatusCode::CREATED);
        let headers: Vec<(String, String)> = replay
            .headers()
            .iter()
            .filter(|(name, _)| *name != "date")
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        assert_eq!(headers, first_headers);
        assert_eq!(replay.text().await.unwrap(), first_body);
    }
    let transaction = h.transaction(id).await;
    assert_eq!(transaction["refunds"].as_array().unwrap().len(), 1);
    assert_eq!(transaction["refunded_amount"], 700);
    let log = h.sim().requests();
    let replayed: Vec<bool> = log
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.replayed)
        .collect();
    assert_eq!(replayed, [false, true, true]);

    // A refused refund is remembered as well; the same key on Order Management is another key.
    let refused = h
        .partner_post(&refunds, &transaction_refund(1_000_000), "key-2")
        .await;
    let refused_body = refused.text().await.unwrap();
    let again = h
        .partner_post(&refunds, &transaction_refund(1), "key-2")
        .await;
    assert_eq!(again.status(), StatusCode::FORBIDDEN);
    assert_eq!(again.text().await.unwrap(), refused_body);
    let order = h.captured_order(1_000);
    let om = h
        .refund(
            &order.order_id,
            &json!({"refunded_amount": 10}),
            Some("key-1"),
        )
        .await;
    assert_eq!(om.status(), StatusCode::CREATED);

    // After 24 hours the key is forgotten: the same key executes again.
    h.sim().advance_clock(Duration::from_secs(24 * 3600 + 1));
    let later = h
        .partner_post(&refunds, &transaction_refund(900), "key-1")
        .await;
    assert_eq!(later.status(), StatusCode::CREATED);
    assert_ne!(later.text().await.unwrap(), first_body);
    assert_eq!(h.transaction(id).await["refunded_amount"], 1_600);
}

#[tokio::test]
async fn faults_on_partner_paths() {
    let h = start().await;
    let seeded = h.captured_transaction(&[5_000]);
    let capture = &seeded.payment_capture_ids[0];
    // Armed with the KRN as is, matched however the client encodes it.
    let path = capture_refunds_path(capture);
    h.sim().inject_fault(FaultSpec {
        method: Some("POST".into()),
        path: path.clone(),
        times: 1,
        kind: FaultKind::Status {
            status: 403,
            body: Some(String::new()),
            retry_after_secs: None,
        },
    });
    let encoded = path.replace(':', "%3A");
    let shielded = h
        .partner(Method::POST, &encoded)
        .header("Klarna-Idempotency-Key", "shield-key")
        .header("Partner-Correlation-Id", "shield1")
        .json(&capture_refund(100))
        .send()
        .await
        .unwrap();
    assert_eq!(shielded.status(), StatusCode::FORBIDDEN);
    assert!(shielded.headers().get("content-type").is_none());
    assert!(shielded.headers().get("Partner-Correlation-Id").is_none());
    assert_eq!(shielded.bytes().await.unwrap().len(), 0, "no error object");
    assert_eq!(
        h.transaction(&seeded.payment_transaction_id).await["refunded_amount"],
        0
    );
    // Not remembered: the retry with the same key executes.
    let retried = h
        .partner_post(&path, &capture_refund(100), "shield-key")
        .await;
    assert_eq!(retried.status(), StatusCode::CREATED);

    // A status without a body answers with the partner error body.
    h.sim().inject_fault(FaultSpec {
        method: None,
        path: format!("{}/payment/*", account_prefix()),
        times: 1,
        kind: FaultKind::Status {
            status: 503,
            body: None,
            retry_after_secs: Some(3),
        },
    });
    let unavailable = h
        .partner_get(&transaction_path(&seeded.payment_transaction_id))
        .await;
    assert_eq!(header(&unavailable, "Retry-After"), "3");
    expect_partner_error(
        unavailable,
        StatusCode::SERVICE_UNAVAILABLE,
        "TECHNICAL_ERROR",
        "INTERNAL_ERROR",
    )
    .await;

    // Commit-then-drop: the refund is recorded although no answer arrives ...
    h.sim().inject_fault(FaultSpec {
        method: Some("POST".into()),
        path: path.clone(),
        times: 1,
        kind: FaultKind::CommitThenDrop,
    });
    let dropped = h
        .partner(Method::POST, &path)
        .header("Klarna-Idempotency-Key", "drop-key")
        .json(&capture_refund(250))
        .send()
        .await;
    assert!(dropped.is_err(), "{dropped:?}");
    let transaction = h.transaction(&seeded.payment_transaction_id).await;
    assert_eq!(transaction["refunded_amount"], 350);
    let recorded = transaction["refunds"][1]["payment_refund_id"].clone();
    // ... and the retry with the same key gets the committed answer.
    let retry = h
        .partner_post(&path, &capture_refund(250), "drop-key")
        .await;
    assert_eq!(retry.status(), StatusCode::CREATED);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["payment_refund_id"], recorded);
    assert_eq!(
        h.transaction(&seeded.payment_transaction_id).await["refunded_amount"],
        350
    );
    let log = h.sim().requests();
    let faults: Vec<Option<&str>> = log.iter().map(|r| r.fault.as_deref()).collect();
    assert!(faults.contains(&Some("commit_then_drop")));
}

#[tokio::test]
async fn rate_limit_answers_with_the_partner_body() {
    let h = start_with(SimConfig {
        rate_limit_per_second: Some(1),
        ..SimConfig::default()
    })
    .await;
    let seeded = h.captured_transaction(&[1_000]);
    let path = transaction_path(&seeded.payment_transaction_id);
    // One call per second: in a burst of five at least one is refused, even on a slow machine.
    let mut limited = None;
    for _ in 0..5 {
        let response = h.partner_get(&path).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("a call over the limit");
    assert_eq!(header(&limited, "Retry-After"), "1");
    expect_partner_error(
        limited,
        StatusCode::TOO_MANY_REQUESTS,
        "TECHNICAL_ERROR",
        "RATE_LIMITED",
    )
    .await;
}

#[tokio::test]
async fn admin_api_seeds_reads_and_closes_transactions() {
    let h = start().await;
    let admin = |path: &str| h.url(&format!("/__admin/{path}"));
    let id = "krn:payment:eu1:transaction:11111111-2222-4333-8444-555555555555";
    let seeded: Value = h
        .client
        .post(admin("transactions"))
        .json(&json!({
            "payment_transaction_id": id,
            "currency": "eur",
            "amount": 3_000,
            "line_items": [{"name": "Lamp", "quantity": 1, "unit_price": 3_000, "total_amount": 3_000}],
            "captures": [{"amount": 1_000}, {"amount": 2_000, "payment_capture_id": "cap-two"}],
            "prior_refunds": 2
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seeded["payment_transaction_id"], id);
    assert_eq!(seeded["currency"], "EUR");
    assert_eq!(seeded["state"], "AUTHORIZED");
    assert_eq!(
        seeded["captures"][0]["payment_capture_id"],
        format!("{id}:capture:1")
    );
    assert_eq!(seeded["captures"][1]["payment_capture_id"], "cap-two");
    assert_eq!(seeded["refunded_amount"], 2);
    assert_eq!(seeded["refunds"].as_array().unwrap().len(), 2);

    let read: Value = h
        .client
        .get(admin(&format!("transactions/{}", id.replace(':', "%3A"))))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read, seeded);

    let closed: Value = h
        .client
        .post(admin(&format!("transactions/{id}/state")))
        .json(&json!({"state": "CLOSED"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(closed["state"], "CLOSED");
    forbidden(
        h.partner_post(
            &capture_refunds_path("cap-two"),
            &json!({"amount": 1, "currency": "EUR"}),
            &key(),
        )
        .await,
        "Transaction is closed",
    )
    .await;
    assert_eq!(
        h.sim()
            .set_transaction_state(id, TransactionState::Completed)
            .unwrap()["state"],
        "COMPLETED"
    );

    let missing = h
        .client
        .get(admin("transactions/krn:none"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let inconsistent = h
        .client
        .post(admin("transactions"))
        .json(&json!({"amount": 100, "captures": [{"amount": 200}]}))
        .send()
        .await
        .unwrap();
    expect_error(
        inconsistent,
        StatusCode::UNPROCESSABLE_ENTITY,
        "UNPROCESSABLE_ENTITY",
    )
    .await;
    // A capture id already used by another transaction is refused.
    let taken = h
        .client
        .post(admin("transactions"))
        .json(
            &json!({"amount": 100, "captures": [{"amount": 100, "payment_capture_id": "cap-two"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn demo_transactions_show_refunds_refusals_and_the_limit() {
    let h = start().await;
    // The same entry point as the demo orders.
    assert_eq!(h.sim().seed_demo_orders().len(), 5);
    for id in demo::TRANSACTION_IDS {
        assert!(h.sim().transaction_json(id).is_some(), "{id}");
    }
    let response = h
        .partner_post(
            &capture_refunds_path(demo::CAPTURED_SECOND_CAPTURE_ID),
            &capture_refund(1_000),
            &key(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = h
        .partner_post(
            &transaction_refunds_path(demo::CAPTURED_TRANSACTION_ID),
            &transaction_refund(7_000),
            &key(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let captured = h.transaction(demo::CAPTURED_TRANSACTION_ID).await;
    assert_eq!(captured["captures"][0]["refunded_amount"], 6_000);
    assert_eq!(captured["captures"][1]["refunded_amount"], 2_000);

    forbidden(
        h.partner_post(
            &transaction_refunds_path(demo::CLOSED_TRANSACTION_ID),
            &transaction_refund(100),
            &key(),
        )
        .await,
        "Transaction is closed",
    )
    .await;
    forbidden(
        h.partner_post(
            &transaction_refunds_path(demo::UNCAPTURED_TRANSACTION_ID),
            &transaction_refund(100),
            &key(),
        )
        .await,
        "Transaction has no captures",
    )
    .await;
    let limit = capture_refunds_path(demo::LIMIT_CAPTURE_ID);
    assert_eq!(
        h.partner_post(&limit, &capture_refund(100), &key())
            .await
            .status(),
        StatusCode::CREATED
    );
    forbidden(
        h.partner_post(&limit, &capture_refund(100), &key()).await,
        "Maximum number of refunds (200)",
    )
    .await;

    // Seeding again resets them.
    h.sim().seed_demo_transactions();
    assert_eq!(
        h.transaction(demo::CAPTURED_TRANSACTION_ID).await["refunded_amount"],
        0
    );
}

// ---------------------------------------------------------------------------------------------
// Webhooks

/// A webhook receiver on a loopback port: records every request and answers with the queued
/// statuses, then 200.
#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<(http::HeaderMap, bytes::Bytes)>>>,
    statuses: Arc<Mutex<VecDeque<u16>>>,
}

impl Receiver {
    async fn start(statuses: &[u16]) -> (Self, String) {
        let receiver = Self::default();
        receiver.statuses.lock().unwrap().extend(statuses);
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: http::HeaderMap, body: bytes::Bytes| {
                let state = state.clone();
                async move {
                    state.received.lock().unwrap().push((headers, body));
                    let status = state.statuses.lock().unwrap().pop_front().unwrap_or(200);
                    http::StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn received(&self) -> Vec<(http::HeaderMap, bytes::Bytes)> {
        self.received.lock().unwrap().clone()
    }

    async fn wait_for(&self, count: usize) -> Vec<(http::HeaderMap, bytes::Bytes)> {
        wait_until(
            &format!("{count} webhook requests"),
            Duration::from_secs(20),
            async || Ok::<_, TimedOut>((self.received().len() >= count).then(|| self.received())),
        )
        .await
        .unwrap()
    }
}

fn hex_hmac(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn wait_for_acknowledged(h: &Harness, count: usize) {
    wait_until(
        &format!("{count} acknowledged deliveries"),
        Duration::from_secs(20),
        async || {
            let acknowledged = h
                .sim()
                .webhook_deliveries()
                .iter()
                .filter(|d| d.acknowledged)
                .count();
            Ok::<_, TimedOut>((acknowledged >= count).then_some(()))
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn refund_webhook_is_delivered_signed() {
    let (receiver, url) = Receiver::start(&[]).await;
    let h = start_with(SimConfig {
        webhook: Some(WebhookTarget::new(&url)),
        ..SimConfig::default()
    })
    .await;
    let seeded = h.captured_transaction(&[2_000]);
    let response = h
        .partner_post(
            &capture_refunds_path(&seeded.payment_capture_ids[0]),
            &json!({"amount": 1_250, "currency": "SEK", "payment_refund_reference": "RMA-77"}),
            &key(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let refund: Value = response.json().await.unwrap();

    let received = receiver.wait_for(1).await;
    let (headers, body) = &received[0];
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["klarna-signing-key-id"], DEFAULT_SIGNING_KEY_ID);
    assert_eq!(
        headers["klarna-signature"].to_str().unwrap(),
        hex_hmac(DEFAULT_WEBHOOK_SECRET, body)
    );
    assert_ne!(
        headers["klarna-signature"].to_str().unwrap(),
        hex_hmac("another secret", body)
    );
    let event: Value = serde_json::from_slice(body).unwrap();
    let metadata = &event["metadata"];
    assert_eq!(metadata["event_type"], "payment.transaction.refunded");
    assert_eq!(metadata["event_version"], "v2");
    assert_eq!(metadata["subject_account_id"], DEFAULT_PARTNER_ACCOUNT_ID);
    assert_eq!(metadata["recipient_account_id"], DEFAULT_PARTNER_ACCOUNT_ID);
    assert_eq!(
        metadata["product_instance_id"],
        klarna_sim::PRODUCT_INSTANCE_ID
    );
    assert_eq!(metadata["webhook_id"], klarna_sim::WEBHOOK_ID);
    assert_eq!(metadata["live"], false);
    assert_timestamp(&metadata["occurred_at"]);
    for id in ["event_id", "correlation_id"] {
        let uuid = uuid::Uuid::try_parse(metadata[id].as_str().unwrap()).unwrap();
        assert_eq!(uuid.get_version_num(), 4, "{id}");
    }
    assert_eq!(
        event["payload"],
        json!({
            "payment_transaction_id": seeded.payment_transaction_id,
            "payment_refund_id": refund["payment_refund_id"],
            "payment_refund_reference": "RMA-77",
            "amount": 1_250,
            "currency": "SEK",
        })
    );

    wait_for_acknowledged(&h, 1).await;
    let deliveries = h.sim().webhook_deliveries();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].attempt, 1);
    assert_eq!(deliveries[0].status, Some(200));
    assert_eq!(
        deliveries[0].event_id,
        metadata["event_id"].as_str().unwrap()
    );

    // The recorded event is exactly what was sent, so a test can POST a duplicate.
    let events = h.sim().webhook_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].body.as_bytes(), &body[..]);
    let mut duplicate = h.client.post(&url).body(events[0].body.clone());
    for (name, value) in &events[0].headers {
        duplicate = duplicate.header(name, value);
    }
    assert_eq!(duplicate.send().await.unwrap().status(), StatusCode::OK);
    let received = receiver.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[1].1, received[0].1);
    assert_eq!(
        received[1].0["klarna-signature"],
        received[0].0["klarna-signature"]
    );
}

#[tokio::test]
async fn unacknowledged_webhooks_are_retried_and_replays_send_none() {
    let (receiver, url) = Receiver::start(&[500, 503]).await;
    let h = start_with(SimConfig {
        webhook: Some(WebhookTarget::new(&url)),
        webhook_retry_schedule: vec![Duration::from_millis(20); 3],
        ..SimConfig::default()
    })
    .await;
    let seeded = h.captured_transaction(&[2_000]);
    let path = capture_refunds_path(&seeded.payment_capture_ids[0]);
    let first = h
        .partner_post(&path, &capture_refund(100), "webhook-key")
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);

    let received = receiver.wait_for(3).await;
    assert!(
        received.iter().all(|(_, body)| *body == received[0].1),
        "same event each time"
    );
    wait_for_acknowledged(&h, 1).await;
    let attempts: Vec<(u32, Option<u16>, bool)> = h
        .sim()
        .webhook_deliveries()
        .iter()
        .map(|d| (d.attempt, d.status, d.acknowledged))
        .collect();
    assert_eq!(
        attempts,
        [
            (1, Some(500), false),
            (2, Some(503), false),
            (3, Some(200), true)
        ]
    );

    // A replay emits nothing: events are emitted before the answer is sent.
    let replay = h
        .partner_post(&path, &capture_refund(100), "webhook-key")
        .await;
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(h.sim().webhook_events().len(), 1);
    assert_eq!(h.sim().queued_webhooks(), 0);

    // A receiver that never acknowledges gets the first try and every retry, then no more.
    let (refusing, refusing_url) = Receiver::start(&[500; 10]).await;
    h.sim()
        .set_webhook_target(WebhookTarget::new(&refusing_url));
    h.partner_post(&path, &capture_refund(1), &key()).await;
    refusing.wait_for(4).await;
    wait_until(
        "the last retry to be recorded",
        Duration::from_secs(20),
        async || {
            let failed = h
                .sim()
                .webhook_deliveries()
                .iter()
                .filter(|d| d.url.as_deref() == Some(refusing_url.as_str()))
                .count();
            Ok::<_, TimedOut>((failed == 4).then_some(()))
        },
    )
    .await
    .unwrap();
    assert!(
        h.sim()
            .webhook_deliveries()
            .iter()
            .all(|d| d.url.as_deref() != Some(refusing_url.as_str()) || !d.acknowledged)
    );

    // A transport error counts as a failed attempt too.
    h.sim()
        .set_webhook_target(WebhookTarget::new("http://127.0.0.1:1/hook"));
    h.partner_post(&path, &capture_refund(1), &key()).await;
    wait_until("a transport error", Duration::from_secs(20), async || {
        let errors = h
            .sim()
            .webhook_deliveries()
            .into_iter()
            .filter(|d| d.url.as_deref() == Some("http://127.0.0.1:1/hook"))
            .filter(|d| d.status.is_none() && d.error.is_some())
            .count();
        Ok::<_, TimedOut>((errors >= 1).then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn manual_mode_holds_events_until_flushed() {
    let (receiver, url) = Receiver::start(&[]).await;
    let h = start().await;
    // Configured at runtime through the admin API.
    let configured = h
        .client
        .post(h.url("/__admin/webhooks"))
        .json(&json!({"url": url, "mode": "manual", "secret": "s3cr3t",
                      "signing_key_id": "krn:partner:global:notification:signing-key:test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(configured.status(), StatusCode::NO_CONTENT);
    let target = h.sim().webhook_target().unwrap();
    assert_eq!(target.mode, WebhookMode::Manual);

    let seeded = h.captured_transaction(&[2_000]);
    for amount in [100, 200] {
        let response = h
            .partner_post(
                &transaction_refunds_path(&seeded.payment_transaction_id),
                &transaction_refund(amount),
                &key(),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    // Queued before each answer was sent: nothing can have been delivered.
    assert_eq!(h.sim().queued_webhooks(), 2);
    assert!(h.sim().webhook_deliveries().is_empty());
    assert!(receiver.received().is_empty());
    let state: Value = h
        .client
        .get(h.url("/__admin/webhooks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["queued"], 2);
    assert_eq!(state["target"]["mode"], "manual");

    let flushed: Value = h
        .client
        .post(h.url("/__admin/webhooks/flush"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(flushed, json!({"flushed": 2}));
    let received = receiver.wait_for(2).await;
    for (headers, body) in &received {
        assert_eq!(
            headers["klarna-signature"].to_str().unwrap(),
            hex_hmac("s3cr3t", body)
        );
        assert_eq!(
            headers["klarna-signing-key-id"],
            "krn:partner:global:notification:signing-key:test"
        );
    }
    let mut amounts: Vec<i64> = received
        .iter()
        .map(|(_, body)| {
            serde_json::from_slice::<Value>(body).unwrap()["payload"]["amount"]
                .as_i64()
                .unwrap()
        })
        .collect();
    amounts.sort_unstable();
    assert_eq!(amounts, [100, 200]);
    assert_eq!(h.sim().flush_webhooks(), 0);

    wait_for_acknowledged(&h, 2).await;
    let deliveries: Vec<Value> = h
        .client
        .get(h.url("/__admin/webhooks/deliveries"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 2);
    assert!(
        deliveries
            .iter()
            .all(|d| d["acknowledged"] == true && d["attempt"] == 1)
    );
    let events: Vec<Value> = h
        .client
        .get(h.url("/__admin/webhooks/events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(events.len(), 2);

    // Without a target, events are recorded as undeliverable and nothing is sent.
    let cleared = h
        .client
        .delete(h.url("/__admin/webhooks"))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    h.partner_post(
        &transaction_refunds_path(&seeded.payment_transaction_id),
        &transaction_refund(1),
        &key(),
    )
    .await;
    let last = h.sim().webhook_deliveries().pop().unwrap();
    assert_eq!((last.url, last.acknowledged), (None, false));
    assert_eq!(h.sim().queued_webhooks(), 0);
    let bad_url = h
        .client
        .post(h.url("/__admin/webhooks"))
        .json(&json!({"url": "not a url"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_url.status(), StatusCode::BAD_REQUEST);
}

// ---------------------------------------------------------------------------------------------
// Mutual TLS

struct Pki {
    ca_pem: String,
    server_chain_pem: String,
    server_key_pem: String,
    /// Client certificate and key, PEM, as `reqwest::Identity::from_pem` wants them.
    client_identity_pem: String,
}

/// A test CA, a server leaf for `localhost` and `127.0.0.1` and a client leaf, signed by it.
fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "klarna-sim test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.is_ca = IsCa::ExplicitNoCa;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
        "localhost",
    );
    let (client_cert, client_key) =
        leaf(Vec::new(), ExtendedKeyUsagePurpose::ClientAuth, "partner");
    Pki {
        ca_pem: ca_cert.pem(),
        server_chain_pem: server_cert,
        server_key_pem: server_key,
        client_identity_pem: format!("{client_cert}{client_key}"),
    }
}

fn tls_client(pki: &Pki, with_identity: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap()]);
    if with_identity {
        builder = builder
            .identity(reqwest::Identity::from_pem(pki.client_identity_pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn mutual_tls_requires_the_client_certificate() {
    let pki = pki();
    let tls = TlsConfig::new(pki.server_chain_pem.clone(), pki.server_key_pem.clone())
        .with_client_ca(pki.ca_pem.clone());
    let running = klarna_sim::spawn(SimConfig {
        tls: Some(tls),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    assert!(running.base_url.starts_with("https://127.0.0.1:"));
    assert!(running.tls().unwrap().is_mutual());
    let seeded = running.sim.seed_transaction(TransactionSeed {
        amount: 1_000,
        captures: vec![CaptureSeed::new(1_000)],
        line_items: Some(vec![LineItem::new("Book", 1, 1_000)]),
        ..Default::default()
    });
    let url = format!(
        "{}/payment/transactions/{}",
        running.partner_base_url(),
        seeded.payment_transaction_id
    );

    let response = tls_client(&pki, true)
        .get(&url)
        .header(
            "Authorization",
            format!("Basic {}", running.partner_api_key()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let refund = tls_client(&pki, true)
        .post(format!(
            "{}/payment/captures/{}/refunds",
            running.partner_base_url(),
            seeded.payment_capture_ids[0]
        ))
        .header(
            "Authorization",
            format!("Basic {}", running.partner_api_key()),
        )
        .header("Klarna-Idempotency-Key", key())
        .json(&capture_refund(10))
        .send()
        .await
        .unwrap();
    assert_eq!(refund.status(), StatusCode::CREATED);

    let without = tls_client(&pki, false)
        .get(&url)
        .header(
            "Authorization",
            format!("Basic {}", running.partner_api_key()),
        )
        .send()
        .await;
    assert!(without.is_err(), "no client certificate: {without:?}");
    let plain = reqwest::Client::new()
        .get(url.replacen("https://", "http://", 1))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP on a TLS port: {plain:?}");
    // Only the two calls with the certificate reached the API.
    assert_eq!(running.sim.requests().len(), 2);

    // Without a client CA, HTTPS needs no client certificate.
    let https = klarna_sim::spawn(SimConfig {
        tls: Some(TlsConfig::new(
            pki.server_chain_pem.clone(),
            pki.server_key_pem.clone(),
        )),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let response = tls_client(&pki, false)
        .get(format!(
            "{}/v2/payment/transactions/krn:none",
            https.base_url
        ))
        .header("Authorization", format!("Basic {DEFAULT_PARTNER_API_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let broken = klarna_sim::spawn(SimConfig {
        tls: Some(TlsConfig::new(
            pki.server_key_pem.clone(),
            pki.server_chain_pem.clone(),
        )),
        ..SimConfig::default()
    })
    .await;
    assert_eq!(broken.unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
}
