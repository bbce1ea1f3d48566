//! The JSON of the interop test API (draft-dcook-ppm-dap-interop-test-design-07, in the DAP-18
//! dialect of `interop-api-dap18.md`), shared by all four roles: the VDAF object, measurements
//! and results, and how a runner's task description becomes duet's task parameters.

use crate::messages::{BatchMode, TaskId};
use crate::task::TaskParameters;
use crate::vdaf::{AggregateResult, Measurement, VdafConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Every interop task's `task_info`: the API has no field for it, so all roles agree on this.
pub const TASK_INFO: &str = "task-info";

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InteropError(pub String);

fn bad(s: impl Into<String>) -> InteropError {
    InteropError(s.into())
}

/// The VDAF object: a `type` tag and base-10 string parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VdafObject {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_measurement: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_length: Option<String>,
}

fn number<T: std::str::FromStr>(v: &Option<String>, what: &str, kind: &str) -> Result<T, InteropError> {
    let s = v.as_deref().ok_or_else(|| bad(format!("{kind} needs {what}")))?;
    s.trim().parse().map_err(|_| bad(format!("{what} {s:?} is not a base-10 number")))
}

impl VdafObject {
    pub fn to_config(&self) -> Result<VdafConfig, InteropError> {
        let k = self.kind.as_str();
        Ok(match k {
            "Prio3Count" => VdafConfig::Prio3Count,
            "Prio3Sum" => {
                VdafConfig::Prio3Sum { max_measurement: number(&self.max_measurement, "max_measurement", k)? }
            }
            "Prio3SumVec" => VdafConfig::Prio3SumVec {
                length: number(&self.length, "length", k)?,
                max_measurement: number(&self.max_measurement, "max_measurement", k)?,
                chunk_length: number(&self.chunk_length, "chunk_length", k)?,
            },
            "Prio3Histogram" => VdafConfig::Prio3Histogram {
                length: number(&self.length, "length", k)?,
                chunk_length: number(&self.chunk_length, "chunk_length", k)?,
            },
            other => return Err(bad(format!("unsupported VDAF {other:?}"))),
        })
    }

    pub fn from_config(config: &VdafConfig) -> Result<Self, InteropError> {
        let s = |v: u64| Some(v.to_string());
        let obj =
            |kind: &str| VdafObject { kind: kind.into(), max_measurement: None, length: None, chunk_length: None };
        Ok(match *config {
            VdafConfig::Prio3Count => obj("Prio3Count"),
            VdafConfig::Prio3Sum { max_measurement } => {
                VdafObject { max_measurement: s(max_measurement), ..obj("Prio3Sum") }
            }
            VdafConfig::Prio3SumVec { length, max_measurement, chunk_length } => VdafObject {
                max_measurement: s(max_measurement),
                length: s(length.into()),
                chunk_length: s(chunk_length.into()),
                ..obj("Prio3SumVec")
            },
            VdafConfig::Prio3Histogram { length, chunk_length } => {
                VdafObject { length: s(length.into()), chunk_length: s(chunk_length.into()), ..obj("Prio3Histogram") }
            }
            VdafConfig::Prio3MultihotCountVec { .. } => {
                return Err(bad("Prio3MultihotCountVec has no interop VDAF object"))
            }
            #[cfg(feature = "test-vdaf")]
            VdafConfig::Dummy { .. } => return Err(bad("the test VDAF has no interop VDAF object")),
        })
    }
}

/// A measurement as the API sends it: a string, or an array of strings for vectors.
pub fn parse_measurement(config: &VdafConfig, value: &Value) -> Result<Measurement, InteropError> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) => {
            let parts: Result<Vec<String>, _> = items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    _ => Err(bad("measurement entries must be base-10 strings")),
                })
                .collect();
            parts?.join(",")
        }
        _ => return Err(bad("the measurement must be a string or an array of strings")),
    };
    if matches!(config, VdafConfig::Prio3SumVec { .. }) != matches!(value, Value::Array(_)) {
        return Err(bad(format!(
            "a {config} measurement must be {}",
            if matches!(value, Value::Array(_)) { "a string" } else { "an array" }
        )));
    }
    Measurement::parse(config, &text).map_err(|e| bad(e.to_string()))
}

/// A result as the API returns it: a base-10 string, or an array of them.
pub fn result_json(result: &AggregateResult) -> Value {
    match result {
        AggregateResult::Scalar(v) => Value::String(v.to_string()),
        AggregateResult::Vector(vs) => Value::Array(vs.iter().map(|v| Value::String(v.to_string())).collect()),
        AggregateResult::NoisyScalar(v) => Value::String(v.to_string()),
        AggregateResult::NoisyVector(vs) => Value::Array(vs.iter().map(|v| Value::String(v.to_string())).collect()),
    }
}

/// A batch mode code (`1` time-interval, `2` leader-selected).
pub fn batch_mode(code: u64) -> Result<BatchMode, InteropError> {
    match code {
        1 => Ok(BatchMode::TimeInterval),
        2 => Ok(BatchMode::LeaderSelected),
        other => Err(bad(format!("unknown batch mode {other}"))),
    }
}

/// The task parameters every role builds alike from what the runner sent: the endpoints exactly
/// as given, `task_info` = [`TASK_INFO`].
#[allow(clippy::too_many_arguments)]
pub fn task_parameters(
    task_id: &str,
    leader: &str,
    helper: &str,
    vdaf: &VdafObject,
    batch_mode_code: u64,
    min_batch_size: u64,
    time_precision: u64,
    task_interval_seconds: Option<(u64, u64)>,
) -> Result<TaskParameters, InteropError> {
    let params = TaskParameters {
        task_id: task_id.parse::<TaskId>().map_err(|_| bad(format!("{task_id:?} is not a task ID")))?,
        task_info: TASK_INFO.into(),
        leader_endpoint: leader.to_string(),
        helper_endpoint: helper.to_string(),
        time_precision,
        min_batch_size,
        batch_mode: batch_mode(batch_mode_code)?,
        vdaf: vdaf.to_config()?,
        task_interval_seconds,
        dp: None,
    };
    params.task_configuration().map_err(|e| bad(e.to_string()))?;
    Ok(params)
}

/// The API's answers: `{"status": "success", ...}` or `{"status": "error", "error": ...}`.
pub fn success(mut fields: serde_json::Map<String, Value>) -> Value {
    fields.insert("status".into(), Value::String("success".into()));
    Value::Object(fields)
}

pub fn error(message: impl std::fmt::Display) -> Value {
    serde_json::json!({ "status": "error", "error": message.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vdaf_objects_round_trip() {
        for config in [
            VdafConfig::Prio3Count,
            VdafConfig::Prio3Sum { max_measurement: 255 },
            VdafConfig::Prio3SumVec { length: 4, max_measurement: 3, chunk_length: 2 },
            VdafConfig::Prio3Histogram { length: 5, chunk_length: 2 },
        ] {
            let obj = VdafObject::from_config(&config).unwrap();
            let json = serde_json::to_value(&obj).unwrap();
            let back: VdafObject = serde_json::from_value(json).unwrap();
            assert_eq!(back.to_config().unwrap(), config);
        }
        let obj: VdafObject = serde_json::from_value(
            json!({"type": "Prio3SumVec", "max_measurement": "7", "length": "3", "chunk_length": "x"}),
        )
        .unwrap();
        assert!(obj.to_config().unwrap_err().to_string().contains("chunk_length"));
        let poplar: VdafObject = serde_json::from_value(json!({"type": "Poplar1", "bits": "8"})).unwrap();
        assert!(poplar.to_config().is_err());
    }

    #[test]
    fn measurements_and_results() {
        let sv = VdafConfig::Prio3SumVec { length: 3, max_measurement: 5, chunk_length: 1 };
        assert_eq!(parse_measurement(&sv, &json!(["1", "0", "5"])).unwrap(), Measurement::SumVec(vec![1, 0, 5]));
        assert!(parse_measurement(&sv, &json!("1,0,5")).is_err());
        assert_eq!(parse_measurement(&VdafConfig::Prio3Count, &json!("1")).unwrap(), Measurement::Count(true));
        let h = VdafConfig::Prio3Histogram { length: 4, chunk_length: 2 };
        assert_eq!(parse_measurement(&h, &json!("3")).unwrap(), Measurement::Histogram(3));
        assert!(parse_measurement(&h, &json!(["3"])).is_err());
        assert_eq!(result_json(&AggregateResult::Scalar(7)), json!("7"));
        assert_eq!(result_json(&AggregateResult::Vector(vec![1, 2])), json!(["1", "2"]));
    }

    #[test]
    fn endpoints_are_bound_exactly_as_sent() {
        let vdaf = VdafObject::from_config(&VdafConfig::Prio3Count).unwrap();
        let tid = TaskId::random().to_string();
        let p = task_parameters(&tid, "http://leader:8080", "http://helper:8080/dap", &vdaf, 1, 10, 60, None).unwrap();
        assert_eq!(p.leader_endpoint, "http://leader:8080");
        assert_eq!(p.helper_endpoint, "http://helper:8080/dap");
        assert_eq!(p.task_info, "task-info");
        assert!(task_parameters(&tid, "l", "h", &vdaf, 3, 10, 60, None).is_err());
    }
}
