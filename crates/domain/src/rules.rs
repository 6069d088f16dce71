//! State rules: checks that need Klarna's view of the order, run after validation and before
//! anything is sent. A refusal here is final for the request (FAILED_PRECONDITION).

use crate::command::{ExtendDueDate, RefundOrder};
use crate::error::{Precondition, PreconditionReason};
use crate::order::{ExtendDueDateOption, ExtendDueDateOptions, Order};

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
        return Err(Precondition {
            reason: PreconditionReason::CurrencyMismatch,
            subject: format!("orders/{}", cmd.order_id),
            description: format!(
                "the refund is in {currency} but the order is in {}",
                order.currency.to_ascii_uppercase()
            ),
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
