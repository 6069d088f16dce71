//! The load drivers shared by the benchmarks:
//! - [`drive`], a closed loop: a fixed number of requests in flight for a fixed time; a
//!   [`Run`] with every latency, from which [`Run::throughput`] and [`Run::percentile`] are
//!   read. The offered load follows the latency, so it says what a number of callers that
//!   wait for their answers get, not what a service does at a given rate.
//! - [`drive_open`], an open loop: requests sent at a fixed rate whatever the answers do,
//!   each latency measured from the time the request was *meant* to be sent, into an
//!   HdrHistogram ([`OpenRun`]). A slow answer therefore delays no later request's clock:
//!   no coordinated omission, the queueing a real stream of callers would see is counted.
//!
//! [`Summary`] puts either in the same figures (throughput, p50, p90, p99, p99.9, max).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{Semaphore, TryAcquireError};

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
    /// The first of those errors, for the message of a run that must have none.
    pub first_error: Option<String>,
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

    /// The run's figures.
    pub fn summary(&self) -> Summary {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        Summary {
            completed: self.latencies.len() as u64,
            errors: self.errors as u64,
            unsent: 0,
            elapsed_s: self.elapsed.as_secs_f64(),
            throughput: self.throughput(),
            p50_us: us(self.percentile(0.50)),
            p90_us: us(self.percentile(0.90)),
            p99_us: us(self.percentile(0.99)),
            p999_us: us(self.percentile(0.999)),
            max_us: us(self.percentile(1.0)),
        }
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
            let mut first_error = None;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                match call(worker, n).await {
                    Ok(()) => latencies.push(t.elapsed()),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
                n += 1;
            }
            (latencies, errors, first_error)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        let (l, e, first) = task.await?;
        latencies.extend(l);
        errors += e;
        first_error = first_error.or(first);
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Ok(Run {
        latencies,
        elapsed,
        errors,
        first_error,
    })
}

/// The figures of a run, closed or open loop; latencies in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Calls that succeeded.
    pub completed: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Open loop: calls never sent, because the driver could not keep up with the offered
    /// rate within its limit of calls in flight before the run's time (twice its length)
    /// was up. Not zero means the path was saturated.
    pub unsent: u64,
    /// From the first call until the last answer.
    pub elapsed_s: f64,
    /// Successful calls per second over `elapsed_s`.
    pub throughput: f64,
    /// Median latency.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// The slowest call.
    pub max_us: f64,
}

/// The outcome of one [`drive_open`].
#[derive(Debug, Clone)]
pub struct OpenRun {
    /// The rate calls were meant to be sent at, per second.
    pub offered_rate: f64,
    /// Latency of each successful call in microseconds, from the time it was meant to be
    /// sent (not the time it was) until its answer.
    pub latencies: Histogram<u64>,
    /// Calls that returned an error (not in `latencies`).
    pub errors: u64,
    /// The first of those errors.
    pub first_error: Option<String>,
    /// Calls never sent (see [`Summary::unsent`]).
    pub unsent: u64,
    /// From the first intended send until the last answer.
    pub elapsed: Duration,
}

impl OpenRun {
    /// The run's figures.
    pub fn summary(&self) -> Summary {
        let q = |q: f64| self.latencies.value_at_quantile(q) as f64;
        Summary {
            completed: self.latencies.len(),
            errors: self.errors,
            unsent: self.unsent,
            elapsed_s: self.elapsed.as_secs_f64(),
            throughput: self.latencies.len() as f64
                / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: self.latencies.max() as f64,
        }
    }
}

/// What the calls of an open-loop run record, shared by them.
#[derive(Debug)]
struct Recorded {
    latencies: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    last_answer: Instant,
}

/// How long the calls of an open-loop run may still take after the last was sent, before
/// the run fails: a generous bound, no time anything is expected to take.
const OPEN_LOOP_DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// Sends `call(n)` (`n` counting calls from 0) at `rate` per second for `seconds`, whatever
/// the answers do: an open loop. Each latency is measured from the instant the call was
/// meant to be sent, so a call delayed by the ones before it (a full limit of calls in
/// flight, a late scheduler) counts the delay.
///
/// At most `max_in_flight` calls are outstanding: a saturated path makes the backlog wait
/// for a slot (and its latency grow) rather than open ever more requests. Sending goes on
/// after `seconds` until the backlog is sent or twice `seconds` have passed; calls not sent
/// by then are counted as [`OpenRun::unsent`].
///
/// The schedule is kept by a thread of its own sleeping to each send instant (to within
/// tens of microseconds on Linux), not by a Tokio timer, whose millisecond ticks would add
/// up to a millisecond to every latency at low rates. The calls run on the current runtime.
pub async fn drive_open<F, Fut>(
    rate: f64,
    seconds: f64,
    max_in_flight: usize,
    call: F,
) -> anyhow::Result<OpenRun>
where
    F: Fn(u64) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    anyhow::ensure!(
        rate > 0.0 && seconds > 0.0,
        "rate and time must be positive"
    );
    anyhow::ensure!(max_in_flight > 0, "max_in_flight must be positive");
    let total = ((rate * seconds).round() as u64).max(1);
    let handle = tokio::runtime::Handle::current();
    let slots = Arc::new(Semaphore::new(max_in_flight));
    // 1 µs to an hour, three significant digits: the bounds cannot be wrong.
    let histogram = Histogram::new_with_bounds(1, 3_600_000_000, 3)?;
    // A few milliseconds ahead, so that the first send is not already late.
    let start = Instant::now() + Duration::from_millis(5);
    let send_until = start + Duration::from_secs_f64(seconds * 2.0);
    let recorded = Arc::new(Mutex::new(Recorded {
        latencies: histogram,
        errors: 0,
        first_error: None,
        last_answer: start,
    }));
    let scheduler = {
        let slots = slots.clone();
        let recorded = recorded.clone();
        std::thread::spawn(move || -> u64 {
            // `call` may need the runtime (to spawn, to read the clock).
            let _runtime = handle.enter();
            for n in 0..total {
                let intended = start + Duration::from_secs_f64(n as f64 / rate);
                let now = Instant::now();
                if intended > now {
                    std::thread::sleep(intended - now);
                }
                let slot = match slots.clone().try_acquire_owned() {
                    Ok(slot) => slot,
                    Err(TryAcquireError::NoPermits) => {
                        let waited = handle.block_on(tokio::time::timeout_at(
                            send_until.into(),
                            slots.clone().acquire_owned(),
                        ));
                        match waited {
                            Ok(Ok(slot)) => slot,
                            // Out of time (or the semaphore closed, which it never is).
                            _ => return n,
                        }
                    }
                    Err(TryAcquireError::Closed) => return n,
                };
                if Instant::now() > send_until {
                    return n;
                }
                let answer = call(n);
                let recorded = recorded.clone();
                handle.spawn(async move {
                    let result = answer.await;
                    let now = Instant::now();
                    let latency = now.saturating_duration_since(intended);
                    let mut recorded = recorded.lock().unwrap_or_else(|e| e.into_inner());
                    match result {
                        Ok(()) => {
                            let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                            recorded.latencies.saturating_record(us.max(1));
                        }
                        Err(e) => {
                            recorded.errors += 1;
                            recorded.first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                    recorded.last_answer = recorded.last_answer.max(now);
                    drop(slot);
                });
            }
            total
        })
    };
    let sent = tokio::task::spawn_blocking(move || scheduler.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the open-loop scheduler panicked"))?;
    // Every slot free again: every call sent has answered.
    let all = u32::try_from(max_in_flight)?;
    let _all = tokio::time::timeout(OPEN_LOOP_DRAIN_LIMIT, slots.acquire_many(all))
        .await
        .map_err(|_| {
            anyhow::anyhow!("calls still unanswered {OPEN_LOOP_DRAIN_LIMIT:?} after the last send")
        })??;
    let recorded = recorded.lock().unwrap_or_else(|e| e.into_inner());
    Ok(OpenRun {
        offered_rate: rate,
        latencies: recorded.latencies.clone(),
        errors: recorded.errors,
        first_error: recorded.first_error.clone(),
        unsent: total - sent,
        elapsed: recorded.last_answer.saturating_duration_since(start),
    })
}

/// `d` in milliseconds with three decimals, for tables.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}
