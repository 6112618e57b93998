//! Prints the table of `BENCHMARKS.md` from the last `cargo bench -p saga-benches` run: criterion's
//! medians (`target/criterion/*/*/new/estimates.json`) and the `scale` bench's figures, with the
//! ratios between measurements of the same run and whether each target holds.

use saga_benches::figures::{criterion_dir, criterion_median_ns, read_scale};

/// Steps per second of a criterion benchmark that ran `steps` steps per iteration.
fn rate(id: &str, steps: f64) -> Option<f64> {
    criterion_median_ns(id).map(|ns| steps / (ns / 1e9))
}

fn show(value: Option<f64>, unit: &str) -> String {
    match value {
        Some(v) if v >= 100.0 => format!("{v:.0} {unit}"),
        Some(v) => format!("{v:.2} {unit}"),
        None => "not run".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? / b?)
}

fn verdict(holds: Option<bool>) -> &'static str {
    match holds {
        Some(true) => "holds",
        Some(false) => "DOES NOT HOLD",
        None => "not run",
    }
}

fn row(measure: &str, figure: String, comparison: String, target: &str) {
    println!("| {measure} | {figure} | {comparison} | {target} |");
}

fn main() {
    println!("results from {}", criterion_dir().display());
    println!();
    println!("| measure | figure (median) | ratio in the same run | target |");
    println!("|---|---|---|---|");

    let raw = rate("durable_sequential_100/raw_fdatasync", 100.0);
    let seq = rate("durable_sequential_100/saga_sled", 100.0);
    let steno_seq = rate("durable_sequential_100/steno_sled", 100.0);
    let duroxide_seq = rate("durable_sequential_100/duroxide_sqlite", 100.0);
    row(
        "raw write+fdatasync loop (128 B appends)",
        show(raw, "syncs/s"),
        "1.00 (baseline)".into(),
        "",
    );
    let r = ratio(seq, raw);
    row(
        "sequential, 1 Operation x 100 steps, durable sled",
        show(seq, "steps/s"),
        format!("{} of raw", show(r, "x")),
        &format!(">= 0.80 x raw: {}", verdict(r.map(|r| r >= 0.8))),
    );
    let pg_seq = rate("durable_sequential_100/saga_postgres", 100.0);
    row(
        "  the same on PostgreSQL (loopback, synchronous_commit on)",
        show(pg_seq, "steps/s"),
        format!("{} of raw", show(ratio(pg_seq, raw), "x")),
        "reported",
    );
    row(
        "  steno, sled SecStore (same durability)",
        show(steno_seq, "steps/s"),
        format!("saga / steno = {}", show(ratio(seq, steno_seq), "x")),
        "",
    );
    row(
        "  duroxide, SQLite file",
        show(duroxide_seq, "steps/s"),
        format!("saga / duroxide = {}", show(ratio(seq, duroxide_seq), "x")),
        "",
    );

    let conc = rate("durable_concurrent_1000x10/saga_sled", 10_000.0);
    let steno_conc = rate("durable_concurrent_1000x10/steno_sled", 10_000.0);
    let scale = read_scale();
    let get = |name: &str| scale.get(name).copied();
    let duroxide_conc = get("duroxide_sqlite_concurrent_steps_per_second");
    row(
        "concurrent, 1,000 Operations x 10 steps, durable sled",
        show(conc, "steps/s"),
        format!("{} of raw", show(ratio(conc, raw), "x")),
        &format!(">= 30,000 steps/s: {}", verdict(conc.map(|c| c >= 30_000.0))),
    );
    let pg_conc = rate("durable_concurrent_1000x10/saga_postgres", 10_000.0);
    row(
        "  the same on PostgreSQL (loopback, synchronous_commit on)",
        format!(
            "{} ({} Operations/s)",
            show(pg_conc, "steps/s"),
            show(pg_conc.map(|s| s / 10.0), "")
        ),
        format!("postgres / sled = {}", show(ratio(pg_conc, conc), "x")),
        "reported",
    );
    row(
        "  steno, sled SecStore",
        show(steno_conc, "steps/s"),
        format!("saga / steno = {}", show(ratio(conc, steno_conc), "x")),
        "",
    );
    row(
        "  duroxide, SQLite file (one run, `scale` bench)",
        format!(
            "{} ({} of 1,000 Operations failed)",
            show(duroxide_conc, "steps/s"),
            get("duroxide_sqlite_concurrent_failed_operations")
                .map_or("?".to_owned(), |n| format!("{n:.0}"))
        ),
        format!("saga / duroxide = {}", show(ratio(conc, duroxide_conc), "x")),
        "",
    );

    let per_step = |id: &str, steps: f64| criterion_median_ns(id).map(|ns| ns / steps / 1000.0);
    for (label, group, steps) in [
        ("engine overhead, 1 x 100 steps, MemoryStore", "memory_sequential_100", 100.0),
        ("engine overhead, 1,000 x 10 steps, MemoryStore", "memory_concurrent_1000x10", 10_000.0),
    ] {
        let saga = per_step(&format!("{group}/saga_memory"), steps);
        let steno = per_step(&format!("{group}/steno_memory"), steps);
        let duroxide = if steps > 100.0 {
            get("duroxide_tmpfs_concurrent_us_per_step")
        } else {
            per_step(&format!("{group}/duroxide_tmpfs"), steps)
        };
        row(
            label,
            show(saga, "us/step"),
            "".into(),
            &format!("<= 5 us/step: {}", verdict(saga.map(|s| s <= 5.0))),
        );
        row(
            "  steno, InMemorySecStore",
            show(steno, "us/step"),
            format!("steno / saga = {}", show(ratio(steno, saga), "x")),
            "",
        );
        row(
            "  duroxide, SQLite file on tmpfs",
            show(duroxide, "us/step"),
            format!("duroxide / saga = {}", show(ratio(duroxide, saga), "x")),
            "",
        );
    }

    let takeover = get("postgres_takeover_after_crash_seconds");
    row(
        "takeover on PostgreSQL: 100 Operations of a crashed executor finished by another",
        show(takeover, "s"),
        "lease 1 s, scan every 100 ms; median of 3".into(),
        "reported",
    );
    let open = get("open_1k_finished_ms");
    row(
        "SledStore::open of 1,000 finished Operations (10 steps each), closed cleanly",
        show(open, "ms"),
        "median of 5".into(),
        &format!("<= 50 ms: {}", verdict(open.map(|o| o <= 50.0))),
    );
    let big = get("open_recover_100k_finished_10k_unfinished_seconds");
    row(
        "open + recover(), 100,000 finished and 10,000 unfinished Operations, durable sled",
        show(big, "s"),
        "one run".into(),
        &format!("<= 1 s: {}", verdict(big.map(|b| b <= 1.0))),
    );
    let recover = get("recover_10k_seconds");
    row(
        "recover() over 10,000 unfinished Operations",
        show(recover, "s"),
        "median of 3 runs".into(),
        &format!("<= 1 s: {}", verdict(recover.map(|r| r <= 1.0))),
    );
    let memory = get("memory_bytes_per_inflight_op_memorystore");
    row(
        "resident memory per in-flight Operation, 100,000 in flight, MemoryStore",
        show(memory, "B"),
        "".into(),
        &format!("<= 4096 B: {}", verdict(memory.map(|m| m <= 4096.0))),
    );
    let executor_only = get("memory_bytes_per_inflight_op_executor_only");
    row(
        "  the executor's share: the same over a store that keeps nothing",
        show(executor_only, "B"),
        format!(
            "MemoryStore's copy of the log: {}",
            show(memory.zip(executor_only).map(|(m, e)| m - e), "B")
        ),
        &format!("<= 4096 B: {}", verdict(executor_only.map(|m| m <= 4096.0))),
    );
    let bytes = get("saga_sled_disk_bytes_per_step");
    row(
        "log size on disk, 1,000 x 10 steps, durable sled",
        format!(
            "{} per record, {} per step",
            show(get("saga_sled_disk_bytes_per_record"), "B"),
            show(bytes, "B")
        ),
        format!(
            "apparent size {} per record",
            show(get("saga_sled_apparent_bytes_per_record"), "B")
        ),
        "reported",
    );
    let without_log = get("saga_sled_disk_bytes_per_step_without_log");
    row(
        "  of which sled (records, log lines, indexes), after the checkpoint at close",
        show(without_log, "B per step"),
        format!(
            "plus the write-ahead log's preallocated segments, {}",
            show(get("saga_wal_disk_bytes").map(|b| b / 1_048_576.0), "MiB")
        ),
        &format!("<= 1024 B per step: {}", verdict(without_log.map(|b| b <= 1024.0))),
    );
    row(
        "  steno, sled SecStore",
        show(get("steno_sled_disk_bytes_per_step"), "B per step"),
        format!(
            "steno / saga = {}",
            show(ratio(get("steno_sled_disk_bytes_per_step"), bytes), "x")
        ),
        "",
    );
    row(
        "  duroxide, SQLite file (db + WAL)",
        show(get("duroxide_sqlite_disk_bytes_per_step"), "B per step"),
        format!(
            "duroxide / saga = {}",
            show(ratio(get("duroxide_sqlite_disk_bytes_per_step"), bytes), "x")
        ),
        "",
    );
    row(
        "syncs per step (alone / 1,000 in flight)",
        format!(
            "{} / {}",
            show(get("syncs_per_step_alone_10_steps"), ""),
            show(get("syncs_per_step_1000_in_flight"), "")
        ),
        "".into(),
        "",
    );
    let report = criterion_median_ns("activity_report/100k_ops_10k_rows").map(|ns| ns / 1e6);
    row(
        "activity_report: 10,000 rows out of 100,000 Operations (sled)",
        show(report, "ms"),
        format!("{} per row", show(report.map(|ms| ms * 1000.0 / 10_000.0), "us")),
        "reported",
    );
}
