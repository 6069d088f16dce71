-- Expand: W3C trace context, so an operator can open the trace that caused each change. Only
-- additions (nullable columns, no default, so no table rewrite): replicas that predate this
-- migration keep working on the new schema; they leave the columns NULL, and their events
-- read as having no trace id.
--
-- operations.traceparent: the W3C traceparent of the RPC that created the operation, kept
-- so that whoever settles it later (the reconciler) can link its trace to the request's.
-- operations.otel_trace_id: the OpenTelemetry trace id (32 hex) of the operation's current
-- holder: set by the claim (the traceparent's trace id), replaced by each take-over. An older
-- replica's take-over leaves it as it finds it.
-- audit_events.otel_trace_id: the holder's trace id when the event was written; NULL for a
-- webhook's event.
ALTER TABLE operations ADD COLUMN traceparent TEXT;
ALTER TABLE operations ADD COLUMN otel_trace_id TEXT;
ALTER TABLE audit_events ADD COLUMN otel_trace_id TEXT;
