//! Klarna's partner Payments API ("payment transactions"): its opaque KRN ids, the line items
//! a transaction refund is allocated by, what Klarna reports about a transaction, and the
//! [`PaymentsApi`] port the adapter implements (see `docs/klarna.md#partner-payments`).
//!
//! KRNs (`krn:payment:eu1:transaction:…`) are opaque: the gateway checks their shape and
//! length so that nothing hostile reaches a URL or a log line, and never reads meaning out of
//! them (a capture's transaction is always given by the caller, never derived).

use std::fmt;

use async_trait::async_trait;

use crate::klarna::KlarnaError;
use crate::money::{Amount, Currency, MAX_AMOUNT};
use crate::operation::OperationId;
use crate::validation::{InvalidValue, Violations};

/// Longest KRN the gateway accepts.
pub const MAX_KRN_CHARS: usize = 255;

/// Checks a KRN's shape: `krn:` then at most 255 characters in all, none of them `/`, `?`,
/// `#`, `%`, whitespace or control characters (each would change the URL it is a segment of,
/// or a log line it is printed in; a `%` would be an encoding Klarna's ids never hold).
fn check_krn(value: &str, example: &str) -> Result<(), InvalidValue> {
    let hint = || format!("must be a Klarna KRN like {example}");
    if !value.starts_with("krn:") || value.len() == "krn:".len() {
        return Err(InvalidValue::new(hint()));
    }
    if value.chars().count() > MAX_KRN_CHARS {
        return Err(InvalidValue::new(format!(
            "must be at most {MAX_KRN_CHARS} characters"
        )));
    }
    if value
        .chars()
        .any(|c| matches!(c, '/' | '?' | '#' | '%') || c.is_whitespace() || c.is_control())
    {
        return Err(InvalidValue::new(format!(
            "{}; '/', '?', '#', '%', whitespace and control characters are not allowed",
            hint()
        )));
    }
    Ok(())
}

macro_rules! krn_id {
    ($(#[$doc:meta])* $name:ident, $example:literal) => {
        crate::ids::validated_id!(
            $(#[$doc])*
            $name,
            |value| check_krn(value, $example).map(|()| value.to_owned()),
            "Accepts a KRN of the shape the module docs describe, exactly as given (KRNs are case-sensitive and opaque)."
        );
    };
}

krn_id!(
    /// A payment transaction's KRN.
    PaymentTransactionId,
    "krn:payment:eu1:transaction:6b1f3c2e-0d4a-4b8e-9f1a-2c3d4e5f6a70"
);
krn_id!(
    /// A payment capture's KRN.
    PaymentCaptureId,
    "krn:payment:eu1:transaction:6b1f3c2e-0d4a-4b8e-9f1a-2c3d4e5f6a70:capture:1"
);

/// Longest line item name, reference or refund text Klarna takes.
pub const MAX_TEXT_CHARS: usize = 255;
/// Largest `tax_rate`: 100 % in hundredths of a percent.
pub const MAX_TAX_RATE: i64 = 10_000;

/// One line item of a transaction refund, as Klarna allocates it across captures. Amounts in
/// minor units; `unit_price` may be negative (a discount), the totals follow from it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LineItem {
    /// Shown to the customer; 1 to 255 characters.
    pub name: String,
    /// At least 1.
    pub quantity: i64,
    /// Price of one unit, minor units.
    pub unit_price: i64,
    /// `quantity × unit_price`, minor units.
    pub total_amount: i64,
    /// Tax included in `total_amount`, minor units.
    pub total_tax_amount: Option<i64>,
    /// Hundredths of a percent (2500 = 25 %), 0 to 10 000.
    pub tax_rate: Option<i64>,
    /// The merchant's reference (SKU), at most 255 characters.
    pub reference: Option<String>,
    /// Klarna's line type (`physical`, `shipping_fee`, …), passed on as given.
    pub item_type: Option<String>,
}

/// A line item as the caller sent it, before validation. Absent optional numbers are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineItemDraft {
    /// Name.
    pub name: String,
    /// Quantity.
    pub quantity: i64,
    /// Unit price.
    pub unit_price: i64,
    /// Total amount.
    pub total_amount: i64,
    /// Total tax amount.
    pub total_tax_amount: Option<i64>,
    /// Tax rate.
    pub tax_rate: Option<i64>,
    /// Reference; empty means none.
    pub reference: String,
    /// Type; empty means none.
    pub item_type: String,
}

impl LineItem {
    /// Validates a draft, reporting every bad field with its name (`name`, `quantity`, …);
    /// the caller nests them under `line_items[i]`.
    pub fn parse(draft: LineItemDraft) -> Result<Self, Violations> {
        let mut v = Violations::new();
        if draft.name.trim().is_empty() {
            v.push("name", "is required");
        }
        v.max_chars("name", &draft.name, MAX_TEXT_CHARS);
        v.no_control_chars("name", &draft.name);
        if draft.quantity < 1 {
            v.push("quantity", "must be at least 1");
        }
        // Klarna's bound on any amount, in either direction (a discount is negative).
        for (field, value) in [
            ("unit_price", Some(draft.unit_price)),
            ("total_amount", Some(draft.total_amount)),
            ("total_tax_amount", draft.total_tax_amount),
        ] {
            if let Some(value) = value
                && !(-MAX_AMOUNT..=MAX_AMOUNT).contains(&value)
            {
                v.push(
                    field,
                    format!("must be between -{MAX_AMOUNT} and {MAX_AMOUNT} (minor units)"),
                );
            }
        }
        match draft.quantity.checked_mul(draft.unit_price) {
            Some(total) if total == draft.total_amount => {}
            Some(total) => v.push(
                "total_amount",
                format!(
                    "must be quantity × unit_price = {total} (minor units), not {}",
                    draft.total_amount
                ),
            ),
            None => v.push("unit_price", "quantity × unit_price is out of range"),
        }
        if let Some(tax) = draft.total_tax_amount
            && (tax < 0 || tax > draft.total_amount.max(0))
        {
            v.push(
                "total_tax_amount",
                "must be between 0 and total_amount (minor units)",
            );
        }
        if let Some(rate) = draft.tax_rate
            && !(0..=MAX_TAX_RATE).contains(&rate)
        {
            v.push(
                "tax_rate",
                "must be between 0 and 10000 (hundredths of a percent)",
            );
        }
        v.max_chars("reference", &draft.reference, MAX_TEXT_CHARS);
        v.no_control_chars("reference", &draft.reference);
        v.max_chars("type", &draft.item_type, MAX_TEXT_CHARS);
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        v.into_result(|| Self {
            name: draft.name,
            quantity: draft.quantity,
            unit_price: draft.unit_price,
            total_amount: draft.total_amount,
            total_tax_amount: draft.total_tax_amount,
            tax_rate: draft.tax_rate,
            reference: non_empty(draft.reference),
            item_type: non_empty(draft.item_type),
        })
    }
}

/// A partner refund as sent to Klarna: `line_items` is empty for a capture refund.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartnerRefund {
    /// Amount in minor units.
    pub amount: Amount,
    /// The transaction's currency.
    pub currency: Currency,
    /// `payment_refund_reference`: the caller's reference, else the operation id.
    pub reference: String,
    /// Text for the customer.
    pub description: Option<String>,
    /// Line items (transaction refunds only).
    pub line_items: Vec<LineItem>,
}

/// Klarna accepted a partner refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerRefundCreated {
    /// Klarna's `payment_refund_id`.
    pub payment_refund_id: String,
    /// Klarna's correlation id for the call, when it sent one.
    pub correlation_id: Option<String>,
}

/// A transaction's state as Klarna reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TransactionState {
    /// Authorized; refunds possible after a (partial) capture.
    Authorized,
    /// The authorization expired; becomes `Closed` after 7 days unless reauthorized.
    Expired,
    /// Completed.
    Completed,
    /// No further operation, refunds included.
    Closed,
    /// A state this gateway does not know, as Klarna spelled it.
    Other(String),
}

impl TransactionState {
    /// Reads Klarna's spelling, in any case.
    pub fn parse(value: &str) -> Self {
        match value.to_ascii_uppercase().as_str() {
            "AUTHORIZED" => Self::Authorized,
            "EXPIRED" => Self::Expired,
            "COMPLETED" => Self::Completed,
            "CLOSED" => Self::Closed,
            _ => Self::Other(value.to_owned()),
        }
    }

    /// Klarna's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Authorized => "AUTHORIZED",
            Self::Expired => "EXPIRED",
            Self::Completed => "COMPLETED",
            Self::Closed => "CLOSED",
            Self::Other(s) => s,
        }
    }
}

/// A capture of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentCapture {
    /// Its KRN, as Klarna sent it.
    pub payment_capture_id: String,
    /// Captured amount, minor units.
    pub amount: i64,
    /// Refunded from it, when Klarna says.
    pub refunded_amount: Option<i64>,
    /// When, as Klarna wrote it.
    pub created_at: Option<String>,
}

/// A refund of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRefund {
    /// Its KRN, as Klarna sent it.
    pub payment_refund_id: String,
    /// The capture it refunded, when Klarna says.
    pub payment_capture_id: Option<String>,
    /// Refunded amount, minor units.
    pub amount: i64,
    /// The reference it was sent with.
    pub reference: Option<String>,
    /// When, as Klarna wrote it.
    pub created_at: Option<String>,
}

/// What Klarna reports about a payment transaction. Amounts Klarna does not state are derived
/// from the captures and refunds it lists (see [`PaymentTransaction::captured_amount`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentTransaction {
    /// Its KRN.
    pub payment_transaction_id: String,
    /// State.
    pub state: TransactionState,
    /// ISO 4217, upper case.
    pub currency: String,
    /// Authorized amount, minor units.
    pub amount: i64,
    /// Captured amount, when Klarna states it.
    pub captured_amount: Option<i64>,
    /// Refunded amount, when Klarna states it.
    pub refunded_amount: Option<i64>,
    /// Captures, as far as Klarna lists them.
    pub captures: Vec<PaymentCapture>,
    /// Refunds, as far as Klarna lists them.
    pub refunds: Vec<PaymentRefund>,
}

impl PaymentTransaction {
    /// Captured so far: Klarna's figure, else the sum of the captures it lists; `None` when
    /// the read shows neither (a rule must not refuse on a figure Klarna did not give).
    pub fn captured(&self) -> Option<i64> {
        // Saturating, here and below: the figures are Klarna's, read as any i64 (a sum that
        // overflowed was found by fuzzing its answers).
        self.captured_amount.or_else(|| {
            (!self.captures.is_empty()).then(|| {
                self.captures
                    .iter()
                    .fold(0_i64, |sum, c| sum.saturating_add(c.amount))
            })
        })
    }

    /// Refunded so far: Klarna's figure, else the sum of the listed refunds.
    pub fn refunded(&self) -> i64 {
        self.refunded_amount.unwrap_or_else(|| {
            self.refunds
                .iter()
                .fold(0_i64, |sum, r| sum.saturating_add(r.amount))
        })
    }

    /// What may still be refunded: captured minus refunded, never below zero; `None` when the
    /// captured amount is unknown.
    pub fn refundable(&self) -> Option<i64> {
        self.captured()
            .map(|c| c.saturating_sub(self.refunded()).max(0))
    }
}

/// Klarna's partner Payments API, one partner account. Every mutating call carries `key` as
/// `Klarna-Idempotency-Key`, so a resend of the same operation is executed at most once.
#[async_trait]
pub trait PaymentsApi: Send + Sync + fmt::Debug {
    /// Reads a transaction (`readPaymentTransaction`).
    async fn get_transaction(
        &self,
        id: &PaymentTransactionId,
    ) -> Result<PaymentTransaction, KlarnaError>;

    /// Refunds one capture (`refundPaymentCapture`); `refund.line_items` is not sent.
    async fn refund_capture(
        &self,
        capture: &PaymentCaptureId,
        refund: &PartnerRefund,
        key: &OperationId,
    ) -> Result<PartnerRefundCreated, KlarnaError>;

    /// Refunds a transaction, allocated by Klarna across its captures by the line items
    /// (`refundPaymentTransaction`).
    async fn refund_transaction(
        &self,
        transaction: &PaymentTransactionId,
        refund: &PartnerRefund,
        key: &OperationId,
    ) -> Result<PartnerRefundCreated, KlarnaError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn krns_are_opaque_but_shaped() {
        for good in [
            "krn:payment:eu1:transaction:6b1f3c2e-0d4a-4b8e-9f1a-2c3d4e5f6a70",
            "krn:payment:eu1:transaction:6b1f3c2e:capture:1",
            "krn:x",
        ] {
            assert_eq!(
                PaymentTransactionId::parse(good).map(|k| k.to_string()),
                Ok(good.to_owned())
            );
        }
        let long = format!("krn:{}", "a".repeat(252));
        assert!(PaymentCaptureId::parse(&long).is_err());
        assert!(PaymentCaptureId::parse(&long[..255]).is_ok());
        for bad in [
            "",
            "krn:",
            "KRN:payment",
            "payment:eu1:transaction:1",
            "krn:a/b",
            "krn:a?b",
            "krn:a#b",
            "krn:a b",
            "krn:a\tb",
            "krn:a\u{0}b",
            "krn:a\u{a0}b",
            "krn:a%2Fb",
        ] {
            assert!(PaymentTransactionId::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn draft() -> LineItemDraft {
        LineItemDraft {
            name: "Shoes".into(),
            quantity: 2,
            unit_price: 2500,
            total_amount: 5000,
            total_tax_amount: Some(1000),
            tax_rate: Some(2500),
            reference: String::new(),
            item_type: "physical".into(),
        }
    }

    #[test]
    fn line_items_are_checked_field_by_field() {
        let item = LineItem::parse(draft()).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(item.reference, None);
        assert_eq!(item.item_type.as_deref(), Some("physical"));
        let bad = LineItem::parse(LineItemDraft {
            name: " ".into(),
            quantity: 0,
            total_amount: 1,
            total_tax_amount: Some(-1),
            tax_rate: Some(10_001),
            ..draft()
        })
        .err()
        .unwrap_or_default();
        let fields: Vec<_> = bad.as_slice().iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "name",
                "quantity",
                "total_amount",
                "total_tax_amount",
                "tax_rate"
            ]
        );
        let overflow = LineItem::parse(LineItemDraft {
            quantity: i64::MAX,
            ..draft()
        })
        .err()
        .unwrap_or_default();
        assert_eq!(overflow.as_slice()[0].field, "unit_price");
        let control = LineItem::parse(LineItemDraft {
            name: "Shirt\r\n".into(),
            reference: "\u{0}sku".into(),
            ..draft()
        })
        .err()
        .unwrap_or_default();
        let refused: Vec<_> = control
            .as_slice()
            .iter()
            .map(|v| (v.field.as_str(), v.description.as_str()))
            .collect();
        assert_eq!(
            refused,
            [
                ("name", "must not contain control characters"),
                ("reference", "must not contain control characters")
            ]
        );
    }

    #[test]
    fn amounts_not_stated_are_derived_from_the_lists() {
        let mut t = PaymentTransaction {
            payment_transaction_id: "krn:t".into(),
            state: TransactionState::parse("authorized"),
            currency: "SEK".into(),
            amount: 10_000,
            captured_amount: None,
            refunded_amount: None,
            captures: vec![PaymentCapture {
                payment_capture_id: "krn:c".into(),
                amount: 6000,
                refunded_amount: None,
                created_at: None,
            }],
            refunds: vec![PaymentRefund {
                payment_refund_id: "krn:r".into(),
                payment_capture_id: None,
                amount: 7000,
                reference: None,
                created_at: None,
            }],
        };
        assert_eq!(t.state, TransactionState::Authorized);
        assert_eq!(
            (t.captured(), t.refunded(), t.refundable()),
            (Some(6000), 7000, Some(0))
        );
        t.captured_amount = Some(9000);
        assert_eq!(t.refundable(), Some(2000));
        t.captured_amount = None;
        t.captures.clear();
        assert_eq!((t.captured(), t.refundable()), (None, None));
        assert_eq!(TransactionState::parse("Weird").as_str(), "Weird");
    }
}
