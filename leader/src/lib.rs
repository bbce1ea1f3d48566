//! duet-leader: the DAP-18 leader aggregator. So far it serves `/hpke_config`, report uploads
//! ([`upload`]) and the admin API; aggregation and collection are being built.

pub mod upload;

use axum::routing::{get, post};
use axum::Router;
use duet_common::auth::AuthenticationToken;
use duet_common::messages::Role;
use duet_common::server::datastore::Datastore;
use std::sync::Arc;

/// Settings of a leader.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// How far in the future a report's timestamp may be before it is `report_too_early`.
    pub tolerable_clock_skew_seconds: u64,
    pub max_body_bytes: usize,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        Self { tolerable_clock_skew_seconds: 300, max_body_bytes: 64 * 1024 * 1024 }
    }
}

#[derive(Clone)]
pub struct LeaderState {
    pub datastore: Datastore,
    pub config: Arc<LeaderConfig>,
}

/// All of the leader's routes.
pub fn router(datastore: Datastore, config: LeaderConfig, admin_token: AuthenticationToken) -> Router {
    let max_body = config.max_body_bytes;
    let state = LeaderState { datastore: datastore.clone(), config: Arc::new(config) };
    let dap = Router::new().route("/tasks/{task_id}/reports", post(upload::upload)).with_state(state);
    let hpke = Router::new()
        .route("/hpke_config", get(duet_common::server::hpke_config::hpke_config))
        .with_state(datastore.clone());
    dap.merge(hpke)
        .merge(duet_common::server::admin::router(datastore, Role::Leader, admin_token))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
}
