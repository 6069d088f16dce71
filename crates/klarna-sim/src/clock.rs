//! The simulator clock: real UTC time shifted by an offset that tests can only move forward.
//!
//! Everything that Klarna timestamps (orders, captures, refunds, the request log) and the 24 h
//! idempotency window read this clock, so advancing it lets a test expire idempotency keys
//! without waiting.

use std::sync::atomic::{AtomicI64, Ordering};
use time::OffsetDateTime;

/// Upper bound of the offset (about 1000 years), so that adding it to "now" cannot overflow.
const MAX_OFFSET_MILLIS: i64 = 1000 * 366 * 24 * 3600 * 1000;

/// Wall clock plus a forward-only offset in milliseconds.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    offset_millis: AtomicI64,
}

impl Clock {
    /// The simulator's current time (UTC).
    pub(crate) fn now(&self) -> OffsetDateTime {
        let offset = time::Duration::milliseconds(self.offset_millis.load(Ordering::Relaxed));
        let real = OffsetDateTime::now_utc();
        real.checked_add(offset).unwrap_or(real)
    }

    /// Moves the clock forward by `by` (saturating at about 1000 years in total).
    pub(crate) fn advance(&self, by: std::time::Duration) {
        let add = i64::try_from(by.as_millis()).unwrap_or(MAX_OFFSET_MILLIS);
        // fetch_update cannot fail here: the closure always returns Some.
        let _ = self
            .offset_millis
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |current| {
                Some(current.saturating_add(add).min(MAX_OFFSET_MILLIS))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_moves_now_forward() {
        let clock = Clock::default();
        let before = clock.now();
        clock.advance(std::time::Duration::from_secs(25 * 3600));
        let after = clock.now();
        assert!(after - before >= time::Duration::hours(25));
    }

    #[test]
    fn huge_advance_saturates() {
        let clock = Clock::default();
        clock.advance(std::time::Duration::MAX);
        clock.advance(std::time::Duration::MAX);
        assert!(clock.now().year() > 2500);
    }
}
