-- duet schema, SQLite dialect. One schema serves both roles; each aggregator uses its own tables.
-- Times are DAP time units of the task's time_precision unless a column says _seconds.

CREATE TABLE tasks (
    task_id BLOB PRIMARY KEY,
    role INTEGER NOT NULL,                 -- 2 leader, 3 helper
    parameters TEXT NOT NULL,              -- TaskParameters JSON
    vdaf_verify_key BLOB NOT NULL,
    aggregator_auth_token TEXT NOT NULL,   -- leader: presented to the helper; helper: expected
    collector_auth_token TEXT,             -- leader only
    collector_hpke_config BLOB NOT NULL,   -- encoded HpkeConfig
    max_batch_size INTEGER,
    created_at_seconds INTEGER NOT NULL
);

-- The aggregator's own HPKE keys (global, not per task).
CREATE TABLE hpke_keys (
    config_id INTEGER PRIMARY KEY,
    config BLOB NOT NULL,                  -- encoded HpkeConfig
    private_key BLOB NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'active', 'expired')),
    created_at_seconds INTEGER NOT NULL
);

-- Batch buckets, possibly sharded (DAP-18 "Batch Buckets"): bucket is an encoded Interval
-- (time-interval) or BatchID (leader-selected).
CREATE TABLE batch_aggregations (
    task_id BLOB NOT NULL,
    bucket BLOB NOT NULL,
    shard INTEGER NOT NULL,
    aggregate_share BLOB NOT NULL,
    report_count INTEGER NOT NULL,
    checksum BLOB NOT NULL,
    min_time INTEGER NOT NULL,
    max_time INTEGER NOT NULL,
    PRIMARY KEY (task_id, bucket, shard)
);

-- Collected batches: a time-interval batch as [start, end) in units, or a leader-selected batch ID.
CREATE TABLE collected_batches (
    task_id BLOB NOT NULL,
    batch_start INTEGER,
    batch_end INTEGER,
    batch_id BLOB,
    collected_at_seconds INTEGER NOT NULL
);
CREATE INDEX collected_batches_task ON collected_batches (task_id);

-- Helper: every report ID aggregated (or being aggregated) per task, for replay checks.
CREATE TABLE aggregated_report_ids (
    task_id BLOB NOT NULL,
    report_id BLOB NOT NULL,
    job_id BLOB NOT NULL,
    PRIMARY KEY (task_id, report_id)
);

-- Helper: aggregation jobs, with the last request's digest and the response for replays.
CREATE TABLE helper_aggregation_jobs (
    task_id BLOB NOT NULL,
    job_id BLOB NOT NULL,
    init_digest BLOB NOT NULL,
    step INTEGER NOT NULL,
    last_request_digest BLOB NOT NULL,
    last_response BLOB NOT NULL,
    batch_id BLOB,
    state TEXT NOT NULL CHECK (state IN ('active', 'finished', 'deleted')),
    created_at_seconds INTEGER NOT NULL,
    PRIMARY KEY (task_id, job_id)
);

-- Helper: per-report verification state of reports still Continued between steps.
CREATE TABLE helper_report_states (
    task_id BLOB NOT NULL,
    job_id BLOB NOT NULL,
    ord INTEGER NOT NULL,
    report_id BLOB NOT NULL,
    report_time INTEGER NOT NULL,
    verify_state BLOB NOT NULL,
    PRIMARY KEY (task_id, job_id, report_id)
);

-- Helper: aggregate shares, keyed by the request digest for idempotency.
CREATE TABLE helper_aggregate_shares (
    task_id BLOB NOT NULL,
    share_id BLOB NOT NULL,
    request_digest BLOB NOT NULL,
    response BLOB NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('finished', 'deleted')),
    created_at_seconds INTEGER NOT NULL,
    PRIMARY KEY (task_id, share_id)
);
