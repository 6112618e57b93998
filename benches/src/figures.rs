//! Reading the figures back: resident memory, bytes on disk, criterion's estimates and the
//! figures of the `scale` bench, for the summary table.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The process's resident set size in bytes (`VmRSS` of `/proc/self/status`).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .expect("VmRSS in /proc/self/status")
}

/// Bytes on disk under `dir`: (allocated blocks, apparent size), summed over every file.
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    let mut allocated = 0;
    let mut apparent = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("listing a directory") {
            let entry = entry.expect("listing a directory");
            let meta = entry.metadata().expect("reading metadata");
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                allocated += meta.blocks() * 512;
                apparent += meta.len();
            }
        }
    }
    (allocated, apparent)
}

/// The cargo target directory the running bench binary was built in: `CARGO_TARGET_DIR` if set,
/// else the parent of the profile directory (`release`, `debug`) above the executable.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the bench executable's path");
    exe.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "release" || n == "debug"))
        .and_then(Path::parent)
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// Where criterion writes its results.
pub fn criterion_dir() -> PathBuf {
    target_dir().join("criterion")
}

/// The file where the `scale` bench writes its figures (JSON, name to number).
pub fn scale_file() -> PathBuf {
    criterion_dir().join("saga-scale.json")
}

/// Writes the `scale` bench's figures.
pub fn write_scale(figures: &BTreeMap<String, f64>) {
    let path = scale_file();
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("creating criterion's dir");
    let json = serde_json::to_vec_pretty(figures).expect("encoding figures");
    std::fs::write(&path, json).expect("writing the scale figures");
}

/// Reads the `scale` bench's figures (empty if it has not run).
pub fn read_scale() -> BTreeMap<String, f64> {
    std::fs::read(scale_file())
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Criterion's median time per iteration, in nanoseconds, of benchmark `id` (its
/// `group/function` path) in the last run, if it ran.
pub fn criterion_median_ns(id: &str) -> Option<f64> {
    let path = criterion_dir().join(id).join("new").join("estimates.json");
    let bytes = std::fs::read(path).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    json["median"]["point_estimate"].as_f64()
}
