//! The [`Simulator`] handle, its configuration, and the library side of the test facilities.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::{ApiKeyAuth, BasicAuth};
use crate::clock::Clock;
use crate::demo;
use crate::faults::{ChaosSpec, FaultSpec, FaultTable};
use crate::idempotency::KeysInUse;
use crate::payments::TransactionState;
use crate::rate_limit::RateLimiter;
use crate::request_log::{LoggedRequest, RequestLog};
use crate::seed::{self, OrderSeed, SeedError, SeededOrder};
use crate::state::Store;
use crate::tls::TlsConfig;
use crate::transaction_seed::{self, SeededTransaction, TransactionSeed, TransactionSeedError};
use crate::webhooks::{self, WebhookDelivery, WebhookEvent, WebhookTarget, Webhooks};

/// The partner account the simulator serves by default (a fixed demo KRN).
pub const DEFAULT_PARTNER_ACCOUNT_ID: &str =
    "krn:partner:global:account:live:8c1f0f3e-6d4b-4c1e-9a8e-2f5b7d9e1a34";
/// The Order Management API key the simulator accepts by default besides the username and
/// password (`Authorization: Basic <key>`; a fixed demo value).
pub const DEFAULT_API_KEY: &str = "klarna_test_api_c2ltdWxhdG9yLW9yZGVyLW1hbmFnZW1lbnQta2V5";

/// The partner API key the simulator accepts by default (a fixed demo value).
pub const DEFAULT_PARTNER_API_KEY: &str = "klarna_test_api_c2ltdWxhdG9yLWRlbW8ta2V5LTFmM2E5YzA";

/// How the simulator behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// The only API username accepted (HTTP Basic); anything else is a 401.
    pub username: String,
    /// The password that goes with `username`.
    pub password: String,
    /// An Order Management API key accepted as well, as the whole Basic credential
    /// (`Authorization: Basic <key>`); empty: none.
    pub api_key: String,
    /// Klarna calls admitted per second (token bucket, bursts up to one second's worth);
    /// beyond that, 429 `TOO_MANY_REQUESTS`. `None` or `Some(0)`: no limit.
    pub rate_limit_per_second: Option<u32>,
    /// How many Klarna calls the request log keeps (oldest dropped first); 0 disables the log.
    pub request_log_capacity: usize,
    /// The one partner account served under `/v2/accounts/{partner_account_id}/…` (another
    /// account there is a 403), and the `subject_account_id`/`recipient_account_id` of
    /// webhook events.
    pub partner_account_id: String,
    /// The only partner API key accepted (`Authorization: Basic <key>` on `/v2` calls).
    pub partner_api_key: String,
    /// Where webhook events go; `None`: events are recorded as undeliverable and dropped.
    /// Can be changed at runtime ([`Simulator::set_webhook_target`]).
    pub webhook: Option<WebhookTarget>,
    /// Delays before the retries of an unacknowledged webhook delivery (one retry per entry).
    pub webhook_retry_schedule: Vec<std::time::Duration>,
    /// Serve HTTPS (and require client certificates when it has a client CA) instead of
    /// plain HTTP.
    pub tls: Option<TlsConfig>,
}

impl Default for SimConfig {
    /// `sim-user` / `sim-password` or the API key [`DEFAULT_API_KEY`], no rate limit, a log of 10 000 calls, partner account
    /// [`DEFAULT_PARTNER_ACCOUNT_ID`] with key [`DEFAULT_PARTNER_API_KEY`], no webhook target,
    /// [`webhooks::default_retry_schedule`] (50 ms, 200 ms, 1 s, 2 s, 5 s, 10 s), plain HTTP.
    fn default() -> Self {
        Self {
            username: "sim-user".to_owned(),
            password: "sim-password".to_owned(),
            api_key: DEFAULT_API_KEY.to_owned(),
            rate_limit_per_second: None,
            request_log_capacity: 10_000,
            partner_account_id: DEFAULT_PARTNER_ACCOUNT_ID.to_owned(),
            partner_api_key: DEFAULT_PARTNER_API_KEY.to_owned(),
            webhook: None,
            webhook_retry_schedule: webhooks::default_retry_schedule(),
            tls: None,
        }
    }
}

/// State shared by every clone of a [`Simulator`] and every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: SimConfig,
    pub(crate) auth: BasicAuth,
    pub(crate) api_key_auth: ApiKeyAuth,
    pub(crate) partner_auth: ApiKeyAuth,
    pub(crate) rate_limiter: Option<RateLimiter>,
    pub(crate) store: Mutex<Store>,
    pub(crate) faults: FaultTable,
    pub(crate) keys_in_use: KeysInUse,
    pub(crate) log: RequestLog,
    pub(crate) clock: Arc<Clock>,
    pub(crate) webhooks: Arc<Webhooks>,
}

impl Shared {
    /// The state lock. A panic while holding it cannot leave an order half-updated in a way
    /// that matters to a simulator, so a poisoned lock is simply taken over.
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A Klarna simulator: in-memory orders (Order Management) and payment transactions (partner
/// Payments API), the HTTP APIs, webhooks, and test facilities.
///
/// Cloning is cheap; all clones share the same data, log, faults, webhooks and clock. Serve it
/// with
/// [`Simulator::serve`] or start one on a free port with [`crate::spawn`].
#[derive(Clone)]
pub struct Simulator {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Simulator {
    // The state may hold millions of refunds: show the configuration only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// A simulator without orders or transactions.
    pub fn new(config: SimConfig) -> Self {
        let clock = Arc::new(Clock::default());
        let shared = Shared {
            auth: BasicAuth::new(&config.username, &config.password),
            api_key_auth: ApiKeyAuth::new(&config.api_key),
            partner_auth: ApiKeyAuth::new(&config.partner_api_key),
            rate_limiter: config.rate_limit_per_second.and_then(RateLimiter::new),
            store: Mutex::new(Store::default()),
            faults: FaultTable::default(),
            keys_in_use: KeysInUse::default(),
            log: RequestLog::new(config.request_log_capacity),
            webhooks: Arc::new(Webhooks::new(
                &config.partner_account_id,
                config.webhook.clone(),
                config.webhook_retry_schedule.clone(),
                Arc::clone(&clock),
            )),
            clock,
            config,
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// The configuration it was created with.
    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    /// Creates (or replaces) an order as described; see [`OrderSeed`] for defaults.
    ///
    /// # Panics
    /// If the seed is inconsistent (see [`SeedError`]); use [`Simulator::try_seed_order`] to
    /// get the error instead.
    pub fn seed_order(&self, seed: OrderSeed) -> SeededOrder {
        self.try_seed_order(seed)
            .unwrap_or_else(|e| panic!("invalid OrderSeed: {e}"))
    }

    /// Creates (or replaces) an order as described, or says why the seed is inconsistent.
    pub fn try_seed_order(&self, seed: OrderSeed) -> Result<SeededOrder, SeedError> {
        let (order, seeded) = seed::build_order(seed, self.now())?;
        self.shared.store().orders.insert(order.order_id, order);
        Ok(seeded)
    }

    /// Seeds (or resets) the fixed demo data of [`crate::demo`]: the demo orders, whose ids it
    /// returns, and the demo payment transactions (see [`Simulator::seed_demo_transactions`]).
    pub fn seed_demo_orders(&self) -> Vec<SeededOrder> {
        self.seed_demo_transactions();
        demo::seeds()
            .into_iter()
            .filter_map(|seed| self.try_seed_order(seed).ok())
            .collect()
    }

    /// Seeds (or resets) only the fixed demo payment transactions of [`crate::demo`] and
    /// returns their ids.
    pub fn seed_demo_transactions(&self) -> Vec<SeededTransaction> {
        demo::transaction_seeds()
            .into_iter()
            .filter_map(|seed| self.try_seed_transaction(seed).ok())
            .collect()
    }

    /// Creates (or replaces) a payment transaction as described; see [`TransactionSeed`].
    ///
    /// # Panics
    /// If the seed is inconsistent (see [`TransactionSeedError`]); use
    /// [`Simulator::try_seed_transaction`] to get the error instead.
    pub fn seed_transaction(&self, seed: TransactionSeed) -> SeededTransaction {
        self.try_seed_transaction(seed)
            .unwrap_or_else(|e| panic!("invalid TransactionSeed: {e}"))
    }

    /// Creates (or replaces) a payment transaction as described, or says why the seed is
    /// inconsistent (including a capture id another transaction already uses).
    pub fn try_seed_transaction(
        &self,
        seed: TransactionSeed,
    ) -> Result<SeededTransaction, TransactionSeedError> {
        let (transaction, seeded) = transaction_seed::build_transaction(seed, self.now())?;
        self.shared
            .store()
            .payments
            .insert(transaction)
            .map_err(|taken| TransactionSeedError::InvalidCaptureId(taken.0))?;
        Ok(seeded)
    }

    /// What `GET …/payment/transactions/{id}` would return for this id, or `None` if there is
    /// no such transaction.
    pub fn transaction_json(&self, payment_transaction_id: &str) -> Option<serde_json::Value> {
        let store = self.shared.store();
        let transaction = store.payments.get(payment_transaction_id)?;
        serde_json::to_value(transaction.view()).ok()
    }

    /// Sets a transaction's state (e.g. `CLOSED` to see refunds refused) and returns its new
    /// JSON, or `None` if there is no such transaction.
    pub fn set_transaction_state(
        &self,
        payment_transaction_id: &str,
        state: TransactionState,
    ) -> Option<serde_json::Value> {
        let mut store = self.shared.store();
        let transaction = store.payments.set_state(payment_transaction_id, state)?;
        serde_json::to_value(transaction.view()).ok()
    }

    /// Sends later webhook events to `target` (events already emitted keep their target).
    pub fn set_webhook_target(&self, target: WebhookTarget) {
        self.shared.webhooks.set_target(Some(target));
    }

    /// Removes the webhook target: later events are recorded as undeliverable and dropped.
    pub fn clear_webhook_target(&self) {
        self.shared.webhooks.set_target(None);
    }

    /// The current webhook target.
    pub fn webhook_target(&self) -> Option<WebhookTarget> {
        self.shared.webhooks.target()
    }

    /// Starts delivering the events queued in [`crate::WebhookMode::Manual`] (each in its own
    /// background task, with retries) and returns how many were started. Must be called
    /// within a Tokio runtime; outside one nothing starts and the events stay queued.
    pub fn flush_webhooks(&self) -> usize {
        self.shared.webhooks.flush()
    }

    /// How many events wait for [`Simulator::flush_webhooks`].
    pub fn queued_webhooks(&self) -> usize {
        self.shared.webhooks.queued()
    }

    /// Every webhook event emitted (the last 10 000), oldest first: exact body and headers.
    pub fn webhook_events(&self) -> Vec<WebhookEvent> {
        self.shared.webhooks.events()
    }

    /// Every webhook delivery attempt (the last 10 000), in the order they ended.
    pub fn webhook_deliveries(&self) -> Vec<WebhookDelivery> {
        self.shared.webhooks.deliveries()
    }

    /// The logged Klarna calls, oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.log.snapshot()
    }

    /// Empties the request log.
    pub fn clear_requests(&self) {
        self.shared.log.clear();
    }

    /// Arms a fault for the next `fault.times` matching Klarna calls (after earlier faults on
    /// the same calls are used up).
    pub fn inject_fault(&self, fault: FaultSpec) {
        self.shared.faults.arm(fault);
    }

    /// Disarms every fault and ends the chaos mode.
    pub fn clear_faults(&self) {
        self.shared.faults.clear();
    }

    /// Sets the chaos mode (random faults on a share of the matching Klarna calls that no
    /// armed fault takes; see [`ChaosSpec`]), replacing any earlier one and restarting the
    /// draws from its seed; `None` ends it. Armed faults are not affected.
    pub fn set_chaos(&self, chaos: Option<ChaosSpec>) {
        self.shared.faults.set_chaos(chaos);
    }

    /// When on, a POST or PATCH under a `Klarna-Idempotency-Key` whose first request is still
    /// running (waiting out a latency fault, or being executed) is answered 409 (`CONFLICT`;
    /// `RESOURCE_CONFLICT` from the partner API) and not remembered under the key, as the
    /// common idempotency convention does. Off (the default), such a duplicate waits for the
    /// state lock and gets the first request's answer; Klarna documents neither.
    pub fn set_conflict_while_running(&self, on: bool) {
        self.shared.keys_in_use.set_enabled(on);
    }

    /// How many faults were injected so far (armed and chaos alike, since the simulator
    /// started; [`Simulator::clear_faults`] does not reset the counts), by kind: `status 503`
    /// (one entry per status), `latency`, `hold_then_commit`, `reset`, `commit_then_hold`,
    /// `commit_then_drop`.
    /// Unlike the request log, it also counts a call whose client went away during its
    /// latency, which is neither executed nor logged.
    pub fn injected_faults(&self) -> std::collections::BTreeMap<String, u64> {
        self.shared.faults.injected()
    }

    /// Moves the simulator clock forward (timestamps, the 24 h idempotency window).
    pub fn advance_clock(&self, by: std::time::Duration) {
        self.shared.clock.advance(by);
    }

    /// The simulator's current time (UTC).
    pub fn now(&self) -> OffsetDateTime {
        self.shared.clock.now()
    }

    /// What `GET order` would return for this id, or `None` if there is no such order (or
    /// the id is not a UUID).
    pub fn order_json(&self, order_id: &str) -> Option<serde_json::Value> {
        let order_id = Uuid::try_parse(order_id).ok()?;
        let store = self.shared.store();
        let order = store.orders.get(&order_id)?;
        serde_json::to_value(order.view()).ok()
    }

    /// Serves the Klarna APIs and the admin API on `listener` (HTTP/1.1 and HTTP/2: cleartext
    /// with prior knowledge, or over TLS when [`SimConfig::tls`] is set) until `shutdown`
    /// completes; then stops accepting, lets open connections finish (at most 5 s) and
    /// returns. An unusable [`SimConfig::tls`] is an `InvalidInput` error before anything is
    /// served.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        crate::server::serve(self, listener, shutdown).await
    }
}
