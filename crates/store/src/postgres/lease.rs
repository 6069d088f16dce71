//! Resource leases: the exclusive right to operate on one resource of one Klarna account (an
//! order, for [`OperationStore::lock_order`](refund_gateway_domain::OperationStore::lock_order)),
//! held across the Klarna call as a row of `resource_leases`, not on a connection.
//!
//! - **Taking** is one statement that inserts the row, or overwrites one that has expired or
//!   whose replica is gone (`sql::take_lease`). A taker that finds the lease held counts
//!   itself in the row's `waiters` (`sql::await_lease`) and waits for its release, announced
//!   with `NOTIFY` and forwarded to the waiters of this process by [`Releases`], and tries
//!   again; it also tries again after a backoff that grows from [`WAIT_MIN`] to
//!   [`WAIT_MAX`], because a holder that dies, or whose lease expires, announces nothing. A
//!   dead holder's lease is therefore taken within [`WAIT_MAX`] of its session's end.
//! - **Holding** uses no connection: each statement borrows one from the pool for its round
//!   trip. A task renews the lease every third of its length while it is held, so a live
//!   holder keeps it however long Klarna takes, and a holder that stalls loses it at expiry.
//!   The expiry is a backstop; a dead replica's leases are freed by its liveness.
//! - **Releasing** deletes the row if it is still the holder's and announces the release
//!   if a taker counted itself as waiting: a release nobody waits for wakes no session. An
//!   operation's final outcome and the release of its lease are one statement
//!   (`sql::finish_releasing`): one commit and one round trip fewer per operation.
//!   A lock dropped without being released is released by a task spawned from the drop; if
//!   that cannot happen (no runtime, database unreachable), the lease runs out at expiry.

use std::fmt::Write as _;
use std::time::Duration;

use refund_gateway_domain::{Claim, Completion, LeaseHolder, NewOperation, OrderLock, StoreError};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::direct::DirectConnections;
use super::sql::{self, LeaseKey};

/// How long a resource lease lasts without renewal; renewed every third of it while held.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The shortest lease accepted: renewals every third of it must stay well above a round trip.
const MIN_LEASE: Duration = Duration::from_millis(300);

/// The longest lease accepted (a day), which keeps the database's arithmetic far from overflow.
const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);

/// The first wait of a taker that found the lease held.
const WAIT_MIN: Duration = Duration::from_millis(10);

/// The longest wait between two tries of a taker, absent a release notification.
pub(super) const WAIT_MAX: Duration = Duration::from_millis(500);

/// Release notifications a slow waiter may fall behind by; one that falls further behind
/// just tries again.
const RELEASES_BUFFER: usize = 1024;

/// The first wait before listening again after the listening session failed.
const RELISTEN_MIN: Duration = Duration::from_millis(500);

/// The longest wait between two attempts to listen again.
const RELISTEN_MAX: Duration = Duration::from_secs(10);

/// `lease` within the accepted bounds.
pub(super) fn bounded_lease(lease: Duration) -> Duration {
    lease.clamp(MIN_LEASE, MAX_LEASE)
}

fn micros(lease: Duration) -> i64 {
    i64::try_from(lease.as_micros()).unwrap_or(i64::MAX)
}

/// The tag announcing the release of (`account`, `kind`, `id`): the first 16 bytes of SHA-256
/// over the three, length-prefixed, in hex. The same in every process and version, and short
/// enough for a `NOTIFY` payload whatever the ids; two resources sharing a tag only wake each
/// other's waiters needlessly.
pub(super) fn resource_tag(account: &str, kind: &str, id: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"refund-gateway resource lease\0");
    for part in [account, kind, id] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize()[..16]
        .iter()
        .fold(String::with_capacity(32), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// The release notifications of the database, forwarded to this process's waiters by a task
/// that listens on a session of its own (not one of the pool's). Dropping it stops the task.
#[derive(Debug)]
pub(super) struct Releases {
    sender: broadcast::Sender<String>,
    task: JoinHandle<()>,
}

impl Drop for Releases {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Releases {
    /// Starts listening with `options`. Never fails: while the session is down, waiters find
    /// releases by trying again after their backoff.
    pub(super) fn start(options: PgConnectOptions) -> Self {
        let (sender, _) = broadcast::channel(RELEASES_BUFFER);
        let task = tokio::spawn(listen(options, sender.clone()));
        Self { sender, task }
    }

    fn subscribe(&self) -> broadcast::Receiver<String> {
        self.sender.subscribe()
    }
}

/// Forwards the payloads of [`sql::RELEASED_CHANNEL`] to `sender`, listening again (after a
/// backoff) whenever the session fails.
async fn listen(options: PgConnectOptions, sender: broadcast::Sender<String>) {
    // A pool of one, the listener's own: it reconnects the listener's session.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(options);
    let mut backoff = RELISTEN_MIN;
    loop {
        match subscribe(&pool).await {
            Ok(mut listener) => loop {
                match listener.try_recv().await {
                    Ok(Some(notification)) => {
                        backoff = RELISTEN_MIN;
                        // No receivers: nobody is waiting.
                        let _ = sender.send(notification.payload().to_owned());
                    }
                    Ok(None) => tracing::warn!(
                        "resource lease release listener reconnected; releases meanwhile are \
                         found by the waiters' retries"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "resource lease release listener failed");
                        break;
                    }
                }
            },
            Err(e) => tracing::warn!(
                error = %e,
                "resource lease release listener cannot listen yet; retrying"
            ),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RELISTEN_MAX);
    }
}

async fn subscribe(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(sql::RELEASED_CHANNEL).await?;
    Ok(listener)
}

/// Returns when `tag` is announced as released, or when announcements may have been missed
/// (this receiver fell behind); never when the channel is closed (the caller's backoff wakes
/// it instead).
async fn released(receiver: &mut broadcast::Receiver<String>, tag: &str) {
    loop {
        match receiver.recv().await {
            Ok(released) if released == tag => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// What taking a lease needs from the store.
#[derive(Debug, Clone, Copy)]
pub(super) struct Taker<'a> {
    pub(super) pool: &'a PgPool,
    pub(super) direct: &'a DirectConnections,
    pub(super) releases: &'a Releases,
    pub(super) replica: i64,
    pub(super) lease: Duration,
}

/// Waits for, then holds, the lease of (`account`, `kind`, `id`).
pub(super) async fn take(
    taker: Taker<'_>,
    account: &str,
    kind: &'static str,
    id: &str,
) -> Result<PostgresResourceLock, StoreError> {
    // Subscribed before the first try, so a release between a failed try and the wait is
    // not missed.
    let mut releases = taker.releases.subscribe();
    let mut lock = PostgresResourceLock::before_taking(taker, account, kind, id);
    let lease = micros(taker.lease);
    let mut wait = WAIT_MIN;
    while !sql::take_lease(taker.pool, lock.key(), taker.replica, &lock.holder, lease).await? {
        // Counted as waiting, or the release is not announced; released meanwhile: try again.
        if !sql::await_lease(taker.pool, lock.key()).await? {
            continue;
        }
        tokio::select! {
            () = released(&mut releases, &lock.tag) => {}
            () = tokio::time::sleep(wait) => wait = (wait * 2).min(WAIT_MAX),
        }
    }
    lock.hold();
    Ok(lock)
}

/// Claims `op` for `holder` (see [`sql::claim`]) and, when the claim is new, takes the lease
/// of its resource if it is free, in one statement: the lock, when taken, is returned held.
/// A lease held by another is not waited for: the caller takes it with [`take`].
pub(super) async fn claim_locking(
    taker: Taker<'_>,
    op: &NewOperation,
    holder: LeaseHolder,
    now: i64,
    lease_until: i64,
) -> Result<(Claim, Option<PostgresResourceLock>), StoreError> {
    let mut lock = PostgresResourceLock::before_taking(
        taker,
        &op.klarna_account,
        op.resource_kind.as_str(),
        &op.resource_id,
    );
    let claimed = sql::claim_locking(
        taker.pool,
        taker.direct,
        op,
        holder,
        taker.replica,
        now,
        lease_until,
        Some((&lock.holder, micros(taker.lease))),
    )
    .await?;
    match claimed {
        (claim, true) => {
            lock.hold();
            Ok((claim, Some(lock)))
        }
        (claim, false) => {
            // Not taken: there is no row of ours to delete.
            lock.released = true;
            Ok((claim, None))
        }
    }
}

/// Renews the lease every third of `lease` until aborted, or until it finds the lease gone.
async fn renew(
    pool: PgPool,
    account: String,
    kind: &'static str,
    id: String,
    holder: String,
    lease: Duration,
) {
    let key = LeaseKey {
        account: &account,
        kind,
        id: &id,
    };
    loop {
        tokio::time::sleep(lease / 3).await;
        match sql::renew_resource_lease(&pool, key, &holder, micros(lease)).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    account,
                    kind,
                    id,
                    "resource lease lost while held: it expired, or this replica looked gone \
                     to another that took it"
                );
                return;
            }
            Err(e) => tracing::warn!(
                account,
                kind,
                id,
                error = %e,
                "resource lease renewal failed; retrying"
            ),
        }
    }
}

/// A held resource lease (an order lock). Holds no connection; a task renews the lease until
/// it is released or dropped.
#[derive(Debug)]
pub struct PostgresResourceLock {
    pool: PgPool,
    direct: DirectConnections,
    account: String,
    kind: &'static str,
    id: String,
    holder: String,
    tag: String,
    lease: Duration,
    renewal: Option<JoinHandle<()>>,
    released: bool,
}

impl PostgresResourceLock {
    /// The guard of a lease about to be tried for, made before the first try: if the taking
    /// is dropped, or fails, after a try took the lease (its answer lost), dropping the guard
    /// deletes the row again.
    fn before_taking(taker: Taker<'_>, account: &str, kind: &'static str, id: &str) -> Self {
        Self {
            pool: taker.pool.clone(),
            direct: taker.direct.clone(),
            account: account.to_owned(),
            kind,
            id: id.to_owned(),
            holder: uuid::Uuid::new_v4().hyphenated().to_string(),
            tag: resource_tag(account, kind, id),
            lease: taker.lease,
            renewal: None,
            released: false,
        }
    }

    /// The lease is taken: renew it while it is held.
    fn hold(&mut self) {
        self.renewal = Some(tokio::spawn(renew(
            self.pool.clone(),
            self.account.clone(),
            self.kind,
            self.id.clone(),
            self.holder.clone(),
            self.lease,
        )));
    }

    fn key(&self) -> LeaseKey<'_> {
        LeaseKey {
            account: &self.account,
            kind: self.kind,
            id: &self.id,
        }
    }

    /// [`sql::finish_releasing`]: finishes operation `id` held by `holder` and releases this
    /// lease, in one statement. If the statement fails, dropping the lock releases it.
    pub(super) async fn finish_releasing(
        mut self: Box<Self>,
        id: &str,
        holder: &str,
        completion: &Completion,
        now: i64,
    ) -> Result<bool, StoreError> {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        let lease = (self.key(), self.holder.as_str(), self.tag.as_str());
        let (finished, held) =
            sql::finish_releasing(&self.direct, id, holder, completion, now, lease).await?;
        self.released = true;
        if !held {
            self.lost_at_release();
        }
        Ok(finished)
    }

    fn lost_at_release(&self) {
        tracing::warn!(
            account = self.account,
            kind = self.kind,
            id = self.id,
            "resource lease was no longer held when released"
        );
    }

    /// Stops renewing, deletes the row if it is still ours and announces the release.
    /// `expect_held`: the lease was taken, so finding it gone is worth a warning.
    async fn release_now(&mut self, expect_held: bool) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        self.released = true;
        match sql::release_lease(&self.pool, self.key(), &self.holder, &self.tag).await {
            Ok(true) => {}
            Ok(false) if !expect_held => {}
            Ok(false) => self.lost_at_release(),
            Err(e) => tracing::warn!(
                account = self.account,
                kind = self.kind,
                id = self.id,
                error = %e,
                lease = ?self.lease,
                "resource lease release failed; it expires unrenewed"
            ),
        }
    }
}

impl Drop for PostgresResourceLock {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Renewal starts once the lease is taken: without it, this is a cancelled or failed
        // taking, which may or may not have taken the lease.
        let taken = self.renewal.is_some();
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        // Not released (dropped, or its taking cancelled or failed): release it from a task.
        // Without a runtime it expires unrenewed.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let mut lock = Self {
                pool: self.pool.clone(),
                direct: self.direct.clone(),
                account: std::mem::take(&mut self.account),
                kind: self.kind,
                id: std::mem::take(&mut self.id),
                holder: std::mem::take(&mut self.holder),
                tag: std::mem::take(&mut self.tag),
                lease: self.lease,
                renewal: None,
                released: true,
            };
            runtime.spawn(async move { lock.release_now(taken).await });
        }
    }
}

#[async_trait::async_trait]
impl OrderLock for PostgresResourceLock {
    async fn release(mut self: Box<Self>) {
        self.release_now(true).await;
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str = "order";

    #[test]
    fn tags_are_stable_and_distinct() {
        assert_eq!(resource_tag("a", ORDER, "o"), resource_tag("a", ORDER, "o"));
        assert_ne!(resource_tag("a", ORDER, "o"), resource_tag("b", ORDER, "o"));
        assert_ne!(
            resource_tag("a", ORDER, "o"),
            resource_tag("a", "transaction", "o")
        );
        assert_ne!(
            resource_tag("ab", ORDER, "c"),
            resource_tag("a", ORDER, "bc")
        );
        assert_eq!(resource_tag("eu", ORDER, "o-1").len(), 32);
    }

    #[test]
    fn leases_are_bounded() {
        assert_eq!(bounded_lease(Duration::ZERO), MIN_LEASE);
        assert_eq!(bounded_lease(Duration::MAX), MAX_LEASE);
        assert_eq!(bounded_lease(DEFAULT_LEASE), DEFAULT_LEASE);
    }
}
