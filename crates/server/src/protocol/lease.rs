//! Keeping a claim alive while its work runs: the lease is renewed every third of its length,
//! so a gateway that stops renewing (it died, or stalled) loses the operation to whoever takes
//! it over, and only the current holder can record its outcome.

use std::sync::Arc;
use std::time::Duration;

use refund_gateway_domain::{LeaseHolder, OperationId, OperationStore};
use time::OffsetDateTime;

/// Renews `holder`'s lease on `id` every third of `lease` until aborted, or until the lease is
/// no longer `holder`'s.
pub(super) fn renew_while_running(
    store: Arc<dyn OperationStore>,
    id: OperationId,
    holder: LeaseHolder,
    lease: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(lease / 3);
        tick.tick().await;
        loop {
            tick.tick().await;
            match store
                .renew_lease(id, holder, OffsetDateTime::now_utc(), lease)
                .await
            {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(operation_id = %id, error = %e, "lease renewal failed")
                }
            }
        }
    })
}
