//! The `duet` command line against real servers, as an analyst and an operator use it:
//! `task create` provisions both aggregators, `upload` sends reports, `collect` prints the
//! result with its privacy statement (as text and as JSON).

use duet_cli::process::sibling_binary;
use duet_tests::{past_hour, Deployment, LeaderOptions};
use std::process::{Command, Output};

fn duet(d: &Deployment, args: &[&str]) -> Output {
    Command::new(sibling_binary("duet").unwrap())
        .args(args)
        .env("DUET_LEADER_ADMIN_TOKEN", d.leader_admin.expose())
        .env("DUET_HELPER_ADMIN_TOKEN", d.helper_admin.expose())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn task_create_upload_collect() {
    let d = Deployment::start(LeaderOptions::default()).await;
    let dir = d.dir.path();
    let creds = dir.join("collector.json");
    let (leader, helper) = (d.leader.url(), d.helper.url());
    let create = [
        "task",
        "create",
        "--leader",
        &leader,
        "--helper",
        &helper,
        "--vdaf",
        "histogram",
        "--length",
        "4",
        "--min-batch-size",
        "5",
        "--time-precision",
        "3600",
        "--batch-mode",
        "time-interval",
        "--collector-credentials",
        creds.to_str().unwrap(),
    ];
    let out = duet(&d, &create);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let task_json = dir.join("task.json");
    std::fs::write(&task_json, &out.stdout).unwrap();
    let params: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(params["min_batch_size"], 5);

    let time = past_hour().to_string();
    let mut upload = vec!["upload", "--task", task_json.to_str().unwrap(), "--time", &time];
    for m in ["0", "1", "1", "3", "3", "3", "2"] {
        upload.extend(["--measurement", m]);
    }
    let out = duet(&d, &upload);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "accepted: 7\nrejected: 0\n");

    let collect =
        ["collect", "--credentials", creds.to_str().unwrap(), "--interval-start", &time, "--interval-duration", "3600"];
    let out = duet(&d, &[&collect[..], &["--json", "--timeout", "120"]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["report_count"], 7);
    assert_eq!(result["result"], serde_json::json!([1, 2, 1, 3]));
    assert_eq!(result["privacy"]["requires_non_collusion"], true);

    // The same query again, as text: the same result, with its privacy statement.
    let out = duet(&d, &collect);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("Reports:   7"), "{shown}");
    assert!(shown.contains("do not collude"), "{shown}");
    // A table with each bucket's share and a bar scaled to the largest bucket.
    assert!(shown.contains("  index  value   share\n"), "{shown}");
    assert!(shown.contains(&format!("      3      3   42.9%  {}\n", "█".repeat(40))), "{shown}");
    assert!(shown.contains(&format!("      1      2   28.6%  {}▋\n", "█".repeat(26))), "{shown}");

    // --json for uploads too; no progress bar without a terminal.
    let out = duet(&d, &["upload", "--task", task_json.to_str().unwrap(), "--measurement", "1", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outcome, serde_json::json!({ "accepted": 1, "rejected": 0, "rejected_by_error": {} }));
    assert!(!text(&out.stderr).contains("uploading"), "{}", text(&out.stderr));

    // A measurement outside the histogram is a usage error (exit 1), refused before any upload.
    let out = duet(&d, &["upload", "--task", task_json.to_str().unwrap(), "--measurement", "9"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_admin_token_provisions_nothing() {
    let d = Deployment::start(LeaderOptions::default()).await;
    let creds = d.dir.path().join("collector.json");
    let (leader, helper) = (d.leader.url(), d.helper.url());
    let out = Command::new(sibling_binary("duet").unwrap())
        .args([
            "task",
            "create",
            "--leader",
            &leader,
            "--helper",
            &helper,
            "--vdaf",
            "count",
            "--min-batch-size",
            "5",
            "--time-precision",
            "60",
            "--batch-mode",
            "time-interval",
            "--collector-credentials",
            creds.to_str().unwrap(),
        ])
        .env("DUET_LEADER_ADMIN_TOKEN", d.leader_admin.expose())
        .env("DUET_HELPER_ADMIN_TOKEN", "not-the-helper-token")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("401") && err.contains("deleted from the leader again"), "{err}");
    assert!(!creds.exists(), "no credentials for a task that does not exist");
}
