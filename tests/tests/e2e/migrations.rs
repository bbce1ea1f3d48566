//! Schema migrations carry stored data over: a leader database written by the schema before
//! report payloads had a table of their own (version 6) is opened by the current servers, and
//! every report it held keeps its state, its bytes and its place in the replay check; and the
//! secrets a database written before sealing holds in the clear are sealed (or digested) when
//! a server opens it, then open as they were, and are sealed again when the key rotates. A
//! SQLite file written without auto-vacuum is converted to incremental auto-vacuum.

use duet_common::messages::*;
use duet_common::Encode;
use duet_leader::store::{open, JobSizes};
use duet_server::sql::Backend;
use duet_tests::{count_rows, put_reports, storage_task_request, stub_report, PgDatabase};
use sqlx::{Executor, Row};

/// A database at `url` at schema `version`, as the servers of that version left it.
async fn database_at(backend: Backend, url: &str, version: i64) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    pool.execute("CREATE TABLE duet_migrations (version BIGINT PRIMARY KEY, applied_at_seconds BIGINT NOT NULL)")
        .await
        .unwrap();
    for (v, sql) in backend.migrations().iter().filter(|(v, _)| *v <= version) {
        sqlx::raw_sql(sql).execute(&pool).await.unwrap();
        sqlx::query("INSERT INTO duet_migrations (version, applied_at_seconds) VALUES ($1, 0)")
            .bind(v)
            .execute(&pool)
            .await
            .unwrap();
    }
    pool
}

/// Writes a version-6 database at `url` holding `pending` unaggregated reports and `settled`
/// aggregated ones (their payloads already emptied, as version 6 did) of `task_id`.
async fn version_6_database(backend: Backend, url: &str, task_id: &TaskId, pending: &[Report], settled: &[Report]) {
    let pool = database_at(backend, url, 6).await;
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
        if backend == Backend::Sqlite {
            assert_eq!(count_rows(url, "PRAGMA auto_vacuum").await, 0, "written without auto-vacuum");
        }

        let store = open(url, duet_tests::database_keys()).await.unwrap();
        if backend == Backend::Sqlite {
            // Converted on opening: the pages of deleted rows go back to the file system.
            assert_eq!(count_rows(url, "PRAGMA auto_vacuum").await, 2, "incremental auto-vacuum");
        }
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

/// Writes the tasks and HPKE key of a server of schema version 10, secrets in the clear.
async fn clear_secrets(pool: &sqlx::AnyPool, role: Role, req: &duet_common::task::AggregatorTaskRequest) {
    sqlx::query(
        "INSERT INTO tasks (task_id, role, parameters, vdaf_verify_key, aggregator_auth_token,
         collector_auth_token, collector_hpke_config, max_batch_size, created_at_seconds)
         VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, 0)",
    )
    .bind(req.parameters.task_id.as_bytes().as_slice())
    .bind(role as i64)
    .bind(serde_json::to_string(&req.parameters).unwrap())
    .bind(req.verify_key().unwrap().as_bytes().to_vec())
    .bind(&req.aggregator_auth_token)
    .bind(req.collector_auth_token.clone())
    .bind(req.collector_config().unwrap().get_encoded().unwrap())
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn secrets_stored_in_the_clear_are_sealed_when_a_server_opens_the_database() {
    use duet_common::auth::AuthenticationToken;
    use duet_common::hpke::HpkeKeypair;
    use duet_leader::store::{AggregatorToken, StoreError};
    use duet_server::sealing::{is_sealed, DatabaseKeys};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let pg = PgDatabase::create().await;
    let sqlite_url = format!("sqlite:{}?mode=rwc", dir.path().join("clear.db").display());
    for (backend, url) in [(Backend::Sqlite, sqlite_url.as_str()), (Backend::Postgres, pg.url.as_str())] {
        let leader_req = storage_task_request("sealing, leader");
        let mut helper_req = storage_task_request("sealing, helper");
        helper_req.collector_auth_token = None;
        let keypair = HpkeKeypair::generate_default(HpkeConfigId(7));
        let pool = database_at(backend, url, 10).await;
        clear_secrets(&pool, Role::Leader, &leader_req).await;
        clear_secrets(&pool, Role::Helper, &helper_req).await;
        sqlx::query(
            "INSERT INTO hpke_keys (config_id, config, private_key, state, created_at_seconds, state_changed_at_seconds)
             VALUES (7, $1, $2, 'active', 0, 0)",
        )
        .bind(keypair.config().get_encoded().unwrap())
        .bind(keypair.private_key().as_bytes().to_vec())
        .execute(&pool)
        .await
        .unwrap();

        let old_key = DatabaseKeys::generate();
        let store = open(url, Arc::new(DatabaseKeys::parse(&old_key).unwrap())).await.unwrap();
        // Nothing is left in the clear: verify keys and the leader's token sealed, the tokens
        // a server only checks digested, the private key sealed.
        let rows =
            sqlx::query("SELECT vdaf_verify_key, aggregator_auth_token, collector_auth_token FROM tasks ORDER BY role")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(rows.len(), 2, "{backend:?}");
        let stored: Vec<(Vec<u8>, String, Option<String>)> =
            rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
        for ((key, aggregator, collector), req) in stored.iter().zip([&leader_req, &helper_req]) {
            assert!(is_sealed(key), "{backend:?}: verify key sealed");
            assert!(!aggregator.contains(&req.aggregator_auth_token), "{backend:?}");
            if let Some(token) = &req.collector_auth_token {
                assert!(collector.as_deref().unwrap().starts_with("sha256:"), "{backend:?}");
                assert!(!collector.as_deref().unwrap().contains(token.as_str()), "{backend:?}");
            }
        }
        assert!(stored[0].1.starts_with("sealed:"), "{backend:?}: the leader presents its token");
        assert!(stored[1].1.starts_with("sha256:"), "{backend:?}: the helper only checks it");
        let private = |pool: &sqlx::AnyPool| {
            let pool = pool.clone();
            async move {
                let row = sqlx::query("SELECT private_key FROM hpke_keys WHERE config_id = 7").fetch_one(&pool).await;
                row.unwrap().get::<Vec<u8>, _>(0)
            }
        };
        let sealed_once = private(&pool).await;
        assert!(is_sealed(&sealed_once), "{backend:?}: private key sealed");

        // And every secret opens as it was.
        let leader = store.task(&leader_req.parameters.task_id).await.unwrap();
        assert_eq!(leader.verify_key.as_bytes(), leader_req.verify_key().unwrap().as_bytes(), "{backend:?}");
        assert_eq!(leader.presented_token().unwrap().expose(), leader_req.aggregator_auth_token, "{backend:?}");
        let collector_token = AuthenticationToken::new(leader_req.collector_auth_token.clone().unwrap()).unwrap();
        assert!(leader.collector_token.as_ref().unwrap().matches(&collector_token), "{backend:?}");
        let helper = store.task(&helper_req.parameters.task_id).await.unwrap();
        let token = AuthenticationToken::new(helper_req.aggregator_auth_token.clone()).unwrap();
        assert!(matches!(&helper.aggregator_token, AggregatorToken::Checked(h) if h.matches(&token)), "{backend:?}");
        assert!(helper.presented_token().is_err(), "{backend:?}: the helper holds no token to present");
        let keys = store.hpke_keypairs().await.unwrap();
        let opened = keys.iter().find(|(k, _)| k.config().id == HpkeConfigId(7)).expect("key 7").0.clone();
        assert_eq!(opened.private_key().as_bytes(), keypair.private_key().as_bytes(), "{backend:?}");
        // Provisioning the same task again is a no-op; with other secrets, a conflict.
        store.put_task(Role::Leader, &leader_req).await.unwrap();
        let mut other = leader_req.clone();
        other.aggregator_auth_token = AuthenticationToken::random().expose().into();
        assert!(matches!(store.put_task(Role::Leader, &other).await, Err(StoreError::Conflict(_))), "{backend:?}");
        drop(store);

        // Rotation: a new key first, the old one after. Opening seals again under the new key,
        // after which the new key alone opens everything, and the old key alone nothing.
        let new_key = DatabaseKeys::generate();
        let rotated = format!("{new_key},{old_key}");
        drop(open(url, Arc::new(DatabaseKeys::parse(&rotated).unwrap())).await.unwrap());
        assert_ne!(private(&pool).await, sealed_once, "{backend:?}: sealed again");
        let store = open(url, Arc::new(DatabaseKeys::parse(&new_key).unwrap())).await.unwrap();
        let leader = store.task(&leader_req.parameters.task_id).await.unwrap();
        assert_eq!(leader.verify_key.as_bytes(), leader_req.verify_key().unwrap().as_bytes(), "{backend:?}");
        drop(store);
        let err = open(url, Arc::new(DatabaseKeys::parse(&old_key).unwrap())).await.err().expect("refused");
        assert!(err.to_string().contains("sealed under a database key that is not configured"), "{backend:?}: {err}");
        pool.close().await;
    }
}
