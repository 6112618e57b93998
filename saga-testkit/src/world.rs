//! The user's observable world, which the checks snapshot and compare.

use std::fmt::Debug;

use saga_core::async_trait;

/// What a saga changes, as a test sees it: a fake cloud, a test database, a directory.
///
/// The checks make a fresh world for every run, snapshot it before and after, and compare
/// snapshots: after a rollback the world must be as before; after a doubled `execute` or
/// `compensate`, or a crash, as after a plain run. Snapshot only what a user of the system
/// would observe (not ids that differ from run to run, not timestamps).
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
#[async_trait]
pub trait World: Send + Sync + 'static {
    /// A comparable picture of the world.
    type Snapshot: PartialEq + Debug + Send;

    /// Takes the picture. Called while no step runs.
    async fn snapshot(&self) -> Self::Snapshot;
}
