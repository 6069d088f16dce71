//! In-store refunds by receipt (see the README's in-store walkthrough): a receipt reference
//! linked to its order, the order found by either reference with what is still refundable,
//! and a refund by reference that is the same operation as the refund by id.

use klarna_sim::{OrderSeed, Simulator};
use refund_gateway_proto::v1 as pb;
use refund_gateway_tests::spawn_app_with;
use tonic::Code;

use crate::{assert_reason, bad_fields, refund_request};

/// A captured SEK order with two kinds of lines and the given references.
fn order_with_lines(sim: &Simulator, receipt: Option<&str>, klarna_reference: &str) -> String {
    let lines: Vec<klarna_sim::OrderLine> = serde_json::from_value(serde_json::json!([
        {"name": "Shirt", "reference": "SKU-1", "quantity": 3, "unit_price": 10000,
         "total_amount": 30000, "tax_rate": 2500, "total_tax_amount": 6000},
        {"name": "Socks", "reference": "SKU-2", "quantity": 2, "unit_price": 2000,
         "total_amount": 4000, "tax_rate": 2500, "total_tax_amount": 800},
    ]))
    .unwrap_or_default();
    sim.seed_order(OrderSeed {
        order_amount: 34_000,
        captures: vec![34_000],
        purchase_currency: Some("SEK".into()),
        purchase_country: Some("SE".into()),
        merchant_reference1: receipt.map(str::to_owned),
        klarna_reference: Some(klarna_reference.into()),
        order_lines: Some(lines),
        ..Default::default()
    })
    .order_id
}

fn link(receipt: &str, order_id: &str) -> pb::LinkReceiptRequest {
    pb::LinkReceiptRequest {
        receipt_reference: receipt.into(),
        order_id: order_id.into(),
        ..Default::default()
    }
}

fn by_receipt(receipt: &str) -> pb::FindOrderRequest {
    pb::FindOrderRequest {
        receipt_reference: receipt.into(),
        ..Default::default()
    }
}

fn by_klarna_reference(reference: &str) -> pb::FindOrderRequest {
    pb::FindOrderRequest {
        klarna_reference: reference.into(),
        ..Default::default()
    }
}

fn shirt() -> pb::OrderLine {
    pb::OrderLine {
        name: "Shirt".into(),
        reference: "SKU-1".into(),
        quantity: 1,
        unit_price: 10_000,
        total_amount: 10_000,
        tax_rate: 2500,
        total_tax_amount: 2_000,
        ..Default::default()
    }
}

fn quantities(found: &pb::FindOrderResponse) -> Vec<(String, i64)> {
    found
        .refundable_lines
        .iter()
        .map(|l| (l.name.clone(), l.quantity))
        .collect()
}

backend_test! {
    async fn a_linked_receipt_finds_the_order_and_refunds_it_as_the_same_operation(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = spawn_app_with(db.options()).await?;
        let order_id = order_with_lines(&app.sim.sim, None, "KREF-100");

        let linked = app.client.link_receipt(link("  R-100 ", &order_id)).await?.into_inner();
        assert!(linked.created);
        assert_eq!(linked.receipt_reference, "R-100");
        assert_eq!(linked.klarna_account, "default");
        let again = app.client.link_receipt(link("R-100", &order_id)).await?.into_inner();
        assert!(!again.created, "linking the same pair again is not a new link");

        let other = order_with_lines(&app.sim.sim, None, "KREF-101");
        let taken = app.client.link_receipt(link("R-100", &other)).await.err();
        let taken = taken.ok_or_else(|| anyhow::anyhow!("a receipt was linked to two orders"))?;
        assert_reason(&taken, Code::FailedPrecondition, "RECEIPT_ALREADY_LINKED");
        let missing = app
            .client
            .link_receipt(link("R-404", "0b6f1c8e-2f53-4b0f-9c1e-6f1d2a3b4c5d"))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("linked to an order Klarna does not have"))?;
        assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

        let found = app.client.find_order(by_receipt("R-100")).await?.into_inner();
        assert_eq!(found.order_id, order_id);
        assert_eq!(found.currency, "SEK");
        assert_eq!(
            (found.captured_amount, found.refunded_amount, found.refundable_amount),
            (34_000, 0, 34_000)
        );
        assert_eq!(
            quantities(&found),
            [("Shirt".to_owned(), 3), ("Socks".to_owned(), 2)]
        );

        // A refund by receipt, then the same refund by id: one operation, one refund.
        let mut by_receipt_request = refund_request("in-store-1", "", 10_000);
        by_receipt_request.receipt_reference = " R-100".into();
        by_receipt_request.order_lines = vec![shirt()];
        let first = app.client.refund_order(by_receipt_request).await?.into_inner();
        assert_eq!(first.order_id, order_id);
        let mut by_id = refund_request("in-store-1", &order_id, 10_000);
        by_id.order_lines = vec![shirt()];
        let second = app.client.refund_order(by_id).await?.into_inner();
        assert!(second.replayed, "the refund by id was not the refund by receipt");
        assert_eq!(second.operation_id, first.operation_id);
        assert_eq!(second.refund_id, first.refund_id);

        let after = app.client.find_order(by_receipt("R-100")).await?.into_inner();
        assert_eq!((after.refunded_amount, after.refundable_amount), (10_000, 24_000));
        assert_eq!(
            quantities(&after),
            [("Shirt".to_owned(), 2), ("Socks".to_owned(), 2)]
        );
        let shirt_left = &after.refundable_lines[0];
        assert_eq!((shirt_left.total_amount, shirt_left.total_tax_amount), (20_000, 4_000));

        // The read taught the gateway Klarna's reference of the order too.
        let client = app.client.clone();
        let by_klarna = refund_gateway_tests::find_once_indexed(&client, "the order to be found by its Klarna reference", by_klarna_reference("KREF-100")).await?;
        assert_eq!(by_klarna.order_id, order_id);
        app.shutdown().await
    }
}

backend_test! {
    async fn an_order_read_once_is_found_by_its_references_case_sensitively(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = spawn_app_with(db.options()).await?;
        let order_id = order_with_lines(&app.sim.sim, Some("POS-77"), "KREF-77");
        let unknown = app.client.find_order(by_receipt("POS-77")).await.err();
        let unknown = unknown.ok_or_else(|| anyhow::anyhow!("found before any read or link"))?;
        assert_reason(&unknown, Code::NotFound, "REFERENCE_NOT_FOUND");

        app.client
            .get_order(pb::GetOrderRequest {
                order_id: order_id.clone(),
                ..Default::default()
            })
            .await?;
        let client = app.client.clone();
        let found = refund_gateway_tests::find_once_indexed(&client, "the order's merchant_reference1 to be learned", by_receipt(" POS-77 ")).await?;
        assert_eq!(found.order_id, order_id);
        assert_eq!(found.merchant_reference1, "POS-77");
        let other_case = app.client.find_order(by_receipt("pos-77")).await.err();
        let other_case = other_case.ok_or_else(|| anyhow::anyhow!("references are case-sensitive"))?;
        assert_eq!(other_case.code(), Code::NotFound);

        // A refund naming the order twice, or not at all, is refused field by field.
        let mut twice = refund_request("twice-1", &order_id, 100);
        twice.receipt_reference = "POS-77".into();
        let twice = app.client.refund_order(twice).await.err();
        let twice = twice.ok_or_else(|| anyhow::anyhow!("an order named twice was accepted"))?;
        assert_eq!(bad_fields(&twice), ["receipt_reference"]);
        let none = app.client.refund_order(refund_request("none-1", "", 100)).await.err();
        let none = none.ok_or_else(|| anyhow::anyhow!("a refund of no order was accepted"))?;
        assert_eq!(bad_fields(&none), ["order_id"]);
        let empty = app.client.find_order(pb::FindOrderRequest::default()).await.err();
        let empty = empty.ok_or_else(|| anyhow::anyhow!("a lookup of nothing was accepted"))?;
        assert_eq!(bad_fields(&empty), ["receipt_reference"]);
        let unknown = app.client.refund_order({
            let mut r = refund_request("unknown-1", "", 100);
            r.klarna_reference = "KREF-NONE".into();
            r
        });
        let unknown = unknown.await.err();
        let unknown = unknown.ok_or_else(|| anyhow::anyhow!("refunded an unknown reference"))?;
        assert_reason(&unknown, Code::NotFound, "REFERENCE_NOT_FOUND");
        app.shutdown().await
    }
}

backend_test! {
    async fn an_order_refunded_by_id_is_found_by_its_receipt_afterwards(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = spawn_app_with(db.options()).await?;
        let order_id = order_with_lines(&app.sim.sim, Some("WEB-9"), "KREF-9");
        // No rule needs the order: the refund itself does not read it.
        app.client
            .refund_order(refund_request("web-return-1", &order_id, 500))
            .await?;
        let client = app.client.clone();
        let found = refund_gateway_tests::find_once_indexed(&client, "the refunded order to be found by its receipt", by_receipt("WEB-9")).await?;
        assert_eq!((found.order_id.as_str(), found.refunded_amount), (order_id.as_str(), 500));
        // Learned once: a second refund of the same order reads it no more. A refund of another
        // new order, learned after it, shows the background work has run meanwhile.
        let reads_before = reads_of(&app.sim.sim, &order_id);
        app.client
            .refund_order(refund_request("web-return-2", &order_id, 500))
            .await?;
        let later = order_with_lines(&app.sim.sim, Some("WEB-10"), "KREF-10");
        app.client
            .refund_order(refund_request("web-return-3", &later, 500))
            .await?;
        refund_gateway_tests::find_once_indexed(&client, "the later order to be found by its receipt", by_receipt("WEB-10")).await?;
        assert_eq!(reads_of(&app.sim.sim, &order_id), reads_before);
        app.shutdown().await
    }
}

/// The GETs of `order_id` the simulator answered.
fn reads_of(sim: &Simulator, order_id: &str) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(order_id))
        .count()
}
