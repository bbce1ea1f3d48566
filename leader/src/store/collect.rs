//! The leader's collection jobs on SQL: created and found by their request, leased to the
//! driver, their batch committed (picked, complete, large enough, marked collected) in one
//! transaction, and ended with the result, or failed, which gives an unreleased batch back.

use super::*;
use duet_common::dp::{accounting::BudgetUse, significant};
use duet_common::messages::*;
use duet_common::problem::{DapError, DapProblemType};
use duet_common::time::Interval;
use duet_common::{Decode, Encode};
use duet_server::sql::{id_of, internal, SqlStore, Tx};
use sqlx::Row;

const COLLECTION_COLUMNS: &str = "collection_job_id, request, batch_id, state, batch_committed, report_count, checksum,
    result_interval, leader_encrypted_agg_share, response, error_type, error_detail, attempts";

fn collection_row(r: &sqlx::any::AnyRow) -> Result<CollectionJobRow, StoreError> {
    let corrupt = |_| StoreError::Corrupt("stored collection job is corrupt".into());
    Ok(CollectionJobRow {
        id: id_of(r.get(0), "collection job ID")?,
        request: CollectionJobReq::get_decoded(&r.get::<Vec<u8>, _>(1)).map_err(corrupt)?,
        batch_id: r.get::<Option<Vec<u8>>, _>(2).map(|b| id_of(b, "batch ID")).transpose()?,
        state: CollectionJobState::from_db(&r.get::<String, _>(3))
            .ok_or(StoreError::Corrupt("stored collection job has an unknown state".into()))?,
        batch_committed: r.get::<i64, _>(4) != 0,
        report_count: r.get::<Option<i64>, _>(5).map(|c| c as u64),
        checksum: r
            .get::<Option<Vec<u8>>, _>(6)
            .map(|c| c.try_into().map(BatchChecksum).map_err(|_| StoreError::Corrupt("stored checksum".into())))
            .transpose()?,
        result_interval: r
            .get::<Option<Vec<u8>>, _>(7)
            .map(|b| Interval::get_decoded(&b))
            .transpose()
            .map_err(corrupt)?,
        leader_encrypted_agg_share: r
            .get::<Option<Vec<u8>>, _>(8)
            .map(|b| HpkeCiphertext::get_decoded(&b))
            .transpose()
            .map_err(corrupt)?,
        response: r.get(9),
        error: r
            .get::<Option<String>, _>(10)
            .map(|t| JobFailure::from_db(&t, r.get::<Option<String>, _>(11).unwrap_or_default())),
        attempts: r.get::<i64, _>(12) as u32,
    })
}

/// The live (not deleted) collection job created by a byte-identical request, if any.
pub(super) async fn collection_job_by_digest(
    s: &SqlStore,
    task: &Task,
    digest: &[u8],
) -> Result<Option<CollectionJobRow>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLLECTION_COLUMNS} FROM collection_jobs WHERE task_id = $1 AND request_digest = $2 AND state != 'deleted'
         ORDER BY created_at_seconds DESC LIMIT 1"
    ))
    .bind(task.id.as_bytes().as_slice())
    .bind(digest)
    .fetch_optional(s.pool())
    .await
    .map_err(StoreError::from)?;
    row.as_ref().map(collection_row).transpose()
}

pub(super) async fn collection_job(
    s: &SqlStore,
    task: &Task,
    id: &CollectionJobId,
) -> Result<Option<CollectionJobRow>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLLECTION_COLUMNS} FROM collection_jobs WHERE task_id = $1 AND collection_job_id = $2"
    ))
    .bind(task.id.as_bytes().as_slice())
    .bind(id.as_bytes().as_slice())
    .fetch_optional(s.pool())
    .await
    .map_err(StoreError::from)?;
    row.as_ref().map(collection_row).transpose()
}

/// Creates a collection job, unless an identical request created a live one first (then that
/// one is returned).
pub(super) async fn insert_collection_job(
    s: &SqlStore,
    task: &Task,
    request: &[u8],
    digest: &[u8],
) -> Result<CollectionJobId, StoreError> {
    let mut tx = s.begin().await?;
    let existing = sqlx::query(
        "SELECT collection_job_id FROM collection_jobs WHERE task_id = $1 AND request_digest = $2 AND state != 'deleted'",
    )
    .bind(task.id.as_bytes().as_slice())
    .bind(digest)
    .fetch_optional(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    if let Some(r) = existing {
        return id_of(r.get(0), "collection job ID");
    }
    // A noisy collection spends its cost (epsilon or rho) from the task's budget, reserved here,
    // in the same transaction as the check, so concurrent requests cannot overspend it together.
    let dp = task.parameters.dp.as_ref();
    let cost = dp.map_or(0.0, |dp| dp.cost());
    if let Some(dp) = dp {
        let used = BudgetUse { spent: spent_budget(&mut tx, task).await?, total: dp.budget_f64() };
        if !used.allows(cost) {
            let unit = dp.unit().name();
            let (spent, total) = (significant(used.spent), used.total.map_or(String::new(), significant));
            return Err(StoreError::BudgetExhausted {
                task_id: task.id,
                detail: format!("this collection needs {unit} {cost}, but the task has spent {spent} of its {total}"),
            });
        }
    }
    let id = CollectionJobId::random();
    sqlx::query(
        "INSERT INTO collection_jobs (task_id, collection_job_id, request, request_digest, state, created_at_seconds, privacy_cost)
         VALUES ($1, $2, $3, $4, 'pending', $5, $6)",
    )
    .bind(task.id.as_bytes().as_slice())
    .bind(id.as_bytes().as_slice())
    .bind(request)
    .bind(digest)
    .bind(s.now_seconds())
    .bind(cost)
    .execute(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(id)
}

/// The budget a task has spent (epsilon or rho): every collection that released a result or may still do so
/// (a job deleted or failed before its batch was committed gives its reservation back), and
/// what the collections the garbage collector deleted had spent.
async fn spent_budget(tx: &mut Tx<'_>, task: &Task) -> Result<f64, StoreError> {
    let row = sqlx::query(
        "SELECT COALESCE((SELECT SUM(privacy_cost) FROM collection_jobs
                          WHERE task_id = $1 AND (batch_committed = 1 OR state = 'pending')), 0.0)
              + COALESCE((SELECT privacy_cost FROM leader_spent_budgets WHERE task_id = $1), 0.0)",
    )
    .bind(task.id.as_bytes().as_slice())
    .fetch_one(&mut **tx)
    .await?;
    Ok(row.try_get::<f64, _>(0)?)
}

pub(super) async fn privacy_budget_spent(s: &SqlStore, task: &Task) -> Result<f64, StoreError> {
    let mut tx = s.begin_read().await?;
    let spent = spent_budget(&mut tx, task).await?;
    tx.commit().await?;
    Ok(spent)
}

/// Marks a job deleted; `false` if there was no live job. Collected-batch records stay.
pub(super) async fn delete_collection_job(s: &SqlStore, task: &Task, id: &CollectionJobId) -> Result<bool, StoreError> {
    let tid = task.id.as_bytes().as_slice();
    let mut tx = s.begin().await?;
    // A leader-selected batch chosen by a job that never committed it goes back to the pool,
    // so that its reports are not stranded.
    sqlx::query(
        "UPDATE leader_batches SET state = 'open' WHERE task_id = $1 AND batch_id = (SELECT batch_id FROM collection_jobs
           WHERE task_id = $2 AND collection_job_id = $3 AND state = 'pending' AND batch_committed = 0)",
    )
    .bind(tid)
    .bind(tid)
    .bind(id.as_bytes().as_slice())
    .execute(&mut *tx)
    .await?;
    let done = sqlx::query(
        "UPDATE collection_jobs SET state = 'deleted', response = NULL, leader_encrypted_agg_share = NULL
         WHERE task_id = $1 AND collection_job_id = $2 AND state != 'deleted'",
    )
    .bind(tid)
    .bind(id.as_bytes().as_slice())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected() > 0)
}

/// Leases up to `limit` pending collection jobs.
pub(super) async fn acquire_collection_jobs(
    s: &SqlStore,
    limit: usize,
    lease_seconds: i64,
) -> Result<Vec<LeasedCollectionJob>, StoreError> {
    let now = s.now_seconds();
    let mut tx = s.begin_claiming().await?;
    // As aggregation jobs: a deleted task's wait for the garbage collector.
    let sql = format!(
        "SELECT task_id, collection_job_id, attempts FROM collection_jobs c
         WHERE state = 'pending' AND next_attempt_seconds <= $1 AND lease_expiry_seconds <= $2
           AND EXISTS (SELECT 1 FROM tasks t WHERE t.task_id = c.task_id)
         ORDER BY created_at_seconds LIMIT $3{}",
        s.skip_locked()
    );
    let rows =
        sqlx::query(&sql).bind(now).bind(now).bind(limit as i64).fetch_all(&mut *tx).await.map_err(StoreError::from)?;
    let mut jobs = Vec::new();
    for r in rows {
        let (t, j): (Vec<u8>, Vec<u8>) = (r.get(0), r.get(1));
        let lease_token: [u8; 16] = rand::random();
        sqlx::query(
            "UPDATE collection_jobs SET lease_expiry_seconds = $1, attempts = attempts + 1, lease_token = $2
             WHERE task_id = $3 AND collection_job_id = $4",
        )
        .bind(now + lease_seconds)
        .bind(lease_token.as_slice())
        .bind(&t)
        .bind(&j)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        jobs.push(LeasedCollectionJob {
            task_id: id_of(t, "task ID")?,
            id: id_of(j, "collection job ID")?,
            attempts: r.get::<i64, _>(2) as u32 + 1,
            lease_token,
        });
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(jobs)
}

/// Extends the lease of a collection job its holder still has.
pub(super) async fn renew_collection_lease(
    s: &SqlStore,
    job: &LeasedCollectionJob,
    lease_seconds: i64,
) -> Result<bool, StoreError> {
    let mut tx = s.begin_claiming().await?;
    let done = sqlx::query(
        "UPDATE collection_jobs SET lease_expiry_seconds = $1
         WHERE task_id = $2 AND collection_job_id = $3 AND lease_token = $4 AND state = 'pending'",
    )
    .bind(s.now_seconds() + lease_seconds)
    .bind(job.task_id.as_bytes().as_slice())
    .bind(job.id.as_bytes().as_slice())
    .bind(job.lease_token.as_slice())
    .execute(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(done.rows_affected() > 0)
}

/// The collection step that commits a batch, in one transaction: pick the batch (leader-selected),
/// wait for its reports to be aggregated and for `min_batch_size`, refuse overlaps, then mark it
/// collected so that no later report joins it. The leader's encrypted aggregate share
/// ([`crate::collect::seal_leader_share`]) is stored with the batch's values.
pub(super) async fn commit_collection_batch(
    s: &SqlStore,
    task: &Task,
    job: &CollectionJobRow,
) -> Result<BatchReadiness, StoreError> {
    let tid = task.id.as_bytes().as_slice();
    let min = task.configuration.min_batch_size;
    // A leader-selected job first claims its batch, under the task's creator lock, so that the
    // job creator never adds reports to a batch a collection has taken.
    let batch_id = match (&job.request.query, job.batch_id) {
        (Query::LeaderSelected(_), None) => match claim_batch(s, task, job).await? {
            Some(id) => Some(id),
            None => return Ok(BatchReadiness::Wait("no batch is ready".into())),
        },
        (_, id) => id,
    };
    let mut tx = s.begin().await?;
    // Another driver (this job's lease lapsed) may have got further meanwhile.
    let current = sqlx::query(
        "SELECT state, batch_committed, created_at_seconds FROM collection_jobs
         WHERE task_id = $1 AND collection_job_id = $2",
    )
    .bind(tid)
    .bind(job.id.as_bytes().as_slice())
    .fetch_optional(&mut *tx)
    .await?;
    let created = match current {
        Some(r) if r.get::<String, _>(0) == CollectionJobState::Pending.db() && r.get::<i64, _>(1) == 0 => {
            r.get::<i64, _>(2)
        }
        _ => return Ok(BatchReadiness::Wait("the job moved on meanwhile".into())),
    };
    let batch = match (&job.request.query, batch_id) {
        (Query::TimeInterval(q), _) => {
            let interval = q.batch_interval;
            let end = interval.end().ok_or_else(|| internal("interval overflow"))?;
            // Waiting for a job, or in a job still active (a report in a finished job is
            // aggregated). The second count goes through the active jobs, not the batch's reports:
            // as a join, SQLite walked every report of the task that was ever in a job. Only the
            // reports uploaded before the collection began are waited for: reports stamped in the
            // interval and uploaded since (a trickle of them, junk or not) would otherwise keep it
            // waiting for ever. Those not aggregated when the batch is committed fail with
            // `batch_collected`.
            let pending = sqlx::query(
                "SELECT (SELECT COUNT(*) FROM client_reports WHERE task_id = $1 AND state = 'unaggregated'
                         AND report_time >= $2 AND report_time < $3 AND created_at_seconds <= $4)
                      + (SELECT COUNT(*) FROM client_reports r WHERE r.task_id = $1 AND r.state = 'in_job'
                           AND r.report_time >= $2 AND r.report_time < $3 AND r.created_at_seconds <= $4
                           AND r.job_id IN
                             (SELECT j.job_id FROM leader_aggregation_jobs j WHERE j.task_id = $1 AND j.state = 'active'))",
            )
            .bind(tid)
            .bind(interval.start.units() as i64)
            .bind(end.units() as i64)
            .bind(created)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::from)?
            .get::<i64, _>(0);
            if pending > 0 {
                return Ok(BatchReadiness::Wait(format!("{pending} reports of the batch are still being aggregated")));
            }
            Batch::TimeInterval(interval)
        }
        (Query::LeaderSelected(_), Some(batch_id)) => Batch::LeaderSelected(batch_id),
        (Query::LeaderSelected(_), None) => return Err(internal("leader-selected job without a batch")),
    };
    if let Batch::LeaderSelected(batch_id) = batch {
        let in_flight = sqlx::query(&format!("SELECT {}", in_flight("$1", "$2")))
            .bind(tid)
            .bind(batch_id.as_bytes().as_slice())
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::from)?
            .get::<i64, _>(0);
        if in_flight > 0 {
            tx.commit().await.map_err(StoreError::from)?;
            return Ok(BatchReadiness::Wait(format!("{in_flight} reports of the batch are still being aggregated")));
        }
    }
    if SqlStore::batch_overlaps_collected_tx(&mut tx, task, &batch).await? {
        return Ok(BatchReadiness::Refuse(DapError::dap(
            DapProblemType::BatchOverlap,
            Some(task.id),
            "the batch overlaps one already collected",
        )));
    }
    let values = SqlStore::batch_values(&mut tx, task, &batch).await?;
    let count = values.as_ref().map_or(0, |v| v.report_count);
    let Some(values) = values.filter(|_| count >= min) else {
        tx.commit().await.map_err(StoreError::from)?;
        return Ok(BatchReadiness::Wait(format!("the batch holds {count} reports, fewer than min_batch_size {min}")));
    };
    let sealed = crate::collect::seal_leader_share(task, &job.request, &values)?;
    SqlStore::mark_collected(&mut tx, task, &batch, s.now_seconds()).await?;
    // From here on the job's tries are requests to the helper: they count from the start.
    sqlx::query(
        "UPDATE collection_jobs SET batch_committed = 1, report_count = $1, checksum = $2, result_interval = $3,
           leader_encrypted_agg_share = $4, attempts = 0, last_error = NULL WHERE task_id = $5 AND collection_job_id = $6",
    )
    .bind(values.report_count as i64)
    .bind(values.checksum.0.as_slice())
    .bind(values.interval().get_encoded().map_err(internal)?)
    .bind(sealed.get_encoded().map_err(internal)?)
    .bind(tid)
    .bind(job.id.as_bytes().as_slice())
    .execute(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(BatchReadiness::Committed { values, batch })
}

/// A subquery counting the reports of a batch (given by SQL expressions for its task and batch
/// IDs) in jobs still active.
fn in_flight(task_id: &str, batch_id: &str) -> String {
    format!(
        "(SELECT COUNT(*) FROM client_reports r WHERE r.task_id = {task_id} AND r.state = 'in_job' AND r.job_id IN
            (SELECT j.job_id FROM leader_aggregation_jobs j
             WHERE j.task_id = {task_id} AND j.batch_id = {batch_id} AND j.state = 'active'))"
    )
}

/// Picks the job's batch and closes it to the job creator, in a claiming transaction under the
/// task's lock. `None` if no batch is ready.
async fn claim_batch(s: &SqlStore, task: &Task, job: &CollectionJobRow) -> Result<Option<BatchId>, StoreError> {
    let tid = task.id.as_bytes().as_slice();
    let mut tx = s.begin_claiming().await?;
    s.lock_task(&mut tx, task).await?;
    let Some(batch_id) = pick_batch(&mut tx, task).await? else {
        return Ok(None);
    };
    sqlx::query("UPDATE leader_batches SET state = 'closed' WHERE task_id = $1 AND batch_id = $2")
        .bind(tid)
        .bind(batch_id.as_bytes().as_slice())
        .execute(&mut *tx)
        .await?;
    let assigned = sqlx::query(
        "UPDATE collection_jobs SET batch_id = $1 WHERE task_id = $2 AND collection_job_id = $3 AND batch_id IS NULL",
    )
    .bind(batch_id.as_bytes().as_slice())
    .bind(tid)
    .bind(job.id.as_bytes().as_slice())
    .execute(&mut *tx)
    .await?;
    if assigned.rows_affected() == 0 {
        // Another driver of this job claimed a batch first: ours stays open (rolled back).
        return Ok(None);
    }
    tx.commit().await?;
    Ok(Some(batch_id))
}

/// The oldest open batch that is collectible: none of its reports in flight, at least
/// `min_batch_size` aggregated, and either full or with no more reports waiting to fill it.
async fn pick_batch(tx: &mut Tx<'_>, task: &Task) -> Result<Option<BatchId>, StoreError> {
    let tid = task.id.as_bytes().as_slice();
    let target = task.target_batch_size() as i64;
    let waiting = sqlx::query("SELECT COUNT(*) FROM client_reports WHERE task_id = $1 AND state = 'unaggregated'")
        .bind(tid)
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::from)?
        .get::<i64, _>(0);
    // Reports in the batch's jobs (`in_job`, or `aggregated` as settled before schema 8), and
    // those of them in jobs still active.
    let rows = sqlx::query(&format!(
        "SELECT b.batch_id, {},
           (SELECT COUNT(*) FROM client_reports r WHERE r.task_id = b.task_id AND r.batch_id = b.batch_id
              AND r.state IN ('in_job', 'aggregated'))
         FROM leader_batches b WHERE b.task_id = $1 AND b.state = 'open' ORDER BY b.created_at_seconds, b.batch_id",
        in_flight("b.task_id", "b.batch_id")
    ))
    .bind(tid)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)?;
    for r in rows {
        let (in_flight, assigned): (i64, i64) = (r.get(1), r.get(2));
        let aggregated = assigned - in_flight;
        if in_flight == 0
            && aggregated >= task.configuration.min_batch_size as i64
            && (aggregated >= target || waiting == 0)
        {
            return Ok(Some(id_of(r.get(0), "batch ID")?));
        }
    }
    Ok(None)
}

pub(super) async fn defer_collection_job(
    s: &SqlStore,
    task: &Task,
    id: &CollectionJobId,
    delay_seconds: i64,
    error: Option<&str>,
) -> Result<(), StoreError> {
    let mut tx = s.begin_claiming().await?;
    sqlx::query(
        "UPDATE collection_jobs SET lease_expiry_seconds = 0, next_attempt_seconds = $1,
           last_error = COALESCE($2, last_error) WHERE task_id = $3 AND collection_job_id = $4",
    )
    .bind(s.now_seconds() + delay_seconds)
    .bind(error)
    .bind(task.id.as_bytes().as_slice())
    .bind(id.as_bytes().as_slice())
    .execute(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}

/// Ends a job with its `CollectionJobResp`, or with the error that failed it. A job fails before
/// the collector has anything (the result is stored only whole), so a batch it committed is
/// given back: no longer collected, a leader-selected batch open again, the privacy budget the
/// job reserved returned (DAP-18 counts a batch collected once the `CollectionJobResp` exists).
pub(super) async fn end_collection_job(
    s: &SqlStore,
    task: &Task,
    id: &CollectionJobId,
    outcome: Result<Vec<u8>, JobFailure>,
) -> Result<(), StoreError> {
    let tid = task.id.as_bytes().as_slice();
    let mut tx = s.begin().await?;
    let update = match outcome {
        Ok(resp) => sqlx::query(
            "UPDATE collection_jobs SET state = 'finished', response = $1, lease_expiry_seconds = 0
             WHERE task_id = $2 AND collection_job_id = $3 AND state = 'pending'",
        )
        .bind(resp),
        Err(failure) => {
            let (kind, detail) = failure.to_db();
            let row = sqlx::query(&format!(
                "SELECT {COLLECTION_COLUMNS} FROM collection_jobs WHERE task_id = $1 AND collection_job_id = $2
                   AND state = 'pending'"
            ))
            .bind(tid)
            .bind(id.as_bytes().as_slice())
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?;
            if let Some(job) = row.as_ref().map(collection_row).transpose()?.filter(|j| j.batch_committed) {
                release_batch(&mut tx, task, &job).await?;
            }
            sqlx::query(
                "UPDATE collection_jobs SET state = 'failed', error_type = $1, error_detail = $2, lease_expiry_seconds = 0,
                   batch_committed = 0, leader_encrypted_agg_share = NULL
                 WHERE task_id = $3 AND collection_job_id = $4 AND state = 'pending'",
            )
            .bind(kind)
            .bind(detail.to_string())
        }
    };
    update.bind(tid).bind(id.as_bytes().as_slice()).execute(&mut *tx).await.map_err(StoreError::from)?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}

/// Gives back a committed batch of which the collector received nothing: no longer collected,
/// and a leader-selected batch open again.
async fn release_batch(tx: &mut Tx<'_>, task: &Task, job: &CollectionJobRow) -> Result<(), StoreError> {
    match (&job.request.query, job.batch_id) {
        (Query::TimeInterval(q), _) => {
            SqlStore::unmark_collected(tx, task, &Batch::TimeInterval(q.batch_interval)).await
        }
        (Query::LeaderSelected(_), Some(batch_id)) => {
            SqlStore::unmark_collected(tx, task, &Batch::LeaderSelected(batch_id)).await?;
            sqlx::query("UPDATE leader_batches SET state = 'open' WHERE task_id = $1 AND batch_id = $2")
                .bind(task.id.as_bytes().as_slice())
                .bind(batch_id.as_bytes().as_slice())
                .execute(&mut **tx)
                .await
                .map_err(StoreError::from)?;
            Ok(())
        }
        (Query::LeaderSelected(_), None) => Err(internal("committed leader-selected job without its batch")),
    }
}
