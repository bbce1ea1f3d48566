//! Provisioned tasks on SQL: stored once, their secrets sealed or digested
//! ([`crate::sealing`]), read through a per-process cache.

use super::{SqlStore, TaskCache, TASK_CACHE_SECONDS, UNKNOWN_TASKS_CACHED, UNKNOWN_TASK_CACHE_SECONDS};
use crate::sealing::{OpenError, SealedColumn};
use crate::storage::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use duet_common::auth::{AuthenticationToken, TokenHash};
use duet_common::messages::*;
use duet_common::task::{AggregatorTaskRequest, TaskParameters};
use duet_common::vdaf::VerifyKey;
use duet_common::{Decode, Encode};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::sync::Arc;

const TASK_COLUMNS: &str = "role, parameters, vdaf_verify_key, aggregator_auth_token, collector_auth_token,
    collector_hpke_config, max_batch_size, report_expiry_age";

/// How a stored task's tokens are written in their text columns: a token the server presents
/// is sealed (`sealed:` and the sealed value in URL-safe base64), one it only checks digested
/// (`sha256:` and the digest). Tokens themselves never hold a `:`, so neither is mistaken for a
/// token a database written before sealing holds in the clear.
const SEALED: &str = "sealed:";
const DIGEST: &str = "sha256:";

/// The fingerprint of a deleted task once the garbage collector has begun deleting its rows
/// (a real fingerprint is a 32-byte digest): from then on the task is never restored.
pub(super) const PURGING: &[u8] = b"purging";

fn digest_text(hash: &TokenHash) -> String {
    format!("{DIGEST}{}", URL_SAFE_NO_PAD.encode(hash.as_bytes()))
}

fn sealed_text(sealed: &[u8]) -> String {
    format!("{SEALED}{}", URL_SAFE_NO_PAD.encode(sealed))
}

impl SqlStore {
    /// Provisions a task; provisioning the identical task again (secrets included) is a no-op,
    /// a different one under the same ID is a conflict. `restore`: the task restores a deleted
    /// one with its rows, which holds only while the garbage collector has not begun deleting
    /// them; `None` if it has meanwhile (the caller then starts the task afresh).
    pub(super) async fn put_task_inner(
        &self,
        role: Role,
        req: &AggregatorTaskRequest,
        restore: bool,
    ) -> Result<Option<Arc<Task>>, StoreError> {
        let task = Task::from_request(role, req)?;
        let params = serde_json::to_string(&req.parameters).map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut tx = self.begin().await?;
        let existing = sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = $1"))
            .bind(task.id.as_bytes().as_slice())
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        if let Some(row) = existing {
            if !self.task_of_row(&task.id, &row)?.same_as(&task) {
                return Err(StoreError::Conflict(format!(
                    "task {} exists with other parameters or secrets; delete it first to provision it anew",
                    task.id
                )));
            }
        } else {
            if restore {
                // Taking the deletion record is what decides a restore, in the transaction that
                // inserts the task: a purge claims the record first (`PURGING`), so exactly one
                // of the two goes ahead.
                let taken = sqlx::query(
                    "DELETE FROM deleted_tasks WHERE task_id = $1 AND (fingerprint IS NULL OR fingerprint <> $2)",
                )
                .bind(task.id.as_bytes().as_slice())
                .bind(PURGING)
                .execute(&mut *tx)
                .await?;
                if taken.rows_affected() == 0 {
                    return Ok(None);
                }
            } else {
                sqlx::query("DELETE FROM deleted_tasks WHERE task_id = $1")
                    .bind(task.id.as_bytes().as_slice())
                    .execute(&mut *tx)
                    .await?;
            }
            let (verify_key, aggregator_token, collector_token) = self.sealed_secrets(&task);
            sqlx::query(
                "INSERT INTO tasks (task_id, role, parameters, vdaf_verify_key, aggregator_auth_token,
                 collector_auth_token, collector_hpke_config, max_batch_size, created_at_seconds, report_expiry_age)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(task.id.as_bytes().as_slice())
            .bind(role as i64)
            .bind(&params)
            .bind(verify_key)
            .bind(aggregator_token)
            .bind(collector_token)
            .bind(task.collector_hpke_config.get_encoded().map_err(|e| StoreError::Internal(e.to_string()))?)
            .bind(task.max_batch_size.map(|m| m as i64))
            .bind(self.now_seconds())
            .bind(task.report_expiry_age.map(|a| a as i64))
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        }
        tx.commit().await.map_err(StoreError::from)?;
        let task = Arc::new(task);
        self.cache_task(task.id, Some(task.clone()), self.now_seconds());
        Ok(Some(task))
    }

    /// Remembers the task read under `id` at `now`, or that there is none.
    fn cache_task(&self, id: TaskId, task: Option<Arc<Task>>, now: i64) {
        let mut cache = self.tasks.write().unwrap_or_else(|e| e.into_inner());
        let TaskCache { known, unknown } = &mut *cache;
        match task {
            Some(task) => {
                unknown.remove(&id);
                known.insert(id, (task, now));
            }
            None => {
                if unknown.len() >= UNKNOWN_TASKS_CACHED {
                    // A flood of made-up IDs: forget them rather than grow without bound.
                    unknown.clear();
                }
                known.remove(&id);
                unknown.insert(id, now);
            }
        }
    }

    /// A task's secrets as stored: the verify key sealed, the aggregator token sealed (leader)
    /// or digested (helper), the collector's token digested.
    fn sealed_secrets(&self, task: &Task) -> (Vec<u8>, String, Option<String>) {
        let row = task.id.as_bytes().as_slice();
        let verify_key = self.keys.seal(SealedColumn::VerifyKey, row, task.verify_key.as_bytes());
        let aggregator_token = match &task.aggregator_token {
            AggregatorToken::Presented(token) => {
                sealed_text(&self.keys.seal(SealedColumn::AggregatorToken, row, token.expose().as_bytes()))
            }
            AggregatorToken::Checked(hash) => digest_text(hash),
        };
        (verify_key, aggregator_token, task.collector_token.as_ref().map(digest_text))
    }

    /// The task, from memory ([`TASK_CACHE_SECONDS`]) or the database; `unrecognizedTask` if
    /// unknown (remembered for [`UNKNOWN_TASK_CACHE_SECONDS`]).
    pub(super) async fn task_inner(&self, id: &TaskId) -> Result<Arc<Task>, StoreError> {
        let now = self.now_seconds();
        {
            let cache = self.tasks.read().unwrap_or_else(|e| e.into_inner());
            if let Some((task, _)) = cache.known.get(id).filter(|(_, at)| now - at < TASK_CACHE_SECONDS) {
                return Ok(task.clone());
            }
            if cache.unknown.get(id).is_some_and(|at| now - at < UNKNOWN_TASK_CACHE_SECONDS) {
                return Err(StoreError::UnknownTask(*id));
            }
        }
        let row = sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = $1"))
            .bind(id.as_bytes().as_slice())
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::from)?;
        let Some(row) = row else {
            self.cache_task(*id, None, now);
            return Err(StoreError::UnknownTask(*id));
        };
        let task = Arc::new(self.task_of_row(id, &row)?);
        self.cache_task(*id, Some(task.clone()), now);
        Ok(task)
    }

    /// A task from its row ([`TASK_COLUMNS`]), its secrets opened.
    fn task_of_row(&self, id: &TaskId, row: &AnyRow) -> Result<Task, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("stored task {id}: bad {what}"));
        let unopened = |what: &str, e: OpenError| StoreError::Sealed(format!("stored task {id}: its {what} {e}"));
        let role = match row.get::<i64, _>("role") {
            2 => Role::Leader,
            3 => Role::Helper,
            _ => return Err(corrupt("role")),
        };
        let parameters: TaskParameters =
            serde_json::from_str(row.get("parameters")).map_err(|_| corrupt("parameters"))?;
        let tid = id.as_bytes().as_slice();
        let key = self
            .keys
            .open(SealedColumn::VerifyKey, tid, &row.get::<Vec<u8>, _>("vdaf_verify_key"))
            .map_err(|e| unopened("verify key", e))?;
        let verify_key = VerifyKey::from_bytes(key.as_slice().try_into().map_err(|_| corrupt("verify key"))?);
        let digest = |text: &str| -> Result<TokenHash, StoreError> {
            let bytes = text.strip_prefix(DIGEST).and_then(|b| URL_SAFE_NO_PAD.decode(b).ok());
            Ok(TokenHash::from_bytes(bytes.and_then(|b| b.try_into().ok()).ok_or_else(|| corrupt("token digest"))?))
        };
        let aggregator_text: String = row.get("aggregator_auth_token");
        let aggregator_token = match role {
            Role::Leader => {
                let sealed = aggregator_text
                    .strip_prefix(SEALED)
                    .and_then(|b| URL_SAFE_NO_PAD.decode(b).ok())
                    .ok_or_else(|| unopened("aggregator token", OpenError::NotSealed))?;
                let token = self
                    .keys
                    .open(SealedColumn::AggregatorToken, tid, &sealed)
                    .map_err(|e| unopened("aggregator token", e))?;
                let token = std::str::from_utf8(&token).map_err(|_| corrupt("aggregator token"))?;
                AggregatorToken::Presented(AuthenticationToken::new(token).map_err(|_| corrupt("aggregator token"))?)
            }
            _ => AggregatorToken::Checked(digest(&aggregator_text)?),
        };
        let collector_token = match role {
            Role::Leader => row.get::<Option<String>, _>("collector_auth_token").map(|t| digest(&t)).transpose()?,
            _ => None,
        };
        let collector_config: Vec<u8> = row.get("collector_hpke_config");
        Task::stored(
            role,
            parameters,
            verify_key,
            aggregator_token,
            collector_token,
            HpkeConfig::get_decoded(&collector_config).map_err(|_| corrupt("collector config"))?,
            row.get::<Option<i64>, _>("max_batch_size").map(|m| m as u64),
            row.get::<Option<i64>, _>("report_expiry_age").map(|a| a as u64),
        )
        .map_err(|e| corrupt(&format!("task ({e})")))
    }

    /// Seals the task secrets a database written before sealing holds in the clear (and digests
    /// the tokens the server only checks), and seals again under the first database key what an
    /// older key sealed (at start-up). Returns how many tasks changed.
    pub(super) async fn seal_stored_task_secrets(&self) -> Result<usize, StoreError> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(
            "SELECT task_id, role, vdaf_verify_key, aggregator_auth_token, collector_auth_token FROM tasks",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut changed = 0;
        for r in &rows {
            let tid: Vec<u8> = r.get("task_id");
            let what = |what: &str, e: String| {
                let id = TaskId::try_from(tid.as_slice()).map(|t| t.to_string()).unwrap_or_default();
                StoreError::Sealed(format!("stored task {id}: its {what} {e}"))
            };
            // The value in the clear, or opened from its seal under an older key.
            let reseal = |column: SealedColumn, stored: &[u8]| -> Result<Option<Vec<u8>>, StoreError> {
                let name = if column == SealedColumn::VerifyKey { "verify key" } else { "aggregator token" };
                self.keys.reseal(column, &tid, stored).map_err(|e| what(name, e.to_string()))
            };
            let token_digest = |text: &str| -> Result<String, StoreError> {
                let token = AuthenticationToken::new(text).map_err(|e| what("token", format!("is malformed ({e})")))?;
                Ok(digest_text(&TokenHash::of(&token)))
            };
            let verify_key = reseal(SealedColumn::VerifyKey, &r.get::<Vec<u8>, _>("vdaf_verify_key"))?;
            let aggregator: String = r.get("aggregator_auth_token");
            let aggregator = match (r.get::<i64, _>("role"), aggregator.strip_prefix(SEALED)) {
                (2, Some(sealed)) => {
                    let sealed = URL_SAFE_NO_PAD
                        .decode(sealed)
                        .map_err(|e| what("aggregator token", format!("is not base64 ({e})")))?;
                    reseal(SealedColumn::AggregatorToken, &sealed)?.map(|s| sealed_text(&s))
                }
                (2, None) => reseal(SealedColumn::AggregatorToken, aggregator.as_bytes())?.map(|s| sealed_text(&s)),
                _ if aggregator.starts_with(DIGEST) => None,
                _ => Some(token_digest(&aggregator)?),
            };
            let collector = match r.get::<Option<String>, _>("collector_auth_token") {
                Some(text) if !text.starts_with(DIGEST) => Some(token_digest(&text)?),
                _ => None,
            };
            if verify_key.is_none() && aggregator.is_none() && collector.is_none() {
                continue;
            }
            sqlx::query(
                "UPDATE tasks SET vdaf_verify_key = COALESCE($1, vdaf_verify_key),
                 aggregator_auth_token = COALESCE($2, aggregator_auth_token),
                 collector_auth_token = COALESCE($3, collector_auth_token) WHERE task_id = $4",
            )
            .bind(verify_key)
            .bind(aggregator)
            .bind(collector)
            .bind(&tid)
            .execute(&mut *tx)
            .await?;
            changed += 1;
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// Deletes a task and remembers its ID (and its fingerprint), so that the garbage collector
    /// deletes every row it left once the grace period has passed
    /// ([`SqlStore::purge_deleted_tasks`]); until then, provisioning the identical task again
    /// restores it.
    pub(super) async fn delete_task_inner(&self, id: &TaskId) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = $1"))
            .bind(id.as_bytes().as_slice())
            .fetch_optional(&mut *tx)
            .await?;
        // A task whose secrets no configured key opens is deleted all the same, just not
        // restorable.
        let fingerprint = row.as_ref().and_then(|r| self.task_of_row(id, r).ok()).map(|t| t.fingerprint().to_vec());
        let done = sqlx::query("DELETE FROM tasks WHERE task_id = $1")
            .bind(id.as_bytes().as_slice())
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        if done.rows_affected() > 0 {
            sqlx::query(
                "INSERT INTO deleted_tasks (task_id, fingerprint, deleted_at_seconds) VALUES ($1, $2, $3)
                 ON CONFLICT (task_id) DO UPDATE SET fingerprint = excluded.fingerprint,
                   deleted_at_seconds = excluded.deleted_at_seconds",
            )
            .bind(id.as_bytes().as_slice())
            .bind(fingerprint)
            .bind(self.now_seconds())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.tasks.write().unwrap_or_else(|e| e.into_inner()).known.remove(id);
        Ok(done.rows_affected() > 0)
    }

    /// Provisions a task. Under the ID of a task deleted whose rows the garbage collector has
    /// not begun to delete: the identical task is restored with its rows (an accidental deletion
    /// undone); any other starts empty, what the deleted one left deleted first. (Rows left by
    /// a task deleted before schema 13, whose fingerprint is unknown, are kept.)
    pub(super) async fn put_task_afresh(
        &self,
        role: Role,
        req: &AggregatorTaskRequest,
    ) -> Result<Arc<Task>, StoreError> {
        let id = req.parameters.task_id;
        let Some(fingerprint) = self.deleted_task_fingerprint(&id).await? else {
            return self.put_task_unrestored(role, req).await;
        };
        // Without a fingerprint (a task deleted before schema 13, or whose secrets did not
        // open), the rows are kept, as they always were.
        let same = fingerprint.as_deref() != Some(PURGING)
            && fingerprint
                .is_none_or(|f| Task::from_request(role, req).is_ok_and(|t| f.as_slice() == &t.fingerprint()[..]));
        if same {
            if let Some(task) = self.retrying(|| self.put_task_inner(role, req, true)).await? {
                tracing::info!(task_id = %id, "a deleted task provisioned again identically: restored with its data");
                return Ok(task);
            }
            // The garbage collector began deleting its rows meanwhile: a restore would bring
            // back part of them.
        }
        let mut report = crate::gc::GcReport::default();
        let rows = self.purge_task_rows(&id, crate::gc::DEFAULT_BATCH_ROWS, &mut report).await?;
        tracing::info!(task_id = %id, rows, "deleted what a deleted task left before provisioning it anew");
        self.put_task_unrestored(role, req).await
    }

    async fn put_task_unrestored(&self, role: Role, req: &AggregatorTaskRequest) -> Result<Arc<Task>, StoreError> {
        let task = self.retrying(|| self.put_task_inner(role, req, false)).await?;
        task.ok_or_else(|| StoreError::Internal("a task provisioned afresh was refused as a restore".into()))
    }

    pub(super) async fn task_ids_inner(&self) -> Result<Vec<TaskId>, StoreError> {
        let rows = sqlx::query("SELECT task_id FROM tasks").fetch_all(&self.pool).await.map_err(StoreError::from)?;
        Ok(rows.iter().filter_map(|r| TaskId::try_from(r.get::<Vec<u8>, _>(0).as_slice()).ok()).collect())
    }
}
