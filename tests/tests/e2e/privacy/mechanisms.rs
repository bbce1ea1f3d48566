//! Both mechanisms on the most common tasks, with real processes on both backends: a Count task
//! with pure ε-DP (`--dp-epsilon 1`) and a Sum task with zCDP (`--dp-rho`), collected through the
//! library and the `duet` CLI. The results are noisy within their stated scale, every statement
//! names the mechanism, its parameter, the noise's standard deviation and the budget, and the
//! collection past the budget is refused with nothing marked collected.
//!
//! The bounds on the noise are wide: ±25 on a Count at ε = 1 (13 standard deviations; the sum
//! of the two aggregators' discrete Laplace doses exceeds it with probability 9.6 · 10^-11) and
//! ±1414 on the Sum (10 standard deviations of a Gaussian, about 10^-23).

use super::{leader_rows_of, refused_past_the_budget, TIMEOUT};
use duet_cli::process::sibling_binary;
use duet_client::admin::NewTask;
use duet_client::collect::Collector;
use duet_client::upload::Client;
use duet_common::dp::{BudgetUnit, DpConfig};
use duet_common::messages::*;
use duet_common::vdaf::{AggregateResult, Measurement, VdafConfig};
use duet_tests::{past_hour, Deployment, LeaderOptions};

#[tokio::test(flavor = "multi_thread")]
async fn count_with_laplace_and_sum_with_zcdp_on_sqlite() {
    count_with_laplace_and_sum_with_zcdp(LeaderOptions::default()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn count_with_laplace_and_sum_with_zcdp_on_postgres() {
    count_with_laplace_and_sum_with_zcdp(LeaderOptions::postgres()).await
}

const HOURS: usize = 3;
const PER_HOUR: u64 = 40;

async fn count_with_laplace_and_sum_with_zcdp(options: LeaderOptions) {
    let d = Deployment::start(options).await;
    let hours: Vec<u64> = (0..HOURS as u64).map(|i| past_hour() - 3600 * i).collect();
    count_with_laplace(&d, &hours).await;
    sum_with_zcdp(&d, &hours).await;
}

/// Uploads `PER_HOUR` measurements to each hour.
async fn upload_hours(d: &Deployment, task: &NewTask, hours: &[u64], measurement: impl Fn(u64) -> Measurement) {
    let client = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
    for h in hours {
        let items: Vec<_> = (0..PER_HOUR).map(|i| (measurement(i), h + 5)).collect();
        assert_eq!(client.upload(&items).await.unwrap().accepted, PER_HOUR);
    }
}

/// `duet collect` for one hour, as an analyst runs it; its standard output.
fn duet_collect(d: &Deployment, task: &NewTask, hour: u64, extra: &[&str]) -> String {
    let creds = d.dir.path().join(format!("collector-{}.json", task.credentials.task.task_id));
    std::fs::write(&creds, serde_json::to_vec(&task.credentials).unwrap()).unwrap();
    let out = std::process::Command::new(sibling_binary("duet").unwrap())
        .args(["collect", "--credentials", creds.to_str().unwrap(), "--interval-start", &hour.to_string()])
        .args(["--interval-duration", "3600"])
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("duet collect {}:\n{text}", extra.join(" "));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// The leader's collected-batch records and collection jobs of a task.
async fn batches_and_jobs(d: &Deployment, task: &NewTask) -> (i64, i64) {
    (leader_rows_of(d, "collected_batches", task).await, leader_rows_of(d, "collection_jobs", task).await)
}

/// Count, ε = 1 per collection, budget 2: discrete Laplace of scale 1 per aggregator, SD 1.92
/// in the result.
async fn count_with_laplace(d: &Deployment, hours: &[u64]) {
    let dp = DpConfig::laplace("1", Some("2"));
    let task = d.create_task_with_dp(VdafConfig::Prio3Count, BatchMode::TimeInterval, 10, None, None, Some(dp)).await;
    // 25 of every 40 reports are true.
    upload_hours(d, &task, hours, |i| Measurement::Count(i % 8 < 5)).await;
    let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();

    let first = collector.collect(collector.query(Some((hours[0], 3600))).unwrap(), TIMEOUT).await.unwrap();
    assert_eq!(first.report_count, PER_HOUR, "the report count is released exactly");
    let AggregateResult::NoisyScalar(noisy) = first.result else { panic!("{:?}", first.result) };
    assert!((noisy - 25).abs() <= 25, "noisy count {noisy} against 25, SD 1.92");
    let statement = first.guarantee.noise.clone().unwrap();
    assert!(statement.contains("standard deviation 1.92 per entry"), "{statement}");
    let budget = first.guarantee.budget.unwrap();
    assert_eq!((budget.spent, budget.total, budget.unit), (1.0, Some(2.0), BudgetUnit::Epsilon));

    let text = duet_collect(d, &task, hours[1], &[]);
    let line = text.lines().find(|l| l.starts_with("Result:")).unwrap();
    let value: i128 = line["Result:".len()..].trim().trim_end_matches("(with noise)").trim().parse().unwrap();
    assert!((value - 25).abs() <= 25, "{line}");
    assert!(text.contains("Reports:   40"), "{text}");
    assert!(
        text.contains(
            "discrete Laplace noise (pure DP, epsilon = 1 per collection), added by each aggregator to its share: \
             standard deviation 1.92 per entry of the result; values are shown with their noise, unclamped"
        ),
        "{text}"
    );
    assert!(text.contains("privacy budget: epsilon 2 of 2 spent, 0 left."), "{text}");
    assert_eq!(batches_and_jobs(d, &task).await, (2, 2));

    let doc = refused_past_the_budget(d, &task, collector.query(Some((hours[2], 3600))).unwrap()).await;
    assert!(doc["detail"].as_str().unwrap().contains("needs epsilon 1, but the task has spent 2 of its 2"), "{doc}");
    assert_eq!(batches_and_jobs(d, &task).await, (2, 2), "the refusal created no job and marked nothing collected");
}

/// Sum of values up to 100, ρ = 0.5 per collection, budget 1: discrete Gaussian of σ = 100 per
/// aggregator (Δ2 = 100), SD 141 in the result.
async fn sum_with_zcdp(d: &Deployment, hours: &[u64]) {
    let dp = DpConfig::gaussian("0.5", Some("1"));
    let vdaf = VdafConfig::Prio3Sum { max_measurement: 100 };
    let task = d.create_task_with_dp(vdaf, BatchMode::TimeInterval, 10, None, None, Some(dp)).await;
    let value = |i: u64| (i * 37) % 101;
    upload_hours(d, &task, hours, |i| Measurement::Sum(value(i))).await;
    let truth: i128 = (0..PER_HOUR).map(|i| value(i) as i128).sum();

    // Through the CLI as JSON, raw and then clamped.
    let json = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
    let raw = json(&duet_collect(d, &task, hours[0], &["--json"]));
    let first = raw["result"].as_i64().unwrap() as i128;
    assert!((first - truth).abs() <= 1414, "noisy sum {first} against {truth}, SD 141");
    assert_eq!(raw["report_count"], PER_HOUR);
    assert_eq!(raw["privacy"]["budget_unit"], "rho");
    assert_eq!(
        (raw["privacy"]["budget_spent"].as_f64(), raw["privacy"]["budget_total"].as_f64()),
        (Some(0.5), Some(1.0))
    );
    assert_eq!(raw["privacy"]["clamped"], false);
    let noise = raw["privacy"]["noise"].as_str().unwrap();
    assert_eq!(
        noise,
        "discrete Gaussian noise (zero-concentrated DP, rho = 0.5 per collection, i.e. (epsilon = 6.94, delta = \
         1e-9)-DP), added by each aggregator to its share: standard deviation 141 per entry of the result"
    );

    let clamped = json(&duet_collect(d, &task, hours[1], &["--json", "--clamp"]));
    let second = clamped["result"].as_i64().unwrap() as i128;
    assert!((0..=100 * PER_HOUR as i128).contains(&second) && (second - truth).abs() <= 1414, "{second}");
    assert_eq!(clamped["privacy"]["clamped"], true);
    let statement = clamped["privacy"]["statement"].as_str().unwrap();
    assert!(statement.contains("noisy values were clamped into the range a true result can take"), "{statement}");
    assert!(
        statement.ends_with(
            "privacy budget: rho 1 of 1 spent, 0 left (rho 1 spent amounts to (epsilon = 10.1, delta = 1e-9)-DP)."
        ),
        "{statement}"
    );
    // The noise is there: with SD 141, two results both exactly on the truth has probability
    // about 10^-5.
    assert!(first != truth || second != truth, "no noise in {first} and {second}");

    let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();
    let doc = refused_past_the_budget(d, &task, collector.query(Some((hours[2], 3600))).unwrap()).await;
    assert!(doc["detail"].as_str().unwrap().contains("needs rho 0.5, but the task has spent 1 of its 1"), "{doc}");
    assert_eq!(batches_and_jobs(d, &task).await, (2, 2));
}

/// Both servers' admin APIs refuse settings that cannot be calibrated or do not fit together,
/// with a message that names the problem, and store nothing.
#[tokio::test(flavor = "multi_thread")]
async fn both_servers_refuse_bad_privacy_settings() {
    let d = Deployment::start(LeaderOptions::default()).await;
    let params = duet_tests::count_task("bad dp", d.leader.url(), d.helper.url());
    let task = NewTask::generate(params, None);
    let cases = [
        (serde_json::json!({"mechanism": "discrete_gaussian", "epsilon": "1"}), "epsilon"),
        (serde_json::json!({"mechanism": "discrete_gaussian", "rho": "0"}), "not a positive decimal"),
        (serde_json::json!({"mechanism": "discrete_laplace", "epsilon": "1", "budget_epsilon": "0.5"}), "budget"),
        (serde_json::json!({"mechanism": "exponential", "epsilon": "1"}), "exponential"),
    ];
    for (url, admin, request) in [
        (d.leader.url(), &d.leader_admin, &task.leader_request),
        (d.helper.url(), &d.helper_admin, &task.helper_request),
    ] {
        for (dp, needle) in &cases {
            let mut body = serde_json::to_value(request).unwrap();
            body["dp"] = dp.clone();
            let resp =
                d.http.post(format!("{url}admin/tasks")).bearer_auth(admin.expose()).json(&body).send().await.unwrap();
            let status = resp.status();
            let text = resp.text().await.unwrap();
            assert_eq!(status, 400, "{dp}: {text}");
            assert!(text.contains(needle), "{dp}: {text}");
        }
        let resp = d
            .http
            .get(format!("{url}admin/tasks/{}", task.credentials.task.task_id))
            .bearer_auth(admin.expose())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "nothing was stored");
    }
}
