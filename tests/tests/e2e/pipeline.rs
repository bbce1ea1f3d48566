//! Upload, aggregate, collect end to end: duet-leader and duet-helper as separate processes on
//! loopback, the client SDK uploading, the collector SDK collecting; each collected result is
//! compared with the aggregate computed in the clear.

use duet_client::collect::Collector;
use duet_client::simulate::{clear_aggregate, random_measurement};
use duet_client::upload::Client;
use duet_common::hpke::{seal, HpkeApplicationInfo};
use duet_common::messages::*;
use duet_common::time::{Time, TimePrecision};
use duet_common::vdaf::{vdaf_context, AggregateResult, Measurement, Vdaf, VdafConfig};
use duet_common::Encode;
use duet_tests::{all_vdafs, past_hour, Deployment, LeaderOptions};
use sqlx::Row;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Runs a scenario as two tests: on SQLite files and on PostgreSQL databases.
macro_rules! on_both_backends {
    ($scenario:ident, $options:expr) => {
        mod $scenario {
            use super::*;
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() {
                super::$scenario($options).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() {
                super::$scenario(LeaderOptions { postgres: true, ..$options }).await
            }
        }
    };
}

const TIMEOUT: Duration = Duration::from_secs(120);

async fn every_prio3_variant_in_both_batch_modes(options: LeaderOptions) {
    let d = Deployment::start(options).await;
    let time = past_hour();
    let mut rng = rand::rng();
    for vdaf in all_vdafs() {
        // Time-interval: every report of the hour, in one batch.
        let task = d.create_task(vdaf.clone(), BatchMode::TimeInterval, 20, None, None).await;
        let measurements: Vec<Measurement> = (0..45).map(|_| random_measurement(&vdaf, &mut rng)).collect();
        let client = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
        let items: Vec<_> = measurements.iter().map(|m| (m.clone(), time + 7)).collect();
        let outcome = client.upload(&items).await.unwrap();
        assert_eq!((outcome.accepted, outcome.rejected.len()), (45, 0));
        let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();
        let query = collector.query(Some((time, 3600))).unwrap();
        let result = collector.collect(query, TIMEOUT).await.unwrap();
        assert_eq!(result.report_count, 45, "{vdaf}");
        assert_eq!(result.result, clear_aggregate(&vdaf, &measurements), "{vdaf}");
        assert_eq!(result.interval_seconds, (time, time + 3600));

        // Leader-selected: batches of 20 to 25 reports; 60 reports make two full batches and a
        // last one of 10, which is released once nothing is left to fill it.
        let task = d.create_task(vdaf.clone(), BatchMode::LeaderSelected, 10, Some(25), None).await;
        let measurements: Vec<Measurement> = (0..60).map(|_| random_measurement(&vdaf, &mut rng)).collect();
        let client = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
        let items: Vec<_> = measurements.iter().map(|m| (m.clone(), time + 60)).collect();
        assert_eq!(client.upload(&items).await.unwrap().accepted, 60);
        let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();
        let mut counts = Vec::new();
        let mut total: Option<AggregateResult> = None;
        for _ in 0..3 {
            let r = collector.collect(collector.query(None).unwrap(), TIMEOUT).await.unwrap();
            counts.push(r.report_count);
            total = Some(match (total, r.result) {
                (None, x) => x,
                (Some(AggregateResult::Scalar(a)), AggregateResult::Scalar(b)) => AggregateResult::Scalar(a + b),
                (Some(AggregateResult::Vector(a)), AggregateResult::Vector(b)) => {
                    AggregateResult::Vector(a.iter().zip(&b).map(|(x, y)| x + y).collect())
                }
                other => panic!("mixed results {other:?}"),
            });
        }
        counts.sort();
        assert_eq!(counts, vec![10, 25, 25], "{vdaf}");
        assert_eq!(total.unwrap(), clear_aggregate(&vdaf, &measurements), "{vdaf}");
        // Every batch is taken: a fourth collection finds nothing ready.
        let err = collector.collect(collector.query(None).unwrap(), Duration::from_secs(3)).await.unwrap_err();
        assert!(err.is_timeout(), "{err}");
    }
}

/// A report sealed by hand, so that it can be broken on purpose: `tamper` may change the
/// leader's and helper's plaintext input shares before encryption.
fn handmade_report(
    task: &duet_common::task::TaskParameters,
    leader_cfg: &HpkeConfig,
    helper_cfg: &HpkeConfig,
    measurement: &Measurement,
    time: u64,
    tamper: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>),
) -> Report {
    let vdaf = Vdaf::new(&task.vdaf).unwrap();
    let config_encoded = task.task_configuration().unwrap().get_encoded().unwrap();
    let precision = TimePrecision::from_seconds(task.time_precision).unwrap();
    let report_id = ReportId::random();
    let (public, [mut ls, mut hs]) =
        vdaf.shard(&vdaf_context(&task.task_id), measurement, report_id.as_bytes()).unwrap();
    tamper(&mut ls, &mut hs);
    let metadata = ReportMetadata { report_id, time: Time::from_seconds(time, precision), public_extensions: vec![] };
    let aad = InputShareAad::encode_parts(&task.task_id, &config_encoded, &metadata, &public).unwrap();
    let enc = |cfg: &HpkeConfig, role, payload| {
        let plain = PlaintextInputShare { private_extensions: vec![], payload }.get_encoded().unwrap();
        seal(cfg, &HpkeApplicationInfo::InputShare { recipient: role }, &plain, &aad).unwrap()
    };
    Report {
        leader_encrypted_input_share: enc(leader_cfg, Role::Leader, ls),
        helper_encrypted_input_share: enc(helper_cfg, Role::Helper, hs),
        report_metadata: metadata,
        public_share: public,
    }
}

async fn upload_raw(d: &Deployment, task: &TaskId, reports: Vec<Report>) -> Vec<ReportUploadStatus> {
    duet_tests::upload_raw(&d.http, &d.leader.url(), task, reports).await
}

/// Polls the leader's database until no report of the task waits for aggregation; returns the
/// stored `(state, report_error)` per report ID.
async fn settled_reports(d: &Deployment, task: &TaskId) -> std::collections::HashMap<ReportId, (String, Option<i64>)> {
    let db = d.leader_db().await;
    for _ in 0..600 {
        let rows =
            sqlx::query(duet_tests::REPORT_STATES_SQL).bind(task.as_bytes().as_slice()).fetch_all(&db).await.unwrap();
        let map: std::collections::HashMap<_, _> = rows
            .iter()
            .map(|r| {
                let id: Vec<u8> = r.get(0);
                (ReportId::try_from(id.as_slice()).unwrap(), (r.get::<String, _>(1), r.get::<Option<i64>, _>(2)))
            })
            .collect();
        if map.values().all(|(s, _)| s == "aggregated" || s == "failed") {
            return map;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("reports of task {task} were not aggregated in time");
}

async fn invalid_reports_are_left_out_with_their_report_error(options: LeaderOptions) {
    let d = Deployment::start(options).await;
    let vdaf = VdafConfig::Prio3Histogram { length: 4, chunk_length: 2 };
    let task = d.create_task(vdaf.clone(), BatchMode::TimeInterval, 5, None, None).await;
    let params = task.credentials.task.clone();
    let client = Client::new(params.clone(), d.http.clone()).unwrap();
    let configs = client.hpke_configs().await.unwrap();
    let time = past_hour() + 100;
    let good: Vec<Measurement> = (0..8).map(|i| Measurement::Histogram(i % 4)).collect();
    let mut reports: Vec<Report> =
        good.iter().map(|m| handmade_report(&params, &configs.leader, &configs.helper, m, time, |_, _| {})).collect();
    // A bad proof: the leader's measurement share is changed after sharding.
    let bad_proof = handmade_report(&params, &configs.leader, &configs.helper, &good[0], time, |l, _| l[0] ^= 1);
    // The helper's share sealed to a configuration the helper does not have.
    let mut unknown = configs.helper.clone();
    unknown.id = HpkeConfigId(configs.helper.id.0.wrapping_add(9));
    let bad_helper_key = {
        let kp = duet_common::hpke::HpkeKeypair::generate_default(unknown.id);
        handmade_report(&params, &configs.leader, kp.config(), &good[1], time, |_, _| {})
    };
    // The leader's share sealed to an unknown leader configuration: refused at upload.
    let mut stale = configs.leader.clone();
    stale.id = HpkeConfigId(configs.leader.id.0.wrapping_add(9));
    let outdated = handmade_report(&params, &stale, &configs.helper, &good[2], time, |_, _| {});
    // A report from tomorrow: too early.
    let future = handmade_report(&params, &configs.leader, &configs.helper, &good[3], time + 2 * 86400, |_, _| {});
    reports.extend([bad_proof.clone(), bad_helper_key.clone(), outdated.clone(), future.clone()]);
    let errors = upload_raw(&d, &params.task_id, reports.clone()).await;
    let id = |r: &Report| r.report_metadata.report_id;
    assert_eq!(
        errors,
        vec![
            ReportUploadStatus { id: id(&outdated), error: ReportError::OutdatedConfig },
            ReportUploadStatus { id: id(&future), error: ReportError::ReportTooEarly },
        ]
    );
    // A replay of an accepted report, in a later request.
    let errors = upload_raw(&d, &params.task_id, vec![reports[0].clone()]).await;
    assert_eq!(errors, vec![ReportUploadStatus { id: id(&reports[0]), error: ReportError::ReportReplayed }]);

    let stored = settled_reports(&d, &params.task_id).await;
    assert_eq!(stored.len(), 10, "the two refused at upload are not stored");
    assert_eq!(stored[&id(&bad_proof)], ("failed".into(), Some(ReportError::VdafVerifyError as i64)));
    assert_eq!(stored[&id(&bad_helper_key)], ("failed".into(), Some(ReportError::HpkeDecryptError as i64)));
    assert_eq!(stored.values().filter(|(s, e)| s == "aggregated" && e.is_none()).count(), 8);

    let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();
    let result = collector.collect(collector.query(Some((past_hour(), 3600))).unwrap(), TIMEOUT).await.unwrap();
    assert_eq!(result.report_count, 8);
    assert_eq!(result.result, clear_aggregate(&vdaf, &good));
}

async fn a_batch_below_min_batch_size_waits_for_more_reports(options: LeaderOptions) {
    let d = Deployment::start(options).await;
    let vdaf = VdafConfig::Prio3Sum { max_measurement: 10 };
    let task = d.create_task(vdaf.clone(), BatchMode::TimeInterval, 20, None, None).await;
    let client = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
    let time = past_hour();
    let first: Vec<_> = (0..12).map(|i| (Measurement::Sum(i % 10), time + 5)).collect();
    assert_eq!(client.upload(&first).await.unwrap().accepted, 12);
    settled_reports(&d, &task.credentials.task.task_id).await;

    let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();
    let job = collector.start(collector.query(Some((time, 3600))).unwrap()).await.unwrap();
    // All 12 reports are aggregated, yet the job stays pending: nothing is released.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(collector.poll(&job).await.unwrap().is_none());
    }
    let second: Vec<_> = (0..8).map(|i| (Measurement::Sum(i), time + 50)).collect();
    assert_eq!(client.upload(&second).await.unwrap().accepted, 8);
    let mut result = None;
    for _ in 0..300 {
        if let Some(r) = collector.poll(&job).await.unwrap() {
            result = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let result = result.expect("the job completes once the batch is large enough");
    assert_eq!(result.report_count, 20);
    let all: Vec<Measurement> = first.iter().chain(&second).map(|(m, _)| m.clone()).collect();
    assert_eq!(result.result, clear_aggregate(&vdaf, &all));
}

async fn collection_rules_repeat_overlap_and_late_reports(options: LeaderOptions) {
    let d = Deployment::start(options).await;
    let vdaf = VdafConfig::Prio3Count;
    let task = d.create_task(vdaf.clone(), BatchMode::TimeInterval, 3, None, None).await;
    let client = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
    let time = past_hour();
    let items: Vec<_> = (0..6).map(|i| (Measurement::Count(i % 2 == 0), time + 1)).collect();
    client.upload(&items).await.unwrap();
    let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();
    let query = collector.query(Some((time, 3600))).unwrap();
    let first = collector.collect(query, TIMEOUT).await.unwrap();
    assert_eq!((first.report_count, first.result.clone()), (6, AggregateResult::Scalar(3)));

    // A report for the collected hour is refused; the repeated query returns the same result.
    let late = client.upload(&[(Measurement::Count(true), time + 2)]).await.unwrap();
    assert_eq!(late.rejected.iter().map(|r| r.1).collect::<Vec<_>>(), vec![ReportError::ReportReplayed]);
    let again = collector.collect(query, TIMEOUT).await.unwrap();
    assert_eq!(again, first);

    // Any other query touching the collected hour is a batchOverlap.
    let wider = collector.query(Some((time, 7200))).unwrap();
    let err = collector.collect(wider, TIMEOUT).await.unwrap_err();
    assert!(err.to_string().contains("batchOverlap"), "{err}");
}

async fn nothing_is_lost_when_both_servers_restart(options: LeaderOptions) {
    let mut d = Deployment::start(options).await;
    let vdaf = VdafConfig::Prio3SumVec { length: 3, max_measurement: 5, chunk_length: 2 };
    let task = d.create_task(vdaf.clone(), BatchMode::TimeInterval, 10, None, None).await;
    let client = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
    let time = past_hour();
    let mut rng = rand::rng();
    let measurements: Vec<Measurement> = (0..60).map(|_| random_measurement(&vdaf, &mut rng)).collect();
    let items: Vec<_> = measurements.iter().map(|m| (m.clone(), time + 30)).collect();
    assert_eq!(client.upload(&items).await.unwrap().accepted, 60);
    // Stop both between upload and collection (aggregation may be anywhere in between).
    d.restart();
    let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();
    let result = collector.collect(collector.query(Some((time, 3600))).unwrap(), TIMEOUT).await.unwrap();
    assert_eq!(result.report_count, 60);
    assert_eq!(result.result, clear_aggregate(&vdaf, &measurements));
    // And once more after collection: the finished job survives too.
    d.restart();
    let again = collector.collect(collector.query(Some((time, 3600))).unwrap(), TIMEOUT).await.unwrap();
    assert_eq!(again, result);
}

/// A proxy in front of the helper that turns its answers to resource creation (aggregation
/// jobs, aggregate shares) into asynchronous ones: an empty body, a Location and a Retry-After,
/// so that the leader must poll with GET. It counts the deferrals and the polls.
#[derive(Clone)]
struct AsyncProxy {
    helper: String,
    http: reqwest::Client,
    deferred: Arc<AtomicUsize>,
    polls: Arc<AtomicUsize>,
}

async fn async_proxy(
    axum::extract::State(p): axum::extract::State<AsyncProxy>,
    req: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = format!("{}{}", p.helper.trim_end_matches('/'), path);
    let mut fwd = p.http.request(parts.method.clone(), &url).body(body.to_vec());
    for name in ["authorization", "dap-auth-token", "content-type"] {
        if let Some(v) = parts.headers.get(name) {
            fwd = fwd.header(name, v.as_bytes());
        }
    }
    let resp = fwd.send().await.unwrap();
    let status = resp.status().as_u16();
    let location = resp.headers().get("location").map(|v| v.to_str().unwrap().to_string());
    let content_type = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    let bytes = resp.bytes().await.unwrap();
    let creation = parts.method == axum::http::Method::POST
        && (parts.uri.path().ends_with("/aggregation_jobs") || parts.uri.path().ends_with("/aggregate_shares"));
    let mut out = axum::response::Response::builder().status(status);
    if creation && (200..300).contains(&status) {
        p.deferred.fetch_add(1, Ordering::SeqCst);
        let mut loc = location.unwrap();
        if parts.uri.path().ends_with("/aggregation_jobs") {
            loc.push_str("?step=0");
        }
        return out.header("location", loc).header("retry-after", "1").body(axum::body::Body::empty()).unwrap();
    }
    if parts.method == axum::http::Method::GET {
        p.polls.fetch_add(1, Ordering::SeqCst);
    }
    if let Some(l) = location {
        out = out.header("location", l);
    }
    if let Some(c) = content_type {
        out = out.header("content-type", c);
    }
    out.body(axum::body::Body::from(bytes)).unwrap()
}

async fn an_asynchronous_helper_is_polled_until_ready(options: LeaderOptions) {
    let d = Deployment::start(options).await;
    let proxy = AsyncProxy {
        helper: d.helper.url(),
        http: reqwest::Client::new(),
        deferred: Arc::default(),
        polls: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}/", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(async_proxy).with_state(proxy.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let vdaf = VdafConfig::Prio3Histogram { length: 5, chunk_length: 2 };
    let task = d.create_task(vdaf.clone(), BatchMode::LeaderSelected, 20, Some(30), Some(proxy_url)).await;
    let client = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
    let mut rng = rand::rng();
    let measurements: Vec<Measurement> = (0..30).map(|_| random_measurement(&vdaf, &mut rng)).collect();
    let items: Vec<_> = measurements.iter().map(|m| (m.clone(), past_hour())).collect();
    assert_eq!(client.upload(&items).await.unwrap().accepted, 30);
    let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();
    let result = collector.collect(collector.query(None).unwrap(), TIMEOUT).await.unwrap();
    assert_eq!(result.report_count, 30);
    assert_eq!(result.result, clear_aggregate(&vdaf, &measurements));
    // Three aggregation jobs of 10 and one aggregate share, each answered by polling.
    assert_eq!(proxy.deferred.load(Ordering::SeqCst), 4);
    assert!(proxy.polls.load(Ordering::SeqCst) >= 4);
}

on_both_backends!(
    every_prio3_variant_in_both_batch_modes,
    LeaderOptions { max_job_size: 16, ..LeaderOptions::default() }
);
on_both_backends!(invalid_reports_are_left_out_with_their_report_error, LeaderOptions::default());
on_both_backends!(a_batch_below_min_batch_size_waits_for_more_reports, LeaderOptions::default());
on_both_backends!(collection_rules_repeat_overlap_and_late_reports, LeaderOptions::default());
on_both_backends!(
    nothing_is_lost_when_both_servers_restart,
    LeaderOptions { max_job_size: 10, ..LeaderOptions::default() }
);
on_both_backends!(
    an_asynchronous_helper_is_polled_until_ready,
    LeaderOptions { max_job_size: 10, lease_seconds: 30, ..LeaderOptions::default() }
);
