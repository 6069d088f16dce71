//! Klarna's webhooks: the receiver of `POST /webhooks/klarna` on its own listener, the one
//! port exposed to Klarna (never the admin port with `/metrics`). See
//! `docs/architecture.md#webhooks`.
//!
//! A delivery is accepted only when it is signed with a key the gateway holds (HMAC-SHA256 of
//! the raw body in `Klarna-Signature`, the key named by `Klarna-Signing-Key-Id`), is a
//! well-formed envelope, and belongs to a configured partner account (its
//! `partner_account_id` is the envelope's recipient, else subject, else v1 account id) whose
//! liveness matches the envelope's `live`. Anything else is answered 400 and nothing is
//! recorded, as Klarna's guidance asks. Klarna retries deliveries for 12 h, so each event is
//! recorded once by `event_id`, durably; a duplicate is answered 200 and changes nothing.
//!
//! `payment.transaction.refunded` is matched to the partner refund operation it concerns (by
//! Klarna's refund id, else the refund reference the gateway sent), recorded in its audit
//! trail, and settles it at once when its outcome was unknown. Other event types are recorded
//! as received and otherwise ignored.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use refund_gateway_domain::{Operation, OperationStore, ResourceKind, WebhookEvent};
use refund_gateway_klarna::{REFUNDED_EVENT_TYPE, RefundedEvent, WebhookEnvelope, webhook};
use secrecy::SecretString;
use time::OffsetDateTime;
use tracing::Instrument;

use crate::protocol::Protocol;

/// The path Klarna posts to.
pub const WEBHOOK_PATH: &str = "/webhooks/klarna";
/// The largest body accepted; Klarna's own request limit is 1 MB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Header of the signature.
pub const SIGNATURE_HEADER: &str = "klarna-signature";
/// Header naming the signing key.
pub const KEY_ID_HEADER: &str = "klarna-signing-key-id";

/// A partner account as the receiver matches deliveries to it.
#[derive(Debug, Clone)]
pub struct WebhookAccount {
    /// The configured account name.
    pub name: String,
    /// Its partner account id.
    pub partner_account_id: String,
    /// True only for Klarna's live partner URL.
    pub live: bool,
}

/// A signing key: its id, or `None` for a secret accepted under any id.
#[derive(Clone)]
pub struct SigningKey {
    /// Klarna's key id.
    pub id: Option<String>,
    /// The secret.
    pub secret: SecretString,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What the receiver needs.
#[derive(Debug, Clone)]
pub struct WebhookReceiver {
    /// The signing keys.
    pub keys: Arc<Vec<SigningKey>>,
    /// The partner accounts.
    pub accounts: Arc<Vec<WebhookAccount>>,
    /// Settles operations a webhook resolves.
    pub protocol: Protocol,
}

/// The receiver's router.
pub fn router(receiver: WebhookReceiver) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(receive))
        // Bigger bodies are refused (413) before they are read whole.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(receiver)
}

/// Why a delivery was refused; the text goes to Klarna and the log, never a secret.
fn refuse(reason: &str) -> (StatusCode, String) {
    tracing::warn!(reason, "webhook refused");
    metrics::counter!("webhook_deliveries_total", "result" => "refused").increment(1);
    (StatusCode::BAD_REQUEST, reason.to_owned())
}

/// One SERVER span per delivery (a trace of its own: Klarna sends no trace context), so the
/// settlement a refund event causes, and its audit event, belong to a trace.
async fn receive(
    State(receiver): State<WebhookReceiver>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let span = tracing::info_span!(
        "POST /webhooks/klarna",
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = "POST",
        http.route = WEBHOOK_PATH,
        http.response.status_code = tracing::field::Empty,
    );
    let answer = handle(receiver, headers, body)
        .instrument(span.clone())
        .await;
    span.record("http.response.status_code", answer.0.as_u16());
    if answer.0.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    answer
}

async fn handle(
    receiver: WebhookReceiver,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(signature), Some(key_id)) = (header(SIGNATURE_HEADER), header(KEY_ID_HEADER)) else {
        return refuse("missing Klarna-Signature or Klarna-Signing-Key-Id");
    };
    let candidates: Vec<&SigningKey> = receiver
        .keys
        .iter()
        .filter(|k| k.id.as_deref().is_none_or(|id| id == key_id))
        .collect();
    if candidates.is_empty() {
        return refuse("unknown signing key id");
    }
    // Every candidate is tried, so the time taken does not tell which one failed.
    let verified = candidates.iter().fold(false, |ok, k| {
        webhook::verify_signature(&k.secret, &body, signature) | ok
    });
    if !verified {
        return refuse("signature does not match");
    }
    let envelope = match webhook::parse_envelope(&body) {
        Ok(envelope) => envelope,
        Err(e) => return refuse(&format!("malformed webhook: {e}")),
    };
    let Some(account) = receiver
        .accounts
        .iter()
        .find(|a| a.partner_account_id == envelope.account_id())
    else {
        return refuse("the webhook is for no configured partner account");
    };
    if envelope.live().is_some_and(|live| live != account.live) {
        return refuse("the webhook's live flag does not match the account's environment");
    }
    match record(&receiver.protocol, account, &envelope).await {
        Ok(result) => {
            metrics::counter!("webhook_deliveries_total", "result" => result).increment(1);
            (StatusCode::OK, String::new())
        }
        // Klarna retries: nothing was recorded, so the redelivery is not a duplicate.
        Err(e) => {
            metrics::counter!("webhook_deliveries_total", "result" => "failed").increment(1);
            tracing::error!(error = %e, event_id = envelope.event_id(), "webhook not recorded");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not recorded; retry".to_owned(),
            )
        }
    }
}

/// Records the event once and, for a refund of an operation whose outcome is unknown,
/// settles that operation. Returns the delivery's `result` label: `accepted`, or `duplicate`
/// for an event recorded before.
async fn record(
    protocol: &Protocol,
    account: &WebhookAccount,
    envelope: &WebhookEnvelope,
) -> Result<&'static str, refund_gateway_domain::StoreError> {
    let store = protocol.store();
    let refunded = (envelope.event_type() == REFUNDED_EVENT_TYPE)
        .then(|| RefundedEvent::from_payload(envelope.payload()).ok())
        .flatten();
    let operation = match &refunded {
        Some(event) => matching_operation(store.as_ref(), &account.name, event).await?,
        None => None,
    };
    let event = WebhookEvent {
        event_id: envelope.event_id().to_owned(),
        event_type: envelope.event_type().to_owned(),
        klarna_account: account.name.clone(),
        operation_id: operation.as_ref().map(|op| op.new.operation_id),
        payment_transaction_id: refunded.as_ref().map(|e| e.payment_transaction_id.clone()),
        refund_id: refunded.as_ref().and_then(|e| e.payment_refund_id.clone()),
        correlation_id: envelope.correlation_id().map(str::to_owned),
        payload: envelope.payload().to_string(),
        occurred_at: envelope.occurred_at().map(str::to_owned),
        received_at: OffsetDateTime::now_utc(),
    };
    let detail = format!(
        "Klarna webhook {} (event {})",
        envelope.event_type(),
        envelope.event_id()
    );
    if !store.record_webhook(event, detail).await? {
        tracing::info!(
            event_id = envelope.event_id(),
            "webhook delivered again; already recorded"
        );
        return Ok("duplicate");
    }
    tracing::info!(
        event_id = envelope.event_id(),
        event_type = envelope.event_type(),
        klarna_account = %account.name,
        operation_id = operation.as_ref().map(|op| op.new.operation_id.to_string()).as_deref(),
        "webhook recorded"
    );
    if let Some(op) = operation
        && op.is_unresolved(OffsetDateTime::now_utc())
    {
        // The reconciler's resolution finds the recorded refund and settles from it, without
        // calling Klarna.
        protocol.resolve(op).await?;
    }
    Ok("accepted")
}

/// The partner refund operation a refund event concerns: on its transaction, with Klarna's
/// refund id, else with the reference the gateway sent (an operation whose outcome is
/// unknown has no refund id yet).
async fn matching_operation(
    store: &dyn OperationStore,
    account: &str,
    event: &RefundedEvent,
) -> Result<Option<Operation>, refund_gateway_domain::StoreError> {
    let operations = store
        .resource_operations(
            account,
            ResourceKind::Transaction,
            &event.payment_transaction_id,
        )
        .await?;
    let by_id = event.payment_refund_id.as_deref().and_then(|id| {
        operations
            .iter()
            .find(|op| op.refund_id.as_deref() == Some(id))
    });
    let by_reference = || {
        let reference = event.payment_refund_reference.as_deref()?;
        let mut matching = operations
            .iter()
            .filter(|op| op.new.reference.as_deref() == Some(reference));
        // Two operations sent with one reference cannot be told apart: match neither.
        match (matching.next(), matching.next()) {
            (Some(op), None) => Some(op),
            _ => None,
        }
    };
    Ok(by_id.or_else(by_reference).cloned())
}
