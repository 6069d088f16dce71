//! Every SQL statement of the SQLite store, and the functions that run them. Writes run on the
//! writer's connection inside its batch transaction; reads on a pooled reader.
//!
//! A transition is two statements under the writer's exclusive lock: append the audit event
//! by copying the operation row (`INSERT … SELECT … WHERE <from-state condition>`), then
//! change the row under the same condition. Nothing else writes between them, so the event
//! exists exactly when the row changed. The event's refund id, correlation id and trace id are
//! the new values when given, else the row's.

use refund_gateway_domain::{
    Claim, Completion, NewOperation, Operation, OperationFilter, OperationState, StoreError,
};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};

use crate::page::Cursor;
use crate::row::{
    EVENT_COLUMNS, EventRow, OPERATION_COLUMNS, OperationRow, claimed_operation, db_error, id_text,
    micros,
};

const INSERT_OPERATION: &str = "INSERT INTO operations (operation_id, caller, rpc, \
     idempotency_key, fingerprint, klarna_account, order_id, capture_id, amount, currency, \
     reference, klarna_request, trace_id, state, lease_expires_at, created_at, updated_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 'IN_FLIGHT', ?14, ?15, ?15) \
     ON CONFLICT (operation_id) DO NOTHING";

const CLAIMED_EVENT: &str = "INSERT INTO audit_events (operation_id, caller, rpc, \
     idempotency_key, klarna_account, order_id, capture_id, amount, currency, refund_id, \
     correlation_id, trace_id, state_before, state_after, detail, at) \
     SELECT operation_id, caller, rpc, idempotency_key, klarna_account, order_id, capture_id, \
     amount, currency, refund_id, correlation_id, trace_id, NULL, 'IN_FLIGHT', 'claimed', ?2 \
     FROM operations WHERE operation_id = ?1";

const SELECT_OPERATION: &str = "SELECT operation_id, caller, rpc, idempotency_key, \
     fingerprint, klarna_account, order_id, capture_id, amount, currency, reference, \
     klarna_request, trace_id, state, lease_expires_at, created_at, updated_at, refund_id, \
     correlation_id, response_code, response_message, response_payload \
     FROM operations WHERE operation_id = ?1";

// ?1 id, ?2 refund id, ?3 correlation id, ?4 trace id, ?5 state after, ?6 detail, ?7 at.
const TAKE_OVER_EVENT: &str = "INSERT INTO audit_events (operation_id, caller, rpc, \
     idempotency_key, klarna_account, order_id, capture_id, amount, currency, refund_id, \
     correlation_id, trace_id, state_before, state_after, detail, at) \
     SELECT operation_id, caller, rpc, idempotency_key, klarna_account, order_id, capture_id, \
     amount, currency, COALESCE(?2, refund_id), COALESCE(?3, correlation_id), \
     COALESCE(?4, trace_id), state, ?5, ?6, ?7 FROM operations WHERE operation_id = ?1 \
     AND (state = 'PENDING' OR (state = 'IN_FLIGHT' \
          AND (lease_expires_at IS NULL OR lease_expires_at <= ?7)))";

const TAKE_OVER: &str = "UPDATE operations SET state = 'IN_FLIGHT', lease_expires_at = ?2, \
     updated_at = ?3 WHERE operation_id = ?1 \
     AND (state = 'PENDING' OR (state = 'IN_FLIGHT' \
          AND (lease_expires_at IS NULL OR lease_expires_at <= ?3)))";

const RENEW_LEASE: &str = "UPDATE operations SET lease_expires_at = ?2 \
     WHERE operation_id = ?1 AND state = 'IN_FLIGHT'";

const FINISH_EVENT: &str = "INSERT INTO audit_events (operation_id, caller, rpc, \
     idempotency_key, klarna_account, order_id, capture_id, amount, currency, refund_id, \
     correlation_id, trace_id, state_before, state_after, detail, at) \
     SELECT operation_id, caller, rpc, idempotency_key, klarna_account, order_id, capture_id, \
     amount, currency, COALESCE(?2, refund_id), COALESCE(?3, correlation_id), \
     COALESCE(?4, trace_id), state, ?5, ?6, ?7 FROM operations WHERE operation_id = ?1 \
     AND state IN ('IN_FLIGHT', 'PENDING')";

const FINISH: &str = "UPDATE operations SET state = ?2, lease_expires_at = NULL, \
     updated_at = ?3, refund_id = COALESCE(?4, refund_id), \
     correlation_id = COALESCE(?5, correlation_id), response_code = ?6, \
     response_message = ?7, response_payload = ?8 \
     WHERE operation_id = ?1 AND state IN ('IN_FLIGHT', 'PENDING')";

const FROM_IN_FLIGHT_EVENT: &str = "INSERT INTO audit_events (operation_id, caller, rpc, \
     idempotency_key, klarna_account, order_id, capture_id, amount, currency, refund_id, \
     correlation_id, trace_id, state_before, state_after, detail, at) \
     SELECT operation_id, caller, rpc, idempotency_key, klarna_account, order_id, capture_id, \
     amount, currency, COALESCE(?2, refund_id), COALESCE(?3, correlation_id), \
     COALESCE(?4, trace_id), state, ?5, ?6, ?7 FROM operations WHERE operation_id = ?1 \
     AND state = 'IN_FLIGHT'";

const MARK_PENDING: &str = "UPDATE operations SET state = 'PENDING', lease_expires_at = NULL, \
     updated_at = ?2, correlation_id = COALESCE(?3, correlation_id) \
     WHERE operation_id = ?1 AND state = 'IN_FLIGHT'";

const ABANDON: &str = "DELETE FROM operations WHERE operation_id = ?1 AND state = 'IN_FLIGHT'";

const PURGE: &str = "DELETE FROM operations \
     WHERE state IN ('SUCCEEDED', 'FAILED', 'REQUIRES_REVIEW') AND updated_at < ?1";

const UNRESOLVED: &str = "SELECT operation_id, caller, rpc, idempotency_key, \
     fingerprint, klarna_account, order_id, capture_id, amount, currency, reference, \
     klarna_request, trace_id, state, lease_expires_at, created_at, updated_at, refund_id, \
     correlation_id, response_code, response_message, response_payload \
     FROM operations WHERE state = 'PENDING' OR (state = 'IN_FLIGHT' \
          AND (lease_expires_at IS NULL OR lease_expires_at <= ?1)) \
     ORDER BY created_at, operation_id LIMIT ?2";

/// Inserts `op` as IN_FLIGHT with its "claimed" event, or reads the stored one.
pub(super) async fn claim(
    conn: &mut SqliteConnection,
    op: &NewOperation,
    now: i64,
    lease_until: i64,
) -> Result<Claim, StoreError> {
    let id = id_text(op.operation_id);
    let inserted = sqlx::query(INSERT_OPERATION)
        .bind(&id)
        .bind(op.caller.as_str())
        .bind(op.rpc.as_str())
        .bind(op.idempotency_key.as_str())
        .bind(&op.fingerprint)
        .bind(&op.klarna_account)
        .bind(&op.order_id)
        .bind(&op.capture_id)
        .bind(op.amount)
        .bind(&op.currency)
        .bind(&op.reference)
        .bind(&op.klarna_request)
        .bind(&op.trace_id)
        .bind(lease_until)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?
        .rows_affected();
    if inserted == 1 {
        sqlx::query(CLAIMED_EVENT)
            .bind(&id)
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
        return Ok(Claim::New(claimed_operation(op.clone(), now, lease_until)?));
    }
    match get(&mut *conn, &id).await? {
        Some(existing) => Ok(Claim::Existing(existing)),
        // The writer holds the write lock: a row that conflicted a moment ago is still there.
        None => Err(StoreError::Corrupt(format!(
            "operation {id} conflicted on insert but cannot be read"
        ))),
    }
}

/// PENDING or lease-expired IN_FLIGHT -> IN_FLIGHT until `lease_until`.
pub(super) async fn take_over(
    conn: &mut SqliteConnection,
    id: &str,
    now: i64,
    lease_until: i64,
    trace_id: Option<&str>,
) -> Result<bool, StoreError> {
    let events = sqlx::query(TAKE_OVER_EVENT)
        .bind(id)
        .bind(None::<String>)
        .bind(None::<String>)
        .bind(trace_id)
        .bind(OperationState::InFlight.as_str())
        .bind("taken over")
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?
        .rows_affected();
    let changed = sqlx::query(TAKE_OVER)
        .bind(id)
        .bind(lease_until)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?
        .rows_affected();
    consistent(id, events, changed)
}

/// Extends the lease of an IN_FLIGHT operation; no event (not a state change).
pub(super) async fn renew_lease(
    conn: &mut SqliteConnection,
    id: &str,
    lease_until: i64,
) -> Result<bool, StoreError> {
    let changed = sqlx::query(RENEW_LEASE)
        .bind(id)
        .bind(lease_until)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?
        .rows_affected();
    Ok(changed == 1)
}

/// IN_FLIGHT or PENDING -> the completion's final state.
pub(super) async fn finish(
    conn: &mut SqliteConnection,
    id: &str,
    completion: &Completion,
    now: i64,
) -> Result<bool, StoreError> {
    let events = sqlx::query(FINISH_EVENT)
        .bind(id)
        .bind(&completion.refund_id)
        .bind(&completion.correlation_id)
        .bind(&completion.trace_id)
        .bind(completion.state.as_str())
        .bind(&completion.detail)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?
        .rows_affected();
    let changed = sqlx::query(FINISH)
        .bind(id)
        .bind(completion.state.as_str())
        .bind(now)
        .bind(&completion.refund_id)
        .bind(&completion.correlation_id)
        .bind(completion.response.code)
        .bind(&completion.response.message)
        .bind(&completion.response.payload)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?
        .rows_affected();
    consistent(id, events, changed)
}

/// IN_FLIGHT -> PENDING.
pub(super) async fn mark_pending(
    conn: &mut SqliteConnection,
    id: &str,
    correlation_id: Option<&str>,
    detail: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let events = sqlx::query(FROM_IN_FLIGHT_EVENT)
        .bind(id)
        .bind(None::<String>)
        .bind(correlation_id)
        .bind(None::<String>)
        .bind(OperationState::Pending.as_str())
        .bind(detail)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?
        .rows_affected();
    let changed = sqlx::query(MARK_PENDING)
        .bind(id)
        .bind(now)
        .bind(correlation_id)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?
        .rows_affected();
    consistent(id, events, changed)
}

/// Deletes an IN_FLIGHT operation, keeping an event with no state after.
pub(super) async fn abandon(
    conn: &mut SqliteConnection,
    id: &str,
    detail: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let events = sqlx::query(FROM_IN_FLIGHT_EVENT)
        .bind(id)
        .bind(None::<String>)
        .bind(None::<String>)
        .bind(None::<String>)
        .bind(None::<String>)
        .bind(detail)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?
        .rows_affected();
    let changed = sqlx::query(ABANDON)
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?
        .rows_affected();
    consistent(id, events, changed)
}

/// Deletes final operations changed before `before`.
pub(super) async fn purge(conn: &mut SqliteConnection, before: i64) -> Result<u64, StoreError> {
    Ok(sqlx::query(PURGE)
        .bind(before)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?
        .rows_affected())
}

/// The writer connection's `journal_mode` and `synchronous` (0 OFF, 1 NORMAL, 2 FULL).
pub(super) async fn durability(conn: &mut SqliteConnection) -> Result<(String, i64), StoreError> {
    let journal_mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?;
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok((journal_mode, synchronous))
}

/// The event and the row change happen under the same condition in the same transaction, so
/// they agree; if not, the batch is rolled back rather than leave a change without its event.
fn consistent(id: &str, events: u64, changed: u64) -> Result<bool, StoreError> {
    if events == changed {
        Ok(changed == 1)
    } else {
        Err(StoreError::Corrupt(format!(
            "operation {id}: {events} events for {changed} changed rows"
        )))
    }
}

/// The operation `id`, read on any connection.
pub(super) async fn get(
    conn: &mut SqliteConnection,
    id: &str,
) -> Result<Option<Operation>, StoreError> {
    sqlx::query_as::<_, OperationRow>(SELECT_OPERATION)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?
        .map(OperationRow::into_operation)
        .transpose()
}

/// The operation `id`, read from the pool.
pub(super) async fn get_pooled(
    pool: &SqlitePool,
    id: &str,
) -> Result<Option<Operation>, StoreError> {
    let mut conn = pool.acquire().await.map_err(db_error)?;
    get(&mut conn, id).await
}

/// Unresolved operations, oldest created first.
pub(super) async fn unresolved(
    pool: &SqlitePool,
    now: i64,
    limit: u32,
) -> Result<Vec<Operation>, StoreError> {
    sqlx::query_as::<_, OperationRow>(UNRESOLVED)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .map_err(db_error)?
        .into_iter()
        .map(OperationRow::into_operation)
        .collect()
}

/// Up to `limit` rows matching `filter` after `cursor`, newest first.
pub(super) async fn list(
    pool: &SqlitePool,
    filter: &OperationFilter,
    cursor: Option<&Cursor>,
    limit: u32,
) -> Result<Vec<OperationRow>, StoreError> {
    let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
        "SELECT {OPERATION_COLUMNS} FROM operations WHERE 1 = 1"
    ));
    if let Some(order_id) = &filter.order_id {
        query.push(" AND order_id = ").push_bind(order_id.clone());
    }
    if let Some(caller) = &filter.caller {
        query.push(" AND caller = ").push_bind(caller.clone());
    }
    if let Some(key) = &filter.idempotency_key {
        query.push(" AND idempotency_key = ").push_bind(key.clone());
    }
    if let Some(state) = filter.state {
        query.push(" AND state = ").push_bind(state.as_str());
    }
    if let Some(from) = filter.created_from {
        query.push(" AND created_at >= ").push_bind(micros(from));
    }
    if let Some(to) = filter.created_to {
        query.push(" AND created_at < ").push_bind(micros(to));
    }
    if let Some(cursor) = cursor {
        // Row values compare lexicographically, matching the ORDER BY below.
        query
            .push(" AND (created_at, operation_id) < (")
            .push_bind(cursor.created_at)
            .push(", ")
            .push_bind(cursor.operation_id.clone())
            .push(")");
    }
    query
        .push(" ORDER BY created_at DESC, operation_id DESC LIMIT ")
        .push_bind(i64::from(limit));
    query
        .build_query_as::<OperationRow>()
        .fetch_all(pool)
        .await
        .map_err(db_error)
}

/// The events of `ids`, oldest first within each operation, in one query.
pub(super) async fn events_of(
    pool: &SqlitePool,
    ids: &[&str],
) -> Result<Vec<EventRow>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
        "SELECT {EVENT_COLUMNS} FROM audit_events WHERE operation_id IN ("
    ));
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind((*id).to_owned());
    }
    query.push(") ORDER BY operation_id, id");
    query
        .build_query_as::<EventRow>()
        .fetch_all(pool)
        .await
        .map_err(db_error)
}
