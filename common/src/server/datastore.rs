//! The datastore: a SQLite database (WAL) reached through sqlx, with the records and the
//! transactions both aggregator roles share: tasks, HPKE keys, batch buckets and collected
//! batches. Role-specific transactions live with each role and run on [`Datastore::begin`].

use crate::auth::AuthenticationToken;
use crate::hpke::{HpkeKeypair, HpkePrivateKey};
use crate::messages::{BatchChecksum, BatchId, HpkeConfig, HpkeConfigId, Role, TaskConfiguration, TaskId};
use crate::problem::DapError;
use crate::task::{AggregatorTaskRequest, TaskParameters};
use crate::time::{Interval, Time};
use crate::vdaf::{AggregateShare, Vdaf, VerifyKey};
use crate::{Decode, Encode};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

pub type Tx<'a> = Transaction<'a, Sqlite>;

/// The migrations of `migrations/sqlite`, embedded in the binary, in order.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../../../migrations/sqlite/0002_leader_reports.sql")),
    (3, include_str!("../../../migrations/sqlite/0003_leader_jobs.sql")),
];

/// Storage failures. A lost connection is `Unavailable` (503, retry); the rest are our faults.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                StoreError::Unavailable(e.to_string())
            }
            other => StoreError::Database(other.to_string()),
        }
    }
}

impl From<StoreError> for DapError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(d) => DapError::Unavailable(d),
            other => DapError::Internal(other.to_string()),
        }
    }
}

pub fn now_seconds() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

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
        let bad = |e: crate::task::TaskError| DapError::BadRequest(e.to_string());
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
        crate::vdaf::vdaf_context(&self.id)
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

/// The database, and a cache of provisioned tasks.
#[derive(Clone)]
pub struct Datastore {
    pool: SqlitePool,
    tasks: Arc<RwLock<HashMap<TaskId, Arc<Task>>>>,
}

impl Datastore {
    /// Opens (creating if needed) the database at a `sqlite:` URL and applies migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Database(format!("bad database URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // With WAL, NORMAL still survives process crashes; only power loss can lose the
            // last transactions.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(std::time::Duration::from_secs(30))
            .connect_with(options)
            .await?;
        let store = Self { pool, tasks: Arc::default() };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the embedded migrations not yet applied, each in its own transaction.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::query("CREATE TABLE IF NOT EXISTS duet_migrations (version INTEGER PRIMARY KEY, applied_at_seconds INTEGER NOT NULL)")
            .execute(&self.pool)
            .await?;
        for (version, sql) in MIGRATIONS {
            let mut tx = self.begin().await?;
            let done = sqlx::query("SELECT 1 FROM duet_migrations WHERE version = ?")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
            if done.is_none() {
                sqlx::raw_sql(sql).execute(&mut *tx).await?;
                sqlx::query("INSERT INTO duet_migrations (version, applied_at_seconds) VALUES (?, ?)")
                    .bind(version)
                    .bind(now_seconds())
                    .execute(&mut *tx)
                    .await?;
                tracing::info!(version, "applied database migration");
            }
            tx.commit().await?;
        }
        Ok(())
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A write transaction. `BEGIN IMMEDIATE` takes the write lock up front, so two writers
    /// wait for each other instead of failing when they upgrade.
    pub async fn begin(&self) -> Result<Tx<'static>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    // ---- tasks ----

    /// Provisions a task; provisioning the identical task again is a no-op, a different one
    /// under the same ID is a conflict.
    pub async fn put_task(&self, role: Role, req: &AggregatorTaskRequest) -> Result<Arc<Task>, DapError> {
        let task = Task::from_request(role, req)?;
        let params = serde_json::to_string(&req.parameters).map_err(|e| DapError::Internal(e.to_string()))?;
        let mut tx = self.begin().await?;
        let existing = sqlx::query("SELECT parameters, role FROM tasks WHERE task_id = ?")
            .bind(task.id.as_bytes().as_slice())
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        if let Some(row) = existing {
            let stored: String = row.get(0);
            let stored_role: i64 = row.get(1);
            if stored != params || stored_role != role as i64 {
                return Err(DapError::Conflict(format!("task {} exists with other parameters", task.id)));
            }
        } else {
            sqlx::query(
                "INSERT INTO tasks (task_id, role, parameters, vdaf_verify_key, aggregator_auth_token,
                 collector_auth_token, collector_hpke_config, max_batch_size, created_at_seconds)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(task.id.as_bytes().as_slice())
            .bind(role as i64)
            .bind(&params)
            .bind(task.verify_key.as_bytes().as_slice())
            .bind(task.aggregator_auth_token.expose())
            .bind(task.collector_auth_token.as_ref().map(|t| t.expose().to_string()))
            .bind(task.collector_hpke_config.get_encoded().map_err(|e| DapError::Internal(e.to_string()))?)
            .bind(task.max_batch_size.map(|m| m as i64))
            .bind(now_seconds())
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
    pub async fn task(&self, id: &TaskId) -> Result<Arc<Task>, DapError> {
        if let Some(t) = self.tasks.read().unwrap_or_else(|e| e.into_inner()).get(id) {
            return Ok(t.clone());
        }
        let row = sqlx::query(
            "SELECT role, parameters, vdaf_verify_key, aggregator_auth_token, collector_auth_token,
             collector_hpke_config, max_batch_size FROM tasks WHERE task_id = ?",
        )
        .bind(id.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::from)?
        .ok_or_else(|| DapError::unrecognized_task(*id))?;
        let corrupt = |what: &str| DapError::Internal(format!("stored task {id}: bad {what}"));
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
            collector_hpke_config: crate::task::hpke_config_to_b64(
                &HpkeConfig::get_decoded(&collector_config).map_err(|_| corrupt("collector config"))?,
            ),
            max_batch_size: row.get::<Option<i64>, _>(6).map(|m| m as u64),
        };
        let task = Arc::new(Task::from_request(role, &req).map_err(|_| corrupt("task"))?);
        self.tasks.write().unwrap_or_else(|e| e.into_inner()).insert(*id, task.clone());
        Ok(task)
    }

    pub async fn delete_task(&self, id: &TaskId) -> Result<bool, DapError> {
        let done = sqlx::query("DELETE FROM tasks WHERE task_id = ?")
            .bind(id.as_bytes().as_slice())
            .execute(&self.pool)
            .await
            .map_err(StoreError::from)?;
        self.tasks.write().unwrap_or_else(|e| e.into_inner()).remove(id);
        Ok(done.rows_affected() > 0)
    }

    pub async fn task_ids(&self) -> Result<Vec<TaskId>, DapError> {
        let rows = sqlx::query("SELECT task_id FROM tasks").fetch_all(&self.pool).await.map_err(StoreError::from)?;
        Ok(rows.iter().filter_map(|r| TaskId::try_from(r.get::<Vec<u8>, _>(0).as_slice()).ok()).collect())
    }

    // ---- HPKE keys ----

    /// The keys clients may encrypt to, active first; creates a default key on first use.
    pub async fn hpke_keypairs(&self) -> Result<Vec<(HpkeKeypair, String)>, DapError> {
        let load = || async {
            let rows = sqlx::query(
                "SELECT config, private_key, state FROM hpke_keys WHERE state != 'expired'
                 ORDER BY CASE state WHEN 'active' THEN 0 ELSE 1 END, created_at_seconds DESC, config_id",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::from)?;
            rows.iter()
                .map(|r| {
                    let config = HpkeConfig::get_decoded(&r.get::<Vec<u8>, _>(0))
                        .map_err(|_| DapError::Internal("stored HPKE config is corrupt".into()))?;
                    let kp = HpkeKeypair::new(config, HpkePrivateKey::new(r.get(1)))
                        .map_err(|_| DapError::Internal("stored HPKE key is corrupt".into()))?;
                    Ok((kp, r.get::<String, _>(2)))
                })
                .collect::<Result<Vec<_>, DapError>>()
        };
        let keys = load().await?;
        if !keys.is_empty() {
            return Ok(keys);
        }
        let kp = HpkeKeypair::generate_default(HpkeConfigId(1));
        sqlx::query(
            "INSERT INTO hpke_keys (config_id, config, private_key, state, created_at_seconds)
             VALUES (?, ?, ?, 'active', ?) ON CONFLICT DO NOTHING",
        )
        .bind(1i64)
        .bind(kp.config().get_encoded().map_err(|e| DapError::Internal(e.to_string()))?)
        .bind(kp.private_key().as_bytes())
        .bind(now_seconds())
        .execute(&self.pool)
        .await
        .map_err(StoreError::from)?;
        load().await
    }

    // ---- batch buckets ----

    /// Adds `values` to a bucket shard (read, merge, write) inside `tx`.
    pub async fn add_to_bucket(
        tx: &mut Tx<'_>,
        task: &Task,
        bucket: &BatchBucket,
        shard: i64,
        values: &BucketValues,
    ) -> Result<(), DapError> {
        let key = bucket.key();
        let existing = sqlx::query(
            "SELECT aggregate_share, report_count, checksum, min_time, max_time FROM batch_aggregations
             WHERE task_id = ? AND bucket = ? AND shard = ?",
        )
        .bind(task.id.as_bytes().as_slice())
        .bind(&key)
        .bind(shard)
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::from)?;
        let mut merged = values.clone();
        if let Some(row) = existing {
            merged.merge(&Self::bucket_values_from_row(task, &row)?)?;
        }
        let share = merged.aggregate_share.get_encoded().map_err(|e| DapError::Internal(e.to_string()))?;
        sqlx::query(
            "INSERT INTO batch_aggregations (task_id, bucket, shard, aggregate_share, report_count, checksum, min_time, max_time)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (task_id, bucket, shard) DO UPDATE SET aggregate_share = excluded.aggregate_share,
               report_count = excluded.report_count, checksum = excluded.checksum,
               min_time = excluded.min_time, max_time = excluded.max_time",
        )
        .bind(task.id.as_bytes().as_slice())
        .bind(&key)
        .bind(shard)
        .bind(share)
        .bind(merged.report_count as i64)
        .bind(merged.checksum.0.as_slice())
        .bind(merged.min_time.units() as i64)
        .bind(merged.max_time.units() as i64)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::from)?;
        Ok(())
    }

    fn bucket_values_from_row(task: &Task, row: &sqlx::sqlite::SqliteRow) -> Result<BucketValues, DapError> {
        let corrupt = || DapError::Internal("stored batch aggregation is corrupt".into());
        Ok(BucketValues {
            aggregate_share: task.vdaf.decode_aggregate_share(&row.get::<Vec<u8>, _>(0)).map_err(|_| corrupt())?,
            report_count: row.get::<i64, _>(1) as u64,
            checksum: BatchChecksum(row.get::<Vec<u8>, _>(2).try_into().map_err(|_| corrupt())?),
            min_time: Time::from_units(row.get::<i64, _>(3) as u64),
            max_time: Time::from_units(row.get::<i64, _>(4) as u64),
        })
    }

    /// Combines every bucket shard of a batch: a time-interval batch `[start, end)` or a
    /// leader-selected batch ID. `None` if the batch holds no reports.
    pub async fn batch_values(tx: &mut Tx<'_>, task: &Task, batch: &Batch) -> Result<Option<BucketValues>, DapError> {
        let rows = match batch {
            Batch::TimeInterval(interval) => {
                let end = interval.end().ok_or_else(|| DapError::Internal("interval overflow".into()))?;
                sqlx::query(
                    "SELECT aggregate_share, report_count, checksum, min_time, max_time, bucket FROM batch_aggregations
                     WHERE task_id = ?",
                )
                .bind(task.id.as_bytes().as_slice())
                .fetch_all(&mut **tx)
                .await
                .map_err(StoreError::from)?
                .into_iter()
                .filter(|r| {
                    let key: Vec<u8> = r.get(5);
                    <[u8; 8]>::try_from(key.as_slice())
                        .map(u64::from_be_bytes)
                        .is_ok_and(|start| Time::from_units(start) >= interval.start && Time::from_units(start) < end)
                })
                .collect::<Vec<_>>()
            }
            Batch::LeaderSelected(id) => sqlx::query(
                "SELECT aggregate_share, report_count, checksum, min_time, max_time FROM batch_aggregations
                 WHERE task_id = ? AND bucket = ?",
            )
            .bind(task.id.as_bytes().as_slice())
            .bind(id.as_bytes().as_slice())
            .fetch_all(&mut **tx)
            .await
            .map_err(StoreError::from)?,
        };
        let mut total: Option<BucketValues> = None;
        for row in &rows {
            let v = Self::bucket_values_from_row(task, row)?;
            match &mut total {
                Some(t) => t.merge(&v)?,
                None => total = Some(v),
            }
        }
        Ok(total)
    }

    /// Whether a bucket lies in an already collected batch.
    pub async fn bucket_collected(tx: &mut Tx<'_>, task: &Task, bucket: &BatchBucket) -> Result<bool, DapError> {
        let row = match bucket {
            BatchBucket::TimeInterval(t) => sqlx::query(
                "SELECT 1 FROM collected_batches WHERE task_id = ? AND batch_start <= ? AND batch_end > ? LIMIT 1",
            )
            .bind(task.id.as_bytes().as_slice())
            .bind(t.units() as i64)
            .bind(t.units() as i64),
            BatchBucket::LeaderSelected(id) => {
                sqlx::query("SELECT 1 FROM collected_batches WHERE task_id = ? AND batch_id = ? LIMIT 1")
                    .bind(task.id.as_bytes().as_slice())
                    .bind(id.as_bytes().as_slice())
            }
        }
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::from)?;
        Ok(row.is_some())
    }

    /// Whether any part of the batch was already collected.
    pub async fn batch_overlaps_collected(tx: &mut Tx<'_>, task: &Task, batch: &Batch) -> Result<bool, DapError> {
        let row = match batch {
            Batch::TimeInterval(i) => {
                let end = i.end().ok_or_else(|| DapError::Internal("interval overflow".into()))?;
                sqlx::query(
                    "SELECT 1 FROM collected_batches WHERE task_id = ? AND batch_start < ? AND batch_end > ? LIMIT 1",
                )
                .bind(task.id.as_bytes().as_slice())
                .bind(end.units() as i64)
                .bind(i.start.units() as i64)
            }
            Batch::LeaderSelected(id) => {
                sqlx::query("SELECT 1 FROM collected_batches WHERE task_id = ? AND batch_id = ? LIMIT 1")
                    .bind(task.id.as_bytes().as_slice())
                    .bind(id.as_bytes().as_slice())
            }
        }
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::from)?;
        Ok(row.is_some())
    }

    pub async fn mark_collected(tx: &mut Tx<'_>, task: &Task, batch: &Batch) -> Result<(), DapError> {
        let q = sqlx::query(
            "INSERT INTO collected_batches (task_id, batch_start, batch_end, batch_id, collected_at_seconds)
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(task.id.as_bytes().as_slice());
        let q = match batch {
            Batch::TimeInterval(i) => {
                let end = i.end().ok_or_else(|| DapError::Internal("interval overflow".into()))?;
                q.bind(Some(i.start.units() as i64)).bind(Some(end.units() as i64)).bind(None::<Vec<u8>>)
            }
            Batch::LeaderSelected(id) => q.bind(None::<i64>).bind(None::<i64>).bind(Some(id.as_bytes().to_vec())),
        };
        q.bind(now_seconds()).execute(&mut **tx).await.map_err(StoreError::from)?;
        Ok(())
    }
}

/// A batch, as a collection names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batch {
    TimeInterval(Interval),
    LeaderSelected(BatchId),
}
