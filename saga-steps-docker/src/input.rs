//! `Input`: a value a step is built with, or read from the Operation when the step runs.

use std::fmt;
use std::sync::Arc;

use saga_core::{StepContext, StepError};

type Resolver<T> = Arc<dyn Fn(&StepContext) -> Result<T, StepError> + Send + Sync>;

/// What a step acts on (a container name, an image, a container spec): either fixed when the saga
/// is defined, or computed from the Operation's params and earlier outputs each time the step runs
/// (and again when it compensates, so the function must be deterministic).
///
/// ```
/// use saga_steps_docker::Input;
///
/// let fixed: Input<String> = "web-v2".into();
/// let from_params = Input::from_fn(|ctx| {
///     let app: String = ctx.params()?;
///     Ok(format!("{app}-v2"))
/// });
/// # let _ = (fixed, from_params);
/// ```
pub struct Input<T> {
    source: Source<T>,
}

enum Source<T> {
    Value(T),
    Fn(Resolver<T>),
}

impl<T: Clone> Input<T> {
    /// A fixed value.
    pub fn value(value: T) -> Self {
        Input { source: Source::Value(value) }
    }

    /// A value computed from the step's context (params, earlier outputs) each time it is needed.
    /// An error it returns fails the step (or its compensation) with that error.
    pub fn from_fn(
        f: impl Fn(&StepContext) -> Result<T, StepError> + Send + Sync + 'static,
    ) -> Self {
        Input { source: Source::Fn(Arc::new(f)) }
    }

    /// The value for this run of the step.
    pub(crate) fn resolve(&self, ctx: &StepContext) -> Result<T, StepError> {
        match &self.source {
            Source::Value(v) => Ok(v.clone()),
            Source::Fn(f) => f(ctx),
        }
    }
}

impl<T: Clone> From<T> for Input<T> {
    fn from(value: T) -> Self {
        Input::value(value)
    }
}

impl From<&str> for Input<String> {
    fn from(value: &str) -> Self {
        Input::value(value.to_owned())
    }
}

impl<T: Clone> Clone for Input<T> {
    fn clone(&self) -> Self {
        match &self.source {
            Source::Value(v) => Input::value(v.clone()),
            Source::Fn(f) => Input { source: Source::Fn(f.clone()) },
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Input<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Value(v) => v.fmt(f),
            Source::Fn(_) => f.write_str("<computed when the step runs>"),
        }
    }
}
