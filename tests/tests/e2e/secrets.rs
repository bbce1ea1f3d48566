//! Secrets stay secret: after a whole run with both servers logging at trace level, no admin
//! token, aggregator or collector token, verify key, or HPKE private key appears in any log
//! line, and none appears in the `Debug` output of the types that hold them; and neither
//! server's database file holds any of them in the clear.

use duet_client::collect::Collector;
use duet_client::upload::Client;
use duet_common::messages::BatchMode;
use duet_common::vdaf::{Measurement, VdafConfig};
use duet_tests::{past_hour, Deployment, LeaderOptions};
use sqlx::Row;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The spellings a secret could leak in.
fn spellings(bytes: &[u8]) -> Vec<String> {
    use base64::Engine;
    vec![
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
        base64::engine::general_purpose::STANDARD.encode(bytes),
        bytes.iter().map(|b| format!("{b:02x}")).collect(),
        format!("{bytes:?}"),
    ]
}

/// A server's HPKE private key as its database holds it, opened with the tests' database key.
fn open_private_key(config: &[u8], sealed: &[u8]) -> Vec<u8> {
    use duet_server::sealing::SealedColumn;
    duet_tests::database_keys().open(SealedColumn::HpkePrivateKey, config, sealed).expect("sealed").to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_in_any_log_line_or_debug_output() {
    let logs = Arc::new(Mutex::new(Vec::new()));
    let d = Deployment::start(LeaderOptions { capture_logs: Some(logs.clone()), ..LeaderOptions::default() }).await;
    let task = d.create_task(VdafConfig::Prio3Count, BatchMode::TimeInterval, 5, None, None).await;
    let client = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
    let items: Vec<_> = (0..6).map(|_| (Measurement::Count(true), past_hour())).collect();
    client.upload(&items).await.unwrap();
    let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();
    let result = collector.collect(collector.query(Some((past_hour(), 3600))).unwrap(), Duration::from_secs(60)).await;
    assert_eq!(result.unwrap().report_count, 6);
    // A wrong token too, so that refusals are logged.
    let _ = d.http.get(format!("{}admin/tasks", d.leader.url())).bearer_auth("not-the-admin-token").send().await;

    let mut secrets: Vec<(String, String)> = vec![
        ("leader admin token".into(), d.leader_admin.expose().into()),
        ("helper admin token".into(), d.helper_admin.expose().into()),
        ("aggregator token".into(), task.leader_request.aggregator_auth_token.clone()),
        ("collector token".into(), task.credentials.collector_auth_token.clone()),
        ("verify key".into(), task.leader_request.vdaf_verify_key.clone()),
        ("collector private key".into(), task.credentials.hpke_private_key.clone()),
    ];
    let vk = duet_common::vdaf::VerifyKey::from_base64(&task.leader_request.vdaf_verify_key).unwrap();
    for s in spellings(vk.as_bytes()) {
        secrets.push(("verify key bytes".into(), s));
    }
    // The servers' own HPKE private keys, read from their databases.
    for (who, pool) in [
        ("leader", d.leader_db().await),
        ("helper", {
            sqlx::any::install_default_drivers();
            sqlx::AnyPool::connect(&format!("sqlite:{}?mode=ro", d.dir.path().join("helper.db").display()))
                .await
                .unwrap()
        }),
    ] {
        for row in sqlx::query("SELECT config, private_key FROM hpke_keys").fetch_all(&pool).await.unwrap() {
            let key = open_private_key(&row.get::<Vec<u8>, _>(0), &row.get::<Vec<u8>, _>(1));
            for s in spellings(&key) {
                secrets.push((format!("{who} HPKE private key"), s));
            }
        }
    }

    let lines = logs.lock().unwrap().clone();
    assert!(lines.len() > 50, "trace logging was on ({} lines)", lines.len());
    for (what, secret) in &secrets {
        for line in &lines {
            assert!(!line.contains(secret.as_str()), "{what} leaked into a log line: {line}");
        }
    }

    let debug = [
        format!("{:?}", task.leader_request),
        format!("{:?}", task.helper_request),
        format!("{:?}", task.credentials),
        format!("{:?}", task.credentials.keypair().unwrap()),
        format!("{vk:?}"),
        format!("{:?}", d.leader_admin),
        format!(
            "{:?}",
            duet_server::storage::Task::from_request(duet_common::messages::Role::Leader, &task.leader_request)
                .unwrap()
        ),
    ];
    for (what, secret) in &secrets {
        for text in &debug {
            assert!(!text.contains(secret.as_str()), "{what} appears in Debug output: {text}");
        }
    }
}

/// Every file of a SQLite database (the main file and its write-ahead log).
fn database_bytes(path: &std::path::Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    let wal = std::path::PathBuf::from(format!("{}-wal", path.display()));
    bytes.extend(std::fs::read(wal).unwrap_or_default());
    bytes
}

/// What a backup of each database holds: a SQLite database's files, or a PostgreSQL database's
/// `pg_dump` (in which a `bytea` value is written in hex, so the search looks for that too).
fn backup_bytes(d: &Deployment, postgres: bool, who: &str) -> Vec<u8> {
    let url = db_url(d, who);
    if !postgres {
        return database_bytes(std::path::Path::new(url.trim_start_matches("sqlite:")));
    }
    let dump = std::process::Command::new("pg_dump").arg("--dbname").arg(&url).output().expect("pg_dump runs");
    assert!(dump.status.success(), "pg_dump: {}", String::from_utf8_lossy(&dump.stderr));
    dump.stdout
}

/// The database URL of the deployment's `who` ("leader" or "helper").
fn db_url(d: &Deployment, who: &str) -> String {
    if who == "leader" {
        d.leader_db_url()
    } else {
        d.helper_db_url()
    }
}

fn hex(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().flat_map(|b| format!("{b:02x}").into_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn neither_database_file_holds_a_secret_in_the_clear() {
    no_secret_in_the_clear_in_a_backup(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn neither_postgres_database_dump_holds_a_secret_in_the_clear() {
    no_secret_in_the_clear_in_a_backup(true).await;
}

async fn no_secret_in_the_clear_in_a_backup(postgres: bool) {
    let mut d = Deployment::start(LeaderOptions { postgres, ..LeaderOptions::default() }).await;
    let task = d.create_task(VdafConfig::Prio3Count, BatchMode::TimeInterval, 5, None, None).await;
    // A second HPKE key on the leader, so that the rotation path stores one too.
    let added = d
        .http
        .post(format!("{}admin/hpke_keys", d.leader.url()))
        .bearer_auth(d.leader_admin.expose())
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201, "{}", added.text().await.unwrap());
    let client = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
    let items: Vec<_> = (0..6).map(|_| (Measurement::Count(true), past_hour())).collect();
    client.upload(&items).await.unwrap();
    let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();
    let result = collector.collect(collector.query(Some((past_hour(), 3600))).unwrap(), Duration::from_secs(60)).await;
    assert_eq!(result.unwrap().report_count, 6);

    let mut secrets: Vec<(String, Vec<u8>)> = vec![
        ("aggregator token".into(), task.leader_request.aggregator_auth_token.clone().into_bytes()),
        ("collector token".into(), task.credentials.collector_auth_token.clone().into_bytes()),
        ("verify key (base64)".into(), task.leader_request.vdaf_verify_key.clone().into_bytes()),
        ("leader admin token".into(), d.leader_admin.expose().as_bytes().to_vec()),
        ("helper admin token".into(), d.helper_admin.expose().as_bytes().to_vec()),
    ];
    let vk = duet_common::vdaf::VerifyKey::from_base64(&task.leader_request.vdaf_verify_key).unwrap();
    secrets.push(("verify key".into(), vk.as_bytes().to_vec()));
    let mut keys = 0;
    for who in ["leader", "helper"] {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&db_url(&d, who)).await.unwrap();
        for row in sqlx::query("SELECT config, private_key FROM hpke_keys").fetch_all(&pool).await.unwrap() {
            let private = open_private_key(&row.get::<Vec<u8>, _>(0), &row.get::<Vec<u8>, _>(1));
            secrets.push((format!("{who} HPKE private key"), private));
            keys += 1;
        }
        pool.close().await;
    }
    assert_eq!(keys, 3, "the leader's two keys and the helper's one");
    // Restarted, each server opens what it sealed (the leader its task's secrets, to present
    // and check tokens; both their HPKE keys).
    d.restart();
    let id = task.credentials.task.task_id;
    let shown = d
        .http
        .get(format!("{}admin/tasks/{id}", d.leader.url()))
        .bearer_auth(d.leader_admin.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(shown.status(), 200, "{}", shown.text().await.unwrap());
    assert_eq!(d.http.get(format!("{}hpke_config", d.helper.url())).send().await.unwrap().status(), 200);
    for file in ["leader", "helper"] {
        let bytes = backup_bytes(&d, postgres, file);
        // The right backups: each holds the task, by its ID (no secret).
        let holds = |value: &[u8]| bytes.windows(value.len()).any(|w| w == value);
        assert!(holds(id.as_bytes()) || holds(&hex(id.as_bytes())), "{file}'s backup holds the task");
        for (what, secret) in &secrets {
            assert!(secret.len() >= 16, "{what} is a real secret");
            assert!(!holds(secret) && !holds(&hex(secret)), "{file}'s backup holds the {what} in the clear");
        }
    }
}
