//! Klarna's partner webhooks, as pure functions over a delivery's raw body and headers (no
//! HTTP server here): [`verify_signature`] checks `Klarna-Signature`, [`parse_envelope`] reads
//! the `{metadata, payload}` envelope, and [`RefundedEvent::from_payload`] reads the payload
//! of [`REFUNDED_EVENT_TYPE`](crate::REFUNDED_EVENT_TYPE) (see docs/klarna.md#partner-payments).
//!
//! The envelope, the signature scheme and the header names are Klarna's documented contract;
//! the refund payload's field names are an assumption, kept in `partner_contract.rs`.
//!
//! A receiver looks the signing secret up by the `Klarna-Signing-Key-Id` of the delivery (keys
//! rotate, so it holds several), verifies the signature over the body exactly as received
//! (answering 400 when it does not match, as Klarna advises), then parses, and deduplicates
//! on [`WebhookEnvelope::event_id`]: Klarna redelivers until acknowledged.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::partner_contract::RefundedPayloadWire;

/// Header holding the delivery's signature: HMAC-SHA256 of the raw body, lowercase hex.
pub const SIGNATURE_HEADER: &str = "Klarna-Signature";

/// Header naming the signing key the delivery was signed with
/// (`krn:partner:global:notification:signing-key:<uuid>`).
pub const SIGNING_KEY_ID_HEADER: &str = "Klarna-Signing-Key-Id";

/// Longest `event_id` and `event_type` accepted.
pub const MAX_EVENT_ID_CHARS: usize = 255;

/// Length of a signature: 32 bytes of HMAC-SHA256 as hex.
const SIGNATURE_HEX_LEN: usize = 64;

/// Whether `signature` (the `Klarna-Signature` header) is the HMAC-SHA256 of `body` keyed by
/// `secret`, taken as the UTF-8 bytes of the string Klarna issued. `body` must be the raw
/// bytes as received, before any JSON parsing. The signature must be exactly 64 lowercase hex
/// digits; anything else (upper case, surrounding space, another length) is `false`. The
/// comparison of the MAC is constant-time.
pub fn verify_signature(secret: &SecretString, body: &[u8], signature: &str) -> bool {
    let Some(expected) = decode_lower_hex(signature) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()) else {
        // HMAC takes keys of any length; nothing to verify against otherwise.
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// 64 lowercase hex digits as 32 bytes.
fn decode_lower_hex(hex: &str) -> Option<[u8; SIGNATURE_HEX_LEN / 2]> {
    let digits = hex.as_bytes();
    if digits.len() != SIGNATURE_HEX_LEN {
        return None;
    }
    let mut bytes = [0_u8; SIGNATURE_HEX_LEN / 2];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(bytes)
}

fn nibble(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

/// Why a webhook body cannot be used. The reasons name fields, never their values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// The body is not a JSON object.
    #[error("the webhook body is not a JSON object")]
    NotAnObject,
    /// `metadata` is missing or not an object.
    #[error("the webhook body has no metadata object")]
    NoMetadata,
    /// A required field is missing, `null` or empty.
    #[error("webhook field {0} is missing")]
    Missing(&'static str),
    /// A field has the wrong type or an unacceptable value.
    #[error("webhook field {field} is invalid: {reason}")]
    Invalid {
        /// The field, e.g. `metadata.event_id`.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The payload does not have the shape of its event type.
    #[error("the webhook payload cannot be read: {0}")]
    Payload(String),
}

/// A webhook delivery's envelope: Klarna's `metadata`, and the `payload` as sent. Built only by
/// [`parse_envelope`], so `event_type`, `event_id` and an account id are always present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEnvelope {
    event_type: String,
    event_id: String,
    event_version: Option<String>,
    occurred_at: Option<String>,
    correlation_id: Option<String>,
    subject_account_id: Option<String>,
    recipient_account_id: Option<String>,
    v1_account_id: Option<String>,
    product_instance_id: Option<String>,
    webhook_id: Option<String>,
    live: Option<bool>,
    payload: Value,
}

impl WebhookEnvelope {
    /// `metadata.event_type`, e.g. `payment.transaction.refunded`.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// `metadata.event_id`: the same for every redelivery of one event; deduplicate on it.
    pub fn event_id(&self) -> &str {
        &self.event_id
    }

    /// `metadata.event_version` (`v2` today).
    pub fn event_version(&self) -> Option<&str> {
        self.event_version.as_deref()
    }

    /// `metadata.occurred_at`, as Klarna wrote it.
    pub fn occurred_at(&self) -> Option<&str> {
        self.occurred_at.as_deref()
    }

    /// `metadata.correlation_id`.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }

    /// `metadata.subject_account_id` (v2): the account the event is about.
    pub fn subject_account_id(&self) -> Option<&str> {
        self.subject_account_id.as_deref()
    }

    /// `metadata.recipient_account_id` (v2): the account the delivery is for.
    pub fn recipient_account_id(&self) -> Option<&str> {
        self.recipient_account_id.as_deref()
    }

    /// `metadata.account_id`, which v1 envelopes carry instead of subject and recipient.
    pub fn v1_account_id(&self) -> Option<&str> {
        self.v1_account_id.as_deref()
    }

    /// The account to match the delivery against: `recipient_account_id`, else
    /// `subject_account_id`, else v1's `account_id`.
    pub fn account_id(&self) -> &str {
        self.recipient_account_id
            .as_deref()
            .or(self.subject_account_id.as_deref())
            .or(self.v1_account_id.as_deref())
            // `parse_envelope` refuses an envelope without any of the three.
            .unwrap_or_default()
    }

    /// `metadata.product_instance_id`.
    pub fn product_instance_id(&self) -> Option<&str> {
        self.product_instance_id.as_deref()
    }

    /// `metadata.webhook_id`.
    pub fn webhook_id(&self) -> Option<&str> {
        self.webhook_id.as_deref()
    }

    /// `metadata.live`: `true` for production events, `false` for test events, `None` when
    /// Klarna did not say.
    pub fn live(&self) -> Option<bool> {
        self.live
    }

    /// `payload` as sent; `Null` when the envelope had none.
    pub fn payload(&self) -> &Value {
        &self.payload
    }

    /// The payload, taken out.
    pub fn into_payload(self) -> Value {
        self.payload
    }
}

/// Reads a delivery's envelope: `{metadata: {event_type, event_id, event_version,
/// occurred_at, correlation_id, subject_account_id, recipient_account_id, product_instance_id,
/// webhook_id, live}, payload}`, or v1's `metadata.account_id` in place of subject and
/// recipient. Required: `event_type` and `event_id` (non-empty, at most
/// [`MAX_EVENT_ID_CHARS`] characters, no control characters) and at least one account id.
/// The account ids, when present, must be strings. The other fields only describe the
/// delivery and must not cost it (a refused delivery is retried, then given up): a number or
/// a boolean is read as its text, anything else as missing; `live` is a boolean or the text
/// `true` / `false`. Unknown fields are ignored, and so is a UTF-8 byte order mark before the
/// JSON. Verify the signature first (over the raw body, mark included): this only reads.
pub fn parse_envelope(body: &[u8]) -> Result<WebhookEnvelope, WebhookError> {
    let body = crate::transport::without_byte_order_mark(body);
    let Ok(Value::Object(mut envelope)) = serde_json::from_slice::<Value>(body) else {
        return Err(WebhookError::NotAnObject);
    };
    let Some(Value::Object(metadata)) = envelope.get("metadata") else {
        return Err(WebhookError::NoMetadata);
    };
    let required = |name: &'static str, field: &'static str| {
        let value = text(metadata, name, field)?.ok_or(WebhookError::Missing(field))?;
        if value.chars().count() > MAX_EVENT_ID_CHARS {
            return Err(WebhookError::Invalid {
                field,
                reason: "longer than 255 characters",
            });
        }
        if value.chars().any(char::is_control) {
            return Err(WebhookError::Invalid {
                field,
                reason: "holds control characters",
            });
        }
        Ok(value)
    };
    let event_type = required("event_type", "metadata.event_type")?;
    let event_id = required("event_id", "metadata.event_id")?;
    let subject_account_id = text(
        metadata,
        "subject_account_id",
        "metadata.subject_account_id",
    )?;
    let recipient_account_id = text(
        metadata,
        "recipient_account_id",
        "metadata.recipient_account_id",
    )?;
    let v1_account_id = text(metadata, "account_id", "metadata.account_id")?;
    if subject_account_id.is_none() && recipient_account_id.is_none() && v1_account_id.is_none() {
        return Err(WebhookError::Missing(
            "metadata.recipient_account_id, subject_account_id or account_id",
        ));
    }
    let live = match metadata.get("live") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(live)) => Some(*live),
        Some(Value::String(live)) if live.trim().eq_ignore_ascii_case("true") => Some(true),
        Some(Value::String(live)) if live.trim().eq_ignore_ascii_case("false") => Some(false),
        Some(_) => {
            return Err(WebhookError::Invalid {
                field: "metadata.live",
                reason: "not a boolean",
            });
        }
    };
    let parsed = WebhookEnvelope {
        event_type,
        event_id,
        event_version: descriptive_text(metadata, "event_version"),
        occurred_at: descriptive_text(metadata, "occurred_at"),
        correlation_id: descriptive_text(metadata, "correlation_id"),
        subject_account_id,
        recipient_account_id,
        v1_account_id,
        product_instance_id: descriptive_text(metadata, "product_instance_id"),
        webhook_id: descriptive_text(metadata, "webhook_id"),
        live,
        payload: Value::Null,
    };
    Ok(WebhookEnvelope {
        payload: envelope.remove("payload").unwrap_or(Value::Null),
        ..parsed
    })
}

/// A field that only describes the delivery: its text (a number's or a boolean's too), `None`
/// when missing, blank, or an object or array.
fn descriptive_text(object: &Map<String, Value>, name: &str) -> Option<String> {
    let text = match object.get(name)? {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null | Value::Array(_) | Value::Object(_) => return None,
    };
    Some(text).filter(|s| !s.is_empty())
}

/// An optional string field: `None` when missing, `null` or blank; an error when of another
/// type.
fn text(
    object: &Map<String, Value>,
    name: &str,
    field: &'static str,
) -> Result<Option<String>, WebhookError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_owned()).filter(|s| !s.is_empty())),
        Some(_) => Err(WebhookError::Invalid {
            field,
            reason: "not a string",
        }),
    }
}

/// The payload of a [`REFUNDED_EVENT_TYPE`](crate::REFUNDED_EVENT_TYPE) event: a refund
/// Klarna made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundedEvent {
    /// The refunded transaction's KRN.
    pub payment_transaction_id: String,
    /// Klarna's id of the refund, when the payload names it.
    pub payment_refund_id: Option<String>,
    /// The reference the refund was sent with, when the payload names it.
    pub payment_refund_reference: Option<String>,
    /// Refunded amount, minor units.
    pub amount: Option<i64>,
    /// ISO 4217, upper case.
    pub currency: Option<String>,
}

impl RefundedEvent {
    /// Reads the payload (field names in `partner_contract.rs`). Requires
    /// `payment_transaction_id`, and `payment_refund_id` or `payment_refund_reference` (to tell
    /// which refund it is); blank strings count as missing. Unknown fields are ignored; a
    /// present `amount` must be an integer.
    pub fn from_payload(payload: &Value) -> Result<Self, WebhookError> {
        if !payload.is_object() {
            return Err(WebhookError::Invalid {
                field: "payload",
                reason: "not a JSON object",
            });
        }
        let wire = RefundedPayloadWire::deserialize(payload)
            .map_err(|e| WebhookError::Payload(e.to_string()))?;
        let non_blank =
            |s: Option<String>| s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        let payment_transaction_id = non_blank(wire.payment_transaction_id)
            .ok_or(WebhookError::Missing("payload.payment_transaction_id"))?;
        let payment_refund_id = non_blank(wire.payment_refund_id);
        let payment_refund_reference = non_blank(wire.payment_refund_reference);
        if payment_refund_id.is_none() && payment_refund_reference.is_none() {
            return Err(WebhookError::Missing(
                "payload.payment_refund_id or payment_refund_reference",
            ));
        }
        Ok(Self {
            payment_transaction_id,
            payment_refund_id,
            payment_refund_reference,
            amount: wire.amount,
            currency: non_blank(wire.currency).map(|c| c.to_ascii_uppercase()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "whsec_test_4b1f0c";
    const BODY: &[u8] = br#"{"metadata":{"event_type":"payment.transaction.refunded","event_id":"e-1","recipient_account_id":"krn:partner:global:account:test:1"},"payload":{}}"#;
    /// HMAC-SHA256 of [`BODY`] keyed by [`SECRET`], computed once with an independent tool
    /// (OpenSSL), so a change in how the key or body is fed in is caught.
    const BODY_SIGNATURE: &str = "7566f159bf63cc68e2f06fcd99ced8744d9b9d7949ea134a137fdeac0eb8a2ee";

    fn secret() -> SecretString {
        SecretString::from(SECRET)
    }

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        mac.update(body);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn a_correct_signature_verifies() {
        let signature = sign(SECRET, BODY);
        assert_eq!(signature.len(), 64);
        assert!(verify_signature(&secret(), BODY, &signature));
        assert_eq!(signature, BODY_SIGNATURE);
        assert!(verify_signature(&secret(), BODY, BODY_SIGNATURE));
    }

    #[test]
    fn rfc_4231_vector() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        assert!(verify_signature(
            &SecretString::from("Jefe"),
            b"what do ya want for nothing?",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        ));
    }

    #[test]
    fn wrong_signatures_fail() {
        let good = sign(SECRET, BODY);
        assert!(!verify_signature(&SecretString::from("other"), BODY, &good));
        assert!(!verify_signature(&secret(), b"{}", &good));
        let mut tampered = BODY.to_vec();
        tampered.push(b' ');
        assert!(!verify_signature(&secret(), &tampered, &good));
        let mut flipped = good.clone().into_bytes();
        flipped[10] = if flipped[10] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap_or_default();
        assert!(!verify_signature(&secret(), BODY, &flipped));
    }

    #[test]
    fn malformed_signatures_fail() {
        let good = sign(SECRET, BODY);
        for bad in [
            good.to_ascii_uppercase(),
            good[..62].to_owned(),
            format!("{good}00"),
            format!(" {good}"),
            format!("sha256={good}"),
            String::new(),
            "zz".repeat(32),
            good.replacen(|c: char| c.is_ascii_digit(), "g", 1),
        ] {
            assert!(!verify_signature(&secret(), BODY, &bad), "{bad}");
        }
    }

    #[test]
    fn v2_envelopes_are_read() {
        let body = json!({
            "metadata": {
                "event_type": "payment.transaction.refunded",
                "event_id": "6b1f3c2e-0d4a-4b8e-9f1a-2c3d4e5f6a70",
                "event_version": "v2",
                "occurred_at": "2025-05-01T10:00:00Z",
                "correlation_id": "c-1",
                "subject_account_id": "krn:partner:global:account:live:SUBJECT",
                "recipient_account_id": "krn:partner:global:account:live:RECIPIENT",
                "product_instance_id": "krn:partner:product-instance:1",
                "webhook_id": "krn:partner:global:notification:webhook:1",
                "live": true,
                "future": {"x": 1}
            },
            "payload": {"payment_transaction_id": "krn:t", "payment_refund_id": "krn:r"}
        });
        let e = parse_envelope(body.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.event_type(), "payment.transaction.refunded");
        assert_eq!(e.event_id(), "6b1f3c2e-0d4a-4b8e-9f1a-2c3d4e5f6a70");
        assert_eq!(e.event_version(), Some("v2"));
        assert_eq!(e.occurred_at(), Some("2025-05-01T10:00:00Z"));
        assert_eq!(e.correlation_id(), Some("c-1"));
        assert_eq!(e.account_id(), "krn:partner:global:account:live:RECIPIENT");
        assert_eq!(
            e.subject_account_id(),
            Some("krn:partner:global:account:live:SUBJECT")
        );
        assert_eq!(e.v1_account_id(), None);
        assert_eq!(
            e.product_instance_id(),
            Some("krn:partner:product-instance:1")
        );
        assert_eq!(
            e.webhook_id(),
            Some("krn:partner:global:notification:webhook:1")
        );
        assert_eq!(e.live(), Some(true));
        assert_eq!(e.payload()["payment_refund_id"], "krn:r");
        assert_eq!(e.event_type(), crate::REFUNDED_EVENT_TYPE);
        let refunded = RefundedEvent::from_payload(e.payload()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(refunded.payment_refund_id.as_deref(), Some("krn:r"));
    }

    #[test]
    fn v1_envelopes_and_account_precedence() {
        let e = parse_envelope(
            br#"{"metadata": {"event_type": "payment.transaction.captured", "event_id": "e",
                 "account_id": "krn:v1"}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.account_id(), "krn:v1");
        assert_eq!(e.v1_account_id(), Some("krn:v1"));
        assert_eq!(e.live(), None);
        assert_eq!(e.event_version(), None);
        assert_eq!(e.payload(), &Value::Null);
        let e = parse_envelope(
            br#"{"metadata": {"event_type": "t", "event_id": "e", "account_id": "krn:v1",
                 "subject_account_id": "krn:subject", "recipient_account_id": " "}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.account_id(), "krn:subject");
        assert_eq!(e.recipient_account_id(), None);
        assert_eq!(e.into_payload(), Value::Null);
    }

    #[test]
    fn malformed_envelopes_are_refused_with_a_reason() {
        let long = "e".repeat(256);
        let cases: Vec<(Vec<u8>, WebhookError)> = vec![
            (b"".to_vec(), WebhookError::NotAnObject),
            (b"not json".to_vec(), WebhookError::NotAnObject),
            (b"[1, 2]".to_vec(), WebhookError::NotAnObject),
            (b"{}".to_vec(), WebhookError::NoMetadata),
            (br#"{"metadata": "x"}"#.to_vec(), WebhookError::NoMetadata),
            (
                br#"{"metadata": {"event_id": "e", "account_id": "a"}}"#.to_vec(),
                WebhookError::Missing("metadata.event_type"),
            ),
            (
                br#"{"metadata": {"event_type": "t", "event_id": " ", "account_id": "a"}}"#
                    .to_vec(),
                WebhookError::Missing("metadata.event_id"),
            ),
            (
                br#"{"metadata": {"event_type": "t", "event_id": 7, "account_id": "a"}}"#
                    .to_vec(),
                WebhookError::Invalid {
                    field: "metadata.event_id",
                    reason: "not a string",
                },
            ),
            (
                json!({"metadata": {"event_type": "t", "event_id": long, "account_id": "a"}})
                    .to_string()
                    .into_bytes(),
                WebhookError::Invalid {
                    field: "metadata.event_id",
                    reason: "longer than 255 characters",
                },
            ),
            (
                br#"{"metadata": {"event_type": "t", "event_id": "a\u0000b", "account_id": "a"}}"#
                    .to_vec(),
                WebhookError::Invalid {
                    field: "metadata.event_id",
                    reason: "holds control characters",
                },
            ),
            (
                br#"{"metadata": {"event_type": "t", "event_id": "e"}}"#.to_vec(),
                WebhookError::Missing(
                    "metadata.recipient_account_id, subject_account_id or account_id",
                ),
            ),
            (
                br#"{"metadata": {"event_type": "t", "event_id": "e", "account_id": "a", "live": "yes"}}"#
                    .to_vec(),
                WebhookError::Invalid {
                    field: "metadata.live",
                    reason: "not a boolean",
                },
            ),
            (
                br#"{"metadata": {"event_type": "t", "event_id": "e", "account_id": 5}}"#
                    .to_vec(),
                WebhookError::Invalid {
                    field: "metadata.account_id",
                    reason: "not a string",
                },
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                parse_envelope(&body),
                Err(want),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
        let exactly_255 = json!({"metadata": {"event_type": "t", "event_id": "é".repeat(255),
                                              "account_id": "a"}});
        assert!(parse_envelope(exactly_255.to_string().as_bytes()).is_ok());
    }

    #[test]
    fn descriptive_fields_of_another_type_do_not_cost_the_delivery() {
        let body = json!({"metadata": {"event_type": "t", "event_id": "e", "account_id": "a",
                                       "event_version": 2, "occurred_at": {"at": 1},
                                       "correlation_id": true, "webhook_id": [1],
                                       "product_instance_id": null, "live": " FALSE "}});
        let mut bytes = b"\xEF\xBB\xBF".to_vec();
        bytes.extend_from_slice(body.to_string().as_bytes());
        let envelope = parse_envelope(&bytes).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(envelope.event_version.as_deref(), Some("2"));
        assert_eq!(envelope.correlation_id.as_deref(), Some("true"));
        assert_eq!(envelope.occurred_at, None);
        assert_eq!(envelope.webhook_id, None);
        assert_eq!(envelope.product_instance_id, None);
        assert_eq!(envelope.live, Some(false));
        assert_eq!(envelope.event_id, "e");
    }

    #[test]
    fn refunded_payloads_are_read_leniently() {
        let r = RefundedEvent::from_payload(&json!({
            "payment_transaction_id": "krn:t",
            "payment_refund_reference": "ref-1",
            "amount": 1500,
            "currency": "sek",
            "state": "SUCCEEDED"
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r,
            RefundedEvent {
                payment_transaction_id: "krn:t".into(),
                payment_refund_id: None,
                payment_refund_reference: Some("ref-1".into()),
                amount: Some(1500),
                currency: Some("SEK".into()),
            }
        );
        let minimal = RefundedEvent::from_payload(
            &json!({"payment_transaction_id": "krn:t", "payment_refund_id": "krn:r"}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(minimal.amount, None);
        assert_eq!(minimal.currency, None);
    }

    #[test]
    fn refunded_payloads_need_their_ids() {
        assert_eq!(
            RefundedEvent::from_payload(&json!({"payment_refund_id": "krn:r"})),
            Err(WebhookError::Missing("payload.payment_transaction_id"))
        );
        assert_eq!(
            RefundedEvent::from_payload(
                &json!({"payment_transaction_id": "krn:t", "payment_refund_id": ""})
            ),
            Err(WebhookError::Missing(
                "payload.payment_refund_id or payment_refund_reference"
            ))
        );
        assert!(matches!(
            RefundedEvent::from_payload(&json!({"payment_transaction_id": "krn:t",
                                                "payment_refund_id": "r", "amount": 1.5})),
            Err(WebhookError::Payload(_))
        ));
        assert!(matches!(
            RefundedEvent::from_payload(&json!({"payment_transaction_id": 1})),
            Err(WebhookError::Payload(_))
        ));
        assert_eq!(
            RefundedEvent::from_payload(&Value::Null),
            Err(WebhookError::Invalid {
                field: "payload",
                reason: "not a JSON object"
            })
        );
    }
}
