//! duet-helper: the DAP-18 helper aggregator. It serves `/hpke_config`, aggregation jobs
//! ([`aggregate`]) and aggregate shares ([`collect`]) to the leader, and the admin API.

pub mod aggregate;
pub mod collect;
pub mod queue;
pub mod store;

use crate::store::Store;
use axum::routing::{get, post};
use axum::Router;
use duet_common::auth::AuthenticationToken;
use duet_common::messages::{Role, TaskId};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Settings of a helper.
#[derive(Clone, Debug)]
pub struct HelperConfig {
    /// How far in the future a report's timestamp may be before it is `report_too_early`.
    pub tolerable_clock_skew_seconds: u64,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// The aggregation work queue's sizes.
    pub queue: queue::QueueLimits,
    /// The report expiry age, in seconds, of tasks provisioned without one.
    pub default_report_expiry_seconds: Option<u64>,
}

impl Default for HelperConfig {
    fn default() -> Self {
        Self {
            tolerable_clock_skew_seconds: 300,
            max_body_bytes: 64 * 1024 * 1024,
            queue: queue::QueueLimits::default(),
            default_report_expiry_seconds: None,
        }
    }
}

#[derive(Clone)]
pub struct HelperState {
    pub store: Store,
    pub config: Arc<HelperConfig>,
    pub queue: queue::WorkQueue,
    /// Names this process in the records of the steps it works on in the background.
    pub owner: [u8; 16],
    renewing: Arc<std::sync::OnceLock<()>>,
}

impl HelperState {
    pub fn new(store: Store, config: HelperConfig) -> Self {
        let queue = queue::WorkQueue::new(config.queue);
        Self { store, config: Arc::new(config), queue, owner: rand::random(), renewing: Arc::default() }
    }

    /// Starts, once, the task that keeps this process's deferred steps alive while it runs: a
    /// step whose process died is forgotten once its lease lapses, and the leader's identical
    /// request starts it again.
    pub(crate) fn keep_deferrals_alive(&self) {
        self.renewing.get_or_init(|| {
            let (store, owner) = (self.store.clone(), self.owner);
            let period = std::time::Duration::from_secs((aggregate::DEFERRAL_LEASE_SECONDS / 3) as u64);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(period).await;
                    if let Err(e) = store.helper_renew_deferred(&owner, aggregate::DEFERRAL_LEASE_SECONDS).await {
                        tracing::warn!(error = %e, "renewing deferred aggregation jobs failed");
                    }
                }
            });
        });
    }
}

/// A resource ID derived from the request (first 16 bytes of SHA-256 over task ID and body) and
/// the body's digest: identical POSTs name the same resource, which makes creation idempotent.
pub(crate) fn job_digest(task_id: &TaskId, body: &[u8]) -> ([u8; 16], [u8; 32]) {
    let digest: [u8; 32] = Sha256::digest(body).into();
    let mut h = Sha256::new();
    h.update(task_id.as_bytes());
    h.update(digest);
    let id: [u8; 32] = h.finalize().into();
    let mut out = [0u8; 16];
    out.copy_from_slice(&id[..16]);
    (out, digest)
}

/// The helper task named in the path, after checking the leader's token.
pub(crate) async fn helper_task(
    state: &HelperState,
    task_id: &str,
    headers: &axum::http::HeaderMap,
) -> Result<Arc<crate::store::Task>, duet_common::problem::DapError> {
    let task_id = duet_server::http::parse_task_id(task_id)?;
    let task = state.store.task(&task_id).await?;
    if task.role != Role::Helper {
        return Err(duet_common::problem::DapError::unrecognized_task(task_id));
    }
    duet_server::http::require_token(headers, &task.aggregator_token.hash(), Some(task_id))?;
    Ok(task)
}

/// The helper's routes: DAP and `/hpke_config`, and the admin API when `admin_token` is given
/// (else it is served elsewhere: [`admin_router`]).
pub fn router(store: Store, config: HelperConfig, admin_token: Option<AuthenticationToken>) -> Router {
    let max_body = config.max_body_bytes;
    let state = HelperState::new(store.clone(), config);
    let dap = Router::new()
        .route("/tasks/{task_id}/aggregation_jobs", post(aggregate::init))
        .route(
            "/tasks/{task_id}/aggregation_jobs/{job_id}",
            post(aggregate::continue_job).get(aggregate::get_job).delete(aggregate::delete_job),
        )
        .route("/tasks/{task_id}/aggregate_shares", post(collect::create))
        .route("/tasks/{task_id}/aggregate_shares/{share_id}", get(collect::get).delete(collect::delete))
        .with_state(state);
    let hpke =
        Router::new().route("/hpke_config", get(duet_server::hpke_config::hpke_config)).with_state(store.clone());
    let public = dap.merge(hpke);
    match admin_token {
        Some(token) => {
            duet_server::http::guarded(public.merge(duet_server::admin::router(store, Role::Helper, token)), max_body)
        }
        None => duet_server::http::guarded(public, max_body),
    }
}

/// Starts the garbage collector ([`store::HelperStore::collect_garbage`] every
/// `settings.interval`, jittered) until `stop` turns true.
pub fn spawn_garbage_collector(
    store: Store,
    settings: duet_server::gc::GcSettings,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let pass_settings = settings.clone();
        duet_server::gc::run(settings, stop, || store.collect_garbage(&pass_settings)).await
    })
}

/// The admin API alone, for a listener of its own (`--admin-listen`).
pub fn admin_router(store: Store, config: &HelperConfig, admin_token: AuthenticationToken) -> Router {
    duet_server::http::guarded(duet_server::admin::router(store, Role::Helper, admin_token), config.max_body_bytes)
}
