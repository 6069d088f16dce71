//! Schema changes are expand/contract: a database created and filled at an earlier schema
//! version migrates to the current one, and every operation reads back as it was written, on
//! both backends. The rows are written with that version's columns only, as a release of that
//! version wrote them. Two starting points: the previous version (the one before the current),
//! and version 1, before operations acted on resources.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use refund_gateway_domain::store::{LinkOutcome, OrderReference, ReferenceKind};
use refund_gateway_domain::{
    Caller, Completion, IdempotencyKey, LeaseHolder, OperationFilter, OperationId, OperationState,
    OperationStore, ResourceKind, Rpc, StoredResponse, WebhookEvent,
};
use refund_gateway_store::{DatabaseConfig, SqliteStore, connect};
use sqlx::Connection;
use time::OffsetDateTime;

/// The schema version before the current one (0013, SQLite's audit ids without
/// AUTOINCREMENT): 0012, audit events found by their claim. SQLite has no 0003, but both
/// backends number their migrations alike.
const PREVIOUS: i64 = 12;

/// The schema version before operations acted on resources (0002).
const BEFORE_RESOURCES: i64 = 1;

/// A micros timestamp in the future (2100-01-01), for a lease still running.
const FAR_FUTURE: i64 = 4_102_444_800_000_000;

/// A new migration moves [`PREVIOUS`] (and the rows written at it) along, on both backends.
#[test]
fn previous_is_the_version_before_the_current() {
    for migrator in [
        sqlx::migrate!("migrations/sqlite"),
        sqlx::migrate!("migrations/postgres"),
    ] {
        let mut versions: Vec<i64> = migrator.iter().map(|m| m.version).collect();
        versions.sort_unstable();
        assert_eq!(
            versions.iter().rev().nth(1),
            Some(&PREVIOUS),
            "{versions:?}"
        );
    }
}

/// One row as a release of version 1 wrote it.
struct OldRow {
    key: &'static str,
    rpc: Rpc,
    state: OperationState,
    order_id: &'static str,
    klarna_request: &'static str,
    fingerprint: &'static str,
    response: Option<(i32, &'static str, Vec<u8>)>,
    refund_id: Option<&'static str>,
}

fn rows() -> Vec<OldRow> {
    const REFUND: &str = r#"{"call":"create_refund","order_id":"4f3c2a71-8d5e-4b6a-9c1f-2e7d8a9b0c11","refund":{"refunded_amount":4000,"description":null,"reference":"RMA-1","order_lines":[]}}"#;
    const RELEASE: &str = r#"{"call":"release_remaining_authorization","order_id":"7b2e9d40-5a1c-4f83-b6e2-9d0c4a7f3e22"}"#;
    let row = |key, rpc, state, klarna_request| OldRow {
        key,
        rpc,
        state,
        order_id: if rpc == Rpc::RefundOrder {
            "4f3c2a71-8d5e-4b6a-9c1f-2e7d8a9b0c11"
        } else {
            "7b2e9d40-5a1c-4f83-b6e2-9d0c4a7f3e22"
        },
        klarna_request,
        fingerprint: "64958ca1b3dcf1f21c22ec53e1039e0d9378c73ff0f93560410b2a3eefcd2237",
        response: None,
        refund_id: None,
    };
    vec![
        row(
            "in-flight",
            Rpc::RefundOrder,
            OperationState::InFlight,
            REFUND,
        ),
        row("pending", Rpc::RefundOrder, OperationState::Pending, REFUND),
        OldRow {
            response: Some((0, "", vec![10, 3, 1, 2, 3])),
            refund_id: Some("r-1"),
            ..row("done", Rpc::RefundOrder, OperationState::Succeeded, REFUND)
        },
        OldRow {
            response: Some((9, "Klarna answered 403", vec![8, 9])),
            ..row(
                "failed",
                Rpc::ReleaseAuthorization,
                OperationState::Failed,
                RELEASE,
            )
        },
        OldRow {
            response: Some((13, "needs review", vec![1])),
            ..row(
                "review",
                Rpc::RefundOrder,
                OperationState::RequiresReview,
                REFUND,
            )
        },
    ]
}

fn id_of(row: &OldRow) -> OperationId {
    OperationId::derive(
        &Caller::named("pos"),
        row.rpc,
        &IdempotencyKey::parse(row.key).unwrap(),
    )
}

/// The INSERT of a release of version 1 (its columns only).
const INSERT_V1: &str = "INSERT INTO operations (operation_id, caller, rpc, idempotency_key, \
     fingerprint, klarna_account, order_id, capture_id, amount, currency, reference, \
     klarna_request, trace_id, state, lease_expires_at, lease_holder, created_at, updated_at, \
     refund_id, correlation_id, response_code, response_message, response_payload) \
     VALUES ($1, 'pos', $2, $3, $4, 'eu', $5, NULL, 4000, 'SEK', 'RMA-1', $6, 'trace-1', $7, \
     $8, $9, 1000, 2000, $10, NULL, $11, $12, $13)";

/// Binds `row` to [`INSERT_V1`].
macro_rules! bind_row {
    ($row:expr) => {{
        let row = $row;
        let in_flight = row.state == OperationState::InFlight;
        sqlx::query(INSERT_V1)
            .bind(id_of(row).to_string())
            .bind(row.rpc.as_str())
            .bind(row.key)
            .bind(row.fingerprint)
            .bind(row.order_id)
            .bind(row.klarna_request)
            .bind(row.state.as_str())
            .bind(in_flight.then_some(FAR_FUTURE))
            .bind(in_flight.then(|| LeaseHolder::new().to_string()))
            .bind(row.refund_id)
            .bind(row.response.as_ref().map(|r| r.0))
            .bind(row.response.as_ref().map(|r| r.1))
            .bind(row.response.as_ref().map(|r| r.2.clone()))
    }};
}

/// Reads every row back through the current store.
async fn every_operation_reads_back(store: &dyn OperationStore, in_flight_after: OperationState) {
    let rows = rows();
    for row in &rows {
        let op = store
            .get(id_of(row))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{} is gone", row.key));
        let new = &op.new;
        assert_eq!(new.idempotency_key.as_str(), row.key);
        assert_eq!((new.caller.as_str(), new.rpc), ("pos", row.rpc));
        assert_eq!(new.fingerprint, row.fingerprint);
        assert_eq!(new.klarna_account, "eu");
        assert_eq!(new.order_id, row.order_id);
        assert_eq!(
            (new.resource_kind, new.resource_id.as_str()),
            (ResourceKind::Order, row.order_id),
            "a row written before resources existed acts on its order"
        );
        assert_eq!(new.amount, Some(4000));
        assert_eq!(new.currency.as_deref(), Some("SEK"));
        assert_eq!(new.reference.as_deref(), Some("RMA-1"));
        assert_eq!(new.klarna_request, row.klarna_request);
        assert_eq!(new.trace_id.as_deref(), Some("trace-1"));
        let state = if row.state == OperationState::InFlight {
            in_flight_after
        } else {
            row.state
        };
        assert_eq!(op.state, state, "{}", row.key);
        assert_eq!(op.refund_id.as_deref(), row.refund_id);
        assert_eq!(
            op.response,
            row.response
                .as_ref()
                .map(|(code, message, payload)| StoredResponse {
                    code: *code,
                    message: (*message).to_owned(),
                    payload: payload.clone(),
                })
        );
    }
    let page = store
        .list(&OperationFilter::default(), 100, None)
        .await
        .unwrap();
    assert_eq!(page.operations.len(), rows.len());
}

/// A row written after the migration by a replica of version 1 still running (a rolling
/// upgrade): it has no resource id, and is found among the operations on its order.
const LATE_KEY: &str = "written-late";

fn late_row() -> OldRow {
    OldRow {
        key: LATE_KEY,
        rpc: Rpc::RefundOrder,
        state: OperationState::Pending,
        order_id: "4f3c2a71-8d5e-4b6a-9c1f-2e7d8a9b0c11",
        klarna_request: "{}",
        fingerprint: "fp",
        response: None,
        refund_id: None,
    }
}

/// The operations on the order of the version-1 refunds, the late row among them.
async fn late_row_acts_on_its_order(store: &dyn OperationStore) {
    let order = late_row().order_id;
    let found = store
        .resource_operations("eu", ResourceKind::Order, order)
        .await
        .unwrap();
    let keys: Vec<&str> = found
        .iter()
        .map(|o| o.new.idempotency_key.as_str())
        .collect();
    // All created at the same instant: by id.
    let mut expected: Vec<(String, &str)> = rows()
        .iter()
        .chain([&late_row()])
        .filter(|r| r.order_id == order)
        .map(|r| (id_of(r).to_string(), r.key))
        .collect();
    expected.sort();
    let expected: Vec<&str> = expected.into_iter().map(|(_, key)| key).collect();
    assert_eq!(keys, expected);
    let late = found
        .iter()
        .find(|o| o.new.idempotency_key.as_str() == LATE_KEY)
        .unwrap();
    assert_eq!(
        (late.new.resource_kind, late.new.resource_id.as_str()),
        (ResourceKind::Order, order)
    );
}

/// One row as a release of the previous version wrote it.
struct PreviousRow {
    key: &'static str,
    rpc: Rpc,
    state: OperationState,
    resource_kind: ResourceKind,
    resource_id: &'static str,
    answer_context: Option<&'static str>,
    created_at: i64,
    /// The claim's W3C traceparent; its trace id is the holder's OpenTelemetry trace id.
    traceparent: Option<&'static str>,
}

const PREVIOUS_ORDER: &str = "9c4d1e2f-3a5b-4c6d-8e7f-0a1b2c3d4e5f";

/// The trace id of the claim of the previous version's PENDING row.
const PREVIOUS_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// The traceparent of that claim.
const PREVIOUS_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn previous_rows() -> Vec<PreviousRow> {
    vec![
        PreviousRow {
            key: "tx-refund-1",
            rpc: Rpc::RefundTransaction,
            state: OperationState::Succeeded,
            resource_kind: ResourceKind::Transaction,
            resource_id: "tx-7",
            answer_context: None,
            created_at: 1000,
            traceparent: None,
        },
        PreviousRow {
            key: "order-refund",
            rpc: Rpc::RefundOrder,
            state: OperationState::Failed,
            resource_kind: ResourceKind::Order,
            resource_id: PREVIOUS_ORDER,
            answer_context: None,
            created_at: 1500,
            traceparent: None,
        },
        PreviousRow {
            key: "tx-refund-2",
            rpc: Rpc::RefundTransaction,
            state: OperationState::Pending,
            resource_kind: ResourceKind::Transaction,
            resource_id: "tx-7",
            answer_context: Some("context-5"),
            created_at: 2000,
            traceparent: Some(PREVIOUS_TRACEPARENT),
        },
    ]
}

fn previous_id(row: &PreviousRow) -> OperationId {
    OperationId::derive(
        &Caller::named("pos"),
        row.rpc,
        &IdempotencyKey::parse(row.key).unwrap(),
    )
}

/// The INSERT of a release of the previous version (its columns only).
const INSERT_PREVIOUS: &str = "INSERT INTO operations (operation_id, caller, rpc, \
     idempotency_key, fingerprint, klarna_account, order_id, capture_id, amount, currency, \
     reference, klarna_request, trace_id, state, lease_expires_at, lease_holder, created_at, \
     updated_at, refund_id, correlation_id, response_code, response_message, response_payload, \
     resource_kind, resource_id, answer_context, traceparent, otel_trace_id) \
     VALUES ($1, 'pos', $2, $3, 'fp', 'eu', $4, NULL, 4000, 'SEK', NULL, '{}', 'trace-5', $5, \
     NULL, NULL, $6, $6, NULL, NULL, NULL, NULL, NULL, $7, $8, $9, $10, $11)";

/// Binds `row` to [`INSERT_PREVIOUS`].
macro_rules! bind_previous_row {
    ($row:expr) => {{
        let row = $row;
        sqlx::query(INSERT_PREVIOUS)
            .bind(previous_id(row).to_string())
            .bind(row.rpc.as_str())
            .bind(row.key)
            .bind(PREVIOUS_ORDER)
            .bind(row.state.as_str())
            .bind(row.created_at)
            .bind(row.resource_kind.as_str())
            .bind(row.resource_id)
            .bind(row.answer_context)
            .bind(row.traceparent)
            .bind(row.traceparent.map(|_| PREVIOUS_TRACE))
    }};
}

/// The webhook event a release of the previous version recorded, for the first of
/// [`previous_rows`].
fn previous_webhook() -> WebhookEvent {
    WebhookEvent {
        event_id: "evt-before-migration".to_owned(),
        event_type: "payment.transaction.refunded".to_owned(),
        klarna_account: "eu".to_owned(),
        operation_id: Some(previous_id(&previous_rows()[0])),
        payment_transaction_id: Some("tx-7".to_owned()),
        refund_id: Some("refund-5".to_owned()),
        correlation_id: Some("corr-5".to_owned()),
        payload: r#"{"event":"refunded"}"#.to_owned(),
        occurred_at: Some("2027-01-15T10:00:00Z".to_owned()),
        received_at: OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap(),
    }
}

/// The INSERT of a webhook event by a release of the previous version (its columns only).
const INSERT_PREVIOUS_WEBHOOK: &str = "INSERT INTO webhook_events (event_id, event_type, \
     klarna_account, operation_id, payment_transaction_id, refund_id, correlation_id, payload, \
     occurred_at, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// The daily total a release of the previous version reserved: 1000 SEK minor units of `pos`
/// on 2027-01-15. The day is an untyped literal: text on SQLite, a DATE on PostgreSQL.
const INSERT_PREVIOUS_DAILY_TOTAL: &str = "INSERT INTO caller_daily_totals \
     (caller, currency, day, total) VALUES ('pos', 'SEK', '2027-01-15', 1000)";

/// The OpenTelemetry trace id of the holder that takes an operation over after the migration.
const RESOLUTION_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// Binds [`previous_webhook`] to [`INSERT_PREVIOUS_WEBHOOK`].
macro_rules! bind_previous_webhook {
    () => {{
        let event = previous_webhook();
        sqlx::query(INSERT_PREVIOUS_WEBHOOK)
            .bind(event.event_id)
            .bind(event.event_type)
            .bind(event.klarna_account)
            .bind(event.operation_id.map(|id| id.to_string()))
            .bind(event.payment_transaction_id)
            .bind(event.refund_id)
            .bind(event.correlation_id)
            .bind(event.payload)
            .bind(event.occurred_at)
            .bind(event.received_at.unix_timestamp() * 1_000_000)
    }};
}

/// Every row of the previous version reads back, is found on its resource, keeps its webhook
/// event and takes new ones; its daily total stays and takes reservations; its trace context
/// stays, and a take-over gives its trace id to the events from then on. Order references,
/// new in this version: there are none, and references link to the orders written before.
async fn previous_rows_read_back_and_take_webhooks(store: &dyn OperationStore) {
    let rows = previous_rows();
    for row in &rows {
        let op = store.get(previous_id(row)).await.unwrap().unwrap();
        assert_eq!(op.new.idempotency_key.as_str(), row.key);
        assert_eq!(op.new.rpc, row.rpc);
        assert_eq!(op.new.order_id, PREVIOUS_ORDER);
        assert_eq!(
            (op.new.resource_kind, op.new.resource_id.as_str()),
            (row.resource_kind, row.resource_id)
        );
        assert_eq!(op.state, row.state);
        assert_eq!(op.answer_context.as_deref(), row.answer_context);
        assert_eq!(op.new.trace_id.as_deref(), Some("trace-5"));
        assert_eq!(
            op.new.traceparent.as_ref().map(|t| t.as_str()),
            row.traceparent
        );
    }
    let keys = |ops: Vec<refund_gateway_domain::Operation>| -> Vec<String> {
        ops.into_iter()
            .map(|o| o.new.idempotency_key.as_str().to_owned())
            .collect()
    };
    assert_eq!(
        keys(
            store
                .resource_operations("eu", ResourceKind::Transaction, "tx-7")
                .await
                .unwrap()
        ),
        vec!["tx-refund-1", "tx-refund-2"]
    );
    assert_eq!(
        keys(
            store
                .resource_operations("eu", ResourceKind::Order, PREVIOUS_ORDER)
                .await
                .unwrap()
        ),
        vec!["order-refund"]
    );
    let by_transaction = OperationFilter {
        payment_transaction_id: Some("tx-7".to_owned()),
        ..OperationFilter::default()
    };
    let page = store.list(&by_transaction, 10, None).await.unwrap();
    assert_eq!(
        keys(page.operations.into_iter().map(|(o, _)| o).collect()),
        vec!["tx-refund-2", "tx-refund-1"]
    );

    let refunded = previous_id(&rows[0]);
    let event = WebhookEvent {
        event_id: "evt-after-migration".to_owned(),
        event_type: "payment.transaction.refunded".to_owned(),
        klarna_account: "eu".to_owned(),
        operation_id: Some(refunded),
        payment_transaction_id: Some("tx-7".to_owned()),
        refund_id: Some("refund-7".to_owned()),
        correlation_id: None,
        payload: "{}".to_owned(),
        occurred_at: None,
        received_at: OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
    };
    assert_eq!(
        store.webhook_events(refunded).await.unwrap(),
        vec![previous_webhook()]
    );
    assert!(
        !store
            .record_webhook(previous_webhook(), "redelivered".to_owned())
            .await
            .unwrap(),
        "the event recorded before the migration is known"
    );
    assert!(
        store
            .record_webhook(event.clone(), "webhook".to_owned())
            .await
            .unwrap()
    );
    assert_eq!(
        store.webhook_events(refunded).await.unwrap(),
        vec![previous_webhook(), event]
    );
    let filter = OperationFilter {
        idempotency_key: Some("tx-refund-1".to_owned()),
        ..OperationFilter::default()
    };
    let page = store.list(&filter, 10, None).await.unwrap();
    let (_, events) = &page.operations[0];
    let last = events.last().unwrap();
    assert_eq!(
        (last.state_before, last.state_after, last.detail.as_str()),
        (
            Some(OperationState::Succeeded),
            Some(OperationState::Succeeded),
            "webhook"
        )
    );
    assert_eq!(last.refund_id.as_deref(), Some("refund-7"));

    assert!(
        events.iter().all(|e| e.otel_trace_id.is_none()),
        "{events:?}"
    );

    let day = time::macros::date!(2027 - 01 - 15);
    assert_eq!(store.daily_total("pos", "SEK", day).await.unwrap(), 1000);
    assert!(
        store
            .reserve_daily("pos", "SEK", day, 3000, 5000)
            .await
            .unwrap()
    );
    assert!(
        !store
            .reserve_daily("pos", "SEK", day, 1001, 5000)
            .await
            .unwrap()
    );
    store.release_daily("pos", "SEK", day, 1000).await.unwrap();
    assert_eq!(store.daily_total("pos", "SEK", day).await.unwrap(), 3000);

    // The PENDING row, settled by a holder with a trace.
    let pending = &rows[2];
    let holder = LeaseHolder::new();
    let now = OffsetDateTime::from_unix_timestamp(1_800_000_100).unwrap();
    assert!(
        store
            .take_over(
                previous_id(pending),
                holder,
                now,
                Duration::from_secs(30),
                Some("reconciler".to_owned()),
                Some(RESOLUTION_TRACE.to_owned()),
            )
            .await
            .unwrap()
    );
    let completion = Completion {
        state: OperationState::Succeeded,
        response: StoredResponse::default(),
        refund_id: Some("refund-8".to_owned()),
        correlation_id: None,
        detail: "Klarna accepted".to_owned(),
        trace_id: None,
    };
    assert!(
        store
            .finish(previous_id(pending), holder, completion, now)
            .await
            .unwrap()
    );
    let filter = OperationFilter {
        idempotency_key: Some(pending.key.to_owned()),
        ..OperationFilter::default()
    };
    let page = store.list(&filter, 10, None).await.unwrap();
    let (op, events) = &page.operations[0];
    assert_eq!(
        op.new.traceparent.as_ref().map(|t| t.as_str()),
        Some(PREVIOUS_TRACEPARENT),
        "the traceparent stays the claim's"
    );
    // SQLite's claim trigger of the previous version wrote the claimed event, with the claim's
    // trace id; PostgreSQL's rows were inserted without one.
    let (before, after) = events.split_at(events.len() - 2);
    assert!(
        before
            .iter()
            .all(|e| e.otel_trace_id.as_deref() == Some(PREVIOUS_TRACE)),
        "{before:?}"
    );
    assert_eq!(
        after
            .iter()
            .map(|e| (e.detail.as_str(), e.otel_trace_id.as_deref()))
            .collect::<Vec<_>>(),
        vec![
            ("taken over", Some(RESOLUTION_TRACE)),
            ("Klarna accepted", Some(RESOLUTION_TRACE)),
        ]
    );

    // Order references: none yet; a receipt links to an order of the previous version, once.
    let receipt = OrderReference {
        klarna_account: "eu".to_owned(),
        kind: ReferenceKind::Receipt,
        reference: "RCPT-PREVIOUS".to_owned(),
        order_id: PREVIOUS_ORDER.to_owned(),
        store_id: Some("store-5".to_owned()),
        linked_at: OffsetDateTime::from_unix_timestamp(1_800_000_200).unwrap(),
    };
    let find = || store.find_reference("eu", ReferenceKind::Receipt, "RCPT-PREVIOUS");
    assert_eq!(find().await.unwrap(), None);
    assert_eq!(
        store.link_reference(receipt.clone()).await.unwrap(),
        LinkOutcome::Linked
    );
    assert_eq!(find().await.unwrap(), Some(receipt.clone()));
    assert_eq!(
        store
            .link_reference(OrderReference {
                order_id: "other-order".to_owned(),
                ..receipt
            })
            .await
            .unwrap(),
        LinkOutcome::LinkedElsewhere {
            order_id: PREVIOUS_ORDER.to_owned()
        }
    );
}

#[tokio::test]
async fn sqlite_at_the_previous_version_migrates_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.sqlite3");
    {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::migrate!("migrations/sqlite")
            .run_to(PREVIOUS, &mut conn)
            .await
            .unwrap();
        for row in &previous_rows() {
            bind_previous_row!(row).execute(&mut conn).await.unwrap();
        }
        bind_previous_webhook!().execute(&mut conn).await.unwrap();
        sqlx::query(INSERT_PREVIOUS_DAILY_TOTAL)
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    previous_rows_read_back_and_take_webhooks(&store).await;
    // The claimed events the previous version's trigger wrote are listed with their claim.
    for row in &previous_rows() {
        let filter = OperationFilter {
            idempotency_key: Some(row.key.to_owned()),
            ..OperationFilter::default()
        };
        let page = store.list(&filter, 10, None).await.unwrap();
        let (_, events) = &page.operations[0];
        assert_eq!(
            events.first().map(|e| e.detail.as_str()),
            Some("claimed"),
            "{}: {events:?}",
            row.key
        );
    }
    let url = format!("sqlite://{}?mode=ro", path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    // 0009 rewrote the state CHECK in place: comparisons, not an IN list.
    let schema = table_sql(&mut conn, "operations").await;
    assert!(
        schema.contains("CHECK (state = 'IN_FLIGHT' OR state = 'PENDING' OR state = 'SUCCEEDED' OR state = 'FAILED' OR state = 'REQUIRES_REVIEW')")
            && !schema.contains("state IN ("),
        "{schema}"
    );
    // 0013 took AUTOINCREMENT off the audit ids in place: the file is sound, the sequence's
    // row is gone, and the events appended since (by the checks above) took the ids after
    // the previous version's, one by one.
    let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(integrity, "ok");
    let audit_schema = table_sql(&mut conn, "audit_events").await;
    assert!(
        audit_schema.contains("id              INTEGER NOT NULL PRIMARY KEY,")
            && !audit_schema.contains("AUTOINCREMENT"),
        "{audit_schema}"
    );
    let sequences: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_sequence")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(sequences, 0);
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM audit_events ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let previous_events = previous_rows().len();
    assert!(
        ids.len() > previous_events && ids.iter().zip(1..).all(|(&id, n)| id == n),
        "{ids:?}"
    );
}

/// The `CREATE TABLE` statement SQLite keeps for `table`.
async fn table_sql(conn: &mut sqlx::SqliteConnection, table: &str) -> String {
    sqlx::query_scalar("SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1")
        .bind(table)
        .fetch_one(conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_at_the_previous_version_migrates_and_reads_back() {
    let Some(admin) = support::admin_url() else {
        return;
    };
    let url = support::fresh_database(&admin).await;
    {
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::migrate!("migrations/postgres")
            .run_to(PREVIOUS, &mut conn)
            .await
            .unwrap();
        for row in &previous_rows() {
            bind_previous_row!(row).execute(&mut conn).await.unwrap();
        }
        bind_previous_webhook!().execute(&mut conn).await.unwrap();
        sqlx::query(INSERT_PREVIOUS_DAILY_TOTAL)
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let config =
        DatabaseConfig::from_url_or_data_dir(Some(&url), std::path::Path::new(".")).unwrap();
    let store = connect(&config).await.unwrap();
    previous_rows_read_back_and_take_webhooks(store.as_ref()).await;
}

#[tokio::test]
async fn sqlite_before_resources_migrates_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.sqlite3");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    {
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::migrate!("migrations/sqlite")
            .run_to(BEFORE_RESOURCES, &mut conn)
            .await
            .unwrap();
        for row in &rows() {
            bind_row!(row).execute(&mut conn).await.unwrap();
        }
        conn.close().await.unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    // One process owns the file: the previous process's claim is taken over at open.
    every_operation_reads_back(&store, OperationState::Pending).await;
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    bind_row!(&late_row()).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    late_row_acts_on_its_order(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_before_resources_migrates_and_reads_back() {
    let Some(admin) = support::admin_url() else {
        return;
    };
    let url = support::fresh_database(&admin).await;
    {
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::migrate!("migrations/postgres")
            .run_to(BEFORE_RESOURCES, &mut conn)
            .await
            .unwrap();
        for row in &rows() {
            bind_row!(row).execute(&mut conn).await.unwrap();
        }
        conn.close().await.unwrap();
    }
    let config =
        DatabaseConfig::from_url_or_data_dir(Some(&url), std::path::Path::new(".")).unwrap();
    let store = connect(&config).await.unwrap();
    // Replicas share the database: a claim with a running lease and no replica recorded stays.
    every_operation_reads_back(store.as_ref(), OperationState::InFlight).await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    bind_row!(&late_row()).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    late_row_acts_on_its_order(store.as_ref()).await;
}
