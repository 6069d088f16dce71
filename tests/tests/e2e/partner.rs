//! Partner refunds (`RefundCapture`, `RefundTransaction`) and `GetTransaction` on the
//! simulator's Payments API: success, replay, every local refusal without a call, Klarna's
//! refusals, faults that must neither lose nor double a refund, and mutual TLS.

use std::time::Duration;

use klarna_sim::{CaptureSeed, RunningSimulator, TransactionSeed, TransactionState};
use refund_gateway_tests::{
    AppOptions, PartnerTls, TestApp, spawn_app, spawn_app_with, wait_until,
};

use super::*;

/// A SEK transaction of `amount` captured as `captures`, with `prior_refunds` refunds of 1.
fn seed(
    sim: &klarna_sim::Simulator,
    captures: &[i64],
    prior_refunds: u32,
) -> (String, Vec<String>) {
    let seeded = sim.seed_transaction(TransactionSeed {
        amount: captures.iter().sum(),
        captures: captures
            .iter()
            .map(|&amount| CaptureSeed {
                amount,
                payment_capture_id: None,
            })
            .collect(),
        prior_refunds,
        ..TransactionSeed::default()
    });
    (seeded.payment_transaction_id, seeded.payment_capture_ids)
}

fn capture_refund(
    key: &str,
    transaction: &str,
    capture: &str,
    amount: i64,
) -> pb::RefundCaptureRequest {
    pb::RefundCaptureRequest {
        idempotency_key: key.into(),
        payment_transaction_id: transaction.into(),
        payment_capture_id: capture.into(),
        amount,
        currency: "SEK".into(),
        ..Default::default()
    }
}

fn item(name: &str, total: i64) -> pb::LineItem {
    pb::LineItem {
        name: name.into(),
        quantity: 1,
        unit_price: total,
        total_amount: total,
        ..Default::default()
    }
}

fn transaction_refund(
    key: &str,
    transaction: &str,
    items: Vec<pb::LineItem>,
) -> pb::RefundTransactionRequest {
    pb::RefundTransactionRequest {
        idempotency_key: key.into(),
        payment_transaction_id: transaction.into(),
        amount: items.iter().map(|i| i.total_amount).sum(),
        currency: "SEK".into(),
        line_items: items,
        ..Default::default()
    }
}

/// The partner refund POSTs the simulator received.
fn refund_posts(sim: &RunningSimulator) -> Vec<LoggedRequest> {
    klarna_calls(&sim.sim)
        .into_iter()
        .filter(|r| {
            r.method == "POST" && r.path.starts_with("/v2/") && r.path.ends_with("/refunds")
        })
        .collect()
}

/// The refunds the simulator holds for `transaction`.
fn refunds_at_klarna(sim: &RunningSimulator, transaction: &str) -> Vec<serde_json::Value> {
    sim.sim
        .transaction_json(transaction)
        .and_then(|t| t.get("refunds").and_then(|r| r.as_array()).cloned())
        .unwrap_or_default()
}

/// Arms `kind` for the next `times` refund POSTs on `capture`.
fn fault_capture_refunds(app: &TestApp, capture: &str, times: u32, kind: FaultKind) {
    app.sim.sim.inject_fault(FaultSpec {
        method: Some("POST".into()),
        path: format!(
            "/v2/accounts/{}/payment/captures/{capture}/refunds",
            app.sim.partner_account_id()
        ),
        times,
        kind,
    });
}

backend_test! {
    /// A capture refund reaches Klarna once; its retry is a replay; the transaction shows it;
    /// the audit trail lists it under its transaction.
    async fn a_capture_refund_is_made_once_and_replayed(db: Backend) -> anyhow::Result<()> {
        let mut app = spawn_app_with(db.options()).await?;
        let (transaction, captures) = seed(&app.sim.sim, &[6000, 4000], 0);
        let request = capture_refund("cap-1", &transaction, &captures[1], 2500);
        let first = app.client.refund_capture(request.clone()).await?.into_inner();
        assert!(!first.payment_refund_id.is_empty());
        assert_eq!(first.payment_transaction_id, transaction);
        assert_eq!(first.payment_capture_id, captures[1]);
        assert_eq!((first.amount, first.currency.as_str()), (2500, "SEK"));
        assert_eq!(first.reference, first.operation_id);
        assert!(!first.replayed);

        let again = app.client.refund_capture(request).await?;
        assert_eq!(
            again.metadata().get("idempotent-replayed").and_then(|v| v.to_str().ok()),
            Some("true")
        );
        let again = again.into_inner();
        assert!(again.replayed);
        assert_eq!(again.payment_refund_id, first.payment_refund_id);
        assert_eq!(refund_posts(&app.sim).len(), 1);
        let refunds = refunds_at_klarna(&app.sim, &transaction);
        assert_eq!(refunds.len(), 1);
        assert_eq!(refunds[0]["payment_refund_id"], first.payment_refund_id.as_str());

        // Sent as Klarna's partner docs show: the key itself after `Basic `, the operation id
        // as idempotency key and, without hyphens, as Partner-Correlation-Id.
        let post = &refund_posts(&app.sim)[0];
        let header = |name: &str| post.header(name).map(str::to_owned);
        assert_eq!(
            header("authorization"),
            Some(format!("Basic {}", app.sim.partner_api_key()))
        );
        assert_eq!(header("klarna-idempotency-key").as_deref(), Some(first.operation_id.as_str()));
        assert_eq!(
            header("partner-correlation-id"),
            Some(first.operation_id.replace('-', ""))
        );

        let t = app
            .client
            .get_transaction(pb::GetTransactionRequest {
                payment_transaction_id: transaction.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        assert_eq!((t.captured_amount, t.refunded_amount, t.refundable_amount), (Some(10_000), 2500, Some(7500)));
        assert_eq!(t.state, "AUTHORIZED");
        assert_eq!(t.refunds.len(), 1);

        let listed = app
            .client
            .list_operations(pb::ListOperationsRequest {
                payment_transaction_id: transaction.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        assert_eq!(listed.operations.len(), 1);
        let op = &listed.operations[0];
        assert_eq!(op.rpc, "RefundCapture");
        assert_eq!(op.payment_transaction_id, transaction);
        assert_eq!(op.capture_id, captures[1]);
        assert_eq!(op.refund_id, first.payment_refund_id);
        assert!(op.order_id.is_empty());
        app.shutdown().await
    }
}

backend_test! {
    /// A transaction refund by line items is allocated by Klarna across the captures.
    async fn a_transaction_refund_is_allocated_across_captures(db: Backend) -> anyhow::Result<()> {
        let mut app = spawn_app_with(db.options()).await?;
        let (transaction, _) = seed(&app.sim.sim, &[6000, 4000], 0);
        let request = transaction_refund("txn-1", &transaction, vec![item("Shoes", 5000), item("Socks", 2000)]);
        let made = app.client.refund_transaction(request.clone()).await?.into_inner();
        assert!(!made.payment_refund_id.is_empty());
        assert_eq!(made.amount, 7000);
        let t = app.sim.sim.transaction_json(&transaction).unwrap_or_default();
        assert_eq!(t["refunded_amount"], 7000);
        assert_eq!(t["captures"][0]["refunded_amount"], 6000);
        assert_eq!(t["captures"][1]["refunded_amount"], 1000);
        let post = &refund_posts(&app.sim)[0];
        let body: serde_json::Value = serde_json::from_str(&post.body)?;
        assert_eq!(body["line_items"].as_array().map(Vec::len), Some(2));
        assert_eq!(body["payment_refund_reference"], made.operation_id.as_str());

        let replay = app.client.refund_transaction(request).await?.into_inner();
        assert!(replay.replayed);
        assert_eq!(refund_posts(&app.sim).len(), 1);
        app.shutdown().await
    }
}

backend_test! {
    /// Every state rule refuses before anything is sent, and the refusal is final.
    async fn state_rules_refuse_without_a_call(db: Backend) -> anyhow::Result<()> {
        let mut app = spawn_app_with(db.options()).await?;
        let sim = &app.sim.sim;
        let (open, open_captures) = seed(sim, &[5000], 0);
        let (closed, closed_captures) = seed(sim, &[5000], 0);
        sim.set_transaction_state(&closed, TransactionState::Closed);
        let (full, full_captures) = seed(sim, &[5000], 200);
        let many = sim.seed_transaction(TransactionSeed {
            amount: 5000,
            captures: vec![CaptureSeed { amount: 5000, payment_capture_id: None }],
            prior_refunds: 100,
            other_operations: 399,
            ..TransactionSeed::default()
        });
        let cases = [
            (capture_refund("r-closed", &closed, &closed_captures[0], 100), "TRANSACTION_CLOSED"),
            (capture_refund("r-over", &open, &open_captures[0], 5001), "AMOUNT_NOT_REFUNDABLE"),
            (
                pb::RefundCaptureRequest {
                    currency: "EUR".into(),
                    ..capture_refund("r-eur", &open, &open_captures[0], 100)
                },
                "CURRENCY_MISMATCH",
            ),
            (capture_refund("r-201st", &full, &full_captures[0], 100), "TRANSACTION_REFUND_LIMIT"),
            (
                capture_refund("r-501st", &many.payment_transaction_id, &many.payment_capture_ids[0], 100),
                "TRANSACTION_OPERATION_LIMIT",
            ),
            (
                pb::RefundCaptureRequest {
                    klarna_account: "default".into(),
                    ..capture_refund("r-kind", &open, &open_captures[0], 100)
                },
                "WRONG_ACCOUNT_KIND",
            ),
        ];
        for (request, reason) in cases {
            let refused = app.client.refund_capture(request.clone()).await.err();
            let refused = refused.unwrap_or_else(|| panic!("{reason}: not refused"));
            assert_reason(&refused, Code::FailedPrecondition, reason);
            // Final: the retry is the stored refusal.
            let again = app.client.refund_capture(request).await.err();
            let again = again.unwrap_or_else(|| panic!("{reason}: not refused again"));
            assert_reason(&again, Code::FailedPrecondition, reason);
            assert_eq!(
                again.metadata().get("idempotent-replayed").and_then(|v| v.to_str().ok()),
                (reason != "WRONG_ACCOUNT_KIND").then_some("true"),
                "{reason}"
            );
        }
        let wrong_kind = app
            .client
            .refund_order(pb::RefundOrderRequest {
                klarna_account: "partner".into(),
                ..refund_request("o-kind", &captured_order(sim, 1000).order_id, 100)
            })
            .await
            .err();
        let wrong_kind = wrong_kind.unwrap_or_else(|| panic!("RefundOrder to a partner account"));
        assert_reason(&wrong_kind, Code::FailedPrecondition, "WRONG_ACCOUNT_KIND");
        // Klarna lists captures and refunds but not its other operations: the 501st operation
        // is refused by Klarna itself (one POST), mapped to the same reason. Every other rule
        // refused before sending.
        let posts = refund_posts(&app.sim);
        assert_eq!(posts.len(), 1, "{posts:?}");
        assert!(posts[0].path.contains(&many.payment_capture_ids[0]), "{posts:?}");
        app.shutdown().await
    }
}

#[tokio::test]
async fn bad_input_is_refused_field_by_field() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    let refused = app
        .client
        .refund_capture(pb::RefundCaptureRequest {
            payment_transaction_id: "krn:payment:eu1:transaction:1/../admin".into(),
            payment_capture_id: "capture-1".into(),
            amount: 0,
            currency: "kronor".into(),
            ..Default::default()
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    assert_eq!(
        bad_fields(&refused),
        [
            "idempotency_key",
            "payment_transaction_id",
            "payment_capture_id",
            "amount",
            "currency"
        ]
    );
    let (transaction, _) = seed(&app.sim.sim, &[5000], 0);
    let mut uneven = transaction_refund("k", &transaction, vec![item("Shoes", 3000)]);
    uneven.amount = 2000;
    uneven.line_items.push(pb::LineItem {
        tax_rate: Some(10_001),
        ..item("Socks", 0)
    });
    let refused = app
        .client
        .refund_transaction(uneven)
        .await
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    assert_eq!(bad_fields(&refused), ["line_items[1].tax_rate"]);
    let mut uneven = transaction_refund("k", &transaction, vec![item("Shoes", 3000)]);
    uneven.amount = 2000;
    let refused = app
        .client
        .refund_transaction(uneven)
        .await
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    assert_eq!(bad_fields(&refused), ["line_items"]);
    let none = transaction_refund("k", &transaction, vec![]);
    let refused = app
        .client
        .refund_transaction(pb::RefundTransactionRequest {
            amount: 100,
            ..none
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    assert_eq!(bad_fields(&refused), ["line_items"]);
    assert!(klarna_calls(&app.sim.sim).is_empty());
    app.shutdown().await
}

backend_test! {
    /// The same key with another request is refused; validate_only sends nothing.
    async fn key_reuse_and_validate_only(db: Backend) -> anyhow::Result<()> {
        let mut app = spawn_app_with(db.options()).await?;
        let (transaction, captures) = seed(&app.sim.sim, &[5000], 0);
        let checked = app
            .client
            .refund_capture(pb::RefundCaptureRequest {
                validate_only: true,
                ..capture_refund("v-1", &transaction, &captures[0], 1000)
            })
            .await?
            .into_inner();
        assert!(checked.validate_only && checked.payment_refund_id.is_empty());
        assert!(refund_posts(&app.sim).is_empty());
        app.client
            .refund_capture(capture_refund("v-1", &transaction, &captures[0], 1000))
            .await?;
        let reused = app
            .client
            .refund_capture(capture_refund("v-1", &transaction, &captures[0], 1001))
            .await
            .err()
            .unwrap_or_else(|| panic!("key reused"));
        assert_reason(&reused, Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED");
        assert_eq!(refund_posts(&app.sim).len(), 1);
        app.shutdown().await
    }
}

backend_test! {
    /// A 503 and a commit-then-drop are resent under the same Klarna key: one refund.
    async fn faults_neither_lose_nor_double(db: Backend) -> anyhow::Result<()> {
        let mut app = spawn_app_with(db.options()).await?;
        let (transaction, captures) = seed(&app.sim.sim, &[5000], 0);
        fault_capture_refunds(&app, &captures[0], 1, status_fault(503));
        let made = app
            .client
            .refund_capture(capture_refund("f-503", &transaction, &captures[0], 1000))
            .await?
            .into_inner();
        fault_capture_refunds(&app, &captures[0], 1, FaultKind::CommitThenDrop);
        let dropped = app
            .client
            .refund_capture(capture_refund("f-drop", &transaction, &captures[0], 1000))
            .await?
            .into_inner();
        assert_ne!(made.payment_refund_id, dropped.payment_refund_id);
        assert_eq!(refunds_at_klarna(&app.sim, &transaction).len(), 2);
        let keys: Vec<_> = refund_posts(&app.sim)
            .iter()
            .map(|r| r.header("klarna-idempotency-key").map(str::to_owned))
            .collect();
        assert_eq!(
            keys,
            [
                Some(made.operation_id.clone()),
                Some(made.operation_id),
                Some(dropped.operation_id.clone()),
                Some(dropped.operation_id)
            ]
        );
        app.shutdown().await
    }
}

backend_test! {
    /// Klarna still executing the first attempt after the gateway gave up on it, and answering
    /// 409 to a resend under the same key meanwhile: never a refusal, and the call (or its
    /// retry under the same key) gets the replay of the one refund.
    async fn a_resend_while_klarna_still_runs_the_first_is_one_refund(
        db: Backend,
    ) -> anyhow::Result<()> {
        let app = spawn_app_with(AppOptions {
            attempt_timeout_ms: Some(200),
            ..db.options()
        })
        .await?;
        app.sim.sim.set_conflict_while_running(true);
        let (transaction, captures) = seed(&app.sim.sim, &[5000], 0);
        fault_capture_refunds(&app, &captures[0], 1, FaultKind::HoldThenCommit { millis: 1500 });
        let request = capture_refund("held", &transaction, &captures[0], 1000);
        let made = wait_until("the refund's answer", Duration::from_secs(20), async || {
            match app.client.clone().refund_capture(request.clone()).await {
                Ok(made) => Ok(Some(made.into_inner())),
                Err(status) => {
                    // The only answer short of the refund: its outcome is not known yet.
                    assert_reason(&status, Code::Unavailable, "OUTCOME_PENDING");
                    Ok::<_, anyhow::Error>(None)
                }
            }
        })
        .await?;
        let at_klarna = refunds_at_klarna(&app.sim, &transaction);
        assert_eq!(at_klarna.len(), 1, "{at_klarna:?}");
        assert_eq!(
            at_klarna[0]["payment_refund_id"].as_str(),
            Some(made.payment_refund_id.as_str())
        );
        let statuses: Vec<u16> = refund_posts(&app.sim).iter().map(|r| r.status).collect();
        assert!(statuses.contains(&409), "{statuses:?}");
        app.shutdown().await
    }
}

backend_test! {
    /// Klarna's DDoS protection (403 without an error object) proves nothing happened: the
    /// caller may retry at once under the same key and gets the one refund.
    async fn a_bare_403_leaves_the_key_usable(db: Backend) -> anyhow::Result<()> {
        let mut app = spawn_app_with(db.options()).await?;
        let (transaction, captures) = seed(&app.sim.sim, &[5000], 0);
        fault_capture_refunds(
            &app,
            &captures[0],
            1,
            FaultKind::Status { status: 403, body: Some(String::new()), retry_after_secs: None },
        );
        let request = capture_refund("ddos-1", &transaction, &captures[0], 1000);
        let blocked = app.client.refund_capture(request.clone()).await.err().unwrap_or_else(|| panic!("not blocked"));
        assert_reason(&blocked, Code::Unavailable, "KLARNA_BLOCKED");
        assert!(blocked.get_error_details().retry_info().is_some());
        assert!(refunds_at_klarna(&app.sim, &transaction).is_empty());
        let made = app.client.refund_capture(request).await?.into_inner();
        assert!(!made.replayed);
        assert_eq!(refunds_at_klarna(&app.sim, &transaction).len(), 1);
        app.shutdown().await
    }
}

#[tokio::test]
async fn klarnas_own_limit_refusal_reads_as_the_gateways() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    let (transaction, captures) = seed(&app.sim.sim, &[5000], 0);
    let body = serde_json::json!({
        "error_id": "0c9d9f3e-8a0b-4a3e-9a8b-6f2a1c0d4e5f",
        "error_type": "ACCESS_ERROR",
        "error_code": "OPERATION_FORBIDDEN",
        "error_message": "Maximum number of refunds (200) reached for this transaction",
    });
    fault_capture_refunds(
        &app,
        &captures[0],
        1,
        FaultKind::Status {
            status: 403,
            body: Some(body.to_string()),
            retry_after_secs: None,
        },
    );
    let refused = app
        .client
        .refund_capture(capture_refund("k-limit", &transaction, &captures[0], 100))
        .await
        .err()
        .unwrap_or_else(|| panic!("not refused"));
    assert_reason(
        &refused,
        Code::FailedPrecondition,
        "TRANSACTION_REFUND_LIMIT",
    );
    let details = refused.get_error_details();
    let correlation_id = details
        .error_info()
        .and_then(|info| info.metadata.get("correlation_id"))
        .map(String::as_str);
    assert_eq!(correlation_id, Some("0c9d9f3e-8a0b-4a3e-9a8b-6f2a1c0d4e5f"));
    app.shutdown().await
}

#[tokio::test]
async fn klarnas_field_errors_become_field_violations() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    let (transaction, _) = seed(&app.sim.sim, &[5000], 0);
    app.sim.sim.inject_fault(FaultSpec {
        method: Some("POST".into()),
        path: format!(
            "/v2/accounts/{}/payment/transactions/{transaction}/refunds",
            app.sim.partner_account_id()
        ),
        times: 1,
        kind: FaultKind::Status {
            status: 400,
            body: Some(
                serde_json::json!({
                    "error_id": "e-1",
                    "error_type": "INPUT_ERROR",
                    "error_code": "VALIDATION_ERROR",
                    "error_message": "Invalid request",
                    "errors": [{"parameter": "line_items[0].name", "error_message": "too long"}],
                })
                .to_string(),
            ),
            retry_after_secs: None,
        },
    });
    let refused = app
        .client
        .refund_transaction(transaction_refund(
            "k-400",
            &transaction,
            vec![item("Shoes", 100)],
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("not refused"));
    assert_eq!(bad_fields(&refused), ["line_items[0].name"]);
    assert_reason(&refused, Code::InvalidArgument, "VALIDATION_ERROR");
    app.shutdown().await
}

#[tokio::test]
async fn mutual_tls_with_a_test_ca() -> anyhow::Result<()> {
    let pki = test_pki()?;
    let sim_tls = || {
        klarna_sim::TlsConfig::new(pki.server.0.clone(), pki.server.1.clone())
            .with_client_ca(pki.ca.clone())
    };
    let tls = PartnerTls {
        client: Some((
            pki.client.0.clone().into_bytes(),
            pki.client.1.clone().into_bytes(),
        )),
        ca_pem: pki.ca.clone().into_bytes(),
    };
    let mut app = spawn_app_with(AppOptions {
        sim: klarna_sim::SimConfig {
            tls: Some(sim_tls()),
            ..Default::default()
        },
        partner_tls: Some(tls.clone()),
        ..AppOptions::default()
    })
    .await?;
    assert!(app.sim.base_url.starts_with("https://"));
    let (transaction, captures) = seed(&app.sim.sim, &[5000], 0);
    let made = app
        .client
        .refund_capture(capture_refund("tls-1", &transaction, &captures[0], 1000))
        .await?
        .into_inner();
    assert!(!made.payment_refund_id.is_empty());
    app.shutdown().await?;

    // Without its client certificate the handshake fails: nothing was sent, the key is free.
    let mut app = spawn_app_with(AppOptions {
        sim: klarna_sim::SimConfig {
            tls: Some(sim_tls()),
            ..Default::default()
        },
        partner_tls: Some(PartnerTls {
            client: None,
            ..tls
        }),
        ..AppOptions::default()
    })
    .await?;
    let (transaction, captures) = seed(&app.sim.sim, &[5000], 0);
    let refused = app
        .client
        .refund_capture(capture_refund("tls-2", &transaction, &captures[0], 1000))
        .await
        .err()
        .unwrap_or_else(|| panic!("refunded without a client certificate"));
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refunds_at_klarna(&app.sim, &transaction).is_empty());
    app.shutdown().await
}

#[tokio::test]
async fn unknown_transactions_and_klarnas_rate_limit() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    let unknown = "krn:payment:eu1:transaction:00000000-0000-4000-8000-000000000000";
    let missing = app
        .client
        .get_transaction(pb::GetTransactionRequest {
            payment_transaction_id: unknown.into(),
            ..Default::default()
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("an unknown transaction was found"));
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let details = missing.get_error_details();
    let resource = details.resource_info().cloned();
    assert_eq!(
        resource.map(|r| (r.resource_type, r.resource_name)),
        Some((
            "klarna.payment_transaction".to_owned(),
            format!("payment/transactions/{unknown}")
        ))
    );
    let refused = app
        .client
        .refund_capture(capture_refund(
            "nf-1",
            unknown,
            &format!("{unknown}:capture:1"),
            100,
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("refunded an unknown transaction"));
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");

    // Klarna's 429 on every attempt proves nothing happened: RESOURCE_EXHAUSTED, key usable.
    let (transaction, captures) = seed(&app.sim.sim, &[5000], 0);
    fault_capture_refunds(
        &app,
        &captures[0],
        10,
        FaultKind::Status {
            status: 429,
            body: None,
            retry_after_secs: None,
        },
    );
    let limited = app
        .client
        .refund_capture(capture_refund("rl-1", &transaction, &captures[0], 100))
        .await
        .err()
        .unwrap_or_else(|| panic!("not rate limited"));
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    app.sim.sim.clear_faults();
    let made = app
        .client
        .refund_capture(capture_refund("rl-1", &transaction, &captures[0], 100))
        .await?
        .into_inner();
    assert!(!made.replayed);
    assert_eq!(refunds_at_klarna(&app.sim, &transaction).len(), 1);
    app.shutdown().await
}

backend_test! {
    /// Operations on one transaction are serialized: ten concurrent refunds on a transaction
    /// five refunds short of Klarna's limit make five refunds, and the gateway refuses the
    /// other five itself (its count includes its own refunds), so Klarna sees only five.
    async fn refunds_on_one_transaction_are_serialized(db: Backend) -> anyhow::Result<()> {
        let app = spawn_app_with(db.options()).await?;
        let (transaction, captures) = seed(&app.sim.sim, &[50_000], 195);
        let calls = (0..10).map(|i| {
            let mut client = app.client.clone();
            let request = capture_refund(&format!("serial-{i}"), &transaction, &captures[0], 10);
            async move { client.refund_capture(request).await }
        });
        let results = futures::future::join_all(calls).await;
        let made = results.iter().filter(|r| r.is_ok()).count();
        for refused in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_reason(refused, Code::FailedPrecondition, "TRANSACTION_REFUND_LIMIT");
        }
        assert_eq!(made, 5);
        assert_eq!(refund_posts(&app.sim).len(), 5);
        assert_eq!(refunds_at_klarna(&app.sim, &transaction).len(), 200);
        app.shutdown().await
    }
}
