//! SQLite's write-ahead log stays bounded while readers overlap every commit (a busy server),
//! where SQLite's own passive checkpoints never complete and the log would grow without end.

use duet_common::auth::AuthenticationToken;
use duet_common::hpke::HpkeKeypair;
use duet_common::messages::*;
use duet_common::server::storage::*;
use duet_common::task::{hpke_config_to_b64, AggregatorTaskRequest, TaskParameters};
use duet_common::time::Time;
use duet_common::vdaf::{VdafConfig, VerifyKey};
use sqlx::{Connection, Executor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn task_request() -> AggregatorTaskRequest {
    AggregatorTaskRequest {
        parameters: TaskParameters {
            task_id: TaskId::random(),
            task_info: "wal".into(),
            leader_endpoint: "http://leader.example/".into(),
            helper_endpoint: "http://helper.example/".into(),
            time_precision: 60,
            min_batch_size: 1,
            batch_mode: BatchMode::TimeInterval,
            vdaf: VdafConfig::Prio3Count,
            task_interval_seconds: None,
            dp: None,
        },
        vdaf_verify_key: VerifyKey::random().to_base64(),
        aggregator_auth_token: AuthenticationToken::random().expose().into(),
        collector_auth_token: Some(AuthenticationToken::random().expose().into()),
        collector_hpke_config: hpke_config_to_b64(HpkeKeypair::generate_default(HpkeConfigId(1)).config()),
        max_batch_size: None,
    }
}

/// A report of about 16 KB, so that a few thousand fill the log past its bound.
fn big_report() -> Report {
    let ct = |id| HpkeCiphertext { config_id: HpkeConfigId(id), enc: vec![1; 32], payload: vec![7; 16 << 10] };
    Report {
        report_metadata: ReportMetadata {
            report_id: ReportId::random(),
            time: Time::from_units(1000),
            public_extensions: vec![],
        },
        public_share: vec![],
        leader_encrypted_input_share: ct(1),
        helper_encrypted_input_share: ct(2),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_stays_bounded_under_overlapping_readers() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("leader.db");
    let url = format!("sqlite:{}", file.display());
    let store = open(&url).await.unwrap();
    let task = store.put_task(Role::Leader, &task_request()).await.unwrap();

    // Readers on connections of their own, each holding a snapshot while the others start:
    // at any moment one of them reads an older state than the last commit.
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (stop, url) = (stop.clone(), url.clone());
        readers.push(tokio::spawn(async move {
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut tx = conn.begin().await.unwrap();
                tx.fetch_one("SELECT COUNT(*) FROM client_reports").await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                tx.commit().await.unwrap();
                reads += 1;
            }
            reads
        }));
    }
    let wal = dir.path().join("leader.db-wal");
    let mut largest = 0u64;
    let mut stored = 0usize;
    // About 160 MB of reports, in requests of 100.
    for _ in 0..100 {
        let reports: Vec<Report> = (0..100).map(|_| big_report()).collect();
        let refs: Vec<&Report> = reports.iter().collect();
        let answers = store.put_reports(&task, &refs).await.unwrap();
        stored += answers.iter().filter(|a| a.is_none()).count();
        largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.await.unwrap() > 10, "the readers overlapped the writes");
    }
    assert_eq!(stored, 10_000);
    let db = std::fs::metadata(&file).unwrap().len();
    assert!(db > 150 << 20, "the reports reached the database file: {db} bytes");
    // The bound is 64 MiB, passed by at most the commits that ran while it was restarted.
    assert!(largest < 100 << 20, "the log grew to {largest} bytes");
}
