//! Order lines with Klarna's limits (Order Management spec, `order_line`). A line that passes
//! here is one Klarna's schema accepts, so Klarna's 422 stays a surprise, not a habit.

use crate::money::MAX_AMOUNT;
use crate::validation::Violations;

/// Longest line name, reference and subscription name.
pub const MAX_NAME_CHARS: usize = 255;
/// Longest `quantity_unit`.
pub const MAX_QUANTITY_UNIT_CHARS: usize = 10;
/// Longest `merchant_data`, `product_url` and `image_url`.
pub const MAX_URL_CHARS: usize = 1024;
/// Highest `tax_rate`: 100 %, in hundredths of a percent.
pub const MAX_TAX_RATE: i32 = 10_000;

/// The kind of an order line, as Klarna names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderLineType {
    /// `physical`
    Physical,
    /// `discount`
    Discount,
    /// `shipping_fee`
    ShippingFee,
    /// `sales_tax`
    SalesTax,
    /// `store_credit`
    StoreCredit,
    /// `gift_card`
    GiftCard,
    /// `digital`
    Digital,
    /// `surcharge`
    Surcharge,
    /// `return_fee`: kept by the merchant, negative amounts.
    ReturnFee,
}

impl OrderLineType {
    /// Every type, in the API's order.
    pub const ALL: [OrderLineType; 9] = [
        Self::Physical,
        Self::Discount,
        Self::ShippingFee,
        Self::SalesTax,
        Self::StoreCredit,
        Self::GiftCard,
        Self::Digital,
        Self::Surcharge,
        Self::ReturnFee,
    ];

    /// Klarna's wire name.
    pub fn klarna_name(self) -> &'static str {
        match self {
            Self::Physical => "physical",
            Self::Discount => "discount",
            Self::ShippingFee => "shipping_fee",
            Self::SalesTax => "sales_tax",
            Self::StoreCredit => "store_credit",
            Self::GiftCard => "gift_card",
            Self::Digital => "digital",
            Self::Surcharge => "surcharge",
            Self::ReturnFee => "return_fee",
        }
    }

    /// The type for Klarna's wire name, ignoring case; `None` for names this gateway does not
    /// know (Klarna may add types; reading them must not fail).
    pub fn from_klarna_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.klarna_name().eq_ignore_ascii_case(name))
    }
}

/// The line type as a request gave it: the API enum may be unset or carry a number this
/// version does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineTypeInput {
    /// Not set; Klarna treats such a line as physical.
    Unspecified,
    /// A known type.
    Known(OrderLineType),
    /// An enum number outside the API.
    Unknown(i32),
}

/// A subscription's billing interval unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SubscriptionInterval {
    /// `DAY`
    Day,
    /// `WEEK`
    Week,
    /// `MONTH`
    Month,
    /// `YEAR`
    Year,
}

impl SubscriptionInterval {
    /// Klarna's wire name.
    pub fn klarna_name(self) -> &'static str {
        match self {
            Self::Day => "DAY",
            Self::Week => "WEEK",
            Self::Month => "MONTH",
            Self::Year => "YEAR",
        }
    }

    /// The interval for Klarna's wire name, ignoring case.
    pub fn from_klarna_name(name: &str) -> Option<Self> {
        [Self::Day, Self::Week, Self::Month, Self::Year]
            .into_iter()
            .find(|i| i.klarna_name().eq_ignore_ascii_case(name))
    }
}

/// Product identifiers of a line. Empty strings mean "not given".
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ProductIdentifiers {
    /// Brand, at most 70 characters.
    pub brand: String,
    /// Category path, at most 750 characters.
    pub category_path: String,
    /// GTIN, at most 50 characters.
    pub global_trade_item_number: String,
    /// Manufacturer part number, at most 70 characters.
    pub manufacturer_part_number: String,
    /// Color, at most 64 characters.
    pub color: String,
    /// Size, at most 64 characters.
    pub size: String,
}

impl ProductIdentifiers {
    fn check(&self, v: &mut Violations, prefix: &str) {
        v.max_chars(&format!("{prefix}.brand"), &self.brand, 70);
        v.max_chars(&format!("{prefix}.category_path"), &self.category_path, 750);
        v.max_chars(
            &format!("{prefix}.global_trade_item_number"),
            &self.global_trade_item_number,
            50,
        );
        v.max_chars(
            &format!("{prefix}.manufacturer_part_number"),
            &self.manufacturer_part_number,
            70,
        );
        v.max_chars(&format!("{prefix}.color"), &self.color, 64);
        v.max_chars(&format!("{prefix}.size"), &self.size, 64);
    }

    /// True when no identifier is given.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// A subscription as a request gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionDraft {
    /// Name; required.
    pub name: String,
    /// Interval unit; `None` when unset or unknown.
    pub interval: Option<SubscriptionInterval>,
    /// Interval count; at least 1.
    pub interval_count: i32,
}

/// A valid subscription.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Subscription {
    /// Name, 1-255 characters.
    pub name: String,
    /// Interval unit.
    pub interval: SubscriptionInterval,
    /// Interval count, at least 1.
    pub interval_count: i32,
}

/// An order line as a request gave it, before validation. Empty strings mean "not given".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLineDraft {
    /// The line type.
    pub line_type: LineTypeInput,
    /// Name; required.
    pub name: String,
    /// Quantity.
    pub quantity: i64,
    /// Quantity unit.
    pub quantity_unit: String,
    /// Unit price in minor units.
    pub unit_price: i64,
    /// Line total in minor units.
    pub total_amount: i64,
    /// Discount in minor units.
    pub total_discount_amount: i64,
    /// Tax rate in hundredths of a percent.
    pub tax_rate: i32,
    /// Tax in minor units.
    pub total_tax_amount: i64,
    /// Article number.
    pub reference: String,
    /// Merchant data.
    pub merchant_data: String,
    /// Product URL.
    pub product_url: String,
    /// Image URL.
    pub image_url: String,
    /// Product identifiers.
    pub product_identifiers: Option<ProductIdentifiers>,
    /// Subscription.
    pub subscription: Option<SubscriptionDraft>,
}

impl Default for OrderLineDraft {
    fn default() -> Self {
        Self {
            line_type: LineTypeInput::Unspecified,
            name: String::new(),
            quantity: 0,
            quantity_unit: String::new(),
            unit_price: 0,
            total_amount: 0,
            total_discount_amount: 0,
            tax_rate: 0,
            total_tax_amount: 0,
            reference: String::new(),
            merchant_data: String::new(),
            product_url: String::new(),
            image_url: String::new(),
            product_identifiers: None,
            subscription: None,
        }
    }
}

/// A valid order line. Amounts are minor units; optional strings are `None` when not given.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct OrderLine {
    /// The type; `None` means not given (Klarna's default, physical).
    pub line_type: Option<OrderLineType>,
    /// Name, 1-255 characters.
    pub name: String,
    /// Quantity, not negative.
    pub quantity: i64,
    /// Quantity unit.
    pub quantity_unit: Option<String>,
    /// Unit price; negative for discounts and return fees.
    pub unit_price: i64,
    /// `quantity * unit_price - total_discount_amount`.
    pub total_amount: i64,
    /// Discount, not negative.
    pub total_discount_amount: i64,
    /// Tax rate in hundredths of a percent.
    pub tax_rate: i32,
    /// Tax in minor units.
    pub total_tax_amount: i64,
    /// Article number.
    pub reference: Option<String>,
    /// Merchant data.
    pub merchant_data: Option<String>,
    /// Product URL.
    pub product_url: Option<String>,
    /// Image URL.
    pub image_url: Option<String>,
    /// Product identifiers.
    pub product_identifiers: Option<ProductIdentifiers>,
    /// Subscription.
    pub subscription: Option<Subscription>,
}

impl OrderLine {
    /// True for a `return_fee` line.
    pub fn is_return_fee(&self) -> bool {
        self.line_type == Some(OrderLineType::ReturnFee)
    }

    /// Validates `draft`, recording every problem under `prefix` (e.g. `order_lines[3]`).
    pub fn validate(draft: OrderLineDraft, prefix: &str, v: &mut Violations) -> Option<Self> {
        let before = v.as_slice().len();
        let field = |name: &str| format!("{prefix}.{name}");

        let line_type = match draft.line_type {
            LineTypeInput::Unspecified => None,
            LineTypeInput::Known(t) => Some(t),
            LineTypeInput::Unknown(n) => {
                v.push(field("type"), format!("unknown order line type {n}"));
                None
            }
        };
        if draft.name.trim().is_empty() {
            v.push(field("name"), "is required");
        }
        v.max_chars(&field("name"), &draft.name, MAX_NAME_CHARS);
        v.no_control_chars(&field("name"), &draft.name);
        if draft.quantity < 0 {
            v.push(field("quantity"), "must not be negative");
        }
        v.max_chars(
            &field("quantity_unit"),
            &draft.quantity_unit,
            MAX_QUANTITY_UNIT_CHARS,
        );
        check_magnitude(v, &field("unit_price"), draft.unit_price);
        check_magnitude(v, &field("total_amount"), draft.total_amount);
        check_magnitude(v, &field("total_tax_amount"), draft.total_tax_amount);
        if !(0..=MAX_AMOUNT).contains(&draft.total_discount_amount) {
            v.push(
                field("total_discount_amount"),
                format!("must be between 0 and {MAX_AMOUNT}"),
            );
        }
        if !(0..=MAX_TAX_RATE).contains(&draft.tax_rate) {
            v.push(
                field("tax_rate"),
                format!("must be between 0 and {MAX_TAX_RATE} (hundredths of a percent)"),
            );
        }
        let expected = draft
            .quantity
            .checked_mul(draft.unit_price)
            .and_then(|gross| gross.checked_sub(draft.total_discount_amount));
        match expected {
            Some(expected) if expected == draft.total_amount => {}
            Some(expected) => v.push(
                field("total_amount"),
                format!(
                    "must equal quantity * unit_price - total_discount_amount = {expected}, got {}",
                    draft.total_amount
                ),
            ),
            None => v.push(
                field("total_amount"),
                "quantity * unit_price - total_discount_amount overflows",
            ),
        }
        if line_type == Some(OrderLineType::ReturnFee) {
            if draft.unit_price >= 0 {
                v.push(field("unit_price"), "must be negative on a return_fee line");
            }
            if draft.total_amount >= 0 {
                v.push(
                    field("total_amount"),
                    "must be negative on a return_fee line",
                );
            }
        }
        v.max_chars(&field("reference"), &draft.reference, MAX_NAME_CHARS);
        v.no_control_chars(&field("reference"), &draft.reference);
        v.max_chars(&field("merchant_data"), &draft.merchant_data, MAX_URL_CHARS);
        v.max_chars(&field("product_url"), &draft.product_url, MAX_URL_CHARS);
        v.max_chars(&field("image_url"), &draft.image_url, MAX_URL_CHARS);
        if let Some(ids) = &draft.product_identifiers {
            ids.check(v, &field("product_identifiers"));
        }
        let subscription = draft.subscription.and_then(|s| {
            let p = field("subscription");
            let mut ok = true;
            if s.name.trim().is_empty() {
                v.push(format!("{p}.name"), "is required");
                ok = false;
            }
            if s.name.chars().count() > MAX_NAME_CHARS {
                v.push(
                    format!("{p}.name"),
                    format!("must be at most {MAX_NAME_CHARS} characters"),
                );
                ok = false;
            }
            if s.interval.is_none() {
                v.push(
                    format!("{p}.interval"),
                    "is required: DAY, WEEK, MONTH or YEAR",
                );
            }
            if s.interval_count < 1 {
                v.push(format!("{p}.interval_count"), "must be at least 1");
                ok = false;
            }
            match (ok, s.interval) {
                (true, Some(interval)) => Some(Subscription {
                    name: s.name,
                    interval,
                    interval_count: s.interval_count,
                }),
                _ => None,
            }
        });

        if v.as_slice().len() != before {
            return None;
        }
        let non_empty = |s: String| if s.is_empty() { None } else { Some(s) };
        Some(Self {
            line_type,
            name: draft.name,
            quantity: draft.quantity,
            quantity_unit: non_empty(draft.quantity_unit),
            unit_price: draft.unit_price,
            total_amount: draft.total_amount,
            total_discount_amount: draft.total_discount_amount,
            tax_rate: draft.tax_rate,
            total_tax_amount: draft.total_tax_amount,
            reference: non_empty(draft.reference),
            merchant_data: non_empty(draft.merchant_data),
            product_url: non_empty(draft.product_url),
            image_url: non_empty(draft.image_url),
            product_identifiers: draft.product_identifiers.filter(|p| !p.is_empty()),
            subscription,
        })
    }
}

/// Klarna caps line amounts at 200 000 000 minor units; we apply the same bound to negative
/// amounts (discounts, return fees) so no line can push an i64 sum towards overflow.
fn check_magnitude(v: &mut Violations, field: &str, value: i64) {
    if !(-MAX_AMOUNT..=MAX_AMOUNT).contains(&value) {
        v.push(
            field,
            format!("must be between -{MAX_AMOUNT} and {MAX_AMOUNT}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn line(quantity: i64, unit_price: i64, discount: i64) -> OrderLineDraft {
        OrderLineDraft {
            line_type: LineTypeInput::Known(OrderLineType::Physical),
            name: "T-Shirt".into(),
            quantity,
            unit_price,
            total_discount_amount: discount,
            total_amount: quantity * unit_price - discount,
            ..OrderLineDraft::default()
        }
    }

    fn fields(draft: OrderLineDraft) -> Vec<String> {
        let mut v = Violations::new();
        let line = OrderLine::validate(draft, "order_lines[3]", &mut v);
        assert_eq!(line.is_none(), !v.is_empty());
        v.as_slice().iter().map(|f| f.field.clone()).collect()
    }

    #[test]
    fn a_valid_line_passes() {
        assert!(fields(line(2, 5000, 1000)).is_empty());
    }

    #[test]
    fn wrong_total_is_reported_with_its_path() {
        let mut d = line(2, 5000, 0);
        d.total_amount = 9999;
        assert_eq!(fields(d), ["order_lines[3].total_amount"]);
    }

    #[test]
    fn every_bad_field_is_reported() {
        let d = OrderLineDraft {
            line_type: LineTypeInput::Unknown(42),
            name: String::new(),
            quantity: -1,
            quantity_unit: "x".repeat(11),
            unit_price: 1,
            total_amount: -1,
            total_discount_amount: -5,
            tax_rate: 10_001,
            reference: "r".repeat(256),
            merchant_data: "m".repeat(1025),
            product_url: "u".repeat(1025),
            image_url: "i".repeat(1025),
            product_identifiers: Some(ProductIdentifiers {
                brand: "b".repeat(71),
                ..Default::default()
            }),
            subscription: Some(SubscriptionDraft {
                name: String::new(),
                interval: None,
                interval_count: 0,
            }),
            ..OrderLineDraft::default()
        };
        let got = fields(d);
        for want in [
            "type",
            "name",
            "quantity",
            "quantity_unit",
            "total_discount_amount",
            "tax_rate",
            "total_amount",
            "reference",
            "merchant_data",
            "product_url",
            "image_url",
            "product_identifiers.brand",
            "subscription.name",
            "subscription.interval",
            "subscription.interval_count",
        ] {
            let want = format!("order_lines[3].{want}");
            assert!(got.contains(&want), "{want} missing from {got:?}");
        }
    }

    #[test]
    fn return_fee_must_be_negative() {
        let mut d = line(1, 500, 0);
        d.line_type = LineTypeInput::Known(OrderLineType::ReturnFee);
        assert_eq!(
            fields(d),
            ["order_lines[3].unit_price", "order_lines[3].total_amount"]
        );
        let mut d = line(1, -500, 0);
        d.line_type = LineTypeInput::Known(OrderLineType::ReturnFee);
        assert!(fields(d).is_empty());
    }

    #[test]
    fn overflowing_totals_are_refused_not_wrapped() {
        let mut d = line(1, 1, 0);
        d.quantity = i64::MAX;
        d.unit_price = 2;
        d.total_amount = 0;
        assert!(fields(d).contains(&"order_lines[3].total_amount".to_owned()));
    }

    #[test]
    fn wire_names_round_trip() {
        for t in OrderLineType::ALL {
            assert_eq!(OrderLineType::from_klarna_name(t.klarna_name()), Some(t));
        }
        assert_eq!(
            OrderLineType::from_klarna_name("RETURN_FEE"),
            Some(OrderLineType::ReturnFee)
        );
        assert_eq!(OrderLineType::from_klarna_name("teleport"), None);
    }

    proptest! {
        #[test]
        fn total_rule_holds_exactly(q in 0i64..1000, p in -200_000i64..200_000, d in 0i64..1000, off in -3i64..3) {
            let mut draft = line(q, p, d);
            draft.total_amount += off;
            let total_ok = off == 0;
            let in_range = draft.total_amount.abs() <= MAX_AMOUNT;
            let got = fields(draft);
            prop_assert_eq!(got.is_empty(), total_ok && in_range);
        }

        #[test]
        fn names_accepted_iff_1_to_255_chars(n in 0usize..300) {
            let mut d = line(1, 100, 0);
            d.name = "n".repeat(n);
            prop_assert_eq!(fields(d).is_empty(), (1..=255).contains(&n));
        }
    }
}
