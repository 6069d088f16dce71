//! The SQL statements of the PostgreSQL store's writes, and the functions that run them (the
//! reads are shared with SQLite: `crate::read`).
//!
//! Each write is one statement, so it is atomic and durable on its own (autocommit), with no
//! transaction left open between round trips. A transition locks the row in a CTE
//! (`SELECT … FOR UPDATE` under the from-state condition), updates it, and appends its audit
//! event from the updated row in the same statement: a concurrent transition waits for the
//! lock, re-checks the condition on the new row version, and finds nothing to do — so the
//! event exists exactly when the row changed. The statement's row count is the number of
//! events appended.

use std::sync::LazyLock;

use refund_gateway_domain::{Claim, Completion, LeaseHolder, NewOperation, StoreError};
use sqlx::{PgPool, Postgres};

use crate::read;
use crate::row::{
    bind_claim, claimed_operation, db_error, holder_text, id_text, insert_event_from,
};

/// Claims before giving up when the row keeps vanishing between insert and read (each
/// vanishing needs a concurrent abandon).
const CLAIM_ATTEMPTS: usize = 8;

// The values of `bind_claim`: $1 … $13 the operation, $14 lease holder, $15 lease end,
// $16 now.
static CLAIM: LazyLock<String> = LazyLock::new(|| {
    let insert = "WITH inserted AS ( \
       INSERT INTO operations (operation_id, caller, rpc, idempotency_key, fingerprint, \
         klarna_account, order_id, capture_id, amount, currency, reference, klarna_request, \
         trace_id, state, lease_holder, lease_expires_at, created_at, updated_at) \
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'IN_FLIGHT', $14, $15, \
         $16, $16) \
       ON CONFLICT (operation_id) DO NOTHING \
       RETURNING * ) ";
    insert.to_owned()
        + &insert_event_from("inserted", "trace_id, NULL, 'IN_FLIGHT', 'claimed', $16")
});

/// A transition as one statement: lock the row of `$1` if `condition` holds, apply `set` to it,
/// and append its event with `trace`, `detail` and `at` (SQL expressions over the new row and
/// the parameters).
fn transition(condition: &str, set: &str, trace: &str, detail: &str, at: &str) -> String {
    let change = format!(
        "WITH old AS ( \
           SELECT operation_id, state FROM operations \
           WHERE operation_id = $1 AND ({condition}) FOR UPDATE ), \
         changed AS ( \
           UPDATE operations o SET {set} \
           FROM old WHERE o.operation_id = old.operation_id \
           RETURNING o.*, old.state AS state_before ) "
    );
    change
        + &insert_event_from(
            "changed",
            &format!("{trace}, state_before, state, {detail}, {at}"),
        )
}

// $1 id, $2 lease end, $3 now, $4 trace id, $5 new lease holder.
static TAKE_OVER: LazyLock<String> = LazyLock::new(|| {
    transition(
        "state = 'PENDING' OR (state = 'IN_FLIGHT' \
           AND (lease_expires_at IS NULL OR lease_expires_at <= $3))",
        "state = 'IN_FLIGHT', lease_expires_at = $2, lease_holder = $5, updated_at = $3",
        "COALESCE($4, trace_id)",
        "'taken over'",
        "$3",
    )
});

// $1 id, $2 lease end, $3 lease holder.
const RENEW_LEASE: &str = "UPDATE operations SET lease_expires_at = $2 \
     WHERE operation_id = $1 AND state = 'IN_FLIGHT' AND lease_holder = $3";

// $1 id, $2 state, $3 now, $4 refund id, $5 correlation id, $6 code, $7 message, $8 payload,
// $9 trace id, $10 detail, $11 lease holder.
static FINISH: LazyLock<String> = LazyLock::new(|| {
    transition(
        "state = 'IN_FLIGHT' AND lease_holder = $11",
        "state = $2, lease_expires_at = NULL, updated_at = $3, \
         refund_id = COALESCE($4, o.refund_id), correlation_id = COALESCE($5, o.correlation_id), \
         response_code = $6, response_message = $7, response_payload = $8",
        "COALESCE($9, trace_id)",
        "$10",
        "$3",
    )
});

// $1 id, $2 now, $3 correlation id, $4 detail, $5 lease holder.
static MARK_PENDING: LazyLock<String> = LazyLock::new(|| {
    transition(
        "state = 'IN_FLIGHT' AND lease_holder = $5",
        "state = 'PENDING', lease_expires_at = NULL, updated_at = $2, \
         correlation_id = COALESCE($3, o.correlation_id)",
        "trace_id",
        "$4",
        "$2",
    )
});

// $1 id, $2 now, $3 detail, $4 lease holder. DELETE re-checks its condition after waiting for
// a row lock.
static ABANDON: LazyLock<String> = LazyLock::new(|| {
    let delete = "WITH deleted AS ( \
       DELETE FROM operations \
       WHERE operation_id = $1 AND state = 'IN_FLIGHT' AND lease_holder = $4 \
       RETURNING * ) ";
    delete.to_owned() + &insert_event_from("deleted", "trace_id, state, NULL, $3, $2")
});

// Only the answer body goes: the row (scope, fingerprint, final state, Klarna ids, the call)
// stays forever, so a late retry is a replay and never a second execution. REQUIRES_REVIEW
// and unresolved operations keep everything.
const PURGE: &str = "UPDATE operations SET response_payload = NULL \
     WHERE state IN ('SUCCEEDED', 'FAILED') AND updated_at < $1 \
     AND response_payload IS NOT NULL";

/// Session advisory lock of one order; waits. Held until unlocked or the session ends.
pub(super) const ADVISORY_LOCK: &str = "SELECT pg_advisory_lock($1)";
/// Releases it; true when this session held it.
pub(super) const ADVISORY_UNLOCK: &str = "SELECT pg_advisory_unlock($1)";

/// Inserts `op` as IN_FLIGHT held by `holder` with its "claimed" event, or reads the stored
/// one.
pub(super) async fn claim(
    pool: &PgPool,
    op: &NewOperation,
    holder: LeaseHolder,
    now: i64,
    lease_until: i64,
) -> Result<Claim, StoreError> {
    let id = id_text(op.operation_id);
    let holder_id = holder_text(holder);
    for _ in 0..CLAIM_ATTEMPTS {
        let query = bind_claim(
            sqlx::query(CLAIM.as_str()),
            &id,
            op,
            &holder_id,
            lease_until,
            now,
        );
        let inserted = query.execute(pool).await.map_err(db_error)?.rows_affected();
        if inserted == 1 {
            return Ok(Claim::New(claimed_operation(
                op.clone(),
                holder,
                now,
                lease_until,
            )?));
        }
        // ON CONFLICT waited for the other insert to commit; its row is visible now, unless
        // it was abandoned meanwhile — then the key is free again: try to insert again.
        if let Some(existing) = read::get(pool, &id).await? {
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

/// PENDING or lease-expired IN_FLIGHT -> IN_FLIGHT held by `holder` until `lease_until`.
pub(super) async fn take_over(
    pool: &PgPool,
    id: &str,
    holder: &str,
    now: i64,
    lease_until: i64,
    trace_id: Option<&str>,
) -> Result<bool, StoreError> {
    let query = sqlx::query(TAKE_OVER.as_str())
        .bind(id)
        .bind(lease_until)
        .bind(now)
        .bind(trace_id)
        .bind(holder);
    changed_one(query, pool).await
}

/// Extends the lease of an IN_FLIGHT operation held by `holder`; no event (not a state
/// change).
pub(super) async fn renew_lease(
    pool: &PgPool,
    id: &str,
    holder: &str,
    lease_until: i64,
) -> Result<bool, StoreError> {
    let query = sqlx::query(RENEW_LEASE)
        .bind(id)
        .bind(lease_until)
        .bind(holder);
    changed_one(query, pool).await
}

/// IN_FLIGHT held by `holder` -> the completion's final state.
pub(super) async fn finish(
    pool: &PgPool,
    id: &str,
    holder: &str,
    completion: &Completion,
    now: i64,
) -> Result<bool, StoreError> {
    let query = sqlx::query(FINISH.as_str())
        .bind(id)
        .bind(completion.state.as_str())
        .bind(now)
        .bind(&completion.refund_id)
        .bind(&completion.correlation_id)
        .bind(completion.response.code)
        .bind(&completion.response.message)
        .bind(&completion.response.payload)
        .bind(&completion.trace_id)
        .bind(&completion.detail)
        .bind(holder);
    changed_one(query, pool).await
}

/// IN_FLIGHT held by `holder` -> PENDING.
pub(super) async fn mark_pending(
    pool: &PgPool,
    id: &str,
    holder: &str,
    correlation_id: Option<&str>,
    detail: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let query = sqlx::query(MARK_PENDING.as_str())
        .bind(id)
        .bind(now)
        .bind(correlation_id)
        .bind(detail)
        .bind(holder);
    changed_one(query, pool).await
}

/// Deletes an IN_FLIGHT operation held by `holder`, keeping an event with no state after.
pub(super) async fn abandon(
    pool: &PgPool,
    id: &str,
    holder: &str,
    detail: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let query = sqlx::query(ABANDON.as_str())
        .bind(id)
        .bind(now)
        .bind(detail)
        .bind(holder);
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
