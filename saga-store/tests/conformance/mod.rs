//! The store conformance suite of saga-testkit on `SledStore` opened with fsync (the durable
//! mode), each check as its own test against a store in a fresh temporary directory.

use std::sync::{Arc, Mutex};

use saga_store::SledStore;
use saga_testkit::conformance;
use tempfile::TempDir;

/// A durable store in a fresh temporary directory, which must outlive it.
fn fresh() -> (TempDir, Arc<SledStore>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SledStore::open(dir.path().join("store")).expect("opens");
    (dir, Arc::new(store))
}

macro_rules! checks {
    ($($test:ident => $check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let (_dir, store) = fresh();
                conformance::$check(store).await;
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

/// The whole suite in one call, as a store without a test per check would run it: the
/// temporary directories are kept until the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_run_all() {
    let dirs = Mutex::new(Vec::new());
    conformance::run_all(|| {
        let (dir, store) = fresh();
        dirs.lock().unwrap_or_else(|e| e.into_inner()).push(dir);
        async move { store }
    })
    .await;
}
