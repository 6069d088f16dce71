//! Klarna's webhooks through the gateway's own listener: a refund's webhook from the simulator
//! lands in the audit trail and settles a partner refund whose outcome was unknown; forged,
//! unknown-key, malformed, misaddressed and oversized deliveries are refused with nothing
//! recorded; a redelivery is recorded once; a second key works while keys rotate.

use std::time::Duration;

use hmac::{Hmac, Mac};
use klarna_sim::{CaptureSeed, TransactionSeed, WebhookMode};
use refund_gateway_tests::{AppOptions, TestApp, spawn_app_with, wait_until};
use sha2::Sha256;

use super::*;

const ROTATED_KEY_ID: &str = "krn:partner:global:notification:signing-key:rotated-2";
const ROTATED_SECRET: &str = "the-next-signing-secret";

/// Lowercase hex HMAC-SHA256 of `body` under `secret`, as Klarna signs.
fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Posts `body` to the gateway's webhook listener with the given signature headers.
async fn deliver(
    app: &TestApp,
    body: &[u8],
    key_id: Option<&str>,
    signature: Option<String>,
) -> anyhow::Result<reqwest::StatusCode> {
    let url = app
        .webhook_url
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no webhook listener"))?;
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(id) = key_id {
        request = request.header("Klarna-Signing-Key-Id", id);
    }
    if let Some(signature) = signature {
        request = request.header("Klarna-Signature", signature);
    }
    Ok(request.send().await?.status())
}

/// A `payment.transaction.refunded` envelope for `account`.
fn refunded(
    account: &str,
    event_id: &str,
    transaction: &str,
    refund_id: &str,
    reference: &str,
) -> Vec<u8> {
    serde_json::json!({
        "metadata": {
            "event_type": "payment.transaction.refunded",
            "event_id": event_id,
            "event_version": "v2",
            "occurred_at": "2026-12-02T10:00:00Z",
            "correlation_id": "5b0c5d1e-9c55-4c8e-8f43-0f7a9e2d6b11",
            "subject_account_id": account,
            "recipient_account_id": account,
            "live": false,
        },
        "payload": {
            "payment_transaction_id": transaction,
            "payment_refund_id": refund_id,
            "payment_refund_reference": reference,
            "amount": 1000,
            "currency": "SEK",
        },
    })
    .to_string()
    .into_bytes()
}

/// The one operation on `transaction`.
async fn operation(app: &mut TestApp, transaction: &str) -> anyhow::Result<pb::OperationRecord> {
    let listed = app
        .client
        .list_operations(pb::ListOperationsRequest {
            payment_transaction_id: transaction.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    listed
        .operations
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no operation on {transaction}"))
}

/// The audit events of the one operation on `transaction`.
async fn events(app: &mut TestApp, transaction: &str) -> anyhow::Result<Vec<pb::OperationEvent>> {
    Ok(operation(app, transaction).await?.events)
}

fn webhook_events(events: &[pb::OperationEvent]) -> usize {
    events
        .iter()
        .filter(|e| e.detail.contains("webhook"))
        .count()
}

fn seeded(app: &TestApp) -> (String, String) {
    let seeded = app.sim.sim.seed_transaction(TransactionSeed {
        amount: 5000,
        captures: vec![CaptureSeed {
            amount: 5000,
            payment_capture_id: None,
        }],
        ..TransactionSeed::default()
    });
    (
        seeded.payment_transaction_id,
        seeded.payment_capture_ids[0].clone(),
    )
}

fn capture_refund(key: &str, transaction: &str, capture: &str) -> pb::RefundCaptureRequest {
    pb::RefundCaptureRequest {
        idempotency_key: key.into(),
        payment_transaction_id: transaction.into(),
        payment_capture_id: capture.into(),
        amount: 1000,
        currency: "SEK".into(),
        ..Default::default()
    }
}

backend_test! {
    /// The simulator's signed webhook for a refund reaches the refund's audit trail once.
    async fn a_refund_webhook_is_recorded_once(db: Backend) -> anyhow::Result<()> {
        let mut app = spawn_app_with(db.options()).await?;
        let (transaction, capture) = seeded(&app);
        let made = app
            .client
            .refund_capture(capture_refund("w-1", &transaction, &capture))
            .await?
            .into_inner();
        wait_until("the webhook to be acknowledged", Duration::from_secs(30), async || {
            Ok::<_, anyhow::Error>(
                app.sim
                    .sim
                    .webhook_deliveries()
                    .iter()
                    .any(|d| d.acknowledged)
                    .then_some(()),
            )
        })
        .await?;
        let trail = events(&mut app, &transaction).await?;
        assert_eq!(webhook_events(&trail), 1, "{trail:?}");
        let recorded = trail.iter().find(|e| e.detail.contains("webhook")).cloned().unwrap_or_default();
        assert_eq!(recorded.refund_id, made.payment_refund_id);

        // Klarna redelivers: the same event, byte for byte, is answered 200 and changes nothing.
        let event = app.sim.sim.webhook_events().into_iter().next().unwrap_or_else(|| panic!("no event"));
        let status = deliver(
            &app,
            event.body.as_bytes(),
            event.header("klarna-signing-key-id"),
            event.header("klarna-signature").map(str::to_owned),
        )
        .await?;
        assert_eq!(status, reqwest::StatusCode::OK);
        assert_eq!(webhook_events(&events(&mut app, &transaction).await?), 1);
        app.shutdown().await
    }
}

backend_test! {
    /// A partner refund whose answer was lost stays PENDING until Klarna's webhook says it
    /// was made: then it is settled at once, with Klarna's refund id, without a resend, even
    /// past Klarna's idempotency window.
    async fn a_pending_partner_refund_is_settled_by_its_webhook(db: Backend) -> anyhow::Result<()> {
        let mut app = spawn_app_with(AppOptions {
            webhook_mode: WebhookMode::Manual,
            // The reconciler stays out of it, and past Klarna's window (0 here) nothing may
            // be resent: only the webhook can settle the refund.
            reconcile_interval_ms: Some(3_600_000),
            idempotency_window_secs: Some(0),
            ..db.options()
        })
        .await?;
        let (transaction, capture) = seeded(&app);
        app.sim.sim.inject_fault(FaultSpec {
            method: Some("POST".into()),
            path: format!(
                "/v2/accounts/{}/payment/captures/{capture}/refunds",
                app.sim.partner_account_id()
            ),
            times: 100,
            kind: FaultKind::CommitThenDrop,
        });
        let pending = app
            .client
            .refund_capture(capture_refund("w-pending", &transaction, &capture))
            .await
            .err()
            .unwrap_or_else(|| panic!("answered although every answer was dropped"));
        assert_reason(&pending, Code::Unavailable, "OUTCOME_PENDING");
        let posts_before = klarna_calls(&app.sim.sim).len();
        let ops = operation(&mut app, &transaction).await?;
        assert_eq!(ops.state, pb::OperationState::Pending as i32);

        assert_eq!(app.sim.sim.flush_webhooks(), 1);
        let op = wait_until("the webhook to settle the refund", Duration::from_secs(30), async || {
            let op = operation(&mut app, &transaction).await?;
            Ok::<_, anyhow::Error>((op.state == pb::OperationState::Succeeded as i32).then_some(op))
        })
        .await?;
        let refund_id = refunds_at(&app, &transaction);
        assert_eq!(Some(op.refund_id.clone()), refund_id);
        assert!(
            op.events.iter().any(|e| e.detail.contains("settled by Klarna's payment.transaction.refunded webhook")),
            "{:?}",
            op.events
        );
        // Settled from the webhook: nothing more was sent to Klarna.
        assert_eq!(klarna_calls(&app.sim.sim).len(), posts_before);
        app.sim.sim.clear_faults();
        let replay = app
            .client
            .refund_capture(capture_refund("w-pending", &transaction, &capture))
            .await?
            .into_inner();
        assert!(replay.replayed);
        assert_eq!(replay.payment_refund_id, op.refund_id);
        app.shutdown().await
    }
}

backend_test! {
    /// Past Klarna's window, a partner refund no webhook settled is not resent and not
    /// confirmed by reading the transaction (Klarna advises against it): it needs review.
    async fn past_the_window_without_a_webhook_a_partner_refund_needs_review(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = spawn_app_with(AppOptions {
            webhook_mode: WebhookMode::Manual,
            reconcile_interval_ms: Some(50),
            idempotency_window_secs: Some(0),
            ..db.options()
        })
        .await?;
        let (transaction, capture) = seeded(&app);
        app.sim.sim.inject_fault(FaultSpec {
            method: Some("POST".into()),
            path: format!(
                "/v2/accounts/{}/payment/captures/{capture}/refunds",
                app.sim.partner_account_id()
            ),
            times: 100,
            kind: FaultKind::CommitThenDrop,
        });
        let pending = app
            .client
            .refund_capture(capture_refund("w-review", &transaction, &capture))
            .await
            .err()
            .unwrap_or_else(|| panic!("answered although every answer was dropped"));
        assert_reason(&pending, Code::Unavailable, "OUTCOME_PENDING");
        let calls_before = klarna_calls(&app.sim.sim).len();
        let op = wait_until("the reconciler to give up", Duration::from_secs(30), async || {
            let op = operation(&mut app, &transaction).await?;
            Ok::<_, anyhow::Error>(
                (op.state == pb::OperationState::RequiresReview as i32).then_some(op),
            )
        })
        .await?;
        assert!(
            op.events.iter().any(|e| e.detail.contains("no payment.transaction.refunded webhook")),
            "{:?}",
            op.events
        );
        assert_eq!(klarna_calls(&app.sim.sim).len(), calls_before, "resent or read");
        app.shutdown().await
    }
}

fn refunds_at(app: &TestApp, transaction: &str) -> Option<String> {
    let t = app.sim.sim.transaction_json(transaction)?;
    let refunds = t.get("refunds")?.as_array()?.clone();
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    refunds[0]["payment_refund_id"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn deliveries_that_are_not_klarnas_are_refused_and_not_recorded() -> anyhow::Result<()> {
    let mut app = spawn_app_with(AppOptions {
        extra_webhook_keys: vec![(ROTATED_KEY_ID.into(), ROTATED_SECRET.into())],
        ..AppOptions::default()
    })
    .await?;
    // The simulator's own webhooks go nowhere here: the test delivers every event itself.
    app.sim.sim.clear_webhook_target();
    let (transaction, capture) = seeded(&app);
    let made = app
        .client
        .refund_capture(capture_refund("w-forged", &transaction, &capture))
        .await?
        .into_inner();
    let account = app.sim.partner_account_id().to_owned();
    let key = klarna_sim::DEFAULT_SIGNING_KEY_ID;
    let secret = klarna_sim::DEFAULT_WEBHOOK_SECRET;
    let body = |event_id: &str| {
        refunded(
            &account,
            event_id,
            &transaction,
            &made.payment_refund_id,
            &made.reference,
        )
    };
    let bad = reqwest::StatusCode::BAD_REQUEST;

    let forged = body("e-forged");
    assert_eq!(
        deliver(
            &app,
            &forged,
            Some(key),
            Some(sign("not-the-secret", &forged))
        )
        .await?,
        bad
    );
    assert_eq!(
        deliver(
            &app,
            &forged,
            Some(key),
            Some(sign(secret, &forged).to_uppercase())
        )
        .await?,
        bad,
        "Klarna signs in lowercase hex"
    );
    assert_eq!(deliver(&app, &forged, Some(key), None).await?, bad);
    assert_eq!(
        deliver(&app, &forged, None, Some(sign(secret, &forged))).await?,
        bad
    );
    assert_eq!(
        deliver(
            &app,
            &forged,
            Some("krn:partner:global:notification:signing-key:unknown"),
            Some(sign(secret, &forged))
        )
        .await?,
        bad
    );
    let malformed = br#"{"metadata": {"event_type": "payment.transaction.refunded"}}"#;
    assert_eq!(
        deliver(&app, malformed, Some(key), Some(sign(secret, malformed))).await?,
        bad
    );
    let not_json = b"event=refunded";
    assert_eq!(
        deliver(&app, not_json, Some(key), Some(sign(secret, not_json))).await?,
        bad
    );
    let elsewhere = refunded(
        "krn:partner:global:account:someone-else",
        "e-elsewhere",
        &transaction,
        &made.payment_refund_id,
        &made.reference,
    );
    assert_eq!(
        deliver(&app, &elsewhere, Some(key), Some(sign(secret, &elsewhere))).await?,
        bad
    );
    let live = String::from_utf8(body("e-live"))?
        .replace("\"live\":false", "\"live\":true")
        .into_bytes();
    assert_eq!(
        deliver(&app, &live, Some(key), Some(sign(secret, &live))).await?,
        bad
    );
    let oversized = vec![b' '; 1024 * 1024 + 1];
    let status = deliver(&app, &oversized, Some(key), Some(sign(secret, &oversized))).await?;
    assert_eq!(status, reqwest::StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(webhook_events(&events(&mut app, &transaction).await?), 0);

    // While Klarna rotates keys, an event signed with the new key is accepted too.
    let rotated = body("e-rotated");
    let status = deliver(
        &app,
        &rotated,
        Some(ROTATED_KEY_ID),
        Some(sign(ROTATED_SECRET, &rotated)),
    )
    .await?;
    assert_eq!(status, reqwest::StatusCode::OK);
    let genuine = body("e-genuine");
    assert_eq!(
        deliver(&app, &genuine, Some(key), Some(sign(secret, &genuine))).await?,
        reqwest::StatusCode::OK
    );
    assert_eq!(webhook_events(&events(&mut app, &transaction).await?), 2);
    // Other event types are recorded and otherwise ignored.
    let other = String::from_utf8(body("e-other"))?
        .replace(
            "payment.transaction.refunded",
            "payment.transaction.captured",
        )
        .into_bytes();
    assert_eq!(
        deliver(&app, &other, Some(key), Some(sign(secret, &other))).await?,
        reqwest::StatusCode::OK
    );
    assert_eq!(webhook_events(&events(&mut app, &transaction).await?), 2);
    app.shutdown().await
}
