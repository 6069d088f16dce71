-- Contract: audit events are found by the claim they belong to, not by operation id alone.
--
-- `audit_events_by_operation` (operation_id, id) took every event into a b-tree keyed by a
-- random id (the operation id is a hash of caller, RPC and key): two pages of it written per
-- refund, one at the claim's commit and one at the outcome's, at any number of stored
-- events. Each event now carries `claimed_at`, the `created_at` of the operation's claim it
-- belongs to, and `audit_events_by_claim` (claimed_at, operation_id, id) takes a refund's
-- events near its right edge, where the other refunds in flight write theirs: the pages a
-- commit writes are shared.
--
-- An operation's events are those of its claim, plus those of earlier claims of its key that
-- were given back (abandoned: the row deleted, an event with no state after); those are found
-- through `audit_events_given_back`, which holds only such events. Events with no
-- `claimed_at` (appended by a release before this one: on PostgreSQL, by its replicas during
-- a rolling upgrade) are found through `audit_events_by_claim` too (`claimed_at IS NULL`).
--
-- A release before this one keeps working against the contracted schema: its inserts leave
-- `claimed_at` empty, and its event reads (`operation_id IN …`) still answer, by scanning.
ALTER TABLE audit_events ADD COLUMN claimed_at INTEGER;

-- Each event belongs to the latest claim of its operation at or before it (a claim is the one
-- event with no state before, written at the operation's `created_at`).
UPDATE audit_events SET claimed_at = (
    SELECT claim.at FROM audit_events AS claim
    WHERE claim.operation_id = audit_events.operation_id AND claim.state_before IS NULL
      AND claim.id <= audit_events.id
    ORDER BY claim.id DESC LIMIT 1);

CREATE INDEX audit_events_by_claim ON audit_events (claimed_at, operation_id, id);
CREATE INDEX audit_events_given_back ON audit_events (operation_id) WHERE state_after IS NULL;
DROP INDEX audit_events_by_operation;

DROP TRIGGER operations_claimed;

CREATE TRIGGER operations_claimed AFTER INSERT ON operations
BEGIN
    INSERT INTO audit_events (operation_id, caller, rpc, idempotency_key, klarna_account,
        order_id, capture_id, amount, currency, refund_id, correlation_id, trace_id,
        otel_trace_id, state_before, state_after, detail, at, claimed_at)
    VALUES (NEW.operation_id, NEW.caller, NEW.rpc, NEW.idempotency_key, NEW.klarna_account,
        NEW.order_id, NEW.capture_id, NEW.amount, NEW.currency, NEW.refund_id,
        NEW.correlation_id, NEW.trace_id, NEW.otel_trace_id, NULL, NEW.state, 'claimed',
        NEW.created_at, NEW.created_at);
END;

DROP TRIGGER operations_transition;

CREATE TRIGGER operations_transition AFTER UPDATE OF event_detail ON operations
BEGIN
    INSERT INTO audit_events (operation_id, caller, rpc, idempotency_key, klarna_account,
        order_id, capture_id, amount, currency, refund_id, correlation_id, trace_id,
        otel_trace_id, state_before, state_after, detail, at, claimed_at)
    VALUES (NEW.operation_id, NEW.caller, NEW.rpc, NEW.idempotency_key, NEW.klarna_account,
        NEW.order_id, NEW.capture_id, NEW.amount, NEW.currency, NEW.refund_id,
        NEW.correlation_id, COALESCE(NEW.event_trace_id, NEW.trace_id), NEW.otel_trace_id,
        OLD.state, NEW.state, NEW.event_detail, NEW.updated_at, NEW.created_at);
END;
