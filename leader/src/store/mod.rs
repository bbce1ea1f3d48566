//! The leader's storage: the [`LeaderStore`] trait, whose methods are each one transaction of one
//! of the leader's protocol steps (an upload, a job's creation, a committed aggregation step, a
//! batch's collection, ...), with the records they exchange; and its SQL implementation
//! ([`sql`]), with the steps in [`reports`] (upload, job creation and commitment), [`leases`] (a
//! job's life between them) and [`collect`] (collection jobs), and garbage collection ([`gc`]). What both servers store (tasks,
//! HPKE keys, batch buckets) is duet-server's [`Storage`], which this trait extends.
//!
//! Aggregation and collection jobs carry typed states ([`LeaderJobState`],
//! [`CollectionJobState`]). A report's state (`client_reports.state`: `unaggregated`, then
//! `in_job`, then `failed`, or `in_job` for good, aggregated with its finished job) lives only in
//! SQL: no step reads it back, and statements spell it as a literal because PostgreSQL and SQLite
//! use a partial index (`WHERE state = 'in_job'`) only for a predicate that names the same
//! literal, never for a bound parameter.

mod collect;
mod gc;
mod leases;
mod reports;
mod sql;

use duet_common::messages::*;
use duet_common::problem::DapError;
use duet_common::time::{Interval, Time};
use duet_common::vdaf::{OutputShare, VerifyState};
use duet_server::sealing::DatabaseKeys;
pub use duet_server::storage::*;
use std::sync::Arc;

/// How the leader's job creator cuts reports into jobs.
#[derive(Clone, Copy, Debug)]
pub struct JobSizes {
    pub min: usize,
    pub max: usize,
    /// A job smaller than `min` is still created once its oldest report has waited this long.
    pub max_delay_seconds: i64,
    /// At most this many jobs per task and creator pass.
    pub max_jobs_per_pass: usize,
}

/// A report waiting for a job: its ID and upload time (seconds).
pub type PendingReport = (Vec<u8>, i64);

/// The reports of a job to create.
#[derive(Debug, PartialEq, Eq)]
pub struct CutJob {
    pub report_ids: Vec<Vec<u8>>,
    /// When its oldest report was uploaded (seconds).
    pub oldest_upload_seconds: i64,
}

/// Cuts `reports` (oldest first) into jobs of at most `sizes.max`; the last, short one only if
/// it is at least `sizes.min`, has waited long enough, or fills the last room of a batch.
pub fn cut_jobs(reports: &[PendingReport], sizes: &JobSizes, now: i64, room_limited: bool) -> Vec<CutJob> {
    let mut jobs = Vec::new();
    for chunk in reports.chunks(sizes.max.max(1)) {
        let oldest = chunk.iter().map(|r| r.1).min().unwrap_or(now);
        if chunk.len() >= sizes.min || room_limited || now - oldest >= sizes.max_delay_seconds {
            jobs.push(CutJob {
                report_ids: chunk.iter().map(|r| r.0.clone()).collect(),
                oldest_upload_seconds: oldest,
            });
        }
        if jobs.len() >= sizes.max_jobs_per_pass {
            break;
        }
    }
    jobs
}

/// An aggregation job leased to a leader's driver.
#[derive(Clone, Debug)]
pub struct LeasedJob {
    pub task_id: TaskId,
    pub job_id: AggregationJobId,
    pub batch_id: Option<BatchId>,
    pub step: u16,
    /// The helper's aggregation job (its `Location`), once a multi-round job moved past step 0.
    pub helper_job: Option<String>,
    /// This attempt's number, from 1.
    pub attempts: u32,
    /// Names this lease: only its holder renews it, retries the job or gives it up.
    pub lease_token: [u8; 16],
}

/// A collection job leased to a leader's driver.
#[derive(Clone, Debug)]
pub struct LeasedCollectionJob {
    pub task_id: TaskId,
    pub id: CollectionJobId,
    /// Leases since the batch was committed (or since the job was created, before that), from 1.
    pub attempts: u32,
    pub lease_token: [u8; 16],
}

/// What becomes of an abandoned job's reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbandonedReports {
    /// They fail: the helper may have aggregated them, so they must not go into another job.
    Fail,
    /// Back to the pool for a new job (DAP-18 allows it for an abandoned job): the helper cannot
    /// have aggregated them. New jobs of the task are held for a while, doubling with each
    /// refusal in a row up to `max_hold_seconds`.
    BackToPool { max_hold_seconds: i64 },
}

/// The work the leader's metrics show waiting on the helper.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaderBacklog {
    /// Active aggregation jobs whose last attempt did not reach the helper, or that it deferred.
    pub aggregation_jobs_waiting: i64,
    /// Pending collection jobs whose aggregate-share request did not get through yet.
    pub collection_jobs_waiting: i64,
    /// When the oldest report not yet aggregated was uploaded (seconds), if there is one.
    pub oldest_unaggregated_upload_seconds: Option<i64>,
}

/// A report of a job, as uploaded.
pub struct JobReport {
    pub metadata: ReportMetadata,
    pub public_share: Vec<u8>,
    pub leader_share: HpkeCiphertext,
    pub helper_share: HpkeCiphertext,
}

/// The leader's state of a report between two requests of a multi-round job.
#[derive(Clone, Debug)]
pub enum LeaderVerifyState {
    /// `Continued`: more rounds to run.
    Continued(VerifyState),
    /// `FinishedWithOutbound`: the leader's output share, committed once the helper finishes.
    FinishedWithOutbound(OutputShare),
}

/// A report being verified with the helper, between two requests of its job.
#[derive(Clone, Debug)]
pub struct VerifyingReport {
    pub report_id: ReportId,
    pub time: Time,
    pub state: LeaderVerifyState,
    /// The payload of the report's `VerifyContinue` in the job's next request.
    pub outbound: Vec<u8>,
}

/// One report's outcome in a leader's aggregation job.
#[derive(Clone)]
pub enum ReportOutcome {
    Aggregated { report_id: ReportId, time: Time, out_share: OutputShare },
    Failed { report_id: ReportId, error: ReportError },
}

impl ReportOutcome {
    pub fn report_id(&self) -> ReportId {
        match self {
            Self::Aggregated { report_id, .. } | Self::Failed { report_id, .. } => *report_id,
        }
    }
}

/// Counts of a committed job.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StepCounts {
    pub aggregated: u64,
    pub failed: u64,
}

/// A collection job's stored state.
pub struct CollectionJobRow {
    pub id: CollectionJobId,
    pub request: CollectionJobReq,
    pub batch_id: Option<BatchId>,
    pub state: CollectionJobState,
    pub batch_committed: bool,
    pub report_count: Option<u64>,
    pub checksum: Option<BatchChecksum>,
    pub result_interval: Option<Interval>,
    pub leader_encrypted_agg_share: Option<HpkeCiphertext>,
    pub response: Option<Vec<u8>>,
    /// Why the job failed, if it did.
    pub error: Option<JobFailure>,
    pub attempts: u32,
}

/// Where a collection job's batch stands.
pub enum BatchReadiness {
    /// Not collectible yet (reports still being aggregated, too few, no batch ready).
    Wait(String),
    /// Collected now: the batch's values, with the leader's encrypted share stored.
    Committed { values: BucketValues, batch: Batch },
    /// The batch can never be collected by this job.
    Refuse(DapError),
}

/// The leader's storage interface: every method is one transaction.
#[async_trait::async_trait]
pub trait LeaderStore: Storage {
    /// The leader's aggregation jobs by state, for metrics.
    async fn aggregation_job_counts(&self) -> Result<Vec<(LeaderJobState, i64)>, StoreError>;
    /// The leader's work waiting on the helper, for metrics.
    async fn leader_backlog(&self) -> Result<LeaderBacklog, StoreError>;
    /// Whether any part of the batch was already collected.
    async fn batch_overlaps_collected(&self, task: &Task, batch: &Batch) -> Result<bool, StoreError>;

    /// Whether the database runs one write transaction at a time (SQLite), so that callers
    /// gain by putting concurrent writes into one transaction instead of queueing them.
    fn writes_one_at_a_time(&self) -> bool {
        false
    }

    // -- leader: upload --

    /// Stores accepted reports durably, as their clients encoded them; per report, the error
    /// that refused it (a replayed ID, stored before or earlier in `reports`, or a
    /// time-interval bucket already collected).
    async fn put_reports(
        &self,
        task: &Task,
        reports: &[&EncodedReport<'_>],
    ) -> Result<Vec<Option<ReportError>>, StoreError>;

    // -- leader: aggregation --

    async fn tasks_with_unaggregated_reports(&self) -> Result<Vec<TaskId>, StoreError>;
    /// Puts unaggregated reports into new jobs (for leader-selected tasks, into batches filled
    /// to the task's target size). Returns the number of jobs created.
    async fn create_aggregation_jobs(&self, task: &Task, sizes: &JobSizes) -> Result<usize, StoreError>;
    /// Leases up to `limit` runnable jobs; a job whose lease lapsed is runnable again.
    async fn acquire_aggregation_jobs(&self, limit: usize, lease_seconds: i64) -> Result<Vec<LeasedJob>, StoreError>;
    /// The job's reports awaiting their outcome, in a stable order.
    async fn aggregation_job_reports(&self, job: &LeasedJob) -> Result<Vec<JobReport>, StoreError>;
    /// Commits a finished job: output shares into buckets (a report whose bucket was collected
    /// meanwhile fails with `batch_collected`), the failed reports marked, the job finished.
    /// Outcomes that do not name each of the job's reports exactly once are refused.
    async fn commit_aggregation_job(
        &self,
        task: &Task,
        job: &LeasedJob,
        outcomes: Vec<ReportOutcome>,
    ) -> Result<StepCounts, StoreError>;
    /// Moves a job on to its next step (DAP-18 "Leader Continuation") in one transaction:
    /// `rejected` reports fail, `pending` become the job's kept states, the helper's job URL is
    /// kept, and the next step's request is pinned anew when first sent. False if the lease is
    /// no longer this driver's (nothing is changed then).
    async fn advance_aggregation_job(
        &self,
        task: &Task,
        job: &LeasedJob,
        helper_job: &str,
        rejected: &[(ReportId, ReportError)],
        pending: &[VerifyingReport],
    ) -> Result<bool, StoreError>;
    /// The reports of a job resting between two steps, in the order of its requests.
    async fn pending_reports(&self, task: &Task, job: &LeasedJob) -> Result<Vec<VerifyingReport>, StoreError>;
    /// Extends the job's lease while its holder still has it (`false` once another driver took
    /// it over, or the job ended), noting why it waits, if `note`.
    async fn renew_aggregation_job_lease(
        &self,
        job: &LeasedJob,
        lease_seconds: i64,
        note: Option<&str>,
    ) -> Result<bool, StoreError>;
    /// Records the digest of the job's first `AggregationJobInitReq`, and tells whether `digest`
    /// is that one: a retry must be byte-identical, or the helper would take it for a new job.
    async fn pin_aggregation_job_request(&self, job: &LeasedJob, digest: &[u8; 32]) -> Result<bool, StoreError>;
    /// Gives the job back for another attempt `delay_seconds` from now (if the lease is still
    /// this driver's).
    async fn retry_aggregation_job(
        &self,
        task: &Task,
        job: &LeasedJob,
        delay_seconds: i64,
        error: &str,
    ) -> Result<(), StoreError>;
    /// Gives up on a job; its reports fail or go back to the pool.
    async fn abandon_aggregation_job(
        &self,
        task: &Task,
        job: &LeasedJob,
        error: &str,
        reports: AbandonedReports,
    ) -> Result<(), StoreError>;

    // -- leader: collection --

    /// The live (not deleted) job created by a byte-identical request.
    async fn collection_job_by_digest(
        &self,
        task: &Task,
        digest: &[u8],
    ) -> Result<Option<CollectionJobRow>, StoreError>;
    async fn collection_job(&self, task: &Task, id: &CollectionJobId) -> Result<Option<CollectionJobRow>, StoreError>;
    /// Creates a job, unless an identical request created a live one first (its ID is returned).
    async fn insert_collection_job(
        &self,
        task: &Task,
        request: &[u8],
        digest: &[u8],
    ) -> Result<CollectionJobId, StoreError>;
    async fn delete_collection_job(&self, task: &Task, id: &CollectionJobId) -> Result<bool, StoreError>;
    /// The privacy budget the task's collections have spent (or reserved), in its mechanism's
    /// terms (epsilon or rho).
    async fn privacy_budget_spent(&self, task: &Task) -> Result<f64, StoreError>;
    async fn acquire_collection_jobs(
        &self,
        limit: usize,
        lease_seconds: i64,
    ) -> Result<Vec<LeasedCollectionJob>, StoreError>;
    /// Extends a collection job's lease while its holder still has it.
    async fn renew_collection_job_lease(
        &self,
        job: &LeasedCollectionJob,
        lease_seconds: i64,
    ) -> Result<bool, StoreError>;
    /// Commits the job's batch once it is complete and large enough, marking it collected.
    async fn commit_collection_batch(&self, task: &Task, job: &CollectionJobRow) -> Result<BatchReadiness, StoreError>;
    /// Gives the job back for another try `delay_seconds` from now; `error` says why it waits
    /// on the helper, if it does.
    async fn defer_collection_job(
        &self,
        task: &Task,
        id: &CollectionJobId,
        delay_seconds: i64,
        error: Option<&str>,
    ) -> Result<(), StoreError>;
    /// Ends a job with its encoded `CollectionJobResp`, or the (problem token, detail) failing it.
    /// A failed job released nothing, so its batch, if committed, is given back: collectable
    /// again, its privacy budget returned.
    async fn end_collection_job(
        &self,
        task: &Task,
        id: &CollectionJobId,
        outcome: Result<Vec<u8>, JobFailure>,
    ) -> Result<(), StoreError>;

    // -- leader: data lifecycle --

    /// One garbage-collection pass (see [`gc`]): deletes what expired or is over, in bounded
    /// transactions.
    async fn collect_garbage(
        &self,
        settings: &duet_server::gc::GcSettings,
    ) -> Result<duet_server::gc::GcReport, StoreError>;
}

/// The storage the leader holds.
pub type Store = Arc<dyn LeaderStore>;

/// Opens the leader's storage a database URL names (`sqlite:...` or `postgres://...`),
/// applying migrations.
pub async fn open(url: &str, keys: Arc<DatabaseKeys>) -> Result<Store, StoreError> {
    open_with_clock(url, keys, duet_common::clock::system()).await
}

/// [`open`], with the time read from `clock`.
pub async fn open_with_clock(
    url: &str,
    keys: Arc<DatabaseKeys>,
    clock: duet_common::clock::SharedClock,
) -> Result<Store, StoreError> {
    Ok(Arc::new(duet_server::sql::SqlStore::open(url, keys).await?.with_clock(clock)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reports(n: usize, uploaded: i64) -> Vec<PendingReport> {
        (0..n).map(|i| (vec![i as u8], uploaded)).collect()
    }

    #[test]
    fn jobs_are_cut_to_size_and_short_ones_wait() {
        let sizes = JobSizes { min: 3, max: 4, max_delay_seconds: 10, max_jobs_per_pass: 10 };
        let lens = |jobs: &[CutJob]| jobs.iter().map(|j| j.report_ids.len()).collect::<Vec<_>>();
        let jobs = cut_jobs(&reports(10, 100), &sizes, 105, false);
        assert_eq!(lens(&jobs), vec![4, 4]);
        // Once the short remainder has waited long enough, it goes too.
        let jobs = cut_jobs(&reports(10, 100), &sizes, 110, false);
        assert_eq!(lens(&jobs), vec![4, 4, 2]);
        // A chunk that fills a batch's last room never waits.
        let jobs = cut_jobs(&reports(2, 100), &sizes, 100, true);
        assert_eq!(lens(&jobs), vec![2]);
        // Each job knows when its oldest report came.
        let mut mixed = reports(4, 100);
        mixed[2].1 = 90;
        let jobs = cut_jobs(&mixed, &JobSizes { max: 2, ..sizes }, 200, false);
        assert_eq!(jobs.iter().map(|j| j.oldest_upload_seconds).collect::<Vec<_>>(), vec![100, 90]);
        assert_eq!(jobs[1].report_ids, vec![vec![2u8], vec![3u8]]);
        let sizes = JobSizes { max_jobs_per_pass: 1, ..sizes };
        assert_eq!(cut_jobs(&reports(10, 0), &sizes, 100, false).len(), 1);
    }
}
