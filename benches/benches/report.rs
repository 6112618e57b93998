//! The activity report over a large store: `activity_report` for one environment and one week,
//! over a sled store holding 100,000 finished Operations of which 10,000 are in that environment
//! and week (built once, through the `Store` API, on a store opened without fsync; the report
//! only reads).

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput};
use saga_benches::fixtures::{self, PERIOD_END_MS, PERIOD_START_MS, REPORTED_ENVIRONMENT};
use saga_benches::runtime;
use saga_core::report::activity_report;
use saga_core::store::Store;
use saga_core::Timestamp;
use saga_store::SledStore;

fn report(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store: Arc<dyn Store> = Arc::new(
        SledStore::open_without_fsync(dir.path().join("store")).expect("opening the store"),
    );
    rt.block_on(fixtures::fill_activity(store.clone()));
    let rows = rt
        .block_on(activity_report(
            store.as_ref(),
            REPORTED_ENVIRONMENT,
            Timestamp::from_unix_ms(PERIOD_START_MS),
            Timestamp::from_unix_ms(PERIOD_END_MS),
        ))
        .expect("the activity report");
    assert_eq!(rows.len(), 10_000, "the fixture puts 10,000 operations in the period");

    let mut group = c.benchmark_group("activity_report");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(10_000));
    group.bench_function("100k_ops_10k_rows", |b| {
        b.to_async(&rt).iter(|| async {
            let (since, until) =
                (Timestamp::from_unix_ms(PERIOD_START_MS), Timestamp::from_unix_ms(PERIOD_END_MS));
            activity_report(store.as_ref(), REPORTED_ENVIRONMENT, since, until)
                .await
                .expect("the activity report")
        })
    });
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().without_plots().configure_from_args();
    report(&mut criterion);
    criterion.final_summary();
}
