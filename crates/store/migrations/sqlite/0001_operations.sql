-- The operation store on SQLite. Timestamps are integer microseconds since the Unix epoch
-- (UTC); money is integer minor units. STRICT makes SQLite refuse a value of the wrong type.
--
-- Audit events are written by triggers, so a claim or a transition is one statement (the
-- writer's cost is per statement, each a round trip to sqlx's SQLite thread). A transition
-- sets `event_detail` (and `event_trace_id`) with the state change; the UPDATE trigger fires
-- only for statements that set `event_detail`, so a lease renewal records nothing. Abandon
-- writes its event itself: purge deletes rows too, and must not.

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
    -- The token of whoever claimed or last took it over; only that holder renews, finishes,
    -- marks pending or abandons it.
    lease_holder     TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    refund_id        TEXT,
    correlation_id   TEXT,
    response_code    INTEGER,
    response_message TEXT,
    response_payload BLOB,
    -- Why the last transition happened, and the trace id given with it (NULL: none given, the
    -- event carries the claim's). Only read by the transition trigger.
    event_detail     TEXT,
    event_trace_id   TEXT
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

CREATE TRIGGER operations_claimed AFTER INSERT ON operations
BEGIN
    INSERT INTO audit_events (operation_id, caller, rpc, idempotency_key, klarna_account,
        order_id, capture_id, amount, currency, refund_id, correlation_id, trace_id,
        state_before, state_after, detail, at)
    VALUES (NEW.operation_id, NEW.caller, NEW.rpc, NEW.idempotency_key, NEW.klarna_account,
        NEW.order_id, NEW.capture_id, NEW.amount, NEW.currency, NEW.refund_id,
        NEW.correlation_id, NEW.trace_id, NULL, NEW.state, 'claimed', NEW.created_at);
END;

-- Every transition sets updated_at to its instant, which is the event's.
CREATE TRIGGER operations_transition AFTER UPDATE OF event_detail ON operations
BEGIN
    INSERT INTO audit_events (operation_id, caller, rpc, idempotency_key, klarna_account,
        order_id, capture_id, amount, currency, refund_id, correlation_id, trace_id,
        state_before, state_after, detail, at)
    VALUES (NEW.operation_id, NEW.caller, NEW.rpc, NEW.idempotency_key, NEW.klarna_account,
        NEW.order_id, NEW.capture_id, NEW.amount, NEW.currency, NEW.refund_id,
        NEW.correlation_id, COALESCE(NEW.event_trace_id, NEW.trace_id), OLD.state, NEW.state,
        NEW.event_detail, NEW.updated_at);
END;
