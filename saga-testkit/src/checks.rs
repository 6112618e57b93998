//! The checks: each step can fail, steps are idempotent, a crash anywhere recovers.

use std::collections::BTreeSet;

use saga_core::state::OperationState;
use saga_core::{NotUndoneReason, Outcome, RollbackCause, StepKind};

use crate::error::{Error, Failure, Failures, Report, Result};
use crate::faults::{Attention, FaultPlan, When};
use crate::harness::{Layout, Run, SagaCheck};
use crate::world::World;

/// The scenarios of one check and what went wrong in them.
struct Tally {
    saga: String,
    check: &'static str,
    scenarios: Vec<String>,
    failures: Vec<Failure>,
    notes: Vec<String>,
}

impl Tally {
    fn new(saga: &str, check: &'static str) -> Self {
        Tally {
            saga: saga.to_owned(),
            check,
            scenarios: Vec::new(),
            failures: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn fail(&mut self, scenario: &str, problem: String) {
        self.failures.push(Failure { scenario: scenario.to_owned(), problem });
    }

    fn finish(self) -> Result<Report> {
        if self.failures.is_empty() {
            Ok(Report {
                saga: self.saga,
                check: self.check,
                scenarios: self.scenarios,
                notes: self.notes,
            })
        } else {
            Err(Error::Check(Failures {
                saga: self.saga,
                check: self.check,
                scenarios: self.scenarios.len(),
                failures: self.failures,
            }))
        }
    }
}

/// The outcome in words, with its cause.
fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Succeeded => "succeeded".into(),
        Outcome::RolledBack { cause } => format!("rolled back ({cause})"),
        Outcome::RollbackIncomplete { cause, .. } => format!("{outcome} ({cause})"),
        other => other.to_string(),
    }
}

/// The outcome with its not-undone list sorted, so that runs whose parallel steps finished in
/// another order compare equal.
fn normalized(outcome: &Outcome) -> Outcome {
    match outcome {
        Outcome::RollbackIncomplete { cause, not_undone } => {
            let mut not_undone = not_undone.clone();
            not_undone.sort_by(|a, b| a.step.cmp(&b.step));
            Outcome::RollbackIncomplete { cause: cause.clone(), not_undone }
        }
        other => other.clone(),
    }
}

fn differs<S: std::fmt::Debug>(what: &str, a_label: &str, a: &S, b_label: &str, b: &S) -> String {
    let width = a_label.len().max(b_label.len()) + 1;
    format!(
        "{what}:\n  {:width$} {a:?}\n  {:width$} {b:?}",
        format!("{a_label}:"),
        format!("{b_label}:")
    )
}

fn when_words(when: When) -> &'static str {
    match when {
        When::Before => "before its effect",
        When::After => "after its effect",
    }
}

/// The step whose failure rolls back the most: the last step of the point-of-no-return stage, or
/// of the saga.
fn rollback_trigger(layout: &Layout) -> Option<&str> {
    let stage = layout.point_of_no_return.or_else(|| layout.steps.iter().map(|s| s.stage).max())?;
    layout.steps.iter().rev().find(|s| s.stage == stage).map(|s| s.name.as_str())
}

impl<W: World> SagaCheck<W> {
    /// Runs `plan`; an engine error or timeout fails the scenario, a setup error ends the check.
    async fn scenario(
        &self,
        tally: &mut Tally,
        scenario: &str,
        plan: &FaultPlan,
    ) -> Result<Option<Run<W::Snapshot>>> {
        tally.scenarios.push(scenario.to_owned());
        match self.run(plan).await {
            Ok(run) => Ok(Some(run)),
            Err(e @ (Error::InvalidSaga(_) | Error::Params(_) | Error::InvalidPlan(_))) => Err(e),
            Err(e) => {
                tally.fail(scenario, e.to_string());
                Ok(None)
            }
        }
    }

    /// The run without faults, which must succeed.
    async fn baseline(&self, tally: &mut Tally) -> Result<Option<Run<W::Snapshot>>> {
        let scenario = "no faults";
        let Some(run) = self.scenario(tally, scenario, &FaultPlan::new()).await? else {
            return Ok(None);
        };
        if run.outcome != Outcome::Succeeded {
            let outcome = describe(&run.outcome);
            tally.fail(scenario, format!("the saga does not succeed without faults: {outcome}"));
            return Ok(None);
        }
        Ok(Some(run))
    }

    /// **Each step can fail**: for every step before the point of no return, and for a failure
    /// both before and after the step's own effect, the outcome is a rollback whose cause names
    /// that step, no compensation fails, every irreversible step that ran is reported, and the
    /// world after the rollback equals the world before the Operation. When irreversible steps
    /// ran, their changes stay: the worlds are compared without them if the world can tell them
    /// apart ([`World::excluding`]), and every other change must be undone exactly; otherwise the
    /// comparison is skipped and the report notes it.
    ///
    /// A step past the point of no return fails once and must be retried forward to the world of
    /// a run without faults: within its retry policy, or, when its policy allows no retry, by an
    /// operator's retry once the Operation needs attention (the report notes it).
    pub async fn each_step_can_fail(&self) -> Result<Report> {
        let layout = self.layout()?;
        let mut tally = Tally::new(self.name(), "each_step_can_fail");
        let Some(clean) = self.baseline(&mut tally).await? else { return tally.finish() };
        for step in &layout.steps {
            let name = step.name.as_str();
            if layout.past_point_of_no_return(step.stage) {
                let scenario = format!("fail {name} once (past the point of no return)");
                let plan = FaultPlan::new().fail_times(name, 1).on_attention(Attention::Retry);
                let Some(run) = self.scenario(&mut tally, &scenario, &plan).await? else {
                    continue;
                };
                if run.outcome != Outcome::Succeeded {
                    let outcome = describe(&run.outcome);
                    tally.fail(&scenario, format!("past the point of no return a failure is retried forward, but the outcome is: {outcome}"));
                } else if run.after != clean.after {
                    let problem = differs(
                        "the world differs from a run without faults",
                        "without faults",
                        &clean.after,
                        "retried forward",
                        &run.after,
                    );
                    tally.fail(&scenario, problem);
                }
                if !run.attention.is_empty() {
                    tally.notes.push(format!(
                        "{scenario}: the retry policy of {name} allows no retry, so the \
                         Operation needed attention and an operator's retry finished it"
                    ));
                }
                continue;
            }
            for when in [When::Before, When::After] {
                let scenario = format!("fail {name} {}", when_words(when));
                let plan = FaultPlan::new().fail(name, when);
                let Some(run) = self.scenario(&mut tally, &scenario, &plan).await? else {
                    continue;
                };
                check_rollback(&mut tally, &scenario, name, &run);
            }
        }
        tally.finish()
    }

    /// [`each_step_can_fail`](Self::each_step_can_fail), panicking with its message on failure.
    pub async fn assert_each_step_can_fail(&self) -> Report {
        self.each_step_can_fail().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// **Steps are idempotent**: for every step, running its `execute` twice (each attempt) leaves
    /// the world of a run without faults; for every compensable step that a rollback reaches,
    /// running its `compensate` twice leaves the world (and outcome) of the same rollback with
    /// single compensations. The rollback is started by failing, after its effect, the last step
    /// before the point of no return (or the last step).
    pub async fn steps_are_idempotent(&self) -> Result<Report> {
        let layout = self.layout()?;
        let mut tally = Tally::new(self.name(), "steps_are_idempotent");
        let Some(clean) = self.baseline(&mut tally).await? else { return tally.finish() };
        for step in &layout.steps {
            let name = step.name.as_str();
            let scenario = format!("execute {name} twice");
            let plan = FaultPlan::new().execute_twice(name);
            let Some(run) = self.scenario(&mut tally, &scenario, &plan).await? else { continue };
            if run.outcome != Outcome::Succeeded {
                let outcome = describe(&run.outcome);
                tally.fail(&scenario, format!("the outcome is {outcome}, not succeeded"));
            } else if run.after != clean.after {
                let what = format!(
                    "running the execute of {name} twice leaves another world than running it once"
                );
                tally.fail(&scenario, differs(&what, "once", &clean.after, "twice", &run.after));
            }
        }
        let Some(trigger) = rollback_trigger(&layout) else { return tally.finish() };
        let rollback = FaultPlan::new().fail(trigger, When::After);
        let label = format!("fail {trigger} after its effect");
        let Some(reference) = self.scenario(&mut tally, &label, &rollback).await? else {
            return tally.finish();
        };
        for step in layout.steps.iter().filter(|s| s.kind == StepKind::Compensable) {
            let name = step.name.as_str();
            if layout.past_point_of_no_return(step.stage) {
                tally.notes.push(format!(
                    "{name} is never compensated: it runs past the point of no return"
                ));
                continue;
            }
            let scenario = format!("{label}, compensate {name} twice");
            let plan = rollback.clone().compensate_twice(name);
            let Some(run) = self.scenario(&mut tally, &scenario, &plan).await? else { continue };
            let what = format!(
                "running the compensation of {name} twice leaves another world than running it once"
            );
            if normalized(&run.outcome) != normalized(&reference.outcome) {
                let (once, twice) = (describe(&reference.outcome), describe(&run.outcome));
                let what = format!("{what} (the outcome differs)");
                tally.fail(&scenario, differs(&what, "once", &once, "twice", &twice));
            } else if run.after != reference.after {
                tally
                    .fail(&scenario, differs(&what, "once", &reference.after, "twice", &run.after));
            }
        }
        tally.finish()
    }

    /// [`steps_are_idempotent`](Self::steps_are_idempotent), panicking with its message on
    /// failure.
    pub async fn assert_steps_are_idempotent(&self) -> Report {
        self.steps_are_idempotent().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// **Crash anywhere**: for a run without faults, and for a rollback (failing, after its
    /// effect, the last step before the point of no return), crashes after every record position
    /// of the uninterrupted run; a new executor recovers, and the outcome and the world must be
    /// those of the uninterrupted run, and the whole log legal.
    pub async fn crash_anywhere(&self) -> Result<Report> {
        let layout = self.layout()?;
        let mut tally = Tally::new(self.name(), "crash_anywhere");
        let mut bases = vec![("no faults".to_owned(), FaultPlan::new())];
        if let Some(trigger) = rollback_trigger(&layout) {
            bases.push((
                format!("fail {trigger} after its effect"),
                FaultPlan::new().fail(trigger, When::After),
            ));
        }
        for (label, base) in bases {
            let Some(reference) = self.scenario(&mut tally, &label, &base).await? else {
                continue;
            };
            for r in 1..reference.records.len() {
                let last = &reference.records[r - 1].kind;
                let what = match last.step() {
                    Some(step) => format!("{} {step}", last.name()),
                    None => last.name().to_owned(),
                };
                let scenario = format!("{label}, crash after record {r} ({what})");
                let plan = base.clone().crash_after(r as u64);
                let Some(run) = self.scenario(&mut tally, &scenario, &plan).await? else {
                    continue;
                };
                if normalized(&run.outcome) != normalized(&reference.outcome) {
                    let (a, b) = (describe(&reference.outcome), describe(&run.outcome));
                    let problem =
                        differs("the outcome differs", "uninterrupted", &a, "recovered", &b);
                    tally.fail(&scenario, problem);
                } else if run.after != reference.after {
                    let problem = differs(
                        "the world differs from an uninterrupted run",
                        "uninterrupted",
                        &reference.after,
                        "recovered",
                        &run.after,
                    );
                    tally.fail(&scenario, problem);
                }
                if let Some(first) = run.records.first() {
                    if let Err(e) = OperationState::fold(first.operation, &run.records) {
                        tally.fail(&scenario, format!("the log is illegal: {e}"));
                    }
                }
            }
        }
        tally.finish()
    }

    /// [`crash_anywhere`](Self::crash_anywhere), panicking with its message on failure.
    pub async fn assert_crash_anywhere(&self) -> Report {
        self.crash_anywhere().await.unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The checks of one injected failure before the point of no return.
fn check_rollback<S: std::fmt::Debug + PartialEq>(
    tally: &mut Tally,
    scenario: &str,
    failed: &str,
    run: &Run<S>,
) {
    let (cause, not_undone) = match &run.outcome {
        Outcome::Succeeded => {
            tally.fail(
                scenario,
                format!("the outcome is succeeded, not a rollback caused by {failed}"),
            );
            return;
        }
        Outcome::RolledBack { cause } => (cause, &[][..]),
        Outcome::RollbackIncomplete { cause, not_undone } => (cause, &not_undone[..]),
        _ => {
            let outcome = describe(&run.outcome);
            tally.fail(
                scenario,
                format!("the outcome is {outcome}, not a rollback caused by {failed}"),
            );
            return;
        }
    };
    if !matches!(cause, RollbackCause::StepFailed { step, .. } if step == failed) {
        tally.fail(
            scenario,
            format!("the rollback's cause is \"{cause}\", which does not name {failed}"),
        );
    }
    for item in not_undone {
        if let NotUndoneReason::CompensationFailed(error) = &item.reason {
            tally.fail(scenario, format!("the compensation of {} failed: {error}", item.step));
        }
    }
    let ran = &run.irreversible;
    let reported: BTreeSet<String> = not_undone
        .iter()
        .filter(|n| n.reason == NotUndoneReason::Irreversible)
        .map(|n| n.step.clone())
        .collect();
    if *ran != reported {
        tally.fail(scenario, differs("irreversible steps", "that ran", ran, "reported", &reported));
    }
    let ran: Vec<&str> = ran.iter().map(String::as_str).collect();
    let ran = ran.join(", ");
    if ran.is_empty() {
        if run.after != run.before {
            let what = "the rollback did not restore the world";
            tally.fail(scenario, differs(what, "before", &run.before, "after", &run.after));
        }
    } else if let Some((before, after)) = &run.excluding_irreversible {
        if after != before {
            let what = format!(
                "the rollback did not restore the world (the changes of irreversible steps \
                 excluded: {ran})"
            );
            tally.fail(scenario, differs(&what, "before", before, "after", after));
        }
    } else {
        tally.notes.push(format!(
            "{scenario}: world not compared, irreversible steps ran: {ran} (the world does not \
             exclude their changes, see World::excluding)"
        ));
    }
}
