//! Turning what went wrong into a [`KlarnaError`]: Klarna's error answers (any body, or none;
//! Order Management's shape and the Payments API's) and transport failures, classified by what
//! they prove about the request's fate.
//!
//! The one question that matters for a payment is whether Klarna may have acted. A failure to
//! connect proves it did not ([`KlarnaError::NotSent`]); anything after the request may have
//! left (a timeout, a reset, a cut body) proves nothing ([`KlarnaError::NoAnswer`]).

use std::error::Error as StdError;
use std::time::Duration;

use http::StatusCode;
use http::header::{HeaderMap, RETRY_AFTER};
use refund_gateway_domain::{KlarnaError, KlarnaErrorResponse, KlarnaFieldError};
use time::OffsetDateTime;

use crate::contract::MAX_TEXT_MESSAGE_CHARS;

/// Klarna's error answer: `status` with `headers` and `body`, which may be Order Management's
/// JSON (`error_code`, `error_messages` or a singular `error_message`, `correlation_id`), the
/// Payments API's (`error_id`, `error_type`, `error_code`, `error_message`, `errors[]` of
/// `{parameter, error_message}`), other JSON, text, or nothing. The correlation id is the
/// body's `correlation_id`, else its `error_id` (what Klarna support looks up for the Payments
/// API), else the first of `correlation_headers` present. `error_object` is set when the body
/// is a JSON object with an `error_code` or an `error_id`: a 403 without one is the Payments
/// API's DDoS protection, not Klarna's refusal. `api` is left at its default, for the caller
/// to set.
pub(crate) fn error_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    correlation_headers: &[&str],
) -> KlarnaErrorResponse {
    let mut response = KlarnaErrorResponse {
        status: status.as_u16(),
        retry_after: retry_after(headers, OffsetDateTime::now_utc()),
        ..KlarnaErrorResponse::default()
    };
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(fields)) => {
            response.error_code = fields.get("error_code").and_then(text);
            let error_id = fields.get("error_id").and_then(text);
            response.error_object = response.error_code.is_some() || error_id.is_some();
            let messages = fields.get("error_messages").into_iter().chain(
                // Some Klarna services, the Payments API among them, send one message under
                // the singular name.
                fields.get("error_message"),
            );
            for value in messages {
                match value {
                    serde_json::Value::Array(items) => {
                        response.messages.extend(items.iter().filter_map(text));
                    }
                    other => response.messages.extend(text(other)),
                }
            }
            response.correlation_id = fields.get("correlation_id").and_then(text).or(error_id);
            response.error_type = fields.get("error_type").and_then(text);
            if let Some(serde_json::Value::Array(errors)) = fields.get("errors") {
                response.field_errors = errors.iter().filter_map(field_error).collect();
            }
        }
        // JSON, but not Klarna's object: keep it as text, it may still explain something.
        Ok(_) | Err(_) => response.messages.extend(body_text(body)),
    }
    if response.correlation_id.is_none() {
        response.correlation_id = correlation_id(headers, correlation_headers);
    }
    response
}

/// One entry of the Payments API's `errors[]`; an entry with neither a parameter nor a
/// message says nothing and is dropped.
fn field_error(value: &serde_json::Value) -> Option<KlarnaFieldError> {
    let parameter = value.get("parameter").and_then(text);
    let message = value.get("error_message").and_then(text);
    if parameter.is_none() && message.is_none() {
        return None;
    }
    Some(KlarnaFieldError {
        parameter: parameter.unwrap_or_default(),
        message: message.unwrap_or_default(),
    })
}

/// A JSON scalar as text; `null`, empty strings, objects and arrays give nothing.
fn text(value: &serde_json::Value) -> Option<String> {
    let s = match value {
        serde_json::Value::String(s) => s.trim().to_owned(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (!s.is_empty()).then_some(s)
}

/// A non-JSON body as one message: printable UTF-8 text only (a binary or compressed body says
/// nothing readable), cut to [`MAX_TEXT_MESSAGE_CHARS`].
fn body_text(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?.trim();
    if text.is_empty()
        || text
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return None;
    }
    let mut chars = text.chars();
    let mut kept: String = chars.by_ref().take(MAX_TEXT_MESSAGE_CHARS).collect();
    if chars.next().is_some() {
        kept.push('…');
    }
    Some(kept)
}

/// A correlation id from the first of `names` present (and not blank), e.g. Order
/// Management's [`CORRELATION_ID_HEADERS`](crate::contract::CORRELATION_ID_HEADERS).
pub(crate) fn correlation_id(headers: &HeaderMap, names: &[&str]) -> Option<String> {
    names
        .iter()
        .filter_map(|name| headers.get(*name))
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .find(|v| !v.is_empty())
        .map(str::to_owned)
}

/// `Retry-After` as delay-seconds or as an HTTP date (relative to `now`, never negative), in
/// any of the three formats HTTP accepts (RFC 9110 §5.6.7): IMF-fixdate, RFC 850, asctime.
pub(crate) fn retry_after(headers: &HeaderMap, now: OffsetDateTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::from(now))
            .unwrap_or(Duration::ZERO),
    )
}

/// A failure of the HTTP client, classified. Only a failure to connect (refused, DNS, TLS
/// handshake, connect timeout) proves the request never left.
pub(crate) fn transport_error(error: &hyper_util::client::legacy::Error) -> KlarnaError {
    let message = error_chain(error);
    if error.is_connect() {
        KlarnaError::NotSent(message)
    } else {
        KlarnaError::NoAnswer(message)
    }
}

/// An error with its causes, `a: b: c`: the client's own message ("client error (Connect)")
/// names no cause. No layer of the chain holds headers, so no credential can appear.
pub(crate) fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // hyper repeats its cause in its own message at times.
        if !message.contains(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::CORRELATION_ID_HEADERS;
    use http::header::HeaderValue;
    use time::macros::datetime;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn parse(status: u16, headers: &[(&'static str, &str)], body: &[u8]) -> KlarnaErrorResponse {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                *k,
                HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        let status = StatusCode::from_u16(status).unwrap_or_else(|e| panic!("{e}"));
        error_response(status, &map, body, &CORRELATION_ID_HEADERS)
    }

    #[test]
    fn every_sample_error_body_parses() {
        let cases = [
            ("error_bad_value_400_observed.json", 400, "BAD_VALUE"),
            ("error_cancel_403.json", 403, "CANCEL_NOT_ALLOWED"),
            ("error_get_order_invalid_id.json", 400, "INVALID_ORDER_ID"),
            ("error_no_such_capture_404.json", 404, "NO_SUCH_CAPTURE"),
            ("error_no_such_order_404.json", 404, "NO_SUCH_ORDER"),
            (
                "error_refund_no_captures_403.json",
                403,
                "REFUND_NOT_ALLOWED",
            ),
            ("error_refund_not_found_404.json", 404, "NOT_FOUND"),
            (
                "error_refund_over_refund_403.json",
                403,
                "REFUND_NOT_ALLOWED",
            ),
            ("error_release_fully_captured_403.json", 403, "NOT_ALLOWED"),
            ("error_update_authorization_403.json", 403, "NOT_ALLOWED"),
        ];
        for (file, status, code) in cases {
            let body = fixture(file);
            let want: serde_json::Value =
                serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}"));
            let r = parse(status, &[], &body);
            assert_eq!(r.status, status, "{file}");
            assert_eq!(r.error_code.as_deref(), Some(code), "{file}");
            assert_eq!(r.messages.len(), 1, "{file}");
            assert_eq!(want["error_messages"][0], r.messages[0].as_str(), "{file}");
            assert_eq!(
                want["correlation_id"],
                r.correlation_id.as_deref().unwrap_or_default(),
                "{file}"
            );
            assert_eq!(r.retry_after, None);
            assert!(r.error_object, "{file}");
            assert_eq!(r.error_type, None, "{file}");
            assert!(r.field_errors.is_empty(), "{file}");
        }
    }

    #[test]
    fn partner_error_body_parses() {
        let body = br#"{
            "error_id": "d7b6e2f0-6a7c-4c1e-9a53-0b1f2a3c4d5e",
            "error_type": "INPUT_ERROR",
            "error_code": "VALIDATION_ERROR",
            "error_message": "The request is invalid.",
            "doc_url": "https://docs.klarna.com/errors",
            "errors": [
                {"parameter": "line_items[1].total_amount", "error_message": "must be quantity x unit_price", "doc_url": "x"},
                {"parameter": "currency", "error_message": null},
                {"doc_url": "nothing else"},
                "not an object",
                {"error_message": "no parameter"}
            ],
            "future_field": {"a": 1}
        }"#;
        let r = parse(400, &[("partner-correlation-id", "abc123")], body);
        assert_eq!(r.status, 400);
        assert!(r.error_object);
        assert_eq!(r.error_code.as_deref(), Some("VALIDATION_ERROR"));
        assert_eq!(r.error_type.as_deref(), Some("INPUT_ERROR"));
        assert_eq!(r.messages, ["The request is invalid."]);
        assert_eq!(
            r.correlation_id.as_deref(),
            Some("d7b6e2f0-6a7c-4c1e-9a53-0b1f2a3c4d5e")
        );
        assert_eq!(
            r.field_errors,
            [
                KlarnaFieldError {
                    parameter: "line_items[1].total_amount".into(),
                    message: "must be quantity x unit_price".into(),
                },
                KlarnaFieldError {
                    parameter: "currency".into(),
                    message: String::new(),
                },
                KlarnaFieldError {
                    parameter: String::new(),
                    message: "no parameter".into(),
                },
            ]
        );
        // The defaults stay for the client to set.
        assert_eq!(r.api, refund_gateway_domain::KlarnaApiKind::OrderManagement);
    }

    #[test]
    fn a_body_correlation_id_wins_over_the_error_id() {
        let r = parse(
            404,
            &[],
            br#"{"error_id": "e-1", "correlation_id": "c-1", "error_code": "NOT_FOUND"}"#,
        );
        assert_eq!(r.correlation_id.as_deref(), Some("c-1"));
        let r = parse(403, &[], br#"{"error_id": "e-2"}"#);
        assert!(r.error_object, "an error_id alone is an error object");
        assert_eq!(r.error_code, None);
        assert_eq!(r.correlation_id.as_deref(), Some("e-2"));
    }

    #[test]
    fn forbidden_without_an_error_object() {
        let cases: [&[u8]; 7] = [
            b"",
            b"<html><body><h1>403 Forbidden</h1></body></html>",
            b"Forbidden",
            br#"{}"#,
            br#"{"message": "Forbidden"}"#,
            br#"{"error_code": null, "error_id": "", "error_message": "blocked"}"#,
            br#"["error_code"]"#,
        ];
        for body in cases {
            let r = parse(403, &[], body);
            assert_eq!(r.status, 403);
            assert!(!r.error_object, "{}", String::from_utf8_lossy(body));
            assert_eq!(r.error_code, None);
        }
        let r = parse(
            403,
            &[],
            br#"{"error_code": "OPERATION_FORBIDDEN", "error_id": "x"}"#,
        );
        assert!(r.error_object);
        let binary = parse(403, &[], &[0xff, 0xfe, 0x00]);
        assert!(!binary.error_object);
        assert!(binary.messages.is_empty());
    }

    #[test]
    fn correlation_headers_are_the_callers_choice() {
        let mut map = HeaderMap::new();
        map.insert("partner-correlation-id", HeaderValue::from_static("p1"));
        map.insert("klarna-correlation-id", HeaderValue::from_static("k1"));
        let names = ["partner-correlation-id", "klarna-correlation-id"];
        let r = error_response(StatusCode::FORBIDDEN, &map, b"", &names);
        assert_eq!(r.correlation_id.as_deref(), Some("p1"));
        let r = error_response(StatusCode::FORBIDDEN, &map, b"", &CORRELATION_ID_HEADERS);
        assert_eq!(r.correlation_id.as_deref(), Some("k1"));
        assert_eq!(correlation_id(&map, &[]), None);
    }

    #[test]
    fn singular_error_message_is_accepted() {
        let r = parse(
            500,
            &[],
            br#"{"error_code": "UNEXPECTED_ERROR", "error_message": "Something broke"}"#,
        );
        assert_eq!(r.error_code.as_deref(), Some("UNEXPECTED_ERROR"));
        assert_eq!(r.messages, ["Something broke"]);
        assert_eq!(r.correlation_id, None);
    }

    #[test]
    fn odd_json_shapes_do_not_fail() {
        let r = parse(
            400,
            &[],
            br#"{"error_code": null, "error_messages": ["a", null, 7, ""], "correlation_id": "", "x": 1}"#,
        );
        assert_eq!(r.error_code, None);
        assert_eq!(r.messages, ["a", "7"]);
        assert_eq!(r.correlation_id, None);
        let r = parse(400, &[], br#"["not", "an", "object"]"#);
        assert_eq!(r.messages, [r#"["not", "an", "object"]"#]);
    }

    #[test]
    fn text_body_becomes_one_message() {
        let r = parse(
            502,
            &[("content-type", "text/html")],
            b"<html><body>502 Bad Gateway</body></html>\n",
        );
        assert_eq!(r.status, 502);
        assert_eq!(r.error_code, None);
        assert_eq!(r.messages, ["<html><body>502 Bad Gateway</body></html>"]);
    }

    #[test]
    fn long_text_is_cut_and_binary_dropped() {
        let long = "é".repeat(2000);
        let r = parse(503, &[], long.as_bytes());
        assert_eq!(r.messages.len(), 1);
        assert_eq!(r.messages[0].chars().count(), MAX_TEXT_MESSAGE_CHARS + 1);
        assert!(r.messages[0].ends_with('…'));
        assert!(
            parse(503, &[], &[0x1f, 0x8b, 0x08, 0x00, 0xff])
                .messages
                .is_empty()
        );
        assert!(parse(503, &[], b"bad\x00text").messages.is_empty());
    }

    #[test]
    fn empty_body_gives_empty_answer() {
        let r = parse(401, &[], b"");
        assert_eq!(
            r,
            KlarnaErrorResponse {
                status: 401,
                ..Default::default()
            }
        );
        assert!(parse(504, &[], b"  \n").messages.is_empty());
    }

    #[test]
    fn correlation_id_falls_back_to_headers_in_order() {
        let r = parse(
            503,
            &[("correlation-id", "h2"), ("klarna-correlation-id", "h1")],
            b"",
        );
        assert_eq!(r.correlation_id.as_deref(), Some("h1"));
        let r = parse(503, &[("Correlation-Id", "h2")], b"oops");
        assert_eq!(r.correlation_id.as_deref(), Some("h2"));
        let r = parse(
            503,
            &[("klarna-correlation-id", "header")],
            br#"{"correlation_id": "body"}"#,
        );
        assert_eq!(r.correlation_id.as_deref(), Some("body"));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let r = parse(429, &[("retry-after", "7")], b"");
        assert_eq!(r.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(
            parse(429, &[("retry-after", "soon")], b"").retry_after,
            None
        );
        assert_eq!(parse(429, &[("retry-after", "-1")], b"").retry_after, None);

        let mut headers = HeaderMap::new();
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:30 GMT"),
        );
        let now = datetime!(2015-10-21 07:28:00 UTC);
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(30)));
        let later = datetime!(2015-10-21 08:00:00 UTC);
        assert_eq!(retry_after(&headers, later), Some(Duration::ZERO));
        // HTTP's two obsolete date formats, which a server may still send.
        for obsolete in [
            "Wednesday, 21-Oct-15 07:28:30 GMT",
            "Wed Oct 21 07:28:30 2015",
        ] {
            headers.insert(RETRY_AFTER, HeaderValue::from_static(obsolete));
            assert_eq!(
                retry_after(&headers, now),
                Some(Duration::from_secs(30)),
                "{obsolete}"
            );
        }
    }

    #[test]
    fn error_chain_names_causes_once() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("error sending request")
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::other("connection reset"));
        assert_eq!(error_chain(&e), "error sending request: connection reset");
    }
}
