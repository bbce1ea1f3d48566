//! The admin API both aggregators serve under `/admin`, behind their own bearer token:
//! provisioning, inspecting and removing tasks, and rotating the aggregator's HPKE keys.

use super::http::{parse_task_id, read_body, require_token, ErrorResponse, HttpResult};
use super::storage::{first_free_config_id, HpkeKeyRecord, HpkeKeyState, Store};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use duet_common::auth::{AuthenticationToken, TokenHash};
use duet_common::hpke::HpkeKeypair;
use duet_common::keys::{HpkeKeyInfo, HpkeKeyList, NewHpkeKey};
use duet_common::messages::Role;
use duet_common::messages::{HpkeAeadId, HpkeConfigId, HpkeKdfId, HpkeKemId};
use duet_common::problem::DapError;
use duet_common::task::AggregatorTaskRequest;
use std::sync::Arc;

/// The largest admin request body: a task request or a key request is a few KiB.
const ADMIN_BODY_BYTES: usize = 1 << 20;

#[derive(Clone)]
struct AdminState {
    datastore: Store,
    role: Role,
    admin_token: Arc<TokenHash>,
}

/// Routes under `/admin`.
pub fn router(datastore: Store, role: Role, admin_token: AuthenticationToken) -> Router {
    Router::new()
        .route("/admin/tasks", post(put_task).get(list_tasks))
        .route("/admin/tasks/{task_id}", get(get_task).delete(delete_task))
        .route("/admin/hpke_keys", post(add_key).get(list_keys))
        .route("/admin/hpke_keys/{id}", axum::routing::delete(delete_key))
        .route("/admin/hpke_keys/{id}/activate", post(activate_key))
        .route("/admin/hpke_keys/{id}/retire", post(retire_key))
        .with_state(AdminState { datastore, role, admin_token: Arc::new(TokenHash::of(&admin_token)) })
}

async fn put_task(
    State(s): State<AdminState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> HttpResult<(StatusCode, Json<serde_json::Value>)> {
    require_token(&headers, &s.admin_token, None)?;
    let body = read_body(body, ADMIN_BODY_BYTES).await?;
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

fn key_info(rec: &HpkeKeyRecord) -> HpkeKeyInfo {
    HpkeKeyInfo {
        id: rec.config.id.0,
        kem_id: rec.config.kem_id.0,
        kdf_id: rec.config.kdf_id.0,
        aead_id: rec.config.aead_id.0,
        state: rec.state.label().to_string(),
        created_at_seconds: rec.created_at_seconds,
        state_changed_at_seconds: rec.state_changed_at_seconds,
        hpke_config: duet_common::task::hpke_config_to_b64(&rec.config),
    }
}

fn parse_key_id(id: &str) -> Result<HpkeConfigId, ErrorResponse> {
    id.parse::<u8>()
        .map(HpkeConfigId)
        .map_err(|_| ErrorResponse(DapError::BadRequest(format!("{id:?} is not an HPKE config ID (0 to 255)"))))
}

async fn list_keys(State(s): State<AdminState>, headers: HeaderMap) -> HttpResult<Json<HpkeKeyList>> {
    require_token(&headers, &s.admin_token, None)?;
    let keys = s.datastore.hpke_keys().await?;
    Ok(Json(HpkeKeyList { keys: keys.iter().map(key_info).collect() }))
}

async fn add_key(
    State(s): State<AdminState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> HttpResult<(StatusCode, Json<HpkeKeyInfo>)> {
    require_token(&headers, &s.admin_token, None)?;
    let body = read_body(body, ADMIN_BODY_BYTES).await?;
    let req: NewHpkeKey = if body.is_empty() {
        NewHpkeKey::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ErrorResponse(DapError::BadRequest(format!("not a new HPKE key request: {e}"))))?
    };
    let id = match req.id {
        Some(id) => HpkeConfigId(id),
        None => {
            let taken: Vec<u8> = s.datastore.hpke_keys().await?.iter().map(|k| k.config.id.0).collect();
            first_free_config_id(&taken)
                .ok_or_else(|| DapError::Conflict("all 256 HPKE config IDs are taken".into()))?
        }
    };
    // Unset parts of the suite are those of `HpkeKeypair::generate_default`.
    let keypair = HpkeKeypair::generate(
        id,
        req.kem_id.map(HpkeKemId).unwrap_or(duet_common::hpke::kem::X25519_HKDF_SHA256),
        req.kdf_id.map(HpkeKdfId).unwrap_or(duet_common::hpke::kdf::HKDF_SHA256),
        req.aead_id.map(HpkeAeadId).unwrap_or(duet_common::hpke::aead::AES_128_GCM),
    )
    .map_err(|e| ErrorResponse(DapError::BadRequest(format!("HPKE suite: {e}"))))?;
    let rec = s.datastore.add_hpke_key(&keypair).await?;
    tracing::info!(config_id = id.0, role = ?s.role, "HPKE key added (pending)");
    Ok((StatusCode::CREATED, Json(key_info(&rec))))
}

async fn set_state(
    s: AdminState,
    headers: HeaderMap,
    id: String,
    state: HpkeKeyState,
) -> HttpResult<Json<HpkeKeyInfo>> {
    require_token(&headers, &s.admin_token, None)?;
    let id = parse_key_id(&id)?;
    let rec = s.datastore.set_hpke_key_state(id, state).await?;
    tracing::info!(config_id = id.0, role = ?s.role, state = state.label(), "HPKE key state changed");
    Ok(Json(key_info(&rec)))
}

async fn activate_key(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> HttpResult<Json<HpkeKeyInfo>> {
    set_state(s, headers, id, HpkeKeyState::Active).await
}

async fn retire_key(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> HttpResult<Json<HpkeKeyInfo>> {
    set_state(s, headers, id, HpkeKeyState::Retired).await
}

#[derive(serde::Deserialize)]
struct DeleteKeyQuery {
    #[serde(default)]
    force: bool,
}

async fn delete_key(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<DeleteKeyQuery>,
) -> HttpResult<StatusCode> {
    require_token(&headers, &s.admin_token, None)?;
    let id = parse_key_id(&id)?;
    s.datastore.delete_hpke_key(id, q.force).await?;
    tracing::info!(config_id = id.0, role = ?s.role, force = q.force, "HPKE key deleted");
    Ok(StatusCode::NO_CONTENT)
}
