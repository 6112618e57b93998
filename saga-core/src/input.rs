//! `Input`: what a step acts on, fixed when the saga is defined or read from the Operation.

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::error::StepError;
use crate::step::StepContext;

type Resolve<T> = dyn Fn(&StepContext) -> Result<T, StepError> + Send + Sync;

/// What a step acts on (a container, a volume and an instance, a target group), resolved from the
/// [`StepContext`] each time the step runs.
///
/// A saga is defined once and run for many Operations, so a step usually reads its input from the
/// Operation's params or from an earlier step's output rather than holding it. The input is
/// resolved again for `compensate`, from the same params and outputs, so the function must be
/// deterministic. An error it returns fails the step (or its compensation) with that error.
///
/// ```
/// use saga_core::Input;
///
/// #[derive(serde::Deserialize)]
/// struct Move { volume: String, to: String }
///
/// let fixed: Input<String> = "web-v2".into();
/// let volume = Input::<Move>::params().map(|m| m.volume);
/// let device = Input::<String>::output("detach");
/// let computed = Input::from_fn(|ctx| Ok(format!("{}-v2", ctx.params::<String>()?)));
/// # let _: [Input<String>; 4] = [fixed, volume, device, computed];
/// ```
pub struct Input<T> {
    resolve: Arc<Resolve<T>>,
}

impl<T> Clone for Input<T> {
    fn clone(&self) -> Self {
        Input { resolve: self.resolve.clone() }
    }
}

impl<T> fmt::Debug for Input<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Input").field("type", &std::any::type_name::<T>()).finish_non_exhaustive()
    }
}

impl<T: 'static> Input<T> {
    /// The same value for every Operation.
    pub fn value(value: T) -> Self
    where
        T: Clone + Send + Sync,
    {
        Input::from_fn(move |_| Ok(value.clone()))
    }

    /// The Operation's params, deserialized as `T`.
    pub fn params() -> Self
    where
        T: DeserializeOwned,
    {
        Input::from_fn(|ctx| Ok(ctx.params::<T>()?))
    }

    /// The recorded output of an earlier step, deserialized as `T`.
    pub fn output(step: impl Into<String>) -> Self
    where
        T: DeserializeOwned,
    {
        let step = step.into();
        Input::from_fn(move |ctx| Ok(ctx.output::<T>(&step)?))
    }

    /// Computed by a function of the context (params, outputs of earlier steps).
    pub fn from_fn(
        resolve: impl Fn(&StepContext) -> Result<T, StepError> + Send + Sync + 'static,
    ) -> Self {
        Input { resolve: Arc::new(resolve) }
    }

    /// This input transformed by `f`.
    pub fn map<U: 'static>(self, f: impl Fn(T) -> U + Send + Sync + 'static) -> Input<U> {
        Input::from_fn(move |ctx| (self.resolve)(ctx).map(&f))
    }

    /// The value for this run of the step.
    pub fn resolve(&self, ctx: &StepContext) -> Result<T, StepError> {
        (self.resolve)(ctx)
    }
}

impl<T: Clone + Send + Sync + 'static> From<T> for Input<T> {
    fn from(value: T) -> Self {
        Input::value(value)
    }
}

impl From<&str> for Input<String> {
    fn from(value: &str) -> Self {
        Input::value(value.to_owned())
    }
}
