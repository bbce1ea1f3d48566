//! Schema migrations carry stored data over: a leader database written by the schema before
//! report payloads had a table of their own (version 6) is opened by the current servers, and
//! every report it held keeps its state, its bytes and its place in the replay check.

use duet_common::messages::*;
use duet_common::Encode;
use duet_leader::store::{open, JobSizes};
use duet_server::sql::Backend;
use duet_tests::{count_rows, put_reports, storage_task_request, stub_report, PgDatabase};
use sqlx::Executor;

/// Writes a version-6 database at `url` holding `pending` unaggregated reports and `settled`
/// aggregated ones (their payloads already emptied, as version 6 did) of `task_id`.
async fn version_6_database(backend: Backend, url: &str, task_id: &TaskId, pending: &[Report], settled: &[Report]) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    pool.execute("CREATE TABLE duet_migrations (version BIGINT PRIMARY KEY, applied_at_seconds BIGINT NOT NULL)")
        .await
        .unwrap();
    for (version, sql) in backend.migrations().iter().filter(|(version, _)| *version <= 6) {
        sqlx::raw_sql(sql).execute(&pool).await.unwrap();
        sqlx::query("INSERT INTO duet_migrations (version, applied_at_seconds) VALUES ($1, 0)")
            .bind(version)
            .execute(&pool)
            .await
            .unwrap();
    }
    let rows = pending.iter().map(|r| (r, "unaggregated")).chain(settled.iter().map(|r| (r, "aggregated")));
    for (report, state) in rows {
        let payload = |bytes: Vec<u8>| if state == "aggregated" { Vec::new() } else { bytes };
        sqlx::query(
            "INSERT INTO client_reports (task_id, report_id, report_time, report_metadata, public_share,
             leader_encrypted_input_share, helper_encrypted_input_share, state, created_at_seconds)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 100)",
        )
        .bind(task_id.as_bytes().as_slice())
        .bind(report.report_metadata.report_id.as_bytes().as_slice())
        .bind(report.report_metadata.time.units() as i64)
        .bind(report.report_metadata.get_encoded().unwrap())
        .bind(payload(report.public_share.clone()))
        .bind(payload(report.leader_encrypted_input_share.get_encoded().unwrap()))
        .bind(payload(report.helper_encrypted_input_share.get_encoded().unwrap()))
        .bind(state)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
}

#[tokio::test]
async fn reports_stored_before_payloads_had_their_own_table_survive_the_migration() {
    let dir = tempfile::tempdir().unwrap();
    let pg = PgDatabase::create().await;
    let sqlite_url = format!("sqlite:{}?mode=rwc", dir.path().join("leader.db").display());
    for (backend, url) in [(Backend::Sqlite, sqlite_url.as_str()), (Backend::Postgres, pg.url.as_str())] {
        let mut request = storage_task_request("migration");
        let task_id = request.parameters.task_id;
        request.parameters.min_batch_size = 1;
        // Each a different size, so that one report's bytes cannot pass for another's.
        let pending: Vec<Report> = (0..5).map(|i| stub_report(1000, 40 + 300 * i)).collect();
        let settled: Vec<Report> = (0..3).map(|_| stub_report(1000, 40)).collect();
        version_6_database(backend, url, &task_id, &pending, &settled).await;

        let store = open(url).await.unwrap();
        let newest = backend.migrations().last().unwrap().0;
        assert_eq!(count_rows(url, "SELECT MAX(version) FROM duet_migrations").await, newest, "{backend:?}");
        let task = store.put_task(Role::Leader, &request).await.unwrap();
        assert_eq!(count_rows(url, "SELECT COUNT(*) FROM client_reports").await, 8, "{backend:?}");
        assert_eq!(count_rows(url, "SELECT COUNT(*) FROM client_report_payloads").await, 5, "{backend:?}");

        // Every report, settled or not, is still a replay; a new one is stored beside them.
        let fresh = stub_report(1000, 40);
        let again: Vec<&Report> = pending.iter().chain(&settled).chain([&fresh]).collect();
        let answers = put_reports(&*store, &task, again).await.unwrap();
        let mut expected = vec![Some(ReportError::ReportReplayed); 8];
        expected.push(None);
        assert_eq!(answers, expected, "{backend:?}");

        // The pending reports and the new one go into a job, byte for byte as uploaded.
        let sizes = JobSizes { min: 1, max: 100, max_delay_seconds: 0, max_jobs_per_pass: 1 };
        assert_eq!(store.create_aggregation_jobs(&task, &sizes).await.unwrap(), 1, "{backend:?}");
        let job = store.acquire_aggregation_jobs(1, 60).await.unwrap().remove(0);
        let held = store.aggregation_job_reports(&job).await.unwrap();
        assert_eq!(held.len(), 6, "{backend:?}");
        for sent in pending.iter().chain([&fresh]) {
            let got = held.iter().find(|r| r.metadata.report_id == sent.report_metadata.report_id).unwrap();
            assert_eq!(got.metadata, sent.report_metadata, "{backend:?}");
            assert_eq!(got.public_share, sent.public_share, "{backend:?}");
            assert_eq!(got.leader_share, sent.leader_encrypted_input_share, "{backend:?}");
            assert_eq!(got.helper_share, sent.helper_encrypted_input_share, "{backend:?}");
        }
    }
}
