//! The leader's upload endpoint (DAP-18 "Upload Request", leader behaviour): every report of an
//! `UploadRequest` is checked, the accepted ones are stored durably in one transaction before
//! the answer, and the failed ones are listed in an `UploadErrors` in request order.

use crate::LeaderState;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use duet_common::media_type;
use duet_common::messages::*;
use duet_common::problem::DapError;
use duet_common::server::http::{dap_response, parse_task_id, require_media_type, HttpResult};
use duet_common::server::storage::Task;
use duet_common::time::{Duration, Time};
use duet_common::Encode;
use std::collections::HashSet;

/// The checks that need no storage: time, task interval, HPKE config, extensions.
fn precheck(
    task: &Task,
    report: &EncodedReport<'_>,
    known_configs: &HashSet<HpkeConfigId>,
    skew: Duration,
) -> Option<ReportError> {
    let meta = &report.report_metadata;
    let now = Time::now(task.configuration.time_precision);
    if now.checked_add(skew).is_some_and(|limit| meta.time > limit) {
        return Some(ReportError::ReportTooEarly);
    }
    if task.configuration.task_interval().is_some_and(|i| !i.contains(meta.time)) {
        return Some(ReportError::ReportDropped);
    }
    if !known_configs.contains(&report.leader_config_id) {
        return Some(ReportError::OutdatedConfig);
    }
    // duet recognises no report extensions: any public one makes the report unusable.
    if !meta.public_extensions.is_empty() {
        return Some(ReportError::InvalidMessage);
    }
    None
}

/// `POST {leader}/tasks/{task-id}/reports`.
pub async fn upload(
    State(state): State<LeaderState>,
    Path(task_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> HttpResult<Response> {
    let _timer = duet_common::server::metrics::StepTimer::start("upload");
    let task_id = parse_task_id(&task_id)?;
    let task = state.store.task(&task_id).await?;
    if task.role != Role::Leader {
        return Err(DapError::unrecognized_task(task_id).into());
    }
    require_media_type(&headers, media_type::UPLOAD_REQ)?;
    // Read in place: the accepted reports are stored as these bytes, never copied into reports
    // of their own (a request may carry thousands).
    let reports = UploadRequest::decode_in_place(&body)
        .map_err(|e| DapError::invalid_message(Some(task_id), format!("malformed UploadRequest: {e}")))?;
    let known: HashSet<HpkeConfigId> = state.store.hpke_keypairs().await?.iter().map(|(k, _)| k.config().id).collect();
    let skew =
        Duration::from_seconds_ceil(state.config.tolerable_clock_skew_seconds, task.configuration.time_precision);

    // Stateless checks first; the survivors go to storage in one transaction.
    let mut errors: Vec<Option<ReportError>> = Vec::with_capacity(reports.len());
    let mut seen = HashSet::new();
    let mut to_store = Vec::new();
    for report in &reports {
        let mut error = precheck(&task, report, &known, skew);
        if error.is_none() && !seen.insert(report.report_metadata.report_id) {
            error = Some(ReportError::ReportReplayed);
        }
        if error.is_none() {
            to_store.push(report);
        }
        errors.push(error);
    }
    let mut stored = state.store.put_reports(&task, &to_store).await?.into_iter();
    let errors: Vec<ReportUploadStatus> = reports
        .iter()
        .zip(errors)
        .filter_map(|(report, error)| {
            let error = match error {
                Some(e) => Some(e),
                None => stored.next().flatten(),
            };
            error.map(|error| ReportUploadStatus { id: report.report_metadata.report_id, error })
        })
        .collect();
    tracing::debug!(task_id = %task.id, reports = reports.len(), rejected = errors.len(), "upload");
    let rejected: Vec<ReportError> = errors.iter().map(|s| s.error).collect();
    duet_common::server::metrics::reports_uploaded((reports.len() - errors.len()) as u64, &rejected);
    if errors.is_empty() {
        return Ok(StatusCode::OK.into_response());
    }
    let body = UploadErrors { status: errors }.get_encoded().map_err(|e| DapError::Internal(e.to_string()))?;
    Ok(dap_response(StatusCode::OK, media_type::UPLOAD_ERRORS, body))
}
