//! The tonic service: converts each request to a domain command (through [`crate::convert`]),
//! runs the use case, and maps the result back (errors through [`crate::status`]).

use refund_gateway_domain::{
    Caller, ExtendDueDate, ExtendDueDateOptionsQuery, GatewayError, OrderQuery, RefundOrder,
    RefundQuery, ReleaseAuthorization,
};
use refund_gateway_proto::v1 as pb;
use refund_gateway_proto::v1::refund_gateway_service_server::RefundGatewayService;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::gateway::Gateway;
use crate::status::to_status;

/// `refundgateway.v1.RefundGatewayService` over a [`Gateway`].
#[derive(Debug, Clone)]
pub struct RefundGatewayApi {
    gateway: Gateway,
}

impl RefundGatewayApi {
    /// The service over `gateway`.
    pub fn new(gateway: Gateway) -> Self {
        Self { gateway }
    }
}

/// The calling service. Authentication does not exist yet, so every caller is anonymous.
fn caller<T>(_request: &Request<T>) -> Caller {
    Caller::anonymous()
}

/// Logs a failed RPC with what an operator needs to follow it up (Klarna's correlation id and
/// error code), then maps it. Invalid input is the caller's business and logs at debug only.
fn fail(rpc: &'static str, error: GatewayError) -> Status {
    match &error {
        GatewayError::InvalidArgument(v) => {
            tracing::debug!(rpc, violations = %v, "request refused")
        }
        GatewayError::Precondition(p) => {
            tracing::info!(rpc, reason = p.reason.as_str(), subject = %p.subject, "request refused by a state rule");
        }
        GatewayError::OutcomePending {
            operation_id,
            error,
        } => tracing::warn!(
            rpc,
            operation_id = %operation_id,
            correlation_id = error.correlation_id().unwrap_or(""),
            error = %error,
            "outcome of a Klarna call unknown"
        ),
        GatewayError::Klarna { error, resource } => tracing::warn!(
            rpc,
            resource = %resource,
            klarna_status = error.status().unwrap_or(0),
            correlation_id = error.correlation_id().unwrap_or(""),
            error = %error,
            "Klarna call failed"
        ),
    }
    to_status(&error)
}

#[tonic::async_trait]
impl RefundGatewayService for RefundGatewayApi {
    async fn refund_order(
        &self,
        request: Request<pb::RefundOrderRequest>,
    ) -> Result<Response<pb::RefundOrderResponse>, Status> {
        const RPC: &str = "RefundOrder";
        let caller = caller(&request);
        let cmd = RefundOrder::validate(convert::refund_order_draft(request.into_inner()))
            .map_err(|v| fail(RPC, v.into()))?;
        let order_id = cmd.order_id.to_string();
        let amount = cmd.refunded_amount.minor_units();
        let validate_only = cmd.validate_only;
        let outcome = self
            .gateway
            .refund_order(&caller, cmd)
            .await
            .map_err(|e| fail(RPC, e))?;
        if let Some(refund_id) = &outcome.refund_id {
            tracing::info!(
                operation_id = %outcome.operation_id,
                order_id = %order_id,
                refund_id = %refund_id,
                refunded_amount = amount,
                correlation_id = outcome.correlation_id.as_deref().unwrap_or(""),
                "refunded"
            );
        }
        Ok(Response::new(pb::RefundOrderResponse {
            operation_id: outcome.operation_id.to_string(),
            refund_id: outcome.refund_id.unwrap_or_default(),
            correlation_id: outcome.correlation_id.unwrap_or_default(),
            order_id,
            refunded_amount: amount,
            reference: outcome.reference,
            validate_only,
        }))
    }

    async fn release_authorization(
        &self,
        request: Request<pb::ReleaseAuthorizationRequest>,
    ) -> Result<Response<pb::ReleaseAuthorizationResponse>, Status> {
        const RPC: &str = "ReleaseAuthorization";
        let caller = caller(&request);
        let cmd = ReleaseAuthorization::validate(convert::release_draft(request.into_inner()))
            .map_err(|v| fail(RPC, v.into()))?;
        let order_id = cmd.order_id.to_string();
        let outcome = self
            .gateway
            .release_authorization(&caller, cmd)
            .await
            .map_err(|e| fail(RPC, e))?;
        tracing::info!(operation_id = %outcome.operation_id, order_id = %order_id, "authorization released");
        Ok(Response::new(pb::ReleaseAuthorizationResponse {
            operation_id: outcome.operation_id.to_string(),
            order_id,
            correlation_id: outcome.correlation_id.unwrap_or_default(),
        }))
    }

    async fn get_extend_due_date_options(
        &self,
        request: Request<pb::GetExtendDueDateOptionsRequest>,
    ) -> Result<Response<pb::GetExtendDueDateOptionsResponse>, Status> {
        const RPC: &str = "GetExtendDueDateOptions";
        let r = request.into_inner();
        let q = ExtendDueDateOptionsQuery::validate(r.klarna_account, &r.order_id, &r.capture_id)
            .map_err(|v| fail(RPC, v.into()))?;
        let options = self
            .gateway
            .extend_due_date_options(q)
            .await
            .map_err(|e| fail(RPC, e))?;
        Ok(Response::new(convert::extend_due_date_options(options)))
    }

    async fn extend_due_date(
        &self,
        request: Request<pb::ExtendDueDateRequest>,
    ) -> Result<Response<pb::ExtendDueDateResponse>, Status> {
        const RPC: &str = "ExtendDueDate";
        let caller = caller(&request);
        let cmd = ExtendDueDate::validate(convert::extend_due_date_draft(request.into_inner()))
            .map_err(|v| fail(RPC, v.into()))?;
        let (order_id, capture_id) = (cmd.order_id.to_string(), cmd.capture_id.to_string());
        let (outcome, option, currency) = self
            .gateway
            .extend_due_date(&caller, cmd)
            .await
            .map_err(|e| fail(RPC, e))?;
        tracing::info!(
            operation_id = %outcome.operation_id,
            order_id = %order_id,
            capture_id = %capture_id,
            number_of_days = option.number_of_days,
            "due date extended"
        );
        Ok(Response::new(pb::ExtendDueDateResponse {
            operation_id: outcome.operation_id.to_string(),
            order_id,
            capture_id,
            number_of_days: option.number_of_days,
            fee_amount: option.amount,
            currency,
            correlation_id: outcome.correlation_id.unwrap_or_default(),
        }))
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        const RPC: &str = "GetOrder";
        let r = request.into_inner();
        let q =
            OrderQuery::validate(r.klarna_account, &r.order_id).map_err(|v| fail(RPC, v.into()))?;
        let order = self.gateway.order(q).await.map_err(|e| fail(RPC, e))?;
        Ok(Response::new(pb::GetOrderResponse {
            order: Some(convert::order(order)),
        }))
    }

    async fn get_refund(
        &self,
        request: Request<pb::GetRefundRequest>,
    ) -> Result<Response<pb::GetRefundResponse>, Status> {
        const RPC: &str = "GetRefund";
        let r = request.into_inner();
        let q = RefundQuery::validate(r.klarna_account, &r.order_id, &r.refund_id)
            .map_err(|v| fail(RPC, v.into()))?;
        let refund = self.gateway.refund(q).await.map_err(|e| fail(RPC, e))?;
        Ok(Response::new(pb::GetRefundResponse {
            refund: Some(convert::refund(refund)),
        }))
    }
}
