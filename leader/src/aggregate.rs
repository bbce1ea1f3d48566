//! The leader's side of aggregation (DAP-18 "Aggregating Reports", leader behaviour): the job
//! creator puts uploaded reports into aggregation jobs, and the driver runs each job with the
//! helper: it opens the leader's input shares, starts verification, sends the
//! `AggregationJobInitReq`, finishes verification on the helper's answer and commits the output
//! shares into batch buckets in one transaction. A helper that cannot be reached, or is not
//! ready, is waited for as long as it takes, the identical request sent again each time; a
//! helper that refuses the job, or answers what the leader cannot follow, has it abandoned.

use crate::peer::{endpoint_url, PeerError, RetryReason};
use crate::{retry, LeaderState};
use duet_common::hpke::{open, HpkeApplicationInfo, HpkeKeypair};
use duet_common::media_type;
use duet_common::messages::*;
use duet_common::problem::DapError;
use duet_common::server::metrics;
use duet_common::server::storage::{AbandonedReports, JobReport, LeasedJob, ReportOutcome, StepCounts, Task};
use duet_common::vdaf::{Transition, VerifyState};
use duet_common::{Decode, Encode};
use reqwest::Url;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// One creator pass over every task with unaggregated reports. Returns the jobs created.
pub async fn create_jobs(state: &LeaderState) -> Result<usize, DapError> {
    let mut created = 0;
    for task_id in state.store.tasks_with_unaggregated_reports().await? {
        let task = match state.store.task(&task_id).await {
            Ok(t) => t,
            // The task was deleted under its reports; nothing to aggregate them for.
            Err(_) => continue,
        };
        let n = state.store.create_aggregation_jobs(&task, &state.config.job_sizes).await?;
        if n > 0 {
            tracing::info!(task_id = %task.id, jobs = n, "aggregation jobs created");
            metrics::aggregation_jobs(Role::Leader, "created", n as u64);
        }
        created += n;
    }
    Ok(created)
}

/// The leader's verification state for a report awaiting the helper.
struct Started {
    report_id: ReportId,
    time: duet_common::time::Time,
    state: VerifyState,
}

/// Opens the leader's input share and starts verification (DAP-18 "Leader Initialization").
fn start_report(task: &Task, keys: &[HpkeKeypair], report: &JobReport) -> Result<(VerifyState, Vec<u8>), ReportError> {
    let meta = &report.metadata;
    let ct = &report.leader_share;
    let kp = keys.iter().find(|k| k.config().id == ct.config_id).ok_or(ReportError::HpkeUnknownConfigId)?;
    let aad = InputShareAad::encode_parts(&task.id, &task.configuration_encoded, meta, &report.public_share)
        .map_err(|_| ReportError::InvalidMessage)?;
    let plain = open(kp, &HpkeApplicationInfo::InputShare { recipient: Role::Leader }, ct, &aad)
        .map_err(|_| ReportError::HpkeDecryptError)?;
    let share = PlaintextInputShare::get_decoded(&plain).map_err(|_| ReportError::InvalidMessage)?;
    // duet recognises no report extensions, so any makes the report invalid (as at upload).
    if !share.private_extensions.is_empty() || !meta.public_extensions.is_empty() {
        return Err(ReportError::InvalidMessage);
    }
    task.vdaf
        .leader_init(
            &task.verify_key,
            &task.vdaf_context(),
            meta.report_id.as_bytes(),
            &report.public_share,
            &share.payload,
        )
        .map_err(|e| e.report_error())
}

/// What driving a job came to.
enum Driven {
    Done(StepCounts),
    /// The helper was not reached, or not ready: the identical request goes again later.
    Retry {
        reason: RetryReason,
        retry_after: Option<Duration>,
        error: String,
    },
    /// The job cannot go on (DAP-18 says when the leader must abandon it). Its reports go back
    /// to the pool when the helper cannot have aggregated them, else they fail. `helper_job` is
    /// the helper's resource, to delete, when the helper created one.
    Abandon {
        error: String,
        back_to_pool: bool,
        helper_job: Option<Url>,
    },
}

impl Driven {
    fn retry(e: PeerError) -> Self {
        match e {
            PeerError::Transient { reason, detail, retry_after } => {
                Driven::Retry { reason, retry_after, error: detail }
            }
            // The helper refused the request: it created no job, so it aggregated none of the
            // reports, which may go into a new job.
            PeerError::Rejected { .. } => {
                Driven::Abandon { error: e.to_string(), back_to_pool: true, helper_job: None }
            }
        }
    }
}

/// Drives one leased job to its end, or to a retry later.
pub async fn drive_job(state: &LeaderState, job: LeasedJob) -> Result<(), DapError> {
    let task = state.store.task(&job.task_id).await?;
    let _timer = metrics::StepTimer::start("aggregation_job");
    let lease = Duration::from_secs(state.config.lease_seconds as u64);
    let renew = || state.store.renew_aggregation_job_lease(&job, state.config.lease_seconds, None);
    let outcome = match retry::under_lease(run_job(state, &task, &job), lease, renew).await {
        None => {
            tracing::warn!(task_id = %task.id, job_id = %job.job_id, "lost the lease of the aggregation job; another driver has it");
            return Ok(());
        }
        Some(Ok(d)) => d,
        Some(Err(DapError::Unavailable(e))) => {
            Driven::Retry { reason: RetryReason::Database, retry_after: None, error: e }
        }
        Some(Err(e)) => return Err(e),
    };
    let cap = state.config.max_retry_delay;
    match outcome {
        Driven::Done(counts) => {
            tracing::info!(task_id = %task.id, job_id = %job.job_id, aggregated = counts.aggregated,
                failed = counts.failed, "aggregation job finished");
            metrics::aggregation_jobs(Role::Leader, "finished", 1);
        }
        Driven::Retry { reason, retry_after, error } => {
            // Transient failures never exhaust a job: it waits, for as long as it takes.
            let delay = retry::retry_delay(job.attempts, retry_after, cap);
            // A warning at attempts 1, 2, 4, 8, ...: an outage of hours logs a few dozen lines a
            // job, not one a second.
            if job.attempts.is_power_of_two() {
                tracing::warn!(task_id = %task.id, job_id = %job.job_id, attempt = job.attempts, reason = reason.label(),
                    delay_seconds = delay.as_secs_f64(), %error, "aggregation job waits for the helper");
            } else {
                tracing::debug!(task_id = %task.id, job_id = %job.job_id, attempt = job.attempts, reason = reason.label(),
                    delay_seconds = delay.as_secs_f64(), %error, "aggregation job waits for the helper");
            }
            state.store.retry_aggregation_job(&task, &job, retry::whole_seconds(delay), &error).await?;
            metrics::helper_retry("aggregation_job", reason.label());
            metrics::aggregation_jobs(Role::Leader, "retried", 1);
        }
        Driven::Abandon { error, back_to_pool, helper_job } => {
            let reports = match back_to_pool {
                true => AbandonedReports::BackToPool { max_hold_seconds: retry::whole_seconds(cap) },
                false => AbandonedReports::Fail,
            };
            tracing::error!(task_id = %task.id, job_id = %job.job_id, attempt = job.attempts, %error,
                back_to_pool, "aggregation job abandoned");
            state.store.abandon_aggregation_job(&task, &job, &error, reports).await?;
            metrics::aggregation_jobs(Role::Leader, "abandoned", 1);
            if let Some(url) = helper_job {
                delete_helper_job(state, &task, &job, url).await;
            }
        }
    }
    Ok(())
}

/// Tells the helper it may clean up an abandoned job (DAP-18 "Aggregation Job Abandonment and
/// Deletion"). Best effort: a few tries, as the job is settled on our side either way.
async fn delete_helper_job(state: &LeaderState, task: &Task, job: &LeasedJob, mut url: Url) {
    url.set_query(None);
    for attempt in 1..=3u32 {
        match state.peer.delete(url.clone(), &task.aggregator_auth_token).await {
            Ok(()) => return,
            Err(e @ PeerError::Rejected { .. }) => {
                tracing::info!(task_id = %task.id, job_id = %job.job_id, error = %e, "the helper did not delete the abandoned job");
                return;
            }
            Err(e) => {
                tracing::warn!(task_id = %task.id, job_id = %job.job_id, attempt, error = %e, "deleting the abandoned job at the helper failed");
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
            }
        }
    }
}

async fn run_job(state: &LeaderState, task: &Arc<Task>, job: &LeasedJob) -> Result<Driven, DapError> {
    if job.step != 0 {
        // Prio3 verifies in one round trip, so a job never rests between steps; a stored later
        // step means a VDAF this driver does not know.
        return Ok(Driven::Abandon {
            error: format!("job stopped at step {}", job.step),
            back_to_pool: false,
            helper_job: None,
        });
    }
    let reports = state.store.aggregation_job_reports(job).await?;
    let keys: Vec<HpkeKeypair> = state.store.hpke_keypairs().await?.into_iter().map(|(k, _)| k).collect();

    // Leader initialisation, off the async runtime.
    let task_cpu = task.clone();
    let (outcomes, started, verify_inits) = tokio::task::spawn_blocking(move || {
        let mut outcomes = Vec::new();
        let mut started = Vec::new();
        let mut verify_inits = Vec::new();
        for report in reports {
            let report_id = report.metadata.report_id;
            match start_report(&task_cpu, &keys, &report) {
                Ok((state, payload)) => {
                    started.push(Started { report_id, time: report.metadata.time, state });
                    verify_inits.push(VerifyInit {
                        report_share: ReportShare {
                            report_metadata: report.metadata,
                            public_share: report.public_share,
                            encrypted_input_share: report.helper_share,
                        },
                        payload,
                    });
                }
                Err(error) => outcomes.push(ReportOutcome::Failed { report_id, error }),
            }
        }
        (outcomes, started, verify_inits)
    })
    .await
    .map_err(|e| DapError::Internal(format!("verification task failed: {e}")))?;

    let mut outcomes = outcomes;
    if !verify_inits.is_empty() {
        let req = AggregationJobInitReq {
            verification_key_id: 0,
            agg_param: Vec::new(),
            extensions: job.batch_id.map(AggregationJobExtension::leader_selected_batch_id).into_iter().collect(),
            verify_inits,
        };
        let body = req.get_encoded().map_err(|e| DapError::Internal(e.to_string()))?;
        // A retry must be the identical request (DAP-18 "Leader Initialization"): a different
        // one would be a new job to the helper, which may hold the first one's output shares.
        let digest: [u8; 32] = Sha256::digest(&body).into();
        if !state.store.pin_aggregation_job_request(job, &digest).await? {
            return Ok(Driven::Abandon {
                error: "the job's request can no longer be built as first sent (was an HPKE key it needs deleted?); \
                        the helper may hold some of its reports"
                    .into(),
                back_to_pool: false,
                helper_job: None,
            });
        }
        let url = endpoint_url(&task.parameters.helper_endpoint, &format!("tasks/{}/aggregation_jobs", task.id))
            .map_err(DapError::Internal)?;
        // While the helper works on a deferred job, the lease is renewed (`under_lease`) and the
        // job is noted as waiting on the helper, for the metrics.
        let noted = || async {
            let note = Some("deferred by the helper");
            let _ = state.store.renew_aggregation_job_lease(job, state.config.lease_seconds, note).await;
        };
        let token = &task.aggregator_auth_token;
        let (resp, location) = match state
            .peer
            .fetch(
                url,
                token,
                media_type::AGGREGATION_JOB_INIT_REQ,
                body,
                media_type::AGGREGATION_JOB_RESP,
                state.config.max_retry_delay,
                noted,
            )
            .await
        {
            Ok(r) => r,
            Err(e) => return Ok(Driven::retry(e)),
        };
        // From here on the helper has committed what it answered: an answer the leader cannot
        // follow abandons the job (DAP-18 "Leader Initialization"), and its reports may not be
        // aggregated again.
        let invalid = |why: String| Driven::Abandon {
            error: format!("the helper's answer is invalid: {why}"),
            back_to_pool: false,
            helper_job: location.clone(),
        };
        let resp = match AggregationJobResp::get_decoded(&resp) {
            Ok(r) => r,
            Err(e) => return Ok(invalid(format!("malformed AggregationJobResp: {e}"))),
        };
        if resp.verify_resps.len() != started.len()
            || resp.verify_resps.iter().zip(&started).any(|(r, s)| r.report_id != s.report_id)
        {
            return Ok(invalid("it does not name the job's reports in order".into()));
        }
        // After the leader's first message a Prio3 helper answers `continue` or `reject`;
        // `finish` is not a transition of the leader's state.
        if resp.verify_resps.iter().any(|r| matches!(r.verify_resp_type, VerifyRespType::Finish)) {
            return Ok(invalid("`finish` after initialization".into()));
        }
        let task_cpu = task.clone();
        let finished = tokio::task::spawn_blocking(move || {
            let ctx = task_cpu.vdaf_context();
            started
                .into_iter()
                .zip(resp.verify_resps)
                .map(|(s, r)| finish_report(&task_cpu, &ctx, s, r.verify_resp_type))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| DapError::Internal(format!("verification task failed: {e}")))?;
        outcomes.extend(finished);
    }
    let mut reasons: Vec<ReportError> = outcomes
        .iter()
        .filter_map(|o| match o {
            ReportOutcome::Failed { error, .. } => Some(*error),
            _ => None,
        })
        .collect();
    let counts = state.store.commit_aggregation_job(task, job, outcomes).await?;
    // Reports whose batch was collected meanwhile fail in the commit itself.
    reasons.resize(counts.failed as usize, ReportError::BatchCollected);
    metrics::reports_aggregated(Role::Leader, counts.aggregated, &reasons);
    Ok(Driven::Done(counts))
}

/// Finishes a report on the helper's answer (DAP-18 "Leader Continuation").
fn finish_report(task: &Task, ctx: &[u8], started: Started, answer: VerifyRespType) -> ReportOutcome {
    let report_id = started.report_id;
    match answer {
        VerifyRespType::Reject { report_error } => ReportOutcome::Failed { report_id, error: report_error },
        // Refused with the whole job before this is reached (see `run_job`).
        VerifyRespType::Finish => ReportOutcome::Failed { report_id, error: ReportError::VdafVerifyError },
        VerifyRespType::Continue { payload } => match task.vdaf.leader_continued(ctx, started.state, &payload) {
            Ok(Transition::Finished { out_share }) => {
                ReportOutcome::Aggregated { report_id, time: started.time, out_share }
            }
            // More rounds: not a Prio3 behaviour (see `run_job`).
            Ok(_) => ReportOutcome::Failed { report_id, error: ReportError::VdafVerifyError },
            Err(e) => ReportOutcome::Failed { report_id, error: e.report_error() },
        },
    }
}
