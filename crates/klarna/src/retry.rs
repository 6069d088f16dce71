//! Resending Klarna calls, only when that cannot do harm (see docs/klarna.md#retries and
//! docs/architecture.md#middleware), and never past the caller's deadline.
//!
//! [`RetryPolicy`] is a [`tower::retry::Policy`] for the outbound stack, above the attempt
//! trace so that every attempt gets its own span. What it resends:
//!
//! | outcome of an attempt                | GET, or keyed POST/PATCH | POST/PATCH without key |
//! |--------------------------------------|--------------------------|------------------------|
//! | `NotSent` (provably never left)      | resend                   | resend                 |
//! | 5xx answer                           | resend                   | no                     |
//! | 408 or 429 answer                    | resend                   | no                     |
//! | `NoAnswer` (transport error, timeout)| resend                   | no                     |
//! | 409 after an attempt of this call    | resend (keyed only)      | no                     |
//! | that may have reached Klarna         |                          |                        |
//! | any other 4xx                        | no                       | no                     |
//! | 2xx / 1xx / 3xx                      | no (done)                | no (done)              |
//! | `BadResponse`                        | no                       | no                     |
//!
//! A 409 to a resend may mean that Klarna is still executing the earlier attempt under the same
//! key (Klarna does not document its answer to concurrent duplicates; the common idempotency
//! convention is 409): asked again a little later, Klarna replays that attempt's answer. A 409
//! to a first attempt is Klarna's answer about the resource, and is not resent.
//!
//! `BadResponse` is a success we could not read (or an oversized answer): Klarna did what was
//! asked, and resending under the same key would replay the same unreadable answer, so it is
//! returned as is for the caller to resolve.
//!
//! Waits: exponential backoff with full jitter (a uniform draw below `base * 2^n`, capped at
//! `max_backoff`), and at least Klarna's `Retry-After`. A resend also needs
//! - an attempt left (`max_attempts`, the first included),
//! - the caller's deadline not reached by the end of the wait (plus [`MIN_ATTEMPT_TIME`]);
//!   otherwise the last outcome is returned, and
//! - a token from the client's [`TpsBudget`], so that an outage does not multiply the load
//!   on Klarna: each call deposits once, each resend withdraws.
//!
//! The call's outcome is the last attempt's, with one exception: a final `NotSent` after an
//! attempt that may have reached Klarna (no answer, a 5xx or a 408) is reported as `NoAnswer`,
//! so that "not sent" always means that no attempt of the call can have been executed. What an
//! outcome proves is not decided here: every attempt of a mutating call that is followed by a
//! resend goes to the attempt log (`attempts.rs`), and the domain's `classify_mutation` judges
//! the whole history.
//!
//! Every resend scheduled is counted in the `klarna_retries_total` counter, labelled `reason`
//! = `status_5xx`, `status_408`, `status_429`, `status_409`, `no_answer` or `not_sent`.
//!
//! The deadline of a call is a task-local set by [`with_deadline`], so that the domain's
//! `KlarnaApi` and `PaymentsApi` ports need no deadline parameter (and no tokio). Both clients
//! ([`crate::KlarnaClient`], [`crate::PaymentsClient`], through `transport.rs`) read it for
//! each call (falling back to `now + default_deadline`) and scopes it around the whole
//! stack; the policy and the per-attempt timeout read it from there with
//! [`current_deadline`]. Both read it while being polled by the caller's task, which is where
//! tower's retry and timeout futures run.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderMap;
use http::{Method, StatusCode};
use refund_gateway_domain::{Attempt, KlarnaError};
use time::OffsetDateTime;
use tokio::time::{Instant, Sleep};
use tower::retry::Policy;
use tower::retry::budget::{Budget, TpsBudget};
use tower::util::rng::{HasherRng, Rng};

use crate::config::{KlarnaConfigError, RetryConfig};
use crate::contract::IDEMPOTENCY_KEY_HEADER;
use crate::error::retry_after;
use crate::http::{OutboundRequest, OutboundResponse};

/// Name of the counter of scheduled resends, labelled `reason`.
pub const RETRIES_METRIC: &str = "klarna_retries_total";

/// No resend is started with less time than this left before the deadline: such an attempt
/// could hardly finish, and one that times out after sending would turn a known outcome (a
/// 5xx, or "not sent") into an unknown one.
pub const MIN_ATTEMPT_TIME: Duration = Duration::from_millis(10);

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `f` with `deadline` as the deadline of every Klarna call made inside it (by
/// [`crate::KlarnaClient`] or [`crate::PaymentsClient`]): no attempt, and no wait between attempts, ends after it. A deadline never
/// extends an enclosing one: nested scopes keep the earlier of the two. Calls outside any
/// scope get `now + default_deadline` each.
///
/// The deadline belongs to the task polling `f`: work `f` spawns onto other tasks does not
/// see it. The enclosing deadline is the one current where `with_deadline` is called, so call
/// it in the task that awaits the result.
///
/// Not an `async fn`: one would hold `f` twice (as its argument and inside the scope it
/// awaits), doubling the size of every operation's task.
pub fn with_deadline<F: Future>(deadline: Instant, f: F) -> impl Future<Output = F::Output> {
    let deadline = current_deadline().map_or(deadline, |outer| outer.min(deadline));
    DEADLINE.scope(deadline, f)
}

/// The deadline set by the innermost enclosing [`with_deadline`], if any.
pub fn current_deadline() -> Option<Instant> {
    DEADLINE.try_with(|deadline| *deadline).ok()
}

/// Why an attempt is resent; the `reason` label of [`RETRIES_METRIC`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Status5xx,
    Status408,
    Status429,
    /// A 409 after an attempt of the call that may have reached Klarna.
    Status409,
    NoAnswer,
    NotSent,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Status5xx => "status_5xx",
            Self::Status408 => "status_408",
            Self::Status429 => "status_429",
            Self::Status409 => "status_409",
            Self::NoAnswer => "no_answer",
            Self::NotSent => "not_sent",
        }
    }
}

/// How the wait below the backoff ceiling is drawn.
#[derive(Debug, Clone, Copy)]
enum Jitter {
    /// Uniformly in `[0, ceiling)`: full jitter, so that callers failing together do not
    /// come back together.
    Full,
    /// A fixed fraction of the ceiling, to make waits predictable in tests.
    #[cfg(test)]
    Fixed(f64),
}

#[derive(Debug)]
struct Shared {
    max_attempts: u32,
    base_backoff: Duration,
    max_backoff: Duration,
    jitter: Jitter,
    budget: TpsBudget,
}

/// The outbound retry policy (see the module documentation for the table). Clones share the
/// retry budget; tower's [`Retry`](tower::retry::Retry) clones the policy for each call, and
/// the per-call count lives in that clone.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    shared: Arc<Shared>,
    /// Attempts of this call that have finished.
    attempts: u32,
    /// An attempt of this call may have reached Klarna (no answer, a 5xx or a 408).
    maybe_received: bool,
}

impl RetryPolicy {
    /// A policy with a fresh budget. Fails when `config` breaks a limit of [`RetryConfig`].
    pub fn new(config: &RetryConfig) -> Result<Self, KlarnaConfigError> {
        config.validate()?;
        Ok(Self::with_jitter(config, Jitter::Full))
    }

    fn with_jitter(config: &RetryConfig, jitter: Jitter) -> Self {
        Self {
            shared: Arc::new(Shared {
                max_attempts: config.max_attempts,
                base_backoff: config.base_backoff,
                max_backoff: config.max_backoff,
                jitter,
                // `validate` checked the limits under which `TpsBudget::new` panics.
                budget: TpsBudget::new(
                    config.budget_ttl,
                    config.budget_min_per_sec,
                    config.budget_retry_percent,
                ),
            }),
            attempts: 0,
            maybe_received: false,
        }
    }

    /// The wait before resend number `resend` (1 for the first): a draw below
    /// `min(max_backoff, base_backoff * 2^(resend-1))`.
    fn backoff(&self, resend: u32) -> Duration {
        let shared = &self.shared;
        let doublings = resend.saturating_sub(1).min(31);
        let ceiling = shared
            .base_backoff
            .saturating_mul(1_u32 << doublings)
            .min(shared.max_backoff);
        let fraction = match shared.jitter {
            Jitter::Full => HasherRng::new().next_f64(),
            #[cfg(test)]
            Jitter::Fixed(fraction) => fraction,
        };
        // `fraction` is within [0, 1], so the product is finite, non-negative and at most
        // `ceiling`: `mul_f64` cannot panic.
        ceiling.mul_f64(fraction.clamp(0.0, 1.0))
    }
}

impl Policy<OutboundRequest, OutboundResponse, KlarnaError> for RetryPolicy {
    type Future = Sleep;

    /// Decides on a resend after each attempt. When there is none, a final `NotSent` after an
    /// earlier attempt that may have reached Klarna becomes `NoAnswer`: the call as a whole
    /// did not provably stay unsent, and the caller must not treat it as if it had.
    fn retry(
        &mut self,
        request: &mut OutboundRequest,
        result: &mut Result<OutboundResponse, KlarnaError>,
    ) -> Option<Sleep> {
        self.attempts = self.attempts.saturating_add(1);
        if self.attempts == 1 {
            // One deposit per call, whatever its outcome: resends are allowed as a share of
            // calls made, so they stay a bounded fraction of the load during an outage.
            self.shared.budget.deposit();
        }
        let resend = self.decide(request, result);
        if resend.is_none()
            && self.maybe_received
            && let Err(KlarnaError::NotSent(message)) = result
        {
            *result = Err(KlarnaError::NoAnswer(format!(
                "{message} (on attempt {}; an earlier attempt may have reached Klarna)",
                self.attempts
            )));
        }
        if matches!(
            classify(result),
            Some((Reason::NoAnswer | Reason::Status5xx | Reason::Status408, _))
        ) {
            self.maybe_received = true;
        }
        if resend.is_some() && !is_read(request) {
            // The client logs the call's last attempt itself, once it has read the answer.
            crate::attempts::record(match result {
                Ok(response) => Attempt::Answered(response.status().as_u16()),
                Err(e) => Attempt::of_error(e),
            });
        }
        resend
    }

    /// A copy to resend: the body is in memory, so there always is one.
    fn clone_request(&mut self, request: &OutboundRequest) -> Option<OutboundRequest> {
        Some(request.clone())
    }
}

impl RetryPolicy {
    /// The wait before the next attempt, or `None` to return `result` as the call's outcome.
    fn decide(
        &self,
        request: &OutboundRequest,
        result: &Result<OutboundResponse, KlarnaError>,
    ) -> Option<Sleep> {
        let (reason, asked_wait) = classify(result).or_else(|| self.still_running(result))?;
        if reason != Reason::NotSent && !resend_is_safe(request) {
            return None;
        }
        let method = request.method();
        let path = request.uri().path();
        if self.attempts >= self.shared.max_attempts {
            tracing::debug!(
                http.request.method = %method,
                url.path = path,
                attempts = self.attempts,
                reason = reason.as_str(),
                "not resending the Klarna call: no attempt left"
            );
            return None;
        }
        let wait = self
            .backoff(self.attempts)
            .max(asked_wait.unwrap_or_default());
        if let Some(deadline) = current_deadline() {
            let latest_start = deadline.checked_sub(MIN_ATTEMPT_TIME);
            let start = Instant::now().checked_add(wait);
            if !matches!((start, latest_start), (Some(s), Some(l)) if s <= l) {
                tracing::debug!(
                    http.request.method = %method,
                    url.path = path,
                    attempts = self.attempts,
                    reason = reason.as_str(),
                    wait_ms = millis(wait),
                    "not resending the Klarna call: the wait would reach the deadline"
                );
                return None;
            }
        }
        // Withdrawn last, so that resends refused above do not use up the budget.
        if !self.shared.budget.withdraw() {
            tracing::warn!(
                http.request.method = %method,
                url.path = path,
                attempts = self.attempts,
                reason = reason.as_str(),
                "not resending the Klarna call: retry budget exhausted"
            );
            return None;
        }
        metrics::counter!(RETRIES_METRIC, "reason" => reason.as_str()).increment(1);
        tracing::info!(
            http.request.method = %method,
            url.path = path,
            attempts = self.attempts,
            reason = reason.as_str(),
            wait_ms = millis(wait),
            "resending the Klarna call"
        );
        Some(tokio::time::sleep(wait))
    }

    /// A 409 after an attempt of this call that may have reached Klarna: perhaps that attempt
    /// is still being executed under the same key, and a later resend gets its answer.
    fn still_running(
        &self,
        result: &Result<OutboundResponse, KlarnaError>,
    ) -> Option<(Reason, Option<Duration>)> {
        if !self.maybe_received {
            return None;
        }
        match result {
            Ok(response) if response.status() == StatusCode::CONFLICT => {
                Some((Reason::Status409, retry_after_header(response.headers())))
            }
            Err(KlarnaError::Answered(answer)) if answer.status == 409 => {
                Some((Reason::Status409, answer.retry_after))
            }
            _ => None,
        }
    }
}

/// Whether an outcome may be worth resending, with Klarna's `Retry-After` if it sent one.
fn classify(result: &Result<OutboundResponse, KlarnaError>) -> Option<(Reason, Option<Duration>)> {
    match result {
        Ok(response) => by_status(response.status().as_u16())
            .map(|reason| (reason, retry_after_header(response.headers()))),
        // The stack hands statuses up as responses; should a layer ever answer with one as an
        // error, it is treated alike.
        Err(KlarnaError::Answered(answer)) => {
            by_status(answer.status).map(|reason| (reason, answer.retry_after))
        }
        Err(KlarnaError::NotSent(_)) => Some((Reason::NotSent, None)),
        // The account's own limit refused to wait past the deadline: a resend would too.
        Err(KlarnaError::Throttled(_)) => None,
        Err(KlarnaError::NoAnswer(_)) => Some((Reason::NoAnswer, None)),
        // Klarna acted, and a resend under the same key replays the same answer.
        Err(KlarnaError::BadResponse(_)) => None,
    }
}

fn by_status(status: u16) -> Option<Reason> {
    if status == StatusCode::TOO_MANY_REQUESTS.as_u16() {
        Some(Reason::Status429)
    } else if status == StatusCode::REQUEST_TIMEOUT.as_u16() {
        Some(Reason::Status408)
    } else if (500..600).contains(&status) {
        Some(Reason::Status5xx)
    } else {
        // Success is done; any other 4xx is Klarna's answer to this request, and asking again
        // gets the same one (never retry a 4xx blindly: see docs/klarna.md#retries).
        None
    }
}

fn retry_after_header(headers: &HeaderMap) -> Option<Duration> {
    retry_after(headers, OffsetDateTime::now_utc())
}

/// A GET or HEAD: it changes nothing at Klarna.
fn is_read(request: &OutboundRequest) -> bool {
    matches!(*request.method(), Method::GET | Method::HEAD)
}

/// A request that may have reached Klarna can be resent only if Klarna executes it at most
/// once: a read, or a write carrying `Klarna-Idempotency-Key`.
fn resend_is_safe(request: &OutboundRequest) -> bool {
    if is_read(request) {
        return true;
    }
    request
        .headers()
        .get(IDEMPOTENCY_KEY_HEADER)
        .is_some_and(|key| !key.is_empty())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, VecDeque};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    use bytes::Bytes;
    use metrics::{Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, SharedString};
    use tower::ServiceExt;
    use tower::retry::Retry;

    /// What the scripted service answers, in order; once empty it answers 200.
    #[derive(Debug, Clone)]
    enum Step {
        Status(u16, Option<u64>),
        Fail(KlarnaError),
    }

    use Step::{Fail, Status};

    #[derive(Debug, Clone, Default)]
    struct Script {
        steps: Arc<Mutex<VecDeque<Step>>>,
        /// When each attempt started.
        calls: Arc<Mutex<Vec<Instant>>>,
    }

    impl Script {
        fn new(steps: impl IntoIterator<Item = Step>) -> Self {
            let script = Self::default();
            lock(&script.steps).extend(steps);
            script
        }

        /// Fails every attempt the same way.
        fn always(step: Step) -> Self {
            Self::new(std::iter::repeat_n(step, 1_000))
        }

        fn calls(&self) -> Vec<Instant> {
            lock(&self.calls).clone()
        }

        fn service(
            &self,
        ) -> impl tower::Service<
            OutboundRequest,
            Response = OutboundResponse,
            Error = KlarnaError,
            Future = impl Future<Output = Result<OutboundResponse, KlarnaError>> + Send,
        > + Clone
        + Send {
            let script = self.clone();
            tower::service_fn(move |_: OutboundRequest| {
                let script = script.clone();
                async move {
                    lock(&script.calls).push(Instant::now());
                    let step = lock(&script.steps).pop_front();
                    match step.unwrap_or(Status(200, None)) {
                        Status(status, retry_after) => Ok(answer(status, retry_after)),
                        Fail(error) => Err(error),
                    }
                }
            })
        }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn answer(status: u16, retry_after: Option<u64>) -> OutboundResponse {
        let mut response = http::Response::builder().status(status);
        if let Some(secs) = retry_after {
            response = response.header("Retry-After", secs.to_string());
        }
        response
            .body(Bytes::new())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn request(method: Method, keyed: bool) -> OutboundRequest {
        let mut request = http::Request::builder()
            .method(method)
            .uri("https://api.klarna.com/ordermanagement/v1/orders/o/refunds")
            .body(Bytes::from_static(b"{}"))
            .unwrap_or_else(|e| panic!("{e}"));
        if keyed {
            request.headers_mut().insert(
                IDEMPOTENCY_KEY_HEADER,
                http::HeaderValue::from_static("6f1c0d2e-9a57-4f1b-8c55-4a8f0b3f1e21"),
            );
        }
        request
    }

    fn get() -> OutboundRequest {
        request(Method::GET, false)
    }

    fn keyed_post() -> OutboundRequest {
        request(Method::POST, true)
    }

    fn unkeyed_post() -> OutboundRequest {
        request(Method::POST, false)
    }

    fn config() -> RetryConfig {
        RetryConfig::default()
    }

    /// A policy whose waits are the whole ceiling, so elapsed time is predictable.
    fn predictable(config: &RetryConfig) -> RetryPolicy {
        RetryPolicy::with_jitter(config, Jitter::Fixed(1.0))
    }

    fn random(config: &RetryConfig) -> RetryPolicy {
        RetryPolicy::new(config).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sends `request` through `policy` over `script`, within `deadline` from now.
    async fn send(
        policy: RetryPolicy,
        script: &Script,
        request: OutboundRequest,
        deadline: Duration,
    ) -> Result<OutboundResponse, KlarnaError> {
        let service = Retry::new(policy, script.service());
        with_deadline(Instant::now() + deadline, service.oneshot(request)).await
    }

    fn status_of(result: &Result<OutboundResponse, KlarnaError>) -> Option<u16> {
        result.as_ref().ok().map(|r| r.status().as_u16())
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn get_is_resent_after_two_503s() {
        let script = Script::new([Status(503, None), Status(503, None), Status(200, None)]);
        let result = send(random(&config()), &script, get(), MINUTE).await;
        assert_eq!(status_of(&result), Some(200));
        assert_eq!(script.calls().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn keyed_post_is_resent_after_a_5xx() {
        for status in [500, 502, 503, 504] {
            let script = Script::new([Status(status, None), Status(201, None)]);
            let result = send(random(&config()), &script, keyed_post(), MINUTE).await;
            assert_eq!(status_of(&result), Some(201), "{status}");
            assert_eq!(script.calls().len(), 2, "{status}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn post_without_a_key_is_not_resent_after_a_503_429_or_no_answer() {
        for step in [
            Status(503, None),
            Status(429, Some(1)),
            Fail(KlarnaError::NoAnswer("reset".into())),
        ] {
            let script = Script::new([step.clone(), Status(201, None)]);
            let result = send(random(&config()), &script, unkeyed_post(), MINUTE).await;
            assert_ne!(status_of(&result), Some(201), "{step:?}");
            assert_eq!(script.calls().len(), 1, "{step:?}");
        }
        let script = Script::new([Status(503, None)]);
        let patch = request(Method::PATCH, false);
        let result = send(random(&config()), &script, patch, MINUTE).await;
        assert_eq!(status_of(&result), Some(503));
        assert_eq!(script.calls().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn client_errors_other_than_429_are_never_resent() {
        for status in [400, 401, 403, 404, 409, 413, 422] {
            for request in [get(), keyed_post()] {
                let script = Script::new([Status(status, None)]);
                let result = send(random(&config()), &script, request, MINUTE).await;
                assert_eq!(status_of(&result), Some(status));
                assert_eq!(script.calls().len(), 1, "{status}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_of_a_429_is_waited_for() {
        let script = Script::new([Status(429, Some(3)), Status(200, None)]);
        let started = Instant::now();
        let result = send(random(&config()), &script, get(), MINUTE).await;
        assert_eq!(status_of(&result), Some(200));
        let calls = script.calls();
        assert_eq!(calls.len(), 2);
        // Backoff alone is at most 100 ms: the 3 s come from Retry-After.
        assert!(calls[1] - calls[0] >= Duration::from_secs(3), "{calls:?}");
        assert!(started.elapsed() < Duration::from_millis(3_200));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_of_a_503_on_a_keyed_post_is_waited_for() {
        let script = Script::new([Status(503, Some(2)), Status(201, None)]);
        let result = send(random(&config()), &script, keyed_post(), MINUTE).await;
        assert_eq!(status_of(&result), Some(201));
        let calls = script.calls();
        assert!(calls[1] - calls[0] >= Duration::from_secs(2), "{calls:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_beyond_the_deadline_returns_the_last_answer_at_once() {
        let script = Script::new([Status(429, Some(5)), Status(200, None)]);
        let started = Instant::now();
        let result = send(random(&config()), &script, get(), Duration::from_secs(4)).await;
        assert_eq!(status_of(&result), Some(429));
        assert_eq!(
            result.ok().and_then(|r| r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok().map(str::to_owned))),
            Some("5".to_owned())
        );
        assert_eq!(script.calls().len(), 1);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn not_sent_is_resent_for_any_method() {
        for request in [unkeyed_post(), request(Method::PATCH, false), get()] {
            let script = Script::new([
                Fail(KlarnaError::NotSent("connection refused".into())),
                Status(201, None),
            ]);
            let result = send(random(&config()), &script, request, MINUTE).await;
            assert_eq!(status_of(&result), Some(201));
            assert_eq!(script.calls().len(), 2);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn not_sent_at_last_after_a_possible_delivery_is_no_answer() {
        let refused = || Fail(KlarnaError::NotSent("connection refused".into()));
        let script = Script::new([
            Fail(KlarnaError::NoAnswer("reset".into())),
            refused(),
            refused(),
            refused(),
        ]);
        let result = send(random(&config()), &script, keyed_post(), MINUTE).await;
        assert!(
            matches!(result, Err(KlarnaError::NoAnswer(ref m)) if m.contains("earlier attempt")),
            "{result:?}"
        );
        assert_eq!(script.calls().len(), 4);

        let script = Script::new([Status(503, None), refused()]);
        let two = RetryConfig {
            max_attempts: 2,
            ..config()
        };
        let result = send(random(&two), &script, keyed_post(), MINUTE).await;
        assert!(
            matches!(result, Err(KlarnaError::NoAnswer(_))),
            "{result:?}"
        );

        // Never sent at all stays NotSent, and a 429 proves nothing was done.
        let script = Script::new([Status(429, None), refused(), refused(), refused()]);
        let result = send(random(&config()), &script, keyed_post(), MINUTE).await;
        assert!(matches!(result, Err(KlarnaError::NotSent(_))), "{result:?}");
        let script = Script::always(refused());
        let result = send(random(&config()), &script, keyed_post(), MINUTE).await;
        assert!(matches!(result, Err(KlarnaError::NotSent(_))), "{result:?}");
        assert_eq!(script.calls().len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_409_after_a_possible_delivery_is_resent_and_gets_the_replay() {
        // The earlier attempt may still be running at Klarna under the same key.
        for earlier in [
            Fail(KlarnaError::NoAnswer("timeout".into())),
            Status(503, None),
            Status(408, None),
        ] {
            let script = Script::new([earlier.clone(), Status(409, Some(1)), Status(201, None)]);
            let started = Instant::now();
            let result = send(random(&config()), &script, keyed_post(), MINUTE).await;
            assert_eq!(status_of(&result), Some(201), "{earlier:?}");
            assert_eq!(script.calls().len(), 3, "{earlier:?}");
            assert!(started.elapsed() >= Duration::from_secs(1), "{earlier:?}");
        }
        // After a 429 nothing can be running: the 409 is Klarna's answer.
        let script = Script::new([Status(429, None), Status(409, None), Status(201, None)]);
        let result = send(random(&config()), &script, keyed_post(), MINUTE).await;
        assert_eq!(status_of(&result), Some(409));
        assert_eq!(script.calls().len(), 2);
        // A 409 as long as attempts last is returned as the last answer.
        let script = Script::new([Status(503, None), Status(409, None), Status(409, None)]);
        let two = RetryConfig {
            max_attempts: 3,
            ..config()
        };
        let result = send(random(&two), &script, keyed_post(), MINUTE).await;
        assert_eq!(status_of(&result), Some(409));
        assert_eq!(script.calls().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn bad_response_is_never_resent() {
        for request in [get(), keyed_post(), unkeyed_post()] {
            let script = Script::new([
                Fail(KlarnaError::BadResponse("answer too large".into())),
                Status(200, None),
            ]);
            let result = send(random(&config()), &script, request, MINUTE).await;
            assert!(
                matches!(result, Err(KlarnaError::BadResponse(_))),
                "{result:?}"
            );
            assert_eq!(script.calls().len(), 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_answer_on_a_keyed_post_is_resent() {
        let script = Script::new([
            Fail(KlarnaError::NoAnswer("attempt timeout".into())),
            Fail(KlarnaError::NoAnswer("connection reset".into())),
            Status(201, None),
        ]);
        let result = send(random(&config()), &script, keyed_post(), MINUTE).await;
        assert_eq!(status_of(&result), Some(201));
        assert_eq!(script.calls().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn max_attempts_is_respected_and_the_last_outcome_returned() {
        let script = Script::always(Status(502, None));
        let result = send(random(&config()), &script, get(), MINUTE).await;
        assert_eq!(status_of(&result), Some(502));
        assert_eq!(script.calls().len(), 4);

        let script = Script::new([
            Status(503, None),
            Fail(KlarnaError::NoAnswer("last".into())),
            Status(200, None),
        ]);
        let two = RetryConfig {
            max_attempts: 2,
            ..config()
        };
        let result = send(random(&two), &script, keyed_post(), MINUTE).await;
        assert_eq!(result.err(), Some(KlarnaError::NoAnswer("last".into())));
        assert_eq!(script.calls().len(), 2);

        let script = Script::always(Status(503, None));
        let one = RetryConfig::no_retries();
        let result = send(random(&one), &script, get(), MINUTE).await;
        assert_eq!(status_of(&result), Some(503));
        assert_eq!(script.calls().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_up_to_the_cap() {
        let config = RetryConfig {
            max_attempts: 8,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            ..config()
        };
        let script = Script::always(Fail(KlarnaError::NotSent("refused".into())));
        let result = send(predictable(&config), &script, get(), MINUTE).await;
        assert!(matches!(result, Err(KlarnaError::NotSent(_))));
        let calls = script.calls();
        let gaps: Vec<u128> = calls
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect();
        assert_eq!(gaps, [100, 200, 400, 500, 500, 500, 500]);
    }

    #[tokio::test(start_paused = true)]
    async fn jittered_waits_stay_below_their_ceilings() {
        let config = RetryConfig {
            max_attempts: 8,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            budget_min_per_sec: 1_000,
            ..config()
        };
        let policy = random(&config);
        let ceilings = [100, 200, 400, 500, 500, 500, 500];
        let mut total = Duration::ZERO;
        for _ in 0..20 {
            let script = Script::always(Status(503, None));
            let started = Instant::now();
            let result = send(policy.clone(), &script, get(), MINUTE).await;
            assert_eq!(status_of(&result), Some(503));
            let calls = script.calls();
            assert_eq!(calls.len(), 8);
            for (gap, ceiling) in calls.windows(2).map(|w| w[1] - w[0]).zip(ceilings) {
                assert!(gap <= Duration::from_millis(ceiling), "{gap:?} > {ceiling}");
            }
            let elapsed = started.elapsed();
            assert!(elapsed <= Duration::from_millis(2_700), "{elapsed:?}");
            total += elapsed;
        }
        // Full jitter averages half the ceilings (1.35 s here); a constant wait would not.
        assert!(total > Duration::from_secs(10), "{total:?}");
        assert!(total < Duration::from_secs(44), "{total:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn exhausted_budget_stops_resending() {
        // No share of calls, and 1 s x 3 per second = 3 resends in all within the window.
        let config = RetryConfig {
            max_attempts: 4,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            budget_ttl: Duration::from_secs(1),
            budget_min_per_sec: 3,
            budget_retry_percent: 0.0,
        };
        let policy = random(&config);
        let script = Script::always(Status(503, None));
        for _ in 0..5 {
            let result = send(policy.clone(), &script, get(), MINUTE).await;
            assert_eq!(status_of(&result), Some(503));
        }
        // First call: 1 + 3 resends; the four others: one attempt each.
        assert_eq!(script.calls().len(), 4 + 4);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_refill_the_budget() {
        // One resend per two calls, nothing in reserve.
        let config = RetryConfig {
            max_attempts: 2,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            budget_ttl: Duration::from_secs(10),
            budget_min_per_sec: 0,
            budget_retry_percent: 0.5,
        };
        let policy = random(&config);
        let script = Script::always(Status(503, None));
        for _ in 0..10 {
            let _ = send(policy.clone(), &script, get(), MINUTE).await;
        }
        // Every second call has deposited enough (2) for one resend: 10 calls, 5 resends.
        assert_eq!(script.calls().len(), 15);
    }

    #[tokio::test(start_paused = true)]
    async fn no_attempt_starts_after_the_deadline() {
        let config = RetryConfig {
            max_attempts: 10,
            base_backoff: Duration::from_millis(300),
            max_backoff: Duration::from_secs(2),
            ..config()
        };
        let script = Script::always(Status(503, None));
        let started = Instant::now();
        let result = send(predictable(&config), &script, get(), Duration::from_secs(1)).await;
        assert_eq!(status_of(&result), Some(503));
        let offsets: Vec<u128> = script
            .calls()
            .iter()
            .map(|c| (*c - started).as_millis())
            .collect();
        // 0, then +300 ms, +600 ms; the next wait (1.2 s) would end after the deadline.
        assert_eq!(offsets, [0, 300, 900]);
        assert_eq!(started.elapsed(), Duration::from_millis(900));

        for _ in 0..20 {
            let script = Script::always(Fail(KlarnaError::NotSent("refused".into())));
            let started = Instant::now();
            let deadline = Duration::from_millis(700);
            let _ = send(random(&config), &script, get(), deadline).await;
            for call in script.calls() {
                assert!(call - started <= deadline - MIN_ATTEMPT_TIME);
            }
            assert!(started.elapsed() < deadline);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_deadline_scopes_and_never_extends() {
        assert_eq!(current_deadline(), None);
        let now = Instant::now();
        let (near, far) = (now + Duration::from_secs(1), now + Duration::from_secs(9));
        let seen = with_deadline(far, async {
            let outer = current_deadline();
            let inner = with_deadline(near, async { current_deadline() }).await;
            let widened = with_deadline(far + MINUTE, async { current_deadline() }).await;
            (outer, inner, widened, current_deadline())
        })
        .await;
        assert_eq!(seen, (Some(far), Some(near), Some(far), Some(far)));
        assert_eq!(current_deadline(), None);
        // Without a deadline the policy is bounded by its attempts only.
        let script = Script::new([Status(503, None), Status(200, None)]);
        let result = Retry::new(random(&config()), script.service())
            .oneshot(get())
            .await;
        assert_eq!(status_of(&result), Some(200));
    }

    /// A recorder keeping counter values by name and labels.
    #[derive(Debug, Default)]
    struct Counters(Mutex<BTreeMap<String, Arc<AtomicU64>>>);

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
            let cell = lock(&self.0).entry(name).or_default().clone();
            Counter::from_arc(Arc::new(Cell(cell)))
        }

        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }

        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn resends_are_counted_by_reason() {
        let counters = Counters::default();
        // The test runtime polls everything on this thread.
        let _guard = metrics::set_default_local_recorder(&counters);
        let script = Script::new([
            Status(500, None),
            Status(429, None),
            Fail(KlarnaError::NoAnswer("reset".into())),
            Status(200, None),
            Fail(KlarnaError::NotSent("refused".into())),
            Status(404, None),
        ]);
        let first = send(random(&config()), &script, keyed_post(), MINUTE).await;
        assert_eq!(status_of(&first), Some(200));
        let second = send(random(&config()), &script, unkeyed_post(), MINUTE).await;
        assert_eq!(status_of(&second), Some(404));
        let seen: BTreeMap<String, u64> = lock(&counters.0)
            .iter()
            .map(|(k, v)| (k.clone(), v.load(Ordering::SeqCst)))
            .collect();
        let want: BTreeMap<String, u64> = [
            ("klarna_retries_total{reason=no_answer}", 1),
            ("klarna_retries_total{reason=not_sent}", 1),
            ("klarna_retries_total{reason=status_429}", 1),
            ("klarna_retries_total{reason=status_5xx}", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(seen, want);
    }
}
