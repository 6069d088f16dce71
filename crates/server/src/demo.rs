//! `--simulator`: an in-process Klarna simulator on a loopback port, seeded with demo orders
//! whose fixed ids the README uses, and one account `default` pointing at it. The demo never
//! shares state with a real deployment: the simulator lives in memory and dies with the
//! process.

use klarna_sim::{RunningSimulator, SimConfig, demo as ids};
use refund_gateway_klarna::{BaseUrl, KlarnaCredentials};
use secrecy::SecretString;

use crate::config::{Account, DEFAULT_ACCOUNT};

/// The running demo simulator.
#[derive(Debug)]
pub struct DemoSimulator {
    running: RunningSimulator,
}

impl DemoSimulator {
    /// Starts the simulator on 127.0.0.1 (an ephemeral port) and seeds the demo orders.
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
            "Klarna simulator running with demo orders (admin API under /__admin/)"
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

    /// The `default` account pointing at the simulator.
    pub fn account(&self) -> std::io::Result<Account> {
        Ok(Account {
            name: DEFAULT_ACCOUNT.to_owned(),
            base_url: BaseUrl::parse(&self.running.base_url).map_err(std::io::Error::other)?,
            credentials: KlarnaCredentials {
                username: self.running.username().to_owned(),
                password: SecretString::from(self.running.password().to_owned()),
            },
        })
    }

    /// Stops the simulator.
    pub async fn shutdown(self) {
        if let Err(e) = self.running.shutdown().await {
            tracing::warn!(error = %e, "simulator did not stop cleanly");
        }
    }
}
