//! The aggregator side of the interop test API (`/internal/test/*`): readiness, the endpoint
//! for a task, and task provisioning from the runner's JSON. Served by `duet-leader interop` and
//! `duet-helper interop` next to the DAP endpoints, never by a production server.

use super::storage::Store;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use duet_common::interop::{self, VdafObject};
use duet_common::messages::Role;
use duet_common::task::AggregatorTaskRequest;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Clone)]
struct InteropState {
    store: Store,
    role: Role,
}

/// The runner's `add_task` request (DAP-18 dialect).
#[derive(Deserialize)]
struct AddTask {
    task_id: String,
    leader: String,
    helper: String,
    vdaf: VdafObject,
    leader_authentication_token: String,
    #[serde(default)]
    collector_authentication_token: Option<String>,
    role: String,
    vdaf_verify_key: String,
    #[serde(alias = "query_type")]
    batch_mode: u64,
    min_batch_size: u64,
    #[serde(default)]
    max_batch_size: Option<u64>,
    time_precision: u64,
    collector_hpke_config: String,
    #[serde(default)]
    task_start: Option<u64>,
    #[serde(default)]
    task_end: Option<u64>,
    #[serde(default)]
    max_batch_query_count: Option<u64>,
}

/// Routes under `/internal/test/`.
pub fn router(store: Store, role: Role) -> Router {
    Router::new()
        .route("/internal/test/ready", post(ready))
        .route("/internal/test/endpoint_for_task", post(endpoint_for_task))
        .route("/internal/test/add_task", post(add_task))
        .route("/internal/test/{*rest}", axum::routing::any(not_found))
        .with_state(InteropState { store, role })
}

async fn not_found() -> (StatusCode, Json<Value>) {
    (StatusCode::NOT_FOUND, Json(interop::error("no such test API")))
}

async fn ready() -> Json<Value> {
    Json(interop::success(Default::default()))
}

async fn endpoint_for_task(body: axum::body::Bytes) -> Json<Value> {
    match serde_json::from_slice::<Value>(&body) {
        // DAP endpoints are served at the root of this same port, for every task.
        Ok(v) if v.get("task_id").is_some() => {
            Json(interop::success(json!({ "endpoint": "/" }).as_object().cloned().unwrap_or_default()))
        }
        Ok(_) => Json(interop::error("endpoint_for_task needs a task_id")),
        Err(e) => Json(interop::error(format!("malformed JSON: {e}"))),
    }
}

fn request(role: Role, t: AddTask) -> Result<AggregatorTaskRequest, String> {
    let asked = match t.role.as_str() {
        "leader" => Role::Leader,
        "helper" => Role::Helper,
        other => return Err(format!("unknown role {other:?}")),
    };
    if asked != role {
        return Err(format!("this aggregator is the {role:?}, not the {}", t.role));
    }
    if t.max_batch_query_count.is_some_and(|n| n != 1) {
        return Err("duet collects each batch at most once: max_batch_query_count must be 1".into());
    }
    let interval = match (t.task_start, t.task_end) {
        (Some(s), Some(e)) => Some((s, e)),
        (None, None) => None,
        _ => return Err("task_start and task_end come together".into()),
    };
    let parameters = interop::task_parameters(
        &t.task_id,
        &t.leader,
        &t.helper,
        &t.vdaf,
        t.batch_mode,
        t.min_batch_size,
        t.time_precision,
        interval,
    )
    .map_err(|e| e.to_string())?;
    Ok(AggregatorTaskRequest {
        parameters,
        vdaf_verify_key: t.vdaf_verify_key,
        aggregator_auth_token: t.leader_authentication_token,
        collector_auth_token: if role == Role::Leader { t.collector_authentication_token } else { None },
        collector_hpke_config: t.collector_hpke_config,
        max_batch_size: t.max_batch_size,
        report_expiry_age: None,
    })
}

async fn add_task(State(s): State<InteropState>, body: axum::body::Bytes) -> Json<Value> {
    let parsed: AddTask = match serde_json::from_slice(&body) {
        Ok(t) => t,
        Err(e) => return Json(interop::error(format!("malformed add_task request: {e}"))),
    };
    let req = match request(s.role, parsed) {
        Ok(r) => r,
        Err(e) => return Json(interop::error(e)),
    };
    match s.store.put_task(s.role, &req).await {
        Ok(task) => {
            tracing::info!(task_id = %task.id, role = ?s.role, "interop task added");
            Json(interop::success(Default::default()))
        }
        Err(e) => Json(interop::error(e)),
    }
}
