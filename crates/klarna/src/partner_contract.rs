//! What this adapter assumes about Klarna's partner Payments API: paths, header names, the
//! JSON it writes and how it reads the answers and the refund webhook's payload (see
//! docs/klarna.md#partner-payments).
//!
//! Points tagged **\[C\]** are confirmed by Klarna's partner documentation; points tagged
//! **\[U\]** are not (Klarna does not publish the refund operations' paths and fields). They all
//! live here, and only here, so correcting one is a one-line change. Writing is strict (exactly
//! these names, absent optionals left out); reading is lenient (unknown fields ignored,
//! missing lists empty, missing amounts left unknown) except for amounts, which must be
//! integers.

use http::StatusCode;
use http::header::{HeaderMap, HeaderValue, LOCATION};
use percent_encoding::percent_decode_str;
use refund_gateway_domain::{
    KlarnaApiKind, KlarnaError, KlarnaErrorResponse, LineItem, OperationId, PartnerRefund,
    PaymentCapture, PaymentRefund, PaymentTransaction, TransactionState,
};
use serde::{Deserialize, Deserializer, Serialize};
use url::Url;

use crate::contract::REFUND_ID_HEADER;
use crate::wire::lenient_vec;

/// Segments of the transactions collection, after the configured prefix (`/v2/accounts/{id}`
/// or `/v2`) \[C\] (`readPaymentTransaction`).
pub(crate) const TRANSACTIONS_PATH: [&str; 2] = ["payment", "transactions"];

/// \[U\] Segments of the captures collection, after the configured prefix: the capture refund
/// is assumed at `…/payment/captures/{payment_capture_id}/refunds`, by analogy with the
/// transactions collection (a capture KRN is globally unique, so no transaction segment).
pub(crate) const CAPTURES_PATH: [&str; 2] = ["payment", "captures"];

/// \[U\] Segment of a transaction's or a capture's refunds collection (the operation names are
/// `refundPaymentTransaction` and `refundPaymentCapture` \[C\]).
pub(crate) const REFUNDS: &str = "refunds";

/// The account acted for, when a partner acts on behalf of another account \[C\].
pub(crate) const PARTNER_ACCOUNT_HEADER: &str = "klarna-partner-account";

/// The partner's id for a request, echoed back by Klarna \[C\]: `^[A-Za-z0-9]{1,255}$`, so a
/// hyphenated UUID is refused.
pub(crate) const PARTNER_CORRELATION_ID_HEADER: &str = "partner-correlation-id";

/// Headers of an answer that may carry the call's correlation id, tried in order: the echoed
/// `Partner-Correlation-Id` \[C\], then **\[U\]** the names Order Management's answers are assumed
/// to use (see `contract.rs`). An error body's `error_id` \[C\] comes before all of them.
pub(crate) const CORRELATION_ID_HEADERS: [&str; 3] = [
    PARTNER_CORRELATION_ID_HEADER,
    "klarna-correlation-id",
    "correlation-id",
];

/// The `Partner-Correlation-Id` of a mutating call: the operation id without hyphens (32
/// lowercase hex digits), so every resend of an operation carries the same id and Klarna's
/// logs can be searched by it.
pub(crate) fn operation_correlation_id(key: &OperationId) -> HeaderValue {
    simple_uuid_header(key.as_uuid())
}

/// The `Partner-Correlation-Id` of a read: a fresh UUID v4 without hyphens, the same for the
/// read's resends (they are copies of one request).
pub(crate) fn read_correlation_id() -> HeaderValue {
    simple_uuid_header(uuid::Uuid::new_v4())
}

fn simple_uuid_header(id: uuid::Uuid) -> HeaderValue {
    let value = HeaderValue::from_str(&id.simple().to_string());
    // 32 lowercase hex digits are always a valid header value.
    #[allow(clippy::expect_used)]
    value.expect("a simple UUID is a header value")
}

/// Whether `id` is a `Partner-Correlation-Id` Klarna accepts \[C\].
#[cfg(test)]
pub(crate) fn is_partner_correlation_id(id: &str) -> bool {
    (1..=255).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

// ---------------------------------------------------------------------------------------------
// Requests

/// \[U\] `POST …/payment/transactions/{payment_transaction_id}/refunds` body. `line_items` is
/// always sent (Klarna needs them to allocate a refund across captures \[C\]).
#[derive(Debug, Serialize)]
pub(crate) struct TransactionRefundRequest<'a> {
    amount: i64,
    currency: &'a str,
    line_items: Vec<LineItemOut<'a>>,
    payment_refund_reference: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
}

impl<'a> TransactionRefundRequest<'a> {
    pub(crate) fn new(refund: &'a PartnerRefund) -> Self {
        Self {
            amount: refund.amount.minor_units(),
            currency: refund.currency.as_str(),
            line_items: refund.line_items.iter().map(LineItemOut::new).collect(),
            payment_refund_reference: &refund.reference,
            description: non_empty(refund.description.as_deref()),
        }
    }
}

/// \[U\] `POST …/payment/captures/{payment_capture_id}/refunds` body: no line items.
#[derive(Debug, Serialize)]
pub(crate) struct CaptureRefundRequest<'a> {
    amount: i64,
    currency: &'a str,
    payment_refund_reference: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
}

impl<'a> CaptureRefundRequest<'a> {
    pub(crate) fn new(refund: &'a PartnerRefund) -> Self {
        Self {
            amount: refund.amount.minor_units(),
            currency: refund.currency.as_str(),
            payment_refund_reference: &refund.reference,
            description: non_empty(refund.description.as_deref()),
        }
    }
}

/// \[U\] A refund's line item: Klarna's names for a transaction's line items, with `type`
/// for the domain's `item_type`.
#[derive(Debug, Serialize)]
struct LineItemOut<'a> {
    name: &'a str,
    quantity: i64,
    unit_price: i64,
    total_amount: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    total_tax_amount: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tax_rate: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    item_type: Option<&'a str>,
}

impl<'a> LineItemOut<'a> {
    fn new(item: &'a LineItem) -> Self {
        Self {
            name: &item.name,
            quantity: item.quantity,
            unit_price: item.unit_price,
            total_amount: item.total_amount,
            total_tax_amount: item.total_tax_amount,
            tax_rate: item.tax_rate,
            reference: non_empty(item.reference.as_deref()),
            item_type: non_empty(item.item_type.as_deref()),
        }
    }
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

// ---------------------------------------------------------------------------------------------
// Answers

/// \[U\] Success of a refund: 201 is expected; any 2xx is accepted, since refusing one would
/// report a refund Klarna made as not made.
pub(crate) fn refund_created(status: StatusCode) -> bool {
    status.is_success()
}

/// \[U\] The id of a created refund: `payment_refund_id` in the JSON body; failing that, a
/// `refund_id` in it; failing that, the last path segment of `Location` when it names a
/// refund (`…/refunds/{id}`, absolute or relative to `base`); failing that, a `Refund-Id`
/// header, as Order Management sends it. A made refund must not turn into an unknown outcome
/// because its id came in another place than assumed.
pub(crate) fn refund_id(headers: &HeaderMap, body: &[u8], base: &Url) -> Option<String> {
    refund_id_from_body(body)
        .or_else(|| refund_id_from_location(headers, base))
        .or_else(|| {
            let id = headers.get(REFUND_ID_HEADER)?.to_str().ok()?.trim();
            Some(id.to_owned()).filter(|id| !id.is_empty())
        })
}

fn refund_id_from_body(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    ["payment_refund_id", "refund_id"]
        .into_iter()
        .filter_map(|name| value.get(name)?.as_str())
        .map(str::trim)
        .find(|id| !id.is_empty())
        .map(str::to_owned)
}

fn refund_id_from_location(headers: &HeaderMap, base: &Url) -> Option<String> {
    let location = headers.get(LOCATION)?.to_str().ok()?.trim();
    let url = base.join(location).ok()?;
    let mut segments = url.path_segments()?.filter(|s| !s.is_empty()).rev();
    let id = segments.next()?;
    if segments.next()? != REFUNDS {
        return None;
    }
    let id = percent_decode_str(id).decode_utf8().ok()?;
    Some(id.trim().to_owned()).filter(|id| !id.is_empty())
}

/// Text that may be missing, `null`, blank or not a string (all `None`): a detail must not
/// cost us the transaction it is part of.
fn lenient_text<'de, D>(d: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    let value: Option<serde_json::Value> = Option::deserialize(d)?;
    Ok(value
        .as_ref()
        .and_then(serde_json::Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned))
}

/// Reads a `GET …/payment/transactions/{payment_transaction_id}` answer; `requested` stands
/// in for an answer without its own id. The body must be a JSON object (serde would read an
/// array as the fields in order).
pub(crate) fn transaction(body: &[u8], requested: &str) -> Result<PaymentTransaction, KlarnaError> {
    let unreadable = |e: &dyn std::fmt::Display| {
        KlarnaError::BadResponse(format!("cannot read the transaction: {e}"))
    };
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| unreadable(&e))?;
    if !value.is_object() {
        return Err(unreadable(&"not a JSON object"));
    }
    let wire = TransactionWire::deserialize(&value).map_err(|e| unreadable(&e))?;
    Ok(wire.into_domain(requested))
}

/// `GET …/payment/transactions/{payment_transaction_id}` answer \[C\] for the call; the field
/// names other than `state`, `amount`, `currency` and `captures` are **\[U\]**. `line_items` and
/// `payment_funding` \[C\] are not read: the gateway decides nothing on them.
#[derive(Debug, Deserialize)]
struct TransactionWire {
    #[serde(default, deserialize_with = "lenient_text")]
    payment_transaction_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_text")]
    state: Option<String>,
    #[serde(default)]
    amount: Option<i64>,
    #[serde(default, deserialize_with = "lenient_text")]
    currency: Option<String>,
    #[serde(default)]
    captured_amount: Option<i64>,
    #[serde(default)]
    refunded_amount: Option<i64>,
    #[serde(default, deserialize_with = "lenient_vec")]
    captures: Vec<CaptureWire>,
    #[serde(default, deserialize_with = "lenient_vec")]
    refunds: Vec<RefundWire>,
}

impl TransactionWire {
    /// The domain's view; `requested` stands in for an answer without its own id.
    fn into_domain(self, requested: &str) -> PaymentTransaction {
        PaymentTransaction {
            payment_transaction_id: self
                .payment_transaction_id
                .unwrap_or_else(|| requested.to_owned()),
            state: TransactionState::parse(self.state.as_deref().unwrap_or_default()),
            currency: self.currency.unwrap_or_default().to_ascii_uppercase(),
            amount: self.amount.unwrap_or_default(),
            captured_amount: self.captured_amount,
            refunded_amount: self.refunded_amount,
            captures: self
                .captures
                .into_iter()
                .map(PaymentCapture::from)
                .collect(),
            refunds: self.refunds.into_iter().map(PaymentRefund::from).collect(),
        }
    }
}

/// \[U\] An entry of `captures[]`.
#[derive(Debug, Deserialize)]
struct CaptureWire {
    #[serde(default, deserialize_with = "lenient_text")]
    payment_capture_id: Option<String>,
    #[serde(default)]
    amount: Option<i64>,
    #[serde(default)]
    refunded_amount: Option<i64>,
    #[serde(default, deserialize_with = "lenient_text")]
    created_at: Option<String>,
}

impl From<CaptureWire> for PaymentCapture {
    fn from(w: CaptureWire) -> Self {
        PaymentCapture {
            payment_capture_id: w.payment_capture_id.unwrap_or_default(),
            amount: w.amount.unwrap_or_default(),
            refunded_amount: w.refunded_amount,
            created_at: w.created_at,
        }
    }
}

/// \[U\] An entry of `refunds[]`.
#[derive(Debug, Deserialize)]
struct RefundWire {
    #[serde(default, deserialize_with = "lenient_text")]
    payment_refund_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_text")]
    payment_capture_id: Option<String>,
    #[serde(default)]
    amount: Option<i64>,
    #[serde(default, deserialize_with = "lenient_text")]
    payment_refund_reference: Option<String>,
    #[serde(default, deserialize_with = "lenient_text")]
    created_at: Option<String>,
}

impl From<RefundWire> for PaymentRefund {
    fn from(w: RefundWire) -> Self {
        PaymentRefund {
            payment_refund_id: w.payment_refund_id.unwrap_or_default(),
            payment_capture_id: w.payment_capture_id,
            amount: w.amount.unwrap_or_default(),
            reference: w.payment_refund_reference,
            created_at: w.created_at,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Webhooks

/// **\[U\]** Which of Klarna's limits a 403 refused, from its message: Klarna documents at most
/// 200 refunds and 500 operations per transaction, and a 403 beyond them, but not the error's
/// code or wording. Assumed: `OPERATION_FORBIDDEN` (or no code) whose message names refunds
/// or operations and the limit's number. Returns the gateway's reason for it
/// (`TRANSACTION_REFUND_LIMIT` / `TRANSACTION_OPERATION_LIMIT`), so Klarna's refusal and the
/// gateway's own read the same.
pub fn partner_limit_reason(response: &KlarnaErrorResponse) -> Option<&'static str> {
    if response.api != KlarnaApiKind::Payments
        || response.status != 403
        || response
            .error_code
            .as_deref()
            .is_some_and(|c| c != "OPERATION_FORBIDDEN")
    {
        return None;
    }
    let text = response.messages.join(" ").to_ascii_lowercase();
    if text.contains("refund") && text.contains("200") {
        Some("TRANSACTION_REFUND_LIMIT")
    } else if text.contains("operation") && text.contains("500") {
        Some("TRANSACTION_OPERATION_LIMIT")
    } else {
        None
    }
}

/// The event Klarna sends for every successful refund (named by Klarna's refund material,
/// not listed among the event types it documents: **\[U\]**).
pub const REFUNDED_EVENT_TYPE: &str = "payment.transaction.refunded";

/// \[U\] The payload of [`REFUNDED_EVENT_TYPE`]: unpublished, assumed to name the refund as the
/// refund answer does. Unknown fields are ignored; the amount must be an integer.
#[derive(Debug, Deserialize)]
pub(crate) struct RefundedPayloadWire {
    #[serde(default)]
    pub(crate) payment_transaction_id: Option<String>,
    #[serde(default)]
    pub(crate) payment_refund_id: Option<String>,
    #[serde(default)]
    pub(crate) payment_refund_reference: Option<String>,
    #[serde(default)]
    pub(crate) amount: Option<i64>,
    #[serde(default)]
    pub(crate) currency: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use refund_gateway_domain::{Amount, Caller, Currency, IdempotencyKey, Rpc};

    fn base() -> Url {
        Url::parse("https://api-global.klarna.com/").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn limit_refusals_are_read_from_the_message() {
        let refusal = |api, code: Option<&str>, message: &str| KlarnaErrorResponse {
            status: 403,
            api,
            error_object: true,
            error_code: code.map(str::to_owned),
            messages: vec![message.to_owned()],
            ..KlarnaErrorResponse::default()
        };
        let payments = KlarnaApiKind::Payments;
        let refunds = "Maximum number of refunds (200) reached for this transaction";
        let operations = "Maximum number of operations (500) reached for this transaction";
        assert_eq!(
            partner_limit_reason(&refusal(payments, Some("OPERATION_FORBIDDEN"), refunds)),
            Some("TRANSACTION_REFUND_LIMIT")
        );
        assert_eq!(
            partner_limit_reason(&refusal(payments, None, operations)),
            Some("TRANSACTION_OPERATION_LIMIT")
        );
        for other in [
            refusal(
                payments,
                Some("OPERATION_FORBIDDEN"),
                "Transaction is closed",
            ),
            refusal(payments, Some("VALIDATION_ERROR"), refunds),
            refusal(KlarnaApiKind::OrderManagement, None, refunds),
        ] {
            assert_eq!(partner_limit_reason(&other), None, "{other:?}");
        }
    }

    fn location(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            LOCATION,
            HeaderValue::from_str(value).unwrap_or_else(|e| panic!("{e}")),
        );
        h
    }

    #[test]
    fn refund_id_from_body_then_location() {
        let h = location("/v2/payment/transactions/krn:t/refunds/krn:r-loc");
        assert_eq!(
            refund_id(
                &h,
                br#"{"payment_refund_id":" krn:r1 ","refund_id":"x"}"#,
                &base()
            )
            .as_deref(),
            Some("krn:r1")
        );
        assert_eq!(
            refund_id(
                &h,
                br#"{"payment_refund_id":"","refund_id":"krn:r2"}"#,
                &base()
            )
            .as_deref(),
            Some("krn:r2")
        );
        assert_eq!(refund_id(&h, b"", &base()).as_deref(), Some("krn:r-loc"));
        let encoded = location("https://api-global.klarna.com/v2/payment/refunds/krn%3Ar%20x/");
        assert_eq!(
            refund_id(&encoded, b"not json", &base()).as_deref(),
            Some("krn:r x")
        );
        for nothing in ["/v2/payment/transactions/krn:t", "/refunds/", "/"] {
            assert_eq!(
                refund_id(&location(nothing), b"{}", &base()),
                None,
                "{nothing}"
            );
        }
        assert_eq!(
            refund_id(&HeaderMap::new(), br#"{"payment_refund_id":7}"#, &base()),
            None
        );
        // Last, a `Refund-Id` header: after a Location that names no refund, and alone.
        let mut headers = location("/v2/payment/transactions/krn:t");
        headers.insert("Refund-Id", HeaderValue::from_static(" krn:r-header "));
        assert_eq!(
            refund_id(&headers, b"", &base()).as_deref(),
            Some("krn:r-header")
        );
        headers.insert("Refund-Id", HeaderValue::from_static(" "));
        assert_eq!(refund_id(&headers, b"", &base()), None);
    }

    #[test]
    fn partner_correlation_ids_are_alphanumeric() {
        let key = IdempotencyKey::parse("k-1").unwrap_or_else(|e| panic!("{e}"));
        let op = OperationId::derive(&Caller::anonymous(), Rpc::RefundOrder, &key);
        let id = operation_correlation_id(&op);
        let id = id.to_str().unwrap_or_default();
        assert_eq!(id, op.to_string().replace('-', ""));
        assert!(is_partner_correlation_id(id), "{id}");
        let read = read_correlation_id();
        let read = read.to_str().unwrap_or_default();
        assert!(is_partner_correlation_id(read), "{read}");
        assert_ne!(read, read_correlation_id().to_str().unwrap_or_default());
        assert!(!is_partner_correlation_id(&op.to_string()));
        assert!(!is_partner_correlation_id(""));
        assert!(!is_partner_correlation_id(&"a".repeat(256)));
    }

    fn item(reference: Option<&str>, item_type: Option<&str>) -> LineItem {
        LineItem {
            name: "Shoes".into(),
            quantity: 2,
            unit_price: 2500,
            total_amount: 5000,
            total_tax_amount: None,
            tax_rate: Some(2500),
            reference: reference.map(str::to_owned),
            item_type: item_type.map(str::to_owned),
        }
    }

    fn refund(line_items: Vec<LineItem>, description: Option<&str>) -> PartnerRefund {
        PartnerRefund {
            amount: Amount::parse(5000).unwrap_or_else(|e| panic!("{e}")),
            currency: Currency::parse("sek").unwrap_or_else(|e| panic!("{e}")),
            reference: "ref-1".into(),
            description: description.map(str::to_owned),
            line_items,
        }
    }

    #[test]
    fn refund_bodies_leave_absent_optionals_out() {
        let r = refund(vec![item(None, Some("physical"))], None);
        let body = serde_json::to_value(TransactionRefundRequest::new(&r))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            body,
            serde_json::json!({
                "amount": 5000,
                "currency": "SEK",
                "line_items": [{
                    "name": "Shoes", "quantity": 2, "unit_price": 2500, "total_amount": 5000,
                    "tax_rate": 2500, "type": "physical"
                }],
                "payment_refund_reference": "ref-1"
            })
        );
        let r = refund(Vec::new(), Some("Returned"));
        let body =
            serde_json::to_value(CaptureRefundRequest::new(&r)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            body,
            serde_json::json!({
                "amount": 5000,
                "currency": "SEK",
                "payment_refund_reference": "ref-1",
                "description": "Returned"
            })
        );
        let r = refund(Vec::new(), Some(""));
        let body = serde_json::to_value(TransactionRefundRequest::new(&r))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body["line_items"], serde_json::json!([]));
        assert!(body.get("description").is_none());
    }

    fn read(json: &str) -> Result<PaymentTransaction, KlarnaError> {
        transaction(json.as_bytes(), "krn:asked")
    }

    #[test]
    fn transactions_are_read_leniently() {
        let t = read(
            r#"{
            "payment_transaction_id": "krn:t", "state": "authorized", "amount": 10000,
            "currency": "sek", "captured_amount": 6000, "refunded_amount": 1000,
            "payment_funding": {"type": "GUARANTEED", "state": "FUNDED"},
            "line_items": [{"name": "x"}],
            "captures": [
                {"payment_capture_id": "krn:c1", "amount": 6000, "refunded_amount": 1000,
                 "created_at": "2025-01-02T03:04:05Z", "extra": true},
                null
            ],
            "refunds": [{"payment_refund_id": "krn:r1", "payment_capture_id": "krn:c1",
                         "amount": 1000, "payment_refund_reference": "ref"}],
            "new_field": 1
        }"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.payment_transaction_id, "krn:t");
        assert_eq!(t.state, TransactionState::Authorized);
        assert_eq!(t.currency, "SEK");
        assert_eq!(t.amount, 10000);
        assert_eq!(t.captured_amount, Some(6000));
        assert_eq!(t.refunded_amount, Some(1000));
        assert_eq!(
            t.captures,
            [PaymentCapture {
                payment_capture_id: "krn:c1".into(),
                amount: 6000,
                refunded_amount: Some(1000),
                created_at: Some("2025-01-02T03:04:05Z".into()),
            }]
        );
        assert_eq!(
            t.refunds,
            [PaymentRefund {
                payment_refund_id: "krn:r1".into(),
                payment_capture_id: Some("krn:c1".into()),
                amount: 1000,
                reference: Some("ref".into()),
                created_at: None,
            }]
        );

        let bare = read(r#"{"state": "CLOSED", "captures": null, "created_at": 5}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bare.payment_transaction_id, "krn:asked");
        assert_eq!(bare.state, TransactionState::Closed);
        assert_eq!(bare.captured_amount, None);
        assert_eq!(bare.refunded_amount, None);
        assert!(bare.captures.is_empty() && bare.refunds.is_empty());
        assert_eq!(
            read(r#"{"state": "PENDING_REVIEW"}"#).map(|t| t.state).ok(),
            Some(TransactionState::Other("PENDING_REVIEW".into()))
        );
    }

    #[test]
    fn amounts_are_read_strictly() {
        assert!(read(r#"{"amount": 10.5}"#).is_err());
        assert!(read(r#"{"captures": [{"amount": "100"}]}"#).is_err());
        for not_an_object in ["[]", "[1, \"AUTHORIZED\"]", "null", "7", ""] {
            assert!(
                matches!(read(not_an_object), Err(KlarnaError::BadResponse(_))),
                "{not_an_object}"
            );
        }
    }

    #[test]
    fn accepted_success_statuses() {
        assert!(refund_created(StatusCode::CREATED));
        assert!(refund_created(StatusCode::OK));
        assert!(!refund_created(StatusCode::FOUND));
    }
}
