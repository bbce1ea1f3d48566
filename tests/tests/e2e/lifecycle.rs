//! Data lifecycle: reports expire and the garbage collector deletes what each server no longer
//! needs, so that storage stays bounded however long a task runs. A simulated month on each
//! backend, driven by the injectable clock (the leader and helper in process, on loopback, with
//! the client and collector SDKs); and real processes collecting garbage every second.

use duet_client::admin::NewTask;
use duet_client::collect::Collector;
use duet_client::upload::Client;
use duet_common::clock::TestClock;
use duet_common::messages::*;
use duet_common::task::TaskParameters;
use duet_common::vdaf::{AggregateResult, Measurement, VdafConfig};
use duet_server::gc::GcSettings;
use duet_tests::PgDatabase;
use std::sync::Arc;
use std::time::Duration;

mod processes;

const HOUR: u64 = 3600;
const DAYS: u64 = 30;
const REPORTS_PER_HOUR: usize = 10;
/// The task's report expiry age: three days.
const EXPIRY: u64 = 3 * 24 * HOUR;

/// The leader's tables and the helper's whose rows the month counts.
const LEADER_TABLES: &[&str] = &[
    "client_reports",
    "client_report_payloads",
    "leader_aggregation_jobs",
    "collection_jobs",
    "batch_aggregations",
    "collected_batches",
];
const HELPER_TABLES: &[&str] = &[
    "aggregated_report_ids",
    "helper_aggregation_jobs",
    "helper_aggregate_shares",
    "batch_aggregations",
    "collected_batches",
];

/// One database of the month, kept alive while the test runs.
enum Db {
    Sqlite(#[allow(dead_code)] tempfile::TempDir, String),
    Pg(PgDatabase),
}

impl Db {
    async fn new(postgres: bool, name: &str) -> Self {
        if postgres {
            Db::Pg(PgDatabase::create().await)
        } else {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite:{}", dir.path().join(format!("{name}.db")).display());
            Db::Sqlite(dir, url)
        }
    }

    fn url(&self) -> &str {
        match self {
            Db::Sqlite(_, url) => url,
            Db::Pg(pg) => &pg.url,
        }
    }

    /// Rows of each of `tables`, and the space the database takes: SQLite's pages in use (the
    /// file's size once its log is checkpointed), PostgreSQL's tables with their indexes.
    async fn figures(&self, pool: &sqlx::AnyPool, tables: &[&str]) -> (Vec<i64>, i64) {
        use sqlx::Row;
        let mut rows = Vec::new();
        for table in tables {
            rows.push(sqlx::query(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(pool).await.unwrap().get(0));
        }
        let size_sql = match self {
            Db::Sqlite(..) => "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()".to_string(),
            Db::Pg(_) => "SELECT CAST(SUM(pg_total_relation_size(relid)) AS BIGINT) FROM pg_stat_user_tables".into(),
        };
        let size: i64 = sqlx::query(&size_sql).fetch_one(pool).await.unwrap().get(0);
        (rows, size)
    }
}

/// What a day of the month leaves in both databases.
#[derive(Debug, Clone)]
struct Day {
    day: u64,
    leader_rows: Vec<i64>,
    leader_bytes: i64,
    helper_rows: Vec<i64>,
    helper_bytes: i64,
}

async fn serve(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Thirty simulated days of a Count task with a three-day expiry: every hour ten reports are
/// uploaded, aggregated and their hour collected, and both servers run a garbage-collection
/// pass. Row counts and database size stop growing once the expiry age has passed, every
/// hour's result is exact, and a report uploaded on the first day is refused as too old when
/// sent again at the end (its ID long deleted), never counted twice.
async fn a_simulated_month(postgres: bool) {
    let started = std::time::Instant::now();
    let start = (duet_common::clock::Clock::now_seconds(&duet_common::clock::SystemClock) / HOUR) * HOUR
        - (DAYS + 1) * 24 * HOUR;
    let clock = TestClock::at(start);
    let (leader_db, helper_db) = (Db::new(postgres, "leader").await, Db::new(postgres, "helper").await);
    let keys = duet_tests::database_keys();
    let ls = duet_leader::store::open_with_clock(leader_db.url(), keys.clone(), Arc::new(clock.clone())).await.unwrap();
    let hs = duet_helper::store::open_with_clock(helper_db.url(), keys, Arc::new(clock.clone())).await.unwrap();
    let helper_addr = serve(duet_helper::router(hs.clone(), duet_helper::HelperConfig::default(), None)).await;
    let leader_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let leader_addr = leader_listener.local_addr().unwrap();

    let params = TaskParameters {
        task_id: TaskId::random(),
        task_info: "a simulated month".into(),
        leader_endpoint: format!("http://{leader_addr}/"),
        helper_endpoint: format!("http://{helper_addr}/"),
        time_precision: HOUR,
        min_batch_size: REPORTS_PER_HOUR as u64,
        batch_mode: BatchMode::TimeInterval,
        vdaf: VdafConfig::Prio3Count,
        task_interval_seconds: None,
        dp: None,
    };
    let mut task = NewTask::generate(params, None);
    task.leader_request.report_expiry_age = Some(EXPIRY);
    task.helper_request.report_expiry_age = Some(EXPIRY);
    ls.put_task(Role::Leader, &task.leader_request).await.unwrap();
    hs.put_task(Role::Helper, &task.helper_request).await.unwrap();

    let defaults = duet_leader::LeaderConfig::default();
    let config = duet_leader::LeaderConfig {
        job_sizes: duet_leader::store::JobSizes { min: 1, max_delay_seconds: 0, ..defaults.job_sizes },
        creator_interval: Duration::from_millis(5),
        driver_interval: Duration::from_millis(5),
        ..defaults
    };
    let state = duet_leader::LeaderState::new(ls.clone(), config).unwrap();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let _workers = duet_leader::spawn_workers(state.clone(), stop_rx);
    let app = duet_leader::router(state, None);
    tokio::spawn(async move { axum::serve(leader_listener, app).await.unwrap() });
    // Time goes on within each simulated hour too (a second every 20 ms), so that what waits on
    // the clock (a collection job deferred for a second, a lease) moves on.
    let ticker = {
        let clock = clock.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                clock.advance(1);
            }
        })
    };

    let http = reqwest::Client::new();
    let client = Client::new(task.credentials.task.clone(), http.clone()).unwrap();
    let collector = Collector::new(&task.credentials, http.clone()).unwrap();
    let settings = GcSettings::with_grace(duet_server::gc::DEFAULT_GRACE_SECONDS as i64, None);
    let (leader_pool, helper_pool) = (pool(leader_db.url()).await, pool(helper_db.url()).await);
    // A report of the first hour, kept to be sent again at the end.
    let first = client.prepare_report(&Measurement::Count(true), start + 60).await.unwrap();
    let mut days: Vec<Day> = Vec::new();
    for hour in 0..DAYS * 24 {
        let t = start + hour * HOUR;
        clock.set(t + HOUR / 2);
        let measurements: Vec<(Measurement, u64)> = (0..REPORTS_PER_HOUR)
            .map(|j| (Measurement::Count((hour as usize + j).is_multiple_of(3)), t + 60 * j as u64))
            .collect();
        let expected = measurements.iter().filter(|(m, _)| *m == Measurement::Count(true)).count() as u64;
        if hour == 0 {
            // The kept report stands for the first measurement (true, as (0 + 0) % 3 == 0).
            assert!(upload_raw(&http, &leader_addr, &task.leader_request.parameters.task_id, &first).await.is_empty());
            assert_eq!(client.upload(&measurements[1..]).await.unwrap().accepted, REPORTS_PER_HOUR as u64 - 1);
        } else {
            assert_eq!(client.upload(&measurements).await.unwrap().accepted, REPORTS_PER_HOUR as u64, "hour {hour}");
        }
        let query = collector.query(Some((t, HOUR))).unwrap();
        let result = collector.collect(query, Duration::from_secs(60)).await.unwrap();
        assert_eq!(result.report_count, REPORTS_PER_HOUR as u64, "hour {hour}");
        assert_eq!(result.result, AggregateResult::Scalar(expected), "hour {hour}");
        let leader_gc = ls.collect_garbage(&settings).await.unwrap();
        let helper_gc = hs.collect_garbage(&settings).await.unwrap();
        if hour == 0 {
            assert_eq!((leader_gc.total(), helper_gc.total()), (0, 0), "nothing is old enough yet");
        }
        if hour % 24 == 23 {
            let (leader_rows, leader_bytes) = leader_db.figures(&leader_pool, LEADER_TABLES).await;
            let (helper_rows, helper_bytes) = helper_db.figures(&helper_pool, HELPER_TABLES).await;
            days.push(Day { day: hour / 24 + 1, leader_rows, leader_bytes, helper_rows, helper_bytes });
        }
    }
    ticker.abort();
    let backend = if postgres { "postgres" } else { "sqlite" };
    eprintln!("{backend}: a simulated month in {:.1} s; end of day: rows and bytes", started.elapsed().as_secs_f64());
    eprintln!("  leader tables: {LEADER_TABLES:?}; helper tables: {HELPER_TABLES:?}");
    for d in &days {
        eprintln!(
            "  day {:2}: leader {:?} {} bytes; helper {:?} {} bytes",
            d.day, d.leader_rows, d.leader_bytes, d.helper_rows, d.helper_bytes
        );
    }
    // Reports, replay records and buckets are kept for the expiry age and a unit, the helper's
    // buckets for a margin more: about three days of reports at any time, not thirty.
    let last = days.last().unwrap();
    let window = (EXPIRY / HOUR + 3) as i64 * REPORTS_PER_HOUR as i64;
    assert!(
        last.leader_rows[0] > 0 && last.leader_rows[0] <= window,
        "{backend}: leader reports {:?}",
        last.leader_rows
    );
    assert!(
        last.helper_rows[0] > 0 && last.helper_rows[0] <= window,
        "{backend}: replay records {:?}",
        last.helper_rows
    );
    assert_eq!(last.leader_rows[1], 0, "{backend}: no payload outlives its aggregation");
    // After the fifth day (the expiry, the helper's margin and the grace period past) nothing
    // grows: the last day holds no more than the most of days 5 to 10, give or take the one
    // job by which the days differ (24 or 25, as a pass falls just before or after a job's
    // deletion is due: 24 on each of days 5 to 10 and 25 on day 30 is no growth). Growth would add
    // a day's 24 jobs and 240 reports each day.
    let most = |f: &dyn Fn(&Day) -> i64| days[4..10].iter().map(f).max().unwrap();
    for (i, table) in LEADER_TABLES.iter().enumerate() {
        let most = most(&|d: &Day| d.leader_rows[i]);
        assert!(last.leader_rows[i] <= most + 1, "{backend}: leader {table} grew: {days:?}");
    }
    for (i, table) in HELPER_TABLES.iter().enumerate() {
        let most = most(&|d: &Day| d.helper_rows[i]);
        assert!(last.helper_rows[i] <= most + 1, "{backend}: helper {table} grew: {days:?}");
    }
    let plateau = |day30: i64, most: i64| day30 <= most + most / 4;
    let (leader_most, helper_most) = (most(&|d: &Day| d.leader_bytes), most(&|d: &Day| d.helper_bytes));
    assert!(plateau(last.leader_bytes, leader_most), "{backend}: the leader's database grew: {days:?}");
    assert!(plateau(last.helper_bytes, helper_most), "{backend}: the helper's database grew: {days:?}");

    // The first day's report, sent again: its ID is long gone, and it is refused as too old.
    let again = upload_raw(&http, &leader_addr, &task.leader_request.parameters.task_id, &first).await;
    assert_eq!(again.len(), 1, "{backend}");
    assert_eq!(again[0].error, ReportError::ReportDropped, "{backend}");
    let stored = duet_tests::count_rows(
        leader_db.url(),
        &format!("SELECT COUNT(*) FROM client_reports WHERE report_time = {}", start / HOUR),
    )
    .await;
    assert_eq!(stored, 0, "{backend}: nothing of the first hour is stored again");
    leader_pool.close().await;
    helper_pool.close().await;
}

async fn pool(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new().max_connections(1).connect(url).await.unwrap()
}

async fn upload_raw(
    http: &reqwest::Client,
    leader: &std::net::SocketAddr,
    task: &TaskId,
    report: &Report,
) -> Vec<ReportUploadStatus> {
    duet_tests::upload_raw(http, &format!("http://{leader}/"), task, vec![report.clone()]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_simulated_month_on_sqlite_stays_bounded() {
    a_simulated_month(false).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_simulated_month_on_postgres_stays_bounded() {
    a_simulated_month(true).await
}
