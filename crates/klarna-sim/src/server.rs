//! The HTTP server: a hyper-util accept loop serving HTTP/1.1 and HTTP/2 on one listener
//! (cleartext with prior knowledge, or over TLS, optionally mutual, when configured), graceful
//! shutdown, and the commit-then-drop fault, which closes the TCP connection before any
//! response header is written.
//!
//! `axum::serve` cannot drop a connection from a handler; here each connection task selects
//! between serving the connection and a per-connection "drop" signal raised by the handler,
//! and the service also fails the request, which makes hyper close the connection without
//! answering. Dropping the connection future closes the socket.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

use crate::api::{self, Outcome};
use crate::simulator::{SimConfig, Simulator};
use crate::tls::{self, TlsConfig};
use crate::{admin, response::SimResponse};

/// How long shutdown waits for open connections (held answers included).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bodies beyond this are not even drained: the connection is refused outright.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// Why a body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// Longer than the limit (the rest was drained so the client can read the answer).
    TooLarge,
    /// The client's stream broke.
    Io,
}

/// Reads a whole body, keeping at most `limit` bytes. A longer body is drained (up to 64 MiB)
/// so that an HTTP/1.1 client still sending it reads the 413 instead of a reset.
pub(crate) async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    // Most bodies arrive in one frame: keep that frame without copying.
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| BodyError::Io)?.into_data() else {
            continue; // trailers
        };
        total = total.saturating_add(data.len());
        if total > DRAIN_LIMIT {
            return Err(BodyError::TooLarge);
        }
        if total > limit {
            first = None;
            rest = None;
            continue;
        }
        match (&mut first, &mut rest) {
            (None, None) => first = Some(data),
            (Some(head), None) => {
                let mut buf = BytesMut::with_capacity(head.len() + data.len());
                buf.extend_from_slice(head);
                buf.extend_from_slice(&data);
                first = None;
                rest = Some(buf);
            }
            (_, Some(buf)) => buf.extend_from_slice(&data),
        }
    }
    if total > limit {
        return Err(BodyError::TooLarge);
    }
    Ok(match (first, rest) {
        (_, Some(buf)) => buf.freeze(),
        (Some(head), None) => head,
        (None, None) => Bytes::new(),
    })
}

/// The error a request fails with when a commit-then-drop fault closes its connection.
#[derive(Debug)]
struct DroppedByFault;

impl fmt::Display for DroppedByFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped by an injected commit-then-drop fault")
    }
}

impl StdError for DroppedByFault {}

async fn dispatch(sim: &Simulator, request: Request<Incoming>) -> Outcome {
    let (parts, body) = request.into_parts();
    if parts.uri.path().starts_with(admin::PREFIX) {
        let response = admin::handle(sim, &parts.method, parts.uri.path(), body).await;
        Outcome::Respond(response)
    } else {
        api::handle(&sim.shared, parts, body).await
    }
}

pub(crate) async fn serve(
    sim: Simulator,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let acceptor = sim.config().tls.as_ref().map(tls::acceptor).transpose()?;
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(_) => {
                    // Transient (e.g. out of file descriptors, or an aborted handshake):
                    // back off briefly instead of spinning or giving up.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small request/response exchanges: do not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let sim = sim.clone();
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        match &acceptor {
            None => {
                tokio::spawn(serve_connection(sim, builder, watcher, stream));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                // The handshake runs in the connection's task, so a slow or silent client
                // never holds up the accept loop.
                // A failed handshake (no or a wrong client certificate) or a timeout ends
                // here: the client has already been told, or there is nobody to tell.
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    if let Ok(Ok(tls)) = handshake.await {
                        serve_connection(sim, builder, watcher, tls).await;
                    }
                });
            }
        }
    }

    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    Ok(())
}

/// Serves one connection (plain TCP or TLS) until it ends, the client goes away, or a
/// commit-then-drop fault closes it.
async fn serve_connection<I>(
    sim: Simulator,
    builder: Arc<Builder<TokioExecutor>>,
    watcher: Watcher,
    io: I,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let kill = Arc::new(Notify::new());
    let service = {
        let kill = Arc::clone(&kill);
        service_fn(move |request: Request<Incoming>| {
            let sim = sim.clone();
            let kill = Arc::clone(&kill);
            async move {
                match dispatch(&sim, request).await {
                    Outcome::Respond(response) => Ok::<Response<Full<Bytes>>, DroppedByFault>(
                        SimResponse::into_http(response),
                    ),
                    Outcome::Drop => {
                        kill.notify_one();
                        Err(DroppedByFault)
                    }
                }
            }
        })
    };
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let connection = watcher.watch(connection);
    tokio::select! {
        // Errors here are the client's or the fault's doing; nothing to report.
        _ = connection => {}
        // Dropping the connection future closes the socket, unanswered.
        () = kill.notified() => {}
    }
}

/// A simulator serving on `127.0.0.1` on a free port, started by [`spawn`].
///
/// Dropping it (or calling [`RunningSimulator::shutdown`]) stops the server.
#[derive(Debug)]
pub struct RunningSimulator {
    /// Handle to the simulator's state and test facilities.
    pub sim: Simulator,
    /// `http://127.0.0.1:PORT` (`https://` when [`SimConfig::tls`] is set), without a
    /// trailing slash.
    pub base_url: String,
    /// The bound address.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl RunningSimulator {
    /// The configured API username (for Basic auth).
    pub fn username(&self) -> &str {
        &self.sim.config().username
    }

    /// The configured API password (for Basic auth).
    pub fn password(&self) -> &str {
        &self.sim.config().password
    }

    /// The configured Order Management API key (`Authorization: Basic <key>`), accepted
    /// besides the username and password.
    pub fn api_key(&self) -> &str {
        &self.sim.config().api_key
    }

    /// The configured partner API key (`Authorization: Basic <key>` on `/v2` calls).
    pub fn partner_api_key(&self) -> &str {
        &self.sim.config().partner_api_key
    }

    /// The configured partner account id.
    pub fn partner_account_id(&self) -> &str {
        &self.sim.config().partner_account_id
    }

    /// The prefix of partner calls for the configured account:
    /// `{base_url}/v2/accounts/{partner_account_id}`.
    pub fn partner_base_url(&self) -> String {
        format!(
            "{}/v2/accounts/{}",
            self.base_url,
            self.partner_account_id()
        )
    }

    /// The TLS configuration served (certificate chain, client CA), if any.
    pub fn tls(&self) -> Option<&TlsConfig> {
        self.sim.config().tls.as_ref()
    }

    /// Stops accepting, waits for open connections (at most 5 s) and returns the server's
    /// result.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningSimulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts a simulator with `config` on `127.0.0.1:0` (nothing seeded) in a background task
/// of the current Tokio runtime. An unusable [`SimConfig::tls`] is an `InvalidInput` error.
pub async fn spawn(config: SimConfig) -> io::Result<RunningSimulator> {
    // Checked here so that a bad configuration fails the caller, not the background task.
    if let Some(tls) = &config.tls {
        tls::acceptor(tls)?;
    }
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let sim = Simulator::new(config);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(sim.clone().serve(listener, async move {
        // Also resolves when the sender is dropped.
        let _ = stopped.await;
    }));
    Ok(RunningSimulator {
        sim,
        base_url: format!("{scheme}://{addr}"),
        addr,
        stop: Some(stop),
        task: Some(task),
    })
}
