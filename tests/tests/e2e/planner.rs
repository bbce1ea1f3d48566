//! PostgreSQL's plans for the leader's per-report statements: they must find reports through
//! the primary key however the table was filled (a burst of uploads, autovacuum off), or every
//! job created reads all of a task's reports.

use duet_common::messages::*;
use duet_leader::store::*;
use duet_tests::{storage_task_request, stub_report, PgDatabase};
use sqlx::{Connection, Executor, Row};

/// The plan PostgreSQL picks for settling a list of reports by ID, as `EXPLAIN` prints it.
async fn plan_of_update_by_ids(conn: &mut sqlx::PgConnection, task: &TaskId, ids: &[ReportId]) -> String {
    let list: Vec<String> = ids.iter().map(|id| format!("'\\x{}'::bytea", hex(id.as_bytes()))).collect();
    let sql = format!(
        "EXPLAIN UPDATE client_reports SET state = 'in_job' WHERE task_id = '\\x{}'::bytea AND report_id IN ({})",
        hex(task.as_bytes()),
        list.join(", ")
    );
    conn.fetch_all(sql.as_str()).await.unwrap().iter().map(|r| r.get::<String, _>(0)).collect::<Vec<_>>().join("\n")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn the_leader_keeps_postgres_statistics_so_reports_are_found_by_key() {
    let db = PgDatabase::create().await;
    let store = open(&db.url, duet_tests::database_keys()).await.unwrap();
    let task = store.put_task(Role::Leader, &storage_task_request("planner")).await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    // The server's autovacuum, if on, could analyse the table in the middle of the test (and
    // reset the count of changes the test waits for): this database's table goes without it.
    sqlx::query("ALTER TABLE client_reports SET (autovacuum_enabled = off)").execute(&mut conn).await.unwrap();
    let reports: Vec<Report> = (0..4000).map(|i| stub_report(1000 + i / 100, 64)).collect();
    for chunk in reports.chunks(500) {
        duet_tests::put_reports(&*store, &task, chunk).await.unwrap();
    }
    let probe: Vec<ReportId> = reports[..200].iter().map(|r| r.report_metadata.report_id).collect();
    // Never analysed (this server's autovacuum is off, or too slow for a burst): PostgreSQL
    // guesses, and reads the task's whole key range filtering by the list. This is the
    // premise of the test; were it planned well anyway, the test would prove nothing.
    let auto =
        conn.fetch_one("SELECT last_autoanalyze IS NULL FROM pg_stat_user_tables WHERE relname = 'client_reports'");
    if auto.await.unwrap().get::<bool, _>(0) {
        let before = plan_of_update_by_ids(&mut conn, &task.id, &probe).await;
        assert!(before.contains("Filter: (report_id = ANY"), "planned by key without statistics:\n{before}");
    }

    // The statistics server hears of the uploads within a second or so (up to 10 s when the
    // uploading connection went idle); the leader looks when it creates jobs.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let row = conn
            .fetch_one("SELECT n_mod_since_analyze FROM pg_stat_user_tables WHERE relname = 'client_reports'")
            .await
            .unwrap();
        if row.get::<i64, _>(0) >= 4000 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "PostgreSQL never counted the uploads");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let sizes = JobSizes { min: 1, max: 100, max_delay_seconds: 0, max_jobs_per_pass: 1 };
    assert_eq!(store.create_aggregation_jobs(&task, &sizes).await.unwrap(), 1);
    let row = conn
        .fetch_one(
            "SELECT analyze_count, n_mod_since_analyze FROM pg_stat_user_tables WHERE relname = 'client_reports'",
        )
        .await
        .unwrap();
    assert_eq!(row.get::<i64, _>(0), 1, "the job creator analysed the table once");
    let after = plan_of_update_by_ids(&mut conn, &task.id, &probe[100..110]).await;
    assert!(after.contains("client_reports_pkey"), "{after}");
    assert!(after.contains("report_id = ANY"), "the IDs are part of the key lookup:\n{after}");
    assert!(!after.contains("Filter: (report_id"), "{after}");

    // Right after an analysis the table is current: the next pass does not analyse again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(store.create_aggregation_jobs(&task, &sizes).await.unwrap(), 1);
    let row =
        conn.fetch_one("SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'client_reports'").await.unwrap();
    assert_eq!(row.get::<i64, _>(0), 1);
    drop(conn);
    drop(store);
}
