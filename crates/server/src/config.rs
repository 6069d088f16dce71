//! Configuration: a TOML file (`--config` / `REFUND_GATEWAY_CONFIG`), then environment
//! variables, then command-line flags, each overriding the one before. Secrets never sit in
//! the file: an account names the environment variable or file that holds each credential,
//! and the resolved value lives in a [`SecretString`] that never prints.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use refund_gateway_klarna::{BaseUrl, Environment, KlarnaCredentials, Region, regional_base_url};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// The account name used when credentials come from `KLARNA_*` environment variables.
pub const DEFAULT_ACCOUNT: &str = "default";

/// Why the configuration cannot be used. Messages name the setting or variable to fix and
/// never contain a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an override could not be read.
    #[error("cannot read configuration: {0}")]
    Load(String),
    /// No Klarna account and no `--simulator`.
    #[error(
        "no Klarna account configured: missing {0}. Set them (or configure [accounts.<name>] in \
         the --config file), or run with --simulator for a demo against the built-in Klarna simulator"
    )]
    MissingCredentials(String),
    /// An account is configured wrongly.
    #[error("account {account:?}: {problem}")]
    Account {
        /// The account name.
        account: String,
        /// What is wrong.
        problem: String,
    },
}

/// Settings as read from the file and the environment, before secrets are resolved.
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
    /// How long completed operations are kept, in days (audit events are kept forever).
    pub retention_days: u64,
    /// Log format: `json` (default) or `text`.
    pub log_format: LogFormat,
    /// Klarna accounts by name.
    pub accounts: BTreeMap<String, AccountSettings>,
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
            retention_days: 30,
            log_format: LogFormat::Json,
            accounts: BTreeMap::new(),
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

/// One Klarna account in the file. Either `api_url`, or `region` + `environment`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountSettings {
    /// Base URL override (https, or http on loopback only).
    pub api_url: Option<String>,
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
}

/// A Klarna account ready to use.
#[derive(Debug)]
pub struct Account {
    /// Its name, as callers pass it in `klarna_account`.
    pub name: String,
    /// Where its API lives.
    pub base_url: BaseUrl,
    /// Its credentials.
    pub credentials: KlarnaCredentials,
}

/// The configuration `run` takes: settings plus resolved accounts and database.
#[derive(Debug)]
pub struct Config {
    /// The settings.
    pub settings: Settings,
    /// Resolved accounts (empty with `simulator`, which brings its own).
    pub accounts: Vec<Account>,
    /// `DATABASE_URL` (PostgreSQL); `None` for the embedded SQLite file under `data_dir`.
    pub database_url: Option<SecretString>,
}

impl Config {
    /// Settings for tests and the demo: defaults with the in-process simulator on, listening
    /// on loopback port 0.
    pub fn for_simulator(data_dir: &Path) -> Self {
        Self {
            settings: Settings {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                data_dir: data_dir.to_path_buf(),
                simulator: true,
                ..Settings::default()
            },
            accounts: Vec::new(),
            database_url: None,
        }
    }

    /// Timeout of one Klarna HTTP attempt.
    pub fn klarna_attempt_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.klarna_attempt_timeout_ms)
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

/// Loads settings: defaults, then the TOML file (if any), then `REFUND_GATEWAY_*` variables.
/// Command-line flags are applied by the caller on the result.
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
    let parse_addr = |name: &str| -> Result<Option<SocketAddr>, ConfigError> {
        env.var(name)
            .map(|v| {
                v.parse().map_err(|_| {
                    ConfigError::Load(format!("{name}={v:?} is not a host:port address"))
                })
            })
            .transpose()
    };
    if let Some(a) = parse_addr("REFUND_GATEWAY_LISTEN")? {
        settings.listen = a;
    }
    if let Some(a) = parse_addr("REFUND_GATEWAY_ADMIN_LISTEN")? {
        settings.admin_listen = a;
    }
    if let Some(d) = env.var("REFUND_GATEWAY_DATA_DIR") {
        settings.data_dir = PathBuf::from(d);
    }
    Ok(settings)
}

/// Resolves the accounts: those of the file, plus `default` from `KLARNA_*` variables when
/// `KLARNA_USERNAME` or `KLARNA_PASSWORD` is set. With `simulator` no account is needed.
pub fn resolve(settings: Settings, env: &dyn Environ) -> Result<Config, ConfigError> {
    let mut accounts = Vec::new();
    for (name, account) in &settings.accounts {
        accounts.push(resolve_account(name, account, env)?);
    }
    let from_env = [
        "KLARNA_USERNAME",
        "KLARNA_PASSWORD",
        "KLARNA_API_URL",
        "KLARNA_REGION",
    ]
    .iter()
    .any(|v| env.var(v).is_some());
    if from_env && !settings.accounts.contains_key(DEFAULT_ACCOUNT) {
        accounts.push(env_account(env)?);
    }
    if accounts.is_empty() && !settings.simulator {
        return Err(ConfigError::MissingCredentials(
            "KLARNA_USERNAME, KLARNA_PASSWORD and KLARNA_API_URL (or KLARNA_REGION + KLARNA_ENVIRONMENT)"
                .into(),
        ));
    }
    let database_url = env.var("DATABASE_URL").map(SecretString::from);
    Ok(Config {
        settings,
        accounts,
        database_url,
    })
}

fn env_account(env: &dyn Environ) -> Result<Account, ConfigError> {
    let mut missing = Vec::new();
    let username = env.var("KLARNA_USERNAME");
    let password = env.var("KLARNA_PASSWORD");
    if username.is_none() {
        missing.push("KLARNA_USERNAME");
    }
    if password.is_none() {
        missing.push("KLARNA_PASSWORD");
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
    let base_url = base_url(DEFAULT_ACCOUNT, api_url, region, environment)?;
    match (username, password) {
        (Some(username), Some(password)) => Ok(Account {
            name: DEFAULT_ACCOUNT.to_owned(),
            base_url,
            credentials: KlarnaCredentials {
                username,
                password: SecretString::from(password),
            },
        }),
        _ => Err(ConfigError::MissingCredentials(
            "KLARNA_USERNAME, KLARNA_PASSWORD".into(),
        )),
    }
}

fn base_url(
    account: &str,
    api_url: Option<String>,
    region: Option<String>,
    environment: Option<String>,
) -> Result<BaseUrl, ConfigError> {
    let problem = |problem: String| ConfigError::Account {
        account: account.to_owned(),
        problem,
    };
    if let Some(url) = api_url {
        return BaseUrl::parse(&url).map_err(|e| problem(format!("api_url: {e}")));
    }
    let region: Region = region
        .ok_or_else(|| problem("set api_url, or region and environment".into()))?
        .parse()
        .map_err(|_| problem("region must be eu, na or oc".into()))?;
    let environment: Environment = environment
        .ok_or_else(|| problem("environment (playground or live) is required with region".into()))?
        .parse()
        .map_err(|_| problem("environment must be playground or live".into()))?;
    Ok(regional_base_url(region, environment))
}

fn resolve_account(
    name: &str,
    account: &AccountSettings,
    env: &dyn Environ,
) -> Result<Account, ConfigError> {
    let problem = |problem: String| ConfigError::Account {
        account: name.to_owned(),
        problem,
    };
    let secret = |what: &str,
                  var: &Option<String>,
                  file: &Option<PathBuf>|
     -> Result<String, ConfigError> {
        match (var, file) {
            (Some(var), None) => env
                .var(var)
                .ok_or_else(|| problem(format!("{what}_env names {var}, which is not set"))),
            (None, Some(file)) => std::fs::read_to_string(file)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|e| problem(format!("{what}_file {}: {e}", file.display()))),
            (Some(_), Some(_)) => Err(problem(format!("set {what}_env or {what}_file, not both"))),
            (None, None) => Err(problem(format!("{what}_env or {what}_file is required"))),
        }
    };
    let username = secret("username", &account.username_env, &account.username_file)?;
    let password = secret("password", &account.password_env, &account.password_file)?;
    Ok(Account {
        name: name.to_owned(),
        base_url: base_url(
            name,
            account.api_url.clone(),
            account.region.clone(),
            account.environment.clone(),
        )?,
        credentials: KlarnaCredentials {
            username,
            password: SecretString::from(password),
        },
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
            Settings::default(),
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
}
