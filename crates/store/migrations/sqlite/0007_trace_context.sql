-- Expand: W3C trace context, so an operator can open the trace that caused each change. Only
-- additions (nullable columns): a release that does not know them leaves them NULL, and its
-- events read as having no trace id.
--
-- operations.traceparent: the W3C traceparent of the RPC that created the operation, kept
-- so that whoever settles it later (the reconciler) can link its trace to the request's.
-- operations.otel_trace_id: the OpenTelemetry trace id (32 hex) of the operation's current
-- holder: set by the claim (the traceparent's trace id), replaced by each take-over.
-- audit_events.otel_trace_id: the holder's trace id when the event was written; NULL for a
-- webhook's event.
ALTER TABLE operations ADD COLUMN traceparent TEXT;
ALTER TABLE operations ADD COLUMN otel_trace_id TEXT;
ALTER TABLE audit_events ADD COLUMN otel_trace_id TEXT;

-- The triggers of 0001, copying the holder's trace id too. SQLite cannot alter a trigger:
-- each is dropped and created again, in this migration's transaction, so no write falls
-- between them without its event.
DROP TRIGGER operations_claimed;

CREATE TRIGGER operations_claimed AFTER INSERT ON operations
BEGIN
    INSERT INTO audit_events (operation_id, caller, rpc, idempotency_key, klarna_account,
        order_id, capture_id, amount, currency, refund_id, correlation_id, trace_id,
        otel_trace_id, state_before, state_after, detail, at)
    VALUES (NEW.operation_id, NEW.caller, NEW.rpc, NEW.idempotency_key, NEW.klarna_account,
        NEW.order_id, NEW.capture_id, NEW.amount, NEW.currency, NEW.refund_id,
        NEW.correlation_id, NEW.trace_id, NEW.otel_trace_id, NULL, NEW.state, 'claimed',
        NEW.created_at);
END;

DROP TRIGGER operations_transition;

-- Every transition sets updated_at to its instant, which is the event's. A take-over sets
-- otel_trace_id in the same UPDATE, so its event already carries the new holder's.
CREATE TRIGGER operations_transition AFTER UPDATE OF event_detail ON operations
BEGIN
    INSERT INTO audit_events (operation_id, caller, rpc, idempotency_key, klarna_account,
        order_id, capture_id, amount, currency, refund_id, correlation_id, trace_id,
        otel_trace_id, state_before, state_after, detail, at)
    VALUES (NEW.operation_id, NEW.caller, NEW.rpc, NEW.idempotency_key, NEW.klarna_account,
        NEW.order_id, NEW.capture_id, NEW.amount, NEW.currency, NEW.refund_id,
        NEW.correlation_id, COALESCE(NEW.event_trace_id, NEW.trace_id), NEW.otel_trace_id,
        OLD.state, NEW.state, NEW.event_detail, NEW.updated_at);
END;
