//! Every SQL statement of the PostgreSQL store, and the functions that run them.
//!
//! Each write is one statement, so it is atomic and durable on its own (autocommit), with no
//! transaction left open between round trips. A transition locks the row in a CTE
//! (`SELECT … FOR UPDATE` under the from-state condition), updates it, and appends its audit
//! event from the updated row in the same statement: a concurrent transition waits for the
//! lock, re-checks the condition on the new row version, and finds nothing to do — so the
//! event exists exactly when the row changed. The statement's row count is the number of
//! events appended.

use refund_gateway_domain::{
    Claim, Completion, NewOperation, Operation, OperationFilter, StoreError,
};
use sqlx::{PgPool, Postgres, QueryBuilder};

use crate::page::Cursor;
use crate::row::{
    EventRow, OPERATION_COLUMNS, OperationRow, claimed_operation, db_error, id_text, micros,
};

/// Claims before giving up when the row keeps vanishing between insert and read (each
/// vanishing needs a concurrent abandon).
const CLAIM_ATTEMPTS: usize = 8;

const CLAIM: &str = "WITH inserted AS ( \
       INSERT INTO operations (operation_id, caller, rpc, idempotency_key, fingerprint, \
         klarna_account, order_id, capture_id, amount, currency, reference, klarna_request, \
         trace_id, state, lease_expires_at, created_at, updated_at) \
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'IN_FLIGHT', $14, $15, $15) \
       ON CONFLICT (operation_id) DO NOTHING \
       RETURNING * ) \
     INSERT INTO audit_events (operation_id, caller, rpc, idempotency_key, klarna_account, \
       order_id, capture_id, amount, currency, refund_id, correlation_id, trace_id, \
       state_before, state_after, detail, at) \
     SELECT operation_id, caller, rpc, idempotency_key, klarna_account, order_id, capture_id, \
       amount, currency, refund_id, correlation_id, trace_id, NULL, 'IN_FLIGHT', 'claimed', $15 \
     FROM inserted";

const SELECT_OPERATION: &str = "SELECT operation_id, caller, rpc, idempotency_key, \
     fingerprint, klarna_account, order_id, capture_id, amount, currency, reference, \
     klarna_request, trace_id, state, lease_expires_at, created_at, updated_at, refund_id, \
     correlation_id, response_code, response_message, response_payload \
     FROM operations WHERE operation_id = $1";

// $1 id, $2 lease end, $3 now, $4 trace id.
const TAKE_OVER: &str = "WITH old AS ( \
       SELECT operation_id, state FROM operations WHERE operation_id = $1 \
         AND (state = 'PENDING' OR (state = 'IN_FLIGHT' \
              AND (lease_expires_at IS NULL OR lease_expires_at <= $3))) \
       FOR UPDATE ), \
     changed AS ( \
       UPDATE operations o SET state = 'IN_FLIGHT', lease_expires_at = $2, updated_at = $3 \
       FROM old WHERE o.operation_id = old.operation_id \
       RETURNING o.*, old.state AS state_before ) \
     INSERT INTO audit_events (operation_id, caller, rpc, idempotency_key, klarna_account, \
       order_id, capture_id, amount, currency, refund_id, correlation_id, trace_id, \
       state_before, state_after, detail, at) \
     SELECT operation_id, caller, rpc, idempotency_key, klarna_account, order_id, capture_id, \
       amount, currency, refund_id, correlation_id, COALESCE($4, trace_id), state_before, \
       state, 'taken over', $3 \
     FROM changed";

const RENEW_LEASE: &str = "UPDATE operations SET lease_expires_at = $2 \
     WHERE operation_id = $1 AND state = 'IN_FLIGHT'";

// $1 id, $2 state, $3 now, $4 refund id, $5 correlation id, $6 code, $7 message, $8 payload,
// $9 trace id, $10 detail.
const FINISH: &str = "WITH old AS ( \
       SELECT operation_id, state FROM operations WHERE operation_id = $1 \
         AND state IN ('IN_FLIGHT', 'PENDING') \
       FOR UPDATE ), \
     changed AS ( \
       UPDATE operations o SET state = $2, lease_expires_at = NULL, updated_at = $3, \
         refund_id = COALESCE($4, o.refund_id), \
         correlation_id = COALESCE($5, o.correlation_id), \
         response_code = $6, response_message = $7, response_payload = $8 \
       FROM old WHERE o.operation_id = old.operation_id \
       RETURNING o.*, old.state AS state_before ) \
     INSERT INTO audit_events (operation_id, caller, rpc, idempotency_key, klarna_account, \
       order_id, capture_id, amount, currency, refund_id, correlation_id, trace_id, \
       state_before, state_after, detail, at) \
     SELECT operation_id, caller, rpc, idempotency_key, klarna_account, order_id, capture_id, \
       amount, currency, refund_id, correlation_id, COALESCE($9, trace_id), state_before, \
       state, $10, $3 \
     FROM changed";

// $1 id, $2 now, $3 correlation id, $4 detail.
const MARK_PENDING: &str = "WITH old AS ( \
       SELECT operation_id, state FROM operations WHERE operation_id = $1 \
         AND state = 'IN_FLIGHT' \
       FOR UPDATE ), \
     changed AS ( \
       UPDATE operations o SET state = 'PENDING', lease_expires_at = NULL, updated_at = $2, \
         correlation_id = COALESCE($3, o.correlation_id) \
       FROM old WHERE o.operation_id = old.operation_id \
       RETURNING o.*, old.state AS state_before ) \
     INSERT INTO audit_events (operation_id, caller, rpc, idempotency_key, klarna_account, \
       order_id, capture_id, amount, currency, refund_id, correlation_id, trace_id, \
       state_before, state_after, detail, at) \
     SELECT operation_id, caller, rpc, idempotency_key, klarna_account, order_id, capture_id, \
       amount, currency, refund_id, correlation_id, trace_id, state_before, state, $4, $2 \
     FROM changed";

// $1 id, $2 now, $3 detail. DELETE re-checks its condition after waiting for a row lock.
const ABANDON: &str = "WITH deleted AS ( \
       DELETE FROM operations WHERE operation_id = $1 AND state = 'IN_FLIGHT' \
       RETURNING * ) \
     INSERT INTO audit_events (operation_id, caller, rpc, idempotency_key, klarna_account, \
       order_id, capture_id, amount, currency, refund_id, correlation_id, trace_id, \
       state_before, state_after, detail, at) \
     SELECT operation_id, caller, rpc, idempotency_key, klarna_account, order_id, capture_id, \
       amount, currency, refund_id, correlation_id, trace_id, state, NULL, $3, $2 \
     FROM deleted";

const PURGE: &str = "DELETE FROM operations \
     WHERE state IN ('SUCCEEDED', 'FAILED', 'REQUIRES_REVIEW') AND updated_at < $1";

const UNRESOLVED: &str = "SELECT operation_id, caller, rpc, idempotency_key, \
     fingerprint, klarna_account, order_id, capture_id, amount, currency, reference, \
     klarna_request, trace_id, state, lease_expires_at, created_at, updated_at, refund_id, \
     correlation_id, response_code, response_message, response_payload \
     FROM operations WHERE state = 'PENDING' OR (state = 'IN_FLIGHT' \
          AND (lease_expires_at IS NULL OR lease_expires_at <= $1)) \
     ORDER BY created_at, operation_id LIMIT $2";

const EVENTS_OF: &str = "SELECT operation_id, caller, rpc, idempotency_key, state_before, \
     state_after, refund_id, correlation_id, trace_id, detail, at \
     FROM audit_events WHERE operation_id = ANY($1) ORDER BY operation_id, id";

/// Session advisory lock of one order; waits. Held until unlocked or the session ends.
pub(super) const ADVISORY_LOCK: &str = "SELECT pg_advisory_lock($1)";
/// Releases it; true when this session held it.
pub(super) const ADVISORY_UNLOCK: &str = "SELECT pg_advisory_unlock($1)";

/// Inserts `op` as IN_FLIGHT with its "claimed" event, or reads the stored one.
pub(super) async fn claim(
    pool: &PgPool,
    op: &NewOperation,
    now: i64,
    lease_until: i64,
) -> Result<Claim, StoreError> {
    let id = id_text(op.operation_id);
    for _ in 0..CLAIM_ATTEMPTS {
        let inserted = sqlx::query(CLAIM)
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
            .execute(pool)
            .await
            .map_err(db_error)?
            .rows_affected();
        if inserted == 1 {
            return Ok(Claim::New(claimed_operation(op.clone(), now, lease_until)?));
        }
        // ON CONFLICT waited for the other insert to commit; its row is visible now, unless
        // it was abandoned meanwhile — then the key is free again: try to insert again.
        if let Some(existing) = get(pool, &id).await? {
            return Ok(Claim::Existing(existing));
        }
    }
    Err(StoreError::Unavailable(format!(
        "operation {id} kept being abandoned while being claimed"
    )))
}

/// Runs a write; true when it affected exactly one row (for transitions: appended their event).
async fn changed_one(
    query: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
    pool: &PgPool,
) -> Result<bool, StoreError> {
    Ok(query.execute(pool).await.map_err(db_error)?.rows_affected() == 1)
}

/// PENDING or lease-expired IN_FLIGHT -> IN_FLIGHT until `lease_until`.
pub(super) async fn take_over(
    pool: &PgPool,
    id: &str,
    now: i64,
    lease_until: i64,
    trace_id: Option<&str>,
) -> Result<bool, StoreError> {
    let query = sqlx::query(TAKE_OVER)
        .bind(id)
        .bind(lease_until)
        .bind(now)
        .bind(trace_id);
    changed_one(query, pool).await
}

/// Extends the lease of an IN_FLIGHT operation; no event (not a state change).
pub(super) async fn renew_lease(
    pool: &PgPool,
    id: &str,
    lease_until: i64,
) -> Result<bool, StoreError> {
    let query = sqlx::query(RENEW_LEASE).bind(id).bind(lease_until);
    changed_one(query, pool).await
}

/// IN_FLIGHT or PENDING -> the completion's final state.
pub(super) async fn finish(
    pool: &PgPool,
    id: &str,
    completion: &Completion,
    now: i64,
) -> Result<bool, StoreError> {
    let query = sqlx::query(FINISH)
        .bind(id)
        .bind(completion.state.as_str())
        .bind(now)
        .bind(&completion.refund_id)
        .bind(&completion.correlation_id)
        .bind(completion.response.code)
        .bind(&completion.response.message)
        .bind(&completion.response.payload)
        .bind(&completion.trace_id)
        .bind(&completion.detail);
    changed_one(query, pool).await
}

/// IN_FLIGHT -> PENDING.
pub(super) async fn mark_pending(
    pool: &PgPool,
    id: &str,
    correlation_id: Option<&str>,
    detail: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let query = sqlx::query(MARK_PENDING)
        .bind(id)
        .bind(now)
        .bind(correlation_id)
        .bind(detail);
    changed_one(query, pool).await
}

/// Deletes an IN_FLIGHT operation, keeping an event with no state after.
pub(super) async fn abandon(
    pool: &PgPool,
    id: &str,
    detail: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let query = sqlx::query(ABANDON).bind(id).bind(now).bind(detail);
    changed_one(query, pool).await
}

/// Deletes final operations changed before `before`.
pub(super) async fn purge(pool: &PgPool, before: i64) -> Result<u64, StoreError> {
    Ok(sqlx::query(PURGE)
        .bind(before)
        .execute(pool)
        .await
        .map_err(db_error)?
        .rows_affected())
}

/// The operation `id`.
pub(super) async fn get(pool: &PgPool, id: &str) -> Result<Option<Operation>, StoreError> {
    sqlx::query_as::<_, OperationRow>(SELECT_OPERATION)
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(db_error)?
        .map(OperationRow::into_operation)
        .transpose()
}

/// Unresolved operations, oldest created first.
pub(super) async fn unresolved(
    pool: &PgPool,
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
    pool: &PgPool,
    filter: &OperationFilter,
    cursor: Option<&Cursor>,
    limit: u32,
) -> Result<Vec<OperationRow>, StoreError> {
    let mut query: QueryBuilder<Postgres> = QueryBuilder::new(format!(
        "SELECT {OPERATION_COLUMNS} FROM operations WHERE TRUE"
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
        // Row comparison is lexicographic, matching the ORDER BY below, and uses the
        // (created_at, operation_id) index.
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
pub(super) async fn events_of(pool: &PgPool, ids: &[&str]) -> Result<Vec<EventRow>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
    sqlx::query_as::<_, EventRow>(EVENTS_OF)
        .bind(ids)
        .fetch_all(pool)
        .await
        .map_err(db_error)
}
