-- Leader: index a report only while a query can look for it there. An UPDATE that changes an
-- indexed column adds an entry to every index whose predicate the new row meets; with these
-- predicates, settling a report (aggregated or failed) adds none but the primary key's, and
-- time-interval reports (no batch ID) never enter the batch index.
DROP INDEX client_reports_pending;
CREATE INDEX client_reports_pending ON client_reports (task_id, state, report_time)
    WHERE state IN ('unaggregated', 'in_job');
DROP INDEX client_reports_job;
CREATE INDEX client_reports_job ON client_reports (task_id, job_id) WHERE state = 'in_job';
DROP INDEX client_reports_batch;
CREATE INDEX client_reports_batch ON client_reports (task_id, batch_id, state) WHERE batch_id IS NOT NULL;
