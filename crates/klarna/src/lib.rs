//! The refund gateway's Klarna adapter: [`KlarnaClient`] implements the domain's
//! [`KlarnaApi`](refund_gateway_domain::KlarnaApi) port over Klarna's Order Management v1 HTTP
//! API (see docs/klarna.md).
//!
//! Every request carries HTTP Basic credentials, `Accept: application/json` and a `User-Agent`
//! in Klarna's SDK convention; every POST and PATCH carries the operation id as
//! `Klarna-Idempotency-Key`, so resending an operation can never execute it twice. Answers are
//! read leniently (Klarna adds fields and varies case) and failures are classified by what
//! they prove: [`KlarnaError::Answered`](refund_gateway_domain::KlarnaError::Answered) (Klarna
//! said no, with its `error_code` and `correlation_id`), `NotSent` (provably never left),
//! `NoAnswer` (may or may not have happened), `BadResponse` (a success we cannot read).
//!
//! Requests go through a tower stack (`http.rs`): resending when it is safe (`retry.rs`: a
//! request that never left, or a GET or keyed POST/PATCH after a 5xx, 429 or no answer; with
//! backoff, `Retry-After`, a retry budget and an attempt cap), a span per attempt, a
//! per-attempt timeout, and reqwest with its own retries off. Every call is bounded by a
//! deadline: the caller's, set with [`with_deadline`], else
//! [`KlarnaClientConfig::default_deadline`] from the start of the call.
//!
//! # Layout
//! - `config.rs`: [`Region`], [`Environment`], [`regional_base_url`], [`BaseUrl`] (https, or
//!   http on loopback only), [`KlarnaCredentials`] (never printed), [`KlarnaClientConfig`],
//!   [`RetryConfig`], [`KlarnaConfigError`].
//! - `contract.rs`: paths, header names, accepted success statuses, and every unconfirmed
//!   **\[U\]** assumption about Klarna (correlation-id headers, the `Location` fallback for a
//!   refund id, statuses accepted for release and extension), each with its reason.
//! - `wire.rs`: Klarna's JSON as serde types; strict when writing, lenient when reading.
//! - `error.rs`: parsing Klarna's error answers (JSON, text or empty; `Retry-After`;
//!   correlation id from body or header) and classifying transport failures.
//! - `retry.rs`: [`RetryPolicy`] (which outcomes are resent, backoff with full jitter,
//!   `Retry-After`, the retry budget, the `klarna_retries_total` counter) and the call
//!   deadline: [`with_deadline`], [`current_deadline`].
//! - `http.rs`: [`HttpService`] (reqwest as a tower service), [`AttemptTraceLayer`], the
//!   deadline-aware per-attempt timeout, and the outbound stack ([`OutboundService`]):
//!   retry -> attempt trace -> attempt timeout -> reqwest.
//! - `attempts.rs`: the attempt log of mutating calls ([`recording_attempts`]), from which
//!   the domain judges an operation's outcome.
//! - `client.rs`: [`KlarnaClient`]: builds requests, sends them through the stack, reads the
//!   answers, logs one event per call.

mod attempts;
mod client;
mod config;
mod contract;
mod error;
mod http;
mod retry;
mod wire;

pub use crate::http::{AttemptTrace, AttemptTraceLayer, HttpService, OutboundService};
pub use attempts::recording_attempts;
pub use client::{KlarnaClient, user_agent};
pub use config::{
    BaseUrl, DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DEADLINE, Environment,
    KlarnaClientConfig, KlarnaConfigError, KlarnaCredentials, Region, RetryConfig,
    regional_base_url,
};
pub use retry::{MIN_ATTEMPT_TIME, RETRIES_METRIC, RetryPolicy, current_deadline, with_deadline};
