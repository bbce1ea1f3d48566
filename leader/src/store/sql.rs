//! [`LeaderStore`] on duet-server's [`SqlStore`]: each method runs its step's transaction (in
//! [`super::reports`], [`super::leases`] and [`super::collect`]), again when it lost a
//! serialization race ([`SqlStore::retrying`]).

use super::{collect, gc, leases, reports, *};
use duet_common::messages::*;
use duet_server::sql::{Backend, SqlStore};
use sqlx::Row;

#[async_trait::async_trait]
impl LeaderStore for SqlStore {
    async fn aggregation_job_counts(&self) -> Result<Vec<(LeaderJobState, i64)>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM leader_aggregation_jobs GROUP BY state")
            .fetch_all(self.pool())
            .await
            .map_err(StoreError::from)?;
        rows.iter()
            .map(|r| {
                let state = LeaderJobState::from_db(&r.get::<String, _>(0))
                    .ok_or(StoreError::Corrupt("stored aggregation job has an unknown state".into()))?;
                Ok((state, r.get::<i64, _>(1)))
            })
            .collect()
    }
    async fn leader_backlog(&self) -> Result<LeaderBacklog, StoreError> {
        reports::backlog(self).await
    }
    async fn batch_overlaps_collected(&self, task: &Task, batch: &Batch) -> Result<bool, StoreError> {
        let mut tx = self.begin_read().await?;
        let overlaps = Self::batch_overlaps_collected_tx(&mut tx, task, batch).await?;
        tx.commit().await?;
        Ok(overlaps)
    }

    fn writes_one_at_a_time(&self) -> bool {
        self.backend() == Backend::Sqlite
    }
    async fn put_reports(
        &self,
        task: &Task,
        reports: &[&EncodedReport<'_>],
    ) -> Result<Vec<Option<ReportError>>, StoreError> {
        self.retrying(|| reports::put_reports(self, task, reports)).await
    }
    async fn tasks_with_unaggregated_reports(&self) -> Result<Vec<TaskId>, StoreError> {
        self.retrying(|| reports::tasks_with_unaggregated_reports(self)).await
    }
    async fn create_aggregation_jobs(&self, task: &Task, sizes: &JobSizes) -> Result<usize, StoreError> {
        self.retrying(|| reports::create_jobs(self, task, sizes)).await
    }
    async fn acquire_aggregation_jobs(&self, limit: usize, lease_seconds: i64) -> Result<Vec<LeasedJob>, StoreError> {
        self.retrying(|| leases::acquire_jobs(self, limit, lease_seconds)).await
    }
    async fn aggregation_job_reports(&self, job: &LeasedJob) -> Result<Vec<JobReport>, StoreError> {
        self.retrying(|| reports::job_reports(self, job)).await
    }
    async fn commit_aggregation_job(
        &self,
        task: &Task,
        job: &LeasedJob,
        outcomes: Vec<ReportOutcome>,
    ) -> Result<StepCounts, StoreError> {
        self.retrying(|| reports::commit_job(self, task, job, outcomes.clone())).await
    }
    async fn advance_aggregation_job(
        &self,
        task: &Task,
        job: &LeasedJob,
        helper_job: &str,
        rejected: &[(ReportId, ReportError)],
        pending: &[VerifyingReport],
    ) -> Result<bool, StoreError> {
        self.retrying(|| leases::advance_job(self, task, job, helper_job, rejected, pending)).await
    }
    async fn pending_reports(&self, task: &Task, job: &LeasedJob) -> Result<Vec<VerifyingReport>, StoreError> {
        self.retrying(|| leases::pending_reports(self, task, job)).await
    }
    async fn renew_aggregation_job_lease(
        &self,
        job: &LeasedJob,
        lease_seconds: i64,
        note: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.retrying(|| leases::renew_lease(self, job, lease_seconds, note)).await
    }
    async fn pin_aggregation_job_request(&self, job: &LeasedJob, digest: &[u8; 32]) -> Result<bool, StoreError> {
        self.retrying(|| leases::pin_request(self, job, digest)).await
    }
    async fn retry_aggregation_job(
        &self,
        task: &Task,
        job: &LeasedJob,
        delay_seconds: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        self.retrying(|| leases::retry_job(self, task, job, delay_seconds, error)).await
    }
    async fn abandon_aggregation_job(
        &self,
        task: &Task,
        job: &LeasedJob,
        error: &str,
        reports: AbandonedReports,
    ) -> Result<(), StoreError> {
        self.retrying(|| leases::abandon_job(self, task, job, error, reports)).await
    }
    async fn collection_job_by_digest(
        &self,
        task: &Task,
        digest: &[u8],
    ) -> Result<Option<CollectionJobRow>, StoreError> {
        self.retrying(|| collect::collection_job_by_digest(self, task, digest)).await
    }
    async fn collection_job(&self, task: &Task, id: &CollectionJobId) -> Result<Option<CollectionJobRow>, StoreError> {
        self.retrying(|| collect::collection_job(self, task, id)).await
    }
    async fn insert_collection_job(
        &self,
        task: &Task,
        request: &[u8],
        digest: &[u8],
    ) -> Result<CollectionJobId, StoreError> {
        self.retrying(|| collect::insert_collection_job(self, task, request, digest)).await
    }
    async fn delete_collection_job(&self, task: &Task, id: &CollectionJobId) -> Result<bool, StoreError> {
        self.retrying(|| collect::delete_collection_job(self, task, id)).await
    }
    async fn privacy_budget_spent(&self, task: &Task) -> Result<f64, StoreError> {
        self.retrying(|| collect::privacy_budget_spent(self, task)).await
    }
    async fn acquire_collection_jobs(
        &self,
        limit: usize,
        lease_seconds: i64,
    ) -> Result<Vec<LeasedCollectionJob>, StoreError> {
        self.retrying(|| collect::acquire_collection_jobs(self, limit, lease_seconds)).await
    }
    async fn renew_collection_job_lease(
        &self,
        job: &LeasedCollectionJob,
        lease_seconds: i64,
    ) -> Result<bool, StoreError> {
        self.retrying(|| collect::renew_collection_lease(self, job, lease_seconds)).await
    }
    async fn commit_collection_batch(&self, task: &Task, job: &CollectionJobRow) -> Result<BatchReadiness, StoreError> {
        self.retrying(|| collect::commit_collection_batch(self, task, job)).await
    }
    async fn defer_collection_job(
        &self,
        task: &Task,
        id: &CollectionJobId,
        delay_seconds: i64,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.retrying(|| collect::defer_collection_job(self, task, id, delay_seconds, error)).await
    }
    async fn end_collection_job(
        &self,
        task: &Task,
        id: &CollectionJobId,
        outcome: Result<Vec<u8>, JobFailure>,
    ) -> Result<(), StoreError> {
        self.retrying(|| collect::end_collection_job(self, task, id, outcome.clone())).await
    }
    async fn collect_garbage(
        &self,
        settings: &duet_server::gc::GcSettings,
    ) -> Result<duet_server::gc::GcReport, StoreError> {
        gc::collect_garbage(self, settings).await
    }
}
