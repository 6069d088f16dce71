//! The exactly-once protocol end to end: replay, key reuse, concurrency, unknown outcomes,
//! the reconciler and the audit trail.

use std::time::Duration;

use futures::future::join_all;
use klarna_sim::{FaultKind, FaultSpec};
use refund_gateway_proto::v1 as pb;
use refund_gateway_tests::{AppOptions, TestApp, spawn_app_with, wait_until};
use tonic::Code;
use tonic_types::StatusExt;

use crate::{
    assert_reason, captured_order, fault_refunds, klarna_calls, refund_request, status_fault,
};

fn refund_posts(app: &TestApp, order_id: &str) -> usize {
    klarna_calls(&app.sim.sim)
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with(&format!("{order_id}/refunds")))
        .count()
}

fn refunded(app: &TestApp, order_id: &str) -> (i64, usize) {
    let order = app.sim.sim.order_json(order_id).unwrap_or_default();
    (
        order["refunded_amount"].as_i64().unwrap_or(-1),
        order["refunds"].as_array().map_or(0, Vec::len),
    )
}

async fn operations(
    app: &TestApp,
    filter: pb::ListOperationsRequest,
) -> anyhow::Result<Vec<pb::OperationRecord>> {
    Ok(app
        .client
        .clone()
        .list_operations(filter)
        .await?
        .into_inner()
        .operations)
}

/// The operations listed under the idempotency key `key`.
async fn operations_under(app: &TestApp, key: &str) -> anyhow::Result<Vec<pb::OperationRecord>> {
    operations(
        app,
        pb::ListOperationsRequest {
            idempotency_key: key.into(),
            ..Default::default()
        },
    )
    .await
}

/// The operation under `key` once it has reached a final state (the caller's own call, or the
/// reconciler in the background, settles it), re-checked with `ListOperations`.
async fn settled(app: &TestApp, key: &str) -> anyhow::Result<pb::OperationRecord> {
    wait_until(
        &format!("operation {key} to settle"),
        Duration::from_secs(30),
        async || {
            let ops = operations_under(app, key).await?;
            Ok(ops.into_iter().find(|o| {
                matches!(
                    o.state(),
                    pb::OperationState::Succeeded
                        | pb::OperationState::Failed
                        | pb::OperationState::RequiresReview
                )
            }))
        },
    )
    .await
}

backend_test! {
    async fn a_replay_returns_the_identical_answer_and_says_so(db: Backend) -> anyhow::Result<()> {
        let mut app = spawn_app_with(db.options()).await?;
        let order = captured_order(&app.sim.sim, 10_000);
        let first = app
            .client
            .refund_order(refund_request("replay-1", &order.order_id, 700))
            .await?;
        assert!(first.metadata().get("idempotent-replayed").is_none());
        let first = first.into_inner();
        assert!(!first.replayed);
        let second = app
            .client
            .refund_order(refund_request("replay-1", &order.order_id, 700))
            .await?;
        assert_replay_of(second, &first);
        assert_eq!(
            refund_posts(&app, &order.order_id),
            1,
            "the replay reached Klarna"
        );
        assert_eq!(refunded(&app, &order.order_id), (700, 1));
        app.shutdown().await
    }
}

backend_test! {
    async fn a_failed_operation_is_replayed_as_the_same_failure(db: Backend) -> anyhow::Result<()> {
        let mut app = spawn_app_with(db.options()).await?;
        let order = captured_order(&app.sim.sim, 100);
        let first = app
            .client
            .refund_order(refund_request("over-1", &order.order_id, 500))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("accepted"))?;
        assert_reason(&first, Code::FailedPrecondition, "REFUND_NOT_ALLOWED");
        let again = app
            .client
            .refund_order(refund_request("over-1", &order.order_id, 500))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("accepted"))?;
        assert_eq!(again.code(), first.code());
        assert_eq!(again.message(), first.message());
        assert_eq!(again.details(), first.details());
        assert_eq!(
            again
                .metadata()
                .get("idempotent-replayed")
                .and_then(|v| v.to_str().ok()),
            Some("true")
        );
        assert_eq!(refund_posts(&app, &order.order_id), 1);
        app.shutdown().await
    }
}

backend_test! {
    async fn another_request_under_a_used_key_is_refused(db: Backend) -> anyhow::Result<()> {
        let mut app = spawn_app_with(db.options()).await?;
        let order = captured_order(&app.sim.sim, 10_000);
        app.client
            .refund_order(refund_request("reuse-1", &order.order_id, 100))
            .await?;
        let status = app
            .client
            .refund_order(refund_request("reuse-1", &order.order_id, 200))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("a different request under a used key was accepted"))?;
        assert_reason(&status, Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED");
        assert_eq!(refunded(&app, &order.order_id), (100, 1));
        app.shutdown().await
    }
}

backend_test! {
    async fn eight_concurrent_calls_with_one_key_make_one_refund(
        db: Backend,
    ) -> anyhow::Result<()> {
        let app = spawn_app_with(db.options()).await?;
        let order = captured_order(&app.sim.sim, 10_000);
        // Hold Klarna's answer so the calls overlap while the first is in flight.
        fault_refunds(
            &app.sim.sim,
            &order.order_id,
            1,
            FaultKind::CommitThenHold { millis: 300 },
        );
        let calls = (0..8).map(|_| {
            let mut client = app.client.clone();
            let req = refund_request("concurrent-1", &order.order_id, 250);
            async move { client.refund_order(req).await }
        });
        let results = join_all(calls).await;
        let mut refund_ids = Vec::new();
        for r in &results {
            match r {
                Ok(resp) => refund_ids.push(resp.get_ref().refund_id.clone()),
                Err(status) => assert_reason(status, Code::Aborted, "IDEMPOTENCY_KEY_IN_USE"),
            }
        }
        assert!(!refund_ids.is_empty(), "{results:?}");
        refund_ids.dedup();
        assert_eq!(refund_ids.len(), 1, "{refund_ids:?}");
        assert_eq!(refunded(&app, &order.order_id), (250, 1));
        Ok(())
    }
}

backend_test! {
    async fn concurrent_refunds_with_different_keys_on_one_order_all_land(
        db: Backend,
    ) -> anyhow::Result<()> {
        let app = spawn_app_with(db.options()).await?;
        let order = captured_order(&app.sim.sim, 10_000);
        let calls = (0..10).map(|i| {
            let mut client = app.client.clone();
            let req = refund_request(&format!("many-{i}"), &order.order_id, 100 + i);
            async move { client.refund_order(req).await }
        });
        for r in join_all(calls).await {
            r?;
        }
        let expected: i64 = (0..10).map(|i| 100 + i).sum();
        assert_eq!(refunded(&app, &order.order_id), (expected, 10));
        let ops = operations(
            &app,
            pb::ListOperationsRequest {
                order_id: order.order_id.clone(),
                ..Default::default()
            },
        )
        .await?;
        assert_eq!(ops.len(), 10);
        assert!(
            ops.iter()
                .all(|o| o.state() == pb::OperationState::Succeeded)
        );
        Ok(())
    }
}

backend_test! {
    async fn klarna_5xx_twice_then_success_is_one_refund_under_one_key(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = spawn_app_with(db.options()).await?;
        let order = captured_order(&app.sim.sim, 10_000);
        fault_refunds(&app.sim.sim, &order.order_id, 2, status_fault(503));
        let mut outcome = app
            .client
            .refund_order(refund_request("flaky-2", &order.order_id, 300))
            .await;
        // Whether the adapter's retries absorbed the 503s or the caller retries, the same key
        // leads to one refund.
        for _ in 0..3 {
            if outcome.is_ok() {
                break;
            }
            outcome = app
                .client
                .refund_order(refund_request("flaky-2", &order.order_id, 300))
                .await;
        }
        let resp = outcome?.into_inner();
        assert!(!resp.refund_id.is_empty());
        let keys: std::collections::BTreeSet<String> = klarna_calls(&app.sim.sim)
            .iter()
            .filter(|r| r.method == "POST")
            .filter_map(|r| r.header("klarna-idempotency-key").map(str::to_owned))
            .collect();
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert_eq!(refunded(&app, &order.order_id), (300, 1));
        app.shutdown().await
    }
}

backend_test! {
    async fn the_reconciler_settles_a_pending_refund_by_resending_under_the_same_key(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = spawn_app_with(AppOptions {
            reconcile_interval_ms: Some(50),
            ..db.options()
        })
        .await?;
        let order = captured_order(&app.sim.sim, 10_000);
        // Klarna commits every attempt of the first call but the connection drops each time, so
        // the caller's call ends with an unknown outcome.
        fault_refunds(&app.sim.sim, &order.order_id, 10, FaultKind::CommitThenDrop);
        let status = app
            .client
            .refund_order(refund_request("pending-1", &order.order_id, 400))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("a dropped answer was reported as success"))?;
        assert_reason(&status, Code::Unavailable, "OUTCOME_PENDING");
        app.sim.sim.clear_faults();
        let op = settled(&app, "pending-1").await?;
        assert_eq!(op.state(), pb::OperationState::Succeeded);
        assert_eq!(refunded(&app, &order.order_id), (400, 1));
        let committed = app.sim.sim.order_json(&order.order_id).unwrap_or_default();
        assert_eq!(
            op.refund_id,
            committed["refunds"][0]["refund_id"]
                .as_str()
                .unwrap_or_default()
        );
        // The caller's retry gets the settled answer.
        let retry = app
            .client
            .refund_order(refund_request("pending-1", &order.order_id, 400))
            .await?
            .into_inner();
        assert_eq!(retry.refund_id, op.refund_id);
        assert!(retry.replayed);
        let states: Vec<_> = op.events.iter().map(|e| e.state_after()).collect();
        assert!(states.contains(&pb::OperationState::Pending), "{states:?}");
        app.shutdown().await
    }
}

/// Microseconds since the epoch of a protobuf timestamp (0 when absent).
fn micros(t: Option<&prost_types::Timestamp>) -> i64 {
    t.map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000)
}

backend_test! {
    /// A refund that stays PENDING is resent by the reconciler less often as it ages: each
    /// take-over comes no sooner than a quarter of the operation's age when it last became
    /// PENDING (at most a minute), however often the passes run, and the stored wait is
    /// what every pass obeys. Once Klarna answers, the next resend settles it: one refund.
    async fn the_reconciler_resends_an_aging_pending_refund_less_and_less_often(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = spawn_app_with(AppOptions {
            reconcile_interval_ms: Some(20),
            ..db.options()
        })
        .await?;
        let order = captured_order(&app.sim.sim, 10_000);
        fault_refunds(&app.sim.sim, &order.order_id, 100_000, FaultKind::CommitThenDrop);
        let status = app
            .client
            .refund_order(refund_request("aging-1", &order.order_id, 400))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("a dropped answer was reported as success"))?;
        assert_reason(&status, Code::Unavailable, "OUTCOME_PENDING");
        let take_overs = |op: &pb::OperationRecord| {
            op.events
                .iter()
                .filter(|e| {
                    e.state_before() == pb::OperationState::Pending
                        && e.state_after() == pb::OperationState::InFlight
                })
                .count()
        };
        let op = wait_until(
            "five resends by the reconciler",
            Duration::from_secs(60),
            async || {
                let ops = operations_under(&app, "aging-1").await?;
                Ok::<_, anyhow::Error>(ops.into_iter().find(|o| {
                    take_overs(o) >= 5 && o.state() == pb::OperationState::Pending
                }))
            },
        )
        .await?;
        let created = micros(op.created_at.as_ref());
        // The record says when the next resend is due, by the same rule.
        let updated = micros(op.updated_at.as_ref());
        assert_eq!(
            micros(op.next_resend_at.as_ref()),
            updated + ((updated - created) / 4).clamp(0, 60_000_000),
            "{op:?}"
        );
        let mut became_pending = None;
        for event in &op.events {
            let at = micros(event.at.as_ref());
            match (event.state_before(), event.state_after()) {
                (_, pb::OperationState::Pending) => became_pending = Some(at),
                (pb::OperationState::Pending, pb::OperationState::InFlight) => {
                    let pending = became_pending
                        .ok_or_else(|| anyhow::anyhow!("taken over before PENDING: {op:?}"))?;
                    let wait = ((pending - created) / 4).clamp(0, 60_000_000);
                    assert!(
                        at - pending >= wait,
                        "taken over {} µs after becoming PENDING at age {} µs: {:?}",
                        at - pending,
                        pending - created,
                        op.events
                    );
                }
                _ => {}
            }
        }
        app.sim.sim.clear_faults();
        let op = settled(&app, "aging-1").await?;
        assert_eq!(op.state(), pb::OperationState::Succeeded);
        assert_eq!(op.next_resend_at, None);
        assert_eq!(refunded(&app, &order.order_id), (400, 1));
        app.shutdown().await
    }
}

backend_test! {
    /// A Klarna that executed an attempt whose answer was lost, but had not remembered its
    /// key, judges the resend afresh and refuses it (the first took the whole amount). The
    /// refusal came after an attempt that may have executed, so the order is read before it
    /// is believed: the refund with the operation's reference and amount is there, and the
    /// operation SUCCEEDED with it, never FAILED while the customer has the money.
    async fn a_refusal_after_a_lost_answer_is_checked_against_the_order(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = spawn_app_with(db.options()).await?;
        let order = captured_order(&app.sim.sim, 10_000);
        fault_refunds(&app.sim.sim, &order.order_id, 1, FaultKind::CommitThenDropForgetting);
        let refund = app
            .client
            .refund_order(refund_request("forgot-1", &order.order_id, 10_000))
            .await?
            .into_inner();
        let committed = app.sim.sim.order_json(&order.order_id).unwrap_or_default();
        assert_eq!(refunded(&app, &order.order_id), (10_000, 1));
        assert_eq!(
            refund.refund_id,
            committed["refunds"][0]["refund_id"]
                .as_str()
                .unwrap_or_default()
        );
        // Klarna refused the resend: the adapter did not resend blindly after it.
        assert_eq!(refund_posts(&app, &order.order_id), 2);
        let ops = operations_under(&app, "forgot-1").await?;
        let op = ops
            .first()
            .ok_or_else(|| anyhow::anyhow!("no operation"))?;
        assert_eq!(op.state(), pb::OperationState::Succeeded);
        let last = op.events.last().map(|e| e.detail.as_str()).unwrap_or_default();
        assert!(last.contains("earlier attempt is on the order"), "{last}");
        app.shutdown().await
    }
}

backend_test! {
    /// The same check finds nothing when the earlier attempt did not execute: Klarna's
    /// refusal stands, FAILED with its code, and nothing was refunded.
    async fn a_refusal_after_a_5xx_stands_when_the_order_has_no_such_refund(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = spawn_app_with(db.options()).await?;
        let order = captured_order(&app.sim.sim, 10_000);
        fault_refunds(&app.sim.sim, &order.order_id, 1, status_fault(503));
        fault_refunds(&app.sim.sim, &order.order_id, 1, status_fault(403));
        let status = app
            .client
            .refund_order(refund_request("refused-1", &order.order_id, 400))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("a refused refund was reported as success"))?;
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert_eq!(refunded(&app, &order.order_id), (0, 0));
        let ops = operations_under(&app, "refused-1").await?;
        assert_eq!(
            ops.first().map(pb::OperationRecord::state),
            Some(pb::OperationState::Failed)
        );
        app.shutdown().await
    }
}

backend_test! {
    /// The refund the check finds must not be another operation's: a caller may refund the
    /// same amount under the same reference twice. The second, refused after a 5xx, is not
    /// taken for the first's refund.
    async fn a_checked_refusal_does_not_claim_another_operations_refund(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = spawn_app_with(db.options()).await?;
        let order = captured_order(&app.sim.sim, 10_000);
        let same = |key: &str| pb::RefundOrderRequest {
            reference: "RMA-9".into(),
            ..refund_request(key, &order.order_id, 100)
        };
        let first = app.client.refund_order(same("same-a")).await?.into_inner();
        fault_refunds(&app.sim.sim, &order.order_id, 1, status_fault(503));
        fault_refunds(&app.sim.sim, &order.order_id, 1, status_fault(403));
        let status = app
            .client
            .refund_order(same("same-b"))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("the refused refund took the first one's"))?;
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert_eq!(refunded(&app, &order.order_id), (100, 1));
        let second = operations_under(&app, "same-b").await?;
        assert_eq!(
            second.first().map(pb::OperationRecord::state),
            Some(pb::OperationState::Failed)
        );
        assert_ne!(
            second.first().map(|o| o.refund_id.as_str()),
            Some(first.refund_id.as_str())
        );
        app.shutdown().await
    }
}

backend_test! {
    async fn past_klarnas_window_the_reconciler_reads_the_order_instead_of_resending(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = spawn_app_with(AppOptions {
            reconcile_interval_ms: Some(50),
            idempotency_window_secs: Some(0),
            ..db.options()
        })
        .await?;
        let order = captured_order(&app.sim.sim, 10_000);
        fault_refunds(&app.sim.sim, &order.order_id, 10, FaultKind::CommitThenDrop);
        let mut req = refund_request("late-1", &order.order_id, 600);
        req.reference = "RMA-LATE-1".into();
        let status = app
            .client
            .refund_order(req)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("accepted"))?;
        assert_reason(&status, Code::Unavailable, "OUTCOME_PENDING");
        let posts_before = refund_posts(&app, &order.order_id);
        app.sim.sim.clear_faults();
        // Klarna has forgotten the key: a resend now would refund twice.
        app.sim.sim.advance_clock(Duration::from_secs(25 * 3600));
        let op = settled(&app, "late-1").await?;
        assert_eq!(op.state(), pb::OperationState::Succeeded);
        assert_eq!(
            refund_posts(&app, &order.order_id),
            posts_before,
            "the reconciler resent"
        );
        assert_eq!(refunded(&app, &order.order_id), (600, 1));
        app.shutdown().await
    }
}

backend_test! {
    async fn list_operations_filters_and_pages_the_audit_trail(db: Backend) -> anyhow::Result<()> {
        let mut app = spawn_app_with(db.options()).await?;
        let order = captured_order(&app.sim.sim, 1_000);
        for i in 0..5 {
            app.client
                .refund_order(refund_request(&format!("audit-{i}"), &order.order_id, 10))
                .await?;
        }
        assert!(
            app.client
                .refund_order(refund_request("audit-over", &order.order_id, 5_000))
                .await
                .is_err()
        );
        let all = operations(
            &app,
            pb::ListOperationsRequest {
                order_id: order.order_id.clone(),
                ..Default::default()
            },
        )
        .await?;
        assert_eq!(all.len(), 6);
        let failed = operations(
            &app,
            pb::ListOperationsRequest {
                order_id: order.order_id.clone(),
                state: pb::OperationState::Failed.into(),
                ..Default::default()
            },
        )
        .await?;
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].idempotency_key, "audit-over");
        assert!(!failed[0].correlation_id.is_empty());
        let ok = &all
            .iter()
            .find(|o| o.idempotency_key == "audit-0")
            .ok_or_else(|| anyhow::anyhow!("missing"))?;
        assert_eq!(ok.rpc, "RefundOrder");
        assert_eq!(ok.caller, "anonymous");
        assert_eq!(ok.amount, 10);
        assert!(!ok.refund_id.is_empty());
        assert!(
            ok.events
                .iter()
                .all(|e| !e.trace_id.is_empty() && e.at.is_some()),
            "{:?}",
            ok.events
        );
        let transitions: Vec<_> = ok
            .events
            .iter()
            .map(|e| (e.state_before(), e.state_after()))
            .collect();
        assert_eq!(
            transitions,
            [
                (
                    pb::OperationState::Unspecified,
                    pb::OperationState::InFlight
                ),
                (pb::OperationState::InFlight, pb::OperationState::Succeeded)
            ]
        );

        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = app
                .client
                .list_operations(pb::ListOperationsRequest {
                    order_id: order.order_id.clone(),
                    page_size: 4,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            seen.extend(page.operations.into_iter().map(|o| o.operation_id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen.len(), 6);
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 6, "pages overlapped");

        let status = app
            .client
            .list_operations(pb::ListOperationsRequest {
                page_token: "garbage".into(),
                page_size: 900,
                ..Default::default()
            })
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("accepted"))?;
        assert_eq!(status.code(), Code::InvalidArgument);
        app.shutdown().await
    }
}

backend_test! {
    async fn more_concurrent_operations_than_store_connections_all_complete(
        db: Backend,
    ) -> anyhow::Result<()> {
        let app = spawn_app_with(db.options()).await?;
        // Each operation holds its order's lock across a slow Klarna call; there are more of them
        // than the PostgreSQL pool has connections, and each still needs the store to finish.
        let orders: Vec<_> = (0..48)
            .map(|_| captured_order(&app.sim.sim, 1_000))
            .collect();
        app.sim.sim.inject_fault(FaultSpec {
            method: Some("POST".into()),
            path: "/ordermanagement/v1/orders/*".into(),
            times: 48,
            kind: FaultKind::CommitThenHold { millis: 300 },
        });
        let calls = orders.iter().enumerate().map(|(i, order)| {
            let mut client = app.client.clone();
            let req = refund_request(&format!("wide-{i}"), &order.order_id, 10);
            async move { client.refund_order(req).await }
        });
        for result in join_all(calls).await {
            result?;
        }
        for order in &orders {
            assert_eq!(refunded(&app, &order.order_id), (10, 1));
        }
        Ok(())
    }
}

backend_test! {
    async fn a_slow_operation_keeps_its_lease_and_a_duplicate_waits(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = spawn_app_with(AppOptions {
            lease_secs: Some(1),
            reconcile_interval_ms: Some(50),
            ..db.options()
        })
        .await?;
        let order = captured_order(&app.sim.sim, 10_000);
        // Klarna takes three leases' time to answer; the lease must be renewed meanwhile, or the
        // reconciler or the duplicate below would take the operation over and resend it.
        fault_refunds(
            &app.sim.sim,
            &order.order_id,
            1,
            FaultKind::CommitThenHold { millis: 3_000 },
        );
        let mut first_client = app.client.clone();
        let first_req = refund_request("slow-lease", &order.order_id, 90);
        let first = tokio::spawn(async move { first_client.refund_order(first_req).await });
        // Wait until Klarna has the refund (the simulator logs it before holding the answer),
        // then past the first lease's end.
        wait_until(
            "the refund to reach Klarna",
            Duration::from_secs(10),
            async || {
                Ok::<_, anyhow::Error>((refund_posts(&app, &order.order_id) > 0).then_some(()))
            },
        )
        .await?;
        let ops = operations_under(&app, "slow-lease").await?;
        anyhow::ensure!(ops.len() == 1, "{ops:?}");
        let claimed = ops[0]
            .created_at
            .ok_or_else(|| anyhow::anyhow!("no created_at"))?;
        // The lease is the gateway's and runs on the wall clock, which a test cannot move (the
        // simulator's clock is Klarna's only): that the first lease has run out is itself the
        // condition, read on the clock the gateway reads. Half a lease later, a lease that was
        // not renewed would have been taken over by the reconciler (every 50 ms) or the
        // duplicate; Klarna still holds its answer for 1.5 s more.
        let claimed_at =
            std::time::UNIX_EPOCH + Duration::new(claimed.seconds as u64, claimed.nanos as u32);
        let first_lease_over = claimed_at + Duration::from_millis(1_500);
        wait_until(
            "the first lease to run out",
            Duration::from_secs(10),
            async || {
                Ok::<_, anyhow::Error>(
                    (std::time::SystemTime::now() >= first_lease_over).then_some(()),
                )
            },
        )
        .await?;
        let duplicate = app
            .client
            .refund_order(refund_request("slow-lease", &order.order_id, 90))
            .await;
        match duplicate {
            Err(status) => assert_reason(&status, Code::Aborted, "IDEMPOTENCY_KEY_IN_USE"),
            Ok(resp) => anyhow::bail!("the duplicate did not wait for the lease holder: {resp:?}"),
        }
        let first = first.await??.into_inner();
        assert!(!first.replayed);
        assert_eq!(
            refund_posts(&app, &order.order_id),
            1,
            "the operation was resent while its holder lived"
        );
        assert_eq!(refunded(&app, &order.order_id), (90, 1));
        app.shutdown().await
    }
}

backend_test! {
    async fn a_callers_deadline_answers_pending_and_the_operation_still_completes(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = spawn_app_with(db.options()).await?;
        let order = captured_order(&app.sim.sim, 10_000);
        fault_refunds(
            &app.sim.sim,
            &order.order_id,
            1,
            FaultKind::CommitThenHold { millis: 1_500 },
        );
        let mut req = tonic::Request::new(refund_request("deadline-1", &order.order_id, 55));
        req.set_timeout(Duration::from_millis(700));
        let status = app
            .client
            .refund_order(req)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("answered within the deadline"))?;
        // The gateway answered before tonic's deadline, and said how to go on.
        assert_reason(&status, Code::Unavailable, "OUTCOME_PENDING");
        assert!(status.get_error_details().retry_info().is_some());
        // The Klarna call outlived the caller and its outcome was recorded.
        let op = settled(&app, "deadline-1").await?;
        assert_eq!(op.state(), pb::OperationState::Succeeded);
        let retry = app
            .client
            .refund_order(refund_request("deadline-1", &order.order_id, 55))
            .await?
            .into_inner();
        assert!(retry.replayed);
        assert_eq!(retry.refund_id, op.refund_id);
        assert_eq!(refunded(&app, &order.order_id), (55, 1));
        app.shutdown().await
    }
}

backend_test! {
    async fn past_the_window_with_no_matching_refund_the_operation_requires_review(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = spawn_app_with(AppOptions {
            reconcile_interval_ms: Some(50),
            idempotency_window_secs: Some(0),
            ..db.options()
        })
        .await?;
        let order = captured_order(&app.sim.sim, 10_000);
        // Klarna fails every attempt without refunding: the outcome is unknown to the gateway,
        // but nothing happened at Klarna.
        fault_refunds(&app.sim.sim, &order.order_id, 10, status_fault(503));
        let status = app
            .client
            .refund_order(refund_request("review-1", &order.order_id, 700))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("accepted"))?;
        assert_reason(&status, Code::Unavailable, "OUTCOME_PENDING");
        app.sim.sim.clear_faults();
        // Past Klarna's window no refund matches: resending could refund twice if Klarna had
        // made one under another reference, so a person decides.
        let op = settled(&app, "review-1").await?;
        assert_eq!(op.state(), pb::OperationState::RequiresReview);
        assert_eq!(
            refunded(&app, &order.order_id),
            (0, 0),
            "the reconciler resent past the window"
        );
        let status = app
            .client
            .refund_order(refund_request("review-1", &order.order_id, 700))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("accepted"))?;
        assert_reason(&status, Code::Internal, "REQUIRES_REVIEW");
        app.shutdown().await
    }
}

/// Klarna executes the first attempt but its answer is lost, then answers `status` to every
/// resend: the caller gets `OUTCOME_PENDING`, the operation stays PENDING, and the retry (the
/// faults cleared) makes the one refund.
async fn every_resend_after_a_lost_answer_gets(
    mut app: TestApp,
    status: u16,
    key: &str,
) -> anyhow::Result<()> {
    let order = captured_order(&app.sim.sim, 10_000);
    fault_refunds(&app.sim.sim, &order.order_id, 1, FaultKind::CommitThenDrop);
    fault_refunds(&app.sim.sim, &order.order_id, 100, status_fault(status));
    let answer = app
        .client
        .refund_order(refund_request(key, &order.order_id, 700))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    assert_reason(&answer, Code::Unavailable, "OUTCOME_PENDING");
    assert_pending(&app, key).await?;
    the_retry_makes_the_one_refund(app, key, &order.order_id, 700).await
}

/// Asserts that the one operation under `key` is PENDING: its outcome is unknown, its key
/// not given back.
async fn assert_pending(app: &TestApp, key: &str) -> anyhow::Result<()> {
    let ops = operations_under(app, key).await?;
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(ops[0].state(), pb::OperationState::Pending, "{ops:?}");
    Ok(())
}

/// Asserts that `again` replays `first`: marked as a replay in its metadata and its message,
/// identical otherwise.
#[track_caller]
fn assert_replay_of(
    again: tonic::Response<pb::RefundOrderResponse>,
    first: &pb::RefundOrderResponse,
) {
    assert_eq!(
        again
            .metadata()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let again = again.into_inner();
    assert!(again.replayed);
    assert_eq!(
        pb::RefundOrderResponse {
            replayed: false,
            ..again
        },
        *first
    );
}

/// Clears Klarna's faults, retries `key` and expects the one refund of `amount` on the order.
async fn the_retry_makes_the_one_refund(
    app: TestApp,
    key: &str,
    order_id: &str,
    amount: i64,
) -> anyhow::Result<()> {
    app.sim.sim.clear_faults();
    let done = app
        .client
        .clone()
        .refund_order(refund_request(key, order_id, amount))
        .await?
        .into_inner();
    assert!(!done.refund_id.is_empty());
    assert_eq!(refunded(&app, order_id), (amount, 1));
    app.shutdown().await
}

backend_test! {
    /// A 408 may come after Klarna acted: the outcome is unknown (PENDING), never a stored
    /// failure, and the retry under the same key makes the one refund.
    async fn a_408_leaves_the_outcome_unknown_and_the_retry_makes_the_one_refund(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = spawn_app_with(db.options()).await?;
        let order = captured_order(&app.sim.sim, 10_000);
        // Every attempt the adapter makes gets a 408.
        fault_refunds(&app.sim.sim, &order.order_id, 100, status_fault(408));
        let status = app
            .client
            .refund_order(refund_request("timeout-408", &order.order_id, 700))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("accepted"))?;
        assert_reason(&status, Code::Unavailable, "OUTCOME_PENDING");
        the_retry_makes_the_one_refund(app, "timeout-408", &order.order_id, 700).await
    }
}

backend_test! {
    /// Once an attempt may have reached Klarna, a later 429 proves nothing: the operation stays
    /// PENDING (its key is not given back) and the retry finds the refund Klarna made.
    async fn a_429_after_a_possible_delivery_keeps_the_operation_pending(
        db: Backend,
    ) -> anyhow::Result<()> {
        let app = spawn_app_with(db.options()).await?;
        every_resend_after_a_lost_answer_gets(app, 429, "drop-then-429").await
    }
}

backend_test! {
    /// A 409 to a resend may be Klarna still executing the first attempt under the same key:
    /// the adapter asks again and gets the replay; while the 409s last, the operation stays
    /// PENDING (never FAILED while a refund may exist) and the retry finds the one refund.
    async fn a_409_after_a_possible_delivery_is_the_first_attempt_still_running(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = spawn_app_with(db.options()).await?;
        let order = captured_order(&app.sim.sim, 10_000);
        fault_refunds(&app.sim.sim, &order.order_id, 1, FaultKind::CommitThenDrop);
        fault_refunds(&app.sim.sim, &order.order_id, 1, status_fault(409));
        let done = app
            .client
            .refund_order(refund_request("drop-then-409", &order.order_id, 300))
            .await?
            .into_inner();
        assert!(!done.refund_id.is_empty());
        assert_eq!(refunded(&app, &order.order_id), (300, 1));
        assert_eq!(refund_posts(&app, &order.order_id), 3);

        every_resend_after_a_lost_answer_gets(app, 409, "drop-then-409s").await
    }
}

backend_test! {
    /// Retention drops stored answer bodies, never an operation's identity: a retry long after
    /// is a replay of the outcome (success with its refund id, or the final error code), never a
    /// second execution.
    async fn a_retry_after_retention_is_a_replay_never_a_second_refund(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = spawn_app_with(db.options()).await?;
        let order = captured_order(&app.sim.sim, 1_000);
        let first = app
            .client
            .refund_order(refund_request("late-1", &order.order_id, 700))
            .await?
            .into_inner();
        let refused = app
            .client
            .refund_order(refund_request("late-2", &order.order_id, 5_000))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("accepted"))?;
        assert_reason(&refused, Code::FailedPrecondition, "REFUND_NOT_ALLOWED");

        let store = app.second_store().await?;
        let purged = store
            .purge(time::OffsetDateTime::now_utc() + time::Duration::days(1))
            .await?;
        assert_eq!(purged, 2);

        let again = app
            .client
            .refund_order(refund_request("late-1", &order.order_id, 700))
            .await?;
        assert_replay_of(again, &first);
        let refused_again = app
            .client
            .refund_order(refund_request("late-2", &order.order_id, 5_000))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("accepted"))?;
        assert_eq!(refused_again.code(), Code::FailedPrecondition);
        assert_eq!(refused_again.message(), refused.message());
        assert_eq!(
            refused_again
                .metadata()
                .get("idempotent-replayed")
                .and_then(|v| v.to_str().ok()),
            Some("true")
        );
        assert_eq!(
            refund_posts(&app, &order.order_id),
            2,
            "a purged key was executed again"
        );
        assert_eq!(refunded(&app, &order.order_id), (700, 1));
        app.shutdown().await
    }
}

backend_test! {
    /// The reconciler resolves many unresolved operations in one pass, several at a time, and
    /// one whose resend keeps failing does not stop the others.
    async fn the_reconciler_resolves_500_pending_operations_and_one_failure_stops_none(
        db: Backend,
    ) -> anyhow::Result<()> {
        const ORDERS: usize = 50;
        const PER_ORDER: usize = 10;
        let app = spawn_app_with(AppOptions {
            reconcile_interval_ms: Some(200),
            ..db.options()
        })
        .await?;
        let orders: Vec<_> = (0..ORDERS)
            .map(|_| captured_order(&app.sim.sim, 10_000))
            .collect();
        let stuck = captured_order(&app.sim.sim, 10_000);
        // Every refund POST fails with a 503 until cleared: all 500 end PENDING.
        app.sim.sim.inject_fault(FaultSpec {
            method: Some("POST".into()),
            path: "/ordermanagement/v1/orders/*".into(),
            times: u32::MAX,
            kind: status_fault(503),
        });
        let calls = orders.iter().enumerate().flat_map(|(o, order)| {
            (0..PER_ORDER).map(move |i| (format!("many-{o}-{i}"), order.order_id.clone()))
        });
        let calls = calls.chain(std::iter::once((
            "stuck".to_owned(),
            stuck.order_id.clone(),
        )));
        let answers = join_all(calls.map(|(key, order_id)| {
            let mut client = app.client.clone();
            async move {
                client
                    .refund_order(refund_request(&key, &order_id, 10))
                    .await
            }
        }))
        .await;
        for answer in answers {
            let status = answer.err().ok_or_else(|| anyhow::anyhow!("accepted"))?;
            assert_reason(&status, Code::Unavailable, "OUTCOME_PENDING");
        }
        // Klarna recovers, except for one order.
        app.sim.sim.clear_faults();
        fault_refunds(&app.sim.sim, &stuck.order_id, u32::MAX, status_fault(503));
        wait_until(
            "the reconciler to resolve every operation",
            Duration::from_secs(120),
            async || {
                Ok::<_, anyhow::Error>(
                    orders
                        .iter()
                        .all(|o| refunded(&app, &o.order_id) == (10 * PER_ORDER as i64, PER_ORDER))
                        .then_some(()),
                )
            },
        )
        .await?;
        for (o, order) in orders.iter().enumerate() {
            for i in 0..PER_ORDER {
                let op = settled(&app, &format!("many-{o}-{i}")).await?;
                assert_eq!(op.state(), pb::OperationState::Succeeded);
            }
            assert_eq!(
                refunded(&app, &order.order_id),
                (10 * PER_ORDER as i64, PER_ORDER)
            );
        }
        let stuck_op = operations_under(&app, "stuck").await?;
        assert_eq!(stuck_op.len(), 1);
        assert!(
            matches!(
                stuck_op[0].state(),
                pb::OperationState::Pending | pb::OperationState::InFlight
            ),
            "{:?}",
            stuck_op[0].state()
        );
        assert_eq!(refunded(&app, &stuck.order_id), (0, 0));
        app.shutdown().await
    }
}
