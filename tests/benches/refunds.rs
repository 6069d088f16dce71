//! Refund throughput and latency: (a) a plain HTTP client straight to the Klarna simulator,
//! (b) a gRPC client through the gateway to the same simulator, each at 64 concurrent
//! requests for 10 s, in one run, printed as a table with their ratio.
//!
//! `cargo bench -p refund-gateway-tests --bench refunds [-- --seconds N --concurrency N]`.
//! Under `cargo test` (no `--bench` argument) it runs as a one-second smoke test, so CI checks
//! that it works without spending time measuring.
//!
//! Everything runs in this one process on the machine's cores: the load generator, the gateway
//! and the simulator share them, as they would on a single small host. The numbers are
//! comparisons between the two paths, not absolute capacities.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use klarna_sim::{OrderSeed, SimConfig};
use refund_gateway_proto::v1 as pb;
use refund_gateway_proto::v1::refund_gateway_service_client::RefundGatewayServiceClient;
use refund_gateway_tests::{AppOptions, spawn_app_with};

#[derive(Debug, Clone, Copy)]
struct Settings {
    seconds: f64,
    concurrency: usize,
}

fn settings() -> anyhow::Result<Settings> {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let mut s = if bench {
        Settings {
            seconds: 10.0,
            concurrency: 64,
        }
    } else {
        Settings {
            seconds: 1.0,
            concurrency: 8,
        }
    };
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => s.seconds = it.next().context("--seconds N")?.parse()?,
            "--concurrency" => s.concurrency = it.next().context("--concurrency N")?.parse()?,
            _ => {}
        }
    }
    Ok(s)
}

/// Latencies of one run, and how long it ran.
struct Run {
    latencies: Vec<Duration>,
    elapsed: Duration,
    errors: usize,
}

impl Run {
    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }
}

/// Runs `concurrency` workers calling `call(worker, n)` until `seconds` pass.
async fn drive<F, Fut>(s: Settings, call: F) -> anyhow::Result<Run>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let call = Arc::new(call);
    let deadline = Instant::now() + Duration::from_secs_f64(s.seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..s.concurrency {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                match call(worker, n).await {
                    Ok(()) => latencies.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
                n += 1;
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Ok(Run {
        latencies,
        elapsed,
        errors,
    })
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let s = settings()?;
    let app = spawn_app_with(AppOptions {
        sim: SimConfig {
            request_log_capacity: 0,
            ..SimConfig::default()
        },
        no_log_capture: true,
        ..Default::default()
    })
    .await?;
    // One order per worker and path, captured far beyond what a run can refund, so no refund
    // is refused and workers never contend on one order.
    let seed = |_| {
        app.sim
            .sim
            .seed_order(OrderSeed {
                order_amount: 1_000_000_000_000,
                captures: vec![1_000_000_000_000],
                purchase_currency: Some("SEK".into()),
                purchase_country: Some("SE".into()),
                payment_method_type: Some("INVOICE".into()),
                ..Default::default()
            })
            .order_id
    };
    let direct_orders: Arc<Vec<String>> = Arc::new((0..s.concurrency).map(seed).collect());
    let gateway_orders: Arc<Vec<String>> = Arc::new((0..s.concurrency).map(seed).collect());

    // (a) Straight to the simulator: what a caller without the gateway would do.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(s.concurrency)
        .build()?;
    let base = app.sim.base_url.clone();
    let (user, password) = (app.sim.username().to_owned(), app.sim.password().to_owned());
    let direct = drive(s, move |worker, n| {
        let request = http
            .post(format!(
                "{base}/ordermanagement/v1/orders/{}/refunds",
                direct_orders[worker]
            ))
            .basic_auth(&user, Some(&password))
            .header("Klarna-Idempotency-Key", format!("direct-{worker}-{n}"))
            .json(&serde_json::json!({ "refunded_amount": 1 }));
        async move {
            let resp = request.send().await?;
            anyhow::ensure!(resp.status() == 201, "status {}", resp.status());
            Ok(())
        }
    })
    .await?;

    // (b) Through the gateway: gRPC over one HTTP/2 connection per 16 workers.
    let mut connected = Vec::new();
    for _ in 0..s.concurrency.div_ceil(16) {
        connected.push(
            tonic::transport::Channel::from_shared(app.grpc_url.clone())?
                .connect()
                .await?,
        );
    }
    let connected = Arc::new(connected);
    let through = drive(s, move |worker, n| {
        let mut client =
            RefundGatewayServiceClient::new(connected[worker % connected.len()].clone());
        let order_id = gateway_orders[worker].clone();
        async move {
            client
                .refund_order(pb::RefundOrderRequest {
                    idempotency_key: format!("bench-{worker}-{n}"),
                    order_id,
                    refunded_amount: 1,
                    ..Default::default()
                })
                .await?;
            Ok(())
        }
    })
    .await?;

    println!();
    println!(
        "refunds, {} concurrent, {:.0} s each{}",
        s.concurrency,
        s.seconds,
        if s.seconds < 5.0 {
            " (smoke run: not a measurement)"
        } else {
            ""
        }
    );
    println!("| path | refunds/s | p50 ms | p99 ms | errors |");
    println!("|---|---:|---:|---:|---:|");
    for (name, run) in [
        ("(a) HTTP client -> simulator", &direct),
        ("(b) gRPC -> gateway -> simulator", &through),
    ] {
        println!(
            "| {name} | {:.0} | {} | {} | {} |",
            run.throughput(),
            ms(run.percentile(0.50)),
            ms(run.percentile(0.99)),
            run.errors
        );
    }
    let ratio = through.throughput() / direct.throughput().max(f64::MIN_POSITIVE);
    let added_p50 = through
        .percentile(0.50)
        .saturating_sub(direct.percentile(0.50));
    println!(
        "throughput (b)/(a): {ratio:.2}x (target >= 0.5x); added p50: {} ms (target <= 0.3 ms)",
        ms(added_p50)
    );

    anyhow::ensure!(
        direct.errors == 0 && through.errors == 0,
        "requests failed during the run"
    );
    anyhow::ensure!(
        !direct.latencies.is_empty() && !through.latencies.is_empty(),
        "no request completed"
    );
    app.shutdown().await
}
