//! `refund-gateway`: the gRPC refund gateway for Klarna. Internal services call it to refund
//! Klarna orders, captures and partner payment transactions, release authorizations and
//! extend due dates; it validates every request before Klarna sees it, sends each money
//! movement under a deterministic Klarna idempotency key, and explains every refusal with
//! google.rpc error details. Klarna's webhooks arrive on a listener of their own.
//!
//! [`run`] is the whole server: `main` calls it with the configured listener, and the tests
//! call [`start`] (what `run` is made of) with a port-0 listener, so both run the same stack.
//!
//! # Layout
//! - [`config`]: settings from the TOML file, environment and flags; accounts and secrets.
//! - [`auth`]: the callers file, bearer-token authentication (a layer of the inbound stack)
//!   and the grants the service checks.
//! - [`convert`]: the one place API messages become domain values and back.
//! - [`gateway`]: the use cases, free of gRPC: state rules, then the Klarna call.
//! - [`protocol`]: the exactly-once protocol: claim, replay, leases, outcomes, reconciler.
//! - [`grpc`]: the tonic service implementing `RefundGatewayService`.
//! - [`status`]: the one mapping from domain errors to gRPC statuses with details.
//! - [`middleware`]: the RPC span and metrics of the inbound stack.
//! - [`inbound`]: the protective layers of the inbound stack: per-caller rate limit, load
//!   shedding, the message size answer.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`telemetry`]: log set-up (JSON or text) and the metrics recorder.
//! - [`webhooks`]: the receiver of Klarna's webhooks, on its own listener.
//! - [`demo`]: `--simulator`: the in-process Klarna simulator with its demo orders.
//! - [`ops_cli`]: `refund-gateway ops …`, the operator's command line over the RPCs.
//! - [`check_config`]: `refund-gateway check-config`, the configuration checked before a deploy.

pub mod admin;
pub mod auth;
pub mod check_config;
pub mod config;
pub mod convert;
pub mod demo;
pub mod gateway;
pub mod grpc;
pub mod inbound;
pub mod middleware;
pub mod operator;
pub mod ops_cli;
pub mod protocol;
#[cfg(test)]
mod readme;
pub mod status;
pub mod telemetry;
pub mod webhooks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use refund_gateway_klarna::{
    KlarnaClient, KlarnaClientConfig, OutboundLimiter, PaymentsClient, PaymentsClientConfig,
};
use refund_gateway_proto::v1::operator_service_server::OperatorServiceServer;
use refund_gateway_proto::v1::refund_gateway_service_server::RefundGatewayServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{AccountApi, AuthSetup, Config};
use crate::gateway::{Accounts, Gateway, KlarnaAccount};
use crate::grpc::RefundGatewayApi;
use crate::protocol::{Protocol, ProtocolSettings};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound or read.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// An account's Klarna client could not be built.
    #[error("account {account:?}: {message}")]
    Account {
        /// The account.
        account: String,
        /// The cause.
        message: String,
    },
    /// A store or route names an account that is not configured, or a store twice.
    #[error("routing: {0}")]
    Routing(#[from] refund_gateway_domain::RoutingConfigError),
    /// The reflection service could not be built from the descriptors.
    #[error("reflection: {0}")]
    Reflection(String),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The operation store could not be opened.
    #[error("operation store: {0}")]
    Store(#[from] refund_gateway_domain::StoreError),
    /// The callers file cannot be used.
    #[error("{0}")]
    Callers(#[from] auth::CallersError),
    /// Authentication would change the identity of operations not settled yet.
    #[error(
        "operations made without authentication are not settled: {0}. With authentication their \
         retries would be new operations (a second refund): settle them first (retry them, or let \
         the reconciler finish, with REFUND_GATEWAY_AUTH=none), or give the callers that made them \
         scope_as = \"anonymous\" in the callers file"
    )]
    AnonymousUnsettled(String),
    /// A server task panicked.
    #[error("server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let what = what.into();
    move |source| ServerError::Io { what, source }
}

/// A started gateway.
#[derive(Debug)]
pub struct RunningGateway {
    /// The gRPC address.
    pub grpc_addr: SocketAddr,
    /// The admin HTTP address.
    pub admin_addr: SocketAddr,
    /// The webhook listener's address, when it listens.
    pub webhook_addr: Option<SocketAddr>,
    /// The in-process simulator, with `--simulator`.
    pub simulator: Option<demo::DemoSimulator>,
    grpc: JoinHandle<Result<(), ServerError>>,
    admin: JoinHandle<Result<(), ServerError>>,
    webhooks: Option<JoinHandle<Result<(), ServerError>>>,
    background: Vec<JoinHandle<()>>,
    // The demo's operations live in a directory that dies with the process.
    _demo_data: Option<tempfile::TempDir>,
}

impl RunningGateway {
    /// Waits until the gateway has shut down (after the shutdown future completed and
    /// in-flight RPCs finished).
    pub async fn wait(self) -> Result<(), ServerError> {
        let grpc = self.grpc.await?;
        let admin = self.admin.await?;
        let webhooks = match self.webhooks {
            Some(task) => task.await?,
            None => Ok(()),
        };
        for task in self.background {
            task.await?;
        }
        if let Some(sim) = self.simulator {
            sim.shutdown().await;
        }
        grpc.and(admin).and(webhooks)
    }
}

/// Runs the gateway on `listener` until `shutdown` completes, then drains: health turns
/// NOT_SERVING, no new connections are accepted, in-flight RPCs finish.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    start(listener, config, shutdown).await?.wait().await
}

/// Starts the gateway on `listener` and returns once it accepts RPCs.
pub async fn start(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunningGateway, ServerError> {
    let attempt_timeout = config.klarna_attempt_timeout();
    let (simulator, accounts) = if config.settings.simulator {
        let sim = demo::DemoSimulator::start()
            .await
            .map_err(io_error("starting the Klarna simulator"))?;
        let accounts = sim.accounts().map_err(io_error("simulator accounts"))?;
        (Some(sim), accounts)
    } else {
        (None, config.accounts)
    };
    let mut clients: Vec<(String, KlarnaAccount)> = Vec::new();
    let mut limiters = Vec::new();
    let mut webhook_accounts = Vec::new();
    for account in accounts {
        let name = account.name.clone();
        if let AccountApi::Partner(partner) = &account.api {
            webhook_accounts.push(webhooks::WebhookAccount {
                name: name.clone(),
                partner_account_id: partner.partner_account_id.clone(),
                live: partner.live,
            });
        }
        if account.base_url.is_plain_http_off_loopback() {
            tracing::warn!(
                account = %name,
                host = account.base_url.host(),
                "Klarna account uses plain http to a host that is not loopback, as allowed by \
                 allow_plain_http or KLARNA_ALLOW_PLAIN_HTTP: its credentials cross the network \
                 in clear"
            );
        }
        let (client, limiter) = klarna_client(account, attempt_timeout)?;
        limiters.extend(limiter);
        tracing::info!(account = %name, kind = ?client.api(), "Klarna account configured");
        clients.push((name, client));
    }
    let accounts = Accounts::new(clients).with_routing(config.stores, config.routes)?;

    // The demo keeps its operations apart from any real store, in a directory removed at exit,
    // so a restart never replays answers about simulator orders that no longer exist.
    let demo_data = if simulator.is_some() {
        Some(tempfile::tempdir().map_err(io_error("creating the demo data directory"))?)
    } else {
        None
    };
    let data_dir = demo_data
        .as_ref()
        .map_or(config.settings.data_dir.as_path(), |d| d.path());
    let database = refund_gateway_store::DatabaseConfig::from_url_or_data_dir(
        config
            .database_url
            .as_ref()
            .filter(|_| simulator.is_none())
            .map(secrecy::ExposeSecret::expose_secret),
        data_dir,
    )?;
    let store = refund_gateway_store::connect(&database).await?;
    let gateway = Gateway::new(accounts.clone(), store.clone());
    let settings = &config.settings;
    let protocol = Protocol::new(
        store,
        ProtocolSettings {
            lease: settings.lease(),
            default_deadline: settings.default_deadline(),
            klarna_idempotency_window: settings.klarna_idempotency_window(),
            min_deadline: settings.min_deadline(),
            ..ProtocolSettings::default()
        },
        {
            let accounts = accounts.clone();
            Arc::new(move |name: &str| accounts.get(name))
        },
        Arc::new(convert::encode_resent),
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<RefundGatewayServiceServer<RefundGatewayApi>>()
        .await;
    health
        .set_serving::<OperatorServiceServer<operator::OperatorApi>>()
        .await;
    // Reflection serves our API, health, and google.rpc's error details, so grpcurl and
    // buf curl can decode the details of every error. v1alpha is what grpcurl 1.8 speaks.
    let descriptors = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(refund_gateway_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = descriptors()
        .build_v1()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    let reflection_v1alpha = descriptors()
        .build_v1alpha()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;

    let grpc_addr = listener
        .local_addr()
        .map_err(io_error("reading the gRPC address"))?;
    let (authentication, callers) = match &config.auth {
        AuthSetup::None => {
            tracing::warn!(
                "authentication is OFF: every caller is anonymous with every permission \
                 (development only; every listen address is loopback)"
            );
            (auth::Authentication::None, None)
        }
        AuthSetup::CallersFile(path) => {
            let registry = Arc::new(auth::CallerRegistry::open(path)?);
            if !registry.current().scopes_anonymous() {
                refuse_unsettled_anonymous(protocol.store().as_ref()).await?;
            }
            tracing::info!(
                callers = registry.current().len(),
                "callers file loaded; every refundgateway call needs a bearer token"
            );
            (
                auth::Authentication::Callers(registry.clone()),
                Some(registry),
            )
        }
    };
    let admin_listener = TcpListener::bind(config.settings.admin_listen)
        .await
        .map_err(io_error(format!(
            "binding the admin address {}",
            config.settings.admin_listen
        )))?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(io_error("reading the admin address"))?;
    // The one port exposed to Klarna: its own listener, never the admin port.
    let webhook_listener = match config.settings.webhook_address() {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(io_error(format!("binding the webhook address {addr}")))?,
        ),
        None => None,
    };
    let webhook_addr = match &webhook_listener {
        Some(l) => Some(
            l.local_addr()
                .map_err(io_error("reading the webhook address"))?,
        ),
        None => None,
    };
    let mut webhook_keys: Vec<webhooks::SigningKey> = config
        .webhook_keys
        .iter()
        .map(|k| webhooks::SigningKey {
            id: k.id.clone(),
            secret: k.secret.clone(),
        })
        .collect();
    if let (Some(sim), Some(addr)) = (&simulator, webhook_addr) {
        webhook_keys.push(sim.signing_key());
        sim.deliver_webhooks_to(addr);
    }

    // One shutdown signal fans out to the gRPC server and the admin endpoint.
    let (stop_tx, stop_rx) = watch::channel(false);
    let ready = Arc::new(AtomicBool::new(true));
    {
        let ready = ready.clone();
        let health = health.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: health NOT_SERVING, draining in-flight RPCs");
            ready.store(false, Ordering::Release);
            health
                .set_not_serving::<RefundGatewayServiceServer<RefundGatewayApi>>()
                .await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            let _ = stop_tx.send(true);
        });
    }

    let stopped = |mut rx: watch::Receiver<bool>| async move {
        // An error means the sender is gone, which only happens after it sent `true`.
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let mut background = vec![
        tokio::spawn(protocol::reconcile_forever(
            protocol.clone(),
            settings.reconcile_interval(),
            settings.reconcile_parallelism,
            stop_rx.clone(),
        )),
        tokio::spawn(purge_forever(
            protocol.store().clone(),
            settings.retention(),
            stop_rx.clone(),
        )),
    ];
    // The recorder first: a metric recorded before it is installed is lost (the
    // inbound stack's gauge of waiting calls is registered when the stack is built).
    let metrics = telemetry::metrics_handle();
    metrics::gauge!(
        "refund_gateway_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => env!("REFUND_GATEWAY_COMMIT"),
    )
    .set(1.0);
    let inbound = inbound::inbound_stack(
        authentication,
        settings.max_concurrent_rpcs,
        settings.max_running_rpcs,
        settings.max_message_bytes,
        protocol.settings().deadline_margin,
    );
    background.push(tokio::spawn(telemetry::metrics_upkeep(stop_rx.clone())));
    background.push(tokio::spawn(telemetry::attention_gauges(
        protocol.store().clone(),
        stop_rx.clone(),
    )));
    if let Some(registry) = callers {
        background.push(tokio::spawn(registry.watch(stop_rx.clone())));
    }

    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.grpc_tls {
        use secrecy::ExposeSecret;
        let mut tls_config = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(&tls.cert_pem, tls.key_pem.expose_secret()),
        );
        if let Some(ca) = &tls.client_ca_pem {
            // With a client CA, tonic requires a client certificate issued by it.
            tls_config = tls_config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        builder = builder.tls_config(tls_config)?;
        tracing::info!(
            client_certificates_required = tls.client_ca_pem.is_some(),
            "TLS on the gRPC port"
        );
    }
    let grpc_server = builder
        .layer(inbound)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            RefundGatewayServiceServer::new(RefundGatewayApi::new(
                gateway.clone(),
                protocol.clone(),
            ))
            .max_decoding_message_size(settings.max_message_bytes),
        )
        .add_service(
            OperatorServiceServer::new(operator::OperatorApi::new(gateway, protocol.clone()))
                .max_decoding_message_size(settings.max_message_bytes),
        )
        .serve_with_incoming_shutdown(
            // No Nagle delay: an answer is small and is sent as soon as it is ready.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stopped(stop_rx.clone()),
        );
    let grpc = tokio::spawn(async move { grpc_server.await.map_err(ServerError::from) });

    let admin_router = admin::router(admin::AdminState {
        ready,
        limiters: Arc::new(limiters),
        metrics,
    });
    let webhooks = match webhook_listener {
        Some(listener) => {
            let router = webhooks::router(webhooks::WebhookReceiver {
                keys: Arc::new(webhook_keys),
                accounts: Arc::new(webhook_accounts),
                protocol: protocol.clone(),
            });
            let rx = stop_rx.clone();
            Some(tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stopped(rx))
                    .await
                    .map_err(io_error("webhook listener"))
            }))
        }
        None => None,
    };
    let admin_rx = stop_rx;
    let admin = tokio::spawn(async move {
        axum::serve(admin_listener, admin_router)
            .with_graceful_shutdown(stopped(admin_rx))
            .await
            .map_err(io_error("admin endpoint"))
    });

    // The webhook address only when it listens (a bare `127.0.0.1:9465`, not `Some(…)`).
    tracing::info!(
        %grpc_addr,
        %admin_addr,
        webhook_addr = webhook_addr.map(tracing::field::display),
        worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "refund gateway listening"
    );
    Ok(RunningGateway {
        grpc_addr,
        admin_addr,
        webhook_addr,
        simulator,
        grpc,
        admin,
        webhooks,
        background,
        _demo_data: demo_data,
    })
}

/// The Klarna client of `account`, built as the gateway uses it (each attempt limited to
/// `attempt_timeout`, the account's outbound rate limit applied), with its outbound limiter
/// when it has one. `refund-gateway check-config` builds its clients here too.
pub(crate) fn klarna_client(
    account: config::Account,
    attempt_timeout: Duration,
) -> Result<(KlarnaAccount, Option<OutboundLimiter>), ServerError> {
    let name = account.name;
    let refused = |e: refund_gateway_klarna::KlarnaConfigError| ServerError::Account {
        account: name.clone(),
        message: e.to_string(),
    };
    match account.api {
        AccountApi::OrderManagement(credentials) => {
            let mut client_config = KlarnaClientConfig::new(account.base_url, credentials);
            client_config.extra_root_certificates = account.extra_roots;
            client_config.transport.attempt_timeout = attempt_timeout;
            client_config.transport.rate_limit = account.rate_limit;
            let client = KlarnaClient::new(client_config).map_err(refused)?;
            let limiter = client.outbound_limiter().cloned();
            Ok((KlarnaAccount::OrderManagement(Arc::new(client)), limiter))
        }
        AccountApi::Partner(partner) => {
            let mut client_config =
                PaymentsClientConfig::new(account.base_url, partner.api_key, partner.path_prefix);
            client_config.on_behalf_of = partner.on_behalf_of;
            client_config.client_identity = partner.client_identity;
            client_config.extra_root_certificates = account.extra_roots;
            client_config.transport.attempt_timeout = attempt_timeout;
            client_config.transport.rate_limit = account.rate_limit;
            let client = PaymentsClient::new(client_config).map_err(refused)?;
            let limiter = client.outbound_limiter().cloned();
            Ok((KlarnaAccount::Partner(Arc::new(client)), limiter))
        }
    }
}

/// Refuses to start with authentication while operations of `anonymous` are not final: their
/// callers' retries would carry a new identity, hence a new operation id and Klarna key.
async fn refuse_unsettled_anonymous(
    store: &dyn refund_gateway_domain::OperationStore,
) -> Result<(), ServerError> {
    let mut unsettled = Vec::new();
    for state in [
        refund_gateway_domain::OperationState::InFlight,
        refund_gateway_domain::OperationState::Pending,
    ] {
        let filter = refund_gateway_domain::OperationFilter {
            caller: Some(refund_gateway_domain::Caller::anonymous().to_string()),
            state: Some(state),
            ..Default::default()
        };
        let page = store.list(&filter, 20, None).await?;
        unsettled.extend(
            page.operations
                .into_iter()
                .map(|(op, _)| format!("{} ({})", op.new.operation_id, op.state)),
        );
    }
    if unsettled.is_empty() {
        Ok(())
    } else {
        Err(ServerError::AnonymousUnsettled(unsettled.join(", ")))
    }
}

/// Drops the stored answer bodies of operations final for longer than `retention`, hourly;
/// their identity, outcome and audit events stay forever.
async fn purge_forever(
    store: Arc<dyn refund_gateway_domain::OperationStore>,
    retention: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let cut = time::OffsetDateTime::now_utc() - retention;
        match store.purge(cut).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                answers_dropped = n,
                "dropped the answer bodies of operations past retention"
            ),
            Err(e) => tracing::warn!(error = %e, "purge failed"),
        }
    }
}
