//! The `refund-gateway` binary: parses flags, loads the configuration, installs logging and
//! tracing, runs the server until SIGTERM or Ctrl-C.
//!
//! `refund-gateway ops …` is the operator's command line instead (`refund_gateway::ops_cli`):
//! it calls a running gateway's RPCs (ListAttention, GetOperation, WatchOperation,
//! ResolveOperation, Reconcile) and exits, without reading the configuration, installing
//! telemetry or serving anything.
//!
//! `refund-gateway check-config` (`refund_gateway::check_config`) loads the configuration as
//! the gateway would, checks it and each account's credentials, prints what it found and
//! exits; it installs no telemetry and serves nothing either.

use std::process::ExitCode;

use anyhow::Context;
use refund_gateway::config::{self, Cli, Command, ProcessEnv};
use refund_gateway::telemetry::Telemetry;
use refund_gateway::{check_config, ops_cli};

/// mimalloc instead of the system allocator: a refund allocates and frees a few thousand
/// small objects across the runtime's threads and the store's writer thread, and glibc's
/// allocator spent about an eighth of the gateway's instructions on them (see
/// `docs/architecture.md`, "Allocator"). Built without transparent huge pages (the
/// `no_thp` feature), which otherwise doubled the idle resident memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let mut cli = config::parse_args();
    match cli.take_command() {
        Some(Command::Ops(args)) => {
            return match ops_cli::run(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(e.exit_code())
                }
            };
        }
        Some(Command::CheckConfig(args)) => {
            return ExitCode::from(check_config::run(&cli, &args, &ProcessEnv).await);
        }
        None => {}
    }
    match serve(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("refund-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let mut settings = config::load_settings(cli.config_file(), &ProcessEnv)?;
    cli.apply(&mut settings);
    let telemetry = Telemetry::install(settings.log_format)?;
    let served = async {
        let config = config::resolve(settings, &ProcessEnv)?;
        let listener = tokio::net::TcpListener::bind(config.settings.listen)
            .await
            .with_context(|| format!("binding {}", config.settings.listen))?;
        refund_gateway::run(listener, config, shutdown_signal()).await?;
        anyhow::Ok(())
    }
    .await;
    // Flushed on every way out, so the spans of a failed start are exported too.
    telemetry.shutdown().await;
    served
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
