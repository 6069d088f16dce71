//! Ring buffer of the Klarna calls the simulator received and what it answered.
//!
//! Only Klarna API calls are logged (`/__admin/` calls are not). With capacity 0 nothing is
//! recorded and the request path does not even copy the headers.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;
use time::OffsetDateTime;

/// One logged Klarna call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoggedRequest {
    /// HTTP method (`POST`).
    pub method: String,
    /// Path and query as received (`/ordermanagement/v1/orders/{id}/refunds`).
    pub path: String,
    /// Request headers in received order (values that are not UTF-8 are converted lossily).
    pub headers: Vec<(String, String)>,
    /// Request body (lossy UTF-8; empty when the body was over the 1 MB limit).
    pub body: String,
    /// Status of the answer; for a commit-then-drop fault, the status that was committed but
    /// never sent.
    pub status: u16,
    /// Headers the simulator set on the answer (not the transport's `date`/`content-length`).
    pub response_headers: Vec<(String, String)>,
    /// Body of the answer (lossy UTF-8).
    pub response_body: String,
    /// Simulator time the call was answered.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The answer was replayed from the idempotency memory.
    pub replayed: bool,
    /// The injected fault applied to this call (`status`, `latency`, `commit_then_hold`,
    /// `commit_then_drop`), if any.
    pub fault: Option<String>,
}

impl LoggedRequest {
    /// The first request header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }

    /// The first response header with this name (case-insensitive).
    pub fn response_header(&self, name: &str) -> Option<&str> {
        find(&self.response_headers, name)
    }
}

fn find<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Bounded log; the oldest entries are dropped first.
#[derive(Debug)]
pub(crate) struct RequestLog {
    capacity: usize,
    entries: Mutex<VecDeque<LoggedRequest>>,
}

impl RequestLog {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            // Grows on demand; a large configured capacity costs nothing up front.
            entries: Mutex::new(VecDeque::new()),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.capacity > 0
    }

    pub(crate) fn push(&self, entry: LoggedRequest) {
        if !self.enabled() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        while entries.len() >= self.capacity {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    pub(crate) fn snapshot(&self) -> Vec<LoggedRequest> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().cloned().collect()
    }

    pub(crate) fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(status: u16) -> LoggedRequest {
        LoggedRequest {
            method: "GET".into(),
            path: "/".into(),
            headers: vec![("Authorization".into(), "x".into())],
            body: String::new(),
            status,
            response_headers: Vec::new(),
            response_body: String::new(),
            at: OffsetDateTime::UNIX_EPOCH,
            replayed: false,
            fault: None,
        }
    }

    #[test]
    fn ring_buffer_keeps_the_newest() {
        let log = RequestLog::new(2);
        for status in [200, 201, 202] {
            log.push(entry(status));
        }
        let statuses: Vec<u16> = log.snapshot().iter().map(|e| e.status).collect();
        assert_eq!(statuses, [201, 202]);
        assert_eq!(log.snapshot()[0].header("authorization"), Some("x"));
        log.clear();
        assert!(log.snapshot().is_empty());
    }

    #[test]
    fn zero_capacity_disables() {
        let log = RequestLog::new(0);
        log.push(entry(200));
        assert!(log.snapshot().is_empty());
    }
}
