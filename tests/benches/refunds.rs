//! Refund throughput and latency: (a) a plain HTTP client straight to the Klarna simulator,
//! (b) a gRPC client through the gateway to the same simulator, with its durable operation
//! store on SQLite and (when the test PostgreSQL's URL is set) on PostgreSQL, at 10^4, 10^5
//! and 10^6 stored operations; each at 64 concurrent requests for 10 s, in one run, printed as
//! a table with the ratios.
//!
//! `cargo bench -p refund-gateway-tests --bench refunds [-- --seconds N --concurrency N]`.
//! Under `cargo test` (no `--bench` argument) it runs as a one-second smoke test, so CI checks
//! that it works without spending time measuring.
//!
//! Everything runs in this one process on the machine's cores: the load generator, the gateway
//! and the simulator share them, as they would on a single small host. The numbers are
//! comparisons between the two paths, not absolute capacities.

use std::sync::Arc;

use anyhow::Context;
use klarna_sim::{OrderSeed, SimConfig};
use refund_gateway_proto::v1 as pb;
use refund_gateway_proto::v1::refund_gateway_service_client::RefundGatewayServiceClient;
use refund_gateway_tests::load::{Run, drive, ms};
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

/// `--sizes N,N,…`: the numbers of stored operations to measure the durable paths at.
fn sizes_arg() -> anyhow::Result<Option<Vec<u64>>> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--sizes") {
        None => Ok(None),
        Some(i) => {
            let list = args.get(i + 1).context("--sizes N,N,...")?;
            Ok(Some(
                list.split(',').map(str::parse).collect::<Result<_, _>>()?,
            ))
        }
    }
}

/// Columns of a seeded operation.
macro_rules! seed_columns {
    () => {
        "operation_id, caller, rpc, idempotency_key, fingerprint, klarna_account, order_id, \
         amount, currency, reference, klarna_request, state, created_at, updated_at, refund_id, \
         response_code, response_message"
    };
}

/// Seeds rows ?1..=?2 of completed operations, created before ?3 (microseconds).
const SQLITE_SEED: &str = concat!(
    "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2) ",
    "INSERT INTO operations (",
    seed_columns!(),
    ") SELECT printf('%08x-0000-4000-8000-%012x', i, i), 'seed', 'RefundOrder', 'seed-' || i, ",
    "'f', 'default', printf('%08x-1111-4000-8000-000000000000', i % 100000), 100, 'SEK', 'r', ",
    "'{}', 'SUCCEEDED', ?3 - i, ?3 - i, 'refund', 0, '' FROM n"
);

/// The same for PostgreSQL.
const POSTGRES_SEED: &str = concat!(
    "INSERT INTO operations (",
    seed_columns!(),
    ") SELECT lpad(to_hex(i), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(i), 12, '0'), 'seed', ",
    "'RefundOrder', 'seed-' || i, 'f', 'default', ",
    "lpad(to_hex(i % 100000), 8, '0') || '-1111-4000-8000-000000000000', 100, 'SEK', 'r', '{}', ",
    "'SUCCEEDED', $3 - i, $3 - i, 'refund', 0, '' FROM generate_series($1::bigint, $2::bigint) AS i"
);

/// The store behind the gateway under measurement.
#[derive(Debug, Clone)]
enum Store {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Store {
    fn url(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite:{}", path.display()),
            Self::Postgres(url) => url.clone(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "SQLite",
            Self::Postgres(_) => "PostgreSQL",
        }
    }

    /// Adds completed operations with plain SQL until the table holds `target` rows, so the
    /// measurement sees a store of that size (rows seeded through the API would take hours).
    /// Seeded rows are SUCCEEDED and never read back by the measured path.
    async fn seed_to(&self, target: u64) -> anyhow::Result<()> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1_000_000;
        match self {
            Self::Sqlite(path) => {
                use sqlx::Connection;
                let mut db =
                    sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display())).await?;
                let have: i64 = sqlx::query_scalar("SELECT count(*) FROM operations")
                    .fetch_one(&mut db)
                    .await?;
                sqlx::query(SQLITE_SEED)
                    .bind(have + 1)
                    .bind(target as i64)
                    .bind(now)
                    .execute(&mut db)
                    .await?;
                // Fold the seed's WAL into the database now, so the measured run does not pay
                // for checkpointing rows it did not write.
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(&mut db)
                    .await?;
            }
            Self::Postgres(url) => {
                use sqlx::Connection;
                let mut db = sqlx::PgConnection::connect(url).await?;
                let have: i64 = sqlx::query_scalar("SELECT count(*) FROM operations")
                    .fetch_one(&mut db)
                    .await?;
                sqlx::query(POSTGRES_SEED)
                    .bind(have + 1)
                    .bind(target as i64)
                    .bind(now)
                    .execute(&mut db)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Refunds through the gateway: `concurrency` workers, one order each.
async fn through_gateway(
    s: Settings,
    app: &refund_gateway_tests::TestApp,
    label: &str,
) -> anyhow::Result<Run> {
    let orders: Arc<Vec<String>> = Arc::new((0..s.concurrency).map(|_| seed_order(app)).collect());
    let mut connected = Vec::new();
    for _ in 0..s.concurrency.div_ceil(16) {
        connected.push(
            tonic::transport::Channel::from_shared(app.grpc_url.clone())?
                .connect()
                .await?,
        );
    }
    let connected = Arc::new(connected);
    let label = label.to_owned();
    drive(s.concurrency, s.seconds, move |worker, n| {
        let mut client =
            RefundGatewayServiceClient::new(connected[worker % connected.len()].clone());
        let order_id = orders[worker].clone();
        let key = format!("bench-{label}-{worker}-{n}");
        async move {
            client
                .refund_order(pb::RefundOrderRequest {
                    idempotency_key: key,
                    order_id,
                    refunded_amount: 1,
                    ..Default::default()
                })
                .await?;
            Ok(())
        }
    })
    .await
}

/// An order captured far beyond what a run can refund, so no refund is refused.
fn seed_order(app: &refund_gateway_tests::TestApp) -> String {
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
}

async fn gateway(store: &Store) -> anyhow::Result<refund_gateway_tests::TestApp> {
    spawn_app_with(AppOptions {
        sim: SimConfig {
            request_log_capacity: 0,
            ..SimConfig::default()
        },
        no_log_capture: true,
        database_url: Some(store.url()),
        ..Default::default()
    })
    .await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let s = settings()?;
    let mut rows: Vec<(String, Run)> = Vec::new();

    // (a) Straight to the simulator: what a caller without the gateway would do.
    {
        let app = gateway(&Store::Sqlite(
            tempfile::tempdir()?.keep().join("direct.sqlite3"),
        ))
        .await?;
        let orders: Arc<Vec<String>> =
            Arc::new((0..s.concurrency).map(|_| seed_order(&app)).collect());
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(s.concurrency)
            .build()?;
        let base = app.sim.base_url.clone();
        let (user, password) = (app.sim.username().to_owned(), app.sim.password().to_owned());
        let run = drive(s.concurrency, s.seconds, move |worker, n| {
            let request = http
                .post(format!(
                    "{base}/ordermanagement/v1/orders/{}/refunds",
                    orders[worker]
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
        rows.push(("(a) HTTP client -> simulator".into(), run));
        app.shutdown().await?;
    }

    // (b) Through the gateway, durable: on SQLite, and on PostgreSQL when the test server's
    // URL is set, at growing numbers of stored operations. The smoke run measures one size.
    let default_sizes: &[u64] = if s.seconds < 5.0 {
        &[0]
    } else {
        &[10_000, 100_000, 1_000_000]
    };
    let sizes = sizes_arg()?.unwrap_or_else(|| default_sizes.to_vec());
    let dir = tempfile::tempdir()?;
    let mut stores = vec![Store::Sqlite(dir.path().join("bench.sqlite3"))];
    if s.seconds >= 5.0
        && let Some(url) = refund_gateway_tests::fresh_postgres_database()?
    {
        stores.push(Store::Postgres(url));
    }
    for store in &stores {
        let app = gateway(store).await?;
        for &size in &sizes {
            if size > 0 {
                store.seed_to(size).await?;
            }
            let label = format!("{}-{size}", store.name());
            let run = through_gateway(s, &app, &label).await?;
            rows.push((
                format!(
                    "(b) gRPC -> gateway ({}, {size} stored) -> simulator",
                    store.name()
                ),
                run,
            ));
        }
        app.shutdown().await?;
    }

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
    for (name, run) in &rows {
        println!(
            "| {name} | {:.0} | {} | {} | {} |",
            run.throughput(),
            ms(run.percentile(0.50)),
            ms(run.percentile(0.99)),
            run.errors
        );
    }
    let direct = &rows[0].1;
    for (name, run) in rows.iter().skip(1) {
        let ratio = run.throughput() / direct.throughput().max(f64::MIN_POSITIVE);
        let added_p50 = run.percentile(0.50).saturating_sub(direct.percentile(0.50));
        println!(
            "{name}: {ratio:.2}x of (a)'s throughput; added p50 {} ms",
            ms(added_p50)
        );
    }
    println!(
        "targets: (b) >= 0.5x (a); added p50 <= 0.3 ms; >= 5000 durable refunds/s on SQLite; \
         flat cost from 10^4 to 10^6 stored operations"
    );
    for (name, run) in &rows {
        anyhow::ensure!(run.errors == 0, "requests failed during {name}");
        anyhow::ensure!(
            !run.latencies.is_empty(),
            "no request completed during {name}"
        );
    }
    Ok(())
}
