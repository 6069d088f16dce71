//! The SQLite writer: one task owning the one write connection, committing concurrent writes
//! in groups. Each request waits on its own reply; the task takes whatever is queued (up to
//! [`MAX_BATCH`]), runs it in one `BEGIN IMMEDIATE … COMMIT` and answers each request after
//! the commit — so one fsync (synchronous=FULL) covers the whole group and nobody hears "done"
//! before it is on disk.
//!
//! A failing request must not fail its neighbours: when any statement of a batch fails, the
//! batch is rolled back and its requests are run again one transaction each, so each gets its
//! own result. Requests are applied in arrival order either way.

use refund_gateway_domain::{Claim, Completion, NewOperation, StoreError};
use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::sql;

/// Most writes committed in one transaction. Bounds the latency a batch adds to the first
/// request in it, and the work redone when a batch has to be replayed one by one.
pub(super) const MAX_BATCH: usize = 256;

/// Requests that may wait for the writer; beyond it, callers wait to enqueue (back-pressure).
const QUEUE: usize = 4 * MAX_BATCH;

/// A write, with its values already encoded (ids as text, instants in microseconds).
#[derive(Debug)]
pub(super) enum WriteOp {
    Claim {
        op: NewOperation,
        now: i64,
        lease_until: i64,
    },
    TakeOver {
        id: String,
        now: i64,
        lease_until: i64,
        trace_id: Option<String>,
    },
    Renew {
        id: String,
        lease_until: i64,
    },
    Finish {
        id: String,
        completion: Completion,
        now: i64,
    },
    MarkPending {
        id: String,
        correlation_id: Option<String>,
        detail: String,
        now: i64,
    },
    Abandon {
        id: String,
        detail: String,
        now: i64,
    },
    Purge {
        before: i64,
    },
    Durability,
}

/// The result of a [`WriteOp`], by kind.
#[derive(Debug)]
pub(super) enum Outcome {
    // Boxed: a claim is large, and outcomes move through channels.
    Claim(Box<Claim>),
    /// Whether the row changed (take-over, renewal, transitions).
    Changed(bool),
    Purged(u64),
    Durability {
        journal_mode: String,
        synchronous: i64,
    },
}

struct Request {
    op: WriteOp,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

/// The way to the writer task. The task ends, closing its connection, when the last handle is
/// dropped.
#[derive(Debug, Clone)]
pub(super) struct Writer {
    queue: mpsc::Sender<Request>,
}

impl Writer {
    /// Starts the writer task on the current Tokio runtime, owning `conn`.
    pub(super) fn spawn(conn: SqliteConnection) -> Self {
        let (queue, requests) = mpsc::channel(QUEUE);
        tokio::spawn(run(conn, requests));
        Self { queue }
    }

    /// Runs `op` in the next group; returns once it is committed (or failed).
    pub(super) async fn submit(&self, op: WriteOp) -> Result<Outcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request { op, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the SQLite writer has stopped".to_owned()))?;
        answer.await.map_err(|_| {
            StoreError::Unavailable("the SQLite writer stopped before answering".to_owned())
        })?
    }
}

async fn run(mut conn: SqliteConnection, mut requests: mpsc::Receiver<Request>) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = requests.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        commit_batch(&mut conn, &mut batch).await;
    }
    if let Err(error) = conn.close().await {
        tracing::warn!(%error, "closing the SQLite writer connection failed");
    }
}

/// Runs and answers every request of `batch`, leaving it empty.
async fn commit_batch(conn: &mut SqliteConnection, batch: &mut Vec<Request>) {
    let ops: Vec<&WriteOp> = batch.iter().map(|r| &r.op).collect();
    match run_in_transaction(conn, &ops).await {
        Ok(outcomes) => {
            for (request, outcome) in batch.drain(..).zip(outcomes) {
                // A caller that gave up no longer listens; its write stands regardless.
                let _ = request.reply.send(Ok(outcome));
            }
        }
        Err(error) if batch.len() == 1 => {
            if let Some(request) = batch.pop() {
                let _ = request.reply.send(Err(error));
            }
        }
        Err(error) => {
            tracing::warn!(%error, size = batch.len(), "group commit failed; retrying one by one");
            for request in batch.drain(..) {
                let result =
                    run_in_transaction(conn, &[&request.op])
                        .await
                        .and_then(|mut outcomes| {
                            outcomes.pop().ok_or_else(|| {
                                StoreError::Unavailable(
                                    "the SQLite writer lost an answer".to_owned(),
                                )
                            })
                        });
                let _ = request.reply.send(result);
            }
        }
    }
}

/// Applies `ops` in order in one `BEGIN IMMEDIATE` transaction: all committed, or none.
async fn run_in_transaction(
    conn: &mut SqliteConnection,
    ops: &[&WriteOp],
) -> Result<Vec<Outcome>, StoreError> {
    let mut tx = conn
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(crate::row::db_error)?;
    let mut outcomes = Vec::with_capacity(ops.len());
    for op in ops {
        match apply(&mut tx, op).await {
            Ok(outcome) => outcomes.push(outcome),
            Err(error) => {
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(error = %rollback, "SQLite rollback failed");
                }
                return Err(error);
            }
        }
    }
    tx.commit().await.map_err(crate::row::db_error)?;
    Ok(outcomes)
}

async fn apply(conn: &mut SqliteConnection, op: &WriteOp) -> Result<Outcome, StoreError> {
    Ok(match op {
        WriteOp::Claim {
            op,
            now,
            lease_until,
        } => Outcome::Claim(Box::new(sql::claim(conn, op, *now, *lease_until).await?)),
        WriteOp::TakeOver {
            id,
            now,
            lease_until,
            trace_id,
        } => Outcome::Changed(
            sql::take_over(conn, id, *now, *lease_until, trace_id.as_deref()).await?,
        ),
        WriteOp::Renew { id, lease_until } => {
            Outcome::Changed(sql::renew_lease(conn, id, *lease_until).await?)
        }
        WriteOp::Finish {
            id,
            completion,
            now,
        } => Outcome::Changed(sql::finish(conn, id, completion, *now).await?),
        WriteOp::MarkPending {
            id,
            correlation_id,
            detail,
            now,
        } => Outcome::Changed(
            sql::mark_pending(conn, id, correlation_id.as_deref(), detail, *now).await?,
        ),
        WriteOp::Abandon { id, detail, now } => {
            Outcome::Changed(sql::abandon(conn, id, detail, *now).await?)
        }
        WriteOp::Purge { before } => Outcome::Purged(sql::purge(conn, *before).await?),
        WriteOp::Durability => {
            let (journal_mode, synchronous) = sql::durability(conn).await?;
            Outcome::Durability {
                journal_mode,
                synchronous,
            }
        }
    })
}
