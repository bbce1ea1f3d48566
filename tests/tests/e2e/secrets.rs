//! Secrets stay secret: after a whole run with both servers logging at trace level, no admin
//! token, aggregator or collector token, verify key, or HPKE private key appears in any log
//! line, and none appears in the `Debug` output of the types that hold them.

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
        for row in sqlx::query("SELECT private_key FROM hpke_keys").fetch_all(&pool).await.unwrap() {
            let key: Vec<u8> = row.get(0);
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
