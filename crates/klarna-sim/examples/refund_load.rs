//! Rough throughput check: 64 concurrent HTTP/1.1 clients posting keyed refunds to an
//! in-process simulator for a few seconds (client and server share the machine's cores).
//!
//! `cargo run --release -p klarna-sim --example refund_load [seconds] [log capacity]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use klarna_sim::{OrderSeed, SimConfig, spawn};

const CONNECTIONS: usize = 64;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map_or(5, |s| s.parse().expect("seconds"));
    let log_capacity: usize = args.next().map_or(0, |s| s.parse().expect("log capacity"));
    let running = spawn(SimConfig {
        request_log_capacity: log_capacity,
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts");
    let orders: Vec<String> = (0..CONNECTIONS)
        .map(|_| {
            running
                .sim
                .seed_order(OrderSeed {
                    order_amount: 1_000_000_000,
                    captures: vec![1_000_000_000],
                    ..Default::default()
                })
                .order_id
        })
        .collect();
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (i, order_id) in orders.into_iter().enumerate() {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .unwrap();
        let url = format!(
            "{}/ordermanagement/v1/orders/{order_id}/refunds",
            running.base_url
        );
        let (done, failed) = (Arc::clone(&done), Arc::clone(&failed));
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let response = client
                    .post(&url)
                    .basic_auth("sim-user", Some("sim-password"))
                    .header("Klarna-Idempotency-Key", format!("{i}-{n}"))
                    .header("content-type", "application/json")
                    .body(r#"{"refunded_amount": 1, "reference": "load"}"#)
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status() == 201 => done.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let ok = done.load(Ordering::Relaxed);
    println!(
        "{ok} refunds in {seconds} s = {} /s ({} failed, log capacity {log_capacity})",
        ok / seconds,
        failed.load(Ordering::Relaxed)
    );
}
