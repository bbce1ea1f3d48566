//! The leader's protocol steps on SQL: report upload, job creation and commitment, each one
//! transaction. A job's life between creation and commitment (leases, retries, steps,
//! abandonment) is in [`super::leases`]; collection jobs are in [`super::collect`].

use super::*;
use duet_common::messages::*;
use duet_common::Decode;
use duet_server::sql::{id_of, placeholder_list, Backend, SqlStore, Tx};
use sqlx::Row;

/// The collected time intervals (start and end, in time-precision units) that the reports of an
/// upload may fall into, read before the upload's write transaction: one query for the whole
/// request, rather than one per bucket inside the writer's critical section (on SQLite, the
/// only writer), which a request of reports stamped each in a bucket of its own would hold for
/// as many queries. A bucket collected in between is caught when the report's job commits: the
/// report then fails with `batch_collected`.
async fn collected_intervals(
    s: &SqlStore,
    task: &Task,
    reports: &[&EncodedReport<'_>],
) -> Result<Vec<(i64, i64)>, StoreError> {
    if task.configuration.batch_mode != BatchMode::TimeInterval || reports.is_empty() {
        return Ok(Vec::new());
    }
    let times = reports.iter().map(|r| r.report_metadata.time.units() as i64);
    let (first, last) = times.fold((i64::MAX, i64::MIN), |(a, b), t| (a.min(t), b.max(t)));
    let rows = sqlx::query(
        "SELECT batch_start, batch_end FROM collected_batches
         WHERE task_id = $1 AND batch_start <= $2 AND batch_end > $3",
    )
    .bind(task.id.as_bytes().as_slice())
    .bind(last)
    .bind(first)
    .fetch_all(s.pool())
    .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Upload: stores the reports that passed the stateless checks, in one transaction. A report
/// whose ID is known is a replay; one for a collected time-interval bucket is refused too (the
/// spec lets the leader call it a replay).
pub(super) async fn put_reports(
    s: &SqlStore,
    task: &Task,
    reports: &[&EncodedReport<'_>],
) -> Result<Vec<Option<ReportError>>, StoreError> {
    let collected = collected_intervals(s, task, reports).await?;
    let mut tx = s.begin().await?;
    let mut out: Vec<Option<ReportError>> = Vec::with_capacity(reports.len());
    let now = s.now_seconds();
    let mut to_insert: Vec<&EncodedReport<'_>> = Vec::with_capacity(reports.len());
    let mut seen = std::collections::HashSet::with_capacity(reports.len());
    for report in reports {
        // An ID twice in the input: the later one is a replay, as if stored one after the other.
        if !seen.insert(report.report_metadata.report_id) {
            out.push(Some(ReportError::ReportReplayed));
            continue;
        }
        let time = report.report_metadata.time.units() as i64;
        if collected.iter().any(|(start, end)| *start <= time && time < *end) {
            out.push(Some(ReportError::ReportReplayed));
            continue;
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
        let report = stored.next().ok_or_else(|| StoreError::Internal("upload bookkeeping".into()))?;
        if !inserted.contains_key(report.report_metadata.report_id.as_bytes().as_slice()) {
            *slot = Some(ReportError::ReportReplayed);
        }
    }
    Ok(out)
}

/// Job creation for one task, in one transaction: unaggregated reports go into new jobs (and,
/// for leader-selected tasks, into batches filled to `target_batch_size`). Returns the number of
/// jobs created.
pub(super) async fn create_jobs(s: &SqlStore, task: &Task, sizes: &JobSizes) -> Result<usize, StoreError> {
    s.refresh_statistics("client_reports").await;
    let now = s.now_seconds();
    let tid = task.id.as_bytes().as_slice();
    // One creator per task at a time: replicas would otherwise fight over the same reports.
    let mut tx = s.begin_claiming().await?;
    s.lock_task(&mut tx, task).await?;
    // The helper refused this task's last job: new ones wait out the hold.
    let hold = sqlx::query("SELECT hold_until_seconds FROM leader_job_creation_holds WHERE task_id = $1")
        .bind(tid)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    if hold.is_some_and(|r| r.get::<i64, _>(0) > now) {
        return Ok(0);
    }
    let limit = (sizes.max.max(1) * sizes.max_jobs_per_pass) as i64;
    let pending: Vec<PendingReport> = sqlx::query(
        // In the order they arrived (row IDs count up), not by the time their clients stamped
        // them: a client chooses its stamps, and old ones would jump the queue ahead of fresh
        // reports. Arrival order is storage order too, so a job's reports sit on few pages and
        // reading and settling them touches few (ordering by the random report ID would scatter
        // every job over the whole table). The index this takes (`client_reports_arrival`) cost
        // uploads about 6% (two alternating runs of `duet bench`, 50,000 reports: Count on SQLite
        // 176,000 against 189,000 reports/s, on PostgreSQL 86,900 against 94,000; histograms
        // 66,400 against 71,300 and 43,200 against 43,700), aggregation nothing measurable.
        "SELECT report_id, created_at_seconds FROM client_reports WHERE task_id = $1 AND state = 'unaggregated'
         ORDER BY row_id LIMIT $2",
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
                "INSERT INTO leader_aggregation_jobs (task_id, job_id, batch_id, state, created_at_seconds,
                   oldest_report_seconds) VALUES ($1, $2, $3, 'active', $4, $5)",
            )
            .bind(tid)
            .bind(job_id.as_bytes().as_slice())
            .bind(batch_id.map(|b| b.as_bytes().to_vec()))
            .bind(now)
            .bind(job.oldest_upload_seconds)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
            for ids in s.statement_chunks(&job.report_ids, 1) {
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
            tracing::debug!(task_id = %task.id, job_id = %job_id, reports = job.report_ids.len(), "aggregation job created");
            created += 1;
        }
    }
    tx.commit().await.map_err(StoreError::from)?;
    s.after_commit().await;
    Ok(created)
}

/// The reports of a job still awaiting their outcome, in a stable order (so that a retried
/// request is byte-identical).
pub(super) async fn job_reports(s: &SqlStore, job: &LeasedJob) -> Result<Vec<JobReport>, StoreError> {
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
    let corrupt = |_| StoreError::Corrupt("stored report is corrupt".into());
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
) -> Result<StepCounts, StoreError> {
    let tid = task.id.as_bytes().as_slice();
    let mut tx = s.begin().await?;
    // Only one commit per job: a driver whose lease lapsed while it worked, and whose job
    // another driver then finished, commits nothing. On PostgreSQL the update also holds the
    // job's row until this commit ends, so that two drivers committing at once take turns.
    if !settle_job(&mut tx, task, job, LeaderJobState::Finished, None).await? {
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
            return Err(StoreError::Internal(format!(
                "outcomes of aggregation job {} name a report not in it",
                job.job_id
            )));
        }
    }
    if named.len() != held.len() {
        return Err(StoreError::Internal(format!(
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
    counts.failed += fail_reports(s, &mut tx, task, job, &failed).await?;
    forget_pending(&mut tx, task, job).await?;
    for (bucket, values) in &sums.0 {
        SqlStore::add_to_bucket(&mut tx, task, bucket, s.bucket_shard(), values).await?;
    }
    // The helper took a job of this task: whatever held new ones back is over.
    sqlx::query("DELETE FROM leader_job_creation_holds WHERE task_id = $1")
        .bind(tid)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    tx.commit().await.map_err(StoreError::from)?;
    s.after_commit().await;
    Ok(counts)
}

/// Marks the job's reports in `failed` (by report error) failed; how many were.
pub(super) async fn fail_reports(
    s: &SqlStore,
    tx: &mut Tx<'_>,
    task: &Task,
    job: &LeasedJob,
    failed: &std::collections::BTreeMap<u8, Vec<ReportId>>,
) -> Result<u64, StoreError> {
    let mut n = 0;
    for (error, ids) in failed {
        for chunk in s.statement_chunks(ids, 1) {
            let sql = format!(
                "UPDATE client_reports SET state = 'failed', report_error = $1
                 WHERE task_id = $2 AND job_id = $3 AND state = 'in_job' AND report_id IN ({})",
                placeholder_list(4, chunk.len())
            );
            let mut q = sqlx::query(&sql)
                .bind(i64::from(*error))
                .bind(task.id.as_bytes().as_slice())
                .bind(job.job_id.as_bytes().as_slice());
            for id in chunk {
                q = q.bind(id.as_bytes().as_slice());
            }
            n += q.execute(&mut **tx).await.map_err(StoreError::from)?.rows_affected();
        }
    }
    Ok(n)
}

/// Deletes what a multi-round job kept between its steps.
pub(super) async fn forget_pending(tx: &mut Tx<'_>, task: &Task, job: &LeasedJob) -> Result<(), StoreError> {
    execute_for_job(tx, "DELETE FROM leader_report_verifications WHERE task_id = $1 AND job_id = $2", task, job).await
}

/// Deletes the payloads of the job's reports (the rows stay, for replay checks). Before any of
/// them is marked failed: the job's reports are found as those still `in_job`.
pub(super) async fn drop_payloads(tx: &mut Tx<'_>, task: &Task, job: &LeasedJob) -> Result<(), StoreError> {
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
pub(super) async fn execute_for_job(
    tx: &mut Tx<'_>,
    sql: &str,
    task: &Task,
    job: &LeasedJob,
) -> Result<(), StoreError> {
    sqlx::query(sql)
        .bind(task.id.as_bytes().as_slice())
        .bind(job.job_id.as_bytes().as_slice())
        .execute(&mut **tx)
        .await
        .map_err(StoreError::from)?;
    Ok(())
}

/// Ends an active job in `state` (`finished` or `abandoned`); false if it was no longer active.
pub(super) async fn settle_job(
    tx: &mut Tx<'_>,
    task: &Task,
    job: &LeasedJob,
    state: LeaderJobState,
    error: Option<&str>,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE leader_aggregation_jobs SET state = $1, last_error = $2, lease_expiry_seconds = 0
         WHERE task_id = $3 AND job_id = $4 AND state = 'active'",
    )
    .bind(state.db())
    .bind(error)
    .bind(task.id.as_bytes().as_slice())
    .bind(job.job_id.as_bytes().as_slice())
    .execute(&mut **tx)
    .await
    .map_err(StoreError::from)?;
    Ok(done.rows_affected() > 0)
}

/// The work waiting on the helper, for metrics.
pub(super) async fn backlog(s: &SqlStore) -> Result<LeaderBacklog, StoreError> {
    // The reports of active jobs through their jobs (each knows its oldest report), and those
    // waiting for a job through the pending index.
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM leader_aggregation_jobs WHERE state = 'active' AND last_error IS NOT NULL),
                (SELECT COUNT(*) FROM collection_jobs WHERE state = 'pending' AND last_error IS NOT NULL),
                (SELECT MIN(COALESCE(oldest_report_seconds, created_at_seconds)) FROM leader_aggregation_jobs
                   WHERE state = 'active'),
                (SELECT MIN(created_at_seconds) FROM client_reports WHERE state = 'unaggregated')",
    )
    .fetch_one(s.pool())
    .await
    .map_err(StoreError::from)?;
    let oldest = [row.get::<Option<i64>, _>(2), row.get::<Option<i64>, _>(3)].into_iter().flatten().min();
    Ok(LeaderBacklog {
        aggregation_jobs_waiting: row.get(0),
        collection_jobs_waiting: row.get(1),
        oldest_unaggregated_upload_seconds: oldest,
    })
}

/// Leader tasks with work for the job creator.
pub(super) async fn tasks_with_unaggregated_reports(s: &SqlStore) -> Result<Vec<TaskId>, StoreError> {
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
