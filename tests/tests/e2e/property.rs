//! Property: whatever interleaving of Klarna faults and caller retries happens, Klarna ends up
//! with exactly one refund per distinct idempotency key, and its refunded total is the sum of
//! those keys' amounts.

use std::collections::BTreeMap;
use std::time::Duration;

use klarna_sim::{FaultKind, FaultSpec};
use proptest::prelude::*;
use refund_gateway_tests::{AppOptions, fresh_postgres_database, spawn_app_with};
use tonic::Code;

use crate::{captured_order, refund_request, status_fault};

/// What Klarna does to the next refund attempts.
#[derive(Debug, Clone)]
enum Fault {
    None,
    /// Answer 503 to the next `n` attempts (the adapter makes up to 4 per call).
    Unavailable(u32),
    /// Commit the next `n` attempts, then drop their connections before answering.
    CommitThenDrop(u32),
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        Just(Fault::None),
        (1u32..7).prop_map(Fault::Unavailable),
        (1u32..7).prop_map(Fault::CommitThenDrop),
    ]
}

/// Each key always asks for the same amount, so a key means one request.
fn amount(key: usize) -> i64 {
    100 * (key as i64 + 1)
}

async fn run(steps: Vec<(usize, Fault)>, database_url: Option<String>) -> anyhow::Result<()> {
    let mut app = spawn_app_with(AppOptions {
        database_url,
        ..AppOptions::default()
    })
    .await?;
    let order = captured_order(&app.sim.sim, 1_000_000);
    let path = format!("/ordermanagement/v1/orders/{}/refunds", order.order_id);
    for (key, fault) in &steps {
        app.sim.sim.clear_faults();
        let kind = match fault {
            Fault::None => None,
            Fault::Unavailable(n) => Some((*n, status_fault(503))),
            Fault::CommitThenDrop(n) => Some((*n, FaultKind::CommitThenDrop)),
        };
        if let Some((times, kind)) = kind {
            app.sim.sim.inject_fault(FaultSpec {
                method: Some("POST".into()),
                path: path.clone(),
                times,
                kind,
            });
        }
        // Any answer is acceptable here; only the end state is checked.
        let _ = app
            .client
            .refund_order(refund_request(
                &format!("p-{key}"),
                &order.order_id,
                amount(*key),
            ))
            .await;
    }
    app.sim.sim.clear_faults();

    // Every caller eventually retries until it gets an answer.
    let mut refund_ids = BTreeMap::new();
    for key in steps
        .iter()
        .map(|(k, _)| *k)
        .collect::<std::collections::BTreeSet<_>>()
    {
        let mut tries = 0;
        let id = loop {
            match app
                .client
                .refund_order(refund_request(
                    &format!("p-{key}"),
                    &order.order_id,
                    amount(key),
                ))
                .await
            {
                Ok(resp) => break resp.into_inner().refund_id,
                Err(status)
                    if matches!(status.code(), Code::Unavailable | Code::Aborted) && tries < 50 =>
                {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(status) => anyhow::bail!("key p-{key} never settled: {status:?}"),
            }
        };
        refund_ids.insert(key, id);
    }

    let json = app
        .sim
        .sim
        .order_json(&order.order_id)
        .ok_or_else(|| anyhow::anyhow!("order gone"))?;
    let expected: i64 = refund_ids.keys().map(|k| amount(*k)).sum();
    anyhow::ensure!(
        json["refunded_amount"] == expected,
        "refunded {} != {expected} for {steps:?}",
        json["refunded_amount"]
    );
    let refunds = json["refunds"].as_array().map_or(0, Vec::len);
    anyhow::ensure!(
        refunds == refund_ids.len(),
        "{refunds} refunds for {} keys: {steps:?}",
        refund_ids.len()
    );
    let mut ids: Vec<_> = refund_ids.values().cloned().collect();
    ids.sort();
    ids.dedup();
    anyhow::ensure!(
        ids.len() == refund_ids.len(),
        "two keys share a refund: {refund_ids:?}"
    );
    app.shutdown().await
}

proptest! {
    // Each case starts a gateway and a simulator; a couple of dozen cases per store cover the
    // interleavings without making the suite slow.
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn refunded_total_is_the_sum_over_distinct_keys_on_sqlite(steps in proptest::collection::vec((0usize..4, fault()), 1..8)) {
        let runtime = tokio::runtime::Runtime::new().map_err(|e| TestCaseError::fail(e.to_string()))?;
        runtime.block_on(run(steps, None)).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
    }

    #[test]
    fn refunded_total_is_the_sum_over_distinct_keys_on_postgres(steps in proptest::collection::vec((0usize..4, fault()), 1..8)) {
        let Some(url) = fresh_postgres_database().map_err(|e| TestCaseError::fail(format!("{e:#}")))? else {
            return Ok(());
        };
        let runtime = tokio::runtime::Runtime::new().map_err(|e| TestCaseError::fail(e.to_string()))?;
        runtime.block_on(run(steps, Some(url))).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
    }
}
