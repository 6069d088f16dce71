-- Replica liveness and resource leases. Expand-only: replicas that predate this migration
-- keep working on the new schema (they ignore the new column and table).
--
-- Every store holds, for its whole life, a session advisory lock on its replica key (a random
-- non-negative BIGINT) on a connection of its own. A replica is alive while a granted advisory
-- lock on its key exists in pg_locks; the lock, and with it the replica, ends with the
-- session: a killed process or a lost host frees its claims and leases at once instead of at
-- their expiry.

-- The replica holding the lease of an IN_FLIGHT operation: set by a claim or a take-over,
-- cleared with the lease (finish, mark pending). An IN_FLIGHT operation whose replica is gone
-- is unresolved even if its lease has not expired. NULL for claims made before this migration
-- or by a gateway that predates it: those keep the lease-expiry rule alone.
ALTER TABLE operations ADD COLUMN lease_replica BIGINT;

-- Exclusive right to operate on one resource of one Klarna account, held across the Klarna
-- call without holding a connection. resource_kind is 'order' (later also 'transaction').
-- A lease is free when its row is missing, when expires_at has passed, or when its replica is
-- gone; taking it over overwrites the row, releasing it deletes the row (by holder).
CREATE TABLE resource_leases (
    klarna_account TEXT   NOT NULL,
    resource_kind  TEXT   NOT NULL,
    resource_id    TEXT   NOT NULL,
    -- The replica key of the holding store.
    replica        BIGINT NOT NULL,
    -- A token chosen afresh for each taking; only its holder renews or releases the lease.
    holder         TEXT   NOT NULL,
    -- Microseconds since the Unix epoch on the database's clock (every replica compares
    -- against the same clock); renewed while the lease is held.
    expires_at     BIGINT NOT NULL,
    PRIMARY KEY (klarna_account, resource_kind, resource_id)
);
