//! Reconciliation: the refunds Klarna lists on one order or payment transaction against the
//! gateway's operations on it. The only place that decides what counts as a mismatch.

use crate::operation::Rpc;
use crate::store::{Operation, OperationState};

/// A refund as Klarna lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedRefund {
    /// Klarna's refund id (a UUID for an order, a KRN for a payment transaction).
    pub refund_id: String,
    /// Its amount, minor units.
    pub amount: i64,
}

/// How the two sides disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MismatchKind {
    /// Klarna lists a refund no operation of the gateway made (made elsewhere, or by an
    /// operation the gateway lost track of).
    UnknownToGateway,
    /// An operation SUCCEEDED with a refund id Klarna does not list.
    MissingAtKlarna,
    /// The refund is on both sides with different amounts.
    AmountDiffers,
}

/// One disagreement on one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// What kind.
    pub kind: MismatchKind,
    /// Klarna's refund id concerned.
    pub refund_id: String,
    /// The gateway's operation concerned, if any.
    pub operation_id: Option<String>,
    /// The operation's amount, if any.
    pub gateway_amount: Option<i64>,
    /// Klarna's amount, if Klarna lists the refund.
    pub klarna_amount: Option<i64>,
}

/// Whether `op` moves money back to the customer (a refund of any kind).
fn is_refund(op: &Operation) -> bool {
    matches!(
        op.new.rpc,
        Rpc::RefundOrder | Rpc::RefundCapture | Rpc::RefundTransaction
    )
}

/// The mismatches between the refunds Klarna lists on one resource and every refund
/// operation of the gateway on it (whatever its state: a PENDING operation whose refund Klarna
/// lists is known, not a stranger). Refund ids compare case-insensitively (Klarna's UUIDs are
/// written in either case).
pub fn compare_refunds(listed: &[ListedRefund], operations: &[Operation]) -> Vec<Mismatch> {
    let refunds: Vec<&Operation> = operations.iter().filter(|op| is_refund(op)).collect();
    let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let mut out = Vec::new();
    for refund in listed {
        let made_by = refunds.iter().find(|op| {
            op.refund_id
                .as_deref()
                .is_some_and(|id| same(id, &refund.refund_id))
        });
        match made_by {
            None => out.push(Mismatch {
                kind: MismatchKind::UnknownToGateway,
                refund_id: refund.refund_id.clone(),
                operation_id: None,
                gateway_amount: None,
                klarna_amount: Some(refund.amount),
            }),
            Some(op) if op.new.amount != Some(refund.amount) => out.push(Mismatch {
                kind: MismatchKind::AmountDiffers,
                refund_id: refund.refund_id.clone(),
                operation_id: Some(op.new.operation_id.to_string()),
                gateway_amount: op.new.amount,
                klarna_amount: Some(refund.amount),
            }),
            Some(_) => {}
        }
    }
    for op in refunds
        .iter()
        .filter(|op| op.state == OperationState::Succeeded)
    {
        let Some(id) = op.refund_id.as_deref() else {
            continue;
        };
        if !listed.iter().any(|r| same(&r.refund_id, id)) {
            out.push(Mismatch {
                kind: MismatchKind::MissingAtKlarna,
                refund_id: id.to_owned(),
                operation_id: Some(op.new.operation_id.to_string()),
                gateway_amount: op.new.amount,
                klarna_amount: None,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::IdempotencyKey;
    use crate::operation::{Caller, OperationId, ResourceKind};
    use crate::store::NewOperation;

    fn op(
        key: &str,
        rpc: Rpc,
        state: OperationState,
        refund: Option<&str>,
        amount: i64,
    ) -> Operation {
        let caller = Caller::named("pos");
        let key = IdempotencyKey::parse(key).unwrap_or_else(|e| panic!("{e}"));
        Operation {
            new: NewOperation {
                operation_id: OperationId::derive(&caller, rpc, &key),
                caller,
                rpc,
                idempotency_key: key,
                fingerprint: "f".into(),
                klarna_account: "eu".into(),
                order_id: "o".into(),
                resource_kind: ResourceKind::Order,
                resource_id: "o".into(),
                capture_id: None,
                amount: Some(amount),
                currency: Some("SEK".into()),
                reference: None,
                klarna_request: "{}".into(),
                trace_id: None,
                traceparent: None,
            },
            state,
            lease_expires_at: None,
            lease_holder: None,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            updated_at: time::OffsetDateTime::UNIX_EPOCH,
            refund_id: refund.map(str::to_owned),
            correlation_id: None,
            response: None,
            answer_context: None,
        }
    }

    fn listed(id: &str, amount: i64) -> ListedRefund {
        ListedRefund {
            refund_id: id.into(),
            amount,
        }
    }

    #[test]
    fn each_side_is_held_to_the_other() {
        use OperationState::{Pending, Succeeded};
        let ops = [
            op("a", Rpc::RefundOrder, Succeeded, Some("R-1"), 100),
            op("b", Rpc::RefundOrder, Succeeded, Some("r-2"), 200),
            op("c", Rpc::RefundOrder, Succeeded, Some("R-3"), 300),
            // Pending with Klarna's id known: not a stranger, not missing.
            op("d", Rpc::RefundOrder, Pending, Some("R-4"), 400),
            // A release moves no refund.
            op("e", Rpc::ReleaseAuthorization, Succeeded, Some("R-9"), 900),
        ];
        let klarna = [
            listed("R-1", 100),
            listed("R-2", 250),
            listed("R-4", 400),
            listed("R-5", 500),
        ];
        let found = compare_refunds(&klarna, &ops);
        let summary: Vec<(MismatchKind, &str)> = found
            .iter()
            .map(|m| (m.kind, m.refund_id.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (MismatchKind::AmountDiffers, "R-2"),
                (MismatchKind::UnknownToGateway, "R-5"),
                (MismatchKind::MissingAtKlarna, "R-3"),
            ]
        );
        assert_eq!(
            (found[0].gateway_amount, found[0].klarna_amount),
            (Some(200), Some(250))
        );
        assert!(compare_refunds(&[listed("R-1", 100)], &ops[..1]).is_empty());
    }
}
