//! State rules: checks that need Klarna's view of the order, run after validation and before
//! anything is sent. A refusal here is final for the request (FAILED_PRECONDITION).

use std::collections::HashSet;

use crate::command::{ExtendDueDate, RefundOrder};
use crate::error::{Precondition, PreconditionReason};
use crate::money::{Amount, Currency};
use crate::operation::{OperationId, Rpc};
use crate::order::{ExtendDueDateOption, ExtendDueDateOptions, Order};
use crate::payments::{
    PaymentCaptureId, PaymentTransaction, PaymentTransactionId, TransactionState,
};
use crate::store::{Operation, OperationState};

/// Klarna's limit on refunds per payment transaction.
pub const MAX_REFUNDS_PER_TRANSACTION: usize = 200;
/// Klarna's limit on operations (captures and refunds) per payment transaction.
pub const MAX_OPERATIONS_PER_TRANSACTION: usize = 500;

/// Purchase countries where Klarna accepts return fees (see docs/klarna.md#return-fees).
pub const RETURN_FEE_COUNTRIES: [&str; 15] = [
    "AT", "DE", "DK", "FI", "FR", "NL", "NO", "SE", "IT", "ES", "IE", "PT", "CZ", "AU", "GR",
];

/// Checks the rules of a refund against the order: the currency, when the caller gave one,
/// and the return-fee rules, when a line is a return fee.
pub fn check_refund(cmd: &RefundOrder, order: &Order) -> Result<(), Precondition> {
    if let Some(currency) = &cmd.currency
        && !currency.as_str().eq_ignore_ascii_case(&order.currency)
    {
        let description = if order.currency.is_empty() {
            // Klarna's answer named no purchase_currency: the currency given cannot be checked,
            // and a refund is not sent on an unchecked assertion about money.
            format!(
                "the refund is in {currency} but Klarna's order states no purchase currency to \
                 check it against; send the refund without a currency to refund in the order's"
            )
        } else {
            format!(
                "the refund is in {currency} but the order is in {}",
                order.currency.to_ascii_uppercase()
            )
        };
        return Err(Precondition {
            reason: PreconditionReason::CurrencyMismatch,
            subject: format!("orders/{}", cmd.order_id),
            description,
        });
    }
    if cmd.has_return_fee() {
        check_return_fee(cmd, order)?;
    }
    Ok(())
}

fn check_return_fee(cmd: &RefundOrder, order: &Order) -> Result<(), Precondition> {
    let refuse = |description: String| Precondition {
        reason: PreconditionReason::ReturnFeeNotAllowed,
        subject: format!("orders/{}", cmd.order_id),
        description,
    };
    let country = order.purchase_country.to_ascii_uppercase();
    if !RETURN_FEE_COUNTRIES.contains(&country.as_str()) {
        return Err(refuse(format!(
            "return fees are not available for purchase country {country:?}"
        )));
    }
    match order.captures.as_slice() {
        [only] if only.captured_amount == order.order_amount => Ok(()),
        [only] => Err(refuse(format!(
            "the order's one capture ({}) is not the whole order amount ({})",
            only.captured_amount, order.order_amount
        ))),
        captures => Err(refuse(format!(
            "a return fee needs the order captured in exactly one capture; it has {}",
            captures.len()
        ))),
    }
}

/// A partner refund, as its state rules see it.
#[derive(Debug, Clone, Copy)]
pub struct PartnerRefundRequest<'a> {
    /// The transaction.
    pub transaction_id: &'a PaymentTransactionId,
    /// The capture, for a capture refund.
    pub capture_id: Option<&'a PaymentCaptureId>,
    /// The amount.
    pub amount: Amount,
    /// The currency.
    pub currency: &'a Currency,
}

/// The gateway's own refunds on a transaction that Klarna's lists do not show (yet): every
/// partner refund operation other than `current` that may have created a refund (any state
/// but FAILED) and whose refund id is unknown or not among the refunds Klarna lists. With
/// Klarna's own count they make the number the limits apply to, so refunds in flight count.
pub fn unlisted_own_refunds(
    own: &[Operation],
    current: OperationId,
    transaction: &PaymentTransaction,
) -> usize {
    let listed: HashSet<&str> = transaction
        .refunds
        .iter()
        .map(|r| r.payment_refund_id.as_str())
        .collect();
    own.iter()
        .filter(|op| op.new.operation_id != current)
        .filter(|op| matches!(op.new.rpc, Rpc::RefundCapture | Rpc::RefundTransaction))
        .filter(|op| op.state != OperationState::Failed)
        .filter(|op| {
            op.refund_id
                .as_deref()
                .is_none_or(|id| !listed.contains(id))
        })
        .count()
}

/// Checks a partner refund against the transaction Klarna reports and the gateway's own
/// refunds Klarna does not list yet: not CLOSED, within the limits of 200 refunds and 500
/// operations, in the transaction's currency, and within what is captured and not yet
/// refunded where the read shows it (of the transaction, and of the capture when Klarna
/// states its refunded amount); what the read does not show is Klarna's to judge.
pub fn check_partner_refund(
    request: PartnerRefundRequest<'_>,
    transaction: &PaymentTransaction,
    own_unlisted_refunds: usize,
) -> Result<(), Precondition> {
    let refuse = |reason, description: String| Precondition {
        reason,
        subject: format!("payment/transactions/{}", request.transaction_id),
        description,
    };
    if transaction.state == TransactionState::Closed {
        return Err(refuse(
            PreconditionReason::TransactionClosed,
            "the transaction is CLOSED: Klarna allows no further operation on it, refunds included"
                .to_owned(),
        ));
    }
    let refunds = transaction.refunds.len() + own_unlisted_refunds;
    if refunds >= MAX_REFUNDS_PER_TRANSACTION {
        return Err(refuse(
            PreconditionReason::TransactionRefundLimit,
            format!(
                "the transaction has {refunds} refunds; Klarna allows at most \
                 {MAX_REFUNDS_PER_TRANSACTION}"
            ),
        ));
    }
    let operations = transaction.captures.len() + refunds;
    if operations >= MAX_OPERATIONS_PER_TRANSACTION {
        return Err(refuse(
            PreconditionReason::TransactionOperationLimit,
            format!(
                "the transaction has {operations} operations; Klarna allows at most \
                 {MAX_OPERATIONS_PER_TRANSACTION}"
            ),
        ));
    }
    if !request
        .currency
        .as_str()
        .eq_ignore_ascii_case(&transaction.currency)
    {
        return Err(refuse(
            PreconditionReason::CurrencyMismatch,
            format!(
                "the refund is in {} but the transaction is in {}",
                request.currency,
                transaction.currency.to_ascii_uppercase()
            ),
        ));
    }
    let amount = request.amount.minor_units();
    if let Some(refundable) = transaction.refundable()
        && amount > refundable
    {
        return Err(refuse(
            PreconditionReason::AmountNotRefundable,
            format!(
                "the refund of {amount} exceeds what the transaction has captured and not \
                 refunded ({refundable})"
            ),
        ));
    }
    if let Some(capture_id) = request.capture_id
        && let Some(capture) = transaction
            .captures
            .iter()
            .find(|c| c.payment_capture_id == capture_id.as_str())
        && let Some(refunded) = capture.refunded_amount
        // Saturating: both figures are Klarna's, read as any i64 (an overflow here was found
        // by fuzzing its answers).
        && amount > capture.amount.saturating_sub(refunded)
    {
        return Err(refuse(
            PreconditionReason::AmountNotRefundable,
            format!(
                "the refund of {amount} exceeds what capture {capture_id} has not refunded ({})",
                capture.amount.saturating_sub(refunded)
            ),
        ));
    }
    Ok(())
}

/// Finds the offered option for the requested number of days, or refuses without sending.
pub fn check_extension_offered(
    cmd: &ExtendDueDate,
    offered: &ExtendDueDateOptions,
) -> Result<ExtendDueDateOption, Precondition> {
    offered
        .options
        .iter()
        .find(|o| o.number_of_days == cmd.number_of_days)
        .copied()
        .ok_or_else(|| {
            let days: Vec<String> = offered
                .options
                .iter()
                .map(|o| o.number_of_days.to_string())
                .collect();
            Precondition {
                reason: PreconditionReason::ExtensionNotOffered,
                subject: format!("orders/{}/captures/{}", cmd.order_id, cmd.capture_id),
                description: format!(
                    "Klarna does not offer {} days for this capture; offered: [{}]",
                    cmd.number_of_days,
                    days.join(", ")
                ),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{ExtendDueDateDraft, RefundOrderDraft};
    use crate::order::{Capture, OrderStatus};
    use crate::order_line::{LineTypeInput, OrderLineDraft, OrderLineType};
    use proptest::prelude::*;

    const ORDER: &str = "4e6b2c1a-8f3d-4b7e-9a2c-5d1e0f3b7a64";

    mod partner {
        use super::super::*;
        use crate::payments::{PaymentCapture, PaymentRefund};

        const T: &str = "krn:payment:eu1:transaction:1";

        fn transaction(refunds: usize, captures: usize) -> PaymentTransaction {
            PaymentTransaction {
                payment_transaction_id: T.into(),
                state: TransactionState::Authorized,
                currency: "sek".into(),
                amount: 100_000,
                captured_amount: Some(100_000),
                refunded_amount: Some(refunds as i64),
                captures: (0..captures)
                    .map(|i| PaymentCapture {
                        payment_capture_id: format!("{T}:capture:{i}"),
                        amount: 100_000 / captures as i64,
                        refunded_amount: Some(0),
                        created_at: None,
                    })
                    .collect(),
                refunds: (0..refunds)
                    .map(|i| PaymentRefund {
                        payment_refund_id: format!("{T}:refund:{i}"),
                        payment_capture_id: None,
                        amount: 1,
                        reference: None,
                        created_at: None,
                    })
                    .collect(),
            }
        }

        fn check(
            t: &PaymentTransaction,
            amount: i64,
            currency: &str,
            capture: Option<&str>,
            own: usize,
        ) -> Result<(), PreconditionReason> {
            let id =
                PaymentTransactionId::parse(T).map_err(|_| PreconditionReason::WrongAccountKind)?;
            let capture =
                capture.map(|c| PaymentCaptureId::parse(c).unwrap_or_else(|e| panic!("{e}")));
            let currency = Currency::parse(currency).unwrap_or_else(|e| panic!("{e}"));
            check_partner_refund(
                PartnerRefundRequest {
                    transaction_id: &id,
                    capture_id: capture.as_ref(),
                    amount: Amount::parse(amount).unwrap_or_else(|e| panic!("{e}")),
                    currency: &currency,
                },
                t,
                own,
            )
            .map_err(|p| p.reason)
        }

        #[test]
        fn the_two_hundred_and_first_refund_is_refused() {
            assert_eq!(check(&transaction(199, 1), 10, "SEK", None, 0), Ok(()));
            assert_eq!(
                check(&transaction(200, 1), 10, "SEK", None, 0),
                Err(PreconditionReason::TransactionRefundLimit)
            );
            // Refunds of the gateway that Klarna does not list yet count too.
            assert_eq!(
                check(&transaction(195, 1), 10, "SEK", None, 5),
                Err(PreconditionReason::TransactionRefundLimit)
            );
        }

        #[test]
        fn the_five_hundred_and_first_operation_is_refused() {
            assert_eq!(check(&transaction(100, 399), 10, "SEK", None, 0), Ok(()));
            assert_eq!(
                check(&transaction(100, 400), 10, "SEK", None, 0),
                Err(PreconditionReason::TransactionOperationLimit)
            );
        }

        #[test]
        fn closed_currency_and_amount() {
            let mut closed = transaction(0, 1);
            closed.state = TransactionState::Closed;
            assert_eq!(
                check(&closed, 10, "SEK", None, 0),
                Err(PreconditionReason::TransactionClosed)
            );
            assert_eq!(
                check(&transaction(0, 1), 10, "EUR", None, 0),
                Err(PreconditionReason::CurrencyMismatch)
            );
            assert_eq!(check(&transaction(0, 1), 100_000, "SEK", None, 0), Ok(()));
            assert_eq!(
                check(&transaction(1, 1), 100_000, "SEK", None, 0),
                Err(PreconditionReason::AmountNotRefundable)
            );
            let two = transaction(0, 2);
            let first = format!("{T}:capture:0");
            assert_eq!(check(&two, 50_000, "SEK", Some(&first), 0), Ok(()));
            assert_eq!(
                check(&two, 50_001, "SEK", Some(&first), 0),
                Err(PreconditionReason::AmountNotRefundable)
            );
            // A capture Klarna does not list is Klarna's to judge.
            assert_eq!(check(&two, 50_001, "SEK", Some("krn:other"), 0), Ok(()));
            // So is an amount when the read shows nothing captured.
            let mut silent = transaction(0, 0);
            silent.captured_amount = None;
            assert_eq!(check(&silent, 200_000, "SEK", None, 0), Ok(()));
        }
    }

    fn order(country: &str, amount: i64, captures: &[i64]) -> Order {
        Order {
            order_id: ORDER.into(),
            status: OrderStatus::Captured,
            klarna_status: "CAPTURED".into(),
            order_amount: amount,
            original_order_amount: amount,
            captured_amount: captures.iter().sum(),
            refunded_amount: 0,
            remaining_authorized_amount: 0,
            currency: "sek".into(),
            purchase_country: country.into(),
            merchant_reference1: String::new(),
            merchant_reference2: String::new(),
            klarna_reference: String::new(),
            order_lines: Vec::new(),
            payment_method_type: None,
            captures: captures
                .iter()
                .map(|a| Capture {
                    capture_id: "c".into(),
                    captured_amount: *a,
                    refunded_amount: 0,
                    captured_at: None,
                    klarna_reference: String::new(),
                })
                .collect(),
            refunds: vec![],
        }
    }

    fn refund(currency: &str, return_fee: bool) -> RefundOrder {
        let mut lines = vec![OrderLineDraft {
            line_type: LineTypeInput::Known(OrderLineType::Physical),
            name: "x".into(),
            quantity: 1,
            unit_price: 10000,
            total_amount: 10000,
            ..Default::default()
        }];
        if return_fee {
            lines.push(OrderLineDraft {
                line_type: LineTypeInput::Known(OrderLineType::ReturnFee),
                name: "fee".into(),
                quantity: 1,
                unit_price: -500,
                total_amount: -500,
                ..Default::default()
            });
        }
        RefundOrder::validate(RefundOrderDraft {
            idempotency_key: "k".into(),
            order_id: ORDER.into(),
            refunded_amount: if return_fee { 9500 } else { 10000 },
            currency: currency.into(),
            order_lines: lines,
            ..Default::default()
        })
        .unwrap_or_else(|v| panic!("{v}"))
    }

    fn reason(r: Result<(), Precondition>) -> Option<PreconditionReason> {
        r.err().map(|p| p.reason)
    }

    #[test]
    fn currency_compares_case_insensitively() {
        assert_eq!(
            reason(check_refund(
                &refund("SEK", false),
                &order("SE", 10000, &[10000])
            )),
            None
        );
        assert_eq!(
            reason(check_refund(
                &refund("EUR", false),
                &order("SE", 10000, &[10000])
            )),
            Some(PreconditionReason::CurrencyMismatch)
        );
        // An order whose answer named no currency: the given one cannot be checked.
        let mut unknown = order("SE", 10000, &[10000]);
        unknown.currency.clear();
        let refused = check_refund(&refund("SEK", false), &unknown).err();
        assert!(
            refused
                .as_ref()
                .is_some_and(|p| p.reason == PreconditionReason::CurrencyMismatch
                    && p.description.contains("states no purchase currency")),
            "{refused:?}"
        );
        assert_eq!(reason(check_refund(&refund("", false), &unknown)), None);
    }

    #[test]
    fn return_fee_rules() {
        let cmd = refund("", true);
        assert_eq!(
            reason(check_refund(&cmd, &order("se", 10000, &[10000]))),
            None
        );
        for o in [
            order("GB", 10000, &[10000]),
            order("SE", 10000, &[6000, 4000]),
            order("SE", 10000, &[6000]),
            order("SE", 10000, &[]),
        ] {
            assert_eq!(
                reason(check_refund(&cmd, &o)),
                Some(PreconditionReason::ReturnFeeNotAllowed),
                "{o:?}"
            );
        }
    }

    #[test]
    fn extension_must_be_offered() {
        let cmd = ExtendDueDate::validate(ExtendDueDateDraft {
            idempotency_key: "k".into(),
            order_id: ORDER.into(),
            capture_id: ORDER.into(),
            number_of_days: 14,
            ..Default::default()
        })
        .unwrap_or_else(|v| panic!("{v}"));
        let offered = |days: &[i32]| ExtendDueDateOptions {
            currency: "SEK".into(),
            options: days
                .iter()
                .map(|d| ExtendDueDateOption {
                    number_of_days: *d,
                    amount: 100,
                })
                .collect(),
        };
        assert!(check_extension_offered(&cmd, &offered(&[7, 14, 30])).is_ok());
        let refused = check_extension_offered(&cmd, &offered(&[7, 30]));
        assert!(
            refused.is_err_and(|p| p.reason == PreconditionReason::ExtensionNotOffered
                && p.description.contains("[7, 30]"))
        );
    }

    proptest! {
        #[test]
        fn return_fee_allowed_iff_listed_country_and_one_full_capture(
            country in prop::sample::select(vec!["SE", "DE", "GB", "US", "AU", "PL"]),
            captures in proptest::collection::vec(1i64..10000, 0..3),
        ) {
            let total: i64 = captures.iter().sum();
            let o = order(country, 10000.max(total), &captures);
            let allowed = RETURN_FEE_COUNTRIES.contains(&country)
                && captures.len() == 1
                && captures[0] == o.order_amount;
            prop_assert_eq!(check_refund(&refund("", true), &o).is_ok(), allowed);
        }
    }
}
