//! Injected faults: for the next N Klarna calls matching a method and path, answer with a
//! status, add latency, or commit the operation and then hold or drop the answer.
//!
//! Faults apply to both Klarna APIs (Order Management and the partner Payments API), never to
//! `/__admin/`. A fault's answer is never stored in the idempotency memory, so a replay never
//! returns a fault.

use std::borrow::Cow;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};

/// What to inject for matching requests.
///
/// JSON form (admin API): internally tagged by `"type"` in snake case, e.g.
/// `{"type": "status", "status": 503, "retry_after_secs": 1}`, `{"type": "latency", "millis":
/// 200}`, `{"type": "commit_then_hold", "millis": 1000}`, `{"type": "commit_then_drop"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer with `status` without executing anything. `body` is sent as is (JSON content
    /// type if it parses as JSON, else text); `Some("")` sends an empty body without any
    /// content type, as Klarna's DDoS protection does with its bare 403. Without `body` the
    /// answer is the error body of the API called, with the code usual for that status: Order
    /// Management's (`TEMPORARILY_UNAVAILABLE` for 502-504, `INTERNAL_SERVER_ERROR` for 500,
    /// ...) or the partner API's (`TECHNICAL_ERROR`/`INTERNAL_ERROR` for 5xx, `ACCESS_ERROR`/
    /// `OPERATION_FORBIDDEN` for 403, ...). `retry_after_secs` sets `Retry-After`. A status
    /// that is not a valid HTTP status becomes 500.
    Status {
        /// HTTP status to answer with.
        status: u16,
        /// Raw body to send instead of the default error body.
        #[serde(default)]
        body: Option<String>,
        /// Value of a `Retry-After` header.
        #[serde(default)]
        retry_after_secs: Option<u64>,
    },
    /// Wait `millis`, then process the request normally.
    Latency {
        /// Added delay in milliseconds.
        millis: u64,
    },
    /// Execute the request (and remember it under its idempotency key), then wait `millis`
    /// before answering.
    CommitThenHold {
        /// Delay between commit and answer in milliseconds.
        millis: u64,
    },
    /// Execute the request (and remember it under its idempotency key), then close the
    /// connection before any response header is sent. Over HTTP/2 the whole connection is
    /// closed, other streams on it included, as when a TCP connection breaks.
    CommitThenDrop,
}

impl FaultKind {
    /// Short name used in the request log.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Status { .. } => "status",
            Self::Latency { .. } => "latency",
            Self::CommitThenHold { .. } => "commit_then_hold",
            Self::CommitThenDrop => "commit_then_drop",
        }
    }
}

/// A fault for the next `times` matching calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultSpec {
    /// HTTP method to match (case-insensitive); `None` matches any method.
    #[serde(default)]
    pub method: Option<String>,
    /// Request path (without query) to match exactly, or a prefix when it ends with `*`
    /// (`/ordermanagement/v1/orders/*` matches every order call). It matches the path as
    /// received and also percent-decoded (both sides), so a partner path naming a KRN matches
    /// whether the client sent its `:` as is or as `%3A`.
    pub path: String,
    /// How many matching calls get the fault (0 arms nothing). Defaults to 1 in JSON.
    #[serde(default = "one")]
    pub times: u32,
    /// What happens to those calls.
    pub kind: FaultKind,
}

fn one() -> u32 {
    1
}

/// The path percent-decoded (invalid UTF-8 replaced), or as is when there is nothing to decode.
pub(crate) fn decode_path(path: &str) -> Cow<'_, str> {
    percent_decode_str(path).decode_utf8_lossy()
}

fn path_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => path == pattern,
    }
}

impl FaultSpec {
    /// `decoded_pattern` is `self.path` percent-decoded, `decoded` the request path decoded.
    fn matches(&self, decoded_pattern: &str, method: &str, path: &str, decoded: &str) -> bool {
        let method_ok = self
            .method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method));
        method_ok && (path_matches(&self.path, path) || path_matches(decoded_pattern, decoded))
    }
}

/// One armed fault: the spec, its path decoded once, and how many uses are left.
#[derive(Debug)]
struct Armed {
    spec: FaultSpec,
    decoded_path: String,
    left: u32,
}

/// Armed faults, first armed first matched.
#[derive(Debug, Default)]
pub(crate) struct FaultTable {
    /// Number of armed faults, read without the lock so that the common no-fault case costs
    /// one atomic load.
    armed: AtomicUsize,
    faults: Mutex<Vec<Armed>>,
}

impl FaultTable {
    pub(crate) fn arm(&self, spec: FaultSpec) {
        if spec.times == 0 {
            return;
        }
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults.push(Armed {
            decoded_path: decode_path(&spec.path).into_owned(),
            left: spec.times,
            spec,
        });
        self.armed.store(faults.len(), Ordering::Release);
    }

    pub(crate) fn clear(&self) {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults.clear();
        self.armed.store(0, Ordering::Release);
    }

    /// Consumes one use of the first fault matching the call, if any.
    pub(crate) fn take(&self, method: &str, path: &str) -> Option<FaultKind> {
        if self.armed.load(Ordering::Acquire) == 0 {
            return None;
        }
        let decoded = decode_path(path);
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let index = faults.iter().position(|armed| {
            armed
                .spec
                .matches(&armed.decoded_path, method, path, &decoded)
        })?;
        let armed = &mut faults[index];
        let kind = armed.spec.kind.clone();
        armed.left -= 1;
        if armed.left == 0 {
            faults.remove(index);
        }
        self.armed.store(faults.len(), Ordering::Release);
        Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(method: Option<&str>, path: &str, times: u32) -> FaultSpec {
        FaultSpec {
            method: method.map(str::to_owned),
            path: path.to_owned(),
            times,
            kind: FaultKind::CommitThenDrop,
        }
    }

    fn matches(spec: &FaultSpec, method: &str, path: &str) -> bool {
        spec.matches(&decode_path(&spec.path), method, path, &decode_path(path))
    }

    #[test]
    fn matches_exact_prefix_and_method() {
        assert!(matches(&spec(None, "/a/b", 1), "GET", "/a/b"));
        assert!(!matches(&spec(None, "/a/b", 1), "GET", "/a/bc"));
        assert!(matches(&spec(None, "/a/*", 1), "POST", "/a/bc"));
        assert!(matches(&spec(Some("post"), "/a/*", 1), "POST", "/a/bc"));
        assert!(!matches(&spec(Some("GET"), "/a/*", 1), "POST", "/a/bc"));
    }

    #[test]
    fn matches_encoded_and_plain_colons_alike() {
        let plain = "/v2/payment/captures/krn:payment:eu1:transaction:t:capture:1/refunds";
        let encoded =
            "/v2/payment/captures/krn%3Apayment%3Aeu1%3Atransaction%3At%3Acapture%3A1/refunds";
        assert!(matches(&spec(None, plain, 1), "POST", encoded));
        assert!(matches(&spec(None, encoded, 1), "POST", plain));
        assert!(matches(&spec(None, plain, 1), "POST", plain));
        assert!(!matches(
            &spec(None, plain, 1),
            "POST",
            "/v2/payment/captures/x/refunds"
        ));
    }

    #[test]
    fn counts_down_and_disarms() {
        let table = FaultTable::default();
        table.arm(spec(None, "/x", 2));
        table.arm(spec(None, "/y", 0));
        assert!(table.take("GET", "/y").is_none());
        assert!(table.take("GET", "/x").is_some());
        assert!(table.take("GET", "/x").is_some());
        assert!(table.take("GET", "/x").is_none());
        table.arm(spec(None, "/x", 5));
        table.clear();
        assert!(table.take("GET", "/x").is_none());
    }

    #[test]
    fn json_form() {
        let spec: FaultSpec =
            serde_json::from_str(r#"{"path": "/p", "kind": {"type": "status", "status": 503}}"#)
                .unwrap();
        assert_eq!(spec.times, 1);
        assert_eq!(
            spec.kind,
            FaultKind::Status {
                status: 503,
                body: None,
                retry_after_secs: None
            }
        );
        let drop: FaultKind = serde_json::from_str(r#"{"type": "commit_then_drop"}"#).unwrap();
        assert_eq!(drop, FaultKind::CommitThenDrop);
    }
}
