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

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use klarna_sim::{OrderSeed, RunningSimulator, SimConfig};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use refund_gateway_proto::v1 as pb;
use refund_gateway_proto::v1::refund_gateway_service_client::RefundGatewayServiceClient;
use refund_gateway_tests::load::{Run, drive, ms};
use sha2::Digest;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

/// Orders refunded round-robin: the gateway serializes refunds of one order, so the load is
/// spread over many more orders than there are requests in flight.
const ORDERS: usize = 512;

/// Concurrent refunds of the throughput measurement.
const CONCURRENCY: usize = 64;

/// The bearer token of the one caller in the callers file.
const TOKEN: &str = "tracing-cost-bench-token";

/// How long a gateway may take to log that it listens, and to exit after SIGTERM.
const PROCESS_LIMIT: Duration = Duration::from_secs(60);

/// Log lines of a gateway kept for error messages (the rest are read and dropped).
const LOG_TAIL: usize = 200;

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

/// An OTLP/gRPC trace "collector" that counts the spans it is sent and answers at once, so
/// the gateway's exporter never waits on it.
#[derive(Debug, Clone, Default)]
struct SpanSink {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for SpanSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl SpanSink {
    /// Serves the sink on a free loopback port in a task; returns its
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    async fn start(&self) -> anyhow::Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the span sink")?;
        let addr = listener.local_addr()?;
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
            {
                eprintln!("the span sink on {addr} stopped: {e}");
            }
        });
        Ok(format!("http://{addr}"))
    }

    /// Spans received so far.
    fn received(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }
}

/// A running `refund-gateway` process; killed on drop, so a failed run leaves none behind.
#[derive(Debug)]
struct Gateway {
    child: Option<Child>,
    pid: u32,
    /// `http://host:port` of its gRPC listener.
    grpc_url: String,
    /// The last [`LOG_TAIL`] lines it wrote to stderr.
    log: Arc<Mutex<VecDeque<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// Its configuration, callers file and database; removed on drop.
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts `binary` with a fresh data directory and a callers file, the simulator's
    /// `KLARNA_*` variables and `otel` (and no other variable of ours, inherited or not),
    /// and waits until it logs that it listens.
    async fn start(
        binary: &Path,
        sim: &RunningSimulator,
        otel: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let callers = dir.path().join("callers.toml");
        let token_sha256: String = sha2::Sha256::digest(TOKEN.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::write(
            &callers,
            format!(
                "[[caller]]\nname = \"bench\"\ntoken_sha256 = \"{token_sha256}\"\n\
                 rpcs = [\"*\"]\nklarna_accounts = [\"*\"]\n"
            ),
        )?;
        let config = dir.path().join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\n\
                 admin_listen = \"127.0.0.1:0\"\n\
                 callers_file = {}\n\
                 data_dir = {}\n",
                toml_string(&callers)?,
                toml_string(&dir.path().join("data"))?,
            ),
        )?;

        let mut cmd = Command::new(binary);
        // The variant decides tracing, the simulator decides Klarna; the shell's settings of
        // either, or of the log filter, would make the variants differ in more than tracing.
        for (var, _) in std::env::vars_os() {
            let name = var.to_string_lossy();
            if ["KLARNA_", "REFUND_GATEWAY_", "OTEL_"]
                .iter()
                .any(|p| name.starts_with(p))
                || ["DATABASE_URL", "REDIS_URL", "RUST_LOG"].contains(&name.as_ref())
            {
                cmd.env_remove(&var);
            }
        }
        cmd.env("KLARNA_API_URL", &sim.base_url)
            .env("KLARNA_USERNAME", sim.username())
            .env("KLARNA_PASSWORD", sim.password())
            .envs(otel.iter().map(|(k, v)| (k, v)))
            .arg("--config")
            .arg(&config)
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id();
        let stderr = child.stderr.take().context("no stderr pipe")?;

        // Read stderr to its end in a thread: a pipe nobody reads fills up and then blocks
        // the gateway's logging, and so its requests.
        let log = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL)));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel::<String>();
        let reader = {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut addr_tx = Some(addr_tx);
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if addr_tx.is_some() && line.contains("refund gateway listening") {
                        let value: serde_json::Value =
                            serde_json::from_str(&line).unwrap_or_default();
                        if let (Some(tx), Some(addr)) =
                            (addr_tx.take(), value["grpc_addr"].as_str())
                        {
                            let _ = tx.send(addr.to_owned());
                        }
                    }
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    if log.len() == LOG_TAIL {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
            })
        };
        let mut gateway = Self {
            child: Some(child),
            pid,
            grpc_url: String::new(),
            log,
            reader: Some(reader),
            _dir: dir,
        };
        // The sender is dropped unsent when stderr closes first: the process died.
        match tokio::time::timeout(PROCESS_LIMIT, addr_rx).await {
            Ok(Ok(addr)) => gateway.grpc_url = format!("http://{addr}"),
            Ok(Err(_)) => bail!("the gateway exited before listening:\n{}", gateway.log()),
            Err(_) => bail!(
                "the gateway did not listen within {PROCESS_LIMIT:?}:\n{}",
                gateway.log()
            ),
        }
        Ok(gateway)
    }

    /// The last lines the gateway logged.
    fn log(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        Vec::from(log.clone()).join("\n")
    }

    /// CPU time the process has used so far (user + system), in clock ticks: fields 14 and
    /// 15 of `/proc/<pid>/stat`.
    fn cpu_ticks(&self) -> anyhow::Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .with_context(|| format!("reading /proc/{}/stat (Linux only)", self.pid))?;
        // Field 2, the command name, is in parentheses and may hold spaces: count fields
        // from the last `)`, after which field 3 comes.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .context("unexpected /proc/<pid>/stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| -> anyhow::Result<u64> {
            Ok(fields
                .get(n - 3)
                .with_context(|| format!("no field {n} in /proc/<pid>/stat"))?
                .parse()?)
        };
        Ok(field(14)? + field(15)?)
    }

    /// SIGTERM (with kill(1)), then a bounded wait for a clean exit, which flushes the spans
    /// still queued for export.
    async fn stop(mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()?;
        ensure!(status.success(), "kill -TERM {} failed: {status}", self.pid);
        let mut child = self
            .child
            .take()
            .context("the gateway was already stopped")?;
        let waited: Result<std::io::Result<ExitStatus>, _> = tokio::time::timeout(
            PROCESS_LIMIT,
            tokio::task::spawn_blocking(move || child.wait()),
        )
        .await
        .map_err(|_| anyhow!("the gateway did not exit within {PROCESS_LIMIT:?} of SIGTERM"))?;
        let status = waited??;
        if let Some(reader) = self.reader.take() {
            reader
                .join()
                .map_err(|_| anyhow!("the gateway's stderr reader panicked"))?;
        }
        ensure!(
            status.success(),
            "the gateway exited with {status} after SIGTERM:\n{}",
            self.log()
        );
        Ok(())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `path` as a TOML basic string.
fn toml_string(path: &Path) -> anyhow::Result<String> {
    let path = path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    Ok(format!(
        "\"{}\"",
        path.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// Clock ticks per second of `/proc/<pid>/stat`, from `getconf CLK_TCK` (100 on Linux when
/// that cannot be run).
fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&ticks| ticks > 0)
        .unwrap_or(100)
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
    ticks_per_second: u64,
    name: &'static str,
    otel: &[(&str, String)],
) -> anyhow::Result<Measured> {
    eprintln!("{name}: starting the gateway");
    // Fresh orders per variant, so none starts with the refund history of another.
    let orders = Arc::new(seed_orders(sim));
    let spans_before = sink.received();
    let gateway = Gateway::start(&args.gateway, sim, otel).await?;
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
    let cpu_before = gateway.cpu_ticks()?;
    let busy = refunds(&channel, &orders, CONCURRENCY, args.seconds).await?;
    let cpu_ticks = gateway.cpu_ticks()? - cpu_before;
    eprintln!("{name}: 1 concurrent for {} s", args.seconds);
    let single = refunds(&channel, &orders, 1, args.seconds).await?;
    drop(channel);
    // The spans still queued are flushed on the way out; count them too.
    gateway.stop().await?;

    let spans = sink.received() - spans_before;
    let refunded = warm.latencies.len() + busy.latencies.len() + single.latencies.len();
    Ok(Measured {
        name,
        cpu_us_per_refund: cpu_ticks as f64 * 1e6
            / ticks_per_second as f64
            / busy.latencies.len().max(1) as f64,
        spans_per_refund: spans as f64 / refunded.max(1) as f64,
        errors: warm.errors + busy.errors + single.errors,
        busy,
        single,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let ticks_per_second = clock_ticks_per_second();
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
        rows.push(measure(&args, &sim, &sink, ticks_per_second, name, otel).await?);
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
