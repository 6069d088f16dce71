//! An in-memory simulator of Klarna's Order Management API v1 and of the partner Payments API
//! ("payment transactions"), faithful to the contract the refund gateway relies on (see
//! docs/klarna.md: #endpoints, #errors, #idempotency and #the-simulator), with test
//! facilities: a request log, fault injection, a settable clock, fixed demo data, signed
//! webhooks and optional mutual TLS.
//!
//! It is an independent implementation: it shares no types with the gateway's Klarna adapter,
//! so the adapter's tests check the adapter against Klarna's behaviour, not against itself.
//!
//! # Order Management endpoints (HTTP Basic `username:password`, or `Basic <api key>`, on all)
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
//! # Partner Payments API endpoints
//! `{prefix}` is `/v2/accounts/{partner_account_id}` (acquiring partners; any account other
//! than [`SimConfig::partner_account_id`] is a 403) or `/v2` (a direct integration). Every call
//! carries `Authorization: Basic <api key>`, the key itself ([`SimConfig::partner_api_key`]),
//! not base64 of `key:`. Path segments are percent-decoded.
//!
//! | call | answer |
//! |---|---|
//! | `GET {prefix}/payment/transactions/{payment_transaction_id}` | 200 transaction |
//! | `POST {prefix}/payment/transactions/{payment_transaction_id}/refunds` `{amount, currency, line_items: [..], payment_refund_reference?, description?}` | 201 refund |
//! | `POST {prefix}/payment/captures/{payment_capture_id}/refunds` `{amount, currency, payment_refund_reference?, description?}` | 201 refund |
//!
//! - Refund (201): `{payment_refund_id, payment_transaction_id, payment_capture_id?, amount,
//!   currency, payment_refund_reference, description, state: "SUCCEEDED", created_at}`;
//!   `payment_refund_reference` and `description` are `null` when not sent;
//!   `payment_capture_id` is the capture refunded, or, for a transaction refund, the one
//!   capture it was allocated to (absent when spread over several). Refund ids are
//!   `{payment_transaction_id}:refund:<uuid>`.
//! - Transaction: `{payment_transaction_id, state: AUTHORIZED|EXPIRED|COMPLETED|CLOSED,
//!   amount, currency, line_items, payment_funding: {type: "GUARANTEED", state: "FUNDED"},
//!   captured_amount, refunded_amount, captures: [{payment_capture_id, amount,
//!   refunded_amount, created_at, line_items?}], refunds: [{payment_refund_id,
//!   payment_capture_id?, amount, currency, payment_refund_reference?, description?,
//!   created_at, line_items?}], created_at}`.
//! - line_item: `{name (1..=255), quantity (>= 1), unit_price, total_amount,
//!   total_tax_amount?, tax_rate? (0..=10000), reference? (<= 255), type?}`; a transaction
//!   refund's line items must sum to `amount`.
//! - A transaction refund is allocated over the captures oldest first, each up to what is left
//!   of it; refunds update `refunded_amount` of the transaction and of the captures. Refunds
//!   are possible in every state but `CLOSED`, once something is captured.
//! - Headers: `Klarna-Idempotency-Key` is required on POST; `Partner-Correlation-Id`
//!   (optional, `^[A-Za-z0-9]{1,255}$`) is echoed back; `Klarna-Partner-Account` (optional,
//!   non-empty) is only recorded in the request log.
//!
//! Every partner error has the body `{"error_id": "<uuid v4>", "error_type", "error_code",
//! "error_message", "doc_url", "errors"?: [{"parameter", "error_message"}]}` (`errors` for
//! input errors only, one entry per bad field, `parameter` like `line_items[1].total_amount`
//! or a header name):
//! - 400 `INPUT_ERROR` `VALIDATION_ERROR`: not JSON (`parameter` `body`), amount missing, not
//!   an integer or not positive, currency not 3 letters or not the transaction's, line item
//!   problems, line items missing or not summing to `amount`, texts over 255 characters,
//!   a missing or malformed `Klarna-Idempotency-Key`, a malformed `Partner-Correlation-Id`,
//!   an empty `Klarna-Partner-Account`,
//! - 401 `ACCESS_ERROR` `UNAUTHORIZED` (plus `WWW-Authenticate: Basic`),
//! - 403 `ACCESS_ERROR` `OPERATION_FORBIDDEN`: another partner account ("Partner account …
//!   is not accessible…"), "Transaction is closed. No further operations are allowed",
//!   "Transaction has no captures. Refund not possible", "Maximum number of refunds (200)
//!   reached for this transaction", "Maximum number of operations (500) reached for this
//!   transaction" (captures, refunds and seeded other operations count), "Refund amount
//!   exceeds the refundable amount (N CUR left)", "Refund amount exceeds the refundable
//!   amount of the capture (N CUR left)"; checked in this order, after the currency,
//! - 404 `RESOURCE_ERROR` `RESOURCE_NOT_FOUND`: unknown transaction, capture or path under
//!   `/v2` (any method other than the three calls above),
//! - 413 `INPUT_ERROR` `REQUEST_TOO_LARGE`, 429 `TECHNICAL_ERROR` `RATE_LIMITED` (with
//!   `Retry-After: 1`), 5xx `TECHNICAL_ERROR` `INTERNAL_ERROR`.
//!
//! # Webhooks
//! Every executed partner refund (not a replay) emits `payment.transaction.refunded`:
//! `{"metadata": {event_type, event_id, event_version: "v2", occurred_at, correlation_id,
//! subject_account_id, recipient_account_id, product_instance_id, webhook_id, live: false},
//! "payload": {payment_transaction_id, payment_refund_id, payment_refund_reference, amount,
//! currency}}`, POSTed to the [`WebhookTarget`] with `Content-Type: application/json`,
//! `Klarna-Signature` (lowercase hex HMAC-SHA256 of the raw body keyed by the secret's UTF-8
//! bytes) and `Klarna-Signing-Key-Id`. A 2xx acknowledges it; anything else is retried after
//! each delay of [`SimConfig::webhook_retry_schedule`], in a background task that never delays
//! the refund's answer. [`WebhookMode::Manual`] holds events until
//! [`Simulator::flush_webhooks`]. Every event (exact body and headers) and every attempt is
//! recorded ([`Simulator::webhook_events`], [`Simulator::webhook_deliveries`]).
//!
//! # TLS
//! Plain HTTP by default; with [`SimConfig::tls`] the simulator serves HTTPS, and with a client
//! CA it requires a client certificate chaining to it (the handshake fails without one), as
//! Klarna requires of acquiring partners ([`TlsConfig`]).
//!
//! # Idempotency
//! `Klarna-Idempotency-Key` on POST/PATCH, scoped per API credential (username, or partner API
//! key): the first response with a 2xx or 4xx status (except 401 and 429) is stored for 24 h
//! of simulator time and replayed byte for byte, headers included, whatever later requests
//! with the key carry (only a partner `Partner-Correlation-Id` echo is the current
//! request's). Look-up, execution and storing run under one lock, so concurrent requests with
//! the same key execute once. Faults, 401, 429, 413 and 5xx are never stored. A 400 for a
//! malformed (or, on the partner API, missing) key is not stored either (there is no key to
//! store it under).
//!
//! # Test facilities
//! A log of every Klarna call and its answer ([`Simulator::requests`], ring buffer of
//! [`SimConfig::request_log_capacity`]); faults for the next N calls to a path of either API
//! ([`Simulator::inject_fault`], [`FaultKind`]; `Status` with an empty body imitates Klarna's
//! DDoS protection), or at random for a share of them ([`Simulator::set_chaos`],
//! [`ChaosSpec`]: a seeded draw per call; armed faults first), counted by kind
//! ([`Simulator::injected_faults`]); a clock that only moves forward
//! ([`Simulator::advance_clock`]); orders and transactions seeded on demand
//! ([`Simulator::seed_order`], [`Simulator::seed_transaction`], a transaction possibly
//! already at its refund or operation limit) or the fixed [`demo`] data; webhook targets set
//! at runtime ([`Simulator::set_webhook_target`]). The same facilities are served over HTTP under
//! `/__admin/` (no auth): `POST /__admin/orders`, `GET /__admin/orders/{id}`,
//! `POST /__admin/demo`, `POST /__admin/transactions`, `GET /__admin/transactions/{id}`,
//! `POST /__admin/transactions/{id}/state`, `GET|DELETE /__admin/requests`,
//! `POST|GET|DELETE /__admin/faults`, `POST|DELETE /__admin/chaos`, `POST|GET /__admin/clock`,
//! `POST|GET|DELETE /__admin/webhooks`, `POST /__admin/webhooks/flush`,
//! `GET /__admin/webhooks/events`, `GET /__admin/webhooks/deliveries` (see `admin.rs`).
//!
//! Pipeline order of a Klarna call (either API): body read → auth (401) → rate limit (429) →
//! body size (413) → key in use (409, when asked) → injected fault (a reset closes the
//! connection here; a hold-then-commit goes on in a task of its own) → header checks
//! (400) → under the lock: replay, or route + validate (400/403/404/405/422) + execute
//! (403/404/2xx) and store → log → webhook event of an executed partner refund →
//! commit-then-hold/drop.
//!
//! # Layout
//! - `simulator.rs`: [`Simulator`], [`SimConfig`], the library side of the test facilities.
//! - `server.rs`: the hyper-util accept loop (HTTP/1.1 + HTTP/2, cleartext or TLS), body
//!   reading, graceful shutdown, commit-then-drop, [`spawn`] and [`RunningSimulator`].
//! - `api.rs`: the request pipeline of both APIs (auth, rate limit, size, faults,
//!   idempotency, log, webhook emission) and the routing of Order Management paths.
//! - `partner.rs`: partner paths, headers and the execution of partner calls;
//!   `partner_schema.rs`: partner request bodies and their 400s.
//! - `payments.rs`: transactions, captures, refunds, line items, their JSON and the partner
//!   refund rules; `transaction_seed.rs`: [`TransactionSeed`] → transaction.
//! - `webhooks.rs`: [`WebhookTarget`], signing, delivery with retries, records.
//! - `tls.rs`: [`TlsConfig`] and the rustls acceptor.
//! - `schema.rs`: parsing and 422 validation of Order Management request bodies.
//! - `state.rs`: the store (orders, transactions, idempotency memory) and Order Management's
//!   business rules.
//! - `model.rs`: orders, captures, refunds, order lines and their JSON.
//! - `idempotency.rs`: the 24 h key memory with lazy eviction.
//! - `faults.rs`: [`FaultSpec`], [`FaultKind`], [`ChaosSpec`] and the fault table.
//! - `request_log.rs`: [`LoggedRequest`] and the ring buffer.
//! - `rate_limit.rs`, `auth.rs`, `clock.rs`, `response.rs`: rate limit, Basic auth and API
//!   key, settable clock, responses and both error bodies.
//! - `seed.rs`: [`OrderSeed`] → order; [`demo`]: the fixed demo orders and transactions.
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
//!
//! let transaction = running.sim.seed_transaction(klarna_sim::TransactionSeed {
//!     amount: 10_000,
//!     captures: vec![klarna_sim::CaptureSeed::new(10_000)],
//!     ..Default::default()
//! });
//! let capture_refunds_url = format!(
//!     "{}/payment/captures/{}/refunds",
//!     running.partner_base_url(),
//!     transaction.payment_capture_ids[0]
//! );
//! // POST {"amount": 2500, "currency": "SEK"} there with `Authorization: Basic <api key>` and
//! // a Klarna-Idempotency-Key → 201 refund JSON.
//! # let _ = (refunds_url, capture_refunds_url); Ok(()) }
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
mod partner;
mod partner_schema;
mod payments;
mod rate_limit;
mod request_log;
mod response;
mod schema;
mod seed;
mod server;
mod simulator;
mod state;
mod tls;
mod transaction_seed;
mod webhooks;

pub use faults::{ChaosSpec, FaultKind, FaultSpec};
pub use model::{
    OrderLine, OrderLineType, OrderStatus, ProductIdentifiers, Subscription, SubscriptionInterval,
};
pub use payments::{LineItem, MAX_CAPTURES, MAX_OPERATIONS, MAX_REFUNDS, TransactionState};
pub use request_log::LoggedRequest;
pub use seed::{OrderSeed, SeedError, SeededOrder};
pub use server::{RunningSimulator, spawn};
pub use simulator::{
    DEFAULT_API_KEY, DEFAULT_PARTNER_ACCOUNT_ID, DEFAULT_PARTNER_API_KEY, SimConfig, Simulator,
};
pub use tls::TlsConfig;
pub use transaction_seed::{CaptureSeed, SeededTransaction, TransactionSeed, TransactionSeedError};
pub use webhooks::{
    DEFAULT_SIGNING_KEY_ID, DEFAULT_WEBHOOK_SECRET, PRODUCT_INSTANCE_ID, REFUNDED_EVENT,
    WEBHOOK_ID, WebhookDelivery, WebhookEvent, WebhookMode, WebhookTarget, default_retry_schedule,
    klarna_retry_schedule,
};
