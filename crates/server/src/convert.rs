//! The one place where API messages become domain values and back. Requests become drafts
//! here and are validated by the domain; nothing past this module sees a proto type.

use prost::Message;
use refund_gateway_domain as domain;
use refund_gateway_domain::{
    AuditEvent, ExtendDueDateOption, Operation, OperationFilter, OperationPage, OperationState,
    Violations,
};
use refund_gateway_domain::{
    ExtendDueDateDraft, LineItemDraft, LineTypeInput, OrderLineDraft, OrderLineType,
    RefundCaptureDraft, RefundOrderDraft, RefundTransactionDraft, ReleaseAuthorizationDraft,
    ResourceKind, SubscriptionDraft, SubscriptionInterval,
};
use refund_gateway_proto::v1 as pb;
use time::OffsetDateTime;

use crate::gateway::{ReceiptOutcome, RefundOutcome};
use crate::protocol::{Accepted, Encoded, KlarnaCall, encoding};

/// `RefundCaptureRequest` -> draft.
pub fn refund_capture_draft(r: pb::RefundCaptureRequest) -> RefundCaptureDraft {
    RefundCaptureDraft {
        idempotency_key: r.idempotency_key,
        klarna_account: r.klarna_account,
        payment_transaction_id: r.payment_transaction_id,
        payment_capture_id: r.payment_capture_id,
        amount: r.amount,
        currency: r.currency,
        reference: r.reference,
        description: r.description,
        validate_only: r.validate_only,
    }
}

/// `RefundTransactionRequest` -> draft.
pub fn refund_transaction_draft(r: pb::RefundTransactionRequest) -> RefundTransactionDraft {
    RefundTransactionDraft {
        idempotency_key: r.idempotency_key,
        klarna_account: r.klarna_account,
        payment_transaction_id: r.payment_transaction_id,
        amount: r.amount,
        currency: r.currency,
        line_items: r
            .line_items
            .into_iter()
            .map(|i| LineItemDraft {
                name: i.name,
                quantity: i.quantity,
                unit_price: i.unit_price,
                total_amount: i.total_amount,
                total_tax_amount: i.total_tax_amount,
                tax_rate: i.tax_rate,
                reference: i.reference,
                item_type: i.r#type,
            })
            .collect(),
        reference: r.reference,
        description: r.description,
        validate_only: r.validate_only,
    }
}

/// The answer of RefundCapture.
pub fn capture_refund_response(
    call: &domain::RefundCapture,
    outcome: &RefundOutcome,
) -> pb::RefundCaptureResponse {
    pb::RefundCaptureResponse {
        operation_id: outcome.operation_id.to_string(),
        payment_refund_id: outcome.refund_id.clone().unwrap_or_default(),
        correlation_id: outcome.correlation_id.clone().unwrap_or_default(),
        payment_transaction_id: call.transaction_id.to_string(),
        payment_capture_id: call.capture_id.to_string(),
        amount: call.amount.minor_units(),
        currency: call.currency.to_string(),
        reference: outcome.reference.clone(),
        validate_only: call.validate_only,
        replayed: false,
    }
}

/// The answer of RefundTransaction.
pub fn transaction_refund_response(
    call: &domain::RefundTransaction,
    outcome: &RefundOutcome,
) -> pb::RefundTransactionResponse {
    pb::RefundTransactionResponse {
        operation_id: outcome.operation_id.to_string(),
        payment_refund_id: outcome.refund_id.clone().unwrap_or_default(),
        correlation_id: outcome.correlation_id.clone().unwrap_or_default(),
        payment_transaction_id: call.transaction_id.to_string(),
        amount: call.amount.minor_units(),
        currency: call.currency.to_string(),
        reference: outcome.reference.clone(),
        validate_only: call.validate_only,
        replayed: false,
    }
}

/// A partner refund's answer, encoded for the store.
pub fn partner_refund_encoded(payload: impl Message, outcome: RefundOutcome) -> Encoded {
    Encoded {
        payload: payload.encode_to_vec(),
        refund_id: outcome.refund_id,
        correlation_id: outcome.correlation_id,
    }
}

/// The answer of GetTransaction.
pub fn get_transaction_response(t: domain::PaymentTransaction) -> pb::GetTransactionResponse {
    pb::GetTransactionResponse {
        state: t.state.as_str().to_owned(),
        captured_amount: t.captured(),
        refunded_amount: t.refunded(),
        refundable_amount: t.refundable(),
        payment_transaction_id: t.payment_transaction_id,
        currency: t.currency,
        authorized_amount: t.amount,
        captures: t
            .captures
            .into_iter()
            .map(|c| pb::PaymentCapture {
                payment_capture_id: c.payment_capture_id,
                amount: c.amount,
                refunded_amount: c.refunded_amount,
                created_at: c.created_at.unwrap_or_default(),
            })
            .collect(),
        refunds: t
            .refunds
            .into_iter()
            .map(|r| pb::PaymentRefund {
                payment_refund_id: r.payment_refund_id,
                payment_capture_id: r.payment_capture_id.unwrap_or_default(),
                amount: r.amount,
                reference: r.reference.unwrap_or_default(),
                created_at: r.created_at.unwrap_or_default(),
            })
            .collect(),
    }
}

/// `RefundOrderRequest` -> draft.
pub fn refund_order_draft(r: pb::RefundOrderRequest) -> RefundOrderDraft {
    RefundOrderDraft {
        idempotency_key: r.idempotency_key,
        klarna_account: r.klarna_account,
        order_id: r.order_id,
        refunded_amount: r.refunded_amount,
        currency: r.currency,
        description: r.description,
        reference: r.reference,
        order_lines: r.order_lines.into_iter().map(order_line_draft).collect(),
        validate_only: r.validate_only,
    }
}

/// `ReleaseAuthorizationRequest` -> draft.
pub fn release_draft(r: pb::ReleaseAuthorizationRequest) -> ReleaseAuthorizationDraft {
    ReleaseAuthorizationDraft {
        idempotency_key: r.idempotency_key,
        klarna_account: r.klarna_account,
        order_id: r.order_id,
    }
}

/// `ExtendDueDateRequest` -> draft.
pub fn extend_due_date_draft(r: pb::ExtendDueDateRequest) -> ExtendDueDateDraft {
    ExtendDueDateDraft {
        idempotency_key: r.idempotency_key,
        klarna_account: r.klarna_account,
        order_id: r.order_id,
        capture_id: r.capture_id,
        number_of_days: r.number_of_days,
    }
}

fn line_type_input(value: i32) -> LineTypeInput {
    use pb::OrderLineType as P;
    match P::try_from(value) {
        Ok(P::Unspecified) => LineTypeInput::Unspecified,
        Ok(P::Physical) => LineTypeInput::Known(OrderLineType::Physical),
        Ok(P::Discount) => LineTypeInput::Known(OrderLineType::Discount),
        Ok(P::ShippingFee) => LineTypeInput::Known(OrderLineType::ShippingFee),
        Ok(P::SalesTax) => LineTypeInput::Known(OrderLineType::SalesTax),
        Ok(P::StoreCredit) => LineTypeInput::Known(OrderLineType::StoreCredit),
        Ok(P::GiftCard) => LineTypeInput::Known(OrderLineType::GiftCard),
        Ok(P::Digital) => LineTypeInput::Known(OrderLineType::Digital),
        Ok(P::Surcharge) => LineTypeInput::Known(OrderLineType::Surcharge),
        Ok(P::ReturnFee) => LineTypeInput::Known(OrderLineType::ReturnFee),
        Err(_) => LineTypeInput::Unknown(value),
    }
}

fn line_type_out(t: Option<OrderLineType>) -> pb::OrderLineType {
    use pb::OrderLineType as P;
    match t {
        None => P::Unspecified,
        Some(OrderLineType::Physical) => P::Physical,
        Some(OrderLineType::Discount) => P::Discount,
        Some(OrderLineType::ShippingFee) => P::ShippingFee,
        Some(OrderLineType::SalesTax) => P::SalesTax,
        Some(OrderLineType::StoreCredit) => P::StoreCredit,
        Some(OrderLineType::GiftCard) => P::GiftCard,
        Some(OrderLineType::Digital) => P::Digital,
        Some(OrderLineType::Surcharge) => P::Surcharge,
        Some(OrderLineType::ReturnFee) => P::ReturnFee,
    }
}

fn interval_in(value: i32) -> Option<SubscriptionInterval> {
    use pb::SubscriptionInterval as P;
    match P::try_from(value) {
        Ok(P::Day) => Some(SubscriptionInterval::Day),
        Ok(P::Week) => Some(SubscriptionInterval::Week),
        Ok(P::Month) => Some(SubscriptionInterval::Month),
        Ok(P::Year) => Some(SubscriptionInterval::Year),
        Ok(P::Unspecified) | Err(_) => None,
    }
}

fn interval_out(i: SubscriptionInterval) -> pb::SubscriptionInterval {
    use pb::SubscriptionInterval as P;
    match i {
        SubscriptionInterval::Day => P::Day,
        SubscriptionInterval::Week => P::Week,
        SubscriptionInterval::Month => P::Month,
        SubscriptionInterval::Year => P::Year,
    }
}

fn order_line_draft(l: pb::OrderLine) -> OrderLineDraft {
    OrderLineDraft {
        line_type: line_type_input(l.r#type),
        name: l.name,
        quantity: l.quantity,
        quantity_unit: l.quantity_unit,
        unit_price: l.unit_price,
        total_amount: l.total_amount,
        total_discount_amount: l.total_discount_amount,
        tax_rate: l.tax_rate,
        total_tax_amount: l.total_tax_amount,
        reference: l.reference,
        merchant_data: l.merchant_data,
        product_url: l.product_url,
        image_url: l.image_url,
        product_identifiers: l.product_identifiers.map(|p| domain::ProductIdentifiers {
            brand: p.brand,
            category_path: p.category_path,
            global_trade_item_number: p.global_trade_item_number,
            manufacturer_part_number: p.manufacturer_part_number,
            color: p.color,
            size: p.size,
        }),
        subscription: l.subscription.map(|s| SubscriptionDraft {
            name: s.name,
            interval: interval_in(s.interval),
            interval_count: s.interval_count,
        }),
    }
}

fn order_line(l: domain::OrderLine) -> pb::OrderLine {
    pb::OrderLine {
        r#type: line_type_out(l.line_type).into(),
        name: l.name,
        quantity: l.quantity,
        quantity_unit: l.quantity_unit.unwrap_or_default(),
        unit_price: l.unit_price,
        total_amount: l.total_amount,
        total_discount_amount: l.total_discount_amount,
        tax_rate: l.tax_rate,
        total_tax_amount: l.total_tax_amount,
        reference: l.reference.unwrap_or_default(),
        merchant_data: l.merchant_data.unwrap_or_default(),
        product_url: l.product_url.unwrap_or_default(),
        image_url: l.image_url.unwrap_or_default(),
        product_identifiers: l.product_identifiers.map(|p| pb::ProductIdentifiers {
            brand: p.brand,
            category_path: p.category_path,
            global_trade_item_number: p.global_trade_item_number,
            manufacturer_part_number: p.manufacturer_part_number,
            color: p.color,
            size: p.size,
        }),
        subscription: l.subscription.map(|s| pb::Subscription {
            name: s.name,
            interval: interval_out(s.interval).into(),
            interval_count: s.interval_count,
        }),
    }
}

fn timestamp(t: Option<OffsetDateTime>) -> Option<prost_types::Timestamp> {
    t.map(|t| prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        // Always below 10^9, so it fits an i32.
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    })
}

fn status(s: domain::OrderStatus) -> pb::OrderStatus {
    use domain::OrderStatus as D;
    use pb::OrderStatus as P;
    match s {
        D::Authorized => P::Authorized,
        D::PartCaptured => P::PartCaptured,
        D::Captured => P::Captured,
        D::Cancelled => P::Cancelled,
        D::Expired => P::Expired,
        D::Closed => P::Closed,
        D::Unknown => P::Unspecified,
    }
}

/// A Klarna refund -> API message.
fn refund(r: domain::Refund) -> pb::Refund {
    pb::Refund {
        refund_id: r.refund_id,
        refunded_amount: r.refunded_amount,
        refunded_at: timestamp(r.refunded_at),
        description: r.description,
        reference: r.reference,
        order_lines: r.order_lines.into_iter().map(order_line).collect(),
    }
}

/// A Klarna order -> API message.
fn order(o: domain::Order) -> pb::Order {
    pb::Order {
        order_id: o.order_id,
        status: status(o.status).into(),
        order_amount: o.order_amount,
        original_order_amount: o.original_order_amount,
        captured_amount: o.captured_amount,
        refunded_amount: o.refunded_amount,
        remaining_authorized_amount: o.remaining_authorized_amount,
        currency: o.currency,
        purchase_country: o.purchase_country,
        merchant_reference1: o.merchant_reference1,
        merchant_reference2: o.merchant_reference2,
        klarna_reference: o.klarna_reference,
        captures: o
            .captures
            .into_iter()
            .map(|c| pb::Capture {
                capture_id: c.capture_id,
                captured_amount: c.captured_amount,
                refunded_amount: c.refunded_amount,
                captured_at: timestamp(c.captured_at),
                klarna_reference: c.klarna_reference,
            })
            .collect(),
        refunds: o.refunds.into_iter().map(refund).collect(),
        klarna_status: o.klarna_status,
    }
}

/// Offered extensions -> API message.
pub fn extend_due_date_options(
    o: domain::ExtendDueDateOptions,
) -> pb::GetExtendDueDateOptionsResponse {
    pb::GetExtendDueDateOptionsResponse {
        currency: o.currency,
        options: o
            .options
            .into_iter()
            .map(|o| pb::ExtendDueDateOption {
                number_of_days: o.number_of_days,
                amount: o.amount,
            })
            .collect(),
    }
}

/// The answer of a refund.
pub fn refund_response(
    order_id: &str,
    amount: i64,
    outcome: &RefundOutcome,
    validate_only: bool,
) -> pb::RefundOrderResponse {
    pb::RefundOrderResponse {
        operation_id: outcome.operation_id.to_string(),
        refund_id: outcome.refund_id.clone().unwrap_or_default(),
        correlation_id: outcome.correlation_id.clone().unwrap_or_default(),
        order_id: order_id.to_owned(),
        refunded_amount: amount,
        reference: outcome.reference.clone(),
        validate_only,
        replayed: false,
    }
}

/// The answer of GetOrder.
pub fn get_order_response(o: domain::Order) -> pb::GetOrderResponse {
    pb::GetOrderResponse {
        order: Some(order(o)),
    }
}

/// A validated LinkReceipt request.
#[derive(Debug)]
pub struct LinkReceipt {
    /// The receipt reference, trimmed.
    pub receipt: domain::ReceiptReference,
    /// The order.
    pub order_id: domain::OrderId,
    /// The account named; `None` for the only one.
    pub klarna_account: Option<String>,
    /// The store, when given.
    pub store_id: Option<domain::StoreId>,
}

/// A request's `store_id`: empty (or blank) is none.
pub fn store_id(text: &str) -> Result<Option<domain::StoreId>, domain::Violations> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    domain::StoreId::parse(text)
        .map(Some)
        .map_err(|e| domain::Violations::single("store_id", e.to_string()))
}

/// Validates a LinkReceipt request, reporting every bad field.
pub fn link_receipt(r: pb::LinkReceiptRequest) -> Result<LinkReceipt, domain::Violations> {
    let mut v = domain::Violations::new();
    let receipt = v.check(
        "receipt_reference",
        domain::ReceiptReference::parse(&r.receipt_reference),
    );
    let order_id = v.check("order_id", domain::OrderId::parse(&r.order_id));
    let store_id = match store_id(&r.store_id) {
        Ok(store_id) => Some(store_id),
        Err(bad) => {
            for f in bad.as_slice() {
                v.push(f.field.clone(), f.description.clone());
            }
            None
        }
    };
    match (receipt, order_id, store_id) {
        (Some(receipt), Some(order_id), Some(store_id)) if v.is_empty() => Ok(LinkReceipt {
            receipt,
            order_id,
            klarna_account: (!r.klarna_account.is_empty()).then_some(r.klarna_account),
            store_id,
        }),
        _ => Err(v),
    }
}

/// The answer of FindOrder: the order's amounts and the lines still refundable.
pub fn find_order_response(account: String, o: &domain::Order) -> pb::FindOrderResponse {
    pb::FindOrderResponse {
        order_id: o.order_id.clone(),
        klarna_account: account,
        currency: o.currency.clone(),
        captured_amount: o.captured_amount,
        refunded_amount: o.refunded_amount,
        refundable_amount: o.captured_amount.saturating_sub(o.refunded_amount).max(0),
        refundable_lines: domain::refundable_lines(o)
            .into_iter()
            .map(order_line)
            .collect(),
        merchant_reference1: o.merchant_reference1.clone(),
        klarna_reference: o.klarna_reference.clone(),
    }
}

/// The answer of GetRefund.
pub fn get_refund_response(r: domain::Refund) -> pb::GetRefundResponse {
    pb::GetRefundResponse {
        refund: Some(refund(r)),
    }
}

/// The stored answer of a refund.
pub fn refund_encoded(order_id: &str, amount: i64, outcome: RefundOutcome) -> Encoded {
    Encoded {
        payload: refund_response(order_id, amount, &outcome, false).encode_to_vec(),
        refund_id: outcome.refund_id,
        correlation_id: outcome.correlation_id,
    }
}

/// The stored answer of a release.
pub fn release_encoded(order_id: String, outcome: ReceiptOutcome) -> Encoded {
    Encoded {
        payload: pb::ReleaseAuthorizationResponse {
            operation_id: outcome.operation_id.to_string(),
            order_id,
            correlation_id: outcome.correlation_id.clone().unwrap_or_default(),
            replayed: false,
        }
        .encode_to_vec(),
        refund_id: None,
        correlation_id: outcome.correlation_id,
    }
}

/// The stored answer of a due-date extension: the offer taken, with its fee and currency.
pub fn extension_encoded(
    order_id: String,
    capture_id: String,
    outcome: ReceiptOutcome,
    option: ExtendDueDateOption,
    currency: String,
) -> Encoded {
    Encoded {
        payload: pb::ExtendDueDateResponse {
            operation_id: outcome.operation_id.to_string(),
            order_id,
            capture_id,
            number_of_days: option.number_of_days,
            fee_amount: option.amount,
            currency,
            correlation_id: outcome.correlation_id.clone().unwrap_or_default(),
            replayed: false,
        }
        .encode_to_vec(),
        refund_id: None,
        correlation_id: outcome.correlation_id,
    }
}

/// The encoded answer of a call that was resent (after a crash or an unknown outcome), built
/// from what was stored: the call, Klarna's ids, and the answer context the first execution
/// left (an extension's fee; 0 and no currency if none was stored, as by older releases).
pub fn encode_resent(op: &Operation, call: &KlarnaCall, accepted: &Accepted) -> Vec<u8> {
    let fee = op
        .answer_context
        .as_deref()
        .and_then(encoding::decode_extension_fee);
    let operation_id = op.new.operation_id.to_string();
    let correlation_id = accepted.correlation_id.clone().unwrap_or_default();
    match call {
        KlarnaCall::CreateRefund { order_id, refund } => pb::RefundOrderResponse {
            operation_id,
            refund_id: accepted.refund_id.clone().unwrap_or_default(),
            correlation_id,
            order_id: order_id.to_string(),
            refunded_amount: refund.refunded_amount.minor_units(),
            reference: refund.reference.clone(),
            validate_only: false,
            replayed: false,
        }
        .encode_to_vec(),
        KlarnaCall::ReleaseRemainingAuthorization { order_id } => {
            pb::ReleaseAuthorizationResponse {
                operation_id,
                order_id: order_id.to_string(),
                correlation_id,
                replayed: false,
            }
            .encode_to_vec()
        }
        KlarnaCall::ExtendDueDate {
            order_id,
            capture_id,
            number_of_days,
        } => pb::ExtendDueDateResponse {
            operation_id,
            order_id: order_id.to_string(),
            capture_id: capture_id.to_string(),
            number_of_days: *number_of_days,
            fee_amount: fee.as_ref().map_or(0, |f| f.0),
            currency: fee.map(|f| f.1).unwrap_or_default(),
            correlation_id,
            replayed: false,
        }
        .encode_to_vec(),
        KlarnaCall::RefundCapture {
            transaction_id,
            capture_id,
            refund,
        } => pb::RefundCaptureResponse {
            operation_id,
            payment_refund_id: accepted.refund_id.clone().unwrap_or_default(),
            correlation_id,
            payment_transaction_id: transaction_id.to_string(),
            payment_capture_id: capture_id.to_string(),
            amount: refund.amount.minor_units(),
            currency: refund.currency.to_string(),
            reference: refund.reference.clone(),
            validate_only: false,
            replayed: false,
        }
        .encode_to_vec(),
        KlarnaCall::RefundTransaction {
            transaction_id,
            refund,
        } => pb::RefundTransactionResponse {
            operation_id,
            payment_refund_id: accepted.refund_id.clone().unwrap_or_default(),
            correlation_id,
            payment_transaction_id: transaction_id.to_string(),
            amount: refund.amount.minor_units(),
            currency: refund.currency.to_string(),
            reference: refund.reference.clone(),
            validate_only: false,
            replayed: false,
        }
        .encode_to_vec(),
    }
}

fn state_in(value: i32) -> Result<Option<OperationState>, ()> {
    use pb::OperationState as P;
    match P::try_from(value) {
        Ok(P::Unspecified) => Ok(None),
        Ok(P::InFlight) => Ok(Some(OperationState::InFlight)),
        Ok(P::Pending) => Ok(Some(OperationState::Pending)),
        Ok(P::Succeeded) => Ok(Some(OperationState::Succeeded)),
        Ok(P::Failed) => Ok(Some(OperationState::Failed)),
        Ok(P::RequiresReview) => Ok(Some(OperationState::RequiresReview)),
        Err(_) => Err(()),
    }
}

fn state_out(state: Option<OperationState>) -> pb::OperationState {
    use pb::OperationState as P;
    match state {
        None => P::Unspecified,
        Some(OperationState::InFlight) => P::InFlight,
        Some(OperationState::Pending) => P::Pending,
        Some(OperationState::Succeeded) => P::Succeeded,
        Some(OperationState::Failed) => P::Failed,
        Some(OperationState::RequiresReview) => P::RequiresReview,
    }
}

/// A request's timestamp; `Err` (the violation's text) when it is out of range.
pub fn time_in(t: Option<prost_types::Timestamp>) -> Result<Option<OffsetDateTime>, &'static str> {
    t.map(|t| {
        let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
        OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| "is out of range")
    })
    .transpose()
}

/// `ListOperationsRequest` -> filter, page size, page token.
pub fn operation_filter(
    r: pb::ListOperationsRequest,
) -> Result<(OperationFilter, u32, Option<String>), Violations> {
    let mut v = Violations::new();
    let state = state_in(r.state).unwrap_or_else(|()| {
        v.push("state", format!("unknown operation state {}", r.state));
        None
    });
    let created_from = time_in(r.created_after).unwrap_or_else(|_| {
        v.push("created_after", "is not a valid timestamp");
        None
    });
    let created_to = time_in(r.created_before).unwrap_or_else(|_| {
        v.push("created_before", "is not a valid timestamp");
        None
    });
    let page_size = match r.page_size {
        0 => 50,
        n @ 1..=500 => n.unsigned_abs(),
        _ => {
            v.push("page_size", "must be between 1 and 500 (0 means 50)");
            0
        }
    };
    let non_empty = |s: String| if s.is_empty() { None } else { Some(s) };
    let filter = OperationFilter {
        operation_id: None,
        order_id: non_empty(r.order_id),
        payment_transaction_id: non_empty(r.payment_transaction_id),
        caller: non_empty(r.caller),
        idempotency_key: non_empty(r.idempotency_key),
        state,
        created_from,
        created_to,
    };
    v.into_result(|| (filter, page_size, non_empty(r.page_token)))
}

fn event(e: AuditEvent) -> pb::OperationEvent {
    pb::OperationEvent {
        state_before: state_out(e.state_before).into(),
        state_after: state_out(e.state_after).into(),
        refund_id: e.refund_id.unwrap_or_default(),
        correlation_id: e.correlation_id.unwrap_or_default(),
        trace_id: e.trace_id.unwrap_or_default(),
        otel_trace_id: e.otel_trace_id.unwrap_or_default(),
        detail: e.detail,
        at: timestamp(Some(e.at)),
    }
}

/// A page of operations -> API message.
pub fn operation_page(page: OperationPage) -> pb::ListOperationsResponse {
    pb::ListOperationsResponse {
        operations: page
            .operations
            .into_iter()
            .map(|(op, events)| {
                let next_resend_at = timestamp(
                    (op.state == OperationState::Pending).then(|| op.resolution_due_at()),
                );
                pb::OperationRecord {
                    operation_id: op.new.operation_id.to_string(),
                    caller: op.new.caller.to_string(),
                    rpc: op.new.rpc.as_str().to_owned(),
                    idempotency_key: op.new.idempotency_key.to_string(),
                    klarna_account: op.new.klarna_account,
                    order_id: op.new.order_id,
                    capture_id: op.new.capture_id.unwrap_or_default(),
                    amount: op.new.amount.unwrap_or_default(),
                    currency: op.new.currency.unwrap_or_default(),
                    reference: op.new.reference.unwrap_or_default(),
                    state: state_out(Some(op.state)).into(),
                    refund_id: op.refund_id.unwrap_or_default(),
                    correlation_id: op.correlation_id.unwrap_or_default(),
                    created_at: timestamp(Some(op.created_at)),
                    updated_at: timestamp(Some(op.updated_at)),
                    events: events.into_iter().map(event).collect(),
                    payment_transaction_id: if op.new.resource_kind == ResourceKind::Transaction {
                        op.new.resource_id
                    } else {
                        String::new()
                    },
                    next_resend_at,
                    traceparent: op
                        .new
                        .traceparent
                        .map(|t| t.as_str().to_owned())
                        .unwrap_or_default(),
                }
            })
            .collect(),
        next_page_token: page.next_page_token.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_enum_numbers_are_kept_for_validation() {
        assert_eq!(line_type_input(99), LineTypeInput::Unknown(99));
        assert_eq!(line_type_input(0), LineTypeInput::Unspecified);
        assert_eq!(
            line_type_input(pb::OrderLineType::ReturnFee as i32),
            LineTypeInput::Known(OrderLineType::ReturnFee)
        );
    }

    #[test]
    fn every_line_type_round_trips() {
        for t in OrderLineType::ALL {
            let out = line_type_out(Some(t)) as i32;
            assert_eq!(line_type_input(out), LineTypeInput::Known(t));
        }
    }
}
