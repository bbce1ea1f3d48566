//! `duet bench`: how close a leader and a helper come to the CPU floor of DAP. For each backend
//! (SQLite, PostgreSQL) and VDAF (Prio3Count, Prio3Histogram with 100 buckets) it starts
//! `duet-leader` and `duet-helper` as separate processes on loopback, uploads N reports made
//! beforehand (so that the clients' sharding does not count), lets the pair aggregate them,
//! collects the batch, and prints: upload ingest, aggregation throughput, collection latency,
//! each server's peak memory, and the aggregation throughput as a share of the floor.
//!
//! The floor is what no implementation can avoid per report: both HPKE opens and both
//! aggregators' Prio3 verification, measured here with the same `hpke` and `prio` calls on one
//! core, then scaled to the machine's cores (leader and helper share them).
//!
//! The phases are kept apart so that each figure measures one thing: the leader runs with its
//! job creator asleep while reports are uploaded, and is restarted with it awake to aggregate.

use crate::process::{sibling_binary, Output, ServerProcess};
use duet_client::collect::Collector;
use duet_client::simulate::{clear_aggregate, random_measurement};
use duet_client::upload::{Client, HpkeConfigs};
use duet_common::auth::AuthenticationToken;
use duet_common::hpke::{open, HpkeApplicationInfo, HpkeKeypair};
use duet_common::media_type;
use duet_common::messages::*;
use duet_common::task::TaskParameters;
use duet_common::vdaf::{vdaf_context, Measurement, Transition, VdafConfig, VerifyKey};
use duet_common::{Decode, Encode};
use std::fmt::Write;
use std::time::{Duration, Instant};

/// Which database the servers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchBackend {
    Sqlite,
    Postgres,
}

/// What `duet bench` runs.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub reports: usize,
    pub backends: Vec<BenchBackend>,
    pub vdafs: Vec<VdafConfig>,
    /// A PostgreSQL database the bench may create databases from (it creates one per server and
    /// drops it afterwards).
    pub postgres_url: String,
    pub reports_per_request: usize,
    /// Upload requests in flight at once.
    pub upload_concurrency: usize,
    /// Extra arguments for both servers (tuning experiments).
    pub leader_args: Vec<String>,
    pub helper_args: Vec<String>,
    pub server_logs: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            reports: 100_000,
            backends: vec![BenchBackend::Sqlite, BenchBackend::Postgres],
            vdafs: vec![VdafConfig::Prio3Count, VdafConfig::Prio3Histogram { length: 100, chunk_length: 10 }],
            postgres_url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            reports_per_request: 1000,
            upload_concurrency: 8,
            leader_args: Vec::new(),
            helper_args: Vec::new(),
            server_logs: false,
        }
    }
}

/// The figures of one run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchFigures {
    pub backend: String,
    pub vdaf: String,
    pub reports: usize,
    pub upload_reports_per_second: f64,
    pub aggregation_reports_per_second: f64,
    pub collection_seconds: f64,
    /// The floor on one core, reports per second: the mean of the measurements right before
    /// and right after the run.
    pub floor_single_core: f64,
    pub floor_single_core_before: f64,
    pub floor_single_core_after: f64,
    pub cores: usize,
    /// Aggregation throughput over the floor scaled to the cores.
    pub floor_ratio: f64,
    /// Peak resident memory (VmHWM): heap and stacks plus the pages of mapped files (SQLite
    /// maps its database file, so these pages are page cache the kernel can reclaim).
    pub leader_peak_rss_mib: Option<f64>,
    pub helper_peak_rss_mib: Option<f64>,
    /// Peak anonymous memory (RssAnon, sampled every 50 ms): what the process itself holds.
    pub leader_peak_anon_mib: Option<f64>,
    pub helper_peak_anon_mib: Option<f64>,
}

impl BenchFigures {
    fn set_floor(&mut self, before: f64, after: f64) {
        self.floor_single_core_before = before;
        self.floor_single_core_after = after;
        self.floor_single_core = (before + after) / 2.0;
        self.floor_ratio = self.aggregation_reports_per_second / (self.floor_single_core * self.cores as f64);
    }
}

fn step(text: &str) {
    eprintln!("==> {text}");
}

/// Runs every combination; returns the table to print and the figures.
pub async fn run(options: &BenchOptions) -> Result<(String, Vec<BenchFigures>), String> {
    if options.reports == 0 || options.reports_per_request == 0 || options.upload_concurrency == 0 {
        return Err("--reports, --reports-per-request and --upload-concurrency must be at least 1".into());
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut figures = Vec::new();
    let measure_floor = |vdaf: &VdafConfig| -> Result<f64, String> {
        step(&format!("measuring the floor for {vdaf}: both HPKE opens and both aggregators' verification, one core"));
        let floor = floor_single_core(vdaf)?;
        eprintln!("    {floor:.0} reports/s on one core, {:.0} on {cores}", floor * cores as f64);
        Ok(floor)
    };
    for vdaf in &options.vdafs {
        for backend in &options.backends {
            // Measured before and after each run, and the mean taken: on a shared machine the
            // speed of the cores drifts by tens of percent within minutes, and a floor measured
            // once, minutes away from a run, would make its ratio say more of the machine than
            // of the run.
            let before = measure_floor(vdaf)?;
            let mut f = run_one(options, *backend, vdaf, cores).await?;
            let after = measure_floor(vdaf)?;
            f.set_floor(before, after);
            eprintln!(
                "    upload {:.0}/s, aggregation {:.0}/s ({:.0}% of the floor), collection {:.2} s",
                f.upload_reports_per_second,
                f.aggregation_reports_per_second,
                f.floor_ratio * 100.0,
                f.collection_seconds
            );
            figures.push(f);
        }
    }
    Ok((table(&figures), figures))
}

/// The figures as a table for people.
pub fn table(figures: &[BenchFigures]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:<14} {:>8} {:>9} {:>11} {:>9} {:>6} {:>10} {:>17} {:>17}",
        "backend",
        "vdaf",
        "reports",
        "upload/s",
        "aggregate/s",
        "floor/s",
        "ratio",
        "collection",
        "leader anon/RSS",
        "helper anon/RSS"
    );
    let mib = |anon: Option<f64>, rss: Option<f64>| {
        let f = |m: Option<f64>| m.map(|m| format!("{m:.0}")).unwrap_or_else(|| "n/a".into());
        format!("{}/{} MiB", f(anon), f(rss))
    };
    for f in figures {
        let _ = writeln!(
            out,
            "{:<8} {:<14} {:>8} {:>9.0} {:>11.0} {:>9.0} {:>5.0}% {:>8.2} s {:>17} {:>17}",
            f.backend,
            short_vdaf(&f.vdaf),
            f.reports,
            f.upload_reports_per_second,
            f.aggregation_reports_per_second,
            f.floor_single_core * f.cores as f64,
            f.floor_ratio * 100.0,
            f.collection_seconds,
            mib(f.leader_peak_anon_mib, f.leader_peak_rss_mib),
            mib(f.helper_peak_anon_mib, f.helper_peak_rss_mib)
        );
    }
    let _ = writeln!(
        out,
        "floor/s: both HPKE opens and both aggregators' Prio3 verification per report, measured on one core right \
         before and right after the run (the mean) and multiplied by the {} cores the two servers share; \
         ratio = aggregate/s over floor/s.\n\
         anon/RSS: peak anonymous memory (sampled) and peak resident memory, which also counts the \
         pages of the SQLite file the server maps.",
        figures.first().map(|f| f.cores).unwrap_or(1)
    );
    out
}

/// A VDAF's name short enough for the table.
fn short_vdaf(name: &str) -> String {
    name.replace("Prio3Histogram(length=", "Histogram(").replace(", chunk_length=", "/").replace("Prio3Count", "Count")
}

/// Reports per second one core can take through the unavoidable work: the leader's and the
/// helper's HPKE open, and Prio3 verification on both sides (leader init, helper init, leader
/// finish), as the servers call it.
pub fn floor_single_core(vdaf: &VdafConfig) -> Result<f64, String> {
    let leader = HpkeKeypair::generate_default(HpkeConfigId(1));
    let helper = HpkeKeypair::generate_default(HpkeConfigId(2));
    let configs = HpkeConfigs { leader: leader.config().clone(), helper: helper.config().clone() };
    let params = bench_params(vdaf.clone(), "http://leader.invalid/".into(), "http://helper.invalid/".into());
    let client = Client::new(params.clone(), reqwest::Client::new()).map_err(|e| e.to_string())?;
    let task_config =
        params.task_configuration().map_err(|e| e.to_string())?.get_encoded().map_err(|e| e.to_string())?;
    let vdaf_impl = duet_common::vdaf::Vdaf::new(vdaf).map_err(|e| e.to_string())?;
    let verify_key = VerifyKey::random();
    let ctx = vdaf_context(&params.task_id);
    let mut rng = rand::rng();
    let now = duet_client::timefmt::now_seconds();
    let sample = |n: usize, rng: &mut rand::rngs::ThreadRng| -> Result<Vec<Report>, String> {
        (0..n)
            .map(|_| client.prepare_report_with_configs(&configs, &random_measurement(vdaf, rng), now))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())
    };
    let verify = |report: &Report| -> Result<(), String> {
        let aad =
            InputShareAad::encode_parts(&params.task_id, &task_config, &report.report_metadata, &report.public_share)
                .map_err(|e| e.to_string())?;
        let nonce = report.report_metadata.report_id.as_bytes();
        let share = |kp: &HpkeKeypair, role: Role, ct: &HpkeCiphertext| -> Result<Vec<u8>, String> {
            let plain =
                open(kp, &HpkeApplicationInfo::InputShare { recipient: role }, ct, &aad).map_err(|e| e.to_string())?;
            Ok(PlaintextInputShare::get_decoded(&plain).map_err(|e| e.to_string())?.payload)
        };
        let leader_share = share(&leader, Role::Leader, &report.leader_encrypted_input_share)?;
        let helper_share = share(&helper, Role::Helper, &report.helper_encrypted_input_share)?;
        let (state, msg) = vdaf_impl
            .leader_init(&verify_key, &ctx, nonce, &report.public_share, &leader_share)
            .map_err(|e| e.to_string())?;
        let Transition::FinishedWithOutbound { outbound, .. } = vdaf_impl
            .helper_init(&verify_key, &ctx, nonce, &report.public_share, &helper_share, &msg)
            .map_err(|e| e.to_string())?
        else {
            return Err("a Prio3 helper finishes at once".into());
        };
        match vdaf_impl.leader_continued(&ctx, state, &outbound).map_err(|e| e.to_string())? {
            Transition::Finished { .. } => Ok(()),
            _ => Err("a Prio3 leader finishes on the helper's message".into()),
        }
    };
    // Warm up, then time enough reports for a second or so of work.
    for r in sample(20, &mut rng)? {
        verify(&r)?;
    }
    let probe = sample(50, &mut rng)?;
    let started = Instant::now();
    for r in &probe {
        verify(r)?;
    }
    let per_report = started.elapsed().as_secs_f64() / probe.len() as f64;
    let n = ((1.5 / per_report) as usize).clamp(200, 20_000);
    let reports = sample(n, &mut rng)?;
    let started = Instant::now();
    for r in &reports {
        verify(r)?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

fn bench_params(vdaf: VdafConfig, leader: String, helper: String) -> TaskParameters {
    TaskParameters {
        task_id: TaskId::random(),
        task_info: "duet bench".into(),
        leader_endpoint: leader,
        helper_endpoint: helper,
        time_precision: 3600,
        min_batch_size: 100,
        batch_mode: BatchMode::TimeInterval,
        vdaf,
        task_interval_seconds: None,
        dp: None,
    }
}

/// A field of /proc/PID/status in MiB (`VmHWM`, `RssAnon`, ...), where /proc tells it.
fn proc_status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn peak_rss_mib(pid: u32) -> Option<f64> {
    proc_status_mib(pid, "VmHWM")
}

/// Samples the servers' anonymous memory every 50 ms on a thread of its own and keeps each
/// role's peak. The leader's PID changes when it is restarted: `watch` takes the new one.
struct AnonSampler {
    pids: std::sync::Arc<std::sync::Mutex<[Option<u32>; 2]>>,
    peaks: std::sync::Arc<std::sync::Mutex<[Option<f64>; 2]>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AnonSampler {
    fn start() -> Self {
        use std::sync::atomic::Ordering;
        let pids = std::sync::Arc::new(std::sync::Mutex::new([None, None]));
        let peaks = std::sync::Arc::new(std::sync::Mutex::new([None, None]));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, k, s) = (pids.clone(), peaks.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let current = *p.lock().unwrap_or_else(|e| e.into_inner());
                for (i, pid) in current.iter().enumerate() {
                    if let Some(m) = pid.and_then(|pid| proc_status_mib(pid, "RssAnon")) {
                        let mut peaks = k.lock().unwrap_or_else(|e| e.into_inner());
                        peaks[i] = Some(peaks[i].map_or(m, |old: f64| old.max(m)));
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self { pids, peaks, stop, thread: Some(thread) }
    }

    /// Watches `pid` as the leader (0) or the helper (1).
    fn watch(&self, which: usize, pid: u32) {
        self.pids.lock().unwrap_or_else(|e| e.into_inner())[which] = Some(pid);
    }

    fn finish(mut self) -> [Option<f64>; 2] {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        *self.peaks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One server's database, dropped (PostgreSQL) or removed (SQLite) when this value is.
struct BenchDatabase {
    url: String,
    pg: Option<(String, String)>,
}

impl BenchDatabase {
    async fn create(backend: BenchBackend, dir: &std::path::Path, name: &str, admin: &str) -> Result<Self, String> {
        match backend {
            BenchBackend::Sqlite => {
                Ok(Self { url: format!("sqlite:{}", dir.join(format!("{name}.db")).display()), pg: None })
            }
            BenchBackend::Postgres => {
                use sqlx::{Connection, Executor};
                let db = format!("duet_bench_{name}_{}", &TaskId::random().to_string()[..8].to_lowercase());
                let db: String = db.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
                let mut conn = sqlx::PgConnection::connect(admin)
                    .await
                    .map_err(|e| format!("PostgreSQL at {}: {e}", duet_common::auth::redact_url(admin)))?;
                conn.execute(format!("CREATE DATABASE {db}").as_str()).await.map_err(|e| e.to_string())?;
                let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap_or_else(|| admin.to_string());
                let base = base.split('?').next().unwrap_or(&base).to_string();
                Ok(Self { url: format!("{base}/{db}"), pg: Some((admin.to_string(), db)) })
            }
        }
    }

    async fn drop_database(&self) {
        use sqlx::{Connection, Executor};
        if let Some((admin, db)) = &self.pg {
            if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
                let _ = conn.execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str()).await;
            }
        }
    }
}

async fn run_one(
    options: &BenchOptions,
    backend: BenchBackend,
    vdaf: &VdafConfig,
    cores: usize,
) -> Result<BenchFigures, String> {
    let backend_name = match backend {
        BenchBackend::Sqlite => "sqlite",
        BenchBackend::Postgres => "postgres",
    };
    step(&format!("{backend_name}, {vdaf}, {} reports", options.reports));
    let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temporary folder: {e}"))?;
    let leader_db = BenchDatabase::create(backend, dir.path(), "leader", &options.postgres_url).await?;
    let helper_db = BenchDatabase::create(backend, dir.path(), "helper", &options.postgres_url).await?;
    let result = run_with_databases(options, backend_name, vdaf, cores, &leader_db.url, &helper_db.url).await;
    leader_db.drop_database().await;
    helper_db.drop_database().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn run_with_databases(
    options: &BenchOptions,
    backend_name: &str,
    vdaf: &VdafConfig,
    cores: usize,
    leader_db: &str,
    helper_db: &str,
) -> Result<BenchFigures, String> {
    let (leader_bin, helper_bin) = (sibling_binary("duet-leader")?, sibling_binary("duet-helper")?);
    let (leader_admin, helper_admin) = (AuthenticationToken::random(), AuthenticationToken::random());
    let output = |name: &str| if options.server_logs { Output::Prefixed(name.into()) } else { Output::Discard };
    let log = if options.server_logs { "info" } else { "warn" };
    let database_key = crate::process::database_key();
    let spawn = |bin: &std::path::Path, name: &str, args: Vec<String>, token: &AuthenticationToken, listen: &str| {
        let mut all = vec!["--listen".to_string(), listen.to_string(), "--metrics-listen".into(), "127.0.0.1:0".into()];
        all.extend(args);
        let env = [("DUET_ADMIN_TOKEN", token.expose()), ("DUET_DATABASE_KEYS", &database_key), ("RUST_LOG", log)];
        ServerProcess::spawn(bin, &all, &env, output(name))
    };
    let mut helper_args = vec!["--database".to_string(), helper_db.to_string()];
    helper_args.extend(options.helper_args.iter().cloned());
    let mut helper = spawn(&helper_bin, "duet-helper", helper_args, &helper_admin, "127.0.0.1:0")?;
    let sampler = AnonSampler::start();
    sampler.watch(1, helper.pid());
    let leader_args = |creator_ms: &str| {
        let mut a =
            vec!["--database".to_string(), leader_db.to_string(), "--creator-interval-ms".into(), creator_ms.into()];
        a.extend(options.leader_args.iter().cloned());
        a
    };
    // Phase 1: the job creator asleep, so that the upload figure is ingest alone.
    let mut leader = spawn(&leader_bin, "duet-leader", leader_args("86400000"), &leader_admin, "127.0.0.1:0")?;
    sampler.watch(0, leader.pid());

    let http = reqwest::Client::builder().timeout(Duration::from_secs(300)).build().map_err(|e| e.to_string())?;
    let params = bench_params(vdaf.clone(), leader.url(), helper.url());
    let task = duet_client::admin::NewTask::generate(params.clone(), None);
    let la = duet_client::admin::AdminClient::new(http.clone(), &leader.url(), leader_admin.clone())
        .map_err(|e| e.to_string())?;
    let ha = duet_client::admin::AdminClient::new(http.clone(), &helper.url(), helper_admin.clone())
        .map_err(|e| e.to_string())?;
    duet_client::admin::provision_task(&la, &task.leader_request, &ha, &task.helper_request)
        .await
        .map_err(|e| e.to_string())?;

    // The clients' work, done beforehand on every core.
    let client = Client::new(params.clone(), http.clone()).map_err(|e| e.to_string())?;
    let configs = client.hpke_configs().await.map_err(|e| e.to_string())?;
    let now = duet_client::timefmt::now_seconds();
    let report_time = now - now % 3600;
    let started = Instant::now();
    let (bodies, measurements) = prepare(&client, &configs, vdaf, options, report_time)?;
    eprintln!("    {} reports sharded and encrypted in {:.1} s", options.reports, started.elapsed().as_secs_f64());

    let upload_url = format!("{}tasks/{}/reports", leader.url(), params.task_id);
    let started = Instant::now();
    upload_all(&http, &upload_url, bodies, options.upload_concurrency).await?;
    let upload_secs = started.elapsed().as_secs_f64();

    // Phase 2: the same leader (database, port) with its job creator awake.
    let mut leader_peak = peak_rss_mib(leader.pid());
    let addr = leader.addr.to_string();
    leader.terminate(Duration::from_secs(40));
    let restarted = Instant::now();
    leader = spawn(&leader_bin, "duet-leader", leader_args("100"), &leader_admin, &addr)?;
    sampler.watch(0, leader.pid());
    let metrics_url = format!("http://{}/metrics", leader.metrics_addr.ok_or("the leader has no metrics listener")?);
    let mut first_job: Option<Instant> = None;
    let total = options.reports as f64;
    let deadline = Instant::now() + Duration::from_secs(3600);
    let finished = loop {
        let text =
            http.get(&metrics_url).send().await.map_err(|e| e.to_string())?.text().await.map_err(|e| e.to_string())?;
        let created = sample(&text, "duet_aggregation_jobs_total", &[("outcome", "created")]);
        if first_job.is_none() && created > 0.0 {
            first_job = Some(Instant::now());
        }
        let done =
            sample(&text, "duet_reports_aggregated_total", &[]) + sample(&text, "duet_reports_failed_total", &[]);
        if done >= total {
            break Instant::now();
        }
        if Instant::now() > deadline {
            return Err(format!("aggregation did not finish within an hour ({done} of {total})"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let first_job = first_job.unwrap_or(restarted);
    let aggregation_secs = finished.duration_since(first_job).as_secs_f64().max(1e-3);

    let collector = Collector::new(&task.credentials, http.clone()).map_err(|e| e.to_string())?;
    let query = collector.query(Some((report_time, 3600))).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let result = collector.collect(query, Duration::from_secs(600)).await.map_err(|e| e.to_string())?;
    let collection_secs = started.elapsed().as_secs_f64();
    let clear = clear_aggregate(vdaf, &measurements);
    if result.report_count != options.reports as u64 || result.result != clear {
        return Err(format!(
            "the collected result ({} reports) differs from the aggregate in the clear ({} reports)",
            result.report_count, options.reports
        ));
    }

    leader_peak = match (leader_peak, peak_rss_mib(leader.pid())) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let helper_peak = peak_rss_mib(helper.pid());
    let [leader_anon, helper_anon] = sampler.finish();
    leader.terminate(Duration::from_secs(40));
    helper.terminate(Duration::from_secs(40));
    let aggregation = total / aggregation_secs;
    Ok(BenchFigures {
        backend: backend_name.into(),
        vdaf: vdaf.to_string(),
        reports: options.reports,
        upload_reports_per_second: total / upload_secs,
        aggregation_reports_per_second: aggregation,
        collection_seconds: collection_secs,
        // Set by the caller, which measures the floor around the run.
        floor_single_core: 0.0,
        floor_single_core_before: 0.0,
        floor_single_core_after: 0.0,
        cores,
        floor_ratio: 0.0,
        leader_peak_rss_mib: leader_peak,
        helper_peak_rss_mib: helper_peak,
        leader_peak_anon_mib: leader_anon,
        helper_peak_anon_mib: helper_anon,
    })
}

/// Shards and encrypts the measurements on every core into encoded `UploadRequest`s.
fn prepare(
    client: &Client,
    configs: &HpkeConfigs,
    vdaf: &VdafConfig,
    options: &BenchOptions,
    time: u64,
) -> Result<(Vec<Vec<u8>>, Vec<Measurement>), String> {
    let mut rng = rand::rng();
    let measurements: Vec<Measurement> = (0..options.reports).map(|_| random_measurement(vdaf, &mut rng)).collect();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let chunks: Vec<&[Measurement]> = measurements.chunks(options.reports_per_request).collect();
    let per_thread = chunks.len().div_ceil(threads);
    let bodies: Result<Vec<Vec<Vec<u8>>>, String> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .chunks(per_thread.max(1))
            .map(|mine| {
                scope.spawn(move || {
                    mine.iter()
                        .map(|chunk| {
                            let reports = chunk
                                .iter()
                                .map(|m| client.prepare_report_with_configs(configs, m, time))
                                .collect::<Result<Vec<_>, _>>()
                                .map_err(|e| e.to_string())?;
                            UploadRequest { reports }.get_encoded().map_err(|e| e.to_string())
                        })
                        .collect::<Result<Vec<_>, String>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().map_err(|_| "a sharding thread panicked".to_string())?).collect()
    });
    Ok((bodies?.into_iter().flatten().collect(), measurements))
}

/// Uploads every body with `concurrency` requests in flight; every report must be accepted.
async fn upload_all(http: &reqwest::Client, url: &str, bodies: Vec<Vec<u8>>, concurrency: usize) -> Result<(), String> {
    let queue = std::sync::Arc::new(std::sync::Mutex::new(bodies));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (queue, http, url) = (queue.clone(), http.clone(), url.to_string());
        tasks.spawn(async move {
            loop {
                let Some(body) = queue.lock().map_err(|_| "queue poisoned".to_string())?.pop() else {
                    return Ok::<(), String>(());
                };
                let resp = http
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, media_type::UPLOAD_REQ)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| format!("upload: {e}"))?;
                let status = resp.status();
                let answer = resp.bytes().await.map_err(|e| format!("upload: {e}"))?;
                if !status.is_success() || !answer.is_empty() {
                    let detail = UploadErrors::get_decoded(&answer)
                        .map(|e| format!("{} reports rejected, e.g. {:?}", e.status.len(), e.status.first()))
                        .unwrap_or_else(|_| String::from_utf8_lossy(&answer).into_owned());
                    return Err(format!("upload answered {status}: {detail}"));
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// The sum of a Prometheus metric's samples whose labels include all of `labels` (`None` when
/// no series matches), read from a text exposition.
pub fn metric_sum(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let values: Vec<f64> = exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let wanted = metric == name
                && labels.iter().all(|(k, v)| label_text.split(',').any(|p| p == format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(exposition, name, labels).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_summed_over_matching_series() {
        let text = "# HELP x\nduet_reports_failed_total{role=\"leader\",reason=\"a\"} 2\n\
                    duet_reports_failed_total{role=\"leader\",reason=\"b\"} 3\n\
                    duet_reports_failed_total{role=\"helper\",reason=\"b\"} 7\nother 1\n";
        assert_eq!(sample(text, "duet_reports_failed_total", &[]), 12.0);
        assert_eq!(sample(text, "duet_reports_failed_total", &[("role", "leader")]), 5.0);
        assert_eq!(sample(text, "duet_reports_failed_total", &[("reason", "b"), ("role", "helper")]), 7.0);
        assert_eq!(sample(text, "missing", &[]), 0.0);
    }

    #[test]
    fn the_floor_is_measured() {
        let floor = floor_single_core(&VdafConfig::Prio3Count).unwrap();
        assert!(floor > 10.0, "{floor}");
    }
}
