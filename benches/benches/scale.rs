//! Figures that criterion does not time well, printed and saved for `bench-summary`
//! (`target/criterion/saga-scale.json`), each the median of a few runs:
//!
//! - `memory`: resident memory per in-flight Operation with 100,000 in flight at once (each
//!   waiting in its first step), from `VmRSS` before and after, on `MemoryStore` (so the figure
//!   includes the store's copy of the records and log lines: an upper bound of the engine's own).
//! - `recover`: `recover()` over 10,000 unfinished Operations on the durable sled store, each
//!   stopped after its first step (the resumed Operations run while `recover()` goes on, as they
//!   would in production; they are then stopped by `shutdown()`).
//! - `log size`: bytes on disk per record (step transition) after 1,000 Operations of 10 steps
//!   on the durable sled store; steno (sled `SecStore` of this package) and duroxide (SQLite
//!   file) per step, for comparison.
//! - `syncs`: flush-and-fdatasync rounds per step, alone and with 1,000 in flight.
//! - `takeover` (with `SAGA_TEST_POSTGRES_URL`): 100 Operations waiting in a step on one
//!   executor over PostgreSQL, whose runtime is then dropped at once (its tasks vanish without
//!   releasing a lease, as in a SIGKILL; its connections close); the seconds until a second
//!   executor (lease 1 s, takeover scan every 100 ms) has finished all of them, median of 3.
//! - duroxide on the concurrent workloads (1,000 x 10 steps, SQLite on a file and on tmpfs),
//!   once each: a run takes tens of seconds here, too long for criterion's samples.
//!
//! steno's and duroxide's figures need `--features peers`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use saga_benches::figures::{disk_usage, read_scale, rss_bytes, write_scale};
#[cfg(feature = "peers")]
use saga_benches::{duroxide_peer, steno_peer};
use saga_benches::{engine, fixtures, runtime};
use saga_core::store::Store;
use saga_core::{
    async_trait, Executor, MemoryStore, Resource, Saga, Start, Step, StepContext, StepError,
};
use saga_store::SledStore;
use tokio::sync::watch;

/// A step that waits until its gate opens, counting the Operations that reached it.
struct Gate {
    open: watch::Receiver<bool>,
    entered: Arc<AtomicUsize>,
}

#[async_trait]
impl Step for Gate {
    type Output = ();

    async fn execute(&self, _ctx: &StepContext) -> Result<(), StepError> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.clone();
        let _ = open.wait_for(|open| *open).await;
        Ok(())
    }
}

/// Prints how many duroxide orchestrations failed, and the first failure.
#[cfg(feature = "peers")]
fn report_failures(failures: &[String]) {
    if let Some(first) = failures.first() {
        println!("duroxide: {} orchestrations failed, the first with: {first}", failures.len());
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Bytes of resident memory per Operation with `n` in flight on `store`.
async fn memory_per_operation(store: Arc<dyn Store>, n: usize, keeps_records: bool) -> f64 {
    let (open_tx, open) = watch::channel(false);
    let entered = Arc::new(AtomicUsize::new(0));
    let saga = Saga::builder("gate", 1)
        .step("gate", Gate { open, entered: entered.clone() })
        .step("after", engine::Noop)
        .build()
        .expect("the gate saga is valid");
    let executor = Executor::builder(store)
        .owner("bench")
        .max_running(n)
        .saga(saga)
        .build()
        .expect("building the executor");
    let mut ids = Vec::with_capacity(n);
    let before = rss_bytes();
    let mut starts = tokio::task::JoinSet::new();
    for chunk in 0..64 {
        let executor = executor.clone();
        starts.spawn(async move {
            let mut ids = Vec::new();
            for i in (chunk..n).step_by(64) {
                // A resource each: Operations on one resource would wait for each other.
                let id = executor
                    .start(
                        Start::new("gate", Resource::new("app", format!("web-{i}")))
                            .params(&())
                            .environment("bench")
                            .actor("bench"),
                    )
                    .await
                    .expect("starting an operation");
                ids.push(id);
            }
            ids
        });
    }
    while let Some(started) = starts.join_next().await {
        ids.extend(started.expect("a start task panicked"));
    }
    while entered.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = rss_bytes();
    open_tx.send_replace(true);
    for id in ids {
        // Over a store that keeps nothing, an Operation that ended before its `wait` has no
        // record to answer from: only the ones still running here answer.
        let waited = executor.wait(id).await;
        if keeps_records {
            waited.expect("waiting for an operation");
        }
    }
    let _ = executor.shutdown(Duration::from_secs(60)).await;
    (after.saturating_sub(before)) as f64 / n as f64
}

/// Seconds that `SledStore::open` takes (median of 5) on a closed store of `n` finished
/// Operations of 10 steps.
async fn open_finished(n: usize) -> f64 {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("store");
    {
        let store = Arc::new(SledStore::open(&path).expect("opening the store"));
        let executor = engine::executor(store, 10, 10_000);
        engine::run_many(&executor, n).await;
        let _ = executor.shutdown(Duration::from_secs(60)).await;
    }
    let times = (0..5)
        .map(|_| {
            let started = Instant::now();
            let store = SledStore::open(&path).expect("reopening the store");
            let opened = started.elapsed().as_secs_f64();
            drop(store);
            opened
        })
        .collect();
    median(times)
}

/// Seconds from `SledStore::open` to the end of `recover()` on a closed durable store of
/// 100,000 finished Operations (the activity report's fixture) and 10,000 unfinished ones.
async fn open_and_recover_big() -> f64 {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("store");
    {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&path).expect("opening the store"));
        fixtures::fill_activity(store.clone()).await;
        fixtures::fill_unfinished(store, 10_000).await;
    }
    // Opened once more, so that the log's tail is replayed and checkpointed before the timing.
    drop(SledStore::open(&path).expect("reopening the store"));
    let started = Instant::now();
    let store = Arc::new(SledStore::open(&path).expect("reopening the store"));
    let executor = engine::executor(store, 10, 10_000);
    let report = executor.recover().await.expect("recovering");
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(report.resumed.len(), 10_000, "every unfinished operation resumes");
    let _ = executor.shutdown(Duration::from_secs(60)).await;
    elapsed
}

/// Seconds that `recover()` takes over `n` unfinished Operations.
async fn recover(n: usize) -> f64 {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("store");
    {
        let store = SledStore::open_without_fsync(&path).expect("opening the store");
        fixtures::fill_unfinished(Arc::new(store), n).await;
    }
    let store = Arc::new(SledStore::open(&path).expect("reopening the store durably"));
    let executor = engine::executor(store, 10, 10_000);
    let started = Instant::now();
    let report = executor.recover().await.expect("recovering");
    let recovered = started.elapsed().as_secs_f64();
    assert_eq!(report.resumed.len(), n, "every unfinished operation resumes");
    let _ = executor.shutdown(Duration::from_secs(60)).await;
    recovered
}

/// Seconds from the crash of an executor holding `n` Operations on PostgreSQL (its runtime
/// dropped: no lease released) until another executor finished them all.
fn takeover_after_crash(url: &str, n: usize) -> f64 {
    let schema = format!("saga_bench_takeover_{}_{}", std::process::id(), fastrand::u32(..));
    let options = || saga_store_postgres::PostgresOptions::default().schema(&schema);
    let lease = Duration::from_secs(1);
    let gated = |open: watch::Receiver<bool>, entered: Arc<AtomicUsize>| {
        Saga::builder("gate", 1)
            .step("gate", Gate { open, entered })
            .step("after", engine::Noop)
            .build()
            .expect("the gate saga is valid")
    };
    let crashed = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime for the executor that crashes");
    let (_never_open, closed) = watch::channel(false);
    let entered = Arc::new(AtomicUsize::new(0));
    crashed.block_on(async {
        let store = saga_store_postgres::PostgresStore::connect(url, options())
            .await
            .expect("connecting to PostgreSQL");
        let executor = Executor::builder(Arc::new(store))
            .owner("crashes")
            .lease_ttl(lease)
            .takeover_interval(None)
            .saga(gated(closed, entered.clone()))
            .build()
            .expect("building the executor");
        for i in 0..n {
            let request = Start::new("gate", Resource::new("app", format!("web-{i}"))).params(&());
            executor.start(request).await.expect("starting an operation");
        }
        while entered.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let crash = Instant::now();
    crashed.shutdown_background();

    let rt = runtime();
    let taken = rt.block_on(async {
        let store = Arc::new(
            saga_store_postgres::PostgresStore::connect(url, options())
                .await
                .expect("connecting to PostgreSQL"),
        );
        let (_open_tx, open) = watch::channel(true);
        let executor = Executor::builder(store.clone())
            .owner("takes-over")
            .lease_ttl(lease)
            .takeover_interval(Some(Duration::from_millis(100)))
            .saga(gated(open, Arc::new(AtomicUsize::new(0))))
            .build()
            .expect("building the executor");
        let _ = executor.recover().await.expect("a first scan");
        loop {
            let left = store.list_unfinished().await.expect("listing").ids.len();
            if left == 0 {
                break crash.elapsed().as_secs_f64();
            }
            assert!(crash.elapsed() < Duration::from_secs(60), "{left} left after a minute");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let _ = rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await
    });
    taken
}

/// The environment variable that makes this binary measure one store's memory and exit.
const MEMORY_CHILD: &str = "SAGA_BENCH_MEMORY_CHILD";

/// Operations in flight for the memory figures.
const IN_FLIGHT: usize = 100_000;

/// Runs this binary again to measure the memory per Operation in flight over `store`
/// (`memory`: `MemoryStore`; `discard`: a store that keeps nothing, the executor's share).
fn memory_in_child(store: &str) -> f64 {
    let exe = std::env::current_exe().expect("the bench binary");
    let out = std::process::Command::new(exe)
        .env(MEMORY_CHILD, store)
        .output()
        .expect("running the memory measurement");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{store}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("bytes per operation "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{store}: no figure in {stdout}"))
}

/// The child's side of [`memory_in_child`].
fn memory_child(store: &str) {
    let rt = runtime();
    let (store, keeps): (Arc<dyn Store>, bool) = match store {
        "discard" => (Arc::new(saga_benches::discard::DiscardStore), false),
        _ => (Arc::new(MemoryStore::new()), true),
    };
    let bytes = rt.block_on(memory_per_operation(store, IN_FLIGHT, keeps));
    println!("bytes per operation {bytes}");
}

fn main() {
    if let Ok(store) = std::env::var(MEMORY_CHILD) {
        memory_child(&store);
        return;
    }
    // `cargo bench` passes `--bench` and maybe filters: with filters, only the sections whose
    // name contains one run (`memory`, `recover`, `log`, `duroxide`), and the figures are merged
    // into those saved before.
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let runs = |section: &str| filters.is_empty() || filters.iter().any(|f| section.contains(f));
    let rt = runtime();
    let mut figures = if filters.is_empty() { BTreeMap::new() } else { read_scale() };
    let mut put = |name: &str, value: f64| {
        println!("{name:<48} {value:>14.3}");
        figures.insert(name.to_owned(), value);
    };

    if runs("memory") {
        // Each in a process of its own: freed memory stays resident (the allocator keeps it),
        // so a second measurement in one process would reuse the first one's pages and see
        // almost nothing.
        for (store, name) in [
            ("memory", "memory_bytes_per_inflight_op_memorystore"),
            ("discard", "memory_bytes_per_inflight_op_executor_only"),
        ] {
            put(name, memory_in_child(store));
        }
    }

    if runs("takeover") {
        if let Ok(url) = std::env::var("SAGA_TEST_POSTGRES_URL") {
            let times: Vec<f64> = (0..3).map(|_| takeover_after_crash(&url, 100)).collect();
            put("postgres_takeover_after_crash_seconds", median(times));
        }
    }

    // Opening a store of 1,000 finished Operations (10 steps each), closed cleanly: what every
    // process start (and every CLI command) pays.
    if runs("open") {
        put("open_1k_finished_ms", rt.block_on(open_finished(1_000)) * 1e3);
    }

    // Open and recover() a store of 100,000 finished and 10,000 unfinished Operations, written
    // durably (so in the layout a durable store has: bundles).
    if runs("big") {
        put(
            "open_recover_100k_finished_10k_unfinished_seconds",
            rt.block_on(open_and_recover_big()),
        );
    }

    // recover() over 10,000 unfinished Operations.
    if runs("recover") {
        let times: Vec<f64> = (0..3).map(|_| rt.block_on(recover(10_000))).collect();
        put("recover_10k_seconds", median(times));
    }

    // Log size and syncs.
    const OPERATIONS: usize = 1_000;
    const STEPS: usize = 10;
    let dir = tempfile::tempdir().expect("a temporary directory");
    if runs("log") {
        let path = dir.path().join("saga");
        {
            let store = Arc::new(SledStore::open(&path).expect("opening the store"));
            let executor = engine::executor(store.clone(), STEPS, 10_000);
            let before = store.sync_count();
            rt.block_on(engine::run_one(&executor));
            put(
                "syncs_per_step_alone_10_steps",
                (store.sync_count() - before) as f64 / STEPS as f64,
            );
            let before = store.sync_count();
            rt.block_on(engine::run_many(&executor, OPERATIONS - 1));
            put(
                "syncs_per_step_1000_in_flight",
                (store.sync_count() - before) as f64 / ((OPERATIONS - 1) * STEPS) as f64,
            );
            let _ = rt.block_on(executor.shutdown(Duration::from_secs(60)));
        }
        let records = OPERATIONS * (2 + 2 * STEPS);
        let (allocated, apparent) = disk_usage(&path);
        put("saga_sled_disk_bytes_per_record", allocated as f64 / records as f64);
        put("saga_sled_apparent_bytes_per_record", apparent as f64 / records as f64);
        put("saga_sled_disk_bytes_per_step", allocated as f64 / (OPERATIONS * STEPS) as f64);
        // The write-ahead log's segments are preallocated (a fixed size, whatever the steps):
        // what the steps themselves cost is sled's files after the checkpoint at close.
        let (log_allocated, _) = disk_usage(&path.join("wal"));
        put("saga_wal_disk_bytes", log_allocated as f64);
        put(
            "saga_sled_disk_bytes_per_step_without_log",
            allocated.saturating_sub(log_allocated) as f64 / (OPERATIONS * STEPS) as f64,
        );

        // steno, with `--features peers`.
        #[cfg(feature = "peers")]
        {
            let steno_dir = dir.path().join("steno");
            {
                let store = Arc::new(steno_peer::SledSecStore::open(&steno_dir));
                let workload = steno_peer::Workload::new(STEPS);
                rt.block_on(async {
                    let sec = steno_peer::sec(store.clone());
                    workload.run_many(&sec, OPERATIONS).await;
                    sec.shutdown().await;
                });
            }
            let (allocated, _) = disk_usage(&steno_dir);
            put("steno_sled_disk_bytes_per_step", allocated as f64 / (OPERATIONS * STEPS) as f64);
        }
    }
    // duroxide, with `--features peers`.
    #[cfg(feature = "peers")]
    if runs("duroxide") {
        let duroxide_dir = dir.path().join("duroxide");
        std::fs::create_dir_all(&duroxide_dir).expect("creating a directory");
        let (seconds, failed) = rt.block_on(async {
            let provider = duroxide_peer::sqlite_file(&duroxide_dir).await;
            let duroxide = duroxide_peer::Duroxide::start(provider, STEPS).await;
            let started = Instant::now();
            let failures = duroxide.run_many(OPERATIONS).await;
            report_failures(&failures);
            let seconds = started.elapsed().as_secs_f64();
            duroxide.shutdown().await;
            (seconds, failures.len())
        });
        let (allocated, _) = disk_usage(&duroxide_dir);
        put("duroxide_sqlite_disk_bytes_per_step", allocated as f64 / (OPERATIONS * STEPS) as f64);
        put("duroxide_sqlite_concurrent_steps_per_second", (OPERATIONS * STEPS) as f64 / seconds);
        put("duroxide_sqlite_concurrent_failed_operations", failed as f64);

        let shm = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("a temporary directory");
        let (seconds, failed) = rt.block_on(async {
            let provider = duroxide_peer::sqlite_file(shm.path()).await;
            let duroxide = duroxide_peer::Duroxide::start(provider, STEPS).await;
            let started = Instant::now();
            let failures = duroxide.run_many(OPERATIONS).await;
            report_failures(&failures);
            let seconds = started.elapsed().as_secs_f64();
            duroxide.shutdown().await;
            (seconds, failures.len())
        });
        put("duroxide_tmpfs_concurrent_us_per_step", seconds * 1e6 / (OPERATIONS * STEPS) as f64);
        put("duroxide_tmpfs_concurrent_failed_operations", failed as f64);
    }
    write_scale(&figures);
}
