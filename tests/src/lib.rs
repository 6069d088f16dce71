//! Test support for the end-to-end suite and the benchmark: [`spawn_app`] starts the real
//! gateway stack (the same [`refund_gateway::start`] that `main` runs) on port 0 against a
//! real Klarna simulator over HTTP, and [`LogCapture`] records every log line the process
//! writes so tests can check what never appears in them.
//!
//! # Layout
//! - [`spawn_app`] / [`TestApp`]: a running gateway, its gRPC client and its simulator.
//! - [`LogCapture`]: the process-wide JSON log sink of the test binary.
//! - [`Backend`] / [`fresh_postgres_database`]: the store a gateway under test uses, and a
//!   fresh PostgreSQL database (or a `SKIPPED (no PostgreSQL)` line when there is no server).
//! - [`wait_until`]: waiting for a condition that cannot be awaited, re-checking it.
//! - [`redis::RedisServer`]: a throwaway `redis-server` for the shared outbound limit.

pub mod fuzz;
pub mod load;
pub mod prefill;
pub mod process;
pub mod redis;
pub mod span_sink;
mod wait;

pub use wait::{POLL_INTERVAL, TimedOut, wait_until};

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use klarna_sim::{RunningSimulator, SimConfig};
use refund_gateway::RunningGateway;
use refund_gateway::config::{
    Account, AccountApi, Config, DEFAULT_ACCOUNT, PARTNER_ACCOUNT, PartnerAccount, WebhookKey,
};
use refund_gateway_domain::OperationStore;
use refund_gateway_klarna::{BaseUrl, KlarnaCredentials};
use refund_gateway_proto::v1::refund_gateway_service_client::RefundGatewayServiceClient;
use refund_gateway_store::DatabaseConfig;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// FindOrder with `request` until it finds the order: an order's references are indexed in
/// the background after the read or refund that learned them, so until then the answer is
/// NOT_FOUND. Any other error ends the wait; `what` names the wait in a timeout.
pub async fn find_once_indexed(
    client: &RefundGatewayServiceClient<Channel>,
    what: &str,
    request: refund_gateway_proto::v1::FindOrderRequest,
) -> anyhow::Result<refund_gateway_proto::v1::FindOrderResponse> {
    wait_until(
        what,
        std::time::Duration::from_secs(30),
        async || -> anyhow::Result<Option<refund_gateway_proto::v1::FindOrderResponse>> {
            match client.clone().find_order(request.clone()).await {
                Ok(found) => Ok(Some(found.into_inner())),
                Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
                Err(status) => Err(status.into()),
            }
        },
    )
    .await
}

/// A gateway started for one test, with the simulator it talks to.
#[derive(Debug)]
pub struct TestApp {
    /// A client connected to the gateway.
    pub client: RefundGatewayServiceClient<Channel>,
    /// The gRPC channel (for health and reflection clients).
    pub channel: Channel,
    /// The gateway.
    pub gateway: Option<RunningGateway>,
    /// The simulator the gateway's `default` account points at.
    pub sim: RunningSimulator,
    /// `http://host:port` of the gRPC endpoint.
    pub grpc_url: String,
    /// `http://host:port` of the admin endpoint.
    pub admin_url: String,
    /// `http://host:port/webhooks/klarna`, where the gateway receives Klarna's webhooks.
    pub webhook_url: Option<String>,
    /// The callers file, when authentication is on.
    pub callers_file: Option<std::path::PathBuf>,
    /// The simulators of [`AppOptions::extra_accounts`], by account name.
    pub extra_sims: Vec<(String, RunningSimulator)>,
    stop: Option<oneshot::Sender<()>>,
    /// `DATABASE_URL` of the gateway, `None` for its SQLite file.
    database_url: Option<String>,
    data_dir: tempfile::TempDir,
}

/// No environment variables at all: tests read files as the gateway does, unaffected by the
/// environment they run in.
struct NoEnvironment;

impl refund_gateway::config::Environ for NoEnvironment {
    fn var(&self, _name: &str) -> Option<String> {
        None
    }
}

impl TestApp {
    /// The simulator behind the account `name` ([`AppOptions::extra_accounts`]).
    pub fn account_sim(&self, name: &str) -> &klarna_sim::Simulator {
        self.extra_sims
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| &s.sim)
            .unwrap_or_else(|| panic!("no account {name} in this test app"))
    }

    /// A second, independent connection to the gateway's operation store, as another process
    /// would open it (for the purge and for seeding operations). Opening a second SQLite store
    /// takes over the file's IN_FLIGHT claims, as a restarted gateway would: open it when
    /// nothing is in flight.
    pub async fn second_store(&self) -> anyhow::Result<Arc<dyn OperationStore>> {
        let config = DatabaseConfig::from_url_or_data_dir(
            self.database_url.as_deref(),
            self.data_dir.path(),
        )?;
        Ok(refund_gateway_store::connect(&config).await?)
    }

    /// Signals shutdown and waits until the gateway has drained.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(gateway) = self.gateway.take() {
            gateway.wait().await?;
        }
        Ok(())
    }
}

/// How [`spawn_app_with`] builds the gateway.
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    /// The simulator's configuration.
    pub sim: SimConfig,
    /// Credentials the gateway uses, when they should differ from the simulator's.
    pub gateway_credentials: Option<(String, String)>,
    /// Point the account at this URL instead of the simulator (e.g. a closed port).
    pub klarna_url: Option<String>,
    /// Klarna attempt timeout in milliseconds (default: the gateway's).
    pub attempt_timeout_ms: Option<u64>,
    /// Leave logging alone (the benchmark): no DEBUG capture of every line.
    pub no_log_capture: bool,
    /// Reconciler interval in milliseconds (default: the gateway's).
    pub reconcile_interval_ms: Option<u64>,
    /// Klarna idempotency window in seconds (default: the gateway's 23 h).
    pub idempotency_window_secs: Option<u64>,
    /// `DATABASE_URL` of a PostgreSQL database (default: SQLite in a temporary directory).
    pub database_url: Option<String>,
    /// Lease of a claimed operation in seconds (default: the gateway's 30 s).
    pub lease_secs: Option<u64>,
    /// How the simulator delivers refund webhooks to the gateway (default: at once).
    pub webhook_mode: klarna_sim::WebhookMode,
    /// The partner account's mutual TLS: the client identity (certificate chain and key, PEM)
    /// and the CA that signed the simulator's certificate.
    pub partner_tls: Option<PartnerTls>,
    /// Webhook signing keys (id, secret) the gateway holds besides the simulator's.
    pub extra_webhook_keys: Vec<(String, String)>,
    /// A callers file (TOML): authentication on. Without it every caller is `anonymous`.
    pub callers: Option<String>,
    /// `max_concurrent_rpcs` (default: the gateway's 2048).
    pub max_concurrent_rpcs: Option<usize>,
    /// `max_running_rpcs` (default: the gateway's 512).
    pub max_running_rpcs: Option<usize>,
    /// `min_deadline_ms` (default: the gateway's 200).
    pub min_deadline_ms: Option<u64>,
    /// `max_message_bytes` (default: the gateway's 4 MiB).
    pub max_message_bytes: Option<usize>,
    /// Klarna requests per second of both accounts (the outbound limit; default off).
    pub klarna_requests_per_second: Option<u32>,
    /// The burst of that limit (default: one second's worth).
    pub klarna_burst: Option<u32>,
    /// `REDIS_URL`: the outbound limit shared through this Redis.
    pub redis_url: Option<String>,
    /// TLS on the gRPC port, and how the test's client connects.
    pub grpc_tls: Option<GrpcTlsOptions>,
    /// More Order Management accounts, by name, each on a simulator of its own
    /// ([`TestApp::account_sim`]): orders of one are unknown to the others.
    pub extra_accounts: Vec<String>,
    /// `[[store]]` and `[[route]]` tables (TOML), read as the gateway reads its file.
    pub routing_toml: Option<String>,
}

/// TLS on the gateway's gRPC port, and the test client's side of it (all PEM).
#[derive(Debug, Clone)]
pub struct GrpcTlsOptions {
    /// The gateway's certificate chain and key.
    pub server: (Vec<u8>, Vec<u8>),
    /// The CA that signed it, which the client trusts.
    pub ca: Vec<u8>,
    /// Client certificates of this CA are required, when set.
    pub client_ca: Option<Vec<u8>>,
    /// The client's certificate and key, when it presents one.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

/// The partner account's side of mutual TLS with the simulator.
#[derive(Debug, Clone)]
pub struct PartnerTls {
    /// Client certificate chain and private key, PEM; `None` to connect without one.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
    /// The CA that signed the simulator's server certificate, PEM.
    pub ca_pem: Vec<u8>,
}

/// Starts a simulator and a gateway whose `default` account points at it.
pub async fn spawn_app() -> anyhow::Result<TestApp> {
    spawn_app_with(AppOptions::default()).await
}

/// Starts a simulator and a gateway configured by `options`.
pub async fn spawn_app_with(options: AppOptions) -> anyhow::Result<TestApp> {
    if !options.no_log_capture {
        LogCapture::install();
    }
    let sim = klarna_sim::spawn(options.sim.clone()).await?;
    let (username, password) = options
        .gateway_credentials
        .clone()
        .unwrap_or_else(|| (sim.username().to_owned(), sim.password().to_owned()));
    let data_dir = tempfile::tempdir()?;
    let mut config = Config::for_simulator(data_dir.path());
    config.settings.simulator = false;
    if let Some(ms) = options.attempt_timeout_ms {
        config.settings.klarna_attempt_timeout_ms = ms;
    }
    if let Some(ms) = options.reconcile_interval_ms {
        config.settings.reconcile_interval_ms = ms;
    }
    if let Some(secs) = options.idempotency_window_secs {
        config.settings.klarna_idempotency_window_secs = secs;
    }
    if let Some(secs) = options.lease_secs {
        config.settings.lease_secs = secs;
    }
    if let Some(n) = options.max_concurrent_rpcs {
        config.settings.max_concurrent_rpcs = n;
    }
    if let Some(n) = options.max_running_rpcs {
        config.settings.max_running_rpcs = n;
    }
    if let Some(ms) = options.min_deadline_ms {
        config.settings.min_deadline_ms = ms;
    }
    if let Some(n) = options.max_message_bytes {
        config.settings.max_message_bytes = n;
    }
    config.database_url = options.database_url.clone().map(SecretString::from);
    let url = options
        .klarna_url
        .clone()
        .unwrap_or_else(|| sim.base_url.clone());
    let partner_tls = options.partner_tls.clone();
    let rate_limit = |account: &str| {
        options.klarna_requests_per_second.map(|rps| {
            let limit = refund_gateway_klarna::OutboundRateLimit {
                burst: options.klarna_burst.unwrap_or(rps),
                ..refund_gateway_klarna::OutboundRateLimit::new(rps)
            };
            match &options.redis_url {
                Some(url) => limit.shared_through(SecretString::from(url.clone()), account),
                None => limit,
            }
        })
    };
    config.accounts = vec![
        Account {
            name: DEFAULT_ACCOUNT.to_owned(),
            rate_limit: rate_limit(DEFAULT_ACCOUNT),
            base_url: BaseUrl::parse(&url)?,
            extra_roots: Vec::new(),
            api: AccountApi::OrderManagement(KlarnaCredentials::new(username, password)),
        },
        Account {
            name: PARTNER_ACCOUNT.to_owned(),
            rate_limit: rate_limit(PARTNER_ACCOUNT),
            base_url: BaseUrl::parse(&url)?,
            extra_roots: partner_tls.iter().map(|tls| tls.ca_pem.clone()).collect(),
            api: AccountApi::Partner(PartnerAccount {
                api_key: SecretString::from(sim.partner_api_key().to_owned()),
                partner_account_id: sim.partner_account_id().to_owned(),
                path_prefix: format!("/v2/accounts/{}", sim.partner_account_id()),
                on_behalf_of: None,
                client_identity: partner_tls
                    .as_ref()
                    .and_then(|tls| tls.client.clone())
                    .map(|(cert, key)| refund_gateway_klarna::ClientIdentity::from_pem(cert, key)),
                live: false,
            }),
        },
    ];
    let mut extra_sims = Vec::new();
    for name in &options.extra_accounts {
        let extra = klarna_sim::spawn(SimConfig::default()).await?;
        config.accounts.push(Account {
            name: name.clone(),
            rate_limit: rate_limit(name),
            base_url: BaseUrl::parse(&extra.base_url)?,
            extra_roots: Vec::new(),
            api: AccountApi::OrderManagement(KlarnaCredentials::new(
                extra.username(),
                extra.password().to_owned(),
            )),
        });
        extra_sims.push((name.clone(), extra));
    }
    if let Some(toml) = &options.routing_toml {
        let path = data_dir.path().join("routing.toml");
        std::fs::write(&path, toml)?;
        let settings = refund_gateway::config::load_settings(Some(&path), &NoEnvironment)?;
        (config.stores, config.routes) = refund_gateway::config::routing_tables(&settings)?;
    }
    config.webhook_keys = std::iter::once((
        klarna_sim::DEFAULT_SIGNING_KEY_ID.to_owned(),
        klarna_sim::DEFAULT_WEBHOOK_SECRET.to_owned(),
    ))
    .chain(options.extra_webhook_keys.iter().cloned())
    .map(|(id, secret)| WebhookKey {
        id: Some(id),
        secret: SecretString::from(secret),
    })
    .collect();
    if let Some(tls) = &options.grpc_tls {
        config.grpc_tls = Some(refund_gateway::config::GrpcTls {
            cert_pem: tls.server.0.clone(),
            key_pem: SecretString::from(String::from_utf8(tls.server.1.clone())?),
            client_ca_pem: tls.client_ca.clone(),
        });
    }
    if let Some(callers) = &options.callers {
        let path = data_dir.path().join("callers.toml");
        std::fs::write(&path, callers)?;
        config.auth = refund_gateway::config::AuthSetup::CallersFile(path);
    }
    let mut app = start_gateway(config, sim, data_dir, options.grpc_tls.as_ref()).await?;
    app.extra_sims = extra_sims;
    if let Some(webhook_url) = &app.webhook_url {
        app.sim.sim.set_webhook_target(klarna_sim::WebhookTarget {
            mode: options.webhook_mode,
            ..klarna_sim::WebhookTarget::new(webhook_url.clone())
        });
    }
    Ok(app)
}

/// Starts the gateway in `--simulator` mode (its own in-process simulator with demo orders).
/// The returned app's `sim` is an idle spare; use `gateway.simulator` for the demo one.
pub async fn spawn_demo_app() -> anyhow::Result<TestApp> {
    LogCapture::install();
    let data_dir = tempfile::tempdir()?;
    let config = Config::for_simulator(data_dir.path());
    let spare = klarna_sim::spawn(SimConfig::default()).await?;
    start_gateway(config, spare, data_dir, None).await
}

async fn start_gateway(
    config: Config,
    sim: RunningSimulator,
    data_dir: tempfile::TempDir,
    tls: Option<&GrpcTlsOptions>,
) -> anyhow::Result<TestApp> {
    let database_url = config
        .database_url
        .as_ref()
        .filter(|_| !config.settings.simulator)
        .map(|url| url.expose_secret().to_owned());
    let config_auth = config.auth.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let gateway = refund_gateway::start(listener, config, async move {
        let _ = stopped.await;
    })
    .await?;
    let grpc_url = match tls {
        Some(_) => format!("https://localhost:{}", gateway.grpc_addr.port()),
        None => format!("http://{}", gateway.grpc_addr),
    };
    let admin_url = format!("http://{}", gateway.admin_addr);
    let webhook_url = gateway
        .webhook_addr
        .map(|a| format!("http://{a}{}", refund_gateway::webhooks::WEBHOOK_PATH));
    let callers_file = match &config_auth {
        refund_gateway::config::AuthSetup::CallersFile(path) => Some(path.clone()),
        refund_gateway::config::AuthSetup::None => None,
    };
    let mut endpoint = Channel::from_shared(grpc_url.clone())?;
    if let Some(tls) = tls {
        let mut client_tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca))
            .domain_name("localhost");
        if let Some((cert, key)) = &tls.client {
            client_tls = client_tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(client_tls)?;
    }
    // A TLS handshake refused (no client certificate) shows on the first call, not here.
    let channel = endpoint.connect_lazy();
    Ok(TestApp {
        client: RefundGatewayServiceClient::new(channel.clone()),
        channel,
        gateway: Some(gateway),
        sim,
        grpc_url,
        admin_url,
        webhook_url,
        callers_file,
        extra_sims: Vec::new(),
        stop: Some(stop),
        database_url,
        data_dir,
    })
}

/// The environment variable naming the PostgreSQL server the tests may use (an admin URL such
/// as `postgres://postgres@127.0.0.1:5432/postgres`); the README's test command starts one.
pub const TEST_DATABASE_URL: &str = "REFUND_GATEWAY_TEST_DATABASE_URL";

/// The start of the line a PostgreSQL test writes to stderr when it is skipped for lack of a
/// server; the README's test command counts these lines in its summary.
pub const SKIPPED_NO_POSTGRES: &str = "SKIPPED (no PostgreSQL)";

/// Says on stderr that the current test is skipped for lack of PostgreSQL:
/// `SKIPPED (no PostgreSQL): <test name>`. libtest names the thread that runs a test after
/// the test, so call this from the test's own thread (a test body, also under
/// `#[tokio::test]`), not from a spawned task.
pub fn report_skipped_for_lack_of_postgres() {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test>");
    // To the stderr handle itself, not through `eprintln!`: libtest swallows what a passing
    // test prints with `eprintln!`, and this line must reach the test command's summary.
    // One write of the whole line, so that it is not interleaved with other output.
    let line = format!("{SKIPPED_NO_POSTGRES}: {test}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// A fresh, empty PostgreSQL database on the test server, created with `psql`, or `None` when
/// no server is configured outside CI: then the test must end at once, and a
/// `SKIPPED (no PostgreSQL): <test name>` line on stderr says it did not run (libtest has no
/// skipped state; the README's test command counts these lines). Under `CI=true` a missing
/// server is an error, so the PostgreSQL half of the suite can never be skipped there.
pub fn fresh_postgres_database() -> anyhow::Result<Option<String>> {
    let Some(admin) = std::env::var(TEST_DATABASE_URL)
        .ok()
        .filter(|u| !u.is_empty())
    else {
        if std::env::var("CI").as_deref() == Ok("true") {
            anyhow::bail!(
                "{TEST_DATABASE_URL} is not set; run the README's test command, which starts PostgreSQL"
            );
        }
        report_skipped_for_lack_of_postgres();
        return Ok(None);
    };
    let name = format!("e2e_{}", uuid::Uuid::new_v4().simple());
    let status = std::process::Command::new("psql")
        .arg(&admin)
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!("CREATE DATABASE {name}"))
        .status()?;
    anyhow::ensure!(status.success(), "psql could not create database {name}");
    let (base, _) = admin
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("{TEST_DATABASE_URL} has no database path"))?;
    Ok(Some(format!("{base}/{name}")))
}

/// The operation store of a gateway under test. A test on the backends takes one and runs
/// once per variant (the end-to-end suite's `backend_test!` defines both runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// SQLite in the gateway's temporary data directory (the default).
    Sqlite,
    /// A database of its own on the test PostgreSQL server: its URL.
    Postgres(String),
}

impl Backend {
    /// A fresh PostgreSQL database as a backend, or `None` when the test is skipped for lack
    /// of a server (see [`fresh_postgres_database`], which has said so on stderr).
    pub fn postgres() -> anyhow::Result<Option<Self>> {
        Ok(fresh_postgres_database()?.map(Self::Postgres))
    }

    /// `DATABASE_URL` of the gateway: `None` for SQLite.
    pub fn database_url(&self) -> Option<String> {
        match self {
            Self::Sqlite => None,
            Self::Postgres(url) => Some(url.clone()),
        }
    }

    /// The default [`AppOptions`] on this backend; set other fields with
    /// `AppOptions { reconcile_interval_ms: Some(50), ..db.options() }`.
    pub fn options(&self) -> AppOptions {
        AppOptions {
            database_url: self.database_url(),
            ..AppOptions::default()
        }
    }
}

/// Every log line the test process wrote, as the gateway's JSON formatter wrote it.
#[derive(Debug, Clone, Default)]
pub struct LogCapture {
    lines: Arc<Mutex<Vec<u8>>>,
}

impl LogCapture {
    fn global() -> &'static LogCapture {
        static CAPTURE: OnceLock<LogCapture> = OnceLock::new();
        CAPTURE.get_or_init(LogCapture::default)
    }

    /// Installs the capture as the process's subscriber, at DEBUG so debug lines are
    /// checked. Idempotent.
    pub fn install() {
        static INSTALLED: OnceLock<()> = OnceLock::new();
        INSTALLED.get_or_init(|| {
            let capture = Self::global().clone();
            let _ = tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(true)
                .with_max_level(tracing::Level::DEBUG)
                .with_writer(move || capture.clone())
                .try_init();
        });
    }

    /// Everything captured so far.
    pub fn contents() -> String {
        let lines = Self::global()
            .lines
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&lines).into_owned()
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
