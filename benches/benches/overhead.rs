//! Engine overhead without a disk: the same no-op workloads on in-memory stores, so that the
//! time per step is the engine's own work (planning, records, the fold, log lines, tasks).
//!
//! - `memory_sequential_100`: one Operation of 100 no-op steps on `MemoryStore`; steno on its
//!   `InMemorySecStore`; duroxide on its SQLite provider on tmpfs (`/dev/shm`).
//! - `memory_concurrent_1000x10`: 1,000 Operations of 10 steps at once, same stores (duroxide
//!   in the `scale` bench, once: a run takes tens of seconds).
//!
//! Throughput is in steps (elements) per second; time per step is the inverse. The peers run
//! with `--features peers`.

use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "peers")]
use criterion::{measurement::WallTime, BenchmarkGroup};
use criterion::{Criterion, SamplingMode, Throughput};
#[cfg(feature = "peers")]
use saga_benches::{duroxide_peer, steno_peer};
use saga_benches::{engine, runtime, timed};
use saga_core::MemoryStore;

fn workload(c: &mut Criterion, name: &str, operations: usize, steps: usize) {
    let rt = runtime();
    let mut group = c.benchmark_group(name);
    group
        .sample_size(20)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements((operations * steps) as u64));
    let run_saga = |executor: saga_core::Executor| async move {
        if operations == 1 {
            engine::run_one(&executor).await
        } else {
            engine::run_many(&executor, operations).await
        }
    };

    // A fresh store per iteration batch would hide nothing: MemoryStore keeps finished
    // Operations, so it grows across iterations as a long-running process's would.
    let executor = engine::executor(Arc::new(MemoryStore::new()), steps, 10_000);
    group.bench_function("saga_memory", |b| {
        b.iter_custom(|iters| timed(&rt, iters, || run_saga(executor.clone())))
    });
    let _ = rt.block_on(executor.shutdown(Duration::from_secs(60)));

    #[cfg(feature = "peers")]
    peers(&rt, &mut group, operations, steps);
    group.finish();
}

/// steno and duroxide on the same workload (with `--features peers`).
#[cfg(feature = "peers")]
fn peers(
    rt: &tokio::runtime::Runtime,
    group: &mut BenchmarkGroup<'_, WallTime>,
    operations: usize,
    steps: usize,
) {
    let steno = steno_peer::Workload::new(steps);
    let sec = rt.block_on(async { steno_peer::sec(Arc::new(steno::InMemorySecStore::new())) });
    group.bench_function("steno_memory", |b| {
        b.iter_custom(|iters| {
            timed(rt, iters, || async {
                if operations == 1 {
                    steno.run_one(&sec).await
                } else {
                    steno.run_many(&sec, operations).await
                }
            })
        })
    });
    rt.block_on(sec.shutdown());

    if operations > 1 {
        // duroxide takes tens of seconds per run of the concurrent workload: the `scale` bench
        // runs it once.
        return;
    }
    // duroxide's `SqliteProvider::new_in_memory` (shared-cache SQLite) fails under concurrency
    // with "database is deadlocked" (SQLITE_LOCKED), so its file provider runs on tmpfs instead:
    // no disk, and fdatasync costs nothing there.
    let shm = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("a temporary directory");
    let duroxide = rt.block_on(async {
        duroxide_peer::Duroxide::start(duroxide_peer::sqlite_file(shm.path()).await, steps).await
    });
    group.bench_function("duroxide_tmpfs", |b| {
        b.iter_custom(|iters| timed(rt, iters, || async { duroxide.run_one().await }))
    });
    rt.block_on(duroxide.shutdown());
}

fn sequential(c: &mut Criterion) {
    workload(c, "memory_sequential_100", 1, 100);
}

fn concurrent(c: &mut Criterion) {
    workload(c, "memory_concurrent_1000x10", 1_000, 10);
}

fn main() {
    let mut criterion = Criterion::default().without_plots().configure_from_args();
    sequential(&mut criterion);
    concurrent(&mut criterion);
    criterion.final_summary();
}
