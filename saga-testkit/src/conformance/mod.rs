//! A conformance suite for [`Store`]s: the contract of the [`Store`] trait, stated as checks that
//! any store runs with one call.
//!
//! Each check is an `async fn` taking a **fresh, empty** store behind an [`Arc`] (a concrete
//! store or an `Arc<dyn Store>`), and panics with a message naming the check and what differed
//! (`store conformance check `leases_fencing` failed: ...`). [`run_all`] runs every check, each
//! against a store of its own from an (async) factory:
//!
//! ```
//! use std::sync::Arc;
//! use saga_core::MemoryStore;
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
//! saga_testkit::conformance::run_all(|| async { Arc::new(MemoryStore::new()) }).await;
//! # });
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A store's own test file may rather run the checks one by one, one `#[tokio::test]` each, so
//! that a failure names its test. [`conformance_tests!`](crate::conformance_tests) writes them
//! all, `conformance_<check>`, from a future that gives a fresh store and whatever must outlive
//! it (a temporary directory, a database schema), so that a check added here runs on every
//! store (the crate using it needs `tokio` with its `macros` and `rt-multi-thread` features):
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use saga_core::MemoryStore;
//! saga_testkit::conformance_tests!(async { ((), Arc::new(MemoryStore::new())) });
//! ```
//!
//! or call one check by hand:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use saga_core::MemoryStore;
//! #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
//! async fn conformance_claim_race() {
//!     saga_testkit::conformance::claim_race(Arc::new(MemoryStore::new())).await;
//! }
//! ```
//!
//! Run them on a multi-threaded runtime: [`claim_race`] and [`concurrent_appenders`] spawn tasks
//! that should really run at once. Every check ends with `check(false)` finding nothing, and
//! gives up with a panic after a minute (a store that hangs). The checks are black-box: they see
//! what a store answers, not what reached its disk, so crash durability is for each store's own
//! tests (reopening, fault injection).
//!
//! The checks:
//!
//! - [`ordering_and_gaps`]: appends in sequence only (`OutOfSequence` with the right numbers),
//!   nothing of a refused batch written, records of another Operation refused, `read` in order,
//!   `NotFound`, `AlreadyExists`, `create` of anything but `OperationCreated` at 0 refused.
//! - [`acknowledged_writes`]: after `Ok`, `read` and the listings show exactly what was written;
//!   every record kind (those of the point of no return too: a failure without effect, attention
//!   needed and retried, an abandoned outcome) and a large record round-trip; an empty append is
//!   harmless.
//! - [`lease_on_create`]: `create` grants the creator epoch 1 for the ttl; others are `Owned`.
//! - [`claim_race`]: 16 concurrent claims of one Operation: exactly one wins, the others are
//!   `Owned` by it.
//! - [`epochs_grow`]: claims after a release, after an expiry and by the holder itself grant
//!   ever higher epochs; only the newest lease writes.
//! - [`leases_fencing`]: a stale, forged or future lease's `append` and `renew` are `Fenced`
//!   and write nothing.
//! - [`lease_expiry`]: a 50 ms lease is claimable by another owner once it passed.
//! - [`release`]: twice is harmless; a non-current lease's release does nothing.
//! - [`unfinished_list`]: unfinished Operations in id order; `OperationFinished` removes one.
//! - [`environment_bounds`]: `[since, until)`, empty and inverted ranges, creation order.
//! - [`environment_names`]: names that are prefixes of each other, the empty name, 10 KiB,
//!   non-ASCII, SQL wildcards.
//! - [`log_lines`]: `append_log`/`read_log` in order; `purge_logs` removes only older lines,
//!   counts them, keeps records.
//! - [`log_lines_fenced`]: a line under a lease that is not current is `Fenced` and writes
//!   nothing; a stored line is never replaced.
//! - [`delete_environment`]: removes that environment's Operations everywhere, and only those.
//! - [`check_on_healthy_store`]: `check`, with and without repair, finds nothing after a mix of
//!   everything.
//! - [`concurrent_appenders`]: 64 Operations × 20 appends from concurrent tasks, with checks
//!   running: every log complete and gap-free.
//! - [`cancel_requests`]: one pending request per Operation, listed, answered (removed) by an
//!   append of `CancelRequested`, `CancelRefused` or `OperationFinished`; none for a finished
//!   or deleted Operation.
//! - [`cancel_barriers`]: while a request is pending, passing the point of no return and
//!   finishing as succeeded or abandoned are `CancelPending` and write nothing.
//! - [`resource_queues`]: unfinished Operations of a resource in creation order.
//! - [`wake_ups`]: a store with wake-ups tells of submitted and released Operations, cancel
//!   requests, and Operations that settled.

mod cancels;
mod health;
mod indexes;
mod leases;
mod logs;
mod records;
mod support;
mod wake_ups;

pub use self::cancels::{cancel_barriers, cancel_requests};
pub use self::health::{check_on_healthy_store, concurrent_appenders};
pub use self::indexes::{
    delete_environment, environment_bounds, environment_names, resource_queues, unfinished_list,
};
pub use self::leases::{
    claim_race, epochs_grow, lease_expiry, lease_on_create, leases_fencing, release,
};
pub use self::logs::{log_lines, log_lines_fenced};
pub use self::records::{acknowledged_writes, ordering_and_gaps};
use self::support::{brief, created, finished, line, record, started, Ctx};
pub use self::wake_ups::wake_ups;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use saga_core::store::Store;

/// A lease that does not expire while a check runs.
const LONG: Duration = Duration::from_secs(600);

/// The short lease of [`lease_expiry`].
const SHORT: Duration = Duration::from_millis(50);

/// How long one check may take before it counts as hanging.
const HANG: Duration = Duration::from_secs(60);

/// Runs every check of the suite, each against a fresh store from `fresh`, and panics at the
/// first that fails with a message naming it and what differed.
///
/// `fresh` must give an empty store each time (a new directory, a new schema): the checks list
/// whole environments and the whole unfinished index. It may be async, for a store that
/// connects somewhere; wrap a store that must outlive a guard (a temporary directory) by keeping
/// the guard in the closure's captures.
pub async fn run_all<S, F, Fut>(fresh: F)
where
    S: Store + ?Sized,
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<S>>,
{
    ordering_and_gaps(fresh().await).await;
    acknowledged_writes(fresh().await).await;
    lease_on_create(fresh().await).await;
    claim_race(fresh().await).await;
    epochs_grow(fresh().await).await;
    leases_fencing(fresh().await).await;
    lease_expiry(fresh().await).await;
    release(fresh().await).await;
    unfinished_list(fresh().await).await;
    environment_bounds(fresh().await).await;
    environment_names(fresh().await).await;
    log_lines(fresh().await).await;
    log_lines_fenced(fresh().await).await;
    delete_environment(fresh().await).await;
    check_on_healthy_store(fresh().await).await;
    concurrent_appenders(fresh().await).await;
    cancel_requests(fresh().await).await;
    cancel_barriers(fresh().await).await;
    resource_queues(fresh().await).await;
    wake_ups(fresh().await).await;
}

/// Writes one `#[tokio::test]` per conformance check, named `conformance_<check>`, each on a
/// fresh store from `$fresh`: a future giving `(guard, Arc<S>)`, where `guard` (a temporary
/// directory, say, or `()`) lives until the test ends. See the [module docs](crate::conformance).
#[macro_export]
macro_rules! conformance_tests {
    ($fresh:expr) => {
        $crate::conformance_tests!(@each $fresh;
            conformance_ordering_and_gaps => ordering_and_gaps,
            conformance_acknowledged_writes => acknowledged_writes,
            conformance_lease_on_create => lease_on_create,
            conformance_claim_race => claim_race,
            conformance_epochs_grow => epochs_grow,
            conformance_leases_fencing => leases_fencing,
            conformance_lease_expiry => lease_expiry,
            conformance_release => release,
            conformance_unfinished_list => unfinished_list,
            conformance_environment_bounds => environment_bounds,
            conformance_environment_names => environment_names,
            conformance_log_lines => log_lines,
            conformance_log_lines_fenced => log_lines_fenced,
            conformance_delete_environment => delete_environment,
            conformance_check_on_healthy_store => check_on_healthy_store,
            conformance_concurrent_appenders => concurrent_appenders,
            conformance_cancel_requests => cancel_requests,
            conformance_cancel_barriers => cancel_barriers,
            conformance_resource_queues => resource_queues,
            conformance_wake_ups => wake_ups,
        );
    };
    (@each $fresh:expr; $($test:ident => $check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let (_guard, store) = $fresh.await;
                $crate::conformance::$check(store).await;
            }
        )*
    };
}
