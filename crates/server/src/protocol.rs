//! The exactly-once operation protocol (DESIGN §4): claim, replay, per-order serialization,
//! the Klarna call in a task that outlives the caller, leases, outcome recording, and the
//! resolution of operations whose outcome is unknown.
//!
//! Every mutating RPC goes through [`Protocol::execute`]. The RPC supplies the operation's
//! identity and a unit of work (state rules, then the Klarna call, then its encoded answer);
//! the protocol decides whether the work runs at all, and makes sure its outcome is durable
//! before anyone is answered.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use refund_gateway_domain::{
    CaptureId, Claim, Completion, GatewayError, KlarnaApi, KlarnaError, KlarnaRefund, LeaseHolder,
    NewOperation, Operation, OperationId, OperationState, OperationStore, OrderId, StoreError,
    StoredResponse,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::status::{ERROR_DOMAIN, to_status};

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
}

impl Default for ProtocolSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            default_deadline: Duration::from_secs(30),
            deadline_margin: Duration::from_millis(250),
            klarna_idempotency_window: Duration::from_secs(23 * 3600),
        }
    }
}

/// The Klarna call of a mutating operation, stored with the claim so that whoever resolves
/// the operation later (a retry after a crash, the reconciler) sends exactly the same call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum KlarnaCall {
    /// `POST …/orders/{order_id}/refunds`.
    CreateRefund {
        /// The order.
        order_id: OrderId,
        /// The refund.
        refund: KlarnaRefund,
    },
    /// `POST …/orders/{order_id}/release-remaining-authorization`.
    ReleaseRemainingAuthorization {
        /// The order.
        order_id: OrderId,
    },
    /// `PATCH …/captures/{capture_id}/extend-due-date`.
    ExtendDueDate {
        /// The order.
        order_id: OrderId,
        /// The capture.
        capture_id: CaptureId,
        /// Days.
        number_of_days: i32,
    },
}

/// What Klarna said when a call worked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// The refund id, for refunds.
    pub refund_id: Option<String>,
    /// Klarna's correlation id, when it sent one.
    pub correlation_id: Option<String>,
}

impl KlarnaCall {
    /// The order the call is about.
    pub fn order_id(&self) -> &OrderId {
        match self {
            Self::CreateRefund { order_id, .. }
            | Self::ReleaseRemainingAuthorization { order_id }
            | Self::ExtendDueDate { order_id, .. } => order_id,
        }
    }

    /// Sends the call under the operation's Klarna idempotency key.
    pub async fn send(
        &self,
        klarna: &dyn KlarnaApi,
        op: &OperationId,
    ) -> Result<Accepted, KlarnaError> {
        match self {
            Self::CreateRefund { order_id, refund } => {
                let created = klarna.create_refund(order_id, refund, op).await?;
                Ok(Accepted {
                    refund_id: Some(created.refund_id),
                    correlation_id: created.correlation_id,
                })
            }
            Self::ReleaseRemainingAuthorization { order_id } => {
                let receipt = klarna.release_remaining_authorization(order_id, op).await?;
                Ok(Accepted {
                    refund_id: None,
                    correlation_id: receipt.correlation_id,
                })
            }
            Self::ExtendDueDate {
                order_id,
                capture_id,
                number_of_days,
            } => {
                let receipt = klarna
                    .extend_due_date(order_id, capture_id, *number_of_days, op)
                    .await?;
                Ok(Accepted {
                    refund_id: None,
                    correlation_id: receipt.correlation_id,
                })
            }
        }
    }

    /// The stored form.
    pub fn to_json(&self) -> String {
        // Serializing these plain data types cannot fail: no maps with non-string keys, no
        // custom serializers that error.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads the stored form back, validating every value again.
    pub fn from_json(json: &str) -> Result<Self, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }
}

/// A successful answer, encoded, with the Klarna ids the store keeps beside it.
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    /// The encoded response message.
    pub payload: Vec<u8>,
    /// The refund id, for refunds.
    pub refund_id: Option<String>,
    /// Klarna's correlation id.
    pub correlation_id: Option<String>,
}

/// The answer of a mutating RPC: what was stored, and whether this is a replay of it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The stored response (a success payload, or an error status).
    pub response: StoredResponse,
    /// True when an earlier request under the same key produced it.
    pub replayed: bool,
}

impl Answer {
    /// The payload of a success, or the stored error as a status.
    pub fn into_result(self) -> Result<(Vec<u8>, bool), Status> {
        if self.response.code == 0 {
            Ok((self.response.payload, self.replayed))
        } else {
            let mut status = Status::with_details(
                Code::from_i32(self.response.code),
                self.response.message,
                self.response.payload.into(),
            );
            if self.replayed {
                status.metadata_mut().insert(
                    "idempotent-replayed",
                    tonic::metadata::MetadataValue::from_static("true"),
                );
            }
            Err(status)
        }
    }
}

/// The work of one operation: state rules, the Klarna call, the encoded answer.
pub type Work = BoxFuture<'static, Result<Encoded, GatewayError>>;

/// Encodes the answer of a resent call (after a crash or an unknown outcome), where the work
/// that first built it is gone.
pub type ResendEncoder = Arc<dyn Fn(&Operation, &KlarnaCall, &Accepted) -> Vec<u8> + Send + Sync>;

/// Finds the Klarna client of an account by name.
pub type AccountLookup = Arc<dyn Fn(&str) -> Option<Arc<dyn KlarnaApi>> + Send + Sync>;

/// Runs mutating operations exactly once.
#[derive(Clone)]
pub struct Protocol {
    store: Arc<dyn OperationStore>,
    settings: ProtocolSettings,
    accounts: AccountLookup,
    encode_resent: ResendEncoder,
}

impl std::fmt::Debug for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protocol")
            .field("store", &self.store)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// How the work (or a resend) ended, classified by what it proves.
enum Outcome {
    /// Final: stored and replayed forever.
    Final(Completion),
    /// Provably nothing happened: the claim is dropped and the key stays usable.
    NothingHappened(Status, String),
    /// Unknown: PENDING until resolved.
    Unknown(Status, Option<String>, String),
}

fn encode_status(status: &Status) -> StoredResponse {
    StoredResponse {
        code: status.code() as i32,
        message: status.message().to_owned(),
        payload: status.details().to_vec(),
    }
}

fn store_unavailable(e: &StoreError) -> Status {
    tracing::error!(error = %e, "operation store unavailable");
    let mut d = ErrorDetails::new();
    d.set_error_info(
        "STORE_UNAVAILABLE",
        ERROR_DOMAIN,
        std::collections::HashMap::new(),
    );
    d.set_retry_info(Some(Duration::from_secs(1)));
    Status::with_error_details(
        Code::Unavailable,
        "the gateway cannot reach its operation store; retry with the same idempotency key",
        d,
    )
}

fn in_use(op: &Operation, now: OffsetDateTime) -> Status {
    let wait = op
        .lease_expires_at
        .map(|t| (t - now).try_into().unwrap_or(Duration::ZERO))
        .unwrap_or(Duration::from_secs(1))
        .clamp(Duration::from_millis(100), Duration::from_secs(30));
    let mut d = ErrorDetails::new();
    let mut m = std::collections::HashMap::new();
    m.insert("operation_id".to_owned(), op.new.operation_id.to_string());
    d.set_error_info("IDEMPOTENCY_KEY_IN_USE", ERROR_DOMAIN, m);
    d.set_retry_info(Some(wait));
    Status::with_error_details(
        Code::Aborted,
        "another request with this idempotency key is in progress; retry later with the same key",
        d,
    )
}

fn key_reused(op: &Operation) -> Status {
    let mut d = ErrorDetails::new();
    let mut m = std::collections::HashMap::new();
    m.insert("operation_id".to_owned(), op.new.operation_id.to_string());
    d.set_error_info("IDEMPOTENCY_KEY_REUSED", ERROR_DOMAIN, m);
    d.add_precondition_failure_violation(
        "IDEMPOTENCY_KEY_REUSED",
        format!("idempotency_key/{}", op.new.idempotency_key),
        "this idempotency key was used for a different request; use a new key for a new request",
    );
    Status::with_error_details(
        Code::FailedPrecondition,
        "this idempotency key was already used for a different request",
        d,
    )
}

/// Classifies a finished piece of work.
fn classify(result: Result<Encoded, GatewayError>, trace_id: Option<String>) -> Outcome {
    match result {
        Ok(encoded) => Outcome::Final(Completion {
            state: OperationState::Succeeded,
            response: StoredResponse {
                code: 0,
                message: String::new(),
                payload: encoded.payload,
            },
            refund_id: encoded.refund_id,
            correlation_id: encoded.correlation_id,
            detail: "Klarna accepted".to_owned(),
            trace_id,
        }),
        Err(error) => {
            let status = to_status(&error);
            match &error {
                GatewayError::OutcomePending { error: e, .. } => Outcome::Unknown(
                    status,
                    e.correlation_id().map(str::to_owned),
                    format!("outcome unknown: {e}"),
                ),
                GatewayError::Klarna { error: e, .. } if proves_nothing_happened(e) => {
                    Outcome::NothingHappened(status, e.to_string())
                }
                GatewayError::Klarna { error: e, .. } => Outcome::Final(Completion {
                    state: OperationState::Failed,
                    response: encode_status(&status),
                    refund_id: None,
                    correlation_id: e.correlation_id().map(str::to_owned),
                    detail: e.to_string(),
                    trace_id,
                }),
                GatewayError::Precondition(p) => Outcome::Final(Completion {
                    state: OperationState::Failed,
                    response: encode_status(&status),
                    refund_id: None,
                    correlation_id: None,
                    detail: p.to_string(),
                    trace_id,
                }),
                // Validation runs before the claim; reaching here means a rule was checked
                // late, and nothing was sent.
                GatewayError::InvalidArgument(v) => Outcome::NothingHappened(status, v.to_string()),
            }
        }
    }
}

/// A Klarna error of the work that proves the mutation did not happen: it never left, Klarna
/// refused our credentials or our rate, or a read before the mutation failed (mutations whose
/// outcome is unknown arrive as `OutcomePending`, not here).
fn proves_nothing_happened(e: &KlarnaError) -> bool {
    match e {
        KlarnaError::Answered(r) => matches!(r.status, 401 | 429) || r.status >= 500,
        KlarnaError::NotSent(_) | KlarnaError::NoAnswer(_) | KlarnaError::BadResponse(_) => true,
    }
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
        }
    }

    /// The store, for reads (ListOperations).
    pub fn store(&self) -> &Arc<dyn OperationStore> {
        &self.store
    }

    /// Runs `work` for `new` exactly once per operation id, answering within `deadline`
    /// (minus the margin): a stored answer is replayed, a concurrent duplicate is told to
    /// wait, another request under the same key is refused.
    pub async fn execute(
        &self,
        new: NewOperation,
        deadline: Option<Duration>,
        work: Work,
    ) -> Result<Answer, Status> {
        let deadline = deadline.unwrap_or(self.settings.default_deadline);
        let started = tokio::time::Instant::now();
        let answer_by = started + deadline.saturating_sub(self.settings.deadline_margin);
        // Klarna attempts stop at the caller's deadline; later resolution is the reconciler's.
        let klarna_deadline = started + deadline;
        let now = OffsetDateTime::now_utc();
        let operation_id = new.operation_id;
        let fingerprint = new.fingerprint.clone();
        let trace_id = new.trace_id.clone();
        let holder = LeaseHolder::new();
        let claim = self
            .store
            .claim(new, holder, now, self.settings.lease)
            .await
            .map_err(|e| store_unavailable(&e))?;
        let receiver = match claim {
            Claim::New(op) => self.spawn(op, holder, Job::Work(work), klarna_deadline, None),
            Claim::Existing(op) if op.new.fingerprint != fingerprint => {
                return Err(key_reused(&op));
            }
            Claim::Existing(op) if op.state.is_final() => {
                return match op.response {
                    Some(response) => Ok(Answer {
                        response,
                        replayed: true,
                    }),
                    None => Err(store_unavailable(&StoreError::Corrupt(format!(
                        "final operation {operation_id} without a stored answer"
                    )))),
                };
            }
            Claim::Existing(op) if !op.is_unresolved(now) => return Err(in_use(&op, now)),
            Claim::Existing(op) => {
                // The last attempt died or its outcome is unknown: resend the stored call,
                // under the same Klarna key, rather than running the new request's work. A
                // fresh holder: the lease is a new one, whoever held the last.
                let holder = LeaseHolder::new();
                let taken = self
                    .store
                    .take_over(
                        operation_id,
                        holder,
                        now,
                        self.settings.lease,
                        trace_id.clone(),
                    )
                    .await
                    .map_err(|e| store_unavailable(&e))?;
                if !taken {
                    return Err(in_use(&op, now));
                }
                self.spawn(op, holder, Job::Resend, klarna_deadline, trace_id)
            }
        };
        match tokio::time::timeout_at(answer_by, receiver).await {
            Ok(Ok(result)) => result,
            // The task ended without answering: only a panic does that.
            Ok(Err(_)) => Err(Status::internal("the operation's task failed")),
            Err(_) => Err(pending_status(operation_id, "still waiting for Klarna")),
        }
    }

    /// Resolves one unresolved operation found by the reconciler: takes it over, then
    /// resends or reads. Returns the state it ended in, if it took it.
    pub async fn resolve(&self, op: Operation) -> Result<Option<OperationState>, StoreError> {
        let now = OffsetDateTime::now_utc();
        let holder = LeaseHolder::new();
        if !self
            .store
            .take_over(
                op.new.operation_id,
                holder,
                now,
                self.settings.lease,
                Some(RECONCILER.to_owned()),
            )
            .await?
        {
            return Ok(None);
        }
        let deadline = tokio::time::Instant::now() + self.settings.default_deadline;
        let receiver = self.spawn(
            op.clone(),
            holder,
            Job::Resend,
            deadline,
            Some(RECONCILER.to_owned()),
        );
        let _ = receiver.await;
        Ok(self.store.get(op.new.operation_id).await?.map(|o| o.state))
    }

    /// Runs `job` for `op`, whose lease `holder` holds, in a task of its own.
    fn spawn(
        &self,
        op: Operation,
        holder: LeaseHolder,
        job: Job,
        klarna_deadline: tokio::time::Instant,
        trace_id: Option<String>,
    ) -> oneshot::Receiver<Result<Answer, Status>> {
        let (tx, rx) = oneshot::channel();
        let this = self.clone();
        // The task owns the operation from here: it runs to the end even when the caller
        // gives up, so the outcome is always recorded.
        tokio::spawn(async move {
            let answer = refund_gateway_klarna::with_deadline(
                klarna_deadline,
                this.run(op, holder, job, trace_id),
            )
            .await;
            let _ = tx.send(answer);
        });
        rx
    }

    /// Runs `job` under the order lock, keeping `holder`'s lease alive meanwhile, and records
    /// its outcome as `holder`: if the lease was lost (taken over after a stall), the store
    /// ignores the record and the new holder's outcome stands.
    async fn run(
        &self,
        op: Operation,
        holder: LeaseHolder,
        job: Job,
        resend_trace_id: Option<String>,
    ) -> Result<Answer, Status> {
        let id = op.new.operation_id;
        let lock = match self
            .store
            .lock_order(&op.new.klarna_account, &op.new.order_id)
            .await
        {
            Ok(lock) => lock,
            Err(e) => {
                // Nothing was sent: give the key back rather than leave a claim whose state
                // rules never ran for the reconciler to resend.
                if matches!(job, Job::Work(_)) {
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
                return Err(store_unavailable(&e));
            }
        };
        let renewal = self.renew_lease_while_running(id, holder);
        let outcome = match job {
            Job::Work(work) => classify(work.await, op.new.trace_id.clone()),
            Job::Resend => self.resend(&op, resend_trace_id).await,
        };
        renewal.abort();
        let recorded = self.record(id, holder, outcome).await;
        lock.release().await;
        recorded
    }

    /// Renews `holder`'s lease every third of it until aborted, or until the lease is no longer
    /// `holder`'s.
    fn renew_lease_while_running(
        &self,
        id: OperationId,
        holder: LeaseHolder,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.store.clone();
        let lease = self.settings.lease;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                match store
                    .renew_lease(id, holder, OffsetDateTime::now_utc(), lease)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(operation_id = %id, error = %e, "lease renewal failed")
                    }
                }
            }
        })
    }

    /// Records `outcome` as `holder` (the store ignores it when the lease is another's).
    async fn record(
        &self,
        id: OperationId,
        holder: LeaseHolder,
        outcome: Outcome,
    ) -> Result<Answer, Status> {
        let now = OffsetDateTime::now_utc();
        match outcome {
            Outcome::Final(completion) => {
                let response = completion.response.clone();
                self.store
                    .finish(id, holder, completion, now)
                    .await
                    .map_err(|e| store_unavailable(&e))?;
                Ok(Answer {
                    response,
                    replayed: false,
                })
            }
            Outcome::NothingHappened(status, detail) => {
                self.store
                    .abandon(id, holder, detail, now)
                    .await
                    .map_err(|e| store_unavailable(&e))?;
                Err(status)
            }
            Outcome::Unknown(status, correlation_id, detail) => {
                self.store
                    .mark_pending(id, holder, correlation_id, detail, now)
                    .await
                    .map_err(|e| store_unavailable(&e))?;
                Err(status)
            }
        }
    }

    /// A success established without the original work: the answer is rebuilt from the stored
    /// call and what Klarna said.
    fn resent_success(
        &self,
        op: &Operation,
        call: &KlarnaCall,
        accepted: Accepted,
        detail: &str,
        trace_id: Option<String>,
    ) -> Outcome {
        Outcome::Final(Completion {
            state: OperationState::Succeeded,
            response: StoredResponse {
                code: 0,
                message: String::new(),
                payload: (self.encode_resent)(op, call, &accepted),
            },
            refund_id: accepted.refund_id,
            correlation_id: accepted.correlation_id,
            detail: detail.to_owned(),
            trace_id,
        })
    }

    /// Resends the stored call inside Klarna's idempotency window; past it, reads the order
    /// instead, because a resend could then execute a second time.
    async fn resend(&self, op: &Operation, trace_id: Option<String>) -> Outcome {
        let review = |detail: String| {
            let status = review_status(op.new.operation_id, &detail);
            Outcome::Final(Completion {
                state: OperationState::RequiresReview,
                response: encode_status(&status),
                refund_id: None,
                correlation_id: None,
                detail,
                trace_id: trace_id.clone(),
            })
        };
        let call = match KlarnaCall::from_json(&op.new.klarna_request) {
            Ok(call) => call,
            Err(e) => return review(format!("stored Klarna call unreadable: {e}")),
        };
        let Some(klarna) = (self.accounts)(&op.new.klarna_account) else {
            return review(format!(
                "account {:?} is no longer configured",
                op.new.klarna_account
            ));
        };
        let age: Duration = (OffsetDateTime::now_utc() - op.created_at)
            .try_into()
            .unwrap_or(Duration::ZERO);
        if age < self.settings.klarna_idempotency_window {
            return match call.send(klarna.as_ref(), &op.new.operation_id).await {
                Ok(accepted) => self.resent_success(
                    op,
                    &call,
                    accepted,
                    "resent under the same Klarna key; Klarna accepted",
                    trace_id,
                ),
                Err(KlarnaError::Answered(r))
                    if (400..500).contains(&r.status) && !matches!(r.status, 401 | 408 | 429) =>
                {
                    let correlation_id = r.correlation_id.clone();
                    let error = KlarnaError::Answered(r);
                    let status = to_status(&GatewayError::Klarna {
                        error: error.clone(),
                        resource: refund_gateway_domain::ResourceRef::Order(
                            call.order_id().to_string(),
                        ),
                    });
                    Outcome::Final(Completion {
                        state: OperationState::Failed,
                        response: encode_status(&status),
                        refund_id: None,
                        correlation_id,
                        detail: format!("resent under the same Klarna key; {error}"),
                        trace_id,
                    })
                }
                // Still unknown (or provably not sent this time, which says nothing about the
                // first attempt): stays PENDING for the next pass.
                Err(e) => Outcome::Unknown(
                    pending_status(op.new.operation_id, &e.to_string()),
                    e.correlation_id().map(str::to_owned),
                    format!("resend did not settle it: {e}"),
                ),
            };
        }
        match &call {
            KlarnaCall::CreateRefund { order_id, refund } => {
                match klarna.get_order(order_id).await {
                    Ok(order) => {
                        let since = op.created_at - time::Duration::minutes(5);
                        let matches: Vec<_> = order
                            .refunds
                            .iter()
                            .filter(|r| {
                                r.reference == refund.reference
                                    && r.refunded_amount == refund.refunded_amount.minor_units()
                                    && r.refunded_at.is_none_or(|t| t >= since)
                            })
                            .collect();
                        match matches.as_slice() {
                            [one] => {
                                let accepted = Accepted {
                                    refund_id: Some(one.refund_id.clone()),
                                    correlation_id: None,
                                };
                                self.resent_success(
                                    op,
                                    &call,
                                    accepted,
                                    "past Klarna's idempotency window: found the refund on the order",
                                    trace_id,
                                )
                            }
                            [] => review("past Klarna's idempotency window and no matching refund on the order: not resent, to be checked".to_owned()),
                            several => review(format!(
                                "past Klarna's idempotency window and {} refunds match: to be checked",
                                several.len()
                            )),
                        }
                    }
                    Err(e) => Outcome::Unknown(
                        pending_status(op.new.operation_id, &e.to_string()),
                        e.correlation_id().map(str::to_owned),
                        format!("reading the order failed: {e}"),
                    ),
                }
            }
            _ => review(
                "past Klarna's idempotency window; this operation cannot be matched on the order"
                    .to_owned(),
            ),
        }
    }
}

enum Job {
    Work(Work),
    Resend,
}

/// UNAVAILABLE `OUTCOME_PENDING`: retry with the same key.
pub fn pending_status(operation_id: OperationId, why: &str) -> Status {
    to_status(&GatewayError::OutcomePending {
        operation_id: operation_id.to_string(),
        error: KlarnaError::NoAnswer(why.to_owned()),
    })
}

fn review_status(operation_id: OperationId, detail: &str) -> Status {
    let mut d = ErrorDetails::new();
    let mut m = std::collections::HashMap::new();
    m.insert("operation_id".to_owned(), operation_id.to_string());
    d.set_error_info("REQUIRES_REVIEW", ERROR_DOMAIN, m);
    Status::with_error_details(
        Code::Internal,
        format!(
            "the outcome of operation {operation_id} could not be determined and needs review: {detail}"
        ),
        d,
    )
}

/// Runs the reconciler: at start and every `interval`, resolves unresolved operations.
pub async fn reconcile_forever(
    protocol: Protocol,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = reconcile_once(&protocol).await {
            tracing::warn!(error = %e, "reconciler pass failed");
        }
    }
}

/// One reconciler pass. Returns how many operations it settled.
pub async fn reconcile_once(protocol: &Protocol) -> Result<usize, StoreError> {
    let unresolved = protocol
        .store
        .unresolved(OffsetDateTime::now_utc(), 100)
        .await?;
    let mut settled = 0;
    for op in unresolved {
        let id = op.new.operation_id;
        match protocol.resolve(op).await? {
            Some(state) if state.is_final() => {
                tracing::info!(operation_id = %id, state = %state, "reconciler settled an operation");
                settled += 1;
            }
            Some(state) => {
                tracing::info!(operation_id = %id, state = %state, "reconciler: still unresolved")
            }
            None => {}
        }
    }
    Ok(settled)
}
