//! Messages of the aggregation interaction (DAP-18 "Verifying and Aggregating Reports"): the
//! leader's init and continue requests to the helper, and the helper's per-report answers.

use super::{BatchId, HpkeCiphertext, ReportError, ReportId, ReportMetadata};
use crate::codec::{
    decode_opaque_u16, decode_opaque_u32, decode_rest, decode_u16_list, encode_opaque_u16, encode_opaque_u32,
    encode_u16_list, out_of_range,
};
use prio::codec::{CodecError, Decode, Encode};
use std::io::Cursor;

/// `struct { ReportMetadata; opaque public_share<0..2^32-1>; HpkeCiphertext encrypted_input_share; }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportShare {
    pub report_metadata: ReportMetadata,
    pub public_share: Vec<u8>,
    pub encrypted_input_share: HpkeCiphertext,
}

impl Encode for ReportShare {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        self.report_metadata.encode(bytes)?;
        encode_opaque_u32(bytes, &self.public_share)?;
        self.encrypted_input_share.encode(bytes)
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(
            self.report_metadata.encoded_len()?
                + 4
                + self.public_share.len()
                + self.encrypted_input_share.encoded_len()?,
        )
    }
}

impl Decode for ReportShare {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self {
            report_metadata: ReportMetadata::decode(bytes)?,
            public_share: decode_opaque_u32(bytes, 0, "ReportShare.public_share")?,
            encrypted_input_share: HpkeCiphertext::decode(bytes)?,
        })
    }
}

/// `struct { ReportShare report_share; opaque payload<1..2^32-1>; } VerifyInit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyInit {
    pub report_share: ReportShare,
    /// The leader's first ping-pong message for this report.
    pub payload: Vec<u8>,
}

impl Encode for VerifyInit {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        if self.payload.is_empty() {
            return Err(out_of_range("VerifyInit.payload"));
        }
        self.report_share.encode(bytes)?;
        encode_opaque_u32(bytes, &self.payload)
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(self.report_share.encoded_len()? + 4 + self.payload.len())
    }
}

impl Decode for VerifyInit {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self {
            report_share: ReportShare::decode(bytes)?,
            payload: decode_opaque_u32(bytes, 1, "VerifyInit.payload")?,
        })
    }
}

/// `enum { reserved(0), leader_selected_batch_id(1), (2^16-1) } AggregationJobExtensionType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggregationJobExtensionType(pub u16);

impl AggregationJobExtensionType {
    pub const LEADER_SELECTED_BATCH_ID: AggregationJobExtensionType = AggregationJobExtensionType(1);
}

/// `struct { AggregationJobExtensionType extension_type; opaque extension_data<0..2^16-1>; }`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AggregationJobExtension {
    pub extension_type: AggregationJobExtensionType,
    pub extension_data: Vec<u8>,
}

impl AggregationJobExtension {
    /// The leader-selected batch mode's extension, carrying the job's `BatchID`.
    pub fn leader_selected_batch_id(batch_id: BatchId) -> Self {
        Self {
            extension_type: AggregationJobExtensionType::LEADER_SELECTED_BATCH_ID,
            extension_data: batch_id.as_bytes().to_vec(),
        }
    }
}

impl Encode for AggregationJobExtension {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        self.extension_type.0.encode(bytes)?;
        encode_opaque_u16(bytes, &self.extension_data)
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(4 + self.extension_data.len())
    }
}

impl Decode for AggregationJobExtension {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self {
            extension_type: AggregationJobExtensionType(u16::decode(bytes)?),
            extension_data: decode_opaque_u16(bytes, 0, "AggregationJobExtension.extension_data")?,
        })
    }
}

/// `struct { uint8 verification_key_id; opaque agg_param<0..2^32-1>; AggregationJobExtension
/// extensions<0..2^16-1>; VerifyInit verify_inits[verify_inits_length]; } AggregationJobInitReq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregationJobInitReq {
    pub verification_key_id: u8,
    pub agg_param: Vec<u8>,
    pub extensions: Vec<AggregationJobExtension>,
    pub verify_inits: Vec<VerifyInit>,
}

impl AggregationJobInitReq {
    /// The batch ID of the `leader_selected_batch_id` extension: `Ok(None)` if absent, an error
    /// if present but not exactly a `BatchID`.
    pub fn leader_selected_batch_id(&self) -> Result<Option<BatchId>, CodecError> {
        self.extensions
            .iter()
            .find(|e| e.extension_type == AggregationJobExtensionType::LEADER_SELECTED_BATCH_ID)
            .map(|e| BatchId::get_decoded(&e.extension_data))
            .transpose()
    }
}

impl Encode for AggregationJobInitReq {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        self.verification_key_id.encode(bytes)?;
        encode_opaque_u32(bytes, &self.agg_param)?;
        encode_u16_list(bytes, &self.extensions)?;
        for vi in &self.verify_inits {
            vi.encode(bytes)?;
        }
        Ok(())
    }
}

impl Decode for AggregationJobInitReq {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self {
            verification_key_id: u8::decode(bytes)?,
            agg_param: decode_opaque_u32(bytes, 0, "AggregationJobInitReq.agg_param")?,
            extensions: decode_u16_list(bytes)?,
            verify_inits: decode_rest(bytes)?,
        })
    }
}

/// The `select` of a `VerifyResp`: `continue(0)` with a payload, `finish(1)`, or `reject(2)`
/// with a `ReportError`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyRespType {
    Continue { payload: Vec<u8> },
    Finish,
    Reject { report_error: ReportError },
}

/// `struct { ReportID report_id; VerifyRespType verify_resp_type; select ... } VerifyResp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyResp {
    pub report_id: ReportId,
    pub verify_resp_type: VerifyRespType,
}

impl Encode for VerifyResp {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        self.report_id.encode(bytes)?;
        match &self.verify_resp_type {
            VerifyRespType::Continue { payload } => {
                if payload.is_empty() {
                    return Err(out_of_range("VerifyResp.payload"));
                }
                0u8.encode(bytes)?;
                encode_opaque_u32(bytes, payload)
            }
            VerifyRespType::Finish => 1u8.encode(bytes),
            VerifyRespType::Reject { report_error } => {
                2u8.encode(bytes)?;
                report_error.encode(bytes)
            }
        }
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(
            17 + match &self.verify_resp_type {
                VerifyRespType::Continue { payload } => 4 + payload.len(),
                VerifyRespType::Finish => 0,
                VerifyRespType::Reject { .. } => 1,
            },
        )
    }
}

impl Decode for VerifyResp {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        let report_id = ReportId::decode(bytes)?;
        let verify_resp_type = match u8::decode(bytes)? {
            0 => VerifyRespType::Continue { payload: decode_opaque_u32(bytes, 1, "VerifyResp.payload")? },
            1 => VerifyRespType::Finish,
            2 => VerifyRespType::Reject { report_error: ReportError::decode(bytes)? },
            _ => return Err(CodecError::UnexpectedValue),
        };
        Ok(Self { report_id, verify_resp_type })
    }
}

/// `struct { VerifyResp verify_resps[message_length]; } AggregationJobResp`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AggregationJobResp {
    pub verify_resps: Vec<VerifyResp>,
}

impl Encode for AggregationJobResp {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        for r in &self.verify_resps {
            r.encode(bytes)?;
        }
        Ok(())
    }
    fn encoded_len(&self) -> Option<usize> {
        self.verify_resps.iter().map(|r| r.encoded_len()).sum()
    }
}

impl Decode for AggregationJobResp {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self { verify_resps: decode_rest(bytes)? })
    }
}

/// `struct { ReportID report_id; opaque payload<1..2^32-1>; } VerifyContinue`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyContinue {
    pub report_id: ReportId,
    pub payload: Vec<u8>,
}

impl Encode for VerifyContinue {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        if self.payload.is_empty() {
            return Err(out_of_range("VerifyContinue.payload"));
        }
        self.report_id.encode(bytes)?;
        encode_opaque_u32(bytes, &self.payload)
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(16 + 4 + self.payload.len())
    }
}

impl Decode for VerifyContinue {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self {
            report_id: ReportId::decode(bytes)?,
            payload: decode_opaque_u32(bytes, 1, "VerifyContinue.payload")?,
        })
    }
}

/// The `uint16 step` of an aggregation job: 0 after initialization, then one more per
/// continuation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggregationJobStep(pub u16);

impl AggregationJobStep {
    pub fn next(self) -> Option<Self> {
        self.0.checked_add(1).map(Self)
    }
}

impl std::fmt::Display for AggregationJobStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// `struct { uint16 step; VerifyContinue verify_continues[verify_continues_length]; }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregationJobContinueReq {
    pub step: AggregationJobStep,
    pub verify_continues: Vec<VerifyContinue>,
}

impl Encode for AggregationJobContinueReq {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        self.step.0.encode(bytes)?;
        for vc in &self.verify_continues {
            vc.encode(bytes)?;
        }
        Ok(())
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(2 + self.verify_continues.iter().map(|v| 20 + v.payload.len()).sum::<usize>())
    }
}

impl Decode for AggregationJobContinueReq {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self { step: AggregationJobStep(u16::decode(bytes)?), verify_continues: decode_rest(bytes)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::test_util::*;
    use crate::messages::upload::tests::{sample_report, SAMPLE_REPORT_HEX};

    fn sample_verify_init(id: u8) -> VerifyInit {
        let r = sample_report(id);
        VerifyInit {
            report_share: ReportShare {
                report_metadata: r.report_metadata,
                public_share: r.public_share,
                encrypted_input_share: r.helper_encrypted_input_share,
            },
            payload: vec![0x00, 0x00, 0x00, 0x00, 0x01, 0xee],
        }
    }

    #[test]
    fn aggregation_job_init_req_vector() {
        let batch_id = BatchId::from_bytes([0x1f; 32]);
        let req = AggregationJobInitReq {
            verification_key_id: 7,
            agg_param: vec![0x00, 0x01, 0x02, 0x04],
            extensions: vec![AggregationJobExtension::leader_selected_batch_id(batch_id)],
            verify_inits: vec![sample_verify_init(1)],
        };
        // The report share is the sample report without its leader ciphertext.
        let report_share_hex = SAMPLE_REPORT_HEX.replace("01 0004 0f0e0d0c 00000004 0b0a0908", "");
        let expected = unhex(&format!(
            "07 {} {} {} {} {}",
            "00000004 00010204", // agg_param<0..2^32-1>
            "0024 0001 0020",    // extensions: leader_selected_batch_id, 32 bytes
            "1f".repeat(32),
            report_share_hex,
            "00000006 0000000001ee" // VerifyInit.payload
        ));
        roundtrip_tail(&req, Some(&expected), 1 + 8 + 38);
        assert_eq!(req.leader_selected_batch_id().unwrap(), Some(batch_id));
        let bad = AggregationJobInitReq {
            extensions: vec![AggregationJobExtension {
                extension_type: AggregationJobExtensionType::LEADER_SELECTED_BATCH_ID,
                extension_data: vec![1, 2],
            }],
            ..req.clone()
        };
        assert!(bad.leader_selected_batch_id().is_err());
        // An empty VerifyInit payload is outside <1..2^32-1>.
        let mut empty = sample_verify_init(1);
        empty.payload.clear();
        assert!(empty.get_encoded().is_err());
    }

    #[test]
    fn aggregation_job_resp_vector() {
        let resp = AggregationJobResp {
            verify_resps: vec![
                VerifyResp {
                    report_id: ReportId::from_bytes([1; 16]),
                    verify_resp_type: VerifyRespType::Continue { payload: vec![0x02, 0xff] },
                },
                VerifyResp { report_id: ReportId::from_bytes([2; 16]), verify_resp_type: VerifyRespType::Finish },
                VerifyResp {
                    report_id: ReportId::from_bytes([3; 16]),
                    verify_resp_type: VerifyRespType::Reject { report_error: ReportError::VdafVerifyError },
                },
            ],
        };
        let expected = unhex(concat!(
            "01010101010101010101010101010101 00 00000002 02ff",
            "02020202020202020202020202020202 01",
            "03030303030303030303030303030303 02 06",
        ));
        roundtrip_tail(&resp, Some(&expected), 0);
        for r in &resp.verify_resps {
            roundtrip(r, None);
        }
        // Unknown response type, unknown report error, empty continue payload.
        assert!(VerifyResp::get_decoded(&unhex("01010101010101010101010101010101 03")).is_err());
        assert!(VerifyResp::get_decoded(&unhex("01010101010101010101010101010101 02 0c")).is_err());
        assert!(VerifyResp::get_decoded(&unhex("01010101010101010101010101010101 00 00000000")).is_err());
    }

    #[test]
    fn continue_req_vector() {
        let req = AggregationJobContinueReq {
            step: AggregationJobStep(1),
            verify_continues: vec![VerifyContinue { report_id: ReportId::from_bytes([5; 16]), payload: vec![0x02] }],
        };
        let expected = unhex("0001 05050505050505050505050505050505 00000001 02");
        roundtrip_tail(&req, Some(&expected), 2);
        roundtrip(&req.verify_continues[0], None);
    }

    #[test]
    fn report_share_and_verify_init_roundtrip() {
        let vi = sample_verify_init(9);
        roundtrip(&vi, None);
        roundtrip(&vi.report_share, None);
        roundtrip(&AggregationJobExtension::leader_selected_batch_id(BatchId::random()), None);
    }
}
