//! Klarna's refusals and faults, as the caller sees them (see docs/architecture.md#errors).

use klarna_sim::{FaultKind, SimConfig, demo};
use refund_gateway_proto::v1 as pb;
use refund_gateway_tests::{AppOptions, spawn_app, spawn_app_with};
use tonic::Code;
use tonic_types::StatusExt;

use crate::{
    assert_reason, bad_fields, captured_order, fault_refunds, klarna_calls, refund_request,
    status_fault,
};

#[tokio::test]
async fn over_refund_is_klarnas_refusal_with_its_code_and_correlation_id() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    let order = captured_order(&app.sim.sim, 1_000);
    let status = app
        .client
        .refund_order(refund_request("over", &order.order_id, 1_001))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("over refund accepted"))?;
    assert_reason(&status, Code::FailedPrecondition, "REFUND_NOT_ALLOWED");
    let details = status.get_error_details();
    let info = details
        .error_info()
        .ok_or_else(|| anyhow::anyhow!("no ErrorInfo"))?;
    let correlation = info
        .metadata
        .get("correlation_id")
        .cloned()
        .unwrap_or_default();
    let logged = klarna_calls(&app.sim.sim)
        .into_iter()
        .find(|r| r.method == "POST")
        .map(|r| r.response_body)
        .unwrap_or_default();
    assert!(
        !correlation.is_empty() && logged.contains(&correlation),
        "{correlation} not in {logged}"
    );
    assert!(info.metadata["klarna_messages"].contains("Over refund"));
    assert!(status.message().contains(&correlation));
    app.shutdown().await
}

#[tokio::test]
async fn refund_without_captures_is_refused() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    app.sim.sim.seed_demo_orders();
    let status = app
        .client
        .refund_order(refund_request("none", demo::US_AUTHORIZED_ORDER_ID, 100))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    assert_reason(&status, Code::FailedPrecondition, "REFUND_NOT_ALLOWED");
    assert!(
        status.message().contains("no captures"),
        "{}",
        status.message()
    );
    app.shutdown().await
}

#[tokio::test]
async fn unknown_order_capture_and_refund_are_not_found_with_resource_info() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    let missing = "0b7e6d5c-4a3b-4c2d-9e1f-000000000000";
    let status = app
        .client
        .get_order(pb::GetOrderRequest {
            order_id: missing.into(),
            ..Default::default()
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("found"))?;
    assert_reason(&status, Code::NotFound, "NO_SUCH_ORDER");
    let details = status.get_error_details();
    let info = details
        .resource_info()
        .ok_or_else(|| anyhow::anyhow!("no ResourceInfo"))?;
    assert_eq!(info.resource_type, "klarna.order");
    assert_eq!(info.resource_name, format!("orders/{missing}"));

    let order = captured_order(&app.sim.sim, 1_000);
    let status = app
        .client
        .get_refund(pb::GetRefundRequest {
            order_id: order.order_id.clone(),
            refund_id: missing.into(),
            ..Default::default()
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("found"))?;
    assert_eq!(status.code(), Code::NotFound);
    let details = status.get_error_details();
    assert_eq!(
        details.resource_info().map(|i| i.resource_type.as_str()),
        Some("klarna.refund")
    );

    let status = app
        .client
        .get_extend_due_date_options(pb::GetExtendDueDateOptionsRequest {
            order_id: order.order_id.clone(),
            capture_id: missing.into(),
            ..Default::default()
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("found"))?;
    assert_reason(&status, Code::NotFound, "NO_SUCH_CAPTURE");
    app.shutdown().await
}

#[tokio::test]
async fn rejected_credentials_are_an_internal_error_that_reveals_nothing() -> anyhow::Result<()> {
    let mut app = spawn_app_with(AppOptions {
        gateway_credentials: Some(("sim-user".into(), "wrong-password-zq9".into())),
        ..Default::default()
    })
    .await?;
    let order = captured_order(&app.sim.sim, 1_000);
    let status = app
        .client
        .refund_order(refund_request("auth", &order.order_id, 100))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    assert_reason(&status, Code::Internal, "KLARNA_AUTH_FAILED");
    let rendered = format!("{status:?}");
    assert!(!rendered.contains("wrong-password-zq9"));
    assert!(!rendered.contains("sim-user"));
    app.shutdown().await
}

#[tokio::test]
async fn klarna_rate_limit_is_resource_exhausted_with_retry_info() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    let order = captured_order(&app.sim.sim, 1_000);
    fault_refunds(
        &app.sim.sim,
        &order.order_id,
        1,
        FaultKind::Status {
            status: 429,
            body: None,
            retry_after_secs: Some(3),
        },
    );
    // The caller's deadline is shorter than Klarna's Retry-After, so the gateway does not wait
    // it out: it answers at once and tells the caller when to come back.
    let mut req = tonic::Request::new(refund_request("busy", &order.order_id, 100));
    req.set_timeout(std::time::Duration::from_secs(2));
    let status = app
        .client
        .refund_order(req)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    assert_reason(&status, Code::ResourceExhausted, "TOO_MANY_REQUESTS");
    let details = status.get_error_details();
    assert_eq!(
        details.retry_info().and_then(|r| r.retry_delay),
        Some(std::time::Duration::from_secs(3))
    );
    assert!(details.quota_failure().is_some());
    // Nothing happened, so the same key works once Klarna lets us through.
    let ok = app
        .client
        .refund_order(refund_request("busy", &order.order_id, 100))
        .await?;
    assert!(!ok.into_inner().refund_id.is_empty());
    app.shutdown().await
}

#[tokio::test]
async fn klarna_5xx_on_a_refund_is_pending_never_failed_and_a_retry_refunds_once()
-> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    let order = captured_order(&app.sim.sim, 1_000);
    fault_refunds(
        &app.sim.sim,
        &order.order_id,
        1,
        FaultKind::Status {
            status: 503,
            body: Some("<html>upstream down</html>".into()),
            retry_after_secs: None,
        },
    );
    // Every attempt of the first call fails (the adapter's own retries included).
    fault_refunds(&app.sim.sim, &order.order_id, 9, status_fault(503));
    let status = app
        .client
        .refund_order(refund_request("flaky", &order.order_id, 100))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    assert_reason(&status, Code::Unavailable, "OUTCOME_PENDING");
    assert!(status.get_error_details().retry_info().is_some());
    app.sim.sim.clear_faults();
    let ok = app
        .client
        .refund_order(refund_request("flaky", &order.order_id, 100))
        .await?
        .into_inner();
    assert!(!ok.refund_id.is_empty());
    let order_json = app
        .sim
        .sim
        .order_json(&order.order_id)
        .ok_or_else(|| anyhow::anyhow!("gone"))?;
    assert_eq!(order_json["refunded_amount"], 100);
    app.shutdown().await
}

#[tokio::test]
async fn commit_then_drop_is_pending_and_the_retry_returns_the_one_refund() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    let order = captured_order(&app.sim.sim, 1_000);
    // Every attempt of the first call commits and then loses its answer.
    fault_refunds(&app.sim.sim, &order.order_id, 10, FaultKind::CommitThenDrop);
    let status = app
        .client
        .refund_order(refund_request("dropped", &order.order_id, 300))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("the dropped answer was reported as success"))?;
    assert_reason(&status, Code::Unavailable, "OUTCOME_PENDING");
    let committed = app
        .sim
        .sim
        .order_json(&order.order_id)
        .ok_or_else(|| anyhow::anyhow!("gone"))?;
    let refund_id = committed["refunds"][0]["refund_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!refund_id.is_empty(), "Klarna committed the refund");
    app.sim.sim.clear_faults();

    let retry = app
        .client
        .refund_order(refund_request("dropped", &order.order_id, 300))
        .await?
        .into_inner();
    assert_eq!(retry.refund_id, refund_id);
    let after = app
        .sim
        .sim
        .order_json(&order.order_id)
        .ok_or_else(|| anyhow::anyhow!("gone"))?;
    assert_eq!(after["refunded_amount"], 300);
    app.shutdown().await
}

#[tokio::test]
async fn a_slow_klarna_times_out_as_pending() -> anyhow::Result<()> {
    let mut app = spawn_app_with(AppOptions {
        attempt_timeout_ms: Some(200),
        ..Default::default()
    })
    .await?;
    let order = captured_order(&app.sim.sim, 1_000);
    fault_refunds(
        &app.sim.sim,
        &order.order_id,
        1,
        FaultKind::CommitThenHold { millis: 2_000 },
    );
    // The adapter's retries of the first call are slow too.
    fault_refunds(
        &app.sim.sim,
        &order.order_id,
        9,
        FaultKind::Latency { millis: 2_000 },
    );
    let status = app
        .client
        .refund_order(refund_request("slow", &order.order_id, 50))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    assert_reason(&status, Code::Unavailable, "OUTCOME_PENDING");
    app.shutdown().await
}

#[tokio::test]
async fn klarna_400_409_422_map_to_their_codes() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    let order = captured_order(&app.sim.sim, 1_000);
    for (status_code, code, reason) in [
        (422, Code::InvalidArgument, "UNPROCESSABLE_ENTITY"),
        (409, Code::FailedPrecondition, "CONFLICT"),
        (413, Code::InvalidArgument, "REQUEST_TOO_LARGE"),
    ] {
        fault_refunds(&app.sim.sim, &order.order_id, 1, status_fault(status_code));
        let status = app
            .client
            .refund_order(refund_request(
                &format!("k{status_code}"),
                &order.order_id,
                10,
            ))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("accepted"))?;
        assert_reason(&status, code, reason);
    }
    app.shutdown().await
}

#[tokio::test]
async fn unreachable_klarna_is_unavailable() -> anyhow::Result<()> {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut app = spawn_app_with(AppOptions {
        klarna_url: Some(format!("http://127.0.0.1:{port}")),
        ..Default::default()
    })
    .await?;
    let status = app
        .client
        .refund_order(refund_request("down", demo::SE_INVOICE_ORDER_ID, 10))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    assert_reason(&status, Code::Unavailable, "KLARNA_UNREACHABLE");
    assert!(status.get_error_details().retry_info().is_some());
    app.shutdown().await
}

#[tokio::test]
async fn an_unknown_account_is_a_bad_field() -> anyhow::Result<()> {
    let mut app = spawn_app_with(AppOptions {
        sim: SimConfig::default(),
        ..Default::default()
    })
    .await?;
    let mut req = refund_request("acct", demo::SE_INVOICE_ORDER_ID, 10);
    req.klarna_account = "nordics".into();
    let status = app
        .client
        .refund_order(req)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    assert_eq!(bad_fields(&status), ["klarna_account"]);
    assert!(status.message().contains("default"));
    app.shutdown().await
}
