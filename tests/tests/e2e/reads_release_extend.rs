//! GetOrder, ReleaseAuthorization, GetExtendDueDateOptions and ExtendDueDate end to end.

use klarna_sim::{FaultKind, FaultSpec, demo};
use refund_gateway_proto::v1 as pb;
use refund_gateway_tests::spawn_app;
use tonic::Code;

use crate::{assert_reason, bad_fields, klarna_calls};

#[tokio::test]
async fn get_order_reports_amounts_captures_and_references() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    app.sim.sim.seed_demo_orders();
    let order = app
        .client
        .get_order(pb::GetOrderRequest {
            order_id: demo::NO_TWO_CAPTURES_ORDER_ID.to_uppercase(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .order
        .ok_or_else(|| anyhow::anyhow!("no order"))?;
    assert_eq!(order.order_id, demo::NO_TWO_CAPTURES_ORDER_ID);
    assert_eq!(order.status(), pb::OrderStatus::Captured);
    assert_eq!(order.order_amount, 50_000);
    assert_eq!(order.captured_amount, 50_000);
    assert_eq!(order.currency, "NOK");
    assert_eq!(order.purchase_country, "NO");
    assert!(!order.merchant_reference1.is_empty());
    assert!(!order.klarna_reference.is_empty());
    let captures: Vec<(String, i64)> = order
        .captures
        .iter()
        .map(|c| (c.capture_id.clone(), c.captured_amount))
        .collect();
    assert_eq!(
        captures,
        [
            (demo::NO_FIRST_CAPTURE_ID.to_owned(), 30_000),
            (demo::NO_SECOND_CAPTURE_ID.to_owned(), 20_000)
        ]
    );
    assert!(order.captures.iter().all(|c| c.captured_at.is_some()));
    app.shutdown().await
}

#[tokio::test]
async fn release_authorization_then_a_second_release_is_refused() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    app.sim.sim.seed_demo_orders();
    let req = |key: &str| pb::ReleaseAuthorizationRequest {
        idempotency_key: key.into(),
        order_id: demo::DE_PART_CAPTURED_ORDER_ID.into(),
        ..Default::default()
    };
    let resp = app
        .client
        .release_authorization(req("release-1"))
        .await?
        .into_inner();
    assert_eq!(resp.order_id, demo::DE_PART_CAPTURED_ORDER_ID);
    let post = klarna_calls(&app.sim.sim)
        .into_iter()
        .find(|r| r.method == "POST")
        .ok_or_else(|| anyhow::anyhow!("no POST"))?;
    assert!(post.path.ends_with("/release-remaining-authorization"));
    assert_eq!(
        post.header("klarna-idempotency-key"),
        Some(resp.operation_id.as_str())
    );

    let order = app
        .client
        .get_order(pb::GetOrderRequest {
            order_id: demo::DE_PART_CAPTURED_ORDER_ID.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .order
        .ok_or_else(|| anyhow::anyhow!("no order"))?;
    assert_eq!(order.remaining_authorized_amount, 0);

    // The same key again is the same operation: Klarna replays its answer.
    let again = app
        .client
        .release_authorization(req("release-1"))
        .await?
        .into_inner();
    assert_eq!(again.operation_id, resp.operation_id);
    // A new key is a new release, which Klarna refuses now.
    let status = app
        .client
        .release_authorization(req("release-2"))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("released twice"))?;
    assert_reason(&status, Code::FailedPrecondition, "NOT_ALLOWED");
    app.shutdown().await
}

/// A Klarna that released the authorization on an attempt whose answer was lost, without
/// remembering its key, refuses the resend (nothing left to release). The order is read
/// before the refusal is believed: its remaining authorization is 0, so the release
/// SUCCEEDED.
#[tokio::test]
async fn a_release_refused_after_a_lost_answer_is_checked_on_the_order() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    app.sim.sim.seed_demo_orders();
    app.sim.sim.inject_fault(FaultSpec {
        method: Some("POST".into()),
        path: format!(
            "/ordermanagement/v1/orders/{}/release-remaining-authorization",
            demo::DE_PART_CAPTURED_ORDER_ID
        ),
        times: 1,
        kind: FaultKind::CommitThenDropForgetting,
    });
    let resp = app
        .client
        .release_authorization(pb::ReleaseAuthorizationRequest {
            idempotency_key: "release-forgot".into(),
            order_id: demo::DE_PART_CAPTURED_ORDER_ID.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(resp.order_id, demo::DE_PART_CAPTURED_ORDER_ID);
    let posts: Vec<u16> = klarna_calls(&app.sim.sim)
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.status)
        .collect();
    // Executed (the answer dropped), then refused on what the first left.
    assert_eq!(posts, [204, 403]);
    app.shutdown().await
}

#[tokio::test]
async fn release_of_a_fully_captured_order_is_refused() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    app.sim.sim.seed_demo_orders();
    let status = app
        .client
        .release_authorization(pb::ReleaseAuthorizationRequest {
            idempotency_key: "r".into(),
            order_id: demo::SE_INVOICE_ORDER_ID.into(),
            ..Default::default()
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("released"))?;
    assert_reason(&status, Code::FailedPrecondition, "NOT_ALLOWED");
    assert!(status.message().contains("fully captured"));
    let status = app
        .client
        .release_authorization(pb::ReleaseAuthorizationRequest::default())
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("released"))?;
    assert_eq!(bad_fields(&status), ["idempotency_key", "order_id"]);
    app.shutdown().await
}

#[tokio::test]
async fn extend_due_date_by_an_offered_number_of_days() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    app.sim.sim.seed_demo_orders();
    let options = app
        .client
        .get_extend_due_date_options(pb::GetExtendDueDateOptionsRequest {
            order_id: demo::SE_INVOICE_ORDER_ID.into(),
            capture_id: demo::SE_INVOICE_CAPTURE_ID.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        options.currency, "SEK",
        "currency is upper-cased whatever Klarna sends"
    );
    assert!(!options.options.is_empty());
    let offer = options.options[0];
    let resp = app
        .client
        .extend_due_date(pb::ExtendDueDateRequest {
            idempotency_key: "extend-1".into(),
            order_id: demo::SE_INVOICE_ORDER_ID.into(),
            capture_id: demo::SE_INVOICE_CAPTURE_ID.into(),
            number_of_days: offer.number_of_days,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(resp.number_of_days, offer.number_of_days);
    assert_eq!(resp.fee_amount, offer.amount);
    assert_eq!(resp.currency, "SEK");
    let patch = klarna_calls(&app.sim.sim)
        .into_iter()
        .find(|r| r.method == "PATCH")
        .ok_or_else(|| anyhow::anyhow!("no PATCH"))?;
    assert!(patch.path.ends_with("/extend-due-date"));
    assert_eq!(
        patch.header("klarna-idempotency-key"),
        Some(resp.operation_id.as_str())
    );
    let body: serde_json::Value = serde_json::from_str(&patch.body)?;
    assert_eq!(body["number_of_days"], offer.number_of_days);
    app.shutdown().await
}

#[tokio::test]
async fn days_not_offered_are_refused_without_the_patch() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    app.sim.sim.seed_demo_orders();
    let status = app
        .client
        .extend_due_date(pb::ExtendDueDateRequest {
            idempotency_key: "extend-x".into(),
            order_id: demo::SE_INVOICE_ORDER_ID.into(),
            capture_id: demo::SE_INVOICE_CAPTURE_ID.into(),
            number_of_days: 3,
            ..Default::default()
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("extended"))?;
    assert_reason(&status, Code::FailedPrecondition, "EXTENSION_NOT_OFFERED");
    assert!(
        klarna_calls(&app.sim.sim).iter().all(|c| c.method == "GET"),
        "the PATCH was sent"
    );
    app.shutdown().await
}

#[tokio::test]
async fn a_card_capture_has_no_extension_options() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    app.sim.sim.seed_demo_orders();
    let status = app
        .client
        .get_extend_due_date_options(pb::GetExtendDueDateOptionsRequest {
            order_id: demo::GB_CARD_ORDER_ID.into(),
            capture_id: demo::GB_CARD_CAPTURE_ID.into(),
            ..Default::default()
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("offered"))?;
    assert_eq!(status.code(), Code::FailedPrecondition);
    app.shutdown().await
}

/// A read's Klarna calls (and their resends) are bounded by the caller's deadline: a Klarna
/// that does not answer gives the caller UNAVAILABLE from the gateway before the deadline,
/// not a deadline cut by the transport.
#[tokio::test]
async fn reads_answer_within_the_callers_deadline() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    app.sim.sim.seed_demo_orders();
    app.sim.sim.inject_fault(klarna_sim::FaultSpec {
        method: Some("GET".into()),
        path: "/ordermanagement/v1/orders/*".into(),
        times: 100,
        kind: klarna_sim::FaultKind::Latency { millis: 20_000 },
    });
    let order_id = demo::SE_INVOICE_ORDER_ID.to_owned();
    let capture_id = demo::SE_INVOICE_CAPTURE_ID.to_owned();
    let mut order = tonic::Request::new(pb::GetOrderRequest {
        order_id: order_id.clone(),
        ..Default::default()
    });
    order.set_timeout(std::time::Duration::from_secs(1));
    let mut options = tonic::Request::new(pb::GetExtendDueDateOptionsRequest {
        order_id: order_id.clone(),
        capture_id,
        ..Default::default()
    });
    options.set_timeout(std::time::Duration::from_secs(1));
    let mut refund = tonic::Request::new(pb::GetRefundRequest {
        order_id,
        refund_id: "7c2a9d4e-1b3f-4a5c-8d6e-0f1a2b3c4d5e".into(),
        ..Default::default()
    });
    refund.set_timeout(std::time::Duration::from_secs(1));
    let statuses = [
        app.client.get_order(order).await.err(),
        app.client.get_extend_due_date_options(options).await.err(),
        app.client.get_refund(refund).await.err(),
    ];
    for status in statuses {
        let status = status.ok_or_else(|| anyhow::anyhow!("answered"))?;
        assert_reason(&status, Code::Unavailable, "KLARNA_NO_ANSWER");
    }
    app.shutdown().await
}

/// An extension whose outcome was unknown, settled later by a resend, answers with the fee of
/// the offer it took (kept with the operation when it went PENDING), not 0.
#[tokio::test]
async fn an_extension_settled_after_an_unknown_outcome_answers_its_fee() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    app.sim.sim.seed_demo_orders();
    let offer = app
        .client
        .get_extend_due_date_options(pb::GetExtendDueDateOptionsRequest {
            order_id: demo::SE_INVOICE_ORDER_ID.into(),
            capture_id: demo::SE_INVOICE_CAPTURE_ID.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .options[0];
    assert!(offer.amount > 0, "the demo offer has a fee");
    let path = format!(
        "/ordermanagement/v1/orders/{}/captures/{}/extend-due-date",
        demo::SE_INVOICE_ORDER_ID,
        demo::SE_INVOICE_CAPTURE_ID
    );
    // Klarna extends, the answer is lost, and every resend of this call fails: unknown.
    for (times, kind) in [
        (1, klarna_sim::FaultKind::CommitThenDrop),
        (100, crate::status_fault(503)),
    ] {
        app.sim.sim.inject_fault(klarna_sim::FaultSpec {
            method: Some("PATCH".into()),
            path: path.clone(),
            times,
            kind,
        });
    }
    let request = pb::ExtendDueDateRequest {
        idempotency_key: "extend-unknown".into(),
        order_id: demo::SE_INVOICE_ORDER_ID.into(),
        capture_id: demo::SE_INVOICE_CAPTURE_ID.into(),
        number_of_days: offer.number_of_days,
        ..Default::default()
    };
    let status = app
        .client
        .extend_due_date(request.clone())
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("extended"))?;
    assert_reason(&status, Code::Unavailable, "OUTCOME_PENDING");
    app.sim.sim.clear_faults();
    let resp = app.client.extend_due_date(request).await?.into_inner();
    assert_eq!(resp.number_of_days, offer.number_of_days);
    assert_eq!(resp.fee_amount, offer.amount);
    assert_eq!(resp.currency, "SEK");
    app.shutdown().await
}
