//! Task configuration (DAP-18 "Task Configuration"): the parameters every participant must agree
//! on, whose encoding is bound into the HPKE associated data of input and aggregate shares.

use super::{strictly_increasing, BatchMode, Url};
use crate::codec::{
    decode_opaque_u16, decode_opaque_u8, decode_u16_list, encode_opaque_u16, encode_opaque_u8, encode_u16_list,
    out_of_range,
};
use crate::time::{Interval, TimePrecision};
use crate::vdaf::VdafConfig;
use prio::codec::{CodecError, Decode, Encode};
use std::io::Cursor;

/// `enum { reserved(0), task_interval(1), (2^16-1) } TaskExtensionType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskExtensionType(pub u16);

impl TaskExtensionType {
    pub const TASK_INTERVAL: TaskExtensionType = TaskExtensionType(1);
}

/// `struct { TaskExtensionType extension_type; opaque extension_data<0..2^16-1>; } TaskExtension`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TaskExtension {
    pub extension_type: TaskExtensionType,
    pub extension_data: Vec<u8>,
}

impl Encode for TaskExtension {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        self.extension_type.0.encode(bytes)?;
        encode_opaque_u16(bytes, &self.extension_data)
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(4 + self.extension_data.len())
    }
}

impl Decode for TaskExtension {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self {
            extension_type: TaskExtensionType(u16::decode(bytes)?),
            extension_data: decode_opaque_u16(bytes, 0, "TaskExtension.extension_data")?,
        })
    }
}

/// `struct { Interval task_interval; } TaskIntervalTaskExtension`: reports outside the interval
/// are rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TaskIntervalTaskExtension {
    pub task_interval: Interval,
}

impl Encode for TaskIntervalTaskExtension {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        self.task_interval.encode(bytes)
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(16)
    }
}

impl Decode for TaskIntervalTaskExtension {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self { task_interval: Interval::decode(bytes)? })
    }
}

impl From<TaskIntervalTaskExtension> for TaskExtension {
    fn from(ext: TaskIntervalTaskExtension) -> Self {
        TaskExtension {
            extension_type: TaskExtensionType::TASK_INTERVAL,
            extension_data: ext.task_interval.get_encoded().unwrap_or_default(),
        }
    }
}

/// Why a decoded `TaskConfiguration` cannot be used: participants MUST NOT take part in tasks
/// with unrecognised extensions, and extension lists must be strictly increasing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskConfigurationError {
    #[error("task extensions are not in strictly increasing order of type")]
    ExtensionsOutOfOrder,
    #[error("unrecognised task extension type {0}")]
    UnsupportedExtension(u16),
    #[error("task extension {0} is malformed")]
    MalformedExtension(u16),
    #[error("batch_config must be empty for the time-interval and leader-selected batch modes")]
    NonEmptyBatchConfig,
}

/// `struct { ... } TaskConfiguration`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskConfiguration {
    /// `opaque task_info<1..2^8-1>`.
    pub task_info: Vec<u8>,
    pub leader_aggregator_endpoint: Url,
    pub helper_aggregator_endpoint: Url,
    pub time_precision: TimePrecision,
    pub min_batch_size: u64,
    pub batch_mode: BatchMode,
    /// `opaque batch_config<0..2^16-1>`: empty for both batch modes DAP-18 defines.
    pub batch_config: Vec<u8>,
    /// `vdaf_type` and `vdaf_configuration`, as one typed value.
    pub vdaf: VdafConfig,
    pub extensions: Vec<TaskExtension>,
}

impl TaskConfiguration {
    /// Checks what decoding alone does not: known, ordered, well-formed extensions and an empty
    /// batch configuration.
    pub fn validate(&self) -> Result<(), TaskConfigurationError> {
        if !self.batch_config.is_empty() {
            return Err(TaskConfigurationError::NonEmptyBatchConfig);
        }
        if !strictly_increasing(self.extensions.iter().map(|e| e.extension_type)) {
            return Err(TaskConfigurationError::ExtensionsOutOfOrder);
        }
        for ext in &self.extensions {
            match ext.extension_type {
                TaskExtensionType::TASK_INTERVAL => {
                    TaskIntervalTaskExtension::get_decoded(&ext.extension_data)
                        .map_err(|_| TaskConfigurationError::MalformedExtension(ext.extension_type.0))?;
                }
                other => return Err(TaskConfigurationError::UnsupportedExtension(other.0)),
            }
        }
        Ok(())
    }

    /// The `task_interval` extension's interval, if the task has one.
    pub fn task_interval(&self) -> Option<Interval> {
        self.extensions
            .iter()
            .find(|e| e.extension_type == TaskExtensionType::TASK_INTERVAL)
            .and_then(|e| TaskIntervalTaskExtension::get_decoded(&e.extension_data).ok())
            .map(|e| e.task_interval)
    }
}

impl Encode for TaskConfiguration {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        if self.task_info.is_empty() {
            return Err(out_of_range("TaskConfiguration.task_info"));
        }
        encode_opaque_u8(bytes, &self.task_info)?;
        self.leader_aggregator_endpoint.encode(bytes)?;
        self.helper_aggregator_endpoint.encode(bytes)?;
        self.time_precision.encode(bytes)?;
        self.min_batch_size.encode(bytes)?;
        self.batch_mode.encode(bytes)?;
        encode_opaque_u16(bytes, &self.batch_config)?;
        self.vdaf.encode(bytes)?;
        encode_u16_list(bytes, &self.extensions)
    }
}

impl Decode for TaskConfiguration {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self {
            task_info: decode_opaque_u8(bytes, 1, "TaskConfiguration.task_info")?,
            leader_aggregator_endpoint: Url::decode(bytes)?,
            helper_aggregator_endpoint: Url::decode(bytes)?,
            time_precision: TimePrecision::decode(bytes)?,
            min_batch_size: u64::decode(bytes)?,
            batch_mode: BatchMode::decode(bytes)?,
            batch_config: decode_opaque_u16(bytes, 0, "TaskConfiguration.batch_config")?,
            vdaf: VdafConfig::decode(bytes)?,
            extensions: decode_u16_list(bytes)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::test_util::*;
    use crate::time::{Duration, Time};

    fn config(vdaf: VdafConfig, extensions: Vec<TaskExtension>) -> TaskConfiguration {
        TaskConfiguration {
            task_info: b"task-info".to_vec(),
            leader_aggregator_endpoint: Url::new("https://l.example/").unwrap(),
            helper_aggregator_endpoint: Url::new("https://h.example/").unwrap(),
            time_precision: TimePrecision::from_seconds(3600).unwrap(),
            min_batch_size: 100,
            batch_mode: BatchMode::TimeInterval,
            batch_config: vec![],
            vdaf,
            extensions,
        }
    }

    #[test]
    fn task_configuration_vector() {
        // Hand-assembled from the presentation language, field by field.
        let expected = unhex(concat!(
            "09",
            "7461736b2d696e666f", // task_info<1..2^8-1> "task-info"
            "0012",
            "68747470733a2f2f6c2e6578616d706c652f", // leader Url "https://l.example/"
            "0012",
            "68747470733a2f2f682e6578616d706c652f", // helper Url "https://h.example/"
            "0000000000000e10",                     // time_precision 3600
            "0000000000000064",                     // min_batch_size 100
            "01",                                   // batch_mode time_interval
            "0000",                                 // batch_config (empty)
            "00000004",                             // vdaf_type Prio3Histogram
            "0008",
            "0000000a",
            "00000003", // Prio3HistogramConfig{10, 3}
            "0014",
            "0001",
            "0010",
            "0000000000077a10",
            "0000000000000018", // task_interval ext
        ));
        let ext: TaskExtension = TaskIntervalTaskExtension {
            task_interval: Interval::new(Time::from_units(490000), Duration::from_units(24)),
        }
        .into();
        let c = config(VdafConfig::Prio3Histogram { length: 10, chunk_length: 3 }, vec![ext]);
        roundtrip(&c, Some(&expected));
        c.validate().unwrap();
        assert_eq!(c.task_interval(), Some(Interval::new(Time::from_units(490000), Duration::from_units(24))));
    }

    #[test]
    fn task_configuration_validation() {
        let unknown = TaskExtension { extension_type: TaskExtensionType(7), extension_data: vec![] };
        assert_eq!(
            config(VdafConfig::Prio3Count, vec![unknown]).validate(),
            Err(TaskConfigurationError::UnsupportedExtension(7))
        );
        let bad = TaskExtension { extension_type: TaskExtensionType::TASK_INTERVAL, extension_data: vec![1] };
        assert_eq!(
            config(VdafConfig::Prio3Count, vec![bad]).validate(),
            Err(TaskConfigurationError::MalformedExtension(1))
        );
        let ti: TaskExtension =
            TaskIntervalTaskExtension { task_interval: Interval::new(Time::from_units(0), Duration::from_units(1)) }
                .into();
        assert_eq!(
            config(VdafConfig::Prio3Count, vec![ti.clone(), ti]).validate(),
            Err(TaskConfigurationError::ExtensionsOutOfOrder)
        );
        let mut c = config(VdafConfig::Prio3Count, vec![]);
        c.batch_config = vec![1];
        assert_eq!(c.validate(), Err(TaskConfigurationError::NonEmptyBatchConfig));
        c.task_info.clear();
        assert!(c.get_encoded().is_err());
    }

    #[test]
    fn task_extensions_and_overlong_prefixes() {
        let ext =
            TaskIntervalTaskExtension { task_interval: Interval::new(Time::from_units(1), Duration::from_units(2)) };
        roundtrip(&ext, Some(&unhex("0000000000000001 0000000000000002")));
        let generic: TaskExtension = ext.into();
        roundtrip(&generic, Some(&unhex("0001 0010 0000000000000001 0000000000000002")));
        let encoded = config(VdafConfig::Prio3Count, vec![]).get_encoded().unwrap();
        // task_info claims 255 bytes; the leader URL claims more than is left.
        let mut long = encoded.clone();
        long[0] = 0xff;
        assert!(TaskConfiguration::get_decoded(&long).is_err());
        let mut long = encoded.clone();
        long[10] = 0xff;
        assert!(TaskConfiguration::get_decoded(&long).is_err());
        // A zero time_precision is refused.
        let mut zero = encoded;
        let at = 1 + 9 + 2 + 18 + 2 + 18;
        zero[at..at + 8].copy_from_slice(&[0; 8]);
        assert!(TaskConfiguration::get_decoded(&zero).is_err());
    }

    #[test]
    fn every_vdaf_config_roundtrips() {
        for vdaf in [
            VdafConfig::Prio3Count,
            VdafConfig::Prio3Sum { max_measurement: 1000 },
            VdafConfig::Prio3SumVec { length: 8, max_measurement: 15, chunk_length: 3 },
            VdafConfig::Prio3Histogram { length: 10, chunk_length: 3 },
            VdafConfig::Prio3MultihotCountVec { length: 10, chunk_length: 3, max_weight: 4 },
        ] {
            roundtrip(&config(vdaf, vec![]), None);
        }
    }
}
