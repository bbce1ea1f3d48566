//! duet-leader: the DAP-18 leader aggregator. It takes clients' reports ([`upload`]), runs
//! aggregation jobs with the helper ([`aggregate`]), serves collection jobs to the collector
//! ([`collect`]), and provisions tasks through the admin API. Background workers (the job
//! creator, the two drivers and the garbage collector) run in the same process; see
//! [`spawn_workers`].

pub mod aggregate;
pub mod collect;
pub mod gauges;
pub mod peer;
pub mod retry;
pub mod store;
pub mod upload;

use crate::store::{JobSizes, Store};
use axum::routing::{get, post};
use axum::Router;
use duet_common::auth::{AuthenticationToken, TokenScheme};
use duet_common::messages::Role;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

/// Settings of a leader.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// How far in the future a report's timestamp may be before it is `report_too_early`.
    pub tolerable_clock_skew_seconds: u64,
    pub max_body_bytes: usize,
    /// The most reports one upload request may carry (413 beyond).
    pub max_reports_per_upload: usize,
    /// The report expiry age, in seconds, of tasks provisioned without one.
    pub default_report_expiry_seconds: Option<u64>,
    pub job_sizes: JobSizes,
    /// Pause between job creator passes.
    pub creator_interval: Duration,
    /// Pause between driver passes when there was nothing to do.
    pub driver_interval: Duration,
    /// Aggregation jobs driven at once.
    pub max_concurrent_jobs: usize,
    /// How long a driver owns a job before another may take it over.
    pub lease_seconds: i64,
    /// The longest pause between two attempts to reach the helper (and the longest hold on new
    /// jobs of a task whose jobs it refuses). Jobs wait out an unreachable helper for as long
    /// as it takes; this only bounds how long after its return they notice.
    pub max_retry_delay: Duration,
    /// How long one request to the helper may take, from connecting to the answer's last byte.
    pub helper_timeout: Duration,
    /// Collection jobs driven at once.
    pub max_concurrent_collections: usize,
    /// How the leader presents its token to the helper (`Authorization: Bearer`, or the
    /// `DAP-Auth-Token` header the interop tests use).
    pub helper_token_scheme: TokenScheme,
    /// Extra trust roots (PEM) for the helper's TLS certificate.
    pub helper_ca_pem: Option<Vec<u8>>,
    /// The garbage collector's settings; `None`: it does not run.
    pub gc: Option<duet_server::gc::GcSettings>,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        Self {
            tolerable_clock_skew_seconds: 300,
            max_body_bytes: 64 * 1024 * 1024,
            max_reports_per_upload: 10_000,
            default_report_expiry_seconds: None,
            job_sizes: JobSizes { min: 1, max: 1000, max_delay_seconds: 10, max_jobs_per_pass: 16 },
            creator_interval: Duration::from_secs(1),
            driver_interval: Duration::from_millis(500),
            max_concurrent_jobs: 4,
            lease_seconds: 120,
            max_retry_delay: Duration::from_secs(600),
            helper_timeout: Duration::from_secs(300),
            max_concurrent_collections: 8,
            helper_token_scheme: TokenScheme::Bearer,
            helper_ca_pem: None,
            gc: None,
        }
    }
}

#[derive(Clone)]
pub struct LeaderState {
    pub store: Store,
    pub config: Arc<LeaderConfig>,
    pub peer: peer::Peer,
    /// Woken when jobs are created, so the driver starts at once.
    pub aggregation_wake: Arc<Notify>,
    /// Woken when a collection job is created.
    pub collection_wake: Arc<Notify>,
    /// Notified (all waiters) when the collection driver has driven a job, so that requests
    /// waiting for it look again.
    pub collection_done: Arc<Notify>,
    /// Uploads waiting to share a transaction.
    pub uploads: upload::UploadQueue,
}

impl LeaderState {
    pub fn new(store: Store, config: LeaderConfig) -> Result<Self, String> {
        let peer = peer::Peer::new(
            config.helper_timeout,
            config.helper_token_scheme,
            config.helper_ca_pem.as_deref(),
            config.max_body_bytes,
        )?
        .with_clock(store.clock().clone());
        Ok(Self {
            store,
            config: Arc::new(config),
            peer,
            aggregation_wake: Arc::default(),
            collection_wake: Arc::default(),
            collection_done: Arc::default(),
            uploads: Default::default(),
        })
    }
}

/// The leader's routes: DAP and `/hpke_config`, and the admin API when `admin_token` is given
/// (else it is served elsewhere: [`admin_router`]).
pub fn router(state: LeaderState, admin_token: Option<AuthenticationToken>) -> Router {
    let max_body = state.config.max_body_bytes;
    let store = state.store.clone();
    let dap = Router::new()
        .route("/tasks/{task_id}/reports", post(upload::upload))
        .route("/tasks/{task_id}/collection_jobs", post(collect::create))
        .route("/tasks/{task_id}/collection_jobs/{job_id}", get(collect::get).delete(collect::delete))
        .with_state(state);
    let hpke =
        Router::new().route("/hpke_config", get(duet_server::hpke_config::hpke_config)).with_state(store.clone());
    let public = dap.merge(hpke);
    match admin_token {
        Some(token) => {
            duet_server::http::guarded(public.merge(duet_server::admin::router(store, Role::Leader, token)), max_body)
        }
        None => duet_server::http::guarded(public, max_body),
    }
}

/// The admin API alone, for a listener of its own (`--admin-listen`).
pub fn admin_router(state: &LeaderState, admin_token: AuthenticationToken) -> Router {
    duet_server::http::guarded(
        duet_server::admin::router(state.store.clone(), Role::Leader, admin_token),
        state.config.max_body_bytes,
    )
}

/// Sleeps for `pause` unless woken or told to stop; `false` when stopping.
async fn pause(pause: Duration, wake: &Notify, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(pause) => true,
        _ = wake.notified() => true,
        _ = stop.changed() => false,
    }
}

/// Starts the job creator, the aggregation job driver and the collection job driver. They stop
/// taking new work when `stop` turns true and finish what they hold.
pub fn spawn_workers(state: LeaderState, stop: watch::Receiver<bool>) -> JoinSet<()> {
    let mut set = JoinSet::new();
    let (s, mut rx) = (state.clone(), stop.clone());
    set.spawn(async move {
        let never = Notify::new();
        loop {
            match aggregate::create_jobs(&s).await {
                Ok(n) if n > 0 => s.aggregation_wake.notify_one(),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "job creator pass failed"),
            }
            if *rx.borrow() || !pause(s.config.creator_interval, &never, &mut rx).await {
                break;
            }
        }
    });
    let (s, mut rx) = (state.clone(), stop.clone());
    set.spawn(async move {
        // A pipeline, not rounds: a new job is leased as soon as one of the running ones ends,
        // so that the CPUs never wait for the slowest job of a round.
        let mut running: JoinSet<()> = JoinSet::new();
        loop {
            let room = s.config.max_concurrent_jobs.saturating_sub(running.len());
            let mut leased = 0;
            if room > 0 && !*rx.borrow() {
                match s.store.acquire_aggregation_jobs(room, s.config.lease_seconds).await {
                    Ok(jobs) => {
                        leased = jobs.len();
                        for job in jobs {
                            let s = s.clone();
                            running.spawn(async move {
                                let (task_id, job_id) = (job.task_id, job.job_id);
                                if let Err(e) = aggregate::drive_job(&s, job).await {
                                    tracing::error!(%task_id, %job_id, error = %e, "driving aggregation job failed");
                                }
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "leasing aggregation jobs failed"),
                }
            }
            if *rx.borrow() {
                // Stopping: the jobs in hand are finished, no new one is taken.
                while running.join_next().await.is_some() {}
                break;
            }
            if running.is_empty() {
                if !pause(s.config.driver_interval, &s.aggregation_wake, &mut rx).await {
                    break;
                }
                continue;
            }
            if leased == room {
                // Full, or everything leasable was taken: go on once a job ends.
                if running.len() >= s.config.max_concurrent_jobs {
                    tokio::select! {
                        _ = running.join_next() => {}
                        _ = rx.changed() => {}
                    }
                }
                continue;
            }
            // Room left and nothing more to lease now: wait for a job to end, new jobs, or the
            // idle interval.
            tokio::select! {
                _ = running.join_next() => {}
                _ = s.aggregation_wake.notified() => {}
                _ = tokio::time::sleep(s.config.driver_interval) => {}
                _ = rx.changed() => {}
            }
        }
    });
    if let Some(settings) = state.config.gc.clone() {
        let (store, rx) = (state.store.clone(), stop.clone());
        set.spawn(async move {
            let pass_settings = settings.clone();
            duet_server::gc::run(settings, rx, || store.collect_garbage(&pass_settings)).await
        });
    }
    let (s, mut rx) = (state, stop);
    set.spawn(async move {
        // Jobs run side by side, so that one waiting on a slow helper holds up no other.
        let mut running: JoinSet<()> = JoinSet::new();
        loop {
            let room = s.config.max_concurrent_collections.saturating_sub(running.len());
            if room > 0 && !*rx.borrow() {
                match s.store.acquire_collection_jobs(room, s.config.lease_seconds).await {
                    Ok(jobs) => {
                        for job in jobs {
                            let s = s.clone();
                            running.spawn(async move {
                                let (task_id, id) = (job.task_id, job.id);
                                if let Err(e) = collect::drive_job(&s, job).await {
                                    tracing::error!(%task_id, collection_job_id = %id, error = %e, "driving collection job failed");
                                }
                                s.collection_done.notify_waiters();
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "leasing collection jobs failed"),
                }
            }
            if *rx.borrow() {
                while running.join_next().await.is_some() {}
                break;
            }
            tokio::select! {
                Some(_) = running.join_next(), if !running.is_empty() => {}
                _ = s.collection_wake.notified() => {}
                _ = tokio::time::sleep(s.config.driver_interval) => {}
                _ = rx.changed() => {}
            }
        }
    });
    set
}
