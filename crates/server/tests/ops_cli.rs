//! `refund-gateway ops …` against a real gateway process: the operator's command line reads,
//! watches, refuses to settle and reconciles the refund a caller made, and prints refusals
//! with their gRPC code and details.

mod common;

use std::process::{Command, Output};

use anyhow::{Context, anyhow, ensure};
use klarna_sim::{FaultKind, FaultSpec, OrderSeed, SimConfig};
use refund_gateway_proto::v1::RefundOrderRequest;

use common::{BIN, GatewayProcess, klarna_env, write_config_with};

/// The result of `refund-gateway ops --addr <addr> <args>`, with no Klarna or gateway
/// variables inherited (REFUND_GATEWAY_ADDR, REFUND_GATEWAY_TOKEN among them).
async fn ops(addr: &str, args: &[&str]) -> anyhow::Result<Run> {
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("KLARNA_") || name.starts_with("REFUND_GATEWAY_") {
            cmd.env_remove(name);
        }
    }
    cmd.args(["ops", "--addr", addr]).args(args);
    let line = format!("ops {}", args.join(" "));
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .with_context(|| format!("running {BIN}"))?;
    Ok(Run { line, output })
}

/// One run of the command line.
struct Run {
    line: String,
    output: Output,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Its stdout, after checking that it exited 0.
    fn succeeded(&self) -> anyhow::Result<String> {
        ensure!(
            self.output.status.success(),
            "`{}` failed ({}):\n{}",
            self.line,
            self.output.status,
            self.stderr()
        );
        Ok(self.stdout())
    }

    /// Its stderr, after checking that it exited non-zero and printed nothing on stdout.
    fn failed(&self) -> anyhow::Result<String> {
        ensure!(
            !self.output.status.success(),
            "`{}` succeeded:\n{}",
            self.line,
            self.stdout()
        );
        ensure!(
            self.output.stdout.is_empty(),
            "`{}`: {}",
            self.line,
            self.stdout()
        );
        Ok(self.stderr())
    }
}

fn json(line: &str) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(line).map_err(|e| anyhow!("not one JSON object ({e}): {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_read_watch_settle_and_reconcile_from_the_command_line() -> anyhow::Result<()> {
    const KEY: &str = "ops-cli-1";

    let sim = klarna_sim::spawn(SimConfig::default()).await?;
    let order_id = sim
        .sim
        .seed_order(OrderSeed {
            order_amount: 10_000,
            captures: vec![10_000],
            ..Default::default()
        })
        .order_id;
    let work = tempfile::tempdir()?;
    // Authentication off: the anonymous caller may use every RPC, the operator's included.
    let config = write_config_with(work.path(), &work.path().join("data"), "")?;
    let gateway = GatewayProcess::start("gateway", &config, &klarna_env(&sim)).await?;
    let addr = gateway.grpc_addr().to_owned();
    let refund = gateway
        .client()
        .await?
        .refund_order(RefundOrderRequest {
            idempotency_key: KEY.into(),
            order_id: order_id.clone(),
            refunded_amount: 2_500,
            ..Default::default()
        })
        .await?
        .into_inner();
    let id = refund.operation_id.as_str();

    // By RPC and key: the operation's row, then its audit events.
    let table = ops(&addr, &["show", "--rpc", "RefundOrder", "--key", KEY])
        .await?
        .succeeded()?;
    let row = table
        .lines()
        .find(|l| l.starts_with(id))
        .ok_or_else(|| anyhow!("no row for {id}:\n{table}"))?;
    for text in ["SUCCEEDED", "RefundOrder", KEY, "2500", order_id.as_str()] {
        ensure!(row.contains(text), "{text} missing from {row:?}");
    }
    ensure!(table.contains("IN_FLIGHT"), "no audit events:\n{table}");

    // By id, as JSON: one object, `--json` after the command as well as before it.
    for args in [&["--json", "show", id][..], &["show", id, "--json"]] {
        let out = ops(&addr, args).await?.succeeded()?;
        let lines: Vec<&str> = out.lines().collect();
        ensure!(lines.len() == 1, "not one line: {out}");
        let record = json(lines[0])?;
        ensure!(record["state"] == "SUCCEEDED", "{record}");
        ensure!(record["operation_id"] == id, "{record}");
        ensure!(record["amount"] == 2_500, "{record}");
        ensure!(record["refund_id"] == refund.refund_id.as_str(), "{record}");
        ensure!(record["events"].as_array().is_some_and(|e| !e.is_empty()));
    }

    // A final operation: the watch prints it once and ends.
    let out = ops(&addr, &["--json", "watch", id, "--timeout", "30s"])
        .await?
        .succeeded()?;
    let lines: Vec<&str> = out.lines().collect();
    ensure!(lines.len() == 1, "not one record: {out}");
    ensure!(json(lines[0])?["state"] == "SUCCEEDED", "{out}");

    // Nothing needs attention.
    let out = ops(&addr, &["attention"]).await?.succeeded()?;
    ensure!(
        out == "PENDING for longer than 5m: none\nREQUIRES_REVIEW: none\n",
        "{out}"
    );
    let report = json(
        ops(
            &addr,
            &["--json", "attention", "--pending-older-than", "90s"],
        )
        .await?
        .succeeded()?
        .trim_end(),
    )?;
    ensure!(
        report["pending"] == serde_json::json!([])
            && report["requires_review"] == serde_json::json!([]),
        "{report}"
    );

    // Only a REQUIRES_REVIEW operation can be settled by hand.
    let stderr = ops(
        &addr,
        &["resolve", id, "--outcome", "failed", "--reason", "x"],
    )
    .await?
    .failed()?;
    ensure!(
        stderr.starts_with(&format!(
            "error: FAILED_PRECONDITION OPERATION_NOT_IN_REVIEW: operation {id} is SUCCEEDED, \
             not REQUIRES_REVIEW"
        )),
        "{stderr}"
    );
    ensure!(stderr.contains(id), "{stderr}");

    // The gateway's refusal, with its field violation.
    let stderr = ops(&addr, &["show", "not-a-uuid"]).await?.failed()?;
    ensure!(stderr.starts_with("error: INVALID_ARGUMENT: "), "{stderr}");
    ensure!(stderr.contains("\n  operation_id: "), "{stderr}");

    // The refund is on both sides with the same amount.
    let out = ops(&addr, &["reconcile", "--account", "default"])
        .await?
        .succeeded()?;
    ensure!(
        out == "account: default\noperations checked: 1\n\
                orders/transactions read from Klarna: 1\nmismatches: none\n",
        "{out}"
    );
    let report = json(
        ops(&addr, &["--json", "reconcile", "--account", "default"])
            .await?
            .succeeded()?
            .trim_end(),
    )?;
    ensure!(report["mismatches"] == serde_json::json!([]), "{report}");
    ensure!(report["operations_checked"] == 1, "{report}");

    // Klarna no longer shows the order: the report is printed, and the exit status says it
    // is not clean, for a scheduled run to alert on.
    sim.sim.inject_fault(FaultSpec {
        method: Some("GET".into()),
        path: format!("/ordermanagement/v1/orders/{order_id}"),
        times: 100,
        kind: FaultKind::Status {
            status: 404,
            body: None,
            retry_after_secs: None,
        },
    });
    let run = ops(&addr, &["reconcile", "--account", "default"]).await?;
    let (out, stderr) = (run.stdout(), run.stderr());
    ensure!(run.output.status.code() == Some(3), "{out}{stderr}");
    ensure!(
        out.starts_with("account: default\noperations checked: 1\n"),
        "{out}"
    );
    ensure!(out.contains(order_id.as_str()), "{out}");
    ensure!(
        stderr.starts_with("error: the reconciliation is not clean: "),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn usage_errors_and_an_unreachable_gateway_fail_without_a_server() -> anyhow::Result<()> {
    // Nothing listens on the discard port of loopback.
    let stderr = ops("127.0.0.1:9", &["attention"]).await?.failed()?;
    ensure!(
        stderr.starts_with("error: cannot connect to http://127.0.0.1:9"),
        "{stderr}"
    );
    let run = ops("127.0.0.1:9", &["show"]).await?;
    let stderr = run.failed()?;
    ensure!(run.output.status.code() == Some(2), "{stderr}");
    let run = ops(
        "127.0.0.1:9",
        &["--cert", "c.pem", "--key", "k.pem", "attention"],
    )
    .await?;
    let stderr = run.failed()?;
    ensure!(
        run.output.status.code() == Some(2) && stderr.contains("--ca-file"),
        "{stderr}"
    );
    Ok(())
}
