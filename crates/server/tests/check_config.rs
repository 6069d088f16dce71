//! `refund-gateway check-config` as a process, against a Klarna simulator: a good
//! configuration passes and lists its accounts, stores, routes and callers without a secret;
//! refused credentials, an unreachable Klarna, a route to an unknown account and a missing
//! secret each fail with exit status 1 and say what is wrong; `--offline` calls nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, anyhow, ensure};
use klarna_sim::{RunningSimulator, SimConfig};
use sha2::{Digest, Sha256};

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_refund-gateway");

const USERNAME: &str = "cc-merchant-user-4b1d";
const PASSWORD: &str = "cc-password-never-printed-7f3a";
const WRONG_PASSWORD: &str = "cc-wrong-password-never-printed-2c9e";
const PARTNER_KEY: &str = "klarna_test_api_cc-partner-key-never-printed-9b2d";
const API_KEY: &str = "klarna_test_api_cc-merchant-key-never-printed-6e0f";
const WRONG_API_KEY: &str = "klarna_test_api_cc-wrong-key-never-printed-88c1";
const WEBHOOK_SECRET: &str = "cc-webhook-secret-never-printed-51aa";
const TOKEN: &str = "cc-caller-token-never-printed-e04c";

/// The secrets the tests give the gateway: none may appear in what it prints.
const SECRETS: [&str; 8] = [
    USERNAME,
    PASSWORD,
    WRONG_PASSWORD,
    API_KEY,
    WRONG_API_KEY,
    PARTNER_KEY,
    WEBHOOK_SECRET,
    TOKEN,
];

async fn simulator() -> anyhow::Result<RunningSimulator> {
    Ok(klarna_sim::spawn(SimConfig {
        username: USERNAME.to_owned(),
        password: PASSWORD.to_owned(),
        api_key: API_KEY.to_owned(),
        partner_api_key: PARTNER_KEY.to_owned(),
        ..SimConfig::default()
    })
    .await?)
}

/// A TOML basic string of `path`.
fn toml_path(path: &Path) -> anyhow::Result<String> {
    let text = path
        .to_str()
        .ok_or_else(|| anyhow!("{} is not UTF-8", path.display()))?;
    Ok(format!(
        "\"{}\"",
        text.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// Writes `gateway.toml` into `dir`: loopback listeners, the data directory in `dir`, then
/// `body`.
fn write_config(dir: &Path, body: &str) -> anyhow::Result<PathBuf> {
    let toml = format!(
        "listen = \"127.0.0.1:0\"\n\
         admin_listen = \"127.0.0.1:0\"\n\
         data_dir = {}\n\
         {body}",
        toml_path(&dir.join("data"))?
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, toml)?;
    Ok(path)
}

/// An Order Management account `name` at `url`, its secrets in `CC_*` variables.
fn om_account(name: &str, url: &str) -> String {
    format!(
        "[accounts.{name}]\n\
         api_url = \"{url}\"\n\
         username_env = \"CC_USERNAME\"\n\
         password_env = \"CC_PASSWORD\"\n"
    )
}

/// One run of `refund-gateway --config <config> check-config <args>` with only `env` of the
/// Klarna-, gateway- and database-related variables.
struct Run {
    output: Output,
}

async fn check_config(config: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Run> {
    let mut cmd = Command::new(BIN);
    for (var, _) in std::env::vars() {
        if var.starts_with("KLARNA_")
            || var.starts_with("REFUND_GATEWAY_")
            || var.starts_with("CC_")
            || var == "DATABASE_URL"
            || var == "REDIS_URL"
        {
            cmd.env_remove(var);
        }
    }
    cmd.envs(env.iter().copied())
        .arg("--config")
        .arg(config)
        .arg("check-config")
        .args(args);
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .with_context(|| format!("running {BIN}"))?;
    Ok(Run { output })
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn all(&self) -> String {
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            self.stdout(),
            String::from_utf8_lossy(&self.output.stderr)
        )
    }

    /// Checks the exit status, and that no secret was printed; returns stdout and stderr.
    fn exited(&self, code: i32) -> anyhow::Result<String> {
        let all = self.all();
        ensure!(
            self.output.status.code() == Some(code),
            "exit {:?}, expected {code}:\n{all}",
            self.output.status
        );
        for secret in SECRETS {
            ensure!(!all.contains(secret), "{secret} printed:\n{all}");
        }
        Ok(all)
    }
}

fn has(text: &str, wanted: &[&str]) -> anyhow::Result<()> {
    for w in wanted {
        ensure!(text.contains(w), "{w:?} not in:\n{text}");
    }
    Ok(())
}

/// The good secrets of the accounts.
fn good_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CC_USERNAME", USERNAME),
        ("CC_PASSWORD", PASSWORD),
        ("CC_PARTNER_KEY", PARTNER_KEY),
        ("CC_WEBHOOK_SECRET", WEBHOOK_SECRET),
    ]
}

/// A port nothing listens on: bound, then released.
fn closed_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_configuration_is_listed_without_secrets() -> anyhow::Result<()> {
    let sim = simulator().await?;
    let dir = tempfile::tempdir()?;
    let token_hash = hex::encode(Sha256::digest(TOKEN.as_bytes()));
    let callers = dir.path().join("callers.toml");
    std::fs::write(
        &callers,
        format!(
            "[[caller]]\n\
             name = \"checkout-service\"\n\
             token_sha256 = \"{token_hash}\"\n\
             rpcs = [\"RefundOrder\", \"GetOrder\"]\n\
             klarna_accounts = [\"eu\"]\n\
             max_amount = {{ SEK = 500000 }}\n\
             \n\
             [[caller]]\n\
             name = \"oncall\"\n\
             token_sha256 = \"{}\"\n\
             rpcs = [\"*\"]\n\
             klarna_accounts = [\"*\"]\n\
             operator = true\n",
            hex::encode(Sha256::digest(b"another token"))
        ),
    )?;
    let config = write_config(
        dir.path(),
        &format!(
            "callers_file = {}\n\
             {}\
             [accounts.acquirer]\n\
             kind = \"partner\"\n\
             api_url = \"{}\"\n\
             api_key_env = \"CC_PARTNER_KEY\"\n\
             partner_account_id = \"{}\"\n\
             [[store]]\n\
             id = \"stockholm-1\"\n\
             country = \"SE\"\n\
             account = \"eu\"\n\
             [[route]]\n\
             currency = \"SEK\"\n\
             account = \"eu\"\n\
             [[webhook_signing_keys]]\n\
             id = \"krn:partner:global:notification:signing-key:cc\"\n\
             secret_env = \"CC_WEBHOOK_SECRET\"\n",
            toml_path(&callers)?,
            om_account("eu", &sim.base_url),
            sim.base_url,
            sim.partner_account_id(),
        ),
    )?;

    let run = check_config(&config, &[], &good_env()).await?;
    let all = run.exited(0)?;
    ensure!(!all.contains(&token_hash), "the token hash printed:\n{all}");
    let stdout = run.stdout();
    has(
        &stdout,
        &[
            "Accounts",
            "eu",
            "order_management",
            "acquirer",
            "partner",
            sim.base_url.as_str(),
            "ok: credentials accepted",
            "env CC_PASSWORD",
            "env CC_PARTNER_KEY",
            "Stores",
            "stockholm-1",
            "Routes",
            "route[0]",
            "SEK",
            "Callers",
            "checkout-service",
            "RefundOrder, GetOrder",
            "max 500000 SEK/operation",
            "oncall",
            "krn:partner:global:notification:signing-key:cc",
            "Problems: none",
        ],
    )?;
    ensure!(
        !stdout.contains("not checked"),
        "every account is checked:\n{stdout}"
    );

    // The same as one JSON document.
    let run = check_config(&config, &["--format", "json"], &good_env()).await?;
    run.exited(0)?;
    let json: serde_json::Value = serde_json::from_str(&run.stdout())?;
    ensure!(json["problems"] == serde_json::json!([]), "{json}");
    ensure!(
        json["accounts"][0]["check"]["result"] == "accepted",
        "{json}"
    );
    ensure!(json["callers"][0]["name"] == "checkout-service", "{json}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_fail_the_check() -> anyhow::Result<()> {
    let sim = simulator().await?;
    let dir = tempfile::tempdir()?;
    let config = write_config(
        dir.path(),
        &format!("auth = \"none\"\n{}", om_account("eu", &sim.base_url)),
    )?;
    let env = [("CC_USERNAME", USERNAME), ("CC_PASSWORD", WRONG_PASSWORD)];
    let run = check_config(&config, &[], &env).await?;
    let all = run.exited(1)?;
    has(
        &all,
        &["refused", "401", "account \"eu\"", "1 problem found"],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_account_is_checked_with_its_key() -> anyhow::Result<()> {
    let sim = simulator().await?;
    let dir = tempfile::tempdir()?;
    let config = write_config(
        dir.path(),
        &format!(
            "auth = \"none\"\n\
             [accounts.eu]\n\
             api_url = \"{}\"\n\
             api_key_env = \"CC_API_KEY\"\n",
            sim.base_url
        ),
    )?;
    let run = check_config(&config, &[], &[("CC_API_KEY", API_KEY)]).await?;
    run.exited(0)?;
    has(
        &run.stdout(),
        &["ok: credentials accepted", "env CC_API_KEY"],
    )?;
    let run = check_config(&config, &[], &[("CC_API_KEY", WRONG_API_KEY)]).await?;
    let all = run.exited(1)?;
    has(&all, &["refused", "401", "account \"eu\""])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_to_an_unknown_account_is_named() -> anyhow::Result<()> {
    let sim = simulator().await?;
    let dir = tempfile::tempdir()?;
    let config = write_config(
        dir.path(),
        &format!(
            "auth = \"none\"\n{}\
             [[route]]\n\
             currency = \"EUR\"\n\
             account = \"nowhere\"\n",
            om_account("eu", &sim.base_url)
        ),
    )?;
    let run = check_config(&config, &[], &good_env()).await?;
    let all = run.exited(1)?;
    has(&all, &["route[0]", "\"nowhere\"", "is not configured"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_calls_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("http://127.0.0.1:{}", closed_port()?);
    let config = write_config(
        dir.path(),
        &format!("auth = \"none\"\n{}", om_account("eu", &url)),
    )?;
    let run = check_config(&config, &["--offline"], &good_env()).await?;
    let all = run.exited(0)?;
    has(&all, &["not checked (--offline)", "Problems: none"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_klarna_fails_the_check() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("http://127.0.0.1:{}", closed_port()?);
    let config = write_config(
        dir.path(),
        &format!("auth = \"none\"\n{}", om_account("eu", &url)),
    )?;
    let run = check_config(&config, &[], &good_env()).await?;
    let all = run.exited(1)?;
    has(&all, &["unreachable", "account \"eu\""])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_names_its_variable() -> anyhow::Result<()> {
    let sim = simulator().await?;
    let dir = tempfile::tempdir()?;
    let config = write_config(
        dir.path(),
        &format!("auth = \"none\"\n{}", om_account("eu", &sim.base_url)),
    )?;
    // CC_PASSWORD is not set.
    let run = check_config(&config, &[], &[("CC_USERNAME", USERNAME)]).await?;
    let all = run.exited(1)?;
    has(&all, &["CC_PASSWORD", "not set"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_that_does_not_load_names_the_setting() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), "auth = \"none\"\nlease_secs = 0\n")?;
    let run = check_config(&config, &["--offline"], &good_env()).await?;
    let all = run.exited(1)?;
    has(&all, &["lease_secs"])
}
