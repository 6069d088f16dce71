//! The [`OperationStore`] port: the durable record of every mutating operation, which makes
//! each one exactly-once (see `docs/architecture.md#exactly-once`), and its append-only audit trail. The store crate
//! implements it on SQLite and PostgreSQL; the server drives the protocol through it.
//!
//! Lifecycle of an operation:
//! ```text
//!   claim ──> IN_FLIGHT ──finish──> SUCCEEDED | FAILED | REQUIRES_REVIEW   (final, replayed)
//!                │  ^  └──abandon──> (row deleted, key retryable; events kept)
//!     mark_pending  take_over
//!                v  │
//!             PENDING  <── an IN_FLIGHT whose lease expired counts as PENDING
//!
//!   REQUIRES_REVIEW ──resolve_review──> SUCCEEDED | FAILED   (a person decided; replayed)
//! ```
//! Every transition appends an [`AuditEvent`] in the same transaction. REQUIRES_REVIEW is
//! final for the protocol (nothing automatic leaves it); only a person settles it, with
//! [`OperationStore::resolve_review`].
//!
//! Each operation also keeps the OpenTelemetry trace id of its current holder: the trace of
//! the request that claimed it, replaced by the trace of whoever takes it over (a retry, the
//! reconciler's resolution), and by the operator's when a person settles an operation that
//! required review. Every event of a claim, take-over, finish, mark pending, abandon or
//! review resolution carries that trace id ([`AuditEvent::otel_trace_id`]), so an operator can
//! open the trace that caused each change; a webhook's event carries none.
//!
//! Each lease has a holder, a [`LeaseHolder`] token chosen by whoever claims or takes over the
//! operation. Only the current holder renews, finishes, marks pending or abandons it: a
//! gateway that stalled past its lease, and was taken over, cannot touch the operation any
//! more.
//!
//! Beside operations, the store keeps an index of order references ([`OrderReference`]):
//! Klarna's Order Management API cannot search orders by reference, so the gateway remembers
//! which order each receipt reference and `klarna_reference` belongs to, and a store associate
//! can find the order from the reference printed on the receipt. Each reference is linked
//! once, to the first order linked to it ([`OperationStore::link_reference`]).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ids::IdempotencyKey;
use crate::operation::{Caller, OperationId, ResourceKind, Rpc};
use crate::trace::TraceParent;

/// Where an operation is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationState {
    /// Claimed; a gateway is working on it under a lease.
    InFlight,
    /// Klarna's outcome is unknown; the reconciler resolves it.
    Pending,
    /// Done; Klarna accepted it.
    Succeeded,
    /// Done; refused definitively (Klarna 4xx other than 401/429, or a state rule).
    Failed,
    /// The reconciler could not decide; a person must look.
    RequiresReview,
}

impl OperationState {
    /// Every state.
    pub const ALL: [OperationState; 5] = [
        Self::InFlight,
        Self::Pending,
        Self::Succeeded,
        Self::Failed,
        Self::RequiresReview,
    ];

    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InFlight => "IN_FLIGHT",
            Self::Pending => "PENDING",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::RequiresReview => "REQUIRES_REVIEW",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// True for states whose stored response is replayed to every retry.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::RequiresReview)
    }
}

impl fmt::Display for OperationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer given for a completed operation, kept so every retry gets the identical answer.
/// Opaque to the store: the server encodes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredResponse {
    /// gRPC status code (0 = OK).
    pub code: i32,
    /// Status message (empty for OK).
    pub message: String,
    /// The encoded response message for OK; the encoded status details otherwise.
    pub payload: Vec<u8>,
}

/// Who holds the lease of an IN_FLIGHT operation: a token chosen afresh for each claim and
/// each take-over, so a holder whose lease expired and was taken over no longer matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseHolder(Uuid);

impl LeaseHolder {
    /// A new, random holder (UUID v4).
    // No `Default`: a default suggests one shared value, and every holder must be fresh.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    /// The holder of `uuid`, as stored.
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The token.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for LeaseHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// What a new operation is, as claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOperation {
    /// Derived from (caller, rpc, idempotency key); the primary key.
    pub operation_id: OperationId,
    /// Who asked.
    pub caller: Caller,
    /// Which RPC.
    pub rpc: Rpc,
    /// The caller's key.
    pub idempotency_key: IdempotencyKey,
    /// Hash of the validated command with the account resolved; another request under the
    /// same key has another fingerprint.
    pub fingerprint: String,
    /// The Klarna account (resolved name).
    pub klarna_account: String,
    /// The order the operation belongs to.
    pub order_id: String,
    /// The kind of the resource it acts on; with the account and `resource_id`, what its
    /// operations are serialized on.
    pub resource_kind: ResourceKind,
    /// The resource it acts on (the order id, for an order).
    pub resource_id: String,
    /// The capture, for capture-level operations.
    pub capture_id: Option<String>,
    /// Amount in minor units, for money movements.
    pub amount: Option<i64>,
    /// Currency, when known.
    pub currency: Option<String>,
    /// The reference sent to Klarna (refunds).
    pub reference: Option<String>,
    /// The Klarna call, serialized by the server, so the reconciler can resend it exactly.
    pub klarna_request: String,
    /// The request id (x-request-id) of the request that claimed it.
    pub trace_id: Option<String>,
    /// The W3C traceparent of the gateway's RPC span that created the operation. Kept so that
    /// whoever settles the operation later (the reconciler) can link its trace to the
    /// request's; its trace id is the operation's first holder trace id (see the module docs).
    pub traceparent: Option<TraceParent>,
}

/// A stored operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// What was claimed.
    pub new: NewOperation,
    /// Current state.
    pub state: OperationState,
    /// Lease end while IN_FLIGHT.
    pub lease_expires_at: Option<OffsetDateTime>,
    /// Who holds (or last held) the lease: the last claim or take-over.
    pub lease_holder: Option<LeaseHolder>,
    /// When it was claimed.
    pub created_at: OffsetDateTime,
    /// Last transition.
    pub updated_at: OffsetDateTime,
    /// Klarna's refund id, once known.
    pub refund_id: Option<String>,
    /// Klarna's correlation id of the last call, once known.
    pub correlation_id: Option<String>,
    /// The answer, once final.
    pub response: Option<StoredResponse>,
    /// What the answer needs beyond the call and Klarna's ids, kept by `mark_pending` (the
    /// server's encoding; opaque to the store).
    pub answer_context: Option<String>,
}

/// Which unresolved operations [`OperationStore::unresolved`] lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unresolved {
    /// Every one: the reconciler's first pass after the gateway starts, when the operations
    /// a crash interrupted became PENDING (and a restart is the time to try everything).
    All,
    /// Those due ([`Operation::is_due_for_resolution`]): the reconciler's later passes.
    Due,
}

/// The reconciler's wait before resending a PENDING operation is the operation's age when it
/// became PENDING divided by this: a young one is resent at the next pass, an old one less
/// and less often (each wait a quarter longer than the one before), so a long Klarna outage
/// does not cost every unresolved operation a resend on every pass.
pub const RESOLUTION_BACKOFF_DIVISOR: i64 = 4;

/// The longest wait before the reconciler resends a PENDING operation: once Klarna answers
/// again, every operation it left unresolved is settled within this (and a pass).
pub const RESOLUTION_BACKOFF_MAX: time::Duration = time::Duration::minutes(1);

impl Operation {
    /// True when no gateway holds it: PENDING, or IN_FLIGHT past its lease (the holder died).
    /// Anyone may take it over now (a caller's retry does, at once).
    pub fn is_unresolved(&self, now: OffsetDateTime) -> bool {
        match self.state {
            OperationState::Pending => true,
            OperationState::InFlight => self.lease_expires_at.is_none_or(|t| t <= now),
            _ => false,
        }
    }

    /// When the reconciler takes it on, if it is unresolved by then: an IN_FLIGHT operation
    /// whose holder is gone at once; a PENDING one at [`Operation::resolution_due_at`].
    pub fn is_due_for_resolution(&self, now: OffsetDateTime) -> bool {
        self.is_unresolved(now)
            && (self.state != OperationState::Pending || self.resolution_due_at() <= now)
    }

    /// When the reconciler next resends it, were it PENDING: `updated_at` (when it became
    /// PENDING) plus its age then divided by [`RESOLUTION_BACKOFF_DIVISOR`], at most
    /// [`RESOLUTION_BACKOFF_MAX`]. In whole microseconds, truncated toward zero, as the
    /// stores compute it in SQL.
    pub fn resolution_due_at(&self) -> OffsetDateTime {
        self.updated_at + resolution_backoff(self.updated_at - self.created_at)
    }
}

/// The reconciler's wait before resending an operation that became PENDING at `age`; see
/// [`Operation::resolution_due_at`].
pub fn resolution_backoff(age: time::Duration) -> time::Duration {
    let micros = age.whole_microseconds() / i128::from(RESOLUTION_BACKOFF_DIVISOR);
    let max = RESOLUTION_BACKOFF_MAX.whole_microseconds();
    // At most the cap, which fits an i64; an age below zero (clocks of two replicas) waits
    // not at all.
    time::Duration::microseconds(i64::try_from(micros.clamp(0, max)).unwrap_or(0))
}

/// The result of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Inserted now, IN_FLIGHT under a lease held by the caller of `claim`.
    New(Operation),
    /// Already there, as stored.
    Existing(Operation),
}

/// One state change, kept forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// The operation.
    pub operation_id: OperationId,
    /// State before (`None` when claimed).
    pub state_before: Option<OperationState>,
    /// State after (`None` when abandoned: the key became retryable).
    pub state_after: Option<OperationState>,
    /// Klarna's refund id, when known at this point.
    pub refund_id: Option<String>,
    /// Klarna's correlation id, when known at this point.
    pub correlation_id: Option<String>,
    /// Request id (x-request-id) of the request that caused the change, or `reconciler` for
    /// the reconciler's pass.
    pub trace_id: Option<String>,
    /// The OpenTelemetry trace id (32 lowercase hex) of the request or reconciler resolution
    /// that caused the change: the operation's holder's trace when the event was written.
    /// `None` for a webhook's event and for events written before trace ids were kept.
    pub otel_trace_id: Option<String>,
    /// Why, in words.
    pub detail: String,
    /// When.
    pub at: OffsetDateTime,
}

/// Filters of `ListOperations`; `None` means any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperationFilter {
    /// Only the operation of this id (its lower-case hyphenated UUID).
    pub operation_id: Option<String>,
    /// Only this order.
    pub order_id: Option<String>,
    /// Only operations on this payment transaction (resource kind `transaction`).
    pub payment_transaction_id: Option<String>,
    /// Only this caller.
    pub caller: Option<String>,
    /// Only this idempotency key.
    pub idempotency_key: Option<String>,
    /// Only this state.
    pub state: Option<OperationState>,
    /// Created at or after.
    pub created_from: Option<OffsetDateTime>,
    /// Created before.
    pub created_to: Option<OffsetDateTime>,
}

/// One page of operations, newest first, each with its events oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperationPage {
    /// The operations and their events.
    pub operations: Vec<(Operation, Vec<AuditEvent>)>,
    /// Token of the next page; `None` on the last.
    pub next_page_token: Option<String>,
}

/// How an operation ended, for [`OperationStore::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// SUCCEEDED, FAILED or REQUIRES_REVIEW.
    pub state: OperationState,
    /// The answer to replay.
    pub response: StoredResponse,
    /// Klarna's refund id.
    pub refund_id: Option<String>,
    /// Klarna's correlation id.
    pub correlation_id: Option<String>,
    /// Why, for the audit trail.
    pub detail: String,
    /// Trace id of whoever finished it.
    pub trace_id: Option<String>,
}

/// How a person settled an operation that required review, for
/// [`OperationStore::resolve_review`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// SUCCEEDED or FAILED.
    pub state: OperationState,
    /// The answer a replay of the request gets from now on.
    pub response: StoredResponse,
    /// Klarna's refund id, when the operator names one (order refunds). Kept for SUCCEEDED
    /// only (a refund that failed has none); when `None`, the stored one stays.
    pub refund_id: Option<String>,
    /// Who decided (the operator caller's name).
    pub operator: String,
    /// Why, mandatory, as the operator wrote it (the store records it in the event detail as
    /// `resolved by <operator>: <reason>`). The caller checks that it is there; the store
    /// records it as given.
    pub reason: String,
    /// The OpenTelemetry trace id of the operator's request.
    pub otel_trace_id: Option<String>,
}

/// A webhook delivery from Klarna, recorded once per `event_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    /// Klarna's event id; a redelivery carries the same one.
    pub event_id: String,
    /// Klarna's event type, e.g. `payment.transaction.refunded`.
    pub event_type: String,
    /// The configured account it was delivered for.
    pub klarna_account: String,
    /// The operation it concerns, when the gateway matched one.
    pub operation_id: Option<OperationId>,
    /// The payment transaction it is about, when it names one.
    pub payment_transaction_id: Option<String>,
    /// Klarna's refund id, for refund events.
    pub refund_id: Option<String>,
    /// Klarna's correlation id of the event.
    pub correlation_id: Option<String>,
    /// The event's payload as received (JSON).
    pub payload: String,
    /// When Klarna says it happened, as Klarna wrote it.
    pub occurred_at: Option<String>,
    /// When the gateway received it.
    pub received_at: OffsetDateTime,
}

/// Which reference of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReferenceKind {
    /// The merchant's receipt reference (`merchant_reference1`, or linked with LinkReceipt).
    Receipt,
    /// Klarna's `klarna_reference`.
    Klarna,
}

impl ReferenceKind {
    /// Every kind.
    pub const ALL: [ReferenceKind; 2] = [Self::Receipt, Self::Klarna];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Receipt => "receipt",
            Self::Klarna => "klarna",
        }
    }

    /// The kind stored as `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == s)
    }
}

impl fmt::Display for ReferenceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reference of an order in one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderReference {
    /// The Klarna account (resolved name) the order is in.
    pub klarna_account: String,
    /// Which reference it is.
    pub kind: ReferenceKind,
    /// The reference, trimmed and validated by the domain; the store compares it exactly.
    pub reference: String,
    /// The order it belongs to.
    pub order_id: String,
    /// The store (shop) that linked it, when known.
    pub store_id: Option<String>,
    /// When it was linked.
    pub linked_at: OffsetDateTime,
}

/// What linking a reference did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOutcome {
    /// Newly linked.
    Linked,
    /// The same reference was already linked to the same order (nothing changed; the first
    /// link's store_id and time stay).
    AlreadyLinked,
    /// The reference is linked to another order in that account; nothing changed.
    LinkedElsewhere {
        /// The order the reference is linked to.
        order_id: String,
    },
}

/// What operators' gauges show about the operations that need attention, as of one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttentionSummary {
    /// Operations whose outcome is unresolved: PENDING, or IN_FLIGHT whose holder is gone (as
    /// for [`OperationStore::unresolved`]); the reconciler works through them.
    pub pending: u64,
    /// `created_at` of the oldest of those `pending` operations; `None` when there is none.
    /// How long it has waited says whether the reconciler keeps up (Klarna's idempotency
    /// window is 24 h).
    pub oldest_pending_since: Option<OffsetDateTime>,
    /// Operations in REQUIRES_REVIEW: a person must check each with Klarna.
    pub requires_review: u64,
    /// Operations IN_FLIGHT under a live lease: being worked on now.
    pub in_flight: u64,
}

/// Why the store failed. Never an answer about the operation: callers treat it as "the store
/// is unavailable".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or is unreachable.
    #[error("operation store unavailable: {0}")]
    Unavailable(String),
    /// A stored row could not be read back (corruption or a newer schema).
    #[error("operation store holds an unreadable row: {0}")]
    Corrupt(String),
    /// A page token that this store did not issue.
    #[error("invalid page token")]
    InvalidPageToken,
}

/// Exclusive right to operate on one resource, held across the Klarna call. Dropping it without
/// [`OrderLock::release`] releases it too, possibly later.
#[async_trait]
pub trait OrderLock: Send + fmt::Debug {
    /// Releases the lock.
    async fn release(self: Box<Self>);

    /// The lock itself, for the store that made it to release it together with a write of
    /// its own ([`OperationStore::finish_and_release`]).
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send>;
}

/// Durable operations and their audit trail. Every method is durable when it returns: a
/// claim before Klarna is called, an outcome before the caller is answered.
#[async_trait]
pub trait OperationStore: Send + Sync + fmt::Debug {
    /// Inserts `op` as IN_FLIGHT with a lease held by `holder` until `now + lease`, or
    /// returns the stored one.
    async fn claim(
        &self,
        op: NewOperation,
        holder: LeaseHolder,
        now: OffsetDateTime,
        lease: Duration,
    ) -> Result<Claim, StoreError>;

    /// [`OperationStore::claim`], and for a new claim the lock of its resource
    /// ([`OperationStore::lock_resource`] of its account, kind and id) when it is free: one
    /// write where the backend can make them one. `None` says nothing about the lock: the
    /// caller takes it with [`OperationStore::lock_resource`], which waits.
    async fn claim_and_lock(
        &self,
        op: NewOperation,
        holder: LeaseHolder,
        now: OffsetDateTime,
        lease: Duration,
    ) -> Result<(Claim, Option<Box<dyn OrderLock>>), StoreError> {
        Ok((self.claim(op, holder, now, lease).await?, None))
    }

    /// Takes over an unresolved operation (PENDING, or IN_FLIGHT whose holder is gone: its
    /// lease expired, or the backend knows its holder's process ended): IN_FLIGHT with a new
    /// lease held by `holder`. `false` when it is not unresolved (anymore). `trace_id` is the
    /// request id recorded on the take-over's event (`None`: the claim's); `otel_trace_id`
    /// becomes the operation's holder trace id, `None` included, carried by this event and the
    /// ones after it.
    async fn take_over(
        &self,
        id: OperationId,
        holder: LeaseHolder,
        now: OffsetDateTime,
        lease: Duration,
        trace_id: Option<String>,
        otel_trace_id: Option<String>,
    ) -> Result<bool, StoreError>;

    /// Extends the lease of an operation that is IN_FLIGHT and held by `holder`; `false` when
    /// it is not (anymore): finished, pending, abandoned, or taken over by another holder.
    async fn renew_lease(
        &self,
        id: OperationId,
        holder: LeaseHolder,
        now: OffsetDateTime,
        lease: Duration,
    ) -> Result<bool, StoreError>;

    /// IN_FLIGHT -> a final state, with the answer to replay. Only when the operation is
    /// IN_FLIGHT and held by `holder`; otherwise it does nothing, records no event and
    /// returns `false`: the holder lost its lease, and the stored record is the one that won.
    async fn finish(
        &self,
        id: OperationId,
        holder: LeaseHolder,
        completion: Completion,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// [`OperationStore::finish`], then [`OrderLock::release`] of `lock` (one of this store's):
    /// one round trip where the backend can make them one statement. The lock is released
    /// whether or not the finish applied; when the call fails, the lock is released as a
    /// dropped one is.
    async fn finish_and_release(
        &self,
        id: OperationId,
        holder: LeaseHolder,
        completion: Completion,
        now: OffsetDateTime,
        lock: Box<dyn OrderLock>,
    ) -> Result<bool, StoreError> {
        let finished = self.finish(id, holder, completion, now).await;
        lock.release().await;
        finished
    }

    /// IN_FLIGHT -> PENDING: Klarna's outcome is unknown; `answer_context`, when given, is kept
    /// for whoever settles it. Only when the operation is
    /// IN_FLIGHT and held by `holder`; otherwise it does nothing, records no event and
    /// returns `false`.
    async fn mark_pending(
        &self,
        id: OperationId,
        holder: LeaseHolder,
        correlation_id: Option<String>,
        detail: String,
        answer_context: Option<String>,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Deletes an IN_FLIGHT operation that provably did nothing (Klarna unreachable, 429,
    /// 401, our limits), so its key can be used again; the audit events stay. Only when the
    /// operation is IN_FLIGHT and held by `holder`; otherwise it does nothing, records no
    /// event and returns `false`.
    async fn abandon(
        &self,
        id: OperationId,
        holder: LeaseHolder,
        detail: String,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// REQUIRES_REVIEW -> SUCCEEDED or FAILED, decided by a person: `resolution.state` must be
    /// one of those two (any other state is refused with [`StoreError::Unavailable`], and
    /// nothing changes). Only from REQUIRES_REVIEW: on an unknown id, or an operation in any
    /// other state (one resolved already included), it changes nothing, records no event and
    /// returns `false`; among concurrent resolutions of one operation exactly one succeeds.
    ///
    /// Records one audit event: state before REQUIRES_REVIEW, after the new state, `detail`
    /// `resolved by <operator>: <reason>`, `trace_id` the operator's name prefixed
    /// `operator:`, `otel_trace_id` as given (which also becomes the operation's holder trace
    /// id, `None` included). For SUCCEEDED, keeps Klarna's refund id when given. Replaces the
    /// stored answer with `resolution.response`, so a replay of the caller's request answers
    /// what the operator decided. Leases are not touched: the operation is not IN_FLIGHT.
    async fn resolve_review(
        &self,
        id: OperationId,
        resolution: Resolution,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// The operation, if stored.
    async fn get(&self, id: OperationId) -> Result<Option<Operation>, StoreError>;

    /// Up to `limit` unresolved operations at `now`, oldest first: IN_FLIGHT whose holder is
    /// gone (as for [`OperationStore::take_over`]), and PENDING ones: every one for
    /// [`Unresolved::All`], those past their resend backoff
    /// ([`Operation::resolution_due_at`]) for [`Unresolved::Due`]. A PENDING operation not
    /// yet due is unresolved all the same: a caller's retry takes it over at once.
    async fn unresolved(
        &self,
        which: Unresolved,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Operation>, StoreError>;

    /// How many operations need attention at `now`, and since when the oldest unresolved one
    /// waits (see [`AttentionSummary`]). Cheap enough to poll for gauges: it reads only the
    /// operations that are not SUCCEEDED or FAILED.
    async fn attention(&self, now: OffsetDateTime) -> Result<AttentionSummary, StoreError>;

    /// Operations matching `filter`, newest first, `page_size` at a time.
    async fn list(
        &self,
        filter: &OperationFilter,
        page_size: u32,
        page_token: Option<&str>,
    ) -> Result<OperationPage, StoreError>;

    /// Drops the stored answer bodies (the payload) of SUCCEEDED and FAILED operations last
    /// changed before `before`. Everything else stays forever: identity, fingerprint, state,
    /// Klarna ids, the stored call, the answer's code and message, and the audit events; an
    /// unresolved or REQUIRES_REVIEW operation is never touched. Returns how many answers
    /// were dropped.
    async fn purge(&self, before: OffsetDateTime) -> Result<u64, StoreError>;

    /// Waits for, then holds, the exclusive right to operate on the resource (`kind`, `id`)
    /// of `account`.
    async fn lock_resource(
        &self,
        account: &str,
        kind: ResourceKind,
        id: &str,
    ) -> Result<Box<dyn OrderLock>, StoreError>;

    /// Every operation on the resource (`kind`, `id`) of `account`, oldest first, whatever
    /// its state. Partner limits count them; webhooks are matched against them.
    async fn resource_operations(
        &self,
        account: &str,
        kind: ResourceKind,
        id: &str,
    ) -> Result<Vec<Operation>, StoreError>;

    /// Records a webhook delivery once: `true` when `event.event_id` was new. When the event
    /// names an operation, an audit event (no state change, `detail` as given, the event's
    /// refund and correlation ids, no request or trace id) is appended to it in the same
    /// transaction. A duplicate writes nothing and returns `false`.
    async fn record_webhook(&self, event: WebhookEvent, detail: String)
    -> Result<bool, StoreError>;

    /// The recorded webhook events that concern operation `id`, oldest first.
    async fn webhook_events(&self, id: OperationId) -> Result<Vec<WebhookEvent>, StoreError>;

    /// Adds `amount` to what `caller` moved in `currency` on the UTC day `day`, if the total
    /// stays at most `cap`: `true` when added, `false` (nothing changed) when it would exceed.
    /// Atomic, also between replicas sharing the store: two reservations that together exceed
    /// the cap never both succeed.
    async fn reserve_daily(
        &self,
        caller: &str,
        currency: &str,
        day: time::Date,
        amount: i64,
        cap: i64,
    ) -> Result<bool, StoreError>;

    /// Gives back `amount` of a reservation whose operation moved no money (refused, or
    /// provably nothing happened); the total never goes below zero.
    async fn release_daily(
        &self,
        caller: &str,
        currency: &str,
        day: time::Date,
        amount: i64,
    ) -> Result<(), StoreError>;

    /// What `caller` has reserved in `currency` on `day` (0 when nothing).
    async fn daily_total(
        &self,
        caller: &str,
        currency: &str,
        day: time::Date,
    ) -> Result<i64, StoreError>;

    /// Links `reference` to its order, once per (account, kind, reference): atomic, also
    /// between replicas sharing the store (two concurrent links of one reference to two
    /// orders: exactly one wins, the other gets [`LinkOutcome::LinkedElsewhere`]). A reference
    /// already linked is never changed: its order, store id and time stay the first link's.
    /// References are compared exactly (the domain trims and validates them before).
    async fn link_reference(&self, reference: OrderReference) -> Result<LinkOutcome, StoreError>;

    /// The order `reference` of `kind` is linked to in `account`, if any. The reference is
    /// compared exactly: no trimming, no case folding.
    async fn find_reference(
        &self,
        account: &str,
        kind: ReferenceKind,
        reference: &str,
    ) -> Result<Option<OrderReference>, StoreError>;

    /// True when some reference of order `order_id` in `account` is linked: its references
    /// were learned (or linked) already, so there is no need to read it to learn them.
    async fn order_is_indexed(&self, account: &str, order_id: &str) -> Result<bool, StoreError>;

    /// [`OperationStore::lock_resource`] of an order.
    async fn lock_order(
        &self,
        account: &str,
        order_id: &str,
    ) -> Result<Box<dyn OrderLock>, StoreError> {
        self.lock_resource(account, ResourceKind::Order, order_id)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_backoff_is_a_quarter_of_the_age_up_to_a_minute() {
        let d = time::Duration::microseconds;
        assert_eq!(resolution_backoff(d(0)), d(0));
        assert_eq!(resolution_backoff(d(-40)), d(0));
        // Truncated toward zero, as SQL's integer division.
        assert_eq!(resolution_backoff(d(7)), d(1));
        assert_eq!(
            resolution_backoff(time::Duration::seconds(40)),
            time::Duration::seconds(10)
        );
        let cap_age = RESOLUTION_BACKOFF_MAX * 4;
        assert_eq!(
            resolution_backoff(cap_age - d(4)),
            RESOLUTION_BACKOFF_MAX - d(1)
        );
        assert_eq!(resolution_backoff(cap_age), RESOLUTION_BACKOFF_MAX);
        assert_eq!(
            resolution_backoff(time::Duration::days(2)),
            RESOLUTION_BACKOFF_MAX
        );
    }

    #[test]
    fn reference_kinds_round_trip_their_stored_names() {
        for kind in ReferenceKind::ALL {
            assert_eq!(ReferenceKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(ReferenceKind::Receipt.as_str(), "receipt");
        assert_eq!(ReferenceKind::Klarna.as_str(), "klarna");
        assert_eq!(ReferenceKind::parse("Receipt"), None);
    }
}
