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
    // Before anything else, so a SIGTERM that arrives during start-up (or right after the
    // "listening" line, before the server's task first polls the signal) drains and exits
    // cleanly instead of killing the process with the default action.
    let shutdown = shutdown_signal()?;
    let mut settings = config::load_settings(cli.config_file(), &ProcessEnv)?;
    cli.apply(&mut settings);
    let telemetry = Telemetry::install(settings.log_format)?;
    let served = async {
        let config = config::resolve(settings, &ProcessEnv)?;
        let listener = tokio::net::TcpListener::bind(config.settings.listen)
            .await
            .with_context(|| format!("binding {}", config.settings.listen))?;
        refund_gateway::run(listener, config, shutdown).await?;
        anyhow::Ok(())
    }
    .await;
    // Flushed on every way out, so the spans of a failed start are exported too.
    telemetry.shutdown().await;
    served
}

/// Installs the handlers for SIGTERM and SIGINT (Ctrl-C) now, and returns a future that
/// completes on the first of them received from now on, even one received before the future
/// is first polled. (`tokio::signal::ctrl_c()` would install its handler only when polled.)
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    })
}

#[cfg(all(test, unix))]
mod tests {
    use super::shutdown_signal;

    /// The handler is in place as soon as `shutdown_signal` returns: a SIGTERM sent before
    /// the future is polled completes it (with a lazily installed handler, it would kill
    /// this test process instead).
    #[tokio::test]
    async fn a_sigterm_before_the_first_poll_is_caught_and_completes_the_future() {
        let shutdown = shutdown_signal().unwrap_or_else(|e| panic!("{e}"));
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(status.success());
        tokio::time::timeout(std::time::Duration::from_secs(30), shutdown)
            .await
            .unwrap_or_else(|_| panic!("SIGTERM did not complete the shutdown future"));
    }
}
