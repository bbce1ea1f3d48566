//! The storage layer's error type, and its mapping to DAP problems, in one place: storage
//! errors are not HTTP errors; handlers turn them into problem documents through `From`.

use duet_common::messages::TaskId;
use duet_common::problem::DapError;

/// Storage failures, mapped to DAP problems in one place (`From<StoreError> for DapError`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached now (503 with `Retry-After`).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The transaction lost a serialization race and was rolled back: the step may simply run
    /// again ([`crate::sql::SqlStore::retrying`] does, a few times, before it reads as `Unavailable`).
    #[error("database unavailable: serialization conflict: {0}")]
    Retry(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A sealed secret that the configured database keys do not open (a key missing from
    /// `database_keys`, or a row altered), or one stored in the clear.
    #[error("cannot open a stored secret: {0}")]
    Sealed(String),
    /// A fault of ours (an encoding that failed, bookkeeping that does not add up).
    #[error("internal error: {0}")]
    Internal(String),
    /// No such task (DAP `unrecognizedTask`).
    #[error("unrecognized task {0}")]
    UnknownTask(TaskId),
    /// No such record (a key, a job), 404.
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts what is stored (409).
    #[error("{0}")]
    Conflict(String),
    /// The collection would spend more of the task's privacy budget than is left.
    #[error("{detail}")]
    BudgetExhausted { task_id: TaskId, detail: String },
    /// The step's own computation inside the transaction (sealing or building a share) failed
    /// with this problem.
    #[error("{0}")]
    Step(Box<DapError>),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            // Protocol: a connection cut while it was being set up (the TLS negotiation's answer
            // missing, say) reads as a broken message, not as a fault of ours.
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => StoreError::Unavailable(e.to_string()),
            // PostgreSQL: serialization_failure, deadlock_detected; SQLite: busy after the timeout.
            sqlx::Error::Database(ref d)
                if matches!(d.code().as_deref(), Some("40001") | Some("40P01") | Some("5") | Some("517")) =>
            {
                StoreError::Retry(e.to_string())
            }
            // PostgreSQL going away: admin shutdown, cannot connect now, and the connection classes.
            sqlx::Error::Database(ref d) if d.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")) => {
                StoreError::Unavailable(e.to_string())
            }
            other => StoreError::Database(other.to_string()),
        }
    }
}

impl From<StoreError> for DapError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) | StoreError::Retry(_) => DapError::Unavailable(e.to_string()),
            StoreError::UnknownTask(id) => DapError::unrecognized_task(id),
            StoreError::NotFound(d) => DapError::NotFound(d),
            StoreError::Conflict(d) => DapError::Conflict(d),
            StoreError::BudgetExhausted { task_id, detail } => {
                DapError::PrivacyBudgetExhausted { task_id: Some(task_id), detail }
            }
            StoreError::Step(e) => *e,
            StoreError::Database(_) | StoreError::Corrupt(_) | StoreError::Sealed(_) | StoreError::Internal(_) => {
                DapError::Internal(e.to_string())
            }
        }
    }
}

impl From<DapError> for StoreError {
    /// A problem of the step's own computation, carried through the transaction.
    fn from(e: DapError) -> Self {
        StoreError::Step(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duet_common::problem::DapProblemType;

    #[test]
    fn storage_errors_map_to_dap_problems_in_one_place() {
        let task = TaskId::random();
        let retry = DapError::from(StoreError::Retry("could not serialize access".into()));
        assert!(matches!(retry, DapError::Unavailable(_)), "a lost race that kept losing is a 503");
        assert_eq!(DapError::from(StoreError::UnknownTask(task)).kind(), Some(DapProblemType::UnrecognizedTask));
        assert!(matches!(DapError::from(StoreError::NotFound("key".into())), DapError::NotFound(_)));
        assert!(matches!(DapError::from(StoreError::Conflict("taken".into())), DapError::Conflict(_)));
        assert!(matches!(DapError::from(StoreError::Corrupt("row".into())), DapError::Internal(_)));
        let spent = StoreError::BudgetExhausted { task_id: task, detail: "spent".into() };
        assert!(
            matches!(DapError::from(spent), DapError::PrivacyBudgetExhausted { task_id: Some(t), .. } if t == task)
        );
        // A problem of the step's own computation comes out as it went in.
        let step = StoreError::from(DapError::dap(DapProblemType::BatchMismatch, Some(task), "x"));
        assert_eq!(DapError::from(step).kind(), Some(DapProblemType::BatchMismatch));
    }
}
