//! The leader's side of collection (DAP-18 "Collecting Results"): collection jobs are created,
//! polled and deleted by the collector here, and driven in the background: once the batch is
//! complete the leader commits it as collected, obtains the helper's aggregate share (waiting out
//! a helper that is away, for as long as it takes) and answers with both encrypted shares. A job
//! the helper fails gives its batch back, collectable again.

use crate::peer::{endpoint_url, PeerError};
use crate::store::{
    Batch, BatchReadiness, BucketValues, CollectionJobRow, CollectionJobState, JobFailure, LeasedCollectionJob, Task,
};
use crate::{retry, LeaderState};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use duet_common::hpke::{seal, HpkeApplicationInfo};
use duet_common::media_type;
use duet_common::messages::*;
use duet_common::problem::{DapError, DapProblemType};
use duet_common::time::Time;
use duet_common::{Decode, Encode};
use duet_server::http::{dap_response, parse_task_id, require_media_type, require_token, ErrorResponse, HttpResult};
use duet_server::metrics;

use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Seconds a collector is asked to wait between polls of a pending job.
const POLL_SECONDS: &str = "1";

async fn leader_task(state: &LeaderState, task_id: &str, headers: &HeaderMap) -> Result<Arc<Task>, DapError> {
    let task_id = parse_task_id(task_id)?;
    let task = state.store.task(&task_id).await?;
    if task.role != Role::Leader {
        return Err(DapError::unrecognized_task(task_id));
    }
    let token = task.collector_token.as_ref().ok_or_else(|| DapError::Internal("no collector token".into()))?;
    require_token(headers, token, Some(task_id))?;
    Ok(task)
}

fn job_location(task: &Task, id: &CollectionJobId) -> String {
    let base = task.parameters.leader_endpoint.trim_end_matches('/');
    format!("{base}/tasks/{}/collection_jobs/{id}", task.id)
}

/// A collection job's current representation: the result, "not ready yet", or its failure.
fn job_response(task: &Task, job: &CollectionJobRow, status: StatusCode) -> HttpResult<Response> {
    let mut resp = match job.state {
        CollectionJobState::Finished => {
            dap_response(status, media_type::COLLECTION_JOB_RESP, job.response.clone().unwrap_or_default())
        }
        // The problem that failed the job, with the job's Location, so that the collector can
        // delete it and ask again (an identical request names this job until then).
        CollectionJobState::Failed => {
            // Every failure that is not a DAP problem comes from the helper's side.
            let failure = job.error.clone().unwrap_or(JobFailure { problem: None, detail: String::new() });
            ErrorResponse(failure.to_dap_error(task.id)).into_response()
        }
        CollectionJobState::Pending => {
            let mut r = status.into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(POLL_SECONDS));
            r
        }
        CollectionJobState::Deleted => return Err(DapError::NotFound(format!("no collection job {}", job.id)).into()),
    };
    if let Ok(v) = HeaderValue::from_str(&job_location(task, &job.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// For a task with differential privacy, tells the collector what its budget stands at, in the
/// mechanism's terms (`Duet-Privacy-Budget: spent=1.5, total=5, unit=epsilon`), so every result
/// can carry its guarantee.
async fn with_budget(state: &LeaderState, task: &Task, mut resp: Response) -> HttpResult<Response> {
    if let Some(dp) = &task.parameters.dp {
        let spent = state.store.privacy_budget_spent(task).await?;
        let unit = dp.unit().name();
        let value = match dp.budget_f64() {
            Some(total) => format!("spent={spent}, total={total}, unit={unit}"),
            None => format!("spent={spent}, unit={unit}"),
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert("duet-privacy-budget", v);
        }
    }
    Ok(resp)
}

/// `POST {leader}/tasks/{task-id}/collection_jobs`.
pub async fn create(
    State(state): State<LeaderState>,
    Path(task_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> HttpResult<Response> {
    let task = leader_task(&state, &task_id, &headers).await?;
    let body = duet_server::http::read_body(body, state.config.max_body_bytes).await?;
    require_media_type(&headers, media_type::COLLECTION_JOB_REQ)?;
    let req = CollectionJobReq::get_decoded(&body)
        .map_err(|e| DapError::invalid_message(Some(task.id), format!("malformed CollectionJobReq: {e}")))?;
    let digest: [u8; 32] = Sha256::digest(&body).into();
    // An identical request names the existing job (DAP-18 "Resource Creation"), before any
    // check that the job itself may since have made fail (such as batchOverlap).
    if let Some(job) = state.store.collection_job_by_digest(&task, &digest).await? {
        return with_budget(&state, &task, job_response(&task, &job, StatusCode::OK)?).await;
    }
    duet_server::checks::check_collection_job_req(Role::Leader, &task, &req)?;
    if let Query::TimeInterval(q) = &req.query {
        // Reports older than the expiry age are refused, and the garbage collector deletes
        // their buckets: a batch reaching back before them cannot be collected whole.
        let now = Time::from_seconds(state.store.clock().now_seconds(), task.configuration.time_precision);
        if let Some(oldest) = task.oldest_report_time(now, state.config.default_report_expiry_seconds) {
            if q.batch_interval.start < oldest {
                return Err(DapError::dap(
                    DapProblemType::BatchInvalid,
                    Some(task.id),
                    format!(
                        "the batch interval begins before the task's reports expire (the oldest kept is stamped {} s); \
                         its reports older than that are deleted",
                        oldest.to_seconds(task.configuration.time_precision).unwrap_or(u64::MAX)
                    ),
                )
                .into());
            }
        }
        let overlap = state.store.batch_overlaps_collected(&task, &Batch::TimeInterval(q.batch_interval)).await?;
        if overlap {
            return Err(DapError::dap(
                DapProblemType::BatchOverlap,
                Some(task.id),
                "the batch interval overlaps one already collected",
            )
            .into());
        }
    }
    let id = state.store.insert_collection_job(&task, &body, &digest).await?;
    tracing::info!(task_id = %task.id, collection_job_id = %id, "collection job created");
    metrics::collection_job("created");
    state.collection_wake.notify_one();
    let job = settle_briefly(&state, &task, &id)
        .await?
        .ok_or_else(|| DapError::Internal("collection job vanished".into()))?;
    with_budget(&state, &task, job_response(&task, &job, StatusCode::CREATED)?).await
}

/// How long a request waits for a pending collection job to finish before it answers "not yet".
/// A batch that is ready is usually collected in milliseconds, and DAP lets the leader answer
/// with the result at once (DAP-18 "Asynchronous Request Handling"): the collector then needs no
/// poll, which with `Retry-After`'s whole seconds would cost it a second.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// The job, once it is no longer pending or [`SETTLE_WAIT`] has passed. The driver may run on
/// another replica, so the job is looked at again every 50 ms as well as when this replica's
/// driver ends a job.
async fn settle_briefly(
    state: &LeaderState,
    task: &Task,
    id: &CollectionJobId,
) -> Result<Option<CollectionJobRow>, DapError> {
    let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
    loop {
        let ended = state.collection_done.notified();
        let job = state.store.collection_job(task, id).await?;
        let pending = job.as_ref().is_some_and(|j| j.state == CollectionJobState::Pending);
        if !pending || tokio::time::Instant::now() >= deadline {
            return Ok(job);
        }
        tokio::select! {
            _ = ended => {}
            _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
        }
    }
}

fn parse_job_id(s: &str) -> Result<CollectionJobId, DapError> {
    s.parse().map_err(|_| DapError::NotFound(format!("no collection job {s}")))
}

/// `GET {leader}/tasks/{task-id}/collection_jobs/{collection-job-id}`.
pub async fn get(
    State(state): State<LeaderState>,
    Path((task_id, job_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> HttpResult<Response> {
    let task = leader_task(&state, &task_id, &headers).await?;
    let id = parse_job_id(&job_id)?;
    let job = settle_briefly(&state, &task, &id)
        .await?
        .ok_or_else(|| DapError::NotFound(format!("no collection job {id}")))?;
    with_budget(&state, &task, job_response(&task, &job, StatusCode::OK)?).await
}

/// `DELETE {leader}/tasks/{task-id}/collection_jobs/{collection-job-id}`: the job is abandoned;
/// what the replay and double-collection checks need stays.
pub async fn delete(
    State(state): State<LeaderState>,
    Path((task_id, job_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> HttpResult<StatusCode> {
    let task = leader_task(&state, &task_id, &headers).await?;
    let id = parse_job_id(&job_id)?;
    if !state.store.delete_collection_job(&task, &id).await? {
        return Err(DapError::NotFound(format!("no collection job {id}")).into());
    }
    tracing::info!(task_id = %task.id, collection_job_id = %id, "collection job deleted");
    Ok(StatusCode::OK)
}

pub(crate) fn seal_leader_share(
    task: &Task,
    req: &CollectionJobReq,
    values: &BucketValues,
) -> Result<HpkeCiphertext, DapError> {
    let aad = AggregateShareAad::encode_parts(&task.id, &task.configuration_encoded, req)
        .map_err(|e| DapError::Internal(e.to_string()))?;
    let share = task.released_share(values)?;
    seal(&task.collector_hpke_config, &HpkeApplicationInfo::AggregateShare { sender: Role::Leader }, &share, &aad)
        .map_err(|e| DapError::Internal(format!("encrypting the aggregate share: {e}")))
}

/// Drives one leased collection job as far as it can go now.
pub async fn drive_job(state: &LeaderState, leased: LeasedCollectionJob) -> Result<(), DapError> {
    let id = leased.id;
    let task = state.store.task(&leased.task_id).await?;
    let Some(mut job) = state.store.collection_job(&task, &id).await? else {
        return Ok(());
    };
    if job.state != CollectionJobState::Pending {
        return Ok(());
    }
    let ds = &state.store;
    let _timer = metrics::StepTimer::start("collection_job");
    if !job.batch_committed {
        match ds.commit_collection_batch(&task, &job).await? {
            BatchReadiness::Wait(why) => {
                tracing::debug!(task_id = %task.id, collection_job_id = %id, %why, "collection job waits");
                return ds.defer_collection_job(&task, &id, 1, None).await.map_err(DapError::from);
            }
            BatchReadiness::Refuse(err) => {
                tracing::info!(task_id = %task.id, collection_job_id = %id, error = %err, "collection job failed");
                metrics::collection_job("failed");
                let failure = JobFailure { problem: err.kind(), detail: err.to_string() };
                return ds.end_collection_job(&task, &id, Err(failure)).await.map_err(DapError::from);
            }
            BatchReadiness::Committed { .. } => {
                job = ds
                    .collection_job(&task, &id)
                    .await?
                    .ok_or_else(|| DapError::Internal("collection job vanished".into()))?;
            }
        }
    }
    let (Some(report_count), Some(checksum), Some(interval), Some(leader_share)) =
        (job.report_count, job.checksum, job.result_interval, job.leader_encrypted_agg_share.clone())
    else {
        return Err(DapError::Internal(format!("collection job {id} committed without its values")));
    };
    let batch_selector = match (&job.request.query, job.batch_id) {
        (Query::TimeInterval(q), _) => {
            BatchSelector::TimeInterval(TimeIntervalBatchSelectorConfig { batch_interval: q.batch_interval })
        }
        (Query::LeaderSelected(_), Some(batch_id)) => {
            BatchSelector::LeaderSelected(LeaderSelectedBatchSelectorConfig { batch_id })
        }
        (Query::LeaderSelected(_), None) => return Err(DapError::Internal("committed batch without its ID".into())),
    };
    // Built from what the batch's commit stored, so that every retry is byte-identical and the
    // helper answers it with the share it stored (DAP-18 "Obtaining Aggregate Shares").
    let share_req =
        AggregateShareReq { collection_job_req: job.request.clone(), batch_selector, report_count, checksum };
    let body = share_req.get_encoded().map_err(|e| DapError::Internal(e.to_string()))?;
    let url = endpoint_url(&task.parameters.helper_endpoint, &format!("tasks/{}/aggregate_shares", task.id))
        .map_err(DapError::Internal)?;
    let lease = std::time::Duration::from_secs(state.config.lease_seconds as u64);
    let renew = || state.store.renew_collection_job_lease(&leased, state.config.lease_seconds);
    let request = state.peer.fetch(
        url,
        task.presented_token()?,
        media_type::AGGREGATE_SHARE_REQ,
        body,
        media_type::AGGREGATE_SHARE,
        state.config.max_retry_delay,
        || async {},
    );
    let Some(answer) = retry::under_lease(request, lease, renew).await else {
        tracing::warn!(task_id = %task.id, collection_job_id = %id, "lost the lease of the collection job; another driver has it");
        return Ok(());
    };
    // Whether the helper had deferred the request makes no difference here: the collector
    // receives nothing from a failed collection either way.
    let helper_share = match answer.map_err(|e| e.error) {
        Ok((bytes, _)) => match AggregateShare::get_decoded(&bytes) {
            Ok(share) => share.encrypted_aggregate_share,
            Err(e) => {
                let detail = format!("the helper's AggregateShare is malformed: {e}");
                return fail(state, &task, &id, JobFailure { problem: None, detail }).await;
            }
        },
        Err(PeerError::Transient { reason, detail, retry_after }) => {
            let delay = retry::retry_delay(leased.attempts, retry_after, state.config.max_retry_delay);
            if leased.attempts.is_power_of_two() {
                tracing::warn!(task_id = %task.id, collection_job_id = %id, reason = reason.label(), %detail,
                    delay_seconds = delay.as_secs_f64(), "aggregate share request waits for the helper");
            }
            metrics::helper_retry("aggregate_share", reason.label());
            return ds
                .defer_collection_job(&task, &id, retry::whole_seconds(delay), Some(&detail))
                .await
                .map_err(DapError::from);
        }
        Err(PeerError::Rejected { problem, detail, .. }) => {
            let detail = format!("the helper refused the aggregate share: {detail}");
            return fail(state, &task, &id, JobFailure { problem, detail }).await;
        }
    };
    let resp = CollectionJobResp {
        report_count,
        interval,
        leader_encrypted_agg_share: leader_share,
        helper_encrypted_agg_share: helper_share,
    }
    .get_encoded()
    .map_err(|e| DapError::Internal(e.to_string()))?;
    ds.end_collection_job(&task, &id, Ok(resp)).await?;
    tracing::info!(task_id = %task.id, collection_job_id = %id, reports = report_count, "collection job finished");
    metrics::collection_job("finished");
    Ok(())
}

/// Fails the job with the problem the helper caused (DAP-18: "the Leader MUST fail the
/// collection job with the error that caused the failure"). Nothing of the batch was released,
/// so it stays collectable.
async fn fail(state: &LeaderState, task: &Task, id: &CollectionJobId, failure: JobFailure) -> Result<(), DapError> {
    let (problem, detail) = failure.to_db();
    tracing::error!(task_id = %task.id, collection_job_id = %id, problem, detail, "collection job failed");
    metrics::collection_job("failed");
    Ok(state.store.end_collection_job(task, id, Err(failure)).await?)
}
