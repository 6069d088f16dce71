//! In-store refunds by receipt: the references an associate types in to find an order (the
//! receipt reference the point of sale sent as `merchant_reference1`, or Klarna's
//! `klarna_reference`), how a request names its order by one of them, and what of an order is
//! still refundable line by line.
//!
//! References are typed in by hand from a paper receipt: surrounding whitespace is dropped,
//! case is kept (`A17-0042` and `a17-0042` are two references).

use crate::ids::{OrderId, validated_id};
use crate::order::{Order, Refund};
use crate::order_line::OrderLine;
use crate::validation::{InvalidValue, Violations};

/// The longest reference, as Klarna's `merchant_reference1` allows.
pub const MAX_REFERENCE_CHARS: usize = 255;

/// `value` trimmed, when it is 1 to [`MAX_REFERENCE_CHARS`] characters without control
/// characters.
fn reference_text(value: &str) -> Result<String, InvalidValue> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(InvalidValue::new("is required"));
    }
    if trimmed.chars().count() > MAX_REFERENCE_CHARS {
        return Err(InvalidValue::new(format!(
            "must be at most {MAX_REFERENCE_CHARS} characters"
        )));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(InvalidValue::new("must not contain control characters"));
    }
    Ok(trimmed.to_owned())
}

validated_id!(
    /// The reference printed on a receipt and linked to its order: trimmed, case kept.
    ReceiptReference,
    reference_text,
    "Accepts 1-255 characters without control characters, trimmed of surrounding whitespace."
);

validated_id!(
    /// Klarna's customer-facing reference of an order (`klarna_reference`): trimmed, case kept.
    KlarnaReference,
    reference_text,
    "Accepts 1-255 characters without control characters, trimmed of surrounding whitespace."
);

validated_id!(
    /// The merchant's id of a store, given when a receipt is linked.
    StoreId,
    reference_text,
    "Accepts 1-255 characters without control characters, trimmed of surrounding whitespace."
);

/// How a request names an order: by Klarna's id, or by a reference the gateway looks up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderSelector {
    /// Klarna's order id.
    Id(OrderId),
    /// A receipt reference.
    Receipt(ReceiptReference),
    /// Klarna's reference.
    Klarna(KlarnaReference),
}

impl OrderSelector {
    /// Exactly one of the three fields (`order_id`, `receipt_reference`, `klarna_reference`,
    /// empty meaning not given), valid. Violations name the fields.
    pub fn parse(order_id: &str, receipt: &str, klarna: &str) -> Result<Self, Violations> {
        let given: Vec<&str> = [
            ("order_id", order_id),
            ("receipt_reference", receipt),
            ("klarna_reference", klarna),
        ]
        .iter()
        .filter(|(_, value)| !value.trim().is_empty())
        .map(|(field, _)| *field)
        .collect();
        match given.as_slice() {
            [] => Err(Violations::single(
                "order_id",
                "is required (or receipt_reference, or klarna_reference)",
            )),
            ["order_id"] => OrderId::parse(order_id)
                .map(Self::Id)
                .map_err(|e| Violations::single("order_id", e.to_string())),
            ["receipt_reference"] => ReceiptReference::parse(receipt)
                .map(Self::Receipt)
                .map_err(|e| Violations::single("receipt_reference", e.to_string())),
            ["klarna_reference"] => KlarnaReference::parse(klarna)
                .map(Self::Klarna)
                .map_err(|e| Violations::single("klarna_reference", e.to_string())),
            [first, rest @ ..] => {
                let mut v = Violations::new();
                for field in rest {
                    v.push(
                        *field,
                        format!("name the order once: {first} is given already"),
                    );
                }
                Err(v)
            }
        }
    }
}

/// How a lookup names an order: by one of its references (never by id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferenceQuery {
    /// A receipt reference.
    Receipt(ReceiptReference),
    /// Klarna's reference.
    Klarna(KlarnaReference),
}

impl ReferenceQuery {
    /// Exactly one of `receipt_reference` and `klarna_reference` (empty meaning not given).
    pub fn parse(receipt: &str, klarna: &str) -> Result<Self, Violations> {
        if receipt.trim().is_empty() && klarna.trim().is_empty() {
            return Err(Violations::single(
                "receipt_reference",
                "is required (or klarna_reference)",
            ));
        }
        match OrderSelector::parse("", receipt, klarna)? {
            OrderSelector::Receipt(r) => Ok(Self::Receipt(r)),
            OrderSelector::Klarna(k) => Ok(Self::Klarna(k)),
            // Not reachable: no order id was given.
            OrderSelector::Id(_) => Err(Violations::single("receipt_reference", "is required")),
        }
    }
}

/// The lines of `order` still refundable: each line's quantity less the quantities its refunds
/// named for it (a refund line counts against the first order line with the same reference and
/// name that still has quantity left; refunds without lines name none), with the line's
/// discount, tax and total for the quantity left (discount and tax prorated, rounded down).
/// Lines with nothing left are left out.
pub fn refundable_lines(order: &Order) -> Vec<OrderLine> {
    lines_left(&order.order_lines, &order.refunds)
}

fn lines_left(lines: &[OrderLine], refunds: &[Refund]) -> Vec<OrderLine> {
    let mut left: Vec<i64> = lines.iter().map(|l| l.quantity).collect();
    for refund_line in refunds.iter().flat_map(|r| &r.order_lines) {
        let mut to_count = refund_line.quantity;
        for (line, remaining) in lines.iter().zip(left.iter_mut()) {
            if to_count <= 0 {
                break;
            }
            if line.reference == refund_line.reference && line.name == refund_line.name {
                let counted = to_count.min(*remaining);
                *remaining -= counted;
                to_count -= counted;
            }
        }
    }
    lines
        .iter()
        .zip(left)
        .filter(|(line, remaining)| *remaining > 0 && line.quantity > 0)
        .map(|(line, remaining)| {
            let share = |amount: i64| {
                // i128: amount * quantity can exceed i64 for the largest allowed values.
                let prorated =
                    i128::from(amount) * i128::from(remaining) / i128::from(line.quantity);
                i64::try_from(prorated).unwrap_or(amount)
            };
            let discount = share(line.total_discount_amount);
            let mut out = line.clone();
            out.quantity = remaining;
            out.total_discount_amount = discount;
            out.total_amount = line
                .unit_price
                .saturating_mul(remaining)
                .saturating_sub(discount);
            out.total_tax_amount = share(line.total_tax_amount);
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_trimmed_and_case_sensitive() {
        let r = ReceiptReference::parse("  A17-0042 \t").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.as_str(), "A17-0042");
        assert_ne!(ReceiptReference::parse("a17-0042").ok(), Some(r.clone()));
        assert!(ReceiptReference::parse("   ").is_err());
        assert!(ReceiptReference::parse("a\u{7}b").is_err());
        assert!(ReceiptReference::parse(&"x".repeat(256)).is_err());
        assert!(ReceiptReference::parse(&"é".repeat(255)).is_ok());
    }

    #[test]
    fn a_selector_names_the_order_exactly_once() {
        let id = "7849fd84-47dc-4919-a7ce-5a1b2c3d4e5f";
        assert!(matches!(
            OrderSelector::parse(id, "", ""),
            Ok(OrderSelector::Id(_))
        ));
        assert!(matches!(
            OrderSelector::parse("", " R-1 ", ""),
            Ok(OrderSelector::Receipt(r)) if r.as_str() == "R-1"
        ));
        assert!(matches!(
            OrderSelector::parse("", "", "20S0XXXX"),
            Ok(OrderSelector::Klarna(_))
        ));
        let fields = |r: Result<OrderSelector, Violations>| -> Vec<String> {
            r.err()
                .unwrap_or_default()
                .as_slice()
                .iter()
                .map(|v| v.field.clone())
                .collect()
        };
        assert_eq!(fields(OrderSelector::parse("", " ", "")), ["order_id"]);
        assert_eq!(
            fields(OrderSelector::parse(id, "R-1", "K")),
            ["receipt_reference", "klarna_reference"]
        );
        assert_eq!(
            fields(OrderSelector::parse("", "a\u{0}", "")),
            ["receipt_reference"]
        );
        assert!(ReferenceQuery::parse("", "").is_err());
        assert!(matches!(
            ReferenceQuery::parse("", "K"),
            Ok(ReferenceQuery::Klarna(_))
        ));
        assert!(ReferenceQuery::parse("R", "K").is_err());
    }

    fn line(
        name: &str,
        reference: &str,
        quantity: i64,
        unit_price: i64,
        discount: i64,
    ) -> OrderLine {
        OrderLine {
            line_type: None,
            name: name.into(),
            quantity,
            quantity_unit: None,
            unit_price,
            total_amount: quantity * unit_price - discount,
            total_discount_amount: discount,
            tax_rate: 2500,
            total_tax_amount: (quantity * unit_price - discount) / 5,
            reference: Some(reference.into()),
            merchant_data: None,
            product_url: None,
            image_url: None,
            product_identifiers: None,
            subscription: None,
        }
    }

    #[test]
    fn refunded_quantities_are_subtracted_and_amounts_prorated() {
        let refund = |order_lines| Refund {
            refund_id: "r".into(),
            refunded_amount: 0,
            refunded_at: None,
            description: String::new(),
            reference: String::new(),
            order_lines,
        };
        let lines = [
            line("Shirt", "SKU-1", 3, 10_000, 3_000),
            line("Socks", "SKU-2", 2, 2_000, 0),
            line("Hat", "SKU-3", 1, 5_000, 0),
        ];
        let refunds = [
            refund(vec![line("Shirt", "SKU-1", 1, 10_000, 1_000)]),
            refund(vec![line("Hat", "SKU-3", 1, 5_000, 0)]),
            // A refund without lines names no line.
            refund(vec![]),
        ];
        let left = lines_left(&lines, &refunds);
        assert_eq!(left.len(), 2, "{left:?}");
        assert_eq!((left[0].name.as_str(), left[0].quantity), ("Shirt", 2));
        assert_eq!(left[0].total_discount_amount, 2_000);
        assert_eq!(left[0].total_amount, 18_000);
        assert_eq!(left[0].total_tax_amount, 5_400 * 2 / 3);
        assert_eq!((left[1].name.as_str(), left[1].quantity), ("Socks", 2));
        assert_eq!(left[1].total_amount, 4_000);
    }
}
