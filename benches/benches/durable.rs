//! Durable throughput, on the reference machine's disk, compared within one run:
//!
//! - `durable_sequential_100`: one Operation of 100 no-op steps on the durable sled store
//!   (`SledStore::open`: sled flush + `fdatasync` per append), against `raw_fdatasync`, a loop of
//!   100 appends of 128 bytes each followed by `fdatasync` on a file in the same temporary
//!   directory; and the same saga on steno (over the sled `SecStore` of this package, same
//!   durability) and duroxide (its SQLite provider on a file).
//! - `durable_concurrent_1000x10`: 1,000 Operations of 10 no-op steps in flight at once, where
//!   group commit lets concurrent appends share one sync; steno too (duroxide, about a minute
//!   per run here, is run once by the `scale` bench).
//!
//! Throughput is in steps (elements) per second. The peers run with `--features peers`.
//!
//! With `SAGA_TEST_POSTGRES_URL` set (`bench run.sh` starts the server of
//! `scripts/services/postgres.sh` and sets it), both groups also run `saga_postgres`: the same
//! workload on `PostgresStore`, in a fresh schema, over loopback to a server on the same disk
//! (`fsync` and `synchronous_commit` on).

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput};
#[cfg(feature = "peers")]
use saga_benches::{duroxide_peer, steno_peer};
use saga_benches::{engine, raw, runtime, timed};
use saga_store::SledStore;

/// A `PostgresStore` in a fresh schema of the database of `SAGA_TEST_POSTGRES_URL`, if set.
fn postgres(rt: &tokio::runtime::Runtime) -> Option<Arc<saga_store_postgres::PostgresStore>> {
    let url = std::env::var("SAGA_TEST_POSTGRES_URL").ok()?;
    let schema = format!("saga_bench_{}_{}", std::process::id(), fastrand::u32(..));
    let options = saga_store_postgres::PostgresOptions::default().schema(&schema);
    let store = rt
        .block_on(saga_store_postgres::PostgresStore::connect(&url, options))
        .expect("connecting to the benchmark's PostgreSQL");
    Some(Arc::new(store))
}

fn sequential(c: &mut Criterion) {
    const STEPS: usize = 100;
    let rt = runtime();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut group = c.benchmark_group("durable_sequential_100");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Elements(STEPS as u64));

    group.bench_function("raw_fdatasync", |b| {
        b.iter_custom(|iters| {
            (0..iters).map(|_| raw::write_fdatasync_loop(dir.path(), STEPS, 128)).sum()
        })
    });

    let store = Arc::new(SledStore::open(dir.path().join("saga")).expect("opening the store"));
    let executor = engine::executor(store, STEPS, 10_000);
    group.bench_function("saga_sled", |b| {
        b.iter_custom(|iters| timed(&rt, iters, || engine::run_one(&executor)))
    });
    let _ = rt.block_on(executor.shutdown(Duration::from_secs(60)));

    if let Some(store) = postgres(&rt) {
        let executor = engine::executor(store, STEPS, 10_000);
        group.bench_function("saga_postgres", |b| {
            b.iter_custom(|iters| timed(&rt, iters, || engine::run_one(&executor)))
        });
        let _ = rt.block_on(executor.shutdown(Duration::from_secs(60)));
    }

    // The peers, with `--features peers`.
    #[cfg(feature = "peers")]
    {
        let steno = steno_peer::Workload::new(STEPS);
        let sec = rt.block_on(async {
            steno_peer::sec(Arc::new(steno_peer::SledSecStore::open(&dir.path().join("steno"))))
        });
        group.bench_function("steno_sled", |b| {
            b.iter_custom(|iters| timed(&rt, iters, || steno.run_one(&sec)))
        });
        rt.block_on(sec.shutdown());

        let duroxide = rt.block_on(async {
            duroxide_peer::Duroxide::start(duroxide_peer::sqlite_file(dir.path()).await, STEPS)
                .await
        });
        group.bench_function("duroxide_sqlite", |b| {
            b.iter_custom(|iters| timed(&rt, iters, || duroxide.run_one()))
        });
        rt.block_on(duroxide.shutdown());
    }
    group.finish();
}

fn concurrent(c: &mut Criterion) {
    const OPERATIONS: usize = 1_000;
    const STEPS: usize = 10;
    let rt = runtime();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut group = c.benchmark_group("durable_concurrent_1000x10");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements((OPERATIONS * STEPS) as u64));

    let store = Arc::new(SledStore::open(dir.path().join("saga")).expect("opening the store"));
    let executor = engine::executor(store, STEPS, 10_000);
    group.bench_function("saga_sled", |b| {
        b.iter_custom(|iters| timed(&rt, iters, || engine::run_many(&executor, OPERATIONS)))
    });
    let _ = rt.block_on(executor.shutdown(Duration::from_secs(60)));

    if let Some(store) = postgres(&rt) {
        let executor = engine::executor(store, STEPS, 10_000);
        group.bench_function("saga_postgres", |b| {
            b.iter_custom(|iters| timed(&rt, iters, || engine::run_many(&executor, OPERATIONS)))
        });
        let _ = rt.block_on(executor.shutdown(Duration::from_secs(60)));
    }

    // steno, with `--features peers`.
    #[cfg(feature = "peers")]
    {
        let steno = steno_peer::Workload::new(STEPS);
        let sec = rt.block_on(async {
            steno_peer::sec(Arc::new(steno_peer::SledSecStore::open(&dir.path().join("steno"))))
        });
        group.bench_function("steno_sled", |b| {
            b.iter_custom(|iters| timed(&rt, iters, || steno.run_many(&sec, OPERATIONS)))
        });
        rt.block_on(sec.shutdown());
    }

    // duroxide takes about a minute for one run of this workload here, too long for criterion's
    // ten samples: the `scale` bench runs it once and reports it.
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().without_plots().configure_from_args();
    sequential(&mut criterion);
    concurrent(&mut criterion);
    criterion.final_summary();
}
