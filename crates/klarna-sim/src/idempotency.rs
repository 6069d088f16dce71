//! Memory of `Klarna-Idempotency-Key`s: the first response stored for a key is replayed for
//! 24 hours of simulator time, whatever the later requests carry. Optionally
//! ([`KeysInUse`]), a request under a key whose first request is still being executed is
//! answered 409.
//!
//! Which responses are remembered is decided by the caller ([`is_storable`]). Expired entries
//! are evicted lazily: each access pops the expired heads of an insertion-ordered queue, so the
//! cost is amortised O(1) per request and nothing scans the whole map.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use http::StatusCode;
use time::{Duration, OffsetDateTime};

use crate::response::SimResponse;

/// How long a key is remembered.
pub(crate) const WINDOW: Duration = Duration::hours(24);

/// Longest accepted key (Klarna: 1 to 255 characters).
pub(crate) const MAX_KEY_LEN: usize = 255;

/// Whether a response is remembered under its key: 2xx and 4xx, except 401 and 429 (those say
/// nothing about the operation and must not pin a retry to a failure). 5xx are never stored.
pub(crate) fn is_storable(status: StatusCode) -> bool {
    (status.is_success() || status.is_client_error())
        && status != StatusCode::UNAUTHORIZED
        && status != StatusCode::TOO_MANY_REQUESTS
}

#[derive(Debug)]
struct Entry {
    stored_at: OffsetDateTime,
    response: SimResponse,
}

/// Key (already scoped by API credential: username, or partner API key) to first response.
#[derive(Debug, Default)]
pub(crate) struct IdempotencyStore {
    entries: HashMap<Arc<str>, Entry>,
    by_age: VecDeque<(OffsetDateTime, Arc<str>)>,
}

impl IdempotencyStore {
    /// The stored response for `key`, if one was stored less than 24 h before `now`.
    pub(crate) fn get(&mut self, key: &str, now: OffsetDateTime) -> Option<&SimResponse> {
        self.evict_expired(now);
        self.entries
            .get(key)
            .filter(|entry| now - entry.stored_at < WINDOW)
            .map(|entry| &entry.response)
    }

    /// Remembers `response` under `key` from `now` on (replacing an expired entry).
    pub(crate) fn insert(&mut self, key: &str, response: SimResponse, now: OffsetDateTime) {
        self.evict_expired(now);
        let key: Arc<str> = Arc::from(key);
        self.by_age.push_back((now, Arc::clone(&key)));
        self.entries.insert(
            key,
            Entry {
                stored_at: now,
                response,
            },
        );
    }

    /// Forgets `key` (the commit-then-drop-forgetting fault).
    pub(crate) fn forget(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Number of remembered keys (expired ones not yet evicted included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn evict_expired(&mut self, now: OffsetDateTime) {
        while let Some((stored_at, _)) = self.by_age.front() {
            if now - *stored_at < WINDOW {
                break;
            }
            if let Some((stored_at, key)) = self.by_age.pop_front() {
                // The key may have been stored again after expiring; only drop the entry this
                // queue slot stands for.
                if self
                    .entries
                    .get(&key)
                    .is_some_and(|entry| entry.stored_at == stored_at)
                {
                    self.entries.remove(&key);
                }
            }
        }
    }
}

/// Keys whose first request is still on its way through the pipeline (from the fault step to
/// its execution), for the optional answer 409 to a duplicate arriving meanwhile. Klarna does
/// not document what it answers to concurrent duplicates; the common idempotency convention
/// is 409, and a client must cope with either. Off by default: duplicates then wait for the
/// state lock and get the first one's answer.
#[derive(Debug, Default)]
pub(crate) struct KeysInUse {
    enabled: AtomicBool,
    // Shared with each guard, which may outlive the request's future (a hold-then-commit
    // fault executes on a task of its own).
    keys: Arc<Mutex<HashSet<String>>>,
}

/// A request under a key whose first request is still running, while [`KeysInUse`] is on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct KeyBusy;

impl KeysInUse {
    /// Turns the 409 for keys in use on or off.
    pub(crate) fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Marks `key` (already scoped by credential) in use until the guard is dropped; `Ok(None)`
    /// while the mode is off.
    pub(crate) fn enter(&self, key: String) -> Result<Option<KeyInUse>, KeyBusy> {
        if !self.enabled.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if !keys.insert(key.clone()) {
            return Err(KeyBusy);
        }
        Ok(Some(KeyInUse {
            keys: Arc::clone(&self.keys),
            key,
        }))
    }
}

/// A key in use; dropping it (the request executed, failed, or its client went away) frees it.
#[derive(Debug)]
pub(crate) struct KeyInUse {
    keys: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl Drop for KeyInUse {
    fn drop(&mut self) {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: StatusCode) -> SimResponse {
        SimResponse::empty(status)
    }

    #[test]
    fn a_key_is_in_use_until_its_guard_is_dropped_and_only_when_enabled() {
        let keys = KeysInUse::default();
        assert!(matches!(keys.enter("u\nk".into()), Ok(None)));
        keys.set_enabled(true);
        let first = keys.enter("u\nk".into());
        assert!(matches!(first, Ok(Some(_))));
        assert_eq!(keys.enter("u\nk".into()).err(), Some(KeyBusy));
        assert!(matches!(keys.enter("v\nk".into()), Ok(Some(_))));
        drop(first);
        assert!(matches!(keys.enter("u\nk".into()), Ok(Some(_))));
    }

    #[test]
    fn storable_statuses() {
        assert!(is_storable(StatusCode::CREATED));
        assert!(is_storable(StatusCode::NO_CONTENT));
        assert!(is_storable(StatusCode::FORBIDDEN));
        assert!(is_storable(StatusCode::UNPROCESSABLE_ENTITY));
        assert!(!is_storable(StatusCode::UNAUTHORIZED));
        assert!(!is_storable(StatusCode::TOO_MANY_REQUESTS));
        assert!(!is_storable(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(!is_storable(StatusCode::SERVICE_UNAVAILABLE));
    }

    #[test]
    fn entries_expire_after_24_hours_and_are_evicted() {
        let mut store = IdempotencyStore::default();
        let t0 = OffsetDateTime::now_utc();
        store.insert("u\nk1", response(StatusCode::CREATED), t0);
        store.insert(
            "u\nk2",
            response(StatusCode::CREATED),
            t0 + Duration::hours(1),
        );
        assert!(store.get("u\nk1", t0 + Duration::hours(23)).is_some());
        assert!(store.get("u\nk1", t0 + Duration::hours(24)).is_none());
        assert_eq!(store.len(), 1, "k1 evicted, k2 kept");
        // Re-storing an expired key and then evicting its old slot keeps the new entry.
        store.insert(
            "u\nk2",
            response(StatusCode::NO_CONTENT),
            t0 + Duration::hours(26),
        );
        assert_eq!(
            store
                .get("u\nk2", t0 + Duration::hours(26))
                .map(|r| r.status),
            Some(StatusCode::NO_CONTENT)
        );
        assert!(store.get("u\nk2", t0 + Duration::hours(49)).is_some());
        assert!(store.get("u\nk2", t0 + Duration::hours(50)).is_none());
        assert_eq!(store.len(), 0);
    }
}
