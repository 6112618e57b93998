//! The store conformance suite of saga-testkit on `SledStore` opened with fsync (the durable
//! mode) and without (`without_fsync`), each check as its own test against a store in a fresh
//! temporary directory.

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

saga_testkit::conformance_tests!(async { fresh() });

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

/// The suite on a store opened without fsync, which acknowledges a write once sled holds it
/// (nothing tracked, nothing hidden).
mod without_fsync {
    use super::*;

    fn fresh() -> (TempDir, Arc<SledStore>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SledStore::open_without_fsync(dir.path().join("store")).expect("opens");
        (dir, Arc::new(store))
    }

    saga_testkit::conformance_tests!(async { fresh() });
}
