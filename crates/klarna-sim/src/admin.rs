//! The admin HTTP API under `/__admin/`: the test facilities of [`Simulator`] over HTTP, for
//! callers in another process. No authentication (it is a test facility); not logged.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /__admin/orders` | [`crate::OrderSeed`] JSON | 200 [`crate::SeededOrder`] JSON; 422 if the seed is inconsistent |
//! | `GET /__admin/orders/{id}` | | 200 order JSON as `GET order` returns it; 404 |
//! | `POST /__admin/demo` | | 200 `[SeededOrder]` of the demo orders (the demo transactions are seeded too) |
//! | `POST /__admin/transactions` | [`crate::TransactionSeed`] JSON | 200 transaction JSON as `GET transaction` returns it; 422 if the seed is inconsistent |
//! | `GET /__admin/transactions/{id}` | | 200 transaction JSON; 404 |
//! | `POST /__admin/transactions/{id}/state` | `{"state": "CLOSED"}` (any [`crate::TransactionState`]) | 200 transaction JSON; 404 |
//! | `POST /__admin/webhooks` | [`crate::WebhookTarget`] JSON `{url, signing_key_id?, secret?, mode?}` | 204; 400 if `url` is not a URL |
//! | `GET /__admin/webhooks` | | 200 `{"target": WebhookTarget or null, "queued": N}` |
//! | `DELETE /__admin/webhooks` | | 204 (no target: later events are dropped) |
//! | `POST /__admin/webhooks/flush` | | 200 `{"flushed": N}`: deliveries started for the queued events |
//! | `GET /__admin/webhooks/events` | | 200 `[WebhookEvent]` (exact body and headers), oldest first |
//! | `GET /__admin/webhooks/deliveries` | | 200 `[WebhookDelivery]`, in the order the attempts ended |
//! | `GET /__admin/requests` | | 200 `[LoggedRequest]`, oldest first |
//! | `DELETE /__admin/requests` | | 204 |
//! | `POST /__admin/faults` | [`crate::FaultSpec`] JSON | 204 |
//! | `DELETE /__admin/faults` | | 204 (also ends the chaos mode) |
//! | `GET /__admin/faults` | | 200 `{"injected": {"status 503": N, "reset": N, ...}}`: faults injected so far, armed and chaos alike |
//! | `POST /__admin/chaos` | [`crate::ChaosSpec`] JSON | 204 (replaces any earlier chaos mode); 400 if `per_mille` is over 1000, `kinds` is empty or names a status that is not an HTTP status |
//! | `DELETE /__admin/chaos` | | 204 (armed faults stay) |
//! | `POST /__admin/clock` | `{"advance_secs": N}` | 200 `{"now": "<RFC 3339>"}` |
//! | `GET /__admin/clock` | | 200 `{"now": "<RFC 3339>"}` |
//!
//! Ids in paths are percent-decoded. Errors use the Order Management error body (400
//! `BAD_VALUE` for unreadable JSON, 404 `NOT_FOUND`, 405 `METHOD_NOT_ALLOWED`).

use std::time::Duration;

use http::{Method, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::faults::{ChaosSpec, FaultKind, FaultSpec, decode_path};
use crate::model::format_timestamp;
use crate::payments::TransactionState;
use crate::response::{ApiError, SimResponse};
use crate::seed::OrderSeed;
use crate::server::{BodyError, read_body};
use crate::simulator::Simulator;
use crate::transaction_seed::TransactionSeed;
use crate::webhooks::WebhookTarget;

/// Prefix of every admin route.
pub(crate) const PREFIX: &str = "/__admin/";

/// Admin bodies may be larger than Klarna's (a seed with many lines).
const MAX_ADMIN_BODY_BYTES: usize = 16 * 1024 * 1024;

#[derive(Deserialize)]
struct ClockAdvance {
    advance_secs: u64,
}

#[derive(Deserialize)]
struct StateChange {
    state: TransactionState,
}

fn no_such_transaction(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        format!("Payment transaction {id} cannot be found"),
    )
}

/// The transaction routes: `transactions/{id}` and `transactions/{id}/state`.
fn transaction_route(
    sim: &Simulator,
    method: &Method,
    rest: &str,
    body: &[u8],
) -> Option<Result<SimResponse, ApiError>> {
    let (id, state) = match rest.split_once('/') {
        Some((id, "state")) => (id, true),
        Some(_) => return None,
        None => (rest, false),
    };
    let id = decode_path(id);
    if id.is_empty() {
        return None;
    }
    Some(match (method.clone(), state) {
        (Method::GET, false) => sim
            .transaction_json(&id)
            .map(|json| SimResponse::json(StatusCode::OK, &json))
            .ok_or_else(|| no_such_transaction(&id)),
        (Method::POST, true) => parse::<StateChange>(body).and_then(|change| {
            sim.set_transaction_state(&id, change.state)
                .map(|json| SimResponse::json(StatusCode::OK, &json))
                .ok_or_else(|| no_such_transaction(&id))
        }),
        _ => Err(method_not_allowed(method, rest)),
    })
}

fn method_not_allowed(method: &Method, path: &str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        format!("Method {method} is not allowed on {path}"),
    )
}

/// Handles one admin call.
pub(crate) async fn handle(
    sim: &Simulator,
    method: &Method,
    path: &str,
    body: Incoming,
) -> SimResponse {
    let body = match read_body(body, MAX_ADMIN_BODY_BYTES).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "REQUEST_TOO_LARGE",
                "Admin request body too large.",
            )
            .into();
        }
        Err(BodyError::Io) => {
            return ApiError::new(StatusCode::BAD_REQUEST, "BAD_VALUE", "Unreadable body.").into();
        }
    };
    respond(sim, method, path, &body).unwrap_or_else(SimResponse::from)
}

fn respond(
    sim: &Simulator,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Result<SimResponse, ApiError> {
    let route = path.strip_prefix(PREFIX).unwrap_or(path);
    match (method.clone(), route) {
        (Method::POST, "orders") => {
            let seed: OrderSeed = parse(body)?;
            let seeded = sim.try_seed_order(seed).map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "UNPROCESSABLE_ENTITY",
                    e.to_string(),
                )
            })?;
            Ok(SimResponse::json(StatusCode::OK, &seeded))
        }
        (Method::GET, route) if route.starts_with("orders/") => {
            let id = route.trim_start_matches("orders/");
            let order = sim.order_json(id).ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "NO_SUCH_ORDER",
                    format!("Order {id} cannot be found"),
                )
            })?;
            Ok(SimResponse::json(StatusCode::OK, &order))
        }
        (Method::POST, "demo") => Ok(SimResponse::json(StatusCode::OK, &sim.seed_demo_orders())),
        (Method::POST, "transactions") => {
            let seed: TransactionSeed = parse(body)?;
            let seeded = sim.try_seed_transaction(seed).map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "UNPROCESSABLE_ENTITY",
                    e.to_string(),
                )
            })?;
            let json = sim
                .transaction_json(&seeded.payment_transaction_id)
                .ok_or_else(|| ApiError::internal("the seeded transaction cannot be found"))?;
            Ok(SimResponse::json(StatusCode::OK, &json))
        }
        (_, route) if route.starts_with("transactions/") => {
            transaction_route(sim, method, route.trim_start_matches("transactions/"), body)
                .unwrap_or_else(|| Err(not_found(path)))
        }
        (Method::POST, "webhooks") => {
            let target: WebhookTarget = parse(body)?;
            if let Err(e) = reqwest::Url::parse(&target.url) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "BAD_VALUE",
                    format!("url {:?} is not a URL: {e}", target.url),
                ));
            }
            sim.set_webhook_target(target);
            Ok(SimResponse::empty(StatusCode::NO_CONTENT))
        }
        (Method::GET, "webhooks") => Ok(SimResponse::json(
            StatusCode::OK,
            &serde_json::json!({
                "target": sim.webhook_target(),
                "queued": sim.queued_webhooks(),
            }),
        )),
        (Method::DELETE, "webhooks") => {
            sim.clear_webhook_target();
            Ok(SimResponse::empty(StatusCode::NO_CONTENT))
        }
        (Method::POST, "webhooks/flush") => Ok(SimResponse::json(
            StatusCode::OK,
            &serde_json::json!({ "flushed": sim.flush_webhooks() }),
        )),
        (Method::GET, "webhooks/events") => {
            Ok(SimResponse::json(StatusCode::OK, &sim.webhook_events()))
        }
        (Method::GET, "webhooks/deliveries") => {
            Ok(SimResponse::json(StatusCode::OK, &sim.webhook_deliveries()))
        }
        (Method::GET, "requests") => Ok(SimResponse::json(StatusCode::OK, &sim.requests())),
        (Method::DELETE, "requests") => {
            sim.clear_requests();
            Ok(SimResponse::empty(StatusCode::NO_CONTENT))
        }
        (Method::POST, "faults") => {
            let spec: FaultSpec = parse(body)?;
            check_kind(&spec.kind)?;
            sim.inject_fault(spec);
            Ok(SimResponse::empty(StatusCode::NO_CONTENT))
        }
        (Method::DELETE, "faults") => {
            sim.clear_faults();
            Ok(SimResponse::empty(StatusCode::NO_CONTENT))
        }
        (Method::GET, "faults") => Ok(SimResponse::json(
            StatusCode::OK,
            &serde_json::json!({ "injected": sim.injected_faults() }),
        )),
        (Method::POST, "chaos") => {
            let spec: ChaosSpec = parse(body)?;
            if spec.per_mille > 1000 {
                return Err(bad_value(format!(
                    "per_mille {} is over 1000",
                    spec.per_mille
                )));
            }
            if spec.kinds.is_empty() {
                return Err(bad_value("kinds is empty".to_owned()));
            }
            spec.kinds.iter().try_for_each(check_kind)?;
            sim.set_chaos(Some(spec));
            Ok(SimResponse::empty(StatusCode::NO_CONTENT))
        }
        (Method::DELETE, "chaos") => {
            sim.set_chaos(None);
            Ok(SimResponse::empty(StatusCode::NO_CONTENT))
        }
        (Method::POST, "clock") => {
            let advance: ClockAdvance = parse(body)?;
            sim.advance_clock(Duration::from_secs(advance.advance_secs));
            clock(sim)
        }
        (Method::GET, "clock") => clock(sim),
        (
            _,
            "orders"
            | "demo"
            | "requests"
            | "faults"
            | "chaos"
            | "clock"
            | "transactions"
            | "webhooks"
            | "webhooks/flush"
            | "webhooks/events"
            | "webhooks/deliveries",
        ) => Err(method_not_allowed(method, path)),
        _ => Err(not_found(path)),
    }
}

fn bad_value(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "BAD_VALUE", message)
}

/// A `Status` fault must name a valid HTTP status.
fn check_kind(kind: &FaultKind) -> Result<(), ApiError> {
    match kind {
        FaultKind::Status { status, .. } if StatusCode::from_u16(*status).is_err() => {
            Err(bad_value(format!("{status} is not an HTTP status")))
        }
        _ => Ok(()),
    }
}

fn not_found(path: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        format!("No admin resource at {path}"),
    )
}

fn clock(sim: &Simulator) -> Result<SimResponse, ApiError> {
    let now = format_timestamp(sim.now()).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(SimResponse::json(
        StatusCode::OK,
        &serde_json::json!({ "now": now }),
    ))
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "BAD_VALUE", e.to_string()))
}

#[cfg(test)]
mod tests {
    use reqwest::StatusCode as Status;
    use serde_json::json;

    use crate::{OrderSeed, SimConfig, spawn};

    /// Over HTTP: chaos set and ended through the admin API, a reset that executes nothing,
    /// and the 400s of an unusable spec.
    #[tokio::test]
    async fn chaos_over_the_admin_api_and_reset_executes_nothing() {
        let running = spawn(SimConfig::default()).await.unwrap();
        let order_id = running
            .sim
            .seed_order(OrderSeed {
                order_amount: 1_000,
                captures: vec![1_000],
                ..Default::default()
            })
            .order_id;
        let client = reqwest::Client::new();
        let admin = |path: &str| format!("{}/__admin/{path}", running.base_url);
        let refund = || {
            client
                .post(format!(
                    "{}/ordermanagement/v1/orders/{order_id}/refunds",
                    running.base_url
                ))
                .basic_auth(running.username(), Some(running.password()))
                .json(&json!({"refunded_amount": 100}))
                .send()
        };

        for bad in [
            json!({"path": "/x", "per_mille": 1001, "kinds": [{"type": "reset"}]}),
            json!({"path": "/x", "per_mille": 10, "kinds": []}),
            json!({"path": "/x", "per_mille": 10, "kinds": [{"type": "status", "status": 42}]}),
        ] {
            let answer = client.post(admin("chaos")).json(&bad).send().await.unwrap();
            assert_eq!(answer.status(), Status::BAD_REQUEST, "{bad}");
        }

        let every_refund = |kind: serde_json::Value| {
            json!({"method": "post", "path": "/ordermanagement/v1/orders/*",
                   "per_mille": 1000, "kinds": [kind], "seed": 1})
        };
        let set = client
            .post(admin("chaos"))
            .json(&every_refund(json!({"type": "status", "status": 503})))
            .send()
            .await
            .unwrap();
        assert_eq!(set.status(), Status::NO_CONTENT);
        assert_eq!(
            refund().await.unwrap().status(),
            Status::SERVICE_UNAVAILABLE
        );

        client
            .post(admin("chaos"))
            .json(&every_refund(json!({"type": "reset"})))
            .send()
            .await
            .unwrap();
        assert!(refund().await.is_err(), "a reset answered");
        let order = running.sim.order_json(&order_id).unwrap();
        assert_eq!(order["refunds"], json!([]), "a reset executed: {order}");
        let log = running.sim.requests();
        let last = log.last().unwrap();
        assert_eq!(
            (last.fault.as_deref(), last.status),
            (Some("reset"), 0),
            "{last:?}"
        );

        let ended = client.delete(admin("chaos")).send().await.unwrap();
        assert_eq!(ended.status(), Status::NO_CONTENT);
        assert_eq!(refund().await.unwrap().status(), Status::CREATED);
        let counts: serde_json::Value = client
            .get(admin("faults"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            counts,
            json!({"injected": {"status 503": 1, "reset": 1}}),
            "{counts}"
        );
    }
}
