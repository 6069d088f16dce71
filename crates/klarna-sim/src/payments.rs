//! Payment transactions of the partner Payments API as the simulator keeps them (transactions,
//! their captures and refunds, line items), their JSON form, and Klarna's rules for the two
//! refund operations.
//!
//! Ids are KRNs (`krn:payment:eu1:transaction:<uuid>`, captures `…:capture:<n>`, refunds
//! `…:refund:<uuid>`), but the simulator never parses them: captures are found through an index
//! from capture id to transaction id. Amounts are `i64` minor units; timestamps RFC 3339 UTC
//! with milliseconds.

use std::collections::HashMap;

use serde::{Deserialize, Serialize, Serializer};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::format_timestamp;
use crate::partner_schema::RefundRequest;
use crate::response::PartnerError;

/// Most refunds on one transaction; the next one is a 403.
pub const MAX_REFUNDS: usize = 200;
/// Most operations (captures, refunds and other operations) on one transaction; the next one is
/// a 403.
pub const MAX_OPERATIONS: usize = 500;
/// Most captures on one transaction (only enforced when seeding: the simulator has no capture
/// operation).
pub const MAX_CAPTURES: usize = 200;

/// Prefix of the transaction KRNs the simulator generates.
pub(crate) const TRANSACTION_KRN_PREFIX: &str = "krn:payment:eu1:transaction:";

/// A payment transaction's state.
///
/// Refunds are possible in every state but `CLOSED`, once something was captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TransactionState {
    /// Authorized; refunds are possible after a (partial) capture.
    Authorized,
    /// The authorization expired (Klarna closes it 7 days later unless reauthorized); captured
    /// amounts can still be refunded.
    Expired,
    /// Completed; captured amounts can still be refunded.
    Completed,
    /// Closed: no further operation, refunds included.
    Closed,
}

impl TransactionState {
    /// The upper-case name (`AUTHORIZED`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authorized => "AUTHORIZED",
            Self::Expired => "EXPIRED",
            Self::Completed => "COMPLETED",
            Self::Closed => "CLOSED",
        }
    }
}

/// A partner API line item, as accepted in refund requests and seeds and returned in
/// transaction JSON.
///
/// `name` (1 to 255 characters), `quantity` (at least 1), `unit_price` and `total_amount` are
/// required; `tax_rate` is in hundredths of a percent (0 to 10 000); `reference` at most 255
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    /// Descriptive name.
    pub name: String,
    /// Quantity, at least 1.
    pub quantity: i64,
    /// Unit price in minor units.
    pub unit_price: i64,
    /// Total in minor units.
    pub total_amount: i64,
    /// Tax included in `total_amount`, in minor units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_tax_amount: Option<i64>,
    /// Tax rate in hundredths of a percent (2500 = 25 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_rate: Option<i64>,
    /// SKU or similar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// `type` (free text, e.g. `PHYSICAL`, `SHIPPING_FEE`).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl LineItem {
    /// A line item with only the required fields (`total_amount = quantity * unit_price`).
    pub fn new(name: impl Into<String>, quantity: i64, unit_price: i64) -> Self {
        Self {
            name: name.into(),
            quantity,
            unit_price,
            total_amount: quantity.saturating_mul(unit_price),
            total_tax_amount: None,
            tax_rate: None,
            reference: None,
            kind: None,
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

    /// Sets `type`.
    pub fn with_type(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }
}

pub(crate) fn timestamp<S: Serializer>(
    at: &OffsetDateTime,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let text = format_timestamp(*at).map_err(serde::ser::Error::custom)?;
    serializer.serialize_str(&text)
}

/// One capture of a transaction.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TxCapture {
    #[serde(rename = "payment_capture_id")]
    pub(crate) id: String,
    pub(crate) amount: i64,
    pub(crate) refunded_amount: i64,
    #[serde(serialize_with = "timestamp")]
    pub(crate) created_at: OffsetDateTime,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) line_items: Vec<LineItem>,
}

impl TxCapture {
    fn refundable(&self) -> i64 {
        self.amount - self.refunded_amount
    }
}

/// One refund of a transaction, as listed in the transaction's `refunds`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TxRefund {
    #[serde(rename = "payment_refund_id")]
    pub(crate) id: String,
    /// The capture refunded (capture refunds), or the one capture a transaction refund was
    /// allocated to; `None` when it was spread over several.
    #[serde(rename = "payment_capture_id", skip_serializing_if = "Option::is_none")]
    pub(crate) capture_id: Option<String>,
    pub(crate) amount: i64,
    pub(crate) currency: String,
    #[serde(
        rename = "payment_refund_reference",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) description: Option<String>,
    #[serde(serialize_with = "timestamp")]
    pub(crate) created_at: OffsetDateTime,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) line_items: Vec<LineItem>,
}

/// The 201 body of a refund: the refund, its transaction and its state.
#[derive(Debug, Serialize)]
pub(crate) struct RefundCreated<'a> {
    payment_refund_id: &'a str,
    payment_transaction_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payment_capture_id: Option<&'a str>,
    amount: i64,
    currency: &'a str,
    payment_refund_reference: Option<&'a str>,
    description: Option<&'a str>,
    state: &'static str,
    #[serde(serialize_with = "timestamp")]
    created_at: OffsetDateTime,
}

/// A payment transaction and everything that happened to it.
#[derive(Debug, Clone)]
pub(crate) struct Transaction {
    pub(crate) id: String,
    pub(crate) state: TransactionState,
    pub(crate) amount: i64,
    pub(crate) currency: String,
    pub(crate) line_items: Vec<LineItem>,
    pub(crate) captured_amount: i64,
    pub(crate) refunded_amount: i64,
    pub(crate) captures: Vec<TxCapture>,
    pub(crate) refunds: Vec<TxRefund>,
    /// Operations other than captures and refunds (seeded), counted towards
    /// [`MAX_OPERATIONS`].
    pub(crate) other_operations: usize,
    pub(crate) created_at: OffsetDateTime,
}

#[derive(Serialize)]
struct Funding {
    #[serde(rename = "type")]
    kind: &'static str,
    state: &'static str,
}

/// Borrowed JSON form of a transaction (`GET …/payment/transactions/{id}`).
#[derive(Serialize)]
pub(crate) struct TransactionView<'a> {
    payment_transaction_id: &'a str,
    state: TransactionState,
    amount: i64,
    currency: &'a str,
    line_items: &'a [LineItem],
    payment_funding: Funding,
    captured_amount: i64,
    refunded_amount: i64,
    captures: &'a [TxCapture],
    refunds: &'a [TxRefund],
    #[serde(serialize_with = "timestamp")]
    created_at: OffsetDateTime,
}

impl Transaction {
    pub(crate) fn view(&self) -> TransactionView<'_> {
        TransactionView {
            payment_transaction_id: &self.id,
            state: self.state,
            amount: self.amount,
            currency: &self.currency,
            line_items: &self.line_items,
            payment_funding: Funding {
                kind: "GUARANTEED",
                state: "FUNDED",
            },
            captured_amount: self.captured_amount,
            refunded_amount: self.refunded_amount,
            captures: &self.captures,
            refunds: &self.refunds,
            created_at: self.created_at,
        }
    }

    pub(crate) fn operations(&self) -> usize {
        self.captures.len() + self.refunds.len() + self.other_operations
    }

    /// The rules every refund passes before its amount is looked at: same currency, not
    /// closed, something captured, below the refund and operation limits.
    fn check_refundable(&self, request: &RefundRequest) -> Result<(), PartnerError> {
        if !request.currency.eq_ignore_ascii_case(&self.currency) {
            return Err(PartnerError::invalid(
                "currency",
                format!(
                    "Parameter currency must be the transaction's currency {}",
                    self.currency
                ),
            ));
        }
        if self.state == TransactionState::Closed {
            return Err(PartnerError::forbidden(
                "Transaction is closed. No further operations are allowed",
            ));
        }
        if self.captured_amount == 0 {
            return Err(PartnerError::forbidden(
                "Transaction has no captures. Refund not possible",
            ));
        }
        if self.refunds.len() >= MAX_REFUNDS {
            return Err(PartnerError::forbidden(format!(
                "Maximum number of refunds ({MAX_REFUNDS}) reached for this transaction"
            )));
        }
        if self.operations() >= MAX_OPERATIONS {
            return Err(PartnerError::forbidden(format!(
                "Maximum number of operations ({MAX_OPERATIONS}) reached for this transaction"
            )));
        }
        Ok(())
    }

    /// Records a refund of `shares` (capture index, amount) and returns its index in `refunds`.
    fn record_refund(
        &mut self,
        shares: &[(usize, i64)],
        request: RefundRequest,
        now: OffsetDateTime,
    ) -> usize {
        for &(index, share) in shares {
            if let Some(capture) = self.captures.get_mut(index) {
                capture.refunded_amount += share;
            }
        }
        self.refunded_amount += request.amount;
        let capture_id = match shares {
            [(index, _)] => self.captures.get(*index).map(|c| c.id.clone()),
            _ => None,
        };
        self.refunds.push(TxRefund {
            id: format!("{}:refund:{}", self.id, Uuid::new_v4()),
            capture_id,
            amount: request.amount,
            currency: self.currency.clone(),
            reference: request.reference,
            description: request.description,
            created_at: now,
            line_items: request.line_items,
        });
        self.refunds.len() - 1
    }

    /// The 201 body for the refund at `index`.
    pub(crate) fn refund_created(&self, index: usize) -> Option<RefundCreated<'_>> {
        let refund = self.refunds.get(index)?;
        Some(RefundCreated {
            payment_refund_id: &refund.id,
            payment_transaction_id: &self.id,
            payment_capture_id: refund.capture_id.as_deref(),
            amount: refund.amount,
            currency: &refund.currency,
            payment_refund_reference: refund.reference.as_deref(),
            description: refund.description.as_deref(),
            state: "SUCCEEDED",
            created_at: refund.created_at,
        })
    }
}

/// Splits `amount` over the captures oldest first, each up to what is left of it; `None` when
/// the captures cannot take it all.
fn allocate(captures: &[TxCapture], amount: i64) -> Option<Vec<(usize, i64)>> {
    let mut left = amount;
    let mut shares = Vec::new();
    for (index, capture) in captures.iter().enumerate() {
        if left == 0 {
            break;
        }
        let share = left.min(capture.refundable());
        if share > 0 {
            shares.push((index, share));
            left -= share;
        }
    }
    (left == 0).then_some(shares)
}

/// A refund just executed: where to find it.
#[derive(Debug, Clone)]
pub(crate) struct Refunded {
    pub(crate) transaction_id: String,
    pub(crate) index: usize,
}

/// Transactions by id, and the index from capture id to transaction id.
#[derive(Debug, Default)]
pub(crate) struct Payments {
    transactions: HashMap<String, Transaction>,
    capture_owner: HashMap<String, String>,
}

/// Why a transaction could not be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CaptureIdTaken(pub(crate) String);

impl Payments {
    pub(crate) fn get(&self, transaction_id: &str) -> Option<&Transaction> {
        self.transactions.get(transaction_id)
    }

    /// Stores (or replaces) a transaction; refuses capture ids another transaction uses.
    pub(crate) fn insert(&mut self, transaction: Transaction) -> Result<(), CaptureIdTaken> {
        if let Some(taken) = transaction.captures.iter().find(|c| {
            self.capture_owner
                .get(&c.id)
                .is_some_and(|owner| *owner != transaction.id)
        }) {
            return Err(CaptureIdTaken(taken.id.clone()));
        }
        if let Some(old) = self.transactions.remove(&transaction.id) {
            for capture in &old.captures {
                self.capture_owner.remove(&capture.id);
            }
        }
        for capture in &transaction.captures {
            self.capture_owner
                .insert(capture.id.clone(), transaction.id.clone());
        }
        self.transactions
            .insert(transaction.id.clone(), transaction);
        Ok(())
    }

    /// Sets a transaction's state; `None` if there is no such transaction.
    pub(crate) fn set_state(
        &mut self,
        transaction_id: &str,
        state: TransactionState,
    ) -> Option<&Transaction> {
        let transaction = self.transactions.get_mut(transaction_id)?;
        transaction.state = state;
        Some(transaction)
    }

    fn transaction_mut(&mut self, transaction_id: &str) -> Result<&mut Transaction, PartnerError> {
        self.transactions.get_mut(transaction_id).ok_or_else(|| {
            PartnerError::not_found(format!(
                "Payment transaction {transaction_id} was not found"
            ))
        })
    }

    /// Refund a payment transaction: the amount is allocated over the captures oldest first.
    pub(crate) fn refund_transaction(
        &mut self,
        transaction_id: &str,
        request: RefundRequest,
        now: OffsetDateTime,
    ) -> Result<Refunded, PartnerError> {
        let transaction = self.transaction_mut(transaction_id)?;
        transaction.check_refundable(&request)?;
        let shares = allocate(&transaction.captures, request.amount).ok_or_else(|| {
            PartnerError::forbidden(format!(
                "Refund amount exceeds the refundable amount ({} {} left)",
                transaction.captured_amount - transaction.refunded_amount,
                transaction.currency
            ))
        })?;
        let index = transaction.record_refund(&shares, request, now);
        Ok(Refunded {
            transaction_id: transaction.id.clone(),
            index,
        })
    }

    /// Refund a payment capture: at most what is left of that capture.
    pub(crate) fn refund_capture(
        &mut self,
        capture_id: &str,
        request: RefundRequest,
        now: OffsetDateTime,
    ) -> Result<Refunded, PartnerError> {
        let not_found =
            || PartnerError::not_found(format!("Payment capture {capture_id} was not found"));
        let transaction_id = self.capture_owner.get(capture_id).ok_or_else(not_found)?;
        let transaction = self
            .transactions
            .get_mut(transaction_id.as_str())
            .ok_or_else(not_found)?;
        let index = transaction
            .captures
            .iter()
            .position(|c| c.id == capture_id)
            .ok_or_else(not_found)?;
        transaction.check_refundable(&request)?;
        let refundable = transaction.captures[index].refundable();
        if request.amount > refundable {
            return Err(PartnerError::forbidden(format!(
                "Refund amount exceeds the refundable amount of the capture ({refundable} {} left)",
                transaction.currency
            )));
        }
        let index = transaction.record_refund(&[(index, request.amount)], request, now);
        Ok(Refunded {
            transaction_id: transaction.id.clone(),
            index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(id: &str, amount: i64, refunded: i64) -> TxCapture {
        TxCapture {
            id: id.to_owned(),
            amount,
            refunded_amount: refunded,
            created_at: OffsetDateTime::UNIX_EPOCH,
            line_items: Vec::new(),
        }
    }

    #[test]
    fn allocation_takes_the_oldest_captures_first() {
        let captures = [
            capture("a", 100, 100),
            capture("b", 300, 50),
            capture("c", 200, 0),
        ];
        assert_eq!(allocate(&captures, 250), Some(vec![(1, 250)]));
        assert_eq!(allocate(&captures, 300), Some(vec![(1, 250), (2, 50)]));
        assert_eq!(allocate(&captures, 450), Some(vec![(1, 250), (2, 200)]));
        assert_eq!(allocate(&captures, 451), None);
    }
}
