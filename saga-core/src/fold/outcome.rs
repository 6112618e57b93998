//! What an `OperationFinished` must agree with (see the module docs of `fold`).

use std::cmp::Reverse;
use std::collections::HashSet;

use super::{Compensation, Execution, OperationState, StepState};
use crate::record::{NotUndoneReason, Outcome};

impl OperationState {
    /// Why `outcome` contradicts the state it closes, if it does (see the module doc for the
    /// rules and what the fold cannot tell without the saga).
    pub(super) fn outcome_problem(&self, outcome: &Outcome) -> Option<String> {
        let status = outcome.status();
        let cause = match outcome {
            Outcome::Succeeded => {
                if let Some(recorded) = self.rollback_cause() {
                    return Some(format!("outcome succeeded while rolling back ({recorded})"));
                }
                return self.steps.iter().find_map(|s| match &s.execution {
                    Execution::Succeeded { .. } => None,
                    Execution::Running => {
                        Some(format!("outcome succeeded while step {} was running", s.name))
                    }
                    Execution::Retrying { error } => Some(format!(
                        "outcome succeeded while step {} waits for a retry (last error: {error})",
                        s.name
                    )),
                    Execution::Failed { error } => {
                        Some(format!("outcome succeeded although step {} failed: {error}", s.name))
                    }
                });
            }
            Outcome::RolledBack { cause } | Outcome::RollbackIncomplete { cause, .. } => cause,
            Outcome::Abandoned { step, error, .. } => {
                return match &self.attention {
                    Some((s, e)) if s == step && e == error => None,
                    Some((s, e)) => Some(format!(
                        "outcome {status} names step {step} ({error}), but step {s} needs \
                         attention ({e})"
                    )),
                    None => Some(format!("outcome {status} while no step needs attention")),
                };
            }
        };
        if let Some((step, _)) = &self.attention {
            return Some(format!("outcome {status} while step {step} needs attention"));
        }
        match self.rollback_cause() {
            None => return Some(format!("outcome {status} while not rolling back")),
            Some(recorded) if recorded != *cause => {
                return Some(format!(
                    "outcome {status} gives the cause \"{cause}\", but the log records \"{recorded}\""
                ));
            }
            Some(_) => {}
        }
        // Every compensation that started has ended (a running one is refused before this).
        if let Some((s, error)) = self.steps.iter().find_map(|s| match &s.compensation {
            Compensation::Retrying { error } => Some((s, error)),
            _ => None,
        }) {
            return Some(format!(
                "outcome {status} while the compensation of step {} waits for a retry (last \
                 error: {error})",
                s.name
            ));
        }
        let not_undone = match outcome {
            Outcome::RollbackIncomplete { not_undone, .. } if not_undone.is_empty() => {
                return Some(format!("outcome {status} names nothing as not undone"));
            }
            Outcome::RollbackIncomplete { not_undone, .. } => not_undone.as_slice(),
            Outcome::Succeeded | Outcome::RolledBack { .. } | Outcome::Abandoned { .. } => &[],
        };
        let mut named: HashSet<&str> = HashSet::new();
        let mut previous: Option<(&str, RollbackRank)> = None;
        for item in not_undone {
            let step = item.step.as_str();
            let Some(&i) = self.index.get(step) else {
                return Some(format!("outcome {status} names step {step}, which never started"));
            };
            let s = &self.steps[i];
            if !named.insert(step) {
                return Some(format!("outcome {status} names step {step} twice"));
            }
            if s.had_no_effect() {
                return Some(format!(
                    "outcome {status} names step {step} not undone, but it failed without effect"
                ));
            }
            let wrong = match (&item.reason, &s.compensation) {
                (NotUndoneReason::Irreversible, Compensation::NotStarted) => None,
                (NotUndoneReason::Irreversible, _) => {
                    Some(format!("names step {step} irreversible, but its compensation ran"))
                }
                (NotUndoneReason::CompensationFailed(said), Compensation::Failed { error })
                    if said == error =>
                {
                    None
                }
                (NotUndoneReason::CompensationFailed(said), Compensation::Failed { error }) => {
                    Some(format!(
                        "says the compensation of step {step} failed with \"{said}\", but it \
                         failed with \"{error}\""
                    ))
                }
                (NotUndoneReason::CompensationFailed(_), Compensation::Succeeded) => {
                    Some(format!("says the compensation of step {step} failed, but it succeeded"))
                }
                (NotUndoneReason::CompensationFailed(_), Compensation::NotStarted) => {
                    Some(format!("says the compensation of step {step} failed, but it never ran"))
                }
                (
                    NotUndoneReason::CompensationFailed(_),
                    Compensation::Running | Compensation::Retrying { .. },
                ) => {
                    Some(format!("says the compensation of step {step} failed, but it never ended"))
                }
            };
            if let Some(wrong) = wrong {
                return Some(format!("outcome {status} {wrong}"));
            }
            let rank = rollback_rank(i, s);
            if let Some((before, before_rank)) = previous {
                if before_rank > rank {
                    return Some(format!(
                        "outcome {status} names step {before} before step {step}, against the \
                         rollback order"
                    ));
                }
            }
            previous = Some((step, rank));
        }
        // No compensation that failed for good is left out (for a rolled-back outcome the list
        // is empty, so any such step contradicts it).
        self.steps.iter().find_map(|s| match &s.compensation {
            Compensation::Failed { error } if !named.contains(s.name.as_str()) => Some(format!(
                "outcome {status} leaves out step {}, whose compensation failed for good: {error}",
                s.name
            )),
            _ => None,
        })
    }
}

/// A key of the rollback order: smaller comes first.
pub(crate) type RollbackRank = (Reverse<u64>, Reverse<usize>);

/// Where a started step comes in the rollback order (smaller first), as the planner orders it
/// (`executor::plan::rollback_order`): reverse order of completion, steps whose execute never
/// ended first, latest started first among them. `start_order` is its index in `steps`.
pub(crate) fn rollback_rank(start_order: usize, s: &StepState) -> RollbackRank {
    (Reverse(s.completed_seq.unwrap_or(u64::MAX)), Reverse(start_order))
}
