//! End-to-end tests: the real gateway stack on port 0 against the Klarna simulator over HTTP.
//! Each test starts its own simulator and gateway, so tests run in parallel without sharing
//! state. Nothing sleeps to synchronise: tests await answers, and what cannot be awaited (the
//! simulator's request log, an operation the reconciler settles) is re-checked by
//! `refund_gateway_tests::wait_until` until it holds.
//!
//! A test that must hold on every store backend is written once inside [`backend_test!`],
//! which runs it on SQLite and on a fresh PostgreSQL database.

/// Defines a test that runs on every store backend, so no backend can be forgotten for it:
///
/// ```text
/// backend_test! {
///     /// What it shows.
///     async fn name(db: Backend) -> anyhow::Result<()> { ... }
/// }
/// ```
///
/// becomes a module `name` holding the function as written and two tests calling it,
/// `name::sqlite` (with `Backend::Sqlite`) and `name::postgres` (with a fresh database on the
/// test server; without a server, outside CI, it says `SKIPPED (no PostgreSQL): …` on stderr
/// and returns). The function sees its file's items through `use super::*`. A plain `fn`
/// (for a test that builds its own runtime, like the property test) becomes two `#[test]`s
/// instead of `#[tokio::test]`s.
macro_rules! backend_test {
    (
        $(#[$meta:meta])*
        async fn $name:ident($db:ident: Backend $(,)?) -> anyhow::Result<()> $body:block
    ) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(#[$meta])*
            async fn $name($db: ::refund_gateway_tests::Backend) -> ::anyhow::Result<()> $body

            #[tokio::test]
            async fn sqlite() -> ::anyhow::Result<()> {
                $name(::refund_gateway_tests::Backend::Sqlite).await
            }

            #[tokio::test]
            async fn postgres() -> ::anyhow::Result<()> {
                match ::refund_gateway_tests::Backend::postgres()? {
                    Some(db) => $name(db).await,
                    None => Ok(()),
                }
            }
        }
    };
    (
        $(#[$meta:meta])*
        fn $name:ident($db:ident: Backend $(,)?) -> anyhow::Result<()> $body:block
    ) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(#[$meta])*
            fn $name($db: ::refund_gateway_tests::Backend) -> ::anyhow::Result<()> $body

            #[test]
            fn sqlite() -> ::anyhow::Result<()> {
                $name(::refund_gateway_tests::Backend::Sqlite)
            }

            #[test]
            fn postgres() -> ::anyhow::Result<()> {
                match ::refund_gateway_tests::Backend::postgres()? {
                    Some(db) => $name(db),
                    None => Ok(()),
                }
            }
        }
    };
}

mod admin_health_reflection;
mod auth;
mod demo_mode;
mod errors;
mod exactly_once;
mod grpcurl;
mod hostile;
mod limits;
mod logs;
mod operations;
mod operator;
mod outbound;
mod partner;
mod property;
mod reads_release_extend;
mod receipts;
mod refund;
mod routing;
mod webhooks;

use klarna_sim::{FaultKind, FaultSpec, LoggedRequest, OrderSeed, SeededOrder, Simulator};
use refund_gateway_proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

/// Seeds a fully captured SE/SEK invoice order of `amount` in one capture.
pub fn captured_order(sim: &Simulator, amount: i64) -> SeededOrder {
    sim.seed_order(OrderSeed {
        order_amount: amount,
        captures: vec![amount],
        purchase_currency: Some("SEK".into()),
        purchase_country: Some("SE".into()),
        payment_method_type: Some("INVOICE".into()),
        ..Default::default()
    })
}

/// A refund request with a key and nothing else optional.
pub fn refund_request(key: &str, order_id: &str, amount: i64) -> pb::RefundOrderRequest {
    pb::RefundOrderRequest {
        idempotency_key: key.into(),
        order_id: order_id.into(),
        refunded_amount: amount,
        ..Default::default()
    }
}

/// A physical order line whose total is consistent.
pub fn line(name: &str, quantity: i64, unit_price: i64) -> pb::OrderLine {
    pb::OrderLine {
        r#type: pb::OrderLineType::Physical.into(),
        name: name.into(),
        quantity,
        unit_price,
        total_amount: quantity * unit_price,
        ..Default::default()
    }
}

/// A return-fee line of `-fee`.
pub fn return_fee(fee: i64) -> pb::OrderLine {
    pb::OrderLine {
        r#type: pb::OrderLineType::ReturnFee.into(),
        name: "Return fee".into(),
        quantity: 1,
        unit_price: -fee,
        total_amount: -fee,
        ..Default::default()
    }
}

/// The Klarna calls (method, path) the simulator received, admin calls excluded.
pub fn klarna_calls(sim: &Simulator) -> Vec<LoggedRequest> {
    sim.requests()
        .into_iter()
        .filter(|r| !r.path.starts_with("/__admin"))
        .collect()
}

/// Arms `kind` for the next `times` refund POSTs on `order_id`.
pub fn fault_refunds(sim: &Simulator, order_id: &str, times: u32, kind: FaultKind) {
    sim.inject_fault(FaultSpec {
        method: Some("POST".into()),
        path: format!("/ordermanagement/v1/orders/{order_id}/refunds"),
        times,
        kind,
    });
}

/// A fault answering `status` with Klarna's usual error body and no `Retry-After`.
pub fn status_fault(status: u16) -> FaultKind {
    FaultKind::Status {
        status,
        body: None,
        retry_after_secs: None,
    }
}

/// Asserts `status` has `code` and ErrorInfo `reason` in domain `refundgateway`.
#[track_caller]
pub fn assert_reason(status: &tonic::Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "refundgateway");
}

/// The BadRequest field paths of `status`.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|f| f.field.clone()).collect())
        .unwrap_or_default()
}

/// A test CA, a server certificate for 127.0.0.1 and a client certificate, all PEM.
/// The common name of [`test_pki`]'s client certificate.
pub const CLIENT_CN: &str = "pos-stockholm";

#[derive(Debug)]
pub struct Pki {
    /// The CA.
    pub ca: String,
    /// A server certificate for `localhost` and `127.0.0.1`, and its key.
    pub server: (String, String),
    /// A client certificate, and its key.
    pub client: (String, String),
}

pub fn test_pki() -> anyhow::Result<Pki> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "gateway test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, usage, cn: &str| -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        Ok((params.signed_by(&key, &issuer)?.pem(), key.serialize_pem()))
    };
    Ok(Pki {
        server: leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "localhost",
        )?,
        client: leaf(Vec::new(), ExtendedKeyUsagePurpose::ClientAuth, CLIENT_CN)?,
        ca,
    })
}

/// The SHA-256 of a caller's token, lower-case hex, as a callers file holds it.
pub fn token_sha256(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `message` with `authorization: Bearer <token>`.
pub fn with_token<T>(token: &str, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}
