//! Request bodies of the partner Payments API: parsing and validation into typed requests.
//!
//! The body is read as a JSON value and checked field by field, so that every problem found
//! becomes one `errors[]` entry (`{parameter, error_message}`) of a single 400 `INPUT_ERROR`
//! `VALIDATION_ERROR`, `parameter` naming the field as a path (`line_items[1].total_amount`).
//! Amounts must be JSON integers: `100.0` or `1e3` are refused. `null` counts as absent.
//! Unknown fields (`klarna_network_data`, ...) are ignored.

use serde_json::{Map, Value};

use crate::payments::LineItem;
use crate::response::{FieldError, PartnerError};

/// Longest `payment_refund_reference`, `description`, line item `name` and `reference`.
pub(crate) const MAX_TEXT: usize = 255;
/// Most line items in one request.
pub(crate) const MAX_LINE_ITEMS: usize = 1000;
/// Largest `tax_rate` (100 % in hundredths of a percent).
pub(crate) const MAX_TAX_RATE: i64 = 10_000;

/// Which refund operation a body is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefundOf {
    /// `POST …/payment/transactions/{id}/refunds`: `line_items` required, summing to `amount`.
    Transaction,
    /// `POST …/payment/captures/{id}/refunds`: no line items.
    Capture,
}

/// A validated refund body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RefundRequest {
    pub(crate) amount: i64,
    pub(crate) currency: String,
    pub(crate) line_items: Vec<LineItem>,
    pub(crate) reference: Option<String>,
    pub(crate) description: Option<String>,
}

/// Collects the problems of one body.
#[derive(Default)]
struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn push(&mut self, parameter: &str, message: String) {
        self.errors.push(FieldError::new(parameter, message));
    }

    /// A present, non-null field.
    fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
        object.get(name).filter(|v| !v.is_null())
    }

    fn integer(&mut self, parameter: &str, value: Option<&Value>, required: bool) -> Option<i64> {
        match value {
            None if required => {
                self.push(parameter, format!("Parameter {parameter} is required"));
                None
            }
            None => None,
            Some(value) => {
                // `as_i64` is `None` for floats (even `100.0`) and out-of-range integers.
                let parsed = value.as_i64();
                if parsed.is_none() {
                    self.push(
                        parameter,
                        format!("Parameter {parameter} must be an integer"),
                    );
                }
                parsed
            }
        }
    }

    fn text(
        &mut self,
        parameter: &str,
        value: Option<&Value>,
        required: bool,
        (min, max): (usize, usize),
    ) -> Option<String> {
        match value {
            None if required => {
                self.push(parameter, format!("Parameter {parameter} is required"));
                None
            }
            None => None,
            Some(Value::String(text)) => {
                let len = text.chars().count();
                if len < min || len > max {
                    self.push(
                        parameter,
                        format!("Parameter {parameter} must be between {min} and {max} characters"),
                    );
                }
                Some(text.clone())
            }
            Some(_) => {
                self.push(parameter, format!("Parameter {parameter} must be a string"));
                None
            }
        }
    }

    fn line_item(&mut self, at: &str, value: &Value) -> Option<LineItem> {
        let Value::Object(item) = value else {
            self.push(at, format!("Parameter {at} must be an object"));
            return None;
        };
        let before = self.errors.len();
        let p = |field: &str| format!("{at}.{field}");
        let name = self.text(&p("name"), Self::field(item, "name"), true, (1, MAX_TEXT));
        let quantity = self.integer(&p("quantity"), Self::field(item, "quantity"), true);
        if let Some(quantity) = quantity
            && quantity < 1
        {
            let parameter = p("quantity");
            self.push(
                &parameter,
                format!("Parameter {parameter} must be greater than or equal to 1"),
            );
        }
        let unit_price = self.integer(&p("unit_price"), Self::field(item, "unit_price"), true);
        let total_amount =
            self.integer(&p("total_amount"), Self::field(item, "total_amount"), true);
        let total_tax_amount = self.integer(
            &p("total_tax_amount"),
            Self::field(item, "total_tax_amount"),
            false,
        );
        let tax_rate = self.integer(&p("tax_rate"), Self::field(item, "tax_rate"), false);
        if let Some(rate) = tax_rate
            && !(0..=MAX_TAX_RATE).contains(&rate)
        {
            let parameter = p("tax_rate");
            self.push(
                &parameter,
                format!("Parameter {parameter} must be between 0 and {MAX_TAX_RATE}"),
            );
        }
        let reference = self.text(
            &p("reference"),
            Self::field(item, "reference"),
            false,
            (0, MAX_TEXT),
        );
        let kind = self.text(&p("type"), Self::field(item, "type"), false, (0, MAX_TEXT));
        if self.errors.len() > before {
            return None;
        }
        Some(LineItem {
            name: name?,
            quantity: quantity?,
            unit_price: unit_price?,
            total_amount: total_amount?,
            total_tax_amount,
            tax_rate,
            reference,
            kind,
        })
    }

    /// The line items, or `None` when any of them (or the list itself) is wrong.
    fn line_items(&mut self, value: Option<&Value>, required: bool) -> Option<Vec<LineItem>> {
        let items = match value {
            None if required => {
                self.push("line_items", "Parameter line_items is required".to_owned());
                return None;
            }
            None => return Some(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(_) => {
                self.push(
                    "line_items",
                    "Parameter line_items must be an array".to_owned(),
                );
                return None;
            }
        };
        if items.len() > MAX_LINE_ITEMS {
            self.push(
                "line_items",
                format!("Parameter line_items must have at most {MAX_LINE_ITEMS} items"),
            );
            return None;
        }
        let parsed: Vec<Option<LineItem>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.line_item(&format!("line_items[{i}]"), item))
            .collect();
        parsed.into_iter().collect()
    }
}

/// Parses and validates a refund body for `of`.
pub(crate) fn parse_refund(body: &[u8], of: RefundOf) -> Result<RefundRequest, PartnerError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        PartnerError::invalid("body", format!("Request body is not valid JSON: {e}"))
    })?;
    let Value::Object(object) = value else {
        return Err(PartnerError::invalid(
            "body",
            "Request body must be a JSON object",
        ));
    };
    let mut check = Checker::default();
    let field = |name: &str| Checker::field(&object, name);

    let mut amount = check.integer("amount", field("amount"), true);
    if let Some(value) = amount
        && value <= 0
    {
        check.push(
            "amount",
            "Parameter amount must be greater than 0".to_owned(),
        );
        // An invalid amount is not compared with the line items' sum.
        amount = None;
    }
    let currency = check.text("currency", field("currency"), true, (0, usize::MAX));
    if let Some(code) = &currency
        && !(code.len() == 3 && code.bytes().all(|b| b.is_ascii_alphabetic()))
    {
        check.push(
            "currency",
            "Parameter currency must be an ISO 4217 currency code of 3 letters".to_owned(),
        );
    }
    let reference = check.text(
        "payment_refund_reference",
        field("payment_refund_reference"),
        false,
        (0, MAX_TEXT),
    );
    let description = check.text("description", field("description"), false, (0, MAX_TEXT));
    let line_items = match of {
        RefundOf::Transaction => check.line_items(field("line_items"), true),
        // A capture refund carries no line items; any sent are ignored.
        RefundOf::Capture => Some(Vec::new()),
    };
    if of == RefundOf::Transaction
        && let (Some(amount), Some(items)) = (amount, &line_items)
    {
        let sum = items
            .iter()
            .try_fold(0i64, |sum, item| sum.checked_add(item.total_amount));
        if sum != Some(amount) {
            let sum = sum.map_or_else(|| "an overflowing sum".to_owned(), |s| s.to_string());
            check.push(
                "line_items",
                format!(
                    "Parameter line_items must sum to amount {amount} (total_amount of the line items is {sum})"
                ),
            );
        }
    }
    if !check.errors.is_empty() {
        return Err(PartnerError::validation(check.errors));
    }
    match (amount, currency, line_items) {
        (Some(amount), Some(currency), Some(line_items)) => Ok(RefundRequest {
            amount,
            currency: currency.to_ascii_uppercase(),
            line_items,
            reference,
            description,
        }),
        // Every `None` above pushed an error, so this is unreachable; answer as Klarna would
        // to an internal inconsistency rather than panic.
        _ => Err(PartnerError::internal(
            "refund body validation is inconsistent",
        )),
    }
}

/// Checks line items given in a seed, as a refund request would (`line_items[i].field: ...`).
pub(crate) fn check_seed_line_items(items: &[LineItem]) -> Vec<String> {
    let mut check = Checker::default();
    let as_json = serde_json::to_value(items).unwrap_or(Value::Null);
    check.line_items(Some(&as_json), true);
    check.errors.into_iter().map(|e| e.error_message).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameters(result: Result<RefundRequest, PartnerError>) -> Vec<String> {
        result
            .unwrap_err()
            .errors
            .into_iter()
            .map(|e| e.parameter)
            .collect()
    }

    #[test]
    fn accepts_a_transaction_refund() {
        let request = parse_refund(
            br#"{"amount": 1500, "currency": "sek", "payment_refund_reference": "r-1",
                 "description": null, "klarna_network_data": "{}",
                 "line_items": [
                   {"name": "Shirt", "quantity": 1, "unit_price": 1000, "total_amount": 1000, "tax_rate": 2500, "type": "PHYSICAL"},
                   {"name": "Scarf", "quantity": 2, "unit_price": 250, "total_amount": 500, "reference": "SC-1"}
                 ]}"#,
            RefundOf::Transaction,
        )
        .unwrap();
        assert_eq!(request.amount, 1500);
        assert_eq!(request.currency, "SEK");
        assert_eq!(request.reference.as_deref(), Some("r-1"));
        assert_eq!(request.description, None);
        assert_eq!(request.line_items.len(), 2);
        assert_eq!(request.line_items[0].kind.as_deref(), Some("PHYSICAL"));
    }

    #[test]
    fn reports_every_bad_field() {
        let errors = parameters(parse_refund(
            br#"{"amount": 10.0, "currency": "SEKR", "description": 5,
                 "line_items": [
                   {"name": "", "quantity": 0, "unit_price": 1.5, "tax_rate": 10001},
                   "nope"
                 ]}"#,
            RefundOf::Transaction,
        ));
        assert_eq!(
            errors,
            [
                "amount",
                "currency",
                "description",
                "line_items[0].name",
                "line_items[0].quantity",
                "line_items[0].unit_price",
                "line_items[0].total_amount",
                "line_items[0].tax_rate",
                "line_items[1]",
            ]
        );
    }

    #[test]
    fn amounts_currency_and_sums() {
        let capture = |body: &[u8]| parse_refund(body, RefundOf::Capture);
        assert!(capture(br#"{"amount": 1, "currency": "EUR"}"#).is_ok());
        assert_eq!(
            parameters(capture(br#"{"amount": 0, "currency": "EUR"}"#)),
            ["amount"]
        );
        assert_eq!(
            parameters(capture(br#"{"amount": -5, "currency": "EUR"}"#)),
            ["amount"]
        );
        assert_eq!(
            parameters(capture(br#"{"amount": 1e3, "currency": "EUR"}"#)),
            ["amount"]
        );
        assert_eq!(
            parameters(capture(br#"{"amount": "1", "currency": "EUR"}"#)),
            ["amount"]
        );
        assert_eq!(parameters(capture(br#"{"currency": "EUR"}"#)), ["amount"]);
        assert_eq!(
            parameters(capture(br#"{"amount": 1, "currency": "E1R"}"#)),
            ["currency"]
        );
        assert_eq!(parameters(capture(br#"{"amount": 1}"#)), ["currency"]);
        let long = format!(
            r#"{{"amount": 1, "currency": "EUR", "payment_refund_reference": "{}"}}"#,
            "x".repeat(256)
        );
        assert_eq!(
            parameters(capture(long.as_bytes())),
            ["payment_refund_reference"]
        );
        assert_eq!(parameters(capture(b"{not json")), ["body"]);
        assert_eq!(parameters(capture(b"[1]")), ["body"]);
        assert_eq!(parameters(capture(b"")), ["body"]);

        let transaction = |body: &[u8]| parse_refund(body, RefundOf::Transaction);
        assert_eq!(
            parameters(transaction(br#"{"amount": 100, "currency": "EUR"}"#)),
            ["line_items"]
        );
        assert_eq!(
            parameters(transaction(
                br#"{"amount": 100, "currency": "EUR", "line_items": [{"name": "a", "quantity": 1, "unit_price": 90, "total_amount": 90}]}"#
            )),
            ["line_items"]
        );
        assert_eq!(
            parameters(transaction(
                br#"{"amount": 100, "currency": "EUR", "line_items": []}"#
            )),
            ["line_items"]
        );
    }
}
