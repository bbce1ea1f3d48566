//! Time and order on each backend: what a replica serves from memory and for how long, which
//! reports a collection waits for, and the order reports go into jobs.

use super::*;

#[tokio::test]
async fn a_replica_serves_tasks_and_keys_from_memory_for_a_bounded_time() {
    use duet_common::clock::TestClock;
    use duet_server::sql::{KEY_CACHE_SECONDS, TASK_CACHE_SECONDS, UNKNOWN_TASK_CACHE_SECONDS};
    for (name, a, keep) in backends().await {
        // Replica B of the same database, on a clock the test moves.
        let clock = TestClock::now();
        let b =
            SqlStore::open(&keep.url(), duet_tests::database_keys()).await.unwrap().with_clock(Arc::new(clock.clone()));
        let req = task_request(BatchMode::TimeInterval, 1, None, true);
        let id = req.parameters.task_id;
        // B asks for the task before it exists, and remembers that it does not.
        assert!(matches!(b.task(&id).await, Err(StoreError::UnknownTask(_))), "{name}");
        a.put_task(Role::Leader, &req).await.unwrap();
        assert!(matches!(b.task(&id).await, Err(StoreError::UnknownTask(_))), "{name}: remembered");
        clock.advance(UNKNOWN_TASK_CACHE_SECONDS as u64);
        assert_eq!(b.task(&id).await.unwrap().id, id, "{name}: seen once the memory lapses");
        // Deleted through A: B serves it until its memory of it lapses, then refuses it.
        assert!(a.delete_task(&id).await.unwrap());
        assert!(b.task(&id).await.is_ok(), "{name}: still in B's memory");
        clock.advance(TASK_CACHE_SECONDS as u64);
        assert!(matches!(b.task(&id).await, Err(StoreError::UnknownTask(_))), "{name}: deletion seen");

        // Keys: a key activated through A reaches B's /hpke_config within the bound; one B
        // changes itself at once.
        let before: Vec<u8> = b.hpke_keypairs().await.unwrap().iter().map(|(k, _)| k.config().id.0).collect();
        let kp = HpkeKeypair::generate_default(HpkeConfigId(200));
        a.add_hpke_key(&kp).await.unwrap();
        a.set_hpke_key_state(HpkeConfigId(200), HpkeKeyState::Active).await.unwrap();
        let ids =
            |keys: Vec<(HpkeKeypair, HpkeKeyState)>| keys.iter().map(|(k, _)| k.config().id.0).collect::<Vec<u8>>();
        assert_eq!(ids(b.hpke_keypairs().await.unwrap()), before, "{name}: from memory");
        clock.advance(KEY_CACHE_SECONDS as u64);
        let after = ids(b.hpke_keypairs().await.unwrap());
        assert!(after.contains(&200) && after.len() == before.len() + 1, "{name}: the new key seen: {after:?}");
        b.add_hpke_key(&HpkeKeypair::generate_default(HpkeConfigId(201))).await.unwrap();
        b.set_hpke_key_state(HpkeConfigId(201), HpkeKeyState::Active).await.unwrap();
        assert_eq!(
            ids(b.hpke_keypairs().await.unwrap())[0],
            201,
            "{name}: B's own change at once, first as the latest"
        );
    }
}

#[tokio::test]
async fn reports_uploaded_after_a_collection_began_do_not_hold_it_back() {
    use duet_common::clock::TestClock;
    for (name, _, keep) in backends().await {
        let clock = TestClock::now();
        let store =
            SqlStore::open(&keep.url(), duet_tests::database_keys()).await.unwrap().with_clock(Arc::new(clock.clone()));
        let task = store.put_task(Role::Leader, &task_request(BatchMode::TimeInterval, 2, None, true)).await.unwrap();
        let early: Vec<Report> = (0..3).map(|_| report(1000)).collect();
        duet_tests::put_reports(&store, &task, &early).await.unwrap();
        assert_eq!(store.create_aggregation_jobs(&task, &sizes(10)).await.unwrap(), 1);
        let job = store.acquire_aggregation_jobs(1, 60).await.unwrap().remove(0);
        let held = store.aggregation_job_reports(&job).await.unwrap();
        store.commit_aggregation_job(&task, &job, all_aggregated(&task, &held)).await.unwrap();

        let interval = Interval { start: Time::from_units(1000), duration: Duration::from_units(1) };
        let (body, digest) =
            collection_request(Query::TimeInterval(TimeIntervalQueryConfig { batch_interval: interval }));
        let cj = store.insert_collection_job(&task, &body, &digest).await.unwrap();
        // A second later, more reports stamped in the interval: pending, and one in a job.
        clock.advance(1);
        let late: Vec<Report> = (0..3).map(|_| report(1000)).collect();
        duet_tests::put_reports(&store, &task, &late[..1]).await.unwrap();
        assert_eq!(store.create_aggregation_jobs(&task, &sizes(10)).await.unwrap(), 1);
        let late_job = store.acquire_aggregation_jobs(1, 60).await.unwrap().remove(0);
        duet_tests::put_reports(&store, &task, &late[1..]).await.unwrap();
        // The collection waits for none of them.
        let row = store.collection_job(&task, &cj).await.unwrap().unwrap();
        let BatchReadiness::Committed { values, .. } = store.commit_collection_batch(&task, &row).await.unwrap() else {
            panic!("{name}: the reports uploaded before the collection are aggregated")
        };
        assert_eq!(values.report_count, 3, "{name}");
        // The late report in a job fails as its bucket is collected now.
        let held = store.aggregation_job_reports(&late_job).await.unwrap();
        let counts = store.commit_aggregation_job(&task, &late_job, all_aggregated(&task, &held)).await.unwrap();
        assert_eq!(counts, StepCounts { aggregated: 0, failed: 1 }, "{name}");
    }
}

#[tokio::test]
async fn jobs_take_reports_in_the_order_they_arrived_not_by_their_stamps() {
    for (name, store, _keep) in backends().await {
        let task = store.put_task(Role::Leader, &task_request(BatchMode::TimeInterval, 1, None, true)).await.unwrap();
        // Fresh reports first, then a flood stamped long ago.
        let fresh: Vec<Report> = (0..3).map(|_| report(2000)).collect();
        let old: Vec<Report> = (0..6).map(|_| report(1000)).collect();
        duet_tests::put_reports(&*store, &task, &fresh).await.unwrap();
        duet_tests::put_reports(&*store, &task, &old).await.unwrap();
        // One job of three per pass: the first goes to the reports that came first.
        let sizes = JobSizes { min: 1, max: 3, max_delay_seconds: 0, max_jobs_per_pass: 1 };
        assert_eq!(store.create_aggregation_jobs(&task, &sizes).await.unwrap(), 1);
        let job = store.acquire_aggregation_jobs(1, 60).await.unwrap().remove(0);
        let mut held: Vec<ReportId> =
            store.aggregation_job_reports(&job).await.unwrap().iter().map(|r| r.metadata.report_id).collect();
        let mut expected: Vec<ReportId> = fresh.iter().map(|r| r.report_metadata.report_id).collect();
        held.sort_by_key(|id| *id.as_bytes());
        expected.sort_by_key(|id| *id.as_bytes());
        assert_eq!(held, expected, "{name}");
    }
}
