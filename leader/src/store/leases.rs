//! The leader's aggregation jobs between creation and commitment, on SQL: leasing a job to a
//! driver, renewing the lease, pinning each step's request, giving the job back for a retry,
//! moving it on a step (multi-round VDAFs), and abandoning it; each one transaction.

use super::reports::{drop_payloads, execute_for_job, fail_reports, forget_pending, settle_job};
use super::*;
use duet_common::messages::*;
use duet_common::Encode;
use duet_server::sql::{id_of, SqlStore};
use sqlx::Row;

/// Leases up to `limit` runnable jobs for `lease_seconds`. A job whose lease lapsed (its driver
/// died) is runnable again.
pub(super) async fn acquire_jobs(s: &SqlStore, limit: usize, lease_seconds: i64) -> Result<Vec<LeasedJob>, StoreError> {
    let now = s.now_seconds();
    // Replicas lease disjoint jobs: rows another replica is leasing right now are skipped. The
    // jobs of a deleted task wait, untouched, for the garbage collector (or for the task to be
    // provisioned again).
    let mut tx = s.begin_claiming().await?;
    let sql = format!(
        "SELECT task_id, job_id, batch_id, step, attempts, helper_job_url FROM leader_aggregation_jobs j
         WHERE state = 'active' AND next_attempt_seconds <= $1 AND lease_expiry_seconds <= $2
           AND EXISTS (SELECT 1 FROM tasks t WHERE t.task_id = j.task_id)
         ORDER BY created_at_seconds, job_id LIMIT $3{}",
        s.skip_locked()
    );
    let rows =
        sqlx::query(&sql).bind(now).bind(now).bind(limit as i64).fetch_all(&mut *tx).await.map_err(StoreError::from)?;
    let mut jobs = Vec::with_capacity(rows.len());
    for r in rows {
        let job = LeasedJob {
            task_id: id_of(r.get(0), "task ID")?,
            job_id: id_of(r.get(1), "job ID")?,
            batch_id: r.get::<Option<Vec<u8>>, _>(2).map(|b| id_of(b, "batch ID")).transpose()?,
            step: r.get::<i64, _>(3) as u16,
            attempts: r.get::<i64, _>(4) as u32 + 1,
            helper_job: r.get(5),
            lease_token: rand::random(),
        };
        sqlx::query(
            "UPDATE leader_aggregation_jobs SET lease_expiry_seconds = $1, attempts = attempts + 1, lease_token = $2
             WHERE task_id = $3 AND job_id = $4",
        )
        .bind(now + lease_seconds)
        .bind(job.lease_token.as_slice())
        .bind(job.task_id.as_bytes().as_slice())
        .bind(job.job_id.as_bytes().as_slice())
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        jobs.push(job);
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(jobs)
}

/// Moves a job on to its next step; see [`Storage::advance_aggregation_job`].
pub(super) async fn advance_job(
    s: &SqlStore,
    task: &Task,
    job: &LeasedJob,
    helper_job: &str,
    rejected: &[(ReportId, ReportError)],
    pending: &[VerifyingReport],
) -> Result<bool, StoreError> {
    let mut tx = s.begin().await?;
    // The helper answered the step: the job no longer waits on it (`last_error` is what the
    // metric of jobs waiting on the helper counts).
    let moved = sqlx::query(
        "UPDATE leader_aggregation_jobs SET step = step + 1, request_digest = NULL, helper_job_url = $1, last_error = NULL
         WHERE task_id = $2 AND job_id = $3 AND lease_token = $4 AND state = 'active' AND step = $5",
    )
    .bind(helper_job)
    .bind(task.id.as_bytes().as_slice())
    .bind(job.job_id.as_bytes().as_slice())
    .bind(job.lease_token.as_slice())
    .bind(i64::from(job.step))
    .execute(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    if moved.rows_affected() == 0 {
        return Ok(false);
    }
    if job.step == 0 {
        // The first request is never sent again: the reports' shares are no longer needed.
        drop_payloads(&mut tx, task, job).await?;
    }
    let mut failed: std::collections::BTreeMap<u8, Vec<ReportId>> = std::collections::BTreeMap::new();
    for (id, error) in rejected {
        failed.entry(*error as u8).or_default().push(*id);
    }
    fail_reports(s, &mut tx, task, job, &failed).await?;
    forget_pending(&mut tx, task, job).await?;
    let encoded = pending
        .iter()
        .map(|p| {
            let (finished, state) = match &p.state {
                LeaderVerifyState::Continued(v) => (0i64, v.get_encoded()),
                LeaderVerifyState::FinishedWithOutbound(o) => (1i64, o.get_encoded()),
            };
            Ok((p, finished, state.map_err(|e| StoreError::Internal(e.to_string()))?))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let mut ord = 0i64;
    for chunk in s.statement_chunks(&encoded, 8) {
        let sql = format!(
            "INSERT INTO leader_report_verifications
               (task_id, job_id, ord, report_id, report_time, finished, state, outbound) VALUES {}",
            s.value_rows(chunk.len(), 8, "")
        );
        let mut q = sqlx::query(&sql);
        for (p, finished, state) in chunk {
            q = q
                .bind(task.id.as_bytes().as_slice())
                .bind(job.job_id.as_bytes().as_slice())
                .bind(ord)
                .bind(p.report_id.as_bytes().as_slice())
                .bind(p.time.units() as i64)
                .bind(*finished)
                .bind(state.as_slice())
                .bind(p.outbound.as_slice());
            ord += 1;
        }
        q.execute(&mut *tx).await.map_err(StoreError::from)?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    s.after_commit().await;
    Ok(true)
}

/// The reports of a job resting between two steps, in the order of its requests.
pub(super) async fn pending_reports(
    s: &SqlStore,
    task: &Task,
    job: &LeasedJob,
) -> Result<Vec<VerifyingReport>, StoreError> {
    let rows = sqlx::query(
        "SELECT report_id, report_time, finished, state, outbound FROM leader_report_verifications
         WHERE task_id = $1 AND job_id = $2 ORDER BY ord",
    )
    .bind(task.id.as_bytes().as_slice())
    .bind(job.job_id.as_bytes().as_slice())
    .fetch_all(s.pool())
    .await
    .map_err(StoreError::from)?;
    let corrupt = |_| StoreError::Corrupt("stored verification state is corrupt".into());
    rows.into_iter()
        .map(|r| {
            let bytes: Vec<u8> = r.get(3);
            let state = match r.get::<i64, _>(2) {
                0 => LeaderVerifyState::Continued(task.vdaf.decode_verify_state(0, &bytes).map_err(corrupt)?),
                _ => LeaderVerifyState::FinishedWithOutbound(task.vdaf.decode_output_share(&bytes).map_err(corrupt)?),
            };
            Ok(VerifyingReport {
                report_id: id_of(r.get(0), "report ID")?,
                time: duet_common::time::Time::from_units(r.get::<i64, _>(1) as u64),
                state,
                outbound: r.get(4),
            })
        })
        .collect()
}

/// Extends the lease of a job its holder still has; `note` (why it waits) goes to `last_error`.
pub(super) async fn renew_lease(
    s: &SqlStore,
    job: &LeasedJob,
    lease_seconds: i64,
    note: Option<&str>,
) -> Result<bool, StoreError> {
    let mut tx = s.begin_claiming().await?;
    let done = sqlx::query(
        "UPDATE leader_aggregation_jobs SET lease_expiry_seconds = $1, last_error = COALESCE($2, last_error)
         WHERE task_id = $3 AND job_id = $4 AND lease_token = $5 AND state = 'active'",
    )
    .bind(s.now_seconds() + lease_seconds)
    .bind(note)
    .bind(job.task_id.as_bytes().as_slice())
    .bind(job.job_id.as_bytes().as_slice())
    .bind(job.lease_token.as_slice())
    .execute(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(done.rows_affected() > 0)
}

/// Records the first request's digest; whether `digest` is it.
pub(super) async fn pin_request(s: &SqlStore, job: &LeasedJob, digest: &[u8; 32]) -> Result<bool, StoreError> {
    let mut tx = s.begin_claiming().await?;
    sqlx::query(
        "UPDATE leader_aggregation_jobs SET request_digest = $1
         WHERE task_id = $2 AND job_id = $3 AND request_digest IS NULL",
    )
    .bind(digest.as_slice())
    .bind(job.task_id.as_bytes().as_slice())
    .bind(job.job_id.as_bytes().as_slice())
    .execute(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    let pinned = sqlx::query("SELECT request_digest FROM leader_aggregation_jobs WHERE task_id = $1 AND job_id = $2")
        .bind(job.task_id.as_bytes().as_slice())
        .bind(job.job_id.as_bytes().as_slice())
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from)?
        .and_then(|r| r.get::<Option<Vec<u8>>, _>(0));
    tx.commit().await.map_err(StoreError::from)?;
    Ok(pinned.as_deref() == Some(digest.as_slice()))
}

/// Gives the job back for a later attempt, `delay_seconds` from now, if the lease is still
/// this driver's.
pub(super) async fn retry_job(
    s: &SqlStore,
    task: &Task,
    job: &LeasedJob,
    delay_seconds: i64,
    error: &str,
) -> Result<(), StoreError> {
    let mut tx = s.begin_claiming().await?;
    sqlx::query(
        "UPDATE leader_aggregation_jobs SET lease_expiry_seconds = 0, next_attempt_seconds = $1, last_error = $2
         WHERE task_id = $3 AND job_id = $4 AND lease_token = $5 AND state = 'active'",
    )
    .bind(s.now_seconds() + delay_seconds)
    .bind(error)
    .bind(task.id.as_bytes().as_slice())
    .bind(job.job_id.as_bytes().as_slice())
    .bind(job.lease_token.as_slice())
    .execute(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}

/// Gives up on a job. Its reports fail (without a report error: the job, not the report, broke),
/// or go back to the pool, with new jobs of the task held back for a while.
pub(super) async fn abandon_job(
    s: &SqlStore,
    task: &Task,
    job: &LeasedJob,
    error: &str,
    reports: AbandonedReports,
) -> Result<(), StoreError> {
    let tid = task.id.as_bytes().as_slice();
    let mut tx = s.begin().await?;
    if !settle_job(&mut tx, task, job, LeaderJobState::Abandoned, Some(error)).await? {
        return Ok(());
    }
    forget_pending(&mut tx, task, job).await?;
    match reports {
        AbandonedReports::Fail => {
            drop_payloads(&mut tx, task, job).await?;
            execute_for_job(
                &mut tx,
                "UPDATE client_reports SET state = 'failed' WHERE task_id = $1 AND job_id = $2 AND state = 'in_job'",
                task,
                job,
            )
            .await?;
        }
        AbandonedReports::BackToPool { max_hold_seconds } => {
            execute_for_job(
                &mut tx,
                "UPDATE client_reports SET state = 'unaggregated', job_id = NULL, batch_id = NULL
                 WHERE task_id = $1 AND job_id = $2 AND state = 'in_job'",
                task,
                job,
            )
            .await?;
            let refusals = sqlx::query("SELECT refusals FROM leader_job_creation_holds WHERE task_id = $1")
                .bind(tid)
                .fetch_optional(&mut *tx)
                .await
                .map_err(StoreError::from)?
                .map_or(0, |r| r.get::<i64, _>(0))
                + 1;
            let hold = (1i64 << refusals.clamp(1, 20)).min(max_hold_seconds.max(1));
            sqlx::query(
                "INSERT INTO leader_job_creation_holds (task_id, refusals, hold_until_seconds, last_error)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (task_id) DO UPDATE SET refusals = excluded.refusals,
                   hold_until_seconds = excluded.hold_until_seconds, last_error = excluded.last_error",
            )
            .bind(tid)
            .bind(refusals)
            .bind(s.now_seconds() + hold)
            .bind(error)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        }
    }
    tx.commit().await.map_err(StoreError::from)?;
    s.after_commit().await;
    Ok(())
}
