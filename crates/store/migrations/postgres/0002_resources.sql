-- Expand: an operation acts on a resource (kind, id), not only on an order; operations on one
-- resource are serialized. Only additions: a release that knows neither column keeps working
-- (its rows get kind 'order' by default and no id, and the id reads as the order's).
ALTER TABLE operations ADD COLUMN resource_kind TEXT NOT NULL DEFAULT 'order'
    CHECK (resource_kind IN ('order', 'transaction'));
ALTER TABLE operations ADD COLUMN resource_id TEXT;
UPDATE operations SET resource_id = order_id WHERE resource_id IS NULL;
