//! The simulator's data (orders, payment transactions, idempotency memory) and Klarna's
//! Order Management business rules for each operation (the partner API's rules are in
//! `payments.rs`).
//!
//! Everything here is synchronous and runs under the one state mutex, which is what makes a
//! keyed request execute at most once: the idempotency look-up, the operation and the storing
//! of its response happen in a single critical section.

use std::collections::HashMap;

use http::header::LOCATION;
use http::{HeaderName, StatusCode};
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::idempotency::IdempotencyStore;
use crate::model::{Capture, DueDateExtension, Lifecycle, Order, OrderLineType, Refund};
use crate::payments::Payments;
use crate::response::{ApiError, SimResponse};
use crate::schema::{CaptureRequest, RefundRequest};

/// Purchase countries where a refund may keep a return fee.
pub(crate) const RETURN_FEE_COUNTRIES: [&str; 15] = [
    "AT", "DE", "DK", "FI", "FR", "NL", "NO", "SE", "IT", "ES", "IE", "PT", "CZ", "AU", "GR",
];

/// Due-date extensions offered for pay-later captures: `(number_of_days, fee)`, the fee in
/// minor units of the order's currency.
pub(crate) fn extension_options(currency: &str) -> [(i64, i64); 3] {
    match currency {
        "SEK" | "NOK" | "DKK" => [(7, 2900), (14, 4900), (30, 6900)],
        "CZK" => [(7, 7500), (14, 12500), (30, 17500)],
        "PLN" => [(7, 1300), (14, 2100), (30, 2900)],
        _ => [(7, 295), (14, 495), (30, 695)],
    }
}

const REFUND_ID: HeaderName = HeaderName::from_static("refund-id");
const CAPTURE_ID: HeaderName = HeaderName::from_static("capture-id");

/// A parsed Klarna call, ready to run against the store.
#[derive(Debug)]
pub(crate) enum Command {
    GetOrder {
        order_id: Uuid,
    },
    GetCapture {
        order_id: Uuid,
        capture_id: String,
    },
    CreateCapture {
        order_id: Uuid,
        request: CaptureRequest,
    },
    Refund {
        order_id: Uuid,
        request: RefundRequest,
    },
    GetRefund {
        order_id: Uuid,
        refund_id: String,
    },
    ReleaseRemainingAuthorization {
        order_id: Uuid,
    },
    ExtendDueDateOptions {
        order_id: Uuid,
        capture_id: String,
    },
    ExtendDueDate {
        order_id: Uuid,
        capture_id: String,
        number_of_days: i64,
    },
}

/// Orders by id, payment transactions, and the idempotency memory of both APIs.
#[derive(Debug, Default)]
pub(crate) struct Store {
    pub(crate) orders: HashMap<Uuid, Order>,
    pub(crate) payments: Payments,
    pub(crate) idempotency: IdempotencyStore,
}

/// Where the created resource lives: absolute when the request named a host.
fn location(host: Option<&str>, path: &str) -> String {
    match host {
        Some(host) => format!("http://{host}{path}"),
        None => path.to_owned(),
    }
}

#[derive(Serialize)]
struct ExtendOptionsBody {
    currency: String,
    options: Vec<ExtendOption>,
}

#[derive(Serialize)]
struct ExtendOption {
    number_of_days: i64,
    amount: i64,
}

impl Store {
    /// Runs a parsed command (or answers its parse error) and returns the response.
    pub(crate) fn execute(
        &mut self,
        command: Result<Command, ApiError>,
        now: OffsetDateTime,
        host: Option<&str>,
    ) -> SimResponse {
        let result = command.and_then(|command| self.run(command, now, host));
        result.unwrap_or_else(SimResponse::from)
    }

    fn run(
        &mut self,
        command: Command,
        now: OffsetDateTime,
        host: Option<&str>,
    ) -> Result<SimResponse, ApiError> {
        match command {
            Command::GetOrder { order_id } => {
                let order = self.order(&order_id)?;
                Ok(SimResponse::json(StatusCode::OK, &order.view()))
            }
            Command::GetCapture {
                order_id,
                capture_id,
            } => {
                let order = self.order(&order_id)?;
                let capture = order
                    .capture(&capture_id)
                    .ok_or_else(|| ApiError::no_such_capture(&capture_id))?;
                Ok(SimResponse::json(StatusCode::OK, capture))
            }
            Command::CreateCapture { order_id, request } => {
                self.create_capture(order_id, request, now, host)
            }
            Command::Refund { order_id, request } => self.refund(order_id, request, now, host),
            Command::GetRefund {
                order_id,
                refund_id,
            } => {
                let order = self.order(&order_id)?;
                let refund = Uuid::try_parse(&refund_id)
                    .ok()
                    .and_then(|id| order.refund(&id))
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::NOT_FOUND,
                            "NOT_FOUND",
                            format!("Refund {refund_id} cannot be found for order {order_id}"),
                        )
                    })?;
                Ok(SimResponse::json(StatusCode::OK, refund))
            }
            Command::ReleaseRemainingAuthorization { order_id } => self.release(order_id),
            Command::ExtendDueDateOptions {
                order_id,
                capture_id,
            } => {
                let order = self.order(&order_id)?;
                check_extendable(order, &capture_id)?;
                let body = ExtendOptionsBody {
                    // Klarna's documented sample answers with a lower-case currency here.
                    currency: order.purchase_currency.to_ascii_lowercase(),
                    options: extension_options(&order.purchase_currency)
                        .into_iter()
                        .map(|(number_of_days, amount)| ExtendOption {
                            number_of_days,
                            amount,
                        })
                        .collect(),
                };
                Ok(SimResponse::json(StatusCode::OK, &body))
            }
            Command::ExtendDueDate {
                order_id,
                capture_id,
                number_of_days,
            } => self.extend_due_date(order_id, &capture_id, number_of_days, now),
        }
    }

    fn order(&self, order_id: &Uuid) -> Result<&Order, ApiError> {
        self.orders
            .get(order_id)
            .ok_or_else(|| ApiError::no_such_order(order_id))
    }

    fn order_mut(&mut self, order_id: &Uuid) -> Result<&mut Order, ApiError> {
        self.orders
            .get_mut(order_id)
            .ok_or_else(|| ApiError::no_such_order(order_id))
    }

    fn refund(
        &mut self,
        order_id: Uuid,
        request: RefundRequest,
        now: OffsetDateTime,
        host: Option<&str>,
    ) -> Result<SimResponse, ApiError> {
        let order = self.order_mut(&order_id)?;
        match order.lifecycle {
            Lifecycle::Open => {}
            Lifecycle::Cancelled => {
                return Err(ApiError::refund_not_allowed(
                    "Order is cancelled. Refund not possible.",
                ));
            }
            Lifecycle::Expired => {
                return Err(ApiError::refund_not_allowed(
                    "Order has expired. Refund not possible.",
                ));
            }
            Lifecycle::Closed => {
                return Err(ApiError::refund_not_allowed(
                    "Order is closed. Refund not possible.",
                ));
            }
        }
        if order.captures.is_empty() || order.captured_amount == 0 {
            return Err(ApiError::refund_not_allowed(
                "Order has no captures. Refund not possible",
            ));
        }
        check_return_fee(order, &request)?;
        if request.refunded_amount > order.captured_amount - order.refunded_amount {
            return Err(ApiError::refund_not_allowed(
                "Over refund is not allowed. Refund not possible.",
            ));
        }

        // Allocate to captures in capture order, each up to what is left of it.
        let mut left = request.refunded_amount;
        for capture in &mut order.captures {
            if left == 0 {
                break;
            }
            let share = left.min(capture.refundable());
            capture.refunded_amount += share;
            left -= share;
        }
        order.refunded_amount += request.refunded_amount;

        let refund_id = Uuid::new_v4();
        order.refund_index.insert(refund_id, order.refunds.len());
        order.refunds.push(Refund {
            refund_id,
            refunded_amount: request.refunded_amount,
            refunded_at: now,
            description: request.description,
            reference: request.reference,
            order_lines: request.order_lines,
        });

        let id = refund_id.to_string();
        let path = format!("/ordermanagement/v1/orders/{order_id}/refunds/{id}");
        Ok(SimResponse::empty(StatusCode::CREATED)
            .with_header(REFUND_ID, &id)
            .with_header(LOCATION, &location(host, &path)))
    }

    fn create_capture(
        &mut self,
        order_id: Uuid,
        request: CaptureRequest,
        now: OffsetDateTime,
        host: Option<&str>,
    ) -> Result<SimResponse, ApiError> {
        let order = self.order_mut(&order_id)?;
        if order.lifecycle != Lifecycle::Open {
            return Err(ApiError::capture_not_allowed(format!(
                "Order is {}. Capture not possible.",
                order.status().as_str().to_ascii_lowercase()
            )));
        }
        if request.captured_amount == 0 {
            return Err(ApiError::capture_not_allowed(
                "Captured amount must be greater than 0. Capture not possible.",
            ));
        }
        if request.captured_amount > order.remaining_authorized_amount() {
            return Err(ApiError::capture_not_allowed(
                "Captured amount is higher than the remaining authorized amount. Capture not possible.",
            ));
        }
        let capture_id = Uuid::new_v4().to_string();
        let klarna_reference = format!("{}-{}", order.klarna_reference, order.captures.len() + 1);
        order.captured_amount += request.captured_amount;
        order.captures.push(Capture {
            capture_id: capture_id.clone(),
            klarna_reference,
            captured_amount: request.captured_amount,
            captured_at: now,
            description: request.description.unwrap_or_default(),
            reference: request.reference,
            order_lines: request.order_lines,
            refunded_amount: 0,
            due_date_extension: None,
        });
        let path = format!("/ordermanagement/v1/orders/{order_id}/captures/{capture_id}");
        Ok(SimResponse::empty(StatusCode::CREATED)
            .with_header(CAPTURE_ID, &capture_id)
            .with_header(LOCATION, &location(host, &path)))
    }

    fn release(&mut self, order_id: Uuid) -> Result<SimResponse, ApiError> {
        let order = self.order_mut(&order_id)?;
        let refused = |reason: &str| {
            ApiError::not_allowed(format!(
                "{reason}. Remaining authorization cannot be released."
            ))
        };
        match order.lifecycle {
            Lifecycle::Open => {}
            Lifecycle::Cancelled => return Err(refused("Order is cancelled")),
            Lifecycle::Expired => return Err(refused("Order has expired")),
            Lifecycle::Closed => return Err(refused("Order is closed")),
        }
        if order.captured_amount == 0 {
            return Err(refused("Order has no captures"));
        }
        // Once released the order counts as fully captured, as Klarna then reports CAPTURED.
        if order.released || order.captured_amount >= order.order_amount {
            return Err(refused("Order is fully captured"));
        }
        order.released = true;
        Ok(SimResponse::empty(StatusCode::NO_CONTENT))
    }

    fn extend_due_date(
        &mut self,
        order_id: Uuid,
        capture_id: &str,
        number_of_days: i64,
        now: OffsetDateTime,
    ) -> Result<SimResponse, ApiError> {
        let order = self.order_mut(&order_id)?;
        check_extendable(order, capture_id)?;
        let options = extension_options(&order.purchase_currency);
        let Some(&(_, fee)) = options.iter().find(|(days, _)| *days == number_of_days) else {
            let offered: Vec<String> = options.iter().map(|(d, _)| d.to_string()).collect();
            return Err(ApiError::not_allowed(format!(
                "Extension of due date by {number_of_days} days is not possible. Offered: {}.",
                offered.join(", ")
            )));
        };
        let capture = order
            .capture_mut(capture_id)
            .ok_or_else(|| ApiError::no_such_capture(capture_id))?;
        capture.due_date_extension = Some(DueDateExtension {
            number_of_days,
            fee,
            extended_at: now,
        });
        Ok(SimResponse::empty(StatusCode::NO_CONTENT))
    }
}

/// Klarna offers due-date extensions once per capture, for pay-later payment methods of open
/// orders only.
fn check_extendable(order: &Order, capture_id: &str) -> Result<(), ApiError> {
    let capture = order
        .capture(capture_id)
        .ok_or_else(|| ApiError::no_such_capture(capture_id))?;
    if order.lifecycle != Lifecycle::Open {
        return Err(ApiError::not_allowed(format!(
            "Extension of due date is not possible for an order that is {}.",
            order.status().as_str().to_ascii_lowercase()
        )));
    }
    if !order.initial_payment_method.is_pay_later() {
        return Err(ApiError::not_allowed(format!(
            "Extension of due date is not possible for payment method {}.",
            order.initial_payment_method.kind
        )));
    }
    if capture.due_date_extension.is_some() {
        return Err(ApiError::not_allowed(format!(
            "Due date of capture {capture_id} has already been extended."
        )));
    }
    Ok(())
}

/// The return-fee rules: negative fee lines, an eligible purchase country, an order fully
/// captured in one capture, and lines that sum exactly to `refunded_amount`.
fn check_return_fee(order: &Order, request: &RefundRequest) -> Result<(), ApiError> {
    let mut fees = request
        .order_lines
        .iter()
        .filter(|line| line.kind == Some(OrderLineType::ReturnFee))
        .peekable();
    if fees.peek().is_none() {
        return Ok(());
    }
    if fees.any(|fee| fee.unit_price >= 0 || fee.total_amount >= 0) {
        return Err(ApiError::refund_not_allowed(
            "Return fee must have a negative unit_price and total_amount. Refund not possible.",
        ));
    }
    if !RETURN_FEE_COUNTRIES.contains(&order.purchase_country.as_str()) {
        return Err(ApiError::refund_not_allowed(format!(
            "Return fee is not available for purchase country {}. Refund not possible.",
            order.purchase_country
        )));
    }
    if order.captures.len() != 1 || order.captured_amount != order.order_amount {
        return Err(ApiError::refund_not_allowed(
            "Return fee is only allowed when the order is fully captured in a single capture. Refund not possible.",
        ));
    }
    let sum = request
        .order_lines
        .iter()
        .try_fold(0i64, |sum, line| sum.checked_add(line.total_amount));
    if sum != Some(request.refunded_amount) {
        return Err(ApiError::refund_not_allowed(
            "Order lines must sum to the refunded amount when a return fee is included. Refund not possible.",
        ));
    }
    Ok(())
}
