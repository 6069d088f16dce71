//! Responses as the simulator produces, stores (for idempotent replay) and logs them, and the
//! two error bodies: Order Management's `{"error_code", "error_messages", "correlation_id"}`
//! ([`ApiError`]) and the partner Payments API's `{"error_id", "error_type", "error_code",
//! "error_message", "doc_url", "errors"}` ([`PartnerError`]).

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use uuid::Uuid;

/// A complete response: status, the headers the simulator sets, and the body.
///
/// Cheap to clone (the body is reference counted), so a stored idempotent response can be
/// replayed byte for byte.
#[derive(Debug, Clone)]
pub(crate) struct SimResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) body: Bytes,
}

const JSON: HeaderValue = HeaderValue::from_static("application/json");

impl SimResponse {
    /// A response without a body (201 of a refund or capture, 204s).
    pub(crate) fn empty(status: StatusCode) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// A JSON response from an already serialized body.
    pub(crate) fn json_bytes(status: StatusCode, body: Vec<u8>) -> Self {
        Self {
            status,
            headers: vec![(CONTENT_TYPE, JSON)],
            body: Bytes::from(body),
        }
    }

    /// A JSON response from a serializable value (a serialization failure becomes a 500).
    pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::json_bytes(status, body),
            Err(e) => ApiError::internal(format!("cannot serialize response: {e}")).into(),
        }
    }

    /// As [`SimResponse::json`], but a serialization failure becomes a partner 500.
    pub(crate) fn partner_json<T: Serialize>(status: StatusCode, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::json_bytes(status, body),
            Err(e) => PartnerError::internal(format!("cannot serialize response: {e}")).into(),
        }
    }

    /// Adds a header; values that are not valid header values are skipped.
    pub(crate) fn with_header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.push((name, value));
        }
        self
    }

    /// The hyper response (consumes the stored form; clone first to keep it).
    pub(crate) fn into_http(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        response
    }
}

/// A Klarna error: status, `error_code` and `error_messages`; the `correlation_id` is
/// generated fresh (UUID v4) when the error is turned into a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) messages: Vec<String>,
    pub(crate) retry_after_secs: Option<u64>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error_code: &'a str,
    error_messages: &'a [String],
    correlation_id: Uuid,
}

impl ApiError {
    /// An error with one message.
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            messages: vec![message.into()],
            retry_after_secs: None,
        }
    }

    /// 422 `UNPROCESSABLE_ENTITY` with every schema violation found.
    pub(crate) fn unprocessable(messages: Vec<String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "UNPROCESSABLE_ENTITY",
            messages,
            retry_after_secs: None,
        }
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_SERVER_ERROR",
            message,
        )
    }

    pub(crate) fn no_such_order(order_id: &Uuid) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NO_SUCH_ORDER",
            format!("Order {order_id} cannot be found"),
        )
    }

    pub(crate) fn no_such_capture(capture_id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NO_SUCH_CAPTURE",
            format!("Capture {capture_id} cannot be found"),
        )
    }

    pub(crate) fn refund_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "REFUND_NOT_ALLOWED", message)
    }

    pub(crate) fn not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "NOT_ALLOWED", message)
    }

    pub(crate) fn capture_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "CAPTURE_NOT_ALLOWED", message)
    }

    pub(crate) fn with_retry_after(mut self, secs: Option<u64>) -> Self {
        self.retry_after_secs = secs;
        self
    }
}

impl From<ApiError> for SimResponse {
    fn from(error: ApiError) -> Self {
        let body = ErrorBody {
            error_code: error.code,
            error_messages: &error.messages,
            correlation_id: Uuid::new_v4(),
        };
        let mut response = SimResponse::json(error.status, &body);
        if let Some(secs) = error.retry_after_secs {
            response = response.with_header(RETRY_AFTER, &secs.to_string());
        }
        response
    }
}

/// Where every partner error's `doc_url` points: Klarna's page on partner API errors.
pub(crate) const PARTNER_DOC_URL: &str = "https://docs.klarna.com/klarna-network-distribution/setup-your-integration/integration-resilience/error-handling";

/// One entry of a partner error's `errors` list: which parameter is wrong and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct FieldError {
    /// `amount`, `line_items[1].total_amount`, or a header name (`Partner-Correlation-Id`).
    pub(crate) parameter: String,
    pub(crate) error_message: String,
}

impl FieldError {
    pub(crate) fn new(parameter: impl Into<String>, error_message: impl Into<String>) -> Self {
        Self {
            parameter: parameter.into(),
            error_message: error_message.into(),
        }
    }
}

/// A partner Payments API error; the `error_id` is generated fresh (UUID v4) when it is turned
/// into a response. `errors` is only sent when not empty (input errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartnerError {
    pub(crate) status: StatusCode,
    pub(crate) error_type: &'static str,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) errors: Vec<FieldError>,
    pub(crate) retry_after_secs: Option<u64>,
}

#[derive(Serialize)]
struct PartnerErrorBody<'a> {
    error_id: Uuid,
    error_type: &'a str,
    error_code: &'a str,
    error_message: &'a str,
    doc_url: &'a str,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    errors: &'a [FieldError],
}

impl PartnerError {
    pub(crate) fn new(
        status: StatusCode,
        error_type: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            error_type,
            code,
            message: message.into(),
            errors: Vec::new(),
            retry_after_secs: None,
        }
    }

    /// 400 `INPUT_ERROR` `VALIDATION_ERROR` listing every bad parameter.
    pub(crate) fn validation(errors: Vec<FieldError>) -> Self {
        let message = match errors.as_slice() {
            [only] => only.error_message.clone(),
            _ => format!(
                "Request validation failed: {} invalid parameters",
                errors.len()
            ),
        };
        Self {
            errors,
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "INPUT_ERROR",
                "VALIDATION_ERROR",
                message,
            )
        }
    }

    /// 400 `VALIDATION_ERROR` for one parameter.
    pub(crate) fn invalid(parameter: impl Into<String>, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError::new(parameter, message)])
    }

    /// 401 `ACCESS_ERROR` `UNAUTHORIZED`.
    pub(crate) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "ACCESS_ERROR",
            "UNAUTHORIZED",
            "The presented credentials failed authentication.",
        )
    }

    /// 403 `ACCESS_ERROR` `OPERATION_FORBIDDEN`: a refusal; nothing was done.
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "ACCESS_ERROR",
            "OPERATION_FORBIDDEN",
            message,
        )
    }

    /// 404 `RESOURCE_ERROR` `RESOURCE_NOT_FOUND`.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "RESOURCE_ERROR",
            "RESOURCE_NOT_FOUND",
            message,
        )
    }

    /// 429 `TECHNICAL_ERROR` `RATE_LIMITED` with `Retry-After: 1`.
    pub(crate) fn rate_limited() -> Self {
        Self {
            retry_after_secs: Some(1),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TECHNICAL_ERROR",
                "RATE_LIMITED",
                "The caller was rate limited due to too many requests.",
            )
        }
    }

    /// 413 `INPUT_ERROR` `REQUEST_TOO_LARGE`.
    pub(crate) fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "INPUT_ERROR",
            "REQUEST_TOO_LARGE",
            format!("Request body exceeds the maximum size of {limit} bytes."),
        )
    }

    /// 500 `TECHNICAL_ERROR` `INTERNAL_ERROR`.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "TECHNICAL_ERROR",
            "INTERNAL_ERROR",
            message,
        )
    }

    /// The error an injected status without a body answers with: the type and code usual for
    /// that status.
    pub(crate) fn injected(status: StatusCode) -> Self {
        let message = format!("Injected fault: HTTP {}", status.as_u16());
        let (error_type, code) = match status.as_u16() {
            400 => ("INPUT_ERROR", "VALIDATION_ERROR"),
            401 => ("ACCESS_ERROR", "UNAUTHORIZED"),
            403 => ("ACCESS_ERROR", "OPERATION_FORBIDDEN"),
            404 => ("RESOURCE_ERROR", "RESOURCE_NOT_FOUND"),
            409 => ("RESOURCE_ERROR", "RESOURCE_CONFLICT"),
            413 => ("INPUT_ERROR", "REQUEST_TOO_LARGE"),
            429 => ("TECHNICAL_ERROR", "RATE_LIMITED"),
            500..=599 => ("TECHNICAL_ERROR", "INTERNAL_ERROR"),
            _ => ("TECHNICAL_ERROR", "INJECTED_FAULT"),
        };
        Self::new(status, error_type, code, message)
    }
}

impl From<PartnerError> for SimResponse {
    fn from(error: PartnerError) -> Self {
        let body = PartnerErrorBody {
            error_id: Uuid::new_v4(),
            error_type: error.error_type,
            error_code: error.code,
            error_message: &error.message,
            doc_url: PARTNER_DOC_URL,
            errors: &error.errors,
        };
        let mut response = match serde_json::to_vec(&body) {
            Ok(bytes) => SimResponse::json_bytes(error.status, bytes),
            // Serializing strings and a UUID cannot fail; answer something sensible anyway.
            Err(_) => SimResponse::empty(StatusCode::INTERNAL_SERVER_ERROR),
        };
        if let Some(secs) = error.retry_after_secs {
            response = response.with_header(RETRY_AFTER, &secs.to_string());
        }
        response
    }
}

/// The `error_code` the simulator uses for an injected status without a body.
pub(crate) fn default_error_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "BAD_VALUE",
        401 => "UNAUTHORIZED",
        403 => "NOT_ALLOWED",
        404 => "NOT_FOUND",
        409 => "CONFLICT",
        413 => "REQUEST_TOO_LARGE",
        422 => "UNPROCESSABLE_ENTITY",
        429 => "TOO_MANY_REQUESTS",
        500 => "INTERNAL_SERVER_ERROR",
        502..=504 => "TEMPORARILY_UNAVAILABLE",
        501 | 505..=599 => "UNEXPECTED_ERROR",
        _ => "INJECTED_FAULT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_klarna_shape_and_fresh_correlation_ids() {
        let a: SimResponse = ApiError::refund_not_allowed("nope").into();
        let b: SimResponse = ApiError::refund_not_allowed("nope").into();
        let a: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&b.body).unwrap();
        assert_eq!(a["error_code"], "REFUND_NOT_ALLOWED");
        assert_eq!(a["error_messages"][0], "nope");
        assert_ne!(a["correlation_id"], b["correlation_id"]);
    }

    #[test]
    fn partner_error_body_has_the_partner_shape() {
        let a: SimResponse = PartnerError::invalid("amount", "bad").into();
        let b: SimResponse = PartnerError::forbidden("no").into();
        let a: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&b.body).unwrap();
        assert_eq!(a["error_type"], "INPUT_ERROR");
        assert_eq!(a["error_code"], "VALIDATION_ERROR");
        assert_eq!(
            a["errors"],
            serde_json::json!([{"parameter": "amount", "error_message": "bad"}])
        );
        assert_eq!(a["doc_url"], PARTNER_DOC_URL);
        assert_eq!(b["error_type"], "ACCESS_ERROR");
        assert_eq!(b["error_message"], "no");
        assert!(b.get("errors").is_none());
        assert_ne!(a["error_id"], b["error_id"]);
        assert_eq!(
            Uuid::try_parse(b["error_id"].as_str().unwrap())
                .unwrap()
                .get_version_num(),
            4
        );
    }
}
