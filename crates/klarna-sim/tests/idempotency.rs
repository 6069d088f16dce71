//! `Klarna-Idempotency-Key`: executed once, identical replay whatever the body, concurrent
//! duplicates, the 24 h window on the simulator clock, and what is not remembered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use klarna_sim::demo;
use reqwest::{Response, StatusCode};
use serde_json::json;

/// Status, headers (without the transport's `date`) and body of a response.
async fn snapshot(response: Response) -> (StatusCode, Vec<(String, String)>, Vec<u8>) {
    let status = response.status();
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str() != "date")
        .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    let body = response.bytes().await.unwrap().to_vec();
    (status, headers, body)
}

#[tokio::test]
async fn replay_is_identical_whatever_the_body_says() {
    let h = start().await;
    let order = h.captured_order(10_000);
    let first = h
        .refund(
            &order.order_id,
            &json!({"refunded_amount": 1000}),
            Some("key-1"),
        )
        .await;
    let first_id = header(&first, "Refund-Id");
    let first = snapshot(first).await;
    assert_eq!(first.0, StatusCode::CREATED);

    // Same key, a body that would be an over refund, and one that would be a 422.
    for body in [
        json!({"refunded_amount": 999_999}),
        json!({"refunded_amount": 1.5}),
    ] {
        let replay = h.refund(&order.order_id, &body, Some("key-1")).await;
        assert_eq!(header(&replay, "Refund-Id"), first_id);
        assert_eq!(snapshot(replay).await, first);
    }
    let order_json = h.order(&order.order_id).await;
    assert_eq!(
        order_json["refunds"].as_array().unwrap().len(),
        1,
        "executed once"
    );
    assert_eq!(order_json["refunded_amount"], 1000);

    // Only the key matters, not the endpoint.
    let elsewhere = h
        .post(
            &format!(
                "{ORDERS}/{}/release-remaining-authorization",
                order.order_id
            ),
            &json!({}),
            Some("key-1"),
        )
        .await;
    assert_eq!(snapshot(elsewhere).await, first);

    // Without a key every call executes.
    for _ in 0..2 {
        assert_eq!(
            h.refund_amount(&order.order_id, 100).await.status(),
            StatusCode::CREATED
        );
    }
    assert_eq!(
        h.order(&order.order_id).await["refunds"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn client_errors_are_remembered_byte_for_byte() {
    let h = start().await;
    let order = h.captured_order(1000);
    let over = h
        .refund(
            &order.order_id,
            &json!({"refunded_amount": 5000}),
            Some("over"),
        )
        .await;
    let over = snapshot(over).await;
    assert_eq!(over.0, StatusCode::FORBIDDEN);
    // A now valid body still gets the stored 403, same correlation id included.
    let replay = h
        .refund(
            &order.order_id,
            &json!({"refunded_amount": 100}),
            Some("over"),
        )
        .await;
    assert_eq!(snapshot(replay).await, over);

    let invalid = h
        .refund(
            &order.order_id,
            &json!({"refunded_amount": "100"}),
            Some("invalid"),
        )
        .await;
    let invalid = snapshot(invalid).await;
    assert_eq!(invalid.0, StatusCode::UNPROCESSABLE_ENTITY);
    let replay = h
        .refund(
            &order.order_id,
            &json!({"refunded_amount": 100}),
            Some("invalid"),
        )
        .await;
    assert_eq!(snapshot(replay).await, invalid);
    assert_eq!(h.order(&order.order_id).await["refunded_amount"], 0);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_execute_once() {
    let h = start().await;
    let order = h.captured_order(100_000);
    let calls = (0..8).map(|i| {
        let (h, order_id) = (&h, &order.order_id);
        async move {
            h.refund(
                order_id,
                &json!({"refunded_amount": 1000 + i}),
                Some("parallel-key"),
            )
            .await
        }
    });
    let responses = futures::future::join_all(calls).await;
    let mut ids = Vec::new();
    for response in responses {
        assert_eq!(response.status(), StatusCode::CREATED);
        ids.push(header(&response, "Refund-Id"));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one Refund-Id for all: {ids:?}");
    let order_json = h.order(&order.order_id).await;
    assert_eq!(order_json["refunds"].as_array().unwrap().len(), 1);
    assert_eq!(order_json["refunds"][0]["refund_id"], ids[0]);

    // Many keys at once: each executes exactly once.
    let calls = (0..32).map(|i| {
        let key = format!("k-{}", i % 8);
        let order_id = order.order_id.clone();
        let h = &h;
        async move {
            h.refund(&order_id, &json!({"refunded_amount": 10}), Some(&key))
                .await
        }
    });
    for response in futures::future::join_all(calls).await {
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    assert_eq!(
        h.order(&order.order_id).await["refunds"]
            .as_array()
            .unwrap()
            .len(),
        9
    );
}

#[tokio::test]
async fn keys_expire_after_24_hours_of_simulator_time() {
    let h = start().await;
    let order = h.captured_order(10_000);
    let body = json!({"refunded_amount": 100});
    let first = h.refund(&order.order_id, &body, Some("day-key")).await;
    let first_id = header(&first, "Refund-Id");

    h.sim().advance_clock(Duration::from_secs(24 * 3600 - 60));
    let still = h.refund(&order.order_id, &body, Some("day-key")).await;
    assert_eq!(header(&still, "Refund-Id"), first_id);

    h.sim().advance_clock(Duration::from_secs(61));
    let later = h.refund(&order.order_id, &body, Some("day-key")).await;
    assert_eq!(later.status(), StatusCode::CREATED);
    let second_id = header(&later, "Refund-Id");
    assert_ne!(second_id, first_id, "executed again after 24 h");
    // And that new execution is remembered from now on.
    let replay = h.refund(&order.order_id, &body, Some("day-key")).await;
    assert_eq!(header(&replay, "Refund-Id"), second_id);
    assert_eq!(h.order(&order.order_id).await["refunded_amount"], 200);
}

#[tokio::test]
async fn key_length_is_checked() {
    let h = start().await;
    let order = h.captured_order(10_000);
    let body = json!({"refunded_amount": 100});
    for bad in [String::new(), "k".repeat(256)] {
        let response = h.refund(&order.order_id, &body, Some(&bad)).await;
        expect_error(response, StatusCode::BAD_REQUEST, "BAD_VALUE").await;
    }
    let longest = h
        .refund(&order.order_id, &body, Some(&"k".repeat(255)))
        .await;
    assert_eq!(longest.status(), StatusCode::CREATED);
    assert_eq!(h.order(&order.order_id).await["refunded_amount"], 100);
}

#[tokio::test]
async fn unauthorized_calls_are_not_remembered() {
    let h = start().await;
    let order = h.captured_order(10_000);
    let wrong = h
        .client
        .post(h.url(&format!("{ORDERS}/{}/refunds", order.order_id)))
        .basic_auth("sim-user", Some("nope"))
        .header("Klarna-Idempotency-Key", "auth-key")
        .json(&json!({"refunded_amount": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = h
        .refund(
            &order.order_id,
            &json!({"refunded_amount": 100}),
            Some("auth-key"),
        )
        .await;
    assert_eq!(right.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn patch_and_release_are_idempotent_too() {
    let h = start().await;
    h.sim().seed_demo_orders();
    let extend = format!(
        "{ORDERS}/{}/captures/{}/extend-due-date",
        demo::SE_INVOICE_ORDER_ID,
        demo::SE_INVOICE_CAPTURE_ID
    );
    for days in [14, 30] {
        // The second PATCH is a replay: 204, not "already extended".
        let response = h
            .patch(&extend, &json!({"number_of_days": days}), Some("ext"))
            .await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }
    let capture = h
        .get_json(&format!(
            "{ORDERS}/{}/captures/{}",
            demo::SE_INVOICE_ORDER_ID,
            demo::SE_INVOICE_CAPTURE_ID
        ))
        .await;
    assert_eq!(capture["due_date_extension"]["number_of_days"], 14);

    let release = format!(
        "{ORDERS}/{}/release-remaining-authorization",
        demo::DE_PART_CAPTURED_ORDER_ID
    );
    for _ in 0..2 {
        let response = h.post_raw(&release, "", Some("rel")).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }
}
