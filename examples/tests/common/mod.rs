//! What the process tests of the examples share (the `quickstart` and `fleet` test targets):
//! a PostgreSQL schema of a test's own, a child process whose output is read as it comes, and
//! waiting for an event with a time limit. Each target uses part of it.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use saga_core::log::{Record, RecordKind};
use saga_core::Outcome;

#[cfg(feature = "postgres")]
pub(crate) use self::db::Db;

/// The workspace's one rule for CI (`saga_testkit::ci`: whether a test runs under CI, and what a
/// test does when a service it needs is missing), compiled from saga-testkit's own source file:
/// saga-testkit as a dev-dependency would be built with the quickstart example too (cargo builds
/// dev-dependencies with every example), and its proptest made the README's first command a
/// fifth slower.
#[path = "../../../saga-testkit/src/ci.rs"]
#[allow(unreachable_pub)]
pub(crate) mod ci;

/// One test that uses the server at a time: they run several processes each, on what may be
/// two cores, and one restarts the server.
pub(crate) fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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

/// A child process whose output is read as it comes; killed (with what it started) when
/// dropped, so that a failing test leaves nothing running.
pub(crate) struct Proc {
    pub(crate) name: String,
    child: Child,
    /// Its stdout's lines, each with the instant (and Unix ms) it was read.
    lines: Arc<Mutex<Vec<(Instant, u64, String)>>>,
    stderr: Arc<Mutex<String>>,
    /// The threads reading stdout and stderr, which end when the process (and its pipes) did.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Proc {
    /// Starts `command` (its stdin closed, its output read), named `name` in messages.
    pub(crate) fn spawn(name: &str, mut command: Command) -> Proc {
        let mut child = command
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
                into.lock().unwrap().push((
                    Instant::now(),
                    saga_core::Timestamp::now().unix_ms(),
                    line,
                ));
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
        Proc {
            name: name.to_owned(),
            child,
            lines,
            stderr,
            readers: vec![stdout_reader, stderr_reader],
        }
    }

    pub(crate) fn stdout_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().iter().map(|(_, _, l)| l.clone()).collect()
    }

    pub(crate) fn stdout(&self) -> String {
        self.stdout_lines().iter().map(|l| format!("{l}\n")).collect()
    }

    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Its output so far, for a failure's message (the last 60 lines of stdout).
    pub(crate) fn shown(&self) -> String {
        let lines = self.stdout_lines();
        let tail = &lines[lines.len().saturating_sub(60)..];
        format!(
            "--- {} stdout (last {} of {} lines):\n{}\n--- {} stderr:\n{}",
            self.name,
            tail.len(),
            lines.len(),
            tail.join("\n"),
            self.name,
            self.stderr()
        )
    }

    /// The instant (and Unix ms) at which the first line matching `matches` was read.
    pub(crate) fn line_seen(&self, matches: impl Fn(&str) -> bool) -> Option<(Instant, u64)> {
        let lines = self.lines.lock().unwrap();
        lines.iter().find(|(_, _, l)| matches(l)).map(|(at, ms, _)| (*at, *ms))
    }

    /// Waits for a line matching `matches`, or fails after `limit`.
    pub(crate) fn wait_for_line(
        &self,
        limit: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> (Instant, u64) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(seen) = self.line_seen(&matches) {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no expected line within {limit:?}\n{}",
                self.name,
                self.shown()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` (a name such as `STOP`) with kill(1), which returns once it is sent.
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.name);
    }

    /// Waits for it to exit, with its last lines read, or kills it after `limit` and fails.
    pub(crate) fn wait_within(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Its last lines: the readers end at the end of its pipes.
                for reader in self.readers.drain(..) {
                    reader.join().unwrap();
                }
                return status;
            }
            if Instant::now() >= deadline {
                kill_tree(self.child.id());
                let _ = self.child.wait();
                panic!("{}: still running after {limit:?} (a hang)\n{}", self.name, self.shown());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then its exit within `limit`.
    pub(crate) fn stop(&mut self, limit: Duration) -> ExitStatus {
        self.signal("TERM");
        self.wait_within(limit)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // A stopped process takes SIGKILL too.
            kill_tree(self.child.id());
            let _ = self.child.wait();
        }
    }
}

/// Every process's output, for a failure's message.
pub(crate) fn show_all(procs: &[&Proc]) -> String {
    procs.iter().map(|p| p.shown()).collect::<Vec<_>>().join("\n")
}

/// Polls `done` every 20 ms until it holds, or fails after `limit` with `shown()`. Returns how
/// long it took.
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

/// Runs `command` to its end, or kills it (and what it started) after `limit` and fails.
pub(crate) fn output_within(command: &mut Command, limit: Duration, what: &str) -> Output {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            kill_tree(child.id());
            let _ = child.wait();
            let stdout = String::from_utf8_lossy(&stdout.join().unwrap()).into_owned();
            let stderr = String::from_utf8_lossy(&stderr.join().unwrap()).into_owned();
            panic!(
                "{what}: still running after {limit:?} (a hang); stdout:\n{stdout}\nstderr:\n{stderr}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

/// SIGKILLs `pid` and its descendants (strace's tracee survives strace's death otherwise).
pub(crate) fn kill_tree(pid: u32) {
    let children = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect::<Vec<_>>();
    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    for child in children {
        if let Ok(child) = child.parse() {
            kill_tree(child);
        }
    }
}

/// A test's own PostgreSQL schema (the `postgres` feature's tests).
#[cfg(feature = "postgres")]
mod db {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use saga_core::log::{LogLine, Record};
    use saga_core::store::Store;
    use saga_core::OperationId;
    use saga_store_postgres::testing::redact;
    use saga_store_postgres::{PostgresOptions, PostgresStore};
    use tokio_postgres::NoTls;

    static SCHEMAS: AtomicU64 = AtomicU64::new(0);

    /// A schema of the test's own (the processes' `--schema`), with a store and a plain connection
    /// in it to read what the processes wrote, and a runtime to run them on; dropped, with
    /// everything in it, at the end.
    pub(crate) struct Db {
        pub(crate) url: String,
        pub(crate) schema: String,
        pub(crate) runtime: tokio::runtime::Runtime,
        pub(crate) store: Arc<PostgresStore>,
        /// A plain connection, made again when it was lost (a restart of the server).
        admin: Mutex<Option<tokio_postgres::Client>>,
    }

    impl Db {
        /// A new schema named `<prefix>_<pid>_<n>_<random>`, its store with `pool` connections.
        pub(crate) fn new(url: &str, prefix: &str, pool: usize) -> Db {
            let n = SCHEMAS.fetch_add(1, Ordering::Relaxed);
            let schema = format!("{prefix}_{}_{n}_{:08x}", std::process::id(), fastrand::u32(..));
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let options = PostgresOptions::default().schema(&schema).pool_size(pool);
            let store = match runtime.block_on(PostgresStore::connect(url, options)) {
                Ok(store) => Arc::new(store),
                Err(e) => panic!("connecting to {} in schema {schema}: {e:?}", redact(url)),
            };
            Db { url: url.to_owned(), schema, runtime, store, admin: Mutex::new(None) }
        }

        /// Runs `query` on the plain connection (connecting first if needed).
        pub(crate) fn query(&self, query: &str) -> Vec<tokio_postgres::Row> {
            let mut admin = self.admin.lock().unwrap();
            if admin.as_ref().is_none_or(|c| c.is_closed()) {
                *admin = Some(
                    self.runtime
                        .block_on(async {
                            let (client, connection) =
                                tokio_postgres::connect(&self.url, NoTls).await?;
                            tokio::spawn(async move {
                                let _ = connection.await;
                            });
                            Ok::<_, tokio_postgres::Error>(client)
                        })
                        .unwrap_or_else(|e| panic!("connecting to {}: {e}", redact(&self.url))),
                );
            }
            let client = admin.as_ref().unwrap();
            self.runtime.block_on(client.query(query, &[])).unwrap()
        }

        /// The unfinished Operations (none of the index damaged).
        pub(crate) fn unfinished(&self) -> Vec<OperationId> {
            let listing = self.runtime.block_on(self.store.list_unfinished()).unwrap();
            assert!(listing.damaged.is_empty(), "{:?}", listing.damaged);
            listing.ids
        }

        /// Every Operation of `environment` (none of the index damaged).
        pub(crate) fn ids(&self, environment: &str) -> Vec<OperationId> {
            let listing = self
                .runtime
                .block_on(self.store.list_environment(environment, 0, u64::MAX))
                .unwrap();
            assert!(listing.damaged.is_empty(), "{:?}", listing.damaged);
            listing.ids
        }

        pub(crate) fn records(&self, id: OperationId) -> Vec<Record> {
            self.runtime.block_on(self.store.read(id)).unwrap()
        }

        pub(crate) fn log(&self, id: OperationId) -> Vec<LogLine> {
            self.runtime.block_on(self.store.read_log(id)).unwrap()
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
}
