//! The helper's side of the aggregation interaction (DAP-18 "Helper Initialization" and "Helper
//! Continuation"): aggregation jobs are created, continued, polled and deleted here. A job's
//! initialization is handled synchronously while the work queue is short, and asynchronously
//! (answered at once, polled with `GET`) once it is long ([`crate::queue`]); each step commits in
//! one transaction, and a repeated request is answered from the stored response without doing
//! the work twice.

use crate::queue::{Admission, Ticket};
use crate::store::{HelperJob, HelperJobState, HelperOutcome as Outcome, HelperStep, Store, Task};
use crate::{helper_task, job_digest, HelperState};
use axum::extract::{Path, Query as UrlQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use duet_common::media_type;
use duet_common::messages::*;
use duet_common::problem::{DapError, DapProblemType};
use duet_common::time::{Duration, Time};
use duet_common::vdaf::Transition;
use duet_common::Decode;
use duet_server::checks;
use duet_server::http::{dap_response, read_body, require_media_type, HttpResult};
use std::collections::HashSet;
use std::sync::Arc;

fn job_location(task: &Task, job_id: &AggregationJobId, step: Option<AggregationJobStep>) -> String {
    let base = task.parameters.helper_endpoint.trim_end_matches('/');
    match step {
        Some(step) => format!("{base}/tasks/{}/aggregation_jobs/{job_id}?step={step}", task.id),
        None => format!("{base}/tasks/{}/aggregation_jobs/{job_id}", task.id),
    }
}

fn job_response(status: StatusCode, location: String, body: Vec<u8>) -> Response {
    let mut resp = dap_response(status, media_type::AGGREGATION_JOB_RESP, body);
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Decrypts and checks one report share (`duet_server::checks`), then runs
/// `ping_pong_helper_init`.
fn init_report(
    task: &Task,
    keys: &[duet_common::hpke::HpkeKeypair],
    now: Time,
    skew: Duration,
    oldest: Option<Time>,
    vi: &VerifyInit,
) -> Outcome {
    let meta = &vi.report_share.report_metadata;
    if let Err(e) = checks::check_report_time(task.configuration.task_interval(), meta.time, now, skew, oldest) {
        return Outcome::Reject(e);
    }
    let cx = checks::ShareContext {
        task_id: &task.id,
        configuration_encoded: &task.configuration_encoded,
        role: Role::Helper,
    };
    let rs = &vi.report_share;
    let share = match checks::open_input_share(&cx, keys, meta, &rs.public_share, &rs.encrypted_input_share) {
        Ok(share) => share,
        Err(e) => return Outcome::Reject(e),
    };
    let ctx = task.vdaf_context();
    match task.vdaf.helper_init(
        &task.verify_key,
        &ctx,
        meta.report_id.as_bytes(),
        &vi.report_share.public_share,
        &share.payload,
        &vi.payload,
    ) {
        Ok(Transition::FinishedWithOutbound { out_share, outbound }) => {
            Outcome::Commit { out_share, outbound: Some(outbound), time: meta.time }
        }
        Ok(Transition::Continued { state, outbound }) => Outcome::Keep { state, outbound, time: meta.time },
        // Not reachable at initialisation for a well-behaved VDAF.
        Ok(Transition::Finished { .. }) => Outcome::Reject(ReportError::VdafVerifyError),
        Err(e) => Outcome::Reject(e.report_error()),
    }
}

fn check_extensions(task: &Task, req: &AggregationJobInitReq) -> Result<Option<BatchId>, DapError> {
    let tid = Some(task.id);
    if !strictly_increasing(req.extensions.iter().map(|e| e.extension_type)) {
        return Err(DapError::invalid_message(tid, "aggregation job extensions are not strictly increasing"));
    }
    let unknown: Vec<u16> = req
        .extensions
        .iter()
        .filter(|e| e.extension_type != AggregationJobExtensionType::LEADER_SELECTED_BATCH_ID)
        .map(|e| e.extension_type.0)
        .collect();
    if !unknown.is_empty() {
        return Err(DapError::UnsupportedExtension { task_id: tid, extensions: unknown });
    }
    let batch_id = req
        .leader_selected_batch_id()
        .map_err(|_| DapError::invalid_message(tid, "leader_selected_batch_id is not a BatchID"))?;
    match (task.configuration.batch_mode, batch_id) {
        (BatchMode::LeaderSelected, None) => {
            Err(DapError::invalid_message(tid, "leader-selected task without leader_selected_batch_id"))
        }
        (BatchMode::TimeInterval, Some(_)) => {
            Err(DapError::invalid_message(tid, "leader_selected_batch_id on a time-interval task"))
        }
        (_, b) => Ok(b),
    }
}

/// `POST {helper}/tasks/{task-id}/aggregation_jobs`.
pub async fn init(
    State(state): State<HelperState>,
    Path(task_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> HttpResult<Response> {
    let _timer = duet_server::metrics::StepTimer::start("aggregation_job_init");
    let task = helper_task(&state, &task_id, &headers).await?;
    let body = read_body(body, state.config.max_body_bytes).await?;
    require_media_type(&headers, media_type::AGGREGATION_JOB_INIT_REQ)?;
    let tid = Some(task.id);
    let req = AggregationJobInitReq::get_decoded(&body)
        .map_err(|e| DapError::invalid_message(tid, format!("malformed AggregationJobInitReq: {e}")))?;
    // The job ID is derived from the request, so a retried POST names the same job.
    let (job_id, digest) = job_digest(&task.id, &body);
    let job_id = AggregationJobId::from_bytes(job_id);
    if let Some(resp) = existing_job(&state.store, &task, &job_id).await? {
        return Ok(resp);
    }
    let batch_id = check_extensions(&task, &req)?;
    if !task.vdaf.is_agg_param_valid(&req.agg_param) {
        return Err(DapError::dap(
            DapProblemType::InvalidAggregationParameter,
            tid,
            "Prio3 takes an empty aggregation parameter",
        )
        .into());
    }
    if req.verification_key_id != 0 {
        return Err(
            DapError::invalid_message(tid, format!("unknown verification key {}", req.verification_key_id)).into()
        );
    }
    let report_ids: Vec<ReportId> = req.verify_inits.iter().map(|v| v.report_share.report_metadata.report_id).collect();
    if report_ids.iter().collect::<HashSet<_>>().len() != report_ids.len() {
        return Err(DapError::invalid_message(tid, "report IDs in the job are not distinct").into());
    }

    // A retried request while the job is worked on in the background: still not ready.
    if state.store.helper_step_deferred(&task, &job_id, AggregationJobStep(0)).await? {
        return Ok(deferred_response(StatusCode::OK, &task, &job_id, AggregationJobStep(0)));
    }
    let work = InitWork { task: task.clone(), job_id, digest, batch_id, req };
    let run = move |state: HelperState, ticket: Ticket| async move { work.run(&state, &ticket).await };
    Ok(admitted(&state, &task, job_id, AggregationJobStep(0), digest, StatusCode::CREATED, run).await?)
}

/// Runs a step's `work` as the queue admits it (DAP-18 "Asynchronous Request Handling"): now,
/// with its answer; in the background, answered at once with no body, `deferred_status` and the
/// step's `Location` to poll; or not at all, with 503 and `Retry-After`, when the queue is full.
/// Work that fails in the background leaves no deferral behind: the leader's next poll finds
/// nothing in progress and sends the identical request again.
async fn admitted<W, F>(
    state: &HelperState,
    task: &Arc<Task>,
    job_id: AggregationJobId,
    step: AggregationJobStep,
    digest: [u8; 32],
    deferred_status: StatusCode,
    work: W,
) -> Result<Response, DapError>
where
    W: FnOnce(HelperState, Ticket) -> F + Send + 'static,
    F: std::future::Future<Output = Result<(StatusCode, Vec<u8>), DapError>> + Send + 'static,
{
    match state.queue.admit() {
        Admission::Full => {
            duet_server::metrics::aggregation_jobs(Role::Helper, "refused_busy", 1);
            Err(DapError::Unavailable("the aggregation queue is full".into()))
        }
        Admission::Now(ticket) => {
            let (status, body) = work(state.clone(), ticket).await?;
            Ok(job_response(status, job_location(task, &job_id, None), body))
        }
        Admission::Deferred(ticket) => {
            state.store.helper_defer_step(task, &job_id, step, &digest, &state.owner, DEFERRAL_LEASE_SECONDS).await?;
            state.keep_deferrals_alive();
            duet_server::metrics::aggregation_jobs(Role::Helper, "deferred", 1);
            let (background, deferred_task) = (state.clone(), task.clone());
            tokio::spawn(async move {
                if let Err(e) = work(background.clone(), ticket).await {
                    let task_id = deferred_task.id;
                    tracing::warn!(%task_id, %job_id, %step, error = %e, "deferred aggregation step failed");
                    let _ = background.store.helper_drop_deferred(&deferred_task, &job_id, step).await;
                }
            });
            Ok(deferred_response(deferred_status, task, &job_id, step))
        }
    }
}

/// How long a deferred step's record lives unless its process renews it.
pub(crate) const DEFERRAL_LEASE_SECONDS: i64 = 30;

/// The answer to a request handled in the background: no body, the job's `Location` with the
/// step to poll, and when to poll.
fn deferred_response(status: StatusCode, task: &Task, job_id: &AggregationJobId, step: AggregationJobStep) -> Response {
    let mut resp = status.into_response();
    if let Ok(v) = HeaderValue::from_str(&job_location(task, job_id, Some(step))) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// A validated initialization request, to verify and commit.
struct InitWork {
    task: Arc<Task>,
    job_id: AggregationJobId,
    digest: [u8; 32],
    batch_id: Option<BatchId>,
    req: AggregationJobInitReq,
}

impl InitWork {
    /// Verifies every report and commits the job: the status and the encoded answer.
    async fn run(self, state: &HelperState, ticket: &Ticket) -> Result<(StatusCode, Vec<u8>), DapError> {
        let InitWork { task, job_id, digest, batch_id, req } = self;
        let report_ids: Vec<ReportId> =
            req.verify_inits.iter().map(|v| v.report_share.report_metadata.report_id).collect();
        let keys: Vec<_> = state.store.hpke_keypairs().await?.into_iter().map(|(k, _)| k).collect();
        let skew =
            Duration::from_seconds_ceil(state.config.tolerable_clock_skew_seconds, task.configuration.time_precision);
        let now = Time::from_seconds(state.store.clock().now_seconds(), task.configuration.time_precision);
        let oldest = task.oldest_report_time(now, state.config.default_report_expiry_seconds);
        let task_cpu = task.clone();
        // Spawned once a worker is free: spawning starts the work.
        let verify = async move {
            tokio::task::spawn_blocking(move || {
                req.verify_inits
                    .iter()
                    .map(|vi| init_report(&task_cpu, &keys, now, skew, oldest, vi))
                    .collect::<Vec<_>>()
            })
            .await
        };
        let outcomes =
            ticket.on_worker(verify).await.map_err(|e| DapError::Internal(format!("verification task failed: {e}")))?;

        let reports = report_ids.len();
        let step = HelperStep { job_id, digest, batch_id, step: AggregationJobStep(0), report_ids, outcomes };
        let Some(resp) = state.store.helper_init_job(&task, step).await? else {
            // A concurrent identical request won the race while we verified.
            return live_job(state, &task, &job_id).await.map(|j| (StatusCode::OK, j.last_response));
        };
        tracing::info!(task_id = %task.id, job_id = %job_id, reports, "aggregation job initialized");
        record_outcomes(&resp);
        let body = resp.get_encoded().map_err(|e| DapError::Internal(e.to_string()))?;
        Ok((StatusCode::CREATED, body))
    }
}

/// Counts a committed step's reports from its stored answer, which also holds the refusals the
/// storage step itself made (replays, collected batches). Prio3 helpers commit their output
/// share as they answer, so every report not rejected was aggregated.
fn record_outcomes(resp: &AggregationJobResp) {
    let failed: Vec<ReportError> = resp
        .verify_resps
        .iter()
        .filter_map(|r| match r.verify_resp_type {
            VerifyRespType::Reject { report_error } => Some(report_error),
            _ => None,
        })
        .collect();
    let aggregated = (resp.verify_resps.len() - failed.len()) as u64;
    duet_server::metrics::reports_aggregated(Role::Helper, aggregated, &failed);
    duet_server::metrics::aggregation_jobs(Role::Helper, "finished", 1);
}

/// The stored answer to a repeated init request: the job's location and current state.
async fn existing_job(store: &Store, task: &Task, job_id: &AggregationJobId) -> Result<Option<Response>, DapError> {
    Ok(store
        .helper_job(task, job_id)
        .await?
        .filter(|j| j.state != HelperJobState::Deleted)
        .map(|job| job_response(StatusCode::OK, job_location(task, job_id, None), job.last_response)))
}

fn parse_job_id(task: &Task, s: &str) -> Result<AggregationJobId, DapError> {
    s.parse().map_err(|_| {
        DapError::dap(DapProblemType::UnrecognizedAggregationJob, Some(task.id), format!("no aggregation job {s}"))
    })
}

async fn live_job(state: &HelperState, task: &Task, job_id: &AggregationJobId) -> Result<HelperJob, DapError> {
    state.store.helper_job(task, job_id).await?.filter(|j| j.state != HelperJobState::Deleted).ok_or_else(|| {
        DapError::dap(DapProblemType::UnrecognizedAggregationJob, Some(task.id), format!("no aggregation job {job_id}"))
    })
}

/// `POST {helper}/tasks/{task-id}/aggregation_jobs/{aggregation-job-id}`: a continuation step.
pub async fn continue_job(
    State(state): State<HelperState>,
    Path((task_id, job_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> HttpResult<Response> {
    let _timer = duet_server::metrics::StepTimer::start("aggregation_job_continue");
    let task = helper_task(&state, &task_id, &headers).await?;
    let body = read_body(body, state.config.max_body_bytes).await?;
    require_media_type(&headers, media_type::AGGREGATION_JOB_CONTINUE_REQ)?;
    let tid = Some(task.id);
    let job_id = parse_job_id(&task, &job_id)?;
    let job = live_job(&state, &task, &job_id).await?;
    let req = AggregationJobContinueReq::get_decoded(&body)
        .map_err(|e| DapError::invalid_message(tid, format!("malformed AggregationJobContinueReq: {e}")))?;
    if req.step.0 == 0 {
        return Err(DapError::invalid_message(tid, "a continuation cannot be step 0").into());
    }
    let (_, digest) = job_digest(&task.id, &body);
    if req.step == job.step {
        // A retry of the last step: answer as before, but only for the identical request.
        if digest.as_slice() == job.last_request_digest.as_slice() {
            return Ok(job_response(StatusCode::OK, job_location(&task, &job_id, None), job.last_response));
        }
        return Err(DapError::dap(DapProblemType::StepMismatch, tid, "a different request for the current step").into());
    }
    if job.step.next() != Some(req.step) {
        return Err(DapError::dap(
            DapProblemType::StepMismatch,
            tid,
            format!("job is at step {}, request is for {}", job.step, req.step),
        )
        .into());
    }
    // A retried request while the step is worked on in the background: still not ready.
    if state.store.helper_step_deferred(&task, &job_id, req.step).await? {
        return Ok(deferred_response(StatusCode::OK, &task, &job_id, req.step));
    }
    let step = req.step;
    let outcome = async {
        let work = ContinueWork::prepare(&state, &task, &job, job_id, req, digest).await?;
        let run = move |state: HelperState, ticket: Ticket| async move { work.run(&state, &ticket).await };
        admitted(&state, &task, job_id, step, digest, StatusCode::OK, run).await
    };
    match outcome.await {
        Ok(resp) => Ok(resp),
        Err(e) => {
            // An identical request may have moved the job on while this one worked (its states
            // consumed, its step taken): this one gets the answer that request stored.
            match live_job(&state, &task, &job_id).await {
                Ok(now) if now.step == step && now.last_request_digest == digest => {
                    Ok(job_response(StatusCode::OK, job_location(&task, &job_id, None), now.last_response))
                }
                _ => Err(e.into()),
            }
        }
    }
}

/// A validated continuation request, to verify and commit: each report's kept state with the
/// leader's message.
struct ContinueWork {
    task: Arc<Task>,
    job_id: AggregationJobId,
    from: AggregationJobStep,
    step: AggregationJobStep,
    digest: [u8; 32],
    batch_id: Option<BatchId>,
    report_ids: Vec<ReportId>,
    work: Vec<(Time, Vec<u8>, Vec<u8>)>,
}

impl ContinueWork {
    /// Checks that the request continues the job's reports (DAP-18 "Helper Continuation"),
    /// before any of it is deferred: what fails here fails the request, not the work.
    async fn prepare(
        state: &HelperState,
        task: &Arc<Task>,
        job: &HelperJob,
        job_id: AggregationJobId,
        req: AggregationJobContinueReq,
        digest: [u8; 32],
    ) -> Result<Self, DapError> {
        let tid = Some(task.id);
        let mut states = state.store.helper_kept_states(task, &job_id).await?;
        let mut work = Vec::with_capacity(req.verify_continues.len());
        let mut report_ids = Vec::with_capacity(req.verify_continues.len());
        for vc in req.verify_continues {
            // Taken out as it is used: a report named twice finds nothing the second time.
            let Some((time, blob)) = states.remove(&vc.report_id) else {
                let why = match report_ids.contains(&vc.report_id) {
                    true => "repeated report ID in continuation".to_string(),
                    false => format!("report {} is not awaiting continuation", vc.report_id),
                };
                return Err(DapError::invalid_message(tid, why));
            };
            report_ids.push(vc.report_id);
            work.push((time, blob, vc.payload));
        }
        let (from, step, batch_id) = (job.step, req.step, job.batch_id);
        Ok(Self { task: task.clone(), job_id, from, step, digest, batch_id, report_ids, work })
    }

    /// Verifies every report (on a worker) and commits the step: the status and the encoded
    /// `AggregationJobResp`.
    async fn run(self, state: &HelperState, ticket: &Ticket) -> Result<(StatusCode, Vec<u8>), DapError> {
        let ContinueWork { task, job_id, from, step, digest, batch_id, report_ids, work } = self;
        let tid = Some(task.id);
        let task_cpu = task.clone();
        let verify = async move {
            tokio::task::spawn_blocking(move || {
                let ctx = task_cpu.vdaf_context();
                work.into_iter()
                    .map(|(time, blob, inbound)| continue_report(&task_cpu, &ctx, time, &blob, &inbound))
                    .collect()
            })
            .await
        };
        let outcomes: Vec<Outcome> =
            ticket.on_worker(verify).await.map_err(|e| DapError::Internal(format!("verification task failed: {e}")))?;
        let step = HelperStep { job_id, digest, batch_id, step, report_ids, outcomes };
        let Some(resp) = state.store.helper_continue_job(&task, from, step).await? else {
            return Err(DapError::dap(DapProblemType::StepMismatch, tid, "the job advanced concurrently"));
        };
        record_outcomes(&resp);
        Ok((StatusCode::OK, resp.get_encoded().map_err(|e| DapError::Internal(e.to_string()))?))
    }
}

/// One report's continuation (DAP-18 "Helper Continuation"): its next state, its output share,
/// or its error.
fn continue_report(task: &Task, ctx: &[u8], time: Time, blob: &[u8], inbound: &[u8]) -> Outcome {
    let state = match task.vdaf.decode_verify_state(1, blob) {
        Ok(s) => s,
        Err(_) => return Outcome::Reject(ReportError::VdafVerifyError),
    };
    match task.vdaf.helper_continued(ctx, state, inbound) {
        Ok(Transition::Continued { state, outbound }) => Outcome::Keep { state, outbound, time },
        Ok(Transition::FinishedWithOutbound { out_share, outbound }) => {
            Outcome::Commit { out_share, outbound: Some(outbound), time }
        }
        Ok(Transition::Finished { out_share }) => Outcome::Commit { out_share, outbound: None, time },
        Err(e) => Outcome::Reject(e.report_error()),
    }
}

#[derive(serde::Deserialize)]
pub struct StepParam {
    step: Option<u16>,
}

/// `GET {helper}/tasks/{task-id}/aggregation_jobs/{aggregation-job-id}?step=N`.
pub async fn get_job(
    State(state): State<HelperState>,
    Path((task_id, job_id)): Path<(String, String)>,
    UrlQuery(q): UrlQuery<StepParam>,
    headers: HeaderMap,
) -> HttpResult<Response> {
    let task = helper_task(&state, &task_id, &headers).await?;
    let job_id = parse_job_id(&task, &job_id)?;
    let Some(step) = q.step else {
        return Err(
            DapError::invalid_message(Some(task.id), "GET on an aggregation job needs the step parameter").into()
        );
    };
    let step = AggregationJobStep(step);
    let answer =
        |job: HelperJob| job_response(StatusCode::OK, job_location(&task, &job_id, Some(job.step)), job.last_response);
    if let Ok(job) = live_job(&state, &task, &job_id).await {
        if job.step == step {
            return Ok(answer(job));
        }
    }
    // Still being worked on in the background.
    if state.store.helper_step_deferred(&task, &job_id, step).await? {
        return Ok(deferred_response(StatusCode::OK, &task, &job_id, step));
    }
    // Or finished between the two reads (the commit stores the step and drops its deferral at
    // once), so the job is read again.
    let job = live_job(&state, &task, &job_id).await?;
    if job.step == step {
        return Ok(answer(job));
    }
    if job.step.next() == Some(step) {
        // Its background work failed: nothing is in progress, and the leader sends the
        // identical request again (as for a job whose initialization failed, which is gone).
        return Err(DapError::dap(
            DapProblemType::UnrecognizedAggregationJob,
            Some(task.id),
            format!("step {step} of job {job_id} is not in progress; send its request again"),
        )
        .into());
    }
    Err(DapError::dap(DapProblemType::StepMismatch, Some(task.id), format!("job is at step {}", job.step)).into())
}

/// `DELETE {helper}/tasks/{task-id}/aggregation_jobs/{aggregation-job-id}`: forget the job's
/// working state; replay and collection records stay.
pub async fn delete_job(
    State(state): State<HelperState>,
    Path((task_id, job_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> HttpResult<StatusCode> {
    let task = helper_task(&state, &task_id, &headers).await?;
    let job_id = parse_job_id(&task, &job_id)?;
    live_job(&state, &task, &job_id).await?;
    state.store.helper_delete_job(&task, &job_id).await?;
    Ok(StatusCode::OK)
}
