//! The storage suite: every protocol step of the store traits (duet-server's `Storage`, the
//! leader's `LeaderStore` and the helper's `HelperStore`), checked on each backend through the
//! traits alone (no backend-specific SQL), so that every backend passes the same tests. Each
//! test gets a fresh database, which both roles' steps share here.

use duet_common::auth::AuthenticationToken;
use duet_common::hpke::HpkeKeypair;
use duet_common::messages::*;
use duet_common::problem::{DapError, DapProblemType};
use duet_common::task::{hpke_config_to_b64, AggregatorTaskRequest, TaskParameters};
use duet_common::time::{Duration, Interval, Time};
use duet_common::vdaf::{Measurement, OutputShare, Transition, VdafConfig, VerifyKey};
use duet_common::Encode;
use duet_helper::store::*;
use duet_leader::store::*;
use duet_server::sql::SqlStore;
use duet_tests::PgDatabase;
use std::sync::Arc;

mod helper;
mod lifecycle;
mod timing;

/// What keeps a test database alive: a SQLite file's folder or a PostgreSQL database.
#[allow(dead_code)]
enum Keep {
    Dir(tempfile::TempDir),
    Pg(PgDatabase),
}

impl Keep {
    /// The database's URL, for a test that counts rows over a connection of its own.
    fn url(&self) -> String {
        match self {
            Keep::Dir(dir) => format!("sqlite:{}", dir.path().join("storage.db").display()),
            Keep::Pg(pg) => pg.url.clone(),
        }
    }
}

/// Rows of the leader's report payloads, over a connection of the test's own.
async fn payload_rows(keep: &Keep) -> i64 {
    duet_tests::count_rows(&keep.url(), "SELECT COUNT(*) FROM client_report_payloads").await
}

/// A store of both roles' steps (the servers each hold one trait of it).
type Store = Arc<SqlStore>;

async fn open(url: &str) -> Result<Store, StoreError> {
    Ok(Arc::new(SqlStore::open(url, duet_tests::database_keys()).await?))
}

/// A fresh database of each backend, kept alive for the test's duration.
async fn backends() -> Vec<(String, Store, Keep)> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("storage.db").display());
    let sqlite = open(&url).await.unwrap();
    let pg = PgDatabase::create().await;
    let postgres = open(&pg.url).await.unwrap();
    vec![("sqlite".into(), sqlite, Keep::Dir(dir)), ("postgres".into(), postgres, Keep::Pg(pg))]
}

fn task_request(
    mode: BatchMode,
    min_batch_size: u64,
    max_batch_size: Option<u64>,
    leader: bool,
) -> AggregatorTaskRequest {
    let collector = HpkeKeypair::generate_default(HpkeConfigId(1));
    AggregatorTaskRequest {
        parameters: TaskParameters {
            task_id: TaskId::random(),
            task_info: "storage suite".into(),
            leader_endpoint: "http://leader.example/".into(),
            helper_endpoint: "http://helper.example/".into(),
            time_precision: 60,
            min_batch_size,
            batch_mode: mode,
            vdaf: VdafConfig::Prio3Count,
            task_interval_seconds: None,
            dp: None,
        },
        vdaf_verify_key: VerifyKey::random().to_base64(),
        aggregator_auth_token: AuthenticationToken::random().expose().into(),
        collector_auth_token: leader.then(|| AuthenticationToken::random().expose().to_string()),
        collector_hpke_config: hpke_config_to_b64(collector.config()),
        max_batch_size,
        report_expiry_age: None,
    }
}

fn report(time: u64) -> Report {
    let ct = |id| HpkeCiphertext { config_id: HpkeConfigId(id), enc: vec![1, 2, 3], payload: vec![4, 5, 6] };
    Report {
        report_metadata: ReportMetadata {
            report_id: ReportId::random(),
            time: Time::from_units(time),
            public_extensions: vec![],
        },
        public_share: vec![],
        leader_encrypted_input_share: ct(1),
        helper_encrypted_input_share: ct(2),
    }
}

/// Both aggregators' output shares of a Count measurement, by running the VDAF.
fn output_shares(task: &Task, report_id: &ReportId, m: bool) -> (OutputShare, OutputShare) {
    let ctx = task.vdaf_context();
    let nonce = report_id.as_bytes();
    let (public, [ls, hs]) = task.vdaf.shard(&ctx, &Measurement::Count(m), nonce).unwrap();
    let (state, msg) = task.vdaf.leader_init(&task.verify_key, &ctx, nonce, &public, &ls).unwrap();
    let Transition::FinishedWithOutbound { out_share: helper_out, outbound } =
        task.vdaf.helper_init(&task.verify_key, &ctx, nonce, &public, &hs, &msg).unwrap()
    else {
        panic!("Prio3 helper finishes at once")
    };
    let Transition::Finished { out_share: leader_out } = task.vdaf.leader_continued(&ctx, state, &outbound).unwrap()
    else {
        panic!("Prio3 leader finishes on the helper's message")
    };
    (leader_out, helper_out)
}

fn sizes(max: usize) -> JobSizes {
    JobSizes { min: 1, max, max_delay_seconds: 0, max_jobs_per_pass: 100 }
}

fn collection_request(query: Query) -> (Vec<u8>, [u8; 32]) {
    let body = CollectionJobReq { query, agg_param: vec![], extensions: vec![] }.get_encoded().unwrap();
    let mut digest = [0u8; 32];
    digest[..body.len().min(32)].copy_from_slice(&body[..body.len().min(32)]);
    digest[31] ^= body.len() as u8;
    (body, digest)
}

#[tokio::test]
async fn tasks_are_provisioned_once_and_deleted() {
    for (name, store, _dir) in backends().await {
        let req = task_request(BatchMode::TimeInterval, 10, None, true);
        let task = store.put_task(Role::Leader, &req).await.unwrap();
        assert_eq!(store.task(&task.id).await.unwrap().parameters, req.parameters, "{name}");
        // The identical task again is fine; the same ID with other parameters is a conflict.
        store.put_task(Role::Leader, &req).await.unwrap();
        let mut other = req.clone();
        other.parameters.min_batch_size = 11;
        assert!(matches!(store.put_task(Role::Leader, &other).await, Err(StoreError::Conflict(_))));
        assert_eq!(store.task_ids().await.unwrap(), vec![task.id]);
        assert!(store.delete_task(&task.id).await.unwrap());
        assert!(!store.delete_task(&task.id).await.unwrap());
        let err = store.task(&task.id).await.unwrap_err();
        assert!(matches!(err, StoreError::UnknownTask(id) if id == task.id), "{name}: {err}");
        assert_eq!(DapError::from(err).kind(), Some(DapProblemType::UnrecognizedTask), "{name}");
        // A key is made on first use and kept.
        let keys = store.hpke_keypairs().await.unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].1, duet_server::storage::HpkeKeyState::Active);
        assert_eq!(store.hpke_keypairs().await.unwrap()[0].0.config(), keys[0].0.config());
    }
}

#[tokio::test]
async fn leader_time_interval_upload_aggregate_collect() {
    for (name, store, _dir) in backends().await {
        let task = store.put_task(Role::Leader, &task_request(BatchMode::TimeInterval, 3, None, true)).await.unwrap();
        let reports: Vec<Report> = (0..5).map(|i| report(1000 + i % 2)).collect();
        assert_eq!(duet_tests::put_reports(&*store, &task, &reports).await.unwrap(), vec![None; 5], "{name}");
        // Replays are refused, fresh reports in the same request accepted.
        let fresh = report(1000);
        let again = duet_tests::put_reports(&*store, &task, [&reports[0], &fresh]).await.unwrap();
        assert_eq!(again, vec![Some(ReportError::ReportReplayed), None]);

        assert_eq!(store.tasks_with_unaggregated_reports().await.unwrap(), vec![task.id]);
        assert_eq!(store.create_aggregation_jobs(&task, &sizes(4)).await.unwrap(), 2);
        assert!(store.tasks_with_unaggregated_reports().await.unwrap().is_empty());
        let jobs = store.acquire_aggregation_jobs(10, 60).await.unwrap();
        assert_eq!(jobs.len(), 2);
        // Leased jobs are not handed out twice.
        assert!(store.acquire_aggregation_jobs(10, 60).await.unwrap().is_empty());

        // A pending collection of [1000, 1002) waits while reports are in flight.
        let interval = Interval { start: Time::from_units(1000), duration: Duration::from_units(2) };
        let (body, digest) =
            collection_request(Query::TimeInterval(TimeIntervalQueryConfig { batch_interval: interval }));
        let cj = store.insert_collection_job(&task, &body, &digest).await.unwrap();
        assert_eq!(store.insert_collection_job(&task, &body, &digest).await.unwrap(), cj, "identical request");
        let row = store.collection_job(&task, &cj).await.unwrap().unwrap();
        assert!(matches!(store.commit_collection_batch(&task, &row).await.unwrap(), BatchReadiness::Wait(_)));

        let mut expected = 0u64;
        for job in &jobs {
            let job_reports = store.aggregation_job_reports(job).await.unwrap();
            let outcomes: Vec<ReportOutcome> = job_reports
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let id = r.metadata.report_id;
                    if i == 0 {
                        ReportOutcome::Failed { report_id: id, error: ReportError::VdafVerifyError }
                    } else {
                        expected += 1;
                        let (out, _) = output_shares(&task, &id, true);
                        ReportOutcome::Aggregated { report_id: id, time: r.metadata.time, out_share: out }
                    }
                })
                .collect();
            let n = outcomes.len() as u64;
            let counts = store.commit_aggregation_job(&task, job, outcomes).await.unwrap();
            assert_eq!(counts, StepCounts { aggregated: n - 1, failed: 1 });
        }
        let row = store.collection_job(&task, &cj).await.unwrap().unwrap();
        let BatchReadiness::Committed { values, batch } = store.commit_collection_batch(&task, &row).await.unwrap()
        else {
            panic!("{name}: the batch is complete")
        };
        assert_eq!(batch, Batch::TimeInterval(interval));
        assert_eq!(values.report_count, expected);
        assert_eq!(values.interval(), interval);
        let row = store.collection_job(&task, &cj).await.unwrap().unwrap();
        assert!(row.batch_committed);
        assert_eq!(row.report_count, Some(expected));
        assert_eq!(row.checksum, Some(values.checksum));
        // The batch is collected now: overlapping queries and late reports are refused.
        assert!(store.batch_overlaps_collected(&task, &Batch::TimeInterval(interval)).await.unwrap());
        let late = report(1001);
        assert_eq!(
            duet_tests::put_reports(&*store, &task, [&late]).await.unwrap(),
            vec![Some(ReportError::ReportReplayed)]
        );
        store.end_collection_job(&task, &cj, Ok(vec![7, 7])).await.unwrap();
        let row = store.collection_job(&task, &cj).await.unwrap().unwrap();
        assert_eq!((row.state, row.response), (CollectionJobState::Finished, Some(vec![7, 7])));
        assert!(store.delete_collection_job(&task, &cj).await.unwrap());
        assert!(store.collection_job_by_digest(&task, &digest).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn leader_selected_batches_fill_to_their_size() {
    for (name, store, _dir) in backends().await {
        let task =
            store.put_task(Role::Leader, &task_request(BatchMode::LeaderSelected, 2, Some(3), true)).await.unwrap();
        let reports: Vec<Report> = (0..7).map(|_| report(500)).collect();
        duet_tests::put_reports(&*store, &task, &reports).await.unwrap();
        // Batches of 3, 3 and 1; jobs never straddle batches.
        assert_eq!(store.create_aggregation_jobs(&task, &sizes(10)).await.unwrap(), 3, "{name}");
        let jobs = store.acquire_aggregation_jobs(10, 60).await.unwrap();
        let mut per_batch = std::collections::HashMap::new();
        for job in &jobs {
            let n = store.aggregation_job_reports(job).await.unwrap().len();
            *per_batch.entry(job.batch_id.unwrap()).or_insert(0) += n;
        }
        let mut sizes_seen: Vec<usize> = per_batch.values().copied().collect();
        sizes_seen.sort();
        assert_eq!(sizes_seen, vec![1, 3, 3]);
        for job in &jobs {
            let outcomes = store
                .aggregation_job_reports(job)
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    let (out, _) = output_shares(&task, &r.metadata.report_id, false);
                    ReportOutcome::Aggregated { report_id: r.metadata.report_id, time: r.metadata.time, out_share: out }
                })
                .collect();
            store.commit_aggregation_job(&task, job, outcomes).await.unwrap();
        }
        // Two full batches are collected first; the last (1 report, below min_batch_size 2) never.
        let (body, digest) = collection_request(Query::LeaderSelected(LeaderSelectedQueryConfig));
        let mut collected = Vec::new();
        for _ in 0..3 {
            let cj = store.insert_collection_job(&task, &body, &digest).await.unwrap();
            let row = store.collection_job(&task, &cj).await.unwrap().unwrap();
            match store.commit_collection_batch(&task, &row).await.unwrap() {
                BatchReadiness::Committed { values, batch: Batch::LeaderSelected(id) } => {
                    assert_eq!(values.report_count, 3);
                    collected.push(id);
                    store.end_collection_job(&task, &cj, Ok(vec![1])).await.unwrap();
                    store.delete_collection_job(&task, &cj).await.unwrap();
                }
                BatchReadiness::Wait(_) => {
                    assert_eq!(collected.len(), 2, "{name}: the third batch is too small");
                    // Deleting the waiting job leaves nothing stranded.
                    assert!(store.delete_collection_job(&task, &cj).await.unwrap());
                }
                _ => panic!("unexpected readiness"),
            }
        }
        assert_eq!(collected.len(), 2);
        assert_ne!(collected[0], collected[1]);
        // One more report tops up the open batch, which becomes collectible.
        let extra = report(501);
        duet_tests::put_reports(&*store, &task, [&extra]).await.unwrap();
        assert_eq!(store.create_aggregation_jobs(&task, &sizes(10)).await.unwrap(), 1);
        let job = store.acquire_aggregation_jobs(10, 60).await.unwrap().remove(0);
        assert!(!collected.contains(&job.batch_id.unwrap()), "{name}: a collected batch takes no reports");
        let r = store.aggregation_job_reports(&job).await.unwrap().remove(0);
        let (out, _) = output_shares(&task, &r.metadata.report_id, true);
        store
            .commit_aggregation_job(
                &task,
                &job,
                vec![ReportOutcome::Aggregated {
                    report_id: r.metadata.report_id,
                    time: r.metadata.time,
                    out_share: out,
                }],
            )
            .await
            .unwrap();
        let cj = store.insert_collection_job(&task, &body, &digest).await.unwrap();
        let row = store.collection_job(&task, &cj).await.unwrap().unwrap();
        let BatchReadiness::Committed { values, .. } = store.commit_collection_batch(&task, &row).await.unwrap() else {
            panic!("{name}: the topped-up batch is ready")
        };
        assert_eq!(values.report_count, 2);
    }
}

#[tokio::test]
async fn leases_lapse_retries_wait_and_abandoned_jobs_fail_their_reports() {
    for (name, store, _dir) in backends().await {
        let task = store.put_task(Role::Leader, &task_request(BatchMode::TimeInterval, 1, None, true)).await.unwrap();
        let reports: Vec<Report> = (0..2).map(|_| report(10)).collect();
        duet_tests::put_reports(&*store, &task, &reports).await.unwrap();
        store.create_aggregation_jobs(&task, &sizes(1)).await.unwrap();
        // A lease of 0 s lapses at once: the job is runnable again (a crashed driver's job).
        let first = store.acquire_aggregation_jobs(1, 0).await.unwrap();
        assert_eq!(first.len(), 1, "{name}");
        let again = store.acquire_aggregation_jobs(1, 60).await.unwrap();
        assert_eq!(again[0].job_id, first[0].job_id);
        assert_eq!(again[0].attempts, 2);
        // A retry later is not handed out before its time.
        store.retry_aggregation_job(&task, &again[0], 3600, "helper down").await.unwrap();
        let other = store.acquire_aggregation_jobs(10, 60).await.unwrap();
        assert_eq!(other.len(), 1);
        assert_ne!(other[0].job_id, first[0].job_id);
        store.abandon_aggregation_job(&task, &other[0], "given up", AbandonedReports::Fail).await.unwrap();
        assert!(store.aggregation_job_reports(&other[0]).await.unwrap().is_empty(), "its reports are settled");
    }
}

#[tokio::test]
async fn a_lease_is_its_holders_alone() {
    for (name, store, _dir) in backends().await {
        let task = store.put_task(Role::Leader, &task_request(BatchMode::TimeInterval, 1, None, true)).await.unwrap();
        duet_tests::put_reports(&*store, &task, &[report(10)]).await.unwrap();
        store.create_aggregation_jobs(&task, &sizes(1)).await.unwrap();
        let stale = store.acquire_aggregation_jobs(1, 0).await.unwrap().remove(0);
        // The lease lapsed (0 s) and another driver took the job over.
        let holder = store.acquire_aggregation_jobs(1, 60).await.unwrap().remove(0);
        assert_eq!(holder.job_id, stale.job_id, "{name}");
        assert_ne!(holder.lease_token, stale.lease_token, "{name}");
        assert!(!store.renew_aggregation_job_lease(&stale, 60, None).await.unwrap(), "{name}: not the stale driver's");
        assert!(store.renew_aggregation_job_lease(&holder, 60, Some("deferred")).await.unwrap(), "{name}");
        // The stale driver's retry does not release the holder's lease.
        store.retry_aggregation_job(&task, &stale, 0, "stale").await.unwrap();
        assert!(store.acquire_aggregation_jobs(1, 60).await.unwrap().is_empty(), "{name}: still leased");
        // The job waits on the helper (its note), as the metrics count it.
        assert_eq!(store.leader_backlog().await.unwrap().aggregation_jobs_waiting, 1, "{name}");
        // The first request is pinned; only the identical one may be sent again.
        assert!(store.pin_aggregation_job_request(&holder, &[1; 32]).await.unwrap(), "{name}");
        assert!(store.pin_aggregation_job_request(&holder, &[1; 32]).await.unwrap(), "{name}");
        assert!(!store.pin_aggregation_job_request(&holder, &[2; 32]).await.unwrap(), "{name}");
    }
}

#[tokio::test]
async fn a_refused_job_gives_its_reports_back_and_holds_new_jobs() {
    for (name, store, keep) in backends().await {
        let task =
            store.put_task(Role::Leader, &task_request(BatchMode::LeaderSelected, 1, Some(4), true)).await.unwrap();
        let reports: Vec<Report> = (0..3).map(|_| report(10)).collect();
        duet_tests::put_reports(&*store, &task, &reports).await.unwrap();
        assert_eq!(store.create_aggregation_jobs(&task, &sizes(3)).await.unwrap(), 1, "{name}");
        let job = store.acquire_aggregation_jobs(1, 60).await.unwrap().remove(0);
        assert!(job.batch_id.is_some());
        let backlog = store.leader_backlog().await.unwrap();
        assert!(backlog.oldest_unaggregated_upload_seconds.is_some(), "{name}: the job's reports are not aggregated");
        store
            .abandon_aggregation_job(&task, &job, "refused", AbandonedReports::BackToPool { max_hold_seconds: 600 })
            .await
            .unwrap();
        // Back in the pool, payloads intact, but new jobs of the task wait out the hold.
        assert_eq!(payload_rows(&keep).await, 3, "{name}");
        assert_eq!(store.tasks_with_unaggregated_reports().await.unwrap(), vec![task.id], "{name}");
        assert_eq!(store.create_aggregation_jobs(&task, &sizes(3)).await.unwrap(), 0, "{name}: held");
        // Once the hold is over (it is lifted here by hand), they go into a new job in a batch.
        lift_holds(&keep).await;
        assert_eq!(store.create_aggregation_jobs(&task, &sizes(3)).await.unwrap(), 1, "{name}");
        let again = store.acquire_aggregation_jobs(1, 60).await.unwrap().remove(0);
        assert_ne!(again.job_id, job.job_id);
        let held = store.aggregation_job_reports(&again).await.unwrap();
        let mut ids: Vec<ReportId> = held.iter().map(|r| r.metadata.report_id).collect();
        let mut sent: Vec<ReportId> = reports.iter().map(|r| r.report_metadata.report_id).collect();
        ids.sort_by_key(|i| *i.as_bytes());
        sent.sort_by_key(|i| *i.as_bytes());
        assert_eq!(ids, sent, "{name}: the same reports, none lost");
        assert_eq!(
            store.commit_aggregation_job(&task, &again, all_aggregated(&task, &held)).await.unwrap().aggregated,
            3
        );
        assert_eq!(store.leader_backlog().await.unwrap(), LeaderBacklog::default(), "{name}: nothing waits");
        assert_eq!(
            duet_tests::count_rows(&keep.url(), "SELECT COUNT(*) FROM leader_job_creation_holds").await,
            0,
            "{name}: a finished job lifts the hold"
        );
    }
}

/// The leader's outcomes of `held` when every report verifies (a Count of 1 each).
fn all_aggregated(task: &Task, held: &[JobReport]) -> Vec<ReportOutcome> {
    held.iter()
        .map(|r| ReportOutcome::Aggregated {
            report_id: r.metadata.report_id,
            time: r.metadata.time,
            out_share: output_shares(task, &r.metadata.report_id, true).0,
        })
        .collect()
}

/// Ends every hold on job creation, as if its time had passed.
async fn lift_holds(keep: &Keep) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&keep.url()).await.unwrap();
    sqlx::query("UPDATE leader_job_creation_holds SET hold_until_seconds = 0").execute(&pool).await.unwrap();
    pool.close().await;
}

#[tokio::test]
async fn a_failed_collection_gives_its_batch_back() {
    for (name, store, _dir) in backends().await {
        for mode in [BatchMode::TimeInterval, BatchMode::LeaderSelected] {
            let task = store.put_task(Role::Leader, &task_request(mode, 2, None, true)).await.unwrap();
            let reports: Vec<Report> = (0..2).map(|_| report(1000)).collect();
            duet_tests::put_reports(&*store, &task, &reports).await.unwrap();
            store.create_aggregation_jobs(&task, &sizes(2)).await.unwrap();
            let job = store.acquire_aggregation_jobs(1, 60).await.unwrap().remove(0);
            let held = store.aggregation_job_reports(&job).await.unwrap();
            store.commit_aggregation_job(&task, &job, all_aggregated(&task, &held)).await.unwrap();
            let interval = Interval { start: Time::from_units(1000), duration: Duration::from_units(1) };
            let query = match mode {
                BatchMode::TimeInterval => Query::TimeInterval(TimeIntervalQueryConfig { batch_interval: interval }),
                _ => Query::LeaderSelected(LeaderSelectedQueryConfig),
            };
            let (body, digest) = collection_request(query);
            let first = store.insert_collection_job(&task, &body, &digest).await.unwrap();
            let row = store.collection_job(&task, &first).await.unwrap().unwrap();
            let BatchReadiness::Committed { batch, .. } = store.commit_collection_batch(&task, &row).await.unwrap()
            else {
                panic!("{name} {mode:?}: the batch is ready")
            };
            assert!(store.batch_overlaps_collected(&task, &batch).await.unwrap());
            let leased = store.acquire_collection_jobs(10, 60).await.unwrap();
            let mine: Vec<_> = leased.iter().filter(|j| j.task_id == task.id).map(|j| (j.id, j.attempts)).collect();
            assert_eq!(mine, vec![(first, 1)], "{name}: the commit starts the count of helper requests");
            // The helper refuses the aggregate share: the job fails with its problem, and the
            // batch is collectable again.
            let mismatch = JobFailure {
                problem: Some(duet_common::problem::DapProblemType::BatchMismatch),
                detail: "counts differ".into(),
            };
            store.end_collection_job(&task, &first, Err(mismatch.clone())).await.unwrap();
            let row = store.collection_job(&task, &first).await.unwrap().unwrap();
            assert_eq!(row.state, CollectionJobState::Failed, "{name}");
            assert_eq!(row.error.as_ref(), Some(&mismatch));
            assert_eq!(row.error.map(|e| e.to_db().0.to_string()).as_deref(), Some("batchMismatch"));
            assert!(!row.batch_committed && row.leader_encrypted_agg_share.is_none(), "{name}: nothing kept");
            assert!(!store.batch_overlaps_collected(&task, &batch).await.unwrap(), "{name} {mode:?}: given back");
            // A new collection (the failed job deleted first) commits the same batch.
            assert!(store.delete_collection_job(&task, &first).await.unwrap());
            let second = store.insert_collection_job(&task, &body, &digest).await.unwrap();
            assert_ne!(second, first);
            let row = store.collection_job(&task, &second).await.unwrap().unwrap();
            let BatchReadiness::Committed { values, batch: again } =
                store.commit_collection_batch(&task, &row).await.unwrap()
            else {
                panic!("{name} {mode:?}: the batch is ready again")
            };
            assert_eq!((again, values.report_count), (batch, 2), "{name} {mode:?}");
        }
    }
}

#[tokio::test]
async fn a_job_committed_by_two_drivers_counts_once() {
    for (name, store, _keep) in backends().await {
        let task = store.put_task(Role::Leader, &task_request(BatchMode::TimeInterval, 1, None, true)).await.unwrap();
        let reports: Vec<Report> = (0..4).map(|_| report(300)).collect();
        duet_tests::put_reports(&*store, &task, &reports).await.unwrap();
        store.create_aggregation_jobs(&task, &sizes(10)).await.unwrap();
        // Two drivers hold the same job: the first one's lease lapsed while it worked.
        let first = store.acquire_aggregation_jobs(1, 0).await.unwrap().remove(0);
        let second = store.acquire_aggregation_jobs(1, 60).await.unwrap().remove(0);
        assert_eq!(first.job_id, second.job_id, "{name}");
        let outcomes = |job: &LeasedJob| {
            let store = store.clone();
            let task = task.clone();
            let job = job.clone();
            async move {
                store
                    .aggregation_job_reports(&job)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| {
                        let (out, _) = output_shares(&task, &r.metadata.report_id, true);
                        ReportOutcome::Aggregated {
                            report_id: r.metadata.report_id,
                            time: r.metadata.time,
                            out_share: out,
                        }
                    })
                    .collect::<Vec<_>>()
            }
        };
        let (a, b) = (outcomes(&first).await, outcomes(&second).await);
        assert_eq!(store.commit_aggregation_job(&task, &second, b).await.unwrap().aggregated, 4);
        assert_eq!(store.commit_aggregation_job(&task, &first, a).await.unwrap(), StepCounts::default(), "{name}");
        let interval = Interval { start: Time::from_units(300), duration: Duration::ONE };
        let (body, digest) =
            collection_request(Query::TimeInterval(TimeIntervalQueryConfig { batch_interval: interval }));
        let cj = store.insert_collection_job(&task, &body, &digest).await.unwrap();
        let row = store.collection_job(&task, &cj).await.unwrap().unwrap();
        let BatchReadiness::Committed { values, .. } = store.commit_collection_batch(&task, &row).await.unwrap() else {
            panic!("{name}: ready")
        };
        assert_eq!(values.report_count, 4, "{name}: counted once");
        // A second driver of the collection job does not commit (or fail) it again.
        assert!(matches!(store.commit_collection_batch(&task, &row).await.unwrap(), BatchReadiness::Wait(_)));
    }
}

#[tokio::test]
async fn a_commit_settles_exactly_the_reports_of_its_job() {
    for (name, store, _keep) in backends().await {
        let task = store.put_task(Role::Leader, &task_request(BatchMode::TimeInterval, 1, None, true)).await.unwrap();
        let reports: Vec<Report> = (0..6).map(|_| report(500)).collect();
        duet_tests::put_reports(&*store, &task, &reports).await.unwrap();
        assert_eq!(store.create_aggregation_jobs(&task, &sizes(10)).await.unwrap(), 1, "{name}");
        let job = store.acquire_aggregation_jobs(1, 60).await.unwrap().remove(0);
        let held = store.aggregation_job_reports(&job).await.unwrap();
        assert_eq!(held.len(), 6, "{name}");
        let failed = |r: &JobReport| ReportOutcome::Failed {
            report_id: r.metadata.report_id,
            error: ReportError::HpkeDecryptError,
        };
        // Outcomes that leave out a report of the job are refused, and settle nothing.
        let short: Vec<ReportOutcome> = held[..5].iter().map(failed).collect();
        let err = store.commit_aggregation_job(&task, &job, short).await.unwrap_err();
        assert!(matches!(err, StoreError::Internal(_)), "{name}: {err}");
        assert_eq!(store.aggregation_job_reports(&job).await.unwrap().len(), 6, "{name}: nothing settled");
        // Every report failed: the failures are the largest group.
        let all: Vec<ReportOutcome> = held.iter().map(failed).collect();
        assert_eq!(
            store.commit_aggregation_job(&task, &job, all).await.unwrap(),
            StepCounts { aggregated: 0, failed: 6 }
        );
        assert!(store.aggregation_job_reports(&job).await.unwrap().is_empty(), "{name}");
        assert!(store.tasks_with_unaggregated_reports().await.unwrap().is_empty(), "{name}");
    }
}

#[tokio::test]
async fn hpke_key_rotation_rules() {
    for (name, store, _keep) in backends().await {
        // The first key is made active on first use.
        let first = store.hpke_keys().await.unwrap();
        assert_eq!(first.len(), 1, "{name}");
        assert_eq!(first[0].state, HpkeKeyState::Active, "{name}");
        let old = first[0].config.id;

        // A new key starts pending: it opens shares but is not the one advertised.
        let new = HpkeKeypair::generate_default(HpkeConfigId(old.0 + 1));
        let added = store.add_hpke_key(&new).await.unwrap();
        assert_eq!(added.state, HpkeKeyState::Pending, "{name}");
        let usable = store.hpke_keypairs().await.unwrap();
        assert_eq!(usable.len(), 2, "{name}");
        assert_eq!(usable[0].0.config().id, old, "{name}: the active key comes first");
        assert_eq!(usable[1], (new.clone(), HpkeKeyState::Pending), "{name}");
        // A taken ID is a conflict.
        let err = store.add_hpke_key(&HpkeKeypair::generate_default(old)).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{name}: {err}");

        // The only active key cannot be retired; a pending key cannot be retired either.
        assert!(store.set_hpke_key_state(old, HpkeKeyState::Retired).await.is_err(), "{name}");
        assert!(store.set_hpke_key_state(new.config().id, HpkeKeyState::Retired).await.is_err(), "{name}");

        // Promote the new key, retire the old one: both still open shares.
        let active = store.set_hpke_key_state(new.config().id, HpkeKeyState::Active).await.unwrap();
        assert_eq!(active.state, HpkeKeyState::Active, "{name}");
        let retired = store.set_hpke_key_state(old, HpkeKeyState::Retired).await.unwrap();
        assert_eq!(retired.state, HpkeKeyState::Retired, "{name}");
        let usable = store.hpke_keypairs().await.unwrap();
        let states: Vec<(u8, HpkeKeyState)> = usable.iter().map(|(k, s)| (k.config().id.0, *s)).collect();
        assert_eq!(states, vec![(new.config().id.0, HpkeKeyState::Active), (old.0, HpkeKeyState::Retired)], "{name}");

        // An active key cannot be deleted; a freshly retired one only with force.
        let err = store.delete_hpke_key(new.config().id, false).await.unwrap_err();
        assert!(err.to_string().contains("retire it first"), "{name}: {err}");
        let err = store.delete_hpke_key(old, false).await.unwrap_err();
        assert!(err.to_string().contains("was retired"), "{name}: {err}");
        assert_eq!(store.hpke_keys().await.unwrap().len(), 2, "{name}: refusals change nothing");
        store.delete_hpke_key(old, true).await.unwrap();
        let left: Vec<u8> = store.hpke_keys().await.unwrap().iter().map(|k| k.config.id.0).collect();
        assert_eq!(left, vec![new.config().id.0], "{name}");
        let err = store.delete_hpke_key(old, true).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{name}: {err}");
        // A retired key can be brought back.
        let third = HpkeKeypair::generate_default(HpkeConfigId(9));
        store.add_hpke_key(&third).await.unwrap();
        store.set_hpke_key_state(third.config().id, HpkeKeyState::Active).await.unwrap();
        store.set_hpke_key_state(new.config().id, HpkeKeyState::Retired).await.unwrap();
        let back = store.set_hpke_key_state(new.config().id, HpkeKeyState::Active).await.unwrap();
        assert_eq!(back.state, HpkeKeyState::Active, "{name}");

        // Operations queries answer.
        store.ping().await.unwrap();
        assert!(store.pool_status().max >= 1, "{name}");
        assert!(store.aggregation_job_counts().await.unwrap().is_empty(), "{name}");
    }
}

#[tokio::test]
async fn large_reports_span_several_statements_and_come_back_intact() {
    for (name, store, _dir) in backends().await {
        let task = store.put_task(Role::Leader, &task_request(BatchMode::TimeInterval, 1, None, true)).await.unwrap();
        // 7 KB a report: more than one statement's worth of bound data on either backend.
        let old: Vec<Report> = (0..150).map(|_| duet_tests::stub_report(1000, 3500)).collect();
        assert_eq!(duet_tests::put_reports(&*store, &task, &old).await.unwrap(), vec![None; 150], "{name}");
        // Replays interleaved with new reports, across the statements' boundaries.
        let new: Vec<Report> = (0..150).map(|_| duet_tests::stub_report(1000, 3500)).collect();
        let mixed: Vec<&Report> = old.iter().zip(&new).flat_map(|(o, n)| [o, n]).collect();
        let answers = duet_tests::put_reports(&*store, &task, mixed.iter().copied()).await.unwrap();
        let expected: Vec<Option<ReportError>> =
            (0..300).map(|i| (i % 2 == 0).then_some(ReportError::ReportReplayed)).collect();
        assert_eq!(answers, expected, "{name}");
        // Every stored report reads back byte for byte.
        assert_eq!(store.create_aggregation_jobs(&task, &sizes(300)).await.unwrap(), 1, "{name}");
        let job = store.acquire_aggregation_jobs(1, 60).await.unwrap().remove(0);
        let stored = store.aggregation_job_reports(&job).await.unwrap();
        assert_eq!(stored.len(), 300, "{name}");
        let by_id: std::collections::HashMap<ReportId, &Report> =
            old.iter().chain(&new).map(|r| (r.report_metadata.report_id, r)).collect();
        for r in &stored {
            let sent = by_id[&r.metadata.report_id];
            assert_eq!(r.metadata, sent.report_metadata, "{name}");
            assert_eq!(r.public_share, sent.public_share, "{name}");
            assert_eq!(r.leader_share, sent.leader_encrypted_input_share, "{name}");
            assert_eq!(r.helper_share, sent.helper_encrypted_input_share, "{name}");
        }
    }
}

#[tokio::test]
async fn settled_reports_drop_their_payloads_and_stay_replays() {
    for (name, store, keep) in backends().await {
        let task = store.put_task(Role::Leader, &task_request(BatchMode::TimeInterval, 1, None, true)).await.unwrap();
        let reports: Vec<Report> = (0..6).map(|_| report(500)).collect();
        duet_tests::put_reports(&*store, &task, &reports).await.unwrap();
        assert_eq!(payload_rows(&keep).await, 6, "{name}");
        assert_eq!(store.create_aggregation_jobs(&task, &sizes(3)).await.unwrap(), 2, "{name}");
        let jobs = store.acquire_aggregation_jobs(2, 60).await.unwrap();
        assert_eq!(jobs.len(), 2, "{name}");
        // One job commits (its reports aggregated), the other is abandoned (its reports failed).
        let held = store.aggregation_job_reports(&jobs[0]).await.unwrap();
        let outcomes = held
            .iter()
            .map(|r| {
                let (leader, _) = output_shares(&task, &r.metadata.report_id, true);
                ReportOutcome::Aggregated { report_id: r.metadata.report_id, time: r.metadata.time, out_share: leader }
            })
            .collect();
        let counts = store.commit_aggregation_job(&task, &jobs[0], outcomes).await.unwrap();
        assert_eq!(counts, StepCounts { aggregated: 3, failed: 0 }, "{name}");
        assert_eq!(payload_rows(&keep).await, 3, "{name}: the committed job's payloads are gone");
        assert_eq!(store.aggregation_job_reports(&jobs[1]).await.unwrap().len(), 3, "{name}: the others are intact");
        store.abandon_aggregation_job(&task, &jobs[1], "given up", AbandonedReports::Fail).await.unwrap();
        assert_eq!(payload_rows(&keep).await, 0, "{name}");
        // Every report is still known: uploading any of them again is a replay.
        let answers = duet_tests::put_reports(&*store, &task, &reports).await.unwrap();
        assert_eq!(answers, vec![Some(ReportError::ReportReplayed); 6], "{name}");
        assert_eq!(payload_rows(&keep).await, 0, "{name}: a replay stores no payload");
    }
}
