//! The partner Payments API ("payment transactions"): its paths, its headers, and the
//! execution of its calls against the store. The request pipeline itself (auth, rate limit,
//! size, faults, idempotency, log) is shared with Order Management in `api.rs`.
//!
//! Paths live under `/v2/accounts/{partner_account_id}` (acquiring partners) or directly under
//! `/v2` (a direct integration); an account other than the configured one is a 403. Path
//! segments are percent-decoded, so a KRN may be sent with its `:` as is or as `%3A`.
//!
//! Header rules (after auth, rate limit, size and faults; none of these answers is stored
//! under the idempotency key):
//! - `Partner-Correlation-Id`: optional; when present it must match `^[A-Za-z0-9]{1,255}$`,
//!   else 400 `VALIDATION_ERROR`; when valid it is echoed as a response header on every
//!   answer to that request (a replay included: the echo is the current request's, the rest
//!   of the replay is the stored answer);
//! - `Klarna-Partner-Account`: optional, recorded in the request log; empty → 400;
//! - `Klarna-Idempotency-Key`: required on POST (missing → 400), 1 to 255 visible ASCII
//!   characters (else 400).

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderName, Method, StatusCode};
use percent_encoding::percent_decode_str;
use time::OffsetDateTime;

use crate::api::{self, Executed};
use crate::idempotency::MAX_KEY_LEN;
use crate::partner_schema::{self, RefundOf, RefundRequest};
use crate::payments::Refunded;
use crate::response::{PartnerError, SimResponse};
use crate::simulator::Shared;
use crate::state::Store;
use crate::webhooks::RefundEvent;

/// Prefix of every partner path.
pub(crate) const PREFIX: &str = "/v2";

/// `Partner-Correlation-Id`, request and response header.
pub(crate) const CORRELATION_ID: HeaderName = HeaderName::from_static("partner-correlation-id");
const PARTNER_ACCOUNT: &str = "klarna-partner-account";
const IDEMPOTENCY_KEY: &str = "klarna-idempotency-key";
/// Longest `Partner-Correlation-Id`.
const MAX_CORRELATION_ID_LEN: usize = 255;

/// Whether a path belongs to the partner API.
pub(crate) fn is_partner_path(path: &str) -> bool {
    path == PREFIX || path.starts_with("/v2/")
}

/// A parsed partner call.
#[derive(Debug)]
pub(crate) enum Command {
    GetTransaction {
        transaction_id: String,
    },
    RefundTransaction {
        transaction_id: String,
        request: RefundRequest,
    },
    RefundCapture {
        capture_id: String,
        request: RefundRequest,
    },
}

fn no_route(method: &Method, path: &str) -> PartnerError {
    PartnerError::not_found(format!("No resource for {method} {path}"))
}

/// Parses the path (and, for refunds, the body) into a command. `account_id` is the one
/// partner account this simulator serves.
pub(crate) fn route(
    method: &Method,
    path: &str,
    body: &[u8],
    account_id: &str,
) -> Result<Command, PartnerError> {
    let rest = path.strip_prefix(PREFIX).unwrap_or_default();
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let segments: Vec<String> = rest
        .split('/')
        .map(|s| percent_decode_str(s).decode_utf8().map(|s| s.into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|_| no_route(method, path))?;
    let mut segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    if let ["accounts", account, ..] = segments.as_slice() {
        if *account != account_id {
            return Err(PartnerError::forbidden(format!(
                "Partner account {account} is not accessible with these credentials"
            )));
        }
        segments.drain(..2);
    }
    match (method, segments.as_slice()) {
        (&Method::GET, ["payment", "transactions", id]) if !id.is_empty() => {
            Ok(Command::GetTransaction {
                transaction_id: (*id).to_owned(),
            })
        }
        (&Method::POST, ["payment", "transactions", id, "refunds"]) if !id.is_empty() => {
            Ok(Command::RefundTransaction {
                transaction_id: (*id).to_owned(),
                request: partner_schema::parse_refund(body, RefundOf::Transaction)?,
            })
        }
        (&Method::POST, ["payment", "captures", id, "refunds"]) if !id.is_empty() => {
            Ok(Command::RefundCapture {
                capture_id: (*id).to_owned(),
                request: partner_schema::parse_refund(body, RefundOf::Capture)?,
            })
        }
        _ => Err(no_route(method, path)),
    }
}

/// The `Partner-Correlation-Id` to echo: present and valid.
pub(crate) fn echoed_correlation_id(headers: &HeaderMap) -> Option<&str> {
    correlation_id(headers).ok().flatten()
}

fn correlation_id(headers: &HeaderMap) -> Result<Option<&str>, PartnerError> {
    let Some(value) = headers.get(&CORRELATION_ID) else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if (1..=MAX_CORRELATION_ID_LEN).contains(&bytes.len())
        && bytes.iter().all(u8::is_ascii_alphanumeric)
    {
        // All ASCII alphanumerics, so `to_str` succeeds.
        Ok(value.to_str().ok())
    } else {
        Err(PartnerError::invalid(
            "Partner-Correlation-Id",
            format!(
                "Header Partner-Correlation-Id must be 1 to {MAX_CORRELATION_ID_LEN} letters and digits ([A-Za-z0-9])"
            ),
        ))
    }
}

/// The header checks; returns the idempotency key of a POST.
fn check_headers<'a>(
    method: &Method,
    headers: &'a HeaderMap,
) -> Result<Option<&'a str>, PartnerError> {
    correlation_id(headers)?;
    if headers
        .get(PARTNER_ACCOUNT)
        .is_some_and(|v| v.as_bytes().iter().all(u8::is_ascii_whitespace))
    {
        return Err(PartnerError::invalid(
            "Klarna-Partner-Account",
            "Header Klarna-Partner-Account must not be empty",
        ));
    }
    if method != Method::POST {
        return Ok(None);
    }
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Err(PartnerError::invalid(
            "Klarna-Idempotency-Key",
            "Header Klarna-Idempotency-Key is required",
        ));
    };
    let bytes = value.as_bytes();
    match value.to_str() {
        Ok(key)
            if (1..=MAX_KEY_LEN).contains(&bytes.len())
                && bytes.iter().all(u8::is_ascii_graphic) =>
        {
            Ok(Some(key))
        }
        _ => Err(PartnerError::invalid(
            "Klarna-Idempotency-Key",
            format!(
                "Header Klarna-Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
            ),
        )),
    }
}

/// The idempotency memory's key for a partner request keyed `key`: scoped per API credential;
/// the leading '\n' keeps partner keys apart from Order Management's (scoped by username,
/// which a header cannot start with a newline of).
pub(crate) fn memory_key(shared: &Shared, key: &str) -> String {
    format!("\npartner\n{}\n{key}", shared.config.partner_api_key)
}

/// Header checks, then, under the state lock, replay or route + execute + store.
pub(crate) fn execute(shared: &Shared, parts: &Parts, body: &Bytes) -> Executed {
    let key = match check_headers(&parts.method, &parts.headers) {
        Ok(key) => key,
        Err(error) => return Executed::answer(error.into()),
    };
    let config = &shared.config;
    let command = route(
        &parts.method,
        parts.uri.path(),
        body,
        &config.partner_account_id,
    );
    let scoped = key.map(|key| memory_key(shared, key));
    api::run_once(shared, scoped, |store, now| run(store, command, now))
}

fn run(
    store: &mut Store,
    command: Result<Command, PartnerError>,
    now: OffsetDateTime,
) -> (SimResponse, Option<RefundEvent>) {
    let result = command.and_then(|command| match command {
        Command::GetTransaction { transaction_id } => {
            let transaction = store.payments.get(&transaction_id).ok_or_else(|| {
                PartnerError::not_found(format!(
                    "Payment transaction {transaction_id} was not found"
                ))
            })?;
            Ok((
                SimResponse::partner_json(StatusCode::OK, &transaction.view()),
                None,
            ))
        }
        Command::RefundTransaction {
            transaction_id,
            request,
        } => {
            let refunded = store
                .payments
                .refund_transaction(&transaction_id, request, now)?;
            refund_answer(store, &refunded)
        }
        Command::RefundCapture {
            capture_id,
            request,
        } => {
            let refunded = store.payments.refund_capture(&capture_id, request, now)?;
            refund_answer(store, &refunded)
        }
    });
    result.unwrap_or_else(|error| (error.into(), None))
}

/// The 201 of a refund just recorded, and its webhook event.
fn refund_answer(
    store: &Store,
    refunded: &Refunded,
) -> Result<(SimResponse, Option<RefundEvent>), PartnerError> {
    let missing = || PartnerError::internal("the refund just recorded cannot be found");
    let transaction = store
        .payments
        .get(&refunded.transaction_id)
        .ok_or_else(missing)?;
    let created = transaction
        .refund_created(refunded.index)
        .ok_or_else(missing)?;
    let refund = transaction
        .refunds
        .get(refunded.index)
        .ok_or_else(missing)?;
    let event = RefundEvent {
        transaction_id: transaction.id.clone(),
        refund_id: refund.id.clone(),
        reference: refund.reference.clone(),
        amount: refund.amount,
        currency: refund.currency.clone(),
        occurred_at: refund.created_at,
    };
    Ok((
        SimResponse::partner_json(StatusCode::CREATED, &created),
        Some(event),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "krn:partner:global:account:live:acct";

    fn code(result: Result<Command, PartnerError>) -> (u16, &'static str) {
        let error = result.unwrap_err();
        (error.status.as_u16(), error.code)
    }

    #[test]
    fn routes_both_prefixes_and_decodes_segments() {
        let refund = br#"{"amount": 1, "currency": "SEK"}"#;
        for path in [
            "/v2/payment/captures/krn:payment:eu1:transaction:t:capture:1/refunds",
            "/v2/accounts/krn:partner:global:account:live:acct/payment/captures/krn%3Apayment%3Aeu1%3Atransaction%3At%3Acapture%3A1/refunds",
            "/v2/accounts/krn%3Apartner%3Aglobal%3Aaccount%3Alive%3Aacct/payment/captures/krn:payment:eu1:transaction:t:capture:1/refunds",
        ] {
            match route(&Method::POST, path, refund, ACCOUNT) {
                Ok(Command::RefundCapture { capture_id, .. }) => {
                    assert_eq!(capture_id, "krn:payment:eu1:transaction:t:capture:1");
                }
                other => panic!("{path}: {other:?}"),
            }
        }
        assert!(matches!(
            route(&Method::GET, "/v2/payment/transactions/krn:x", b"", ACCOUNT),
            Ok(Command::GetTransaction { transaction_id }) if transaction_id == "krn:x"
        ));
    }

    #[test]
    fn refuses_other_accounts_and_unknown_routes() {
        assert_eq!(
            code(route(
                &Method::GET,
                "/v2/accounts/krn:partner:global:account:live:other/payment/transactions/t",
                b"",
                ACCOUNT
            )),
            (403, "OPERATION_FORBIDDEN")
        );
        for (method, path) in [
            (Method::GET, "/v2"),
            (Method::GET, "/v2/"),
            (Method::GET, "/v2/payment/transactions/"),
            (Method::DELETE, "/v2/payment/transactions/t"),
            (Method::GET, "/v2/payment/transactions/t/refunds"),
            (Method::POST, "/v2/payment/captures/c/refunds/x"),
            (Method::GET, "/v2/payment/transactions/%FF"),
        ] {
            assert_eq!(
                code(route(&method, path, b"", ACCOUNT)),
                (404, "RESOURCE_NOT_FOUND"),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn header_rules() {
        let mut headers = HeaderMap::new();
        assert!(check_headers(&Method::GET, &headers).is_ok());
        assert_eq!(
            check_headers(&Method::POST, &headers).unwrap_err().errors[0].parameter,
            "Klarna-Idempotency-Key"
        );
        headers.insert(IDEMPOTENCY_KEY, "k-1".parse().unwrap());
        assert_eq!(check_headers(&Method::POST, &headers), Ok(Some("k-1")));
        headers.insert(IDEMPOTENCY_KEY, "a b".parse().unwrap());
        assert!(check_headers(&Method::POST, &headers).is_err());
        headers.insert(IDEMPOTENCY_KEY, "x".repeat(256).parse().unwrap());
        assert!(check_headers(&Method::POST, &headers).is_err());
        headers.insert(IDEMPOTENCY_KEY, "x".repeat(255).parse().unwrap());
        assert!(check_headers(&Method::POST, &headers).is_ok());

        headers.insert(&CORRELATION_ID, "abc123XYZ".parse().unwrap());
        assert_eq!(echoed_correlation_id(&headers), Some("abc123XYZ"));
        for bad in [
            "",
            "4f3c2a71-8d5e-4b6a-9c1f-2e7d8a9b0c11",
            "a b",
            &"a".repeat(256),
        ] {
            headers.insert(&CORRELATION_ID, bad.parse().unwrap());
            assert_eq!(echoed_correlation_id(&headers), None, "{bad:?}");
            assert_eq!(
                check_headers(&Method::GET, &headers).unwrap_err().errors[0].parameter,
                "Partner-Correlation-Id"
            );
        }
        headers.remove(&CORRELATION_ID);
        headers.insert(PARTNER_ACCOUNT, "".parse().unwrap());
        assert!(check_headers(&Method::GET, &headers).is_err());
        headers.insert(PARTNER_ACCOUNT, "anything".parse().unwrap());
        assert!(check_headers(&Method::GET, &headers).is_ok());
    }
}
