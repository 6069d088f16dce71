//! The SQLite store: one database file used by one gateway process.
//!
//! - **Writes** go through one writer thread ([`writer`]) owning the only write connection
//!   (rusqlite); it commits concurrent writes together (group commit), one `BEGIN IMMEDIATE`
//!   transaction and one fsync per group, and answers each request after its group is
//!   durable. Within a group, each write is a statement or two by primary key, and audit
//!   events are appended by triggers.
//! - **Reads** (sqlx: `get`, `unresolved`, `list`, `resource_operations`, `webhook_events`,
//!   `daily_total`, `find_reference`) use a small pool of read-only connections; WAL lets them
//!   run beside the writer and see everything committed.
//! - **Daily totals**: a reservation is one statement that checks the cap and adds in one go,
//!   run by the writer like every write, so no other write comes between its check and its
//!   addition.
//! - **Order references** are linked by the writer too: an insert that keeps a reference's
//!   first link, and, when the reference was taken, a read of that link in the same
//!   transaction, so among concurrent links of one reference exactly one is linked.
//! - **Durability**: WAL journal, `synchronous=FULL` (a commit is on disk when it returns,
//!   surviving an OS crash), `busy_timeout` in case another process touches the file. For
//!   speed only: temporary tables in memory (`temp_store`) and checkpoints in the
//!   background, nudged by the writer, the writer running one of its own right after a
//!   background pass once the WAL is 4000 pages long, and SQLite's automatic one every 8000
//!   WAL pages rather than 1000 (see [`writer`]).
//! - **Page caches are SQLite's default 2 MiB**, the writer's too: the operating system caches
//!   the file for every connection, and a refund's writes touch the same few interior pages
//!   plus leaves of random keys that no cache of a few MiB holds at 10^6 stored operations.
//!   A larger writer cache measured no faster at 10^4 or 10^6 stored operations and costs
//!   resident memory (8 MiB: 5-8 MiB more RSS under load; 32 MiB: about 35 MiB). It also
//!   costs CPU in proportion to its size: SQLite's page balancing renumbers pages through a
//!   temporary page number past the end of the file, and the commit of a transaction that
//!   did so scans the cache's whole hash table to drop that page (`pcache1TruncateUnsafe`,
//!   2-3% of the gateway's CPU with 8 MiB).
//! - **Restart**: one process owns the file, so every IN_FLIGHT claim found when the store
//!   opens is a dead process's; it becomes PENDING before the store is handed out, and the
//!   first retry (or the reconciler) settles it without waiting for the dead claim's lease.
//! - **Order locks** are in-process ([`order_locks`]): the file is not shared between
//!   processes.

mod order_locks;
mod sql;
mod writer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use refund_gateway_domain::store::{LinkOutcome, OrderReference, ReferenceKind};
use refund_gateway_domain::{
    AttentionSummary, Claim, Completion, LeaseHolder, NewOperation, Operation, OperationFilter,
    OperationId, OperationPage, OperationStore, OrderLock, Resolution, ResourceKind, StoreError,
    Unresolved, WebhookEvent,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};
use time::{Date, OffsetDateTime};

use crate::purge::Purger;
use crate::read;
use crate::row::{
    check_final, check_resolution, claimed_operation, day_text, holder_text, id_text, lease_end,
    micros,
};
use order_locks::OrderLocks;
pub use order_locks::SqliteOrderLock;
pub use writer::WriterStats;
use writer::{Outcome, WriteOp, Writer};

/// Embedded SQLite migrations.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// How long a connection waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Read-only connections beside the writer.
const READERS: u32 = 4;

/// The SQLite settings that make a commit durable, as read back from the writer connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durability {
    /// `PRAGMA journal_mode`: `wal`.
    pub journal_mode: String,
    /// `PRAGMA synchronous`: 2 (`FULL`).
    pub synchronous: i64,
}

/// The [`OperationStore`] on one SQLite file, for a single process. See the module docs.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    writer: Writer,
    readers: SqlitePool,
    order_locks: OrderLocks,
    orphans_taken_over: u64,
    purger: Purger,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `path`, runs the migrations and starts the
    /// writer thread; the readers' pool lives on the current Tokio runtime.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let unavailable =
            |e: sqlx::Error| StoreError::Unavailable(format!("SQLite {}: {e}", path.display()));
        let options = SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(BUSY_TIMEOUT)
            .synchronous(SqliteSynchronous::Full)
            // Temporary tables (a statement's RETURNING rows, a sort's spill) kept in memory
            // cost no file writes. Durability is the WAL's, unaffected.
            .pragma("temp_store", "MEMORY")
            // Fewer, larger checkpoints: a page changed by many commits is copied back once.
            .pragma("wal_autocheckpoint", "8000")
            .statement_cache_capacity(64);
        // Created, switched to WAL and migrated on an sqlx connection (the migrations are
        // sqlx's); the writer itself is a rusqlite connection on a thread of its own (see
        // `writer`).
        let mut setup = options
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .connect()
            .await
            .map_err(unavailable)?;
        MIGRATOR.run(&mut setup).await.map_err(|e| {
            StoreError::Unavailable(format!("SQLite {} migration: {e}", path.display()))
        })?;
        setup.close().await.map_err(unavailable)?;
        let write = writer_connection(path)?;
        // Before anyone can claim: the claims still IN_FLIGHT are a dead process's.
        let orphans_taken_over = sql::take_over_orphans(&write, micros(OffsetDateTime::now_utc()))?;
        let readers: SqlitePool = SqlitePoolOptions::new()
            .max_connections(READERS)
            // No ping before each read (sqlx's default): a connection to a local file is
            // not cut, and the ping was a round trip to the connection's thread per read.
            .test_before_acquire(false)
            .connect_with(options.read_only(true))
            .await
            .map_err(unavailable)?;
        Ok(Self {
            path: path.to_owned(),
            writer: Writer::spawn(write, writer_connection(path)?, database_file(path)?)?,
            readers,
            order_locks: OrderLocks::default(),
            orphans_taken_over,
            purger: Purger::default(),
        })
    }

    /// How many IN_FLIGHT operations of a previous process were made PENDING when the store
    /// opened.
    pub fn orphans_taken_over(&self) -> u64 {
        self.orphans_taken_over
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The durability settings in force on the writer connection.
    pub async fn durability(&self) -> Result<Durability, StoreError> {
        match self.writer.submit(WriteOp::Durability).await? {
            Outcome::Durability {
                journal_mode,
                synchronous,
            } => Ok(Durability {
                journal_mode,
                synchronous,
            }),
            other => Err(mismatch(&other)),
        }
    }

    /// How many transactions the writer has run for how many writes: their ratio is the mean
    /// group size.
    pub fn writer_stats(&self) -> WriterStats {
        self.writer.stats()
    }

    async fn changed(&self, op: WriteOp) -> Result<bool, StoreError> {
        match self.writer.submit(op).await? {
            Outcome::Changed(changed) => Ok(changed),
            other => Err(mismatch(&other)),
        }
    }
}

/// The database file itself, for the checkpointer's fsyncs (`writer` module docs).
fn database_file(path: &Path) -> Result<std::fs::File, StoreError> {
    std::fs::File::open(path)
        .map_err(|e| StoreError::Unavailable(format!("SQLite {}: {e}", path.display())))
}

/// The writer's connection, with the durability settings of the module docs.
fn writer_connection(path: &Path) -> Result<rusqlite::Connection, StoreError> {
    let failed =
        |e: rusqlite::Error| StoreError::Unavailable(format!("SQLite {}: {e}", path.display()));
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(failed)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(failed)?;
    // WAL is a property of the file (set when it was created); read back to be sure.
    let journal_mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(failed)?;
    if !journal_mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "SQLite {}: journal mode {journal_mode}, not WAL",
            path.display()
        )));
    }
    conn.execute_batch(
        "PRAGMA synchronous = FULL; \
         PRAGMA temp_store = MEMORY; \
         PRAGMA cache_size = -2048; \
         PRAGMA wal_autocheckpoint = 8000; \
         PRAGMA foreign_keys = ON;",
    )
    .map_err(failed)?;
    // Every write statement, with room to spare.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// The writer answered a request with another request's kind of outcome: a bug, reported
/// rather than panicking in the server.
fn mismatch(outcome: &Outcome) -> StoreError {
    StoreError::Unavailable(format!("the SQLite writer answered {outcome:?}"))
}

/// Semantics, shared with the PostgreSQL store:
/// - `claim` inserts or returns the stored row; among concurrent claims of one id exactly
///   one is `New` (the writer serializes them; a later one in the same group sees the row).
///   The new row's lease is held by the given holder.
/// - `take_over` succeeds only from PENDING or a lease-expired IN_FLIGHT; event "taken over".
///   The lease is then held by the given holder, so the previous holder loses it.
/// - `renew_lease`, `finish`, `mark_pending` and `abandon` act only on a row that is
///   IN_FLIGHT and held by the given holder; on any other row (another holder's, pending,
///   already final, abandoned, unknown) they change nothing and record nothing, so a final
///   state is never overwritten and a stalled former holder cannot touch a taken-over row.
/// - `renew_lease` records no event (not a state change) and keeps `updated_at`.
/// - `finish` moves the row to the completion's final state; a completion whose state is not
///   final is refused. `abandon` deletes the row; its event (state after `None`) keeps the
///   operation's identity. Rows keep their last holder after they leave IN_FLIGHT.
/// - `resolve_review` acts only on a REQUIRES_REVIEW row (any other, or an unknown id: nothing
///   changed, nothing recorded, `false`; among concurrent resolutions exactly one wins), and
///   only with SUCCEEDED or FAILED (another state is refused). It replaces the stored answer,
///   keeps the refund id given for SUCCEEDED (else the stored one), and leaves the lease
///   columns and the correlation id alone. Its event: detail `resolved by <operator>:
///   <reason>`, trace id `operator:<operator>`.
/// - Events carry the trace id given with the change, else the trace id of the claim
///   (`mark_pending` and `abandon` take none).
/// - The row keeps the OpenTelemetry trace id of its holder: the claim's traceparent's trace
///   id, replaced (NULL included) by each take-over's, and by the operator's on a review
///   resolution. Every event of a claim, take-over, finish, mark pending, abandon or review
///   resolution carries the holder's trace id as it is after the change; a webhook's event
///   carries none. The traceparent stays the claim's.
/// - `attention` counts at `now` the unresolved operations (PENDING, due for a resend or
///   not, and IN_FLIGHT whose lease ended), the IN_FLIGHT operations still held, and the
///   REQUIRES_REVIEW ones; it reads the state index, never the SUCCEEDED and FAILED
///   operations.
/// - `unresolved` lists the IN_FLIGHT operations whose lease ended and the PENDING ones due
///   at `now` ([`Operation::resolution_due_at`](refund_gateway_domain::Operation::resolution_due_at)),
///   ordered by `created_at` (then id): the oldest is nearest Klarna's 24 h idempotency window.
/// - `resource_operations` orders by `created_at` (then id), in any state; an operation
///   written before resources existed acts on its order.
/// - `record_webhook` inserts the event unless its event id is known (then it writes nothing
///   and returns `false`; among concurrent records of one event id exactly one is `true`).
///   When the event names an operation that exists, it appends, in the same transaction, an
///   event with no state change (state before = after = the current state), the webhook's
///   refund and correlation ids, no trace id, the detail given, at the instant received. An
///   event naming an unknown operation is recorded without one.
/// - `webhook_events` orders by the instant received (then event id).
/// - `reserve_daily` adds to the total of (caller, currency, UTC day) only while the sum stays
///   at most the cap: an amount over the cap is refused on a day with no total too, and a
///   refusal changes nothing. Concurrent reservations apply one after another, each checked
///   against the total the ones before it left, so together they never exceed the cap (on
///   PostgreSQL also across replicas). `release_daily` subtracts, down to zero at most, and
///   does nothing where nothing was reserved. Amounts and caps are at least zero: the caller
///   validates them, the store does not. Days are UTC dates; totals are kept forever.
/// - `link_reference` inserts the link of (account, kind, reference) unless there is one; an
///   existing link is never changed (its order, store id and instant stay the first link's):
///   `AlreadyLinked` when it names the same order, `LinkedElsewhere` with its order otherwise.
///   Among concurrent links of one reference exactly one is `Linked` (on PostgreSQL also
///   across replicas). `find_reference` reads the link. References are compared exactly,
///   byte for byte (no trimming, no case folding: the domain trims and validates them);
///   links are kept forever.
/// - Timestamps are kept in whole microseconds (UTC); finer precision is truncated toward
///   the past, so ordering is preserved.
#[async_trait]
impl OperationStore for SqliteStore {
    async fn claim(
        &self,
        op: NewOperation,
        holder: LeaseHolder,
        now: OffsetDateTime,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let now = micros(now);
        let op = WriteOp::Claim {
            id: id_text(op.operation_id),
            op,
            holder,
            holder_text: holder_text(holder),
            now,
            lease_until: lease_end(now, lease),
        };
        match self.writer.submit_and_return(op).await? {
            (
                Outcome::Claimed,
                WriteOp::Claim {
                    op,
                    holder,
                    now,
                    lease_until,
                    ..
                },
            ) => Ok(Claim::New(claimed_operation(op, holder, now, lease_until)?)),
            (Outcome::Exists(existing), _) => Ok(Claim::Existing(*existing)),
            (other, _) => Err(mismatch(&other)),
        }
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
        self.changed(WriteOp::TakeOver {
            id: id_text(id),
            holder: holder_text(holder),
            now,
            lease_until: lease_end(now, lease),
            trace_id,
            otel_trace_id,
        })
        .await
    }

    async fn renew_lease(
        &self,
        id: OperationId,
        holder: LeaseHolder,
        now: OffsetDateTime,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        self.changed(WriteOp::Renew {
            id: id_text(id),
            holder: holder_text(holder),
            lease_until: lease_end(micros(now), lease),
        })
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
        self.changed(WriteOp::Finish {
            id: id_text(id),
            holder: holder_text(holder),
            completion,
            now: micros(now),
        })
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
        self.changed(WriteOp::MarkPending {
            id: id_text(id),
            holder: holder_text(holder),
            correlation_id,
            detail,
            answer_context,
            now: micros(now),
        })
        .await
    }

    async fn abandon(
        &self,
        id: OperationId,
        holder: LeaseHolder,
        detail: String,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.changed(WriteOp::Abandon {
            id: id_text(id),
            holder: holder_text(holder),
            detail,
            now: micros(now),
        })
        .await
    }

    async fn resolve_review(
        &self,
        id: OperationId,
        resolution: Resolution,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        check_resolution(&resolution)?;
        self.changed(WriteOp::ResolveReview {
            id: id_text(id),
            resolution,
            now: micros(now),
        })
        .await
    }

    async fn get(&self, id: OperationId) -> Result<Option<Operation>, StoreError> {
        read::get(&self.readers, &id_text(id)).await
    }

    async fn unresolved(
        &self,
        which: Unresolved,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Operation>, StoreError> {
        let statement = read::UNRESOLVED.of(which);
        read::unresolved(&self.readers, statement, micros(now), limit).await
    }

    async fn attention(&self, now: OffsetDateTime) -> Result<AttentionSummary, StoreError> {
        read::attention(&self.readers, read::ATTENTION.as_str(), micros(now)).await
    }

    async fn list(
        &self,
        filter: &OperationFilter,
        page_size: u32,
        page_token: Option<&str>,
    ) -> Result<OperationPage, StoreError> {
        read::list(&self.readers, filter, page_size, page_token).await
    }

    async fn purge(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        self.purger
            .purge(
                micros(before),
                |state, before| read::oldest_kept_answer(&self.readers, state, before),
                |state, from, before, limit| async move {
                    match self
                        .writer
                        .submit(WriteOp::Purge {
                            state,
                            from,
                            before,
                            limit,
                        })
                        .await?
                    {
                        Outcome::Purged(changed) => Ok(changed),
                        other => Err(mismatch(&other)),
                    }
                },
            )
            .await
    }

    async fn lock_resource(
        &self,
        account: &str,
        kind: ResourceKind,
        id: &str,
    ) -> Result<Box<dyn OrderLock>, StoreError> {
        Ok(Box::new(self.order_locks.lock(account, kind, id).await))
    }

    async fn resource_operations(
        &self,
        account: &str,
        kind: ResourceKind,
        id: &str,
    ) -> Result<Vec<Operation>, StoreError> {
        read::resource_operations(&self.readers, account, kind, id).await
    }

    async fn record_webhook(
        &self,
        event: WebhookEvent,
        detail: String,
    ) -> Result<bool, StoreError> {
        self.changed(WriteOp::RecordWebhook {
            operation_id: event.operation_id.map(id_text),
            received_at: micros(event.received_at),
            event,
            detail,
        })
        .await
    }

    async fn webhook_events(&self, id: OperationId) -> Result<Vec<WebhookEvent>, StoreError> {
        read::webhook_events(&self.readers, id).await
    }

    async fn reserve_daily(
        &self,
        caller: &str,
        currency: &str,
        day: Date,
        amount: i64,
        cap: i64,
    ) -> Result<bool, StoreError> {
        self.changed(WriteOp::ReserveDaily {
            caller: caller.to_owned(),
            currency: currency.to_owned(),
            day: day_text(day),
            amount,
            cap,
        })
        .await
    }

    async fn release_daily(
        &self,
        caller: &str,
        currency: &str,
        day: Date,
        amount: i64,
    ) -> Result<(), StoreError> {
        self.changed(WriteOp::ReleaseDaily {
            caller: caller.to_owned(),
            currency: currency.to_owned(),
            day: day_text(day),
            amount,
        })
        .await
        .map(|_| ())
    }

    async fn daily_total(
        &self,
        caller: &str,
        currency: &str,
        day: Date,
    ) -> Result<i64, StoreError> {
        sql::daily_total(&self.readers, caller, currency, &day_text(day)).await
    }

    async fn link_reference(&self, reference: OrderReference) -> Result<LinkOutcome, StoreError> {
        let op = WriteOp::LinkReference {
            linked_at: micros(reference.linked_at),
            reference,
        };
        match self.writer.submit(op).await? {
            Outcome::Linked(outcome) => Ok(outcome),
            other => Err(mismatch(&other)),
        }
    }

    async fn find_reference(
        &self,
        account: &str,
        kind: ReferenceKind,
        reference: &str,
    ) -> Result<Option<OrderReference>, StoreError> {
        read::find_reference(&self.readers, account, kind, reference).await
    }

    async fn order_is_indexed(&self, account: &str, order_id: &str) -> Result<bool, StoreError> {
        read::order_is_indexed(&self.readers, account, order_id).await
    }
}
