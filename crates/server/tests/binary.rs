//! The real `refund-gateway` binary as a process: what an operator sees when starting and
//! stopping it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use refund_gateway_proto::v1::RefundOrderRequest;
use refund_gateway_proto::v1::refund_gateway_service_client::RefundGatewayServiceClient;

const BIN: &str = env!("CARGO_BIN_EXE_refund-gateway");

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
fn help_documents_every_option() {
    let out = gateway()
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--config",
        "--simulator",
        "--listen",
        "--admin-listen",
        "--data-dir",
        "--log-format",
        "REFUND_GATEWAY_CONFIG",
        "REFUND_GATEWAY_LISTEN",
        "REFUND_GATEWAY_ADMIN_LISTEN",
        "REFUND_GATEWAY_DATA_DIR",
        "KLARNA_USERNAME",
        "KLARNA_REGION",
    ] {
        assert!(help.contains(option), "{option} missing from --help");
    }
}

/// Kills the child if a test fails before it exits.
struct Running(Option<Child>);

impl Running {
    fn child(&mut self) -> &mut Child {
        self.0
            .as_mut()
            .unwrap_or_else(|| unreachable!("taken only at the end"))
    }

    fn take(&mut self) -> Child {
        self.0.take().unwrap_or_else(|| unreachable!("taken once"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn simulator_mode_serves_and_sigterm_drains_and_exits_cleanly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let child = gateway()
        .args([
            "--simulator",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--log-format", "json"])
        .arg("--data-dir")
        .arg(dir.path())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut running = Running(Some(child));
    let stderr = running
        .child()
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;

    // The gateway logs its bound address once it accepts RPCs.
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let reader = std::thread::spawn(move || {
        let mut addr_tx = Some(addr_tx);
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("refund gateway listening") {
                let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if let (Some(tx), Some(addr)) = (addr_tx.take(), value["grpc_addr"].as_str()) {
                    let _ = tx.send(addr.to_owned());
                }
            }
            lines.push(line);
        }
        lines
    });
    let addr = addr_rx.await?;

    let mut client = RefundGatewayServiceClient::connect(format!("http://{addr}")).await?;
    let refund = client
        .refund_order(RefundOrderRequest {
            idempotency_key: "binary-1".into(),
            order_id: klarna_sim::demo::SE_INVOICE_ORDER_ID.into(),
            refunded_amount: 100,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(!refund.refund_id.is_empty());

    let status = Command::new("kill")
        .args(["-TERM", &running.child().id().to_string()])
        .status()?;
    assert!(status.success());
    // Bounded so a hung shutdown fails the test instead of the CI run.
    let pid = running.child().id();
    let mut child = running.take();
    let exit = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await;
    let Ok(exit) = exit else {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        anyhow::bail!("no exit within 60 s of SIGTERM");
    };
    let exit = exit??;
    assert!(exit.success(), "exit after SIGTERM: {exit:?}");
    let lines = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    assert!(
        lines.iter().any(|l| l.contains("shutting down")),
        "{lines:?}"
    );
    for line in &lines {
        serde_json::from_str::<serde_json::Value>(line)
            .map_err(|e| anyhow::anyhow!("not a JSON log line ({e}): {line}"))?;
    }
    Ok(())
}
