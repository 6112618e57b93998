//! The fault plan: which faults to inject at which step, and where to crash or cancel.

use std::collections::BTreeMap;
use std::fmt;

/// When an injected fault fires, relative to the wrapped step's own `execute`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum When {
    /// Before the step's `execute` runs: the step has no effect.
    Before,
    /// After the step's `execute` returned: its effect is in place, but the engine sees the fault
    /// (the partial effect that `compensate` must clean up, told only `Executed::Failed`).
    After,
}

/// A fault of a step's `execute`.
///
/// Past the point of no return a failing step is retried forward within its own retry policy
/// (whatever the error); when the policy runs out, the Operation needs attention, and the plan's
/// [`Attention`] decides (see [`FaultPlan::on_attention`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecuteFault {
    /// Every attempt fails with a permanent error (that does not say it had no effect, even
    /// before the step's own `execute`: the compensation must cope with what it is told). Before
    /// the point of no return this starts the rollback; past it the Operation needs attention
    /// once the step's retry policy runs out.
    Fail(When),
    /// Attempts numbered up to `n` by the engine ([`StepContext::attempt`]) fail with a permanent
    /// error before the step runs; later attempts run normally.
    ///
    /// [`StepContext::attempt`]: saga_core::StepContext::attempt
    FailTimes(u32),
    /// Attempts numbered up to `n` by the engine fail with a transient error before the step
    /// runs. With `n` at least the step's `max_attempts`, the step fails for good (before the
    /// point of no return) or the Operation needs attention (past it).
    Transient(u32),
    /// Every attempt fails, before the step runs, with a permanent error that says it had no
    /// effect ([`StepError::no_effect`]): before the point of no return the rollback leaves the
    /// step alone (it is not compensated, and not reported as not undone, even if irreversible).
    ///
    /// [`StepError::no_effect`]: saga_core::StepError::no_effect
    FailWithoutEffect,
}

/// What the operator decides when the Operation needs attention (past the point of no return, a
/// step ran out of its retry policy): see [`FaultPlan::on_attention`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attention {
    /// Retry the step ([`Executor::retry`]), its retry policy starting over; at most
    /// [`Attention::MAX_RETRIES`] times in a run, after which the run fails.
    ///
    /// [`Executor::retry`]: saga_core::Executor::retry
    Retry,
    /// Abandon the Operation ([`Executor::abandon`]): it ends with [`Outcome::Abandoned`].
    ///
    /// [`Executor::abandon`]: saga_core::Executor::abandon
    /// [`Outcome::Abandoned`]: saga_core::Outcome::Abandoned
    Abandon,
}

impl Attention {
    /// How many times [`Attention::Retry`] retries in one run.
    pub const MAX_RETRIES: usize = 3;
}

/// Every fault planned for one step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StepFaults {
    /// A fault of `execute`, if any.
    pub execute: Option<ExecuteFault>,
    /// Every attempt of `compensate` fails with a permanent error before the step's own
    /// `compensate` runs (the engine still retries it per the step's policy).
    pub fail_compensation: bool,
    /// Every `execute` runs the step's own `execute` twice and returns the second result.
    pub execute_twice: bool,
    /// Every `compensate` runs the step's own `compensate` twice.
    pub compensate_twice: bool,
}

impl StepFaults {
    fn is_empty(&self) -> bool {
        *self == StepFaults::default()
    }
}

/// What to inject into one run of a saga: faults by step name, a cancel and a crash.
///
/// Built by chaining; a later fault of the same kind at the same step replaces the earlier one.
/// Its `Display` (and `Debug`) is compact, for counterexamples:
///
/// ```
/// use saga_testkit::{Attention, FaultPlan, When};
/// let plan = FaultPlan::new()
///     .fail("d", When::Before)
///     .transient("b", 2)
///     .fail_compensation("a")
///     .fail_without_effect("e")
///     .cancel_at("c", When::After)
///     .on_attention(Attention::Abandon)
///     .crash_after(7);
/// assert_eq!(
///     plan.to_string(),
///     "fail compensation a; transient b x2; fail d; fail e without effect; \
///      cancel at c after effect; abandon on attention; crash after 7"
/// );
/// assert_eq!(FaultPlan::new().to_string(), "none");
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    steps: BTreeMap<String, StepFaults>,
    cancel: Option<(String, When)>,
    attention: Option<Attention>,
    crash_after: Option<u64>,
}

impl FaultPlan {
    /// A plan with no faults.
    pub fn new() -> Self {
        Self::default()
    }

    fn at(mut self, step: &str, change: impl FnOnce(&mut StepFaults)) -> Self {
        change(self.steps.entry(step.to_owned()).or_default());
        self
    }

    /// Every attempt of `step` fails permanently, before or after its own `execute`.
    pub fn fail(self, step: &str, when: When) -> Self {
        self.at(step, |f| f.execute = Some(ExecuteFault::Fail(when)))
    }

    /// The first `n` attempts of `step` fail permanently (for steps past the point of no return,
    /// which the engine retries forward within their retry policy).
    pub fn fail_times(self, step: &str, n: u32) -> Self {
        self.at(step, |f| f.execute = Some(ExecuteFault::FailTimes(n)))
    }

    /// Every attempt of `step` fails permanently, before its own `execute`, with an error that
    /// says it had no effect ([`ExecuteFault::FailWithoutEffect`]).
    pub fn fail_without_effect(self, step: &str) -> Self {
        self.at(step, |f| f.execute = Some(ExecuteFault::FailWithoutEffect))
    }

    /// The first `n` attempts of `step` fail with a transient error.
    pub fn transient(self, step: &str, n: u32) -> Self {
        self.at(step, |f| f.execute = Some(ExecuteFault::Transient(n)))
    }

    /// Every compensation attempt of `step` fails.
    pub fn fail_compensation(self, step: &str) -> Self {
        self.at(step, |f| f.fail_compensation = true)
    }

    /// Runs the `execute` of `step` twice each time (idempotency).
    pub fn execute_twice(self, step: &str) -> Self {
        self.at(step, |f| f.execute_twice = true)
    }

    /// Runs the `compensate` of `step` twice each time (idempotency).
    pub fn compensate_twice(self, step: &str) -> Self {
        self.at(step, |f| f.compensate_twice = true)
    }

    /// Cancels the Operation while `step` executes, before or after its own `execute` ran. The
    /// cancel is asked once per run; when a crash loses it before it was answered, it is asked
    /// again the next time the step runs.
    pub fn cancel_at(mut self, step: &str, when: When) -> Self {
        self.cancel = Some((step.to_owned(), when));
        self
    }

    /// What the operator decides each time the Operation needs attention. Without a decision, a
    /// run whose Operation needs attention fails with the engine's
    /// [`Error::NeedsAttention`](saga_core::Error::NeedsAttention).
    pub fn on_attention(mut self, decision: Attention) -> Self {
        self.attention = Some(decision);
        self
    }

    /// The process "crashes" once `records` records (`OperationCreated` included) are durable: the
    /// store accepts no more, the executor halts and is dropped, and a new executor recovers the
    /// Operation over the same store. Must be at least 1.
    pub fn crash_after(mut self, records: u64) -> Self {
        self.crash_after = Some(records);
        self
    }

    /// The same plan without its crash.
    pub fn without_crash(mut self) -> Self {
        self.crash_after = None;
        self
    }

    /// The faults planned for `step` (none if the plan does not name it).
    pub fn step(&self, step: &str) -> StepFaults {
        self.steps.get(step).copied().unwrap_or_default()
    }

    /// The steps with faults, by name.
    pub fn steps(&self) -> impl Iterator<Item = (&str, &StepFaults)> {
        self.steps.iter().filter(|(_, f)| !f.is_empty()).map(|(name, f)| (name.as_str(), f))
    }

    /// The planned cancel: the step during which it is asked, and when.
    pub fn cancel(&self) -> Option<(&str, When)> {
        self.cancel.as_ref().map(|(step, when)| (step.as_str(), *when))
    }

    /// What the operator decides when the Operation needs attention, if the plan says.
    pub fn attention(&self) -> Option<Attention> {
        self.attention
    }

    /// After how many durable records the process crashes, if it does.
    pub fn crash(&self) -> Option<u64> {
        self.crash_after
    }

    /// Whether the plan injects nothing.
    pub fn is_empty(&self) -> bool {
        self.steps().next().is_none()
            && self.cancel.is_none()
            && self.attention.is_none()
            && self.crash_after.is_none()
    }
}

fn after(when: When) -> &'static str {
    match when {
        When::Before => "",
        When::After => " after effect",
    }
}

impl fmt::Display for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items = Vec::new();
        for (step, faults) in self.steps() {
            if faults.fail_compensation {
                items.push(format!("fail compensation {step}"));
            }
            match faults.execute {
                None => {}
                Some(ExecuteFault::Fail(when)) => items.push(format!("fail {step}{}", after(when))),
                Some(ExecuteFault::FailTimes(n)) => items.push(format!("fail {step} x{n}")),
                Some(ExecuteFault::Transient(n)) => items.push(format!("transient {step} x{n}")),
                Some(ExecuteFault::FailWithoutEffect) => {
                    items.push(format!("fail {step} without effect"))
                }
            }
            if faults.execute_twice {
                items.push(format!("execute {step} twice"));
            }
            if faults.compensate_twice {
                items.push(format!("compensate {step} twice"));
            }
        }
        if let Some((step, when)) = &self.cancel {
            items.push(format!("cancel at {step}{}", after(*when)));
        }
        match self.attention {
            None => {}
            Some(Attention::Retry) => items.push("retry on attention".into()),
            Some(Attention::Abandon) => items.push("abandon on attention".into()),
        }
        if let Some(r) = self.crash_after {
            items.push(format!("crash after {r}"));
        }
        if items.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&items.join("; "))
        }
    }
}

impl fmt::Debug for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_faults_replace_earlier_ones_and_print_compactly() {
        let plan = FaultPlan::new()
            .fail("a", When::Before)
            .transient("a", 3)
            .execute_twice("b")
            .compensate_twice("b")
            .fail_times("c", 2);
        assert_eq!(plan.step("a").execute, Some(ExecuteFault::Transient(3)));
        assert_eq!(
            format!("{plan:?}"),
            "transient a x3; execute b twice; compensate b twice; fail c x2"
        );
        assert!(plan.step("zz") == StepFaults::default());
        assert!(!plan.is_empty());
        assert!(FaultPlan::new().crash_after(3).without_crash().is_empty());
        assert!(!FaultPlan::new().on_attention(Attention::Retry).is_empty());
        assert_eq!(
            FaultPlan::new().fail_without_effect("a").on_attention(Attention::Retry).to_string(),
            "fail a without effect; retry on attention"
        );
    }
}
