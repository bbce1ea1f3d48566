//! The one error type of the client and collector SDKs, [`ClientError`].
//!
//! No variant carries a token, a private key or a measurement share: what an error holds is
//! safe to print and to log. Server answers are kept as their RFC 9457 problem documents so
//! that callers can act on the DAP problem type (`invalidBatchSize`, `batchOverlap`, ...).

use duet_common::hpke::HpkeError;
use duet_common::problem::{DapProblemType, ProblemDocument};
use duet_common::task::TaskError;
use duet_common::vdaf::VdafFailure;
use duet_common::CodecError;
use std::fmt;
use std::time::Duration;

/// Shorthand for results of this crate.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The task parameters or collector credentials are unusable.
    #[error(transparent)]
    Task(#[from] TaskError),

    /// An aggregator endpoint or a `Location` that is not a usable URL.
    #[error("invalid URL {url:?}: {reason}")]
    Url { url: String, reason: String },

    /// A measurement the task's VDAF refuses to shard (wrong type or out of range).
    #[error("invalid measurement: {0}")]
    Measurement(#[source] VdafFailure),

    /// A collection query the task cannot take (e.g. an interval not aligned to the precision).
    #[error("invalid query: {0}")]
    Query(String),

    /// The request could not be sent or its answer not read (connection refused, reset,
    /// timed out at the HTTP layer, ...), after all retries.
    #[error("{context}: {}", error_chain(source))]
    Http {
        context: String,
        #[source]
        source: reqwest::Error,
    },

    /// The server answered with a status we do not treat as success.
    #[error("{}", StatusDisplay { context, status: *status, problem: problem.as_deref() })]
    Status { context: String, status: u16, problem: Option<Box<ProblemDocument>> },

    /// The server's answer has another media type than the protocol prescribes.
    #[error("{context}: unexpected Content-Type {content_type:?}, expected {expected}")]
    ContentType { context: String, content_type: Option<String>, expected: &'static str },

    /// A message from the server that does not decode.
    #[error("cannot decode {what}: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: CodecError,
    },

    /// A message of ours that does not encode (a field out of its declared range).
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: CodecError,
    },

    /// Sealing an input share or opening an aggregate share failed.
    #[error("HPKE: {0}")]
    Hpke(#[from] HpkeError),

    /// The aggregator offers no HPKE configuration this build can use.
    #[error("{endpoint} offers no HPKE configuration with a supported KEM, KDF and AEAD")]
    NoSupportedHpkeConfig { endpoint: String },

    /// Decoding or combining aggregate shares failed.
    #[error("VDAF: {0}")]
    Vdaf(#[source] VdafFailure),

    /// The server broke the protocol in a way no other variant names.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// A collection job did not finish within `timeout`. The job is left on the leader; `job`
    /// names it so that it can be polled or deleted later.
    #[error("{}", TimeoutDisplay { timeout: *timeout, job: job.as_deref() })]
    Timeout { timeout: Duration, job: Option<String> },

    /// Some reports of an upload were accepted before a later request failed for good.
    #[error("{source} (after {accepted} reports had been accepted and {rejected} rejected)")]
    PartialUpload {
        accepted: u64,
        rejected: usize,
        #[source]
        source: Box<ClientError>,
    },

    /// A background sharding task panicked or was cancelled.
    #[error("background sharding task failed: {0}")]
    Background(String),
}

impl ClientError {
    /// The problem document the server sent, if any.
    pub fn problem(&self) -> Option<&ProblemDocument> {
        match self {
            ClientError::Status { problem, .. } => problem.as_deref(),
            ClientError::PartialUpload { source, .. } => source.problem(),
            _ => None,
        }
    }

    /// The DAP problem type the server sent, if any.
    pub fn dap_problem(&self) -> Option<DapProblemType> {
        self.problem().and_then(ProblemDocument::dap_type)
    }

    /// The HTTP status of an unsuccessful answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            ClientError::PartialUpload { source, .. } => source.status(),
            _ => None,
        }
    }

    pub fn is_timeout(&self) -> bool {
        match self {
            ClientError::Timeout { .. } => true,
            ClientError::Http { source, .. } => source.is_timeout(),
            ClientError::PartialUpload { source, .. } => source.is_timeout(),
            _ => false,
        }
    }

    /// Whether the caller's input (task, measurement, query) rather than a server is at fault.
    pub fn is_input_error(&self) -> bool {
        match self {
            ClientError::Task(_) | ClientError::Url { .. } | ClientError::Measurement(_) | ClientError::Query(_) => {
                true
            }
            ClientError::PartialUpload { source, .. } => source.is_input_error(),
            _ => false,
        }
    }

    pub(crate) fn decode(what: &'static str) -> impl FnOnce(CodecError) -> ClientError {
        move |source| ClientError::Decode { what, source }
    }

    pub(crate) fn encode(what: &'static str) -> impl FnOnce(CodecError) -> ClientError {
        move |source| ClientError::Encode { what, source }
    }
}

/// reqwest's own message names only the outermost failure ("error sending request"); the cause
/// that tells a user what to fix ("connection refused") is further down the chain.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

struct StatusDisplay<'a> {
    context: &'a str,
    status: u16,
    problem: Option<&'a ProblemDocument>,
}

impl fmt::Display for StatusDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = http::StatusCode::from_u16(self.status).ok().and_then(|s| s.canonical_reason());
        write!(f, "{}: HTTP {}", self.context, self.status)?;
        if let Some(reason) = reason {
            write!(f, " {reason}")?;
        }
        if let Some(problem) = self.problem {
            // The document's own Display repeats the status; print its parts instead.
            match problem.dap_type() {
                Some(t) => write!(f, ": {t}")?,
                None => {
                    if let Some(title) = &problem.title {
                        if Some(title.as_str()) != reason {
                            write!(f, ": {title}")?;
                        }
                    } else if problem.type_uri != "about:blank" {
                        write!(f, ": {}", problem.type_uri)?;
                    }
                }
            }
            if let Some(detail) = &problem.detail {
                write!(f, " ({detail})")?;
            }
        }
        Ok(())
    }
}

struct TimeoutDisplay<'a> {
    timeout: Duration,
    job: Option<&'a str>,
}

impl fmt::Display for TimeoutDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no result within the timeout of {} s", self.timeout.as_secs())?;
        if let Some(job) = self.job {
            write!(f, "; the collection job is still at {job}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_errors_show_the_problem_type_and_detail() {
        let problem = ProblemDocument {
            type_uri: DapProblemType::InvalidBatchSize.type_uri(),
            title: Some(DapProblemType::InvalidBatchSize.description().into()),
            status: Some(400),
            detail: Some("3 reports, 10 needed".into()),
            instance: None,
            taskid: None,
            unsupported_extensions: None,
        };
        let e = ClientError::Status {
            context: "POST collection job".into(),
            status: 400,
            problem: Some(Box::new(problem)),
        };
        assert_eq!(e.to_string(), "POST collection job: HTTP 400 Bad Request: invalidBatchSize (3 reports, 10 needed)");
        assert_eq!(e.dap_problem(), Some(DapProblemType::InvalidBatchSize));
        assert_eq!(e.status(), Some(400));
        let bare = ClientError::Status { context: "GET x".into(), status: 503, problem: None };
        assert_eq!(bare.to_string(), "GET x: HTTP 503 Service Unavailable");
        let wrapped = ClientError::PartialUpload { accepted: 1000, rejected: 2, source: Box::new(bare) };
        assert_eq!(wrapped.status(), Some(503));
        assert_eq!(
            wrapped.to_string(),
            "GET x: HTTP 503 Service Unavailable (after 1000 reports had been accepted and 2 rejected)"
        );
    }

    #[test]
    fn timeouts_name_the_job() {
        let e = ClientError::Timeout {
            timeout: Duration::from_secs(30),
            job: Some("https://l/tasks/t/collection_jobs/j".into()),
        };
        assert!(e.is_timeout());
        assert_eq!(
            e.to_string(),
            "no result within the timeout of 30 s; the collection job is still at https://l/tasks/t/collection_jobs/j"
        );
        assert!(!e.is_input_error());
        assert!(ClientError::Query("x".into()).is_input_error());
    }
}
