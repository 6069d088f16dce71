-- Expand: the index of order references, for in-store refunds by receipt. Klarna's Order
-- Management API cannot search orders by reference, so the gateway keeps the index itself: a
-- store associate types the reference printed on the receipt (the merchant's
-- `merchant_reference1`, or one linked with LinkReceipt) or Klarna's `klarna_reference`, and
-- the gateway finds the order. Only additions: a release that does not know the table neither
-- reads nor writes it.
--
-- One row per (account, kind, reference), written by the first link and never changed: a
-- reference belongs to the first order linked to it, and a later link of it to another order
-- is refused. References are compared exactly (BINARY, byte for byte): the domain trims and
-- validates them before they reach the store. linked_at is microseconds since the Unix epoch,
-- as every instant of this store.
CREATE TABLE order_references (
    klarna_account TEXT    NOT NULL,
    kind           TEXT    NOT NULL CHECK (kind IN ('receipt', 'klarna')),
    reference      TEXT    NOT NULL,
    order_id       TEXT    NOT NULL,
    -- The store (shop) that linked it, when known.
    store_id       TEXT,
    linked_at      INTEGER NOT NULL,
    PRIMARY KEY (klarna_account, kind, reference)
) STRICT, WITHOUT ROWID;

-- The references of one order, for lookups by order.
CREATE INDEX order_references_by_order ON order_references (klarna_account, order_id);
