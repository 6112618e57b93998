//! The quickstart on PostgreSQL, as a user runs it: several processes (`submit`, `worker`,
//! plain runs, `cancel`) sharing one database, against the real server of
//! `SAGA_TEST_POSTGRES_URL` (`scripts/test.sh` starts it with `scripts/services/postgres.sh`).
//! A worker killed, stalled (SIGSTOP) past its lease, or cut off from the database through a
//! proxy that the test controls; the server restarted under 200 Operations; a cancel from
//! another process; ten Operations on one site from two submitters. Each test has a schema of
//! its own (`--schema`, dropped afterwards), ends within a time limit, and reads the store
//! afterwards: one `OperationFinished` per Operation, and the world under `--data` matching it.
//!
//! Without `SAGA_TEST_POSTGRES_URL` (or a server answering there) each test prints
//! `SKIPPED <test>: ...` and passes, except under `CI=true`, where it fails.
//!
//! The tests run one at a time (they share the server, one restarts it, and each runs several
//! processes on what may be two cores).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use saga_core::log::{LogLine, Record, RecordKind};
use saga_core::state::OperationState;
use saga_core::{OperationId, Outcome};

use super::common::{outcomes, output_within, serial, show_all, wait_until, Db, Proc};
use super::{quickstart, site_of, world_matches};

/// The quickstart with `args`.
fn quickstart_with(args: &[String]) -> Command {
    let mut command = quickstart();
    command.args(args);
    command
}

// ---------------------------------------------------------------------------------------------
// The database (the approach of saga-store-postgres/tests/support/mod.rs).

use saga_store_postgres::testing::{database_url as url, server_addr};

/// The quickstart's own uses of a test's schema.
impl Db {
    /// The quickstart's flags for this store, with the world under `data`.
    fn args(&self, data: &Path) -> Vec<String> {
        self.args_via(data, &self.url)
    }

    /// The same, through another URL (a proxy) to the same database.
    fn args_via(&self, data: &Path, url: &str) -> Vec<String> {
        vec![
            "--data".into(),
            data.to_str().unwrap().into(),
            "--store".into(),
            url.into(),
            "--schema".into(),
            self.schema.clone(),
        ]
    }

    /// The sessions of quickstarts (their application names are `quickstart <owner>`) that are
    /// not idle: state, wait, transaction age and query, for a failure's message.
    fn activity(&self) -> String {
        let rows = self.query(
            "SELECT application_name || ': ' || state || coalesce(' waiting on ' || wait_event_type \
             || '/' || wait_event, '') || coalesce(', transaction open ' || \
             round(extract(epoch FROM clock_timestamp() - xact_start)::numeric, 1) || ' s', '') \
             || coalesce(', holds xid ' || backend_xid::text, '') || ': ' || left(query, 200) \
             FROM pg_stat_activity WHERE application_name LIKE 'quickstart %' AND state <> 'idle'",
        );
        let lines: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
        format!("--- PostgreSQL sessions not idle:\n{}", lines.join("\n"))
    }

    /// Every Operation's lease holder, lease expiry (Unix ms, the database's clock) and whether
    /// it finished, read from the table.
    fn leases(&self) -> HashMap<OperationId, (String, u64, bool)> {
        let rows = self.query(&format!(
            "SELECT id, lease_owner, lease_expires_ms, finished FROM {}.operations",
            self.schema
        ));
        rows.iter()
            .map(|row| {
                let id: Vec<u8> = row.get(0);
                let owner: Vec<u8> = row.get(1);
                let expires: i64 = row.get(2);
                let id = OperationId::from_u128(u128::from_be_bytes(id.try_into().unwrap()));
                (id, (String::from_utf8(owner).unwrap(), expires as u64, row.get(3)))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// A worker named `owner`, ready (it printed that it adopts operations).
fn worker(db: &Db, data: &Path, owner: &str, extra: &[&str]) -> Proc {
    worker_via(db, data, &db.url, owner, extra)
}

fn worker_via(db: &Db, data: &Path, url: &str, owner: &str, extra: &[&str]) -> Proc {
    let mut args = db.args_via(data, url);
    args.extend(["--owner".into(), owner.into()]);
    args.extend(extra.iter().map(|a| a.to_string()));
    args.push("worker".into());
    let proc = Proc::spawn(owner, quickstart_with(&args));
    proc.wait_for_line(Duration::from_secs(30), |l| l.contains("adopting operations"));
    proc
}

/// `quickstart submit` with `extra`; the ids and sites it printed.
fn submit(db: &Db, data: &Path, extra: &[&str]) -> Vec<(OperationId, String)> {
    let mut args = db.args(data);
    args.push("submit".into());
    args.extend(extra.iter().map(|a| a.to_string()));
    let out = output_within(quickstart().args(&args), Duration::from_secs(60), "submit");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
        .lines()
        .map(|line| {
            let rest = line.strip_prefix("submitted ").unwrap_or_else(|| panic!("{stdout}"));
            let (id, site) = rest.split_once(" on site ").unwrap();
            (id.parse().unwrap(), site.to_owned())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// What the store and the world hold.

fn first_at(records: &[Record], matches: impl Fn(&RecordKind) -> bool) -> Option<u64> {
    records.iter().find(|r| matches(&r.kind)).map(|r| r.at_ms)
}

fn step_started(records: &[Record], step: &str) -> bool {
    records.iter().any(|r| matches!(&r.kind, RecordKind::StepStarted { step: s, .. } if s == step))
}

/// Every Operation of the store, each with exactly one outcome and nothing left unfinished:
/// `(id, site, outcome, records)`, in creation order.
fn one_outcome_each(db: &Db) -> Vec<(OperationId, String, Outcome, Vec<Record>)> {
    assert!(db.unfinished().is_empty(), "unfinished: {:?}", db.unfinished());
    db.ids("quickstart")
        .into_iter()
        .map(|id| {
            let records = db.records(id);
            let outcomes = outcomes(&records);
            assert_eq!(outcomes.len(), 1, "operation {id} has outcomes {outcomes:?}");
            let state = OperationState::fold(id, &records).unwrap();
            let site = site_of(&state);
            (id, site, outcomes[0].clone(), records)
        })
        .collect()
}

/// Who resumed the Operation, as its log's `recovered by` lines say, in order.
fn recovered_by(log: &[LogLine]) -> Vec<String> {
    log.iter()
        .filter_map(|l| l.message.strip_prefix("recovered by "))
        .map(|rest| rest.split(':').next().unwrap_or("").to_owned())
        .collect()
}

/// An end a quickstart printed for an Operation.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Printed {
    /// `operation ID: OUTCOME`: it saw the Operation finish, whoever ran its steps (a worker
    /// reports what it ran; a plain run follows its Operation to wherever it finishes).
    Outcome(String),
    /// `operation ID halted: ...` and the like: it stopped there without an outcome (a lost
    /// lease, a store failure, an operator needed), for another executor or a later run.
    Stopped(String),
}

/// The ends `proc` printed, in order: its other lines (the log lines it streams, `owned by
/// another executor`, `left unfinished here`) say nothing of an end.
fn printed_ends(proc: &Proc) -> Vec<(OperationId, Printed)> {
    let out = format!("{}{}", proc.stdout(), proc.stderr());
    out.lines()
        .filter_map(|line| {
            let line = line.strip_prefix("quickstart: ").unwrap_or(line);
            let rest = line.strip_prefix("operation ")?;
            let (id, tail) = rest.split_at(rest.find([':', ' '])?);
            let id: OperationId = id.parse().ok()?;
            let printed = match tail.strip_prefix(": ") {
                Some(after)
                    if ["succeeded", "rolled back", "rollback incomplete", "abandoned"]
                        .iter()
                        .any(|o| after.starts_with(o)) =>
                {
                    Printed::Outcome(after.to_owned())
                }
                Some(after)
                    if after.starts_with("unrecoverable")
                        || after.starts_with("needs attention") =>
                {
                    Printed::Stopped(after.to_owned())
                }
                Some(_) => return None,
                None if tail.starts_with(" halted: ")
                    || tail.starts_with(" needs attention")
                    || tail.starts_with(" is unrecoverable") =>
                {
                    Printed::Stopped(tail.trim_start().to_owned())
                }
                None => return None,
            };
            Some((id, printed))
        })
        .collect()
}

/// Every outcome `proc` printed is the one the store holds (it may have printed none: a worker
/// whose Operation was taken over, or whose end it did not see).
fn printed_outcomes_agree(db: &Db, proc: &Proc) -> usize {
    let ends = printed_ends(proc);
    for (id, printed) in &ends {
        if let Printed::Outcome(text) = printed {
            let stored = outcomes(&db.records(*id));
            assert!(
                stored.len() == 1 && stored[0].to_string() == *text,
                "{}: printed {text:?} for operation {id}; the store holds {stored:?}\n{}",
                proc.name,
                proc.shown()
            );
        }
    }
    ends.iter().filter(|(_, p)| matches!(p, Printed::Outcome(_))).count()
}

/// A worker's exit status fits the ends it printed: 0 when each was a success, 1 when one was
/// not (another outcome, or a stop there: its lease lost or the store failing, for another
/// executor to finish).
fn assert_exit_fits(proc: &Proc, status: ExitStatus) {
    let ends = printed_ends(proc);
    let expected =
        if ends.iter().all(|(_, p)| *p == Printed::Outcome("succeeded".into())) { 0 } else { 1 };
    assert_eq!(status.code(), Some(expected), "{}: ends {ends:?}\n{}", proc.name, proc.shown());
}

// ---------------------------------------------------------------------------------------------
// (a) A worker killed.

#[test]
fn three_workers_take_over_a_killed_workers_operations_within_its_lease() {
    let test = "three_workers_take_over_a_killed_workers_operations_within_its_lease";
    let Some(url) = url(test) else { return };
    let _serial = serial();
    let db = Db::new(&url, "qs_test", 4);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ttl = Duration::from_millis(2000);
    let scan = Duration::from_secs(1);
    let mut workers: Vec<Proc> = ["w1", "w2", "w3"]
        .iter()
        .map(|owner| worker(&db, &data, owner, &["--lease-ttl", "2000"]))
        .collect();
    let submitted = submit(&db, &data, &["--count", "30", "--site", "a", "--warm-ms", "3000"]);
    assert_eq!(submitted.len(), 30);
    let shown = |workers: &[Proc]| show_all(&workers.iter().collect::<Vec<_>>());

    // Mid-run: every Operation claimed by a worker, and some warming their caches.
    wait_until(
        Duration::from_secs(30),
        "the workers claim the submitted operations",
        || shown(&workers),
        || {
            let leases = db.leases();
            leases.len() == 30
                && leases.values().all(|(owner, _, _)| ["w1", "w2", "w3"].contains(&owner.as_str()))
        },
    );
    wait_until(
        Duration::from_secs(30),
        "some operations warm their caches",
        || shown(&workers),
        || {
            submitted.iter().filter(|(id, _)| step_started(&db.records(*id), "warm-cache")).count()
                >= 5
        },
    );
    let mut held: BTreeMap<String, usize> = BTreeMap::new();
    for (owner, _, finished) in db.leases().values() {
        if !finished {
            *held.entry(owner.clone()).or_default() += 1;
        }
    }
    let (victim, count) =
        held.iter().max_by_key(|(_, n)| **n).map(|(o, n)| (o.clone(), *n)).unwrap();
    let index = workers.iter().position(|w| w.name == victim).unwrap();
    let mut killed = workers.remove(index);
    killed.signal("KILL");
    let killed_at = Instant::now();
    killed.wait_within(Duration::from_secs(10));
    let orphans: Vec<OperationId> = db
        .leases()
        .into_iter()
        .filter(|(_, (owner, _, finished))| *owner == victim && !finished)
        .map(|(id, _)| id)
        .collect();
    println!("{test}: held {held:?}; killed {victim}, which held {count} unfinished operations");
    assert!(!orphans.is_empty(), "{victim} held nothing when killed");

    // Each orphan is claimed by another worker once its lease expired, at a takeover scan (or
    // at once, when a worker's lease of its own lapses under load and another claims that too:
    // only the outcome counts).
    let mut taken: HashMap<OperationId, Duration> = HashMap::new();
    wait_until(
        ttl + scan + Duration::from_secs(10),
        "the other workers take the killed worker's operations over",
        || shown(&workers),
        || {
            let leases = db.leases();
            for id in &orphans {
                if leases[id].0 != victim && !taken.contains_key(id) {
                    taken.insert(*id, killed_at.elapsed());
                }
            }
            taken.len() == orphans.len()
        },
    );
    let slowest = taken.values().max().copied().unwrap();
    let fastest = taken.values().min().copied().unwrap();
    println!(
        "{test}: {} operations taken over {:.2}..{:.2} s after the kill (lease {ttl:?}, scan {scan:?})",
        taken.len(),
        fastest.as_secs_f64(),
        slowest.as_secs_f64()
    );

    wait_until(
        Duration::from_secs(60),
        "every operation finishes",
        || shown(&workers),
        || db.unfinished().is_empty(),
    );
    let finished_after = killed_at.elapsed();
    for w in &mut workers {
        let status = w.stop(Duration::from_secs(30));
        // 1 only when one of its Operations stopped there (a renewal that did not come in
        // time on a busy machine): another worker finished it.
        assert_exit_fits(w, status);
    }
    let operations = one_outcome_each(&db);
    assert_eq!(operations.len(), 30);
    let world = data.join("world");
    for (id, site, outcome, _) in &operations {
        assert_eq!(*outcome, Outcome::Succeeded, "operation {id} on {site}");
        world_matches(&world, site, outcome);
        let by = recovered_by(&db.log(*id));
        if orphans.contains(id) {
            let last = by.last().unwrap_or_else(|| panic!("{id}: no `recovered by` line"));
            assert_ne!(*last, victim, "operation {id} recovered by {by:?}");
        }
    }
    // What the workers printed agrees with the store. (A worker that took an Operation over and
    // lost it again, or one that saw it finish elsewhere, may print its end too: a verdict is
    // the store's, whoever prints it.)
    let printed: usize =
        workers.iter().chain([&killed]).map(|w| printed_outcomes_agree(&db, w)).sum();
    println!(
        "{test}: all 30 succeeded, {:.1} s after the kill; the workers printed {printed} ends",
        finished_after.as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// (b) An owner stalled past its lease.

#[test]
fn a_stalled_owner_is_fenced_and_nothing_it_writes_after_the_takeover_reaches_the_store() {
    let test =
        "a_stalled_owner_is_fenced_and_nothing_it_writes_after_the_takeover_reaches_the_store";
    let Some(url) = url(test) else { return };
    let _serial = serial();
    let db = Db::new(&url, "qs_test", 4);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut args = db.args(&data);
    args.extend(
        ["--owner", "stalled", "--lease-ttl", "2000", "--site", "b", "--warm-ms", "4000"]
            .map(String::from),
    );
    let mut stalled = Proc::spawn("stalled", quickstart_with(&args));
    stalled.wait_for_line(Duration::from_secs(30), |l| l.contains("step warm-cache started"));
    stalled.signal("STOP");
    let stopped_at = Instant::now();
    let [id] = db.ids("quickstart")[..] else {
        panic!("one operation: {:?}", db.ids("quickstart"))
    };

    let mut taker = worker(&db, &data, "taker", &["--lease-ttl", "2000"]);
    let shown = || format!("{}\n{}", show_all(&[&stalled, &taker]), db.activity());
    wait_until(Duration::from_secs(30), "the taker takes over", shown, || {
        db.leases()[&id].0 == "taker"
    });
    let took = stopped_at.elapsed();
    // Finished: its outcome, then (once the outcome is durable) the log line that says it, the
    // taker's last write for it. The snapshot below is taken after both, so that a line of the
    // taker's is never mistaken for one of the fenced owner's.
    wait_until(Duration::from_secs(30), "the taker finishes it", shown, || {
        !outcomes(&db.records(id)).is_empty()
            && db.log(id).iter().any(|l| l.message == "operation succeeded")
    });
    let records_before = db.records(id);
    let log_before = db.log(id);
    let stalled_for = stopped_at.elapsed();
    println!(
        "{test}: stalled at warm-cache; taken over {:.2} s later; SIGCONT after {:.2} s",
        took.as_secs_f64(),
        stalled_for.as_secs_f64()
    );
    assert!(stalled_for > Duration::from_millis(2000), "stalled longer than its lease");

    stalled.signal("CONT");
    let status = stalled.wait_within(Duration::from_secs(30));
    let told = format!("{}{}", stalled.stdout(), stalled.stderr());
    // It says that it lost the Operation (its lease lapsed, or it was fenced)...
    assert!(
        told.contains("is not current (held by taker)")
            || told.contains("the lease could not be renewed"),
        "{}",
        stalled.shown()
    );
    // ...then either follows it to the taker's outcome, which it prints (exit 0), or stops
    // with the halt (exit 2). Whatever it prints agrees with the store, checked below.
    let ends = printed_ends(&stalled);
    match status.code() {
        Some(0) => assert_eq!(ends, [(id, Printed::Outcome("succeeded".into()))], "{told}"),
        Some(2) => assert!(
            matches!(&ends[..], [(i, Printed::Stopped(why))] if *i == id && why.starts_with("halted")),
            "{told}"
        ),
        _ => panic!("exit status {status}\n{}", stalled.shown()),
    }
    // It exited: nothing more of it can reach the store.

    // Nothing the stalled owner did after the takeover reached the store: the records, and the
    // log lines, are what they were when the taker finished.
    assert_eq!(db.records(id), records_before, "records written after the takeover");
    let log_after = db.log(id);
    let changed: Vec<String> = log_after
        .iter()
        .filter(|l| !log_before.contains(l))
        .map(|l| format!("{} {}", l.seq, l))
        .collect();
    assert!(
        changed.is_empty() && log_after.len() == log_before.len(),
        "log lines written or replaced after the takeover by the fenced owner:\n{}\nbefore:\n{}",
        changed.join("\n"),
        log_before.iter().map(|l| format!("{} {l}", l.seq)).collect::<Vec<_>>().join("\n")
    );

    let operations = one_outcome_each(&db);
    let (_, site, outcome, _) = &operations[0];
    assert_eq!(*outcome, Outcome::Succeeded);
    world_matches(&data.join("world"), site, outcome);
    assert_eq!(recovered_by(&log_after), ["taker"]);
    assert_eq!(db.leases()[&id].0, "taker");
    printed_outcomes_agree(&db, &stalled);
    printed_outcomes_agree(&db, &taker);
    let status = taker.stop(Duration::from_secs(30));
    assert_exit_fits(&taker, status);
}

// ---------------------------------------------------------------------------------------------
// (c) The server restarted.

#[test]
fn two_hundred_operations_each_end_once_across_a_restart_of_postgresql() {
    let test = "two_hundred_operations_each_end_once_across_a_restart_of_postgresql";
    let Some(url) = url(test) else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let services =
        std::env::var_os("SAGA_SERVICES_DIR").map_or(root.join("target/services"), PathBuf::from);
    let ours = std::fs::read_to_string(services.join("postgres.env"))
        .is_ok_and(|env| env.lines().any(|l| l.trim() == format!("SAGA_TEST_POSTGRES_URL={url}")));
    if !ours {
        let why = "the server was not started by scripts/services/postgres.sh, which restarts it";
        // Under CI this fails the test; elsewhere it says why it skips.
        let _skipped: Option<()> = super::common::ci::unavailable(test, why);
        return;
    }
    let _serial = serial();
    let db = Db::new(&url, "qs_test", 4);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let submitted = submit(&db, &data, &["--count", "200", "--site", "r", "--warm-ms", "3000"]);
    assert_eq!(submitted.len(), 200);
    let mut workers: Vec<Proc> = ["r1", "r2"]
        .iter()
        .map(|owner| worker(&db, &data, owner, &["--lease-ttl", "10000", "--until-idle"]))
        .collect();
    let shown = |workers: &[Proc]| show_all(&workers.iter().collect::<Vec<_>>());
    // In the middle: every Operation claimed, and the first ones finishing (the burst of
    // writes of their last steps).
    wait_until(
        Duration::from_secs(60),
        "the workers claim every operation and finish the first",
        || shown(&workers),
        || {
            let leases = db.leases();
            leases.values().all(|(owner, _, _)| ["r1", "r2"].contains(&owner.as_str()))
                && leases.values().any(|(_, _, finished)| *finished)
        },
    );
    let finished_before = db.leases().values().filter(|(_, _, f)| *f).count();

    let restart_started = Instant::now();
    let out = output_within(
        Command::new("bash").arg(root.join("scripts/services/postgres.sh")).arg("restart"),
        Duration::from_secs(120),
        "postgres.sh restart",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let restart_took = restart_started.elapsed();

    for w in &mut workers {
        let status = w.wait_within(Duration::from_secs(240));
        // 1 when an Operation halted there on the restart (another run finished it).
        assert_exit_fits(w, status);
    }
    let all_done = restart_started.elapsed();
    let operations = one_outcome_each(&db);
    assert_eq!(operations.len(), 200);
    let world = data.join("world");
    let mut resumed_twice = 0;
    for (id, site, outcome, _) in &operations {
        assert_eq!(*outcome, Outcome::Succeeded, "operation {id} on {site}");
        world_matches(&world, site, outcome);
        if recovered_by(&db.log(*id)).len() > 1 {
            resumed_twice += 1;
        }
    }
    for w in &workers {
        printed_outcomes_agree(&db, w);
    }
    let halted: usize = workers
        .iter()
        .map(|w| w.stdout().lines().filter(|l| l.contains(" halted: ")).count())
        .sum();
    let retried: usize = workers
        .iter()
        .map(|w| w.stdout().lines().filter(|l| l.contains("failed, retrying")).count())
        .sum();
    let warnings: usize =
        workers.iter().map(|w| w.stdout().lines().filter(|l| l.contains(" WARN ")).count()).sum();
    println!(
        "{test}: {finished_before} of 200 finished before the restart, which took {:.1} s; \
         all 200 succeeded {:.1} s after it began; {warnings} warnings in the workers' output, \
         {retried} store writes retried by the executor, {halted} operations halted and resumed, \
         {resumed_twice} resumed more than once",
        restart_took.as_secs_f64(),
        all_done.as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// (d) A worker cut off from the database.

/// A TCP proxy to the server that the test can cut: it then drops every connection and refuses
/// new ones (accepts and closes them) until restored.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    /// Reads forwarded (either way) on the connections made since the last restore.
    since_restore: Arc<AtomicU64>,
    restores: Arc<AtomicU64>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (since_restore, restores) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (cutting, open) = (cut.clone(), connections.clone());
        let (counter, generation) = (since_restore.clone(), restores.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cutting.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let mut open = open.lock().unwrap();
                open.push(client.try_clone().unwrap());
                open.push(server.try_clone().unwrap());
                let restored = generation.load(Ordering::SeqCst) > 0;
                for (mut from, mut to) in
                    [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    let counter = counter.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n @ 1..) = from.read(&mut buf) {
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            if restored {
                                counter.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { addr, cut, connections, since_restore, restores }
    }

    /// Drops every connection and refuses new ones.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.connections.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.since_restore.store(0, Ordering::SeqCst);
        self.restores.fetch_add(1, Ordering::SeqCst);
        self.cut.store(false, Ordering::SeqCst);
    }

    /// The reads forwarded on connections made since the restore.
    fn forwarded_since_restore(&self) -> u64 {
        self.since_restore.load(Ordering::SeqCst)
    }

    /// `url` with its host and port replaced by the proxy's.
    fn url(&self, url: &str) -> String {
        let at = url.rfind('@').map_or(url.find("://").unwrap() + 3, |at| at + 1);
        let slash = url[at..].find('/').map_or(url.len(), |s| at + s);
        format!("{}{}{}", &url[..at], self.addr, &url[slash..])
    }
}

#[test]
fn a_worker_cut_off_from_the_database_stops_before_its_lease_expires_and_another_finishes() {
    let test =
        "a_worker_cut_off_from_the_database_stops_before_its_lease_expires_and_another_finishes";
    let Some(url) = url(test) else { return };
    let _serial = serial();
    let db = Db::new(&url, "qs_test", 4);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let proxy = Proxy::start(server_addr(&url).unwrap());
    let mut cut = worker_via(&db, &data, &proxy.url(&url), "cut", &["--lease-ttl", "3000"]);
    let submitted = submit(&db, &data, &["--count", "3", "--site", "d", "--warm-ms", "8000"]);
    let ids: Vec<OperationId> = submitted.iter().map(|(id, _)| *id).collect();
    wait_until(
        Duration::from_secs(30),
        "the worker behind the proxy runs all three",
        || cut.shown(),
        || ids.iter().all(|id| step_started(&db.records(*id), "warm-cache")),
    );
    assert!(ids.iter().all(|id| db.leases()[id].0 == "cut"));
    let mut direct = worker(&db, &data, "direct", &["--lease-ttl", "3000"]);

    proxy.cut();
    let cut_ms = saga_core::Timestamp::now().unix_ms();
    // No renewal passes the proxy from now on: these are the leases' last expiries.
    let expiries: HashMap<OperationId, u64> =
        ids.iter().map(|id| (*id, db.leases()[id].1)).collect();
    let shown = || show_all(&[&cut, &direct]);
    for id in &ids {
        let prefix = format!("operation {id}: ");
        let (_, seen_ms) = cut.wait_for_line(Duration::from_secs(10), |l| {
            l.starts_with(&prefix) && l.contains("the lease could not be renewed before it expires")
        });
        println!(
            "{test}: {id}: stopped {} ms after the cut, {} ms before its lease expired",
            seen_ms.saturating_sub(cut_ms),
            expiries[id] as i64 - seen_ms as i64
        );
        assert!(seen_ms < expiries[id], "stopped after its lease expired\n{}", shown());
    }
    // The direct worker can claim them only once their leases expired, after the cut worker
    // stopped (the database's rule).
    wait_until(Duration::from_secs(30), "the direct worker takes over", shown, || {
        let leases = db.leases();
        ids.iter().all(|id| leases[id].0 == "direct")
    });
    println!(
        "{test}: all three taken over within {} ms of the cut",
        saga_core::Timestamp::now().unix_ms() - cut_ms
    );
    // Finished: the outcomes, then the log lines that say them, the direct worker's last writes
    // for them, so that the snapshot below holds every line of the direct worker's.
    wait_until(Duration::from_secs(60), "the direct worker finishes them", shown, || {
        db.unfinished().is_empty()
            && ids.iter().all(|id| db.log(*id).iter().any(|l| l.message == "operation succeeded"))
    });
    let before: Vec<(Vec<Record>, Vec<LogLine>)> =
        ids.iter().map(|id| (db.records(*id), db.log(*id))).collect();

    // Connected again, the cut worker writes nothing for them: once it has talked to the
    // database again for a while (its connections made anew, a few takeover scans).
    proxy.restore();
    wait_until(
        Duration::from_secs(30),
        "the cut worker talks to the database again",
        shown,
        || proxy.forwarded_since_restore() >= 24,
    );
    let after: Vec<(Vec<Record>, Vec<LogLine>)> =
        ids.iter().map(|id| (db.records(*id), db.log(*id))).collect();
    assert!(before == after, "written after the proxy forwarded again\n{}", shown());
    for (id, site, outcome, _) in one_outcome_each(&db) {
        assert_eq!(outcome, Outcome::Succeeded, "operation {id}");
        world_matches(&data.join("world"), &site, &outcome);
        assert_eq!(recovered_by(&db.log(id)), ["cut", "direct"], "operation {id}");
    }
    printed_outcomes_agree(&db, &cut);
    printed_outcomes_agree(&db, &direct);
    // The cut worker's Operations stopped there without an outcome: 1 when it said so.
    let status = cut.stop(Duration::from_secs(30));
    assert_exit_fits(&cut, status);
    let status = direct.stop(Duration::from_secs(30));
    assert_exit_fits(&direct, status);
}

// ---------------------------------------------------------------------------------------------
// (e) A cancel from another process.

#[test]
fn a_cancel_from_another_process_rolls_back_within_a_second() {
    let test = "a_cancel_from_another_process_rolls_back_within_a_second";
    let Some(url) = url(test) else { return };
    let _serial = serial();
    let db = Db::new(&url, "qs_test", 4);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut runner = worker(&db, &data, "runner", &[]);
    let [(id, site)] = &submit(&db, &data, &["--site", "e", "--warm-ms", "20000"])[..] else {
        panic!("one operation submitted")
    };
    wait_until(
        Duration::from_secs(30),
        "the worker warms the cache",
        || runner.shown(),
        || step_started(&db.records(*id), "warm-cache"),
    );
    let mut args = db.args(&data);
    args.extend(
        ["cancel", &id.to_string(), "--actor", "alice", "--reason", "change of plan"]
            .map(String::from),
    );
    let launched_ms = saga_core::Timestamp::now().unix_ms();
    let out = output_within(quickstart().args(&args), Duration::from_secs(30), "cancel");
    let exited_ms = saga_core::Timestamp::now().unix_ms();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("operation {id}: cancel requested by alice")), "{stdout}");
    wait_until(
        Duration::from_secs(30),
        "the rollback ends",
        || runner.shown(),
        || !outcomes(&db.records(*id)).is_empty(),
    );
    let records = db.records(*id);
    let requested = first_at(&records, |k| {
        matches!(k, RecordKind::CancelRequested { actor, reason } if actor == "alice" && reason == "change of plan")
    })
    .expect("a CancelRequested record by alice");
    let compensating = first_at(&records, |k| matches!(k, RecordKind::CompensationStarted { .. }))
        .expect("a compensation");
    let latency = compensating as i64 - exited_ms as i64;
    println!(
        "{test}: the cancel command ran {} ms; CancelRequested {} ms and the first compensation \
         {latency} ms after it exited ({} ms after it was launched)",
        exited_ms - launched_ms,
        requested as i64 - exited_ms as i64,
        compensating as i64 - launched_ms as i64
    );
    assert!(
        latency <= 1000,
        "the rollback started {latency} ms after the cancel\n{}",
        runner.shown()
    );
    let operations = one_outcome_each(&db);
    let outcome = &operations[0].2;
    assert!(
        matches!(outcome, Outcome::RollbackIncomplete { .. }),
        "cancelled after the migration: {outcome:?}"
    );
    world_matches(&data.join("world"), site, outcome);
    assert!(runner.stdout().contains("cancel requested by alice"), "{}", runner.shown());

    // A second cancel is refused: it finished.
    let again = output_within(quickstart().args(&args), Duration::from_secs(30), "cancel again");
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already finished"));
    let status = runner.stop(Duration::from_secs(30));
    printed_outcomes_agree(&db, &runner);
    assert_exit_fits(&runner, status);
}

// ---------------------------------------------------------------------------------------------
// (f) One site's queue across processes.

#[test]
fn ten_operations_on_one_site_from_two_submitters_run_one_after_another_in_creation_order() {
    let test =
        "ten_operations_on_one_site_from_two_submitters_run_one_after_another_in_creation_order";
    let Some(url) = url(test) else { return };
    let _serial = serial();
    let db = Db::new(&url, "qs_test", 4);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut workers: Vec<Proc> =
        ["q1", "q2"].iter().map(|owner| worker(&db, &data, owner, &[])).collect();
    // Two submitters taking turns, one Operation each time, all on site `q`.
    let mut submitted = Vec::new();
    for i in 0..10 {
        let owner = if i % 2 == 0 { "submitter-a" } else { "submitter-b" };
        let got = submit(&db, &data, &["--owner", owner, "--site", "q", "--warm-ms", "300"]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, "q");
        submitted.push(got[0].0);
    }
    let shown = |workers: &[Proc]| show_all(&workers.iter().collect::<Vec<_>>());
    wait_until(
        Duration::from_secs(90),
        "all ten finish",
        || shown(&workers),
        || db.unfinished().is_empty(),
    );
    let operations = one_outcome_each(&db);
    // Creation order (the store's environment index) is submission order.
    let created: Vec<OperationId> = operations.iter().map(|(id, ..)| *id).collect();
    assert_eq!(created, submitted);
    let mut spans = Vec::new();
    let mut ran_by = Vec::new();
    for (id, _, outcome, records) in &operations {
        assert_eq!(*outcome, Outcome::Succeeded, "operation {id}");
        let start = first_at(records, |k| matches!(k, RecordKind::StepStarted { .. })).unwrap();
        let end = first_at(records, |k| matches!(k, RecordKind::OperationFinished { .. })).unwrap();
        spans.push((start, end));
        ran_by.push(recovered_by(&db.log(*id)).join("+"));
    }
    for (i, pair) in spans.windows(2).enumerate() {
        assert!(
            pair[0].1 <= pair[1].0,
            "operation {} ({:?}) overlaps operation {} ({:?})",
            created[i],
            pair[0],
            created[i + 1],
            pair[1]
        );
    }
    // The world is the last one's.
    let world = data.join("world");
    world_matches(&world, "q", &Outcome::Succeeded);
    let config = std::fs::read_to_string(world.join("sites/q/config.json")).unwrap();
    assert!(config.contains(&created[9].to_string()), "{config}");
    let migrations = std::fs::read_to_string(world.join("migrations.log")).unwrap();
    assert_eq!(migrations.lines().filter(|l| l.starts_with("q ")).count(), 10, "{migrations}");
    for w in &mut workers {
        let status = w.stop(Duration::from_secs(30));
        printed_outcomes_agree(&db, w);
        assert_exit_fits(w, status);
    }
    let gaps: Vec<u64> = spans.windows(2).map(|p| p[1].0 - p[0].1).collect();
    println!(
        "{test}: run by {ran_by:?}; gaps between one's end and the next's start (ms): {gaps:?}"
    );
}
