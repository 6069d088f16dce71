//! Replica liveness: the replica key of a store and the session that keeps it alive.
//!
//! A store picks a random replica key when it connects and takes a session advisory lock on
//! it over a connection of its own (never one of the pool's), which it holds for its whole
//! life. Other replicas read liveness from `pg_locks` (`sql::replica_gone`): when the process
//! dies or its host is lost, PostgreSQL ends the session, the lock goes with it, and the
//! replica's claims and resource leases are free at once rather than when their leases
//! expire.
//!
//! A task owns the connection and checks it every [`PING_EVERY`]. If the session breaks
//! (network, database restart, an administrator's `pg_terminate_backend`), the task logs it and
//! reconnects, taking the lock on the **same** key again, so the claims and leases this store
//! still holds are protected again once it is back. Meanwhile the store keeps working, but to
//! the other replicas it is gone: they may take over its IN_FLIGHT operations and its resource
//! leases. That is safe, not silent: only an operation's current holder can record its
//! outcome (this store's later writes to a taken-over operation are ignored and reported as
//! lost), and a resend to Klarna carries the same idempotency key. Dropping the store (its
//! last clone) aborts the task and closes the connection, which ends the session.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use refund_gateway_domain::StoreError;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::task::JoinHandle;

use super::sql;
use crate::row::db_error;

/// How often the liveness session is checked. A broken session is noticed within this time
/// (plus the reconnection); the check also keeps the session from looking idle.
const PING_EVERY: Duration = Duration::from_secs(5);

/// The first wait before reconnecting a lost liveness session; doubled up to
/// [`RECONNECT_MAX`] while reconnecting fails.
const RECONNECT_MIN: Duration = Duration::from_secs(1);

/// The longest wait between two reconnection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Fresh keys tried when connecting before giving up: a key already locked by someone else
/// (a one-in-2^63 collision, or an unrelated advisory lock) is never shared.
const KEY_ATTEMPTS: usize = 4;

/// A fresh replica key: 63 random bits of a UUID v4, so keys are non-negative (readable in
/// `lease_replica`; the SQL handles negative keys as well).
fn fresh_key() -> i64 {
    let random = uuid::Uuid::new_v4().as_u128();
    // Fold the 122 random bits into 64, then drop the sign bit.
    let folded = (random >> 64) ^ (random & u128::from(u64::MAX));
    let bits = u64::try_from(folded & u128::from(u64::MAX >> 1)).unwrap_or_default();
    i64::try_from(bits).unwrap_or_default()
}

/// The liveness of one store: its replica key, and the task holding the key's lock. Dropping
/// it ends the session.
#[derive(Debug)]
pub(super) struct Liveness {
    replica: i64,
    /// Whether the lock is held right now, as last seen by the task.
    held: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for Liveness {
    fn drop(&mut self) {
        // The task owns the connection: aborting it drops, and so closes, the connection.
        self.task.abort();
    }
}

impl Liveness {
    /// Connects a session of its own with `options`, takes the lock of a fresh replica key on
    /// it, and starts the task that keeps it.
    pub(super) async fn start(options: PgConnectOptions) -> Result<Self, StoreError> {
        let mut conn = PgConnection::connect_with(&options)
            .await
            .map_err(db_error)?;
        let mut replica = None;
        for _ in 0..KEY_ATTEMPTS {
            let key = fresh_key();
            if try_lock(&mut conn, key).await? {
                replica = Some(key);
                break;
            }
        }
        let Some(replica) = replica else {
            return Err(StoreError::Unavailable(
                "no free replica key for the liveness lock".to_owned(),
            ));
        };
        let held = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn(keep(conn, options, replica, held.clone()));
        tracing::info!(replica, "replica liveness lock taken");
        Ok(Self {
            replica,
            held,
            task,
        })
    }

    /// The replica key.
    pub(super) fn replica(&self) -> i64 {
        self.replica
    }

    /// True while the liveness lock is held, as far as the last check knows.
    pub(super) fn is_held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }
}

/// Takes the lock of `key` on `conn` unless someone holds it; true when taken.
async fn try_lock(conn: &mut PgConnection, key: i64) -> Result<bool, StoreError> {
    sqlx::query_scalar::<_, bool>(sql::TRY_LOCK_REPLICA)
        .bind(key)
        .fetch_one(conn)
        .await
        .map_err(db_error)
}

/// Holds the lock of `replica` for as long as the task runs: checks the session every
/// [`PING_EVERY`] and, when it broke, reconnects and locks the same key again.
async fn keep(conn: PgConnection, options: PgConnectOptions, replica: i64, held: Arc<AtomicBool>) {
    let mut conn = Some(conn);
    let mut backoff = RECONNECT_MIN;
    loop {
        if let Some(live) = conn.as_mut() {
            tokio::time::sleep(PING_EVERY).await;
            let checked = match tokio::time::timeout(PING_EVERY, live.ping()).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                // A session that does not answer (a half-open connection) counts as lost.
                Err(_) => Err(format!("no answer within {PING_EVERY:?}")),
            };
            if let Err(e) = checked {
                held.store(false, Ordering::Relaxed);
                tracing::error!(
                    replica,
                    error = %e,
                    "replica liveness session lost: until it is back, other replicas may take \
                     over this replica's operations and order locks"
                );
                conn = None;
                backoff = RECONNECT_MIN;
            }
            continue;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
        match relock(&options, replica).await {
            Ok(Some(restored)) => {
                held.store(true, Ordering::Relaxed);
                tracing::info!(replica, "replica liveness lock taken again");
                conn = Some(restored);
            }
            // The server still holds the lock for the broken session (it has not noticed the
            // loss yet): the replica is still alive to the others; try again later.
            Ok(None) => tracing::warn!(
                replica,
                "replica liveness lock still held by the lost session; retrying"
            ),
            Err(e) => tracing::warn!(
                replica,
                error = %e,
                "replica liveness session cannot be reconnected yet; retrying"
            ),
        }
    }
}

/// A new session holding the lock of `replica`, or `None` when the lock is still taken.
async fn relock(
    options: &PgConnectOptions,
    replica: i64,
) -> Result<Option<PgConnection>, StoreError> {
    let mut conn = PgConnection::connect_with(options)
        .await
        .map_err(db_error)?;
    if try_lock(&mut conn, replica).await? {
        Ok(Some(conn))
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_non_negative_and_distinct() {
        let keys: Vec<i64> = (0..64).map(|_| fresh_key()).collect();
        assert!(keys.iter().all(|k| *k >= 0));
        let mut unique = keys.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), keys.len());
    }
}
