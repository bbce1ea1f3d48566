//! The output guard, end to end: differential-privacy noise added by both aggregators, a per-task
//! budget the leader enforces, batch thresholds on both aggregators, overlapping queries
//! refused, and every result carrying its guarantee. Each refusal releases nothing.

mod mechanisms;

use duet_cli::process::sibling_binary;
use duet_client::collect::Collector;
use duet_client::upload::Client;
use duet_common::dp::DpConfig;
use duet_common::messages::*;
use duet_common::vdaf::{AggregateResult, Measurement, VdafConfig};
use duet_common::Encode;
use duet_tests::{past_hour, Deployment, LeaderOptions};
use sqlx::Row;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);

/// The rows of one task in one of the leader's tables (`collected_batches`, `collection_jobs`).
async fn leader_rows_of(d: &Deployment, table: &str, task: &duet_client::admin::NewTask) -> i64 {
    let db = d.leader_db().await;
    sqlx::query(&format!("SELECT COUNT(*) FROM {table} WHERE task_id = $1"))
        .bind(task.credentials.task.task_id.as_bytes().as_slice())
        .fetch_one(&db)
        .await
        .unwrap()
        .get::<i64, _>(0)
}

async fn collected_batches(d: &Deployment) -> i64 {
    let db = d.leader_db().await;
    sqlx::query("SELECT COUNT(*) FROM collected_batches").fetch_one(&db).await.unwrap().get::<i64, _>(0)
}

/// Asks for a collection the task's budget cannot pay for: refused with duet's problem type
/// (403), whose document is returned.
async fn refused_past_the_budget(
    d: &Deployment,
    task: &duet_client::admin::NewTask,
    query: Query,
) -> serde_json::Value {
    let resp = d
        .http
        .post(format!("{}tasks/{}/collection_jobs", d.leader.url(), task.credentials.task.task_id))
        .header("content-type", duet_common::media_type::COLLECTION_JOB_REQ)
        .bearer_auth(&task.credentials.collector_auth_token)
        .body(CollectionJobReq { query, agg_param: vec![], extensions: vec![] }.get_encoded().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let doc: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(doc["type"], duet_common::problem::PRIVACY_BUDGET_EXHAUSTED);
    doc
}

#[tokio::test(flavor = "multi_thread")]
async fn noise_budget_and_overlap_on_sqlite() {
    noise_budget_and_overlap(LeaderOptions::default()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn noise_budget_and_overlap_on_postgres() {
    noise_budget_and_overlap(LeaderOptions::postgres()).await
}

async fn noise_budget_and_overlap(options: LeaderOptions) {
    let d = Deployment::start(options).await;
    let vdaf = VdafConfig::Prio3Histogram { length: 5, chunk_length: 2 };
    let dp = DpConfig::laplace("1", Some("2"));
    let task = d.create_task_with_dp(vdaf.clone(), BatchMode::TimeInterval, 10, None, None, Some(dp)).await;
    let client = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
    let hours = [past_hour(), past_hour() - 3600, past_hour() - 7200];
    let ms: Vec<Measurement> = (0..30).map(|i| Measurement::Histogram(i % 5)).collect();
    let AggregateResult::Vector(truth) = duet_client::simulate::clear_aggregate(&vdaf, &ms) else { panic!() };
    for h in hours {
        let items: Vec<_> = (0..30).map(|i| (Measurement::Histogram(i % 5), h + 5)).collect();
        assert_eq!(client.upload(&items).await.unwrap().accepted, 30);
    }
    let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();

    // First collection: exact count, noisy but close histogram, and the guarantee says so.
    let first = collector.collect(collector.query(Some((hours[0], 3600))).unwrap(), TIMEOUT).await.unwrap();
    assert_eq!(first.report_count, 30);
    let AggregateResult::NoisyVector(noisy) = &first.result else { panic!("{:?}", first.result) };
    // Noise far beyond its scale (t = 2, SD 3.96 in the result) would be a bug; the entries keep
    // their sign.
    for (x, t) in noisy.iter().zip(&truth) {
        assert!((*x - *t as i128).abs() < 60, "noisy {x} vs true {t}");
    }
    assert!(first.guarantee.noise.as_deref().unwrap().contains("discrete Laplace"));
    let budget = first.guarantee.budget.unwrap();
    assert_eq!((budget.spent, budget.total, budget.unit), (1.0, Some(2.0), duet_common::dp::BudgetUnit::Epsilon));

    // Second, through the CLI as an analyst would: the budget is used up.
    let creds = d.dir.path().join("collector.json");
    std::fs::write(&creds, serde_json::to_vec(&task.credentials).unwrap()).unwrap();
    let out = std::process::Command::new(sibling_binary("duet").unwrap())
        .args(["collect", "--credentials", creds.to_str().unwrap(), "--interval-start", &hours[1].to_string()])
        .args(["--interval-duration", "3600"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("duet collect output:\n{text}");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Reports:   30"), "{text}");
    assert!(text.contains("do not collude"), "{text}");
    assert!(text.contains("discrete Laplace noise (pure DP, epsilon = 1 per collection)"), "{text}");
    assert!(text.contains("standard deviation 3.96 per entry of the result"), "{text}");
    assert!(text.contains("privacy budget: epsilon 2 of 2 spent, 0 left."), "{text}");
    assert_eq!(collected_batches(&d).await, 2);

    // A query overlapping a collected hour: batchOverlap; nothing more is collected.
    let err = collector.start(collector.query(Some((hours[1], 7200))).unwrap()).await.unwrap_err();
    assert!(err.to_string().contains("batchOverlap"), "{err}");
    // The third hour would exceed the budget: refused with duet's problem type, nothing released.
    let doc = refused_past_the_budget(&d, &task, collector.query(Some((hours[2], 3600))).unwrap()).await;
    assert!(doc["detail"].as_str().unwrap().contains("spent 2 of its 2"), "{doc}");
    assert_eq!(collected_batches(&d).await, 2, "the refused collections released nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn both_aggregators_refuse_a_batch_below_the_threshold() {
    let d = Deployment::start(LeaderOptions::default()).await;
    let task = d.create_task(VdafConfig::Prio3Count, BatchMode::TimeInterval, 10, None, None).await;
    let params = task.credentials.task.clone();
    let client = Client::new(params.clone(), d.http.clone()).unwrap();
    let hour = past_hour();
    let five: Vec<_> = (0..5).map(|_| (Measurement::Count(true), hour)).collect();
    client.upload(&five).await.unwrap();
    let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();
    let query = collector.query(Some((hour, 3600))).unwrap();
    let job = collector.start(query).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(collector.poll(&job).await.unwrap().is_none(), "the leader releases nothing below the threshold");

    // The helper, asked directly for the small batch, refuses with invalidBatchSize.
    let req = AggregateShareReq {
        collection_job_req: CollectionJobReq { query, agg_param: vec![], extensions: vec![] },
        batch_selector: BatchSelector::TimeInterval(TimeIntervalBatchSelectorConfig {
            batch_interval: match query {
                Query::TimeInterval(q) => q.batch_interval,
                _ => unreachable!(),
            },
        }),
        report_count: 5,
        checksum: BatchChecksum::default(),
    };
    let resp = d
        .http
        .post(format!("{}tasks/{}/aggregate_shares", d.helper.url(), params.task_id))
        .header("content-type", duet_common::media_type::AGGREGATE_SHARE_REQ)
        .bearer_auth(&task.leader_request.aggregator_auth_token)
        .body(req.get_encoded().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let doc: duet_common::problem::ProblemDocument = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(doc.dap_type(), Some(duet_common::problem::DapProblemType::InvalidBatchSize));

    // Nothing was released or marked collected: with enough reports the same job completes.
    client.upload(&five).await.unwrap();
    let mut result = None;
    for _ in 0..300 {
        if let Some(r) = collector.poll(&job).await.unwrap() {
            result = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let result = result.expect("collectible once at the threshold");
    assert_eq!((result.report_count, result.result), (10, AggregateResult::Scalar(10)));
    assert!(result.guarantee.noise.is_none());
}
