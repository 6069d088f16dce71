//! The admin HTTP endpoint for operators and orchestrators: `/healthz` (the process is up),
//! `/readyz` (it accepts RPCs; 503 once shutdown began; says when an outbound limit runs on
//! its local fallback because Redis is unreachable) and `/metrics` (Prometheus text).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use refund_gateway_klarna::OutboundLimiter;

/// What the admin endpoint reports on.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// True while the gateway accepts RPCs.
    pub ready: Arc<AtomicBool>,
    /// The accounts' outbound limits, for their degraded state.
    pub limiters: Arc<Vec<OutboundLimiter>>,
    /// Renders the metrics, when a recorder is installed.
    pub metrics: Option<PrometheusHandle>,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, String) {
    if !state.ready.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_owned(),
        );
    }
    // Still ready: a degraded limit keeps serving, at each replica's local share.
    let mut body = "ready\n".to_owned();
    for detail in state.limiters.iter().filter_map(OutboundLimiter::degraded) {
        body.push_str(&detail);
        body.push('\n');
    }
    (StatusCode::OK, body)
}

async fn metrics(State(state): State<AdminState>) -> (StatusCode, String) {
    match &state.metrics {
        Some(handle) => (StatusCode::OK, handle.render()),
        None => (
            StatusCode::NOT_FOUND,
            "metrics recorder not installed\n".to_owned(),
        ),
    }
}
