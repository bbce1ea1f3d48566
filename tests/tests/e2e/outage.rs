//! The database going away under a running leader: requests are answered 503 with a problem
//! document (and `Retry-After`) instead of hanging or failing obscurely, and once the database
//! is back the leader recovers by itself and nothing accepted is lost.

use duet_client::admin::{provision_task, AdminClient, NewTask};
use duet_client::collect::Collector;
use duet_client::upload::Client;
use duet_common::auth::AuthenticationToken;
use duet_common::vdaf::{AggregateResult, Measurement};
use duet_tests::{count_task, past_hour, postgres_admin_url, spawn, CuttableProxy, PgDatabase};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_answers_503_and_recovers() {
    let (leader_db, helper_db) = (PgDatabase::create().await, PgDatabase::create().await);
    let pg_addr = {
        let url = reqwest::Url::parse(&postgres_admin_url()).unwrap();
        let addr = tokio::net::lookup_host((url.host_str().unwrap(), url.port().unwrap_or(5432)))
            .await
            .unwrap()
            .next()
            .unwrap();
        addr
    };
    let proxy = CuttableProxy::start(pg_addr).await;
    let (leader_admin, helper_admin) = (AuthenticationToken::random(), AuthenticationToken::random());
    let mut helper = spawn("duet-helper", &["--database".into(), helper_db.url.clone()], &helper_admin, "127.0.0.1:0");
    let leader_args =
        ["--database".to_string(), leader_db.url_via(proxy.addr), "--creator-interval-ms".into(), "200".into()];
    let mut leader = spawn("duet-leader", &leader_args, &leader_admin, "127.0.0.1:0");

    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let params = count_task("outage", leader.url(), helper.url());
    let task = NewTask::generate(params.clone(), None);
    let la = AdminClient::new(http.clone(), &leader.url(), leader_admin.clone()).unwrap();
    let ha = AdminClient::new(http.clone(), &helper.url(), helper_admin.clone()).unwrap();
    provision_task(&la, &task.leader_request, &ha, &task.helper_request).await.unwrap();
    let client = Client::new(params.clone(), http.clone()).unwrap();
    let time = past_hour();
    let before: Vec<_> = (0..20).map(|_| (Measurement::Count(true), time)).collect();
    assert_eq!(client.upload(&before).await.unwrap().accepted, 20);

    // The database goes away: the admin API, which always reads it, answers 503.
    proxy.cut();
    let resp =
        http.get(format!("{}admin/tasks", leader.url())).bearer_auth(leader_admin.expose()).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert!(resp.headers().contains_key("retry-after"));
    let doc: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(doc["status"], 503);
    // An upload during the outage is refused the same way, not half-stored.
    let report = client.prepare_report(&Measurement::Count(true), time).await.unwrap();
    let body =
        duet_common::Encode::get_encoded(&duet_common::messages::UploadRequest { reports: vec![report] }).unwrap();
    let resp = http
        .post(format!("{}tasks/{}/reports", leader.url(), params.task_id))
        .header("content-type", duet_common::media_type::UPLOAD_REQ)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Back again: the leader recovers without a restart.
    proxy.restore();
    let after: Vec<_> = (0..15).map(|i| (Measurement::Count(i % 3 == 0), time)).collect();
    let outcome = client.upload(&after).await.unwrap();
    assert_eq!(outcome.accepted, 15);
    let collector = Collector::new(&task.credentials, http.clone()).unwrap();
    let result =
        collector.collect(collector.query(Some((time, 3600))).unwrap(), Duration::from_secs(120)).await.unwrap();
    assert_eq!(result.report_count, 35, "every report accepted before and after the outage");
    assert_eq!(result.result, AggregateResult::Scalar(25));
    leader.terminate(Duration::from_secs(10));
    helper.terminate(Duration::from_secs(10));
}
