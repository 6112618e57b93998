//! The store conformance suite on `MemoryStore`: every check as its own test, and the whole
//! suite in one call.

use std::sync::Arc;

use saga_core::MemoryStore;
use saga_testkit::conformance;

fn fresh() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new())
}

saga_testkit::conformance_tests!(async { ((), fresh()) });

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_run_all() {
    conformance::run_all(|| async { fresh() }).await;
}

/// The suite runs on a current-thread runtime too, and over `Arc<dyn Store>`.
#[tokio::test]
async fn conformance_run_all_dyn_current_thread() {
    conformance::run_all(|| async { fresh() as Arc<dyn saga_core::store::Store> }).await;
}
