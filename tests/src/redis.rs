//! A throwaway `redis-server` for tests: on a free loopback port, without persistence, killed
//! (and reaped) on drop. Without `redis-server` on PATH a test is skipped, saying
//! `SKIPPED (no Redis): <test name>` on stderr, except under `CI=true`, where it fails: the
//! README's test command installs Redis. Shared by the end-to-end suite and the adapter's
//! tests (included by path), so there is one.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait;

/// A generous bound on waiting for a condition; not a time anything is expected to take.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A `redis-server` of this test's own, killed (and reaped) on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    /// A fresh server, or `None` when `redis-server` is not installed (outside CI only: the
    /// test must then return at once; it has said that it is skipped).
    pub async fn start() -> Option<Self> {
        match Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "redis-server is not on PATH, and CI=true requires the Redis tests: the \
                     README's test command (scripts/test) installs it (Debian package \
                     redis-server)"
                );
                // The line the README's test command counts as a skipped test (libtest has
                // no skipped state), written to the stderr handle itself, which libtest does
                // not capture, in one write; libtest names the test's thread after the test.
                let thread = std::thread::current();
                let test = thread.name().unwrap_or("<unnamed test>");
                let line = format!("SKIPPED (no Redis): {test}\n");
                let _ = std::io::stderr().write_all(line.as_bytes());
                return None;
            }
            Err(e) => panic!("cannot run redis-server: {e}"),
        }
        // The free port may be taken by someone else before the server binds it: try another.
        for _ in 0..5 {
            let port = free_port();
            let mut server = Self { child: None, port };
            if server.spawn().await {
                return Some(server);
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Starts the server on `self.port` and waits until it answers `PING`; `false` when the
    /// process ended instead (the port was taken).
    async fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server does not start: {e}"));
        let port = self.port;
        let child = self.child.insert(child);
        let ready = wait::wait_until("redis-server to answer PING", PATIENCE, async || {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return Ok::<_, wait::TimedOut>(Some(false));
            }
            Ok(pong(port).then_some(true))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        if !ready {
            self.child = None;
        }
        ready
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server at once (no shutdown) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A fresh server on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        assert!(self.spawn().await, "redis-server did not start again");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nothing listens on (at the time of asking).
pub fn free_port() -> u16 {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap_or_else(|e| panic!("no free port: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("no local address: {e}"))
        .port()
}

/// Whether a server on `port` answers `PING` with `+PONG`.
fn pong(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut answer = [0_u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && &answer == b"+PONG\r\n"
}
