//! Logs and metrics set-up. Logs are JSON lines by default (text for people at a terminal),
//! filtered by `RUST_LOG` (default `info`). Nothing logged carries a credential: secrets live
//! in types that do not print them, and the Klarna client never logs headers.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global log subscriber. Call once, from `main`.
pub fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second installation (tests starting several gateways) is refused by tracing and is
    // harmless, so the result is ignored.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

/// Bucket bounds of every histogram, in seconds: from a millisecond (a replayed answer) to a
/// minute (a call waiting out Klarna's retries). Histograms, unlike summaries, add up across
/// replicas.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// How often the recorder's upkeep runs: it drains the histograms' samples, which otherwise
/// pile up between scrapes.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The process's Prometheus recorder, installed on first use, rendering histograms. `None`
/// when another recorder was installed first (then `/metrics` says so).
pub fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&BUCKETS)
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}

/// Runs the recorder's upkeep every [`UPKEEP_INTERVAL`] until `stop`.
pub async fn metrics_upkeep(mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(handle) = metrics_handle() else {
        return;
    };
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
