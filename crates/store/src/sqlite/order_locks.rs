//! In-process resource locks for the SQLite store: one `tokio::sync::Mutex` per (account,
//! resource kind, resource id) in use, created on demand and removed when nobody holds or waits for it. Enough because an
//! SQLite store is used by one process only.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use refund_gateway_domain::{OrderLock, ResourceKind};
use tokio::sync::OwnedMutexGuard;

type Key = (String, ResourceKind, String);
type Locks = Arc<Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>>;

/// The order locks of one store.
#[derive(Debug, Default, Clone)]
pub(super) struct OrderLocks {
    locks: Locks,
}

// The map is only ever changed by complete, panic-free insertions and removals, so a poisoned
// lock still guards a consistent map.
fn locked(locks: &Locks) -> MutexGuard<'_, HashMap<Key, Arc<tokio::sync::Mutex<()>>>> {
    locks.lock().unwrap_or_else(PoisonError::into_inner)
}

impl OrderLocks {
    /// Waits for, then holds, the lock of (`account`, `kind`, `id`).
    pub(super) async fn lock(
        &self,
        account: &str,
        kind: ResourceKind,
        id: &str,
    ) -> SqliteOrderLock {
        let key = (account.to_owned(), kind, id.to_owned());
        let mutex = locked(&self.locks).entry(key.clone()).or_default().clone();
        // The guard exists before the wait, so a cancelled wait still tidies the map.
        let mut lock = SqliteOrderLock {
            locks: self.locks.clone(),
            key,
            mutex: Some(mutex.clone()),
            held: None,
        };
        lock.held = Some(mutex.lock_owned().await);
        lock
    }

    /// How many orders have a lock entry (held or awaited).
    #[cfg(test)]
    fn entries(&self) -> usize {
        locked(&self.locks).len()
    }
}

/// A held SQLite order lock; released by [`OrderLock::release`] or on drop.
pub struct SqliteOrderLock {
    locks: Locks,
    key: Key,
    mutex: Option<Arc<tokio::sync::Mutex<()>>>,
    held: Option<OwnedMutexGuard<()>>,
}

impl fmt::Debug for SqliteOrderLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteOrderLock")
            .field("account", &self.key.0)
            .field("kind", &self.key.1)
            .field("id", &self.key.2)
            .field("held", &self.held.is_some())
            .finish()
    }
}

impl Drop for SqliteOrderLock {
    fn drop(&mut self) {
        let mut map = locked(&self.locks);
        self.held = None;
        if let Some(mutex) = self.mutex.take() {
            // Under the map lock nobody can take a new reference; two left are the map's and
            // ours, so nobody holds or waits for this order.
            if Arc::strong_count(&mutex) <= 2 {
                map.remove(&self.key);
            }
        }
    }
}

#[async_trait]
impl OrderLock for SqliteOrderLock {
    async fn release(self: Box<Self>) {
        drop(self);
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_are_removed_when_unused() {
        let locks = OrderLocks::default();
        let a = locks.lock("acct", ResourceKind::Order, "o1").await;
        let b = locks.lock("acct", ResourceKind::Order, "o2").await;
        assert_eq!(locks.entries(), 2);
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.lock("acct", ResourceKind::Order, "o1").await })
        };
        drop(a);
        let c = waiter.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(locks.entries(), 2);
        drop(b);
        drop(c);
        assert_eq!(locks.entries(), 0);
    }
}
