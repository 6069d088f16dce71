//! Programs of the workspace run as processes of their own, as a user runs them, for the
//! benchmarks: [`GatewayProcess`] (the `refund-gateway` binary with a callers file, a bearer
//! token, JSON logs at the default level and a durable store), [`SimulatorProcess`] (the
//! `klarna-sim` binary, seeded over its admin HTTP API) and any other [`ChildProcess`], plus
//! what `/proc` says about a process: [`cpu_time`] ([`cpu_times`]), [`context_switches`],
//! [`written_bytes`],
//! [`peak_rss_bytes`] and [`reset_peak_rss`]. Linux only (`/proc`, `kill(1)`, `getconf(1)`).
//!
//! Every process's stderr is a pipe drained by a thread of its own: a pipe nobody reads fills
//! up and then blocks the writer's logging, and with it its requests. The last lines are kept
//! for error messages. A process is killed (and reaped) on drop, so a failed run leaves none
//! behind.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use sha2::Digest;

/// How long a process may take to say that it listens, and to exit after SIGTERM.
pub const PROCESS_LIMIT: Duration = Duration::from_secs(60);

/// Lines of a process's stderr kept for error messages (the rest are read and dropped).
const LOG_TAIL: usize = 200;

/// Environment variables a child must not inherit from the shell: the bench decides Klarna,
/// the store, tracing and logging, and the shell's settings of any of them would make runs
/// differ in more than what is measured.
fn is_ours(name: &str) -> bool {
    ["KLARNA_", "REFUND_GATEWAY_", "OTEL_"]
        .iter()
        .any(|p| name.starts_with(p))
        || ["DATABASE_URL", "REDIS_URL", "RUST_LOG"].contains(&name)
}

/// A program started with its stderr piped and drained; killed (and reaped) on drop.
#[derive(Debug)]
pub struct ChildProcess {
    /// What it is, for messages.
    name: String,
    child: Option<Child>,
    pid: u32,
    /// The last [`LOG_TAIL`] lines it wrote to stderr.
    log: Arc<Mutex<VecDeque<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ChildProcess {
    /// Starts `cmd` (its stdin and stdout null, its stderr piped) and waits until `ready`
    /// returns `Some` for a line of its stderr; returns the process and that value (an
    /// address, typically). Fails when the process exits first or takes longer than
    /// [`PROCESS_LIMIT`].
    pub async fn start<R>(name: &str, mut cmd: Command, ready: R) -> anyhow::Result<(Self, String)>
    where
        R: Fn(&str) -> Option<String> + Send + 'static,
    {
        for (var, _) in std::env::vars_os() {
            if is_ours(&var.to_string_lossy()) {
                cmd.env_remove(&var);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        let pid = child.id();
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let log = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL)));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<String>();
        let reader = {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut ready_tx = Some(ready_tx);
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let value = ready_tx.as_ref().and_then(|_| ready(&line));
                    // The line is in the log before `start` returns.
                    {
                        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                        if log.len() == LOG_TAIL {
                            log.pop_front();
                        }
                        log.push_back(line);
                    }
                    if let Some(value) = value
                        && let Some(tx) = ready_tx.take()
                    {
                        let _ = tx.send(value);
                    }
                }
            })
        };
        let process = Self {
            name: name.to_owned(),
            child: Some(child),
            pid,
            log,
            reader: Some(reader),
        };
        // The sender is dropped unsent when stderr closes first: the process died.
        match tokio::time::timeout(PROCESS_LIMIT, ready_rx).await {
            Ok(Ok(value)) => Ok((process, value)),
            Ok(Err(_)) => bail!("{name} exited before it was ready:\n{}", process.log()),
            Err(_) => bail!(
                "{name} was not ready within {PROCESS_LIMIT:?}:\n{}",
                process.log()
            ),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The last lines it wrote to stderr.
    pub fn log(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        Vec::from(log.clone()).join("\n")
    }

    /// SIGTERM (with kill(1)), then a bounded wait for a clean exit (which flushes, for
    /// instance, the spans the gateway still has queued for export). Returns the last lines
    /// it wrote, all of them read.
    pub async fn stop(mut self) -> anyhow::Result<String> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()?;
        ensure!(status.success(), "kill -TERM {} failed: {status}", self.pid);
        let mut child = self
            .child
            .take()
            .with_context(|| format!("{} was already stopped", self.name))?;
        let waited: Result<std::io::Result<ExitStatus>, _> = tokio::time::timeout(
            PROCESS_LIMIT,
            tokio::task::spawn_blocking(move || child.wait()),
        )
        .await
        .map_err(|_| {
            anyhow!(
                "{} did not exit within {PROCESS_LIMIT:?} of SIGTERM",
                self.name
            )
        })?;
        let status = waited??;
        if let Some(reader) = self.reader.take() {
            reader
                .join()
                .map_err(|_| anyhow!("the stderr reader of {} panicked", self.name))?;
        }
        ensure!(
            status.success(),
            "{} exited with {status} after SIGTERM:\n{}",
            self.name,
            self.log()
        );
        Ok(self.log())
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Where the gateway sends its Klarna calls: an Order Management account.
#[derive(Debug, Clone)]
pub struct KlarnaTarget {
    /// `http://host:port` of the simulator (or of Klarna).
    pub base_url: String,
    /// HTTP Basic username.
    pub username: String,
    /// HTTP Basic password.
    pub password: String,
}

/// The files of a gateway that outlive one process of it, so it can be stopped and started
/// again on the same store: a configuration file, a callers file with one caller allowed
/// everything, whose bearer token is [`GatewayHome::token`], and the data directory of its
/// SQLite store. Removed on drop.
#[derive(Debug)]
pub struct GatewayHome {
    dir: tempfile::TempDir,
    config: PathBuf,
    token: String,
}

impl GatewayHome {
    /// A fresh home whose one caller, `bench`, holds `token`.
    pub fn new(token: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let callers = dir.path().join("callers.toml");
        let token_sha256: String = sha2::Sha256::digest(token.as_bytes())
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
        Ok(Self {
            dir,
            config,
            token: token.to_owned(),
        })
    }

    /// The bearer token of its caller.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The gateway's SQLite file (when it runs without `DATABASE_URL`); it exists once a
    /// gateway has started.
    pub fn sqlite_file(&self) -> PathBuf {
        self.dir
            .path()
            .join("data")
            .join(refund_gateway_store::config::SQLITE_FILE_NAME)
    }
}

/// How to start a [`GatewayProcess`].
#[derive(Debug, Clone)]
pub struct GatewaySpec {
    /// The `refund-gateway` binary.
    pub binary: PathBuf,
    /// Its `default` Order Management account.
    pub klarna: KlarnaTarget,
    /// `DATABASE_URL` (PostgreSQL); `None` for SQLite in the home's data directory.
    pub database_url: Option<String>,
    /// More environment variables (`OTEL_*`, say).
    pub env: Vec<(String, String)>,
}

/// A running `refund-gateway` process: production logging (JSON at the default level, on
/// stderr, drained), authentication by the callers file of its [`GatewayHome`], a durable
/// store, and nothing from the shell's environment that would change what it does.
#[derive(Debug)]
pub struct GatewayProcess {
    process: ChildProcess,
    /// `http://host:port` of its gRPC listener.
    pub grpc_url: String,
}

impl GatewayProcess {
    /// Starts the gateway of `spec` in `home` and waits until it logs that it listens.
    pub async fn start(spec: &GatewaySpec, home: &GatewayHome) -> anyhow::Result<Self> {
        let mut cmd = Command::new(&spec.binary);
        cmd.env("KLARNA_API_URL", &spec.klarna.base_url)
            .env("KLARNA_USERNAME", &spec.klarna.username)
            .env("KLARNA_PASSWORD", &spec.klarna.password)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .arg("--config")
            .arg(&home.config)
            .args(["--log-format", "json"]);
        if let Some(url) = &spec.database_url {
            cmd.env("DATABASE_URL", url);
        }
        let (process, addr) = ChildProcess::start("the gateway", cmd, |line| {
            if !line.contains("refund gateway listening") {
                return None;
            }
            let value: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            value["grpc_addr"].as_str().map(str::to_owned)
        })
        .await
        .with_context(|| format!("starting {}", spec.binary.display()))?;
        Ok(Self {
            process,
            grpc_url: format!("http://{addr}"),
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The last lines it logged.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// SIGTERM and a bounded wait for a clean exit.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.process.stop().await.map(drop)
    }
}

/// A running `klarna-sim` process on a free loopback port, its request log off (it is for
/// tests, and would cost the process memory and CPU under load).
#[derive(Debug)]
pub struct SimulatorProcess {
    process: ChildProcess,
    /// `http://host:port`.
    pub base_url: String,
    /// The Order Management credentials it accepts.
    pub klarna: KlarnaTarget,
    /// A client for the admin API.
    admin: reqwest::Client,
}

impl SimulatorProcess {
    /// The credentials the bench's simulators accept.
    const USERNAME: &str = "bench-user";
    const PASSWORD: &str = "bench-password";

    /// Starts `binary` and waits until it says where it listens.
    pub async fn start(binary: &Path) -> anyhow::Result<Self> {
        let mut cmd = Command::new(binary);
        // Its flags have `KLARNA_SIM_*` defaults: the shell's must not apply.
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("KLARNA_SIM_") {
                cmd.env_remove(&var);
            }
        }
        cmd.args(["--listen", "127.0.0.1:0", "--request-log-capacity", "0"])
            .args(["--username", Self::USERNAME, "--password", Self::PASSWORD]);
        let (process, base_url) = ChildProcess::start("the simulator", cmd, |line| {
            // `klarna-sim: listening on http://127.0.0.1:PORT (admin API under /__admin/)`
            let rest = line.strip_prefix("klarna-sim: listening on ")?;
            rest.split_whitespace().next().map(str::to_owned)
        })
        .await
        .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            process,
            klarna: KlarnaTarget {
                base_url: base_url.clone(),
                username: Self::USERNAME.to_owned(),
                password: Self::PASSWORD.to_owned(),
            },
            base_url,
            admin: reqwest::Client::new(),
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Seeds `count` orders over the admin API (`POST /__admin/orders`), each captured far
    /// beyond what a run refunds (1 minor unit per refund), so that no refund is refused for
    /// the amount; returns their ids.
    pub async fn seed_orders(&self, count: usize) -> anyhow::Result<Vec<String>> {
        // A few at a time: seeding thousands one after another would take seconds.
        const PARALLEL: usize = 16;
        let url = format!("{}/__admin/orders", self.base_url);
        let seed = serde_json::json!({
            "order_amount": 1_000_000_000_000_i64,
            "captures": [1_000_000_000_000_i64],
        });
        let mut ids = Vec::with_capacity(count);
        let mut tasks = tokio::task::JoinSet::new();
        let mut started = 0;
        while ids.len() < count {
            while started < count && tasks.len() < PARALLEL {
                let request = self.admin.post(&url).json(&seed);
                tasks.spawn(async move {
                    let response = request.send().await?;
                    let status = response.status();
                    let body: serde_json::Value = response.json().await?;
                    ensure!(status.is_success(), "seeding an order: {status} {body}");
                    body["order_id"]
                        .as_str()
                        .map(str::to_owned)
                        .context("no order_id in the seeded order")
                });
                started += 1;
            }
            match tasks.join_next().await {
                Some(id) => ids.push(id??),
                None => bail!("seeding tasks ended early"),
            }
        }
        Ok(ids)
    }

    /// SIGTERM and a bounded wait for a clean exit.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.process.stop().await.map(drop)
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

/// Clock ticks per second of `/proc/<pid>/stat`, from `getconf CLK_TCK` (100, the value on
/// every Linux this runs on, when that cannot be run; `sysconf` itself would need `unsafe`,
/// which the workspace forbids). Asked once.
pub fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&ticks| ticks > 0)
            .unwrap_or(100)
    })
}

/// CPU time process `pid` has used so far, user and system (fields 14 and 15 of
/// `/proc/<pid>/stat`), at the resolution of a clock tick (10 ms, usually): measure over
/// seconds, not over one call.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let (user, system) = cpu_times(pid)?;
    Ok(user + system)
}

/// [`cpu_time`] in its two parts: in user space, and in the kernel on the process's behalf
/// (system calls: writes, `fsync`, waking and parking threads, the network).
pub fn cpu_times(pid: u32) -> anyhow::Result<(Duration, Duration)> {
    let stat = ProcStat::read(pid)?;
    Ok((ticks(stat.field(14)?), ticks(stat.field(15)?)))
}

/// CPU time used so far by process `pid` and its children, the living ones and those it has
/// reaped (fields 16 and 17 of its `/proc/<pid>/stat`): a server that forks a process per
/// connection (PostgreSQL's postmaster), whose connections come and go. A child that exits
/// between the listing and the read, and before its parent reaps it, is missed.
pub fn process_tree_cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let own = ProcStat::read(pid)?;
    let mut total = (14..=17).try_fold(0, |sum, n| Ok::<_, anyhow::Error>(sum + own.field(n)?))?;
    let processes = std::fs::read_dir("/proc").context("reading /proc (Linux only)")?;
    for entry in processes {
        let Some(child) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = ProcStat::read(child) else {
            continue;
        };
        if stat.field(4)? == u64::from(pid) {
            total +=
                (14..=17).try_fold(0, |sum, n| Ok::<_, anyhow::Error>(sum + stat.field(n)?))?;
        }
    }
    Ok(ticks(total))
}

/// The pid of the parent of `pid` when both are processes named `name` on this machine
/// (`/proc/<pid>/comm`): a PostgreSQL backend's postmaster, say. `None` when `pid` is not a
/// process here (a server on another machine, or in another pid namespace) or the names
/// differ.
pub fn parent_of_same_name(pid: u32, name: &str) -> Option<u32> {
    let comm = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok();
    if comm(pid)?.trim() != name {
        return None;
    }
    let parent = u32::try_from(ProcStat::read(pid).ok()?.field(4).ok()?).ok()?;
    (comm(parent)?.trim() == name).then_some(parent)
}

/// The fields of `/proc/<pid>/stat`, numbered from 1 as in proc(5).
struct ProcStat {
    pid: u32,
    /// Fields 3 onwards.
    fields: Vec<String>,
}

impl ProcStat {
    fn read(pid: u32) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat (Linux only)"))?;
        // Field 2, the command name, is in parentheses and may hold spaces: count fields
        // from the last `)`, after which field 3 comes.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .context("unexpected /proc/<pid>/stat")?;
        let fields = rest.split_whitespace().map(str::to_owned).collect();
        Ok(Self { pid, fields })
    }

    /// Field `n` (at least 3) as a number.
    fn field(&self, n: usize) -> anyhow::Result<u64> {
        let pid = self.pid;
        Ok(self
            .fields
            .get(n - 3)
            .with_context(|| format!("no field {n} in /proc/{pid}/stat"))?
            .parse()?)
    }
}

/// `n` clock ticks as a duration.
fn ticks(n: u64) -> Duration {
    let per_second = clock_ticks_per_second();
    Duration::from_secs(n / per_second)
        + Duration::from_nanos((n % per_second) * 1_000_000_000 / per_second)
}

/// Context switches of all the threads of process `pid` so far, voluntary (a thread that
/// waits: parks, blocks in `epoll`, `futex`, `fsync`) and not (preempted): the sums over
/// `/proc/<pid>/task/*/status`. A thread that has exited is no longer counted, so measure
/// over a stretch in which the process keeps its threads (a server's workers).
pub fn context_switches(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("reading /proc/{pid}/task (Linux only)"))?;
    for task in tasks {
        // A thread may exit between the listing and the read: it is then not counted.
        let Ok(status) = std::fs::read_to_string(task?.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            if let Some(rest) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += rest.trim().parse::<u64>()?;
            }
        }
    }
    Ok(total)
}

/// The bytes process `pid` has handed to `write`-family system calls so far (`wchar` of
/// `/proc/<pid>/io`): its WAL and database pages, its sockets' `write`s and `writev`s, its
/// log lines. A count, not a time: unlike CPU figures it does not move with the machine's
/// load, so a change in what the store writes per call shows in it run after run.
pub fn written_bytes(pid: u32) -> anyhow::Result<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .with_context(|| format!("reading /proc/{pid}/io (Linux only)"))?;
    io.lines()
        .find_map(|line| line.strip_prefix("wchar:"))
        .context("no wchar in /proc/<pid>/io")?
        .trim()
        .parse()
        .context("wchar in /proc/<pid>/io")
}

/// The peak resident set size of process `pid` in bytes (`VmHWM` of `/proc/<pid>/status`):
/// the most memory it has held at once since it started, or since [`reset_peak_rss`].
pub fn peak_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (Linux only)"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .context("no VmHWM in /proc/<pid>/status")?
        .parse()?;
    Ok(kib * 1024)
}

/// Sets the peak resident set size of process `pid` back to its current one (`5` written to
/// `/proc/<pid>/clear_refs`), so that [`peak_rss_bytes`] afterwards is the peak of what
/// follows. Needs the right to trace the process (our own children: yes).
pub fn reset_peak_rss(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of process {pid}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A child's CPU stays in its parent's tree after the child has exited and been reaped.
    #[tokio::test]
    async fn a_reaped_childs_cpu_counts_in_its_parents_tree() {
        let me = std::process::id();
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let pid = child.id();
        let burned = crate::wait_until(
            "the child to burn 200 ms of CPU",
            Duration::from_secs(60),
            async || {
                let used = cpu_time(pid)?;
                Ok::<_, anyhow::Error>((used >= Duration::from_millis(200)).then_some(used))
            },
        )
        .await
        .unwrap();
        // Our own time is read first: it only grows, so the tree read after it holds at least
        // as much of it. While the child lives it is counted as a living child.
        let own = cpu_time(me).unwrap();
        assert!(process_tree_cpu_time(me).unwrap() >= own + burned);
        child.kill().unwrap();
        child.wait().unwrap();
        let own = cpu_time(me).unwrap();
        assert!(process_tree_cpu_time(me).unwrap() >= own + burned);
    }

    #[test]
    fn a_process_named_otherwise_than_its_parent_has_no_parent_of_its_name() {
        let me = std::process::id();
        let name = std::fs::read_to_string(format!("/proc/{me}/comm")).unwrap();
        assert_eq!(parent_of_same_name(me, "no-such-name"), None);
        assert_eq!(parent_of_same_name(u32::MAX, name.trim()), None);
    }
}
