//! What operators see of the real `refund-gateway` binary (see docs/observability.md): the
//! spans it exports over OTLP, its `/metrics`, and its production log lines.
//!
//! The tracer and the log subscriber are global to a process, so each test starts the binary
//! as a process of its own, as `main` runs it: an OTLP receiver inside the test
//! (`common::otlp`) stands in for the collector, the Klarna simulator (or, for personal data
//! in an order, a minimal Klarna serving Klarna's documented sample order) answers over HTTP.

mod common;

use std::collections::BTreeMap;

use anyhow::{Context, anyhow, ensure};
use klarna_sim::{FaultKind, FaultSpec, OrderSeed, RunningSimulator, SimConfig};
use refund_gateway_proto::v1::{
    GetOrderRequest, ListOperationsRequest, OperationState, RefundOrderRequest,
};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::otlp::{OtlpReceiver, ReceivedSpan};
use common::{Client, GatewayProcess, WAIT_LIMIT, klarna_env, wait_until, write_config_with};

/// The caller's trace: its trace id and the id of the caller's span the RPC is a child of.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";
const TOKEN: &str = "till-token-observability-31c9";
const FLOOD_TOKEN: &str = "flood-token-observability-8d2e";

fn sha256_hex(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A configuration with two callers: `till` (no rate limit) and `flood` (one request per
/// second, no burst), and the test's `extra` lines.
fn config_with_callers(work: &std::path::Path, extra: &str) -> anyhow::Result<std::path::PathBuf> {
    let callers = work.join("callers.toml");
    std::fs::write(
        &callers,
        format!(
            "[[caller]]\nname = \"till\"\ntoken_sha256 = \"{}\"\nrpcs = [\"*\"]\nklarna_accounts = [\"*\"]\n\n\
             [[caller]]\nname = \"flood\"\ntoken_sha256 = \"{}\"\nrpcs = [\"*\"]\nklarna_accounts = [\"*\"]\n\
             requests_per_second = 1\nburst = 1\n",
            sha256_hex(TOKEN),
            sha256_hex(FLOOD_TOKEN)
        ),
    )?;
    let config = write_config_with(work, &work.join("data"), extra)?;
    let text = std::fs::read_to_string(&config)?.replace(
        "auth = \"none\"\n",
        &format!("callers_file = {:?}\n", callers.to_string_lossy()),
    );
    std::fs::write(&config, text)?;
    Ok(config)
}

/// `message` with the caller's token and, when given, a W3C `traceparent`.
fn call<T>(
    message: T,
    token: &str,
    traceparent: Option<&str>,
) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    if let Some(traceparent) = traceparent {
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse()?);
    }
    Ok(request)
}

fn refund(key: &str, order_id: &str, amount: i64) -> RefundOrderRequest {
    RefundOrderRequest {
        idempotency_key: key.into(),
        order_id: order_id.into(),
        refunded_amount: amount,
        ..Default::default()
    }
}

fn captured_order(sim: &RunningSimulator) -> String {
    sim.sim
        .seed_order(OrderSeed {
            order_amount: 10_000,
            captures: vec![10_000],
            ..Default::default()
        })
        .order_id
}

fn refunds_path(order_id: &str) -> String {
    format!("/ordermanagement/v1/orders/{order_id}/refunds")
}

/// A running gateway with the two callers, its client and its working directory.
struct Started {
    gateway: GatewayProcess,
    client: Client,
    _work: tempfile::TempDir,
}

/// Starts the binary on `klarna` (the `KLARNA_*` variables) with the two callers, `extra`
/// configuration lines and the `otel` variables.
async fn start_gateway(
    name: &str,
    mut klarna: Vec<(&'static str, String)>,
    extra: &str,
    otel: &[(&'static str, &str)],
) -> anyhow::Result<Started> {
    let work = tempfile::tempdir()?;
    let config = config_with_callers(work.path(), extra)?;
    klarna.extend(otel.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let gateway = GatewayProcess::start(name, &config, &klarna).await?;
    let client = gateway.client().await?;
    Ok(Started {
        gateway,
        client,
        _work: work,
    })
}

/// The caller's `traceparent`.
fn caller_traceparent() -> String {
    format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01")
}

fn attr(span: &ReceivedSpan, key: &str) -> String {
    span.attr(key).unwrap_or_default()
}

fn describe(spans: &[ReceivedSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {} trace={} id={} parent={} {:?}",
                s.kind, s.name, s.trace_id, s.span_id, s.parent_span_id, s.attributes
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The admin address the process logged when it started listening.
fn admin_addr(gateway: &GatewayProcess) -> anyhow::Result<String> {
    gateway
        .log_text()
        .lines()
        .filter(|l| l.contains("refund gateway listening"))
        .find_map(|l| {
            let line: serde_json::Value = serde_json::from_str(l).ok()?;
            line["admin_addr"].as_str().map(str::to_owned)
        })
        .ok_or_else(|| anyhow!("no admin_addr in the listening line"))
}

/// `GET /metrics` on the admin port, over a plain HTTP/1.0 connection.
async fn scrape(admin: &str) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(admin).await?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {admin}\r\n\r\n").as_bytes())
        .await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP head in {answer:?}"))?;
    ensure!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    Ok(body.to_owned())
}

/// The value of the series `name` whose labels include every one of `labels`, summed over the
/// series that match.
fn series(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let parsed: BTreeMap<&str, &str> = series_labels
            .split("\",")
            .filter_map(|kv| kv.split_once("=\""))
            .map(|(k, v)| (k.trim_matches(','), v.trim_end_matches('"')))
            .collect();
        if labels.iter().all(|(k, v)| parsed.get(k) == Some(v)) {
            let value: f64 = value.parse().ok()?;
            found = Some(found.unwrap_or(0.0) + value);
        }
    }
    found
}

/// A refund whose first Klarna attempt gets a 503 and is resent: one trace, continuing the
/// caller's, with one SERVER span, two CLIENT spans under it (resend counts 0 and 1, each with
/// the attributes of the HTTP conventions), the store's claim and finish under it, and the
/// trace context sent to Klarna on both attempts; the audit trail names the trace. The same
/// process's `/metrics` then shows the refund, the retry, a Klarna error and a caller's
/// rate-limit rejection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_refund_is_one_trace_and_moves_the_metrics() -> anyhow::Result<()> {
    let sim = klarna_sim::spawn(SimConfig::default()).await?;
    let receiver = OtlpReceiver::start().await?;
    let order_id = captured_order(&sim);
    sim.sim.inject_fault(FaultSpec {
        method: Some("POST".into()),
        path: refunds_path(&order_id),
        times: 1,
        kind: FaultKind::Status {
            status: 503,
            body: None,
            retry_after_secs: None,
        },
    });
    let endpoint = receiver.endpoint();
    let Started {
        gateway,
        mut client,
        // Kept: the gateway's data directory.
        _work,
    } = start_gateway(
        "traced gateway",
        klarna_env(&sim),
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await?;

    let traceparent = caller_traceparent();
    let answer = client
        .refund_order(call(
            refund("traced-1", &order_id, 1_500),
            TOKEN,
            Some(&traceparent),
        )?)
        .await?
        .into_inner();

    let spans = receiver
        .wait_for(|spans| {
            let posts = spans
                .iter()
                .filter(|s| s.trace_id == TRACE_ID && s.name == "HTTP POST")
                .count();
            let server = spans
                .iter()
                .any(|s| s.trace_id == TRACE_ID && s.kind == "server");
            let finish = spans
                .iter()
                .any(|s| s.trace_id == TRACE_ID && s.name == "store.finish");
            posts == 2 && server && finish
        })
        .await?;
    let trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == TRACE_ID).collect();
    let servers: Vec<&&ReceivedSpan> = trace.iter().filter(|s| s.kind == "server").collect();
    ensure!(
        servers.len() == 1,
        "one SERVER span expected:\n{}",
        describe(&spans)
    );
    let server = servers[0];
    ensure!(
        server.parent_span_id == CALLER_SPAN_ID,
        "the RPC span is not the caller's span's child:\n{}",
        describe(&spans)
    );
    ensure!(server.name == "refundgateway.v1.RefundGatewayService/RefundOrder");
    ensure!(
        server.service_name == "refund-gateway",
        "{:?}",
        server.resource
    );
    for (key, value) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "refundgateway.v1.RefundGatewayService"),
        ("rpc.method", "RefundOrder"),
        ("rpc.grpc.status_code", "0"),
        ("rpc.response.status_code", "OK"),
        ("refund.operation_id", answer.operation_id.as_str()),
        ("refund.idempotency_replayed", "false"),
        ("refund.caller", "till"),
        ("klarna.account", "default"),
    ] {
        ensure!(
            attr(server, key) == value,
            "SERVER span {key} = {:?}, expected {value:?}: {:?}",
            server.attr(key),
            server.attributes
        );
    }

    let mut posts: Vec<&&ReceivedSpan> = trace.iter().filter(|s| s.name == "HTTP POST").collect();
    posts.sort_by_key(|s| attr(s, "http.request.resend_count"));
    ensure!(posts.len() == 2, "{}", describe(&spans));
    for (resend, (span, status)) in posts.iter().zip(["503", "201"]).enumerate() {
        ensure!(span.kind == "client", "{}", describe(&spans));
        ensure!(
            span.parent_span_id == server.span_id,
            "attempt {resend} is not a child of the RPC span:\n{}",
            describe(&spans)
        );
        ensure!(attr(span, "http.request.resend_count") == resend.to_string());
        ensure!(attr(span, "http.request.method") == "POST");
        ensure!(
            attr(span, "http.response.status_code") == status,
            "{:?}",
            span.attributes
        );
        ensure!(
            attr(span, "server.address") == "127.0.0.1",
            "{:?}",
            span.attributes
        );
        let url = attr(span, "url.full");
        ensure!(
            url.ends_with(&refunds_path(&order_id)) && !url.contains('@'),
            "url.full {url:?}"
        );
    }
    ensure!(
        attr(posts[0], "error.type") == "503",
        "{:?}",
        posts[0].attributes
    );
    ensure!(
        attr(posts[0], "klarna.error_code") == "TEMPORARILY_UNAVAILABLE",
        "{:?}",
        posts[0].attributes
    );
    ensure!(
        posts[0].status_code == 2,
        "the 503 attempt is not an error span"
    );
    // Order Management sends its correlation id in error bodies.
    ensure!(
        !attr(posts[0], "klarna.correlation_id").is_empty(),
        "{:?}",
        posts[0].attributes
    );
    for name in ["store.claim", "store.finish"] {
        ensure!(
            trace.iter().any(|s| s.name == name
                && s.kind == "internal"
                && s.parent_span_id == server.span_id),
            "no INTERNAL {name} span under the RPC:\n{}",
            describe(&spans)
        );
    }

    // Klarna was sent the trace context of each attempt's own span.
    let sent: Vec<String> = sim
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == refunds_path(&order_id))
        .filter_map(|r| {
            r.headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("traceparent"))
                .map(|(_, value)| value.clone())
        })
        .collect();
    let expected: Vec<String> = posts
        .iter()
        .map(|s| format!("00-{TRACE_ID}-{}-01", s.span_id))
        .collect();
    ensure!(
        sent == expected,
        "traceparent sent {sent:?}, attempts {expected:?}"
    );

    // The audit trail names the trace; the operation keeps the request's traceparent.
    let listed = client
        .list_operations(call(
            ListOperationsRequest {
                idempotency_key: "traced-1".into(),
                ..Default::default()
            },
            TOKEN,
            None,
        )?)
        .await?
        .into_inner();
    let record = listed
        .operations
        .first()
        .ok_or_else(|| anyhow!("operation not listed"))?;
    ensure!(
        record.traceparent == format!("00-{TRACE_ID}-{}-01", server.span_id),
        "traceparent {:?}",
        record.traceparent
    );
    ensure!(
        !record.events.is_empty() && record.events.iter().all(|e| e.otel_trace_id == TRACE_ID),
        "events {:?}",
        record.events
    );

    // A replay is its own RPC span, marked as replayed.
    let replayed_trace = "0af7651916cd43dd8448eb211c80319c";
    let replay = client
        .refund_order(call(
            refund("traced-1", &order_id, 1_500),
            TOKEN,
            Some(&format!("00-{replayed_trace}-b7ad6b7169203331-01")),
        )?)
        .await?
        .into_inner();
    ensure!(replay.replayed);
    let spans = receiver
        .wait_for(|spans| {
            spans
                .iter()
                .any(|s| s.trace_id == replayed_trace && s.kind == "server")
        })
        .await?;
    let replay_span = spans
        .iter()
        .find(|s| s.trace_id == replayed_trace && s.kind == "server")
        .ok_or_else(|| anyhow!("no replay span"))?;
    ensure!(attr(replay_span, "refund.idempotency_replayed") == "true");

    // Metrics: the refund, the retry, a Klarna error, a rate-limit rejection.
    let refused_order = captured_order(&sim);
    sim.sim.inject_fault(FaultSpec {
        method: Some("POST".into()),
        path: refunds_path(&refused_order),
        times: 1,
        kind: FaultKind::Status {
            status: 400,
            body: None,
            retry_after_secs: None,
        },
    });
    let refused = client
        .refund_order(call(refund("refused-1", &refused_order, 100), TOKEN, None)?)
        .await
        .err()
        .ok_or_else(|| anyhow!("Klarna's 400 was not an error"))?;
    ensure!(
        refused.code() == tonic::Code::InvalidArgument,
        "{refused:?}"
    );
    let flood_order = captured_order(&sim);
    let mut limited = None;
    for n in 0..3 {
        if let Err(status) = client
            .get_order(call(
                GetOrderRequest {
                    order_id: flood_order.clone(),
                    ..Default::default()
                },
                FLOOD_TOKEN,
                None,
            )?)
            .await
        {
            limited = Some((n, status));
            break;
        }
    }
    let (_, limited) = limited.ok_or_else(|| anyhow!("the flood caller was never limited"))?;
    ensure!(
        limited.code() == tonic::Code::ResourceExhausted,
        "{limited:?}"
    );

    let admin = admin_addr(&gateway)?;
    let metrics = scrape(&admin).await?;
    let checks: [(&str, &[(&str, &str)]); 9] = [
        (
            "rpc_requests_total",
            &[("method", "RefundOrder"), ("grpc_status", "0")],
        ),
        (
            "rpc_requests_total",
            &[("method", "RefundOrder"), ("grpc_status", "3")],
        ),
        (
            "rpc_requests_total",
            &[("method", "GetOrder"), ("grpc_status", "8")],
        ),
        (
            "rpc_duration_seconds_count",
            &[("method", "RefundOrder"), ("grpc_status", "0")],
        ),
        (
            "klarna_attempts_total",
            &[
                ("operation", "create_refund"),
                ("status", "503"),
                ("error_code", "TEMPORARILY_UNAVAILABLE"),
            ],
        ),
        (
            "klarna_attempts_total",
            &[
                ("operation", "create_refund"),
                ("status", "400"),
                ("error_code", "BAD_VALUE"),
            ],
        ),
        ("klarna_retries_total", &[("reason", "status_5xx")]),
        ("rpc_caller_rate_limited_total", &[("caller", "flood")]),
        (
            "operations_recorded_total",
            &[("rpc", "RefundOrder"), ("outcome", "succeeded")],
        ),
    ];
    for (name, labels) in checks {
        ensure!(
            series(&metrics, name, labels).is_some_and(|v| v >= 1.0),
            "{name}{labels:?} did not move:\n{metrics}"
        );
    }
    ensure!(
        series(
            &metrics,
            "klarna_attempt_duration_seconds_bucket",
            &[
                ("operation", "create_refund"),
                ("status", "201"),
                ("le", "+Inf")
            ]
        )
        .is_some_and(|v| v >= 1.0),
        "no attempt latency histogram:\n{metrics}"
    );
    ensure!(
        series(
            &metrics,
            "refund_gateway_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ) == Some(1.0),
        "{metrics}"
    );
    for gauge in [
        "operations_pending",
        "operations_requires_review",
        "operations_pending_oldest_age_seconds",
    ] {
        ensure!(
            metrics.contains(&format!("\n{gauge} ")),
            "no {gauge}:\n{metrics}"
        );
    }
    ensure!(
        !metrics.contains(&order_id) && !metrics.contains("traced-1") && !metrics.contains(TOKEN),
        "an order id, key or token became a label:\n{metrics}"
    );
    Ok(())
}

/// `rpc_waiting` counts the calls waiting for a turn past `max_running_rpcs` (here 1): 0 before
/// any waits, 1 while a call waits, 0 again when a waiting call's deadline ends it, and when
/// the turn comes and the waiting call is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiting_calls_gauge_follows_the_queue() -> anyhow::Result<()> {
    let sim = klarna_sim::spawn(SimConfig::default()).await?;
    let order_id = captured_order(&sim);
    // The one turn is held at Klarna: the first read of the order waits there.
    sim.sim.inject_fault(FaultSpec {
        method: Some("GET".into()),
        path: format!("/ordermanagement/v1/orders/{order_id}"),
        times: 1,
        kind: FaultKind::Latency { millis: 6_000 },
    });
    let Started {
        client,
        gateway,
        _work,
    } = start_gateway(
        "queued gateway",
        klarna_env(&sim),
        "max_running_rpcs = 1\n",
        &[],
    )
    .await?;
    let admin = admin_addr(&gateway)?;
    let waiting = async || -> anyhow::Result<f64> {
        series(&scrape(&admin).await?, "rpc_waiting", &[])
            .ok_or_else(|| anyhow!("no rpc_waiting in /metrics"))
    };
    ensure!(waiting().await? == 0.0, "calls waiting before any call");
    let read = |timeout: Option<std::time::Duration>| {
        let mut client = client.clone();
        let order_id = order_id.clone();
        tokio::spawn(async move {
            let mut request = call(
                GetOrderRequest {
                    order_id,
                    ..Default::default()
                },
                TOKEN,
                None,
            )?;
            if let Some(timeout) = timeout {
                request.set_timeout(timeout);
            }
            anyhow::Ok(client.get_order(request).await)
        })
    };
    let gauge_is = |value: f64| {
        let waiting = &waiting;
        async move {
            wait_until(
                &format!("rpc_waiting to be {value}"),
                WAIT_LIMIT,
                async || Ok::<_, anyhow::Error>((waiting().await? == value).then_some(())),
            )
            .await
        }
    };

    let held = read(None);
    wait_until("the first read to reach Klarna", WAIT_LIMIT, async || {
        Ok::<_, anyhow::Error>((!sim.sim.injected_faults().is_empty()).then_some(()))
    })
    .await?;
    // A call with a deadline waits, then its deadline ends it: the gauge goes back down.
    let short = read(Some(std::time::Duration::from_millis(1_500)));
    gauge_is(1.0).await?;
    ensure!(short.await??.is_err(), "served while the one turn was held");
    gauge_is(0.0).await?;
    ensure!(
        !held.is_finished(),
        "the turn was free: the check proves nothing"
    );

    // A call with time waits, and is served when the turn comes.
    let patient = read(None);
    gauge_is(1.0).await?;
    held.await??
        .map_err(|status| anyhow!("the held read failed: {status:?}"))?;
    patient
        .await??
        .map_err(|status| anyhow!("the waiting read failed: {status:?}"))?;
    gauge_is(0.0).await
}

/// A refund that goes PENDING (Klarna holds the answer past the caller's deadline) is settled
/// by the reconciler in a trace of its own, a root span linked to the RPC that created it,
/// with its Klarna attempt inside; the take-over's audit event names that trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_settles_a_pending_refund_in_a_linked_trace() -> anyhow::Result<()> {
    let sim = klarna_sim::spawn(SimConfig::default()).await?;
    let receiver = OtlpReceiver::start().await?;
    let order_id = captured_order(&sim);
    sim.sim.inject_fault(FaultSpec {
        method: Some("POST".into()),
        path: refunds_path(&order_id),
        times: 1,
        kind: FaultKind::CommitThenHold { millis: 3_000 },
    });
    let endpoint = receiver.endpoint();
    let Started {
        mut client,
        // Kept: dropping the process kills it.
        gateway: _gateway,
        // Kept: the gateway's data directory.
        _work,
    } = start_gateway(
        "traced gateway",
        klarna_env(&sim),
        "reconcile_interval_ms = 100
",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await?;

    let mut request = call(
        refund("pending-1", &order_id, 900),
        TOKEN,
        Some(&caller_traceparent()),
    )?;
    request.set_timeout(std::time::Duration::from_millis(800));
    let pending = client.refund_order(request).await;
    ensure!(pending.is_err(), "answered before Klarna did: {pending:?}");

    let spans = receiver
        .wait_for(|spans| {
            spans
                .iter()
                .any(|s| s.name == "reconcile" && attr(s, "refund.state_after") == "SUCCEEDED")
        })
        .await?;
    let server = spans
        .iter()
        .find(|s| s.trace_id == TRACE_ID && s.kind == "server")
        .ok_or_else(|| anyhow!("no RPC span:\n{}", describe(&spans)))?;
    let reconcile = spans
        .iter()
        .find(|s| s.name == "reconcile" && attr(s, "refund.state_after") == "SUCCEEDED")
        .ok_or_else(|| anyhow!("no reconcile span"))?;
    ensure!(
        reconcile.is_root() && reconcile.trace_id != TRACE_ID,
        "{}",
        describe(&spans)
    );
    ensure!(
        reconcile.links == vec![(TRACE_ID.to_owned(), server.span_id.clone())],
        "the reconcile span is not linked to the RPC: {:?}\n{}",
        reconcile.links,
        describe(&spans)
    );
    ensure!(attr(reconcile, "refund.operation_id") == attr(server, "refund.operation_id"));
    ensure!(
        spans.iter().any(|s| s.trace_id == reconcile.trace_id
            && s.kind == "client"
            && s.parent_span_id == reconcile.span_id),
        "no Klarna attempt in the reconciler's trace:\n{}",
        describe(&spans)
    );

    let settled = wait_until(
        "the operation to be listed as SUCCEEDED",
        WAIT_LIMIT,
        async || -> anyhow::Result<Option<_>> {
            let listed = client
                .list_operations(call(
                    ListOperationsRequest {
                        idempotency_key: "pending-1".into(),
                        ..Default::default()
                    },
                    TOKEN,
                    None,
                )?)
                .await?
                .into_inner();
            Ok(listed
                .operations
                .into_iter()
                .find(|o| o.state == OperationState::Succeeded as i32))
        },
    )
    .await
    .context("settling")?;
    let taken = settled
        .events
        .iter()
        .find(|e| e.detail.contains("taken over"))
        .ok_or_else(|| anyhow!("no take-over event: {:?}", settled.events))?;
    ensure!(taken.otel_trace_id == reconcile.trace_id, "{taken:?}");
    ensure!(
        settled
            .events
            .first()
            .is_some_and(|e| e.otel_trace_id == TRACE_ID),
        "{:?}",
        settled.events
    );
    Ok(())
}

/// Klarna's documented sample order, with its customer's name, email, phone and address.
const SAMPLE_ORDER: &str =
    include_str!("../../klarna/tests/fixtures/get_order_200_docs_sample.json");

/// The `traceparent` headers a test Klarna received with refunds.
type Traceparents = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// A minimal Klarna that serves the sample order under any id and accepts every refund,
/// keeping the `traceparent` each refund came with; the simulator's orders carry no personal
/// data, Klarna's real ones do.
async fn klarna_with_personal_data()
-> anyhow::Result<(String, tokio::task::JoinHandle<()>, Traceparents)> {
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, HeaderValue, StatusCode};
    use axum::routing::{get, post};

    async fn order(Path(id): Path<String>) -> (StatusCode, HeaderMap, String) {
        let mut order: serde_json::Value = serde_json::from_str(SAMPLE_ORDER).unwrap_or_default();
        order["order_id"] = id.into();
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        (StatusCode::OK, headers, order.to_string())
    }
    async fn refund(
        State(seen): State<Traceparents>,
        Path(id): Path<String>,
        request: HeaderMap,
    ) -> (StatusCode, HeaderMap) {
        if let Some(traceparent) = request.get("traceparent").and_then(|v| v.to_str().ok()) {
            seen.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(traceparent.to_owned());
        }
        let mut headers = HeaderMap::new();
        let refund_id = "b2cb4f5b-6b69-4f5e-9a4a-5f3c0c1e0a01";
        headers.insert("refund-id", HeaderValue::from_static(refund_id));
        if let Ok(location) = format!("/ordermanagement/v1/orders/{id}/refunds/{refund_id}").parse()
        {
            headers.insert("location", location);
        }
        (StatusCode::CREATED, headers)
    }
    let seen = Traceparents::default();
    let app = axum::Router::new()
        .route("/ordermanagement/v1/orders/{id}", get(order))
        .route("/ordermanagement/v1/orders/{id}/refunds", post(refund))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}"), server, seen))
}

/// The production log subscriber, as `main` installs it, at DEBUG: every line is a JSON
/// object; the lines of a call carry its trace id, span id, operation id and caller; no line
/// carries the Klarna password, the caller's token or the customer's personal data from
/// Klarna's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_logs_are_json_with_trace_ids_and_without_secrets_or_personal_data()
-> anyhow::Result<()> {
    const PASSWORD: &str = "klarna-password-canary-5e1d";
    let (klarna_url, _klarna, traceparents) = klarna_with_personal_data().await?;
    let klarna = vec![
        ("KLARNA_API_URL", klarna_url),
        ("KLARNA_USERNAME", "merchant-user".to_owned()),
        ("KLARNA_PASSWORD", PASSWORD.to_owned()),
    ];
    let Started {
        mut gateway,
        mut client,
        // Kept: the gateway's data directory.
        _work,
    } = start_gateway("logging gateway", klarna, "", &[("RUST_LOG", "debug")]).await?;
    let order_id = "7849fd84-47dc-4919-a7ce-000000000001";
    let traceparent = caller_traceparent();
    let answer = client
        .refund_order(call(
            refund("logged-1", order_id, 50),
            TOKEN,
            Some(&traceparent),
        )?)
        .await?
        .into_inner();
    client
        .get_order(call(
            GetOrderRequest {
                order_id: order_id.into(),
                ..Default::default()
            },
            TOKEN,
            Some(&traceparent),
        )?)
        .await?;
    let refused = client
        .refund_order(call(refund("logged-2", order_id, -5), TOKEN, None)?)
        .await;
    ensure!(refused.is_err(), "a negative refund was accepted");
    gateway.terminate_cleanly().await?;
    let log = gateway.log_text();

    let mut lines = Vec::new();
    for line in log.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
        ensure!(
            value["timestamp"].is_string()
                && value["level"].is_string()
                && value["target"].is_string(),
            "a line without timestamp, level or target: {line}"
        );
        lines.push(value);
    }
    let succeeded = lines
        .iter()
        .find(|l| {
            l["message"] == "Klarna call succeeded" && l["klarna.operation"] == "create_refund"
        })
        .ok_or_else(|| anyhow!("no line for the refund's Klarna call:\n{log}"))?;
    ensure!(succeeded["trace_id"] == TRACE_ID, "{succeeded}");
    ensure!(
        succeeded["span_id"]
            .as_str()
            .is_some_and(|s| s.len() == 16 && s != CALLER_SPAN_ID),
        "{succeeded}"
    );
    ensure!(
        succeeded["refund.operation_id"] == answer.operation_id.as_str(),
        "{succeeded}"
    );
    ensure!(succeeded["refund.caller"] == "till", "{succeeded}");
    // Nothing is exported, yet the refund sent to Klarna goes on with the caller's trace, from
    // the span its log line names.
    let sent = traceparents
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let expected = format!(
        "00-{TRACE_ID}-{}-01",
        succeeded["span_id"].as_str().unwrap_or("")
    );
    ensure!(
        sent == vec![expected.clone()],
        "sent {sent:?}, expected {expected}"
    );
    ensure!(
        succeeded["request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{succeeded}"
    );

    let sample: serde_json::Value = serde_json::from_str(SAMPLE_ORDER)?;
    let address = &sample["billing_address"];
    let personal: Vec<&str> = [
        "given_name",
        "family_name",
        "street_address",
        "email",
        "phone",
        "postal_code",
    ]
    .iter()
    .filter_map(|field| address[*field].as_str())
    .filter(|value| value.len() > 3)
    .collect();
    ensure!(
        personal.len() >= 5,
        "the sample lost its personal data: {address}"
    );
    for secret in [PASSWORD, TOKEN].into_iter().chain(personal) {
        ensure!(!log.contains(secret), "{secret:?} reached the log:\n{log}");
    }
    // Without an endpoint nothing is exported, and nothing says so.
    ensure!(
        !log.to_lowercase().contains("export"),
        "export noise without a collector:\n{log}"
    );
    Ok(())
}

/// Spans still waiting for their batch are exported at shutdown: with a batch delay of ten
/// minutes, a refund's spans reach the collector only because SIGTERM flushes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_spans_are_flushed_at_shutdown() -> anyhow::Result<()> {
    let sim = klarna_sim::spawn(SimConfig::default()).await?;
    let receiver = OtlpReceiver::start().await?;
    let order_id = captured_order(&sim);
    let endpoint = receiver.endpoint();
    let Started {
        mut gateway,
        mut client,
        // Kept: the gateway's data directory.
        _work,
    } = start_gateway(
        "batching gateway",
        klarna_env(&sim),
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
    )
    .await?;
    let traceparent = caller_traceparent();
    client
        .refund_order(call(
            refund("flushed-1", &order_id, 100),
            TOKEN,
            Some(&traceparent),
        )?)
        .await?;
    ensure!(
        receiver.spans().is_empty(),
        "exported before the batch was due"
    );
    gateway.terminate_cleanly().await?;
    let spans = receiver.spans();
    ensure!(
        spans
            .iter()
            .any(|s| s.trace_id == TRACE_ID && s.kind == "server"),
        "the refund's spans were not flushed at shutdown:\n{}",
        describe(&spans)
    );
    Ok(())
}

/// A collector that is down costs one log line, not one per batch: the first failed export
/// is logged, the following ones (a later batch, and the flush at shutdown) are not, and the
/// calls are answered as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_outage_is_logged_once() -> anyhow::Result<()> {
    let sim = klarna_sim::spawn(SimConfig::default()).await?;
    // A port that was free a moment ago: nothing listens there.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await?
        .local_addr()?;
    let endpoint = format!("http://{closed}");
    let Started {
        mut gateway,
        mut client,
        // Kept: the gateway's data directory.
        _work,
    } = start_gateway(
        "gateway without collector",
        klarna_env(&sim),
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await?;
    let order_id = captured_order(&sim);
    client
        .refund_order(call(refund("outage-1", &order_id, 100), TOKEN, None)?)
        .await?;
    wait_until(
        "the first failed export to be logged",
        WAIT_LIMIT,
        async || {
            Ok::<_, anyhow::Error>(
                gateway
                    .log_text()
                    .contains("trace export failing")
                    .then_some(()),
            )
        },
    )
    .await?;
    // These spans go to later batches, which fail too; the last one at shutdown at the latest.
    for n in 2..=3 {
        client
            .refund_order(call(
                refund(&format!("outage-{n}"), &order_id, 100),
                TOKEN,
                None,
            )?)
            .await?;
    }
    gateway.terminate_cleanly().await?;
    let log = gateway.log_text();
    let failures = log.matches("trace export failing").count();
    ensure!(failures == 1, "{failures} outage lines:\n{log}");
    ensure!(
        !log.contains("BatchSpanProcessor"),
        "the SDK's own per-batch errors reached the log:\n{log}"
    );
    Ok(())
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf` exports over HTTP, with the service name and
/// resource attributes the standard variables give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_can_be_exported_over_http_with_the_standard_variables() -> anyhow::Result<()> {
    let sim = klarna_sim::spawn(SimConfig::default()).await?;
    let receiver = OtlpReceiver::start().await?;
    let order_id = captured_order(&sim);
    let endpoint = receiver.http_endpoint();
    let Started {
        mut client,
        // Kept: dropping the process kills it.
        gateway: _gateway,
        // Kept: the gateway's data directory.
        _work,
    } = start_gateway(
        "gateway over HTTP",
        klarna_env(&sim),
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("OTEL_SERVICE_NAME", "refunds-eu"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=staging",
            ),
        ],
    )
    .await?;
    let traceparent = caller_traceparent();
    client
        .get_order(call(
            GetOrderRequest {
                order_id,
                ..Default::default()
            },
            TOKEN,
            Some(&traceparent),
        )?)
        .await?;
    let spans = receiver
        .wait_for(|spans| {
            spans
                .iter()
                .any(|s| s.trace_id == TRACE_ID && s.kind == "server")
        })
        .await?;
    let server = spans
        .iter()
        .find(|s| s.trace_id == TRACE_ID && s.kind == "server")
        .ok_or_else(|| anyhow!("no RPC span"))?;
    ensure!(server.service_name == "refunds-eu", "{:?}", server.resource);
    ensure!(
        server
            .resource
            .get("deployment.environment.name")
            .map(String::as_str)
            == Some("staging"),
        "{:?}",
        server.resource
    );
    ensure!(attr(server, "rpc.method") == "GetOrder");
    Ok(())
}
