//! The refund gateway's durable operation store: the [`OperationStore`] port of
//! `refund-gateway-domain` on SQLite (embedded, one process) and PostgreSQL (shared by
//! replicas), both through sqlx with runtime-checked queries. It persists the exactly-once
//! protocol (see `docs/architecture.md#exactly-once`): every claim is durable before Klarna is called, every outcome before
//! the caller is answered, and every state change appends an audit event in the same
//! transaction.
//!
//! Start with [`DatabaseConfig::from_url_or_data_dir`] and [`connect`], which runs the
//! embedded migrations and returns the store behind the port.
//!
//! # Layout
//! - [`config`]: [`DatabaseConfig`], which backend and where; the PostgreSQL URL is a secret
//!   and never printed.
//! - `row`: what both backends share: row structs and their decoding into domain values, the
//!   timestamp encoding (integer microseconds since the Unix epoch) and the RPC names.
//! - `page`: page sizes and the opaque keyset page tokens of [`OperationStore::list`].
//! - `purge`: [`OperationStore::purge`] in short transactions from the last pass's cut, the
//!   same loop on both backends around each one's chunk statement.
//! - `read`: the reads (`get`, `unresolved`, `list` with its events, `resource_operations`,
//!   `webhook_events`, `find_reference`), one portable SQL text each, run by both backends on
//!   their pools. Order references are linked (`link_reference`) by each backend's own write
//!   path, an insert that keeps the first link.
//!   Callers' daily totals (`reserve_daily`, `release_daily`, `daily_total`) are each
//!   backend's own SQL: a UTC day is ISO text on SQLite and a DATE on PostgreSQL.
//! - [`sqlite`]: [`SqliteStore`]: one writer thread (rusqlite) doing group commit (many
//!   concurrent writes, one transaction, one fsync; claims and finishes in bulk statements,
//!   audit events by triggers), a pool of readers (sqlx), in-process order locks. Its writes
//!   are in `sqlite::sql`.
//! - [`postgres`]: [`PostgresStore`]: a pool, one transaction per write, replica liveness
//!   (one session advisory lock per replica, so a dead replica's claims are free at once) and
//!   order locks as lease rows. Its writes are in `postgres::sql`.
//! - `migrations/sqlite`, `migrations/postgres` (files, embedded at build time): the schema.
//!
//! # Metrics
//! Through the `metrics` facade (whatever recorder the process installed), label `backend`
//! (`sqlite` or `postgres`): `store_batch_size`, the writes committed in one transaction (a
//! SQLite group; always 1 on PostgreSQL), and `store_commit_duration_seconds`, how long that
//! transaction took from its start until committed.

pub mod config;
mod page;
pub mod postgres;
mod purge;
mod read;
mod row;
pub mod sqlite;

use std::sync::Arc;

use refund_gateway_domain::{OperationStore, StoreError};

pub use config::DatabaseConfig;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Opens the configured store, creating or upgrading its schema with the embedded
/// migrations. Fails with [`StoreError::Unavailable`] when the database cannot be reached or
/// migrated; the message never contains the PostgreSQL password.
pub async fn connect(database: &DatabaseConfig) -> Result<Arc<dyn OperationStore>, StoreError> {
    match database {
        DatabaseConfig::Sqlite { path } => Ok(Arc::new(SqliteStore::open(path).await?)),
        DatabaseConfig::Postgres {
            url,
            max_connections,
        } => Ok(Arc::new(
            PostgresStore::connect(url, *max_connections).await?,
        )),
    }
}
