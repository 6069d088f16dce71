//! The outbound limit that protects Klarna's per-merchant quota, end to end: a burst of
//! refunds is smoothed to the configured rate and a simulator limited 10% above it answers no
//! 429; two gateways sharing one Redis stay within one quota together; without its Redis the
//! limit falls back and `/readyz` says so.

use futures::future::join_all;
use klarna_sim::SimConfig;
use refund_gateway_tests::redis::RedisServer;
use refund_gateway_tests::{AppOptions, TestApp, spawn_app_with};

use super::*;

/// `count` refunds of 100 on orders of their own (so no order serializes them), at once.
async fn burst(app: &TestApp, sim: &Simulator, prefix: &str, count: usize) -> Vec<bool> {
    let calls = (0..count).map(|i| {
        let order = captured_order(sim, 1_000);
        let mut client = app.client.clone();
        let request = refund_request(&format!("{prefix}-{i}"), &order.order_id, 100);
        async move { client.refund_order(request).await.is_ok() }
    });
    join_all(calls).await
}

/// How many answers of the simulator were 429.
fn too_many(sim: &Simulator) -> usize {
    sim.requests().iter().filter(|r| r.status == 429).count()
}

#[tokio::test]
async fn a_burst_is_smoothed_to_the_accounts_rate_without_a_429() -> anyhow::Result<()> {
    let app = spawn_app_with(AppOptions {
        sim: SimConfig {
            rate_limit_per_second: Some(110),
            request_log_capacity: 10_000,
            ..SimConfig::default()
        },
        klarna_requests_per_second: Some(100),
        // A small burst leaves the simulator's bucket room for requests the machine delays
        // and delivers together (a shared CI machine does).
        klarna_burst: Some(10),
        ..AppOptions::default()
    })
    .await?;
    let started = std::time::Instant::now();
    let made = burst(&app, &app.sim.sim, "smooth", 250).await;
    let elapsed = started.elapsed();
    assert!(made.iter().all(|ok| *ok), "a refund failed");
    assert_eq!(too_many(&app.sim.sim), 0, "the simulator answered 429");
    // 250 at 100/s with a burst of 10 cannot take less than 2.4 s.
    assert!(elapsed.as_millis() >= 2_300, "not smoothed: {elapsed:?}");
    app.shutdown().await
}

#[tokio::test]
async fn two_gateways_sharing_one_redis_stay_within_one_quota() -> anyhow::Result<()> {
    let Some(redis) = RedisServer::start().await else {
        return Ok(());
    };
    let first = spawn_app_with(AppOptions {
        sim: SimConfig {
            rate_limit_per_second: Some(55),
            request_log_capacity: 10_000,
            ..SimConfig::default()
        },
        klarna_requests_per_second: Some(50),
        klarna_burst: Some(5),
        redis_url: Some(redis.url()),
        ..AppOptions::default()
    })
    .await?;
    // The second gateway talks to the first one's simulator: one merchant, one quota.
    let second = spawn_app_with(AppOptions {
        klarna_url: Some(first.sim.base_url.clone()),
        klarna_requests_per_second: Some(50),
        klarna_burst: Some(5),
        redis_url: Some(redis.url()),
        ..AppOptions::default()
    })
    .await?;
    let sim = &first.sim.sim;
    let (a, b) = tokio::join!(
        burst(&first, sim, "first", 60),
        burst(&second, sim, "second", 60)
    );
    assert!(a.iter().chain(&b).all(|ok| *ok), "a refund failed");
    assert_eq!(
        too_many(sim),
        0,
        "the two gateways together exceeded the quota"
    );
    second.shutdown().await?;
    first.shutdown().await
}

#[tokio::test]
async fn without_its_redis_the_limit_falls_back_and_readyz_says_so() -> anyhow::Result<()> {
    let dead = format!(
        "redis://127.0.0.1:{}/",
        refund_gateway_tests::redis::free_port()
    );
    let mut app = spawn_app_with(AppOptions {
        klarna_requests_per_second: Some(100),
        redis_url: Some(dead),
        ..AppOptions::default()
    })
    .await?;
    let order = captured_order(&app.sim.sim, 1_000);
    app.client
        .refund_order(refund_request("fallback-1", &order.order_id, 100))
        .await?;
    let ready = reqwest::get(format!("{}/readyz", app.admin_url)).await?;
    assert_eq!(ready.status(), reqwest::StatusCode::OK);
    let body = ready.text().await?;
    assert!(
        body.contains("Redis unreachable") && body.contains("fallback"),
        "{body}"
    );
    assert!(!body.contains("127.0.0.1"), "the Redis URL leaked: {body}");
    app.shutdown().await
}

#[tokio::test]
async fn a_refund_whose_permit_would_come_after_its_deadline_is_not_sent() -> anyhow::Result<()> {
    let mut app = spawn_app_with(AppOptions {
        klarna_requests_per_second: Some(1),
        klarna_burst: Some(1),
        ..AppOptions::default()
    })
    .await?;
    let order = captured_order(&app.sim.sim, 1_000);
    app.client
        .refund_order(refund_request("quota-1", &order.order_id, 100))
        .await?;
    // The next permit is a second away; this caller gives half a second.
    let mut request = tonic::Request::new(refund_request("quota-2", &order.order_id, 100));
    request.set_timeout(std::time::Duration::from_millis(500));
    let refused = app
        .client
        .refund_order(request)
        .await
        .err()
        .unwrap_or_else(|| panic!("sent past the account's rate"));
    assert_reason(&refused, Code::ResourceExhausted, "KLARNA_QUOTA_EXHAUSTED");
    assert!(refused.get_error_details().retry_info().is_some());
    let posts = klarna_calls(&app.sim.sim)
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(posts, 1, "the throttled refund was sent");
    // Nothing was stored: the same key works once a permit is there.
    let made = app
        .client
        .refund_order(refund_request("quota-2", &order.order_id, 100))
        .await?
        .into_inner();
    assert!(!made.replayed);
    app.shutdown().await
}
