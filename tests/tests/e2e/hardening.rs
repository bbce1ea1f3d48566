//! Hardening with real processes: the admin API on a listener of its own, and metric labels
//! that clients cannot multiply.

use duet_common::auth::AuthenticationToken;
use duet_tests::{metric, ops_get, spawn};

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_on_its_own_listener_is_absent_from_the_public_one() {
    let dir = tempfile::tempdir().unwrap();
    let admin = AuthenticationToken::random();
    let http = reqwest::Client::new();
    for role in ["duet-leader", "duet-helper"] {
        let args: Vec<String> = [
            "--database",
            &format!("sqlite:{}", dir.path().join(format!("{role}.db")).display()),
            "--admin-listen",
            "127.0.0.1:0",
        ]
        .map(String::from)
        .to_vec();
        let server = spawn(role, &args, &admin, "127.0.0.1:0");
        let admin_addr = server.admin_addr.expect("the admin listener's address");
        assert_ne!(admin_addr, server.addr);
        let get = |url: String| {
            let http = http.clone();
            let token = admin.expose().to_string();
            async move { http.get(url).bearer_auth(token).send().await.unwrap() }
        };
        // The admin API answers on its listener only, even with the right token.
        let on_admin = get(format!("http://{admin_addr}/admin/tasks")).await;
        assert_eq!(on_admin.status(), 200, "{role}");
        assert_eq!(on_admin.json::<serde_json::Value>().await.unwrap()["task_ids"], serde_json::json!([]));
        let on_public = get(format!("{}admin/tasks", server.url())).await;
        assert_eq!(on_public.status(), 404, "{role}: no /admin on the public listener");
        let keys = get(format!("{}admin/hpke_keys", server.url())).await;
        assert_eq!(keys.status(), 404, "{role}");
        // DAP stays on the public listener, and only there.
        assert_eq!(get(format!("{}hpke_config", server.url())).await.status(), 200, "{role}");
        assert_eq!(get(format!("http://{admin_addr}/hpke_config")).await.status(), 404, "{role}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_made_up_method_is_counted_as_other() {
    let dir = tempfile::tempdir().unwrap();
    let admin = AuthenticationToken::random();
    let args: Vec<String> =
        ["--database", &format!("sqlite:{}", dir.path().join("h.db").display()), "--metrics-listen", "127.0.0.1:0"]
            .map(String::from)
            .to_vec();
    let server = spawn("duet-helper", &args, &admin, "127.0.0.1:0");
    let http = reqwest::Client::new();
    for method in ["BREW", "WHEN", "XYZZY"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = http.request(method, format!("{}hpke_config", server.url())).send().await.unwrap();
        assert_eq!(resp.status(), 405);
    }
    http.get(format!("{}hpke_config", server.url())).send().await.unwrap();
    let (_, text) = ops_get(&server, "/metrics").await;
    let count =
        |method: &str| metric(&text, "duet_http_requests_total", &[("route", "/hpke_config"), ("method", method)]);
    assert_eq!(count("other"), Some(3.0), "{text}");
    assert_eq!(count("GET"), Some(1.0), "{text}");
    assert!(!text.contains("BREW") && !text.contains("XYZZY"), "{text}");
}

/// Opens a connection and sends the head of a POST announcing a body of `announced` bytes, and
/// the first `sent` of them.
fn post_part(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    media: &str,
    announced: u64,
    sent: usize,
) -> std::net::TcpStream {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: {media}\r\n\
         Content-Length: {announced}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&vec![0u8; sent]).unwrap();
    stream
}

/// The status line of the answer on `stream`, if one comes within `seconds`.
fn status_line(mut stream: std::net::TcpStream, seconds: u64) -> String {
    use std::io::Read;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(seconds))).unwrap();
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).unwrap_or(0);
    String::from_utf8_lossy(&answer[..n]).lines().next().unwrap_or("no answer").to_string()
}

/// Sends the head of a POST announcing a body of `announced` bytes, and a few of them; the
/// status line of the answer, if one comes within five seconds (the body never does).
fn answer_before_the_body(addr: std::net::SocketAddr, path: &str, token: &str, media: &str, announced: u64) -> String {
    use std::io::Read;
    let mut stream = post_part(addr, path, token, media, announced, 64);
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).unwrap_or(0);
    String::from_utf8_lossy(&answer[..n]).lines().next().unwrap_or("no answer before the body").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_with_a_bad_token_is_refused_before_its_body_is_read() {
    use duet_common::media_type;
    use duet_common::messages::{BatchMode, TaskId};
    use duet_common::vdaf::VdafConfig;
    let d = duet_tests::Deployment::start(duet_tests::LeaderOptions::default()).await;
    let task = d.create_task(VdafConfig::Prio3Count, BatchMode::TimeInterval, 1, None, None).await;
    let id: TaskId = task.credentials.task.task_id;
    let wrong = AuthenticationToken::random();
    let big = 50 << 20;
    for (addr, path, media, token) in [
        (d.helper.addr, format!("/tasks/{id}/aggregation_jobs"), media_type::AGGREGATION_JOB_INIT_REQ, wrong.expose()),
        (d.helper.addr, format!("/tasks/{id}/aggregate_shares"), media_type::AGGREGATE_SHARE_REQ, wrong.expose()),
        (d.leader.addr, format!("/tasks/{id}/collection_jobs"), media_type::COLLECTION_JOB_REQ, wrong.expose()),
        (d.leader.addr, "/admin/tasks".to_string(), "application/json", wrong.expose()),
    ] {
        let status = answer_before_the_body(addr, &path, token, media, big);
        assert_eq!(status, "HTTP/1.1 401 Unauthorized", "{path}");
    }
    // An upload (which takes no token) for a task the leader does not know, unread too.
    let unknown = format!("/tasks/{}/reports", TaskId::random());
    let status = answer_before_the_body(d.leader.addr, &unknown, "", media_type::UPLOAD_REQ, big);
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    // With the right token, a body over the limit is refused as announced, unread.
    let status =
        answer_before_the_body(d.leader.addr, "/admin/tasks", d.leader_admin.expose(), "application/json", big);
    assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
}

/// The request bodies a server holds in memory at once are bounded: with room for 1 MiB, a
/// second upload of 600 KiB finds none while a first one is being sent (slowly), and is answered
/// 503 after its wait; once the first connection is gone its room is given back.
#[tokio::test(flavor = "multi_thread")]
async fn request_bodies_held_in_memory_at_once_are_bounded() {
    use duet_common::media_type;
    use duet_common::messages::{BatchMode, TaskId};
    use duet_common::vdaf::VdafConfig;
    // The deployment takes bodies of 1 MiB at most (--max-body-bytes).
    let options = duet_tests::LeaderOptions::with_leader_args(&["--max-body-memory-bytes", "1048576"]);
    let d = duet_tests::Deployment::start(options).await;
    let task = d.create_task(VdafConfig::Prio3Count, BatchMode::TimeInterval, 1, None, None).await;
    let id: TaskId = task.credentials.task.task_id;
    let path = format!("/tasks/{id}/reports");
    let size = 600 * 1024;
    let first = post_part(d.leader.addr, &path, "", media_type::UPLOAD_REQ, size, 1024);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let second = post_part(d.leader.addr, &path, "", media_type::UPLOAD_REQ, size, 1024);
    let status = tokio::task::spawn_blocking(move || status_line(second, 15)).await.unwrap();
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    drop(first);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // The whole body now: read, and answered for what it holds (zeros are no real reports),
    // not for want of room.
    let third = post_part(d.leader.addr, &path, "", media_type::UPLOAD_REQ, size, size as usize);
    let status = tokio::task::spawn_blocking(move || status_line(third, 15)).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 ") && !status.contains("503"), "{status}");
    let (_, text) = ops_get(&d.leader, "/metrics").await;
    assert_eq!(metric(&text, "duet_requests_refused_for_body_memory_total", &[]), Some(1.0), "{text}");
}

/// An HTTP/2 connection carries at most `--max-streams-per-connection` requests at once: the
/// server says so in its SETTINGS (which a client must honour, RFC 9113 5.1.2), and serves
/// requests over the connection.
#[tokio::test(flavor = "multi_thread")]
async fn an_http2_connection_carries_at_most_its_streams() {
    let options = duet_tests::LeaderOptions::with_leader_args(&["--max-streams-per-connection", "5"]);
    let d = duet_tests::Deployment::start(options).await;
    let tcp = tokio::net::TcpStream::connect(d.leader.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let mut connection = std::pin::pin!(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get(format!("http://{}/hpke_config", d.leader.addr)).body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::select! {
        r = response => r.unwrap(),
        c = connection.as_mut() => panic!("the connection ended before the answer: {c:?}"),
    };
    assert_eq!(response.status(), 200);
    assert_eq!(connection.max_concurrent_send_streams(), 5, "the server's SETTINGS_MAX_CONCURRENT_STREAMS");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_of_too_many_reports_is_refused_with_nothing_stored() {
    use duet_client::upload::{Client, ClientOptions};
    use duet_common::messages::BatchMode;
    use duet_common::vdaf::{Measurement, VdafConfig};
    let options = duet_tests::LeaderOptions::with_leader_args(&["--max-reports-per-upload", "10"]);
    let d = duet_tests::Deployment::start(options).await;
    let task = d.create_task(VdafConfig::Prio3Count, BatchMode::TimeInterval, 1, None, None).await;
    let stored = || async {
        let pool = d.leader_db().await;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM client_reports").fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    };
    let items = |n: usize| (0..n).map(|_| (Measurement::Count(true), duet_tests::past_hour())).collect::<Vec<_>>();
    let eleven = ClientOptions { reports_per_request: 11, ..ClientOptions::default() };
    let client = Client::with_options(task.credentials.task.clone(), d.http.clone(), eleven).unwrap();
    let err = client.upload(&items(11)).await.expect_err("eleven reports in one request");
    assert!(err.to_string().contains("at most 10 reports"), "{err}");
    assert_eq!(stored().await, 0, "nothing of the refused request is stored");
    let ten = ClientOptions { reports_per_request: 10, ..ClientOptions::default() };
    let client = Client::with_options(task.credentials.task.clone(), d.http.clone(), ten).unwrap();
    client.upload(&items(11)).await.unwrap();
    assert_eq!(stored().await, 11, "the same reports in requests of ten");
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_older_than_the_expiry_age_are_dropped_by_both_aggregators() {
    use duet_client::admin::{provision_task, AdminClient, NewTask};
    use duet_client::upload::Client;
    use duet_common::messages::{BatchMode, ReportError};
    use duet_common::vdaf::{Measurement, VdafConfig};
    // The helper drops reports older than two hours by default; the leader has no default.
    let options = duet_tests::LeaderOptions {
        helper_args: vec!["--default-report-expiry-seconds".into(), "7200".into()],
        ..duet_tests::LeaderOptions::default()
    };
    let d = duet_tests::Deployment::start(options).await;
    let old = duet_tests::past_hour() - 5 * 3600;
    let count = |items: &[(Measurement, u64)]| items.to_vec();
    // An hour inside the two: still fresh if the clock's hour turns over while the test runs.
    let fresh: Vec<_> = (0..4).map(|_| (Measurement::Count(true), duet_tests::past_hour() + 3600)).collect();
    let stale: Vec<_> = (0..3).map(|_| (Measurement::Count(true), old)).collect();

    // A task without an age of its own: the leader takes the stale reports, the helper drops
    // them when they come up for aggregation.
    let task = d.create_task(VdafConfig::Prio3Count, BatchMode::TimeInterval, 1, None, None).await;
    let client = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
    let outcome = client.upload(&[count(&fresh), count(&stale)].concat()).await.unwrap();
    assert_eq!((outcome.accepted, outcome.rejected.len()), (7, 0));
    d.wait_aggregated().await;
    let pool = d.leader_db().await;
    let failed: Vec<i64> = sqlx::query_scalar("SELECT report_error FROM client_reports WHERE state = 'failed'")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(failed, vec![ReportError::ReportDropped as i64; 3], "the helper dropped the stale reports");
    pool.close().await;

    // A task of its own age (two hours): the leader drops stale reports at upload.
    let mut params = task.credentials.task.clone();
    params.task_id = duet_common::messages::TaskId::random();
    let mut new = NewTask::generate(params.clone(), None);
    let la = AdminClient::new(d.http.clone(), &d.leader.url(), d.leader_admin.clone()).unwrap();
    let ha = AdminClient::new(d.http.clone(), &d.helper.url(), d.helper_admin.clone()).unwrap();
    // Shorter than the time precision: refused, with the reason.
    new.leader_request.report_expiry_age = Some(600);
    let err = la.create_task(&new.leader_request).await.expect_err("an age shorter than the precision");
    assert!(err.to_string().contains("report_expiry_age 600 is shorter than the task's time_precision 3600"), "{err}");
    new.leader_request.report_expiry_age = Some(7200);
    new.helper_request.report_expiry_age = Some(7200);
    provision_task(&la, &new.leader_request, &ha, &new.helper_request).await.unwrap();
    let client = Client::new(params, d.http.clone()).unwrap();
    let outcome = client.upload(&[count(&fresh), count(&stale)].concat()).await.unwrap();
    assert_eq!(outcome.accepted, 4);
    let errors: Vec<ReportError> = outcome.rejected.iter().map(|(_, e)| *e).collect();
    assert_eq!(errors, vec![ReportError::ReportDropped; 3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_provisioned_again_with_other_secrets_is_refused() {
    use duet_client::admin::AdminClient;
    use duet_common::messages::BatchMode;
    use duet_common::vdaf::VdafConfig;
    let d = duet_tests::Deployment::start(duet_tests::LeaderOptions::default()).await;
    let task = d.create_task(VdafConfig::Prio3Count, BatchMode::TimeInterval, 1, None, None).await;
    for (url, admin, request) in [
        (d.leader.url(), &d.leader_admin, &task.leader_request),
        (d.helper.url(), &d.helper_admin, &task.helper_request),
    ] {
        let client = AdminClient::new(d.http.clone(), &url, admin.clone()).unwrap();
        // The identical request again: a no-op.
        client.create_task(request).await.unwrap();
        let mut other_token = request.clone();
        other_token.aggregator_auth_token = AuthenticationToken::random().expose().into();
        let mut other_key = request.clone();
        other_key.vdaf_verify_key = duet_common::vdaf::VerifyKey::random().to_base64();
        for other in [other_token, other_key] {
            let resp = d.http.post(format!("{url}admin/tasks")).bearer_auth(admin.expose()).json(&other).send().await;
            let resp = resp.unwrap();
            assert_eq!(resp.status(), 409, "{url}");
            let problem: serde_json::Value = resp.json().await.unwrap();
            assert!(
                problem["detail"].as_str().unwrap().contains("exists with other parameters or secrets"),
                "{problem}"
            );
        }
    }
    // The task still runs on its first secrets.
    let client = duet_client::upload::Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
    let items = [(duet_common::vdaf::Measurement::Count(true), duet_tests::past_hour())];
    assert_eq!(client.upload(&items).await.unwrap().accepted, 1);
    d.wait_aggregated().await;
    let pool = d.leader_db().await;
    let failed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM client_reports WHERE state = 'failed'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(failed, 0, "the helper verified with the verify key both hold");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_deleted_through_one_replica_is_refused_by_the_other_within_the_cache_bound() {
    use duet_client::admin::{AdminClient, NewTask};
    use duet_client::upload::Client;
    use duet_common::vdaf::Measurement;
    let db = duet_tests::PgDatabase::create().await;
    let admin = AuthenticationToken::random();
    let args = vec!["--database".to_string(), db.url.clone()];
    let (a, b) =
        (spawn("duet-leader", &args, &admin, "127.0.0.1:0"), spawn("duet-leader", &args, &admin, "127.0.0.1:0"));
    // A helper only for its HPKE configuration: the clients encrypt to it, nothing is aggregated.
    let dir = tempfile::tempdir().unwrap();
    let helper_db = vec!["--database".to_string(), format!("sqlite:{}", dir.path().join("h.db").display())];
    let helper = spawn("duet-helper", &helper_db, &admin, "127.0.0.1:0");
    let http = reqwest::Client::new();
    let params = duet_tests::count_task("cache bound", a.url(), helper.url());
    let task = NewTask::generate(params.clone(), None);
    let through_a = AdminClient::new(http.clone(), &a.url(), admin.clone()).unwrap();
    through_a.create_task(&task.leader_request).await.unwrap();
    // Replica B serves the task (and now holds it in memory).
    let mut on_b = params.clone();
    on_b.leader_endpoint = b.url();
    let upload_to_b = || {
        let client = Client::new(on_b.clone(), http.clone()).unwrap();
        async move { client.upload(&[(Measurement::Count(true), duet_tests::past_hour())]).await }
    };
    assert_eq!(upload_to_b().await.unwrap().accepted, 1);
    // Deleted through A: B refuses it within its cache bound (10 s), not only after a restart.
    let deleted = http
        .delete(format!("{}admin/tasks/{}", a.url(), params.task_id))
        .bearer_auth(admin.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let start = std::time::Instant::now();
    // When the last upload B took began: an attempt's own time (two GETs, sealing, the POST)
    // on a loaded machine is no part of the cache bound.
    let mut last_taken = std::time::Duration::ZERO;
    let refused = loop {
        let began = start.elapsed();
        match upload_to_b().await {
            Err(e) => break e.to_string(),
            Ok(_) if start.elapsed() < std::time::Duration::from_secs(15) => {
                last_taken = began;
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Ok(_) => panic!("replica B still takes uploads for a task deleted 15 s ago"),
        }
    };
    let waited = start.elapsed();
    assert!(refused.contains("unrecognizedTask"), "{refused}");
    // B held the task from before the deletion, so its entry lapsed within 10 s of it.
    assert!(last_taken <= std::time::Duration::from_secs(10), "B took an upload begun {last_taken:?} after");
    eprintln!("replica B refused the deleted task after {waited:?}");
}
