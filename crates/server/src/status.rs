//! The only place a gateway condition becomes a `tonic::Status`: [`to_status`] maps every
//! [`GatewayError`] to a gRPC code with google.rpc details (the table is in
//! `docs/architecture.md#errors`), and [`stored`] turns a stored answer back into the status it
//! was. Messages and details carry Klarna's error code, messages and correlation id, and never
//! a credential. A test fails if another module of the server builds a status itself.

use std::collections::HashMap;
use std::time::Duration;

use refund_gateway_domain::{
    GatewayError, KlarnaError, KlarnaErrorResponse, ResourceRef, StoredResponse,
};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every error this gateway returns.
pub const ERROR_DOMAIN: &str = "refundgateway";

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
            for v in violations {
                d.add_bad_request_violation(v.field.clone(), v.description.clone());
            }
            Status::with_error_details(
                Code::InvalidArgument,
                format!("invalid request: {violations}"),
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

/// Marks an answer as a replay of a stored one.
pub fn mark_replayed(metadata: &mut tonic::metadata::MetadataMap) {
    metadata.insert(REPLAYED_HEADER, MetadataValue::from_static("true"));
}

fn klarna_status(error: &KlarnaError, resource: &ResourceRef, mut d: ErrorDetails) -> Status {
    let r = match error {
        KlarnaError::Answered(r) => r,
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
        403 => {
            let reason = code_or("KLARNA_FORBIDDEN");
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
        500..=599 => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use refund_gateway_domain::Violations;

    fn answered(status: u16, code: Option<&str>) -> GatewayError {
        GatewayError::Klarna {
            error: KlarnaError::Answered(Box::new(KlarnaErrorResponse {
                status,
                error_code: code.map(str::to_owned),
                messages: vec!["m".into()],
                correlation_id: Some("corr-1".into()),
                retry_after: None,
            })),
            resource: ResourceRef::Refund {
                order_id: "o".into(),
                refund_id: "r".into(),
            },
        }
    }

    #[test]
    fn table_of_design_section_5() {
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
        for e in [answered(429, None), answered(503, None)] {
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
