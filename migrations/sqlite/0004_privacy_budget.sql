-- Leader: the differential-privacy epsilon each collection job spends from its task's budget.
ALTER TABLE collection_jobs ADD COLUMN epsilon REAL NOT NULL DEFAULT 0;
