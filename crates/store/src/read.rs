//! The reads, the same on both backends: one operation, the unresolved ones, pages of
//! [`OperationStore::list`](refund_gateway_domain::OperationStore::list) with their audit
//! events, the operations on one resource, the webhook events of one operation, the counts of
//! [`OperationStore::attention`](refund_gateway_domain::OperationStore::attention) (whose test
//! for a gone holder each backend gives), and the link of one order reference
//! ([`OperationStore::find_reference`](refund_gateway_domain::OperationStore::find_reference)).
//! The SQL is portable (`$n` parameters work on SQLite too) and runs on any sqlx pool:
//! SQLite's pool of read-only connections, or PostgreSQL's pool.

use std::sync::LazyLock;

use refund_gateway_domain::store::{OrderReference, ReferenceKind};
use refund_gateway_domain::{
    AttentionSummary, Operation, OperationFilter, OperationId, OperationPage, ResourceKind,
    StoreError, Unresolved, WebhookEvent,
};
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, QueryBuilder, Type};

use crate::page::{self, Cursor};
use crate::row::{
    AttentionRow, EVENT_COLUMNS, EventRow, OPERATION_COLUMNS, OperationRow, REFERENCE_COLUMNS,
    ReferenceRow, WEBHOOK_COLUMNS, WebhookRow, assemble_page, db_error, id_text, micros,
};

/// The id of the resource an operation acts on, as SQL: rows written by a release that
/// predates resources have no `resource_id` and act on their order. The expression of the
/// `operations_by_resource` index (migration 0005), written identically so that it serves
/// every query on it.
const RESOURCE_ID: &str = "COALESCE(resource_id, order_id)";

/// One operation by id.
pub(crate) static SELECT_OPERATION: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {OPERATION_COLUMNS} FROM operations WHERE operation_id = $1"));

/// An IN_FLIGHT operation whose holder is gone, as SQL over its row and `$1` (now): its lease
/// has ended. PostgreSQL adds a gone replica to it.
const LEASE_ENDED: &str = "lease_expires_at IS NULL OR lease_expires_at <= $1";

/// The statements of [`unresolved`] with the lease test alone (SQLite's).
pub(crate) static UNRESOLVED: LazyLock<UnresolvedSql> =
    LazyLock::new(|| UnresolvedSql::new(LEASE_ENDED));

/// The statements of [`unresolved`] (`$1` now, `$2` limit), one per [`Unresolved`].
pub(crate) struct UnresolvedSql {
    all: String,
    due: String,
}

impl UnresolvedSql {
    /// `unheld` is the SQL test of an IN_FLIGHT operation whose holder is gone (see
    /// [`attention_sql`]): those, and the PENDING operations (whose resend is due, for
    /// [`Unresolved::Due`]), oldest created first.
    pub(crate) fn new(unheld: &str) -> Self {
        let statement = |pending: &str| {
            format!(
                "SELECT {OPERATION_COLUMNS} FROM operations \
                 WHERE {pending} OR (state = 'IN_FLIGHT' AND ({unheld})) \
                 ORDER BY created_at, operation_id LIMIT $2"
            )
        };
        Self {
            all: statement("state = 'PENDING'"),
            due: statement(&format!("(state = 'PENDING' AND {})", *RESOLUTION_DUE)),
        }
    }

    /// The statement listing `which`.
    pub(crate) fn of(&'static self, which: Unresolved) -> &'static str {
        match which {
            Unresolved::All => &self.all,
            Unresolved::Due => &self.due,
        }
    }
}

/// A PENDING operation's resend is due at `$1` (now), as SQL over its row:
/// [`Operation::resolution_due_at`] in integer microseconds (SQL's integer division truncates
/// toward zero, as the domain's does).
static RESOLUTION_DUE: LazyLock<String> = LazyLock::new(|| {
    use refund_gateway_domain::store::{RESOLUTION_BACKOFF_DIVISOR, RESOLUTION_BACKOFF_MAX};
    let max = RESOLUTION_BACKOFF_MAX.whole_microseconds();
    let age = "(updated_at - created_at)";
    format!(
        "updated_at + CASE WHEN {age} <= 0 THEN 0 \
         WHEN {age} / {RESOLUTION_BACKOFF_DIVISOR} >= {max} THEN {max} \
         ELSE {age} / {RESOLUTION_BACKOFF_DIVISOR} END <= $1"
    )
});

/// The statement of [`attention`] with the lease test alone (SQLite's).
pub(crate) static ATTENTION: LazyLock<String> = LazyLock::new(|| attention_sql(LEASE_ENDED));

/// The statement of [`attention`], `unheld` being the SQL test (over a row and `$1`, now) of
/// an IN_FLIGHT operation whose holder is gone. The live work (PENDING and IN_FLIGHT rows) is
/// read through the `operations_by_state` index, (state, updated_at), in one pass that counts
/// and finds the oldest; REQUIRES_REVIEW, which only grows, is counted from the index alone.
/// SUCCEEDED and FAILED, nearly every row, are never read. `FILTER` is standard SQL, in
/// SQLite since 3.30.
pub(crate) fn attention_sql(unheld: &str) -> String {
    let unresolved = format!("state = 'PENDING' OR (state = 'IN_FLIGHT' AND ({unheld}))");
    format!(
        "SELECT \
           COUNT(*) FILTER (WHERE {unresolved}) AS pending, \
           MIN(created_at) FILTER (WHERE {unresolved}) AS oldest_pending, \
           (SELECT COUNT(*) FROM operations WHERE state = 'REQUIRES_REVIEW') AS requires_review, \
           COUNT(*) FILTER (WHERE NOT ({unresolved})) AS in_flight \
         FROM operations WHERE state IN ('PENDING', 'IN_FLIGHT')"
    )
}

// $1 account, $2 resource kind, $3 resource id. Served by `operations_by_resource`.
static RESOURCE_OPERATIONS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {OPERATION_COLUMNS} FROM operations \
         WHERE klarna_account = $1 AND resource_kind = $2 AND {RESOURCE_ID} = $3 \
         ORDER BY created_at, operation_id"
    )
});

// $1 operation id. Served by `webhook_events_by_operation`.
static WEBHOOK_EVENTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhook_events WHERE operation_id = $1 \
         ORDER BY received_at, event_id"
    )
});

/// One order reference: $1 account, $2 kind, $3 reference, compared exactly. Served by the
/// primary key. SQLite's writer reads with it too, inside its transaction, after a link
/// found the reference taken.
pub(crate) static SELECT_REFERENCE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {REFERENCE_COLUMNS} FROM order_references \
         WHERE klarna_account = $1 AND kind = $2 AND reference = $3"
    )
});

/// The operation `id`.
pub(crate) async fn get<DB>(pool: &Pool<DB>, id: &str) -> Result<Option<Operation>, StoreError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    OperationRow: for<'r> FromRow<'r, DB::Row>,
    String: for<'q> Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as::<DB, OperationRow>(SELECT_OPERATION.as_str())
        .bind(id.to_owned())
        .fetch_optional(pool)
        .await
        .map_err(db_error)?
        .map(OperationRow::into_operation)
        .transpose()
}

/// The oldest `updated_at` of an operation in `state` last changed before `before` that still
/// holds its answer body: where a purge with no previous cut starts (`crate::purge`). It reads
/// every such row's body column, so it runs on a reader, never in a write transaction.
pub(crate) async fn oldest_kept_answer<DB>(
    pool: &Pool<DB>,
    state: &str,
    before: i64,
) -> Result<Option<i64>, StoreError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    Option<i64>: for<'r> sqlx::Decode<'r, DB> + Type<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
    String: for<'q> Encode<'q, DB> + Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    sqlx::query_scalar::<DB, Option<i64>>(
        "SELECT MIN(updated_at) FROM operations \
         WHERE state = $1 AND updated_at < $2 AND response_payload IS NOT NULL",
    )
    .bind(state.to_owned())
    .bind(before)
    .fetch_one(pool)
    .await
    .map_err(db_error)
}

/// Up to `limit` unresolved operations, oldest created first, by `statement` (one of an
/// [`UnresolvedSql`]).
pub(crate) async fn unresolved<DB>(
    pool: &Pool<DB>,
    statement: &'static str,
    now: i64,
    limit: u32,
) -> Result<Vec<Operation>, StoreError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    OperationRow: for<'r> FromRow<'r, DB::Row>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as::<DB, OperationRow>(statement)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .map_err(db_error)?
        .into_iter()
        .map(OperationRow::into_operation)
        .collect()
}

/// What needs attention at `now` (microseconds), by `statement` (see [`attention_sql`]).
pub(crate) async fn attention<DB>(
    pool: &Pool<DB>,
    statement: &'static str,
    now: i64,
) -> Result<AttentionSummary, StoreError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    AttentionRow: for<'r> FromRow<'r, DB::Row>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as::<DB, AttentionRow>(statement)
        .bind(now)
        .fetch_one(pool)
        .await
        .map_err(db_error)?
        .into_summary()
}

/// Every operation on the resource (`kind`, `id`) of `account`, oldest created first (then
/// by id), in any state.
pub(crate) async fn resource_operations<DB>(
    pool: &Pool<DB>,
    account: &str,
    kind: ResourceKind,
    id: &str,
) -> Result<Vec<Operation>, StoreError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    OperationRow: for<'r> FromRow<'r, DB::Row>,
    String: for<'q> Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as::<DB, OperationRow>(RESOURCE_OPERATIONS.as_str())
        .bind(account.to_owned())
        .bind(kind.as_str().to_owned())
        .bind(id.to_owned())
        .fetch_all(pool)
        .await
        .map_err(db_error)?
        .into_iter()
        .map(OperationRow::into_operation)
        .collect()
}

/// The webhook events recorded for operation `id`, oldest received first (then by event id).
pub(crate) async fn webhook_events<DB>(
    pool: &Pool<DB>,
    id: OperationId,
) -> Result<Vec<WebhookEvent>, StoreError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    WebhookRow: for<'r> FromRow<'r, DB::Row>,
    String: for<'q> Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as::<DB, WebhookRow>(WEBHOOK_EVENTS.as_str())
        .bind(id_text(id))
        .fetch_all(pool)
        .await
        .map_err(db_error)?
        .into_iter()
        .map(|row| row.into_event_of(id))
        .collect()
}

/// The link of `reference` of `kind` in `account`, if any.
pub(crate) async fn find_reference<DB>(
    pool: &Pool<DB>,
    account: &str,
    kind: ReferenceKind,
    reference: &str,
) -> Result<Option<OrderReference>, StoreError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    ReferenceRow: for<'r> FromRow<'r, DB::Row>,
    String: for<'q> Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as::<DB, ReferenceRow>(SELECT_REFERENCE.as_str())
        .bind(account.to_owned())
        .bind(kind.as_str().to_owned())
        .bind(reference.to_owned())
        .fetch_optional(pool)
        .await
        .map_err(db_error)?
        .map(ReferenceRow::into_reference)
        .transpose()
}

/// The page of operations matching `filter` that `page_token` names (the first without one),
/// newest first, each with its events oldest first.
pub(crate) async fn list<DB>(
    pool: &Pool<DB>,
    filter: &OperationFilter,
    page_size: u32,
    page_token: Option<&str>,
) -> Result<OperationPage, StoreError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB> + Default,
    OperationRow: for<'r> FromRow<'r, DB::Row>,
    EventRow: for<'r> FromRow<'r, DB::Row>,
    String: for<'q> Encode<'q, DB> + Type<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
{
    let size = page::page_size(page_size);
    let cursor = page_token.map(|t| page::decode(t, filter)).transpose()?;
    // One row more than the page, to know whether there is a next one.
    let mut rows = list_query::<DB>(filter, cursor.as_ref(), size + 1)
        .build_query_as::<OperationRow>()
        .fetch_all(pool)
        .await
        .map_err(db_error)?;
    let next_page_token = page::next_page(&mut rows, size, filter)?;
    let events = if rows.is_empty() {
        Vec::new()
    } else {
        events_query::<DB>(&rows)
            .build_query_as::<EventRow>()
            .fetch_all(pool)
            .await
            .map_err(db_error)?
    };
    Ok(OperationPage {
        operations: assemble_page(rows, events)?,
        next_page_token,
    })
}

/// Up to `limit` rows matching `filter` after `cursor`, newest first.
pub(crate) fn list_query<DB>(
    filter: &OperationFilter,
    cursor: Option<&Cursor>,
    limit: u32,
) -> QueryBuilder<DB>
where
    DB: Database,
    DB::Arguments: Default,
    String: for<'q> Encode<'q, DB> + Type<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
{
    let mut query = QueryBuilder::new(format!(
        "SELECT {OPERATION_COLUMNS} FROM operations WHERE TRUE"
    ));
    if let Some(order_id) = &filter.order_id {
        // The operations on the order are those on the resource (order, order id): the
        // resource's index answers (there is no index of order ids alone, see migration 0010).
        // `order_id = …` stays, so the answer is the same whatever a row's resource says.
        query
            .push(" AND order_id = ")
            .push_bind(order_id.clone())
            .push(format!(" AND resource_kind = 'order' AND {RESOURCE_ID} = "))
            .push_bind(order_id.clone());
    }
    if let Some(transaction) = &filter.payment_transaction_id {
        // A transaction's resource id is never NULL (only releases that know resources act
        // on transactions), so this is `resource_id = …`, written as the index's expression.
        query
            .push(format!(
                " AND resource_kind = 'transaction' AND {RESOURCE_ID} = "
            ))
            .push_bind(transaction.clone());
    }
    if let Some(id) = &filter.operation_id {
        query.push(" AND operation_id = ").push_bind(id.clone());
    }
    if let Some(caller) = &filter.caller {
        query.push(" AND caller = ").push_bind(caller.clone());
    }
    if let Some(key) = &filter.idempotency_key {
        query.push(" AND idempotency_key = ").push_bind(key.clone());
    }
    if let Some(state) = filter.state {
        query
            .push(" AND state = ")
            .push_bind(state.as_str().to_owned());
    }
    if let Some(from) = filter.created_from {
        query.push(" AND created_at >= ").push_bind(micros(from));
    }
    if let Some(to) = filter.created_to {
        query.push(" AND created_at < ").push_bind(micros(to));
    }
    if let Some(cursor) = cursor {
        // Row values compare lexicographically, matching the ORDER BY below, and use the
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
}

/// The events of `rows`, oldest first within each operation, in one query: those of each
/// row's claim (`claimed_at` is the row's `created_at`), of earlier claims of its key that were
/// given back, and any appended without a claim instant (by a release before migration 0012).
/// Each part reads through an index: `audit_events_by_claim` (the last part too: its
/// `claimed_at` is NULL) and `audit_events_given_back`. `CROSS JOIN` makes SQLite look the
/// claims up in the index instead of scanning it for them; PostgreSQL plans it as any join.
///
/// The rows' claims are a `VALUES` list of their own (`listed`), not the first part of the
/// `UNION`: SQLite counts each row of a `VALUES` inside a compound `SELECT` as one of its
/// terms, and refuses more than 500 (`SQLITE_MAX_COMPOUND_SELECT`), which a full page of 500
/// operations plus the given-back part is.
pub(crate) fn events_query<DB>(rows: &[OperationRow]) -> QueryBuilder<DB>
where
    DB: Database,
    DB::Arguments: Default,
    String: for<'q> Encode<'q, DB> + Type<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
{
    let mut query = QueryBuilder::new("WITH listed (claimed_at, operation_id) AS (VALUES ");
    let mut listed = query.separated(", ");
    for row in rows {
        listed
            .push("(")
            .push_bind_unseparated(row.created_at_micros())
            .push_unseparated(", ")
            .push_bind_unseparated(row.id().to_owned())
            .push_unseparated(")");
    }
    query.push(
        "), claims (claimed_at, operation_id) AS (\
         SELECT claimed_at, operation_id FROM listed \
         UNION SELECT claimed_at, operation_id FROM audit_events \
         WHERE state_after IS NULL AND operation_id IN (",
    );
    push_ids(&mut query, rows);
    query.push(format!(
        ")) SELECT {EVENT_COLUMNS} FROM audit_events WHERE id IN (\
         SELECT e.id FROM claims CROSS JOIN audit_events AS e \
         WHERE e.claimed_at = claims.claimed_at AND e.operation_id = claims.operation_id \
         UNION ALL SELECT id FROM audit_events WHERE claimed_at IS NULL AND operation_id IN ("
    ));
    push_ids(&mut query, rows);
    query.push(")) ORDER BY operation_id, id");
    query
}

/// `rows`' operation ids as a list of bound parameters.
fn push_ids<DB>(query: &mut QueryBuilder<DB>, rows: &[OperationRow])
where
    DB: Database,
    String: for<'q> Encode<'q, DB> + Type<DB>,
{
    let mut ids = query.separated(", ");
    for row in rows {
        ids.push_bind(row.id().to_owned());
    }
}

/// Whether any reference of `order_id` in `account` is linked (the `order_references_by_order`
/// index answers it).
pub(crate) async fn order_is_indexed<DB>(
    pool: &Pool<DB>,
    account: &str,
    order_id: &str,
) -> Result<bool, StoreError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    i64: for<'r> sqlx::Decode<'r, DB> + Type<DB>,
    String: for<'q> Encode<'q, DB> + Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let found: Option<i64> = sqlx::query_scalar::<DB, i64>(
        "SELECT 1 FROM order_references WHERE klarna_account = $1 AND order_id = $2 LIMIT 1",
    )
    .bind(account.to_owned())
    .bind(order_id.to_owned())
    .fetch_optional(pool)
    .await
    .map_err(db_error)?;
    Ok(found.is_some())
}
