//! An in-memory simulator of Klarna's Order Management API v1, faithful to the contract the
//! refund gateway relies on (see docs/klarna.md: #endpoints, #errors, #idempotency and
//! #the-simulator), with test facilities: a request log, fault injection, a settable clock and
//! fixed demo orders.
//!
//! It is an independent implementation: it shares no types with the gateway's Klarna adapter,
//! so the adapter's tests check the adapter against Klarna's behaviour, not against itself.
//!
//! # Endpoints (HTTP Basic auth on all of them)
//! | call | answer |
//! |---|---|
//! | `GET /ordermanagement/v1/orders/{order_id}` | 200 order |
//! | `GET …/orders/{order_id}/captures/{capture_id}` | 200 capture |
//! | `POST …/orders/{order_id}/captures` `{captured_amount, description?, reference?, order_lines?}` | 201, empty, `Capture-Id`, `Location` |
//! | `POST …/orders/{order_id}/refunds` `{refunded_amount, description?, reference?, order_lines?}` | 201, empty, `Refund-Id`, `Location` |
//! | `GET …/orders/{order_id}/refunds/{refund_id}` | 200 refund |
//! | `POST …/orders/{order_id}/release-remaining-authorization` | 204 |
//! | `GET …/orders/{order_id}/captures/{capture_id}/extend-due-date-options` | 200 `{currency, options: [{number_of_days, amount}]}` |
//! | `PATCH …/orders/{order_id}/captures/{capture_id}/extend-due-date` `{number_of_days}` | 204 |
//!
//! Errors always have Klarna's body `{"error_code", "error_messages": [..], "correlation_id"}`
//! with a fresh UUID v4 correlation id. Where the contract leaves the code open, the simulator
//! uses:
//! - 401 `UNAUTHORIZED` (plus `WWW-Authenticate: Basic`),
//! - 400 `BAD_VALUE` for a `Klarna-Idempotency-Key` that is empty, longer than 255 or not
//!   visible ASCII,
//! - 403 `REFUND_NOT_ALLOWED` for every return-fee rule ("Return fee must have a negative
//!   unit_price and total_amount.", "Return fee is not available for purchase country XX.",
//!   "Return fee is only allowed when the order is fully captured in a single capture.",
//!   "Order lines must sum to the refunded amount when a return fee is included.", each
//!   followed by " Refund not possible."),
//! - 403 `NOT_ALLOWED` when a due-date extension is not possible (not a pay-later payment
//!   method, order not open, already extended once, days not offered),
//! - 403 `NOT_ALLOWED` "Order is fully captured. …" for a second release,
//! - 403 `CAPTURE_NOT_ALLOWED` for a capture of 0, above the remaining authorization, or on a
//!   terminal order,
//! - 404 `NOT_FOUND` for an unknown path, 405 `METHOD_NOT_ALLOWED` for a known path with
//!   another method.
//!
//! Due-date extension options are 7, 14 and 30 days with fixed fees per currency (SEK/NOK/DKK
//! 2900/4900/6900, EUR and others 295/495/695, …); the options' `currency` is lower case, as in
//! Klarna's documented sample. An extension is recorded on the capture as the simulator field
//! `due_date_extension {number_of_days, fee, extended_at}`.
//!
//! # Idempotency
//! `Klarna-Idempotency-Key` on POST/PATCH, scoped per API username: the first response with a
//! 2xx or 4xx status (except 401 and 429) is stored for 24 h of simulator time and replayed
//! byte for byte, headers included, whatever later requests with the key carry. Look-up,
//! execution and storing run under one lock, so concurrent requests with the same key execute
//! once. Faults, 401, 429, 413 and 5xx are never stored. A 400 for a malformed key is not
//! stored either (there is no key to store it under).
//!
//! # Test facilities
//! A log of every Klarna call and its answer ([`Simulator::requests`], ring buffer of
//! [`SimConfig::request_log_capacity`]); faults for the next N calls to a path
//! ([`Simulator::inject_fault`], [`FaultKind`]); a clock that only moves forward
//! ([`Simulator::advance_clock`]); orders seeded on demand ([`Simulator::seed_order`]) or the
//! fixed [`demo`] orders. The same facilities are served over HTTP under `/__admin/` (no auth):
//! `POST /__admin/orders`, `GET /__admin/orders/{id}`, `POST /__admin/demo`,
//! `GET|DELETE /__admin/requests`, `POST|DELETE /__admin/faults`, `POST|GET /__admin/clock`.
//!
//! Pipeline order of a Klarna call: body read → auth (401) → rate limit (429) → body size
//! (413) → injected fault → idempotency key check (400) → under the lock: replay, or route +
//! validate (400/404/405/422) + execute (403/404/2xx) and store.
//!
//! # Layout
//! - `simulator.rs`: [`Simulator`], [`SimConfig`], the library side of the test facilities.
//! - `server.rs`: the hyper-util accept loop (HTTP/1.1 + h2c), body reading, graceful
//!   shutdown, commit-then-drop, [`spawn`] and [`RunningSimulator`].
//! - `api.rs`: the Klarna request pipeline (auth, rate limit, size, faults, idempotency) and
//!   the routing of paths to commands.
//! - `schema.rs`: parsing and 422 validation of request bodies.
//! - `state.rs`: the store (orders, idempotency memory) and Klarna's business rules.
//! - `model.rs`: orders, captures, refunds, order lines and their JSON.
//! - `idempotency.rs`: the 24 h key memory with lazy eviction.
//! - `faults.rs`: [`FaultSpec`], [`FaultKind`] and the armed-fault table.
//! - `request_log.rs`: [`LoggedRequest`] and the ring buffer.
//! - `rate_limit.rs`, `auth.rs`, `clock.rs`, `response.rs`: rate limit, Basic auth, settable
//!   clock, responses and the error body.
//! - `seed.rs`: [`OrderSeed`] → order; [`demo`]: the fixed demo orders.
//! - `admin.rs`: the `/__admin/` HTTP API (see there for its routes).
//! - `main.rs`: the `klarna-sim` binary.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let running = klarna_sim::spawn(klarna_sim::SimConfig::default()).await?;
//! let seeded = running.sim.seed_order(klarna_sim::OrderSeed {
//!     order_amount: 10_000,
//!     captures: vec![10_000],
//!     ..Default::default()
//! });
//! let refunds_url = format!(
//!     "{}/ordermanagement/v1/orders/{}/refunds",
//!     running.base_url, seeded.order_id
//! );
//! // POST {"refunded_amount": 2500} to refunds_url with Basic sim-user:sim-password → 201.
//! # let _ = refunds_url; Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod admin;
mod api;
mod auth;
mod clock;
pub mod demo;
mod faults;
mod idempotency;
mod model;
mod rate_limit;
mod request_log;
mod response;
mod schema;
mod seed;
mod server;
mod simulator;
mod state;

pub use faults::{FaultKind, FaultSpec};
pub use model::{
    OrderLine, OrderLineType, OrderStatus, ProductIdentifiers, Subscription, SubscriptionInterval,
};
pub use request_log::LoggedRequest;
pub use seed::{OrderSeed, SeedError, SeededOrder};
pub use server::{RunningSimulator, spawn};
pub use simulator::{SimConfig, Simulator};
