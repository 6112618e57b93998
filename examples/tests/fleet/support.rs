//! What the fleet's process tests share: `fleet` processes whose output is read as it comes, a
//! PostgreSQL schema of each test's own (needs `SAGA_TEST_POSTGRES_URL`), one test at a time,
//! and waiting for events with a time limit.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use saga_core::log::{Record, RecordKind};
use saga_core::store::Store;
use saga_core::{OperationId, Outcome};
use saga_store_postgres::testing::redact;
use saga_store_postgres::{PostgresOptions, PostgresStore};
use tokio_postgres::NoTls;

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

/// One test that uses the server at a time: they run several processes each, on what may be
/// two cores.
pub(crate) fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

static SCHEMAS: AtomicU64 = AtomicU64::new(0);

/// A schema of the test's own (the fleet's `--schema`), with a store in it to read what the
/// processes wrote (and a runtime to run it on); dropped, with everything in it, at the end.
pub(crate) struct Db {
    pub(crate) url: String,
    pub(crate) schema: String,
    pub(crate) runtime: tokio::runtime::Runtime,
    pub(crate) store: Arc<PostgresStore>,
}

impl Db {
    pub(crate) fn new(url: &str) -> Db {
        let n = SCHEMAS.fetch_add(1, Ordering::Relaxed);
        let schema = format!("fleet_test_{}_{n}_{:08x}", std::process::id(), fastrand::u32(..));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let options = PostgresOptions::default().schema(&schema).pool_size(8);
        let store = match runtime.block_on(PostgresStore::connect(url, options)) {
            Ok(store) => Arc::new(store),
            Err(e) => panic!("connecting to {} in schema {schema}: {e:?}", redact(url)),
        };
        Db { url: url.to_owned(), schema, runtime, store }
    }

    /// The fleet's flags for this store.
    pub(crate) fn args(&self) -> Vec<String> {
        ["--store", &self.url, "--schema", &self.schema].map(String::from).to_vec()
    }

    pub(crate) fn unfinished(&self) -> Vec<OperationId> {
        let listing = self.runtime.block_on(self.store.list_unfinished()).unwrap();
        assert!(listing.damaged.is_empty(), "{:?}", listing.damaged);
        listing.ids
    }

    pub(crate) fn records(&self, id: OperationId) -> Vec<Record> {
        self.runtime.block_on(self.store.read(id)).unwrap()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let drop = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
        let dropped = self.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), async {
                let (client, connection) = tokio_postgres::connect(&self.url, NoTls).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                client.batch_execute(&drop).await
            })
            .await
        });
        if !matches!(dropped, Ok(Ok(()))) {
            let _ = writeln!(std::io::stderr(), "could not drop test schema {}", self.schema);
        }
    }
}

/// The outcomes recorded in an Operation's log.
pub(crate) fn outcomes(records: &[Record]) -> Vec<Outcome> {
    records
        .iter()
        .filter_map(|r| match &r.kind {
            RecordKind::OperationFinished { outcome } => Some(outcome.clone()),
            _ => None,
        })
        .collect()
}

/// A `fleet` process whose output is read as it comes; killed when dropped, so that a failing
/// test leaves nothing running.
pub(crate) struct Proc {
    pub(crate) name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    /// The threads reading stdout and stderr, which end with the process's pipes.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Proc {
    pub(crate) fn spawn(name: &str, args: &[String]) -> Proc {
        let mut child = Command::new(fleet_exe())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = BufReader::new(child.stdout.take().unwrap());
        let into = lines.clone();
        let stdout_reader = std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                into.lock().unwrap().push(line);
            }
        });
        let mut err = child.stderr.take().unwrap();
        let into = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                into.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let readers = vec![stdout_reader, stderr_reader];
        Proc { name: name.to_owned(), child, lines, stderr, readers }
    }

    /// A `fleet worker` named `owner` over `db`, ready (it printed so).
    pub(crate) fn worker(db: &Db, owner: &str, journal: &Path, extra: &[&str]) -> Proc {
        let mut args = db.args();
        args.extend(["--owner", owner, "--journal", journal.to_str().unwrap()].map(String::from));
        args.extend(extra.iter().map(|a| a.to_string()));
        args.push("worker".into());
        let proc = Proc::spawn(owner, &args);
        proc.wait_for_line(Duration::from_secs(60), |l| l == format!("worker {owner} ready"));
        proc
    }

    pub(crate) fn stdout_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Its output so far, for a failure's message (the last 40 lines of stdout).
    pub(crate) fn shown(&self) -> String {
        let lines = self.stdout_lines();
        let tail = &lines[lines.len().saturating_sub(40)..];
        format!(
            "--- {} stdout (last {} lines):\n{}\n--- {} stderr:\n{}",
            self.name,
            tail.len(),
            tail.join("\n"),
            self.name,
            self.stderr.lock().unwrap()
        )
    }

    pub(crate) fn wait_for_line(&self, limit: Duration, matches: impl Fn(&str) -> bool) {
        let what = format!("{}: the expected line", self.name);
        wait_until(
            limit,
            &what,
            || self.shown(),
            || self.stdout_lines().iter().any(|l| matches(l)),
        );
    }

    /// Sends `signal` (a name such as `STOP`) with kill(1), which returns once it is sent.
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.name);
    }

    /// SIGTERM, then its exit within `limit` (or a failure: a hang).
    pub(crate) fn stop(&mut self, limit: Duration) -> ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.join_readers();
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("{}: still running {limit:?} after SIGTERM\n{}", self.name, self.shown());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Proc {
    /// Its last lines: the readers end at the end of its pipes, once it exited.
    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // A stopped process takes SIGKILL too.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `done` every 20 ms until it holds, or fails after `limit` with `shown()`.
pub(crate) fn wait_until(
    limit: Duration,
    what: &str,
    shown: impl Fn() -> String,
    mut done: impl FnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        if done() {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}\n{}", shown());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a `fleet` command to its end, or kills it after `limit` and fails: its stdout.
pub(crate) fn fleet_output(args: &[String], limit: Duration) -> String {
    let mut proc = Proc::spawn("fleet", args);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = proc.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "fleet {args:?}: a hang\n{}", proc.shown());
        std::thread::sleep(Duration::from_millis(10));
    };
    proc.join_readers();
    assert!(status.success(), "fleet {args:?}: {status}\n{}", proc.shown());
    proc.stdout_lines().join("\n")
}
