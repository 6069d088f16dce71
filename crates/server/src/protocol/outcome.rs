//! Turns what the work (or a resend) returned, with the attempts the adapter logged, into what
//! the protocol records. The verdict itself is the domain's
//! [`classify_mutation`](refund_gateway_domain::classify_mutation): this module only builds
//! its input and the record that goes with each verdict.

use refund_gateway_domain::{
    Attempt, Completion, GatewayError, KlarnaApiKind, KlarnaError, OperationId, OperationState,
    ReadVerdict, StoredResponse, Verdict, classify_mutation, classify_read,
};

use crate::status::{to_status, to_stored};

impl Outcome {
    /// A final refusal (FAILED).
    pub(super) fn is_refusal(&self) -> bool {
        matches!(self, Self::Final(c) if c.state == OperationState::Failed)
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

/// What to record for an operation, by verdict.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Final: stored and replayed forever.
    Final(Completion),
    /// Provably nothing happened: the claim is given back and the key stays usable.
    NothingHappened(GatewayError),
    /// Unknown: PENDING until resolved.
    Unknown {
        /// The caller's answer (`OUTCOME_PENDING`).
        error: GatewayError,
        /// Klarna's correlation id of the last attempt, if any.
        correlation_id: Option<String>,
        /// For the audit trail.
        detail: String,
    },
}

/// The attempts of work that stopped before its mutation was sent: a state rule's refusal (or
/// Klarna's definitive answer to a read a rule needed) is final; anything else proves that
/// nothing happened.
fn unsent(error: &GatewayError) -> Attempt {
    match error {
        GatewayError::Precondition(_) => Attempt::RefusedByRule,
        GatewayError::Klarna { error, .. } => match classify_read(error) {
            ReadVerdict::Refused => Attempt::RefusedByRule,
            ReadVerdict::Unavailable => Attempt::NotSent,
        },
        _ => Attempt::NotSent,
    }
}

/// The record of a success.
pub(super) fn succeeded(encoded: Encoded, detail: &str, trace_id: Option<String>) -> Outcome {
    Outcome::Final(Completion {
        state: OperationState::Succeeded,
        response: StoredResponse {
            code: 0,
            message: String::new(),
            payload: encoded.payload,
        },
        refund_id: encoded.refund_id,
        correlation_id: encoded.correlation_id,
        detail: detail.to_owned(),
        trace_id,
    })
}

/// The record of a final refusal.
pub(super) fn refused(error: &GatewayError, detail: String, trace_id: Option<String>) -> Outcome {
    let correlation_id = match error {
        GatewayError::Klarna { error, .. } => error.correlation_id().map(str::to_owned),
        _ => None,
    };
    Outcome::Final(Completion {
        state: OperationState::Failed,
        response: to_stored(&to_status(error)),
        refund_id: None,
        correlation_id,
        detail,
        trace_id,
    })
}

/// The record of an unknown outcome: the caller is told to retry with the same key.
pub(super) fn unknown(operation_id: OperationId, error: KlarnaError, detail: String) -> Outcome {
    Outcome::Unknown {
        correlation_id: error.correlation_id().map(str::to_owned),
        error: GatewayError::OutcomePending {
            operation_id: operation_id.to_string(),
            error,
        },
        detail,
    }
}

/// The record of a review: the gateway could not establish the outcome.
pub(super) fn review(
    operation_id: OperationId,
    detail: String,
    trace_id: Option<String>,
) -> Outcome {
    let error = GatewayError::RequiresReview {
        operation_id: operation_id.to_string(),
        detail: detail.clone(),
    };
    Outcome::Final(Completion {
        state: OperationState::RequiresReview,
        response: to_stored(&to_status(&error)),
        refund_id: None,
        correlation_id: None,
        detail,
        trace_id,
    })
}

/// Judges a piece of work run for the first time under a fresh claim. `attempts` are the
/// attempts of its mutation, as the adapter logged them (none if it stopped before sending).
pub(super) fn judge_work(
    operation_id: OperationId,
    api: KlarnaApiKind,
    result: Result<Encoded, GatewayError>,
    mut attempts: Vec<Attempt>,
    trace_id: Option<String>,
) -> Outcome {
    let error = match result {
        // The work read Klarna's acceptance itself.
        Ok(encoded) => return succeeded(encoded, "Klarna accepted", trace_id),
        Err(error) => error,
    };
    if attempts.is_empty() {
        attempts.push(unsent(&error));
    }
    judge_failure(operation_id, api, &attempts, error, trace_id, "")
}

/// Judges a failed mutation from its whole history.
pub(super) fn judge_failure(
    operation_id: OperationId,
    api: KlarnaApiKind,
    attempts: &[Attempt],
    error: GatewayError,
    trace_id: Option<String>,
    context: &str,
) -> Outcome {
    let klarna_error = match &error {
        GatewayError::Klarna { error, .. } => error.clone(),
        GatewayError::OutcomePending { error, .. } => error.clone(),
        other => KlarnaError::NoAnswer(other.to_string()),
    };
    match classify_mutation(api, attempts) {
        Verdict::Refused => refused(&error, format!("{context}{error}"), trace_id),
        Verdict::NothingHappened => Outcome::NothingHappened(error),
        // Succeeded with an error means the acceptance was logged but not read back by the
        // work: the outcome is not established, so it is not reported either way.
        Verdict::Unknown | Verdict::Succeeded => unknown(
            operation_id,
            klarna_error,
            format!("{context}outcome unknown: {error}"),
        ),
    }
}
