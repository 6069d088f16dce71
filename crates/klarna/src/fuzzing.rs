//! The adapter's private answer parsers, reachable for the fuzz targets only
//! (`refund_gateway_tests::fuzz`, run by `fuzz/` with cargo-fuzz and by `tests/tests/fuzz.rs`
//! on the stable toolchain). Not part of the API: hidden from the docs, and every function
//! here only forwards to the code the clients run on a real answer, so the fuzzers exercise
//! exactly that code.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http::header::HeaderMap;
use refund_gateway_domain::{
    ExtendDueDateOptions, KlarnaApiKind, KlarnaError, KlarnaErrorResponse, Order,
    PaymentTransaction, Refund,
};
use time::OffsetDateTime;
use url::Url;

use crate::transport::Answer;
use crate::wire::{ExtendDueDateOptionsWire, OrderWire, RefundWire};
use crate::{contract, error, partner_contract};

fn answer(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Answer {
    Answer {
        status,
        headers: headers.clone(),
        body: Bytes::copy_from_slice(body),
    }
}

fn success(body: &[u8]) -> Answer {
    answer(StatusCode::OK, &HeaderMap::new(), body)
}

/// A `GET …/orders/{order_id}` answer body, read as `KlarnaClient::get_order` reads it.
pub fn order(body: &[u8]) -> Result<Order, KlarnaError> {
    success(body).json::<OrderWire>().map(Order::from)
}

/// A `GET …/orders/{order_id}/refunds/{refund_id}` answer body, read as
/// `KlarnaClient::get_refund` reads it.
pub fn refund(body: &[u8]) -> Result<Refund, KlarnaError> {
    success(body).json::<RefundWire>().map(Refund::from)
}

/// A `GET …/extend-due-date-options` answer body, read as
/// `KlarnaClient::get_extend_due_date_options` reads it.
pub fn extend_due_date_options(body: &[u8]) -> Result<ExtendDueDateOptions, KlarnaError> {
    success(body)
        .json::<ExtendDueDateOptionsWire>()
        .map(ExtendDueDateOptions::from)
}

/// The id of a refund Order Management created (a 2xx answer to `POST …/refunds`), as
/// `KlarnaClient::create_refund` finds it: `Err` for a status it does not accept, `Ok(None)`
/// when the answer names no refund.
pub fn order_refund_created(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    base: &Url,
) -> Result<Option<String>, KlarnaError> {
    let a = answer(status, headers, body);
    a.expect_status(contract::refund_created, "a refund")?;
    Ok(contract::refund_id(&a.headers, &a.body, base))
}

/// The id of a refund the Payments API created, as `PaymentsClient` finds it (see
/// [`order_refund_created`]).
pub fn partner_refund_created(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    base: &Url,
) -> Result<Option<String>, KlarnaError> {
    let a = answer(status, headers, body);
    a.expect_status(partner_contract::refund_created, "a refund")?;
    Ok(partner_contract::refund_id(&a.headers, &a.body, base))
}

/// A `GET …/payment/transactions/{id}` answer body, read as `PaymentsClient::get_transaction`
/// reads it; `requested` is the id asked for.
pub fn transaction(body: &[u8], requested: &str) -> Result<PaymentTransaction, KlarnaError> {
    partner_contract::transaction(body, requested)
}

/// The correlation headers of an API's answers, tried in order.
fn correlation_headers(api: KlarnaApiKind) -> &'static [&'static str] {
    match api {
        KlarnaApiKind::OrderManagement => &contract::CORRELATION_ID_HEADERS,
        KlarnaApiKind::Payments => &partner_contract::CORRELATION_ID_HEADERS,
    }
}

/// A non-2xx answer of `api`, read as the clients' transport reads it (the API tagged).
pub fn error_response(
    api: KlarnaApiKind,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> KlarnaErrorResponse {
    let mut response = error::error_response(status, headers, body, correlation_headers(api));
    response.api = api;
    response
}

/// The correlation id of a 2xx answer of `api`, from its headers.
pub fn correlation_id(api: KlarnaApiKind, headers: &HeaderMap) -> Option<String> {
    error::correlation_id(headers, correlation_headers(api))
}

/// `Retry-After`, as the retry policy and the error reader take it, relative to `now`.
pub fn retry_after(headers: &HeaderMap, now: OffsetDateTime) -> Option<Duration> {
    error::retry_after(headers, now)
}
