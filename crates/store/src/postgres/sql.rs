//! The SQL statements of the PostgreSQL store and the functions that run them. The reads are
//! shared with SQLite (`crate::read`), except [`unresolved`], which also asks PostgreSQL which
//! replicas are alive.
//!
//! Each write is one statement, so it is atomic and durable on its own (autocommit), with no
//! transaction left open between round trips. A transition locks the row in a CTE
//! (`SELECT … FOR UPDATE` under the from-state condition), updates it, and appends its audit
//! event from the updated row in the same statement: a concurrent transition waits for the
//! lock, re-checks the condition on the new row version, and finds nothing to do — so the
//! event exists exactly when the row changed. The statement's row count is the number of
//! events appended. Recording a webhook is one statement too: the insert, and the audit event
//! of the operation it names.
//!
//! Linking an order reference is one `INSERT … ON CONFLICT DO NOTHING`; when the reference
//! was taken, a second statement reads the link that stands. It cannot be one statement: the
//! insert may have waited for a concurrent link to commit, and a statement's snapshot, taken
//! before that commit, would not see the row it conflicted with; the next statement's does.
//! Nothing changes or deletes a link, so the read finds it.
//!
//! **Metrics.** Each write of an operation, webhook, daily total or order reference (claim,
//! take-over, finish, mark pending, abandon, review resolution, webhook, reservation,
//! release, link) is its own transaction, so each is measured as one (label
//! `backend="postgres"`): `store_batch_size` 1 and
//! `store_commit_duration_seconds`, the statement's round trip until PostgreSQL committed it —
//! comparable with SQLite's group commits. Lease renewals and order locks are not measured.
//!
//! **Replica liveness.** A replica is alive while a granted advisory lock on its key exists in
//! this database ([`LIVE_REPLICAS`]); [`replica_gone`] is the SQL test every statement uses,
//! for operations (`lease_replica`) and resource leases (`replica`) alike.

use std::sync::LazyLock;
use std::time::Instant;

use refund_gateway_domain::store::{LinkOutcome, OrderReference};
use refund_gateway_domain::{
    Claim, Completion, LeaseHolder, NewOperation, Resolution, StoreError, WebhookEvent,
};
use sqlx::{PgPool, Postgres, Row};

use super::direct::DirectConnections;
use crate::read;
use crate::row::{
    bind_values, claim_values, claimed_operation, db_error, holder_text, id_text,
    insert_event_from, link_found, reference_values, resolution_values, webhook_values,
};

/// The replica keys alive in this database, each as its (high half, low half): the granted
/// advisory locks on a bigint key, which PostgreSQL shows with the key's halves as unsigned
/// 32-bit `classid` and `objid` and with `objsubid` 1. Advisory locks belong to one database,
/// and `pg_locks` shows those of every database on the server.
const LIVE_REPLICAS: &str = "SELECT classid::bigint, objid::bigint FROM pg_locks \
     WHERE locktype = 'advisory' AND objsubid = 1 AND granted \
     AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";

/// SQL that is true when the BIGINT expression `replica` names a replica that is not alive:
/// its session, and with it its advisory lock, has ended. False for NULL (no replica
/// recorded). The key is split into the halves `pg_locks` shows rather than the halves joined
/// back, which works for negative keys too: `>>` on a BIGINT keeps the sign, and the mask
/// leaves the high half as the unsigned value `classid` holds. PostgreSQL runs the uncorrelated
/// `NOT IN` once per statement, as a hashed subplan.
fn replica_gone(replica: &str) -> String {
    format!(
        "({replica} IS NOT NULL AND ((({replica} >> 32) & 4294967295), \
         ({replica} & 4294967295)) NOT IN ({LIVE_REPLICAS}))"
    )
}

/// An IN_FLIGHT operation that nobody holds any more: no lease end, a lease end at or before
/// `now` (an SQL expression), or a claiming replica that is gone.
fn unheld(now: &str) -> String {
    format!(
        "lease_expires_at IS NULL OR lease_expires_at <= {now} OR {}",
        replica_gone("lease_replica")
    )
}

/// Claims before giving up when the row keeps vanishing between insert and read (each
/// vanishing needs a concurrent abandon).
const CLAIM_ATTEMPTS: usize = 8;

// The values of `claim_values`: $1 … $13 the operation, $14 lease holder, $15 lease end,
// $16 now, $17 resource kind, $18 resource id, $19 traceparent, $20 its trace id (the first
// holder's); then $21 the claiming replica.
static CLAIM: LazyLock<String> = LazyLock::new(|| format!("WITH {CLAIM_INSERT} {}", claim_event()));

/// The claim's insert, as the common table expression `inserted` (no row: the id is taken).
const CLAIM_INSERT: &str = "inserted AS ( \
       INSERT INTO operations (operation_id, caller, rpc, idempotency_key, fingerprint, \
         klarna_account, order_id, capture_id, amount, currency, reference, klarna_request, \
         trace_id, state, lease_holder, lease_expires_at, created_at, updated_at, \
         resource_kind, resource_id, traceparent, otel_trace_id, lease_replica) \
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'IN_FLIGHT', $14, $15, \
         $16, $16, $17, $18, $19, $20, $21) \
       ON CONFLICT (operation_id) DO NOTHING \
       RETURNING * )";

/// The "claimed" event of the row `inserted`, if any.
fn claim_event() -> String {
    insert_event_from(
        "inserted",
        "trace_id, otel_trace_id, NULL, 'IN_FLIGHT', 'claimed', $16",
    )
}

// CLAIM's $1 … $21, then $22 the lease holder of the operation's resource, $23 its lease
// length (µs). CLAIM, and when it inserted, TAKE_LEASE of the operation's resource ($6, $17,
// $18) for the claiming replica: one statement, one commit. Answers whether the claim
// inserted and whether the lease was taken.
static CLAIM_LOCKING: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {CLAIM_INSERT}, \
         event AS ( {} RETURNING 1 ), \
         leased AS ( \
           INSERT INTO resource_leases AS l \
             (klarna_account, resource_kind, resource_id, replica, holder, expires_at) \
           SELECT $6, $17, $18, $21, $22, {DB_NOW} + $23 FROM inserted \
           ON CONFLICT (klarna_account, resource_kind, resource_id) DO UPDATE \
             SET replica = EXCLUDED.replica, holder = EXCLUDED.holder, \
               expires_at = EXCLUDED.expires_at \
             WHERE l.expires_at <= {DB_NOW} OR {} \
           RETURNING holder ) \
         SELECT (SELECT count(*) FROM event) AS claimed, \
           (SELECT count(*) FROM leased) AS leased",
        claim_event(),
        replica_gone("l.replica"),
    )
});

/// A transition as one statement: lock the row of `$1` if `condition` holds, apply `set` to it,
/// and append its event with `trace`, `detail` and `at` (SQL expressions over the new row and
/// the parameters) and the new row's holder trace id (`otel_trace_id`).
fn transition(condition: &str, set: &str, trace: &str, detail: &str, at: &str) -> String {
    format!("WITH {} ", transition_steps(condition, set))
        + &insert_event_from(
            "changed",
            &format!("{trace}, otel_trace_id, state_before, state, {detail}, {at}"),
        )
}

/// The common table expressions of [`transition`] before its event: `old` (the row, locked, if
/// `condition` holds) and `changed` (the row after `set`, with `state_before`).
fn transition_steps(condition: &str, set: &str) -> String {
    format!(
        "old AS ( \
           SELECT operation_id, state FROM operations \
           WHERE {} FOR UPDATE ), \
         changed AS ( \
           UPDATE operations o SET {set} \
           FROM old WHERE o.operation_id = old.operation_id \
           RETURNING o.*, old.state AS state_before )",
        by_id_if(condition)
    )
}

/// The `WHERE` of a statement on the one operation `$1`, when `condition` holds: the row is
/// found by its primary key, and `condition` is only checked on it (and re-checked on the new
/// version after waiting for a row lock).
///
/// `IS TRUE` (the same as the bare condition in a `WHERE`) keeps the condition out of index
/// matching. Bare, `state = 'IN_FLIGHT'` could be served by `operations_by_state`, and
/// PostgreSQL chose it under load: its statistics, gathered while few operations were in
/// flight, make that state look as selective as the key, and the index is smaller than the
/// key's. The scan then walks every in-flight operation and every index entry left by ones
/// that moved on since the last vacuum: 73-84 buffer reads to find the row instead of 2, a
/// cost that grows with the number in flight (see docs/architecture.md, Decisions).
fn by_id_if(condition: &str) -> String {
    format!("operation_id = $1 AND ({condition}) IS TRUE")
}

// $1 id, $2 lease end, $3 now, $4 trace id, $5 new lease holder, $6 its replica, $7 its
// OpenTelemetry trace id: the new holder's replaces the old one's even when NULL, so no later
// event is put down to a trace that no longer holds the operation.
static TAKE_OVER: LazyLock<String> = LazyLock::new(|| {
    transition(
        &format!(
            "state = 'PENDING' OR (state = 'IN_FLIGHT' AND ({}))",
            unheld("$3")
        ),
        "state = 'IN_FLIGHT', lease_expires_at = $2, lease_holder = $5, lease_replica = $6, \
         otel_trace_id = $7, updated_at = $3",
        "COALESCE($4, trace_id)",
        "'taken over'",
        "$3",
    )
});

// $1 now, $2 limit: IN_FLIGHT with an expired lease or a gone replica, and PENDING.
pub(super) static UNRESOLVED: LazyLock<read::UnresolvedSql> =
    LazyLock::new(|| read::UnresolvedSql::new(&unheld("$1")));

// $1 now. What needs attention, a gone replica's claims counted as unresolved (as UNRESOLVED
// lists them).
pub(super) static ATTENTION: LazyLock<String> =
    LazyLock::new(|| crate::read::attention_sql(&unheld("$1")));

// $1 id, $2 lease end, $3 lease holder.
static RENEW_LEASE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE operations SET lease_expires_at = $2 WHERE {}",
        by_id_if("state = 'IN_FLIGHT' AND lease_holder = $3")
    )
});

// $1 id, $2 state, $3 now, $4 refund id, $5 correlation id, $6 code, $7 message, $8 payload,
// $9 trace id, $10 detail, $11 lease holder. The replica goes with the lease (see
// MARK_PENDING).
static FINISH: LazyLock<String> =
    LazyLock::new(|| transition(FINISH_CONDITION, FINISH_SET, FINISH_TRACE, "$10", "$3"));

const FINISH_CONDITION: &str = "state = 'IN_FLIGHT' AND lease_holder = $11";
const FINISH_SET: &str = "state = $2, lease_expires_at = NULL, lease_replica = NULL, \
     updated_at = $3, refund_id = COALESCE($4, o.refund_id), \
     correlation_id = COALESCE($5, o.correlation_id), response_code = $6, \
     response_message = $7, response_payload = $8";
const FINISH_TRACE: &str = "COALESCE($9, trace_id)";

// FINISH's $1 … $11, then the lease's $12 account, $13 kind, $14 id, $15 holder, $16 channel,
// $17 payload. One statement, so one commit and one round trip: FINISH, and RELEASE_LEASE of
// the operation's resource whether or not the finish applied. Answers whether the event was
// appended (the finish applied) and whether the lease was the holder's.
static FINISH_RELEASING: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {}, \
         event AS ( {} RETURNING 1 ), \
         released AS ( \
           DELETE FROM resource_leases \
           WHERE klarna_account = $12 AND resource_kind = $13 AND resource_id = $14 \
             AND holder = $15 \
           RETURNING waiters ) \
         SELECT (SELECT count(*) FROM event) AS finished, \
           (SELECT count(*) FROM released) AS released, \
           (SELECT count(*) FROM ( \
              SELECT pg_notify($16, $17) FROM released WHERE waiters > 0) announced) \
             AS announced",
        transition_steps(FINISH_CONDITION, FINISH_SET),
        insert_event_from(
            "changed",
            &format!("{FINISH_TRACE}, otel_trace_id, state_before, state, $10, $3"),
        ),
    )
});

// The values of `resolution_values`: $1 id, $2 state, $3 now, $4 refund id, $5 code,
// $6 message, $7 payload, $8 the event's trace id, $9 detail, $10 the operator's
// OpenTelemetry trace id. Only from REQUIRES_REVIEW: of concurrent resolutions, the ones that
// waited for the row lock re-check the state on the resolved row and do nothing. The row's
// otel_trace_id becomes the operator's (NULL included, as on a take-over), and the event
// carries it. No lease column changes: the row is not IN_FLIGHT (its replica went with its
// lease when it was finished).
static RESOLVE_REVIEW: LazyLock<String> = LazyLock::new(|| {
    transition(
        "state = 'REQUIRES_REVIEW'",
        "state = $2, updated_at = $3, refund_id = COALESCE($4, o.refund_id), \
         response_code = $5, response_message = $6, response_payload = $7, \
         otel_trace_id = $10",
        "$8",
        "$9",
        "$3",
    )
});

// $1 id, $2 now, $3 correlation id, $4 detail, $5 lease holder, $6 answer context. The
// replica goes with the
// lease: a gateway that predates `lease_replica` and takes the operation over next leaves the
// column as it finds it, and NULL keeps that gateway's claim on the lease-expiry rule.
static MARK_PENDING: LazyLock<String> = LazyLock::new(|| {
    transition(
        "state = 'IN_FLIGHT' AND lease_holder = $5",
        "state = 'PENDING', lease_expires_at = NULL, lease_replica = NULL, updated_at = $2, \
         correlation_id = COALESCE($3, o.correlation_id), \
         answer_context = COALESCE($6, o.answer_context)",
        "trace_id",
        "$4",
        "$2",
    )
});

// $1 id, $2 now, $3 detail, $4 lease holder. DELETE re-checks its condition after waiting for
// a row lock.
static ABANDON: LazyLock<String> = LazyLock::new(|| {
    let delete = format!(
        "WITH deleted AS ( DELETE FROM operations WHERE {} RETURNING * ) ",
        by_id_if("state = 'IN_FLIGHT' AND lease_holder = $4")
    );
    delete + &insert_event_from("deleted", "trace_id, otel_trace_id, state, NULL, $3, $2")
});

// The values of `webhook_values`: $1 event id, $2 type, $3 account, $4 operation id, $5 payment
// transaction id, $6 refund id, $7 correlation id, $8 payload, $9 occurred at, $10 received
// at; then $11 the detail. Returns how many webhooks were recorded (0: a known event id, which
// inserts nothing and so appends nothing; concurrent inserts of one id wait for each other).
// The audit event has no trace ids: Klarna caused it, not a request of ours.
// The operation's row is locked FOR SHARE, so a concurrent transition either waits for this
// statement or has committed and is the state read: the event's "no change" is the state
// current when it is appended. An operation that does not exist gets no event.
static RECORD_WEBHOOK: LazyLock<String> = LazyLock::new(|| {
    let record = "WITH recorded AS ( \
       INSERT INTO webhook_events (event_id, event_type, klarna_account, operation_id, \
         payment_transaction_id, refund_id, correlation_id, payload, occurred_at, received_at) \
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
       ON CONFLICT (event_id) DO NOTHING \
       RETURNING operation_id ), \
     target AS ( \
       SELECT operation_id, caller, rpc, idempotency_key, klarna_account, order_id, capture_id, \
         amount, currency, $6 AS refund_id, $7 AS correlation_id, state, created_at \
       FROM operations WHERE operation_id IN (SELECT operation_id FROM recorded) FOR SHARE ), \
     appended AS ( ";
    format!(
        "{record}{} ) SELECT count(*) FROM recorded",
        insert_event_from("target", "NULL, NULL, state, state, $11, $10")
    )
});

// $1 a final state, $2 from, $3 before, $4 limit. Only the answer body goes: the row (scope,
// fingerprint, final state, Klarna ids, the call) stays forever, so a late retry is a replay
// and never a second execution. REQUIRES_REVIEW and unresolved operations keep everything.
// `operations_by_state` gives the rows oldest first from $2. Two replicas purging at once
// wait on each other's rows and drop nothing twice that matters (a body already gone).
const PURGE_CHUNK: &str = "UPDATE operations SET response_payload = NULL WHERE operation_id IN (\
     SELECT operation_id FROM operations WHERE state = $1 AND updated_at >= $2 \
     AND updated_at < $3 AND response_payload IS NOT NULL ORDER BY updated_at LIMIT $4) \
     RETURNING updated_at";

// $1 caller, $2 currency, $3 day (ISO text, read as a DATE), $4 amount, $5 cap. Adds the
// amount to the day's total if it stays within the cap, creating the row on the day's first
// reservation; returns the new total, or no row when refused. The SELECT's WHERE refuses an
// amount over the cap on a fresh row. Concurrent reservations, from any replica, serialize
// on the row: an insert that meets another's uncommitted insert waits for it and then takes
// the update path, and ON CONFLICT DO UPDATE locks the row and evaluates its WHERE on the
// latest committed total. `total <= cap - amount` cannot overflow for amounts and caps of at
// least zero, and the sum it allows is at most the cap.
const RESERVE_DAILY: &str = "INSERT INTO caller_daily_totals AS t (caller, currency, day, total) \
     SELECT $1, $2, $3::date, $4 WHERE $4 <= $5 \
     ON CONFLICT (caller, currency, day) DO UPDATE SET total = t.total + EXCLUDED.total \
       WHERE t.total <= $5 - EXCLUDED.total \
     RETURNING t.total";

// $1 caller, $2 currency, $3 day, $4 amount. Never below zero; no row, nothing to give back.
const RELEASE_DAILY: &str = "UPDATE caller_daily_totals SET total = GREATEST(total - $4, 0) \
     WHERE caller = $1 AND currency = $2 AND day = $3::date";

// $1 caller, $2 currency, $3 day.
const DAILY_TOTAL: &str = "SELECT total FROM caller_daily_totals \
     WHERE caller = $1 AND currency = $2 AND day = $3::date";

// The values of `reference_values`: $1 account, $2 kind, $3 reference, $4 order id, $5 store
// id, $6 linked at. A reference already linked inserts nothing and keeps its first link.
// Concurrent links of one reference, from any replica, meet on the primary key: an insert that
// meets another's uncommitted one waits for it, and inserts only if that one rolls back.
const LINK_REFERENCE: &str = "INSERT INTO order_references \
     (klarna_account, kind, reference, order_id, store_id, linked_at) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (klarna_account, kind, reference) DO NOTHING";

/// Takes the session advisory lock of a replica key if nobody holds it; true when taken.
pub(super) const TRY_LOCK_REPLICA: &str = "SELECT pg_try_advisory_lock($1)";

/// Now, in microseconds since the Unix epoch, on the database's clock: resource leases are
/// written and checked against this one clock, whatever the replicas' clocks say.
const DB_NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint";

/// The channel on which a released resource lease is announced; the payload is the
/// resource's tag (`super::lease::resource_tag`).
pub(super) const RELEASED_CHANNEL: &str = "refund_gateway_resource_released";

// $1 account, $2 kind, $3 id, $4 replica, $5 holder, $6 lease length (µs). Inserts the lease,
// or overwrites one that has expired or whose replica is gone; ON CONFLICT locks the existing
// row and evaluates the condition on its latest version, so of concurrent takers exactly one
// gets a row back.
static TAKE_LEASE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO resource_leases AS l \
           (klarna_account, resource_kind, resource_id, replica, holder, expires_at) \
         VALUES ($1, $2, $3, $4, $5, {DB_NOW} + $6) \
         ON CONFLICT (klarna_account, resource_kind, resource_id) DO UPDATE \
           SET replica = EXCLUDED.replica, holder = EXCLUDED.holder, \
             expires_at = EXCLUDED.expires_at \
           WHERE l.expires_at <= {DB_NOW} OR {} \
         RETURNING holder",
        replica_gone("l.replica")
    )
});

// $1 account, $2 kind, $3 id, $4 holder, $5 lease length (µs).
static RENEW_RESOURCE_LEASE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE resource_leases SET expires_at = {DB_NOW} + $5 \
         WHERE klarna_account = $1 AND resource_kind = $2 AND resource_id = $3 AND holder = $4"
    )
});

// $1 account, $2 kind, $3 id. A taker that found the lease held counts itself as waiting,
// so that the release is announced; no row: the lease was released meanwhile.
const AWAIT_LEASE: &str = "UPDATE resource_leases SET waiters = waiters + 1 \
     WHERE klarna_account = $1 AND resource_kind = $2 AND resource_id = $3";

// $1 account, $2 kind, $3 id, $4 holder, $5 channel, $6 payload. One row when the lease was
// the holder's; the notification is sent when the deletion commits, and only if someone
// counted itself as waiting (a waiter counts itself before it waits, after subscribing, so
// either its count is deleted with the row and announced, or its next try finds the row
// gone).
const RELEASE_LEASE: &str = "WITH released AS ( \
       DELETE FROM resource_leases \
       WHERE klarna_account = $1 AND resource_kind = $2 AND resource_id = $3 AND holder = $4 \
       RETURNING waiters ) \
     SELECT CASE WHEN waiters > 0 THEN pg_notify($5, $6) END FROM released";

/// Inserts `op` as IN_FLIGHT held by `holder` with its "claimed" event, or reads the stored
/// one.
pub(super) async fn claim(
    pool: &PgPool,
    direct: &DirectConnections,
    op: &NewOperation,
    holder: LeaseHolder,
    replica: i64,
    now: i64,
    lease_until: i64,
) -> Result<Claim, StoreError> {
    let (claim, _) =
        claim_locking(pool, direct, op, holder, replica, now, lease_until, None).await?;
    Ok(claim)
}

/// [`claim`], and when `lease` (its holder and length in µs) is given and the claim is new,
/// the lease of the operation's resource if it is free, in one statement (CLAIM_LOCKING):
/// (the claim, the lease was taken). The insert runs on `direct`; reading a claim that
/// conflicted, on `pool`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn claim_locking(
    pool: &PgPool,
    direct: &DirectConnections,
    op: &NewOperation,
    holder: LeaseHolder,
    replica: i64,
    now: i64,
    lease_until: i64,
    lease: Option<(&str, i64)>,
) -> Result<(Claim, bool), StoreError> {
    let id = id_text(op.operation_id);
    let holder_id = holder_text(holder);
    for _ in 0..CLAIM_ATTEMPTS {
        let sql = if lease.is_some() {
            CLAIM_LOCKING.as_str()
        } else {
            CLAIM.as_str()
        };
        let query = bind_values(
            sqlx::query(sql),
            claim_values(&id, op, &holder_id, lease_until, now),
        )
        .bind(replica);
        let started = Instant::now();
        let (inserted, leased) = match lease {
            Some((lease_holder, lease_micros)) => {
                let row = direct
                    .fetch_one(query.bind(lease_holder).bind(lease_micros))
                    .await
                    .map_err(db_error)?;
                let inserted: i64 = row.try_get("claimed").map_err(db_error)?;
                let leased: i64 = row.try_get("leased").map_err(db_error)?;
                (inserted == 1, leased == 1)
            }
            None => {
                let done = direct.execute(query).await.map_err(db_error)?;
                (done.rows_affected() == 1, false)
            }
        };
        committed(started);
        if inserted {
            let claimed = claimed_operation(op.clone(), holder, now, lease_until)?;
            return Ok((Claim::New(claimed), leased));
        }
        // ON CONFLICT waited for the other insert to commit; its row is visible now, unless
        // it was abandoned meanwhile — then the key is free again: try to insert again.
        if let Some(existing) = read::get(pool, &id).await? {
            return Ok((Claim::Existing(existing), false));
        }
    }
    Err(StoreError::Unavailable(format!(
        "operation {id} kept being abandoned while being claimed"
    )))
}

/// Records one committed write transaction that started at `started` (see the module docs).
/// Literal name and labels: the macros keep the key in a static, so recording allocates
/// nothing.
fn committed(started: Instant) {
    metrics::histogram!("store_commit_duration_seconds", "backend" => "postgres")
        .record(started.elapsed().as_secs_f64());
    metrics::histogram!("store_batch_size", "backend" => "postgres").record(1.0);
}

/// [`changed_one`], measured as a committed write.
async fn changed_one_measured(
    query: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
    pool: &PgPool,
) -> Result<bool, StoreError> {
    let started = Instant::now();
    let changed = changed_one(query, pool).await?;
    committed(started);
    Ok(changed)
}

/// Runs a write; true when it affected exactly one row (for transitions: appended their event).
async fn changed_one(
    query: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
    pool: &PgPool,
) -> Result<bool, StoreError> {
    Ok(query.execute(pool).await.map_err(db_error)?.rows_affected() == 1)
}

/// Who takes an operation over, as the take-over records it.
#[derive(Debug, Clone, Copy)]
pub(super) struct NewHolder<'a> {
    /// The lease holder, as stored.
    pub(super) holder: &'a str,
    /// Its replica key.
    pub(super) replica: i64,
    /// Its OpenTelemetry trace id, the operation's from now on.
    pub(super) otel_trace_id: Option<&'a str>,
}

/// PENDING, or IN_FLIGHT with an expired lease or a gone replica -> IN_FLIGHT held by
/// `by` until `lease_until`; `trace_id` is the request id of the take-over's event.
pub(super) async fn take_over(
    pool: &PgPool,
    id: &str,
    by: NewHolder<'_>,
    now: i64,
    lease_until: i64,
    trace_id: Option<&str>,
) -> Result<bool, StoreError> {
    let query = sqlx::query(TAKE_OVER.as_str())
        .bind(id)
        .bind(lease_until)
        .bind(now)
        .bind(trace_id)
        .bind(by.holder)
        .bind(by.replica)
        .bind(by.otel_trace_id);
    changed_one_measured(query, pool).await
}

/// Extends the lease of an IN_FLIGHT operation held by `holder`; no event (not a state
/// change).
pub(super) async fn renew_lease(
    pool: &PgPool,
    id: &str,
    holder: &str,
    lease_until: i64,
) -> Result<bool, StoreError> {
    let query = sqlx::query(RENEW_LEASE.as_str())
        .bind(id)
        .bind(lease_until)
        .bind(holder);
    changed_one(query, pool).await
}

/// IN_FLIGHT held by `holder` -> the completion's final state.
pub(super) async fn finish(
    direct: &DirectConnections,
    id: &str,
    holder: &str,
    completion: &Completion,
    now: i64,
) -> Result<bool, StoreError> {
    let query = finish_query(FINISH.as_str(), id, holder, completion, now);
    let started = Instant::now();
    let done = direct.execute(query).await.map_err(db_error)?;
    committed(started);
    Ok(done.rows_affected() == 1)
}

/// `sql` (FINISH, or a statement starting with its parameters) with FINISH's $1 … $11 bound.
fn finish_query<'q>(
    sql: &'static str,
    id: &'q str,
    holder: &'q str,
    completion: &'q Completion,
    now: i64,
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
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
        .bind(holder)
}

/// [`finish`], and the release of the lease of `key` held by `lease_holder` (announcing `tag`
/// if a taker waits), in one statement: (finished, the lease was held).
pub(super) async fn finish_releasing(
    direct: &DirectConnections,
    id: &str,
    holder: &str,
    completion: &Completion,
    now: i64,
    lease: (LeaseKey<'_>, &str, &str),
) -> Result<(bool, bool), StoreError> {
    let (key, lease_holder, tag) = lease;
    let started = Instant::now();
    let query = finish_query(FINISH_RELEASING.as_str(), id, holder, completion, now)
        .bind(key.account)
        .bind(key.kind)
        .bind(key.id)
        .bind(lease_holder)
        .bind(RELEASED_CHANNEL)
        .bind(tag);
    let row = direct.fetch_one(query).await.map_err(db_error)?;
    committed(started);
    let finished: i64 = row.try_get("finished").map_err(db_error)?;
    let released: i64 = row.try_get("released").map_err(db_error)?;
    Ok((finished == 1, released == 1))
}

/// REQUIRES_REVIEW -> the resolution's state (checked by the caller: SUCCEEDED or FAILED).
pub(super) async fn resolve_review(
    pool: &PgPool,
    id: &str,
    resolution: &Resolution,
    now: i64,
) -> Result<bool, StoreError> {
    let query = bind_values(
        sqlx::query(RESOLVE_REVIEW.as_str()),
        resolution_values(id, resolution, now),
    );
    changed_one_measured(query, pool).await
}

/// IN_FLIGHT held by `holder` -> PENDING.
pub(super) async fn mark_pending(
    pool: &PgPool,
    id: &str,
    holder: &str,
    correlation_id: Option<&str>,
    detail: &str,
    answer_context: Option<&str>,
    now: i64,
) -> Result<bool, StoreError> {
    let query = sqlx::query(MARK_PENDING.as_str())
        .bind(id)
        .bind(now)
        .bind(correlation_id)
        .bind(detail)
        .bind(holder)
        .bind(answer_context);
    changed_one_measured(query, pool).await
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
    changed_one_measured(query, pool).await
}

/// Records `event` unless its event id is known, with the audit event of the operation it
/// names, if that exists; true when recorded. `operation_id` and `received_at` are the
/// event's, as stored.
pub(super) async fn record_webhook(
    pool: &PgPool,
    event: &WebhookEvent,
    operation_id: Option<&str>,
    received_at: i64,
    detail: &str,
) -> Result<bool, StoreError> {
    let query = bind_values(
        sqlx::query(RECORD_WEBHOOK.as_str()),
        webhook_values(event, operation_id, received_at),
    );
    let started = Instant::now();
    let row = query.bind(detail).fetch_one(pool).await.map_err(db_error)?;
    committed(started);
    let recorded: i64 = row.try_get(0).map_err(db_error)?;
    Ok(recorded == 1)
}

/// Drops up to `limit` answer bodies of operations in `state` last changed in `from..before`,
/// oldest first (see [`PURGE_CHUNK`]); returns the `updated_at` of each.
pub(super) async fn purge_chunk(
    pool: &PgPool,
    state: &str,
    from: i64,
    before: i64,
    limit: u32,
) -> Result<Vec<i64>, StoreError> {
    sqlx::query_scalar::<_, i64>(PURGE_CHUNK)
        .bind(state)
        .bind(from)
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .map_err(db_error)
}

/// Adds `amount` to the total of (`caller`, `currency`, `day`) if it stays at most `cap`
/// (see [`RESERVE_DAILY`]); true when added. `day` is stored text (`crate::row::day_text`);
/// `amount` and `cap` are at least zero (the caller checks).
pub(super) async fn reserve_daily(
    pool: &PgPool,
    caller: &str,
    currency: &str,
    day: &str,
    amount: i64,
    cap: i64,
) -> Result<bool, StoreError> {
    let started = Instant::now();
    let total = sqlx::query_scalar::<_, i64>(RESERVE_DAILY)
        .bind(caller)
        .bind(currency)
        .bind(day)
        .bind(amount)
        .bind(cap)
        .fetch_optional(pool)
        .await
        .map_err(db_error)?;
    committed(started);
    Ok(total.is_some())
}

/// Gives `amount` back to the total of (`caller`, `currency`, `day`), down to zero at most.
pub(super) async fn release_daily(
    pool: &PgPool,
    caller: &str,
    currency: &str,
    day: &str,
    amount: i64,
) -> Result<(), StoreError> {
    let started = Instant::now();
    sqlx::query(RELEASE_DAILY)
        .bind(caller)
        .bind(currency)
        .bind(day)
        .bind(amount)
        .execute(pool)
        .await
        .map_err(db_error)?;
    committed(started);
    Ok(())
}

/// The total of (`caller`, `currency`, `day`), 0 when nothing was reserved.
pub(super) async fn daily_total(
    pool: &PgPool,
    caller: &str,
    currency: &str,
    day: &str,
) -> Result<i64, StoreError> {
    let total = sqlx::query_scalar::<_, i64>(DAILY_TOTAL)
        .bind(caller)
        .bind(currency)
        .bind(day)
        .fetch_optional(pool)
        .await
        .map_err(db_error)?;
    Ok(total.unwrap_or(0))
}

/// Links `reference` unless it is linked already; otherwise reads the link that stands (see
/// the module docs). `linked_at` is the reference's, as stored.
pub(super) async fn link_reference(
    pool: &PgPool,
    reference: &OrderReference,
    linked_at: i64,
) -> Result<LinkOutcome, StoreError> {
    let query = bind_values(
        sqlx::query(LINK_REFERENCE),
        reference_values(reference, linked_at),
    );
    if changed_one_measured(query, pool).await? {
        return Ok(LinkOutcome::Linked);
    }
    let stored = read::find_reference(
        pool,
        &reference.klarna_account,
        reference.kind,
        &reference.reference,
    )
    .await?;
    link_found(reference, stored)
}

/// One resource lease as the statements name it.
#[derive(Debug, Clone, Copy)]
pub(super) struct LeaseKey<'a> {
    /// The Klarna account.
    pub(super) account: &'a str,
    /// `order` (later also `transaction`).
    pub(super) kind: &'a str,
    /// The resource's id.
    pub(super) id: &'a str,
}

/// Takes the lease of `key` for `holder` of `replica` for `lease_micros`, if it is free;
/// true when taken.
pub(super) async fn take_lease(
    pool: &PgPool,
    key: LeaseKey<'_>,
    replica: i64,
    holder: &str,
    lease_micros: i64,
) -> Result<bool, StoreError> {
    let taken = sqlx::query_scalar::<_, String>(TAKE_LEASE.as_str())
        .bind(key.account)
        .bind(key.kind)
        .bind(key.id)
        .bind(replica)
        .bind(holder)
        .bind(lease_micros)
        .fetch_optional(pool)
        .await
        .map_err(db_error)?;
    Ok(taken.is_some())
}

/// Counts one more taker waiting for the release of `key`; false when `key` is not leased
/// (any more), and there is nothing to wait for.
pub(super) async fn await_lease(pool: &PgPool, key: LeaseKey<'_>) -> Result<bool, StoreError> {
    let query = sqlx::query(AWAIT_LEASE)
        .bind(key.account)
        .bind(key.kind)
        .bind(key.id);
    changed_one(query, pool).await
}

/// Extends the lease of `key` held by `holder` to `lease_micros` from now; false when
/// `holder` does not hold it (any more).
pub(super) async fn renew_resource_lease(
    pool: &PgPool,
    key: LeaseKey<'_>,
    holder: &str,
    lease_micros: i64,
) -> Result<bool, StoreError> {
    let query = sqlx::query(RENEW_RESOURCE_LEASE.as_str())
        .bind(key.account)
        .bind(key.kind)
        .bind(key.id)
        .bind(holder)
        .bind(lease_micros);
    changed_one(query, pool).await
}

/// Deletes the lease of `key` if `holder` holds it, and then announces `tag` on
/// [`RELEASED_CHANNEL`] if a taker waits for it; true when it was held.
pub(super) async fn release_lease(
    pool: &PgPool,
    key: LeaseKey<'_>,
    holder: &str,
    tag: &str,
) -> Result<bool, StoreError> {
    let rows = sqlx::query(RELEASE_LEASE)
        .bind(key.account)
        .bind(key.kind)
        .bind(key.id)
        .bind(holder)
        .bind(RELEASED_CHANNEL)
        .bind(tag)
        .fetch_all(pool)
        .await
        .map_err(db_error)?;
    Ok(!rows.is_empty())
}
