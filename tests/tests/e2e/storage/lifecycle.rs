//! Garbage collection on each backend, through the stores' own passes with a clock the tests
//! move: what goes once it expired, what a collection in progress keeps, and deleted tasks.

use super::*;
use duet_common::clock::TestClock;
use duet_server::gc::GcSettings;

const PRECISION: u64 = 60;

/// A store on the test's database, on a clock the test moves, at a whole time unit.
async fn on_clock(keep: &Keep) -> (Store, TestClock) {
    let clock = TestClock::at(1_000_000 * PRECISION);
    let store = SqlStore::open(&keep.url(), duet_tests::database_keys()).await.unwrap();
    (Arc::new(store.with_clock(Arc::new(clock.clone()))), clock)
}

fn now_units(clock: &TestClock) -> u64 {
    duet_common::clock::Clock::now_seconds(clock) / PRECISION
}

/// `bytes` as an SQL literal of the backend's.
fn literal(keep: &Keep, bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match keep {
        Keep::Dir(_) => format!("X'{hex}'"),
        Keep::Pg(_) => format!("'\\x{hex}'::bytea"),
    }
}

/// Rows of the task in `table`.
async fn rows(keep: &Keep, table: &str, task: &Task) -> i64 {
    let literal = literal(keep, task.id.as_bytes());
    duet_tests::count_rows(&keep.url(), &format!("SELECT COUNT(*) FROM {table} WHERE task_id = {literal}")).await
}

/// Reports stamped at `time` (units), stored, put into jobs and aggregated.
async fn aggregated_reports(store: &Store, task: &Task, time: u64, n: usize) {
    let reports: Vec<Report> = (0..n).map(|_| report(time)).collect();
    duet_tests::put_reports(&**store, task, &reports).await.unwrap();
    store.create_aggregation_jobs(task, &sizes(100)).await.unwrap();
    for job in store.acquire_aggregation_jobs(10, 60).await.unwrap() {
        let held = store.aggregation_job_reports(&job).await.unwrap();
        store.commit_aggregation_job(task, &job, all_aggregated(task, &held)).await.unwrap();
    }
}

fn settings() -> GcSettings {
    GcSettings::with_grace(3600, None)
}

/// Reports past the expiry age go with their jobs; a batch whose collection is in progress keeps
/// its aggregate (and is collected exactly) until the collection ends, then goes with its
/// collection job and its collected mark. Nothing younger is touched.
#[tokio::test]
async fn expired_reports_go_and_a_collection_in_progress_keeps_its_batch() {
    for (name, _, keep) in backends().await {
        let (store, clock) = on_clock(&keep).await;
        let mut req = task_request(BatchMode::TimeInterval, 3, None, true);
        req.report_expiry_age = Some(2 * PRECISION);
        let task = store.put_task(Role::Leader, &req).await.unwrap();
        let t0 = now_units(&clock);
        aggregated_reports(&store, &task, t0, 3).await;
        let interval = Interval { start: Time::from_units(t0), duration: Duration::from_units(1) };
        let (body, digest) =
            collection_request(Query::TimeInterval(TimeIntervalQueryConfig { batch_interval: interval }));
        let cj = store.insert_collection_job(&task, &body, &digest).await.unwrap();
        let nothing = LeaderStore::collect_garbage(&*store, &settings()).await.unwrap();
        assert_eq!(nothing.total(), 0, "{name}: nothing is old yet: {nothing:?}");

        // Ten units later the reports are long expired; the batch is held by its collection.
        clock.advance(10 * PRECISION);
        aggregated_reports(&store, &task, now_units(&clock), 3).await;
        let report1 = LeaderStore::collect_garbage(&*store, &settings()).await.unwrap();
        assert_eq!(report1.deleted.get("client_reports"), Some(&3), "{name}: {report1:?}");
        assert_eq!(report1.deleted.get("leader_aggregation_jobs"), Some(&1), "{name}: the emptied job: {report1:?}");
        assert_eq!(report1.deleted.get("batch_aggregations"), None, "{name}: {report1:?}");
        assert_eq!(rows(&keep, "client_reports", &task).await, 3, "{name}: the fresh reports stay");
        let row = store.collection_job(&task, &cj).await.unwrap().unwrap();
        let BatchReadiness::Committed { values, .. } = store.commit_collection_batch(&task, &row).await.unwrap() else {
            panic!("{name}: the held batch is collected")
        };
        assert_eq!(values.report_count, 3, "{name}: exactly");
        store.end_collection_job(&task, &cj, Ok(vec![1])).await.unwrap();

        // The collection over, its batch, mark and job go; the fresh batch stays.
        let report2 = LeaderStore::collect_garbage(&*store, &settings()).await.unwrap();
        assert_eq!(report2.deleted.get("batch_aggregations"), Some(&1), "{name}: {report2:?}");
        assert_eq!(report2.deleted.get("collected_batches"), Some(&1), "{name}: {report2:?}");
        assert_eq!(report2.deleted.get("collection_jobs"), Some(&1), "{name}: {report2:?}");
        assert_eq!(rows(&keep, "batch_aggregations", &task).await, 1, "{name}: the fresh bucket");
        assert_eq!(report2.oldest_report_age_seconds, Some(0), "{name}");
        let again = LeaderStore::collect_garbage(&*store, &settings()).await.unwrap();
        assert_eq!(again.total(), 0, "{name}: a second pass finds nothing: {again:?}");
    }
}

/// A leader-selected batch whose oldest report expired is closed for good and its rows go,
/// unless a collection in progress has chosen it.
#[tokio::test]
async fn leader_selected_batches_whose_reports_expired_are_retired() {
    for (name, _, keep) in backends().await {
        let (store, clock) = on_clock(&keep).await;
        let mut req = task_request(BatchMode::LeaderSelected, 2, Some(2), true);
        req.report_expiry_age = Some(2 * PRECISION);
        let task = store.put_task(Role::Leader, &req).await.unwrap();
        // Two full batches; a collection claims the first.
        aggregated_reports(&store, &task, now_units(&clock), 4).await;
        let (body, digest) = collection_request(Query::LeaderSelected(LeaderSelectedQueryConfig {}));
        let cj = store.insert_collection_job(&task, &body, &digest).await.unwrap();
        let row = store.collection_job(&task, &cj).await.unwrap().unwrap();
        let BatchReadiness::Committed { batch: Batch::LeaderSelected(held), .. } =
            store.commit_collection_batch(&task, &row).await.unwrap()
        else {
            panic!("{name}: a batch is ready")
        };

        clock.advance(10 * PRECISION);
        let report = LeaderStore::collect_garbage(&*store, &settings()).await.unwrap();
        assert_eq!(report.deleted.get("batch_aggregations"), Some(&1), "{name}: the unclaimed batch: {report:?}");
        assert_eq!(report.deleted.get("leader_batches"), Some(&1), "{name}: {report:?}");
        assert_eq!(report.deleted.get("client_reports"), Some(&4), "{name}: {report:?}");
        assert_eq!(rows(&keep, "leader_batches", &task).await, 1, "{name}: the held batch stays");
        // Nothing is ready for a new collection: the retired batch is never picked.
        let (body2, digest2) = {
            let (b, mut d) = collection_request(Query::LeaderSelected(LeaderSelectedQueryConfig {}));
            d[0] ^= 1;
            (b, d)
        };
        store.end_collection_job(&task, &cj, Ok(vec![1])).await.unwrap();
        assert!(store.delete_collection_job(&task, &cj).await.unwrap());
        let next = store.insert_collection_job(&task, &body2, &digest2).await.unwrap();
        let row = store.collection_job(&task, &next).await.unwrap().unwrap();
        assert!(matches!(store.commit_collection_batch(&task, &row).await.unwrap(), BatchReadiness::Wait(_)), "{name}");
        // Its collection over, the held batch goes too.
        store.delete_collection_job(&task, &next).await.unwrap();
        LeaderStore::collect_garbage(&*store, &settings()).await.unwrap();
        assert_eq!(rows(&keep, "leader_batches", &task).await, 0, "{name}: {held}");
        assert_eq!(rows(&keep, "batch_aggregations", &task).await, 0, "{name}");
    }
}

/// A task with three aggregated reports, deleted: its store, clock, request and task.
async fn deleted_task_with_reports(keep: &Keep) -> (Store, TestClock, AggregatorTaskRequest, Arc<Task>) {
    let (store, clock) = on_clock(keep).await;
    let req = task_request(BatchMode::TimeInterval, 3, None, true);
    let task = store.put_task(Role::Leader, &req).await.unwrap();
    aggregated_reports(&store, &task, now_units(&clock), 3).await;
    assert!(store.delete_task(&task.id).await.unwrap());
    (store, clock, req, task)
}

/// A deleted task's rows stay for the grace period: provisioning the identical task restores it
/// with them; a different task under the ID starts empty; after the grace period the collector
/// deletes them.
#[tokio::test]
async fn deleted_tasks_are_restored_within_the_grace_period_and_purged_after() {
    for (name, _, keep) in backends().await {
        let (store, clock, req, task) = deleted_task_with_reports(&keep).await;
        let within = LeaderStore::collect_garbage(&*store, &settings()).await.unwrap();
        assert_eq!(within.total(), 0, "{name}: within the grace period: {within:?}");
        // Restored, identical: its rows are its own again.
        store.put_task(Role::Leader, &req).await.unwrap();
        assert_eq!(rows(&keep, "client_reports", &task).await, 3, "{name}");
        // Deleted again and provisioned with another verify key: a new task, empty.
        assert!(store.delete_task(&task.id).await.unwrap());
        let mut other = req.clone();
        other.vdaf_verify_key = VerifyKey::random().to_base64();
        let new = store.put_task(Role::Leader, &other).await.unwrap();
        assert_eq!(rows(&keep, "client_reports", &new).await, 0, "{name}");
        assert_eq!(rows(&keep, "batch_aggregations", &new).await, 0, "{name}");
        aggregated_reports(&store, &new, now_units(&clock), 2).await;
        // Deleted for good: after the grace period, everything goes.
        assert!(store.delete_task(&new.id).await.unwrap());
        clock.advance(3601);
        let purged = LeaderStore::collect_garbage(&*store, &settings()).await.unwrap();
        assert_eq!(purged.deleted.get("client_reports"), Some(&2), "{name}: {purged:?}");
        for table in ["client_reports", "leader_aggregation_jobs", "batch_aggregations", "deleted_tasks"] {
            let left = rows(&keep, table, &new).await;
            assert_eq!(left, i64::from(table == "deleted_tasks"), "{name}: {table} (the ID is remembered a while)");
        }
        clock.advance(120);
        LeaderStore::collect_garbage(&*store, &settings()).await.unwrap();
        assert_eq!(rows(&keep, "deleted_tasks", &new).await, 0, "{name}: then forgotten");
    }
}

/// Runs `sql` over a connection of the test's own.
async fn execute(keep: &Keep, sql: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&keep.url()).await.unwrap();
    sqlx::query(sql).execute(&pool).await.unwrap();
    pool.close().await;
}

/// A purge that began is never undone by a restore, which would bring back part of the task's
/// rows (replay records gone, aggregates kept: a report counted twice): the identical task
/// provisioned then starts empty. And a purge's steps stop once a task of the ID is provisioned
/// again: its rows are the new task's.
#[tokio::test]
async fn a_purge_once_begun_is_finished_and_never_reaches_a_provisioned_task() {
    for (name, _, keep) in backends().await {
        let (store, clock, req, task) = deleted_task_with_reports(&keep).await;
        // What a pass that claimed the deletion and stopped half-way leaves: its claim, and
        // one of three reports deleted.
        execute(&keep, &format!("UPDATE deleted_tasks SET fingerprint = {}", literal(&keep, b"purging"))).await;
        execute(&keep, "DELETE FROM client_report_payloads WHERE report_row = (SELECT MIN(report_row) FROM client_report_payloads)").await;
        assert_eq!(rows(&keep, "client_reports", &task).await, 3, "{name}");
        store.put_task(Role::Leader, &req).await.unwrap();
        for table in ["client_reports", "leader_aggregation_jobs", "batch_aggregations", "deleted_tasks"] {
            assert_eq!(rows(&keep, table, &task).await, 0, "{name}: {table}: provisioned empty, not half restored");
        }
        // The provisioned task's own rows are out of a purge's reach.
        aggregated_reports(&store, &task, now_units(&clock), 2).await;
        let mut report = duet_server::gc::GcReport::default();
        let purged = store.purge_task_rows(&task.id, 1, &mut report).await.unwrap();
        assert_eq!(purged, 0, "{name}: {report:?}");
        assert_eq!(rows(&keep, "client_reports", &task).await, 2, "{name}");
    }
}

/// A job abandoned with its reports back in the pool has no report left, yet stays for the
/// grace period (its error is what the operator reads); only expiry makes an emptied job go
/// early.
#[tokio::test]
async fn an_abandoned_job_stays_for_the_grace_period() {
    for (name, _, keep) in backends().await {
        let (store, clock) = on_clock(&keep).await;
        let task = store.put_task(Role::Leader, &task_request(BatchMode::TimeInterval, 3, None, true)).await.unwrap();
        let reports: Vec<Report> = (0..3).map(|_| report(now_units(&clock))).collect();
        duet_tests::put_reports(&*store, &task, &reports).await.unwrap();
        store.create_aggregation_jobs(&task, &sizes(100)).await.unwrap();
        let job = store.acquire_aggregation_jobs(1, 60).await.unwrap().remove(0);
        let back = AbandonedReports::BackToPool { max_hold_seconds: 1 };
        store.abandon_aggregation_job(&task, &job, "the helper refused it", back).await.unwrap();
        let pass = LeaderStore::collect_garbage(&*store, &settings()).await.unwrap();
        assert_eq!(pass.total(), 0, "{name}: {pass:?}");
        assert_eq!(rows(&keep, "leader_aggregation_jobs", &task).await, 1, "{name}");
        clock.advance(3601);
        let pass = LeaderStore::collect_garbage(&*store, &settings()).await.unwrap();
        assert_eq!(pass.deleted.get("leader_aggregation_jobs"), Some(&1), "{name}: after the grace period");
        assert_eq!(rows(&keep, "client_reports", &task).await, 3, "{name}: its reports wait in the pool");
    }
}
