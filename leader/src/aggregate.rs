//! The leader's side of aggregation (DAP-18 "Aggregating Reports", leader behaviour): the job
//! creator puts uploaded reports into aggregation jobs, and the driver runs each job with the
//! helper: it opens the leader's input shares, starts verification, sends the
//! `AggregationJobInitReq`, then as many `AggregationJobContinueReq`s as the VDAF has rounds left
//! (none for Prio3; each step's state is stored before the next request goes out), and commits
//! the output shares into batch buckets in one transaction. A helper that cannot be reached, or is not
//! ready, is waited for as long as it takes, the identical request sent again each time; a
//! helper that refuses the job, or answers what the leader cannot follow, has it abandoned.

use crate::peer::{endpoint_url, PeerError, RetryReason};
use crate::store::{
    AbandonedReports, JobReport, LeaderVerifyState, LeasedJob, ReportOutcome, StepCounts, Task, VerifyingReport,
};
use crate::{retry, LeaderState};
use duet_common::hpke::HpkeKeypair;
use duet_common::media_type;
use duet_common::messages::*;
use duet_common::problem::DapError;
use duet_common::vdaf::{Transition, Vdaf, VerifyState};
use duet_common::{Decode, Encode};
use duet_server::checks;
use duet_server::metrics;
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

/// Opens the leader's input share and starts verification (DAP-18 "Leader Initialization").
fn start_report(task: &Task, keys: &[HpkeKeypair], report: &JobReport) -> Result<(VerifyState, Vec<u8>), ReportError> {
    let meta = &report.metadata;
    let cx = checks::ShareContext {
        task_id: &task.id,
        configuration_encoded: &task.configuration_encoded,
        role: Role::Leader,
    };
    let share = checks::open_input_share(&cx, keys, meta, &report.public_share, &report.leader_share)?;
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
    /// Another driver took the job over while this one worked: nothing more to do here.
    Lost,
}

impl Driven {
    /// A failed request for the job; `helper_job` is the helper's job, once it has one.
    fn failed(e: PeerError, helper_job: Option<Url>) -> Self {
        match e {
            PeerError::Transient { reason, detail, retry_after } => {
                Driven::Retry { reason, retry_after, error: detail }
            }
            // The helper refused to create the job: it aggregated none of the reports, which may
            // go into a new job.
            PeerError::Rejected { .. } if helper_job.is_none() => {
                Driven::Abandon { error: e.to_string(), back_to_pool: true, helper_job: None }
            }
            // It refused a continuation: it may hold output shares of earlier steps.
            PeerError::Rejected { .. } => Driven::Abandon { error: e.to_string(), back_to_pool: false, helper_job },
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
        Driven::Lost => {
            tracing::warn!(task_id = %task.id, job_id = %job.job_id, "another driver took the aggregation job over");
        }
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
    let Ok(token) = task.presented_token() else { return };
    for attempt in 1..=3u32 {
        match state.peer.delete(url.clone(), token).await {
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

/// Leader initialisation (off the async runtime): the reports that failed already, the reports
/// being verified, and the `VerifyInit`s of the first request.
async fn start_job(
    state: &LeaderState,
    task: &Arc<Task>,
    job: &LeasedJob,
) -> Result<(Vec<ReportOutcome>, Vec<VerifyingReport>, Vec<VerifyInit>), DapError> {
    let reports = state.store.aggregation_job_reports(job).await?;
    let keys: Vec<HpkeKeypair> = state.store.hpke_keypairs().await?.into_iter().map(|(k, _)| k).collect();
    let task_cpu = task.clone();
    tokio::task::spawn_blocking(move || {
        let mut outcomes = Vec::new();
        let mut started = Vec::new();
        let mut verify_inits = Vec::new();
        for report in reports {
            let report_id = report.metadata.report_id;
            match start_report(&task_cpu, &keys, &report) {
                Ok((state, payload)) => {
                    started.push(VerifyingReport {
                        report_id,
                        time: report.metadata.time,
                        state: LeaderVerifyState::Continued(state),
                        outbound: Vec::new(),
                    });
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
    .map_err(|e| DapError::Internal(format!("verification task failed: {e}")))
}

/// Runs the job from the step it rests at: initialisation, then as many continuation steps as
/// the VDAF takes (none for Prio3), each step's state stored before the next is sent, so that
/// any replica can send a lost step's request again, byte for byte.
async fn run_job(state: &LeaderState, task: &Arc<Task>, job: &LeasedJob) -> Result<Driven, DapError> {
    let mut job = job.clone();
    let mut outcomes = Vec::new();
    let mut init_body = None;
    let mut verifying = if job.step == 0 {
        let (failed, started, verify_inits) = start_job(state, task, &job).await?;
        outcomes = failed;
        if !verify_inits.is_empty() {
            let req = AggregationJobInitReq {
                verification_key_id: 0,
                agg_param: Vec::new(),
                extensions: job.batch_id.map(AggregationJobExtension::leader_selected_batch_id).into_iter().collect(),
                verify_inits,
            };
            init_body = Some(req.get_encoded().map_err(|e| DapError::Internal(e.to_string()))?);
        }
        started
    } else {
        state.store.pending_reports(task, &job).await?
    };
    while !verifying.is_empty() {
        let (url, media, body, helper_job) = match init_body.take() {
            Some(body) => {
                let url =
                    endpoint_url(&task.parameters.helper_endpoint, &format!("tasks/{}/aggregation_jobs", task.id))
                        .map_err(DapError::Internal)?;
                (url, media_type::AGGREGATION_JOB_INIT_REQ, body, None)
            }
            None => {
                let Some(url) = job.helper_job.as_deref().and_then(|u| Url::parse(u).ok()) else {
                    return Ok(Driven::Abandon {
                        error: format!("job at step {} does not know the helper's job", job.step),
                        back_to_pool: false,
                        helper_job: None,
                    });
                };
                let req = AggregationJobContinueReq {
                    step: AggregationJobStep(job.step),
                    verify_continues: verifying
                        .iter()
                        .map(|r| VerifyContinue { report_id: r.report_id, payload: r.outbound.clone() })
                        .collect(),
                };
                let body = req.get_encoded().map_err(|e| DapError::Internal(e.to_string()))?;
                (url.clone(), media_type::AGGREGATION_JOB_CONTINUE_REQ, body, Some(url))
            }
        };
        // A retry must be the identical request (DAP-18 "Leader Initialization" and "Leader
        // Continuation"): a different one would be a new job, or a step the helper refuses, and
        // the helper may hold the first one's output shares.
        let digest: [u8; 32] = Sha256::digest(&body).into();
        if !state.store.pin_aggregation_job_request(&job, &digest).await? {
            return Ok(Driven::Abandon {
                error: format!(
                    "the request of step {} can no longer be built as first sent (was an HPKE key it needs \
                     deleted?); the helper may hold some of its reports",
                    job.step
                ),
                back_to_pool: false,
                helper_job,
            });
        }
        // While the helper works on a deferred job, the lease is renewed (`under_lease`) and the
        // job is noted as waiting on the helper, for the metrics.
        let noted = || async {
            let note = Some("deferred by the helper");
            let _ = state.store.renew_aggregation_job_lease(&job, state.config.lease_seconds, note).await;
        };
        let token = task.presented_token()?;
        let max_wait = state.config.max_retry_delay;
        let (resp, location) =
            match state.peer.fetch(url, token, media, body, media_type::AGGREGATION_JOB_RESP, max_wait, noted).await {
                Ok(r) => r,
                // A job the helper deferred was accepted: it may hold the job's output shares
                // whatever the poll then met, so the job is deleted and its reports are not
                // aggregated again.
                Err(e) => return Ok(Driven::failed(e.error, helper_job.or(e.accepted))),
            };
        // The job's own URL: a deferred answer's Location names the step polled as well.
        let helper_job = helper_job.or(location.map(|mut url| {
            url.set_query(None);
            url
        }));
        // From here on the helper has committed what it answered: an answer the leader cannot
        // follow abandons the job (DAP-18 "Leader Initialization", "Leader Continuation"), and
        // its reports may not be aggregated again.
        let invalid = |why: String| Driven::Abandon {
            error: format!("the helper's answer to step {} is invalid: {why}", job.step),
            back_to_pool: false,
            helper_job: helper_job.clone(),
        };
        let resp = match AggregationJobResp::get_decoded(&resp) {
            Ok(r) => r,
            Err(e) => return Ok(invalid(format!("malformed AggregationJobResp: {e}"))),
        };
        if resp.verify_resps.len() != verifying.len()
            || resp.verify_resps.iter().zip(&verifying).any(|(r, s)| r.report_id != s.report_id)
        {
            return Ok(invalid("it does not name the job's reports in order".into()));
        }
        let task_cpu = task.clone();
        let stepped = tokio::task::spawn_blocking(move || {
            let ctx = task_cpu.vdaf_context();
            verifying
                .into_iter()
                .zip(resp.verify_resps)
                .map(|(r, answer)| verify_step(&task_cpu.vdaf, &ctx, r, answer.verify_resp_type))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| DapError::Internal(format!("verification task failed: {e}")))?;
        let stepped = match stepped {
            Ok(s) => s,
            Err(why) => return Ok(invalid(why)),
        };
        let mut next = Vec::new();
        for s in stepped {
            match s {
                Stepped::Done(outcome) => outcomes.push(outcome),
                Stepped::Again(r) => next.push(r),
            }
        }
        if next.is_empty() {
            break;
        }
        // A VDAF runs a constant number of rounds: reports finishing at different steps is not
        // one (DAP-18 "Leader Initialization").
        if outcomes.iter().any(|o| matches!(o, ReportOutcome::Aggregated { .. })) {
            return Ok(invalid("some reports finished, others go on".into()));
        }
        let Some(url) = helper_job.as_ref() else {
            return Ok(invalid("it named no aggregation job to continue (no Location)".into()));
        };
        if job.step == u16::MAX {
            return Ok(invalid("the job ran out of steps".into()));
        }
        let rejected: Vec<(ReportId, ReportError)> = outcomes
            .drain(..)
            .filter_map(|o| match o {
                ReportOutcome::Failed { report_id, error } => Some((report_id, error)),
                ReportOutcome::Aggregated { .. } => None,
            })
            .collect();
        if !state.store.advance_aggregation_job(task, &job, url.as_str(), &rejected, &next).await? {
            return Ok(Driven::Lost);
        }
        let reasons: Vec<ReportError> = rejected.iter().map(|(_, e)| *e).collect();
        metrics::reports_aggregated(Role::Leader, 0, &reasons);
        tracing::debug!(task_id = %task.id, job_id = %job.job_id, step = job.step + 1, reports = next.len(),
            "aggregation job continues");
        job.step += 1;
        job.helper_job = Some(url.to_string());
        verifying = next;
    }
    let mut reasons: Vec<ReportError> = outcomes
        .iter()
        .filter_map(|o| match o {
            ReportOutcome::Failed { error, .. } => Some(*error),
            _ => None,
        })
        .collect();
    let counts = state.store.commit_aggregation_job(task, &job, outcomes).await?;
    // Reports whose batch was collected meanwhile fail in the commit itself.
    reasons.resize(counts.failed as usize, ReportError::BatchCollected);
    metrics::reports_aggregated(Role::Leader, counts.aggregated, &reasons);
    Ok(Driven::Done(counts))
}

/// Where one report stands after the helper's answer to a step.
enum Stepped {
    Done(ReportOutcome),
    /// Verification goes on: the report goes into the next step's request.
    Again(VerifyingReport),
}

/// Moves a report on by the helper's answer (DAP-18 "Leader Initialization" and "Leader
/// Continuation"); an answer that is not a transition of the leader's state is an error, which
/// abandons the job.
fn verify_step(vdaf: &Vdaf, ctx: &[u8], report: VerifyingReport, answer: VerifyRespType) -> Result<Stepped, String> {
    let VerifyingReport { report_id, time, state, .. } = report;
    let failed = |error| Ok(Stepped::Done(ReportOutcome::Failed { report_id, error }));
    match (state, answer) {
        (_, VerifyRespType::Reject { report_error }) => failed(report_error),
        (LeaderVerifyState::Continued(state), VerifyRespType::Continue { payload }) => {
            match vdaf.leader_continued(ctx, state, &payload) {
                Ok(Transition::Finished { out_share }) => {
                    Ok(Stepped::Done(ReportOutcome::Aggregated { report_id, time, out_share }))
                }
                Ok(Transition::Continued { state, outbound }) => Ok(Stepped::Again(VerifyingReport {
                    report_id,
                    time,
                    state: LeaderVerifyState::Continued(state),
                    outbound,
                })),
                Ok(Transition::FinishedWithOutbound { out_share, outbound }) => Ok(Stepped::Again(VerifyingReport {
                    report_id,
                    time,
                    state: LeaderVerifyState::FinishedWithOutbound(out_share),
                    outbound,
                })),
                Err(e) => failed(e.report_error()),
            }
        }
        (LeaderVerifyState::FinishedWithOutbound(out_share), VerifyRespType::Finish) => {
            Ok(Stepped::Done(ReportOutcome::Aggregated { report_id, time, out_share }))
        }
        (LeaderVerifyState::Continued(_), VerifyRespType::Finish) => {
            Err(format!("`finish` for report {report_id}, which the leader has not finished"))
        }
        (LeaderVerifyState::FinishedWithOutbound(_), VerifyRespType::Continue { .. }) => {
            Err(format!("`continue` for report {report_id}, which the leader has finished"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duet_common::vdaf::{vdaf_context, Measurement, VdafConfig, VerifyKey};

    /// A report of the two-round test VDAF, verified up to the leader's state after the
    /// helper's first answer: `FinishedWithOutbound`.
    fn two_rounds() -> (Vdaf, Vec<u8>, VerifyingReport) {
        let vdaf = Vdaf::new(&VdafConfig::Dummy { rounds: 2 }).unwrap();
        let (key, ctx, id) = (VerifyKey::random(), vdaf_context(&TaskId::random()).to_vec(), ReportId::random());
        let nonce = *id.as_bytes();
        let (public, [ls, hs]) = vdaf.shard(&ctx, &Measurement::Dummy(9), &nonce).unwrap();
        let (state, to_helper) = vdaf.leader_init(&key, &ctx, &nonce, &public, &ls).unwrap();
        let helper = vdaf.helper_init(&key, &ctx, &nonce, &public, &hs, &to_helper).unwrap();
        let Transition::Continued { outbound, .. } = &helper else { panic!("{helper:?}") };
        let report = VerifyingReport {
            report_id: id,
            time: duet_common::time::Time::from_units(1),
            state: LeaderVerifyState::Continued(state),
            outbound: Vec::new(),
        };
        let stepped = verify_step(&vdaf, &ctx, report, VerifyRespType::Continue { payload: outbound.clone() });
        let Ok(Stepped::Again(report)) = stepped else { panic!("the leader goes on") };
        assert!(matches!(report.state, LeaderVerifyState::FinishedWithOutbound(_)));
        assert!(!report.outbound.is_empty(), "a message for the helper's last round");
        (vdaf, ctx, report)
    }

    #[test]
    fn the_leader_commits_once_the_helper_finishes() {
        let (vdaf, ctx, report) = two_rounds();
        let Ok(Stepped::Done(ReportOutcome::Aggregated { report_id, .. })) =
            verify_step(&vdaf, &ctx, report.clone(), VerifyRespType::Finish)
        else {
            panic!("committed on `finish`")
        };
        assert_eq!(report_id, report.report_id);
    }

    #[test]
    fn a_reject_fails_the_report_in_any_state() {
        let (vdaf, ctx, report) = two_rounds();
        let reject = VerifyRespType::Reject { report_error: ReportError::VdafVerifyError };
        let Ok(Stepped::Done(ReportOutcome::Failed { error, .. })) = verify_step(&vdaf, &ctx, report, reject) else {
            panic!("failed on `reject`")
        };
        assert_eq!(error, ReportError::VdafVerifyError);
    }

    #[test]
    fn answers_that_are_no_transition_of_the_leaders_state_are_refused() {
        let (vdaf, ctx, finished) = two_rounds();
        let err = verify_step(&vdaf, &ctx, finished, VerifyRespType::Continue { payload: vec![1] }).err().unwrap();
        assert!(err.contains("`continue`") && err.contains("has finished"), "{err}");

        let vdaf1 = Vdaf::new(&VdafConfig::Prio3Count).unwrap();
        let (key, ctx1, id) = (VerifyKey::random(), vdaf_context(&TaskId::random()), ReportId::random());
        let (public, [ls, _]) = vdaf1.shard(&ctx1, &Measurement::Count(true), id.as_bytes()).unwrap();
        let (state, _) = vdaf1.leader_init(&key, &ctx1, id.as_bytes(), &public, &ls).unwrap();
        let continued = VerifyingReport {
            report_id: id,
            time: duet_common::time::Time::from_units(1),
            state: LeaderVerifyState::Continued(state),
            outbound: Vec::new(),
        };
        let err = verify_step(&vdaf1, &ctx1, continued, VerifyRespType::Finish).err().unwrap();
        assert!(err.contains("`finish`") && err.contains("not finished"), "{err}");
    }
}
