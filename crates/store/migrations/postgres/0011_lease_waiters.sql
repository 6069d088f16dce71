-- Expand: how many takers found a resource lease held and wait for its release. A release
-- announces itself (NOTIFY, which every replica's listener receives) only when this is above
-- zero: most leases are taken and released with nobody waiting, and a notifying commit
-- serializes on the database's notification queue and wakes every listening session.
--
-- Only an addition. A release that predates it announces every release, which new waiters
-- also hear. A waiter that predates it does not count itself, so a new release may not
-- announce itself to it: it finds the lease free at its next try (at most 500 ms later).
ALTER TABLE resource_leases ADD COLUMN waiters INTEGER NOT NULL DEFAULT 0;
