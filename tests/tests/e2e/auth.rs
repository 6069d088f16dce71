//! Callers: bearer-token authentication in the inbound stack, and the grants the service
//! checks (RPCs, Klarna accounts, amount caps, the operations a caller sees). Refused calls
//! send nothing to Klarna and store nothing.

use std::time::Duration;

use refund_gateway_tests::{AppOptions, GrpcTlsOptions, TestApp, spawn_app_with, wait_until};
use tonic::Request;

use super::*;

const TILL: &str = "till-token-6f1c2a57";
const OPS: &str = "ops-token-3c1e4e0b";
const PARTNER: &str = "partner-token-9d42";

/// A point of sale (refunds up to 500 SEK on `default`), operations (everything), and a
/// partner service (partner refunds only).
fn callers() -> String {
    format!(
        "[[caller]]\nname = \"till\"\ntoken_sha256 = \"{}\"\nrpcs = [\"RefundOrder\", \"GetOrder\", \"ListOperations\"]\n\
         klarna_accounts = [\"default\"]\nmax_amount = {{ SEK = 50000 }}\n\n\
         [[caller]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nrpcs = [\"*\"]\nklarna_accounts = [\"*\"]\n\n\
         [[caller]]\nname = \"partner-service\"\ntoken_sha256 = \"{}\"\nrpcs = [\"RefundCapture\", \"RefundOrder\"]\n\
         klarna_accounts = [\"partner\"]\n",
        token_sha256(TILL),
        token_sha256(OPS),
        token_sha256(PARTNER)
    )
}

async fn app() -> anyhow::Result<TestApp> {
    spawn_app_with(AppOptions {
        callers: Some(callers()),
        ..AppOptions::default()
    })
    .await
}

/// `message` with `authorization: Bearer <token>`.
fn bearer<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}")
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    request.metadata_mut().insert("authorization", value);
    request
}

#[tokio::test]
async fn a_call_without_a_valid_token_is_unauthenticated() -> anyhow::Result<()> {
    let mut app = app().await?;
    let order = captured_order(&app.sim.sim, 10_000);
    let request = || refund_request("auth-1", &order.order_id, 100);
    let mut refusals = vec![app.client.refund_order(request()).await.err()];
    refusals.push(
        app.client
            .refund_order(bearer("not-a-token", request()))
            .await
            .err(),
    );
    let mut basic = Request::new(request());
    basic
        .metadata_mut()
        .insert("authorization", format!("Basic {TILL}").parse()?);
    refusals.push(app.client.refund_order(basic).await.err());
    refusals.push(
        app.client
            .refund_order(bearer(&format!("{TILL}x"), request()))
            .await
            .err(),
    );
    for refused in refusals {
        let refused = refused.unwrap_or_else(|| panic!("let in"));
        assert_reason(&refused, Code::Unauthenticated, "UNAUTHENTICATED");
        for name in ["till", "ops", "partner-service"] {
            assert!(!refused.message().contains(name), "{refused:?}");
        }
    }
    assert!(klarna_calls(&app.sim.sim).is_empty());

    // Health and reflection need no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await?;
    {
        use futures::StreamExt;
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        let mut reflection = ServerReflectionClient::new(app.channel.clone());
        let list = futures::stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]);
        let mut answers = reflection.server_reflection_info(list).await?.into_inner();
        let answer = answers
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("no reflection answer"))??;
        assert!(answer.message_response.is_some(), "{answer:?}");
    }
    let made = app
        .client
        .refund_order(bearer(TILL, request()))
        .await?
        .into_inner();
    assert!(!made.refund_id.is_empty());
    app.shutdown().await
}

#[tokio::test]
async fn grants_refuse_before_anything_is_sent_or_stored() -> anyhow::Result<()> {
    let mut app = app().await?;
    let order = captured_order(&app.sim.sim, 100_000);
    let refused = app
        .client
        .release_authorization(bearer(
            TILL,
            pb::ReleaseAuthorizationRequest {
                idempotency_key: "g-1".into(),
                order_id: order.order_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("released"));
    assert_reason(&refused, Code::PermissionDenied, "RPC_NOT_PERMITTED");

    let refused = app
        .client
        .refund_order(bearer(PARTNER, refund_request("g-2", &order.order_id, 100)))
        .await
        .err()
        .unwrap_or_else(|| panic!("refunded on an account not granted"));
    assert_reason(&refused, Code::PermissionDenied, "ACCOUNT_NOT_PERMITTED");

    // The cap is judged in the order's currency, read from Klarna when the request names none.
    let refused = app
        .client
        .refund_order(bearer(TILL, refund_request("g-3", &order.order_id, 50_001)))
        .await
        .err()
        .unwrap_or_else(|| panic!("refunded above the cap"));
    assert_reason(&refused, Code::PermissionDenied, "AMOUNT_OVER_CALLER_LIMIT");
    let eur = app.sim.sim.seed_order(OrderSeed {
        order_amount: 1000,
        captures: vec![1000],
        purchase_currency: Some("EUR".into()),
        purchase_country: Some("DE".into()),
        ..Default::default()
    });
    let refused = app
        .client
        .refund_order(bearer(TILL, refund_request("g-4", &eur.order_id, 10)))
        .await
        .err()
        .unwrap_or_else(|| panic!("refunded in a currency not granted"));
    assert_reason(&refused, Code::PermissionDenied, "CURRENCY_NOT_PERMITTED");

    assert!(
        klarna_calls(&app.sim.sim).iter().all(|r| r.method == "GET"),
        "only reads were sent"
    );
    let stored = app
        .client
        .list_operations(bearer(OPS, pb::ListOperationsRequest::default()))
        .await?
        .into_inner();
    assert!(stored.operations.is_empty(), "{:?}", stored.operations);
    // Within the cap it works, and a retry of a refused key is a fresh request.
    app.client
        .refund_order(bearer(TILL, refund_request("g-3", &order.order_id, 50_000)))
        .await?;
    app.shutdown().await
}

#[tokio::test]
async fn each_caller_sees_its_own_operations_and_operators_see_all() -> anyhow::Result<()> {
    let mut app = app().await?;
    let order = captured_order(&app.sim.sim, 10_000);
    app.client
        .refund_order(bearer(TILL, refund_request("mine-1", &order.order_id, 100)))
        .await?;
    app.client
        .refund_order(bearer(
            OPS,
            refund_request("theirs-1", &order.order_id, 100),
        ))
        .await?;
    let client = app.client.clone();
    let listed = |token: &'static str, caller: &str| {
        let mut client = client.clone();
        let filter = pb::ListOperationsRequest {
            caller: caller.into(),
            ..Default::default()
        };
        async move {
            client
                .list_operations(bearer(token, filter))
                .await
                .map(|r| {
                    r.into_inner()
                        .operations
                        .into_iter()
                        .map(|o| (o.caller, o.idempotency_key))
                        .collect::<Vec<_>>()
                })
        }
    };
    assert_eq!(
        listed(TILL, "").await?,
        [("till".to_owned(), "mine-1".to_owned())]
    );
    assert_eq!(
        listed(TILL, "ops").await?,
        [("till".to_owned(), "mine-1".to_owned())]
    );
    assert_eq!(listed(OPS, "").await?.len(), 2);
    // The same key under two callers is two operations: the caller scopes the key.
    app.client
        .refund_order(bearer(OPS, refund_request("mine-1", &order.order_id, 100)))
        .await?;
    assert_eq!(listed(OPS, "").await?.len(), 3);
    app.shutdown().await
}

#[tokio::test]
async fn a_caller_removed_from_the_file_is_refused_and_a_bad_file_changes_nothing()
-> anyhow::Result<()> {
    let mut app = app().await?;
    let order = captured_order(&app.sim.sim, 10_000);
    let path = app
        .callers_file
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no callers file"))?;
    // A file that does not parse is refused; the callers in force stay.
    std::fs::write(&path, "[[caller]]\nname = 42\n")?;
    app.client
        .refund_order(bearer(TILL, refund_request("r-1", &order.order_id, 100)))
        .await?;
    let without_till: String = callers()
        .split("\n\n")
        .filter(|t| !t.contains("name = \"till\""))
        .collect::<Vec<_>>()
        .join("\n\n");
    std::fs::write(&path, without_till)?;
    let client = app.client.clone();
    let order_id = order.order_id.clone();
    wait_until(
        "the removed caller to be refused",
        Duration::from_secs(30),
        async || {
            let mut client = client.clone();
            let refused = client
                .get_order(bearer(
                    TILL,
                    pb::GetOrderRequest {
                        order_id: order_id.clone(),
                        ..Default::default()
                    },
                ))
                .await
                .err();
            Ok::<_, anyhow::Error>(refused.filter(|s| s.code() == Code::Unauthenticated))
        },
    )
    .await?;
    app.client
        .get_order(bearer(
            OPS,
            pb::GetOrderRequest {
                order_id: order.order_id.clone(),
                ..Default::default()
            },
        ))
        .await?;
    app.shutdown().await
}

fn tls(pki: &crate::Pki, client_ca: bool, client: bool) -> GrpcTlsOptions {
    GrpcTlsOptions {
        server: (
            pki.server.0.clone().into_bytes(),
            pki.server.1.clone().into_bytes(),
        ),
        ca: pki.ca.clone().into_bytes(),
        client_ca: client_ca.then(|| pki.ca.clone().into_bytes()),
        client: client.then(|| {
            (
                pki.client.0.clone().into_bytes(),
                pki.client.1.clone().into_bytes(),
            )
        }),
    }
}

#[tokio::test]
async fn the_grpc_port_speaks_tls_and_requires_client_certificates_with_a_client_ca()
-> anyhow::Result<()> {
    let pki = crate::test_pki()?;
    let mut app = spawn_app_with(AppOptions {
        grpc_tls: Some(tls(&pki, false, false)),
        ..AppOptions::default()
    })
    .await?;
    assert!(app.grpc_url.starts_with("https://"));
    let order = captured_order(&app.sim.sim, 1_000);
    app.client
        .refund_order(refund_request("tls-1", &order.order_id, 100))
        .await?;
    app.shutdown().await?;

    let mut app = spawn_app_with(AppOptions {
        grpc_tls: Some(tls(&pki, true, true)),
        ..AppOptions::default()
    })
    .await?;
    let order = captured_order(&app.sim.sim, 1_000);
    app.client
        .refund_order(refund_request("mtls-1", &order.order_id, 100))
        .await?;
    app.shutdown().await?;

    let mut app = spawn_app_with(AppOptions {
        grpc_tls: Some(tls(&pki, true, false)),
        ..AppOptions::default()
    })
    .await?;
    let order = captured_order(&app.sim.sim, 1_000);
    let refused = app
        .client
        .refund_order(refund_request("mtls-2", &order.order_id, 100))
        .await
        .err()
        .unwrap_or_else(|| panic!("served without a client certificate"));
    assert_ne!(refused.code(), Code::Ok);
    assert!(klarna_calls(&app.sim.sim).is_empty());
    app.shutdown().await
}

backend_test! {
    /// A caller's cap per day holds across replicas sharing the operation store, and a refund
    /// that moved no money gives its amount back.
    async fn the_daily_cap_holds_across_replicas(db: Backend) -> anyhow::Result<()> {
        let callers = format!(
            "[[caller]]\nname = \"till\"\ntoken_sha256 = \"{}\"\nrpcs = [\"*\"]\n\
             klarna_accounts = [\"*\"]\nmax_amount_per_day = {{ SEK = 1000 }}\n",
            token_sha256(TILL)
        );
        let mut first = spawn_app_with(AppOptions {
            callers: Some(callers.clone()),
            ..db.options()
        })
        .await?;
        // A second gateway on the same store (PostgreSQL); SQLite belongs to one process.
        let mut second = match &db {
            refund_gateway_tests::Backend::Postgres(_) => Some(
                spawn_app_with(AppOptions {
                    callers: Some(callers),
                    klarna_url: Some(first.sim.base_url.clone()),
                    ..db.options()
                })
                .await?,
            ),
            refund_gateway_tests::Backend::Sqlite => None,
        };
        let order = captured_order(&first.sim.sim, 10_000);
        first
            .client
            .refund_order(bearer(TILL, refund_request("day-1", &order.order_id, 600)))
            .await?;
        let other = second.as_mut().map_or(&mut first.client, |s| &mut s.client);
        let refused = other
            .refund_order(bearer(TILL, refund_request("day-2", &order.order_id, 500)))
            .await
            .err()
            .unwrap_or_else(|| panic!("refunded past the daily cap"));
        assert_reason(&refused, Code::PermissionDenied, "DAILY_LIMIT_REACHED");
        // Klarna refuses this one (more than is captured and left): its 300 comes back.
        let over = captured_order(&first.sim.sim, 200);
        let failed = other
            .refund_order(bearer(TILL, refund_request("day-3", &over.order_id, 300)))
            .await
            .err()
            .unwrap_or_else(|| panic!("over refund accepted"));
        assert_eq!(failed.code(), Code::FailedPrecondition, "{failed:?}");
        other
            .refund_order(bearer(TILL, refund_request("day-4", &order.order_id, 400)))
            .await?;
        // A replay of a refund already counted does not count again.
        first
            .client
            .refund_order(bearer(TILL, refund_request("day-1", &order.order_id, 600)))
            .await?;
        if let Some(second) = second {
            second.shutdown().await?;
        }
        first.shutdown().await
    }
}

#[tokio::test]
async fn a_caller_bound_to_a_certificate_subject() -> anyhow::Result<()> {
    let pki = crate::test_pki()?;
    let subject = format!("CN={}", crate::CLIENT_CN);
    let callers = format!(
        "[[caller]]\nname = \"pos\"\ncertificate_subject = \"{subject}\"\nrpcs = [\"*\"]\nklarna_accounts = [\"*\"]\n\n\
         [[caller]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\ncertificate_subject = \"CN=someone-else\"\n\
         rpcs = [\"*\"]\nklarna_accounts = [\"*\"]\n",
        token_sha256(OPS)
    );
    let mut app = spawn_app_with(AppOptions {
        callers: Some(callers),
        grpc_tls: Some(tls(&pki, true, true)),
        ..AppOptions::default()
    })
    .await?;
    let order = captured_order(&app.sim.sim, 1_000);
    // No token: the client certificate's subject is the caller.
    let made = app
        .client
        .refund_order(refund_request("cert-1", &order.order_id, 100))
        .await?
        .into_inner();
    let listed = app
        .client
        .list_operations(pb::ListOperationsRequest::default())
        .await?
        .into_inner();
    assert_eq!(listed.operations[0].caller, "pos");
    assert_eq!(listed.operations[0].operation_id, made.operation_id);
    // A token bound to another subject is not valid on this connection.
    let refused = app
        .client
        .refund_order(bearer(OPS, refund_request("cert-2", &order.order_id, 100)))
        .await
        .err()
        .unwrap_or_else(|| panic!("a token bound to another certificate was let in"));
    assert_reason(&refused, Code::Unauthenticated, "UNAUTHENTICATED");
    app.shutdown().await
}
