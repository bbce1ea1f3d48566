-- Leader: a report enters the job and batch indexes only once it has a job or batch, so that an
-- upload writes neither (every query on them compares job_id or batch_id, which SQLite takes to
-- satisfy the IS NOT NULL condition).
DROP INDEX client_reports_job;
CREATE INDEX client_reports_job ON client_reports (task_id, job_id) WHERE job_id IS NOT NULL;
DROP INDEX client_reports_batch;
CREATE INDEX client_reports_batch ON client_reports (task_id, batch_id, state) WHERE batch_id IS NOT NULL;
