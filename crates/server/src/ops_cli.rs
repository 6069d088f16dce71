//! `refund-gateway ops …`: the operator's command line over a running gateway's RPCs. It owns
//! the `ops` flags ([`OpsArgs`]), the connection (plaintext, TLS with a private CA, or mutual
//! TLS; a bearer token as `authorization` metadata), the calls (`ListAttention`,
//! `GetOperation`, `WatchOperation`, `ResolveOperation`, `Reconcile`), and how their answers
//! and errors are shown: aligned tables, or one JSON object per record or report with
//! `--json`; a refusal as its gRPC code, message and google.rpc details, on stderr.
//!
//! It is a client only: it reads no gateway configuration, installs no telemetry and serves
//! nothing. The token is never printed: not in `--help`, not in `Debug`, not in an error.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use refund_gateway_proto::v1 as pb;
use refund_gateway_proto::v1::operator_service_client::OperatorServiceClient;
use refund_gateway_proto::v1::refund_gateway_service_client::RefundGatewayServiceClient;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tonic::Request;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_types::StatusExt;

use crate::convert;
use crate::operator::DEFAULT_PENDING_THRESHOLD;
use crate::status::code_name;

/// Where the gateway listens when `--addr` and `REFUND_GATEWAY_ADDR` say nothing: the
/// gateway's own default `listen`.
pub const DEFAULT_ADDR: &str = "127.0.0.1:50051";

/// The longest the gateway lets a watch run (with or without a deadline).
const MAX_WATCH: Duration = Duration::from_secs(15 * 60);

/// How much longer than its deadline (or [`MAX_WATCH`]) the client waits for the gateway to
/// end a watch before giving up on its own.
const WATCH_GRACE: Duration = Duration::from_secs(10);

/// How long establishing the connection (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer decoded. tonic's default of 4 MiB is the server's request limit; an
/// attention list of 2 × 100 operations with their audit trails can be larger.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// `refund-gateway ops`: operator commands against a running gateway.
#[derive(Debug, Args)]
pub struct OpsArgs {
    /// The gateway's gRPC address.
    #[arg(
        long,
        env = "REFUND_GATEWAY_ADDR",
        default_value = DEFAULT_ADDR,
        value_name = "HOST:PORT"
    )]
    addr: String,

    /// Bearer token of a caller with `operator = true` (sent as `authorization: Bearer …`).
    #[arg(
        long,
        env = "REFUND_GATEWAY_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<Token>,

    /// Use TLS (https) and trust the gateway's certificate if this CA (PEM) issued it.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS; with --key and --ca-file.
    #[arg(long, value_name = "PEM", requires = "key")]
    cert: Option<PathBuf>,

    /// Private key (PEM) of the --cert client certificate.
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,

    /// Print one JSON object per line (per record, or per report) instead of tables.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: OpsCommand,
}

/// A bearer token. Its `Debug` is redacted, and it is only ever written into the
/// `authorization` metadata, marked sensitive.
#[derive(Clone)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl FromStr for Token {
    // Infallible on purpose: clap quotes a value it failed to parse in its error.
    type Err = Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

#[derive(Debug, Subcommand)]
enum OpsCommand {
    /// ListAttention: PENDING operations older than a threshold and every REQUIRES_REVIEW
    /// one, oldest first.
    Attention {
        /// PENDING operations created longer ago than this are listed (e.g. 90s, 5m, 1h);
        /// default 5m.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        pending_older_than: Option<Duration>,
    },
    /// GetOperation: one operation and its audit trail, by id or by RPC and idempotency key.
    Show(Target),
    /// WatchOperation: the operation now, then after each change, until it is final.
    Watch {
        #[command(flatten)]
        target: Target,
        /// End the watch after this long (e.g. 10m); the gateway ends it after 15m at most.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
    /// ResolveOperation: settle a REQUIRES_REVIEW operation after checking with Klarna.
    Resolve {
        /// The operation id (a UUID).
        operation_id: String,
        /// What the operation did at Klarna.
        #[arg(long, value_enum)]
        outcome: Outcome,
        /// Klarna's refund id: required to settle an order refund as succeeded.
        #[arg(long, value_name = "ID")]
        refund_id: Option<String>,
        /// Why, in words; kept in the audit trail with the operator's name.
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Reconcile: one account's Klarna records against the gateway's, over a window. Exits 3
    /// when the report is not clean (a mismatch, or a resource Klarna could not be read for),
    /// so a scheduled run can alert on its status.
    Reconcile {
        /// The Klarna account; may be left out when the gateway has exactly one.
        #[arg(long, value_name = "NAME")]
        account: Option<String>,
        /// Operations created at or after this time (RFC 3339); default 24 h before --to.
        #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
        from: Option<OffsetDateTime>,
        /// Operations created before this time (RFC 3339); default now.
        #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
        to: Option<OffsetDateTime>,
    },
}

/// Which operation: its id, or the RPC and idempotency key it was made with.
#[derive(Debug, Args)]
struct Target {
    /// The operation id (a UUID).
    #[arg(required_unless_present = "rpc", conflicts_with = "rpc")]
    operation_id: Option<String>,
    /// Instead of the id: the RPC the operation was made with (e.g. RefundOrder).
    #[arg(long, value_name = "RPC", requires = "key")]
    rpc: Option<String>,
    /// With --rpc: the idempotency key it was made with.
    #[arg(long, value_name = "KEY", requires = "rpc")]
    key: Option<String>,
    /// With --rpc: the caller that made it; default the calling caller.
    #[arg(long, value_name = "CALLER", requires = "rpc")]
    caller: Option<String>,
}

/// What an operator found the operation did at Klarna.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Outcome {
    /// Klarna did it.
    Succeeded,
    /// Klarna did not do it.
    Failed,
}

/// Why an `ops` command failed. Its `Display` is what the operator reads on stderr; no
/// variant ever holds the token.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The gateway refused or failed the call. Boxed: a status is large, and this error is
    /// returned through every call.
    #[error("{}", describe_status(.0))]
    Rpc(Box<tonic::Status>),
    /// The gateway could not be reached (TCP or TLS).
    #[error("cannot connect to {0}")]
    Connect(String),
    /// The command line, or a file it names, cannot be used.
    #[error("{0}")]
    Usage(String),
    /// A watch went on past its deadline without the gateway ending it.
    #[error("DEADLINE_EXCEEDED: the gateway did not end the watch within {}", format_duration(*.0))]
    WatchDeadline(Duration),
    /// The output could not be written.
    #[error("writing the output: {0}")]
    Io(#[from] std::io::Error),
    /// A reconciliation's report (printed) found mismatches or could not read everything.
    #[error(
        "the reconciliation is not clean: {mismatches} mismatch(es), {unread} resource(s) unread"
    )]
    NotReconciled {
        /// Mismatches in the report.
        mismatches: usize,
        /// Orders or transactions Klarna could not be read for.
        unread: usize,
    },
}

impl From<tonic::Status> for OpsError {
    fn from(status: tonic::Status) -> Self {
        Self::Rpc(Box::new(status))
    }
}

impl OpsError {
    /// The process exit code for this error: 2 for a usage error (as clap's own), 3 for a
    /// reconciliation that is not clean (its report was printed), else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::NotReconciled { .. } => 3,
            _ => 1,
        }
    }
}

/// Runs one `ops` command: connects, calls, prints the answer on stdout.
pub async fn run(args: OpsArgs) -> Result<(), OpsError> {
    let client = OpsClient::connect(&args).await?;
    let mut out = Output {
        json: args.json,
        stdout: std::io::stdout(),
    };
    match args.command {
        OpsCommand::Attention { pending_older_than } => {
            let request = pb::ListAttentionRequest {
                pending_older_than: pending_older_than.and_then(|d| d.try_into().ok()),
                page_size: 0,
            };
            let answer = client
                .operator()
                .list_attention(request)
                .await?
                .into_inner();
            let threshold = pending_older_than.unwrap_or(DEFAULT_PENDING_THRESHOLD);
            out.emit(
                || attention_json(&answer),
                || attention_text(&answer, threshold),
            )
        }
        OpsCommand::Show(target) => {
            let answer = client
                .api()
                .get_operation(target.get_request())
                .await?
                .into_inner();
            let record = answer.operation.unwrap_or_default();
            out.emit(|| record_json(&record), || record_text(&record, 0))
        }
        OpsCommand::Watch { target, timeout } => {
            watch(&client, &mut out, target.watch_request(), timeout).await
        }
        OpsCommand::Resolve {
            operation_id,
            outcome,
            refund_id,
            reason,
        } => {
            let request = pb::ResolveOperationRequest {
                operation_id,
                outcome: match outcome {
                    Outcome::Succeeded => pb::ResolutionOutcome::Succeeded,
                    Outcome::Failed => pb::ResolutionOutcome::Failed,
                }
                .into(),
                refund_id: refund_id.unwrap_or_default(),
                reason,
            };
            let answer = client
                .operator()
                .resolve_operation(request)
                .await?
                .into_inner();
            let record = answer.operation.unwrap_or_default();
            out.emit(|| record_json(&record), || record_text(&record, 0))
        }
        OpsCommand::Reconcile { account, from, to } => {
            let request = pb::ReconcileRequest {
                klarna_account: account.unwrap_or_default(),
                from: from.map(timestamp),
                to: to.map(timestamp),
            };
            let answer = client.operator().reconcile(request).await?.into_inner();
            out.emit(|| reconcile_json(&answer), || reconcile_text(&answer))?;
            reconciled(&answer)
        }
    }
}

/// Prints each record of the watch as it arrives: in tables, the operation and the audit
/// events added since the record before.
async fn watch(
    client: &OpsClient,
    out: &mut Output,
    request: pb::WatchOperationRequest,
    timeout: Option<Duration>,
) -> Result<(), OpsError> {
    let mut request = Request::new(request);
    if let Some(timeout) = timeout {
        // Sent as `grpc-timeout`: the gateway ends the stream at it.
        request.set_timeout(timeout);
    }
    // The gateway ends every watch on its own; this bound only guards against one that
    // does not.
    let limit = timeout.unwrap_or(MAX_WATCH).min(MAX_WATCH) + WATCH_GRACE;
    let deadline = tokio::time::Instant::now() + limit;
    let mut stream = client.api().watch_operation(request).await?.into_inner();
    let mut shown_events = 0;
    let mut last = None;
    loop {
        let next = tokio::time::timeout_at(deadline, stream.message())
            .await
            .map_err(|_| OpsError::WatchDeadline(limit))??;
        let Some(answer) = next else { break };
        let record = answer.operation.unwrap_or_default();
        out.emit(
            || record_json(&record),
            || record_text(&record, shown_events),
        )?;
        shown_events = record.events.len();
        last = Some(record);
    }
    if let Some(record) = last
        && !is_final(record.state)
    {
        // Not an error: the watch ran its time; the operator may watch again.
        eprintln!(
            "note: the watch ended at its deadline; operation {} is still {}",
            record.operation_id,
            state_name(record.state).unwrap_or("UNSPECIFIED")
        );
    }
    Ok(())
}

fn is_final(state: i32) -> bool {
    matches!(
        pb::OperationState::try_from(state),
        Ok(pb::OperationState::Succeeded
            | pb::OperationState::Failed
            | pb::OperationState::RequiresReview)
    )
}

impl Target {
    fn get_request(self) -> pb::GetOperationRequest {
        pb::GetOperationRequest {
            operation_id: self.operation_id.unwrap_or_default(),
            rpc: self.rpc.unwrap_or_default(),
            idempotency_key: self.key.unwrap_or_default(),
            caller: self.caller.unwrap_or_default(),
        }
    }

    fn watch_request(self) -> pb::WatchOperationRequest {
        let r = self.get_request();
        pb::WatchOperationRequest {
            operation_id: r.operation_id,
            rpc: r.rpc,
            idempotency_key: r.idempotency_key,
            caller: r.caller,
        }
    }
}

/// Adds `authorization: Bearer <token>` to every call, when a token was given.
#[derive(Debug, Clone)]
struct Authorization(Option<MetadataValue<Ascii>>);

impl Interceptor for Authorization {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl Authorization {
    fn new(token: Option<&Token>) -> Result<Self, OpsError> {
        let Some(Token(token)) = token.filter(|t| !t.0.is_empty()) else {
            return Ok(Self(None));
        };
        // The message must not quote the token: it is what was wrong, and it is a secret.
        let mut value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            OpsError::Usage(
                "--token (REFUND_GATEWAY_TOKEN) holds characters a header cannot carry".into(),
            )
        })?;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }
}

type Authorized = InterceptedService<Channel, Authorization>;

/// The two services over one connection.
#[derive(Debug)]
struct OpsClient {
    channel: Channel,
    authorization: Authorization,
}

impl OpsClient {
    async fn connect(args: &OpsArgs) -> Result<Self, OpsError> {
        let authorization = Authorization::new(args.token.as_ref())?;
        let tls = args.ca_file.is_some() || args.cert.is_some();
        let uri = format!("{}://{}", if tls { "https" } else { "http" }, args.addr);
        let mut endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| OpsError::Usage(format!("--addr {:?}: {e}", args.addr)))?
            .connect_timeout(CONNECT_TIMEOUT);
        if tls {
            endpoint = endpoint
                .tls_config(tls_config(args)?)
                .map_err(|e| OpsError::Usage(format!("TLS: {}", error_chain(&e))))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| OpsError::Connect(format!("{uri}: {}", error_chain(&e))))?;
        Ok(Self {
            channel,
            authorization,
        })
    }

    fn api(&self) -> RefundGatewayServiceClient<Authorized> {
        RefundGatewayServiceClient::with_interceptor(
            self.channel.clone(),
            self.authorization.clone(),
        )
        .max_decoding_message_size(MAX_ANSWER_BYTES)
    }

    fn operator(&self) -> OperatorServiceClient<Authorized> {
        OperatorServiceClient::with_interceptor(self.channel.clone(), self.authorization.clone())
            .max_decoding_message_size(MAX_ANSWER_BYTES)
    }
}

fn tls_config(args: &OpsArgs) -> Result<ClientTlsConfig, OpsError> {
    // This build has no system trust store (tonic without its roots features): the gateway's
    // certificate is trusted through --ca-file only.
    let Some(ca_file) = &args.ca_file else {
        return Err(OpsError::Usage(
            "--cert and --key need --ca-file: the CA that issued the gateway's certificate".into(),
        ));
    };
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read_pem("--ca-file", ca_file)?));
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        config = config.identity(Identity::from_pem(
            read_pem("--cert", cert)?,
            read_pem("--key", key)?,
        ));
    }
    Ok(config)
}

fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, OpsError> {
    std::fs::read(path).map_err(|e| OpsError::Usage(format!("{flag} {}: {e}", path.display())))
}

/// `error`, then each of its causes: tonic's transport error alone says only "transport
/// error".
fn error_chain(error: &dyn std::error::Error) -> String {
    let said = error.to_string();
    let causes = causes(&said, error.source());
    said + &causes
}

/// `: cause: its cause…`, each said once: hyper's and tonic's layers often repeat the words of
/// the layer above or below.
fn causes(said: &str, mut source: Option<&dyn std::error::Error>) -> String {
    let mut seen: Vec<String> = said.split(": ").map(str::to_owned).collect();
    let mut text = String::new();
    while let Some(cause) = source {
        let words = cause.to_string();
        if !seen.contains(&words) {
            text.push_str(": ");
            text.push_str(&words);
            seen.push(words);
        }
        source = cause.source();
    }
    text
}

/// Where answers go: stdout, as tables or JSON lines.
struct Output {
    json: bool,
    stdout: std::io::Stdout,
}

impl Output {
    /// Writes the JSON (one line) or the text, whichever was asked for, and flushes: a watch
    /// shows each record when it arrives, also through a pipe.
    fn emit(
        &mut self,
        json: impl FnOnce() -> Value,
        text: impl FnOnce() -> String,
    ) -> Result<(), OpsError> {
        let mut out = self.stdout.lock();
        if self.json {
            writeln!(out, "{}", json())?;
        } else {
            write!(out, "{}", text())?;
        }
        out.flush()?;
        Ok(())
    }
}

/// The status as an operator reads it: `CODE REASON: message`, then a line per detail.
fn describe_status(status: &tonic::Status) -> String {
    let details = status.get_error_details();
    let mut text = code_name(status.code()).to_owned();
    let mut message = status.message();
    if let Some(info) = details.error_info() {
        text.push(' ');
        text.push_str(&info.reason);
        // The gateway's precondition messages start with their reason: said once.
        message = message
            .strip_prefix(info.reason.as_str())
            .and_then(|rest| rest.strip_prefix(": "))
            .unwrap_or(message);
    }
    text.push_str(": ");
    text.push_str(message);
    // A status made on this side (a TLS alert, an HTTP/2 error) says what failed only in
    // its causes.
    text.push_str(&causes(status.message(), std::error::Error::source(status)));
    if let Some(info) = details.error_info() {
        let sorted: BTreeMap<_, _> = info.metadata.iter().collect();
        for (key, value) in sorted {
            text.push_str(&format!("\n  {key}: {value}"));
        }
    }
    if let Some(bad) = details.bad_request() {
        for v in &bad.field_violations {
            text.push_str(&format!("\n  {}: {}", v.field, v.description));
        }
    }
    if let Some(failure) = details.precondition_failure() {
        for v in &failure.violations {
            text.push_str(&format!("\n  precondition {} on {}", v.r#type, v.subject));
            // Usually the message itself: said once.
            if !message.contains(&v.description) {
                text.push_str(&format!(": {}", v.description));
            }
        }
    }
    if let Some(resource) = details.resource_info() {
        text.push_str(&format!(
            "\n  resource: {} {}",
            resource.resource_type, resource.resource_name
        ));
        if !resource.owner.is_empty() {
            text.push_str(&format!(" (owner {})", resource.owner));
        }
        if !resource.description.is_empty() {
            text.push_str(&format!(": {}", resource.description));
        }
    }
    if let Some(delay) = details.retry_info().and_then(|r| r.retry_delay) {
        text.push_str(&format!("\n  retry after {}", format_duration(delay)));
    }
    text
}

/// Parses a duration of whole numbers with units: `250ms`, `90s`, `5m`, `1h`, `2d`, or a
/// sum such as `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let wrong = || format!("{text:?} is not a duration: write e.g. 90s, 5m, 1h or 1h30m");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(wrong());
    }
    let mut millis: u64 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let letters = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(letters);
        let per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(wrong()),
        };
        let n: u64 = number.parse().map_err(|_| wrong())?;
        millis = n
            .checked_mul(per_unit)
            .and_then(|m| m.checked_add(millis))
            .ok_or_else(wrong)?;
        rest = tail;
    }
    Ok(Duration::from_millis(millis))
}

/// Writes a duration the way [`parse_duration`] reads it, largest units first: `1h30m`.
fn format_duration(duration: Duration) -> String {
    let mut millis = duration.as_millis();
    if millis == 0 {
        return "0s".into();
    }
    let mut text = String::new();
    for (unit, per_unit) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if millis >= per_unit {
            text.push_str(&format!("{}{unit}", millis / per_unit));
            millis %= per_unit;
        }
    }
    text
}

fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("expected an RFC 3339 time such as 2025-01-31T00:00:00Z: {e}"))
}

fn timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        // Always below 10^9, so it fits an i32.
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    }
}

/// A timestamp as RFC 3339; `None` when absent or out of range.
fn time_text(t: Option<prost_types::Timestamp>, whole_seconds: bool) -> Option<String> {
    let t = convert::time_in(t).ok().flatten()?;
    let t = if whole_seconds {
        t.replace_nanosecond(0).unwrap_or(t)
    } else {
        t
    };
    t.format(&Rfc3339).ok()
}

/// An operation state's name without its prefix (`SUCCEEDED`); `None` for UNSPECIFIED (an
/// event's state before the claim) or a value this build does not know.
fn state_name(state: i32) -> Option<&'static str> {
    match pb::OperationState::try_from(state).ok()? {
        pb::OperationState::Unspecified => None,
        known => known
            .as_str_name()
            .strip_prefix("OPERATION_STATE_")
            .or(Some(known.as_str_name())),
    }
}

fn mismatch_name(kind: i32) -> &'static str {
    match pb::MismatchKind::try_from(kind) {
        Ok(pb::MismatchKind::UnknownToGateway) => "UNKNOWN_TO_GATEWAY",
        Ok(pb::MismatchKind::MissingAtKlarna) => "MISSING_AT_KLARNA",
        Ok(pb::MismatchKind::AmountDiffers) => "AMOUNT_DIFFERS",
        Ok(pb::MismatchKind::Unspecified) | Err(_) => "UNSPECIFIED",
    }
}

fn record_json(r: &pb::OperationRecord) -> Value {
    let events: Vec<Value> = r
        .events
        .iter()
        .map(|e| {
            json!({
                "state_before": state_name(e.state_before),
                "state_after": state_name(e.state_after),
                "refund_id": e.refund_id,
                "correlation_id": e.correlation_id,
                "trace_id": e.trace_id,
                "otel_trace_id": e.otel_trace_id,
                "detail": e.detail,
                "at": time_text(e.at, false),
            })
        })
        .collect();
    json!({
        "operation_id": r.operation_id,
        "caller": r.caller,
        "rpc": r.rpc,
        "idempotency_key": r.idempotency_key,
        "klarna_account": r.klarna_account,
        "order_id": r.order_id,
        "capture_id": r.capture_id,
        "payment_transaction_id": r.payment_transaction_id,
        "amount": r.amount,
        "currency": r.currency,
        "reference": r.reference,
        "state": state_name(r.state),
        "refund_id": r.refund_id,
        "correlation_id": r.correlation_id,
        "created_at": time_text(r.created_at, false),
        "updated_at": time_text(r.updated_at, false),
        "next_resend_at": time_text(r.next_resend_at, false),
        "traceparent": r.traceparent,
        "events": events,
    })
}

fn attention_json(a: &pb::ListAttentionResponse) -> Value {
    json!({
        "pending": a.pending.iter().map(record_json).collect::<Vec<_>>(),
        "requires_review": a.requires_review.iter().map(record_json).collect::<Vec<_>>(),
    })
}

fn reconcile_json(r: &pb::ReconcileResponse) -> Value {
    let mismatches: Vec<Value> = r
        .mismatches
        .iter()
        .map(|m| {
            json!({
                "kind": mismatch_name(m.kind),
                "order_id": m.order_id,
                "payment_transaction_id": m.payment_transaction_id,
                "refund_id": m.refund_id,
                "operation_id": m.operation_id,
                "gateway_amount": m.gateway_amount,
                "klarna_amount": m.klarna_amount,
            })
        })
        .collect();
    json!({
        "klarna_account": r.klarna_account,
        "operations_checked": r.operations_checked,
        "resources_checked": r.resources_checked,
        "mismatches": mismatches,
        "unread": r.unread,
    })
}

/// `text`, or `-` for an empty cell.
fn cell(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_owned()
    }
}

/// Rows under a header, each column as wide as its widest cell, two spaces apart; the last
/// column is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, text) in widths.iter_mut().zip(row) {
            *width = (*width).max(text.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let mut text = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:width$}  "));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

const OPERATION_HEADER: [&str; 8] = [
    "OPERATION ID",
    "CALLER",
    "RPC",
    "KEY",
    "STATE",
    "AMOUNT",
    "ORDER/TRANSACTION",
    "UPDATED",
];

fn operation_row(r: &pb::OperationRecord) -> Vec<String> {
    let amount = if r.amount == 0 && r.currency.is_empty() {
        String::new()
    } else {
        format!("{} {}", r.amount, r.currency).trim_end().to_owned()
    };
    let resource = if r.order_id.is_empty() {
        &r.payment_transaction_id
    } else {
        &r.order_id
    };
    vec![
        cell(&r.operation_id),
        cell(&r.caller),
        cell(&r.rpc),
        cell(&r.idempotency_key),
        cell(state_name(r.state).unwrap_or("")),
        cell(&amount),
        cell(resource),
        cell(&time_text(r.updated_at, true).unwrap_or_default()),
    ]
}

fn operations_table(records: &[pb::OperationRecord]) -> String {
    let rows: Vec<_> = records.iter().map(operation_row).collect();
    table(&OPERATION_HEADER, &rows)
}

/// One record: the operation, then its audit events from the `skip`th on (a watch shows
/// each event once).
fn record_text(r: &pb::OperationRecord, skip: usize) -> String {
    let mut text = operations_table(std::slice::from_ref(r));
    if let Some(at) = time_text(r.next_resend_at, true) {
        text.push_str(&format!(
            "the reconciler resends it at {at} (a retry under the same key, at once)\n"
        ));
    }
    let events: Vec<Vec<String>> = r
        .events
        .iter()
        .skip(skip)
        .map(|e| {
            vec![
                cell(&time_text(e.at, true).unwrap_or_default()),
                cell(state_name(e.state_before).unwrap_or("")),
                cell(state_name(e.state_after).unwrap_or("")),
                cell(&e.refund_id),
                cell(&e.correlation_id),
                cell(&e.trace_id),
                cell(&e.otel_trace_id),
                cell(&e.detail),
            ]
        })
        .collect();
    if !events.is_empty() {
        text.push('\n');
        text.push_str(&table(
            &[
                "AT",
                "FROM",
                "TO",
                "REFUND ID",
                "CORRELATION ID",
                "BY",
                "OTEL TRACE",
                "DETAIL",
            ],
            &events,
        ));
    }
    text.push('\n');
    text
}

fn attention_text(a: &pb::ListAttentionResponse, threshold: Duration) -> String {
    let mut text = String::new();
    for (title, records) in [
        (
            format!("PENDING for longer than {}", format_duration(threshold)),
            &a.pending,
        ),
        ("REQUIRES_REVIEW".to_owned(), &a.requires_review),
    ] {
        if records.is_empty() {
            text.push_str(&format!("{title}: none\n"));
        } else {
            text.push_str(&format!("{title}: {}\n", records.len()));
            text.push_str(&operations_table(records));
        }
    }
    text
}

/// Whether a printed reconciliation report is clean: no mismatch and nothing unread.
fn reconciled(r: &pb::ReconcileResponse) -> Result<(), OpsError> {
    if r.mismatches.is_empty() && r.unread.is_empty() {
        return Ok(());
    }
    Err(OpsError::NotReconciled {
        mismatches: r.mismatches.len(),
        unread: r.unread.len(),
    })
}

fn reconcile_text(r: &pb::ReconcileResponse) -> String {
    let mut text = format!(
        "account: {}\noperations checked: {}\norders/transactions read from Klarna: {}\n",
        r.klarna_account, r.operations_checked, r.resources_checked
    );
    if r.mismatches.is_empty() {
        text.push_str("mismatches: none\n");
    } else {
        text.push_str(&format!("mismatches: {}\n", r.mismatches.len()));
        let rows: Vec<Vec<String>> = r
            .mismatches
            .iter()
            .map(|m| {
                let resource = if m.order_id.is_empty() {
                    &m.payment_transaction_id
                } else {
                    &m.order_id
                };
                vec![
                    mismatch_name(m.kind).to_owned(),
                    cell(resource),
                    cell(&m.refund_id),
                    cell(&m.operation_id),
                    m.gateway_amount.to_string(),
                    m.klarna_amount.to_string(),
                ]
            })
            .collect();
        text.push_str(&table(
            &[
                "KIND",
                "ORDER/TRANSACTION",
                "REFUND ID",
                "OPERATION ID",
                "GATEWAY AMOUNT",
                "KLARNA AMOUNT",
            ],
            &rows,
        ));
    }
    if !r.unread.is_empty() {
        // The report is incomplete: say so after the mismatches, one resource per line.
        text.push_str(&format!(
            "unread (the report is incomplete): {}\n",
            r.unread.len()
        ));
        for why in &r.unread {
            text.push_str(&format!("  {why}\n"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use refund_gateway_domain::{GatewayError, Precondition, PreconditionReason, Violations};

    use super::*;
    use crate::status::to_status;

    const TOKEN: &str = "ops-token-s3cr3t-x9";

    /// `refund-gateway ops …` as clap parses it.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        ops: OpsArgs,
    }

    fn parse(args: &[&str]) -> Result<OpsArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("ops").chain(args.iter().copied())).map(|c| c.ops)
    }

    #[test]
    fn durations_parse_with_units_and_refuse_the_rest() {
        for (text, secs) in [
            ("5m", 300),
            ("90s", 90),
            ("1h", 3600),
            ("1h30m", 5400),
            ("2d", 172_800),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in [
            "",
            "5",
            "m",
            "5x",
            "-5m",
            "1.5h",
            "5 m",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(
            parse_duration(&format_duration(Duration::from_millis(3_723_004))),
            Ok(Duration::from_millis(3_723_004))
        );
    }

    #[test]
    fn the_command_line_parses_and_checks_its_combinations() -> Result<(), clap::Error> {
        let args = parse(&["show", "--rpc", "RefundOrder", "--key", "k-1"])?;
        assert_eq!(args.addr, DEFAULT_ADDR);
        let OpsCommand::Show(target) = args.command else {
            panic!("not show: {:?}", args.command);
        };
        let request = target.get_request();
        assert_eq!(
            (request.rpc.as_str(), request.idempotency_key.as_str()),
            ("RefundOrder", "k-1")
        );
        // --json is accepted after the command too.
        assert!(parse(&["show", "--json", "id-1"])?.json);
        assert!(matches!(
            parse(&["watch", "id-1", "--timeout", "10m"])?.command,
            OpsCommand::Watch { timeout: Some(t), .. } if t == Duration::from_secs(600)
        ));
        assert!(matches!(
            parse(&["reconcile", "--from", "2025-01-31T00:00:00Z"])?.command,
            OpsCommand::Reconcile {
                from: Some(_),
                to: None,
                ..
            }
        ));
        for wrong in [
            &["show"][..],
            &["show", "id-1", "--rpc", "RefundOrder", "--key", "k"],
            &["show", "--rpc", "RefundOrder"],
            &["show", "--key", "k"],
            &["--cert", "c.pem", "attention"],
            &["resolve", "id-1", "--outcome", "maybe", "--reason", "x"],
            &["resolve", "id-1", "--outcome", "failed"],
            &["attention", "--pending-older-than", "5"],
            &["reconcile", "--to", "yesterday"],
        ] {
            assert!(parse(wrong).is_err(), "{wrong:?} was accepted");
        }
        Ok(())
    }

    #[test]
    fn the_token_is_never_printed() -> Result<(), clap::Error> {
        let args = parse(&["--token", TOKEN, "attention"])?;
        assert!(!format!("{args:?}").contains(TOKEN));
        let authorization = Authorization::new(args.token.as_ref())
            .unwrap_or_else(|e| panic!("a plain token is refused: {e}"));
        assert!(!format!("{authorization:?}").contains(TOKEN));

        // A token a header cannot carry: refused without quoting it.
        let bad = Token(format!("{TOKEN}\n"));
        let error = Authorization::new(Some(&bad))
            .err()
            .unwrap_or_else(|| panic!("a token with a newline was accepted"));
        assert!(!error.to_string().contains(TOKEN), "{error}");
        assert_eq!(error.exit_code(), 2);

        // Every kind of refusal, formatted as printed, after a call that carried the token.
        let statuses = [
            to_status(&GatewayError::InvalidArgument(Violations::single(
                "operation_id",
                "must be a UUID",
            ))),
            to_status(&GatewayError::StoreUnavailable("down".into())),
        ];
        for status in statuses {
            let error = OpsError::from(status);
            assert!(!error.to_string().contains(TOKEN), "{error}");
        }
        // `--help` shows that REFUND_GATEWAY_TOKEN is read, never its value.
        let command = <Cli as clap::CommandFactory>::command();
        let token = command
            .get_arguments()
            .find(|a| a.get_id() == "token")
            .unwrap_or_else(|| panic!("no --token"));
        assert!(token.is_hide_env_values_set());
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_connection_names_the_address_and_not_the_token() -> Result<(), clap::Error> {
        // Port 9 on loopback (discard): nothing listens there in a test environment.
        let args = parse(&["--addr", "127.0.0.1:9", "--token", TOKEN, "attention"])?;
        let error = run(args)
            .await
            .err()
            .unwrap_or_else(|| panic!("connected to 127.0.0.1:9"));
        let text = error.to_string();
        assert!(matches!(error, OpsError::Connect(_)), "{text}");
        assert!(text.contains("http://127.0.0.1:9"), "{text}");
        assert!(!text.contains(TOKEN), "{text}");
        Ok(())
    }

    #[test]
    fn a_refusal_reads_as_code_reason_message_and_details() {
        let status = to_status(&GatewayError::Precondition(Precondition {
            reason: PreconditionReason::OperationNotInReview,
            subject: "operations/0b0e".into(),
            description: "operation 0b0e is SUCCEEDED, not REQUIRES_REVIEW".into(),
        }));
        let text = OpsError::from(status).to_string();
        assert_eq!(
            text,
            "FAILED_PRECONDITION OPERATION_NOT_IN_REVIEW: operation 0b0e is SUCCEEDED, not \
             REQUIRES_REVIEW\n  precondition OPERATION_NOT_IN_REVIEW on operations/0b0e"
        );

        let mut violations = Violations::new();
        violations.push("order_id", "must be a UUID");
        violations.push("refunded_amount", "must be at least 1");
        let text =
            OpsError::from(to_status(&GatewayError::InvalidArgument(violations))).to_string();
        assert!(text.starts_with("INVALID_ARGUMENT: "), "{text}");
        assert!(text.contains("\n  order_id: must be a UUID"), "{text}");
        assert!(
            text.contains("\n  refunded_amount: must be at least 1"),
            "{text}"
        );

        let text =
            OpsError::from(to_status(&GatewayError::StoreUnavailable("down".into()))).to_string();
        assert!(text.starts_with("UNAVAILABLE "), "{text}");
        assert!(text.contains("\n  retry after 1s"), "{text}");
    }

    #[test]
    fn tables_align_their_columns() {
        let text = table(
            &["A", "LONGER"],
            &[
                vec!["wide cell".into(), "x".into()],
                vec!["-".into(), "y".into()],
            ],
        );
        assert_eq!(text, "A          LONGER\nwide cell  x\n-          y\n");
    }

    #[test]
    fn a_record_prints_as_a_row_and_as_json() {
        let record = pb::OperationRecord {
            operation_id: "6f1c".into(),
            caller: "anonymous".into(),
            rpc: "RefundOrder".into(),
            idempotency_key: "k-1".into(),
            order_id: "o-1".into(),
            amount: 2500,
            currency: "SEK".into(),
            state: pb::OperationState::Succeeded.into(),
            updated_at: Some(prost_types::Timestamp {
                seconds: 1_767_225_600,
                nanos: 123,
            }),
            events: vec![pb::OperationEvent {
                state_after: pb::OperationState::InFlight.into(),
                detail: "claimed".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = record_text(&record, 0);
        let row: Vec<&str> = text
            .lines()
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(
            row,
            [
                "6f1c",
                "anonymous",
                "RefundOrder",
                "k-1",
                "SUCCEEDED",
                "2500",
                "SEK",
                "o-1",
                "2026-01-01T00:00:00Z"
            ],
            "{text}"
        );
        assert!(text.contains("IN_FLIGHT"), "{text}");
        // A watch shows each event once.
        assert!(!record_text(&record, 1).contains("claimed"));

        let json = record_json(&record);
        assert_eq!(json["state"], "SUCCEEDED");
        assert_eq!(json["amount"], 2500);
        assert_eq!(json["events"][0]["state_before"], Value::Null);
        assert_eq!(json["updated_at"], "2026-01-01T00:00:00.000000123Z");
        assert_eq!(json["next_resend_at"], Value::Null);
        assert!(!text.contains("resends"), "{text}");

        let pending = pb::OperationRecord {
            state: pb::OperationState::Pending.into(),
            next_resend_at: Some(prost_types::Timestamp {
                seconds: 1_767_225_660,
                nanos: 500,
            }),
            ..record
        };
        assert!(
            record_text(&pending, 0).contains("the reconciler resends it at 2026-01-01T00:01:00Z"),
            "{}",
            record_text(&pending, 0)
        );
        assert_eq!(
            record_json(&pending)["next_resend_at"],
            "2026-01-01T00:01:00.0000005Z"
        );
    }
}
