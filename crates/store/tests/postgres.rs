//! The store contract on PostgreSQL. The server comes from `REFUND_GATEWAY_TEST_DATABASE_URL`
//! (`source scripts/postgres.sh && start_test_postgres` starts one); each test creates its own
//! database on it, so tests run in parallel. Without the variable the tests are skipped, except
//! under `CI=true`, where they fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod suite;

use std::sync::Arc;
use std::time::Duration;

use refund_gateway_domain::{OperationStore, StoreError};
use refund_gateway_store::{DatabaseConfig, PostgresStore, connect};
use secrecy::SecretString;
use sqlx::{Connection, PgConnection};

const URL_VAR: &str = "REFUND_GATEWAY_TEST_DATABASE_URL";

/// The admin URL, or `None` (after saying so) when the tests should be skipped.
fn admin_url() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "{URL_VAR} is not set, and CI=true requires the PostgreSQL tests: run \
             `source scripts/postgres.sh && start_test_postgres` first (it starts a throwaway \
             server and sets {URL_VAR})"
        ),
        _ => {
            eprintln!(
                "skipping: {URL_VAR} is not set (source scripts/postgres.sh && start_test_postgres)"
            );
            None
        }
    }
}

/// `url` with its database name replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap();
    let mut out = format!("{scheme}://{authority}/{database}");
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A fresh, empty database on the test server, and its URL.
async fn fresh_database(admin: &str) -> String {
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    with_database(admin, &name)
}

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

/// Two pools (two replicas): the second locker is seen waiting inside PostgreSQL before the
/// first releases, and gets the lock only after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_lock_serializes_across_pools() {
    let Some(admin) = admin_url() else { return };
    let url = SecretString::from(fresh_database(&admin).await);
    let one = PostgresStore::connect(&url, 4).await.unwrap();
    let two = PostgresStore::connect(&url, 4).await.unwrap();
    let log = Arc::new(std::sync::Mutex::new(Vec::<&'static str>::new()));

    let held = one.lock_order("eu", "order-1").await.unwrap();
    log.lock().unwrap().push("one locked");
    let waiter = {
        let log = log.clone();
        tokio::spawn(async move {
            let lock = two.lock_order("eu", "order-1").await.unwrap();
            log.lock().unwrap().push("two locked");
            lock.release().await;
        })
    };
    // Observe, not time: wait until PostgreSQL shows the second session waiting.
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(one.pool())
        .await
        .unwrap();
        if waiting == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    log.lock().unwrap().push("one releases");
    held.release().await;
    waiter.await.unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        vec!["one locked", "one releases", "two locked"]
    );

    // Released locks leave no advisory lock behind, and released connections are reused.
    let remaining: i64 =
        // pg_locks spans the whole server: count only this test's database, since other tests
        // run beside this one in databases of their own.
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
            .fetch_one(one.pool())
            .await
            .unwrap();
    assert_eq!(remaining, 0);
}

/// A guard dropped without release closes its session, which ends the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_advisory_lock_dies_with_its_session() {
    let Some(admin) = admin_url() else { return };
    let url = SecretString::from(fresh_database(&admin).await);
    let one = PostgresStore::connect(&url, 2).await.unwrap();
    let two = PostgresStore::connect(&url, 2).await.unwrap();
    let lock = one.lock_order("eu", "order-9").await.unwrap();
    drop(lock);
    let again = tokio::time::timeout(Duration::from_secs(30), two.lock_order("eu", "order-9"))
        .await
        .expect("the dropped lock must end with its connection")
        .unwrap();
    again.release().await;
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
