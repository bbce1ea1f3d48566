-- Leader: what a job of a multi-round VDAF keeps between its steps (DAP-18 "Aggregate
-- Continuation"), so that a step the helper committed but whose answer was lost is asked for
-- again with the byte-identical request, by whichever replica leases the job next.
-- `helper_job_url` is the Location of the helper's aggregation job; each row of
-- `leader_report_verifications` is one report still being verified (`report_time` in the task's
-- time units), in the order of the job's requests: the leader's state (`finished` 0: a
-- verification state; 1: its output share, held until the helper finishes too) and the message
-- the next step sends.
ALTER TABLE leader_aggregation_jobs ADD COLUMN helper_job_url TEXT;
CREATE TABLE leader_report_verifications (
    task_id BLOB NOT NULL,
    job_id BLOB NOT NULL,
    ord INTEGER NOT NULL,
    report_id BLOB NOT NULL,
    report_time INTEGER NOT NULL,
    finished INTEGER NOT NULL,
    state BLOB NOT NULL,
    outbound BLOB NOT NULL,
    PRIMARY KEY (task_id, job_id, ord)
);
