//! The admin API both aggregators serve under `/admin`, behind their own bearer token:
//! provisioning, inspecting and removing tasks.

use super::http::{parse_task_id, require_token, ErrorResponse, HttpResult};
use super::storage::Store;
use crate::auth::AuthenticationToken;
use crate::messages::Role;
use crate::problem::DapError;
use crate::task::AggregatorTaskRequest;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;

#[derive(Clone)]
struct AdminState {
    datastore: Store,
    role: Role,
    admin_token: Arc<AuthenticationToken>,
}

/// Routes under `/admin`.
pub fn router(datastore: Store, role: Role, admin_token: AuthenticationToken) -> Router {
    Router::new()
        .route("/admin/tasks", post(put_task).get(list_tasks))
        .route("/admin/tasks/{task_id}", get(get_task).delete(delete_task))
        .with_state(AdminState { datastore, role, admin_token: Arc::new(admin_token) })
}

async fn put_task(
    State(s): State<AdminState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> HttpResult<(StatusCode, Json<serde_json::Value>)> {
    require_token(&headers, &s.admin_token, None)?;
    let req: AggregatorTaskRequest = serde_json::from_slice(&body)
        .map_err(|e| ErrorResponse(DapError::BadRequest(format!("not a task request: {e}"))))?;
    let task = s.datastore.put_task(s.role, &req).await?;
    tracing::info!(task_id = %task.id, role = ?s.role, vdaf = %task.parameters.vdaf, "task provisioned");
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "task_id": task.id, "parameters": task.parameters }))))
}

async fn get_task(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(task_id): Path<String>,
) -> HttpResult<Json<serde_json::Value>> {
    require_token(&headers, &s.admin_token, None)?;
    let task = s.datastore.task(&parse_task_id(&task_id)?).await?;
    Ok(Json(serde_json::json!({ "task_id": task.id, "parameters": task.parameters })))
}

async fn list_tasks(State(s): State<AdminState>, headers: HeaderMap) -> HttpResult<Json<serde_json::Value>> {
    require_token(&headers, &s.admin_token, None)?;
    Ok(Json(serde_json::json!({ "task_ids": s.datastore.task_ids().await? })))
}

async fn delete_task(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(task_id): Path<String>,
) -> HttpResult<StatusCode> {
    require_token(&headers, &s.admin_token, None)?;
    let id = parse_task_id(&task_id)?;
    if s.datastore.delete_task(&id).await? {
        tracing::info!(task_id = %id, "task deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(DapError::unrecognized_task(id).into())
    }
}
