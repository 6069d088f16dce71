-- Contract: audit events are found by the claim they belong to, not by operation id alone.
--
-- `audit_events_by_operation` (operation_id, id) took every event into a b-tree keyed by a
-- random id (the operation id is a hash of caller, RPC and key): a page of it written per
-- event, at any number of stored events. Each event now carries `claimed_at`, the
-- `created_at` of the operation's claim it belongs to, and `audit_events_by_claim`
-- (claimed_at, operation_id, id) takes a refund's events near its right edge, where the other
-- refunds in flight write theirs.
--
-- An operation's events are those of its claim, plus those of earlier claims of its key that
-- were given back (abandoned: the row deleted, an event with no state after); those are found
-- through `audit_events_given_back`, which holds only such events. Events with no
-- `claimed_at` (appended by a release before this one: on PostgreSQL, by its replicas during
-- a rolling upgrade) are found through `audit_events_by_claim` too (`claimed_at IS NULL`).
--
-- A release before this one keeps working against the contracted schema: its inserts leave
-- `claimed_at` empty, and its event reads (`operation_id IN …`) still answer, by scanning.
ALTER TABLE audit_events ADD COLUMN claimed_at BIGINT;

-- Each event belongs to the latest claim of its operation at or before it (a claim is the one
-- event with no state before, written at the operation's `created_at`).
UPDATE audit_events AS e SET claimed_at = (
    SELECT claim.at FROM audit_events AS claim
    WHERE claim.operation_id = e.operation_id AND claim.state_before IS NULL
      AND claim.id <= e.id
    ORDER BY claim.id DESC LIMIT 1);

CREATE INDEX audit_events_by_claim ON audit_events (claimed_at, operation_id, id);
CREATE INDEX audit_events_given_back ON audit_events (operation_id) WHERE state_after IS NULL;
DROP INDEX audit_events_by_operation;
