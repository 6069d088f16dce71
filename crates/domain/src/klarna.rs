//! The port to Klarna. The adapter crate implements [`KlarnaApi`] over HTTP; the server only
//! sees this trait, so what Klarna said is classified once, here, into what it proves.

use std::time::Duration;

use async_trait::async_trait;

use crate::ids::{CaptureId, OrderId, RefundId};
use crate::money::Amount;
use crate::operation::OperationId;
use crate::order::{ExtendDueDateOptions, Order, Refund};
use crate::order_line::OrderLine;
use crate::outcome::KlarnaApiKind;

/// The refund as sent to Klarna.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KlarnaRefund {
    /// Amount in minor units.
    pub refunded_amount: Amount,
    /// Text for the customer.
    pub description: Option<String>,
    /// Settlement reference: the caller's, else the operation id.
    pub reference: String,
    /// Refunded lines.
    pub order_lines: Vec<OrderLine>,
}

/// Klarna accepted a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundCreated {
    /// Klarna's refund id (`Refund-Id` header).
    pub refund_id: String,
    /// Klarna's correlation id, when it sent one.
    pub correlation_id: Option<String>,
}

/// Klarna accepted a request that returns no resource (release, extension).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KlarnaReceipt {
    /// Klarna's correlation id, when it sent one.
    pub correlation_id: Option<String>,
}

/// Klarna Order Management, one merchant account. Every mutating call carries `key` as
/// `Klarna-Idempotency-Key`, so a resend of the same operation is executed at most once.
#[async_trait]
pub trait KlarnaApi: Send + Sync + std::fmt::Debug {
    /// `GET /ordermanagement/v1/orders/{order_id}`.
    async fn get_order(&self, order_id: &OrderId) -> Result<Order, KlarnaError>;

    /// `POST /ordermanagement/v1/orders/{order_id}/refunds`.
    async fn create_refund(
        &self,
        order_id: &OrderId,
        refund: &KlarnaRefund,
        key: &OperationId,
    ) -> Result<RefundCreated, KlarnaError>;

    /// `GET /ordermanagement/v1/orders/{order_id}/refunds/{refund_id}`.
    async fn get_refund(
        &self,
        order_id: &OrderId,
        refund_id: &RefundId,
    ) -> Result<Refund, KlarnaError>;

    /// `POST /ordermanagement/v1/orders/{order_id}/release-remaining-authorization`.
    async fn release_remaining_authorization(
        &self,
        order_id: &OrderId,
        key: &OperationId,
    ) -> Result<KlarnaReceipt, KlarnaError>;

    /// `GET …/orders/{order_id}/captures/{capture_id}/extend-due-date-options`.
    async fn get_extend_due_date_options(
        &self,
        order_id: &OrderId,
        capture_id: &CaptureId,
    ) -> Result<ExtendDueDateOptions, KlarnaError>;

    /// `PATCH …/orders/{order_id}/captures/{capture_id}/extend-due-date`.
    async fn extend_due_date(
        &self,
        order_id: &OrderId,
        capture_id: &CaptureId,
        number_of_days: i32,
        key: &OperationId,
    ) -> Result<KlarnaReceipt, KlarnaError>;
}

/// An error answer from Klarna, as parsed from its body (which may be missing or not JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KlarnaErrorResponse {
    /// HTTP status.
    pub status: u16,
    /// Klarna's `error_code`, if the body had one.
    pub error_code: Option<String>,
    /// Klarna's `error_messages` (or its singular `error_message`).
    pub messages: Vec<String>,
    /// Klarna's `correlation_id`, from the body or a header.
    pub correlation_id: Option<String>,
    /// `Retry-After`, when Klarna sent one (429, 503).
    pub retry_after: Option<Duration>,
    /// The API that answered.
    pub api: KlarnaApiKind,
    /// True when the body held Klarna's error object (an `error_code`, or the Payments API's
    /// `error_id`). The Payments API's DDoS protection answers 403 without one.
    pub error_object: bool,
    /// The Payments API's `error_type` (`INPUT_ERROR`, `ACCESS_ERROR`, …).
    pub error_type: Option<String>,
    /// The Payments API's per-field errors (`errors[]`).
    pub field_errors: Vec<KlarnaFieldError>,
}

/// One entry of the Payments API's `errors[]`: a request parameter Klarna refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KlarnaFieldError {
    /// Klarna's name of the parameter, e.g. `line_items[1].total_amount`.
    pub parameter: String,
    /// Why.
    pub message: String,
}

/// Why a Klarna call did not succeed, classified by what it proves about the outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KlarnaError {
    /// Klarna answered with an error status.
    #[error("Klarna answered {} {}", .0.status, .0.error_code.as_deref().unwrap_or("(no error_code)"))]
    Answered(Box<KlarnaErrorResponse>),
    /// The request provably never reached Klarna (connection refused, DNS, TLS handshake).
    #[error("Klarna unreachable, request not sent: {0}")]
    NotSent(String),
    /// Not sent: the account's outbound rate limit (Klarna's quota) would have held the
    /// attempt past the call's deadline. A permit is expected after the duration given.
    #[error("Klarna's quota for this account is used up: not sent; a permit in {0:?}")]
    Throttled(Duration),
    /// The request may have reached Klarna but no answer came (timeout, reset, cut body).
    #[error("no answer from Klarna: {0}")]
    NoAnswer(String),
    /// Klarna answered success with a body or headers this adapter cannot understand.
    #[error("unexpected answer from Klarna: {0}")]
    BadResponse(String),
}

impl KlarnaError {
    /// The HTTP status, when Klarna answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Answered(r) => Some(r.status),
            _ => None,
        }
    }

    /// Klarna's correlation id, when it sent one.
    pub fn correlation_id(&self) -> Option<&str> {
        match self {
            Self::Answered(r) => r.correlation_id.as_deref(),
            _ => None,
        }
    }

    /// True when a mutating call that ended with this error, as its only attempt, may or
    /// may not have taken effect: such an outcome must never be reported as a failure. The
    /// verdict is [`crate::outcome::classify_mutation`]'s.
    pub fn outcome_unknown(&self) -> bool {
        crate::outcome::classify_mutation(
            match self {
                Self::Answered(r) => r.api,
                _ => KlarnaApiKind::OrderManagement,
            },
            &[crate::outcome::Attempt::of_error(self)],
        ) == crate::outcome::Verdict::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_refund_round_trips_and_is_validated_on_the_way_back() {
        let refund = KlarnaRefund {
            refunded_amount: Amount::parse(9500).unwrap_or_else(|e| panic!("{e}")),
            description: Some("d".into()),
            reference: "r".into(),
            order_lines: vec![],
        };
        let json = serde_json::to_string(&refund).unwrap_or_else(|e| panic!("{e}"));
        let back: KlarnaRefund = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, refund);
        let tampered = json.replace("9500", "0");
        assert!(serde_json::from_str::<KlarnaRefund>(&tampered).is_err());
    }
}
