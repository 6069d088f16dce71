//! Resending against the Klarna simulator over real HTTP, in real time with short backoffs:
//! what is resent, under which key, how often, and within which deadline. The span of each
//! attempt, and resending to a closed port, are checked in `trace.rs`.

use std::time::{Duration, Instant};

use klarna_sim::{FaultKind, FaultSpec, RunningSimulator, SimConfig};
use refund_gateway_domain::{
    Amount, Caller, IdempotencyKey, KlarnaApi, KlarnaError, KlarnaRefund, OperationId, OrderId, Rpc,
};
use refund_gateway_klarna::{
    BaseUrl, KlarnaClient, KlarnaClientConfig, KlarnaCredentials, RetryConfig, with_deadline,
};

const ORDERS: &str = "/ordermanagement/v1/orders";

async fn sim() -> RunningSimulator {
    klarna_sim::spawn(SimConfig::default())
        .await
        .unwrap_or_else(|e| panic!("cannot start the simulator: {e}"))
}

/// Default policy, but backoffs of at most a few milliseconds.
fn fast_retries() -> RetryConfig {
    RetryConfig {
        base_backoff: Duration::from_millis(2),
        max_backoff: Duration::from_millis(5),
        ..RetryConfig::default()
    }
}

fn client(sim: &RunningSimulator) -> KlarnaClient {
    let mut config = KlarnaClientConfig::new(
        BaseUrl::parse(&sim.base_url).unwrap_or_else(|e| panic!("{e}")),
        KlarnaCredentials::new(sim.username(), sim.password()),
    );
    config.transport.retry = fast_retries();
    KlarnaClient::new(config).unwrap_or_else(|e| panic!("{e}"))
}

fn op() -> OperationId {
    let key =
        IdempotencyKey::parse(&uuid::Uuid::new_v4().to_string()).unwrap_or_else(|e| panic!("{e}"));
    OperationId::derive(&Caller::anonymous(), Rpc::RefundOrder, &key)
}

fn refund(amount: i64) -> KlarnaRefund {
    KlarnaRefund {
        refunded_amount: Amount::parse(amount).unwrap_or_else(|e| panic!("{e}")),
        description: None,
        reference: uuid::Uuid::new_v4().to_string(),
        order_lines: Vec::new(),
    }
}

fn captured_order(sim: &RunningSimulator) -> OrderId {
    let seeded = sim.sim.seed_order(klarna_sim::OrderSeed {
        order_amount: 10_000,
        captures: vec![10_000],
        ..Default::default()
    });
    OrderId::parse(&seeded.order_id).unwrap_or_else(|e| panic!("{e}"))
}

fn status_fault(path: String, times: u32, status: u16, retry_after: Option<u64>) -> FaultSpec {
    FaultSpec {
        method: None,
        path,
        times,
        kind: FaultKind::Status {
            status,
            body: None,
            retry_after_secs: retry_after,
        },
    }
}

#[tokio::test]
async fn two_503s_then_one_refund_under_one_key() {
    let sim = sim().await;
    let klarna = client(&sim);
    let order = captured_order(&sim);
    let path = format!("{ORDERS}/{order}/refunds");
    sim.sim
        .inject_fault(status_fault(path.clone(), 2, 503, None));
    let key = op();

    let created = klarna
        .create_refund(&order, &refund(2_500), &key)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let log = sim.sim.requests();
    let posts: Vec<_> = log.iter().filter(|r| r.method == "POST").collect();
    assert_eq!(posts.len(), 3, "{log:#?}");
    let statuses: Vec<u16> = posts.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 201]);
    for post in &posts {
        assert_eq!(post.path, path);
        assert_eq!(
            post.header("klarna-idempotency-key"),
            Some(key.to_string().as_str())
        );
        assert_eq!(post.body, posts[0].body);
    }
    let o = klarna
        .get_order(&order)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(o.refunds.len(), 1);
    assert_eq!(o.refunds[0].refund_id, created.refund_id);
    assert_eq!(o.refunded_amount, 2_500);
}

#[tokio::test]
async fn a_dropped_answer_is_recovered_by_the_resend() {
    let sim = sim().await;
    let klarna = client(&sim);
    let order = captured_order(&sim);
    sim.sim.inject_fault(FaultSpec {
        method: Some("POST".into()),
        path: format!("{ORDERS}/{order}/refunds"),
        times: 1,
        kind: FaultKind::CommitThenDrop,
    });
    let key = op();

    let created = klarna
        .create_refund(&order, &refund(700), &key)
        .await
        .unwrap_or_else(|e| panic!("the resend should have found the refund: {e}"));

    let log = sim.sim.requests();
    assert_eq!(log.len(), 2, "{log:#?}");
    assert_eq!(log[0].fault.as_deref(), Some("commit_then_drop"));
    assert!(!log[0].replayed);
    assert!(log[1].replayed, "{:?}", log[1]);
    for r in &log {
        assert_eq!(
            r.header("klarna-idempotency-key"),
            Some(key.to_string().as_str())
        );
    }
    // The refund the dropped answer would have named.
    assert_eq!(
        log[0].response_header("refund-id"),
        Some(created.refund_id.as_str())
    );
    let o = klarna
        .get_order(&order)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(o.refunds.len(), 1);
    assert_eq!(o.refunded_amount, 700);
}

#[tokio::test]
async fn not_found_is_asked_once() {
    let sim = sim().await;
    let klarna = client(&sim);
    let missing =
        OrderId::parse(&uuid::Uuid::new_v4().to_string()).unwrap_or_else(|e| panic!("{e}"));
    let error = klarna.get_order(&missing).await.err();
    assert_eq!(error.as_ref().and_then(KlarnaError::status), Some(404));
    assert_eq!(sim.sim.requests().len(), 1);

    // Nor is a refusal of a keyed POST resent.
    let order = captured_order(&sim);
    let error = klarna
        .create_refund(&order, &refund(10_001), &op())
        .await
        .err();
    assert_eq!(error.as_ref().and_then(KlarnaError::status), Some(403));
    assert_eq!(sim.sim.requests().len(), 2);
}

#[tokio::test]
async fn retry_after_of_a_429_is_honoured() {
    let sim = sim().await;
    let klarna = client(&sim);
    let order = captured_order(&sim);
    sim.sim
        .inject_fault(status_fault(format!("{ORDERS}/{order}"), 1, 429, Some(1)));

    let started = Instant::now();
    klarna
        .get_order(&order)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let elapsed = started.elapsed();

    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    let statuses: Vec<u16> = sim.sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 200]);
}

#[tokio::test]
async fn a_retry_after_beyond_the_deadline_is_not_waited_for() {
    let sim = sim().await;
    let klarna = client(&sim);
    let order = captured_order(&sim);
    sim.sim
        .inject_fault(status_fault(format!("{ORDERS}/{order}"), 1, 503, Some(5)));

    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let error = with_deadline(deadline, klarna.get_order(&order))
        .await
        .err();

    assert!(started.elapsed() < Duration::from_secs(2));
    match error {
        Some(KlarnaError::Answered(r)) => {
            assert_eq!(r.status, 503);
            assert_eq!(r.retry_after, Some(Duration::from_secs(5)));
        }
        other => panic!("expected the 503, got {other:?}"),
    }
    assert_eq!(sim.sim.requests().len(), 1);
}

#[tokio::test]
async fn the_callers_deadline_cuts_a_slow_attempt() {
    let sim = sim().await;
    // Attempt timeout 10 s: only the deadline can end this call early.
    let klarna = client(&sim);
    let order = captured_order(&sim);
    sim.sim.inject_fault(FaultSpec {
        method: Some("GET".into()),
        path: format!("{ORDERS}/{order}"),
        times: 1,
        kind: FaultKind::Latency { millis: 5_000 },
    });

    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    let error = with_deadline(deadline, klarna.get_order(&order))
        .await
        .err();
    let elapsed = started.elapsed();

    assert!(
        matches!(error, Some(KlarnaError::NoAnswer(ref m)) if m.contains("deadline")),
        "{error:?}"
    );
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test]
async fn a_passed_deadline_sends_nothing() {
    let sim = sim().await;
    let klarna = client(&sim);
    let order = captured_order(&sim);
    let past = tokio::time::Instant::now();
    let error = with_deadline(past, klarna.get_order(&order)).await.err();
    assert!(matches!(error, Some(KlarnaError::NotSent(_))), "{error:?}");
    assert!(sim.sim.requests().is_empty());
}
