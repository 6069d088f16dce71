//! The stored form of an operation's Klarna call and the operation's fingerprint: explicit,
//! versioned and canonical, owned here and nowhere else (see
//! `docs/architecture.md#stored-calls`).
//!
//! Both outlive a deploy: a PENDING call written by one release is resent by the next, and a
//! retry that spans a deploy is compared with a fingerprint computed by the previous release.
//! So neither may depend on how the domain types happen to serialize today:
//! - **Stored call, version 1**: `{"v":1,"call":{"kind":…}}`, written from this module's own
//!   record types (field names fixed here), read back through the domain's validation.
//!   Version 0 (no `"v"`, the domain types' serde form of the first releases) stays readable.
//! - **Fingerprint, version 1**: `v1:` then SHA-256 over length-prefixed parts: the RPC, the
//!   resolved account, the version 1 stored call and the currency the caller expects. A
//!   fingerprint without a prefix is version 0 (the same hash over the version 0 call); a
//!   retry is compared in the version the operation was stored with.
//!
//! Golden tests below pin the bytes of stored calls and the fingerprints of fixed requests:
//! an accidental change fails them. A deliberate change is a new version, never an edit.

use refund_gateway_domain::{
    Amount, CaptureId, Currency, KlarnaRefund, LineItem, LineItemDraft, LineTypeInput,
    NewOperation, OrderId, OrderLine, OrderLineDraft, OrderLineType, PartnerRefund,
    PaymentCaptureId, PaymentTransactionId, ProductIdentifiers, Rpc, SubscriptionDraft,
    SubscriptionInterval, Violations,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::call::KlarnaCall;

/// The version this release writes, of both the stored call and the fingerprint.
pub const VERSION: u32 = 1;

/// Why a stored call cannot be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored Klarna call unreadable: {0}")]
pub struct Unreadable(String);

/// The stored form of `call` (the current version).
pub fn encode_call(call: &KlarnaCall) -> String {
    let stored = StoredV1 {
        v: VERSION,
        call: CallV1::from(call),
    };
    // Serializing plain records (strings, integers, options, vectors) cannot fail.
    serde_json::to_string(&stored).unwrap_or_default()
}

/// Reads a stored call of any version, validating every value again.
pub fn decode_call(stored: &str) -> Result<KlarnaCall, Unreadable> {
    let value: serde_json::Value =
        serde_json::from_str(stored).map_err(|e| Unreadable(e.to_string()))?;
    match value.get("v").and_then(serde_json::Value::as_u64) {
        Some(1) => {
            let stored: StoredV1 =
                serde_json::from_value(value).map_err(|e| Unreadable(e.to_string()))?;
            stored.call.into_call()
        }
        Some(other) => Err(Unreadable(format!(
            "version {other} was written by a newer release"
        ))),
        None => {
            // Version 0 is the domain types' serde form, which checks no value: read back
            // through version 1, which does (an invalid version 0 call, e.g. a negative
            // quantity, was read and then refused once stored again: found by fuzzing).
            let call: KlarnaCall =
                serde_json::from_value(value).map_err(|e| Unreadable(format!("version 0: {e}")))?;
            CallV1::from(&call)
                .into_call()
                .map_err(|Unreadable(e)| Unreadable(format!("version 0: {e}")))
        }
    }
}

/// The fingerprint (current version) of a request: its RPC, resolved account, Klarna call (as
/// [`encode_call`] stores it: the caller encodes it once, for both) and the currency it
/// expects. Another request under the same key differs in one of them.
pub fn fingerprint(
    rpc: Rpc,
    account: &str,
    klarna_request: &str,
    expected_currency: Option<&str>,
) -> String {
    format!(
        "v1:{}",
        digest(rpc, account, klarna_request, expected_currency)
    )
}

/// True when `new` is the same request as the stored operation whose fingerprint is
/// `stored`, compared in the version `stored` was computed in. `new` is as this release
/// builds it (its call stored in the current version).
pub fn same_request(stored: &str, new: &NewOperation) -> bool {
    if stored.starts_with("v1:") {
        return stored == new.fingerprint;
    }
    if stored.contains(':') {
        // A newer release's fingerprint: this release cannot tell, and must not execute.
        return false;
    }
    let Ok(call) = decode_call(&new.klarna_request) else {
        return false;
    };
    stored
        == digest(
            new.rpc,
            &new.klarna_account,
            &v0_call(&call),
            new.currency.as_deref(),
        )
}

/// The answer context of a due-date extension: the fee of the offer taken (version 1).
pub fn encode_extension_fee(amount: i64, currency: &str) -> String {
    let context = ContextV1 {
        v: VERSION,
        extension_fee: Some(FeeV1 {
            amount,
            currency: currency.to_owned(),
        }),
    };
    serde_json::to_string(&context).unwrap_or_default()
}

/// The fee of a due-date extension in a stored answer context, if it holds one.
pub fn decode_extension_fee(context: &str) -> Option<(i64, String)> {
    let context: ContextV1 = serde_json::from_str(context).ok()?;
    (context.v == VERSION)
        .then_some(context.extension_fee)
        .flatten()
        .map(|fee| (fee.amount, fee.currency))
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextV1 {
    v: u32,
    extension_fee: Option<FeeV1>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeeV1 {
    amount: i64,
    currency: String,
}

/// Version 0 of the stored call: the serde form of the domain types in the first releases.
fn v0_call(call: &KlarnaCall) -> String {
    serde_json::to_string(call).unwrap_or_default()
}

/// SHA-256 in hex over length-prefixed parts.
fn digest(rpc: Rpc, account: &str, call: &str, expected_currency: Option<&str>) -> String {
    let mut hash = Sha256::new();
    for part in [rpc.as_str(), account, call, expected_currency.unwrap_or("")] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hex::encode(hash.finalize())
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredV1 {
    v: u32,
    call: CallV1,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum CallV1 {
    CreateRefund {
        order_id: String,
        refunded_amount: i64,
        description: Option<String>,
        reference: String,
        order_lines: Vec<LineV1>,
    },
    ReleaseRemainingAuthorization {
        order_id: String,
    },
    ExtendDueDate {
        order_id: String,
        capture_id: String,
        number_of_days: i32,
    },
    RefundCapture {
        payment_transaction_id: String,
        payment_capture_id: String,
        refund: PartnerRefundV1,
    },
    RefundTransaction {
        payment_transaction_id: String,
        refund: PartnerRefundV1,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartnerRefundV1 {
    amount: i64,
    currency: String,
    reference: String,
    description: Option<String>,
    line_items: Vec<LineItemV1>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LineItemV1 {
    name: String,
    quantity: i64,
    unit_price: i64,
    total_amount: i64,
    total_tax_amount: Option<i64>,
    tax_rate: Option<i64>,
    reference: Option<String>,
    r#type: Option<String>,
}

impl From<&PartnerRefund> for PartnerRefundV1 {
    fn from(r: &PartnerRefund) -> Self {
        Self {
            amount: r.amount.minor_units(),
            currency: r.currency.to_string(),
            reference: r.reference.clone(),
            description: r.description.clone(),
            line_items: r
                .line_items
                .iter()
                .map(|i| LineItemV1 {
                    name: i.name.clone(),
                    quantity: i.quantity,
                    unit_price: i.unit_price,
                    total_amount: i.total_amount,
                    total_tax_amount: i.total_tax_amount,
                    tax_rate: i.tax_rate,
                    reference: i.reference.clone(),
                    r#type: i.item_type.clone(),
                })
                .collect(),
        }
    }
}

impl PartnerRefundV1 {
    /// The domain refund, every value validated again.
    fn into_refund(self) -> Result<PartnerRefund, Unreadable> {
        let invalid = |what: &str, e: &dyn std::fmt::Display| Unreadable(format!("{what}: {e}"));
        let mut line_items = Vec::with_capacity(self.line_items.len());
        for (i, item) in self.line_items.into_iter().enumerate() {
            let item = LineItem::parse(LineItemDraft {
                name: item.name,
                quantity: item.quantity,
                unit_price: item.unit_price,
                total_amount: item.total_amount,
                total_tax_amount: item.total_tax_amount,
                tax_rate: item.tax_rate,
                reference: item.reference.unwrap_or_default(),
                item_type: item.r#type.unwrap_or_default(),
            })
            .map_err(|e| invalid(&format!("line_items[{i}]"), &e))?;
            line_items.push(item);
        }
        Ok(PartnerRefund {
            amount: Amount::parse(self.amount).map_err(|e| invalid("amount", &e))?,
            currency: Currency::parse(&self.currency).map_err(|e| invalid("currency", &e))?,
            reference: self.reference,
            description: self.description,
            line_items,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LineV1 {
    /// Klarna's name of the type; `None` when not given.
    r#type: Option<String>,
    name: String,
    quantity: i64,
    quantity_unit: Option<String>,
    unit_price: i64,
    total_amount: i64,
    total_discount_amount: i64,
    tax_rate: i32,
    total_tax_amount: i64,
    reference: Option<String>,
    merchant_data: Option<String>,
    product_url: Option<String>,
    image_url: Option<String>,
    product_identifiers: Option<IdentifiersV1>,
    subscription: Option<SubscriptionV1>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentifiersV1 {
    brand: String,
    category_path: String,
    global_trade_item_number: String,
    manufacturer_part_number: String,
    color: String,
    size: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionV1 {
    name: String,
    /// Klarna's name of the interval (`DAY`, …).
    interval: String,
    interval_count: i32,
}

impl From<&KlarnaCall> for CallV1 {
    fn from(call: &KlarnaCall) -> Self {
        match call {
            KlarnaCall::CreateRefund { order_id, refund } => Self::CreateRefund {
                order_id: order_id.to_string(),
                refunded_amount: refund.refunded_amount.minor_units(),
                description: refund.description.clone(),
                reference: refund.reference.clone(),
                order_lines: refund.order_lines.iter().map(LineV1::from).collect(),
            },
            KlarnaCall::ReleaseRemainingAuthorization { order_id } => {
                Self::ReleaseRemainingAuthorization {
                    order_id: order_id.to_string(),
                }
            }
            KlarnaCall::ExtendDueDate {
                order_id,
                capture_id,
                number_of_days,
            } => Self::ExtendDueDate {
                order_id: order_id.to_string(),
                capture_id: capture_id.to_string(),
                number_of_days: *number_of_days,
            },
            KlarnaCall::RefundCapture {
                transaction_id,
                capture_id,
                refund,
            } => Self::RefundCapture {
                payment_transaction_id: transaction_id.to_string(),
                payment_capture_id: capture_id.to_string(),
                refund: PartnerRefundV1::from(refund),
            },
            KlarnaCall::RefundTransaction {
                transaction_id,
                refund,
            } => Self::RefundTransaction {
                payment_transaction_id: transaction_id.to_string(),
                refund: PartnerRefundV1::from(refund),
            },
        }
    }
}

impl From<&OrderLine> for LineV1 {
    fn from(l: &OrderLine) -> Self {
        Self {
            r#type: l.line_type.map(|t| t.klarna_name().to_owned()),
            name: l.name.clone(),
            quantity: l.quantity,
            quantity_unit: l.quantity_unit.clone(),
            unit_price: l.unit_price,
            total_amount: l.total_amount,
            total_discount_amount: l.total_discount_amount,
            tax_rate: l.tax_rate,
            total_tax_amount: l.total_tax_amount,
            reference: l.reference.clone(),
            merchant_data: l.merchant_data.clone(),
            product_url: l.product_url.clone(),
            image_url: l.image_url.clone(),
            product_identifiers: l.product_identifiers.as_ref().map(|p| IdentifiersV1 {
                brand: p.brand.clone(),
                category_path: p.category_path.clone(),
                global_trade_item_number: p.global_trade_item_number.clone(),
                manufacturer_part_number: p.manufacturer_part_number.clone(),
                color: p.color.clone(),
                size: p.size.clone(),
            }),
            subscription: l.subscription.as_ref().map(|s| SubscriptionV1 {
                name: s.name.clone(),
                interval: s.interval.klarna_name().to_owned(),
                interval_count: s.interval_count,
            }),
        }
    }
}

impl CallV1 {
    /// The domain call, every value validated again.
    fn into_call(self) -> Result<KlarnaCall, Unreadable> {
        let invalid = |what: &str, e: &dyn std::fmt::Display| Unreadable(format!("{what}: {e}"));
        let order = |id: &str| OrderId::parse(id).map_err(|e| invalid("order_id", &e));
        let transaction = |id: &str| {
            PaymentTransactionId::parse(id).map_err(|e| invalid("payment_transaction_id", &e))
        };
        Ok(match self {
            Self::CreateRefund {
                order_id,
                refunded_amount,
                description,
                reference,
                order_lines,
            } => {
                let mut violations = Violations::new();
                let lines: Vec<OrderLine> = order_lines
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, line)| {
                        let prefix = format!("order_lines[{i}]");
                        let draft = line.into_draft(&prefix, &mut violations);
                        OrderLine::validate(draft, &prefix, &mut violations)
                    })
                    .collect();
                if !violations.is_empty() {
                    return Err(invalid("order_lines", &violations));
                }
                KlarnaCall::CreateRefund {
                    order_id: order(&order_id)?,
                    refund: KlarnaRefund {
                        refunded_amount: Amount::parse(refunded_amount)
                            .map_err(|e| invalid("refunded_amount", &e))?,
                        description,
                        reference,
                        order_lines: lines,
                    },
                }
            }
            Self::ReleaseRemainingAuthorization { order_id } => {
                KlarnaCall::ReleaseRemainingAuthorization {
                    order_id: order(&order_id)?,
                }
            }
            Self::ExtendDueDate {
                order_id,
                capture_id,
                number_of_days,
            } => KlarnaCall::ExtendDueDate {
                order_id: order(&order_id)?,
                capture_id: CaptureId::parse(&capture_id).map_err(|e| invalid("capture_id", &e))?,
                number_of_days,
            },
            Self::RefundCapture {
                payment_transaction_id,
                payment_capture_id,
                refund,
            } => KlarnaCall::RefundCapture {
                transaction_id: transaction(&payment_transaction_id)?,
                capture_id: PaymentCaptureId::parse(&payment_capture_id)
                    .map_err(|e| invalid("payment_capture_id", &e))?,
                refund: refund.into_refund()?,
            },
            Self::RefundTransaction {
                payment_transaction_id,
                refund,
            } => KlarnaCall::RefundTransaction {
                transaction_id: transaction(&payment_transaction_id)?,
                refund: refund.into_refund()?,
            },
        })
    }
}

impl LineV1 {
    /// The line as a draft for the domain's validation; names this release does not know are
    /// recorded in `violations`.
    fn into_draft(self, prefix: &str, violations: &mut Violations) -> OrderLineDraft {
        let line_type = match self.r#type.as_deref() {
            None => LineTypeInput::Unspecified,
            Some(name) => match OrderLineType::from_klarna_name(name) {
                Some(t) => LineTypeInput::Known(t),
                None => {
                    violations.push(format!("{prefix}.type"), format!("unknown type {name:?}"));
                    LineTypeInput::Unspecified
                }
            },
        };
        let subscription = self.subscription.map(|s| {
            let interval = SubscriptionInterval::from_klarna_name(&s.interval);
            if interval.is_none() {
                violations.push(
                    format!("{prefix}.subscription.interval"),
                    format!("unknown interval {:?}", s.interval),
                );
            }
            SubscriptionDraft {
                name: s.name,
                interval,
                interval_count: s.interval_count,
            }
        });
        OrderLineDraft {
            line_type,
            name: self.name,
            quantity: self.quantity,
            quantity_unit: self.quantity_unit.unwrap_or_default(),
            unit_price: self.unit_price,
            total_amount: self.total_amount,
            total_discount_amount: self.total_discount_amount,
            tax_rate: self.tax_rate,
            total_tax_amount: self.total_tax_amount,
            reference: self.reference.unwrap_or_default(),
            merchant_data: self.merchant_data.unwrap_or_default(),
            product_url: self.product_url.unwrap_or_default(),
            image_url: self.image_url.unwrap_or_default(),
            product_identifiers: self.product_identifiers.map(|p| ProductIdentifiers {
                brand: p.brand,
                category_path: p.category_path,
                global_trade_item_number: p.global_trade_item_number,
                manufacturer_part_number: p.manufacturer_part_number,
                color: p.color,
                size: p.size,
            }),
            subscription,
        }
    }
}

#[cfg(test)]
mod tests {
    use refund_gateway_domain::{Caller, IdempotencyKey, OperationId, Subscription};

    use super::*;

    const ORDER: &str = "4f3c2a71-8d5e-4b6a-9c1f-2e7d8a9b0c11";
    const CAPTURE: &str = "a1c9e5d2-3b7f-4e8a-8d6c-5f4b3a2e1d01";

    fn full_line() -> OrderLine {
        OrderLine {
            line_type: Some(OrderLineType::Physical),
            name: "Shirt".into(),
            quantity: 2,
            quantity_unit: Some("pcs".into()),
            unit_price: 2_500,
            total_amount: 4_500,
            total_discount_amount: 500,
            tax_rate: 2_500,
            total_tax_amount: 900,
            reference: Some("SKU-1".into()),
            merchant_data: Some("{\"a\":1}".into()),
            product_url: Some("https://shop.example/shirt".into()),
            image_url: Some("https://shop.example/shirt.png".into()),
            product_identifiers: Some(ProductIdentifiers {
                brand: "Brand".into(),
                category_path: "Clothes > Shirts".into(),
                global_trade_item_number: "7350000000000".into(),
                manufacturer_part_number: "MPN-1".into(),
                color: "blue".into(),
                size: "M".into(),
            }),
            subscription: Some(Subscription {
                name: "Monthly shirts".into(),
                interval: SubscriptionInterval::Month,
                interval_count: 1,
            }),
        }
    }

    fn fee_line() -> OrderLine {
        OrderLine {
            line_type: Some(OrderLineType::ReturnFee),
            name: "Return fee".into(),
            quantity: 1,
            quantity_unit: None,
            unit_price: -500,
            total_amount: -500,
            total_discount_amount: 0,
            tax_rate: 0,
            total_tax_amount: 0,
            reference: None,
            merchant_data: None,
            product_url: None,
            image_url: None,
            product_identifiers: None,
            subscription: None,
        }
    }

    fn refund() -> KlarnaCall {
        KlarnaCall::CreateRefund {
            order_id: OrderId::parse(ORDER).unwrap_or_else(|e| panic!("{e}")),
            refund: KlarnaRefund {
                refunded_amount: Amount::parse(4_000).unwrap_or_else(|e| panic!("{e}")),
                description: Some("Returned one shirt".into()),
                reference: "RMA-1001".into(),
                order_lines: vec![full_line(), fee_line()],
            },
        }
    }

    fn release() -> KlarnaCall {
        KlarnaCall::ReleaseRemainingAuthorization {
            order_id: OrderId::parse(ORDER).unwrap_or_else(|e| panic!("{e}")),
        }
    }

    fn extend() -> KlarnaCall {
        KlarnaCall::ExtendDueDate {
            order_id: OrderId::parse(ORDER).unwrap_or_else(|e| panic!("{e}")),
            capture_id: CaptureId::parse(CAPTURE).unwrap_or_else(|e| panic!("{e}")),
            number_of_days: 14,
        }
    }

    const TRANSACTION: &str = "krn:payment:eu1:transaction:6b1f3c2e-0d4a-4b8e-9f1a-2c3d4e5f6a70";

    fn partner_refund(line_items: Vec<LineItem>) -> PartnerRefund {
        PartnerRefund {
            amount: Amount::parse(5_000).unwrap_or_else(|e| panic!("{e}")),
            currency: Currency::parse("SEK").unwrap_or_else(|e| panic!("{e}")),
            reference: "RMA-2001".into(),
            description: None,
            line_items,
        }
    }

    fn capture_refund() -> KlarnaCall {
        KlarnaCall::RefundCapture {
            transaction_id: PaymentTransactionId::parse(TRANSACTION)
                .unwrap_or_else(|e| panic!("{e}")),
            capture_id: PaymentCaptureId::parse(&format!("{TRANSACTION}:capture:1"))
                .unwrap_or_else(|e| panic!("{e}")),
            refund: partner_refund(vec![]),
        }
    }

    fn transaction_refund() -> KlarnaCall {
        KlarnaCall::RefundTransaction {
            transaction_id: PaymentTransactionId::parse(TRANSACTION)
                .unwrap_or_else(|e| panic!("{e}")),
            refund: partner_refund(vec![
                LineItem {
                    name: "Shoes".into(),
                    quantity: 1,
                    unit_price: 4_000,
                    total_amount: 4_000,
                    total_tax_amount: Some(800),
                    tax_rate: Some(2_500),
                    reference: Some("SKU-9".into()),
                    item_type: Some("physical".into()),
                },
                LineItem {
                    name: "Shipping".into(),
                    quantity: 1,
                    unit_price: 1_000,
                    total_amount: 1_000,
                    total_tax_amount: None,
                    tax_rate: None,
                    reference: None,
                    item_type: None,
                },
            ]),
        }
    }

    const CAPTURE_REFUND_V1: &str = r#"{"v":1,"call":{"kind":"refund_capture","payment_transaction_id":"krn:payment:eu1:transaction:6b1f3c2e-0d4a-4b8e-9f1a-2c3d4e5f6a70","payment_capture_id":"krn:payment:eu1:transaction:6b1f3c2e-0d4a-4b8e-9f1a-2c3d4e5f6a70:capture:1","refund":{"amount":5000,"currency":"SEK","reference":"RMA-2001","description":null,"line_items":[]}}}"#;
    const TRANSACTION_REFUND_V1: &str = r#"{"v":1,"call":{"kind":"refund_transaction","payment_transaction_id":"krn:payment:eu1:transaction:6b1f3c2e-0d4a-4b8e-9f1a-2c3d4e5f6a70","refund":{"amount":5000,"currency":"SEK","reference":"RMA-2001","description":null,"line_items":[{"name":"Shoes","quantity":1,"unit_price":4000,"total_amount":4000,"total_tax_amount":800,"tax_rate":2500,"reference":"SKU-9","type":"physical"},{"name":"Shipping","quantity":1,"unit_price":1000,"total_amount":1000,"total_tax_amount":null,"tax_rate":null,"reference":null,"type":null}]}}}"#;

    /// Version 1 as written by this release; a change here breaks every stored call.
    const REFUND_V1: &str = r#"{"v":1,"call":{"kind":"create_refund","order_id":"4f3c2a71-8d5e-4b6a-9c1f-2e7d8a9b0c11","refunded_amount":4000,"description":"Returned one shirt","reference":"RMA-1001","order_lines":[{"type":"physical","name":"Shirt","quantity":2,"quantity_unit":"pcs","unit_price":2500,"total_amount":4500,"total_discount_amount":500,"tax_rate":2500,"total_tax_amount":900,"reference":"SKU-1","merchant_data":"{\"a\":1}","product_url":"https://shop.example/shirt","image_url":"https://shop.example/shirt.png","product_identifiers":{"brand":"Brand","category_path":"Clothes > Shirts","global_trade_item_number":"7350000000000","manufacturer_part_number":"MPN-1","color":"blue","size":"M"},"subscription":{"name":"Monthly shirts","interval":"MONTH","interval_count":1}},{"type":"return_fee","name":"Return fee","quantity":1,"quantity_unit":null,"unit_price":-500,"total_amount":-500,"total_discount_amount":0,"tax_rate":0,"total_tax_amount":0,"reference":null,"merchant_data":null,"product_url":null,"image_url":null,"product_identifiers":null,"subscription":null}]}}"#;
    const RELEASE_V1: &str = r#"{"v":1,"call":{"kind":"release_remaining_authorization","order_id":"4f3c2a71-8d5e-4b6a-9c1f-2e7d8a9b0c11"}}"#;
    const EXTEND_V1: &str = r#"{"v":1,"call":{"kind":"extend_due_date","order_id":"4f3c2a71-8d5e-4b6a-9c1f-2e7d8a9b0c11","capture_id":"a1c9e5d2-3b7f-4e8a-8d6c-5f4b3a2e1d01","number_of_days":14}}"#;

    /// Version 0, as the first releases stored it (the domain types' serde form then).
    const REFUND_V0: &str = r#"{"call":"create_refund","order_id":"4f3c2a71-8d5e-4b6a-9c1f-2e7d8a9b0c11","refund":{"refunded_amount":4000,"description":"Returned one shirt","reference":"RMA-1001","order_lines":[{"line_type":"return_fee","name":"Return fee","quantity":1,"quantity_unit":null,"unit_price":-500,"total_amount":-500,"total_discount_amount":0,"tax_rate":0,"total_tax_amount":0,"reference":null,"merchant_data":null,"product_url":null,"image_url":null,"product_identifiers":null,"subscription":null}]}}"#;
    const RELEASE_V0: &str = r#"{"call":"release_remaining_authorization","order_id":"4f3c2a71-8d5e-4b6a-9c1f-2e7d8a9b0c11"}"#;
    const EXTEND_V0: &str = r#"{"call":"extend_due_date","order_id":"4f3c2a71-8d5e-4b6a-9c1f-2e7d8a9b0c11","capture_id":"a1c9e5d2-3b7f-4e8a-8d6c-5f4b3a2e1d01","number_of_days":14}"#;

    #[test]
    fn stored_calls_are_frozen_in_version_1() {
        assert_eq!(encode_call(&refund()), REFUND_V1);
        assert_eq!(encode_call(&release()), RELEASE_V1);
        assert_eq!(encode_call(&extend()), EXTEND_V1);
        assert_eq!(encode_call(&capture_refund()), CAPTURE_REFUND_V1);
        assert_eq!(encode_call(&transaction_refund()), TRANSACTION_REFUND_V1);
    }

    #[test]
    fn every_version_reads_back() {
        for (stored, call) in [
            (REFUND_V1, refund()),
            (RELEASE_V1, release()),
            (EXTEND_V1, extend()),
            (CAPTURE_REFUND_V1, capture_refund()),
            (TRANSACTION_REFUND_V1, transaction_refund()),
            (RELEASE_V0, release()),
            (EXTEND_V0, extend()),
        ] {
            assert_eq!(decode_call(stored), Ok(call), "{stored}");
        }
        let KlarnaCall::CreateRefund { refund, .. } =
            decode_call(REFUND_V0).unwrap_or_else(|e| panic!("{e}"))
        else {
            panic!("not a refund");
        };
        assert_eq!(refund.order_lines, vec![fee_line()]);
        assert_eq!(refund.refunded_amount.minor_units(), 4_000);
    }

    #[test]
    fn the_extension_fee_is_frozen_in_version_1() {
        let stored = encode_extension_fee(495, "SEK");
        assert_eq!(
            stored,
            r#"{"v":1,"extension_fee":{"amount":495,"currency":"SEK"}}"#
        );
        assert_eq!(decode_extension_fee(&stored), Some((495, "SEK".to_owned())));
        assert_eq!(decode_extension_fee("{}"), None);
        assert_eq!(
            decode_extension_fee(r#"{"v":2,"extension_fee":null}"#),
            None
        );
    }

    #[test]
    fn stored_calls_are_validated_again() {
        for tampered in [
            REFUND_V1.replace("\"refunded_amount\":4000", "\"refunded_amount\":0"),
            REFUND_V1.replace("\"type\":\"physical\"", "\"type\":\"teleport\""),
            REFUND_V1.replace("\"total_amount\":4500", "\"total_amount\":4501"),
            EXTEND_V1.replace("a1c9e5d2", "not/a/capture"),
            CAPTURE_REFUND_V1.replace("krn:payment:eu1:transaction:6b1f", "krn:a/b"),
            CAPTURE_REFUND_V1.replace("\"currency\":\"SEK\"", "\"currency\":\"SE\""),
            TRANSACTION_REFUND_V1.replace("\"total_amount\":4000", "\"total_amount\":4001"),
            RELEASE_V1.replace("\"v\":1", "\"v\":2"),
            RELEASE_V1.replace("}}", ",\"extra\":1}}"),
        ] {
            assert!(decode_call(&tampered).is_err(), "{tampered}");
        }
    }

    fn new_operation(call: &KlarnaCall, rpc: Rpc, currency: Option<&str>) -> NewOperation {
        let caller = Caller::anonymous();
        let key = IdempotencyKey::parse("k").unwrap_or_else(|e| panic!("{e}"));
        NewOperation {
            operation_id: OperationId::derive(&caller, rpc, &key),
            caller,
            rpc,
            idempotency_key: key,
            fingerprint: fingerprint(rpc, "default", &encode_call(call), currency),
            klarna_account: "default".into(),
            order_id: ORDER.into(),
            resource_kind: refund_gateway_domain::ResourceKind::Order,
            resource_id: ORDER.into(),
            capture_id: None,
            amount: None,
            currency: currency.map(str::to_owned),
            reference: None,
            klarna_request: encode_call(call),
            trace_id: None,
            traceparent: None,
        }
    }

    #[test]
    fn fingerprints_are_frozen() {
        let cases = [
            (
                refund(),
                Rpc::RefundOrder,
                Some("SEK"),
                "v1:c3df8329649f1d37d0808a7a9ec5129022cf090946abbb30d4e7256dbb1a0bda",
            ),
            (
                release(),
                Rpc::ReleaseAuthorization,
                None,
                "v1:294fd5cb397eb7ef9e13f2053dfb2dcbf7e370d3dcf0024d65d0a766da231e8f",
            ),
            (
                extend(),
                Rpc::ExtendDueDate,
                None,
                "v1:004f6e76d112129073ef51a0fbe73920bda394c39d87f98fc66b6ea95f9c300d",
            ),
            (
                capture_refund(),
                Rpc::RefundCapture,
                Some("SEK"),
                "v1:2e2ce01d6fe20dc519f66e652e7a952f7a24c51fd984e1c006a2af4f4f57db10",
            ),
            (
                transaction_refund(),
                Rpc::RefundTransaction,
                Some("SEK"),
                "v1:9da7fd357c3b36dfd1465d4c87b4e23fc274428e9b55bfe9f53f313855e559db",
            ),
        ];
        for (call, rpc, currency, expected) in cases {
            assert_eq!(
                fingerprint(rpc, "default", &encode_call(&call), currency),
                expected,
                "{rpc:?}"
            );
            // The protocol judges new work by its RPC's API, without decoding the call.
            assert_eq!(call.api(), rpc.api(), "{rpc:?}");
        }
    }

    #[test]
    fn a_retry_is_compared_in_the_version_it_was_stored_in() {
        let call = release();
        let new = new_operation(&call, Rpc::ReleaseAuthorization, None);
        // Stored by this release.
        assert!(same_request(&new.fingerprint, &new));
        // Stored by a first release: version 0, the digest of the version 0 call.
        assert_eq!(v0_call(&call), RELEASE_V0);
        assert_eq!(v0_call(&extend()), EXTEND_V0);
        let v0 = digest(Rpc::ReleaseAuthorization, "default", RELEASE_V0, None);
        assert_eq!(
            v0,
            "64958ca1b3dcf1f21c22ec53e1039e0d9378c73ff0f93560410b2a3eefcd2237"
        );
        assert!(same_request(&v0, &new));
        // Another request under the key, in either version.
        let other = new_operation(&extend(), Rpc::ReleaseAuthorization, None);
        assert!(!same_request(&new.fingerprint, &other));
        assert!(!same_request(&v0, &other));
        let in_usd = new_operation(&call, Rpc::ReleaseAuthorization, Some("USD"));
        assert!(!same_request(&v0, &in_usd));
        // A version this release does not know is never taken for the same request.
        assert!(!same_request("v9:abc", &new));
    }
}
