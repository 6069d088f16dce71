//! Support shared by the tests that run the real `refund-gateway` binary: a running process
//! with its address and log lines, and the configuration it is started with.

// Each test binary includes this module and uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
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
                    if line.contains("refund gateway listening") {
                        let value: serde_json::Value =
                            serde_json::from_str(&line).unwrap_or_default();
                        if let (Some(tx), Some(addr)) =
                            (addr_tx.take(), value["grpc_addr"].as_str())
                        {
                            let _ = tx.send(addr.to_owned());
                        }
                    }
                    log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            })
        };
        let mut process = Self {
            name: name.to_owned(),
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
