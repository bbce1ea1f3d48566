-- Leader: a report that does not fail keeps the state `in_job` when its job is finished: it
-- shares the job's outcome (aggregated once `leader_aggregation_jobs.state` is `finished`), and
-- the job's commit no longer rewrites each of its rows (a new row version and a primary-key
-- entry each). Reports settled before this version keep the state `aggregated`, which the
-- queries still read as such. The pending index holds only reports waiting for a job, so that
-- joining one adds no entry to it; jobs still active are found through their own table.
DROP INDEX client_reports_pending;
CREATE INDEX client_reports_pending ON client_reports (task_id, report_time) WHERE state = 'unaggregated';
