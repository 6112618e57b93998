//! `Define`: one saga definition for production and for `saga-testkit`.

use saga_core::{GroupBuilder, SagaBuilder, Step};

/// What a saga definition needs of a builder: stages of one step, parallel groups, a point of no
/// return. Implemented for [`SagaBuilder`]; a test implements it for a newtype around
/// `saga_testkit::TestSagaBuilder`, so that the saga that `SagaCheck` checks is the very
/// definition the example runs.
///
/// ```
/// use saga_core::{async_trait, Saga, Step, StepContext, StepError};
/// use saga_reference::{Define, DefineGroup};
///
/// struct Noop;
/// #[async_trait]
/// impl Step for Noop {
///     type Output = ();
///     async fn execute(&self, _: &StepContext) -> Result<(), StepError> { Ok(()) }
/// }
///
/// fn define<B: Define>(saga: B) -> B {
///     saga.step("a", Noop).parallel(|g| g.step("b", Noop).step("c", Noop))
/// }
/// let saga = define(Saga::builder("demo", 1)).build()?;
/// assert_eq!(saga.step_names(), ["a", "b", "c"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Define: Sized {
    /// The builder of one parallel group.
    type Group: DefineGroup;

    /// Adds a stage of one step.
    fn step(self, name: &str, step: impl Step) -> Self;

    /// Adds a stage of steps that run at once.
    fn parallel(self, group: impl FnOnce(Self::Group) -> Self::Group) -> Self;

    /// Marks the point of no return after the stage added last.
    fn point_of_no_return(self) -> Self;
}

/// What a saga definition needs of a parallel group's builder.
pub trait DefineGroup: Sized {
    /// Adds a step to the group.
    fn step(self, name: &str, step: impl Step) -> Self;
}

impl Define for SagaBuilder {
    type Group = GroupBuilder;

    fn step(self, name: &str, step: impl Step) -> Self {
        SagaBuilder::step(self, name, step)
    }

    fn parallel(self, group: impl FnOnce(GroupBuilder) -> GroupBuilder) -> Self {
        SagaBuilder::parallel(self, group)
    }

    fn point_of_no_return(self) -> Self {
        SagaBuilder::point_of_no_return(self)
    }
}

impl DefineGroup for GroupBuilder {
    fn step(self, name: &str, step: impl Step) -> Self {
        GroupBuilder::step(self, name, step)
    }
}
