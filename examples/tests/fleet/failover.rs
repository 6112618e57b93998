//! A failover of the database under three workers: 200 Operations on three `fleet worker`
//! processes sharing a primary and its synchronous standby through one multi-host URL
//! (`SAGA_TEST_POSTGRES_FAILOVER_URL`, `target_session_attrs=read-write`); every process of the
//! primary SIGKILLed at a random instant while work is in flight, the standby promoted, the
//! workers carrying on against it. Then: every Operation ended exactly once, every outcome a
//! worker printed (acknowledged by the store before it printed it) is in the promoted standby's
//! store, and the outage each worker saw (from its first failed store call to its first
//! successful one) is printed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use saga_core::{OperationId, Outcome};
use saga_store_postgres::testing::failover_pair;

use crate::support::{fleet_output, outcomes, serial, wait_until, worker, Db, Proc};

/// How many Operations, in two batches: the second is submitted once the first ones finish, so
/// that the failover falls on work in flight whatever the machine's speed.
const FIRST: usize = 100;
const SECOND: usize = 100;

/// The workers' lease: an Operation whose driver halted in the outage is taken over soon after.
const LEASE_MS: &str = "5000";

/// `fleet submit` of `count` Operations whose steps sleep 200–600 ms: their ids.
fn submit(db: &Db, count: usize) -> Vec<OperationId> {
    let mut args = db.args();
    args.extend(
        ["--count", &count.to_string(), "--step-ms", "200", "--jitter-ms", "400", "submit"]
            .map(String::from),
    );
    let out = fleet_output(&args, Duration::from_secs(120));
    out.lines().map(|l| l.strip_prefix("submitted ").unwrap().parse().unwrap()).collect()
}

/// The outcomes a worker printed (`operation ID: OUTCOME`), by Operation; every other line
/// (`stopped here`, the outage lines) says nothing of an outcome.
fn printed_outcomes(proc: &Proc) -> Vec<(OperationId, String)> {
    proc.stdout_lines()
        .iter()
        .filter_map(|line| {
            let rest = line.strip_prefix("operation ")?;
            let (id, tail) = rest.split_once(": ")?;
            if tail.starts_with("stopped here") || tail.starts_with("unrecoverable") {
                return None;
            }
            Some((id.parse().ok()?, tail.to_owned()))
        })
        .collect()
}

/// The outages a worker printed, in ms (`store answering again after N ms`).
fn outages(proc: &Proc) -> Vec<u64> {
    proc.stdout_lines()
        .iter()
        .filter_map(|l| l.strip_prefix("store answering again after ")?.strip_suffix(" ms"))
        .filter_map(|n| n.parse().ok())
        .collect()
}

#[test]
fn two_hundred_operations_lose_nothing_acknowledged_across_a_failover_to_a_synchronous_standby() {
    let test =
        "two_hundred_operations_lose_nothing_acknowledged_across_a_failover_to_a_synchronous_standby";
    let _serial = serial();
    let Some(pair) = failover_pair(test) else { return };
    let started = Instant::now();
    let db = Db::new(&pair.url, "failover_test", 4);
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let names = ["f1", "f2", "f3"];
    // f1 with the store's own retries (which may hide a short outage from the executor); f2 and
    // f3 without, so that the executor sees every failed call and retries on its own.
    let mut workers: Vec<Proc> = names
        .iter()
        .map(|name| {
            let retries = if *name == "f1" { "4" } else { "0" };
            let flags =
                ["--lease-ttl", LEASE_MS, "--takeover-ms", "200", "--store-retries", retries];
            worker(&db, name, &journal, &flags)
        })
        .collect();
    let shown = |workers: &[Proc]| workers.iter().map(Proc::shown).collect::<Vec<_>>().join("\n");
    let printed =
        |workers: &[Proc]| -> usize { workers.iter().map(|w| printed_outcomes(w).len()).sum() };

    let mut submitted = submit(&db, FIRST);
    wait_until(
        Duration::from_secs(60),
        "a first operation finishes",
        || shown(&workers),
        || printed(&workers) > 0,
    );
    submitted.extend(submit(&db, SECOND));
    assert_eq!(submitted.len(), FIRST + SECOND);
    // A random instant while the second batch runs (each of its Operations takes at least
    // 800 ms of steps from its claim on).
    std::thread::sleep(Duration::from_millis(fastrand::u64(0..=700)));
    let before = printed(&workers);
    let failover_began = Instant::now();
    pair.failover();
    let failover_took = failover_began.elapsed();

    // Carry on against the promoted standby until nothing is left unfinished.
    wait_until(
        Duration::from_secs(90),
        "every operation finishes after the failover",
        || shown(&workers),
        || db.unfinished().is_empty(),
    );
    let all_done = failover_began.elapsed();
    for w in &mut workers {
        let status = w.stop(Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "{}", w.shown());
    }

    // The store is the former standby's, now the primary.
    let rows = db.query("SELECT pg_is_in_recovery(), inet_server_port()");
    let (in_recovery, port): (bool, i32) = (rows[0].get(0), rows[0].get(1));
    assert!(!in_recovery, "the store's server is still a standby");
    assert_eq!(format!("127.0.0.1:{port}"), pair.standby, "the store's server is not the standby");

    // Every Operation ended exactly once.
    let mut stored: HashMap<OperationId, Outcome> = HashMap::new();
    for id in &submitted {
        let found = outcomes(&db.records(*id));
        assert_eq!(found, [Outcome::Succeeded], "operation {id}\n{}", shown(&workers));
        stored.insert(*id, found[0].clone());
    }
    // Every outcome printed (acknowledged) is the stored one, and none was printed twice.
    let mut acknowledged: HashMap<OperationId, String> = HashMap::new();
    for w in &workers {
        for (id, outcome) in printed_outcomes(w) {
            let held = stored.get(&id).map(ToString::to_string);
            assert_eq!(
                held.as_deref(),
                Some(outcome.as_str()),
                "{} printed {outcome:?} for operation {id}: the store holds {held:?}\n{}",
                w.name,
                shown(&workers)
            );
            if let Some(first) = acknowledged.insert(id, w.name.clone()) {
                panic!("operation {id} ended twice: in {first} and in {}", w.name);
            }
        }
    }
    // Why drivers stopped: each a truthful halt (the store failing, the lease running out),
    // resumed by a worker afterwards.
    let mut stops: HashMap<String, usize> = HashMap::new();
    for w in &workers {
        for line in w.stdout_lines() {
            if let Some((_, why)) = line.split_once(": stopped here: ") {
                // Ids and numbers left out, so that alike reasons count together.
                let why: Vec<&str> = why
                    .split_whitespace()
                    .map(|w| if w.chars().any(|c| c.is_ascii_digit()) { "N" } else { w })
                    .collect();
                *stops.entry(why.join(" ").chars().take(100).collect()).or_default() += 1;
            }
        }
    }
    let stopped_here: usize = stops.values().sum();
    let outages: Vec<String> = workers
        .iter()
        .map(|w| match outages(w).as_slice() {
            [] => format!("{} none seen", w.name),
            ms => format!(
                "{} {}",
                w.name,
                ms.iter().map(|m| format!("{m} ms")).collect::<Vec<_>>().join(" + ")
            ),
        })
        .collect();
    println!(
        "{test}: {before} of {} outcomes printed before the failover (kill and promotion: {:.1} \
         s); all finished {:.1} s after it began; {} outcomes printed, each in the new primary's \
         store; {} operations ended once each; {stopped_here} drivers stopped by the outage and \
         resumed ({stops:?}); outage per worker (first failed call to first success): {}; {:.1} s in all",
        FIRST + SECOND,
        failover_took.as_secs_f64(),
        all_done.as_secs_f64(),
        acknowledged.len(),
        stored.len(),
        outages.join(", "),
        started.elapsed().as_secs_f64()
    );
}
