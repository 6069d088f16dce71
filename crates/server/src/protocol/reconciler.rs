//! The reconciler: at start and then periodically, takes over every unresolved operation
//! (PENDING, or IN_FLIGHT whose holder is gone) and settles it by resending or by matching
//! (see `resend.rs`). Operations are resolved `parallelism` at a time; one that fails is
//! logged and left for the next pass, and never stops the others. Passes never overlap.
//!
//! The pass at start takes on every unresolved operation; later passes only those due. An
//! operation that stays PENDING is resent after a wait that grows with its age (a quarter of
//! it, at most a minute; `Operation::resolution_due_at`), kept in the store with the
//! operation, so every replica agrees and a restart does not forget it: during a long Klarna
//! outage the unresolved operations are not all resent on every pass, competing with live
//! refunds for Klarna's quota, and a backlog larger than a pass is worked through rather than
//! its oldest [`PASS_LIMIT`] resent over and over.

use std::time::Duration;

use futures::StreamExt;
use refund_gateway_domain::{Operation, OperationState, StoreError, Unresolved};
use time::OffsetDateTime;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::Protocol;

/// The most operations one pass takes on; the rest wait for the next pass.
pub const PASS_LIMIT: u32 = 1000;

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Operations found unresolved.
    pub found: usize,
    /// Operations brought to a final state.
    pub settled: usize,
    /// Operations whose resolution failed (store errors); retried next pass.
    pub failed: usize,
}

/// Runs the reconciler: a pass at start, then one every `interval` (later when a pass overran),
/// until `stop`.
pub async fn reconcile_forever(
    protocol: Protocol,
    interval: Duration,
    parallelism: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    // A pass longer than the interval delays the next one rather than bunching them up.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut which = Unresolved::All;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let pass = reconcile_once(&protocol, parallelism, which).await;
        // Only a pass that could list them counts as the first.
        if pass.is_ok() {
            which = Unresolved::Due;
        }
        if let Err(e) = pass {
            tracing::warn!(error = %e, "reconciler pass failed to list unresolved operations");
        }
    }
}

/// One reconciler pass over up to [`PASS_LIMIT`] unresolved operations (`which` of them),
/// `parallelism` at a time. Waits for a pass already running to end first. Fails only when
/// the unresolved operations cannot be listed.
pub async fn reconcile_once(
    protocol: &Protocol,
    parallelism: usize,
    which: Unresolved,
) -> Result<PassReport, StoreError> {
    let _pass = protocol.reconciling.lock().await;
    let unresolved = protocol
        .store
        .unresolved(which, OffsetDateTime::now_utc(), PASS_LIMIT)
        .await?;
    let mut report = PassReport {
        found: unresolved.len(),
        ..PassReport::default()
    };
    let mut results = futures::stream::iter(unresolved)
        .map(|op| {
            let span = resolution_span(&op);
            async move {
                let id = op.new.operation_id;
                (id, protocol.resolve(op).await)
            }
            .instrument(span)
        })
        .buffer_unordered(parallelism.max(1));
    while let Some((id, result)) = results.next().await {
        match result {
            Ok(Some(state)) if state.is_final() => {
                tracing::info!(operation_id = %id, state = %state, "reconciler settled an operation");
                report.settled += 1;
            }
            Ok(Some(state)) => {
                tracing::info!(operation_id = %id, state = %state, "reconciler: still unresolved");
            }
            // Someone else (a caller's retry, another replica) holds it now.
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(operation_id = %id, error = %e, "reconciler could not resolve an operation; retried next pass");
                report.failed += 1;
            }
        }
    }
    metrics::counter!("reconciler_passes_total").increment(1);
    Ok(report)
}

/// The root span of one operation's resolution: a trace of its own (a pass is not part of any
/// request), linked to the trace of the request that created the operation when it is known.
fn resolution_span(op: &Operation) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "reconcile",
        otel.kind = "internal",
        refund.operation_id = %op.new.operation_id,
        refund.caller = %op.new.caller,
        rpc.method = op.new.rpc.as_str(),
        klarna.account = %op.new.klarna_account,
        refund.state_before = op.state.as_str(),
        refund.state_after = tracing::field::Empty,
    );
    if let Some(traceparent) = &op.new.traceparent {
        span.add_link(crate::telemetry::linked_context(traceparent));
    }
    span
}

impl Protocol {
    /// Resolves one unresolved operation found by the reconciler: takes it over, then
    /// resends or reads. Returns the state it ended in, if it took it.
    pub async fn resolve(
        &self,
        op: refund_gateway_domain::Operation,
    ) -> Result<Option<OperationState>, StoreError> {
        let holder = refund_gateway_domain::LeaseHolder::new();
        // Tracked before the take-over, so a caller that finds it taken finds the signal too.
        let _tracked = self.track_resolution(op.new.operation_id);
        if !self
            .store
            .take_over(
                op.new.operation_id,
                holder,
                OffsetDateTime::now_utc(),
                self.settings.lease,
                Some(super::RECONCILER.to_owned()),
                crate::telemetry::current_trace_id(),
            )
            .await?
        {
            return Ok(None);
        }
        let deadline = tokio::time::Instant::now() + self.settings.default_deadline;
        let id = op.new.operation_id;
        let receiver = self.spawn(
            op,
            holder,
            super::Job::Resend,
            deadline,
            Some(super::RECONCILER.to_owned()),
            None,
        );
        let _ = receiver.await;
        let state = self.store.get(id).await?.map(|o| o.state);
        if let Some(state) = state {
            tracing::Span::current().record("refund.state_after", state.as_str());
            metrics::counter!("reconciler_resolutions_total", "state" => state.as_str())
                .increment(1);
        }
        Ok(state)
    }
}
