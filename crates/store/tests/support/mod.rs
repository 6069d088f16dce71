//! PostgreSQL test databases: the server comes from `REFUND_GATEWAY_TEST_DATABASE_URL`
//! (`source scripts/postgres.sh && start_test_postgres` starts one); each test creates its own
//! database on it. Without the variable the tests are skipped (and say so), except under
//! `CI=true`, where they fail.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use sqlx::{Connection, PgConnection};

/// The variable naming the test server.
pub const URL_VAR: &str = "REFUND_GATEWAY_TEST_DATABASE_URL";

/// The admin URL, or `None` (after saying so) when the test is skipped.
pub fn admin_url() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "{URL_VAR} is not set, and CI=true requires the PostgreSQL tests: run \
             `source scripts/postgres.sh && start_test_postgres` first (it starts a throwaway \
             server and sets {URL_VAR})"
        ),
        _ => {
            use std::io::Write as _;
            // The line the README's test command counts as a skipped test (libtest has no
            // skipped state), written to the stderr handle itself, which libtest does not
            // capture; libtest names the test's thread after the test.
            let thread = std::thread::current();
            let test = thread.name().unwrap_or("<unnamed test>");
            let line = format!("SKIPPED (no PostgreSQL): {test}\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            None
        }
    }
}

// The test suite's one bounded wait on a condition, included from its source: the crate that
// holds it depends on this one.
#[path = "../../../../tests/src/wait.rs"]
mod wait;

/// Re-checks `condition` until it holds (see `wait_until`); fails the test after `limit`.
pub async fn eventually<F, Fut>(limit: std::time::Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait::wait_until(what, limit, async || {
        Ok::<_, wait::TimedOut>(condition().await.then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// `url` with its database name replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
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
pub async fn fresh_database(admin: &str) -> String {
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    with_database(admin, &name)
}
