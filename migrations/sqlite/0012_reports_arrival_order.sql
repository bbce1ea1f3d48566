-- Leader: reports wait for jobs in the order they arrived, not by the time their clients stamped
-- them (which a client chooses: old stamps would jump the queue). In SQLite an index on the task
-- alone lists a task's rows by row ID, which counts up as reports arrive.
CREATE INDEX client_reports_arrival ON client_reports (task_id) WHERE state = 'unaggregated';
