//! The helper's protocol steps on SQLite: aggregation job initialisation and continuation
//! (replay checks, output shares, kept verification states, stored responses) and aggregate
//! shares, each one transaction.

use super::*;
use duet_common::messages::*;
use duet_common::time::Time;
use duet_common::Encode;
use duet_server::sql::{id_of, internal, value_rows, SqlStore, Tx};
use sqlx::Row;
use std::collections::HashMap;

/// Commits output shares (replay and collected-bucket checks first), keeps the states of
/// continuing reports, and turns the outcomes into `VerifyResp`s.
async fn commit_outcomes(
    s: &SqlStore,
    tx: &mut Tx<'_>,
    task: &Task,
    step: &mut HelperStep,
) -> Result<Vec<VerifyResp>, StoreError> {
    let tid = task.id.as_bytes().as_slice();
    let outcomes = std::mem::take(&mut step.outcomes);
    let mut collected_cache: HashMap<BatchBucket, bool> = HashMap::new();
    // Replay protection for every report about to be aggregated, in multi-row inserts: the IDs
    // the insert returns are fresh, the others were aggregated before.
    let mut candidates: Vec<(&[u8], i64)> = Vec::new();
    let mut collected_flags = Vec::with_capacity(outcomes.len());
    for (report_id, outcome) in step.report_ids.iter().zip(&outcomes) {
        let collected = match outcome {
            HelperOutcome::Commit { time, .. } => {
                let bucket = BatchBucket::of(step.batch_id, *time);
                let collected = SqlStore::bucket_collected_cached(tx, task, &bucket, &mut collected_cache).await?;
                if !collected {
                    candidates.push((report_id.as_bytes().as_slice(), time.units() as i64));
                }
                collected
            }
            _ => false,
        };
        collected_flags.push(collected);
    }
    let mut fresh: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::with_capacity(candidates.len());
    // Each record keeps its report's timestamp, so that the garbage collector deletes it once
    // the report is too old to be taken again.
    for chunk in s.statement_chunks(&candidates, 2) {
        let sql = format!(
            "INSERT INTO aggregated_report_ids (report_id, report_time, task_id, job_id) VALUES {}
             ON CONFLICT DO NOTHING RETURNING report_id",
            value_rows(chunk.len(), 2, &format!("${}, ${}", 2 * chunk.len() + 1, 2 * chunk.len() + 2))
        );
        let mut q = sqlx::query(&sql);
        for (id, time) in chunk {
            q = q.bind(*id).bind(*time);
        }
        q = q.bind(tid).bind(step.job_id.as_bytes().as_slice());
        for row in q.fetch_all(&mut **tx).await? {
            fresh.insert(row.get::<Vec<u8>, _>(0));
        }
    }
    let mut resps = Vec::with_capacity(outcomes.len());
    let mut sums = BucketSums::default();
    for ((report_id, outcome), collected) in step.report_ids.iter().zip(outcomes).zip(collected_flags) {
        let verify_resp_type = match outcome {
            HelperOutcome::Reject(report_error) => VerifyRespType::Reject { report_error },
            HelperOutcome::Keep { state, outbound, time } => {
                sqlx::query(
                    "INSERT INTO helper_report_states (task_id, job_id, ord, report_id, report_time, verify_state)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(tid)
                .bind(step.job_id.as_bytes().as_slice())
                .bind(resps.len() as i64)
                .bind(report_id.as_bytes().as_slice())
                .bind(time.units() as i64)
                .bind(state.get_encoded().map_err(internal)?)
                .execute(&mut **tx)
                .await?;
                VerifyRespType::Continue { payload: outbound }
            }
            HelperOutcome::Commit { out_share, outbound, time } => {
                if collected {
                    VerifyRespType::Reject { report_error: ReportError::BatchCollected }
                } else if !fresh.contains(report_id.as_bytes().as_slice()) {
                    VerifyRespType::Reject { report_error: ReportError::ReportReplayed }
                } else {
                    sums.add(task, BatchBucket::of(step.batch_id, time), report_id, time, &out_share)?;
                    match outbound {
                        Some(payload) => VerifyRespType::Continue { payload },
                        None => VerifyRespType::Finish,
                    }
                }
            }
        };
        resps.push(VerifyResp { report_id: *report_id, verify_resp_type });
    }
    for (bucket, values) in &sums.0 {
        SqlStore::add_to_bucket(tx, task, bucket, s.bucket_shard(), values).await?;
    }
    tracing::debug!(task_id = %task.id, job_id = %step.job_id, step = %step.step, buckets = sums.0.len(),
        "committed aggregation step");
    Ok(resps)
}

/// Whether `sql` (a `SELECT 1 ... WHERE task_id = ? AND job_id = ?`) finds a row.
async fn job_row_exists(
    tx: &mut Tx<'_>,
    sql: &str,
    task: &Task,
    job_id: &AggregationJobId,
) -> Result<bool, StoreError> {
    Ok(sqlx::query(sql)
        .bind(task.id.as_bytes().as_slice())
        .bind(job_id.as_bytes().as_slice())
        .fetch_optional(&mut **tx)
        .await?
        .is_some())
}

async fn has_states(tx: &mut Tx<'_>, task: &Task, job_id: &AggregationJobId) -> Result<bool, StoreError> {
    job_row_exists(tx, "SELECT 1 FROM helper_report_states WHERE task_id = $1 AND job_id = $2 LIMIT 1", task, job_id)
        .await
}

/// The step's answer, and its encoding, stored for the identical request sent again.
fn answer(verify_resps: Vec<VerifyResp>) -> Result<(AggregationJobResp, Vec<u8>), StoreError> {
    let resp = AggregationJobResp { verify_resps };
    let body = resp.get_encoded().map_err(internal)?;
    Ok((resp, body))
}

pub(super) async fn helper_job(
    s: &SqlStore,
    task: &Task,
    job_id: &AggregationJobId,
) -> Result<Option<HelperJob>, StoreError> {
    let row = sqlx::query(
        "SELECT step, last_request_digest, last_response, batch_id, state FROM helper_aggregation_jobs
         WHERE task_id = $1 AND job_id = $2",
    )
    .bind(task.id.as_bytes().as_slice())
    .bind(job_id.as_bytes().as_slice())
    .fetch_optional(s.pool())
    .await?;
    row.map(|r| {
        Ok(HelperJob {
            step: AggregationJobStep(r.get::<i64, _>(0) as u16),
            last_request_digest: r.get(1),
            last_response: r.get(2),
            batch_id: r.get::<Option<Vec<u8>>, _>(3).map(|b| id_of(b, "batch ID")).transpose()?,
            state: HelperJobState::from_db(&r.get::<String, _>(4))
                .ok_or(StoreError::Corrupt("stored aggregation job has an unknown state".into()))?,
        })
    })
    .transpose()
}

pub(super) async fn helper_init_job(
    s: &SqlStore,
    task: &Task,
    mut step: HelperStep,
) -> Result<Option<AggregationJobResp>, StoreError> {
    let mut tx = s.begin().await?;
    // A concurrent identical request may have won the race while we verified.
    if job_row_exists(
        &mut tx,
        "SELECT 1 FROM helper_aggregation_jobs WHERE task_id = $1 AND job_id = $2",
        task,
        &step.job_id,
    )
    .await?
    {
        return Ok(None);
    }
    // The job's newest report: once it expired, no retried request can add to the job's
    // batches any more, and the garbage collector may delete the job.
    let max_report_time = step
        .outcomes
        .iter()
        .filter_map(|o| match o {
            HelperOutcome::Commit { time, .. } | HelperOutcome::Keep { time, .. } => Some(time.units() as i64),
            HelperOutcome::Reject(_) => None,
        })
        .max();
    let resps = commit_outcomes(s, &mut tx, task, &mut step).await?;
    let continuing = resps.iter().any(|r| matches!(r.verify_resp_type, VerifyRespType::Continue { .. }))
        && has_states(&mut tx, task, &step.job_id).await?;
    let (resp, body) = answer(resps)?;
    sqlx::query(
        "INSERT INTO helper_aggregation_jobs (task_id, job_id, init_digest, step, last_request_digest, last_response,
         batch_id, state, created_at_seconds, max_report_time) VALUES ($1, $2, $3, 0, $4, $5, $6, $7, $8, $9)",
    )
    .bind(task.id.as_bytes().as_slice())
    .bind(step.job_id.as_bytes().as_slice())
    .bind(step.digest.as_slice())
    .bind(step.digest.as_slice())
    .bind(&body)
    .bind(step.batch_id.map(|b| b.as_bytes().to_vec()))
    .bind(if continuing { HelperJobState::Active } else { HelperJobState::Finished }.db())
    .bind(s.now_seconds())
    .bind(max_report_time)
    .execute(&mut *tx)
    .await?;
    // Done: a poll finds the answer now, not the deferral.
    sqlx::query("DELETE FROM helper_deferred_steps WHERE task_id = $1 AND job_id = $2 AND step = 0")
        .bind(task.id.as_bytes().as_slice())
        .bind(step.job_id.as_bytes().as_slice())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    s.after_commit().await;
    Ok(Some(resp))
}

pub(super) async fn helper_kept_states(
    s: &SqlStore,
    task: &Task,
    job_id: &AggregationJobId,
) -> Result<HashMap<ReportId, KeptState>, StoreError> {
    let rows = sqlx::query(
        "SELECT report_id, report_time, verify_state FROM helper_report_states WHERE task_id = $1 AND job_id = $2",
    )
    .bind(task.id.as_bytes().as_slice())
    .bind(job_id.as_bytes().as_slice())
    .fetch_all(s.pool())
    .await?;
    rows.into_iter()
        .map(|r| Ok((id_of(r.get(0), "report ID")?, (Time::from_units(r.get::<i64, _>(1) as u64), r.get(2)))))
        .collect()
}

pub(super) async fn helper_continue_job(
    s: &SqlStore,
    task: &Task,
    from: AggregationJobStep,
    mut step: HelperStep,
) -> Result<Option<AggregationJobResp>, StoreError> {
    let mut tx = s.begin().await?;
    // The previous step's states are consumed; reports the leader left out are dropped with them.
    sqlx::query("DELETE FROM helper_report_states WHERE task_id = $1 AND job_id = $2")
        .bind(task.id.as_bytes().as_slice())
        .bind(step.job_id.as_bytes().as_slice())
        .execute(&mut *tx)
        .await?;
    let resps = commit_outcomes(s, &mut tx, task, &mut step).await?;
    let continuing = has_states(&mut tx, task, &step.job_id).await?;
    let (resp, body) = answer(resps)?;
    let updated = sqlx::query(
        "UPDATE helper_aggregation_jobs SET step = $1, last_request_digest = $2, last_response = $3, state = $4
         WHERE task_id = $5 AND job_id = $6 AND step = $7",
    )
    .bind(step.step.0 as i64)
    .bind(step.digest.as_slice())
    .bind(&body)
    .bind(if continuing { HelperJobState::Active } else { HelperJobState::Finished }.db())
    .bind(task.id.as_bytes().as_slice())
    .bind(step.job_id.as_bytes().as_slice())
    .bind(from.0 as i64)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() != 1 {
        // Another request advanced the job meanwhile; ours rolls back.
        return Ok(None);
    }
    // Done: a poll finds the answer now, not the deferral.
    sqlx::query("DELETE FROM helper_deferred_steps WHERE task_id = $1 AND job_id = $2 AND step = $3")
        .bind(task.id.as_bytes().as_slice())
        .bind(step.job_id.as_bytes().as_slice())
        .bind(i64::from(step.step.0))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    s.after_commit().await;
    Ok(Some(resp))
}

pub(super) async fn helper_delete_job(s: &SqlStore, task: &Task, job_id: &AggregationJobId) -> Result<(), StoreError> {
    let mut tx = s.begin().await?;
    for sql in [
        "DELETE FROM helper_report_states WHERE task_id = $1 AND job_id = $2",
        "UPDATE helper_aggregation_jobs SET state = 'deleted', last_response = coalesce(substr(last_response, 1, 0), last_response) WHERE task_id = $1 AND job_id = $2",
    ] {
        sqlx::query(sql)
            .bind(task.id.as_bytes().as_slice())
            .bind(job_id.as_bytes().as_slice())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn stored_share<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    e: E,
    task: &Task,
    id: &AggregateShareId,
) -> Result<Option<Vec<u8>>, StoreError> {
    let row = sqlx::query(
        "SELECT response FROM helper_aggregate_shares WHERE task_id = $1 AND share_id = $2 AND state = 'finished'",
    )
    .bind(task.id.as_bytes().as_slice())
    .bind(id.as_bytes().as_slice())
    .fetch_optional(e)
    .await?;
    Ok(row.map(|r| r.get(0)))
}

pub(super) async fn helper_aggregate_share(
    s: &SqlStore,
    task: &Task,
    id: &AggregateShareId,
) -> Result<Option<Vec<u8>>, StoreError> {
    stored_share(s.pool(), task, id).await
}

pub(super) async fn helper_release_aggregate_share(
    s: &SqlStore,
    task: &Task,
    id: &AggregateShareId,
    digest: &[u8; 32],
    batch: &Batch,
    req: &AggregateShareReq,
) -> Result<ShareRelease, StoreError> {
    let mut tx = s.begin().await?;
    // The identical request may have completed first.
    if let Some(resp) = stored_share(&mut *tx, task, id).await? {
        return Ok(ShareRelease::Released(resp));
    }
    if SqlStore::batch_overlaps_collected_tx(&mut tx, task, batch).await? {
        return Ok(ShareRelease::Overlap);
    }
    let values = SqlStore::batch_values(&mut tx, task, batch).await?;
    let response = crate::collect::build_share(task, req, values.as_ref())?;
    SqlStore::mark_collected(&mut tx, task, batch, s.now_seconds()).await?;
    // The newest report the share may hold, after which the garbage collector may delete it.
    let batch_max_time = match batch {
        Batch::TimeInterval(interval) => interval.end().map(|end| end.units() as i64 - 1),
        Batch::LeaderSelected(_) => values.as_ref().map(|v| v.max_time.units() as i64),
    };
    sqlx::query(
        "INSERT INTO helper_aggregate_shares (task_id, share_id, request_digest, response, state, created_at_seconds,
           batch_max_time)
         VALUES ($1, $2, $3, $4, 'finished', $5, $6)",
    )
    .bind(task.id.as_bytes().as_slice())
    .bind(id.as_bytes().as_slice())
    .bind(digest.as_slice())
    .bind(&response)
    .bind(s.now_seconds())
    .bind(batch_max_time)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ShareRelease::Released(response))
}

pub(super) async fn helper_delete_aggregate_share(
    s: &SqlStore,
    task: &Task,
    id: &AggregateShareId,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE helper_aggregate_shares SET state = 'deleted', response = coalesce(substr(response, 1, 0), response)
         WHERE task_id = $1 AND share_id = $2 AND state = 'finished'",
    )
    .bind(task.id.as_bytes().as_slice())
    .bind(id.as_bytes().as_slice())
    .execute(s.pool())
    .await?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn helper_defer_step(
    s: &SqlStore,
    task: &Task,
    job_id: &AggregationJobId,
    step: AggregationJobStep,
    digest: &[u8; 32],
    owner: &[u8; 16],
    lease_seconds: i64,
) -> Result<(), StoreError> {
    let mut tx = s.begin().await?;
    sqlx::query(
        "INSERT INTO helper_deferred_steps (task_id, job_id, step, request_digest, owner, lease_expiry_seconds)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (task_id, job_id, step) DO UPDATE SET
           request_digest = excluded.request_digest, owner = excluded.owner,
           lease_expiry_seconds = excluded.lease_expiry_seconds",
    )
    .bind(task.id.as_bytes().as_slice())
    .bind(job_id.as_bytes().as_slice())
    .bind(i64::from(step.0))
    .bind(digest.as_slice())
    .bind(owner.as_slice())
    .bind(s.now_seconds() + lease_seconds)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn helper_step_deferred(
    s: &SqlStore,
    task: &Task,
    job_id: &AggregationJobId,
    step: AggregationJobStep,
) -> Result<bool, StoreError> {
    let row = sqlx::query(
        "SELECT 1 FROM helper_deferred_steps WHERE task_id = $1 AND job_id = $2 AND step = $3
           AND lease_expiry_seconds > $4",
    )
    .bind(task.id.as_bytes().as_slice())
    .bind(job_id.as_bytes().as_slice())
    .bind(i64::from(step.0))
    .bind(s.now_seconds())
    .fetch_optional(s.pool())
    .await?;
    Ok(row.is_some())
}

pub(super) async fn helper_renew_deferred(
    s: &SqlStore,
    owner: &[u8; 16],
    lease_seconds: i64,
) -> Result<(), StoreError> {
    let mut tx = s.begin().await?;
    sqlx::query("UPDATE helper_deferred_steps SET lease_expiry_seconds = $1 WHERE owner = $2")
        .bind(s.now_seconds() + lease_seconds)
        .bind(owner.as_slice())
        .execute(&mut *tx)
        .await?;
    // Records of processes that died are of no use to anyone.
    sqlx::query("DELETE FROM helper_deferred_steps WHERE lease_expiry_seconds < $1")
        .bind(s.now_seconds() - lease_seconds)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn helper_drop_deferred(
    s: &SqlStore,
    task: &Task,
    job_id: &AggregationJobId,
    step: AggregationJobStep,
) -> Result<(), StoreError> {
    let mut tx = s.begin().await?;
    sqlx::query("DELETE FROM helper_deferred_steps WHERE task_id = $1 AND job_id = $2 AND step = $3")
        .bind(task.id.as_bytes().as_slice())
        .bind(job_id.as_bytes().as_slice())
        .bind(i64::from(step.0))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
