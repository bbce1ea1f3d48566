//! duet's leader and helper routers in process, on SQLite files, each with one Prio3Count task:
//! what the property tests and the fuzz targets send their inputs to.

use duet_common::auth::AuthenticationToken;
use duet_common::messages::*;
use std::sync::OnceLock;

/// The leader's and the helper's routers in process, on SQLite, with one task each.
pub struct Servers {
    pub runtime: tokio::runtime::Runtime,
    pub leader: axum::Router,
    pub helper: axum::Router,
    pub task_id: TaskId,
    pub aggregator_token: String,
    pub collector_token: String,
    _dir: tempfile::TempDir,
}

pub fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (leader, helper, task) = runtime.block_on(async {
            let ls = duet_leader::store::open(
                &format!("sqlite:{}", dir.path().join("l.db").display()),
                crate::database_keys(),
            )
            .await
            .unwrap();
            let hs = duet_helper::store::open(
                &format!("sqlite:{}", dir.path().join("h.db").display()),
                crate::database_keys(),
            )
            .await
            .unwrap();
            let params = duet_common::task::TaskParameters {
                task_id: TaskId::random(),
                task_info: "properties".into(),
                leader_endpoint: "http://127.0.0.1:1/".into(),
                helper_endpoint: "http://127.0.0.1:2/".into(),
                time_precision: 3600,
                min_batch_size: 2,
                batch_mode: BatchMode::TimeInterval,
                vdaf: duet_common::vdaf::VdafConfig::Prio3Count,
                task_interval_seconds: None,
                dp: None,
            };
            let task = duet_client::admin::NewTask::generate(params, None);
            ls.put_task(Role::Leader, &task.leader_request).await.unwrap();
            hs.put_task(Role::Helper, &task.helper_request).await.unwrap();
            let state = duet_leader::LeaderState::new(ls, duet_leader::LeaderConfig::default()).unwrap();
            let leader = duet_leader::router(state, Some(AuthenticationToken::random()));
            let helper =
                duet_helper::router(hs, duet_helper::HelperConfig::default(), Some(AuthenticationToken::random()));
            (leader, helper, task)
        });
        Servers {
            runtime,
            leader,
            helper,
            task_id: task.leader_request.parameters.task_id,
            aggregator_token: task.leader_request.aggregator_auth_token.clone(),
            collector_token: task.credentials.collector_auth_token.clone(),
            _dir: dir,
        }
    })
}

/// POSTs `body` to `path` on `router`; the status.
pub fn call(router: &axum::Router, path: String, media: &'static str, token: &str, body: Vec<u8>) -> u16 {
    use tower::ServiceExt;
    let s = servers();
    let req = axum::http::Request::post(path)
        .header("content-type", media)
        .header("authorization", format!("Bearer {token}"))
        .body(axum::body::Body::from(body))
        .unwrap();
    s.runtime.block_on(router.clone().oneshot(req)).unwrap().status().as_u16()
}
