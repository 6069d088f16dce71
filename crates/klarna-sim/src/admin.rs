//! The admin HTTP API under `/__admin/`: the test facilities of [`Simulator`] over HTTP, for
//! callers in another process. No authentication (it is a test facility); not logged.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /__admin/orders` | [`crate::OrderSeed`] JSON | 200 [`crate::SeededOrder`] JSON; 422 if the seed is inconsistent |
//! | `GET /__admin/orders/{id}` | | 200 order JSON as `GET order` returns it; 404 |
//! | `POST /__admin/demo` | | 200 `[SeededOrder]` of the demo orders |
//! | `GET /__admin/requests` | | 200 `[LoggedRequest]`, oldest first |
//! | `DELETE /__admin/requests` | | 204 |
//! | `POST /__admin/faults` | [`crate::FaultSpec`] JSON | 204 |
//! | `DELETE /__admin/faults` | | 204 |
//! | `POST /__admin/clock` | `{"advance_secs": N}` | 200 `{"now": "<RFC 3339>"}` |
//! | `GET /__admin/clock` | | 200 `{"now": "<RFC 3339>"}` |
//!
//! Errors use the Klarna error body (400 `BAD_VALUE` for unreadable JSON, 404 `NOT_FOUND`,
//! 405 `METHOD_NOT_ALLOWED`).

use std::time::Duration;

use http::{Method, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::faults::FaultSpec;
use crate::model::format_timestamp;
use crate::response::{ApiError, SimResponse};
use crate::seed::OrderSeed;
use crate::server::{BodyError, read_body};
use crate::simulator::Simulator;

/// Prefix of every admin route.
pub(crate) const PREFIX: &str = "/__admin/";

/// Admin bodies may be larger than Klarna's (a seed with many lines).
const MAX_ADMIN_BODY_BYTES: usize = 16 * 1024 * 1024;

#[derive(Deserialize)]
struct ClockAdvance {
    advance_secs: u64,
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
        (Method::GET, "requests") => Ok(SimResponse::json(StatusCode::OK, &sim.requests())),
        (Method::DELETE, "requests") => {
            sim.clear_requests();
            Ok(SimResponse::empty(StatusCode::NO_CONTENT))
        }
        (Method::POST, "faults") => {
            let spec: FaultSpec = parse(body)?;
            if let crate::FaultKind::Status { status, .. } = spec.kind
                && StatusCode::from_u16(status).is_err()
            {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "BAD_VALUE",
                    format!("{status} is not an HTTP status"),
                ));
            }
            sim.inject_fault(spec);
            Ok(SimResponse::empty(StatusCode::NO_CONTENT))
        }
        (Method::DELETE, "faults") => {
            sim.clear_faults();
            Ok(SimResponse::empty(StatusCode::NO_CONTENT))
        }
        (Method::POST, "clock") => {
            let advance: ClockAdvance = parse(body)?;
            sim.advance_clock(Duration::from_secs(advance.advance_secs));
            clock(sim)
        }
        (Method::GET, "clock") => clock(sim),
        (_, "orders" | "demo" | "requests" | "faults" | "clock") => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            format!("Method {method} is not allowed on {path}"),
        )),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("No admin resource at {path}"),
        )),
    }
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
