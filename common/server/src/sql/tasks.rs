//! Provisioned tasks on SQL: stored once, read through a per-process cache.

use super::SqlStore;
use crate::storage::*;
use duet_common::messages::*;
use duet_common::task::{AggregatorTaskRequest, TaskParameters};
use duet_common::vdaf::VerifyKey;
use duet_common::{Decode, Encode};
use sqlx::Row;
use std::sync::Arc;

impl SqlStore {
    /// Provisions a task; provisioning the identical task again is a no-op, a different one
    /// under the same ID is a conflict.
    pub(super) async fn put_task_inner(
        &self,
        role: Role,
        req: &AggregatorTaskRequest,
    ) -> Result<Arc<Task>, StoreError> {
        let task = Task::from_request(role, req)?;
        let params = serde_json::to_string(&req.parameters).map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut tx = self.begin().await?;
        let existing = sqlx::query("SELECT parameters, role FROM tasks WHERE task_id = $1")
            .bind(task.id.as_bytes().as_slice())
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        if let Some(row) = existing {
            let stored: String = row.get(0);
            let stored_role: i64 = row.get(1);
            if stored != params || stored_role != role as i64 {
                return Err(StoreError::Conflict(format!("task {} exists with other parameters", task.id)));
            }
        } else {
            sqlx::query(
                "INSERT INTO tasks (task_id, role, parameters, vdaf_verify_key, aggregator_auth_token,
                 collector_auth_token, collector_hpke_config, max_batch_size, created_at_seconds)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(task.id.as_bytes().as_slice())
            .bind(role as i64)
            .bind(&params)
            .bind(task.verify_key.as_bytes().as_slice())
            .bind(task.aggregator_auth_token.expose())
            .bind(task.collector_auth_token.as_ref().map(|t| t.expose().to_string()))
            .bind(task.collector_hpke_config.get_encoded().map_err(|e| StoreError::Internal(e.to_string()))?)
            .bind(task.max_batch_size.map(|m| m as i64))
            .bind(self.now_seconds())
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        }
        tx.commit().await.map_err(StoreError::from)?;
        let task = Arc::new(task);
        self.tasks.write().unwrap_or_else(|e| e.into_inner()).insert(task.id, task.clone());
        Ok(task)
    }

    /// The task, from the cache or the database; `unrecognizedTask` if unknown.
    pub(super) async fn task_inner(&self, id: &TaskId) -> Result<Arc<Task>, StoreError> {
        if let Some(t) = self.tasks.read().unwrap_or_else(|e| e.into_inner()).get(id) {
            return Ok(t.clone());
        }
        let row = sqlx::query(
            "SELECT role, parameters, vdaf_verify_key, aggregator_auth_token, collector_auth_token,
             collector_hpke_config, max_batch_size FROM tasks WHERE task_id = $1",
        )
        .bind(id.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::from)?
        .ok_or(StoreError::UnknownTask(*id))?;
        let corrupt = |what: &str| StoreError::Corrupt(format!("stored task {id}: bad {what}"));
        let role = match row.get::<i64, _>(0) {
            2 => Role::Leader,
            3 => Role::Helper,
            _ => return Err(corrupt("role")),
        };
        let parameters: TaskParameters = serde_json::from_str(row.get(1)).map_err(|_| corrupt("parameters"))?;
        let key: Vec<u8> = row.get(2);
        let collector_config: Vec<u8> = row.get(5);
        let req = AggregatorTaskRequest {
            parameters,
            vdaf_verify_key: VerifyKey::from_bytes(key.try_into().map_err(|_| corrupt("verify key"))?).to_base64(),
            aggregator_auth_token: row.get(3),
            collector_auth_token: row.get(4),
            collector_hpke_config: duet_common::task::hpke_config_to_b64(
                &HpkeConfig::get_decoded(&collector_config).map_err(|_| corrupt("collector config"))?,
            ),
            max_batch_size: row.get::<Option<i64>, _>(6).map(|m| m as u64),
        };
        let task = Arc::new(Task::from_request(role, &req).map_err(|_| corrupt("task"))?);
        self.tasks.write().unwrap_or_else(|e| e.into_inner()).insert(*id, task.clone());
        Ok(task)
    }

    pub(super) async fn delete_task_inner(&self, id: &TaskId) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM tasks WHERE task_id = $1")
            .bind(id.as_bytes().as_slice())
            .execute(&self.pool)
            .await
            .map_err(StoreError::from)?;
        self.tasks.write().unwrap_or_else(|e| e.into_inner()).remove(id);
        Ok(done.rows_affected() > 0)
    }

    pub(super) async fn task_ids_inner(&self) -> Result<Vec<TaskId>, StoreError> {
        let rows = sqlx::query("SELECT task_id FROM tasks").fetch_all(&self.pool).await.map_err(StoreError::from)?;
        Ok(rows.iter().filter_map(|r| TaskId::try_from(r.get::<Vec<u8>, _>(0).as_slice()).ok()).collect())
    }
}
