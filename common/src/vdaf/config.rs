//! What a task's VDAF is, as the wire and the users spell it: the "VDAF Configuration Encodings"
//! appendix of DAP-18 ([`VdafConfig`]), the verification key, measurements as the CLI reads them,
//! and aggregate results.

use super::VdafFailure;
use crate::codec::{decode_opaque_u16, encode_opaque_u16};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use prio::codec::{CodecError, Decode, Encode};
use std::fmt;
use std::io::Cursor;

/// Length of a Prio3 verification key (the XOF seed size).
pub const VERIFY_KEY_LEN: usize = 32;

/// VDAF codepoints of the VDAF specification's registry, as carried in `TaskConfiguration`.
pub mod vdaf_type {
    pub const PRIO3_COUNT: u32 = 0x0000_0001;
    pub const PRIO3_SUM: u32 = 0x0000_0002;
    pub const PRIO3_SUM_VEC: u32 = 0x0000_0003;
    pub const PRIO3_HISTOGRAM: u32 = 0x0000_0004;
    pub const PRIO3_MULTIHOT_COUNT_VEC: u32 = 0x0000_0005;
    pub const POPLAR1: u32 = 0x0000_0006;
}

/// A task's VDAF: `vdaf_type` with its `vdaf_configuration`, per the "VDAF Configuration
/// Encodings" appendix.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type")]
pub enum VdafConfig {
    /// Configuration `Empty`.
    Prio3Count,
    /// `struct { uint64 max_measurement; } Prio3SumConfig`.
    Prio3Sum { max_measurement: u64 },
    /// `struct { uint32 length; uint64 max_measurement; uint32 chunk_length; } Prio3SumVecConfig`.
    Prio3SumVec { length: u32, max_measurement: u64, chunk_length: u32 },
    /// `struct { uint32 length; uint32 chunk_length; } Prio3HistogramConfig`.
    Prio3Histogram { length: u32, chunk_length: u32 },
    /// `struct { uint32 length; uint32 chunk_length; uint64 max_weight; } Prio3MultihotCountVecConfig`.
    Prio3MultihotCountVec { length: u32, chunk_length: u32, max_weight: u64 },
    /// Test builds only (feature `test-vdaf`): prio's dummy VDAF of `rounds` rounds, codepoint
    /// `0xFFFF0000`, configuration `struct { uint32 rounds; }`.
    #[cfg(feature = "test-vdaf")]
    Dummy { rounds: u32 },
}

impl VdafConfig {
    pub fn vdaf_type(&self) -> u32 {
        match self {
            VdafConfig::Prio3Count => vdaf_type::PRIO3_COUNT,
            VdafConfig::Prio3Sum { .. } => vdaf_type::PRIO3_SUM,
            VdafConfig::Prio3SumVec { .. } => vdaf_type::PRIO3_SUM_VEC,
            VdafConfig::Prio3Histogram { .. } => vdaf_type::PRIO3_HISTOGRAM,
            VdafConfig::Prio3MultihotCountVec { .. } => vdaf_type::PRIO3_MULTIHOT_COUNT_VEC,
            #[cfg(feature = "test-vdaf")]
            VdafConfig::Dummy { .. } => super::DUMMY_VDAF_TYPE,
        }
    }

    /// The encoded `vdaf_configuration`.
    pub fn encoded_configuration(&self) -> Vec<u8> {
        let mut b = Vec::new();
        // Integer encodings cannot fail.
        let _ = match *self {
            VdafConfig::Prio3Count => Ok(()),
            VdafConfig::Prio3Sum { max_measurement } => max_measurement.encode(&mut b),
            VdafConfig::Prio3SumVec { length, max_measurement, chunk_length } => length
                .encode(&mut b)
                .and_then(|_| max_measurement.encode(&mut b))
                .and_then(|_| chunk_length.encode(&mut b)),
            VdafConfig::Prio3Histogram { length, chunk_length } => {
                length.encode(&mut b).and_then(|_| chunk_length.encode(&mut b))
            }
            VdafConfig::Prio3MultihotCountVec { length, chunk_length, max_weight } => {
                length.encode(&mut b).and_then(|_| chunk_length.encode(&mut b)).and_then(|_| max_weight.encode(&mut b))
            }
            #[cfg(feature = "test-vdaf")]
            VdafConfig::Dummy { rounds } => rounds.encode(&mut b),
        };
        b
    }

    /// Decodes a configuration given its `vdaf_type`.
    pub fn from_parts(vdaf_type: u32, configuration: &[u8]) -> Result<Self, CodecError> {
        let mut c = Cursor::new(configuration);
        let config = match vdaf_type {
            vdaf_type::PRIO3_COUNT => VdafConfig::Prio3Count,
            vdaf_type::PRIO3_SUM => VdafConfig::Prio3Sum { max_measurement: u64::decode(&mut c)? },
            vdaf_type::PRIO3_SUM_VEC => VdafConfig::Prio3SumVec {
                length: u32::decode(&mut c)?,
                max_measurement: u64::decode(&mut c)?,
                chunk_length: u32::decode(&mut c)?,
            },
            vdaf_type::PRIO3_HISTOGRAM => {
                VdafConfig::Prio3Histogram { length: u32::decode(&mut c)?, chunk_length: u32::decode(&mut c)? }
            }
            vdaf_type::PRIO3_MULTIHOT_COUNT_VEC => VdafConfig::Prio3MultihotCountVec {
                length: u32::decode(&mut c)?,
                chunk_length: u32::decode(&mut c)?,
                max_weight: u64::decode(&mut c)?,
            },
            #[cfg(feature = "test-vdaf")]
            super::DUMMY_VDAF_TYPE => VdafConfig::Dummy { rounds: u32::decode(&mut c)? },
            other => {
                return Err(CodecError::Other(format!("unsupported VDAF type {other:#010x}").into()));
            }
        };
        if c.position() as usize != configuration.len() {
            return Err(CodecError::BytesLeftOver(configuration.len() - c.position() as usize));
        }
        Ok(config)
    }
}

impl Encode for VdafConfig {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        self.vdaf_type().encode(bytes)?;
        encode_opaque_u16(bytes, &self.encoded_configuration())
    }
}

impl Decode for VdafConfig {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        let vdaf_type = u32::decode(bytes)?;
        let configuration = decode_opaque_u16(bytes, 0, "TaskConfiguration.vdaf_configuration")?;
        Self::from_parts(vdaf_type, &configuration)
    }
}

impl fmt::Display for VdafConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VdafConfig::Prio3Count => write!(f, "Prio3Count"),
            VdafConfig::Prio3Sum { max_measurement } => write!(f, "Prio3Sum(max_measurement={max_measurement})"),
            VdafConfig::Prio3SumVec { length, max_measurement, chunk_length } => write!(
                f,
                "Prio3SumVec(length={length}, max_measurement={max_measurement}, chunk_length={chunk_length})"
            ),
            VdafConfig::Prio3Histogram { length, chunk_length } => {
                write!(f, "Prio3Histogram(length={length}, chunk_length={chunk_length})")
            }
            VdafConfig::Prio3MultihotCountVec { length, chunk_length, max_weight } => write!(
                f,
                "Prio3MultihotCountVec(length={length}, chunk_length={chunk_length}, max_weight={max_weight})"
            ),
            #[cfg(feature = "test-vdaf")]
            VdafConfig::Dummy { rounds } => write!(f, "Dummy(rounds={rounds})"),
        }
    }
}

/// The VDAF verification key shared by the two aggregators. Secret: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyKey([u8; VERIFY_KEY_LEN]);

impl VerifyKey {
    pub fn from_bytes(bytes: [u8; VERIFY_KEY_LEN]) -> Self {
        Self(bytes)
    }

    pub fn random() -> Self {
        use rand::Rng;
        Self(rand::rng().random())
    }

    pub fn as_bytes(&self) -> &[u8; VERIFY_KEY_LEN] {
        &self.0
    }

    /// URL-safe unpadded base64, for configuration files and the admin API.
    pub fn to_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    pub fn from_base64(s: &str) -> Result<Self, VdafFailure> {
        let bytes = URL_SAFE_NO_PAD.decode(s.trim()).map_err(|_| VdafFailure::BadVerifyKey)?;
        Ok(Self(bytes.try_into().map_err(|_| VdafFailure::BadVerifyKey)?))
    }
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VerifyKey([redacted])")
    }
}

/// A measurement, as a client hands it to the VDAF.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Measurement {
    Count(bool),
    /// Prio3Sum: an integer in `[0, max_measurement]`.
    Sum(u64),
    /// Prio3SumVec: `length` integers, each in `[0, max_measurement]`.
    SumVec(Vec<u128>),
    /// Prio3Histogram: the index of the one bucket this measurement counts in.
    Histogram(usize),
    /// Prio3MultihotCountVec: `length` booleans, at most `max_weight` of them true.
    MultihotCountVec(Vec<bool>),
    /// The test VDAF: a byte, summed modulo 256.
    #[cfg(feature = "test-vdaf")]
    Dummy(u8),
}

impl Measurement {
    /// Parses the text form used by the CLI and the interop API: `0`/`1` for Count, an integer
    /// for Sum and Histogram, comma-separated values for the vector types.
    pub fn parse(config: &VdafConfig, text: &str) -> Result<Self, VdafFailure> {
        let bad = || VdafFailure::BadMeasurement(format!("{text:?} is not a measurement for {config}"));
        let text = text.trim();
        let list = |t: &str| -> Vec<String> {
            t.trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .map(|s| s.trim().trim_matches('"').to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        Ok(match config {
            VdafConfig::Prio3Count => match text {
                "1" | "true" => Measurement::Count(true),
                "0" | "false" => Measurement::Count(false),
                _ => return Err(bad()),
            },
            VdafConfig::Prio3Sum { .. } => Measurement::Sum(text.parse().map_err(|_| bad())?),
            VdafConfig::Prio3Histogram { .. } => Measurement::Histogram(text.parse().map_err(|_| bad())?),
            VdafConfig::Prio3SumVec { .. } => {
                Measurement::SumVec(list(text).iter().map(|s| s.parse()).collect::<Result<_, _>>().map_err(|_| bad())?)
            }
            VdafConfig::Prio3MultihotCountVec { .. } => Measurement::MultihotCountVec(
                list(text)
                    .iter()
                    .map(|s| match s.as_str() {
                        "1" | "true" => Ok(true),
                        "0" | "false" => Ok(false),
                        _ => Err(bad()),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            #[cfg(feature = "test-vdaf")]
            VdafConfig::Dummy { .. } => Measurement::Dummy(text.parse().map_err(|_| bad())?),
        })
    }
}

/// An aggregate result, as the collector gets it from unsharding.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum AggregateResult {
    /// Prio3Count and Prio3Sum.
    Scalar(u64),
    /// Prio3SumVec, Prio3Histogram and Prio3MultihotCountVec.
    Vector(Vec<u128>),
    /// Prio3Count and Prio3Sum with differential-privacy noise: may fall below 0 or above the
    /// largest true value.
    NoisyScalar(i128),
    /// The vector types with differential-privacy noise, entries as they fell.
    NoisyVector(Vec<i128>),
}

fn join<T: fmt::Display>(values: &[T]) -> String {
    values.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for AggregateResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AggregateResult::Scalar(v) => write!(f, "{v}"),
            AggregateResult::NoisyScalar(v) => write!(f, "{v}"),
            AggregateResult::Vector(v) => write!(f, "[{}]", join(v)),
            AggregateResult::NoisyVector(v) => write!(f, "[{}]", join(v)),
        }
    }
}
