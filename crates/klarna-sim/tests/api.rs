//! The Klarna Order Management endpoints over real HTTP: auth, refunds, captures, release,
//! due-date extension, return fees, schema validation, limits and the demo orders.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use klarna_sim::{OrderSeed, OrderStatus, SimConfig, demo};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn auth_is_required_on_every_klarna_call() {
    let h = start().await;
    let order = h.captured_order(1000);
    let path = format!("{ORDERS}/{}", order.order_id);

    let missing = h.client.get(h.url(&path)).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);

    let wrong = h
        .client
        .post(h.url(&format!("{path}/refunds")))
        .basic_auth("sim-user", Some("wrong"))
        .json(&json!({"refunded_amount": 100}))
        .send()
        .await
        .unwrap();
    expect_error(wrong, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;

    let other_user = h
        .client
        .get(h.url(&path))
        .basic_auth("someone", Some("sim-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(other_user.status(), StatusCode::UNAUTHORIZED);

    // Nothing was refunded by the rejected call; the right credential works.
    assert_eq!(h.order(&order.order_id).await["refunded_amount"], 0);
}

#[tokio::test]
async fn custom_credentials_are_honoured() {
    let h = start_with(SimConfig {
        username: "merchant_K123".into(),
        password: "s3cret".into(),
        ..SimConfig::default()
    })
    .await;
    let order = h.captured_order(1000);
    let ok = h.get(&format!("{ORDERS}/{}", order.order_id)).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let default_creds = h
        .client
        .get(h.url(&format!("{ORDERS}/{}", order.order_id)))
        .basic_auth("sim-user", Some("sim-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(default_creds.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn order_json_has_klarna_shape() {
    let h = start().await;
    h.sim().seed_demo_orders();
    let order = h.order(demo::SE_INVOICE_ORDER_ID).await;
    assert_eq!(order["order_id"], demo::SE_INVOICE_ORDER_ID);
    assert_eq!(order["status"], "CAPTURED");
    for (field, value) in [
        ("order_amount", 10_000),
        ("original_order_amount", 10_000),
        ("captured_amount", 10_000),
        ("refunded_amount", 0),
        ("remaining_authorized_amount", 0),
    ] {
        assert_eq!(order[field], value, "{field}");
        assert!(order[field].is_i64());
    }
    assert_eq!(order["purchase_currency"], "SEK");
    assert_eq!(order["purchase_country"], "SE");
    assert_eq!(order["merchant_reference1"], "SE-1001");
    assert_eq!(order["klarna_reference"], "K4MADNY");
    assert_eq!(order["initial_payment_method"]["type"], "INVOICE");
    assert!(order["initial_payment_method"]["description"].is_string());
    assert_timestamp(&order["created_at"]);
    assert_timestamp(&order["expires_at"]);
    assert_eq!(order["order_lines"].as_array().unwrap().len(), 2);
    assert_eq!(order["order_lines"][0]["type"], "physical");
    assert_eq!(order["refunds"], json!([]));
    let capture = &order["captures"][0];
    assert_eq!(capture["capture_id"], demo::SE_INVOICE_CAPTURE_ID);
    assert_eq!(capture["klarna_reference"], "K4MADNY-1");
    assert_eq!(capture["captured_amount"], 10_000);
    assert_eq!(capture["refunded_amount"], 0);
    assert_eq!(capture["description"], "");
    assert!(capture["order_lines"].is_array());
    assert_timestamp(&capture["captured_at"]);
    // The library view is the same document.
    assert_eq!(
        h.sim().order_json(demo::SE_INVOICE_ORDER_ID).unwrap(),
        order
    );
}

#[tokio::test]
async fn refund_is_created_readable_and_totals_grow() {
    let h = start().await;
    let order = h.captured_order(10_000);
    let body = json!({
        "refunded_amount": 2500,
        "description": "Returned one item",
        "reference": "RMA-77",
        "order_lines": [{"type": "physical", "name": "Shirt", "quantity": 1, "unit_price": 2500, "total_amount": 2500}],
        "some_future_field": {"ignored": true}
    });
    let response = h.refund(&order.order_id, &body, None).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let refund_id = header(&response, "Refund-Id");
    let location = header(&response, "Location");
    assert_eq!(
        location,
        h.url(&format!("{ORDERS}/{}/refunds/{refund_id}", order.order_id))
    );
    assert!(
        response.bytes().await.unwrap().is_empty(),
        "201 has an empty body"
    );

    let refund = h.get_json(&location.replace(&h.running.base_url, "")).await;
    assert_eq!(refund["refund_id"], refund_id);
    assert_eq!(refund["refunded_amount"], 2500);
    assert_eq!(refund["description"], "Returned one item");
    assert_eq!(refund["reference"], "RMA-77");
    assert_eq!(refund["order_lines"][0]["name"], "Shirt");
    assert_timestamp(&refund["refunded_at"]);

    let order_json = h.order(&order.order_id).await;
    assert_eq!(order_json["refunded_amount"], 2500);
    assert_eq!(order_json["refunds"].as_array().unwrap().len(), 1);
    assert_eq!(order_json["refunds"][0], refund);
    assert_eq!(order_json["captures"][0]["refunded_amount"], 2500);

    let second = h.refund_amount(&order.order_id, 1000).await;
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_ne!(header(&second, "Refund-Id"), refund_id);
    let order_json = h.order(&order.order_id).await;
    assert_eq!(order_json["refunded_amount"], 3500);
    assert_eq!(order_json["refunds"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn refunds_are_allocated_to_captures_in_order() {
    let h = start().await;
    h.sim().seed_demo_orders();
    let id = demo::NO_TWO_CAPTURES_ORDER_ID;
    assert_eq!(
        h.refund_amount(id, 35_000).await.status(),
        StatusCode::CREATED
    );
    let first = h
        .get_json(&format!(
            "{ORDERS}/{id}/captures/{}",
            demo::NO_FIRST_CAPTURE_ID
        ))
        .await;
    let second = h
        .get_json(&format!(
            "{ORDERS}/{id}/captures/{}",
            demo::NO_SECOND_CAPTURE_ID
        ))
        .await;
    assert_eq!(first["refunded_amount"], 30_000);
    assert_eq!(second["refunded_amount"], 5_000);
    assert_eq!(
        h.refund_amount(id, 15_000).await.status(),
        StatusCode::CREATED
    );
    let order = h.order(id).await;
    assert_eq!(order["refunded_amount"], 50_000);
    assert_eq!(order["captures"][1]["refunded_amount"], 20_000);
}

#[tokio::test]
async fn refund_refusals() {
    let h = start().await;
    h.sim().seed_demo_orders();

    let no_captures = h.refund_amount(demo::US_AUTHORIZED_ORDER_ID, 100).await;
    expect_error_message(
        no_captures,
        StatusCode::FORBIDDEN,
        "REFUND_NOT_ALLOWED",
        "Order has no captures. Refund not possible",
    )
    .await;

    let id = demo::SE_INVOICE_ORDER_ID;
    let over = h.refund_amount(id, 10_001).await;
    let first = expect_error_message(
        over,
        StatusCode::FORBIDDEN,
        "REFUND_NOT_ALLOWED",
        "Over refund is not allowed. Refund not possible.",
    )
    .await;
    assert_eq!(h.order(id).await["refunds"], json!([]), "nothing recorded");

    assert_eq!(
        h.refund_amount(id, 6000).await.status(),
        StatusCode::CREATED
    );
    let over_rest = h.refund_amount(id, 4001).await;
    let second = expect_error(over_rest, StatusCode::FORBIDDEN, "REFUND_NOT_ALLOWED").await;
    assert_ne!(
        first["correlation_id"], second["correlation_id"],
        "fresh correlation ids"
    );
    assert_eq!(
        h.refund_amount(id, 4000).await.status(),
        StatusCode::CREATED
    );
    let order = h.order(id).await;
    assert_eq!(order["refunded_amount"], 10_000);
    assert_eq!(order["refunds"].as_array().unwrap().len(), 2);

    for status in [
        OrderStatus::Cancelled,
        OrderStatus::Expired,
        OrderStatus::Closed,
    ] {
        let seeded = h.sim().seed_order(OrderSeed {
            status: Some(status),
            order_amount: 1000,
            captures: vec![1000],
            ..Default::default()
        });
        let response = h.refund_amount(&seeded.order_id, 100).await;
        expect_error(response, StatusCode::FORBIDDEN, "REFUND_NOT_ALLOWED").await;
        assert_eq!(h.order(&seeded.order_id).await["status"], status.as_str());
    }
}

#[tokio::test]
async fn not_found_and_invalid_ids() {
    let h = start().await;
    let order = h.captured_order(1000);
    let unknown = "5ef9a5b3-6c08-42e1-91a3-065dcae5c5dd";

    expect_error_message(
        h.get(&format!("{ORDERS}/{unknown}")).await,
        StatusCode::NOT_FOUND,
        "NO_SUCH_ORDER",
        &format!("Order {unknown} cannot be found"),
    )
    .await;
    expect_error(
        h.refund_amount(unknown, 100).await,
        StatusCode::NOT_FOUND,
        "NO_SUCH_ORDER",
    )
    .await;
    expect_error(
        h.get(&format!("{ORDERS}/{}/captures/{unknown}", order.order_id))
            .await,
        StatusCode::NOT_FOUND,
        "NO_SUCH_CAPTURE",
    )
    .await;
    let refund_id = "ec2119a1-cbb9-40a3-8fb8-ad7b7c109c87";
    expect_error_message(
        h.get(&format!("{ORDERS}/{}/refunds/{refund_id}", order.order_id))
            .await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        &format!(
            "Refund {refund_id} cannot be found for order {}",
            order.order_id
        ),
    )
    .await;
    for bad in ["not-a-uuid", "7849fd84-47dc-4919-a7ce-xxxxxxxxxx"] {
        expect_error_message(
            h.get(&format!("{ORDERS}/{bad}")).await,
            StatusCode::BAD_REQUEST,
            "INVALID_ORDER_ID",
            "Order ID must be a valid UUID.",
        )
        .await;
        expect_error(
            h.refund_amount(bad, 1).await,
            StatusCode::BAD_REQUEST,
            "INVALID_ORDER_ID",
        )
        .await;
    }
    expect_error(
        h.get(&format!("{ORDERS}/{}/bogus", order.order_id)).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;
    expect_error(
        h.request(Method::DELETE, &format!("{ORDERS}/{}", order.order_id))
            .send()
            .await
            .unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
    )
    .await;
}

#[tokio::test]
async fn schema_violations_are_422() {
    let h = start().await;
    let order = h.captured_order(10_000);
    let line = |extra: Value| {
        let mut base = json!({"type": "physical", "name": "Shirt", "quantity": 1, "unit_price": 100, "total_amount": 100});
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    };
    let with_line = |l: Value| json!({"refunded_amount": 100, "order_lines": [l]});
    let long = |n: usize| "x".repeat(n);
    let cases: Vec<(&str, Value)> = vec![
        ("float amount", json!({"refunded_amount": 100.5})),
        (
            "float with zero fraction",
            json!({"refunded_amount": 100.0}),
        ),
        ("exponent amount", json!({"refunded_amount": 1e2})),
        ("string amount", json!({"refunded_amount": "100"})),
        ("missing amount", json!({"description": "x"})),
        ("negative amount", json!({"refunded_amount": -1})),
        ("too large amount", json!({"refunded_amount": 200_000_001})),
        (
            "long description",
            json!({"refunded_amount": 100, "description": long(256)}),
        ),
        (
            "long reference",
            json!({"refunded_amount": 100, "reference": long(256)}),
        ),
        (
            "unknown line type",
            with_line(line(json!({"type": "bogus"}))),
        ),
        (
            "missing name",
            with_line(json!({"quantity": 1, "unit_price": 100, "total_amount": 100})),
        ),
        ("long name", with_line(line(json!({"name": long(256)})))),
        (
            "negative quantity",
            with_line(line(json!({"quantity": -1, "total_amount": -100}))),
        ),
        (
            "long quantity_unit",
            with_line(line(json!({"quantity_unit": long(11)}))),
        ),
        (
            "long line reference",
            with_line(line(json!({"reference": long(256)}))),
        ),
        (
            "long merchant_data",
            with_line(line(json!({"merchant_data": long(1025)}))),
        ),
        (
            "long product_url",
            with_line(line(json!({"product_url": long(1025)}))),
        ),
        (
            "long image_url",
            with_line(line(json!({"image_url": long(1025)}))),
        ),
        (
            "float unit_price",
            with_line(line(json!({"unit_price": 100.0}))),
        ),
        (
            "total mismatch",
            with_line(line(json!({"total_amount": 99}))),
        ),
        (
            "total with discount mismatch",
            with_line(line(
                json!({"quantity": 2, "total_discount_amount": 50, "total_amount": 200}),
            )),
        ),
        ("string quantity", with_line(line(json!({"quantity": "1"})))),
        (
            "too many lines",
            json!({"refunded_amount": 100, "order_lines": vec![line(json!({})); 1001]}),
        ),
    ];
    for (name, body) in cases {
        let response = h.refund(&order.order_id, &body, None).await;
        let error = expect_error(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "UNPROCESSABLE_ENTITY",
        )
        .await;
        eprintln!("{name}: {}", error["error_messages"]);
    }
    for raw in ["{not json", "", "[1,2]", r#"{"refunded_amount": 1} {}"#] {
        let response = h
            .post_raw(
                &format!("{ORDERS}/{}/refunds", order.order_id),
                raw.to_owned(),
                None,
            )
            .await;
        expect_error(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "UNPROCESSABLE_ENTITY",
        )
        .await;
    }
    // Limits are inclusive: these are fine.
    let ok = json!({
        "refunded_amount": 200,
        "description": long(255),
        "reference": long(255),
        "order_lines": [line(json!({"name": long(255), "quantity": 2, "total_discount_amount": 0, "total_amount": 200, "quantity_unit": long(10), "merchant_data": long(1024)}))]
    });
    assert_eq!(
        h.refund(&order.order_id, &ok, None).await.status(),
        StatusCode::CREATED
    );
    let thousand = json!({"refunded_amount": 100, "order_lines": vec![line(json!({})); 1000]});
    assert_eq!(
        h.refund(&order.order_id, &thousand, None).await.status(),
        StatusCode::CREATED
    );
    let order_json = h.order(&order.order_id).await;
    assert_eq!(
        order_json["refunded_amount"], 300,
        "no rejected refund was recorded"
    );
}

#[tokio::test]
async fn body_over_one_megabyte_is_413() {
    let h = start().await;
    let order = h.captured_order(10_000);
    let big = format!(
        r#"{{"refunded_amount": 100, "description": "{}"}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let response = h
        .post_raw(
            &format!("{ORDERS}/{}/refunds", order.order_id),
            big,
            Some("big-key"),
        )
        .await;
    expect_error(response, StatusCode::PAYLOAD_TOO_LARGE, "REQUEST_TOO_LARGE").await;
    // The 413 is not remembered: the key still executes.
    let retry = h
        .refund(
            &order.order_id,
            &json!({"refunded_amount": 100}),
            Some("big-key"),
        )
        .await;
    assert_eq!(retry.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn rate_limit_gives_429_only_when_configured() {
    let unlimited = start().await;
    let order = unlimited.captured_order(1000);
    for _ in 0..30 {
        let response = unlimited.get(&format!("{ORDERS}/{}", order.order_id)).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    let h = start_with(SimConfig {
        rate_limit_per_second: Some(1),
        ..SimConfig::default()
    })
    .await;
    let order = h.captured_order(1000);
    let mut limited = None;
    for _ in 0..10 {
        let response = h.get(&format!("{ORDERS}/{}", order.order_id)).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("a 429 within 10 quick calls at 1/s");
    assert_eq!(header(&limited, "Retry-After"), "1");
    expect_error(limited, StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS").await;

    // A keyed call refused with 429 is not remembered: once the bucket refills, it executes.
    let refused = h
        .refund(
            &order.order_id,
            &json!({"refunded_amount": 10}),
            Some("rl-key"),
        )
        .await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // The bucket refills on the real monotonic clock, which the simulator's settable clock
    // does not drive: retry until the call is admitted. Every refusal until then is forgotten
    // the same way, and the call that is admitted executes once.
    let executed = wait_until(
        "the rate limiter to admit the keyed call",
        std::time::Duration::from_secs(10),
        async || {
            let response = h
                .refund(
                    &order.order_id,
                    &json!({"refunded_amount": 10}),
                    Some("rl-key"),
                )
                .await;
            Ok::<_, TimedOut>(
                (response.status() != StatusCode::TOO_MANY_REQUESTS).then_some(response),
            )
        },
    )
    .await
    .unwrap();
    assert_eq!(executed.status(), StatusCode::CREATED);
    assert_eq!(
        h.sim().order_json(&order.order_id).unwrap()["refunded_amount"],
        10
    );
}

#[tokio::test]
async fn captures_can_be_created_and_read() {
    let h = start().await;
    let seeded = h.sim().seed_order(OrderSeed {
        order_amount: 10_000,
        payment_method_type: Some("PAY_LATER_IN_PARTS".into()),
        ..Default::default()
    });
    let id = &seeded.order_id;
    assert_eq!(h.order(id).await["status"], "AUTHORIZED");
    let path = format!("{ORDERS}/{id}/captures");
    let response = h
        .post(
            &path,
            &json!({"captured_amount": 4000, "description": "First parcel"}),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let capture_id = header(&response, "Capture-Id");
    assert_eq!(
        header(&response, "Location"),
        h.url(&format!("{path}/{capture_id}"))
    );
    let capture = h.get_json(&format!("{path}/{capture_id}")).await;
    assert_eq!(capture["captured_amount"], 4000);
    assert_eq!(capture["description"], "First parcel");
    let order = h.order(id).await;
    assert_eq!(order["status"], "PART_CAPTURED");
    assert_eq!(order["captured_amount"], 4000);
    assert_eq!(order["remaining_authorized_amount"], 6000);

    let too_much = h.post(&path, &json!({"captured_amount": 6001}), None).await;
    expect_error(too_much, StatusCode::FORBIDDEN, "CAPTURE_NOT_ALLOWED").await;
    let float = h.post(&path, &json!({"captured_amount": 10.0}), None).await;
    expect_error(
        float,
        StatusCode::UNPROCESSABLE_ENTITY,
        "UNPROCESSABLE_ENTITY",
    )
    .await;
    assert_eq!(
        h.post(&path, &json!({"captured_amount": 6000}), None)
            .await
            .status(),
        StatusCode::CREATED
    );
    let order = h.order(id).await;
    assert_eq!(order["status"], "CAPTURED");
    assert_eq!(
        order["captures"][1]["klarna_reference"],
        format!("{}-2", order["klarna_reference"].as_str().unwrap())
    );
}

#[tokio::test]
async fn release_remaining_authorization_rules() {
    let h = start().await;
    h.sim().seed_demo_orders();
    let release = |id: &str| format!("{ORDERS}/{id}/release-remaining-authorization");
    let post = |id: &str| h.request(Method::POST, &release(id)).send();

    let part = demo::DE_PART_CAPTURED_ORDER_ID;
    assert_eq!(h.order(part).await["remaining_authorized_amount"], 15_000);
    let ok = post(part).await.unwrap();
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    let order = h.order(part).await;
    assert_eq!(order["remaining_authorized_amount"], 0);
    assert_eq!(order["status"], "CAPTURED");
    assert_eq!(order["captured_amount"], 5000);
    expect_error(
        post(part).await.unwrap(),
        StatusCode::FORBIDDEN,
        "NOT_ALLOWED",
    )
    .await;

    expect_error_message(
        post(demo::SE_INVOICE_ORDER_ID).await.unwrap(),
        StatusCode::FORBIDDEN,
        "NOT_ALLOWED",
        "Order is fully captured. Remaining authorization cannot be released.",
    )
    .await;
    expect_error(
        post(demo::US_AUTHORIZED_ORDER_ID).await.unwrap(),
        StatusCode::FORBIDDEN,
        "NOT_ALLOWED",
    )
    .await;
    let cancelled = h.sim().seed_order(OrderSeed {
        status: Some(OrderStatus::Cancelled),
        order_amount: 1000,
        captures: vec![500],
        ..Default::default()
    });
    expect_error(
        post(&cancelled.order_id).await.unwrap(),
        StatusCode::FORBIDDEN,
        "NOT_ALLOWED",
    )
    .await;
    // After a release nothing more can be captured.
    let capture = h
        .post(
            &format!("{ORDERS}/{part}/captures"),
            &json!({"captured_amount": 1}),
            None,
        )
        .await;
    expect_error(capture, StatusCode::FORBIDDEN, "CAPTURE_NOT_ALLOWED").await;
}

#[tokio::test]
async fn extend_due_date_for_pay_later_captures_only() {
    let h = start().await;
    h.sim().seed_demo_orders();
    let se = format!(
        "{ORDERS}/{}/captures/{}",
        demo::SE_INVOICE_ORDER_ID,
        demo::SE_INVOICE_CAPTURE_ID
    );
    let options = h.get_json(&format!("{se}/extend-due-date-options")).await;
    assert_eq!(options["currency"].as_str().unwrap().to_uppercase(), "SEK");
    let offered = options["options"].as_array().unwrap();
    let days: Vec<i64> = offered
        .iter()
        .map(|o| o["number_of_days"].as_i64().unwrap())
        .collect();
    assert_eq!(days, [7, 14, 30]);
    assert!(
        offered
            .iter()
            .all(|o| o["amount"].is_i64() && o["amount"].as_i64().unwrap() > 0)
    );
    let fee_14 = offered[1]["amount"].clone();

    let not_offered = h
        .patch(
            &format!("{se}/extend-due-date"),
            &json!({"number_of_days": 10}),
            None,
        )
        .await;
    expect_error(not_offered, StatusCode::FORBIDDEN, "NOT_ALLOWED").await;
    let missing = h
        .patch(&format!("{se}/extend-due-date"), &json!({}), None)
        .await;
    expect_error(
        missing,
        StatusCode::UNPROCESSABLE_ENTITY,
        "UNPROCESSABLE_ENTITY",
    )
    .await;

    let ok = h
        .patch(
            &format!("{se}/extend-due-date"),
            &json!({"number_of_days": 14}),
            None,
        )
        .await;
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    let capture = h.get_json(&se).await;
    assert_eq!(capture["due_date_extension"]["number_of_days"], 14);
    assert_eq!(capture["due_date_extension"]["fee"], fee_14);
    let again = h
        .patch(
            &format!("{se}/extend-due-date"),
            &json!({"number_of_days": 7}),
            None,
        )
        .await;
    expect_error(again, StatusCode::FORBIDDEN, "NOT_ALLOWED").await;

    // Part-captured pay-in-parts order: offered too, in its currency.
    let de = h
        .get_json(&format!(
            "{ORDERS}/{}/captures/{}/extend-due-date-options",
            demo::DE_PART_CAPTURED_ORDER_ID,
            demo::DE_PART_CAPTURED_CAPTURE_ID
        ))
        .await;
    assert_eq!(de["currency"].as_str().unwrap().to_uppercase(), "EUR");

    // Card order: not offered, and PATCH refused.
    let gb = format!(
        "{ORDERS}/{}/captures/{}",
        demo::GB_CARD_ORDER_ID,
        demo::GB_CARD_CAPTURE_ID
    );
    expect_error(
        h.get(&format!("{gb}/extend-due-date-options")).await,
        StatusCode::FORBIDDEN,
        "NOT_ALLOWED",
    )
    .await;
    expect_error(
        h.patch(
            &format!("{gb}/extend-due-date"),
            &json!({"number_of_days": 14}),
            None,
        )
        .await,
        StatusCode::FORBIDDEN,
        "NOT_ALLOWED",
    )
    .await;
    // Unknown capture.
    expect_error(
        h.get(&format!(
            "{ORDERS}/{}/captures/d25fb1a0-a6d9-4a65-8dac-cd7fb3a8dd24/extend-due-date-options",
            demo::SE_INVOICE_ORDER_ID
        ))
        .await,
        StatusCode::NOT_FOUND,
        "NO_SUCH_CAPTURE",
    )
    .await;
}

fn return_fee_refund(refunded: i64, item: i64, fee: i64) -> Value {
    json!({
        "refunded_amount": refunded,
        "order_lines": [
            {"type": "physical", "name": "T-Shirt", "quantity": 1, "unit_price": item, "total_amount": item},
            {"type": "return_fee", "name": "Return fee", "quantity": 1, "unit_price": fee, "total_amount": fee}
        ]
    })
}

#[tokio::test]
async fn return_fee_rules() {
    let h = start().await;
    h.sim().seed_demo_orders();
    let se = demo::SE_INVOICE_ORDER_ID;

    let positive = h
        .refund(se, &return_fee_refund(10_500, 10_000, 500), None)
        .await;
    let body = expect_error(positive, StatusCode::FORBIDDEN, "REFUND_NOT_ALLOWED").await;
    assert!(
        body["error_messages"][0]
            .as_str()
            .unwrap()
            .contains("negative")
    );

    let wrong_sum = h
        .refund(se, &return_fee_refund(9_000, 10_000, -500), None)
        .await;
    let body = expect_error(wrong_sum, StatusCode::FORBIDDEN, "REFUND_NOT_ALLOWED").await;
    assert!(body["error_messages"][0].as_str().unwrap().contains("sum"));

    let gb = h
        .refund(
            demo::GB_CARD_ORDER_ID,
            &return_fee_refund(4_500, 5_000, -500),
            None,
        )
        .await;
    let body = expect_error(gb, StatusCode::FORBIDDEN, "REFUND_NOT_ALLOWED").await;
    assert!(body["error_messages"][0].as_str().unwrap().contains("GB"));

    let two_captures = h
        .refund(
            demo::NO_TWO_CAPTURES_ORDER_ID,
            &return_fee_refund(9_500, 10_000, -500),
            None,
        )
        .await;
    let body = expect_error(two_captures, StatusCode::FORBIDDEN, "REFUND_NOT_ALLOWED").await;
    assert!(
        body["error_messages"][0]
            .as_str()
            .unwrap()
            .contains("single capture")
    );

    let part_captured = h
        .refund(
            demo::DE_PART_CAPTURED_ORDER_ID,
            &return_fee_refund(4_500, 5_000, -500),
            None,
        )
        .await;
    expect_error(part_captured, StatusCode::FORBIDDEN, "REFUND_NOT_ALLOWED").await;

    // Nothing recorded so far.
    for id in demo::ORDER_IDS {
        assert_eq!(h.order(id).await["refunded_amount"], 0, "{id}");
    }

    // The documented example: 10 000 returned, 500 kept as a fee.
    let ok = h
        .refund(se, &return_fee_refund(9_500, 10_000, -500), None)
        .await;
    assert_eq!(ok.status(), StatusCode::CREATED);
    let refund_id = header(&ok, "Refund-Id");
    let refund = h
        .get_json(&format!("{ORDERS}/{se}/refunds/{refund_id}"))
        .await;
    assert_eq!(refund["order_lines"][1]["type"], "return_fee");
    assert_eq!(refund["order_lines"][1]["total_amount"], -500);
    assert_eq!(h.order(se).await["refunded_amount"], 9_500);
    // Giving the fee back later is a plain refund of its amount.
    assert_eq!(h.refund_amount(se, 500).await.status(), StatusCode::CREATED);
    assert_eq!(h.order(se).await["refunded_amount"], 10_000);
}

#[tokio::test]
async fn demo_orders_have_fixed_ids_and_states() {
    let h = start().await;
    let seeded = h.sim().seed_demo_orders();
    let ids: Vec<&str> = seeded.iter().map(|s| s.order_id.as_str()).collect();
    assert_eq!(ids, demo::ORDER_IDS);
    let expected = [
        (
            demo::SE_INVOICE_ORDER_ID,
            "CAPTURED",
            "SEK",
            "SE",
            "INVOICE",
            10_000,
            10_000,
        ),
        (
            demo::DE_PART_CAPTURED_ORDER_ID,
            "PART_CAPTURED",
            "EUR",
            "DE",
            "PAY_LATER_IN_PARTS",
            20_000,
            5_000,
        ),
        (
            demo::US_AUTHORIZED_ORDER_ID,
            "AUTHORIZED",
            "USD",
            "US",
            "CARD",
            15_000,
            0,
        ),
        (
            demo::GB_CARD_ORDER_ID,
            "CAPTURED",
            "GBP",
            "GB",
            "CARD",
            5_000,
            5_000,
        ),
        (
            demo::NO_TWO_CAPTURES_ORDER_ID,
            "CAPTURED",
            "NOK",
            "NO",
            "INVOICE",
            50_000,
            50_000,
        ),
    ];
    for (id, status, currency, country, method, amount, captured) in expected {
        let order = h.order(id).await;
        assert_eq!(order["status"], status, "{id}");
        assert_eq!(order["purchase_currency"], currency);
        assert_eq!(order["purchase_country"], country);
        assert_eq!(order["initial_payment_method"]["type"], method);
        assert_eq!(order["order_amount"], amount);
        assert_eq!(order["captured_amount"], captured);
        assert!(order["merchant_reference1"].is_string());
        assert!(order["klarna_reference"].is_string());
        assert!(order["order_lines"].as_array().unwrap().len() >= 2);
        let lines: i64 = order["order_lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["total_amount"].as_i64().unwrap())
            .sum();
        assert_eq!(lines, amount);
    }
    assert_eq!(
        seeded[4].capture_ids,
        [demo::NO_FIRST_CAPTURE_ID, demo::NO_SECOND_CAPTURE_ID]
    );
    // Seeding again resets them.
    assert_eq!(
        h.refund_amount(demo::SE_INVOICE_ORDER_ID, 100)
            .await
            .status(),
        StatusCode::CREATED
    );
    h.sim().seed_demo_orders();
    assert_eq!(
        h.order(demo::SE_INVOICE_ORDER_ID).await["refunded_amount"],
        0
    );
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let h = start().await;
    let order = h.captured_order(1000);
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = client
        .post(h.url(&format!("{ORDERS}/{}/refunds", order.order_id)))
        .basic_auth("sim-user", Some("sim-password"))
        .json(&json!({"refunded_amount": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = header(&response, "Location");
    assert!(location.starts_with(&h.running.base_url), "{location}");
}
