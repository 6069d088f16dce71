-- Nothing to change on SQLite. PostgreSQL's 0011 counts the takers waiting for a resource
-- lease, so that a release announces itself only to someone; SQLite's resource locks are in
-- the process and announce nothing. This file keeps both backends' migration versions alike.
SELECT 1;
