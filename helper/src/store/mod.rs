//! The helper's storage: the [`HelperStore`] trait, whose methods are each one transaction of one
//! of the helper's protocol steps (a job's initialisation or continuation, a deferred step, an
//! aggregate share's release), with the records they exchange; and its SQL implementation
//! ([`sql`], the steps in [`steps`], garbage collection in [`gc`]). What both servers store (tasks, HPKE keys, batch buckets)
//! is duet-server's [`Storage`], which this trait extends.

mod gc;
mod sql;
mod steps;

use duet_common::messages::*;
use duet_common::time::Time;
use duet_common::vdaf::{OutputShare, VerifyState};
use duet_server::sealing::DatabaseKeys;
pub use duet_server::storage::*;
use std::collections::HashMap;
use std::sync::Arc;

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

/// The helper's storage interface: every method is one transaction.
#[async_trait::async_trait]
pub trait HelperStore: Storage {
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
    /// Releases the batch's aggregate share: overlap check, the values checked against the
    /// leader's `req` and the share encrypted to the collector
    /// ([`crate::collect::build_share`]), batch marked collected, share stored under `id`.
    async fn helper_release_aggregate_share(
        &self,
        task: &Task,
        id: &AggregateShareId,
        digest: &[u8; 32],
        batch: &Batch,
        req: &AggregateShareReq,
    ) -> Result<ShareRelease, StoreError>;
    async fn helper_delete_aggregate_share(&self, task: &Task, id: &AggregateShareId) -> Result<bool, StoreError>;

    // -- helper: data lifecycle --

    /// One garbage-collection pass (see [`gc`]): deletes what expired or is over, in bounded
    /// transactions.
    async fn collect_garbage(
        &self,
        settings: &duet_server::gc::GcSettings,
    ) -> Result<duet_server::gc::GcReport, StoreError>;
}

/// The storage the helper holds.
pub type Store = Arc<dyn HelperStore>;

/// Opens the helper's storage a database URL names (`sqlite:...` or `postgres://...`),
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
