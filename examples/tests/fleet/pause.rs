//! A worker paused (SIGSTOP) mid-step for longer than its lease, again and again, never runs a
//! step beside the worker that took its Operation over: three `fleet worker` processes on
//! PostgreSQL (`SAGA_TEST_POSTGRES_URL`), 150+ Operations, 100+ pauses, then the step journal
//! read line by line in the order of the writes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use saga_core::{OperationId, Outcome};
use saga_store_postgres::testing::database_url;

use crate::journal::{self, Line, Tail};
use crate::saga::STEPS;
use crate::support::{fleet_output, now_us, outcomes, serial, wait_until, worker, Db, Proc};

/// The workers' lease: short, so that a pause outlives it.
const LEASE_MS: u64 = 1000;

/// How long a pause lasts: always longer than the lease.
const PAUSE_MS: std::ops::RangeInclusive<u64> = 1150..=1900;

/// How many pauses at least, and Operations at least.
const PAUSES: usize = 105;
const OPERATIONS: usize = 150;

/// One SIGSTOP..SIGCONT of a worker, in Unix µs.
#[derive(Clone, Debug)]
struct Pause {
    worker: String,
    /// Before `kill -STOP` was run, and once it returned (the process stopped in between).
    stop_sent: u64,
    stopped: u64,
    /// Before `kill -CONT` was run.
    resumed: u64,
    /// Whether the journal showed a step of it running when it was stopped.
    mid_step: bool,
}

/// The executions the journal shows running now, kept up to date by reading it as it grows: an
/// execution is running from its `start` to its `end`, or until a newer epoch of its Operation
/// writes (its executor lost the Operation).
#[derive(Default)]
struct Running {
    newest: HashMap<OperationId, u64>,
    /// (operation, step) → the executor running it.
    open: HashMap<(OperationId, String), String>,
}

impl Running {
    fn apply(&mut self, line: &Line) {
        let newest = self.newest.entry(line.op).or_insert(line.epoch);
        if line.epoch < *newest {
            return;
        }
        if line.epoch > *newest {
            *newest = line.epoch;
            self.open.retain(|(op, _), _| *op != line.op);
        }
        let key = (line.op, line.step.clone());
        if line.start {
            self.open.insert(key, line.by.clone());
        } else {
            self.open.remove(&key);
        }
    }

    fn on(&self, worker: &str) -> usize {
        self.open.values().filter(|by| *by == worker).count()
    }
}

#[test]
fn a_paused_worker_never_runs_a_step_beside_its_successor() {
    let test = "a_paused_worker_never_runs_a_step_beside_its_successor";
    let Some(url) = database_url(test) else { return };
    let _serial = serial();
    let started = Instant::now();
    let db = Db::new(&url, "fleet_test", 8);
    let dir = tempfile::tempdir().unwrap();
    let journal_path = dir.path().join("journal");
    let lease = LEASE_MS.to_string();
    let names = ["p1", "p2", "p3"];
    let mut workers: Vec<Proc> = names
        .iter()
        .map(|name| {
            worker(&db, name, &journal_path, &["--lease-ttl", &lease, "--takeover-ms", "200"])
        })
        .collect();
    let shown = |workers: &[Proc]| workers.iter().map(Proc::shown).collect::<Vec<_>>().join("\n");

    let running = Mutex::new(Running::default());
    let pauses = Mutex::new(Vec::<Pause>::new());
    let done = AtomicBool::new(false);
    // At most all workers but one are paused at once: one can always take over.
    let paused_now = AtomicUsize::new(0);
    let mut submitted: Vec<OperationId> = Vec::new();
    std::thread::scope(|scope| {
        let _stop = StopOnDrop(&done);
        // The journal, read as it grows.
        scope.spawn(|| {
            let mut tail = Tail::new(&journal_path);
            while !done.load(Ordering::SeqCst) {
                for line in tail.poll() {
                    running.lock().unwrap().apply(&line);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        for worker in &workers {
            let (running, pauses, done, paused_now) = (&running, &pauses, &done, &paused_now);
            scope.spawn(move || {
                pause_again_and_again(worker, running, pauses, done, paused_now, names.len() - 1)
            });
        }
        // Operations in batches, keeping a dozen or so unfinished, until enough pauses were
        // made and enough Operations submitted.
        while submitted.len() < OPERATIONS || pauses.lock().unwrap().len() < PAUSES {
            assert!(
                started.elapsed() < Duration::from_secs(400),
                "{} pauses and {} operations after {:?}\n{}",
                pauses.lock().unwrap().len(),
                submitted.len(),
                started.elapsed(),
                shown(&workers)
            );
            if db.unfinished().len() < 12 {
                submitted.extend(submit(&db, 6));
            } else {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        done.store(true, Ordering::SeqCst);
    });
    let pauses = pauses.into_inner().unwrap();
    let submitting_took = started.elapsed();

    wait_until(
        Duration::from_secs(120),
        "every operation finishes once the pauses stopped",
        || shown(&workers),
        || db.unfinished().is_empty(),
    );
    for worker in &mut workers {
        let status = worker.stop(Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "{}", worker.shown());
    }

    // One outcome each, and every step of each ran to its end at least once.
    let lines = journal::read(&journal_path);
    for id in &submitted {
        let records = db.records(*id);
        assert_eq!(outcomes(&records), [Outcome::Succeeded], "operation {id}");
        let ran: HashSet<String> = journal::succeeded_steps(&lines, *id).into_iter().collect();
        for step in STEPS {
            assert!(ran.contains(step), "operation {id} succeeded, but {step} never ended ok");
        }
    }
    assert!(db.unfinished().is_empty());

    // No overlap. A line of an older epoch after a newer one's is excused only when the paused
    // worker had read the clock for it before it was stopped and the newer epoch began during
    // that pause: a write already under way, which no engine can take back (the fencing
    // token's reason to be).
    let by_worker: HashMap<&str, Vec<&Pause>> = pauses.iter().fold(HashMap::new(), |mut map, p| {
        map.entry(p.worker.as_str()).or_default().push(p);
        map
    });
    let findings = journal::check(&lines, |old, newer| {
        by_worker.get(old.by.as_str())?.iter().find_map(|p| {
            (old.at_us <= p.stopped && newer.at_us >= p.stop_sent && old.at_us < newer.at_us)
                .then(|| format!("composed before the pause of {} at {}", p.worker, p.stop_sent))
        })
    });
    // The figures.
    let longest = pauses.iter().map(|p| p.resumed - p.stopped).max().unwrap_or(0);
    let mid_step = pauses.iter().filter(|p| p.mid_step).count();
    let taken_during = pauses.iter().filter(|p| took_over_during(&lines, p)).count();
    let stopped_here: usize = workers
        .iter()
        .map(|w| w.stdout_lines().iter().filter(|l| l.contains(": stopped here: ")).count())
        .sum();
    println!(
        "{test}: {} operations, {} pauses ({mid_step} mid-step, the longest {:.2} s, lease {} \
         ms), {taken_during} pauses saw another worker take an operation over; {} operations \
         taken over, {} executions abandoned by their executor, {stopped_here} drivers stopped \
         on a lost lease, {} writes excused as under way at a pause; {:.1} s of pauses and \
         submissions, {:.1} s in all; {} overlaps",
        submitted.len(),
        pauses.len(),
        longest as f64 / 1e6,
        LEASE_MS,
        findings.taken_over,
        findings.abandoned,
        findings.excused.len(),
        submitting_took.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        findings.overlaps.len()
    );
    for excused in &findings.excused {
        println!("{test}: excused: {excused}");
    }
    assert!(
        findings.overlaps.is_empty(),
        "{} overlaps in the journal, the first ones:\n{}",
        findings.overlaps.len(),
        findings.overlaps.iter().take(30).cloned().collect::<Vec<_>>().join("\n"),
    );
    assert!(pauses.len() >= PAUSES && submitted.len() >= OPERATIONS);
    // Enough of the pauses were what the test is about: another worker took over meanwhile.
    assert!(
        taken_during >= PAUSES / 4 && findings.taken_over >= PAUSES / 4,
        "only {taken_during} pauses saw a takeover ({} operations taken over)",
        findings.taken_over
    );
}

/// Sets the flag when dropped: the helper threads stop even when the test fails.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Pauses `worker` at random instants while a step of it runs, each time for longer than the
/// lease, until `done`; never more than `at_most` workers at once.
fn pause_again_and_again(
    worker: &Proc,
    running: &Mutex<Running>,
    pauses: &Mutex<Vec<Pause>>,
    done: &AtomicBool,
    paused_now: &AtomicUsize,
    at_most: usize,
) {
    while !done.load(Ordering::SeqCst) {
        // A place among the paused.
        if paused_now.fetch_add(1, Ordering::SeqCst) >= at_most {
            paused_now.fetch_sub(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(fastrand::u64(5..50)));
            continue;
        }
        // Until a step of it runs (or a while: it may have nothing to run).
        let waiting = Instant::now();
        while running.lock().unwrap().on(&worker.name) == 0
            && waiting.elapsed() < Duration::from_secs(2)
            && !done.load(Ordering::SeqCst)
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        if done.load(Ordering::SeqCst) {
            paused_now.fetch_sub(1, Ordering::SeqCst);
            break;
        }
        // A random instant of the step.
        std::thread::sleep(Duration::from_millis(fastrand::u64(0..60)));
        let mid_step = running.lock().unwrap().on(&worker.name) > 0;
        let stop_sent = now_us();
        worker.signal("STOP");
        let stopped = now_us();
        // The pause itself.
        std::thread::sleep(Duration::from_millis(fastrand::u64(PAUSE_MS)));
        let resumed = now_us();
        worker.signal("CONT");
        paused_now.fetch_sub(1, Ordering::SeqCst);
        pauses.lock().unwrap().push(Pause {
            worker: worker.name.clone(),
            stop_sent,
            stopped,
            resumed,
            mid_step,
        });
        // Running for a while before the next pause.
        std::thread::sleep(Duration::from_millis(fastrand::u64(100..600)));
    }
}

/// Whether, during the pause, another executor started a newer epoch of an Operation the
/// paused worker had written lines for.
fn took_over_during(lines: &[Line], pause: &Pause) -> bool {
    let mut newest: HashMap<OperationId, (u64, &str)> = HashMap::new();
    for line in lines {
        if line.at_us >= pause.stop_sent && line.at_us <= pause.resumed {
            if let Some((epoch, by)) = newest.get(&line.op) {
                if *by == pause.worker && line.epoch > *epoch && line.by != pause.worker {
                    return true;
                }
            }
        }
        if line.at_us < pause.stop_sent {
            newest.insert(line.op, (line.epoch, line.by.as_str()));
        }
    }
    false
}

/// `fleet submit --count n`: the ids it printed.
fn submit(db: &Db, n: usize) -> Vec<OperationId> {
    let mut args = db.args();
    args.extend(
        ["--owner", "submitter", "submit", "--count", &n.to_string(), "--step-ms", "60"]
            .map(String::from),
    );
    args.extend(["--jitter-ms", "140"].map(String::from));
    let stdout = fleet_output(&args, Duration::from_secs(60));
    let ids: Vec<OperationId> = stdout
        .lines()
        .map(|l| {
            l.strip_prefix("submitted ").unwrap_or_else(|| panic!("{stdout}")).parse().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), n, "{stdout}");
    ids
}
