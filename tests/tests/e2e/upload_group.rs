//! The leader's group commit of uploads: on SQLite, the upload requests that queue while a
//! transaction runs are stored by the next one together, and a report ID that two of them carry
//! is stored once (the later one is a replay, as if the requests had been stored in turn). On
//! PostgreSQL each request is stored by its own transaction.

use axum::body::Bytes;
use duet_common::messages::*;
use duet_common::Encode;
use duet_leader::store::{open, Store, Task};
use duet_leader::upload::UploadQueue;
use duet_tests::{storage_task_request, stub_report, PgDatabase};
use sqlx::Executor;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Waits until `done` holds (at most ten seconds).
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Puts `reports` through the queue as one upload request, as the upload handler does: the
/// body encoded, then read in place.
fn put(
    queue: &UploadQueue,
    store: &Store,
    task: &Arc<Task>,
    reports: Vec<Report>,
) -> tokio::task::JoinHandle<Vec<Option<ReportError>>> {
    let (queue, store, task) = (queue.clone(), store.clone(), task.clone());
    tokio::spawn(async move {
        let body = Bytes::from(UploadRequest { reports }.get_encoded().unwrap());
        let encoded = UploadRequest::decode_in_place(&body).unwrap();
        let refs: Vec<&EncodedReport<'_>> = encoded.iter().collect();
        queue.put(&store, &task, &body, &refs).await.unwrap()
    })
}

/// Six requests: the first alone, then five that each carry 40 new reports, one of the first
/// request's reports, and one report all five share.
fn requests() -> (Vec<Report>, Vec<Vec<Report>>) {
    let first: Vec<Report> = (0..40).map(|_| stub_report(1000, 64)).collect();
    let shared = stub_report(1000, 64);
    let later = (0..5)
        .map(|k| {
            let mut reports: Vec<Report> = (0..40).map(|_| stub_report(1000, 64)).collect();
            reports.insert(k * 7, first[k].clone());
            reports.push(shared.clone());
            reports
        })
        .collect();
    (first, later)
}

/// What each of the five later requests must be told: the first request's report is a replay,
/// the shared report is stored for the first of them and a replay for the others.
fn assert_later_answers(answers: &[Vec<Option<ReportError>>]) {
    for (k, answer) in answers.iter().enumerate() {
        assert_eq!(answer.len(), 42);
        for (i, error) in answer.iter().enumerate() {
            let expected = if i == k * 7 || (i == 41 && k > 0) { Some(ReportError::ReportReplayed) } else { None };
            assert_eq!(*error, expected, "request {k}, report {i}");
        }
    }
}

/// The task's reports in the database, counted over a connection of the test's own.
async fn stored_reports(url: &str, task: &Task) -> i64 {
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let row: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM client_reports WHERE task_id = $1")
        .bind(task.id.as_bytes().as_slice())
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    row.0
}

#[tokio::test]
async fn sqlite_uploads_that_queue_together_share_one_transaction() {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("leader.db").display());
    let store = open(&url, duet_tests::database_keys()).await.unwrap();
    assert!(store.writes_one_at_a_time());
    let task = store.put_task(Role::Leader, &storage_task_request("upload group")).await.unwrap();
    let queue = UploadQueue::default();
    let counts = queue.counts();
    let (first, later) = requests();

    // Another connection holds SQLite's write lock: the writer takes the first request and
    // waits in its BEGIN, and the other five queue behind it, in order.
    let blocker = sqlx::SqlitePool::connect(&url).await.unwrap();
    let mut lock = blocker.acquire().await.unwrap();
    lock.execute("BEGIN IMMEDIATE").await.unwrap();
    let first_put = put(&queue, &store, &task, first);
    until("the writer took the first request", || counts.transactions.load(Ordering::Relaxed) == 1).await;
    let mut later_puts = Vec::new();
    for (k, reports) in later.into_iter().enumerate() {
        later_puts.push(put(&queue, &store, &task, reports));
        until("the request queued", || counts.waiting.load(Ordering::Relaxed) == k + 1).await;
    }
    lock.execute("ROLLBACK").await.unwrap();
    drop(lock);

    assert_eq!(first_put.await.unwrap(), vec![None; 40]);
    let mut answers = Vec::new();
    for p in later_puts {
        answers.push(p.await.unwrap());
    }
    assert_later_answers(&answers);
    assert_eq!(counts.transactions.load(Ordering::Relaxed), 2, "the five queued requests in one transaction");
    assert_eq!(counts.requests.load(Ordering::Relaxed), 6);
    assert_eq!(counts.waiting.load(Ordering::Relaxed), 0);
    assert_eq!(stored_reports(&url, &task).await, 40 + 5 * 40 + 1);
}

#[tokio::test]
async fn postgres_uploads_are_stored_each_in_its_own_transaction() {
    sqlx::any::install_default_drivers();
    let pg = PgDatabase::create().await;
    let store = open(&pg.url, duet_tests::database_keys()).await.unwrap();
    assert!(!store.writes_one_at_a_time());
    let task = store.put_task(Role::Leader, &storage_task_request("upload group")).await.unwrap();
    let queue = UploadQueue::default();
    let (first, later) = requests();
    assert_eq!(put(&queue, &store, &task, first).await.unwrap(), vec![None; 40]);
    let mut answers = Vec::new();
    for reports in later {
        answers.push(put(&queue, &store, &task, reports).await.unwrap());
    }
    assert_later_answers(&answers);
    assert_eq!(queue.counts().transactions.load(Ordering::Relaxed), 0, "no group transaction");
    assert_eq!(stored_reports(&pg.url, &task).await, 40 + 5 * 40 + 1);
}
