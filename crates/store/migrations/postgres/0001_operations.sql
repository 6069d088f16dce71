-- The operation store on PostgreSQL. Timestamps are BIGINT microseconds since the Unix epoch
-- (UTC), the same encoding as the SQLite store (read them with to_timestamp(x / 1e6));
-- money is BIGINT minor units. Operation ids (UUID text) use the "C" collation: byte order,
-- the same as SQLite's, for the keyset order of listings.

CREATE TABLE operations (
    operation_id     TEXT    COLLATE "C" NOT NULL PRIMARY KEY,
    caller           TEXT    NOT NULL,
    rpc              TEXT    NOT NULL,
    idempotency_key  TEXT    NOT NULL,
    fingerprint      TEXT    NOT NULL,
    klarna_account   TEXT    NOT NULL,
    order_id         TEXT    NOT NULL,
    capture_id       TEXT,
    amount           BIGINT,
    currency         TEXT,
    reference        TEXT,
    klarna_request   TEXT    NOT NULL,
    trace_id         TEXT,
    state            TEXT    NOT NULL
        CHECK (state IN ('IN_FLIGHT', 'PENDING', 'SUCCEEDED', 'FAILED', 'REQUIRES_REVIEW')),
    lease_expires_at BIGINT,
    -- The token of whoever claimed or last took it over; only that holder renews, finishes,
    -- marks pending or abandons it.
    lease_holder     TEXT,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    refund_id        TEXT,
    correlation_id   TEXT,
    response_code    INTEGER,
    response_message TEXT,
    response_payload BYTEA
);

CREATE INDEX operations_by_order ON operations (order_id);
CREATE INDEX operations_by_caller ON operations (caller, created_at);
CREATE INDEX operations_by_state ON operations (state, updated_at);
CREATE INDEX operations_by_created ON operations (created_at, operation_id);

-- Append-only: nothing updates or deletes these rows, purge included. Each row copies what
-- identifies the operation, so it stays readable after the operation row is gone.
CREATE TABLE audit_events (
    id              BIGSERIAL NOT NULL PRIMARY KEY,
    operation_id    TEXT      COLLATE "C" NOT NULL,
    caller          TEXT      NOT NULL,
    rpc             TEXT      NOT NULL,
    idempotency_key TEXT      NOT NULL,
    klarna_account  TEXT      NOT NULL,
    order_id        TEXT      NOT NULL,
    capture_id      TEXT,
    amount          BIGINT,
    currency        TEXT,
    refund_id       TEXT,
    correlation_id  TEXT,
    trace_id        TEXT,
    state_before    TEXT,
    state_after     TEXT,
    detail          TEXT      NOT NULL,
    at              BIGINT    NOT NULL
);

CREATE INDEX audit_events_by_operation ON audit_events (operation_id, id);
