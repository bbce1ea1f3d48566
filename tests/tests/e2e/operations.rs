//! The operators' kit end to end, with real processes: HPKE key rotation on both aggregators
//! through the `duet hpke-keys` commands (a client holding the old configuration keeps working
//! while the key is retired, gets `outdated_config` once it is deleted, refreshes and succeeds),
//! the metrics scraped after the run, health and readiness, settings from a configuration file,
//! and JSON logs.

use duet_cli::process::{sibling_binary, Output, ServerProcess};
use duet_client::collect::Collector;
use duet_client::upload::{Client, HpkeConfigs};
use duet_common::auth::AuthenticationToken;
use duet_common::keys::{HpkeKeyInfo, HpkeKeyList};
use duet_common::media_type;
use duet_common::messages::*;
use duet_common::vdaf::{AggregateResult, Measurement, VdafConfig};
use duet_common::{Decode, Encode};
use duet_tests::{metric, ops_get, past_hour, CuttableProxy, Deployment, LeaderOptions, PgDatabase};
use std::time::Duration;

/// Runs `duet` with `args` and the admin token in the environment: (exit code, stdout, stderr).
fn duet(args: &[&str], admin: &AuthenticationToken) -> (i32, String, String) {
    let out = std::process::Command::new(sibling_binary("duet").unwrap())
        .args(args)
        .env("DUET_ADMIN_TOKEN", admin.expose())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `duet hpke-keys ACTION --aggregator URL --json [extra]`, which must succeed.
fn keys_json(action: &str, server: &ServerProcess, admin: &AuthenticationToken, extra: &[&str]) -> String {
    let url = server.url();
    let mut args = vec!["hpke-keys", action, "--aggregator", url.as_str(), "--json"];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = duet(&args, admin);
    assert_eq!(code, 0, "duet {args:?}: {stderr}");
    stdout
}

fn key(json: &str) -> HpkeKeyInfo {
    serde_json::from_str(json).unwrap()
}

/// The IDs of the configurations an aggregator advertises at `/hpke_config`, in order.
async fn advertised(http: &reqwest::Client, server: &ServerProcess) -> Vec<u8> {
    let resp = http.get(format!("{}hpke_config", server.url())).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let list = HpkeConfigList::get_decoded(&resp.bytes().await.unwrap()).unwrap();
    list.0.iter().map(|c| c.id.0).collect()
}

/// Uploads one report made with `configs`, bypassing the SDK's refresh: the leader's answer.
async fn upload_raw(d: &Deployment, client: &Client, configs: &HpkeConfigs, time: u64) -> Vec<ReportUploadStatus> {
    let report = client.prepare_report_with_configs(configs, &Measurement::Count(true), time).unwrap();
    let body = UploadRequest { reports: vec![report] }.get_encoded().unwrap();
    let resp = d
        .http
        .post(format!("{}tasks/{}/reports", d.leader.url(), client.task_id()))
        .header("content-type", media_type::UPLOAD_REQ)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = resp.bytes().await.unwrap();
    if bytes.is_empty() {
        return Vec::new();
    }
    UploadErrors::get_decoded(&bytes).unwrap().status
}

async fn key_rotation_end_to_end(options: LeaderOptions) {
    let postgres = options.postgres;
    let d = Deployment::start(options).await;
    let task = d.create_task(VdafConfig::Prio3Count, BatchMode::TimeInterval, 3, None, None).await;
    let hour = past_hour();
    let time = hour + 60;
    let (leader_admin, helper_admin) = (&d.leader_admin, &d.helper_admin);

    // A client caches both aggregators' configurations (key 1 on each) and uploads.
    let stale = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
    let old = stale.hpke_configs().await.unwrap();
    assert_eq!((old.leader.id.0, old.helper.id.0), (1, 1));
    let outcome = stale.upload(&[(Measurement::Count(true), time)]).await.unwrap();
    assert_eq!((outcome.accepted, outcome.rejected.len()), (1, 0));

    // The leader's rotation: a pending key is accepted but not advertised yet.
    let added = key(&keys_json("add", &d.leader, leader_admin, &[]));
    assert_eq!((added.id, added.state.as_str(), added.kem_id), (2, "pending", 0x0020));
    assert_eq!(advertised(&d.http, &d.leader).await, vec![1]);
    let active = key(&keys_json("activate", &d.leader, leader_admin, &["2"]));
    assert_eq!(active.state, "active");
    assert_eq!(advertised(&d.http, &d.leader).await, vec![2, 1], "the key activated last comes first");
    let retired = key(&keys_json("retire", &d.leader, leader_admin, &["1"]));
    assert_eq!(retired.state, "retired");
    assert_eq!(advertised(&d.http, &d.leader).await, vec![2]);
    let list: HpkeKeyList = serde_json::from_str(&keys_json("list", &d.leader, leader_admin, &[])).unwrap();
    let states: Vec<(u8, &str)> = list.keys.iter().map(|k| (k.id, k.state.as_str())).collect();
    assert_eq!(states, vec![(1, "retired"), (2, "active")]);
    // The table a person reads.
    let url = d.leader.url();
    let (code, table, _) = duet(&["hpke-keys", "list", "--aggregator", &url], leader_admin);
    assert_eq!(code, 0);
    assert!(table.starts_with(" ID  STATE     KEM"), "{table}");
    assert!(table.contains("  1  retired   x25519            hkdf-sha256  aes-128-gcm"), "{table}");

    // Retired, key 1 still opens what the stale client encrypts to it.
    assert_eq!(upload_raw(&d, &stale, &old, time).await, vec![]);

    // The last active key cannot be retired, an active one not deleted, a fresh retiree only
    // with --force; each refusal is a plain message and exit code 2.
    let (code, _, err) = duet(&["hpke-keys", "retire", "--aggregator", &url, "2"], leader_admin);
    assert!(code == 2 && err.contains("only active key"), "{code} {err}");
    let (code, _, err) = duet(&["hpke-keys", "delete", "--aggregator", &url, "2"], leader_admin);
    assert!(code == 2 && err.contains("retire it first"), "{code} {err}");
    let (code, _, err) = duet(&["hpke-keys", "delete", "--aggregator", &url, "1"], leader_admin);
    assert!(code == 2 && err.contains("was retired"), "{code} {err}");
    let (code, _, err) = duet(&["hpke-keys", "list", "--aggregator", &url], &AuthenticationToken::random());
    assert!(code == 2 && err.contains("401"), "{code} {err}");
    // Deleting a key before then would fail the waiting reports encrypted to it, which is why
    // a retired key is kept for a grace period.
    d.wait_aggregated().await;
    let deleted = keys_json("delete", &d.leader, leader_admin, &["1", "--force"]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&deleted).unwrap()["deleted"], 1);

    // Deleted, key 1 is outdated: the leader says so...
    let answer = upload_raw(&d, &stale, &old, time).await;
    assert_eq!(answer.iter().map(|s| s.error).collect::<Vec<_>>(), vec![ReportError::OutdatedConfig]);
    // ...and the SDK, still holding key 1, refreshes on that answer and succeeds.
    let outcome = stale.upload(&[(Measurement::Count(true), time)]).await.unwrap();
    assert_eq!((outcome.accepted, outcome.rejected.len()), (1, 0));
    let refreshed = stale.hpke_configs().await.unwrap();
    assert_eq!(refreshed.leader.id.0, 2, "the client refreshed its configuration");

    // The helper's rotation. Its key 1, retired, still opens report shares encrypted to it.
    key(&keys_json("add", &d.helper, helper_admin, &["--id", "7", "--kem", "p256"]));
    key(&keys_json("activate", &d.helper, helper_admin, &["7"]));
    key(&keys_json("retire", &d.helper, helper_admin, &["1"]));
    assert_eq!(advertised(&d.http, &d.helper).await, vec![7]);
    let with_retired_helper_key = HpkeConfigs { leader: refreshed.leader.clone(), helper: old.helper.clone() };
    assert_eq!(upload_raw(&d, &stale, &with_retired_helper_key, time).await, vec![]);
    // Deleted, it no longer does: the leader cannot tell, the helper rejects the report share.
    d.wait_aggregated().await;
    keys_json("delete", &d.helper, helper_admin, &["1", "--force"]);
    assert_eq!(upload_raw(&d, &stale, &with_retired_helper_key, time).await, vec![]);
    // A new client gets the new keys and succeeds.
    let fresh = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
    let configs = fresh.hpke_configs().await.unwrap();
    assert_eq!((configs.leader.id.0, configs.helper.id.0), (2, 7));
    assert_eq!(fresh.upload(&[(Measurement::Count(true), time)]).await.unwrap().accepted, 1);

    // Six reports accepted; the one encrypted to the deleted helper key fails aggregation.
    let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();
    let query = collector.query(Some((hour, 3600))).unwrap();
    let result = collector.collect(query, Duration::from_secs(120)).await.unwrap();
    assert_eq!((result.report_count, &result.result), (5, &AggregateResult::Scalar(5)));

    // The metrics tell the same story.
    let (status, leader) = ops_get(&d.leader, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(metric(&leader, "duet_reports_uploaded_total", &[]), Some(6.0), "{leader}");
    // The raw upload and the SDK's first attempt.
    assert_eq!(metric(&leader, "duet_reports_rejected_total", &[("reason", "outdated_config")]), Some(2.0));
    assert_eq!(metric(&leader, "duet_reports_aggregated_total", &[("role", "leader")]), Some(5.0), "{leader}");
    assert_eq!(
        metric(&leader, "duet_reports_failed_total", &[("role", "leader"), ("reason", "hpke_decrypt_error")]),
        Some(1.0),
        "{leader}"
    );
    // On SQLite every upload that stored anything went through a group transaction (one
    // request each here, since this test's uploads come one at a time); PostgreSQL has none.
    let groups = metric(&leader, "duet_upload_group_requests_count", &[]);
    let grouped = metric(&leader, "duet_upload_group_requests_sum", &[]);
    if postgres {
        assert_eq!((groups, grouped), (None, None), "{leader}");
    } else {
        assert!(groups.is_some_and(|n| n >= 1.0), "{leader}");
        assert_eq!(grouped, groups, "{leader}");
    }
    assert_eq!(metric(&leader, "duet_collection_jobs_total", &[("outcome", "created")]), Some(1.0));
    assert_eq!(metric(&leader, "duet_collection_jobs_total", &[("outcome", "finished")]), Some(1.0));
    let finished_jobs = metric(&leader, "duet_aggregation_jobs_total", &[("role", "leader"), ("outcome", "finished")]);
    assert!(finished_jobs.is_some_and(|n| n >= 1.0), "{leader}");
    assert_eq!(
        metric(&leader, "duet_aggregation_jobs_total", &[("role", "leader"), ("outcome", "created")]),
        finished_jobs,
        "every job created finished"
    );
    assert_eq!(metric(&leader, "duet_aggregation_jobs", &[("state", "finished")]), finished_jobs, "{leader}");
    let uploads = metric(
        &leader,
        "duet_http_requests_total",
        &[("route", "/tasks/{task_id}/reports"), ("method", "POST"), ("status", "200")],
    );
    assert!(uploads.is_some_and(|n| n >= 8.0), "{leader}");
    assert!(metric(&leader, "duet_step_duration_seconds_count", &[("step", "upload")]).is_some_and(|n| n >= 8.0));
    assert!(metric(&leader, "duet_db_pool_max_connections", &[]).is_some_and(|n| n >= 1.0));
    assert!(metric(&leader, "duet_db_pool_connections", &[("state", "idle")]).is_some());
    assert!(leader.contains("# HELP duet_reports_uploaded_total"), "described");

    let (_, helper) = ops_get(&d.helper, "/metrics").await;
    assert_eq!(metric(&helper, "duet_reports_aggregated_total", &[("role", "helper")]), Some(5.0), "{helper}");
    assert_eq!(
        metric(&helper, "duet_reports_failed_total", &[("role", "helper"), ("reason", "hpke_decrypt_error")]),
        Some(1.0),
        "{helper}"
    );
    assert_eq!(metric(&helper, "duet_aggregate_shares_total", &[]), Some(1.0));
    assert!(metric(&helper, "duet_step_duration_seconds_count", &[("step", "aggregation_job_init")]).is_some());
    assert_eq!(metric(&helper, "duet_reports_uploaded_total", &[]), None, "the helper takes no uploads");

    for server in [&d.leader, &d.helper] {
        assert_eq!(ops_get(server, "/healthz").await, (200, "ok\n".to_string()));
        assert_eq!(ops_get(server, "/readyz").await, (200, "ready\n".to_string()));
    }
}

mod key_rotation {
    use super::*;
    #[tokio::test(flavor = "multi_thread")]
    async fn sqlite() {
        key_rotation_end_to_end(LeaderOptions::default()).await
    }
    #[tokio::test(flavor = "multi_thread")]
    async fn postgres() {
        key_rotation_end_to_end(LeaderOptions::postgres()).await
    }
}

/// A helper whose database sits behind a proxy that can be cut: `/readyz` says 503 while the
/// database is gone and 200 once it is back; `/healthz` stays 200 throughout.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_database() {
    let pg = PgDatabase::create().await;
    let target: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = CuttableProxy::start(target).await;
    let admin = AuthenticationToken::random();
    let args = vec!["--database".to_string(), pg.url_via(proxy.addr), "--metrics-listen".into(), "127.0.0.1:0".into()];
    let helper = duet_tests::spawn("duet-helper", &args, &admin, "127.0.0.1:0");
    assert_eq!(ops_get(&helper, "/readyz").await.0, 200);
    proxy.cut();
    let mut statuses = Vec::new();
    for _ in 0..50 {
        let (status, body) = ops_get(&helper, "/readyz").await;
        statuses.push(status);
        if status == 503 {
            assert!(body.starts_with("not ready: "), "{body}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(statuses.last(), Some(&503), "{statuses:?}");
    assert_eq!(ops_get(&helper, "/healthz").await.0, 200, "alive while not ready");
    proxy.restore();
    let mut ready = false;
    for _ in 0..100 {
        if ops_get(&helper, "/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready, "ready again once the database is back");
}

/// Settings from a TOML file, overridden by the environment and by flags; `--check-config`
/// shows where each came from; a server started from the file serves metrics where the file
/// says and logs JSON.
#[tokio::test(flavor = "multi_thread")]
async fn settings_from_a_file_the_environment_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("leader.toml");
    let db = format!("sqlite:{}", dir.path().join("leader.db").display());
    std::fs::write(
        &file,
        format!(
            "database = \"{db}\"\nmax_job_size = 250\nlease_seconds = 30\nmetrics_listen = \"127.0.0.1:0\"\n\
             log_format = \"json\"\nlog_filter = \"info\"\nmin_job_size = 5\n"
        ),
    )
    .unwrap();
    let leader = sibling_binary("duet-leader").unwrap();
    let check = |extra_env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = std::process::Command::new(&leader);
        cmd.args(["--config", file.to_str().unwrap(), "--check-config"]).args(args);
        cmd.env("DUET_ADMIN_TOKEN", "admin-token-for-the-check-config-test-0123")
            .env("DUET_DATABASE_KEYS", duet_tests::DATABASE_KEY);
        cmd.env_remove("RUST_LOG");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = check(&[("DUET_LEASE_SECONDS", "45")], &["--min-job-size", "7"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("max_job_size = 250  # configuration file"), "{out}");
    assert!(out.contains("lease_seconds = 45  # environment DUET_LEASE_SECONDS"), "{out}");
    assert!(out.contains("min_job_size = 7  # flag --min-job-size"), "{out}");
    assert!(out.contains("clock_skew_seconds = 300  # default"), "{out}");
    assert!(out.contains("admin_token = (set, redacted)  # environment DUET_ADMIN_TOKEN"), "{out}");
    assert!(!out.contains("admin-token-for-the-check-config-test"), "{out}");
    assert!(out.contains("database_keys = (set, redacted)  # environment DUET_DATABASE_KEYS"), "{out}");
    assert!(!out.contains(duet_tests::DATABASE_KEY), "{out}");
    assert!(out.ends_with("duet-leader: configuration OK\n"), "{out}");

    // Validation at start-up: clear messages, exit code 1, nothing served.
    let (code, _, err) = check(&[], &["--max-job-size", "3"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("1 <= min_job_size <= max_job_size"), "{err}");
    let (code, _, err) = check(&[("DUET_METRICS_LISTEN", "localhost")], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("metrics_listen \"localhost\" is not HOST:PORT"), "{err}");
    let (code, _, err) = check(&[("DUET_DATABASE", "mysql://x")], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("must start with sqlite: or postgres://"), "{err}");
    let (code, _, err) = check(&[("DUET_ADMIN_TOKEN", "")], &[]);
    assert_eq!(code, Some(1), "{err}");
    let (code, _, err) = check(&[("DUET_ADMIN_TOKEN", "short-admin-token")], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("admin_token must be at least 32 characters (it has 17)"), "{err}");
    // No database key, or a bad one: the secrets the database keeps could not be sealed.
    let (code, _, err) = check(&[("DUET_DATABASE_KEYS", "")], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("database_keys is required: set DUET_DATABASE_KEYS"), "{err}");
    let (code, _, err) = check(&[("DUET_DATABASE_KEYS", "c2hvcnQ")], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("database_keys: database key 1 holds 5 bytes, not 32"), "{err}");
    assert!(!err.contains("c2hvcnQ"), "the key is not shown: {err}");
    let (code, _, err) = check(&[], &["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("/nonexistent.pem"), "{err}");
    std::fs::write(dir.path().join("bad.toml"), "max_job_size = 250\nmax_jobsize = 3\n").unwrap();
    let out = std::process::Command::new(&leader)
        .args(["--config", dir.path().join("bad.toml").to_str().unwrap(), "--check-config"])
        .env("DUET_ADMIN_TOKEN", "an-admin-token-of-more-than-32-characters")
        .env("DUET_DATABASE_KEYS", duet_tests::DATABASE_KEY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml: unknown setting `max_jobsize`"), "{err}");

    // Served from the file: metrics on the file's listener, JSON log lines.
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let args: Vec<String> =
        vec!["--config".into(), file.to_str().unwrap().into(), "--listen".into(), "127.0.0.1:0".into()];
    let server = ServerProcess::spawn(
        &leader,
        &args,
        &[
            ("DUET_ADMIN_TOKEN", "an-admin-token-of-more-than-32-characters"),
            ("DUET_DATABASE_KEYS", duet_tests::DATABASE_KEY),
        ],
        Output::Capture(lines.clone()),
    )
    .unwrap();
    assert!(server.metrics_addr.is_some(), "the file's metrics_listen was applied");
    assert_eq!(ops_get(&server, "/healthz").await.0, 200);
    let resp = reqwest::get(format!("{}hpke_config", server.url())).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (_, text) = ops_get(&server, "/metrics").await;
    assert_eq!(metric(&text, "duet_http_requests_total", &[("route", "/hpke_config"), ("status", "200")]), Some(1.0));
    let logs = lines.lock().unwrap().clone();
    let json: Vec<serde_json::Value> = logs.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let listening = json.iter().find(|v| v["message"] == "duet-leader listening").unwrap_or_else(|| panic!("{logs:?}"));
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["addr"], server.addr.to_string());
    assert!(listening["timestamp"].is_string());
    // The migrate command takes the file's database, and needs the database key (it seals
    // what it finds in the clear).
    let migrate = |key: Option<&str>| {
        let mut cmd = std::process::Command::new(&leader);
        cmd.args(["migrate", "--config", file.to_str().unwrap()]).env_remove("DUET_DATABASE");
        match key {
            Some(key) => cmd.env("DUET_DATABASE_KEYS", key),
            None => cmd.env_remove("DUET_DATABASE_KEYS"),
        };
        cmd.output().unwrap()
    };
    let out = migrate(None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("database_keys is required"));
    let out = migrate(Some(duet_tests::DATABASE_KEY));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let newest = duet_server::sql::Backend::Sqlite.migrations().last().unwrap().0;
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("database {db} is at schema version {newest}")));
}
