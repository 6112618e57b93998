//! The testkit's errors: a check that found problems, or a run that could not be made.

use std::fmt;
use std::time::Duration;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in a check or a run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The check ran and found problems; the message names each scenario and what was wrong.
    #[error("{0}")]
    Check(Failures),
    /// The saga factory built an invalid saga.
    #[error("the saga does not build: {0}")]
    InvalidSaga(#[source] saga_core::Error),
    /// The params do not serialize.
    #[error("the params do not serialize: {0}")]
    Params(String),
    /// The fault plan cannot be run (a crash after 0 records).
    #[error("invalid fault plan: {0}")]
    InvalidPlan(String),
    /// The engine returned an error instead of an outcome.
    #[error("{scenario}: {source}")]
    Engine {
        /// The run (its fault plan).
        scenario: String,
        /// The engine's error (boxed: it is large).
        source: Box<saga_core::Error>,
    },
    /// The Operation had no outcome in time.
    #[error("{scenario}: no outcome within {timeout:?}")]
    Timeout {
        /// The run (its fault plan).
        scenario: String,
        /// How long it waited.
        timeout: Duration,
    },
}

/// The scenarios of a check that failed, each with what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failures {
    /// The saga checked.
    pub saga: String,
    /// The check (`each_step_can_fail`, `steps_are_idempotent`, `crash_anywhere`).
    pub check: &'static str,
    /// How many scenarios ran.
    pub scenarios: usize,
    /// The failed ones.
    pub failures: Vec<Failure>,
}

/// One failed scenario of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What was injected, in words (`fail charge after its effect`).
    pub scenario: String,
    /// What was wrong.
    pub problem: String,
}

impl fmt::Display for Failures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "saga {}: {} failed in {} of {} scenarios:",
            self.saga,
            self.check,
            self.failures.len(),
            self.scenarios
        )?;
        for failure in &self.failures {
            write!(f, "\n- {failure}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.scenario, self.problem.replace('\n', "\n  "))
    }
}

/// What a check that passed did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The saga checked.
    pub saga: String,
    /// The check.
    pub check: &'static str,
    /// The scenarios run, in words.
    pub scenarios: Vec<String>,
    /// What the check could not verify, or did otherwise than planned, and why (a world not
    /// compared because an irreversible step ran and the world does not exclude its changes, a
    /// step never compensated because it runs past the point of no return, a failure past it that
    /// needed an operator's retry).
    pub notes: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "saga {}: {} passed {} scenarios", self.saga, self.check, self.scenarios.len())?;
        for note in &self.notes {
            write!(f, "\n  note: {note}")?;
        }
        Ok(())
    }
}
