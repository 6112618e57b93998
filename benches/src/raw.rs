//! The baseline: what the disk allows, a loop of small appends each followed by `fdatasync`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Appends `n` records of `record_bytes` bytes to a new file in `dir`, calling `fdatasync` after
/// each, and returns the time it took. `dir` should be on the filesystem of the store under test
/// (the benches use a temporary directory, as they do for the stores).
pub fn write_fdatasync_loop(dir: &Path, n: usize, record_bytes: usize) -> Duration {
    let path = dir.join(format!("raw-fdatasync-{}", std::process::id()));
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("creating the raw fdatasync file");
    let record = vec![0x5a_u8; record_bytes];
    let started = Instant::now();
    for _ in 0..n {
        file.write_all(&record).expect("writing");
        file.sync_data().expect("fdatasync");
    }
    let elapsed = started.elapsed();
    drop(file);
    let _ = std::fs::remove_file(&path);
    elapsed
}
