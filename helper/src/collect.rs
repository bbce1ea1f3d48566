//! The helper's side of collection (DAP-18 "Obtaining Aggregate Shares"): it checks the
//! leader's batch against its own buckets (size, report count, checksum), marks the batch
//! collected and returns its aggregate share encrypted to the collector, all in one transaction.

use crate::store::{Batch, BucketValues, ShareRelease, Task};
use crate::{helper_task, job_digest, HelperState};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use duet_common::hpke::{seal, HpkeApplicationInfo};
use duet_common::media_type;
use duet_common::messages::*;
use duet_common::problem::{DapError, DapProblemType};
use duet_common::{Decode, Encode};
use duet_server::http::{dap_response, require_media_type, HttpResult};

fn share_response(task: &Task, share_id: &AggregateShareId, status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = dap_response(status, media_type::AGGREGATE_SHARE, body);
    let base = task.parameters.helper_endpoint.trim_end_matches('/');
    if let Ok(v) = HeaderValue::from_str(&format!("{base}/tasks/{}/aggregate_shares/{share_id}", task.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Validates the request's batch and turns it into the batch to read.
fn requested_batch(task: &Task, req: &AggregateShareReq) -> Result<Batch, DapError> {
    let tid = Some(task.id);
    let mode = task.configuration.batch_mode;
    if req.batch_selector.batch_mode() != mode || req.collection_job_req.query.batch_mode() != mode {
        return Err(DapError::invalid_message(tid, "batch mode does not match the task's"));
    }
    if !req.batch_selector.is_consistent_with(&req.collection_job_req.query) {
        return Err(DapError::dap(DapProblemType::BatchInvalid, tid, "batch selector is not within the query"));
    }
    duet_server::checks::check_collection_job_req(Role::Helper, task, &req.collection_job_req)?;
    match req.batch_selector {
        BatchSelector::TimeInterval(c) => {
            if c.batch_interval.duration.units() == 0 || c.batch_interval.end().is_none() {
                return Err(DapError::dap(
                    DapProblemType::BatchInvalid,
                    tid,
                    "batch interval is shorter than time_precision",
                ));
            }
            Ok(Batch::TimeInterval(c.batch_interval))
        }
        BatchSelector::LeaderSelected(c) => Ok(Batch::LeaderSelected(c.batch_id)),
    }
}

/// `POST {helper}/tasks/{task-id}/aggregate_shares`.
pub async fn create(
    State(state): State<HelperState>,
    Path(task_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> HttpResult<Response> {
    let _timer = duet_server::metrics::StepTimer::start("aggregate_share");
    let task = helper_task(&state, &task_id, &headers).await?;
    let body = duet_server::http::read_body(body, state.config.max_body_bytes).await?;
    require_media_type(&headers, media_type::AGGREGATE_SHARE_REQ)?;
    let tid = Some(task.id);
    let req = AggregateShareReq::get_decoded(&body)
        .map_err(|e| DapError::invalid_message(tid, format!("malformed AggregateShareReq: {e}")))?;
    let (share_id, digest) = job_digest(&task.id, &body);
    let share_id = AggregateShareId::from_bytes(share_id);
    if let Some(resp) = state.store.helper_aggregate_share(&task, &share_id).await? {
        return Ok(share_response(&task, &share_id, StatusCode::OK, resp));
    }
    let batch = requested_batch(&task, &req)?;
    match state.store.helper_release_aggregate_share(&task, &share_id, &digest, &batch, &req).await? {
        ShareRelease::Released(resp) => {
            tracing::info!(task_id = %task.id, share_id = %share_id, reports = req.report_count, "aggregate share released");
            duet_server::metrics::aggregate_share_released();
            Ok(share_response(&task, &share_id, StatusCode::CREATED, resp))
        }
        ShareRelease::Overlap => {
            Err(DapError::dap(DapProblemType::BatchOverlap, tid, "the batch was already collected").into())
        }
    }
}

/// Checks the batch against the leader's request (size, count, checksum) and encrypts the
/// helper's aggregate share to the collector.
pub(crate) fn build_share(
    task: &Task,
    req: &AggregateShareReq,
    values: Option<&BucketValues>,
) -> Result<Vec<u8>, DapError> {
    let tid = Some(task.id);
    let count = values.map_or(0, |v| v.report_count);
    if count < task.configuration.min_batch_size {
        return Err(DapError::dap(
            DapProblemType::InvalidBatchSize,
            tid,
            format!("the batch holds {count} reports, fewer than min_batch_size {}", task.configuration.min_batch_size),
        ));
    }
    let values = values.ok_or_else(|| DapError::Internal("non-empty batch without values".into()))?;
    if values.report_count != req.report_count || values.checksum != req.checksum {
        return Err(DapError::dap(
            DapProblemType::BatchMismatch,
            tid,
            format!(
                "helper has {} reports in the batch, leader says {}, or checksums differ",
                values.report_count, req.report_count
            ),
        ));
    }
    let aad = AggregateShareAad::encode_parts(&task.id, &task.configuration_encoded, &req.collection_job_req)
        .map_err(|e| DapError::Internal(e.to_string()))?;
    let share_bytes = task.released_share(values)?;
    let encrypted = seal(
        &task.collector_hpke_config,
        &HpkeApplicationInfo::AggregateShare { sender: Role::Helper },
        &share_bytes,
        &aad,
    )
    .map_err(|e| DapError::Internal(format!("encrypting the aggregate share: {e}")))?;
    AggregateShare { encrypted_aggregate_share: encrypted }.get_encoded().map_err(|e| DapError::Internal(e.to_string()))
}

fn parse_share_id(task: &Task, s: &str) -> Result<AggregateShareId, DapError> {
    s.parse().map_err(|_| DapError::NotFound(format!("no aggregate share {s} in task {}", task.id)))
}

/// `GET {helper}/tasks/{task-id}/aggregate_shares/{aggregate-share-id}`.
pub async fn get(
    State(state): State<HelperState>,
    Path((task_id, share_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> HttpResult<Response> {
    let task = helper_task(&state, &task_id, &headers).await?;
    let share_id = parse_share_id(&task, &share_id)?;
    let resp = state
        .store
        .helper_aggregate_share(&task, &share_id)
        .await?
        .ok_or_else(|| DapError::NotFound(format!("no aggregate share {share_id}")))?;
    Ok(share_response(&task, &share_id, StatusCode::OK, resp))
}

/// `DELETE {helper}/tasks/{task-id}/aggregate_shares/{aggregate-share-id}`: drops the stored
/// share; the batch stays collected.
pub async fn delete(
    State(state): State<HelperState>,
    Path((task_id, share_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> HttpResult<StatusCode> {
    let task = helper_task(&state, &task_id, &headers).await?;
    let share_id = parse_share_id(&task, &share_id)?;
    let done = state.store.helper_delete_aggregate_share(&task, &share_id).await?;
    if !done {
        return Err(DapError::NotFound(format!("no aggregate share {share_id}")).into());
    }
    Ok(StatusCode::OK)
}
