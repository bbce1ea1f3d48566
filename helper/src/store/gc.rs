//! The helper's garbage collection: one pass deletes, task by task and in bounded transactions,
//! what the helper no longer needs (duet-server's `gc` module holds the loop and the settings,
//! its SQL module the parts both roles share):
//! - replay records of reports older than the task's expiry: such a report is refused with
//!   `report_dropped` from then on, so forgetting its ID cannot let it in twice;
//! - aggregation jobs with their stored answers: once over, after the grace period or once
//!   their newest report expired (a retried request can then add nothing); a job still active
//!   when its reports expired goes one margin later;
//! - released aggregate shares after the grace period, or once their batch expired;
//! - batch buckets past expiry, and the records of collected batches whose buckets are gone.
//!
//! The helper cannot see the leader's collections in progress, so it keeps a batch's buckets
//! (and shares) one margin longer than its reports: the task's expiry age, at most the grace
//! period. A collection the leader committed before the batch expired finds them still there.

use super::*;
use duet_server::gc::{GcReport, GcSettings};
use duet_server::sql::{Param, SqlStore};

/// One pass over every task (and the rows of deleted ones).
pub(super) async fn collect_garbage(s: &SqlStore, settings: &GcSettings) -> Result<GcReport, StoreError> {
    let (mut report, tasks) = s.gc_start(Role::Helper, settings).await?;
    for task in &tasks {
        collect_task(s, task, settings, &mut report).await?;
    }
    s.gc_finish(report, &tasks, "SELECT MIN(report_time) FROM aggregated_report_ids WHERE task_id = $1").await
}

async fn collect_task(
    s: &SqlStore,
    task: &Task,
    settings: &GcSettings,
    report: &mut GcReport,
) -> Result<(), StoreError> {
    let now = s.now_seconds();
    let limit = settings.batch_rows;
    let tid = Param::Bytes(task.id.as_bytes().to_vec());
    let before = Param::Int(now - settings.grace_seconds);
    let expiry = task.report_expiry_age.or(settings.default_report_expiry_seconds);
    let Some(cutoff) = task.expired_before(now.max(0) as u64, settings.default_report_expiry_seconds) else {
        // No expiry: only what is over goes, after the grace period. Replay records stay.
        let jobs = "task_id = $1 AND state != 'active' AND created_at_seconds < $2";
        delete_jobs(s, jobs, &[tid.clone(), before.clone()], limit, report).await?;
        s.delete_in_steps(
            "helper_aggregate_shares",
            "task_id = $1 AND created_at_seconds < $2",
            &[tid, before],
            limit,
            report,
        )
        .await?;
        return Ok(());
    };
    let cutoff = cutoff.units() as i64;
    let precision = task.parameters.time_precision.max(1) as i64;
    let margin_seconds = settings.grace_seconds.min(expiry.unwrap_or(0).min(i64::MAX as u64) as i64);
    let kept_cutoff = cutoff - (margin_seconds + precision - 1) / precision;
    let (cut, kept) = (Param::Int(cutoff), Param::Int(kept_cutoff));
    s.delete_in_steps(
        "aggregated_report_ids",
        "task_id = $1 AND report_time < $2",
        &[tid.clone(), cut.clone()],
        limit,
        report,
    )
    .await?;
    let jobs = "task_id = $1 AND ((state != 'active' AND (created_at_seconds < $2 OR max_report_time < $3))
                  OR max_report_time < $4)";
    delete_jobs(s, jobs, &[tid.clone(), before.clone(), cut, kept.clone()], limit, report).await?;
    s.delete_in_steps(
        "helper_aggregate_shares",
        "task_id = $1 AND (created_at_seconds < $2 OR batch_max_time < $3)",
        &[tid, before, kept],
        limit,
        report,
    )
    .await?;
    s.delete_expired_buckets(task, kept_cutoff, &[], limit, report).await?;
    s.delete_expired_collected_batches(task, kept_cutoff, limit, report).await?;
    Ok(())
}

/// Deletes the jobs that `condition` names (on `helper_aggregation_jobs`), with the verification
/// states they kept, in bounded steps.
async fn delete_jobs(
    s: &SqlStore,
    condition: &str,
    params: &[Param],
    limit: usize,
    report: &mut GcReport,
) -> Result<(), StoreError> {
    let states = format!("job_id IN (SELECT job_id FROM helper_aggregation_jobs WHERE {condition})");
    s.delete_in_steps("helper_report_states", &format!("task_id = $1 AND {states}"), params, limit, report).await?;
    s.delete_in_steps("helper_aggregation_jobs", condition, params, limit, report).await?;
    Ok(())
}
