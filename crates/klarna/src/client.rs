//! [`KlarnaClient`]: the domain's [`KlarnaApi`] over HTTP. It builds each request (URL,
//! credentials, idempotency key, JSON body), sends it through the outbound stack, and turns
//! the answer into domain values or a classified [`KlarnaError`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use refund_gateway_domain::{
    Attempt, CaptureId, ExtendDueDateOptions, KlarnaApi, KlarnaError, KlarnaReceipt, KlarnaRefund,
    OperationId, Order, OrderId, Refund, RefundCreated, RefundId,
};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use secrecy::ExposeSecret;
use secrecy::zeroize::Zeroize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower::ServiceExt;

use crate::config::{BaseUrl, KlarnaClientConfig, KlarnaConfigError, KlarnaCredentials};
use crate::contract::{self, CAPTURES, IDEMPOTENCY_KEY_HEADER, ORDERS_PATH, REFUNDS};
use crate::error::{correlation_id, error_response};
use crate::http::{OutboundService, outbound_stack, read_whole, reqwest_client};
use crate::retry::{RetryPolicy, current_deadline, with_deadline};
use crate::wire::{
    ExtendDueDateOptionsWire, ExtendDueDateRequest, OrderWire, RefundRequest, RefundWire,
};

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

/// A Klarna Order Management client for one merchant account. Cheap to clone (the connection
/// pool and stack are shared); `Debug` shows where it points, never its credentials.
#[derive(Clone)]
pub struct KlarnaClient {
    inner: Arc<Inner>,
    outbound: OutboundService,
}

struct Inner {
    base_url: BaseUrl,
    /// `Basic …`, marked sensitive so that http's `Debug` prints `Sensitive`.
    authorization: HeaderValue,
    attempt_timeout: Duration,
    connect_timeout: Duration,
    default_deadline: Duration,
    max_attempts: u32,
    user_agent: String,
}

impl fmt::Debug for KlarnaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KlarnaClient")
            .field("base_url", &self.inner.base_url.as_str())
            .field("attempt_timeout", &self.inner.attempt_timeout)
            .field("connect_timeout", &self.inner.connect_timeout)
            .field("default_deadline", &self.inner.default_deadline)
            .field("max_attempts", &self.inner.max_attempts)
            .field("user_agent", &self.inner.user_agent)
            .finish_non_exhaustive()
    }
}

impl KlarnaClient {
    /// Checks `config` and builds the client: the Basic credential is encoded once here, the
    /// connection pool, the retry budget (shared by every call of this client) and the
    /// outbound stack are created. Fails on zero timeouts or default deadline, retry settings
    /// out of range, credentials that cannot be sent as Basic credentials, or a `User-Agent`
    /// suffix that is not a header value.
    pub fn new(config: KlarnaClientConfig) -> Result<Self, KlarnaConfigError> {
        if config.attempt_timeout.is_zero() {
            return Err(KlarnaConfigError::ZeroTimeout("attempt_timeout"));
        }
        if config.connect_timeout.is_zero() {
            return Err(KlarnaConfigError::ZeroTimeout("connect_timeout"));
        }
        if config.default_deadline.is_zero() {
            return Err(KlarnaConfigError::ZeroTimeout("default_deadline"));
        }
        let policy = RetryPolicy::new(&config.retry)?;
        let authorization = basic_authorization(&config.credentials)?;
        let agent = user_agent(config.user_agent_suffix.as_deref());
        let agent_header = HeaderValue::from_str(&agent).map_err(|_| {
            KlarnaConfigError::InvalidUserAgent("must be visible ASCII text without line breaks")
        })?;
        let client = reqwest_client(config.connect_timeout, agent_header)
            .map_err(|e| KlarnaConfigError::HttpClient(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                base_url: config.base_url,
                authorization,
                attempt_timeout: config.attempt_timeout,
                connect_timeout: config.connect_timeout,
                default_deadline: config.default_deadline,
                max_attempts: config.retry.max_attempts,
                user_agent: agent,
            }),
            outbound: outbound_stack(client, config.attempt_timeout, policy),
        })
    }

    /// Where this client sends its requests.
    pub fn base_url(&self) -> &BaseUrl {
        &self.inner.base_url
    }

    /// `…/ordermanagement/v1/orders/{segments…}` with every segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Result<Url, KlarnaError> {
        let mut url = self.inner.base_url.url().clone();
        url.path_segments_mut()
            // BaseUrl requires a host, so its URL always has path segments.
            .map_err(|()| KlarnaError::NotSent("the base URL cannot take a path".to_owned()))?
            .pop_if_empty()
            .extend(ORDERS_PATH)
            .extend(segments);
        Ok(url)
    }

    /// Sends one Klarna call, with its resends, and reads the final answer: a non-2xx status
    /// becomes [`KlarnaError::Answered`]; a 2xx goes to `read`. The whole call ends by the
    /// deadline of the enclosing [`with_deadline`], else `default_deadline` from now; a call
    /// whose deadline has already passed is not sent. Logs the call once, at INFO when it
    /// succeeded and at WARN when it did not.
    async fn call<T>(
        &self,
        request: Call<'_>,
        read: impl FnOnce(&Answer) -> Result<T, KlarnaError>,
    ) -> Result<(T, Option<String>), KlarnaError> {
        let started = Instant::now();
        let method = request.method.clone();
        let operation = request.operation;
        let mutating = request.key.is_some();
        let mut path = String::new();
        let deadline = current_deadline().or_else(|| {
            // `None` only when the default deadline is beyond what an Instant can hold;
            // attempts and resends are still bounded then.
            tokio::time::Instant::now().checked_add(self.inner.default_deadline)
        });
        let result = async {
            let request = self.request(request)?;
            path = request.url().path().to_owned();
            // A fresh copy of the stack per call: its retry policy and resend count start
            // from zero.
            let send = self.outbound.clone().oneshot(request);
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
            let answer = Answer::from(read_whole(response).await?);
            if !answer.status.is_success() {
                return Err(KlarnaError::Answered(Box::new(error_response(
                    answer.status,
                    &answer.headers,
                    &answer.body,
                ))));
            }
            let correlation_id = correlation_id(&answer.headers);
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
                tracing::info!(
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
                let (status, error_code) = match &error {
                    KlarnaError::Answered(r) => (Some(r.status), r.error_code.as_deref()),
                    _ => (None, None),
                };
                tracing::warn!(
                    klarna.operation = operation,
                    http.request.method = %method,
                    url.path = %path,
                    http.response.status_code = status,
                    klarna.error_code = error_code,
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

    fn request(&self, call: Call<'_>) -> Result<reqwest::Request, KlarnaError> {
        let mut request = reqwest::Request::new(call.method, self.url(&call.segments)?);
        let headers = request.headers_mut();
        headers.insert(AUTHORIZATION, self.inner.authorization.clone());
        if let Some(key) = call.key {
            let key = HeaderValue::from_str(&key.to_string()).map_err(|_| {
                // A UUID is always a valid header value.
                KlarnaError::NotSent("operation id is not a header value".to_owned())
            })?;
            headers.insert(HeaderName::from_static(IDEMPOTENCY_KEY_HEADER), key);
        }
        if let Some(body) = call.body {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            *request.body_mut() = Some(body.into());
        } else if call.key.is_some() {
            // A POST without a body still says so (Content-Length: 0): some proxies answer
            // 411 to a bodiless POST without a length.
            *request.body_mut() = Some(Bytes::new().into());
        }
        Ok(request)
    }
}

/// Basic credentials, encoded once; the plain and encoded copies are wiped after use.
fn basic_authorization(credentials: &KlarnaCredentials) -> Result<HeaderValue, KlarnaConfigError> {
    if credentials.username.is_empty() {
        return Err(KlarnaConfigError::InvalidCredentials(
            "the username is empty",
        ));
    }
    if credentials.username.contains(':') {
        return Err(KlarnaConfigError::InvalidCredentials(
            "the username contains ':', which HTTP Basic credentials cannot carry",
        ));
    }
    if credentials.username.chars().any(char::is_control)
        || credentials
            .password
            .expose_secret()
            .chars()
            .any(char::is_control)
    {
        return Err(KlarnaConfigError::InvalidCredentials(
            "the username or password contains control characters",
        ));
    }
    let mut plain = format!(
        "{}:{}",
        credentials.username,
        credentials.password.expose_secret()
    );
    let mut value = format!("Basic {}", BASE64.encode(plain.as_bytes()));
    plain.zeroize();
    let header = HeaderValue::from_str(&value);
    value.zeroize();
    let mut header = header.map_err(|_| {
        // Base64 output is always a valid header value.
        KlarnaConfigError::InvalidCredentials("cannot be encoded as a header")
    })?;
    header.set_sensitive(true);
    Ok(header)
}

/// One Klarna call before it becomes a request.
struct Call<'a> {
    /// Name for logs, e.g. `create_refund`.
    operation: &'static str,
    method: Method,
    /// Path segments after `/ordermanagement/v1/orders/`.
    segments: Vec<&'a str>,
    /// JSON body.
    body: Option<Vec<u8>>,
    /// `Klarna-Idempotency-Key`; every mutating call has one.
    key: Option<&'a OperationId>,
}

impl<'a> Call<'a> {
    fn get(operation: &'static str, segments: Vec<&'a str>) -> Self {
        Self {
            operation,
            method: Method::GET,
            segments,
            body: None,
            key: None,
        }
    }

    fn mutate(
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
        }
    }

    fn json(mut self, body: &impl Serialize) -> Result<Self, KlarnaError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| KlarnaError::NotSent(format!("cannot encode the request body: {e}")))?;
        self.body = Some(body);
        Ok(self)
    }
}

/// A whole answer.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl From<::http::Response<Bytes>> for Answer {
    fn from(response: ::http::Response<Bytes>) -> Self {
        let (parts, body) = response.into_parts();
        Self {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

impl Answer {
    /// The body as `W`; any 2xx status is accepted for reads.
    fn json<W: DeserializeOwned>(&self) -> Result<W, KlarnaError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| KlarnaError::BadResponse(format!("cannot read the answer body: {e}")))
    }

    fn expect_status(&self, ok: fn(StatusCode) -> bool, what: &str) -> Result<(), KlarnaError> {
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

#[async_trait]
impl KlarnaApi for KlarnaClient {
    async fn get_order(&self, order_id: &OrderId) -> Result<Order, KlarnaError> {
        let call = Call::get("get_order", vec![order_id.as_str()]);
        let (order, _) = self
            .call(call, |a| a.json::<OrderWire>().map(Order::from))
            .await?;
        Ok(order)
    }

    async fn create_refund(
        &self,
        order_id: &OrderId,
        refund: &KlarnaRefund,
        key: &OperationId,
    ) -> Result<RefundCreated, KlarnaError> {
        let call = Call::mutate(
            "create_refund",
            Method::POST,
            vec![order_id.as_str(), REFUNDS],
            key,
        )
        .json(&RefundRequest::new(refund))?;
        let base = self.inner.base_url.url();
        let (refund_id, correlation_id) = self
            .call(call, |a| {
                a.expect_status(contract::refund_created, "a refund")?;
                contract::refund_id(&a.headers, &a.body, base).ok_or_else(|| {
                    KlarnaError::BadResponse(
                        "refund created without a Refund-Id header, a Location or a refund_id"
                            .to_owned(),
                    )
                })
            })
            .await?;
        Ok(RefundCreated {
            refund_id,
            correlation_id,
        })
    }

    async fn get_refund(
        &self,
        order_id: &OrderId,
        refund_id: &RefundId,
    ) -> Result<Refund, KlarnaError> {
        let call = Call::get(
            "get_refund",
            vec![order_id.as_str(), REFUNDS, refund_id.as_str()],
        );
        let (refund, _) = self
            .call(call, |a| a.json::<RefundWire>().map(Refund::from))
            .await?;
        Ok(refund)
    }

    async fn release_remaining_authorization(
        &self,
        order_id: &OrderId,
        key: &OperationId,
    ) -> Result<KlarnaReceipt, KlarnaError> {
        let call = Call::mutate(
            "release_remaining_authorization",
            Method::POST,
            vec![order_id.as_str(), contract::RELEASE_REMAINING_AUTHORIZATION],
            key,
        );
        let ((), correlation_id) = self
            .call(call, |a| {
                a.expect_status(contract::release_succeeded, "a release")
            })
            .await?;
        Ok(KlarnaReceipt { correlation_id })
    }

    async fn get_extend_due_date_options(
        &self,
        order_id: &OrderId,
        capture_id: &CaptureId,
    ) -> Result<ExtendDueDateOptions, KlarnaError> {
        let call = Call::get(
            "get_extend_due_date_options",
            vec![
                order_id.as_str(),
                CAPTURES,
                capture_id.as_str(),
                contract::EXTEND_DUE_DATE_OPTIONS,
            ],
        );
        let (options, _) = self
            .call(call, |a| {
                a.json::<ExtendDueDateOptionsWire>()
                    .map(ExtendDueDateOptions::from)
            })
            .await?;
        Ok(options)
    }

    async fn extend_due_date(
        &self,
        order_id: &OrderId,
        capture_id: &CaptureId,
        number_of_days: i32,
        key: &OperationId,
    ) -> Result<KlarnaReceipt, KlarnaError> {
        let call = Call::mutate(
            "extend_due_date",
            Method::PATCH,
            vec![
                order_id.as_str(),
                CAPTURES,
                capture_id.as_str(),
                contract::EXTEND_DUE_DATE,
            ],
            key,
        )
        .json(&ExtendDueDateRequest { number_of_days })?;
        let ((), correlation_id) = self
            .call(call, |a| {
                a.expect_status(contract::extension_succeeded, "a due-date extension")
            })
            .await?;
        Ok(KlarnaReceipt { correlation_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Environment, Region, regional_base_url};

    fn client() -> KlarnaClient {
        let config = KlarnaClientConfig::new(
            regional_base_url(Region::Eu, Environment::Playground),
            KlarnaCredentials::new("PK_user_1", "hunter2-secret"),
        );
        KlarnaClient::new(config).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn debug_never_shows_credentials() {
        let c = client();
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("PK_user_1"), "{shown}");
        assert!(
            !shown.contains(&BASE64.encode("PK_user_1:hunter2-secret")),
            "{shown}"
        );
        assert!(shown.contains("api.playground.klarna.com"), "{shown}");
    }

    #[test]
    fn authorization_is_basic_and_sensitive() {
        let header = basic_authorization(&KlarnaCredentials::new("user", "pa:ss"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(header.is_sensitive());
        assert_eq!(header.to_str().ok(), Some("Basic dXNlcjpwYTpzcw=="));
        assert_eq!(format!("{header:?}"), "Sensitive");
    }

    #[test]
    fn unusable_credentials_are_refused_without_echo() {
        for (user, password) in [("", "p"), ("a:b", "p"), ("u", "line\nbreak"), ("u\r", "p")] {
            let e = basic_authorization(&KlarnaCredentials::new(user, password))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.starts_with("invalid Klarna credentials"), "{e}");
            assert!(!e.contains("line\nbreak"), "{e}");
        }
        let mut config = KlarnaClientConfig::new(
            regional_base_url(Region::Eu, Environment::Live),
            KlarnaCredentials::new("u", "p"),
        );
        config.user_agent_suffix = Some("bad\nsuffix".into());
        assert!(matches!(
            KlarnaClient::new(config.clone()),
            Err(KlarnaConfigError::InvalidUserAgent(_))
        ));
        config.user_agent_suffix = None;
        config.attempt_timeout = Duration::ZERO;
        assert!(matches!(
            KlarnaClient::new(config),
            Err(KlarnaConfigError::ZeroTimeout("attempt_timeout"))
        ));
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
    fn path_segments_are_percent_encoded() {
        let c = client();
        let url = c
            .url(&["a/b?c#d", REFUNDS, "e%f g"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            url.as_str(),
            "https://api.playground.klarna.com/ordermanagement/v1/orders/a%2Fb%3Fc%23d/refunds/e%25f%20g"
        );
        let prefixed = KlarnaClient::new(KlarnaClientConfig::new(
            BaseUrl::parse("http://127.0.0.1:9/klarna/").unwrap_or_else(|e| panic!("{e}")),
            KlarnaCredentials::new("u", "p"),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let url = prefixed.url(&["o"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9/klarna/ordermanagement/v1/orders/o"
        );
    }
}
