//! Several replicas per role on one database, and crashes: two `duet-leader` and two
//! `duet-helper` processes behind load balancers, 20,000 reports uploaded through both leader
//! replicas, one leader and one helper replica killed with SIGKILL mid-aggregation and
//! restarted. The collected result must be exact: every report counted once.

use duet_client::admin::NewTask;
use duet_client::admin::{provision_task, AdminClient};
use duet_client::collect::Collector;
use duet_client::upload::{Client, ClientOptions};
use duet_common::auth::AuthenticationToken;
use duet_common::messages::{BatchMode, TaskId};
use duet_common::task::TaskParameters;
use duet_common::vdaf::{AggregateResult, Measurement, VdafConfig};
use duet_tests::{past_hour, spawn, Balancer, PgDatabase};
use sqlx::Row;
use std::time::{Duration, Instant};

const REPORTS: usize = 20_000;

/// Where the replicas keep their state: one database for all four processes.
enum Db {
    /// PostgreSQL: a schema per role in one database.
    Postgres(PgDatabase),
    /// SQLite: a file per role, shared by that role's replicas.
    Sqlite(tempfile::TempDir),
}

impl Db {
    async fn url(&self, role: &str) -> String {
        match self {
            Db::Postgres(pg) => {
                use sqlx::{Connection, Executor};
                let mut conn = sqlx::PgConnection::connect(&pg.url).await.unwrap();
                conn.execute(format!("CREATE SCHEMA IF NOT EXISTS {role}").as_str()).await.unwrap();
                format!("{}?options[search_path]={role}", pg.url)
            }
            Db::Sqlite(dir) => format!("sqlite:{}", dir.path().join(format!("{role}.db")).display()),
        }
    }
}

async fn count(db: &sqlx::AnyPool, sql: &str) -> i64 {
    sqlx::query(sql).fetch_one(db).await.unwrap().get::<i64, _>(0)
}

async fn replicas_survive_sigkill(db: Db) {
    let started = Instant::now();
    let (leader_db, helper_db) = (db.url("leader").await, db.url("helper").await);
    let (leader_admin, helper_admin) = (AuthenticationToken::random(), AuthenticationToken::random());
    let helper_args = vec!["--database".to_string(), helper_db.clone()];
    let leader_args: Vec<String> = [
        "--database",
        &leader_db,
        "--lease-seconds",
        "5",
        "--max-job-size",
        "250",
        "--creator-interval-ms",
        "200",
        "--driver-interval-ms",
        "100",
    ]
    .map(String::from)
    .to_vec();
    let mut helpers = [
        spawn("duet-helper", &helper_args, &helper_admin, "127.0.0.1:0"),
        spawn("duet-helper", &helper_args, &helper_admin, "127.0.0.1:0"),
    ];
    let helper_lb = Balancer::start(helpers.iter().map(|h| h.addr).collect()).await;
    let mut leaders = [
        spawn("duet-leader", &leader_args, &leader_admin, "127.0.0.1:0"),
        spawn("duet-leader", &leader_args, &leader_admin, "127.0.0.1:0"),
    ];
    let leader_lb = Balancer::start(leaders.iter().map(|l| l.addr).collect()).await;

    // No connection reuse, so that requests spread over the replicas as a load balancer would.
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(60)).build().unwrap();
    let vdaf = VdafConfig::Prio3Count;
    let params = TaskParameters {
        task_id: TaskId::random(),
        task_info: "replicas".into(),
        leader_endpoint: leader_lb.url(),
        helper_endpoint: helper_lb.url(),
        time_precision: 3600,
        min_batch_size: 100,
        batch_mode: BatchMode::TimeInterval,
        vdaf: vdaf.clone(),
        task_interval_seconds: None,
        dp: None,
    };
    let task = NewTask::generate(params.clone(), None);
    let leader_admin_client = AdminClient::new(http.clone(), &leader_lb.url(), leader_admin.clone()).unwrap();
    let helper_admin_client = AdminClient::new(http.clone(), &helper_lb.url(), helper_admin.clone()).unwrap();
    provision_task(&leader_admin_client, &task.leader_request, &helper_admin_client, &task.helper_request)
        .await
        .unwrap();

    let time = past_hour();
    let measurements: Vec<(Measurement, u64)> =
        (0..REPORTS).map(|i| (Measurement::Count(i % 3 == 0), time + (i % 3600) as u64)).collect();
    let expected = measurements.iter().filter(|(m, _)| *m == Measurement::Count(true)).count() as u64;
    let options = ClientOptions { reports_per_request: 500, ..ClientOptions::default() };
    let client = Client::with_options(params.clone(), http.clone(), options).unwrap();
    let outcome = client.upload(&measurements).await.unwrap();
    assert_eq!((outcome.accepted, outcome.rejected.len()), (REPORTS as u64, 0));
    let uploaded = started.elapsed();
    let per_leader = leader_lb.counts();
    assert!(per_leader.iter().all(|&c| c > 0), "uploads went through both leader replicas: {per_leader:?}");

    // Mid-aggregation: kill one replica of each role without warning, then bring it back.
    sqlx::any::install_default_drivers();
    let leader_pool = sqlx::AnyPool::connect(&leader_db).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = count(&leader_pool, duet_tests::AGGREGATED_REPORTS_SQL).await;
        if done >= (REPORTS / 10) as i64 {
            assert!(done < REPORTS as i64, "the kill must land mid-aggregation");
            break;
        }
        assert!(Instant::now() < deadline, "aggregation did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (leader_addr, helper_addr) = (leaders[0].addr.to_string(), helpers[0].addr.to_string());
    leaders[0].kill();
    helpers[0].kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    helpers[0] = spawn("duet-helper", &helper_args, &helper_admin, &helper_addr);
    leaders[0] = spawn("duet-leader", &leader_args, &leader_admin, &leader_addr);

    let collector = Collector::new(&task.credentials, reqwest::Client::new()).unwrap();
    let result =
        collector.collect(collector.query(Some((time, 3600))).unwrap(), Duration::from_secs(600)).await.unwrap();
    let total = started.elapsed();
    assert_eq!(result.report_count, REPORTS as u64, "every report counted once");
    assert_eq!(result.result, AggregateResult::Scalar(expected));

    // And in the stores: every report settled once on the leader, aggregated once on the helper.
    assert_eq!(count(&leader_pool, duet_tests::AGGREGATED_REPORTS_SQL).await, REPORTS as i64);
    let helper_pool = sqlx::AnyPool::connect(&helper_db).await.unwrap();
    assert_eq!(count(&helper_pool, "SELECT COUNT(*) FROM aggregated_report_ids").await, REPORTS as i64);
    let abandoned = count(&leader_pool, "SELECT COUNT(*) FROM leader_aggregation_jobs WHERE state = 'abandoned'").await;
    assert_eq!(abandoned, 0);
    leader_pool.close().await;
    helper_pool.close().await;
    eprintln!(
        "replicas on {}: {REPORTS} reports uploaded in {:.1} s, collected in {:.1} s total",
        if matches!(db, Db::Postgres(_)) { "PostgreSQL" } else { "SQLite" },
        uploaded.as_secs_f64(),
        total.as_secs_f64()
    );
    for p in leaders.iter_mut().chain(helpers.iter_mut()) {
        p.terminate(Duration::from_secs(10));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_leaders_two_helpers_on_postgres_survive_sigkill() {
    replicas_survive_sigkill(Db::Postgres(PgDatabase::create().await)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_leaders_two_helpers_on_sqlite_survive_sigkill() {
    replicas_survive_sigkill(Db::Sqlite(tempfile::tempdir().unwrap())).await;
}
