//! The exactly-once operation protocol (see `docs/architecture.md#exactly-once`): claim,
//! replay, per-order serialization, the Klarna call in a task that outlives the caller,
//! leases, outcome recording, and the resolution of operations whose outcome is unknown.
//!
//! Every mutating RPC goes through [`Protocol::execute`]. The RPC supplies the operation's
//! identity and a unit of work (state rules, then the Klarna call, then its encoded answer);
//! the protocol decides whether the work runs at all, and makes sure its outcome is durable
//! before anyone is answered. Errors are [`GatewayError`]s; `crate::status` alone turns them
//! into gRPC statuses.
//!
//! # Layout
//! - this module: [`Protocol`], claim and execute, recording an outcome as the lease holder.
//! - `call.rs`: [`KlarnaCall`], the Klarna call of an operation.
//! - [`encoding`]: the versioned stored form of the call, and the fingerprint.
//! - `outcome.rs`: from a result and its logged attempts to the record of its verdict.
//! - `resend.rs`: resending inside Klarna's idempotency window, matching on the order after.
//! - `lease.rs`: lease renewal while work runs.
//! - `reconciler.rs`: the background passes over unresolved operations.

mod call;
pub mod encoding;
mod lease;
mod outcome;
mod reconciler;
mod resend;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use refund_gateway_domain::{
    Claim, GatewayError, KlarnaError, LeaseHolder, NewOperation, Operation, OperationId,
    OperationState, OperationStore, OrderLock, Rpc, StoreError, StoredResponse,
};
use time::OffsetDateTime;
use tokio::sync::{oneshot, watch};
use tracing::Instrument;

pub use call::{Accepted, KlarnaCall};

use crate::gateway::KlarnaAccount;
pub use outcome::Encoded;
pub use reconciler::{PASS_LIMIT, PassReport, reconcile_forever, reconcile_once};

use outcome::Outcome;

/// An INTERNAL span around a store write that matters to an operation's story (its claim,
/// its outcome), in the trace of whoever makes it; none when spans are not exported (its
/// operation id is in the RPC's span already, for the logs).
macro_rules! store_span {
    ($name:literal, $id:expr) => {
        if crate::telemetry::spans_exported() {
            tracing::info_span!(
                $name,
                otel.kind = "internal",
                refund.operation_id = %$id,
            )
        } else {
            tracing::Span::none()
        }
    };
}

/// The trace id recorded for changes made by the reconciler.
pub const RECONCILER: &str = "reconciler";

/// Timing of the protocol.
#[derive(Debug, Clone, Copy)]
pub struct ProtocolSettings {
    /// How long a claim stays ours without renewal; renewed every third of it while working.
    pub lease: Duration,
    /// The caller's deadline when it sets none.
    pub default_deadline: Duration,
    /// How long before the caller's deadline we answer OUTCOME_PENDING if the outcome is still
    /// unknown: tonic cancels the handler at the deadline itself, so an answer must leave
    /// before it.
    pub deadline_margin: Duration,
    /// How long Klarna remembers an idempotency key; resends are safe only inside it. Klarna
    /// says 24 h; the default keeps an hour of margin.
    pub klarna_idempotency_window: Duration,
    /// The shortest caller deadline a mutation is attempted with: below it there is no time
    /// to claim, call Klarna and record, so the call is refused before anything is stored.
    pub min_deadline: Duration,
}

impl Default for ProtocolSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            default_deadline: Duration::from_secs(30),
            deadline_margin: Duration::from_millis(250),
            klarna_idempotency_window: Duration::from_secs(23 * 3600),
            min_deadline: Duration::from_millis(200),
        }
    }
}

/// The answer of a mutating RPC: what was stored, and whether this is a replay of it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The stored response (a success payload, or an error status).
    pub response: StoredResponse,
    /// True when an earlier request under the same key produced it.
    pub replayed: bool,
}

/// An amount reserved in a caller's daily total before the claim (its cap per day), given
/// back when the operation turns out to move no money: a retry of an existing operation, a
/// refusal, or an outcome that proves nothing happened. An unknown outcome keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyReservation {
    /// The caller's name.
    pub caller: String,
    /// The currency.
    pub currency: String,
    /// The UTC day.
    pub day: time::Date,
    /// The amount reserved.
    pub amount: i64,
}

/// The work of one operation: state rules, the Klarna call, the encoded answer.
pub type Work = BoxFuture<'static, Result<Encoded, GatewayError>>;

/// Where the work leaves what its answer needs beyond the call and Klarna's ids (the fee of a
/// due-date extension, read before sending), in [`encoding`]'s form. If the outcome turns out
/// unknown it is kept with the operation, so whoever settles it later answers in full.
#[derive(Debug, Clone, Default)]
pub struct AnswerContext(Arc<std::sync::Mutex<Option<String>>>);

impl AnswerContext {
    /// Leaves `context` for the answer.
    pub fn set(&self, context: String) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(context);
    }

    fn take(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// Encodes the answer of a resent call (after a crash or an unknown outcome), where the work
/// that first built it is gone.
pub type ResendEncoder = Arc<dyn Fn(&Operation, &KlarnaCall, &Accepted) -> Vec<u8> + Send + Sync>;

/// Finds a configured Klarna account by name.
pub type AccountLookup = Arc<dyn Fn(&str) -> Option<KlarnaAccount> + Send + Sync>;

/// Runs mutating operations exactly once.
#[derive(Clone)]
pub struct Protocol {
    store: Arc<dyn OperationStore>,
    settings: ProtocolSettings,
    accounts: AccountLookup,
    encode_resent: ResendEncoder,
    /// Held by a reconciler pass, so passes never overlap.
    reconciling: Arc<tokio::sync::Mutex<()>>,
    /// Operations this process's reconciler is resolving, each with a signal that turns
    /// `true` when it is done: a caller's retry that finds one waits for it rather than being
    /// told the key is in use (after a restart, the reconciler's first pass and the callers'
    /// first retries arrive together).
    resolving: Arc<std::sync::Mutex<HashMap<OperationId, watch::Receiver<bool>>>>,
}

impl std::fmt::Debug for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protocol")
            .field("store", &self.store)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The store failed: logged here with its cause; the caller gets `STORE_UNAVAILABLE`.
fn store_unavailable(e: StoreError) -> GatewayError {
    tracing::error!(error = %e, "operation store unavailable");
    GatewayError::StoreUnavailable(e.to_string())
}

/// What a task does with the operation it holds.
enum Job {
    /// The first execution, under a fresh claim, what it leaves for its answer, and the
    /// daily reservation made for it.
    Work(Work, AnswerContext, Option<DailyReservation>),
    /// A resend (or a match on the order) of an operation whose outcome is unknown.
    Resend,
}

impl Protocol {
    /// A protocol over `store`.
    pub fn new(
        store: Arc<dyn OperationStore>,
        settings: ProtocolSettings,
        accounts: AccountLookup,
        encode_resent: ResendEncoder,
    ) -> Self {
        Self {
            store,
            settings,
            accounts,
            encode_resent,
            reconciling: Arc::default(),
            resolving: Arc::default(),
        }
    }

    /// The store, for reads (ListOperations).
    pub fn store(&self) -> &Arc<dyn OperationStore> {
        &self.store
    }

    /// The protocol's timing.
    pub fn settings(&self) -> &ProtocolSettings {
        &self.settings
    }

    /// Runs `work` for `new` exactly once per operation id, answering within `deadline`
    /// (minus the margin): a stored answer is replayed, a concurrent duplicate is told to
    /// wait, another request under the same key is refused.
    ///
    /// Everything from `reserve` (the caller's daily reservation, taken first) to the recorded
    /// outcome runs in one task of its own, and the returned future only waits for its answer:
    /// a caller that goes away (a cancel, its deadline) drops that wait, never a claim half
    /// made. Cut between its write and the work, a claim would hold its lease (on PostgreSQL
    /// its order's too, stalling the order's other operations) until the lease expired; cut
    /// after the reservation, the day's amount would stay reserved for nothing.
    ///
    /// A plain function returning the future: an `async fn` would keep `new` in its state
    /// twice (the argument, and the local it is moved into).
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would hold its arguments twice"
    )]
    pub fn execute(
        &self,
        new: NewOperation,
        deadline: Option<Duration>,
        work: Work,
        context: AnswerContext,
        reserve: impl std::future::Future<Output = Result<Option<DailyReservation>, GatewayError>>
        + Send
        + 'static,
    ) -> impl std::future::Future<Output = Result<Answer, GatewayError>> + Send + '_ {
        async move {
            let deadline = deadline.unwrap_or(self.settings.default_deadline);
            let started = tokio::time::Instant::now();
            let answer_by = started + deadline.saturating_sub(self.settings.deadline_margin);
            let operation_id = new.operation_id;
            let (tx, rx) = oneshot::channel();
            // Klarna attempts stop at the caller's deadline; later resolution is the reconciler's.
            let task = self
                .clone()
                .claim_and_run(new, work, context, reserve, answer_by, started + deadline)
                .map(move |answer| {
                    let _ = tx.send(answer);
                });
            // In the caller's span, so the operation's Klarna attempts and log lines belong to
            // its trace even after the caller is answered.
            tokio::spawn(task.instrument(tracing::Span::current()));
            match tokio::time::timeout_at(answer_by, rx).await {
                Ok(Ok(result)) => result,
                // The task ended without answering: only a panic does that. Its outcome, if any,
                // is in the store or will be resolved; the caller retries with the same key.
                Ok(Err(_)) => Err(GatewayError::Internal(format!(
                    "the task of operation {operation_id} failed"
                ))),
                Err(_) => Err(pending(operation_id, "still waiting for Klarna")),
            }
        }
    }

    /// The task of [`Protocol::execute`]: reserves, claims, then replays, refuses, waits for
    /// another holder's resolution, or works the operation (or resends it) to its recorded
    /// outcome, however long the caller waits.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would hold its arguments twice"
    )]
    fn claim_and_run(
        self,
        new: NewOperation,
        work: Work,
        context: AnswerContext,
        reserve: impl std::future::Future<Output = Result<Option<DailyReservation>, GatewayError>>
        + Send
        + 'static,
        answer_by: tokio::time::Instant,
        klarna_deadline: tokio::time::Instant,
    ) -> impl std::future::Future<Output = Result<Answer, GatewayError>> + Send + 'static {
        async move {
            // The last refusal before the claim: nothing is stored when the day's cap is
            // reached.
            let reservation = reserve.await?;
            let now = OffsetDateTime::now_utc();
            let operation_id = new.operation_id;
            let new_op = new.clone();
            let trace_id = new.trace_id.clone();
            let holder = LeaseHolder::new();
            // The order lock comes with a new claim when it is free (one write, where the
            // store can); otherwise `run` waits for it.
            let (claim, lock) = match self
                .store
                .claim_and_lock(new, holder, now, self.settings.lease)
                .instrument(store_span!("store.claim", operation_id))
                .await
            {
                Ok(claimed) => claimed,
                Err(e) => {
                    self.release(reservation.as_ref()).await;
                    return Err(store_unavailable(e));
                }
            };
            if matches!(claim, Claim::Existing(_)) {
                // A resend of an operation already made: it moves no new money.
                self.release(reservation.as_ref()).await;
            }
            match claim {
                Claim::New(op) => {
                    let job = Job::Work(work, context, reservation);
                    let run = self.run(op, holder, job, None, lock);
                    refund_gateway_klarna::with_deadline(klarna_deadline, run).await
                }
                Claim::Existing(op) if !encoding::same_request(&op.new.fingerprint, &new_op) => {
                    Err(GatewayError::KeyReused {
                        operation_id: op.new.operation_id.to_string(),
                        idempotency_key: op.new.idempotency_key.to_string(),
                    })
                }
                Claim::Existing(op) if op.state.is_final() => self.replay(op),
                Claim::Existing(op) => {
                    // Unresolved (PENDING, or a dead holder's claim): settle it now, as the
                    // reconciler would, rather than make the caller wait for a pass.
                    let taken = self
                        .store
                        .take_over(
                            operation_id,
                            holder,
                            now,
                            self.settings.lease,
                            trace_id.clone(),
                            crate::telemetry::current_trace_id(),
                        )
                        .instrument(store_span!("store.take_over", operation_id))
                        .await
                        .map_err(store_unavailable)?;
                    if !taken {
                        return self.after_resolution(&op, answer_by).await;
                    }
                    let run = self.run(op, holder, Job::Resend, trace_id, None);
                    refund_gateway_klarna::with_deadline(klarna_deadline, run).await
                }
            }
        }
    }

    /// The answer for a caller whose operation another holder has: when this process's
    /// reconciler is resolving it, the outcome it reaches (within the caller's time), else
    /// `IDEMPOTENCY_KEY_IN_USE`.
    async fn after_resolution(
        &self,
        op: &Operation,
        answer_by: tokio::time::Instant,
    ) -> Result<Answer, GatewayError> {
        let id = op.new.operation_id;
        let signal = self
            .resolving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned();
        let waited = signal.is_some();
        if let Some(mut done) = signal {
            // A closed channel means the resolution ended too: read the store either way.
            if tokio::time::timeout_at(answer_by, done.wait_for(|d| *d))
                .await
                .is_err()
            {
                return Err(pending(id, "the reconciler is still resolving it"));
            }
        }
        // Read again: the holder may have finished between the claim and the take-over.
        match self.store.get(id).await.map_err(store_unavailable)? {
            Some(current) if current.state.is_final() => self.replay(current),
            Some(current) if waited => Err(pending_or_in_use(&current)),
            Some(current) => Err(in_use(&current, OffsetDateTime::now_utc())),
            None => Err(pending(id, "the operation was given back; retry")),
        }
    }

    /// Tracks a resolution by this process's reconciler until the returned guard is dropped.
    fn track_resolution(&self, id: OperationId) -> ResolutionGuard {
        let (tx, rx) = watch::channel(false);
        self.resolving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, rx);
        ResolutionGuard {
            id,
            done: tx,
            resolving: self.resolving.clone(),
        }
    }

    /// The stored answer of a final operation, as a replay. An answer whose body was purged
    /// after the retention period is rebuilt from what is kept forever.
    fn replay(&self, op: Operation) -> Result<Answer, GatewayError> {
        let Some(mut response) = op.response.clone() else {
            return Err(GatewayError::Internal(format!(
                "operation {} is final without a stored answer",
                op.new.operation_id
            )));
        };
        if response.code == 0 && response.payload.is_empty() {
            let call = encoding::decode_call(&op.new.klarna_request).map_err(|e| {
                GatewayError::Internal(format!("operation {}: {e}", op.new.operation_id))
            })?;
            let accepted = Accepted {
                refund_id: op.refund_id.clone(),
                correlation_id: op.correlation_id.clone(),
            };
            response.payload = (self.encode_resent)(&op, &call, &accepted);
        }
        Ok(Answer {
            response,
            replayed: true,
        })
    }

    /// Runs `job` for `op`, whose lease `holder` holds, in a task of its own.
    fn spawn(
        &self,
        op: Operation,
        holder: LeaseHolder,
        job: Job,
        klarna_deadline: tokio::time::Instant,
        trace_id: Option<String>,
        lock: Option<Box<dyn OrderLock>>,
    ) -> oneshot::Receiver<Result<Answer, GatewayError>> {
        let (tx, rx) = oneshot::channel();
        let run = refund_gateway_klarna::with_deadline(
            klarna_deadline,
            self.clone().run(op, holder, job, trace_id, lock),
        );
        // The task owns the operation from here: it runs to the end even when the caller
        // gives up, so the outcome is always recorded.
        // In the span of whoever started it (the RPC, or the reconciler's resolution), so its
        // Klarna attempts and log lines belong to that trace even after the caller is answered.
        // `map`, not an async block awaiting `run`: that would keep `run` twice.
        let task = run.map(move |answer| {
            let _ = tx.send(answer);
        });
        tokio::spawn(task.instrument(tracing::Span::current()));
        rx
    }

    /// Runs `job` under the order lock (`lock`, or taken here), keeping `holder`'s lease alive
    /// meanwhile, and records its outcome as `holder`.
    ///
    /// Owns the protocol (a handle of `Arc`s) and returns the future, so the operation's task
    /// holds `op` and `job` once: an `async fn` keeps its arguments next to the locals moved
    /// out of them, and a task block around it kept them a third time.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would hold its arguments twice"
    )]
    fn run(
        self,
        op: Operation,
        holder: LeaseHolder,
        job: Job,
        resend_trace_id: Option<String>,
        lock: Option<Box<dyn OrderLock>>,
    ) -> impl std::future::Future<Output = Result<Answer, GatewayError>> + Send + 'static {
        async move {
            let id = op.new.operation_id;
            // The lease is kept alive while the operation waits for its resource too: a queue on
            // one order longer than the lease must not look like a dead holder.
            let renewal =
                lease::renew_while_running(self.store.clone(), id, holder, self.settings.lease);
            let taken = match lock {
                Some(lock) => Ok(lock),
                None => {
                    self.store
                        .lock_resource(
                            &op.new.klarna_account,
                            op.new.resource_kind,
                            &op.new.resource_id,
                        )
                        .await
                }
            };
            let lock = match taken {
                Ok(lock) => lock,
                Err(e) => {
                    // Nothing was sent: give the key back rather than leave a claim whose state
                    // rules never ran for the reconciler to resend.
                    if let Job::Work(_, _, reservation) = &job {
                        self.release(reservation.as_ref()).await;
                        let _ = self
                            .store
                            .abandon(
                                id,
                                holder,
                                format!("order lock unavailable: {e}"),
                                OffsetDateTime::now_utc(),
                            )
                            .await;
                    }
                    renewal.abort();
                    return Err(store_unavailable(e));
                }
            };
            let (outcome, context, reservation) = match job {
                Job::Work(work, context, reservation) => {
                    let (result, attempts) = refund_gateway_klarna::recording_attempts(work).await;
                    let check = refund_gateway_domain::refusal_needs_checking(&attempts);
                    let outcome = outcome::judge_work(
                        id,
                        op.new.rpc.api(),
                        result,
                        attempts,
                        op.new.trace_id.clone(),
                    );
                    let outcome = if check && outcome.is_refusal() {
                        self.check_refusal(&op, outcome, op.new.trace_id.clone())
                            .await
                    } else {
                        outcome
                    };
                    (outcome, context.take(), reservation)
                }
                // The context the first execution left is stored already. A resend comes after
                // an attempt that may have taken effect: a refusal is checked.
                Job::Resend => {
                    let outcome = self.resend(&op, resend_trace_id.clone()).await;
                    let outcome = if outcome.is_refusal() {
                        self.check_refusal(&op, outcome, resend_trace_id).await
                    } else {
                        outcome
                    };
                    (outcome, None, None)
                }
            };
            renewal.abort();
            let moved_nothing = match &outcome {
                Outcome::NothingHappened(_) => true,
                Outcome::Final(completion) => completion.state == OperationState::Failed,
                Outcome::Unknown { .. } => false,
            };
            let recorded = self
                .record(id, op.new.rpc, holder, outcome, context, Some(lock))
                .await;
            if moved_nothing && recorded.is_ok() {
                self.release(reservation.as_ref()).await;
            }
            recorded
        }
    }

    /// Gives a daily reservation back; a store failure keeps it (the cap errs on the side of
    /// less money, never more).
    async fn release(&self, reservation: Option<&DailyReservation>) {
        let Some(r) = reservation else { return };
        if let Err(e) = self
            .store
            .release_daily(&r.caller, &r.currency, r.day, r.amount)
            .await
        {
            tracing::warn!(error = %e, caller = %r.caller, "daily reservation not given back");
        }
    }

    /// Records `outcome` as `holder`, with the answer's `context` when the outcome is unknown,
    /// and releases `lock` (a final outcome in the same store call, where the store can make
    /// them one write). When `holder` no longer held the lease (it stalled and was taken
    /// over), the store ignored the record and the caller is answered from the record that
    /// won.
    async fn record(
        &self,
        id: OperationId,
        rpc: Rpc,
        holder: LeaseHolder,
        outcome: Outcome,
        context: Option<String>,
        lock: Option<Box<dyn OrderLock>>,
    ) -> Result<Answer, GatewayError> {
        let now = OffsetDateTime::now_utc();
        let recorded = match &outcome {
            Outcome::Final(completion) => match completion.state {
                OperationState::Succeeded => "succeeded",
                OperationState::Failed => "failed",
                _ => "requires_review",
            },
            Outcome::NothingHappened(_) => "abandoned",
            Outcome::Unknown { .. } => "pending",
        };
        metrics::counter!("operations_recorded_total", "rpc" => rpc.as_str(), "outcome" => recorded)
            .increment(1);
        let (held, ours) = match outcome {
            Outcome::Final(completion) => {
                let response = completion.response.clone();
                let finished = match lock {
                    Some(lock) => {
                        self.store
                            .finish_and_release(id, holder, completion, now, lock)
                            .instrument(store_span!("store.finish", id))
                            .await
                    }
                    None => {
                        self.store
                            .finish(id, holder, completion, now)
                            .instrument(store_span!("store.finish", id))
                            .await
                    }
                };
                let held = finished.map_err(store_unavailable)?;
                (
                    held,
                    Ok(Answer {
                        response,
                        replayed: false,
                    }),
                )
            }
            Outcome::NothingHappened(error) => {
                let held = self
                    .store
                    .abandon(id, holder, error.to_string(), now)
                    .instrument(store_span!("store.abandon", id))
                    .await
                    .map_err(store_unavailable)?;
                release_lock(lock).await;
                (held, Err(error))
            }
            Outcome::Unknown {
                error,
                correlation_id,
                detail,
            } => {
                let held = self
                    .store
                    .mark_pending(id, holder, correlation_id, detail, context, now)
                    .instrument(store_span!("store.mark_pending", id))
                    .await
                    .map_err(store_unavailable)?;
                release_lock(lock).await;
                (held, Err(error))
            }
        };
        if held {
            return ours;
        }
        self.answer_from_store(id).await
    }

    /// The answer the stored record gives, for a gateway that lost its lease: the final
    /// answer when the winner finished, else "pending" (the winner is still at it).
    async fn answer_from_store(&self, id: OperationId) -> Result<Answer, GatewayError> {
        tracing::warn!(operation_id = %id, "lease lost before recording: answering from the stored record");
        match self.store.get(id).await.map_err(store_unavailable)? {
            Some(op) if op.state.is_final() => self.replay(op).map(|a| Answer {
                replayed: false,
                ..a
            }),
            Some(op) => Err(in_use(&op, OffsetDateTime::now_utc())),
            // Given back by the winner: nothing happened, the key is free again.
            None => Err(pending(
                id,
                "the operation was given back by another holder",
            )),
        }
    }
}

/// Releases `lock`, if any. (A lock dropped on an error path is released by its drop.)
async fn release_lock(lock: Option<Box<dyn OrderLock>>) {
    if let Some(lock) = lock {
        lock.release().await;
    }
}

/// Ends the tracking of a resolution and wakes the callers waiting for it.
struct ResolutionGuard {
    id: OperationId,
    done: watch::Sender<bool>,
    resolving: Arc<std::sync::Mutex<HashMap<OperationId, watch::Receiver<bool>>>>,
}

impl Drop for ResolutionGuard {
    fn drop(&mut self) {
        self.resolving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.id);
        let _ = self.done.send(true);
    }
}

/// A caller's answer for an operation that is not final after a resolution: still pending,
/// or held again by someone else.
fn pending_or_in_use(op: &Operation) -> GatewayError {
    if op.state == refund_gateway_domain::OperationState::Pending {
        pending(
            op.new.operation_id,
            "the reconciler could not settle it yet",
        )
    } else {
        in_use(op, OffsetDateTime::now_utc())
    }
}

/// The Klarna API of a stored operation's call.
/// ABORTED `IDEMPOTENCY_KEY_IN_USE`, retry when the holder's lease runs out at the latest.
fn in_use(op: &Operation, now: OffsetDateTime) -> GatewayError {
    let retry_after = op
        .lease_expires_at
        .map(|t| (t - now).try_into().unwrap_or(Duration::ZERO))
        .unwrap_or(Duration::from_secs(1))
        .clamp(Duration::from_millis(100), Duration::from_secs(30));
    GatewayError::KeyInUse {
        operation_id: op.new.operation_id.to_string(),
        retry_after,
    }
}

/// UNAVAILABLE `OUTCOME_PENDING`: retry with the same key.
pub fn pending(operation_id: OperationId, why: &str) -> GatewayError {
    GatewayError::OutcomePending {
        operation_id: operation_id.to_string(),
        error: KlarnaError::NoAnswer(why.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use refund_gateway_domain::{
        Caller, Completion, IdempotencyKey, OperationState, ResourceKind, Rpc, StoredResponse,
    };

    use super::*;

    const ORDER: &str = "7b2e9d40-5a1c-4f83-b6e2-9d0c4a7f3e22";

    fn release(key: &str) -> NewOperation {
        let caller = Caller::anonymous();
        let key = IdempotencyKey::parse(key).unwrap_or_else(|e| panic!("{e}"));
        let call = KlarnaCall::ReleaseRemainingAuthorization {
            order_id: refund_gateway_domain::OrderId::parse(ORDER)
                .unwrap_or_else(|e| panic!("{e}")),
        };
        NewOperation {
            operation_id: OperationId::derive(&caller, Rpc::ReleaseAuthorization, &key),
            caller,
            rpc: Rpc::ReleaseAuthorization,
            idempotency_key: key,
            fingerprint: encoding::fingerprint(
                Rpc::ReleaseAuthorization,
                "default",
                &encoding::encode_call(&call),
                None,
            ),
            klarna_account: "default".into(),
            order_id: ORDER.to_owned(),
            resource_kind: ResourceKind::Order,
            resource_id: ORDER.to_owned(),
            capture_id: None,
            amount: None,
            currency: None,
            reference: None,
            klarna_request: encoding::encode_call(&call),
            trace_id: None,
            traceparent: None,
        }
    }

    fn completion(state: OperationState, payload: &[u8]) -> Completion {
        Completion {
            state,
            response: StoredResponse {
                code: if state == OperationState::Succeeded {
                    0
                } else {
                    9
                },
                message: String::new(),
                payload: payload.to_vec(),
            },
            refund_id: None,
            correlation_id: None,
            detail: "test".into(),
            trace_id: None,
        }
    }

    /// A gateway that stalled past its lease, and was taken over by another that finished the
    /// operation, answers its caller from the record that won, not from its own view.
    #[tokio::test]
    async fn a_holder_that_lost_its_lease_answers_from_the_winning_record() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store: Arc<dyn OperationStore> = Arc::new(
            refund_gateway_store::SqliteStore::open(&dir.path().join("x.sqlite3"))
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let protocol = Protocol::new(
            store.clone(),
            ProtocolSettings::default(),
            Arc::new(|_: &str| None),
            Arc::new(|_: &Operation, _: &KlarnaCall, _: &Accepted| Vec::new()),
        );
        let new = release("stalled");
        let id = new.operation_id;
        let (stalled, winner) = (LeaseHolder::new(), LeaseHolder::new());
        let now = OffsetDateTime::now_utc();
        store
            .claim(new, stalled, now, Duration::ZERO)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            store
                .take_over(id, winner, now, Duration::from_secs(30), None, None)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        );
        assert!(
            store
                .finish(
                    id,
                    winner,
                    completion(OperationState::Succeeded, b"won"),
                    now
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        );

        // The stalled holder believes Klarna refused it.
        let own = outcome::Outcome::Final(completion(OperationState::Failed, b"mine"));
        let answer = protocol
            .record(id, Rpc::RefundOrder, stalled, own, None, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(answer.response.code, 0);
        assert_eq!(answer.response.payload, b"won");

        // Nor can it turn the finished operation back into a pending one.
        let unknown = outcome::unknown(id, KlarnaError::NoAnswer("reset".into()), "late".into());
        let answer = protocol
            .record(
                id,
                Rpc::RefundOrder,
                stalled,
                unknown,
                Some("context".into()),
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(answer.response.payload, b"won");
        let stored = store
            .get(id)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("gone"));
        assert_eq!(stored.state, OperationState::Succeeded);
        assert_eq!(stored.answer_context, None);
    }
}
