//! The batch modes of DAP-18's "Batch Modes" section: the `BatchMode` codepoints, the collector's
//! `Query` and the leader's `BatchSelector`, with each mode's configuration payload.

use super::BatchId;
use crate::codec::{decode_opaque_u16, encode_opaque_u16};
use crate::time::Interval;
use prio::codec::{CodecError, Decode, Encode};
use std::io::Cursor;

/// `enum { reserved(0), time_interval(1), leader_selected(2), (255) } BatchMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum BatchMode {
    TimeInterval = 1,
    LeaderSelected = 2,
}

impl BatchMode {
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(BatchMode::TimeInterval),
            2 => Some(BatchMode::LeaderSelected),
            _ => None,
        }
    }
}

impl Encode for BatchMode {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        (*self as u8).encode(bytes)
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(1)
    }
}

impl Decode for BatchMode {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Self::from_code(u8::decode(bytes)?).ok_or(CodecError::UnexpectedValue)
    }
}

/// `struct { Interval batch_interval; } TimeIntervalQueryConfig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimeIntervalQueryConfig {
    pub batch_interval: Interval,
}

/// The leader-selected query configuration, which is empty: "the next batch, please".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaderSelectedQueryConfig;

/// `struct { Interval batch_interval; } TimeIntervalBatchSelectorConfig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimeIntervalBatchSelectorConfig {
    pub batch_interval: Interval,
}

/// `struct { BatchID batch_id; } LeaderSelectedBatchSelectorConfig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaderSelectedBatchSelectorConfig {
    pub batch_id: BatchId,
}

/// `struct { BatchMode batch_mode; opaque config<0..2^16-1>; } Query`, with the config decoded
/// according to the batch mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Query {
    TimeInterval(TimeIntervalQueryConfig),
    LeaderSelected(LeaderSelectedQueryConfig),
}

impl Query {
    pub fn time_interval(batch_interval: Interval) -> Self {
        Query::TimeInterval(TimeIntervalQueryConfig { batch_interval })
    }

    pub fn batch_mode(&self) -> BatchMode {
        match self {
            Query::TimeInterval(_) => BatchMode::TimeInterval,
            Query::LeaderSelected(_) => BatchMode::LeaderSelected,
        }
    }
}

/// `struct { BatchMode batch_mode; opaque config<0..2^16-1>; } BatchSelector`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BatchSelector {
    TimeInterval(TimeIntervalBatchSelectorConfig),
    LeaderSelected(LeaderSelectedBatchSelectorConfig),
}

impl BatchSelector {
    pub fn time_interval(batch_interval: Interval) -> Self {
        BatchSelector::TimeInterval(TimeIntervalBatchSelectorConfig { batch_interval })
    }

    pub fn leader_selected(batch_id: BatchId) -> Self {
        BatchSelector::LeaderSelected(LeaderSelectedBatchSelectorConfig { batch_id })
    }

    pub fn batch_mode(&self) -> BatchMode {
        match self {
            BatchSelector::TimeInterval(_) => BatchMode::TimeInterval,
            BatchSelector::LeaderSelected(_) => BatchMode::LeaderSelected,
        }
    }

    /// The spec's consistency rule between a selector and the collector's query: same batch mode,
    /// and for time-interval, the selector's interval within the query's.
    pub fn is_consistent_with(&self, query: &Query) -> bool {
        match (self, query) {
            (BatchSelector::TimeInterval(sel), Query::TimeInterval(q)) => {
                q.batch_interval.contains_interval(&sel.batch_interval)
            }
            (BatchSelector::LeaderSelected(_), Query::LeaderSelected(_)) => true,
            _ => false,
        }
    }
}

macro_rules! config_codec {
    ($t:ty, $field:ident: $ft:ty, $len:expr) => {
        impl Encode for $t {
            fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
                self.$field.encode(bytes)
            }
            fn encoded_len(&self) -> Option<usize> {
                Some($len)
            }
        }
        impl Decode for $t {
            fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
                Ok(Self { $field: <$ft>::decode(bytes)? })
            }
        }
    };
}
config_codec!(TimeIntervalQueryConfig, batch_interval: Interval, 16);
config_codec!(TimeIntervalBatchSelectorConfig, batch_interval: Interval, 16);
config_codec!(LeaderSelectedBatchSelectorConfig, batch_id: BatchId, 32);

impl Encode for LeaderSelectedQueryConfig {
    fn encode(&self, _bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        Ok(())
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(0)
    }
}

impl Decode for LeaderSelectedQueryConfig {
    fn decode(_bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self)
    }
}

fn encode_mode_config(bytes: &mut Vec<u8>, mode: BatchMode, config: &impl Encode) -> Result<(), CodecError> {
    mode.encode(bytes)?;
    encode_opaque_u16(bytes, &config.get_encoded()?)
}

impl Encode for Query {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        match self {
            Query::TimeInterval(c) => encode_mode_config(bytes, self.batch_mode(), c),
            Query::LeaderSelected(c) => encode_mode_config(bytes, self.batch_mode(), c),
        }
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(match self {
            Query::TimeInterval(_) => 3 + 16,
            Query::LeaderSelected(_) => 3,
        })
    }
}

impl Decode for Query {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        let mode = BatchMode::decode(bytes)?;
        let config = decode_opaque_u16(bytes, 0, "Query.config")?;
        Ok(match mode {
            BatchMode::TimeInterval => {
                Query::TimeInterval(TimeIntervalQueryConfig { batch_interval: Interval::get_decoded(&config)? })
            }
            BatchMode::LeaderSelected => {
                <()>::get_decoded(&config)?;
                Query::LeaderSelected(LeaderSelectedQueryConfig)
            }
        })
    }
}

impl Encode for BatchSelector {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        match self {
            BatchSelector::TimeInterval(c) => encode_mode_config(bytes, self.batch_mode(), c),
            BatchSelector::LeaderSelected(c) => encode_mode_config(bytes, self.batch_mode(), c),
        }
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(match self {
            BatchSelector::TimeInterval(_) => 3 + 16,
            BatchSelector::LeaderSelected(_) => 3 + 32,
        })
    }
}

impl Decode for BatchSelector {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        let mode = BatchMode::decode(bytes)?;
        let config = decode_opaque_u16(bytes, 0, "BatchSelector.config")?;
        Ok(match mode {
            BatchMode::TimeInterval => {
                BatchSelector::TimeInterval(TimeIntervalBatchSelectorConfig::get_decoded(&config)?)
            }
            BatchMode::LeaderSelected => {
                BatchSelector::LeaderSelected(LeaderSelectedBatchSelectorConfig::get_decoded(&config)?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::test_util::*;
    use crate::time::{Duration, Time};

    #[test]
    fn query_vectors() {
        // Written from the presentation language: batch_mode (1 byte), config<0..2^16-1>.
        let q = Query::time_interval(Interval::new(Time::from_units(16595440), Duration::from_units(1)));
        roundtrip(&q, Some(&unhex("01 0010 0000000000fd39f0 0000000000000001")));
        roundtrip(&Query::LeaderSelected(LeaderSelectedQueryConfig), Some(&unhex("02 0000")));
        // Unknown and reserved batch modes, and configs of the wrong size, are rejected.
        assert!(Query::get_decoded(&unhex("00 0000")).is_err());
        assert!(Query::get_decoded(&unhex("03 0000")).is_err());
        assert!(Query::get_decoded(&unhex("02 0001 00")).is_err());
        assert!(Query::get_decoded(&unhex("01 0008 0000000000000001")).is_err());
    }

    #[test]
    fn batch_selector_vectors() {
        let s = BatchSelector::time_interval(Interval::new(Time::from_units(1659544), Duration::from_units(10)));
        roundtrip(&s, Some(&unhex("01 0010 0000000000195298 000000000000000a")));
        let id = BatchId::from_bytes([0x1f; 32]);
        let mut expected = unhex("02 0020");
        expected.extend_from_slice(&[0x1f; 32]);
        roundtrip(&BatchSelector::leader_selected(id), Some(&expected));
        assert!(BatchSelector::get_decoded(&unhex("02 0000")).is_err());
    }

    #[test]
    fn batch_mode_and_configs() {
        roundtrip(&BatchMode::TimeInterval, Some(&[1]));
        roundtrip(&BatchMode::LeaderSelected, Some(&[2]));
        assert!(BatchMode::get_decoded(&[0]).is_err());
        let i = Interval::new(Time::from_units(5), Duration::from_units(2));
        roundtrip(&TimeIntervalQueryConfig { batch_interval: i }, Some(&unhex("0000000000000005 0000000000000002")));
        roundtrip(
            &TimeIntervalBatchSelectorConfig { batch_interval: i },
            Some(&unhex("0000000000000005 0000000000000002")),
        );
        roundtrip(&LeaderSelectedBatchSelectorConfig { batch_id: BatchId::from_bytes([4; 32]) }, Some(&[4; 32]));
        assert_eq!(LeaderSelectedQueryConfig.get_encoded().unwrap(), Vec::<u8>::new());
        // An over-long config length prefix is an error.
        assert!(Query::get_decoded(&unhex("01 0011 0000000000000005 0000000000000002")).is_err());
    }

    #[test]
    fn selector_query_consistency() {
        let q = Query::time_interval(Interval::new(Time::from_units(1659540), Duration::from_units(100)));
        let inside = BatchSelector::time_interval(Interval::new(Time::from_units(1659544), Duration::from_units(10)));
        let outside = BatchSelector::time_interval(Interval::new(Time::from_units(1659630), Duration::from_units(20)));
        assert!(inside.is_consistent_with(&q));
        assert!(!outside.is_consistent_with(&q));
        assert!(!BatchSelector::leader_selected(BatchId::random()).is_consistent_with(&q));
        assert!(BatchSelector::leader_selected(BatchId::random())
            .is_consistent_with(&Query::LeaderSelected(LeaderSelectedQueryConfig)));
    }
}
