//! `--simulator` mode: the gateway's own in-process simulator with the README's demo orders.

use klarna_sim::demo;
use refund_gateway_proto::v1 as pb;
use refund_gateway_tests::spawn_demo_app;
use tonic::Code;

use crate::{assert_reason, refund_request};

#[tokio::test]
async fn demo_orders_refund_as_the_readme_shows() -> anyhow::Result<()> {
    let mut app = spawn_demo_app().await?;
    let first = app
        .client
        .refund_order(refund_request(
            "readme-refund-1",
            demo::SE_INVOICE_ORDER_ID,
            2_500,
        ))
        .await?
        .into_inner();
    let again = app
        .client
        .refund_order(refund_request(
            "readme-refund-1",
            demo::SE_INVOICE_ORDER_ID,
            2_500,
        ))
        .await?
        .into_inner();
    assert_eq!(first.refund_id, again.refund_id);
    let status = app
        .client
        .refund_order(refund_request(
            "readme-refund-2",
            demo::SE_INVOICE_ORDER_ID,
            100_000,
        ))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("over refund accepted"))?;
    assert_reason(&status, Code::FailedPrecondition, "REFUND_NOT_ALLOWED");
    let order = app
        .client
        .get_order(pb::GetOrderRequest {
            order_id: demo::SE_INVOICE_ORDER_ID.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .order
        .ok_or_else(|| anyhow::anyhow!("no order"))?;
    assert_eq!(order.refunded_amount, 2_500);
    let demo_sim = app
        .gateway
        .as_ref()
        .and_then(|g| g.simulator.as_ref())
        .ok_or_else(|| anyhow::anyhow!("no demo simulator"))?;
    assert!(
        demo_sim
            .simulator()
            .requests()
            .iter()
            .any(|r| r.method == "POST")
    );
    assert!(
        app.sim.sim.requests().is_empty(),
        "the spare simulator was used"
    );
    app.shutdown().await
}
