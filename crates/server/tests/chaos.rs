//! The chaos suite (issue 11): many refunds by concurrent callers while Klarna misbehaves and
//! the gateway is SIGKILLed, and then Klarna's ledger compared with what the callers asked.
//!
//! N refund intents over M fully captured orders, each with its own idempotency key and its id
//! as the refund's `reference`, are sent by K concurrent callers. A caller sends an intent
//! until it gets a definitive answer: it retries the same request under the same key after
//! UNAVAILABLE (`OUTCOME_PENDING` included), DEADLINE_EXCEEDED, ABORTED, RESOURCE_EXHAUSTED
//! and transport errors, waiting what the status's `RetryInfo` says, else 20-100 ms, within a
//! deadline per intent. Meanwhile the simulator's chaos mode injects, into a share of the
//! refund POSTs, timeouts (latency past the gateway's attempt timeout), resets (nothing
//! executed), hold-then-commit (executed after the gateway gave up on the attempt),
//! commit-then-drop, commit-then-hold past the attempt timeout, 503, 500 and 429 with
//! `Retry-After: 1`; a resend under a key whose first request is still held is answered 409
//! (`Simulator::set_conflict_while_running`); and the real `refund-gateway` binary is killed
//! with SIGKILL and restarted on the same data on a schedule. On PostgreSQL two replicas share
//! one fresh database, the callers spread over both, and one replica is killed (and
//! restarted) at a time.
//!
//! When the load is over, the chaos is switched off, every operation must become terminal
//! (`ListOperations` shows none PENDING or IN_FLIGHT), and Klarna's ledger must hold, for
//! every intent, exactly one refund with its reference and its amount on its order (0
//! duplicates, 0 lost, 0 wrong amounts), no refund nobody asked for, no order refunded beyond
//! its capture, every intent answered OK with the refund Klarna holds, every operation
//! SUCCEEDED. A summary table (the figures for issue 11's closing note) goes to stderr, and
//! any non-zero count fails the test with it.
//!
//! Sizes: by default a bounded run (300 refunds over 20 orders, 16 callers, 10% of the refund
//! POSTs faulted, 3 kills at a quarter, half and three quarters of the intents); with
//! `CHAOS_FULL=1` the full run (10,000 refunds over 40 orders, 32 callers, 20% faulted, a kill
//! every 5 s):
//!
//! ```sh
//! CHAOS_FULL=1 cargo test -p refund-gateway --test chaos
//! ```
//!
//! `CHAOS_SEED=<u64>` changes the seed of the amounts and of the simulator's fault draws (the
//! draws also depend on the order the calls arrive in, which no seed fixes).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use klarna_sim::{ChaosSpec, FaultKind, OrderSeed, RunningSimulator, SimConfig};
use refund_gateway_proto::v1::refund_gateway_service_client::RefundGatewayServiceClient;
use refund_gateway_proto::v1::{
    ListOperationsRequest, OperationRecord, OperationState, RefundOrderRequest, RefundOrderResponse,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use common::{
    Client, FreshDatabase, GatewayProcess, WAIT_LIMIT, klarna_env, postgres_admin_url, wait_until,
    write_config_with,
};

/// The gateway's timeout of one Klarna attempt; the slow faults last well beyond it.
const ATTEMPT_TIMEOUT_MS: u64 = 300;
/// How long a timeout or a commit-then-hold fault keeps the answer back.
const SLOW_FAULT_MS: u64 = 1_000;
/// The deadline of each RefundOrder call: short enough that a 429 with `Retry-After: 1` or a
/// slow fault often outlasts it, so that callers get retryable answers with `RetryInfo`
/// rather than only the gateway's own resends within the call.
const CALL_DEADLINE: Duration = Duration::from_secs(1);
/// Each order's authorized and captured amount (SEK minor units).
const ORDER_AMOUNT: i64 = 1_000_000;
/// Intents ask for 1 to this many minor units.
const MAX_INTENT_AMOUNT: i64 = 2_000;
/// The longest `RetryInfo` delay a caller honours as is.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// The default seed of the amounts and of the fault draws.
const DEFAULT_SEED: u64 = 11;

/// The gateway settings of the suite: short attempts, a reconciler that looks often, a short
/// lease so that a killed holder's claims are taken over quickly.
fn gateway_settings() -> String {
    format!(
        "klarna_attempt_timeout_ms = {ATTEMPT_TIMEOUT_MS}\n\
         reconcile_interval_ms = 200\n\
         lease_secs = 2\n"
    )
}

/// One chaos run only at a time: two at once on a 2-core machine would mostly measure the
/// machine.
static ONE_RUN_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// When the gateway is killed.
#[derive(Debug, Clone, Copy)]
enum Kills {
    /// This many kills, spread evenly over the intents' completion.
    Spread(usize),
    /// One every period, while the load runs.
    Every(Duration),
}

/// The size of a run.
#[derive(Debug, Clone)]
struct Size {
    name: &'static str,
    refunds: usize,
    orders: usize,
    callers: usize,
    per_mille: u32,
    kills: Kills,
    /// How long a caller may take over one intent before it counts as unanswered.
    intent_deadline: Duration,
    seed: u64,
}

impl Size {
    fn from_env() -> anyhow::Result<Self> {
        let seed = match std::env::var("CHAOS_SEED") {
            Ok(text) => text
                .parse()
                .with_context(|| format!("CHAOS_SEED={text:?} is not a u64"))?,
            Err(_) => DEFAULT_SEED,
        };
        Ok(if std::env::var("CHAOS_FULL").as_deref() == Ok("1") {
            Self {
                name: "full",
                refunds: 10_000,
                orders: 40,
                callers: 32,
                per_mille: 200,
                kills: Kills::Every(Duration::from_secs(5)),
                intent_deadline: Duration::from_secs(180),
                seed,
            }
        } else {
            Self {
                name: "bounded",
                refunds: 300,
                orders: 20,
                callers: 16,
                per_mille: 100,
                kills: Kills::Spread(3),
                intent_deadline: Duration::from_secs(60),
                seed,
            }
        })
    }
}

/// splitmix64, for the amounts and the callers' jitter: reproducible from a seed.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high` (the modulo bias is irrelevant at these sizes).
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// One refund a caller wants made exactly once.
#[derive(Debug, Clone)]
struct Intent {
    /// Also the refund's `reference` at Klarna.
    id: String,
    key: String,
    order_id: String,
    amount: i64,
}

impl Intent {
    fn request(&self) -> RefundOrderRequest {
        RefundOrderRequest {
            idempotency_key: self.key.clone(),
            order_id: self.order_id.clone(),
            refunded_amount: self.amount,
            currency: "SEK".into(),
            reference: self.id.clone(),
            ..Default::default()
        }
    }
}

/// How an intent ended for its caller.
#[derive(Debug)]
enum Answer {
    Ok(RefundOrderResponse),
    /// A definitive refusal: none is expected.
    Refused(tonic::Status),
    /// No definitive answer within the intent's deadline; the last retryable error.
    Unanswered(String),
}

/// The replicas' current clients: a restarted process listens on a new port, and callers
/// take the client of the current one for each attempt.
type Replicas = Arc<RwLock<Vec<Client>>>;

fn client_for(addr: &str) -> anyhow::Result<Client> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    Ok(RefundGatewayServiceClient::new(channel))
}

fn current_client(replicas: &Replicas, index: usize) -> Client {
    let replicas = replicas.read().unwrap_or_else(|e| e.into_inner());
    replicas[index % replicas.len()].clone()
}

/// What the callers saw, besides the answers.
#[derive(Debug, Default)]
struct CallerStats {
    /// Retries by what made the caller retry.
    retries: Mutex<BTreeMap<String, usize>>,
    /// Retries that waited what the status's `RetryInfo` said.
    followed_retry_info: AtomicUsize,
}

impl CallerStats {
    fn retried(&self, why: String, followed_retry_info: bool) {
        if followed_retry_info {
            self.followed_retry_info.fetch_add(1, Ordering::Relaxed);
        }
        *self
            .retries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(why)
            .or_insert(0) += 1;
    }
}

/// Whether a failed call is worth retrying under the same key, and after how long.
enum Next {
    Retry {
        why: String,
        after: Duration,
        /// `after` is the status's `RetryInfo`.
        told: bool,
    },
    Refused,
}

fn classify(status: &tonic::Status, rng: &mut Rng) -> Next {
    let details = status.get_error_details();
    let reason = details.error_info().map(|info| info.reason.clone());
    let told = details.retry_info().and_then(|info| info.retry_delay);
    let after = told.map_or_else(
        || Duration::from_millis(rng.between(20, 100)),
        |delay| delay.min(MAX_RETRY_DELAY),
    );
    let told = told.is_some();
    let retryable = matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::ResourceExhausted
    );
    match reason {
        Some(reason) if retryable => Next::Retry {
            why: format!("{:?} {reason}", status.code()),
            after,
            told,
        },
        // Every answer of the gateway carries an ErrorInfo; a status without one comes from
        // the transport (a killed process, a refused connection, the client's own deadline).
        None if retryable
            || matches!(
                status.code(),
                Code::Unknown | Code::Internal | Code::Cancelled
            ) =>
        {
            Next::Retry {
                why: format!("transport {:?}", status.code()),
                after,
                told,
            }
        }
        _ => Next::Refused,
    }
}

/// Sends one intent until a definitive answer or its deadline. Attempts alternate over the
/// replicas, starting with the caller's own.
async fn settle(
    intent: &Intent,
    home: usize,
    replicas: &Replicas,
    stats: &CallerStats,
    rng: &mut Rng,
    deadline: Duration,
) -> Answer {
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        let mut client = current_client(replicas, home + attempt);
        let mut request = tonic::Request::new(intent.request());
        request.set_timeout(CALL_DEADLINE);
        // The client's own bound, in case a dead connection never answers at all.
        let answer = tokio::time::timeout(CALL_DEADLINE * 2, client.refund_order(request)).await;
        let (why, after, told) = match answer {
            Ok(Ok(response)) => return Answer::Ok(response.into_inner()),
            Ok(Err(status)) => match classify(&status, rng) {
                Next::Retry { why, after, told } => (why, after, told),
                Next::Refused => return Answer::Refused(status),
            },
            Err(_) => (
                "no answer within twice the deadline".to_owned(),
                Duration::from_millis(rng.between(20, 100)),
                false,
            ),
        };
        if started.elapsed() + after > deadline {
            return Answer::Unanswered(why);
        }
        stats.retried(why, told);
        // Pacing the retry as the gateway asked (or a short jittered backoff), not waiting
        // for something to happen.
        tokio::time::sleep(after).await;
        attempt += 1;
    }
}

/// The load: K callers draining the intents; answers in intent order. `progress` counts the
/// intents that ended.
async fn run_callers(
    size: &Size,
    intents: Arc<Vec<Intent>>,
    replicas: Replicas,
    stats: Arc<CallerStats>,
    progress: watch::Sender<usize>,
) -> anyhow::Result<Vec<Answer>> {
    let next = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(progress);
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..size.callers {
        let (intents, replicas, stats, next, progress) = (
            Arc::clone(&intents),
            Arc::clone(&replicas),
            Arc::clone(&stats),
            Arc::clone(&next),
            Arc::clone(&progress),
        );
        let deadline = size.intent_deadline;
        let mut rng = Rng(size.seed ^ (0xC0FF_EE00 + caller as u64));
        callers.spawn(async move {
            let mut answers = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(intent) = intents.get(index) else {
                    return answers;
                };
                let answer = settle(intent, caller, &replicas, &stats, &mut rng, deadline).await;
                answers.push((index, answer));
                progress.send_modify(|done| *done += 1);
            }
        });
    }
    let mut answers: Vec<Option<Answer>> = (0..intents.len()).map(|_| None).collect();
    while let Some(joined) = callers.join_next().await {
        for (index, answer) in joined? {
            answers[index] = Some(answer);
        }
    }
    answers
        .into_iter()
        .enumerate()
        .map(|(i, a)| a.ok_or_else(|| anyhow!("intent {i} was never taken")))
        .collect()
}

/// Kills the replicas, one at a time and each restarted before the next kill, on the
/// schedule, until every intent has ended; returns the processes and the number of kills.
async fn run_kills(
    mut processes: Vec<GatewayProcess>,
    replicas: Replicas,
    kills: Kills,
    total: usize,
    mut progress: watch::Receiver<usize>,
) -> anyhow::Result<(Vec<GatewayProcess>, usize)> {
    let mut killed = 0;
    loop {
        let due = match kills {
            Kills::Spread(n) => {
                if killed == n {
                    break;
                }
                let threshold = total * (killed + 1) / (n + 1);
                // Reached for sure: every intent ends, answered or not.
                progress.wait_for(|done| *done >= threshold).await?;
                true
            }
            Kills::Every(period) => tokio::select! {
                () = tokio::time::sleep(period) => true,
                done = progress.wait_for(|done| *done >= total) => {
                    done?;
                    false
                }
            },
        };
        if !due || *progress.borrow() >= total {
            break;
        }
        let victim = killed % processes.len();
        let process = &mut processes[victim];
        process.kill_and_restart().await?;
        let client = client_for(process.grpc_addr())?;
        replicas.write().unwrap_or_else(|e| e.into_inner())[victim] = client;
        killed += 1;
    }
    Ok((processes, killed))
}

/// The warnings and errors the gateways logged, for a failure's message: the whole logs of
/// a full run are too long to read.
fn warnings_and_errors(processes: &[GatewayProcess]) -> String {
    let mut text = String::from("warnings and errors the gateways logged:");
    for process in processes {
        for line in process.log_text().lines().filter(|line| {
            line.contains(r#""level":"WARN""#) || line.contains(r#""level":"ERROR""#)
        }) {
            text.push('\n');
            text.push_str(line);
        }
    }
    text
}

/// Every operation the gateway holds, all pages.
async fn all_operations(client: &mut Client) -> anyhow::Result<Vec<OperationRecord>> {
    let mut operations = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_operations(ListOperationsRequest {
                page_size: 500,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        operations.extend(page.operations);
        if page.next_page_token.is_empty() {
            return Ok(operations);
        }
        page_token = page.next_page_token;
    }
}

/// Whether any operation is in `state`.
async fn any_in(client: &mut Client, state: OperationState) -> anyhow::Result<bool> {
    let page = client
        .list_operations(ListOperationsRequest {
            state: state.into(),
            page_size: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(!page.operations.is_empty())
}

/// One refund in Klarna's ledger.
#[derive(Debug)]
struct LedgerRefund {
    order_id: String,
    refund_id: String,
    amount: i64,
}

/// Klarna's ledger of the run's orders.
#[derive(Debug, Default)]
struct Ledger {
    /// The refunds by reference (refunds without one under "").
    by_reference: HashMap<String, Vec<LedgerRefund>>,
    /// The orders refunded beyond their capture, or whose `refunded_amount` is not the sum
    /// of their refunds.
    over_refunded: Vec<String>,
    /// How many refunds there are.
    count: usize,
}

fn read_ledger(sim: &RunningSimulator, order_ids: &[String]) -> anyhow::Result<Ledger> {
    let mut by_reference: HashMap<String, Vec<LedgerRefund>> = HashMap::new();
    let mut over_refunded = Vec::new();
    let mut count = 0;
    for order_id in order_ids {
        let order = sim
            .sim
            .order_json(order_id)
            .ok_or_else(|| anyhow!("the simulator has no order {order_id}"))?;
        let number = |field: &str| {
            order[field]
                .as_i64()
                .ok_or_else(|| anyhow!("order {order_id} without {field}: {order}"))
        };
        let (captured, refunded) = (number("captured_amount")?, number("refunded_amount")?);
        let refunds = order["refunds"]
            .as_array()
            .ok_or_else(|| anyhow!("order {order_id} without refunds: {order}"))?;
        let mut sum = 0;
        for refund in refunds {
            let amount = refund["refunded_amount"]
                .as_i64()
                .ok_or_else(|| anyhow!("refund without refunded_amount: {refund}"))?;
            sum += amount;
            count += 1;
            by_reference
                .entry(refund["reference"].as_str().unwrap_or_default().to_owned())
                .or_default()
                .push(LedgerRefund {
                    order_id: order_id.clone(),
                    refund_id: refund["refund_id"].as_str().unwrap_or_default().to_owned(),
                    amount,
                });
        }
        if refunded > captured || sum != refunded {
            over_refunded.push(format!(
                "order {order_id}: captured {captured}, refunded_amount {refunded}, sum of \
                 refunds {sum}"
            ));
        }
    }
    Ok(Ledger {
        by_reference,
        over_refunded,
        count,
    })
}

/// The refund POSTs the simulator logged, how many of them it replayed from its idempotency
/// memory, and how many it answered 409 because their key was still in use. A POST whose
/// client went away during an injected latency is neither executed nor logged (the
/// simulator's fault counts include it).
fn refund_posts(sim: &RunningSimulator) -> (usize, usize, usize) {
    sim.sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/refunds"))
        .fold((0, 0, 0), |(posts, replayed, in_use), r| {
            (
                posts + 1,
                replayed + usize::from(r.replayed),
                in_use + usize::from(r.status == 409 && r.fault.is_none()),
            )
        })
}

/// Writes to the stderr handle itself, which libtest does not capture, in one write.
fn to_stderr(text: &str) {
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// The whole run, on `replicas` gateways sharing the store `database_url` names (SQLite in
/// the data directory when `None`).
async fn chaos_run(
    store: &str,
    database_url: Option<String>,
    replicas: usize,
) -> anyhow::Result<()> {
    let _one_at_a_time = ONE_RUN_AT_A_TIME.lock().await;
    let size = Size::from_env()?;
    let started = Instant::now();
    let sim = klarna_sim::spawn(SimConfig {
        // Every refund POST, retries and resends included, for the fault counts.
        request_log_capacity: 1_000_000,
        ..Default::default()
    })
    .await?;

    let order_ids: Vec<String> = (0..size.orders)
        .map(|_| {
            sim.sim
                .seed_order(OrderSeed {
                    order_amount: ORDER_AMOUNT,
                    captures: vec![ORDER_AMOUNT],
                    ..Default::default()
                })
                .order_id
        })
        .collect();
    let mut rng = Rng(size.seed);
    let intents: Vec<Intent> = (0..size.refunds)
        .map(|i| Intent {
            id: format!("intent-{i:05}"),
            key: format!("chaos-{i:05}"),
            order_id: order_ids[i % order_ids.len()].clone(),
            amount: i64::try_from(rng.between(1, MAX_INTENT_AMOUNT.unsigned_abs())).unwrap_or(1),
        })
        .collect();
    let mut asked: HashMap<&str, i64> = HashMap::new();
    for intent in &intents {
        *asked.entry(intent.order_id.as_str()).or_insert(0) += intent.amount;
    }
    ensure!(
        asked.values().all(|&sum| sum <= ORDER_AMOUNT),
        "the intents ask more than an order holds: {asked:?}"
    );

    let work = tempfile::tempdir()?;
    let mut env = klarna_env(&sim);
    if let Some(url) = &database_url {
        env.push(("DATABASE_URL", url.clone()));
    }
    let mut processes = Vec::new();
    for replica in 0..replicas {
        let dir = work.path().join(format!("replica-{replica}"));
        std::fs::create_dir_all(&dir)?;
        let config = write_config_with(&dir, &dir.join("data"), &gateway_settings())?;
        let name = format!("gateway {replica} ({store})");
        processes.push(GatewayProcess::start(&name, &config, &env).await?);
    }
    let clients = processes
        .iter()
        .map(|p| client_for(p.grpc_addr()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let replica_clients: Replicas = Arc::new(RwLock::new(clients));

    let slow = SLOW_FAULT_MS;
    sim.sim.set_conflict_while_running(true);
    sim.sim.set_chaos(Some(ChaosSpec {
        method: Some("POST".into()),
        path: "/ordermanagement/v1/orders/*".into(),
        per_mille: size.per_mille,
        kinds: vec![
            FaultKind::Latency { millis: slow },
            FaultKind::HoldThenCommit { millis: slow },
            FaultKind::Reset,
            FaultKind::CommitThenDrop,
            FaultKind::CommitThenHold { millis: slow },
            status_fault(503, None),
            status_fault(500, None),
            status_fault(429, Some(1)),
        ],
        seed: size.seed,
    }));

    let intents = Arc::new(intents);
    let stats = Arc::new(CallerStats::default());
    let (progress, progress_rx) = watch::channel(0);
    let kills = tokio::spawn(run_kills(
        processes,
        Arc::clone(&replica_clients),
        size.kills,
        intents.len(),
        progress_rx,
    ));
    let answers = run_callers(
        &size,
        Arc::clone(&intents),
        Arc::clone(&replica_clients),
        Arc::clone(&stats),
        progress,
    )
    .await;
    let load_elapsed = started.elapsed();
    let (mut processes, kills) = kills.await??;
    let answers = answers?;
    sim.sim.set_chaos(None);

    // Reconciliation: whatever is still unresolved must become terminal.
    let mut client = current_client(&replica_clients, 0);
    let reconciled = async {
        wait_until(
            "every operation to be terminal (none PENDING or IN_FLIGHT)",
            WAIT_LIMIT,
            async || {
                let unresolved = any_in(&mut client, OperationState::Pending).await?
                    || any_in(&mut client, OperationState::InFlight).await?;
                Ok::<_, anyhow::Error>((!unresolved).then_some(()))
            },
        )
        .await?;
        all_operations(&mut client).await
    };
    // A gateway's answer says what to do, not why: the cause is in its log.
    let operations = reconciled
        .await
        .with_context(|| warnings_and_errors(&processes))?;

    let Ledger {
        by_reference: ledger,
        over_refunded,
        count: ledger_count,
    } = read_ledger(&sim, &order_ids)?;
    let (posts, replayed_posts, key_in_use) = refund_posts(&sim);
    let faults = sim.sim.injected_faults();
    let mut problems: Vec<String> = over_refunded.clone();
    let (mut duplicates, mut lost, mut wrong_amounts) = (0, 0, 0);
    let (mut ok, mut refused, mut unanswered, mut wrong_answers, mut replayed_answers) =
        (0, 0, 0, 0, 0);
    let by_key: HashMap<&str, &OperationRecord> = operations
        .iter()
        .map(|op| (op.idempotency_key.as_str(), op))
        .collect();
    let mut not_succeeded = 0;
    for (intent, answer) in intents.iter().zip(&answers) {
        let held = ledger.get(&intent.id).map_or(&[][..], Vec::as_slice);
        match held {
            [] => {
                lost += 1;
                problems.push(format!("lost: {intent:?} has no refund at Klarna"));
            }
            [refund] => {
                if refund.amount != intent.amount || refund.order_id != intent.order_id {
                    wrong_amounts += 1;
                    problems.push(format!("wrong refund for {intent:?}: {refund:?}"));
                }
            }
            several => {
                duplicates += several.len() - 1;
                problems.push(format!("duplicates for {intent:?}: {several:?}"));
            }
        }
        match answer {
            Answer::Ok(response) => {
                ok += 1;
                replayed_answers += usize::from(response.replayed);
                if !matches!(held, [refund] if refund.refund_id == response.refund_id) {
                    wrong_answers += 1;
                    problems.push(format!(
                        "{intent:?} was answered refund {:?}, Klarna holds {held:?}",
                        response.refund_id
                    ));
                }
            }
            Answer::Refused(status) => {
                refused += 1;
                problems.push(format!("{intent:?} refused: {status:?}"));
            }
            Answer::Unanswered(why) => {
                unanswered += 1;
                problems.push(format!("{intent:?} unanswered; last: {why}"));
            }
        }
        match by_key.get(intent.key.as_str()) {
            Some(op) if op.state() == OperationState::Succeeded => {}
            other => {
                not_succeeded += 1;
                problems.push(format!("{intent:?}: operation {other:?}"));
            }
        }
    }
    let unknown: usize = ledger
        .iter()
        .filter(|(reference, _)| !intents.iter().any(|i| &i.id == *reference))
        .map(|(_, refunds)| refunds.len())
        .sum();
    if unknown > 0 {
        problems.push(format!(
            "{unknown} refunds at Klarna with an unknown reference"
        ));
    }
    if operations.len() != intents.len() {
        problems.push(format!(
            "{} operations for {} intents",
            operations.len(),
            intents.len()
        ));
    }

    let retries = stats
        .retries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut table = String::new();
    let mut row = |figure: &str, value: String| {
        let _ = writeln!(table, "| {figure} | {value} |");
    };
    row(
        "refund intents / orders / callers",
        format!("{} / {} / {}", intents.len(), order_ids.len(), size.callers),
    );
    row("refunds in Klarna's ledger", ledger_count.to_string());
    row("duplicate refunds", duplicates.to_string());
    row("lost operations", lost.to_string());
    row("wrong amounts", wrong_amounts.to_string());
    row("over-refunded orders", over_refunded.len().to_string());
    row("refunds with an unknown reference", unknown.to_string());
    row(
        "callers answered OK (replays) / refused / unanswered",
        format!("{ok} ({replayed_answers}) / {refused} / {unanswered}"),
    );
    row(
        "answers naming another refund than Klarna's",
        wrong_answers.to_string(),
    );
    row("operations not SUCCEEDED", not_succeeded.to_string());
    row("gateway kills (SIGKILL, restart)", kills.to_string());
    row(
        "refund POSTs at Klarna (replayed by Klarna; 409, key in use)",
        format!("{posts} ({replayed_posts}; {key_in_use})"),
    );
    row(
        "faults injected",
        format!(
            "{} ({} per mille): {}",
            faults.values().sum::<u64>(),
            size.per_mille,
            describe(&faults)
        ),
    );
    row(
        "caller retries (after RetryInfo)",
        format!(
            "{} ({}): {}",
            retries.values().sum::<usize>(),
            stats.followed_retry_info.load(Ordering::Relaxed),
            describe(&retries)
        ),
    );
    row(
        "elapsed: load / total",
        format!(
            "{:.1} s / {:.1} s",
            load_elapsed.as_secs_f64(),
            started.elapsed().as_secs_f64()
        ),
    );
    let summary = format!(
        "\nchaos suite, {} run on {store} ({replicas} replica{}), seed {}:\n\
         | figure | value |\n|---|---|\n{table}",
        size.name,
        if replicas == 1 { "" } else { "s" },
        size.seed,
    );
    to_stderr(&summary);

    if !problems.is_empty() {
        problems.truncate(50);
        bail!("chaos suite failed:{summary}\n{}", problems.join("\n"));
    }
    ensure!(kills > 0, "the gateway was never killed:{summary}");
    for process in &mut processes {
        process.terminate_cleanly().await?;
    }
    Ok(())
}

fn status_fault(status: u16, retry_after_secs: Option<u64>) -> FaultKind {
    FaultKind::Status {
        status,
        body: None,
        retry_after_secs,
    }
}

/// `a 3, b 5` from a map of counts.
fn describe<N: std::fmt::Display>(counts: &BTreeMap<String, N>) -> String {
    if counts.is_empty() {
        return "none".to_owned();
    }
    counts
        .iter()
        .map(|(what, n)| format!("{what} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_sqlite_with_sigkills_keeps_every_refund_exactly_once() -> anyhow::Result<()> {
    chaos_run("SQLite", None, 1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_postgres_two_replicas_killed_in_turn_keep_every_refund_exactly_once()
-> anyhow::Result<()> {
    let Some(admin_url) = postgres_admin_url() else {
        return Ok(());
    };
    let database = FreshDatabase::create(&admin_url)?;
    chaos_run("PostgreSQL", Some(database.url.clone()), 2).await
}
