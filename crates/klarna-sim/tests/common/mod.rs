//! Helpers shared by the integration tests: a running simulator and a reqwest client that
//! speaks to it over real HTTP.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

// The test suite's one bounded wait on a condition (`refund_gateway_tests::wait_until`),
// included from its source: that crate depends on this one, so this one cannot depend on it.
#[path = "../../../../tests/src/wait.rs"]
mod wait;

#[allow(unused_imports)] // not every test binary waits
pub use wait::{TimedOut, wait_until};

use klarna_sim::{OrderSeed, RunningSimulator, SeededOrder, SimConfig, spawn};
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;

pub const ORDERS: &str = "/ordermanagement/v1/orders";

pub struct Harness {
    pub running: RunningSimulator,
    pub client: reqwest::Client,
}

pub async fn start() -> Harness {
    start_with(SimConfig::default()).await
}

pub async fn start_with(config: SimConfig) -> Harness {
    let running = spawn(config).await.expect("simulator starts");
    Harness {
        running,
        client: reqwest::Client::new(),
    }
}

impl Harness {
    pub fn sim(&self) -> &klarna_sim::Simulator {
        &self.running.sim
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.base_url)
    }

    /// A request with the configured Basic credential.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .basic_auth(self.running.username(), Some(self.running.password()))
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path).send().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.unwrap()
    }

    pub async fn order(&self, order_id: &str) -> Value {
        self.get_json(&format!("{ORDERS}/{order_id}")).await
    }

    /// POST a raw body (any bytes) with an optional idempotency key.
    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
        key: Option<&str>,
    ) -> Response {
        let mut request = self
            .request(Method::POST, path)
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = key {
            request = request.header("Klarna-Idempotency-Key", key);
        }
        request.send().await.unwrap()
    }

    pub async fn post(&self, path: &str, body: &Value, key: Option<&str>) -> Response {
        self.post_raw(path, body.to_string(), key).await
    }

    pub async fn patch(&self, path: &str, body: &Value, key: Option<&str>) -> Response {
        let mut request = self.request(Method::PATCH, path).json(body);
        if let Some(key) = key {
            request = request.header("Klarna-Idempotency-Key", key);
        }
        request.send().await.unwrap()
    }

    pub async fn refund(&self, order_id: &str, body: &Value, key: Option<&str>) -> Response {
        self.post(&format!("{ORDERS}/{order_id}/refunds"), body, key)
            .await
    }

    pub async fn refund_amount(&self, order_id: &str, amount: i64) -> Response {
        self.refund(
            order_id,
            &serde_json::json!({ "refunded_amount": amount }),
            None,
        )
        .await
    }

    /// Seeds a fully captured SE/SEK invoice order of `amount` in one capture.
    pub fn captured_order(&self, amount: i64) -> SeededOrder {
        self.sim().seed_order(OrderSeed {
            order_amount: amount,
            captures: vec![amount],
            ..Default::default()
        })
    }
}

pub fn header(response: &Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("header {name} missing"))
        .to_str()
        .unwrap()
        .to_owned()
}

/// Asserts a Klarna error answer and returns its body.
pub async fn expect_error(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status, "status");
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(body["error_code"], code, "error_code in {body}");
    let messages = body["error_messages"]
        .as_array()
        .expect("error_messages array");
    assert!(
        !messages.is_empty() && messages.iter().all(Value::is_string),
        "{body}"
    );
    let correlation = body["correlation_id"].as_str().expect("correlation_id");
    let uuid = uuid::Uuid::try_parse(correlation).expect("correlation_id is a UUID");
    assert_eq!(uuid.get_version_num(), 4, "correlation_id is a UUID v4");
    body
}

/// Asserts a Klarna error with exactly this single message.
pub async fn expect_error_message(
    response: Response,
    status: StatusCode,
    code: &str,
    message: &str,
) -> Value {
    let body = expect_error(response, status, code).await;
    assert_eq!(
        body["error_messages"],
        serde_json::json!([message]),
        "{body}"
    );
    body
}

/// `2022-07-08T09:48:17.738Z`.
pub fn assert_timestamp(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("timestamp string, got {value}"));
    let bytes = text.as_bytes();
    assert_eq!(bytes.len(), 24, "{text}");
    assert_eq!(
        (bytes[10], bytes[19], bytes[23]),
        (b'T', b'.', b'Z'),
        "{text}"
    );
    assert!(
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).is_ok()
    );
}
