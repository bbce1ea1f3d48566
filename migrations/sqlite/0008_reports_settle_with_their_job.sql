-- Leader: a report that does not fail keeps the state `in_job` when its job is finished: it
-- shares the job's outcome (aggregated once `leader_aggregation_jobs.state` is `finished`), and
-- the job's commit no longer rewrites each of its rows. Reports settled before this version keep
-- the state `aggregated`, which the queries still read as such. The pending index holds only
-- reports waiting for a job: a report leaves it when it joins one, and nothing queries it for
-- reports in jobs any more (jobs still active are found through their own table).
DROP INDEX client_reports_pending;
CREATE INDEX client_reports_pending ON client_reports (task_id, report_time) WHERE state = 'unaggregated';
