//! `TestSagaBuilder`: the `SagaBuilder` a user's saga factory gets, wrapping every step in `Faulty`.

use std::fmt;

use saga_core::saga::{DefineGroup, DefineSaga, GroupBuilder, SagaBuilder};
use saga_core::{Error as EngineError, Saga, Step};

use crate::faulty::Faulty;
use crate::injector::Faults;

/// Mirrors [`SagaBuilder`] (`step`, `needs`, `parallel`, `point_of_no_return`, `build`) and wraps
/// every step in a [`Faulty`] that consults the run's [`Faults`]. Both implement [`DefineSaga`]
/// (and their group builders [`DefineGroup`]), so that a saga factory written once, generic over
/// `B: DefineSaga`, builds the production saga from [`Saga::builder`] and the saga under test from
/// a `TestSagaBuilder`: the checks then check the very definition that runs.
///
/// ```
/// use saga_core::saga::{DefineGroup, DefineSaga};
/// use saga_core::{async_trait, Saga, Step, StepContext, StepError};
/// use saga_testkit::{FaultPlan, Faults, SagaCheck, TestSagaBuilder, World};
///
/// struct Noop;
/// #[async_trait]
/// impl Step for Noop {
///     type Output = ();
///     async fn execute(&self, _: &StepContext) -> Result<(), StepError> { Ok(()) }
/// }
///
/// /// The saga, written once against the trait.
/// fn define<B: DefineSaga>(saga: B) -> B {
///     saga.step("a", Noop).parallel(|g| g.step("b", Noop).step("c", Noop))
/// }
///
/// // Production:
/// let saga = define(Saga::builder("demo", 1)).build()?;
/// assert_eq!(saga.step_names(), ["a", "b", "c"]);
/// // The same definition, under test:
/// let faults = Faults::new(FaultPlan::new().fail_compensation("a"));
/// let tested = define(TestSagaBuilder::new("demo", 1, &faults)).build()?;
/// assert_eq!(tested.steps(), saga.steps());
/// // And as a SagaCheck's factory:
/// #[derive(Clone, Default)]
/// struct Nothing;
/// #[async_trait]
/// impl World for Nothing {
///     type Snapshot = ();
///     async fn snapshot(&self) {}
/// }
/// let check = SagaCheck::new("demo", Nothing::default, |_: &Nothing, saga| define(saga));
/// # let _ = check;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Its own methods need no trait in scope:
///
/// ```
/// use saga_core::{async_trait, Step, StepContext, StepError};
/// use saga_testkit::{FaultPlan, Faults, TestSagaBuilder};
///
/// struct Noop;
/// #[async_trait]
/// impl Step for Noop {
///     type Output = ();
///     async fn execute(&self, _: &StepContext) -> Result<(), StepError> { Ok(()) }
/// }
///
/// let faults = Faults::new(FaultPlan::new().fail_compensation("a"));
/// let saga = TestSagaBuilder::new("s", 1, &faults)
///     .step("a", Noop)
///     .parallel(|g| g.step("b", Noop).needs(&["a"]).step("c", Noop))
///     .point_of_no_return()
///     .step("d", Noop)
///     .build()?;
/// assert_eq!(saga.step_names(), ["a", "b", "c", "d"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use]
pub struct TestSagaBuilder {
    inner: SagaBuilder,
    faults: Faults,
}

impl fmt::Debug for TestSagaBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestSagaBuilder").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl TestSagaBuilder {
    /// Starts a saga of this name and version whose steps consult `faults`.
    pub fn new(name: impl Into<String>, version: u32, faults: &Faults) -> Self {
        TestSagaBuilder { inner: Saga::builder(name, version), faults: faults.clone() }
    }

    /// Adds a stage of one step, wrapped in [`Faulty`].
    pub fn step(mut self, name: impl Into<String>, step: impl Step) -> Self {
        let name = name.into();
        let wrapped = Faulty::new(name.clone(), step, &self.faults);
        self.inner = self.inner.step(name, wrapped);
        self
    }

    /// See [`SagaBuilder::needs`].
    pub fn needs(mut self, steps: &[&str]) -> Self {
        self.inner = self.inner.needs(steps);
        self
    }

    /// Adds a parallel group; its steps are wrapped too. See [`SagaBuilder::parallel`].
    pub fn parallel(mut self, group: impl FnOnce(TestGroupBuilder) -> TestGroupBuilder) -> Self {
        let faults = self.faults.clone();
        self.inner = self.inner.parallel(|g| group(TestGroupBuilder { inner: g, faults }).inner);
        self
    }

    /// See [`SagaBuilder::point_of_no_return`].
    pub fn point_of_no_return(mut self) -> Self {
        self.inner = self.inner.point_of_no_return();
        self
    }

    /// Builds the saga; see [`SagaBuilder::build`].
    pub fn build(self) -> Result<Saga, EngineError> {
        self.inner.build()
    }
}

/// Builds one parallel group of a [`TestSagaBuilder`]; mirrors [`GroupBuilder`].
#[must_use]
pub struct TestGroupBuilder {
    inner: GroupBuilder,
    faults: Faults,
}

impl fmt::Debug for TestGroupBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestGroupBuilder").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl TestGroupBuilder {
    /// Adds a step to the group, wrapped in [`Faulty`].
    pub fn step(mut self, name: impl Into<String>, step: impl Step) -> Self {
        let name = name.into();
        let wrapped = Faulty::new(name.clone(), step, &self.faults);
        self.inner = self.inner.step(name, wrapped);
        self
    }

    /// See [`GroupBuilder::needs`].
    pub fn needs(mut self, steps: &[&str]) -> Self {
        self.inner = self.inner.needs(steps);
        self
    }
}

impl DefineSaga for TestSagaBuilder {
    type Group = TestGroupBuilder;

    fn step(self, name: impl Into<String>, step: impl Step) -> Self {
        TestSagaBuilder::step(self, name, step)
    }

    fn needs(self, steps: &[&str]) -> Self {
        TestSagaBuilder::needs(self, steps)
    }

    fn parallel(self, group: impl FnOnce(TestGroupBuilder) -> TestGroupBuilder) -> Self {
        TestSagaBuilder::parallel(self, group)
    }

    fn point_of_no_return(self) -> Self {
        TestSagaBuilder::point_of_no_return(self)
    }

    fn build(self) -> Result<Saga, EngineError> {
        TestSagaBuilder::build(self)
    }
}

impl DefineGroup for TestGroupBuilder {
    fn step(self, name: impl Into<String>, step: impl Step) -> Self {
        TestGroupBuilder::step(self, name, step)
    }

    fn needs(self, steps: &[&str]) -> Self {
        TestGroupBuilder::needs(self, steps)
    }
}
