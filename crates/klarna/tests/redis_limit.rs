//! The outbound rate limit shared through a real Redis: two limiters ("replicas") on one key
//! stay within one quota together; a refusal takes no permit; when Redis dies calls go on at
//! the local fallback share (one WARN, `degraded()` says so), and when it is back the limit is
//! shared again (one INFO).
//!
//! Each test starts its own `redis-server` on a free loopback port (no persistence), killed
//! when the test ends. Without `redis-server` on PATH a test is skipped, saying
//! `SKIPPED (no Redis): <test name>` on stderr, except under `CI=true`, where it fails: the
//! README's test command (`scripts/test`) installs Redis. These tests run on the real clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use refund_gateway_domain::KlarnaError;
use refund_gateway_klarna::{OutboundLimiter, OutboundRateLimit, SharedLimit, with_deadline};
use tokio::time::Instant;

// The test suite's one bounded wait on a condition and its throwaway Redis, included from
// their source: the crate that holds them depends on this one.
#[path = "../../../tests/src/redis.rs"]
mod redis_server;
#[path = "../../../tests/src/wait.rs"]
mod wait;

use redis_server::{PATIENCE, RedisServer, free_port};

/// A key of this test's own.
fn key(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

fn shared(redis: &RedisServer, key: &str, rate: u32, burst: u32) -> OutboundRateLimit {
    OutboundRateLimit {
        requests_per_second: rate,
        burst,
        shared: Some(SharedLimit {
            // A Redis busy with the other replica, or a machine busy with other tests, can
            // take longer than the default 50 ms: a timeout would fall back where these tests
            // expect Redis to decide. A dead Redis refuses connections at once.
            timeout: Duration::from_secs(1),
            ..SharedLimit::new(redis.url(), key, rate)
        }),
    }
}

/// Takes a permit within `within`.
async fn acquire(limiter: &OutboundLimiter, within: Duration) -> Result<(), KlarnaError> {
    with_deadline(Instant::now() + within, limiter.acquire()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_one_key_stay_within_one_quota() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (rate, burst) = (50_u32, 5_u32);
    let key = key("quota");
    let replicas = [
        OutboundLimiter::new(&shared(&redis, &key, rate, burst)).unwrap(),
        OutboundLimiter::new(&shared(&redis, &key, rate, burst)).unwrap(),
    ];
    // Each replica keeps four callers asking for permits for one second; each waits for its
    // permit (the queue is never longer than the wait allowed), so a permit's time is when
    // the request would have been sent.
    let start = Instant::now();
    let window = Duration::from_secs(1);
    let mut tasks = Vec::new();
    for (replica, limiter) in replicas.iter().enumerate() {
        for _ in 0..4 {
            let limiter = limiter.clone();
            tasks.push(tokio::spawn(async move {
                let mut granted = Vec::new();
                while start.elapsed() < window {
                    match acquire(&limiter, Duration::from_secs(2)).await {
                        Ok(()) => granted.push((replica, start.elapsed())),
                        Err(e) => panic!("a permit within 2 s was refused: {e}"),
                    }
                }
                granted
            }));
        }
    }
    let mut granted = Vec::new();
    for task in tasks {
        granted.extend(task.await.unwrap());
    }
    for limiter in &replicas {
        assert_eq!(limiter.degraded(), None, "Redis decided every permit");
    }
    let in_window: Vec<_> = granted.iter().filter(|(_, at)| *at <= window).collect();
    let allowed = f64::from(rate) * window.as_secs_f64() + f64::from(burst);
    let count = in_window.len() as f64;
    // Slack for the clocks: Redis' decides, ours measures after the answer arrives.
    assert!(
        count <= allowed + 2.0,
        "{count} permits in {window:?}, allowed {allowed}"
    );
    // Both replicas kept asking all along, so together they used most of the quota.
    assert!(
        count >= 0.8 * allowed,
        "{count} permits in {window:?}, allowed {allowed}"
    );
    for replica in 0..2 {
        let own = in_window.iter().filter(|(r, _)| *r == replica).count();
        assert!(own >= 10, "replica {replica} got {own} of {count} permits");
    }
}

#[tokio::test]
async fn a_refusal_takes_no_permit_and_the_key_expires() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let key = key("refusal");
    let limiter = OutboundLimiter::new(&shared(&redis, &key, 2, 1)).unwrap();
    let started = Instant::now();
    assert_eq!(acquire(&limiter, Duration::from_secs(5)).await, Ok(()));
    // The next permit is 500 ms away: refused within 100 ms, at once.
    let refused = acquire(&limiter, Duration::from_millis(100)).await;
    let Err(KlarnaError::Throttled(wait)) = refused else {
        panic!("{refused:?}");
    };
    assert!(
        wait > Duration::from_millis(300) && wait <= Duration::from_millis(500),
        "{wait:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(300));
    // Had the refusal taken a permit, this one would come a second after the first.
    assert_eq!(acquire(&limiter, Duration::from_secs(5)).await, Ok(()));
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_millis(900),
        "{elapsed:?}"
    );
    // The state expires once the account is idle again.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let redis_key = SharedLimit::new(redis.url(), &key, 2).redis_key();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&redis_key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 1_000, "{redis_key}: PTTL {ttl}");
}

/// Log lines, as text.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn lines_with(&self, level: &str, text: &str) -> usize {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|line| line.contains(level) && line.contains(text))
            .count()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn an_outage_falls_back_to_the_local_share_and_recovery_shares_again() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // The test runtime polls everything on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);
    let key = key("outage");
    let limiter = OutboundLimiter::new(&shared(&redis, &key, 100, 100)).unwrap();
    let within = Duration::from_secs(2);
    for _ in 0..5 {
        assert_eq!(acquire(&limiter, within).await, Ok(()));
    }
    assert_eq!(limiter.degraded(), None);

    redis.kill();
    // The fallback share is 25 per second with a burst of 25: none of these waits long.
    for _ in 0..30 {
        assert_eq!(acquire(&limiter, within).await, Ok(()), "during the outage");
    }
    let degraded = limiter.degraded().expect("degraded while Redis is down");
    assert!(
        degraded.contains("Redis unreachable") && degraded.contains("25 requests/s"),
        "{degraded}"
    );
    assert!(!degraded.contains("redis://"), "{degraded}");
    assert_eq!(logs.lines_with("WARN", "Redis unreachable"), 1);

    redis.restart().await;
    let limiter_ref = &limiter;
    wait::wait_until(
        "the shared limit to use Redis again",
        PATIENCE,
        async || {
            acquire(limiter_ref, within).await?;
            Ok::<_, Box<dyn std::error::Error>>(limiter_ref.degraded().is_none().then_some(()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(logs.lines_with("WARN", "Redis unreachable"), 1);
    assert_eq!(logs.lines_with("INFO", "Redis reachable again"), 1);
    for _ in 0..5 {
        assert_eq!(acquire(&limiter, within).await, Ok(()));
    }
    assert_eq!(limiter.degraded(), None);
}

#[tokio::test]
async fn a_redis_that_was_never_there_falls_back_from_the_first_call() {
    // No server needed: nothing listens on the port.
    let config = OutboundRateLimit {
        requests_per_second: 8,
        burst: 8,
        shared: Some(SharedLimit::new(
            format!("redis://127.0.0.1:{}/", free_port()),
            "absent",
            8,
        )),
    };
    let limiter = OutboundLimiter::new(&config).unwrap();
    let started = Instant::now();
    // The fallback: 2 per second, a burst of 2.
    for _ in 0..2 {
        assert_eq!(acquire(&limiter, Duration::from_secs(5)).await, Ok(()));
    }
    let third = acquire(&limiter, Duration::from_millis(100)).await;
    assert!(matches!(third, Err(KlarnaError::Throttled(_))), "{third:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let degraded = limiter.degraded().expect("degraded");
    assert!(degraded.contains("account absent"), "{degraded}");
}
