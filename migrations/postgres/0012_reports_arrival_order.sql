-- Leader: reports wait for jobs in the order they arrived, not by the time their clients stamped
-- them (which a client chooses: old stamps would jump the queue); row IDs count up as reports
-- arrive.
CREATE INDEX client_reports_arrival ON client_reports (task_id, row_id) WHERE state = 'unaggregated';
