//! The operator service: what needs attention, and settling a REQUIRES_REVIEW operation by
//! hand, checked against Klarna for an order refund; granted by `operator = true` alone.

use std::time::Duration;

use klarna_sim::RunningSimulator;
use refund_gateway_proto::v1 as pb;
use refund_gateway_proto::v1::operator_service_client::OperatorServiceClient;
use refund_gateway_tests::{AppOptions, TestApp, spawn_app_with, wait_until};
use tonic::Code;

use crate::{
    assert_reason, bad_fields, captured_order, fault_refunds, refund_request, status_fault,
    token_sha256, with_token,
};

const TILL: &str = "till-token-operator-41a";
const ANA: &str = "ana-token-operator-9f3";

/// A till granted every RPC (but not the operator's), and an operator who reads operations.
fn callers() -> String {
    format!(
        "[[caller]]\nname = \"till\"\ntoken_sha256 = \"{}\"\nrpcs = [\"*\"]\nklarna_accounts = [\"*\"]\n\n\
         [[caller]]\nname = \"ana\"\ntoken_sha256 = \"{}\"\nrpcs = [\"GetOperation\"]\nklarna_accounts = [\"*\"]\noperator = true\n",
        token_sha256(TILL),
        token_sha256(ANA)
    )
}

async fn operation(app: &TestApp, key: &str) -> anyhow::Result<pb::OperationRecord> {
    app.client
        .clone()
        .get_operation(with_token(
            TILL,
            pb::GetOperationRequest {
                rpc: "RefundOrder".into(),
                idempotency_key: key.into(),
                ..Default::default()
            },
        )?)
        .await?
        .into_inner()
        .operation
        .ok_or_else(|| anyhow::anyhow!("no operation {key}"))
}

/// A refund of `amount` on a new order that ends REQUIRES_REVIEW: Klarna failed every
/// attempt, and past the (zero) idempotency window the reconciler may not resend.
async fn in_review(
    app: &TestApp,
    key: &str,
    amount: i64,
) -> anyhow::Result<(String, pb::OperationRecord)> {
    let order = captured_order(&app.sim.sim, 10_000);
    fault_refunds(&app.sim.sim, &order.order_id, 10, status_fault(503));
    let status = app
        .client
        .clone()
        .refund_order(with_token(
            TILL,
            refund_request(key, &order.order_id, amount),
        )?)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    assert_reason(&status, Code::Unavailable, "OUTCOME_PENDING");
    let op = wait_until(
        &format!("operation {key} to require review"),
        Duration::from_secs(30),
        async || -> anyhow::Result<Option<pb::OperationRecord>> {
            let op = operation(app, key).await?;
            Ok((op.state == pb::OperationState::RequiresReview as i32).then_some(op))
        },
    )
    .await?;
    Ok((order.order_id, op))
}

/// A refund made at Klarna behind the gateway's back; its id.
async fn refund_at_klarna(
    sim: &RunningSimulator,
    order_id: &str,
    amount: i64,
) -> anyhow::Result<String> {
    let answer = reqwest::Client::new()
        .post(format!(
            "{}/ordermanagement/v1/orders/{order_id}/refunds",
            sim.base_url
        ))
        .basic_auth(sim.username(), Some(sim.password()))
        .json(&serde_json::json!({"refunded_amount": amount}))
        .send()
        .await?;
    anyhow::ensure!(answer.status().as_u16() == 201, "{:?}", answer.status());
    answer
        .headers()
        .get("refund-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no Refund-Id"))
}

/// A reconciliation of the `default` account over the last day (the app also has a partner
/// account, so the account is named).
fn reconcile_default() -> pb::ReconcileRequest {
    pb::ReconcileRequest {
        klarna_account: "default".into(),
        ..Default::default()
    }
}

fn resolve(
    op: &pb::OperationRecord,
    outcome: pb::ResolutionOutcome,
    refund_id: &str,
) -> pb::ResolveOperationRequest {
    pb::ResolveOperationRequest {
        operation_id: op.operation_id.clone(),
        outcome: outcome.into(),
        refund_id: refund_id.into(),
        reason: "checked in Klarna's merchant portal (ticket OPS-12)".into(),
    }
}

backend_test! {
    async fn an_operator_settles_what_requires_review_checked_against_klarna(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = spawn_app_with(AppOptions {
            callers: Some(callers()),
            reconcile_interval_ms: Some(50),
            idempotency_window_secs: Some(0),
            ..db.options()
        })
        .await?;
        let (order_a, a) = in_review(&app, "review-a", 700).await?;
        let (order_b, b) = in_review(&app, "review-b", 300).await?;
        app.sim.sim.clear_faults();
        let operator = OperatorServiceClient::connect(app.grpc_url.clone()).await?;

        // Every RPC is not the operator's permission.
        let refused = operator.clone().list_attention(with_token(TILL, pb::ListAttentionRequest::default())?)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("a caller without operator = true listed"))?;
        assert_reason(&refused, Code::PermissionDenied, "RPC_NOT_PERMITTED");
        let attention = operator.clone().list_attention(with_token(ANA, pb::ListAttentionRequest::default())?)
            .await?
            .into_inner();
        let in_review_ids: Vec<&str> = attention
            .requires_review
            .iter()
            .map(|o| o.operation_id.as_str())
            .collect();
        assert_eq!(in_review_ids, [a.operation_id.as_str(), b.operation_id.as_str()]);

        // Succeeded needs Klarna's refund id, and Klarna must list it with the amount.
        let no_id = operator.clone().resolve_operation(with_token(ANA, resolve(&a, pb::ResolutionOutcome::Succeeded, ""))?)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("settled as succeeded without a refund id"))?;
        assert_eq!(bad_fields(&no_id), ["refund_id"]);
        let unknown = operator.clone().resolve_operation(with_token(
                ANA,
                resolve(&a, pb::ResolutionOutcome::Succeeded, "9a1b2c3d-0000-4000-8000-000000000000"),
            )?)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("settled with a refund Klarna does not have"))?;
        assert_reason(&unknown, Code::FailedPrecondition, "REFUND_NOT_AT_KLARNA");
        let other_amount = refund_at_klarna(&app.sim, &order_b, 250).await?;
        let wrong = operator.clone().resolve_operation(with_token(ANA, resolve(&b, pb::ResolutionOutcome::Succeeded, &other_amount))?)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("settled with a refund of another amount"))?;
        assert_reason(&wrong, Code::FailedPrecondition, "REFUND_NOT_AT_KLARNA");

        let made = refund_at_klarna(&app.sim, &order_a, 700).await?;
        let settled = operator.clone().resolve_operation(with_token(ANA, resolve(&a, pb::ResolutionOutcome::Succeeded, &made))?)
            .await?
            .into_inner()
            .operation
            .ok_or_else(|| anyhow::anyhow!("no operation"))?;
        assert_eq!(settled.state, pb::OperationState::Succeeded as i32);
        assert_eq!(settled.refund_id, made);
        let last = settled.events.last().ok_or_else(|| anyhow::anyhow!("no events"))?;
        assert!(
            last.detail.contains("ana") && last.detail.contains("OPS-12"),
            "{last:?}"
        );
        let failed = operator.clone().resolve_operation(with_token(ANA, resolve(&b, pb::ResolutionOutcome::Failed, ""))?)
            .await?
            .into_inner();
        assert_eq!(
            failed.operation.map(|o| o.state),
            Some(pb::OperationState::Failed as i32)
        );

        // The callers' retries answer what the operator decided.
        let replay = app
            .client
            .refund_order(with_token(TILL, refund_request("review-a", &order_a, 700))?)
            .await?
            .into_inner();
        assert!(replay.replayed);
        assert_eq!(replay.refund_id, made);
        let replay_b = app
            .client
            .refund_order(with_token(TILL, refund_request("review-b", &order_b, 300))?)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("a failed operation answered success"))?;
        assert_reason(&replay_b, Code::FailedPrecondition, "RESOLVED_AS_FAILED");

        // Only from REQUIRES_REVIEW.
        let again = operator.clone().resolve_operation(with_token(ANA, resolve(&a, pb::ResolutionOutcome::Failed, ""))?)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("a settled operation was settled again"))?;
        assert_reason(&again, Code::FailedPrecondition, "OPERATION_NOT_IN_REVIEW");
        let attention = operator.clone().list_attention(with_token(ANA, pb::ListAttentionRequest::default())?)
            .await?
            .into_inner();
        assert!(attention.requires_review.is_empty(), "{attention:?}");
        app.shutdown().await
    }
}

backend_test! {
    async fn reconcile_finds_a_refund_made_behind_the_gateways_back(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = spawn_app_with(AppOptions {
            callers: Some(callers()),
            ..db.options()
        })
        .await?;
        let mut operator = OperatorServiceClient::connect(app.grpc_url.clone()).await?;
        let order = captured_order(&app.sim.sim, 10_000);
        let other = captured_order(&app.sim.sim, 10_000);
        for (key, order_id) in [("rec-1", &order.order_id), ("rec-2", &other.order_id)] {
            app.client
                .refund_order(with_token(TILL, refund_request(key, order_id, 400))?)
                .await?;
        }
        let clean = operator
            .reconcile(with_token(ANA, reconcile_default())?)
            .await?
            .into_inner();
        assert_eq!(
            (clean.operations_checked, clean.resources_checked),
            (2, 2)
        );
        assert!(clean.mismatches.is_empty() && clean.unread.is_empty(), "{clean:?}");

        let stranger = refund_at_klarna(&app.sim, &order.order_id, 150).await?;
        let report = operator
            .reconcile(with_token(ANA, reconcile_default())?)
            .await?
            .into_inner();
        assert_eq!(report.klarna_account, "default");
        assert_eq!(report.mismatches.len(), 1, "{report:?}");
        let found = &report.mismatches[0];
        assert_eq!(found.kind, pb::MismatchKind::UnknownToGateway as i32);
        assert_eq!(
            (found.order_id.as_str(), found.refund_id.as_str(), found.klarna_amount),
            (order.order_id.as_str(), stranger.as_str(), 150)
        );
        // Outside the window nothing is read.
        let mut long_ago = pb::ReconcileRequest {
            to: Some(Default::default()),
            ..reconcile_default()
        };
        if let Some(to) = long_ago.to.as_mut() {
            to.seconds = 1_000_000_000;
        }
        let before = operator
            .reconcile(with_token(ANA, long_ago)?)
            .await?
            .into_inner();
        assert_eq!((before.operations_checked, before.mismatches.len()), (0, 0));
        let unnamed = operator
            .reconcile(with_token(ANA, pb::ReconcileRequest::default())?)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("reconciled an unnamed account of several"))?;
        assert_eq!(bad_fields(&unnamed), ["klarna_account"]);
        let refused = operator
            .reconcile(with_token(TILL, reconcile_default())?)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("a service reconciled"))?;
        assert_reason(&refused, Code::PermissionDenied, "RPC_NOT_PERMITTED");
        app.shutdown().await
    }
}
