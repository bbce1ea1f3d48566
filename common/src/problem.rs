//! Errors on the wire: the DAP problem types (`urn:ietf:params:ppm:dap:error:*`, DAP-18
//! "Errors") and the other HTTP errors duet answers with, each mapped in one function
//! ([`DapError::problem_document`]) to its status and RFC 9457 problem document.

use crate::messages::TaskId;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The problem types DAP-18 registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DapProblemType {
    InvalidMessage,
    UnrecognizedTask,
    UnrecognizedAggregationJob,
    BatchInvalid,
    InvalidBatchSize,
    InvalidAggregationParameter,
    BatchMismatch,
    StepMismatch,
    BatchOverlap,
    UnsupportedExtension,
    InvalidExtension,
}

const URN_PREFIX: &str = "urn:ietf:params:ppm:dap:error:";

impl DapProblemType {
    pub const ALL: [DapProblemType; 11] = [
        DapProblemType::InvalidMessage,
        DapProblemType::UnrecognizedTask,
        DapProblemType::UnrecognizedAggregationJob,
        DapProblemType::BatchInvalid,
        DapProblemType::InvalidBatchSize,
        DapProblemType::InvalidAggregationParameter,
        DapProblemType::BatchMismatch,
        DapProblemType::StepMismatch,
        DapProblemType::BatchOverlap,
        DapProblemType::UnsupportedExtension,
        DapProblemType::InvalidExtension,
    ];

    /// The registered token, e.g. `invalidMessage`.
    pub fn token(self) -> &'static str {
        match self {
            DapProblemType::InvalidMessage => "invalidMessage",
            DapProblemType::UnrecognizedTask => "unrecognizedTask",
            DapProblemType::UnrecognizedAggregationJob => "unrecognizedAggregationJob",
            DapProblemType::BatchInvalid => "batchInvalid",
            DapProblemType::InvalidBatchSize => "invalidBatchSize",
            DapProblemType::InvalidAggregationParameter => "invalidAggregationParameter",
            DapProblemType::BatchMismatch => "batchMismatch",
            DapProblemType::StepMismatch => "stepMismatch",
            DapProblemType::BatchOverlap => "batchOverlap",
            DapProblemType::UnsupportedExtension => "unsupportedExtension",
            DapProblemType::InvalidExtension => "invalidExtension",
        }
    }

    /// The full URN used as the problem document's `type`.
    pub fn type_uri(self) -> String {
        format!("{URN_PREFIX}{}", self.token())
    }

    pub fn from_type_uri(uri: &str) -> Option<Self> {
        let token = uri.strip_prefix(URN_PREFIX)?;
        Self::ALL.into_iter().find(|t| t.token() == token)
    }

    /// The description of the spec's table, used as the problem's `title`.
    pub fn description(self) -> &'static str {
        match self {
            DapProblemType::InvalidMessage => {
                "A message received by a protocol participant could not be parsed or otherwise was invalid."
            }
            DapProblemType::UnrecognizedTask => "A server received a message with an unknown task ID.",
            DapProblemType::UnrecognizedAggregationJob => {
                "A server received a message with an unknown aggregation job ID."
            }
            DapProblemType::BatchInvalid => "The batch boundary check for Collector's query failed.",
            DapProblemType::InvalidBatchSize => "There are an invalid number of reports in the batch.",
            DapProblemType::InvalidAggregationParameter => "The aggregation parameter assigned to a batch is invalid.",
            DapProblemType::BatchMismatch => {
                "Aggregators disagree on the report shares that were aggregated in a batch."
            }
            DapProblemType::StepMismatch => {
                "The Aggregators disagree on the current step of the DAP aggregation protocol."
            }
            DapProblemType::BatchOverlap => {
                "A request's query includes reports that were previously collected in a different batch."
            }
            DapProblemType::UnsupportedExtension => "An extensions list includes an unknown extension.",
            DapProblemType::InvalidExtension => {
                "An extensions list is out of order or contains an invalid extension encoding."
            }
        }
    }
}

impl fmt::Display for DapProblemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

/// An RFC 9457 problem details object, with DAP's `taskid` and `unsupported_extensions`
/// extension members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemDocument {
    #[serde(rename = "type", default = "about_blank")]
    pub type_uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taskid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsupported_extensions: Option<Vec<u16>>,
}

fn about_blank() -> String {
    "about:blank".into()
}

impl ProblemDocument {
    /// The DAP problem type, if the document has one.
    pub fn dap_type(&self) -> Option<DapProblemType> {
        DapProblemType::from_type_uri(&self.type_uri)
    }
}

impl fmt::Display for ProblemDocument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dap_type() {
            Some(t) => write!(f, "{t}")?,
            None => write!(f, "{}", self.title.as_deref().unwrap_or(&self.type_uri))?,
        }
        if let Some(status) = self.status {
            write!(f, " (HTTP {status})")?;
        }
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

/// Every error a duet server answers a request with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DapError {
    /// One of DAP's registered problems.
    #[error("{kind}: {detail}")]
    Dap { kind: DapProblemType, task_id: Option<TaskId>, detail: String },
    /// `unsupportedExtension`, naming the unknown codepoints as the spec asks.
    #[error("unsupportedExtension: {extensions:?}")]
    UnsupportedExtension { task_id: Option<TaskId>, extensions: Vec<u16> },
    /// Missing or wrong credentials.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("unsupported media type, expected {expected}")]
    UnsupportedMediaType { expected: &'static str },
    #[error("request body too large")]
    PayloadTooLarge,
    /// An upload request carrying more reports than the leader takes in one request.
    #[error("an upload request may carry at most {max} reports")]
    TooManyReports { max: usize },
    /// A bad request outside DAP's messages (admin API, interop API).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A conflict with existing state (e.g. provisioning a task twice with different settings).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A fault of ours. The detail is logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
    /// A dependency (database, peer) is down; the client should retry.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// duet's own problem: a collection would spend more differential-privacy budget than the
    /// task has left. Not a DAP type, so it has duet's URN.
    #[error("privacy budget exhausted: {detail}")]
    PrivacyBudgetExhausted { task_id: Option<TaskId>, detail: String },
    /// duet's own problem: the helper refused, without a DAP problem type, or answered what the
    /// leader cannot use (a collection job's failure, as the collector sees it).
    #[error("the helper failed: {detail}")]
    HelperFailed { task_id: Option<TaskId>, detail: String },
}

/// The problem type of [`DapError::PrivacyBudgetExhausted`].
pub const PRIVACY_BUDGET_EXHAUSTED: &str = "urn:duet:params:error:privacyBudgetExhausted";

/// The problem type of [`DapError::HelperFailed`].
pub const HELPER_FAILED: &str = "urn:duet:params:error:helperFailed";

impl DapError {
    pub fn dap(kind: DapProblemType, task_id: Option<TaskId>, detail: impl Into<String>) -> Self {
        DapError::Dap { kind, task_id, detail: detail.into() }
    }

    pub fn invalid_message(task_id: Option<TaskId>, detail: impl Into<String>) -> Self {
        Self::dap(DapProblemType::InvalidMessage, task_id, detail)
    }

    pub fn unrecognized_task(task_id: TaskId) -> Self {
        Self::dap(DapProblemType::UnrecognizedTask, Some(task_id), format!("no task {task_id}"))
    }

    /// The DAP problem type, if this is one.
    pub fn kind(&self) -> Option<DapProblemType> {
        match self {
            DapError::Dap { kind, .. } => Some(*kind),
            DapError::UnsupportedExtension { .. } => Some(DapProblemType::UnsupportedExtension),
            _ => None,
        }
    }

    /// The one mapping from an error to its HTTP status and problem document.
    pub fn problem_document(&self) -> (StatusCode, ProblemDocument) {
        let blank = |status: StatusCode, detail: Option<String>| {
            (
                status,
                ProblemDocument {
                    type_uri: about_blank(),
                    title: status.canonical_reason().map(str::to_string),
                    status: Some(status.as_u16()),
                    detail,
                    instance: None,
                    taskid: None,
                    unsupported_extensions: None,
                },
            )
        };
        let dap = |kind: DapProblemType, task_id: &Option<TaskId>, detail: Option<String>, exts: Option<Vec<u16>>| {
            let status = match kind {
                DapProblemType::UnrecognizedTask | DapProblemType::UnrecognizedAggregationJob => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_REQUEST,
            };
            (
                status,
                ProblemDocument {
                    type_uri: kind.type_uri(),
                    title: Some(kind.description().to_string()),
                    status: Some(status.as_u16()),
                    detail,
                    instance: None,
                    taskid: task_id.map(|t| t.to_string()),
                    unsupported_extensions: exts,
                },
            )
        };
        match self {
            DapError::Dap { kind, task_id, detail } => dap(*kind, task_id, Some(detail.clone()), None),
            DapError::UnsupportedExtension { task_id, extensions } => dap(
                DapProblemType::UnsupportedExtension,
                task_id,
                Some(format!("unsupported extension codepoints {extensions:?}")),
                Some(extensions.clone()),
            ),
            DapError::Unauthorized(d) => blank(StatusCode::UNAUTHORIZED, Some(d.clone())),
            DapError::NotFound(d) => blank(StatusCode::NOT_FOUND, Some(d.clone())),
            DapError::MethodNotAllowed => blank(StatusCode::METHOD_NOT_ALLOWED, None),
            DapError::UnsupportedMediaType { expected } => {
                blank(StatusCode::UNSUPPORTED_MEDIA_TYPE, Some(format!("expected Content-Type {expected}")))
            }
            DapError::PayloadTooLarge => blank(StatusCode::PAYLOAD_TOO_LARGE, None),
            DapError::TooManyReports { max } => blank(
                StatusCode::PAYLOAD_TOO_LARGE,
                Some(format!("an upload request may carry at most {max} reports; send the others in further requests")),
            ),
            DapError::BadRequest(d) => blank(StatusCode::BAD_REQUEST, Some(d.clone())),
            DapError::Conflict(d) => blank(StatusCode::CONFLICT, Some(d.clone())),
            DapError::Internal(_) => blank(StatusCode::INTERNAL_SERVER_ERROR, None),
            DapError::Unavailable(_) => blank(StatusCode::SERVICE_UNAVAILABLE, Some("try again later".into())),
            DapError::PrivacyBudgetExhausted { task_id, detail } => (
                StatusCode::FORBIDDEN,
                ProblemDocument {
                    type_uri: PRIVACY_BUDGET_EXHAUSTED.into(),
                    title: Some("The task's differential-privacy budget does not cover this collection".into()),
                    status: Some(StatusCode::FORBIDDEN.as_u16()),
                    detail: Some(detail.clone()),
                    instance: None,
                    taskid: task_id.map(|t| t.to_string()),
                    unsupported_extensions: None,
                },
            ),
            DapError::HelperFailed { task_id, detail } => (
                StatusCode::BAD_GATEWAY,
                ProblemDocument {
                    type_uri: HELPER_FAILED.into(),
                    title: Some("The helper refused its part, or answered what the leader cannot use".into()),
                    status: Some(StatusCode::BAD_GATEWAY.as_u16()),
                    detail: Some(detail.clone()),
                    instance: None,
                    taskid: task_id.map(|t| t.to_string()),
                    unsupported_extensions: None,
                },
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dap_type_has_its_urn_and_status() {
        let task_id = TaskId::from_bytes([1; 32]);
        for kind in DapProblemType::ALL {
            let (status, doc) = DapError::dap(kind, Some(task_id), "why").problem_document();
            assert_eq!(doc.type_uri, format!("urn:ietf:params:ppm:dap:error:{}", kind.token()));
            assert_eq!(doc.dap_type(), Some(kind));
            assert_eq!(doc.taskid.as_deref(), Some(task_id.to_string().as_str()));
            assert_eq!(doc.status, Some(status.as_u16()));
            assert!(status.is_client_error(), "{kind} must be a client error");
            assert_eq!(doc.detail.as_deref(), Some("why"));
        }
        assert_eq!(DapError::unrecognized_task(task_id).problem_document().0, StatusCode::NOT_FOUND);
        assert_eq!(
            DapError::dap(DapProblemType::BatchOverlap, None, "x").problem_document().0,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn an_exhausted_budget_is_duets_own_problem() {
        let (status, doc) =
            DapError::PrivacyBudgetExhausted { task_id: None, detail: "spent 2 of 2".into() }.problem_document();
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(doc.type_uri, PRIVACY_BUDGET_EXHAUSTED);
        assert_eq!(doc.dap_type(), None);
        assert_eq!(doc.detail.as_deref(), Some("spent 2 of 2"));
    }

    #[test]
    fn a_failed_helper_is_duets_own_problem() {
        let task_id = TaskId::from_bytes([2; 32]);
        let (status, doc) =
            DapError::HelperFailed { task_id: Some(task_id), detail: "401: bad token".into() }.problem_document();
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(doc.type_uri, HELPER_FAILED);
        assert_eq!(doc.dap_type(), None);
        assert_eq!(doc.taskid.as_deref(), Some(task_id.to_string().as_str()));
        assert_eq!(doc.detail.as_deref(), Some("401: bad token"));
    }

    #[test]
    fn json_shape() {
        let task_id = TaskId::from_bytes([0; 32]);
        let (_, doc) =
            DapError::UnsupportedExtension { task_id: Some(task_id), extensions: vec![23, 42] }.problem_document();
        let json: serde_json::Value = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["type"], "urn:ietf:params:ppm:dap:error:unsupportedExtension");
        assert_eq!(json["unsupported_extensions"], serde_json::json!([23, 42]));
        assert_eq!(json["taskid"], "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(json["status"], 400);
        let back: ProblemDocument = serde_json::from_value(json).unwrap();
        assert_eq!(back, doc);
        // Non-DAP errors do not use the DAP URN namespace and hide internal details.
        let (status, doc) = DapError::Internal("db password wrong".into()).problem_document();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(doc.type_uri, "about:blank");
        assert!(doc.detail.is_none());
        let (status, doc) = DapError::Unauthorized("bad token".into()).problem_document();
        assert_eq!((status, doc.dap_type()), (StatusCode::UNAUTHORIZED, None));
        assert_eq!(DapProblemType::from_type_uri("urn:ietf:params:ppm:dap:error:nope"), None);
        let minimal: ProblemDocument = serde_json::from_str("{}").unwrap();
        assert_eq!(minimal.type_uri, "about:blank");
    }
}
