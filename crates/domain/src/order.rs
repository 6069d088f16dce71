//! What Klarna reports about an order. These are Klarna's facts as read, not requests: they
//! are not validated against our limits, and amounts are minor units of the order's currency.

use time::OffsetDateTime;

use crate::order_line::OrderLine;

/// An order's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    /// Nothing captured.
    Authorized,
    /// Partly captured.
    PartCaptured,
    /// Fully captured.
    Captured,
    /// Cancelled.
    Cancelled,
    /// Authorization expired.
    Expired,
    /// Closed.
    Closed,
    /// A status this gateway does not know (kept verbatim in [`Order::klarna_status`]).
    Unknown,
}

impl OrderStatus {
    /// The status for Klarna's wire name, ignoring case.
    pub fn from_klarna_name(name: &str) -> Self {
        match name.to_ascii_uppercase().as_str() {
            "AUTHORIZED" => Self::Authorized,
            "PART_CAPTURED" => Self::PartCaptured,
            "CAPTURED" => Self::Captured,
            "CANCELLED" => Self::Cancelled,
            "EXPIRED" => Self::Expired,
            "CLOSED" => Self::Closed,
            _ => Self::Unknown,
        }
    }
}

/// A Klarna order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Klarna's order id as Klarna sent it.
    pub order_id: String,
    /// Parsed status.
    pub status: OrderStatus,
    /// Status exactly as Klarna sent it.
    pub klarna_status: String,
    /// Current order amount.
    pub order_amount: i64,
    /// Order amount at purchase.
    pub original_order_amount: i64,
    /// Sum of captures.
    pub captured_amount: i64,
    /// Sum of refunds.
    pub refunded_amount: i64,
    /// Authorized, not captured.
    pub remaining_authorized_amount: i64,
    /// Purchase currency, upper case.
    pub currency: String,
    /// Purchase country, upper case.
    pub purchase_country: String,
    /// Merchant reference 1.
    pub merchant_reference1: String,
    /// Merchant reference 2.
    pub merchant_reference2: String,
    /// Klarna's reference.
    pub klarna_reference: String,
    /// The order's lines as Klarna lists them (empty when it lists none).
    pub order_lines: Vec<OrderLine>,
    /// Type of the initial payment method (`INVOICE`, `CARD`, …), upper case, if reported.
    pub payment_method_type: Option<String>,
    /// Captures.
    pub captures: Vec<Capture>,
    /// Refunds.
    pub refunds: Vec<Refund>,
}

/// A capture of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// Klarna's capture id.
    pub capture_id: String,
    /// Captured amount.
    pub captured_amount: i64,
    /// Refunded against this capture.
    pub refunded_amount: i64,
    /// When it was captured.
    pub captured_at: Option<OffsetDateTime>,
    /// Klarna's reference of the capture.
    pub klarna_reference: String,
}

/// A refund of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    /// Klarna's refund id.
    pub refund_id: String,
    /// Refunded amount.
    pub refunded_amount: i64,
    /// When it was refunded.
    pub refunded_at: Option<OffsetDateTime>,
    /// Text shown to the customer.
    pub description: String,
    /// Settlement reference.
    pub reference: String,
    /// Refunded lines.
    pub order_lines: Vec<OrderLine>,
}

/// Due-date extensions Klarna offers for a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtendDueDateOptions {
    /// Currency of the fees, upper case.
    pub currency: String,
    /// The offers.
    pub options: Vec<ExtendDueDateOption>,
}

/// One offered extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtendDueDateOption {
    /// Days the due date moves by.
    pub number_of_days: i32,
    /// Fee in minor units.
    pub amount: i64,
}
