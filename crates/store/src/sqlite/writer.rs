//! The SQLite writer: one thread owning the one write connection (rusqlite), committing
//! concurrent writes in groups. Each request waits on its own reply; the thread takes whatever
//! is queued (up to [`MAX_BATCH`]), runs it in one `BEGIN IMMEDIATE … COMMIT` and answers
//! each request after the commit — so one fsync (synchronous=FULL) covers the whole group and
//! nobody hears "done" before it is on disk. Under a sustained concurrent load (groups
//! averaging [`GATHER_FROM`] writes) it waits [`GATHER_FOR`] before each commit, so that fewer,
//! larger groups share the pages and fsyncs every group pays for.
//!
//! Why a thread of its own and not an async connection: a group is a few statements, and an
//! async SQLite driver hands each statement to its own worker thread and back. On a busy
//! machine every such hand-off waits for a core, so the group's transaction took several
//! milliseconds of waiting (measured: 4 ms per commit at 64 concurrent refunds), and the
//! writer's latency, not the CPU, bounded the throughput. Here a group costs two hand-offs (a
//! request in, the answers out) whatever its statements.
//!
//! Inside a batch, requests run in their arrival order, each a statement or two by primary key
//! (see `sql` for why not one bulk statement per kind).
//!
//! A failing request must not fail its neighbours: when any statement of a batch fails, the
//! batch is rolled back and its requests are run again one transaction each, so each gets its
//! own result.
//!
//! **Checkpoints** (copying committed pages from the WAL into the database file, and its fsync)
//! run mostly on a thread of their own ([`Checkpointer`]), nudged every
//! [`CHECKPOINT_AFTER_WRITES`] writes under a light load and every
//! [`CHECKPOINT_AFTER_WRITES_SUSTAINED`] under a sustained one, at most every
//! [`CHECKPOINT_INTERVAL`]: SQLite's automatic checkpoint runs in the committing connection,
//! and its fsync of the database file (20-70 ms measured under load, against 1-5 ms for a WAL
//! fsync) held up every write waiting behind it.
//!
//! The WAL starts over from its beginning only when a write begins with every frame copied,
//! which a background pass never achieves while writes keep appending: only a pass of the
//! writer's own does, as nothing is appended meanwhile. So once a background pass leaves the
//! WAL [`RESTART_AFTER_FRAMES`] long, the writer runs one right after it, between two groups,
//! copying only the frames committed since that pass began ([`Checkpointer::restart_due`]).
//! SQLite's automatic checkpoint (every 8000 WAL pages) stays on the writer as the fallback
//! for when the background passes fall behind.
//!
//! SQLite fsyncs the database file only at the end of a checkpoint that copied the whole WAL,
//! which a background pass under load never does (writes keep appending): the pages it copied
//! stayed unwritten in the operating system's cache, and the writer's checkpoint's fsync wrote
//! them all, 8-14 ms every second or two at 1,000 refunds/s with every commit waiting behind
//! it. So the checkpointer fsyncs the database file itself after each pass that copied
//! something, off the writer's path. It adds no guarantee and takes none away: SQLite still
//! syncs before it lets the WAL start over.
//!
//! Each committed transaction is measured (label `backend="sqlite"`): `store_batch_size`, how
//! many writes it held, and `store_commit_duration_seconds`, from `BEGIN` until the commit
//! (and its fsync) returned — the wait each of its writes had beyond queueing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use refund_gateway_domain::store::{LinkOutcome, OrderReference};
use refund_gateway_domain::{
    Completion, LeaseHolder, NewOperation, Operation, Resolution, StoreError, WebhookEvent,
};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::sql::{self, ClaimArgs, FinishArgs, sqlite_error};

/// Most writes committed in one transaction. Bounds the latency a batch adds to the first
/// request in it, and the work redone when a batch has to be replayed one by one.
pub(super) const MAX_BATCH: usize = 256;

/// Requests that may wait for the writer; beyond it, callers wait to enqueue (back-pressure).
const QUEUE: usize = 4 * MAX_BATCH;

/// The shortest time between two background checkpoints: each costs an fsync of the database
/// file, and pages changed again meanwhile are copied once.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(10);

/// Writes between two nudges of the checkpointer under a light load (groups averaging under
/// [`GATHER_FROM`] writes). Each pass ends with an fsync of the database file, and the commits
/// that fall during it wait for the disk behind it: a pass every 32 writes (about 16 ms at
/// 1,000 refunds/s) copies an eighth of what one every 256 did, and its fsync holds the
/// commits behind it that much less (figures in docs/architecture.md, "Checkpoints off the
/// writer").
const CHECKPOINT_AFTER_WRITES: usize = 32;

/// Writes between two nudges under a sustained load (the writer gathering): about 100 ms of
/// writes at 64 concurrent refunds. There, a latency is mostly the queue's, and passes as
/// frequent as a light load's copied the pages every group changes (the right-hand ends of the
/// indexes) over and over: 2-7% more CPU per refund and 12-20% more bytes written (passes
/// every 64 and 32 writes, at 64 concurrent refunds).
const CHECKPOINT_AFTER_WRITES_SUSTAINED: usize = 1024;

/// The mean group size (as found queued) from which the load counts as sustained: the writer
/// then waits [`GATHER_FOR`] before committing each group, so that one commit, one WAL write
/// of the pages that groups share and one fsync cover more writes (group commit's
/// `commit_delay`, as PostgreSQL has it). A light load's groups average one or two writes; 64
/// concurrent refunds' about eight.
const GATHER_FROM: usize = 6;

/// How long the writer gathers under a sustained load ([`GATHER_FROM`]). At 64 concurrent
/// refunds, 1 ms halved the fsyncs per refund and cut the gateway's CPU per refund by 7-10%,
/// with the p50 unchanged; applied to every group of four or more, it raised the open loop's
/// p99 at 1,000 refunds/s by 1-2 ms, whose groups average under two: hence the average.
const GATHER_FOR: Duration = Duration::from_millis(1);

/// WAL pages after which a background pass asks the writer to let the WAL start over (see
/// [`Checkpointer::restart_due`]); half the writer's automatic checkpoint's 8000, so that one
/// is left for when the background passes cannot keep up.
const RESTART_AFTER_FRAMES: i64 = 4000;

/// A write, with its values already encoded (ids and lease holders as text, instants in
/// microseconds).
#[derive(Debug)]
pub(super) enum WriteOp {
    Claim {
        /// `op`'s id as stored.
        id: String,
        op: NewOperation,
        holder: LeaseHolder,
        /// `holder` as stored.
        holder_text: String,
        now: i64,
        lease_until: i64,
    },
    TakeOver {
        id: String,
        holder: String,
        now: i64,
        lease_until: i64,
        trace_id: Option<String>,
        otel_trace_id: Option<String>,
    },
    Renew {
        id: String,
        holder: String,
        lease_until: i64,
    },
    Finish {
        id: String,
        holder: String,
        completion: Completion,
        now: i64,
    },
    MarkPending {
        id: String,
        holder: String,
        correlation_id: Option<String>,
        detail: String,
        answer_context: Option<String>,
        now: i64,
    },
    Abandon {
        id: String,
        holder: String,
        detail: String,
        now: i64,
    },
    ResolveReview {
        id: String,
        resolution: Resolution,
        now: i64,
    },
    RecordWebhook {
        event: WebhookEvent,
        /// `event.operation_id` as stored.
        operation_id: Option<String>,
        /// `event.received_at` in microseconds.
        received_at: i64,
        detail: String,
    },
    /// One chunk of [`crate::purge::Purger::purge`].
    Purge {
        state: &'static str,
        from: i64,
        before: i64,
        limit: u32,
    },
    ReserveDaily {
        caller: String,
        currency: String,
        /// The UTC day as stored.
        day: String,
        amount: i64,
        cap: i64,
    },
    ReleaseDaily {
        caller: String,
        currency: String,
        /// The UTC day as stored.
        day: String,
        amount: i64,
    },
    LinkReference {
        reference: OrderReference,
        /// `reference.linked_at` in microseconds.
        linked_at: i64,
    },
    Durability,
}

/// The result of a [`WriteOp`], by kind.
#[derive(Debug)]
pub(super) enum Outcome {
    /// The claim inserted its row: the operation is the request's (built by the caller, from
    /// the request it gets back).
    Claimed,
    /// The claim found the operation stored. Boxed: an operation is large, and outcomes move
    /// through channels.
    Exists(Box<Operation>),
    /// Whether the row changed (take-over, renewal, transitions, daily totals) or was
    /// inserted (webhooks).
    Changed(bool),
    /// The `updated_at` of each operation whose answer body went.
    Purged(Vec<i64>),
    Linked(LinkOutcome),
    Durability {
        journal_mode: String,
        synchronous: i64,
    },
}

struct Request {
    op: WriteOp,
    /// The outcome, and the write given back (see [`Writer::submit_and_return`]).
    reply: oneshot::Sender<(Result<Outcome, StoreError>, WriteOp)>,
}

/// The way to the writer thread. The thread ends, closing its connection, when the last
/// handle is dropped.
#[derive(Debug, Clone)]
pub(super) struct Writer {
    queue: mpsc::Sender<Request>,
    stats: Arc<Counters>,
}

/// What the writer has done since it started, to see how well it groups writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed or attempted (one per group; more when a group is replayed).
    pub transactions: u64,
    /// Requests answered.
    pub requests: u64,
}

#[derive(Debug, Default)]
struct Counters {
    transactions: AtomicU64,
    requests: AtomicU64,
}

impl Writer {
    /// Starts the writer thread, owning `conn`, and its checkpointer's, owning `checkpoints`
    /// (a second connection to the same file) and `database` (the file, to fsync it).
    pub(super) fn spawn(
        conn: Connection,
        checkpoints: Connection,
        database: std::fs::File,
    ) -> Result<Self, StoreError> {
        let (queue, requests) = mpsc::channel(QUEUE);
        let stats = Arc::new(Counters::default());
        let counters = stats.clone();
        let checkpointer = Checkpointer::spawn(checkpoints, database)?;
        std::thread::Builder::new()
            .name("sqlite-writer".to_owned())
            .spawn(move || run(conn, requests, &counters, &checkpointer))
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the SQLite writer thread: {e}"))
            })?;
        Ok(Self { queue, stats })
    }

    /// The counters so far.
    pub(super) fn stats(&self) -> WriterStats {
        WriterStats {
            transactions: self.stats.transactions.load(Ordering::Relaxed),
            requests: self.stats.requests.load(Ordering::Relaxed),
        }
    }

    /// Runs `op` in the next group; returns once it is committed (or failed).
    pub(super) async fn submit(&self, op: WriteOp) -> Result<Outcome, StoreError> {
        self.submit_and_return(op).await.map(|(outcome, _)| outcome)
    }

    /// [`Writer::submit`], with `op` given back. A write's values were allocated on the
    /// caller's thread: freed there, not on the writer's, they cost the allocator no
    /// cross-thread free, and a new claim's operation is built from them there instead of
    /// being copied on the writer's thread, which every write waits for.
    pub(super) async fn submit_and_return(
        &self,
        op: WriteOp,
    ) -> Result<(Outcome, WriteOp), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request { op, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the SQLite writer has stopped".to_owned()))?;
        let (outcome, op) = answer.await.map_err(|_| {
            StoreError::Unavailable("the SQLite writer stopped before answering".to_owned())
        })?;
        outcome.map(|outcome| (outcome, op))
    }
}

fn run(
    conn: Connection,
    mut requests: mpsc::Receiver<Request>,
    stats: &Counters,
    checkpointer: &Checkpointer,
) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    let mut load = GroupSizes::default();
    let mut checkpoints = CheckpointSchedule::default();
    while let Some(first) = requests.blocking_recv() {
        batch.push(first);
        take_queued(&mut requests, &mut batch);
        let sustained = load.record(batch.len());
        // A full group has no room for what the wait would gather.
        if sustained && batch.len() < MAX_BATCH {
            std::thread::sleep(GATHER_FOR);
            take_queued(&mut requests, &mut batch);
        }
        stats
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let nudge = checkpoints.record(batch.len(), sustained);
        commit_batch(&conn, &mut batch, stats);
        if nudge {
            checkpointer.nudge();
        }
        if checkpointer.restart_due() {
            // No fsync of its own: when this pass copies every frame, SQLite fsyncs the
            // database file before the WAL may start over; when it does not (a reader still
            // needs an old page), nothing waits on the pages it copied.
            checkpoint(&conn, || Ok(()));
        }
    }
    if let Err((_, error)) = conn.close() {
        tracing::warn!(%error, "closing the SQLite writer connection failed");
    }
}

/// Moves the requests waiting in `requests` into `batch`, up to [`MAX_BATCH`].
fn take_queued(requests: &mut mpsc::Receiver<Request>, batch: &mut Vec<Request>) {
    while batch.len() < MAX_BATCH {
        match requests.try_recv() {
            Ok(request) => batch.push(request),
            Err(_) => break,
        }
    }
}

/// The mean size of the groups as they arrive (before any gathering), to tell a sustained
/// concurrent load from a burst: an exponential moving average over about 16 groups, kept as
/// 256 times the mean, an integer whose rounding moves the mean by less than a tenth.
#[derive(Debug, Default)]
struct GroupSizes {
    mean_times_256: usize,
}

impl GroupSizes {
    /// Records a group of `size` writes as found queued; true when the writer should gather
    /// for [`GATHER_FOR`] before committing it: while groups have averaged
    /// [`GATHER_FROM`] writes or more.
    fn record(&mut self, size: usize) -> bool {
        self.mean_times_256 = self.mean_times_256 - self.mean_times_256 / 16 + 16 * size;
        self.mean_times_256 >= 256 * GATHER_FROM
    }
}

/// When the writer nudges the checkpointer: after [`CHECKPOINT_AFTER_WRITES`] writes under a
/// light load, [`CHECKPOINT_AFTER_WRITES_SUSTAINED`] under a sustained one.
#[derive(Debug, Default)]
struct CheckpointSchedule {
    since_nudge: usize,
}

impl CheckpointSchedule {
    /// Records a group of `writes`; true when the checkpointer is due a nudge after its commit.
    fn record(&mut self, writes: usize, sustained: bool) -> bool {
        self.since_nudge += writes;
        let due = if sustained {
            CHECKPOINT_AFTER_WRITES_SUSTAINED
        } else {
            CHECKPOINT_AFTER_WRITES
        };
        if self.since_nudge < due {
            return false;
        }
        self.since_nudge = 0;
        true
    }
}

/// The background checkpoints' thread. It ends, closing its connection, when the writer's
/// handle to it is dropped.
struct Checkpointer {
    nudges: std::sync::mpsc::SyncSender<()>,
    /// Set by a pass that left the WAL at least [`RESTART_AFTER_FRAMES`] long.
    restart: Arc<std::sync::atomic::AtomicBool>,
}

impl Checkpointer {
    fn spawn(conn: Connection, database: std::fs::File) -> Result<Self, StoreError> {
        // One pending nudge is enough: a checkpoint copies everything committed before it.
        let (nudges, nudged) = std::sync::mpsc::sync_channel(1);
        let restart = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let due = restart.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".to_owned())
            .spawn(move || {
                // At once, before any nudge: it copies what a previous process left in the WAL,
                // and reads the schema while the gateway is still starting.
                checkpoint(&conn, || database.sync_all());
                while nudged.recv().is_ok() {
                    if checkpoint(&conn, || database.sync_all()) >= RESTART_AFTER_FRAMES {
                        due.store(true, Ordering::Release);
                    }
                    std::thread::sleep(CHECKPOINT_INTERVAL);
                }
                if let Err((_, error)) = conn.close() {
                    tracing::warn!(%error, "closing the SQLite checkpoint connection failed");
                }
            })
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the SQLite checkpoint thread: {e}"))
            })?;
        Ok(Self { nudges, restart })
    }

    /// Asks for a checkpoint soon; never waits.
    fn nudge(&self) {
        let _ = self.nudges.try_send(());
    }

    /// True once after a pass that left the WAL at least [`RESTART_AFTER_FRAMES`] long: the
    /// writer should now run a pass of its own (module docs). Left to SQLite's automatic
    /// checkpoint, which falls at whatever point the background passes had reached, the
    /// writer's pass copied about 200 pages and its fsync of the database file took 2.1-2.5
    /// ms, every commit waiting behind it; right after a background pass it copies about 10
    /// and the fsync takes 0.2-0.4 ms (`strace -T` on the writer thread, one refund at a time).
    fn restart_due(&self) -> bool {
        self.restart.swap(false, Ordering::Acquire)
    }
}

/// A passive checkpoint: copies what it can without waiting for the writer or the readers,
/// then fsyncs the database file (`sync_database`) when the WAL's frames were copied (see the
/// module docs). Not copying (another checkpoint is running, a reader still needs an old page)
/// is normal and silent: the next one, or the writer's own, copies it.
///
/// Returns how long the WAL is, in pages (0 when the pass failed).
fn checkpoint(conn: &Connection, sync_database: impl FnOnce() -> std::io::Result<()>) -> i64 {
    // The PRAGMA's row: busy, frames in the WAL, frames copied to the database file.
    let checkpointed = conn
        .prepare_cached("PRAGMA wal_checkpoint(PASSIVE)")
        .and_then(|mut statement| {
            statement.query_row([], |row| Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?)))
        });
    match checkpointed {
        Ok((frames, copied)) if copied > 0 => {
            if let Err(error) = sync_database() {
                // Nothing depends on it: SQLite syncs the file itself before the WAL starts
                // over, and Linux reports a failed write-back to every descriptor open on the
                // file when it happened, so SQLite's own sync fails too.
                tracing::warn!(%error, "fsync of the SQLite database file after a checkpoint failed");
            }
            frames
        }
        Ok((frames, _)) => frames,
        Err(error) => {
            tracing::debug!(%error, "SQLite checkpoint failed");
            0
        }
    }
}

/// Runs and answers every request of `batch`, leaving it empty.
fn commit_batch(conn: &Connection, batch: &mut Vec<Request>, stats: &Counters) {
    stats.transactions.fetch_add(1, Ordering::Relaxed);
    let ops: Vec<&WriteOp> = batch.iter().map(|r| &r.op).collect();
    match run_in_transaction(conn, &ops) {
        Ok(outcomes) => {
            for (Request { op, reply }, outcome) in batch.drain(..).zip(outcomes) {
                // A caller that gave up no longer listens; its write stands regardless.
                let _ = reply.send((Ok(outcome), op));
            }
        }
        Err(error) if batch.len() == 1 => {
            if let Some(Request { op, reply }) = batch.pop() {
                let _ = reply.send((Err(error), op));
            }
        }
        Err(error) => {
            tracing::warn!(%error, size = batch.len(), "group commit failed; retrying one by one");
            for Request { op, reply } in batch.drain(..) {
                stats.transactions.fetch_add(1, Ordering::Relaxed);
                let result = run_in_transaction(conn, &[&op]).and_then(|mut outcomes| {
                    outcomes.pop().ok_or_else(|| {
                        StoreError::Unavailable("the SQLite writer lost an answer".to_owned())
                    })
                });
                let _ = reply.send((result, op));
            }
        }
    }
}

/// Applies `ops` in order in one `BEGIN IMMEDIATE` transaction: all committed, or none.
/// Records the metrics of a committed one (see the module docs); a failed one is not a commit.
fn run_in_transaction(conn: &Connection, ops: &[&WriteOp]) -> Result<Vec<Outcome>, StoreError> {
    let started = Instant::now();
    control(conn, "BEGIN IMMEDIATE").map_err(sqlite_error)?;
    let committed = apply_all(conn, ops).and_then(|outcomes| {
        control(conn, "COMMIT")
            .map_err(sqlite_error)
            .map(|()| outcomes)
    });
    let outcomes = match committed {
        Ok(outcomes) => outcomes,
        Err(error) => {
            // A failed statement or commit leaves the transaction open: nothing of it stays.
            if let Err(rollback) = control(conn, "ROLLBACK") {
                tracing::warn!(error = %rollback, "SQLite rollback failed");
            }
            return Err(error);
        }
    };
    // Literal name and labels: the macros keep the key in a static, so recording allocates
    // nothing.
    metrics::histogram!("store_commit_duration_seconds", "backend" => "sqlite")
        .record(started.elapsed().as_secs_f64());
    // At most MAX_BATCH: exact as an f64.
    metrics::histogram!("store_batch_size", "backend" => "sqlite").record(ops.len() as f64);
    Ok(outcomes)
}

/// Runs a transaction control statement (`BEGIN IMMEDIATE`, `COMMIT`, `ROLLBACK`) from the
/// connection's statement cache: parsed once, not on every transaction as rusqlite's
/// `Transaction` does (it was four statement compilations per refund at one request at a
/// time).
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Applies `ops` in order; their outcomes, in the same order.
fn apply_all(conn: &Connection, ops: &[&WriteOp]) -> Result<Vec<Outcome>, StoreError> {
    ops.iter().map(|op| apply(conn, op)).collect()
}

/// Applies one write.
fn apply(conn: &Connection, op: &WriteOp) -> Result<Outcome, StoreError> {
    Ok(match op {
        WriteOp::Claim {
            id,
            op,
            holder_text,
            now,
            lease_until,
            ..
        } => match sql::claim(
            conn,
            &ClaimArgs {
                id,
                op,
                holder_text,
                now: *now,
                lease_until: *lease_until,
            },
        )? {
            None => Outcome::Claimed,
            Some(existing) => Outcome::Exists(Box::new(existing)),
        },
        WriteOp::Finish {
            id,
            holder,
            completion,
            now,
        } => Outcome::Changed(sql::finish(
            conn,
            &FinishArgs {
                id,
                completion,
                holder,
                now: *now,
            },
        )?),
        WriteOp::TakeOver {
            id,
            holder,
            now,
            lease_until,
            trace_id,
            otel_trace_id,
        } => Outcome::Changed(sql::take_over(
            conn,
            id,
            holder,
            *now,
            *lease_until,
            trace_id.as_deref(),
            otel_trace_id.as_deref(),
        )?),
        WriteOp::Renew {
            id,
            holder,
            lease_until,
        } => Outcome::Changed(sql::renew_lease(conn, id, holder, *lease_until)?),
        WriteOp::MarkPending {
            id,
            holder,
            correlation_id,
            detail,
            answer_context,
            now,
        } => Outcome::Changed(sql::mark_pending(
            conn,
            id,
            holder,
            correlation_id.as_deref(),
            detail,
            answer_context.as_deref(),
            *now,
        )?),
        WriteOp::Abandon {
            id,
            holder,
            detail,
            now,
        } => Outcome::Changed(sql::abandon(conn, id, holder, detail, *now)?),
        WriteOp::ResolveReview {
            id,
            resolution,
            now,
        } => Outcome::Changed(sql::resolve_review(conn, id, resolution, *now)?),
        WriteOp::RecordWebhook {
            event,
            operation_id,
            received_at,
            detail,
        } => Outcome::Changed(sql::record_webhook(
            conn,
            event,
            operation_id.as_deref(),
            *received_at,
            detail,
        )?),
        WriteOp::Purge {
            state,
            from,
            before,
            limit,
        } => Outcome::Purged(sql::purge_chunk(conn, state, *from, *before, *limit)?),
        WriteOp::ReserveDaily {
            caller,
            currency,
            day,
            amount,
            cap,
        } => Outcome::Changed(sql::reserve_daily(
            conn, caller, currency, day, *amount, *cap,
        )?),
        WriteOp::ReleaseDaily {
            caller,
            currency,
            day,
            amount,
        } => Outcome::Changed(sql::release_daily(conn, caller, currency, day, *amount)?),
        WriteOp::LinkReference {
            reference,
            linked_at,
        } => Outcome::Linked(sql::link_reference(conn, reference, *linked_at)?),
        WriteOp::Durability => {
            let (journal_mode, synchronous) = sql::durability(conn)?;
            Outcome::Durability {
                journal_mode,
                synchronous,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// A WAL database in `dir` whose WAL holds `rows` committed rows, none checkpointed.
    fn wal_with_rows(dir: &std::path::Path, rows: usize) -> (Connection, Connection) {
        let path = dir.join("checkpoint.sqlite3");
        let writer = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; \
                 CREATE TABLE t (x INTEGER);",
            )
            .unwrap_or_else(|e| panic!("{e}"));
        for x in 0..rows {
            writer
                .execute("INSERT INTO t VALUES (?1)", [x as i64])
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let checkpoints = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
        (writer, checkpoints)
    }

    /// The checkpointer fsyncs the database file after a pass that copied frames from the
    /// WAL (SQLite itself would leave them unwritten until the writer's checkpoint), and not
    /// after a pass with nothing copied.
    #[test]
    fn a_checkpoint_that_copied_pages_syncs_the_database_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (_writer, checkpoints) = wal_with_rows(dir.path(), 10);
        let syncs = Cell::new(0);
        let sync = || {
            syncs.set(syncs.get() + 1);
            Ok(())
        };
        checkpoint(&checkpoints, sync);
        assert_eq!(syncs.get(), 1, "a pass that copied frames syncs");

        let empty = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (_writer, checkpoints) = wal_with_rows(empty.path(), 0);
        // Reset the WAL of the table's creation, so nothing is left to copy.
        checkpoints
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap_or_else(|e| panic!("{e}"));
        let syncs = Cell::new(0);
        checkpoint(&checkpoints, || {
            syncs.set(syncs.get() + 1);
            Ok(())
        });
        assert_eq!(syncs.get(), 0, "nothing copied, nothing to sync");
    }

    /// The writer gathers only under a sustained load: never for a light load's groups, not
    /// for one burst after a light load, from a few groups into a concurrent load's, and no
    /// longer soon after that load ends.
    #[test]
    fn groups_are_gathered_under_a_sustained_load_only() {
        let mut sizes = GroupSizes::default();
        for size in [1, 2, 1, 1, 3, 1, 2].repeat(20) {
            assert!(!sizes.record(size), "a light load is not gathered");
        }
        assert!(
            !sizes.record(MAX_BATCH / 4),
            "one burst is not a sustained load"
        );
        let gathered_from = (1..=32).find(|_| sizes.record(8));
        assert!(
            gathered_from.is_some_and(|n| n > 1),
            "groups of eight are gathered after a few of them: {gathered_from:?}"
        );
        let stopped_after = (1..=64).find(|_| !sizes.record(1));
        assert!(
            stopped_after.is_some_and(|n| n <= 32),
            "back to single writes, gathering stops: {stopped_after:?}"
        );
    }

    /// A light load's checkpoints are frequent and short; a sustained load's rarer, so that the
    /// pages each of its groups changes are not copied at every pass.
    #[test]
    fn checkpoints_are_nudged_more_often_under_a_light_load() {
        let mut light = CheckpointSchedule::default();
        let nudged_after = (1..=CHECKPOINT_AFTER_WRITES_SUSTAINED).find(|_| light.record(1, false));
        assert_eq!(nudged_after, Some(CHECKPOINT_AFTER_WRITES));
        assert!(
            !light.record(1, false),
            "the count starts over after a nudge"
        );

        let mut sustained = CheckpointSchedule::default();
        let groups = CHECKPOINT_AFTER_WRITES_SUSTAINED / 16;
        let nudged_after = (1..=groups).find(|_| sustained.record(16, true));
        assert_eq!(
            nudged_after,
            Some(groups),
            "groups of 16 under a sustained load are nudged after {CHECKPOINT_AFTER_WRITES_SUSTAINED} writes"
        );
    }

    /// A pass reports how long the WAL is: what tells the writer to run a pass of its own.
    /// That pass copies every frame (nothing is appended meanwhile), and the next write then
    /// starts the WAL over from its beginning.
    #[test]
    fn a_checkpoint_reports_the_length_of_the_wal_which_a_complete_one_lets_start_over() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (writer, checkpoints) = wal_with_rows(dir.path(), 10);
        // A reader's snapshot keeps the pass from copying what is committed after it: the
        // WAL's length, not what was copied, is reported.
        let reader = Connection::open(dir.path().join("checkpoint.sqlite3"))
            .unwrap_or_else(|e| panic!("{e}"));
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM t;")
            .unwrap_or_else(|e| panic!("{e}"));
        let before = checkpoint(&checkpoints, || Ok(()));
        writer
            .execute("INSERT INTO t VALUES (?1)", [10])
            .unwrap_or_else(|e| panic!("{e}"));
        let frames = checkpoint(&checkpoints, || Ok(()));
        assert!(
            frames > before && before >= 11,
            "the WAL is {frames} frames long, {before} before the last write"
        );
        reader
            .execute_batch("COMMIT")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            checkpoint(&writer, || Ok(())),
            frames,
            "a pass alone does not start the WAL over"
        );
        writer
            .execute("INSERT INTO t VALUES (?1)", [11])
            .unwrap_or_else(|e| panic!("{e}"));
        let after = checkpoint(&checkpoints, || Ok(()));
        assert!(
            (1..frames).contains(&after),
            "the first write after a complete pass starts the WAL over: {after} frames, {frames} before"
        );
    }
}
