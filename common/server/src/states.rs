//! The states the servers store as text, as enums (their spelling in the database and back,
//! unknown spellings refused), and a failed collection job's cause as a typed value.

use duet_common::messages::TaskId;
use duet_common::problem::{DapError, DapProblemType};

/// A state enum stored as text: its spelling in the database (`db`, also the metrics' label)
/// and back (`from_db`, `None` for a spelling this version does not know).
macro_rules! stored_state {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn db(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            pub fn from_db(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.db())
            }
        }
    };
}

stored_state!(
    /// A leader's aggregation job (`leader_aggregation_jobs.state`).
    LeaderJobState {
        /// Being driven, or waiting for its next attempt.
        Active = "active",
        /// Committed.
        Finished = "finished",
        /// Given up (DAP-18 "Aggregation Job Abandonment and Deletion").
        Abandoned = "abandoned",
    }
);

stored_state!(
    /// A helper's aggregation job (`helper_aggregation_jobs.state`).
    HelperJobState {
        /// Reports wait for a continuation step.
        Active = "active",
        Finished = "finished",
        /// The leader deleted it; its stored answers are no longer served.
        Deleted = "deleted",
    }
);

stored_state!(
    /// A leader's collection job (`collection_jobs.state`).
    CollectionJobState {
        Pending = "pending",
        Finished = "finished",
        Failed = "failed",
        Deleted = "deleted",
    }
);

/// Why a collection job failed, as stored with it and answered to every poll of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFailure {
    /// The DAP problem that caused it; `None` for a failure on the helper's side that is none
    /// (a malformed answer, say), answered as duet's `helperFailed`.
    pub problem: Option<DapProblemType>,
    pub detail: String,
}

impl JobFailure {
    /// The problem the job's poll answers with.
    pub fn to_dap_error(&self, task_id: TaskId) -> DapError {
        match self.problem {
            Some(kind) => DapError::dap(kind, Some(task_id), self.detail.clone()),
            None => DapError::HelperFailed { task_id: Some(task_id), detail: self.detail.clone() },
        }
    }

    /// As stored: the problem's token (empty for none) and the detail.
    pub fn to_db(&self) -> (&'static str, &str) {
        (self.problem.map_or("", |p| p.token()), &self.detail)
    }

    /// Read back; a token this version does not know reads as no DAP problem.
    pub fn from_db(token: &str, detail: String) -> Self {
        Self { problem: DapProblemType::ALL.into_iter().find(|k| k.token() == token), detail }
    }
}

/// Where an HPKE key is in its rotation. Pending keys are not advertised yet (so that every
/// replica knows a key before any client uses it), active keys are advertised, retired keys are
/// no longer advertised but still open what clients encrypted to them from a cached
/// configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HpkeKeyState {
    Pending,
    Active,
    Retired,
}

impl HpkeKeyState {
    /// The stored spelling (the schema's first version called the retired state `expired`).
    pub fn db(self) -> &'static str {
        match self {
            HpkeKeyState::Pending => "pending",
            HpkeKeyState::Active => "active",
            HpkeKeyState::Retired => "expired",
        }
    }

    pub fn from_db(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(HpkeKeyState::Pending),
            "active" => Some(HpkeKeyState::Active),
            "expired" => Some(HpkeKeyState::Retired),
            _ => None,
        }
    }

    /// The state as the admin API and CLI spell it.
    pub fn label(self) -> &'static str {
        match self {
            HpkeKeyState::Pending => "pending",
            HpkeKeyState::Active => "active",
            HpkeKeyState::Retired => "retired",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_states_read_back_as_written_and_unknown_ones_are_refused() {
        for s in LeaderJobState::ALL {
            assert_eq!(LeaderJobState::from_db(s.db()), Some(*s));
        }
        for s in HelperJobState::ALL {
            assert_eq!(HelperJobState::from_db(s.db()), Some(*s));
        }
        for s in CollectionJobState::ALL {
            assert_eq!(CollectionJobState::from_db(s.db()), Some(*s));
        }
        assert_eq!(CollectionJobState::from_db("Finished"), None);
        assert_eq!(LeaderJobState::Abandoned.to_string(), "abandoned");
    }

    #[test]
    fn a_job_failure_keeps_its_problem_through_storage() {
        let refused = JobFailure { problem: Some(DapProblemType::BatchMismatch), detail: "counts differ".into() };
        let (token, detail) = refused.to_db();
        assert_eq!(JobFailure::from_db(token, detail.to_string()), refused);
        let task = TaskId::random();
        assert_eq!(refused.to_dap_error(task).kind(), Some(DapProblemType::BatchMismatch));
        // No DAP problem: the helper failed (a token this version does not know reads the same).
        let helper = JobFailure::from_db("", "malformed answer".into());
        assert_eq!(helper.problem, None);
        assert!(matches!(helper.to_dap_error(task), DapError::HelperFailed { .. }));
        assert_eq!(JobFailure::from_db("someFutureProblem", String::new()).problem, None);
    }
}
