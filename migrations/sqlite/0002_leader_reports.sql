-- Leader: uploaded reports, kept until aggregated. The primary key is the upload replay check.
CREATE TABLE client_reports (
    task_id BLOB NOT NULL,
    report_id BLOB NOT NULL,
    report_time INTEGER NOT NULL,
    report_metadata BLOB NOT NULL,          -- encoded ReportMetadata
    public_share BLOB NOT NULL,
    leader_encrypted_input_share BLOB NOT NULL,  -- encoded HpkeCiphertext
    helper_encrypted_input_share BLOB NOT NULL,  -- encoded HpkeCiphertext
    state TEXT NOT NULL CHECK (state IN ('unaggregated', 'in_job', 'aggregated', 'failed')),
    report_error INTEGER,
    job_id BLOB,
    created_at_seconds INTEGER NOT NULL,
    PRIMARY KEY (task_id, report_id)
);
CREATE INDEX client_reports_pending ON client_reports (task_id, state, report_time);
