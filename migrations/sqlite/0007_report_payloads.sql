-- Leader: a report's payload (the bytes an aggregation job reads once) apart from its
-- bookkeeping row (which the job creator and the job's commit each change). A histogram
-- report's payload fills a page of its own; in one row with the state, every change of state
-- wrote that page again (twice with the checkpoint), where now it writes a small row among
-- dozens on a page. Payloads are deleted once their report is settled; the rows stay, for
-- replay checks. The row ID is explicit, so that VACUUM keeps it.
CREATE TABLE client_reports_v7 (
    row_id INTEGER PRIMARY KEY,
    task_id BLOB NOT NULL,
    report_id BLOB NOT NULL,
    report_time INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('unaggregated', 'in_job', 'aggregated', 'failed')),
    report_error INTEGER,
    job_id BLOB,
    batch_id BLOB,
    created_at_seconds INTEGER NOT NULL,
    UNIQUE (task_id, report_id)
);
CREATE TABLE client_report_payloads (
    report_row INTEGER PRIMARY KEY,               -- client_reports.row_id
    report_metadata BLOB NOT NULL,                -- encoded ReportMetadata
    public_share BLOB NOT NULL,
    leader_encrypted_input_share BLOB NOT NULL,   -- encoded HpkeCiphertext
    helper_encrypted_input_share BLOB NOT NULL    -- encoded HpkeCiphertext
);
INSERT INTO client_reports_v7 (row_id, task_id, report_id, report_time, state, report_error, job_id, batch_id,
                               created_at_seconds)
    SELECT rowid, task_id, report_id, report_time, state, report_error, job_id, batch_id, created_at_seconds
    FROM client_reports ORDER BY rowid;
INSERT INTO client_report_payloads (report_row, report_metadata, public_share, leader_encrypted_input_share,
                                    helper_encrypted_input_share)
    SELECT rowid, report_metadata, public_share, leader_encrypted_input_share, helper_encrypted_input_share
    FROM client_reports WHERE state IN ('unaggregated', 'in_job') ORDER BY rowid;
DROP TABLE client_reports;
ALTER TABLE client_reports_v7 RENAME TO client_reports;
CREATE INDEX client_reports_pending ON client_reports (task_id, state, report_time);
CREATE INDEX client_reports_job ON client_reports (task_id, job_id) WHERE job_id IS NOT NULL;
CREATE INDEX client_reports_batch ON client_reports (task_id, batch_id, state) WHERE batch_id IS NOT NULL;
