//! Messages of the collection interaction (DAP-18 "Collecting Results"): the collector's request
//! and result, the leader's aggregate-share request to the helper, and the helper's answer.

use super::{BatchSelector, HpkeCiphertext, Query, ReportId, TaskConfiguration, TaskId};
use crate::codec::{
    decode_array, decode_opaque_u16, decode_opaque_u32, decode_u16_list, encode_opaque_u16, encode_opaque_u32,
    encode_u16_list,
};
use crate::time::Interval;
use prio::codec::{CodecError, Decode, Encode};
use sha2::{Digest, Sha256};
use std::io::Cursor;

/// `enum { reserved(0), (2^16-1) } CollectionJobExtensionType`: DAP-18 defines none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CollectionJobExtensionType(pub u16);

/// `struct { CollectionJobExtensionType extension_type; opaque extension_data<0..2^16-1>; }`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CollectionJobExtension {
    pub extension_type: CollectionJobExtensionType,
    pub extension_data: Vec<u8>,
}

impl Encode for CollectionJobExtension {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        self.extension_type.0.encode(bytes)?;
        encode_opaque_u16(bytes, &self.extension_data)
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(4 + self.extension_data.len())
    }
}

impl Decode for CollectionJobExtension {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self {
            extension_type: CollectionJobExtensionType(u16::decode(bytes)?),
            extension_data: decode_opaque_u16(bytes, 0, "CollectionJobExtension.extension_data")?,
        })
    }
}

/// `struct { Query query; opaque agg_param<0..2^32-1>; CollectionJobExtension
/// extensions<0..2^16-1>; } CollectionJobReq`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CollectionJobReq {
    pub query: Query,
    pub agg_param: Vec<u8>,
    pub extensions: Vec<CollectionJobExtension>,
}

impl Encode for CollectionJobReq {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        self.query.encode(bytes)?;
        encode_opaque_u32(bytes, &self.agg_param)?;
        encode_u16_list(bytes, &self.extensions)
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(
            self.query.encoded_len()?
                + 4
                + self.agg_param.len()
                + 2
                + self.extensions.iter().map(|e| 4 + e.extension_data.len()).sum::<usize>(),
        )
    }
}

impl Decode for CollectionJobReq {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self {
            query: Query::decode(bytes)?,
            agg_param: decode_opaque_u32(bytes, 0, "CollectionJobReq.agg_param")?,
            extensions: decode_u16_list(bytes)?,
        })
    }
}

/// `struct { uint64 report_count; Interval interval; HpkeCiphertext leader_encrypted_agg_share;
/// HpkeCiphertext helper_encrypted_agg_share; } CollectionJobResp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectionJobResp {
    pub report_count: u64,
    pub interval: Interval,
    pub leader_encrypted_agg_share: HpkeCiphertext,
    pub helper_encrypted_agg_share: HpkeCiphertext,
}

impl Encode for CollectionJobResp {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        self.report_count.encode(bytes)?;
        self.interval.encode(bytes)?;
        self.leader_encrypted_agg_share.encode(bytes)?;
        self.helper_encrypted_agg_share.encode(bytes)
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(24 + self.leader_encrypted_agg_share.encoded_len()? + self.helper_encrypted_agg_share.encoded_len()?)
    }
}

impl Decode for CollectionJobResp {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self {
            report_count: u64::decode(bytes)?,
            interval: Interval::decode(bytes)?,
            leader_encrypted_agg_share: HpkeCiphertext::decode(bytes)?,
            helper_encrypted_agg_share: HpkeCiphertext::decode(bytes)?,
        })
    }
}

/// The 32-byte batch checksum: the XOR of SHA-256 of every aggregated report ID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BatchChecksum(pub [u8; 32]);

impl BatchChecksum {
    /// The checksum of a batch holding only `report_id`.
    pub fn for_report(report_id: &ReportId) -> Self {
        Self(Sha256::digest(report_id.as_bytes()).into())
    }

    /// Folds `other` in (bitwise XOR), for adding a report or combining shards.
    pub fn combine(&mut self, other: &BatchChecksum) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a ^= b;
        }
    }

    pub fn update(&mut self, report_id: &ReportId) {
        self.combine(&Self::for_report(report_id));
    }
}

impl std::fmt::Debug for BatchChecksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BatchChecksum(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

impl Encode for BatchChecksum {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        bytes.extend_from_slice(&self.0);
        Ok(())
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(32)
    }
}

impl Decode for BatchChecksum {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self(decode_array(bytes)?))
    }
}

/// `struct { CollectionJobReq collection_job_req; BatchSelector batch_selector; uint64
/// report_count; opaque checksum[32]; } AggregateShareReq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregateShareReq {
    pub collection_job_req: CollectionJobReq,
    pub batch_selector: BatchSelector,
    pub report_count: u64,
    pub checksum: BatchChecksum,
}

impl Encode for AggregateShareReq {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        self.collection_job_req.encode(bytes)?;
        self.batch_selector.encode(bytes)?;
        self.report_count.encode(bytes)?;
        self.checksum.encode(bytes)
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(self.collection_job_req.encoded_len()? + self.batch_selector.encoded_len()? + 8 + 32)
    }
}

impl Decode for AggregateShareReq {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self {
            collection_job_req: CollectionJobReq::decode(bytes)?,
            batch_selector: BatchSelector::decode(bytes)?,
            report_count: u64::decode(bytes)?,
            checksum: BatchChecksum::decode(bytes)?,
        })
    }
}

/// `struct { HpkeCiphertext encrypted_aggregate_share; } AggregateShare`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregateShare {
    pub encrypted_aggregate_share: HpkeCiphertext,
}

impl Encode for AggregateShare {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        self.encrypted_aggregate_share.encode(bytes)
    }
    fn encoded_len(&self) -> Option<usize> {
        self.encrypted_aggregate_share.encoded_len()
    }
}

impl Decode for AggregateShare {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self { encrypted_aggregate_share: HpkeCiphertext::decode(bytes)? })
    }
}

/// `struct { TaskID task_id; TaskConfiguration task_configuration; CollectionJobReq
/// collection_job_req; } AggregateShareAad`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregateShareAad {
    pub task_id: TaskId,
    pub task_configuration: TaskConfiguration,
    pub collection_job_req: CollectionJobReq,
}

impl AggregateShareAad {
    /// Encodes the AAD from borrowed parts, with the task configuration already encoded.
    pub fn encode_parts(
        task_id: &TaskId,
        task_configuration_encoded: &[u8],
        collection_job_req: &CollectionJobReq,
    ) -> Result<Vec<u8>, CodecError> {
        let mut bytes = Vec::with_capacity(32 + task_configuration_encoded.len() + 64);
        task_id.encode(&mut bytes)?;
        bytes.extend_from_slice(task_configuration_encoded);
        collection_job_req.encode(&mut bytes)?;
        Ok(bytes)
    }
}

impl Encode for AggregateShareAad {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        self.task_id.encode(bytes)?;
        self.task_configuration.encode(bytes)?;
        self.collection_job_req.encode(bytes)
    }
}

impl Decode for AggregateShareAad {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self {
            task_id: TaskId::decode(bytes)?,
            task_configuration: TaskConfiguration::decode(bytes)?,
            collection_job_req: CollectionJobReq::decode(bytes)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::test_util::*;
    use crate::messages::{BatchId, BatchMode, HpkeConfigId, LeaderSelectedQueryConfig, Url};
    use crate::time::{Duration, Time, TimePrecision};
    use crate::vdaf::VdafConfig;

    fn time_interval_req() -> CollectionJobReq {
        CollectionJobReq {
            query: Query::time_interval(Interval::new(Time::from_units(1659540), Duration::from_units(100))),
            agg_param: vec![],
            extensions: vec![],
        }
    }

    #[test]
    fn collection_job_req_vectors() {
        // query{batch_mode=1, config<16>{start, duration}}, agg_param<0..2^32-1>, extensions<0..2^16-1>
        roundtrip(&time_interval_req(), Some(&unhex("01 0010 0000000000195294 0000000000000064 00000000 0000")));
        let leader_selected = CollectionJobReq {
            query: Query::LeaderSelected(LeaderSelectedQueryConfig),
            agg_param: vec![0x00, 0x01],
            extensions: vec![CollectionJobExtension {
                extension_type: CollectionJobExtensionType(0x1234),
                extension_data: vec![0xff],
            }],
        };
        roundtrip(&leader_selected, Some(&unhex("02 0000 00000002 0001 0005 1234 0001 ff")));
    }

    #[test]
    fn aggregate_share_req_vector() {
        let req = AggregateShareReq {
            collection_job_req: time_interval_req(),
            batch_selector: BatchSelector::time_interval(Interval::new(
                Time::from_units(1659544),
                Duration::from_units(10),
            )),
            report_count: 1000,
            checksum: BatchChecksum([0x0a; 32]),
        };
        let expected = unhex(&format!(
            "{} {} {} {}",
            "01 0010 0000000000195294 0000000000000064 00000000 0000", // collection_job_req
            "01 0010 0000000000195298 000000000000000a",               // batch_selector
            "00000000000003e8",                                        // report_count 1000
            "0a".repeat(32),                                           // checksum
        ));
        roundtrip(&req, Some(&expected));
        let ls = AggregateShareReq {
            collection_job_req: CollectionJobReq {
                query: Query::LeaderSelected(LeaderSelectedQueryConfig),
                agg_param: vec![],
                extensions: vec![],
            },
            batch_selector: BatchSelector::leader_selected(BatchId::from_bytes([3; 32])),
            report_count: 10,
            checksum: BatchChecksum::default(),
        };
        roundtrip(&ls, None);
    }

    #[test]
    fn collection_job_resp_and_aggregate_share() {
        let ct = |id| HpkeCiphertext { config_id: HpkeConfigId(id), enc: vec![1], payload: vec![2, 3] };
        let resp = CollectionJobResp {
            report_count: 1000,
            interval: Interval::new(Time::from_units(16595440), Duration::from_units(1)),
            leader_encrypted_agg_share: ct(9),
            helper_encrypted_agg_share: ct(9),
        };
        roundtrip(
            &resp,
            Some(&unhex(concat!(
                "00000000000003e8 0000000000fd39f0 0000000000000001",
                "09 0001 01 00000002 0203",
                "09 0001 01 00000002 0203"
            ))),
        );
        roundtrip(&AggregateShare { encrypted_aggregate_share: ct(4) }, Some(&unhex("04 0001 01 00000002 0203")));
    }

    #[test]
    fn aggregate_share_aad_roundtrip() {
        let aad = AggregateShareAad {
            task_id: TaskId::from_bytes([1; 32]),
            task_configuration: TaskConfiguration {
                task_info: b"x".to_vec(),
                leader_aggregator_endpoint: Url::new("https://l/").unwrap(),
                helper_aggregator_endpoint: Url::new("https://h/").unwrap(),
                time_precision: TimePrecision::from_seconds(60).unwrap(),
                min_batch_size: 10,
                batch_mode: BatchMode::TimeInterval,
                batch_config: vec![],
                vdaf: VdafConfig::Prio3Count,
                extensions: vec![],
            },
            collection_job_req: time_interval_req(),
        };
        roundtrip(&aad, None);
        let parts = AggregateShareAad::encode_parts(
            &aad.task_id,
            &aad.task_configuration.get_encoded().unwrap(),
            &aad.collection_job_req,
        )
        .unwrap();
        assert_eq!(parts, aad.get_encoded().unwrap());
    }

    #[test]
    fn checksum_is_xor_of_sha256() {
        let a = ReportId::from_bytes([0; 16]);
        let b = ReportId::from_bytes([1; 16]);
        let mut c = BatchChecksum::default();
        c.update(&a);
        c.update(&b);
        c.update(&a);
        assert_eq!(c, BatchChecksum::for_report(&b));
        // SHA-256 of sixteen zero bytes, computed independently.
        assert_eq!(
            hex(&BatchChecksum::for_report(&a).0),
            "374708fff7719dd5979ec875d56cd2286f6d3cf7ec317a3b25632aab28ec37bb"
        );
    }
}
