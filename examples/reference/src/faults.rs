//! `--fail-at` and `--crash-at`: faults injected into a real step, read from the Operation's params.

use std::fmt;

use saga_core::{async_trait, Executed, Step, StepContext, StepError};
use serde::{Deserialize, Serialize};

/// The faults to inject into one Operation. Embed it in the params with `#[serde(flatten)]`:
/// recorded with the Operation, a fault still applies when another process recovers it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultFlags {
    /// The step that fails, permanently, before its effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_at: Option<String>,
    /// The step after whose effect the process aborts, on the step's first attempt only (the
    /// recovering run executes it again and goes on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_at: Option<String>,
}

/// Wraps a step and injects the faults of the Operation's [`FaultFlags`]; otherwise it is the
/// wrapped step (same output, compensation, kind, retry policy and timeout).
///
/// ```
/// use saga_core::{async_trait, Saga, Step, StepContext, StepError};
/// use saga_reference::Injected;
///
/// struct Noop;
/// #[async_trait]
/// impl Step for Noop {
///     type Output = ();
///     async fn execute(&self, _: &StepContext) -> Result<(), StepError> { Ok(()) }
/// }
/// let saga = Saga::builder("demo", 1).step("noop", Injected::new(Noop)).build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Injected<S> {
    inner: S,
}

impl<S> fmt::Debug for Injected<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Injected").finish_non_exhaustive()
    }
}

impl<S: Step> Injected<S> {
    /// Wraps `step`.
    pub fn new(step: S) -> Self {
        Injected { inner: step }
    }
}

/// The Operation's faults; params without them (or of another shape) inject nothing.
fn flags(ctx: &StepContext) -> FaultFlags {
    ctx.params::<FaultFlags>().unwrap_or_default()
}

#[async_trait]
impl<S: Step> Step for Injected<S> {
    type Output = S::Output;

    async fn execute(&self, ctx: &StepContext) -> Result<S::Output, StepError> {
        let flags = flags(ctx);
        if flags.fail_at.as_deref() == Some(ctx.step_name()) {
            tracing::warn!("injected failure (--fail-at {})", ctx.step_name());
            return Err(StepError::permanent(format!(
                "injected failure (--fail-at {})",
                ctx.step_name()
            )));
        }
        let output = self.inner.execute(ctx).await?;
        if flags.crash_at.as_deref() == Some(ctx.step_name()) && ctx.attempt() == 1 {
            eprintln!(
                "crashing after the effect of {} (--crash-at); run again to resume",
                ctx.step_name()
            );
            std::process::abort();
        }
        Ok(output)
    }

    async fn compensate(
        &self,
        ctx: &StepContext,
        executed: Executed<S::Output>,
    ) -> Result<(), StepError> {
        self.inner.compensate(ctx, executed).await
    }

    saga_core::forward_step_settings!(inner);
}
