//! The [`Simulator`] handle, its configuration, and the library side of the test facilities.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::BasicAuth;
use crate::clock::Clock;
use crate::demo;
use crate::faults::{FaultSpec, FaultTable};
use crate::rate_limit::RateLimiter;
use crate::request_log::{LoggedRequest, RequestLog};
use crate::seed::{self, OrderSeed, SeedError, SeededOrder};
use crate::state::Store;

/// How the simulator behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// The only API username accepted (HTTP Basic); anything else is a 401.
    pub username: String,
    /// The password that goes with `username`.
    pub password: String,
    /// Klarna calls admitted per second (token bucket, bursts up to one second's worth);
    /// beyond that, 429 `TOO_MANY_REQUESTS`. `None` or `Some(0)`: no limit.
    pub rate_limit_per_second: Option<u32>,
    /// How many Klarna calls the request log keeps (oldest dropped first); 0 disables the log.
    pub request_log_capacity: usize,
}

impl Default for SimConfig {
    /// `sim-user` / `sim-password`, no rate limit, a log of 10 000 calls.
    fn default() -> Self {
        Self {
            username: "sim-user".to_owned(),
            password: "sim-password".to_owned(),
            rate_limit_per_second: None,
            request_log_capacity: 10_000,
        }
    }
}

/// State shared by every clone of a [`Simulator`] and every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: SimConfig,
    pub(crate) auth: BasicAuth,
    pub(crate) rate_limiter: Option<RateLimiter>,
    pub(crate) store: Mutex<Store>,
    pub(crate) faults: FaultTable,
    pub(crate) log: RequestLog,
    pub(crate) clock: Clock,
}

impl Shared {
    /// The state lock. A panic while holding it cannot leave an order half-updated in a way
    /// that matters to a simulator, so a poisoned lock is simply taken over.
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A Klarna Order Management simulator: in-memory orders, the HTTP API, and test facilities.
///
/// Cloning is cheap; all clones share the same orders, log, faults and clock. Serve it with
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
    /// A simulator without orders.
    pub fn new(config: SimConfig) -> Self {
        let shared = Shared {
            auth: BasicAuth::new(&config.username, &config.password),
            rate_limiter: config.rate_limit_per_second.and_then(RateLimiter::new),
            store: Mutex::new(Store::default()),
            faults: FaultTable::default(),
            log: RequestLog::new(config.request_log_capacity),
            clock: Clock::default(),
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

    /// Seeds (or resets) the fixed demo orders of [`crate::demo`] and returns their ids.
    pub fn seed_demo_orders(&self) -> Vec<SeededOrder> {
        demo::seeds()
            .into_iter()
            .filter_map(|seed| self.try_seed_order(seed).ok())
            .collect()
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

    /// Disarms every fault.
    pub fn clear_faults(&self) {
        self.shared.faults.clear();
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

    /// Serves the Klarna API and the admin API on `listener` (HTTP/1.1 and cleartext HTTP/2
    /// with prior knowledge) until `shutdown` completes; then stops accepting, lets open
    /// connections finish (at most 5 s) and returns.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        crate::server::serve(self, listener, shutdown).await
    }
}
