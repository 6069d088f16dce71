//! Turning what went wrong into a [`KlarnaError`]: Klarna's error answers (any body, or none)
//! and transport failures, classified by what they prove about the request's fate.
//!
//! The one question that matters for a payment is whether Klarna may have acted. A failure to
//! connect proves it did not ([`KlarnaError::NotSent`]); anything after the request may have
//! left (a timeout, a reset, a cut body) proves nothing ([`KlarnaError::NoAnswer`]).

use std::error::Error as StdError;
use std::time::Duration;

use refund_gateway_domain::{KlarnaError, KlarnaErrorResponse};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

use crate::contract::{CORRELATION_ID_HEADERS, MAX_TEXT_MESSAGE_CHARS};

/// Klarna's error answer: `status` with `headers` and `body`, which may be Klarna's JSON
/// (`error_code`, `error_messages` or a singular `error_message`, `correlation_id`), other
/// JSON, text, or nothing.
pub(crate) fn error_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> KlarnaErrorResponse {
    let mut response = KlarnaErrorResponse {
        status: status.as_u16(),
        retry_after: retry_after(headers, OffsetDateTime::now_utc()),
        ..KlarnaErrorResponse::default()
    };
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(fields)) => {
            response.error_code = fields.get("error_code").and_then(text);
            let messages = fields.get("error_messages").into_iter().chain(
                // Some Klarna services send one message under the singular name.
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
            response.correlation_id = fields.get("correlation_id").and_then(text);
        }
        // JSON, but not Klarna's object: keep it as text, it may still explain something.
        Ok(_) | Err(_) => response.messages.extend(body_text(body)),
    }
    if response.correlation_id.is_none() {
        response.correlation_id = correlation_id(headers);
    }
    response
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

/// Klarna's correlation id from the first header of [`CORRELATION_ID_HEADERS`] present.
pub(crate) fn correlation_id(headers: &HeaderMap) -> Option<String> {
    CORRELATION_ID_HEADERS
        .iter()
        .filter_map(|name| headers.get(*name))
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .find(|v| !v.is_empty())
        .map(str::to_owned)
}

/// `Retry-After` as delay-seconds or as an HTTP date (relative to `now`, never negative).
pub(crate) fn retry_after(headers: &HeaderMap, now: OffsetDateTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    // IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) is a valid RFC 2822 date.
    let at = OffsetDateTime::parse(value, &Rfc2822).ok()?;
    Some((at - now).try_into().unwrap_or(Duration::ZERO))
}

/// A reqwest failure, classified. Only a failure to connect (refused, DNS, TLS handshake,
/// connect timeout) or to build the request proves the request never left.
pub(crate) fn transport_error(error: &reqwest::Error) -> KlarnaError {
    let message = error_chain(error);
    if error.is_connect() || error.is_builder() {
        KlarnaError::NotSent(message)
    } else {
        KlarnaError::NoAnswer(message)
    }
}

/// An error with its causes, `a: b: c`: reqwest's own message ("error sending request for
/// url …") names no cause. No layer of the chain holds headers, so no credential can appear.
pub(crate) fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // hyper and reqwest repeat their cause in their own message at times.
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
    use reqwest::header::HeaderValue;
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
        error_response(status, &map, body)
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
        }
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
