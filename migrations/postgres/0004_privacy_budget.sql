-- Leader: the differential-privacy epsilon each collection job spends from its task's budget.
ALTER TABLE collection_jobs ADD COLUMN epsilon DOUBLE PRECISION NOT NULL DEFAULT 0;
