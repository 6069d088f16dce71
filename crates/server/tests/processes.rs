//! The exactly-once protocol (see docs/architecture.md#exactly-once) across real
//! `refund-gateway` processes.
//!
//! In-process tests can drop a future or abort a task, but only a separate process can be
//! killed the way a crashed host kills it: a SIGKILL that runs no destructor, flushes nothing
//! and leaves a claim IN_FLIGHT in the database while Klarna has already committed the refund.
//! Likewise, two replicas sharing one PostgreSQL database only race for real when they are two
//! processes with their own pools, tasks and clocks. These tests run the built binary against a
//! Klarna simulator started in the test process and check, on the simulator's side, that
//! exactly one refund exists.

mod common;

use std::os::unix::process::ExitStatusExt;

use anyhow::{anyhow, bail, ensure};
use klarna_sim::{FaultKind, FaultSpec, LoggedRequest, OrderSeed, RunningSimulator, SimConfig};
use refund_gateway_proto::v1::{
    ListOperationsRequest, OperationRecord, OperationState, RefundOrderRequest, RefundOrderResponse,
};
use tonic::Code;
use tonic_types::StatusExt;

use common::{
    Client, GatewayProcess, WAIT_LIMIT, klarna_env, postgres_admin_url, psql, wait_until,
    with_database, write_config, write_config_with,
};

fn refunds_path(order_id: &str) -> String {
    format!("/ordermanagement/v1/orders/{order_id}/refunds")
}

/// The POSTs the simulator received for `path`, oldest first.
fn posts_to(sim: &RunningSimulator, path: &str) -> Vec<LoggedRequest> {
    sim.sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == path)
        .collect()
}

/// The refunds the simulator holds on the order, and its `refunded_amount`.
fn sim_refunds(sim: &RunningSimulator, order_id: &str) -> anyhow::Result<(Vec<String>, i64)> {
    let order = sim
        .sim
        .order_json(order_id)
        .ok_or_else(|| anyhow!("simulator has no order {order_id}"))?;
    let refunds = order["refunds"]
        .as_array()
        .ok_or_else(|| anyhow!("order without refunds array: {order}"))?
        .iter()
        .map(|r| {
            r["refund_id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("refund without refund_id: {r}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let refunded_amount = order["refunded_amount"]
        .as_i64()
        .ok_or_else(|| anyhow!("order without refunded_amount: {order}"))?;
    Ok((refunds, refunded_amount))
}

/// Asserts that every POST carried the same, non-empty `Klarna-Idempotency-Key`, and returns it.
fn one_klarna_key(posts: &[LoggedRequest]) -> anyhow::Result<String> {
    let keys: Vec<Option<&str>> = posts
        .iter()
        .map(|p| p.header("Klarna-Idempotency-Key"))
        .collect();
    let first = keys
        .first()
        .copied()
        .flatten()
        .filter(|k| !k.is_empty())
        .ok_or_else(|| anyhow!("first POST without Klarna-Idempotency-Key: {keys:?}"))?;
    ensure!(
        keys.iter().all(|k| *k == Some(first)),
        "POSTs carried different Klarna-Idempotency-Keys: {keys:?}"
    );
    Ok(first.to_owned())
}

/// The ErrorInfo reason of a status, if it has one.
fn reason(status: &tonic::Status) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
}

async fn operation_by_key(client: &mut Client, key: &str) -> anyhow::Result<Vec<OperationRecord>> {
    Ok(client
        .list_operations(ListOperationsRequest {
            idempotency_key: key.to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .operations)
}

/// Seeds a captured order whose next refund Klarna commits (remembering it under its key) and
/// then holds the answer far longer than a test runs, so the gateway can be killed while it
/// waits. Returns the order, its refunds path and the refund request under `key`.
fn held_refund(
    sim: &RunningSimulator,
    key: &str,
    amount: i64,
) -> (String, String, RefundOrderRequest) {
    let order_id = sim
        .sim
        .seed_order(OrderSeed {
            order_amount: 10_000,
            captures: vec![10_000],
            ..Default::default()
        })
        .order_id;
    let path = refunds_path(&order_id);
    sim.sim.inject_fault(FaultSpec {
        method: Some("POST".into()),
        path: path.clone(),
        times: 1,
        kind: FaultKind::CommitThenHold { millis: 60_000 },
    });
    let request = RefundOrderRequest {
        idempotency_key: key.into(),
        order_id: order_id.clone(),
        refunded_amount: amount,
        ..Default::default()
    };
    (order_id, path, request)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_klarna_holds_the_refund_then_restart_finds_exactly_one_refund()
-> anyhow::Result<()> {
    const KEY: &str = "crash-1";
    const AMOUNT: i64 = 2_500;

    let sim = klarna_sim::spawn(SimConfig::default()).await?;
    let (order_id, path, request) = held_refund(&sim, KEY, AMOUNT);

    let work = tempfile::tempdir()?;
    let config = write_config(work.path(), &work.path().join("data"))?;
    let env = klarna_env(&sim);

    // First life: the call reaches Klarna, which commits, and then the process is killed.
    kill_while_klarna_holds_the_refund(&sim, &order_id, &path, &config, &env, &request).await?;
    sim.sim.clear_faults();

    // Second life on the same data: the claim is IN_FLIGHT with an expired lease; the
    // reconciler resends under the same Klarna key and Klarna replays its 201.
    let mut second = GatewayProcess::start("gateway (second run)", &config, &env).await?;
    let mut client = second.client().await?;
    let record = wait_until(
        "the reconciler to settle the operation",
        WAIT_LIMIT,
        async || {
            let records = operation_by_key(&mut client, KEY).await?;
            ensure!(
                records.len() <= 1,
                "several operations for one key: {records:?}"
            );
            let Some(record) = records.into_iter().next() else {
                return Ok(None);
            };
            let state = record.state();
            if state == OperationState::Succeeded {
                return Ok(Some(record));
            }
            ensure!(
                matches!(state, OperationState::InFlight | OperationState::Pending),
                "operation ended {state:?}, not SUCCEEDED: {record:?}"
            );
            Ok(None)
        },
    )
    .await?;

    // The caller's retry under the same key gets the settled outcome.
    let retried: RefundOrderResponse = client.refund_order(request.clone()).await?.into_inner();
    let (refunds, refunded_amount) = sim_refunds(&sim, &order_id)?;
    ensure!(
        refunds.len() == 1,
        "expected exactly one refund on the order, found {refunds:?}"
    );
    ensure!(
        refunded_amount == AMOUNT,
        "refunded_amount {refunded_amount}, expected {AMOUNT}"
    );
    ensure!(
        retried.refund_id == refunds[0] && record.refund_id == refunds[0],
        "refund ids differ: retry {:?}, ListOperations {:?}, Klarna {:?}",
        retried.refund_id,
        record.refund_id,
        refunds[0]
    );
    ensure!(
        retried.replayed,
        "the retry should be a replay: {retried:?}"
    );

    let posts = posts_to(&sim, &path);
    ensure!(
        posts.len() >= 2,
        "expected the original POST and a resend, got {}",
        posts.len()
    );
    let klarna_key = one_klarna_key(&posts)?;
    ensure!(
        klarna_key == record.operation_id,
        "Klarna key {klarna_key} is not the operation id {}",
        record.operation_id
    );
    for resend in &posts[1..] {
        ensure!(
            resend.status == 201 && resend.replayed,
            "a resend should get Klarna's replayed 201: {resend:?}"
        );
    }

    second.terminate_cleanly().await?;
    Ok(())
}

/// First life of a crash test: starts the gateway, sends `request` (Klarna commits the refund
/// and holds its answer), SIGKILLs the gateway while Klarna holds it, and checks that the
/// caller got no answer and Klarna holds exactly one refund on `order_id`.
async fn kill_while_klarna_holds_the_refund(
    sim: &RunningSimulator,
    order_id: &str,
    path: &str,
    config: &std::path::Path,
    env: &[(&'static str, String)],
    request: &RefundOrderRequest,
) -> anyhow::Result<()> {
    let mut first = GatewayProcess::start("gateway (first run)", config, env).await?;
    let caller = {
        let mut client = first.client().await?;
        let request = request.clone();
        tokio::spawn(async move { client.refund_order(request).await })
    };
    wait_until(
        "the refund POST to reach the simulator",
        WAIT_LIMIT,
        async || Ok::<_, anyhow::Error>((!posts_to(sim, path).is_empty()).then_some(())),
    )
    .await?;
    first.signal("KILL")?;
    let (status, _) = first.wait_exit(WAIT_LIMIT).await?;
    ensure!(
        status.signal() == Some(9),
        "expected death by SIGKILL, got {status:?}"
    );
    let answer = tokio::time::timeout(WAIT_LIMIT, caller).await??;
    ensure!(
        answer.is_err(),
        "the killed gateway answered the held refund: {answer:?}"
    );
    let (refunds, _) = sim_refunds(sim, order_id)?;
    ensure!(
        refunds.len() == 1,
        "Klarna should hold the committed refund: {refunds:?}"
    );
    Ok(())
}

/// After a SIGKILL the restarted gateway does not wait for the dead process's lease (30 s,
/// the default): the claim it finds IN_FLIGHT is a dead process's, and the caller's first
/// retry resolves to the one refund Klarna holds, never ABORTED `IDEMPOTENCY_KEY_IN_USE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_the_first_retry_resolves_without_waiting_for_the_dead_lease()
-> anyhow::Result<()> {
    const KEY: &str = "crash-2";
    const AMOUNT: i64 = 1_500;

    let sim = klarna_sim::spawn(SimConfig::default()).await?;
    let (order_id, path, request) = held_refund(&sim, KEY, AMOUNT);
    let work = tempfile::tempdir()?;
    // The default lease: a take-over that waited for it would take 30 s.
    let config = write_config_with(work.path(), &work.path().join("data"), "")?;
    let env = klarna_env(&sim);

    kill_while_klarna_holds_the_refund(&sim, &order_id, &path, &config, &env, &request).await?;
    sim.sim.clear_faults();

    let mut second = GatewayProcess::start("gateway (second run)", &config, &env).await?;
    let mut client = second.client().await?;
    // The first retry that reaches the restarted gateway.
    let retried = client
        .refund_order(request.clone())
        .await
        .map_err(|status| anyhow!("the first retry after restart failed: {status:?}"))?
        .into_inner();
    let (refunds, refunded_amount) = sim_refunds(&sim, &order_id)?;
    ensure!(
        refunds.len() == 1 && refunded_amount == AMOUNT,
        "expected exactly one refund of {AMOUNT}, found {refunds:?} ({refunded_amount})"
    );
    ensure!(
        retried.refund_id == refunds[0],
        "the retry answered refund {:?}, Klarna holds {:?}",
        retried.refund_id,
        refunds[0]
    );
    one_klarna_key(&posts_to(&sim, &path))?;
    second.terminate_cleanly().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_postgres_race_one_key_into_one_refund() -> anyhow::Result<()> {
    const KEY: &str = "race-1";
    const AMOUNT: i64 = 4_000;

    let Some(admin_url) = postgres_admin_url() else {
        return Ok(());
    };

    let sim = klarna_sim::spawn(SimConfig::default()).await?;
    let order_id = sim
        .sim
        .seed_order(OrderSeed {
            order_amount: 10_000,
            captures: vec![10_000],
            ..Default::default()
        })
        .order_id;
    // The order id is a fresh UUID v4: it names this run's database too.
    let database = format!("t_{}", order_id.replace('-', ""));
    psql(&admin_url, &format!("CREATE DATABASE {database}"))?;
    let database_url = with_database(&admin_url, &database)?;

    let path = refunds_path(&order_id);
    // Klarna holds each answer for a while, so the two requests overlap.
    sim.sim.inject_fault(FaultSpec {
        method: Some("POST".into()),
        path: path.clone(),
        times: 2,
        kind: FaultKind::CommitThenHold { millis: 500 },
    });

    let mut env = klarna_env(&sim);
    env.push(("DATABASE_URL", database_url));
    let dir_a = tempfile::tempdir()?;
    let dir_b = tempfile::tempdir()?;
    let config_a = write_config(dir_a.path(), &dir_a.path().join("data"))?;
    let config_b = write_config(dir_b.path(), &dir_b.path().join("data"))?;
    // Both start at once, as replicas of one deployment do, migrating the same database.
    let (a, b) = tokio::join!(
        GatewayProcess::start("gateway A", &config_a, &env),
        GatewayProcess::start("gateway B", &config_b, &env),
    );
    let (mut a, mut b) = (a?, b?);
    let (mut client_a, mut client_b) = (a.client().await?, b.client().await?);

    let request = RefundOrderRequest {
        idempotency_key: KEY.into(),
        order_id: order_id.clone(),
        refunded_amount: AMOUNT,
        ..Default::default()
    };
    let (first_a, first_b) = tokio::join!(
        client_a.refund_order(request.clone()),
        client_b.refund_order(request.clone()),
    );
    for (name, result) in [("A", &first_a), ("B", &first_b)] {
        if let Err(status) = result {
            ensure!(
                status.code() == Code::Aborted
                    && reason(status).as_deref() == Some("IDEMPOTENCY_KEY_IN_USE"),
                "gateway {name}: expected OK or ABORTED IDEMPOTENCY_KEY_IN_USE, got {status:?}"
            );
        }
    }

    // Retry on both until both answer OK (a retry after the winner finished is a replay).
    let mut answers: [Option<RefundOrderResponse>; 2] = [
        first_a.ok().map(tonic::Response::into_inner),
        first_b.ok().map(tonic::Response::into_inner),
    ];
    wait_until("both gateways to answer OK", WAIT_LIMIT, async || {
        for (answer, client) in answers.iter_mut().zip([&mut client_a, &mut client_b]) {
            if answer.is_some() {
                continue;
            }
            match client.refund_order(request.clone()).await {
                Ok(response) => *answer = Some(response.into_inner()),
                Err(status)
                    if status.code() == Code::Aborted
                        && reason(&status).as_deref() == Some("IDEMPOTENCY_KEY_IN_USE") => {}
                Err(status) => bail!("retry failed: {status:?}"),
            }
        }
        Ok(answers.iter().all(Option::is_some).then_some(()))
    })
    .await?;
    let [Some(answer_a), Some(answer_b)] = answers else {
        bail!("loop ended without both answers");
    };
    ensure!(
        !answer_a.refund_id.is_empty() && answer_a.refund_id == answer_b.refund_id,
        "the gateways report different refunds: A {answer_a:?}, B {answer_b:?}"
    );
    ensure!(
        answer_a.operation_id == answer_b.operation_id,
        "one key became two operations: A {answer_a:?}, B {answer_b:?}"
    );

    let (refunds, refunded_amount) = sim_refunds(&sim, &order_id)?;
    ensure!(
        refunds == [answer_a.refund_id.clone()],
        "expected exactly the one refund {:?} on the order, found {refunds:?}",
        answer_a.refund_id
    );
    ensure!(
        refunded_amount == AMOUNT,
        "refunded_amount {refunded_amount}, expected {AMOUNT}"
    );
    // The claim in the shared database let one replica call Klarna; the other was told to
    // wait and then got the stored answer, without relying on Klarna's key memory.
    let posts = posts_to(&sim, &path);
    ensure!(
        posts.len() == 1,
        "expected one refund POST to Klarna, got {}: {posts:?}",
        posts.len()
    );
    let klarna_key = one_klarna_key(&posts)?;
    ensure!(
        klarna_key == answer_a.operation_id,
        "Klarna key {klarna_key} is not the operation id {}",
        answer_a.operation_id
    );

    let (stop_a, stop_b) = tokio::join!(a.terminate_cleanly(), b.terminate_cleanly());
    stop_a?;
    stop_b?;
    // Best effort: the server is a throwaway one anyway.
    let _ = psql(&admin_url, &format!("DROP DATABASE IF EXISTS {database}"));
    Ok(())
}

/// Two gateways share one PostgreSQL database, with the default 30 s lease. Gateway A is
/// SIGKILLed while Klarna holds a refund it sent; its claim is IN_FLIGHT with most of its lease
/// left. PostgreSQL ends A's sessions with the process, which ends A's replica liveness lock:
/// the caller's first retry on gateway B, running all along, takes the operation over at once
/// (never ABORTED `IDEMPOTENCY_KEY_IN_USE`), takes A's order lock, resends under the same
/// Klarna key and answers the one refund Klarna holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_postgres_the_first_retry_on_b_resolves_a_sigkilled_refund()
-> anyhow::Result<()> {
    const KEY: &str = "replica-crash-1";
    const AMOUNT: i64 = 2_000;
    // The lease the gateways run with (the default, as `write_config_with` leaves it).
    const LEASE: std::time::Duration = std::time::Duration::from_secs(30);

    let Some(admin_url) = postgres_admin_url() else {
        return Ok(());
    };
    let sim = klarna_sim::spawn(SimConfig::default()).await?;
    let (order_id, path, request) = held_refund(&sim, KEY, AMOUNT);
    // The order id is a fresh UUID v4: it names this run's database too.
    let database = format!("t_{}", order_id.replace('-', ""));
    psql(&admin_url, &format!("CREATE DATABASE {database}"))?;
    let database_url = with_database(&admin_url, &database)?;
    let live_replicas = || {
        psql(
            &database_url,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
    };

    let mut env = klarna_env(&sim);
    env.push(("DATABASE_URL", database_url.clone()));
    let dir_a = tempfile::tempdir()?;
    let dir_b = tempfile::tempdir()?;
    let config_a = write_config_with(dir_a.path(), &dir_a.path().join("data"), "")?;
    let config_b = write_config_with(dir_b.path(), &dir_b.path().join("data"), "")?;
    let mut b = GatewayProcess::start("gateway B", &config_b, &env).await?;
    let mut client_b = b.client().await?;

    // Gateway A claims the operation (its lease runs out 30 s after this at the earliest), is
    // killed while Klarna holds the committed refund, and its caller gets no answer.
    let claimed = tokio::time::Instant::now();
    kill_while_klarna_holds_the_refund(&sim, &order_id, &path, &config_a, &env, &request).await?;
    sim.sim.clear_faults();
    let records = operation_by_key(&mut client_b, KEY).await?;
    ensure!(
        records.len() == 1 && records[0].state() == OperationState::InFlight,
        "A's claim should be IN_FLIGHT: {records:?}"
    );

    // PostgreSQL notices the dead process's closed connections at once; only B's liveness
    // lock is left.
    wait_until(
        "PostgreSQL to end gateway A's sessions",
        WAIT_LIMIT,
        async || Ok::<_, anyhow::Error>((live_replicas()? == "1").then_some(())),
    )
    .await?;

    // The caller's first retry, on gateway B.
    let retried = client_b
        .refund_order(request.clone())
        .await
        .map_err(|status| anyhow!("the first retry on gateway B failed: {status:?}"))?
        .into_inner();
    ensure!(
        claimed.elapsed() < LEASE,
        "answered {:?} after A's claim: that is the lease's expiry, not A's death",
        claimed.elapsed()
    );
    let (refunds, refunded_amount) = sim_refunds(&sim, &order_id)?;
    ensure!(
        refunds.len() == 1 && refunded_amount == AMOUNT,
        "expected exactly one refund of {AMOUNT}, found {refunds:?} ({refunded_amount})"
    );
    ensure!(
        retried.refund_id == refunds[0],
        "the retry answered refund {:?}, Klarna holds {:?}",
        retried.refund_id,
        refunds[0]
    );
    let posts = posts_to(&sim, &path);
    ensure!(
        posts.len() >= 2,
        "expected A's POST and B's resend, got {}: {posts:?}",
        posts.len()
    );
    let klarna_key = one_klarna_key(&posts)?;
    ensure!(
        klarna_key == retried.operation_id,
        "Klarna key {klarna_key} is not the operation id {}",
        retried.operation_id
    );
    let records = operation_by_key(&mut client_b, KEY).await?;
    ensure!(
        records.len() == 1
            && records[0].state() == OperationState::Succeeded
            && records[0].refund_id == refunds[0],
        "expected one SUCCEEDED operation with Klarna's refund id: {records:?}"
    );

    b.terminate_cleanly().await?;
    // Best effort: the server is a throwaway one anyway.
    let _ = psql(&admin_url, &format!("DROP DATABASE IF EXISTS {database}"));
    Ok(())
}

/// The switch from `anonymous` to named callers changes operation ids: the gateway refuses to
/// start with authentication while an anonymous operation is unsettled, naming it, unless a
/// caller keeps the anonymous scope (`scope_as`), whose retry then settles the one refund.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_waits_for_anonymous_operations_or_takes_their_scope() -> anyhow::Result<()>
{
    const KEY: &str = "before-auth-1";
    const TOKEN: &str = "till-token-for-the-switch";
    let sim = klarna_sim::spawn(SimConfig::default()).await?;
    let (order_id, path, request) = held_refund(&sim, KEY, 700);
    let work = tempfile::tempdir()?;
    let data_dir = work.path().join("data");
    let config = write_config_with(work.path(), &data_dir, "")?;
    let env = klarna_env(&sim);
    kill_while_klarna_holds_the_refund(&sim, &order_id, &path, &config, &env, &request).await?;
    sim.sim.clear_faults();

    let with_callers = |scope_as: &str| -> anyhow::Result<std::path::PathBuf> {
        use sha2::Digest;
        let hash: String = sha2::Sha256::digest(TOKEN.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let callers = work.path().join("callers.toml");
        std::fs::write(
            &callers,
            format!(
                "[[caller]]\nname = \"till\"\ntoken_sha256 = \"{hash}\"\nrpcs = [\"*\"]\n\
                 klarna_accounts = [\"*\"]\n{scope_as}"
            ),
        )?;
        let text = std::fs::read_to_string(&config)?.replace(
            "auth = \"none\"\n",
            &format!("callers_file = {:?}\n", callers.to_string_lossy()),
        );
        let path = work.path().join("gateway-with-callers.toml");
        std::fs::write(&path, text)?;
        Ok(path)
    };

    let refused = GatewayProcess::start("gateway with callers", &with_callers("")?, &env)
        .await
        .err()
        .ok_or_else(|| anyhow!("started with an unsettled anonymous operation"))?
        .to_string();
    ensure!(
        refused.contains("not settled") && refused.contains("scope_as"),
        "the refusal does not say why: {refused}"
    );

    let config = with_callers("scope_as = \"anonymous\"\n")?;
    let mut gateway = GatewayProcess::start("gateway, scope kept", &config, &env).await?;
    let mut client = gateway.client().await?;
    let mut retry = tonic::Request::new(request.clone());
    retry
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse()?);
    let retried = client.refund_order(retry).await?.into_inner();
    let (refunds, amount) = sim_refunds(&sim, &order_id)?;
    ensure!(
        refunds.len() == 1 && amount == 700 && retried.refund_id == refunds[0],
        "expected the one refund, found {refunds:?} ({amount}), answered {:?}",
        retried.refund_id
    );
    one_klarna_key(&posts_to(&sim, &path))?;
    gateway.terminate_cleanly().await?;
    Ok(())
}

/// SIGHUP re-reads the callers file: a caller removed from it is refused from then on, and
/// the process keeps serving the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_callers_file() -> anyhow::Result<()> {
    use sha2::Digest;
    let hash = |token: &str| -> String {
        sha2::Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let entry = |name: &str, token: &str| {
        format!(
            "[[caller]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nrpcs = [\"*\"]\nklarna_accounts = [\"*\"]\n",
            hash(token)
        )
    };
    let sim = klarna_sim::spawn(SimConfig::default()).await?;
    let order_id = sim
        .sim
        .seed_order(OrderSeed {
            order_amount: 1_000,
            captures: vec![1_000],
            ..Default::default()
        })
        .order_id;
    let work = tempfile::tempdir()?;
    let callers = work.path().join("callers.toml");
    std::fs::write(
        &callers,
        format!(
            "{}{}",
            entry("till", "till-token"),
            entry("ops", "ops-token")
        ),
    )?;
    let config = write_config_with(work.path(), &work.path().join("data"), "")?;
    let text = std::fs::read_to_string(&config)?.replace(
        "auth = \"none\"\n",
        &format!("callers_file = {:?}\n", callers.to_string_lossy()),
    );
    std::fs::write(&config, text)?;
    let mut gateway = GatewayProcess::start("gateway", &config, &klarna_env(&sim)).await?;
    let mut client = gateway.client().await?;
    let read = |token: &str| {
        let mut request = tonic::Request::new(refund_gateway_proto::v1::GetOrderRequest {
            order_id: order_id.clone(),
            ..Default::default()
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        );
        request
    };
    client.get_order(read("till-token")).await?;
    std::fs::write(&callers, entry("ops", "ops-token"))?;
    gateway.signal("HUP")?;
    wait_until("the removed caller to be refused", WAIT_LIMIT, async || {
        let answer = client.clone().get_order(read("till-token")).await;
        Ok::<_, anyhow::Error>(
            answer
                .err()
                .filter(|s| s.code() == Code::Unauthenticated)
                .map(|_| ()),
        )
    })
    .await?;
    client.get_order(read("ops-token")).await?;
    ensure!(
        gateway.log_text().contains("callers file reloaded"),
        "no reload in the log"
    );
    gateway.terminate_cleanly().await?;
    Ok(())
}
