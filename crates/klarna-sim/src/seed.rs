//! Seeding orders: [`OrderSeed`] (what a test asks for) becomes an order in the store.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::{
    Capture, Lifecycle, Order, OrderLine, OrderLineType, OrderStatus, PaymentMethod,
};
use crate::schema;

/// How long a seeded order's authorization is valid (`expires_at - created_at`).
const AUTHORIZATION_DAYS: i64 = 28;

/// An order to create. All fields are optional in JSON (`#[serde(default)]`).
///
/// Defaults: a random UUID v4 `order_id`, `SEK`, `SE`, `INVOICE`, a random `klarna_reference`,
/// and one `physical` order line worth `order_amount` when `order_lines` is `None`.
/// Currency and country are stored upper case.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OrderSeed {
    /// Order id (a UUID); random when `None`. Seeding an existing id replaces that order.
    pub order_id: Option<String>,
    /// `CANCELLED`, `EXPIRED` or `CLOSED` make the order terminal. `AUTHORIZED`,
    /// `PART_CAPTURED` and `CAPTURED` are accepted but ignored: those statuses follow from
    /// `captures`.
    pub status: Option<OrderStatus>,
    /// Authorized amount in minor units (at least 0).
    pub order_amount: i64,
    /// One capture per entry, in this order, each a positive amount; their sum must not
    /// exceed `order_amount`.
    pub captures: Vec<i64>,
    /// Fixed ids for the first captures (random for the rest); unique, non-empty.
    pub capture_ids: Vec<String>,
    /// ISO 4217 code, default `SEK`.
    pub purchase_currency: Option<String>,
    /// ISO 3166 alpha-2 code, default `SE`.
    pub purchase_country: Option<String>,
    /// `initial_payment_method.type` (`INVOICE`, `PAY_LATER_IN_PARTS`, `CARD`, ...), default
    /// `INVOICE`.
    pub payment_method_type: Option<String>,
    /// `merchant_reference1`.
    pub merchant_reference1: Option<String>,
    /// `merchant_reference2`.
    pub merchant_reference2: Option<String>,
    /// `klarna_reference`; random when `None`. Captures get `<klarna_reference>-<n>`.
    pub klarna_reference: Option<String>,
    /// The order's lines; one line for the whole amount when `None`.
    pub order_lines: Option<Vec<OrderLine>>,
}

/// What was seeded: the order id and the capture ids, in capture order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeededOrder {
    /// The order id (lower-case hyphenated UUID).
    pub order_id: String,
    /// The capture ids, one per entry of [`OrderSeed::captures`].
    pub capture_ids: Vec<String>,
}

/// Why a seed was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedError {
    /// `order_id` is not a UUID.
    #[error("order_id {0:?} is not a UUID")]
    InvalidOrderId(String),
    /// `order_amount` is negative.
    #[error("order_amount must be at least 0")]
    NegativeOrderAmount,
    /// A capture amount is 0 or negative.
    #[error("every capture must be a positive amount")]
    NonPositiveCapture,
    /// The captures add up to more than `order_amount`.
    #[error("captures add up to more than order_amount")]
    CapturesExceedOrderAmount,
    /// More `capture_ids` than `captures`, an empty id, or a duplicate id.
    #[error("capture_ids must be unique, non-empty and no more than the captures")]
    InvalidCaptureIds,
    /// `purchase_currency` is not three ASCII letters.
    #[error("purchase_currency {0:?} is not an ISO 4217 code")]
    InvalidCurrency(String),
    /// `purchase_country` is not two ASCII letters.
    #[error("purchase_country {0:?} is not an ISO 3166 alpha-2 code")]
    InvalidCountry(String),
    /// The order lines break the schema limits.
    #[error("invalid order lines: {}", .0.join("; "))]
    InvalidOrderLines(Vec<String>),
}

fn code(value: Option<&str>, default: &str, len: usize) -> Option<String> {
    let value = value.unwrap_or(default);
    (value.len() == len && value.bytes().all(|b| b.is_ascii_alphabetic()))
        .then(|| value.to_ascii_uppercase())
}

/// Builds the order a seed describes, at simulator time `now`.
pub(crate) fn build_order(
    seed: OrderSeed,
    now: OffsetDateTime,
) -> Result<(Order, SeededOrder), SeedError> {
    let order_id = match &seed.order_id {
        Some(id) => Uuid::try_parse(id).map_err(|_| SeedError::InvalidOrderId(id.clone()))?,
        None => Uuid::new_v4(),
    };
    if seed.order_amount < 0 {
        return Err(SeedError::NegativeOrderAmount);
    }
    if seed.captures.iter().any(|&amount| amount <= 0) {
        return Err(SeedError::NonPositiveCapture);
    }
    let captured_amount = seed
        .captures
        .iter()
        .try_fold(0i64, |sum, &amount| sum.checked_add(amount))
        .filter(|&sum| sum <= seed.order_amount)
        .ok_or(SeedError::CapturesExceedOrderAmount)?;
    let mut unique = HashSet::new();
    if seed.capture_ids.len() > seed.captures.len()
        || seed
            .capture_ids
            .iter()
            .any(|id| id.is_empty() || !unique.insert(id.as_str()))
    {
        return Err(SeedError::InvalidCaptureIds);
    }
    let purchase_currency = code(seed.purchase_currency.as_deref(), "SEK", 3).ok_or_else(|| {
        SeedError::InvalidCurrency(seed.purchase_currency.clone().unwrap_or_default())
    })?;
    let purchase_country = code(seed.purchase_country.as_deref(), "SE", 2).ok_or_else(|| {
        SeedError::InvalidCountry(seed.purchase_country.clone().unwrap_or_default())
    })?;
    let order_lines = match seed.order_lines {
        Some(lines) => {
            let mut errors = Vec::new();
            schema::check_order_lines(&lines, &mut errors);
            if !errors.is_empty() {
                return Err(SeedError::InvalidOrderLines(errors));
            }
            lines
        }
        None if seed.order_amount > 0 => {
            vec![OrderLine::new(
                OrderLineType::Physical,
                "Item",
                1,
                seed.order_amount,
            )]
        }
        None => Vec::new(),
    };
    let klarna_reference = seed.klarna_reference.unwrap_or_else(|| {
        // A simple-format UUID is 32 ASCII hex digits, so the slice is in bounds.
        let simple = Uuid::new_v4().simple().to_string().to_ascii_uppercase();
        simple[..8].to_owned()
    });
    let lifecycle = match seed.status {
        Some(OrderStatus::Cancelled) => Lifecycle::Cancelled,
        Some(OrderStatus::Expired) => Lifecycle::Expired,
        Some(OrderStatus::Closed) => Lifecycle::Closed,
        _ => Lifecycle::Open,
    };

    let mut fixed_ids = seed.capture_ids.into_iter();
    let captures: Vec<Capture> = seed
        .captures
        .iter()
        .enumerate()
        .map(|(i, &amount)| Capture {
            capture_id: fixed_ids
                .next()
                .unwrap_or_else(|| Uuid::new_v4().to_string()),
            klarna_reference: format!("{klarna_reference}-{}", i + 1),
            captured_amount: amount,
            captured_at: now,
            description: String::new(),
            reference: None,
            order_lines: Vec::new(),
            refunded_amount: 0,
            due_date_extension: None,
        })
        .collect();
    let seeded = SeededOrder {
        order_id: order_id.to_string(),
        capture_ids: captures.iter().map(|c| c.capture_id.clone()).collect(),
    };
    let order = Order {
        order_id,
        lifecycle,
        order_amount: seed.order_amount,
        original_order_amount: seed.order_amount,
        captured_amount,
        refunded_amount: 0,
        released: false,
        purchase_currency,
        purchase_country,
        merchant_reference1: seed.merchant_reference1,
        merchant_reference2: seed.merchant_reference2,
        klarna_reference,
        order_lines,
        captures,
        refunds: Vec::new(),
        refund_index: HashMap::new(),
        initial_payment_method: PaymentMethod::new(
            seed.payment_method_type.as_deref().unwrap_or("INVOICE"),
        ),
        created_at: now,
        expires_at: now + time::Duration::days(AUTHORIZATION_DAYS),
    };
    Ok((order, seeded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let now = OffsetDateTime::now_utc();
        let (order, seeded) = build_order(
            OrderSeed {
                order_amount: 1000,
                captures: vec![400, 600],
                capture_ids: vec!["cap-1".into()],
                purchase_currency: Some("eur".into()),
                ..Default::default()
            },
            now,
        )
        .unwrap();
        assert_eq!(order.purchase_currency, "EUR");
        assert_eq!(order.purchase_country, "SE");
        assert_eq!(order.status(), OrderStatus::Captured);
        assert_eq!(seeded.capture_ids.len(), 2);
        assert_eq!(seeded.capture_ids[0], "cap-1");
        assert_eq!(order.order_lines[0].total_amount, 1000);

        let bad = |seed: OrderSeed| build_order(seed, now).unwrap_err();
        assert_eq!(
            bad(OrderSeed {
                order_amount: 100,
                captures: vec![101],
                ..Default::default()
            }),
            SeedError::CapturesExceedOrderAmount
        );
        assert!(matches!(
            bad(OrderSeed {
                order_id: Some("nope".into()),
                ..Default::default()
            }),
            SeedError::InvalidOrderId(_)
        ));
        assert_eq!(
            bad(OrderSeed {
                order_amount: 100,
                captures: vec![50],
                capture_ids: vec!["a".into(), "b".into()],
                ..Default::default()
            }),
            SeedError::InvalidCaptureIds
        );
    }
}
