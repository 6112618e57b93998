//! Cancels racing the point of no return, 1,000 rounds on each store: Operations of the fleet's
//! saga run by one executor (`fleet worker` processes on PostgreSQL, which needs
//! `SAGA_TEST_POSTGRES_URL`; an executor of this process on sled), each cancelled by another
//! executor (this process's) at a random instant from before its first step to after its
//! crossing. Every answer is then judged against the store and the step journal: a cancel
//! answered `Ok` is followed by a rollback or by a recorded refusal naming its actor, never by
//! silence and never by both; a refusal (`PastPointOfNoReturn`) is recorded in the log; one
//! outcome per Operation, and the journal agrees with it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use saga_core::log::{Record, RecordKind};
use saga_core::store::Store;
use saga_core::{CancelAnswer, Error, Executor, OperationId, Outcome, Resource, Start};
use saga_store::SledStore;
use saga_store_postgres::testing::database_url;

use crate::journal::{self, Line, Tail};
use crate::saga::{self, Journal, Params, STEPS};
use crate::support::{outcomes, serial, worker, Db, Proc};

/// How many rounds, and how many at once.
const ROUNDS: usize = 1000;
const AT_ONCE: usize = 40;

/// The steps' times: 20..50 ms each.
const PARAMS: Params = Params { step_ms: 20, jitter_ms: 30 };

/// What a round waits for in the journal before it cancels, and then how long at most (a
/// random part of it): spread from before the first step to after the crossing (after
/// `reserve`, before `commit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Anchor {
    /// Nothing: at once after the submit.
    Submitted,
    /// `start` (else `end`) of the `execute` of this step.
    Step { step: &'static str, start: bool },
}

impl Anchor {
    /// One at random, with the random delay after it.
    fn draw() -> (Anchor, Duration) {
        let (anchor, most_ms) = match fastrand::u32(0..100) {
            0..10 => (Anchor::Submitted, 5),
            10..25 => (Anchor::Step { step: STEPS[0], start: true }, 40),
            25..55 => (Anchor::Step { step: STEPS[1], start: true }, 60),
            55..80 => (Anchor::Step { step: STEPS[1], start: false }, 10),
            _ => (Anchor::Step { step: STEPS[2], start: true }, 30),
        };
        (anchor, Duration::from_micros(fastrand::u64(0..most_ms * 1000)))
    }

    fn name(&self) -> String {
        match self {
            Anchor::Submitted => "submitted".into(),
            Anchor::Step { step, start } => {
                format!("{} {step}", if *start { "start" } else { "end" })
            }
        }
    }
}

/// The journal's `execute` lines seen so far, as anchors, and a signal at every new batch.
struct Seen {
    anchors: Mutex<HashSet<(OperationId, Anchor)>>,
    changed: tokio::sync::watch::Sender<u64>,
    stop: AtomicBool,
}

impl Seen {
    /// Reads the journal at `path` as it grows, on a thread of its own, until `stop`.
    fn follow(path: PathBuf) -> Arc<Seen> {
        let seen = Arc::new(Seen {
            anchors: Mutex::default(),
            changed: tokio::sync::watch::channel(0).0,
            stop: AtomicBool::new(false),
        });
        let reader = seen.clone();
        std::thread::spawn(move || {
            let mut tail = Tail::new(&path);
            while !reader.stop.load(Ordering::SeqCst) {
                let lines = tail.poll();
                if !lines.is_empty() {
                    let mut anchors = reader.anchors.lock().unwrap();
                    for line in lines.iter().filter(|l| l.execute) {
                        if let Some(step) = STEPS.iter().find(|s| **s == line.step) {
                            anchors.insert((line.op, Anchor::Step { step, start: line.start }));
                        }
                    }
                    drop(anchors);
                    reader.changed.send_modify(|n| *n += 1);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        seen
    }

    async fn wait_for(&self, id: OperationId, anchor: Anchor) {
        if anchor == Anchor::Submitted {
            return;
        }
        let mut changed = self.changed.subscribe();
        let limit = Instant::now() + Duration::from_secs(60);
        while !self.anchors.lock().unwrap().contains(&(id, anchor)) {
            assert!(Instant::now() < limit, "operation {id}: no `{}` within 60 s", anchor.name());
            let _ = tokio::time::timeout(Duration::from_millis(100), changed.changed()).await;
        }
    }
}

/// One round: the Operation, when and by whom it was cancelled, and the answer.
struct Round {
    id: OperationId,
    actor: String,
    anchor: Anchor,
    answer: Result<CancelAnswer, Error>,
}

/// Runs the rounds, `AT_ONCE` at a time: each submits an Operation through `canceller` (which
/// never runs one: the workers do), cancels it at its random instant, and waits for its outcome
/// wherever it runs.
async fn race(canceller: &Executor, journal: &Path, tag: &str) -> Vec<Round> {
    let seen = Seen::follow(journal.to_owned());
    let places = Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
    let mut rounds = tokio::task::JoinSet::new();
    for n in 0..ROUNDS {
        let (canceller, seen, places) = (canceller.clone(), seen.clone(), places.clone());
        let tag = tag.to_owned();
        rounds.spawn(async move {
            let _place = places.acquire_owned().await.unwrap();
            let resource = Resource::new("fleet-item", format!("{tag}-{n}"));
            let id =
                canceller.submit(Start::new(saga::SAGA, resource).params(&PARAMS)).await.unwrap();
            let (anchor, after) = Anchor::draw();
            seen.wait_for(id, anchor).await;
            tokio::time::sleep(after).await;
            let actor = format!("canceller-{n}");
            let answer = canceller.cancel(id, &actor, "the race").await;
            let outcome = canceller.wait_timeout(id, Duration::from_secs(60)).await;
            assert!(outcome.is_ok(), "operation {id}: {outcome:?} after {answer:?}");
            Round { id, actor, anchor, answer }
        });
    }
    let mut done = Vec::new();
    while let Some(round) = rounds.join_next().await {
        done.push(round.unwrap());
    }
    seen.stop.store(true, Ordering::SeqCst);
    done
}

/// What became of one round's cancel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    /// `CancelRequested` by the round's actor, then a rolled-back outcome.
    RolledBack,
    /// `CancelRefused` naming the round's actor (after the crossing), then success.
    Refused,
    /// It finished first: nothing recorded for the cancel.
    FinishedFirst,
}

/// The answer's kind, for the counts.
fn answer_name(answer: &Result<CancelAnswer, Error>) -> String {
    match answer {
        Ok(CancelAnswer::RollingBack) => "Ok(RollingBack)".into(),
        Ok(CancelAnswer::AlreadyRollingBack) => "Ok(AlreadyRollingBack)".into(),
        Ok(CancelAnswer::Requested { .. }) => "Ok(Requested)".into(),
        Ok(other) => format!("Ok({other:?})"),
        Err(Error::PastPointOfNoReturn { .. }) => "Err(PastPointOfNoReturn)".into(),
        Err(Error::AlreadyFinished { .. }) => "Err(AlreadyFinished)".into(),
        Err(e) => format!("Err({e})"),
    }
}

/// Judges one round against its records and its journal lines; the reason when it is wrong.
fn judge(round: &Round, records: &[Record], lines: &[&Line]) -> Result<Verdict, String> {
    let actor = round.actor.as_str();
    let outcome = match &outcomes(records)[..] {
        [outcome] => outcome.clone(),
        other => return Err(format!("outcomes {other:?}")),
    };
    let position =
        |matches: &dyn Fn(&RecordKind) -> bool| records.iter().position(|r| matches(&r.kind));
    let requested =
        position(&|k| matches!(k, RecordKind::CancelRequested { actor: a, .. } if a == actor));
    let refused = records.iter().enumerate().find_map(|(i, r)| match &r.kind {
        RecordKind::CancelRefused { actor: a, requested_ms, .. } if a == actor => {
            Some((i, *requested_ms))
        }
        _ => None,
    });
    let crossed = position(&|k| matches!(k, RecordKind::PointOfNoReturnPassed { .. }));
    let rolled_back =
        matches!(outcome, Outcome::RolledBack { .. } | Outcome::RollbackIncomplete { .. });

    if requested.is_some() && refused.is_some() {
        return Err("both rolled back and refused the same request".into());
    }
    // Nothing rolls back unasked (no step fails), and nothing refused rolls back.
    if rolled_back != requested.is_some() {
        return Err(format!("outcome {outcome} with CancelRequested at {requested:?}"));
    }
    let verdict = match (requested, refused) {
        (Some(_), _) => {
            if crossed.is_some() {
                return Err("rolled back after passing the point of no return".into());
            }
            if !matches!(outcome, Outcome::RolledBack { .. }) {
                return Err(format!("cancelled, then {outcome}"));
            }
            Verdict::RolledBack
        }
        (None, Some((at, _))) => {
            if crossed.is_none_or(|c| c >= at) {
                return Err(format!("refused at record {at}, crossing at {crossed:?}"));
            }
            Verdict::Refused
        }
        (None, None) => Verdict::FinishedFirst,
    };
    if verdict != Verdict::RolledBack && outcome != Outcome::Succeeded {
        return Err(format!("not cancelled, yet {outcome}"));
    }

    // The answer, against what followed it.
    let fits = match (&round.answer, verdict) {
        (Ok(CancelAnswer::Requested { pending }), Verdict::RolledBack) => pending.actor == actor,
        (Ok(CancelAnswer::Requested { pending }), Verdict::Refused) => {
            pending.actor == actor && refused.is_some_and(|(_, at)| at == pending.at_ms)
        }
        (Ok(CancelAnswer::RollingBack), Verdict::RolledBack) => true,
        (Err(Error::PastPointOfNoReturn { .. }), Verdict::Refused) => true,
        (Err(Error::AlreadyFinished { .. }), Verdict::FinishedFirst) => true,
        _ => false,
    };
    if !fits {
        return Err(format!("answered {:?}, then {verdict:?}", round.answer));
    }

    // The world (the journal) agrees with the outcome: after a success every step ran to its
    // end and nothing was compensated; after a rollback every step that started was
    // compensated, and nothing after the crossing started.
    let ended = |execute: bool, step: &str| {
        lines
            .iter()
            .any(|l| l.execute == execute && l.step == step && l.result.as_deref() == Some("ok"))
    };
    let started: BTreeMap<&str, ()> =
        lines.iter().filter(|l| l.execute && l.start).map(|l| (l.step.as_str(), ())).collect();
    if outcome == Outcome::Succeeded {
        if let Some(step) = STEPS.iter().find(|s| !ended(true, s)) {
            return Err(format!("succeeded, but {step} never ended ok in the journal"));
        }
        if lines.iter().any(|l| !l.execute) {
            return Err("succeeded, but the journal shows a compensation".into());
        }
    } else {
        if let Some(step) = started.keys().find(|s| !ended(false, s)) {
            return Err(format!("rolled back, but {step} started and was never compensated"));
        }
        if let Some(step) = STEPS[2..].iter().find(|s| started.contains_key(*s)) {
            return Err(format!("rolled back, but {step}, after the crossing, started"));
        }
    }
    Ok(verdict)
}

/// Judges every round, prints the counts, and fails on the first wrong one (listing up to 20).
fn judge_all(
    test: &str,
    rounds: &[Round],
    records: &HashMap<OperationId, Vec<Record>>,
    journal: &Path,
    took: Duration,
) {
    let lines = journal::read(journal);
    let findings = journal::check(&lines, |_, _| None);
    assert!(
        findings.overlaps.is_empty(),
        "{} overlaps in the journal:\n{}",
        findings.overlaps.len(),
        findings.overlaps.iter().take(30).cloned().collect::<Vec<_>>().join("\n")
    );
    let mut by_op: HashMap<OperationId, Vec<&Line>> = HashMap::new();
    for line in &lines {
        by_op.entry(line.op).or_default().push(line);
    }
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    let mut verdicts: BTreeMap<String, usize> = BTreeMap::new();
    let mut followed: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_anchor: BTreeMap<(Anchor, String), usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for round in rounds {
        let answer = answer_name(&round.answer);
        *answers.entry(answer.clone()).or_default() += 1;
        *by_anchor.entry((round.anchor, answer)).or_default() += 1;
        let lines = by_op.get(&round.id).map(Vec::as_slice).unwrap_or_default();
        match judge(round, &records[&round.id], lines) {
            Ok(verdict) => {
                *verdicts.entry(format!("{verdict:?}")).or_default() += 1;
                *followed
                    .entry(format!("{} → {verdict:?}", answer_name(&round.answer)))
                    .or_default() += 1;
            }
            Err(why) => wrong.push(format!("operation {} ({}): {why}", round.id, round.actor)),
        }
    }
    println!("{test}: {} rounds, {AT_ONCE} at once, in {:.1} s", rounds.len(), took.as_secs_f64());
    println!("{test}: answers {answers:?}");
    println!("{test}: verdicts {verdicts:?}");
    println!("{test}: answers followed by {followed:?}");
    let spread: Vec<String> = by_anchor
        .iter()
        .map(|((anchor, answer), n)| format!("{} → {answer}: {n}", anchor.name()))
        .collect();
    println!("{test}: by instant: {}", spread.join(", "));
    assert!(
        wrong.is_empty(),
        "{} rounds went wrong:\n{}",
        wrong.len(),
        wrong.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    // The race was run: both sides of the crossing were hit.
    for kind in ["RolledBack", "Refused"] {
        assert!(verdicts.get(kind).is_some_and(|n| *n >= 20), "too few {kind}: {verdicts:?}");
    }
}

/// Reads every round's records.
async fn records_of(store: &dyn Store, rounds: &[Round]) -> HashMap<OperationId, Vec<Record>> {
    let mut records = HashMap::new();
    for round in rounds {
        records.insert(round.id, store.read(round.id).await.unwrap());
    }
    records
}

/// An executor over `store` that never runs an Operation: it submits and cancels.
fn canceller(store: Arc<dyn Store>) -> Executor {
    Executor::builder(store)
        .owner("canceller")
        .takeover_interval(None)
        .saga(saga::saga(&Journal::none()).unwrap())
        .build()
        .unwrap()
}

#[test]
fn a_thousand_cancels_racing_the_point_of_no_return_on_postgresql() {
    let test = "a_thousand_cancels_racing_the_point_of_no_return_on_postgresql";
    let Some(url) = database_url(test) else { return };
    let _serial = serial();
    let db = Db::new(&url, "fleet_test", 8);
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let mut workers: Vec<Proc> = ["c1", "c2"]
        .iter()
        .map(|name| worker(&db, name, &journal, &["--lease-ttl", "10000", "--takeover-ms", "500"]))
        .collect();
    let started = Instant::now();
    let canceller = canceller(db.store.clone());
    let rounds = db.runtime.block_on(race(&canceller, &journal, "pg"));
    let took = started.elapsed();
    let records = db.runtime.block_on(records_of(db.store.as_ref(), &rounds));
    let _ = db.runtime.block_on(canceller.shutdown(Duration::from_secs(10)));
    for worker in &mut workers {
        let status = worker.stop(Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "{}", worker.shown());
    }
    assert!(db.unfinished().is_empty(), "unfinished: {:?}", db.unfinished());
    let ended_here: usize = workers
        .iter()
        .map(|w| w.stdout_lines().iter().filter(|l| l.starts_with("operation ")).count())
        .sum();
    println!("{test}: the workers printed {ended_here} ends");
    judge_all(test, &rounds, &records, &journal, took);
    assert!(took < Duration::from_secs(100), "the rounds took {took:?}");
}

#[test]
fn a_thousand_cancels_racing_the_point_of_no_return_on_sled() {
    let test = "a_thousand_cancels_racing_the_point_of_no_return_on_sled";
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path().join("store")).unwrap());
    let started = Instant::now();
    let (rounds, records) = runtime.block_on(async {
        // The worker: the executor that runs every Operation.
        let worker = Executor::builder(store.clone())
            .owner("worker")
            .takeover_interval(Some(Duration::from_millis(500)))
            .saga(saga::saga(&Journal::open(&journal, "worker").unwrap()).unwrap())
            .build()
            .unwrap();
        let _ = worker.recover().await.unwrap();
        let canceller = canceller(store.clone());
        let rounds = race(&canceller, &journal, "sled").await;
        let records = records_of(store.as_ref(), &rounds).await;
        let _ = canceller.shutdown(Duration::from_secs(10)).await;
        let report = worker.shutdown(Duration::from_secs(10)).await;
        assert!(report.left.is_empty(), "{report:?}");
        (rounds, records)
    });
    let took = started.elapsed();
    let unfinished = runtime.block_on(store.list_unfinished()).unwrap();
    assert!(unfinished.ids.is_empty(), "unfinished: {:?}", unfinished.ids);
    judge_all(test, &rounds, &records, &journal, took);
    assert!(took < Duration::from_secs(100), "the rounds took {took:?}");
}
