//! Configuration: a TOML file (`--config` / `REFUND_GATEWAY_CONFIG`), then environment
//! variables, then command-line flags, each overriding the one before. Secrets never sit in
//! the file: an account names the environment variable or file that holds each credential,
//! and the resolved value lives in a [`SecretString`] that never prints.
//!
//! [`SETTINGS`] is the one list of settings: TOML key, flag, environment variable, allowed
//! values and description. Validation, environment overrides and `--help` ([`command`]) come
//! from it, defaults come from [`Settings::default`], and a test holds the README's
//! configuration table to both.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use refund_gateway_domain::{CountryCode, Currency, Route, Store, StoreId};
use refund_gateway_klarna::{
    BaseUrl, ClientIdentity, Environment, KlarnaCredentials, OutboundRateLimit, PlainHttp, Region,
    regional_base_url,
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// The account name used when credentials come from `KLARNA_*` environment variables.
pub const DEFAULT_ACCOUNT: &str = "default";
/// The partner account made from `KLARNA_PARTNER_*` environment variables.
pub const PARTNER_ACCOUNT: &str = "partner";
/// Klarna's live partner Payments API: the only base URL whose account is live (webhooks
/// that say `live` are accepted only for such an account).
pub const LIVE_PARTNER_URL: &str = "https://api-global.klarna.com";

/// Why the configuration cannot be used. Messages name the setting or variable to fix and
/// never contain a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an override could not be read.
    #[error("cannot read configuration: {0}")]
    Load(String),
    /// A setting is outside the range it allows.
    #[error("setting {setting} = {value} is out of range: allowed {allowed}")]
    OutOfRange {
        /// The setting's TOML key.
        setting: &'static str,
        /// The value refused.
        value: u64,
        /// The allowed range, with its unit.
        allowed: Allowed,
    },
    /// No Klarna account and no `--simulator`.
    #[error(
        "no Klarna account configured: missing {0}. Set them (or configure [accounts.<name>] in \
         the --config file), or run with --simulator for a demo against the built-in Klarna simulator"
    )]
    MissingCredentials(String),
    /// Authentication is configured in a way that would expose the gateway.
    #[error("authentication: {0}")]
    Auth(String),
    /// An account is configured wrongly.
    #[error("account {account:?}: {problem}")]
    Account {
        /// The account name.
        account: String,
        /// What is wrong.
        problem: String,
    },
}

/// Settings as read from the file, the environment and the flags, before secrets are
/// resolved. [`load_settings`] and [`resolve`] refuse values outside what [`SETTINGS`]
/// allows, so code reading a loaded `Settings` need not clamp; one built by hand (tests) is
/// used as is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Admin HTTP listen address (`/healthz`, `/readyz`, `/metrics`).
    pub admin_listen: SocketAddr,
    /// Where the gateway keeps its data.
    pub data_dir: PathBuf,
    /// Run an in-process Klarna simulator with demo orders instead of real accounts.
    pub simulator: bool,
    /// Timeout of one Klarna HTTP attempt, in milliseconds.
    pub klarna_attempt_timeout_ms: u64,
    /// Lease of a claimed operation, in seconds; renewed while the operation runs.
    pub lease_secs: u64,
    /// The caller's deadline when it sets none, in milliseconds.
    pub default_deadline_ms: u64,
    /// How long Klarna's idempotency memory is trusted, in seconds: pending operations older
    /// than this are matched on the order instead of being resent. Klarna keeps keys 24 h.
    pub klarna_idempotency_window_secs: u64,
    /// How often the reconciler looks for unresolved operations, in milliseconds.
    pub reconcile_interval_ms: u64,
    /// How many unresolved operations the reconciler resolves at once.
    pub reconcile_parallelism: usize,
    /// The most `refundgateway.*` calls taken at once, server-wide; beyond it, calls are shed.
    pub max_concurrent_rpcs: usize,
    /// Of those, the most served at once; the others wait their turn in order of arrival.
    pub max_running_rpcs: usize,
    /// The shortest deadline a money movement is attempted with, in milliseconds.
    pub min_deadline_ms: u64,
    /// The largest request message decoded, in bytes.
    pub max_message_bytes: usize,
    /// How long completed operations are kept, in days (audit events are kept forever).
    pub retention_days: u64,
    /// The async runtime's worker threads (see [`worker_threads`]).
    pub worker_threads: WorkerThreads,
    /// Log format: `json` (default) or `text`.
    pub log_format: LogFormat,
    /// Where Klarna's webhooks arrive (`POST /webhooks/klarna`); read it through
    /// [`Settings::webhook_address`], which applies the simulator's default.
    pub webhook_listen: WebhookListen,
    /// How callers authenticate: bearer tokens of the callers file, or (loopback only) not.
    pub auth: AuthMode,
    /// The callers file (TOML, `[[caller]]` tables).
    pub callers_file: Option<PathBuf>,
    /// TLS on the gRPC port: the PEM certificate chain.
    pub tls_cert_file: Option<PathBuf>,
    /// TLS on the gRPC port: the PEM private key.
    pub tls_key_file: Option<PathBuf>,
    /// With it, client certificates issued by this CA (PEM) are required on the gRPC port.
    pub tls_client_ca_file: Option<PathBuf>,
    /// Klarna accounts by name.
    pub accounts: BTreeMap<String, AccountSettings>,
    /// Keys Klarna signs webhooks with, by id; several at once while keys rotate.
    pub webhook_signing_keys: Vec<WebhookKeySettings>,
    /// Stores (`[[store]]`): a store's country and account, for routing.
    pub store: Vec<StoreSettings>,
    /// Routes (`[[route]]`), tried in order when a request names no account.
    pub route: Vec<RouteSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            data_dir: PathBuf::from("./var"),
            simulator: false,
            klarna_attempt_timeout_ms: 10_000,
            lease_secs: 30,
            default_deadline_ms: 30_000,
            klarna_idempotency_window_secs: 23 * 3600,
            reconcile_interval_ms: 10_000,
            reconcile_parallelism: 8,
            max_concurrent_rpcs: 2048,
            max_running_rpcs: 512,
            min_deadline_ms: 200,
            max_message_bytes: 4 * 1024 * 1024,
            retention_days: 30,
            worker_threads: WorkerThreads::Auto,
            log_format: LogFormat::Json,
            webhook_listen: WebhookListen::Unset,
            auth: AuthMode::Callers,
            callers_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            accounts: BTreeMap::new(),
            webhook_signing_keys: Vec::new(),
            store: Vec::new(),
            route: Vec::new(),
        }
    }
}

impl Settings {
    /// Where the webhook listener binds, `None` for no listener: the address set, or with
    /// `--simulator` and nothing set the demo's (`127.0.0.1:9465`). `off` is off with the
    /// simulator too.
    pub fn webhook_address(&self) -> Option<SocketAddr> {
        match self.webhook_listen {
            WebhookListen::At(address) => Some(address),
            WebhookListen::Off => None,
            WebhookListen::Unset => self.simulator.then_some(crate::demo::WEBHOOK_LISTEN),
        }
    }

    /// Checks every setting against what [`SETTINGS`] allows; the error names the first
    /// setting out of range, its value and the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for setting in SETTINGS {
            if let (Allowed::Range { min, max, .. }, Value::Number(value)) =
                (setting.allowed, (setting.value)(self))
                && !(min..=max).contains(&value)
            {
                return Err(ConfigError::OutOfRange {
                    setting: setting.key,
                    value,
                    allowed: setting.allowed,
                });
            }
        }
        Ok(())
    }

    /// Timeout of one Klarna HTTP attempt (`klarna_attempt_timeout_ms`).
    pub fn klarna_attempt_timeout(&self) -> Duration {
        Duration::from_millis(self.klarna_attempt_timeout_ms)
    }

    /// Lease of a claimed operation (`lease_secs`).
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }

    /// The caller's deadline when it sets none (`default_deadline_ms`).
    pub fn default_deadline(&self) -> Duration {
        Duration::from_millis(self.default_deadline_ms)
    }

    /// How long Klarna's idempotency memory is trusted (`klarna_idempotency_window_secs`).
    pub fn klarna_idempotency_window(&self) -> Duration {
        Duration::from_secs(self.klarna_idempotency_window_secs)
    }

    /// The shortest deadline a money movement is attempted with (`min_deadline_ms`).
    pub fn min_deadline(&self) -> Duration {
        Duration::from_millis(self.min_deadline_ms)
    }

    /// How often the reconciler looks for unresolved operations (`reconcile_interval_ms`).
    pub fn reconcile_interval(&self) -> Duration {
        Duration::from_millis(self.reconcile_interval_ms)
    }

    /// How long completed operations are kept (`retention_days`).
    pub fn retention(&self) -> Duration {
        // Saturating so that a hand-built, unvalidated value cannot overflow here.
        Duration::from_secs(self.retention_days.saturating_mul(86_400))
    }
}

/// How many worker threads the async runtime gets: `auto` (see [`worker_threads`]) or a
/// count from 1 to [`WorkerThreads::MAX`]. Written as `"auto"` or a number in the file, as
/// text in the environment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WorkerThreadsText", into = "WorkerThreadsText")]
pub enum WorkerThreads {
    /// Chosen from the cores and the store.
    #[default]
    Auto,
    /// This many.
    Count(usize),
}

impl WorkerThreads {
    /// The most worker threads that may be set.
    pub const MAX: usize = 1024;
    /// The values it accepts, as [`Allowed::Form`] states them.
    const FORM: &'static str = "auto, or 1 to 1024";
}

impl fmt::Display for WorkerThreads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Count(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for WorkerThreads {
    type Err = String;

    /// Reads `auto` or a count from 1 to [`WorkerThreads::MAX`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            return Ok(Self::Auto);
        }
        match s.parse::<usize>() {
            Ok(n) if (1..=Self::MAX).contains(&n) => Ok(Self::Count(n)),
            _ => Err(format!("expected {}", Self::FORM)),
        }
    }
}

/// [`WorkerThreads`] as the file writes it: a number or text.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum WorkerThreadsText {
    Count(u64),
    Text(String),
}

impl TryFrom<WorkerThreadsText> for WorkerThreads {
    type Error = String;

    fn try_from(value: WorkerThreadsText) -> Result<Self, Self::Error> {
        match value {
            WorkerThreadsText::Count(n) => n.to_string().parse(),
            WorkerThreadsText::Text(text) => text.parse(),
        }
    }
}

impl From<WorkerThreads> for WorkerThreadsText {
    fn from(threads: WorkerThreads) -> Self {
        match threads {
            WorkerThreads::Auto => Self::Text("auto".to_owned()),
            WorkerThreads::Count(n) => Self::Count(u64::try_from(n).unwrap_or(u64::MAX)),
        }
    }
}

/// How callers authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Bearer tokens of the callers file (the default).
    Callers,
    /// None: every caller is `anonymous` with every permission. Development only, and only
    /// when every listen address is loopback.
    None,
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Callers => "callers",
            Self::None => "none",
        })
    }
}

impl FromStr for AuthMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "callers" => Ok(Self::Callers),
            "none" => Ok(Self::None),
            _ => Err("expected callers or none".into()),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for log pipelines.
    Json,
    /// Human-readable lines.
    Text,
}

impl fmt::Display for LogFormat {
    /// Writes the format as the TOML file and `--log-format` spell it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Json => "json",
            Self::Text => "text",
        })
    }
}

impl FromStr for LogFormat {
    type Err = String;

    /// Reads `json` or `text`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            _ => Err("expected json or text".into()),
        }
    }
}

/// One setting as operators see it: where it is set and what it accepts. Its default is its
/// value in [`Settings::default`].
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Its key in the TOML file, also its name in error messages.
    pub key: &'static str,
    /// Its command-line flag, if it has one.
    pub flag: Option<&'static str>,
    /// Its environment variable, if it has one (every flag has one).
    pub env: Option<&'static str>,
    /// What it sets, for `--help`.
    pub description: &'static str,
    /// The values it accepts.
    pub allowed: Allowed,
    /// Reads it from settings.
    value: fn(&Settings) -> Value,
    /// Sets it in settings from text (an environment variable's value); ranges are checked
    /// later, by [`Settings::validate`].
    parse: fn(&mut Settings, &str) -> Result<(), String>,
}

impl Setting {
    /// Its default, as written in the TOML file.
    pub fn default_value(&self) -> String {
        (self.value)(&Settings::default()).to_string()
    }

    /// Its description in `--help`, with its default and any range.
    fn help(&self) -> String {
        let mut help = format!("{} [default: {}]", self.description, self.default_value());
        if let Allowed::Range { .. } = self.allowed {
            help.push_str(&format!(" [allowed: {}]", self.allowed));
        }
        help
    }
}

/// The values a setting accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// A value of the form described, checked when it is read.
    Form(&'static str),
    /// A whole number from `min` to `max`, both included.
    Range {
        /// The smallest value allowed.
        min: u64,
        /// The largest value allowed.
        max: u64,
        /// What the number counts.
        unit: Unit,
    },
}

impl fmt::Display for Allowed {
    /// Writes the form, or the range with its unit, e.g. `1 to 3600 s (1 s to 1 h)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Form(form) => f.write_str(form),
            Self::Range { min, max, unit } => {
                write!(f, "{min} to {max}")?;
                match unit {
                    Unit::Count => Ok(()),
                    Unit::Days => f.write_str(" days"),
                    Unit::Millis => write!(f, " ms ({} to {})", human_ms(min), human_ms(max)),
                    Unit::Seconds => write!(
                        f,
                        " s ({} to {})",
                        human_ms(min.saturating_mul(1000)),
                        human_ms(max.saturating_mul(1000))
                    ),
                }
            }
        }
    }
}

/// What the number of a [`Allowed::Range`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Milliseconds.
    Millis,
    /// Seconds.
    Seconds,
    /// Days.
    Days,
    /// Things (operations, connections).
    Count,
}

/// A duration in the largest unit that states it exactly: `600000` → `10 min`.
fn human_ms(ms: u64) -> String {
    for (size, unit) in [(3_600_000, "h"), (60_000, "min"), (1000, "s")] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{} {unit}", ms / size);
        }
    }
    format!("{ms} ms")
}

/// A setting's value as written in the TOML file.
enum Value {
    Number(u64),
    Text(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Text(t) => f.write_str(t),
        }
    }
}

/// Parses `text` into `slot`.
fn set<T: FromStr>(slot: &mut T, text: &str) -> Result<(), String>
where
    T::Err: fmt::Display,
{
    *slot = text.parse().map_err(|e: T::Err| e.to_string())?;
    Ok(())
}

/// Every setting, in the order `--help` and the README list them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "listen",
        flag: Some("--listen"),
        env: Some("REFUND_GATEWAY_LISTEN"),
        description: "gRPC listen address",
        allowed: Allowed::Form("host:port"),
        value: |s| Value::Text(s.listen.to_string()),
        parse: |s, t| set(&mut s.listen, t),
    },
    Setting {
        key: "admin_listen",
        flag: Some("--admin-listen"),
        env: Some("REFUND_GATEWAY_ADMIN_LISTEN"),
        description: "Admin HTTP listen address for /healthz, /readyz and /metrics",
        allowed: Allowed::Form("host:port"),
        value: |s| Value::Text(s.admin_listen.to_string()),
        parse: |s, t| set(&mut s.admin_listen, t),
    },
    Setting {
        key: "data_dir",
        flag: Some("--data-dir"),
        env: Some("REFUND_GATEWAY_DATA_DIR"),
        description: "Directory for the gateway's data",
        allowed: Allowed::Form("a directory"),
        value: |s| Value::Text(s.data_dir.display().to_string()),
        parse: |s, t| set(&mut s.data_dir, t),
    },
    Setting {
        key: "simulator",
        flag: Some("--simulator"),
        env: Some("REFUND_GATEWAY_SIMULATOR"),
        description: "Run against an in-process Klarna simulator seeded with demo orders (fixed \
                      ids, see the README). For demos and local exploration; never falls back \
                      to it silently",
        allowed: Allowed::Form("true or false"),
        value: |s| Value::Text(s.simulator.to_string()),
        parse: |s, t| set(&mut s.simulator, t),
    },
    Setting {
        key: "webhook_listen",
        flag: Some("--webhook-listen"),
        env: Some("REFUND_GATEWAY_WEBHOOK_LISTEN"),
        description: "Listen address for Klarna's webhooks (POST /webhooks/klarna), the one \
                      port exposed to Klarna; off unless set (127.0.0.1:9465 with --simulator)",
        allowed: Allowed::Form("host:port, or off"),
        value: |s| {
            Value::Text(
                s.webhook_address()
                    .map_or_else(|| "off".to_owned(), |a| a.to_string()),
            )
        },
        parse: |s, t| set(&mut s.webhook_listen, t),
    },
    Setting {
        key: "auth",
        flag: Some("--auth"),
        env: Some("REFUND_GATEWAY_AUTH"),
        description: "How callers authenticate: bearer tokens of the callers file, or none \
                      (development only: every caller is anonymous with every permission; \
                      allowed only when every listen address is loopback; --simulator without a \
                      callers file implies it)",
        allowed: Allowed::Form("callers or none"),
        value: |s| Value::Text(s.auth.to_string()),
        parse: |s, t| set(&mut s.auth, t),
    },
    Setting {
        key: "callers_file",
        flag: Some("--callers-file"),
        env: Some("REFUND_GATEWAY_CALLERS_FILE"),
        description: "The callers file: one [[caller]] table per calling service (token hash, \
                      RPCs, Klarna accounts, caps); re-read on SIGHUP and when it changes",
        allowed: Allowed::Form("a TOML file"),
        value: |s| {
            Value::Text(
                s.callers_file
                    .as_ref()
                    .map_or_else(|| "off".to_owned(), |p| p.display().to_string()),
            )
        },
        parse: |s, t| {
            s.callers_file = Some(PathBuf::from(t));
            Ok(())
        },
    },
    Setting {
        key: "tls_cert_file",
        flag: Some("--tls-cert-file"),
        env: Some("REFUND_GATEWAY_TLS_CERT_FILE"),
        description: "TLS on the gRPC port: the certificate chain (with --tls-key-file)",
        allowed: Allowed::Form("a PEM file"),
        value: |s| {
            Value::Text(
                s.tls_cert_file
                    .as_ref()
                    .map_or_else(|| "off".to_owned(), |p| p.display().to_string()),
            )
        },
        parse: |s, t| {
            s.tls_cert_file = Some(PathBuf::from(t));
            Ok(())
        },
    },
    Setting {
        key: "tls_key_file",
        flag: Some("--tls-key-file"),
        env: Some("REFUND_GATEWAY_TLS_KEY_FILE"),
        description: "TLS on the gRPC port: the private key",
        allowed: Allowed::Form("a PEM file"),
        value: |s| {
            Value::Text(
                s.tls_key_file
                    .as_ref()
                    .map_or_else(|| "off".to_owned(), |p| p.display().to_string()),
            )
        },
        parse: |s, t| {
            s.tls_key_file = Some(PathBuf::from(t));
            Ok(())
        },
    },
    Setting {
        key: "tls_client_ca_file",
        flag: Some("--tls-client-ca-file"),
        env: Some("REFUND_GATEWAY_TLS_CLIENT_CA_FILE"),
        description: "Mutual TLS on the gRPC port: client certificates issued by this CA are required",
        allowed: Allowed::Form("a PEM file"),
        value: |s| {
            Value::Text(
                s.tls_client_ca_file
                    .as_ref()
                    .map_or_else(|| "off".to_owned(), |p| p.display().to_string()),
            )
        },
        parse: |s, t| {
            s.tls_client_ca_file = Some(PathBuf::from(t));
            Ok(())
        },
    },
    Setting {
        key: "log_format",
        flag: Some("--log-format"),
        env: Some("REFUND_GATEWAY_LOG_FORMAT"),
        description: "Log format; the level comes from RUST_LOG",
        allowed: Allowed::Form("json or text"),
        value: |s| Value::Text(s.log_format.to_string()),
        parse: |s, t| set(&mut s.log_format, t),
    },
    Setting {
        key: "klarna_attempt_timeout_ms",
        flag: None,
        env: None,
        description: "Timeout of one Klarna HTTP attempt, in milliseconds",
        allowed: Allowed::Range {
            min: 100,
            max: 600_000,
            unit: Unit::Millis,
        },
        value: |s| Value::Number(s.klarna_attempt_timeout_ms),
        parse: |s, t| set(&mut s.klarna_attempt_timeout_ms, t),
    },
    Setting {
        key: "lease_secs",
        flag: None,
        env: None,
        description: "Lease of a claimed operation, in seconds; renewed while it runs",
        allowed: Allowed::Range {
            min: 1,
            max: 3600,
            unit: Unit::Seconds,
        },
        value: |s| Value::Number(s.lease_secs),
        parse: |s, t| set(&mut s.lease_secs, t),
    },
    Setting {
        key: "default_deadline_ms",
        flag: None,
        env: None,
        description: "Deadline of a call whose caller sets none, in milliseconds",
        allowed: Allowed::Range {
            min: 100,
            max: 600_000,
            unit: Unit::Millis,
        },
        value: |s| Value::Number(s.default_deadline_ms),
        parse: |s, t| set(&mut s.default_deadline_ms, t),
    },
    Setting {
        key: "klarna_idempotency_window_secs",
        flag: None,
        env: None,
        description: "How long Klarna's idempotency memory is trusted for resends, in seconds \
                      (Klarna keeps keys 24 h)",
        allowed: Allowed::Range {
            min: 60,
            max: 86_400,
            unit: Unit::Seconds,
        },
        value: |s| Value::Number(s.klarna_idempotency_window_secs),
        parse: |s, t| set(&mut s.klarna_idempotency_window_secs, t),
    },
    Setting {
        key: "reconcile_interval_ms",
        flag: None,
        env: None,
        description: "How often the reconciler looks for unresolved operations, in milliseconds",
        allowed: Allowed::Range {
            min: 10,
            max: 3_600_000,
            unit: Unit::Millis,
        },
        value: |s| Value::Number(s.reconcile_interval_ms),
        parse: |s, t| set(&mut s.reconcile_interval_ms, t),
    },
    Setting {
        key: "reconcile_parallelism",
        flag: None,
        env: None,
        description: "How many unresolved operations the reconciler resolves at once",
        allowed: Allowed::Range {
            min: 1,
            max: 256,
            unit: Unit::Count,
        },
        value: |s| Value::Number(u64::try_from(s.reconcile_parallelism).unwrap_or(u64::MAX)),
        parse: |s, t| set(&mut s.reconcile_parallelism, t),
    },
    Setting {
        key: "max_concurrent_rpcs",
        flag: None,
        env: None,
        description: "The most refundgateway calls taken at once, server-wide; one more is \
                      refused at once (RESOURCE_EXHAUSTED OVERLOADED), health checks excepted",
        allowed: Allowed::Range {
            min: 1,
            max: 1_000_000,
            unit: Unit::Count,
        },
        value: |s| Value::Number(u64::try_from(s.max_concurrent_rpcs).unwrap_or(u64::MAX)),
        parse: |s, t| set(&mut s.max_concurrent_rpcs, t),
    },
    Setting {
        key: "max_running_rpcs",
        flag: None,
        env: None,
        description: "Of those, the most served at once; the others wait their turn, in order \
                      of arrival and within their deadlines, holding only their requests",
        allowed: Allowed::Range {
            min: 1,
            max: 1_000_000,
            unit: Unit::Count,
        },
        value: |s| Value::Number(u64::try_from(s.max_running_rpcs).unwrap_or(u64::MAX)),
        parse: |s, t| set(&mut s.max_running_rpcs, t),
    },
    Setting {
        key: "min_deadline_ms",
        flag: None,
        env: None,
        description: "The shortest caller deadline a money movement is attempted with; a \
                      shorter one is refused before anything is stored (DEADLINE_EXCEEDED)",
        allowed: Allowed::Range {
            min: 10,
            max: 60_000,
            unit: Unit::Millis,
        },
        value: |s| Value::Number(s.min_deadline_ms),
        parse: |s, t| set(&mut s.min_deadline_ms, t),
    },
    Setting {
        key: "max_message_bytes",
        flag: None,
        env: None,
        description: "The largest request message decoded (RESOURCE_EXHAUSTED above it)",
        allowed: Allowed::Range {
            min: 1024,
            max: 64 * 1024 * 1024,
            unit: Unit::Count,
        },
        value: |s| Value::Number(u64::try_from(s.max_message_bytes).unwrap_or(u64::MAX)),
        parse: |s, t| set(&mut s.max_message_bytes, t),
    },
    Setting {
        key: "retention_days",
        flag: None,
        env: None,
        description: "How long completed operations are kept, in days (audit events are kept \
                      forever)",
        allowed: Allowed::Range {
            min: 1,
            max: 3650,
            unit: Unit::Days,
        },
        value: |s| Value::Number(s.retention_days),
        parse: |s, t| set(&mut s.retention_days, t),
    },
    Setting {
        key: "worker_threads",
        flag: None,
        env: Some("REFUND_GATEWAY_WORKER_THREADS"),
        description: "The async runtime's worker threads; auto: one per core, less one with the \
                      embedded SQLite store (for its writer thread), at least one",
        allowed: Allowed::Form(WorkerThreads::FORM),
        value: |s| Value::Text(s.worker_threads.to_string()),
        parse: |s, t| set(&mut s.worker_threads, t),
    },
];

/// An environment variable that is not a setting of [`SETTINGS`].
#[derive(Debug, Clone, Copy)]
pub struct Variable {
    /// Its name.
    pub name: &'static str,
    /// What it sets, for `--help`.
    pub description: &'static str,
}

/// The environment variables read besides those of [`SETTINGS`] and `REFUND_GATEWAY_CONFIG`.
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "KLARNA_API_URL",
        description: "Base URL of the account `default` (https; plain http only on loopback \
                      unless KLARNA_ALLOW_PLAIN_HTTP=true)",
    },
    Variable {
        name: "KLARNA_REGION",
        description: "Instead of KLARNA_API_URL: eu, na or oc, with KLARNA_ENVIRONMENT",
    },
    Variable {
        name: "KLARNA_ENVIRONMENT",
        description: "playground or live, with KLARNA_REGION",
    },
    Variable {
        name: "KLARNA_USERNAME",
        description: "API username of the account `default`",
    },
    Variable {
        name: "KLARNA_PASSWORD",
        description: "API password of the account `default`",
    },
    Variable {
        name: "KLARNA_API_KEY",
        description: "Instead of KLARNA_USERNAME and KLARNA_PASSWORD: an API key of the account \
                      `default` (klarna_live_api_… or klarna_test_api_…), sent as the whole \
                      Basic credential",
    },
    Variable {
        name: "KLARNA_CA_FILE",
        description: "PEM certificates of a private CA the account `default` trusts",
    },
    Variable {
        name: "KLARNA_ALLOW_PLAIN_HTTP",
        description: "true: KLARNA_API_URL and KLARNA_PARTNER_API_URL may be plain http to a \
                      host that is not loopback; the credentials then cross the network in \
                      clear [default: false]",
    },
    Variable {
        name: "KLARNA_PARTNER_API_URL",
        description: "Base URL of the partner account `partner` (Payments API)",
    },
    Variable {
        name: "KLARNA_PARTNER_API_KEY",
        description: "API key of the account `partner`, sent as the Basic credential",
    },
    Variable {
        name: "KLARNA_PARTNER_ACCOUNT_ID",
        description: "Partner account id of the account `partner` (paths under \
                      /v2/accounts/{id})",
    },
    Variable {
        name: "KLARNA_PARTNER_CLIENT_CERT_FILE",
        description: "PEM client certificate of the account `partner` for mutual TLS (with \
                      KLARNA_PARTNER_CLIENT_KEY_FILE)",
    },
    Variable {
        name: "KLARNA_PARTNER_CLIENT_KEY_FILE",
        description: "PEM private key of that client certificate",
    },
    Variable {
        name: "KLARNA_PARTNER_CA_FILE",
        description: "PEM certificates of a private CA the account `partner` trusts",
    },
    Variable {
        name: "KLARNA_WEBHOOK_SECRET",
        description: "Webhook signing secret accepted for any Klarna-Signing-Key-Id (or \
                      [[webhook_signing_keys]] in the --config file, by id)",
    },
    Variable {
        name: "REDIS_URL",
        description: "Redis (redis://...) through which every replica shares each account's \
                      limit of requests to Klarna; unset: each replica limits alone",
    },
    Variable {
        name: "DATABASE_URL",
        description: "PostgreSQL operation store (postgres://...), shared by replicas; unset: \
                      SQLite file refund-gateway.sqlite3 in the data directory",
    },
    Variable {
        name: "RUST_LOG",
        description: "Log level filter [default: info]",
    },
];

/// gRPC refund gateway for Klarna.
///
/// Klarna credentials come from the environment (KLARNA_USERNAME and KLARNA_PASSWORD, or
/// KLARNA_API_KEY; and KLARNA_API_URL, or KLARNA_REGION=eu|na|oc +
/// KLARNA_ENVIRONMENT=playground|live; for the account named `default`) or from
/// [accounts.<name>] tables in the --config file, which name the variable or file holding each
/// secret (username_env / username_file and password_env / password_file, or api_key_env /
/// api_key_file). Without any account and without --simulator the gateway refuses to start.
#[derive(Debug, Parser)]
#[command(
    name = "refund-gateway",
    version,
    about,
    long_about,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// TOML configuration file (settings, [accounts.<name>] tables).
    #[arg(long, env = "REFUND_GATEWAY_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,

    // The help and environment variable of these flags come from SETTINGS, in `command`.
    #[arg(long)]
    simulator: bool,
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<SocketAddr>,
    #[arg(long, value_name = "HOST:PORT")]
    admin_listen: Option<SocketAddr>,
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long, value_name = "HOST:PORT")]
    webhook_listen: Option<WebhookListen>,
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    #[arg(long, value_enum)]
    auth: Option<AuthMode>,
    #[arg(long, value_name = "PATH")]
    callers_file: Option<PathBuf>,
    #[arg(long, value_name = "PATH")]
    tls_cert_file: Option<PathBuf>,
    #[arg(long, value_name = "PATH")]
    tls_key_file: Option<PathBuf>,
    #[arg(long, value_name = "PATH")]
    tls_client_ca_file: Option<PathBuf>,

    /// Without a command, the gateway runs.
    #[command(subcommand)]
    command: Option<Command>,
}

/// What `refund-gateway` runs instead of the gateway.
// Parsed once per process: the size of the `ops` flags beside the small `check-config` ones
// costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Operator commands against a running gateway: what needs attention, one operation,
    /// settling one, reconciliation. Reads no gateway configuration.
    #[command(
        after_help = "Exit status: 0 on success; 1 when the call fails (its gRPC code, message \
                      and details on stderr); 2 on a usage error."
    )]
    Ops(crate::ops_cli::OpsArgs),
    /// Checks the configuration and each account's credentials, before a deploy.
    ///
    /// Loads the configuration as the gateway does (the --config file, the environment and
    /// the flags given before `check-config`, e.g. `refund-gateway --config gateway.toml
    /// check-config`), resolves every secret, checks the stores, routes and callers file, and
    /// each account's credentials with one read-only call (none with --offline). Prints the
    /// accounts, secrets (where each comes from, never its value), stores, routes, callers and
    /// webhook signing keys, then the problems found.
    #[command(
        name = "check-config",
        after_help = "Exit status: 0 when no problem was found; 1 when the configuration does \
                      not load or resolve, a store or route names an unknown account, the \
                      callers file is refused, or an account's check fails (Klarna refused \
                      its credentials, or could not be reached); 2 on a usage error."
    )]
    CheckConfig(crate::check_config::CheckConfigArgs),
}

/// Where the webhook listener binds, as set: an address, `off`, or nothing (which
/// [`Settings::webhook_address`] reads as off, or the demo's address with `--simulator`).
/// Written as text (`"host:port"` or `"off"`) in the file, the environment and the flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Option<String>", into = "Option<String>")]
pub enum WebhookListen {
    /// Not set.
    #[default]
    Unset,
    /// `off`: no listener, with or without the simulator.
    Off,
    /// This address.
    At(SocketAddr),
}

impl FromStr for WebhookListen {
    type Err = std::net::AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Self::Off),
            s => s.parse().map(Self::At),
        }
    }
}

impl TryFrom<Option<String>> for WebhookListen {
    type Error = std::net::AddrParseError;

    fn try_from(text: Option<String>) -> Result<Self, Self::Error> {
        text.map_or(Ok(Self::Unset), |t| t.parse())
    }
}

impl From<WebhookListen> for Option<String> {
    fn from(listen: WebhookListen) -> Self {
        match listen {
            WebhookListen::Unset => None,
            WebhookListen::Off => Some("off".to_owned()),
            WebhookListen::At(address) => Some(address.to_string()),
        }
    }
}

impl Cli {
    /// The command given instead of running the gateway, if any; taken out, so what is left
    /// is the gateway's flags.
    pub fn take_command(&mut self) -> Option<Command> {
        self.command.take()
    }

    /// The `--config` file, if one was given (flag or `REFUND_GATEWAY_CONFIG`).
    pub fn config_file(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// Sets in `settings` what the flags (or their environment variables) set. `--simulator`
    /// can only turn the simulator on.
    pub fn apply(&self, settings: &mut Settings) {
        if let Some(a) = self.listen {
            settings.listen = a;
        }
        if let Some(a) = self.admin_listen {
            settings.admin_listen = a;
        }
        if let Some(d) = &self.data_dir {
            settings.data_dir.clone_from(d);
        }
        if let Some(f) = self.log_format {
            settings.log_format = f;
        }
        if let Some(w) = self.webhook_listen {
            settings.webhook_listen = w;
        }
        if let Some(a) = self.auth {
            settings.auth = a;
        }
        if let Some(f) = &self.callers_file {
            settings.callers_file = Some(f.clone());
        }
        for (flag, slot) in [
            (&self.tls_cert_file, &mut settings.tls_cert_file),
            (&self.tls_key_file, &mut settings.tls_key_file),
            (&self.tls_client_ca_file, &mut settings.tls_client_ca_file),
        ] {
            if let Some(f) = flag {
                *slot = Some(f.clone());
            }
        }
        settings.simulator |= self.simulator;
    }
}

/// The command line of `refund-gateway`: [`Cli`], with the help and environment variable of
/// each flag from [`SETTINGS`], and after the options the settings without a flag and the
/// other environment variables.
pub fn command() -> clap::Command {
    Cli::command()
        .mut_args(|arg| {
            let flag = arg.get_long().map(|long| format!("--{long}"));
            match SETTINGS
                .iter()
                .find(|s| s.flag.is_some() && s.flag == flag.as_deref())
            {
                Some(setting) => {
                    let arg = arg.help(format!("{} [TOML: {}]", setting.help(), setting.key));
                    match setting.env {
                        Some(env) => arg.env(env),
                        None => arg,
                    }
                }
                None => arg,
            }
        })
        .after_help(after_help())
}

/// Parses the command line (and the flags' environment variables); on an error or `--help`
/// prints and exits, as clap does.
pub fn parse_args() -> Cli {
    match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    }
}

/// The part of `--help` after the options: settings without a flag, other variables.
fn after_help() -> String {
    let mut help = String::from("Settings without a flag (set them in the --config file):\n");
    let unflagged = || SETTINGS.iter().filter(|s| s.flag.is_none());
    let width = unflagged().map(|s| s.key.len()).max().unwrap_or(0);
    for setting in unflagged() {
        let env = setting
            .env
            .map(|name| format!(" [env: {name}]"))
            .unwrap_or_default();
        help.push_str(&format!(
            "  {:width$}  {}{env}\n",
            setting.key,
            setting.help()
        ));
    }
    help.push_str("\nEnvironment (besides the options' variables):\n");
    let width = VARIABLES.iter().map(|v| v.name.len()).max().unwrap_or(0);
    for variable in VARIABLES {
        help.push_str(&format!(
            "  {:width$}  {}\n",
            variable.name, variable.description
        ));
    }
    help
}

/// One webhook signing key in the file: Klarna's key id and where its secret is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookKeySettings {
    /// Klarna's `Klarna-Signing-Key-Id`, e.g. `krn:partner:global:notification:signing-key:…`.
    pub id: String,
    /// Environment variable holding the secret.
    pub secret_env: Option<String>,
    /// File holding the secret.
    pub secret_file: Option<PathBuf>,
}

/// One `[[store]]`: `id`, and its `country` and `account` (both optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// The merchant's id of the store, as requests send it in `store_id`.
    pub id: String,
    /// ISO 3166-1 alpha-2 country, which routes may match.
    pub country: Option<String>,
    /// The account its requests go to.
    pub account: Option<String>,
}

/// One `[[route]]`: any of `store_id`, `country` (the store's) and `currency` to match, all
/// given having to match, and the `account` to route to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteSettings {
    /// Matches a request naming this store.
    pub store_id: Option<String>,
    /// Matches a request naming a store of this country.
    pub country: Option<String>,
    /// Matches a request in this ISO 4217 currency.
    pub currency: Option<String>,
    /// The account.
    pub account: String,
}

/// The stores and routes of the settings, each value checked; whether their accounts exist
/// is checked against the accounts actually configured ([`crate::gateway::Accounts::with_routing`]).
pub fn routing_tables(settings: &Settings) -> Result<(Vec<Store>, Vec<Route>), ConfigError> {
    fn field<T, E: fmt::Display>(at: String, result: Result<T, E>) -> Result<T, ConfigError> {
        result.map_err(|e| ConfigError::Load(format!("{at}: {e}")))
    }
    fn optional<T, E: fmt::Display>(
        at: String,
        value: Option<&String>,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Result<Option<T>, ConfigError> {
        value.map(|v| field(at, parse(v))).transpose()
    }
    let mut stores = Vec::new();
    for (i, store) in settings.store.iter().enumerate() {
        stores.push(Store {
            id: field(format!("store[{i}].id"), StoreId::parse(&store.id))?,
            country: optional(
                format!("store[{i}].country"),
                store.country.as_ref(),
                CountryCode::parse,
            )?,
            account: store.account.clone().filter(|a| !a.is_empty()),
        });
    }
    let mut routes = Vec::new();
    for (i, route) in settings.route.iter().enumerate() {
        if route.account.is_empty() {
            return Err(ConfigError::Load(format!(
                "route[{i}].account: is required"
            )));
        }
        routes.push(Route {
            store_id: optional(
                format!("route[{i}].store_id"),
                route.store_id.as_ref(),
                StoreId::parse,
            )?,
            country: optional(
                format!("route[{i}].country"),
                route.country.as_ref(),
                CountryCode::parse,
            )?,
            currency: optional(
                format!("route[{i}].currency"),
                route.currency.as_ref(),
                Currency::parse,
            )?,
            account: route.account.clone(),
        });
    }
    Ok((stores, routes))
}

/// The API an account speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// Klarna Order Management (the default).
    #[default]
    OrderManagement,
    /// Klarna's partner Payments API.
    Partner,
}

/// One Klarna account in the file. Order Management: either `api_url`, or `region` +
/// `environment`, and username and password or an API key. Partner (`kind = "partner"`): `api_url`, the API
/// key, `partner_account_id`, and optionally `path_prefix`, `on_behalf_of` and a client
/// certificate for mutual TLS. Either kind: optionally `ca_file` and `allow_plain_http`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountSettings {
    /// `order_management` (default) or `partner`.
    pub kind: AccountKind,
    /// Base URL override: https, or plain http on loopback only unless `allow_plain_http`.
    pub api_url: Option<String>,
    /// Allows `api_url` to be plain http to a host that is not loopback (a private network,
    /// or an egress proxy that originates TLS): the account's credentials then cross the
    /// network in clear, and the gateway says so in a warning at start. Default false.
    pub allow_plain_http: bool,
    /// `eu`, `na` or `oc`.
    pub region: Option<String>,
    /// `playground` or `live`.
    pub environment: Option<String>,
    /// Environment variable holding the API username.
    pub username_env: Option<String>,
    /// File holding the API username.
    pub username_file: Option<PathBuf>,
    /// Environment variable holding the API password.
    pub password_env: Option<String>,
    /// File holding the API password.
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the API key (a partner's; for Order Management, instead
    /// of the username and password).
    pub api_key_env: Option<String>,
    /// File holding the API key (as `api_key_env`).
    pub api_key_file: Option<PathBuf>,
    /// Partner: the partner account id (a KRN) that paths are under.
    pub partner_account_id: Option<String>,
    /// Partner: the path before `/payment/…`; default `/v2/accounts/{partner_account_id}`
    /// (acquiring partners), `/v2` for a direct integration.
    pub path_prefix: Option<String>,
    /// Partner: the account acted for, sent as `Klarna-Partner-Account`.
    pub on_behalf_of: Option<String>,
    /// Partner: PEM client certificate (chain) for mutual TLS.
    pub client_cert_file: Option<PathBuf>,
    /// Partner: PEM private key of the client certificate.
    pub client_key_file: Option<PathBuf>,
    /// PEM certificates of a private CA to trust besides the system's roots (either kind).
    pub ca_file: Option<PathBuf>,
    /// Requests per second sent to Klarna for this account (Klarna's quota is per merchant);
    /// default 200 on Klarna's live hosts, 50 on the playground and test hosts, and no limit
    /// on any other URL (the simulator) unless set.
    pub requests_per_second: Option<u32>,
    /// Burst of that limit; default one second's worth.
    pub burst: Option<u32>,
    /// Each replica's share when the Redis that shares the limit is unreachable; default a
    /// quarter of the limit.
    pub fallback_requests_per_second: Option<u32>,
}

/// A Klarna account ready to use.
#[derive(Debug)]
pub struct Account {
    /// Its name, as callers pass it in `klarna_account`.
    pub name: String,
    /// Where its API lives.
    pub base_url: BaseUrl,
    /// What it speaks, with its credentials.
    pub api: AccountApi,
    /// The limit of requests to Klarna for it (shared through Redis when `REDIS_URL` is set).
    pub rate_limit: Option<OutboundRateLimit>,
    /// Extra PEM root certificates to trust (a private or test CA), from `ca_file`,
    /// `KLARNA_CA_FILE` or `KLARNA_PARTNER_CA_FILE`.
    pub extra_roots: Vec<Vec<u8>>,
}

/// The host of `url` (`scheme://host[:port]/…`), lower case.
fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    host.to_ascii_lowercase()
}

/// The outbound limit of an account at `base_url`: as set, else Klarna's quota on Klarna's
/// own hosts (live 200/s, playground and test 50/s), else none (the simulator, a proxy);
/// shared through `REDIS_URL` when it is set.
fn outbound_limit(
    account: &str,
    base_url: &BaseUrl,
    settings: &AccountSettings,
    env: &dyn Environ,
) -> Result<Option<OutboundRateLimit>, ConfigError> {
    let host = url_host(base_url.as_str());
    let default = (host == "klarna.com" || host.ends_with(".klarna.com")).then(|| {
        let playground = host.contains(".playground.") || host.contains(".test.");
        OutboundRateLimit::klarna_default(if playground {
            Environment::Playground
        } else {
            Environment::Live
        })
    });
    let limit = match settings.requests_per_second {
        Some(rps) => Some(OutboundRateLimit::new(rps)),
        None => default,
    };
    let Some(mut limit) = limit else {
        if settings.burst.is_some() || settings.fallback_requests_per_second.is_some() {
            return Err(ConfigError::Account {
                account: account.to_owned(),
                problem: "burst and fallback_requests_per_second need requests_per_second".into(),
            });
        }
        return Ok(None);
    };
    if let Some(burst) = settings.burst {
        limit.burst = burst;
    }
    // Klarna's quota is per merchant, not per replica: with REDIS_URL every replica shares it.
    if let Some(redis_url) = env.var("REDIS_URL") {
        limit = limit.shared_through(SecretString::from(redis_url), account);
        if let (Some(shared), Some(fallback)) =
            (limit.shared.as_mut(), settings.fallback_requests_per_second)
        {
            shared.fallback_requests_per_second = fallback;
        }
    }
    limit.validate().map_err(|e| ConfigError::Account {
        account: account.to_owned(),
        problem: e.to_string(),
    })?;
    Ok(Some(limit))
}

/// The API of an account, with what it needs.
#[derive(Debug)]
pub enum AccountApi {
    /// Order Management, with its credentials.
    OrderManagement(KlarnaCredentials),
    /// The partner Payments API.
    Partner(PartnerAccount),
}

/// A partner account of the Payments API, resolved.
#[derive(Debug)]
pub struct PartnerAccount {
    /// The API key, sent as the Basic credential.
    pub api_key: SecretString,
    /// The partner account id, matched against webhooks' account ids.
    pub partner_account_id: String,
    /// The path before `/payment/…`.
    pub path_prefix: String,
    /// `Klarna-Partner-Account`, when acting for another account.
    pub on_behalf_of: Option<String>,
    /// Mutual TLS: the PEM certificate chain and private key.
    pub client_identity: Option<ClientIdentity>,
    /// True only for Klarna's live partner URL.
    pub live: bool,
}

/// A webhook signing key: its id (`None`: any id, from `KLARNA_WEBHOOK_SECRET`) and secret.
#[derive(Debug, Clone)]
pub struct WebhookKey {
    /// Klarna's key id, or `None` for a secret accepted under any id.
    pub id: Option<String>,
    /// The secret, as Klarna issued it.
    pub secret: SecretString,
}

/// The configuration `run` takes: settings plus resolved accounts and database.
#[derive(Debug)]
pub struct Config {
    /// The settings.
    pub settings: Settings,
    /// Resolved accounts (empty with `simulator`, which brings its own).
    pub accounts: Vec<Account>,
    /// Webhook signing keys (the simulator brings its own).
    pub webhook_keys: Vec<WebhookKey>,
    /// Stores, for routing.
    pub stores: Vec<Store>,
    /// Routes, in the order they are tried.
    pub routes: Vec<Route>,
    /// How callers authenticate.
    pub auth: AuthSetup,
    /// TLS on the gRPC port, read at start.
    pub grpc_tls: Option<GrpcTls>,
    /// `DATABASE_URL` (PostgreSQL); `None` for the embedded SQLite file under `data_dir`.
    pub database_url: Option<SecretString>,
}

impl Config {
    /// Settings for tests and the demo: defaults with the in-process simulator on, listening
    /// (gRPC, admin and webhooks) on loopback port 0.
    pub fn for_simulator(data_dir: &Path) -> Self {
        Self {
            settings: Settings {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                webhook_listen: WebhookListen::At(SocketAddr::from(([127, 0, 0, 1], 0))),
                data_dir: data_dir.to_path_buf(),
                simulator: true,
                ..Settings::default()
            },
            accounts: Vec::new(),
            webhook_keys: Vec::new(),
            stores: Vec::new(),
            routes: Vec::new(),
            auth: AuthSetup::None,
            grpc_tls: None,
            database_url: None,
        }
    }

    /// Timeout of one Klarna HTTP attempt.
    pub fn klarna_attempt_timeout(&self) -> Duration {
        self.settings.klarna_attempt_timeout()
    }
}

/// Where environment variables come from; a trait so tests need not touch the process
/// environment.
pub trait Environ {
    /// The variable's value, if set and not empty.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl Environ for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// Loads settings: defaults, then the TOML file (if any), then the environment variables of
/// [`SETTINGS`], and validates them. Command-line flags are applied by the caller on the
/// result; [`resolve`] validates again.
pub fn load_settings(file: Option<&Path>, env: &dyn Environ) -> Result<Settings, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(Settings::default()));
    if let Some(file) = file {
        if !file.exists() {
            return Err(ConfigError::Load(format!(
                "config file {} does not exist",
                file.display()
            )));
        }
        figment = figment.merge(Toml::file(file));
    }
    let mut settings: Settings = figment
        .extract()
        .map_err(|e| ConfigError::Load(e.to_string()))?;
    for setting in SETTINGS {
        let Some(name) = setting.env else { continue };
        if let Some(text) = env.var(name) {
            (setting.parse)(&mut settings, &text).map_err(|problem| {
                ConfigError::Load(format!(
                    "{name}={text:?} is not valid for {} ({}): {problem}",
                    setting.key, setting.allowed
                ))
            })?;
        }
    }
    settings.validate()?;
    Ok(settings)
}

/// The async runtime's worker threads: `worker_threads` when set, else (`auto`) one per core
/// (`cores`), less one when operations are stored in the embedded SQLite file (no
/// `DATABASE_URL`), and at least one.
///
/// The SQLite store commits on a thread of its own, busy under load: a worker on every core
/// competes with it, and at low load each hand-off to it and back wakes a second, idle worker
/// to look for work the first already has. See docs/architecture.md, "Runtime workers".
pub fn worker_threads(settings: &Settings, env: &dyn Environ, cores: usize) -> usize {
    match settings.worker_threads {
        WorkerThreads::Count(n) => n,
        WorkerThreads::Auto if env.var("DATABASE_URL").is_none() => cores.saturating_sub(1).max(1),
        WorkerThreads::Auto => cores.max(1),
    }
}

/// Resolves the accounts: those of the file, plus `default` from `KLARNA_*` variables when
/// `KLARNA_USERNAME`, `KLARNA_PASSWORD`, `KLARNA_API_KEY`, `KLARNA_API_URL` or
/// `KLARNA_REGION` is set. With `simulator` no account is needed.
/// Refuses settings out of range first, as [`Settings::validate`].
pub fn resolve(settings: Settings, env: &dyn Environ) -> Result<Config, ConfigError> {
    settings.validate()?;
    let mut accounts = Vec::new();
    for (name, account) in &settings.accounts {
        accounts.push(resolve_account(name, account, env, PlainHttpOptIn::File)?);
    }
    let from_env = [
        "KLARNA_USERNAME",
        "KLARNA_PASSWORD",
        "KLARNA_API_KEY",
        "KLARNA_API_URL",
        "KLARNA_REGION",
    ]
    .iter()
    .any(|v| env.var(v).is_some());
    if from_env && !settings.accounts.contains_key(DEFAULT_ACCOUNT) {
        accounts.push(env_account(env)?);
    }
    let partner_from_env = PARTNER_VARIABLES.iter().any(|v| env.var(v).is_some());
    if partner_from_env && !settings.accounts.contains_key(PARTNER_ACCOUNT) {
        accounts.push(env_partner_account(env)?);
    }
    let webhook_keys = webhook_keys(&settings, env)?;
    if accounts.is_empty() && !settings.simulator {
        return Err(ConfigError::MissingCredentials(
            "KLARNA_USERNAME, KLARNA_PASSWORD and KLARNA_API_URL (or KLARNA_REGION + KLARNA_ENVIRONMENT)"
                .into(),
        ));
    }
    let (stores, routes) = routing_tables(&settings)?;
    let auth = auth_setup(&settings)?;
    let grpc_tls = grpc_tls(&settings)?;
    let database_url = env.var("DATABASE_URL").map(SecretString::from);
    Ok(Config {
        settings,
        accounts,
        webhook_keys,
        stores,
        routes,
        auth,
        grpc_tls,
        database_url,
    })
}

/// TLS on the gRPC port: PEM files, read.
#[derive(Clone)]
pub struct GrpcTls {
    /// The certificate chain.
    pub cert_pem: Vec<u8>,
    /// The private key.
    pub key_pem: SecretString,
    /// Client certificates issued by this CA are required, when set.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for GrpcTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcTls")
            .field(
                "client_certificates_required",
                &self.client_ca_pem.is_some(),
            )
            .finish_non_exhaustive()
    }
}

/// TLS of the gRPC port from the settings: the certificate and key both or neither; a client
/// CA only with them.
fn grpc_tls(settings: &Settings) -> Result<Option<GrpcTls>, ConfigError> {
    let read = |what: &str, path: &Path| {
        std::fs::read(path)
            .map_err(|e| ConfigError::Load(format!("{what} {}: {e}", path.display())))
    };
    match (&settings.tls_cert_file, &settings.tls_key_file) {
        (None, None) => {
            if settings.tls_client_ca_file.is_some() {
                return Err(ConfigError::Load(
                    "tls_client_ca_file needs tls_cert_file and tls_key_file".into(),
                ));
            }
            Ok(None)
        }
        (Some(cert), Some(key)) => Ok(Some(GrpcTls {
            cert_pem: read("tls_cert_file", cert)?,
            key_pem: SecretString::from(
                String::from_utf8(read("tls_key_file", key)?)
                    .map_err(|_| ConfigError::Load("tls_key_file is not PEM text".into()))?,
            ),
            client_ca_pem: match &settings.tls_client_ca_file {
                Some(ca) => Some(read("tls_client_ca_file", ca)?),
                None => None,
            },
        })),
        _ => Err(ConfigError::Load(
            "TLS needs both tls_cert_file and tls_key_file (REFUND_GATEWAY_TLS_CERT_FILE, \
             REFUND_GATEWAY_TLS_KEY_FILE)"
                .into(),
        )),
    }
}

/// How callers authenticate, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSetup {
    /// Off: every caller is `anonymous`, with every permission (loopback only).
    None,
    /// Bearer tokens of this callers file.
    CallersFile(PathBuf),
}

/// Authentication as the settings ask, refused when it would expose the gateway: `none` only
/// when every listen address is loopback; otherwise a callers file is required. `--simulator`
/// without a callers file means `none` (on loopback).
fn auth_setup(settings: &Settings) -> Result<AuthSetup, ConfigError> {
    if settings.auth == AuthMode::Callers
        && let Some(file) = &settings.callers_file
    {
        return Ok(AuthSetup::CallersFile(file.clone()));
    }
    if settings.auth == AuthMode::Callers && !settings.simulator {
        return Err(ConfigError::Auth(
            "no callers file: set REFUND_GATEWAY_CALLERS_FILE (or callers_file, --callers-file); \
             REFUND_GATEWAY_AUTH=none turns authentication off, for development on loopback only"
                .into(),
        ));
    }
    let exposed: Vec<String> = [
        ("listen", Some(settings.listen)),
        ("admin_listen", Some(settings.admin_listen)),
        ("webhook_listen", settings.webhook_address()),
    ]
    .into_iter()
    .filter_map(|(key, addr)| {
        addr.filter(|a| !a.ip().is_loopback())
            .map(|a| format!("{key} = {a}"))
    })
    .collect();
    if !exposed.is_empty() {
        return Err(ConfigError::Auth(format!(
            "authentication is off (REFUND_GATEWAY_AUTH=none or --simulator without a callers \
             file), which is allowed only when every listen address is loopback; not loopback: {}",
            exposed.join(", ")
        )));
    }
    Ok(AuthSetup::None)
}

/// The variables that make the partner account `partner`.
const PARTNER_VARIABLES: [&str; 6] = [
    "KLARNA_PARTNER_API_URL",
    "KLARNA_PARTNER_API_KEY",
    "KLARNA_PARTNER_ACCOUNT_ID",
    "KLARNA_PARTNER_CLIENT_CERT_FILE",
    "KLARNA_PARTNER_CLIENT_KEY_FILE",
    "KLARNA_PARTNER_CA_FILE",
];

fn env_partner_account(env: &dyn Environ) -> Result<Account, ConfigError> {
    let missing: Vec<&str> = PARTNER_VARIABLES[..3]
        .iter()
        .copied()
        .filter(|v| env.var(v).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(ConfigError::MissingCredentials(missing.join(", ")));
    }
    let settings = AccountSettings {
        kind: AccountKind::Partner,
        api_url: env.var("KLARNA_PARTNER_API_URL"),
        api_key_env: Some("KLARNA_PARTNER_API_KEY".to_owned()),
        partner_account_id: env.var("KLARNA_PARTNER_ACCOUNT_ID"),
        client_cert_file: env
            .var("KLARNA_PARTNER_CLIENT_CERT_FILE")
            .map(PathBuf::from),
        client_key_file: env.var("KLARNA_PARTNER_CLIENT_KEY_FILE").map(PathBuf::from),
        ca_file: env.var("KLARNA_PARTNER_CA_FILE").map(PathBuf::from),
        allow_plain_http: env_allow_plain_http(env)?,
        ..AccountSettings::default()
    };
    resolve_account(PARTNER_ACCOUNT, &settings, env, PlainHttpOptIn::Environment)
}

/// `KLARNA_ALLOW_PLAIN_HTTP`, for the accounts of the `KLARNA_*` variables: `true` or
/// `false`, as every other boolean variable; unset means false.
fn env_allow_plain_http(env: &dyn Environ) -> Result<bool, ConfigError> {
    let Some(text) = env.var("KLARNA_ALLOW_PLAIN_HTTP") else {
        return Ok(false);
    };
    text.parse().map_err(|_| {
        ConfigError::Load(format!(
            "KLARNA_ALLOW_PLAIN_HTTP={text:?} is not valid: expected true or false"
        ))
    })
}

/// Where an account allows plain http off loopback, named when a URL is refused for want of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlainHttpOptIn {
    /// `allow_plain_http` of an account of the file.
    File,
    /// `KLARNA_ALLOW_PLAIN_HTTP`, for the accounts of the `KLARNA_*` variables.
    Environment,
}

impl PlainHttpOptIn {
    fn setting(self) -> &'static str {
        match self {
            Self::File => "allow_plain_http = true in the account",
            Self::Environment => "KLARNA_ALLOW_PLAIN_HTTP=true",
        }
    }
}

/// An account's `api_url`: https, or plain http on loopback only unless `allow_plain_http`.
/// Refused for want of the opt-in, the error names it.
fn parse_api_url(
    account: &str,
    url: &str,
    allow_plain_http: bool,
    opt_in: PlainHttpOptIn,
) -> Result<BaseUrl, ConfigError> {
    let plain_http = if allow_plain_http {
        PlainHttp::Anywhere
    } else {
        PlainHttp::LoopbackOnly
    };
    BaseUrl::parse_with(url, plain_http).map_err(|e| {
        let hint = if !allow_plain_http && BaseUrl::parse_with(url, PlainHttp::Anywhere).is_ok() {
            format!(
                "; if this host is meant to be reached over plain http (a private network, or \
                 an egress proxy that originates TLS), set {}: the credentials then cross the \
                 network in clear",
                opt_in.setting()
            )
        } else {
            String::new()
        };
        ConfigError::Account {
            account: account.to_owned(),
            problem: format!("api_url: {e}{hint}"),
        }
    })
}

/// The PEM bundle of `ca_file`, if set: the account's extra roots.
fn ca_roots(account: &str, ca_file: Option<&Path>) -> Result<Vec<Vec<u8>>, ConfigError> {
    let Some(path) = ca_file else {
        return Ok(Vec::new());
    };
    let pem = std::fs::read(path).map_err(|e| ConfigError::Account {
        account: account.to_owned(),
        problem: format!("ca_file {}: {e}", path.display()),
    })?;
    Ok(vec![pem])
}

/// The webhook signing keys: each `[[webhook_signing_keys]]`, and `KLARNA_WEBHOOK_SECRET` for
/// any key id.
fn webhook_keys(settings: &Settings, env: &dyn Environ) -> Result<Vec<WebhookKey>, ConfigError> {
    let mut keys = Vec::new();
    for key in &settings.webhook_signing_keys {
        let problem = |problem: String| {
            ConfigError::Load(format!("webhook signing key {:?}: {problem}", key.id))
        };
        if key.id.trim().is_empty() {
            return Err(problem("id is required".into()));
        }
        let secret =
            read_secret("secret", &key.secret_env, &key.secret_file, env).map_err(problem)?;
        keys.push(WebhookKey {
            id: Some(key.id.clone()),
            secret: SecretString::from(secret),
        });
    }
    if let Some(secret) = env.var("KLARNA_WEBHOOK_SECRET") {
        keys.push(WebhookKey {
            id: None,
            secret: SecretString::from(secret),
        });
    }
    Ok(keys)
}

/// A secret from the environment variable `var` or the file `file` (trailing line break
/// dropped); exactly one of them must be given. The error names the setting, never the value.
fn read_secret(
    what: &str,
    var: &Option<String>,
    file: &Option<PathBuf>,
    env: &dyn Environ,
) -> Result<String, String> {
    match (var, file) {
        (Some(var), None) => env
            .var(var)
            .ok_or_else(|| format!("{what}_env names {var}, which is not set")),
        (None, Some(file)) => std::fs::read_to_string(file)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| format!("{what}_file {}: {e}", file.display())),
        (Some(_), Some(_)) => Err(format!("set {what}_env or {what}_file, not both")),
        (None, None) => Err(format!("{what}_env or {what}_file is required")),
    }
}

fn env_account(env: &dyn Environ) -> Result<Account, ConfigError> {
    let mut missing = Vec::new();
    let username = env.var("KLARNA_USERNAME");
    let password = env.var("KLARNA_PASSWORD");
    let api_key = env.var("KLARNA_API_KEY");
    if api_key.is_some() && (username.is_some() || password.is_some()) {
        return Err(ConfigError::Account {
            account: DEFAULT_ACCOUNT.to_owned(),
            problem: "set KLARNA_API_KEY, or KLARNA_USERNAME and KLARNA_PASSWORD, not both".into(),
        });
    }
    if api_key.is_none() {
        if username.is_none() {
            missing.push("KLARNA_USERNAME (or KLARNA_API_KEY)");
        }
        if password.is_none() {
            missing.push("KLARNA_PASSWORD (or KLARNA_API_KEY)");
        }
    }
    let api_url = env.var("KLARNA_API_URL");
    let region = env.var("KLARNA_REGION");
    let environment = env.var("KLARNA_ENVIRONMENT");
    if api_url.is_none() {
        if region.is_none() {
            missing.push("KLARNA_REGION (or KLARNA_API_URL)");
        }
        if environment.is_none() {
            missing.push("KLARNA_ENVIRONMENT (or KLARNA_API_URL)");
        }
    }
    if !missing.is_empty() {
        return Err(ConfigError::MissingCredentials(missing.join(", ")));
    }
    let settings = AccountSettings {
        api_url,
        region,
        environment,
        allow_plain_http: env_allow_plain_http(env)?,
        ca_file: env.var("KLARNA_CA_FILE").map(PathBuf::from),
        ..AccountSettings::default()
    };
    let base_url = base_url(DEFAULT_ACCOUNT, &settings, PlainHttpOptIn::Environment)?;
    let extra_roots = ca_roots(DEFAULT_ACCOUNT, settings.ca_file.as_deref())?;
    let credentials = match (api_key, username, password) {
        (Some(key), _, _) => KlarnaCredentials::api_key(key),
        (None, Some(username), Some(password)) => KlarnaCredentials::new(username, password),
        _ => {
            return Err(ConfigError::MissingCredentials(
                "KLARNA_USERNAME, KLARNA_PASSWORD".into(),
            ));
        }
    };
    Ok(Account {
        name: DEFAULT_ACCOUNT.to_owned(),
        rate_limit: outbound_limit(DEFAULT_ACCOUNT, &base_url, &settings, env)?,
        base_url,
        extra_roots,
        api: AccountApi::OrderManagement(credentials),
    })
}

/// An Order Management account's base URL: `api_url`, else the URL of `region` and
/// `environment`.
fn base_url(
    account: &str,
    settings: &AccountSettings,
    opt_in: PlainHttpOptIn,
) -> Result<BaseUrl, ConfigError> {
    let problem = |problem: String| ConfigError::Account {
        account: account.to_owned(),
        problem,
    };
    if let Some(url) = &settings.api_url {
        return parse_api_url(account, url, settings.allow_plain_http, opt_in);
    }
    let region: Region = settings
        .region
        .clone()
        .ok_or_else(|| problem("set api_url, or region and environment".into()))?
        .parse()
        .map_err(|_| problem("region must be eu, na or oc".into()))?;
    let environment: Environment = settings
        .environment
        .clone()
        .ok_or_else(|| problem("environment (playground or live) is required with region".into()))?
        .parse()
        .map_err(|_| problem("environment must be playground or live".into()))?;
    Ok(regional_base_url(region, environment))
}

fn resolve_account(
    name: &str,
    account: &AccountSettings,
    env: &dyn Environ,
    opt_in: PlainHttpOptIn,
) -> Result<Account, ConfigError> {
    let problem = |problem: String| ConfigError::Account {
        account: name.to_owned(),
        problem,
    };
    let secret = |what: &str, var: &Option<String>, file: &Option<PathBuf>| {
        read_secret(what, var, file, env).map_err(&problem)
    };
    if account.kind == AccountKind::Partner {
        return resolve_partner(name, account, env, opt_in);
    }
    let partner_only = [
        ("partner_account_id", account.partner_account_id.is_some()),
        ("path_prefix", account.path_prefix.is_some()),
        ("on_behalf_of", account.on_behalf_of.is_some()),
        ("client_cert_file", account.client_cert_file.is_some()),
        ("client_key_file", account.client_key_file.is_some()),
    ];
    if let Some((key, _)) = partner_only.iter().find(|(_, set)| *set) {
        return Err(problem(format!(
            "{key} is for partner accounts; set kind = \"partner\" or remove it"
        )));
    }
    let with_key = account.api_key_env.is_some() || account.api_key_file.is_some();
    let with_login = account.username_env.is_some()
        || account.username_file.is_some()
        || account.password_env.is_some()
        || account.password_file.is_some();
    if with_key && with_login {
        return Err(problem(
            "set api_key_env or api_key_file, or a username and password, not both".into(),
        ));
    }
    let credentials = if with_key {
        KlarnaCredentials::api_key(secret(
            "api_key",
            &account.api_key_env,
            &account.api_key_file,
        )?)
    } else {
        KlarnaCredentials::new(
            secret("username", &account.username_env, &account.username_file)?,
            secret("password", &account.password_env, &account.password_file)?,
        )
    };
    let base_url = base_url(name, account, opt_in)?;
    Ok(Account {
        name: name.to_owned(),
        rate_limit: outbound_limit(name, &base_url, account, env)?,
        base_url,
        extra_roots: ca_roots(name, account.ca_file.as_deref())?,
        api: AccountApi::OrderManagement(credentials),
    })
}

/// A partner account: `api_url`, the API key, `partner_account_id`; mutual TLS only with
/// both the certificate and the key.
fn resolve_partner(
    name: &str,
    account: &AccountSettings,
    env: &dyn Environ,
    opt_in: PlainHttpOptIn,
) -> Result<Account, ConfigError> {
    let problem = |problem: String| ConfigError::Account {
        account: name.to_owned(),
        problem,
    };
    let om_only = [
        ("region", account.region.is_some()),
        ("environment", account.environment.is_some()),
        ("username_env", account.username_env.is_some()),
        ("username_file", account.username_file.is_some()),
        ("password_env", account.password_env.is_some()),
        ("password_file", account.password_file.is_some()),
    ];
    if let Some((key, _)) = om_only.iter().find(|(_, set)| *set) {
        return Err(problem(format!(
            "{key} is for Order Management accounts; a partner account takes api_url and \
             api_key_env or api_key_file"
        )));
    }
    let api_url = account.api_url.clone().ok_or_else(|| {
        problem(format!(
            "api_url is required for a partner account ({LIVE_PARTNER_URL}, or Klarna's test URL)"
        ))
    })?;
    let base_url = parse_api_url(name, &api_url, account.allow_plain_http, opt_in)?;
    let api_key = read_secret("api_key", &account.api_key_env, &account.api_key_file, env)
        .map_err(&problem)?;
    let partner_account_id = account
        .partner_account_id
        .clone()
        .filter(|id| !id.trim().is_empty())
        .ok_or_else(|| problem("partner_account_id is required".into()))?;
    let path_prefix = account
        .path_prefix
        .clone()
        .unwrap_or_else(|| format!("/v2/accounts/{partner_account_id}"));
    let read_file = |what: &str, path: &Path| {
        std::fs::read(path).map_err(|e| problem(format!("{what} {}: {e}", path.display())))
    };
    let client_identity = match (&account.client_cert_file, &account.client_key_file) {
        (Some(cert), Some(key)) => {
            let cert = read_file("client_cert_file", cert)?;
            let key = read_file("client_key_file", key)?;
            Some(ClientIdentity::from_pem(cert, key))
        }
        (None, None) => None,
        (Some(_), None) => {
            return Err(problem(
                "client_cert_file is set without client_key_file: mutual TLS needs both".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(problem(
                "client_key_file is set without client_cert_file: mutual TLS needs both".into(),
            ));
        }
    };
    let live = base_url.as_str().trim_end_matches('/') == LIVE_PARTNER_URL;
    Ok(Account {
        name: name.to_owned(),
        rate_limit: outbound_limit(name, &base_url, account, env)?,
        base_url,
        extra_roots: ca_roots(name, account.ca_file.as_deref())?,
        api: AccountApi::Partner(PartnerAccount {
            api_key: SecretString::from(api_key),
            partner_account_id,
            path_prefix,
            on_behalf_of: account.on_behalf_of.clone(),
            client_identity,
            live,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Vars(HashMap<&'static str, &'static str>);
    impl Environ for Vars {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| (*v).to_owned())
        }
    }
    fn vars(pairs: &[(&'static str, &'static str)]) -> Vars {
        Vars(pairs.iter().copied().collect())
    }

    /// `webhook_listen` unset means off, or the demo's address with the simulator; `off`
    /// means off with the simulator too; an address is that address. From the file, the
    /// environment and the flags alike.
    #[test]
    fn webhook_listen_off_is_off_even_with_the_simulator() {
        let at = |simulator: bool, listen: WebhookListen| {
            Settings {
                simulator,
                webhook_listen: listen,
                ..Settings::default()
            }
            .webhook_address()
        };
        let there = SocketAddr::from(([127, 0, 0, 1], 7001));
        assert_eq!(at(false, WebhookListen::Unset), None);
        assert_eq!(
            at(true, WebhookListen::Unset),
            Some(crate::demo::WEBHOOK_LISTEN)
        );
        assert_eq!(at(true, WebhookListen::Off), None);
        assert_eq!(at(false, WebhookListen::Off), None);
        assert_eq!(at(true, WebhookListen::At(there)), Some(there));

        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("gw.toml");
        std::fs::write(&file, "simulator = true\nwebhook_listen = \"off\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let from_file = load_settings(Some(&file), &vars(&[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(from_file.webhook_listen, WebhookListen::Off);
        assert_eq!(from_file.webhook_address(), None);
        let from_env = load_settings(
            None,
            &vars(&[
                ("REFUND_GATEWAY_SIMULATOR", "true"),
                ("REFUND_GATEWAY_WEBHOOK_LISTEN", "off"),
            ]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(from_env.webhook_address(), None);
        let unset = load_settings(None, &vars(&[("REFUND_GATEWAY_SIMULATOR", "true")]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(unset.webhook_listen, WebhookListen::Unset);
        assert_eq!(unset.webhook_address(), Some(crate::demo::WEBHOOK_LISTEN));
        let mut flagged = unset.clone();
        let cli = Cli::try_parse_from(["refund-gateway", "--simulator", "--webhook-listen", "off"])
            .unwrap_or_else(|e| panic!("{e}"));
        cli.apply(&mut flagged);
        assert_eq!(flagged.webhook_address(), None);
        let err = load_settings(None, &vars(&[("REFUND_GATEWAY_WEBHOOK_LISTEN", "of")]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("webhook_listen"), "{err}");
    }

    /// Settings of a development gateway on loopback: authentication off.
    fn dev() -> Settings {
        Settings {
            auth: AuthMode::None,
            ..Settings::default()
        }
    }

    #[test]
    fn without_credentials_names_the_missing_variables() {
        let err = resolve(Settings::default(), &vars(&[]))
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_default();
        for v in [
            "KLARNA_USERNAME",
            "KLARNA_PASSWORD",
            "KLARNA_API_URL",
            "--simulator",
        ] {
            assert!(err.contains(v), "{v} not in {err}");
        }
    }

    #[test]
    fn a_partial_environment_names_what_is_missing() {
        let err = resolve(
            Settings::default(),
            &vars(&[("KLARNA_USERNAME", "u"), ("KLARNA_REGION", "eu")]),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            err.contains("KLARNA_PASSWORD") && err.contains("KLARNA_ENVIRONMENT"),
            "{err}"
        );
        assert!(!err.contains("KLARNA_USERNAME,"), "{err}");
    }

    #[test]
    fn env_account_from_region() {
        let cfg = resolve(
            dev(),
            &vars(&[
                ("KLARNA_USERNAME", "user"),
                ("KLARNA_PASSWORD", "hunter2-secret"),
                ("KLARNA_REGION", "NA"),
                ("KLARNA_ENVIRONMENT", "playground"),
            ]),
        );
        let cfg = cfg.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.accounts.len(), 1);
        assert_eq!(cfg.accounts[0].name, "default");
        assert!(
            cfg.accounts[0]
                .base_url
                .as_str()
                .contains("api-na.playground.klarna.com")
        );
        assert!(!format!("{cfg:?}").contains("hunter2-secret"));
    }

    #[test]
    fn an_api_key_stands_for_the_username_and_password() {
        let key = "klarna_test_api_S3CR3T-key";
        let from_env = |pairs: &[(&'static str, &'static str)]| resolve(dev(), &vars(pairs));
        let cfg = from_env(&[
            ("KLARNA_API_KEY", key),
            ("KLARNA_API_URL", "http://127.0.0.1:9"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(&cfg.accounts[0].api,
            AccountApi::OrderManagement(credentials) if credentials.is_api_key()));
        assert!(!format!("{cfg:?}").contains("S3CR3T"));
        let both = from_env(&[
            ("KLARNA_API_KEY", key),
            ("KLARNA_USERNAME", "u"),
            ("KLARNA_API_URL", "http://127.0.0.1:9"),
        ])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(both.contains("not both"), "{both}");
        assert!(!both.contains("S3CR3T"), "{both}");

        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, format!("{key}\n")).unwrap_or_else(|e| panic!("{e}"));
        let account = |secrets: String| {
            let toml = format!("[accounts.eu]\napi_url = \"http://127.0.0.1:9\"\n{secrets}");
            let file = dir.path().join("gw.toml");
            std::fs::write(&file, toml).unwrap_or_else(|e| panic!("{e}"));
            let env = vars(&[("USER", "u"), ("REFUND_GATEWAY_AUTH", "none")]);
            let settings = load_settings(Some(&file), &env).unwrap_or_else(|e| panic!("{e}"));
            resolve(settings, &env)
        };
        let cfg = account(format!("api_key_file = \"{}\"\n", key_file.display()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(&cfg.accounts[0].api,
            AccountApi::OrderManagement(credentials) if credentials.is_api_key()));
        let both = account(format!(
            "api_key_file = \"{}\"\nusername_env = \"USER\"\n",
            key_file.display()
        ))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(both.contains("not both"), "{both}");
    }

    #[test]
    fn simulator_needs_no_credentials() {
        let settings = Settings {
            simulator: true,
            ..Settings::default()
        };
        assert!(resolve(settings, &vars(&[])).is_ok());
    }

    #[test]
    fn file_accounts_reference_secrets_by_name() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let secret_file = dir.path().join("pw");
        std::fs::write(&secret_file, "file-secret\n").unwrap_or_else(|e| panic!("{e}"));
        let toml = format!(
            "listen = \"127.0.0.1:6000\"\n[accounts.eu]\nregion = \"eu\"\nenvironment = \"live\"\n\
             username_env = \"EU_USER\"\npassword_file = \"{}\"\n[accounts.oc]\napi_url = \"http://127.0.0.1:9\"\n\
             username_env = \"OC_USER\"\npassword_env = \"OC_PW\"\n",
            secret_file.display()
        );
        let file = dir.path().join("gw.toml");
        std::fs::write(&file, toml).unwrap_or_else(|e| panic!("{e}"));
        let env = vars(&[
            ("EU_USER", "eu"),
            ("OC_USER", "oc"),
            ("OC_PW", "oc-pw"),
            ("REFUND_GATEWAY_ADMIN_LISTEN", "127.0.0.1:7000"),
            ("REFUND_GATEWAY_AUTH", "none"),
        ]);
        let settings = load_settings(Some(&file), &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(settings.listen.port(), 6000);
        assert_eq!(settings.admin_listen.port(), 7000);
        let cfg = resolve(settings, &env).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<_> = cfg.accounts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["eu", "oc"]);
        assert_eq!(
            cfg.accounts[0].base_url.as_str().trim_end_matches('/'),
            "https://api.klarna.com"
        );
        let debug = format!("{cfg:?}");
        assert!(
            !debug.contains("file-secret") && !debug.contains("oc-pw"),
            "{debug}"
        );
    }

    #[test]
    fn stores_and_routes_are_read_and_each_value_checked() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("gw.toml");
        let read = |toml: &str| {
            std::fs::write(&file, toml).unwrap_or_else(|e| panic!("{e}"));
            load_settings(Some(&file), &vars(&[]))
                .and_then(|s| routing_tables(&s))
                .map_err(|e| e.to_string())
        };
        let (stores, routes) = read(
            "[[store]]\nid = \" stockholm-1 \"\ncountry = \"se\"\naccount = \"eu\"\n\
             [[route]]\ncurrency = \"usd\"\naccount = \"na\"\n[[route]]\naccount = \"eu\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stores[0].id.as_str(), "stockholm-1");
        assert_eq!(
            stores[0].country.as_ref().map(CountryCode::as_str),
            Some("SE")
        );
        assert_eq!(
            routes[0].currency.as_ref().map(Currency::as_str),
            Some("USD")
        );
        assert_eq!((routes.len(), routes[1].currency.is_none()), (2, true));
        for (toml, expected) in [
            (
                "[[store]]\nid = \"a\"\ncountry = \"Sweden\"\n",
                "store[0].country",
            ),
            ("[[store]]\nid = \"  \"\n", "store[0].id"),
            ("[[route]]\ncurrency = \"SEK\"\n", "route[0].account"),
            (
                "[[route]]\ncurrency = \"kronor\"\naccount = \"eu\"\n",
                "route[0].currency",
            ),
            ("[[route]]\nshop = \"a\"\naccount = \"eu\"\n", "shop"),
        ] {
            let error = read(toml).err().unwrap_or_default();
            assert!(error.contains(expected), "{toml}: {error}");
        }
    }

    fn partner_error(toml: &str, env: &[(&'static str, &'static str)]) -> String {
        resolve_file(toml, env).err().unwrap_or_default()
    }

    #[test]
    fn partner_accounts_come_from_the_file_and_the_environment() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let cert = dir.path().join("client.pem");
        let key = dir.path().join("client.key");
        std::fs::write(&cert, "CERT").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&key, "KEY-SECRET").unwrap_or_else(|e| panic!("{e}"));
        let toml = format!(
            "[accounts.acquirer]\nkind = \"partner\"\napi_url = \"https://api-global.klarna.com\"\n\
             api_key_env = \"ACQ_KEY\"\npartner_account_id = \"krn:partner:global:account:live:1\"\n\
             client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n\
             [accounts.direct]\nkind = \"partner\"\napi_url = \"https://api-global.test.klarna.com\"\n\
             api_key_env = \"DIRECT_KEY\"\npartner_account_id = \"krn:partner:global:account:test:2\"\n\
             path_prefix = \"/v2\"\non_behalf_of = \"krn:partner:global:account:test:3\"\n\
             [[webhook_signing_keys]]\nid = \"krn:partner:global:notification:signing-key:1\"\n\
             secret_env = \"HOOK_SECRET\"\n",
            cert.display(),
            key.display()
        );
        let file = dir.path().join("gw.toml");
        std::fs::write(&file, toml).unwrap_or_else(|e| panic!("{e}"));
        let env = vars(&[
            ("ACQ_KEY", "klarna_live_api_acq-secret"),
            ("DIRECT_KEY", "klarna_test_api_direct-secret"),
            ("HOOK_SECRET", "hook-secret"),
            ("KLARNA_WEBHOOK_SECRET", "any-id-secret"),
            ("KLARNA_PARTNER_API_URL", "http://127.0.0.1:9"),
            ("KLARNA_PARTNER_API_KEY", "klarna_test_api_env-secret"),
            (
                "KLARNA_PARTNER_ACCOUNT_ID",
                "krn:partner:global:account:test:4",
            ),
            ("REFUND_GATEWAY_AUTH", "none"),
        ]);
        let settings = load_settings(Some(&file), &env).unwrap_or_else(|e| panic!("{e}"));
        let cfg = resolve(settings, &env).unwrap_or_else(|e| panic!("{e}"));
        let partner = |name: &str| {
            cfg.accounts
                .iter()
                .find(|a| a.name == name)
                .and_then(|a| match &a.api {
                    AccountApi::Partner(p) => Some(p),
                    AccountApi::OrderManagement(_) => None,
                })
                .unwrap_or_else(|| panic!("no partner account {name}"))
        };
        let acquirer = partner("acquirer");
        assert_eq!(
            acquirer.path_prefix,
            "/v2/accounts/krn:partner:global:account:live:1"
        );
        assert!(acquirer.live && acquirer.client_identity.is_some());
        let direct = partner("direct");
        assert_eq!(direct.path_prefix, "/v2");
        assert_eq!(
            direct.on_behalf_of.as_deref(),
            Some("krn:partner:global:account:test:3")
        );
        assert!(!direct.live && direct.client_identity.is_none());
        let from_env = partner(PARTNER_ACCOUNT);
        assert_eq!(
            from_env.partner_account_id,
            "krn:partner:global:account:test:4"
        );
        let ids: Vec<_> = cfg.webhook_keys.iter().map(|k| k.id.as_deref()).collect();
        assert_eq!(
            ids,
            [Some("krn:partner:global:notification:signing-key:1"), None]
        );
        let debug = format!("{cfg:?}");
        for secret in [
            "acq-secret",
            "direct-secret",
            "env-secret",
            "hook-secret",
            "any-id-secret",
            "KEY-SECRET",
        ] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
    }

    #[test]
    fn a_partner_account_is_refused_when_it_is_incomplete_or_mixed() {
        let base = "[accounts.p]\nkind = \"partner\"\napi_url = \"https://api-global.klarna.com\"\n\
                    api_key_env = \"K\"\npartner_account_id = \"krn:x\"\n";
        let env = [("K", "klarna_live_api_k")];
        assert_eq!(partner_error(base, &env), "");
        let cases = [
            (
                format!("{base}client_cert_file = \"/c.pem\"\n"),
                "client_key_file",
            ),
            (
                format!("{base}client_key_file = \"/c.key\"\n"),
                "client_cert_file",
            ),
            (
                format!("{base}region = \"eu\"\n"),
                "region is for Order Management",
            ),
            (
                base.replace("partner_account_id = \"krn:x\"\n", ""),
                "partner_account_id is required",
            ),
            (
                base.replace("api_url = \"https://api-global.klarna.com\"\n", ""),
                "api_url is required",
            ),
            (
                "[accounts.om]\nregion = \"eu\"\nenvironment = \"live\"\nusername_env = \"K\"\n\
                 password_env = \"K\"\nclient_cert_file = \"/c.pem\"\n"
                    .to_owned(),
                "client_cert_file is for partner accounts",
            ),
        ];
        for (toml, expected) in cases {
            let error = partner_error(&toml, &env);
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
        let missing = partner_error("", &[("KLARNA_PARTNER_API_KEY", "k")]);
        assert!(
            missing.contains("KLARNA_PARTNER_API_URL")
                && missing.contains("KLARNA_PARTNER_ACCOUNT_ID"),
            "{missing}"
        );
    }

    /// Loads `toml` as the file and resolves it, authentication off.
    fn resolve_file(toml: &str, env: &[(&'static str, &'static str)]) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("gw.toml");
        std::fs::write(&file, toml).unwrap_or_else(|e| panic!("{e}"));
        let env = Vars(
            env.iter()
                .copied()
                .chain([("REFUND_GATEWAY_AUTH", "none")])
                .collect(),
        );
        load_settings(Some(&file), &env)
            .and_then(|s| resolve(s, &env))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn plain_http_off_loopback_needs_allow_plain_http_in_the_file() {
        let om = "[accounts.eu]\napi_url = \"http://10.1.2.3:8080\"\nusername_env = \"U\"\n\
                  password_env = \"P\"\n";
        let partner = "[accounts.p]\nkind = \"partner\"\napi_url = \"http://10.1.2.4:8080/klarna\"\n\
                       api_key_env = \"K\"\npartner_account_id = \"krn:x\"\n";
        let env = [("U", "user"), ("P", "password"), ("K", "klarna_test_api_k")];
        for toml in [om, partner] {
            let refused = resolve_file(toml, &env).err().unwrap_or_default();
            assert!(
                refused.contains("allow_plain_http = true") && refused.contains("10.1.2."),
                "{refused}"
            );
            assert!(!refused.contains("KLARNA_ALLOW_PLAIN_HTTP"), "{refused}");
            let allowed = format!("{toml}allow_plain_http = true\n");
            let cfg = resolve_file(&allowed, &env).unwrap_or_else(|e| panic!("{e}"));
            let account = &cfg.accounts[0];
            assert!(account.base_url.is_plain_http_off_loopback());
            assert!(account.base_url.host().starts_with("10.1.2."));
            let off = format!("{toml}allow_plain_http = false\n");
            assert!(resolve_file(&off, &env).is_err());
        }
        // The opt-in changes nothing but the scheme: other faults are refused without naming it.
        let query = om.replace("8080", "8080/?x=1");
        let refused = resolve_file(&format!("{query}allow_plain_http = true\n"), &env)
            .err()
            .unwrap_or_default();
        assert!(refused.contains("must not have a query"), "{refused}");
        let refused = resolve_file(&query, &env).err().unwrap_or_default();
        assert!(!refused.contains("allow_plain_http"), "{refused}");
        let https = om.replace("http://", "https://");
        assert!(
            resolve_file(&https, &env)
                .is_ok_and(|c| !c.accounts[0].base_url.is_plain_http_off_loopback())
        );
    }

    #[test]
    fn plain_http_off_loopback_needs_klarna_allow_plain_http_in_the_environment() {
        let default = [
            ("KLARNA_USERNAME", "user"),
            ("KLARNA_PASSWORD", "hunter2-secret"),
            ("KLARNA_API_URL", "http://10.1.2.3:8080"),
        ];
        let partner = [
            ("KLARNA_PARTNER_API_URL", "http://10.1.2.4:8080"),
            ("KLARNA_PARTNER_API_KEY", "klarna_test_api_k"),
            (
                "KLARNA_PARTNER_ACCOUNT_ID",
                "krn:partner:global:account:test:1",
            ),
        ];
        for account in [&default[..], &partner[..]] {
            let with = |allow: Option<&'static str>| {
                let mut pairs = account.to_vec();
                pairs.extend(allow.map(|v| ("KLARNA_ALLOW_PLAIN_HTTP", v)));
                resolve(dev(), &vars(&pairs)).map_err(|e| e.to_string())
            };
            for refused in [None, Some("false")] {
                let error = with(refused).err().unwrap_or_default();
                assert!(
                    error.contains("KLARNA_ALLOW_PLAIN_HTTP=true") && error.contains("10.1.2."),
                    "{error}"
                );
                assert!(!error.contains("hunter2"), "{error}");
            }
            let error = with(Some("yes")).err().unwrap_or_default();
            assert!(
                error.contains("KLARNA_ALLOW_PLAIN_HTTP=\"yes\"")
                    && error.contains("true or false"),
                "{error}"
            );
            let cfg = with(Some("true")).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(cfg.accounts.len(), 1);
            assert!(cfg.accounts[0].base_url.is_plain_http_off_loopback());
        }
    }

    #[test]
    fn ca_file_is_read_for_either_kind_of_account() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "PRIVATE CA PEM").unwrap_or_else(|e| panic!("{e}"));
        let missing = dir.path().join("no-such-ca.pem");
        let om = |ca: &Path| {
            format!(
                "[accounts.eu]\napi_url = \"https://klarna.internal\"\nusername_env = \"U\"\n\
                 password_env = \"P\"\nca_file = \"{}\"\n",
                ca.display()
            )
        };
        let env = [("U", "user"), ("P", "password")];
        let cfg = resolve_file(&om(&ca), &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.accounts[0].extra_roots, [b"PRIVATE CA PEM".to_vec()]);
        assert!(matches!(
            cfg.accounts[0].api,
            AccountApi::OrderManagement(_)
        ));
        let error = resolve_file(&om(&missing), &env).err().unwrap_or_default();
        assert!(
            error.contains("account \"eu\"")
                && error.contains("ca_file")
                && error.contains("no-such-ca.pem"),
            "{error}"
        );
        // The paths are the temporary directory's: owned, unlike `vars`' literals.
        struct Paths(HashMap<&'static str, String>);
        impl Environ for Paths {
            fn var(&self, name: &str) -> Option<String> {
                self.0.get(name).cloned()
            }
        }
        let env_account = |ca: &Path, partner_ca: &Path| {
            let mut env: HashMap<_, _> = [
                ("KLARNA_USERNAME", "user"),
                ("KLARNA_PASSWORD", "password"),
                ("KLARNA_REGION", "eu"),
                ("KLARNA_ENVIRONMENT", "playground"),
                ("KLARNA_PARTNER_API_URL", "https://klarna.internal"),
                ("KLARNA_PARTNER_API_KEY", "klarna_test_api_k"),
                (
                    "KLARNA_PARTNER_ACCOUNT_ID",
                    "krn:partner:global:account:test:1",
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k, v.to_owned()))
            .collect();
            env.insert("KLARNA_CA_FILE", ca.display().to_string());
            env.insert("KLARNA_PARTNER_CA_FILE", partner_ca.display().to_string());
            resolve(dev(), &Paths(env)).map_err(|e| e.to_string())
        };
        let cfg = env_account(&ca, &ca).unwrap_or_else(|e| panic!("{e}"));
        let roots: Vec<_> = cfg
            .accounts
            .iter()
            .map(|a| (a.name.as_str(), a.extra_roots.len()))
            .collect();
        assert_eq!(roots, [(DEFAULT_ACCOUNT, 1), (PARTNER_ACCOUNT, 1)]);
        for (ca, partner_ca, account) in [
            (&missing, &ca, DEFAULT_ACCOUNT),
            (&ca, &missing, PARTNER_ACCOUNT),
        ] {
            let error = env_account(ca, partner_ca).err().unwrap_or_default();
            assert!(
                error.contains(&format!("account {account:?}")) && error.contains("ca_file"),
                "{error}"
            );
        }
    }

    #[test]
    fn klarnas_hosts_get_klarnas_quota_and_other_urls_none_unless_set() {
        let limit = |url: &str, settings: AccountSettings, env: &[(&'static str, &'static str)]| {
            let base = BaseUrl::parse(url).unwrap_or_else(|e| panic!("{e}"));
            outbound_limit("eu", &base, &settings, &vars(env)).unwrap_or_else(|e| panic!("{e}"))
        };
        let rps = |l: Option<OutboundRateLimit>| l.map(|l| (l.requests_per_second, l.burst));
        let none = AccountSettings::default();
        assert_eq!(
            rps(limit("https://api.klarna.com", none.clone(), &[])),
            Some((200, 200))
        );
        assert_eq!(
            rps(limit(
                "https://api-na.playground.klarna.com",
                none.clone(),
                &[]
            )),
            Some((50, 50))
        );
        assert_eq!(
            rps(limit(
                "https://api-global.test.klarna.com",
                none.clone(),
                &[]
            )),
            Some((50, 50))
        );
        assert_eq!(rps(limit("http://127.0.0.1:9", none.clone(), &[])), None);
        assert_eq!(
            rps(limit("https://evil-klarna.com.example", none.clone(), &[])),
            None
        );
        let set = AccountSettings {
            requests_per_second: Some(20),
            burst: Some(5),
            fallback_requests_per_second: Some(4),
            ..AccountSettings::default()
        };
        assert_eq!(
            rps(limit("http://127.0.0.1:9", set.clone(), &[])),
            Some((20, 5))
        );
        let shared = limit(
            "http://127.0.0.1:9",
            set,
            &[("REDIS_URL", "redis://:pw@127.0.0.1:6379/")],
        )
        .and_then(|l| l.shared)
        .unwrap_or_else(|| panic!("not shared"));
        assert_eq!(shared.fallback_requests_per_second, 4);
        assert_eq!(shared.key, "eu");
        let orphan = AccountSettings {
            burst: Some(5),
            ..AccountSettings::default()
        };
        let base = BaseUrl::parse("http://127.0.0.1:9").unwrap_or_else(|e| panic!("{e}"));
        assert!(outbound_limit("eu", &base, &orphan, &vars(&[])).is_err());
    }

    #[test]
    fn a_missing_secret_variable_is_named() {
        let mut settings = Settings::default();
        settings.accounts.insert(
            "eu".into(),
            AccountSettings {
                region: Some("eu".into()),
                environment: Some("live".into()),
                username_env: Some("EU_USER".into()),
                password_env: Some("EU_PASSWORD".into()),
                ..Default::default()
            },
        );
        let err = resolve(settings, &vars(&[("EU_USER", "u")]))
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("EU_PASSWORD")));
    }

    #[test]
    fn unknown_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("gw.toml");
        std::fs::write(&file, "lisen = \"127.0.0.1:1\"\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(load_settings(Some(&file), &vars(&[])).is_err());
    }

    fn refusal(settings: &Settings) -> String {
        settings
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    fn ranged() -> impl Iterator<Item = (&'static Setting, u64, u64)> {
        SETTINGS.iter().filter_map(|s| match s.allowed {
            Allowed::Range { min, max, .. } => Some((s, min, max)),
            Allowed::Form(_) => None,
        })
    }

    fn with(setting: &Setting, value: u64) -> Settings {
        let mut settings = Settings::default();
        (setting.parse)(&mut settings, &value.to_string()).unwrap_or_else(|e| panic!("{e}"));
        settings
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(refusal(&Settings::default()), "");
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(refusal(&Config::for_simulator(dir.path()).settings), "");
        assert!(load_settings(None, &vars(&[])).is_ok());
    }

    #[test]
    fn every_range_accepts_its_bounds_and_refuses_beyond_them_naming_setting_value_and_range() {
        for (setting, min, max) in ranged() {
            assert!(min > 0, "{}: 0 must be refused", setting.key);
            assert_eq!(refusal(&with(setting, min)), "", "{}", setting.key);
            assert_eq!(refusal(&with(setting, max)), "", "{}", setting.key);
            for value in [0, min - 1, max + 1, u64::from(u32::MAX)] {
                let err = refusal(&with(setting, value));
                let allowed = setting.allowed.to_string();
                assert!(
                    err.contains(&format!("{} = {value} ", setting.key)) && err.contains(&allowed),
                    "{} = {value}: {err:?}",
                    setting.key
                );
            }
        }
    }

    #[test]
    fn the_ranges_are_the_intended_ones() {
        let range = |key: &str| {
            SETTINGS
                .iter()
                .find(|s| s.key == key)
                .map(|s| s.allowed.to_string())
                .unwrap_or_default()
        };
        assert_eq!(range("retention_days"), "1 to 3650 days");
        assert_eq!(range("reconcile_parallelism"), "1 to 256");
        assert_eq!(range("lease_secs"), "1 to 3600 s (1 s to 1 h)");
        assert_eq!(
            range("default_deadline_ms"),
            "100 to 600000 ms (100 ms to 10 min)"
        );
        assert_eq!(
            range("klarna_attempt_timeout_ms"),
            "100 to 600000 ms (100 ms to 10 min)"
        );
        assert_eq!(
            range("klarna_idempotency_window_secs"),
            "60 to 86400 s (1 min to 24 h)"
        );
        assert_eq!(
            range("reconcile_interval_ms"),
            "10 to 3600000 ms (10 ms to 1 h)"
        );
    }

    /// `auto`: a core is left to the SQLite store's writer thread, none with PostgreSQL, and
    /// there is always one worker. A count is taken as it is, from the file or the
    /// environment; 0, more than 1024 or anything else is refused, naming the setting.
    #[test]
    fn worker_threads_leave_a_core_to_the_sqlite_writer_unless_set() {
        let auto = Settings::default();
        assert_eq!(auto.worker_threads, WorkerThreads::Auto);
        let postgres = vars(&[("DATABASE_URL", "postgres://db/refunds")]);
        assert_eq!(worker_threads(&auto, &vars(&[]), 8), 7);
        assert_eq!(worker_threads(&auto, &vars(&[]), 2), 1);
        assert_eq!(worker_threads(&auto, &vars(&[]), 1), 1);
        assert_eq!(worker_threads(&auto, &postgres, 8), 8);
        assert_eq!(worker_threads(&auto, &postgres, 1), 1);

        let set = load_settings(None, &vars(&[("REFUND_GATEWAY_WORKER_THREADS", "3")]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(worker_threads(&set, &vars(&[]), 8), 3);
        assert_eq!(worker_threads(&set, &postgres, 1), 3);

        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("gw.toml");
        for (written, expected) in [
            ("1024", Some(WorkerThreads::Count(1024))),
            ("\"auto\"", Some(WorkerThreads::Auto)),
            ("1", Some(WorkerThreads::Count(1))),
            ("0", None),
            ("1025", None),
            ("\"many\"", None),
            ("-2", None),
        ] {
            std::fs::write(&file, format!("worker_threads = {written}\n"))
                .unwrap_or_else(|e| panic!("{e}"));
            match (load_settings(Some(&file), &vars(&[])), expected) {
                (Ok(settings), Some(expected)) => assert_eq!(settings.worker_threads, expected),
                (Err(e), None) => assert!(e.to_string().contains("worker_threads"), "{e}"),
                (loaded, expected) => panic!("{written}: {loaded:?}, expected {expected:?}"),
            }
        }
        for text in ["0", "1025", "many", ""] {
            let loaded = load_settings(None, &vars(&[("REFUND_GATEWAY_WORKER_THREADS", text)]));
            match (text, loaded) {
                // An empty variable is an unset one.
                ("", Ok(settings)) => assert_eq!(settings.worker_threads, WorkerThreads::Auto),
                (_, Err(e)) => assert!(
                    e.to_string().contains("REFUND_GATEWAY_WORKER_THREADS"),
                    "{text}: {e}"
                ),
                (_, Ok(settings)) => panic!("{text:?} accepted: {:?}", settings.worker_threads),
            }
        }
    }

    #[test]
    fn retention_of_zero_or_a_century_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("gw.toml");
        for days in [0, 100_000] {
            std::fs::write(&file, format!("retention_days = {days}\n"))
                .unwrap_or_else(|e| panic!("{e}"));
            let err = load_settings(Some(&file), &vars(&[]))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert_eq!(
                err,
                format!("setting retention_days = {days} is out of range: allowed 1 to 3650 days")
            );
        }
        std::fs::write(
            &file,
            "retention_days = 3650\nreconcile_parallelism = 256\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let settings = load_settings(Some(&file), &vars(&[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(settings.retention(), Duration::from_secs(3650 * 86_400));
        assert_eq!(settings.reconcile_parallelism, 256);
    }

    #[test]
    fn resolve_refuses_settings_out_of_range() {
        let settings = Settings {
            simulator: true,
            reconcile_parallelism: 0,
            ..Settings::default()
        };
        let err = resolve(settings, &vars(&[]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("reconcile_parallelism = 0"), "{err}");
    }

    #[test]
    fn accessors_convert_units() {
        let s = Settings::default();
        assert_eq!(s.lease(), Duration::from_secs(30));
        assert_eq!(s.default_deadline(), Duration::from_secs(30));
        assert_eq!(s.klarna_attempt_timeout(), Duration::from_secs(10));
        assert_eq!(
            s.klarna_idempotency_window(),
            Duration::from_secs(23 * 3600)
        );
        assert_eq!(s.reconcile_interval(), Duration::from_secs(10));
        assert_eq!(s.retention(), Duration::from_secs(30 * 86_400));
        assert_eq!(s.reconcile_parallelism, 8);
    }

    #[test]
    fn environment_variables_override_the_file_and_bad_ones_are_named() {
        let env = vars(&[
            ("REFUND_GATEWAY_LOG_FORMAT", "text"),
            ("REFUND_GATEWAY_SIMULATOR", "true"),
            ("REFUND_GATEWAY_DATA_DIR", "/srv/gw"),
        ]);
        let settings = load_settings(None, &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(settings.log_format, LogFormat::Text);
        assert!(settings.simulator);
        assert_eq!(settings.data_dir, PathBuf::from("/srv/gw"));
        for (name, value, key) in [
            ("REFUND_GATEWAY_LOG_FORMAT", "xml", "log_format"),
            ("REFUND_GATEWAY_LISTEN", "nowhere", "listen"),
            ("REFUND_GATEWAY_SIMULATOR", "yes please", "simulator"),
        ] {
            let err = load_settings(None, &vars(&[(name, value)]))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains(name) && err.contains(value) && err.contains(key),
                "{err}"
            );
        }
    }

    /// Each definition reads and writes the field its key names, and every field but the
    /// accounts and webhook signing keys (tables of their own) has a definition.
    #[test]
    fn every_field_has_one_definition_bound_to_it() {
        let field = |settings: &Settings, key: &str| match serde_json::to_value(settings)
            .unwrap_or_else(|e| panic!("{e}"))
            .get(key)
        {
            Some(serde_json::Value::String(s)) => s.clone(),
            // An optional address that is not set is `off`.
            Some(serde_json::Value::Null) => "off".to_owned(),
            Some(other) => other.to_string(),
            None => panic!("no field {key}"),
        };
        let samples = [
            ("listen", "10.0.0.1:1"),
            ("admin_listen", "10.0.0.1:2"),
            ("data_dir", "/srv/elsewhere"),
            ("simulator", "true"),
            ("webhook_listen", "10.0.0.1:3"),
            ("auth", "none"),
            ("callers_file", "/etc/refund-gateway/callers.toml"),
            ("tls_cert_file", "/etc/refund-gateway/tls.pem"),
            ("tls_key_file", "/etc/refund-gateway/tls.key"),
            ("tls_client_ca_file", "/etc/refund-gateway/clients-ca.pem"),
            ("log_format", "text"),
            ("worker_threads", "3"),
        ];
        for setting in SETTINGS {
            assert_eq!(
                setting.default_value(),
                field(&Settings::default(), setting.key)
            );
            let sample = match setting.allowed {
                Allowed::Range { max, .. } => max.to_string(),
                Allowed::Form(_) => samples
                    .iter()
                    .find(|(k, _)| *k == setting.key)
                    .map(|(_, v)| (*v).to_owned())
                    .unwrap_or_else(|| panic!("no sample for {}", setting.key)),
            };
            assert_ne!(sample, setting.default_value(), "{}", setting.key);
            let mut settings = Settings::default();
            (setting.parse)(&mut settings, &sample).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(field(&settings, setting.key), sample, "{}", setting.key);
            assert_eq!((setting.value)(&settings).to_string(), sample);
        }
        let json = serde_json::to_value(Settings::default()).unwrap_or_else(|e| panic!("{e}"));
        let mut fields: Vec<_> = json
            .as_object()
            .map(|o| {
                o.keys()
                    // Tables, documented with their own examples in the README.
                    .filter(|k| {
                        !["accounts", "webhook_signing_keys", "store", "route"]
                            .contains(&k.as_str())
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut keys: Vec<_> = SETTINGS.iter().map(|s| s.key.to_owned()).collect();
        fields.sort();
        keys.sort();
        assert_eq!(fields, keys);
    }

    fn help() -> String {
        command().render_long_help().to_string()
    }

    #[test]
    fn help_names_every_flag_variable_setting_and_range() {
        command().debug_assert();
        let help = help();
        let mut expected = vec!["--config".to_owned(), "REFUND_GATEWAY_CONFIG".to_owned()];
        for setting in SETTINGS {
            expected.extend(setting.flag.map(str::to_owned));
            expected.extend(setting.env.map(str::to_owned));
            expected.push(setting.key.to_owned());
            expected.push(format!("[default: {}]", setting.default_value()));
            if let Allowed::Range { .. } = setting.allowed {
                expected.push(setting.allowed.to_string());
            }
        }
        expected.extend(VARIABLES.iter().map(|v| v.name.to_owned()));
        for text in expected {
            assert!(help.contains(&text), "{text} missing from --help:\n{help}");
        }
    }

    #[test]
    fn every_flag_has_a_definition_and_an_environment_variable() {
        let command = command();
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if ["help", "version", "config"].contains(&long) {
                continue;
            }
            let flag = format!("--{long}");
            let setting = SETTINGS
                .iter()
                .find(|s| s.flag == Some(flag.as_str()))
                .unwrap_or_else(|| panic!("{flag} has no entry in SETTINGS"));
            let env = arg.get_env().and_then(|e| e.to_str());
            assert!(env.is_some(), "{flag} has no environment variable");
            assert_eq!(env, setting.env, "{flag}");
        }
        for flag in SETTINGS.iter().filter_map(|s| s.flag) {
            assert!(
                command
                    .get_arguments()
                    .any(|a| a.get_long() == flag.strip_prefix("--")),
                "{flag} is in SETTINGS but not on the command line"
            );
        }
    }

    #[test]
    fn flags_override_the_settings() {
        let cli = Cli::from_arg_matches(
            &command()
                .try_get_matches_from([
                    "refund-gateway",
                    "--listen",
                    "127.0.0.1:7",
                    "--log-format",
                    "text",
                    "--simulator",
                ])
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut settings = Settings::default();
        cli.apply(&mut settings);
        assert_eq!(settings.listen.port(), 7);
        assert_eq!(settings.log_format, LogFormat::Text);
        assert!(settings.simulator);
    }

    /// The README's operation store row says how many connections a replica opens on
    /// PostgreSQL: the pool, as many for the refunds' writes, and the store's two sessions.
    #[test]
    fn readme_counts_the_connections_of_a_postgresql_replica() {
        let pool = refund_gateway_store::config::DEFAULT_MAX_CONNECTIONS;
        let row = crate::readme::first_table(crate::readme::section("Configuration"))
            .into_iter()
            .find(|row| row.first().is_some_and(|c| c == "operation store"))
            .unwrap_or_else(|| panic!("README has no operation store row"));
        let said = format!(
            "up to {} connections ({pool} pooled, {pool} for the refunds' writes, 2 sessions",
            2 * pool + 2
        );
        assert!(
            row.iter().any(|c| c.contains(&said)),
            "{row:?} lacks {said:?}"
        );
    }

    /// The README's configuration table: one row per setting with the same TOML key, flag,
    /// environment variable, default and range; the other rows name only [`VARIABLES`].
    #[test]
    fn readme_configuration_table_matches_the_settings() {
        let section = crate::readme::section("Configuration");
        let rows = crate::readme::first_table(section);
        let header = &rows[0];
        let column = |name: &str| {
            header
                .iter()
                .position(|h| h == name)
                .unwrap_or_else(|| panic!("README table has no column {name:?}"))
        };
        let (key, flag, env, default, allowed) = (
            column("TOML key"),
            column("flag"),
            column("environment"),
            column("default"),
            column("allowed"),
        );
        let plain = |cell: &str| cell.replace('`', "");
        let quoted = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        };
        let mut documented = Vec::new();
        for row in &rows[2..] {
            assert_eq!(row.len(), header.len(), "{row:?}");
            if row[key].is_empty() {
                for name in quoted(&row[env]) {
                    assert!(
                        VARIABLES.iter().any(|v| v.name == name),
                        "README names {name}, which is not in VARIABLES"
                    );
                }
                continue;
            }
            let setting = SETTINGS
                .iter()
                .find(|s| s.key == plain(&row[key]))
                .unwrap_or_else(|| panic!("README row {} is not in SETTINGS", row[key]));
            documented.push(setting.key);
            assert_eq!(plain(&row[flag]), setting.flag.unwrap_or(""), "{row:?}");
            assert_eq!(plain(&row[env]), setting.env.unwrap_or(""), "{row:?}");
            assert_eq!(
                quoted(&row[default]).first().map(String::as_str),
                Some(setting.default_value().as_str()),
                "{row:?}"
            );
            let range = setting.allowed.to_string();
            let cell = plain(&row[allowed]);
            assert!(
                cell == range || cell.starts_with(&format!("{range};")),
                "README says {cell:?} for {}, SETTINGS says {range:?}",
                setting.key
            );
        }
        let keys: Vec<_> = SETTINGS.iter().map(|s| s.key).collect();
        assert_eq!(documented, keys, "README rows, in the order of SETTINGS");
        for variable in VARIABLES {
            assert!(
                section.contains(variable.name),
                "{} is not in the README's Configuration section",
                variable.name
            );
        }
    }
}
