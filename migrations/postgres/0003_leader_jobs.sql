-- Leader: aggregation jobs, leader-selected batches and collection jobs.

-- For leader-selected tasks, the batch a report was assigned to by the job creator.
ALTER TABLE client_reports ADD COLUMN batch_id BYTEA;
CREATE INDEX client_reports_job ON client_reports (task_id, job_id);
CREATE INDEX client_reports_batch ON client_reports (task_id, batch_id, state);

-- Leader-selected batches. 'open' batches take new reports until full; a batch is 'closed'
-- once a collection job has chosen it, and never takes another report.
CREATE TABLE leader_batches (
    task_id BYTEA NOT NULL,
    batch_id BYTEA NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'closed')),
    created_at_seconds BIGINT NOT NULL,
    PRIMARY KEY (task_id, batch_id)
);

-- Aggregation jobs the leader drives. The job ID is the leader's own (the helper derives its
-- resource ID from the request); the lease keeps two drivers off one job.
CREATE TABLE leader_aggregation_jobs (
    task_id BYTEA NOT NULL,
    job_id BYTEA NOT NULL,
    batch_id BYTEA,
    state TEXT NOT NULL CHECK (state IN ('active', 'finished', 'abandoned')),
    step BIGINT NOT NULL DEFAULT 0,
    lease_expiry_seconds BIGINT NOT NULL DEFAULT 0,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_seconds BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at_seconds BIGINT NOT NULL,
    PRIMARY KEY (task_id, job_id)
);
CREATE INDEX leader_aggregation_jobs_ready ON leader_aggregation_jobs (state, next_attempt_seconds);

-- Collection jobs. `request` is the encoded CollectionJobReq; identical requests name the same
-- live job. Once `batch_committed` is set the batch is marked collected and the leader's share,
-- count and checksum below are final, so a retried helper request is byte-identical.
CREATE TABLE collection_jobs (
    task_id BYTEA NOT NULL,
    collection_job_id BYTEA NOT NULL,
    request BYTEA NOT NULL,
    request_digest BYTEA NOT NULL,
    batch_id BYTEA,
    state TEXT NOT NULL CHECK (state IN ('pending', 'finished', 'failed', 'deleted')),
    batch_committed BIGINT NOT NULL DEFAULT 0,
    report_count BIGINT,
    checksum BYTEA,
    result_interval BYTEA,                  -- encoded Interval
    leader_encrypted_agg_share BYTEA,       -- encoded HpkeCiphertext
    response BYTEA,                         -- encoded CollectionJobResp
    error_type TEXT,                       -- DAP problem token when failed
    error_detail TEXT,
    lease_expiry_seconds BIGINT NOT NULL DEFAULT 0,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_seconds BIGINT NOT NULL DEFAULT 0,
    created_at_seconds BIGINT NOT NULL,
    PRIMARY KEY (task_id, collection_job_id)
);
CREATE INDEX collection_jobs_digest ON collection_jobs (task_id, request_digest);
CREATE INDEX collection_jobs_ready ON collection_jobs (state, next_attempt_seconds);
