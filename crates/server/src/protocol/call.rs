//! The Klarna call of a mutating operation, stored with the claim so that whoever resolves the
//! operation later (a retry after a crash, the reconciler) sends exactly the same call. Its
//! stored form is `encoding.rs`'s; the serde form derived here is version 0 of it, kept only so
//! calls stored by the first releases stay readable.

use refund_gateway_domain::{
    CaptureId, KlarnaApiKind, KlarnaError, KlarnaRefund, OperationId, OrderId, PartnerRefund,
    PaymentCaptureId, PaymentTransactionId, PaymentsApi, ResourceKind, ResourceRef,
};
use serde::{Deserialize, Serialize};

use crate::gateway::KlarnaAccount;

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
    /// Payments API: `POST …/payment/captures/{capture_id}/refunds`.
    RefundCapture {
        /// The transaction, as the caller named it (serialization, limits, audit).
        transaction_id: PaymentTransactionId,
        /// The capture refunded.
        capture_id: PaymentCaptureId,
        /// The refund.
        refund: PartnerRefund,
    },
    /// Payments API: `POST …/payment/transactions/{transaction_id}/refunds`.
    RefundTransaction {
        /// The transaction.
        transaction_id: PaymentTransactionId,
        /// The refund, with its line items.
        refund: PartnerRefund,
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
    /// The order the call is about; `None` for partner calls.
    pub fn order_id(&self) -> Option<&OrderId> {
        match self {
            Self::CreateRefund { order_id, .. }
            | Self::ReleaseRemainingAuthorization { order_id }
            | Self::ExtendDueDate { order_id, .. } => Some(order_id),
            Self::RefundCapture { .. } | Self::RefundTransaction { .. } => None,
        }
    }

    /// The payment transaction the call is about; `None` for Order Management calls.
    pub fn transaction_id(&self) -> Option<&PaymentTransactionId> {
        match self {
            Self::RefundCapture { transaction_id, .. }
            | Self::RefundTransaction { transaction_id, .. } => Some(transaction_id),
            _ => None,
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
            Self::RefundCapture {
                transaction_id,
                capture_id,
                ..
            } => ResourceRef::PaymentCapture {
                transaction_id: transaction_id.to_string(),
                capture_id: capture_id.to_string(),
            },
            Self::RefundTransaction { transaction_id, .. } => {
                ResourceRef::Transaction(transaction_id.to_string())
            }
        }
    }

    /// The resource the call acts on, which its operations are serialized on.
    pub fn serialized_on(&self) -> (ResourceKind, String) {
        match (self.order_id(), self.transaction_id()) {
            (Some(order_id), _) => (ResourceKind::Order, order_id.to_string()),
            (None, Some(transaction_id)) => (ResourceKind::Transaction, transaction_id.to_string()),
            // Every call is about an order or a transaction.
            (None, None) => (ResourceKind::Order, String::new()),
        }
    }

    /// The Klarna API the call goes to.
    pub fn api(&self) -> KlarnaApiKind {
        match self {
            Self::RefundCapture { .. } | Self::RefundTransaction { .. } => KlarnaApiKind::Payments,
            _ => KlarnaApiKind::OrderManagement,
        }
    }

    /// Sends the call under the operation's Klarna idempotency key, to `account`, which must
    /// speak the call's API (an account reconfigured to another kind is not sent to).
    pub async fn send(
        &self,
        account: &KlarnaAccount,
        op: &OperationId,
    ) -> Result<Accepted, KlarnaError> {
        let klarna = match (account, self.api()) {
            (KlarnaAccount::OrderManagement(klarna), KlarnaApiKind::OrderManagement) => klarna,
            (KlarnaAccount::Partner(payments), KlarnaApiKind::Payments) => {
                return self.send_to_partner(payments.as_ref(), op).await;
            }
            _ => {
                return Err(KlarnaError::NotSent(
                    "the account is configured for the other Klarna API".to_owned(),
                ));
            }
        };
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
            Self::RefundCapture { .. } | Self::RefundTransaction { .. } => Err(
                KlarnaError::NotSent("a partner call to an Order Management account".to_owned()),
            ),
        }
    }

    async fn send_to_partner(
        &self,
        payments: &dyn PaymentsApi,
        op: &OperationId,
    ) -> Result<Accepted, KlarnaError> {
        let created = match self {
            Self::RefundCapture {
                capture_id, refund, ..
            } => payments.refund_capture(capture_id, refund, op).await?,
            Self::RefundTransaction {
                transaction_id,
                refund,
            } => {
                payments
                    .refund_transaction(transaction_id, refund, op)
                    .await?
            }
            _ => {
                return Err(KlarnaError::NotSent(
                    "an Order Management call to a partner account".to_owned(),
                ));
            }
        };
        Ok(Accepted {
            refund_id: Some(created.payment_refund_id),
            correlation_id: created.correlation_id,
        })
    }
}
