//! Klarna's resources as the simulator keeps them (orders, captures, refunds, order lines) and
//! their JSON form, which follows Klarna's `GET order` / `GET capture` / `GET refund` bodies.
//!
//! Amounts are `i64` minor units. Timestamps are RFC 3339 UTC with milliseconds
//! (`2022-07-08T09:48:17.738Z`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize, Serializer};
use time::OffsetDateTime;
use uuid::Uuid;

/// Order status as Klarna reports it.
///
/// `AUTHORIZED`, `PART_CAPTURED` and `CAPTURED` follow from the captures (and a released
/// authorization); `CANCELLED`, `EXPIRED` and `CLOSED` are terminal states set when seeding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Nothing captured yet.
    Authorized,
    /// Something, but not everything, captured; the rest is still authorized.
    PartCaptured,
    /// Fully captured, or the remaining authorization was released after a capture.
    Captured,
    /// Cancelled by the merchant.
    Cancelled,
    /// The authorization expired.
    Expired,
    /// Closed.
    Closed,
}

impl OrderStatus {
    /// The upper-case name Klarna uses (`PART_CAPTURED`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authorized => "AUTHORIZED",
            Self::PartCaptured => "PART_CAPTURED",
            Self::Captured => "CAPTURED",
            Self::Cancelled => "CANCELLED",
            Self::Expired => "EXPIRED",
            Self::Closed => "CLOSED",
        }
    }
}

/// `order_line.type`; an unknown value in a request is a 422.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderLineType {
    /// A physical good.
    Physical,
    /// A discount (negative amounts).
    Discount,
    /// Shipping.
    ShippingFee,
    /// US sales tax.
    SalesTax,
    /// Store credit.
    StoreCredit,
    /// Gift card.
    GiftCard,
    /// A digital good.
    Digital,
    /// A surcharge.
    Surcharge,
    /// A return fee kept by the merchant on a refund: negative `unit_price` and `total_amount`.
    ReturnFee,
}

/// `order_line.product_identifiers`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProductIdentifiers {
    /// Brand, at most 70 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    /// Category path, at most 750 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category_path: Option<String>,
    /// GTIN, at most 50 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global_trade_item_number: Option<String>,
    /// MPN, at most 70 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manufacturer_part_number: Option<String>,
    /// Colour, at most 64 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    /// Size, at most 64 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
}

/// Subscription cadence unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SubscriptionInterval {
    /// Daily.
    Day,
    /// Weekly.
    Week,
    /// Monthly.
    Month,
    /// Yearly.
    Year,
}

/// `order_line.subscription`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// Product name, at most 255 characters.
    pub name: String,
    /// Cadence unit.
    pub interval: SubscriptionInterval,
    /// Number of intervals, at least 1.
    pub interval_count: i64,
}

/// A Klarna order line, as accepted in requests and seeds and returned in order JSON.
///
/// `name`, `quantity`, `unit_price` and `total_amount` are required; amounts must be JSON
/// integers (a float or a string is a 422). Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// `type`; absent means Klarna's default (`physical`).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<OrderLineType>,
    /// Descriptive name, at most 255 characters.
    pub name: String,
    /// Quantity, at least 0.
    pub quantity: i64,
    /// Unit price in minor units, tax included, discount not applied (may be negative).
    pub unit_price: i64,
    /// `quantity * unit_price - total_discount_amount`, at most 200 000 000.
    pub total_amount: i64,
    /// Discount in minor units, 0 to 200 000 000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_discount_amount: Option<i64>,
    /// Tax rate in hundredths of a percent (2500 = 25 %), at least 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_rate: Option<i64>,
    /// Tax in minor units, at most 200 000 000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_tax_amount: Option<i64>,
    /// SKU or similar, at most 255 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Unit, at most 10 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity_unit: Option<String>,
    /// Merchant data, at most 1024 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_data: Option<String>,
    /// Product URL, at most 1024 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_url: Option<String>,
    /// Image URL, at most 1024 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    /// Product identifiers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_identifiers: Option<ProductIdentifiers>,
    /// Subscription details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<Subscription>,
}

impl OrderLine {
    /// A line with only the required fields set.
    pub fn new(
        kind: OrderLineType,
        name: impl Into<String>,
        quantity: i64,
        unit_price: i64,
    ) -> Self {
        Self {
            kind: Some(kind),
            name: name.into(),
            quantity,
            unit_price,
            total_amount: quantity.saturating_mul(unit_price),
            total_discount_amount: None,
            tax_rate: None,
            total_tax_amount: None,
            reference: None,
            quantity_unit: None,
            merchant_data: None,
            product_url: None,
            image_url: None,
            product_identifiers: None,
            subscription: None,
        }
    }

    /// Sets `tax_rate` and `total_tax_amount`.
    pub fn with_tax(mut self, tax_rate: i64, total_tax_amount: i64) -> Self {
        self.tax_rate = Some(tax_rate);
        self.total_tax_amount = Some(total_tax_amount);
        self
    }

    /// Sets `reference`.
    pub fn with_reference(mut self, reference: impl Into<String>) -> Self {
        self.reference = Some(reference.into());
        self
    }
}

/// Where an order's lifecycle stands apart from its captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifecycle {
    Open,
    Cancelled,
    Expired,
    Closed,
}

/// `initial_payment_method`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PaymentMethod {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) description: String,
}

/// Payment method types for which Klarna offers due-date extensions (pay later).
const PAY_LATER_TYPES: [&str; 6] = [
    "INVOICE",
    "PAY_LATER_IN_PARTS",
    "PAY_LATER_BY_CARD",
    "FIXED_AMOUNT",
    "ACCOUNT",
    "DEFERRED_INTEREST",
];

impl PaymentMethod {
    pub(crate) fn new(kind: &str) -> Self {
        let kind = kind.to_ascii_uppercase();
        let description = match kind.as_str() {
            "INVOICE" => "Pay later",
            "PAY_LATER_IN_PARTS" | "FIXED_AMOUNT" => "Pay in parts",
            "PAY_LATER_BY_CARD" => "Pay later by card",
            "ACCOUNT" | "DEFERRED_INTEREST" => "Financing",
            "CARD" => "Card",
            "DIRECT_DEBIT" => "Direct debit",
            "DIRECT_BANK_TRANSFER" => "Pay now",
            _ => "Other",
        }
        .to_owned();
        Self { kind, description }
    }

    pub(crate) fn is_pay_later(&self) -> bool {
        PAY_LATER_TYPES.contains(&self.kind.as_str())
    }
}

/// A due-date extension bought for a capture (a simulator field in capture JSON).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DueDateExtension {
    pub(crate) number_of_days: i64,
    pub(crate) fee: i64,
    #[serde(serialize_with = "timestamp")]
    pub(crate) extended_at: OffsetDateTime,
}

/// One capture of an order.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Capture {
    pub(crate) capture_id: String,
    pub(crate) klarna_reference: String,
    pub(crate) captured_amount: i64,
    #[serde(serialize_with = "timestamp")]
    pub(crate) captured_at: OffsetDateTime,
    pub(crate) description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reference: Option<String>,
    pub(crate) order_lines: Vec<OrderLine>,
    pub(crate) refunded_amount: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) due_date_extension: Option<DueDateExtension>,
}

impl Capture {
    pub(crate) fn refundable(&self) -> i64 {
        self.captured_amount - self.refunded_amount
    }
}

/// One refund of an order.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Refund {
    pub(crate) refund_id: Uuid,
    pub(crate) refunded_amount: i64,
    #[serde(serialize_with = "timestamp")]
    pub(crate) refunded_at: OffsetDateTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reference: Option<String>,
    pub(crate) order_lines: Vec<OrderLine>,
}

/// An order and everything that happened to it.
#[derive(Debug, Clone)]
pub(crate) struct Order {
    pub(crate) order_id: Uuid,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) order_amount: i64,
    pub(crate) original_order_amount: i64,
    pub(crate) captured_amount: i64,
    pub(crate) refunded_amount: i64,
    /// The remaining authorization was released.
    pub(crate) released: bool,
    pub(crate) purchase_currency: String,
    pub(crate) purchase_country: String,
    pub(crate) merchant_reference1: Option<String>,
    pub(crate) merchant_reference2: Option<String>,
    pub(crate) klarna_reference: String,
    pub(crate) order_lines: Vec<OrderLine>,
    pub(crate) captures: Vec<Capture>,
    pub(crate) refunds: Vec<Refund>,
    /// Index into `refunds`, so that `GET refund` does not scan.
    pub(crate) refund_index: HashMap<Uuid, usize>,
    pub(crate) initial_payment_method: PaymentMethod,
    pub(crate) created_at: OffsetDateTime,
    pub(crate) expires_at: OffsetDateTime,
}

impl Order {
    pub(crate) fn status(&self) -> OrderStatus {
        match self.lifecycle {
            Lifecycle::Cancelled => OrderStatus::Cancelled,
            Lifecycle::Expired => OrderStatus::Expired,
            Lifecycle::Closed => OrderStatus::Closed,
            Lifecycle::Open if self.captured_amount == 0 => OrderStatus::Authorized,
            Lifecycle::Open if self.released || self.captured_amount >= self.order_amount => {
                OrderStatus::Captured
            }
            Lifecycle::Open => OrderStatus::PartCaptured,
        }
    }

    pub(crate) fn remaining_authorized_amount(&self) -> i64 {
        if self.released || self.lifecycle != Lifecycle::Open {
            0
        } else {
            (self.order_amount - self.captured_amount).max(0)
        }
    }

    pub(crate) fn capture(&self, capture_id: &str) -> Option<&Capture> {
        self.captures.iter().find(|c| c.capture_id == capture_id)
    }

    pub(crate) fn capture_mut(&mut self, capture_id: &str) -> Option<&mut Capture> {
        self.captures
            .iter_mut()
            .find(|c| c.capture_id == capture_id)
    }

    pub(crate) fn refund(&self, refund_id: &Uuid) -> Option<&Refund> {
        self.refund_index
            .get(refund_id)
            .and_then(|&i| self.refunds.get(i))
    }

    /// The JSON view `GET order` returns.
    pub(crate) fn view(&self) -> OrderView<'_> {
        OrderView {
            order_id: self.order_id,
            status: self.status(),
            order_amount: self.order_amount,
            original_order_amount: self.original_order_amount,
            captured_amount: self.captured_amount,
            refunded_amount: self.refunded_amount,
            remaining_authorized_amount: self.remaining_authorized_amount(),
            purchase_currency: &self.purchase_currency,
            purchase_country: &self.purchase_country,
            merchant_reference1: self.merchant_reference1.as_deref(),
            merchant_reference2: self.merchant_reference2.as_deref(),
            klarna_reference: &self.klarna_reference,
            order_lines: &self.order_lines,
            captures: &self.captures,
            refunds: &self.refunds,
            initial_payment_method: &self.initial_payment_method,
            created_at: self.created_at,
            expires_at: self.expires_at,
        }
    }
}

/// Borrowed JSON form of an order (`GET order`).
#[derive(Debug, Serialize)]
pub(crate) struct OrderView<'a> {
    order_id: Uuid,
    status: OrderStatus,
    order_amount: i64,
    original_order_amount: i64,
    captured_amount: i64,
    refunded_amount: i64,
    remaining_authorized_amount: i64,
    purchase_currency: &'a str,
    purchase_country: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    merchant_reference1: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    merchant_reference2: Option<&'a str>,
    klarna_reference: &'a str,
    order_lines: &'a [OrderLine],
    captures: &'a [Capture],
    refunds: &'a [Refund],
    initial_payment_method: &'a PaymentMethod,
    #[serde(serialize_with = "timestamp")]
    created_at: OffsetDateTime,
    #[serde(serialize_with = "timestamp")]
    expires_at: OffsetDateTime,
}

const TIMESTAMP_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
);

/// Formats a time as RFC 3339 UTC with milliseconds, e.g. `2022-07-08T09:48:17.738Z`.
pub(crate) fn format_timestamp(at: OffsetDateTime) -> Result<String, time::error::Format> {
    at.to_offset(time::UtcOffset::UTC).format(TIMESTAMP_FORMAT)
}

fn timestamp<S: Serializer>(at: &OffsetDateTime, serializer: S) -> Result<S::Ok, S::Error> {
    let text = format_timestamp(*at).map_err(serde::ser::Error::custom)?;
    serializer.serialize_str(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_millis_and_z() {
        let at = time::macros::datetime!(2022-07-08 09:48:17.738 UTC);
        assert_eq!(format_timestamp(at).unwrap(), "2022-07-08T09:48:17.738Z");
        let at = time::macros::datetime!(2022-07-08 11:48:17 +02:00);
        assert_eq!(format_timestamp(at).unwrap(), "2022-07-08T09:48:17.000Z");
    }

    #[test]
    fn order_line_rejects_float_and_string_amounts() {
        let ok: Result<OrderLine, _> = serde_json::from_str(
            r#"{"name":"a","quantity":1,"unit_price":100,"total_amount":100,"extra":true}"#,
        );
        assert!(ok.is_ok());
        let float: Result<OrderLine, _> = serde_json::from_str(
            r#"{"name":"a","quantity":1,"unit_price":100.0,"total_amount":100}"#,
        );
        assert!(float.is_err());
        let string: Result<OrderLine, _> = serde_json::from_str(
            r#"{"name":"a","quantity":1,"unit_price":"100","total_amount":100}"#,
        );
        assert!(string.is_err());
    }

    #[test]
    fn pay_later_types() {
        assert!(PaymentMethod::new("invoice").is_pay_later());
        assert!(PaymentMethod::new("PAY_LATER_IN_PARTS").is_pay_later());
        assert!(!PaymentMethod::new("CARD").is_pay_later());
    }
}
