//! Identifiers: Klarna's resource ids (UUIDs in the Order Management API) and the caller's
//! idempotency key. Klarna's UUIDs are held in canonical lower-case hyphenated form, so the
//! same order typed in upper case is still the same order.

use std::fmt;

use uuid::Uuid;

use crate::validation::InvalidValue;

/// Parses a hyphenated UUID (any case) into its canonical lower-case form. Klarna answers 400
/// `INVALID_ORDER_ID` for anything else; we refuse it before sending.
fn canonical_uuid(value: &str, what: &str) -> Result<String, InvalidValue> {
    // Only the 36-character hyphenated form: uuid also parses braced, URN and simple forms,
    // which Klarna does not take in a path.
    if value.len() != 36 {
        return Err(InvalidValue::new(format!(
            "must be a Klarna {what} id (a UUID like 4e6b2c1a-8f3d-4b7e-9a2c-5d1e0f3b7a64)"
        )));
    }
    Uuid::try_parse(value)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| {
            InvalidValue::new(format!(
                "must be a Klarna {what} id (a UUID like 4e6b2c1a-8f3d-4b7e-9a2c-5d1e0f3b7a64)"
            ))
        })
}

/// Longest capture or refund id accepted in another form than a UUID.
pub const MAX_OPAQUE_ID_CHARS: usize = 255;

/// A capture or refund id. Klarna issues UUIDs, held canonical as an order's; but its published
/// specification types these ids only as strings (unlike an order id, which it answers 400
/// for when not a UUID), so another form is held exactly as given rather than refused, as long
/// as it stands as one path segment: 1 to [`MAX_OPAQUE_ID_CHARS`] ASCII letters, digits, `-`,
/// `_`, `.`, `:` and `~`, a letter or digit among them (`.` or `..` would move the path).
fn resource_id(value: &str, what: &str) -> Result<String, InvalidValue> {
    if let Ok(canonical) = canonical_uuid(value, what) {
        return Ok(canonical);
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '~');
    if value.is_empty()
        || value.len() > MAX_OPAQUE_ID_CHARS
        || !value.chars().all(allowed)
        || !value.chars().any(|c| c.is_ascii_alphanumeric())
    {
        return Err(InvalidValue::new(format!(
            "must be a Klarna {what} id: a UUID like 4e6b2c1a-8f3d-4b7e-9a2c-5d1e0f3b7a64, or 1 \
             to {MAX_OPAQUE_ID_CHARS} ASCII letters, digits, '-', '_', '.', ':' or '~'"
        )));
    }
    Ok(value.to_owned())
}

/// A validated id newtype: `parse` runs `$check` (text -> canonical text) once, and serde
/// validates again on the way in, so a held id is always valid. `$what` says what `parse`
/// accepts, for its docs.
macro_rules! validated_id {
    ($(#[$doc:meta])* $name:ident, $check:expr, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl TryFrom<String> for $name {
            type Error = $crate::validation::InvalidValue;
            fn try_from(value: String) -> Result<Self, $crate::validation::InvalidValue> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl $name {
            #[doc = $what]
            pub fn parse(value: &str) -> Result<Self, $crate::validation::InvalidValue> {
                let check: fn(&str) -> Result<String, $crate::validation::InvalidValue> = $check;
                check(value).map(Self)
            }

            /// The id, in its canonical form.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
pub(crate) use validated_id;

macro_rules! klarna_uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        validated_id!(
            $(#[$doc])*
            $name,
            |value| canonical_uuid(value, $what),
            "Accepts a hyphenated UUID in any case; holds it lower case."
        );
    };
}

klarna_uuid_id!(
    /// A Klarna Order Management order id.
    OrderId,
    "order"
);
validated_id!(
    /// A Klarna capture id, unique within its order.
    CaptureId,
    |value| resource_id(value, "capture"),
    "Accepts a hyphenated UUID in any case, held lower case, or another id of one path segment held as given (see `resource_id`)."
);
validated_id!(
    /// A Klarna refund id, unique within its order.
    RefundId,
    |value| resource_id(value, "refund"),
    "Accepts a hyphenated UUID in any case, held lower case, or another id of one path segment held as given (see `resource_id`)."
);

/// Longest idempotency key, the same limit Klarna puts on its own key.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// The caller's idempotency key: 1-255 characters, no control characters. Every resend of a
/// request under the same key is the same operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Accepts 1 to 255 characters without control characters (they would corrupt log lines
    /// and audit exports, and no sane key needs them).
    pub fn parse(value: &str) -> Result<Self, InvalidValue> {
        if value.is_empty() {
            return Err(InvalidValue::new(
                "is required: choose a key (e.g. a UUID) and reuse it when resending the same request",
            ));
        }
        if value.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS {
            return Err(InvalidValue::new(format!(
                "must be at most {MAX_IDEMPOTENCY_KEY_CHARS} characters"
            )));
        }
        if value.chars().any(char::is_control) {
            return Err(InvalidValue::new("must not contain control characters"));
        }
        Ok(Self(value.to_owned()))
    }

    /// The key as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn order_id_is_canonical_lower_case() {
        let id = OrderId::parse("4E6B2C1A-8F3D-4B7E-9A2C-5D1E0F3B7A64").map(|i| i.to_string());
        assert_eq!(id, Ok("4e6b2c1a-8f3d-4b7e-9a2c-5d1e0f3b7a64".to_owned()));
    }

    #[test]
    fn non_uuid_order_ids_are_refused() {
        for bad in [
            "",
            "order-1",
            "4e6b2c1a8f3d4b7e9a2c5d1e0f3b7a64",
            "{4e6b2c1a-8f3d-4b7e-9a2c-5d1e0f3b7a64}",
            "4e6b2c1a-8f3d-4b7e-9a2c-5d1e0f3b7a6g",
            "7849fd84-47dc-4919-a7ce-xxxxxxxxxx",
            "../../../admin/x-8f3d-4b7e-9a2c-5d1e0",
        ] {
            assert!(OrderId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn capture_and_refund_ids_are_uuids_or_one_path_segment() {
        let capture = |s: &str| CaptureId::parse(s).map(|id| id.to_string());
        assert_eq!(
            capture("4E6B2C1A-8F3D-4B7E-9A2C-5D1E0F3B7A64"),
            Ok("4e6b2c1a-8f3d-4b7e-9a2c-5d1e0f3b7a64".to_owned())
        );
        for kept in [
            "order-1",
            "4E6B2C1A8F3D4B7E9A2C5D1E0F3B7A64",
            "7849fd84-47dc-4919-a7ce-xxxxxxxxxx",
            "cap_01.v2:~x",
        ] {
            assert_eq!(capture(kept), Ok(kept.to_owned()), "{kept:?}");
            assert_eq!(
                RefundId::parse(kept).map(|id| id.to_string()),
                Ok(kept.to_owned())
            );
        }
        assert!(capture(&"a".repeat(MAX_OPAQUE_ID_CHARS)).is_ok());
        for bad in [
            String::new(),
            "a".repeat(MAX_OPAQUE_ID_CHARS + 1),
            "{4e6b2c1a-8f3d-4b7e-9a2c-5d1e0f3b7a64}".into(),
            "../../../admin/x-8f3d-4b7e-9a2c-5d1e0".into(),
            ".".into(),
            "..".into(),
            "-_~".into(),
            "a/b".into(),
            "a?b".into(),
            "a#b".into(),
            "a%2Fb".into(),
            "a b".into(),
            "a\nb".into(),
            "é".into(),
        ] {
            assert!(capture(&bad).is_err(), "{bad:?}");
            assert!(RefundId::parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn idempotency_key_limits() {
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("a").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        // 255 multi-byte characters are 255 characters, not 510 bytes.
        assert!(IdempotencyKey::parse(&"é".repeat(255)).is_ok());
        assert!(IdempotencyKey::parse("a\nb").is_err());
    }

    proptest! {
        #[test]
        fn any_uuid_round_trips(bytes in any::<[u8; 16]>()) {
            let u = Uuid::from_bytes(bytes);
            let upper = u.hyphenated().to_string().to_uppercase();
            let parsed = OrderId::parse(&upper).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(parsed.as_str(), u.hyphenated().to_string());
        }

        #[test]
        fn key_accepted_iff_1_to_255_printable_chars(s in "[a-zA-Z0-9_-]{0,300}") {
            let n = s.chars().count();
            prop_assert_eq!(IdempotencyKey::parse(&s).is_ok(), (1..=255).contains(&n));
        }
    }
}
