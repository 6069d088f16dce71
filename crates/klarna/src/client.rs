//! [`KlarnaClient`]: the domain's [`KlarnaApi`] over Order Management's HTTP API. It builds
//! each call (path, idempotency key, JSON body) and reads the answer into domain values; the
//! call machinery (credentials, outbound stack, deadline, errors, logging) is the shared
//! [`Transport`].

use std::fmt;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::Method;
use http::header::{HeaderMap, HeaderValue};
use refund_gateway_domain::{
    CaptureId, ExtendDueDateOptions, KlarnaApi, KlarnaApiKind, KlarnaError, KlarnaReceipt,
    KlarnaRefund, OperationId, Order, OrderId, Refund, RefundCreated, RefundId,
};
use secrecy::ExposeSecret;
use secrecy::zeroize::Zeroize;

use crate::config::{
    BaseUrl, Credential, KlarnaClientConfig, KlarnaConfigError, KlarnaCredentials,
    api_key_authorization, extra_root_certificates,
};
use crate::contract::{self, CAPTURES, CORRELATION_ID_HEADERS, ORDERS_PATH, REFUNDS};
use crate::http::Tls;
use crate::limit::OutboundLimiter;
use crate::transport::{Api, Call, Transport};
use crate::wire::{
    ExtendDueDateOptionsWire, ExtendDueDateRequest, OrderWire, RefundRequest, RefundWire,
};

/// A Klarna Order Management client for one merchant account. Cheap to clone (the connection
/// pool and stack are shared); `Debug` shows where it points, never its credentials.
#[derive(Clone)]
pub struct KlarnaClient {
    transport: Transport,
}

impl fmt::Debug for KlarnaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KlarnaClient")
            .field("transport", &self.transport)
            .finish()
    }
}

impl KlarnaClient {
    /// Checks `config` and builds the client: the Basic credential is encoded once here, the
    /// extra roots are loaded into rustls, the connection pool, the retry budget and the
    /// outbound rate limiter (both shared by every call of this client) and the outbound stack
    /// are created; nothing connects yet. Fails on settings [`crate::TransportConfig::validate`]
    /// refuses, credentials that cannot be sent as Basic credentials, a root that cannot be
    /// read, or a `User-Agent` suffix that is not a header value.
    pub fn new(config: KlarnaClientConfig) -> Result<Self, KlarnaConfigError> {
        let api = Api {
            kind: KlarnaApiKind::OrderManagement,
            base_url: config.base_url,
            prefix: ORDERS_PATH.iter().map(|s| (*s).to_owned()).collect(),
            authorization: basic_authorization(&config.credentials)?,
            headers: HeaderMap::new(),
            correlation_headers: &CORRELATION_ID_HEADERS,
            tls: Tls {
                identity: None,
                extra_roots: extra_root_certificates(&config.extra_root_certificates)?,
            },
        };
        Ok(Self {
            transport: Transport::new(api, &config.transport)?,
        })
    }

    /// Where this client sends its requests.
    pub fn base_url(&self) -> &BaseUrl {
        self.transport.base_url()
    }

    /// The account's outbound rate limiter ([`crate::TransportConfig::rate_limit`]), shared
    /// by every call of this client; `None` when the limit is off. Its
    /// [`degraded`](OutboundLimiter::degraded) says when a shared limit has fallen back to
    /// this replica's share.
    pub fn outbound_limiter(&self) -> Option<&OutboundLimiter> {
        self.transport.limiter()
    }
}

/// Basic credentials, encoded once; the plain and encoded copies are wiped after use. An API
/// key is sent as the whole credential ([`api_key_authorization`]).
fn basic_authorization(credentials: &KlarnaCredentials) -> Result<HeaderValue, KlarnaConfigError> {
    let (username, password) = match &credentials.0 {
        Credential::UsernamePassword { username, password } => (username, password),
        Credential::ApiKey(key) => return api_key_authorization(key),
    };
    if username.is_empty() {
        return Err(KlarnaConfigError::InvalidCredentials(
            "the username is empty",
        ));
    }
    if username.contains(':') {
        return Err(KlarnaConfigError::InvalidCredentials(
            "the username contains ':', which HTTP Basic credentials cannot carry",
        ));
    }
    if username.chars().any(char::is_control)
        || password.expose_secret().chars().any(char::is_control)
    {
        return Err(KlarnaConfigError::InvalidCredentials(
            "the username or password contains control characters",
        ));
    }
    let mut plain = format!("{username}:{}", password.expose_secret());
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

#[async_trait]
impl KlarnaApi for KlarnaClient {
    async fn get_order(&self, order_id: &OrderId) -> Result<Order, KlarnaError> {
        let call = Call::get("get_order", vec![order_id.as_str()]);
        let (order, _) = self
            .transport
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
        let base = self.transport.base_url().url();
        let (refund_id, correlation_id) = self
            .transport
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
            .transport
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
            .transport
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
            .transport
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
            .transport
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
    use crate::config::{Environment, Region, RetryConfig, regional_base_url, testing};

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
    fn an_api_key_is_the_whole_basic_credential() {
        let header = basic_authorization(&KlarnaCredentials::api_key("klarna_test_api_K3Y"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(header.is_sensitive());
        assert_eq!(header.to_str().ok(), Some("Basic klarna_test_api_K3Y"));
        for bad in ["", "klarna test", "klarna_test_api_\n"] {
            let e = basic_authorization(&KlarnaCredentials::api_key(bad))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.starts_with("invalid"), "{e}");
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
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
        config.transport.user_agent_suffix = Some("bad\nsuffix".into());
        assert!(matches!(
            KlarnaClient::new(config.clone()),
            Err(KlarnaConfigError::InvalidUserAgent(_))
        ));
        config.transport.user_agent_suffix = None;
        config.transport.attempt_timeout = std::time::Duration::ZERO;
        assert!(matches!(
            KlarnaClient::new(config),
            Err(KlarnaConfigError::ZeroTimeout("attempt_timeout"))
        ));
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        let c = client();
        let url = c
            .transport
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
        let url = prefixed
            .transport
            .url(&["o"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9/klarna/ordermanagement/v1/orders/o"
        );
    }

    /// Over https to a server whose certificate only a private CA vouches for: reached with
    /// that CA among the extra roots, refused in the handshake (never sent) without it.
    #[tokio::test]
    async fn extra_roots_let_the_client_reach_a_private_ca() {
        let (server_cert, server_key) = testing::self_signed_for(&["127.0.0.1", "localhost"]);
        let (other_ca, _) = testing::self_signed_for(&["127.0.0.1", "localhost"]);
        let sim = klarna_sim::spawn(klarna_sim::SimConfig {
            tls: Some(klarna_sim::TlsConfig::new(
                server_cert.clone(),
                server_key.into_bytes(),
            )),
            ..klarna_sim::SimConfig::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(sim.base_url.starts_with("https://"), "{}", sim.base_url);
        let read = |roots: Vec<Vec<u8>>| {
            let mut config = KlarnaClientConfig::new(
                BaseUrl::parse(&sim.base_url).unwrap_or_else(|e| panic!("{e}")),
                KlarnaCredentials::new(sim.username(), sim.password()),
            );
            config.extra_root_certificates = roots;
            config.transport.retry = RetryConfig::no_retries();
            let client = KlarnaClient::new(config).unwrap_or_else(|e| panic!("{e}"));
            async move {
                let order = OrderId::parse("00000000-0000-4000-8000-000000000000")
                    .unwrap_or_else(|e| panic!("{e}"));
                client.get_order(&order).await
            }
        };
        match read(vec![server_cert.into_bytes()]).await {
            Err(KlarnaError::Answered(answer)) => assert_eq!(answer.status, 404, "{answer:?}"),
            other => panic!("the simulator was not reached: {other:?}"),
        }
        for roots in [Vec::new(), vec![other_ca.into_bytes()]] {
            let result = read(roots).await;
            assert!(matches!(result, Err(KlarnaError::NotSent(_))), "{result:?}");
        }
        sim.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn unusable_extra_roots_stop_construction() {
        let mut config = KlarnaClientConfig::new(
            regional_base_url(Region::Eu, Environment::Live),
            KlarnaCredentials::new("u", "p"),
        );
        let (ca, _) = testing::self_signed();
        config.extra_root_certificates = vec![ca.into_bytes(), b"garbage".to_vec()];
        assert!(matches!(
            KlarnaClient::new(config),
            Err(KlarnaConfigError::InvalidRootCertificate { index: 1, .. })
        ));
    }
}
