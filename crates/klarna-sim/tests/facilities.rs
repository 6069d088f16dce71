//! Test facilities over real HTTP: injected faults (status, latency, hold-then-commit,
//! commit-then-hold, commit-then-drop), 409 for a key in use, the request log, the admin API
//! and shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use klarna_sim::{FaultKind, FaultSpec, SimConfig, demo};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn fault(method: Option<&str>, path: &str, times: u32, kind: FaultKind) -> FaultSpec {
    FaultSpec {
        method: method.map(str::to_owned),
        path: path.to_owned(),
        times,
        kind,
    }
}

fn refunds_path(order_id: &str) -> String {
    format!("{ORDERS}/{order_id}/refunds")
}

#[tokio::test]
async fn status_fault_answers_without_executing_and_is_not_remembered() {
    let h = start().await;
    let order = h.captured_order(10_000);
    h.sim().inject_fault(fault(
        Some("POST"),
        &refunds_path(&order.order_id),
        1,
        FaultKind::Status {
            status: 503,
            body: None,
            retry_after_secs: Some(2),
        },
    ));
    let body = json!({"refunded_amount": 700});
    let failed = h.refund(&order.order_id, &body, Some("fault-key")).await;
    assert_eq!(header(&failed, "Retry-After"), "2");
    expect_error(
        failed,
        StatusCode::SERVICE_UNAVAILABLE,
        "TEMPORARILY_UNAVAILABLE",
    )
    .await;
    assert_eq!(
        h.order(&order.order_id).await["refunds"],
        json!([]),
        "not executed"
    );

    // The retry with the same key executes (the fault was not remembered) ...
    let retried = h.refund(&order.order_id, &body, Some("fault-key")).await;
    assert_eq!(retried.status(), StatusCode::CREATED);
    let refund_id = header(&retried, "Refund-Id");
    // ... and is what is replayed from then on.
    let replay = h.refund(&order.order_id, &body, Some("fault-key")).await;
    assert_eq!(header(&replay, "Refund-Id"), refund_id);
    assert_eq!(
        h.order(&order.order_id).await["refunds"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let log = h.sim().requests();
    let faults: Vec<Option<&str>> = log.iter().map(|r| r.fault.as_deref()).collect();
    assert_eq!(faults[0], Some("status"));
    assert_eq!(log[0].status, 503);
}

#[tokio::test]
async fn status_fault_with_raw_body_prefix_and_method_matching() {
    let h = start().await;
    let order = h.captured_order(10_000);
    h.sim().inject_fault(fault(
        Some("GET"),
        "/ordermanagement/v1/orders/*",
        2,
        FaultKind::Status {
            status: 502,
            body: Some("<html>Bad gateway</html>".into()),
            retry_after_secs: None,
        },
    ));
    let path = format!("{ORDERS}/{}", order.order_id);
    for _ in 0..2 {
        let response = h.get(&path).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert!(header(&response, "content-type").starts_with("text/plain"));
        assert_eq!(response.text().await.unwrap(), "<html>Bad gateway</html>");
    }
    // POST does not match the GET fault, and the GET fault is used up after two calls.
    assert_eq!(
        h.refund_amount(&order.order_id, 1).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(h.get(&path).await.status(), StatusCode::OK);

    h.sim().inject_fault(fault(
        None,
        &path,
        100,
        FaultKind::Status {
            status: 500,
            body: None,
            retry_after_secs: None,
        },
    ));
    expect_error(
        h.get(&path).await,
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL_SERVER_ERROR",
    )
    .await;
    h.sim().clear_faults();
    assert_eq!(h.get(&path).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn latency_fault_delays_then_processes() {
    let h = start().await;
    let order = h.captured_order(10_000);
    let path = format!("{ORDERS}/{}", order.order_id);
    h.sim()
        .inject_fault(fault(None, &path, 1, FaultKind::Latency { millis: 300 }));
    let started = Instant::now();
    let response = h.get(&path).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(h.sim().requests()[0].fault.as_deref(), Some("latency"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_then_hold_commits_before_answering() {
    let h = start().await;
    let order = h.captured_order(10_000);
    h.sim().inject_fault(fault(
        Some("POST"),
        &refunds_path(&order.order_id),
        1,
        FaultKind::CommitThenHold { millis: 1500 },
    ));
    let started = Instant::now();
    let url = h.url(&refunds_path(&order.order_id));
    let client = h.client.clone();
    let request = tokio::spawn(async move {
        client
            .post(url)
            .basic_auth("sim-user", Some("sim-password"))
            .header("Klarna-Idempotency-Key", "hold-key")
            .json(&json!({"refunded_amount": 400}))
            .send()
            .await
            .unwrap()
    });
    // The refund is visible while the answer is still held.
    wait_until("the refund to commit", Duration::from_secs(5), async || {
        let refunded = h.sim().order_json(&order.order_id).unwrap()["refunded_amount"].clone();
        Ok::<_, TimedOut>((refunded == 400).then_some(()))
    })
    .await
    .unwrap();
    assert!(!request.is_finished(), "answer is held after the commit");
    let response = request.await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(response.status(), StatusCode::CREATED);
    let refund_id = header(&response, "Refund-Id");
    let replay = h
        .refund(
            &order.order_id,
            &json!({"refunded_amount": 400}),
            Some("hold-key"),
        )
        .await;
    assert_eq!(header(&replay, "Refund-Id"), refund_id);
    assert_eq!(
        h.order(&order.order_id).await["refunds"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// Sends a refund of 400 under `key` from a task of its own, giving up after `timeout`.
fn refund_in_background(
    h: &Harness,
    order_id: &str,
    key: &'static str,
    timeout: Duration,
) -> tokio::task::JoinHandle<Result<reqwest::Response, reqwest::Error>> {
    let request = h
        .request(reqwest::Method::POST, &refunds_path(order_id))
        .header("Klarna-Idempotency-Key", key)
        .json(&json!({"refunded_amount": 400}))
        .timeout(timeout);
    tokio::spawn(request.send())
}

/// A fully captured order whose next refund POST is held `millis`, then executed.
fn held_order(h: &Harness, millis: u64) -> klarna_sim::SeededOrder {
    let order = h.captured_order(10_000);
    h.sim().inject_fault(fault(
        Some("POST"),
        &refunds_path(&order.order_id),
        1,
        FaultKind::HoldThenCommit { millis },
    ));
    order
}

/// Waits until the simulator has taken `n` hold-then-commit faults.
async fn holds_taken(h: &Harness, n: u64) {
    wait_until("the hold to start", Duration::from_secs(5), async || {
        let taken = h.sim().injected_faults().get("hold_then_commit").copied();
        Ok::<_, TimedOut>((taken >= Some(n)).then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_then_commit_executes_even_after_the_client_gave_up() {
    let h = start().await;
    let order = held_order(&h, 600);
    let abandoned =
        refund_in_background(&h, &order.order_id, "gave-up", Duration::from_millis(100));
    assert!(abandoned.await.unwrap().is_err(), "the client timed out");
    wait_until("the refund to commit", Duration::from_secs(5), async || {
        let refunded = h.sim().order_json(&order.order_id).unwrap()["refunded_amount"].clone();
        Ok::<_, TimedOut>((refunded == 400).then_some(()))
    })
    .await
    .unwrap();
    let logged = h.sim().requests();
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].fault.as_deref(), Some("hold_then_commit"));
    assert_eq!(logged[0].status, 201);
    // The key remembers it: a resend is its replay.
    let replay = h
        .refund(
            &order.order_id,
            &json!({"refunded_amount": 400}),
            Some("gave-up"),
        )
        .await;
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(h.order(&order.order_id).await["refunded_amount"], 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_while_the_first_runs_gets_409_when_asked_then_the_replay() {
    let h = start().await;
    h.sim().set_conflict_while_running(true);
    let order = held_order(&h, 800);
    let first = refund_in_background(&h, &order.order_id, "busy-key", Duration::from_secs(10));
    holds_taken(&h, 1).await;
    let duplicate = h
        .refund(
            &order.order_id,
            &json!({"refunded_amount": 400}),
            Some("busy-key"),
        )
        .await;
    let error = expect_error(duplicate, StatusCode::CONFLICT, "CONFLICT").await;
    assert!(
        error["error_messages"]
            .to_string()
            .contains("still being processed"),
        "{error}"
    );
    // Another key is not held up.
    let other = h
        .refund(
            &order.order_id,
            &json!({"refunded_amount": 100}),
            Some("other-key"),
        )
        .await;
    assert_eq!(other.status(), StatusCode::CREATED);
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let refund_id = header(&first, "Refund-Id");
    let replay = h
        .refund(
            &order.order_id,
            &json!({"refunded_amount": 400}),
            Some("busy-key"),
        )
        .await;
    assert_eq!(header(&replay, "Refund-Id"), refund_id);
    let order = h.order(&order.order_id).await;
    assert_eq!(order["refunded_amount"], 500);
    assert_eq!(order["refunds"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_409_a_duplicate_during_a_hold_runs_and_the_held_one_replays_it() {
    let h = start().await;
    let order = held_order(&h, 800);
    let first = refund_in_background(&h, &order.order_id, "twice", Duration::from_secs(10));
    holds_taken(&h, 1).await;
    let duplicate = h
        .refund(
            &order.order_id,
            &json!({"refunded_amount": 400}),
            Some("twice"),
        )
        .await;
    assert_eq!(duplicate.status(), StatusCode::CREATED);
    let first = first.await.unwrap().unwrap();
    assert_eq!(header(&first, "Refund-Id"), header(&duplicate, "Refund-Id"));
    assert_eq!(h.order(&order.order_id).await["refunded_amount"], 400);
}

#[tokio::test]
async fn commit_then_drop_closes_the_connection_after_committing() {
    let h = start().await;
    let order = h.captured_order(10_000);
    h.sim().inject_fault(fault(
        Some("POST"),
        &refunds_path(&order.order_id),
        1,
        FaultKind::CommitThenDrop,
    ));
    let body = json!({"refunded_amount": 1200});
    let result = h
        .request(reqwest::Method::POST, &refunds_path(&order.order_id))
        .header("Klarna-Idempotency-Key", "drop-key")
        .json(&body)
        .send()
        .await;
    let error = result.expect_err("the connection is dropped before any answer");
    assert!(!error.is_status(), "{error:?}");

    // The refund was recorded ...
    let order_json = h.order(&order.order_id).await;
    assert_eq!(order_json["refunded_amount"], 1200);
    let recorded_id = order_json["refunds"][0]["refund_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // ... and the retry with the same key gets the committed 201 with the same Refund-Id.
    let retry = h.refund(&order.order_id, &body, Some("drop-key")).await;
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(header(&retry, "Refund-Id"), recorded_id);
    assert_eq!(
        h.order(&order.order_id).await["refunds"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let log = h.sim().requests();
    assert_eq!(log[0].fault.as_deref(), Some("commit_then_drop"));
    assert_eq!(log[0].status, 201);
    assert_eq!(
        log[0].response_header("refund-id"),
        Some(recorded_id.as_str())
    );
    assert!(log[2].replayed);
}

#[tokio::test]
async fn commit_then_drop_forgetting_judges_the_resend_afresh() {
    let h = start().await;
    let order = h.captured_order(10_000);
    h.sim().inject_fault(fault(
        Some("POST"),
        &refunds_path(&order.order_id),
        1,
        FaultKind::CommitThenDropForgetting,
    ));
    let body = json!({"refunded_amount": 6_000});
    let result = h
        .request(reqwest::Method::POST, &refunds_path(&order.order_id))
        .header("Klarna-Idempotency-Key", "forget-key")
        .json(&body)
        .send()
        .await;
    assert!(
        result.is_err(),
        "the connection is dropped before any answer"
    );
    assert_eq!(h.order(&order.order_id).await["refunded_amount"], 6_000);
    // The key was not remembered: the resend is executed again, on what the first left.
    let retry = h.refund(&order.order_id, &body, Some("forget-key")).await;
    assert_eq!(retry.status(), StatusCode::FORBIDDEN);
    let log = h.sim().requests();
    assert_eq!(log[0].fault.as_deref(), Some("commit_then_drop_forgetting"));
    assert!(!log[1].replayed);
    assert_eq!(h.order(&order.order_id).await["refunded_amount"], 6_000);
}

#[tokio::test]
async fn commit_then_drop_sends_no_byte_on_raw_tcp() {
    let h = start().await;
    let order = h.captured_order(10_000);
    let path = refunds_path(&order.order_id);
    h.sim()
        .inject_fault(fault(None, &path, 1, FaultKind::CommitThenDrop));
    let body = r#"{"refunded_amount": 300}"#;
    // "sim-user:sim-password" in base64.
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic c2ltLXVzZXI6c2ltLXBhc3N3b3Jk\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        h.running.addr,
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(h.running.addr)
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    // EOF or a reset both mean "closed"; either way no response byte may arrive.
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received))
        .await
        .expect("connection closed promptly");
    assert!(
        received.is_empty(),
        "got {:?}",
        String::from_utf8_lossy(&received)
    );
    assert_eq!(h.order(&order.order_id).await["refunded_amount"], 300);
}

#[tokio::test]
async fn commit_then_drop_over_http2() {
    let h = start().await;
    let order = h.captured_order(10_000);
    let path = refunds_path(&order.order_id);
    h.sim()
        .inject_fault(fault(None, &path, 1, FaultKind::CommitThenDrop));
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let result = client
        .post(h.url(&path))
        .basic_auth("sim-user", Some("sim-password"))
        .json(&json!({"refunded_amount": 50}))
        .send()
        .await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(h.order(&order.order_id).await["refunded_amount"], 50);
    // A new connection works normally.
    let ok = client
        .get(h.url(&format!("{ORDERS}/{}", order.order_id)))
        .basic_auth("sim-user", Some("sim-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn request_log_records_calls_and_answers() {
    let h = start().await;
    let order = h.captured_order(10_000);
    let body = json!({"refunded_amount": 250, "description": "log me"});
    let created = h.refund(&order.order_id, &body, Some("log-key")).await;
    let refund_id = header(&created, "Refund-Id");
    h.refund(&order.order_id, &body, Some("log-key")).await;
    h.get(&format!("{ORDERS}/{}", order.order_id)).await;
    h.client
        .get(h.url(&format!("{ORDERS}/{}", order.order_id)))
        .send()
        .await
        .unwrap();
    // Admin calls are not logged.
    h.client
        .get(h.url("/__admin/requests"))
        .send()
        .await
        .unwrap();

    let log = h.sim().requests();
    assert_eq!(log.len(), 4);
    let first = &log[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, refunds_path(&order.order_id));
    assert_eq!(first.header("klarna-idempotency-key"), Some("log-key"));
    assert!(first.header("authorization").unwrap().starts_with("Basic "));
    assert_eq!(serde_json::from_str::<Value>(&first.body).unwrap(), body);
    assert_eq!(first.status, 201);
    assert_eq!(first.response_header("Refund-Id"), Some(refund_id.as_str()));
    assert!(
        first
            .response_header("location")
            .unwrap()
            .ends_with(&refund_id)
    );
    assert_eq!(first.response_body, "");
    assert!(!first.replayed);
    assert!(first.fault.is_none());
    assert!(log[1].replayed);
    assert_eq!(log[2].status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&log[2].response_body).unwrap()["refunded_amount"],
        250
    );
    assert_eq!(log[3].status, 401);
    assert!(log[0].at <= log[3].at);

    // The admin view is the same log as JSON.
    let admin: Value = h
        .client
        .get(h.url("/__admin/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(admin.as_array().unwrap().len(), 4);
    assert_eq!(admin[0]["path"], refunds_path(&order.order_id));
    assert_eq!(admin[0]["status"], 201);
    assert!(admin[0]["headers"].is_array());

    h.sim().clear_requests();
    assert!(h.sim().requests().is_empty());
    h.get(&format!("{ORDERS}/{}", order.order_id)).await;
    let deleted = h
        .client
        .delete(h.url("/__admin/requests"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert!(h.sim().requests().is_empty());
}

#[tokio::test]
async fn request_log_capacity_is_a_ring_and_zero_disables_it() {
    let h = start_with(SimConfig {
        request_log_capacity: 2,
        ..SimConfig::default()
    })
    .await;
    let order = h.captured_order(10_000);
    for amount in [1, 2, 3] {
        h.refund_amount(&order.order_id, amount).await;
    }
    let bodies: Vec<String> = h.sim().requests().into_iter().map(|r| r.body).collect();
    assert_eq!(
        bodies,
        [r#"{"refunded_amount":2}"#, r#"{"refunded_amount":3}"#]
    );

    let off = start_with(SimConfig {
        request_log_capacity: 0,
        ..SimConfig::default()
    })
    .await;
    let order = off.captured_order(10_000);
    off.refund_amount(&order.order_id, 1).await;
    assert!(off.sim().requests().is_empty());
}

#[tokio::test]
async fn admin_api_exposes_the_facilities() {
    let h = start().await;
    let admin = |path: &str| h.url(&format!("/__admin/{path}"));

    // Seed an order.
    let seeded: Value = h
        .client
        .post(admin("orders"))
        .json(&json!({
            "order_id": "11111111-2222-4333-8444-555555555555",
            "order_amount": 3000,
            "captures": [3000],
            "capture_ids": ["66666666-7777-4888-9999-000000000000"],
            "purchase_currency": "eur",
            "purchase_country": "fi",
            "payment_method_type": "PAY_LATER_BY_CARD",
            "merchant_reference1": "FI-1"
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        seeded,
        json!({"order_id": "11111111-2222-4333-8444-555555555555", "capture_ids": ["66666666-7777-4888-9999-000000000000"]})
    );
    let order: Value = h
        .client
        .get(admin("orders/11111111-2222-4333-8444-555555555555"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(order["purchase_currency"], "EUR");
    assert_eq!(order["purchase_country"], "FI");
    assert_eq!(order, h.order("11111111-2222-4333-8444-555555555555").await);
    let missing = h
        .client
        .get(admin("orders/5ef9a5b3-6c08-42e1-91a3-065dcae5c5dd"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let inconsistent = h
        .client
        .post(admin("orders"))
        .json(&json!({"order_amount": 100, "captures": [200]}))
        .send()
        .await
        .unwrap();
    expect_error(
        inconsistent,
        StatusCode::UNPROCESSABLE_ENTITY,
        "UNPROCESSABLE_ENTITY",
    )
    .await;
    let malformed = h
        .client
        .post(admin("orders"))
        .body("{")
        .send()
        .await
        .unwrap();
    expect_error(malformed, StatusCode::BAD_REQUEST, "BAD_VALUE").await;

    // Demo orders.
    let demo_ids: Value = h
        .client
        .post(admin("demo"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(demo_ids.as_array().unwrap().len(), 5);
    assert_eq!(demo_ids[0]["order_id"], demo::SE_INVOICE_ORDER_ID);

    // Faults.
    let armed = h
        .client
        .post(admin("faults"))
        .json(
            &json!({"method": "GET", "path": format!("{ORDERS}/*"), "times": 1,
                      "kind": {"type": "status", "status": 504}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(armed.status(), StatusCode::NO_CONTENT);
    let order_path = format!("{ORDERS}/{}", demo::SE_INVOICE_ORDER_ID);
    assert_eq!(
        h.get(&order_path).await.status(),
        StatusCode::GATEWAY_TIMEOUT
    );
    assert_eq!(h.get(&order_path).await.status(), StatusCode::OK);
    h.client
        .post(admin("faults"))
        .json(&json!({"path": order_path, "times": 5, "kind": {"type": "status", "status": 500}}))
        .send()
        .await
        .unwrap();
    let cleared = h.client.delete(admin("faults")).send().await.unwrap();
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    assert_eq!(h.get(&order_path).await.status(), StatusCode::OK);
    let bad_status = h
        .client
        .post(admin("faults"))
        .json(&json!({"path": "/x", "kind": {"type": "status", "status": 1000}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_status.status(), StatusCode::BAD_REQUEST);

    // Clock: a key expires after advancing 24 h + 1 s through the admin API.
    let body = json!({"refunded_amount": 10});
    let first = h
        .refund(demo::SE_INVOICE_ORDER_ID, &body, Some("admin-clock"))
        .await;
    let first_id = header(&first, "Refund-Id");
    let before = h.sim().now();
    let clock: Value = h
        .client
        .post(admin("clock"))
        .json(&json!({"advance_secs": 86_401}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_timestamp(&clock["now"]);
    assert!(h.sim().now() - before >= time::Duration::seconds(86_401));
    let again = h
        .refund(demo::SE_INVOICE_ORDER_ID, &body, Some("admin-clock"))
        .await;
    assert_ne!(header(&again, "Refund-Id"), first_id);

    let unknown = h.client.get(admin("nope")).send().await.unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let wrong_method = h.client.put(admin("faults")).send().await.unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let h = start().await;
    let addr = h.running.addr;
    let order = h.captured_order(1000);
    assert_eq!(
        h.get(&format!("{ORDERS}/{}", order.order_id))
            .await
            .status(),
        StatusCode::OK
    );
    drop(h.client);
    h.running.shutdown().await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
