//! `duet demo`: the whole product in one command. It starts `duet-leader` and `duet-helper` as
//! separate processes on SQLite files in a temporary folder, provisions a Prio3Histogram task
//! through their admin APIs, uploads simulated reports as clients would, collects the histogram
//! as the collector, and shows it beside the histogram computed in the clear.

use crate::process::{sibling_binary, Output, ServerProcess};
use duet_client::admin::{provision_task, AdminClient, NewTask};
use duet_client::collect::Collector;
use duet_client::format::privacy_line;
use duet_client::simulate::{clear_aggregate, default_chunk_length, random_measurement};
use duet_client::timefmt::rfc3339;
use duet_client::upload::{Client, ClientOptions};
use duet_common::auth::AuthenticationToken;
use duet_common::messages::{BatchMode, TaskId};
use duet_common::task::TaskParameters;
use duet_common::vdaf::{AggregateResult, Measurement, VdafConfig};
use std::fmt::Write;
use std::time::{Duration, Instant};

/// What the demo runs.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub reports: usize,
    pub buckets: u32,
    pub min_batch_size: u64,
    /// Show the servers' logs on standard error.
    pub server_logs: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self { reports: 10_000, buckets: 10, min_batch_size: 100, server_logs: false }
    }
}

fn step(text: &str) {
    eprintln!("==> {text}");
}

/// Runs the demo; returns the report to print (the servers are stopped before it returns).
pub async fn run(options: &DemoOptions) -> Result<String, String> {
    if options.reports == 0 || options.buckets < 2 {
        return Err("the demo needs at least one report and two buckets".into());
    }
    let leader_bin = sibling_binary("duet-leader")?;
    let helper_bin = sibling_binary("duet-helper")?;
    let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temporary folder: {e}"))?;
    let db = |name: &str| format!("sqlite:{}", dir.path().join(name).display());
    let (leader_admin, helper_admin) = (AuthenticationToken::random(), AuthenticationToken::random());
    let output = |name: &str| if options.server_logs { Output::Prefixed(name.into()) } else { Output::Discard };
    let log_level = if options.server_logs { "info" } else { "warn" };

    step(&format!("starting duet-helper and duet-leader (SQLite in {})", dir.path().display()));
    let database_key = crate::process::database_key();
    let start = |bin: &std::path::Path, name: &str, db_name: &str, token: &AuthenticationToken| {
        let args = ["--listen", "127.0.0.1:0", "--database", &db(db_name)].map(String::from);
        let env =
            [("DUET_ADMIN_TOKEN", token.expose()), ("DUET_DATABASE_KEYS", &database_key), ("RUST_LOG", log_level)];
        ServerProcess::spawn(bin, &args, &env, output(name))
    };
    let mut helper = start(&helper_bin, "duet-helper", "helper.db", &helper_admin)?;
    let mut leader = start(&leader_bin, "duet-leader", "leader.db", &leader_admin)?;
    eprintln!("    helper pid {} at {}", helper.pid(), helper.url());
    eprintln!("    leader pid {} at {}", leader.pid(), leader.url());

    let result = run_with(options, &leader, &helper, &leader_admin, &helper_admin).await;
    step("stopping the servers");
    leader.terminate(Duration::from_secs(30));
    helper.terminate(Duration::from_secs(30));
    result
}

async fn run_with(
    options: &DemoOptions,
    leader: &ServerProcess,
    helper: &ServerProcess,
    leader_admin: &AuthenticationToken,
    helper_admin: &AuthenticationToken,
) -> Result<String, String> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().map_err(|e| e.to_string())?;
    let vdaf = VdafConfig::Prio3Histogram {
        length: options.buckets,
        chunk_length: default_chunk_length(options.buckets.into()),
    };
    let precision = 3600;
    let params = TaskParameters {
        task_id: TaskId::random(),
        task_info: "duet demo: simulated page load times".into(),
        leader_endpoint: leader.url(),
        helper_endpoint: helper.url(),
        time_precision: precision,
        min_batch_size: options.min_batch_size,
        batch_mode: BatchMode::TimeInterval,
        vdaf: vdaf.clone(),
        task_interval_seconds: None,
        dp: None,
    };
    step(&format!(
        "provisioning task {} (Prio3Histogram, {} buckets) on both aggregators",
        params.task_id, options.buckets
    ));
    let task = NewTask::generate(params.clone(), None);
    let leader_client =
        AdminClient::new(http.clone(), &leader.url(), leader_admin.clone()).map_err(|e| e.to_string())?;
    let helper_client =
        AdminClient::new(http.clone(), &helper.url(), helper_admin.clone()).map_err(|e| e.to_string())?;
    provision_task(&leader_client, &task.leader_request, &helper_client, &task.helper_request)
        .await
        .map_err(|e| e.to_string())?;

    let now = duet_client::timefmt::now_seconds();
    // Every report in the current time unit, so that one batch interval holds them all.
    let report_time = now - now % precision;
    let mut rng = rand::rng();
    let measurements: Vec<Measurement> = (0..options.reports).map(|_| random_measurement(&vdaf, &mut rng)).collect();
    step(&format!("{} simulated clients shard, encrypt and upload their measurements", options.reports));
    let client =
        Client::with_options(params.clone(), http.clone(), ClientOptions::default()).map_err(|e| e.to_string())?;
    let items: Vec<(Measurement, u64)> = measurements.iter().map(|m| (m.clone(), report_time)).collect();
    let started = Instant::now();
    let outcome = client.upload(&items).await.map_err(|e| e.to_string())?;
    let upload_secs = started.elapsed().as_secs_f64();
    if !outcome.rejected.is_empty() {
        return Err(format!("the leader rejected {} reports", outcome.rejected.len()));
    }
    eprintln!("    {} reports accepted in {upload_secs:.1} s", outcome.accepted);

    step("collecting the histogram (the leader and helper verify and aggregate meanwhile)");
    let collector = Collector::new(&task.credentials, http).map_err(|e| e.to_string())?;
    let query = collector.query(Some((report_time, precision))).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let result = collector.collect(query, Duration::from_secs(600)).await.map_err(|e| e.to_string())?;
    let collect_secs = started.elapsed().as_secs_f64();

    let clear = clear_aggregate(&vdaf, &measurements);
    let (AggregateResult::Vector(collected), AggregateResult::Vector(truth)) = (&result.result, &clear) else {
        return Err("a histogram result was expected".into());
    };
    let mut out = String::new();
    let _ = writeln!(out);
    let _ = writeln!(out, "duet demo: {} reports, Prio3Histogram with {} buckets", options.reports, options.buckets);
    let _ = writeln!(out, "  task       {}", params.task_id);
    let _ =
        writeln!(out, "  interval   {} to {}", rfc3339(result.interval_seconds.0), rfc3339(result.interval_seconds.1));
    let _ = writeln!(out, "  upload     {upload_secs:.1} s ({:.0} reports/s)", options.reports as f64 / upload_secs);
    let _ = writeln!(out, "  collection {collect_secs:.1} s after the last upload (aggregation included)");
    let _ = writeln!(out);
    let _ = writeln!(out, "  bucket   collected   in the clear");
    let max = collected.iter().copied().max().unwrap_or(1).max(1);
    for (i, (c, t)) in collected.iter().zip(truth).enumerate() {
        let bar = "#".repeat(((*c * 30) / max) as usize);
        let mark = if c == t { "" } else { "  MISMATCH" };
        let _ = writeln!(out, "  {i:>6}   {c:>9}   {t:>12}  {bar}{mark}");
    }
    let total: u128 = collected.iter().sum();
    let _ = writeln!(out, "  {:>6}   {total:>9}   {:>12}", "total", truth.iter().sum::<u128>());
    let _ = writeln!(out);
    let verdict = if result.report_count == options.reports as u64 && collected == truth {
        "The collected histogram equals the one computed in the clear."
    } else {
        "MISMATCH: the collected histogram differs from the one computed in the clear."
    };
    let _ = writeln!(out, "Reports in the batch: {}. {verdict}", result.report_count);
    let _ = writeln!(out, "{}", privacy_line(&result.guarantee));
    if verdict.starts_with("MISMATCH") {
        return Err(out);
    }
    Ok(out)
}
