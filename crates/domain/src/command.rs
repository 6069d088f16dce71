//! The gateway's requests as validated commands, and the drafts they are validated from.
//! A draft carries what the caller sent, field for field; `validate` checks every rule that
//! needs nothing but the request itself and reports every bad field at once.

use crate::ids::{CaptureId, IdempotencyKey, OrderId, RefundId};
use crate::money::{Amount, Currency};
use crate::order_line::{OrderLine, OrderLineDraft};
use crate::payments::{LineItem, LineItemDraft, PaymentCaptureId, PaymentTransactionId};
use crate::validation::Violations;

/// Klarna's limit on order lines per refund.
pub const MAX_ORDER_LINES: usize = 1000;
/// Klarna's limit on `description` and `reference`.
pub const MAX_TEXT_CHARS: usize = 255;

fn account(name: String) -> Option<String> {
    if name.is_empty() { None } else { Some(name) }
}

/// A request's `description` or `reference`: at most [`MAX_TEXT_CHARS`] characters, no
/// control characters; empty means none.
fn optional_text(v: &mut Violations, field: &str, value: String) -> Option<String> {
    v.max_chars(field, &value, MAX_TEXT_CHARS);
    v.no_control_chars(field, &value);
    if value.is_empty() { None } else { Some(value) }
}

/// `RefundOrder` as received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefundOrderDraft {
    /// The caller's idempotency key.
    pub idempotency_key: String,
    /// Account name; empty for the only account.
    pub klarna_account: String,
    /// Order id.
    pub order_id: String,
    /// Amount in minor units.
    pub refunded_amount: i64,
    /// Currency to check against the order's; empty means unchecked.
    pub currency: String,
    /// Text for the customer.
    pub description: String,
    /// Settlement reference.
    pub reference: String,
    /// Refunded lines.
    pub order_lines: Vec<OrderLineDraft>,
    /// Check only.
    pub validate_only: bool,
}

/// A valid refund request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundOrder {
    /// The caller's idempotency key.
    pub idempotency_key: IdempotencyKey,
    /// Account name; `None` for the only account.
    pub klarna_account: Option<String>,
    /// The order.
    pub order_id: OrderId,
    /// The amount.
    pub refunded_amount: Amount,
    /// Currency the caller expects the order to be in.
    pub currency: Option<Currency>,
    /// Text for the customer.
    pub description: Option<String>,
    /// The caller's settlement reference.
    pub reference: Option<String>,
    /// Refunded lines.
    pub order_lines: Vec<OrderLine>,
    /// Check only; send nothing.
    pub validate_only: bool,
}

impl RefundOrder {
    /// Checks every request-only rule: key, ids, amount, text lengths, line count, each line,
    /// and that return-fee refunds' lines sum exactly to the refunded amount.
    pub fn validate(d: RefundOrderDraft) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let key = v.check("idempotency_key", IdempotencyKey::parse(&d.idempotency_key));
        let order_id = v.check("order_id", OrderId::parse(&d.order_id));
        let amount = v.check("refunded_amount", Amount::parse(d.refunded_amount));
        let currency = if d.currency.is_empty() {
            Some(None)
        } else {
            v.check("currency", Currency::parse(&d.currency)).map(Some)
        };
        let description = optional_text(&mut v, "description", d.description);
        let reference = optional_text(&mut v, "reference", d.reference);
        if d.order_lines.len() > MAX_ORDER_LINES {
            v.push(
                "order_lines",
                format!(
                    "must have at most {MAX_ORDER_LINES} lines, got {}",
                    d.order_lines.len()
                ),
            );
        }
        let lines: Vec<Option<OrderLine>> = d
            .order_lines
            .into_iter()
            .enumerate()
            .map(|(i, line)| OrderLine::validate(line, &format!("order_lines[{i}]"), &mut v))
            .collect();
        let lines: Option<Vec<OrderLine>> = lines.into_iter().collect();
        if let Some(lines) = &lines
            && lines.iter().any(OrderLine::is_return_fee)
        {
            // Each line is within ±200 000 000 and a request holds far fewer than 10^10
            // lines, so the sum fits an i64.
            let sum: i64 = lines.iter().map(|l| l.total_amount).sum();
            if sum != d.refunded_amount {
                v.push(
                    "order_lines",
                    format!(
                        "with a return_fee line, the lines' total_amount must sum exactly \
                         to refunded_amount ({}), got {sum}",
                        d.refunded_amount
                    ),
                );
            }
        }
        match (key, order_id, amount, currency, lines) {
            (
                Some(idempotency_key),
                Some(order_id),
                Some(refunded_amount),
                Some(currency),
                Some(order_lines),
            ) if v.is_empty() => Ok(Self {
                idempotency_key,
                klarna_account: account(d.klarna_account),
                order_id,
                refunded_amount,
                currency,
                description,
                reference,
                order_lines,
                validate_only: d.validate_only,
            }),
            _ => Err(v),
        }
    }

    /// True when a line is a return fee (the return-fee state rules apply).
    pub fn has_return_fee(&self) -> bool {
        self.order_lines.iter().any(OrderLine::is_return_fee)
    }

    /// True when a state rule needs Klarna's view of the order before sending.
    pub fn needs_order(&self) -> bool {
        self.currency.is_some() || self.has_return_fee()
    }
}

/// `ReleaseAuthorization` as received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleaseAuthorizationDraft {
    /// The caller's idempotency key.
    pub idempotency_key: String,
    /// Account name.
    pub klarna_account: String,
    /// Order id.
    pub order_id: String,
}

/// A valid release of an order's remaining authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseAuthorization {
    /// The caller's idempotency key.
    pub idempotency_key: IdempotencyKey,
    /// Account name; `None` for the only account.
    pub klarna_account: Option<String>,
    /// The order.
    pub order_id: OrderId,
}

impl ReleaseAuthorization {
    /// Checks the key and the order id.
    pub fn validate(d: ReleaseAuthorizationDraft) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let key = v.check("idempotency_key", IdempotencyKey::parse(&d.idempotency_key));
        let order_id = v.check("order_id", OrderId::parse(&d.order_id));
        match (key, order_id) {
            (Some(idempotency_key), Some(order_id)) => Ok(Self {
                idempotency_key,
                klarna_account: account(d.klarna_account),
                order_id,
            }),
            _ => Err(v),
        }
    }
}

/// `ExtendDueDate` as received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtendDueDateDraft {
    /// The caller's idempotency key.
    pub idempotency_key: String,
    /// Account name.
    pub klarna_account: String,
    /// Order id.
    pub order_id: String,
    /// Capture id.
    pub capture_id: String,
    /// Days to extend by.
    pub number_of_days: i32,
}

/// A valid due-date extension request (whether Klarna offers it is a state rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtendDueDate {
    /// The caller's idempotency key.
    pub idempotency_key: IdempotencyKey,
    /// Account name; `None` for the only account.
    pub klarna_account: Option<String>,
    /// The order.
    pub order_id: OrderId,
    /// The capture whose due date moves.
    pub capture_id: CaptureId,
    /// Days, at least 1.
    pub number_of_days: i32,
}

impl ExtendDueDate {
    /// Checks the key, the ids and that the number of days is positive.
    pub fn validate(d: ExtendDueDateDraft) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let key = v.check("idempotency_key", IdempotencyKey::parse(&d.idempotency_key));
        let order_id = v.check("order_id", OrderId::parse(&d.order_id));
        let capture_id = v.check("capture_id", CaptureId::parse(&d.capture_id));
        if d.number_of_days < 1 {
            v.push(
                "number_of_days",
                "must be at least 1: one of the numbers GetExtendDueDateOptions offers",
            );
        }
        match (key, order_id, capture_id) {
            (Some(idempotency_key), Some(order_id), Some(capture_id)) if v.is_empty() => Ok(Self {
                idempotency_key,
                klarna_account: account(d.klarna_account),
                order_id,
                capture_id,
                number_of_days: d.number_of_days,
            }),
            _ => Err(v),
        }
    }
}

/// A valid `GetOrder`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderQuery {
    /// Account name; `None` for the only account.
    pub klarna_account: Option<String>,
    /// The order.
    pub order_id: OrderId,
}

impl OrderQuery {
    /// Checks the order id.
    pub fn validate(klarna_account: String, order_id: &str) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let order_id = v.check("order_id", OrderId::parse(order_id));
        match order_id {
            Some(order_id) => Ok(Self {
                klarna_account: account(klarna_account),
                order_id,
            }),
            None => Err(v),
        }
    }
}

/// A valid `GetRefund`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundQuery {
    /// Account name; `None` for the only account.
    pub klarna_account: Option<String>,
    /// The order.
    pub order_id: OrderId,
    /// The refund.
    pub refund_id: RefundId,
}

impl RefundQuery {
    /// Checks both ids.
    pub fn validate(
        klarna_account: String,
        order_id: &str,
        refund_id: &str,
    ) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let order_id = v.check("order_id", OrderId::parse(order_id));
        let refund_id = v.check("refund_id", RefundId::parse(refund_id));
        match (order_id, refund_id) {
            (Some(order_id), Some(refund_id)) => Ok(Self {
                klarna_account: account(klarna_account),
                order_id,
                refund_id,
            }),
            _ => Err(v),
        }
    }
}

/// A valid `GetExtendDueDateOptions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtendDueDateOptionsQuery {
    /// Account name; `None` for the only account.
    pub klarna_account: Option<String>,
    /// The order.
    pub order_id: OrderId,
    /// The capture.
    pub capture_id: CaptureId,
}

impl ExtendDueDateOptionsQuery {
    /// Checks both ids.
    pub fn validate(
        klarna_account: String,
        order_id: &str,
        capture_id: &str,
    ) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let order_id = v.check("order_id", OrderId::parse(order_id));
        let capture_id = v.check("capture_id", CaptureId::parse(capture_id));
        match (order_id, capture_id) {
            (Some(order_id), Some(capture_id)) => Ok(Self {
                klarna_account: account(klarna_account),
                order_id,
                capture_id,
            }),
            _ => Err(v),
        }
    }
}

/// Longest list of line items in one transaction refund (as for order lines).
pub const MAX_LINE_ITEMS: usize = 1000;

/// `RefundCapture` as received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefundCaptureDraft {
    /// The caller's idempotency key.
    pub idempotency_key: String,
    /// Account name; empty for the only partner account.
    pub klarna_account: String,
    /// The transaction the capture belongs to.
    pub payment_transaction_id: String,
    /// The capture.
    pub payment_capture_id: String,
    /// Amount in minor units.
    pub amount: i64,
    /// The transaction's currency.
    pub currency: String,
    /// Settlement reference.
    pub reference: String,
    /// Text for the customer.
    pub description: String,
    /// Check only.
    pub validate_only: bool,
}

/// A valid refund of one payment capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundCapture {
    /// The caller's idempotency key.
    pub idempotency_key: IdempotencyKey,
    /// Account name; `None` for the only partner account.
    pub klarna_account: Option<String>,
    /// The transaction, as the caller named it: it scopes limits, serialization and audit.
    pub transaction_id: PaymentTransactionId,
    /// The capture refunded.
    pub capture_id: PaymentCaptureId,
    /// The amount.
    pub amount: Amount,
    /// The currency, which must be the transaction's.
    pub currency: Currency,
    /// The caller's settlement reference.
    pub reference: Option<String>,
    /// Text for the customer.
    pub description: Option<String>,
    /// Check only; send nothing.
    pub validate_only: bool,
}

impl RefundCapture {
    /// Checks the key, both KRNs, the amount, the currency and the text lengths.
    pub fn validate(d: RefundCaptureDraft) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let key = v.check("idempotency_key", IdempotencyKey::parse(&d.idempotency_key));
        let transaction_id = v.check(
            "payment_transaction_id",
            PaymentTransactionId::parse(&d.payment_transaction_id),
        );
        let capture_id = v.check(
            "payment_capture_id",
            PaymentCaptureId::parse(&d.payment_capture_id),
        );
        let amount = v.check("amount", Amount::parse(d.amount));
        let currency = v.check("currency", Currency::parse(&d.currency));
        let reference = optional_text(&mut v, "reference", d.reference);
        let description = optional_text(&mut v, "description", d.description);
        match (key, transaction_id, capture_id, amount, currency) {
            (
                Some(idempotency_key),
                Some(transaction_id),
                Some(capture_id),
                Some(amount),
                Some(currency),
            ) if v.is_empty() => Ok(Self {
                idempotency_key,
                klarna_account: account(d.klarna_account),
                transaction_id,
                capture_id,
                amount,
                currency,
                reference,
                description,
                validate_only: d.validate_only,
            }),
            _ => Err(v),
        }
    }
}

/// `RefundTransaction` as received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefundTransactionDraft {
    /// The caller's idempotency key.
    pub idempotency_key: String,
    /// Account name; empty for the only partner account.
    pub klarna_account: String,
    /// The transaction.
    pub payment_transaction_id: String,
    /// Amount in minor units.
    pub amount: i64,
    /// The transaction's currency.
    pub currency: String,
    /// The refunded line items.
    pub line_items: Vec<LineItemDraft>,
    /// Settlement reference.
    pub reference: String,
    /// Text for the customer.
    pub description: String,
    /// Check only.
    pub validate_only: bool,
}

/// A valid refund of a payment transaction, allocated by Klarna across its captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundTransaction {
    /// The caller's idempotency key.
    pub idempotency_key: IdempotencyKey,
    /// Account name; `None` for the only partner account.
    pub klarna_account: Option<String>,
    /// The transaction.
    pub transaction_id: PaymentTransactionId,
    /// The amount: the sum of the line items' totals.
    pub amount: Amount,
    /// The currency, which must be the transaction's.
    pub currency: Currency,
    /// At least one line item.
    pub line_items: Vec<LineItem>,
    /// The caller's settlement reference.
    pub reference: Option<String>,
    /// Text for the customer.
    pub description: Option<String>,
    /// Check only; send nothing.
    pub validate_only: bool,
}

impl RefundTransaction {
    /// Checks the key, the KRN, the amount, the currency, the text lengths, each line item,
    /// and that there is at least one and their totals sum exactly to `amount`.
    pub fn validate(d: RefundTransactionDraft) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let key = v.check("idempotency_key", IdempotencyKey::parse(&d.idempotency_key));
        let transaction_id = v.check(
            "payment_transaction_id",
            PaymentTransactionId::parse(&d.payment_transaction_id),
        );
        let amount = v.check("amount", Amount::parse(d.amount));
        let currency = v.check("currency", Currency::parse(&d.currency));
        let reference = optional_text(&mut v, "reference", d.reference);
        let description = optional_text(&mut v, "description", d.description);
        if d.line_items.is_empty() {
            v.push(
                "line_items",
                "is required: at least one line item, which Klarna allocates across the captures",
            );
        }
        if d.line_items.len() > MAX_LINE_ITEMS {
            v.push(
                "line_items",
                format!(
                    "must have at most {MAX_LINE_ITEMS} items, got {}",
                    d.line_items.len()
                ),
            );
        }
        let mut items = Vec::with_capacity(d.line_items.len());
        for (i, item) in d.line_items.into_iter().enumerate() {
            match LineItem::parse(item) {
                Ok(item) => items.push(item),
                Err(bad) => v.extend_nested(&format!("line_items[{i}]"), bad),
            }
        }
        if !items.is_empty() && v.is_empty() {
            // Each total is a checked product of two i64s and at most 1000 of them are
            // summed, so i128 cannot overflow.
            let sum: i128 = items.iter().map(|i| i128::from(i.total_amount)).sum();
            if sum != i128::from(d.amount) {
                v.push(
                    "line_items",
                    format!(
                        "the line items' total_amount must sum exactly to amount ({}), got {sum}",
                        d.amount
                    ),
                );
            }
        }
        match (key, transaction_id, amount, currency) {
            (Some(idempotency_key), Some(transaction_id), Some(amount), Some(currency))
                if v.is_empty() =>
            {
                Ok(Self {
                    idempotency_key,
                    klarna_account: account(d.klarna_account),
                    transaction_id,
                    amount,
                    currency,
                    line_items: items,
                    reference,
                    description,
                    validate_only: d.validate_only,
                })
            }
            _ => Err(v),
        }
    }
}

/// A valid `GetTransaction`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionQuery {
    /// Account name; `None` for the only partner account.
    pub klarna_account: Option<String>,
    /// The transaction.
    pub transaction_id: PaymentTransactionId,
}

impl TransactionQuery {
    /// Checks the KRN.
    pub fn validate(klarna_account: String, transaction_id: &str) -> Result<Self, Violations> {
        let mut v = Violations::new();
        match v.check(
            "payment_transaction_id",
            PaymentTransactionId::parse(transaction_id),
        ) {
            Some(transaction_id) => Ok(Self {
                klarna_account: account(klarna_account),
                transaction_id,
            }),
            None => Err(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRANSACTION: &str = "krn:payment:eu1:transaction:6b1f3c2e-0d4a-4b8e-9f1a-2c3d4e5f6a70";

    fn item(total: i64) -> LineItemDraft {
        LineItemDraft {
            name: "Shoes".into(),
            quantity: 1,
            unit_price: total,
            total_amount: total,
            ..Default::default()
        }
    }

    fn transaction_refund() -> RefundTransactionDraft {
        RefundTransactionDraft {
            idempotency_key: "k".into(),
            payment_transaction_id: TRANSACTION.into(),
            amount: 5000,
            currency: "sek".into(),
            line_items: vec![item(2000), item(3000)],
            ..Default::default()
        }
    }

    fn fields(v: Violations) -> Vec<String> {
        v.as_slice().iter().map(|f| f.field.clone()).collect()
    }

    #[test]
    fn a_transaction_refund_needs_line_items_that_sum_to_the_amount() {
        let ok =
            RefundTransaction::validate(transaction_refund()).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(ok.currency.as_str(), "SEK");
        let none = RefundTransaction::validate(RefundTransactionDraft {
            line_items: vec![],
            ..transaction_refund()
        });
        assert_eq!(none.err().map(fields), Some(vec!["line_items".to_owned()]));
        let off = RefundTransaction::validate(RefundTransactionDraft {
            amount: 5001,
            ..transaction_refund()
        });
        assert_eq!(off.err().map(fields), Some(vec!["line_items".to_owned()]));
        let bad_item = RefundTransaction::validate(RefundTransactionDraft {
            line_items: vec![
                item(5000),
                LineItemDraft {
                    quantity: 0,
                    ..item(0)
                },
            ],
            ..transaction_refund()
        });
        assert_eq!(
            bad_item.err().map(fields),
            Some(vec!["line_items[1].quantity".to_owned()])
        );
    }

    #[test]
    fn partner_refunds_report_every_bad_field() {
        let bad = RefundCapture::validate(RefundCaptureDraft {
            payment_transaction_id: "krn:a/b".into(),
            payment_capture_id: "capture-1".into(),
            currency: "kr".into(),
            reference: "r".repeat(256),
            ..Default::default()
        });
        assert_eq!(
            bad.err().map(fields),
            Some(
                [
                    "idempotency_key",
                    "payment_transaction_id",
                    "payment_capture_id",
                    "amount",
                    "currency",
                    "reference"
                ]
                .map(str::to_owned)
                .to_vec()
            )
        );
        let ok = RefundCapture::validate(RefundCaptureDraft {
            idempotency_key: "k".into(),
            payment_transaction_id: TRANSACTION.into(),
            payment_capture_id: format!("{TRANSACTION}:capture:1"),
            amount: 1,
            currency: "EUR".into(),
            ..Default::default()
        });
        assert!(ok.is_ok(), "{ok:?}");
        assert!(TransactionQuery::validate(String::new(), "krn:x?y").is_err());
    }
    use crate::order_line::{LineTypeInput, OrderLineType};
    use proptest::prelude::*;

    const ORDER: &str = "4e6b2c1a-8f3d-4b7e-9a2c-5d1e0f3b7a64";

    fn draft() -> RefundOrderDraft {
        RefundOrderDraft {
            idempotency_key: "k-1".into(),
            order_id: ORDER.into(),
            refunded_amount: 9500,
            ..Default::default()
        }
    }

    fn line(t: OrderLineType, unit_price: i64) -> OrderLineDraft {
        OrderLineDraft {
            line_type: LineTypeInput::Known(t),
            name: "x".into(),
            quantity: 1,
            unit_price,
            total_amount: unit_price,
            ..Default::default()
        }
    }

    fn bad_fields(d: RefundOrderDraft) -> Vec<String> {
        match RefundOrder::validate(d) {
            Ok(_) => vec![],
            Err(v) => v.as_slice().iter().map(|f| f.field.clone()).collect(),
        }
    }

    #[test]
    fn minimal_refund_is_valid() {
        let r = RefundOrder::validate(draft());
        assert!(r.is_ok(), "{r:?}");
        let r = r.unwrap_or_else(|_| unreachable!());
        assert!(!r.needs_order());
        assert_eq!(r.klarna_account, None);
    }

    #[test]
    fn every_bad_top_level_field_is_listed() {
        let d = RefundOrderDraft {
            idempotency_key: String::new(),
            order_id: "nope".into(),
            refunded_amount: 0,
            currency: "kronor".into(),
            description: "d".repeat(256),
            reference: "r".repeat(256),
            ..Default::default()
        };
        assert_eq!(
            bad_fields(d),
            [
                "idempotency_key",
                "order_id",
                "refunded_amount",
                "currency",
                "description",
                "reference"
            ]
        );
    }

    #[test]
    fn control_characters_in_text_are_refused_by_name() {
        let mut d = draft();
        d.description = "one shirt\u{0}".into();
        d.reference = "RMA-1\n2".into();
        let mut l = line(OrderLineType::Physical, 100);
        l.name = "Shirt\u{1b}[31m".into();
        l.reference = "sku\u{7f}".into();
        d.refunded_amount = 100;
        d.order_lines = vec![l];
        let violations = match RefundOrder::validate(d) {
            Ok(r) => panic!("accepted: {r:?}"),
            Err(v) => v,
        };
        let fields: Vec<(&str, &str)> = violations
            .as_slice()
            .iter()
            .map(|f| (f.field.as_str(), f.description.as_str()))
            .collect();
        let refused = "must not contain control characters";
        assert_eq!(
            fields,
            [
                ("description", refused),
                ("reference", refused),
                ("order_lines[0].name", refused),
                ("order_lines[0].reference", refused),
            ]
        );

        // Any other text is the caller's: accents, emoji, right-to-left scripts.
        let mut d = draft();
        d.description = "Återbetalning 👕 שמלה".into();
        d.reference = "RMA-1001 ☂".into();
        assert!(RefundOrder::validate(d).is_ok());
    }

    #[test]
    fn too_many_lines() {
        let mut d = draft();
        d.refunded_amount = 1;
        d.order_lines = vec![line(OrderLineType::Physical, 1); 1001];
        assert_eq!(bad_fields(d), ["order_lines"]);
    }

    #[test]
    fn return_fee_lines_must_sum_to_the_amount() {
        let mut d = draft();
        d.order_lines = vec![
            line(OrderLineType::Physical, 10000),
            line(OrderLineType::ReturnFee, -500),
        ];
        let ok = RefundOrder::validate(d.clone());
        assert!(
            ok.as_ref()
                .is_ok_and(|r| r.has_return_fee() && r.needs_order())
        );
        d.refunded_amount = 10000;
        assert_eq!(bad_fields(d), ["order_lines"]);
    }

    #[test]
    fn lines_without_return_fee_need_not_sum() {
        let mut d = draft();
        d.order_lines = vec![line(OrderLineType::Physical, 100)];
        assert!(bad_fields(d).is_empty());
    }

    #[test]
    fn line_paths_carry_their_index() {
        let mut d = draft();
        let mut bad = line(OrderLineType::Physical, 100);
        bad.total_amount = 99;
        d.order_lines = vec![line(OrderLineType::Physical, 1); 3];
        d.order_lines.push(bad);
        assert_eq!(bad_fields(d), ["order_lines[3].total_amount"]);
    }

    #[test]
    fn extend_due_date_needs_positive_days_and_a_capture_id() {
        let d = ExtendDueDateDraft {
            idempotency_key: "k".into(),
            order_id: ORDER.into(),
            capture_id: "c/1".into(),
            number_of_days: 0,
            ..Default::default()
        };
        let err = ExtendDueDate::validate(d).err().map(|v| v.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("capture_id") && e.contains("number_of_days"))
        );
    }

    #[test]
    fn release_requires_key_and_order() {
        let err = ReleaseAuthorization::validate(ReleaseAuthorizationDraft::default());
        assert_eq!(err.err().map(|v| v.as_slice().len()), Some(2));
    }

    #[test]
    fn queries_check_ids() {
        assert!(OrderQuery::validate(String::new(), ORDER).is_ok());
        assert!(OrderQuery::validate(String::new(), "x").is_err());
        assert!(RefundQuery::validate(String::new(), ORDER, "x/..").is_err());
        assert!(RefundQuery::validate(String::new(), ORDER, "x").is_ok());
        assert!(
            ExtendDueDateOptionsQuery::validate("eu".into(), ORDER, ORDER)
                .is_ok_and(|q| q.klarna_account.as_deref() == Some("eu"))
        );
    }

    proptest! {
        #[test]
        fn return_fee_sum_rule(items in proptest::collection::vec(1i64..100_000, 1..5), fee in 1i64..10_000, delta in -2i64..2) {
            let mut d = draft();
            let mut lines: Vec<_> = items.iter().map(|p| line(OrderLineType::Physical, *p)).collect();
            lines.push(line(OrderLineType::ReturnFee, -fee));
            let sum: i64 = items.iter().sum::<i64>() - fee;
            d.refunded_amount = sum + delta;
            d.order_lines = lines;
            let valid = RefundOrder::validate(d).is_ok();
            prop_assert_eq!(valid, delta == 0 && sum + delta > 0);
        }
    }
}
