//! The pure fold from an Operation's records to its state.
//!
//! `OperationState::apply` (crate-private: a state comes only from [`OperationState::fold`]) is
//! an explicit state machine: every record is checked against the
//! state before it and an illegal one is an [`Error::IllegalRecord`] naming the Operation and the
//! record's sequence number. The executor derives all its decisions from this state.
//!
//! # What `OperationFinished` must agree with
//!
//! The outcome must be the one the executor's planner (`executor::plan`) writes for the state it
//! closes, as far as the records tell it. No step or compensation may be running (while rolling
//! back, an execute whose outcome a crash lost is the exception: it was compensated with
//! `Executed::Unknown`), and:
//!
//! - **succeeded**: not rolling back (no cancel, no permanent step failure), and every step in
//!   the log succeeded (none running, waiting for a retry or failed);
//! - **rolled back** / **rollback incomplete**: rolling back, the cause is exactly
//!   [`OperationState::rollback_cause`] (the cancel if one is recorded, else the first permanent
//!   `StepFailed`), and no compensation waits for a retry;
//! - **rolled back**: no compensation failed for good;
//! - **rollback incomplete**: a non-empty list of steps that started, each named once, in the
//!   rollback order (`executor::plan::rollback_order`), each with a reason the log bears out:
//!   `CompensationFailed(e)` for a step whose compensation failed for good with exactly `e`, and
//!   `Irreversible` for a step whose compensation never started; and every step whose
//!   compensation failed for good is named.
//!
//! The fold does not know the saga, and the planner never compensates an irreversible or a
//! read-only step, so a started step whose compensation never started is, to the fold, either
//! irreversible (the planner names it `Irreversible`) or read-only (the planner leaves it out):
//! it may be named `Irreversible` or left out, and a rolled-back outcome may leave such steps.
//! A compensable step the executor forgot to compensate reads the same and is not caught here;
//! the saga-aware checks in saga-testkit catch it.

mod apply;
mod outcome;
mod state;
#[cfg(test)]
mod tests;

pub(crate) use self::outcome::rollback_rank;
pub use self::state::{
    CancelRefusal, CancelledBy, Compensation, Execution, FailedStep, OperationState, Phase,
    PolicyStart, StepState,
};
