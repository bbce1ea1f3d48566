//! The storage interface both aggregators stand on: one [`Storage`] trait whose methods are each
//! one transaction of one protocol step (an upload, a job's creation, a committed aggregation
//! step, a batch's collection, ...), with the records they exchange. Protocol modules hold no
//! SQL; the SQL backends ([`super::sql`]: SQLite and PostgreSQL) implement the trait.

pub use super::states::*;
pub use super::store_error::StoreError;
use duet_common::auth::AuthenticationToken;
use duet_common::hpke::HpkeKeypair;
use duet_common::messages::*;
use duet_common::problem::DapError;
use duet_common::task::{AggregatorTaskRequest, TaskParameters};
use duet_common::time::{Interval, Time};
use duet_common::vdaf::{AggregateShare, OutputShare, Vdaf, VerifyKey, VerifyState};
use duet_common::Encode;
use std::collections::HashMap;
use std::sync::Arc;

/// A provisioned task with everything derived from it, ready for request handling.
pub struct Task {
    pub id: TaskId,
    pub role: Role,
    pub parameters: TaskParameters,
    pub configuration: TaskConfiguration,
    /// The encoded `TaskConfiguration`, for HPKE associated data.
    pub configuration_encoded: Vec<u8>,
    pub vdaf: Vdaf,
    pub verify_key: VerifyKey,
    pub aggregator_auth_token: AuthenticationToken,
    pub collector_auth_token: Option<AuthenticationToken>,
    pub collector_hpke_config: HpkeConfig,
    pub max_batch_size: Option<u64>,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task").field("id", &self.id).field("role", &self.role).finish_non_exhaustive()
    }
}

impl Task {
    pub fn from_request(role: Role, req: &AggregatorTaskRequest) -> Result<Self, DapError> {
        let bad = |e: duet_common::task::TaskError| DapError::BadRequest(e.to_string());
        let configuration = req.parameters.task_configuration().map_err(bad)?;
        let vdaf = Vdaf::new(&req.parameters.vdaf).map_err(|e| DapError::BadRequest(e.to_string()))?;
        let collector_auth_token = req.collector_token().map_err(bad)?;
        if role == Role::Leader && collector_auth_token.is_none() {
            return Err(DapError::BadRequest("the leader needs a collector_auth_token".into()));
        }
        if let Some(max) = req.max_batch_size {
            if max < req.parameters.min_batch_size {
                return Err(DapError::BadRequest("max_batch_size is below min_batch_size".into()));
            }
        }
        Ok(Task {
            id: req.parameters.task_id,
            role,
            configuration_encoded: configuration.get_encoded().map_err(|e| DapError::BadRequest(e.to_string()))?,
            configuration,
            parameters: req.parameters.clone(),
            vdaf,
            verify_key: req.verify_key().map_err(bad)?,
            aggregator_auth_token: req.aggregator_token().map_err(bad)?,
            collector_auth_token,
            collector_hpke_config: req.collector_config().map_err(bad)?,
            max_batch_size: req.max_batch_size,
        })
    }

    /// The VDAF context `"dap-18" || task_id`.
    pub fn vdaf_context(&self) -> [u8; 38] {
        duet_common::vdaf::vdaf_context(&self.id)
    }

    /// The encoded aggregate share an aggregator releases for a batch: with this aggregator's
    /// own differential-privacy noise when the task has some, so that the result stays private
    /// while either aggregator is honest.
    pub fn released_share(&self, values: &BucketValues) -> Result<Vec<u8>, DapError> {
        let mut share = values.aggregate_share.clone();
        if let Some(dp) = &self.parameters.dp {
            self.vdaf
                .add_noise(dp, &mut share, values.report_count)
                .map_err(|e| DapError::Internal(format!("adding noise: {e}")))?;
        }
        share.get_encoded().map_err(|e| DapError::Internal(e.to_string()))
    }

    /// The size leader-selected batches are filled to: `max_batch_size`, else `min_batch_size`.
    pub fn target_batch_size(&self) -> u64 {
        self.max_batch_size.unwrap_or(self.configuration.min_batch_size).max(1)
    }
}

/// The batch bucket an output share is committed to (DAP-18 "Batch Buckets").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BatchBucket {
    /// A one-unit interval starting at this time.
    TimeInterval(Time),
    LeaderSelected(BatchId),
}

impl BatchBucket {
    /// The bucket of a report with timestamp `time` in a job of batch `batch_id` (if any).
    pub fn of(batch_id: Option<BatchId>, time: Time) -> Self {
        match batch_id {
            Some(id) => BatchBucket::LeaderSelected(id),
            None => BatchBucket::TimeInterval(time),
        }
    }

    pub fn key(&self) -> Vec<u8> {
        match self {
            BatchBucket::TimeInterval(t) => t.units().to_be_bytes().to_vec(),
            BatchBucket::LeaderSelected(id) => id.as_bytes().to_vec(),
        }
    }
}

/// A batch bucket's values, or a batch's once buckets are combined.
#[derive(Clone, Debug)]
pub struct BucketValues {
    pub aggregate_share: AggregateShare,
    pub report_count: u64,
    pub checksum: BatchChecksum,
    pub min_time: Time,
    pub max_time: Time,
}

impl BucketValues {
    pub fn merge(&mut self, other: &BucketValues) -> Result<(), DapError> {
        self.aggregate_share.merge(&other.aggregate_share).map_err(|e| DapError::Internal(e.to_string()))?;
        self.report_count += other.report_count;
        self.checksum.combine(&other.checksum);
        self.min_time = self.min_time.min(other.min_time);
        self.max_time = self.max_time.max(other.max_time);
        Ok(())
    }

    /// The smallest interval holding every report's timestamp (`CollectionJobResp.interval`).
    pub fn interval(&self) -> Interval {
        Interval::unit_containing(self.min_time).merged_with(self.max_time)
    }
}

/// Output shares summed per bucket, as a step commits them.
#[derive(Default)]
pub struct BucketSums(pub HashMap<BatchBucket, BucketValues>);

impl BucketSums {
    pub fn add(
        &mut self,
        task: &Task,
        bucket: BatchBucket,
        report_id: &ReportId,
        time: Time,
        out_share: &OutputShare,
    ) -> Result<(), DapError> {
        let entry = self.0.entry(bucket).or_insert_with(|| BucketValues {
            aggregate_share: task.vdaf.aggregate_init(),
            report_count: 0,
            checksum: BatchChecksum::default(),
            min_time: time,
            max_time: time,
        });
        entry.aggregate_share.accumulate(out_share).map_err(|e| DapError::Internal(e.to_string()))?;
        entry.report_count += 1;
        entry.checksum.update(report_id);
        entry.min_time = entry.min_time.min(time);
        entry.max_time = entry.max_time.max(time);
        Ok(())
    }
}

/// A batch, as a collection names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batch {
    TimeInterval(Interval),
    LeaderSelected(BatchId),
}

// ---- leader records ----

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

/// Turns a batch's values into the leader's encrypted aggregate share.
pub type SealShare<'a> = &'a (dyn Fn(&BucketValues) -> Result<HpkeCiphertext, DapError> + Send + Sync);

// ---- helper records ----

/// One report's outcome after the CPU-bound part of a helper step.
#[derive(Clone)]
pub enum HelperOutcome {
    Commit { out_share: OutputShare, outbound: Option<Vec<u8>>, time: Time },
    Keep { state: VerifyState, outbound: Vec<u8>, time: Time },
    Reject(ReportError),
}

/// A helper's aggregation job.
pub struct HelperJob {
    pub step: AggregationJobStep,
    pub last_request_digest: Vec<u8>,
    pub last_response: Vec<u8>,
    pub batch_id: Option<BatchId>,
    pub state: HelperJobState,
}

/// A helper step to commit: the job, the request's digest and the reports' outcomes.
#[derive(Clone)]
pub struct HelperStep {
    pub job_id: AggregationJobId,
    pub digest: [u8; 32],
    pub batch_id: Option<BatchId>,
    pub step: AggregationJobStep,
    pub report_ids: Vec<ReportId>,
    pub outcomes: Vec<HelperOutcome>,
}

/// A report's state kept between helper steps: its time and encoded verification state.
pub type KeptState = (Time, Vec<u8>);

/// What became of an aggregate-share request at the helper.
pub enum ShareRelease {
    /// The encoded `AggregateShare` (new, or the one an identical request created).
    Released(Vec<u8>),
    /// The batch overlaps one already collected.
    Overlap,
}

/// Checks a batch's values against the leader's request and builds the encoded `AggregateShare`.
pub type BuildShare<'a> = &'a (dyn Fn(Option<&BucketValues>) -> Result<Vec<u8>, DapError> + Send + Sync);

/// The smallest HPKE config ID none of `taken` has: 1 to 255 first, 0 last.
pub fn first_free_config_id(taken: &[u8]) -> Option<HpkeConfigId> {
    (1..=u8::MAX).chain([0]).find(|i| !taken.contains(i)).map(HpkeConfigId)
}

/// How long a retired key stays before it may be deleted without `force`: twice the time
/// clients may cache `/hpke_config`, as DAP-18 recommends.
pub const RETIRED_KEY_GRACE_SECONDS: i64 = 2 * super::hpke_config::CACHE_MAX_AGE_SECONDS as i64;

/// One HPKE key as the admin API shows it: never its private key.
#[derive(Clone, Debug)]
pub struct HpkeKeyRecord {
    pub config: HpkeConfig,
    pub state: HpkeKeyState,
    pub created_at_seconds: i64,
    pub state_changed_at_seconds: i64,
}

/// A connection pool's use.
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolStatus {
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

/// The storage interface: every method is one transaction.
#[async_trait::async_trait]
pub trait Storage: Send + Sync {
    // -- both roles --

    /// The clock behind every time decision of the server holding this store (its handlers
    /// read it here too), so that tests can move time.
    fn clock(&self) -> &duet_common::clock::SharedClock;

    /// Now, by [`Self::clock`], in seconds since the Unix epoch.
    fn now_seconds(&self) -> i64 {
        self.clock().now_seconds() as i64
    }

    /// Provisions a task; the identical task again is a no-op, a different one under the same
    /// ID a conflict.
    async fn put_task(&self, role: Role, req: &AggregatorTaskRequest) -> Result<Arc<Task>, StoreError>;
    /// The task (cached); `unrecognizedTask` if unknown.
    async fn task(&self, id: &TaskId) -> Result<Arc<Task>, StoreError>;
    async fn delete_task(&self, id: &TaskId) -> Result<bool, StoreError>;
    async fn task_ids(&self) -> Result<Vec<TaskId>, StoreError>;
    /// The aggregator's HPKE keys that can open input shares (pending, active and retired),
    /// active first; creates an active key when there is none.
    async fn hpke_keypairs(&self) -> Result<Vec<(HpkeKeypair, HpkeKeyState)>, StoreError>;
    /// Every HPKE key, without private keys, in config ID order (for the admin API).
    async fn hpke_keys(&self) -> Result<Vec<HpkeKeyRecord>, StoreError>;
    /// Adds a key in state `pending`; a taken config ID is a conflict.
    async fn add_hpke_key(&self, keypair: &HpkeKeypair) -> Result<HpkeKeyRecord, StoreError>;
    /// Moves a key to `active` or `retired`. Retiring the last active key is refused, so that
    /// clients always find a key to encrypt to.
    async fn set_hpke_key_state(&self, id: HpkeConfigId, state: HpkeKeyState) -> Result<HpkeKeyRecord, StoreError>;
    /// Deletes a key: refused for an active key, and for one retired less than
    /// [`RETIRED_KEY_GRACE_SECONDS`] ago unless `force`.
    async fn delete_hpke_key(&self, id: HpkeConfigId, force: bool) -> Result<(), StoreError>;
    /// Whether the database answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
    /// The connection pool's use, for metrics.
    fn pool_status(&self) -> PoolStatus;
    /// The leader's aggregation jobs by state, for metrics (empty on a helper).
    async fn aggregation_job_counts(&self) -> Result<Vec<(LeaderJobState, i64)>, StoreError>;
    /// The leader's work waiting on the helper, for metrics (all zero on a helper).
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
    /// The differential-privacy epsilon the task's collections have spent (or reserved).
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
    async fn commit_collection_batch(
        &self,
        task: &Task,
        job: &CollectionJobRow,
        seal: SealShare<'_>,
    ) -> Result<BatchReadiness, StoreError>;
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

    // -- helper: aggregation --

    async fn helper_job(&self, task: &Task, job_id: &AggregationJobId) -> Result<Option<HelperJob>, StoreError>;
    /// Commits a job's initialisation (replay and collected-bucket checks, output shares, kept
    /// states, the stored response): the answer, which the handler encodes (the same bytes as
    /// stored: the encoding is deterministic). `None` if an identical request created the job
    /// first.
    async fn helper_init_job(&self, task: &Task, step: HelperStep) -> Result<Option<AggregationJobResp>, StoreError>;
    /// The states kept for a job's next step.
    async fn helper_kept_states(
        &self,
        task: &Task,
        job_id: &AggregationJobId,
    ) -> Result<HashMap<ReportId, KeptState>, StoreError>;
    /// Commits a continuation step from `from` to `step.step`. `None` if the job moved on
    /// concurrently.
    async fn helper_continue_job(
        &self,
        task: &Task,
        from: AggregationJobStep,
        step: HelperStep,
    ) -> Result<Option<AggregationJobResp>, StoreError>;
    async fn helper_delete_job(&self, task: &Task, job_id: &AggregationJobId) -> Result<(), StoreError>;
    /// Records that `owner` (a process) works on a job's step in the background, until
    /// `lease_seconds` from now unless renewed.
    async fn helper_defer_step(
        &self,
        task: &Task,
        job_id: &AggregationJobId,
        step: AggregationJobStep,
        digest: &[u8; 32],
        owner: &[u8; 16],
        lease_seconds: i64,
    ) -> Result<(), StoreError>;
    /// Whether a live record says the step is being worked on.
    async fn helper_step_deferred(
        &self,
        task: &Task,
        job_id: &AggregationJobId,
        step: AggregationJobStep,
    ) -> Result<bool, StoreError>;
    /// Renews every record of `owner`.
    async fn helper_renew_deferred(&self, owner: &[u8; 16], lease_seconds: i64) -> Result<(), StoreError>;
    /// Drops the record of a step whose background work failed.
    async fn helper_drop_deferred(
        &self,
        task: &Task,
        job_id: &AggregationJobId,
        step: AggregationJobStep,
    ) -> Result<(), StoreError>;

    // -- helper: collection --

    /// The stored (not deleted) encoded `AggregateShare`.
    async fn helper_aggregate_share(&self, task: &Task, id: &AggregateShareId) -> Result<Option<Vec<u8>>, StoreError>;
    /// Releases the batch's aggregate share: overlap check, `build` (which checks the values
    /// and encodes the share), batch marked collected, share stored under `id`.
    async fn helper_release_aggregate_share(
        &self,
        task: &Task,
        id: &AggregateShareId,
        digest: &[u8; 32],
        batch: &Batch,
        build: BuildShare<'_>,
    ) -> Result<ShareRelease, StoreError>;
    async fn helper_delete_aggregate_share(&self, task: &Task, id: &AggregateShareId) -> Result<bool, StoreError>;
}

/// The storage both servers hold.
pub type Store = Arc<dyn Storage>;

/// Opens the storage a database URL names (`sqlite:...` or `postgres://...`), applying
/// migrations.
pub async fn open(url: &str) -> Result<Store, StoreError> {
    open_with_clock(url, duet_common::clock::system()).await
}

/// [`open`], with the time read from `clock`.
pub async fn open_with_clock(url: &str, clock: duet_common::clock::SharedClock) -> Result<Store, StoreError> {
    Ok(Arc::new(super::sql::SqlStore::open(url).await?.with_clock(clock)))
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
