//! The storage both aggregators share: the [`Storage`] trait (tasks, HPKE keys, health, the
//! clock), whose methods are each one transaction, with the records they exchange, the typed
//! states and the storage error. Each role's protocol steps are its own store trait, which
//! extends this one (`LeaderStore` in the leader's crate, `HelperStore` in the helper's).
//! Protocol modules hold no SQL; the SQL backend ([`super::sql`]: SQLite and PostgreSQL)
//! implements the traits.

pub use super::states::*;
pub use super::store_error::StoreError;
use duet_common::auth::{AuthenticationToken, TokenHash};
use duet_common::hpke::HpkeKeypair;
use duet_common::messages::*;
use duet_common::problem::DapError;
use duet_common::task::{AggregatorTaskRequest, TaskParameters};
use duet_common::time::{Interval, Time};
use duet_common::vdaf::{AggregateShare, OutputShare, Vdaf, VerifyKey};
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
    pub aggregator_token: AggregatorToken,
    /// The leader's digest of the collector's token (none on a helper).
    pub collector_token: Option<TokenHash>,
    pub collector_hpke_config: HpkeConfig,
    pub max_batch_size: Option<u64>,
    /// Seconds after which a report is too old to take; none: the server's default, if any.
    pub report_expiry_age: Option<u64>,
}

/// The aggregator token as each role holds it: the leader presents it to the helper, so keeps it
/// (sealed at rest); the helper only checks it, so keeps its digest.
#[derive(Clone, Debug)]
pub enum AggregatorToken {
    Presented(AuthenticationToken),
    Checked(TokenHash),
}

impl AggregatorToken {
    /// The token as `role` keeps it.
    pub fn for_role(role: Role, token: AuthenticationToken) -> Self {
        match role {
            Role::Leader => AggregatorToken::Presented(token),
            _ => AggregatorToken::Checked(TokenHash::of(&token)),
        }
    }

    /// Its digest, which a request's token is checked against.
    pub fn hash(&self) -> TokenHash {
        match self {
            AggregatorToken::Presented(token) => TokenHash::of(token),
            AggregatorToken::Checked(hash) => hash.clone(),
        }
    }
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
        if let Some(age) = req.report_expiry_age {
            if age < req.parameters.time_precision {
                return Err(DapError::BadRequest(format!(
                    "report_expiry_age {age} is shorter than the task's time_precision {}",
                    req.parameters.time_precision
                )));
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
            aggregator_token: AggregatorToken::for_role(role, req.aggregator_token().map_err(bad)?),
            collector_token: collector_auth_token.filter(|_| role == Role::Leader).as_ref().map(TokenHash::of),
            collector_hpke_config: req.collector_config().map_err(bad)?,
            max_batch_size: req.max_batch_size,
            report_expiry_age: req.report_expiry_age,
        })
    }

    /// A stored task: its parameters, and its secrets as the role keeps them.
    #[allow(clippy::too_many_arguments)]
    pub fn stored(
        role: Role,
        parameters: TaskParameters,
        verify_key: VerifyKey,
        aggregator_token: AggregatorToken,
        collector_token: Option<TokenHash>,
        collector_hpke_config: HpkeConfig,
        max_batch_size: Option<u64>,
        report_expiry_age: Option<u64>,
    ) -> Result<Self, String> {
        let configuration = parameters.task_configuration().map_err(|e| e.to_string())?;
        Ok(Task {
            id: parameters.task_id,
            role,
            configuration_encoded: configuration.get_encoded().map_err(|e| e.to_string())?,
            configuration,
            vdaf: Vdaf::new(&parameters.vdaf).map_err(|e| e.to_string())?,
            parameters,
            verify_key,
            aggregator_token,
            collector_token,
            collector_hpke_config,
            max_batch_size,
            report_expiry_age,
        })
    }

    /// The token the leader presents to the helper (an internal error on a helper, which has
    /// only its digest).
    pub fn presented_token(&self) -> Result<&AuthenticationToken, DapError> {
        match &self.aggregator_token {
            AggregatorToken::Presented(token) => Ok(token),
            AggregatorToken::Checked(_) => Err(DapError::Internal(format!("task {} has no token to present", self.id))),
        }
    }

    /// Whether `other` provisions the same task: parameters, role and every secret. (Tokens
    /// one side keeps as digests compare by digest.)
    pub fn same_as(&self, other: &Task) -> bool {
        self.role == other.role
            && self.parameters == other.parameters
            && self.verify_key.as_bytes() == other.verify_key.as_bytes()
            && self.aggregator_token.hash() == other.aggregator_token.hash()
            && self.collector_token == other.collector_token
            && self.collector_hpke_config == other.collector_hpke_config
            && self.max_batch_size == other.max_batch_size
            && self.report_expiry_age == other.report_expiry_age
    }

    /// A digest of everything that provisioned the task (parameters, role, every secret as the
    /// role keeps it): equal for [`Self::same_as`] tasks, so that a deleted task provisioned
    /// again identically is recognised without keeping its secrets.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        field(&[self.role as u8]);
        field(serde_json::to_string(&self.parameters).unwrap_or_default().as_bytes());
        field(self.verify_key.as_bytes());
        field(self.aggregator_token.hash().as_bytes());
        field(self.collector_token.as_ref().map_or(&[][..], |t| t.as_bytes()));
        field(&self.collector_hpke_config.get_encoded().unwrap_or_default());
        field(&self.max_batch_size.map_or([0xff; 8], u64::to_be_bytes));
        field(&self.report_expiry_age.map_or([0xff; 8], u64::to_be_bytes));
        h.finalize().into()
    }

    /// The oldest report time taken at `now`: `report_expiry_age` (or the server's `default`)
    /// before it, if there is one.
    pub fn oldest_report_time(&self, now: Time, default: Option<u64>) -> Option<Time> {
        let age = self.report_expiry_age.or(default)?;
        let age = duet_common::time::Duration::from_seconds_ceil(age, self.configuration.time_precision);
        Some(Time::from_units(now.units().saturating_sub(age.units())))
    }

    /// The report timestamp before which the garbage collector deletes what a report left (its
    /// row and payload, the helper's replay record, its batch bucket) at `now_seconds`: one time
    /// unit before [`Self::oldest_report_time`], so that a replica whose clock runs ahead of
    /// another's never deletes the record of a report that the other would still take (and so
    /// take twice). `None` when the task's reports never expire.
    pub fn expired_before(&self, now_seconds: u64, default: Option<u64>) -> Option<Time> {
        let now = Time::from_seconds(now_seconds, self.configuration.time_precision);
        let oldest = self.oldest_report_time(now, default)?;
        Some(Time::from_units(oldest.units().saturating_sub(1)))
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
}

/// The storage both servers hold.
pub type Store = Arc<dyn Storage>;
