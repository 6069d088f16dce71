//! [`PaymentsClient`]: the domain's [`PaymentsApi`] over Klarna's partner Payments API. It
//! checks the partner settings (API key, path prefix, partner account, client certificate,
//! extra roots), builds each call (path, `Partner-Correlation-Id`, idempotency key, JSON body)
//! and reads the answers through `partner_contract.rs`; the call machinery is the shared
//! [`Transport`], tagged [`KlarnaApiKind::Payments`].

use std::fmt;

use async_trait::async_trait;
use http::Method;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use refund_gateway_domain::{
    KlarnaApiKind, KlarnaError, OperationId, PartnerRefund, PartnerRefundCreated, PaymentCaptureId,
    PaymentTransaction, PaymentTransactionId, PaymentsApi,
};

use crate::config::{
    BaseUrl, KlarnaConfigError, PaymentsClientConfig, api_key_authorization,
    extra_root_certificates, path_prefix_segments,
};
use crate::http::Tls;
use crate::limit::OutboundLimiter;
use crate::partner_contract::{
    self, CAPTURES_PATH, CaptureRefundRequest, PARTNER_ACCOUNT_HEADER,
    PARTNER_CORRELATION_ID_HEADER, REFUNDS, TRANSACTIONS_PATH, TransactionRefundRequest,
};
use crate::transport::{Answer, Api, Call, Transport};

/// A client of Klarna's partner Payments API for one partner account. Cheap to clone (the
/// connection pool and stack are shared); `Debug` shows where it points, never the API key or
/// the client certificate's key.
#[derive(Clone)]
pub struct PaymentsClient {
    transport: Transport,
}

impl fmt::Debug for PaymentsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PaymentsClient")
            .field("transport", &self.transport)
            .finish()
    }
}

impl PaymentsClient {
    /// Checks `config` and builds the client: the `Authorization` value is built once, the
    /// client certificate and extra roots are loaded into rustls, and the connection pool,
    /// retry budget, outbound rate limiter and outbound stack are created (nothing connects
    /// yet). Fails, without quoting any key, on an API
    /// key that is empty or holds anything but visible ASCII, a path prefix or partner account
    /// that breaks its rules, a client certificate or root that cannot be read (or a key that
    /// does not belong to the certificate), or settings [`crate::TransportConfig::validate`]
    /// refuses.
    pub fn new(config: PaymentsClientConfig) -> Result<Self, KlarnaConfigError> {
        let prefix = path_prefix_segments(&config.path_prefix)?;
        let mut headers = HeaderMap::new();
        if let Some(account) = &config.on_behalf_of {
            headers.insert(
                HeaderName::from_static(PARTNER_ACCOUNT_HEADER),
                partner_account(account)?,
            );
        }
        let tls = Tls {
            identity: config
                .client_identity
                .as_ref()
                .map(crate::ClientIdentity::to_rustls)
                .transpose()?,
            extra_roots: extra_root_certificates(&config.extra_root_certificates)?,
        };
        let api = Api {
            kind: KlarnaApiKind::Payments,
            base_url: config.base_url,
            prefix,
            authorization: api_key_authorization(&config.api_key)?,
            headers,
            correlation_headers: &partner_contract::CORRELATION_ID_HEADERS,
            tls,
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

    /// Sends a refund `call` and reads the created refund's id.
    async fn refund(&self, call: Call<'_>) -> Result<PartnerRefundCreated, KlarnaError> {
        let base = self.transport.base_url().url();
        let (payment_refund_id, correlation_id) = self
            .transport
            .call(call, |a: &Answer| {
                a.expect_status(partner_contract::refund_created, "a refund")?;
                partner_contract::refund_id(&a.headers, &a.body, base).ok_or_else(|| {
                    KlarnaError::BadResponse(
                        "refund created without a payment_refund_id, a refund_id or a Location"
                            .to_owned(),
                    )
                })
            })
            .await?;
        Ok(PartnerRefundCreated {
            payment_refund_id,
            correlation_id,
        })
    }
}

/// The `Klarna-Partner-Account` value: an account id, visible ASCII without spaces.
fn partner_account(account: &str) -> Result<HeaderValue, KlarnaConfigError> {
    if account.is_empty() {
        return Err(KlarnaConfigError::InvalidPartnerAccount("it is empty"));
    }
    if account.len() > 255 {
        return Err(KlarnaConfigError::InvalidPartnerAccount(
            "it is longer than 255 characters",
        ));
    }
    if !account.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(KlarnaConfigError::InvalidPartnerAccount(
            "it holds whitespace, control or non-ASCII characters",
        ));
    }
    HeaderValue::from_str(account)
        .map_err(|_| KlarnaConfigError::InvalidPartnerAccount("it is not a header value"))
}

#[async_trait]
impl PaymentsApi for PaymentsClient {
    async fn get_transaction(
        &self,
        id: &PaymentTransactionId,
    ) -> Result<PaymentTransaction, KlarnaError> {
        let mut segments = TRANSACTIONS_PATH.to_vec();
        segments.push(id.as_str());
        let call = Call::get("get_payment_transaction", segments).header(
            HeaderName::from_static(PARTNER_CORRELATION_ID_HEADER),
            partner_contract::read_correlation_id(),
        );
        let (transaction, _) = self
            .transport
            .call(call, |a| {
                partner_contract::transaction(&a.body, id.as_str())
            })
            .await?;
        Ok(transaction)
    }

    async fn refund_capture(
        &self,
        capture: &PaymentCaptureId,
        refund: &PartnerRefund,
        key: &OperationId,
    ) -> Result<PartnerRefundCreated, KlarnaError> {
        let mut segments = CAPTURES_PATH.to_vec();
        segments.extend([capture.as_str(), REFUNDS]);
        let call = Call::mutate("refund_payment_capture", Method::POST, segments, key)
            .header(
                HeaderName::from_static(PARTNER_CORRELATION_ID_HEADER),
                partner_contract::operation_correlation_id(key),
            )
            .json(&CaptureRefundRequest::new(refund))?;
        self.refund(call).await
    }

    async fn refund_transaction(
        &self,
        transaction: &PaymentTransactionId,
        refund: &PartnerRefund,
        key: &OperationId,
    ) -> Result<PartnerRefundCreated, KlarnaError> {
        let mut segments = TRANSACTIONS_PATH.to_vec();
        segments.extend([transaction.as_str(), REFUNDS]);
        let call = Call::mutate("refund_payment_transaction", Method::POST, segments, key)
            .header(
                HeaderName::from_static(PARTNER_CORRELATION_ID_HEADER),
                partner_contract::operation_correlation_id(key),
            )
            .json(&TransactionRefundRequest::new(refund))?;
        self.refund(call).await
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;
    use crate::config::{ClientIdentity, Environment, payments_base_url, testing};

    fn config() -> PaymentsClientConfig {
        PaymentsClientConfig::new(
            payments_base_url(Environment::Playground),
            "klarna_test_api_S3CR3T",
            "/v2/accounts/krn:partner:global:account:test:1",
        )
    }

    #[test]
    fn authorization_is_the_raw_key_and_sensitive() {
        let header = api_key_authorization(&SecretString::from("klarna_test_api_abc/+="))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(header.is_sensitive());
        assert_eq!(header.to_str().ok(), Some("Basic klarna_test_api_abc/+="));
        assert_eq!(format!("{header:?}"), "Sensitive");
    }

    #[test]
    fn unusable_api_keys_are_refused_without_echo() {
        for key in [
            "",
            "klarna test",
            "klarna\ttest",
            "key\n",
            "kéy",
            "key\u{7f}",
        ] {
            let e = api_key_authorization(&SecretString::from(key))
                .err()
                .map(|e| format!("{e} {e:?}"))
                .unwrap_or_default();
            assert!(e.starts_with("invalid Klarna API key"), "{key:?}: {e}");
            if !key.is_empty() {
                assert!(!e.contains(key), "{e}");
            }
        }
    }

    #[test]
    fn partner_accounts_must_be_header_tokens() {
        assert!(partner_account("krn:partner:global:account:live:ABC").is_ok());
        for bad in ["", "a b", "a\nb", "ä", &"a".repeat(256)] {
            assert!(
                matches!(
                    partner_account(bad),
                    Err(KlarnaConfigError::InvalidPartnerAccount(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn client_builds_and_hides_its_secrets() {
        let (cert, key) = testing::self_signed();
        let (ca, _) = testing::self_signed();
        let mut config = config();
        config.on_behalf_of = Some("krn:partner:global:account:test:2".into());
        config.client_identity = Some(ClientIdentity::from_pem(cert, key.clone().into_bytes()));
        config.extra_root_certificates = vec![ca.into_bytes()];
        let client = PaymentsClient::new(config).unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("{client:?} {client:#?}");
        assert!(!shown.contains("S3CR3T"), "{shown}");
        assert!(!shown.contains(&testing::key_line(&key)), "{shown}");
        assert!(shown.contains("api-global.test.klarna.com"), "{shown}");
        assert!(
            shown.contains("krn:partner:global:account:test:1"),
            "{shown}"
        );
        assert_eq!(
            client.base_url().as_str(),
            "https://api-global.test.klarna.com"
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let (cert, _) = testing::self_signed();
        let (_, other_key) = testing::self_signed();
        let mut config = config();
        config.client_identity = Some(ClientIdentity::from_pem(
            cert,
            other_key.clone().into_bytes(),
        ));
        let e = PaymentsClient::new(config).err();
        let text = format!(
            "{e:?} {}",
            e.as_ref().map(ToString::to_string).unwrap_or_default()
        );
        assert!(
            matches!(e, Some(KlarnaConfigError::HttpClient(_))),
            "{text}"
        );
        assert!(!text.contains(&testing::key_line(&other_key)), "{text}");
    }

    #[test]
    fn bad_prefixes_and_accounts_stop_construction() {
        let mut c = config();
        c.path_prefix = "v2".into();
        assert!(matches!(
            PaymentsClient::new(c),
            Err(KlarnaConfigError::InvalidPathPrefix { .. })
        ));
        let mut c = config();
        c.on_behalf_of = Some("two words".into());
        assert!(matches!(
            PaymentsClient::new(c),
            Err(KlarnaConfigError::InvalidPartnerAccount(_))
        ));
        let mut c = config();
        c.extra_root_certificates = vec![b"garbage".to_vec()];
        assert!(matches!(
            PaymentsClient::new(c),
            Err(KlarnaConfigError::InvalidRootCertificate { index: 0, .. })
        ));
    }
}
