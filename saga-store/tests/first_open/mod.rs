//! The store's very first open, interrupted at every call that writes or syncs: by a kill right
//! before the call, or by the call failing with EIO or ENOSPC. Whatever the interrupted open left,
//! the next open works and the store takes writes: an interrupted creation never bricks the
//! directory (sled 0.34 writes its `conf` with two `write`s and fails every later open on a
//! half-written one).
//!
//! The interrupted process is the crate's `open_store` example, under `strace -f -e inject=...`
//! (`when` counts each thread's calls: the example opens the store on its main thread, which
//! makes no other call of those traced).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use saga_core::store::Store;
use saga_store::SledStore;

use crate::support::*;

/// The example that opens a store and closes it, which `cargo test` builds beside the test
/// binary (not `cargo test --test store`: then build it first with
/// `cargo build -p saga-store --example open_store`).
fn open_store_exe() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary");
    let debug = exe.parent().and_then(Path::parent).expect("the target profile directory");
    let example = debug.join("examples").join("open_store");
    assert!(
        example.exists(),
        "{} is missing: run `cargo build -p saga-store --example open_store` first",
        example.display()
    );
    example
}

fn strace_available() -> bool {
    let works = Command::new("strace")
        .args(["-qq", "-e", "trace=none", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !works {
        let _skipped: Option<()> = saga_testkit::ci::unavailable(
            "first_open",
            "strace is not installed (or cannot trace); scripts/test.sh installs it",
        );
    }
    works
}

/// Runs the `open_store` example on `path` under strace tracing `syscall`, with `inject` (an
/// `-e inject=...` expression) if given, writing the trace to `trace` if given. Asserts that it
/// neither panicked nor hung.
fn run_child(path: &Path, syscall: &str, inject: Option<String>, trace: Option<&Path>) {
    let mut command = Command::new("strace");
    command.args(["-f", "-qq", "-e"]).arg(format!("trace={syscall}"));
    if let Some(inject) = inject {
        command.arg("-e").arg(inject);
    }
    command.arg("-o").arg(trace.unwrap_or(Path::new("/dev/null")));
    command.arg(open_store_exe()).arg(path);
    let start = Instant::now();
    let out = command.output().expect("strace runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked at"), "the child panicked: {stderr}");
    assert!(start.elapsed() < Duration::from_secs(60), "the child hung");
}

#[test]
fn a_first_open_interrupted_at_any_write_or_sync_never_bricks_the_store() {
    if !strace_available() {
        return;
    }
    let (dir, _) = temp_store_path();
    let mut cases = 0;
    for syscall in ["write", "pwrite64", "fsync", "fdatasync", "fallocate", "rename", "mkdir"] {
        let plain = dir.path().join(format!("plain-{syscall}"));
        let trace = dir.path().join(format!("trace-{syscall}"));
        run_child(&plain, syscall, None, Some(&trace));
        let calls = std::fs::read_to_string(&trace)
            .expect("reads the trace")
            .lines()
            .filter(|l| {
                l.contains(&format!(" {syscall}(")) || l.starts_with(&format!("{syscall}("))
            })
            .count();
        for k in 1..=calls {
            for fault in ["signal=KILL", "error=EIO", "error=ENOSPC"] {
                let path = dir.path().join(format!("{syscall}-{k}-{}", &fault[..8]));
                let inject = format!("inject={syscall}:{fault}:when={k}");
                run_child(&path, syscall, Some(inject.clone()), None);
                cases += 1;
                let what = format!("the first open interrupted by {inject}");
                let store = SledStore::open(&path)
                    .unwrap_or_else(|e| panic!("{what}: the next open fails: {e}"));
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                let leftovers: Vec<_> = std::fs::read_dir(dir.path())
                    .expect("lists")
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.contains(".creating."))
                    .collect();
                assert!(leftovers.is_empty(), "{what}: left {leftovers:?}");
                runtime.block_on(async {
                    let (id, _) = create(&store, "prod", 10).await;
                    assert_eq!(store.read(id).await.expect("reads").len(), 1, "{what}");
                    let report = store.check(false).await.expect("checks");
                    assert!(report.is_healthy(), "{what}: {:?}", report.findings);
                });
            }
        }
    }
    println!("{cases} interrupted first opens, each followed by a working open");
    assert!(cases > 20, "the sweep interrupted something: {cases} cases");
}

#[test]
fn threads_creating_one_store_at_once_end_with_one_store() {
    let (_dir, path) = temp_store_path();
    let results: Vec<_> = std::thread::scope(|scope| {
        let opens: Vec<_> = (0..4).map(|_| scope.spawn(|| SledStore::open(&path))).collect();
        opens.into_iter().map(|t| t.join().expect("no panic")).collect()
    });
    // One process opens a store at a time: each open either got it or was told it is locked.
    let mut opened = 0;
    for result in results {
        match result {
            Ok(store) => {
                opened += 1;
                drop(store);
            }
            Err(saga_core::store::StoreError::Locked { .. }) => {}
            Err(other) => panic!("an open failed otherwise: {other}"),
        }
    }
    assert!(opened >= 1, "at least one open got the store");
    let parent = path.parent().expect("a parent");
    let names: Vec<_> = std::fs::read_dir(parent)
        .expect("lists")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["store"], "one store and nothing else");
    drop(SledStore::open(&path).expect("opens again"));
}
