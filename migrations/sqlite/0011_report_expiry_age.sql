-- Both roles: a task's report expiry age in seconds (a report older than it is dropped at upload
-- and refused at aggregation with report_dropped); NULL: the server's default, if it has one.
ALTER TABLE tasks ADD COLUMN report_expiry_age INTEGER;
