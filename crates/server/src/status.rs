//! The only place a gateway condition becomes a `tonic::Status`: [`to_status`] maps every
//! [`GatewayError`] to a gRPC code with google.rpc details (the table is in
//! `docs/architecture.md#errors`), and [`stored`] turns a stored answer back into the status it
//! was. Messages and details carry Klarna's error code, messages and correlation id, and never
//! a credential. A test fails if another module of the server builds a status itself, and the
//! tests of `readme` fail if the README's table of errors disagrees with what a caller gets
//! for each answer of the domain's classification (`MUTATION_ROWS`).

use std::collections::HashMap;
use std::time::Duration;

use refund_gateway_domain::{
    GatewayError, KlarnaApiKind, KlarnaError, KlarnaErrorResponse, ResourceRef, StoredResponse,
};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every error this gateway returns.
pub const ERROR_DOMAIN: &str = "refundgateway";

/// The most field violations an INVALID_ARGUMENT answer lists in its BadRequest details.
const MAX_VIOLATIONS_SENT: usize = 25;
/// The most field violations its message names.
const MAX_VIOLATIONS_IN_MESSAGE: usize = 5;

/// How long a caller should wait before retrying after a transient failure, when Klarna
/// did not say.
const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);

fn error_info(details: &mut ErrorDetails, reason: &str, metadata: HashMap<String, String>) {
    details.set_error_info(reason, ERROR_DOMAIN, metadata);
}

fn klarna_metadata(r: &KlarnaErrorResponse) -> HashMap<String, String> {
    let mut m = HashMap::new();
    m.insert("klarna_status".to_owned(), r.status.to_string());
    if let Some(c) = &r.correlation_id {
        m.insert("correlation_id".to_owned(), c.clone());
    }
    if let Some(code) = &r.error_code {
        m.insert("klarna_error_code".to_owned(), code.clone());
    }
    if !r.messages.is_empty() {
        m.insert("klarna_messages".to_owned(), r.messages.join("; "));
    }
    m
}

fn klarna_message(r: &KlarnaErrorResponse) -> String {
    let mut s = format!("Klarna answered {}", r.status);
    if let Some(code) = &r.error_code {
        s.push_str(&format!(" {code}"));
    }
    if !r.messages.is_empty() {
        s.push_str(&format!(": {}", r.messages.join("; ")));
    }
    if let Some(c) = &r.correlation_id {
        s.push_str(&format!(" (correlation_id {c})"));
    }
    s
}

/// The resource a 404 is about: Klarna's code says which one when it can.
fn not_found_resource(r: &KlarnaErrorResponse, resource: &ResourceRef) -> ResourceRef {
    match r.error_code.as_deref() {
        Some("NO_SUCH_ORDER") => resource.order(),
        _ => resource.clone(),
    }
}

/// Maps `error` to a status.
pub fn to_status(error: &GatewayError) -> Status {
    let mut d = ErrorDetails::new();
    match error {
        GatewayError::InvalidArgument(violations) => {
            // The answer travels in HTTP/2 headers, which clients cap (16 KiB for hyper and
            // tonic; a bigger one tears down the whole connection): a request with hundreds of
            // bad fields gets the first ones and a count of the rest.
            let all = violations.as_slice();
            for v in all.iter().take(MAX_VIOLATIONS_SENT) {
                d.add_bad_request_violation(v.field.clone(), v.description.clone());
            }
            let unlisted = all.len().saturating_sub(MAX_VIOLATIONS_SENT);
            if unlisted > 0 {
                d.add_bad_request_violation(
                    "",
                    format!("{unlisted} more problems are not listed; fix these and resend"),
                );
            }
            let mut message = all
                .iter()
                .take(MAX_VIOLATIONS_IN_MESSAGE)
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect::<Vec<_>>()
                .join("; ");
            if all.len() > MAX_VIOLATIONS_IN_MESSAGE {
                message.push_str(&format!(
                    "; and {} more (see the BadRequest details)",
                    all.len() - MAX_VIOLATIONS_IN_MESSAGE
                ));
            }
            Status::with_error_details(
                Code::InvalidArgument,
                format!("invalid request: {message}"),
                d,
            )
        }
        GatewayError::Precondition(p) => {
            error_info(&mut d, p.reason.as_str(), HashMap::new());
            d.add_precondition_failure_violation(
                p.reason.as_str(),
                p.subject.clone(),
                p.description.clone(),
            );
            Status::with_error_details(Code::FailedPrecondition, p.to_string(), d)
        }
        GatewayError::OutcomePending {
            operation_id,
            error,
        } => {
            let mut m = HashMap::new();
            m.insert("operation_id".to_owned(), operation_id.clone());
            if let Some(c) = error.correlation_id() {
                m.insert("correlation_id".to_owned(), c.to_owned());
            }
            error_info(&mut d, "OUTCOME_PENDING", m);
            d.set_retry_info(Some(DEFAULT_RETRY_DELAY));
            Status::with_error_details(
                Code::Unavailable,
                format!(
                    "the outcome of operation {operation_id} is not known yet ({error}); \
                     retry with the same idempotency key: it cannot execute twice"
                ),
                d,
            )
        }
        GatewayError::Klarna { error, resource } => klarna_status(error, resource, d),
        GatewayError::KeyReused {
            operation_id,
            idempotency_key,
        } => {
            error_info(
                &mut d,
                "IDEMPOTENCY_KEY_REUSED",
                operation_metadata(operation_id),
            );
            d.add_precondition_failure_violation(
                "IDEMPOTENCY_KEY_REUSED",
                format!("idempotency_key/{idempotency_key}"),
                "this idempotency key was used for a different request; use a new key for a new request",
            );
            Status::with_error_details(
                Code::FailedPrecondition,
                "this idempotency key was already used for a different request",
                d,
            )
        }
        GatewayError::KeyInUse {
            operation_id,
            retry_after,
        } => {
            error_info(
                &mut d,
                "IDEMPOTENCY_KEY_IN_USE",
                operation_metadata(operation_id),
            );
            d.set_retry_info(Some(*retry_after));
            Status::with_error_details(
                Code::Aborted,
                "another request with this idempotency key is in progress; retry later with the same key",
                d,
            )
        }
        GatewayError::Unauthenticated(why) => {
            error_info(&mut d, "UNAUTHENTICATED", HashMap::new());
            Status::with_error_details(
                Code::Unauthenticated,
                format!("{why}; send authorization: Bearer <token>"),
                d,
            )
        }
        GatewayError::PermissionDenied {
            reason,
            description,
        } => {
            error_info(&mut d, reason, HashMap::new());
            Status::with_error_details(Code::PermissionDenied, description.clone(), d)
        }
        GatewayError::CallerRateLimited {
            caller,
            retry_after,
        } => {
            d.add_quota_failure_violation(
                format!("callers/{caller}"),
                "the caller's requests per second in the callers file",
            );
            d.set_retry_info(Some(*retry_after));
            error_info(&mut d, "CALLER_RATE_LIMITED", HashMap::new());
            Status::with_error_details(Code::ResourceExhausted, error.to_string(), d)
        }
        GatewayError::Overloaded { .. } => {
            d.set_retry_info(Some(DEFAULT_RETRY_DELAY));
            error_info(&mut d, "OVERLOADED", HashMap::new());
            Status::with_error_details(Code::ResourceExhausted, error.to_string(), d)
        }
        GatewayError::WaitedPastDeadline { .. } => {
            d.set_retry_info(Some(DEFAULT_RETRY_DELAY));
            error_info(&mut d, "WAITED_PAST_DEADLINE", HashMap::new());
            Status::with_error_details(Code::DeadlineExceeded, error.to_string(), d)
        }
        GatewayError::DeadlineTooShort { .. } => {
            error_info(&mut d, "DEADLINE_TOO_SHORT", HashMap::new());
            Status::with_error_details(Code::DeadlineExceeded, error.to_string(), d)
        }
        GatewayError::MessageTooLarge { .. } => {
            error_info(&mut d, "MESSAGE_TOO_LARGE", HashMap::new());
            Status::with_error_details(Code::ResourceExhausted, error.to_string(), d)
        }
        GatewayError::ReferenceNotFound {
            field, reference, ..
        } => {
            error_info(&mut d, "REFERENCE_NOT_FOUND", HashMap::new());
            d.set_resource_info(
                *field,
                reference.clone(),
                "refund-gateway",
                "no order is linked to this reference: link it (LinkReceipt), or read the order once by its id",
            );
            Status::with_error_details(Code::NotFound, error.to_string(), d)
        }
        GatewayError::OperationNotFound { operation_id } => {
            error_info(&mut d, "OPERATION_NOT_FOUND", HashMap::new());
            d.set_resource_info(
                "refundgateway.operation",
                operation_id.clone(),
                "refund-gateway",
                "no such operation, or one another caller made",
            );
            Status::with_error_details(Code::NotFound, error.to_string(), d)
        }
        GatewayError::StoreUnavailable(_) => {
            // The cause is logged where it happened; the caller learns only what to do.
            error_info(&mut d, "STORE_UNAVAILABLE", HashMap::new());
            d.set_retry_info(Some(DEFAULT_RETRY_DELAY));
            Status::with_error_details(
                Code::Unavailable,
                "the gateway cannot reach its operation store; retry with the same idempotency key",
                d,
            )
        }
        GatewayError::RequiresReview {
            operation_id,
            detail,
        } => {
            error_info(&mut d, "REQUIRES_REVIEW", operation_metadata(operation_id));
            Status::with_error_details(
                Code::Internal,
                format!(
                    "the outcome of operation {operation_id} could not be determined and needs review: {detail}"
                ),
                d,
            )
        }
        GatewayError::Internal(what) => {
            error_info(&mut d, "INTERNAL", HashMap::new());
            d.set_retry_info(Some(DEFAULT_RETRY_DELAY));
            Status::with_error_details(
                Code::Internal,
                format!("the gateway failed: {what}; retry with the same idempotency key"),
                d,
            )
        }
    }
}

fn operation_metadata(operation_id: &str) -> HashMap<String, String> {
    HashMap::from([("operation_id".to_owned(), operation_id.to_owned())])
}

/// Metadata key marking a replayed answer.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// The stored form of an error status, replayed to every retry.
pub fn to_stored(status: &Status) -> StoredResponse {
    StoredResponse {
        code: status.code() as i32,
        message: status.message().to_owned(),
        payload: status.details().to_vec(),
    }
}

/// The status a stored error answer was, marked as a replay when it is one. A stored answer
/// whose details were purged (see `docs/architecture.md#retention`) keeps its code and message
/// and says so in an ErrorInfo.
pub fn stored(response: StoredResponse, replayed: bool) -> Status {
    let code = Code::from_i32(response.code);
    let mut status = if response.payload.is_empty() {
        let mut d = ErrorDetails::new();
        error_info(
            &mut d,
            "REPLAYED_AFTER_RETENTION",
            HashMap::from([(
                "note".to_owned(),
                "the original details of this answer are past retention".to_owned(),
            )]),
        );
        Status::with_error_details(code, response.message, d)
    } else {
        Status::with_details(code, response.message, response.payload.into())
    };
    if replayed {
        mark_replayed(status.metadata_mut());
    }
    status
}

/// True when `headers` carry tonic's refusal of a request message above its decoding limit
/// (OUT_OF_RANGE), which the gateway answers as RESOURCE_EXHAUSTED `MESSAGE_TOO_LARGE`.
pub fn is_message_too_large(headers: &http::HeaderMap) -> bool {
    Status::from_header_map(headers).is_some_and(|s| {
        s.code() == Code::OutOfRange && s.message().contains("message length too large")
    })
}

/// The field violations of a request tonic could not decode, read from `headers`: tonic
/// answers INTERNAL "failed to decode Protobuf message: …", and the gateway INVALID_ARGUMENT,
/// since the bytes the caller sent are not a valid message. The field is the path prost names,
/// innermost first (`OrderLine.name: RefundOrderRequest.order_lines: invalid string value…`
/// is `order_lines.name`), or `request` when it names none.
pub fn malformed_request(headers: &http::HeaderMap) -> Option<refund_gateway_domain::Violations> {
    let status = Status::from_header_map(headers)?;
    if status.code() != Code::Internal {
        return None;
    }
    let detail = status
        .message()
        .strip_prefix("failed to decode Protobuf message: ")?;
    let mut fields = Vec::new();
    let mut rest = detail;
    // Each step of prost's path is `Message.field: `; the description follows the last.
    while let Some((step, after)) = rest.split_once(": ") {
        let Some((message, field)) = step.split_once('.') else {
            break;
        };
        let ident =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident(message) || !ident(field) {
            break;
        }
        fields.push(field);
        rest = after;
    }
    fields.reverse();
    let field = if fields.is_empty() {
        "request".to_owned()
    } else {
        fields.join(".")
    };
    Some(refund_gateway_domain::Violations::single(
        field,
        format!("not a valid protobuf message: {rest}"),
    ))
}

/// Marks an answer as a replay of a stored one.
pub fn mark_replayed(metadata: &mut tonic::metadata::MetadataMap) {
    metadata.insert(REPLAYED_HEADER, MetadataValue::from_static("true"));
}

fn klarna_status(error: &KlarnaError, resource: &ResourceRef, mut d: ErrorDetails) -> Status {
    let r = match error {
        KlarnaError::Answered(r) => r,
        KlarnaError::Throttled(retry_after) => {
            d.add_quota_failure_violation(
                "klarna_account_rate_limit",
                "the gateway's limit of requests to Klarna for this account (Klarna's quota)",
            );
            d.set_retry_info(Some(*retry_after));
            error_info(&mut d, "KLARNA_QUOTA_EXHAUSTED", HashMap::new());
            return Status::with_error_details(Code::ResourceExhausted, error.to_string(), d);
        }
        KlarnaError::NotSent(_) | KlarnaError::NoAnswer(_) | KlarnaError::BadResponse(_) => {
            let reason = match error {
                KlarnaError::NotSent(_) => "KLARNA_UNREACHABLE",
                KlarnaError::BadResponse(_) => "KLARNA_BAD_RESPONSE",
                _ => "KLARNA_NO_ANSWER",
            };
            error_info(&mut d, reason, HashMap::new());
            d.set_retry_info(Some(DEFAULT_RETRY_DELAY));
            return Status::with_error_details(Code::Unavailable, error.to_string(), d);
        }
    };
    let metadata = klarna_metadata(r);
    let message = klarna_message(r);
    let code_or = |fallback: &str| r.error_code.clone().unwrap_or_else(|| fallback.to_owned());
    match r.status {
        400 | 413 | 422 => {
            for field in r.field_errors.iter().take(MAX_VIOLATIONS_SENT) {
                d.add_bad_request_violation(field.parameter.clone(), field.message.clone());
            }
            error_info(&mut d, &code_or("KLARNA_BAD_REQUEST"), metadata);
            Status::with_error_details(Code::InvalidArgument, message, d)
        }
        401 => {
            // An operator problem: the caller can do nothing about our credentials, and the
            // details must not help anyone probe them.
            let mut m = HashMap::new();
            if let Some(c) = &r.correlation_id {
                m.insert("correlation_id".to_owned(), c.clone());
            }
            error_info(&mut d, "KLARNA_AUTH_FAILED", m);
            Status::with_error_details(
                Code::Internal,
                "Klarna rejected the gateway's credentials for this account; operators have to fix the configuration",
                d,
            )
        }
        403 if r.api == KlarnaApiKind::Payments && !r.error_object => {
            // Klarna's DDoS protection, in front of the Payments API: the API never saw the
            // request, so nothing happened and the same key may be sent again.
            d.set_retry_info(Some(r.retry_after.unwrap_or(DEFAULT_RETRY_DELAY)));
            error_info(&mut d, "KLARNA_BLOCKED", metadata);
            Status::with_error_details(
                Code::Unavailable,
                format!(
                    "{message}: Klarna's edge refused the request before its API saw it; \
                     nothing happened, retry with the same idempotency key"
                ),
                d,
            )
        }
        403 => {
            let reason = refund_gateway_klarna::partner_limit_reason(r)
                .map_or_else(|| code_or("KLARNA_FORBIDDEN"), str::to_owned);
            d.add_precondition_failure_violation(
                reason.clone(),
                resource.name(),
                r.messages.join("; "),
            );
            error_info(&mut d, &reason, metadata);
            Status::with_error_details(Code::FailedPrecondition, message, d)
        }
        404 => {
            let missing = not_found_resource(r, resource);
            d.set_resource_info(
                missing.type_name(),
                missing.name(),
                "klarna",
                r.messages.join("; "),
            );
            error_info(&mut d, &code_or("NOT_FOUND"), metadata);
            Status::with_error_details(Code::NotFound, message, d)
        }
        409 => {
            error_info(&mut d, "CONFLICT", metadata);
            Status::with_error_details(Code::FailedPrecondition, message, d)
        }
        429 => {
            d.add_quota_failure_violation(
                "klarna_merchant_rate_limit",
                "Klarna's per-merchant request rate was exceeded",
            );
            d.set_retry_info(Some(r.retry_after.unwrap_or(DEFAULT_RETRY_DELAY)));
            error_info(&mut d, &code_or("TOO_MANY_REQUESTS"), metadata);
            Status::with_error_details(Code::ResourceExhausted, message, d)
        }
        // 408 and 425 are Klarna (or a proxy) not taking the request now; like a 5xx, a
        // later attempt may pass. A mutation never gets here on a 408 or a 5xx: its outcome
        // is unknown and the caller gets OUTCOME_PENDING instead.
        408 | 425 | 500..=599 => {
            d.set_retry_info(Some(r.retry_after.unwrap_or(DEFAULT_RETRY_DELAY)));
            error_info(&mut d, &code_or("KLARNA_UNAVAILABLE"), metadata);
            Status::with_error_details(Code::Unavailable, message, d)
        }
        _ => {
            error_info(&mut d, &code_or("KLARNA_REJECTED"), metadata);
            Status::with_error_details(Code::FailedPrecondition, message, d)
        }
    }
}

/// The canonical name of a gRPC code, as the gRPC spec, grpcurl and OpenTelemetry's
/// `rpc.response.status_code` write it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use refund_gateway_domain::Violations;

    /// The headers of tonic's answer to a request its decoder refused with `message`.
    fn decoder_refusal(code: Code, message: &str) -> http::HeaderMap {
        Status::new(code, message)
            .into_http::<()>()
            .headers()
            .clone()
    }

    #[test]
    fn a_request_tonic_cannot_decode_names_the_field_prost_names() {
        let cases = [
            (
                "failed to decode Protobuf message: RefundOrderRequest.idempotency_key: invalid string value: data is not UTF-8 encoded",
                "idempotency_key",
                "not a valid protobuf message: invalid string value: data is not UTF-8 encoded",
            ),
            (
                "failed to decode Protobuf message: OrderLine.name: RefundOrderRequest.order_lines: buffer underflow",
                "order_lines.name",
                "not a valid protobuf message: buffer underflow",
            ),
            (
                "failed to decode Protobuf message: invalid varint",
                "request",
                "not a valid protobuf message: invalid varint",
            ),
        ];
        for (message, field, description) in cases {
            let violations = malformed_request(&decoder_refusal(Code::Internal, message))
                .unwrap_or_else(|| panic!("not recognised: {message}"));
            assert_eq!(
                violations,
                Violations::single(field, description),
                "{message}"
            );
        }
        // Anything else is left as it is: a real INTERNAL, or the same words under another code.
        assert_eq!(
            malformed_request(&decoder_refusal(Code::Internal, "a task failed")),
            None
        );
        assert_eq!(
            malformed_request(&decoder_refusal(
                Code::InvalidArgument,
                "failed to decode Protobuf message: invalid varint"
            )),
            None
        );
        assert_eq!(malformed_request(&http::HeaderMap::new()), None);
    }

    fn answered(status: u16, code: Option<&str>) -> GatewayError {
        GatewayError::Klarna {
            error: KlarnaError::Answered(Box::new(KlarnaErrorResponse {
                status,
                error_code: code.map(str::to_owned),
                messages: vec!["m".into()],
                correlation_id: Some("corr-1".into()),
                error_object: true,
                ..KlarnaErrorResponse::default()
            })),
            resource: ResourceRef::Refund {
                order_id: "o".into(),
                refund_id: "r".into(),
            },
        }
    }

    #[test]
    fn table_of_errors() {
        let cases = [
            (
                answered(400, Some("INVALID_ORDER_ID")),
                Code::InvalidArgument,
                "INVALID_ORDER_ID",
            ),
            (
                answered(413, Some("REQUEST_TOO_LARGE")),
                Code::InvalidArgument,
                "REQUEST_TOO_LARGE",
            ),
            (
                answered(422, Some("UNPROCESSABLE_ENTITY")),
                Code::InvalidArgument,
                "UNPROCESSABLE_ENTITY",
            ),
            (answered(401, None), Code::Internal, "KLARNA_AUTH_FAILED"),
            (
                answered(403, Some("REFUND_NOT_ALLOWED")),
                Code::FailedPrecondition,
                "REFUND_NOT_ALLOWED",
            ),
            (
                answered(403, None),
                Code::FailedPrecondition,
                "KLARNA_FORBIDDEN",
            ),
            (
                answered(404, Some("NO_SUCH_ORDER")),
                Code::NotFound,
                "NO_SUCH_ORDER",
            ),
            (
                answered(409, Some("CONFLICT")),
                Code::FailedPrecondition,
                "CONFLICT",
            ),
            (
                answered(429, Some("TOO_MANY_REQUESTS")),
                Code::ResourceExhausted,
                "TOO_MANY_REQUESTS",
            ),
            (
                answered(503, Some("TEMPORARILY_UNAVAILABLE")),
                Code::Unavailable,
                "TEMPORARILY_UNAVAILABLE",
            ),
            (answered(503, None), Code::Unavailable, "KLARNA_UNAVAILABLE"),
            (answered(408, None), Code::Unavailable, "KLARNA_UNAVAILABLE"),
            (
                answered(408, Some("REQUEST_TIMEOUT")),
                Code::Unavailable,
                "REQUEST_TIMEOUT",
            ),
            (answered(425, None), Code::Unavailable, "KLARNA_UNAVAILABLE"),
            (
                answered(405, None),
                Code::FailedPrecondition,
                "KLARNA_REJECTED",
            ),
        ];
        for (error, code, reason) in cases {
            let status = to_status(&error);
            assert_eq!(status.code(), code, "{error:?}");
            let details = status.get_error_details();
            let info = details
                .error_info()
                .unwrap_or_else(|| panic!("no ErrorInfo for {error:?}"));
            assert_eq!(info.reason, reason);
            assert_eq!(info.domain, ERROR_DOMAIN);
            assert_eq!(
                info.metadata.get("correlation_id").map(String::as_str),
                Some("corr-1")
            );
        }
    }

    #[test]
    fn not_found_names_the_missing_resource() {
        let status = to_status(&answered(404, Some("NO_SUCH_ORDER")));
        let details = status.get_error_details();
        let info = details
            .resource_info()
            .unwrap_or_else(|| panic!("no ResourceInfo"));
        assert_eq!(info.resource_type, "klarna.order");
        assert_eq!(info.resource_name, "orders/o");
        let status = to_status(&answered(404, Some("NOT_FOUND")));
        let details = status.get_error_details();
        assert_eq!(
            details.resource_info().map(|i| i.resource_type.as_str()),
            Some("klarna.refund")
        );
    }

    #[test]
    fn rate_limits_and_unavailability_say_when_to_retry() {
        for e in [
            answered(429, None),
            answered(503, None),
            answered(408, None),
            answered(425, None),
        ] {
            assert!(to_status(&e).get_error_details().retry_info().is_some());
        }
        assert!(
            to_status(&answered(429, None))
                .get_error_details()
                .quota_failure()
                .is_some()
        );
    }

    #[test]
    fn violations_become_bad_request() {
        let mut v = Violations::new();
        v.push("order_lines[3].total_amount", "wrong");
        v.push("order_id", "bad");
        let status = to_status(&GatewayError::InvalidArgument(v));
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let fields: Vec<_> = details
            .bad_request()
            .map(|b| b.field_violations.iter().map(|f| f.field.clone()).collect())
            .unwrap_or_default();
        assert_eq!(fields, ["order_lines[3].total_amount", "order_id"]);
    }

    #[test]
    fn pending_outcome_is_unavailable_not_failed() {
        let status = to_status(&GatewayError::OutcomePending {
            operation_id: "op".into(),
            error: KlarnaError::NoAnswer("reset".into()),
        });
        assert_eq!(status.code(), Code::Unavailable);
        let details = status.get_error_details();
        assert_eq!(
            details.error_info().map(|i| i.reason.as_str()),
            Some("OUTCOME_PENDING")
        );
        assert!(details.retry_info().is_some());
    }
}

/// The README's "Errors" table, held to the classification of Klarna's answers
/// (`refund_gateway_domain::outcome`) and to [`to_status`]: for every attempt of
/// [`MUTATION_ROWS`](refund_gateway_domain::outcome::MUTATION_ROWS), what a caller of a
/// mutating RPC and of a read gets must be the one row naming it; the sentence on answers that
/// are not stored must name exactly those that prove nothing happened.
#[cfg(test)]
mod readme {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use refund_gateway_domain::outcome::MUTATION_ROWS;
    use refund_gateway_domain::{
        Attempt, GatewayError, KlarnaApiKind, KlarnaError, KlarnaErrorResponse, Precondition,
        PreconditionReason, ResourceRef, StoredResponse, Verdict, Violations, classify_mutation,
    };
    use tonic::{Code, Status};
    use tonic_types::StatusExt;

    use super::{stored, to_status};

    /// A row whose situation starts with this is about the mutating RPCs only.
    const MUTATIONS_ONLY: &str = "a refund, release or extension";
    /// A row whose situation starts with this is about the reads only.
    const READS_ONLY: &str = "a read";

    /// An `error_code` Klarna might send: a row whose reason is Klarna's code must say so.
    const KLARNA_CODE: &str = "SOME_KLARNA_CODE";

    /// Answers the table names besides those of `MUTATION_ROWS`.
    const OTHER_ATTEMPTS: [Attempt; 2] = [Attempt::Answered(405), Attempt::Answered(410)];

    const APIS: [KlarnaApiKind; 2] = [KlarnaApiKind::OrderManagement, KlarnaApiKind::Payments];

    /// One row of the table.
    #[derive(Debug)]
    struct Row {
        situation: String,
        code: String,
        details: String,
    }

    fn errors_section() -> &'static str {
        crate::readme::section("Errors")
    }

    fn rows() -> Vec<Row> {
        let cells = crate::readme::first_table(errors_section());
        let header = &cells[0];
        let column = |name: &str| {
            header
                .iter()
                .position(|h| h == name)
                .unwrap_or_else(|| panic!("README Errors table has no column {name:?}"))
        };
        let (situation, code, details) =
            (column("situation"), column("gRPC code"), column("details"));
        cells[2..]
            .iter()
            .map(|r| Row {
                situation: r[situation].clone(),
                code: r[code].clone(),
                details: r[details].clone(),
            })
            .collect()
    }

    /// How the table names an attempt of `api` in a row's situation.
    fn token(api: KlarnaApiKind, attempt: Attempt) -> String {
        match attempt {
            Attempt::ForbiddenWithoutError => match api {
                KlarnaApiKind::OrderManagement => "403".to_owned(),
                KlarnaApiKind::Payments => "DDoS protection".to_owned(),
            },
            Attempt::Answered(500..=599) => "5xx".to_owned(),
            Attempt::Answered(status) => status.to_string(),
            Attempt::NoAnswer => "no answer".to_owned(),
            Attempt::Unreadable => "unreadable".to_owned(),
            Attempt::NotSent => "not sent".to_owned(),
            Attempt::RefusedByRule => "state rule".to_owned(),
        }
    }

    /// True when `text` contains `token` as a whole word (or words).
    fn names(text: &str, token: &str) -> bool {
        text.match_indices(token).any(|(i, _)| {
            let before = text[..i].chars().next_back();
            let after = text[i + token.len()..].chars().next();
            !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
        })
    }

    /// The one row among `rows` whose situation names `token`.
    fn row_naming<'a>(rows: &[&'a Row], token: &str, what: &str) -> &'a Row {
        let found: Vec<&Row> = rows
            .iter()
            .copied()
            .filter(|r| names(&r.situation, token))
            .collect();
        assert!(
            found.len() == 1,
            "README Errors: exactly one row should name {token:?} for {what}, found {:?}",
            found.iter().map(|r| &r.situation).collect::<Vec<_>>()
        );
        found[0]
    }

    /// The first `quoted` word of a cell.
    fn first_quoted(cell: &str) -> Option<&str> {
        cell.split('`').nth(1)
    }

    /// The google.rpc details `status` carries, by the name the table uses, and whether each
    /// is there.
    fn detail_kinds(status: &Status) -> [(&'static str, bool); 6] {
        let d = status.get_error_details();
        [
            ("ErrorInfo", d.error_info().is_some()),
            ("RetryInfo", d.retry_info().is_some()),
            ("QuotaFailure", d.quota_failure().is_some()),
            ("ResourceInfo", d.resource_info().is_some()),
            ("PreconditionFailure", d.precondition_failure().is_some()),
            ("BadRequest", d.bad_request().is_some()),
        ]
    }

    /// Asserts that `row` documents `status`: the details it carries and its ErrorInfo
    /// reason, and its code unless `code_checked` is false.
    fn assert_documents(row: &Row, status: &Status, what: &str, code_checked: bool) {
        if code_checked {
            assert_eq!(
                first_quoted(&row.code),
                Some(crate::status::code_name(status.code())),
                "README Errors row {:?}: gRPC code of {what}",
                row.situation
            );
        }
        for (kind, present) in detail_kinds(status) {
            assert_eq!(
                row.details.contains(&format!("`{kind}`")),
                present,
                "README Errors row {:?}: {what} {} `{kind}`",
                row.situation,
                if present { "carries" } else { "does not carry" }
            );
        }
        if let Some(info) = status.get_error_details().error_info() {
            assert!(
                row.details.contains(&format!("`{}`", info.reason)),
                "README Errors row {:?}: the ErrorInfo reason of {what} is `{}`",
                row.situation,
                info.reason
            );
        }
    }

    /// Asserts that `row` documents what `error` becomes, with Klarna's `error_code` passed
    /// on where `to_status` passes it on.
    fn assert_documents_klarna(
        row: &Row,
        error: impl Fn(Option<&str>) -> GatewayError,
        what: &str,
    ) {
        assert_documents(row, &to_status(&error(None)), what, true);
        let with_code = to_status(&error(Some(KLARNA_CODE)));
        let passed_on = with_code
            .get_error_details()
            .error_info()
            .is_some_and(|i| i.reason == KLARNA_CODE);
        if passed_on {
            assert!(
                row.details.contains("Klarna's `error_code`"),
                "README Errors row {:?}: the reason of {what} is Klarna's `error_code`",
                row.situation
            );
        }
    }

    fn klarna_error(api: KlarnaApiKind, attempt: Attempt, error_code: Option<&str>) -> KlarnaError {
        let answered = |status, error_object| {
            KlarnaError::Answered(Box::new(KlarnaErrorResponse {
                status,
                error_code: error_code.map(str::to_owned),
                messages: vec!["m".into()],
                correlation_id: Some("corr-1".into()),
                api,
                error_object,
                ..KlarnaErrorResponse::default()
            }))
        };
        match attempt {
            Attempt::Answered(status) => answered(status, true),
            // Klarna's code would make it an error object: this answer has none.
            Attempt::ForbiddenWithoutError => {
                KlarnaError::Answered(Box::new(KlarnaErrorResponse {
                    status: 403,
                    api,
                    ..KlarnaErrorResponse::default()
                }))
            }
            Attempt::NoAnswer => KlarnaError::NoAnswer("timeout".into()),
            Attempt::Unreadable => KlarnaError::BadResponse("no refund id".into()),
            Attempt::NotSent => KlarnaError::NotSent("connection refused".into()),
            Attempt::RefusedByRule => panic!("a state rule's refusal is not Klarna's"),
        }
    }

    fn resource() -> ResourceRef {
        ResourceRef::Refund {
            order_id: "o".into(),
            refund_id: "r".into(),
        }
    }

    /// Every state rule; a new one fails to compile here until it is listed.
    fn all_preconditions() -> [PreconditionReason; 12] {
        let listed = |r: PreconditionReason| match r {
            PreconditionReason::CurrencyMismatch
            | PreconditionReason::ReturnFeeNotAllowed
            | PreconditionReason::ExtensionNotOffered
            | PreconditionReason::TransactionClosed
            | PreconditionReason::AmountNotRefundable
            | PreconditionReason::TransactionRefundLimit
            | PreconditionReason::TransactionOperationLimit
            | PreconditionReason::WrongAccountKind
            | PreconditionReason::ReceiptAlreadyLinked
            | PreconditionReason::OperationNotInReview
            | PreconditionReason::RefundNotAtKlarna
            | PreconditionReason::ResolvedAsFailed => r,
        };
        [
            listed(PreconditionReason::CurrencyMismatch),
            listed(PreconditionReason::ReturnFeeNotAllowed),
            listed(PreconditionReason::ExtensionNotOffered),
            listed(PreconditionReason::TransactionClosed),
            listed(PreconditionReason::AmountNotRefundable),
            listed(PreconditionReason::TransactionRefundLimit),
            listed(PreconditionReason::TransactionOperationLimit),
            listed(PreconditionReason::WrongAccountKind),
            listed(PreconditionReason::ReceiptAlreadyLinked),
            listed(PreconditionReason::OperationNotInReview),
            listed(PreconditionReason::RefundNotAtKlarna),
            listed(PreconditionReason::ResolvedAsFailed),
        ]
    }

    /// The attempts of `MUTATION_ROWS` and the others the table names.
    fn attempts() -> Vec<Attempt> {
        MUTATION_ROWS
            .iter()
            .map(|r| r.attempt)
            .chain(OTHER_ATTEMPTS)
            .collect()
    }

    /// What the caller of a mutating RPC whose only attempt was `attempt` gets, by the
    /// verdict (`protocol/outcome.rs`): a refusal or a proof that nothing happened is the error
    /// itself, an unknown outcome `OUTCOME_PENDING`; none for a success.
    fn mutation_error(
        api: KlarnaApiKind,
        attempt: Attempt,
        error_code: Option<&str>,
    ) -> Option<GatewayError> {
        let error = klarna_error(api, attempt, error_code);
        match classify_mutation(api, &[attempt]) {
            Verdict::Succeeded => None,
            Verdict::Refused | Verdict::NothingHappened => Some(GatewayError::Klarna {
                error,
                resource: resource(),
            }),
            Verdict::Unknown => Some(GatewayError::OutcomePending {
                operation_id: "op".into(),
                error,
            }),
        }
    }

    #[test]
    fn mutations_get_what_the_table_says() {
        let rows = rows();
        let applicable: Vec<&Row> = rows
            .iter()
            .filter(|r| !r.situation.starts_with(READS_ONLY))
            .collect();
        for api in APIS {
            for attempt in attempts() {
                let what = format!("a mutation ({api:?}) whose only attempt was {attempt:?}");
                if attempt == Attempt::RefusedByRule {
                    assert_eq!(classify_mutation(api, &[attempt]), Verdict::Refused);
                    let row = row_naming(&applicable, &token(api, attempt), &what);
                    for reason in all_preconditions() {
                        let status = to_status(&GatewayError::Precondition(Precondition {
                            reason,
                            subject: "orders/o".into(),
                            description: "d".into(),
                        }));
                        assert_documents(row, &status, &what, true);
                    }
                    continue;
                }
                if mutation_error(api, attempt, None).is_none() {
                    continue;
                }
                let row = row_naming(&applicable, &token(api, attempt), &what);
                assert_documents_klarna(
                    row,
                    |code| mutation_error(api, attempt, code).unwrap_or_else(|| unreachable!()),
                    &what,
                );
            }
        }
    }

    #[test]
    fn reads_get_what_the_table_says() {
        let rows = rows();
        let applicable: Vec<&Row> = rows
            .iter()
            .filter(|r| !r.situation.starts_with(MUTATIONS_ONLY))
            .collect();
        for api in APIS {
            for attempt in attempts() {
                if matches!(
                    attempt,
                    Attempt::RefusedByRule | Attempt::Answered(200..=299)
                ) {
                    continue;
                }
                let what = format!("a read ({api:?}) that got {attempt:?}");
                let row = row_naming(&applicable, &token(api, attempt), &what);
                assert_documents_klarna(
                    row,
                    |code| GatewayError::Klarna {
                        error: klarna_error(api, attempt, code),
                        resource: resource(),
                    },
                    &what,
                );
            }
        }
    }

    #[test]
    fn the_gateways_own_errors_are_in_the_table() {
        let rows = rows();
        let mut violations = Violations::new();
        violations.push("order_id", "bad");
        let errors = [
            GatewayError::InvalidArgument(violations),
            GatewayError::KeyReused {
                operation_id: "op".into(),
                idempotency_key: "k".into(),
            },
            GatewayError::KeyInUse {
                operation_id: "op".into(),
                retry_after: Duration::from_secs(1),
            },
            GatewayError::StoreUnavailable("down".into()),
            GatewayError::Unauthenticated("no token".into()),
            GatewayError::CallerRateLimited {
                caller: "till".into(),
                retry_after: Duration::from_millis(200),
            },
            GatewayError::Overloaded { limit: 2048 },
            GatewayError::WaitedPastDeadline {
                waited: Duration::from_millis(750),
            },
            GatewayError::DeadlineTooShort {
                remaining: Duration::from_millis(50),
                minimum: Duration::from_millis(200),
            },
            GatewayError::MessageTooLarge { limit: 4 << 20 },
            GatewayError::PermissionDenied {
                reason: "RPC_NOT_PERMITTED",
                description: "d".into(),
            },
            GatewayError::PermissionDenied {
                reason: "ACCOUNT_NOT_PERMITTED",
                description: "d".into(),
            },
            GatewayError::PermissionDenied {
                reason: "AMOUNT_OVER_CALLER_LIMIT",
                description: "d".into(),
            },
            GatewayError::PermissionDenied {
                reason: "CURRENCY_NOT_PERMITTED",
                description: "d".into(),
            },
            GatewayError::PermissionDenied {
                reason: "DAILY_LIMIT_REACHED",
                description: "d".into(),
            },
            GatewayError::Klarna {
                error: KlarnaError::Throttled(Duration::from_millis(250)),
                resource: resource(),
            },
            GatewayError::RequiresReview {
                operation_id: "op".into(),
                detail: "d".into(),
            },
            GatewayError::Internal("the task failed".into()),
        ];
        for error in errors {
            let status = to_status(&error);
            let key = match status.get_error_details().error_info() {
                Some(info) => info.reason.clone(),
                None => "BadRequest".to_owned(),
            };
            let found: Vec<&Row> = rows
                .iter()
                .filter(|r| r.details.contains(&format!("`{key}`")))
                .collect();
            assert!(
                found.len() == 1,
                "README Errors: exactly one row should document `{key}`, found {found:?}"
            );
            assert_documents(found[0], &status, &format!("{error:?}"), true);
        }

        // A stored refusal whose details are past retention keeps its code.
        let status = stored(
            StoredResponse {
                code: Code::FailedPrecondition as i32,
                message: "m".into(),
                payload: Vec::new(),
            },
            true,
        );
        assert_eq!(status.code(), Code::FailedPrecondition);
        let reason = status
            .get_error_details()
            .error_info()
            .map(|i| i.reason.clone())
            .unwrap_or_default();
        let found: Vec<&Row> = rows
            .iter()
            .filter(|r| r.details.contains(&format!("`{reason}`")))
            .collect();
        assert!(
            found.len() == 1,
            "README Errors: exactly one row should document `{reason}`, found {found:?}"
        );
        assert_eq!(found[0].code, "the stored code");
        assert_documents(found[0], &status, "a replay past retention", false);
    }

    /// "Answers that prove nothing happened (…) are not stored": exactly the attempts whose
    /// verdict as a first attempt is `NothingHappened`, and the README says that after an
    /// attempt that may have reached Klarna they leave the operation pending.
    #[test]
    fn the_answers_not_stored_are_those_that_prove_nothing_happened() {
        const LEAD: &str = "prove nothing happened (";
        let paragraph = errors_section()
            .split("\n\n")
            .map(|p| p.replace('\n', " "))
            .find(|p| p.contains(LEAD))
            .unwrap_or_else(|| panic!("README Errors says nothing of answers that {LEAD}…)"));
        let after = paragraph.split(LEAD).nth(1).unwrap_or_default().to_owned();
        let (listed, rest) = after.split_once(')').unwrap_or((after.as_str(), ""));
        let every: BTreeSet<String> = APIS
            .iter()
            .flat_map(|&api| attempts().into_iter().map(move |a| token(api, a)))
            .collect();
        let named: BTreeSet<&String> = every.iter().filter(|t| names(listed, t)).collect();
        let nothing_happened: Vec<_> = MUTATION_ROWS
            .iter()
            .filter(|r| r.first == Verdict::NothingHappened)
            .collect();
        let expected: BTreeSet<String> = nothing_happened
            .iter()
            .map(|r| token(r.api.unwrap_or(KlarnaApiKind::OrderManagement), r.attempt))
            .collect();
        assert_eq!(
            named,
            expected.iter().collect(),
            "README Errors: the answers that prove nothing happened"
        );
        for r in nothing_happened {
            assert_eq!(
                r.after_possible_delivery,
                Verdict::Unknown,
                "{:?}",
                r.attempt
            );
        }
        assert!(
            rest.contains("may have reached Klarna") && rest.contains("pending"),
            "README Errors should say that after an attempt that may have reached Klarna these \
             answers leave the operation pending: {rest:?}"
        );
    }
}
