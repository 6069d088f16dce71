-- `audit_events.id` is the table's rowid without AUTOINCREMENT.
--
-- AUTOINCREMENT keeps the highest id ever used in `sqlite_sequence` and updates it on every
-- insert, so every commit that appended an event (every claim and every outcome) wrote one
-- more page: the `sqlite_sequence` page, about one WAL frame in sixteen at 64 refunds at a
-- time and one in nine at one at a time. Its only promise beyond a plain rowid is that an id
-- freed by deleting the newest row is never used again, and no statement deletes audit
-- events: they are append-only, so the next id is the highest plus one either way, and every
-- id stays in the order the events were appended.
--
-- The keyword changes how a new rowid is chosen, not how the table is stored, so it is
-- removed in place, as 0009 changed a CHECK (SQLite's documented procedure: edit the schema
-- text with writable_schema, then change the schema version so every connection reloads it).
-- Its row in `sqlite_sequence` goes with it.
--
-- A release before this one keeps working against this schema: its statements insert events
-- without an id, and SQLite picks the next one.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
SET sql = replace(sql, 'INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT', 'INTEGER NOT NULL PRIMARY KEY')
WHERE type = 'table' AND name = 'audit_events';
PRAGMA writable_schema = RESET;
DELETE FROM sqlite_sequence WHERE name = 'audit_events';
CREATE TABLE schema_version_bump (x INTEGER);
DROP TABLE schema_version_bump;
