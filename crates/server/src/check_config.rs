//! `refund-gateway check-config`: the configuration checked before a deploy. It owns the
//! command's flags ([`CheckConfigArgs`]), the checks, the report ([`Report`]) and how it is
//! printed: aligned tables, or one JSON document with `--format json`.
//!
//! The configuration is loaded exactly as the gateway loads it ([`config::load_settings`], the
//! flags given before `check-config`, [`config::resolve`]), so every secret reference is
//! resolved. Then:
//! - each account's Klarna client is built as the gateway builds it ([`crate::klarna_client`]),
//!   and, unless `--offline`, its credentials are checked with one read-only call that cannot
//!   find anything: `GET` of an order ([`PROBE_ORDER_ID`]) or a partner transaction
//!   ([`PROBE_TRANSACTION_ID`]) that does not exist. Klarna's 404 means the credentials were
//!   accepted; 401 or 403 that they were refused; no answer within [`CHECK_TIMEOUT`] that
//!   Klarna is unreachable. Nothing is ever written to Klarna;
//! - the stores and routes are checked against the accounts with the gateway's own routing
//!   ([`Routing::new`]);
//! - the callers file is parsed and validated as the gateway does ([`Callers::parse`]).
//!
//! The report holds no secret: a credential, key or URL with a password is shown only as where
//! it comes from (an environment variable's name, or a file's path) and `set`, never any
//! character of its value; callers are listed without their token hashes. In simulator mode
//! (`--simulator`) the accounts are the built-in simulator's and nothing is called.
//!
//! Exit status ([`Report::exit_code`]): 0 when no problem was found, 1 otherwise; clap exits
//! with 2 on a usage error. It installs no telemetry and serves nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use clap::{Args, ValueEnum};
use figment::Figment;
use figment::providers::{Format as _, Toml};
use refund_gateway_domain::{
    KlarnaApiKind, KlarnaError, OrderId, PaymentTransactionId, Route, Routing, Store,
};
use refund_gateway_klarna::OutboundRateLimit;
use serde::{Deserialize, Serialize};

use crate::auth::{Callers, CallersError};
use crate::config::{
    self, AccountApi, AccountKind, AccountSettings, AuthSetup, Cli, Config, DEFAULT_ACCOUNT,
    Environ, PARTNER_ACCOUNT,
};
use crate::gateway::KlarnaAccount;

/// The longest one account's check may take, every attempt and wait included.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The order an Order Management account's check reads: a valid UUID no order has.
pub const PROBE_ORDER_ID: &str = "00000000-0000-4000-8000-000000000000";

/// The transaction a partner account's check reads: a valid KRN no transaction has.
pub const PROBE_TRANSACTION_ID: &str =
    "krn:payment:eu1:transaction:00000000-0000-4000-8000-000000000000";

/// Exit status when no problem was found.
pub const EXIT_OK: u8 = 0;
/// Exit status when a problem was found (or the report could not be written).
pub const EXIT_PROBLEMS: u8 = 1;

/// `refund-gateway check-config`: the configuration (file, environment and the flags given
/// before the command) checked as the gateway would load it.
#[derive(Debug, Clone, Args)]
pub struct CheckConfigArgs {
    /// Do not call Klarna: check the configuration only, and report each account's
    /// credentials as not checked.
    #[arg(long)]
    pub offline: bool,

    /// How the report is printed.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned tables, one section each.
    Text,
    /// One JSON document.
    Json,
}

/// Runs the check, prints the report on stdout (and a one-line summary of problems on
/// stderr), and returns the exit status: [`EXIT_OK`] or [`EXIT_PROBLEMS`].
pub async fn run(cli: &Cli, args: &CheckConfigArgs, env: &dyn Environ) -> u8 {
    let report = check(cli, args.offline, env).await;
    let text = match args.format {
        OutputFormat::Text => report.to_text(),
        OutputFormat::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => json + "\n",
            Err(e) => {
                eprintln!("refund-gateway check-config: cannot write the report: {e}");
                return EXIT_PROBLEMS;
            }
        },
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        eprintln!("refund-gateway check-config: cannot write the report: {e}");
        return EXIT_PROBLEMS;
    }
    match report.problems.len() {
        0 => {}
        1 => eprintln!("refund-gateway check-config: 1 problem found"),
        n => eprintln!("refund-gateway check-config: {n} problems found"),
    }
    report.exit_code()
}

/// Loads the configuration as the gateway does (`cli`'s `--config` file, `env`, `cli`'s
/// flags), checks it and, unless `offline`, each account's credentials.
pub async fn check(cli: &Cli, offline: bool, env: &dyn Environ) -> Report {
    let mut report = Report {
        config_file: cli.config_file().map(|p| p.display().to_string()),
        ..Report::default()
    };
    let mut settings = match config::load_settings(cli.config_file(), env) {
        Ok(settings) => settings,
        Err(e) => {
            report.problems.push(e.to_string());
            return report;
        }
    };
    cli.apply(&mut settings);
    let config = match config::resolve(settings, env) {
        Ok(config) => config,
        Err(e) => {
            report.problems.push(e.to_string());
            return report;
        }
    };
    report.describe_gateway(&config);
    report.list_secrets(&config, env);
    report.list_routing(&config);
    let kinds = report
        .check_accounts(config.accounts, &config.settings, offline)
        .await;
    if let Err(e) = Routing::new(kinds.clone(), config.stores, config.routes) {
        report.problems.push(format!("routing: {e}"));
    }
    report.check_callers(&config.auth, &kinds);
    report
}

/// What `check-config` found. It holds no secret, so it may be printed whole.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The `--config` file, if any.
    pub config_file: Option<String>,
    /// True in simulator mode: the accounts are the built-in simulator's.
    pub simulator: bool,
    /// The gateway's listeners, authentication and operation store, as (what, value).
    pub gateway: Vec<(String, String)>,
    /// The Klarna accounts and their checks.
    pub accounts: Vec<AccountReport>,
    /// Where every secret comes from.
    pub secrets: Vec<SecretReport>,
    /// The `[[store]]` tables.
    pub stores: Vec<StoreReport>,
    /// The `[[route]]` tables, in the order they are tried.
    pub routes: Vec<RouteReport>,
    /// How callers authenticate.
    pub authentication: String,
    /// The callers of the callers file.
    pub callers: Vec<CallerReport>,
    /// The webhook signing keys.
    pub webhook_signing_keys: Vec<WebhookKeyReport>,
    /// Worth a look, but the gateway starts with it.
    pub warnings: Vec<String>,
    /// What stops the gateway from starting or from reaching Klarna.
    pub problems: Vec<String>,
}

/// One account.
#[derive(Debug, Clone, Serialize)]
pub struct AccountReport {
    /// Its name, as callers pass it in `klarna_account`.
    pub name: String,
    /// `order_management` or `partner`.
    pub kind: String,
    /// Its base URL (which never holds user info).
    pub base_url: String,
    /// Partner: the partner account id (not a secret).
    pub partner_account_id: Option<String>,
    /// Its outbound rate limit, in words.
    pub rate_limit: String,
    /// The check of its credentials.
    pub check: CheckResult,
}

/// The check of one account's credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", content = "detail", rename_all = "snake_case")]
pub enum CheckResult {
    /// Klarna accepted the credentials.
    Accepted(String),
    /// Not checked, and why.
    NotChecked(String),
    /// Klarna refused the credentials (401, 403).
    Refused(String),
    /// Klarna could not be reached, or did not answer in time.
    Unreachable(String),
    /// Anything else: the client could not be built, or an unexpected answer.
    Failed(String),
}

impl CheckResult {
    /// True when it stops the account from working.
    pub fn is_problem(&self) -> bool {
        matches!(
            self,
            Self::Refused(_) | Self::Unreachable(_) | Self::Failed(_)
        )
    }
}

impl CheckResult {
    /// In a table cell: in full when it went well, else short (the Problems say why).
    fn cell(&self) -> String {
        match self {
            Self::Accepted(_) | Self::NotChecked(_) => self.to_string(),
            Self::Refused(_) => "REFUSED (see Problems)".to_owned(),
            Self::Unreachable(_) => "UNREACHABLE (see Problems)".to_owned(),
            Self::Failed(_) => "FAILED (see Problems)".to_owned(),
        }
    }
}

impl std::fmt::Display for CheckResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Accepted(d) => write!(f, "ok: {d}"),
            Self::NotChecked(d) => write!(f, "not checked ({d})"),
            Self::Refused(d) => write!(f, "refused: {d}"),
            Self::Unreachable(d) => write!(f, "unreachable: {d}"),
            Self::Failed(d) => write!(f, "failed: {d}"),
        }
    }
}

/// Where one secret comes from; never its value.
#[derive(Debug, Clone, Serialize)]
pub struct SecretReport {
    /// Whose: `account eu`, `webhook key …`, `gateway`.
    pub owner: String,
    /// Which: `username`, `password`, `api_key`, …
    pub secret: String,
    /// `env NAME` or `file PATH`.
    pub source: String,
    /// Always `set` once the configuration resolved (an unset one is a problem instead).
    pub value: String,
}

/// One `[[store]]`.
#[derive(Debug, Clone, Serialize)]
pub struct StoreReport {
    /// The store id.
    pub id: String,
    /// Its country, if set.
    pub country: Option<String>,
    /// Its account, if set.
    pub account: Option<String>,
}

/// One `[[route]]`.
#[derive(Debug, Clone, Serialize)]
pub struct RouteReport {
    /// Its index, as errors name it (`route[0]`).
    pub index: usize,
    /// The store id it matches, if any.
    pub store_id: Option<String>,
    /// The store country it matches, if any.
    pub country: Option<String>,
    /// The currency it matches, if any.
    pub currency: Option<String>,
    /// The account it routes to.
    pub account: String,
}

/// One caller of the callers file: what it may do, never its token or token hash.
#[derive(Debug, Clone, Serialize)]
pub struct CallerReport {
    /// Its name.
    pub name: String,
    /// How it authenticates: `token`, or `certificate <subject>`.
    pub authenticates_with: String,
    /// The RPCs it may call (`*`: all).
    pub rpcs: Vec<String>,
    /// The Klarna accounts it may use (`*`: all).
    pub klarna_accounts: Vec<String>,
    /// True when it may use the operator's RPCs.
    pub operator: bool,
    /// Its amount caps and rate, in words (empty: none).
    pub limits: Vec<String>,
}

/// One webhook signing key.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookKeyReport {
    /// Klarna's key id, or `(any id)` for `KLARNA_WEBHOOK_SECRET`.
    pub id: String,
    /// `env NAME` or `file PATH`.
    pub source: String,
    /// Always `set`.
    pub secret: String,
}

impl Report {
    /// [`EXIT_OK`] without problems, else [`EXIT_PROBLEMS`].
    pub fn exit_code(&self) -> u8 {
        if self.problems.is_empty() {
            EXIT_OK
        } else {
            EXIT_PROBLEMS
        }
    }

    fn describe_gateway(&mut self, config: &Config) {
        let settings = &config.settings;
        self.simulator = settings.simulator;
        let tls = match &config.grpc_tls {
            None => "plaintext".to_owned(),
            Some(tls) if tls.client_ca_pem.is_some() => {
                "TLS, client certificates required".to_owned()
            }
            Some(_) => "TLS".to_owned(),
        };
        let store = if config.database_url.is_some() {
            "PostgreSQL (DATABASE_URL)".to_owned()
        } else {
            format!("SQLite in {}", settings.data_dir.display())
        };
        self.gateway = vec![
            ("gRPC".into(), format!("{} ({tls})", settings.listen)),
            ("admin".into(), settings.admin_listen.to_string()),
            (
                "webhooks".into(),
                settings
                    .webhook_address()
                    .map_or_else(|| "off".to_owned(), |a| a.to_string()),
            ),
            ("operation store".into(), store),
            (
                "Klarna".into(),
                if settings.simulator {
                    "the built-in simulator (--simulator)".to_owned()
                } else {
                    format!("{} account(s)", config.accounts.len())
                },
            ),
        ];
        self.authentication = match &config.auth {
            AuthSetup::None => "off: every caller is anonymous with every permission \
                                (development, loopback only)"
                .to_owned(),
            AuthSetup::CallersFile(path) => format!("bearer tokens of {}", path.display()),
        };
    }

    /// Where each secret of the configuration comes from.
    fn list_secrets(&mut self, config: &Config, env: &dyn Environ) {
        let settings = &config.settings;
        let mut add = |owner: String, secret: &str, source: String| {
            self.secrets.push(SecretReport {
                owner,
                secret: secret.to_owned(),
                source,
                value: "set".to_owned(),
            });
        };
        for account in &config.accounts {
            let owner = format!("account {}", account.name);
            match settings.accounts.get(&account.name) {
                Some(s) => {
                    for (secret, source) in account_secret_sources(s) {
                        add(owner.clone(), secret, source);
                    }
                }
                // Not in the file: made from the KLARNA_* (or KLARNA_PARTNER_*) variables.
                None => match &account.api {
                    AccountApi::OrderManagement(credentials) if credentials.is_api_key() => {
                        add(owner, "api_key", "env KLARNA_API_KEY".into());
                    }
                    AccountApi::OrderManagement(_) => {
                        add(owner.clone(), "username", "env KLARNA_USERNAME".into());
                        add(owner, "password", "env KLARNA_PASSWORD".into());
                    }
                    AccountApi::Partner(_) => {
                        add(
                            owner.clone(),
                            "api_key",
                            "env KLARNA_PARTNER_API_KEY".into(),
                        );
                        if let Some(file) = env.var("KLARNA_PARTNER_CLIENT_KEY_FILE") {
                            add(owner, "client_key", format!("file {file}"));
                        }
                    }
                },
            }
        }
        if let Some(key) = &settings.tls_key_file {
            add(
                "gateway".into(),
                "tls_key",
                format!("file {}", key.display()),
            );
        }
        if config.database_url.is_some() {
            add("gateway".into(), "database_url", "env DATABASE_URL".into());
        }
        if env.var("REDIS_URL").is_some() {
            add("gateway".into(), "redis_url", "env REDIS_URL".into());
        }
        for key in &settings.webhook_signing_keys {
            self.webhook_signing_keys.push(WebhookKeyReport {
                id: key.id.clone(),
                source: source(key.secret_env.as_deref(), key.secret_file.as_deref()),
                secret: "set".to_owned(),
            });
        }
        if config.webhook_keys.iter().any(|k| k.id.is_none()) {
            self.webhook_signing_keys.push(WebhookKeyReport {
                id: "(any id)".to_owned(),
                source: "env KLARNA_WEBHOOK_SECRET".to_owned(),
                secret: "set".to_owned(),
            });
        }
    }

    fn list_routing(&mut self, config: &Config) {
        self.stores = config
            .stores
            .iter()
            .map(|s: &Store| StoreReport {
                id: s.id.to_string(),
                country: s.country.as_ref().map(ToString::to_string),
                account: s.account.clone(),
            })
            .collect();
        self.routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(index, r): (usize, &Route)| RouteReport {
                index,
                store_id: r.store_id.as_ref().map(ToString::to_string),
                country: r.country.as_ref().map(ToString::to_string),
                currency: r.currency.as_ref().map(ToString::to_string),
                account: r.account.clone(),
            })
            .collect();
    }

    /// Builds each account's client and, unless `offline`, checks its credentials (all
    /// accounts at once). Returns the accounts' names and kinds, for routing.
    async fn check_accounts(
        &mut self,
        accounts: Vec<config::Account>,
        settings: &config::Settings,
        offline: bool,
    ) -> Vec<(String, KlarnaApiKind)> {
        if settings.simulator {
            if !accounts.is_empty() {
                let names: Vec<&str> = accounts.iter().map(|a| a.name.as_str()).collect();
                self.warnings.push(format!(
                    "simulator mode: the configured accounts ({}) are not used",
                    names.join(", ")
                ));
            }
            let simulated = [
                (DEFAULT_ACCOUNT, AccountKind::OrderManagement),
                (PARTNER_ACCOUNT, AccountKind::Partner),
            ];
            for (name, kind) in simulated {
                self.accounts.push(AccountReport {
                    name: name.to_owned(),
                    kind: kind_name(kind).to_owned(),
                    base_url: "(the built-in simulator)".to_owned(),
                    partner_account_id: None,
                    rate_limit: "none".to_owned(),
                    check: CheckResult::NotChecked("simulator mode".to_owned()),
                });
            }
            return simulated
                .iter()
                .map(|(name, kind)| ((*name).to_owned(), api_kind(*kind)))
                .collect();
        }
        let attempt_timeout = settings.klarna_attempt_timeout().min(CHECK_TIMEOUT);
        let mut kinds = Vec::new();
        let mut clients = Vec::new();
        for account in accounts {
            let (kind, partner_account_id) = match &account.api {
                AccountApi::OrderManagement(_) => (AccountKind::OrderManagement, None),
                AccountApi::Partner(p) => {
                    (AccountKind::Partner, Some(p.partner_account_id.clone()))
                }
            };
            kinds.push((account.name.clone(), api_kind(kind)));
            if account.base_url.is_plain_http_off_loopback() {
                self.warnings.push(format!(
                    "account {:?} uses plain http to {}, which is not loopback (allowed by \
                     allow_plain_http or KLARNA_ALLOW_PLAIN_HTTP): its credentials cross the \
                     network in clear",
                    account.name,
                    account.base_url.host()
                ));
            }
            let row = AccountReport {
                name: account.name.clone(),
                kind: kind_name(kind).to_owned(),
                base_url: account.base_url.as_str().to_owned(),
                partner_account_id,
                rate_limit: rate_limit_text(account.rate_limit.as_ref()),
                check: CheckResult::NotChecked("--offline".to_owned()),
            };
            clients.push((row, crate::klarna_client(account, attempt_timeout)));
        }
        let checks = clients.into_iter().map(|(mut row, client)| async move {
            row.check = match client {
                Err(crate::ServerError::Account { message, .. }) => CheckResult::Failed(message),
                Err(e) => CheckResult::Failed(e.to_string()),
                Ok(_) if offline => CheckResult::NotChecked("--offline".to_owned()),
                Ok((client, _)) => probe(&client).await,
            };
            row
        });
        for row in futures::future::join_all(checks).await {
            if row.check.is_problem() {
                self.problems
                    .push(format!("account {:?}: {}", row.name, row.check));
            }
            self.accounts.push(row);
        }
        kinds
    }

    /// Reads and validates the callers file as the gateway does, and lists its callers.
    fn check_callers(&mut self, auth: &AuthSetup, accounts: &[(String, KlarnaApiKind)]) {
        let AuthSetup::CallersFile(path) = auth else {
            return;
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                let error = CallersError::Read {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                };
                self.problems.push(error.to_string());
                return;
            }
        };
        if let Err(e) = Callers::parse(&text) {
            self.problems.push(e.to_string());
            return;
        }
        let listed = match caller_reports(&text) {
            Ok(listed) => listed,
            Err(e) => {
                self.warnings
                    .push(format!("callers file {}: not listed: {e}", path.display()));
                return;
            }
        };
        if listed.is_empty() {
            self.warnings.push(format!(
                "callers file {} has no callers: every call will be refused",
                path.display()
            ));
        }
        let known: BTreeSet<&str> = accounts.iter().map(|(n, _)| n.as_str()).collect();
        for caller in &listed {
            for account in &caller.klarna_accounts {
                if account != crate::auth::ALL && !known.contains(account.as_str()) {
                    self.warnings.push(format!(
                        "caller {:?} may use account {account:?}, which is not configured",
                        caller.name
                    ));
                }
            }
        }
        self.callers = listed;
    }

    /// The report as aligned tables, one section each, problems last.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
        out.push_str(&format!(
            "Configuration: {}\n",
            self.config_file
                .as_deref()
                .unwrap_or("(no --config file: environment and flags only)")
        ));
        if !self.gateway.is_empty() {
            section(
                &mut out,
                "Gateway",
                &["", ""],
                self.gateway
                    .iter()
                    .map(|(k, v)| vec![k.clone(), v.clone()])
                    .collect(),
            );
            section(
                &mut out,
                "Accounts",
                &["NAME", "KIND", "BASE URL", "RATE LIMIT", "CHECK"],
                self.accounts
                    .iter()
                    .map(|a| {
                        let url = match &a.partner_account_id {
                            Some(id) => format!("{} (partner account {id})", a.base_url),
                            None => a.base_url.clone(),
                        };
                        vec![
                            a.name.clone(),
                            a.kind.clone(),
                            url,
                            a.rate_limit.clone(),
                            a.check.cell(),
                        ]
                    })
                    .collect(),
            );
            section(
                &mut out,
                "Secrets (values never shown)",
                &["OWNER", "SECRET", "SOURCE", "VALUE"],
                self.secrets
                    .iter()
                    .map(|s| {
                        vec![
                            s.owner.clone(),
                            s.secret.clone(),
                            s.source.clone(),
                            s.value.clone(),
                        ]
                    })
                    .collect(),
            );
            section(
                &mut out,
                "Stores",
                &["ID", "COUNTRY", "ACCOUNT"],
                self.stores
                    .iter()
                    .map(|s| vec![s.id.clone(), dash(&s.country), dash(&s.account)])
                    .collect(),
            );
            section(
                &mut out,
                "Routes (tried in order)",
                &["ROUTE", "STORE_ID", "COUNTRY", "CURRENCY", "", "ACCOUNT"],
                self.routes
                    .iter()
                    .map(|r| {
                        vec![
                            format!("route[{}]", r.index),
                            dash(&r.store_id),
                            dash(&r.country),
                            dash(&r.currency),
                            "->".to_owned(),
                            r.account.clone(),
                        ]
                    })
                    .collect(),
            );
            out.push_str(&format!(
                "\nCallers\n  authentication: {}\n",
                self.authentication
            ));
            if !self.callers.is_empty() {
                out.push_str(&table(
                    &["NAME", "AUTH", "RPCS", "ACCOUNTS", "OPERATOR", "LIMITS"],
                    &self
                        .callers
                        .iter()
                        .map(|c| {
                            vec![
                                c.name.clone(),
                                c.authenticates_with.clone(),
                                c.rpcs.join(", "),
                                c.klarna_accounts.join(", "),
                                if c.operator { "yes" } else { "no" }.to_owned(),
                                if c.limits.is_empty() {
                                    "-".to_owned()
                                } else {
                                    c.limits.join(", ")
                                },
                            ]
                        })
                        .collect::<Vec<_>>(),
                ));
            }
            section(
                &mut out,
                "Webhook signing keys",
                &["ID", "SOURCE", "SECRET"],
                self.webhook_signing_keys
                    .iter()
                    .map(|k| vec![k.id.clone(), k.source.clone(), k.secret.clone()])
                    .collect(),
            );
        }
        if !self.warnings.is_empty() {
            out.push_str("\nWarnings\n");
            for warning in &self.warnings {
                out.push_str(&format!("  - {warning}\n"));
            }
        }
        if self.problems.is_empty() {
            out.push_str("\nProblems: none\n");
        } else {
            out.push_str("\nProblems\n");
            for problem in &self.problems {
                out.push_str(&format!("  - {problem}\n"));
            }
        }
        out
    }
}

/// Checks one account's credentials with a read of something that does not exist, within
/// [`CHECK_TIMEOUT`].
async fn probe(client: &KlarnaAccount) -> CheckResult {
    let call = async {
        match client {
            KlarnaAccount::OrderManagement(api) => match OrderId::parse(PROBE_ORDER_ID) {
                Ok(id) => Some(api.get_order(&id).await.map(drop)),
                Err(_) => None,
            },
            KlarnaAccount::Partner(api) => {
                match PaymentTransactionId::parse(PROBE_TRANSACTION_ID) {
                    Ok(id) => Some(api.get_transaction(&id).await.map(drop)),
                    Err(_) => None,
                }
            }
        }
    };
    let deadline = tokio::time::Instant::now() + CHECK_TIMEOUT;
    // The deadline bounds every attempt and wait; the timeout is a backstop past it.
    let bounded = refund_gateway_klarna::with_deadline(deadline, call);
    match tokio::time::timeout(CHECK_TIMEOUT + Duration::from_secs(1), bounded).await {
        Err(_) => {
            CheckResult::Unreachable(format!("no answer within {} s", CHECK_TIMEOUT.as_secs()))
        }
        Ok(None) => CheckResult::Failed("the probe id does not parse".to_owned()),
        Ok(Some(result)) => classify(result),
    }
}

/// What the answer to the probe read says about the credentials.
fn classify(result: Result<(), KlarnaError>) -> CheckResult {
    let error = match result {
        Ok(()) => return CheckResult::Accepted("credentials accepted".to_owned()),
        Err(e) => e,
    };
    match &error {
        KlarnaError::Answered(answer) => {
            let code = answer.error_code.as_deref().unwrap_or("(no error_code)");
            match answer.status {
                404 if answer.error_object => {
                    CheckResult::Accepted(format!("credentials accepted (probe read: 404 {code})"))
                }
                404 => CheckResult::Failed(
                    "404 without Klarna's error body: is the base URL Klarna's API?".to_owned(),
                ),
                401 | 403 => CheckResult::Refused(format!(
                    "Klarna answered {} {code}: credentials (or the partner account) not \
                     accepted",
                    answer.status
                )),
                _ => CheckResult::Failed(format!("unexpected answer: {error}")),
            }
        }
        KlarnaError::NotSent(_) | KlarnaError::NoAnswer(_) => {
            CheckResult::Unreachable(error.to_string())
        }
        KlarnaError::Throttled(_) | KlarnaError::BadResponse(_) => {
            CheckResult::Failed(error.to_string())
        }
    }
}

/// The secrets of an account of the file: (which, where from).
fn account_secret_sources(s: &AccountSettings) -> Vec<(&'static str, String)> {
    let mut sources = Vec::new();
    match s.kind {
        AccountKind::OrderManagement if s.api_key_env.is_some() || s.api_key_file.is_some() => {
            sources.push((
                "api_key",
                source(s.api_key_env.as_deref(), s.api_key_file.as_deref()),
            ));
        }
        AccountKind::OrderManagement => {
            sources.push((
                "username",
                source(s.username_env.as_deref(), s.username_file.as_deref()),
            ));
            sources.push((
                "password",
                source(s.password_env.as_deref(), s.password_file.as_deref()),
            ));
        }
        AccountKind::Partner => {
            sources.push((
                "api_key",
                source(s.api_key_env.as_deref(), s.api_key_file.as_deref()),
            ));
            if let Some(key) = &s.client_key_file {
                sources.push(("client_key", format!("file {}", key.display())));
            }
        }
    }
    sources
}

/// `env NAME` or `file PATH`.
fn source(var: Option<&str>, file: Option<&Path>) -> String {
    match (var, file) {
        (Some(var), _) => format!("env {var}"),
        (None, Some(file)) => format!("file {}", file.display()),
        (None, None) => "-".to_owned(),
    }
}

fn kind_name(kind: AccountKind) -> &'static str {
    match kind {
        AccountKind::OrderManagement => "order_management",
        AccountKind::Partner => "partner",
    }
}

fn api_kind(kind: AccountKind) -> KlarnaApiKind {
    match kind {
        AccountKind::OrderManagement => KlarnaApiKind::OrderManagement,
        AccountKind::Partner => KlarnaApiKind::Payments,
    }
}

fn rate_limit_text(limit: Option<&OutboundRateLimit>) -> String {
    match limit {
        None => "none".to_owned(),
        Some(l) => format!(
            "{}/s, burst {}{}",
            l.requests_per_second,
            l.burst,
            if l.shared.is_some() {
                ", shared (REDIS_URL)"
            } else {
                ""
            }
        ),
    }
}

/// One `[[caller]]` as listed: what it may do. Read without the token hash's value; the file
/// was validated by [`Callers::parse`] first.
#[derive(Debug, Deserialize)]
struct CallerView {
    name: String,
    #[serde(default)]
    certificate_subject: Option<String>,
    #[serde(default)]
    rpcs: Vec<String>,
    #[serde(default)]
    klarna_accounts: Vec<String>,
    #[serde(default)]
    max_amount: BTreeMap<String, i64>,
    #[serde(default)]
    max_amount_per_day: BTreeMap<String, i64>,
    #[serde(default)]
    requests_per_second: Option<u32>,
    #[serde(default)]
    burst: Option<u32>,
    #[serde(default)]
    scope_as: Option<String>,
    #[serde(default)]
    operator: bool,
    /// Only whether it is there: never read.
    #[serde(default)]
    token_sha256: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
struct CallersView {
    #[serde(default)]
    caller: Vec<CallerView>,
}

/// The callers of a (valid) callers file, as listed.
fn caller_reports(text: &str) -> Result<Vec<CallerReport>, String> {
    let file: CallersView = Figment::from(Toml::string(text))
        .extract()
        .map_err(|e| e.to_string())?;
    Ok(file
        .caller
        .into_iter()
        .map(|c| {
            let authenticates_with = match (&c.token_sha256, &c.certificate_subject) {
                (Some(_), _) => "token".to_owned(),
                (None, Some(subject)) => format!("certificate {subject}"),
                (None, None) => "-".to_owned(),
            };
            let mut limits = Vec::new();
            for (currency, cap) in &c.max_amount {
                limits.push(format!("max {cap} {currency}/operation"));
            }
            for (currency, cap) in &c.max_amount_per_day {
                limits.push(format!("max {cap} {currency}/day"));
            }
            if let Some(rps) = c.requests_per_second {
                limits.push(format!("{rps}/s burst {}", c.burst.unwrap_or(rps)));
            }
            if let Some(scope) = &c.scope_as {
                limits.push(format!("scope_as {scope}"));
            }
            CallerReport {
                name: c.name,
                authenticates_with,
                rpcs: c.rpcs,
                klarna_accounts: c.klarna_accounts,
                operator: c.operator,
                limits,
            }
        })
        .collect())
}

/// Appends `\n{title}\n` and the table (or `(none)`).
fn section(out: &mut String, title: &str, headers: &[&str], rows: Vec<Vec<String>>) {
    out.push('\n');
    out.push_str(title);
    out.push('\n');
    if rows.is_empty() {
        out.push_str("  (none)\n");
    } else {
        out.push_str(&table(headers, &rows));
    }
}

/// Rows aligned in columns, indented by two spaces; a header row unless every header is
/// empty.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::from(" ");
        for (i, cell) in cells.iter().enumerate() {
            text.push(' ');
            text.push_str(cell);
            if i + 1 < cells.len() {
                let width = widths.get(i).copied().unwrap_or(0);
                text.push_str(&" ".repeat(width.saturating_sub(cell.chars().count()) + 1));
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut out = String::new();
    if headers.iter().any(|h| !h.is_empty()) {
        out.push_str(&line(headers.to_vec()));
    }
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use refund_gateway_domain::KlarnaErrorResponse;
    use std::collections::HashMap;

    struct Vars(HashMap<String, String>);
    impl Environ for Vars {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }

    fn answered(status: u16, code: Option<&str>, error_object: bool) -> Result<(), KlarnaError> {
        Err(KlarnaError::Answered(Box::new(KlarnaErrorResponse {
            status,
            error_code: code.map(str::to_owned),
            error_object,
            ..KlarnaErrorResponse::default()
        })))
    }

    #[test]
    fn the_probe_ids_are_valid() {
        assert!(OrderId::parse(PROBE_ORDER_ID).is_ok());
        assert!(PaymentTransactionId::parse(PROBE_TRANSACTION_ID).is_ok());
    }

    #[test]
    fn answers_say_whether_the_credentials_were_accepted() {
        assert!(matches!(
            classify(answered(404, Some("NOT_FOUND"), true)),
            CheckResult::Accepted(_)
        ));
        assert!(matches!(classify(Ok(())), CheckResult::Accepted(_)));
        // A 404 from something that is not Klarna proves nothing.
        assert!(classify(answered(404, None, false)).is_problem());
        for status in [401, 403] {
            assert!(matches!(
                classify(answered(status, Some("UNAUTHORIZED"), true)),
                CheckResult::Refused(_)
            ));
        }
        assert!(matches!(
            classify(Err(KlarnaError::NotSent("connection refused".into()))),
            CheckResult::Unreachable(_)
        ));
        assert!(matches!(
            classify(Err(KlarnaError::NoAnswer("timeout".into()))),
            CheckResult::Unreachable(_)
        ));
        assert!(matches!(
            classify(answered(503, Some("INTERNAL_ERROR"), true)),
            CheckResult::Failed(_)
        ));
    }

    #[test]
    fn tables_are_aligned() {
        let text = table(
            &["A", "BB"],
            &[
                vec!["long cell".into(), "x".into()],
                vec!["y".into(), "z".into()],
            ],
        );
        assert_eq!(text, "  A          BB\n  long cell  x\n  y          z\n");
    }

    #[tokio::test]
    async fn an_offline_report_lists_everything_and_no_secret()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let callers = dir.path().join("callers.toml");
        let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        std::fs::write(
            &callers,
            format!(
                "[[caller]]\nname = \"checkout\"\ntoken_sha256 = \"{hash}\"\n\
                 rpcs = [\"RefundOrder\"]\nklarna_accounts = [\"eu\", \"gone\"]\n\
                 max_amount = {{ SEK = 50000 }}\n"
            ),
        )?;
        let config = dir.path().join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "callers_file = {callers:?}\n\
                 [accounts.eu]\napi_url = \"http://127.0.0.1:9\"\n\
                 username_env = \"EU_USER\"\npassword_env = \"EU_PASSWORD\"\n\
                 [[store]]\nid = \"stockholm-1\"\ncountry = \"SE\"\naccount = \"eu\"\n\
                 [[route]]\ncurrency = \"SEK\"\naccount = \"eu\"\n\
                 [[webhook_signing_keys]]\nid = \"krn:key:1\"\nsecret_file = \"{}\"\n",
                dir.path().join("webhook-secret").display()
            ),
        )?;
        std::fs::write(dir.path().join("webhook-secret"), "whsec-do-not-print\n")?;
        let env = Vars(
            [
                ("EU_USER", "user-do-not-print"),
                ("EU_PASSWORD", "password-do-not-print"),
                ("DATABASE_URL", "postgres://u:db-do-not-print@db/x"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        );
        let cli = Cli::try_parse_from([
            "refund-gateway",
            "--config",
            config.to_str().unwrap_or_default(),
        ])?;
        let report = check(&cli, true, &env).await;
        assert_eq!(report.exit_code(), EXIT_OK, "{:?}", report.problems);
        let text = report.to_text();
        let json = serde_json::to_string(&report)?;
        for shown in [
            "stockholm-1",
            "route[0]",
            "SEK",
            "checkout",
            "RefundOrder",
            "max 50000 SEK/operation",
            "env EU_PASSWORD",
            "env DATABASE_URL",
            "krn:key:1",
            "not checked (--offline)",
        ] {
            assert!(text.contains(shown), "{shown} not in\n{text}");
        }
        assert!(
            report.warnings.iter().any(|w| w.contains("\"gone\"")),
            "{:?}",
            report.warnings
        );
        for secret in ["do-not-print", hash, &hash[..16]] {
            assert!(!text.contains(secret), "{secret} in\n{text}");
            assert!(!json.contains(secret), "{secret} in\n{json}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn plain_http_off_loopback_is_a_warning() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("gateway.toml");
        let accounts = "[accounts.lan]\napi_url = \"http://10.1.2.3:8080\"\n\
                        allow_plain_http = true\nusername_env = \"U\"\npassword_env = \"P\"\n\
                        [accounts.local]\napi_url = \"http://127.0.0.1:9\"\n\
                        allow_plain_http = true\nusername_env = \"U\"\npassword_env = \"P\"\n";
        std::fs::write(&config, accounts)?;
        let env = Vars(
            [("U", "user"), ("P", "password-do-not-print")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        );
        let cli = Cli::try_parse_from([
            "refund-gateway",
            "--auth",
            "none",
            "--config",
            config.to_str().unwrap_or_default(),
        ])?;
        let report = check(&cli, true, &env).await;
        assert_eq!(report.exit_code(), EXIT_OK, "{:?}", report.problems);
        let plain: Vec<_> = report
            .warnings
            .iter()
            .filter(|w| w.contains("plain http"))
            .collect();
        assert_eq!(plain.len(), 1, "{:?}", report.warnings);
        assert!(
            plain[0].contains("\"lan\"")
                && plain[0].contains("10.1.2.3")
                && plain[0].contains("in clear"),
            "{plain:?}"
        );
        let text = report.to_text();
        assert!(text.contains("Warnings\n  - account \"lan\""), "{text}");
        assert!(!text.contains("do-not-print"), "{text}");
        Ok(())
    }

    #[tokio::test]
    async fn simulator_mode_calls_nothing() -> Result<(), Box<dyn std::error::Error>> {
        let cli = Cli::try_parse_from(["refund-gateway", "--simulator", "--auth", "none"])?;
        let report = check(&cli, false, &Vars(HashMap::new())).await;
        assert_eq!(report.exit_code(), EXIT_OK, "{:?}", report.problems);
        assert!(report.simulator);
        assert_eq!(report.accounts.len(), 2);
        assert!(
            report
                .accounts
                .iter()
                .all(|a| a.check == CheckResult::NotChecked("simulator mode".into()))
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_configuration_that_does_not_resolve_is_one_problem() {
        let cli = Cli::try_parse_from(["refund-gateway", "--auth", "none"]);
        let Ok(cli) = cli else {
            panic!("{cli:?}");
        };
        let report = check(&cli, true, &Vars(HashMap::new())).await;
        assert_eq!(report.exit_code(), EXIT_PROBLEMS);
        assert!(
            report.problems[0].contains("KLARNA_USERNAME"),
            "{:?}",
            report.problems
        );
        assert!(report.to_text().contains("Problems\n  - no Klarna account"));
    }
}
