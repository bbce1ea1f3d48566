-- Leader: what lets a job wait out a helper outage of any length without being lost or run twice.
-- A lease names its holder (`lease_token`), so that a driver renews, retries or gives up only the
-- lease it holds; `request_digest` is the SHA-256 of the first AggregationJobInitReq sent, so that
-- a retry is sent only if it is byte-identical; `oldest_report_seconds` is the upload time of the
-- job's oldest report, for the age of the oldest report not yet aggregated.
ALTER TABLE leader_aggregation_jobs ADD COLUMN lease_token BLOB;
ALTER TABLE leader_aggregation_jobs ADD COLUMN request_digest BLOB;
ALTER TABLE leader_aggregation_jobs ADD COLUMN oldest_report_seconds INTEGER;
ALTER TABLE collection_jobs ADD COLUMN lease_token BLOB;
ALTER TABLE collection_jobs ADD COLUMN last_error TEXT;

-- Leader: after the helper refused a job of a task (its reports went back to the pool), new jobs
-- of that task wait until `hold_until_seconds`, doubling with each refusal in a row, so that a
-- helper that refuses everything (a wrong token, a task not provisioned yet) is not sent a new
-- job every second. A job that finishes lifts the hold.
CREATE TABLE leader_job_creation_holds (
    task_id BLOB PRIMARY KEY,
    refusals INTEGER NOT NULL,
    hold_until_seconds INTEGER NOT NULL,
    last_error TEXT
);

-- Helper: aggregation steps answered asynchronously and not finished yet. A poll finds the step
-- here while it is being worked on; `owner` is the process working on it, which renews
-- `lease_expiry_seconds` while it lives, so that a step whose process died is forgotten, and the
-- leader's identical request starts it again.
CREATE TABLE helper_deferred_steps (
    task_id BLOB NOT NULL,
    job_id BLOB NOT NULL,
    step INTEGER NOT NULL,
    request_digest BLOB NOT NULL,
    owner BLOB NOT NULL,
    lease_expiry_seconds INTEGER NOT NULL,
    PRIMARY KEY (task_id, job_id, step)
);
CREATE INDEX helper_deferred_steps_owner ON helper_deferred_steps (owner);
