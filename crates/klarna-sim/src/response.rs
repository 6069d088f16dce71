//! Responses as the simulator produces, stores (for idempotent replay) and logs them, and the
//! Klarna error body `{"error_code", "error_messages", "correlation_id"}`.

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
}
