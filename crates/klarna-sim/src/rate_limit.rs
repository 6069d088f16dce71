//! Optional per-simulator rate limit (Klarna limits per merchant): a token bucket refilled at
//! the configured rate, holding at most one second's worth of calls. Integer arithmetic in
//! millionths of a token. Uses the real monotonic clock, not the simulator clock.

use std::sync::Mutex;
use std::time::Instant;

const MICROS_PER_TOKEN: u128 = 1_000_000;

#[derive(Debug)]
struct Bucket {
    micro_tokens: u128,
    last: Instant,
}

/// Admits at most `per_second` calls per second on average, bursts up to `per_second`.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_second: u128,
    bucket: Mutex<Bucket>,
}

impl RateLimiter {
    /// `None` for 0 (no limit).
    pub(crate) fn new(per_second: u32) -> Option<Self> {
        (per_second > 0).then(|| Self {
            per_second: u128::from(per_second),
            bucket: Mutex::new(Bucket {
                micro_tokens: u128::from(per_second) * MICROS_PER_TOKEN,
                last: Instant::now(),
            }),
        })
    }

    /// Takes one token; false means the call is over the limit.
    pub(crate) fn try_acquire(&self) -> bool {
        let capacity = self.per_second * MICROS_PER_TOKEN;
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed_micros = now.duration_since(bucket.last).as_micros();
        bucket.last = now;
        bucket.micro_tokens = bucket
            .micro_tokens
            .saturating_add(elapsed_micros.saturating_mul(self.per_second))
            .min(capacity);
        if bucket.micro_tokens >= MICROS_PER_TOKEN {
            bucket.micro_tokens -= MICROS_PER_TOKEN;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_a_burst_of_one_second_then_refuses() {
        let limiter = RateLimiter::new(5).unwrap();
        let admitted = (0..20).filter(|_| limiter.try_acquire()).count();
        // A few tokens may refill while the loop runs, but never many.
        assert!((5..=6).contains(&admitted), "{admitted}");
        assert!(RateLimiter::new(0).is_none());
    }
}
