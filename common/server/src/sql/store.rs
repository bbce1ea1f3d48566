//! The [`Storage`] trait on SQL: each method runs its step's transaction (in [`super::leader`],
//! [`super::leases`], [`super::collect`], [`super::helper`] and the rest), again when it lost a
//! serialization race.

use super::{collect, helper, leader, leases, Backend, SqlStore};
use crate::storage::*;
use duet_common::hpke::HpkeKeypair;
use duet_common::messages::*;
use duet_common::task::AggregatorTaskRequest;
use sqlx::Row;
use std::collections::HashMap;
use std::sync::Arc;

#[async_trait::async_trait]
impl Storage for SqlStore {
    fn clock(&self) -> &duet_common::clock::SharedClock {
        &self.clock
    }
    async fn put_task(&self, role: Role, req: &AggregatorTaskRequest) -> Result<Arc<Task>, StoreError> {
        retrying!(self.put_task_inner(role, req).await)
    }
    async fn task(&self, id: &TaskId) -> Result<Arc<Task>, StoreError> {
        retrying!(self.task_inner(id).await)
    }
    async fn delete_task(&self, id: &TaskId) -> Result<bool, StoreError> {
        retrying!(self.delete_task_inner(id).await)
    }
    async fn task_ids(&self) -> Result<Vec<TaskId>, StoreError> {
        retrying!(self.task_ids_inner().await)
    }
    async fn hpke_keypairs(&self) -> Result<Vec<(HpkeKeypair, HpkeKeyState)>, StoreError> {
        retrying!(self.hpke_keypairs_inner().await)
    }
    async fn hpke_keys(&self) -> Result<Vec<HpkeKeyRecord>, StoreError> {
        retrying!(self.hpke_keys_inner().await)
    }
    async fn add_hpke_key(&self, keypair: &HpkeKeypair) -> Result<HpkeKeyRecord, StoreError> {
        retrying!(self.add_hpke_key_inner(keypair).await)
    }
    async fn set_hpke_key_state(&self, id: HpkeConfigId, state: HpkeKeyState) -> Result<HpkeKeyRecord, StoreError> {
        retrying!(self.set_hpke_key_state_inner(id, state).await)
    }
    async fn delete_hpke_key(&self, id: HpkeConfigId, force: bool) -> Result<(), StoreError> {
        retrying!(self.delete_hpke_key_inner(id, force).await)
    }
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(StoreError::from)?;
        Ok(())
    }
    fn pool_status(&self) -> PoolStatus {
        PoolStatus {
            size: self.pool.size(),
            idle: self.pool.num_idle() as u32,
            max: self.pool.options().get_max_connections(),
        }
    }
    async fn aggregation_job_counts(&self) -> Result<Vec<(LeaderJobState, i64)>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM leader_aggregation_jobs GROUP BY state")
            .fetch_all(&self.pool)
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
        leader::backlog(self).await
    }
    async fn batch_overlaps_collected(&self, task: &Task, batch: &Batch) -> Result<bool, StoreError> {
        let mut tx = self.begin_read().await?;
        let overlaps = Self::batch_overlaps_collected_tx(&mut tx, task, batch).await?;
        tx.commit().await?;
        Ok(overlaps)
    }

    fn writes_one_at_a_time(&self) -> bool {
        self.backend == Backend::Sqlite
    }
    async fn put_reports(
        &self,
        task: &Task,
        reports: &[&EncodedReport<'_>],
    ) -> Result<Vec<Option<ReportError>>, StoreError> {
        retrying!(leader::put_reports(self, task, reports).await)
    }
    async fn tasks_with_unaggregated_reports(&self) -> Result<Vec<TaskId>, StoreError> {
        retrying!(leader::tasks_with_unaggregated_reports(self).await)
    }
    async fn create_aggregation_jobs(&self, task: &Task, sizes: &JobSizes) -> Result<usize, StoreError> {
        retrying!(leader::create_jobs(self, task, sizes).await)
    }
    async fn acquire_aggregation_jobs(&self, limit: usize, lease_seconds: i64) -> Result<Vec<LeasedJob>, StoreError> {
        retrying!(leases::acquire_jobs(self, limit, lease_seconds).await)
    }
    async fn aggregation_job_reports(&self, job: &LeasedJob) -> Result<Vec<JobReport>, StoreError> {
        retrying!(leader::job_reports(self, job).await)
    }
    async fn commit_aggregation_job(
        &self,
        task: &Task,
        job: &LeasedJob,
        outcomes: Vec<ReportOutcome>,
    ) -> Result<StepCounts, StoreError> {
        retrying!(leader::commit_job(self, task, job, outcomes.clone()).await)
    }
    async fn advance_aggregation_job(
        &self,
        task: &Task,
        job: &LeasedJob,
        helper_job: &str,
        rejected: &[(ReportId, ReportError)],
        pending: &[VerifyingReport],
    ) -> Result<bool, StoreError> {
        retrying!(leases::advance_job(self, task, job, helper_job, rejected, pending).await)
    }
    async fn pending_reports(&self, task: &Task, job: &LeasedJob) -> Result<Vec<VerifyingReport>, StoreError> {
        retrying!(leases::pending_reports(self, task, job).await)
    }
    async fn renew_aggregation_job_lease(
        &self,
        job: &LeasedJob,
        lease_seconds: i64,
        note: Option<&str>,
    ) -> Result<bool, StoreError> {
        retrying!(leases::renew_lease(self, job, lease_seconds, note).await)
    }
    async fn pin_aggregation_job_request(&self, job: &LeasedJob, digest: &[u8; 32]) -> Result<bool, StoreError> {
        retrying!(leases::pin_request(self, job, digest).await)
    }
    async fn retry_aggregation_job(
        &self,
        task: &Task,
        job: &LeasedJob,
        delay_seconds: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        retrying!(leases::retry_job(self, task, job, delay_seconds, error).await)
    }
    async fn abandon_aggregation_job(
        &self,
        task: &Task,
        job: &LeasedJob,
        error: &str,
        reports: AbandonedReports,
    ) -> Result<(), StoreError> {
        retrying!(leases::abandon_job(self, task, job, error, reports).await)
    }
    async fn collection_job_by_digest(
        &self,
        task: &Task,
        digest: &[u8],
    ) -> Result<Option<CollectionJobRow>, StoreError> {
        retrying!(collect::collection_job_by_digest(self, task, digest).await)
    }
    async fn collection_job(&self, task: &Task, id: &CollectionJobId) -> Result<Option<CollectionJobRow>, StoreError> {
        retrying!(collect::collection_job(self, task, id).await)
    }
    async fn insert_collection_job(
        &self,
        task: &Task,
        request: &[u8],
        digest: &[u8],
    ) -> Result<CollectionJobId, StoreError> {
        retrying!(collect::insert_collection_job(self, task, request, digest).await)
    }
    async fn delete_collection_job(&self, task: &Task, id: &CollectionJobId) -> Result<bool, StoreError> {
        retrying!(collect::delete_collection_job(self, task, id).await)
    }
    async fn privacy_budget_spent(&self, task: &Task) -> Result<f64, StoreError> {
        retrying!(collect::privacy_budget_spent(self, task).await)
    }
    async fn acquire_collection_jobs(
        &self,
        limit: usize,
        lease_seconds: i64,
    ) -> Result<Vec<LeasedCollectionJob>, StoreError> {
        retrying!(collect::acquire_collection_jobs(self, limit, lease_seconds).await)
    }
    async fn renew_collection_job_lease(
        &self,
        job: &LeasedCollectionJob,
        lease_seconds: i64,
    ) -> Result<bool, StoreError> {
        retrying!(collect::renew_collection_lease(self, job, lease_seconds).await)
    }
    async fn commit_collection_batch(
        &self,
        task: &Task,
        job: &CollectionJobRow,
        seal: SealShare<'_>,
    ) -> Result<BatchReadiness, StoreError> {
        retrying!(collect::commit_collection_batch(self, task, job, seal).await)
    }
    async fn defer_collection_job(
        &self,
        task: &Task,
        id: &CollectionJobId,
        delay_seconds: i64,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        retrying!(collect::defer_collection_job(self, task, id, delay_seconds, error).await)
    }
    async fn end_collection_job(
        &self,
        task: &Task,
        id: &CollectionJobId,
        outcome: Result<Vec<u8>, JobFailure>,
    ) -> Result<(), StoreError> {
        retrying!(collect::end_collection_job(self, task, id, outcome.clone()).await)
    }

    async fn helper_job(&self, task: &Task, job_id: &AggregationJobId) -> Result<Option<HelperJob>, StoreError> {
        retrying!(helper::helper_job(self, task, job_id).await)
    }
    async fn helper_init_job(&self, task: &Task, step: HelperStep) -> Result<Option<AggregationJobResp>, StoreError> {
        retrying!(helper::helper_init_job(self, task, step.clone()).await)
    }
    async fn helper_kept_states(
        &self,
        task: &Task,
        job_id: &AggregationJobId,
    ) -> Result<HashMap<ReportId, KeptState>, StoreError> {
        retrying!(helper::helper_kept_states(self, task, job_id).await)
    }
    async fn helper_continue_job(
        &self,
        task: &Task,
        from: AggregationJobStep,
        step: HelperStep,
    ) -> Result<Option<AggregationJobResp>, StoreError> {
        retrying!(helper::helper_continue_job(self, task, from, step.clone()).await)
    }
    async fn helper_delete_job(&self, task: &Task, job_id: &AggregationJobId) -> Result<(), StoreError> {
        retrying!(helper::helper_delete_job(self, task, job_id).await)
    }
    async fn helper_defer_step(
        &self,
        task: &Task,
        job_id: &AggregationJobId,
        step: AggregationJobStep,
        digest: &[u8; 32],
        owner: &[u8; 16],
        lease_seconds: i64,
    ) -> Result<(), StoreError> {
        retrying!(helper::helper_defer_step(self, task, job_id, step, digest, owner, lease_seconds).await)
    }
    async fn helper_step_deferred(
        &self,
        task: &Task,
        job_id: &AggregationJobId,
        step: AggregationJobStep,
    ) -> Result<bool, StoreError> {
        retrying!(helper::helper_step_deferred(self, task, job_id, step).await)
    }
    async fn helper_renew_deferred(&self, owner: &[u8; 16], lease_seconds: i64) -> Result<(), StoreError> {
        retrying!(helper::helper_renew_deferred(self, owner, lease_seconds).await)
    }
    async fn helper_drop_deferred(
        &self,
        task: &Task,
        job_id: &AggregationJobId,
        step: AggregationJobStep,
    ) -> Result<(), StoreError> {
        retrying!(helper::helper_drop_deferred(self, task, job_id, step).await)
    }
    async fn helper_aggregate_share(&self, task: &Task, id: &AggregateShareId) -> Result<Option<Vec<u8>>, StoreError> {
        retrying!(helper::helper_aggregate_share(self, task, id).await)
    }
    async fn helper_release_aggregate_share(
        &self,
        task: &Task,
        id: &AggregateShareId,
        digest: &[u8; 32],
        batch: &Batch,
        build: BuildShare<'_>,
    ) -> Result<ShareRelease, StoreError> {
        retrying!(helper::helper_release_aggregate_share(self, task, id, digest, batch, build).await)
    }
    async fn helper_delete_aggregate_share(&self, task: &Task, id: &AggregateShareId) -> Result<bool, StoreError> {
        retrying!(helper::helper_delete_aggregate_share(self, task, id).await)
    }
}
