//! [`HelperStore`] on duet-server's [`SqlStore`]: each method runs its step's transaction (in
//! [`super::steps`]), again when it lost a serialization race ([`SqlStore::retrying`]).

use super::{gc, steps, *};
use duet_common::messages::*;
use duet_server::sql::SqlStore;
use std::collections::HashMap;

#[async_trait::async_trait]
impl HelperStore for SqlStore {
    async fn helper_job(&self, task: &Task, job_id: &AggregationJobId) -> Result<Option<HelperJob>, StoreError> {
        self.retrying(|| steps::helper_job(self, task, job_id)).await
    }
    async fn helper_init_job(&self, task: &Task, step: HelperStep) -> Result<Option<AggregationJobResp>, StoreError> {
        self.retrying(|| steps::helper_init_job(self, task, step.clone())).await
    }
    async fn helper_kept_states(
        &self,
        task: &Task,
        job_id: &AggregationJobId,
    ) -> Result<HashMap<ReportId, KeptState>, StoreError> {
        self.retrying(|| steps::helper_kept_states(self, task, job_id)).await
    }
    async fn helper_continue_job(
        &self,
        task: &Task,
        from: AggregationJobStep,
        step: HelperStep,
    ) -> Result<Option<AggregationJobResp>, StoreError> {
        self.retrying(|| steps::helper_continue_job(self, task, from, step.clone())).await
    }
    async fn helper_delete_job(&self, task: &Task, job_id: &AggregationJobId) -> Result<(), StoreError> {
        self.retrying(|| steps::helper_delete_job(self, task, job_id)).await
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
        self.retrying(|| steps::helper_defer_step(self, task, job_id, step, digest, owner, lease_seconds)).await
    }
    async fn helper_step_deferred(
        &self,
        task: &Task,
        job_id: &AggregationJobId,
        step: AggregationJobStep,
    ) -> Result<bool, StoreError> {
        self.retrying(|| steps::helper_step_deferred(self, task, job_id, step)).await
    }
    async fn helper_renew_deferred(&self, owner: &[u8; 16], lease_seconds: i64) -> Result<(), StoreError> {
        self.retrying(|| steps::helper_renew_deferred(self, owner, lease_seconds)).await
    }
    async fn helper_drop_deferred(
        &self,
        task: &Task,
        job_id: &AggregationJobId,
        step: AggregationJobStep,
    ) -> Result<(), StoreError> {
        self.retrying(|| steps::helper_drop_deferred(self, task, job_id, step)).await
    }
    async fn helper_aggregate_share(&self, task: &Task, id: &AggregateShareId) -> Result<Option<Vec<u8>>, StoreError> {
        self.retrying(|| steps::helper_aggregate_share(self, task, id)).await
    }
    async fn helper_release_aggregate_share(
        &self,
        task: &Task,
        id: &AggregateShareId,
        digest: &[u8; 32],
        batch: &Batch,
        req: &AggregateShareReq,
    ) -> Result<ShareRelease, StoreError> {
        self.retrying(|| steps::helper_release_aggregate_share(self, task, id, digest, batch, req)).await
    }
    async fn helper_delete_aggregate_share(&self, task: &Task, id: &AggregateShareId) -> Result<bool, StoreError> {
        self.retrying(|| steps::helper_delete_aggregate_share(self, task, id)).await
    }
    async fn collect_garbage(
        &self,
        settings: &duet_server::gc::GcSettings,
    ) -> Result<duet_server::gc::GcReport, StoreError> {
        gc::collect_garbage(self, settings).await
    }
}
