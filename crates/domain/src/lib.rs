//! The refund gateway's domain: everything the gateway knows about money, Klarna ids, order
//! lines and the rules a request must satisfy, with no I/O. Values are validated once, when
//! they are built from a request at the server's edge, and trusted everywhere after: an
//! [`OrderId`] is always a UUID, an [`Amount`] always a refundable number of minor units.
//!
//! # Layout
//! - [`validation`]: [`FieldViolation`] and the [`Violations`] collector that lets a request
//!   report every bad field at once, with paths like `order_lines[3].total_amount`.
//! - [`money`]: [`Amount`] (positive minor units within Klarna's limit), [`Currency`],
//!   [`CountryCode`]. There are no floats anywhere near money.
//! - [`ids`]: Klarna's [`OrderId`], [`CaptureId`], [`RefundId`], and the caller's
//!   [`IdempotencyKey`].
//! - [`order_line`]: [`OrderLine`] and its parts, checked against Klarna's limits.
//! - [`command`]: the validated requests ([`RefundOrder`], [`ReleaseAuthorization`],
//!   [`ExtendDueDate`], the partner [`RefundCapture`] and [`RefundTransaction`], the reads)
//!   and the drafts they are validated from.
//! - [`order`]: what Klarna reports about an order, its captures and refunds.
//! - [`rules`]: the state rules that need Klarna's view of the order (currency, return fee,
//!   offered due-date extensions).
//! - [`operation`]: operation identity: [`Caller`], [`Rpc`], [`OperationId`].
//! - [`klarna`]: the [`KlarnaApi`] port the adapter implements, and [`KlarnaError`].
//! - [`payments`]: the partner Payments API: KRN ids ([`PaymentTransactionId`],
//!   [`PaymentCaptureId`]), [`LineItem`], [`PaymentTransaction`] and the [`PaymentsApi`] port.
//! - [`reconcile`]: [`compare_refunds`], Klarna's refunds on one order or transaction
//!   against the gateway's operations on it.
//! - [`reference`]: in-store refunds by receipt: [`ReceiptReference`], [`KlarnaReference`],
//!   [`OrderSelector`] (an order named by id or by a reference) and [`refundable_lines`].
//! - [`routing`]: [`Routing`]: which account a request goes to (named, its store's, the first
//!   matching route, the only one of its kind).
//! - [`outcome`]: what a Klarna result proves: [`classify_mutation`] over an operation's
//!   attempts (succeeded, refused, unknown, nothing happened) and [`classify_read`]; the only
//!   place that decides it.
//! - [`store`]: the [`OperationStore`] port: durable operations and their audit trail.
//! - [`trace`]: [`TraceParent`], a W3C trace context kept with an operation.
//! - [`error`]: [`GatewayError`], the one error every RPC returns.

pub mod command;
pub mod error;
pub mod ids;
pub mod klarna;
pub mod money;
pub mod operation;
pub mod order;
pub mod order_line;
pub mod outcome;
pub mod payments;
pub mod reconcile;
pub mod reference;
pub mod routing;
pub mod rules;
pub mod store;
pub mod trace;
pub mod validation;

pub use command::{
    ExtendDueDate, ExtendDueDateDraft, ExtendDueDateOptionsQuery, OrderQuery, RefundCapture,
    RefundCaptureDraft, RefundOrder, RefundOrderDraft, RefundQuery, RefundTransaction,
    RefundTransactionDraft, ReleaseAuthorization, ReleaseAuthorizationDraft, TransactionQuery,
};
pub use error::{GatewayError, Precondition, PreconditionReason, ResourceRef};
pub use ids::{CaptureId, IdempotencyKey, OrderId, RefundId};
pub use klarna::{
    KlarnaApi, KlarnaError, KlarnaErrorResponse, KlarnaFieldError, KlarnaReceipt, KlarnaRefund,
    RefundCreated,
};
pub use money::{Amount, CountryCode, Currency};
pub use operation::{Caller, OperationId, OperationName, RPCS, ResourceKind, Rpc};
pub use order::{Capture, ExtendDueDateOption, ExtendDueDateOptions, Order, OrderStatus, Refund};
pub use order_line::{
    LineTypeInput, OrderLine, OrderLineDraft, OrderLineType, ProductIdentifiers, Subscription,
    SubscriptionDraft, SubscriptionInterval,
};
pub use outcome::{
    Attempt, KlarnaApiKind, ReadVerdict, Verdict, classify_mutation, classify_read,
    refusal_needs_checking,
};
pub use payments::{
    LineItem, LineItemDraft, PartnerRefund, PartnerRefundCreated, PaymentCapture, PaymentCaptureId,
    PaymentRefund, PaymentTransaction, PaymentTransactionId, PaymentsApi, TransactionState,
};
pub use reconcile::{ListedRefund, Mismatch, MismatchKind, compare_refunds};
pub use reference::{
    KlarnaReference, OrderSelector, ReceiptReference, ReferenceQuery, StoreId, refundable_lines,
};
pub use routing::{Route, RouteRequest, RouteSource, Routing, RoutingConfigError, Store};
pub use store::{
    AttentionSummary, AuditEvent, Claim, Completion, LeaseHolder, LinkOutcome, NewOperation,
    Operation, OperationFilter, OperationPage, OperationState, OperationStore, OrderLock,
    OrderReference, ReferenceKind, Resolution, StoreError, StoredResponse, Unresolved,
    WebhookEvent,
};
pub use trace::TraceParent;
pub use validation::{FieldViolation, Violations};
