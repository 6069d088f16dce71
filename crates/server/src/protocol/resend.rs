//! Settling an operation whose outcome is unknown: resend the stored call under the same
//! Klarna key while Klarna still remembers the key; past that window, never resend (it could
//! execute twice) but look for the refund on the order, matching on reference, amount and time.
//! A partner refund is settled first by Klarna's `payment.transaction.refunded` webhook when
//! one was recorded for it; past the window without one it needs review, since Klarna says
//! not to confirm operations by reading the transaction.

use std::time::Duration;

use refund_gateway_domain::{Attempt, GatewayError, KlarnaApiKind, KlarnaError, Operation, Refund};
use time::OffsetDateTime;

use super::Protocol;
use super::call::{Accepted, KlarnaCall};
use super::outcome::{Encoded, Outcome, judge_failure, review, succeeded, unknown};
use crate::gateway::KlarnaAccount;

/// How far before the operation's creation a refund on the order may be dated and still be
/// this operation's: Klarna's clock and ours differ by a little.
const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

impl Protocol {
    /// Resends the stored call inside Klarna's idempotency window; past it, reads the order
    /// instead, because a resend could then execute a second time.
    pub(super) async fn resend(&self, op: &Operation, trace_id: Option<String>) -> Outcome {
        let id = op.new.operation_id;
        let call = match super::encoding::decode_call(&op.new.klarna_request) {
            Ok(call) => call,
            Err(e) => return review(id, e.to_string(), trace_id),
        };
        let Some(klarna) = (self.accounts)(&op.new.klarna_account) else {
            return review(
                id,
                format!(
                    "account {:?} is no longer configured",
                    op.new.klarna_account
                ),
                trace_id,
            );
        };
        let age: Duration = (OffsetDateTime::now_utc() - op.created_at)
            .try_into()
            .unwrap_or(Duration::ZERO);
        let inside_window = age < self.settings.klarna_idempotency_window;
        if call.api() == KlarnaApiKind::Payments {
            match self.store.webhook_events(id).await {
                Ok(events) => {
                    if let Some(event) = events.iter().rev().find(|e| e.refund_id.is_some()) {
                        return self.resent_success(
                            op,
                            &call,
                            Accepted {
                                refund_id: event.refund_id.clone(),
                                correlation_id: event.correlation_id.clone(),
                            },
                            &format!(
                                "settled by Klarna's {} webhook (event {})",
                                event.event_type, event.event_id
                            ),
                            trace_id,
                        );
                    }
                }
                // Inside the window a resend settles it anyway; past it, wait for the store.
                Err(e) if !inside_window => {
                    return unknown(
                        id,
                        KlarnaError::NotSent(format!("reading the recorded webhooks failed: {e}")),
                        format!("reading the recorded webhooks failed: {e}"),
                    );
                }
                Err(_) => {}
            }
        }
        if inside_window {
            let (result, attempts) =
                refund_gateway_klarna::recording_attempts(call.send(&klarna, &id)).await;
            return match result {
                Ok(accepted) => self.resent_success(
                    op,
                    &call,
                    accepted,
                    "resent under the same Klarna key; Klarna accepted",
                    trace_id,
                ),
                Err(error) => {
                    // The earlier send may have reached Klarna: that is why this is a resend.
                    let history: Vec<Attempt> =
                        std::iter::once(Attempt::NoAnswer).chain(attempts).collect();
                    judge_failure(
                        id,
                        call.api(),
                        &history,
                        GatewayError::Klarna {
                            error,
                            resource: call.resource(),
                        },
                        trace_id,
                        "resent under the same Klarna key; ",
                    )
                }
            };
        }
        match (&call, &klarna) {
            (KlarnaCall::CreateRefund { .. }, KlarnaAccount::OrderManagement(_)) => {
                match self.refunds_on_order(op, &call, &klarna).await {
                    Some(Ok(found)) => match found.as_slice() {
                        [one] => self.resent_success(
                            op,
                            &call,
                            Accepted {
                                refund_id: Some(one.clone()),
                                correlation_id: None,
                            },
                            "past Klarna's idempotency window: found the refund on the order",
                            trace_id,
                        ),
                        [] => review(
                            id,
                            "past Klarna's idempotency window and no matching refund on the order: not resent, to be checked".to_owned(),
                            trace_id,
                        ),
                        several => review(
                            id,
                            format!(
                                "past Klarna's idempotency window and {} refunds match: to be checked",
                                several.len()
                            ),
                            trace_id,
                        ),
                    },
                    Some(Err(e)) => unknown(id, e.clone(), format!("reading the order failed: {e}")),
                    None => review(
                        id,
                        "past Klarna's idempotency window; this operation cannot be matched on the order"
                            .to_owned(),
                        trace_id,
                    ),
                }
            }
            (KlarnaCall::RefundCapture { .. } | KlarnaCall::RefundTransaction { .. }, _) => review(
                id,
                "past Klarna's idempotency window and no payment.transaction.refunded webhook \
                 settled it: not resent, and Klarna says not to confirm it by reading the \
                 transaction; to be checked"
                    .to_owned(),
                trace_id,
            ),
            _ => review(
                id,
                "past Klarna's idempotency window; this operation cannot be matched on the order"
                    .to_owned(),
                trace_id,
            ),
        }
    }

    /// Klarna refused an attempt after an earlier one that may have taken effect
    /// ([`refusal_needs_checking`](refund_gateway_domain::refusal_needs_checking)): for an order
    /// refund, the order is read first, and a refund on it that is this operation's (same
    /// reference and amount, made since it began) means the earlier attempt executed: the
    /// operation SUCCEEDED with that refund, whatever the refusal said. No such refund: the
    /// refusal stands (`refusal`). Several: review. For a release, an order whose remaining
    /// authorization is now 0 (it was not, or the state rule would have refused before
    /// sending) is released: SUCCEEDED. The order unreadable: unknown, for the reconciler to
    /// settle. Other operations have nothing to check it on: the refusal stands.
    pub(super) async fn check_refusal(
        &self,
        op: &Operation,
        refusal: Outcome,
        trace_id: Option<String>,
    ) -> Outcome {
        let id = op.new.operation_id;
        let Ok(call) = super::encoding::decode_call(&op.new.klarna_request) else {
            return refusal;
        };
        let Some(klarna) = (self.accounts)(&op.new.klarna_account) else {
            return refusal;
        };
        if let (
            KlarnaCall::ReleaseRemainingAuthorization { order_id },
            KlarnaAccount::OrderManagement(client),
        ) = (&call, &klarna)
        {
            return match client.get_order(order_id).await {
                Ok(order) if order.remaining_authorized_amount == 0 => {
                    const RELEASED: &str = "Klarna refused a resend, but the order's remaining \
                                            authorization is released";
                    tracing::warn!(operation_id = %id, "{RELEASED}");
                    self.resent_success(op, &call, Accepted::default(), RELEASED, trace_id)
                }
                Ok(_) => refusal,
                Err(e) => unchecked(id, e),
            };
        }
        match self.refunds_on_order(op, &call, &klarna).await {
            None => refusal,
            Some(Ok(found)) => match found.as_slice() {
                [] => refusal,
                [one] => {
                    tracing::warn!(
                        operation_id = %id,
                        refund_id = %one,
                        "Klarna refused a resend, but the refund of an earlier attempt is on the order"
                    );
                    self.resent_success(
                        op,
                        &call,
                        Accepted {
                            refund_id: Some(one.clone()),
                            correlation_id: None,
                        },
                        "Klarna refused a resend, but the refund of an earlier attempt is on the order",
                        trace_id,
                    )
                }
                several => review(
                    id,
                    format!(
                        "Klarna refused a resend after an attempt that may have executed, and {} refunds on the order match: to be checked",
                        several.len()
                    ),
                    trace_id,
                ),
            },
            Some(Err(e)) => unchecked(id, e),
        }
    }

    /// The ids of the refunds on the order that can be this operation's (see
    /// [`matching_refunds`]) and are not another operation's, for an order refund on an Order
    /// Management account; `None` for any other operation.
    async fn refunds_on_order(
        &self,
        op: &Operation,
        call: &KlarnaCall,
        klarna: &KlarnaAccount,
    ) -> Option<Result<Vec<String>, KlarnaError>> {
        let (KlarnaCall::CreateRefund { order_id, refund }, KlarnaAccount::OrderManagement(klarna)) =
            (call, klarna)
        else {
            return None;
        };
        let order = match klarna.get_order(order_id).await {
            Ok(order) => order,
            Err(e) => return Some(Err(e)),
        };
        // A refund another operation of the gateway made is that operation's, however alike
        // (a caller may refund the same amount under the same reference twice).
        let others = match self
            .store
            .resource_operations(
                &op.new.klarna_account,
                op.new.resource_kind,
                &op.new.resource_id,
            )
            .await
        {
            Ok(ops) => ops,
            Err(e) => {
                return Some(Err(KlarnaError::NotSent(format!(
                    "reading the order's operations failed: {e}"
                ))));
            }
        };
        let taken = |id: &str| {
            others.iter().any(|other| {
                other.new.operation_id != op.new.operation_id
                    && other
                        .refund_id
                        .as_deref()
                        .is_some_and(|r| r.eq_ignore_ascii_case(id))
            })
        };
        Some(Ok(matching_refunds(
            &order.refunds,
            &refund.reference,
            refund.refunded_amount.minor_units(),
            op.created_at,
        )
        .into_iter()
        .map(|r| r.refund_id.clone())
        .filter(|id| !taken(id))
        .collect()))
    }

    /// A success established without the original work: the answer is rebuilt from the stored
    /// call and what Klarna said.
    fn resent_success(
        &self,
        op: &Operation,
        call: &KlarnaCall,
        accepted: Accepted,
        detail: &str,
        trace_id: Option<String>,
    ) -> Outcome {
        let payload = (self.encode_resent)(op, call, &accepted);
        succeeded(
            Encoded {
                payload,
                refund_id: accepted.refund_id,
                correlation_id: accepted.correlation_id,
            },
            detail,
            trace_id,
        )
    }
}

/// A refusal that could not be checked because the order could not be read: unknown, for
/// the reconciler's resend to check again.
fn unchecked(id: refund_gateway_domain::OperationId, e: KlarnaError) -> Outcome {
    let detail = format!(
        "Klarna refused a resend after an attempt that may have executed, and reading the order to check failed: {e}"
    );
    unknown(id, e, detail)
}

/// The refunds of an order that can be this operation's: same reference and amount, made
/// after the operation began (less the clock skew); a refund without a date may be.
fn matching_refunds<'a>(
    refunds: &'a [Refund],
    reference: &str,
    amount: i64,
    created_at: OffsetDateTime,
) -> Vec<&'a Refund> {
    let since = created_at - CLOCK_SKEW;
    refunds
        .iter()
        .filter(|r| {
            r.reference == reference
                && r.refunded_amount == amount
                && r.refunded_at.is_none_or(|t| t >= since)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refund(id: &str, reference: &str, amount: i64, at: Option<OffsetDateTime>) -> Refund {
        Refund {
            refund_id: id.into(),
            reference: reference.into(),
            refunded_amount: amount,
            refunded_at: at,
            description: String::new(),
            order_lines: Vec::new(),
        }
    }

    #[test]
    fn matching_takes_reference_amount_and_the_windows_edges() {
        let created = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let at_edge = created - CLOCK_SKEW;
        let before_edge = at_edge - time::Duration::microseconds(1);
        let refunds = [
            refund("a", "R1", 100, Some(at_edge)),
            refund("b", "R1", 100, Some(before_edge)),
            refund("c", "R1", 200, Some(created)),
            refund("d", "R2", 100, Some(created)),
            refund("e", "R1", 100, None),
        ];
        let ids: Vec<_> = matching_refunds(&refunds, "R1", 100, created)
            .iter()
            .map(|r| r.refund_id.as_str())
            .collect();
        // At the edge counts, a microsecond before does not; a refund without a date may be it.
        assert_eq!(ids, ["a", "e"]);
        assert!(matching_refunds(&refunds, "R3", 100, created).is_empty());
    }
}
