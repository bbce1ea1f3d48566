//! What both roles store, on SQL: each [`Storage`] method runs its transaction (in
//! [`super::tasks`] and [`super::keys`]), again when it lost a serialization race
//! ([`SqlStore::retrying`]). The leader's and the helper's steps are in their own crates, on
//! the same [`SqlStore`].

use super::SqlStore;
use crate::storage::*;
use duet_common::hpke::HpkeKeypair;
use duet_common::messages::*;
use duet_common::task::AggregatorTaskRequest;
use std::sync::Arc;

#[async_trait::async_trait]
impl Storage for SqlStore {
    fn clock(&self) -> &duet_common::clock::SharedClock {
        &self.clock
    }
    async fn put_task(&self, role: Role, req: &AggregatorTaskRequest) -> Result<Arc<Task>, StoreError> {
        self.put_task_afresh(role, req).await
    }
    async fn task(&self, id: &TaskId) -> Result<Arc<Task>, StoreError> {
        self.retrying(|| self.task_inner(id)).await
    }
    async fn delete_task(&self, id: &TaskId) -> Result<bool, StoreError> {
        self.retrying(|| self.delete_task_inner(id)).await
    }
    async fn task_ids(&self) -> Result<Vec<TaskId>, StoreError> {
        self.retrying(|| self.task_ids_inner()).await
    }
    async fn hpke_keypairs(&self) -> Result<Vec<(HpkeKeypair, HpkeKeyState)>, StoreError> {
        self.retrying(|| self.hpke_keypairs_inner()).await
    }
    async fn hpke_keys(&self) -> Result<Vec<HpkeKeyRecord>, StoreError> {
        self.retrying(|| self.hpke_keys_inner()).await
    }
    async fn add_hpke_key(&self, keypair: &HpkeKeypair) -> Result<HpkeKeyRecord, StoreError> {
        let added = self.retrying(|| self.add_hpke_key_inner(keypair)).await;
        self.forget_keypairs();
        added
    }
    async fn set_hpke_key_state(&self, id: HpkeConfigId, state: HpkeKeyState) -> Result<HpkeKeyRecord, StoreError> {
        let set = self.retrying(|| self.set_hpke_key_state_inner(id, state)).await;
        self.forget_keypairs();
        set
    }
    async fn delete_hpke_key(&self, id: HpkeConfigId, force: bool) -> Result<(), StoreError> {
        let deleted = self.retrying(|| self.delete_hpke_key_inner(id, force)).await;
        self.forget_keypairs();
        deleted
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
}
