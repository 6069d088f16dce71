//! The `refund-gateway` binary: parses flags, loads the configuration, builds the async
//! runtime (its worker count is a setting, see `config::worker_threads`), installs logging
//! and tracing, runs the server until SIGTERM or Ctrl-C.
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
use refund_gateway::config::{self, Command, ProcessEnv};
use refund_gateway::telemetry::Telemetry;
use refund_gateway::{check_config, ops_cli};

/// mimalloc instead of the system allocator: a refund allocates and frees a few thousand
/// small objects across the runtime's threads and the store's writer thread, and glibc's
/// allocator spent about an eighth of the gateway's instructions on them (see
/// `docs/architecture.md`, "Allocator"). Built without transparent huge pages (the
/// `no_thp` feature), which otherwise doubled the idle resident memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let mut cli = config::parse_args();
    match cli.take_command() {
        Some(Command::Ops(args)) => {
            return run(None, async {
                match ops_cli::run(args).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::from(e.exit_code())
                    }
                }
            });
        }
        Some(Command::CheckConfig(args)) => {
            return run(None, async {
                ExitCode::from(check_config::run(&cli, &args, &ProcessEnv).await)
            });
        }
        None => {}
    }
    // Before the runtime: how many workers it gets is a setting.
    let settings = match config::load_settings(cli.config_file(), &ProcessEnv) {
        Ok(mut settings) => {
            cli.apply(&mut settings);
            settings
        }
        Err(e) => {
            eprintln!("refund-gateway: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let workers = config::worker_threads(&settings, &ProcessEnv, cores);
    run(Some(workers), async {
        match serve(settings).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("refund-gateway: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Runs `main` on a multi-threaded Tokio runtime with `workers` worker threads (Tokio's
/// default, one per core, for `None`).
fn run(workers: Option<usize>, main: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(workers) = workers {
        builder.worker_threads(workers);
    }
    match builder.build() {
        Ok(runtime) => runtime.block_on(main),
        Err(e) => {
            eprintln!("refund-gateway: starting the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: config::Settings) -> anyhow::Result<()> {
    // Before anything else runs, so a SIGTERM that arrives during start-up (or right after
    // the "listening" line, before the server's task first polls the signal) drains and exits
    // cleanly instead of killing the process with the default action.
    let shutdown = shutdown_signal()?;
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
