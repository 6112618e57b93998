//! Shared helpers of the saga engine's benchmarks: the no-op workload of N steps on the engine
//! ([`engine`]), the raw `write` + `fdatasync` baseline ([`raw`]), the same workload on the peers
//! Oxide's steno (`steno_peer`) and Microsoft's duroxide (`duroxide_peer`), stores filled
//! through the `Store` API ([`fixtures`]), a store that keeps nothing to measure the executor's
//! own memory ([`discard`]) and how the figures are read back ([`figures`]).
//!
//! The peers are behind the `peers` feature (`cargo bench -p saga-benches --features peers`), so
//! that `cargo test --workspace` does not build steno, duroxide and SQLite; without it the
//! benches measure this engine alone and `bench-summary` says "not run" for the peers' rows.
//!
//! The benches themselves are in `benches/*.rs`; `benches/run.sh` runs them all and prints the
//! table of `BENCHMARKS.md`.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod discard;
#[cfg(feature = "peers")]
pub mod duroxide_peer;
pub mod engine;
pub mod figures;
pub mod fixtures;
pub mod raw;
#[cfg(feature = "peers")]
pub mod steno_peer;

/// A multi-threaded tokio runtime with one worker per core (2 on the reference machine), as an
/// embedding control plane would run.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime")
}

/// Runs `run` `iters` times one after the other on `rt` and returns the time taken: the body of
/// criterion's `iter_custom` for async workloads.
pub fn timed<F: std::future::Future<Output = ()>>(
    rt: &tokio::runtime::Runtime,
    iters: u64,
    mut run: impl FnMut() -> F,
) -> std::time::Duration {
    rt.block_on(async {
        let started = std::time::Instant::now();
        for _ in 0..iters {
            run().await;
        }
        started.elapsed()
    })
}
