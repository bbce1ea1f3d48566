//! The bad-input suite: hostile and broken requests sent over HTTP to real `duet-leader` and
//! `duet-helper` processes. Each gets the status and problem type DAP-18 prescribes (or the
//! per-report error, for uploads), and leaves the stored state as it was. The suite prints the
//! table of what was tried and what came back.

use duet_client::upload::Client;
use duet_common::media_type;
use duet_common::messages::*;
use duet_common::time::{Duration as DapDuration, Interval, Time};
use duet_common::vdaf::{Measurement, VdafConfig};
use duet_common::{Decode, Encode};
use duet_tests::{past_hour, Deployment, LeaderOptions};
use reqwest::Method;
use sqlx::Row;
use std::time::Duration;

/// What a case must get back.
#[derive(Clone, Debug)]
enum Expect {
    /// A problem document with this status and (when given) this DAP problem token.
    Problem(u16, Option<&'static str>),
    /// 200 with an `UploadErrors` naming this report error for every report sent.
    UploadError(ReportError),
    /// 200 or 201 with an `AggregationJobResp` rejecting every report with this error.
    Rejected(ReportError),
}

struct Case {
    name: &'static str,
    method: Method,
    url: String,
    content_type: Option<&'static str>,
    token: Option<String>,
    body: Vec<u8>,
    expect: Expect,
    /// Whether the case may change stored state (a rejected report share is remembered).
    changes_state: bool,
}

/// Row counts of every table the servers write.
async fn state(d: &Deployment) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for (who, pool) in [("leader", d.leader_db().await), ("helper", helper_db(d).await)] {
        for table in [
            "tasks",
            "client_reports",
            "client_report_payloads",
            "collection_jobs",
            "collected_batches",
            "batch_aggregations",
            "aggregated_report_ids",
            "helper_aggregation_jobs",
            "helper_report_states",
            "helper_aggregate_shares",
            "leader_aggregation_jobs",
        ] {
            let n: i64 = sqlx::query(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(&pool).await.unwrap().get(0);
            out.push((format!("{who}.{table}"), n));
        }
        // Report states too: a bad request must not move a report along.
        let n: i64 = sqlx::query(duet_tests::AGGREGATED_REPORTS_SQL).fetch_one(&pool).await.unwrap().get(0);
        out.push((format!("{who}.aggregated_reports"), n));
    }
    out
}

async fn helper_db(d: &Deployment) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(&format!("sqlite:{}?mode=ro", d.dir.path().join("helper.db").display())).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_input_gets_its_answer_and_changes_nothing() {
    let d = Deployment::start(LeaderOptions::default()).await;
    let (l, h) = (d.leader.url(), d.helper.url());
    let vdaf = VdafConfig::Prio3Count;
    let task = d.create_task(vdaf.clone(), BatchMode::TimeInterval, 5, None, None).await;
    let params = task.credentials.task.clone();
    let tid = params.task_id;
    let collector_token = task.credentials.collector_auth_token.clone();
    let agg_token = task.leader_request.aggregator_auth_token.clone();
    let hour = past_hour();

    // Set-up: ten reports aggregated and their hour collected.
    let client = Client::new(params.clone(), d.http.clone()).unwrap();
    let items: Vec<_> = (0..10).map(|_| (Measurement::Count(true), hour + 1)).collect();
    client.upload(&items).await.unwrap();
    let collector = duet_client::collect::Collector::new(&task.credentials, d.http.clone()).unwrap();
    collector.collect(collector.query(Some((hour, 3600))).unwrap(), Duration::from_secs(120)).await.unwrap();
    // A second hour with 3 reports, below the threshold of 5.
    let items: Vec<_> = (0..3).map(|_| (Measurement::Count(true), hour - 3600)).collect();
    client.upload(&items).await.unwrap();

    let configs = client.hpke_configs().await.unwrap();
    let report = |time: u64| client.prepare_report_with_configs(&configs, &Measurement::Count(true), time).unwrap();
    let upload_body = |reports: Vec<Report>| UploadRequest { reports }.get_encoded().unwrap();
    // One report stored before the suite runs; every later upload of it is a replay.
    let replayed = report(hour - 3600);
    let resp = d
        .http
        .post(format!("{l}tasks/{tid}/reports"))
        .header("content-type", media_type::UPLOAD_REQ)
        .body(upload_body(vec![replayed.clone()]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Let everything be aggregated, so that the state is still while the suite runs.
    d.wait_aggregated().await;

    let mut stale = report(hour);
    stale.leader_encrypted_input_share.config_id = HpkeConfigId(configs.leader.id.0.wrapping_add(77));
    let future = report(hour + 30 * 86400);
    let with_ext = {
        let mut r = report(hour - 7200);
        r.report_metadata.public_extensions =
            vec![Extension { extension_type: ExtensionType(0xff00), extension_data: vec![] }];
        r
    };
    let dup_ext = {
        let mut r = report(hour - 7200);
        let e = Extension { extension_type: ExtensionType(7), extension_data: vec![1] };
        r.report_metadata.public_extensions = vec![e.clone(), e];
        r
    };
    let good_upload = upload_body(vec![report(hour - 7200)]);

    let ti_query = |start: u64, duration: u64| {
        Query::TimeInterval(TimeIntervalQueryConfig {
            batch_interval: Interval::new(Time::from_units(start / 3600), DapDuration::from_units(duration)),
        })
    };
    let cj = |query: Query, agg_param: Vec<u8>, extensions: Vec<CollectionJobExtension>| {
        CollectionJobReq { query, agg_param, extensions }.get_encoded().unwrap()
    };
    let cj_ext =
        |t: u16| CollectionJobExtension { extension_type: CollectionJobExtensionType(t), extension_data: vec![] };
    let init = |agg_param: Vec<u8>, extensions: Vec<AggregationJobExtension>, verify_inits: Vec<VerifyInit>| {
        AggregationJobInitReq { verification_key_id: 0, agg_param, extensions, verify_inits }.get_encoded().unwrap()
    };
    let share_of = |r: &Report, payload: Vec<u8>| VerifyInit {
        report_share: ReportShare {
            report_metadata: r.report_metadata.clone(),
            public_share: r.public_share.clone(),
            encrypted_input_share: r.helper_encrypted_input_share.clone(),
        },
        payload,
    };
    let fresh = report(hour - 10800);
    let mut unknown_key = report(hour - 10800);
    unknown_key.helper_encrypted_input_share.config_id = HpkeConfigId(configs.helper.id.0.wrapping_add(50));
    let share_req = |query: Query, selector: BatchSelector, count: u64| {
        AggregateShareReq {
            collection_job_req: CollectionJobReq { query, agg_param: vec![], extensions: vec![] },
            batch_selector: selector,
            report_count: count,
            checksum: BatchChecksum::default(),
        }
        .get_encoded()
        .unwrap()
    };
    let selector = |start: u64| {
        BatchSelector::TimeInterval(TimeIntervalBatchSelectorConfig {
            batch_interval: Interval::new(Time::from_units(start / 3600), DapDuration::ONE),
        })
    };
    let other_task = TaskId::random();
    let p = |status: u16, kind: Option<&'static str>| Expect::Problem(status, kind);
    let case = |name, method, url: String, ct, token: Option<&String>, body: Vec<u8>, expect| Case {
        name,
        method,
        url,
        content_type: ct,
        token: token.cloned(),
        body,
        expect,
        changes_state: false,
    };
    let (up, cjr, aji, ajc, asr) = (
        Some(media_type::UPLOAD_REQ),
        Some(media_type::COLLECTION_JOB_REQ),
        Some(media_type::AGGREGATION_JOB_INIT_REQ),
        Some(media_type::AGGREGATION_JOB_CONTINUE_REQ),
        Some(media_type::AGGREGATE_SHARE_REQ),
    );
    let reports_url = format!("{l}tasks/{tid}/reports");
    let cj_url = format!("{l}tasks/{tid}/collection_jobs");
    let aj_url = format!("{h}tasks/{tid}/aggregation_jobs");
    let as_url = format!("{h}tasks/{tid}/aggregate_shares");
    let ct = Some(&collector_token);
    let at = Some(&agg_token);
    let wrong = "wrong-token-0123456789".to_string();
    let mut truncated = good_upload.clone();
    truncated.truncate(truncated.len() - 5);

    let mut cases = vec![
        // ---- leader: upload ----
        case(
            "upload: garbage body",
            Method::POST,
            reports_url.clone(),
            up,
            None,
            vec![0xde, 0xad, 0xbe, 0xef, 1],
            p(400, Some("invalidMessage")),
        ),
        case(
            "upload: truncated report",
            Method::POST,
            reports_url.clone(),
            up,
            None,
            truncated,
            p(400, Some("invalidMessage")),
        ),
        case(
            "upload: wrong media type",
            Method::POST,
            reports_url.clone(),
            Some("application/json"),
            None,
            good_upload.clone(),
            p(415, None),
        ),
        case("upload: no media type", Method::POST, reports_url.clone(), None, None, good_upload.clone(), p(415, None)),
        case("upload: GET instead of POST", Method::GET, reports_url.clone(), None, None, vec![], p(405, None)),
        case(
            "upload: unknown task",
            Method::POST,
            format!("{l}tasks/{other_task}/reports"),
            up,
            None,
            good_upload.clone(),
            p(404, Some("unrecognizedTask")),
        ),
        case(
            "upload: malformed task ID",
            Method::POST,
            format!("{l}tasks/not-a-task/reports"),
            up,
            None,
            good_upload.clone(),
            p(400, Some("invalidMessage")),
        ),
        case(
            "upload: oversized body",
            Method::POST,
            reports_url.clone(),
            up,
            None,
            vec![0u8; 2 * 1024 * 1024],
            p(413, None),
        ),
        case(
            "upload: replayed report ID",
            Method::POST,
            reports_url.clone(),
            up,
            None,
            upload_body(vec![replayed.clone()]),
            Expect::UploadError(ReportError::ReportReplayed),
        ),
        case(
            "upload: unknown HPKE config ID",
            Method::POST,
            reports_url.clone(),
            up,
            None,
            upload_body(vec![stale]),
            Expect::UploadError(ReportError::OutdatedConfig),
        ),
        case(
            "upload: timestamp 30 days ahead",
            Method::POST,
            reports_url.clone(),
            up,
            None,
            upload_body(vec![future]),
            Expect::UploadError(ReportError::ReportTooEarly),
        ),
        case(
            "upload: unknown public extension",
            Method::POST,
            reports_url.clone(),
            up,
            None,
            upload_body(vec![with_ext]),
            Expect::UploadError(ReportError::InvalidMessage),
        ),
        case(
            "upload: duplicated extensions",
            Method::POST,
            reports_url.clone(),
            up,
            None,
            upload_body(vec![dup_ext]),
            Expect::UploadError(ReportError::InvalidMessage),
        ),
        case(
            "upload: report for a collected batch",
            Method::POST,
            reports_url.clone(),
            up,
            None,
            upload_body(vec![report(hour + 2)]),
            Expect::UploadError(ReportError::ReportReplayed),
        ),
        // ---- leader: collection ----
        case(
            "collect: no token",
            Method::POST,
            cj_url.clone(),
            cjr,
            None,
            cj(ti_query(hour - 3600, 1), vec![], vec![]),
            p(401, None),
        ),
        case(
            "collect: wrong token",
            Method::POST,
            cj_url.clone(),
            cjr,
            Some(&wrong),
            cj(ti_query(hour - 3600, 1), vec![], vec![]),
            p(401, None),
        ),
        case(
            "collect: aggregator's token",
            Method::POST,
            cj_url.clone(),
            cjr,
            at,
            cj(ti_query(hour - 3600, 1), vec![], vec![]),
            p(401, None),
        ),
        case(
            "collect: garbage body",
            Method::POST,
            cj_url.clone(),
            cjr,
            ct,
            vec![9, 9, 9],
            p(400, Some("invalidMessage")),
        ),
        case(
            "collect: wrong media type",
            Method::POST,
            cj_url.clone(),
            Some(media_type::UPLOAD_REQ),
            ct,
            cj(ti_query(hour - 3600, 1), vec![], vec![]),
            p(415, None),
        ),
        case(
            "collect: leader-selected query on time-interval task",
            Method::POST,
            cj_url.clone(),
            cjr,
            ct,
            cj(Query::LeaderSelected(LeaderSelectedQueryConfig), vec![], vec![]),
            p(400, Some("invalidMessage")),
        ),
        case(
            "collect: non-empty aggregation parameter",
            Method::POST,
            cj_url.clone(),
            cjr,
            ct,
            cj(ti_query(hour - 3600, 1), vec![1], vec![]),
            p(400, Some("invalidAggregationParameter")),
        ),
        case(
            "collect: empty batch interval",
            Method::POST,
            cj_url.clone(),
            cjr,
            ct,
            cj(ti_query(hour - 3600, 0), vec![], vec![]),
            p(400, Some("batchInvalid")),
        ),
        case(
            "collect: unsupported extension",
            Method::POST,
            cj_url.clone(),
            cjr,
            ct,
            cj(ti_query(hour - 3600, 1), vec![], vec![cj_ext(9)]),
            p(400, Some("unsupportedExtension")),
        ),
        case(
            "collect: extensions out of order",
            Method::POST,
            cj_url.clone(),
            cjr,
            ct,
            cj(ti_query(hour - 3600, 1), vec![], vec![cj_ext(9), cj_ext(3)]),
            p(400, Some("invalidExtension")),
        ),
        case(
            "collect: overlaps a collected batch",
            Method::POST,
            cj_url.clone(),
            cjr,
            ct,
            cj(ti_query(hour - 3600, 2), vec![], vec![]),
            p(400, Some("batchOverlap")),
        ),
        case(
            "collect: unknown task",
            Method::POST,
            format!("{l}tasks/{other_task}/collection_jobs"),
            cjr,
            ct,
            cj(ti_query(hour - 3600, 1), vec![], vec![]),
            p(404, Some("unrecognizedTask")),
        ),
        case(
            "collect: GET unknown job",
            Method::GET,
            format!("{cj_url}/{}", CollectionJobId::random()),
            None,
            ct,
            vec![],
            p(404, None),
        ),
        case(
            "collect: GET malformed job ID",
            Method::GET,
            format!("{cj_url}/..%2f..%2fetc"),
            None,
            ct,
            vec![],
            p(404, None),
        ),
        case(
            "collect: DELETE unknown job",
            Method::DELETE,
            format!("{cj_url}/{}", CollectionJobId::random()),
            None,
            ct,
            vec![],
            p(404, None),
        ),
        case("collect: PUT on the collection", Method::PUT, cj_url.clone(), cjr, ct, vec![], p(405, None)),
        // ---- both: hpke_config and admin ----
        case("hpke_config: POST", Method::POST, format!("{l}hpke_config"), None, None, vec![], p(405, None)),
        case("admin: no token", Method::GET, format!("{l}admin/tasks"), None, None, vec![], p(401, None)),
        case("admin: collector's token", Method::GET, format!("{l}admin/tasks"), None, ct, vec![], p(401, None)),
        case(
            "admin: malformed task JSON",
            Method::POST,
            format!("{h}admin/tasks"),
            Some("application/json"),
            Some(&d.helper_admin.expose().to_string()),
            b"{\"task\":".to_vec(),
            p(400, None),
        ),
        // ---- helper: aggregation jobs ----
        case(
            "aggregate: no token",
            Method::POST,
            aj_url.clone(),
            aji,
            None,
            init(vec![], vec![], vec![]),
            p(401, None),
        ),
        case(
            "aggregate: wrong token",
            Method::POST,
            aj_url.clone(),
            aji,
            Some(&wrong),
            init(vec![], vec![], vec![]),
            p(401, None),
        ),
        case(
            "aggregate: collector's token",
            Method::POST,
            aj_url.clone(),
            aji,
            ct,
            init(vec![], vec![], vec![]),
            p(401, None),
        ),
        case(
            "aggregate: garbage body",
            Method::POST,
            aj_url.clone(),
            aji,
            at,
            vec![1, 2, 3],
            p(400, Some("invalidMessage")),
        ),
        case(
            "aggregate: wrong media type",
            Method::POST,
            aj_url.clone(),
            Some(media_type::UPLOAD_REQ),
            at,
            init(vec![], vec![], vec![]),
            p(415, None),
        ),
        case(
            "aggregate: non-empty aggregation parameter",
            Method::POST,
            aj_url.clone(),
            aji,
            at,
            init(vec![7], vec![], vec![]),
            p(400, Some("invalidAggregationParameter")),
        ),
        case(
            "aggregate: unknown extension",
            Method::POST,
            aj_url.clone(),
            aji,
            at,
            init(
                vec![],
                vec![AggregationJobExtension {
                    extension_type: AggregationJobExtensionType(77),
                    extension_data: vec![],
                }],
                vec![],
            ),
            p(400, Some("unsupportedExtension")),
        ),
        case(
            "aggregate: batch ID on a time-interval task",
            Method::POST,
            aj_url.clone(),
            aji,
            at,
            init(vec![], vec![AggregationJobExtension::leader_selected_batch_id(BatchId::random())], vec![]),
            p(400, Some("invalidMessage")),
        ),
        case(
            "aggregate: the same report twice in a job",
            Method::POST,
            aj_url.clone(),
            aji,
            at,
            init(vec![], vec![], vec![share_of(&fresh, vec![1]), share_of(&fresh, vec![1])]),
            p(400, Some("invalidMessage")),
        ),
        case(
            "aggregate: unknown task",
            Method::POST,
            format!("{h}tasks/{other_task}/aggregation_jobs"),
            aji,
            at,
            init(vec![], vec![], vec![]),
            p(404, Some("unrecognizedTask")),
        ),
        case(
            "aggregate: continue an unknown job",
            Method::POST,
            format!("{aj_url}/{}", AggregationJobId::random()),
            ajc,
            at,
            AggregationJobContinueReq { step: AggregationJobStep(1), verify_continues: vec![] }.get_encoded().unwrap(),
            p(404, Some("unrecognizedAggregationJob")),
        ),
        case(
            "aggregate: GET an unknown job",
            Method::GET,
            format!("{aj_url}/{}?step=0", AggregationJobId::random()),
            None,
            at,
            vec![],
            p(404, Some("unrecognizedAggregationJob")),
        ),
        // ---- helper: aggregate shares ----
        case("share: garbage body", Method::POST, as_url.clone(), asr, at, vec![4, 4], p(400, Some("invalidMessage"))),
        case(
            "share: wrong token",
            Method::POST,
            as_url.clone(),
            asr,
            Some(&wrong),
            share_req(ti_query(hour - 3600, 1), selector(hour - 3600), 3),
            p(401, None),
        ),
        case(
            "share: batch below min_batch_size",
            Method::POST,
            as_url.clone(),
            asr,
            at,
            share_req(ti_query(hour - 3600, 1), selector(hour - 3600), 4),
            p(400, Some("invalidBatchSize")),
        ),
        case(
            "share: selector outside the query",
            Method::POST,
            as_url.clone(),
            asr,
            at,
            share_req(ti_query(hour - 3600, 1), selector(hour - 7200), 3),
            p(400, Some("batchInvalid")),
        ),
        case(
            "share: already collected batch",
            Method::POST,
            as_url.clone(),
            asr,
            at,
            share_req(ti_query(hour, 1), selector(hour), 10),
            p(400, Some("batchOverlap")),
        ),
        case(
            "share: GET unknown share",
            Method::GET,
            format!("{as_url}/{}", AggregateShareId::random()),
            None,
            at,
            vec![],
            p(404, None),
        ),
    ];
    // Per-report rejections inside a well-formed job: the job is remembered, so state changes.
    let mut rejected = case(
        "aggregate: report share for an unknown HPKE config",
        Method::POST,
        aj_url.clone(),
        aji,
        at,
        init(vec![], vec![], vec![share_of(&unknown_key, vec![0])]),
        Expect::Rejected(ReportError::HpkeDecryptError),
    );
    rejected.changes_state = true;
    cases.push(rejected);
    let mut bad_payload = case(
        "aggregate: leader's verifier message is garbage",
        Method::POST,
        aj_url.clone(),
        aji,
        at,
        init(vec![], vec![], vec![share_of(&fresh, vec![0xff; 3])]),
        Expect::Rejected(ReportError::InvalidMessage),
    );
    bad_payload.changes_state = true;
    cases.push(bad_payload);

    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut table = vec!["| # | input | expected | answer |".to_string(), "|---|---|---|---|".to_string()];
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let before = state(&d).await;
        let mut req = d.http.request(c.method.clone(), &c.url).body(c.body.clone());
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        if let Some(t) = &c.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.unwrap();
        let ctype = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        let (answer, ok) = match &c.expect {
            Expect::Problem(want_status, want_kind) => {
                let doc: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
                let kind = doc
                    .as_ref()
                    .and_then(|d| d["type"].as_str())
                    .map(|t| t.rsplit(':').next().unwrap_or(t).to_string());
                let answer = format!("{status} {}", kind.clone().unwrap_or_default());
                let ok = status == *want_status
                    && ctype == media_type::PROBLEM_JSON
                    && match want_kind {
                        Some(k) => kind.as_deref() == Some(*k),
                        None => true,
                    };
                (answer, ok)
            }
            Expect::UploadError(e) => match UploadErrors::get_decoded(&body) {
                Ok(u) => {
                    let names: Vec<&str> = u.status.iter().map(|s| s.error.name()).collect();
                    (
                        format!("{status} UploadErrors {names:?}"),
                        status == 200 && u.status.len() == 1 && u.status[0].error == *e,
                    )
                }
                Err(_) => (format!("{status} (no UploadErrors)"), false),
            },
            Expect::Rejected(e) => match AggregationJobResp::get_decoded(&body) {
                Ok(r) => {
                    let got: Vec<String> = r.verify_resps.iter().map(|v| format!("{:?}", v.verify_resp_type)).collect();
                    let ok = (status == 200 || status == 201)
                        && r.verify_resps
                            .iter()
                            .all(|v| v.verify_resp_type == VerifyRespType::Reject { report_error: *e });
                    (format!("{status} {got:?}"), ok)
                }
                Err(_) => (format!("{status} (no AggregationJobResp)"), false),
            },
        };
        let after = state(&d).await;
        let unchanged = before == after;
        let expected = match &c.expect {
            Expect::Problem(s, k) => format!("{s} {}", k.unwrap_or("")),
            Expect::UploadError(e) => format!("200 UploadErrors [{}]", e.name()),
            Expect::Rejected(e) => format!("Reject {}", e.name()),
        };
        table.push(format!(
            "| {} | {} | {} | {}{} |",
            i + 1,
            c.name,
            expected.trim(),
            answer.trim(),
            if c.changes_state || unchanged { "" } else { " (STATE CHANGED)" }
        ));
        if !ok || (!c.changes_state && !unchanged) {
            failures.push(format!("{}: expected {expected}, got {answer}, state unchanged: {unchanged}", c.name));
        }
    }
    eprintln!("{}", table.join("\n"));
    assert!(failures.is_empty(), "{failures:#?}");
    // The servers are still up and serving.
    assert_eq!(d.http.get(format!("{l}hpke_config")).send().await.unwrap().status(), 200);
    assert_eq!(d.http.get(format!("{h}hpke_config")).send().await.unwrap().status(), 200);
}
