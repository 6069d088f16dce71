-- The operation store on SQLite. Timestamps are integer microseconds since the Unix epoch
-- (UTC); money is integer minor units. STRICT makes SQLite refuse a value of the wrong type.

CREATE TABLE operations (
    operation_id     TEXT    NOT NULL PRIMARY KEY,
    caller           TEXT    NOT NULL,
    rpc              TEXT    NOT NULL,
    idempotency_key  TEXT    NOT NULL,
    fingerprint      TEXT    NOT NULL,
    klarna_account   TEXT    NOT NULL,
    order_id         TEXT    NOT NULL,
    capture_id       TEXT,
    amount           INTEGER,
    currency         TEXT,
    reference        TEXT,
    klarna_request   TEXT    NOT NULL,
    trace_id         TEXT,
    state            TEXT    NOT NULL
        CHECK (state IN ('IN_FLIGHT', 'PENDING', 'SUCCEEDED', 'FAILED', 'REQUIRES_REVIEW')),
    lease_expires_at INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    refund_id        TEXT,
    correlation_id   TEXT,
    response_code    INTEGER,
    response_message TEXT,
    response_payload BLOB
) STRICT;

CREATE INDEX operations_by_order ON operations (order_id);
CREATE INDEX operations_by_caller ON operations (caller, created_at);
CREATE INDEX operations_by_state ON operations (state, updated_at);
CREATE INDEX operations_by_created ON operations (created_at, operation_id);

-- Append-only: nothing updates or deletes these rows, purge included. Each row copies what
-- identifies the operation, so it stays readable after the operation row is gone.
CREATE TABLE audit_events (
    id              INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    operation_id    TEXT    NOT NULL,
    caller          TEXT    NOT NULL,
    rpc             TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    klarna_account  TEXT    NOT NULL,
    order_id        TEXT    NOT NULL,
    capture_id      TEXT,
    amount          INTEGER,
    currency        TEXT,
    refund_id       TEXT,
    correlation_id  TEXT,
    trace_id        TEXT,
    state_before    TEXT,
    state_after     TEXT,
    detail          TEXT    NOT NULL,
    at              INTEGER NOT NULL
) STRICT;

CREATE INDEX audit_events_by_operation ON audit_events (operation_id, id);
