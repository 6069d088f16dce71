//! PostgreSQL test databases: the server comes from `REFUND_GATEWAY_TEST_DATABASE_URL`
//! (`source scripts/postgres.sh && start_test_postgres` starts one); each test creates its own
//! database on it. Without the variable the tests are skipped (and say so), except under
//! `CI=true`, where they fail.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use sqlx::{Connection, PgConnection};

/// The variable naming the test server.
pub const URL_VAR: &str = "REFUND_GATEWAY_TEST_DATABASE_URL";

/// The admin URL, or `None` (after saying so on stderr) when the test is skipped.
pub fn admin_url(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "{URL_VAR} is not set, and CI=true requires the PostgreSQL tests: run \
             `source scripts/postgres.sh && start_test_postgres` first"
        ),
        _ => {
            eprintln!("SKIPPED (no PostgreSQL): {test}: {URL_VAR} is not set");
            None
        }
    }
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
