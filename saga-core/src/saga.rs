//! Saga definitions, built in code: sequential steps, parallel groups, a point of no return.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::error::Error;
use crate::step::{ErasedStep, Step, StepKind};

/// A saga: a named, versioned sequence of stages, each one step or a parallel group of steps.
///
/// Stages run in order; the steps of a parallel group run at once (fan-out) and the next stage
/// starts when all of them have succeeded (join). A step may read the outputs of steps in earlier
/// stages. Built with [`Saga::builder`]:
///
/// ```
/// use async_trait::async_trait;
/// use saga_core::{Saga, Step, StepContext, StepError};
///
/// struct Noop;
/// #[async_trait]
/// impl Step for Noop {
///     type Output = ();
///     async fn execute(&self, _: &StepContext) -> Result<(), StepError> { Ok(()) }
/// }
///
/// let saga = Saga::builder("deploy", 1)
///     .step("pull", Noop)
///     .parallel(|g| g.step("start-a", Noop).needs(&["pull"]).step("start-b", Noop))
///     .point_of_no_return()
///     .step("cleanup", Noop)
///     .build()?;
/// assert_eq!(saga.step_names(), ["pull", "start-a", "start-b", "cleanup"]);
/// assert_eq!(saga.point_of_no_return(), Some("start-b"));
///
/// let duplicate = Saga::builder("bad", 1).step("a", Noop).step("a", Noop).build();
/// assert!(duplicate.is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Saga {
    name: String,
    version: u32,
    stages: Vec<Vec<StepEntry>>,
    point_of_no_return: Option<usize>,
    stage_of: HashMap<String, usize>,
}

pub(crate) struct StepEntry {
    pub(crate) name: String,
    pub(crate) step: Arc<dyn ErasedStep>,
    needs: Vec<String>,
}

/// A step of a saga, as described by [`Saga::steps`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepInfo {
    /// The step's name.
    pub name: String,
    /// Its kind.
    pub kind: StepKind,
    /// The stage it runs in, from 0.
    pub stage: usize,
}

impl fmt::Debug for Saga {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Saga")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("steps", &self.step_names())
            .field("point_of_no_return", &self.point_of_no_return())
            .finish()
    }
}

impl Saga {
    /// How many steps the saga has.
    pub(crate) fn step_count(&self) -> usize {
        self.stage_of.len()
    }

    /// Starts building a saga of this name and version.
    pub fn builder(name: impl Into<String>, version: u32) -> SagaBuilder {
        SagaBuilder {
            name: name.into(),
            version,
            stages: Vec::new(),
            point_of_no_return: None,
            problems: Vec::new(),
        }
    }

    /// The saga's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The saga's version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The step names in stage order.
    pub fn step_names(&self) -> Vec<&str> {
        self.stages.iter().flatten().map(|e| e.name.as_str()).collect()
    }

    /// Every step with its kind and stage.
    pub fn steps(&self) -> Vec<StepInfo> {
        self.stages
            .iter()
            .enumerate()
            .flat_map(|(stage, entries)| {
                entries.iter().map(move |e| StepInfo {
                    name: e.name.clone(),
                    kind: e.step.kind(),
                    stage,
                })
            })
            .collect()
    }

    /// The last step before the point of no return, if the saga has one.
    pub fn point_of_no_return(&self) -> Option<&str> {
        let stage = self.stages.get(self.point_of_no_return?)?;
        stage.last().map(|e| e.name.as_str())
    }

    /// The stage index of the point of no return: once every step up to that stage succeeded, the
    /// Operation only goes forward.
    pub(crate) fn point_of_no_return_stage(&self) -> Option<usize> {
        self.point_of_no_return
    }

    /// The stage a step runs in.
    pub fn stage_of(&self, step: &str) -> Option<usize> {
        self.stage_of.get(step).copied()
    }

    pub(crate) fn stages(&self) -> &[Vec<StepEntry>] {
        &self.stages
    }

    pub(crate) fn entry(&self, step: &str) -> Option<&StepEntry> {
        let stage = self.stage_of(step)?;
        self.stages.get(stage)?.iter().find(|e| e.name == step)
    }

    /// The longest [`Step::cancel_grace`] of its steps: how long a shutdown past its deadline
    /// waits for the running steps before it drops them.
    pub(crate) fn longest_cancel_grace(&self) -> std::time::Duration {
        self.stages.iter().flatten().map(|e| e.step.cancel_grace()).max().unwrap_or_default()
    }
}

/// Builds a [`Saga`]; errors are collected and returned by [`SagaBuilder::build`].
#[must_use]
pub struct SagaBuilder {
    name: String,
    version: u32,
    stages: Vec<Vec<StepEntry>>,
    point_of_no_return: Option<usize>,
    problems: Vec<String>,
}

impl fmt::Debug for SagaBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaBuilder").field("name", &self.name).finish_non_exhaustive()
    }
}

impl SagaBuilder {
    /// Adds a stage of one step.
    pub fn step(mut self, name: impl Into<String>, step: impl Step) -> Self {
        self.stages.push(vec![entry(name, step)]);
        self
    }

    /// Declares that the step added last reads the outputs of these steps; building checks that
    /// they run in earlier stages.
    pub fn needs(mut self, steps: &[&str]) -> Self {
        match self.stages.last_mut().and_then(|s| s.last_mut()) {
            Some(last) => last.needs.extend(steps.iter().map(|s| s.to_string())),
            None => self.problems.push("needs() called before any step".into()),
        }
        self
    }

    /// Adds a stage of steps that run at once; the next stage starts when all have succeeded.
    pub fn parallel(mut self, group: impl FnOnce(GroupBuilder) -> GroupBuilder) -> Self {
        let group = group(GroupBuilder { steps: Vec::new(), problems: Vec::new() });
        self.problems.extend(group.problems);
        if group.steps.is_empty() {
            self.problems.push(format!("parallel group {} is empty", self.stages.len()));
        } else {
            self.stages.push(group.steps);
        }
        self
    }

    /// Marks the point of no return after the stage added last: once every step up to here has
    /// succeeded, a failure retries forward instead of rolling back, and cancel is refused.
    pub fn point_of_no_return(mut self) -> Self {
        if self.point_of_no_return.is_some() {
            self.problems.push("more than one point of no return".into());
        } else if self.stages.is_empty() {
            self.problems.push("point of no return before any step".into());
        } else {
            self.point_of_no_return = Some(self.stages.len() - 1);
        }
        self
    }

    /// Checks the definition: a saga name and step names that are not empty and hold no
    /// whitespace or control character (they appear in logs, reports and command lines), no
    /// duplicate step names, no empty group, every `needs` naming a step of an earlier stage, at
    /// least one step.
    pub fn build(self) -> Result<Saga, Error> {
        let mut problems = self.problems;
        if let Some(problem) = name_problem(&self.name) {
            problems.push(format!("the saga name {problem}"));
        }
        let mut stage_of = HashMap::new();
        for (stage, entries) in self.stages.iter().enumerate() {
            for e in entries {
                if e.name.is_empty() {
                    problems.push(format!("a step in stage {stage} has an empty name"));
                } else if let Some(problem) = name_problem(&e.name) {
                    problems.push(format!("step name {:?} {problem}", e.name));
                }
                if stage_of.insert(e.name.clone(), stage).is_some() {
                    problems.push(format!("duplicate step name {:?}", e.name));
                }
            }
        }
        for (stage, entries) in self.stages.iter().enumerate() {
            for e in entries {
                for need in &e.needs {
                    match stage_of.get(need) {
                        None => problems.push(format!(
                            "step {} needs {need:?}, which is not a step of this saga",
                            e.name
                        )),
                        Some(&s) if s >= stage => problems.push(format!(
                            "step {} needs {need}, which does not run before it",
                            e.name
                        )),
                        Some(_) => {}
                    }
                }
            }
        }
        if self.stages.is_empty() {
            problems.push("no steps".into());
        }
        if !problems.is_empty() {
            return Err(Error::InvalidSaga { saga: self.name, problem: problems.join("; ") });
        }
        Ok(Saga {
            name: self.name,
            version: self.version,
            stages: self.stages,
            point_of_no_return: self.point_of_no_return,
            stage_of,
        })
    }
}

/// What is wrong with a saga or step name, if anything.
fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.chars().any(char::is_whitespace) {
        Some("holds whitespace")
    } else if name.chars().any(char::is_control) {
        Some("holds a control character")
    } else {
        None
    }
}

/// Builds one parallel group; see [`SagaBuilder::parallel`].
#[must_use]
pub struct GroupBuilder {
    steps: Vec<StepEntry>,
    problems: Vec<String>,
}

impl fmt::Debug for GroupBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupBuilder").field("steps", &self.steps.len()).finish()
    }
}

impl GroupBuilder {
    /// Adds a step to the group.
    pub fn step(mut self, name: impl Into<String>, step: impl Step) -> Self {
        self.steps.push(entry(name, step));
        self
    }

    /// Declares that the step added last reads the outputs of these steps (of earlier stages).
    pub fn needs(mut self, steps: &[&str]) -> Self {
        match self.steps.last_mut() {
            Some(last) => last.needs.extend(steps.iter().map(|s| s.to_string())),
            None => self.problems.push("needs() called before any step of a group".into()),
        }
        self
    }
}

/// What a saga definition needs of a builder: stages of one step ([`step`](Self::step)), the
/// outputs a step reads ([`needs`](Self::needs)), parallel groups ([`parallel`](Self::parallel)),
/// a point of no return ([`point_of_no_return`](Self::point_of_no_return)), and
/// [`build`](Self::build). Implemented by [`SagaBuilder`] and by `saga_testkit::TestSagaBuilder`
/// (which wraps every step to inject faults), so that a saga factory is written once, generic over
/// the builder, and the saga that the tests check is the very definition that runs in
/// production. A step's kind is the step's own ([`Step::kind`]), not the builder's. A generic
/// factory with parallel groups needs both traits in scope: a group's methods are
/// [`DefineGroup`]'s.
///
/// ```
/// use saga_core::saga::{DefineGroup, DefineSaga};
/// use saga_core::{async_trait, Saga, Step, StepContext, StepError, StepKind};
/// use saga_testkit::{FaultPlan, Faults, TestSagaBuilder};
///
/// struct Noop(StepKind);
/// #[async_trait]
/// impl Step for Noop {
///     type Output = ();
///     async fn execute(&self, _: &StepContext) -> Result<(), StepError> { Ok(()) }
///     fn kind(&self) -> StepKind { self.0 }
/// }
///
/// /// The saga, written once.
/// fn deploy<B: DefineSaga>(saga: B) -> B {
///     saga.step("pull", Noop(StepKind::ReadOnly))
///         .parallel(|g| {
///             g.step("start-a", Noop(StepKind::Compensable))
///                 .needs(&["pull"])
///                 .step("start-b", Noop(StepKind::Compensable))
///         })
///         .point_of_no_return()
///         .step("cleanup", Noop(StepKind::Irreversible))
/// }
///
/// // In production:
/// let real = deploy(Saga::builder("deploy", 1)).build()?;
/// // Under test, every step wrapped to inject the faults of a plan:
/// let faults = Faults::new(FaultPlan::new().fail_compensation("start-a"));
/// let test = deploy(TestSagaBuilder::new("deploy", 1, &faults)).build()?;
/// assert_eq!(real.steps(), test.steps());
/// assert_eq!(real.point_of_no_return(), test.point_of_no_return());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait DefineSaga: Sized {
    /// The builder of one parallel group.
    type Group: DefineGroup;

    /// Adds a stage of one step (see [`SagaBuilder::step`]).
    #[must_use]
    fn step(self, name: impl Into<String>, step: impl Step) -> Self;

    /// Declares that the step added last reads the outputs of these steps (see
    /// [`SagaBuilder::needs`]).
    #[must_use]
    fn needs(self, steps: &[&str]) -> Self;

    /// Adds a stage of steps that run at once (see [`SagaBuilder::parallel`]).
    #[must_use]
    fn parallel(self, group: impl FnOnce(Self::Group) -> Self::Group) -> Self;

    /// Marks the point of no return after the stage added last (see
    /// [`SagaBuilder::point_of_no_return`]).
    #[must_use]
    fn point_of_no_return(self) -> Self;

    /// Checks the definition and builds the saga (see [`SagaBuilder::build`]).
    fn build(self) -> Result<Saga, Error>;
}

/// What a saga definition needs of a parallel group's builder: see [`DefineSaga`]. Implemented
/// by [`GroupBuilder`] and by `saga_testkit::TestGroupBuilder`.
pub trait DefineGroup: Sized {
    /// Adds a step to the group (see [`GroupBuilder::step`]).
    #[must_use]
    fn step(self, name: impl Into<String>, step: impl Step) -> Self;

    /// Declares that the step added last reads the outputs of these steps (see
    /// [`GroupBuilder::needs`]).
    #[must_use]
    fn needs(self, steps: &[&str]) -> Self;
}

impl DefineSaga for SagaBuilder {
    type Group = GroupBuilder;

    fn step(self, name: impl Into<String>, step: impl Step) -> Self {
        SagaBuilder::step(self, name, step)
    }

    fn needs(self, steps: &[&str]) -> Self {
        SagaBuilder::needs(self, steps)
    }

    fn parallel(self, group: impl FnOnce(GroupBuilder) -> GroupBuilder) -> Self {
        SagaBuilder::parallel(self, group)
    }

    fn point_of_no_return(self) -> Self {
        SagaBuilder::point_of_no_return(self)
    }

    fn build(self) -> Result<Saga, Error> {
        SagaBuilder::build(self)
    }
}

impl DefineGroup for GroupBuilder {
    fn step(self, name: impl Into<String>, step: impl Step) -> Self {
        GroupBuilder::step(self, name, step)
    }

    fn needs(self, steps: &[&str]) -> Self {
        GroupBuilder::needs(self, steps)
    }
}

fn entry(name: impl Into<String>, step: impl Step) -> StepEntry {
    StepEntry { name: name.into(), step: Arc::new(step), needs: Vec::new() }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;

    use super::*;
    use crate::{StepContext, StepError};

    struct Noop;
    #[async_trait]
    impl Step for Noop {
        type Output = ();
        async fn execute(&self, _: &StepContext) -> Result<(), StepError> {
            Ok(())
        }
    }

    fn problem(b: SagaBuilder) -> String {
        match b.build() {
            Err(Error::InvalidSaga { problem, .. }) => problem,
            other => panic!("expected InvalidSaga, got {other:?}"),
        }
    }

    #[test]
    fn names_with_whitespace_or_control_characters_are_build_errors() {
        for bad in ["", " ", "de ploy", "deploy\n", "tab\t", "nul\0", "bell\u{7}", "nbsp\u{a0}"] {
            let saga = problem(Saga::builder(bad, 1).step("a", Noop));
            assert!(saga.contains("the saga name"), "{bad:?}: {saga}");
            let step = problem(Saga::builder("s", 1).step(bad, Noop));
            assert!(step.contains("name"), "{bad:?}: {step}");
        }
        assert!(Saga::builder("deploy-web_v2.1", 1).step("pull:image", Noop).build().is_ok());
    }

    #[test]
    fn rejects_bad_definitions() {
        assert!(problem(Saga::builder("s", 1)).contains("no steps"));
        assert!(
            problem(Saga::builder("s", 1).step("a", Noop).step("a", Noop)).contains("duplicate")
        );
        assert!(problem(Saga::builder("s", 1).parallel(|g| g)).contains("empty"));
        assert!(problem(Saga::builder("s", 1).step("a", Noop).needs(&["b"]).step("b", Noop))
            .contains("does not run before"));
        assert!(
            problem(Saga::builder("s", 1).step("a", Noop).needs(&["zz"])).contains("not a step")
        );
        assert!(problem(
            Saga::builder("s", 1).parallel(|g| g.step("a", Noop).step("b", Noop).needs(&["a"]))
        )
        .contains("does not run before"));
    }
}
