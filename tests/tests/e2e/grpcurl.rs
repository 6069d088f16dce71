//! The real `grpcurl` binary (1.8, reflection v1alpha) against the gateway, as an engineer
//! would use it. The README's test command installs grpcurl when it is missing.

use std::process::Command;

use refund_gateway_tests::spawn_app;

use crate::captured_order;

fn grpcurl(args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = Command::new("grpcurl").args(args).output().map_err(|e| {
        anyhow::anyhow!("cannot run grpcurl ({e}); the README's test command installs it")
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

#[tokio::test]
async fn grpcurl_lists_describes_and_refunds() -> anyhow::Result<()> {
    let app = spawn_app().await?;
    let addr = app.grpc_url.trim_start_matches("http://").to_owned();
    let order = captured_order(&app.sim.sim, 10_000);

    // grpcurl blocks; run it off the runtime's worker threads.
    let a = addr.clone();
    let order_id = order.order_id.clone();
    let outputs = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(bool, String)>> {
        let body = format!(
            r#"{{"idempotency_key":"grpcurl-1","order_id":"{order_id}","refunded_amount":1500}}"#
        );
        let over = format!(
            r#"{{"idempotency_key":"grpcurl-2","order_id":"{order_id}","refunded_amount":999999}}"#
        );
        Ok(vec![
            grpcurl(&["-plaintext", &a, "list"])?,
            grpcurl(&[
                "-plaintext",
                &a,
                "describe",
                "refundgateway.v1.RefundGatewayService",
            ])?,
            grpcurl(&[
                "-plaintext",
                "-d",
                &body,
                &a,
                "refundgateway.v1.RefundGatewayService/RefundOrder",
            ])?,
            grpcurl(&[
                "-plaintext",
                "-d",
                &body,
                &a,
                "refundgateway.v1.RefundGatewayService/RefundOrder",
            ])?,
            grpcurl(&[
                "-plaintext",
                "-d",
                &over,
                &a,
                "refundgateway.v1.RefundGatewayService/RefundOrder",
            ])?,
            grpcurl(&["-plaintext", &a, "grpc.health.v1.Health/Check"])?,
        ])
    })
    .await??;

    let (ok, list) = &outputs[0];
    assert!(*ok, "{list}");
    for s in [
        "refundgateway.v1.RefundGatewayService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(list.contains(s), "{s} not listed: {list}");
    }
    let (ok, describe) = &outputs[1];
    assert!(
        *ok && describe.contains("rpc RefundOrder") && describe.contains("executed at most once"),
        "{describe}"
    );
    let (ok, first) = &outputs[2];
    assert!(*ok, "{first}");
    let first: serde_json::Value = serde_json::from_str(first)?;
    let (ok, second) = &outputs[3];
    assert!(*ok, "{second}");
    let second: serde_json::Value = serde_json::from_str(second)?;
    assert_eq!(first["refundId"], second["refundId"]);
    assert!(first["refundId"].as_str().is_some_and(|s| !s.is_empty()));
    let (ok, over) = &outputs[4];
    assert!(
        !*ok && over.contains("FailedPrecondition") && over.contains("Over refund"),
        "{over}"
    );
    // Reflection serves google.rpc's types, so grpcurl decodes the details.
    assert!(over.contains(r#""reason":"REFUND_NOT_ALLOWED""#), "{over}");
    assert!(!over.contains("is not recognized"), "{over}");
    let (ok, health) = &outputs[5];
    assert!(*ok && health.contains("SERVING"), "{health}");
    app.shutdown().await
}
