//! Webhooks the simulator sends for the partner Payments API: the `payment.transaction.refunded`
//! event of every executed partner refund, signed, delivered in a background task per event
//! and retried with backoff, with a record of every event and delivery attempt.
//!
//! An event is bound to the target configured when it is emitted (URL, signing key and secret,
//! mode): changing the target later affects only later events. Without a target the event is
//! recorded as undeliverable (one failed attempt, error "no webhook target configured") and
//! dropped. In [`WebhookMode::Immediate`] delivery starts as soon as the refund is committed
//! (before its answer is sent, never delaying it); in [`WebhookMode::Manual`] events wait in a
//! queue until [`crate::Simulator::flush_webhooks`].
//!
//! Signature: `Klarna-Signature` is the lowercase hex HMAC-SHA256 of the exact body bytes,
//! keyed with the secret's UTF-8 bytes; `Klarna-Signing-Key-Id` names the key. A 2xx answer
//! acknowledges the event; any other status or a transport error is retried after each delay
//! of the retry schedule in turn, then given up.

use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::clock::Clock;
use crate::model::format_timestamp;

/// Event type of a successful partner refund.
pub const REFUNDED_EVENT: &str = "payment.transaction.refunded";
/// Signing key id used when none is configured (a fixed demo value).
pub const DEFAULT_SIGNING_KEY_ID: &str =
    "krn:partner:global:notification:signing-key:5b1e7c3a-9d2f-4a6b-8e4c-0f3d2a1b9c87";
/// Signing secret used when none is configured (a fixed demo value: never a real secret).
pub const DEFAULT_WEBHOOK_SECRET: &str = "klarna-sim-demo-webhook-secret-3c9f1e7a";
/// `metadata.product_instance_id` of every event.
pub const PRODUCT_INSTANCE_ID: &str =
    "krn:partner:product:payment:2e8a4c6d-1b3f-4d5e-9a7c-6f0b8d2e4a13";
/// `metadata.webhook_id` of every event.
pub const WEBHOOK_ID: &str =
    "krn:partner:global:notification:webhook:8c2d4e6f-3a5b-4c7d-9e1f-0a2b4c6d8e95";

/// How long one delivery attempt may take before it counts as failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How many events and delivery attempts the records keep (oldest dropped first).
const RECORD_CAPACITY: usize = 10_000;

/// The simulator's default retry delays, short so that tests see retries quickly: 50 ms,
/// 200 ms, 1 s, 2 s, 5 s, 10 s.
pub fn default_retry_schedule() -> Vec<Duration> {
    [50, 200, 1_000, 2_000, 5_000, 10_000]
        .into_iter()
        .map(Duration::from_millis)
        .collect()
}

/// Klarna's own retry delays: 10 s, 2 min, 15 min, 3 h, 6 h, 12 h.
pub fn klarna_retry_schedule() -> Vec<Duration> {
    [10, 120, 900, 3 * 3600, 6 * 3600, 12 * 3600]
        .into_iter()
        .map(Duration::from_secs)
        .collect()
}

/// When events are sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookMode {
    /// Right after the refund is committed.
    #[default]
    Immediate,
    /// Queued until [`crate::Simulator::flush_webhooks`] (`POST /__admin/webhooks/flush`).
    Manual,
}

impl FromStr for WebhookMode {
    type Err = String;

    /// `immediate` or `manual` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "immediate" => Ok(Self::Immediate),
            "manual" => Ok(Self::Manual),
            _ => Err(format!("unknown webhook mode {s:?} (immediate or manual)")),
        }
    }
}

fn default_signing_key_id() -> String {
    DEFAULT_SIGNING_KEY_ID.to_owned()
}

fn default_secret() -> String {
    DEFAULT_WEBHOOK_SECRET.to_owned()
}

/// Where and how events are sent. JSON (admin API): `{"url", "signing_key_id"?, "secret"?,
/// "mode"?: "immediate" | "manual"}`, defaults as in [`WebhookTarget::new`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookTarget {
    /// The receiver (`http://` or `https://`).
    pub url: String,
    /// `Klarna-Signing-Key-Id` of the events.
    #[serde(default = "default_signing_key_id")]
    pub signing_key_id: String,
    /// The HMAC key (its UTF-8 bytes).
    #[serde(default = "default_secret")]
    pub secret: String,
    /// When events are sent.
    #[serde(default)]
    pub mode: WebhookMode,
}

impl WebhookTarget {
    /// A target at `url` with [`DEFAULT_SIGNING_KEY_ID`], [`DEFAULT_WEBHOOK_SECRET`] and
    /// immediate delivery.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            signing_key_id: default_signing_key_id(),
            secret: default_secret(),
            mode: WebhookMode::Immediate,
        }
    }

    /// The same target with another mode.
    pub fn with_mode(mut self, mode: WebhookMode) -> Self {
        self.mode = mode;
        self
    }
}

impl std::fmt::Debug for WebhookTarget {
    // The secret stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &self.url)
            .field("signing_key_id", &self.signing_key_id)
            .field("secret", &"<redacted>")
            .field("mode", &self.mode)
            .finish()
    }
}

/// An event the simulator emitted: exactly what is (or would be) POSTed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebhookEvent {
    /// `metadata.event_id` (UUID v4).
    pub event_id: String,
    /// `metadata.event_type` (`payment.transaction.refunded`).
    pub event_type: String,
    /// The URL it is sent to; `None` when no target was configured (undeliverable).
    pub url: Option<String>,
    /// The exact body bytes (JSON).
    pub body: String,
    /// The headers sent with it: `content-type`, `klarna-signature`, `klarna-signing-key-id`
    /// (the last two only when a target was configured).
    pub headers: Vec<(String, String)>,
    /// Simulator time the refund was committed.
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
}

impl WebhookEvent {
    /// The header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON (`Null` if it somehow is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebhookDelivery {
    /// The event delivered.
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// 1 for the first attempt, then 2, 3, … for the retries.
    pub attempt: u32,
    /// Where it was sent (`None`: no target).
    pub url: Option<String>,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<u16>,
    /// The transport error, if it did not (or why nothing was sent).
    pub error: Option<String>,
    /// Whether the receiver acknowledged the event (2xx).
    pub acknowledged: bool,
    /// Simulator time the attempt ended.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// What a partner refund tells the webhook: the refund just committed.
#[derive(Debug, Clone)]
pub(crate) struct RefundEvent {
    pub(crate) transaction_id: String,
    pub(crate) refund_id: String,
    pub(crate) reference: Option<String>,
    pub(crate) amount: i64,
    pub(crate) currency: String,
    pub(crate) occurred_at: OffsetDateTime,
}

#[derive(Serialize)]
struct Envelope<'a> {
    metadata: Metadata<'a>,
    payload: RefundedPayload<'a>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    event_type: &'a str,
    event_id: &'a str,
    event_version: &'a str,
    occurred_at: String,
    correlation_id: Uuid,
    subject_account_id: &'a str,
    recipient_account_id: &'a str,
    product_instance_id: &'a str,
    webhook_id: &'a str,
    live: bool,
}

#[derive(Serialize)]
struct RefundedPayload<'a> {
    payment_transaction_id: &'a str,
    payment_refund_id: &'a str,
    payment_refund_reference: Option<&'a str>,
    amount: i64,
    currency: &'a str,
}

/// Lowercase hex HMAC-SHA256 of `body` keyed with `secret`'s UTF-8 bytes.
pub(crate) fn sign(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An event ready to send.
#[derive(Debug, Clone)]
struct Prepared {
    event_id: String,
    event_type: &'static str,
    url: String,
    body: Bytes,
    headers: Vec<(&'static str, String)>,
}

#[derive(Debug, Default)]
struct State {
    target: Option<WebhookTarget>,
    queue: Vec<Prepared>,
    events: VecDeque<WebhookEvent>,
    deliveries: VecDeque<WebhookDelivery>,
}

fn push_bounded<T>(records: &mut VecDeque<T>, record: T) {
    while records.len() >= RECORD_CAPACITY {
        records.pop_front();
    }
    records.push_back(record);
}

/// The webhook sender of one simulator.
#[derive(Debug)]
pub(crate) struct Webhooks {
    account_id: String,
    retry_schedule: Vec<Duration>,
    clock: Arc<Clock>,
    state: Mutex<State>,
    client: OnceLock<Result<reqwest::Client, String>>,
}

impl Webhooks {
    pub(crate) fn new(
        account_id: &str,
        target: Option<WebhookTarget>,
        retry_schedule: Vec<Duration>,
        clock: Arc<Clock>,
    ) -> Self {
        Self {
            account_id: account_id.to_owned(),
            retry_schedule,
            clock,
            state: Mutex::new(State {
                target,
                ..State::default()
            }),
            client: OnceLock::new(),
        }
    }

    /// A panic while holding the lock cannot leave the records inconsistent in a way that
    /// matters to a simulator: a poisoned lock is taken over.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_target(&self, target: Option<WebhookTarget>) {
        self.state().target = target;
    }

    pub(crate) fn target(&self) -> Option<WebhookTarget> {
        self.state().target.clone()
    }

    pub(crate) fn events(&self) -> Vec<WebhookEvent> {
        self.state().events.iter().cloned().collect()
    }

    pub(crate) fn deliveries(&self) -> Vec<WebhookDelivery> {
        self.state().deliveries.iter().cloned().collect()
    }

    pub(crate) fn queued(&self) -> usize {
        self.state().queue.len()
    }

    /// Emits `payment.transaction.refunded` for a committed refund.
    pub(crate) fn emit_refunded(self: &Arc<Self>, refund: &RefundEvent) {
        let event_id = Uuid::new_v4().to_string();
        // Formatting a valid date cannot fail; an empty string would still be valid JSON.
        let occurred_at = format_timestamp(refund.occurred_at).unwrap_or_default();
        let envelope = Envelope {
            metadata: Metadata {
                event_type: REFUNDED_EVENT,
                event_id: &event_id,
                event_version: "v2",
                occurred_at,
                correlation_id: Uuid::new_v4(),
                subject_account_id: &self.account_id,
                recipient_account_id: &self.account_id,
                product_instance_id: PRODUCT_INSTANCE_ID,
                webhook_id: WEBHOOK_ID,
                live: false,
            },
            payload: RefundedPayload {
                payment_transaction_id: &refund.transaction_id,
                payment_refund_id: &refund.refund_id,
                payment_refund_reference: refund.reference.as_deref(),
                amount: refund.amount,
                currency: &refund.currency,
            },
        };
        // Strings and integers always serialize.
        let body = serde_json::to_vec(&envelope).unwrap_or_default();
        self.emit(
            event_id,
            REFUNDED_EVENT,
            Bytes::from(body),
            refund.occurred_at,
        );
    }

    fn emit(
        self: &Arc<Self>,
        event_id: String,
        event_type: &'static str,
        body: Bytes,
        occurred_at: OffsetDateTime,
    ) {
        let mut state = self.state();
        let mut headers = vec![("content-type", "application/json".to_owned())];
        let Some(target) = state.target.clone() else {
            push_bounded(
                &mut state.events,
                record_event(&event_id, event_type, None, &body, &headers, occurred_at),
            );
            let at = self.clock.now();
            push_bounded(
                &mut state.deliveries,
                WebhookDelivery {
                    event_id,
                    event_type: event_type.to_owned(),
                    attempt: 1,
                    url: None,
                    status: None,
                    error: Some("no webhook target configured".to_owned()),
                    acknowledged: false,
                    at,
                },
            );
            return;
        };
        headers.push(("klarna-signature", sign(&target.secret, &body)));
        headers.push(("klarna-signing-key-id", target.signing_key_id.clone()));
        push_bounded(
            &mut state.events,
            record_event(
                &event_id,
                event_type,
                Some(&target.url),
                &body,
                &headers,
                occurred_at,
            ),
        );
        let prepared = Prepared {
            event_id,
            event_type,
            url: target.url,
            body,
            headers,
        };
        match target.mode {
            WebhookMode::Manual => state.queue.push(prepared),
            WebhookMode::Immediate => {
                drop(state);
                if let Err(prepared) = self.spawn(prepared) {
                    // Only without a Tokio runtime (never from a served request): keep it for
                    // a flush.
                    self.state().queue.push(prepared);
                }
            }
        }
    }

    /// Starts delivering every queued event; returns how many. Outside a Tokio runtime nothing
    /// is started and the events stay queued.
    pub(crate) fn flush(self: &Arc<Self>) -> usize {
        let queued = std::mem::take(&mut self.state().queue);
        let mut started = 0;
        let mut left = Vec::new();
        for prepared in queued {
            match self.spawn(prepared) {
                Ok(()) => started += 1,
                Err(prepared) => left.push(prepared),
            }
        }
        if !left.is_empty() {
            let mut state = self.state();
            left.append(&mut state.queue);
            state.queue = left;
        }
        started
    }

    fn spawn(self: &Arc<Self>, prepared: Prepared) -> Result<(), Prepared> {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(Arc::clone(self).deliver(prepared));
                Ok(())
            }
            Err(_) => Err(prepared),
        }
    }

    /// Sends `prepared` until it is acknowledged or the retry schedule is used up.
    async fn deliver(self: Arc<Self>, prepared: Prepared) {
        let mut attempt: u32 = 1;
        let mut delays = self.retry_schedule.iter();
        loop {
            let (status, error) = self.post(&prepared).await;
            let acknowledged = status.is_some_and(|s| (200..300).contains(&s));
            let at = self.clock.now();
            push_bounded(
                &mut self.state().deliveries,
                WebhookDelivery {
                    event_id: prepared.event_id.clone(),
                    event_type: prepared.event_type.to_owned(),
                    attempt,
                    url: Some(prepared.url.clone()),
                    status,
                    error,
                    acknowledged,
                    at,
                },
            );
            if acknowledged {
                return;
            }
            let Some(delay) = delays.next() else {
                return;
            };
            tokio::time::sleep(*delay).await;
            attempt += 1;
        }
    }

    async fn post(&self, prepared: &Prepared) -> (Option<u16>, Option<String>) {
        let client = self.client.get_or_init(|| {
            reqwest::Client::builder()
                .timeout(ATTEMPT_TIMEOUT)
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))
        });
        let client = match client {
            Ok(client) => client,
            Err(e) => return (None, Some(e.clone())),
        };
        let mut request = client.post(&prepared.url).body(prepared.body.clone());
        for (name, value) in &prepared.headers {
            request = request.header(*name, value);
        }
        match request.send().await {
            Ok(response) => (Some(response.status().as_u16()), None),
            Err(e) => (None, Some(error_chain(&e))),
        }
    }
}

/// The error and its sources, for the delivery record.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn record_event(
    event_id: &str,
    event_type: &str,
    url: Option<&str>,
    body: &[u8],
    headers: &[(&'static str, String)],
    occurred_at: OffsetDateTime,
) -> WebhookEvent {
    WebhookEvent {
        event_id: event_id.to_owned(),
        event_type: event_type.to_owned(),
        url: url.map(str::to_owned),
        body: String::from_utf8_lossy(body).into_owned(),
        headers: headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.clone()))
            .collect(),
        occurred_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_lowercase_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn modes_parse_and_targets_hide_their_secret() {
        assert_eq!("Manual".parse::<WebhookMode>(), Ok(WebhookMode::Manual));
        assert_eq!(
            "immediate".parse::<WebhookMode>(),
            Ok(WebhookMode::Immediate)
        );
        assert!("later".parse::<WebhookMode>().is_err());
        let target: WebhookTarget =
            serde_json::from_str(r#"{"url": "http://127.0.0.1:1/hook", "mode": "manual"}"#)
                .unwrap();
        assert_eq!(target.secret, DEFAULT_WEBHOOK_SECRET);
        assert_eq!(target.signing_key_id, DEFAULT_SIGNING_KEY_ID);
        assert_eq!(target.mode, WebhookMode::Manual);
        assert!(!format!("{target:?}").contains(DEFAULT_WEBHOOK_SECRET));
    }

    #[test]
    fn without_a_target_events_are_recorded_as_undeliverable() {
        let webhooks = Arc::new(Webhooks::new(
            "acct",
            None,
            Vec::new(),
            Arc::new(Clock::default()),
        ));
        webhooks.emit_refunded(&RefundEvent {
            transaction_id: "t".into(),
            refund_id: "t:refund:1".into(),
            reference: None,
            amount: 5,
            currency: "SEK".into(),
            occurred_at: OffsetDateTime::UNIX_EPOCH,
        });
        let events = webhooks.events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].url, None);
        let body = events[0].json();
        assert_eq!(
            body["payload"]["payment_refund_reference"],
            serde_json::Value::Null
        );
        assert_eq!(body["metadata"]["subject_account_id"], "acct");
        let deliveries = webhooks.deliveries();
        assert_eq!(deliveries.len(), 1);
        assert!(!deliveries[0].acknowledged);
        assert_eq!(webhooks.queued(), 0);
    }
}
