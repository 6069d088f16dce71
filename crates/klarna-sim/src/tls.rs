//! Optional HTTPS and mutual TLS: [`TlsConfig`] and the rustls acceptor built from it
//! (aws-lc-rs provider, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`).
//!
//! With a client CA the handshake requires a client certificate that chains to it: a client
//! without one (or with another) fails the handshake and never reaches the API, as Klarna
//! treats acquiring partners without their certificate.

use std::io;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

/// The server's TLS identity and, for mutual TLS, the CA client certificates must chain to.
///
/// All PEM. Clients connect to `https://127.0.0.1:PORT` (see
/// [`crate::RunningSimulator::base_url`]), so the server certificate should name `127.0.0.1`
/// (and `localhost`) in its subject alternative names. rustls refuses a self-signed
/// certificate that is its own CA: use a CA and a leaf signed by it.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The server certificate chain, leaf first (PEM `CERTIFICATE` blocks).
    pub cert_chain_pem: Vec<u8>,
    /// The server's private key (PEM, PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
    /// With it, a client certificate chaining to one of these CA certificates (PEM) is
    /// required; without it, no client certificate is asked for.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl TlsConfig {
    /// HTTPS without client certificates.
    pub fn new(cert_chain_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            cert_chain_pem: cert_chain_pem.into(),
            key_pem: key_pem.into(),
            client_ca_pem: None,
        }
    }

    /// The same, requiring client certificates issued by `client_ca_pem`.
    pub fn with_client_ca(mut self, client_ca_pem: impl Into<Vec<u8>>) -> Self {
        self.client_ca_pem = Some(client_ca_pem.into());
        self
    }

    /// Whether clients must present a certificate.
    pub fn is_mutual(&self) -> bool {
        self.client_ca_pem.is_some()
    }
}

impl std::fmt::Debug for TlsConfig {
    // The private key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field(
                "cert_chain_pem",
                &format_args!("{} bytes", self.cert_chain_pem.len()),
            )
            .field("key_pem", &"<redacted>")
            .field("mutual", &self.is_mutual())
            .finish()
    }
}

fn invalid(what: &str, error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {error}"))
}

fn certificates(pem: &[u8], what: &str) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(what, e))?;
    if certs.is_empty() {
        return Err(invalid(what, "no PEM certificate found"));
    }
    Ok(certs)
}

/// The acceptor for `config`; an `InvalidInput` error names what is wrong with it.
pub(crate) fn acceptor(config: &TlsConfig) -> io::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = certificates(&config.cert_chain_pem, "TLS certificate chain")?;
    let key = PrivateKeyDer::from_pem_slice(&config.key_pem)
        .map_err(|e| invalid("TLS private key", e))?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS protocol versions", e))?;
    let builder = match &config.client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca_pem) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates(ca_pem, "TLS client CA")? {
                roots.add(ca).map_err(|e| invalid("TLS client CA", e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| invalid("TLS client CA", e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder
        .with_single_cert(chain, key)
        .map_err(|e| invalid("TLS certificate and key", e))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_pem() {
        let Err(error) = acceptor(&TlsConfig::new(b"nope".to_vec(), b"nope".to_vec())) else {
            panic!("garbage accepted as a certificate");
        };
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(error.to_string().contains("certificate chain"), "{error}");
    }
}
