//! Crashes and outages with real processes: the leader SIGKILLed at a random moment (during
//! upload, job creation or aggregation, and again during collection) over 20 seeded runs, and the helper
//! unreachable for a while. After recovery every accepted report is aggregated exactly once.

use duet_client::collect::Collector;
use duet_client::upload::Client;
use duet_common::media_type;
use duet_common::messages::{BatchMode, Report, UploadRequest};
use duet_common::vdaf::{AggregateResult, Measurement, VdafConfig};
use duet_common::Encode;
use duet_tests::{past_hour, Deployment, LeaderOptions};
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

const REPORTS: usize = 120;
const PER_REQUEST: usize = 20;

/// Sends one upload request; `true` once the leader answered it.
async fn send(http: &reqwest::Client, url: &str, reports: &[Report]) -> bool {
    let body = UploadRequest { reports: reports.to_vec() }.get_encoded().unwrap();
    matches!(
        http.post(url).header("content-type", media_type::UPLOAD_REQ).body(body).send().await,
        Ok(r) if r.status() == 200
    )
}

async fn crash_run(seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut d = Deployment::start(LeaderOptions { max_job_size: 15, ..LeaderOptions::default() }).await;
    let task = d.create_task(VdafConfig::Prio3Count, BatchMode::TimeInterval, 10, None, None).await;
    let params = task.credentials.task.clone();
    let client = Client::new(params.clone(), d.http.clone()).unwrap();
    let configs = client.hpke_configs().await.unwrap();
    let time = past_hour();
    let reports: Vec<Report> = (0..REPORTS)
        .map(|_| client.prepare_report_with_configs(&configs, &Measurement::Count(true), time).unwrap())
        .collect();
    let url = format!("{}tasks/{}/reports", d.leader.url(), params.task_id);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();

    // Uploads go on in the background while the leader is killed at a random moment: during
    // the uploads, while jobs are created and driven, or while the collection runs.
    let kill_after = Duration::from_millis(rng.random_range(0..2500));
    let uploads = {
        let (http, url, reports) = (http.clone(), url.clone(), reports.clone());
        tokio::spawn(async move {
            let mut answered = Vec::new();
            for chunk in reports.chunks(PER_REQUEST) {
                answered.push(send(&http, &url, chunk).await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            answered
        })
    };
    let query = Collector::new(&task.credentials, d.http.clone()).unwrap().query(Some((time, 3600))).unwrap();
    let started = Instant::now();
    tokio::time::sleep(kill_after).await;
    d.crash_leader();
    let answered = uploads.await.unwrap();
    // A client re-sends what the crash left unanswered (a report stored before the crash is
    // then a replay, and must not count twice).
    for (chunk, ok) in reports.chunks(PER_REQUEST).zip(&answered) {
        if !ok {
            assert!(send(&http, &url, chunk).await, "seed {seed}: the restarted leader answers");
        }
    }
    // A second crash at a random moment once the collection has started: while the batch is
    // committed, the helper's share requested, or the result stored.
    let second_kill = Duration::from_millis(rng.random_range(0..1500));
    let collecting = {
        let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();
        tokio::spawn(async move { collector.collect(query, Duration::from_secs(120)).await })
    };
    tokio::time::sleep(second_kill).await;
    d.crash_leader();
    let result = collecting.await.unwrap().unwrap();
    assert_eq!(
        (result.report_count, result.result),
        (REPORTS as u64, AggregateResult::Scalar(REPORTS as u64)),
        "seed {seed}: killed after {kill_after:?}, then {second_kill:?} into the collection ({:?} in all)",
        started.elapsed()
    );
}

macro_rules! crash_seeds {
    ($($name:ident: $seeds:expr),*) => {$(
        #[tokio::test(flavor = "multi_thread")]
        async fn $name() {
            for seed in $seeds {
                crash_run(seed).await;
            }
        }
    )*};
}

// 20 seeded runs, in four tests so that they run in parallel.
crash_seeds!(
    leader_crashes_seeds_0_to_4: 0..5,
    leader_crashes_seeds_5_to_9: 5..10,
    leader_crashes_seeds_10_to_14: 10..15,
    leader_crashes_seeds_15_to_19: 15..20
);

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_helper_is_retried_until_it_returns() {
    let mut d = Deployment::start(LeaderOptions::default()).await;
    let task = d.create_task(VdafConfig::Prio3Count, BatchMode::TimeInterval, 10, None, None).await;
    let client = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
    client.hpke_configs().await.unwrap();
    d.kill_helper();
    let items: Vec<_> = (0..30).map(|i| (Measurement::Count(i % 2 == 0), past_hour())).collect();
    // The helper's HPKE configuration was fetched before it went away.
    assert_eq!(client.upload(&items).await.unwrap().accepted, 30);
    // Jobs fail against the missing helper and back off; then the helper comes back.
    tokio::time::sleep(Duration::from_secs(4)).await;
    d.start_helper_again();
    let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();
    let result = collector.collect(collector.query(Some((past_hour(), 3600))).unwrap(), Duration::from_secs(120)).await;
    let result = result.unwrap();
    assert_eq!((result.report_count, result.result), (30, AggregateResult::Scalar(15)));
    let db = d.leader_db().await;
    let abandoned: i64 = sqlx::Row::get(
        &sqlx::query("SELECT COUNT(*) FROM leader_aggregation_jobs WHERE state = 'abandoned'")
            .fetch_one(&db)
            .await
            .unwrap(),
        0,
    );
    assert_eq!(abandoned, 0, "retried, not abandoned");
}
