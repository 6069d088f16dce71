//! The SQL statements of the SQLite store's writes, and the functions that run them on the
//! writer's connection (rusqlite, on the writer's own thread) inside its batch transaction.
//! The reads are shared with PostgreSQL (`crate::read`, sqlx), except [`daily_total`], which
//! reads on the readers' pool.
//!
//! Audit events are appended by triggers (see the migration), so a claim or a transition is
//! one statement and the event exists exactly when the row changed. Claims and finishes, the
//! hot path, are one-row statements by primary key ([`claim`], [`finish`]) without
//! `RETURNING`: the row count says whether each took. None of the hot writes makes SQLite
//! build a temporary b-tree (a fresh zeroed page and page cache on every run), which a bulk
//! form did (one `INSERT … SELECT … FROM (VALUES …)` and one `UPDATE … FROM (VALUES …)` per
//! group, with `RETURNING`: one b-tree each for the `RETURNING` rows, the join, and an
//! `INSERT … SELECT` into a table with triggers), and so did the state CHECK while it was an
//! `IN` list (migration 0009). A unit test below keeps it so.
//!
//! The statements the writer runs in its transactions to change operations say `OR FAIL`:
//! on an error SQLite stops the statement and leaves the undoing to the writer, which rolls
//! back the whole transaction whenever any statement fails (see `writer`). Under SQLite's
//! default (`ABORT`), a statement that writes several rows or fires a trigger first copies
//! every page it is about to change into a statement journal, so that it alone can be undone:
//! a copy the writer never uses, which cost about 4% of the gateway's instructions per
//! refund. [`ORPHANED`] runs outside a transaction and keeps the default.

use std::sync::LazyLock;

use refund_gateway_domain::store::{LinkOutcome, OrderReference};
use refund_gateway_domain::{
    Completion, NewOperation, Operation, Resolution, StoreError, WebhookEvent,
};
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, OptionalExtension, ToSql, params, params_from_iter};
use sqlx::SqlitePool;

use crate::read::{SELECT_OPERATION, SELECT_REFERENCE};
use crate::row::{
    OperationRow, ReferenceRow, SqlValue, claim_values, db_error, insert_event_from, link_found,
    reference_values, resolution_values, webhook_values,
};

/// Inserts the operation as IN_FLIGHT (the trigger adds its "claimed" event); changes no row
/// when the id exists. The values of `claim_values`: id, caller, rpc, key, fingerprint,
/// account, order, capture, amount, currency, reference, Klarna request, trace id, lease
/// holder, lease end, now, resource kind, resource id, traceparent, OpenTelemetry trace id
/// (the claimer's: it is the first holder).
const CLAIM: &str = "INSERT OR FAIL INTO operations (operation_id, caller, rpc, idempotency_key, \
     fingerprint, klarna_account, order_id, capture_id, amount, currency, reference, \
     klarna_request, trace_id, state, lease_holder, lease_expires_at, created_at, updated_at, \
     resource_kind, resource_id, traceparent, otel_trace_id) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 'IN_FLIGHT', ?14, ?15, \
     ?16, ?16, ?17, ?18, ?19, ?20) \
     ON CONFLICT (operation_id) DO NOTHING";

/// IN_FLIGHT held by the holder -> a final state (the trigger adds the event). ?1 id, ?2 state,
/// ?3 now, ?4 refund id, ?5 correlation id, ?6 code, ?7 message, ?8 payload, ?9 trace id,
/// ?10 detail, ?11 lease holder.
const FINISH: &str = "UPDATE OR FAIL operations SET state = ?2, lease_expires_at = NULL, \
     updated_at = ?3, refund_id = COALESCE(?4, refund_id), \
     correlation_id = COALESCE(?5, correlation_id), response_code = ?6, response_message = ?7, \
     response_payload = ?8, event_trace_id = ?9, event_detail = ?10 \
     WHERE operation_id = ?1 AND state = 'IN_FLIGHT' AND lease_holder = ?11";

// ?1 id, ?2 lease end, ?3 now, ?4 trace id, ?5 new lease holder, ?6 its OpenTelemetry trace
// id: the new holder's replaces the old one's even when NULL, so no later event is put down
// to a trace that no longer holds the operation.
const TAKE_OVER: &str = "UPDATE OR FAIL operations SET state = 'IN_FLIGHT', lease_expires_at = ?2, \
     lease_holder = ?5, otel_trace_id = ?6, updated_at = ?3, event_detail = 'taken over', \
     event_trace_id = ?4 WHERE operation_id = ?1 \
     AND (state = 'PENDING' OR (state = 'IN_FLIGHT' \
          AND (lease_expires_at IS NULL OR lease_expires_at <= ?3)))";

// The values of `resolution_values`: ?1 id, ?2 state, ?3 now, ?4 refund id, ?5 code,
// ?6 message, ?7 payload, ?8 the event's trace id, ?9 detail, ?10 the operator's
// OpenTelemetry trace id. Only from REQUIRES_REVIEW; the transition trigger writes the event,
// which carries the row's new otel_trace_id: the operator's, NULL included, as on a take-over
// (the operator is the last to act on the operation). The lease columns stay: the row is not
// IN_FLIGHT, and its last holder is history worth keeping.
const RESOLVE_REVIEW: &str = "UPDATE OR FAIL operations SET state = ?2, updated_at = ?3, \
     refund_id = COALESCE(?4, refund_id), response_code = ?5, response_message = ?6, \
     response_payload = ?7, event_trace_id = ?8, event_detail = ?9, otel_trace_id = ?10 \
     WHERE operation_id = ?1 AND state = 'REQUIRES_REVIEW'";

// ?1 id, ?2 lease end, ?3 lease holder.
const RENEW_LEASE: &str = "UPDATE operations SET lease_expires_at = ?2 \
     WHERE operation_id = ?1 AND state = 'IN_FLIGHT' AND lease_holder = ?3";

// ?1 id, ?2 now, ?3 correlation id, ?4 detail, ?5 lease holder, ?6 answer context.
const MARK_PENDING: &str = "UPDATE OR FAIL operations SET state = 'PENDING', lease_expires_at = NULL, \
     updated_at = ?2, correlation_id = COALESCE(?3, correlation_id), event_detail = ?4, \
     event_trace_id = NULL, answer_context = COALESCE(?6, answer_context) \
     WHERE operation_id = ?1 AND state = 'IN_FLIGHT' AND lease_holder = ?5";

// ?1 id, ?2 detail, ?3 at, ?4 lease holder. Written here, not by a trigger: purge deletes
// rows too.
static ABANDON_EVENT: LazyLock<String> = LazyLock::new(|| {
    insert_event_from(
        "operations WHERE operation_id = ?1 AND state = 'IN_FLIGHT' AND lease_holder = ?4",
        "trace_id, otel_trace_id, state, NULL, ?2, ?3",
    )
});

// ?1 id, ?2 lease holder.
const ABANDON: &str = "DELETE FROM operations \
     WHERE operation_id = ?1 AND state = 'IN_FLIGHT' AND lease_holder = ?2";

// The values of `webhook_values`: ?1 event id, ?2 type, ?3 account, ?4 operation id, ?5 payment
// transaction id, ?6 refund id, ?7 correlation id, ?8 payload, ?9 occurred at, ?10 received
// at. A known event id inserts nothing.
const RECORD_WEBHOOK: &str = "INSERT INTO webhook_events (event_id, event_type, klarna_account, \
     operation_id, payment_transaction_id, refund_id, correlation_id, payload, occurred_at, \
     received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
     ON CONFLICT (event_id) DO NOTHING";

// ?1 operation id, ?2 refund id, ?3 correlation id, ?4 detail, ?5 at. No state change: the
// operation's state before and after, the webhook's Klarna ids, no trace ids (Klarna caused
// it, not a request of ours). Written here, not by a trigger, as the operation row does not
// change.
static WEBHOOK_EVENT: LazyLock<String> = LazyLock::new(|| {
    insert_event_from(
        "(SELECT operation_id, caller, rpc, idempotency_key, klarna_account, order_id, \
           capture_id, amount, currency, ?2 AS refund_id, ?3 AS correlation_id, state, created_at \
         FROM operations WHERE operation_id = ?1)",
        "NULL, NULL, state, state, ?4, ?5",
    )
});

// ?1 a final state, ?2 from, ?3 before, ?4 limit. Only the answer body goes: the row (scope,
// fingerprint, final state, Klarna ids, the call) stays forever, so a late retry is a replay
// and never a second execution. REQUIRES_REVIEW and unresolved operations keep everything.
// No event: not a state change. `operations_by_state` gives the rows oldest first from ?2.
const PURGE_CHUNK: &str = "UPDATE operations SET response_payload = NULL WHERE rowid IN (\
     SELECT rowid FROM operations WHERE state = ?1 AND updated_at >= ?2 AND updated_at < ?3 \
     AND response_payload IS NOT NULL ORDER BY updated_at LIMIT ?4) \
     RETURNING updated_at";

// ?1 now. Every IN_FLIGHT claim found when the store opens belongs to a process that is gone
// (one process owns the file): it becomes PENDING at once, for the reconciler or the caller's
// retry, instead of waiting for its lease to run out.
const ORPHANED: &str = "UPDATE operations SET state = 'PENDING', lease_expires_at = NULL, \
     updated_at = ?1, event_detail = 'taken over at start: the process holding it is gone', \
     event_trace_id = NULL WHERE state = 'IN_FLIGHT'";

// ?1 caller, ?2 currency, ?3 day, ?4 amount, ?5 cap. Adds the amount to the day's total if
// it stays within the cap, creating the row on the day's first reservation; returns the new
// total, or no row when refused. The SELECT's WHERE refuses an amount over the cap on a fresh
// row (and resolves the parsing ambiguity of `INSERT … SELECT … ON CONFLICT`); the update's
// WHERE is written `total <= cap - amount` so that it cannot overflow for amounts and caps of
// at least zero. One statement under the writer's lock: nothing runs between its check and
// its write.
const RESERVE_DAILY: &str = "INSERT INTO caller_daily_totals (caller, currency, day, total) \
     SELECT ?1, ?2, ?3, ?4 WHERE ?4 <= ?5 \
     ON CONFLICT (caller, currency, day) DO UPDATE \
       SET total = caller_daily_totals.total + excluded.total \
       WHERE caller_daily_totals.total <= ?5 - excluded.total \
     RETURNING total";

// ?1 caller, ?2 currency, ?3 day, ?4 amount. Never below zero; no row, nothing to give back.
const RELEASE_DAILY: &str = "UPDATE caller_daily_totals SET total = MAX(total - ?4, 0) \
     WHERE caller = ?1 AND currency = ?2 AND day = ?3";

// ?1 caller, ?2 currency, ?3 day.
const DAILY_TOTAL: &str = "SELECT total FROM caller_daily_totals \
     WHERE caller = ?1 AND currency = ?2 AND day = ?3";

// The values of `reference_values`: ?1 account, ?2 kind, ?3 reference, ?4 order id, ?5 store
// id, ?6 linked at. A reference already linked inserts nothing and keeps its first link.
const LINK_REFERENCE: &str = "INSERT INTO order_references \
     (klarna_account, kind, reference, order_id, store_id, linked_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
     ON CONFLICT (klarna_account, kind, reference) DO NOTHING";

/// A claim as the writer holds it: the operation, its id as stored, and its instants.
#[derive(Debug)]
pub(super) struct ClaimArgs<'a> {
    pub(super) id: &'a str,
    pub(super) op: &'a NewOperation,
    /// The lease holder as stored.
    pub(super) holder_text: &'a str,
    pub(super) now: i64,
    pub(super) lease_until: i64,
}

/// A finish as the writer holds it.
#[derive(Debug)]
pub(super) struct FinishArgs<'a> {
    pub(super) id: &'a str,
    pub(super) completion: &'a Completion,
    /// The lease holder as stored.
    pub(super) holder: &'a str,
    pub(super) now: i64,
}

impl ToSql for SqlValue<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            SqlValue::Text(Some(text)) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
            SqlValue::Int(Some(value)) => ToSqlOutput::Owned(Value::Integer(*value)),
            SqlValue::Int4(Some(value)) => ToSqlOutput::Owned(Value::Integer(i64::from(*value))),
            SqlValue::Blob(Some(bytes)) => ToSqlOutput::Borrowed(ValueRef::Blob(bytes)),
            SqlValue::Text(None)
            | SqlValue::Int(None)
            | SqlValue::Int4(None)
            | SqlValue::Blob(None) => ToSqlOutput::Owned(Value::Null),
        })
    }
}

/// A SQLite error as the port reports it: unreadable values are [`StoreError::Corrupt`],
/// everything else [`StoreError::Unavailable`]. SQLite's messages name no secret.
pub(super) fn sqlite_error(error: rusqlite::Error) -> StoreError {
    match error {
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::Utf8Error(..)
        | rusqlite::Error::InvalidColumnIndex(_)
        | rusqlite::Error::InvalidColumnName(_)
        | rusqlite::Error::InvalidColumnType(..) => StoreError::Corrupt(error.to_string()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Claims `c`: inserted as IN_FLIGHT with its "claimed" event (`None`: the operation is
/// `c`'s, for the caller to build), or the stored operation.
pub(super) fn claim(conn: &Connection, c: &ClaimArgs<'_>) -> Result<Option<Operation>, StoreError> {
    let values = claim_values(c.id, c.op, c.holder_text, c.lease_until, c.now);
    if changed_one(conn, CLAIM, params_from_iter(values.iter()))? {
        return Ok(None);
    }
    match get(conn, c.id)? {
        Some(existing) => Ok(Some(existing)),
        // The writer holds the write lock: a row that conflicted a moment ago is still there.
        None => Err(StoreError::Corrupt(format!(
            "operation {} conflicted on insert but cannot be read",
            c.id
        ))),
    }
}

/// Finishes `f` if it is IN_FLIGHT and held by its holder; whether it changed.
pub(super) fn finish(conn: &Connection, f: &FinishArgs<'_>) -> Result<bool, StoreError> {
    let c = f.completion;
    changed_one(
        conn,
        FINISH,
        params![
            f.id,
            c.state.as_str(),
            f.now,
            c.refund_id.as_deref(),
            c.correlation_id.as_deref(),
            c.response.code,
            c.response.message.as_str(),
            c.response.payload.as_slice(),
            c.trace_id.as_deref(),
            c.detail.as_str(),
            f.holder,
        ],
    )
}

/// Runs a one-row write; true when it changed the row.
fn changed_one(
    conn: &Connection,
    sql: &str,
    values: impl rusqlite::Params,
) -> Result<bool, StoreError> {
    let mut statement = conn.prepare_cached(sql).map_err(sqlite_error)?;
    Ok(statement.execute(values).map_err(sqlite_error)? == 1)
}

/// PENDING or lease-expired IN_FLIGHT -> IN_FLIGHT held by `holder` until `lease_until`.
pub(super) fn take_over(
    conn: &Connection,
    id: &str,
    holder: &str,
    now: i64,
    lease_until: i64,
    trace_id: Option<&str>,
    otel_trace_id: Option<&str>,
) -> Result<bool, StoreError> {
    changed_one(
        conn,
        TAKE_OVER,
        params![id, lease_until, now, trace_id, holder, otel_trace_id],
    )
}

/// REQUIRES_REVIEW -> the resolution's state (checked by the caller: SUCCEEDED or FAILED).
pub(super) fn resolve_review(
    conn: &Connection,
    id: &str,
    resolution: &Resolution,
    now: i64,
) -> Result<bool, StoreError> {
    let values = resolution_values(id, resolution, now);
    changed_one(conn, RESOLVE_REVIEW, params_from_iter(values.iter()))
}

/// Extends the lease of an IN_FLIGHT operation held by `holder`; no event (not a state
/// change).
pub(super) fn renew_lease(
    conn: &Connection,
    id: &str,
    holder: &str,
    lease_until: i64,
) -> Result<bool, StoreError> {
    changed_one(conn, RENEW_LEASE, params![id, lease_until, holder])
}

/// IN_FLIGHT held by `holder` -> PENDING.
pub(super) fn mark_pending(
    conn: &Connection,
    id: &str,
    holder: &str,
    correlation_id: Option<&str>,
    detail: &str,
    answer_context: Option<&str>,
    now: i64,
) -> Result<bool, StoreError> {
    changed_one(
        conn,
        MARK_PENDING,
        params![id, now, correlation_id, detail, holder, answer_context],
    )
}

/// Deletes an IN_FLIGHT operation held by `holder`, keeping an event with no state after.
pub(super) fn abandon(
    conn: &Connection,
    id: &str,
    holder: &str,
    detail: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let events = conn
        .prepare_cached(ABANDON_EVENT.as_str())
        .and_then(|mut s| s.execute(params![id, detail, now, holder]))
        .map_err(sqlite_error)?;
    let changed = conn
        .prepare_cached(ABANDON)
        .and_then(|mut s| s.execute(params![id, holder]))
        .map_err(sqlite_error)?;
    // Both under the same condition, under the writer's lock: they agree, or the batch is
    // rolled back rather than leave a change without its event.
    if events == changed {
        Ok(changed == 1)
    } else {
        Err(StoreError::Corrupt(format!(
            "operation {id}: {events} events for {changed} deleted rows"
        )))
    }
}

/// Records `event` unless its event id is known, and then appends an audit event to the
/// operation it names, if that exists; true when recorded. `operation_id` and `received_at`
/// are the event's, as stored.
pub(super) fn record_webhook(
    conn: &Connection,
    event: &WebhookEvent,
    operation_id: Option<&str>,
    received_at: i64,
    detail: &str,
) -> Result<bool, StoreError> {
    let values = webhook_values(event, operation_id, received_at);
    if !changed_one(conn, RECORD_WEBHOOK, params_from_iter(values.iter()))? {
        return Ok(false);
    }
    if let Some(id) = operation_id {
        conn.prepare_cached(WEBHOOK_EVENT.as_str())
            .and_then(|mut s| {
                s.execute(params![
                    id,
                    event.refund_id.as_deref(),
                    event.correlation_id.as_deref(),
                    detail,
                    received_at
                ])
            })
            .map_err(sqlite_error)?;
    }
    Ok(true)
}

/// Adds `amount` to the total of (`caller`, `currency`, `day`) if it stays at most `cap`
/// (see [`RESERVE_DAILY`]); true when added. `day` is stored text (`crate::row::day_text`);
/// `amount` and `cap` are at least zero (the caller checks).
pub(super) fn reserve_daily(
    conn: &Connection,
    caller: &str,
    currency: &str,
    day: &str,
    amount: i64,
    cap: i64,
) -> Result<bool, StoreError> {
    let total: Option<i64> = conn
        .prepare_cached(RESERVE_DAILY)
        .and_then(|mut s| {
            s.query_row(params![caller, currency, day, amount, cap], |row| {
                row.get(0)
            })
            .optional()
        })
        .map_err(sqlite_error)?;
    Ok(total.is_some())
}

/// Gives `amount` back to the total of (`caller`, `currency`, `day`), down to zero at most;
/// true when there was a total.
pub(super) fn release_daily(
    conn: &Connection,
    caller: &str,
    currency: &str,
    day: &str,
    amount: i64,
) -> Result<bool, StoreError> {
    changed_one(conn, RELEASE_DAILY, params![caller, currency, day, amount])
}

/// The total of (`caller`, `currency`, `day`), 0 when nothing was reserved; read on the
/// readers' pool, which sees every committed reservation.
pub(super) async fn daily_total(
    readers: &SqlitePool,
    caller: &str,
    currency: &str,
    day: &str,
) -> Result<i64, StoreError> {
    let total = sqlx::query_scalar::<_, i64>(DAILY_TOTAL)
        .bind(caller)
        .bind(currency)
        .bind(day)
        .fetch_optional(readers)
        .await
        .map_err(db_error)?;
    Ok(total.unwrap_or(0))
}

/// Links `reference` unless it is linked already; otherwise reads the link that stands, in
/// the same transaction: the writer holds the write lock, so nothing comes between the insert
/// that found the reference taken and the read. Among links of one reference, in this batch or
/// any other, the first the writer runs is the one linked. `linked_at` is the reference's, as
/// stored.
pub(super) fn link_reference(
    conn: &Connection,
    reference: &OrderReference,
    linked_at: i64,
) -> Result<LinkOutcome, StoreError> {
    let values = reference_values(reference, linked_at);
    if changed_one(conn, LINK_REFERENCE, params_from_iter(values.iter()))? {
        return Ok(LinkOutcome::Linked);
    }
    let stored = conn
        .prepare_cached(SELECT_REFERENCE.as_str())
        .and_then(|mut s| {
            s.query_row(
                params![
                    reference.klarna_account.as_str(),
                    reference.kind.as_str(),
                    reference.reference.as_str()
                ],
                ReferenceRow::from_sqlite,
            )
            .optional()
        })
        .map_err(sqlite_error)?
        .map(ReferenceRow::into_reference)
        .transpose()?;
    link_found(reference, stored)
}

/// Drops up to `limit` answer bodies of operations in `state` last changed in `from..before`,
/// oldest first (see [`PURGE_CHUNK`]); returns the `updated_at` of each.
pub(super) fn purge_chunk(
    conn: &Connection,
    state: &str,
    from: i64,
    before: i64,
    limit: u32,
) -> Result<Vec<i64>, StoreError> {
    conn.prepare_cached(PURGE_CHUNK)
        .and_then(|mut s| {
            s.query_map(params![state, from, before, limit], |row| row.get(0))?
                .collect()
        })
        .map_err(sqlite_error)
}

/// Marks every IN_FLIGHT operation PENDING (see [`ORPHANED`]); returns how many.
pub(super) fn take_over_orphans(conn: &Connection, now: i64) -> Result<u64, StoreError> {
    let taken = conn.execute(ORPHANED, params![now]).map_err(sqlite_error)?;
    Ok(taken as u64)
}

/// The writer connection's `journal_mode` and `synchronous` (0 OFF, 1 NORMAL, 2 FULL).
pub(super) fn durability(conn: &Connection) -> Result<(String, i64), StoreError> {
    let journal_mode: String = conn
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .map_err(sqlite_error)?;
    let synchronous: i64 = conn
        .query_row("PRAGMA synchronous", [], |row| row.get(0))
        .map_err(sqlite_error)?;
    Ok((journal_mode, synchronous))
}

/// The operation `id`, read on the writer's connection (inside its transaction).
pub(super) fn get(conn: &Connection, id: &str) -> Result<Option<Operation>, StoreError> {
    conn.prepare_cached(SELECT_OPERATION.as_str())
        .and_then(|mut s| {
            s.query_row(params![id], OperationRow::from_sqlite)
                .optional()
        })
        .map_err(sqlite_error)?
        .map(OperationRow::into_operation)
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::OPERATION_COLUMNS;

    /// An in-memory database at the current schema: every migration, in order.
    fn migrated() -> Connection {
        let conn = Connection::open_in_memory().unwrap_or_else(|e| panic!("{e}"));
        run_migrations(&conn, |_| true);
        conn
    }

    /// Runs, in order, the migrations whose version `wanted` accepts.
    fn run_migrations(conn: &Connection, wanted: impl Fn(u32) -> bool) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|entry| entry.unwrap_or_else(|e| panic!("{e}")).path())
            .collect();
        files.sort();
        for file in files {
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            let version: u32 = name[..4].parse().unwrap_or_else(|e| panic!("{name}: {e}"));
            if !wanted(version) {
                continue;
            }
            let sql = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{e}"));
            conn.execute_batch(&sql)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
    }

    /// The writes of every refund build no temporary b-tree (each costs a fresh, zeroed page
    /// and its page cache, on every run of the statement): not for `RETURNING`, a join, an
    /// `INSERT … SELECT` into a table with triggers, or a CHECK's IN list (see migration 0009).
    #[test]
    fn the_hot_writes_build_no_temporary_btree() {
        let conn = migrated();
        for (name, sql) in [
            ("claim", CLAIM),
            ("finish", FINISH),
            ("take over", TAKE_OVER),
            ("mark pending", MARK_PENDING),
            ("resolve review", RESOLVE_REVIEW),
        ] {
            let mut explain = conn
                .prepare(&format!("EXPLAIN {sql}"))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let nulls = vec![Value::Null; explain.parameter_count()];
            let opcodes: Vec<String> = explain
                .query_map(params_from_iter(nulls), |row| row.get::<_, String>(1))
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .map(|op| op.unwrap_or_else(|e| panic!("{name}: {e}")))
                .collect();
            assert!(
                opcodes.iter().any(|op| op == "Program"),
                "{name}: no trigger ran"
            );
            assert!(
                !opcodes.iter().any(|op| op == "OpenEphemeral"),
                "{name} builds a temporary b-tree: {opcodes:?}"
            );
        }
    }

    /// How SQLite plans `sql` (EXPLAIN QUERY PLAN), one step per line, every parameter NULL.
    fn query_plan(conn: &Connection, sql: &str) -> Vec<String> {
        let mut explain = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let nulls = vec![Value::Null; explain.parameter_count()];
        explain
            .query_map(params_from_iter(nulls), |row| row.get::<_, String>(3))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .map(|step| step.unwrap_or_else(|e| panic!("{sql}: {e}")))
            .collect()
    }

    /// ListOperations by order reads the operations on that order through the resource
    /// index, not by scanning: no index of order ids alone exists since migration 0010.
    #[test]
    fn listing_by_order_reads_through_the_resource_index() {
        let conn = migrated();
        let filter = refund_gateway_domain::OperationFilter {
            order_id: Some("an-order".to_owned()),
            ..Default::default()
        };
        let query = crate::read::list_query::<sqlx::Sqlite>(&filter, None, 51);
        let plan = query_plan(&conn, query.sql().as_str());
        assert!(
            plan.iter()
                .any(|step| step.contains("USING INDEX operations_by_resource")),
            "{plan:?}"
        );
        assert!(
            !plan
                .iter()
                .any(|step| step == "SCAN operations" || step.contains("operations_by_created")),
            "{plan:?}"
        );
    }

    /// Claims `id` at `at` (µs) for holder `h`, through the schema's claim trigger.
    fn claim_at(conn: &Connection, id: &str, at: i64) {
        conn.execute(
            "INSERT INTO operations (operation_id, caller, rpc, idempotency_key, fingerprint, \
             klarna_account, order_id, klarna_request, state, lease_holder, created_at, \
             updated_at) \
             VALUES (?1, 'c', 'RefundOrder', ?1, 'f', 'eu', 'o', '{}', 'IN_FLIGHT', 'h', ?2, ?2)",
            params![id, at],
        )
        .unwrap_or_else(|e| panic!("{id}: {e}"));
    }

    /// Finishes `id` at `at` (µs), through the schema's transition trigger.
    fn finish_at(conn: &Connection, id: &str, at: i64) {
        conn.execute(
            "UPDATE operations SET state = 'SUCCEEDED', updated_at = ?2, event_detail = 'done' \
             WHERE operation_id = ?1",
            params![id, at],
        )
        .unwrap_or_else(|e| panic!("{id}: {e}"));
    }

    /// Every event as (operation id, at, claimed_at), in order.
    fn claims_of_events(conn: &Connection) -> Vec<(String, i64, Option<i64>)> {
        let mut select = conn
            .prepare("SELECT operation_id, at, claimed_at FROM audit_events ORDER BY id")
            .unwrap_or_else(|e| panic!("{e}"));
        select
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|event| event.unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    /// Migration 0012 gives each stored event the instant of the claim it belongs to: the
    /// latest claim of its operation at or before it, so a claim given back keeps its events
    /// apart from the key's next claim.
    #[test]
    fn migration_0012_gives_each_stored_event_its_claim() {
        let conn = Connection::open_in_memory().unwrap_or_else(|e| panic!("{e}"));
        run_migrations(&conn, |version| version < 12);
        claim_at(&conn, "op", 1);
        // Given back as releases before 0012 did: an event with no state after, the row gone.
        conn.execute_batch(
            "INSERT INTO audit_events (operation_id, caller, rpc, idempotency_key, \
             klarna_account, order_id, state_before, state_after, detail, at) \
             SELECT operation_id, caller, rpc, idempotency_key, klarna_account, order_id, \
             state, NULL, 'given back', 2 FROM operations WHERE operation_id = 'op'; \
             DELETE FROM operations WHERE operation_id = 'op';",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        claim_at(&conn, "op", 3);
        finish_at(&conn, "op", 4);
        claim_at(&conn, "other", 5);

        run_migrations(&conn, |version| version >= 12);
        let owned = |id: &str, at, claim| (id.to_owned(), at, Some(claim));
        assert_eq!(
            claims_of_events(&conn),
            vec![
                owned("op", 1, 1),
                owned("op", 2, 1),
                owned("op", 3, 3),
                owned("op", 4, 3),
                owned("other", 5, 5),
            ]
        );
    }

    /// Every event appended since migration 0012 carries its claim's instant: the claim's and
    /// a transition's (triggers), a give-back's and a webhook's (statements of this module).
    #[test]
    fn every_new_event_carries_its_claim() {
        let conn = migrated();
        claim_at(&conn, "op", 1);
        conn.execute(&ABANDON_EVENT, params!["op", "given back", 2, "h"])
            .unwrap_or_else(|e| panic!("{e}"));
        conn.execute(ABANDON, params!["op", "h"])
            .unwrap_or_else(|e| panic!("{e}"));
        claim_at(&conn, "op", 3);
        finish_at(&conn, "op", 4);
        conn.execute(
            &WEBHOOK_EVENT,
            params!["op", "refund", "corr", "webhook", 5],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let owned = |at, claim| ("op".to_owned(), at, Some(claim));
        assert_eq!(
            claims_of_events(&conn),
            vec![
                owned(1, 1),
                owned(2, 1),
                owned(3, 3),
                owned(4, 3),
                owned(5, 3)
            ]
        );
    }

    /// The events of a page of operations are read through the indexes of migration 0012,
    /// never by scanning `audit_events`.
    #[test]
    fn reading_events_goes_through_the_claim_indexes() {
        let conn = migrated();
        claim_at(&conn, "a", 1);
        claim_at(&conn, "b", 2);
        let mut select = conn
            .prepare(&format!("SELECT {OPERATION_COLUMNS} FROM operations"))
            .unwrap_or_else(|e| panic!("{e}"));
        let rows: Vec<OperationRow> = select
            .query_map([], OperationRow::from_sqlite)
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|row| row.unwrap_or_else(|e| panic!("{e}")))
            .collect();
        assert_eq!(rows.len(), 2);
        let query = crate::read::events_query::<sqlx::Sqlite>(&rows);
        let plan = query_plan(&conn, query.sql().as_str());
        let searches = |index: &str| {
            plan.iter()
                .filter(|step| step.starts_with("SEARCH") && step.contains(index))
                .count()
        };
        // The claims, and the events appended without one (their claimed_at is NULL).
        assert_eq!(searches("INDEX audit_events_by_claim "), 2, "{plan:?}");
        assert_eq!(searches("INDEX audit_events_given_back "), 1, "{plan:?}");
        assert!(
            !plan.iter().any(|step| step.contains("SCAN audit_events")),
            "{plan:?}"
        );
    }

    /// The rewritten state CHECK still refuses a state that is not one of the five.
    #[test]
    fn the_state_check_still_refuses_unknown_states() {
        let conn = migrated();
        let insert = |state: &str| {
            conn.execute(
                "INSERT INTO operations (operation_id, caller, rpc, idempotency_key, fingerprint, \
                 klarna_account, order_id, klarna_request, state, created_at, updated_at) \
                 VALUES (?1, 'c', 'RefundOrder', ?1, 'f', 'eu', 'o', '{}', ?2, 1, 1)",
                params![format!("op-{state}"), state],
            )
        };
        for state in [
            "IN_FLIGHT",
            "PENDING",
            "SUCCEEDED",
            "FAILED",
            "REQUIRES_REVIEW",
        ] {
            insert(state).unwrap_or_else(|e| panic!("{state}: {e}"));
        }
        for state in ["DONE", "in_flight", ""] {
            let error = insert(state)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                error.contains("CHECK constraint failed"),
                "{state}: {error:?}"
            );
        }
    }
}
