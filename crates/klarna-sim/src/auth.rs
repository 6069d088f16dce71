//! HTTP Basic authentication of Klarna calls against the configured API credential.

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
}
