//! Pre-filling a gateway's operation store with completed operations, so that a benchmark
//! measures the cost of an operation at a given number of stored ones (10^4 … 10^7): rows
//! are inserted with plain SQL, since seeding them through the API would take hours. Seeded
//! rows are `SUCCEEDED` refunds of a caller named `seed` on orders no run refunds, so the
//! measured path never reads them back; they only make the tables and their indexes big.
//!
//! Insert while no gateway writes to the store (for SQLite, while none runs: the file is
//! that one process's).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use sqlx::Connection;

/// Columns of a seeded operation.
macro_rules! seed_columns {
    () => {
        "operation_id, caller, rpc, idempotency_key, fingerprint, klarna_account, order_id, \
         amount, currency, reference, klarna_request, state, created_at, updated_at, refund_id, \
         response_code, response_message"
    };
}

/// Seeds rows ?1..=?2 of completed operations, created before ?3 (microseconds).
const SQLITE_SEED: &str = concat!(
    "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2) ",
    "INSERT INTO operations (",
    seed_columns!(),
    ") SELECT printf('%08x-0000-4000-8000-%012x', i, i), 'seed', 'RefundOrder', 'seed-' || i, ",
    "'f', 'default', printf('%08x-1111-4000-8000-000000000000', i % 100000), 100, 'SEK', 'r', ",
    "'{}', 'SUCCEEDED', ?3 - i, ?3 - i, 'refund', 0, '' FROM n"
);

/// The same for PostgreSQL.
const POSTGRES_SEED: &str = concat!(
    "INSERT INTO operations (",
    seed_columns!(),
    ") SELECT lpad(to_hex(i), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(i), 12, '0'), 'seed', ",
    "'RefundOrder', 'seed-' || i, 'f', 'default', ",
    "lpad(to_hex(i % 100000), 8, '0') || '-1111-4000-8000-000000000000', 100, 'SEK', 'r', '{}', ",
    "'SUCCEEDED', $3 - i, $3 - i, 'refund', 0, '' FROM generate_series($1::bigint, $2::bigint) AS i"
);

/// Rows inserted by one statement: one transaction of 10^7 rows would hold gigabytes of WAL.
const CHUNK: i64 = 1_000_000;

/// An operation store, by where it is.
#[derive(Debug, Clone)]
pub enum StoreLocation {
    /// The gateway's SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database's URL.
    Postgres(String),
}

impl StoreLocation {
    /// "SQLite" or "PostgreSQL".
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "SQLite",
            Self::Postgres(_) => "PostgreSQL",
        }
    }

    /// How many operations the store holds.
    pub async fn count(&self) -> anyhow::Result<u64> {
        let count: i64 = match self {
            Self::Sqlite(path) => {
                let mut db = sqlite(path).await?;
                sqlx::query_scalar("SELECT count(*) FROM operations")
                    .fetch_one(&mut db)
                    .await?
            }
            Self::Postgres(url) => {
                let mut db = sqlx::PgConnection::connect(url).await?;
                sqlx::query_scalar("SELECT count(*) FROM operations")
                    .fetch_one(&mut db)
                    .await?
            }
        };
        Ok(u64::try_from(count)?)
    }

    /// Adds completed operations until the store holds `target` (none when it already holds
    /// as many); returns how many it holds then. The schema must exist: start a gateway on
    /// the store once first.
    pub async fn fill_to(&self, target: u64) -> anyhow::Result<u64> {
        let target = i64::try_from(target)?;
        let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros())?;
        let have = i64::try_from(self.count().await?)?;
        let mut next = have + 1;
        while next <= target {
            let last = (next + CHUNK - 1).min(target);
            match self {
                Self::Sqlite(path) => {
                    let mut db = sqlite(path).await?;
                    sqlx::query(SQLITE_SEED)
                        .bind(next)
                        .bind(last)
                        .bind(now)
                        .execute(&mut db)
                        .await
                        .context("seeding operations into SQLite")?;
                    // Fold the seed's WAL into the database now, so that the measured run does
                    // not pay for checkpointing rows it did not write.
                    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                        .execute(&mut db)
                        .await?;
                }
                Self::Postgres(url) => {
                    let mut db = sqlx::PgConnection::connect(url).await?;
                    sqlx::query(POSTGRES_SEED)
                        .bind(next)
                        .bind(last)
                        .bind(now)
                        .execute(&mut db)
                        .await
                        .context("seeding operations into PostgreSQL")?;
                }
            }
            next = last + 1;
        }
        if let Self::Postgres(url) = self {
            // Fresh statistics, so the planner sees the table as it now is, as autovacuum
            // would have made them by the time a real store grew this big.
            let mut db = sqlx::PgConnection::connect(url).await?;
            sqlx::query("ANALYZE operations").execute(&mut db).await?;
        }
        self.count().await
    }
}

async fn sqlite(path: &std::path::Path) -> anyhow::Result<sqlx::SqliteConnection> {
    sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display()))
        .await
        .with_context(|| format!("opening {}", path.display()))
}
