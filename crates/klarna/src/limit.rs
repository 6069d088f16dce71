//! The outbound rate limit of one Klarna account (see docs/klarna.md#outbound-rate-limit):
//! [`OutboundLimiter`] hands out one permit per attempt, and [`OutboundLimitLayer`] asks for
//! it in the outbound stack, below the attempt trace and above the attempt timeout
//! (`http.rs`), so that every attempt, resends included, takes one.
//!
//! Permits follow GCRA (the generic cell rate algorithm): the state is one instant, the
//! theoretical arrival time (TAT) at which the account would be back to idle. A permit is
//! due at `max(TAT, now) + interval - burst * interval`, where `interval` is one permit's
//! share of a second; taking it moves the TAT on by one interval. So at most `burst` attempts
//! start at once after a quiet spell, and over any window of `t` seconds at most
//! `rate * t + burst`. A permit is *reserved*: the caller is given its slot (possibly in the
//! future) and waits for it, so concurrent callers are queued at the rate rather than racing.
//! A permit that would come after the call's deadline is refused at once, without taking the
//! slot, as [`KlarnaError::Throttled`] with the time until it would come.
//!
//! The state lives in this process (`Gcra`) or, for a limit shared by every replica, in Redis
//! (`RedisQuota`: the same algorithm in one Lua script, on Redis' clock). When Redis fails or
//! does not answer in time, a local limiter at the configured fallback share of the rate
//! decides instead; one WARN marks the start of such an outage and one INFO its end, and
//! [`OutboundLimiter::degraded`] reports it meanwhile.
//!
//! Refusals are counted in the `klarna_outbound_throttled_total` counter ([`THROTTLED_METRIC`]),
//! labelled `account` (the shared limit's key; empty for a limit of this process alone).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use refund_gateway_domain::KlarnaError;
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::config::{KlarnaConfigError, OutboundRateLimit, SharedLimit};
use crate::retry::{MIN_ATTEMPT_TIME, current_deadline};

/// Name of the counter of attempts refused by the outbound rate limit, labelled `account`.
pub const THROTTLED_METRIC: &str = "klarna_outbound_throttled_total";

/// How long a permit may be waited for outside any deadline (the transport always sets one;
/// this bounds a limiter used on its own).
const NO_DEADLINE_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// While Redis is unreachable, one call per this interval tries it again; the others go
/// straight to the fallback, so that an outage does not add Redis' timeout to every call.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Limit on (re)connecting to Redis; the caller waits no longer than the limit's timeout
/// for it, the connection goes on in the background.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The GCRA of the module documentation, on Redis' clock, in microseconds. Numbers stay
/// integers below 2^53 (a TAT is about 1.8e15 µs), which Lua's doubles hold exactly, and
/// `%d` writes them without losing digits (`tostring` would keep 14). Redis 5 or later runs
/// a script's writes as effects, so reading `TIME` before `SET` is allowed.
const GCRA_SCRIPT: &str = r"
-- KEYS[1]: the account's theoretical arrival time (TAT), in microseconds of Redis' clock.
-- ARGV[1]: microseconds between permits; ARGV[2]: the burst, in permits;
-- ARGV[3]: the longest the caller can wait for its permit, in microseconds.
-- Returns {1, delay}: a permit reserved, to be used in `delay` microseconds (0: now);
-- {0, delay}: refused, nothing written; a permit would come in `delay` microseconds.
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
local next_tat = tat + interval
local delay = next_tat - burst * interval - now
if delay < 0 then
  delay = 0
end
if delay > max_wait then
  return {0, delay}
end
-- Once the TAT has passed, an absent key means the same: idle.
local ttl_ms = math.ceil((next_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', string.format('%d', ttl_ms))
return {1, delay}
";

/// The answer to a request for a permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reservation {
    /// A permit reserved for this instant (now or later).
    Granted(Instant),
    /// No permit within the wait allowed; one would come after this long. Nothing was taken.
    Refused(Duration),
}

/// The outbound rate limit of one Klarna account; see the module documentation. Cheap to
/// clone: clones share the permits (and the Redis connection and outage state). `Debug`
/// never shows the Redis URL.
#[derive(Clone)]
pub struct OutboundLimiter {
    inner: Arc<LimiterInner>,
}

struct LimiterInner {
    /// The `account` label of [`THROTTLED_METRIC`] and of log events.
    account: String,
    requests_per_second: u32,
    burst: u32,
    state: State,
}

enum State {
    Local(Gcra),
    Shared(Box<RedisQuota>),
}

impl fmt::Debug for OutboundLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        let mut s = f.debug_struct("OutboundLimiter");
        s.field("requests_per_second", &inner.requests_per_second)
            .field("burst", &inner.burst);
        if let State::Shared(quota) = &inner.state {
            s.field("redis_key", &quota.key)
                .field("fallback_requests_per_second", &quota.fallback_rate)
                .field("degraded", &quota.outage_reason());
        }
        s.finish_non_exhaustive()
    }
}

impl OutboundLimiter {
    /// A limiter for `config`, checked with [`OutboundRateLimit::validate`]. Nothing is
    /// connected here (a shared limit connects to Redis on its first permit), so this works
    /// outside an async runtime; permits must be asked for inside a tokio runtime.
    pub fn new(config: &OutboundRateLimit) -> Result<Self, KlarnaConfigError> {
        config.validate()?;
        let (account, state) = match &config.shared {
            None => (
                String::new(),
                State::Local(Gcra::new(config.requests_per_second, config.burst)),
            ),
            Some(shared) => (
                shared.key.clone(),
                State::Shared(Box::new(RedisQuota::new(config, shared)?)),
            ),
        };
        Ok(Self {
            inner: Arc::new(LimiterInner {
                account,
                requests_per_second: config.requests_per_second,
                burst: config.burst,
                state,
            }),
        })
    }

    /// Takes one permit for an attempt about to be sent. When a permit comes before the
    /// deadline of the enclosing [`crate::with_deadline`] (less [`MIN_ATTEMPT_TIME`], so that
    /// the attempt has time to run), it is reserved and waited for; otherwise the answer is
    /// [`KlarnaError::Throttled`] at once, with the time until a permit would come, and no
    /// permit is taken. Never fails because Redis does: the local fallback decides then.
    pub async fn acquire(&self) -> Result<(), KlarnaError> {
        let now = Instant::now();
        let max_wait = current_deadline().map_or(NO_DEADLINE_WAIT, |deadline| {
            deadline
                .saturating_duration_since(now)
                .saturating_sub(MIN_ATTEMPT_TIME)
        });
        let reservation = match &self.inner.state {
            State::Local(gcra) => gcra.reserve(now, max_wait),
            State::Shared(quota) => quota.reserve(max_wait).await,
        };
        match reservation {
            Reservation::Granted(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    tracing::debug!(
                        account = self.inner.account.as_str(),
                        wait_ms = millis(wait),
                        "waiting for the account's outbound permit"
                    );
                    tokio::time::sleep_until(at).await;
                }
                Ok(())
            }
            Reservation::Refused(wait) => {
                metrics::counter!(THROTTLED_METRIC, "account" => self.inner.account.clone())
                    .increment(1);
                tracing::debug!(
                    account = self.inner.account.as_str(),
                    wait_ms = millis(wait),
                    "not sending the Klarna request: the account's outbound permit would come \
                     after the call's deadline"
                );
                Err(KlarnaError::Throttled(wait))
            }
        }
    }

    /// Why the limit is not what it should be, or `None` when it is: for a shared limit
    /// whose Redis cannot be reached, e.g. `outbound limit of account eu-live: Redis
    /// unreachable (connection refused), using the local fallback share of 50 requests/s`.
    /// Never shows the Redis URL. A local limit is never degraded.
    pub fn degraded(&self) -> Option<String> {
        let State::Shared(quota) = &self.inner.state else {
            return None;
        };
        quota.outage_reason().map(|reason| {
            format!(
                "outbound limit of account {}: Redis unreachable ({reason}), using the local \
                 fallback share of {} requests/s",
                self.inner.account, quota.fallback_rate
            )
        })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// GCRA in this process (see the module documentation), on tokio's clock.
//
// Hand-written rather than governor's: governor's `check` only admits a cell at the current
// instant, and `until_ready` re-checks after sleeping, so a waiter holds no place in line
// (concurrent waiters race, and none can know up front whether its turn comes before its
// deadline). The reservation needed here, "the next slot if it is within `max_wait`, else
// nothing", is a few lines over one instant, the same as the Redis script, and runs on
// tokio's clock, which the tests can pause.
#[derive(Debug)]
struct Gcra {
    /// One permit's share of a second, rounded up so that the rate is never exceeded.
    interval: Duration,
    /// `interval * burst`.
    burst_span: Duration,
    /// The theoretical arrival time; `None` until the first permit.
    tat: Mutex<Option<Instant>>,
}

impl Gcra {
    fn new(requests_per_second: u32, burst: u32) -> Self {
        let interval =
            Duration::from_nanos(1_000_000_000_u64.div_ceil(u64::from(requests_per_second.max(1))));
        Self {
            interval,
            burst_span: interval.saturating_mul(burst.max(1)),
            tat: Mutex::new(None),
        }
    }

    /// Reserves the next permit if it comes within `max_wait` of `now`.
    fn reserve(&self, now: Instant, max_wait: Duration) -> Reservation {
        // Nothing here can panic while the lock is held, but a poisoned lock is still usable.
        let mut tat = self.tat.lock().unwrap_or_else(PoisonError::into_inner);
        let start = tat.map_or(now, |tat| tat.max(now));
        let next = start + self.interval;
        let due = next
            .checked_sub(self.burst_span)
            .map_or(now, |due| due.max(now));
        let wait = due.saturating_duration_since(now);
        if wait > max_wait {
            return Reservation::Refused(wait);
        }
        *tat = Some(next);
        Reservation::Granted(due)
    }
}

/// GCRA shared through Redis, with a local fallback.
struct RedisQuota {
    client: redis::Client,
    /// Made on first use: it needs a runtime, the client's constructor may not have one.
    connection: OnceCell<ConnectionManager>,
    script: redis::Script,
    key: String,
    interval_us: u64,
    burst: u32,
    timeout: Duration,
    fallback: Gcra,
    fallback_rate: u32,
    /// `Some` while Redis is unreachable.
    outage: Mutex<Option<Outage>>,
}

struct Outage {
    reason: String,
    next_probe: Instant,
}

impl RedisQuota {
    fn new(config: &OutboundRateLimit, shared: &SharedLimit) -> Result<Self, KlarnaConfigError> {
        let fallback_rate = shared.fallback_requests_per_second;
        // The burst shrinks with the rate: the fallback is a share of the whole limit.
        let fallback_burst = u64::from(config.burst) * u64::from(fallback_rate)
            / u64::from(config.requests_per_second.max(1));
        let fallback_burst = u32::try_from(fallback_burst).unwrap_or(u32::MAX).max(1);
        Ok(Self {
            client: shared.redis_client()?,
            connection: OnceCell::new(),
            script: redis::Script::new(GCRA_SCRIPT),
            key: shared.redis_key(),
            interval_us: 1_000_000_u64.div_ceil(u64::from(config.requests_per_second.max(1))),
            burst: config.burst,
            timeout: shared.timeout,
            fallback: Gcra::new(fallback_rate, fallback_burst),
            fallback_rate,
            outage: Mutex::new(None),
        })
    }

    /// A permit from Redis when it answers within the timeout, else from the fallback.
    async fn reserve(&self, max_wait: Duration) -> Reservation {
        if self.probe_due(Instant::now()) {
            match tokio::time::timeout(self.timeout, self.ask(max_wait)).await {
                Ok(Ok(reservation)) => {
                    self.reachable();
                    return reservation;
                }
                Ok(Err(error)) => self.unreachable(describe(&error)),
                Err(_elapsed) => self.unreachable(format!("no answer within {:?}", self.timeout)),
            }
        }
        self.fallback.reserve(Instant::now(), max_wait)
    }

    /// One run of the script: one round trip (two the first time a Redis server sees it).
    async fn ask(&self, max_wait: Duration) -> redis::RedisResult<Reservation> {
        let connection = self
            .connection
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
                    // Only to drop requests abandoned at our timeout from the pipeline.
                    .set_response_timeout(Some(self.timeout.max(Duration::from_secs(1))))
                    // Few retries per reconnection: while Redis is down each probe starts a
                    // fresh one, so it is found again soon after it is back.
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await?;
        let mut connection = connection.clone();
        let max_wait_us =
            u64::try_from(max_wait.min(NO_DEADLINE_WAIT).as_micros()).unwrap_or(u64::MAX);
        let (granted, delay_us): (i64, i64) = self
            .script
            .key(&self.key)
            .arg(self.interval_us)
            .arg(self.burst)
            .arg(max_wait_us)
            .invoke_async(&mut connection)
            .await?;
        let delay = Duration::from_micros(u64::try_from(delay_us).unwrap_or(0));
        // Measured from the answer's arrival, not from the question: late rather than early.
        Ok(if granted == 1 {
            Reservation::Granted(Instant::now() + delay)
        } else {
            Reservation::Refused(delay)
        })
    }

    /// Whether to ask Redis now: always while it works; during an outage, one caller per
    /// [`PROBE_INTERVAL`].
    fn probe_due(&self, now: Instant) -> bool {
        let mut outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
        match outage.as_mut() {
            None => true,
            Some(outage) if now >= outage.next_probe => {
                outage.next_probe = now + PROBE_INTERVAL;
                true
            }
            Some(_) => false,
        }
    }

    fn unreachable(&self, reason: String) {
        let mut outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
        let next_probe = Instant::now() + PROBE_INTERVAL;
        match outage.as_mut() {
            Some(outage) => {
                outage.reason = reason;
                outage.next_probe = next_probe;
            }
            None => {
                tracing::warn!(
                    account = self.key.as_str(),
                    reason = reason.as_str(),
                    fallback_requests_per_second = self.fallback_rate,
                    "Redis unreachable: the account's outbound rate limit uses this replica's \
                     local fallback share until it is back"
                );
                *outage = Some(Outage { reason, next_probe });
            }
        }
    }

    fn reachable(&self) {
        let mut outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
        if outage.take().is_some() {
            tracing::info!(
                account = self.key.as_str(),
                "Redis reachable again: the account's outbound rate limit is shared again"
            );
        }
    }

    fn outage_reason(&self) -> Option<String> {
        let outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
        outage.as_ref().map(|outage| outage.reason.clone())
    }
}

/// What went wrong, without redis' own message (it is not known never to quote the URL).
fn describe(error: &redis::RedisError) -> String {
    if error.is_timeout() {
        "no answer in time".to_owned()
    } else if error.is_connection_refusal() {
        "connection refused".to_owned()
    } else if error.is_io_error() || error.is_connection_dropped() {
        "connection failed".to_owned()
    } else if let Some(code) = error.code() {
        format!("Redis answered {code}")
    } else {
        format!("{:?}", error.kind())
    }
}

/// Adds [`OutboundLimit`].
#[derive(Debug, Clone)]
pub struct OutboundLimitLayer {
    limiter: OutboundLimiter,
}

impl OutboundLimitLayer {
    /// Takes permits from `limiter`.
    pub fn new(limiter: OutboundLimiter) -> Self {
        Self { limiter }
    }
}

impl<S> Layer<S> for OutboundLimitLayer {
    type Service = OutboundLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OutboundLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// Takes a permit ([`OutboundLimiter::acquire`]) before passing each request on; a refusal
/// is returned as [`KlarnaError::Throttled`] and the request is not passed on. Like the
/// services below it, it does nothing before its future is polled, in the caller's task,
/// where the call's deadline is in scope.
#[derive(Debug, Clone)]
pub struct OutboundLimit<S> {
    inner: S,
    limiter: OutboundLimiter,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, R> Service<R> for OutboundLimit<S>
where
    S: Service<R, Error = KlarnaError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = KlarnaError;
    type Future = BoxFuture<Result<S::Response, KlarnaError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // The request is passed on only after the permit, inside the future: the service
        // made ready by `poll_ready` goes with it, and a clone stays for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limiter = self.limiter.clone();
        Box::pin(async move {
            limiter.acquire().await?;
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RetryConfig, SharedLimit};
    use crate::http::{AttemptTraceLayer, OutboundRequest, OutboundResponse};
    use crate::retry::{RetryPolicy, with_deadline};
    use bytes::Bytes;
    use metrics::{Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, SharedString};
    use std::sync::atomic::{AtomicU64, Ordering};
    use tower::retry::RetryLayer;
    use tower::{ServiceBuilder, ServiceExt};

    const MS: Duration = Duration::from_millis(1);
    const MINUTE: Duration = Duration::from_secs(60);

    fn limiter(rate: u32, burst: u32) -> OutboundLimiter {
        OutboundLimiter::new(&OutboundRateLimit {
            requests_per_second: rate,
            burst,
            shared: None,
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn request() -> OutboundRequest {
        ::http::Request::get("https://api.klarna.com/ordermanagement/v1/orders/o")
            .body(Bytes::new())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Answers with the next status of `statuses` (then 200), recording when each request
    /// arrived.
    #[derive(Clone)]
    struct Klarna {
        started: Instant,
        calls: Arc<Mutex<Vec<Duration>>>,
        statuses: Arc<Mutex<Vec<u16>>>,
    }

    impl Klarna {
        fn new(statuses: &[u16]) -> Self {
            Self {
                started: Instant::now(),
                calls: Arc::default(),
                statuses: Arc::new(Mutex::new(statuses.iter().rev().copied().collect())),
            }
        }

        fn calls(&self) -> Vec<Duration> {
            lock(&self.calls).clone()
        }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    impl Service<OutboundRequest> for Klarna {
        type Response = OutboundResponse;
        type Error = KlarnaError;
        type Future = BoxFuture<Result<OutboundResponse, KlarnaError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), KlarnaError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: OutboundRequest) -> Self::Future {
            lock(&self.calls).push(self.started.elapsed());
            let status = lock(&self.statuses).pop().unwrap_or(200);
            Box::pin(async move {
                let mut response = ::http::Response::new(Bytes::new());
                *response.status_mut() =
                    ::http::StatusCode::from_u16(status).unwrap_or_else(|e| panic!("{e}"));
                Ok(response)
            })
        }
    }

    async fn send(
        service: OutboundLimit<Klarna>,
        within: Duration,
    ) -> Result<OutboundResponse, KlarnaError> {
        with_deadline(Instant::now() + within, service.oneshot(request())).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_beyond_the_burst_size_is_spread_at_the_rate() {
        let klarna = Klarna::new(&[]);
        let service = OutboundLimitLayer::new(limiter(10, 3)).layer(klarna.clone());
        let tasks: Vec<_> = (0..10)
            .map(|_| tokio::spawn(send(service.clone(), MINUTE)))
            .collect();
        for task in tasks {
            let result = task.await.unwrap_or_else(|e| panic!("{e}"));
            assert!(result.is_ok(), "{result:?}");
        }
        let offsets: Vec<u128> = klarna.calls().iter().map(Duration::as_millis).collect();
        assert_eq!(offsets, [0, 0, 0, 100, 200, 300, 400, 500, 600, 700]);
        // Idle long enough, the whole burst is available again.
        tokio::time::advance(Duration::from_secs(1)).await;
        let klarna = Klarna::new(&[]);
        let service = OutboundLimitLayer::new(limiter(10, 3)).layer(klarna.clone());
        for _ in 0..3 {
            assert!(send(service.clone(), MINUTE).await.is_ok());
        }
        assert_eq!(klarna.calls(), [Duration::ZERO; 3]);
    }

    #[test]
    fn no_window_holds_more_than_rate_times_length_plus_burst() {
        let (rate, burst) = (50_u32, 5_u32);
        let gcra = Gcra::new(rate, burst);
        let origin = Instant::now();
        // Bursty arrivals from a fixed pseudo-random sequence, with waits of up to 200 ms.
        let mut seed = 0x2545_f491_u64;
        let mut now = origin;
        let mut granted = Vec::new();
        let mut refused = 0;
        for _ in 0..2_000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            if seed >> 61 == 0 {
                now += Duration::from_micros((seed >> 20) % 100_000);
            }
            match gcra.reserve(now, Duration::from_millis(200)) {
                Reservation::Granted(at) => {
                    assert!(at >= now && at - now <= Duration::from_millis(200));
                    granted.push(at);
                }
                Reservation::Refused(wait) => {
                    assert!(wait > Duration::from_millis(200), "{wait:?}");
                    refused += 1;
                }
            }
        }
        assert!(
            refused > 0 && granted.len() > 100,
            "{refused} {}",
            granted.len()
        );
        granted.sort();
        for (i, first) in granted.iter().enumerate() {
            for (j, last) in granted.iter().enumerate().skip(i) {
                let span = (*last - *first).as_secs_f64();
                let count = j - i + 1;
                let allowed = f64::from(rate) * span + f64::from(burst);
                assert!(
                    count as f64 <= allowed + 1e-9,
                    "{count} permits within {span} s"
                );
            }
        }
    }

    /// Counter values by name and labels.
    #[derive(Debug, Default)]
    struct Counters(Mutex<Vec<(String, Arc<AtomicU64>)>>);

    #[derive(Debug)]
    struct Cell(Arc<AtomicU64>);

    impl CounterFn for Cell {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Ordering::SeqCst);
        }

        fn absolute(&self, value: u64) {
            self.0.store(value, Ordering::SeqCst);
        }
    }

    impl metrics::Recorder for Counters {
        fn describe_counter(&self, _: KeyName, _: Option<metrics::Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<metrics::Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<metrics::Unit>, _: SharedString) {}

        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            let cell = Arc::new(AtomicU64::new(0));
            lock(&self.0).push((name, cell.clone()));
            Counter::from_arc(Arc::new(Cell(cell)))
        }

        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }

        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    impl Counters {
        fn total(&self, name: &str) -> u64 {
            lock(&self.0)
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.load(Ordering::SeqCst))
                .sum()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_whose_permit_comes_after_the_deadline_is_refused_unsent() {
        let counters = Counters::default();
        // The test runtime polls everything on this thread.
        let _guard = metrics::set_default_local_recorder(&counters);
        let klarna = Klarna::new(&[]);
        let service = OutboundLimitLayer::new(limiter(1, 1)).layer(klarna.clone());
        let started = Instant::now();
        assert!(send(service.clone(), MINUTE).await.is_ok());
        // The next permit comes in 1 s: not within 500 ms, nor within 1 s less the time an
        // attempt needs at least.
        for within in [500 * MS, Duration::from_secs(1)] {
            let refused = send(service.clone(), within).await.err();
            assert_eq!(
                refused,
                Some(KlarnaError::Throttled(Duration::from_secs(1)))
            );
        }
        assert_eq!(started.elapsed(), Duration::ZERO, "a refusal does not wait");
        assert_eq!(klarna.calls().len(), 1, "a refused attempt is not sent");
        assert_eq!(
            counters.total("klarna_outbound_throttled_total{account=}"),
            2
        );
        // The refusals took nothing: the next permit is still the one at 1 s.
        assert!(send(service.clone(), 2 * MINUTE).await.is_ok());
        assert_eq!(klarna.calls(), [Duration::ZERO, Duration::from_secs(1)]);
    }

    fn retry_policy() -> RetryPolicy {
        RetryPolicy::new(&RetryConfig {
            base_backoff: MS,
            max_backoff: MS,
            ..RetryConfig::default()
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test(start_paused = true)]
    async fn every_attempt_takes_a_permit_resends_included() {
        let klarna = Klarna::new(&[503, 200]);
        let limiter = limiter(1, 1);
        let stack = ServiceBuilder::new()
            .layer(RetryLayer::new(retry_policy()))
            .layer(AttemptTraceLayer)
            .layer(OutboundLimitLayer::new(limiter.clone()))
            .service(klarna.clone());
        let result = with_deadline(Instant::now() + MINUTE, stack.oneshot(request())).await;
        assert_eq!(result.map(|r| r.status().as_u16()).ok(), Some(200));
        // The resend waited for the second permit, a second after the first.
        assert_eq!(klarna.calls(), [Duration::ZERO, Duration::from_secs(1)]);
        // Two permits are gone: the third comes a second after the resend.
        let third = with_deadline(Instant::now() + 500 * MS, limiter.acquire()).await;
        assert_eq!(third, Err(KlarnaError::Throttled(Duration::from_secs(1))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_resend_refused_by_the_limit_ends_the_call_as_throttled() {
        let klarna = Klarna::new(&[503, 200]);
        let stack = ServiceBuilder::new()
            .layer(RetryLayer::new(retry_policy()))
            .layer(AttemptTraceLayer)
            .layer(OutboundLimitLayer::new(limiter(1, 1)))
            .service(klarna.clone());
        let result = with_deadline(Instant::now() + 700 * MS, stack.oneshot(request())).await;
        // Not turned into anything else here: whether the operation was executed is the
        // domain's judgement, from the attempt log.
        assert!(
            matches!(result, Err(KlarnaError::Throttled(_))),
            "{result:?}"
        );
        assert_eq!(klarna.calls().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_deadline_the_permit_is_waited_for() {
        let limiter = limiter(2, 1);
        let started = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.acquire().await, Ok(()));
        }
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(limiter.degraded(), None);
    }

    #[test]
    fn the_fallback_is_a_share_of_rate_and_burst() {
        let config = OutboundRateLimit {
            requests_per_second: 200,
            burst: 40,
            shared: Some(SharedLimit::new("redis://127.0.0.1:1/", "eu-live", 200)),
        };
        let limiter = OutboundLimiter::new(&config).unwrap_or_else(|e| panic!("{e}"));
        let State::Shared(quota) = &limiter.inner.state else {
            panic!("not shared: {limiter:?}");
        };
        assert_eq!(quota.fallback_rate, 50);
        assert_eq!(quota.fallback.interval, 20 * MS);
        assert_eq!(quota.fallback.burst_span, 200 * MS);
        assert_eq!(quota.interval_us, 5_000);
        assert_eq!(quota.key, "refund-gateway:klarna-quota:eu-live");
        assert_eq!(limiter.degraded(), None);
    }

    #[test]
    fn debug_never_shows_the_redis_url() {
        let config = OutboundRateLimit::new(50)
            .shared_through("redis://user:hunter2@redis.internal:6379/0", "eu-live");
        let limiter = OutboundLimiter::new(&config).unwrap_or_else(|e| panic!("{e}"));
        for shown in [format!("{config:?}"), format!("{limiter:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(!shown.contains("redis.internal"), "{shown}");
            assert!(shown.contains("eu-live"), "{shown}");
        }
    }
}
