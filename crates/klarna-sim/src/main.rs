//! `klarna-sim`: runs the Klarna simulator (Order Management and the partner Payments API) on
//! its own.
//!
//! Logs the bound address, the partner account, key and webhook settings (and the demo ids
//! with `--demo`) to stderr and stops on Ctrl-C or SIGTERM.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use klarna_sim::{
    DEFAULT_API_KEY, DEFAULT_PARTNER_ACCOUNT_ID, DEFAULT_PARTNER_API_KEY, DEFAULT_SIGNING_KEY_ID,
    DEFAULT_WEBHOOK_SECRET, SimConfig, Simulator, TlsConfig, WebhookMode, WebhookTarget,
};

/// In-memory simulator of Klarna's Order Management API v1 and partner Payments API, with an
/// admin API under /__admin/.
#[derive(Debug, Parser)]
#[command(name = "klarna-sim", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8089", env = "KLARNA_SIM_LISTEN")]
    listen: SocketAddr,
    /// API username accepted (HTTP Basic).
    #[arg(long, default_value = "sim-user", env = "KLARNA_SIM_USERNAME")]
    username: String,
    /// API password accepted (HTTP Basic).
    #[arg(long, default_value = "sim-password", env = "KLARNA_SIM_PASSWORD")]
    password: String,
    /// Klarna calls admitted per second; beyond that 429 TOO_MANY_REQUESTS. No limit if absent.
    #[arg(long, env = "KLARNA_SIM_RATE_LIMIT")]
    rate_limit: Option<u32>,
    /// How many calls the request log keeps (0 disables it).
    #[arg(
        long,
        default_value_t = 10_000,
        env = "KLARNA_SIM_REQUEST_LOG_CAPACITY"
    )]
    request_log_capacity: usize,
    /// Order Management API key accepted besides the username and password (Authorization:
    /// Basic <key>); empty: none.
    #[arg(long, default_value = DEFAULT_API_KEY, env = "KLARNA_SIM_API_KEY")]
    api_key: String,
    /// Partner account served under /v2/accounts/{id}.
    #[arg(long, default_value = DEFAULT_PARTNER_ACCOUNT_ID, env = "KLARNA_SIM_PARTNER_ACCOUNT_ID")]
    partner_account_id: String,
    /// Partner API key accepted (Authorization: Basic <key>).
    #[arg(long, default_value = DEFAULT_PARTNER_API_KEY, env = "KLARNA_SIM_PARTNER_API_KEY")]
    partner_api_key: String,
    /// Where webhook events are POSTed; without it they are dropped.
    #[arg(long, env = "KLARNA_SIM_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// Klarna-Signing-Key-Id of the webhook events.
    #[arg(long, default_value = DEFAULT_SIGNING_KEY_ID, env = "KLARNA_SIM_WEBHOOK_SIGNING_KEY_ID")]
    webhook_signing_key_id: String,
    /// HMAC-SHA256 secret the webhook events are signed with.
    #[arg(long, default_value = DEFAULT_WEBHOOK_SECRET, env = "KLARNA_SIM_WEBHOOK_SECRET")]
    webhook_secret: String,
    /// `immediate` or `manual` (held until POST /__admin/webhooks/flush).
    #[arg(long, default_value = "immediate", env = "KLARNA_SIM_WEBHOOK_MODE")]
    webhook_mode: WebhookMode,
    /// Retry unacknowledged webhooks on Klarna's schedule (10 s … 12 h) instead of the short
    /// test schedule (50 ms … 10 s).
    #[arg(long, env = "KLARNA_SIM_WEBHOOK_KLARNA_RETRIES")]
    webhook_klarna_retries: bool,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "KLARNA_SIM_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "KLARNA_SIM_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates issued by this PEM CA (mutual TLS; needs --tls-cert).
    #[arg(long, env = "KLARNA_SIM_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Seed the fixed demo orders and payment transactions.
    #[arg(long)]
    demo: bool,
    /// Answer 409 CONFLICT to a POST or PATCH whose Klarna-Idempotency-Key is still in use by
    /// a request being executed (instead of making it wait for that request's answer).
    #[arg(long, env = "KLARNA_SIM_CONFLICT_WHILE_RUNNING")]
    conflict_while_running: bool,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn tls_config(args: &Args) -> Result<Option<TlsConfig>, String> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let mut tls = TlsConfig::new(read(cert)?, read(key)?);
    if let Some(ca) = &args.tls_client_ca {
        tls = tls.with_client_ca(read(ca)?);
    }
    Ok(Some(tls))
}

/// Installs the SIGTERM and SIGINT (Ctrl-C) handlers now, before "listening" is printed, so a
/// signal sent as soon as the simulator announces itself shuts it down cleanly rather than
/// killing it; the future completes on the first of them.
#[cfg(unix)]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
        eprintln!("klarna-sim: shutting down");
    })
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    Ok(async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        eprintln!("klarna-sim: shutting down");
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let tls = match tls_config(&args) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("klarna-sim: {e}");
            return ExitCode::FAILURE;
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let webhook = args.webhook_url.clone().map(|url| WebhookTarget {
        url,
        signing_key_id: args.webhook_signing_key_id.clone(),
        secret: args.webhook_secret.clone(),
        mode: args.webhook_mode,
    });
    let sim = Simulator::new(SimConfig {
        username: args.username,
        password: args.password,
        api_key: args.api_key,
        rate_limit_per_second: args.rate_limit,
        request_log_capacity: args.request_log_capacity,
        partner_account_id: args.partner_account_id,
        partner_api_key: args.partner_api_key,
        webhook,
        webhook_retry_schedule: if args.webhook_klarna_retries {
            klarna_sim::klarna_retry_schedule()
        } else {
            klarna_sim::default_retry_schedule()
        },
        tls,
    });
    sim.set_conflict_while_running(args.conflict_while_running);
    let shutdown = match shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(e) => {
            eprintln!("klarna-sim: cannot listen for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("klarna-sim: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(args.listen);
    eprintln!("klarna-sim: listening on {scheme}://{addr} (admin API under /__admin/)");
    let config = sim.config();
    eprintln!(
        "klarna-sim: partner API under /v2/accounts/{} with key {}",
        config.partner_account_id, config.partner_api_key
    );
    match &config.webhook {
        Some(target) => eprintln!(
            "klarna-sim: webhooks to {} ({:?}), signing key {} secret {}",
            target.url, target.mode, target.signing_key_id, target.secret
        ),
        None => eprintln!("klarna-sim: no webhook target (set one with POST /__admin/webhooks)"),
    }
    if args.demo {
        for seeded in sim.seed_demo_orders() {
            eprintln!(
                "klarna-sim: demo order {} captures [{}]",
                seeded.order_id,
                seeded.capture_ids.join(", ")
            );
        }
        for seeded in sim.seed_demo_transactions() {
            eprintln!(
                "klarna-sim: demo transaction {} captures [{}]",
                seeded.payment_transaction_id,
                seeded.payment_capture_ids.join(", ")
            );
        }
    }
    match sim.serve(listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("klarna-sim: server error: {e}");
            ExitCode::FAILURE
        }
    }
}
