//! Injected faults: for the next N Klarna calls matching a method and path, answer with a
//! status, add latency, or commit the operation and then hold or drop the answer.
//!
//! Faults only apply to the Klarna API, never to `/__admin/`. A fault's answer is never stored
//! in the idempotency memory, so a replay never returns a fault.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

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
    /// type if it parses as JSON, else text); without it the body is a Klarna error body with
    /// the code usual for that status (`TEMPORARILY_UNAVAILABLE` for 502-504,
    /// `INTERNAL_SERVER_ERROR` for 500, ...). `retry_after_secs` sets `Retry-After`. A status
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
    /// (`/ordermanagement/v1/orders/*` matches every order call).
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

impl FaultSpec {
    fn matches(&self, method: &str, path: &str) -> bool {
        let method_ok = self
            .method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method));
        let path_ok = match self.path.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == self.path,
        };
        method_ok && path_ok
    }
}

/// Armed faults, first armed first matched.
#[derive(Debug, Default)]
pub(crate) struct FaultTable {
    /// Number of armed faults, read without the lock so that the common no-fault case costs
    /// one atomic load.
    armed: AtomicUsize,
    faults: Mutex<Vec<(FaultSpec, u32)>>,
}

impl FaultTable {
    pub(crate) fn arm(&self, spec: FaultSpec) {
        if spec.times == 0 {
            return;
        }
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let times = spec.times;
        faults.push((spec, times));
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
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let index = faults
            .iter()
            .position(|(spec, _)| spec.matches(method, path))?;
        let (spec, left) = &mut faults[index];
        let kind = spec.kind.clone();
        *left -= 1;
        if *left == 0 {
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

    #[test]
    fn matches_exact_prefix_and_method() {
        assert!(spec(None, "/a/b", 1).matches("GET", "/a/b"));
        assert!(!spec(None, "/a/b", 1).matches("GET", "/a/bc"));
        assert!(spec(None, "/a/*", 1).matches("POST", "/a/bc"));
        assert!(spec(Some("post"), "/a/*", 1).matches("POST", "/a/bc"));
        assert!(!spec(Some("GET"), "/a/*", 1).matches("POST", "/a/bc"));
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
