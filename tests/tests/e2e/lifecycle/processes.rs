//! The garbage collector in real `duet-leader` and `duet-helper` processes, every second
//! (`--gc-interval-seconds 1`): a task's rows go once its reports expire, a task deleted in the
//! middle of a collection leaves nothing behind and harms no other task.

use super::*;
use duet_client::admin::{provision_task, AdminClient};
use duet_tests::{ops_get, past_hour, Deployment, LeaderOptions};

const GC_EVERY_SECOND: [&str; 2] = ["--gc-interval-seconds", "1"];

/// Both servers collect garbage every second; deleted tasks' rows go two seconds after their
/// deletion (the grace period within which provisioning the identical task restores it).
fn gc_options(postgres: bool) -> LeaderOptions {
    let gc: Vec<String> = GC_EVERY_SECOND.iter().chain(&["--gc-grace-seconds", "2"]).map(|s| s.to_string()).collect();
    LeaderOptions { postgres, leader_args: gc.clone(), helper_args: gc, ..LeaderOptions::default() }
}

/// A database of the deployment, opened on its own.
async fn open_db(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(url).await.unwrap()
}

/// The rows a task has in each of `tables`.
async fn task_rows(db: &sqlx::AnyPool, tables: &[&str], task: &TaskId) -> Vec<i64> {
    use sqlx::Row;
    let mut out = Vec::new();
    for table in tables {
        let sql = match *table {
            "client_report_payloads" => "SELECT COUNT(*) FROM client_report_payloads WHERE report_row IN
                                           (SELECT row_id FROM client_reports WHERE task_id = $1)"
                .to_string(),
            t => format!("SELECT COUNT(*) FROM {t} WHERE task_id = $1"),
        };
        out.push(sqlx::query(&sql).bind(task.as_bytes().as_slice()).fetch_one(db).await.unwrap().get(0));
    }
    out
}

/// The expiring tasks' time precision and report expiry age (two units of it), in seconds:
/// short, so that the tests see rows go, but long enough that a loaded machine aggregates the
/// reports before they expire (at four seconds, a run of the whole suite on the 2-core machine
/// once timed out waiting for such a collection, most likely because it did not).
const PRECISION_SECONDS: u64 = 6;
const EXPIRY_SECONDS: u64 = 2 * PRECISION_SECONDS;

/// Polls until every count of `tables` is zero for `task`, for at most `seconds`; the counts seen
/// last.
async fn wait_until_empty(db: &sqlx::AnyPool, tables: &[&str], task: &TaskId, seconds: u64) -> Vec<i64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        let rows = task_rows(db, tables, task).await;
        if rows.iter().all(|n| *n == 0) || std::time::Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The value of `duet_gc_deleted_rows_total{table="…"}` on a server's `/metrics`.
async fn deleted_metric(server: &duet_cli::process::ServerProcess, table: &str) -> f64 {
    let (status, text) = ops_get(server, "/metrics").await;
    assert_eq!(status, 200);
    let prefix = format!("duet_gc_deleted_rows_total{{table=\"{table}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0.0, |v| v.trim().parse().unwrap())
}

async fn provision(d: &Deployment, task: &NewTask) {
    let leader = AdminClient::new(d.http.clone(), &d.leader.url(), d.leader_admin.clone()).unwrap();
    let helper = AdminClient::new(d.http.clone(), &d.helper.url(), d.helper_admin.clone()).unwrap();
    provision_task(&leader, &task.leader_request, &helper, &task.helper_request).await.unwrap();
}

/// A Count task with a time precision of six seconds and an expiry of two units (twelve
/// seconds): its reports are uploaded, aggregated and collected, and within seconds both
/// servers have deleted every row of it but the task itself, as their metrics say too. A task
/// without an expiry, beside it, keeps its rows.
async fn a_tasks_rows_go_once_its_reports_expire(postgres: bool) {
    let d = Deployment::start(gc_options(postgres)).await;
    let mut params = duet_tests::count_task("expiring", d.leader.url(), d.helper.url());
    params.time_precision = PRECISION_SECONDS;
    params.min_batch_size = 6;
    let expiring = NewTask::generate(params, None).with_report_expiry_age(Some(EXPIRY_SECONDS));
    provision(&d, &expiring).await;
    let keeping = NewTask::generate(duet_tests::count_task("keeping", d.leader.url(), d.helper.url()), None);
    provision(&d, &keeping).await;

    let now = duet_common::clock::Clock::now_seconds(&duet_common::clock::SystemClock);
    let client = Client::new(expiring.credentials.task.clone(), d.http.clone()).unwrap();
    let items: Vec<(Measurement, u64)> = (0..6).map(|i| (Measurement::Count(i % 2 == 0), now)).collect();
    assert_eq!(client.upload(&items).await.unwrap().accepted, 6);
    let kept = Client::new(keeping.credentials.task.clone(), d.http.clone()).unwrap();
    let items: Vec<(Measurement, u64)> = (0..10).map(|_| (Measurement::Count(true), past_hour())).collect();
    assert_eq!(kept.upload(&items).await.unwrap().accepted, 10);
    let expiring_collector = Collector::new(&expiring.credentials, d.http.clone()).unwrap();
    let expired_query = expiring_collector.query(Some((now - now % PRECISION_SECONDS, PRECISION_SECONDS))).unwrap();
    let result = expiring_collector.collect(expired_query, Duration::from_secs(60)).await;
    let result = result.unwrap();
    assert_eq!((result.report_count, result.result), (6, AggregateResult::Scalar(3)));
    let collector = Collector::new(&keeping.credentials, d.http.clone()).unwrap();
    let result = collector.collect(collector.query(Some((past_hour(), 3600))).unwrap(), Duration::from_secs(60)).await;
    assert_eq!(result.unwrap().report_count, 10);

    let (leader_db, helper_db) = (open_db(&d.leader_db_url()).await, open_db(&d.helper_db_url()).await);
    let id = expiring.leader_request.parameters.task_id;
    let started = std::time::Instant::now();
    let leader_left = wait_until_empty(&leader_db, LEADER_TABLES, &id, 60).await;
    let helper_left = wait_until_empty(&helper_db, HELPER_TABLES, &id, 60).await;
    eprintln!(
        "{}: the expiring task's rows gone {:.1} s after its collection",
        if postgres { "postgres" } else { "sqlite" },
        started.elapsed().as_secs_f64()
    );
    assert!(leader_left.iter().all(|n| *n == 0), "leader rows left {LEADER_TABLES:?}: {leader_left:?}");
    assert!(helper_left.iter().all(|n| *n == 0), "helper rows left {HELPER_TABLES:?}: {helper_left:?}");
    // The expired batch cannot be collected again: its reports are gone.
    let err = expiring_collector.start(expired_query).await.unwrap_err();
    assert_eq!(err.dap_problem(), Some(duet_common::problem::DapProblemType::BatchInvalid), "{err}");
    // The task itself stays provisioned; the task without an expiry keeps its reports.
    assert_eq!(task_rows(&leader_db, &["tasks"], &id).await, [1]);
    let keeping_id = keeping.leader_request.parameters.task_id;
    assert_eq!(task_rows(&leader_db, &["client_reports"], &keeping_id).await, [10]);
    assert_eq!(task_rows(&helper_db, &["aggregated_report_ids"], &keeping_id).await, [10]);
    // The metrics count what went.
    assert!(deleted_metric(&d.leader, "client_reports").await >= 6.0);
    assert!(deleted_metric(&d.leader, "collection_jobs").await >= 1.0);
    assert!(deleted_metric(&d.helper, "aggregated_report_ids").await >= 6.0);
    assert!(deleted_metric(&d.helper, "helper_aggregate_shares").await >= 1.0);
    let (_, text) = ops_get(&d.leader, "/metrics").await;
    let age: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("duet_oldest_report_age_seconds "))
        .expect("the oldest report's age")
        .trim()
        .parse()
        .unwrap();
    assert!(age >= 3600.0, "the oldest report held is the keeping task's, over an hour old: {age}");
    leader_db.close().await;
    helper_db.close().await;
}

/// A collection in progress (its batch committed, the helper away) when its task is deleted on
/// both servers: the other task's collection is exact, every row of the deleted task goes, and
/// the task provisioned again under its ID starts empty.
async fn deleting_a_task_during_its_collection_corrupts_nothing(postgres: bool) {
    let mut d = Deployment::start(gc_options(postgres)).await;
    let doomed = NewTask::generate(duet_tests::count_task("doomed", d.leader.url(), d.helper.url()), None);
    let other = NewTask::generate(duet_tests::count_task("other", d.leader.url(), d.helper.url()), None);
    provision(&d, &doomed).await;
    provision(&d, &other).await;
    let items: Vec<(Measurement, u64)> = (0..10).map(|i| (Measurement::Count(i < 7), past_hour())).collect();
    for task in [&doomed, &other] {
        let client = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
        assert_eq!(client.upload(&items).await.unwrap().accepted, 10);
    }
    d.wait_aggregated().await;
    // The helper goes away: the collection commits its batch and waits for the helper.
    d.kill_helper();
    let collector = Collector::new(&doomed.credentials, d.http.clone()).unwrap();
    let job = collector.start(collector.query(Some((past_hour(), 3600))).unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let id = doomed.leader_request.parameters.task_id;
    let leader_admin = AdminClient::new(d.http.clone(), &d.leader.url(), d.leader_admin.clone()).unwrap();
    leader_admin.delete_task(&id).await.unwrap();
    d.start_helper_again();
    let helper_admin = AdminClient::new(d.http.clone(), &d.helper.url(), d.helper_admin.clone()).unwrap();
    helper_admin.delete_task(&id).await.unwrap();

    // The deleted task's job is gone with it.
    let poll = collector.poll(&job).await.unwrap_err();
    assert_eq!(poll.dap_problem(), Some(duet_common::problem::DapProblemType::UnrecognizedTask), "{poll}");
    // The other task collects exactly.
    let collector = Collector::new(&other.credentials, d.http.clone()).unwrap();
    let result = collector.collect(collector.query(Some((past_hour(), 3600))).unwrap(), Duration::from_secs(60)).await;
    let result = result.unwrap();
    assert_eq!((result.report_count, result.result), (10, AggregateResult::Scalar(7)));

    let (leader_db, helper_db) = (open_db(&d.leader_db_url()).await, open_db(&d.helper_db_url()).await);
    let all_leader: Vec<&str> = LEADER_TABLES.iter().copied().chain(["leader_batches", "tasks"]).collect();
    let all_helper: Vec<&str> = HELPER_TABLES.iter().copied().chain(["helper_report_states", "tasks"]).collect();
    let leader_left = wait_until_empty(&leader_db, &all_leader, &id, 60).await;
    let helper_left = wait_until_empty(&helper_db, &all_helper, &id, 60).await;
    assert!(leader_left.iter().all(|n| *n == 0), "leader rows left {all_leader:?}: {leader_left:?}");
    assert!(helper_left.iter().all(|n| *n == 0), "helper rows left {all_helper:?}: {helper_left:?}");
    let other_id = other.leader_request.parameters.task_id;
    assert_eq!(task_rows(&leader_db, &["client_reports"], &other_id).await, [10]);

    // Provisioned again under the same ID: nothing of the old task is there.
    provision(&d, &doomed).await;
    let collector = Collector::new(&doomed.credentials, d.http.clone()).unwrap();
    let job = collector.start(collector.query(Some((past_hour(), 3600))).unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(collector.poll(&job).await.unwrap().is_none(), "the new task holds no reports: nothing to release");
    assert_eq!(task_rows(&leader_db, &["client_reports", "batch_aggregations"], &id).await, [0, 0]);
    leader_db.close().await;
    helper_db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tasks_rows_go_once_its_reports_expire_on_sqlite() {
    a_tasks_rows_go_once_its_reports_expire(false).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tasks_rows_go_once_its_reports_expire_on_postgres() {
    a_tasks_rows_go_once_its_reports_expire(true).await
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_task_during_its_collection_corrupts_nothing_on_sqlite() {
    deleting_a_task_during_its_collection_corrupts_nothing(false).await
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_task_during_its_collection_corrupts_nothing_on_postgres() {
    deleting_a_task_during_its_collection_corrupts_nothing(true).await
}

/// The privacy budget a collection spent stays spent once the garbage collector has deleted the
/// collection job (its result expired): the next collection counts it, and the one past the
/// budget is refused.
async fn the_budget_a_deleted_collection_spent_stays_spent(postgres: bool) {
    use duet_common::dp::DpConfig;
    let d = Deployment::start(gc_options(postgres)).await;
    let mut params = duet_tests::count_task("budget", d.leader.url(), d.helper.url());
    params.vdaf = VdafConfig::Prio3Histogram { length: 3, chunk_length: 1 };
    params.time_precision = 2;
    params.min_batch_size = 5;
    params.dp = Some(DpConfig::laplace("1", Some("2")));
    let mut task = NewTask::generate(params, None);
    task.leader_request.report_expiry_age = Some(EXPIRY_SECONDS);
    task.helper_request.report_expiry_age = Some(EXPIRY_SECONDS);
    provision(&d, &task).await;
    let client = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
    let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();
    let leader_db = open_db(&d.leader_db_url()).await;
    let id = task.leader_request.parameters.task_id;
    let mut spent = Vec::new();
    for round in 0..3 {
        // Each round in a time unit of its own: a collected unit takes no more reports.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = duet_common::clock::Clock::now_seconds(&duet_common::clock::SystemClock);
        let items: Vec<(Measurement, u64)> = (0..5).map(|i| (Measurement::Histogram(i % 3), now)).collect();
        let outcome = client.upload(&items).await.unwrap();
        assert_eq!(outcome.accepted, 5, "round {round}: {:?}", outcome.rejected);
        let query = collector.query(Some((now - now % 2, 2))).unwrap();
        match collector.collect(query, Duration::from_secs(60)).await {
            Ok(result) => {
                assert_eq!(result.report_count, 5);
                spent.push(result.guarantee.budget.expect("a budget").spent);
            }
            Err(e) => {
                assert_eq!(round, 2, "only the third collection is refused: {e}");
                assert_eq!(e.status(), Some(403), "{e}");
                let problem = e.problem().map(|p| p.type_uri.clone()).unwrap_or_default();
                assert_eq!(problem, "urn:duet:params:error:privacyBudgetExhausted", "{e}");
            }
        }
        if round == 0 {
            // The first collection's job goes once its reports expired.
            let left = wait_until_empty(&leader_db, &["collection_jobs"], &id, 60).await;
            assert_eq!(left, [0], "the finished collection job was deleted");
        }
    }
    assert_eq!(spent, [1.0, 2.0], "the deleted job's epsilon is still counted");
    leader_db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_budget_a_deleted_collection_spent_stays_spent_on_sqlite() {
    the_budget_a_deleted_collection_spent_stays_spent(false).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_budget_a_deleted_collection_spent_stays_spent_on_postgres() {
    the_budget_a_deleted_collection_spent_stays_spent(true).await
}
