//! The PostgreSQL store: one database shared by any number of gateway replicas.
//!
//! - **Writes** are single statements on a connection (see [`sql`]): each atomic and
//!   durable when it returns under PostgreSQL's default `synchronous_commit=on`, which does
//!   its own group commit across sessions. No transaction stays open between round trips.
//! - **Claims** use `INSERT … ON CONFLICT DO NOTHING`: among concurrent claims of one id, in
//!   any number of processes, exactly one inserts.
//! - **Daily totals** are reserved with one `INSERT … ON CONFLICT DO UPDATE … WHERE` per
//!   reservation: the row lock serializes concurrent reservations of one caller, currency and
//!   day across replicas, and each checks the cap against the latest committed total.
//! - **Order references** are linked with `INSERT … ON CONFLICT DO NOTHING`, then, when the
//!   reference was taken, a read of the link that stands: among concurrent links of one
//!   reference, in any number of processes, exactly one inserts.
//! - **Replica liveness** (`liveness`): each store is a replica with a random key, alive while
//!   a session of its own holds a session advisory lock on that key. A claim and a take-over
//!   record the replica in `lease_replica` (finishing or marking pending clears it with the
//!   lease); an IN_FLIGHT operation is unresolved (taken over by
//!   [`OperationStore::take_over`], listed by [`OperationStore::unresolved`]) when its lease
//!   has expired **or** its replica is gone, so a dead process's claims are free as soon as
//!   PostgreSQL ends its session. Claims without a replica (made before migration 0003, or by
//!   an older gateway) are free at lease expiry only. If the liveness session breaks while the
//!   process lives, the store keeps working and takes the lock again; meanwhile other replicas
//!   may take its work over, which the lease holder checks make safe.
//! - **Order locks** are rows of `resource_leases` (`lease`), taken with one statement, held
//!   without a connection, renewed every third of their lease (30 s by default) while held,
//!   released with a `DELETE` and a `NOTIFY` that wakes the waiters. A lock whose replica is
//!   gone is free at once; one that stopped being renewed (a stalled holder, a release that
//!   failed) at its expiry. No pool connection is held across a Klarna call, so the pool does
//!   not bound how many orders are locked at once. A new claim takes its order's lease in
//!   its own statement when the lease is free ([`OperationStore::claim_and_lock`]), and a
//!   final outcome releases it in the finish's ([`OperationStore::finish_and_release`]): a
//!   refund is two statements, two commits.
//!
//! Connections: the pool (`max_connections`); as many again for the claims and the outcomes,
//! the two writes of every refund, which the store hands out itself (`direct`: sqlx's pool
//! pings each connection it takes back, a round trip per statement); and two sessions of the
//! store's own: the liveness session and the listener of release notifications. A
//! connection is pinged before use only after a second idle
//! ([`PostgresStore::PING_AFTER_IDLE`]), not before every statement. The two sessions must
//! be real sessions (a pooler in transaction mode would break the advisory lock and
//! `LISTEN`).
//!
//! During a rolling upgrade from a gateway that predates migration 0003, the old replicas'
//! order locks (session advisory locks) and the new lease rows do not exclude each other:
//! orders are serialized within each version, and each operation stays exactly-once (claims
//! are shared), but two operations on one order may run at once across versions until the old
//! replicas are gone.
//!
//! # Layout
//! - this module: [`PostgresStore`], connecting, the port.
//! - `sql.rs`: every statement, and the liveness test they share.
//! - `direct.rs`: the connections of the claims and the outcomes.
//! - `liveness.rs`: the replica key and the session that holds its lock.
//! - `lease.rs`: resource leases (order locks): taking, waiting, renewing, releasing.

mod direct;
mod lease;
mod liveness;
mod sql;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use refund_gateway_domain::store::{LinkOutcome, OrderReference, ReferenceKind};
use refund_gateway_domain::{
    AttentionSummary, Claim, Completion, LeaseHolder, NewOperation, Operation, OperationFilter,
    OperationId, OperationPage, OperationStore, OrderLock, Resolution, ResourceKind, StoreError,
    Unresolved, WebhookEvent,
};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use time::{Date, OffsetDateTime};

use crate::config::DatabaseConfig;
use crate::purge::Purger;
use crate::read;
use crate::row::{
    check_final, check_resolution, day_text, holder_text, id_text, lease_end, micros,
};

pub use lease::{DEFAULT_LEASE as DEFAULT_ORDER_LOCK_LEASE, PostgresResourceLock};

/// Embedded PostgreSQL migrations. sqlx takes an advisory lock while migrating, so replicas
/// starting together migrate once.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// How long a caller waits for a pooled connection before the store reports itself
/// unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The [`OperationStore`] on PostgreSQL, safe to share between processes: one replica. See
/// the module docs; the semantics of each method are those documented on `SqliteStore`'s
/// implementation, except that a gone replica's IN_FLIGHT operations count as unresolved
/// before their leases expire. Clones are the same replica; dropping the last one ends its
/// liveness session.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// The claims' and outcomes' connections.
    direct: direct::DirectConnections,
    replica: Arc<Replica>,
    /// How long an order lock lasts without renewal.
    lock_lease: Duration,
}

/// What a store keeps for its life, outside the pool.
#[derive(Debug)]
struct Replica {
    liveness: liveness::Liveness,
    releases: lease::Releases,
    purger: Purger,
}

impl PostgresStore {
    /// A pooled connection idle this long is pinged before it is handed out, and replaced if
    /// it does not answer; busier ones are used without a ping.
    pub const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

    /// Connects a pool of up to `max_connections` (at least 1) to `url`, runs the migrations
    /// and starts the replica (see [`Self::from_pool`]). Error messages never contain the
    /// URL's password.
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
            // sqlx pings every connection it hands out by default: a round trip before each
            // statement, which under load doubled the round trips per write for both the
            // gateway and the server. Only a connection that sat idle may have been cut (a
            // restarted server, a firewall's timeout), so only that one is pinged; one cut
            // while busy fails its statement either way.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= Self::PING_AFTER_IDLE {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| unavailable("connection", e.to_string()))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| unavailable("migration", e.to_string()))?;
        Self::from_pool(pool).await.map_err(|e| match e {
            StoreError::Unavailable(m) => unavailable("replica liveness", m),
            other => other,
        })
    }

    /// A store on an existing pool (its migrations must have run: see [`Self::migrate`]).
    /// Opens, with the pool's connect options, the store's own two sessions: the liveness
    /// session, on which it takes the advisory lock of a fresh replica key before returning,
    /// and the listener of lease releases. Must be called inside a tokio runtime, whose tasks
    /// keep both sessions.
    pub async fn from_pool(pool: PgPool) -> Result<Self, StoreError> {
        let options = (*pool.connect_options()).clone();
        let liveness = liveness::Liveness::start(options.clone()).await?;
        let releases = lease::Releases::start(options.clone());
        let direct = direct::DirectConnections::new(options, pool.options().get_max_connections());
        Ok(Self {
            pool,
            direct,
            replica: Arc::new(Replica {
                liveness,
                releases,
                purger: Purger::default(),
            }),
            lock_lease: lease::DEFAULT_LEASE,
        })
    }

    /// This store with order locks that last `lease` without renewal (default
    /// [`DEFAULT_ORDER_LOCK_LEASE`], bounded to between 0.3 s and a day). Held locks are
    /// renewed every third of it; it only matters for a holder that is alive but stalled, since
    /// a gone replica's locks are free at once.
    pub fn with_order_lock_lease(mut self, lease: Duration) -> Self {
        self.lock_lease = lease::bounded_lease(lease);
        self
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

    /// What taking a resource lease needs.
    fn taker(&self) -> lease::Taker<'_> {
        lease::Taker {
            pool: &self.pool,
            direct: &self.direct,
            releases: &self.replica.releases,
            replica: self.replica(),
            lease: self.lock_lease,
        }
    }

    /// This replica's key: the key of its liveness lock, recorded in `lease_replica` and
    /// `resource_leases.replica`.
    pub fn replica(&self) -> i64 {
        self.replica.liveness.replica()
    }

    /// True while this replica's liveness lock is held, as far as its last check (every few
    /// seconds) knows. While false, other replicas may take over its operations and locks.
    pub fn is_live(&self) -> bool {
        self.replica.liveness.is_held()
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
        sql::claim(
            &self.pool,
            &self.direct,
            &op,
            holder,
            self.replica(),
            now,
            lease_end(now, lease),
        )
        .await
    }

    async fn claim_and_lock(
        &self,
        op: NewOperation,
        holder: LeaseHolder,
        now: OffsetDateTime,
        lease: Duration,
    ) -> Result<(Claim, Option<Box<dyn OrderLock>>), StoreError> {
        let now = micros(now);
        let (claim, lock) =
            lease::claim_locking(self.taker(), &op, holder, now, lease_end(now, lease)).await?;
        Ok((claim, lock.map(|lock| Box::new(lock) as Box<dyn OrderLock>)))
    }

    async fn take_over(
        &self,
        id: OperationId,
        holder: LeaseHolder,
        now: OffsetDateTime,
        lease: Duration,
        trace_id: Option<String>,
        otel_trace_id: Option<String>,
    ) -> Result<bool, StoreError> {
        let now = micros(now);
        let holder = holder_text(holder);
        let by = sql::NewHolder {
            holder: &holder,
            replica: self.replica(),
            otel_trace_id: otel_trace_id.as_deref(),
        };
        sql::take_over(
            &self.pool,
            &id_text(id),
            by,
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
            &self.direct,
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
        answer_context: Option<String>,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        sql::mark_pending(
            &self.pool,
            &id_text(id),
            &holder_text(holder),
            correlation_id.as_deref(),
            &detail,
            answer_context.as_deref(),
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

    /// One statement: replicas resolving the same operation at once wait for each other's
    /// row lock, and exactly one resolves it.
    async fn resolve_review(
        &self,
        id: OperationId,
        resolution: Resolution,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        check_resolution(&resolution)?;
        sql::resolve_review(&self.pool, &id_text(id), &resolution, micros(now)).await
    }

    async fn get(&self, id: OperationId) -> Result<Option<Operation>, StoreError> {
        read::get(&self.pool, &id_text(id)).await
    }

    async fn unresolved(
        &self,
        which: Unresolved,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Operation>, StoreError> {
        let statement = sql::UNRESOLVED.of(which);
        crate::read::unresolved(&self.pool, statement, micros(now), limit).await
    }

    /// A gone replica's IN_FLIGHT operations count as pending, as `unresolved` lists them.
    async fn attention(&self, now: OffsetDateTime) -> Result<AttentionSummary, StoreError> {
        read::attention(&self.pool, sql::ATTENTION.as_str(), micros(now)).await
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
        self.replica
            .purger
            .purge(
                micros(before),
                |state, before| read::oldest_kept_answer(&self.pool, state, before),
                |state, from, before, limit| {
                    sql::purge_chunk(&self.pool, state, from, before, limit)
                },
            )
            .await
    }

    /// Takes the resource's lease in `resource_leases`, waiting while another holder, alive
    /// and renewing, has it. Holds no connection while held.
    async fn finish_and_release(
        &self,
        id: OperationId,
        holder: LeaseHolder,
        completion: Completion,
        now: OffsetDateTime,
        lock: Box<dyn OrderLock>,
    ) -> Result<bool, StoreError> {
        let lock = match lock.into_any().downcast::<lease::PostgresResourceLock>() {
            Ok(lock) => lock,
            // Not one of this store's (a caller's mistake): finished alone, the lock released
            // as a dropped one is.
            Err(_) => return self.finish(id, holder, completion, now).await,
        };
        if let Err(e) = check_final(&completion) {
            OrderLock::release(lock).await;
            return Err(e);
        }
        lock.finish_releasing(&id_text(id), &holder_text(holder), &completion, micros(now))
            .await
    }

    async fn lock_resource(
        &self,
        account: &str,
        kind: ResourceKind,
        id: &str,
    ) -> Result<Box<dyn OrderLock>, StoreError> {
        let lock = lease::take(self.taker(), account, kind.as_str(), id).await?;
        Ok(Box::new(lock))
    }

    async fn resource_operations(
        &self,
        account: &str,
        kind: ResourceKind,
        id: &str,
    ) -> Result<Vec<Operation>, StoreError> {
        read::resource_operations(&self.pool, account, kind, id).await
    }

    /// One statement: replicas recording the same event id at once wait for each other, and
    /// exactly one records it.
    async fn record_webhook(
        &self,
        event: WebhookEvent,
        detail: String,
    ) -> Result<bool, StoreError> {
        sql::record_webhook(
            &self.pool,
            &event,
            event.operation_id.map(id_text).as_deref(),
            micros(event.received_at),
            &detail,
        )
        .await
    }

    async fn webhook_events(&self, id: OperationId) -> Result<Vec<WebhookEvent>, StoreError> {
        read::webhook_events(&self.pool, id).await
    }

    /// One statement: replicas reserving on the same total at once wait for each other's
    /// row lock, and each checks the cap against the total the others left.
    async fn reserve_daily(
        &self,
        caller: &str,
        currency: &str,
        day: Date,
        amount: i64,
        cap: i64,
    ) -> Result<bool, StoreError> {
        sql::reserve_daily(&self.pool, caller, currency, &day_text(day), amount, cap).await
    }

    async fn release_daily(
        &self,
        caller: &str,
        currency: &str,
        day: Date,
        amount: i64,
    ) -> Result<(), StoreError> {
        sql::release_daily(&self.pool, caller, currency, &day_text(day), amount).await
    }

    async fn daily_total(
        &self,
        caller: &str,
        currency: &str,
        day: Date,
    ) -> Result<i64, StoreError> {
        sql::daily_total(&self.pool, caller, currency, &day_text(day)).await
    }

    /// One insert: replicas linking the same reference at once wait for each other, and
    /// exactly one links it; the others read the link that stands.
    async fn link_reference(&self, reference: OrderReference) -> Result<LinkOutcome, StoreError> {
        sql::link_reference(&self.pool, &reference, micros(reference.linked_at)).await
    }

    async fn find_reference(
        &self,
        account: &str,
        kind: ReferenceKind,
        reference: &str,
    ) -> Result<Option<OrderReference>, StoreError> {
        read::find_reference(&self.pool, account, kind, reference).await
    }

    async fn order_is_indexed(&self, account: &str, order_id: &str) -> Result<bool, StoreError> {
        read::order_is_indexed(&self.pool, account, order_id).await
    }
}
