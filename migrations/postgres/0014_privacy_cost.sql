-- Leader: a task's budget is counted in its mechanism's own terms (epsilon for discrete Laplace
-- noise, rho for discrete Gaussian), so the columns that hold what collections spend are named
-- for neither.
ALTER TABLE collection_jobs RENAME COLUMN epsilon TO privacy_cost;
ALTER TABLE leader_spent_budgets RENAME COLUMN epsilon TO privacy_cost;
