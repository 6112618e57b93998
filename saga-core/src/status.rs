//! Where an Operation stands: the one status of the engine, its activity report, the admin API
//! and the `saga` CLI.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::fold::{OperationState, Phase};
use crate::record::Outcome;

/// Where an Operation stands.
///
/// `Display` gives the words of the activity report's `status` column (`rolled back`); JSON and
/// [`Status::as_str`] give `snake_case` (`rolled_back`); [`FromStr`] takes either, or the words
/// with hyphens, in any case.
///
/// ```
/// use saga_core::Status;
///
/// assert_eq!(Status::RolledBack.to_string(), "rolled back");
/// assert_eq!(Status::RolledBack.as_str(), "rolled_back");
/// assert_eq!("Rolled-Back".parse::<Status>()?, Status::RolledBack);
/// assert!(Status::RolledBack.is_finished());
/// # Ok::<(), saga_core::UnknownStatus>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Status {
    /// Not finished, going forward or waiting for its turn on its resource (`running`).
    Running,
    /// Not finished, rolling back after a failure or a cancel (`rolling back`).
    RollingBack,
    /// Not finished: past the point of no return a step ran out of its retry policy, and an
    /// operator must retry or abandon it (`needs attention`).
    NeedsAttention,
    /// Every step succeeded (`succeeded`).
    Succeeded,
    /// Everything was undone (`rolled back`).
    RolledBack,
    /// Some changes stay, each named in what was not undone (`rollback incomplete`).
    RollbackIncomplete,
    /// An operator abandoned it while it needed attention (`abandoned`).
    Abandoned,
    /// Its records could not be read or folded, or an index entry names no Operation
    /// (`damaged`).
    Damaged,
    /// Where it stands could not be told: an error while reading it, or a status that a newer
    /// release wrote and this one does not know (`unknown`).
    #[serde(other)]
    Unknown,
}

impl Status {
    /// Every status an Operation can have ([`Status::Unknown`] left out).
    pub const ALL: [Status; 8] = [
        Status::Running,
        Status::RollingBack,
        Status::NeedsAttention,
        Status::Succeeded,
        Status::RolledBack,
        Status::RollbackIncomplete,
        Status::Abandoned,
        Status::Damaged,
    ];

    /// The status of an Operation in this state.
    pub fn of(state: &OperationState) -> Self {
        match (&state.outcome, state.phase()) {
            (Some(outcome), _) => Status::of_outcome(outcome),
            (None, Phase::RollingBack) => Status::RollingBack,
            (None, Phase::NeedsAttention) => Status::NeedsAttention,
            (None, _) => Status::Running,
        }
    }

    /// The status an outcome gives.
    pub fn of_outcome(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Succeeded => Status::Succeeded,
            Outcome::RolledBack { .. } => Status::RolledBack,
            Outcome::RollbackIncomplete { .. } => Status::RollbackIncomplete,
            Outcome::Abandoned { .. } => Status::Abandoned,
        }
    }

    /// Whether the Operation reached its outcome.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Status::Succeeded | Status::RolledBack | Status::RollbackIncomplete | Status::Abandoned
        )
    }

    /// The `snake_case` name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::RollingBack => "rolling_back",
            Status::NeedsAttention => "needs_attention",
            Status::Succeeded => "succeeded",
            Status::RolledBack => "rolled_back",
            Status::RollbackIncomplete => "rollback_incomplete",
            Status::Abandoned => "abandoned",
            Status::Damaged => "damaged",
            Status::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Running => "running",
            Status::RollingBack => "rolling back",
            Status::NeedsAttention => "needs attention",
            Status::Succeeded => "succeeded",
            Status::RolledBack => "rolled back",
            Status::RollbackIncomplete => "rollback incomplete",
            Status::Abandoned => "abandoned",
            Status::Damaged => "damaged",
            Status::Unknown => "unknown",
        })
    }
}

/// The text is not a status; the message lists the ones there are.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown status {0:?}: expected one of running, rolling_back, needs_attention, succeeded, rolled_back, rollback_incomplete, abandoned, damaged")]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;

    /// `rolled_back`, `rolled back` and `rolled-back` (any case) are the same status.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wanted = text.trim().to_ascii_lowercase().replace([' ', '-'], "_");
        Status::ALL
            .into_iter()
            .find(|s| s.as_str() == wanted)
            .ok_or_else(|| UnknownStatus(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_names_and_parsing_agree() {
        for status in Status::ALL {
            assert_eq!(status.as_str().replace('_', " "), status.to_string());
            assert_eq!(status.to_string().parse::<Status>(), Ok(status));
            assert_eq!(status.as_str().parse::<Status>(), Ok(status));
            let json = serde_json::to_string(&status).expect("serializes");
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        assert_eq!(serde_json::from_str::<Status>("\"paused\"").ok(), Some(Status::Unknown));
        assert!("paused".parse::<Status>().is_err());
    }
}
