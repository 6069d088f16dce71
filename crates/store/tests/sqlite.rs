//! The store contract on SQLite (a file in a temporary directory per test).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod suite;

use std::sync::Arc;

use refund_gateway_domain::{
    Claim, Completion, LeaseHolder, OperationState, OperationStore, Rpc, StoredResponse, Unresolved,
};
use refund_gateway_store::{DatabaseConfig, SqliteStore, connect};
use tempfile::TempDir;

/// A fresh store in its own directory, opened the way the server opens it.
async fn store() -> (Arc<dyn OperationStore>, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = DatabaseConfig::from_url_or_data_dir(None, &dir.path().join("data")).unwrap();
    (connect(&config).await.unwrap(), dir)
}

macro_rules! on_sqlite {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let (store, _dir) = store().await;
            suite::$case(store, None).await;
        }
    )*};
}

suite::all_cases!(on_sqlite);

#[tokio::test]
async fn durability_settings_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("x.sqlite3"))
        .await
        .unwrap();
    let durability = store.durability().await.unwrap();
    assert_eq!(durability.journal_mode, "wal");
    assert_eq!(durability.synchronous, 2, "FULL");
}

#[tokio::test]
async fn data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.sqlite3");
    let new = suite::new_op("pos", Rpc::RefundOrder, "reopen", "order-1");
    {
        let store = SqliteStore::open(&path).await.unwrap();
        store
            .claim(
                new.clone(),
                LeaseHolder::new(),
                suite::t(0),
                std::time::Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
    let store = connect(&DatabaseConfig::Sqlite { path }).await.unwrap();
    let read = store.get(new.operation_id).await.unwrap().unwrap();
    assert_eq!(read.new, new);
}

/// One process owns the file: a claim still IN_FLIGHT when the store opens is a dead
/// process's, and is PENDING at once (with its event), whatever its lease says; final
/// operations are left alone.
#[tokio::test]
async fn in_flight_claims_of_a_previous_process_are_pending_when_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.sqlite3");
    let orphan = suite::new_op("pos", Rpc::RefundOrder, "orphan", "order-1");
    let done = suite::new_op("pos", Rpc::RefundOrder, "done", "order-2");
    let now = time::OffsetDateTime::now_utc();
    let hour = std::time::Duration::from_secs(3600);
    {
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.orphans_taken_over(), 0);
        let holder = LeaseHolder::new();
        store
            .claim(orphan.clone(), holder, now, hour)
            .await
            .unwrap();
        store.claim(done.clone(), holder, now, hour).await.unwrap();
        let completion = refund_gateway_domain::Completion {
            state: OperationState::Succeeded,
            response: refund_gateway_domain::StoredResponse {
                code: 0,
                message: String::new(),
                payload: vec![1],
            },
            refund_id: Some("r".into()),
            correlation_id: None,
            detail: "done".into(),
            trace_id: None,
        };
        assert!(
            store
                .finish(done.operation_id, holder, completion, now)
                .await
                .unwrap()
        );
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.orphans_taken_over(), 1);
    let read = store.get(orphan.operation_id).await.unwrap().unwrap();
    assert_eq!(read.state, OperationState::Pending);
    assert!(read.is_unresolved(now), "{read:?}");
    // The reconciler's first pass after the start takes it on, whatever its backoff.
    let unresolved = store.unresolved(Unresolved::All, now, 10).await.unwrap();
    assert_eq!(unresolved.len(), 1);
    assert_eq!(
        store.get(done.operation_id).await.unwrap().unwrap().state,
        OperationState::Succeeded
    );
}

/// Throughput of durable claim + finish pairs under 256 concurrent callers. Run with
/// `cargo test --release -p refund-gateway-store --test sqlite -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn throughput_claim_and_finish() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(
        SqliteStore::open(&dir.path().join("x.sqlite3"))
            .await
            .unwrap(),
    );
    let store: Arc<dyn OperationStore> = sqlite.clone();
    let start = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..256 {
        let store = store.clone();
        tasks.spawn(async move {
            for i in 0..40 {
                let new = suite::new_op("bench", Rpc::RefundOrder, &format!("{worker}-{i}"), "o");
                let holder = LeaseHolder::new();
                store
                    .claim(
                        new.clone(),
                        holder,
                        suite::t(0),
                        std::time::Duration::from_secs(30),
                    )
                    .await
                    .unwrap();
                let done = refund_gateway_domain::Completion {
                    state: refund_gateway_domain::OperationState::Succeeded,
                    response: refund_gateway_domain::StoredResponse::default(),
                    refund_id: None,
                    correlation_id: None,
                    detail: "ok".into(),
                    trace_id: None,
                };
                store
                    .finish(new.operation_id, holder, done, suite::t(1))
                    .await
                    .unwrap();
            }
        });
    }
    tasks.join_all().await;
    let elapsed = start.elapsed();
    println!(
        "{} claim+finish pairs in {elapsed:?}: {:.0}/s",
        256 * 40,
        f64::from(256 * 40) / elapsed.as_secs_f64()
    );
    let stats = sqlite.writer_stats();
    println!(
        "{} writes in {} transactions: {:.1} per transaction",
        stats.requests,
        stats.transactions,
        stats.requests as f64 / stats.transactions.max(1) as f64
    );
}

/// Runs `writes` at once while another connection holds the database's write lock, which it
/// releases only once every write has been handed to the store (each has been polled once; a
/// store call queues its write for the writer then). So the writer waits (`busy_timeout`) in
/// the transaction of whatever it took first while all the others queue behind it: the group
/// is certain, not a matter of timing.
async fn sent_together<F>(path: &std::path::Path, writes: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    use sqlx::Connection;
    use std::task::Poll;

    let mut lock_holder = sqlx::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new().filename(path),
    )
    .await
    .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut lock_holder)
        .await
        .unwrap();
    let (sent, mut all_sent) = tokio::sync::mpsc::unbounded_channel();
    let tasks: Vec<_> = writes
        .into_iter()
        .map(|write| {
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut write = Box::pin(write);
                let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
                sent.send(()).unwrap();
                match first {
                    Poll::Ready(output) => output,
                    Poll::Pending => write.await,
                }
            })
        })
        .collect();
    for _ in 0..tasks.len() {
        all_sent.recv().await.unwrap();
    }
    sqlx::query("ROLLBACK")
        .execute(&mut lock_holder)
        .await
        .unwrap();
    let mut outputs = Vec::with_capacity(tasks.len());
    for task in tasks {
        outputs.push(task.await.unwrap());
    }
    outputs
}

/// Group commit, read from the writer's counters: 64 claims sent together are committed in
/// fewer transactions than there are claims, and so are their 64 finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_of_64_claims_and_64_finishes_shows_in_the_writer_counters() {
    const OPS: u64 = 64;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.sqlite3");
    let sqlite = Arc::new(SqliteStore::open(&path).await.unwrap());
    let store: Arc<dyn OperationStore> = sqlite.clone();
    let holder = LeaseHolder::new();
    let ops: Vec<_> = (0..OPS)
        .map(|i| suite::new_op("pos", Rpc::RefundOrder, &format!("group-{i}"), "order-1"))
        .collect();

    let before = sqlite.writer_stats();
    let claims = ops
        .iter()
        .map(|op| {
            let (store, op) = (store.clone(), op.clone());
            async move {
                store
                    .claim(op, holder, suite::t(0), std::time::Duration::from_secs(30))
                    .await
            }
        })
        .collect();
    for claim in sent_together(&path, claims).await {
        assert!(matches!(claim.unwrap(), Claim::New(_)));
    }
    let claimed = sqlite.writer_stats();
    assert_eq!(claimed.requests - before.requests, OPS, "{claimed:?}");
    let transactions = claimed.transactions - before.transactions;
    assert!(
        transactions < OPS,
        "{OPS} claims took {transactions} transactions: {before:?} -> {claimed:?}"
    );

    let finishes = ops
        .iter()
        .map(|op| {
            let (store, id) = (store.clone(), op.operation_id);
            async move {
                let done = Completion {
                    state: OperationState::Succeeded,
                    response: StoredResponse::default(),
                    refund_id: None,
                    correlation_id: None,
                    detail: "ok".into(),
                    trace_id: None,
                };
                store.finish(id, holder, done, suite::t(1)).await
            }
        })
        .collect();
    for finished in sent_together(&path, finishes).await {
        assert!(finished.unwrap(), "the holder's finish was not recorded");
    }
    let finished = sqlite.writer_stats();
    assert_eq!(finished.requests - claimed.requests, OPS, "{finished:?}");
    let transactions = finished.transactions - claimed.transactions;
    assert!(
        transactions < OPS,
        "{OPS} finishes took {transactions} transactions: {claimed:?} -> {finished:?}"
    );
    for op in &ops {
        let stored = store.get(op.operation_id).await.unwrap().unwrap();
        assert_eq!(stored.state, OperationState::Succeeded);
    }
}

/// Every case of the contract suite is in its list (`suite::all_cases!`), which both backends
/// expand: a case written but not listed would silently run nowhere.
#[test]
fn every_case_of_the_suite_is_listed() {
    let source = include_str!("suite/mod.rs");
    let (list, _) = source
        .split_once("pub(crate) use all_cases;")
        .expect("the all_cases! list");
    let listed: std::collections::BTreeSet<&str> = list
        .lines()
        .filter_map(|line| line.trim().strip_suffix(','))
        .filter(|name| {
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .collect();
    let cases: Vec<&str> = source
        .lines()
        .filter_map(|line| line.strip_prefix("pub async fn "))
        .filter(|rest| rest.contains("(store: Store"))
        .filter_map(|rest| rest.split('(').next())
        .collect();
    assert!(!cases.is_empty());
    for case in &cases {
        assert!(
            listed.contains(case),
            "suite case {case} is not in all_cases!"
        );
    }
}

/// A claim that fails halfway through a group leaves nothing behind: the writer's statements
/// say `OR FAIL` (SQLite keeps what the group wrote before the failing one, and no statement
/// journal), so it is the writer's rollback of the whole batch that undoes the neighbours'
/// claims before each request is replayed alone. A trigger injected into the file fails one
/// claim of a group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_failing_inside_a_group_leaves_no_trace_of_its_neighbours_attempt() {
    use sqlx::Connection;

    const OPS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.sqlite3");
    let sqlite = Arc::new(SqliteStore::open(&path).await.unwrap());
    let store: Arc<dyn OperationStore> = sqlite.clone();
    let mut admin = sqlx::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new().filename(&path),
    )
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER injected_failure BEFORE INSERT ON operations \
         WHEN NEW.idempotency_key = 'boom' BEGIN SELECT RAISE(FAIL, 'injected'); END",
    )
    .execute(&mut admin)
    .await
    .unwrap();

    let holder = LeaseHolder::new();
    let keys: Vec<String> = (0..OPS)
        .map(|i| {
            if i == OPS / 2 {
                "boom".to_owned()
            } else {
                format!("fine-{i}")
            }
        })
        .collect();
    let before = sqlite.writer_stats();
    let claims = keys
        .iter()
        .map(|key| {
            let store = store.clone();
            let op = suite::new_op("pos", Rpc::RefundOrder, key, "order-1");
            async move {
                store
                    .claim(op, holder, suite::t(0), std::time::Duration::from_secs(30))
                    .await
            }
        })
        .collect();
    let outcomes = sent_together(&path, claims).await;
    let after = sqlite.writer_stats();
    assert!(
        after.transactions - before.transactions > 1,
        "the group was not replayed: {before:?} -> {after:?}"
    );
    for (key, outcome) in keys.iter().zip(outcomes) {
        match (key.as_str(), outcome) {
            ("boom", Err(_)) => {}
            ("boom", other) => panic!("the injected failure did not fail its claim: {other:?}"),
            (_, Ok(Claim::New(_))) => {}
            (key, other) => panic!("{key}: {other:?}"),
        }
    }
    // Each good claim once, with one "claimed" event; nothing of the failed one.
    let (operations, events): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM operations), (SELECT COUNT(*) FROM audit_events)",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(operations, OPS as i64 - 1);
    assert_eq!(events, OPS as i64 - 1);
}

/// Committed pages reach the database file from the background checkpointer (nudged every 256
/// writes), long before the writer's own checkpoint (at 8000 WAL pages) would copy them: the
/// file grows while the WAL is far smaller than that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_pages_are_copied_to_the_database_file_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.sqlite3");
    let store = SqliteStore::open(&path).await.unwrap();
    let size = || std::fs::metadata(&path).unwrap().len();
    let before = size();
    for i in 0..300 {
        let new = suite::new_op("pos", Rpc::RefundOrder, &format!("bg-{i}"), "order-1");
        store
            .claim(
                new,
                LeaseHolder::new(),
                suite::t(0),
                std::time::Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
    let wal = std::fs::metadata(dir.path().join("x.sqlite3-wal"))
        .unwrap()
        .len();
    assert!(
        wal < 8000 * 4096,
        "{wal} bytes of WAL: the writer's checkpoint may have run"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while size() <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the database file is still {before} bytes"
        );
        tokio::task::yield_now().await;
        std::thread::yield_now();
    }
}

/// An event appended without a claim instant, as a release before migration 0012 appended it,
/// is still listed with its operation's events, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_without_a_claim_instant_is_still_listed() {
    use sqlx::Connection;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.sqlite3");
    let store = SqliteStore::open(&path).await.unwrap();
    let new = suite::new_op("pos", Rpc::RefundOrder, "unclaimed", "order-1");
    store
        .claim(
            new.clone(),
            LeaseHolder::new(),
            suite::t(0),
            std::time::Duration::from_secs(30),
        )
        .await
        .unwrap();
    let mut admin = sqlx::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new().filename(&path),
    )
    .await
    .unwrap();
    sqlx::query(suite::INSERT_UNCLAIMED_EVENT)
        .execute(&mut admin)
        .await
        .unwrap();
    assert_eq!(
        suite::event_details(&store, "unclaimed").await,
        ["claimed", "older release"]
    );
}
