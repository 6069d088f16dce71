//! Support shared by the tests that run the real `refund-gateway` binary: a running process
//! with its address and log lines, and the configuration it is started with.

// Each test binary includes this module and uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use klarna_sim::RunningSimulator;
use refund_gateway_proto::v1::refund_gateway_service_client::RefundGatewayServiceClient;
use tonic::transport::Channel;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_refund-gateway");

/// Upper bound of every wait on a condition; reaching it fails the test.
pub const WAIT_LIMIT: Duration = Duration::from_secs(30);

// The test suite's one bounded wait on a condition (`refund_gateway_tests::wait_until`),
// included from its source: that crate depends on this one, so this one cannot depend on it.
#[path = "../../../../tests/src/wait.rs"]
mod wait;

#[allow(unused_imports)] // not every test binary waits
pub use wait::wait_until;

pub mod otlp;

/// The gateway's gRPC client.
pub type Client = RefundGatewayServiceClient<Channel>;

/// A running `refund-gateway` process: its address, its log lines, and a SIGKILL on drop so a
/// failing test leaves no process behind (and prints the process's log).
#[derive(Debug)]
pub struct GatewayProcess {
    name: String,
    /// What it was started with, to start it again ([`GatewayProcess::kill_and_restart`]).
    config: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    grpc_addr: String,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl GatewayProcess {
    /// Starts the binary with `--config config` and only the given environment variables of
    /// ours (nothing Klarna-, gateway- or database-related is inherited), and waits until it
    /// logs that it listens.
    pub async fn start(name: &str, config: &Path, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(BIN);
        for (var, _) in std::env::vars() {
            if var.starts_with("KLARNA_")
                || var.starts_with("REFUND_GATEWAY_")
                || var == "DATABASE_URL"
            {
                cmd.env_remove(var);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .arg("--config")
            .arg(config)
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("spawning {BIN}"))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow!("{name}: no stderr pipe"))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel::<String>();
        let reader = {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut addr_tx = Some(addr_tx);
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let addr = if line.contains("refund gateway listening") {
                        let value: serde_json::Value =
                            serde_json::from_str(&line).unwrap_or_default();
                        value["grpc_addr"].as_str().map(str::to_owned)
                    } else {
                        None
                    };
                    // The line is in the log before `start` returns, so a test can read the
                    // listening line's other fields (the admin address) at once.
                    log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                    if let Some(addr) = addr
                        && let Some(tx) = addr_tx.take()
                    {
                        let _ = tx.send(addr);
                    }
                }
            })
        };
        let mut process = Self {
            name: name.to_owned(),
            config: config.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            child: Some(child),
            grpc_addr: String::new(),
            log,
            reader: Some(reader),
        };
        // The sender is dropped without sending when stderr closes first: the process died.
        match tokio::time::timeout(WAIT_LIMIT, addr_rx).await {
            Ok(Ok(addr)) => process.grpc_addr = addr,
            Ok(Err(_)) => bail!("{name} exited before listening:\n{}", process.log_text()),
            Err(_) => bail!(
                "{name} did not listen within {WAIT_LIMIT:?}:\n{}",
                process.log_text()
            ),
        }
        Ok(process)
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| anyhow!("{}: already exited", self.name))
    }

    /// The gRPC address it listens on (`HOST:PORT`).
    pub fn grpc_addr(&self) -> &str {
        &self.grpc_addr
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(RefundGatewayServiceClient::connect(format!("http://{}", self.grpc_addr)).await?)
    }

    pub fn log_text(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Sends `signal` (`KILL`, `TERM`) with kill(1).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid()?.to_string())
            .status()?;
        ensure!(status.success(), "kill -{signal} failed: {status}");
        Ok(())
    }

    /// Waits (bounded) for the process to exit and for its stderr to close; returns its exit
    /// status and log lines.
    pub async fn wait_exit(
        &mut self,
        limit: Duration,
    ) -> anyhow::Result<(ExitStatus, Vec<String>)> {
        let pid = self.pid()?;
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("{}: already exited", self.name))?;
        let waited =
            tokio::time::timeout(limit, tokio::task::spawn_blocking(move || child.wait())).await;
        let status = match waited {
            Ok(joined) => joined??,
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                bail!(
                    "{} did not exit within {limit:?}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
        };
        if let Some(reader) = self.reader.take() {
            reader
                .join()
                .map_err(|_| anyhow!("{}: stderr reader panicked", self.name))?;
        }
        let lines = self.log.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok((status, lines))
    }

    /// SIGKILLs the process, checks that it died of it, and starts it again with the same
    /// configuration and environment, so on the same data directory or database. The new
    /// process listens on a new port: [`GatewayProcess::grpc_addr`] changes.
    pub async fn kill_and_restart(&mut self) -> anyhow::Result<()> {
        self.signal("KILL")?;
        let (status, _) = self.wait_exit(WAIT_LIMIT).await?;
        ensure!(
            status.signal() == Some(9),
            "{}: expected death by SIGKILL, got {status:?}",
            self.name
        );
        let env: Vec<(&str, String)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        *self = Self::start(&self.name, &self.config, &env).await?;
        Ok(())
    }

    /// SIGTERM, then a bounded wait for a successful exit after draining.
    pub async fn terminate_cleanly(&mut self) -> anyhow::Result<()> {
        self.signal("TERM")?;
        let (status, lines) = self.wait_exit(Duration::from_secs(60)).await?;
        ensure!(
            status.success(),
            "{}: exit after SIGTERM: {status:?}\n{}",
            self.name,
            lines.join("\n")
        );
        ensure!(
            lines.iter().any(|l| l.contains("shutting down")),
            "{}: no shutdown line in {lines:?}",
            self.name
        );
        Ok(())
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.log_text());
        }
    }
}

/// Writes a gateway configuration into `dir` and returns its path. Both listeners take a free
/// loopback port, and authentication is off (allowed on loopback only); the lease and the
/// reconciler interval are short so a dead process's claim is taken over within about a
/// second.
pub fn write_config(dir: &Path, data_dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    write_config_with(
        dir,
        data_dir,
        "lease_secs = 1\nreconcile_interval_ms = 100\n",
    )
}

/// Like [`write_config`], with the default lease and reconciler interval (30 s and 10 s)
/// unless `extra` (TOML lines) sets them.
pub fn write_config_with(
    dir: &Path,
    data_dir: &Path,
    extra: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let data_dir = data_dir
        .to_str()
        .ok_or_else(|| anyhow!("data dir {} is not UTF-8", data_dir.display()))?;
    // A TOML basic string: escape what TOML escapes.
    let data_dir = data_dir.replace('\\', "\\\\").replace('"', "\\\"");
    let toml = format!(
        "listen = \"127.0.0.1:0\"\n\
         admin_listen = \"127.0.0.1:0\"\n\
         auth = \"none\"\n\
         data_dir = \"{data_dir}\"\n\
         {extra}"
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, toml)?;
    Ok(path)
}

/// `KLARNA_*` variables for the `default` account on the simulator.
pub fn klarna_env(sim: &RunningSimulator) -> Vec<(&'static str, String)> {
    vec![
        ("KLARNA_API_URL", sim.base_url.clone()),
        ("KLARNA_USERNAME", sim.username().to_owned()),
        ("KLARNA_PASSWORD", sim.password().to_owned()),
    ]
}

/// The admin URL of the test PostgreSQL server (`REFUND_GATEWAY_TEST_DATABASE_URL`), or `None`
/// (after printing the line the README's test command counts as a skipped test) when there is
/// none; under `CI=true` there must be.
pub fn postgres_admin_url() -> Option<String> {
    if let Some(url) = std::env::var("REFUND_GATEWAY_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        return Some(url);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "REFUND_GATEWAY_TEST_DATABASE_URL is not set; CI must run this test against \
             PostgreSQL (source scripts/postgres.sh && start_test_postgres)"
        );
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a PostgreSQL process test");
    // To the stderr handle itself, which libtest does not capture, in one write so that the
    // line is not interleaved with other output.
    let line = format!("SKIPPED (no PostgreSQL): {test}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    None
}

/// `url` with its database name replaced by `database` (query kept).
pub fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base
        .find("://")
        .map(|i| i + 3)
        .ok_or_else(|| anyhow!("not a URL: {url}"))?;
    let host_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..host_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

/// Runs one SQL statement with psql (on PATH, else Debian's /usr/bin/psql) and returns what it
/// prints (unaligned, tuples only), trimmed.
pub fn psql(url: &str, sql: &str) -> anyhow::Result<String> {
    let run = |program: &str| {
        Command::new(program)
            .arg(url)
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-At", "-c", sql])
            .output()
    };
    let out = match run("psql") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => run("/usr/bin/psql"),
        other => other,
    }
    .context("running psql")?;
    ensure!(
        out.status.success(),
        "psql {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A database of its own on the test PostgreSQL server, dropped (best effort: the server is a
/// throwaway one anyway) with this value.
#[derive(Debug)]
pub struct FreshDatabase {
    admin_url: String,
    name: String,
    /// Its URL.
    pub url: String,
}

impl FreshDatabase {
    /// Creates database `t_<random>` on the server of `admin_url`.
    pub fn create(admin_url: &str) -> anyhow::Result<Self> {
        let name = format!("t_{}", uuid_like_suffix());
        psql(admin_url, &format!("CREATE DATABASE {name}"))?;
        Ok(Self {
            url: with_database(admin_url, &name)?,
            admin_url: admin_url.to_owned(),
            name,
        })
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        let _ = psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// 32 hex digits unique to this process and call: process id, time and a counter.
fn uuid_like_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:08x}{:016x}{:08x}",
        std::process::id(),
        u64::try_from(nanos & u128::from(u64::MAX)).unwrap_or(0),
        n & 0xffff_ffff
    )
}
