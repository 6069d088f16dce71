-- Nothing to change on PostgreSQL: SQLite's 0013 removes AUTOINCREMENT from `audit_events.id`,
-- which cost a page written per commit; here the id comes from a sequence. Both backends
-- number their migrations alike.
SELECT 1;
