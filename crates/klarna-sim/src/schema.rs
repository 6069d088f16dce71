//! Request bodies of the Klarna endpoints: parsing and schema validation.
//!
//! Every violation is a 422 `UNPROCESSABLE_ENTITY` listing all problems found, each prefixed
//! with the JSON path (`order_lines[2].name: ...`). Amounts are typed `i64`, so a float
//! (`100.0`, `1e3`) or a string amount is rejected by the parser itself. Unknown fields are
//! ignored, as Klarna does.

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::model::OrderLine;
use crate::response::ApiError;

/// Largest amount Klarna accepts in a request field (2024 spec).
pub(crate) const MAX_AMOUNT: i64 = 200_000_000;
/// Most order lines in one request.
pub(crate) const MAX_ORDER_LINES: usize = 1000;

/// A validated `POST .../refunds` body.
#[derive(Debug, Clone)]
pub(crate) struct RefundRequest {
    pub(crate) refunded_amount: i64,
    pub(crate) description: Option<String>,
    pub(crate) reference: Option<String>,
    pub(crate) order_lines: Vec<OrderLine>,
}

/// A validated `POST .../captures` body.
#[derive(Debug, Clone)]
pub(crate) struct CaptureRequest {
    pub(crate) captured_amount: i64,
    pub(crate) description: Option<String>,
    pub(crate) reference: Option<String>,
    pub(crate) order_lines: Vec<OrderLine>,
}

#[derive(Deserialize)]
struct RefundBody {
    refunded_amount: Option<i64>,
    description: Option<String>,
    reference: Option<String>,
    order_lines: Option<Vec<OrderLine>>,
}

#[derive(Deserialize)]
struct CaptureBody {
    captured_amount: Option<i64>,
    description: Option<String>,
    reference: Option<String>,
    order_lines: Option<Vec<OrderLine>>,
}

#[derive(Deserialize)]
struct ExtendBody {
    number_of_days: Option<i64>,
}

/// Parses and validates a refund body.
pub(crate) fn parse_refund(body: &[u8]) -> Result<RefundRequest, ApiError> {
    let parsed: RefundBody = parse_json(body)?;
    let mut errors = Vec::new();
    let refunded_amount = required_amount("refunded_amount", parsed.refunded_amount, &mut errors);
    check_len(
        "description",
        parsed.description.as_deref(),
        255,
        &mut errors,
    );
    check_len("reference", parsed.reference.as_deref(), 255, &mut errors);
    let order_lines = parsed.order_lines.unwrap_or_default();
    check_order_lines(&order_lines, &mut errors);
    finish(errors)?;
    Ok(RefundRequest {
        refunded_amount,
        description: parsed.description,
        reference: parsed.reference,
        order_lines,
    })
}

/// Parses and validates a capture body.
pub(crate) fn parse_capture(body: &[u8]) -> Result<CaptureRequest, ApiError> {
    let parsed: CaptureBody = parse_json(body)?;
    let mut errors = Vec::new();
    let captured_amount = required_amount("captured_amount", parsed.captured_amount, &mut errors);
    check_len(
        "description",
        parsed.description.as_deref(),
        255,
        &mut errors,
    );
    check_len("reference", parsed.reference.as_deref(), 255, &mut errors);
    let order_lines = parsed.order_lines.unwrap_or_default();
    check_order_lines(&order_lines, &mut errors);
    finish(errors)?;
    Ok(CaptureRequest {
        captured_amount,
        description: parsed.description,
        reference: parsed.reference,
        order_lines,
    })
}

/// Parses an extend-due-date body and returns `number_of_days`.
pub(crate) fn parse_extend(body: &[u8]) -> Result<i64, ApiError> {
    let parsed: ExtendBody = parse_json(body)?;
    match parsed.number_of_days {
        None => Err(ApiError::unprocessable(vec![
            "number_of_days: is required".to_owned(),
        ])),
        Some(days) if i32::try_from(days).is_err() => Err(ApiError::unprocessable(vec![
            "number_of_days: must be a 32-bit integer".to_owned(),
        ])),
        Some(days) => Ok(days),
    }
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let message = if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        };
        ApiError::unprocessable(vec![message])
    })?;
    de.end()
        .map_err(|e| ApiError::unprocessable(vec![e.to_string()]))?;
    Ok(value)
}

fn finish(errors: Vec<String>) -> Result<(), ApiError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::unprocessable(errors))
    }
}

fn required_amount(field: &str, value: Option<i64>, errors: &mut Vec<String>) -> i64 {
    match value {
        None => {
            errors.push(format!("{field}: is required"));
            0
        }
        Some(v) if !(0..=MAX_AMOUNT).contains(&v) => {
            errors.push(format!("{field}: must be between 0 and {MAX_AMOUNT}"));
            v
        }
        Some(v) => v,
    }
}

fn check_len(field: &str, value: Option<&str>, max: usize, errors: &mut Vec<String>) {
    if let Some(value) = value
        && value.chars().count() > max
    {
        errors.push(format!("{field}: must be at most {max} characters"));
    }
}

fn check_range(field: &str, value: Option<i64>, min: i64, max: i64, errors: &mut Vec<String>) {
    if let Some(v) = value
        && !(min..=max).contains(&v)
    {
        errors.push(match (min, max) {
            (i64::MIN, max) => format!("{field}: must be at most {max}"),
            (min, i64::MAX) => format!("{field}: must be at least {min}"),
            (min, max) => format!("{field}: must be between {min} and {max}"),
        });
    }
}

/// Checks the order-line limits of the 2024 spec.
pub(crate) fn check_order_lines(lines: &[OrderLine], errors: &mut Vec<String>) {
    if lines.len() > MAX_ORDER_LINES {
        errors.push(format!(
            "order_lines: at most {MAX_ORDER_LINES} order lines are allowed, got {}",
            lines.len()
        ));
        return;
    }
    for (i, line) in lines.iter().enumerate() {
        check_order_line(i, line, errors);
    }
}

fn check_order_line(i: usize, line: &OrderLine, errors: &mut Vec<String>) {
    let at = |field: &str| format!("order_lines[{i}].{field}");
    check_len(&at("name"), Some(&line.name), 255, errors);
    check_len(&at("reference"), line.reference.as_deref(), 255, errors);
    check_len(
        &at("quantity_unit"),
        line.quantity_unit.as_deref(),
        10,
        errors,
    );
    check_len(
        &at("merchant_data"),
        line.merchant_data.as_deref(),
        1024,
        errors,
    );
    check_len(
        &at("product_url"),
        line.product_url.as_deref(),
        1024,
        errors,
    );
    check_len(&at("image_url"), line.image_url.as_deref(), 1024, errors);
    check_range(&at("quantity"), Some(line.quantity), 0, i64::MAX, errors);
    check_range(
        &at("unit_price"),
        Some(line.unit_price),
        i64::MIN,
        MAX_AMOUNT,
        errors,
    );
    check_range(
        &at("total_amount"),
        Some(line.total_amount),
        i64::MIN,
        MAX_AMOUNT,
        errors,
    );
    check_range(
        &at("total_discount_amount"),
        line.total_discount_amount,
        0,
        MAX_AMOUNT,
        errors,
    );
    check_range(
        &at("total_tax_amount"),
        line.total_tax_amount,
        i64::MIN,
        MAX_AMOUNT,
        errors,
    );
    check_range(
        &at("tax_rate"),
        line.tax_rate,
        0,
        i64::from(i32::MAX),
        errors,
    );
    let expected = line
        .quantity
        .checked_mul(line.unit_price)
        .and_then(|gross| gross.checked_sub(line.total_discount_amount.unwrap_or(0)));
    if expected != Some(line.total_amount) {
        errors.push(format!(
            "{}: must equal quantity * unit_price - total_discount_amount",
            at("total_amount")
        ));
    }
    if let Some(ids) = &line.product_identifiers {
        let id = |field: &str| format!("order_lines[{i}].product_identifiers.{field}");
        check_len(&id("brand"), ids.brand.as_deref(), 70, errors);
        check_len(
            &id("category_path"),
            ids.category_path.as_deref(),
            750,
            errors,
        );
        check_len(
            &id("global_trade_item_number"),
            ids.global_trade_item_number.as_deref(),
            50,
            errors,
        );
        check_len(
            &id("manufacturer_part_number"),
            ids.manufacturer_part_number.as_deref(),
            70,
            errors,
        );
        check_len(&id("color"), ids.color.as_deref(), 64, errors);
        check_len(&id("size"), ids.size.as_deref(), 64, errors);
    }
    if let Some(sub) = &line.subscription {
        check_len(&at("subscription.name"), Some(&sub.name), 255, errors);
        check_range(
            &at("subscription.interval_count"),
            Some(sub.interval_count),
            1,
            i64::from(i32::MAX),
            errors,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(result: Result<RefundRequest, ApiError>) -> Vec<String> {
        result.unwrap_err().messages
    }

    #[test]
    fn accepts_the_docs_sample_with_a_return_fee() {
        let body = br#"{"refunded_amount": 9500, "reference": "r", "description": "d",
            "order_lines": [
              {"name": "T-Shirt", "type": "physical", "quantity": 1, "unit_price": 10000, "total_amount": 10000},
              {"name": "Return fee", "type": "return_fee", "quantity": 1, "unit_price": -500, "total_amount": -500}
            ], "unknown": {"x": 1}}"#;
        let refund = parse_refund(body).unwrap();
        assert_eq!(refund.refunded_amount, 9500);
        assert_eq!(refund.order_lines.len(), 2);
    }

    #[test]
    fn rejects_floats_strings_and_missing_amounts() {
        assert!(
            messages(parse_refund(br#"{"refunded_amount": 10.5}"#))[0]
                .starts_with("refunded_amount: invalid type: floating point")
        );
        assert!(parse_refund(br#"{"refunded_amount": 100.0}"#).is_err());
        assert!(parse_refund(br#"{"refunded_amount": 1e3}"#).is_err());
        assert!(parse_refund(br#"{"refunded_amount": "100"}"#).is_err());
        assert_eq!(
            messages(parse_refund(br#"{"description": "x"}"#)),
            ["refunded_amount: is required"]
        );
        assert!(parse_refund(br#"{"refunded_amount": -1}"#).is_err());
        assert!(parse_refund(br#"{"refunded_amount": 200000001}"#).is_err());
        assert!(parse_refund(br#"{"refunded_amount": 200000000}"#).is_ok());
        assert!(parse_refund(b"{not json").is_err());
        assert!(parse_refund(b"").is_err());
        assert!(parse_refund(br#"{"refunded_amount": 1} trailing"#).is_err());
    }

    #[test]
    fn rejects_bad_order_lines() {
        let m = messages(parse_refund(
            br#"{"refunded_amount": 100, "order_lines": [
                {"name": "a", "quantity": -1, "unit_price": 100, "total_amount": -100, "quantity_unit": "01234567890"},
                {"name": "b", "quantity": 2, "unit_price": 100, "total_amount": 150, "total_discount_amount": 10}
            ]}"#,
        ));
        assert!(m.contains(&"order_lines[0].quantity: must be at least 0".to_owned()));
        assert!(
            m.contains(&"order_lines[0].quantity_unit: must be at most 10 characters".to_owned())
        );
        assert!(m.contains(
            &"order_lines[1].total_amount: must equal quantity * unit_price - total_discount_amount".to_owned()
        ));
        let unknown_type = messages(parse_refund(
            br#"{"refunded_amount": 1, "order_lines": [{"type": "bogus", "name": "a", "quantity": 1, "unit_price": 1, "total_amount": 1}]}"#,
        ));
        assert!(unknown_type[0].starts_with("order_lines[0].type: unknown variant"));
        let missing_name = messages(parse_refund(
            br#"{"refunded_amount": 1, "order_lines": [{"quantity": 1, "unit_price": 1, "total_amount": 1}]}"#,
        ));
        assert!(
            missing_name[0].contains("missing field `name`"),
            "{missing_name:?}"
        );
    }

    #[test]
    fn extend_requires_number_of_days() {
        assert_eq!(parse_extend(br#"{"number_of_days": 14}"#).unwrap(), 14);
        assert!(parse_extend(br#"{}"#).is_err());
        assert!(parse_extend(br#"{"number_of_days": 14.0}"#).is_err());
    }
}
