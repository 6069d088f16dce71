-- Expand: webhook deliveries from Klarna, and an index for the operations on one resource.
-- Only additions: a release that does not know them neither reads nor writes them.

-- Every operation on one resource of one account, oldest first (resource_operations), and
-- the operations on one payment transaction (list). The resource id is read as the queries
-- write it (SQLite uses an expression index only for the same expression): rows written by a
-- release that predates resources have none and act on their order.
CREATE INDEX operations_by_resource ON operations
    (COALESCE(resource_id, order_id), resource_kind, klarna_account, created_at, operation_id);

-- One row per Klarna event id: a redelivery finds its row and records nothing. received_at
-- is microseconds since the Unix epoch, as every instant of this store; occurred_at is kept
-- as Klarna wrote it.
CREATE TABLE webhook_events (
    event_id               TEXT    NOT NULL PRIMARY KEY,
    event_type             TEXT    NOT NULL,
    klarna_account         TEXT    NOT NULL,
    -- The operation the gateway matched it to, if any; not a foreign key: an operation can be
    -- abandoned (deleted), and its webhooks stay.
    operation_id           TEXT,
    payment_transaction_id TEXT,
    refund_id              TEXT,
    correlation_id         TEXT,
    payload                TEXT    NOT NULL,
    occurred_at            TEXT,
    received_at            INTEGER NOT NULL
) STRICT;

CREATE INDEX webhook_events_by_operation ON webhook_events (operation_id, received_at, event_id);
