//! Authentication of Klarna calls: HTTP Basic with the configured API username and password
//! (Order Management), and the partner API key sent as is after `Basic ` (Payments API).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use http::header::AUTHORIZATION;

/// The one credential the simulator accepts.
#[derive(Debug, Clone)]
pub(crate) struct BasicAuth {
    /// `username:password`, what the Basic credential decodes to.
    credential: Vec<u8>,
    /// `Basic <base64>` exactly as well-behaved clients send it: compared first, so the common
    /// case needs no decoding.
    canonical_header: Vec<u8>,
}

impl BasicAuth {
    pub(crate) fn new(username: &str, password: &str) -> Self {
        let credential = format!("{username}:{password}").into_bytes();
        let canonical_header = format!("Basic {}", STANDARD.encode(&credential)).into_bytes();
        Self {
            credential,
            canonical_header,
        }
    }

    /// Whether the request carries the configured credential (scheme case-insensitive).
    pub(crate) fn check(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes();
        if value == self.canonical_header.as_slice() {
            return true;
        }
        let Ok(text) = std::str::from_utf8(value) else {
            return false;
        };
        let Some((scheme, encoded)) = text.trim().split_once(' ') else {
            return false;
        };
        scheme.eq_ignore_ascii_case("basic")
            && STANDARD
                .decode(encoded.trim())
                .is_ok_and(|decoded| decoded == self.credential)
    }
}

/// The one partner API key the simulator accepts, sent as `Authorization: Basic <key>`: the key
/// itself, not base64 of `key:` (Klarna's partner docs show the key after `Basic `).
#[derive(Debug, Clone)]
pub(crate) struct ApiKeyAuth {
    key: String,
}

impl ApiKeyAuth {
    pub(crate) fn new(key: &str) -> Self {
        Self {
            key: key.to_owned(),
        }
    }

    /// Whether the request carries the configured key (scheme case-insensitive, the key
    /// compared exactly).
    pub(crate) fn check(&self, headers: &HeaderMap) -> bool {
        let Some(text) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Some((scheme, key)) = text.trim().split_once(' ') else {
            return false;
        };
        scheme.eq_ignore_ascii_case("basic") && !self.key.is_empty() && key.trim() == self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn accepts_only_the_configured_credential() {
        let auth = BasicAuth::new("user", "pass");
        let good = STANDARD.encode("user:pass");
        assert!(auth.check(&headers(&format!("Basic {good}"))));
        assert!(auth.check(&headers(&format!("basic  {good}"))));
        assert!(!auth.check(&headers(&format!("Bearer {good}"))));
        assert!(!auth.check(&headers(&format!(
            "Basic {}",
            STANDARD.encode("user:wrong")
        ))));
        assert!(!auth.check(&headers("Basic !!!")));
        assert!(!auth.check(&HeaderMap::new()));
    }

    #[test]
    fn api_key_is_the_raw_key_after_basic() {
        let auth = ApiKeyAuth::new("klarna_test_api_abc");
        assert!(auth.check(&headers("Basic klarna_test_api_abc")));
        assert!(auth.check(&headers("basic  klarna_test_api_abc")));
        assert!(!auth.check(&headers(&format!(
            "Basic {}",
            STANDARD.encode("klarna_test_api_abc:")
        ))));
        assert!(!auth.check(&headers("Bearer klarna_test_api_abc")));
        assert!(!auth.check(&headers("Basic klarna_test_api_abd")));
        assert!(!auth.check(&headers("Basic")));
        assert!(!auth.check(&HeaderMap::new()));
    }
}
