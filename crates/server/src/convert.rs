//! The one place where API messages become domain values and back. Requests become drafts
//! here and are validated by the domain; nothing past this module sees a proto type.

use refund_gateway_domain as domain;
use refund_gateway_domain::{
    ExtendDueDateDraft, LineTypeInput, OrderLineDraft, OrderLineType, RefundOrderDraft,
    ReleaseAuthorizationDraft, SubscriptionDraft, SubscriptionInterval,
};
use refund_gateway_proto::v1 as pb;
use time::OffsetDateTime;

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
pub fn refund(r: domain::Refund) -> pb::Refund {
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
pub fn order(o: domain::Order) -> pb::Order {
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
