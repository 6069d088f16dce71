//! The refund gateway's Klarna adapter. [`KlarnaClient`] implements the domain's
//! [`KlarnaApi`](refund_gateway_domain::KlarnaApi) port over Klarna's Order Management v1 HTTP
//! API; [`PaymentsClient`] implements its [`PaymentsApi`](refund_gateway_domain::PaymentsApi)
//! port over Klarna's partner Payments API (payment transactions; see
//! docs/klarna.md#partner-payments); [`webhook`] verifies and reads Klarna's partner webhooks.
//!
//! Order Management requests carry HTTP Basic credentials; Payments API requests carry
//! `Authorization: Basic <api key>`, a `Partner-Correlation-Id`, optionally
//! `Klarna-Partner-Account`, and may present a client certificate (mutual TLS). Every request
//! carries `Accept: application/json` and a `User-Agent` in Klarna's SDK convention; every POST
//! and PATCH carries the operation id as `Klarna-Idempotency-Key`, so resending an operation
//! can never execute it twice. Answers are read leniently (Klarna adds fields and varies case)
//! and failures are classified by what they prove:
//! [`KlarnaError::Answered`](refund_gateway_domain::KlarnaError::Answered) (Klarna said no,
//! with its `error_code`, its correlation id, and for the Payments API its `error_type`, its
//! per-field errors and whether an error object came at all), `NotSent` (provably never
//! left), `Throttled` (held back, unsent, by the account's outbound rate limit), `NoAnswer`
//! (may or may not have happened), `BadResponse` (a success we cannot read).
//!
//! Both clients send through one kind of tower stack (`http.rs`): resending when it is safe
//! (`retry.rs`: a request that never left, or a GET or keyed POST/PATCH after a 5xx, 429 or no
//! answer; with backoff, `Retry-After`, a retry budget and an attempt cap), a span per
//! attempt, optionally the account's outbound rate limit (`limit.rs`: one permit per attempt,
//! waited for within the deadline, else
//! [`KlarnaError::Throttled`](refund_gateway_domain::KlarnaError::Throttled); local, or shared
//! by the replicas through Redis), a per-attempt timeout, and hyper's pooled client, which
//! resends nothing itself. Every call is bounded by a deadline: the caller's, set with
//! [`with_deadline`], else [`TransportConfig::default_deadline`] from the start of the call.
//!
//! # Layout
//! - `config.rs`: [`Region`], [`Environment`], [`regional_base_url`], [`payments_base_url`],
//!   [`BaseUrl`] (https, or http on loopback only unless [`PlainHttp::Anywhere`] allows it
//!   to any host), [`KlarnaCredentials`] (never printed), [`TransportConfig`] (timeouts,
//!   resending, deadline, rate limit, `User-Agent` suffix; shared), [`OutboundRateLimit`] and
//!   [`SharedLimit`] (the Redis URL never printed), [`KlarnaClientConfig`] (credentials, extra
//!   roots), [`PaymentsClientConfig`] (API key, path prefix, partner account,
//!   [`ClientIdentity`], extra roots; secrets never printed), [`RetryConfig`],
//!   [`KlarnaConfigError`].
//! - `contract.rs`: Order Management's paths, header names, accepted success statuses, and
//!   every unconfirmed **\[U\]** assumption about it (correlation-id headers, the `Location`
//!   fallback for a refund id, statuses accepted for release and extension), each with its
//!   reason.
//! - `partner_contract.rs`: the same for the partner Payments API: paths, header names
//!   (`Partner-Correlation-Id`, `Klarna-Partner-Account`), request and answer JSON, how a
//!   created refund's id is found, and the refund webhook's event type
//!   ([`REFUNDED_EVENT_TYPE`]) and payload fields.
//! - `wire.rs`: Order Management's JSON as serde types; strict when writing, lenient when
//!   reading.
//! - `error.rs`: parsing Klarna's error answers (Order Management's and the Payments API's
//!   shapes, JSON, text or empty; `Retry-After`; correlation id from body or header) and
//!   classifying transport failures.
//! - `retry.rs`: [`RetryPolicy`] (which outcomes are resent, backoff with full jitter,
//!   `Retry-After`, the retry budget, the `klarna_retries_total` counter) and the call
//!   deadline: [`with_deadline`], [`current_deadline`].
//! - `limit.rs`: the outbound rate limit of one account: [`OutboundLimiter`] (GCRA with
//!   reserved permits, in this process or in Redis through one Lua script, with a local
//!   fallback while Redis is unreachable, reported by [`OutboundLimiter::degraded`]; the
//!   `klarna_outbound_throttled_total` counter) and [`OutboundLimitLayer`].
//! - `http.rs`: [`HttpService`] (hyper's client over rustls as a tower service), the
//!   [`AttemptTraceLayer`], the deadline-aware per-attempt timeout, and the outbound stack
//!   ([`OutboundService`]): retry -> attempt trace -> rate limit -> attempt timeout -> HTTP.
//! - `attempts.rs`: the attempt log of mutating calls ([`recording_attempts`]), from which
//!   the domain judges an operation's outcome.
//! - `transport.rs`: the call machinery both clients share: one API's stack, authorization
//!   and URL building; the deadline, error tagging by API, attempt log and one log event per
//!   call; [`user_agent`].
//! - `client.rs`: [`KlarnaClient`]: Order Management calls and their answers.
//! - `payments.rs`: [`PaymentsClient`]: partner Payments API calls and their answers.
//! - `webhook.rs`: [`verify_signature`], [`parse_envelope`] ([`WebhookEnvelope`]),
//!   [`RefundedEvent`], [`WebhookError`].

mod attempts;
mod client;
mod config;
mod contract;
mod error;
// Public only for the fuzz targets (`fuzz/`, `tests/src/fuzz.rs`): the answer parsers are
// private, and the fuzzers must run exactly them. Not part of the API.
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod limit;
mod partner_contract;
mod payments;
mod retry;
mod transport;
pub mod webhook;
mod wire;

pub use crate::http::{
    ATTEMPT_DURATION_METRIC, ATTEMPT_SPAN_TARGET, ATTEMPTS_METRIC, AttemptTrace, AttemptTraceLayer,
    HttpService, OutboundRequest, OutboundResponse, OutboundService,
};
pub use attempts::recording_attempts;
pub use client::KlarnaClient;
pub use config::{
    BaseUrl, ClientIdentity, DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DEADLINE,
    DEFAULT_REDIS_TIMEOUT, Environment, KLARNA_LIVE_REQUESTS_PER_SECOND,
    KLARNA_PLAYGROUND_REQUESTS_PER_SECOND, KlarnaClientConfig, KlarnaConfigError,
    KlarnaCredentials, OutboundRateLimit, PaymentsClientConfig, PlainHttp, Region, RetryConfig,
    SharedLimit, TransportConfig, payments_base_url, regional_base_url,
};
pub use limit::{OutboundLimit, OutboundLimitLayer, OutboundLimiter, THROTTLED_METRIC};
pub use partner_contract::{REFUNDED_EVENT_TYPE, partner_limit_reason};
pub use payments::PaymentsClient;
pub use retry::{MIN_ATTEMPT_TIME, RETRIES_METRIC, RetryPolicy, current_deadline, with_deadline};
pub use transport::user_agent;
pub use webhook::{RefundedEvent, WebhookEnvelope, WebhookError, parse_envelope, verify_signature};
