//! Several Klarna accounts, routed (see the README's "Several accounts"): a request that names
//! no account goes to its store's account, else to the first route matching its store, the
//! store's country and its currency; the operation records the account used, so a resend
//! naming that account is the same operation; and no account ever answers for an order of
//! another.

use klarna_sim::{OrderSeed, Simulator};
use refund_gateway_proto::v1 as pb;
use refund_gateway_tests::{AppOptions, TestApp, spawn_app_with};
use tonic::Code;

use crate::{assert_reason, bad_fields, captured_order, refund_request};

/// `default` is the EU account; `na-live` an Order Management account on a Klarna of its own.
const ROUTING: &str = r#"
[[store]]
id = "stockholm-1"
country = "SE"
account = "default"

[[store]]
id = "new-york-1"
country = "US"

[[store]]
id = "oslo-1"
country = "NO"
account = "partner"

[[route]]
country = "US"
account = "na-live"

[[route]]
currency = "USD"
account = "na-live"

[[route]]
currency = "SEK"
account = "default"
"#;

async fn routed_app(db: &refund_gateway_tests::Backend) -> anyhow::Result<TestApp> {
    spawn_app_with(AppOptions {
        extra_accounts: vec!["na-live".into()],
        routing_toml: Some(ROUTING.into()),
        ..db.options()
    })
    .await
}

/// A captured US order in dollars, on `sim`.
fn usd_order(sim: &Simulator, amount: i64) -> String {
    sim.seed_order(OrderSeed {
        order_amount: amount,
        captures: vec![amount],
        purchase_currency: Some("USD".into()),
        purchase_country: Some("US".into()),
        ..Default::default()
    })
    .order_id
}

/// The account recorded on the operation `operation_id`.
async fn recorded_account(app: &mut TestApp, operation_id: &str) -> anyhow::Result<String> {
    let found = app
        .client
        .get_operation(pb::GetOperationRequest {
            operation_id: operation_id.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(found
        .operation
        .map(|o| o.klarna_account)
        .unwrap_or_default())
}

fn refunded(sim: &Simulator, order_id: &str) -> i64 {
    sim.order_json(order_id)
        .and_then(|o| o["refunded_amount"].as_i64())
        .unwrap_or(-1)
}

backend_test! {
    async fn a_store_or_a_route_picks_the_account_and_the_operation_records_it(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = routed_app(&db).await?;
        let us_order = usd_order(app.account_sim("na-live"), 5_000);

        // new-york-1 has no account of its own: the route on its country takes it to na-live.
        let mut by_store = refund_request("ny-1", &us_order, 1_000);
        by_store.store_id = "new-york-1".into();
        let first = app.client.refund_order(by_store).await?.into_inner();
        assert_eq!(refunded(app.account_sim("na-live"), &us_order), 1_000);
        assert_eq!(recorded_account(&mut app, &first.operation_id).await?, "na-live");

        // The same refund naming the account it was routed to is the same operation.
        let mut named = refund_request("ny-1", &us_order, 1_000);
        named.klarna_account = "na-live".into();
        let again = app.client.refund_order(named).await?.into_inner();
        assert!(again.replayed, "naming the routed account made a second operation");
        assert_eq!(again.refund_id, first.refund_id);
        assert_eq!(refunded(app.account_sim("na-live"), &us_order), 1_000);

        // No store: the currency route.
        let mut by_currency = refund_request("usd-1", &us_order, 500);
        by_currency.currency = "USD".into();
        let second = app.client.refund_order(by_currency).await?.into_inner();
        assert_eq!(recorded_account(&mut app, &second.operation_id).await?, "na-live");
        assert_eq!(refunded(app.account_sim("na-live"), &us_order), 1_500);

        // stockholm-1's own account wins over the USD route; the EU Klarna has the order.
        let se_order = captured_order(&app.sim.sim, 3_000).order_id;
        let mut se = refund_request("se-1", &se_order, 700);
        se.store_id = "stockholm-1".into();
        let third = app.client.refund_order(se).await?.into_inner();
        assert_eq!(recorded_account(&mut app, &third.operation_id).await?, "default");
        assert_eq!(refunded(&app.sim.sim, &se_order), 700);

        // ReleaseAuthorization routes by store too; the EU order is unknown to na-live.
        let release = app
            .client
            .release_authorization(pb::ReleaseAuthorizationRequest {
                idempotency_key: "release-ny".into(),
                order_id: se_order.clone(),
                store_id: "new-york-1".into(),
                ..Default::default()
            })
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("na-live released an order of the EU account"))?;
        assert_eq!(release.code(), Code::NotFound, "{release:?}");
        Ok(())
    }
}

backend_test! {
    async fn unroutable_requests_are_refused_before_anything_is_sent(
        db: Backend,
    ) -> anyhow::Result<()> {
        let mut app = routed_app(&db).await?;
        let se_order = captured_order(&app.sim.sim, 3_000).order_id;
        app.sim.sim.clear_requests();

        // Two Order Management accounts, no store, no currency: nothing says which.
        let unnamed = app
            .client
            .refund_order(refund_request("none-1", &se_order, 100))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("an unroutable refund was sent"))?;
        assert_eq!(bad_fields(&unnamed), ["klarna_account"]);
        assert!(unnamed.message().contains("no store or route matched"), "{unnamed:?}");

        // Reported with the request's other bad fields.
        let mut also_bad = refund_request("", &se_order, 0);
        also_bad.currency = "EUR".into();
        let status = app.client.refund_order(also_bad).await.err();
        let status = status.ok_or_else(|| anyhow::anyhow!("a bad refund was accepted"))?;
        let mut fields = bad_fields(&status);
        fields.sort();
        assert_eq!(fields, ["idempotency_key", "refunded_amount"]);

        // A mistyped store is refused, even with the account named.
        for account in ["", "default"] {
            let mut typo = refund_request("typo-1", &se_order, 100);
            typo.store_id = "stockholm-2".into();
            typo.klarna_account = account.into();
            let status = app.client.refund_order(typo).await.err();
            let status = status.ok_or_else(|| anyhow::anyhow!("an unknown store was accepted"))?;
            assert_eq!(bad_fields(&status), ["store_id"]);
            assert!(status.message().contains("stockholm-1"), "{status:?}");
        }

        // oslo-1's account is a partner account: an Order Management RPC passes it over, and
        // with no route for the request, it has no account.
        let mut oslo = refund_request("oslo-1", &se_order, 100);
        oslo.store_id = "oslo-1".into();
        let status = app.client.refund_order(oslo).await.err();
        let status = status.ok_or_else(|| anyhow::anyhow!("routed to a partner account"))?;
        assert_eq!(bad_fields(&status), ["klarna_account"]);

        // A named account of the other kind stays FAILED_PRECONDITION.
        let mut wrong_kind = refund_request("kind-1", &se_order, 100);
        wrong_kind.klarna_account = "partner".into();
        let status = app.client.refund_order(wrong_kind).await.err();
        let status = status.ok_or_else(|| anyhow::anyhow!("refunded through a partner account"))?;
        assert_reason(&status, Code::FailedPrecondition, "WRONG_ACCOUNT_KIND");

        assert!(
            app.sim.sim.requests().is_empty() && app.account_sim("na-live").requests().is_empty(),
            "a refused request reached Klarna"
        );
        Ok(())
    }
}

backend_test! {
    async fn no_account_answers_for_an_order_of_another(db: Backend) -> anyhow::Result<()> {
        let mut app = routed_app(&db).await?;
        let eu = app.sim.sim.seed_order(OrderSeed {
            order_amount: 4_000,
            captures: vec![4_000],
            purchase_currency: Some("SEK".into()),
            purchase_country: Some("SE".into()),
            merchant_reference1: Some("R-EU-1".into()),
            klarna_reference: Some("KEU-1".into()),
            ..Default::default()
        });

        // GetOrder in the other account: NOT_FOUND, never the EU order's data.
        let get = |account: &str| pb::GetOrderRequest {
            klarna_account: account.into(),
            order_id: eu.order_id.clone(),
        };
        let found = app.client.get_order(get("default")).await?.into_inner();
        assert_eq!(found.order.map(|o| o.order_id), Some(eu.order_id.clone()));
        let other = app.client.get_order(get("na-live")).await.err();
        let other = other.ok_or_else(|| anyhow::anyhow!("na-live answered for an EU order"))?;
        assert_eq!(other.code(), Code::NotFound, "{other:?}");

        // The read taught the EU account the order's references; FindOrder routed to
        // na-live (by its store) does not see them.
        let find = |store: &str, reference: &str| pb::FindOrderRequest {
            receipt_reference: reference.into(),
            store_id: store.into(),
            ..Default::default()
        };
        // The index is written in the background, after the read has answered.
        let client = app.client.clone();
        let found = refund_gateway_tests::find_once_indexed(&client, "the EU order to be found by its receipt reference", find("stockholm-1", "R-EU-1")).await?;
        assert_eq!((found.order_id.as_str(), found.klarna_account.as_str()), (eu.order_id.as_str(), "default"));
        let elsewhere = app.client.find_order(find("new-york-1", "R-EU-1")).await.err();
        let elsewhere =
            elsewhere.ok_or_else(|| anyhow::anyhow!("na-live found an EU receipt"))?;
        assert_eq!(elsewhere.code(), Code::NotFound, "{elsewhere:?}");

        // Linking the EU order in na-live: the order must exist there.
        let link = app
            .client
            .link_receipt(pb::LinkReceiptRequest {
                receipt_reference: "R-EU-2".into(),
                order_id: eu.order_id.clone(),
                store_id: "new-york-1".into(),
                ..Default::default()
            })
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("linked an EU order in na-live"))?;
        assert_eq!(link.code(), Code::NotFound, "{link:?}");

        // A refund by receipt resolves the reference in the routed account only.
        let mut by_receipt = refund_request("by-receipt-ny", "", 100);
        by_receipt.receipt_reference = "R-EU-1".into();
        by_receipt.store_id = "new-york-1".into();
        let status = app.client.refund_order(by_receipt).await.err();
        let status = status.ok_or_else(|| anyhow::anyhow!("refunded an EU order through na-live"))?;
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert_eq!(refunded(&app.sim.sim, &eu.order_id), 0);
        Ok(())
    }
}

#[tokio::test]
async fn the_gateway_refuses_to_start_with_a_route_to_an_account_it_does_not_have() {
    let started = spawn_app_with(AppOptions {
        routing_toml: Some("[[route]]\ncurrency = \"USD\"\naccount = \"na-live\"\n".into()),
        ..AppOptions::default()
    })
    .await;
    let error = started.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(
        error.contains("route[0]") && error.contains("na-live"),
        "started, or refused without naming the route: {error:?}"
    );
}
