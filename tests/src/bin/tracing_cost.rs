//! What OpenTelemetry trace export costs the gateway, run as a user runs it: the release
//! `refund-gateway` binary as its own process, with a durable SQLite store, production
//! authentication (a callers file and a bearer token) and JSON logs at the default level,
//! refunding against the Klarna simulator.
//!
//! The same load runs against three gateways, one after another:
//! 1. `off`: no `OTEL_*` variable, so nothing is exported (spans are still made in the
//!    process, for the trace context that reaches Klarna and the logs);
//! 2. `all sampled`: spans exported over OTLP/gRPC to a sink in this process, every trace
//!    sampled (`OTEL_TRACES_SAMPLER=always_on`);
//! 3. `ratio 0.1`: the same, one trace in ten (`parentbased_traceidratio`, `0.1`).
//!
//! Each gateway is warmed up for 1 s, then measured in a closed loop at 64 concurrent refunds
//! and at 1, each for `--seconds`: refunds/s, p50 and p99 latency, the gateway process's CPU
//! time per refund (at 64) and the spans the sink received per refund (over the gateway's
//! whole life, after the flush of its shutdown). The table ends with each exporting
//! variant's cost against `off`.
//!
//! ```text
//! cargo build --release -p refund-gateway
//! cargo run --release -p refund-gateway-tests --bin tracing-cost -- [--seconds N] [--gateway PATH] [--quick]
//! ```
//!
//! `--gateway` defaults to `refund-gateway` in the directory of this executable (the release
//! build's). `--quick` measures 1 s each without warm-up: a smoke run, not a measurement.
//!
//! The load generator, the simulator and the sink share the machine with the gateway, the
//! same for every variant: compare the rows, do not read them as capacities.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail, ensure};
use klarna_sim::{OrderSeed, RunningSimulator, SimConfig};
use refund_gateway_proto::v1 as pb;
use refund_gateway_proto::v1::refund_gateway_service_client::RefundGatewayServiceClient;
use refund_gateway_tests::load::{Run, drive, ms};
use refund_gateway_tests::process::{
    GatewayHome, GatewayProcess, GatewaySpec, KlarnaTarget, cpu_time,
};
use refund_gateway_tests::span_sink::SpanSink;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

/// Orders refunded round-robin: the gateway serializes refunds of one order, so the load is
/// spread over many more orders than there are requests in flight.
const ORDERS: usize = 512;

/// Concurrent refunds of the throughput measurement.
const CONCURRENCY: usize = 64;

/// The bearer token of the one caller in the callers file.
const TOKEN: &str = "tracing-cost-bench-token";

/// The command line.
#[derive(Debug)]
struct Args {
    /// Length of each measurement.
    seconds: f64,
    /// Warm each gateway up for a second before measuring.
    warm_up: bool,
    /// The `refund-gateway` binary under measurement.
    gateway: PathBuf,
}

impl Args {
    /// Parses `[--seconds N] [--gateway PATH] [--quick]`.
    fn parse() -> anyhow::Result<Self> {
        let usage = "usage: tracing-cost [--seconds N] [--gateway PATH] [--quick]";
        let mut seconds = None;
        let mut gateway = None;
        let mut quick = false;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--seconds" => {
                    let n: f64 = args.next().context(usage)?.parse().context(usage)?;
                    ensure!(n > 0.0, "--seconds must be positive");
                    seconds = Some(n);
                }
                "--gateway" => gateway = Some(PathBuf::from(args.next().context(usage)?)),
                "--quick" => quick = true,
                "-h" | "--help" => {
                    println!("{usage}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?}\n{usage}"),
            }
        }
        ensure!(
            !(quick && seconds.is_some()),
            "--quick measures 1 s each; leave out --seconds"
        );
        let gateway = match gateway {
            Some(path) => path,
            // Next to this executable: `cargo run --release` puts both in the release dir.
            None => std::env::current_exe()?
                .parent()
                .context("this executable has no directory")?
                .join("refund-gateway"),
        };
        ensure!(
            gateway.is_file(),
            "no gateway binary at {}: run `cargo build --release -p refund-gateway` first \
             (or pass --gateway PATH)",
            gateway.display()
        );
        Ok(Self {
            seconds: seconds.unwrap_or(if quick { 1.0 } else { 10.0 }),
            warm_up: !quick,
            gateway,
        })
    }
}

/// `ORDERS` orders on the simulator, each captured far beyond what a run refunds (1 minor
/// unit per refund), so no refund is refused for the amount.
fn seed_orders(sim: &RunningSimulator) -> Vec<String> {
    (0..ORDERS)
        .map(|_| {
            sim.sim
                .seed_order(OrderSeed {
                    order_amount: 1_000_000_000_000,
                    captures: vec![1_000_000_000_000],
                    ..Default::default()
                })
                .order_id
        })
        .collect()
}

/// Refunds through `channel` for `seconds` at `concurrency`: 1 minor unit each, with a fresh
/// idempotency key, the orders taken round-robin by request number.
async fn refunds(
    channel: &Channel,
    orders: &Arc<Vec<String>>,
    concurrency: usize,
    seconds: f64,
) -> anyhow::Result<Run> {
    let authorization: MetadataValue<Ascii> = format!("Bearer {TOKEN}").parse()?;
    let next = Arc::new(AtomicU64::new(0));
    let channel = channel.clone();
    let orders = orders.clone();
    drive(concurrency, seconds, move |_, _| {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let mut request = tonic::Request::new(pb::RefundOrderRequest {
            idempotency_key: uuid::Uuid::new_v4().to_string(),
            order_id: orders[n as usize % orders.len()].clone(),
            refunded_amount: 1,
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("authorization", authorization.clone());
        let mut client = RefundGatewayServiceClient::new(channel.clone());
        async move {
            client.refund_order(request).await?;
            Ok(())
        }
    })
    .await
}

/// The measurements of one variant.
#[derive(Debug)]
struct Measured {
    name: &'static str,
    busy: Run,
    single: Run,
    /// Gateway CPU time per refund during the run at [`CONCURRENCY`], in microseconds.
    cpu_us_per_refund: f64,
    /// Spans the sink received per successful refund over the gateway's life.
    spans_per_refund: f64,
    /// Failed refunds, warm-up included.
    errors: usize,
}

/// Starts a gateway with `otel`, warms it up, measures it, and stops it.
async fn measure(
    args: &Args,
    sim: &RunningSimulator,
    sink: &SpanSink,
    name: &'static str,
    otel: &[(&str, String)],
) -> anyhow::Result<Measured> {
    eprintln!("{name}: starting the gateway");
    // Fresh orders per variant, so none starts with the refund history of another.
    let orders = Arc::new(seed_orders(sim));
    let spans_before = sink.received();
    let spec = GatewaySpec {
        binary: args.gateway.clone(),
        klarna: KlarnaTarget {
            base_url: sim.base_url.clone(),
            username: sim.username().to_owned(),
            password: sim.password().to_owned(),
        },
        database_url: None,
        env: otel
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    };
    // A fresh home (callers file, configuration, SQLite store) per variant.
    let home = GatewayHome::new(TOKEN)?;
    let gateway = GatewayProcess::start(&spec, &home).await?;
    // One HTTP/2 connection for all workers, as one client process would have.
    let channel = Channel::from_shared(gateway.grpc_url.clone())?
        .connect()
        .await?;

    let warm = if args.warm_up {
        refunds(&channel, &orders, CONCURRENCY, 1.0).await?
    } else {
        Run::default()
    };
    eprintln!("{name}: {CONCURRENCY} concurrent for {} s", args.seconds);
    let cpu_before = cpu_time(gateway.pid())?;
    let busy = refunds(&channel, &orders, CONCURRENCY, args.seconds).await?;
    let cpu = cpu_time(gateway.pid())? - cpu_before;
    eprintln!("{name}: 1 concurrent for {} s", args.seconds);
    let single = refunds(&channel, &orders, 1, args.seconds).await?;
    drop(channel);
    // The spans still queued are flushed on the way out; count them too.
    gateway.stop().await?;

    let spans = sink.received() - spans_before;
    let refunded = warm.latencies.len() + busy.latencies.len() + single.latencies.len();
    Ok(Measured {
        name,
        cpu_us_per_refund: cpu.as_secs_f64() * 1e6 / busy.latencies.len().max(1) as f64,
        spans_per_refund: spans as f64 / refunded.max(1) as f64,
        errors: warm.errors + busy.errors + single.errors,
        busy,
        single,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let sim = klarna_sim::spawn(SimConfig {
        // The simulator's request log is for tests; keep it from costing the load generator.
        request_log_capacity: 0,
        ..SimConfig::default()
    })
    .await?;
    let sink = SpanSink::default();
    let endpoint = sink.start().await?;

    let variants: [(&'static str, Vec<(&str, String)>); 3] = [
        ("off", vec![]),
        (
            "all sampled",
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
                ("OTEL_TRACES_SAMPLER", "always_on".into()),
            ],
        ),
        (
            "ratio 0.1",
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".into()),
                ("OTEL_TRACES_SAMPLER_ARG", "0.1".into()),
            ],
        ),
    ];
    let mut rows = Vec::new();
    for (name, otel) in &variants {
        rows.push(measure(&args, &sim, &sink, name, otel).await?);
    }

    println!();
    println!(
        "OpenTelemetry trace export cost, release gateway, durable SQLite, {} s per \
         measurement{}",
        args.seconds,
        if args.warm_up {
            ", 1 s warm-up"
        } else {
            " (quick: a smoke run, not a measurement)"
        }
    );
    println!(
        "| variant | {CONCURRENCY} conc: refunds/s | p50 ms | p99 ms | CPU µs/refund | \
         spans/refund | 1 conc: p50 ms | p99 ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {:.0} | {} | {} | {:.0} | {:.2} | {} | {} |",
            row.name,
            row.busy.throughput(),
            ms(row.busy.percentile(0.50)),
            ms(row.busy.percentile(0.99)),
            row.cpu_us_per_refund,
            row.spans_per_refund,
            ms(row.single.percentile(0.50)),
            ms(row.single.percentile(0.99)),
        );
    }
    let off = &rows[0];
    println!();
    println!("cost relative to off:");
    for row in rows.iter().skip(1) {
        let loss =
            (1.0 - row.busy.throughput() / off.busy.throughput().max(f64::MIN_POSITIVE)) * 100.0;
        let added_p50 = (row.single.percentile(0.50).as_secs_f64()
            - off.single.percentile(0.50).as_secs_f64())
            * 1000.0;
        println!(
            "- {}: throughput loss at {CONCURRENCY} concurrent {loss:.1} %; added p50 at 1 \
             concurrent {added_p50:+.3} ms",
            row.name
        );
    }
    for row in &rows {
        ensure!(
            row.errors == 0,
            "{}: {} refunds failed",
            row.name,
            row.errors
        );
        ensure!(
            !row.busy.latencies.is_empty() && !row.single.latencies.is_empty(),
            "{}: no refund completed",
            row.name
        );
    }
    Ok(())
}
