-- Kept in step with PostgreSQL's schema version. SQLite keeps its full report indexes: the
-- narrower ones PostgreSQL uses (0006 there) help PostgreSQL's write path, while SQLite's
-- planner uses a partial index only for a query that repeats the index's own condition.
SELECT 1;
