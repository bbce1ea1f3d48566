//! SQLite's write-ahead log stays bounded while readers overlap every commit (a busy server),
//! where SQLite's own passive checkpoints never complete and the log would grow without end,
//! and however fast the reports come.

use duet_common::messages::*;
use duet_leader::store::*;
use duet_tests::{storage_task_request, stub_report};
use sqlx::{Connection, Executor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread")]
async fn the_log_stays_bounded_under_overlapping_readers() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("leader.db");
    let url = format!("sqlite:{}", file.display());
    let store = open(&url, duet_tests::database_keys()).await.unwrap();
    let task = store.put_task(Role::Leader, &storage_task_request("wal")).await.unwrap();

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
        let reports: Vec<Report> = (0..100).map(|_| stub_report(1000, 16 << 10)).collect();
        let answers = duet_tests::put_reports(&*store, &task, &reports).await.unwrap();
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
    // The leader checkpoints past 32 MiB; writers go on beside the checkpoint until the log
    // holds 64 MiB, then wait for it. So the log peaks at 64 MiB and one request's pages
    // (3.4 MB: its 1.6 MB of reports in 16 KiB pages, and the index pages it changed).
    assert!(largest < 72 << 20, "the log grew to {largest} bytes");
}

/// New databases take 16 KiB pages (reports share pages instead of filling 4 KiB ones each);
/// a database made before keeps its 4 KiB pages and goes on storing reports in them.
#[tokio::test(flavor = "multi_thread")]
async fn new_databases_take_16_kib_pages_and_older_ones_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let new = format!("sqlite:{}", dir.path().join("new.db").display());
    let store = open(&new, duet_tests::database_keys()).await.unwrap();
    let task = store.put_task(Role::Leader, &storage_task_request("pages")).await.unwrap();
    let reports: Vec<Report> = (0..50).map(|_| stub_report(1000, 2700)).collect();
    let answers = duet_tests::put_reports(&*store, &task, &reports).await.unwrap();
    assert!(answers.iter().all(Option::is_none));
    assert_eq!(duet_tests::count_rows(&new, "PRAGMA page_size").await, 16384);
    assert_eq!(duet_tests::count_rows(&new, "SELECT COUNT(*) FROM client_report_payloads").await, 50);

    // An older database: made with SQLite's default page size before the store first opened it.
    let old_file = dir.path().join("old.db");
    let old = format!("sqlite:{}", old_file.display());
    {
        let mut conn = sqlx::SqliteConnection::connect(&format!("{old}?mode=rwc")).await.unwrap();
        conn.execute("PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; CREATE TABLE before_duet (x INTEGER)")
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let store = open(&old, duet_tests::database_keys()).await.unwrap();
    let task = store.put_task(Role::Leader, &storage_task_request("pages")).await.unwrap();
    let answers = duet_tests::put_reports(&*store, &task, &reports).await.unwrap();
    assert!(answers.iter().all(Option::is_none));
    assert_eq!(duet_tests::count_rows(&old, "PRAGMA page_size").await, 4096);
    assert_eq!(duet_tests::count_rows(&old, "SELECT COUNT(*) FROM client_report_payloads").await, 50);
}
