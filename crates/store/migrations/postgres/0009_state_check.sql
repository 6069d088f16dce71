-- Nothing to change on PostgreSQL. SQLite's 0009 rewrites its `operations.state` CHECK as
-- comparisons, because SQLite builds a temporary b-tree for an IN list on every write of the
-- column; PostgreSQL evaluates the same CHECK without one. This file keeps both backends'
-- migration versions alike.
SELECT 1;
