//! A closed-loop load driver shared by the benchmarks: [`drive`] keeps a fixed number of
//! requests in flight for a fixed time and returns a [`Run`] with every latency, from which
//! [`Run::throughput`] and [`Run::percentile`] are read.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The outcome of one [`drive`]: the latency of every successful call, sorted ascending, how
/// long the run took, and how many calls failed.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// Latencies of the calls that succeeded, sorted ascending.
    pub latencies: Vec<Duration>,
    /// From the start of the run until the last worker finished its last call.
    pub elapsed: Duration,
    /// Calls that returned an error (not in `latencies`).
    pub errors: usize,
}

impl Run {
    /// Successful calls per second.
    pub fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// The latency at quantile `p` (0.0 to 1.0, nearest rank) of the successful calls; zero
    /// when none succeeded.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p.clamp(0.0, 1.0)).round() as usize;
        self.latencies[i]
    }
}

/// Runs `concurrency` workers, each calling `call(worker, n)` (`worker` in
/// `0..concurrency`, `n` counting that worker's calls from 0) one call after another until
/// `seconds` have passed: a closed loop, so the offered load follows the latency. A call that
/// has started when time is up is waited for and counted.
pub async fn drive<F, Fut>(concurrency: usize, seconds: f64, call: F) -> anyhow::Result<Run>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                match call(worker, n).await {
                    Ok(()) => latencies.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
                n += 1;
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Ok(Run {
        latencies,
        elapsed,
        errors,
    })
}

/// `d` in milliseconds with three decimals, for tables.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}
