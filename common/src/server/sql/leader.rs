//! The leader's protocol steps on SQLite: report upload, job creation, job leasing and
//! commitment, and collection jobs, each one transaction.

use super::{id_of, internal, placeholder_list, Backend, SqlStore, Tx};
use crate::messages::*;
use crate::problem::{DapError, DapProblemType};
use crate::server::storage::*;
use crate::time::Interval;
use crate::{Decode, Encode};
use sqlx::Row;

/// Upload: stores the reports that passed the stateless checks, in one transaction. A report
/// whose ID is known is a replay; one for a collected time-interval bucket is refused too (the
/// spec lets the leader call it a replay).
pub(super) async fn put_reports(
    s: &SqlStore,
    task: &Task,
    reports: &[&EncodedReport<'_>],
) -> Result<Vec<Option<ReportError>>, DapError> {
    let mut tx = s.begin().await?;
    let mut out: Vec<Option<ReportError>> = Vec::with_capacity(reports.len());
    let mut collected_cache = std::collections::HashMap::new();
    let now = now_seconds();
    let mut to_insert: Vec<&EncodedReport<'_>> = Vec::with_capacity(reports.len());
    let mut seen = std::collections::HashSet::with_capacity(reports.len());
    for report in reports {
        // An ID twice in the input: the later one is a replay, as if stored one after the other.
        if !seen.insert(report.report_metadata.report_id) {
            out.push(Some(ReportError::ReportReplayed));
            continue;
        }
        if task.configuration.batch_mode == BatchMode::TimeInterval {
            let bucket = BatchBucket::TimeInterval(report.report_metadata.time);
            if SqlStore::bucket_collected_cached(&mut tx, task, &bucket, &mut collected_cache).await? {
                out.push(Some(ReportError::ReportReplayed));
                continue;
            }
        }
        out.push(None);
        to_insert.push(report);
    }
    // Multi-row inserts; the rows a known report ID kept out are replays. A stored report's
    // payload goes into its own table, under the row's ID.
    // Report ID -> row ID of each report stored.
    let mut inserted: std::collections::HashMap<Vec<u8>, i64> =
        std::collections::HashMap::with_capacity(to_insert.len());
    let bytes_per_row = to_insert.iter().map(|r| r.stored_len()).sum::<usize>() / to_insert.len().max(1);
    // SQLite: this transaction is the database's only writer (BEGIN IMMEDIATE), so the rows get
    // IDs counted on from the largest, and the statement returns nothing. Streaming a row ID back
    // for each report went through sqlx's channel of 50 rows, where SQLite's thread, the upload
    // bottleneck, stopped each time the channel was full and waited for the task to drain it.
    // In three alternating runs of 200,000 uploads, Count went from 72,583–79,459 to
    // 94,167–103,716 reports/s, histograms from 35,024–37,095 to 43,194–45,065.
    let mut next_row: Option<i64> = match s.backend() {
        Backend::Sqlite => Some(
            sqlx::query("SELECT COALESCE(MAX(row_id), 0) + 1 FROM client_reports")
                .fetch_one(&mut *tx)
                .await?
                .get::<i64, _>(0),
        ),
        Backend::Postgres => None,
    };
    for chunk in s.statement_chunks_sized(&to_insert, 5, bytes_per_row) {
        // OR IGNORE rather than ON CONFLICT DO NOTHING on SQLite: with no constraint left that
        // could abort the statement, SQLite keeps no statement journal for it, which copied every
        // page the statement changed (one per report, the IDs being random) into memory first:
        // 7 MiB at the peak of 200,000 uploads, in a heap profile. The values are the leader's
        // own and meet the other constraints, so only a known report ID is ignored.
        let sql = match next_row {
            Some(_) => format!(
                "INSERT OR IGNORE INTO client_reports (row_id, task_id, report_id, report_time, created_at_seconds, state)
                 VALUES {}",
                s.value_rows(chunk.len(), 5, "'unaggregated'")
            ),
            None => format!(
                "INSERT INTO client_reports (task_id, report_id, report_time, created_at_seconds, state)
                 VALUES {} ON CONFLICT DO NOTHING RETURNING row_id, report_id",
                s.value_rows(chunk.len(), 4, "'unaggregated'")
            ),
        };
        let mut q = sqlx::query(&sql);
        for (i, report) in chunk.iter().enumerate() {
            if let Some(first) = next_row {
                q = q.bind(first + i as i64);
            }
            let meta = &report.report_metadata;
            q = q
                .bind(task.id.as_bytes().as_slice())
                .bind(meta.report_id.as_bytes().as_slice())
                .bind(meta.time.units() as i64)
                .bind(now);
        }
        if let Some(first) = next_row {
            let stored_rows = q.execute(&mut *tx).await?.rows_affected() as usize;
            let ids = first..first + chunk.len() as i64;
            // Replays in the chunk (rare): the rows that are there tell the others.
            let present: Option<std::collections::HashSet<i64>> = if stored_rows == chunk.len() {
                None
            } else {
                Some(
                    sqlx::query("SELECT row_id FROM client_reports WHERE row_id >= $1 AND row_id < $2")
                        .bind(ids.start)
                        .bind(ids.end)
                        .fetch_all(&mut *tx)
                        .await?
                        .into_iter()
                        .map(|r| r.get::<i64, _>(0))
                        .collect(),
                )
            };
            for (row_id, report) in ids.clone().zip(chunk) {
                if present.as_ref().is_none_or(|p| p.contains(&row_id)) {
                    inserted.insert(report.report_metadata.report_id.as_bytes().to_vec(), row_id);
                }
            }
            next_row = Some(ids.end);
        } else {
            for row in q.fetch_all(&mut *tx).await? {
                inserted.insert(row.get::<Vec<u8>, _>(1), row.get::<i64, _>(0));
            }
        }
        let stored: Vec<(i64, &&EncodedReport<'_>)> = chunk
            .iter()
            .filter_map(|r| inserted.get(r.report_metadata.report_id.as_bytes().as_slice()).map(|id| (*id, r)))
            .collect();
        for part in s.statement_chunks_sized(&stored, 5, bytes_per_row) {
            let sql = format!(
                "INSERT INTO client_report_payloads (report_row, report_metadata, public_share,
                 leader_encrypted_input_share, helper_encrypted_input_share) VALUES {}",
                s.value_rows(part.len(), 5, "")
            );
            let mut q = sqlx::query(&sql);
            for (row_id, report) in part {
                q = q
                    .bind(*row_id)
                    .bind(report.encoded_report_metadata)
                    .bind(report.public_share)
                    .bind(report.leader_encrypted_input_share)
                    .bind(report.helper_encrypted_input_share);
            }
            q.execute(&mut *tx).await?;
        }
    }
    tx.commit().await?;
    s.after_commit().await;
    let mut stored = to_insert.iter();
    for slot in out.iter_mut().filter(|e| e.is_none()) {
        let report = stored.next().ok_or_else(|| DapError::Internal("upload bookkeeping".into()))?;
        if !inserted.contains_key(report.report_metadata.report_id.as_bytes().as_slice()) {
            *slot = Some(ReportError::ReportReplayed);
        }
    }
    Ok(out)
}

/// Job creation for one task, in one transaction: unaggregated reports go into new jobs (and,
/// for leader-selected tasks, into batches filled to `target_batch_size`). Returns the number of
/// jobs created.
pub(super) async fn create_jobs(s: &SqlStore, task: &Task, sizes: &JobSizes) -> Result<usize, DapError> {
    s.refresh_statistics("client_reports").await;
    let now = now_seconds();
    let tid = task.id.as_bytes().as_slice();
    // One creator per task at a time: replicas would otherwise fight over the same reports.
    let mut tx = s.begin_claiming().await?;
    s.lock_task(&mut tx, task).await?;
    let limit = (sizes.max.max(1) * sizes.max_jobs_per_pass) as i64;
    let pending: Vec<PendingReport> = sqlx::query(
        // By time only: among reports of one time, the index yields them in storage order, so a
        // job's reports sit on few pages and reading and settling them touches few (ordering by
        // the random report ID would scatter every job over the whole table).
        "SELECT report_id, created_at_seconds FROM client_reports WHERE task_id = $1 AND state = 'unaggregated'
         ORDER BY report_time LIMIT $2",
    )
    .bind(tid)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await
    .map_err(StoreError::from)?
    .into_iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    if pending.is_empty() {
        return Ok(0);
    }
    // (batch, reports) groups to cut into jobs; `true` when the group is limited by batch room.
    let mut groups: Vec<(Option<BatchId>, Vec<PendingReport>, bool)> = Vec::new();
    match task.configuration.batch_mode {
        BatchMode::TimeInterval => groups.push((None, pending, false)),
        BatchMode::LeaderSelected => {
            let target = task.target_batch_size() as usize;
            let open = sqlx::query(
                "SELECT b.batch_id, (SELECT COUNT(*) FROM client_reports r WHERE r.task_id = b.task_id
                   AND r.batch_id = b.batch_id AND r.state IN ('in_job', 'aggregated'))
                 FROM leader_batches b WHERE b.task_id = $1 AND b.state = 'open' ORDER BY b.created_at_seconds, b.batch_id",
            )
            .bind(tid)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::from)?;
            let mut rest = pending.as_slice();
            for row in open {
                let filled = row.get::<i64, _>(1) as usize;
                let room = target.saturating_sub(filled);
                if room == 0 || rest.is_empty() {
                    continue;
                }
                let take = room.min(rest.len());
                groups.push((Some(id_of(row.get(0), "batch ID")?), rest[..take].to_vec(), take == room));
                rest = &rest[take..];
            }
            while !rest.is_empty() {
                let take = target.min(rest.len());
                let batch_id = BatchId::random();
                sqlx::query(
                    "INSERT INTO leader_batches (task_id, batch_id, state, created_at_seconds) VALUES ($1, $2, 'open', $3)",
                )
                .bind(tid)
                .bind(batch_id.as_bytes().as_slice())
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
                groups.push((Some(batch_id), rest[..take].to_vec(), take == target));
                rest = &rest[take..];
            }
        }
    }
    let mut created = 0;
    for (batch_id, reports, room_limited) in groups {
        for job in cut_jobs(&reports, sizes, now, room_limited) {
            if created >= sizes.max_jobs_per_pass {
                break;
            }
            let job_id = AggregationJobId::random();
            sqlx::query(
                "INSERT INTO leader_aggregation_jobs (task_id, job_id, batch_id, state, created_at_seconds)
                 VALUES ($1, $2, $3, 'active', $4)",
            )
            .bind(tid)
            .bind(job_id.as_bytes().as_slice())
            .bind(batch_id.map(|b| b.as_bytes().to_vec()))
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
            for ids in s.statement_chunks(&job, 1) {
                // No condition on the state: these rows were read as unaggregated in this
                // transaction, under the task's creator lock, and one would steer the planner to
                // the state index, scanning every pending report for each statement.
                let sql = format!(
                    "UPDATE client_reports SET state = 'in_job', job_id = $1, batch_id = $2
                     WHERE task_id = $3 AND report_id IN ({})",
                    placeholder_list(4, ids.len())
                );
                let mut q = sqlx::query(&sql)
                    .bind(job_id.as_bytes().as_slice())
                    .bind(batch_id.map(|b| b.as_bytes().to_vec()))
                    .bind(tid);
                for report_id in ids {
                    q = q.bind(report_id);
                }
                q.execute(&mut *tx).await.map_err(StoreError::from)?;
            }
            tracing::debug!(task_id = %task.id, job_id = %job_id, reports = job.len(), "aggregation job created");
            created += 1;
        }
    }
    tx.commit().await.map_err(StoreError::from)?;
    s.after_commit().await;
    Ok(created)
}

/// Leases up to `limit` runnable jobs for `lease_seconds`. A job whose lease lapsed (its driver
/// died) is runnable again.
pub(super) async fn acquire_jobs(s: &SqlStore, limit: usize, lease_seconds: i64) -> Result<Vec<LeasedJob>, DapError> {
    let now = now_seconds();
    // Replicas lease disjoint jobs: rows another replica is leasing right now are skipped.
    let mut tx = s.begin_claiming().await?;
    let sql = format!(
        "SELECT task_id, job_id, batch_id, step, attempts FROM leader_aggregation_jobs
         WHERE state = 'active' AND next_attempt_seconds <= $1 AND lease_expiry_seconds <= $2
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
        };
        sqlx::query(
            "UPDATE leader_aggregation_jobs SET lease_expiry_seconds = $1, attempts = attempts + 1
             WHERE task_id = $2 AND job_id = $3",
        )
        .bind(now + lease_seconds)
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

/// The reports of a job still awaiting their outcome, in a stable order (so that a retried
/// request is byte-identical).
pub(super) async fn job_reports(s: &SqlStore, job: &LeasedJob) -> Result<Vec<JobReport>, DapError> {
    // Sorted here rather than by the database: an ORDER BY report_id would make it walk the
    // task's whole primary key instead of the job's index.
    let rows = sqlx::query(
        "SELECT r.report_id, p.report_metadata, p.public_share, p.leader_encrypted_input_share,
                p.helper_encrypted_input_share
         FROM client_reports r JOIN client_report_payloads p ON p.report_row = r.row_id
         WHERE r.task_id = $1 AND r.job_id = $2 AND r.state = 'in_job'",
    )
    .bind(job.task_id.as_bytes().as_slice())
    .bind(job.job_id.as_bytes().as_slice())
    .fetch_all(s.pool())
    .await
    .map_err(StoreError::from)?;
    let corrupt = |_| DapError::Internal("stored report is corrupt".into());
    let mut rows: Vec<(Vec<u8>, sqlx::any::AnyRow)> = rows.into_iter().map(|r| (r.get::<Vec<u8>, _>(0), r)).collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows.into_iter()
        .map(|(_, r)| {
            Ok(JobReport {
                metadata: ReportMetadata::get_decoded(&r.get::<Vec<u8>, _>(1)).map_err(corrupt)?,
                public_share: r.get(2),
                leader_share: HpkeCiphertext::get_decoded(&r.get::<Vec<u8>, _>(3)).map_err(corrupt)?,
                helper_share: HpkeCiphertext::get_decoded(&r.get::<Vec<u8>, _>(4)).map_err(corrupt)?,
            })
        })
        .collect()
}

/// Commits a finished job in one transaction: output shares into their batch buckets (unless the
/// bucket was collected meanwhile, which fails the report with `batch_collected`), the failed
/// reports marked so (their payloads dropped with the others, their IDs kept for replay checks),
/// and the job finished.
///
/// A report that did not fail stays `in_job`: it shares its job's outcome, aggregated once the
/// job is finished. Settling every report with a state of its own rewrote each row (a new
/// version and a primary-key entry each): in PostgreSQL's statistics that statement took a third
/// of the leader's database time during aggregation. Leaving it out raised aggregation from 63%
/// and 66% of the floor to 68% and 70% on PostgreSQL, from 66% and 69% to 72% and 73% on SQLite
/// (Count, 100,000 reports, alternating runs).
pub(super) async fn commit_job(
    s: &SqlStore,
    task: &Task,
    job: &LeasedJob,
    outcomes: Vec<ReportOutcome>,
) -> Result<StepCounts, DapError> {
    let tid = task.id.as_bytes().as_slice();
    let mut tx = s.begin().await?;
    // Only one commit per job: a driver whose lease lapsed while it worked, and whose job
    // another driver then finished, commits nothing. On PostgreSQL the update also holds the
    // job's row until this commit ends, so that two drivers committing at once take turns.
    if !settle_job(&mut tx, task, job, "finished", None).await? {
        tracing::warn!(task_id = %task.id, job_id = %job.job_id, "job already settled by another driver");
        return Ok(StepCounts::default());
    }
    // One outcome for each report of the job, and none for any other: a report left out would
    // pass for aggregated. (Rolled back with the transaction: nothing is settled wrongly.)
    let held: std::collections::HashSet<Vec<u8>> =
        sqlx::query("SELECT report_id FROM client_reports WHERE task_id = $1 AND job_id = $2 AND state = 'in_job'")
            .bind(tid)
            .bind(job.job_id.as_bytes().as_slice())
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::from)?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
    let mut named = std::collections::HashSet::with_capacity(outcomes.len());
    for outcome in &outcomes {
        let id = outcome.report_id();
        if !held.contains(id.as_bytes().as_slice()) || !named.insert(id) {
            return Err(DapError::Internal(format!(
                "outcomes of aggregation job {} name a report not in it",
                job.job_id
            )));
        }
    }
    if named.len() != held.len() {
        return Err(DapError::Internal(format!(
            "outcomes of aggregation job {} leave out some of its reports",
            job.job_id
        )));
    }
    let mut collected: std::collections::HashMap<BatchBucket, bool> = std::collections::HashMap::new();
    let mut failed: std::collections::BTreeMap<u8, Vec<ReportId>> = std::collections::BTreeMap::new();
    let mut sums = BucketSums::default();
    let mut counts = StepCounts::default();
    for outcome in outcomes {
        match outcome {
            ReportOutcome::Failed { report_id, error } => failed.entry(error as u8).or_default().push(report_id),
            ReportOutcome::Aggregated { report_id, time, out_share } => {
                let bucket = BatchBucket::of(job.batch_id, time);
                if SqlStore::bucket_collected_cached(&mut tx, task, &bucket, &mut collected).await? {
                    failed.entry(ReportError::BatchCollected as u8).or_default().push(report_id);
                    continue;
                }
                sums.add(task, bucket, &report_id, time, &out_share)?;
                counts.aggregated += 1;
            }
        }
    }
    drop_payloads(&mut tx, task, job).await?;
    for (error, ids) in &failed {
        for chunk in s.statement_chunks(ids, 1) {
            let sql = format!(
                "UPDATE client_reports SET state = 'failed', report_error = $1
                 WHERE task_id = $2 AND job_id = $3 AND state = 'in_job' AND report_id IN ({})",
                placeholder_list(4, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(i64::from(*error)).bind(tid).bind(job.job_id.as_bytes().as_slice());
            for id in chunk {
                q = q.bind(id.as_bytes().as_slice());
            }
            counts.failed += q.execute(&mut *tx).await.map_err(StoreError::from)?.rows_affected();
        }
    }
    for (bucket, values) in &sums.0 {
        SqlStore::add_to_bucket(&mut tx, task, bucket, s.bucket_shard(), values).await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    s.after_commit().await;
    Ok(counts)
}

/// Deletes the payloads of the job's reports (the rows stay, for replay checks). Before any of
/// them is marked failed: the job's reports are found as those still `in_job`.
async fn drop_payloads(tx: &mut Tx<'_>, task: &Task, job: &LeasedJob) -> Result<(), DapError> {
    execute_for_job(
        tx,
        "DELETE FROM client_report_payloads WHERE report_row IN
           (SELECT row_id FROM client_reports WHERE task_id = $1 AND job_id = $2 AND state = 'in_job')",
        task,
        job,
    )
    .await
}

/// Runs `sql`, whose `$1` and `$2` are the task's and the job's IDs.
async fn execute_for_job(tx: &mut Tx<'_>, sql: &str, task: &Task, job: &LeasedJob) -> Result<(), DapError> {
    sqlx::query(sql)
        .bind(task.id.as_bytes().as_slice())
        .bind(job.job_id.as_bytes().as_slice())
        .execute(&mut **tx)
        .await
        .map_err(StoreError::from)?;
    Ok(())
}

/// Ends an active job in `state` (`finished` or `abandoned`); false if it was no longer active.
async fn settle_job(
    tx: &mut Tx<'_>,
    task: &Task,
    job: &LeasedJob,
    state: &str,
    error: Option<&str>,
) -> Result<bool, DapError> {
    let done = sqlx::query(
        "UPDATE leader_aggregation_jobs SET state = $1, last_error = $2, lease_expiry_seconds = 0
         WHERE task_id = $3 AND job_id = $4 AND state = 'active'",
    )
    .bind(state)
    .bind(error)
    .bind(task.id.as_bytes().as_slice())
    .bind(job.job_id.as_bytes().as_slice())
    .execute(&mut **tx)
    .await
    .map_err(StoreError::from)?;
    Ok(done.rows_affected() > 0)
}

/// Gives the job back for a later attempt, `delay_seconds` from now.
pub(super) async fn retry_job(
    s: &SqlStore,
    task: &Task,
    job: &LeasedJob,
    delay_seconds: i64,
    error: &str,
) -> Result<(), DapError> {
    sqlx::query(
        "UPDATE leader_aggregation_jobs SET lease_expiry_seconds = 0, next_attempt_seconds = $1, last_error = $2
         WHERE task_id = $3 AND job_id = $4",
    )
    .bind(now_seconds() + delay_seconds)
    .bind(error)
    .bind(task.id.as_bytes().as_slice())
    .bind(job.job_id.as_bytes().as_slice())
    .execute(s.pool())
    .await
    .map_err(StoreError::from)?;
    Ok(())
}

/// Gives up on a job: its reports fail (without a report error: the job, not the report, broke).
pub(super) async fn abandon_job(s: &SqlStore, task: &Task, job: &LeasedJob, error: &str) -> Result<(), DapError> {
    let mut tx = s.begin().await?;
    if !settle_job(&mut tx, task, job, "abandoned", Some(error)).await? {
        return Ok(());
    }
    drop_payloads(&mut tx, task, job).await?;
    execute_for_job(
        &mut tx,
        "UPDATE client_reports SET state = 'failed' WHERE task_id = $1 AND job_id = $2 AND state = 'in_job'",
        task,
        job,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}

/// Leader tasks with work for the job creator.
pub(super) async fn tasks_with_unaggregated_reports(s: &SqlStore) -> Result<Vec<TaskId>, DapError> {
    // Task by task through the pending-reports index: a scan of the reports would cost a pass
    // over every stored report each time the creator runs.
    let rows = sqlx::query(
        "SELECT t.task_id FROM tasks t WHERE EXISTS
           (SELECT 1 FROM client_reports r WHERE r.task_id = t.task_id AND r.state = 'unaggregated')",
    )
    .fetch_all(s.pool())
    .await
    .map_err(StoreError::from)?;
    rows.into_iter().map(|r| id_of(r.get(0), "task ID")).collect()
}

// ---- collection jobs ----

const COLLECTION_COLUMNS: &str = "collection_job_id, request, batch_id, state, batch_committed, report_count, checksum,
    result_interval, leader_encrypted_agg_share, response, error_type, error_detail, attempts";

fn collection_row(r: &sqlx::any::AnyRow) -> Result<CollectionJobRow, DapError> {
    let corrupt = |_| DapError::Internal("stored collection job is corrupt".into());
    Ok(CollectionJobRow {
        id: id_of(r.get(0), "collection job ID")?,
        request: CollectionJobReq::get_decoded(&r.get::<Vec<u8>, _>(1)).map_err(corrupt)?,
        batch_id: r.get::<Option<Vec<u8>>, _>(2).map(|b| id_of(b, "batch ID")).transpose()?,
        state: r.get(3),
        batch_committed: r.get::<i64, _>(4) != 0,
        report_count: r.get::<Option<i64>, _>(5).map(|c| c as u64),
        checksum: r
            .get::<Option<Vec<u8>>, _>(6)
            .map(|c| c.try_into().map(BatchChecksum).map_err(|_| DapError::Internal("stored checksum".into())))
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
        error: r.get::<Option<String>, _>(10).map(|t| (t, r.get::<Option<String>, _>(11).unwrap_or_default())),
        attempts: r.get::<i64, _>(12) as u32,
    })
}

/// The live (not deleted) collection job created by a byte-identical request, if any.
pub(super) async fn collection_job_by_digest(
    s: &SqlStore,
    task: &Task,
    digest: &[u8],
) -> Result<Option<CollectionJobRow>, DapError> {
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
) -> Result<Option<CollectionJobRow>, DapError> {
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
) -> Result<CollectionJobId, DapError> {
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
    // A noisy collection spends its epsilon from the task's budget, reserved here, in the same
    // transaction as the check, so concurrent requests cannot overspend it together.
    let epsilon = task.parameters.dp.as_ref().map_or(0.0, |dp| dp.epsilon_f64());
    if let Some(budget) = task.parameters.dp.as_ref().and_then(|dp| dp.budget_f64()) {
        let spent = spent_epsilon(&mut tx, task).await?;
        if spent + epsilon > budget + 1e-9 {
            return Err(DapError::PrivacyBudgetExhausted {
                task_id: Some(task.id),
                detail: format!(
                    "this collection needs epsilon {epsilon}, but the task has spent {spent} of its {budget}"
                ),
            });
        }
    }
    let id = CollectionJobId::random();
    sqlx::query(
        "INSERT INTO collection_jobs (task_id, collection_job_id, request, request_digest, state, created_at_seconds, epsilon)
         VALUES ($1, $2, $3, $4, 'pending', $5, $6)",
    )
    .bind(task.id.as_bytes().as_slice())
    .bind(id.as_bytes().as_slice())
    .bind(request)
    .bind(digest)
    .bind(now_seconds())
    .bind(epsilon)
    .execute(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(id)
}

/// The epsilon a task has spent: every collection that released a result or may still do so
/// (a job deleted or failed before its batch was committed gives its reservation back).
async fn spent_epsilon(tx: &mut Tx<'_>, task: &Task) -> Result<f64, DapError> {
    let row = sqlx::query(
        "SELECT COALESCE(SUM(epsilon), 0.0) FROM collection_jobs
         WHERE task_id = $1 AND (batch_committed = 1 OR state = 'pending')",
    )
    .bind(task.id.as_bytes().as_slice())
    .fetch_one(&mut **tx)
    .await?;
    Ok(row.try_get::<f64, _>(0)?)
}

pub(super) async fn privacy_budget_spent(s: &SqlStore, task: &Task) -> Result<f64, DapError> {
    let mut tx = s.begin_read().await?;
    let spent = spent_epsilon(&mut tx, task).await?;
    tx.commit().await?;
    Ok(spent)
}

/// Marks a job deleted; `false` if there was no live job. Collected-batch records stay.
pub(super) async fn delete_collection_job(s: &SqlStore, task: &Task, id: &CollectionJobId) -> Result<bool, DapError> {
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

/// Leases up to `limit` pending collection jobs: (task, job ID).
pub(super) async fn acquire_collection_jobs(
    s: &SqlStore,
    limit: usize,
    lease_seconds: i64,
) -> Result<Vec<(TaskId, CollectionJobId)>, DapError> {
    let now = now_seconds();
    let mut tx = s.begin_claiming().await?;
    let sql = format!(
        "SELECT task_id, collection_job_id FROM collection_jobs
         WHERE state = 'pending' AND next_attempt_seconds <= $1 AND lease_expiry_seconds <= $2
         ORDER BY created_at_seconds LIMIT $3{}",
        s.skip_locked()
    );
    let rows =
        sqlx::query(&sql).bind(now).bind(now).bind(limit as i64).fetch_all(&mut *tx).await.map_err(StoreError::from)?;
    let mut jobs = Vec::new();
    for r in rows {
        let (t, j): (Vec<u8>, Vec<u8>) = (r.get(0), r.get(1));
        sqlx::query(
            "UPDATE collection_jobs SET lease_expiry_seconds = $1, attempts = attempts + 1
             WHERE task_id = $2 AND collection_job_id = $3",
        )
        .bind(now + lease_seconds)
        .bind(&t)
        .bind(&j)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        jobs.push((id_of(t, "task ID")?, id_of(j, "collection job ID")?));
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(jobs)
}

/// The collection step that commits a batch, in one transaction: pick the batch (leader-selected),
/// wait for its reports to be aggregated and for `min_batch_size`, refuse overlaps, then mark it
/// collected so that no later report joins it. `seal` turns the batch values into the leader's
/// encrypted aggregate share, stored with them.
pub(super) async fn commit_collection_batch(
    s: &SqlStore,
    task: &Task,
    job: &CollectionJobRow,
    seal: SealShare<'_>,
) -> Result<BatchReadiness, DapError> {
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
    let current =
        sqlx::query("SELECT state, batch_committed FROM collection_jobs WHERE task_id = $1 AND collection_job_id = $2")
            .bind(tid)
            .bind(job.id.as_bytes().as_slice())
            .fetch_optional(&mut *tx)
            .await?;
    match current {
        Some(r) if r.get::<String, _>(0) == "pending" && r.get::<i64, _>(1) == 0 => {}
        _ => return Ok(BatchReadiness::Wait("the job moved on meanwhile".into())),
    }
    let batch = match (&job.request.query, batch_id) {
        (Query::TimeInterval(q), _) => {
            let interval = q.batch_interval;
            let end = interval.end().ok_or_else(|| internal("interval overflow"))?;
            // Waiting for a job, or in a job still active (a report in a finished job is
            // aggregated). The second count goes through the active jobs, not the batch's reports:
            // as a join, SQLite walked every report of the task that was ever in a job.
            let pending = sqlx::query(
                "SELECT (SELECT COUNT(*) FROM client_reports WHERE task_id = $1 AND state = 'unaggregated'
                         AND report_time >= $2 AND report_time < $3)
                      + (SELECT COUNT(*) FROM client_reports r WHERE r.task_id = $1 AND r.state = 'in_job'
                           AND r.report_time >= $2 AND r.report_time < $3 AND r.job_id IN
                             (SELECT j.job_id FROM leader_aggregation_jobs j WHERE j.task_id = $1 AND j.state = 'active'))",
            )
            .bind(tid)
            .bind(interval.start.units() as i64)
            .bind(end.units() as i64)
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
    let sealed = seal(&values)?;
    SqlStore::mark_collected(&mut tx, task, &batch).await?;
    sqlx::query(
        "UPDATE collection_jobs SET batch_committed = 1, report_count = $1, checksum = $2, result_interval = $3,
           leader_encrypted_agg_share = $4 WHERE task_id = $5 AND collection_job_id = $6",
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
async fn claim_batch(s: &SqlStore, task: &Task, job: &CollectionJobRow) -> Result<Option<BatchId>, DapError> {
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
async fn pick_batch(tx: &mut Tx<'_>, task: &Task) -> Result<Option<BatchId>, DapError> {
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
) -> Result<(), DapError> {
    sqlx::query(
        "UPDATE collection_jobs SET lease_expiry_seconds = 0, next_attempt_seconds = $1
         WHERE task_id = $2 AND collection_job_id = $3",
    )
    .bind(now_seconds() + delay_seconds)
    .bind(task.id.as_bytes().as_slice())
    .bind(id.as_bytes().as_slice())
    .execute(s.pool())
    .await
    .map_err(StoreError::from)?;
    Ok(())
}

/// Ends a job with its `CollectionJobResp`, or with the error that failed it.
pub(super) async fn end_collection_job(
    s: &SqlStore,
    task: &Task,
    id: &CollectionJobId,
    outcome: Result<Vec<u8>, (String, String)>,
) -> Result<(), DapError> {
    let (state, response, error) = match outcome {
        Ok(resp) => ("finished", Some(resp), None),
        Err(e) => ("failed", None, Some(e)),
    };
    sqlx::query(
        "UPDATE collection_jobs SET state = $1, response = $2, error_type = $3, error_detail = $4, lease_expiry_seconds = 0
         WHERE task_id = $5 AND collection_job_id = $6 AND state = 'pending'",
    )
    .bind(state)
    .bind(response)
    .bind(error.as_ref().map(|e| e.0.clone()))
    .bind(error.as_ref().map(|e| e.1.clone()))
    .bind(task.id.as_bytes().as_slice())
    .bind(id.as_bytes().as_slice())
    .execute(s.pool())
    .await
    .map_err(StoreError::from)?;
    Ok(())
}
