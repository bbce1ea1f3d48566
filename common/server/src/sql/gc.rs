//! Garbage collection on SQL, the parts both roles share: deletions in bounded steps, the rows
//! of deleted tasks and of tasks that ended long ago, expired batch buckets and collected-batch
//! records, and the space given back (SQLite's incremental vacuum, PostgreSQL's `VACUUM`). The
//! leader's and the helper's own rules are in their stores' `gc.rs`.

use super::{Backend, SqlStore, Tx};
use crate::gc::{GcReport, GcSettings};
use crate::storage::*;
use duet_common::messages::*;
use sqlx::{Executor, Row};

/// A value bound to a garbage-collection statement.
#[derive(Clone, Debug)]
pub enum Param {
    Bytes(Vec<u8>),
    Int(i64),
}

/// Every table that holds rows of a task, children before the rows they hang on, each with the
/// condition that names a task's rows (`$1`: the task ID). One schema serves both roles, so
/// either role purges every table (the other role's are empty).
const TASK_TABLES: &[(&str, &str)] = &[
    ("client_report_payloads", "report_row IN (SELECT row_id FROM client_reports WHERE task_id = $1)"),
    ("client_reports", "task_id = $1"),
    ("leader_report_verifications", "task_id = $1"),
    ("leader_aggregation_jobs", "task_id = $1"),
    ("leader_batches", "task_id = $1"),
    ("leader_job_creation_holds", "task_id = $1"),
    ("collection_jobs", "task_id = $1"),
    ("leader_spent_budgets", "task_id = $1"),
    ("helper_report_states", "task_id = $1"),
    ("helper_deferred_steps", "task_id = $1"),
    ("aggregated_report_ids", "task_id = $1"),
    ("helper_aggregation_jobs", "task_id = $1"),
    ("helper_aggregate_shares", "task_id = $1"),
    ("batch_aggregations", "task_id = $1"),
    ("collected_batches", "task_id = $1"),
];

/// How long a deleted task's ID is remembered after its deletion, at least: other replicas
/// serve the task from their caches for up to [`super::TASK_CACHE_SECONDS`] and may store rows
/// of it meanwhile, which the collector then deletes too.
const TOMBSTONE_SECONDS: i64 = 6 * super::TASK_CACHE_SECONDS;

/// Pages one step of SQLite's incremental vacuum frees (16 MiB with 16 KiB pages), so that
/// writers wait for it no longer than for an ordinary transaction.
const VACUUM_PAGES_PER_STEP: i64 = 1024;

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    params: &'q [Param],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for p in params {
        q = match p {
            Param::Bytes(b) => q.bind(b.as_slice()),
            Param::Int(i) => q.bind(*i),
        };
    }
    q
}

impl SqlStore {
    /// Deletes at most `limit` rows of `table` that `condition` names (`$1`... bound to
    /// `params`) inside `tx`; how many it deleted.
    pub async fn delete_some(
        &self,
        tx: &mut Tx<'_>,
        table: &str,
        condition: &str,
        params: &[Param],
        limit: usize,
    ) -> Result<u64, StoreError> {
        // Every table has a physical row address, whatever its key: the statement picks a
        // bounded set of rows by it, which neither dialect's DELETE can do by itself.
        let key = match self.backend {
            Backend::Sqlite => "rowid",
            Backend::Postgres => "ctid",
        };
        let sql =
            format!("DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {condition} LIMIT {limit})");
        let done = bind_all(sqlx::query(&sql), params).execute(&mut **tx).await?;
        Ok(done.rows_affected())
    }

    /// Deletes the rows of `table` that `condition` names, at most `limit` per transaction,
    /// until none is left; each is counted in `report`.
    pub async fn delete_in_steps(
        &self,
        table: &'static str,
        condition: &str,
        params: &[Param],
        limit: usize,
        report: &mut GcReport,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = self
                .retrying(|| async {
                    let mut tx = self.begin().await?;
                    let n = self.delete_some(&mut tx, table, condition, params, limit).await?;
                    tx.commit().await?;
                    Ok(n)
                })
                .await?;
            report.add(table, n);
            total += n;
            if n < limit as u64 {
                return Ok(total);
            }
        }
    }

    /// Deletes every row a task left, table by table, in bounded steps. Each step deletes only
    /// while no task of that ID is provisioned, in its own transaction: once one is (restored,
    /// or provisioned anew on another replica), its rows are its own.
    pub async fn purge_task_rows(&self, id: &TaskId, limit: usize, report: &mut GcReport) -> Result<u64, StoreError> {
        let params = [Param::Bytes(id.as_bytes().to_vec())];
        let mut total = 0;
        for (table, condition) in TASK_TABLES {
            let condition = format!("{condition} AND NOT EXISTS (SELECT 1 FROM tasks WHERE task_id = $1)");
            total += self.delete_in_steps(table, &condition, &params, limit, report).await?;
        }
        Ok(total)
    }

    /// If a task deleted under `id` may still have rows in the database: the fingerprint it had
    /// (`None` inside when unknown).
    pub(super) async fn deleted_task_fingerprint(&self, id: &TaskId) -> Result<Option<Option<Vec<u8>>>, StoreError> {
        Ok(sqlx::query("SELECT fingerprint FROM deleted_tasks WHERE task_id = $1")
            .bind(id.as_bytes().as_slice())
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.get::<Option<Vec<u8>>, _>(0)))
    }

    /// The start of a garbage-collection pass of `role`'s store: the rows of deleted tasks and
    /// the tasks that ended long ago go; the role's live tasks, for its own rules.
    pub async fn gc_start(
        &self,
        role: Role,
        settings: &GcSettings,
    ) -> Result<(GcReport, Vec<std::sync::Arc<Task>>), StoreError> {
        let mut report = GcReport::default();
        self.purge_deleted_tasks(settings, &mut report).await?;
        let tasks = self.tasks_after_ending_old_ones(role, settings, &mut report).await?;
        Ok((report, tasks))
    }

    /// The end of a pass: the age of the oldest report held (`oldest_sql`: the smallest report
    /// time of the task `$1`), and the space of what the pass deleted given back.
    pub async fn gc_finish(
        &self,
        mut report: GcReport,
        tasks: &[std::sync::Arc<Task>],
        oldest_sql: &str,
    ) -> Result<GcReport, StoreError> {
        report.oldest_report_age_seconds = self.oldest_report_age(tasks, oldest_sql).await?;
        self.reclaim_space(&report).await;
        Ok(report)
    }

    /// Deletes the rows of tasks deleted more than the grace period ago (within it, provisioning
    /// the identical task again restores it); a task's ID is forgotten once a pass found none of
    /// its rows left, and [`TOMBSTONE_SECONDS`] at least have passed.
    async fn purge_deleted_tasks(&self, settings: &GcSettings, report: &mut GcReport) -> Result<(), StoreError> {
        let rows = sqlx::query("SELECT task_id, deleted_at_seconds FROM deleted_tasks WHERE deleted_at_seconds < $1")
            .bind(self.now_seconds() - settings.grace_seconds)
            .fetch_all(&self.pool)
            .await?;
        for row in rows {
            let Ok(id) = TaskId::try_from(row.get::<Vec<u8>, _>(0).as_slice()) else { continue };
            let deleted_at: i64 = row.get(1);
            // The purge claims the deletion record first, unless the task was provisioned again
            // (restored: its rows are the live task's): from now on the task is not restored,
            // which would bring back part of its rows ([`SqlStore::put_task_afresh`]).
            let claimed = self
                .retrying(|| async {
                    let mut tx = self.begin().await?;
                    let done = sqlx::query(
                        "UPDATE deleted_tasks SET fingerprint = $2 WHERE task_id = $1 AND deleted_at_seconds = $3
                         AND NOT EXISTS (SELECT 1 FROM tasks WHERE task_id = $1)",
                    )
                    .bind(id.as_bytes().as_slice())
                    .bind(super::tasks::PURGING)
                    .bind(deleted_at)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(done.rows_affected() > 0)
                })
                .await?;
            if !claimed {
                continue;
            }
            let purged = self.purge_task_rows(&id, settings.batch_rows, report).await?;
            if purged == 0 && self.now_seconds() - deleted_at > TOMBSTONE_SECONDS {
                sqlx::query("DELETE FROM deleted_tasks WHERE task_id = $1 AND deleted_at_seconds = $2")
                    .bind(id.as_bytes().as_slice())
                    .bind(deleted_at)
                    .execute(&self.pool)
                    .await?;
            } else if purged > 0 {
                tracing::info!(task_id = %id, rows = purged, "deleted rows of a deleted task");
            }
        }
        Ok(())
    }

    /// Deletes the tasks whose task interval ended more than their report expiry age ago (DAP-18
    /// "Reducing Storage Requirements" allows deleting all of a task's data after its interval);
    /// their rows go with the next passes. Returns the tasks of this `role` still provisioned.
    async fn tasks_after_ending_old_ones(
        &self,
        role: Role,
        settings: &GcSettings,
        report: &mut GcReport,
    ) -> Result<Vec<std::sync::Arc<Task>>, StoreError> {
        let now = self.now_seconds();
        let mut live = Vec::new();
        for id in self.task_ids_inner().await? {
            let task = match self.task_inner(&id).await {
                Ok(task) => task,
                Err(StoreError::UnknownTask(_)) => continue,
                Err(e) => return Err(e),
            };
            if task.role != role {
                continue;
            }
            let age = task.report_expiry_age.or(settings.default_report_expiry_seconds);
            let ended = match (task.parameters.task_interval_seconds, age) {
                (Some((_, end)), Some(age)) => end.saturating_add(age) < now.max(0) as u64,
                _ => false,
            };
            if ended {
                if self.retrying(|| self.delete_task_inner(&id)).await? {
                    tracing::info!(task_id = %id, "deleted a task whose interval ended more than its expiry age ago");
                    report.tasks_ended += 1;
                }
                continue;
            }
            live.push(task);
        }
        Ok(live)
    }

    /// Deletes a task's batch buckets whose newest report is older than `cutoff` (task time
    /// units), except those of the `protected` batches (collections in progress).
    pub async fn delete_expired_buckets(
        &self,
        task: &Task,
        cutoff: i64,
        protected: &[Batch],
        limit: usize,
        report: &mut GcReport,
    ) -> Result<u64, StoreError> {
        let mut condition = String::from("task_id = $1 AND max_time < $2");
        let mut params = vec![Param::Bytes(task.id.as_bytes().to_vec()), Param::Int(cutoff)];
        for batch in protected {
            match batch {
                Batch::TimeInterval(interval) => {
                    let Some(end) = interval.end() else { continue };
                    condition.push_str(&format!(
                        " AND NOT (bucket >= ${} AND bucket < ${})",
                        params.len() + 1,
                        params.len() + 2
                    ));
                    params.push(Param::Bytes(BatchBucket::TimeInterval(interval.start).key()));
                    params.push(Param::Bytes(BatchBucket::TimeInterval(end).key()));
                }
                Batch::LeaderSelected(id) => {
                    condition.push_str(&format!(" AND bucket != ${}", params.len() + 1));
                    params.push(Param::Bytes(id.as_bytes().to_vec()));
                }
            }
        }
        self.delete_in_steps("batch_aggregations", &condition, &params, limit, report).await
    }

    /// Deletes the records of collected batches whose buckets are all gone: a time interval
    /// that ended by `cutoff`, a leader-selected batch with no bucket left. A report for such a
    /// batch is refused as too old anyway, and so is a collection of it.
    pub async fn delete_expired_collected_batches(
        &self,
        task: &Task,
        cutoff: i64,
        limit: usize,
        report: &mut GcReport,
    ) -> Result<u64, StoreError> {
        let params = [Param::Bytes(task.id.as_bytes().to_vec()), Param::Int(cutoff)];
        self.delete_in_steps(
            "collected_batches",
            "task_id = $1 AND ((batch_end IS NOT NULL AND batch_end <= $2)
               OR (batch_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM batch_aggregations b
                     WHERE b.task_id = collected_batches.task_id AND b.bucket = collected_batches.batch_id)))",
            &params,
            limit,
            report,
        )
        .await
    }

    /// The age in seconds of the oldest report timestamp (task time units) that `sql` finds
    /// for each task (`$1`: the task ID), over `tasks`.
    async fn oldest_report_age(&self, tasks: &[std::sync::Arc<Task>], sql: &str) -> Result<Option<i64>, StoreError> {
        let now = self.now_seconds();
        let mut oldest: Option<i64> = None;
        for task in tasks {
            let row = sqlx::query(sql).bind(task.id.as_bytes().as_slice()).fetch_one(&self.pool).await?;
            if let Some(units) = row.try_get::<Option<i64>, _>(0)? {
                let seconds = units.saturating_mul(task.parameters.time_precision as i64);
                let age = (now - seconds).max(0);
                oldest = Some(oldest.map_or(age, |o| o.max(age)));
            }
        }
        Ok(oldest)
    }

    /// Gives back the space of deleted rows. SQLite frees its empty pages to the file system
    /// (incremental auto-vacuum, in steps through the write gate) after a pass that deleted
    /// rows. PostgreSQL vacuums each table whose dead rows (deleted, or left behind by updates)
    /// passed autovacuum's default threshold (50 and a fifth of the live rows), so that new rows
    /// reuse their space even where autovacuum is off or lags (it looks once a minute), and the
    /// tables stop growing. A failure is logged: the rows are gone either way.
    async fn reclaim_space(&self, report: &GcReport) {
        let result = match self.backend {
            Backend::Sqlite if report.total() == 0 => Ok(()),
            Backend::Sqlite => self.incremental_vacuum().await,
            Backend::Postgres => {
                async {
                    let due = sqlx::query(
                        "SELECT CAST(relname AS TEXT) FROM pg_stat_user_tables WHERE schemaname = current_schema()
                       AND n_dead_tup > 50 + n_live_tup / 5",
                    )
                    .fetch_all(&self.pool)
                    .await?;
                    for row in due {
                        let table: String = row.get(0);
                        // Only the tables of duet's schema, by name (nothing the query returned
                        // goes into the statement unchecked).
                        if table.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                            self.pool.execute(format!("VACUUM (ANALYZE) {table}").as_str()).await?;
                        }
                    }
                    Ok::<_, StoreError>(())
                }
                .await
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not give back the space of deleted rows");
        }
    }

    async fn incremental_vacuum(&self) -> Result<(), StoreError> {
        loop {
            let mut tx = self.begin().await?;
            let free: i64 = sqlx::query("PRAGMA freelist_count").fetch_one(&mut *tx).await?.get(0);
            if free == 0 {
                return Ok(());
            }
            sqlx::query(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES_PER_STEP})")).execute(&mut *tx).await?;
            tx.commit().await?;
            if free <= VACUUM_PAGES_PER_STEP {
                self.after_commit().await;
                return Ok(());
            }
        }
    }

    /// SQLite file: converts a database created before duet used incremental auto-vacuum (a
    /// SQLite file keeps the mode it was created with unless `VACUUM` rewrites it, which cannot
    /// run inside a transaction, hence here rather than in a migration). Rewrites the file once,
    /// and needs free disk space of about its size meanwhile.
    pub(super) async fn use_incremental_vacuum(&self) -> Result<(), StoreError> {
        if self.backend != Backend::Sqlite || self.wal.is_none() {
            return Ok(());
        }
        let mut conn = self.pool.acquire().await?;
        let mode: i64 = sqlx::query("PRAGMA auto_vacuum").fetch_one(&mut *conn).await?.get(0);
        if mode == 2 {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let _gate = self.write_gate.lock().await;
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL").await?;
        conn.execute("VACUUM").await?;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "converted the SQLite file to incremental auto-vacuum"
        );
        Ok(())
    }
}
