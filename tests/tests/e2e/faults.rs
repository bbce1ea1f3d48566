//! Crashes and outages with real processes: the leader SIGKILLed at a random moment (during
//! upload, job creation or aggregation, and again during collection) over 20 seeded runs; the
//! helper killed for a while; and, through a faulty relay on the path between leader and helper,
//! a helper that answers 503 for minutes, refuses connections, whose answers are lost, or behind
//! a slow path that resets connections, on both backends. After recovery every accepted report
//! is aggregated exactly once and no job is abandoned.

use duet_cli::process::{sibling_binary, Output, ServerProcess};
use duet_client::admin::{provision_task, AdminClient, NewTask};
use duet_client::collect::Collector;
use duet_client::upload::Client;
use duet_common::auth::AuthenticationToken;
use duet_common::media_type;
use duet_common::messages::{
    AggregationJobInitReq, AggregationJobResp, BatchMode, Report, UploadRequest, VerifyResp, VerifyRespType,
};
use duet_common::problem::DapProblemType;
use duet_common::task::TaskParameters;
use duet_common::vdaf::{AggregateResult, Measurement, VdafConfig};
use duet_common::{Decode, Encode};
use duet_tests::relay::{Fault, Relay};
use duet_tests::{count_task, metric, ops_get, past_hour, Deployment, LeaderOptions};
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
        // Attempts enough to outlast the leader's restart on a loaded machine.
        let options = duet_client::collect::CollectorOptions { max_attempts: 20, ..Default::default() };
        let collector = Collector::with_options(&task.credentials, d.http.clone(), options).unwrap();
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

/// A fault between leader and helper, during aggregation and again during collection: every
/// report is counted exactly once, the batch is collectable, no job is abandoned. Prints a row
/// of the table in the issue's closing note.
async fn helper_fault(postgres: bool, fault: Fault, during_aggregation: Duration, during_collection: Duration) {
    const N: u64 = 2000;
    // Small jobs on the flaky path, so that there are a few hundred requests to reset 5% of.
    let options = LeaderOptions {
        max_job_size: if matches!(fault, Fault::Flaky { .. }) { 10 } else { 250 },
        postgres,
        // A short cap, so that the jobs notice the helper's return within seconds.
        leader_args: vec!["--max-retry-delay-seconds".into(), "4".into()],
        ..LeaderOptions::default()
    };
    let d = Deployment::start(options).await;
    let relay = Relay::start("127.0.0.1:0".parse().unwrap(), d.helper.addr).await;
    let vdaf = VdafConfig::Prio3Sum { max_measurement: 255 };
    let task = d.create_task(vdaf, BatchMode::TimeInterval, 100, None, Some(relay.url())).await;
    let client = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
    let configs = client.hpke_configs().await.unwrap();
    let time = past_hour();
    let values: Vec<u64> = (0..N).map(|i| (i * 37) % 256).collect();
    let expected: u64 = values.iter().sum();
    let reports: Vec<Report> = values
        .iter()
        .map(|v| client.prepare_report_with_configs(&configs, &Measurement::Sum(*v), time).unwrap())
        .collect();
    let url = format!("{}tasks/{}/reports", d.leader.url(), task.credentials.task.task_id);

    // Aggregation under the fault: the reports are uploaded, then jobs meet the fault.
    relay.set(fault).await;
    for chunk in reports.chunks(100) {
        assert!(send(&d.http, &url, chunk).await, "{fault:?}: the leader takes uploads while the helper is away");
    }
    let started = Instant::now();
    tokio::time::sleep(during_aggregation).await;
    let leader_metrics = ops_get(&d.leader, "/metrics").await.1;
    if fault != Fault::None && !matches!(fault, Fault::Flaky { .. }) {
        // Nothing got through: every job waits on the helper, none was abandoned.
        let waiting = metric(&leader_metrics, "duet_jobs_waiting_on_helper", &[("kind", "aggregation")]);
        assert!(waiting.is_some_and(|w| w >= 1.0), "{fault:?}: jobs wait on the helper ({waiting:?})");
        let age = metric(&leader_metrics, "duet_oldest_unaggregated_report_age_seconds", &[]).unwrap();
        assert!(age >= during_aggregation.as_secs_f64() - 2.0, "{fault:?}: the oldest report waits ({age} s)");
    }
    let reason = match fault {
        Fault::Unavailable(_) => Some("server_error"),
        Fault::TooManyRequests(_) => Some("overloaded"),
        Fault::Refuse => Some("connect"),
        Fault::DropAnswers => Some("connection"),
        _ => None,
    };
    if let Some(reason) = reason {
        let retries =
            metric(&leader_metrics, "duet_helper_retries_total", &[("step", "aggregation_job"), ("reason", reason)]);
        assert!(retries.is_some_and(|r| r >= 2.0), "{fault:?}: retries for {reason}: {retries:?}");
    }
    relay.set(Fault::None).await;
    d.wait_aggregated().await;
    let aggregation_time = started.elapsed();

    // Collection under the fault.
    relay.set(fault).await;
    let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();
    let query = collector.query(Some((time, 3600))).unwrap();
    let collecting = tokio::spawn(async move { collector.collect(query, Duration::from_secs(600)).await });
    tokio::time::sleep(during_collection).await;
    if let Some(reason) = reason {
        let leader_metrics = ops_get(&d.leader, "/metrics").await.1;
        let retries =
            metric(&leader_metrics, "duet_helper_retries_total", &[("step", "aggregate_share"), ("reason", reason)]);
        assert!(retries.is_some_and(|r| r >= 1.0), "{fault:?}: aggregate share retries for {reason}: {retries:?}");
        assert!(!collecting.is_finished(), "{fault:?}: no result while the helper is away");
    }
    relay.set(Fault::None).await;
    let result = collecting.await.unwrap().unwrap();
    assert_eq!((result.report_count, result.result), (N, AggregateResult::Scalar(expected)), "{fault:?}");

    let db = d.leader_db().await;
    let count = |sql: &'static str| {
        let db = db.clone();
        async move { sqlx::Row::get::<i64, _>(&sqlx::query(sql).fetch_one(&db).await.unwrap(), 0) }
    };
    let abandoned = count("SELECT COUNT(*) FROM leader_aggregation_jobs WHERE state = 'abandoned'").await;
    let failed = count("SELECT COUNT(*) FROM client_reports WHERE state = 'failed'").await;
    assert_eq!((abandoned, failed), (0, 0), "{fault:?}: no job abandoned, no report lost");
    let c = relay.counts();
    if matches!(fault, Fault::Flaky { .. }) {
        // Over 200 requests at 5% each: no reset at all has a chance of 0.95^200, about 4e-5.
        assert!(c.resets.load(std::sync::atomic::Ordering::Relaxed) >= 1, "connections were reset");
    }
    println!(
        "| {} | {fault:?} | {} s + {} s | {N} | {} | {abandoned} | 503 or 429 answers {}, dropped answers {}, resets {}, aggregated after {:.0} s |",
        if postgres { "PostgreSQL" } else { "SQLite" },
        during_aggregation.as_secs(),
        during_collection.as_secs(),
        result.report_count,
        c.unavailable_answers.load(std::sync::atomic::Ordering::Relaxed),
        c.dropped_answers.load(std::sync::atomic::Ordering::Relaxed),
        c.resets.load(std::sync::atomic::Ordering::Relaxed),
        aggregation_time.as_secs_f64(),
    );
}

/// 200 ms added each way, and 5% of the requests' connections reset.
fn flaky() -> Fault {
    Fault::Flaky { base: Duration::from_millis(200), spread: Duration::ZERO, reset_ratio: 0.05 }
}

// Three minutes of 503s during aggregation, and 45 s more during collection.
#[tokio::test(flavor = "multi_thread")]
async fn a_helper_answering_503_for_minutes_sqlite() {
    helper_fault(false, Fault::Unavailable(1), Duration::from_secs(180), Duration::from_secs(45)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_helper_answering_503_for_minutes_postgres() {
    helper_fault(true, Fault::Unavailable(1), Duration::from_secs(180), Duration::from_secs(45)).await;
}

// 429 with `Retry-After` as an HTTP date.
#[tokio::test(flavor = "multi_thread")]
async fn a_helper_answering_429_with_a_date_to_retry_after_sqlite() {
    helper_fault(false, Fault::TooManyRequests(1), Duration::from_secs(20), Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_helper_answering_429_with_a_date_to_retry_after_postgres() {
    helper_fault(true, Fault::TooManyRequests(1), Duration::from_secs(20), Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_helper_refusing_connections_sqlite() {
    helper_fault(false, Fault::Refuse, Duration::from_secs(20), Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_helper_refusing_connections_postgres() {
    helper_fault(true, Fault::Refuse, Duration::from_secs(20), Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_helper_whose_answers_are_lost_sqlite() {
    helper_fault(false, Fault::DropAnswers, Duration::from_secs(20), Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_helper_whose_answers_are_lost_postgres() {
    helper_fault(true, Fault::DropAnswers, Duration::from_secs(20), Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_path_that_resets_connections_sqlite() {
    helper_fault(false, flaky(), Duration::from_secs(20), Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_path_that_resets_connections_postgres() {
    helper_fault(true, flaky(), Duration::from_secs(20), Duration::from_secs(15)).await;
}

/// Two hosts made of network namespaces, each joined to this one by a veth pair: the leader's
/// (`10.N.1.2`, this side `10.N.1.1`) and the helper's (`10.N.2.2`, this side `10.N.2.1`). No
/// route joins the two hosts: what passes between them goes through a relay on this side.
struct TwoHosts {
    id: u32,
    subnet: u32,
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip").args(args).output().expect("ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl TwoHosts {
    fn create() -> Self {
        let id = std::process::id() % 100_000;
        let subnet = 100 + id % 100;
        let hosts = Self { id, subnet };
        for (host, net) in [("l", 1), ("h", 2)] {
            let ns = hosts.namespace(host);
            let (outer, inner) = (format!("d{host}{id}a"), format!("d{host}{id}b"));
            ip(&["netns", "add", &ns]);
            ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner]);
            ip(&["link", "set", &inner, "netns", &ns]);
            ip(&["addr", "add", &format!("10.{subnet}.{net}.1/24"), "dev", &outer]);
            ip(&["link", "set", &outer, "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("10.{subnet}.{net}.2/24"), "dev", &inner]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        hosts
    }

    fn namespace(&self, host: &str) -> String {
        format!("duet-{host}-{}", self.id)
    }

    fn address(&self, host: &str) -> String {
        format!("10.{}.{}.2", self.subnet, if host == "l" { 1 } else { 2 })
    }

    /// This side's address on the leader's link.
    fn near_leader(&self) -> String {
        format!("10.{}.1.1", self.subnet)
    }

    /// Takes the helper's link down (`false`) or up again.
    fn helper_link(&self, up: bool) {
        ip(&["link", "set", &format!("dh{}a", self.id), if up { "up" } else { "down" }]);
        if up {
            // The address's route returns with the link; wait for it to be usable.
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Starts `binary` inside the host's namespace.
    fn spawn(&self, host: &str, binary: &str, args: &[String], admin: &AuthenticationToken) -> ServerProcess {
        let mut all = vec!["netns".to_string(), "exec".into(), self.namespace(host)];
        all.push(sibling_binary(binary).unwrap().display().to_string());
        all.extend(args.iter().cloned());
        all.extend(["--listen".to_string(), format!("{}:0", self.address(host))]);
        let log = std::env::var("DUET_TEST_LOG").unwrap_or_else(|_| "warn".into());
        ServerProcess::spawn(
            std::path::Path::new("ip"),
            &all,
            &[
                ("DUET_ADMIN_TOKEN", admin.expose()),
                ("DUET_DATABASE_KEYS", duet_tests::DATABASE_KEY),
                ("RUST_LOG", &log),
            ],
            Output::Prefixed(format!("{binary}@{host}")),
        )
        .unwrap()
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for host in ["l", "h"] {
            // Deleting a namespace deletes its end of the veth pair, and with it this end.
            let _ = std::process::Command::new("ip").args(["netns", "del", &self.namespace(host)]).output();
        }
    }
}

/// Leader and helper on two hosts, the path between them through a relay that delays traffic
/// by 100 ms ± 20 ms each way and resets 1% of connections, and the helper's link taken down for
/// 60 s in the middle of the run, while reports arrive and a collection waits: the result is
/// exact and no job is abandoned.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(duet_netns),
    ignore = "this machine does not let tests create network namespaces and veth pairs (ip netns add, ip link add)"
)]
async fn two_hosts_through_a_slow_relay_and_a_partition() {
    // Jobs of 10 reports: some 200 requests cross the relay, so that its 1% resets happen.
    const HALF: u64 = 1000;
    let hosts = TwoHosts::create();
    let dir = tempfile::tempdir().unwrap();
    let db = |name: &str| format!("sqlite:{}", dir.path().join(name).display());
    let (leader_admin, helper_admin) = (AuthenticationToken::random(), AuthenticationToken::random());
    let mut helper = hosts.spawn("h", "duet-helper", &["--database".into(), db("helper.db")], &helper_admin);
    let leader_args = [
        "--database".into(),
        db("leader.db"),
        "--creator-interval-ms".into(),
        "200".into(),
        "--driver-interval-ms".into(),
        "100".into(),
        "--max-job-size".into(),
        "10".into(),
        "--max-retry-delay-seconds".into(),
        "5".into(),
        "--helper-timeout-seconds".into(),
        "20".into(),
    ];
    let mut leader = hosts.spawn("l", "duet-leader", &leader_args, &leader_admin);
    let relay = Relay::start(format!("{}:0", hosts.near_leader()).parse().unwrap(), helper.addr).await;
    relay
        .set(Fault::Flaky { base: Duration::from_millis(100), spread: Duration::from_millis(20), reset_ratio: 0.01 })
        .await;

    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let params = TaskParameters { min_batch_size: 100, ..count_task("two hosts", leader.url(), relay.url()) };
    let task = NewTask::generate(params.clone(), None);
    let la = AdminClient::new(http.clone(), &leader.url(), leader_admin.clone()).unwrap();
    let ha = AdminClient::new(http.clone(), &helper.url(), helper_admin.clone()).unwrap();
    provision_task(&la, &task.leader_request, &ha, &task.helper_request).await.unwrap();
    let client = Client::new(params.clone(), http.clone()).unwrap();
    let configs = client.hpke_configs().await.unwrap();
    let time = past_hour();
    let url = format!("{}tasks/{}/reports", leader.url(), params.task_id);
    let batch = |n: u64| -> Vec<Report> {
        (0..n)
            .map(|i| client.prepare_report_with_configs(&configs, &Measurement::Count(i % 2 == 0), time).unwrap())
            .collect()
    };
    for chunk in batch(HALF).chunks(50) {
        assert!(send(&http, &url, chunk).await);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;

    // The partition: the helper's host is cut off while reports arrive and a collection waits.
    hosts.helper_link(false);
    let cut = Instant::now();
    for chunk in batch(HALF).chunks(50) {
        assert!(send(&http, &url, chunk).await, "the leader takes uploads during the partition");
    }
    let collector = Collector::new(&task.credentials, http.clone()).unwrap();
    let query = collector.query(Some((time, 3600))).unwrap();
    let collecting = tokio::spawn(async move { collector.collect(query, Duration::from_secs(600)).await });
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(cut.elapsed())).await;
    assert!(!collecting.is_finished(), "no result while the helper is cut off");
    hosts.helper_link(true);

    let result = collecting.await.unwrap().unwrap();
    assert_eq!((result.report_count, result.result), (2 * HALF, AggregateResult::Scalar(HALF)));
    let abandoned = duet_tests::count_rows(
        &db("leader.db"),
        "SELECT COUNT(*) FROM leader_aggregation_jobs WHERE state = 'abandoned'",
    )
    .await;
    assert_eq!(abandoned, 0);
    let c = relay.counts();
    println!(
        "| SQLite, two hosts | relay 100 ms ± 20 ms, 1% resets, 60 s partition | {} | {} | {abandoned} | connections {}, resets {} |",
        2 * HALF,
        result.report_count,
        c.connections.load(std::sync::atomic::Ordering::Relaxed),
        c.resets.load(std::sync::atomic::Ordering::Relaxed),
    );
    leader.terminate(Duration::from_secs(10));
    helper.terminate(Duration::from_secs(10));
}

/// Uploads `n` Count reports (every other one true), collects them, and checks the exact result
/// and that no job was abandoned. Returns the helper's metrics.
async fn upload_and_collect(d: &Deployment, n: u64) -> String {
    let task = d.create_task(VdafConfig::Prio3Count, BatchMode::TimeInterval, 10, None, None).await;
    let client = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
    let items: Vec<_> = (0..n).map(|i| (Measurement::Count(i % 2 == 0), past_hour())).collect();
    assert_eq!(client.upload(&items).await.unwrap().accepted, n);
    let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();
    let result = collector.collect(collector.query(Some((past_hour(), 3600))).unwrap(), Duration::from_secs(300)).await;
    let result = result.unwrap();
    assert_eq!((result.report_count, result.result), (n, AggregateResult::Scalar(n.div_ceil(2))));
    let abandoned = sqlx::Row::get::<i64, _>(
        &sqlx::query("SELECT COUNT(*) FROM leader_aggregation_jobs WHERE state = 'abandoned'")
            .fetch_one(&d.leader_db().await)
            .await
            .unwrap(),
        0,
    );
    assert_eq!(abandoned, 0);
    ops_get(&d.helper, "/metrics").await.1
}

#[tokio::test(flavor = "multi_thread")]
async fn a_helper_answering_asynchronously_is_polled_to_the_end() {
    for postgres in [false, true] {
        // A threshold of 0: the helper defers every job, and the leader polls each one.
        let d = Deployment::start(LeaderOptions {
            postgres,
            helper_args: vec!["--async-queue-threshold".into(), "0".into()],
            lease_seconds: 30,
            ..LeaderOptions::default()
        })
        .await;
        let helper_metrics = upload_and_collect(&d, 1000).await;
        let deferred =
            metric(&helper_metrics, "duet_aggregation_jobs_total", &[("role", "helper"), ("outcome", "deferred")]);
        assert_eq!(deferred, Some(10.0), "postgres {postgres}: each job of 100 reports was deferred");
    }
}

/// While a job waits on the helper's deferred answer, its lease is renewed, so that no other
/// driver takes it over, and no attempt is counted: through a path of 4 s each way, each job
/// takes several times its six-second lease (renewed every two seconds, which leaves a loaded
/// machine four seconds of slack), yet every job is leased once.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_waiting_on_a_deferred_answer_keeps_its_lease_and_counts_no_attempt() {
    let d = Deployment::start(LeaderOptions {
        max_job_size: 100,
        helper_args: vec!["--async-queue-threshold".into(), "0".into()],
        lease_seconds: 6,
        ..LeaderOptions::default()
    })
    .await;
    let relay = Relay::start("127.0.0.1:0".parse().unwrap(), d.helper.addr).await;
    relay.set(Fault::Flaky { base: Duration::from_secs(4), spread: Duration::ZERO, reset_ratio: 0.0 }).await;
    let task = d.create_task(VdafConfig::Prio3Count, BatchMode::TimeInterval, 10, None, Some(relay.url())).await;
    let client = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
    let items: Vec<_> = (0..300).map(|i| (Measurement::Count(i % 3 == 0), past_hour())).collect();
    assert_eq!(client.upload(&items).await.unwrap().accepted, 300);
    let started = Instant::now();
    d.wait_aggregated().await;
    let took = started.elapsed();
    let db = d.leader_db().await;
    let rows = sqlx::query("SELECT state, attempts FROM leader_aggregation_jobs").fetch_all(&db).await.unwrap();
    let jobs: Vec<(String, i64)> = rows.iter().map(|r| (sqlx::Row::get(r, 0), sqlx::Row::get(r, 1))).collect();
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    assert!(jobs.iter().all(|(state, attempts)| state == "finished" && *attempts == 1), "{jobs:?}");
    assert!(took > Duration::from_secs(12), "each job outlasted its lease twice over ({took:?})");
    let deferred = metric(
        &ops_get(&d.helper, "/metrics").await.1,
        "duet_aggregation_jobs_total",
        &[("role", "helper"), ("outcome", "deferred")],
    );
    assert_eq!(deferred, Some(3.0), "each job deferred, and sent once");
    let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();
    let result = collector.collect(collector.query(Some((past_hour(), 3600))).unwrap(), Duration::from_secs(120)).await;
    assert_eq!(result.unwrap().result, AggregateResult::Scalar(100));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_helper_with_a_full_queue_turns_jobs_away_until_it_has_room() {
    // One worker and room for one job: of the leader's four jobs at once, the others get 503.
    let d = Deployment::start(LeaderOptions {
        max_job_size: 50,
        lease_seconds: 30,
        helper_args: ["--aggregation-workers", "1", "--async-queue-threshold", "1", "--max-queued-jobs", "1"]
            .map(String::from)
            .to_vec(),
        leader_args: vec!["--max-retry-delay-seconds".into(), "2".into()],
        ..LeaderOptions::default()
    })
    .await;
    let helper_metrics = upload_and_collect(&d, 1000).await;
    let refused =
        metric(&helper_metrics, "duet_aggregation_jobs_total", &[("role", "helper"), ("outcome", "refused_busy")]);
    assert!(refused.is_some_and(|r| r >= 1.0), "the queue was full at times: {refused:?}");
    let leader_metrics = ops_get(&d.leader, "/metrics").await.1;
    let retries = metric(&leader_metrics, "duet_helper_retries_total", &[("reason", "server_error")]);
    assert_eq!(retries, refused, "every refusal was retried");
}

/// A collection the helper refuses for good fails with the helper's problem (never a bare 500),
/// and its batch stays collectable: once the helper knows the task again, the same query gives
/// the exact result.
#[tokio::test(flavor = "multi_thread")]
async fn a_collection_the_helper_refuses_fails_with_its_problem_and_the_batch_stays_collectable() {
    for postgres in [false, true] {
        let d = Deployment::start(LeaderOptions { postgres, ..LeaderOptions::default() }).await;
        let task = d.create_task(VdafConfig::Prio3Count, BatchMode::TimeInterval, 10, None, None).await;
        let client = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
        let items: Vec<_> = (0..30).map(|i| (Measurement::Count(i % 3 == 0), past_hour())).collect();
        assert_eq!(client.upload(&items).await.unwrap().accepted, 30);
        d.wait_aggregated().await;
        // The helper forgets the task (its aggregates stay): it refuses the aggregate share.
        let helper = AdminClient::new(d.http.clone(), &d.helper.url(), d.helper_admin.clone()).unwrap();
        helper.delete_task(&task.credentials.task.task_id).await.unwrap();
        let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();
        let query = collector.query(Some((past_hour(), 3600))).unwrap();
        let err = collector.collect(query, Duration::from_secs(60)).await.unwrap_err();
        assert_eq!(err.dap_problem(), Some(DapProblemType::UnrecognizedTask), "postgres {postgres}: {err}");
        // The helper knows the task again: the batch was given back, and is collected whole.
        helper.create_task(&task.helper_request).await.unwrap();
        let result = collector.collect(query, Duration::from_secs(60)).await.unwrap();
        assert_eq!((result.report_count, result.result), (30, AggregateResult::Scalar(10)), "postgres {postgres}");
    }
}

/// A helper that does not know the task yet refuses every job (404 `unrecognizedTask`): the jobs
/// are abandoned, their reports go back to the pool (none fails), new jobs are held back, and
/// once the helper has the task every report is counted exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn jobs_a_helper_refuses_give_their_reports_back_until_it_takes_them() {
    let d = Deployment::start(LeaderOptions {
        leader_args: vec!["--max-retry-delay-seconds".into(), "2".into()],
        ..LeaderOptions::default()
    })
    .await;
    let params = count_task("helper provisions late", d.leader.url(), d.helper.url());
    let task = NewTask::generate(params.clone(), None);
    let leader = AdminClient::new(d.http.clone(), &d.leader.url(), d.leader_admin.clone()).unwrap();
    leader.create_task(&task.leader_request).await.unwrap();
    let client = Client::new(params, d.http.clone()).unwrap();
    let items: Vec<_> = (0..200).map(|i| (Measurement::Count(i % 4 == 0), past_hour())).collect();
    assert_eq!(client.upload(&items).await.unwrap().accepted, 200);
    let db = d.leader_db().await;
    let count = |sql: &'static str| {
        let db = db.clone();
        async move { sqlx::Row::get::<i64, _>(&sqlx::query(sql).fetch_one(&db).await.unwrap(), 0) }
    };
    // The helper refuses the first jobs within seconds (a loaded machine may take longer).
    let abandoned = || count("SELECT COUNT(*) FROM leader_aggregation_jobs WHERE state = 'abandoned'");
    for _ in 0..600 {
        if abandoned().await >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(abandoned().await >= 1);
    assert_eq!(count("SELECT COUNT(*) FROM client_reports WHERE state = 'failed'").await, 0, "none lost");
    assert_eq!(count("SELECT COUNT(*) FROM leader_job_creation_holds").await, 1, "new jobs are held back");

    let helper = AdminClient::new(d.http.clone(), &d.helper.url(), d.helper_admin.clone()).unwrap();
    helper.create_task(&task.helper_request).await.unwrap();
    let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();
    let result = collector.collect(collector.query(Some((past_hour(), 3600))).unwrap(), Duration::from_secs(120)).await;
    let result = result.unwrap();
    assert_eq!((result.report_count, result.result), (200, AggregateResult::Scalar(50)));
    assert_eq!(count("SELECT COUNT(*) FROM client_reports WHERE state = 'failed'").await, 0);
    assert_eq!(count("SELECT COUNT(*) FROM leader_job_creation_holds").await, 0, "the hold is lifted");
}

/// A helper that answers what the leader cannot follow: `finish` right after initialization,
/// or its reports in another order. It may have aggregated them, so the job is abandoned and its
/// reports fail (DAP-18 "Leader Initialization"), and the helper is told to delete the job.
#[derive(Clone, Default)]
struct WrongHelper {
    helper: String,
    answers: Arc<AtomicUsize>,
    deletes: Arc<AtomicUsize>,
    /// Defers each job instead (an empty answer and a `Location`), then refuses the poll with a
    /// problem document: the job was accepted, so it may have been aggregated all the same.
    defer_then_refuse: bool,
}

async fn wrong_helper(
    axum::extract::State(w): axum::extract::State<WrongHelper>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if uri.path() == "/hpke_config" {
        let resp = reqwest::get(format!("{}hpke_config", w.helper)).await.unwrap();
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        return ([("content-type", ct)], resp.bytes().await.unwrap().to_vec()).into_response();
    }
    if method == axum::http::Method::DELETE {
        w.deletes.fetch_add(1, Ordering::SeqCst);
        return axum::http::StatusCode::OK.into_response();
    }
    if w.defer_then_refuse {
        if method == axum::http::Method::GET {
            let problem = r#"{"type":"urn:ietf:params:ppm:dap:error:invalidMessage","title":"refused"}"#;
            return (axum::http::StatusCode::BAD_REQUEST, [("content-type", "application/problem+json")], problem)
                .into_response();
        }
        w.answers.fetch_add(1, Ordering::SeqCst);
        let location = format!("{}/deferred-job", uri.path());
        return (axum::http::StatusCode::CREATED, [("location", location), ("retry-after", "0".into())])
            .into_response();
    }
    let req = AggregationJobInitReq::get_decoded(&body).unwrap();
    let mut verify_resps: Vec<VerifyResp> = req
        .verify_inits
        .iter()
        .map(|vi| VerifyResp {
            report_id: vi.report_share.report_metadata.report_id,
            verify_resp_type: VerifyRespType::Continue { payload: vec![0; 8] },
        })
        .collect();
    if w.answers.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
        verify_resps.reverse();
    } else {
        verify_resps[0].verify_resp_type = VerifyRespType::Finish;
    }
    let body = AggregationJobResp { verify_resps }.get_encoded().unwrap();
    let location = format!("{}/wrong-job", uri.path());
    (
        axum::http::StatusCode::CREATED,
        [("content-type", media_type::AGGREGATION_JOB_RESP.to_string()), ("location", location)],
        body,
    )
        .into_response()
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_the_leader_cannot_follow_abandon_the_job_and_delete_it_at_the_helper() {
    wrong_answers_abandon_jobs(false).await;
}

/// A job the helper deferred and then refused when polled: it had accepted the job, so the
/// reports may be aggregated there, and they are not put in a new job.
#[tokio::test(flavor = "multi_thread")]
async fn a_deferred_job_refused_when_polled_is_abandoned_and_deleted_at_the_helper() {
    wrong_answers_abandon_jobs(true).await;
}

async fn wrong_answers_abandon_jobs(defer_then_refuse: bool) {
    let d = Deployment::start(LeaderOptions { max_job_size: 10, lease_seconds: 30, ..LeaderOptions::default() }).await;
    let wrong = WrongHelper { helper: d.helper.url(), defer_then_refuse, ..WrongHelper::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(wrong_helper).with_state(wrong.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let task = d.create_task(VdafConfig::Prio3Count, BatchMode::TimeInterval, 10, None, Some(url)).await;
    let client = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
    let items: Vec<_> = (0..40).map(|_| (Measurement::Count(true), past_hour())).collect();
    assert_eq!(client.upload(&items).await.unwrap().accepted, 40);
    d.wait_aggregated().await;
    let db = d.leader_db().await;
    let count = |sql: &'static str| {
        let db = db.clone();
        async move { sqlx::Row::get::<i64, _>(&sqlx::query(sql).fetch_one(&db).await.unwrap(), 0) }
    };
    assert_eq!(count("SELECT COUNT(*) FROM leader_aggregation_jobs WHERE state = 'abandoned'").await, 4);
    assert_eq!(count("SELECT COUNT(*) FROM client_reports WHERE state = 'failed'").await, 40, "none aggregated twice");
    assert_eq!(wrong.answers.load(Ordering::SeqCst), 4, "each job sent once: an invalid answer is not retried");
    // The deletions are sent right after each abandonment.
    for _ in 0..50 {
        if wrong.deletes.load(Ordering::SeqCst) == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(wrong.deletes.load(Ordering::SeqCst), 4, "the helper is told to delete each abandoned job");
}
