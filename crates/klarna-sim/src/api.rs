//! The Klarna request pipeline, shared by both APIs (Order Management under
//! `/ordermanagement/v1/orders/` and anything else outside `/__admin/`, the partner Payments
//! API under `/v2`), and Order Management's routing. For each call, in this order:
//!
//! 1. read the body (at most 1 MiB is kept; larger bodies are drained and refused),
//! 2. auth → 401 (Order Management: Basic username:password or `Basic <api key>`; partner:
//!    `Basic <api key>`),
//! 3. rate limit → 429 (with `Retry-After: 1`; one bucket for both APIs),
//! 4. body size → 413,
//! 5. with [`Simulator::set_conflict_while_running`](crate::Simulator::set_conflict_while_running)
//!    on, 409 for a POST/PATCH whose `Klarna-Idempotency-Key` is in use by a request still
//!    between this step and its execution; then the injected fault, armed or drawn by chaos
//!    (a status answers here; a reset closes the connection here, logged with status 0;
//!    latency waits, then goes on),
//! 6. header checks → 400: Order Management checks `Klarna-Idempotency-Key` on POST/PATCH
//!    when present; the partner API checks `Partner-Correlation-Id`, `Klarna-Partner-Account`
//!    and requires the key on POST (see `partner.rs`),
//! 7. under the state lock: replay of a stored response for the key, or route, validate and
//!    execute, and store the response under the key if [storable](crate::idempotency),
//! 8. log; for an executed partner refund, emit its webhook event (never for a replay); then
//!    hold or drop the answer if a commit-then-* fault applies.
//!
//! Errors of steps 2-6 have the body of the API called (Order Management's or the partner
//! one). None of them is stored under the key, so neither a 401, a 429, a 413 nor a fault is
//! ever replayed. Route parsing and body validation happen before taking the lock; only the
//! look-up, the operation and the store run under it. A valid `Partner-Correlation-Id` is
//! echoed on every partner answer except a fault's raw body.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HOST, RETRY_AFTER, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode};
use hyper::body::Incoming;
use time::OffsetDateTime;

use crate::faults::FaultKind;
use crate::idempotency::{self, KeyBusy, MAX_KEY_LEN};
use crate::partner;
use crate::request_log::LoggedRequest;
use crate::response::{ApiError, PartnerError, SimResponse, default_error_code};
use crate::schema;
use crate::server::{BodyError, read_body};
use crate::simulator::Shared;
use crate::state::{Command, Store};
use crate::webhooks::RefundEvent;

/// Largest request body accepted (Klarna: 1 MB).
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Prefix of every Order Management order path.
pub(crate) const ORDERS_PREFIX: &str = "/ordermanagement/v1/orders/";

const IDEMPOTENCY_KEY: &str = "klarna-idempotency-key";

/// What the connection should do with a call.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Send this answer.
    Respond(SimResponse),
    /// Close the connection without answering.
    Drop,
}

/// Which Klarna API a call is for: it decides the credential and the error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    OrderManagement,
    Partner,
}

impl Api {
    fn of(path: &str) -> Self {
        if partner::is_partner_path(path) {
            Self::Partner
        } else {
            Self::OrderManagement
        }
    }

    fn authorized(self, shared: &Shared, headers: &HeaderMap) -> bool {
        match self {
            Self::OrderManagement => {
                shared.auth.check(headers) || shared.api_key_auth.check(headers)
            }
            Self::Partner => shared.partner_auth.check(headers),
        }
    }

    fn unauthorized(self) -> SimResponse {
        let response: SimResponse = match self {
            Self::OrderManagement => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "Invalid or missing credentials.",
            )
            .into(),
            Self::Partner => PartnerError::unauthorized().into(),
        };
        response.with_header(WWW_AUTHENTICATE, "Basic realm=\"Klarna\"")
    }

    fn rate_limited(self) -> SimResponse {
        match self {
            Self::OrderManagement => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_REQUESTS",
                "Too many requests. Rate limit exceeded.",
            )
            .with_retry_after(Some(1))
            .into(),
            Self::Partner => PartnerError::rate_limited().into(),
        }
    }

    fn too_large(self) -> SimResponse {
        match self {
            Self::OrderManagement => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "REQUEST_TOO_LARGE",
                format!("Request body exceeds the maximum size of {MAX_BODY_BYTES} bytes."),
            )
            .into(),
            Self::Partner => PartnerError::too_large(MAX_BODY_BYTES).into(),
        }
    }

    /// 409 for a request whose key is in use by one still being executed.
    fn key_in_use(self) -> SimResponse {
        let message = "A request with this Klarna-Idempotency-Key is still being processed.";
        match self {
            Self::OrderManagement => {
                ApiError::new(StatusCode::CONFLICT, "CONFLICT", message).into()
            }
            Self::Partner => PartnerError::new(
                StatusCode::CONFLICT,
                "RESOURCE_ERROR",
                "RESOURCE_CONFLICT",
                message,
            )
            .into(),
        }
    }

    /// The default body of an injected status.
    fn injected(self, status: StatusCode) -> SimResponse {
        match self {
            Self::OrderManagement => ApiError::new(
                status,
                default_error_code(status),
                format!("Injected fault: HTTP {}", status.as_u16()),
            )
            .into(),
            Self::Partner => PartnerError::injected(status).into(),
        }
    }
}

/// The result of steps 6 and 7.
#[derive(Debug)]
pub(crate) struct Executed {
    pub(crate) response: SimResponse,
    /// The answer was replayed from the idempotency memory.
    pub(crate) replayed: bool,
    /// A partner refund was executed (not replayed): its webhook event.
    pub(crate) event: Option<RefundEvent>,
}

impl Executed {
    /// An answer given before anything was looked up or executed.
    pub(crate) fn answer(response: SimResponse) -> Self {
        Self {
            response,
            replayed: false,
            event: None,
        }
    }
}

/// Step 7: under the state lock, replays the response stored for `scoped_key`, or runs the
/// operation and stores its response under the key if storable. `scoped_key` is the
/// idempotency key already scoped by credential; `None` runs the operation unkeyed.
pub(crate) fn run_once(
    shared: &Shared,
    scoped_key: Option<String>,
    run: impl FnOnce(&mut Store, OffsetDateTime) -> (SimResponse, Option<RefundEvent>),
) -> Executed {
    let mut store = shared.store();
    // Read under the lock so that idempotency entries are stored in time order.
    let now = shared.clock.now();
    let Some(scoped) = scoped_key else {
        let (response, event) = run(&mut store, now);
        return Executed {
            response,
            replayed: false,
            event,
        };
    };
    if let Some(stored) = store.idempotency.get(&scoped, now) {
        return Executed {
            response: stored.clone(),
            replayed: true,
            event: None,
        };
    }
    let (response, event) = run(&mut store, now);
    if idempotency::is_storable(response.status) {
        store.idempotency.insert(&scoped, response.clone(), now);
    }
    Executed {
        response,
        replayed: false,
        event,
    }
}

/// Handles one Klarna call (of either API).
pub(crate) async fn handle(shared: &Arc<Shared>, parts: Parts, body: Incoming) -> Outcome {
    let api = Api::of(parts.uri.path());
    let body = match read_body(body, MAX_BODY_BYTES).await {
        Ok(body) => Some(body),
        Err(BodyError::TooLarge) => None,
        // The client went away while sending: nobody to answer.
        Err(BodyError::Io) => return Outcome::Drop,
    };
    let mut step = Step::default();
    // Held until the request is executed: dropped on every way out of the block below.
    let mut in_use = None;
    let executed = 'answer: {
        if !api.authorized(shared, &parts.headers) {
            break 'answer Executed::answer(api.unauthorized());
        }
        if let Some(limiter) = &shared.rate_limiter
            && !limiter.try_acquire()
        {
            break 'answer Executed::answer(api.rate_limited());
        }
        let Some(body) = &body else {
            break 'answer Executed::answer(api.too_large());
        };
        if let Some(key) = key_in_use_scope(&parts) {
            match shared.keys_in_use.enter(key) {
                Ok(guard) => in_use = guard,
                Err(KeyBusy) => break 'answer Executed::answer(api.key_in_use()),
            }
        }
        if let Some(kind) = shared.faults.take(parts.method.as_str(), parts.uri.path()) {
            step.fault = Some(kind.name());
            match kind {
                FaultKind::Status {
                    status,
                    body,
                    retry_after_secs,
                } => {
                    step.raw_fault_body = body.is_some();
                    break 'answer Executed::answer(fault_response(
                        api,
                        status,
                        body,
                        retry_after_secs,
                    ));
                }
                FaultKind::Latency { millis } => {
                    tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
                }
                FaultKind::HoldThenCommit { millis } => {
                    // On a task of its own, so that a client giving up does not stop it: the
                    // request is executed, logged and remembered whether anyone waits or not.
                    let (shared, body, in_use) = (Arc::clone(shared), body.clone(), in_use.take());
                    let task = tokio::spawn(async move {
                        tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
                        let executed = execute_api(api, &shared, &parts, &body);
                        drop(in_use);
                        finish(&shared, api, &parts, Some(&body), executed, step)
                    });
                    return match task.await {
                        Ok(response) => Outcome::Respond(response),
                        Err(_) => Outcome::Drop,
                    };
                }
                FaultKind::Reset => {
                    if shared.log.enabled() {
                        shared.log.push(log_entry(
                            shared,
                            &parts,
                            Some(body),
                            None,
                            false,
                            step.fault,
                        ));
                    }
                    return Outcome::Drop;
                }
                hold_or_drop => step.after_commit = Some(hold_or_drop),
            }
        }
        execute_api(api, shared, &parts, body)
    };
    // Executed (and remembered under its key): a duplicate from now on gets the replay, even
    // while a commit-then-hold keeps this answer back.
    drop(in_use);
    let after_commit = step.after_commit.clone();
    let response = finish(shared, api, &parts, body.as_ref(), executed, step);
    match after_commit {
        Some(FaultKind::CommitThenDrop) => Outcome::Drop,
        Some(FaultKind::CommitThenDropForgetting) => {
            forget_key(shared, api, &parts);
            Outcome::Drop
        }
        Some(FaultKind::CommitThenHold { millis }) => {
            tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
            Outcome::Respond(response)
        }
        _ => Outcome::Respond(response),
    }
}

/// What the fault step decided about a call.
#[derive(Debug, Default)]
struct Step {
    /// The name of the fault injected, if any.
    fault: Option<&'static str>,
    /// A status fault with a raw body: sent as is.
    raw_fault_body: bool,
    /// A commit-then-hold or commit-then-drop (forgetting or not) to apply after the answer is
    /// recorded.
    after_commit: Option<FaultKind>,
}

/// Steps 6 and 7 for the API called.
fn execute_api(api: Api, shared: &Shared, parts: &Parts, body: &Bytes) -> Executed {
    match api {
        Api::OrderManagement => execute(shared, parts, body),
        Api::Partner => partner::execute(shared, parts, body),
    }
}

/// Step 8: the partner correlation id echoed, the call logged, an executed partner refund's
/// webhook event emitted; returns the answer to send.
fn finish(
    shared: &Shared,
    api: Api,
    parts: &Parts,
    body: Option<&Bytes>,
    executed: Executed,
    step: Step,
) -> SimResponse {
    let mut response = executed.response;
    if api == Api::Partner
        && !step.raw_fault_body
        && let Some(correlation_id) = partner::echoed_correlation_id(&parts.headers)
    {
        response = response.with_header(partner::CORRELATION_ID, correlation_id);
    }
    if shared.log.enabled() {
        shared.log.push(log_entry(
            shared,
            parts,
            body,
            Some(&response),
            executed.replayed,
            step.fault,
        ));
    }
    if let Some(event) = executed.event {
        shared.webhooks.emit_refunded(&event);
    }
    response
}

fn fault_response(
    api: Api,
    status: u16,
    body: Option<String>,
    retry_after_secs: Option<u64>,
) -> SimResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match body {
        // What Klarna's DDoS protection sends: a bare status, no error object.
        Some(body) if body.is_empty() => SimResponse::empty(status),
        Some(body) if serde_json::from_str::<serde::de::IgnoredAny>(&body).is_ok() => {
            SimResponse::json_bytes(status, body.into_bytes())
        }
        Some(body) => SimResponse {
            status,
            headers: vec![(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            body: Bytes::from(body),
        },
        None => api.injected(status),
    };
    if let Some(secs) = retry_after_secs {
        response.headers.retain(|(name, _)| name != RETRY_AFTER);
        response = response.with_header(RETRY_AFTER, &secs.to_string());
    }
    response
}

/// What marks a request's key in use: its credential and its `Klarna-Idempotency-Key`, for a
/// POST or PATCH that carries one (both APIs scope keys by credential).
fn key_in_use_scope(parts: &Parts) -> Option<String> {
    if !matches!(parts.method, Method::POST | Method::PATCH) {
        return None;
    }
    let key = parts.headers.get(IDEMPOTENCY_KEY)?.as_bytes();
    let credential = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    Some(format!(
        "{}\n{}",
        String::from_utf8_lossy(credential),
        String::from_utf8_lossy(key)
    ))
}

/// The idempotency key of a POST/PATCH: `Ok(None)` without one, 400 if malformed.
fn idempotency_key<'a>(
    method: &Method,
    headers: &'a HeaderMap,
) -> Result<Option<&'a str>, ApiError> {
    if method != Method::POST && method != Method::PATCH {
        return Ok(None);
    }
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= MAX_KEY_LEN => Ok(Some(key)),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "BAD_VALUE",
            format!("Klarna-Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters."),
        )),
    }
}

/// The idempotency memory's key for an Order Management request keyed `key`: scoped per API
/// username ('\n' cannot occur in a header value).
fn memory_key(shared: &Shared, key: &str) -> String {
    format!("{}\n{key}", shared.config.username)
}

/// Forgets the idempotency key of a request just executed (commit-then-drop-forgetting).
fn forget_key(shared: &Shared, api: Api, parts: &Parts) {
    let Some(key) = parts
        .headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    let scoped = match api {
        Api::OrderManagement => memory_key(shared, key),
        Api::Partner => partner::memory_key(shared, key),
    };
    shared.store().idempotency.forget(&scoped);
}

/// Steps 6 and 7 for Order Management.
fn execute(shared: &Shared, parts: &Parts, body: &Bytes) -> Executed {
    let key = match idempotency_key(&parts.method, &parts.headers) {
        Ok(key) => key,
        Err(error) => return Executed::answer(error.into()),
    };
    let command = route(&parts.method, parts.uri.path(), body);
    let host = host(parts);
    let scoped = key.map(|key| memory_key(shared, key));
    run_once(shared, scoped, |store, now| {
        (store.execute(command, now, host), None)
    })
}

/// The host the client addressed (`:authority` in HTTP/2, `Host` in HTTP/1.1).
fn host(parts: &Parts) -> Option<&str> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(HOST).and_then(|h| h.to_str().ok()))
}

fn not_found(path: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        format!("No resource at {path}"),
    )
}

fn method_not_allowed(method: &Method, path: &str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        format!("Method {method} is not allowed on {path}"),
    )
}

/// Parses the path (and, for writes, the body) into a command.
pub(crate) fn route(method: &Method, path: &str, body: &[u8]) -> Result<Command, ApiError> {
    let Some(rest) = path.strip_prefix(ORDERS_PREFIX) else {
        return Err(not_found(path));
    };
    let mut segments = rest.split('/');
    let raw_order_id = segments.next().unwrap_or_default();
    let Ok(order_id) = uuid::Uuid::try_parse(raw_order_id) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_ORDER_ID",
            "Order ID must be a valid UUID.",
        ));
    };
    let rest: [Option<&str>; 4] = [
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ];
    let wrong_method = || Err(method_not_allowed(method, path));
    match rest {
        [None, ..] => match *method {
            Method::GET => Ok(Command::GetOrder { order_id }),
            _ => wrong_method(),
        },
        [Some("captures"), None, ..] => match *method {
            Method::POST => Ok(Command::CreateCapture {
                order_id,
                request: schema::parse_capture(body)?,
            }),
            _ => wrong_method(),
        },
        [Some("captures"), Some(capture_id), None, _] if !capture_id.is_empty() => match *method {
            Method::GET => Ok(Command::GetCapture {
                order_id,
                capture_id: capture_id.to_owned(),
            }),
            _ => wrong_method(),
        },
        [
            Some("captures"),
            Some(capture_id),
            Some("extend-due-date-options"),
            None,
        ] if !capture_id.is_empty() => match *method {
            Method::GET => Ok(Command::ExtendDueDateOptions {
                order_id,
                capture_id: capture_id.to_owned(),
            }),
            _ => wrong_method(),
        },
        [
            Some("captures"),
            Some(capture_id),
            Some("extend-due-date"),
            None,
        ] if !capture_id.is_empty() => match *method {
            Method::PATCH => Ok(Command::ExtendDueDate {
                order_id,
                capture_id: capture_id.to_owned(),
                number_of_days: schema::parse_extend(body)?,
            }),
            _ => wrong_method(),
        },
        [Some("refunds"), None, ..] => match *method {
            Method::POST => Ok(Command::Refund {
                order_id,
                request: schema::parse_refund(body)?,
            }),
            _ => wrong_method(),
        },
        [Some("refunds"), Some(refund_id), None, _] if !refund_id.is_empty() => match *method {
            Method::GET => Ok(Command::GetRefund {
                order_id,
                refund_id: refund_id.to_owned(),
            }),
            _ => wrong_method(),
        },
        // Klarna takes no body here; whatever is sent is ignored.
        [Some("release-remaining-authorization"), None, ..] => match *method {
            Method::POST => Ok(Command::ReleaseRemainingAuthorization { order_id }),
            _ => wrong_method(),
        },
        _ => Err(not_found(path)),
    }
}

/// The log entry of a call; `response` is `None` when nothing was answered (a reset), which
/// is logged with status 0 and no response headers or body.
fn log_entry(
    shared: &Shared,
    parts: &Parts,
    body: Option<&Bytes>,
    response: Option<&SimResponse>,
    replayed: bool,
    fault: Option<&'static str>,
) -> LoggedRequest {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    LoggedRequest {
        method: parts.method.as_str().to_owned(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), text(value.as_bytes())))
            .collect(),
        body: body.map(|b| text(b)).unwrap_or_default(),
        status: response.map_or(0, |r| r.status.as_u16()),
        response_headers: response
            .map(|r| {
                r.headers
                    .iter()
                    .map(|(name, value)| (name.as_str().to_owned(), text(value.as_bytes())))
                    .collect()
            })
            .unwrap_or_default(),
        response_body: response.map(|r| text(&r.body)).unwrap_or_default(),
        at: shared.clock.now(),
        replayed,
        fault: fault.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(result: Result<Command, ApiError>) -> &'static str {
        result.unwrap_err().code
    }

    const ORDER: &str = "/ordermanagement/v1/orders/4f3c2a71-8d5e-4b6a-9c1f-2e7d8a9b0c11";

    #[test]
    fn routes() {
        assert!(matches!(
            route(&Method::GET, ORDER, b""),
            Ok(Command::GetOrder { .. })
        ));
        assert!(matches!(
            route(
                &Method::POST,
                &format!("{ORDER}/refunds"),
                br#"{"refunded_amount": 1}"#
            ),
            Ok(Command::Refund { .. })
        ));
        assert!(matches!(
            route(
                &Method::GET,
                &format!("{ORDER}/captures/c1/extend-due-date-options"),
                b""
            ),
            Ok(Command::ExtendDueDateOptions { .. })
        ));
        assert!(matches!(
            route(
                &Method::POST,
                &format!("{ORDER}/release-remaining-authorization"),
                b"junk"
            ),
            Ok(Command::ReleaseRemainingAuthorization { .. })
        ));
        assert_eq!(
            code(route(&Method::GET, "/ordermanagement/v1/orders/abc", b"")),
            "INVALID_ORDER_ID"
        );
        assert_eq!(
            code(route(&Method::DELETE, ORDER, b"")),
            "METHOD_NOT_ALLOWED"
        );
        assert_eq!(
            code(route(&Method::GET, &format!("{ORDER}/nope"), b"")),
            "NOT_FOUND"
        );
        assert_eq!(
            code(route(&Method::POST, &format!("{ORDER}/refunds"), b"{")),
            "UNPROCESSABLE_ENTITY"
        );
    }

    #[test]
    fn idempotency_key_rules() {
        let mut headers = HeaderMap::new();
        assert_eq!(idempotency_key(&Method::POST, &headers), Ok(None));
        headers.insert(IDEMPOTENCY_KEY, "k".parse().unwrap());
        assert_eq!(idempotency_key(&Method::POST, &headers), Ok(Some("k")));
        assert_eq!(idempotency_key(&Method::GET, &headers), Ok(None));
        headers.insert(IDEMPOTENCY_KEY, "".parse().unwrap());
        assert!(idempotency_key(&Method::PATCH, &headers).is_err());
        headers.insert(IDEMPOTENCY_KEY, "x".repeat(256).parse().unwrap());
        assert!(idempotency_key(&Method::POST, &headers).is_err());
        headers.insert(IDEMPOTENCY_KEY, "x".repeat(255).parse().unwrap());
        assert!(idempotency_key(&Method::POST, &headers).is_ok());
    }
}
