//! What the fleet's process tests share beyond `common`: the `fleet` binary, its workers and
//! its flags for a test's schema.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) use crate::common::{outcomes, serial, wait_until, Db, Proc};

/// The `fleet` binary: `SAGA_FLEET_EXE` if set (to run these tests against another build), else
/// the one `cargo build --example fleet` (and `cargo test --workspace`) puts beside the tests.
pub(crate) fn fleet_exe() -> PathBuf {
    if let Some(exe) = std::env::var_os("SAGA_FLEET_EXE") {
        return PathBuf::from(exe);
    }
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().and_then(Path::parent).unwrap();
    let fleet = debug.join("examples").join("fleet");
    assert!(
        fleet.is_file(),
        "{} is missing: build it first (cargo build -p saga-examples --example fleet)",
        fleet.display()
    );
    fleet
}

/// Unix µs now (the journal's clock).
pub(crate) fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// The fleet's flags for a test's schema.
impl Db {
    pub(crate) fn args(&self) -> Vec<String> {
        ["--store", &self.url, "--schema", &self.schema].map(String::from).to_vec()
    }
}

/// The `fleet` binary with `args`.
pub(crate) fn fleet(args: &[String]) -> Command {
    let mut command = Command::new(fleet_exe());
    command.args(args);
    command
}

/// A `fleet worker` named `owner` over `db`, ready (it printed so).
pub(crate) fn worker(db: &Db, owner: &str, journal: &Path, extra: &[&str]) -> Proc {
    let mut args = db.args();
    args.extend(["--owner", owner, "--journal", journal.to_str().unwrap()].map(String::from));
    args.extend(extra.iter().map(|a| a.to_string()));
    args.push("worker".into());
    let proc = Proc::spawn(owner, fleet(&args));
    proc.wait_for_line(Duration::from_secs(60), |l| l == format!("worker {owner} ready"));
    proc
}

/// Runs a `fleet` command to its end, or kills it after `limit` and fails: its stdout.
pub(crate) fn fleet_output(args: &[String], limit: Duration) -> String {
    let mut proc = Proc::spawn("fleet", fleet(args));
    let status = proc.wait_within(limit);
    assert!(status.success(), "fleet {args:?}: {status}\n{}", proc.shown());
    proc.stdout_lines().join("\n")
}
