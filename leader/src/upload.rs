//! The leader's upload endpoint (DAP-18 "Upload Request", leader behaviour): every report of an
//! `UploadRequest` is checked, the accepted ones are stored durably in one transaction before
//! the answer, and the failed ones are listed in an `UploadErrors` in request order. On a
//! database that writes one transaction at a time, the requests that arrive together share that
//! transaction ([`UploadQueue`]).

use crate::store::{Store, Task};
use crate::LeaderState;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use duet_common::media_type;
use duet_common::messages::*;
use duet_common::problem::DapError;
use duet_common::time::{Duration, Time};
use duet_common::Encode;
use duet_server::checks;
use duet_server::http::{dap_response, parse_task_id, require_media_type, HttpResult};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot};

/// The checks that need no storage: time, task interval, HPKE config, extensions (the shared
/// ones in `duet_server::checks`).
fn precheck(
    task: &Task,
    report: &EncodedReport<'_>,
    known_configs: &HashSet<HpkeConfigId>,
    now: Time,
    skew: Duration,
    oldest: Option<Time>,
) -> Option<ReportError> {
    let meta = &report.report_metadata;
    checks::check_upload_time(task.configuration.task_interval(), meta.time, now, skew, oldest).err().or_else(|| {
        if !known_configs.contains(&report.leader_config_id) {
            return Some(ReportError::OutdatedConfig);
        }
        checks::check_public_extensions(meta).err()
    })
}

/// `POST {leader}/tasks/{task-id}/reports`.
pub async fn upload(
    State(state): State<LeaderState>,
    Path(task_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> HttpResult<Response> {
    let _timer = duet_server::metrics::StepTimer::start("upload");
    let task_id = parse_task_id(&task_id)?;
    // The task (a cached or negatively cached look-up) and the media type before the body: a
    // request for no task costs its headers only.
    let task = state.store.task(&task_id).await?;
    if task.role != Role::Leader {
        return Err(DapError::unrecognized_task(task_id).into());
    }
    require_media_type(&headers, media_type::UPLOAD_REQ)?;
    let body = duet_server::http::read_body(body, state.config.max_body_bytes).await?;
    // Read in place: the accepted reports are stored as these bytes, never copied into reports
    // of their own (a request may carry thousands).
    let max = state.config.max_reports_per_upload;
    let reports = UploadRequest::decode_in_place_at_most(&body, max)
        .map_err(|e| DapError::invalid_message(Some(task_id), format!("malformed UploadRequest: {e}")))?
        .ok_or(DapError::TooManyReports { max })?;
    let known: HashSet<HpkeConfigId> = state.store.hpke_keypairs().await?.iter().map(|(k, _)| k.config().id).collect();
    let skew =
        Duration::from_seconds_ceil(state.config.tolerable_clock_skew_seconds, task.configuration.time_precision);

    let now = Time::from_seconds(state.store.clock().now_seconds(), task.configuration.time_precision);
    let oldest = task.oldest_report_time(now, state.config.default_report_expiry_seconds);
    // Stateless checks first; the survivors go to storage in one transaction.
    let mut errors: Vec<Option<ReportError>> = Vec::with_capacity(reports.len());
    let mut to_store = Vec::new();
    for report in &reports {
        let error = precheck(&task, report, &known, now, skew, oldest);
        if error.is_none() {
            to_store.push(report);
        }
        errors.push(error);
    }
    let mut stored = state.uploads.put(&state.store, &task, &body, &to_store).await?.into_iter();
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
    duet_server::metrics::reports_uploaded((reports.len() - errors.len()) as u64, &rejected);
    if errors.is_empty() {
        return Ok(StatusCode::OK.into_response());
    }
    let body = UploadErrors { status: errors }.get_encoded().map_err(|e| DapError::Internal(e.to_string()))?;
    Ok(dap_response(StatusCode::OK, media_type::UPLOAD_ERRORS, body))
}

/// Each stored report's error, in order, or the error that failed the whole transaction.
type Stored = Result<Vec<Option<ReportError>>, DapError>;

/// Group commit for uploads. On a database that writes one transaction at a time (SQLite),
/// upload transactions spend most of their time on pages, not rows: each report lands on a
/// random leaf of the report-ID index, so a request of a thousand reports rewrites hundreds of
/// index pages, and the request queued behind it rewrites most of the same pages again. Here
/// one writer stores every request that queued while its previous transaction ran in one
/// transaction: each index page is written and synced once for all of them. No request waits
/// for others to arrive; a transaction takes what is queued when it begins. On databases that
/// run writers side by side (PostgreSQL), each request stores its own reports.
#[derive(Clone, Default)]
pub struct UploadQueue {
    /// Started on first use (it needs the runtime).
    writer: Arc<OnceLock<mpsc::UnboundedSender<QueuedUpload>>>,
    counts: Arc<GroupCounts>,
}

/// What the queue did so far.
#[derive(Debug, Default)]
pub struct GroupCounts {
    /// Requests waiting for the writer.
    pub waiting: AtomicUsize,
    /// Group transactions the writer ran, and the requests they stored.
    pub transactions: AtomicU64,
    pub requests: AtomicU64,
}

/// Reports per group transaction at most, so that other writers (job creation, commits) wait
/// for one bounded transaction, not for a whole burst of uploads.
const MAX_GROUP_REPORTS: usize = 8192;

/// One request's reports, waiting for the writer.
struct QueuedUpload {
    task: Arc<Task>,
    reports: Vec<QueuedReport>,
    reply: oneshot::Sender<Stored>,
}

/// A report of a request body that outlives its handler's borrow: the fields are shared slices
/// of the body (reference counted, not copied).
struct QueuedReport {
    report_metadata: ReportMetadata,
    leader_config_id: HpkeConfigId,
    encoded_report_metadata: axum::body::Bytes,
    public_share: axum::body::Bytes,
    leader_encrypted_input_share: axum::body::Bytes,
    helper_encrypted_input_share: axum::body::Bytes,
}

impl QueuedReport {
    fn new(body: &axum::body::Bytes, report: &EncodedReport<'_>) -> Self {
        Self {
            report_metadata: report.report_metadata.clone(),
            leader_config_id: report.leader_config_id,
            encoded_report_metadata: body.slice_ref(report.encoded_report_metadata),
            public_share: body.slice_ref(report.public_share),
            leader_encrypted_input_share: body.slice_ref(report.leader_encrypted_input_share),
            helper_encrypted_input_share: body.slice_ref(report.helper_encrypted_input_share),
        }
    }

    fn view(&self) -> EncodedReport<'_> {
        EncodedReport {
            report_metadata: self.report_metadata.clone(),
            encoded_report_metadata: &self.encoded_report_metadata,
            public_share: &self.public_share,
            leader_config_id: self.leader_config_id,
            leader_encrypted_input_share: &self.leader_encrypted_input_share,
            helper_encrypted_input_share: &self.helper_encrypted_input_share,
        }
    }
}

impl UploadQueue {
    /// Stores `reports` (read from `body`) as [`crate::store::LeaderStore::put_reports`]
    /// does, alone or in a group transaction.
    pub async fn put(
        &self,
        store: &Store,
        task: &Arc<Task>,
        body: &axum::body::Bytes,
        reports: &[&EncodedReport<'_>],
    ) -> Stored {
        if !store.writes_one_at_a_time() || reports.is_empty() {
            return Ok(store.put_reports(task, reports).await?);
        }
        let writer = self.writer.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(write_groups(store.clone(), receiver, self.counts.clone()));
            sender
        });
        let (reply, answer) = oneshot::channel();
        let queued = reports.iter().map(|r| QueuedReport::new(body, r)).collect();
        // The queue holds no more than the requests in flight: each waits for its answer.
        self.counts.waiting.fetch_add(1, Ordering::Relaxed);
        if writer.send(QueuedUpload { task: task.clone(), reports: queued, reply }).is_err() {
            self.counts.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(DapError::Internal("the upload writer stopped".into()));
        }
        answer.await.map_err(|_| DapError::Internal("the upload writer dropped the request".into()))?
    }

    /// What the queue did so far (for tests and metrics).
    pub fn counts(&self) -> &GroupCounts {
        &self.counts
    }
}

/// The writer: takes whatever is queued (up to [`MAX_GROUP_REPORTS`]) and stores it.
async fn write_groups(store: Store, mut queue: mpsc::UnboundedReceiver<QueuedUpload>, counts: Arc<GroupCounts>) {
    while let Some(first) = queue.recv().await {
        let mut reports = first.reports.len();
        let mut group = vec![first];
        while reports < MAX_GROUP_REPORTS {
            let Ok(next) = queue.try_recv() else { break };
            reports += next.reports.len();
            group.push(next);
        }
        counts.waiting.fetch_sub(group.len(), Ordering::Relaxed);
        counts.requests.fetch_add(group.len() as u64, Ordering::Relaxed);
        let counts = counts.clone();
        // In a task of its own, so that a panic fails this group's requests, not every later
        // upload.
        let store = store.clone();
        if let Err(e) = tokio::spawn(async move { store_group(&store, group, &counts).await }).await {
            tracing::error!(error = %e, "storing a group of uploads failed");
        }
    }
}

/// Stores a group, one transaction per task, and answers each request.
async fn store_group(store: &Store, mut group: Vec<QueuedUpload>, counts: &GroupCounts) {
    while let Some(task) = group.first().map(|u| u.task.clone()) {
        let (same, rest): (Vec<_>, Vec<_>) = group.into_iter().partition(|u| u.task.id == task.id);
        group = rest;
        // In request order, so that of a report ID two requests carry, the later one is the
        // replay (put_reports refuses an ID seen earlier in its input).
        let views: Vec<EncodedReport<'_>> =
            same.iter().flat_map(|u| u.reports.iter().map(QueuedReport::view)).collect();
        let refs: Vec<&EncodedReport<'_>> = views.iter().collect();
        counts.transactions.fetch_add(1, Ordering::Relaxed);
        duet_server::metrics::upload_group(same.len());
        let outcome = match store.put_reports(&task, &refs).await {
            Ok(stored) if stored.len() == refs.len() => Ok(stored),
            Ok(_) => Err(DapError::Internal("upload bookkeeping".into())),
            Err(e) => Err(e.into()),
        };
        tracing::debug!(task_id = %task.id, requests = same.len(), reports = refs.len(), "upload group stored");
        let mut answers = outcome.map(Vec::into_iter);
        for upload in same {
            let answer = match &mut answers {
                Ok(all) => Ok(all.by_ref().take(upload.reports.len()).collect()),
                Err(e) => Err(e.clone()),
            };
            // A request whose client left has nobody to answer; its reports are stored anyway.
            let _ = upload.reply.send(answer);
        }
    }
}
