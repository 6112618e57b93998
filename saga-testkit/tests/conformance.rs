//! The store conformance suite on `MemoryStore`: every check as its own test, and the whole
//! suite in one call.

use std::sync::Arc;

use saga_core::MemoryStore;
use saga_testkit::conformance;

fn fresh() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new())
}

macro_rules! checks {
    ($($test:ident => $check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                conformance::$check(fresh()).await;
            }
        )*
    };
}

checks! {
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
    conformance_delete_environment => delete_environment,
    conformance_check_on_healthy_store => check_on_healthy_store,
    conformance_concurrent_appenders => concurrent_appenders,
    conformance_cancel_requests => cancel_requests,
    conformance_resource_queues => resource_queues,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_run_all() {
    conformance::run_all(|| async { fresh() }).await;
}

/// The suite runs on a current-thread runtime too, and over `Arc<dyn Store>`.
#[tokio::test]
async fn conformance_run_all_dyn_current_thread() {
    conformance::run_all(|| async { fresh() as Arc<dyn saga_core::Store> }).await;
}
