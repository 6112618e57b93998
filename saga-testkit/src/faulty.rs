//! `Faulty`: a step wrapper that injects the faults of the plan.

use std::fmt;

use saga_core::{async_trait, Executed, Step, StepContext, StepError};

use crate::faults::{ExecuteFault, When};
use crate::injector::Faults;

/// Wraps a step and injects the faults that the shared [`Faults`] plan names for it; otherwise
/// delegates. Same output, kind, retry policy and timeout as the wrapped step.
///
/// [`TestSagaBuilder`](crate::TestSagaBuilder) wraps every step in one; wrap by hand to build a
/// [`Saga`](saga_core::Saga) some other way.
///
/// In `execute`, in this order: a planned cancel `Before` is asked (and answered); an
/// [`ExecuteFault`] that fires before the step returns its error; the step's own `execute` runs
/// (twice when doubled); a planned cancel `After` is asked; `Fail(After)` returns its error,
/// otherwise the step's result. In `compensate`: a compensation fault returns its error, otherwise
/// the step's own `compensate` runs (twice when doubled, the first error winning).
pub struct Faulty<S> {
    name: String,
    inner: S,
    faults: Faults,
}

impl<S> fmt::Debug for Faulty<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faulty").field("name", &self.name).finish_non_exhaustive()
    }
}

impl<S: Step> Faulty<S> {
    /// Wraps `step`, which the saga names `name`, consulting `faults`.
    pub fn new(name: impl Into<String>, step: S, faults: &Faults) -> Self {
        Faulty { name: name.into(), inner: step, faults: faults.clone() }
    }

    /// The wrapped step.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    async fn run(&self, ctx: &StepContext) -> Result<S::Output, StepError> {
        self.faults.note_execution(&self.name);
        self.inner.execute(ctx).await
    }
}

/// A second copy of what compensate is told, by the same JSON round trip the engine uses.
fn copy<O: serde::Serialize + serde::de::DeserializeOwned>(
    executed: &Executed<O>,
) -> Result<Executed<O>, StepError> {
    Ok(match executed {
        Executed::Succeeded(output) => {
            let bytes = serde_json::to_vec(output).map_err(StepError::permanent)?;
            Executed::Succeeded(serde_json::from_slice(&bytes).map_err(StepError::permanent)?)
        }
        Executed::Failed(error) => Executed::Failed(error.clone()),
        Executed::Unknown => Executed::Unknown,
    })
}

#[async_trait]
impl<S: Step> Step for Faulty<S> {
    type Output = S::Output;

    async fn execute(&self, ctx: &StepContext) -> Result<S::Output, StepError> {
        let name = &self.name;
        let (faults, cancel) = self.faults.begin_execute(name);
        let attempt = ctx.attempt();
        if cancel == Some(When::Before) {
            self.faults.cancel_now(ctx.operation_id()).await;
        }
        match faults.execute {
            Some(ExecuteFault::Fail(When::Before)) => {
                return Err(StepError::permanent(format!("injected failure of {name}")));
            }
            Some(ExecuteFault::FailTimes(n)) if attempt <= n => {
                return Err(StepError::permanent(format!(
                    "injected failure of {name} (attempt {attempt} of {n})"
                )));
            }
            Some(ExecuteFault::FailWithoutEffect) => {
                return Err(StepError::permanent(format!(
                    "injected failure of {name} without effect"
                ))
                .no_effect());
            }
            Some(ExecuteFault::Transient(n)) if attempt <= n => {
                return Err(StepError::transient(format!(
                    "injected transient failure of {name} (attempt {attempt} of {n})"
                )));
            }
            _ => {}
        }
        let mut result = self.run(ctx).await;
        if faults.execute_twice {
            result = self.run(ctx).await;
        }
        if cancel == Some(When::After) {
            self.faults.cancel_now(ctx.operation_id()).await;
        }
        if faults.execute == Some(ExecuteFault::Fail(When::After)) {
            return Err(StepError::permanent(format!(
                "injected failure of {name} after its effect"
            )));
        }
        result
    }

    async fn compensate(
        &self,
        ctx: &StepContext,
        executed: Executed<S::Output>,
    ) -> Result<(), StepError> {
        let faults = self.faults.begin_compensate(&self.name);
        if faults.fail_compensation {
            return Err(StepError::permanent(format!(
                "injected compensation failure of {}",
                self.name
            )));
        }
        if faults.compensate_twice {
            let again = copy(&executed)?;
            self.faults.note_compensation(&self.name);
            self.inner.compensate(ctx, again).await?;
        }
        self.faults.note_compensation(&self.name);
        self.inner.compensate(ctx, executed).await
    }

    saga_core::forward_step_settings!(inner);
}
