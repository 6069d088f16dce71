//! The real `refund-gateway` binary as a process: what an operator sees when starting and
//! stopping it.

mod common;

use std::process::Command;

use common::{BIN, GatewayProcess};
use refund_gateway::config::{SETTINGS, VARIABLES};
use refund_gateway_proto::v1::RefundOrderRequest;

/// A command for the binary with no Klarna or gateway settings inherited from the caller.
fn gateway() -> Command {
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("KLARNA_") || name.starts_with("REFUND_GATEWAY_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

#[test]
fn without_credentials_it_refuses_to_start_and_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = gateway()
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for name in [
        "KLARNA_USERNAME",
        "KLARNA_PASSWORD",
        "KLARNA_API_URL",
        "--simulator",
    ] {
        assert!(stderr.contains(name), "{name} not named in: {stderr}");
    }
}

#[test]
fn a_missing_password_is_named_and_no_secret_is_echoed() {
    let out = gateway()
        .env("KLARNA_USERNAME", "merchant-user-x1")
        .env("KLARNA_API_URL", "https://api.playground.klarna.com")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("KLARNA_PASSWORD"), "{stderr}");
    assert!(!stderr.contains("merchant-user-x1"), "{stderr}");
}

#[test]
fn a_partner_client_certificate_without_its_key_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cert = dir.path().join("client.pem");
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\n").unwrap_or_else(|e| panic!("{e}"));
    let out = gateway()
        .env(
            "KLARNA_PARTNER_API_URL",
            "https://api-global.test.klarna.com",
        )
        .env("KLARNA_PARTNER_API_KEY", "klarna_test_api_partner-key-x2")
        .env(
            "KLARNA_PARTNER_ACCOUNT_ID",
            "krn:partner:global:account:test:1",
        )
        .env("KLARNA_PARTNER_CLIENT_CERT_FILE", &cert)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("client_key_file") && stderr.contains("mutual TLS needs both"),
        "{stderr}"
    );
    assert!(!stderr.contains("partner-key-x2"), "{stderr}");
}

#[test]
fn authentication_is_required_and_off_only_on_loopback() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let run = |extra: &[(&str, &str)]| {
        let mut cmd = gateway();
        cmd.env("KLARNA_API_URL", "http://127.0.0.1:9")
            .env("KLARNA_USERNAME", "u")
            .env("KLARNA_PASSWORD", "p")
            .arg("--data-dir")
            .arg(dir.path());
        for (name, value) in extra {
            cmd.env(name, value);
        }
        let out = cmd.output().unwrap_or_else(|e| panic!("{e}"));
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let without = run(&[]);
    assert!(without.contains("REFUND_GATEWAY_CALLERS_FILE"), "{without}");
    let exposed = run(&[
        ("REFUND_GATEWAY_AUTH", "none"),
        ("REFUND_GATEWAY_LISTEN", "0.0.0.0:0"),
    ]);
    assert!(
        exposed.contains("loopback") && exposed.contains("listen = 0.0.0.0:0"),
        "{exposed}"
    );
}

#[test]
fn help_documents_every_option() {
    let out = gateway()
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let mut names = vec!["--config", "REFUND_GATEWAY_CONFIG"];
    for setting in SETTINGS {
        names.push(setting.key);
        names.extend(setting.flag);
        names.extend(setting.env);
    }
    names.extend(VARIABLES.iter().map(|v| v.name));
    for name in names {
        assert!(help.contains(name), "{name} missing from --help");
    }
}

#[test]
fn a_setting_out_of_range_is_refused_naming_setting_value_and_range() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "retention_days = 0\n").unwrap_or_else(|e| panic!("{e}"));
    let out = gateway()
        .arg("--simulator")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("retention_days = 0") && stderr.contains("1 to 3650 days"),
        "{stderr}"
    );
}

#[test]
fn log_format_comes_from_its_environment_variable() {
    let out = gateway()
        .arg("--simulator")
        .env("REFUND_GATEWAY_LOG_FORMAT", "xml")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("xml") && stderr.contains("--log-format"),
        "{stderr}"
    );
}

#[tokio::test]
async fn simulator_mode_serves_and_sigterm_drains_and_exits_cleanly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "simulator = true\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             webhook_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n",
            data_dir.to_string_lossy()
        ),
    )?;
    let mut gateway = GatewayProcess::start("demo gateway", &config, &[]).await?;
    let refund = gateway
        .client()
        .await?
        .refund_order(RefundOrderRequest {
            idempotency_key: "binary-1".into(),
            order_id: klarna_sim::demo::SE_INVOICE_ORDER_ID.into(),
            refunded_amount: 100,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(!refund.refund_id.is_empty());
    gateway.terminate_cleanly().await?;
    for line in gateway.log_text().lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .map_err(|e| anyhow::anyhow!("not a JSON log line ({e}): {line}"))?;
    }
    // The demo kept its operations out of the data directory.
    assert!(!data_dir.join("refund-gateway.sqlite3").exists());
    // The listening line names each address as an address (`HOST:PORT`, nothing around it).
    let listening = gateway
        .log_text()
        .lines()
        .find(|l| l.contains("refund gateway listening"))
        .map(serde_json::from_str::<serde_json::Value>)
        .ok_or_else(|| anyhow::anyhow!("no listening line"))??;
    for field in ["grpc_addr", "admin_addr", "webhook_addr"] {
        let addr = listening[field].as_str().unwrap_or_default();
        addr.parse::<std::net::SocketAddr>()
            .map_err(|e| anyhow::anyhow!("{field} {addr:?} is not an address: {e}"))?;
    }
    // `worker_threads` unset: a core is left to the SQLite store's writer thread.
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    assert_eq!(
        listening["worker_threads"].as_u64(),
        u64::try_from(cores.saturating_sub(1).max(1)).ok(),
        "{listening}"
    );
    Ok(())
}

#[tokio::test]
async fn plain_http_off_loopback_starts_with_a_warning_per_account() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = common::write_config_with(
        dir.path(),
        &dir.path().join("data"),
        "[accounts.lan]\napi_url = \"http://10.1.2.3:9\"\nallow_plain_http = true\n\
         username_env = \"LAN_USER\"\npassword_env = \"LAN_PASSWORD\"\n\
         [accounts.local]\napi_url = \"http://127.0.0.1:9\"\n\
         username_env = \"LAN_USER\"\npassword_env = \"LAN_PASSWORD\"\n",
    )?;
    let env = [
        ("LAN_USER", "lan-user-x3".to_owned()),
        ("LAN_PASSWORD", "lan-password-x3".to_owned()),
        ("KLARNA_API_URL", "http://10.1.2.4:9".to_owned()),
        ("KLARNA_USERNAME", "default-user-x3".to_owned()),
        ("KLARNA_PASSWORD", "default-password-x3".to_owned()),
        ("KLARNA_ALLOW_PLAIN_HTTP", "true".to_owned()),
    ];
    let mut gateway = GatewayProcess::start("plain http gateway", &config, &env).await?;
    gateway.terminate_cleanly().await?;
    let log = gateway.log_text();
    let mut warned: Vec<(String, String)> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| {
            l["level"] == "WARN" && l["message"].as_str().unwrap_or("").contains("in clear")
        })
        .map(|l| {
            let field = |name: &str| l[name].as_str().unwrap_or_default().to_owned();
            (field("account"), field("host"))
        })
        .collect();
    warned.sort();
    assert_eq!(
        warned,
        [
            ("default".to_owned(), "10.1.2.4".to_owned()),
            ("lan".to_owned(), "10.1.2.3".to_owned())
        ],
        "{log}"
    );
    assert!(!log.contains("-x3"), "{log}");
    Ok(())
}
