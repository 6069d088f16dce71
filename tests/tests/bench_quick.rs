//! The load benchmark (`src/bin/bench.rs`) in its `--quick` mode, so that it cannot rot: the
//! debug `refund-gateway` and `klarna-sim` binaries as processes of their own, every path
//! (PostgreSQL's when `REFUND_GATEWAY_TEST_DATABASE_URL` is set), a few seconds in all. The
//! bench itself fails on a run without successful calls or with a failed one; this test also
//! reads back the JSON and the SVG it wrote.
//!
//! The two binaries belong to other packages of the workspace, so Cargo does not build them
//! for this test alone: the test command (`cargo test --workspace --all-targets`) does. They
//! are looked for in the directory of the bench's executable (`target/debug/`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};

/// A binary of the workspace next to the bench's executable, or an error saying how to build
/// it.
fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let bench = Path::new(env!("CARGO_BIN_EXE_bench"));
    let dir = bench
        .parent()
        .context("the bench executable has no directory")?;
    let path = dir.join(name);
    ensure!(
        path.is_file(),
        "no {name} binary at {}: build it first (`cargo build -p {name}`; the test command \
         `cargo test --workspace --all-targets` builds every binary)",
        path.display()
    );
    Ok(path)
}

#[test]
fn the_benchmark_runs_in_its_quick_mode_and_reports_sane_figures() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let json = out.path().join("bench.json");
    let svg = out.path().join("latency.svg");
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("--quick")
        .arg("--gateway")
        .arg(workspace_binary("refund-gateway")?)
        .arg("--simulator")
        .arg(workspace_binary("klarna-sim")?)
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .context("running the bench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "the bench failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    println!("{stdout}");

    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    let runs = report["runs"].as_array().context("no runs in the JSON")?;
    for path in ["a", "b", "b+otlp", "d"] {
        ensure!(
            runs.iter().any(|r| r["path"] == path),
            "no run of path {path} in {report:#}"
        );
    }
    for kind in ["closed", "open", "rss", "size"] {
        ensure!(
            runs.iter().any(|r| r["kind"] == kind),
            "no {kind} run in {report:#}"
        );
    }
    for run in runs {
        ensure!(run["throughput"].as_f64().unwrap_or(0.0) > 0.0, "{run:#}");
        ensure!(run["completed"].as_u64().unwrap_or(0) > 0, "{run:#}");
        ensure!(run["errors"].as_u64() == Some(0), "{run:#}");
        ensure!(run["p50_us"].as_f64().unwrap_or(0.0) > 0.0, "{run:#}");
        ensure!(
            run["p50_us"].as_f64() <= run["p99_us"].as_f64(),
            "percentiles out of order: {run:#}"
        );
        if run["path"] == "b" || run["path"] == "c" {
            ensure!(
                run["gateway_peak_rss_mib"].as_f64().unwrap_or(0.0) > 1.0,
                "no gateway RSS: {run:#}"
            );
            ensure!(
                run["cpu_us_per_op"]["gateway"].as_f64().is_some(),
                "no gateway CPU: {run:#}"
            );
            // Every refund writes its answer and its log line; on SQLite also the WAL pages
            // of its claim and its outcome, a 4 KiB page at least.
            let least = if run["path"] == "b" { 4.0 } else { 0.0 };
            ensure!(
                run["gateway_written_kib_per_op"].as_f64().unwrap_or(0.0) > least,
                "the gateway wrote too little: {run:#}"
            );
        }
    }
    let traced = report["variants"]
        .as_array()
        .context("no variants in the JSON")?
        .iter()
        .find(|v| v["path"] == "b+otlp")
        .context("no tracing variant in the JSON")?;
    ensure!(
        traced["spans_per_refund"].as_f64().unwrap_or(0.0) > 0.0,
        "no span reached the sink: {traced:#}"
    );
    let plot = std::fs::read_to_string(&svg)?;
    ensure!(plot.contains("<svg") && plot.contains("p99"), "{plot}");
    Ok(())
}
