//! One driver per Operation in a process, whatever the executors' names.
//!
//! A lease tells executors apart by name, so two executors of one process with the same name
//! would both hold "their" lease of an Operation and drive it at once. Every driver of the
//! process therefore reserves its Operation here first; a second reservation is refused until
//! the first driver's task ends.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use crate::id::OperationId;

fn driving() -> &'static Mutex<HashSet<OperationId>> {
    static DRIVING: OnceLock<Mutex<HashSet<OperationId>>> = OnceLock::new();
    DRIVING.get_or_init(Default::default)
}

/// The reservation of one Operation by one driver of this process; released when dropped.
#[derive(Debug)]
pub(crate) struct Driving(OperationId);

impl Driving {
    /// Reserves `id`, or `None` if another driver of this process holds it.
    pub(crate) fn reserve(id: OperationId) -> Option<Self> {
        let mut set = driving().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Not `then_some`: a `Driving` built and dropped on refusal would release the holder's.
        if set.insert(id) {
            Some(Driving(id))
        } else {
            None
        }
    }
}

impl Drop for Driving {
    fn drop(&mut self) {
        let mut set = driving().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        set.remove(&self.0);
    }
}
