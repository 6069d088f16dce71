//! Seeding payment transactions: [`TransactionSeed`] (what a test asks for) becomes a
//! transaction of the partner Payments API, possibly already at its refund or operation limit.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::partner_schema::{MAX_TEXT, check_seed_line_items};
use crate::payments::{
    LineItem, MAX_CAPTURES, MAX_OPERATIONS, MAX_REFUNDS, TRANSACTION_KRN_PREFIX, Transaction,
    TransactionState, TxCapture, TxRefund,
};

/// One capture of a seeded transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureSeed {
    /// Captured amount in minor units (positive).
    pub amount: i64,
    /// Fixed id; `{payment_transaction_id}:capture:{n}` (n = 1, 2, … in capture order) when
    /// `None`.
    #[serde(default)]
    pub payment_capture_id: Option<String>,
}

impl CaptureSeed {
    /// A capture of `amount` with a generated id.
    pub fn new(amount: i64) -> Self {
        Self {
            amount,
            payment_capture_id: None,
        }
    }

    /// A capture of `amount` with a fixed id.
    pub fn with_id(amount: i64, payment_capture_id: impl Into<String>) -> Self {
        Self {
            amount,
            payment_capture_id: Some(payment_capture_id.into()),
        }
    }
}

/// A payment transaction to create. All fields are optional in JSON (`#[serde(default)]`).
///
/// Defaults: a generated `krn:payment:eu1:transaction:<uuid v4>` id, `SEK`, state
/// `AUTHORIZED`, one line item worth `amount` when `line_items` is `None`, no captures, no
/// refunds. Captures are ordered oldest first as listed. `prior_refunds` records that many
/// refunds of 1 minor unit each (allocated oldest capture first, as real ones are), and
/// `other_operations` counts that many further operations (e.g. authorization updates)
/// towards the limit of 500: together they build a transaction at its refund or operation
/// limit cheaply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransactionSeed {
    /// Transaction id (any non-empty text without `/`, whitespace or control characters);
    /// generated when `None`. Seeding an existing id replaces that transaction.
    pub payment_transaction_id: Option<String>,
    /// ISO 4217 code, default `SEK`; stored upper case.
    pub currency: Option<String>,
    /// Authorized amount in minor units (positive).
    pub amount: i64,
    /// Initial state, default `AUTHORIZED`.
    pub state: Option<TransactionState>,
    /// The transaction's line items; one item for the whole amount when `None`.
    pub line_items: Option<Vec<LineItem>>,
    /// Captures, oldest first; their sum must not exceed `amount`; at most 200.
    pub captures: Vec<CaptureSeed>,
    /// Refunds already made, 1 minor unit each (at most 200, and at most the captured amount).
    pub prior_refunds: u32,
    /// Operations other than captures and refunds already made (captures + refunds + these at
    /// most 500).
    pub other_operations: u32,
}

/// What was seeded: the ids, in capture and refund order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeededTransaction {
    /// The transaction id.
    pub payment_transaction_id: String,
    /// The capture ids, one per entry of [`TransactionSeed::captures`].
    pub payment_capture_ids: Vec<String>,
    /// The ids of the `prior_refunds`.
    pub payment_refund_ids: Vec<String>,
}

/// Why a transaction seed was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransactionSeedError {
    /// The transaction id is empty or contains `/`, whitespace or control characters.
    #[error("payment_transaction_id {0:?} must be non-empty, without '/' or whitespace")]
    InvalidTransactionId(String),
    /// `amount` is 0 or negative.
    #[error("amount must be positive")]
    NonPositiveAmount,
    /// `currency` is not three ASCII letters.
    #[error("currency {0:?} is not an ISO 4217 code")]
    InvalidCurrency(String),
    /// A capture amount is 0 or negative.
    #[error("every capture must be a positive amount")]
    NonPositiveCapture,
    /// The captures add up to more than `amount`.
    #[error("captures add up to more than amount")]
    CapturesExceedAmount,
    /// More than 200 captures.
    #[error("at most {MAX_CAPTURES} captures")]
    TooManyCaptures,
    /// A capture id is empty, malformed, given twice, or used by another transaction.
    #[error("payment_capture_id {0:?} is invalid, duplicated or used by another transaction")]
    InvalidCaptureId(String),
    /// More than 200 prior refunds, or more than the captured amount.
    #[error("prior_refunds must be at most {MAX_REFUNDS} and at most the captured amount")]
    TooManyRefunds,
    /// Captures, refunds and other operations add up to more than 500.
    #[error("captures, prior_refunds and other_operations must add up to at most {MAX_OPERATIONS}")]
    TooManyOperations,
    /// The line items break the request limits.
    #[error("invalid line_items: {}", .0.join("; "))]
    InvalidLineItems(Vec<String>),
}

/// Ids of transactions and captures: what can be put in a path segment.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.chars().count() <= MAX_TEXT
        && !id
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control())
}

/// Builds the transaction a seed describes, at simulator time `now`. Capture ids used by other
/// transactions are refused by the store when the transaction is inserted.
pub(crate) fn build_transaction(
    seed: TransactionSeed,
    now: OffsetDateTime,
) -> Result<(Transaction, SeededTransaction), TransactionSeedError> {
    let id = match seed.payment_transaction_id {
        Some(id) if valid_id(&id) => id,
        Some(id) => return Err(TransactionSeedError::InvalidTransactionId(id)),
        None => format!("{TRANSACTION_KRN_PREFIX}{}", Uuid::new_v4()),
    };
    if seed.amount <= 0 {
        return Err(TransactionSeedError::NonPositiveAmount);
    }
    let currency = seed.currency.unwrap_or_else(|| "SEK".to_owned());
    if !(currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_alphabetic())) {
        return Err(TransactionSeedError::InvalidCurrency(currency));
    }
    let currency = currency.to_ascii_uppercase();
    if seed.captures.len() > MAX_CAPTURES {
        return Err(TransactionSeedError::TooManyCaptures);
    }
    if seed.captures.iter().any(|c| c.amount <= 0) {
        return Err(TransactionSeedError::NonPositiveCapture);
    }
    let captured_amount = seed
        .captures
        .iter()
        .try_fold(0i64, |sum, c| sum.checked_add(c.amount))
        .filter(|&sum| sum <= seed.amount)
        .ok_or(TransactionSeedError::CapturesExceedAmount)?;
    let prior_refunds = seed.prior_refunds as usize;
    if prior_refunds > MAX_REFUNDS || i64::from(seed.prior_refunds) > captured_amount {
        return Err(TransactionSeedError::TooManyRefunds);
    }
    if seed.captures.len() + prior_refunds + seed.other_operations as usize > MAX_OPERATIONS {
        return Err(TransactionSeedError::TooManyOperations);
    }
    let line_items = match seed.line_items {
        Some(items) => {
            let errors = check_seed_line_items(&items);
            if !errors.is_empty() {
                return Err(TransactionSeedError::InvalidLineItems(errors));
            }
            items
        }
        None => vec![LineItem::new("Item", 1, seed.amount)],
    };

    let mut unique = HashSet::new();
    let mut captures = Vec::with_capacity(seed.captures.len());
    for (i, capture) in seed.captures.into_iter().enumerate() {
        let capture_id = capture
            .payment_capture_id
            .unwrap_or_else(|| format!("{id}:capture:{}", i + 1));
        if !valid_id(&capture_id) || !unique.insert(capture_id.clone()) {
            return Err(TransactionSeedError::InvalidCaptureId(capture_id));
        }
        captures.push(TxCapture {
            id: capture_id,
            amount: capture.amount,
            refunded_amount: 0,
            created_at: now,
            line_items: Vec::new(),
        });
    }

    // Prior refunds of 1 each, allocated oldest capture first.
    let mut refunds = Vec::with_capacity(prior_refunds);
    let mut next_capture = 0;
    for _ in 0..prior_refunds {
        while captures
            .get(next_capture)
            .is_some_and(|c| c.refunded_amount >= c.amount)
        {
            next_capture += 1;
        }
        let Some(capture) = captures.get_mut(next_capture) else {
            // Cannot happen: prior_refunds <= captured_amount was checked above.
            return Err(TransactionSeedError::TooManyRefunds);
        };
        capture.refunded_amount += 1;
        refunds.push(TxRefund {
            id: format!("{id}:refund:{}", Uuid::new_v4()),
            capture_id: Some(capture.id.clone()),
            amount: 1,
            currency: currency.clone(),
            reference: None,
            description: Some("Seeded refund".to_owned()),
            created_at: now,
            line_items: Vec::new(),
        });
    }

    let seeded = SeededTransaction {
        payment_transaction_id: id.clone(),
        payment_capture_ids: captures.iter().map(|c| c.id.clone()).collect(),
        payment_refund_ids: refunds.iter().map(|r| r.id.clone()).collect(),
    };
    let transaction = Transaction {
        id,
        state: seed.state.unwrap_or(TransactionState::Authorized),
        amount: seed.amount,
        currency,
        line_items,
        captured_amount,
        refunded_amount: i64::from(seed.prior_refunds),
        captures,
        refunds,
        other_operations: seed.other_operations as usize,
        created_at: now,
    };
    Ok((transaction, seeded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_ids_and_prior_refunds() {
        let now = OffsetDateTime::now_utc();
        let (transaction, seeded) = build_transaction(
            TransactionSeed {
                amount: 1000,
                currency: Some("eur".into()),
                captures: vec![CaptureSeed::new(2), CaptureSeed::with_id(998, "cap-b")],
                prior_refunds: 3,
                ..Default::default()
            },
            now,
        )
        .unwrap();
        assert!(
            seeded
                .payment_transaction_id
                .starts_with(TRANSACTION_KRN_PREFIX)
        );
        assert_eq!(
            seeded.payment_capture_ids,
            [
                format!("{}:capture:1", seeded.payment_transaction_id),
                "cap-b".to_owned()
            ]
        );
        assert_eq!(transaction.currency, "EUR");
        assert_eq!(transaction.state, TransactionState::Authorized);
        assert_eq!(transaction.captures[0].refunded_amount, 2);
        assert_eq!(transaction.captures[1].refunded_amount, 1);
        assert_eq!(transaction.refunded_amount, 3);
        assert_eq!(transaction.operations(), 5);
        assert_eq!(seeded.payment_refund_ids.len(), 3);
        assert_eq!(transaction.line_items[0].total_amount, 1000);
    }

    #[test]
    fn refuses_inconsistent_seeds() {
        let now = OffsetDateTime::now_utc();
        let bad = |seed: TransactionSeed| build_transaction(seed, now).unwrap_err();
        let base = TransactionSeed {
            amount: 1000,
            captures: vec![CaptureSeed::new(1000)],
            ..Default::default()
        };
        assert_eq!(
            bad(TransactionSeed {
                amount: 0,
                captures: vec![],
                ..base.clone()
            }),
            TransactionSeedError::NonPositiveAmount
        );
        assert_eq!(
            bad(TransactionSeed {
                captures: vec![CaptureSeed::new(1001)],
                ..base.clone()
            }),
            TransactionSeedError::CapturesExceedAmount
        );
        assert_eq!(
            bad(TransactionSeed {
                prior_refunds: 201,
                ..base.clone()
            }),
            TransactionSeedError::TooManyRefunds
        );
        assert_eq!(
            bad(TransactionSeed {
                prior_refunds: 200,
                other_operations: 300,
                ..base.clone()
            }),
            TransactionSeedError::TooManyOperations
        );
        assert!(matches!(
            bad(TransactionSeed {
                payment_transaction_id: Some("a/b".into()),
                ..base.clone()
            }),
            TransactionSeedError::InvalidTransactionId(_)
        ));
        assert!(matches!(
            bad(TransactionSeed {
                captures: vec![CaptureSeed::with_id(1, "c"), CaptureSeed::with_id(1, "c")],
                ..base.clone()
            }),
            TransactionSeedError::InvalidCaptureId(_)
        ));
        assert!(matches!(
            bad(TransactionSeed {
                line_items: Some(vec![LineItem::new("", 0, 1)]),
                ..base
            }),
            TransactionSeedError::InvalidLineItems(_)
        ));
    }
}
