//! [`Transport`]: the call machinery both Klarna clients share. It owns one API's outbound
//! stack (retry, attempt trace, rate limit, attempt timeout, HTTP client) and the account's
//! [`OutboundLimiter`] in it, its authorization header, the
//! headers sent on every request, how its URLs are built (base URL, then a fixed prefix, then
//! the call's segments, each percent-encoded) and which API it is. For each call it applies
//! the deadline, sends the request through the stack, turns a non-2xx answer into
//! [`KlarnaError::Answered`] tagged with the API, logs the attempt of a mutating call for the
//! attempt log, and logs the call once.
//!
//! The clients (`client.rs`, `payments.rs`) only say what to send and how to read the answer.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue,
    USER_AGENT,
};
use http::{Method, StatusCode, Uri};
use refund_gateway_domain::{Attempt, KlarnaApiKind, KlarnaError, OperationId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower::ServiceExt;
use url::Url;

use crate::config::{BaseUrl, KlarnaConfigError, TransportConfig};
use crate::contract::IDEMPOTENCY_KEY_HEADER;
use crate::error::{correlation_id, error_response};
use crate::http::{
    CallLabels, OutboundRequest, OutboundService, Tls, http_service, outbound_stack,
    with_call_labels,
};
use crate::limit::OutboundLimiter;
use crate::retry::{RetryPolicy, current_deadline, with_deadline};

/// The `User-Agent` of every request, following Klarna's SDK convention:
/// `Library/refund-gateway_<version> Language/Rust OS/<os>`, then the configured suffix.
pub fn user_agent(suffix: Option<&str>) -> String {
    let mut agent = format!(
        "Library/refund-gateway_{} Language/Rust OS/{}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS
    );
    if let Some(suffix) = suffix.map(str::trim).filter(|s| !s.is_empty()) {
        agent.push(' ');
        agent.push_str(suffix);
    }
    agent
}

/// Which Klarna API a [`Transport`] talks to, and how.
pub(crate) struct Api {
    /// Tags every error answer, so the domain judges it by that API's rules.
    pub(crate) kind: KlarnaApiKind,
    pub(crate) base_url: BaseUrl,
    /// Path segments between the base URL and each call's own segments, not yet encoded.
    pub(crate) prefix: Vec<String>,
    /// The whole `Authorization` value, marked sensitive.
    pub(crate) authorization: HeaderValue,
    /// Sent on every request, e.g. `Klarna-Partner-Account`.
    pub(crate) headers: HeaderMap,
    /// Answer headers that may carry the correlation id of a call, tried in order.
    pub(crate) correlation_headers: &'static [&'static str],
    pub(crate) tls: Tls,
}

/// One Klarna API's outbound stack and request settings. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Transport {
    inner: Arc<Inner>,
    outbound: OutboundService,
    /// The account's rate limit, also inside `outbound`; kept to report its state.
    limiter: Option<OutboundLimiter>,
}

struct Inner {
    kind: KlarnaApiKind,
    base_url: BaseUrl,
    prefix: Vec<String>,
    authorization: HeaderValue,
    headers: HeaderMap,
    correlation_headers: &'static [&'static str],
    attempt_timeout: Duration,
    connect_timeout: Duration,
    default_deadline: Duration,
    max_attempts: u32,
    user_agent: String,
}

impl fmt::Debug for Transport {
    /// Where it points and how it waits; the authorization header never appears, and other
    /// headers only as http prints them (sensitive values as `Sensitive`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("Transport")
            .field("api", &inner.kind)
            .field("base_url", &inner.base_url.as_str())
            .field("prefix", &inner.prefix)
            .field("headers", &inner.headers)
            .field("attempt_timeout", &inner.attempt_timeout)
            .field("connect_timeout", &inner.connect_timeout)
            .field("default_deadline", &inner.default_deadline)
            .field("max_attempts", &inner.max_attempts)
            .field("user_agent", &inner.user_agent)
            .field("rate_limit", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Checks `config` and builds the connection pool, the retry budget and the rate limiter
    /// (both shared by every call of this transport, i.e. of one account) and the outbound
    /// stack. Nothing connects yet. Fails on settings [`TransportConfig::validate`]
    /// refuses, a `User-Agent` suffix that is not a header value, or TLS settings rustls
    /// refuses (such as a private key that does not belong to the certificate).
    pub(crate) fn new(api: Api, config: &TransportConfig) -> Result<Self, KlarnaConfigError> {
        config.validate()?;
        let policy = RetryPolicy::new(&config.retry)?;
        let limiter = config
            .rate_limit
            .as_ref()
            .map(OutboundLimiter::new)
            .transpose()?;
        let agent = user_agent(config.user_agent_suffix.as_deref());
        let agent_header = HeaderValue::from_str(&agent).map_err(|_| {
            KlarnaConfigError::InvalidUserAgent("must be visible ASCII text without line breaks")
        })?;
        let http = http_service(config.connect_timeout, api.tls)
            // rustls never quotes certificates or keys in its errors.
            .map_err(|e| KlarnaConfigError::HttpClient(crate::error::error_chain(&e)))?;
        let mut headers = api.headers;
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, agent_header);
        Ok(Self {
            inner: Arc::new(Inner {
                kind: api.kind,
                base_url: api.base_url,
                prefix: api.prefix,
                authorization: api.authorization,
                headers,
                correlation_headers: api.correlation_headers,
                attempt_timeout: config.attempt_timeout,
                connect_timeout: config.connect_timeout,
                default_deadline: config.default_deadline,
                max_attempts: config.retry.max_attempts,
                user_agent: agent,
            }),
            outbound: outbound_stack(http, config.attempt_timeout, policy, limiter.clone()),
            limiter,
        })
    }

    /// The account's outbound rate limiter, if it has one.
    pub(crate) fn limiter(&self) -> Option<&OutboundLimiter> {
        self.limiter.as_ref()
    }

    /// Where this transport sends its requests.
    pub(crate) fn base_url(&self) -> &BaseUrl {
        &self.inner.base_url
    }

    /// `{base}/{prefix…}/{segments…}`, every segment percent-encoded: `/`, `?`, `#`, `%` and
    /// spaces inside a segment cannot change the path (`:` stays as it is, as a path segment
    /// allows).
    pub(crate) fn url(&self, segments: &[&str]) -> Result<Url, KlarnaError> {
        let mut url = self.inner.base_url.url().clone();
        url.path_segments_mut()
            // BaseUrl requires a host, so its URL always has path segments.
            .map_err(|()| KlarnaError::NotSent("the base URL cannot take a path".to_owned()))?
            .pop_if_empty()
            .extend(&self.inner.prefix)
            .extend(segments);
        Ok(url)
    }

    /// Sends one Klarna call, with its resends, and reads the final answer: a non-2xx status
    /// becomes [`KlarnaError::Answered`] (tagged with this API); a 2xx goes to `read`. Returns
    /// the value with the call's correlation id, from the first of the API's correlation
    /// headers present. The whole call ends by the deadline of the enclosing
    /// [`with_deadline`], else `default_deadline` from now; a call whose deadline has already
    /// passed is not sent. Logs the call once, at INFO when it succeeded and at WARN when it
    /// did not.
    pub(crate) async fn call<T>(
        &self,
        request: Call<'_>,
        read: impl FnOnce(&Answer) -> Result<T, KlarnaError>,
    ) -> Result<(T, Option<String>), KlarnaError> {
        let started = Instant::now();
        let method = request.method.clone();
        let operation = request.operation;
        let mutating = request.key.is_some();
        let api = api_name(self.inner.kind);
        let mut path = String::new();
        let deadline = current_deadline().or_else(|| {
            // `None` only when the default deadline is beyond what an Instant can hold;
            // attempts and resends are still bounded then.
            tokio::time::Instant::now().checked_add(self.inner.default_deadline)
        });
        let result = async {
            let request = self.request(request)?;
            path = request.uri().path().to_owned();
            // A fresh copy of the stack per call: its retry policy and resend count start
            // from zero.
            let send = with_call_labels(
                CallLabels {
                    operation,
                    correlation_headers: self.inner.correlation_headers,
                },
                self.outbound.clone().oneshot(request),
            );
            let response = match deadline {
                Some(deadline) if deadline <= tokio::time::Instant::now() => {
                    return Err(KlarnaError::NotSent(
                        "the call's deadline passed before the request was sent".to_owned(),
                    ));
                }
                // Scoped around the whole stack: the retry policy and the per-attempt timeout
                // read it there.
                Some(deadline) => with_deadline(deadline, send).await?,
                None => send.await?,
            };
            let answer = Answer::from(response);
            if !answer.status.is_success() {
                let mut response = error_response(
                    answer.status,
                    &answer.headers,
                    &answer.body,
                    self.inner.correlation_headers,
                );
                response.api = self.inner.kind;
                return Err(KlarnaError::Answered(Box::new(response)));
            }
            let correlation_id = correlation_id(&answer.headers, self.inner.correlation_headers);
            let value = read(&answer).map_err(|e| match e {
                KlarnaError::BadResponse(m) => KlarnaError::BadResponse(format!(
                    "{m} (status {}, correlation id {})",
                    answer.status.as_u16(),
                    correlation_id.as_deref().unwrap_or("none")
                )),
                other => other,
            })?;
            Ok((value, answer.status, correlation_id))
        }
        .await;
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if mutating {
            // The retry policy logged the attempts it resent; this is the last one, as read.
            crate::attempts::record(match &result {
                Ok((_, status, _)) => Attempt::Answered(status.as_u16()),
                Err(e) => Attempt::of_error(e),
            });
        }
        match result {
            Ok((value, status, correlation_id)) => {
                // Debug only: a success is recorded by the operation's audit trail, its span
                // and the attempt metrics; a line per call at INFO costs more than the call's
                // own bookkeeping under load. Failures below stay at INFO and WARN.
                tracing::debug!(
                    klarna.api = api,
                    klarna.operation = operation,
                    http.request.method = %method,
                    url.path = %path,
                    http.response.status_code = status.as_u16(),
                    klarna.correlation_id = correlation_id.as_deref(),
                    elapsed_ms,
                    "Klarna call succeeded"
                );
                Ok((value, correlation_id))
            }
            Err(error) => {
                let (status, error_code, error_object) = match &error {
                    KlarnaError::Answered(r) => (
                        Some(r.status),
                        r.error_code.as_deref(),
                        Some(r.error_object),
                    ),
                    _ => (None, None, None),
                };
                tracing::warn!(
                    klarna.api = api,
                    klarna.operation = operation,
                    http.request.method = %method,
                    url.path = %path,
                    http.response.status_code = status,
                    klarna.error_code = error_code,
                    klarna.error_object = error_object,
                    klarna.correlation_id = error.correlation_id(),
                    outcome_unknown = error.outcome_unknown(),
                    elapsed_ms,
                    error = %error,
                    "Klarna call failed"
                );
                Err(error)
            }
        }
    }

    fn request(&self, call: Call<'_>) -> Result<OutboundRequest, KlarnaError> {
        let url = self.url(&call.segments)?;
        let uri = Uri::try_from(url.as_str()).map_err(|_| {
            // A URL built from a valid base URL and percent-encoded segments is a valid URI.
            KlarnaError::NotSent("the request URL is not a valid URI".to_owned())
        })?;
        let (body, json) = match call.body {
            Some(body) => (Some(Bytes::from(body)), true),
            // A POST without a body still says so (Content-Length: 0): some proxies answer
            // 411 to a bodiless POST without a length.
            None if call.key.is_some() => (Some(Bytes::new()), false),
            None => (None, false),
        };
        let length = body.as_ref().map(Bytes::len);
        let mut request = OutboundRequest::new(body.unwrap_or_default());
        *request.method_mut() = call.method;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(AUTHORIZATION, self.inner.authorization.clone());
        for (name, value) in &self.inner.headers {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in call.headers {
            headers.insert(name, value);
        }
        if let Some(key) = call.key {
            let key = HeaderValue::from_str(&key.to_string()).map_err(|_| {
                // A UUID is always a valid header value.
                KlarnaError::NotSent("operation id is not a header value".to_owned())
            })?;
            headers.insert(HeaderName::from_static(IDEMPOTENCY_KEY_HEADER), key);
        }
        if json {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(length) = length {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
        }
        Ok(request)
    }
}

/// The `klarna.api` field of the call's log event.
fn api_name(kind: KlarnaApiKind) -> &'static str {
    match kind {
        KlarnaApiKind::OrderManagement => "order_management",
        KlarnaApiKind::Payments => "payments",
    }
}

/// One Klarna call before it becomes a request.
pub(crate) struct Call<'a> {
    /// Name for logs, e.g. `create_refund`.
    operation: &'static str,
    method: Method,
    /// Path segments after the API's prefix.
    segments: Vec<&'a str>,
    /// JSON body.
    body: Option<Vec<u8>>,
    /// `Klarna-Idempotency-Key`; every mutating call has one.
    key: Option<&'a OperationId>,
    /// Headers of this call only.
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl<'a> Call<'a> {
    /// A read: no key, no body.
    pub(crate) fn get(operation: &'static str, segments: Vec<&'a str>) -> Self {
        Self {
            operation,
            method: Method::GET,
            segments,
            body: None,
            key: None,
            headers: Vec::new(),
        }
    }

    /// A write under `key`, sent as `Klarna-Idempotency-Key`.
    pub(crate) fn mutate(
        operation: &'static str,
        method: Method,
        segments: Vec<&'a str>,
        key: &'a OperationId,
    ) -> Self {
        Self {
            operation,
            method,
            segments,
            body: None,
            key: Some(key),
            headers: Vec::new(),
        }
    }

    /// With `body` as JSON.
    pub(crate) fn json(mut self, body: &impl Serialize) -> Result<Self, KlarnaError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| KlarnaError::NotSent(format!("cannot encode the request body: {e}")))?;
        self.body = Some(body);
        Ok(self)
    }

    /// With one more header.
    pub(crate) fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// A whole answer.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// A UTF-8 byte order mark: JSON may not start with one, but a parser may ignore it (RFC 8259
/// §8.1), and some servers and proxies send one.
pub(crate) const BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

/// `body` without a leading [`BYTE_ORDER_MARK`]: serde_json refuses one, and an answer read
/// as unreadable for it would lose its refund id, its error code or its correlation id.
pub(crate) fn without_byte_order_mark(body: &[u8]) -> &[u8] {
    body.strip_prefix(BYTE_ORDER_MARK).unwrap_or(body)
}

impl From<::http::Response<Bytes>> for Answer {
    fn from(response: ::http::Response<Bytes>) -> Self {
        let (parts, mut body) = response.into_parts();
        // Once here, so that every reader of the answer (bodies, error objects, refund ids)
        // sees the JSON alone.
        if body.starts_with(BYTE_ORDER_MARK) {
            body = body.slice(BYTE_ORDER_MARK.len()..);
        }
        Self {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

impl Answer {
    /// The body as `W`; any 2xx status is accepted for reads.
    pub(crate) fn json<W: DeserializeOwned>(&self) -> Result<W, KlarnaError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| KlarnaError::BadResponse(format!("cannot read the answer body: {e}")))
    }

    /// `Ok` when `ok` accepts the status, else [`KlarnaError::BadResponse`] naming `what`.
    pub(crate) fn expect_status(
        &self,
        ok: fn(StatusCode) -> bool,
        what: &str,
    ) -> Result<(), KlarnaError> {
        if ok(self.status) {
            Ok(())
        } else {
            Err(KlarnaError::BadResponse(format!(
                "unexpected success status {} for {what}",
                self.status.as_u16()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(base: &str, prefix: &[&str]) -> Transport {
        let api = Api {
            kind: KlarnaApiKind::Payments,
            base_url: BaseUrl::parse(base).unwrap_or_else(|e| panic!("{e}")),
            prefix: prefix.iter().map(|s| (*s).to_owned()).collect(),
            authorization: HeaderValue::from_static("Basic x"),
            headers: HeaderMap::new(),
            correlation_headers: &[],
            tls: Tls::default(),
        };
        Transport::new(api, &TransportConfig::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_byte_order_mark_before_the_body_is_left_out() {
        let answer = |body: &'static [u8]| {
            Answer::from(
                ::http::Response::builder()
                    .status(200)
                    .body(Bytes::from_static(body))
                    .unwrap_or_else(|e| panic!("{e}")),
            )
        };
        let with_mark = answer(b"\xEF\xBB\xBF{\"order_id\":\"o-1\"}");
        assert_eq!(&with_mark.body[..], b"{\"order_id\":\"o-1\"}");
        let value: serde_json::Value = with_mark.json().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(value["order_id"], "o-1");
        // Only a leading mark, and only the UTF-8 one.
        assert_eq!(&answer(b"{}\xEF\xBB\xBF").body[..], b"{}\xEF\xBB\xBF");
        assert_eq!(&answer(b"\xFE\xFF{}").body[..], b"\xFE\xFF{}");
        assert_eq!(&answer(b"").body[..], b"");
        assert_eq!(without_byte_order_mark(b"\xEF\xBB\xBF"), b"");
    }

    #[test]
    fn user_agent_follows_the_sdk_convention() {
        let plain = user_agent(None);
        assert_eq!(
            plain,
            format!(
                "Library/refund-gateway_{} Language/Rust OS/{}",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS
            )
        );
        assert_eq!(user_agent(Some(" ")), plain);
        assert_eq!(user_agent(Some("eu-live")), format!("{plain} eu-live"));
    }

    #[test]
    fn prefix_and_segments_are_percent_encoded() {
        let t = transport(
            "https://api-global.test.klarna.com/",
            &["v2", "accounts", "krn:partner:a/b c"],
        );
        let url = t
            .url(&["payment", "transactions", "krn:x?y#z%w v"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            url.as_str(),
            "https://api-global.test.klarna.com/v2/accounts/krn:partner:a%2Fb%20c\
             /payment/transactions/krn:x%3Fy%23z%25w%20v"
        );
        let t = transport("http://127.0.0.1:9/proxy", &[]);
        let url = t.url(&["payment"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(url.as_str(), "http://127.0.0.1:9/proxy/payment");
    }

    #[test]
    fn the_rate_limiter_is_built_once_without_connecting() {
        let api = Api {
            kind: KlarnaApiKind::OrderManagement,
            base_url: BaseUrl::parse("http://127.0.0.1:9").unwrap_or_else(|e| panic!("{e}")),
            prefix: Vec::new(),
            authorization: HeaderValue::from_static("Basic x"),
            headers: HeaderMap::new(),
            correlation_headers: &[],
            tls: Tls::default(),
        };
        // Outside any runtime, with nothing listening: a shared limit connects on first use.
        let config = TransportConfig {
            rate_limit: Some(
                crate::OutboundRateLimit::new(50).shared_through("redis://127.0.0.1:9", "eu-1"),
            ),
            ..TransportConfig::default()
        };
        let transport = Transport::new(api, &config).unwrap_or_else(|e| panic!("{e}"));
        let limiter = transport.limiter().map(|l| format!("{l:?}"));
        assert!(
            limiter
                .as_deref()
                .is_some_and(|l| l.contains("klarna-quota:eu-1")),
            "{limiter:?}"
        );
        assert_eq!(
            transport.limiter().and_then(OutboundLimiter::degraded),
            None
        );
        assert!(
            self::transport("http://127.0.0.1:9", &[])
                .limiter()
                .is_none()
        );
    }

    #[test]
    fn zero_timeouts_and_bad_suffixes_are_refused() {
        let api = || Api {
            kind: KlarnaApiKind::OrderManagement,
            base_url: BaseUrl::parse("http://127.0.0.1:9").unwrap_or_else(|e| panic!("{e}")),
            prefix: Vec::new(),
            authorization: HeaderValue::from_static("Basic x"),
            headers: HeaderMap::new(),
            correlation_headers: &[],
            tls: Tls::default(),
        };
        let config = TransportConfig {
            user_agent_suffix: Some("bad\nsuffix".into()),
            ..TransportConfig::default()
        };
        assert!(matches!(
            Transport::new(api(), &config),
            Err(KlarnaConfigError::InvalidUserAgent(_))
        ));
        let config = TransportConfig {
            connect_timeout: Duration::ZERO,
            ..TransportConfig::default()
        };
        assert!(matches!(
            Transport::new(api(), &config),
            Err(KlarnaConfigError::ZeroTimeout("connect_timeout"))
        ));
    }
}
