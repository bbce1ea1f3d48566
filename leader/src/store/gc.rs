//! The leader's garbage collection: one pass deletes, task by task and in bounded transactions,
//! what the leader no longer needs (duet-server's `gc` module holds the loop and the settings,
//! its SQL module the parts both roles share):
//! - reports (rows and payloads) older than the task's expiry, except those of a job still
//!   active: the upload check refuses such a report from then on, so forgetting its ID cannot
//!   let it in twice;
//! - finished and abandoned jobs after the grace period, their reports settled first (a report
//!   of a finished job is aggregated by its job's state; without the job it says so itself);
//! - collection jobs: failed and deleted ones after the grace period, finished ones once the
//!   reports of their result expired; the privacy budget a deleted job spent stays spent;
//! - leader-selected batches once their oldest report expired (closed for good: part of them is
//!   gone), and their rows once nothing refers to them;
//! - batch buckets past expiry, never one a collection in progress needs, and the records of
//!   collected batches whose buckets are gone.

use super::*;
use duet_common::Decode;
use duet_server::gc::{GcReport, GcSettings};
use duet_server::sql::{id_of, placeholder_list, Param, SqlStore, Tx};
use sqlx::Row;

/// One pass over every task (and the rows of deleted ones).
pub(super) async fn collect_garbage(s: &SqlStore, settings: &GcSettings) -> Result<GcReport, StoreError> {
    let (mut report, tasks) = s.gc_start(Role::Leader, settings).await?;
    for task in &tasks {
        collect_task(s, task, settings, &mut report).await?;
    }
    s.gc_finish(report, &tasks, "SELECT MIN(report_time) FROM client_reports WHERE task_id = $1").await
}

/// Runs `sql`, a statement on a task's row named by a second key (`$1` the task ID, `$2` the
/// key), inside `tx`; how many rows it touched.
async fn keyed(tx: &mut Tx<'_>, sql: &str, task: &[u8], key: &[u8]) -> Result<u64, StoreError> {
    Ok(sqlx::query(sql).bind(task).bind(key).execute(&mut **tx).await?.rows_affected())
}

async fn collect_task(
    s: &SqlStore,
    task: &Task,
    settings: &GcSettings,
    report: &mut GcReport,
) -> Result<(), StoreError> {
    // Read before anything else: a collection created after this instant is refused for any
    // batch older than the cutoff, so the protected batches read below are all there are.
    let now = s.now_seconds();
    let cutoff =
        task.expired_before(now.max(0) as u64, settings.default_report_expiry_seconds).map(|t| t.units() as i64);
    let limit = settings.batch_rows;
    delete_old_collection_jobs(s, task, now - settings.grace_seconds, cutoff, limit, report).await?;
    if let Some(cutoff) = cutoff {
        if task.configuration.batch_mode == BatchMode::LeaderSelected {
            retire_expired_batches(s, task, cutoff, limit, report).await?;
        }
        delete_expired_reports(s, task, cutoff, limit, report).await?;
    }
    // A job with no report left after the expiry age lost them to expiry; before it (reports
    // that went back to the pool from an abandoned job), it waits for the grace period.
    let expired_jobs_before = task
        .report_expiry_age
        .or(settings.default_report_expiry_seconds)
        .map_or(i64::MIN, |age| now.saturating_sub(age.min(i64::MAX as u64) as i64));
    settle_old_jobs(s, task, now - settings.grace_seconds, expired_jobs_before, limit, report).await?;
    let Some(cutoff) = cutoff else { return Ok(()) };
    let protected = collections_in_progress(s, task).await?;
    s.delete_expired_buckets(task, cutoff, &protected, limit, report).await?;
    s.delete_expired_collected_batches(task, cutoff, limit, report).await?;
    if task.configuration.batch_mode == BatchMode::LeaderSelected {
        s.delete_in_steps(
            "leader_batches",
            "task_id = $1 AND state = 'closed'
               AND NOT EXISTS (SELECT 1 FROM client_reports r WHERE r.task_id = $1 AND r.batch_id = leader_batches.batch_id)
               AND NOT EXISTS (SELECT 1 FROM batch_aggregations b WHERE b.task_id = $1 AND b.bucket = leader_batches.batch_id)
               AND NOT EXISTS (SELECT 1 FROM collection_jobs c WHERE c.task_id = $1 AND c.batch_id = leader_batches.batch_id
                                 AND c.state = 'pending')",
            &[Param::Bytes(task.id.as_bytes().to_vec())],
            limit,
            report,
        )
        .await?;
    }
    Ok(())
}

/// Deletes the task's reports stamped before `cutoff`, with their payloads, except those in a
/// job still active (its commit needs them; they go once it ends).
async fn delete_expired_reports(
    s: &SqlStore,
    task: &Task,
    cutoff: i64,
    limit: usize,
    report: &mut GcReport,
) -> Result<(), StoreError> {
    let tid = task.id.as_bytes().as_slice();
    loop {
        let deleted = s
            .retrying(|| async {
                let mut tx = s.begin().await?;
                let rows: Vec<i64> = sqlx::query(&format!(
                    "SELECT r.row_id FROM client_reports r WHERE r.task_id = $1 AND r.report_time < $2
                       AND NOT (r.state = 'in_job' AND EXISTS (SELECT 1 FROM leader_aggregation_jobs j
                                  WHERE j.task_id = r.task_id AND j.job_id = r.job_id AND j.state = 'active'))
                     LIMIT {limit}"
                ))
                .bind(tid)
                .bind(cutoff)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
                if rows.is_empty() {
                    return Ok((0, 0));
                }
                let mut counts = (0, 0);
                for chunk in s.statement_chunks(&rows, 1) {
                    let list = placeholder_list(1, chunk.len());
                    let (payloads_sql, reports_sql) = (
                        format!("DELETE FROM client_report_payloads WHERE report_row IN ({list})"),
                        format!("DELETE FROM client_reports WHERE row_id IN ({list})"),
                    );
                    let (mut payloads, mut reports) = (sqlx::query(&payloads_sql), sqlx::query(&reports_sql));
                    for row in chunk {
                        payloads = payloads.bind(*row);
                        reports = reports.bind(*row);
                    }
                    counts.0 += payloads.execute(&mut *tx).await?.rows_affected();
                    counts.1 += reports.execute(&mut *tx).await?.rows_affected();
                }
                tx.commit().await?;
                Ok(counts)
            })
            .await?;
        report.add("client_report_payloads", deleted.0);
        report.add("client_reports", deleted.1);
        s.after_commit().await;
        if (deleted.1 as usize) < limit {
            return Ok(());
        }
    }
}

/// Deletes the task's finished and abandoned jobs created before `before`, or before
/// `expired_before` with none of their reports left (expired), a job per transaction: its
/// reports first settled (`in_job` becomes `aggregated` for a finished job, `failed` for an
/// abandoned one, and no report names the job any more).
async fn settle_old_jobs(
    s: &SqlStore,
    task: &Task,
    before: i64,
    expired_before: i64,
    limit: usize,
    report: &mut GcReport,
) -> Result<(), StoreError> {
    let tid = task.id.as_bytes().as_slice();
    let jobs = sqlx::query(&format!(
        "SELECT j.job_id, j.state FROM leader_aggregation_jobs j
         WHERE j.task_id = $1 AND j.state != 'active' AND (j.created_at_seconds < $2
           OR (j.created_at_seconds < $3
               AND NOT EXISTS (SELECT 1 FROM client_reports r WHERE r.task_id = j.task_id AND r.job_id = j.job_id)))
         LIMIT {limit}"
    ))
    .bind(tid)
    .bind(before)
    .bind(expired_before)
    .fetch_all(s.pool())
    .await?;
    for job in jobs {
        let job_id: Vec<u8> = job.get(0);
        let settled = match LeaderJobState::from_db(&job.get::<String, _>(1)) {
            Some(LeaderJobState::Finished) => "aggregated",
            Some(LeaderJobState::Abandoned) => "failed",
            _ => continue,
        };
        let deleted = s
            .retrying(|| async {
                let mut tx = s.begin().await?;
                // Re-checked inside the transaction: only a job that is over goes.
                let delete_job = "DELETE FROM leader_aggregation_jobs WHERE task_id = $1 AND job_id = $2 AND state != 'active'";
                if keyed(&mut tx, delete_job, tid, &job_id).await? == 0 {
                    return Ok((0, 0));
                }
                let settle = format!(
                    "UPDATE client_reports SET state = CASE WHEN state = 'in_job' THEN '{settled}' ELSE state END, job_id = NULL
                     WHERE task_id = $1 AND job_id = $2"
                );
                keyed(&mut tx, &settle, tid, &job_id).await?;
                let delete_states = "DELETE FROM leader_report_verifications WHERE task_id = $1 AND job_id = $2";
                let states = keyed(&mut tx, delete_states, tid, &job_id).await?;
                tx.commit().await?;
                Ok((1, states))
            })
            .await?;
        report.add("leader_report_verifications", deleted.1);
        report.add("leader_aggregation_jobs", deleted.0);
    }
    Ok(())
}

/// Deletes collection jobs that are over: failed and deleted ones created before `before`, and
/// finished ones whose result's reports all lie before `cutoff` (a collector can no longer get
/// that result). The budget a job spent is added to the task's spent budget in the same
/// transaction.
async fn delete_old_collection_jobs(
    s: &SqlStore,
    task: &Task,
    before: i64,
    cutoff: Option<i64>,
    limit: usize,
    report: &mut GcReport,
) -> Result<(), StoreError> {
    let tid = task.id.as_bytes().as_slice();
    // Finished jobs wait for their results' reports to expire (the collector's time to fetch
    // the result), whatever the grace period; without an expiry they stay.
    let finished = if cutoff.is_some() { "state = 'finished' OR " } else { "" };
    let rows = sqlx::query(&format!(
        "SELECT collection_job_id, state, result_interval, created_at_seconds FROM collection_jobs
         WHERE task_id = $1 AND state != 'pending' AND ({finished}created_at_seconds < $2)
         ORDER BY created_at_seconds LIMIT {limit}"
    ))
    .bind(tid)
    .bind(before)
    .fetch_all(s.pool())
    .await?;
    for row in rows {
        let id: Vec<u8> = row.get(0);
        let goes = match CollectionJobState::from_db(&row.get::<String, _>(1)) {
            Some(CollectionJobState::Failed | CollectionJobState::Deleted) => row.get::<i64, _>(3) < before,
            Some(CollectionJobState::Finished) => {
                let result_end = row
                    .get::<Option<Vec<u8>>, _>(2)
                    .and_then(|b| duet_common::time::Interval::get_decoded(&b).ok())
                    .and_then(|i| i.end());
                matches!((result_end, cutoff), (Some(end), Some(cutoff)) if (end.units() as i64) <= cutoff)
            }
            _ => false,
        };
        if !goes {
            continue;
        }
        let deleted = s
            .retrying(|| async {
                let mut tx = s.begin().await?;
                let spent = sqlx::query(
                    "SELECT privacy_cost FROM collection_jobs WHERE task_id = $1 AND collection_job_id = $2
                       AND state != 'pending' AND batch_committed = 1",
                )
                .bind(tid)
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await?
                .map_or(0.0, |r| r.get::<f64, _>(0));
                if spent > 0.0 {
                    sqlx::query(
                        "INSERT INTO leader_spent_budgets (task_id, privacy_cost) VALUES ($1, $2)
                         ON CONFLICT (task_id) DO UPDATE
                         SET privacy_cost = leader_spent_budgets.privacy_cost + excluded.privacy_cost",
                    )
                    .bind(tid)
                    .bind(spent)
                    .execute(&mut *tx)
                    .await?;
                }
                let delete =
                    "DELETE FROM collection_jobs WHERE task_id = $1 AND collection_job_id = $2 AND state != 'pending'";
                let n = keyed(&mut tx, delete, tid, &id).await?;
                tx.commit().await?;
                Ok(n)
            })
            .await?;
        report.add("collection_jobs", deleted);
    }
    Ok(())
}

/// The batches of the task's collections in progress, which keep their buckets.
async fn collections_in_progress(s: &SqlStore, task: &Task) -> Result<Vec<Batch>, StoreError> {
    let rows = sqlx::query("SELECT request, batch_id FROM collection_jobs WHERE task_id = $1 AND state = 'pending'")
        .bind(task.id.as_bytes().as_slice())
        .fetch_all(s.pool())
        .await?;
    let mut batches = Vec::new();
    for row in rows {
        let request = CollectionJobReq::get_decoded(&row.get::<Vec<u8>, _>(0))
            .map_err(|_| StoreError::Corrupt("stored collection request is corrupt".into()))?;
        match (request.query, row.get::<Option<Vec<u8>>, _>(1)) {
            (Query::TimeInterval(q), _) => batches.push(Batch::TimeInterval(q.batch_interval)),
            (Query::LeaderSelected(_), Some(id)) => batches.push(Batch::LeaderSelected(id_of(id, "batch ID")?)),
            (Query::LeaderSelected(_), None) => {}
        }
    }
    Ok(batches)
}

/// Leader-selected batches whose oldest report expired: closed for good (a collection would
/// miss the reports already gone) and their buckets deleted, unless a collection in progress
/// has chosen the batch or a job still adds to it. Under the task's lock, so that no collection
/// picks a batch meanwhile.
async fn retire_expired_batches(
    s: &SqlStore,
    task: &Task,
    cutoff: i64,
    limit: usize,
    report: &mut GcReport,
) -> Result<(), StoreError> {
    let tid = task.id.as_bytes().as_slice();
    let deleted = s
        .retrying(|| async {
            let mut tx = s.begin().await?;
            s.lock_task(&mut tx, task).await?;
            let batches: Vec<Vec<u8>> = sqlx::query(&format!(
                "SELECT DISTINCT b.bucket FROM batch_aggregations b WHERE b.task_id = $1 AND b.min_time < $2
                   AND NOT EXISTS (SELECT 1 FROM collection_jobs c WHERE c.task_id = b.task_id AND c.batch_id = b.bucket
                                     AND c.state = 'pending')
                   AND NOT EXISTS (SELECT 1 FROM leader_aggregation_jobs j WHERE j.task_id = b.task_id
                                     AND j.batch_id = b.bucket AND j.state = 'active')
                 LIMIT {limit}"
            ))
            .bind(tid)
            .bind(cutoff)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
            let mut deleted = 0;
            for batch in &batches {
                keyed(
                    &mut tx,
                    "UPDATE leader_batches SET state = 'closed' WHERE task_id = $1 AND batch_id = $2",
                    tid,
                    batch,
                )
                .await?;
                deleted +=
                    keyed(&mut tx, "DELETE FROM batch_aggregations WHERE task_id = $1 AND bucket = $2", tid, batch)
                        .await?;
            }
            tx.commit().await?;
            Ok(deleted)
        })
        .await?;
    report.add("batch_aggregations", deleted);
    Ok(())
}
