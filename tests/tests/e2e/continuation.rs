//! Aggregation jobs of more than one step (DAP-18 "Aggregate Continuation") between real
//! servers, with the test build's multi-round VDAF (Prio3 verifies in one step, so it never
//! continues): the exactly-once window of continuation requests. The helper handles a step, and
//! then the step in which it commits the output shares, and each one's answer is lost, again and
//! again, and the leader is killed between steps; the leader sends the byte-identical request
//! again (from what it stored, in a new process), the helper answers from what it stored, and
//! every report is counted once.

use duet_client::collect::Collector;
use duet_client::upload::Client;
use duet_common::messages::BatchMode;
use duet_common::vdaf::{AggregateResult, Measurement, VdafConfig};
use duet_tests::relay::{Fault, Relay};
use duet_tests::{past_hour, Deployment, LeaderOptions};
use sqlx::Row;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A continuation request's line: `POST /tasks/{task}/aggregation_jobs/{job}` (an
/// initialisation goes to `.../aggregation_jobs`, without the job).
const CONTINUATION: &str = "/aggregation_jobs/";

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(90), "{what} within 90 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Collects the hour at `time`: `n` reports adding up to `expected`.
async fn collect_exactly(
    d: &Deployment,
    task: &duet_client::admin::NewTask,
    time: u64,
    n: u64,
    expected: u64,
) -> duet_client::collect::CollectionResult {
    let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();
    let query = collector.query(Some((time, 3600))).unwrap();
    let result = collector.collect(query, Duration::from_secs(120)).await.unwrap();
    assert_eq!((result.report_count, &result.result), (n, &AggregateResult::Scalar(expected)));
    result
}

async fn continuation_answers_lost(postgres: bool) {
    const N: u64 = 600;
    // Four rounds take two continuation steps; the helper commits in the second.
    const ROUNDS: u32 = 4;
    let options = LeaderOptions {
        max_job_size: 100,
        postgres,
        leader_args: vec!["--max-retry-delay-seconds".into(), "2".into()],
        ..LeaderOptions::default()
    };
    let mut d = Deployment::start(options).await;
    let relay = Relay::start("127.0.0.1:0".parse().unwrap(), d.helper.addr).await;
    let vdaf = VdafConfig::Dummy { rounds: ROUNDS };
    let task = d.create_task(vdaf, BatchMode::TimeInterval, 100, None, Some(relay.url())).await;
    let client = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
    let time = past_hour();
    let values: Vec<u8> = (0..N).map(|i| (i * 37 % 251) as u8).collect();
    // The test VDAF adds modulo 256.
    let expected = values.iter().map(|v| u64::from(*v)).sum::<u64>() % 256;

    relay.set(Fault::DropAnswersTo(CONTINUATION, None)).await;
    let measurements: Vec<(Measurement, u64)> = values.iter().map(|v| (Measurement::Dummy(*v), time)).collect();
    let uploaded = client.upload(&measurements).await.unwrap();
    assert_eq!((uploaded.accepted, uploaded.rejected.len()), (N, 0), "every report accepted");
    let dropped = || relay.counts().dropped_answers.load(Ordering::Relaxed);
    // Each job's first continuation is handled by the helper, which commits it, and its answer
    // lost; the leader sends it again, and loses the answer again.
    wait_for("continuation answers dropped", || dropped() >= 12).await;
    let leader_url = d.leader_db_url();
    let leader_count = |sql: &'static str| duet_tests::count_rows(&leader_url, sql);
    let steps = leader_count("SELECT COUNT(*) FROM leader_aggregation_jobs WHERE state = 'active' AND step = 1").await;
    assert!(steps >= 1, "jobs rest at step 1 with their states stored ({steps})");
    let kept = leader_count("SELECT COUNT(*) FROM leader_report_verifications").await;
    assert!(kept >= 100, "the leader keeps the reports' states between steps ({kept})");

    // A new leader process picks the jobs up at the step they rest at, from the database only.
    d.crash_leader();
    let before = dropped();
    wait_for("the restarted leader's continuations", || dropped() >= before + 6).await;

    // The answers to step 1 pass; those to step 2, in which the helper commits the jobs' output
    // shares, are lost, again and again.
    relay.set(Fault::DropAnswersTo(CONTINUATION, Some(2))).await;
    let before = dropped();
    wait_for("answers to the committing step dropped", || dropped() >= before + 12).await;
    let committed = duet_tests::count_rows(
        &d.helper_db_url(),
        "SELECT COUNT(*) FROM helper_aggregation_jobs WHERE state = 'finished'",
    )
    .await;
    let waiting =
        leader_count("SELECT COUNT(*) FROM leader_aggregation_jobs WHERE state = 'active' AND step = 2").await;
    assert!(committed >= 1, "the helper committed jobs whose answers were lost ({committed})");
    assert!(waiting >= 1, "the leader waits at step 2 for their answers ({waiting})");
    relay.set(Fault::None).await;
    d.wait_aggregated().await;

    let result = collect_exactly(&d, &task, time, N, expected).await;

    let db = d.leader_db().await;
    let one = |sql: &'static str| {
        let db = db.clone();
        async move { sqlx::query(sql).fetch_one(&db).await.unwrap().get::<i64, _>(0) }
    };
    let abandoned = one("SELECT COUNT(*) FROM leader_aggregation_jobs WHERE state = 'abandoned'").await;
    let failed = one("SELECT COUNT(*) FROM client_reports WHERE state = 'failed'").await;
    assert_eq!((abandoned, failed), (0, 0), "no job abandoned, no report lost");
    let not_at_last_step = one("SELECT COUNT(*) FROM leader_aggregation_jobs WHERE step <> 2").await;
    assert_eq!(not_at_last_step, 0, "every job finished after two continuation steps");
    assert_eq!(one("SELECT COUNT(*) FROM leader_report_verifications").await, 0, "nothing kept after commit");
    println!(
        "| {} | continuation answers dropped: {} | leader killed between steps | {N} reports | counted {} |",
        if postgres { "PostgreSQL" } else { "SQLite" },
        dropped(),
        result.report_count
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_continuation_answers_are_asked_for_again_sqlite() {
    continuation_answers_lost(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_continuation_answers_are_asked_for_again_postgres() {
    continuation_answers_lost(true).await;
}

/// The helper answers every step asynchronously (a queue threshold of 0): the leader polls each
/// initialization and each continuation to its end, and every report is counted once.
async fn every_step_deferred(postgres: bool) {
    const N: u64 = 300;
    let options = LeaderOptions {
        max_job_size: 100,
        postgres,
        helper_args: vec!["--async-queue-threshold".into(), "0".into()],
        lease_seconds: 30,
        ..LeaderOptions::default()
    };
    let d = Deployment::start(options).await;
    let task = d.create_task(VdafConfig::Dummy { rounds: 4 }, BatchMode::TimeInterval, 100, None, None).await;
    let client = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
    let time = past_hour();
    let values: Vec<u8> = (0..N).map(|i| (i * 53 % 256) as u8).collect();
    let expected = values.iter().map(|v| u64::from(*v)).sum::<u64>() % 256;
    let measurements: Vec<(Measurement, u64)> = values.iter().map(|v| (Measurement::Dummy(*v), time)).collect();
    assert_eq!(client.upload(&measurements).await.unwrap().accepted, N);
    d.wait_aggregated().await;
    collect_exactly(&d, &task, time, N, expected).await;

    let db = d.leader_db().await;
    let jobs: Vec<(String, i64)> = sqlx::query("SELECT state, step FROM leader_aggregation_jobs")
        .fetch_all(&db)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(jobs, vec![("finished".to_string(), 2); 3], "three jobs, each finished after two continuations");
    let helper_metrics = duet_tests::ops_get(&d.helper, "/metrics").await.1;
    let deferred = duet_tests::metric(
        &helper_metrics,
        "duet_aggregation_jobs_total",
        &[("role", "helper"), ("outcome", "deferred")],
    );
    assert_eq!(deferred, Some(9.0), "each job's initialization and two continuations deferred");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_step_answered_asynchronously_is_polled_to_the_end_sqlite() {
    every_step_deferred(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_step_answered_asynchronously_is_polled_to_the_end_postgres() {
    every_step_deferred(true).await;
}
