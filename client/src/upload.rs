//! The client SDK: turns measurements into DAP-18 reports and uploads them to the leader
//! ("Uploading Reports").
//!
//! A [`Client`] fetches and caches each aggregator's HPKE configuration, shards measurements
//! with the task's VDAF, seals each input share to its aggregator, and sends the reports in
//! batches of `reports_per_request`, retrying transient failures and re-making reports the
//! leader refuses with `outdated_config`.

use crate::error::{ClientError, Result};
use crate::http::{self, RetryPolicy};
use duet_common::hpke::{self, HpkeApplicationInfo};
use duet_common::media_type;
use duet_common::messages::{
    HpkeConfig, HpkeConfigList, InputShareAad, PlaintextInputShare, Report, ReportError, ReportId, ReportMetadata,
    Role, TaskId, UploadErrors, UploadRequest,
};
use duet_common::task::TaskParameters;
use duet_common::time::{Time, TimePrecision};
use duet_common::vdaf::{vdaf_context, Measurement, Vdaf, VdafConfig, VdafFailure};
use duet_common::{Decode, Encode};
use reqwest::header::CONTENT_TYPE;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use url::Url;

/// Tunables of a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Reports per `UploadRequest`.
    pub reports_per_request: usize,
    /// Attempts per HTTP request before a transient failure (5xx, connection error, timeout)
    /// becomes an error.
    pub max_attempts: u32,
    /// First retry delay; it doubles with each retry.
    pub initial_backoff: Duration,
    /// Cap on any retry delay, including a server's `Retry-After`.
    pub max_backoff: Duration,
    /// How long to cache an HPKE configuration whose response has no `Cache-Control: max-age`.
    pub default_hpke_config_lifetime: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            reports_per_request: 1000,
            max_attempts: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            default_hpke_config_lifetime: Duration::from_secs(3600),
        }
    }
}

/// The HPKE configurations a report is sealed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HpkeConfigs {
    pub leader: HpkeConfig,
    pub helper: HpkeConfig,
}

/// What became of an upload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UploadOutcome {
    /// Reports the leader accepted.
    pub accepted: u64,
    /// Reports the leader refused, with its reason, in upload order. A report re-made after
    /// `outdated_config` appears under the ID of the re-made report.
    pub rejected: Vec<(ReportId, ReportError)>,
}

impl UploadOutcome {
    fn absorb(&mut self, other: UploadOutcome) {
        self.accepted += other.accepted;
        self.rejected.extend(other.rejected);
    }
}

/// Checks that `measurement` fits the VDAF (type, length and range) without sharding it, so that
/// bad input is refused before any network traffic or CPU-heavy work.
pub fn check_measurement(config: &VdafConfig, measurement: &Measurement) -> Result<()> {
    let bad = |why: String| Err(ClientError::Measurement(VdafFailure::BadMeasurement(why)));
    let check_len = |len: usize, length: u32| {
        if len == length as usize {
            Ok(())
        } else {
            bad(format!("{len} entries, but the task's vectors have {length}"))
        }
    };
    match (config, measurement) {
        (VdafConfig::Prio3Count, Measurement::Count(_)) => Ok(()),
        #[cfg(feature = "test-vdaf")]
        (VdafConfig::Dummy { .. }, Measurement::Dummy(_)) => Ok(()),
        (VdafConfig::Prio3Sum { max_measurement }, Measurement::Sum(v)) if v > max_measurement => {
            bad(format!("{v} is above the task's max_measurement {max_measurement}"))
        }
        (VdafConfig::Prio3Sum { .. }, Measurement::Sum(_)) => Ok(()),
        (VdafConfig::Prio3Histogram { length, .. }, Measurement::Histogram(b)) if *b >= *length as usize => {
            bad(format!("bucket {b} does not exist: the task's histogram has buckets 0 to {}", length - 1))
        }
        (VdafConfig::Prio3Histogram { .. }, Measurement::Histogram(_)) => Ok(()),
        (VdafConfig::Prio3SumVec { length, max_measurement, .. }, Measurement::SumVec(v)) => {
            check_len(v.len(), *length)?;
            match v.iter().find(|x| **x > u128::from(*max_measurement)) {
                Some(x) => bad(format!("entry {x} is above the task's max_measurement {max_measurement}")),
                None => Ok(()),
            }
        }
        (VdafConfig::Prio3MultihotCountVec { length, max_weight, .. }, Measurement::MultihotCountVec(v)) => {
            check_len(v.len(), *length)?;
            let weight = v.iter().filter(|b| **b).count() as u64;
            if weight > *max_weight {
                bad(format!("{weight} entries set, but the task allows at most {max_weight}"))
            } else {
                Ok(())
            }
        }
        _ => bad(format!("not a measurement for {config}")),
    }
}

/// One aggregator's cached configuration. `expires: None` means pinned by the caller.
#[derive(Clone, Debug)]
struct CachedConfig {
    config: HpkeConfig,
    expires: Option<Instant>,
}

impl CachedConfig {
    fn is_fresh(&self) -> bool {
        self.expires.is_none_or(|at| Instant::now() < at)
    }
}

#[derive(Debug, Default)]
struct ConfigCache {
    leader: Option<CachedConfig>,
    helper: Option<CachedConfig>,
    /// Bumped on every change, so that reports sealed to a superseded pair can be recognised.
    generation: u64,
}

/// Everything sharding and sealing needs, shared with blocking worker threads.
#[derive(Debug)]
struct Preparer {
    task_id: TaskId,
    precision: TimePrecision,
    /// The encoded `TaskConfiguration`, bound into every report's AAD; computed once.
    task_configuration: Vec<u8>,
    vdaf: Vdaf,
    ctx: [u8; 38],
}

impl Preparer {
    fn prepare(&self, configs: &HpkeConfigs, measurement: &Measurement, time_seconds: u64) -> Result<Report> {
        let report_id = ReportId::random();
        let report_metadata = ReportMetadata {
            report_id,
            time: Time::from_seconds(time_seconds, self.precision),
            public_extensions: vec![],
        };
        let (public_share, [leader_share, helper_share]) =
            self.vdaf.shard(&self.ctx, measurement, report_id.as_bytes()).map_err(ClientError::Measurement)?;
        let aad = InputShareAad::encode_parts(&self.task_id, &self.task_configuration, &report_metadata, &public_share)
            .map_err(ClientError::encode("InputShareAad"))?;
        let seal = |payload: Vec<u8>, recipient: Role, config: &HpkeConfig| -> Result<_> {
            let plaintext = PlaintextInputShare { private_extensions: vec![], payload }
                .get_encoded()
                .map_err(ClientError::encode("PlaintextInputShare"))?;
            Ok(hpke::seal(config, &HpkeApplicationInfo::InputShare { recipient }, &plaintext, &aad)?)
        };
        Ok(Report {
            leader_encrypted_input_share: seal(leader_share, Role::Leader, &configs.leader)?,
            helper_encrypted_input_share: seal(helper_share, Role::Helper, &configs.helper)?,
            report_metadata,
            public_share,
        })
    }
}

/// The DAP client of one task.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    preparer: Arc<Preparer>,
    leader: Url,
    helper: Url,
    reports_url: Url,
    http: reqwest::Client,
    options: ClientOptions,
    cache: Mutex<ConfigCache>,
}

/// A chunk of reports with the measurement index each one was made from.
type PreparedChunk = (Vec<(usize, Report)>, u64);

impl Client {
    /// A client for the task with default [`ClientOptions`].
    pub fn new(task: TaskParameters, http: reqwest::Client) -> Result<Self> {
        Self::with_options(task, http, ClientOptions::default())
    }

    pub fn with_options(task: TaskParameters, http: reqwest::Client, options: ClientOptions) -> Result<Self> {
        let task_configuration = task.task_configuration()?;
        let encoded = task_configuration.get_encoded().map_err(ClientError::encode("TaskConfiguration"))?;
        let vdaf = Vdaf::new(&task.vdaf).map_err(ClientError::Vdaf)?;
        let leader = http::endpoint_base(&task.leader_endpoint)?;
        let helper = http::endpoint_base(&task.helper_endpoint)?;
        let reports_url = http::join(&leader, &format!("tasks/{}/reports", task.task_id))?;
        let options = ClientOptions { reports_per_request: options.reports_per_request.max(1), ..options };
        Ok(Self {
            inner: Arc::new(Inner {
                preparer: Arc::new(Preparer {
                    task_id: task.task_id,
                    precision: task.precision()?,
                    task_configuration: encoded,
                    ctx: vdaf_context(&task.task_id),
                    vdaf,
                }),
                leader,
                helper,
                reports_url,
                http,
                options,
                cache: Mutex::new(ConfigCache::default()),
            }),
        })
    }

    /// Uses these configurations instead of fetching them (e.g. when they were distributed out
    /// of band). They stay in use until the leader answers `outdated_config`.
    pub fn with_hpke_configs(self, configs: HpkeConfigs) -> Self {
        if let Ok(mut cache) = self.inner.cache.lock() {
            cache.leader = Some(CachedConfig { config: configs.leader, expires: None });
            cache.helper = Some(CachedConfig { config: configs.helper, expires: None });
            cache.generation += 1;
        }
        self
    }

    pub fn task_id(&self) -> TaskId {
        self.inner.preparer.task_id
    }

    fn retry_policy(&self) -> RetryPolicy {
        let o = &self.inner.options;
        RetryPolicy { max_attempts: o.max_attempts, initial_backoff: o.initial_backoff, max_backoff: o.max_backoff }
    }

    /// The aggregators' HPKE configurations, from the cache while fresh, else fetched.
    pub async fn hpke_configs(&self) -> Result<HpkeConfigs> {
        Ok(self.configs(false).await?.0)
    }

    /// The configurations and their cache generation; `refresh` drops whatever is cached.
    async fn configs(&self, refresh: bool) -> Result<(HpkeConfigs, u64)> {
        let (leader, helper) = {
            let mut cache = self.lock_cache();
            if refresh {
                cache.leader = None;
                cache.helper = None;
                cache.generation += 1;
            }
            let fresh = |c: &Option<CachedConfig>| c.as_ref().filter(|c| c.is_fresh()).map(|c| c.config.clone());
            match (fresh(&cache.leader), fresh(&cache.helper)) {
                (Some(leader), Some(helper)) => return Ok((HpkeConfigs { leader, helper }, cache.generation)),
                pair => pair,
            }
        };
        // The lock is not held across the fetches; two concurrent refreshes only cost a request.
        let (leader, helper) = tokio::join!(
            self.cached_or_fetch(leader, &self.inner.leader),
            self.cached_or_fetch(helper, &self.inner.helper)
        );
        let ((leader, fetched_leader), (helper, fetched_helper)) = (leader?, helper?);
        let mut cache = self.lock_cache();
        // Only fetched configurations are stored: one taken from the cache keeps its expiry.
        if let Some(c) = fetched_leader {
            cache.leader = Some(c);
        }
        if let Some(c) = fetched_helper {
            cache.helper = Some(c);
        }
        cache.generation += 1;
        Ok((HpkeConfigs { leader, helper }, cache.generation))
    }

    /// `cached` if there is one, else a fetched configuration (returned twice: once to use, once
    /// to store).
    async fn cached_or_fetch(
        &self,
        cached: Option<HpkeConfig>,
        endpoint: &Url,
    ) -> Result<(HpkeConfig, Option<CachedConfig>)> {
        match cached {
            Some(config) => Ok((config, None)),
            None => {
                let fetched = self.fetch_config(endpoint).await?;
                Ok((fetched.config.clone(), Some(fetched)))
            }
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, ConfigCache> {
        // A poisoned cache holds at worst a stale configuration, which the leader will flag.
        self.inner.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `GET {endpoint}hpke_config`: the first configuration of the list whose suite this build
    /// supports, with its cache lifetime.
    async fn fetch_config(&self, endpoint: &Url) -> Result<CachedConfig> {
        let url = http::join(endpoint, "hpke_config")?;
        let context = format!("GET {url}");
        let resp = http::send_with_retry(&self.retry_policy(), &context, || self.inner.http.get(url.clone())).await?;
        if !resp.status().is_success() {
            return Err(http::status_error(resp, &context).await);
        }
        http::expect_media_type(resp.headers(), media_type::HPKE_CONFIG_LIST, &context)?;
        let lifetime = http::cache_lifetime(resp.headers()).unwrap_or(self.inner.options.default_hpke_config_lifetime);
        let body = http::read_body(resp, http::MAX_BODY, &context).await?;
        let list = HpkeConfigList::get_decoded(&body).map_err(ClientError::decode("HpkeConfigList"))?;
        let config = list
            .0
            .into_iter()
            .find(|c| hpke::is_supported(c.kem_id, c.kdf_id, c.aead_id))
            .ok_or_else(|| ClientError::NoSupportedHpkeConfig { endpoint: endpoint.to_string() })?;
        tracing::debug!(endpoint = %endpoint, config_id = config.id.0, ?lifetime, "fetched HPKE configuration");
        Ok(CachedConfig { config, expires: Some(Instant::now() + lifetime) })
    }

    /// Makes one report of `measurement` taken at `time_seconds` (POSIX seconds), sealed to the
    /// aggregators' current configurations.
    pub async fn prepare_report(&self, measurement: &Measurement, time_seconds: u64) -> Result<Report> {
        let configs = self.hpke_configs().await?;
        self.prepare_report_with_configs(&configs, measurement, time_seconds)
    }

    /// Makes one report sealed to the given configurations, without any network access. This is
    /// CPU work: from async code prefer [`Client::prepare_report`] or [`Client::upload`].
    pub fn prepare_report_with_configs(
        &self,
        configs: &HpkeConfigs,
        measurement: &Measurement,
        time_seconds: u64,
    ) -> Result<Report> {
        self.inner.preparer.prepare(configs, measurement, time_seconds)
    }

    /// Shards and seals `items` (index into the caller's list, measurement, time) on blocking
    /// threads, one slice per core, keeping their order.
    async fn prepare_many(
        &self,
        items: Vec<(usize, Measurement, u64)>,
        configs: HpkeConfigs,
    ) -> Result<Vec<(usize, Report)>> {
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let per_worker = items.len().div_ceil(workers).max(1);
        let configs = Arc::new(configs);
        let mut handles = Vec::new();
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let slice: Vec<_> = items.by_ref().take(per_worker).collect();
            let preparer = Arc::clone(&self.inner.preparer);
            let configs = Arc::clone(&configs);
            handles.push(tokio::task::spawn_blocking(move || {
                slice
                    .into_iter()
                    .map(|(i, m, t)| preparer.prepare(&configs, &m, t).map(|r| (i, r)))
                    .collect::<Result<Vec<_>>>()
            }));
        }
        let mut out = Vec::new();
        for handle in handles {
            out.extend(handle.await.map_err(|e| ClientError::Background(e.to_string()))??);
        }
        Ok(out)
    }

    /// Uploads one report per `(measurement, time_seconds)`.
    ///
    /// Reports go out in requests of `reports_per_request`; the next request's reports are
    /// sharded while the current one is in flight. Reports the leader refuses with
    /// `outdated_config` are made again, with a fresh report ID, for freshly fetched
    /// configurations and sent once more; any other refusal is final and listed in the outcome.
    pub async fn upload(&self, measurements: &[(Measurement, u64)]) -> Result<UploadOutcome> {
        self.upload_with_progress(measurements, &|_| {}).await
    }

    /// [`Client::upload`], calling `progress` with the number of reports answered so far after
    /// each request (for a progress bar).
    pub async fn upload_with_progress(
        &self,
        measurements: &[(Measurement, u64)],
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<UploadOutcome> {
        let mut outcome = UploadOutcome::default();
        if measurements.is_empty() {
            return Ok(outcome);
        }
        let config = self.inner.preparer.vdaf.config();
        for (i, (m, _)) in measurements.iter().enumerate() {
            check_measurement(config, m).map_err(|e| match e {
                ClientError::Measurement(VdafFailure::BadMeasurement(why)) => {
                    ClientError::Measurement(VdafFailure::BadMeasurement(format!("measurement {}: {why}", i + 1)))
                }
                other => other,
            })?;
        }
        let (configs, generation) = self.configs(false).await?;
        let per_request = self.inner.options.reports_per_request;
        let chunk_items = |start: usize| -> Vec<(usize, Measurement, u64)> {
            measurements
                .iter()
                .enumerate()
                .skip(start)
                .take(per_request)
                .map(|(i, (m, t))| (i, m.clone(), *t))
                .collect()
        };
        let spawn_chunk = |start: usize, configs: HpkeConfigs, generation: u64| {
            let client = self.clone();
            let items = chunk_items(start);
            tokio::spawn(async move { client.prepare_many(items, configs).await.map(|r| (r, generation)) })
        };

        let mut next = Some(spawn_chunk(0, configs, generation));
        let mut start = 0;
        while let Some(handle) = next.take() {
            let prepared = handle.await.map_err(|e| ClientError::Background(e.to_string()));
            let (reports, generation): PreparedChunk = prepared.and_then(|r| r).map_err(|e| partial(&outcome, e))?;
            let following = start + per_request;
            if following < measurements.len() {
                // Shard the next chunk with whatever configurations are current now.
                let (configs, generation) = self.configs(false).await.map_err(|e| partial(&outcome, e))?;
                next = Some(spawn_chunk(following, configs, generation));
            }
            let result = self.upload_chunk(measurements, reports, generation).await;
            match result {
                Ok(chunk_outcome) => {
                    outcome.absorb(chunk_outcome);
                    progress(outcome.accepted + outcome.rejected.len() as u64);
                }
                Err(e) => {
                    if let Some(h) = next.take() {
                        h.abort();
                    }
                    return Err(partial(&outcome, e));
                }
            }
            start = following;
        }
        tracing::info!(
            task_id = %self.task_id(),
            accepted = outcome.accepted,
            rejected = outcome.rejected.len(),
            "upload finished"
        );
        Ok(outcome)
    }

    /// Sends one chunk, then re-makes and re-sends its `outdated_config` reports once.
    async fn upload_chunk(
        &self,
        measurements: &[(Measurement, u64)],
        reports: Vec<(usize, Report)>,
        generation: u64,
    ) -> Result<UploadOutcome> {
        let (index_of, reports): (HashMap<ReportId, usize>, Vec<Report>) =
            reports.into_iter().map(|(i, r)| ((r.report_metadata.report_id, i), r)).unzip();
        let errors = self.send_reports(reports).await?;
        let sent = index_of.len() as u64;
        let mut outcome = UploadOutcome::default();
        let mut outdated = Vec::new();
        for (id, error) in errors {
            match (error, index_of.get(&id)) {
                (ReportError::OutdatedConfig, Some(&i)) => outdated.push(i),
                _ => outcome.rejected.push((id, error)),
            }
        }
        outcome.accepted = sent - outcome.rejected.len() as u64 - outdated.len() as u64;
        if outdated.is_empty() {
            return Ok(outcome);
        }
        // Reports sealed to a pair that has since been replaced only need re-making; otherwise
        // the cached pair itself is stale and must be fetched again.
        let current = self.lock_cache().generation;
        let (configs, _) = self.configs(current == generation).await?;
        tracing::info!(
            count = outdated.len(),
            "leader reported outdated HPKE configuration; retrying with fresh reports"
        );
        let items = outdated.into_iter().map(|i| (i, measurements[i].0.clone(), measurements[i].1)).collect();
        let retry: Vec<Report> = self.prepare_many(items, configs).await?.into_iter().map(|(_, r)| r).collect();
        let retried = retry.len() as u64;
        let errors = self.send_reports(retry).await?;
        outcome.accepted += retried - errors.len() as u64;
        outcome.rejected.extend(errors);
        Ok(outcome)
    }

    /// One `POST {leader}tasks/{task-id}/reports`: the refused reports with their errors (only
    /// IDs of reports that were sent, each once).
    async fn send_reports(&self, reports: Vec<Report>) -> Result<Vec<(ReportId, ReportError)>> {
        let sent: HashSet<ReportId> = reports.iter().map(|r| r.report_metadata.report_id).collect();
        let body = UploadRequest { reports }.get_encoded().map_err(ClientError::encode("UploadRequest"))?;
        let url = &self.inner.reports_url;
        let context = format!("POST {url}");
        tracing::debug!(reports = sent.len(), bytes = body.len(), "sending upload request");
        // The leader's upload handling is idempotent (DAP-18), so resending the same body is safe.
        let resp = http::send_with_retry(&self.retry_policy(), &context, || {
            self.inner.http.post(url.clone()).header(CONTENT_TYPE, media_type::UPLOAD_REQ).body(body.clone())
        })
        .await?;
        if !resp.status().is_success() {
            return Err(http::status_error(resp, &context).await);
        }
        let headers = resp.headers().clone();
        let body = http::read_body(resp, http::MAX_BODY, &context).await?;
        // An empty body means every report was accepted, whatever its Content-Type says.
        if body.is_empty() {
            return Ok(vec![]);
        }
        http::expect_media_type(&headers, media_type::UPLOAD_ERRORS, &context)?;
        let errors = UploadErrors::get_decoded(&body).map_err(ClientError::decode("UploadErrors"))?;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for status in errors.status {
            if !sent.contains(&status.id) || !seen.insert(status.id) {
                tracing::warn!(report_id = %status.id, "leader listed a report that was not in the request; ignored");
                continue;
            }
            out.push((status.id, status.error));
        }
        Ok(out)
    }
}

/// Wraps a failure after some reports already went through, so the caller learns both.
fn partial(outcome: &UploadOutcome, e: ClientError) -> ClientError {
    if outcome.accepted == 0 && outcome.rejected.is_empty() {
        e
    } else {
        ClientError::PartialUpload { accepted: outcome.accepted, rejected: outcome.rejected.len(), source: Box::new(e) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duet_common::hpke::HpkeKeypair;
    use duet_common::messages::{BatchMode, HpkeConfigId};
    use duet_common::vdaf::{AggregateResult, Transition, VerifyKey};

    pub(crate) fn task(vdaf: VdafConfig) -> TaskParameters {
        TaskParameters {
            task_id: TaskId::random(),
            task_info: "client test".into(),
            leader_endpoint: "https://leader.example/dap/".into(),
            helper_endpoint: "https://helper.example/dap/".into(),
            time_precision: 3600,
            min_batch_size: 1,
            batch_mode: BatchMode::TimeInterval,
            vdaf,
            task_interval_seconds: None,
            dp: None,
        }
    }

    /// Opens both input shares of `report` as the aggregators would, verifies them through both
    /// sides of Prio3's ping-pong, and returns the output shares accumulated into `aggs`.
    fn aggregate_report(
        params: &TaskParameters,
        leader_kp: &HpkeKeypair,
        helper_kp: &HpkeKeypair,
        key: &VerifyKey,
        report: &Report,
        aggs: &mut [duet_common::vdaf::AggregateShare; 2],
    ) {
        let config = params.task_configuration().unwrap();
        let aad = InputShareAad {
            task_id: params.task_id,
            task_configuration: config,
            report_metadata: report.report_metadata.clone(),
            public_share: report.public_share.clone(),
        }
        .get_encoded()
        .unwrap();
        let open = |kp: &HpkeKeypair, role: Role, ct| {
            let plain = hpke::open(kp, &HpkeApplicationInfo::InputShare { recipient: role }, ct, &aad).unwrap();
            let share = PlaintextInputShare::get_decoded(&plain).unwrap();
            assert!(share.private_extensions.is_empty());
            share.payload
        };
        let leader_share = open(leader_kp, Role::Leader, &report.leader_encrypted_input_share);
        let helper_share = open(helper_kp, Role::Helper, &report.helper_encrypted_input_share);
        // Each share is sealed for its own aggregator only.
        assert!(hpke::open(
            leader_kp,
            &HpkeApplicationInfo::InputShare { recipient: Role::Helper },
            &report.leader_encrypted_input_share,
            &aad
        )
        .is_err());

        let vdaf = Vdaf::new(&params.vdaf).unwrap();
        let ctx = vdaf_context(&params.task_id);
        let nonce = report.report_metadata.report_id.as_bytes();
        let (state, to_helper) = vdaf.leader_init(key, &ctx, nonce, &report.public_share, &leader_share).unwrap();
        let Transition::FinishedWithOutbound { out_share: helper_out, outbound } =
            vdaf.helper_init(key, &ctx, nonce, &report.public_share, &helper_share, &to_helper).unwrap()
        else {
            panic!("Prio3 helper finishes in one round")
        };
        let Transition::Finished { out_share: leader_out } = vdaf.leader_continued(&ctx, state, &outbound).unwrap()
        else {
            panic!("Prio3 leader finishes after the helper's message")
        };
        aggs[0].accumulate(&leader_out).unwrap();
        aggs[1].accumulate(&helper_out).unwrap();
    }

    fn keypairs() -> (HpkeKeypair, HpkeKeypair) {
        (
            HpkeKeypair::generate_default(HpkeConfigId(7)),
            HpkeKeypair::generate(
                HpkeConfigId(9),
                hpke::kem::P256_HKDF_SHA256,
                hpke::kdf::HKDF_SHA256,
                hpke::aead::CHACHA20_POLY1305,
            )
            .unwrap(),
        )
    }

    fn run(vdaf: VdafConfig, measurements: &[Measurement]) -> AggregateResult {
        let params = task(vdaf);
        let (leader_kp, helper_kp) = keypairs();
        let configs = HpkeConfigs { leader: leader_kp.config().clone(), helper: helper_kp.config().clone() };
        let client = Client::new(params.clone(), reqwest::Client::new()).unwrap();
        let v = Vdaf::new(&params.vdaf).unwrap();
        let mut aggs = [v.aggregate_init(), v.aggregate_init()];
        let key = VerifyKey::random();
        let mut ids = HashSet::new();
        for m in measurements {
            let report = client.prepare_report_with_configs(&configs, m, 1_700_000_123).unwrap();
            assert_eq!(report.report_metadata.time, Time::from_units(1_700_000_123 / 3600));
            assert!(report.report_metadata.public_extensions.is_empty());
            assert_eq!(report.leader_encrypted_input_share.config_id, HpkeConfigId(7));
            assert_eq!(report.helper_encrypted_input_share.config_id, HpkeConfigId(9));
            assert!(ids.insert(report.report_metadata.report_id), "report IDs must be fresh");
            // Through the wire encoding, as the leader will see it.
            let report = Report::get_decoded(&report.get_encoded().unwrap()).unwrap();
            aggregate_report(&params, &leader_kp, &helper_kp, &key, &report, &mut aggs);
        }
        v.unshard(&aggs[0], &aggs[1], measurements.len() as u64).unwrap()
    }

    #[test]
    fn prepared_reports_open_verify_and_unshard_to_the_measurements() {
        use Measurement as M;
        assert_eq!(
            run(VdafConfig::Prio3Count, &[M::Count(true), M::Count(true), M::Count(false)]),
            AggregateResult::Scalar(2)
        );
        assert_eq!(
            run(VdafConfig::Prio3Sum { max_measurement: 255 }, &[M::Sum(200), M::Sum(55)]),
            AggregateResult::Scalar(255)
        );
        assert_eq!(
            run(
                VdafConfig::Prio3Histogram { length: 4, chunk_length: 2 },
                &[M::Histogram(3), M::Histogram(0), M::Histogram(3)]
            ),
            AggregateResult::Vector(vec![1, 0, 0, 2])
        );
        assert_eq!(
            run(
                VdafConfig::Prio3SumVec { length: 3, max_measurement: 7, chunk_length: 2 },
                &[M::SumVec(vec![7, 0, 1]), M::SumVec(vec![1, 2, 3])]
            ),
            AggregateResult::Vector(vec![8, 2, 4])
        );
        assert_eq!(
            run(
                VdafConfig::Prio3MultihotCountVec { length: 3, chunk_length: 2, max_weight: 2 },
                &[M::MultihotCountVec(vec![true, false, true])]
            ),
            AggregateResult::Vector(vec![1, 0, 1])
        );
    }

    #[tokio::test]
    async fn prepare_report_uses_pinned_configs_and_binds_the_task() {
        let params = task(VdafConfig::Prio3Count);
        let (leader_kp, helper_kp) = keypairs();
        let configs = HpkeConfigs { leader: leader_kp.config().clone(), helper: helper_kp.config().clone() };
        // No server exists at the endpoints: pinned configurations need none.
        let client = Client::new(params.clone(), reqwest::Client::new()).unwrap().with_hpke_configs(configs.clone());
        assert_eq!(client.hpke_configs().await.unwrap(), configs);
        let report = client.prepare_report(&Measurement::Count(true), 7200).await.unwrap();
        let v = Vdaf::new(&params.vdaf).unwrap();
        let mut aggs = [v.aggregate_init(), v.aggregate_init()];
        aggregate_report(&params, &leader_kp, &helper_kp, &VerifyKey::random(), &report, &mut aggs);
        assert_eq!(v.unshard(&aggs[0], &aggs[1], 1).unwrap(), AggregateResult::Scalar(1));

        // Another task's configuration (here: another task_info) is bound into the AAD.
        let mut other = params.clone();
        other.task_info = "another task".into();
        let aad = InputShareAad {
            task_id: params.task_id,
            task_configuration: other.task_configuration().unwrap(),
            report_metadata: report.report_metadata.clone(),
            public_share: report.public_share.clone(),
        }
        .get_encoded()
        .unwrap();
        let info = HpkeApplicationInfo::InputShare { recipient: Role::Leader };
        assert!(hpke::open(&leader_kp, &info, &report.leader_encrypted_input_share, &aad).is_err());
    }

    #[test]
    fn invalid_measurements_are_input_errors() {
        let params = task(VdafConfig::Prio3Sum { max_measurement: 10 });
        let (leader_kp, helper_kp) = keypairs();
        let configs = HpkeConfigs { leader: leader_kp.config().clone(), helper: helper_kp.config().clone() };
        let client = Client::new(params, reqwest::Client::new()).unwrap();
        for m in [Measurement::Sum(11), Measurement::Count(true)] {
            let err = client.prepare_report_with_configs(&configs, &m, 0).unwrap_err();
            assert!(matches!(err, ClientError::Measurement(_)), "{err}");
            assert!(err.is_input_error());
        }
    }

    #[tokio::test]
    async fn measurements_are_checked_before_any_request() {
        use Measurement as M;
        let cases: [(VdafConfig, M, &str); 6] = [
            (VdafConfig::Prio3Sum { max_measurement: 10 }, M::Sum(11), "above the task's max_measurement 10"),
            (VdafConfig::Prio3Histogram { length: 4, chunk_length: 2 }, M::Histogram(4), "buckets 0 to 3"),
            (
                VdafConfig::Prio3SumVec { length: 2, max_measurement: 3, chunk_length: 1 },
                M::SumVec(vec![1]),
                "1 entries",
            ),
            (
                VdafConfig::Prio3SumVec { length: 2, max_measurement: 3, chunk_length: 1 },
                M::SumVec(vec![1, 4]),
                "entry 4",
            ),
            (
                VdafConfig::Prio3MultihotCountVec { length: 3, chunk_length: 1, max_weight: 1 },
                M::MultihotCountVec(vec![true, true, false]),
                "2 entries set",
            ),
            (VdafConfig::Prio3Count, M::Sum(1), "not a measurement for Prio3Count"),
        ];
        for (config, bad, why) in cases {
            let mut params = task(config.clone());
            // Nothing listens here: an attempted request would fail differently.
            params.leader_endpoint = "http://127.0.0.1:9/".into();
            let client = Client::new(params, reqwest::Client::new()).unwrap();
            let ok = match &config {
                VdafConfig::Prio3Count => M::Count(true),
                VdafConfig::Prio3Sum { .. } => M::Sum(10),
                VdafConfig::Prio3Histogram { .. } => M::Histogram(3),
                VdafConfig::Prio3SumVec { .. } => M::SumVec(vec![3, 0]),
                VdafConfig::Prio3MultihotCountVec { .. } => M::MultihotCountVec(vec![false, true, false]),
                #[cfg(feature = "test-vdaf")]
                VdafConfig::Dummy { .. } => M::Dummy(1),
            };
            assert!(check_measurement(&config, &ok).is_ok(), "{config}");
            let err = client.upload(&[(ok, 0), (bad, 0)]).await.unwrap_err();
            let msg = err.to_string();
            assert!(err.is_input_error(), "{msg}");
            assert!(msg.contains("measurement 2: ") && msg.contains(why), "{msg}");
        }
    }

    #[test]
    fn construction_checks_the_task() {
        let mut params = task(VdafConfig::Prio3Count);
        params.leader_endpoint = "ftp://leader.example/".into();
        assert!(matches!(Client::new(params, reqwest::Client::new()), Err(ClientError::Url { .. })));
        let mut params = task(VdafConfig::Prio3Count);
        params.task_info = String::new();
        assert!(matches!(Client::new(params, reqwest::Client::new()), Err(ClientError::Task(_))));
        let mut params = task(VdafConfig::Prio3Count);
        params.leader_endpoint = "https://leader.example/dap".into();
        let client = Client::new(params.clone(), reqwest::Client::new()).unwrap();
        assert_eq!(
            client.inner.reports_url.as_str(),
            format!("https://leader.example/dap/tasks/{}/reports", params.task_id)
        );
    }
}
