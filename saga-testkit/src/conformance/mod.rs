//! A conformance suite for [`Store`]s: the contract of the [`Store`] trait, stated as checks that
//! any store runs with one call.
//!
//! Each check is an `async fn` taking a **fresh, empty** store behind an [`Arc`] (a concrete
//! store or an `Arc<dyn Store>`), and panics with a message naming the check and what differed
//! (`store conformance check `leases_fencing` failed: ...`). [`run_all`] runs every check, each
//! against a store of its own from an (async) factory:
//!
//! ```
//! use std::sync::Arc;
//! use saga_core::MemoryStore;
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
//! saga_testkit::conformance::run_all(|| async { Arc::new(MemoryStore::new()) }).await;
//! # });
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A store's own test file may rather run the checks one by one, one `#[tokio::test]` each, so
//! that a failure names its test. [`conformance_tests!`](crate::conformance_tests) writes them
//! all, `conformance_<check>`, from a future that gives a fresh store and whatever must outlive
//! it (a temporary directory, a database schema), so that a check added here runs on every
//! store (the crate using it needs `tokio` with its `macros` and `rt-multi-thread` features):
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use saga_core::MemoryStore;
//! saga_testkit::conformance_tests!(async { ((), Arc::new(MemoryStore::new())) });
//! ```
//!
//! or call one check by hand:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use saga_core::MemoryStore;
//! #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
//! async fn conformance_claim_race() {
//!     saga_testkit::conformance::claim_race(Arc::new(MemoryStore::new())).await;
//! }
//! ```
//!
//! Run them on a multi-threaded runtime: [`claim_race`] and [`concurrent_appenders`] spawn tasks
//! that should really run at once. Every check ends with `check(false)` finding nothing, and
//! gives up with a panic after a minute (a store that hangs). The checks are black-box: they see
//! what a store answers, not what reached its disk, so crash durability is for each store's own
//! tests (reopening, fault injection).
//!
//! The checks:
//!
//! - [`ordering_and_gaps`]: appends in sequence only (`OutOfSequence` with the right numbers),
//!   nothing of a refused batch written, records of another Operation refused, `read` in order,
//!   `NotFound`, `AlreadyExists`, `create` of anything but `OperationCreated` at 0 refused.
//! - [`acknowledged_writes`]: after `Ok`, `read` and the listings show exactly what was written;
//!   every record kind (those of the point of no return too: a failure without effect, attention
//!   needed and retried, an abandoned outcome) and a large record round-trip; an empty append is
//!   harmless.
//! - [`lease_on_create`]: `create` grants the creator epoch 1 for the ttl; others are `Owned`.
//! - [`claim_race`]: 16 concurrent claims of one Operation: exactly one wins, the others are
//!   `Owned` by it.
//! - [`epochs_grow`]: claims after a release, after an expiry and by the holder itself grant
//!   ever higher epochs; only the newest lease writes.
//! - [`leases_fencing`]: a stale, forged or future lease's `append` and `renew` are `Fenced`
//!   and write nothing.
//! - [`lease_expiry`]: a 50 ms lease is claimable by another owner once it passed.
//! - [`release`]: twice is harmless; a non-current lease's release does nothing.
//! - [`unfinished_list`]: unfinished Operations in id order; `OperationFinished` removes one.
//! - [`environment_bounds`]: `[since, until)`, empty and inverted ranges, creation order.
//! - [`environment_names`]: names that are prefixes of each other, the empty name, 10 KiB,
//!   non-ASCII, SQL wildcards.
//! - [`log_lines`]: `append_log`/`read_log` in order; `purge_logs` removes only older lines,
//!   counts them, keeps records.
//! - [`log_lines_fenced`]: a line under a lease that is not current is `Fenced` and writes
//!   nothing; a stored line is never replaced.
//! - [`delete_environment`]: removes that environment's Operations everywhere, and only those.
//! - [`check_on_healthy_store`]: `check`, with and without repair, finds nothing after a mix of
//!   everything.
//! - [`concurrent_appenders`]: 64 Operations × 20 appends from concurrent tasks, with checks
//!   running: every log complete and gap-free.
//! - [`cancel_requests`]: one pending request per Operation, listed, answered (removed) by an
//!   append of `CancelRequested`, `CancelRefused` or `OperationFinished`; none for a finished
//!   or deleted Operation.
//! - [`cancel_barriers`]: while a request is pending, passing the point of no return and
//!   finishing as succeeded or abandoned are `CancelPending` and write nothing.
//! - [`resource_queues`]: unfinished Operations of a resource in creation order.
//! - [`wake_ups`]: a store with wake-ups tells of submitted and released Operations, cancel
//!   requests, and Operations that settled.

mod cancels;
mod logs;
mod wake_ups;

pub use self::cancels::{cancel_barriers, cancel_requests};
pub use self::logs::{log_lines, log_lines_fenced};
pub use self::wake_ups::wake_ups;

use std::fmt::{Debug, Display};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use saga_core::log::{LogLevel, LogLine, LogSource, Record, RecordKind};
use saga_core::store::{now_ms, CheckReport, Lease, Store, StoreError};
use saga_core::{NotUndone, NotUndoneReason, OperationId, Outcome, Resource, RollbackCause};

/// A lease that does not expire while a check runs.
const LONG: Duration = Duration::from_secs(600);

/// The short lease of [`lease_expiry`].
const SHORT: Duration = Duration::from_millis(50);

/// How long one check may take before it counts as hanging.
const HANG: Duration = Duration::from_secs(60);

/// Runs every check of the suite, each against a fresh store from `fresh`, and panics at the
/// first that fails with a message naming it and what differed.
///
/// `fresh` must give an empty store each time (a new directory, a new schema): the checks list
/// whole environments and the whole unfinished index. It may be async, for a store that
/// connects somewhere; wrap a store that must outlive a guard (a temporary directory) by keeping
/// the guard in the closure's captures.
pub async fn run_all<S, F, Fut>(fresh: F)
where
    S: Store + ?Sized,
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<S>>,
{
    ordering_and_gaps(fresh().await).await;
    acknowledged_writes(fresh().await).await;
    lease_on_create(fresh().await).await;
    claim_race(fresh().await).await;
    epochs_grow(fresh().await).await;
    leases_fencing(fresh().await).await;
    lease_expiry(fresh().await).await;
    release(fresh().await).await;
    unfinished_list(fresh().await).await;
    environment_bounds(fresh().await).await;
    environment_names(fresh().await).await;
    log_lines(fresh().await).await;
    log_lines_fenced(fresh().await).await;
    delete_environment(fresh().await).await;
    check_on_healthy_store(fresh().await).await;
    concurrent_appenders(fresh().await).await;
    cancel_requests(fresh().await).await;
    cancel_barriers(fresh().await).await;
    resource_queues(fresh().await).await;
    wake_ups(fresh().await).await;
}

/// Writes one `#[tokio::test]` per conformance check, named `conformance_<check>`, each on a
/// fresh store from `$fresh`: a future giving `(guard, Arc<S>)`, where `guard` (a temporary
/// directory, say, or `()`) lives until the test ends. See the [module docs](crate::conformance).
#[macro_export]
macro_rules! conformance_tests {
    ($fresh:expr) => {
        $crate::conformance_tests!(@each $fresh;
            conformance_ordering_and_gaps => ordering_and_gaps,
            conformance_acknowledged_writes => acknowledged_writes,
            conformance_lease_on_create => lease_on_create,
            conformance_claim_race => claim_race,
            conformance_epochs_grow => epochs_grow,
            conformance_leases_fencing => leases_fencing,
            conformance_lease_expiry => lease_expiry,
            conformance_release => release,
            conformance_unfinished_list => unfinished_list,
            conformance_environment_bounds => environment_bounds,
            conformance_environment_names => environment_names,
            conformance_log_lines => log_lines,
            conformance_log_lines_fenced => log_lines_fenced,
            conformance_delete_environment => delete_environment,
            conformance_check_on_healthy_store => check_on_healthy_store,
            conformance_concurrent_appenders => concurrent_appenders,
            conformance_cancel_requests => cancel_requests,
            conformance_cancel_barriers => cancel_barriers,
            conformance_resource_queues => resource_queues,
            conformance_wake_ups => wake_ups,
        );
    };
    (@each $fresh:expr; $($test:ident => $check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let (_guard, store) = $fresh.await;
                $crate::conformance::$check(store).await;
            }
        )*
    };
}

// ------------------------------------------------------------------------------ the checks

/// `resource_queue` lists a resource's unfinished Operations in creation order; a finish (at the
/// end of a batch too) and `delete_environment` remove them; resources whose kind and name
/// concatenate alike (`ab`/`c` and `a`/`bc`) never share a queue.
pub async fn resource_queues<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("resource_queues", store)
        .run(|cx| async move {
            let on = |id: OperationId, kind: &str, name: &str, env: &str| {
                let mut record = created(id, env, now_ms());
                if let RecordKind::OperationCreated { resource, .. } = &mut record.kind {
                    *resource = Resource::new(kind, name);
                }
                record
            };
            let queue = |kind: &str, name: &str| {
                let resource = Resource::new(kind, name);
                let store = cx.store.clone();
                async move { store.resource_queue(&resource).await }
            };
            let empty = cx.ok("reading an empty queue", queue("app", "web").await);
            if !empty.is_empty() {
                cx.fail(format!("an empty store has a queue: {empty:?}"));
            }
            let ids: Vec<OperationId> = (0..4).map(|_| OperationId::new()).collect();
            let mut leases = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                let env = if i == 3 { "gone" } else { "prod" };
                let what = format!("creating Operation {i} on ab/c");
                leases
                    .push(cx.ok(&what, cx.store.create(&on(*id, "ab", "c", env), "x", LONG).await));
            }
            let other = OperationId::new();
            cx.ok(
                "creating on a/bc",
                cx.store.create(&on(other, "a", "bc", "prod"), "x", LONG).await,
            );
            let got = cx.ok("reading the queue of ab/c", queue("ab", "c").await);
            if got != ids {
                cx.fail(format!("expected {ids:?} in creation order, got {got:?}"));
            }
            let got = cx.ok("reading the queue of a/bc", queue("a", "bc").await);
            if got != vec![other] {
                cx.fail(format!("a/bc shares a queue with ab/c: {got:?}"));
            }
            let batch = [started(ids[1], 1), finished(ids[1], 2)];
            cx.ok("finishing the second in a batch", cx.store.append(&leases[1], &batch).await);
            cx.ok("finishing the first", cx.store.append(&leases[0], &[finished(ids[0], 1)]).await);
            cx.ok(
                "deleting the environment of the fourth",
                cx.store.delete_environment("gone").await,
            );
            let got = cx.ok("reading the queue of ab/c", queue("ab", "c").await);
            if got != vec![ids[2]] {
                cx.fail(format!(
                    "after two finishes and a deletion expected [{}], got {got:?}",
                    ids[2]
                ));
            }
        })
        .await;
}

/// Records are appended in sequence only: any other sequence number is
/// [`StoreError::OutOfSequence`] naming the expected and the given number, and nothing of a
/// refused batch is written; records of another Operation are refused; `read` returns records
/// in order (past 255 too) and [`StoreError::NotFound`] for an unknown id; a second `create` is
/// [`StoreError::AlreadyExists`]; a `create` of anything but `OperationCreated` at sequence 0 is
/// refused and leaves no trace.
pub async fn ordering_and_gaps<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("ordering_and_gaps", store)
        .run(|cx| async move {
            let (id, lease, first) = cx.create("prod", 10, "me").await;
            cx.assert_records(id, std::slice::from_ref(&first), "after create").await;

            let gap = cx.store.append(&lease, &[started(id, 2)]).await;
            cx.out_of_sequence(&gap, id, 1, 2, "appending record 2 right after create");
            let again = cx.store.append(&lease, &[started(id, 0)]).await;
            cx.out_of_sequence(&again, id, 1, 0, "appending record 0 again");
            let holed = cx.store.append(&lease, &[started(id, 1), started(id, 3)]).await;
            cx.out_of_sequence(&holed, id, 2, 3, "appending the batch [1, 3]");
            cx.assert_records(id, std::slice::from_ref(&first), "after refused appends").await;

            let other = OperationId::new();
            let foreign = cx.store.append(&lease, &[started(other, 1)]).await;
            cx.refused(&foreign, "appending another Operation's record 1 with this lease");
            let mixed = cx.store.append(&lease, &[started(id, 1), started(other, 2)]).await;
            cx.refused(&mixed, "appending [this Operation's 1, another Operation's 2]");
            cx.assert_records(id, std::slice::from_ref(&first), "after foreign records").await;

            // In order, in batches and alone, and past 255 (keys that sort as bytes or text).
            let mut expected = vec![first.clone()];
            let batch: Vec<Record> = (1..=3).map(|seq| started(id, seq)).collect();
            cx.ok("appending the batch [1, 2, 3]", cx.store.append(&lease, &batch).await);
            expected.extend(batch);
            let one = started(id, 4);
            cx.ok("appending record 4", cx.store.append(&lease, std::slice::from_ref(&one)).await);
            expected.push(one);
            let dup = cx.store.append(&lease, &[started(id, 4)]).await;
            cx.out_of_sequence(&dup, id, 5, 4, "appending record 4 twice");
            for from in [5, 105, 205] {
                let batch: Vec<Record> = (from..from + 100).map(|seq| started(id, seq)).collect();
                cx.ok("appending a batch of 100", cx.store.append(&lease, &batch).await);
                expected.extend(batch);
            }
            cx.assert_records(id, &expected, "after 305 records").await;

            let unknown = OperationId::new();
            match cx.store.read(unknown).await {
                Err(StoreError::NotFound(x)) if x == unknown => {}
                other => cx.fail(format!(
                    "reading an unknown id: expected NotFound({unknown}), got {}",
                    brief(&other)
                )),
            }

            let twice = cx.store.create(&created(id, "prod", 10), "me", LONG).await;
            match &twice {
                Err(StoreError::AlreadyExists(x)) if *x == id => {}
                other => cx.fail(format!(
                    "creating {id} twice: expected AlreadyExists({id}), got {}",
                    brief(other)
                )),
            }
            let elsewhere = cx.store.create(&created(id, "staging", 10), "other", LONG).await;
            if !matches!(&elsewhere, Err(StoreError::AlreadyExists(x)) if *x == id) {
                cx.fail(format!(
                    "creating {id} again in another environment: expected AlreadyExists({id}), \
                     got {}",
                    brief(&elsewhere)
                ));
            }
            cx.assert_records(id, &expected, "after creating it twice").await;
            cx.assert_env("staging", 0, u64::MAX, &[], "after a refused create there").await;
            let owned = cx.store.claim(id, "other", LONG).await;
            cx.owned(&owned, "me", "claiming after a refused second create by `other`");

            let not_created = OperationId::new();
            let wrong = cx.store.create(&started(not_created, 0), "me", LONG).await;
            cx.refused(&wrong, "creating with a StepStarted record");
            cx.assert_absent(not_created, "after a create with a StepStarted record").await;
            let late = OperationId::new();
            let mut at_one = created(late, "prod", 11);
            at_one.seq = 1;
            let wrong = cx.store.create(&at_one, "me", LONG).await;
            cx.refused(&wrong, "creating with an OperationCreated record at sequence 1");
            cx.assert_absent(late, "after a create at sequence 1").await;
            cx.assert_unfinished(&[id], "after the refused creates").await;
            cx.assert_env("prod", 0, u64::MAX, &[id], "after the refused creates").await;

            let unknown = OperationId::new();
            match cx.store.claim(unknown, "me", LONG).await {
                Err(StoreError::NotFound(x)) if x == unknown => {}
                other => cx.fail(format!(
                    "claiming an unknown id: expected NotFound({unknown}), got {}",
                    brief(&other)
                )),
            }
        })
        .await;
}

/// What an `Ok` acknowledged is what reads show, at once: `read` after every `create` and
/// `append` returns exactly the records written (every record kind, a 256 KiB record), the
/// listings show a new Operation, a finishing append removes it from the unfinished list at
/// once, and an empty append changes nothing.
pub async fn acknowledged_writes<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("acknowledged_writes", store)
        .run(|cx| async move {
            let now = now_ms();
            let (id, lease, first) = cx.create("prod", now, "me").await;
            cx.assert_unfinished(&[id], "right after create").await;
            cx.assert_env("prod", now, now + 1, &[id], "right after create").await;
            cx.ok("an empty append right after create", cx.store.append(&lease, &[]).await);
            let mut expected = vec![first];
            cx.assert_records(id, &expected, "after an empty append").await;

            let large = vec![b'7'; 256 * 1024];
            let kinds = vec![
                RecordKind::StepStarted { step: "vm".into(), attempt: 1 },
                RecordKind::StepFailed {
                    step: "vm".into(),
                    error: "quota exceeded, retrying".into(),
                    retryable: true,
                },
                RecordKind::StepStarted { step: "vm".into(), attempt: 2 },
                RecordKind::StepSucceeded {
                    step: "vm".into(),
                    output: br#"{"id":"i-1"}"#.to_vec(),
                },
                RecordKind::StepStarted { step: "big".into(), attempt: 1 },
                RecordKind::StepSucceeded { step: "big".into(), output: large },
                RecordKind::CancelRequested { actor: "alice".into(), reason: "wrong size".into() },
                RecordKind::CompensationStarted { step: "big".into(), attempt: 1 },
                RecordKind::CompensationFailed {
                    step: "big".into(),
                    error: "still attached".into(),
                    retryable: false,
                },
                RecordKind::CompensationStarted { step: "vm".into(), attempt: 1 },
                RecordKind::CompensationSucceeded { step: "vm".into() },
            ];
            for kind in kinds {
                let name = kind.name();
                let r = record(id, expected.len() as u64, kind);
                let what = format!("appending {name} at {}", r.seq);
                cx.ok(&what, cx.store.append(&lease, std::slice::from_ref(&r)).await);
                expected.push(r);
                cx.assert_records(id, &expected, &format!("right after {what}")).await;
            }
            cx.ok("an empty append", cx.store.append(&lease, &[]).await);
            cx.assert_records(id, &expected, "after an empty append").await;
            cx.assert_unfinished(&[id], "before OperationFinished").await;

            let outcome = Outcome::RollbackIncomplete {
                cause: RollbackCause::Cancelled {
                    actor: "alice".into(),
                    reason: "wrong size".into(),
                },
                not_undone: vec![NotUndone {
                    step: "big".into(),
                    reason: NotUndoneReason::CompensationFailed("still attached".into()),
                }],
            };
            let done = record(id, expected.len() as u64, RecordKind::OperationFinished { outcome });
            cx.ok(
                "appending OperationFinished",
                cx.store.append(&lease, std::slice::from_ref(&done)).await,
            );
            expected.push(done);
            cx.assert_records(id, &expected, "right after OperationFinished").await;
            cx.assert_unfinished(&[], "right after OperationFinished").await;
            cx.assert_env("prod", 0, u64::MAX, &[id], "after OperationFinished").await;

            // The kinds of the point of no return: a failure without effect, attention needed,
            // retried, needed again, and the Operation abandoned.
            let (other, lease, first) = cx.create("prod", now + 1, "me").await;
            let mut expected = vec![first];
            let kinds = vec![
                RecordKind::StepStarted { step: "swap".into(), attempt: 1 },
                RecordKind::StepFailedWithoutEffect {
                    step: "swap".into(),
                    error: "refused".into(),
                    retryable: true,
                },
                RecordKind::StepStarted { step: "swap".into(), attempt: 2 },
                RecordKind::StepFailed {
                    step: "swap".into(),
                    error: "timed out".into(),
                    retryable: true,
                },
                RecordKind::AttentionNeeded { step: "swap".into(), error: "timed out".into() },
                RecordKind::AttentionRetried { actor: "bob".into(), reason: "fixed it".into() },
                RecordKind::StepStarted { step: "swap".into(), attempt: 3 },
                RecordKind::StepFailed {
                    step: "swap".into(),
                    error: "timed out again".into(),
                    retryable: true,
                },
                RecordKind::AttentionNeeded {
                    step: "swap".into(),
                    error: "timed out again".into(),
                },
            ];
            for kind in kinds {
                let name = kind.name();
                let r = record(other, expected.len() as u64, kind);
                let what = format!("appending {name} at {}", r.seq);
                cx.ok(&what, cx.store.append(&lease, std::slice::from_ref(&r)).await);
                expected.push(r);
                cx.assert_records(other, &expected, &format!("right after {what}")).await;
            }
            cx.assert_unfinished(&[other], "while an Operation needs attention").await;
            let outcome = Outcome::Abandoned {
                step: "swap".into(),
                error: "timed out again".into(),
                actor: "bob".into(),
                reason: "done by hand".into(),
            };
            let done =
                record(other, expected.len() as u64, RecordKind::OperationFinished { outcome });
            cx.ok(
                "appending OperationFinished (abandoned)",
                cx.store.append(&lease, std::slice::from_ref(&done)).await,
            );
            expected.push(done);
            cx.assert_records(other, &expected, "right after OperationFinished (abandoned)").await;
            cx.assert_unfinished(&[], "right after OperationFinished (abandoned)").await;
            cx.assert_env("prod", 0, u64::MAX, &[id, other], "after both finished").await;
        })
        .await;
}

/// `create` grants the creator the first lease: epoch 1, its owner name, expiring after the
/// ttl; another owner's claim is then [`StoreError::Owned`] naming the creator, and the
/// creator's lease appends.
pub async fn lease_on_create<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("lease_on_create", store)
        .run(|cx| async move {
            let before = now_ms();
            let (id, lease, _) = cx.create("prod", before, "creator").await;
            let expected = Lease {
                operation: id,
                owner: "creator".into(),
                epoch: 1,
                expires_ms: lease.expires_ms,
            };
            if lease != expected {
                cx.fail(format!("create granted {lease:?}, expected {expected:?}"));
            }
            // Allow for a store whose clock is not this process's (a database's), by minutes.
            let ttl = LONG.as_millis() as u64;
            if lease.expires_ms < before + ttl - 120_000
                || lease.expires_ms > now_ms() + ttl + 120_000
            {
                cx.fail(format!(
                    "create with a ttl of {ttl} ms at {before} granted a lease expiring at {}",
                    lease.expires_ms
                ));
            }
            let other = cx.store.claim(id, "other", LONG).await;
            cx.owned(&other, "creator", "claiming a just-created Operation by another owner");
            let r = started(id, 1);
            cx.ok("appending with the creator's lease", cx.store.append(&lease, &[r]).await);
            let renewed = cx.ok("renewing the creator's lease", cx.store.renew(&lease, LONG).await);
            if renewed.epoch != 1 || renewed.owner != "creator" || renewed.operation != id {
                cx.fail(format!(
                    "renewing {lease:?} gave {renewed:?}: same epoch and owner expected"
                ));
            }
            let r = started(id, 2);
            cx.ok("appending with the renewed lease", cx.store.append(&renewed, &[r]).await);
            let other = cx.store.claim(id, "other", LONG).await;
            cx.owned(&other, "creator", "claiming a renewed lease by another owner");
        })
        .await;
}

/// How many owners race in [`claim_race`].
const RACERS: usize = 16;

/// Of 16 concurrent claims of one Operation by distinct owners with a long ttl, exactly one
/// wins (with a higher epoch) and the others are [`StoreError::Owned`] by the winner; twice,
/// after a release and after an expiry.
pub async fn claim_race<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("claim_race", store)
        .run(|cx| async move {
            let (id, lease, _) = cx.create("prod", now_ms(), "creator").await;
            cx.ok("releasing the creator's lease", cx.store.release(&lease).await);
            let first = race(cx, id, "round1", "after a release").await;
            if first.epoch <= lease.epoch {
                cx.fail(format!(
                    "the winner got epoch {}, after epoch {}",
                    first.epoch, lease.epoch
                ));
            }
            cx.ok(
                "appending with the winner's lease",
                cx.store.append(&first, &[started(id, 1)]).await,
            );

            let zero = cx.ok(
                "renewing the winner's lease for 0 ms",
                cx.store.renew(&first, Duration::ZERO).await,
            );
            sleep_past(zero.expires_ms, Duration::from_millis(5)).await;
            let second = race(cx, id, "round2", "after an expiry").await;
            if second.epoch <= first.epoch {
                cx.fail(format!(
                    "the second winner got epoch {}, after epoch {}",
                    second.epoch, first.epoch
                ));
            }
            let stale = cx.store.append(&first, &[started(id, 2)]).await;
            cx.fenced(&stale, &first, &second.owner, "appending with the first winner's lease");
            let r = started(id, 2);
            cx.ok("appending with the second winner's lease", cx.store.append(&second, &[r]).await);
        })
        .await;
}

/// Races [`RACERS`] claims of `id` and returns the one winner's lease.
async fn race<S: Store + ?Sized>(cx: &Ctx<S>, id: OperationId, round: &str, when: &str) -> Lease {
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let mut tasks = Vec::new();
    for i in 0..RACERS {
        let (store, barrier, owner) = (cx.store.clone(), barrier.clone(), format!("{round}-{i}"));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let result = store.claim(id, &owner, LONG).await;
            (owner, result)
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        match task.await {
            Ok(r) => results.push(r),
            Err(e) => cx.fail(format!("a claiming task {when} failed: {e}")),
        }
    }
    let winners: Vec<&Lease> = results.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    let [winner] = winners[..] else {
        cx.fail(format!(
            "{RACERS} concurrent claims {when}: expected exactly one winner, got {}: {}",
            winners.len(),
            results
                .iter()
                .map(|(o, r)| format!("{o}: {}", brief(r)))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    };
    let winner = winner.clone();
    for (owner, result) in &results {
        match result {
            Ok(l) if *owner == winner.owner && l.operation == id => {}
            Err(StoreError::Owned { operation, holder })
                if *operation == id && *holder == winner.owner => {}
            other => cx.fail(format!(
                "{RACERS} concurrent claims {when}, won by {}: {owner} got {}, expected \
                 Owned {{ holder: {:?} }}",
                winner.owner,
                brief(other),
                winner.owner
            )),
        }
    }
    winner
}

/// Epochs only grow: a claim by the holder itself (while it holds), after a release and after
/// an expiry each grants a higher epoch than any before; only the newest lease appends, every
/// older one is [`StoreError::Fenced`].
pub async fn epochs_grow<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("epochs_grow", store)
        .run(|cx| async move {
            let (id, l1, _) = cx.create("prod", now_ms(), "a").await;
            let mut leases = vec![l1.clone()];
            let l2 = cx.ok("claiming by the holder itself", cx.store.claim(id, "a", LONG).await);
            leases.push(l2.clone());
            cx.ok("releasing", cx.store.release(&l2).await);
            let l3 = cx.ok("claiming by b after a release", cx.store.claim(id, "b", LONG).await);
            leases.push(l3.clone());
            cx.ok("releasing", cx.store.release(&l3).await);
            cx.ok("releasing again", cx.store.release(&l3).await);
            let l4 = cx.ok("claiming by a after b's release", cx.store.claim(id, "a", LONG).await);
            leases.push(l4.clone());
            let zero = cx.ok("renewing for 0 ms", cx.store.renew(&l4, Duration::ZERO).await);
            sleep_past(zero.expires_ms, Duration::from_millis(5)).await;
            let l5 = cx.ok("claiming by c after an expiry", cx.store.claim(id, "c", LONG).await);
            leases.push(l5.clone());
            let l6 = cx.ok("claiming by c, the holder, again", cx.store.claim(id, "c", LONG).await);
            leases.push(l6.clone());

            let steps = [
                "create by a",
                "claim by a, the holder",
                "claim by b after a release",
                "claim by a after a release",
                "claim by c after an expiry",
                "claim by c, the holder",
            ];
            for (i, pair) in leases.windows(2).enumerate() {
                if pair[1].epoch <= pair[0].epoch || pair[1].operation != id {
                    cx.fail(format!(
                        "epochs must grow: {} granted {:?} after {} granted {:?}",
                        steps[i + 1],
                        pair[1],
                        steps[i],
                        pair[0]
                    ));
                }
            }
            for (i, old) in leases[..leases.len() - 1].iter().enumerate() {
                let what =
                    format!("appending with the lease of the {} (epoch {})", steps[i], old.epoch);
                let stale = cx.store.append(old, &[started(id, 1)]).await;
                cx.fenced(&stale, old, "c", &what);
            }
            cx.ok("appending with the newest lease", cx.store.append(&l6, &[started(id, 1)]).await);
            let first = cx.read(id, "at the end").await;
            if first.len() != 2 {
                cx.fail(format!(
                    "expected 2 records after the stale appends, read {}",
                    first.len()
                ));
            }
        })
        .await;
}

/// A lease that is not current cannot write: `append` and `renew` with a stale lease (a lower
/// epoch of the same owner, or of an owner that lost it), a forged one (the current epoch with
/// another owner) or one from the future (a higher epoch) are [`StoreError::Fenced`] naming the
/// epoch presented and the current holder, and the append wrote nothing (a stale
/// `OperationFinished` does not unlist the Operation); the current lease goes on at the same
/// sequence number.
pub async fn leases_fencing<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("leases_fencing", store)
        .run(|cx| async move {
            let (id, l1, first) = cx.create("prod", now_ms(), "first").await;
            let l2 = cx.ok("claiming by the holder", cx.store.claim(id, "first", LONG).await);
            let forged = Lease { owner: "intruder".into(), ..l2.clone() };
            let future = Lease { epoch: l2.epoch + 1, ..l2.clone() };
            let cases = [
                (&l1, "the holder's older lease"),
                (&forged, "a forged lease (current epoch, another owner)"),
                (&future, "a lease of a higher epoch than the current one"),
            ];
            for (lease, which) in cases {
                let r = cx.store.append(lease, &[started(id, 1)]).await;
                cx.fenced(&r, lease, "first", &format!("appending with {which}"));
                let r = cx.store.append(lease, &[finished(id, 1)]).await;
                cx.fenced(&r, lease, "first", &format!("appending OperationFinished with {which}"));
                let r = cx.store.renew(lease, LONG).await;
                cx.fenced(&r, lease, "first", &format!("renewing {which}"));
                cx.ok(&format!("releasing {which}"), cx.store.release(lease).await);
                let what = format!("after appending with {which}");
                cx.assert_records(id, std::slice::from_ref(&first), &what).await;
                cx.assert_unfinished(&[id], &what).await;
                let other = cx.store.claim(id, "other", LONG).await;
                cx.owned(
                    &other,
                    "first",
                    &format!("claiming by another owner after releasing {which}"),
                );
            }
            let r = started(id, 1);
            cx.ok(
                "appending record 1 with the current lease",
                cx.store.append(&l2, std::slice::from_ref(&r)).await,
            );

            // A lease taken over by another owner.
            cx.ok("releasing", cx.store.release(&l2).await);
            let l3 = cx.ok("claiming by second", cx.store.claim(id, "second", LONG).await);
            let stale = cx.store.append(&l2, &[started(id, 2)]).await;
            cx.fenced(&stale, &l2, "second", "appending with a lease that another owner took over");
            let stale = cx.store.renew(&l2, LONG).await;
            cx.fenced(&stale, &l2, "second", "renewing a lease that another owner took over");
            cx.assert_records(id, &[first, r], "after the taken-over lease's append").await;
            cx.ok(
                "appending record 2 with the new lease",
                cx.store.append(&l3, &[started(id, 2)]).await,
            );
        })
        .await;
}

/// A lease expires: created or renewed with a 50 ms ttl, it is [`StoreError::Owned`] for
/// another owner until then (when the check is quick enough to tell) and claimable by one after
/// it, at a higher epoch, which fences the expired lease.
pub async fn lease_expiry<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("lease_expiry", store)
        .run(|cx| async move {
            // Created with a short lease.
            let start = Instant::now();
            let record = created(OperationId::new(), "prod", now_ms());
            let id = record.operation;
            let short =
                cx.ok("creating with a 50 ms lease", cx.store.create(&record, "a", SHORT).await);
            expire_and_take(cx, id, &short, start, "b", "a 50 ms lease from create").await;

            // Renewed to a short lease.
            let (id, lease, _) = cx.create("prod", now_ms(), "a").await;
            let start = Instant::now();
            let short = cx.ok("renewing for 50 ms", cx.store.renew(&lease, SHORT).await);
            expire_and_take(cx, id, &short, start, "b", "a lease renewed for 50 ms").await;
        })
        .await;
}

/// Checks that `short` (a [`SHORT`] lease granted after `start`) holds off `taker` while it
/// surely runs, and lets it claim once it passed.
async fn expire_and_take<S: Store + ?Sized>(
    cx: &Ctx<S>,
    id: OperationId,
    short: &Lease,
    start: Instant,
    taker: &str,
    which: &str,
) {
    let early = cx.store.claim(id, taker, LONG).await;
    // The lease was granted after `start`: a claim answered within 25 ms of it came before
    // the expiry. A slower answer proves nothing either way.
    if start.elapsed() < SHORT / 2 {
        cx.owned(&early, &short.owner, &format!("claiming {which} by {taker} before it expired"));
    }
    tokio::time::sleep_until((start + SHORT + Duration::from_millis(20)).into()).await;
    sleep_past(short.expires_ms, Duration::from_millis(5)).await;
    let taken = match early {
        Ok(l) => l,
        Err(_) => cx.ok(
            &format!("claiming {which} by {taker} after it expired"),
            cx.store.claim(id, taker, LONG).await,
        ),
    };
    if taken.epoch <= short.epoch || taken.owner != taker {
        cx.fail(format!("claiming {which} after it expired granted {taken:?} after {short:?}"));
    }
    let seq = cx.read(id, "after the expiry").await.len() as u64;
    let stale = cx.store.append(short, &[started(id, seq)]).await;
    cx.fenced(&stale, short, taker, &format!("appending with {which} after it was taken over"));
    cx.ok("appending with the new lease", cx.store.append(&taken, &[started(id, seq)]).await);
}

/// `release` lets another owner claim at once; releasing twice is harmless; releasing a lease
/// that is not current (taken over, or released and claimed since) does nothing: the current
/// holder keeps it.
pub async fn release<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("release", store)
        .run(|cx| async move {
            let (id, l1, _) = cx.create("prod", now_ms(), "a").await;
            cx.ok("releasing", cx.store.release(&l1).await);
            cx.ok("releasing twice", cx.store.release(&l1).await);
            let l2 =
                cx.ok("claiming by b at once after a release", cx.store.claim(id, "b", LONG).await);
            cx.ok("releasing a's lease a third time, now b's", cx.store.release(&l1).await);
            let c = cx.store.claim(id, "c", LONG).await;
            cx.owned(&c, "b", "claiming by c after a's stale lease was released");
            cx.ok("appending with b's lease", cx.store.append(&l2, &[started(id, 1)]).await);

            // The holder reclaims; releasing its older lease leaves the newer one.
            let l3 = cx.ok("claiming by b, the holder", cx.store.claim(id, "b", LONG).await);
            cx.ok("releasing b's older lease", cx.store.release(&l2).await);
            let c = cx.store.claim(id, "c", LONG).await;
            cx.owned(&c, "b", "claiming by c after b's older lease was released");
            cx.ok("appending with b's newer lease", cx.store.append(&l3, &[started(id, 2)]).await);

            cx.ok("releasing b's lease", cx.store.release(&l3).await);
            cx.ok("releasing b's lease twice", cx.store.release(&l3).await);
            let l4 = cx.ok("claiming by c after b released", cx.store.claim(id, "c", LONG).await);
            if l4.epoch <= l3.epoch {
                cx.fail(format!("claiming after a release granted {l4:?} after {l3:?}"));
            }
            let stale = cx.store.append(&l3, &[started(id, 3)]).await;
            cx.fenced(&stale, &l3, "c", "appending with a released lease claimed since");
            cx.ok("appending with c's lease", cx.store.append(&l4, &[started(id, 3)]).await);
        })
        .await;
}

/// `list_unfinished` lists the Operations without `OperationFinished`, in id order whatever the
/// order of creation, with nothing damaged; an append holding `OperationFinished` (alone or at
/// the end of a batch) removes the Operation, whose records stay.
pub async fn unfinished_list<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("unfinished_list", store)
        .run(|cx| async move {
            cx.assert_unfinished(&[], "on an empty store").await;
            let ids: Vec<OperationId> = (0..5).map(|_| OperationId::new()).collect();
            let mut leases = std::collections::HashMap::new();
            for (n, i) in [3, 0, 4, 2, 1].into_iter().enumerate() {
                let env = if i % 2 == 0 { "prod" } else { "staging" };
                let r = created(ids[i], env, 100 + n as u64);
                let lease = cx.ok("creating", cx.store.create(&r, "me", LONG).await);
                leases.insert(ids[i], lease);
            }
            cx.assert_unfinished(&ids, "after creating 5 Operations out of id order").await;

            let batch = [started(ids[1], 1), finished(ids[1], 2)];
            cx.ok(
                "appending [StepStarted, OperationFinished]",
                cx.store.append(&leases[&ids[1]], &batch).await,
            );
            let left = [ids[0], ids[2], ids[3], ids[4]];
            cx.assert_unfinished(&left, "after finishing the second in a batch").await;
            cx.ok(
                "appending StepStarted",
                cx.store.append(&leases[&ids[3]], &[started(ids[3], 1)]).await,
            );
            cx.assert_unfinished(&left, "after appending StepStarted to the fourth").await;
            cx.ok(
                "appending OperationFinished",
                cx.store.append(&leases[&ids[3]], &[finished(ids[3], 2)]).await,
            );
            cx.assert_unfinished(&[ids[0], ids[2], ids[4]], "after finishing the fourth").await;
            cx.ok(
                "appending OperationFinished",
                cx.store.append(&leases[&ids[0]], &[finished(ids[0], 1)]).await,
            );
            cx.assert_unfinished(&[ids[2], ids[4]], "after finishing the first").await;
            for i in [0, 1, 3] {
                let records = cx.read(ids[i], "after it finished").await;
                if !matches!(
                    records.last().map(|r| &r.kind),
                    Some(RecordKind::OperationFinished { .. })
                ) {
                    cx.fail(format!(
                        "a finished Operation's records end with {:?}",
                        records.last()
                    ));
                }
            }
            cx.assert_env(
                "prod",
                0,
                u64::MAX,
                &[ids[0], ids[4], ids[2]],
                "in creation order, finished or not",
            )
            .await;
        })
        .await;
}

/// `list_environment` returns one environment's Operations created in `[since_ms, until_ms)`
/// (since inclusive, until exclusive; an empty or inverted range lists nothing) in creation
/// order, with nothing damaged.
pub async fn environment_bounds<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("environment_bounds", store)
        .run(|cx| async move {
            let p10 = cx.create("prod", 10, "me").await.0;
            let s15 = cx.create("staging", 15, "me").await.0;
            let p20 = cx.create("prod", 20, "me").await.0;
            let p30 = cx.create("prod", 30, "me").await.0;
            let s25 = cx.create("staging", 25, "me").await.0;
            let p1000 = cx.create("prod", 1_000, "me").await.0;
            let cases: [(u64, u64, Vec<OperationId>); 17] = [
                (0, u64::MAX, vec![p10, p20, p30, p1000]),
                (10, 30, vec![p10, p20]),
                (11, 31, vec![p20, p30]),
                (10, 11, vec![p10]),
                (9, 10, vec![]),
                (0, 10, vec![]),
                (0, 11, vec![p10]),
                (20, 21, vec![p20]),
                (20, 20, vec![]),
                (30, 10, vec![]),
                (u64::MAX, 0, vec![]),
                (31, 1_000, vec![]),
                (31, 1_001, vec![p1000]),
                (30, u64::MAX, vec![p30, p1000]),
                (1_001, u64::MAX, vec![]),
                (u64::MAX, u64::MAX, vec![]),
                (0, 0, vec![]),
            ];
            for (since, until, expected) in cases {
                cx.assert_env("prod", since, until, &expected, "").await;
            }
            cx.assert_env("staging", 0, u64::MAX, &[s15, s25], "").await;
            cx.assert_env("staging", 15, 25, &[s15], "").await;
            cx.assert_env("staging", 16, 26, &[s25], "").await;
            cx.assert_env("nowhere", 0, u64::MAX, &[], "").await;
        })
        .await;
}

/// Environments are apart whatever their names: names that are prefixes of each other
/// (`"a"`, `"a\0"`, `"a\0\0\0\0\0\0\0"`, `"ab"`), that differ in case, that hold SQL
/// wildcards or path separators, the empty name, a 10 KiB name and a non-ASCII one each list
/// their own Operations only.
pub async fn environment_names<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("environment_names", store)
        .run(|cx| async move {
            let names = env_names();
            let mut by_name: Vec<Vec<OperationId>> = vec![Vec::new(); names.len()];
            // Interleaved: every name at 10.., then again at 100.. and 200.
            for round in 0..2u64 {
                for (i, name) in names.iter().enumerate() {
                    let (id, _, _) = cx.create(name, 10 + round * 100 + i as u64, "me").await;
                    by_name[i].push(id);
                }
            }
            for (i, name) in names.iter().enumerate() {
                let shown = show_name(name);
                cx.assert_env(name, 0, u64::MAX, &by_name[i], &format!("of {shown}")).await;
                cx.assert_env(
                    name,
                    100,
                    u64::MAX,
                    &by_name[i][1..],
                    &format!("of {shown} from 100"),
                )
                .await;
            }
            for unused in ["a\0\0", "b", "a%b", "a\u{e4}", " a", "a "] {
                let shown = show_name(unused);
                cx.assert_env(unused, 0, u64::MAX, &[], &format!("of unused {shown}")).await;
            }
            let all: Vec<OperationId> = {
                let mut all: Vec<OperationId> = by_name.concat();
                all.sort();
                all
            };
            cx.assert_unfinished(&all, "of every environment").await;
            for (i, name) in names.iter().enumerate() {
                let records = cx.read(by_name[i][0], "its first Operation").await;
                match records.first().map(|r| &r.kind) {
                    Some(RecordKind::OperationCreated { environment, .. })
                        if environment == name => {}
                    other => cx.fail(format!(
                        "the OperationCreated record of an Operation of {} reads back as {other:?}",
                        show_name(name)
                    )),
                }
            }
        })
        .await;
}

/// The awkward environment names of [`environment_names`] and [`delete_environment`].
fn env_names() -> Vec<String> {
    vec![
        "a".into(),
        "a\0".into(),
        "a\0\0\0\0\0\0\0".into(),
        "ab".into(),
        "A".into(),
        "".into(),
        "a_".into(),
        "a%".into(),
        "a/b".into(),
        "prod-\u{fc}mlaut-\u{65e5}\u{672c}-\u{1f680}".into(),
        "x".repeat(10 * 1024),
        format!("{}y", "x".repeat(10 * 1024)),
    ]
}

/// A name for messages: quoted and escaped, cut when long.
fn show_name(name: &str) -> String {
    if name.len() > 40 {
        let head: String = name.chars().take(16).collect();
        format!("{:?}... ({} bytes)", head, name.len())
    } else {
        format!("{name:?}")
    }
}

/// `delete_environment` removes every Operation of one environment (records read
/// [`StoreError::NotFound`], gone from both listings, no log lines left, not claimable) and
/// returns how many; Operations of other environments, whose names are close to it, stay whole;
/// deleting again removes nothing; the environment can be used again.
pub async fn delete_environment<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("delete_environment", store)
        .run(|cx| async move {
            let names = env_names();
            let mut kept: Vec<(String, OperationId, Vec<Record>, Vec<LogLine>)> = Vec::new();
            let mut gone: Vec<(OperationId, Lease)> = Vec::new();
            for (i, name) in names.iter().enumerate() {
                let (id, lease, _) = cx.create(name, 10 + i as u64, "me").await;
                cx.ok("appending", cx.store.append(&lease, &[started(id, 1)]).await);
                let lines = vec![line(id, 0, 100 + i as u64)];
                cx.ok("appending a log line", cx.store.append_log(&lease, &lines).await);
                if name == "a" {
                    gone.push((id, lease));
                } else {
                    let records = cx.read(id, "before deleting").await;
                    kept.push((name.clone(), id, records, lines));
                }
            }
            // Another Operation of "a": finished, with log lines.
            let (finished_id, lease, _) = cx.create("a", 50, "me").await;
            cx.ok("finishing", cx.store.append(&lease, &[finished(finished_id, 1)]).await);
            let lines = [line(finished_id, 0, 60), line(finished_id, 1, 70)];
            cx.ok("appending log lines", cx.store.append_log(&lease, &lines).await);
            gone.push((finished_id, lease));

            let deleted =
                cx.ok("deleting environment \"a\"", cx.store.delete_environment("a").await);
            cx.equal(deleted, 2, "Operations deleted with environment \"a\"");
            for (id, lease) in &gone {
                match cx.store.read(*id).await {
                    Err(StoreError::NotFound(x)) if x == *id => {}
                    other => cx.fail(format!(
                        "reading a deleted Operation: expected NotFound({id}), got {}",
                        brief(&other)
                    )),
                }
                cx.assert_log(*id, &[], "of a deleted Operation").await;
                let claim = cx.store.claim(*id, "other", LONG).await;
                if !matches!(&claim, Err(StoreError::NotFound(x)) if x == id) {
                    cx.fail(format!(
                        "claiming a deleted Operation: expected NotFound({id}), got {}",
                        brief(&claim)
                    ));
                }
                // Both had two records: the next would be 2.
                let late = cx.store.append(lease, &[started(*id, 2)]).await;
                cx.refused(&late, "appending with the lease of a deleted Operation");
                cx.assert_absent(*id, "after a late append with its old lease").await;
            }
            cx.assert_env("a", 0, u64::MAX, &[], "after deleting it").await;
            let mut unfinished: Vec<OperationId> = kept.iter().map(|k| k.1).collect();
            unfinished.sort();
            cx.assert_unfinished(&unfinished, "after deleting \"a\"").await;
            for (name, id, records, lines) in &kept {
                let what = format!("of {} after deleting \"a\"", show_name(name));
                cx.assert_records(*id, records, &what).await;
                cx.assert_log(*id, lines, &what).await;
                cx.assert_env(name, 0, u64::MAX, &[*id], &what).await;
            }
            let again = cx.ok("deleting \"a\" again", cx.store.delete_environment("a").await);
            cx.equal(again, 0, "Operations deleted with \"a\" a second time");
            let none = cx.ok("deleting \"nowhere\"", cx.store.delete_environment("nowhere").await);
            cx.equal(none, 0, "Operations deleted with an unknown environment");
            let wild = cx.ok("deleting \"_\"", cx.store.delete_environment("_").await);
            cx.equal(wild, 0, "Operations deleted with environment \"_\"");
            let wild = cx.ok("deleting \"%\"", cx.store.delete_environment("%").await);
            cx.equal(wild, 0, "Operations deleted with environment \"%\"");

            // The log lines went with the Operations: a purge of everything finds only the kept.
            let purged = cx.ok("purging every log line", cx.store.purge_logs(u64::MAX).await);
            cx.equal(purged, kept.len() as u64, "log lines purged after deleting \"a\"");

            let (fresh, _, _) = cx.create("a", 10, "me").await;
            cx.assert_env("a", 0, u64::MAX, &[fresh], "created again after deleting it").await;

            let deleted = cx.ok("deleting the empty name", cx.store.delete_environment("").await);
            cx.equal(deleted, 1, "Operations deleted with the empty environment name");
            let empty = kept.iter().find(|k| k.0.is_empty()).map(|k| k.1);
            if let Some(id) = empty {
                cx.assert_absent(id, "after deleting the empty name").await;
            }
            for (name, id, records, _) in kept.iter().filter(|k| !k.0.is_empty()) {
                let what = format!("of {} after deleting \"\"", show_name(name));
                cx.assert_records(*id, records, &what).await;
            }
        })
        .await;
}

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

// ------------------------------------------------------------------------------ helpers

/// One check running against one store: its name for messages, and assertions that panic
/// with it.
struct Ctx<S: ?Sized> {
    check: &'static str,
    store: Arc<S>,
}

impl<S: Store + ?Sized> Ctx<S> {
    fn new(check: &'static str, store: Arc<S>) -> Self {
        Ctx { check, store }
    }

    /// Runs the check's body with a bound on its time, then `check(false)`, which must find
    /// nothing.
    async fn run<'a, F, Fut>(&'a self, body: F)
    where
        F: FnOnce(&'a Self) -> Fut,
        Fut: Future<Output = ()> + 'a,
    {
        let all = async {
            body(self).await;
            let report = self.ok("check(false) at the end", self.store.check(false).await);
            if !report.findings.is_empty() {
                self.fail(format!(
                    "check(false) at the end of the check found {}",
                    show_report(&report)
                ));
            }
        };
        if tokio::time::timeout(HANG, all).await.is_err() {
            self.fail(format!("did not finish within {} s", HANG.as_secs()));
        }
    }

    fn fail(&self, message: impl Display) -> ! {
        panic!("store conformance check `{}` failed: {message}", self.check)
    }

    fn ok<T>(&self, what: &str, result: Result<T, StoreError>) -> T {
        match result {
            Ok(value) => value,
            Err(e) => self.fail(format!("{what}: unexpected error {e:?} ({e})")),
        }
    }

    fn equal<T: PartialEq + Debug>(&self, got: T, expected: T, what: &str) {
        if got != expected {
            self.fail(format!("{what}: expected {expected:?}, got {got:?}"));
        }
    }

    /// The value of a task that returns `Err(message)` when its part of the check fails.
    fn joined<T>(&self, joined: Result<Result<T, String>, tokio::task::JoinError>) -> T {
        match joined {
            Ok(Ok(value)) => value,
            Ok(Err(message)) => self.fail(message),
            Err(e) => self.fail(format!("a task of the check failed: {e}")),
        }
    }

    /// Creates an Operation of `environment` at `at_ms` for `owner`.
    async fn create(
        &self,
        environment: &str,
        at_ms: u64,
        owner: &str,
    ) -> (OperationId, Lease, Record) {
        let record = created(OperationId::new(), environment, at_ms);
        let what = format!("creating an Operation in {} at {at_ms}", show_name(environment));
        let lease = self.ok(&what, self.store.create(&record, owner, LONG).await);
        (record.operation, lease, record)
    }

    async fn read(&self, id: OperationId, when: &str) -> Vec<Record> {
        self.ok(&format!("reading {id} {when}"), self.store.read(id).await)
    }

    async fn assert_records(&self, id: OperationId, expected: &[Record], when: &str) {
        let records = self.read(id, when).await;
        if records != expected {
            self.fail(format!(
                "reading {id} {when}: expected {}, got {}",
                show_records(expected),
                show_records(&records)
            ));
        }
    }

    /// `id` does not exist: `read` is `NotFound`, and neither listing names it.
    async fn assert_absent(&self, id: OperationId, when: &str) {
        match self.store.read(id).await {
            Err(StoreError::NotFound(x)) if x == id => {}
            other => {
                self.fail(format!("reading {id} {when}: expected NotFound, got {}", brief(&other)))
            }
        }
        let listing = self.ok("listing unfinished", self.store.list_unfinished().await);
        if listing.ids.contains(&id) {
            self.fail(format!("list_unfinished {when} names {id}, which should not exist"));
        }
    }

    async fn assert_unfinished(&self, expected: &[OperationId], when: &str) {
        let listing =
            self.ok(&format!("listing unfinished {when}"), self.store.list_unfinished().await);
        if !listing.damaged.is_empty() {
            self.fail(format!("list_unfinished {when}: damaged entries {:?}", listing.damaged));
        }
        if listing.ids != expected {
            self.fail(format!(
                "list_unfinished {when}: expected {:?} (in id order), got {:?}",
                expected, listing.ids
            ));
        }
    }

    async fn assert_env(
        &self,
        environment: &str,
        since: u64,
        until: u64,
        expected: &[OperationId],
        when: &str,
    ) {
        let call = format!("list_environment({}, {since}, {until})", show_name(environment));
        let call = if when.is_empty() { call } else { format!("{call} {when}") };
        let listing = self.ok(&call, self.store.list_environment(environment, since, until).await);
        if !listing.damaged.is_empty() {
            self.fail(format!("{call}: damaged entries {:?}", listing.damaged));
        }
        if listing.ids != expected {
            self.fail(format!(
                "{call}: expected {expected:?} (in creation order), got {:?}",
                listing.ids
            ));
        }
    }

    async fn assert_log(&self, id: OperationId, expected: &[LogLine], when: &str) {
        let lines =
            self.ok(&format!("reading the log of {id} {when}"), self.store.read_log(id).await);
        if lines != expected {
            self.fail(format!(
                "read_log({id}) {when}: expected lines {:?}, got {:?}",
                expected.iter().map(|l| (l.seq, l.at_ms)).collect::<Vec<_>>(),
                lines.iter().map(|l| (l.seq, l.at_ms)).collect::<Vec<_>>()
            ));
        }
    }

    fn out_of_sequence<T: Debug>(
        &self,
        result: &Result<T, StoreError>,
        id: OperationId,
        expected: u64,
        got: u64,
        what: &str,
    ) {
        match result {
            Err(StoreError::OutOfSequence { operation, expected: e, got: g })
                if *operation == id && *e == expected && *g == got => {}
            other => self.fail(format!(
                "{what}: expected OutOfSequence {{ operation: {id}, expected: {expected}, \
                 got: {got} }}, got {}",
                brief(other)
            )),
        }
    }

    fn refused<T: Debug>(&self, result: &Result<T, StoreError>, what: &str) {
        if let Ok(value) = result {
            self.fail(format!("{what}: expected an error, got Ok({value:?})"));
        }
    }

    fn owned<T: Debug>(&self, result: &Result<T, StoreError>, holder: &str, what: &str) {
        match result {
            Err(StoreError::Owned { holder: h, .. }) if h == holder => {}
            other => self.fail(format!(
                "{what}: expected Owned {{ holder: {holder:?} }}, got {}",
                brief(other)
            )),
        }
    }

    fn fenced<T: Debug>(
        &self,
        result: &Result<T, StoreError>,
        lease: &Lease,
        holder: &str,
        what: &str,
    ) {
        match result {
            Err(StoreError::Fenced { operation, epoch, holder: h })
                if *operation == lease.operation && *epoch == lease.epoch && h == holder => {}
            other => self.fail(format!(
                "{what}: expected Fenced {{ epoch: {}, holder: {holder:?} }}, got {}",
                lease.epoch,
                brief(other)
            )),
        }
    }
}

/// Waits until the clock is past `ms`, and `margin` more (at most 2 s: a store whose clock is
/// far ahead fails the check rather than hang it).
async fn sleep_past(ms: u64, margin: Duration) {
    let now = now_ms();
    let wait = Duration::from_millis(ms.saturating_sub(now).saturating_add(1)) + margin;
    tokio::time::sleep(wait.min(Duration::from_secs(2))).await;
}

/// A result for a message: the value or the error's variant and text.
fn brief<T: Debug>(result: &Result<T, StoreError>) -> String {
    match result {
        Ok(value) => format!("Ok({value:?})"),
        Err(e) => format!("Err({e:?})"),
    }
}

/// Records for a message: their sequence numbers and kinds (not a 256 KiB output).
fn show_records(records: &[Record]) -> String {
    let shown: Vec<String> =
        records.iter().map(|r| format!("{}:{}@{}", r.seq, r.kind.name(), r.operation)).collect();
    format!("{} records [{}]", records.len(), shown.join(", "))
}

fn show_report(report: &CheckReport) -> String {
    let findings: Vec<String> = report.findings.iter().map(ToString::to_string).collect();
    format!(
        "{} findings of {} Operations: {}",
        findings.len(),
        report.operations,
        findings.join("; ")
    )
}

/// The `OperationCreated` record of `id` in `environment`, created at `at_ms`.
fn created(id: OperationId, environment: &str, at_ms: u64) -> Record {
    Record {
        operation: id,
        seq: 0,
        at_ms,
        kind: RecordKind::OperationCreated {
            saga: "conformance".into(),
            version: 1,
            params: br#"{"size":3}"#.to_vec(),
            environment: environment.into(),
            resource: Resource::new("app", "web"),
            actor: "tester".into(),
        },
    }
}

fn record(id: OperationId, seq: u64, kind: RecordKind) -> Record {
    Record { operation: id, seq, at_ms: 1_000_000 + seq, kind }
}

fn started(id: OperationId, seq: u64) -> Record {
    record(id, seq, RecordKind::StepStarted { step: format!("step-{seq}"), attempt: 1 })
}

fn finished(id: OperationId, seq: u64) -> Record {
    record(id, seq, RecordKind::OperationFinished { outcome: Outcome::Succeeded })
}

fn line(id: OperationId, seq: u64, at_ms: u64) -> LogLine {
    LogLine {
        operation: id,
        seq,
        at_ms,
        level: LogLevel::Info,
        source: LogSource::Engine,
        step: Some("a".into()),
        message: format!("line {seq}"),
    }
}
