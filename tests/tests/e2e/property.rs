//! Property: whatever interleaving of Klarna faults, concurrent caller retries and reuse of a
//! key with another amount happens, each key belongs to the one request that claimed it first;
//! Klarna ends up with exactly one refund per distinct key, of that request's amount, so the
//! refunded total is the sum over distinct keys of their amounts; and a key reused with another
//! amount is refused with `IDEMPOTENCY_KEY_REUSED` and never refunds (never even reaches
//! Klarna).
//!
//! One gateway and one simulator per backend serve every case (starting them per case would
//! cost more than the cases); each case works on a fresh order under keys of its own, so cases
//! do not see each other's refunds, faults or keys.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::future::join_all;
use klarna_sim::{FaultKind, FaultSpec, SimConfig};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use refund_gateway_proto::v1 as pb;
use refund_gateway_tests::{AppOptions, TestApp, spawn_app_with, wait_until};
use tonic::Code;

use crate::{assert_reason, captured_order, refund_request, status_fault};

/// Cases per backend.
const CASES: u32 = 64;

/// Distinct keys a case may use.
const KEYS: usize = 3;

/// What Klarna does to the next refund attempts on the case's order (of every call in the
/// round, the adapter's resends and the reconciler's included).
#[derive(Debug, Clone)]
enum Fault {
    None,
    /// Answer 503 to the next `n` attempts (the adapter makes up to 4 per call).
    Unavailable(u32),
    /// Commit the next `n` attempts, then drop their connections before answering.
    CommitThenDrop(u32),
    /// Commit the next `n` attempts, then hold their answers for 150 ms, so that the calls
    /// of the round overlap with one in flight.
    CommitThenHold(u32),
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        Just(Fault::None),
        // More than the adapter's 4 attempts at times: some calls end with an unknown outcome
        // (PENDING) for a retry or the reconciler to resolve.
        (1u32..7).prop_map(Fault::Unavailable),
        (1u32..7).prop_map(Fault::CommitThenDrop),
        (1u32..4).prop_map(Fault::CommitThenHold),
    ]
}

/// One caller's call: which key, with which of the key's two amounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Call {
    key: usize,
    variant: usize,
}

impl Call {
    /// Distinct for every key and variant, so an amount names the request.
    fn amount(self) -> i64 {
        amount(self.key, self.variant)
    }
}

fn amount(key: usize, variant: usize) -> i64 {
    100 * (key as i64 + 1) + variant as i64
}

fn call() -> impl Strategy<Value = Call> {
    // Mostly the key's first amount (retries of one request), sometimes the other (reuse).
    (0..KEYS, prop_oneof![3 => Just(0usize), 1 => Just(1usize)])
        .prop_map(|(key, variant)| Call { key, variant })
}

/// Calls sent all at once, after arming `fault`: the same call twice is a concurrent retry,
/// one key with both amounts a concurrent reuse.
#[derive(Debug, Clone)]
struct Round {
    fault: Fault,
    calls: Vec<Call>,
}

fn rounds() -> impl Strategy<Value = Vec<Round>> {
    proptest::collection::vec(
        (fault(), proptest::collection::vec(call(), 1..5))
            .prop_map(|(fault, calls)| Round { fault, calls }),
        1..5,
    )
}

/// Runs one case on `app`, on an order of its own, and checks the invariant.
async fn case(app: &TestApp, rounds: &[Round]) -> anyhow::Result<()> {
    let sim = &app.sim.sim;
    let order = captured_order(sim, 1_000_000);
    let path = format!("/ordermanagement/v1/orders/{}/refunds", order.order_id);
    let case_id = uuid::Uuid::new_v4().simple().to_string();
    let key_name = |key: usize| format!("p-{case_id}-{key}");

    // The calls, round by round, each answer kept.
    let mut answered = Vec::new();
    for round in rounds {
        sim.clear_faults();
        let armed = match round.fault {
            Fault::None => None,
            Fault::Unavailable(n) => Some((n, status_fault(503))),
            Fault::CommitThenDrop(n) => Some((n, FaultKind::CommitThenDrop)),
            Fault::CommitThenHold(n) => Some((n, FaultKind::CommitThenHold { millis: 150 })),
        };
        if let Some((times, kind)) = armed {
            sim.inject_fault(FaultSpec {
                method: Some("POST".into()),
                path: path.clone(),
                times,
                kind,
            });
        }
        let answers = join_all(round.calls.iter().map(|call| {
            let mut client = app.client.clone();
            let request = refund_request(&key_name(call.key), &order.order_id, call.amount());
            async move { client.refund_order(request).await }
        }))
        .await;
        answered.extend(round.calls.iter().copied().zip(answers));
    }
    sim.clear_faults();

    // Each key belongs to one of the requests of the first round that used it: the one that
    // claimed it. Read which from the audit trail.
    let mut owner: BTreeMap<usize, pb::OperationRecord> = BTreeMap::new();
    for key in answered.iter().map(|(c, _)| c.key).collect::<BTreeSet<_>>() {
        let ops = app
            .client
            .clone()
            .list_operations(pb::ListOperationsRequest {
                idempotency_key: key_name(key),
                ..Default::default()
            })
            .await?
            .into_inner()
            .operations;
        anyhow::ensure!(ops.len() == 1, "key {key}: {ops:?} for {rounds:?}");
        let op = ops
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("none"))?;
        let first_round = rounds
            .iter()
            .find(|r| r.calls.iter().any(|c| c.key == key))
            .ok_or_else(|| anyhow::anyhow!("key {key} was never used"))?;
        anyhow::ensure!(
            first_round
                .calls
                .iter()
                .any(|c| c.key == key && c.amount() == op.amount),
            "key {key} belongs to {}, which its first round never sent: {rounds:?}",
            op.amount
        );
        owner.insert(key, op);
    }

    // Every call under a key with another amount than its owner's was refused as a reuse;
    // the owner's own calls were answered, or told to retry.
    for (call, answer) in &answered {
        let owner_amount = owner[&call.key].amount;
        match answer {
            Err(status) if call.amount() != owner_amount => {
                assert_reason(status, Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED");
            }
            Ok(response) => anyhow::ensure!(
                call.amount() == owner_amount,
                "{call:?} was accepted under a key that is {owner_amount}'s: {response:?}"
            ),
            Err(status) => anyhow::ensure!(
                matches!(status.code(), Code::Unavailable | Code::Aborted),
                "{call:?}: {status:?} for {rounds:?}"
            ),
        }
    }

    // Every caller retries until it has an answer; a reuse is refused even now.
    let mut refund_ids = BTreeMap::new();
    for (&key, op) in &owner {
        let request = refund_request(&key_name(key), &order.order_id, op.amount);
        let refund_id = wait_until(
            &format!("an answer for key {key}"),
            Duration::from_secs(30),
            async || match app.client.clone().refund_order(request.clone()).await {
                Ok(response) => Ok(Some(response.into_inner().refund_id)),
                Err(status) if matches!(status.code(), Code::Unavailable | Code::Aborted) => {
                    Ok(None)
                }
                Err(status) => Err(anyhow::anyhow!("key {key}: {status:?} for {rounds:?}")),
            },
        )
        .await?;
        let answered_before: BTreeSet<_> = answered
            .iter()
            .filter(|(c, _)| c.key == key)
            .filter_map(|(_, a)| a.as_ref().ok())
            .map(|r| r.get_ref().refund_id.clone())
            .collect();
        anyhow::ensure!(
            answered_before.iter().all(|id| *id == refund_id),
            "key {key} answered {answered_before:?} and now {refund_id}"
        );
        refund_ids.insert(key, refund_id);

        let owner_variant = (op.amount - amount(key, 0)) as usize;
        let reuse = refund_request(
            &key_name(key),
            &order.order_id,
            amount(key, 1 - owner_variant),
        );
        let status = app
            .client
            .clone()
            .refund_order(reuse)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("key {key} was reused with another amount"))?;
        assert_reason(&status, Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED");
    }

    // Klarna: one refund per key, of its owner's amount; nothing else was ever sent.
    let json = sim
        .order_json(&order.order_id)
        .ok_or_else(|| anyhow::anyhow!("order gone"))?;
    let expected: i64 = owner.values().map(|op| op.amount).sum();
    anyhow::ensure!(
        json["refunded_amount"] == expected,
        "refunded {} != {expected} for {rounds:?}",
        json["refunded_amount"]
    );
    let refunds = json["refunds"].as_array().cloned().unwrap_or_default();
    let mut klarna: Vec<(String, i64)> = refunds
        .iter()
        .map(|r| {
            (
                r["refund_id"].as_str().unwrap_or_default().to_owned(),
                r["refunded_amount"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    let mut ours: Vec<(String, i64)> = owner
        .iter()
        .map(|(key, op)| (refund_ids[key].clone(), op.amount))
        .collect();
    klarna.sort();
    ours.sort();
    anyhow::ensure!(
        klarna == ours,
        "Klarna holds {klarna:?}, the gateway answered {ours:?} for {rounds:?}"
    );
    let sent_for: BTreeMap<&str, i64> = owner
        .values()
        .map(|op| (op.operation_id.as_str(), op.amount))
        .collect();
    for post in sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == path)
    {
        let key = post.header("klarna-idempotency-key").unwrap_or_default();
        let body: serde_json::Value = serde_json::from_str(&post.body)?;
        anyhow::ensure!(
            sent_for.get(key).copied() == body["refunded_amount"].as_i64(),
            "Klarna was sent {} under {key}, owners {sent_for:?}",
            post.body
        );
    }
    Ok(())
}

backend_test! {
    /// At least [`CASES`] cases on one gateway; the cases run one after the other (their calls
    /// run concurrently), and a failing case is shrunk on the same gateway.
    fn refunded_total_is_the_sum_over_distinct_keys(db: Backend) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let app = runtime.block_on(spawn_app_with(AppOptions {
            // Every case's calls stay in the log (a case checks what was sent for its order).
            sim: SimConfig {
                request_log_capacity: 1_000_000,
                ..SimConfig::default()
            },
            // The reconciler resolves PENDING operations while later rounds run.
            reconcile_interval_ms: Some(100),
            ..db.options()
        }))?;
        let mut runner = TestRunner::new(ProptestConfig {
            cases: CASES,
            max_shrink_iters: 64,
            // Cases depend on a running gateway; a regression file would not replay one.
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        let started = Instant::now();
        let result = runner.run(&rounds(), |rounds| {
            runtime
                .block_on(case(&app, &rounds))
                .map_err(|e| TestCaseError::fail(format!("{e:#}")))
        });
        println!(
            "{CASES} cases on {} in {:.1?}",
            if db.database_url().is_some() {
                "PostgreSQL"
            } else {
                "SQLite"
            },
            started.elapsed()
        );
        runtime.block_on(app.shutdown())?;
        result.map_err(|e| anyhow::anyhow!("{e}"))
    }
}
