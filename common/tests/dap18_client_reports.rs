//! Reports captured from an independent DAP-18 client (ISRG's Janus): each one is decoded,
//! opened with both aggregators' keys, verified by both aggregators, aggregated and unsharded
//! back to its measurement. This is the first proof that our bytes match another
//! implementation's: task configuration encoding, AAD, HPKE info strings, VDAF context.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use duet_common::hpke::{open, HpkeApplicationInfo, HpkeKeypair, HpkePrivateKey};
use duet_common::media_type;
use duet_common::messages::*;
use duet_common::time::{Time, TimePrecision};
use duet_common::vdaf::{vdaf_context, AggregateResult, Transition, Vdaf, VdafConfig, VerifyKey};
use duet_common::{Decode, Encode};
use serde_json::Value;
use std::path::PathBuf;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/dap18-client-reports")
}

fn b64(v: &Value) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(v.as_str().expect("string")).expect("base64url")
}

fn num(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().expect("number"),
        Value::Number(n) => n.as_u64().expect("u64"),
        _ => panic!("not a number: {v}"),
    }
}

fn vdaf_config(v: &Value) -> VdafConfig {
    match v["type"].as_str().unwrap() {
        "Prio3Count" => VdafConfig::Prio3Count,
        "Prio3Sum" => VdafConfig::Prio3Sum { max_measurement: num(&v["max_measurement"]) },
        "Prio3SumVec" => VdafConfig::Prio3SumVec {
            length: num(&v["length"]) as u32,
            max_measurement: num(&v["max_measurement"]),
            chunk_length: num(&v["chunk_length"]) as u32,
        },
        "Prio3Histogram" => VdafConfig::Prio3Histogram {
            length: num(&v["length"]) as u32,
            chunk_length: num(&v["chunk_length"]) as u32,
        },
        other => panic!("fixture VDAF {other} not covered"),
    }
}

fn keypair(v: &Value) -> HpkeKeypair {
    let config = HpkeConfig::get_decoded(&b64(&v["config"])).expect("HpkeConfig decodes");
    HpkeKeypair::new(config, HpkePrivateKey::new(b64(&v["x25519_private_key"]))).expect("key matches config")
}

/// What unsharding a batch of just this measurement must give.
fn expected_result(config: &VdafConfig, m: &Value) -> AggregateResult {
    match config {
        VdafConfig::Prio3Count | VdafConfig::Prio3Sum { .. } => AggregateResult::Scalar(num(m)),
        VdafConfig::Prio3SumVec { .. } => {
            AggregateResult::Vector(m.as_array().unwrap().iter().map(|x| num(x) as u128).collect())
        }
        VdafConfig::Prio3Histogram { length, .. } => {
            let mut v = vec![0u128; *length as usize];
            v[num(m) as usize] = 1;
            AggregateResult::Vector(v)
        }
        VdafConfig::Prio3MultihotCountVec { .. } => unreachable!(),
        #[cfg(feature = "test-vdaf")]
        VdafConfig::Dummy { .. } => unreachable!(),
    }
}

fn check_fixture(name: &str) {
    let text = std::fs::read_to_string(fixture_dir().join(name)).expect("fixture present");
    let f: Value = serde_json::from_str(&text).unwrap();
    let t = &f["task"];
    let task_id: TaskId = t["task_id"].as_str().unwrap().parse().unwrap();
    let precision = TimePrecision::from_seconds(num(&t["time_precision"])).unwrap();
    let vdaf_config = vdaf_config(&t["vdaf"]);
    let task_config = TaskConfiguration {
        task_info: t["task_info"].as_str().unwrap().as_bytes().to_vec(),
        leader_aggregator_endpoint: Url::new(t["leader"].as_str().unwrap()).unwrap(),
        helper_aggregator_endpoint: Url::new(t["helper"].as_str().unwrap()).unwrap(),
        time_precision: precision,
        min_batch_size: num(&t["min_batch_size"]),
        batch_mode: BatchMode::from_code(num(&t["batch_mode"]) as u8).unwrap(),
        batch_config: vec![],
        vdaf: vdaf_config.clone(),
        extensions: vec![],
    };
    task_config.validate().unwrap();
    let task_config_encoded = task_config.get_encoded().unwrap();
    // The decoded configuration is byte-identical when re-encoded.
    assert_eq!(TaskConfiguration::get_decoded(&task_config_encoded).unwrap(), task_config);

    let req = &f["request"];
    assert_eq!(req["method"], "POST");
    assert!(media_type::matches(req["content_type"].as_str().unwrap(), media_type::UPLOAD_REQ));
    assert!(req["path"].as_str().unwrap().ends_with(&format!("/tasks/{task_id}/reports")));
    let body = b64(&req["body"]);
    let upload = UploadRequest::get_decoded(&body).expect("UploadRequest decodes");
    assert_eq!(upload.get_encoded().unwrap(), body, "re-encoding is byte-identical");
    assert_eq!(upload.reports.len(), 1);
    let report = &upload.reports[0];
    assert_eq!(report.report_metadata.time, Time::from_seconds(num(&f["time_seconds"]), precision));

    let leader_kp = keypair(&f["leader_hpke"]);
    let helper_kp = keypair(&f["helper_hpke"]);
    let aad = InputShareAad {
        task_id,
        task_configuration: task_config.clone(),
        report_metadata: report.report_metadata.clone(),
        public_share: report.public_share.clone(),
    }
    .get_encoded()
    .unwrap();
    let open_share = |kp: &HpkeKeypair, role: Role, ct: &HpkeCiphertext| {
        let plain = open(kp, &HpkeApplicationInfo::InputShare { recipient: role }, ct, &aad)
            .unwrap_or_else(|e| panic!("{name}: {role:?} share does not open: {e}"));
        let share = PlaintextInputShare::get_decoded(&plain).expect("PlaintextInputShare decodes");
        assert!(share.private_extensions.is_empty());
        share.payload
    };
    let leader_share = open_share(&leader_kp, Role::Leader, &report.leader_encrypted_input_share);
    let helper_share = open_share(&helper_kp, Role::Helper, &report.helper_encrypted_input_share);
    // Opening with the other role's info string must fail: the info strings are bound.
    assert!(open(
        &leader_kp,
        &HpkeApplicationInfo::InputShare { recipient: Role::Helper },
        &report.leader_encrypted_input_share,
        &aad
    )
    .is_err());

    let vdaf = Vdaf::new(&vdaf_config).unwrap();
    let key = VerifyKey::random();
    let ctx = vdaf_context(&task_id);
    let nonce = report.report_metadata.report_id.as_bytes();
    let (leader_state, to_helper) = vdaf
        .leader_init(&key, &ctx, nonce, &report.public_share, &leader_share)
        .unwrap_or_else(|e| panic!("{name}: leader init: {e}"));
    let Transition::FinishedWithOutbound { out_share: helper_out, outbound } = vdaf
        .helper_init(&key, &ctx, nonce, &report.public_share, &helper_share, &to_helper)
        .unwrap_or_else(|e| panic!("{name}: helper init: {e}"))
    else {
        panic!("Prio3 helper finishes in one round")
    };
    let Transition::Finished { out_share: leader_out } = vdaf.leader_continued(&ctx, leader_state, &outbound).unwrap()
    else {
        panic!("Prio3 leader finishes after the helper's message")
    };
    let mut leader_agg = vdaf.aggregate_init();
    leader_agg.accumulate(&leader_out).unwrap();
    let mut helper_agg = vdaf.aggregate_init();
    helper_agg.accumulate(&helper_out).unwrap();
    let result = vdaf.unshard(&leader_agg, &helper_agg, 1).unwrap();
    assert_eq!(result, expected_result(&vdaf_config, &f["measurement"]), "{name}");

    // With a different VDAF context (another task ID) verification must fail: the context binds.
    let other_ctx = vdaf_context(&TaskId::random());
    let (s, m) = vdaf.leader_init(&key, &other_ctx, nonce, &report.public_share, &leader_share).unwrap();
    let rejected = match vdaf.helper_init(&key, &ctx, nonce, &report.public_share, &helper_share, &m) {
        Err(_) => true,
        Ok(Transition::FinishedWithOutbound { outbound, .. }) => {
            vdaf.leader_continued(&other_ctx, s, &outbound).is_err()
        }
        Ok(_) => false,
    };
    assert!(rejected, "{name}: mismatched VDAF contexts verified");
}

#[test]
fn prio3count() {
    check_fixture("prio3count.json");
}

#[test]
fn prio3count_leader_selected() {
    check_fixture("prio3count-leader-selected.json");
}

#[test]
fn prio3sum() {
    check_fixture("prio3sum.json");
}

#[test]
fn prio3sumvec() {
    check_fixture("prio3sumvec.json");
}

#[test]
fn prio3histogram() {
    check_fixture("prio3histogram.json");
}

#[test]
fn every_fixture_is_checked() {
    let mut names: Vec<String> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "prio3count-leader-selected.json",
            "prio3count.json",
            "prio3histogram.json",
            "prio3sum.json",
            "prio3sumvec.json"
        ]
    );
}
