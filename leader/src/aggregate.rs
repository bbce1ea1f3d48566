//! The leader's side of aggregation (DAP-18 "Aggregating Reports", leader behaviour): the job
//! creator puts uploaded reports into aggregation jobs, and the driver runs each job with the
//! helper: it opens the leader's input shares, starts verification, sends the
//! `AggregationJobInitReq`, finishes verification on the helper's answer and commits the output
//! shares into batch buckets in one transaction.

use crate::peer::{endpoint_url, PeerError};
use crate::LeaderState;
use duet_common::hpke::{open, HpkeApplicationInfo, HpkeKeypair};
use duet_common::media_type;
use duet_common::messages::*;
use duet_common::problem::DapError;
use duet_common::server::metrics;
use duet_common::server::storage::{JobReport, LeasedJob, ReportOutcome, StepCounts, Task};
use duet_common::vdaf::{Transition, VerifyState};
use duet_common::{Decode, Encode};
use reqwest::Method;
use std::sync::Arc;

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
    Retry { delay_seconds: i64, error: String },
    Abandon(String),
}

/// Drives one leased job to its end, or to a retry later.
pub async fn drive_job(state: &LeaderState, job: LeasedJob) -> Result<(), DapError> {
    let task = state.store.task(&job.task_id).await?;
    let _timer = metrics::StepTimer::start("aggregation_job");
    let outcome = match run_job(state, &task, &job).await {
        Ok(d) => d,
        Err(DapError::Unavailable(e)) => Driven::Retry { delay_seconds: 5, error: e },
        Err(e) => return Err(e),
    };
    match outcome {
        Driven::Done(counts) => {
            tracing::info!(task_id = %task.id, job_id = %job.job_id, aggregated = counts.aggregated,
                failed = counts.failed, "aggregation job finished");
            metrics::aggregation_jobs(Role::Leader, "finished", 1);
        }
        Driven::Retry { delay_seconds, error } if job.attempts < state.config.max_job_attempts => {
            tracing::warn!(task_id = %task.id, job_id = %job.job_id, attempt = job.attempts, delay_seconds, %error,
                "aggregation job will be retried");
            state.store.retry_aggregation_job(&task, &job, delay_seconds, &error).await?;
            metrics::aggregation_jobs(Role::Leader, "retried", 1);
        }
        Driven::Retry { error, .. } | Driven::Abandon(error) => {
            tracing::error!(task_id = %task.id, job_id = %job.job_id, attempt = job.attempts, %error,
                "aggregation job abandoned");
            state.store.abandon_aggregation_job(&task, &job, &error).await?;
            metrics::aggregation_jobs(Role::Leader, "abandoned", 1);
        }
    }
    Ok(())
}

fn backoff_seconds(attempt: u32, retry_after: Option<std::time::Duration>) -> i64 {
    let exp = 1i64 << attempt.min(8);
    retry_after.map(|d| d.as_secs() as i64).unwrap_or(exp).clamp(1, 300)
}

async fn run_job(state: &LeaderState, task: &Arc<Task>, job: &LeasedJob) -> Result<Driven, DapError> {
    if job.step != 0 {
        // Prio3 verifies in one round trip, so a job never rests between steps; a stored later
        // step means a VDAF this driver does not know.
        return Ok(Driven::Abandon(format!("job stopped at step {}", job.step)));
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
        let url = endpoint_url(&task.parameters.helper_endpoint, &format!("tasks/{}/aggregation_jobs", task.id))
            .map_err(DapError::Internal)?;
        let resp = match state
            .peer
            .send(Method::POST, url, &task.aggregator_auth_token, media_type::AGGREGATION_JOB_INIT_REQ, body)
            .await
        {
            Ok((_, bytes)) => bytes,
            Err(PeerError::Transient { detail, retry_after }) => {
                return Ok(Driven::Retry { delay_seconds: backoff_seconds(job.attempts, retry_after), error: detail })
            }
            Err(e @ PeerError::Rejected { .. }) => return Ok(Driven::Abandon(e.to_string())),
        };
        let resp = match AggregationJobResp::get_decoded(&resp) {
            Ok(r) => r,
            Err(e) => return Ok(Driven::Abandon(format!("helper sent a malformed AggregationJobResp: {e}"))),
        };
        // The helper answers every report, in the order sent (DAP-18 "Leader Continuation").
        if resp.verify_resps.len() != started.len()
            || resp.verify_resps.iter().zip(&started).any(|(r, s)| r.report_id != s.report_id)
        {
            return Ok(Driven::Abandon("helper's answer does not match the job's reports".into()));
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
        // After the leader's first message, a Prio3 helper always has one to send back.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_respects_retry_after() {
        assert_eq!(backoff_seconds(1, None), 2);
        assert_eq!(backoff_seconds(3, None), 8);
        assert_eq!(backoff_seconds(30, None), 256);
        assert_eq!(backoff_seconds(1, Some(std::time::Duration::from_secs(7))), 7);
        assert_eq!(backoff_seconds(1, Some(std::time::Duration::from_secs(7200))), 300);
    }
}
