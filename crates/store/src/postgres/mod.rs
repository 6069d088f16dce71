//! The PostgreSQL store: one database shared by any number of gateway replicas.
//!
//! - **Writes** are single statements on a pool connection (see [`sql`]): each atomic and
//!   durable when it returns under PostgreSQL's default `synchronous_commit=on`, which does
//!   its own group commit across sessions. No transaction stays open between round trips.
//! - **Claims** use `INSERT … ON CONFLICT DO NOTHING`: among concurrent claims of one id, in
//!   any number of processes, exactly one inserts.
//! - **Order locks** are session advisory locks (`pg_advisory_lock`) on a connection taken
//!   from the pool and held by the guard, so they serialize replicas without a transaction.
//!   A guard dropped without `release` closes its connection instead of returning it, so the
//!   lock dies with the session and a locked connection never goes back to the pool.

mod sql;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use refund_gateway_domain::{
    Claim, Completion, LeaseHolder, NewOperation, Operation, OperationFilter, OperationId,
    OperationPage, OperationStore, OrderLock, StoreError,
};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::DatabaseConfig;
use crate::read;
use crate::row::{check_final, db_error, holder_text, id_text, lease_end, micros};

/// Embedded PostgreSQL migrations. sqlx takes an advisory lock while migrating, so replicas
/// starting together migrate once.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// How long a caller waits for a pooled connection before the store reports itself
/// unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The [`OperationStore`] on PostgreSQL, safe to share between processes. See the module
/// docs; the semantics of each method are those documented on `SqliteStore`'s
/// implementation.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Permits to hold an order lock. An order lock keeps a pool connection for its whole
    /// Klarna call, and its holder still needs another connection to record the outcome: with
    /// as many holders as connections, every holder would wait for a connection none of them
    /// gives back. Fewer permits than connections keeps some free for short statements.
    lock_slots: Arc<Semaphore>,
}

/// Order-lock permits for a pool of `max_connections`: all but a reserve of a quarter (at
/// least two) of the connections, and at least one.
fn lock_slots(max_connections: u32) -> Arc<Semaphore> {
    let max = max_connections.max(1) as usize;
    let reserve = (max / 4).max(2);
    Arc::new(Semaphore::new(max.saturating_sub(reserve).max(1)))
}

impl PostgresStore {
    /// Connects a pool of up to `max_connections` (at least 1) to `url` and runs the
    /// migrations. Error messages never contain the URL's password.
    pub async fn connect(url: &SecretString, max_connections: u32) -> Result<Self, StoreError> {
        let unavailable = |what: &str, e: String| {
            StoreError::Unavailable(DatabaseConfig::redact(
                format!("PostgreSQL {what}: {e}"),
                url,
            ))
        };
        let options = PgConnectOptions::from_str(url.expose_secret())
            .map_err(|e| unavailable("URL", e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| unavailable("connection", e.to_string()))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| unavailable("migration", e.to_string()))?;
        Ok(Self::from_pool(pool))
    }

    /// A store on an existing pool (its migrations must have run: see [`Self::migrate`]).
    pub fn from_pool(pool: PgPool) -> Self {
        let lock_slots = lock_slots(pool.options().get_max_connections());
        Self { pool, lock_slots }
    }

    /// Runs the embedded migrations on `pool`.
    pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
        MIGRATOR
            .run(pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("PostgreSQL migration: {e}")))
    }

    /// The pool, e.g. for health checks.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// The advisory lock key of (`account`, `order_id`): the first 8 bytes of SHA-256 over both,
/// length-prefixed, so it is the same in every process and version (unlike Rust's randomly
/// seeded hasher). Two orders colliding only serialize needlessly.
pub fn order_lock_key(account: &str, order_id: &str) -> i64 {
    let mut hasher = Sha256::new();
    hasher.update(b"refund-gateway order lock\0");
    for part in [account, order_id] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(key)
}

/// A held PostgreSQL order lock: a session advisory lock on the connection it holds.
pub struct PostgresOrderLock {
    key: i64,
    conn: Option<PoolConnection<Postgres>>,
    // Released after the connection (fields drop in order), so a new holder never finds the
    // pool emptier than the reserve.
    _slot: OwnedSemaphorePermit,
}

impl fmt::Debug for PostgresOrderLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOrderLock")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresOrderLock {
    fn drop(&mut self) {
        // Still holding the connection: not released (dropped, or the lock wait cancelled).
        // Close it rather than pool it; the session, and with it the lock, ends.
        if let Some(mut conn) = self.conn.take() {
            conn.close_on_drop();
        }
    }
}

#[async_trait]
impl OrderLock for PostgresOrderLock {
    async fn release(mut self: Box<Self>) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let unlocked = sqlx::query_scalar::<_, bool>(sql::ADVISORY_UNLOCK)
            .bind(self.key)
            .fetch_one(&mut *conn)
            .await;
        match unlocked {
            // Unlocked: the connection is clean and goes back to the pool.
            Ok(true) => drop(conn),
            other => {
                tracing::warn!(
                    key = self.key,
                    result = ?other.map_err(|e| e.to_string()),
                    "advisory unlock failed; closing the connection to end the lock"
                );
                conn.close_on_drop();
            }
        }
    }
}

#[async_trait]
impl OperationStore for PostgresStore {
    async fn claim(
        &self,
        op: NewOperation,
        holder: LeaseHolder,
        now: OffsetDateTime,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let now = micros(now);
        sql::claim(&self.pool, &op, holder, now, lease_end(now, lease)).await
    }

    async fn take_over(
        &self,
        id: OperationId,
        holder: LeaseHolder,
        now: OffsetDateTime,
        lease: Duration,
        trace_id: Option<String>,
    ) -> Result<bool, StoreError> {
        let now = micros(now);
        sql::take_over(
            &self.pool,
            &id_text(id),
            &holder_text(holder),
            now,
            lease_end(now, lease),
            trace_id.as_deref(),
        )
        .await
    }

    async fn renew_lease(
        &self,
        id: OperationId,
        holder: LeaseHolder,
        now: OffsetDateTime,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        sql::renew_lease(
            &self.pool,
            &id_text(id),
            &holder_text(holder),
            lease_end(micros(now), lease),
        )
        .await
    }

    async fn finish(
        &self,
        id: OperationId,
        holder: LeaseHolder,
        completion: Completion,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        check_final(&completion)?;
        sql::finish(
            &self.pool,
            &id_text(id),
            &holder_text(holder),
            &completion,
            micros(now),
        )
        .await
    }

    async fn mark_pending(
        &self,
        id: OperationId,
        holder: LeaseHolder,
        correlation_id: Option<String>,
        detail: String,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        sql::mark_pending(
            &self.pool,
            &id_text(id),
            &holder_text(holder),
            correlation_id.as_deref(),
            &detail,
            micros(now),
        )
        .await
    }

    async fn abandon(
        &self,
        id: OperationId,
        holder: LeaseHolder,
        detail: String,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        sql::abandon(
            &self.pool,
            &id_text(id),
            &holder_text(holder),
            &detail,
            micros(now),
        )
        .await
    }

    async fn get(&self, id: OperationId) -> Result<Option<Operation>, StoreError> {
        read::get(&self.pool, &id_text(id)).await
    }

    async fn unresolved(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Operation>, StoreError> {
        read::unresolved(&self.pool, micros(now), limit).await
    }

    async fn list(
        &self,
        filter: &OperationFilter,
        page_size: u32,
        page_token: Option<&str>,
    ) -> Result<OperationPage, StoreError> {
        read::list(&self.pool, filter, page_size, page_token).await
    }

    async fn purge(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        sql::purge(&self.pool, micros(before)).await
    }

    /// Waits for a lock slot (see `lock_slots`), takes a connection from the pool and waits
    /// on `pg_advisory_lock` with it.
    async fn lock_order(
        &self,
        account: &str,
        order_id: &str,
    ) -> Result<Box<dyn OrderLock>, StoreError> {
        let key = order_lock_key(account, order_id);
        let slot = self
            .lock_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("order locks closed".to_owned()))?;
        let conn = self.pool.acquire().await.map_err(db_error)?;
        // The guard owns the connection before the wait, so a cancelled or failed wait closes
        // it instead of pooling a connection that may still get the lock.
        let mut lock = PostgresOrderLock {
            key,
            conn: Some(conn),
            _slot: slot,
        };
        if let Some(conn) = lock.conn.as_mut() {
            sqlx::query(sql::ADVISORY_LOCK)
                .bind(key)
                .execute(&mut **conn)
                .await
                .map_err(db_error)?;
        }
        Ok(Box::new(lock))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(order_lock_key("a", "o"), order_lock_key("a", "o"));
        assert_ne!(order_lock_key("a", "o"), order_lock_key("b", "o"));
        assert_ne!(order_lock_key("ab", "c"), order_lock_key("a", "bc"));
        // Pinned: changing it would let old and new replicas lock different keys.
        assert_eq!(order_lock_key("eu", "o-1"), 1_893_115_072_546_835_547);
    }
}
