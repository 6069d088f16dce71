//! Fixed demo data, seeded by [`Simulator::seed_demo_orders`](crate::Simulator::seed_demo_orders)
//! (orders and transactions), `POST /__admin/demo` or `klarna-sim --demo`. Ids never change, so
//! demos, docs and tests can name them.
//!
//! # Orders (Order Management)
//!
//! | order | what it is | what it shows |
//! |---|---|---|
//! | [`SE_INVOICE_ORDER_ID`] | SE/SEK `INVOICE`, 10 000 fully captured in one capture ([`SE_INVOICE_CAPTURE_ID`]) | refunds, return fee, due-date extension all work |
//! | [`DE_PART_CAPTURED_ORDER_ID`] | DE/EUR `PAY_LATER_IN_PARTS`, 20 000 with 5 000 captured ([`DE_PART_CAPTURED_CAPTURE_ID`]) | release of the remaining authorization works |
//! | [`US_AUTHORIZED_ORDER_ID`] | US/USD `CARD`, 15 000 authorized, no capture | refund → 403 "Order has no captures" |
//! | [`GB_CARD_ORDER_ID`] | GB/GBP `CARD`, 5 000 fully captured ([`GB_CARD_CAPTURE_ID`]) | no due-date extension (403), no return fee (GB not eligible) |
//! | [`NO_TWO_CAPTURES_ORDER_ID`] | NO/NOK `INVOICE`, 50 000 captured as 30 000 ([`NO_FIRST_CAPTURE_ID`]) + 20 000 ([`NO_SECOND_CAPTURE_ID`]) | return fee refused: more than one capture |
//!
//! # Payment transactions (partner Payments API)
//! All in SEK, for the partner account [`crate::DEFAULT_PARTNER_ACCOUNT_ID`]; capture ids
//! follow `{transaction}:capture:{n}`.
//!
//! | transaction | what it is | what it shows |
//! |---|---|---|
//! | [`CAPTURED_TRANSACTION_ID`] | `AUTHORIZED`, 10 000 fully captured as 6 000 ([`CAPTURED_FIRST_CAPTURE_ID`]) + 4 000 ([`CAPTURED_SECOND_CAPTURE_ID`]) | refund a capture, and refund the transaction (allocated oldest capture first) both work |
//! | [`CLOSED_TRANSACTION_ID`] | `CLOSED`, 5 000 fully captured ([`CLOSED_CAPTURE_ID`]) | refund → 403 "Transaction is closed…" |
//! | [`LIMIT_TRANSACTION_ID`] | `COMPLETED`, 50 000 captured ([`LIMIT_CAPTURE_ID`]), 199 refunds of 1 already made | one more refund works, the next → 403 "Maximum number of refunds (200) reached…" |
//! | [`UNCAPTURED_TRANSACTION_ID`] | `AUTHORIZED`, 15 000, nothing captured | refund → 403 "Transaction has no captures…" |
//!
//! Seeding again resets these orders and transactions to this initial state.

use crate::model::{OrderLine, OrderLineType};
use crate::payments::{LineItem, TransactionState};
use crate::seed::OrderSeed;
use crate::transaction_seed::{CaptureSeed, TransactionSeed};

/// `AUTHORIZED` SEK transaction, 10 000 fully captured in two captures.
pub const CAPTURED_TRANSACTION_ID: &str =
    "krn:payment:eu1:transaction:3d6f8a1b-2c4e-4f7a-9b5d-8e1c2a3b4d61";
/// First capture (6 000) of [`CAPTURED_TRANSACTION_ID`].
pub const CAPTURED_FIRST_CAPTURE_ID: &str =
    "krn:payment:eu1:transaction:3d6f8a1b-2c4e-4f7a-9b5d-8e1c2a3b4d61:capture:1";
/// Second capture (4 000) of [`CAPTURED_TRANSACTION_ID`].
pub const CAPTURED_SECOND_CAPTURE_ID: &str =
    "krn:payment:eu1:transaction:3d6f8a1b-2c4e-4f7a-9b5d-8e1c2a3b4d61:capture:2";
/// `CLOSED` SEK transaction, 5 000 captured: every refund is refused.
pub const CLOSED_TRANSACTION_ID: &str =
    "krn:payment:eu1:transaction:7a2c9e4f-5b1d-4c8e-a3f6-1d9b7e5c3a72";
/// The capture of [`CLOSED_TRANSACTION_ID`].
pub const CLOSED_CAPTURE_ID: &str =
    "krn:payment:eu1:transaction:7a2c9e4f-5b1d-4c8e-a3f6-1d9b7e5c3a72:capture:1";
/// `COMPLETED` SEK transaction, 50 000 captured, 199 refunds made: one more refund is allowed.
pub const LIMIT_TRANSACTION_ID: &str =
    "krn:payment:eu1:transaction:1f4b7d2e-8a3c-4e6b-b5d9-2c7e4a1f8b83";
/// The capture of [`LIMIT_TRANSACTION_ID`].
pub const LIMIT_CAPTURE_ID: &str =
    "krn:payment:eu1:transaction:1f4b7d2e-8a3c-4e6b-b5d9-2c7e4a1f8b83:capture:1";
/// Refunds already made on [`LIMIT_TRANSACTION_ID`].
pub const LIMIT_PRIOR_REFUNDS: u32 = 199;
/// `AUTHORIZED` SEK transaction, 15 000, nothing captured.
pub const UNCAPTURED_TRANSACTION_ID: &str =
    "krn:payment:eu1:transaction:9c5e1a3d-4f2b-4a7c-8d6e-3b8f5c2d9e94";

/// All demo transaction ids, in the order [`transaction_seeds`] lists them.
pub const TRANSACTION_IDS: [&str; 4] = [
    CAPTURED_TRANSACTION_ID,
    CLOSED_TRANSACTION_ID,
    LIMIT_TRANSACTION_ID,
    UNCAPTURED_TRANSACTION_ID,
];

/// The demo transactions as seeds (fixed ids, line items that add up to the amount).
pub fn transaction_seeds() -> Vec<TransactionSeed> {
    let transaction =
        |id: &str, state, amount, captures: &[(i64, &str)], line_items| TransactionSeed {
            payment_transaction_id: Some(id.to_owned()),
            currency: Some("SEK".to_owned()),
            amount,
            state: Some(state),
            line_items: Some(line_items),
            captures: captures
                .iter()
                .map(|&(amount, id)| CaptureSeed::with_id(amount, id))
                .collect(),
            prior_refunds: 0,
            other_operations: 0,
        };
    vec![
        transaction(
            CAPTURED_TRANSACTION_ID,
            TransactionState::Authorized,
            10_000,
            &[
                (6_000, CAPTURED_FIRST_CAPTURE_ID),
                (4_000, CAPTURED_SECOND_CAPTURE_ID),
            ],
            vec![
                LineItem::new("Linen shirt", 1, 6_000)
                    .with_tax(2_500, 1_200)
                    .with_reference("SHIRT-LIN-M")
                    .with_type("PHYSICAL"),
                LineItem::new("Wool scarf", 2, 2_000)
                    .with_tax(2_500, 800)
                    .with_reference("SCARF-WOOL")
                    .with_type("PHYSICAL"),
            ],
        ),
        transaction(
            CLOSED_TRANSACTION_ID,
            TransactionState::Closed,
            5_000,
            &[(5_000, CLOSED_CAPTURE_ID)],
            vec![
                LineItem::new("Ceramic mug", 2, 2_500)
                    .with_tax(2_500, 1_000)
                    .with_reference("MUG-CER-WH"),
            ],
        ),
        TransactionSeed {
            prior_refunds: LIMIT_PRIOR_REFUNDS,
            ..transaction(
                LIMIT_TRANSACTION_ID,
                TransactionState::Completed,
                50_000,
                &[(50_000, LIMIT_CAPTURE_ID)],
                vec![
                    LineItem::new("Gift cards", 50, 1_000)
                        .with_reference("GIFT-100")
                        .with_type("GIFT_CARD"),
                ],
            )
        },
        transaction(
            UNCAPTURED_TRANSACTION_ID,
            TransactionState::Authorized,
            15_000,
            &[],
            vec![LineItem::new("Desk lamp", 1, 15_000).with_reference("LAMP-DSK-01")],
        ),
    ]
}

/// SE/SEK invoice order, 10 000 fully captured in one capture.
pub const SE_INVOICE_ORDER_ID: &str = "4f3c2a71-8d5e-4b6a-9c1f-2e7d8a9b0c11";
/// The single capture of [`SE_INVOICE_ORDER_ID`].
pub const SE_INVOICE_CAPTURE_ID: &str = "a1c9e5d2-3b7f-4e8a-8d6c-5f4b3a2e1d01";
/// DE/EUR pay-in-parts order, 20 000 authorized, 5 000 captured.
pub const DE_PART_CAPTURED_ORDER_ID: &str = "7b2e9d40-5a1c-4f83-b6e2-9d0c4a7f3e22";
/// The capture of [`DE_PART_CAPTURED_ORDER_ID`].
pub const DE_PART_CAPTURED_CAPTURE_ID: &str = "b2d8f6e3-4c8a-4f9b-9e7d-6a5c4b3f2e02";
/// US/USD card order, 15 000 authorized, nothing captured.
pub const US_AUTHORIZED_ORDER_ID: &str = "c8e1f7a2-6d3b-4c95-a4f8-1b2e3d4c5f33";
/// GB/GBP card order, 5 000 fully captured.
pub const GB_CARD_ORDER_ID: &str = "2d9a6b8c-7e4f-4a16-8b3d-0c1e2f3a4b44";
/// The capture of [`GB_CARD_ORDER_ID`].
pub const GB_CARD_CAPTURE_ID: &str = "c3e9a7f4-5d9b-4a0c-af8e-7b6d5c4a3f03";
/// NO/NOK invoice order, 50 000 captured in two captures.
pub const NO_TWO_CAPTURES_ORDER_ID: &str = "9e5c3d1b-2f6a-4d87-b9c0-3a4b5c6d7e55";
/// First capture (30 000) of [`NO_TWO_CAPTURES_ORDER_ID`].
pub const NO_FIRST_CAPTURE_ID: &str = "d4fab8a5-6eac-4b1d-b09f-8c7e6d5b4a04";
/// Second capture (20 000) of [`NO_TWO_CAPTURES_ORDER_ID`].
pub const NO_SECOND_CAPTURE_ID: &str = "e5abc9b6-7fbd-4c2e-81a0-9d8f7e6c5b05";

/// All demo order ids, in the order [`seeds`] lists them.
pub const ORDER_IDS: [&str; 5] = [
    SE_INVOICE_ORDER_ID,
    DE_PART_CAPTURED_ORDER_ID,
    US_AUTHORIZED_ORDER_ID,
    GB_CARD_ORDER_ID,
    NO_TWO_CAPTURES_ORDER_ID,
];

fn seed(
    order_id: &str,
    order_amount: i64,
    captures: &[(i64, &str)],
    (currency, country, payment_method): (&str, &str, &str),
    refs: (&str, &str),
    order_lines: Vec<OrderLine>,
) -> OrderSeed {
    OrderSeed {
        order_id: Some(order_id.to_owned()),
        status: None,
        order_amount,
        captures: captures.iter().map(|&(amount, _)| amount).collect(),
        capture_ids: captures.iter().map(|&(_, id)| id.to_owned()).collect(),
        purchase_currency: Some(currency.to_owned()),
        purchase_country: Some(country.to_owned()),
        payment_method_type: Some(payment_method.to_owned()),
        merchant_reference1: Some(refs.0.to_owned()),
        merchant_reference2: None,
        klarna_reference: Some(refs.1.to_owned()),
        order_lines: Some(order_lines),
    }
}

/// The demo orders as seeds (fixed ids, lines that add up to the order amount).
pub fn seeds() -> Vec<OrderSeed> {
    use OrderLineType::{Physical, SalesTax, ShippingFee};
    vec![
        seed(
            SE_INVOICE_ORDER_ID,
            10_000,
            &[(10_000, SE_INVOICE_CAPTURE_ID)],
            ("SEK", "SE", "INVOICE"),
            ("SE-1001", "K4MADNY"),
            vec![
                OrderLine::new(Physical, "Linen shirt", 1, 7_500)
                    .with_tax(2_500, 1_500)
                    .with_reference("SHIRT-LIN-M"),
                OrderLine::new(ShippingFee, "Home delivery", 1, 2_500).with_tax(2_500, 500),
            ],
        ),
        seed(
            DE_PART_CAPTURED_ORDER_ID,
            20_000,
            &[(5_000, DE_PART_CAPTURED_CAPTURE_ID)],
            ("EUR", "DE", "PAY_LATER_IN_PARTS"),
            ("DE-2002", "K7QH2ZP"),
            vec![
                OrderLine::new(Physical, "Running shoes", 2, 8_500)
                    .with_tax(1_900, 2_714)
                    .with_reference("SHOE-RUN-42"),
                OrderLine::new(ShippingFee, "Express shipping", 1, 3_000).with_tax(1_900, 479),
            ],
        ),
        seed(
            US_AUTHORIZED_ORDER_ID,
            15_000,
            &[],
            ("USD", "US", "CARD"),
            ("US-3003", "K2WX9RM"),
            vec![
                OrderLine::new(Physical, "Desk lamp", 1, 13_800).with_reference("LAMP-DSK-01"),
                OrderLine::new(SalesTax, "Sales tax", 1, 1_200),
            ],
        ),
        seed(
            GB_CARD_ORDER_ID,
            5_000,
            &[(5_000, GB_CARD_CAPTURE_ID)],
            ("GBP", "GB", "CARD"),
            ("GB-4004", "K9TB4LC"),
            vec![
                OrderLine::new(Physical, "Ceramic mug", 2, 2_000)
                    .with_tax(2_000, 667)
                    .with_reference("MUG-CER-WH"),
                OrderLine::new(ShippingFee, "Standard delivery", 1, 1_000).with_tax(2_000, 167),
            ],
        ),
        seed(
            NO_TWO_CAPTURES_ORDER_ID,
            50_000,
            &[
                (30_000, NO_FIRST_CAPTURE_ID),
                (20_000, NO_SECOND_CAPTURE_ID),
            ],
            ("NOK", "NO", "INVOICE"),
            ("NO-5005", "K5NV8SJ"),
            vec![
                OrderLine::new(Physical, "Winter jacket", 1, 30_000)
                    .with_tax(2_500, 6_000)
                    .with_reference("JKT-WIN-L"),
                OrderLine::new(Physical, "Wool sweater", 1, 20_000)
                    .with_tax(2_500, 4_000)
                    .with_reference("SWT-WOOL-M"),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_transactions_are_consistent() {
        let now = time::OffsetDateTime::now_utc();
        let seeds = transaction_seeds();
        assert_eq!(seeds.len(), TRANSACTION_IDS.len());
        for (seed, id) in seeds.into_iter().zip(TRANSACTION_IDS) {
            assert_eq!(seed.payment_transaction_id.as_deref(), Some(id));
            let lines: i64 = seed
                .line_items
                .iter()
                .flatten()
                .map(|l| l.total_amount)
                .sum();
            assert_eq!(lines, seed.amount, "{id}");
            // The fixed capture ids are the ones the simulator would generate.
            let given: Vec<String> = seed
                .captures
                .iter()
                .filter_map(|c| c.payment_capture_id.clone())
                .collect();
            let (_, seeded) = crate::transaction_seed::build_transaction(
                TransactionSeed {
                    captures: seed
                        .captures
                        .iter()
                        .map(|c| CaptureSeed::new(c.amount))
                        .collect(),
                    ..seed.clone()
                },
                now,
            )
            .unwrap();
            assert_eq!(seeded.payment_capture_ids, given, "{id}");
        }
    }

    #[test]
    fn demo_lines_add_up_and_ids_are_uuids() {
        for seed in seeds() {
            let lines: i64 = seed
                .order_lines
                .as_ref()
                .map(|l| l.iter().map(|l| l.total_amount).sum())
                .unwrap_or(0);
            assert_eq!(lines, seed.order_amount, "{:?}", seed.order_id);
            let id = seed.order_id.as_deref().unwrap();
            assert_eq!(uuid::Uuid::try_parse(id).unwrap().to_string(), id);
            for capture in &seed.capture_ids {
                assert_eq!(
                    uuid::Uuid::try_parse(capture).unwrap().to_string(),
                    *capture
                );
            }
        }
    }
}
