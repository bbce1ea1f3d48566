//! Messages of the upload interaction (DAP-18 "Uploading Reports"): what a client sends the
//! leader, what it encrypts to each aggregator, and the leader's per-report errors.

use super::{Extension, HpkeCiphertext, HpkeConfigId, ReportError, ReportId, TaskConfiguration, TaskId};
use crate::codec::{
    decode_opaque_u32, decode_rest, decode_u16_list, encode_opaque_u32, encode_u16_list, opaque_u32_in_place,
    out_of_range,
};
use crate::time::Time;
use prio::codec::{CodecError, Decode, Encode};
use std::io::Cursor;

/// `struct { ReportID report_id; Time time; Extension public_extensions<0..2^16-1>; }`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReportMetadata {
    pub report_id: ReportId,
    pub time: Time,
    pub public_extensions: Vec<Extension>,
}

impl Encode for ReportMetadata {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        self.report_id.encode(bytes)?;
        self.time.encode(bytes)?;
        encode_u16_list(bytes, &self.public_extensions)
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(16 + 8 + 2 + self.public_extensions.iter().map(|e| 4 + e.extension_data.len()).sum::<usize>())
    }
}

impl Decode for ReportMetadata {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self {
            report_id: ReportId::decode(bytes)?,
            time: Time::decode(bytes)?,
            public_extensions: decode_u16_list(bytes)?,
        })
    }
}

/// `struct { ReportMetadata; opaque public_share<0..2^32-1>; HpkeCiphertext leader_...;
/// HpkeCiphertext helper_...; } Report`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub report_metadata: ReportMetadata,
    pub public_share: Vec<u8>,
    pub leader_encrypted_input_share: HpkeCiphertext,
    pub helper_encrypted_input_share: HpkeCiphertext,
}

impl Encode for Report {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        self.report_metadata.encode(bytes)?;
        encode_opaque_u32(bytes, &self.public_share)?;
        self.leader_encrypted_input_share.encode(bytes)?;
        self.helper_encrypted_input_share.encode(bytes)
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(
            self.report_metadata.encoded_len()?
                + 4
                + self.public_share.len()
                + self.leader_encrypted_input_share.encoded_len()?
                + self.helper_encrypted_input_share.encoded_len()?,
        )
    }
}

impl Decode for Report {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self {
            report_metadata: ReportMetadata::decode(bytes)?,
            public_share: decode_opaque_u32(bytes, 0, "Report.public_share")?,
            leader_encrypted_input_share: HpkeCiphertext::decode(bytes)?,
            helper_encrypted_input_share: HpkeCiphertext::decode(bytes)?,
        })
    }
}

/// `struct { Report reports[message_length]; } UploadRequest`: the whole body is reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadRequest {
    pub reports: Vec<Report>,
}

impl Encode for UploadRequest {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        for report in &self.reports {
            report.encode(bytes)?;
        }
        Ok(())
    }
    fn encoded_len(&self) -> Option<usize> {
        self.reports.iter().map(|r| r.encoded_len()).sum()
    }
}

impl Decode for UploadRequest {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self { reports: decode_rest(bytes)? })
    }
}

impl UploadRequest {
    /// Reads the reports of an `UploadRequest` body in place, with the checks of [`Decode`].
    pub fn decode_in_place(body: &[u8]) -> Result<Vec<EncodedReport<'_>>, CodecError> {
        crate::codec::read_all(body, EncodedReport::decode_in_place)
    }

    /// As [`Self::decode_in_place`], reading at most `max` reports: `None` as soon as a request
    /// turns out to carry more, so that refusing an oversized request costs no more than the
    /// limit.
    pub fn decode_in_place_at_most(body: &[u8], max: usize) -> Result<Option<Vec<EncodedReport<'_>>>, CodecError> {
        let mut cursor = Cursor::new(body);
        let mut reports = Vec::new();
        while (cursor.position() as usize) < body.len() {
            if reports.len() == max {
                return Ok(None);
            }
            reports.push(EncodedReport::decode_in_place(&mut cursor)?);
        }
        Ok(Some(reports))
    }
}

/// A [`Report`] read in place from the bytes it arrived in: the metadata and the leader's HPKE
/// config ID decoded (the upload checks need them), every stored field as the client encoded
/// it. The leader stores reports as received, so decoding them into buffers of their own and
/// encoding them again would only copy each report twice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedReport<'a> {
    pub report_metadata: ReportMetadata,
    /// The encoded `ReportMetadata`.
    pub encoded_report_metadata: &'a [u8],
    /// The public share's bytes (without their length prefix).
    pub public_share: &'a [u8],
    /// The `config_id` of the leader's `HpkeCiphertext`.
    pub leader_config_id: HpkeConfigId,
    /// The encoded `HpkeCiphertext`s.
    pub leader_encrypted_input_share: &'a [u8],
    pub helper_encrypted_input_share: &'a [u8],
}

impl<'a> EncodedReport<'a> {
    /// The bytes the leader stores of this report.
    pub fn stored_len(&self) -> usize {
        self.encoded_report_metadata.len()
            + self.public_share.len()
            + self.leader_encrypted_input_share.len()
            + self.helper_encrypted_input_share.len()
    }

    pub fn decode_in_place(bytes: &mut Cursor<&'a [u8]>) -> Result<Self, CodecError> {
        let (report_metadata, encoded_report_metadata) = crate::codec::consumed(bytes, ReportMetadata::decode)?;
        let public_share = opaque_u32_in_place(bytes, 0, "Report.public_share")?;
        let (leader_config_id, leader_encrypted_input_share) = HpkeCiphertext::decode_in_place(bytes)?;
        let (_, helper_encrypted_input_share) = HpkeCiphertext::decode_in_place(bytes)?;
        Ok(Self {
            report_metadata,
            encoded_report_metadata,
            public_share,
            leader_config_id,
            leader_encrypted_input_share,
            helper_encrypted_input_share,
        })
    }
}

/// `struct { Extension private_extensions<0..2^16-1>; opaque payload<1..2^32-1>; }`: what a
/// client encrypts to each aggregator.
#[derive(Clone, PartialEq, Eq)]
pub struct PlaintextInputShare {
    pub private_extensions: Vec<Extension>,
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for PlaintextInputShare {
    // The payload is an input share: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaintextInputShare")
            .field("private_extensions", &self.private_extensions)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl Encode for PlaintextInputShare {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        if self.payload.is_empty() {
            return Err(out_of_range("PlaintextInputShare.payload"));
        }
        encode_u16_list(bytes, &self.private_extensions)?;
        encode_opaque_u32(bytes, &self.payload)
    }
}

impl Decode for PlaintextInputShare {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self {
            private_extensions: decode_u16_list(bytes)?,
            payload: decode_opaque_u32(bytes, 1, "PlaintextInputShare.payload")?,
        })
    }
}

/// `struct { TaskID; TaskConfiguration; ReportMetadata; opaque public_share<0..2^32-1>; }`: the
/// associated data of an encrypted input share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputShareAad {
    pub task_id: TaskId,
    pub task_configuration: TaskConfiguration,
    pub report_metadata: ReportMetadata,
    pub public_share: Vec<u8>,
}

impl InputShareAad {
    /// Encodes the AAD from borrowed parts, without cloning the task configuration.
    pub fn encode_parts(
        task_id: &TaskId,
        task_configuration_encoded: &[u8],
        report_metadata: &ReportMetadata,
        public_share: &[u8],
    ) -> Result<Vec<u8>, CodecError> {
        let mut bytes = Vec::with_capacity(32 + task_configuration_encoded.len() + 64 + public_share.len());
        task_id.encode(&mut bytes)?;
        bytes.extend_from_slice(task_configuration_encoded);
        report_metadata.encode(&mut bytes)?;
        encode_opaque_u32(&mut bytes, public_share)?;
        Ok(bytes)
    }
}

impl Encode for InputShareAad {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        self.task_id.encode(bytes)?;
        self.task_configuration.encode(bytes)?;
        self.report_metadata.encode(bytes)?;
        encode_opaque_u32(bytes, &self.public_share)
    }
}

impl Decode for InputShareAad {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self {
            task_id: TaskId::decode(bytes)?,
            task_configuration: TaskConfiguration::decode(bytes)?,
            report_metadata: ReportMetadata::decode(bytes)?,
            public_share: decode_opaque_u32(bytes, 0, "InputShareAad.public_share")?,
        })
    }
}

/// `struct { ReportID id; ReportError error; } ReportUploadStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportUploadStatus {
    pub id: ReportId,
    pub error: ReportError,
}

impl Encode for ReportUploadStatus {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        self.id.encode(bytes)?;
        self.error.encode(bytes)
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(17)
    }
}

impl Decode for ReportUploadStatus {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self { id: ReportId::decode(bytes)?, error: ReportError::decode(bytes)? })
    }
}

/// `struct { ReportUploadStatus status[message_length]; } UploadErrors`: only failed reports,
/// in request order.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct UploadErrors {
    pub status: Vec<ReportUploadStatus>,
}

impl Encode for UploadErrors {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        for s in &self.status {
            s.encode(bytes)?;
        }
        Ok(())
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(17 * self.status.len())
    }
}

impl Decode for UploadErrors {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self { status: decode_rest(bytes)? })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::messages::test_util::*;
    use crate::messages::{ExtensionType, HpkeConfigId};

    pub fn sample_report(id: u8) -> Report {
        Report {
            report_metadata: ReportMetadata {
                report_id: ReportId::from_bytes([id; 16]),
                time: Time::from_units(17419860),
                public_extensions: vec![Extension { extension_type: ExtensionType(0xaa), extension_data: vec![0xbb] }],
            },
            public_share: vec![0x0a, 0x0b],
            leader_encrypted_input_share: HpkeCiphertext {
                config_id: HpkeConfigId(1),
                enc: vec![0x0f, 0x0e, 0x0d, 0x0c],
                payload: vec![0x0b, 0x0a, 0x09, 0x08],
            },
            helper_encrypted_input_share: HpkeCiphertext {
                config_id: HpkeConfigId(2),
                enc: vec![0x0c, 0x0d, 0x0e, 0x0f],
                payload: vec![0x08, 0x00, 0x0a, 0x0b],
            },
        }
    }

    #[test]
    fn an_upload_of_more_reports_than_the_limit_is_refused_at_the_one_past_it() {
        let mut body = Vec::new();
        for id in 0..5 {
            sample_report(id).encode(&mut body).unwrap();
        }
        let all = UploadRequest::decode_in_place_at_most(&body, 5).unwrap().expect("five fit");
        assert_eq!(all.len(), 5);
        assert_eq!(all[4].report_metadata.report_id, ReportId::from_bytes([4; 16]));
        assert!(UploadRequest::decode_in_place_at_most(&body, 4).unwrap().is_none());
        assert!(UploadRequest::decode_in_place_at_most(&[], 0).unwrap().unwrap().is_empty());
        // Malformed bytes within the limit are still malformed.
        assert!(UploadRequest::decode_in_place_at_most(&body[..body.len() - 1], 5).is_err());
    }

    /// The spec's upload example, written out by hand from the presentation language.
    pub const SAMPLE_REPORT_HEX: &str = concat!(
        "0101010101010101 0101010101010101",  // report_id
        "000000000109ce54",                   // time 17419860
        "0005 00aa 0001 bb",                  // public_extensions
        "00000002 0a0b",                      // public_share
        "01 0004 0f0e0d0c 00000004 0b0a0908", // leader_encrypted_input_share
        "02 0004 0c0d0e0f 00000004 08000a0b", // helper_encrypted_input_share
    );

    #[test]
    fn report_vector() {
        roundtrip(&sample_report(1), Some(&unhex(SAMPLE_REPORT_HEX)));
    }

    #[test]
    fn upload_request_is_a_run_of_reports() {
        let req = UploadRequest { reports: vec![sample_report(1), sample_report(2)] };
        let mut expected = unhex(SAMPLE_REPORT_HEX);
        expected.extend(unhex(&SAMPLE_REPORT_HEX.replace("0101010101010101", "0202020202020202")));
        roundtrip_tail(&req, Some(&expected), 0);
        assert_eq!(UploadRequest::get_decoded(&[]).unwrap().reports.len(), 0);
        // A partial second report is an error.
        assert!(UploadRequest::get_decoded(&expected[..expected.len() - 1]).is_err());
    }

    #[test]
    fn reports_read_in_place_are_the_bytes_sent() {
        let reports = vec![sample_report(1), sample_report(2)];
        let body = UploadRequest { reports: reports.clone() }.get_encoded().unwrap();
        let read = UploadRequest::decode_in_place(&body).unwrap();
        assert_eq!(read.len(), 2);
        for (report, encoded) in reports.iter().zip(&read) {
            assert_eq!(encoded.report_metadata, report.report_metadata);
            assert_eq!(encoded.encoded_report_metadata, report.report_metadata.get_encoded().unwrap());
            assert_eq!(encoded.public_share, [0x0a, 0x0b]);
            assert_eq!(encoded.leader_config_id, HpkeConfigId(1));
            assert_eq!(encoded.leader_encrypted_input_share, unhex("01 0004 0f0e0d0c 00000004 0b0a0908"));
            assert_eq!(encoded.helper_encrypted_input_share, unhex("02 0004 0c0d0e0f 00000004 08000a0b"));
        }
        assert!(UploadRequest::decode_in_place(&[]).unwrap().is_empty());
    }

    #[test]
    fn reading_in_place_rejects_what_decoding_rejects() {
        let good = unhex(SAMPLE_REPORT_HEX);
        let mut bad = Vec::new();
        // Every truncation.
        bad.extend((1..good.len()).map(|n| good[..n].to_vec()));
        // An empty `enc` and an empty payload in the leader's ciphertext (both `<1..>`), the
        // same in the helper's, otherwise well formed.
        let leader = "01 0004 0f0e0d0c 00000004 0b0a0908";
        let helper = "02 0004 0c0d0e0f 00000004 08000a0b";
        for (whole, part) in [
            (leader, "01 0000 00000004 0b0a0908"),
            (leader, "01 0004 0f0e0d0c 00000000"),
            (helper, "02 0000 00000004 08000a0b"),
            (helper, "02 0004 0c0d0e0f 00000000"),
        ] {
            let hex = SAMPLE_REPORT_HEX.replace(whole, part);
            assert_ne!(hex, SAMPLE_REPORT_HEX);
            bad.push(unhex(&hex));
        }
        // A public share that claims more bytes than there are; extensions that overrun.
        for (at, bytes) in [(31, vec![0xff; 4]), (25, vec![0x06])] {
            let mut b = good.clone();
            b.splice(at..at + bytes.len(), bytes);
            bad.push(b);
        }
        for bytes in &bad {
            assert!(Report::get_decoded(bytes).is_err(), "{bytes:02x?}");
            assert!(UploadRequest::decode_in_place(bytes).is_err(), "{bytes:02x?}");
        }
    }

    #[test]
    fn upload_errors_vector() {
        let errs = UploadErrors {
            status: vec![
                ReportUploadStatus { id: ReportId::from_bytes([0xab; 16]), error: ReportError::ReportReplayed },
                ReportUploadStatus { id: ReportId::from_bytes([0xcd; 16]), error: ReportError::OutdatedConfig },
            ],
        };
        let expected = unhex(concat!("abababababababababababababababab 02", "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd 0b"));
        roundtrip_tail(&errs, Some(&expected), 0);
        assert!(UploadErrors::get_decoded(&expected[..20]).is_err());
    }

    #[test]
    fn metadata_status_and_overlong_prefixes() {
        let report = sample_report(1);
        roundtrip(
            &report.report_metadata,
            Some(&unhex("0101010101010101 0101010101010101 000000000109ce54 0005 00aa 0001 bb")),
        );
        roundtrip(
            &ReportUploadStatus { id: ReportId::from_bytes([9; 16]), error: ReportError::ReportTooEarly },
            Some(&unhex("09090909090909090909090909090909 09")),
        );
        // The public share claims 0xffffffff bytes.
        let mut bytes = unhex(SAMPLE_REPORT_HEX);
        bytes[31..35].copy_from_slice(&[0xff; 4]);
        assert!(Report::get_decoded(&bytes).is_err());
        // The public extensions claim more bytes than they have.
        let mut bytes = unhex(SAMPLE_REPORT_HEX);
        bytes[25] = 0x06;
        assert!(Report::get_decoded(&bytes).is_err());
    }

    #[test]
    fn plaintext_input_share_and_aad() {
        let pis = PlaintextInputShare { private_extensions: vec![], payload: vec![1, 2, 3] };
        roundtrip(&pis, Some(&unhex("0000 00000003 010203")));
        assert!(PlaintextInputShare::get_decoded(&unhex("0000 00000000")).is_err());
        assert!(!format!("{pis:?}").contains("[1, 2, 3]"));
        let aad = InputShareAad {
            task_id: TaskId::from_bytes([2; 32]),
            task_configuration: crate::messages::TaskConfiguration {
                task_info: b"i".to_vec(),
                leader_aggregator_endpoint: crate::messages::Url::new("https://l/").unwrap(),
                helper_aggregator_endpoint: crate::messages::Url::new("https://h/").unwrap(),
                time_precision: crate::time::TimePrecision::from_seconds(1).unwrap(),
                min_batch_size: 1,
                batch_mode: crate::messages::BatchMode::LeaderSelected,
                batch_config: vec![],
                vdaf: crate::vdaf::VdafConfig::Prio3Count,
                extensions: vec![],
            },
            report_metadata: sample_report(3).report_metadata,
            public_share: vec![7, 7],
        };
        roundtrip(&aad, None);
        let parts = InputShareAad::encode_parts(
            &aad.task_id,
            &aad.task_configuration.get_encoded().unwrap(),
            &aad.report_metadata,
            &aad.public_share,
        )
        .unwrap();
        assert_eq!(parts, aad.get_encoded().unwrap());
    }
}
