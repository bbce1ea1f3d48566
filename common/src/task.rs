//! A task as operators and SDKs describe it in JSON: the public parameters everybody shares
//! ([`TaskParameters`], from which the wire `TaskConfiguration` is built), and what each
//! aggregator is provisioned with on top ([`AggregatorTaskRequest`]).

use crate::auth::AuthenticationToken;
use crate::hpke::{HpkeKeypair, HpkePrivateKey};
use crate::messages::{
    BatchMode, HpkeConfig, TaskConfiguration, TaskExtension, TaskId, TaskIntervalTaskExtension, Url,
};
use crate::time::{Duration, Interval, Time, TimePrecision};
use crate::vdaf::{Vdaf, VdafConfig, VerifyKey};
use crate::{Decode, Encode};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid task: {0}")]
pub struct TaskError(pub String);

fn err(s: impl Into<String>) -> TaskError {
    TaskError(s.into())
}

/// The parameters of a task that clients, both aggregators and the collector agree on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskParameters {
    pub task_id: TaskId,
    /// `task_info`, as text (its UTF-8 bytes go on the wire); 1 to 255 bytes.
    pub task_info: String,
    /// The leader's base URL, exactly as agreed (it is bound into HPKE associated data).
    pub leader_endpoint: String,
    pub helper_endpoint: String,
    /// Seconds.
    pub time_precision: u64,
    pub min_batch_size: u64,
    pub batch_mode: BatchMode,
    pub vdaf: VdafConfig,
    /// The `task_interval` extension, in POSIX seconds `[start, end)`, aligned to the precision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_interval_seconds: Option<(u64, u64)>,
    /// Differential-privacy noise on every result, and the task's ε budget. Agreed between the
    /// aggregators at provisioning; not part of the wire `TaskConfiguration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<crate::dp::DpConfig>,
}

impl TaskParameters {
    pub fn precision(&self) -> Result<TimePrecision, TaskError> {
        TimePrecision::from_seconds(self.time_precision).ok_or_else(|| err("time_precision must be positive"))
    }

    /// The task interval in DAP time units.
    pub fn task_interval(&self) -> Result<Option<Interval>, TaskError> {
        let Some((start, end)) = self.task_interval_seconds else { return Ok(None) };
        let p = self.precision()?;
        if end <= start || start % p.as_seconds() != 0 || end % p.as_seconds() != 0 {
            return Err(err("task interval must be non-empty and aligned to time_precision"));
        }
        let start_t = Time::from_seconds(start, p);
        Ok(Some(Interval::new(start_t, Duration::from_units((end - start) / p.as_seconds()))))
    }

    /// The wire `TaskConfiguration`, after checking everything that can be checked.
    pub fn task_configuration(&self) -> Result<TaskConfiguration, TaskError> {
        if self.task_info.is_empty() || self.task_info.len() > 255 {
            return Err(err("task_info must be 1 to 255 bytes"));
        }
        if self.min_batch_size == 0 {
            return Err(err("min_batch_size must be at least 1"));
        }
        Vdaf::new(&self.vdaf).map_err(|e| err(e.to_string()))?;
        if let Some(dp) = &self.dp {
            dp.validate(&self.vdaf).map_err(|e| err(e.to_string()))?;
        }
        let extensions: Vec<TaskExtension> = self
            .task_interval()?
            .map(|task_interval| TaskIntervalTaskExtension { task_interval }.into())
            .into_iter()
            .collect();
        let config = TaskConfiguration {
            task_info: self.task_info.as_bytes().to_vec(),
            leader_aggregator_endpoint: Url::new(&self.leader_endpoint).map_err(|_| err("bad leader endpoint"))?,
            helper_aggregator_endpoint: Url::new(&self.helper_endpoint).map_err(|_| err("bad helper endpoint"))?,
            time_precision: self.precision()?,
            min_batch_size: self.min_batch_size,
            batch_mode: self.batch_mode,
            batch_config: vec![],
            vdaf: self.vdaf.clone(),
            extensions,
        };
        config.validate().map_err(|e| err(e.to_string()))?;
        Ok(config)
    }
}

/// Bytes as URL-safe unpadded base64 in JSON.
pub mod b64 {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        URL_SAFE_NO_PAD.decode(s.trim()).map_err(serde::de::Error::custom)
    }
}

/// An `HpkeConfig` in JSON: its DAP encoding in URL-safe unpadded base64.
pub fn hpke_config_to_b64(config: &HpkeConfig) -> String {
    URL_SAFE_NO_PAD.encode(config.get_encoded().unwrap_or_default())
}

pub fn hpke_config_from_b64(s: &str) -> Result<HpkeConfig, TaskError> {
    let bytes = URL_SAFE_NO_PAD.decode(s.trim()).map_err(|_| err("HPKE config is not base64url"))?;
    HpkeConfig::get_decoded(&bytes).map_err(|e| err(format!("HPKE config does not decode: {e}")))
}

/// What the admin API of either aggregator takes to provision a task (`POST /admin/tasks`).
/// Secrets travel only here, over the admin channel; they are never logged.
#[derive(Clone, Serialize, Deserialize)]
pub struct AggregatorTaskRequest {
    #[serde(flatten)]
    pub parameters: TaskParameters,
    /// Shared by both aggregators, URL-safe base64 of 32 bytes.
    pub vdaf_verify_key: String,
    /// The token the leader presents to the helper.
    pub aggregator_auth_token: String,
    /// The token the collector presents to the leader (leader only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector_auth_token: Option<String>,
    /// The collector's HPKE configuration, DAP-encoded, URL-safe base64.
    pub collector_hpke_config: String,
    /// Leader-selected batch mode: the batch size the leader fills batches to (at least
    /// `min_batch_size`; defaults to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_size: Option<u64>,
    /// Seconds after which a report is too old to take (`report_dropped`, DAP-18 "Input Share
    /// Validation"): at least `time_precision`. None: the server's default, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_expiry_age: Option<u64>,
}

impl std::fmt::Debug for AggregatorTaskRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregatorTaskRequest")
            .field("parameters", &self.parameters)
            .field("max_batch_size", &self.max_batch_size)
            .field("report_expiry_age", &self.report_expiry_age)
            .finish_non_exhaustive()
    }
}

impl AggregatorTaskRequest {
    pub fn verify_key(&self) -> Result<VerifyKey, TaskError> {
        VerifyKey::from_base64(&self.vdaf_verify_key).map_err(|e| err(e.to_string()))
    }
    pub fn aggregator_token(&self) -> Result<AuthenticationToken, TaskError> {
        AuthenticationToken::new(self.aggregator_auth_token.clone()).map_err(|e| err(e.to_string()))
    }
    pub fn collector_token(&self) -> Result<Option<AuthenticationToken>, TaskError> {
        self.collector_auth_token
            .clone()
            .map(|t| AuthenticationToken::new(t).map_err(|e| err(e.to_string())))
            .transpose()
    }
    pub fn collector_config(&self) -> Result<HpkeConfig, TaskError> {
        hpke_config_from_b64(&self.collector_hpke_config)
    }
}

/// What a collector keeps: the task, its token and its HPKE key pair (`duet task create` writes
/// this file; the collector SDK reads it). Secret.
#[derive(Clone, Serialize, Deserialize)]
pub struct CollectorCredentials {
    pub task: TaskParameters,
    pub collector_auth_token: String,
    pub hpke_config: String,
    pub hpke_private_key: String,
}

impl std::fmt::Debug for CollectorCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectorCredentials").field("task", &self.task).finish_non_exhaustive()
    }
}

impl CollectorCredentials {
    pub fn keypair(&self) -> Result<HpkeKeypair, TaskError> {
        let config = hpke_config_from_b64(&self.hpke_config)?;
        let sk = HpkePrivateKey::from_base64(&self.hpke_private_key).map_err(|e| err(e.to_string()))?;
        HpkeKeypair::new(config, sk).map_err(|e| err(e.to_string()))
    }
    pub fn token(&self) -> Result<AuthenticationToken, TaskError> {
        AuthenticationToken::new(self.collector_auth_token.clone()).map_err(|e| err(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_json_and_configuration() {
        let p = TaskParameters {
            task_id: TaskId::from_bytes([1; 32]),
            task_info: "task-info".into(),
            leader_endpoint: "http://127.0.0.1:1/".into(),
            helper_endpoint: "http://127.0.0.1:2/".into(),
            time_precision: 3600,
            min_batch_size: 10,
            batch_mode: BatchMode::LeaderSelected,
            vdaf: VdafConfig::Prio3Histogram { length: 4, chunk_length: 2 },
            task_interval_seconds: Some((3600, 7200 * 2)),
            dp: None,
        };
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["batch_mode"], "leader_selected");
        assert_eq!(json["vdaf"]["type"], "Prio3Histogram");
        assert_eq!(serde_json::from_value::<TaskParameters>(json).unwrap(), p);
        let c = p.task_configuration().unwrap();
        assert_eq!(c.task_interval(), Some(Interval::new(Time::from_units(1), Duration::from_units(3))));
        let mut bad = p.clone();
        bad.task_interval_seconds = Some((1, 3600));
        assert!(bad.task_configuration().is_err());
        let mut bad = p;
        bad.vdaf = VdafConfig::Prio3Histogram { length: 0, chunk_length: 1 };
        assert!(bad.task_configuration().is_err());
    }
}
