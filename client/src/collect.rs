//! The collector SDK: creates collection jobs on the leader, polls them, and turns the two
//! encrypted aggregate shares into the aggregate result ("Collecting Results" and "Aggregate
//! Share Encryption").
//!
//! Every request carries the collector's token. Give the [`Collector`] a `reqwest::Client` that
//! does not follow redirects: reqwest strips `Authorization` on cross-origin redirects, but not
//! `DAP-Auth-Token`.

use crate::error::{ClientError, Result};
use crate::http::{self, RetryPolicy};
use duet_common::auth::{AuthenticationToken, TokenScheme};
use duet_common::dp::BudgetUnit;
use duet_common::hpke::{self, HpkeApplicationInfo, HpkeKeypair};
use duet_common::media_type;
use duet_common::messages::{
    BatchMode, CollectionJobReq, CollectionJobResp, LeaderSelectedQueryConfig, Query, Role, TaskId,
};
use duet_common::task::{CollectorCredentials, TaskParameters};
use duet_common::time::{Duration as DapDuration, Interval, Time, TimePrecision};
use duet_common::vdaf::{AggregateResult, Vdaf};
use duet_common::{Decode, Encode};
use reqwest::header::{CONTENT_TYPE, LOCATION};
use reqwest::{RequestBuilder, Response};
use std::time::{Duration, Instant};
use url::Url;

/// Tunables of a [`Collector`].
#[derive(Clone, Debug)]
pub struct CollectorOptions {
    /// How the collector's token is presented.
    pub token_scheme: TokenScheme,
    /// Attempts per HTTP request before a transient failure becomes an error.
    pub max_attempts: u32,
    /// First delay between polls (and between retries); it doubles each time.
    pub initial_poll_interval: Duration,
    /// Longest wait between polls, even when the leader's `Retry-After` asks for more.
    pub max_poll_interval: Duration,
}

impl Default for CollectorOptions {
    fn default() -> Self {
        Self {
            token_scheme: TokenScheme::Bearer,
            max_attempts: 5,
            initial_poll_interval: Duration::from_millis(500),
            max_poll_interval: Duration::from_secs(5),
        }
    }
}

/// A collection job on the leader: where it is and the exact request that created it, which
/// the aggregate shares are bound to.
#[derive(Clone, Debug)]
pub struct CollectionJob {
    url: Url,
    request: CollectionJobReq,
    retry_after: Option<Duration>,
    /// The result, when the leader answered the creation request synchronously.
    ready: Option<CollectionJobResp>,
    /// The leader's `Duet-Privacy-Budget` figures from the answer that carried `ready`.
    budget: Option<Budget>,
}

/// A task's differential-privacy budget as the leader reports it with a result.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    /// Spent by (or reserved for) the task's collections, this one included.
    pub spent: f64,
    /// The task's total, if it has one.
    pub total: Option<f64>,
    /// What `spent` and `total` count: epsilon (discrete Laplace) or rho (discrete Gaussian).
    pub unit: BudgetUnit,
}

/// The `Duet-Privacy-Budget` header duet's leader adds to collection job answers:
/// `spent=1.5, total=5, unit=epsilon` (leaders before the Gaussian mechanism sent no unit: epsilon).
pub const BUDGET_HEADER: &str = "duet-privacy-budget";

fn budget_of(headers: &reqwest::header::HeaderMap) -> Option<Budget> {
    let v = headers.get(BUDGET_HEADER)?.to_str().ok()?;
    let mut spent = None;
    let mut total = None;
    let mut unit = Some(BudgetUnit::Epsilon);
    for part in v.split(',') {
        match part.trim().split_once('=') {
            Some(("spent", x)) => spent = x.trim().parse().ok(),
            Some(("total", x)) => total = x.trim().parse().ok(),
            Some(("unit", x)) => unit = BudgetUnit::parse(x.trim()),
            _ => {}
        }
    }
    Some(Budget { spent: spent?, total, unit: unit? })
}

/// What a result guarantees, to be shown with it wherever it is shown.
#[derive(Clone, Debug, PartialEq)]
pub struct Guarantee {
    pub report_count: u64,
    pub min_batch_size: u64,
    /// The noise the aggregators added, described; `None` for none.
    pub noise: Option<String>,
    pub budget: Option<Budget>,
    /// Whether noisy values were clamped into range ([`CollectionResult::clamped`]).
    pub clamped: bool,
}

impl CollectionJob {
    /// A job known from elsewhere (e.g. a URL kept from an earlier run); `request` must be the
    /// request that created it, byte for byte, or its shares will not open.
    pub fn from_parts(url: Url, request: CollectionJobReq) -> Self {
        Self { url, request, retry_after: None, ready: None, budget: None }
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn request(&self) -> &CollectionJobReq {
        &self.request
    }

    /// The leader's suggested delay before the first poll.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether the leader already returned the result with the job's creation.
    pub fn is_ready(&self) -> bool {
        self.ready.is_some()
    }
}

/// A decrypted aggregate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectionResult {
    /// The number of reports in the batch.
    pub report_count: u64,
    /// The smallest interval containing every report's timestamp, in the task's time units.
    pub interval: Interval,
    /// `interval` in POSIX seconds, `[start, end)`.
    pub interval_seconds: (u64, u64),
    pub result: AggregateResult,
    /// Threshold, noise, budget: what protects the people in this result.
    pub guarantee: Guarantee,
}

impl Eq for Guarantee {}

impl CollectionResult {
    /// The result with noisy entries clamped into the range a true result can take
    /// ([`AggregateResult::clamped`]): post-processing, which the privacy statement then
    /// mentions. Exact results are unchanged.
    pub fn clamped(mut self, vdaf: &duet_common::vdaf::VdafConfig) -> Self {
        if self.result.is_noisy() {
            self.result = self.result.clamped(vdaf, self.report_count);
            self.guarantee.clamped = true;
        }
        self
    }
}

/// What one poll found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PollStatus {
    Ready(CollectionResult),
    /// Not done yet; the leader may suggest when to ask again.
    Pending {
        retry_after: Option<Duration>,
    },
}

/// The collector of one task.
#[derive(Debug)]
pub struct Collector {
    task: TaskParameters,
    task_id: TaskId,
    precision: TimePrecision,
    /// The encoded `TaskConfiguration`, bound into every aggregate share's AAD.
    task_configuration: Vec<u8>,
    vdaf: Vdaf,
    token: AuthenticationToken,
    keypair: HpkeKeypair,
    leader: Url,
    collection_jobs_url: Url,
    http: reqwest::Client,
    options: CollectorOptions,
}

/// The query that selects `[start, start + duration)` (POSIX seconds) in a time-interval task.
/// Both must be multiples of the task's time precision, and the duration non-zero.
pub fn time_interval_query(start_seconds: u64, duration_seconds: u64, precision: TimePrecision) -> Result<Query> {
    let p = precision.as_seconds();
    if duration_seconds == 0 {
        return Err(ClientError::Query("the batch interval must not be empty".into()));
    }
    if !start_seconds.is_multiple_of(p) || !duration_seconds.is_multiple_of(p) {
        return Err(ClientError::Query(format!(
            "the batch interval must start and last whole multiples of the task's time precision \
             ({p} s); got start {start_seconds} and duration {duration_seconds}"
        )));
    }
    if start_seconds.checked_add(duration_seconds).is_none() {
        return Err(ClientError::Query("the batch interval ends past the representable time".into()));
    }
    Ok(Query::time_interval(Interval::new(
        Time::from_seconds(start_seconds, precision),
        DapDuration::from_units(duration_seconds / p),
    )))
}

/// The query for the next batch the leader has filled, in a leader-selected task.
pub fn leader_selected_query() -> Query {
    Query::LeaderSelected(LeaderSelectedQueryConfig)
}

impl Collector {
    pub fn new(credentials: &CollectorCredentials, http: reqwest::Client) -> Result<Self> {
        Self::with_options(credentials, http, CollectorOptions::default())
    }

    pub fn with_options(
        credentials: &CollectorCredentials,
        http: reqwest::Client,
        options: CollectorOptions,
    ) -> Result<Self> {
        let task = credentials.task.clone();
        let task_configuration =
            task.task_configuration()?.get_encoded().map_err(ClientError::encode("TaskConfiguration"))?;
        let leader = http::endpoint_base(&task.leader_endpoint)?;
        let collection_jobs_url = http::join(&leader, &format!("tasks/{}/collection_jobs", task.task_id))?;
        Ok(Self {
            task_id: task.task_id,
            precision: task.precision()?,
            vdaf: Vdaf::new(&task.vdaf).map_err(ClientError::Vdaf)?,
            token: credentials.token()?,
            keypair: credentials.keypair()?,
            task_configuration,
            leader,
            collection_jobs_url,
            http,
            options,
            task,
        })
    }

    pub fn task(&self) -> &TaskParameters {
        &self.task
    }

    /// The query for `[start, start + duration)` (POSIX seconds) of this task, or for the next
    /// leader-selected batch, whichever the task's batch mode takes. An interval is refused for
    /// a leader-selected task and required for a time-interval one.
    pub fn query(&self, interval_seconds: Option<(u64, u64)>) -> Result<Query> {
        match (self.task.batch_mode, interval_seconds) {
            (BatchMode::TimeInterval, Some((start, duration))) => time_interval_query(start, duration, self.precision),
            (BatchMode::TimeInterval, None) => {
                Err(ClientError::Query("a time-interval task needs a batch interval to collect".into()))
            }
            (BatchMode::LeaderSelected, None) => Ok(leader_selected_query()),
            (BatchMode::LeaderSelected, Some(_)) => Err(ClientError::Query(
                "a leader-selected task takes no batch interval: the leader picks the batch".into(),
            )),
        }
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.options.max_attempts,
            initial_backoff: self.options.initial_poll_interval,
            max_backoff: self.options.max_poll_interval,
        }
    }

    fn authorized(&self, builder: RequestBuilder) -> RequestBuilder {
        let (name, value) = self.token.header(self.options.token_scheme);
        builder.header(name, value)
    }

    /// Creates a collection job: `POST {leader}tasks/{task-id}/collection_jobs`.
    pub async fn start(&self, query: Query) -> Result<CollectionJob> {
        let request = CollectionJobReq { query, agg_param: vec![], extensions: vec![] };
        let body = request.get_encoded().map_err(ClientError::encode("CollectionJobReq"))?;
        let url = &self.collection_jobs_url;
        let context = format!("POST {url}");
        // Creation is idempotent for identical requests (DAP-18 "Resource Creation"), so a retry
        // finds the job the first attempt may have created.
        let resp = http::send_with_retry(&self.retry_policy(), &context, || {
            self.authorized(self.http.post(url.clone()))
                .header(CONTENT_TYPE, media_type::COLLECTION_JOB_REQ)
                .body(body.clone())
        })
        .await?;
        if !resp.status().is_success() {
            // A job that failed at once (the leader answers with its problem and its Location):
            // delete it, or the identical request would name it again instead of starting
            // afresh. Nothing of its batch was released.
            let failed = resp.headers().get(LOCATION).and_then(|l| l.to_str().ok()).map(str::to_string);
            let err = http::status_error(resp, &context).await;
            if let Some(job_url) = failed.and_then(|l| http::resolve_location(&self.leader, &l).ok()) {
                self.discard_failed(&job_url).await;
            }
            return Err(err);
        }
        let location = resp
            .headers()
            .get(LOCATION)
            .ok_or_else(|| ClientError::Protocol(format!("{context}: the leader's answer has no Location")))?
            .to_str()
            .map_err(|_| ClientError::Protocol(format!("{context}: the Location header is not ASCII")))?;
        let job_url = http::resolve_location(&self.leader, location)?;
        let retry_after = http::retry_after(resp.headers());
        let resp_headers_budget = Some(resp.headers().clone());
        let ready = self.read_job_response(resp, &context).await?;
        tracing::info!(job = %job_url, ready = ready.is_some(), "collection job created");
        let budget = resp_headers_budget.as_ref().and_then(budget_of);
        Ok(CollectionJob { url: job_url, request, retry_after, ready, budget })
    }

    /// The `CollectionJobResp` in a successful answer, or `None` for an empty body (not ready).
    async fn read_job_response(&self, resp: Response, context: &str) -> Result<Option<CollectionJobResp>> {
        let headers = resp.headers().clone();
        let body = http::read_body(resp, http::MAX_BODY, context).await?;
        if body.is_empty() {
            return Ok(None);
        }
        http::expect_media_type(&headers, media_type::COLLECTION_JOB_RESP, context)?;
        Ok(Some(CollectionJobResp::get_decoded(&body).map_err(ClientError::decode("CollectionJobResp"))?))
    }

    /// Asks once whether the job is done: `Ok(None)` while it is not. Failures of the job (for
    /// example `invalidBatchSize` or `batchOverlap`) are errors carrying the leader's problem
    /// document.
    pub async fn poll(&self, job: &CollectionJob) -> Result<Option<CollectionResult>> {
        Ok(match self.poll_status(job).await? {
            PollStatus::Ready(result) => Some(result),
            PollStatus::Pending { .. } => None,
        })
    }

    /// Like [`Collector::poll`], with the leader's `Retry-After` when the job is pending.
    pub async fn poll_status(&self, job: &CollectionJob) -> Result<PollStatus> {
        if let Some(resp) = &job.ready {
            return Ok(PollStatus::Ready(self.finish(&job.request, resp.clone(), job.budget)?));
        }
        let context = format!("GET {}", job.url);
        let resp =
            http::send_with_retry(&self.retry_policy(), &context, || self.authorized(self.http.get(job.url.clone())))
                .await?;
        if !resp.status().is_success() {
            return Err(http::status_error(resp, &context).await);
        }
        let retry_after = http::retry_after(resp.headers());
        let budget = budget_of(resp.headers());
        match self.read_job_response(resp, &context).await? {
            Some(resp) => Ok(PollStatus::Ready(self.finish(&job.request, resp, budget)?)),
            None => Ok(PollStatus::Pending { retry_after }),
        }
    }

    /// Opens both aggregate shares and unshards them. The AAD is the encoded
    /// `AggregateShareAad`, assembled from the pre-encoded task configuration.
    fn finish(
        &self,
        request: &CollectionJobReq,
        resp: CollectionJobResp,
        budget: Option<Budget>,
    ) -> Result<CollectionResult> {
        let aad =
            duet_common::messages::AggregateShareAad::encode_parts(&self.task_id, &self.task_configuration, request)
                .map_err(ClientError::encode("AggregateShareAad"))?;
        let open = |sender: Role, ct| -> Result<_> {
            let plain = hpke::open(&self.keypair, &HpkeApplicationInfo::AggregateShare { sender }, ct, &aad)?;
            self.vdaf.decode_aggregate_share(&plain).map_err(ClientError::Vdaf)
        };
        let leader = open(Role::Leader, &resp.leader_encrypted_agg_share)?;
        let helper = open(Role::Helper, &resp.helper_encrypted_agg_share)?;
        // Noisy entries are read as signed integers: noise may push them below 0.
        let result = match self.task.dp {
            Some(_) => self.vdaf.unshard_noisy(&leader, &helper, resp.report_count),
            None => self.vdaf.unshard(&leader, &helper, resp.report_count),
        }
        .map_err(ClientError::Vdaf)?;
        let interval = resp.interval;
        let seconds = |t: Option<Time>| t.and_then(|t| t.to_seconds(self.precision));
        let interval_seconds = match (seconds(Some(interval.start)), seconds(interval.end())) {
            (Some(start), Some(end)) => (start, end),
            _ => return Err(ClientError::Protocol("the result's interval is out of range".into())),
        };
        if resp.report_count < self.task.min_batch_size {
            // The leader must never release such a batch; say so loudly, the caller decides.
            tracing::warn!(
                report_count = resp.report_count,
                min_batch_size = self.task.min_batch_size,
                "the leader returned a batch smaller than the task's minimum batch size"
            );
        }
        if let Query::TimeInterval(q) = request.query {
            if !q.batch_interval.contains_interval(&interval) {
                tracing::warn!("the result's interval lies outside the queried batch interval");
            }
        }
        let guarantee = Guarantee {
            report_count: resp.report_count,
            min_batch_size: self.task.min_batch_size,
            noise: self.task.dp.as_ref().map(|dp| dp.describe(&self.task.vdaf)),
            budget,
            clamped: false,
        };
        Ok(CollectionResult { report_count: resp.report_count, interval, interval_seconds, result, guarantee })
    }

    /// Starts a job and polls it until it is ready or `timeout` has passed, honouring the
    /// leader's `Retry-After` up to `max_poll_interval`. On timeout the job is left on the
    /// leader and the error names it.
    pub async fn collect(&self, query: Query, timeout: Duration) -> Result<CollectionResult> {
        let deadline = Instant::now() + timeout;
        let timed_out =
            |job: Option<&CollectionJob>| ClientError::Timeout { timeout, job: job.map(|j| j.url.to_string()) };
        let job = tokio::time::timeout_at(deadline.into(), self.start(query)).await.map_err(|_| timed_out(None))??;
        let mut wait = job.retry_after;
        let mut attempt = 0u32;
        loop {
            if let Some(w) = wait {
                // A poll that could only start at or after the deadline cannot make it in time.
                if Instant::now() + w.min(self.options.max_poll_interval) >= deadline {
                    return Err(timed_out(Some(&job)));
                }
                tokio::time::sleep(w.min(self.options.max_poll_interval)).await;
            }
            let status = match tokio::time::timeout_at(deadline.into(), self.poll_status(&job)).await {
                Err(_) => return Err(timed_out(Some(&job))),
                Ok(Err(e @ ClientError::Status { .. })) => {
                    // The job failed (the leader answers its poll with the problem). Nothing
                    // of its batch was released, but the identical request names this job until
                    // it is deleted: delete it, so that asking again starts afresh.
                    self.discard_failed(&job.url).await;
                    return Err(e);
                }
                Ok(other) => other?,
            };
            match status {
                PollStatus::Ready(result) => {
                    // Every "next batch" request of a leader-selected task is the same bytes, so
                    // it names the same job until that job is deleted: delete it, so that the
                    // next collection gets the next batch. (The batch stays collected.)
                    if matches!(job.request.query, Query::LeaderSelected(_)) {
                        if let Err(e) = self.delete(&job).await {
                            tracing::warn!(job = %job.url, error = %e, "could not delete the finished collection job");
                        }
                    }
                    return Ok(result);
                }
                PollStatus::Pending { retry_after } => {
                    let backoff = self.retry_policy().backoff(attempt);
                    attempt += 1;
                    wait = Some(retry_after.unwrap_or(backoff));
                    tracing::debug!(job = %job.url, ?wait, "collection job not ready");
                }
            }
        }
    }

    /// Abandons a job: `DELETE` on its URL.
    pub async fn delete(&self, job: &CollectionJob) -> Result<()> {
        self.delete_url(&job.url).await
    }

    /// Deletes a failed job, so that the identical request starts afresh (best effort: the
    /// failure is what the caller reports).
    async fn discard_failed(&self, url: &Url) {
        if let Err(e) = self.delete_url(url).await {
            tracing::warn!(job = %url, error = %e, "could not delete the failed collection job");
        }
    }

    async fn delete_url(&self, url: &Url) -> Result<()> {
        let context = format!("DELETE {url}");
        let resp =
            http::send_with_retry(&self.retry_policy(), &context, || self.authorized(self.http.delete(url.clone())))
                .await?;
        if !resp.status().is_success() {
            return Err(http::status_error(resp, &context).await);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duet_common::messages::{AggregateShareAad, HpkeConfigId, ReportId};
    use duet_common::task::hpke_config_to_b64;
    use duet_common::vdaf::{vdaf_context, Measurement, Transition, VdafConfig, VerifyKey};

    fn credentials(batch_mode: BatchMode, vdaf: VdafConfig) -> (CollectorCredentials, HpkeKeypair) {
        let keypair = HpkeKeypair::generate_default(HpkeConfigId(3));
        let task = TaskParameters {
            task_id: TaskId::random(),
            task_info: "collector test".into(),
            leader_endpoint: "https://leader.example/dap/".into(),
            helper_endpoint: "https://helper.example/dap/".into(),
            time_precision: 600,
            min_batch_size: 2,
            batch_mode,
            vdaf,
            task_interval_seconds: None,
            dp: None,
        };
        let creds = CollectorCredentials {
            task,
            collector_auth_token: AuthenticationToken::random().expose().to_string(),
            hpke_config: hpke_config_to_b64(keypair.config()),
            hpke_private_key: keypair.private_key().to_base64(),
        };
        (creds, keypair)
    }

    /// What the two aggregators would return for `measurements`: each side's aggregate share,
    /// sealed to the collector and bound to `request`.
    fn aggregate(
        creds: &CollectorCredentials,
        collector: &HpkeKeypair,
        request: &CollectionJobReq,
        measurements: &[Measurement],
        interval: Interval,
    ) -> CollectionJobResp {
        let task = &creds.task;
        let vdaf = Vdaf::new(&task.vdaf).unwrap();
        let ctx = vdaf_context(&task.task_id);
        let key = VerifyKey::random();
        let mut aggs = [vdaf.aggregate_init(), vdaf.aggregate_init()];
        for m in measurements {
            let nonce = *ReportId::random().as_bytes();
            let (public, [ls, hs]) = vdaf.shard(&ctx, m, &nonce).unwrap();
            let (state, msg) = vdaf.leader_init(&key, &ctx, &nonce, &public, &ls).unwrap();
            let Transition::FinishedWithOutbound { out_share: ho, outbound } =
                vdaf.helper_init(&key, &ctx, &nonce, &public, &hs, &msg).unwrap()
            else {
                panic!()
            };
            let Transition::Finished { out_share: lo } = vdaf.leader_continued(&ctx, state, &outbound).unwrap() else {
                panic!()
            };
            aggs[0].accumulate(&lo).unwrap();
            aggs[1].accumulate(&ho).unwrap();
        }
        let aad = AggregateShareAad {
            task_id: task.task_id,
            task_configuration: task.task_configuration().unwrap(),
            collection_job_req: request.clone(),
        }
        .get_encoded()
        .unwrap();
        let seal = |sender: Role, share: &duet_common::vdaf::AggregateShare| {
            hpke::seal(
                collector.config(),
                &HpkeApplicationInfo::AggregateShare { sender },
                &share.get_encoded().unwrap(),
                &aad,
            )
            .unwrap()
        };
        CollectionJobResp {
            report_count: measurements.len() as u64,
            interval,
            leader_encrypted_agg_share: seal(Role::Leader, &aggs[0]),
            helper_encrypted_agg_share: seal(Role::Helper, &aggs[1]),
        }
    }

    #[test]
    fn finished_jobs_open_and_unshard() {
        let (creds, keypair) =
            credentials(BatchMode::TimeInterval, VdafConfig::Prio3Histogram { length: 3, chunk_length: 2 });
        let collector = Collector::new(&creds, reqwest::Client::new()).unwrap();
        let query = collector.query(Some((1_800_000_000, 3600))).unwrap();
        let request = CollectionJobReq { query, agg_param: vec![], extensions: vec![] };
        let interval = Interval::new(Time::from_units(3_000_000), DapDuration::from_units(2));
        let ms = [Measurement::Histogram(2), Measurement::Histogram(0), Measurement::Histogram(2)];
        let resp = aggregate(&creds, &keypair, &request, &ms, interval);

        let result = collector.finish(&request, resp.clone(), None).unwrap();
        assert_eq!(result.report_count, 3);
        assert_eq!(result.interval, interval);
        assert_eq!(result.interval_seconds, (1_800_000_000, 1_800_001_200));
        assert_eq!(result.result, AggregateResult::Vector(vec![1, 0, 2]));

        // A synchronous answer to the creation request is handed out by the first poll.
        let url = Url::parse("https://leader.example/dap/tasks/x/collection_jobs/y").unwrap();
        let job =
            CollectionJob { url, request: request.clone(), retry_after: None, ready: Some(resp.clone()), budget: None };
        assert!(job.is_ready());
        let polled = tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(collector.poll(&job));
        assert_eq!(polled.unwrap(), Some(result));

        // The shares are bound to the exact request: another query does not open them.
        let other = CollectionJobReq {
            query: collector.query(Some((1_800_000_000, 7200))).unwrap(),
            agg_param: vec![],
            extensions: vec![],
        };
        assert!(matches!(collector.finish(&other, resp.clone(), None), Err(ClientError::Hpke(_))));
        // Swapped shares fail too: the sender's role is in the info string.
        let swapped = CollectionJobResp {
            leader_encrypted_agg_share: resp.helper_encrypted_agg_share.clone(),
            helper_encrypted_agg_share: resp.leader_encrypted_agg_share.clone(),
            ..resp
        };
        assert!(matches!(collector.finish(&request, swapped, None), Err(ClientError::Hpke(_))));
    }

    #[test]
    fn leader_selected_scalar_result() {
        let (creds, keypair) = credentials(BatchMode::LeaderSelected, VdafConfig::Prio3Sum { max_measurement: 100 });
        let collector = Collector::new(&creds, reqwest::Client::new()).unwrap();
        let query = collector.query(None).unwrap();
        assert_eq!(query, leader_selected_query());
        let request = CollectionJobReq { query, agg_param: vec![], extensions: vec![] };
        let interval = Interval::new(Time::from_units(10), DapDuration::from_units(1));
        let resp = aggregate(&creds, &keypair, &request, &[Measurement::Sum(40), Measurement::Sum(2)], interval);
        let result = collector.finish(&request, resp, None).unwrap();
        assert_eq!(result.result, AggregateResult::Scalar(42));
        assert_eq!(result.interval_seconds, (6000, 6600));
        assert!(matches!(collector.query(Some((0, 600))), Err(ClientError::Query(_))));
    }

    #[test]
    fn interval_conversion_and_alignment() {
        let p = TimePrecision::from_seconds(3600).unwrap();
        let q = time_interval_query(1_800_000_000, 7200, p).unwrap();
        assert_eq!(q, Query::time_interval(Interval::new(Time::from_units(500_000), DapDuration::from_units(2))));
        for (start, duration) in [(1_800_000_001, 3600), (1_800_000_000, 3599), (1_800_000_000, 0), (0, 5400)] {
            let err = time_interval_query(start, duration, p).unwrap_err();
            assert!(matches!(err, ClientError::Query(_)), "{start}+{duration}: {err}");
            assert!(err.is_input_error());
        }
        let msg = time_interval_query(1_800_000_001, 3600, p).unwrap_err().to_string();
        assert!(msg.contains("3600 s"), "{msg}");
        let (creds, _) = credentials(BatchMode::TimeInterval, VdafConfig::Prio3Count);
        let collector = Collector::new(&creds, reqwest::Client::new()).unwrap();
        assert!(matches!(collector.query(None), Err(ClientError::Query(_))));
        assert!(matches!(collector.query(Some((601, 600))), Err(ClientError::Query(_))));
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let (creds, _) = credentials(BatchMode::TimeInterval, VdafConfig::Prio3Count);
        let collector = Collector::new(&creds, reqwest::Client::new()).unwrap();
        let debug = format!("{collector:?}");
        assert!(!debug.contains(&creds.collector_auth_token), "token in Debug");
        assert!(!debug.contains(&creds.hpke_private_key), "private key in Debug");
        assert_eq!(
            collector.collection_jobs_url.as_str(),
            format!("https://leader.example/dap/tasks/{}/collection_jobs", creds.task.task_id)
        );
    }
}
