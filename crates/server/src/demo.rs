//! `--simulator`: an in-process Klarna simulator on a loopback port, seeded with demo orders
//! and partner transactions whose fixed ids the README uses, with two accounts pointing at it:
//! `default` (Order Management) and `partner` (the Payments API). The simulator signs its
//! refund webhooks with a fixed demo key and posts them to the gateway's webhook listener
//! (`127.0.0.1:9465` unless set). The demo never shares state with a real deployment: the
//! simulator lives in memory and dies with the process.

use std::net::SocketAddr;

use klarna_sim::{RunningSimulator, SimConfig, WebhookTarget, demo as ids};
use refund_gateway_klarna::{BaseUrl, KlarnaCredentials};
use secrecy::SecretString;

use crate::config::{Account, AccountApi, DEFAULT_ACCOUNT, PARTNER_ACCOUNT, PartnerAccount};
use crate::webhooks::{SigningKey, WEBHOOK_PATH};

/// Where the demo's webhook listener is, unless `REFUND_GATEWAY_WEBHOOK_LISTEN` says.
pub const WEBHOOK_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9465);

/// The running demo simulator.
#[derive(Debug)]
pub struct DemoSimulator {
    running: RunningSimulator,
}

impl DemoSimulator {
    /// Starts the simulator on 127.0.0.1 (an ephemeral port) and seeds the demo orders and
    /// transactions.
    pub async fn start() -> std::io::Result<Self> {
        let running = klarna_sim::spawn(SimConfig::default()).await?;
        running.sim.seed_demo_orders();
        tracing::info!(
            simulator = %running.base_url,
            se_invoice_order = ids::SE_INVOICE_ORDER_ID,
            se_invoice_capture = ids::SE_INVOICE_CAPTURE_ID,
            de_part_captured_order = ids::DE_PART_CAPTURED_ORDER_ID,
            us_authorized_order = ids::US_AUTHORIZED_ORDER_ID,
            gb_card_order = ids::GB_CARD_ORDER_ID,
            no_two_captures_order = ids::NO_TWO_CAPTURES_ORDER_ID,
            captured_transaction = ids::CAPTURED_TRANSACTION_ID,
            closed_transaction = ids::CLOSED_TRANSACTION_ID,
            limit_transaction = ids::LIMIT_TRANSACTION_ID,
            "Klarna simulator running with demo orders and partner transactions (admin API under /__admin/)"
        );
        Ok(Self { running })
    }

    /// The simulator itself, for tests that inspect its request log or inject faults.
    pub fn simulator(&self) -> &klarna_sim::Simulator {
        &self.running.sim
    }

    /// Its base URL.
    pub fn base_url(&self) -> &str {
        &self.running.base_url
    }

    /// The accounts pointing at the simulator: `default` (Order Management) and `partner`.
    pub fn accounts(&self) -> std::io::Result<Vec<Account>> {
        let base_url = BaseUrl::parse(&self.running.base_url).map_err(std::io::Error::other)?;
        Ok(vec![
            Account {
                name: DEFAULT_ACCOUNT.to_owned(),
                base_url: base_url.clone(),
                rate_limit: None,
                extra_roots: Vec::new(),
                api: AccountApi::OrderManagement(KlarnaCredentials::new(
                    self.running.username(),
                    self.running.password().to_owned(),
                )),
            },
            Account {
                name: PARTNER_ACCOUNT.to_owned(),
                base_url,
                rate_limit: None,
                extra_roots: Vec::new(),
                api: AccountApi::Partner(PartnerAccount {
                    api_key: SecretString::from(self.running.partner_api_key().to_owned()),
                    partner_account_id: self.running.partner_account_id().to_owned(),
                    path_prefix: format!("/v2/accounts/{}", self.running.partner_account_id()),
                    on_behalf_of: None,
                    client_identity: None,
                    live: false,
                }),
            },
        ])
    }

    /// The demo's webhook signing key (the README shows it).
    pub fn signing_key(&self) -> SigningKey {
        SigningKey {
            id: Some(klarna_sim::DEFAULT_SIGNING_KEY_ID.to_owned()),
            secret: SecretString::from(klarna_sim::DEFAULT_WEBHOOK_SECRET.to_owned()),
        }
    }

    /// Points the simulator's refund webhooks at the gateway's listener on `addr`.
    pub fn deliver_webhooks_to(&self, addr: SocketAddr) {
        self.running
            .sim
            .set_webhook_target(WebhookTarget::new(format!("http://{addr}{WEBHOOK_PATH}")));
    }

    /// Stops the simulator.
    pub async fn shutdown(self) {
        if let Err(e) = self.running.shutdown().await {
            tracing::warn!(error = %e, "simulator did not stop cleanly");
        }
    }
}
