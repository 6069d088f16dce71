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

/// The README's partner walkthrough: the demo transactions refund, refuse and reach their
/// limit as it shows, and the demo simulator's signed webhook lands in the audit trail.
#[tokio::test]
async fn demo_transactions_refund_as_the_readme_shows() -> anyhow::Result<()> {
    let mut app = spawn_demo_app().await?;
    let capture = |key: &str, transaction: &str, capture: &str, amount| pb::RefundCaptureRequest {
        idempotency_key: key.into(),
        payment_transaction_id: transaction.into(),
        payment_capture_id: capture.into(),
        amount,
        currency: "SEK".into(),
        ..Default::default()
    };
    let made = app
        .client
        .refund_capture(capture(
            "readme-capture-1",
            demo::CAPTURED_TRANSACTION_ID,
            demo::CAPTURED_SECOND_CAPTURE_ID,
            1_500,
        ))
        .await?
        .into_inner();
    assert!(!made.payment_refund_id.is_empty());
    let by_items = app
        .client
        .refund_transaction(pb::RefundTransactionRequest {
            idempotency_key: "readme-transaction-1".into(),
            payment_transaction_id: demo::CAPTURED_TRANSACTION_ID.into(),
            amount: 2_000,
            currency: "SEK".into(),
            line_items: vec![pb::LineItem {
                name: "Sneakers".into(),
                quantity: 1,
                unit_price: 2_000,
                total_amount: 2_000,
                ..Default::default()
            }],
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(!by_items.payment_refund_id.is_empty());
    let transaction = app
        .client
        .get_transaction(pb::GetTransactionRequest {
            payment_transaction_id: demo::CAPTURED_TRANSACTION_ID.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(transaction.refunded_amount, 3_500);
    let closed = app
        .client
        .refund_capture(capture(
            "readme-closed-1",
            demo::CLOSED_TRANSACTION_ID,
            demo::CLOSED_CAPTURE_ID,
            100,
        ))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("refund on a closed transaction accepted"))?;
    assert_reason(&closed, Code::FailedPrecondition, "TRANSACTION_CLOSED");
    app.client
        .refund_capture(capture(
            "readme-limit-200",
            demo::LIMIT_TRANSACTION_ID,
            demo::LIMIT_CAPTURE_ID,
            100,
        ))
        .await?;
    let limit = app
        .client
        .refund_capture(capture(
            "readme-limit-201",
            demo::LIMIT_TRANSACTION_ID,
            demo::LIMIT_CAPTURE_ID,
            100,
        ))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("the 201st refund was accepted"))?;
    assert_reason(&limit, Code::FailedPrecondition, "TRANSACTION_REFUND_LIMIT");
    refund_gateway_tests::wait_until(
        "the demo webhook in the audit trail",
        std::time::Duration::from_secs(30),
        async || {
            let listed = app
                .client
                .list_operations(pb::ListOperationsRequest {
                    payment_transaction_id: demo::CAPTURED_TRANSACTION_ID.into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let webhooks = listed
                .operations
                .iter()
                .flat_map(|op| &op.events)
                .filter(|e| e.detail.contains("payment.transaction.refunded"))
                .count();
            Ok::<_, anyhow::Error>((webhooks == 2).then_some(()))
        },
    )
    .await?;
    app.shutdown().await
}

/// The README's in-store return: link the receipt, find the order from it, refund by it, and
/// find the order by its Klarna reference; an unknown receipt is NOT_FOUND.
#[tokio::test]
async fn the_readme_in_store_return_works_on_the_demo_order() -> anyhow::Result<()> {
    let mut app = spawn_demo_app().await?;
    let linked = app
        .client
        .link_receipt(pb::LinkReceiptRequest {
            receipt_reference: "GB-4004-R7".into(),
            order_id: demo::GB_CARD_ORDER_ID.into(),
            store_id: "london-2".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(linked.created);
    let find = |receipt: &str, klarna: &str| pb::FindOrderRequest {
        receipt_reference: receipt.into(),
        klarna_reference: klarna.into(),
        ..Default::default()
    };
    let found = app
        .client
        .find_order(find(" GB-4004-R7 ", ""))
        .await?
        .into_inner();
    assert_eq!(found.order_id, demo::GB_CARD_ORDER_ID);
    assert_eq!(
        (found.currency.as_str(), found.refundable_amount),
        ("GBP", 5_000)
    );
    let mut refund = refund_request("till-7-return-1", "", 1_250);
    refund.receipt_reference = "GB-4004-R7".into();
    refund.currency = "GBP".into();
    let refunded = app.client.refund_order(refund).await?.into_inner();
    assert_eq!(refunded.order_id, demo::GB_CARD_ORDER_ID);
    // The reads above indexed Klarna's reference; the index is written in the background.
    let client = app.client.clone();
    let by_klarna = refund_gateway_tests::find_once_indexed(
        &client,
        "the demo order to be found by its Klarna reference",
        find("", "K9TB4LC"),
    )
    .await?;
    assert_eq!(by_klarna.refundable_amount, 3_750);
    let unknown = app
        .client
        .find_order(find("GB-4004-R8", ""))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("an unknown receipt was found"))?;
    assert_reason(&unknown, Code::NotFound, "REFERENCE_NOT_FOUND");
    app.shutdown().await
}
