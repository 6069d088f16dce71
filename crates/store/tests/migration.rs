//! Schema changes are expand/contract: a database created and filled at the previous schema
//! version migrates to the current one, and every operation reads back as it was written, on
//! both backends. The rows are written with the previous version's columns only, as a release
//! of that version wrote them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use refund_gateway_domain::{
    Caller, IdempotencyKey, LeaseHolder, OperationFilter, OperationId, OperationState,
    OperationStore, ResourceKind, Rpc, StoredResponse,
};
use refund_gateway_store::{DatabaseConfig, SqliteStore, connect};
use sqlx::Connection;

/// The schema version the rows are written at: the one before the current.
const PREVIOUS: i64 = 1;

/// A micros timestamp in the future (2100-01-01), for a lease still running.
const FAR_FUTURE: i64 = 4_102_444_800_000_000;

/// One row as the previous release wrote it.
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

/// The previous release's INSERT (the columns of version 1 only).
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
        for row in &rows() {
            bind_row!(row).execute(&mut conn).await.unwrap();
        }
        conn.close().await.unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    // One process owns the file: the previous process's claim is taken over at open.
    every_operation_reads_back(&store, OperationState::Pending).await;
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
}
