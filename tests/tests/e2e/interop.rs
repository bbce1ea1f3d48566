//! The interop test API: duet's four roles started as separate processes exactly as an interop
//! runner starts them, driven by the runner of `duet_tests::runner` over HTTP alone.

use duet_cli::process::{sibling_binary, Output, ServerProcess};
use duet_tests::runner::{run_all, Roles, Runner};
use duet_tests::{Balancer, PgDatabase};
use std::time::Duration;

fn role(binary: &str, args: &[&str]) -> ServerProcess {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(["--port", "0", "--host", "127.0.0.1"].map(String::from));
    let log = std::env::var("DUET_TEST_LOG").unwrap_or_else(|_| "warn".into());
    ServerProcess::spawn(
        &sibling_binary(binary).unwrap(),
        &all,
        &[("RUST_LOG", &log)],
        Output::Prefixed(args[0].into()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn duet_roles_pass_every_interop_case() {
    let leader = role("duet-leader", &["interop"]);
    let helper = role("duet-helper", &["interop"]);
    let client = role("duet", &["interop-client"]);
    let collector = role("duet", &["interop-collector"]);
    let roles = Roles { client: client.url(), leader: leader.url(), helper: helper.url(), collector: collector.url() };
    let outcomes = run_all(roles).await;
    let mut failures = Vec::new();
    for o in &outcomes {
        eprintln!("{} {}: {:?}", if o.result.is_ok() { "PASS" } else { "FAIL" }, o.case, o.result);
        if o.result.is_err() {
            failures.push(&o.case);
        }
    }
    assert!(outcomes.len() >= 13, "every case ran");
    assert!(failures.is_empty(), "failed cases: {failures:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_test_api_answers_unknown_paths_and_bad_json_as_the_draft_says() {
    let leader = role("duet-leader", &["interop"]);
    let collector = role("duet", &["interop-collector"]);
    let r = Runner::new(Roles {
        client: String::new(),
        leader: leader.url(),
        helper: String::new(),
        collector: collector.url(),
    });
    for base in [leader.url(), collector.url()] {
        let resp = r
            .http
            .post(format!("{base}internal/test/no_such_thing"))
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        let resp = r.http.post(format!("{base}internal/test/add_task")).body("{not json").send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let answer: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(answer["status"], "error");
        assert!(answer["error"].as_str().unwrap().contains("malformed"), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_interop_leaders_on_one_postgres_database() {
    let db = PgDatabase::create().await;
    // A database given to an interop server outlives it: a key that seals its secrets must be
    // given too, the same for both leaders.
    let unkeyed = ServerProcess::spawn(
        &sibling_binary("duet-leader").unwrap(),
        &["interop", "--database", &db.url, "--port", "0"].map(String::from),
        &[],
        Output::Discard,
    );
    assert!(unkeyed.is_err(), "an interop leader on a given database without a key starts");
    let keyed = ["interop", "--database", &db.url, "--database-keys", duet_tests::DATABASE_KEY];
    let leaders = [role("duet-leader", &keyed), role("duet-leader", &keyed)];
    let lb = Balancer::start(leaders.iter().map(|l| l.addr).collect()).await;
    let helper = role("duet-helper", &["interop"]);
    let client = role("duet", &["interop-client"]);
    let collector = role("duet", &["interop-collector"]);
    let r =
        Runner::new(Roles { client: client.url(), leader: lb.url(), helper: helper.url(), collector: collector.url() });
    r.wait_ready(Duration::from_secs(60)).await.unwrap();
    let task = r.add_task(duet_common::vdaf::VdafConfig::Prio3Count, 1, 40, 3600).await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let time = (now / 3600 - 1) * 3600;
    for i in 0..40 {
        r.upload(&task, serde_json::json!(if i % 4 == 0 { "1" } else { "0" }), Some(time)).await.unwrap();
    }
    let query = serde_json::json!({ "type": 1, "batch_interval_start": time, "batch_interval_duration": 3600 });
    let answer = r.collect(&task, query, Duration::from_secs(120)).await.unwrap();
    assert_eq!(answer["report_count"], 40);
    assert_eq!(answer["result"], "10");
    assert!(lb.counts().iter().all(|&c| c > 0), "both leaders served: {:?}", lb.counts());
}
