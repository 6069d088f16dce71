//! The one error every RPC returns. The server maps it to a gRPC status in one place; this
//! enum says what happened, not how it is encoded.

use std::fmt;
use std::time::Duration;

use crate::klarna::KlarnaError;
use crate::validation::Violations;

/// A state rule the request broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PreconditionReason {
    /// The caller's currency is not the order's.
    CurrencyMismatch,
    /// A return fee on an order that does not allow one.
    ReturnFeeNotAllowed,
    /// A due-date extension Klarna did not offer.
    ExtensionNotOffered,
    /// A refund on a transaction Klarna reports CLOSED.
    TransactionClosed,
    /// A refund beyond what the transaction has captured and not yet refunded.
    AmountNotRefundable,
    /// The 201st refund on a transaction.
    TransactionRefundLimit,
    /// The 501st operation on a transaction.
    TransactionOperationLimit,
    /// An RPC sent to an account of the other kind (Order Management vs partner).
    WrongAccountKind,
    /// A receipt reference already linked to another order of the account.
    ReceiptAlreadyLinked,
    /// An operator's resolution of an operation that is not REQUIRES_REVIEW.
    OperationNotInReview,
    /// An operator's "succeeded" naming a refund Klarna does not list with the operation's
    /// amount.
    RefundNotAtKlarna,
    /// The operation was settled as failed by an operator (the answer a replay gets).
    ResolvedAsFailed,
}

impl PreconditionReason {
    /// The machine-readable reason (gRPC ErrorInfo reason).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CurrencyMismatch => "CURRENCY_MISMATCH",
            Self::ReturnFeeNotAllowed => "RETURN_FEE_NOT_ALLOWED",
            Self::ExtensionNotOffered => "EXTENSION_NOT_OFFERED",
            Self::TransactionClosed => "TRANSACTION_CLOSED",
            Self::AmountNotRefundable => "AMOUNT_NOT_REFUNDABLE",
            Self::TransactionRefundLimit => "TRANSACTION_REFUND_LIMIT",
            Self::TransactionOperationLimit => "TRANSACTION_OPERATION_LIMIT",
            Self::WrongAccountKind => "WRONG_ACCOUNT_KIND",
            Self::ReceiptAlreadyLinked => "RECEIPT_ALREADY_LINKED",
            Self::OperationNotInReview => "OPERATION_NOT_IN_REVIEW",
            Self::RefundNotAtKlarna => "REFUND_NOT_AT_KLARNA",
            Self::ResolvedAsFailed => "RESOLVED_AS_FAILED",
        }
    }
}

/// A refusal by a state rule, before anything was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {description}", reason.as_str())]
pub struct Precondition {
    /// Which rule.
    pub reason: PreconditionReason,
    /// What it is about, e.g. `orders/{id}`.
    pub subject: String,
    /// Why, in words.
    pub description: String,
}

/// The Klarna resource a call was about; NOT_FOUND answers name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceRef {
    /// An order.
    Order(String),
    /// A capture of an order.
    Capture {
        /// The order.
        order_id: String,
        /// The capture.
        capture_id: String,
    },
    /// A refund of an order.
    Refund {
        /// The order.
        order_id: String,
        /// The refund.
        refund_id: String,
    },
    /// A payment transaction (partner Payments API).
    Transaction(String),
    /// A capture of a payment transaction.
    PaymentCapture {
        /// The transaction, as the caller named it.
        transaction_id: String,
        /// The capture.
        capture_id: String,
    },
}

impl ResourceRef {
    /// Resource type name, e.g. `klarna.order`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Order(_) => "klarna.order",
            Self::Capture { .. } => "klarna.capture",
            Self::Refund { .. } => "klarna.refund",
            Self::Transaction(_) => "klarna.payment_transaction",
            Self::PaymentCapture { .. } => "klarna.payment_capture",
        }
    }

    /// Resource path, e.g. `orders/{o}/refunds/{r}`.
    pub fn name(&self) -> String {
        match self {
            Self::Order(o) => format!("orders/{o}"),
            Self::Capture {
                order_id,
                capture_id,
            } => format!("orders/{order_id}/captures/{capture_id}"),
            Self::Refund {
                order_id,
                refund_id,
            } => format!("orders/{order_id}/refunds/{refund_id}"),
            Self::Transaction(t) => format!("payment/transactions/{t}"),
            Self::PaymentCapture {
                transaction_id,
                capture_id,
            } => format!("payment/transactions/{transaction_id}/captures/{capture_id}"),
        }
    }

    /// The order or transaction this resource belongs to.
    pub fn order(&self) -> ResourceRef {
        match self {
            Self::Order(o) => Self::Order(o.clone()),
            Self::Capture { order_id, .. } | Self::Refund { order_id, .. } => {
                Self::Order(order_id.clone())
            }
            Self::Transaction(t)
            | Self::PaymentCapture {
                transaction_id: t, ..
            } => Self::Transaction(t.clone()),
        }
    }
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Everything an RPC can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The request is malformed; nothing was read or sent.
    #[error("invalid request: {0}")]
    InvalidArgument(Violations),
    /// A state rule refused the request; nothing was sent.
    #[error("{0}")]
    Precondition(Precondition),
    /// A mutating Klarna call may or may not have taken effect (no answer, 5xx). Never a
    /// failure: a resend under the same idempotency key reaches Klarna under the same Klarna
    /// key and so cannot execute twice.
    #[error("outcome of operation {operation_id} unknown: {error}")]
    OutcomePending {
        /// The operation whose outcome is unknown.
        operation_id: String,
        /// What went wrong.
        error: KlarnaError,
    },
    /// The Klarna call about `resource` failed.
    #[error("{error} ({resource})")]
    Klarna {
        /// What Klarna said, or why it said nothing.
        error: KlarnaError,
        /// What the call was about.
        resource: ResourceRef,
    },
    /// The idempotency key was used before for a different request.
    #[error(
        "idempotency key {idempotency_key:?} was used for a different request (operation {operation_id})"
    )]
    KeyReused {
        /// The operation that owns the key.
        operation_id: String,
        /// The key.
        idempotency_key: String,
    },
    /// Another request with the same key is being worked on.
    #[error("operation {operation_id} is in progress")]
    KeyInUse {
        /// The operation in progress.
        operation_id: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// The call did not prove who is calling (no, a malformed or an unknown token). Says what
    /// was wrong with the call, never which callers exist.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller may not do this; nothing was stored or sent.
    #[error("permission denied ({reason}): {description}")]
    PermissionDenied {
        /// The rule (`RPC_NOT_PERMITTED`, `ACCOUNT_NOT_PERMITTED`, …).
        reason: &'static str,
        /// What was refused, in words.
        description: String,
    },
    /// The caller's own rate limit is spent; nothing was stored or sent.
    #[error("caller {caller} is over its rate limit")]
    CallerRateLimited {
        /// The caller.
        caller: String,
        /// When a call would be let in again.
        retry_after: Duration,
    },
    /// The gateway is at its limit of concurrent calls and sheds this one at once.
    #[error("the gateway is at its limit of {limit} concurrent calls")]
    Overloaded {
        /// The limit.
        limit: usize,
    },
    /// The call's deadline (less the margin its answer needs to reach the caller) passed
    /// while it waited for its turn behind the calls being served; nothing was decoded,
    /// stored or sent.
    #[error(
        "gave up waiting for a turn after {waited:?}, too close to the deadline: the gateway was serving as many calls as it serves at once"
    )]
    WaitedPastDeadline {
        /// How long the call waited.
        waited: Duration,
    },
    /// The caller's deadline leaves too little time to attempt the mutation safely; nothing
    /// was stored or sent.
    #[error("the deadline ({remaining:?}) is shorter than the {minimum:?} a mutation needs")]
    DeadlineTooShort {
        /// What the caller left.
        remaining: Duration,
        /// What a mutation needs.
        minimum: Duration,
    },
    /// The request message is larger than the gateway decodes.
    #[error("the request message is larger than {limit} bytes")]
    MessageTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// No order of the account is known by that reference (see `reference`).
    #[error("no order of account {account:?} has the {field} {reference:?}")]
    ReferenceNotFound {
        /// The account looked in.
        account: String,
        /// The request's field naming the reference: `receipt_reference` or
        /// `klarna_reference`.
        field: &'static str,
        /// The reference, as looked up (trimmed).
        reference: String,
    },
    /// No operation of that name that the caller may see.
    #[error("no operation {operation_id} that this caller may see")]
    OperationNotFound {
        /// The operation id looked for.
        operation_id: String,
    },
    /// The operation store cannot be reached; nothing was decided.
    #[error("operation store unavailable: {0}")]
    StoreUnavailable(String),
    /// The outcome could not be established by the gateway; a person must look.
    #[error("operation {operation_id} requires review: {detail}")]
    RequiresReview {
        /// The operation.
        operation_id: String,
        /// Why.
        detail: String,
    },
    /// A fault of the gateway itself (a task that failed, a stored answer it cannot read).
    /// Says what failed, never with a secret.
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    /// True when this is INVALID_ARGUMENT with a violation of `field`.
    pub fn violates(&self, field: &str) -> bool {
        matches!(self, Self::InvalidArgument(v) if v.as_slice().iter().any(|f| f.field == field))
    }
}

impl From<Violations> for GatewayError {
    fn from(v: Violations) -> Self {
        Self::InvalidArgument(v)
    }
}

impl From<Precondition> for GatewayError {
    fn from(p: Precondition) -> Self {
        Self::Precondition(p)
    }
}
