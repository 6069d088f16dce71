//! The connections of the two writes every refund makes (its claim and its outcome), handed
//! out and taken back by the store itself instead of sqlx's pool.
//!
//! Why not the pool: sqlx pings every connection it takes back (`return_to_pool` sends a
//! `Sync` and waits for its `ReadyForQuery`, whatever the pool's options), from a task it
//! spawns for the purpose. For a one-statement write that is a second round trip to the
//! server, and a wake-up of its backend process, per statement. On the bench (path c, 2
//! cores, the server on the same cores) taking them back without it cut the gateway's CPU
//! per refund at 64 concurrent from 438-599 to 348-414 µs and the server's at one at a time
//! from 889-1,053 to 538-672 µs (docs/architecture.md, "Decisions").
//!
//! What the ping was for is kept: a connection goes back only after its statement ran to
//! completion without an error. One whose statement failed, or whose caller was dropped
//! mid-statement, may have left messages on the wire: it is closed, and a later write opens
//! a new one. As in the pool, a connection idle for [`PostgresStore::PING_AFTER_IDLE`] or
//! more is pinged before it is used (replaced if it does not answer), those idle for
//! [`IDLE_TIMEOUT`] are closed (when the next is taken back: there is no reaper task), and a
//! write waits at most [`ACQUIRE_TIMEOUT`] for a free connection.
//!
//! The most connections open at once is the pool's `max_connections`: a store uses up to
//! twice that, plus its two sessions.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgArguments, PgConnectOptions, PgQueryResult, PgRow};
use sqlx::query::Query;
use sqlx::{Connection, PgConnection, Postgres};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::{ACQUIRE_TIMEOUT, PostgresStore};

/// A connection idle this long is closed when the next one is taken back.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// The connections of the refunds' writes; clones share them.
#[derive(Debug, Clone)]
pub(super) struct DirectConnections {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    options: PgConnectOptions,
    /// Idle connections, the most recently used last (taken first: the others may then idle
    /// out, and the warm one's statements are prepared).
    idle: Mutex<Vec<IdleConnection>>,
    /// One per connection that may be open: held while a connection is in use.
    permits: Semaphore,
    acquire_timeout: Duration,
}

#[derive(Debug)]
struct IdleConnection {
    connection: PgConnection,
    since: Instant,
}

/// A connection in use. Dropped without [`InUse::give_back`], its connection closes.
struct InUse<'a> {
    connection: PgConnection,
    inner: &'a Inner,
    _permit: SemaphorePermit<'a>,
}

impl DirectConnections {
    /// Up to `max` connections opened with `options`, none yet.
    pub(super) fn new(options: PgConnectOptions, max: u32) -> Self {
        Self::with_acquire_timeout(options, max, ACQUIRE_TIMEOUT)
    }

    fn with_acquire_timeout(
        options: PgConnectOptions,
        max: u32,
        acquire_timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                options,
                idle: Mutex::new(Vec::new()),
                permits: Semaphore::new(max.max(1) as usize),
                acquire_timeout,
            }),
        }
    }

    /// Runs `query`, which returns one row.
    pub(super) async fn fetch_one(
        &self,
        query: Query<'_, Postgres, PgArguments>,
    ) -> Result<PgRow, sqlx::Error> {
        let mut in_use = self.take().await?;
        let row = query.fetch_one(&mut in_use.connection).await?;
        in_use.give_back();
        Ok(row)
    }

    /// Runs `query`, which returns no row.
    pub(super) async fn execute(
        &self,
        query: Query<'_, Postgres, PgArguments>,
    ) -> Result<PgQueryResult, sqlx::Error> {
        let mut in_use = self.take().await?;
        let done = query.execute(&mut in_use.connection).await?;
        in_use.give_back();
        Ok(done)
    }

    /// A connection: an idle one (pinged first if it idled long enough), else a new one.
    async fn take(&self) -> Result<InUse<'_>, sqlx::Error> {
        let inner = &*self.inner;
        let permit = tokio::time::timeout(inner.acquire_timeout, inner.permits.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            // Never closed: the semaphore lives as long as the connections.
            .map_err(|_| sqlx::Error::PoolClosed)?;
        loop {
            let idle = inner.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(IdleConnection {
                mut connection,
                since,
            }) = idle
            else {
                break;
            };
            // One that does not answer is dropped (closed): try the next.
            if since.elapsed() < PostgresStore::PING_AFTER_IDLE || connection.ping().await.is_ok() {
                return Ok(InUse {
                    connection,
                    inner,
                    _permit: permit,
                });
            }
        }
        let connection = tokio::time::timeout(
            inner.acquire_timeout,
            PgConnection::connect_with(&inner.options),
        )
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
        Ok(InUse {
            connection,
            inner,
            _permit: permit,
        })
    }

    /// How many connections are idle.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.inner
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl InUse<'_> {
    /// Its statement completed: the connection is idle again, and those idle too long close.
    fn give_back(self) {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|c| c.since.elapsed() < IDLE_TIMEOUT);
        idle.push(IdleConnection {
            connection: self.connection,
            since: Instant::now(),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    /// The test server's admin URL, `None` to skip (but under `CI=true`, where the test
    /// command always provides one).
    fn options() -> Option<PgConnectOptions> {
        match std::env::var("REFUND_GATEWAY_TEST_DATABASE_URL") {
            Ok(url) => Some(PgConnectOptions::from_str(&url).unwrap_or_else(|e| panic!("{e}"))),
            Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("REFUND_GATEWAY_TEST_DATABASE_URL is not set under CI")
            }
            Err(_) => None,
        }
    }

    async fn backend_pid(connections: &DirectConnections) -> Result<i32, sqlx::Error> {
        let row = connections
            .fetch_one(sqlx::query("SELECT pg_backend_pid() AS pid"))
            .await?;
        sqlx::Row::try_get(&row, "pid")
    }

    /// A connection whose statement completed is used again; one whose statement failed is
    /// not (it closed), nor one whose caller stopped waiting mid-statement; and either way its
    /// place is free again.
    #[tokio::test]
    async fn only_a_connection_whose_statement_completed_is_used_again() {
        let Some(options) = options() else { return };
        let connections =
            DirectConnections::with_acquire_timeout(options, 1, Duration::from_secs(5));
        let first = backend_pid(&connections)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(connections.idle_count(), 1);
        assert_eq!(
            backend_pid(&connections)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
            first,
            "a connection whose statement completed is taken again"
        );

        let failed = connections
            .execute(sqlx::query("SELECT 1 / 0"))
            .await
            .map(|_| ());
        assert!(failed.is_err(), "division by zero fails");
        assert_eq!(connections.idle_count(), 0, "the failed one closed");
        let second = backend_pid(&connections)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(second, first, "a new connection after a failed statement");

        // A caller that stops waiting drops the statement mid-way.
        let sleeping = connections.execute(sqlx::query("SELECT pg_sleep(5)"));
        let dropped = tokio::time::timeout(Duration::from_millis(200), sleeping).await;
        assert!(dropped.is_err(), "the sleep outlasts its caller");
        assert_eq!(connections.idle_count(), 0, "the interrupted one closed");
        // With room for one connection, this needs the dropped one's place back.
        let third = backend_pid(&connections)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(
            third, second,
            "a new connection after an interrupted statement"
        );
    }

    /// No more connections than `max` are in use at once: the next write waits for one, up
    /// to the acquire timeout, then fails as the pool does.
    #[tokio::test]
    async fn a_write_waits_for_a_free_connection_then_times_out() {
        let Some(options) = options() else { return };
        let connections =
            DirectConnections::with_acquire_timeout(options, 1, Duration::from_millis(300));
        let held = connections.take().await.unwrap_or_else(|e| panic!("{e}"));
        let waited = backend_pid(&connections).await;
        assert!(
            matches!(waited, Err(sqlx::Error::PoolTimedOut)),
            "{waited:?}"
        );
        held.give_back();
        backend_pid(&connections)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
