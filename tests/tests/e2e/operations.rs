//! Reading one operation (`GetOperation`) and following it (`WatchOperation`): by id or by
//! what it was made with, never another caller's for a caller that may not see it, and a
//! PENDING refund watched until the reconciler settles it.

use klarna_sim::FaultKind;
use refund_gateway_proto::v1 as pb;
use refund_gateway_tests::{AppOptions, spawn_app_with};
use tonic::Code;

use crate::{
    assert_reason, bad_fields, captured_order, fault_refunds, refund_request, token_sha256,
    with_token,
};

const TILL: &str = "till-token-ops-5b1";
const CLERK: &str = "clerk-token-ops-77c";
const OPS: &str = "ops-token-ops-0e9";

/// A till that refunds and reads its own operations, a clerk that only reads operations, and
/// operations (everything).
fn callers() -> String {
    format!(
        "[[caller]]\nname = \"till\"\ntoken_sha256 = \"{}\"\nrpcs = [\"RefundOrder\", \"GetOperation\", \"WatchOperation\"]\n\
         klarna_accounts = [\"*\"]\n\n\
         [[caller]]\nname = \"clerk\"\ntoken_sha256 = \"{}\"\nrpcs = [\"GetOperation\"]\nklarna_accounts = [\"*\"]\n\n\
         [[caller]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nrpcs = [\"*\"]\nklarna_accounts = [\"*\"]\n",
        token_sha256(TILL),
        token_sha256(CLERK),
        token_sha256(OPS)
    )
}

fn by_key(rpc: &str, key: &str, caller: &str) -> pb::GetOperationRequest {
    pb::GetOperationRequest {
        rpc: rpc.into(),
        idempotency_key: key.into(),
        caller: caller.into(),
        ..Default::default()
    }
}

fn state(record: &pb::OperationRecord) -> pb::OperationState {
    pb::OperationState::try_from(record.state).unwrap_or(pb::OperationState::Unspecified)
}

backend_test! {
    async fn an_operation_is_read_by_id_or_by_key_and_only_by_whom_may_see_it(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = spawn_app_with(AppOptions {
            callers: Some(callers()),
            ..db.options()
        })
        .await?;
        let order = captured_order(&app.sim.sim, 10_000);
        let refund = app
            .client
            .refund_order(with_token(TILL, refund_request("ops-1", &order.order_id, 300))?)
            .await?
            .into_inner();

        let by_id = app
            .client
            .get_operation(with_token(
                TILL,
                pb::GetOperationRequest {
                    operation_id: refund.operation_id.to_uppercase(),
                    ..Default::default()
                },
            )?)
            .await?
            .into_inner()
            .operation
            .ok_or_else(|| anyhow::anyhow!("no operation"))?;
        assert_eq!(by_id.operation_id, refund.operation_id);
        assert_eq!(state(&by_id), pb::OperationState::Succeeded);
        assert_eq!(by_id.refund_id, refund.refund_id);
        assert!(by_id.events.len() >= 2, "{:?}", by_id.events);

        let own_key = app
            .client
            .get_operation(with_token(TILL, by_key("RefundOrder", "ops-1", ""))?)
            .await?
            .into_inner();
        assert_eq!(own_key.operation, Some(by_id.clone()));
        let for_ops = app
            .client
            .get_operation(with_token(OPS, by_key("RefundOrder", "ops-1", "till"))?)
            .await?
            .into_inner();
        assert_eq!(for_ops.operation, Some(by_id.clone()));

        // The clerk may read operations, but not another caller's: not found, not forbidden.
        for request in [
            by_key("RefundOrder", "ops-1", "till"),
            pb::GetOperationRequest {
                operation_id: refund.operation_id.clone(),
                ..Default::default()
            },
        ] {
            let hidden = app
                .client
                .get_operation(with_token(CLERK, request)?)
                .await
                .err()
                .ok_or_else(|| anyhow::anyhow!("the clerk saw the till's operation"))?;
            assert_reason(&hidden, Code::NotFound, "OPERATION_NOT_FOUND");
        }
        let unknown = app
            .client
            .get_operation(with_token(OPS, by_key("RefundOrder", "never-used", ""))?)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("an unknown operation was found"))?;
        assert_reason(&unknown, Code::NotFound, "OPERATION_NOT_FOUND");
        let bad = app
            .client
            .get_operation(with_token(OPS, by_key("Refund", "", ""))?)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("a malformed name was accepted"))?;
        assert_eq!(bad_fields(&bad), ["rpc", "idempotency_key"]);
        app.shutdown().await
    }
}

backend_test! {
    async fn a_pending_refund_is_watched_until_the_reconciler_settles_it(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = spawn_app_with(AppOptions {
            callers: Some(callers()),
            reconcile_interval_ms: Some(50),
            ..db.options()
        })
        .await?;
        let order = captured_order(&app.sim.sim, 10_000);
        // Klarna commits every attempt but the answer never arrives: the outcome is unknown.
        fault_refunds(&app.sim.sim, &order.order_id, 1_000, FaultKind::CommitThenDrop);
        let pending = app
            .client
            .refund_order(with_token(TILL, refund_request("watched-1", &order.order_id, 400))?)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("a dropped answer was reported as success"))?;
        assert_reason(&pending, Code::Unavailable, "OUTCOME_PENDING");

        let mut watch = app
            .client
            .watch_operation(with_token(
                TILL,
                pb::WatchOperationRequest {
                    rpc: "RefundOrder".into(),
                    idempotency_key: "watched-1".into(),
                    ..Default::default()
                },
            )?)
            .await?
            .into_inner();
        let first = watch
            .message()
            .await?
            .and_then(|m| m.operation)
            .ok_or_else(|| anyhow::anyhow!("the watch sent nothing"))?;
        assert!(
            matches!(
                state(&first),
                pb::OperationState::Pending | pb::OperationState::InFlight
            ),
            "{first:?}"
        );
        // Klarna answers again: the reconciler's next resend settles the refund.
        app.sim.sim.clear_faults();
        let mut last = first;
        while let Some(message) = watch.message().await? {
            let record = message
                .operation
                .ok_or_else(|| anyhow::anyhow!("a message without its operation"))?;
            assert_ne!(record, last, "the watch repeated an unchanged record");
            last = record;
        }
        assert_eq!(state(&last), pb::OperationState::Succeeded, "{last:?}");
        assert!(!last.refund_id.is_empty());
        app.shutdown().await
    }
}
