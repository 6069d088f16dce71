//! The operator files in `deploy/` against the metrics the gateway exports: the Grafana
//! dashboard (`deploy/grafana/refund-gateway.json`) and the Prometheus alerts
//! (`deploy/prometheus/alerts.yml`) may only name metrics of [`KNOWN_METRICS`], histograms only
//! through their `_bucket`, `_sum` and `_count` series, and the dashboard charts every one of
//! them. The alerts' behaviour is tested by `promtool test rules` (`scripts/test`).
//!
//! Metric names are found without a regex: every word (ASCII letters, digits, `_`, `:`) that
//! starts with one of the gateway's metric prefixes is a metric name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context, bail, ensure};
use serde_json::Value;

/// Every metric the gateway exports. This list mirrors the metric list in README.md's
/// Observability section (a test keeps the two the same): a metric added, renamed or removed
/// changes both, and then this test says which dashboard panel or alert must follow.
const KNOWN_METRICS: &[&str] = &[
    "rpc_requests_total",
    "rpc_duration_seconds",
    "rpc_caller_rate_limited_total",
    "rpc_load_shed_total",
    "rpc_waiting",
    "klarna_attempts_total",
    "klarna_attempt_duration_seconds",
    "klarna_retries_total",
    "klarna_outbound_throttled_total",
    "operations_recorded_total",
    "operations_pending",
    "operations_pending_oldest_age_seconds",
    "operations_requires_review",
    "operations_in_flight",
    "reconciler_passes_total",
    "reconciler_resolutions_total",
    "webhook_deliveries_total",
    "store_batch_size",
    "store_commit_duration_seconds",
    "refund_gateway_build_info",
];

/// The histograms of [`KNOWN_METRICS`]: Prometheus stores them as `_bucket`, `_sum` and
/// `_count` series, and a query of the bare name finds nothing.
const HISTOGRAMS: &[&str] = &[
    "rpc_duration_seconds",
    "klarna_attempt_duration_seconds",
    "store_batch_size",
    "store_commit_duration_seconds",
];

/// A word starting with one of these is a metric name.
const METRIC_PREFIXES: &[&str] = &[
    "rpc_",
    "klarna_",
    "operations_",
    "reconciler_",
    "webhook_",
    "store_",
    "refund_gateway_",
];

const HISTOGRAM_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

fn repo_file(path: &str) -> anyhow::Result<String> {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read_to_string(&full).with_context(|| format!("reading {path}"))
}

fn dashboard() -> anyhow::Result<Value> {
    serde_json::from_str(&repo_file("deploy/grafana/refund-gateway.json")?)
        .context("deploy/grafana/refund-gateway.json is not JSON")
}

/// The metric-name words of `text`, in order of appearance (duplicates kept).
fn metric_words(text: &str) -> Vec<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| METRIC_PREFIXES.iter().any(|p| word.starts_with(p)))
        .collect()
}

/// How a metric-name word is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Usage {
    /// In a query: a histogram only by one of its series.
    Query,
    /// In prose (a description, a comment): a histogram by its name too.
    Prose,
}

/// The known metric `word` names (a histogram's series count as the histogram), or an error
/// saying what is wrong with it.
fn known_metric(word: &str, usage: Usage) -> Result<&'static str, String> {
    if let Some(&known) = KNOWN_METRICS.iter().find(|&&m| m == word) {
        if usage == Usage::Query && HISTOGRAMS.contains(&known) {
            return Err(format!(
                "{word} is a histogram: query its _bucket, _sum or _count series"
            ));
        }
        return Ok(known);
    }
    for suffix in HISTOGRAM_SUFFIXES {
        if let Some(base) = word.strip_suffix(suffix)
            && let Some(&histogram) = HISTOGRAMS.iter().find(|&&h| h == base)
        {
            return Ok(histogram);
        }
    }
    Err(format!("{word} is not a metric the gateway exports"))
}

/// Checks every metric name in `text`: adds the known metrics it names to `used`, and returns
/// a line per unknown or misused name, prefixed with `source`.
fn check_names(
    source: &str,
    text: &str,
    usage: Usage,
    used: &mut BTreeSet<&'static str>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for word in metric_words(text) {
        match known_metric(word, usage) {
            Ok(metric) => {
                used.insert(metric);
            }
            Err(problem) => problems.push(format!("{source}: {problem}")),
        }
    }
    problems
}

/// Every string of `value` with where it is (a JSON path such as `panels[3].targets[0].expr`).
fn strings<'a>(value: &'a Value, path: String, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::String(s) => out.push((path, s)),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                strings(item, format!("{path}[{i}]"), out);
            }
        }
        Value::Object(fields) => {
            for (key, item) in fields {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                strings(item, path, out);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Whether the string at `path` is PromQL: a target's `expr`, or a template variable's query.
fn is_query(path: &str) -> bool {
    path.ends_with(".expr")
        || (path.starts_with("templating.")
            && (path.ends_with(".definition") || path.ends_with(".query.query")))
}

/// The known metrics the dashboard's queries use; fails on any unknown or misused name,
/// in queries or in its prose (titles, descriptions).
fn dashboard_metrics(dashboard: &Value) -> anyhow::Result<BTreeSet<&'static str>> {
    let mut all = Vec::new();
    strings(dashboard, String::new(), &mut all);
    let mut queried = BTreeSet::new();
    let mut mentioned = BTreeSet::new();
    let mut problems = Vec::new();
    for (path, text) in all {
        if is_query(&path) {
            problems.extend(check_names(&path, text, Usage::Query, &mut queried));
        } else {
            problems.extend(check_names(&path, text, Usage::Prose, &mut mentioned));
        }
    }
    if !problems.is_empty() {
        bail!(
            "deploy/grafana/refund-gateway.json names metrics the gateway does not export \
             (see KNOWN_METRICS in crates/server/tests/deploy.rs):\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(queried)
}

#[test]
fn the_known_metric_lists_are_consistent() -> anyhow::Result<()> {
    let unique: BTreeSet<_> = KNOWN_METRICS.iter().collect();
    ensure!(
        unique.len() == KNOWN_METRICS.len(),
        "KNOWN_METRICS lists a metric twice"
    );
    for histogram in HISTOGRAMS {
        ensure!(
            KNOWN_METRICS.contains(histogram),
            "histogram {histogram} is not in KNOWN_METRICS"
        );
    }
    for metric in KNOWN_METRICS {
        ensure!(
            metric_words(metric) == [*metric],
            "{metric} does not start with one of METRIC_PREFIXES, so the scan would miss it"
        );
    }
    Ok(())
}

#[test]
fn the_dashboard_queries_every_known_metric_and_no_other() -> anyhow::Result<()> {
    let queried = dashboard_metrics(&dashboard()?)?;
    let missing: Vec<_> = KNOWN_METRICS
        .iter()
        .filter(|m| !queried.contains(*m))
        .collect();
    ensure!(
        missing.is_empty(),
        "no panel of deploy/grafana/refund-gateway.json queries {missing:?}"
    );
    Ok(())
}

#[test]
fn the_alerts_name_only_known_metrics() -> anyhow::Result<()> {
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/prometheus/alerts.test.yml",
    ] {
        let text = repo_file(file)?;
        let mut used = BTreeSet::new();
        let problems = check_names(file, &text, Usage::Prose, &mut used);
        ensure!(
            problems.is_empty(),
            "{file} names metrics the gateway does not export (see KNOWN_METRICS in \
             crates/server/tests/deploy.rs):\n  {}",
            problems.join("\n  ")
        );
        ensure!(!used.is_empty(), "{file}: no metric name found at all");
    }
    Ok(())
}

/// The check above is only worth something if it fails: a dashboard with a misspelt metric, a
/// metric the gateway does not export, or a histogram queried by its bare name is refused.
#[test]
fn a_dashboard_with_an_unknown_or_misused_metric_is_refused() -> anyhow::Result<()> {
    let original = repo_file("deploy/grafana/refund-gateway.json")?;
    for (from, to, expected) in [
        (
            "rpc_requests_total{",
            "rpc_request_total{",
            "rpc_request_total is not a metric",
        ),
        (
            "klarna_retries_total{",
            "klarna_retries_total_bucket{",
            "klarna_retries_total_bucket is not a metric",
        ),
        (
            "rpc_duration_seconds_bucket{",
            "rpc_duration_seconds{",
            "rpc_duration_seconds is a histogram",
        ),
        (
            "operations_pending{",
            "operations_queued{",
            "operations_queued is not a metric",
        ),
    ] {
        ensure!(original.contains(from), "the dashboard has no {from}");
        let changed: Value = serde_json::from_str(&original.replacen(from, to, 1))?;
        let error = dashboard_metrics(&changed)
            .err()
            .with_context(|| format!("a dashboard with {to} instead of {from} passed"))?;
        ensure!(
            error.to_string().contains(expected),
            "{from} -> {to}: {error}"
        );
    }
    Ok(())
}

#[test]
fn the_dashboard_is_importable() -> anyhow::Result<()> {
    let dashboard = dashboard()?;
    ensure!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion {}",
        dashboard["schemaVersion"]
    );
    // Import asks for the Prometheus data source named by `__inputs`.
    let inputs = dashboard["__inputs"].as_array().context("no __inputs")?;
    ensure!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS"
            && i["type"] == "datasource"
            && i["pluginId"] == "prometheus"),
        "__inputs has no Prometheus data source DS_PROMETHEUS: {inputs:?}"
    );
    ensure!(dashboard["id"].is_null(), "an exported dashboard has no id");

    let variables = dashboard["templating"]["list"]
        .as_array()
        .context("no templating.list")?;
    let names: BTreeSet<&str> = variables
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    ensure!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no Prometheus data source variable `datasource`"
    );

    let panels = dashboard["panels"].as_array().context("no panels")?;
    let mut ids = BTreeMap::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        let id = panel["id"].as_u64().context("a panel without id")?;
        if let Some(other) = ids.insert(id, title) {
            bail!("panels {other:?} and {title:?} share id {id}");
        }
        ensure!(
            panel["gridPos"]["w"].as_u64().is_some_and(|w| w <= 24),
            "{title}: gridPos {}",
            panel["gridPos"]
        );
        if panel["type"] == "row" {
            continue;
        }
        ensure!(
            panel["datasource"]["uid"] == "${datasource}",
            "{title}: data source {}",
            panel["datasource"]
        );
        let targets = panel["targets"]
            .as_array()
            .context("a panel without targets")?;
        ensure!(!targets.is_empty(), "{title}: no targets");
        for target in targets {
            let expr = target["expr"].as_str().context("a target without expr")?;
            ensure!(
                target["datasource"]["uid"] == "${datasource}",
                "{title}: target data source {}",
                target["datasource"]
            );
            // Every `$variable` (other than Grafana's own `$__…`) is one the dashboard defines.
            for used in expr.split('$').skip(1) {
                let name: String = used
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                ensure!(
                    name.starts_with("__") || names.contains(name.as_str()),
                    "{title}: ${name} is not a variable of the dashboard: {expr}"
                );
            }
        }
    }
    Ok(())
}

/// README's metric table (its Observability section) lists exactly [`KNOWN_METRICS`], each
/// with the type [`HISTOGRAMS`] says.
#[test]
fn the_readme_lists_the_known_metrics() -> anyhow::Result<()> {
    let readme = repo_file("README.md")?;
    let section = readme
        .split("\n## Observability\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .ok_or_else(|| anyhow::anyhow!("README.md has no Observability section"))?;
    let mut listed = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (Some(name), Some(kind)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let name = name.trim_matches('`');
        if !metric_words(name).contains(&name) {
            continue; // a span row
        }
        let histogram = HISTOGRAMS.contains(&name);
        ensure!(
            (*kind == "histogram") == histogram,
            "README says {name} is a {kind}"
        );
        listed.insert(name);
    }
    let known: BTreeSet<&str> = KNOWN_METRICS.iter().copied().collect();
    ensure!(
        listed == known,
        "README lists {:?}, the gateway exports {:?}",
        listed.difference(&known).collect::<Vec<_>>(),
        known.difference(&listed).collect::<Vec<_>>()
    );
    Ok(())
}
