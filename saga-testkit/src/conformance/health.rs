//! A healthy store checks clean, and many appenders at once keep every log whole.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use saga_core::log::Record;
use saga_core::store::{Lease, StoreError};
use saga_core::OperationId;

use super::LONG;
use std::sync::Arc;

use saga_core::store::Store;

use super::support::*;

/// `check` of a healthy store, without and with repair, finds nothing and counts every
/// Operation, after a mix of everything the other checks do (creates in several environments,
/// appends, finishes, claims, releases, expiries, log lines, a purge, a deleted environment).
pub async fn check_on_healthy_store<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("check_on_healthy_store", store)
        .run(|cx| async move {
            let report = cx.ok("checking an empty store", cx.store.check(false).await);
            if !report.findings.is_empty() || report.operations != 0 {
                cx.fail(format!("checking an empty store found {}", show_report(&report)));
            }
            let mut count = 0;
            for (i, env) in ["prod", "staging", "doomed", ""].iter().enumerate() {
                for j in 0..3u64 {
                    let (id, lease, _) = cx.create(env, 10 * i as u64 + j, "me").await;
                    count += 1;
                    cx.ok("appending", cx.store.append(&lease, &[started(id, 1)]).await);
                    cx.ok("logging", cx.store.append_log(&lease, &[line(id, 0, 5 + j)]).await);
                    match j {
                        0 => {
                            let r = finished(id, 2);
                            cx.ok("finishing", cx.store.append(&lease, &[r]).await);
                        }
                        1 => {
                            cx.ok("releasing", cx.store.release(&lease).await);
                            let l = cx.ok("claiming", cx.store.claim(id, "other", LONG).await);
                            cx.ok("renewing for 0 ms", cx.store.renew(&l, Duration::ZERO).await);
                        }
                        _ => {
                            cx.ok("claiming again", cx.store.claim(id, "me", LONG).await);
                        }
                    }
                }
            }
            cx.ok("purging some log lines", cx.store.purge_logs(6).await);
            let deleted =
                cx.ok("deleting an environment", cx.store.delete_environment("doomed").await);
            cx.equal(deleted, 3, "Operations deleted");
            count -= 3;
            for repair in [false, true, false] {
                let report = cx.ok("checking", cx.store.check(repair).await);
                if !report.findings.is_empty() {
                    cx.fail(format!(
                        "check(repair: {repair}) of a healthy store found {}",
                        show_report(&report)
                    ));
                }
                cx.equal(report.operations, count, "Operations counted by check");
            }
        })
        .await;
}

/// How many Operations [`concurrent_appenders`] runs at once, and how many appends each makes.
const APPENDERS: usize = 64;
const APPENDS: u64 = 20;

/// Many appenders at once: 64 Operations created concurrently, then 20 appends each (one
/// record at a time, a log line each, every other Operation finishing) from concurrent tasks,
/// each reading its own records back after every append, while other tasks run `check(false)`
/// and the listings. Every check finds nothing, and at the end every log is complete and
/// gap-free and the listings right.
pub async fn concurrent_appenders<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("concurrent_appenders", store)
        .run(|cx| async move {
            let mut creates = Vec::new();
            for i in 0..APPENDERS {
                let store = cx.store.clone();
                creates.push(tokio::spawn(async move {
                    let owner = format!("owner-{i}");
                    let lease = store.create(&appender_created(i), &owner, LONG).await;
                    lease.map(|l| (i, l)).map_err(|e| format!("creating Operation {i}: {e:?}"))
                }));
            }
            let mut leases = Vec::new();
            for task in creates {
                leases.push(cx.joined(task.await));
            }

            let done = Arc::new(AtomicBool::new(false));
            let watchers = [
                tokio::spawn(keep_checking(cx.store.clone(), done.clone())),
                tokio::spawn(keep_listing(cx.store.clone(), done.clone())),
            ];
            let barrier = Arc::new(tokio::sync::Barrier::new(APPENDERS));
            let mut appenders = Vec::new();
            for (i, lease) in leases.iter().cloned() {
                let (store, barrier) = (cx.store.clone(), barrier.clone());
                appenders.push(tokio::spawn(async move {
                    barrier.wait().await;
                    append_all(store, i, lease).await
                }));
            }
            for task in appenders {
                cx.joined(task.await);
            }
            done.store(true, Ordering::SeqCst);
            for task in watchers {
                cx.joined(task.await);
            }

            let mut unfinished = Vec::new();
            for (i, lease) in &leases {
                let id = lease.operation;
                let records = cx.read(id, "after the concurrent appends").await;
                let mut expected = vec![appender_created(*i)];
                expected[0].operation = id;
                expected.extend((1..=APPENDS).map(|seq| appender_record(*i, id, seq)));
                if records != expected {
                    cx.fail(format!(
                        "Operation {i} after {APPENDS} concurrent appends: expected {}, read {}",
                        show_records(&expected),
                        show_records(&records)
                    ));
                }
                let lines = cx.ok("reading log lines", cx.store.read_log(id).await);
                let seqs: Vec<u64> = lines.iter().map(|l| l.seq).collect();
                if seqs != (0..APPENDS).collect::<Vec<_>>() {
                    cx.fail(format!(
                        "Operation {i}'s log lines after concurrent appends: {seqs:?}"
                    ));
                }
                if i % 2 == 1 {
                    unfinished.push(id);
                }
            }
            unfinished.sort();
            cx.assert_unfinished(&unfinished, "after the concurrent appends").await;
            for env in 0..4 {
                // Created at 1000 + i: creation order is the order of `i`.
                let ids: Vec<OperationId> =
                    leases.iter().filter(|(i, _)| i % 4 == env).map(|(_, l)| l.operation).collect();
                let name = format!("env-{env}");
                cx.assert_env(&name, 0, u64::MAX, &ids, "after the concurrent appends").await;
            }
        })
        .await;
}

/// The `OperationCreated` record of appender `i` (with a new id).
fn appender_created(i: usize) -> Record {
    created(OperationId::new(), &format!("env-{}", i % 4), 1_000 + i as u64)
}

/// Record `seq` of appender `i`: the last one of every other finishes.
fn appender_record(i: usize, id: OperationId, seq: u64) -> Record {
    if seq == APPENDS && i % 2 == 0 {
        finished(id, seq)
    } else {
        started(id, seq)
    }
}

/// Appends the records of appender `i`, one at a time, with a log line each, and reads them
/// back after each append.
async fn append_all<S: Store + ?Sized>(
    store: Arc<S>,
    i: usize,
    lease: Lease,
) -> Result<(), String> {
    let id = lease.operation;
    for seq in 1..=APPENDS {
        let r = appender_record(i, id, seq);
        let failed = |what: &str, e: StoreError| format!("Operation {i}: {what} {seq}: {e:?}");
        store.append(&lease, &[r]).await.map_err(|e| failed("appending record", e))?;
        let l = line(id, seq - 1, 1_000 + seq);
        store.append_log(&lease, &[l]).await.map_err(|e| failed("appending log line", e))?;
        let records = store.read(id).await.map_err(|e| failed("reading after record", e))?;
        let gap_free =
            records.iter().enumerate().all(|(n, r)| r.seq == n as u64 && r.operation == id);
        if records.len() as u64 != seq + 1 || !gap_free {
            let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
            return Err(format!(
                "Operation {i}: right after appending record {seq}, read sequence numbers {seqs:?}"
            ));
        }
    }
    Ok(())
}

/// Runs `check(false)` until `done` (at least once); it must find nothing.
async fn keep_checking<S: Store + ?Sized>(
    store: Arc<S>,
    done: Arc<AtomicBool>,
) -> Result<(), String> {
    loop {
        let last = done.load(Ordering::SeqCst);
        let report = store.check(false).await;
        let report = report.map_err(|e| format!("check(false) while appending: {e:?}"))?;
        if !report.findings.is_empty() {
            return Err(format!("check(false) while appending found {}", show_report(&report)));
        }
        if last {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Lists unfinished Operations and an environment until `done`: nothing damaged, the
/// environment whole.
async fn keep_listing<S: Store + ?Sized>(
    store: Arc<S>,
    done: Arc<AtomicBool>,
) -> Result<(), String> {
    while !done.load(Ordering::SeqCst) {
        let listing = store.list_unfinished().await;
        let listing = listing.map_err(|e| format!("list_unfinished while appending: {e:?}"))?;
        if !listing.damaged.is_empty() {
            return Err(format!("list_unfinished while appending: damaged {:?}", listing.damaged));
        }
        let listing = store.list_environment("env-0", 0, u64::MAX).await;
        let listing = listing.map_err(|e| format!("list_environment while appending: {e:?}"))?;
        if listing.ids.len() != APPENDERS / 4 || !listing.damaged.is_empty() {
            return Err(format!("list_environment(\"env-0\") while appending: {listing:?}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}
