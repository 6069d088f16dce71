//! `klarna-sim`: runs the Klarna Order Management simulator on its own.
//!
//! Logs the bound address (and the demo order ids with `--demo`) to stderr and stops on
//! Ctrl-C or SIGTERM.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use klarna_sim::{SimConfig, Simulator};

/// In-memory simulator of Klarna's Order Management API v1, with an admin API under /__admin/.
#[derive(Debug, Parser)]
#[command(name = "klarna-sim", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8089", env = "KLARNA_SIM_LISTEN")]
    listen: SocketAddr,
    /// API username accepted (HTTP Basic).
    #[arg(long, default_value = "sim-user", env = "KLARNA_SIM_USERNAME")]
    username: String,
    /// API password accepted (HTTP Basic).
    #[arg(long, default_value = "sim-password", env = "KLARNA_SIM_PASSWORD")]
    password: String,
    /// Klarna calls admitted per second; beyond that 429 TOO_MANY_REQUESTS. No limit if absent.
    #[arg(long, env = "KLARNA_SIM_RATE_LIMIT")]
    rate_limit: Option<u32>,
    /// How many calls the request log keeps (0 disables it).
    #[arg(
        long,
        default_value_t = 10_000,
        env = "KLARNA_SIM_REQUEST_LOG_CAPACITY"
    )]
    request_log_capacity: usize,
    /// Seed the fixed demo orders.
    #[arg(long)]
    demo: bool,
}

async fn shutdown_signal() {
    let ctrl_c = async {
        // If the handler cannot be installed, only SIGTERM (or killing) stops the process.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    eprintln!("klarna-sim: shutting down");
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let sim = Simulator::new(SimConfig {
        username: args.username,
        password: args.password,
        rate_limit_per_second: args.rate_limit,
        request_log_capacity: args.request_log_capacity,
    });
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("klarna-sim: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(args.listen);
    eprintln!("klarna-sim: listening on http://{addr} (admin API under /__admin/)");
    if args.demo {
        for seeded in sim.seed_demo_orders() {
            eprintln!(
                "klarna-sim: demo order {} captures [{}]",
                seeded.order_id,
                seeded.capture_ids.join(", ")
            );
        }
    }
    match sim.serve(listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("klarna-sim: server error: {e}");
            ExitCode::FAILURE
        }
    }
}
