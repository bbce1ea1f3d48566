-- duet schema, PostgreSQL dialect. One schema serves both roles; each aggregator uses its own tables.
-- Times are DAP time units of the task's time_precision unless a column says _seconds.

CREATE TABLE tasks (
    task_id BYTEA PRIMARY KEY,
    role BIGINT NOT NULL,                 -- 2 leader, 3 helper
    parameters TEXT NOT NULL,              -- TaskParameters JSON
    vdaf_verify_key BYTEA NOT NULL,
    aggregator_auth_token TEXT NOT NULL,   -- leader: presented to the helper; helper: expected
    collector_auth_token TEXT,             -- leader only
    collector_hpke_config BYTEA NOT NULL,   -- encoded HpkeConfig
    max_batch_size BIGINT,
    created_at_seconds BIGINT NOT NULL
);

-- The aggregator's own HPKE keys (global, not per task).
CREATE TABLE hpke_keys (
    config_id BIGINT PRIMARY KEY,
    config BYTEA NOT NULL,                  -- encoded HpkeConfig
    private_key BYTEA NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'active', 'expired')),
    created_at_seconds BIGINT NOT NULL
);

-- Batch buckets, possibly sharded (DAP-18 "Batch Buckets"): bucket is an encoded Interval
-- (time-interval) or BatchID (leader-selected).
CREATE TABLE batch_aggregations (
    task_id BYTEA NOT NULL,
    bucket BYTEA NOT NULL,
    shard BIGINT NOT NULL,
    aggregate_share BYTEA NOT NULL,
    report_count BIGINT NOT NULL,
    checksum BYTEA NOT NULL,
    min_time BIGINT NOT NULL,
    max_time BIGINT NOT NULL,
    PRIMARY KEY (task_id, bucket, shard)
);

-- Collected batches: a time-interval batch as [start, end) in units, or a leader-selected batch ID.
CREATE TABLE collected_batches (
    task_id BYTEA NOT NULL,
    batch_start BIGINT,
    batch_end BIGINT,
    batch_id BYTEA,
    collected_at_seconds BIGINT NOT NULL
);
CREATE INDEX collected_batches_task ON collected_batches (task_id);

-- Helper: every report ID aggregated (or being aggregated) per task, for replay checks.
CREATE TABLE aggregated_report_ids (
    task_id BYTEA NOT NULL,
    report_id BYTEA NOT NULL,
    job_id BYTEA NOT NULL,
    PRIMARY KEY (task_id, report_id)
);

-- Helper: aggregation jobs, with the last request's digest and the response for replays.
CREATE TABLE helper_aggregation_jobs (
    task_id BYTEA NOT NULL,
    job_id BYTEA NOT NULL,
    init_digest BYTEA NOT NULL,
    step BIGINT NOT NULL,
    last_request_digest BYTEA NOT NULL,
    last_response BYTEA NOT NULL,
    batch_id BYTEA,
    state TEXT NOT NULL CHECK (state IN ('active', 'finished', 'deleted')),
    created_at_seconds BIGINT NOT NULL,
    PRIMARY KEY (task_id, job_id)
);

-- Helper: per-report verification state of reports still Continued between steps.
CREATE TABLE helper_report_states (
    task_id BYTEA NOT NULL,
    job_id BYTEA NOT NULL,
    ord BIGINT NOT NULL,
    report_id BYTEA NOT NULL,
    report_time BIGINT NOT NULL,
    verify_state BYTEA NOT NULL,
    PRIMARY KEY (task_id, job_id, report_id)
);

-- Helper: aggregate shares, keyed by the request digest for idempotency.
CREATE TABLE helper_aggregate_shares (
    task_id BYTEA NOT NULL,
    share_id BYTEA NOT NULL,
    request_digest BYTEA NOT NULL,
    response BYTEA NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('finished', 'deleted')),
    created_at_seconds BIGINT NOT NULL,
    PRIMARY KEY (task_id, share_id)
);
