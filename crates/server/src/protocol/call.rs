//! The Klarna call of a mutating operation, stored with the claim so that whoever resolves the
//! operation later (a retry after a crash, the reconciler) sends exactly the same call. Its
//! stored form is `encoding.rs`'s; the serde form derived here is version 0 of it, kept only so
//! calls stored by the first releases stay readable.

use refund_gateway_domain::{
    CaptureId, KlarnaApi, KlarnaApiKind, KlarnaError, KlarnaRefund, OperationId, OrderId,
    ResourceKind, ResourceRef,
};
use serde::{Deserialize, Serialize};

/// A mutating Klarna call.
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

    /// The Klarna resource the call acts on, as a NOT_FOUND answer names it.
    pub fn resource(&self) -> ResourceRef {
        match self {
            Self::CreateRefund { order_id, .. }
            | Self::ReleaseRemainingAuthorization { order_id } => {
                ResourceRef::Order(order_id.to_string())
            }
            Self::ExtendDueDate {
                order_id,
                capture_id,
                ..
            } => ResourceRef::Capture {
                order_id: order_id.to_string(),
                capture_id: capture_id.to_string(),
            },
        }
    }

    /// The resource the call acts on, which its operations are serialized on.
    pub fn serialized_on(&self) -> (ResourceKind, String) {
        (ResourceKind::Order, self.order_id().to_string())
    }

    /// The Klarna API the call goes to.
    pub fn api(&self) -> KlarnaApiKind {
        KlarnaApiKind::OrderManagement
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
}
