//! The client's outbound rate limit over real HTTP, against the Klarna simulator: an attempt
//! whose permit would come after the call's deadline is answered `Throttled` and never reaches
//! Klarna. The limiter's timing is checked in `limit.rs` (paused time) and, shared through
//! Redis, in `redis_limit.rs`.

use std::time::Duration;

use klarna_sim::{RunningSimulator, SimConfig};
use refund_gateway_domain::{KlarnaApi, KlarnaError, OrderId};
use refund_gateway_klarna::{
    BaseUrl, KlarnaClient, KlarnaClientConfig, KlarnaCredentials, OutboundRateLimit, with_deadline,
};

async fn sim() -> RunningSimulator {
    klarna_sim::spawn(SimConfig::default())
        .await
        .unwrap_or_else(|e| panic!("cannot start the simulator: {e}"))
}

fn config(sim: &RunningSimulator) -> KlarnaClientConfig {
    KlarnaClientConfig::new(
        BaseUrl::parse(&sim.base_url).unwrap_or_else(|e| panic!("{e}")),
        KlarnaCredentials::new(sim.username(), sim.password()),
    )
}

#[tokio::test]
async fn a_call_that_cannot_get_a_permit_in_time_is_not_sent() {
    let sim = sim().await;
    let seeded = sim.sim.seed_order(klarna_sim::OrderSeed {
        order_amount: 10_000,
        ..Default::default()
    });
    let order = OrderId::parse(&seeded.order_id).unwrap_or_else(|e| panic!("{e}"));
    let mut config = config(&sim);
    // One request per second, none in reserve: the second permit comes after the deadline.
    config.transport.rate_limit = Some(OutboundRateLimit {
        requests_per_second: 1,
        burst: 1,
        shared: None,
    });
    let klarna = KlarnaClient::new(config).unwrap_or_else(|e| panic!("{e}"));
    let limiter = klarna.outbound_limiter();
    assert!(limiter.is_some());
    assert_eq!(limiter.and_then(|l| l.degraded()), None);

    let first = klarna.get_order(&order).await;
    assert!(first.is_ok(), "{first:?}");
    // A clone shares the account's permits.
    let again = klarna.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
    let second = with_deadline(deadline, again.get_order(&order)).await;
    let Err(KlarnaError::Throttled(wait)) = second else {
        panic!("{second:?}");
    };
    assert!(
        wait > Duration::from_millis(500) && wait <= Duration::from_secs(1),
        "{wait:?}"
    );
    assert!(
        tokio::time::Instant::now() < deadline,
        "refused at once, without waiting"
    );
    assert_eq!(sim.sim.requests().len(), 1, "{:#?}", sim.sim.requests());
}

#[tokio::test]
async fn the_limit_is_off_by_default() {
    let sim = sim().await;
    let klarna = KlarnaClient::new(config(&sim)).unwrap_or_else(|e| panic!("{e}"));
    assert!(klarna.outbound_limiter().is_none());
}
