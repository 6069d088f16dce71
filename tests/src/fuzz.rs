//! The bodies of the fuzz targets: one `fn(&[u8])` per target, which must not panic on any
//! input and asserts what must hold of what it read. Two drivers run them: `fuzz/` (cargo-fuzz
//! and libFuzzer, the long runs) and `tests/fuzz.rs` (proptest on the stable toolchain, the
//! bounded run of the test command, which also runs every file of `fuzz/corpus/` once). See
//! `fuzz/README.md`.
//!
//! # Targets ([`TARGETS`])
//! - [`request`]: every request message of both gRPC services, decoded from the bytes as tonic
//!   decodes it and converted to the domain as the service does (`convert`, the commands'
//!   `validate`, `OrderSelector::parse`, `ReferenceQuery::parse`, `OperationName::parse`,
//!   routing, `convert::operation_filter`, timestamps, durations), and the `grpc-timeout`
//!   header. The first byte picks the message ([`REQUEST_KINDS`]).
//! - [`klarna_response`]: an HTTP answer from Klarna, read by every reader of both APIs: Order
//!   Management's order, refund and extension offers, a created refund's id (`Refund-Id`,
//!   `Location`, body), the partner transaction and its created refund, error bodies,
//!   `Klarna-Correlation-Id` and `Retry-After`; then what the gateway makes of them (the
//!   answers to callers, the refund and partner rules, the error statuses).
//! - [`webhook`]: a delivery to the webhook receiver: its signature check with the keys the
//!   receiver holds, the envelope, and the refund event's payload.
//! - [`callers`]: the callers file, and the grants of the callers it names.
//! - [`stored_call`]: a stored Klarna call (and a stored answer context) read back, and the
//!   answer rebuilt from it for a replay.
//! - [`stored_answer`]: a stored answer replayed: a success decoded as each response message,
//!   an error rebuilt as the status (and the headers) a caller receives.
//!
//! # Input formats
//! [`klarna_response`] and [`webhook`] read an HTTP message: a first line (the status, e.g.
//! `201`, or anything for a request), header lines `Name: value`, an empty line, the body.
//! Input without an empty line is all body (status 200, no headers). [`stored_call`] reads the
//! stored call's text, then optionally a newline and an answer context. [`stored_answer`]
//! reads the status code as the first byte, the message up to the first newline, then the
//! payload. [`callers`] reads the file's text.
//!
//! # Invariants checked
//! A message that decodes re-encodes to one that decodes equal; converting a request twice
//! gives the same result; a valid mutating request's stored Klarna call reads back equal and
//! re-encodes to the same text, so a resend after a crash sends the same call; a parsed
//! webhook envelope written out again parses equal; a body signed with a key verifies with
//! that key only, and with no changed byte or signature digit; a stored error answer replayed
//! and stored again is the same; an answer rebuilt from a stored call carries the call's
//! values; ids and correlation ids read from Klarna are trimmed and not empty.

use std::fmt::Debug;
use std::time::Duration;

use hmac::{Hmac, Mac};
use prost::Message;
use refund_gateway::auth::{Callers, OPERATOR_RPCS, RPC_NAMES};
use refund_gateway::convert;
use refund_gateway::protocol::{Accepted, KlarnaCall, encoding};
use refund_gateway::status;
use refund_gateway::webhooks::{KEY_ID_HEADER, SIGNATURE_HEADER};
use refund_gateway_domain::rules::{self, PartnerRefundRequest};
use refund_gateway_domain::{
    self as domain, Amount, Attempt, Caller, Currency, ExtendDueDate, ExtendDueDateOptionsQuery,
    GatewayError, KlarnaApiKind, KlarnaError, KlarnaRefund, NewOperation, Operation, OperationId,
    OperationName, OperationState, OrderQuery, OrderSelector, PartnerRefund, PaymentTransactionId,
    ReferenceQuery, RefundCapture, RefundOrder, RefundQuery, RefundTransaction,
    ReleaseAuthorization, ResourceRef, RouteRequest, Routing, Rpc, StoredResponse,
    TransactionQuery, Violations,
};
use refund_gateway_klarna::fuzzing as klarna;
use refund_gateway_klarna::webhook::{self, MAX_EVENT_ID_CHARS, RefundedEvent};
use refund_gateway_klarna::{REFUNDED_EVENT_TYPE, partner_limit_reason};
use refund_gateway_proto::v1 as pb;
use reqwest::StatusCode;
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::SecretString;
use sha2::Sha256;
use time::OffsetDateTime;
use tonic_types::StatusExt;

/// A fuzz target: its name (of `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/`) and
/// its body.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The name.
    pub name: &'static str,
    /// The body: never panics, whatever the input.
    pub run: fn(&[u8]),
}

/// Every target.
pub const TARGETS: [Target; 6] = [
    Target {
        name: "request",
        run: request,
    },
    Target {
        name: "klarna_response",
        run: klarna_response,
    },
    Target {
        name: "webhook",
        run: webhook,
    },
    Target {
        name: "callers",
        run: callers,
    },
    Target {
        name: "stored_call",
        run: stored_call,
    },
    Target {
        name: "stored_answer",
        run: stored_answer,
    },
];

/// The corpus of the targets in the repository (`fuzz/corpus/<target>/`).
pub fn corpus_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fuzz")
        .join("corpus")
}

// ---------------------------------------------------------------------------------------------
// Requests

/// What the first byte of a [`request`] input picks (modulo their number): the request
/// message of each RPC of both services, then the `grpc-timeout` header of any call.
pub const REQUEST_KINDS: [&str; 18] = [
    "RefundOrder",
    "ReleaseAuthorization",
    "GetExtendDueDateOptions",
    "ExtendDueDate",
    "GetOrder",
    "GetRefund",
    "RefundCapture",
    "RefundTransaction",
    "GetTransaction",
    "ListOperations",
    "LinkReceipt",
    "FindOrder",
    "GetOperation",
    "WatchOperation",
    "ListAttention",
    "ResolveOperation",
    "Reconcile",
    "grpc-timeout",
];

/// The `request` input of `message` for the RPC `kind` (one of [`REQUEST_KINDS`]).
pub fn request_input(kind: &str, message: &impl Message) -> Vec<u8> {
    let index = REQUEST_KINDS.iter().position(|k| *k == kind).unwrap_or(0);
    let mut input = vec![u8::try_from(index).unwrap_or(0)];
    input.extend(message.encode_to_vec());
    input
}

/// Target `request`: a request message from arbitrary bytes, converted to the domain.
pub fn request(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match usize::from(kind) % REQUEST_KINDS.len() {
        0 => decoded(bytes, refund_order),
        1 => decoded(bytes, release_authorization),
        2 => decoded(bytes, |r: pb::GetExtendDueDateOptionsRequest| {
            ExtendDueDateOptionsQuery::validate(r.klarna_account, &r.order_id, &r.capture_id)
        }),
        3 => decoded(bytes, extend_due_date),
        4 => decoded(bytes, |r: pb::GetOrderRequest| {
            OrderQuery::validate(r.klarna_account, &r.order_id)
        }),
        5 => decoded(bytes, |r: pb::GetRefundRequest| {
            RefundQuery::validate(r.klarna_account, &r.order_id, &r.refund_id)
        }),
        6 => decoded(bytes, refund_capture),
        7 => decoded(bytes, refund_transaction),
        8 => decoded(bytes, |r: pb::GetTransactionRequest| {
            TransactionQuery::validate(r.klarna_account, &r.payment_transaction_id)
        }),
        9 => decoded(bytes, convert::operation_filter),
        10 => decoded(bytes, link_receipt),
        11 => decoded(bytes, find_order),
        12 => decoded(bytes, |r: pb::GetOperationRequest| {
            operation_name(&r.operation_id, &r.rpc, &r.idempotency_key, &r.caller)
        }),
        13 => decoded(bytes, |r: pb::WatchOperationRequest| {
            operation_name(&r.operation_id, &r.rpc, &r.idempotency_key, &r.caller)
        }),
        14 => decoded(bytes, list_attention),
        15 => decoded(bytes, refund_gateway::operator::validate_resolve),
        16 => decoded(bytes, reconcile),
        _ => grpc_timeout(bytes),
    }
}

/// Decodes `bytes` as tonic does; a message that decodes must re-encode to one that decodes
/// equal, and `convert` (a pure function of the message) must give the same result twice.
fn decoded<M, T>(bytes: &[u8], convert: impl Fn(M) -> T)
where
    M: Message + Default + Clone + PartialEq + Debug,
    T: PartialEq + Debug,
{
    let Ok(message) = M::decode(bytes) else {
        return;
    };
    let again = M::decode(message.encode_to_vec().as_slice())
        .unwrap_or_else(|e| panic!("a decoded message re-encodes to unreadable bytes: {e}"));
    assert_eq!(again, message, "a decoded message re-encodes differently");
    let first = convert(message);
    let second = convert(again);
    assert_eq!(first, second, "one request converted two ways");
}

/// The accounts requests are routed among: one of each API, as configured by default.
fn routing() -> Routing {
    Routing::accounts_only([
        ("default".to_owned(), KlarnaApiKind::OrderManagement),
        ("partner".to_owned(), KlarnaApiKind::Payments),
    ])
}

/// What the service's routing does with a request's `klarna_account`, `store_id` and
/// currency: the account it resolves to, or the refusal; `klarna_account` is set to the
/// account on success.
fn route(
    klarna_account: &mut String,
    store_id: &str,
    currency: &str,
    api: KlarnaApiKind,
) -> Result<String, String> {
    let store_id = convert::store_id(store_id).map_err(|v| v.to_string())?;
    let currency = Currency::parse(currency).ok();
    let routing = routing();
    let request = RouteRequest {
        account: (!klarna_account.is_empty()).then_some(klarna_account.as_str()),
        store_id: store_id.as_ref(),
        currency: currency.as_ref(),
    };
    match routing.route(request, api) {
        Ok((name, _)) => {
            *klarna_account = name.to_owned();
            Ok(name.to_owned())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// [`route`] for an Order Management request without a currency.
fn route_order_management(account: &mut String, store_id: &str) -> Result<String, String> {
    route(account, store_id, "", KlarnaApiKind::OrderManagement)
}

/// The order id the service puts in place of a receipt or Klarna reference once the index
/// resolved it (any valid order id does for validation).
const RESOLVED_ORDER_ID: &str = "00000000-0000-4000-8000-000000000000";

fn refund_order(
    mut r: pb::RefundOrderRequest,
) -> (
    Result<String, String>,
    Result<OrderSelector, Violations>,
    Result<RefundOrder, Violations>,
) {
    let store_id = std::mem::take(&mut r.store_id);
    let currency = r.currency.clone();
    let routed = route(
        &mut r.klarna_account,
        &store_id,
        &currency,
        KlarnaApiKind::OrderManagement,
    );
    let selector = OrderSelector::parse(&r.order_id, &r.receipt_reference, &r.klarna_reference);
    if !matches!(selector, Ok(OrderSelector::Id(_))) {
        // Resolved through the index, or refused with the other fields checked as for a
        // valid order id.
        r.order_id = RESOLVED_ORDER_ID.to_owned();
    }
    let cmd = RefundOrder::validate(convert::refund_order_draft(r));
    if let Ok(cmd) = &cmd {
        let op = OperationId::derive(&Caller::anonymous(), Rpc::RefundOrder, &cmd.idempotency_key);
        let reference = cmd.reference.clone().unwrap_or_else(|| op.to_string());
        stored_round_trip(&KlarnaCall::CreateRefund {
            order_id: cmd.order_id.clone(),
            refund: KlarnaRefund {
                refunded_amount: cmd.refunded_amount,
                description: cmd.description.clone(),
                reference,
                order_lines: cmd.order_lines.clone(),
            },
        });
    }
    (routed, selector, cmd)
}

fn release_authorization(
    mut r: pb::ReleaseAuthorizationRequest,
) -> (
    Result<String, String>,
    Result<ReleaseAuthorization, Violations>,
) {
    let store_id = std::mem::take(&mut r.store_id);
    let routed = route_order_management(&mut r.klarna_account, &store_id);
    let cmd = ReleaseAuthorization::validate(convert::release_draft(r));
    if let Ok(cmd) = &cmd {
        stored_round_trip(&KlarnaCall::ReleaseRemainingAuthorization {
            order_id: cmd.order_id.clone(),
        });
    }
    (routed, cmd)
}

fn extend_due_date(
    mut r: pb::ExtendDueDateRequest,
) -> (Result<String, String>, Result<ExtendDueDate, Violations>) {
    let store_id = std::mem::take(&mut r.store_id);
    let routed = route_order_management(&mut r.klarna_account, &store_id);
    let cmd = ExtendDueDate::validate(convert::extend_due_date_draft(r));
    if let Ok(cmd) = &cmd {
        stored_round_trip(&KlarnaCall::ExtendDueDate {
            order_id: cmd.order_id.clone(),
            capture_id: cmd.capture_id.clone(),
            number_of_days: cmd.number_of_days,
        });
    }
    (routed, cmd)
}

/// The refund a partner command sends: the caller's reference, else the operation id.
fn partner_refund(
    rpc: Rpc,
    key: &domain::IdempotencyKey,
    amount: Amount,
    currency: &Currency,
    reference: Option<&String>,
    description: Option<&String>,
    line_items: Vec<domain::LineItem>,
) -> PartnerRefund {
    let op = OperationId::derive(&Caller::anonymous(), rpc, key);
    PartnerRefund {
        amount,
        currency: currency.clone(),
        reference: reference.cloned().unwrap_or_else(|| op.to_string()),
        description: description.cloned(),
        line_items,
    }
}

fn refund_capture(
    mut r: pb::RefundCaptureRequest,
) -> (Result<String, String>, Result<RefundCapture, Violations>) {
    let store_id = std::mem::take(&mut r.store_id);
    let currency = r.currency.clone();
    let routed = route(
        &mut r.klarna_account,
        &store_id,
        &currency,
        KlarnaApiKind::Payments,
    );
    let cmd = RefundCapture::validate(convert::refund_capture_draft(r));
    if let Ok(cmd) = &cmd {
        stored_round_trip(&KlarnaCall::RefundCapture {
            transaction_id: cmd.transaction_id.clone(),
            capture_id: cmd.capture_id.clone(),
            refund: partner_refund(
                Rpc::RefundCapture,
                &cmd.idempotency_key,
                cmd.amount,
                &cmd.currency,
                cmd.reference.as_ref(),
                cmd.description.as_ref(),
                Vec::new(),
            ),
        });
    }
    (routed, cmd)
}

fn refund_transaction(
    mut r: pb::RefundTransactionRequest,
) -> (
    Result<String, String>,
    Result<RefundTransaction, Violations>,
) {
    let store_id = std::mem::take(&mut r.store_id);
    let currency = r.currency.clone();
    let routed = route(
        &mut r.klarna_account,
        &store_id,
        &currency,
        KlarnaApiKind::Payments,
    );
    let cmd = RefundTransaction::validate(convert::refund_transaction_draft(r));
    if let Ok(cmd) = &cmd {
        let sum: i128 = cmd
            .line_items
            .iter()
            .map(|i| i128::from(i.total_amount))
            .sum();
        assert_eq!(
            sum,
            i128::from(cmd.amount.minor_units()),
            "a valid transaction refund whose items do not sum to its amount"
        );
        stored_round_trip(&KlarnaCall::RefundTransaction {
            transaction_id: cmd.transaction_id.clone(),
            refund: partner_refund(
                Rpc::RefundTransaction,
                &cmd.idempotency_key,
                cmd.amount,
                &cmd.currency,
                cmd.reference.as_ref(),
                cmd.description.as_ref(),
                cmd.line_items.clone(),
            ),
        });
    }
    (routed, cmd)
}

fn link_receipt(
    mut r: pb::LinkReceiptRequest,
) -> (Result<String, String>, Result<String, Violations>) {
    let store_id = r.store_id.clone();
    let routed = route_order_management(&mut r.klarna_account, &store_id);
    // `LinkReceipt` has no `PartialEq`: compared by what it holds.
    let link = convert::link_receipt(r).map(|l| format!("{l:?}"));
    (routed, link)
}

fn find_order(
    mut r: pb::FindOrderRequest,
) -> (Result<String, String>, Result<ReferenceQuery, Violations>) {
    let store_id = std::mem::take(&mut r.store_id);
    let routed = route_order_management(&mut r.klarna_account, &store_id);
    (
        routed,
        ReferenceQuery::parse(&r.receipt_reference, &r.klarna_reference),
    )
}

/// `GetOperation` and `WatchOperation` name an operation, read by an anonymous caller and by
/// a named one; a name made of a key gives the id derived from it.
fn operation_name(
    operation_id: &str,
    rpc: &str,
    key: &str,
    caller: &str,
) -> (
    Result<OperationName, Violations>,
    Result<OperationName, Violations>,
) {
    let anonymous = OperationName::parse(operation_id, rpc, key, caller, &Caller::anonymous());
    let named = OperationName::parse(operation_id, rpc, key, caller, &Caller::named("pos"));
    for name in [&anonymous, &named].into_iter().flatten() {
        let id = name.id_text();
        assert_eq!(
            id.len(),
            36,
            "an operation id that is not a hyphenated UUID: {id}"
        );
        if let OperationName::Id(id) = name {
            let again = OperationName::parse(id, "", "", "", &Caller::anonymous());
            assert_eq!(
                again.as_ref().ok(),
                Some(name),
                "an operation id read twice differs"
            );
        }
    }
    (anonymous, named)
}

/// `ListAttention`'s cutoff and page size, as the operator service reads them.
fn list_attention(r: pb::ListAttentionRequest) -> (Option<OffsetDateTime>, Option<u32>) {
    let cutoff = refund_gateway::operator::pending_cutoff(r.pending_older_than, fixed_now());
    if let Some(cutoff) = cutoff {
        assert!(cutoff <= fixed_now(), "a cutoff after now");
    }
    let size = match r.page_size {
        0 => Some(100),
        n @ 1..=500 => Some(n.unsigned_abs()),
        _ => None,
    };
    (cutoff, size)
}

/// `Reconcile`'s window, as the operator service reads it.
fn reconcile(r: pb::ReconcileRequest) -> Result<(OffsetDateTime, OffsetDateTime), Violations> {
    let window = refund_gateway::operator::reconcile_window(r.from, r.to, fixed_now());
    if let Ok((from, to)) = window {
        assert!(from < to, "an empty reconciliation window");
    }
    window
}

/// The caller's deadline from `grpc-timeout`: at most a day, whatever the header says.
fn grpc_timeout(bytes: &[u8]) {
    let Ok(value) = tonic::metadata::MetadataValue::try_from(bytes) else {
        return;
    };
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert("grpc-timeout", value);
    if let Some(deadline) = refund_gateway::grpc::grpc_timeout(&metadata) {
        assert!(
            deadline <= Duration::from_secs(24 * 3600),
            "a deadline beyond a day: {deadline:?}"
        );
    }
}

/// A valid request's Klarna call, stored and read back, is the same call, and stores as the
/// same text: a resend after a crash sends what the caller asked for.
fn stored_round_trip(call: &KlarnaCall) {
    let stored = encoding::encode_call(call);
    let read = encoding::decode_call(&stored).unwrap_or_else(|e| {
        panic!("a valid request's call is unreadable once stored: {e}: {stored}")
    });
    assert_eq!(&read, call, "a stored call reads back different: {stored}");
    assert_eq!(
        encoding::encode_call(&read),
        stored,
        "a stored call re-encodes differently"
    );
}

// ---------------------------------------------------------------------------------------------
// Klarna's answers

/// An HTTP message as the targets read it (see the module docs).
#[derive(Debug)]
struct Framed<'a> {
    first_line: &'a [u8],
    headers: HeaderMap,
    body: &'a [u8],
}

impl<'a> Framed<'a> {
    fn parse(data: &'a [u8]) -> Self {
        let Some(at) = data.windows(2).position(|w| w == b"\n\n") else {
            return Self {
                first_line: b"",
                headers: HeaderMap::new(),
                body: data,
            };
        };
        let (head, body) = (&data[..at], &data[at + 2..]);
        let mut lines = head.split(|&b| b == b'\n');
        let first_line = lines.next().unwrap_or_default();
        let mut headers = HeaderMap::new();
        for line in lines {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let name = line[..colon].trim_ascii();
            let value = line[colon + 1..].trim_ascii();
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                headers.append(name, value);
            }
        }
        Self {
            first_line,
            headers,
            body,
        }
    }

    /// The status of the first line (`201`, `HTTP/1.1 403 Forbidden`), else 200.
    fn status(&self) -> StatusCode {
        let line = String::from_utf8_lossy(self.first_line);
        line.split_whitespace()
            .find_map(|word| word.parse::<u16>().ok())
            .and_then(|code| StatusCode::from_u16(code).ok())
            .unwrap_or(StatusCode::OK)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A fixed "now", so that a run is repeatable.
fn fixed_now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_780_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Ids and correlation ids read from Klarna: trimmed, not empty.
fn check_id(what: &str, id: &str) {
    assert!(!id.is_empty(), "an empty {what}");
    assert_eq!(id, id.trim(), "an untrimmed {what}: {id:?}");
}

/// Target `klarna_response`: an answer of Klarna's, read by every reader of both APIs.
pub fn klarna_response(data: &[u8]) {
    let answer = Framed::parse(data);
    let (status, headers, body) = (answer.status(), &answer.headers, answer.body);
    let base = Url::parse("https://api.playground.klarna.com/")
        .unwrap_or_else(|e| panic!("the base URL: {e}"));

    // Order Management's reads.
    if let Ok(order) = klarna::order(body) {
        read_order(order);
    }
    if let Ok(refund) = klarna::refund(body) {
        let message = convert::get_refund_response(refund);
        round_trips(&message);
    }
    if let Ok(options) = klarna::extend_due_date_options(body) {
        assert_eq!(
            options.currency,
            options.currency.trim().to_ascii_uppercase()
        );
        for days in [0, 7, 14, 30] {
            if let Ok(cmd) = ExtendDueDate::validate(domain::ExtendDueDateDraft {
                idempotency_key: "fuzz".to_owned(),
                klarna_account: String::new(),
                order_id: RESOLVED_ORDER_ID.to_owned(),
                capture_id: "capture-1".to_owned(),
                number_of_days: days,
            }) && let Ok(offer) = rules::check_extension_offered(&cmd, &options)
            {
                assert_eq!(offer.number_of_days, days);
            }
        }
        round_trips(&convert::extend_due_date_options(options));
    }
    // A created refund, of both APIs.
    for created in [
        klarna::order_refund_created(status, headers, body, &base),
        klarna::partner_refund_created(status, headers, body, &base),
    ] {
        match created {
            Ok(Some(id)) => check_id("refund id", &id),
            Ok(None) => {}
            Err(e) => assert!(
                !status.is_success(),
                "a success status refused for a created refund: {e}"
            ),
        }
    }
    // The partner transaction.
    let requested = "krn:payment:eu1:transaction:6debe89e-98c0-486e-b3b6-0f6e6e0f1d2f";
    if let Ok(transaction) = klarna::transaction(body, requested) {
        read_transaction(transaction);
    }
    // Error answers, of both APIs, and what the gateway answers its caller with them.
    for api in [KlarnaApiKind::OrderManagement, KlarnaApiKind::Payments] {
        let response = klarna::error_response(api, status, headers, body);
        assert_eq!(response.status, status.as_u16());
        assert_eq!(response.api, api);
        for message in &response.messages {
            assert!(!message.trim().is_empty(), "an empty error message");
        }
        if let Some(id) = &response.correlation_id {
            check_id("correlation id", id);
        }
        if let Some(code) = &response.error_code {
            check_id("error code", code);
        }
        let _ = partner_limit_reason(&response);
        let error = KlarnaError::Answered(Box::new(response));
        let _ = domain::classify_read(&error);
        let attempt = Attempt::of_error(&error);
        let _ = domain::classify_mutation(api, &[Attempt::NoAnswer, attempt]);
        let _ = domain::classify_mutation(api, &[attempt]);
        // Only a non-2xx answer becomes Klarna's refusal (as in the transport); building and
        // sending the status is most of this target's time, so the rest is spared it.
        if !status.is_success() {
            let resource = match api {
                KlarnaApiKind::OrderManagement => ResourceRef::Order(RESOLVED_ORDER_ID.to_owned()),
                KlarnaApiKind::Payments => ResourceRef::Transaction(requested.to_owned()),
            };
            sendable(&status::to_status(&GatewayError::Klarna {
                error,
                resource,
            }));
        }
        if let Some(id) = klarna::correlation_id(api, headers) {
            check_id("correlation id", &id);
        }
    }
    if let Some(delay) = klarna::retry_after(headers, fixed_now())
        && let Some(seconds) = answer
            .header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
    {
        assert_eq!(delay, Duration::from_secs(seconds));
    }
}

/// What the gateway makes of an order Klarna answered: the answers to `GetOrder` and
/// `FindOrder`, the lines still refundable, the refund rules.
fn read_order(order: domain::Order) {
    assert_eq!(order.currency, order.currency.trim().to_ascii_uppercase());
    let found = convert::find_order_response("default".to_owned(), &order);
    assert!(found.refundable_amount >= 0, "a negative refundable amount");
    for line in &found.refundable_lines {
        assert!(line.quantity > 0, "a refundable line without quantity");
    }
    round_trips(&found);
    let refund = RefundOrder::validate(domain::RefundOrderDraft {
        idempotency_key: "fuzz".to_owned(),
        order_id: RESOLVED_ORDER_ID.to_owned(),
        refunded_amount: 100,
        currency: "SEK".to_owned(),
        ..domain::RefundOrderDraft::default()
    });
    if let Ok(cmd) = refund {
        let _ = rules::check_refund(&cmd, &order);
    }
    round_trips(&convert::get_order_response(order));
}

/// What the gateway makes of a transaction Klarna answered: the answer to `GetTransaction`,
/// the partner refund rules.
fn read_transaction(transaction: domain::PaymentTransaction) {
    assert_eq!(
        transaction.currency,
        transaction.currency.to_ascii_uppercase()
    );
    if let Some(refundable) = transaction.refundable() {
        assert!(refundable >= 0, "a negative refundable amount");
    }
    let transaction_id = PaymentTransactionId::parse(
        "krn:payment:eu1:transaction:6debe89e-98c0-486e-b3b6-0f6e6e0f1d2f",
    );
    let amount = Amount::parse(100);
    let currency = Currency::parse("EUR");
    if let (Ok(transaction_id), Ok(amount), Ok(currency)) = (transaction_id, amount, currency) {
        // Of the transaction, and of each capture it lists (as far as its id is valid).
        let captures: Vec<Option<domain::PaymentCaptureId>> = std::iter::once(None)
            .chain(
                transaction
                    .captures
                    .iter()
                    .filter_map(|c| domain::PaymentCaptureId::parse(&c.payment_capture_id).ok())
                    .map(Some),
            )
            .collect();
        for (capture_id, unlisted) in captures.iter().flat_map(|c| [(c, 0), (c, 199), (c, 500)]) {
            let request = PartnerRefundRequest {
                transaction_id: &transaction_id,
                capture_id: capture_id.as_ref(),
                amount,
                currency: &currency,
            };
            let _ = rules::check_partner_refund(request, &transaction, unlisted);
        }
    }
    round_trips(&convert::get_transaction_response(transaction));
}

/// An answer message encodes, and decodes equal.
fn round_trips<M: Message + Default + PartialEq + Debug>(message: &M) {
    let back = M::decode(message.encode_to_vec().as_slice())
        .unwrap_or_else(|e| panic!("an answer the gateway built is unreadable: {e}"));
    assert_eq!(
        &back, message,
        "an answer the gateway built decodes differently"
    );
}

/// A status the gateway answers with can be sent (as HTTP/2 headers), and a client reads back
/// its code and details.
fn sendable(status: &tonic::Status) {
    let mut headers = HeaderMap::new();
    status
        .add_header(&mut headers)
        .unwrap_or_else(|e| panic!("a status the gateway cannot send: {e}: {status:?}"));
    let back = tonic::Status::from_header_map(&headers)
        .unwrap_or_else(|| panic!("a status without grpc-status once sent: {status:?}"));
    assert_eq!(back.code(), status.code());
    assert_eq!(back.details(), status.details());
    let _ = back.get_error_details();
}

// ---------------------------------------------------------------------------------------------
// Webhooks

/// The signing keys the webhook target's receiver holds: (key id, secret), a `None` id
/// accepting any.
pub const WEBHOOK_KEYS: [(Option<&str>, &str); 2] = [
    (
        Some("krn:partner:global:notification:signing-key:8e4cd3a2-5b1d-4d6a-9f52-1c0c7b7f0d11"),
        "whsec_fuzz_8d2f4c1a",
    ),
    (None, "whsec_fuzz_any_key_id"),
];

/// HMAC-SHA256 of `body` under `secret`, lowercase hex: a `Klarna-Signature`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Target `webhook`: a delivery, checked as the receiver checks it.
pub fn webhook(data: &[u8]) {
    let delivery = Framed::parse(data);
    let body = delivery.body;
    // The receiver's gate: the keys of the delivery's key id, each tried.
    if let (Some(signature), Some(key_id)) = (
        delivery.header(SIGNATURE_HEADER),
        delivery.header(KEY_ID_HEADER),
    ) {
        for (id, secret) in WEBHOOK_KEYS {
            if id.is_some_and(|id| id != key_id) {
                continue;
            }
            if webhook::verify_signature(&SecretString::from(secret), body, signature) {
                assert_eq!(
                    signature,
                    sign(secret, body),
                    "a signature accepted that is not the body's"
                );
            }
        }
    }
    // The same body, signed: accepted under its key only, and with nothing changed.
    let (_, secret) = WEBHOOK_KEYS[0];
    let (_, other) = WEBHOOK_KEYS[1];
    let good = sign(secret, body);
    assert!(webhook::verify_signature(
        &SecretString::from(secret),
        body,
        &good
    ));
    assert!(!webhook::verify_signature(
        &SecretString::from(other),
        body,
        &good
    ));
    let digit = body.len() % good.len().max(1);
    let mut flipped = good.clone().into_bytes();
    if let Some(d) = flipped.get_mut(digit) {
        *d = if *d == b'0' { b'1' } else { b'0' };
    }
    let flipped = String::from_utf8(flipped).unwrap_or_default();
    assert!(!webhook::verify_signature(
        &SecretString::from(secret),
        body,
        &flipped
    ));
    if good.bytes().any(|b| b.is_ascii_alphabetic()) {
        let upper = good.to_ascii_uppercase();
        assert!(!webhook::verify_signature(
            &SecretString::from(secret),
            body,
            &upper
        ));
    }
    let mut longer = body.to_vec();
    longer.push(b' ');
    assert!(!webhook::verify_signature(
        &SecretString::from(secret),
        &longer,
        &good
    ));
    // The envelope, as the receiver reads it once the signature holds.
    if let Ok(envelope) = webhook::parse_envelope(body) {
        read_envelope(&envelope);
    }
    // A refund event's payload on its own.
    if let Ok(payload) = serde_json::from_slice::<serde_json::Value>(body)
        && let Ok(event) = RefundedEvent::from_payload(&payload)
    {
        check_refunded(&event);
    }
}

fn read_envelope(envelope: &webhook::WebhookEnvelope) {
    for (what, value) in [
        ("event_type", envelope.event_type()),
        ("event_id", envelope.event_id()),
        ("account id", envelope.account_id()),
    ] {
        check_id(what, value);
    }
    for value in [envelope.event_type(), envelope.event_id()] {
        assert!(value.chars().count() <= MAX_EVENT_ID_CHARS);
        assert!(!value.chars().any(char::is_control));
    }
    // Written out again, it reads the same.
    let mut metadata = serde_json::Map::new();
    let mut put = |name: &str, value: Option<&str>| {
        if let Some(value) = value {
            metadata.insert(name.to_owned(), serde_json::Value::from(value));
        }
    };
    put("event_type", Some(envelope.event_type()));
    put("event_id", Some(envelope.event_id()));
    put("event_version", envelope.event_version());
    put("occurred_at", envelope.occurred_at());
    put("correlation_id", envelope.correlation_id());
    put("subject_account_id", envelope.subject_account_id());
    put("recipient_account_id", envelope.recipient_account_id());
    put("account_id", envelope.v1_account_id());
    put("product_instance_id", envelope.product_instance_id());
    put("webhook_id", envelope.webhook_id());
    if let Some(live) = envelope.live() {
        metadata.insert("live".to_owned(), serde_json::Value::Bool(live));
    }
    let written = serde_json::json!({"metadata": metadata, "payload": envelope.payload()});
    let again = webhook::parse_envelope(written.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("a parsed envelope, written out, is refused: {e}"));
    assert_eq!(
        fields_of(&again),
        fields_of(envelope),
        "a parsed envelope reads back different"
    );
    // serde_json reads some floats a last bit off (its `float_roundtrip` is off), so a payload
    // with one may differ in that bit; the signature covers the raw bytes anyway.
    if !has_float(envelope.payload()) {
        assert_eq!(&again, envelope, "a parsed envelope reads back different");
    }
    if envelope.event_type() == REFUNDED_EVENT_TYPE
        && let Ok(event) = RefundedEvent::from_payload(envelope.payload())
    {
        check_refunded(&event);
    }
}

/// Every metadata field of an envelope.
fn fields_of(e: &webhook::WebhookEnvelope) -> [Option<String>; 11] {
    [
        Some(e.event_type()),
        Some(e.event_id()),
        e.event_version(),
        e.occurred_at(),
        e.correlation_id(),
        e.subject_account_id(),
        e.recipient_account_id(),
        e.v1_account_id(),
        e.product_instance_id(),
        e.webhook_id(),
        e.live().map(|live| if live { "true" } else { "false" }),
    ]
    .map(|v| v.map(str::to_owned))
}

fn has_float(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Number(n) => n.is_f64(),
        serde_json::Value::Array(items) => items.iter().any(has_float),
        serde_json::Value::Object(fields) => fields.values().any(has_float),
        _ => false,
    }
}

fn check_refunded(event: &RefundedEvent) {
    check_id("payment_transaction_id", &event.payment_transaction_id);
    assert!(event.payment_refund_id.is_some() || event.payment_refund_reference.is_some());
    for id in [&event.payment_refund_id, &event.payment_refund_reference]
        .into_iter()
        .flatten()
    {
        check_id("refund id or reference", id);
    }
    if let Some(currency) = &event.currency {
        assert_eq!(currency, &currency.to_ascii_uppercase());
    }
}

// ---------------------------------------------------------------------------------------------
// The callers file

/// Tokens the callers target authenticates with; seed files name their hashes.
pub const CALLER_TOKENS: [&str; 3] = ["fuzz-token-pos", "fuzz-token-backoffice", "fuzz-token-ops"];

/// Target `callers`: a callers file, parsed, and the grants of the callers it names.
pub fn callers(data: &[u8]) {
    // The gateway reads the file as UTF-8 text; other bytes are refused before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = Callers::parse(text);
    match (&parsed, Callers::parse(text)) {
        (Ok(a), Ok(b)) => assert_eq!(a.len(), b.len()),
        (Err(a), Err(b)) => assert_eq!(a, &b),
        _ => panic!("a callers file parsed two ways"),
    }
    let Ok(callers) = parsed else {
        return;
    };
    let _ = callers.scopes_anonymous();
    let tokens = CALLER_TOKENS.into_iter().chain(["", "Bearer", text]);
    let subjects = ["CN=pos.example", "CN=backoffice", ""];
    let grants = tokens
        .filter_map(|token| callers.authenticate(token))
        .chain(subjects.iter().filter_map(|s| callers.by_certificate(s)));
    for grant in grants {
        assert!(!grant.name().trim().is_empty(), "a caller without a name");
        let _ = grant.scope();
        let _ = grant.sees_all_operations();
        let _ = grant.has_amount_caps();
        if let Some((rate, burst)) = grant.rate() {
            assert!(rate >= 1 && burst >= 1, "a rate below 1");
        }
        for rpc in RPC_NAMES.iter().chain(OPERATOR_RPCS) {
            let _ = grant.check_rpc(rpc);
        }
        for account in ["default", "partner", ""] {
            let _ = grant.check_account(account);
        }
        for code in ["SEK", "EUR", "USD"] {
            let Ok(currency) = Currency::parse(code) else {
                continue;
            };
            if let Some(cap) = grant.daily_cap(&currency) {
                assert!(cap >= 1, "a daily cap below 1");
            }
            for amount in [1, 100, i64::MAX] {
                let _ = grant.check_amount(amount, &currency);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stored calls and answers

/// The RPC whose operation stores `call`.
fn rpc_of(call: &KlarnaCall) -> Rpc {
    match call {
        KlarnaCall::CreateRefund { .. } => Rpc::RefundOrder,
        KlarnaCall::ReleaseRemainingAuthorization { .. } => Rpc::ReleaseAuthorization,
        KlarnaCall::ExtendDueDate { .. } => Rpc::ExtendDueDate,
        KlarnaCall::RefundCapture { .. } => Rpc::RefundCapture,
        KlarnaCall::RefundTransaction { .. } => Rpc::RefundTransaction,
    }
}

/// A final operation as stored for `call`, its answer purged (so a replay rebuilds it), with
/// `answer_context`.
fn purged_operation(call: &KlarnaCall, answer_context: Option<String>) -> Operation {
    let caller = Caller::anonymous();
    let rpc = rpc_of(call);
    let key = domain::IdempotencyKey::parse("fuzz-key")
        .unwrap_or_else(|e| panic!("a fixed idempotency key: {e}"));
    let (resource_kind, resource_id) = call.serialized_on();
    let at = fixed_now();
    Operation {
        new: NewOperation {
            operation_id: OperationId::derive(&caller, rpc, &key),
            caller,
            rpc,
            idempotency_key: key,
            fingerprint: encoding::fingerprint(rpc, "default", &encoding::encode_call(call), None),
            klarna_account: "default".to_owned(),
            order_id: call.order_id().map(ToString::to_string).unwrap_or_default(),
            resource_kind,
            resource_id,
            capture_id: None,
            amount: None,
            currency: None,
            reference: None,
            klarna_request: encoding::encode_call(call),
            trace_id: None,
            traceparent: None,
        },
        state: OperationState::Succeeded,
        lease_expires_at: None,
        lease_holder: None,
        created_at: at,
        updated_at: at,
        refund_id: Some("refund-1".to_owned()),
        correlation_id: Some("correlation-1".to_owned()),
        response: Some(StoredResponse::default()),
        answer_context,
    }
}

/// Target `stored_call`: a stored Klarna call read back (first line), with an answer context
/// (the rest), and the answer a replay rebuilds from them.
pub fn stored_call(data: &[u8]) {
    // Stored as text.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (stored, context) = text.split_once('\n').unwrap_or((text, ""));
    for context in [context, text, stored] {
        if let Some((amount, currency)) = encoding::decode_extension_fee(context) {
            let again = encoding::encode_extension_fee(amount, &currency);
            assert_eq!(
                encoding::decode_extension_fee(&again),
                Some((amount, currency)),
                "an extension fee reads back different"
            );
        }
    }
    for stored in [stored, text] {
        let Ok(call) = encoding::decode_call(stored) else {
            continue;
        };
        // Read back, it stores and reads again the same (of any version, as version 1).
        stored_round_trip(&call);
        let op = purged_operation(&call, Some(context.to_owned()));
        assert!(
            encoding::same_request(&op.new.fingerprint, &op.new),
            "a request is not the same as itself"
        );
        let _ = encoding::same_request(stored, &op.new);
        let _ = encoding::same_request(text, &op.new);
        replayed(&op, &call);
    }
}

/// The answer a replay rebuilds from a stored call carries the call's values.
fn replayed(op: &Operation, call: &KlarnaCall) {
    let accepted = Accepted {
        refund_id: op.refund_id.clone(),
        correlation_id: op.correlation_id.clone(),
    };
    let payload = convert::encode_resent(op, call, &accepted);
    match call {
        KlarnaCall::CreateRefund { order_id, refund } => {
            let m = rebuilt::<pb::RefundOrderResponse>(&payload);
            assert_eq!(m.order_id, order_id.to_string());
            assert_eq!(m.refunded_amount, refund.refunded_amount.minor_units());
            assert_eq!(m.reference, refund.reference);
        }
        KlarnaCall::ReleaseRemainingAuthorization { order_id } => {
            let m = rebuilt::<pb::ReleaseAuthorizationResponse>(&payload);
            assert_eq!(m.order_id, order_id.to_string());
        }
        KlarnaCall::ExtendDueDate {
            order_id,
            number_of_days,
            ..
        } => {
            let m = rebuilt::<pb::ExtendDueDateResponse>(&payload);
            assert_eq!(m.order_id, order_id.to_string());
            assert_eq!(m.number_of_days, *number_of_days);
            let fee = op
                .answer_context
                .as_deref()
                .and_then(encoding::decode_extension_fee);
            assert_eq!(m.fee_amount, fee.as_ref().map_or(0, |f| f.0));
        }
        KlarnaCall::RefundCapture { refund, .. } | KlarnaCall::RefundTransaction { refund, .. } => {
            let (amount, currency, reference) = match call {
                KlarnaCall::RefundCapture { .. } => {
                    let m = rebuilt::<pb::RefundCaptureResponse>(&payload);
                    (m.amount, m.currency, m.reference)
                }
                _ => {
                    let m = rebuilt::<pb::RefundTransactionResponse>(&payload);
                    (m.amount, m.currency, m.reference)
                }
            };
            assert_eq!(amount, refund.amount.minor_units());
            assert_eq!(currency, refund.currency.to_string());
            assert_eq!(reference, refund.reference);
        }
    }
}

fn rebuilt<M: Message + Default>(payload: &[u8]) -> M {
    M::decode(payload).unwrap_or_else(|e| panic!("a rebuilt answer is unreadable: {e}"))
}

/// Target `stored_answer`: a stored answer replayed to a retry.
pub fn stored_answer(data: &[u8]) {
    let Some((&code, rest)) = data.split_first() else {
        return;
    };
    let (message, payload) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (&b""[..], rest),
    };
    let response = StoredResponse {
        code: i32::from(code),
        message: String::from_utf8_lossy(message).into_owned(),
        payload: payload.to_vec(),
    };
    if response.code == 0 {
        // A success: decoded as the RPC's answer.
        replay_as::<pb::RefundOrderResponse>(payload);
        replay_as::<pb::ReleaseAuthorizationResponse>(payload);
        replay_as::<pb::ExtendDueDateResponse>(payload);
        replay_as::<pb::RefundCaptureResponse>(payload);
        replay_as::<pb::RefundTransactionResponse>(payload);
        return;
    }
    // An error: rebuilt as the status a retry receives, sent, and stored again the same.
    let replayed = status::stored(response.clone(), true);
    sendable(&replayed);
    if (1..=16).contains(&response.code) {
        assert_eq!(replayed.code() as i32, response.code);
        assert_eq!(replayed.message(), response.message);
        if !response.payload.is_empty() {
            assert_eq!(
                status::to_stored(&replayed),
                response,
                "a stored error replayed and stored again differs"
            );
        }
    }
}

/// A stored success decoded as `M` (as the service replays it) re-encodes to the same.
fn replay_as<M: Message + Default + PartialEq + Debug>(payload: &[u8]) {
    let Ok(message) = M::decode(payload) else {
        return;
    };
    round_trips(&message);
}
