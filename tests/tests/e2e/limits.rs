//! The inbound limits end to end: each caller's own rate, the server-wide concurrency limit
//! with its queue and load shedding, the minimum deadline of a money movement, and a caller's deadline
//! bounding the Klarna attempts made for it. A refusal is immediate and reaches neither Klarna
//! nor the operation store.

use std::time::{Duration, Instant};

use futures::future::join_all;
use refund_gateway_tests::{AppOptions, TestApp, spawn_app_with, wait_until};
use sha2::{Digest, Sha256};
use tonic::{Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::*;

const FLOODER: &str = "flooder-token-51c0a9";
const CALM: &str = "calm-token-8e27d3";

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `message` with `authorization: Bearer <token>`.
fn bearer<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}")
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    request.metadata_mut().insert("authorization", value);
    request
}

fn get_order(order_id: &str) -> pb::GetOrderRequest {
    pb::GetOrderRequest {
        order_id: order_id.into(),
        ..Default::default()
    }
}

/// The reads of `order_id` the simulator received.
fn order_reads(sim: &Simulator, order_id: &str) -> usize {
    let path = format!("/ordermanagement/v1/orders/{order_id}");
    klarna_calls(sim)
        .iter()
        .filter(|r| r.method == "GET" && r.path == path)
        .count()
}

/// A read of `order_id` answered (or failed) in the background.
type HeldRead = tokio::task::JoinHandle<Result<tonic::Response<pb::GetOrderResponse>, Status>>;

/// Sends `count` reads of `order_id` that Klarna holds for `hold`, and returns once Klarna has
/// all of them. CommitThenHold rather than Latency: the simulator logs a held call when it
/// arrives (a delayed one only once answered), so the log shows when they hold their slots.
async fn held_reads(
    app: &TestApp,
    order_id: &str,
    count: usize,
    hold: Duration,
) -> anyhow::Result<Vec<HeldRead>> {
    app.sim.sim.inject_fault(FaultSpec {
        method: Some("GET".into()),
        path: format!("/ordermanagement/v1/orders/{order_id}"),
        times: count as u32,
        kind: FaultKind::CommitThenHold {
            millis: hold.as_millis() as u64,
        },
    });
    let reads = (0..count)
        .map(|_| {
            let mut client = app.client.clone();
            let request = get_order(order_id);
            tokio::spawn(async move { client.get_order(request).await })
        })
        .collect();
    wait_until(
        "the held reads to reach Klarna",
        Duration::from_secs(30),
        async || {
            Ok::<_, anyhow::Error>((order_reads(&app.sim.sim, order_id) == count).then_some(()))
        },
    )
    .await?;
    Ok(reads)
}

/// The refund POSTs on `order_id` the simulator logged.
fn refund_posts(sim: &Simulator, order_id: &str) -> Vec<LoggedRequest> {
    let path = format!("/ordermanagement/v1/orders/{order_id}/refunds");
    klarna_calls(sim)
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == path)
        .collect()
}

/// `flooder`, limited to 2 requests per second with a burst of 2, and `calm`, not limited.
fn flooder_and_calm() -> String {
    format!(
        "[[caller]]\nname = \"flooder\"\ntoken_sha256 = \"{}\"\nrpcs = [\"GetOrder\"]\n\
         klarna_accounts = [\"*\"]\nrequests_per_second = 2\nburst = 2\n\n\
         [[caller]]\nname = \"calm\"\ntoken_sha256 = \"{}\"\nrpcs = [\"GetOrder\"]\n\
         klarna_accounts = [\"*\"]\n",
        hash(FLOODER),
        hash(CALM)
    )
}

#[tokio::test]
async fn a_flooding_caller_is_rate_limited_alone_and_its_refused_calls_reach_no_one()
-> anyhow::Result<()> {
    let app = spawn_app_with(AppOptions {
        callers: Some(flooder_and_calm()),
        ..AppOptions::default()
    })
    .await?;
    let flooded = captured_order(&app.sim.sim, 10_000);
    let quiet = captured_order(&app.sim.sim, 10_000);

    let flood = (0..20).map(|_| {
        let mut client = app.client.clone();
        let request = bearer(FLOODER, get_order(&flooded.order_id));
        async move { client.get_order(request).await }
    });
    let calm = (0..10).map(|_| {
        let mut client = app.client.clone();
        let request = bearer(CALM, get_order(&quiet.order_id));
        async move { client.get_order(request).await }
    });
    let started = Instant::now();
    let (flood, calm) = tokio::join!(join_all(flood), join_all(calm));
    let took = started.elapsed();

    for answer in &calm {
        if let Err(status) = answer {
            panic!("calm was limited by the flooder's calls: {status:?}");
        }
    }
    let admitted = flood.iter().filter(|a| a.is_ok()).count();
    let refused: Vec<&Status> = flood.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        !refused.is_empty(),
        "20 calls at once at 2 per second (burst 2) were all admitted"
    );
    // The burst, plus what the bucket refilled while the flood lasted (generously rounded up).
    let refilled = (2.0 * took.as_secs_f64()).ceil() as usize;
    assert!(
        admitted <= 2 + refilled + 1,
        "{admitted} of 20 admitted in {took:?} at 2 per second with a burst of 2"
    );
    for status in &refused {
        assert_reason(status, Code::ResourceExhausted, "CALLER_RATE_LIMITED");
        let details = status.get_error_details();
        let quota = details
            .quota_failure()
            .unwrap_or_else(|| panic!("no QuotaFailure in {status:?}"));
        assert_eq!(
            quota
                .violations
                .iter()
                .map(|v| v.subject.as_str())
                .collect::<Vec<_>>(),
            ["callers/flooder"],
            "{status:?}"
        );
        let retry = details
            .retry_info()
            .unwrap_or_else(|| panic!("no RetryInfo in {status:?}"));
        let delay = retry
            .retry_delay
            .unwrap_or_else(|| panic!("RetryInfo without a delay in {status:?}"));
        assert!(
            delay <= Duration::from_secs(5),
            "a 2 per second caller told to wait {delay:?}"
        );
    }

    // Only the admitted calls read the order at Klarna; the refused ones sent nothing.
    assert_eq!(order_reads(&app.sim.sim, &flooded.order_id), admitted);
    assert_eq!(order_reads(&app.sim.sim, &quiet.order_id), calm.len());

    // The bucket refills: the flooder is served again once it slows down.
    let client = app.client.clone();
    let order_id = flooded.order_id.clone();
    wait_until(
        "the flooder's bucket to refill",
        Duration::from_secs(30),
        async || match client
            .clone()
            .get_order(bearer(FLOODER, get_order(&order_id)))
            .await
        {
            Ok(_) => Ok(Some(())),
            Err(status) if status.code() == Code::ResourceExhausted => Ok(None),
            Err(status) => Err(anyhow::anyhow!("{status:?}")),
        },
    )
    .await?;
    app.shutdown().await
}

#[tokio::test]
async fn past_max_concurrent_rpcs_a_call_is_shed_at_once_and_health_still_answers()
-> anyhow::Result<()> {
    let mut app = spawn_app_with(AppOptions {
        max_concurrent_rpcs: Some(2),
        ..AppOptions::default()
    })
    .await?;
    let order = captured_order(&app.sim.sim, 10_000);
    // The first two reads are held at Klarna, holding both slots.
    const HOLD: Duration = Duration::from_secs(5);
    let slow = held_reads(&app, &order.order_id, 2, HOLD).await?;

    let started = Instant::now();
    let shed = app
        .client
        .get_order(get_order(&order.order_id))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a third call was served while two held both slots"))?;
    let took = started.elapsed();
    assert_reason(&shed, Code::ResourceExhausted, "OVERLOADED");
    assert!(shed.get_error_details().retry_info().is_some(), "{shed:?}");
    // Refused at once, not queued until a slot was free: the slow calls still hold both.
    assert!(
        slow.iter().all(|task| !task.is_finished()),
        "the third call was answered only after a slow one ended"
    );
    assert!(
        took < Duration::from_secs(2),
        "shedding took {took:?} (Klarna holds the slots for {HOLD:?})"
    );

    // Health is not a `refundgateway` call: it answers while every slot is taken.
    let mut health = HealthClient::new(app.channel.clone());
    for service in ["", "refundgateway.v1.RefundGatewayService"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await?
            .into_inner();
        assert_eq!(answer.status(), ServingStatus::Serving, "{service:?}");
    }
    assert!(
        slow.iter().all(|task| !task.is_finished()),
        "the slots were free when health was checked; the check proves nothing"
    );
    assert_eq!(
        order_reads(&app.sim.sim, &order.order_id),
        2,
        "the shed call reached Klarna"
    );

    for task in slow {
        task.await??;
    }
    // The slots are free again.
    app.client.get_order(get_order(&order.order_id)).await?;
    assert_eq!(order_reads(&app.sim.sim, &order.order_id), 3);
    app.shutdown().await
}

#[tokio::test]
async fn past_max_running_rpcs_a_call_waits_its_turn_within_its_deadline() -> anyhow::Result<()> {
    let mut app = spawn_app_with(AppOptions {
        max_running_rpcs: Some(1),
        ..AppOptions::default()
    })
    .await?;
    let order = captured_order(&app.sim.sim, 10_000);
    // The one turn is held at Klarna.
    const HOLD: Duration = Duration::from_secs(3);
    let mut slow = held_reads(&app, &order.order_id, 1, HOLD).await?;
    let slow = slow.remove(0);

    // A call whose deadline ends before its turn comes ends then, is not shed, and never
    // reaches Klarna.
    let mut short = Request::new(get_order(&order.order_id));
    short.set_timeout(Duration::from_millis(300));
    let expired = app
        .client
        .get_order(short)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a call was served while the one turn was held"))?;
    // The gateway gives up the wait its answer margin (250 ms) before the deadline, so the
    // caller hears why before its own timer ends the call.
    assert_reason(&expired, Code::DeadlineExceeded, "WAITED_PAST_DEADLINE");
    assert!(
        !slow.is_finished(),
        "the turn was free before the short deadline ended; the check proves nothing"
    );
    assert_eq!(order_reads(&app.sim.sim, &order.order_id), 1);

    // One with time to wait is served once the turn is free.
    let waiting = {
        let mut client = app.client.clone();
        let request = get_order(&order.order_id);
        tokio::spawn(async move { client.get_order(request).await })
    };
    slow.await??;
    waiting.await??;
    // The expired call never reached Klarna, not even after the turn was free.
    assert_eq!(order_reads(&app.sim.sim, &order.order_id), 2);
    app.shutdown().await
}

backend_test! {
    async fn a_money_movement_with_a_deadline_under_the_minimum_is_refused_before_anything_is_stored(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = spawn_app_with(AppOptions {
            min_deadline_ms: Some(500),
            ..db.options()
        })
        .await?;
        let order = captured_order(&app.sim.sim, 10_000);
        let mut short = Request::new(refund_request("too-short-1", &order.order_id, 100));
        short.set_timeout(Duration::from_millis(300));
        let refused = app
            .client
            .refund_order(short)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("refunded with 300 ms under a 500 ms minimum"))?;
        assert_reason(&refused, Code::DeadlineExceeded, "DEADLINE_TOO_SHORT");
        assert!(
            klarna_calls(&app.sim.sim).is_empty(),
            "{:?}",
            klarna_calls(&app.sim.sim)
        );
        let stored = app
            .client
            .list_operations(pb::ListOperationsRequest::default())
            .await?
            .into_inner()
            .operations;
        assert!(stored.is_empty(), "{stored:?}");

        // The key was not consumed: the same request with time enough is a first request.
        let mut enough = Request::new(refund_request("too-short-1", &order.order_id, 100));
        enough.set_timeout(Duration::from_secs(5));
        let made = app.client.refund_order(enough).await?.into_inner();
        assert!(!made.replayed);
        assert!(!made.refund_id.is_empty());
        assert_eq!(refund_posts(&app.sim.sim, &order.order_id).len(), 1);
        app.shutdown().await
    }
}

#[tokio::test]
async fn a_short_deadline_leaves_no_klarna_attempt_starting_after_it() -> anyhow::Result<()> {
    // No reconciler pass while the test watches: a later resend is the reconciler's business,
    // not an attempt made for the caller.
    let mut app = spawn_app_with(AppOptions {
        reconcile_interval_ms: Some(3_600_000),
        ..AppOptions::default()
    })
    .await?;
    let order = captured_order(&app.sim.sim, 10_000);
    const LATENCY: Duration = Duration::from_secs(2);
    const DEADLINE: Duration = Duration::from_millis(400);
    // Only the first POST is slow: any later one is answered, and logged, at once.
    fault_refunds(
        &app.sim.sim,
        &order.order_id,
        1,
        FaultKind::Latency {
            millis: LATENCY.as_millis() as u64,
        },
    );
    let mut request = Request::new(refund_request("short-deadline", &order.order_id, 100));
    request.set_timeout(DEADLINE);
    let sent_at = app.sim.sim.now();
    let started = Instant::now();
    let answer = app.client.refund_order(request).await;
    let took = started.elapsed();
    let status = answer
        .err()
        .ok_or_else(|| anyhow::anyhow!("refunded within 400 ms through a Klarna taking 2 s"))?;
    // The gateway's own answer before the deadline, not the client's timeout.
    assert_reason(&status, Code::Unavailable, "OUTCOME_PENDING");
    assert!(
        took < LATENCY,
        "answered after {took:?}: it waited for Klarna"
    );

    // Past the time the slow attempt would have been answered had it kept running, and a
    // second more for any other attempt to show.
    let watched_until = started + DEADLINE + LATENCY + Duration::from_secs(1);
    wait_until(
        "the slow attempt's answer time to pass",
        Duration::from_secs(30),
        async || Ok::<_, anyhow::Error>((Instant::now() >= watched_until).then_some(())),
    )
    .await?;
    let posts = refund_posts(&app.sim.sim, &order.order_id);
    assert!(posts.len() <= 1, "resent for a caller gone: {posts:?}");
    // The log records when a call was answered; a delayed call began LATENCY earlier.
    let deadline_at = sent_at + DEADLINE;
    for post in &posts {
        let began = match post.fault.as_deref() {
            Some("latency") => post.at - LATENCY,
            _ => post.at,
        };
        assert!(
            began <= deadline_at + Duration::from_millis(50),
            "a refund POST began at {began}, after the caller's deadline at {deadline_at}: {post:?}"
        );
    }

    // Nothing was lost either: a retry under the key settles it to exactly one refund.
    let made = app
        .client
        .refund_order(refund_request("short-deadline", &order.order_id, 100))
        .await?
        .into_inner();
    assert!(!made.refund_id.is_empty());
    let after = app
        .sim
        .sim
        .order_json(&order.order_id)
        .ok_or_else(|| anyhow::anyhow!("order gone"))?;
    assert_eq!(after["refunded_amount"], 100);
    assert_eq!(after["refunds"].as_array().map_or(0, Vec::len), 1);
    app.shutdown().await
}
