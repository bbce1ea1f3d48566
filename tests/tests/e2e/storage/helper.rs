//! The helper's steps on each backend: job initialisation with replay checks, and aggregate
//! shares released once.

use super::*;

#[tokio::test]
async fn helper_jobs_check_replays_and_aggregate_shares_release_once() {
    for (name, store, _dir) in backends().await {
        let task = store.put_task(Role::Helper, &task_request(BatchMode::TimeInterval, 2, None, false)).await.unwrap();
        let ids: Vec<ReportId> = (0..3).map(|_| ReportId::random()).collect();
        let step = |job_id, ids: &[ReportId], digest: u8| HelperStep {
            job_id,
            digest: [digest; 32],
            batch_id: None,
            step: AggregationJobStep(0),
            report_ids: ids.to_vec(),
            outcomes: ids
                .iter()
                .map(|id| HelperOutcome::Commit {
                    out_share: output_shares(&task, id, true).1,
                    outbound: Some(vec![1]),
                    time: Time::from_units(77),
                })
                .collect(),
        };
        let job1 = AggregationJobId::random();
        let resp = store.helper_init_job(&task, step(job1, &ids, 1)).await.unwrap().expect("created");
        assert!(store.helper_init_job(&task, step(job1, &ids, 1)).await.unwrap().is_none(), "{name}: exists");
        let stored = store.helper_job(&task, &job1).await.unwrap().unwrap();
        // What is stored for a repeated request is the answer's encoding, byte for byte.
        let body = duet_common::Encode::get_encoded(&resp).unwrap();
        assert_eq!((stored.last_response, stored.state), (body, HelperJobState::Finished));
        // The same reports in another job are replays.
        let job2 = AggregationJobId::random();
        let resp = store.helper_init_job(&task, step(job2, &ids[..1], 2)).await.unwrap().unwrap();
        assert_eq!(
            resp.verify_resps[0].verify_resp_type,
            VerifyRespType::Reject { report_error: ReportError::ReportReplayed }
        );

        let interval = Interval { start: Time::from_units(77), duration: Duration::ONE };
        let batch = Batch::TimeInterval(interval);
        let share_id = AggregateShareId::random();
        // The leader's request, claiming `ids` in the batch.
        let share_req = |ids: &[ReportId]| {
            let mut checksum = BatchChecksum::default();
            ids.iter().for_each(|id| checksum.update(id));
            AggregateShareReq {
                collection_job_req: CollectionJobReq {
                    query: Query::time_interval(interval),
                    agg_param: vec![],
                    extensions: vec![],
                },
                batch_selector: BatchSelector::time_interval(interval),
                report_count: ids.len() as u64,
                checksum,
            }
        };
        // A request the batch does not match (the leader counts two of the three reports)
        // releases nothing and leaves the batch open.
        let err = store.helper_release_aggregate_share(&task, &share_id, &[1; 32], &batch, &share_req(&ids[..2])).await;
        assert!(
            matches!(err, Err(StoreError::Step(ref e)) if e.kind() == Some(DapProblemType::BatchMismatch)),
            "{name}"
        );
        assert!(!store.batch_overlaps_collected(&task, &batch).await.unwrap());
        let ShareRelease::Released(resp) =
            store.helper_release_aggregate_share(&task, &share_id, &[1; 32], &batch, &share_req(&ids)).await.unwrap()
        else {
            panic!("{name}: released")
        };
        let share = <AggregateShare as duet_common::Decode>::get_decoded(&resp).expect("an AggregateShare");
        assert_eq!(share.encrypted_aggregate_share.config_id, HpkeConfigId(1), "{name}: sealed to the collector");
        assert_eq!(store.helper_aggregate_share(&task, &share_id).await.unwrap(), Some(resp.clone()));
        // Another request for an overlapping batch is refused.
        let other = AggregateShareId::random();
        assert!(matches!(
            store.helper_release_aggregate_share(&task, &other, &[2; 32], &batch, &share_req(&ids)).await.unwrap(),
            ShareRelease::Overlap
        ));
        assert!(store.helper_delete_aggregate_share(&task, &share_id).await.unwrap());
        assert_eq!(store.helper_aggregate_share(&task, &share_id).await.unwrap(), None);
        // A report committed after collection is refused with batch_collected.
        let late = [ReportId::random()];
        let resp = store.helper_init_job(&task, step(AggregationJobId::random(), &late, 3)).await.unwrap().unwrap();
        assert_eq!(
            resp.verify_resps[0].verify_resp_type,
            VerifyRespType::Reject { report_error: ReportError::BatchCollected }
        );
    }
}
