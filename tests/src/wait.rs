//! [`wait_until`]: the one way the tests wait for something that has no notification to await.
//!
//! Besides this crate (`tests/src/lib.rs` re-exports it), the test support of the crates below
//! it in the dependency graph, which cannot depend on this crate, includes this file with
//! `#[path]` (`crates/klarna-sim/tests/common`, `crates/server/tests/common`), so there is one
//! definition. It needs nothing but `std` and Tokio.

use std::time::Duration;

/// How often [`wait_until`] re-checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// [`wait_until`] gave up: the condition did not hold within the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    /// What was waited for.
    pub what: String,
    /// How long.
    pub limit: Duration,
}

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "gave up waiting for {} after {:?}",
            self.what, self.limit
        )
    }
}

impl std::error::Error for TimedOut {}

/// Waits until `check` returns `Ok(Some(value))` and returns `value`; an error from `check`
/// ends the wait at once, and after `limit` it fails with [`TimedOut`] naming `what`.
///
/// Why a poll at all: nothing the tests wait for through this helper can be awaited directly.
/// An operation settled by the gateway's background reconciler is visible only through
/// `ListOperations`, a call reaching the simulator only in its request log, a rate limiter's
/// bucket refilling only on the real monotonic clock. So the condition itself is re-checked
/// every [`POLL_INTERVAL`]: the test goes on as soon as it holds, whatever the machine's speed,
/// and never assumes that some fixed time was enough. `limit` is not a duration anything is
/// expected to take; it only turns a hang into a failure that says what never happened, so
/// make it generous. Use this instead of writing a loop with a sleep.
pub async fn wait_until<T, E>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> Result<Option<T>, E>,
) -> Result<T, E>
where
    E: From<TimedOut>,
{
    let give_up = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= give_up {
            return Err(TimedOut {
                what: what.to_owned(),
                limit,
            }
            .into());
        }
        // The pause between two checks of the condition, not a wait standing in for it.
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
