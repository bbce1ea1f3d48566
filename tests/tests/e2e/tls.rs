//! HTTPS end to end: leader and helper serve TLS (rustls) with a certificate from a private CA;
//! the leader trusts the helper through `--helper-ca-file`, the SDKs through their HTTP client's
//! trust roots, and the CLI through `DUET_CA_FILE`. Plain HTTP to a TLS port gets nowhere.

use duet_client::admin::{provision_task, AdminClient, NewTask};
use duet_client::collect::Collector;
use duet_client::upload::Client;
use duet_common::auth::AuthenticationToken;
use duet_common::messages::{BatchMode, TaskId};
use duet_common::task::TaskParameters;
use duet_common::vdaf::{AggregateResult, Measurement, VdafConfig};
use duet_tests::{past_hour, spawn};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn leader_helper_client_and_collector_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    // A private CA and a server certificate for 127.0.0.1 and localhost.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "duet test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(path("cert.pem"), cert.pem()).unwrap();
    std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();
    let tls = |db: &str| {
        vec![
            "--database".to_string(),
            format!("sqlite:{}", path(db)),
            "--tls-cert".into(),
            path("cert.pem"),
            "--tls-key".into(),
            path("key.pem"),
        ]
    };
    let (leader_admin, helper_admin) = (AuthenticationToken::random(), AuthenticationToken::random());
    let helper = spawn("duet-helper", &tls("helper.db"), &helper_admin, "127.0.0.1:0");
    let mut leader_args = tls("leader.db");
    leader_args.extend(["--helper-ca-file".into(), path("ca.pem"), "--creator-interval-ms".into(), "200".into()]);
    let leader = spawn("duet-leader", &leader_args, &leader_admin, "127.0.0.1:0");
    let (leader_url, helper_url) = (format!("https://{}/", leader.addr), format!("https://{}/", helper.addr));

    // Without the CA, a client refuses the servers; with it, everything works over HTTPS.
    let untrusting = reqwest::Client::new();
    assert!(untrusting.get(format!("{leader_url}hpke_config")).send().await.is_err());
    let plain = reqwest::Client::new().get(format!("http://{}/hpke_config", leader.addr)).send().await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true), "plain HTTP is not served");
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let params = TaskParameters {
        task_id: TaskId::random(),
        task_info: "tls".into(),
        leader_endpoint: leader_url.clone(),
        helper_endpoint: helper_url.clone(),
        time_precision: 3600,
        min_batch_size: 10,
        batch_mode: BatchMode::TimeInterval,
        vdaf: VdafConfig::Prio3Count,
        task_interval_seconds: None,
        dp: None,
    };
    let task = NewTask::generate(params.clone(), None);
    let la = AdminClient::new(http.clone(), &leader_url, leader_admin.clone()).unwrap();
    let ha = AdminClient::new(http.clone(), &helper_url, helper_admin.clone()).unwrap();
    provision_task(&la, &task.leader_request, &ha, &task.helper_request).await.unwrap();
    let client = Client::new(params, http.clone()).unwrap();
    let items: Vec<_> = (0..12).map(|i| (Measurement::Count(i % 3 == 0), past_hour())).collect();
    assert_eq!(client.upload(&items).await.unwrap().accepted, 12);
    let collector = Collector::new(&task.credentials, http.clone()).unwrap();
    let result = collector.collect(collector.query(Some((past_hour(), 3600))).unwrap(), Duration::from_secs(120)).await;
    let result = result.unwrap();
    assert_eq!((result.report_count, result.result), (12, AggregateResult::Scalar(4)));

    // The CLI trusts the CA through DUET_CA_FILE.
    let creds = path("collector.json");
    std::fs::write(&creds, serde_json::to_vec(&task.credentials).unwrap()).unwrap();
    let out = std::process::Command::new(duet_cli::process::sibling_binary("duet").unwrap())
        .args(["collect", "--credentials", &creds, "--interval-start", &past_hour().to_string()])
        .args(["--interval-duration", "3600", "--json"])
        .env("DUET_CA_FILE", path("ca.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["report_count"], 12);
}
