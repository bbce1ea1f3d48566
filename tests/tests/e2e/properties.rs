//! A short property-based pass over the same entry points as the fuzz targets, so that every CI
//! run catches regressions: each DAP decoder on arbitrary bytes and on mutated valid messages
//! (never a panic; whatever decodes re-encodes to the same bytes; uploads read in place agree
//! with decoding), and the upload,
//! aggregation-job and collection-job handlers on arbitrary bodies (never a panic, never a 5xx).

use duet_common::messages::*;
use duet_common::{Decode, Encode};
use duet_tests::inprocess::{call, servers};
use proptest::prelude::*;
use std::sync::OnceLock;

/// Decodes `bytes` as `T`; if that works, the encoding must give the same bytes back.
fn canonical<T: Decode + Encode>(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(v) = T::get_decoded(bytes) {
        prop_assert_eq!(v.get_encoded().unwrap(), bytes.to_vec());
    }
    Ok(())
}

/// The leader reads uploads in place: that must accept exactly what decoding accepts, and give
/// each report's fields as their own encodings.
fn read_in_place_agrees(bytes: &[u8]) -> Result<(), TestCaseError> {
    match (UploadRequest::get_decoded(bytes), UploadRequest::decode_in_place(bytes)) {
        (Ok(request), Ok(read)) => {
            prop_assert_eq!(request.reports.len(), read.len());
            for (report, encoded) in request.reports.iter().zip(&read) {
                prop_assert_eq!(&encoded.report_metadata, &report.report_metadata);
                prop_assert_eq!(
                    encoded.encoded_report_metadata.to_vec(),
                    report.report_metadata.get_encoded().unwrap()
                );
                prop_assert_eq!(encoded.public_share, report.public_share.as_slice());
                prop_assert_eq!(encoded.leader_config_id, report.leader_encrypted_input_share.config_id);
                let leader = report.leader_encrypted_input_share.get_encoded().unwrap();
                prop_assert_eq!(encoded.leader_encrypted_input_share.to_vec(), leader);
                let helper = report.helper_encrypted_input_share.get_encoded().unwrap();
                prop_assert_eq!(encoded.helper_encrypted_input_share.to_vec(), helper);
            }
        }
        (Err(_), Err(_)) => {}
        (decoded, read) => {
            prop_assert!(false, "decoding ok: {}, reading in place ok: {}", decoded.is_ok(), read.is_ok())
        }
    }
    Ok(())
}

fn all_decoders(bytes: &[u8]) -> Result<(), TestCaseError> {
    read_in_place_agrees(bytes)?;
    canonical::<HpkeConfig>(bytes)?;
    canonical::<HpkeConfigList>(bytes)?;
    canonical::<Report>(bytes)?;
    canonical::<UploadRequest>(bytes)?;
    canonical::<UploadErrors>(bytes)?;
    canonical::<PlaintextInputShare>(bytes)?;
    canonical::<TaskConfiguration>(bytes)?;
    canonical::<AggregationJobInitReq>(bytes)?;
    canonical::<AggregationJobResp>(bytes)?;
    canonical::<AggregationJobContinueReq>(bytes)?;
    canonical::<CollectionJobReq>(bytes)?;
    canonical::<CollectionJobResp>(bytes)?;
    canonical::<AggregateShareReq>(bytes)?;
    canonical::<AggregateShare>(bytes)?;
    canonical::<Query>(bytes)?;
    canonical::<BatchSelector>(bytes)?;
    Ok(())
}

/// Valid encodings to mutate: one of each message, with some content.
fn seeds() -> &'static Vec<Vec<u8>> {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let ct = HpkeCiphertext { config_id: HpkeConfigId(3), enc: vec![1; 32], payload: vec![2; 40] };
        let meta = ReportMetadata {
            report_id: ReportId::random(),
            time: duet_common::time::Time::from_units(99),
            public_extensions: vec![],
        };
        let report = Report {
            report_metadata: meta.clone(),
            public_share: vec![5; 16],
            leader_encrypted_input_share: ct.clone(),
            helper_encrypted_input_share: ct.clone(),
        };
        let interval = duet_common::time::Interval::new(meta.time, duet_common::time::Duration::ONE);
        let query = Query::TimeInterval(TimeIntervalQueryConfig { batch_interval: interval });
        let cj = CollectionJobReq { query, agg_param: vec![], extensions: vec![] };
        vec![
            UploadRequest { reports: vec![report.clone(), report.clone()] }.get_encoded().unwrap(),
            AggregationJobInitReq {
                verification_key_id: 0,
                agg_param: vec![],
                extensions: vec![AggregationJobExtension::leader_selected_batch_id(BatchId::random())],
                verify_inits: vec![VerifyInit {
                    report_share: ReportShare {
                        report_metadata: meta.clone(),
                        public_share: vec![1],
                        encrypted_input_share: ct.clone(),
                    },
                    payload: vec![7; 20],
                }],
            }
            .get_encoded()
            .unwrap(),
            AggregationJobContinueReq {
                step: AggregationJobStep(1),
                verify_continues: vec![VerifyContinue { report_id: meta.report_id, payload: vec![3; 8] }],
            }
            .get_encoded()
            .unwrap(),
            cj.get_encoded().unwrap(),
            AggregateShareReq {
                collection_job_req: cj.clone(),
                batch_selector: BatchSelector::TimeInterval(TimeIntervalBatchSelectorConfig {
                    batch_interval: interval,
                }),
                report_count: 10,
                checksum: BatchChecksum::default(),
            }
            .get_encoded()
            .unwrap(),
        ]
    })
}

/// A valid message with a few bytes flipped, cut or added.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        0..5usize,
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        0..3u8,
        any::<prop::sample::Index>(),
    )
        .prop_map(|(which, flips, how, cut)| {
            let mut bytes = seeds()[which].clone();
            for (i, b) in flips {
                let i = i.index(bytes.len());
                bytes[i] ^= b;
            }
            match how {
                0 => bytes.truncate(cut.index(bytes.len() + 1)),
                1 => bytes.extend_from_slice(&[0, 1, 2]),
                _ => {}
            }
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn decoders_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        all_decoders(&bytes)?;
    }

    #[test]
    fn decoders_on_mutated_messages(bytes in mutated()) {
        all_decoders(&bytes)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn handlers_never_fail_on_bad_bodies(body in prop_oneof![prop::collection::vec(any::<u8>(), 0..200), mutated()]) {
        let s = servers();
        let t = s.task_id;
        let upload = call(&s.leader, format!("/tasks/{t}/reports"), duet_common::media_type::UPLOAD_REQ, "", body.clone());
        prop_assert!(upload < 500, "upload answered {}", upload);
        let collect = call(&s.leader, format!("/tasks/{t}/collection_jobs"), duet_common::media_type::COLLECTION_JOB_REQ, &s.collector_token, body.clone());
        prop_assert!(collect < 500, "collection job answered {}", collect);
        let init = call(&s.helper, format!("/tasks/{t}/aggregation_jobs"), duet_common::media_type::AGGREGATION_JOB_INIT_REQ, &s.aggregator_token, body.clone());
        prop_assert!(init < 500, "aggregation job answered {}", init);
        let share = call(&s.helper, format!("/tasks/{t}/aggregate_shares"), duet_common::media_type::AGGREGATE_SHARE_REQ, &s.aggregator_token, body);
        prop_assert!(share < 500, "aggregate share answered {}", share);
    }
}
