//! The store contract on PostgreSQL. The server comes from `REFUND_GATEWAY_TEST_DATABASE_URL`
//! (`source scripts/postgres.sh && start_test_postgres` starts one); each test creates its own
//! database on it, so tests run in parallel. Without the variable the tests are skipped, except
//! under `CI=true`, where they fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod suite;
mod support;

use std::sync::Arc;
use std::time::Duration;

use refund_gateway_domain::{
    Caller, Claim, IdempotencyKey, LeaseHolder, NewOperation, OperationId, OperationState,
    OperationStore, ResourceKind, Rpc, StoreError, Unresolved,
};
use refund_gateway_store::postgres::DEFAULT_ORDER_LOCK_LEASE;
use refund_gateway_store::{DatabaseConfig, PostgresStore, connect};
use secrecy::SecretString;
use sqlx::{Connection, PgConnection};
use time::OffsetDateTime;

use support::{admin_url, eventually, fresh_database, with_database};

/// A store on a fresh database (opened the way the server opens it) and a peer: a second
/// store with its own pool on the same database, standing in for another replica.
async fn stores() -> Option<(Arc<dyn OperationStore>, Arc<dyn OperationStore>)> {
    let admin = admin_url()?;
    let url = fresh_database(&admin).await;
    let config =
        DatabaseConfig::from_url_or_data_dir(Some(&url), std::path::Path::new(".")).unwrap();
    let store = connect(&config).await.unwrap();
    let peer = connect(&config).await.unwrap();
    Some((store, peer))
}

macro_rules! on_postgres {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let Some((store, peer)) = stores().await else { return };
            suite::$case(store, Some(peer)).await;
        }
    )*};
}

suite::all_cases!(on_postgres);

const LEASE: Duration = Duration::from_secs(30);

/// A bound on waits for something that should happen "at once": far below every lease, so
/// reaching it means a lease, not liveness, would have freed it.
const AT_ONCE: Duration = Duration::from_secs(5);

/// The URL of a fresh database, or `None` when the tests are skipped.
async fn fresh_url() -> Option<String> {
    Some(fresh_database(&admin_url()?).await)
}

/// A replica on `url` with a pool of `max_connections`.
async fn replica(url: &str, max_connections: u32) -> PostgresStore {
    PostgresStore::connect(&SecretString::from(url.to_owned()), max_connections)
        .await
        .unwrap()
}

/// A refund operation under `key` on `order`.
fn operation(key: &str, order: &str) -> NewOperation {
    let caller = Caller::named("pos");
    let key = IdempotencyKey::parse(key).unwrap();
    NewOperation {
        operation_id: OperationId::derive(&caller, Rpc::RefundOrder, &key),
        caller,
        rpc: Rpc::RefundOrder,
        idempotency_key: key,
        fingerprint: format!("fp-{order}"),
        klarna_account: "eu".to_owned(),
        order_id: order.to_owned(),
        resource_kind: ResourceKind::Order,
        resource_id: order.to_owned(),
        capture_id: None,
        amount: Some(100),
        currency: Some("EUR".to_owned()),
        reference: None,
        klarna_request: "{}".to_owned(),
        trace_id: None,
        traceparent: None,
    }
}

/// Claims `op` for `holder`, which must be new.
async fn claim(store: &PostgresStore, op: &NewOperation, holder: LeaseHolder, now: OffsetDateTime) {
    match store.claim(op.clone(), holder, now, LEASE).await.unwrap() {
        Claim::New(_) => {}
        Claim::Existing(existing) => panic!("expected a new claim, found {existing:?}"),
    }
}

/// The ids among `store`'s unresolved operations at the real now.
async fn unresolved_ids(store: &PostgresStore) -> Vec<OperationId> {
    store
        .unresolved(Unresolved::Due, OffsetDateTime::now_utc(), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|op| op.new.operation_id)
        .collect()
}

/// The backend pid holding the advisory lock of `key` in `url`'s database, if any.
async fn lock_holder_pid(url: &str, key: i64) -> Option<i32> {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let pid = sqlx::query_scalar::<_, i32>(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND classid::bigint = (($1 >> 32) & 4294967295) AND objid::bigint = ($1 & 4294967295)",
    )
    .bind(key)
    .fetch_optional(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    pid
}

/// Ends the session of backend `pid`, from `admin`. With a timeout, pg_terminate_backend
/// returns once the backend is gone, its locks released.
async fn terminate(admin: &mut PgConnection, pid: i32) {
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 10000)")
        .bind(pid)
        .fetch_one(admin)
        .await
        .unwrap();
    assert!(terminated, "backend {pid} not terminated");
}

/// The replica recorded on an operation.
async fn lease_replica(store: &PostgresStore, id: OperationId) -> Option<i64> {
    sqlx::query_scalar("SELECT lease_replica FROM operations WHERE operation_id = $1")
        .bind(id.to_string())
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// (replica, expires_at, the database's now) of the lease of an order, if taken.
async fn order_lease(store: &PostgresStore, order: &str) -> Option<(i64, i64, i64)> {
    sqlx::query_as(
        "SELECT replica, expires_at, \
           (extract(epoch FROM clock_timestamp()) * 1000000)::bigint \
         FROM resource_leases \
         WHERE klarna_account = 'eu' AND resource_kind = 'order' AND resource_id = $1",
    )
    .bind(order)
    .fetch_optional(store.pool())
    .await
    .unwrap()
}

/// The replica holding the lease of an order, if any.
async fn order_lease_replica(store: &PostgresStore, order: &str) -> Option<i64> {
    order_lease(store, order)
        .await
        .map(|(replica, _, _)| replica)
}

const HOLDER_A: LeaseHolder = LeaseHolder::from_uuid(uuid::Uuid::from_u128(0xA));
const HOLDER_B: LeaseHolder = LeaseHolder::from_uuid(uuid::Uuid::from_u128(0xB));

/// A replica that is gone (its store dropped, so its session ended) leaves claims that another
/// replica finds unresolved and takes over at once, long before their leases expire; claims
/// without a replica (made before the migration) still wait for expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_replicas_claims_are_free_before_their_leases_expire() {
    let Some(url) = fresh_url().await else { return };
    let (a, b) = (replica(&url, 4).await, replica(&url, 4).await);
    assert_ne!(a.replica(), b.replica());
    assert!(a.replica() >= 0 && a.is_live());
    let now = OffsetDateTime::now_utc();
    let op = operation("gone-1", "order-1");
    let legacy = operation("legacy-1", "order-2");
    claim(&a, &op, HOLDER_A, now).await;
    claim(&a, &legacy, HOLDER_A, now).await;
    assert_eq!(lease_replica(&a, op.operation_id).await, Some(a.replica()));
    // As claimed before migration 0003: no replica recorded.
    sqlx::query("UPDATE operations SET lease_replica = NULL WHERE operation_id = $1")
        .bind(legacy.operation_id.to_string())
        .execute(b.pool())
        .await
        .unwrap();

    // While A is alive, nothing of it is unresolved and B cannot take it over.
    assert!(unresolved_ids(&b).await.is_empty());
    assert!(
        !b.take_over(
            op.operation_id,
            HOLDER_B,
            OffsetDateTime::now_utc(),
            LEASE,
            None,
            None
        )
        .await
        .unwrap()
    );

    let a_key = a.replica();
    drop(a);
    eventually(AT_ONCE, "A's liveness lock ends with its store", || async {
        lock_holder_pid(&url, a_key).await.is_none()
    })
    .await;
    let seen = OffsetDateTime::now_utc();
    assert_eq!(unresolved_ids(&b).await, vec![op.operation_id]);
    let stored = b.get(op.operation_id).await.unwrap().unwrap();
    assert!(
        stored.lease_expires_at.unwrap() > seen + Duration::from_secs(20),
        "the lease must be far from expiry: {stored:?}"
    );
    assert!(
        b.take_over(
            op.operation_id,
            HOLDER_B,
            seen,
            LEASE,
            Some("t-b".into()),
            None
        )
        .await
        .unwrap()
    );
    let taken = b.get(op.operation_id).await.unwrap().unwrap();
    assert_eq!(taken.state, OperationState::InFlight);
    assert_eq!(taken.lease_holder, Some(HOLDER_B));
    assert_eq!(lease_replica(&b, op.operation_id).await, Some(b.replica()));
    // Now B's, and B is alive: not unresolved, not taken over again.
    assert!(!unresolved_ids(&b).await.contains(&op.operation_id));
    let c = replica(&url, 2).await;
    assert!(
        !c.take_over(
            op.operation_id,
            HOLDER_A,
            OffsetDateTime::now_utc(),
            LEASE,
            None,
            None
        )
        .await
        .unwrap()
    );

    // The claim without a replica keeps the lease-expiry rule.
    assert!(
        !b.take_over(
            legacy.operation_id,
            HOLDER_B,
            OffsetDateTime::now_utc(),
            LEASE,
            None,
            None
        )
        .await
        .unwrap()
    );
    assert!(
        b.take_over(
            legacy.operation_id,
            HOLDER_B,
            now + LEASE,
            LEASE,
            None,
            None
        )
        .await
        .unwrap()
    );
}

/// A live replica's claims are only taken over once their leases expire; its late record is
/// then ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_replicas_claims_wait_for_lease_expiry() {
    let Some(url) = fresh_url().await else { return };
    let (a, b) = (replica(&url, 4).await, replica(&url, 4).await);
    let now = OffsetDateTime::now_utc();
    let op = operation("live-1", "order-1");
    claim(&a, &op, HOLDER_A, now).await;
    let almost = now + Duration::from_secs(29);
    assert!(
        !b.take_over(op.operation_id, HOLDER_B, almost, LEASE, None, None)
            .await
            .unwrap()
    );
    assert!(
        b.unresolved(Unresolved::Due, almost, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let expired = now + LEASE;
    assert_eq!(
        b.unresolved(Unresolved::Due, expired, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        b.take_over(op.operation_id, HOLDER_B, expired, LEASE, None, None)
            .await
            .unwrap()
    );
    assert!(
        !a.mark_pending(
            op.operation_id,
            HOLDER_A,
            None,
            "late".into(),
            None,
            expired
        )
        .await
        .unwrap()
    );
    assert_eq!(lease_replica(&b, op.operation_id).await, Some(b.replica()));
    // The replica goes with the lease.
    assert!(
        b.mark_pending(
            op.operation_id,
            HOLDER_B,
            None,
            "unknown".into(),
            None,
            expired
        )
        .await
        .unwrap()
    );
    assert_eq!(lease_replica(&b, op.operation_id).await, None);
    assert!(a.is_live() && b.is_live());
}

/// A connection cut while it sat idle (a restarted server, a firewall's timeout) is pinged
/// and replaced before it is used, so the next statement succeeds: the pool's, and the
/// store's own for claims and outcomes alike. Busier connections are used without a ping (a
/// round trip per statement otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_while_idle_is_replaced_before_use() {
    let Some(url) = fresh_url().await else { return };
    let store = replica(&url, 1).await;
    let op = operation("idle-cut-1", "order-1");
    claim(&store, &op, HOLDER_A, OffsetDateTime::now_utc()).await;
    assert!(store.get(op.operation_id).await.unwrap().is_some());

    // The claim's session and the pool's, each found by its last statement.
    let mut admin = PgConnection::connect(&url).await.unwrap();
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid() \
         AND (query LIKE '%INSERT INTO operations%' OR query LIKE 'SELECT % FROM operations %')",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(
        pids.len(),
        2,
        "the claims' session and the pool's: {pids:?}"
    );
    for pid in pids {
        terminate(&mut admin, pid).await;
    }

    // Not a wait for an event: the connections must have been idle past the threshold.
    tokio::time::sleep(PostgresStore::PING_AFTER_IDLE + Duration::from_millis(100)).await;
    let read = store.get(op.operation_id).await;
    assert!(
        matches!(read, Ok(Some(_))),
        "the first read after the cut: {read:?}"
    );
    let next = operation("idle-cut-2", "order-2");
    claim(&store, &next, HOLDER_A, OffsetDateTime::now_utc()).await;
}

/// Ending a replica's liveness session from outside (an administrator, a network cut) frees
/// its claims at once; the store keeps working, takes its lock on the same key again, and its
/// claims are protected again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_liveness_session_frees_claims_and_comes_back() {
    let Some(url) = fresh_url().await else { return };
    let (a, b) = (replica(&url, 4).await, replica(&url, 4).await);
    let op = operation("terminated-1", "order-1");
    claim(&a, &op, HOLDER_A, OffsetDateTime::now_utc()).await;
    let pid = lock_holder_pid(&url, a.replica()).await.unwrap();

    let mut admin = PgConnection::connect(&url).await.unwrap();
    terminate(&mut admin, pid).await;
    // At once: A notices the loss only at its next check, and reconnects a second later.
    assert!(
        b.take_over(
            op.operation_id,
            HOLDER_B,
            OffsetDateTime::now_utc(),
            LEASE,
            None,
            None
        )
        .await
        .unwrap(),
        "a claim of a replica whose session ended must be free at once"
    );

    // A comes back on the same key, in a new session.
    eventually(
        Duration::from_secs(30),
        "A takes its liveness lock again",
        || async {
            lock_holder_pid(&url, a.replica())
                .await
                .is_some_and(|new_pid| new_pid != pid)
        },
    )
    .await;
    eventually(AT_ONCE, "A reports itself live", || async { a.is_live() }).await;
    // Its late record of the taken-over operation is ignored...
    assert!(
        !a.mark_pending(
            op.operation_id,
            HOLDER_A,
            None,
            "late".into(),
            None,
            OffsetDateTime::now_utc()
        )
        .await
        .unwrap()
    );
    // ...and its new claims are protected again.
    let again = operation("terminated-2", "order-1");
    claim(&a, &again, HOLDER_A, OffsetDateTime::now_utc()).await;
    assert!(
        !b.take_over(
            again.operation_id,
            HOLDER_B,
            OffsetDateTime::now_utc(),
            LEASE,
            None,
            None
        )
        .await
        .unwrap()
    );
    admin.close().await.unwrap();
}

/// Liveness is read correctly for every key, negative ones and ones with both halves in use
/// included: while a session holds the key's lock, the claim is held; once it ends, it is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_reads_every_key() {
    let Some(url) = fresh_url().await else { return };
    let (a, b) = (replica(&url, 4).await, replica(&url, 4).await);
    let keys = [-1, i64::MIN, -123_456_789_012, (1 << 32) + 5, i64::MAX, 7];
    let mut holder = PgConnection::connect(&url).await.unwrap();
    let mut ops = Vec::new();
    for (i, key) in keys.into_iter().enumerate() {
        let op = operation(&format!("key-{i}"), "order-1");
        claim(&a, &op, HOLDER_A, OffsetDateTime::now_utc()).await;
        sqlx::query("UPDATE operations SET lease_replica = $2 WHERE operation_id = $1")
            .bind(op.operation_id.to_string())
            .bind(key)
            .execute(a.pool())
            .await
            .unwrap();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut holder)
            .await
            .unwrap();
        ops.push(op.operation_id);
    }
    // A lock on a neighbouring key keeps nothing alive.
    let unrelated = operation("key-unrelated", "order-1");
    claim(&a, &unrelated, HOLDER_A, OffsetDateTime::now_utc()).await;
    sqlx::query("UPDATE operations SET lease_replica = -2 WHERE operation_id = $1")
        .bind(unrelated.operation_id.to_string())
        .execute(a.pool())
        .await
        .unwrap();

    assert_eq!(unresolved_ids(&b).await, vec![unrelated.operation_id]);
    for id in &ops {
        assert!(
            !b.take_over(*id, HOLDER_B, OffsetDateTime::now_utc(), LEASE, None, None)
                .await
                .unwrap()
        );
    }
    holder.close().await.unwrap();
    eventually(AT_ONCE, "the keys' session ends", || async {
        unresolved_ids(&b).await.len() == keys.len() + 1
    })
    .await;
    for id in &ops {
        assert!(
            b.take_over(*id, HOLDER_B, OffsetDateTime::now_utc(), LEASE, None, None)
                .await
                .unwrap()
        );
    }
}

/// Two replicas: the second locker waits while the first holds the order, and gets it only
/// after the release (woken by its notification); released locks leave no row behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_locks_serialize_across_replicas() {
    let Some(url) = fresh_url().await else { return };
    let (one, two) = (replica(&url, 4).await, replica(&url, 4).await);
    let log = Arc::new(std::sync::Mutex::new(Vec::<&'static str>::new()));

    let held = one.lock_order("eu", "order-1").await.unwrap();
    log.lock().unwrap().push("one locked");
    let waiter = {
        let (log, two) = (log.clone(), two.clone());
        tokio::spawn(async move {
            let lock = two.lock_order("eu", "order-1").await.unwrap();
            log.lock().unwrap().push("two locked");
            lock.release().await;
        })
    };
    // A window for the waiter to (wrongly) get the lock: several of its tries. Nothing happens
    // in it to wait for; what is checked is that nothing does.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiter.is_finished());
    assert_eq!(
        order_lease_replica(&one, "order-1").await,
        Some(one.replica())
    );
    log.lock().unwrap().push("one releases");
    let released = tokio::time::Instant::now();
    held.release().await;
    tokio::time::timeout(AT_ONCE, waiter)
        .await
        .expect("the waiter must get the released lock")
        .unwrap();
    // At once: the release's notification wakes the waiter (at worst, its next try does).
    assert!(released.elapsed() < Duration::from_secs(2));
    assert_eq!(
        *log.lock().unwrap(),
        vec!["one locked", "one releases", "two locked"]
    );
    assert_eq!(order_lease(&one, "order-1").await, None);
}

/// The takers counted as waiting for the lease of an order (0 when it is not leased).
async fn lease_waiters(store: &PostgresStore, order: &str) -> i32 {
    sqlx::query_scalar(
        "SELECT waiters FROM resource_leases \
         WHERE klarna_account = 'eu' AND resource_kind = 'order' AND resource_id = $1",
    )
    .bind(order)
    .fetch_optional(store.pool())
    .await
    .unwrap()
    .unwrap_or(0)
}

/// A release is announced only when a taker waits for it: a listener on the release channel
/// hears the waited-for releases of order-1 and order-2, in that order, and nothing for the
/// releases nobody waited for (order-1's before them, and each waiter's own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_is_announced_only_when_someone_waits() {
    let Some(url) = fresh_url().await else { return };
    let (one, two) = (replica(&url, 4).await, replica(&url, 4).await);
    let mut listener = sqlx::postgres::PgListener::connect(&url).await.unwrap();
    // The channel every release announces itself on, in every version.
    listener
        .listen("refund_gateway_resource_released")
        .await
        .unwrap();

    one.lock_order("eu", "order-1")
        .await
        .unwrap()
        .release()
        .await;

    let mut announced = Vec::new();
    for order in ["order-1", "order-2"] {
        let held = one.lock_order("eu", order).await.unwrap();
        let waiter = {
            let two = two.clone();
            tokio::spawn(async move { two.lock_order("eu", order).await.unwrap().release().await })
        };
        eventually(
            AT_ONCE,
            "the second replica waits for the lease",
            || async { lease_waiters(&one, order).await > 0 },
        )
        .await;
        held.release().await;
        tokio::time::timeout(AT_ONCE, waiter)
            .await
            .expect("the waiter must get the released lock")
            .unwrap();
        let heard = tokio::time::timeout(AT_ONCE, listener.recv())
            .await
            .expect("a waited-for release must be announced")
            .unwrap();
        announced.push(heard.payload().to_owned());
    }
    // Had the first release of order-1 been announced, both would be order-1's.
    assert_ne!(announced[0], announced[1]);
    assert_eq!(lease_waiters(&one, "order-1").await, 0, "released: no row");
}

/// A new claim takes its order's lease with it when the lease is free, in the claim's
/// statement: the lease is the claiming replica's when the claim returns, renewed while held
/// and gone when released. A claim whose order is leased (by a live holder) comes without
/// the lock, as does a claim of a stored operation; an expired lease is taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_claim_takes_its_free_order_lock_in_the_same_statement() {
    let Some(url) = fresh_url().await else { return };
    let (one, two) = (replica(&url, 4).await, replica(&url, 4).await);
    let now = OffsetDateTime::now_utc();

    let first = operation("claim-lock-1", "order-7");
    let (claim, lock) = one
        .claim_and_lock(first.clone(), HOLDER_A, now, LEASE)
        .await
        .unwrap();
    assert!(matches!(claim, Claim::New(_)));
    let lock = lock.expect("a free order's lock comes with the claim");
    let (leased_by, expires_at, db_now) = order_lease(&one, "order-7").await.unwrap();
    assert_eq!(leased_by, one.replica());
    assert!(expires_at > db_now);

    // Held: another replica's claim on the order is made, without the lock.
    let second = operation("claim-lock-2", "order-7");
    let (claim, none) = two
        .claim_and_lock(second.clone(), HOLDER_B, now, LEASE)
        .await
        .unwrap();
    assert!(matches!(claim, Claim::New(_)));
    assert!(none.is_none(), "a held lock must not come with a claim");
    assert_eq!(
        order_lease_replica(&one, "order-7").await,
        Some(one.replica())
    );
    // A stored operation is not claimed again, and brings no lock.
    let (claim, none) = two
        .claim_and_lock(first.clone(), HOLDER_B, now, LEASE)
        .await
        .unwrap();
    assert!(matches!(claim, Claim::Existing(_)));
    assert!(none.is_none());

    lock.release().await;
    assert_eq!(order_lease(&one, "order-7").await, None);

    // An expired lease (its holder stopped renewing) is taken with the next claim.
    let stale = two.lock_order("eu", "order-8").await.unwrap();
    sqlx::query("UPDATE resource_leases SET expires_at = 0 WHERE resource_id = 'order-8'")
        .execute(one.pool())
        .await
        .unwrap();
    let third = operation("claim-lock-3", "order-8");
    let (claim, lock) = one
        .claim_and_lock(third, HOLDER_A, now, LEASE)
        .await
        .unwrap();
    assert!(matches!(claim, Claim::New(_)));
    let lock = lock.expect("an expired lease is taken with the claim");
    assert_eq!(
        order_lease_replica(&one, "order-8").await,
        Some(one.replica())
    );
    // The stale holder's late release leaves the new holder's lease alone.
    stale.release().await;
    assert_eq!(
        order_lease_replica(&one, "order-8").await,
        Some(one.replica())
    );
    lock.release().await;
    assert_eq!(order_lease(&one, "order-8").await, None);
}

/// A finish that releases its order lock is one statement: the lease row is gone when it
/// returns, and a waiter on another replica hears the release announced (it does not find
/// the lease by its backoff).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_announces_the_release_of_its_order_lock() {
    let Some(url) = fresh_url().await else { return };
    let (one, two) = (replica(&url, 4).await, replica(&url, 4).await);
    let mut listener = sqlx::postgres::PgListener::connect(&url).await.unwrap();
    listener
        .listen("refund_gateway_resource_released")
        .await
        .unwrap();
    let op = operation("finish-release", "order-9");
    let now = OffsetDateTime::now_utc();
    let holder = LeaseHolder::new();
    claim(&one, &op, holder, now).await;
    let held = one.lock_order("eu", "order-9").await.unwrap();
    let waiter = {
        let two = two.clone();
        tokio::spawn(async move { two.lock_order("eu", "order-9").await.unwrap() })
    };
    eventually(
        AT_ONCE,
        "the second replica waits for the lease",
        || async { lease_waiters(&one, "order-9").await > 0 },
    )
    .await;
    let done = refund_gateway_domain::Completion {
        state: OperationState::Succeeded,
        response: refund_gateway_domain::StoredResponse {
            code: 0,
            message: String::new(),
            payload: b"done".to_vec(),
        },
        refund_id: Some("refund-9".to_owned()),
        correlation_id: None,
        detail: "klarna answered".to_owned(),
        trace_id: None,
    };
    assert!(
        one.finish_and_release(op.operation_id, holder, done, now, held)
            .await
            .unwrap()
    );
    tokio::time::timeout(AT_ONCE, listener.recv())
        .await
        .expect("a waited-for release must be announced")
        .unwrap();
    let taken = tokio::time::timeout(AT_ONCE, waiter)
        .await
        .expect("the waiter must get the released lock")
        .unwrap();
    assert_eq!(
        order_lease_replica(&two, "order-9").await,
        Some(two.replica())
    );
    let stored = one.get(op.operation_id).await.unwrap().unwrap();
    assert_eq!(stored.state, OperationState::Succeeded);
    assert_eq!(stored.lease_expires_at, None);
    taken.release().await;
    assert_eq!(order_lease(&two, "order-9").await, None);
}

/// A replica whose session dies while it holds an order lock loses it at once: the waiting
/// replica gets it long before the lease would expire, and the dead holder's late release
/// does not free the new holder's lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_replicas_order_lock_is_free_at_once() {
    let Some(url) = fresh_url().await else { return };
    let (a, b) = (replica(&url, 4).await, replica(&url, 4).await);
    let held = a.lock_order("eu", "order-x").await.unwrap();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.lock_order("eu", "order-x").await.unwrap() })
    };
    // A window for the waiter to (wrongly) take a live holder's lock: nothing happens in it to
    // wait for; what is checked is that nothing does.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        !waiter.is_finished(),
        "a live holder's lock must not be taken"
    );

    // A's store goes away (its liveness session ends); the lock guard lingers, still
    // renewing, as a stalled process's would.
    let died = tokio::time::Instant::now();
    drop(a);
    let taken = tokio::time::timeout(AT_ONCE, waiter)
        .await
        .expect("a gone replica's order lock must be free at once")
        .unwrap();
    assert!(died.elapsed() < DEFAULT_ORDER_LOCK_LEASE);
    let (replica_now, expires_at, db_now) = order_lease(&b, "order-x").await.unwrap();
    assert_eq!(replica_now, b.replica());
    assert!(expires_at > db_now);
    // The old guard's release is a no-op: the lease is B's now.
    held.release().await;
    assert_eq!(order_lease_replica(&b, "order-x").await, Some(b.replica()));
    taken.release().await;
    assert_eq!(order_lease(&b, "order-x").await, None);
}

/// A live holder keeps its lock for many lease lengths (it renews), and a dropped lock is
/// released without waiting for expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_order_locks_are_renewed_and_dropped_ones_released() {
    let Some(url) = fresh_url().await else { return };
    let short = Duration::from_millis(600);
    let a = replica(&url, 4).await.with_order_lock_lease(short);
    let b = replica(&url, 4).await.with_order_lock_lease(short);
    let held = a.lock_order("eu", "order-r").await.unwrap();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.lock_order("eu", "order-r").await.unwrap() })
    };
    // Past the end of the first lease, on the clock leases are judged by (the database's): had
    // it not been renewed, the waiter could take it from here on.
    let (_, first_end, _) = order_lease(&a, "order-r").await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the database clock passes two lease lengths after the first lease's end",
        || async {
            let (_, _, db_now) = order_lease(&a, "order-r").await.unwrap();
            db_now > first_end + 2 * i64::try_from(short.as_micros()).unwrap()
        },
    )
    .await;
    assert!(!waiter.is_finished(), "a renewed lock must not expire");
    let (holder, expires_at, db_now) = order_lease(&a, "order-r").await.unwrap();
    assert_eq!(holder, a.replica());
    assert!(expires_at > db_now);

    drop(held);
    let relocked = tokio::time::timeout(AT_ONCE, waiter)
        .await
        .expect("a dropped lock must be released")
        .unwrap();
    relocked.release().await;
}

/// Holding order locks holds no pool connection: with a pool of two, ten orders are locked at
/// once, and the holders still write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_locks_hold_no_connection() {
    let Some(url) = fresh_url().await else { return };
    let store = replica(&url, 2).await;
    let locks = tokio::time::timeout(
        Duration::from_secs(30),
        futures_join_all((0..10).map(|i| {
            let store = store.clone();
            async move { store.lock_order("eu", &format!("order-{i}")).await.unwrap() }
        })),
    )
    .await
    .expect("ten locks on a pool of two");
    assert!(store.pool().size() <= 2);
    // sqlx returns a connection to the pool from a task of its own, just after its statement.
    eventually(
        AT_ONCE,
        "every pool connection idle while ten locks are held",
        || async { store.pool().num_idle() == store.pool().size() as usize },
    )
    .await;
    for i in 0..10 {
        let op = operation(&format!("held-{i}"), &format!("order-{i}"));
        claim(&store, &op, HOLDER_A, OffsetDateTime::now_utc()).await;
        assert!(
            store
                .mark_pending(
                    op.operation_id,
                    HOLDER_A,
                    None,
                    "x".into(),
                    None,
                    OffsetDateTime::now_utc()
                )
                .await
                .unwrap()
        );
    }
    for lock in locks {
        lock.release().await;
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM resource_leases")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// Runs the futures concurrently and collects their outputs in order.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

/// Connection errors never show the password.
#[tokio::test]
async fn errors_hide_the_password() {
    // Port 1 on localhost: refused at once.
    let url = "postgres://user:hunter2-very-secret@127.0.0.1:1/db?connect_timeout=2";
    let config =
        DatabaseConfig::from_url_or_data_dir(Some(url), std::path::Path::new(".")).unwrap();
    match connect(&config).await {
        Err(StoreError::Unavailable(message)) => {
            assert!(!message.contains("hunter2"), "{message}");
        }
        Err(other) => panic!("{other:?}"),
        Ok(store) => panic!("connected to nothing: {store:?}"),
    }
    assert!(!format!("{config:?}").contains("hunter2"));
}

#[test]
fn database_urls() {
    assert_eq!(
        with_database("postgres://p@127.0.0.1:5/postgres", "t_1"),
        "postgres://p@127.0.0.1:5/t_1"
    );
    assert_eq!(
        with_database("postgres://p@h/postgres?sslmode=disable", "t_1"),
        "postgres://p@h/t_1?sslmode=disable"
    );
}

/// A counter of PostgreSQL's statistics views in `url`'s database: `sql` selects one number
/// for the object named `$1`, as far as the sessions have reported it.
async fn statistic(url: &str, sql: &str, name: &str) -> i64 {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let value = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    value
}

/// Scans of `index` in `url`'s database.
async fn index_scans(url: &str, index: &str) -> i64 {
    statistic(
        url,
        "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = $1",
        index,
    )
    .await
}

/// A transition of one operation finds its row by the operation's key whatever PostgreSQL's
/// statistics say. Under load they said, from an analysis made while few operations were in
/// flight, that `state = 'IN_FLIGHT'` picks as few rows as the key; the planner then read
/// every in-flight operation (and every index entry they left behind) through
/// `operations_by_state` for each finish. Here: 20,000 finished operations, analyzed, then
/// claims renewed, marked pending, abandoned and finished; none may scan that index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_find_their_operation_by_key_whatever_the_statistics() {
    let Some(url) = fresh_url().await else { return };
    let store = replica(&url, 2).await;
    sqlx::query(
        "INSERT INTO operations (operation_id, caller, rpc, idempotency_key, fingerprint, \
           klarna_account, order_id, resource_id, klarna_request, state, created_at, updated_at) \
         SELECT 'done-' || n, 'pos', 'RefundOrder', 'key-' || n, 'fp', 'eu', 'order-' || n, \
           'order-' || n, '{}', 'SUCCEEDED', n, n \
         FROM generate_series(1, 20000) AS n",
    )
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query("ANALYZE operations")
        .execute(store.pool())
        .await
        .unwrap();
    let before = index_scans(&url, "operations_by_state").await;

    let now = OffsetDateTime::now_utc();
    let holder = LeaseHolder::new();
    let ops: Vec<NewOperation> = (0..20)
        .map(|n| operation(&format!("planned-{n}"), &format!("order-p{n}")))
        .collect();
    for op in &ops {
        claim(&store, op, holder, now).await;
        assert!(
            store
                .renew_lease(op.operation_id, holder, now, LEASE)
                .await
                .unwrap()
        );
    }
    let (pending, abandoned, finished) = (&ops[0], &ops[1], &ops[2..]);
    assert!(
        store
            .mark_pending(
                pending.operation_id,
                holder,
                None,
                "timeout".to_owned(),
                None,
                now
            )
            .await
            .unwrap()
    );
    assert!(
        store
            .abandon(abandoned.operation_id, holder, "refused".to_owned(), now)
            .await
            .unwrap()
    );
    for op in finished {
        let done = refund_gateway_domain::Completion {
            state: OperationState::Succeeded,
            response: refund_gateway_domain::StoredResponse {
                code: 0,
                message: String::new(),
                payload: b"done".to_vec(),
            },
            refund_id: None,
            correlation_id: None,
            detail: "klarna answered".to_owned(),
            trace_id: None,
        };
        assert!(
            store
                .finish(op.operation_id, holder, done, now)
                .await
                .unwrap()
        );
    }
    // A session reports its statistics when it ends (an idle one, only now and then).
    let expected_updates = 20 + 1 + finished.len() as i64;
    store.pool().close().await;
    eventually(
        Duration::from_secs(30),
        "the store's sessions report their statistics",
        || async {
            let sql = "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = $1";
            statistic(&url, sql, "operations").await >= expected_updates
        },
    )
    .await;
    assert_eq!(
        index_scans(&url, "operations_by_state").await - before,
        0,
        "a transition scanned operations_by_state"
    );
}

/// An event appended without a claim instant, as a replica of a release before migration 0012
/// appends it during a rolling upgrade, is still listed with its operation's events, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_without_a_claim_instant_is_still_listed() {
    let Some(url) = fresh_url().await else {
        return;
    };
    let store = replica(&url, 2).await;
    let op = operation("unclaimed", "order-unclaimed");
    claim(&store, &op, HOLDER_A, OffsetDateTime::now_utc()).await;
    let mut conn = PgConnection::connect(&url).await.unwrap();
    sqlx::query(suite::INSERT_UNCLAIMED_EVENT)
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        suite::event_details(&store, "unclaimed").await,
        ["claimed", "older release"]
    );
}
