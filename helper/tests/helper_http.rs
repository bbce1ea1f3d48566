//! The helper over real HTTP on loopback, driven by this test acting as the leader: aggregation
//! job init (with idempotent retries, replays, bad reports), aggregate shares (mismatch, size,
//! overlap), authentication and unknown tasks. The collected result is checked against the
//! histogram computed in the clear.

use duet_common::auth::{AuthenticationToken, TokenScheme};
use duet_common::hpke::{open, seal, HpkeApplicationInfo, HpkeKeypair};
use duet_common::media_type;
use duet_common::messages::*;
use duet_common::problem::ProblemDocument;
use duet_common::task::{hpke_config_to_b64, AggregatorTaskRequest, TaskParameters};
use duet_common::time::{Duration, Interval, Time, TimePrecision};
use duet_common::vdaf::{vdaf_context, AggregateResult, Measurement, Transition, Vdaf, VdafConfig, VerifyKey};
use duet_common::{Decode, Encode};
use duet_helper::{router, HelperConfig};

struct Harness {
    base: String,
    http: reqwest::Client,
    token: AuthenticationToken,
    _dir: tempfile::TempDir,
}

async fn start_helper() -> Harness {
    start_helper_with(HelperConfig::default()).await
}

async fn start_helper_with(config: HelperConfig) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("helper.db").display());
    let store = duet_helper::store::open(&url, std::sync::Arc::new(duet_server::sealing::DatabaseKeys::ephemeral()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = AuthenticationToken::new("admin-token").unwrap();
    let app = router(store, config, Some(token.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Harness { base: format!("http://{addr}/"), http: reqwest::Client::new(), token, _dir: dir }
}

struct Leader {
    task_id: TaskId,
    params: TaskParameters,
    config_encoded: Vec<u8>,
    vdaf: Vdaf,
    key: VerifyKey,
    agg_token: AuthenticationToken,
    collector: HpkeKeypair,
    helper_hpke: HpkeConfig,
}

async fn provision(h: &Harness, batch_mode: BatchMode, min_batch_size: u64) -> Leader {
    provision_vdaf(h, batch_mode, min_batch_size, VdafConfig::Prio3Histogram { length: 4, chunk_length: 2 }).await
}

async fn provision_vdaf(h: &Harness, batch_mode: BatchMode, min_batch_size: u64, vdaf: VdafConfig) -> Leader {
    let task_id = TaskId::random();
    let params = TaskParameters {
        task_id,
        task_info: "helper test".into(),
        leader_endpoint: "https://leader.example/".into(),
        helper_endpoint: h.base.clone(),
        time_precision: 3600,
        min_batch_size,
        batch_mode,
        vdaf,
        task_interval_seconds: None,
        dp: None,
    };
    let key = VerifyKey::random();
    let agg_token = AuthenticationToken::random();
    let collector = HpkeKeypair::generate_default(HpkeConfigId(9));
    let req = AggregatorTaskRequest {
        parameters: params.clone(),
        vdaf_verify_key: key.to_base64(),
        aggregator_auth_token: agg_token.expose().to_string(),
        collector_auth_token: None,
        collector_hpke_config: hpke_config_to_b64(collector.config()),
        max_batch_size: None,
        report_expiry_age: None,
    };
    let (name, value) = h.token.header(TokenScheme::Bearer);
    let resp = h.http.post(format!("{}admin/tasks", h.base)).header(name, value).json(&req).send().await.unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let list = h.http.get(format!("{}hpke_config", h.base)).send().await.unwrap();
    assert_eq!(list.headers()["content-type"], media_type::HPKE_CONFIG_LIST);
    assert!(list.headers()["cache-control"].to_str().unwrap().starts_with("max-age="));
    let list = HpkeConfigList::get_decoded(&list.bytes().await.unwrap()).unwrap();
    Leader {
        task_id,
        config_encoded: params.task_configuration().unwrap().get_encoded().unwrap(),
        vdaf: Vdaf::new(&params.vdaf).unwrap(),
        params,
        key,
        agg_token,
        collector,
        helper_hpke: list.0[0].clone(),
    }
}

/// A report as a client makes it, already through the leader's `ping_pong_leader_init`.
struct Prepared {
    verify_init: VerifyInit,
    leader_state: duet_common::vdaf::VerifyState,
}

impl Leader {
    fn prepare(&self, bucket: usize, time: Time) -> Prepared {
        self.prepare_measurement(&Measurement::Histogram(bucket), time)
    }

    fn prepare_measurement(&self, measurement: &Measurement, time: Time) -> Prepared {
        let report_id = ReportId::random();
        let ctx = vdaf_context(&self.task_id);
        let (public, [ls, hs]) = self.vdaf.shard(&ctx, measurement, report_id.as_bytes()).unwrap();
        let metadata = ReportMetadata { report_id, time, public_extensions: vec![] };
        let aad = InputShareAad::encode_parts(&self.task_id, &self.config_encoded, &metadata, &public).unwrap();
        let plain = PlaintextInputShare { private_extensions: vec![], payload: hs }.get_encoded().unwrap();
        let ct = seal(&self.helper_hpke, &HpkeApplicationInfo::InputShare { recipient: Role::Helper }, &plain, &aad)
            .unwrap();
        let (leader_state, payload) =
            self.vdaf.leader_init(&self.key, &ctx, report_id.as_bytes(), &public, &ls).unwrap();
        Prepared {
            verify_init: VerifyInit {
                report_share: ReportShare {
                    report_metadata: metadata,
                    public_share: public,
                    encrypted_input_share: ct,
                },
                payload,
            },
            leader_state,
        }
    }

    fn init_req(&self, reports: &[&Prepared], batch_id: Option<BatchId>) -> Vec<u8> {
        AggregationJobInitReq {
            verification_key_id: 0,
            agg_param: vec![],
            extensions: batch_id.map(AggregationJobExtension::leader_selected_batch_id).into_iter().collect(),
            verify_inits: reports.iter().map(|p| p.verify_init.clone()).collect(),
        }
        .get_encoded()
        .unwrap()
    }

    async fn post(&self, h: &Harness, path: &str, media: &str, body: Vec<u8>) -> reqwest::Response {
        let (name, value) = self.agg_token.header(TokenScheme::DapAuthToken);
        h.http
            .post(format!("{}tasks/{}/{path}", h.base, self.task_id))
            .header(name, value)
            .header("content-type", media)
            .body(body)
            .send()
            .await
            .unwrap()
    }
}

async fn problem(resp: reqwest::Response) -> (u16, ProblemDocument) {
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()["content-type"], media_type::PROBLEM_JSON);
    (status, serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap())
}

fn now() -> Time {
    Time::now(TimePrecision::from_seconds(3600).unwrap())
}

#[tokio::test]
async fn aggregation_and_aggregate_share_time_interval() {
    let h = start_helper().await;
    let leader = provision(&h, BatchMode::TimeInterval, 10).await;
    let t = now();
    let buckets = [0usize, 1, 1, 2, 3, 3, 3, 0, 2, 3, 1, 1];
    let reports: Vec<Prepared> = buckets.iter().map(|b| leader.prepare(*b, t)).collect();
    let refs: Vec<&Prepared> = reports.iter().collect();
    let body = leader.init_req(&refs, None);

    let resp = leader.post(&h, "aggregation_jobs", media_type::AGGREGATION_JOB_INIT_REQ, body.clone()).await;
    assert_eq!(resp.status(), 201);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&format!("{}tasks/{}/aggregation_jobs/", h.base, leader.task_id)));
    assert_eq!(resp.headers()["content-type"], media_type::AGGREGATION_JOB_RESP);
    let first = resp.bytes().await.unwrap();
    let job_resp = AggregationJobResp::get_decoded(&first).unwrap();
    assert_eq!(job_resp.verify_resps.len(), reports.len());

    // The leader finishes each report with the helper's message.
    let ctx = vdaf_context(&leader.task_id);
    let mut leader_share = leader.vdaf.aggregate_init();
    let mut checksum = BatchChecksum::default();
    for (p, r) in reports.iter().zip(&job_resp.verify_resps) {
        assert_eq!(r.report_id, p.verify_init.report_share.report_metadata.report_id);
        let VerifyRespType::Continue { payload } = &r.verify_resp_type else { panic!("{r:?}") };
        let Transition::Finished { out_share } =
            leader.vdaf.leader_continued(&ctx, p.leader_state.clone(), payload).unwrap()
        else {
            panic!()
        };
        leader_share.accumulate(&out_share).unwrap();
        checksum.update(&r.report_id);
    }

    // A retried identical POST names the same job and gets the same answer, without recounting.
    let again = leader.post(&h, "aggregation_jobs", media_type::AGGREGATION_JOB_INIT_REQ, body).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["location"].to_str().unwrap(), location);
    assert_eq!(again.bytes().await.unwrap(), first);
    // GET with the step returns the job; a wrong step is a stepMismatch.
    let (name, value) = leader.agg_token.header(TokenScheme::Bearer);
    let got = h.http.get(format!("{location}?step=0")).header(name.clone(), value.clone()).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap(), first);
    let got = h.http.get(format!("{location}?step=3")).header(name.clone(), value.clone()).send().await.unwrap();
    assert_eq!(problem(got).await.1.type_uri, "urn:ietf:params:ppm:dap:error:stepMismatch");

    // A new job replaying one report, plus bad reports of each kind.
    let fresh = leader.prepare(2, t);
    let mut bad_proof = leader.prepare(1, t);
    let last = bad_proof.verify_init.payload.len() - 1;
    bad_proof.verify_init.payload[last] ^= 0xff;
    let too_early = leader.prepare(1, Time::from_units(t.units() + 100));
    let mut unknown_key = leader.prepare(1, t);
    unknown_key.verify_init.report_share.encrypted_input_share.config_id = HpkeConfigId(200);
    let body2 = leader.init_req(&[&reports[0], &fresh, &bad_proof, &too_early, &unknown_key], None);
    let resp = leader.post(&h, "aggregation_jobs", media_type::AGGREGATION_JOB_INIT_REQ, body2).await;
    assert_eq!(resp.status(), 201);
    let r2 = AggregationJobResp::get_decoded(&resp.bytes().await.unwrap()).unwrap();
    let kinds: Vec<Option<ReportError>> = r2
        .verify_resps
        .iter()
        .map(|r| match r.verify_resp_type {
            VerifyRespType::Reject { report_error } => Some(report_error),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            Some(ReportError::ReportReplayed),
            None,
            Some(ReportError::VdafVerifyError),
            Some(ReportError::ReportTooEarly),
            Some(ReportError::HpkeDecryptError)
        ]
    );
    // The leader commits the fresh report too.
    let VerifyRespType::Continue { payload } = &r2.verify_resps[1].verify_resp_type else { panic!() };
    let Transition::Finished { out_share } =
        leader.vdaf.leader_continued(&ctx, fresh.leader_state.clone(), payload).unwrap()
    else {
        panic!()
    };
    leader_share.accumulate(&out_share).unwrap();
    checksum.update(&fresh.verify_init.report_share.report_metadata.report_id);
    let count = reports.len() as u64 + 1;

    let interval = Interval::new(t, Duration::ONE);
    let collection_job_req =
        CollectionJobReq { query: Query::time_interval(interval), agg_param: vec![], extensions: vec![] };
    let share_req = |report_count, checksum| {
        AggregateShareReq {
            collection_job_req: collection_job_req.clone(),
            batch_selector: BatchSelector::time_interval(interval),
            report_count,
            checksum,
        }
        .get_encoded()
        .unwrap()
    };
    // Wrong count: batchMismatch, and nothing is released or marked collected.
    let resp =
        leader.post(&h, "aggregate_shares", media_type::AGGREGATE_SHARE_REQ, share_req(count - 1, checksum)).await;
    assert_eq!(problem(resp).await.1.type_uri, "urn:ietf:params:ppm:dap:error:batchMismatch");
    // An empty neighbouring interval is below min_batch_size.
    let empty = AggregateShareReq {
        collection_job_req: CollectionJobReq {
            query: Query::time_interval(Interval::new(Time::from_units(t.units() - 5), Duration::ONE)),
            agg_param: vec![],
            extensions: vec![],
        },
        batch_selector: BatchSelector::time_interval(Interval::new(Time::from_units(t.units() - 5), Duration::ONE)),
        report_count: 0,
        checksum: BatchChecksum::default(),
    };
    let resp = leader.post(&h, "aggregate_shares", media_type::AGGREGATE_SHARE_REQ, empty.get_encoded().unwrap()).await;
    let (status, doc) = problem(resp).await;
    assert_eq!((status, doc.type_uri.as_str()), (400, "urn:ietf:params:ppm:dap:error:invalidBatchSize"));

    let resp = leader.post(&h, "aggregate_shares", media_type::AGGREGATE_SHARE_REQ, share_req(count, checksum)).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["content-type"], media_type::AGGREGATE_SHARE);
    let share_bytes = resp.bytes().await.unwrap();
    let share = AggregateShare::get_decoded(&share_bytes).unwrap();
    let aad = AggregateShareAad {
        task_id: leader.task_id,
        task_configuration: leader.params.task_configuration().unwrap(),
        collection_job_req: collection_job_req.clone(),
    }
    .get_encoded()
    .unwrap();
    let helper_plain = open(
        &leader.collector,
        &HpkeApplicationInfo::AggregateShare { sender: Role::Helper },
        &share.encrypted_aggregate_share,
        &aad,
    )
    .unwrap();
    let helper_share = leader.vdaf.decode_aggregate_share(&helper_plain).unwrap();
    let result = leader.vdaf.unshard(&leader_share, &helper_share, count).unwrap();
    let mut expected = vec![0u128; 4];
    for b in buckets.iter().chain([2usize].iter()) {
        expected[*b] += 1;
    }
    assert_eq!(result, AggregateResult::Vector(expected));

    // Retrying the identical request gets the same share; another request for the batch overlaps.
    let resp = leader.post(&h, "aggregate_shares", media_type::AGGREGATE_SHARE_REQ, share_req(count, checksum)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), share_bytes);
    let wider = AggregateShareReq {
        collection_job_req: CollectionJobReq {
            query: Query::time_interval(Interval::new(t, Duration::from_units(2))),
            agg_param: vec![],
            extensions: vec![],
        },
        batch_selector: BatchSelector::time_interval(Interval::new(t, Duration::from_units(2))),
        report_count: count,
        checksum,
    };
    let resp = leader.post(&h, "aggregate_shares", media_type::AGGREGATE_SHARE_REQ, wider.get_encoded().unwrap()).await;
    assert_eq!(problem(resp).await.1.type_uri, "urn:ietf:params:ppm:dap:error:batchOverlap");

    // A report arriving for the collected batch is refused with batch_collected.
    let late = leader.prepare(0, t);
    let resp = leader
        .post(&h, "aggregation_jobs", media_type::AGGREGATION_JOB_INIT_REQ, leader.init_req(&[&late], None))
        .await;
    let r = AggregationJobResp::get_decoded(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(
        r.verify_resps[0].verify_resp_type,
        VerifyRespType::Reject { report_error: ReportError::BatchCollected }
    );
}

#[tokio::test]
async fn leader_selected_needs_its_batch_id_and_auth_is_enforced() {
    let h = start_helper().await;
    let leader = provision(&h, BatchMode::LeaderSelected, 1).await;
    let p = leader.prepare(1, now());
    // Without the batch ID extension the job is invalid.
    let resp =
        leader.post(&h, "aggregation_jobs", media_type::AGGREGATION_JOB_INIT_REQ, leader.init_req(&[&p], None)).await;
    assert_eq!(problem(resp).await.1.type_uri, "urn:ietf:params:ppm:dap:error:invalidMessage");
    let batch_id = BatchId::random();
    let resp = leader
        .post(&h, "aggregation_jobs", media_type::AGGREGATION_JOB_INIT_REQ, leader.init_req(&[&p], Some(batch_id)))
        .await;
    assert_eq!(resp.status(), 201);
    let r = AggregationJobResp::get_decoded(&resp.bytes().await.unwrap()).unwrap();
    assert!(matches!(r.verify_resps[0].verify_resp_type, VerifyRespType::Continue { .. }));

    // Wrong and missing tokens, a wrong media type, an unknown task, garbage.
    let url = format!("{}tasks/{}/aggregation_jobs", h.base, leader.task_id);
    let body = leader.init_req(&[&leader.prepare(0, now())], Some(batch_id));
    let resp = h
        .http
        .post(&url)
        .header("dap-auth-token", "wrong")
        .header("content-type", media_type::AGGREGATION_JOB_INIT_REQ)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = h
        .http
        .post(&url)
        .header("content-type", media_type::AGGREGATION_JOB_INIT_REQ)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = leader.post(&h, "aggregation_jobs", "application/octet-stream", body.clone()).await;
    assert_eq!(resp.status(), 415);
    let resp = leader.post(&h, "aggregation_jobs", media_type::AGGREGATION_JOB_INIT_REQ, vec![0, 0, 0]).await;
    assert_eq!(problem(resp).await.1.type_uri, "urn:ietf:params:ppm:dap:error:invalidMessage");
    let resp = h
        .http
        .post(format!("{}tasks/{}/aggregation_jobs", h.base, TaskId::random()))
        .header("content-type", media_type::AGGREGATION_JOB_INIT_REQ)
        .body(body)
        .send()
        .await
        .unwrap();
    let (status, doc) = problem(resp).await;
    assert_eq!((status, doc.type_uri.as_str()), (404, "urn:ietf:params:ppm:dap:error:unrecognizedTask"));
    assert!(doc.taskid.is_some());

    // Deleting the job keeps the replay record: the same report in a new job is a replay.
    let job = AggregationJobId::random();
    let (name, value) = leader.agg_token.header(TokenScheme::Bearer);
    let resp = h.http.delete(format!("{url}/{job}")).header(name.clone(), value.clone()).send().await.unwrap();
    assert_eq!(problem(resp).await.1.type_uri, "urn:ietf:params:ppm:dap:error:unrecognizedAggregationJob");
    let p2 = Prepared { verify_init: p.verify_init.clone(), leader_state: p.leader_state.clone() };
    let resp = leader
        .post(
            &h,
            "aggregation_jobs",
            media_type::AGGREGATION_JOB_INIT_REQ,
            leader.init_req(&[&p2, &leader.prepare(2, now())], Some(batch_id)),
        )
        .await;
    let r = AggregationJobResp::get_decoded(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(
        r.verify_resps[0].verify_resp_type,
        VerifyRespType::Reject { report_error: ReportError::ReportReplayed }
    );
}

#[tokio::test]
async fn identical_concurrent_continuations_both_get_the_stored_answer() {
    let h = start_helper().await;
    let leader = provision(&h, BatchMode::TimeInterval, 1).await;
    for round in 0..10 {
        let p = leader.prepare(round % 4, now());
        let resp = leader
            .post(&h, "aggregation_jobs", media_type::AGGREGATION_JOB_INIT_REQ, leader.init_req(&[&p], None))
            .await;
        assert_eq!(resp.status(), 201);
        let location = resp.headers()["location"].to_str().unwrap().to_string();
        let job_id = location.rsplit('/').next().unwrap().to_string();
        // Prio3 finishes at once, so the step is empty; it still moves the job to step 1, and two
        // copies of it race each other.
        let body =
            AggregationJobContinueReq { step: AggregationJobStep(1), verify_continues: vec![] }.get_encoded().unwrap();
        let path = format!("aggregation_jobs/{job_id}");
        let (a, b) = tokio::join!(
            leader.post(&h, &path, media_type::AGGREGATION_JOB_CONTINUE_REQ, body.clone()),
            leader.post(&h, &path, media_type::AGGREGATION_JOB_CONTINUE_REQ, body.clone()),
        );
        assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200), "round {round}");
        let (a, b) = (a.bytes().await.unwrap(), b.bytes().await.unwrap());
        assert_eq!(a, b, "round {round}: one answer");
        assert!(AggregationJobResp::get_decoded(&a).unwrap().verify_resps.is_empty());
        // A different request for the step just taken is still a step mismatch.
        let other = AggregationJobContinueReq {
            step: AggregationJobStep(1),
            verify_continues: vec![VerifyContinue {
                report_id: p.verify_init.report_share.report_metadata.report_id,
                payload: vec![1],
            }],
        }
        .get_encoded()
        .unwrap();
        let (status, doc) =
            problem(leader.post(&h, &path, media_type::AGGREGATION_JOB_CONTINUE_REQ, other).await).await;
        assert_eq!((status, doc.type_uri.as_str()), (400, "urn:ietf:params:ppm:dap:error:stepMismatch"));
    }
}

#[tokio::test]
async fn identical_concurrent_continuations_of_a_multi_round_job_both_get_the_stored_answer() {
    let h = start_helper().await;
    // Four rounds: the helper continues after initialisation and after step 1, finishing at 2.
    let leader = provision_vdaf(&h, BatchMode::TimeInterval, 1, VdafConfig::Dummy { rounds: 4 }).await;
    let ctx = vdaf_context(&leader.task_id);
    for round in 0..5u8 {
        let reports: Vec<Prepared> =
            (0..6).map(|i| leader.prepare_measurement(&Measurement::Dummy(round * 10 + i), now())).collect();
        let body = leader.init_req(&reports.iter().collect::<Vec<_>>(), None);
        let resp = leader.post(&h, "aggregation_jobs", media_type::AGGREGATION_JOB_INIT_REQ, body).await;
        assert_eq!(resp.status(), 201);
        let job_id = resp.headers()["location"].to_str().unwrap().rsplit('/').next().unwrap().to_string();
        let init = AggregationJobResp::get_decoded(&resp.bytes().await.unwrap()).unwrap();
        let verify_continues: Vec<VerifyContinue> = reports
            .iter()
            .zip(&init.verify_resps)
            .map(|(p, r)| {
                let VerifyRespType::Continue { payload } = &r.verify_resp_type else { panic!("{r:?}") };
                let Transition::Continued { outbound, .. } =
                    leader.vdaf.leader_continued(&ctx, p.leader_state.clone(), payload).unwrap()
                else {
                    panic!("the leader continues")
                };
                VerifyContinue { report_id: r.report_id, payload: outbound }
            })
            .collect();
        let body = AggregationJobContinueReq { step: AggregationJobStep(1), verify_continues }.get_encoded().unwrap();
        let path = format!("aggregation_jobs/{job_id}");
        let (a, b) = tokio::join!(
            leader.post(&h, &path, media_type::AGGREGATION_JOB_CONTINUE_REQ, body.clone()),
            leader.post(&h, &path, media_type::AGGREGATION_JOB_CONTINUE_REQ, body.clone()),
        );
        assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200), "round {round}");
        let (a, b) = (a.bytes().await.unwrap(), b.bytes().await.unwrap());
        assert_eq!(a, b, "round {round}: one answer");
        let answer = AggregationJobResp::get_decoded(&a).unwrap();
        assert_eq!(answer.verify_resps.len(), 6);
        assert!(
            answer.verify_resps.iter().all(|r| matches!(r.verify_resp_type, VerifyRespType::Continue { .. })),
            "every report goes on to step 2"
        );
        // The same request once more, later: the stored answer again.
        let again = leader.post(&h, &path, media_type::AGGREGATION_JOB_CONTINUE_REQ, body).await;
        assert_eq!(again.status(), 200);
        assert_eq!(again.bytes().await.unwrap(), a, "round {round}: the stored answer");
    }
}

#[tokio::test]
async fn a_deferred_job_is_polled_until_its_answer_is_ready() {
    // Every job is answered asynchronously.
    let queue = duet_helper::queue::QueueLimits { workers: 1, async_threshold: 0, max_queued: 4 };
    let h = start_helper_with(HelperConfig { queue, ..HelperConfig::default() }).await;
    let leader = provision(&h, BatchMode::TimeInterval, 1).await;
    let reports: Vec<Prepared> = (0..20).map(|i| leader.prepare(i % 4, now())).collect();
    let body = leader.init_req(&reports.iter().collect::<Vec<_>>(), None);
    let resp = leader.post(&h, "aggregation_jobs", media_type::AGGREGATION_JOB_INIT_REQ, body.clone()).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["retry-after"], "1");
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(location.ends_with("?step=0"), "{location}");
    assert!(resp.bytes().await.unwrap().is_empty(), "deferred: no body");
    let (name, value) = leader.agg_token.header(TokenScheme::DapAuthToken);
    let mut answer = None;
    for _ in 0..100 {
        let r = h.http.get(&location).header(name.clone(), value.clone()).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let bytes = r.bytes().await.unwrap();
        if !bytes.is_empty() {
            answer = Some(bytes);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let answer = AggregationJobResp::get_decoded(&answer.expect("the job finished")).unwrap();
    assert_eq!(answer.verify_resps.len(), 20);
    assert!(answer.verify_resps.iter().all(|r| matches!(r.verify_resp_type, VerifyRespType::Continue { .. })));
    // The identical request now gets the stored answer at once.
    let again = leader.post(&h, "aggregation_jobs", media_type::AGGREGATION_JOB_INIT_REQ, body).await;
    assert_eq!(again.status(), 200);
    assert_eq!(AggregationJobResp::get_decoded(&again.bytes().await.unwrap()).unwrap(), answer);
}
