-- Leader: uploaded reports, kept until aggregated. The primary key is the upload replay check.
CREATE TABLE client_reports (
    task_id BYTEA NOT NULL,
    report_id BYTEA NOT NULL,
    report_time BIGINT NOT NULL,
    report_metadata BYTEA NOT NULL,          -- encoded ReportMetadata
    public_share BYTEA NOT NULL,
    leader_encrypted_input_share BYTEA NOT NULL,  -- encoded HpkeCiphertext
    helper_encrypted_input_share BYTEA NOT NULL,  -- encoded HpkeCiphertext
    state TEXT NOT NULL CHECK (state IN ('unaggregated', 'in_job', 'aggregated', 'failed')),
    report_error BIGINT,
    job_id BYTEA,
    created_at_seconds BIGINT NOT NULL,
    PRIMARY KEY (task_id, report_id)
);
CREATE INDEX client_reports_pending ON client_reports (task_id, state, report_time);
