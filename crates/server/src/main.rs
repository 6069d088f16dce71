//! The `refund-gateway` binary: parses flags, loads the configuration, installs logging and
//! runs the server until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use refund_gateway::config::{self, LogFormat, ProcessEnv};

/// gRPC refund gateway for Klarna.
///
/// Klarna credentials come from the environment (KLARNA_USERNAME, KLARNA_PASSWORD, and
/// KLARNA_API_URL or KLARNA_REGION=eu|na|oc + KLARNA_ENVIRONMENT=playground|live, for the
/// account named `default`) or from [accounts.<name>] tables in the --config file, which name
/// the variable or file holding each secret (password_env / password_file, username_env /
/// username_file). Without any account and without --simulator the gateway refuses to start.
#[derive(Debug, Parser)]
#[command(name = "refund-gateway", version, about, long_about)]
struct Cli {
    /// TOML configuration file (settings, [accounts.<name>] tables).
    #[arg(long, env = "REFUND_GATEWAY_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,

    /// Run against an in-process Klarna simulator seeded with demo orders (fixed ids, see the
    /// README). For demos and local exploration; never falls back to it silently.
    #[arg(long)]
    simulator: bool,

    /// gRPC listen address [env: REFUND_GATEWAY_LISTEN; default 127.0.0.1:50051].
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<SocketAddr>,

    /// Admin HTTP listen address for /healthz, /readyz and /metrics
    /// [env: REFUND_GATEWAY_ADMIN_LISTEN; default 127.0.0.1:9464].
    #[arg(long, value_name = "HOST:PORT")]
    admin_listen: Option<SocketAddr>,

    /// Directory for the gateway's data [env: REFUND_GATEWAY_DATA_DIR; default ./var].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Log format [default: json].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match serve(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("refund-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let mut settings = config::load_settings(cli.config.as_deref(), &ProcessEnv)?;
    if let Some(a) = cli.listen {
        settings.listen = a;
    }
    if let Some(a) = cli.admin_listen {
        settings.admin_listen = a;
    }
    if let Some(d) = cli.data_dir {
        settings.data_dir = d;
    }
    if let Some(f) = cli.log_format {
        settings.log_format = f;
    }
    settings.simulator |= cli.simulator;
    refund_gateway::telemetry::init_logs(settings.log_format);
    let config = config::resolve(settings, &ProcessEnv)?;
    let listener = tokio::net::TcpListener::bind(config.settings.listen)
        .await
        .with_context(|| format!("binding {}", config.settings.listen))?;
    refund_gateway::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
