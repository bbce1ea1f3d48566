//! The leader's upload endpoint over real HTTP on loopback: accepted reports are stored, and
//! replays, reports from the future, stale HPKE configs and bad requests get the spec's answers.
//! The leader reads the time from a test clock, which the test moves.

use duet_common::auth::{AuthenticationToken, TokenScheme};
use duet_common::clock::{Clock, TestClock};
use duet_common::hpke::{seal, HpkeApplicationInfo, HpkeKeypair};
use duet_common::media_type;
use duet_common::messages::*;
use duet_common::problem::ProblemDocument;
use duet_common::task::{hpke_config_to_b64, AggregatorTaskRequest, TaskParameters};
use duet_common::time::{Time, TimePrecision};
use duet_common::vdaf::{vdaf_context, Measurement, Vdaf, VdafConfig, VerifyKey};
use duet_common::{Decode, Encode};
use duet_leader::{router, LeaderConfig, LeaderState};

#[tokio::test]
async fn upload_accepts_stores_and_rejects_per_report() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("leader.db").display());
    // 2026-01-01T00:00:00Z, standing still until the test moves it.
    let clock = TestClock::at(1_767_225_600);
    let store = duet_leader::store::open_with_clock(
        &url,
        std::sync::Arc::new(duet_server::sealing::DatabaseKeys::ephemeral()),
        std::sync::Arc::new(clock.clone()),
    )
    .await
    .unwrap();
    // A second connection, to check what the leader stored.
    let db = sqlx::SqlitePool::connect(&url).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    let admin = AuthenticationToken::new("admin").unwrap();
    let app = router(LeaderState::new(store, LeaderConfig::default()).unwrap(), Some(admin.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::new();

    let params = TaskParameters {
        task_id: TaskId::random(),
        task_info: "upload test".into(),
        leader_endpoint: base.clone(),
        helper_endpoint: "https://helper.example/".into(),
        time_precision: 60,
        min_batch_size: 10,
        batch_mode: BatchMode::TimeInterval,
        vdaf: VdafConfig::Prio3Count,
        task_interval_seconds: None,
        dp: None,
    };
    let collector = HpkeKeypair::generate_default(HpkeConfigId(1));
    let req = AggregatorTaskRequest {
        parameters: params.clone(),
        vdaf_verify_key: VerifyKey::random().to_base64(),
        aggregator_auth_token: AuthenticationToken::random().expose().into(),
        collector_auth_token: Some(AuthenticationToken::random().expose().into()),
        collector_hpke_config: hpke_config_to_b64(collector.config()),
        max_batch_size: None,
        report_expiry_age: None,
    };
    let (n, v) = admin.header(TokenScheme::Bearer);
    let resp = http.post(format!("{base}admin/tasks")).header(n, v).json(&req).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    // Without the admin token, provisioning is refused.
    let resp = http.post(format!("{base}admin/tasks")).json(&req).send().await.unwrap();
    assert_eq!(resp.status(), 401);

    let list = http.get(format!("{base}hpke_config")).send().await.unwrap().bytes().await.unwrap();
    let leader_config = HpkeConfigList::get_decoded(&list).unwrap().0[0].clone();
    let helper = HpkeKeypair::generate_default(HpkeConfigId(3));
    let config_encoded = params.task_configuration().unwrap().get_encoded().unwrap();
    let vdaf = Vdaf::new(&params.vdaf).unwrap();
    let precision = TimePrecision::from_seconds(60).unwrap();
    let make = |time: Time, leader_cfg: &HpkeConfig| {
        let report_id = ReportId::random();
        let ctx = vdaf_context(&params.task_id);
        let (public, [ls, hs]) = vdaf.shard(&ctx, &Measurement::Count(true), report_id.as_bytes()).unwrap();
        let metadata = ReportMetadata { report_id, time, public_extensions: vec![] };
        let aad = InputShareAad::encode_parts(&params.task_id, &config_encoded, &metadata, &public).unwrap();
        let enc = |cfg: &HpkeConfig, role, payload| {
            let plain = PlaintextInputShare { private_extensions: vec![], payload }.get_encoded().unwrap();
            seal(cfg, &HpkeApplicationInfo::InputShare { recipient: role }, &plain, &aad).unwrap()
        };
        Report {
            leader_encrypted_input_share: enc(leader_cfg, Role::Leader, ls),
            helper_encrypted_input_share: enc(helper.config(), Role::Helper, hs),
            report_metadata: metadata,
            public_share: public,
        }
    };
    let now = Time::from_seconds(clock.now_seconds(), precision);
    let good: Vec<Report> = (0..5).map(|_| make(now, &leader_config)).collect();
    let post = |body: Vec<u8>, media: &'static str| {
        http.post(format!("{base}tasks/{}/reports", params.task_id)).header("content-type", media).body(body).send()
    };
    let resp =
        post(UploadRequest { reports: good.clone() }.get_encoded().unwrap(), media_type::UPLOAD_REQ).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap().is_empty(), "all accepted: empty body");

    let mut stale = leader_config.clone();
    stale.id = HpkeConfigId(77);
    let future = make(Time::from_units(now.units() + 60), &leader_config);
    let outdated = make(now, &stale);
    let fresh = make(now, &leader_config);
    let mixed = vec![good[0].clone(), fresh.clone(), future.clone(), outdated.clone(), fresh.clone()];
    let resp = post(UploadRequest { reports: mixed }.get_encoded().unwrap(), media_type::UPLOAD_REQ).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], media_type::UPLOAD_ERRORS);
    let errors = UploadErrors::get_decoded(&resp.bytes().await.unwrap()).unwrap();
    let id = |r: &Report| r.report_metadata.report_id;
    assert_eq!(
        errors.status,
        vec![
            ReportUploadStatus { id: id(&good[0]), error: ReportError::ReportReplayed },
            ReportUploadStatus { id: id(&future), error: ReportError::ReportTooEarly },
            ReportUploadStatus { id: id(&outdated), error: ReportError::OutdatedConfig },
            ReportUploadStatus { id: id(&fresh), error: ReportError::ReportReplayed },
        ]
    );
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM client_reports WHERE state = 'unaggregated'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(stored, 6, "five good reports and the fresh one");

    // Whole-request failures: malformed body, wrong media type, unknown task. Nothing is stored.
    let resp = post(vec![1, 2, 3], media_type::UPLOAD_REQ).await.unwrap();
    assert_eq!(resp.status(), 400);
    let doc: ProblemDocument = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(doc.type_uri, "urn:ietf:params:ppm:dap:error:invalidMessage");
    assert_eq!(doc.taskid, Some(params.task_id.to_string()));
    let resp = post(UploadRequest { reports: vec![make(now, &leader_config)] }.get_encoded().unwrap(), "text/plain")
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let resp = http
        .post(format!("{base}tasks/{}/reports", TaskId::random()))
        .header("content-type", media_type::UPLOAD_REQ)
        .body(UploadRequest { reports: vec![] }.get_encoded().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let doc: ProblemDocument = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(doc.type_uri, "urn:ietf:params:ppm:dap:error:unrecognizedTask");
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM client_reports").fetch_one(&db).await.unwrap();
    assert_eq!(stored, 6);
    // An hour later by the leader's clock, the report from the future (an hour ahead) is on time.
    clock.advance(3600);
    let resp =
        post(UploadRequest { reports: vec![future] }.get_encoded().unwrap(), media_type::UPLOAD_REQ).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();
    assert!(body.is_empty(), "accepted now: {:?}", UploadErrors::get_decoded(&body));
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM client_reports").fetch_one(&db).await.unwrap();
    assert_eq!(stored, 7);
}
