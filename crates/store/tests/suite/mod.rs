//! The store contract, written once and run on every backend (see `sqlite.rs` and
//! `postgres.rs`). Each case gets a fresh, empty store; `peer` is a second, independent store
//! on the same database (another process's view) where the backend supports sharing.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use refund_gateway_domain::store::{LinkOutcome, OrderReference, ReferenceKind};
use refund_gateway_domain::{
    AttentionSummary, AuditEvent, Caller, Claim, Completion, IdempotencyKey, LeaseHolder,
    NewOperation, Operation, OperationFilter, OperationId, OperationState, OperationStore,
    Resolution, ResourceKind, Rpc, StoreError, StoredResponse, TraceParent, Unresolved,
    WebhookEvent,
};
use time::OffsetDateTime;
use time::macros::{date, datetime};
use tokio::sync::{Barrier, oneshot};
use uuid::Uuid;

pub type Store = Arc<dyn OperationStore>;

/// Invokes `$backend!` with the name of every case, so each backend runs them all: its macro
/// defines one test per case.
macro_rules! all_cases {
    ($backend:ident) => {
        $backend!(
            claim_new_then_existing,
            fields_round_trip,
            concurrent_claims_one_new,
            take_over_rules,
            renew_lease,
            finish_and_mark_pending,
            only_the_holder_acts,
            abandon_frees_the_key,
            unresolved_oldest_first,
            pending_resends_back_off,
            list_filters,
            list_pagination,
            list_full_pages,
            resource_operations_lists_one_resource,
            webhook_recorded_once,
            concurrent_webhook_records_once,
            daily_reservations_stay_within_the_cap,
            concurrent_daily_reservations_never_exceed_the_cap,
            purge_keeps_identity,
            purge_many_in_one_pass,
            answer_context_survives_a_resend,
            lock_order_serializes_one_order,
            finish_and_release_frees_the_order,
            group_commit_64_claims,
            concurrent_mixed_writes,
            trace_context_follows_the_holder,
            attention_counts_what_needs_a_look,
            references_link_once,
            concurrent_links_of_one_reference_one_wins,
            resolve_review_settles_a_review,
            resolve_review_only_from_review,
            concurrent_review_resolutions_one_wins,
        );
    };
}
pub(crate) use all_cases;

const LEASE: Duration = Duration::from_secs(30);

/// The gateway that claims (every case's first holder).
const A: LeaseHolder = LeaseHolder::from_uuid(Uuid::from_u128(0xA));
/// Another gateway, taking over.
const B: LeaseHolder = LeaseHolder::from_uuid(Uuid::from_u128(0xB));

/// A base instant with sub-microsecond digits, to see truncation.
pub fn t(seconds: i64) -> OffsetDateTime {
    datetime!(2026-03-01 12:00:00.123_456_789 UTC) + time::Duration::seconds(seconds)
}

fn at_micros(t: OffsetDateTime) -> OffsetDateTime {
    let nanos = t.unix_timestamp_nanos();
    OffsetDateTime::from_unix_timestamp_nanos(nanos - nanos.rem_euclid(1_000)).unwrap()
}

/// An event for every operation as a release before migration 0012 appended it (no
/// `claimed_at`), a microsecond after its claim, with the detail "older release".
pub const INSERT_UNCLAIMED_EVENT: &str = "INSERT INTO audit_events (operation_id, caller, rpc, \
     idempotency_key, klarna_account, order_id, state_before, state_after, detail, at) \
     SELECT operation_id, caller, rpc, idempotency_key, klarna_account, order_id, state, state, \
     'older release', created_at + 1 FROM operations";

/// The details of the events listed with the operation under idempotency key `key`, in order.
pub async fn event_details(store: &dyn OperationStore, key: &str) -> Vec<String> {
    let filter = OperationFilter {
        idempotency_key: Some(key.to_owned()),
        ..OperationFilter::default()
    };
    let page = store.list(&filter, 10, None).await.unwrap();
    let (_, events) = &page.operations[0];
    events.iter().map(|e| e.detail.clone()).collect()
}

pub fn new_op(caller: &str, rpc: Rpc, key: &str, order: &str) -> NewOperation {
    let caller = Caller::named(caller);
    let key = IdempotencyKey::parse(key).unwrap();
    NewOperation {
        operation_id: OperationId::derive(&caller, rpc, &key),
        caller,
        rpc,
        idempotency_key: key,
        fingerprint: format!("fp-{order}"),
        klarna_account: "eu".to_owned(),
        order_id: order.to_owned(),
        resource_kind: ResourceKind::Order,
        resource_id: order.to_owned(),
        capture_id: Some("cap-1".to_owned()),
        amount: Some(12_345),
        currency: Some("EUR".to_owned()),
        reference: Some("ref-1".to_owned()),
        klarna_request: r#"{"refunded_amount":12345}"#.to_owned(),
        trace_id: Some("trace-claim".to_owned()),
        traceparent: Some(traceparent(CLAIM_TRACE)),
    }
}

/// The trace id of every claim's traceparent (see [`new_op`]).
const CLAIM_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A sampled traceparent of `trace_id`.
pub fn traceparent(trace_id: &str) -> TraceParent {
    TraceParent::parse(&format!("00-{trace_id}-00f067aa0ba902b7-01")).unwrap()
}

fn op(key: &str) -> NewOperation {
    new_op("pos", Rpc::RefundOrder, key, "order-1")
}

async fn claim_new(store: &Store, op: NewOperation, now: OffsetDateTime) -> Operation {
    match store.claim(op, A, now, LEASE).await.unwrap() {
        Claim::New(op) => op,
        Claim::Existing(op) => panic!("expected a new claim, found {op:?}"),
    }
}

fn completion(state: OperationState) -> Completion {
    Completion {
        state,
        response: StoredResponse {
            code: if state == OperationState::Succeeded {
                0
            } else {
                9
            },
            message: "done".to_owned(),
            payload: vec![0, 159, 146, 150, 255],
        },
        refund_id: Some("refund-1".to_owned()),
        correlation_id: Some("corr-1".to_owned()),
        detail: "klarna answered".to_owned(),
        trace_id: Some("trace-finish".to_owned()),
    }
}

/// The events of `id` (through `list`, the only way the port offers).
async fn events_of(store: &Store, new: &NewOperation) -> Vec<AuditEvent> {
    let filter = OperationFilter {
        caller: Some(new.caller.as_str().to_owned()),
        idempotency_key: Some(new.idempotency_key.as_str().to_owned()),
        ..OperationFilter::default()
    };
    let page = store.list(&filter, 10, None).await.unwrap();
    let found: Vec<_> = page
        .operations
        .into_iter()
        .filter(|(o, _)| o.new.operation_id == new.operation_id)
        .collect();
    assert_eq!(found.len(), 1, "operation {} not listed", new.operation_id);
    found.into_iter().next().unwrap().1
}

fn transitions(events: &[AuditEvent]) -> Vec<(Option<OperationState>, Option<OperationState>)> {
    events
        .iter()
        .map(|e| (e.state_before, e.state_after))
        .collect()
}

use OperationState::{Failed, InFlight, Pending, RequiresReview, Succeeded};

pub async fn claim_new_then_existing(store: Store, _peer: Option<Store>) {
    let new = op("k1");
    let claimed = claim_new(&store, new.clone(), t(0)).await;
    assert_eq!(claimed.state, InFlight);
    assert_eq!(claimed.lease_expires_at, Some(at_micros(t(30))));
    assert_eq!(claimed.created_at, at_micros(t(0)));
    assert_eq!(claimed.updated_at, at_micros(t(0)));
    assert_eq!(claimed.response, None);
    assert_eq!(claimed.lease_holder, Some(A));

    // Same id, another fingerprint, another holder: the stored one comes back, untouched.
    let mut again = new.clone();
    again.fingerprint = "other".to_owned();
    match store.claim(again, B, t(5), LEASE).await.unwrap() {
        Claim::Existing(existing) => assert_eq!(existing, claimed),
        Claim::New(op) => panic!("claimed twice: {op:?}"),
    }
    assert_eq!(store.get(new.operation_id).await.unwrap(), Some(claimed));
    assert_eq!(store.get(op("missing").operation_id).await.unwrap(), None);

    let events = events_of(&store, &new).await;
    assert_eq!(transitions(&events), vec![(None, Some(InFlight))]);
    assert_eq!(events[0].detail, "claimed");
    assert_eq!(events[0].trace_id.as_deref(), Some("trace-claim"));
    assert_eq!(events[0].at, at_micros(t(0)));
    assert_eq!(events[0].operation_id, new.operation_id);
}

pub async fn fields_round_trip(store: Store, _peer: Option<Store>) {
    let mut full = new_op(
        "caller with spaces ü",
        Rpc::ExtendDueDate,
        "ключ-1 ✓",
        "order-ü",
    );
    full.fingerprint = "sha256:abcdef0123".to_owned();
    full.amount = Some(i64::MAX);
    full.klarna_request = "{\"a\":\"\\u0000 ünïcode\"}".to_owned();
    let claimed = claim_new(&store, full.clone(), t(0)).await;
    assert_eq!(claimed.new, full);
    let read = store.get(full.operation_id).await.unwrap().unwrap();
    assert_eq!(read, claimed);

    let bare = NewOperation {
        capture_id: None,
        amount: None,
        currency: None,
        reference: None,
        trace_id: None,
        traceparent: None,
        ..new_op("pos", Rpc::ReleaseAuthorization, "bare", "order-2")
    };
    let claimed = claim_new(&store, bare.clone(), t(1)).await;
    assert_eq!(store.get(bare.operation_id).await.unwrap(), Some(claimed));

    // An operation on another kind of resource keeps its kind and id.
    let transaction = NewOperation {
        resource_kind: ResourceKind::Transaction,
        resource_id: "tx-1".to_owned(),
        ..new_op("pos", Rpc::RefundOrder, "transaction", "order-2")
    };
    let claimed = claim_new(&store, transaction.clone(), t(1)).await;
    assert_eq!(claimed.new, transaction);
    assert_eq!(
        store.get(transaction.operation_id).await.unwrap(),
        Some(claimed)
    );

    // The response, with bytes that are not UTF-8, and the Klarna ids.
    let done = completion(Failed);
    store
        .finish(full.operation_id, A, done.clone(), t(2))
        .await
        .unwrap();
    let read = store.get(full.operation_id).await.unwrap().unwrap();
    assert_eq!(read.state, Failed);
    assert_eq!(read.response, Some(done.response));
    assert_eq!(read.refund_id.as_deref(), Some("refund-1"));
    assert_eq!(read.correlation_id.as_deref(), Some("corr-1"));
    assert_eq!(read.lease_expires_at, None);
    assert_eq!(read.updated_at, at_micros(t(2)));
    assert_eq!(read.created_at, at_micros(t(0)));
    assert_eq!(read.new, full);

    // An empty response is still a response.
    let mut empty = completion(Succeeded);
    empty.response = StoredResponse::default();
    store
        .finish(bare.operation_id, A, empty, t(3))
        .await
        .unwrap();
    let read = store.get(bare.operation_id).await.unwrap().unwrap();
    assert_eq!(read.response, Some(StoredResponse::default()));
}

pub async fn concurrent_claims_one_new(store: Store, peer: Option<Store>) {
    let new = op("contended");
    let barrier = Arc::new(Barrier::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        // With a peer, half the claimers come from "another process".
        let store = match (&peer, i % 2) {
            (Some(peer), 1) => peer.clone(),
            _ => store.clone(),
        };
        let (new, barrier) = (new.clone(), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            store
                .claim(new, LeaseHolder::new(), t(0), LEASE)
                .await
                .unwrap()
        });
    }
    let claims = tasks.join_all().await;
    let winners: Vec<_> = claims
        .iter()
        .filter_map(|c| match c {
            Claim::New(op) => Some(op.clone()),
            Claim::Existing(_) => None,
        })
        .collect();
    assert_eq!(winners.len(), 1, "{claims:?}");
    for claim in &claims {
        if let Claim::Existing(existing) = claim {
            assert_eq!(existing, &winners[0]);
        }
    }
    assert_eq!(events_of(&store, &new).await.len(), 1);
}

pub async fn take_over_rules(store: Store, _peer: Option<Store>) {
    let live = op("live");
    claim_new(&store, live.clone(), t(0)).await;
    assert!(
        !store
            .take_over(live.operation_id, A, t(10), LEASE, None, None)
            .await
            .unwrap()
    );
    // Expired (lease end == now counts as expired).
    assert!(
        store
            .take_over(
                live.operation_id,
                B,
                t(30),
                LEASE,
                Some("trace-2".into()),
                None
            )
            .await
            .unwrap()
    );
    let read = store.get(live.operation_id).await.unwrap().unwrap();
    assert_eq!(read.state, InFlight);
    assert_eq!(read.lease_expires_at, Some(at_micros(t(60))));
    assert_eq!(read.lease_holder, Some(B));
    assert_eq!(read.updated_at, at_micros(t(30)));
    // The new lease is live again.
    assert!(
        !store
            .take_over(live.operation_id, A, t(31), LEASE, None, None)
            .await
            .unwrap()
    );

    let pending = op("pending");
    claim_new(&store, pending.clone(), t(0)).await;
    store
        .mark_pending(pending.operation_id, A, None, "timeout".into(), None, t(1))
        .await
        .unwrap();
    assert!(
        store
            .take_over(pending.operation_id, A, t(2), LEASE, None, None)
            .await
            .unwrap()
    );
    assert!(
        !store
            .take_over(pending.operation_id, A, t(3), LEASE, None, None)
            .await
            .unwrap()
    );

    let done = op("done");
    claim_new(&store, done.clone(), t(0)).await;
    store
        .finish(done.operation_id, A, completion(Succeeded), t(1))
        .await
        .unwrap();
    assert!(
        !store
            .take_over(done.operation_id, A, t(100), LEASE, None, None)
            .await
            .unwrap()
    );
    assert!(
        !store
            .take_over(op("missing").operation_id, A, t(0), LEASE, None, None)
            .await
            .unwrap()
    );

    let events = events_of(&store, &live).await;
    assert_eq!(
        transitions(&events),
        vec![(None, Some(InFlight)), (Some(InFlight), Some(InFlight))]
    );
    assert_eq!(events[1].detail, "taken over");
    assert_eq!(events[1].trace_id.as_deref(), Some("trace-2"));
    assert_eq!(
        transitions(&events_of(&store, &pending).await),
        vec![
            (None, Some(InFlight)),
            (Some(InFlight), Some(Pending)),
            (Some(Pending), Some(InFlight))
        ]
    );
}

pub async fn renew_lease(store: Store, _peer: Option<Store>) {
    let new = op("renew");
    claim_new(&store, new.clone(), t(0)).await;
    assert!(
        !store
            .renew_lease(new.operation_id, B, t(20), LEASE)
            .await
            .unwrap(),
        "only the holder renews"
    );
    assert!(
        store
            .renew_lease(new.operation_id, A, t(20), LEASE)
            .await
            .unwrap()
    );
    let read = store.get(new.operation_id).await.unwrap().unwrap();
    assert_eq!(read.lease_expires_at, Some(at_micros(t(50))));
    assert_eq!(
        read.updated_at,
        at_micros(t(0)),
        "a renewal is not a transition"
    );
    assert!(
        !store
            .take_over(new.operation_id, A, t(40), LEASE, None, None)
            .await
            .unwrap()
    );
    assert_eq!(
        events_of(&store, &new).await.len(),
        1,
        "no event for a renewal"
    );

    store
        .mark_pending(new.operation_id, A, None, "unknown".into(), None, t(41))
        .await
        .unwrap();
    assert!(
        !store
            .renew_lease(new.operation_id, A, t(42), LEASE)
            .await
            .unwrap()
    );
    assert!(
        !store
            .renew_lease(op("missing").operation_id, A, t(42), LEASE)
            .await
            .unwrap()
    );
}

pub async fn finish_and_mark_pending(store: Store, _peer: Option<Store>) {
    let new = op("finish");
    claim_new(&store, new.clone(), t(0)).await;
    store
        .mark_pending(
            new.operation_id,
            A,
            Some("corr-0".into()),
            "timeout".into(),
            Some("context-0".into()),
            t(1),
        )
        .await
        .unwrap();
    let read = store.get(new.operation_id).await.unwrap().unwrap();
    assert_eq!(read.state, Pending);
    assert_eq!(read.lease_expires_at, None);
    assert_eq!(read.correlation_id.as_deref(), Some("corr-0"));
    assert_eq!(read.answer_context.as_deref(), Some("context-0"));
    assert!(read.is_unresolved(t(1)));
    // Not IN_FLIGHT any more: a second mark changes nothing.
    store
        .mark_pending(new.operation_id, A, None, "again".into(), None, t(2))
        .await
        .unwrap();

    // PENDING is not finished as such: it is taken over first (the reconciler's resolution).
    let mut done = completion(RequiresReview);
    done.correlation_id = None;
    store
        .finish(new.operation_id, A, done.clone(), t(3))
        .await
        .unwrap();
    assert_eq!(
        store.get(new.operation_id).await.unwrap().unwrap().state,
        Pending
    );
    assert!(
        store
            .take_over(new.operation_id, B, t(3), LEASE, None, None)
            .await
            .unwrap()
    );
    store
        .finish(new.operation_id, B, done.clone(), t(3))
        .await
        .unwrap();
    let read = store.get(new.operation_id).await.unwrap().unwrap();
    assert_eq!(read.state, RequiresReview);
    assert_eq!(
        read.correlation_id.as_deref(),
        Some("corr-0"),
        "kept when not given"
    );
    assert_eq!(read.response, Some(done.response.clone()));

    // A final state is never overwritten, not even by its last holder, and nothing is
    // recorded.
    store
        .finish(new.operation_id, B, completion(Succeeded), t(4))
        .await
        .unwrap();
    store
        .mark_pending(new.operation_id, B, None, "late".into(), None, t(5))
        .await
        .unwrap();
    store
        .abandon(new.operation_id, B, "late".into(), t(6))
        .await
        .unwrap();
    assert_eq!(store.get(new.operation_id).await.unwrap(), Some(read));

    let events = events_of(&store, &new).await;
    assert_eq!(
        transitions(&events),
        vec![
            (None, Some(InFlight)),
            (Some(InFlight), Some(Pending)),
            (Some(Pending), Some(InFlight)),
            (Some(InFlight), Some(RequiresReview)),
        ]
    );
    assert_eq!(events[1].detail, "timeout");
    assert_eq!(events[1].correlation_id.as_deref(), Some("corr-0"));
    assert_eq!(events[3].detail, "klarna answered");
    assert_eq!(events[3].refund_id.as_deref(), Some("refund-1"));
    assert_eq!(events[3].trace_id.as_deref(), Some("trace-finish"));
    assert_eq!(events[3].at, at_micros(t(3)));

    // Finishing with a state that is not final is refused.
    let other = op("not-final");
    claim_new(&store, other.clone(), t(0)).await;
    assert!(
        store
            .finish(other.operation_id, A, completion(Pending), t(1))
            .await
            .is_err()
    );
    store
        .finish(other.operation_id, A, completion(Succeeded), t(1))
        .await
        .unwrap();
    assert_eq!(
        store.get(other.operation_id).await.unwrap().unwrap().state,
        Succeeded
    );
}

/// A gateway stalls past its lease and another takes the operation over: the stalled one can
/// no longer renew, finish, mark pending or abandon it; the new holder can.
pub async fn only_the_holder_acts(store: Store, peer: Option<Store>) {
    // With a peer, B is another process.
    let other = peer.unwrap_or_else(|| store.clone());
    let new = op("stalled");
    claim_new(&store, new.clone(), t(0)).await;
    assert!(
        other
            .take_over(
                new.operation_id,
                B,
                t(31),
                LEASE,
                Some("trace-b".into()),
                None
            )
            .await
            .unwrap()
    );
    let taken = store.get(new.operation_id).await.unwrap().unwrap();
    assert_eq!(taken.state, InFlight);
    assert_eq!(taken.lease_holder, Some(B));
    assert_eq!(taken.lease_expires_at, Some(at_micros(t(61))));

    // A wakes up.
    assert!(
        !store
            .renew_lease(new.operation_id, A, t(32), LEASE)
            .await
            .unwrap()
    );
    store
        .finish(new.operation_id, A, completion(Failed), t(33))
        .await
        .unwrap();
    store
        .mark_pending(new.operation_id, A, None, "stale".into(), None, t(34))
        .await
        .unwrap();
    store
        .abandon(new.operation_id, A, "stale".into(), t(35))
        .await
        .unwrap();
    assert_eq!(store.get(new.operation_id).await.unwrap(), Some(taken));
    assert_eq!(
        transitions(&events_of(&store, &new).await),
        vec![(None, Some(InFlight)), (Some(InFlight), Some(InFlight))],
        "nothing recorded for the stale holder"
    );

    // B holds it.
    assert!(
        other
            .renew_lease(new.operation_id, B, t(40), LEASE)
            .await
            .unwrap()
    );
    other
        .finish(new.operation_id, B, completion(Succeeded), t(41))
        .await
        .unwrap();
    let done = store.get(new.operation_id).await.unwrap().unwrap();
    assert_eq!(done.state, Succeeded);
    assert_eq!(done.response, Some(completion(Succeeded).response));
    let events = events_of(&store, &new).await;
    assert_eq!(
        transitions(&events),
        vec![
            (None, Some(InFlight)),
            (Some(InFlight), Some(InFlight)),
            (Some(InFlight), Some(Succeeded)),
        ]
    );
    assert_eq!(events[2].at, at_micros(t(41)));
}

pub async fn abandon_frees_the_key(store: Store, _peer: Option<Store>) {
    let new = op("abandon");
    claim_new(&store, new.clone(), t(0)).await;
    store
        .abandon(new.operation_id, A, "klarna unreachable".into(), t(1))
        .await
        .unwrap();
    assert_eq!(store.get(new.operation_id).await.unwrap(), None);

    // The key is usable again, and the first lifetime's events remain.
    let second = claim_new(&store, new.clone(), t(2)).await;
    assert_eq!(second.created_at, at_micros(t(2)));
    let events = events_of(&store, &new).await;
    assert_eq!(
        transitions(&events),
        vec![
            (None, Some(InFlight)),
            (Some(InFlight), None),
            (None, Some(InFlight))
        ]
    );
    assert_eq!(events[1].detail, "klarna unreachable");
    assert_eq!(events[1].at, at_micros(t(1)));

    // A PENDING operation is not abandoned: Klarna may have acted.
    store
        .mark_pending(new.operation_id, A, None, "timeout".into(), None, t(3))
        .await
        .unwrap();
    store
        .abandon(new.operation_id, A, "wrong".into(), t(4))
        .await
        .unwrap();
    assert_eq!(
        store.get(new.operation_id).await.unwrap().unwrap().state,
        Pending
    );
}

pub async fn unresolved_oldest_first(store: Store, _peer: Option<Store>) {
    let pending = op("u-pending");
    let live = op("u-live");
    let expired = op("u-expired");
    let done = op("u-done");
    claim_new(&store, expired.clone(), t(0)).await;
    claim_new(&store, pending.clone(), t(1)).await;
    claim_new(&store, live.clone(), t(50)).await;
    claim_new(&store, done.clone(), t(2)).await;
    store
        .mark_pending(pending.operation_id, A, None, "timeout".into(), None, t(3))
        .await
        .unwrap();
    store
        .finish(done.operation_id, A, completion(Succeeded), t(3))
        .await
        .unwrap();

    let now = t(60);
    let found: Vec<_> = store
        .unresolved(Unresolved::Due, now, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.new.operation_id)
        .collect();
    assert_eq!(found, vec![expired.operation_id, pending.operation_id]);
    let first = store.unresolved(Unresolved::Due, now, 1).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].new.operation_id, expired.operation_id);
    assert!(first[0].is_unresolved(now));
    // Before the lease ends only the PENDING one is unresolved.
    let early: Vec<_> = store
        .unresolved(Unresolved::Due, t(10), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.new.operation_id)
        .collect();
    assert_eq!(early, vec![pending.operation_id]);
}

/// The ids `unresolved` lists at `now`.
async fn due_ids(store: &Store, now: OffsetDateTime) -> Vec<OperationId> {
    store
        .unresolved(Unresolved::Due, now, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.new.operation_id)
        .collect()
}

/// The store lists a PENDING operation for the reconciler only once its resend backoff has
/// passed, as the domain computes it: a quarter of its age when it became PENDING, at most
/// a minute; a take-over (a caller's retry) does not wait for it.
pub async fn pending_resends_back_off(store: Store, _peer: Option<Store>) {
    let young = op("b-young");
    let old = op("b-old");
    claim_new(&store, young.clone(), t(0)).await;
    claim_new(&store, old.clone(), t(1)).await;
    store
        .mark_pending(young.operation_id, A, None, "timeout".into(), None, t(40))
        .await
        .unwrap();
    store
        .mark_pending(old.operation_id, A, None, "timeout".into(), None, t(7_200))
        .await
        .unwrap();
    let micro = time::Duration::microseconds(1);

    let stored = store.get(young.operation_id).await.unwrap().unwrap();
    let due = stored.resolution_due_at();
    assert_eq!(due, at_micros(t(50)));
    assert!(stored.is_unresolved(due - micro));
    assert!(!stored.is_due_for_resolution(due - micro));
    assert!(stored.is_due_for_resolution(due));
    assert!(due_ids(&store, due - micro).await.is_empty());
    assert_eq!(due_ids(&store, due).await, vec![young.operation_id]);
    // The first pass after a start lists every one.
    let all: Vec<_> = store
        .unresolved(Unresolved::All, due - micro, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.new.operation_id)
        .collect();
    assert_eq!(all, vec![young.operation_id, old.operation_id]);

    // Past the cap: a minute, not half an hour.
    let stored = store.get(old.operation_id).await.unwrap().unwrap();
    let due = stored.resolution_due_at();
    assert_eq!(due, at_micros(t(7_260)));
    assert_eq!(due_ids(&store, due - micro).await, vec![young.operation_id]);
    assert_eq!(
        due_ids(&store, due).await,
        vec![young.operation_id, old.operation_id]
    );

    // A retry takes over before the resend is due; PENDING again, the backoff starts over
    // from the new age.
    assert!(
        store
            .take_over(young.operation_id, B, t(41), LEASE, None, None)
            .await
            .unwrap()
    );
    store
        .mark_pending(young.operation_id, B, None, "timeout".into(), None, t(60))
        .await
        .unwrap();
    let stored = store.get(young.operation_id).await.unwrap().unwrap();
    assert_eq!(stored.resolution_due_at(), at_micros(t(75)));
    assert!(due_ids(&store, at_micros(t(75)) - micro).await.is_empty());
    assert_eq!(
        due_ids(&store, at_micros(t(75))).await,
        vec![young.operation_id]
    );
}

fn ids(page: &[(Operation, Vec<AuditEvent>)]) -> Vec<OperationId> {
    page.iter().map(|(o, _)| o.new.operation_id).collect()
}

pub async fn list_filters(store: Store, _peer: Option<Store>) {
    let a = new_op("alice", Rpc::RefundOrder, "k-a", "order-x");
    let b = new_op("bob", Rpc::RefundOrder, "k-b", "order-x");
    let c = new_op("alice", Rpc::ExtendDueDate, "k-c", "order-y");
    let d = new_op("bob", Rpc::ReleaseAuthorization, "k-a", "order-z");
    for (i, op) in [&a, &b, &c, &d].into_iter().enumerate() {
        claim_new(&store, op.clone(), t(i as i64 * 10)).await;
    }
    store
        .finish(b.operation_id, A, completion(Succeeded), t(100))
        .await
        .unwrap();

    let list = |filter: OperationFilter| {
        let store = store.clone();
        async move { ids(&store.list(&filter, 0, None).await.unwrap().operations) }
    };
    let all = OperationFilter::default();
    // Newest first.
    assert_eq!(
        list(all.clone()).await,
        vec![
            d.operation_id,
            c.operation_id,
            b.operation_id,
            a.operation_id
        ]
    );
    let by_order = OperationFilter {
        order_id: Some("order-x".into()),
        ..all.clone()
    };
    assert_eq!(list(by_order).await, vec![b.operation_id, a.operation_id]);
    let by_caller = OperationFilter {
        caller: Some("alice".into()),
        ..all.clone()
    };
    assert_eq!(list(by_caller).await, vec![c.operation_id, a.operation_id]);
    let by_key = OperationFilter {
        idempotency_key: Some("k-a".into()),
        ..all.clone()
    };
    assert_eq!(list(by_key).await, vec![d.operation_id, a.operation_id]);
    let by_state = OperationFilter {
        state: Some(Succeeded),
        ..all.clone()
    };
    assert_eq!(list(by_state).await, vec![b.operation_id]);
    // [from, to): b at 10 and c at 20 are in, d at 30 is not.
    let by_time = OperationFilter {
        created_from: Some(t(10)),
        created_to: Some(t(30)),
        ..all.clone()
    };
    assert_eq!(list(by_time).await, vec![c.operation_id, b.operation_id]);
    let combined = OperationFilter {
        caller: Some("bob".into()),
        state: Some(InFlight),
        ..all.clone()
    };
    assert_eq!(list(combined).await, vec![d.operation_id]);
    let none = OperationFilter {
        order_id: Some("nope".into()),
        ..all.clone()
    };
    let page = store.list(&none, 10, None).await.unwrap();
    assert!(page.operations.is_empty());
    assert_eq!(page.next_page_token, None);

    // Operations on payment transactions: only those on the transaction named, in any
    // account; an order whose id is the transaction's is not one.
    let e = on_transaction(
        new_op("alice", Rpc::RefundTransaction, "k-e", "order-t"),
        "eu",
        "tx-1",
    );
    let f = on_transaction(
        new_op("bob", Rpc::RefundTransaction, "k-f", "order-t"),
        "eu",
        "tx-2",
    );
    let g = on_transaction(
        new_op("bob", Rpc::RefundTransaction, "k-g", "order-u"),
        "us",
        "tx-1",
    );
    let h = new_op("alice", Rpc::RefundOrder, "k-h", "tx-1");
    for (i, op) in [&e, &f, &g, &h].into_iter().enumerate() {
        claim_new(&store, op.clone(), t(40 + i as i64 * 10)).await;
    }
    let by_transaction = OperationFilter {
        payment_transaction_id: Some("tx-1".into()),
        ..all.clone()
    };
    assert_eq!(
        list(by_transaction.clone()).await,
        vec![g.operation_id, e.operation_id]
    );
    let by_transaction_and_caller = OperationFilter {
        caller: Some("alice".into()),
        ..by_transaction.clone()
    };
    assert_eq!(list(by_transaction_and_caller).await, vec![e.operation_id]);
    let other_transaction = OperationFilter {
        payment_transaction_id: Some("tx-2".into()),
        ..all.clone()
    };
    assert_eq!(list(other_transaction.clone()).await, vec![f.operation_id]);
    let unknown_transaction = OperationFilter {
        payment_transaction_id: Some("order-x".into()),
        ..all.clone()
    };
    assert!(list(unknown_transaction).await.is_empty());
    // Pages under the filter; its token is bound to the transaction named.
    let first = store.list(&by_transaction, 1, None).await.unwrap();
    assert_eq!(ids(&first.operations), vec![g.operation_id]);
    let token = first.next_page_token.unwrap();
    let second = store.list(&by_transaction, 1, Some(&token)).await.unwrap();
    assert_eq!(ids(&second.operations), vec![e.operation_id]);
    assert_eq!(second.next_page_token, None);
    for other in [&all, &other_transaction] {
        assert!(matches!(
            store.list(other, 1, Some(&token)).await,
            Err(StoreError::InvalidPageToken)
        ));
    }

    // Each operation comes with its events, oldest first.
    let page = store.list(&all, 10, None).await.unwrap();
    for (operation, events) in &page.operations {
        let expected = if operation.new.operation_id == b.operation_id {
            vec![(None, Some(InFlight)), (Some(InFlight), Some(Succeeded))]
        } else {
            vec![(None, Some(InFlight))]
        };
        assert_eq!(transitions(events), expected);
        assert!(
            events
                .iter()
                .all(|e| e.operation_id == operation.new.operation_id)
        );
    }
}

/// `new` acting on payment transaction `transaction` of `account`.
fn on_transaction(new: NewOperation, account: &str, transaction: &str) -> NewOperation {
    NewOperation {
        klarna_account: account.to_owned(),
        resource_kind: ResourceKind::Transaction,
        resource_id: transaction.to_owned(),
        ..new
    }
}

pub async fn list_pagination(store: Store, _peer: Option<Store>) {
    // Seven operations, three created at the same instant (ties broken by id).
    let mut ops = Vec::new();
    for i in 0..7 {
        let new = op(&format!("page-{i}"));
        let created = if i < 3 { t(0) } else { t(i) };
        claim_new(&store, new.clone(), created).await;
        ops.push(new);
    }
    let all = OperationFilter::default();
    let everything = ids(&store.list(&all, 0, None).await.unwrap().operations);
    assert_eq!(everything.len(), 7);

    let first = store.list(&all, 3, None).await.unwrap();
    assert_eq!(first.operations.len(), 3);
    let token = first.next_page_token.clone().unwrap();

    // A newer operation arriving between pages does not shift the next ones.
    claim_new(&store, op("page-late"), t(99)).await;

    let second = store.list(&all, 3, Some(&token)).await.unwrap();
    let again = store.list(&all, 3, Some(&token)).await.unwrap();
    assert_eq!(second, again, "a token names a fixed position");
    let third = store
        .list(&all, 3, second.next_page_token.as_deref())
        .await
        .unwrap();
    assert_eq!(third.operations.len(), 1);
    assert_eq!(third.next_page_token, None);
    let paged: Vec<_> = [first, second, third]
        .iter()
        .flat_map(|p| ids(&p.operations))
        .collect();
    assert_eq!(paged, everything);

    // Exactly one page: no token.
    let filter = OperationFilter {
        created_to: Some(t(6)),
        ..all.clone()
    };
    let exact = store.list(&filter, 6, None).await.unwrap();
    assert_eq!(exact.operations.len(), 6);
    assert_eq!(exact.next_page_token, None);

    for bad in [
        "",
        "not-a-token",
        &token[..token.len() - 2],
        &format!("{token}ff"),
    ] {
        assert!(
            matches!(
                store.list(&all, 3, Some(bad)).await,
                Err(StoreError::InvalidPageToken)
            ),
            "{bad:?}"
        );
    }
    let other_filter = OperationFilter {
        caller: Some("pos".into()),
        ..all.clone()
    };
    assert!(matches!(
        store.list(&other_filter, 3, Some(&token)).await,
        Err(StoreError::InvalidPageToken)
    ));
}

/// The largest page `ListOperations` asks for (500) comes back whole, each operation with its
/// events, one of them given back and claimed again; then the rest. SQLite once refused the
/// events' query of a full page ("too many terms in compound SELECT").
pub async fn list_full_pages(store: Store, _peer: Option<Store>) {
    const PAGE: u32 = 500;
    const OPERATIONS: i64 = PAGE as i64 + 1;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..OPERATIONS {
        let store = store.clone();
        tasks.spawn(async move {
            claim_new(&store, op(&format!("full-{i}")), t(i)).await;
        });
    }
    tasks.join_all().await;
    // The newest given back and claimed again: its events are those of both claims.
    let again = op(&format!("full-{}", OPERATIONS - 1));
    assert!(
        store
            .abandon(
                again.operation_id,
                A,
                "given back".to_owned(),
                t(OPERATIONS)
            )
            .await
            .unwrap()
    );
    claim_new(&store, again.clone(), t(OPERATIONS + 1)).await;

    let all = OperationFilter::default();
    let first = store.list(&all, PAGE, None).await.unwrap();
    assert_eq!(first.operations.len(), PAGE as usize);
    let (newest, events) = &first.operations[0];
    assert_eq!(newest.new.operation_id, again.operation_id);
    assert_eq!(transitions(events).len(), 3, "{events:?}");
    assert!(
        first.operations[1..]
            .iter()
            .all(|(_, events)| transitions(events) == [(None, Some(InFlight))])
    );
    let rest = store
        .list(&all, PAGE, first.next_page_token.as_deref())
        .await
        .unwrap();
    assert_eq!(rest.operations.len(), 1);
    assert_eq!(rest.next_page_token, None);
}

/// Every operation on one resource of one account, oldest first, in any state; other
/// accounts, kinds and ids are someone else's.
pub async fn resource_operations_lists_one_resource(store: Store, _peer: Option<Store>) {
    let on = |key: &str, account: &str, kind: ResourceKind, id: &str| NewOperation {
        klarna_account: account.to_owned(),
        resource_kind: kind,
        resource_id: id.to_owned(),
        ..new_op("pos", Rpc::RefundOrder, key, "order-r")
    };
    use ResourceKind::{Order, Transaction};
    // Created out of claim order, two at the same instant (then ordered by id).
    let late = on("r-late", "eu", Order, "order-r");
    let first = on("r-first", "eu", Order, "order-r");
    let tie_a = on("r-tie-a", "eu", Order, "order-r");
    let tie_b = on("r-tie-b", "eu", Order, "order-r");
    let failed = on("r-failed", "eu", Order, "order-r");
    let review = on("r-review", "eu", Order, "order-r");
    let abandoned = on("r-abandoned", "eu", Order, "order-r");
    let others = [
        on("x-account", "us", Order, "order-r"),
        on("x-kind", "eu", Transaction, "order-r"),
        on("x-id", "eu", Order, "order-s"),
        // Of the order "order-r" too, but acting on one of its transactions.
        on("x-transaction", "eu", Transaction, "tx-9"),
    ];
    claim_new(&store, late.clone(), t(50)).await;
    claim_new(&store, first.clone(), t(0)).await;
    claim_new(&store, tie_a.clone(), t(10)).await;
    claim_new(&store, tie_b.clone(), t(10)).await;
    claim_new(&store, failed.clone(), t(20)).await;
    claim_new(&store, review.clone(), t(30)).await;
    claim_new(&store, abandoned.clone(), t(40)).await;
    for other in &others {
        claim_new(&store, other.clone(), t(5)).await;
    }
    for (new, state) in [
        (&first, Succeeded),
        (&failed, Failed),
        (&review, RequiresReview),
    ] {
        assert!(
            store
                .finish(new.operation_id, A, completion(state), t(60))
                .await
                .unwrap()
        );
    }
    assert!(
        store
            .mark_pending(tie_a.operation_id, A, None, "timeout".into(), None, t(60))
            .await
            .unwrap()
    );
    assert!(
        store
            .abandon(abandoned.operation_id, A, "unreachable".into(), t(60))
            .await
            .unwrap()
    );

    // Oldest created first, ties by id; the abandoned one is gone.
    let mut expected = [
        (50, late.operation_id, InFlight),
        (0, first.operation_id, Succeeded),
        (10, tie_a.operation_id, Pending),
        (10, tie_b.operation_id, InFlight),
        (20, failed.operation_id, Failed),
        (30, review.operation_id, RequiresReview),
    ];
    expected.sort_by_key(|(created, id, _)| (*created, id.to_string()));
    let found = store
        .resource_operations("eu", Order, "order-r")
        .await
        .unwrap();
    assert_eq!(
        found
            .iter()
            .map(|o| (o.new.operation_id, o.state))
            .collect::<Vec<_>>(),
        expected
            .iter()
            .map(|(_, id, state)| (*id, *state))
            .collect::<Vec<_>>()
    );
    // Each as stored.
    for operation in &found {
        let stored = store.get(operation.new.operation_id).await.unwrap();
        assert_eq!(stored.as_ref(), Some(operation));
    }

    for (other, account, kind, id) in [
        (&others[0], "us", Order, "order-r"),
        (&others[1], "eu", Transaction, "order-r"),
        (&others[2], "eu", Order, "order-s"),
        (&others[3], "eu", Transaction, "tx-9"),
    ] {
        let found = store.resource_operations(account, kind, id).await.unwrap();
        assert_eq!(
            found.iter().map(|o| o.new.operation_id).collect::<Vec<_>>(),
            vec![other.operation_id],
            "{account} {kind:?} {id}"
        );
    }
    for (account, kind, id) in [
        ("eu", Order, "order-none"),
        ("eu", Transaction, "tx-1"),
        ("other", Order, "order-r"),
    ] {
        assert!(
            store
                .resource_operations(account, kind, id)
                .await
                .unwrap()
                .is_empty()
        );
    }
}

/// A webhook delivery `event_id` about `operation`, received at `received`.
fn webhook(
    event_id: &str,
    operation: Option<OperationId>,
    received: OffsetDateTime,
) -> WebhookEvent {
    WebhookEvent {
        event_id: event_id.to_owned(),
        event_type: "payment.transaction.refunded".to_owned(),
        klarna_account: "eu".to_owned(),
        operation_id: operation,
        payment_transaction_id: Some("tx-1".to_owned()),
        refund_id: Some(format!("refund-{event_id}")),
        correlation_id: Some(format!("corr-{event_id}")),
        payload: format!(r#"{{"event_id":"{event_id}","note":"ünïcode ✓"}}"#),
        occurred_at: Some("2026-03-01T11:59:59.5+01:00".to_owned()),
        received_at: received,
    }
}

/// `event` as it reads back: its instant in whole microseconds.
fn stored(event: &WebhookEvent) -> WebhookEvent {
    WebhookEvent {
        received_at: at_micros(event.received_at),
        ..event.clone()
    }
}

/// Each webhook event id is recorded once; one that names an operation appends one audit
/// event to it (no state change, the webhook's Klarna ids), and the operation's webhooks read
/// back oldest first.
pub async fn webhook_recorded_once(store: Store, _peer: Option<Store>) {
    let done = op("webhook-done");
    claim_new(&store, done.clone(), t(0)).await;
    assert!(
        store
            .finish(done.operation_id, A, completion(Succeeded), t(1))
            .await
            .unwrap()
    );
    let done_before = store.get(done.operation_id).await.unwrap().unwrap();

    let first = webhook("evt-1", Some(done.operation_id), t(10));
    assert!(
        store
            .record_webhook(first.clone(), "webhook payment.transaction.refunded".into())
            .await
            .unwrap()
    );
    let events = events_of(&store, &done).await;
    assert_eq!(
        transitions(&events),
        vec![
            (None, Some(InFlight)),
            (Some(InFlight), Some(Succeeded)),
            (Some(Succeeded), Some(Succeeded))
        ]
    );
    assert_eq!(
        events[2],
        AuditEvent {
            operation_id: done.operation_id,
            state_before: Some(Succeeded),
            state_after: Some(Succeeded),
            refund_id: Some("refund-evt-1".into()),
            correlation_id: Some("corr-evt-1".into()),
            trace_id: None,
            otel_trace_id: None,
            detail: "webhook payment.transaction.refunded".into(),
            at: at_micros(t(10)),
        }
    );
    assert_eq!(
        store.get(done.operation_id).await.unwrap().unwrap(),
        done_before,
        "a webhook does not change the operation"
    );

    // A redelivery (even with another body and instant) writes nothing.
    let again = WebhookEvent {
        payload: "{}".into(),
        refund_id: None,
        received_at: t(11),
        ..first.clone()
    };
    assert!(
        !store
            .record_webhook(again, "redelivered".into())
            .await
            .unwrap()
    );
    assert_eq!(events_of(&store, &done).await, events);
    assert_eq!(
        store.webhook_events(done.operation_id).await.unwrap(),
        vec![stored(&first)]
    );

    // Oldest received first, then by event id; without Klarna ids, the event has none.
    let earlier = WebhookEvent {
        payment_transaction_id: None,
        refund_id: None,
        correlation_id: None,
        occurred_at: None,
        ..webhook("evt-9", Some(done.operation_id), t(5))
    };
    let same_instant = webhook("evt-2", Some(done.operation_id), t(10));
    for event in [&same_instant, &earlier] {
        assert!(
            store
                .record_webhook(event.clone(), format!("webhook {}", event.event_id))
                .await
                .unwrap()
        );
    }
    assert_eq!(
        store.webhook_events(done.operation_id).await.unwrap(),
        vec![stored(&earlier), stored(&first), stored(&same_instant)]
    );
    let events = events_of(&store, &done).await;
    assert_eq!(events.len(), 5, "{events:?}");
    assert_eq!(
        (
            events[4].refund_id.as_deref(),
            events[4].correlation_id.as_deref()
        ),
        (None, None)
    );
    assert_eq!(events[4].detail, "webhook evt-9");

    // On an operation in flight: the event says IN_FLIGHT, and the lease is untouched.
    let flying = op("webhook-flying");
    let claimed = claim_new(&store, flying.clone(), t(0)).await;
    assert!(
        store
            .record_webhook(
                webhook("evt-3", Some(flying.operation_id), t(2)),
                "w".into()
            )
            .await
            .unwrap()
    );
    assert_eq!(
        transitions(&events_of(&store, &flying).await),
        vec![(None, Some(InFlight)), (Some(InFlight), Some(InFlight))]
    );
    assert_eq!(store.get(flying.operation_id).await.unwrap(), Some(claimed));

    // An operation the store does not know: recorded, no event, once.
    let unknown = op("webhook-unknown").operation_id;
    let orphan = webhook("evt-4", Some(unknown), t(20));
    assert!(
        store
            .record_webhook(orphan.clone(), "w".into())
            .await
            .unwrap()
    );
    assert!(
        !store
            .record_webhook(orphan.clone(), "w".into())
            .await
            .unwrap()
    );
    assert_eq!(store.get(unknown).await.unwrap(), None);
    assert_eq!(
        store.webhook_events(unknown).await.unwrap(),
        vec![stored(&orphan)]
    );

    // No operation: recorded once, returned for none.
    let unmatched = webhook("evt-5", None, t(30));
    assert!(
        store
            .record_webhook(unmatched.clone(), "w".into())
            .await
            .unwrap()
    );
    assert!(!store.record_webhook(unmatched, "w".into()).await.unwrap());
    assert_eq!(
        store.webhook_events(done.operation_id).await.unwrap().len(),
        3
    );
    assert_eq!(store.webhook_events(unknown).await.unwrap().len(), 1);
    assert_eq!(
        store
            .webhook_events(flying.operation_id)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        store
            .webhook_events(op("webhook-none").operation_id)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Concurrent deliveries of one event (from two replicas, where the backend has them): exactly
/// one is recorded, with one audit event.
pub async fn concurrent_webhook_records_once(store: Store, peer: Option<Store>) {
    let new = op("webhook-race");
    claim_new(&store, new.clone(), t(0)).await;
    let event = webhook("evt-race", Some(new.operation_id), t(1));
    let barrier = Arc::new(Barrier::new(8));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let store = match (&peer, i % 2) {
            (Some(peer), 1) => peer.clone(),
            _ => store.clone(),
        };
        let (event, barrier) = (event.clone(), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            store
                .record_webhook(event, format!("delivery {i}"))
                .await
                .unwrap()
        });
    }
    let recorded = tasks.join_all().await;
    assert_eq!(recorded.iter().filter(|r| **r).count(), 1, "{recorded:?}");
    assert_eq!(
        store.webhook_events(new.operation_id).await.unwrap(),
        vec![stored(&event)]
    );
    assert_eq!(
        transitions(&events_of(&store, &new).await),
        vec![(None, Some(InFlight)), (Some(InFlight), Some(InFlight))]
    );
}

/// A caller's daily total per currency: reservations add up to the cap exactly and no
/// further, a refusal changes nothing, each (caller, currency, day) has its own total, and a
/// release gives back, never below zero.
pub async fn daily_reservations_stay_within_the_cap(store: Store, _peer: Option<Store>) {
    let day = date!(2026 - 03 - 01);
    let total = |caller: &'static str, currency: &'static str, day| {
        let store = store.clone();
        async move { store.daily_total(caller, currency, day).await.unwrap() }
    };
    let reserve = |caller: &'static str, currency: &'static str, day, amount, cap| {
        let store = store.clone();
        async move {
            store
                .reserve_daily(caller, currency, day, amount, cap)
                .await
                .unwrap()
        }
    };
    assert_eq!(total("pos", "EUR", day).await, 0);

    // Up to the cap exactly; one more is refused and changes nothing.
    assert!(reserve("pos", "EUR", day, 60, 100).await);
    assert_eq!(total("pos", "EUR", day).await, 60);
    assert!(reserve("pos", "EUR", day, 40, 100).await);
    assert_eq!(total("pos", "EUR", day).await, 100);
    assert!(!reserve("pos", "EUR", day, 1, 100).await);
    assert_eq!(total("pos", "EUR", day).await, 100);
    // A cap lowered below the total (the callers file changed) refuses even nothing; at the
    // cap, nothing still fits.
    assert!(!reserve("pos", "EUR", day, 1, 50).await);
    assert!(!reserve("pos", "EUR", day, 0, 50).await);
    assert!(reserve("pos", "EUR", day, 0, 100).await);
    assert_eq!(total("pos", "EUR", day).await, 100);

    // Another caller, currency or day has its own total.
    let next_day = day.next_day().unwrap();
    assert!(reserve("web", "EUR", day, 100, 100).await);
    assert!(reserve("pos", "SEK", day, 100, 100).await);
    assert!(reserve("pos", "EUR", next_day, 100, 100).await);
    assert_eq!(total("web", "EUR", day).await, 100);
    assert_eq!(total("pos", "SEK", day).await, 100);
    assert_eq!(total("pos", "EUR", next_day).await, 100);
    assert_eq!(total("pos", "EUR", day).await, 100);
    assert_eq!(total("pos", "USD", day).await, 0);

    // A release gives back what it names, and the room is there again.
    store.release_daily("pos", "EUR", day, 30).await.unwrap();
    assert_eq!(total("pos", "EUR", day).await, 70);
    assert!(!reserve("pos", "EUR", day, 31, 100).await);
    assert!(reserve("pos", "EUR", day, 30, 100).await);
    assert_eq!(total("pos", "EUR", day).await, 100);
    // Never below zero, and only its own total.
    store.release_daily("pos", "EUR", day, 500).await.unwrap();
    assert_eq!(total("pos", "EUR", day).await, 0);
    assert_eq!(total("web", "EUR", day).await, 100);
    assert_eq!(total("pos", "EUR", next_day).await, 100);
    // Nothing reserved, nothing to give back: no total appears.
    store.release_daily("nobody", "EUR", day, 10).await.unwrap();
    assert_eq!(total("nobody", "EUR", day).await, 0);
    assert!(reserve("nobody", "EUR", day, 10, 10).await);
    assert_eq!(total("nobody", "EUR", day).await, 10);

    // An amount over the cap is refused on a day without a total too, and on a total of zero.
    assert!(!reserve("fresh", "EUR", day, 101, 100).await);
    assert_eq!(total("fresh", "EUR", day).await, 0);
    assert!(reserve("fresh", "EUR", day, 100, 100).await);
    assert!(!reserve("pos", "EUR", day, 101, 100).await);
    assert_eq!(total("pos", "EUR", day).await, 0);

    // The largest cap: the check does not overflow.
    assert!(reserve("big", "EUR", day, i64::MAX, i64::MAX).await);
    assert!(!reserve("big", "EUR", day, 1, i64::MAX).await);
    assert!(!reserve("big", "EUR", day, i64::MAX, i64::MAX).await);
    assert_eq!(total("big", "EUR", day).await, i64::MAX);
    store.release_daily("big", "EUR", day, 1).await.unwrap();
    assert_eq!(total("big", "EUR", day).await, i64::MAX - 1);
}

/// Concurrent reservations on one total (from two replicas, where the backend has them),
/// starting on a day without a total: exactly as many succeed as the cap holds. Then releases
/// racing reservations: the total is exactly what the successful reservations left.
pub async fn concurrent_daily_reservations_never_exceed_the_cap(store: Store, peer: Option<Store>) {
    const RESERVATIONS: usize = 40;
    let day = date!(2026 - 03 - 01);
    let store_for = |i: usize| match (&peer, i % 2) {
        (Some(peer), 1) => peer.clone(),
        _ => store.clone(),
    };
    let barrier = Arc::new(Barrier::new(RESERVATIONS));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..RESERVATIONS {
        let (store, barrier) = (store_for(i), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            store
                .reserve_daily("pos", "EUR", day, 10, 100)
                .await
                .unwrap()
        });
    }
    let reserved = tasks.join_all().await;
    assert_eq!(reserved.iter().filter(|r| **r).count(), 10, "{reserved:?}");
    assert_eq!(store.daily_total("pos", "EUR", day).await.unwrap(), 100);

    // Ten releases of 10 (everything) racing twenty reservations of 10.
    let barrier = Arc::new(Barrier::new(30));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..30 {
        let (store, barrier) = (store_for(i), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            if i < 10 {
                store.release_daily("pos", "EUR", day, 10).await.unwrap();
                false
            } else {
                store
                    .reserve_daily("pos", "EUR", day, 10, 100)
                    .await
                    .unwrap()
            }
        });
    }
    let reserved = tasks.join_all().await.into_iter().filter(|r| *r).count();
    let total = store.daily_total("pos", "EUR", day).await.unwrap();
    assert_eq!(total, 10 * i64::try_from(reserved).unwrap());
    assert!(total <= 100, "{total}");
    if let Some(peer) = &peer {
        assert_eq!(peer.daily_total("pos", "EUR", day).await.unwrap(), total);
    }
}

/// The answer context kept when an operation went PENDING survives a take-over and a resend
/// that marks it pending again without one.
pub async fn answer_context_survives_a_resend(store: Store, _peer: Option<Store>) {
    let new = op("context");
    claim_new(&store, new.clone(), t(0)).await;
    let pending = |holder, context: Option<&str>, at| {
        let store = store.clone();
        let context = context.map(str::to_owned);
        async move {
            store
                .mark_pending(
                    new.operation_id,
                    holder,
                    None,
                    "unknown".into(),
                    context,
                    t(at),
                )
                .await
                .unwrap()
        }
    };
    assert!(pending(A, Some("fee"), 1).await);
    assert!(
        store
            .take_over(new.operation_id, B, t(2), LEASE, None, None)
            .await
            .unwrap()
    );
    assert!(pending(B, None, 3).await);
    let read = store.get(new.operation_id).await.unwrap().unwrap();
    assert_eq!(read.state, Pending);
    assert_eq!(read.answer_context.as_deref(), Some("fee"));
}

/// Retention drops answer bodies only: every operation's identity, final state and Klarna ids
/// stay, so a retry long after still finds the operation and can never execute it again, and
/// nothing of an operation that is not final (or needs review) is touched.
/// A pass drops every old body, however many and however many share one microsecond (the
/// store drops them a chunk at a time), and the next pass drops only what became old since.
pub async fn purge_many_in_one_pass(store: Store, _peer: Option<Store>) {
    const OLD: i64 = 1_101;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..=OLD {
        let store = store.clone();
        tasks.spawn(async move {
            let new = op(&format!("purge-{i}"));
            claim_new(&store, new.clone(), t(0)).await;
            // All but the last finished in the same microsecond, a few of them FAILED.
            let (state, at) = match i {
                OLD => (Succeeded, 1_000),
                i if i % 100 == 0 => (Failed, 10),
                _ => (Succeeded, 10),
            };
            assert!(
                store
                    .finish(new.operation_id, A, completion(state), t(at))
                    .await
                    .unwrap()
            );
            new
        });
    }
    let ops = tasks.join_all().await;
    assert_eq!(store.purge(t(500)).await.unwrap(), OLD as u64);
    for new in &ops {
        let kept = store.get(new.operation_id).await.unwrap().unwrap();
        let payload = kept.response.unwrap().payload;
        assert_eq!(
            payload.is_empty(),
            new.idempotency_key.as_str() != format!("purge-{OLD}")
        );
    }
    assert_eq!(store.purge(t(500)).await.unwrap(), 0);
    assert_eq!(store.purge(t(2_000)).await.unwrap(), 1);
}

pub async fn purge_keeps_identity(store: Store, _peer: Option<Store>) {
    let old_done = op("old-done");
    let old_failed = op("old-failed");
    let old_review = op("old-review");
    let new_done = op("new-done");
    let old_pending = op("old-pending");
    let old_flight = op("old-flight");
    for new in [
        &old_done,
        &old_failed,
        &old_review,
        &new_done,
        &old_pending,
        &old_flight,
    ] {
        claim_new(&store, new.clone(), t(0)).await;
    }
    for (new, state, at) in [
        (&old_done, Succeeded, 10),
        (&old_failed, Failed, 10),
        (&old_review, RequiresReview, 10),
        (&new_done, Succeeded, 1000),
    ] {
        assert!(
            store
                .finish(new.operation_id, A, completion(state), t(at))
                .await
                .unwrap()
        );
    }
    store
        .mark_pending(
            old_pending.operation_id,
            A,
            None,
            "timeout".into(),
            None,
            t(10),
        )
        .await
        .unwrap();
    let events_before = events_of(&store, &old_done).await;

    assert_eq!(store.purge(t(500)).await.unwrap(), 2);
    for (purged, state) in [(&old_done, Succeeded), (&old_failed, Failed)] {
        let kept = store.get(purged.operation_id).await.unwrap().unwrap();
        assert_eq!(kept.new, *purged);
        assert_eq!(kept.state, state);
        assert_eq!(kept.refund_id.as_deref(), Some("refund-1"));
        assert_eq!(kept.correlation_id.as_deref(), Some("corr-1"));
        let response = kept.response.unwrap();
        assert_eq!(response.code, completion(state).response.code);
        assert_eq!(response.message, "done");
        assert!(response.payload.is_empty(), "{response:?}");
    }
    for untouched in [&old_review, &new_done] {
        let kept = store.get(untouched.operation_id).await.unwrap().unwrap();
        assert_eq!(kept.response.unwrap().payload, vec![0, 159, 146, 150, 255]);
    }
    for unresolved in [&old_pending, &old_flight] {
        assert!(store.get(unresolved.operation_id).await.unwrap().is_some());
    }
    assert_eq!(store.purge(t(500)).await.unwrap(), 0);

    // A late retry finds the operation, final: no second claim, no new event.
    match store
        .claim(old_done.clone(), B, t(2000), LEASE)
        .await
        .unwrap()
    {
        Claim::Existing(op) => assert_eq!(op.state, Succeeded),
        Claim::New(op) => panic!("a purged operation was claimed again: {op:?}"),
    }
    assert_eq!(events_of(&store, &old_done).await, events_before);
}

pub async fn lock_order_serializes_one_order(store: Store, peer: Option<Store>) {
    let log = Arc::new(Mutex::new(Vec::<&'static str>::new()));
    let push = |log: &Arc<Mutex<Vec<&'static str>>>, entry| log.lock().unwrap().push(entry);
    let other = peer.unwrap_or_else(|| store.clone());

    let a = store.lock_order("eu", "order-1").await.unwrap();
    push(&log, "a locked");
    let (wants, wanted) = oneshot::channel();
    let b = {
        let (log, other) = (log.clone(), other.clone());
        tokio::spawn(async move {
            push(&log, "b wants");
            wants.send(()).unwrap();
            let lock = other.lock_order("eu", "order-1").await.unwrap();
            push(&log, "b locked");
            lock.release().await;
        })
    };
    wanted.await.unwrap();
    // Let b run as far as it can: without the lock it would log "b locked" now.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    // A different order is not held up by a's lock.
    let different =
        tokio::time::timeout(Duration::from_secs(30), other.lock_order("eu", "order-2"))
            .await
            .expect("a different order must not wait")
            .unwrap();
    different.release().await;
    // Nor is another kind of resource with the same id.
    let transaction = tokio::time::timeout(
        Duration::from_secs(30),
        other.lock_resource("eu", ResourceKind::Transaction, "order-1"),
    )
    .await
    .expect("a transaction with the order's id must not wait")
    .unwrap();
    transaction.release().await;
    let same_order_other_account = other.lock_order("us", "order-1").await.unwrap();
    drop(same_order_other_account);

    push(&log, "a releases");
    a.release().await;
    b.await.unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        vec!["a locked", "b wants", "a releases", "b locked"]
    );

    // A dropped (not released) lock is released too.
    let dropped = store.lock_order("eu", "order-3").await.unwrap();
    drop(dropped);
    let relocked = tokio::time::timeout(Duration::from_secs(30), other.lock_order("eu", "order-3"))
        .await
        .expect("a dropped lock must be released")
        .unwrap();
    relocked.release().await;
}

/// A final outcome and the release of its order's lock in one store call: the operation is
/// final with its event, the lock goes to the taker waiting for it, and a finish that does
/// not apply (not the holder's) records nothing but releases the lock all the same.
pub async fn finish_and_release_frees_the_order(store: Store, peer: Option<Store>) {
    let other = peer.unwrap_or_else(|| store.clone());
    let first = op("finish-release-1");
    claim_new(&store, first.clone(), t(0)).await;
    let lock = store.lock_order("eu", "order-1").await.unwrap();
    let (wants, wanted) = oneshot::channel();
    let waiter = {
        let other = other.clone();
        tokio::spawn(async move {
            wants.send(()).unwrap();
            other.lock_order("eu", "order-1").await.unwrap()
        })
    };
    wanted.await.unwrap();
    assert!(
        store
            .finish_and_release(first.operation_id, A, completion(Succeeded), t(1), lock)
            .await
            .unwrap()
    );
    let next = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the released lock must go to its waiter")
        .unwrap();
    let read = store.get(first.operation_id).await.unwrap().unwrap();
    assert_eq!(read.state, Succeeded);
    assert_eq!(read.response.as_ref().map(|r| r.code), Some(0));
    assert_eq!(
        transitions(&events_of(&store, &first).await),
        vec![(None, Some(InFlight)), (Some(InFlight), Some(Succeeded))]
    );

    // B never held the second operation: nothing is recorded, and the lock is released.
    let second = op("finish-release-2");
    claim_new(&store, second.clone(), t(2)).await;
    assert!(
        !store
            .finish_and_release(second.operation_id, B, completion(Failed), t(3), next)
            .await
            .unwrap()
    );
    let read = store.get(second.operation_id).await.unwrap().unwrap();
    assert_eq!(read.state, InFlight);
    assert_eq!(events_of(&store, &second).await.len(), 1);
    let again = tokio::time::timeout(Duration::from_secs(30), other.lock_order("eu", "order-1"))
        .await
        .expect("a lock released with a finish that did not apply must be free")
        .unwrap();
    again.release().await;
}

pub async fn group_commit_64_claims(store: Store, _peer: Option<Store>) {
    let barrier = Arc::new(Barrier::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let (store, barrier) = (store.clone(), barrier.clone());
        tasks.spawn(async move {
            let new = op(&format!("group-{i}"));
            barrier.wait().await;
            let claimed = claim_new(&store, new.clone(), t(i)).await;
            store
                .finish(new.operation_id, A, completion(Succeeded), t(i + 1))
                .await
                .unwrap();
            claimed
        });
    }
    let claimed = tasks.join_all().await;
    assert_eq!(claimed.len(), 64);
    let page = store
        .list(
            &OperationFilter {
                state: Some(Succeeded),
                ..OperationFilter::default()
            },
            100,
            None,
        )
        .await
        .unwrap();
    assert_eq!(page.operations.len(), 64);
    assert!(page.operations.iter().all(|(_, events)| events.len() == 2));
}

/// Many writes at once, repeating keys: three claims per key (one `New`), then two finishes
/// and a lease renewal racing on each (one finish wins; a renewal records nothing). Each key
/// ends with exactly two events, whatever the writes were grouped into.
pub async fn concurrent_mixed_writes(store: Store, _peer: Option<Store>) {
    const KEYS: i64 = 40;
    let barrier = Arc::new(Barrier::new(KEYS as usize * 3));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..KEYS {
        for _ in 0..3 {
            let (store, barrier) = (store.clone(), barrier.clone());
            tasks.spawn(async move {
                let new = op(&format!("mixed-{i}"));
                let holder = LeaseHolder::new();
                barrier.wait().await;
                let Claim::New(_) = store.claim(new.clone(), holder, t(i), LEASE).await.unwrap()
                else {
                    return 0;
                };
                let (a, b, c) = tokio::join!(
                    store.finish(new.operation_id, holder, completion(Succeeded), t(i + 1)),
                    store.finish(new.operation_id, holder, completion(Failed), t(i + 2)),
                    store.renew_lease(new.operation_id, holder, t(i + 1), LEASE),
                );
                a.unwrap();
                b.unwrap();
                c.unwrap();
                1
            });
        }
    }
    let winners: i32 = tasks.join_all().await.into_iter().sum();
    assert_eq!(i64::from(winners), KEYS);
    for i in 0..KEYS {
        let new = op(&format!("mixed-{i}"));
        let stored = store.get(new.operation_id).await.unwrap().unwrap();
        let events = events_of(&store, &new).await;
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].state_after, Some(InFlight));
        assert_eq!(events[1].state_before, Some(InFlight));
        assert_eq!(events[1].state_after, Some(stored.state));
        assert!(matches!(stored.state, Succeeded | Failed), "{stored:?}");
        assert_eq!(events[1].trace_id.as_deref(), Some("trace-finish"));
    }
}

/// The OpenTelemetry trace id of each event of `new`, oldest first.
async fn otel_trace_ids(store: &Store, new: &NewOperation) -> Vec<Option<String>> {
    events_of(store, new)
        .await
        .into_iter()
        .map(|e| e.otel_trace_id)
        .collect()
}

/// The trace of the reconciler's resolution, taking operations over.
const RESOLUTION_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// An operation keeps the traceparent of the request that created it. Its holder's trace id
/// (the claim's, then each take-over's) goes to every event of a claim, take-over, finish,
/// mark pending or abandon; a webhook's event has none.
pub async fn trace_context_follows_the_holder(store: Store, peer: Option<Store>) {
    // With a peer, the reconciler taking over is another process.
    let other = peer.unwrap_or_else(|| store.clone());
    let some = |trace: &str| Some(trace.to_owned());

    // Claimed with a traceparent, marked pending, taken over by the reconciler, finished.
    let new = op("traced");
    let claimed = claim_new(&store, new.clone(), t(0)).await;
    assert_eq!(claimed.new.traceparent, Some(traceparent(CLAIM_TRACE)));
    let read = store.get(new.operation_id).await.unwrap().unwrap();
    assert_eq!(
        read.new.traceparent.as_ref().map(TraceParent::as_str),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(otel_trace_ids(&store, &new).await, vec![some(CLAIM_TRACE)]);
    assert!(
        store
            .mark_pending(new.operation_id, A, None, "timeout".into(), None, t(1))
            .await
            .unwrap()
    );
    assert!(
        other
            .take_over(
                new.operation_id,
                B,
                t(2),
                LEASE,
                some("reconciler"),
                some(RESOLUTION_TRACE),
            )
            .await
            .unwrap()
    );
    assert!(
        other
            .finish(new.operation_id, B, completion(Succeeded), t(3))
            .await
            .unwrap()
    );
    assert!(
        store
            .record_webhook(
                webhook("evt-traced", Some(new.operation_id), t(4)),
                "webhook".into()
            )
            .await
            .unwrap()
    );
    let events = events_of(&store, &new).await;
    assert_eq!(
        events
            .iter()
            .map(|e| (
                e.detail.as_str(),
                e.trace_id.as_deref(),
                e.otel_trace_id.as_deref()
            ))
            .collect::<Vec<_>>(),
        vec![
            ("claimed", Some("trace-claim"), Some(CLAIM_TRACE)),
            ("timeout", Some("trace-claim"), Some(CLAIM_TRACE)),
            ("taken over", Some("reconciler"), Some(RESOLUTION_TRACE)),
            (
                "klarna answered",
                Some("trace-finish"),
                Some(RESOLUTION_TRACE)
            ),
            ("webhook", None, None),
        ]
    );
    // The traceparent stays the creating request's.
    let read = store.get(new.operation_id).await.unwrap().unwrap();
    assert_eq!(read.new.traceparent, Some(traceparent(CLAIM_TRACE)));

    // Abandoned by the holder that took it over: its trace id. The key's next claim brings
    // its own traceparent.
    let abandoned = op("traced-abandoned");
    claim_new(&store, abandoned.clone(), t(0)).await;
    assert!(
        other
            .take_over(
                abandoned.operation_id,
                B,
                t(30),
                LEASE,
                None,
                some(RESOLUTION_TRACE)
            )
            .await
            .unwrap()
    );
    assert!(
        other
            .abandon(
                abandoned.operation_id,
                B,
                "klarna unreachable".into(),
                t(31)
            )
            .await
            .unwrap()
    );
    const NEXT_TRACE: &str = "11111111111111111111111111111111";
    let again = NewOperation {
        traceparent: Some(traceparent(NEXT_TRACE)),
        ..abandoned.clone()
    };
    let reclaimed = claim_new(&store, again, t(40)).await;
    assert_eq!(reclaimed.new.traceparent, Some(traceparent(NEXT_TRACE)));
    assert_eq!(
        otel_trace_ids(&store, &abandoned).await,
        vec![
            some(CLAIM_TRACE),
            some(RESOLUTION_TRACE),
            some(RESOLUTION_TRACE),
            some(NEXT_TRACE),
        ]
    );

    // A take-over without a trace leaves none: the previous holder's trace did not cause
    // what follows.
    let untraced_takeover = op("traced-then-not");
    claim_new(&store, untraced_takeover.clone(), t(0)).await;
    assert!(
        other
            .take_over(untraced_takeover.operation_id, B, t(30), LEASE, None, None)
            .await
            .unwrap()
    );
    assert!(
        other
            .finish(untraced_takeover.operation_id, B, completion(Failed), t(31))
            .await
            .unwrap()
    );
    assert_eq!(
        otel_trace_ids(&store, &untraced_takeover).await,
        vec![some(CLAIM_TRACE), None, None]
    );

    // Claimed without a traceparent: no trace id, until a take-over brings one.
    let untraced = NewOperation {
        traceparent: None,
        ..op("untraced")
    };
    let claimed = claim_new(&store, untraced.clone(), t(0)).await;
    assert_eq!(claimed.new.traceparent, None);
    assert_eq!(
        store
            .get(untraced.operation_id)
            .await
            .unwrap()
            .unwrap()
            .new
            .traceparent,
        None
    );
    assert!(
        store
            .mark_pending(untraced.operation_id, A, None, "timeout".into(), None, t(1))
            .await
            .unwrap()
    );
    assert!(
        other
            .take_over(
                untraced.operation_id,
                B,
                t(2),
                LEASE,
                None,
                some(RESOLUTION_TRACE)
            )
            .await
            .unwrap()
    );
    assert_eq!(
        otel_trace_ids(&store, &untraced).await,
        vec![None, None, some(RESOLUTION_TRACE)]
    );
}

/// The gauges' summary: unresolved operations (PENDING, or IN_FLIGHT past their lease) and
/// the oldest one's creation, REQUIRES_REVIEW, and IN_FLIGHT under a live lease; final
/// operations are not counted.
pub async fn attention_counts_what_needs_a_look(store: Store, _peer: Option<Store>) {
    assert_eq!(
        store.attention(t(0)).await.unwrap(),
        AttentionSummary::default()
    );
    // Lease until t(30).
    let expired = op("att-expired");
    claim_new(&store, expired.clone(), t(0)).await;
    let pending = op("att-pending");
    claim_new(&store, pending.clone(), t(5)).await;
    store
        .mark_pending(pending.operation_id, A, None, "timeout".into(), None, t(6))
        .await
        .unwrap();
    // Lease until t(40).
    let live = op("att-live");
    claim_new(&store, live.clone(), t(10)).await;
    for (key, state) in [
        ("att-review-1", RequiresReview),
        ("att-review-2", RequiresReview),
        ("att-done", Succeeded),
        ("att-failed", Failed),
    ] {
        let new = op(key);
        claim_new(&store, new.clone(), t(1)).await;
        assert!(
            store
                .finish(new.operation_id, A, completion(state), t(2))
                .await
                .unwrap()
        );
    }

    // Before the first lease ends: only the PENDING one is unresolved.
    assert_eq!(
        store.attention(t(20)).await.unwrap(),
        AttentionSummary {
            pending: 1,
            oldest_pending_since: Some(at_micros(t(5))),
            requires_review: 2,
            in_flight: 2,
        }
    );
    // An IN_FLIGHT operation past its lease counts as pending, with its creation.
    assert_eq!(
        store.attention(t(35)).await.unwrap(),
        AttentionSummary {
            pending: 2,
            oldest_pending_since: Some(at_micros(t(0))),
            requires_review: 2,
            in_flight: 1,
        }
    );
    // Settled: nothing pending any more.
    for (new, at) in [(&expired, t(35)), (&pending, t(35))] {
        assert!(
            store
                .take_over(new.operation_id, B, at, LEASE, None, None)
                .await
                .unwrap()
        );
        assert!(
            store
                .finish(new.operation_id, B, completion(Succeeded), at)
                .await
                .unwrap()
        );
    }
    assert_eq!(
        store.attention(t(36)).await.unwrap(),
        AttentionSummary {
            pending: 0,
            oldest_pending_since: None,
            requires_review: 2,
            in_flight: 1,
        }
    );
}

/// A link of `reference` of `kind` in account `eu` to `order`, from store `store`, at `t(1)`.
fn link(kind: ReferenceKind, reference: &str, order: &str, store: Option<&str>) -> OrderReference {
    OrderReference {
        klarna_account: "eu".to_owned(),
        kind,
        reference: reference.to_owned(),
        order_id: order.to_owned(),
        store_id: store.map(str::to_owned),
        linked_at: t(1),
    }
}

/// `reference` as it reads back: its instant in whole microseconds.
fn linked(reference: &OrderReference) -> OrderReference {
    OrderReference {
        linked_at: at_micros(reference.linked_at),
        ..reference.clone()
    }
}

const ORDER_A: &str = "0b1e9c43-6a2f-4e5d-9b8c-7a6f5e4d3c2b";
const ORDER_B: &str = "5d4c3b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a";

/// A reference is linked once, to the first order linked to it: linking it again to that order
/// changes nothing (the first link's store and instant stay), to another order is refused with
/// the order it is linked to. Each (account, kind, reference) is its own link, and references
/// are compared exactly.
pub async fn references_link_once(store: Store, _peer: Option<Store>) {
    use ReferenceKind::{Klarna, Receipt};
    let find = |account: &'static str, kind, reference: &'static str| {
        let store = store.clone();
        async move {
            store
                .find_reference(account, kind, reference)
                .await
                .unwrap()
        }
    };
    assert_eq!(find("eu", Receipt, "RCPT-1").await, None);

    let first = link(Receipt, "RCPT-1", ORDER_A, Some("store-12"));
    assert_eq!(
        store.link_reference(first.clone()).await.unwrap(),
        LinkOutcome::Linked
    );
    assert_eq!(find("eu", Receipt, "RCPT-1").await, Some(linked(&first)));

    // Again to the same order, from another store and later: nothing changes.
    let again = OrderReference {
        store_id: Some("store-99".to_owned()),
        linked_at: t(60),
        ..first.clone()
    };
    assert_eq!(
        store.link_reference(again).await.unwrap(),
        LinkOutcome::AlreadyLinked
    );
    let without_store = OrderReference {
        store_id: None,
        ..first.clone()
    };
    assert_eq!(
        store.link_reference(without_store).await.unwrap(),
        LinkOutcome::AlreadyLinked
    );
    // To another order: refused, naming the order it is linked to.
    assert_eq!(
        store
            .link_reference(link(Receipt, "RCPT-1", ORDER_B, Some("store-12")))
            .await
            .unwrap(),
        LinkOutcome::LinkedElsewhere {
            order_id: ORDER_A.to_owned()
        }
    );
    assert_eq!(find("eu", Receipt, "RCPT-1").await, Some(linked(&first)));

    // The same text as Klarna's reference, or in another account: links of their own.
    let klarna = link(Klarna, "RCPT-1", ORDER_B, None);
    assert_eq!(
        store.link_reference(klarna.clone()).await.unwrap(),
        LinkOutcome::Linked
    );
    let elsewhere = OrderReference {
        klarna_account: "us".to_owned(),
        ..link(Receipt, "RCPT-1", ORDER_B, Some("store-1"))
    };
    assert_eq!(
        store.link_reference(elsewhere.clone()).await.unwrap(),
        LinkOutcome::Linked
    );
    assert_eq!(find("eu", Klarna, "RCPT-1").await, Some(linked(&klarna)));
    assert_eq!(
        find("us", Receipt, "RCPT-1").await,
        Some(linked(&elsewhere))
    );
    assert_eq!(find("eu", Receipt, "RCPT-1").await, Some(linked(&first)));
    assert_eq!(find("us", Klarna, "RCPT-1").await, None);

    // Exact comparison: other case or surrounding spaces are other references, linked apart.
    for other in ["rcpt-1", "RCPT-1 ", " RCPT-1", "RCPT-1\u{a0}"] {
        assert_eq!(
            store.find_reference("eu", Receipt, other).await.unwrap(),
            None,
            "{other:?}"
        );
    }
    let lower = link(Receipt, "rcpt-1", ORDER_B, None);
    assert_eq!(
        store.link_reference(lower.clone()).await.unwrap(),
        LinkOutcome::Linked
    );
    assert_eq!(find("eu", Receipt, "rcpt-1").await, Some(linked(&lower)));
    assert_eq!(find("eu", Receipt, "RCPT-1").await, Some(linked(&first)));

    // Unknown: none, in any account or kind.
    assert_eq!(find("eu", Receipt, "RCPT-2").await, None);
    assert_eq!(find("eu", Klarna, "KL-404").await, None);
    assert_eq!(find("nowhere", Receipt, "RCPT-1").await, None);
}

/// Concurrent links of one reference to 20 different orders (from two replicas, where the
/// backend has them): exactly one is linked, and every other is refused naming the winner's
/// order, which is the one found.
pub async fn concurrent_links_of_one_reference_one_wins(store: Store, peer: Option<Store>) {
    const LINKS: usize = 20;
    let order = |i: usize| format!("00000000-0000-4000-8000-{i:012}");
    let barrier = Arc::new(Barrier::new(LINKS));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..LINKS {
        let store = match (&peer, i % 2) {
            (Some(peer), 1) => peer.clone(),
            _ => store.clone(),
        };
        let reference = link(
            ReferenceKind::Receipt,
            "RCPT-RACE",
            &order(i),
            Some("store-1"),
        );
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            let outcome = store.link_reference(reference).await.unwrap();
            (i, outcome)
        });
    }
    let outcomes = tasks.join_all().await;
    let winners: Vec<usize> = outcomes
        .iter()
        .filter(|(_, outcome)| *outcome == LinkOutcome::Linked)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    let winner = order(winners[0]);
    for (i, outcome) in &outcomes {
        if *i != winners[0] {
            assert_eq!(
                *outcome,
                LinkOutcome::LinkedElsewhere {
                    order_id: winner.clone()
                },
                "link {i}"
            );
        }
    }
    let found = store
        .find_reference("eu", ReferenceKind::Receipt, "RCPT-RACE")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.order_id, winner);
    if let Some(peer) = &peer {
        assert_eq!(
            peer.find_reference("eu", ReferenceKind::Receipt, "RCPT-RACE")
                .await
                .unwrap(),
            Some(found)
        );
    }
}

/// The trace of an operator's request settling a review.
const OPERATOR_TRACE: &str = "5b8efff798038103d269b633813fc60c";

/// Operator `operator`'s decision `state`, naming `refund_id`.
fn resolution(state: OperationState, refund_id: Option<&str>, operator: &str) -> Resolution {
    Resolution {
        state,
        response: StoredResponse {
            code: if state == Succeeded { 0 } else { 9 },
            message: format!("decided by {operator}"),
            payload: vec![7, 0, 255, 128],
        },
        refund_id: refund_id.map(str::to_owned),
        operator: operator.to_owned(),
        reason: "checked in the Klarna portal: ünïcode ✓".to_owned(),
        otel_trace_id: Some(OPERATOR_TRACE.to_owned()),
    }
}

/// Operation `key`, claimed by A at t(0) and finished REQUIRES_REVIEW at t(1) with
/// `refund_id`.
async fn in_review(store: &Store, key: &str, refund_id: Option<&str>) -> NewOperation {
    let new = op(key);
    claim_new(store, new.clone(), t(0)).await;
    let mut review = completion(RequiresReview);
    review.refund_id = refund_id.map(str::to_owned);
    assert!(
        store
            .finish(new.operation_id, A, review, t(1))
            .await
            .unwrap()
    );
    new
}

/// A person settles a REQUIRES_REVIEW operation: the new state, the operator's answer for
/// replays, the refund id named for SUCCEEDED (kept otherwise), one event naming the operator
/// and the reason; settled once only.
pub async fn resolve_review_settles_a_review(store: Store, _peer: Option<Store>) {
    let new = in_review(&store, "review-succeeded", None).await;
    let before = store.get(new.operation_id).await.unwrap().unwrap();
    let decided = resolution(Succeeded, Some("refund-by-hand"), "alice");
    assert!(
        store
            .resolve_review(new.operation_id, decided.clone(), t(10))
            .await
            .unwrap()
    );
    let read = store.get(new.operation_id).await.unwrap().unwrap();
    assert_eq!(read.state, Succeeded);
    assert_eq!(read.refund_id.as_deref(), Some("refund-by-hand"));
    assert_eq!(read.response, Some(decided.response.clone()));
    assert_ne!(
        read.response, before.response,
        "the stored answer is replaced"
    );
    assert_eq!(read.updated_at, at_micros(t(10)));
    // Everything else stays: what was claimed, Klarna's correlation id, the last holder.
    assert_eq!(read.new, before.new);
    assert_eq!(read.created_at, before.created_at);
    assert_eq!(read.correlation_id, before.correlation_id);
    assert_eq!(read.answer_context, before.answer_context);
    assert_eq!(read.lease_holder, Some(A));
    assert_eq!(read.lease_expires_at, None);
    assert!(!read.is_unresolved(t(10)));

    let events = events_of(&store, &new).await;
    assert_eq!(
        transitions(&events),
        vec![
            (None, Some(InFlight)),
            (Some(InFlight), Some(RequiresReview)),
            (Some(RequiresReview), Some(Succeeded)),
        ]
    );
    let last = &events[2];
    assert_eq!(
        last.detail,
        "resolved by alice: checked in the Klarna portal: ünïcode ✓"
    );
    assert_eq!(last.trace_id.as_deref(), Some("operator:alice"));
    assert_eq!(last.otel_trace_id.as_deref(), Some(OPERATOR_TRACE));
    assert_eq!(last.refund_id.as_deref(), Some("refund-by-hand"));
    assert_eq!(last.correlation_id.as_deref(), Some("corr-1"));
    assert_eq!(last.at, at_micros(t(10)));

    // Settled: a second resolution (either way) changes nothing and records nothing.
    for state in [Succeeded, Failed] {
        assert!(
            !store
                .resolve_review(
                    new.operation_id,
                    resolution(state, Some("refund-2"), "bob"),
                    t(11)
                )
                .await
                .unwrap()
        );
    }
    assert_eq!(store.get(new.operation_id).await.unwrap(), Some(read));
    assert_eq!(events_of(&store, &new).await, events);

    // FAILED: the refund id of the review stays (a failed refund names none, so the one given
    // is not kept); no operator trace given, none recorded.
    let failed = in_review(&store, "review-failed", Some("refund-1")).await;
    let mut refused = resolution(Failed, Some("refund-ignored"), "carol");
    refused.otel_trace_id = None;
    assert!(
        store
            .resolve_review(failed.operation_id, refused.clone(), t(12))
            .await
            .unwrap()
    );
    let read = store.get(failed.operation_id).await.unwrap().unwrap();
    assert_eq!(read.state, Failed);
    assert_eq!(read.refund_id.as_deref(), Some("refund-1"));
    assert_eq!(read.response, Some(refused.response));
    let events = events_of(&store, &failed).await;
    assert_eq!(events.len(), 3);
    assert_eq!(
        transitions(&events[2..]),
        vec![(Some(RequiresReview), Some(Failed))]
    );
    assert!(events[2].detail.contains("carol"), "{:?}", events[2].detail);
    assert!(events[2].detail.contains("checked in the Klarna portal"));
    assert_eq!(events[2].trace_id.as_deref(), Some("operator:carol"));
    assert_eq!(events[2].otel_trace_id, None);
    assert_eq!(events[2].refund_id.as_deref(), Some("refund-1"));

    // SUCCEEDED without a refund id keeps the stored one.
    let kept = in_review(&store, "review-kept", Some("refund-1")).await;
    assert!(
        store
            .resolve_review(
                kept.operation_id,
                resolution(Succeeded, None, "dave"),
                t(13)
            )
            .await
            .unwrap()
    );
    let read = store.get(kept.operation_id).await.unwrap().unwrap();
    assert_eq!(read.state, Succeeded);
    assert_eq!(read.refund_id.as_deref(), Some("refund-1"));

    // Settled operations are no longer counted for review.
    let attention = store.attention(t(14)).await.unwrap();
    assert_eq!(attention.requires_review, 0, "{attention:?}");
}

/// Only a REQUIRES_REVIEW operation is resolved, and only to SUCCEEDED or FAILED: an unknown
/// id and every other state are left alone, with no event.
pub async fn resolve_review_only_from_review(store: Store, _peer: Option<Store>) {
    let decided = || resolution(Succeeded, Some("refund-by-hand"), "alice");
    assert!(
        !store
            .resolve_review(op("missing").operation_id, decided(), t(10))
            .await
            .unwrap()
    );
    assert_eq!(store.get(op("missing").operation_id).await.unwrap(), None);

    let succeeded = op("review-not-succeeded");
    claim_new(&store, succeeded.clone(), t(0)).await;
    assert!(
        store
            .finish(succeeded.operation_id, A, completion(Succeeded), t(1))
            .await
            .unwrap()
    );
    let failed = op("review-not-failed");
    claim_new(&store, failed.clone(), t(0)).await;
    assert!(
        store
            .finish(failed.operation_id, A, completion(Failed), t(1))
            .await
            .unwrap()
    );
    let pending = op("review-not-pending");
    claim_new(&store, pending.clone(), t(0)).await;
    assert!(
        store
            .mark_pending(pending.operation_id, A, None, "timeout".into(), None, t(1))
            .await
            .unwrap()
    );
    let in_flight = op("review-not-in-flight");
    claim_new(&store, in_flight.clone(), t(0)).await;
    // IN_FLIGHT with its lease expired: unresolved, yet not in review either.
    let expired = op("review-not-expired");
    claim_new(&store, expired.clone(), t(-60)).await;

    for new in [&succeeded, &failed, &pending, &in_flight, &expired] {
        let before = store.get(new.operation_id).await.unwrap();
        let events = events_of(&store, new).await;
        for state in [Succeeded, Failed] {
            assert!(
                !store
                    .resolve_review(
                        new.operation_id,
                        resolution(state, Some("refund-by-hand"), "alice"),
                        t(10)
                    )
                    .await
                    .unwrap(),
                "{} resolved as {state}",
                new.idempotency_key.as_str()
            );
        }
        assert_eq!(store.get(new.operation_id).await.unwrap(), before);
        assert_eq!(events_of(&store, new).await, events);
    }
    // The lease of the live claim is still its holder's.
    assert!(
        store
            .renew_lease(in_flight.operation_id, A, t(10), LEASE)
            .await
            .unwrap()
    );

    // A resolution must decide: any other state is refused, and the review stays.
    let review = in_review(&store, "review-undecided", None).await;
    let before = store.get(review.operation_id).await.unwrap();
    for state in [RequiresReview, Pending, InFlight] {
        let mut undecided = decided();
        undecided.state = state;
        match store
            .resolve_review(review.operation_id, undecided, t(10))
            .await
        {
            Err(StoreError::Unavailable(message)) => {
                assert!(message.contains(state.as_str()), "{message}")
            }
            other => panic!("{state}: expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(store.get(review.operation_id).await.unwrap(), before);
    assert_eq!(events_of(&store, &review).await.len(), 2);
}

/// Concurrent resolutions of one review by 8 operators (from two replicas, where the backend
/// has them): exactly one settles it, and its decision is the one stored and recorded.
pub async fn concurrent_review_resolutions_one_wins(store: Store, peer: Option<Store>) {
    const OPERATORS: usize = 8;
    let new = in_review(&store, "review-race", None).await;
    let barrier = Arc::new(Barrier::new(OPERATORS));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..OPERATORS {
        let store = match (&peer, i % 2) {
            (Some(peer), 1) => peer.clone(),
            _ => store.clone(),
        };
        let state = if i % 3 == 0 { Failed } else { Succeeded };
        let decided = resolution(state, Some(&format!("refund-{i}")), &format!("op-{i}"));
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            let resolved = store
                .resolve_review(new.operation_id, decided.clone(), t(10))
                .await
                .unwrap();
            (decided, resolved)
        });
    }
    let outcomes = tasks.join_all().await;
    let winners: Vec<&Resolution> = outcomes
        .iter()
        .filter(|(_, resolved)| *resolved)
        .map(|(decided, _)| decided)
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    let winner = winners[0];
    let read = store.get(new.operation_id).await.unwrap().unwrap();
    assert_eq!(read.state, winner.state);
    assert_eq!(read.response.as_ref(), Some(&winner.response));
    let events = events_of(&store, &new).await;
    assert_eq!(events.len(), 3);
    assert_eq!(
        events[2].trace_id,
        Some(format!("operator:{}", winner.operator))
    );
}
