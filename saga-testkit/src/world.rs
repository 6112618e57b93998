//! The user's observable world, which the checks snapshot and compare.

use std::collections::BTreeSet;
use std::fmt::Debug;

use saga_core::async_trait;

/// What a saga changes, as a test sees it: a fake cloud, a test database, a directory.
///
/// The checks make a fresh world for every run, snapshot it before and after, and compare
/// snapshots: after a rollback the world must be as before; after a doubled `execute` or
/// `compensate`, or a crash, as after a plain run. Snapshot only what a user of the system
/// would observe (not ids that differ from run to run, not timestamps).
///
/// An irreversible step's change stays after a rollback, so a rollback through one cannot
/// restore the world as it was. A world that can tell that change apart implements
/// [`World::excluding`]: the checks then compare the worlds before and after without it, and the
/// changes of every other step must still be undone exactly. Otherwise they skip that
/// comparison and say so in the report's notes.
///
/// ```
/// use std::collections::BTreeSet;
/// use std::sync::{Arc, Mutex};
/// use saga_core::async_trait;
/// use saga_testkit::World;
///
/// #[derive(Clone, Default)]
/// struct Cloud(Arc<Mutex<BTreeSet<String>>>);
///
/// #[async_trait]
/// impl World for Cloud {
///     type Snapshot = BTreeSet<String>;
///     async fn snapshot(&self) -> BTreeSet<String> {
///         self.0.lock().unwrap().clone()
///     }
/// }
/// ```
///
/// A world that records which step made each change, so that the changes of irreversible steps
/// can be excluded (a step passes [`StepContext::step_name`](saga_core::StepContext::step_name)):
///
/// ```
/// use std::collections::{BTreeMap, BTreeSet};
/// use std::sync::{Arc, Mutex};
/// use saga_core::async_trait;
/// use saga_testkit::World;
///
/// /// Resources by name, each with the step that made it.
/// #[derive(Clone, Default)]
/// struct Cloud(Arc<Mutex<BTreeMap<String, String>>>);
///
/// impl Cloud {
///     fn create(&self, step: &str, resource: &str) {
///         self.0.lock().unwrap().insert(resource.to_owned(), step.to_owned());
///     }
/// }
///
/// #[async_trait]
/// impl World for Cloud {
///     type Snapshot = BTreeMap<String, String>;
///     async fn snapshot(&self) -> Self::Snapshot {
///         self.0.lock().unwrap().clone()
///     }
///     /// Without the resources that those steps made.
///     fn excluding(
///         &self,
///         snapshot: &Self::Snapshot,
///         steps: &BTreeSet<String>,
///     ) -> Option<Self::Snapshot> {
///         let mut kept = snapshot.clone();
///         kept.retain(|_, by| !steps.contains(by));
///         Some(kept)
///     }
/// }
///
/// let cloud = Cloud::default();
/// cloud.create("vm", "vm-1");
/// cloud.create("grow", "extra-gib");
/// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
/// let after = cloud.snapshot().await;
/// let grow = BTreeSet::from(["grow".to_owned()]);
/// let kept = cloud.excluding(&after, &grow).unwrap();
/// assert_eq!(kept.keys().collect::<Vec<_>>(), ["vm-1"]);
/// # });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[async_trait]
pub trait World: Send + Sync + 'static {
    /// A comparable picture of the world.
    type Snapshot: PartialEq + Debug + Send;

    /// Takes the picture. Called while no step runs.
    async fn snapshot(&self) -> Self::Snapshot;

    /// The picture without what the irreversible steps `steps` changed (or may have changed),
    /// for comparing the world after a rollback through them with the world before: called on
    /// both pictures (before the Operation started and after its outcome) with the same steps,
    /// after the run, on the world the run used. Exclude only what those steps change: a change
    /// of another step that the exclusion hides is a change the check cannot see.
    ///
    /// `None`, the default, says that the world cannot tell those changes apart: the check does
    /// not compare the worlds of such a rollback and notes it in its report.
    fn excluding(
        &self,
        snapshot: &Self::Snapshot,
        steps: &BTreeSet<String>,
    ) -> Option<Self::Snapshot> {
        let _ = (snapshot, steps);
        None
    }
}
