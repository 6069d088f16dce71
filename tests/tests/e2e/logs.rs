//! No credential ever reaches a log line: the test process captures every line the gateway,
//! its Klarna client and the simulator write (JSON, at DEBUG), runs calls that succeed and
//! calls that fail on the credentials, and searches the capture.

use refund_gateway_tests::{AppOptions, LogCapture, spawn_app, spawn_app_with};

use crate::{captured_order, refund_request};

const SECRET: &str = "log-canary-pw-7f3a91";

fn basic(user: &str, password: &str) -> String {
    // Base64 of "user:password", spelled out to avoid a dependency for one assertion.
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}");
    let mut out = String::new();
    for chunk in input.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn no_credential_in_captured_logs() -> anyhow::Result<()> {
    assert_eq!(
        basic("Aladdin", "open sesame"),
        "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    );
    // A gateway whose password Klarna rejects: the 401 path logs the most.
    let mut wrong = spawn_app_with(AppOptions {
        gateway_credentials: Some(("sim-user".into(), SECRET.into())),
        ..Default::default()
    })
    .await?;
    let order = captured_order(&wrong.sim.sim, 1_000);
    assert!(
        wrong
            .client
            .refund_order(refund_request("l1", &order.order_id, 10))
            .await
            .is_err()
    );
    wrong.shutdown().await?;

    // A working gateway: success, Klarna refusal, validation failure.
    let mut app = spawn_app().await?;
    let order = captured_order(&app.sim.sim, 1_000);
    app.client
        .refund_order(refund_request("l2", &order.order_id, 10))
        .await?;
    assert!(
        app.client
            .refund_order(refund_request("l3", &order.order_id, 5_000))
            .await
            .is_err()
    );
    assert!(
        app.client
            .refund_order(refund_request("", "x", 0))
            .await
            .is_err()
    );
    let sim_password = app.sim.password().to_owned();
    app.shutdown().await?;

    let logs = LogCapture::contents();
    assert!(
        logs.contains("refunded"),
        "the capture is not recording the gateway's logs"
    );
    for needle in [
        SECRET.to_owned(),
        basic("sim-user", SECRET),
        sim_password.clone(),
        basic("sim-user", &sim_password),
    ] {
        assert!(
            !logs.contains(&needle),
            "a credential ({needle}) reached the logs"
        );
    }
    Ok(())
}

#[tokio::test]
async fn no_caller_token_or_partner_key_in_captured_logs() -> anyhow::Result<()> {
    use sha2::{Digest, Sha256};
    const TOKEN: &str = "caller-token-canary-5d2e";
    const WRONG: &str = "wrong-token-canary-8a1b";
    let hash: String = Sha256::digest(TOKEN.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut app = spawn_app_with(AppOptions {
        callers: Some(format!(
            "[[caller]]\nname = \"till\"\ntoken_sha256 = \"{hash}\"\nrpcs = [\"*\"]\nklarna_accounts = [\"*\"]\n"
        )),
        ..AppOptions::default()
    })
    .await?;
    let order = captured_order(&app.sim.sim, 1_000);
    for (key, token) in [("log-auth-1", TOKEN), ("log-auth-2", WRONG)] {
        let mut request = tonic::Request::new(refund_request(key, &order.order_id, 10));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let _ = app.client.refund_order(request).await;
    }
    let partner_key = app.sim.partner_api_key().to_owned();
    app.shutdown().await?;
    let logs = LogCapture::contents();
    for needle in [TOKEN, WRONG, hash.as_str(), partner_key.as_str()] {
        assert!(
            !logs.contains(needle),
            "a secret ({needle}) reached the logs"
        );
    }
    Ok(())
}
