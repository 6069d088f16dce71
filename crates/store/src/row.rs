//! What both backends share: the row structs, their decoding into domain values, the
//! timestamp encoding and the RPC names. Every decoding failure is [`StoreError::Corrupt`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use refund_gateway_domain::store::{LinkOutcome, OrderReference, ReferenceKind};
use refund_gateway_domain::{
    AttentionSummary, AuditEvent, Caller, Completion, IdempotencyKey, LeaseHolder, NewOperation,
    Operation, OperationId, OperationState, Resolution, ResourceKind, Rpc, StoreError,
    StoredResponse, TraceParent, WebhookEvent,
};
use sqlx::query::Query;
use sqlx::{Database, Encode, Type};
use time::{Date, OffsetDateTime};

/// A database error as the port reports it: unreadable values are [`StoreError::Corrupt`],
/// everything else [`StoreError::Unavailable`]. sqlx's messages name no connection URL.
pub(crate) fn db_error(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt(error.to_string()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// One value of a statement, typed so that PostgreSQL is given typed NULLs. The value lists
/// below ([`claim_values`], …) are the single statement of each write's parameter order; the
/// sqlx backends bind them with [`bind_values`], the SQLite writer (rusqlite) binds the same
/// lists.
#[derive(Debug, Clone)]
pub(crate) enum SqlValue<'a> {
    Text(Option<Cow<'a, str>>),
    Int(Option<i64>),
    Int4(Option<i32>),
    Blob(Option<&'a [u8]>),
}

impl<'a> SqlValue<'a> {
    fn text(value: &'a str) -> Self {
        Self::Text(Some(Cow::Borrowed(value)))
    }

    fn opt_text(value: Option<&'a str>) -> Self {
        Self::Text(value.map(Cow::Borrowed))
    }

    fn owned(value: String) -> Self {
        Self::Text(Some(Cow::Owned(value)))
    }
}

/// `query` with `values` bound in order.
pub(crate) fn bind_values<'q, DB>(
    mut query: Query<'q, DB, DB::Arguments>,
    values: impl IntoIterator<Item = SqlValue<'q>>,
) -> Query<'q, DB, DB::Arguments>
where
    DB: Database,
    Option<&'q str>: Encode<'q, DB> + Type<DB>,
    Option<String>: Encode<'q, DB> + Type<DB>,
    Option<&'q [u8]>: Encode<'q, DB> + Type<DB>,
    Option<i32>: Encode<'q, DB> + Type<DB>,
    Option<i64>: Encode<'q, DB> + Type<DB>,
{
    for value in values {
        query = match value {
            SqlValue::Text(Some(Cow::Borrowed(text))) => query.bind(Some(text)),
            SqlValue::Text(Some(Cow::Owned(text))) => query.bind(Some(text)),
            SqlValue::Text(None) => query.bind(None::<&str>),
            SqlValue::Int(value) => query.bind(value),
            SqlValue::Int4(value) => query.bind(value),
            SqlValue::Blob(value) => query.bind(value),
        };
    }
    query
}

/// Refuses a completion whose state is not final: `finish` only ever ends an operation.
pub(crate) fn check_final(completion: &Completion) -> Result<(), StoreError> {
    if completion.state.is_final() {
        Ok(())
    } else {
        Err(StoreError::Unavailable(format!(
            "finish called with the non-final state {}",
            completion.state
        )))
    }
}

/// Refuses a resolution whose state is not SUCCEEDED or FAILED: a person settles a review
/// with an outcome, and REQUIRES_REVIEW (or an unresolved state) is none.
pub(crate) fn check_resolution(resolution: &Resolution) -> Result<(), StoreError> {
    match resolution.state {
        OperationState::Succeeded | OperationState::Failed => Ok(()),
        other => Err(StoreError::Unavailable(format!(
            "resolve_review called with the state {other}, not SUCCEEDED or FAILED"
        ))),
    }
}

/// The values of a resolution in the order both backends' statements take them: id, state, now,
/// refund id (SUCCEEDED only: a failed refund has none, so a FAILED resolution keeps the stored
/// one), response code, message, payload, the event's trace id (`operator:<operator>`), its detail
/// (`resolved by <operator>: <reason>`), the operator's OpenTelemetry trace id.
pub(crate) fn resolution_values<'a>(
    id: &'a str,
    resolution: &'a Resolution,
    now: i64,
) -> [SqlValue<'a>; 10] {
    let refund_id = match resolution.state {
        OperationState::Succeeded => resolution.refund_id.as_deref(),
        _ => None,
    };
    [
        SqlValue::text(id),
        SqlValue::text(resolution.state.as_str()),
        SqlValue::Int(Some(now)),
        SqlValue::opt_text(refund_id),
        SqlValue::Int4(Some(resolution.response.code)),
        SqlValue::text(resolution.response.message.as_str()),
        SqlValue::Blob(Some(resolution.response.payload.as_slice())),
        SqlValue::owned(format!("operator:{}", resolution.operator)),
        SqlValue::owned(format!(
            "resolved by {}: {}",
            resolution.operator, resolution.reason
        )),
        SqlValue::opt_text(resolution.otel_trace_id.as_deref()),
    ]
}

/// The RPC stored as `name`.
pub(crate) fn parse_rpc(name: &str) -> Result<Rpc, StoreError> {
    Rpc::from_name(name).ok_or_else(|| StoreError::Corrupt(format!("unknown rpc {name:?}")))
}

fn parse_state(name: &str) -> Result<OperationState, StoreError> {
    OperationState::parse(name)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown state {name:?}")))
}

fn parse_optional_state(name: Option<&str>) -> Result<Option<OperationState>, StoreError> {
    name.map(parse_state).transpose()
}

/// The stored form of an operation id: the lower-case hyphenated UUID.
pub(crate) fn id_text(id: OperationId) -> String {
    id.as_uuid().hyphenated().to_string()
}

/// The id of (caller, rpc, key), checked against the id stored with them. `OperationId` can
/// only be derived, never built from a UUID, so the stored parts are the way back; a mismatch
/// means the row was altered.
fn derive_id(
    stored: &str,
    caller: &Caller,
    rpc: Rpc,
    key: &IdempotencyKey,
) -> Result<OperationId, StoreError> {
    let id = OperationId::derive(caller, rpc, key);
    if id_text(id) == stored {
        Ok(id)
    } else {
        Err(StoreError::Corrupt(format!(
            "operation id {stored:?} does not match its caller, rpc and key"
        )))
    }
}

/// The stored form of a lease holder: the lower-case hyphenated UUID.
pub(crate) fn holder_text(holder: LeaseHolder) -> String {
    holder.as_uuid().hyphenated().to_string()
}

fn parse_holder(holder: &str) -> Result<LeaseHolder, StoreError> {
    uuid::Uuid::parse_str(holder)
        .map(LeaseHolder::from_uuid)
        .map_err(|e| StoreError::Corrupt(format!("bad lease holder {holder:?}: {e}")))
}

fn parse_key(key: &str) -> Result<IdempotencyKey, StoreError> {
    IdempotencyKey::parse(key).map_err(|e| StoreError::Corrupt(format!("bad idempotency key: {e}")))
}

fn parse_traceparent(value: &str) -> Result<TraceParent, StoreError> {
    TraceParent::parse(value)
        .ok_or_else(|| StoreError::Corrupt(format!("bad traceparent {value:?}")))
}

/// A stored count (never negative) as the port's `u64`.
fn count(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative count {n}")))
}

/// `t` as integer microseconds since the Unix epoch, rounded down (toward the past), so
/// ordering is kept and sub-microsecond precision is dropped.
pub(crate) fn micros(t: OffsetDateTime) -> i64 {
    let micros = t.unix_timestamp_nanos().div_euclid(1_000);
    // `time` keeps years within ±9999 unless its large-dates feature is on; saturate beyond
    // i64's ±292,000 years rather than wrap.
    i64::try_from(micros).unwrap_or(if micros < 0 { i64::MIN } else { i64::MAX })
}

/// The instant `micros` microseconds after the Unix epoch, in UTC.
pub(crate) fn from_micros(micros: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .map_err(|e| StoreError::Corrupt(format!("timestamp {micros} out of range: {e}")))
}

/// The stored form of a UTC day (the key of a caller's daily total): its ISO date,
/// `YYYY-MM-DD`, as SQLite keeps it and as PostgreSQL reads it into a DATE. Meant for days of
/// years 1 to 9999, which is every day the gateway meets.
pub(crate) fn day_text(day: Date) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        day.year(),
        u8::from(day.month()),
        day.day()
    )
}

/// `now + lease` in microseconds, saturating.
pub(crate) fn lease_end(now: i64, lease: Duration) -> i64 {
    let lease = i64::try_from(lease.as_micros()).unwrap_or(i64::MAX);
    now.saturating_add(lease)
}

/// An `operations` row as selected by both backends (columns in [`OPERATION_COLUMNS`]).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct OperationRow {
    operation_id: String,
    caller: String,
    rpc: String,
    idempotency_key: String,
    fingerprint: String,
    klarna_account: String,
    order_id: String,
    capture_id: Option<String>,
    amount: Option<i64>,
    currency: Option<String>,
    reference: Option<String>,
    klarna_request: String,
    trace_id: Option<String>,
    state: String,
    lease_expires_at: Option<i64>,
    lease_holder: Option<String>,
    created_at: i64,
    updated_at: i64,
    refund_id: Option<String>,
    correlation_id: Option<String>,
    response_code: Option<i32>,
    response_message: Option<String>,
    response_payload: Option<Vec<u8>>,
    answer_context: Option<String>,
    resource_kind: String,
    /// `NULL` in rows written by releases before resources existed: the order's id then.
    resource_id: Option<String>,
    /// `NULL` in rows written by releases before trace context was kept (0007).
    traceparent: Option<String>,
}

/// The columns of [`OperationRow`], in order, for `SELECT`.
pub(crate) const OPERATION_COLUMNS: &str = "operation_id, caller, rpc, idempotency_key, \
     fingerprint, klarna_account, order_id, capture_id, amount, currency, reference, \
     klarna_request, trace_id, state, lease_expires_at, lease_holder, created_at, updated_at, \
     refund_id, correlation_id, response_code, response_message, response_payload, \
     answer_context, resource_kind, resource_id, traceparent";

impl OperationRow {
    /// A row selected with [`OPERATION_COLUMNS`] on the SQLite writer's connection.
    pub(crate) fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            operation_id: row.get(0)?,
            caller: row.get(1)?,
            rpc: row.get(2)?,
            idempotency_key: row.get(3)?,
            fingerprint: row.get(4)?,
            klarna_account: row.get(5)?,
            order_id: row.get(6)?,
            capture_id: row.get(7)?,
            amount: row.get(8)?,
            currency: row.get(9)?,
            reference: row.get(10)?,
            klarna_request: row.get(11)?,
            trace_id: row.get(12)?,
            state: row.get(13)?,
            lease_expires_at: row.get(14)?,
            lease_holder: row.get(15)?,
            created_at: row.get(16)?,
            updated_at: row.get(17)?,
            refund_id: row.get(18)?,
            correlation_id: row.get(19)?,
            response_code: row.get(20)?,
            response_message: row.get(21)?,
            response_payload: row.get(22)?,
            answer_context: row.get(23)?,
            resource_kind: row.get(24)?,
            resource_id: row.get(25)?,
            traceparent: row.get(26)?,
        })
    }

    /// The operation id as stored (for joining events).
    pub(crate) fn id(&self) -> &str {
        &self.operation_id
    }

    /// The keyset position of this row in `list` order.
    pub(crate) fn created_at_micros(&self) -> i64 {
        self.created_at
    }

    /// The domain operation.
    pub(crate) fn into_operation(self) -> Result<Operation, StoreError> {
        let idempotency_key = parse_key(&self.idempotency_key)?;
        let caller = Caller::named(self.caller);
        let rpc = parse_rpc(&self.rpc)?;
        let operation_id = derive_id(&self.operation_id, &caller, rpc, &idempotency_key)?;
        let response = self.response_code.map(|code| StoredResponse {
            code,
            message: self.response_message.unwrap_or_default(),
            payload: self.response_payload.unwrap_or_default(),
        });
        Ok(Operation {
            new: NewOperation {
                operation_id,
                caller,
                rpc,
                idempotency_key,
                fingerprint: self.fingerprint,
                klarna_account: self.klarna_account,
                resource_kind: ResourceKind::parse(&self.resource_kind).ok_or_else(|| {
                    StoreError::Corrupt(format!("unknown resource kind {:?}", self.resource_kind))
                })?,
                resource_id: self.resource_id.unwrap_or_else(|| self.order_id.clone()),
                order_id: self.order_id,
                capture_id: self.capture_id,
                amount: self.amount,
                currency: self.currency,
                reference: self.reference,
                klarna_request: self.klarna_request,
                trace_id: self.trace_id,
                traceparent: self
                    .traceparent
                    .as_deref()
                    .map(parse_traceparent)
                    .transpose()?,
            },
            state: parse_state(&self.state)?,
            lease_expires_at: self.lease_expires_at.map(from_micros).transpose()?,
            lease_holder: self.lease_holder.as_deref().map(parse_holder).transpose()?,
            created_at: from_micros(self.created_at)?,
            updated_at: from_micros(self.updated_at)?,
            refund_id: self.refund_id,
            correlation_id: self.correlation_id,
            response,
            answer_context: self.answer_context,
        })
    }
}

/// The values of a claim in the order both backends' claim statements take them: id, caller, rpc,
/// key, fingerprint, account, order, capture, amount, currency, reference, Klarna request, trace
/// id, lease holder, lease end, now, resource kind, resource id, traceparent, OpenTelemetry trace
/// id (the traceparent's: the claimer is the first holder).
pub(crate) fn claim_values<'a>(
    id: &'a str,
    op: &'a NewOperation,
    holder: &'a str,
    lease_until: i64,
    now: i64,
) -> [SqlValue<'a>; 20] {
    [
        SqlValue::text(id),
        SqlValue::text(op.caller.as_str()),
        SqlValue::text(op.rpc.as_str()),
        SqlValue::text(op.idempotency_key.as_str()),
        SqlValue::text(op.fingerprint.as_str()),
        SqlValue::text(op.klarna_account.as_str()),
        SqlValue::text(op.order_id.as_str()),
        SqlValue::opt_text(op.capture_id.as_deref()),
        SqlValue::Int(op.amount),
        SqlValue::opt_text(op.currency.as_deref()),
        SqlValue::opt_text(op.reference.as_deref()),
        SqlValue::text(op.klarna_request.as_str()),
        SqlValue::opt_text(op.trace_id.as_deref()),
        SqlValue::text(holder),
        SqlValue::Int(Some(lease_until)),
        SqlValue::Int(Some(now)),
        SqlValue::text(op.resource_kind.as_str()),
        SqlValue::text(op.resource_id.as_str()),
        SqlValue::opt_text(op.traceparent.as_ref().map(TraceParent::as_str)),
        SqlValue::opt_text(op.traceparent.as_ref().map(TraceParent::trace_id)),
    ]
}

/// `INSERT INTO audit_events … SELECT … FROM {source}`: an event copying the operation's
/// identity, refund id, correlation id and claim instant (`created_at`, the event's
/// `claimed_at`) from the rows of `source`, followed by `rest`: the trace id (request id),
/// OpenTelemetry trace id, state before, state after, detail and instant, as SQL expressions.
pub(crate) fn insert_event_from(source: &str, rest: &str) -> String {
    format!(
        "INSERT INTO audit_events (operation_id, caller, rpc, idempotency_key, klarna_account, \
         order_id, capture_id, amount, currency, refund_id, correlation_id, claimed_at, \
         trace_id, otel_trace_id, state_before, state_after, detail, at) \
         SELECT operation_id, caller, rpc, idempotency_key, klarna_account, order_id, \
         capture_id, amount, currency, refund_id, correlation_id, created_at, {rest} \
         FROM {source}"
    )
}

/// An `audit_events` row as selected by both backends (columns in [`EVENT_COLUMNS`]).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EventRow {
    operation_id: String,
    caller: String,
    rpc: String,
    idempotency_key: String,
    state_before: Option<String>,
    state_after: Option<String>,
    refund_id: Option<String>,
    correlation_id: Option<String>,
    trace_id: Option<String>,
    otel_trace_id: Option<String>,
    detail: String,
    at: i64,
}

/// The columns of [`EventRow`], in order, for `SELECT`.
pub(crate) const EVENT_COLUMNS: &str = "operation_id, caller, rpc, idempotency_key, \
     state_before, state_after, refund_id, correlation_id, trace_id, otel_trace_id, detail, at";

impl EventRow {
    /// The domain event.
    pub(crate) fn into_event(self) -> Result<AuditEvent, StoreError> {
        Ok(AuditEvent {
            operation_id: derive_id(
                &self.operation_id,
                &Caller::named(self.caller),
                parse_rpc(&self.rpc)?,
                &parse_key(&self.idempotency_key)?,
            )?,
            state_before: parse_optional_state(self.state_before.as_deref())?,
            state_after: parse_optional_state(self.state_after.as_deref())?,
            refund_id: self.refund_id,
            correlation_id: self.correlation_id,
            trace_id: self.trace_id,
            otel_trace_id: self.otel_trace_id,
            detail: self.detail,
            at: from_micros(self.at)?,
        })
    }
}

/// A `webhook_events` row as selected by both backends (columns in [`WEBHOOK_COLUMNS`]).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct WebhookRow {
    event_id: String,
    event_type: String,
    klarna_account: String,
    operation_id: Option<String>,
    payment_transaction_id: Option<String>,
    refund_id: Option<String>,
    correlation_id: Option<String>,
    payload: String,
    occurred_at: Option<String>,
    received_at: i64,
}

/// The columns of [`WebhookRow`], in order, for `SELECT`.
pub(crate) const WEBHOOK_COLUMNS: &str = "event_id, event_type, klarna_account, operation_id, \
     payment_transaction_id, refund_id, correlation_id, payload, occurred_at, received_at";

impl WebhookRow {
    /// The domain event of a row selected as concerning operation `id`. An [`OperationId`]
    /// cannot be built from its stored text, only derived, so the id asked for is the way
    /// back; a row that names another operation is [`StoreError::Corrupt`].
    pub(crate) fn into_event_of(self, id: OperationId) -> Result<WebhookEvent, StoreError> {
        if self.operation_id.as_deref() != Some(id_text(id).as_str()) {
            return Err(StoreError::Corrupt(format!(
                "webhook event {:?} names operation {:?}, not {id}",
                self.event_id, self.operation_id
            )));
        }
        Ok(WebhookEvent {
            event_id: self.event_id,
            event_type: self.event_type,
            klarna_account: self.klarna_account,
            operation_id: Some(id),
            payment_transaction_id: self.payment_transaction_id,
            refund_id: self.refund_id,
            correlation_id: self.correlation_id,
            payload: self.payload,
            occurred_at: self.occurred_at,
            received_at: from_micros(self.received_at)?,
        })
    }
}

/// The values of a webhook event in the order both backends' statements take them: event id, type,
/// account, operation id, payment transaction id, refund id, correlation id, payload, occurred at,
/// received at (microseconds).
pub(crate) fn webhook_values<'a>(
    event: &'a WebhookEvent,
    operation_id: Option<&'a str>,
    received_at: i64,
) -> [SqlValue<'a>; 10] {
    [
        SqlValue::text(event.event_id.as_str()),
        SqlValue::text(event.event_type.as_str()),
        SqlValue::text(event.klarna_account.as_str()),
        SqlValue::opt_text(operation_id),
        SqlValue::opt_text(event.payment_transaction_id.as_deref()),
        SqlValue::opt_text(event.refund_id.as_deref()),
        SqlValue::opt_text(event.correlation_id.as_deref()),
        SqlValue::text(event.payload.as_str()),
        SqlValue::opt_text(event.occurred_at.as_deref()),
        SqlValue::Int(Some(received_at)),
    ]
}

/// An `order_references` row as selected by both backends (columns in
/// [`REFERENCE_COLUMNS`]).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ReferenceRow {
    klarna_account: String,
    kind: String,
    reference: String,
    order_id: String,
    store_id: Option<String>,
    linked_at: i64,
}

/// The columns of [`ReferenceRow`], in order, for `SELECT`.
pub(crate) const REFERENCE_COLUMNS: &str =
    "klarna_account, kind, reference, order_id, store_id, linked_at";

impl ReferenceRow {
    /// A row selected with [`REFERENCE_COLUMNS`] on the SQLite writer's connection.
    pub(crate) fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            klarna_account: row.get(0)?,
            kind: row.get(1)?,
            reference: row.get(2)?,
            order_id: row.get(3)?,
            store_id: row.get(4)?,
            linked_at: row.get(5)?,
        })
    }

    /// The domain reference.
    pub(crate) fn into_reference(self) -> Result<OrderReference, StoreError> {
        let kind = ReferenceKind::parse(&self.kind).ok_or_else(|| {
            StoreError::Corrupt(format!("unknown reference kind {:?}", self.kind))
        })?;
        Ok(OrderReference {
            klarna_account: self.klarna_account,
            kind,
            reference: self.reference,
            order_id: self.order_id,
            store_id: self.store_id,
            linked_at: from_micros(self.linked_at)?,
        })
    }
}

/// The values of a reference in the order both backends' statements take them: account, kind,
/// reference, order id, store id, linked at (microseconds, `linked_at`).
pub(crate) fn reference_values(reference: &OrderReference, linked_at: i64) -> [SqlValue<'_>; 6] {
    [
        SqlValue::text(reference.klarna_account.as_str()),
        SqlValue::text(reference.kind.as_str()),
        SqlValue::text(reference.reference.as_str()),
        SqlValue::text(reference.order_id.as_str()),
        SqlValue::opt_text(reference.store_id.as_deref()),
        SqlValue::Int(Some(linked_at)),
    ]
}

/// What a link of `reference` did when its insert found the reference already linked, to
/// `stored`: nothing, either way; the stored link stays as the first link wrote it.
pub(crate) fn link_found(
    reference: &OrderReference,
    stored: Option<OrderReference>,
) -> Result<LinkOutcome, StoreError> {
    match stored {
        Some(stored) if stored.order_id == reference.order_id => Ok(LinkOutcome::AlreadyLinked),
        Some(stored) => Ok(LinkOutcome::LinkedElsewhere {
            order_id: stored.order_id,
        }),
        // Nothing deletes references, and the insert waited for the conflicting link to
        // commit: it must be there.
        None => Err(StoreError::Corrupt(format!(
            "reference {:?} ({}) of account {:?} conflicted on insert but cannot be read",
            reference.reference, reference.kind, reference.klarna_account
        ))),
    }
}

/// The counts of [`AttentionSummary`] as both backends select them (see
/// `crate::read::attention`).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct AttentionRow {
    pending: i64,
    oldest_pending: Option<i64>,
    requires_review: i64,
    in_flight: i64,
}

impl AttentionRow {
    /// The domain summary.
    pub(crate) fn into_summary(self) -> Result<AttentionSummary, StoreError> {
        Ok(AttentionSummary {
            pending: count(self.pending)?,
            oldest_pending_since: self.oldest_pending.map(from_micros).transpose()?,
            requires_review: count(self.requires_review)?,
            in_flight: count(self.in_flight)?,
        })
    }
}

/// Pairs each operation of a page with its events. `events` must be ordered oldest first
/// within each operation (any interleaving between operations).
pub(crate) fn assemble_page(
    rows: Vec<OperationRow>,
    events: Vec<EventRow>,
) -> Result<Vec<(Operation, Vec<AuditEvent>)>, StoreError> {
    let mut by_operation: HashMap<String, Vec<AuditEvent>> = HashMap::new();
    for event in events {
        let key = event.operation_id.clone();
        by_operation
            .entry(key)
            .or_default()
            .push(event.into_event()?);
    }
    rows.into_iter()
        .map(|row| {
            let events = by_operation.remove(row.id()).unwrap_or_default();
            Ok((row.into_operation()?, events))
        })
        .collect()
}

/// The operation a successful claim inserted, as it will read back (timestamps truncated).
pub(crate) fn claimed_operation(
    new: NewOperation,
    holder: LeaseHolder,
    now: i64,
    lease_until: i64,
) -> Result<Operation, StoreError> {
    let created_at = from_micros(now)?;
    Ok(Operation {
        new,
        state: OperationState::InFlight,
        lease_expires_at: Some(from_micros(lease_until)?),
        lease_holder: Some(holder),
        created_at,
        updated_at: created_at,
        refund_id: None,
        correlation_id: None,
        response: None,
        answer_context: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_names_round_trip() {
        for rpc in refund_gateway_domain::RPCS {
            assert_eq!(parse_rpc(rpc.as_str()).ok(), Some(rpc));
        }
        assert!(parse_rpc("Nope").is_err());
    }

    #[test]
    fn timestamps_truncate_to_microseconds_downward() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(micros(t), 1_700_000_000_123_456);
        let before =
            OffsetDateTime::from_unix_timestamp_nanos(-1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(micros(before), -1);
        let back = from_micros(micros(t)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.unix_timestamp_nanos(), 1_700_000_000_123_456_000);
        assert_eq!(lease_end(10, Duration::from_secs(1)), 1_000_010);
        assert_eq!(lease_end(i64::MAX - 1, Duration::from_secs(1)), i64::MAX);
    }

    #[test]
    fn days_are_iso_dates() {
        assert_eq!(day_text(time::macros::date!(2026 - 03 - 01)), "2026-03-01");
        assert_eq!(day_text(time::macros::date!(0987 - 12 - 31)), "0987-12-31");
    }
}
