//! RefundOrder end to end: success, idempotent resend, validation, state rules, validate_only.

use klarna_sim::demo;
use refund_gateway_proto::v1 as pb;
use refund_gateway_tests::spawn_app;
use tonic::Code;
use tonic_types::StatusExt;

use crate::{
    assert_reason, bad_fields, captured_order, klarna_calls, line, refund_request, return_fee,
};

#[tokio::test]
async fn refund_reaches_klarna_and_reads_back() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    let order = captured_order(&app.sim.sim, 10_000);
    let mut req = refund_request("refund-1", &order.order_id, 2_500);
    req.description = "Returned a shirt".into();
    req.reference = "RMA-42".into();
    req.currency = "sek".into();
    req.order_lines = vec![line("Shirt", 1, 2_500)];
    let resp = app.client.refund_order(req).await?.into_inner();
    assert!(!resp.refund_id.is_empty());
    assert_eq!(resp.refunded_amount, 2_500);
    assert_eq!(resp.reference, "RMA-42");
    assert!(!resp.validate_only);

    let post = klarna_calls(&app.sim.sim)
        .into_iter()
        .find(|r| r.method == "POST")
        .ok_or_else(|| anyhow::anyhow!("no POST reached Klarna"))?;
    assert_eq!(
        post.header("klarna-idempotency-key"),
        Some(resp.operation_id.as_str())
    );
    let body: serde_json::Value = serde_json::from_str(&post.body)?;
    assert_eq!(body["refunded_amount"], 2_500);
    assert_eq!(body["reference"], "RMA-42");
    assert_eq!(body["description"], "Returned a shirt");
    assert_eq!(body["order_lines"][0]["type"], "physical");

    let refund = app
        .client
        .get_refund(pb::GetRefundRequest {
            order_id: order.order_id.clone(),
            refund_id: resp.refund_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .refund
        .ok_or_else(|| anyhow::anyhow!("no refund"))?;
    assert_eq!(refund.refund_id, resp.refund_id);
    assert_eq!(refund.refunded_amount, 2_500);
    assert_eq!(refund.reference, "RMA-42");
    assert_eq!(refund.order_lines.len(), 1);

    let got = app
        .client
        .get_order(pb::GetOrderRequest {
            order_id: order.order_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .order
        .ok_or_else(|| anyhow::anyhow!("no order"))?;
    assert_eq!(got.refunded_amount, 2_500);
    assert_eq!(got.captures[0].refunded_amount, 2_500);
    assert_eq!(got.refunds.len(), 1);
    app.shutdown().await
}

#[tokio::test]
async fn the_same_request_twice_reaches_klarna_with_the_same_key_and_refunds_once()
-> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    let order = captured_order(&app.sim.sim, 10_000);
    let first = app
        .client
        .refund_order(refund_request("same-key", &order.order_id, 1_000))
        .await?
        .into_inner();
    let second = app
        .client
        .refund_order(refund_request("same-key", &order.order_id, 1_000))
        .await?
        .into_inner();
    assert_eq!(first.operation_id, second.operation_id);
    assert_eq!(first.refund_id, second.refund_id);
    assert!(second.replayed, "the second answer is the stored one");
    assert_eq!(
        first.reference, first.operation_id,
        "no caller reference: the operation id is sent"
    );

    // Klarna saw the refund once, under the operation id as its idempotency key; a resend
    // (after a crash or an unknown outcome) carries the same key, see the errors tests.
    let keys: Vec<String> = klarna_calls(&app.sim.sim)
        .iter()
        .filter(|r| r.method == "POST")
        .filter_map(|r| r.header("klarna-idempotency-key").map(str::to_owned))
        .collect();
    assert_eq!(keys, std::slice::from_ref(&first.operation_id));
    let order_json = app
        .sim
        .sim
        .order_json(&order.order_id)
        .ok_or_else(|| anyhow::anyhow!("order gone"))?;
    assert_eq!(order_json["refunded_amount"], 1_000);
    assert_eq!(order_json["refunds"].as_array().map(Vec::len), Some(1));

    // Another key is another operation, and another refund.
    let third = app
        .client
        .refund_order(refund_request("other-key", &order.order_id, 1_000))
        .await?
        .into_inner();
    assert_ne!(third.operation_id, first.operation_id);
    assert_ne!(third.refund_id, first.refund_id);
    app.shutdown().await
}

#[tokio::test]
async fn invalid_requests_list_every_bad_field_and_send_nothing() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    let mut bad_line = line("Shirt", 2, 1_000);
    bad_line.total_amount = 1_999;
    let mut nameless = line("", 1, 10);
    nameless.quantity_unit = "much-too-long".into();
    let req = pb::RefundOrderRequest {
        idempotency_key: String::new(),
        order_id: "not-a-uuid".into(),
        refunded_amount: 0,
        currency: "kr".into(),
        description: "d".repeat(256),
        reference: "r".repeat(256),
        order_lines: vec![
            line("ok", 1, 1),
            line("ok", 1, 1),
            line("ok", 1, 1),
            bad_line,
            nameless,
        ],
        validate_only: false,
        ..Default::default()
    };
    let status = app
        .client
        .refund_order(req)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    let fields = bad_fields(&status);
    for want in [
        "idempotency_key",
        "order_id",
        "refunded_amount",
        "currency",
        "description",
        "reference",
        "order_lines[3].total_amount",
        "order_lines[4].name",
        "order_lines[4].quantity_unit",
    ] {
        assert!(
            fields.iter().any(|f| f == want),
            "{want} missing from {fields:?}"
        );
    }

    let too_big = refund_request("k", demo::SE_INVOICE_ORDER_ID, 200_000_001);
    let status = app
        .client
        .refund_order(too_big)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    assert_eq!(bad_fields(&status), ["refunded_amount"]);

    let long_key = refund_request(&"k".repeat(256), demo::SE_INVOICE_ORDER_ID, 1);
    let status = app
        .client
        .refund_order(long_key)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    assert_eq!(bad_fields(&status), ["idempotency_key"]);

    let mut lines = refund_request("k", demo::SE_INVOICE_ORDER_ID, 1_001);
    lines.order_lines = vec![line("x", 1, 1); 1_001];
    let status = app
        .client
        .refund_order(lines)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    assert_eq!(bad_fields(&status), ["order_lines"]);

    let mut positive_fee = refund_request("k", demo::SE_INVOICE_ORDER_ID, 10_500);
    let mut fee = return_fee(500);
    fee.unit_price = 500;
    fee.total_amount = 500;
    positive_fee.order_lines = vec![line("Shirt", 1, 10_000), fee];
    let status = app
        .client
        .refund_order(positive_fee)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    assert_eq!(
        bad_fields(&status),
        ["order_lines[1].unit_price", "order_lines[1].total_amount"]
    );

    let mut unbalanced = refund_request("k", demo::SE_INVOICE_ORDER_ID, 10_000);
    unbalanced.order_lines = vec![line("Shirt", 1, 10_000), return_fee(500)];
    let status = app
        .client
        .refund_order(unbalanced)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    assert_eq!(bad_fields(&status), ["order_lines"]);

    assert!(
        klarna_calls(&app.sim.sim).is_empty(),
        "invalid input reached Klarna"
    );
    app.shutdown().await
}

#[tokio::test]
async fn a_corrected_retry_under_the_same_key_works() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    let order = captured_order(&app.sim.sim, 10_000);
    let mut bad = refund_request("fix-me", &order.order_id, 1_000);
    bad.description = "x".repeat(300);
    let status = app
        .client
        .refund_order(bad)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    assert_eq!(bad_fields(&status), ["description"]);
    let ok = app
        .client
        .refund_order(refund_request("fix-me", &order.order_id, 1_000))
        .await?;
    assert!(!ok.into_inner().refund_id.is_empty());
    app.shutdown().await
}

#[tokio::test]
async fn return_fee_refund_works_on_an_eligible_order() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    let order = captured_order(&app.sim.sim, 10_000);
    let mut req = refund_request("fee-ok", &order.order_id, 9_500);
    req.order_lines = vec![line("Shirt", 1, 10_000), return_fee(500)];
    let resp = app.client.refund_order(req).await?.into_inner();
    assert!(!resp.refund_id.is_empty());
    let calls = klarna_calls(&app.sim.sim);
    assert_eq!(
        calls.iter().map(|c| c.method.as_str()).collect::<Vec<_>>(),
        ["GET", "POST"]
    );
    let body: serde_json::Value = serde_json::from_str(&calls[1].body)?;
    assert_eq!(body["order_lines"][1]["type"], "return_fee");
    assert_eq!(body["order_lines"][1]["total_amount"], -500);
    app.shutdown().await
}

#[tokio::test]
async fn return_fee_is_refused_by_market_and_captures_without_sending() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    app.sim.sim.seed_demo_orders();
    for order_id in [demo::GB_CARD_ORDER_ID, demo::NO_TWO_CAPTURES_ORDER_ID] {
        let mut req = refund_request(&format!("fee-{order_id}"), order_id, 4_500);
        req.order_lines = vec![line("Item", 1, 5_000), return_fee(500)];
        let status = app
            .client
            .refund_order(req)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("accepted"))?;
        assert_reason(&status, Code::FailedPrecondition, "RETURN_FEE_NOT_ALLOWED");
        let details = status.get_error_details();
        let pf = details
            .precondition_failure()
            .ok_or_else(|| anyhow::anyhow!("no PreconditionFailure"))?;
        assert_eq!(pf.violations[0].r#type, "RETURN_FEE_NOT_ALLOWED");
    }
    // One order read each, no refund sent.
    assert!(klarna_calls(&app.sim.sim).iter().all(|c| c.method == "GET"));
    app.shutdown().await
}

#[tokio::test]
async fn currency_must_match_the_order() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    let order = captured_order(&app.sim.sim, 10_000);
    let mut req = refund_request("cur", &order.order_id, 100);
    req.currency = "EUR".into();
    let status = app
        .client
        .refund_order(req)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    assert_reason(&status, Code::FailedPrecondition, "CURRENCY_MISMATCH");
    assert!(klarna_calls(&app.sim.sim).iter().all(|c| c.method == "GET"));
    app.shutdown().await
}

#[tokio::test]
async fn validate_only_checks_everything_and_sends_nothing() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    let order = captured_order(&app.sim.sim, 10_000);
    let mut req = refund_request("dry-run", &order.order_id, 9_500);
    req.validate_only = true;
    req.currency = "SEK".into();
    req.order_lines = vec![line("Shirt", 1, 10_000), return_fee(500)];
    let resp = app.client.refund_order(req.clone()).await?.into_inner();
    assert!(resp.validate_only);
    assert!(resp.refund_id.is_empty());
    assert!(!resp.operation_id.is_empty());
    // It read the order for the rules, and sent nothing.
    let calls = klarna_calls(&app.sim.sim);
    assert!(
        !calls.is_empty() && calls.iter().all(|c| c.method == "GET"),
        "{calls:?}"
    );
    assert_eq!(
        app.sim
            .sim
            .order_json(&order.order_id)
            .map(|o| o["refunded_amount"].clone()),
        Some(serde_json::json!(0))
    );
    // A state rule still refuses under validate_only.
    req.currency = "NOK".into();
    let status = app
        .client
        .refund_order(req)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    assert_reason(&status, Code::FailedPrecondition, "CURRENCY_MISMATCH");
    app.shutdown().await
}
