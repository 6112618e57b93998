//! Model-based property tests of the engine: random saga shapes under random fault plans, run by
//! the real executor on the in-memory store and on the sled store, checked against the reference
//! model in `model/reference.rs`.
//!
//! 1,000 cases per property by default; set `SAGA_PROPTEST_CASES` for more (or fewer). A
//! counterexample prints as `[a] -> [b | c*irrev] -> PNR -> [d]  faults: fail d; crash after 7`.
#![allow(unreachable_pub, clippy::unwrap_used)]

#[path = "model/mutate.rs"]
mod mutate;
#[path = "model/observe.rs"]
mod observe;
#[path = "model/reference.rs"]
mod reference;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use saga_core::log::RecordKind;
use saga_core::store::Store;
use saga_core::Outcome;
use saga_store::SledStore;
use saga_testkit::{shapes_and_plans, Attention, ExecuteFault, FaultPlan, Run, SagaShape, When};

fn cases() -> u32 {
    std::env::var("SAGA_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000)
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() }
}

/// One generated case: a shape and a plan, printed compactly.
#[derive(Clone)]
struct Case {
    shape: SagaShape,
    plan: FaultPlan,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}  faults: {}", self.shape, self.plan)
    }
}

/// The same plan with at most `MAX_ATTEMPTS - 1` failures of a step that fails only for some
/// attempts (transient ones, and past the point of no return permanent ones too). A crash during
/// the last allowed attempt lets the recovered executor run that attempt again (see
/// `a_crash_during_the_last_allowed_attempt_runs_that_attempt_again`), so with crashes the model
/// would have to allow both outcomes (rolled back or succeeded; needing attention or not);
/// exhausted retries are covered without crashes. Failures of every attempt stay.
fn without_exhausted_retries(plan: &FaultPlan) -> FaultPlan {
    let cap = |n: u32| n.min(SagaShape::MAX_ATTEMPTS - 1);
    let mut capped = FaultPlan::new();
    for (step, faults) in plan.steps() {
        capped = match faults.execute {
            Some(ExecuteFault::Fail(when)) => capped.fail(step, when),
            Some(ExecuteFault::FailWithoutEffect) => capped.fail_without_effect(step),
            Some(ExecuteFault::FailTimes(n)) => capped.fail_times(step, cap(n)),
            Some(ExecuteFault::Transient(n)) => capped.transient(step, cap(n)),
            None => capped,
        };
        if faults.fail_compensation {
            capped = capped.fail_compensation(step);
        }
        if faults.execute_twice {
            capped = capped.execute_twice(step);
        }
        if faults.compensate_twice {
            capped = capped.compensate_twice(step);
        }
    }
    if let Some((step, when)) = plan.cancel() {
        capped = capped.cancel_at(step, when);
    }
    if let Some(decision) = plan.attention() {
        capped = capped.on_attention(decision);
    }
    capped
}

fn without_crash() -> impl Strategy<Value = Case> {
    shapes_and_plans().prop_map(|(shape, plan)| Case { shape, plan })
}

/// Cases that crash after 1 to 16 records (a crash point past the end is no crash).
fn with_crash() -> impl Strategy<Value = Case> {
    (shapes_and_plans(), 1..=16u64).prop_map(|((shape, plan), r)| {
        let plan = without_exhausted_retries(&plan).crash_after(r);
        Case { shape, plan }
    })
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    Memory,
    Sled,
}

fn run(case: &Case, backend: Backend) -> Result<Run<BTreeSet<String>>, TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut check = case.shape.check().timeout(Duration::from_secs(20));
    let _dir = match backend {
        Backend::Memory => None,
        Backend::Sled => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("store");
            let store: Arc<dyn Store> = Arc::new(SledStore::open_without_fsync(&path).unwrap());
            check = check.store(move || store.clone());
            Some(dir)
        }
    };
    let result = runtime.block_on(check.run(&case.plan));
    result.map_err(|e| TestCaseError::fail(format!("{case:?}: {e}")))
}

/// How a case ended: crashed and recovered, or not.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ended {
    Plainly,
    Recovered,
}

fn matches_model(case: &Case, backend: Backend) -> Result<Ended, TestCaseError> {
    let run = run(case, backend)?;
    let lost = observe::lost_attempts(&run.records);
    let expected = reference::expect(&case.shape, &case.plan, &lost);
    let problems = observe::problems(&case.shape, &expected, &run);
    prop_assert!(
        problems.is_empty(),
        "{case:?} ({backend:?}, outcome: {}):\n  {}",
        run.outcome,
        problems.join("\n  ")
    );
    Ok(if run.recovered { Ended::Recovered } else { Ended::Plainly })
}

/// Runs a crash property by hand to count how many cases really crashed.
fn crash_property(backend: Backend) {
    let crashed = AtomicU64::new(0);
    let mut runner = TestRunner::new(config());
    let result = runner.run(&with_crash(), |case| {
        match matches_model(&case, backend)? {
            Ended::Recovered => crashed.fetch_add(1, Ordering::Relaxed),
            Ended::Plainly => 0,
        };
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let crashed = crashed.load(Ordering::Relaxed);
    eprintln!("{backend:?}: {crashed} of {} cases crashed and recovered", cases());
    assert!(crashed * 2 >= u64::from(cases()), "only {crashed} of {} cases crashed", cases());
}

proptest! {
    #![proptest_config(config())]

    /// Outcome, started steps, compensations (exactly once, in dependency order, never of
    /// irreversible or read-only steps), cancel and world match the model.
    #[test]
    fn the_engine_matches_the_model_on_the_memory_store(case in without_crash()) {
        matches_model(&case, Backend::Memory)?;
    }

    /// Every log the executor writes folds; its mutations (records dropped, duplicated or
    /// swapped; its outcome rewritten) are rejected as the rules in `model/mutate.rs` say.
    #[test]
    fn the_fold_accepts_written_logs_and_rejects_mutated_ones(case in with_crash()) {
        let run = run(&case, Backend::Memory)?;
        let problems = mutate::problems(&run.records);
        prop_assert!(problems.is_empty(), "{case:?}:\n  {}", problems.join("\n  "));
    }
}

/// A crash after any record, then recovery by a new executor, ends as the model says
/// (compensations at least once).
#[test]
fn crashes_anywhere_recover_to_the_model_on_the_memory_store() {
    crash_property(Backend::Memory);
}

/// The model properties, with and without crashes, on the sled store (without fsync).
#[test]
fn the_engine_matches_the_model_on_the_sled_store() {
    crash_property(Backend::Sled);
}

/// The counterexample format of the issue.
#[test]
fn counterexamples_print_compactly() {
    use saga_core::StepKind;
    use saga_testkit::StepSpec;
    let spec = |name: &str, kind| StepSpec { name: name.into(), kind };
    let shape = SagaShape::new(
        vec![
            vec![spec("a", StepKind::Compensable)],
            vec![spec("b", StepKind::Compensable), spec("c", StepKind::Irreversible)],
            vec![spec("d", StepKind::Compensable)],
        ],
        Some(1),
    );
    let plan = FaultPlan::new().fail_times("d", 1).transient("b", 2).crash_after(7);
    assert_eq!(
        format!("{:?}", Case { shape, plan }),
        "[a] -> [b | c*irrev] -> PNR -> [d]  faults: transient b x2; fail d x1; crash after 7"
    );
}

/// The engine's rule: an attempt whose outcome a crash lost is run again and does not count
/// against the retry bound, so that a crash during the last allowed attempt ends as the
/// uninterrupted run would have, had that attempt succeeded (here it does: its transient failures
/// are used up). The uninterrupted run rolls back after the last attempt fails.
#[test]
fn a_crash_during_the_last_allowed_attempt_runs_that_attempt_again() {
    let shape = SagaShape::new(
        vec![vec![saga_testkit::StepSpec {
            name: "a".into(),
            kind: saga_core::StepKind::Compensable,
        }]],
        None,
    );
    let plan = FaultPlan::new().transient("a", SagaShape::MAX_ATTEMPTS - 1);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let check = shape.check();
    let exhausted = runtime
        .block_on(check.run(&FaultPlan::new().transient("a", SagaShape::MAX_ATTEMPTS)))
        .unwrap();
    assert_eq!(exhausted.outcome.status(), saga_core::Status::RolledBack);
    // Records: created, then (started, failed) x 2, then started attempt 3: crash right there.
    let crashed = runtime.block_on(check.run(&plan.clone().crash_after(6))).unwrap();
    assert!(crashed.recovered);
    let attempts =
        crashed.records.iter().filter(|r| matches!(r.kind, RecordKind::StepStarted { .. })).count();
    assert_eq!(attempts, SagaShape::MAX_ATTEMPTS as usize + 1, "the lost attempt ran again");
    assert_eq!(crashed.outcome, Outcome::Succeeded);
}

/// A cancel while a step of a parallel group runs: the group's steps all started, nothing after
/// it starts, and everything started is compensated (a fixed case of the model property).
#[test]
fn a_cancel_in_a_parallel_group_matches_the_model() {
    use saga_core::StepKind;
    use saga_testkit::StepSpec;
    let spec = |name: &str, kind| StepSpec { name: name.into(), kind };
    let shape = SagaShape::new(
        vec![
            vec![spec("a", StepKind::Compensable)],
            vec![spec("b", StepKind::Compensable), spec("c", StepKind::Irreversible)],
            vec![spec("d", StepKind::Compensable)],
        ],
        None,
    );
    for when in [When::Before, When::After] {
        let case = Case { shape: shape.clone(), plan: FaultPlan::new().cancel_at("b", when) };
        matches_model(&case, Backend::Memory).unwrap();
    }
}

/// A cancel is durable, then the process crashes before the cancelled step's end is recorded.
/// The recovered executor compensates everything, then writes `OperationFinished` while the
/// step's execution is still "running" in the fold (its outcome was lost and is never recorded),
/// which the fold accepts while rolling back (the step was compensated with `Executed::Unknown`),
/// so the Operation rolls back. The same holds when a crash during a rollback loses the end of a
/// parallel sibling's execute (the model properties cover both).
#[test]
fn a_crash_after_a_cancel_before_the_step_ended_recovers() {
    use saga_core::{RollbackCause, StepKind};
    use saga_testkit::StepSpec;
    let spec = |name: &str| StepSpec { name: name.into(), kind: StepKind::Compensable };
    let shape = SagaShape::new(vec![vec![spec("a")], vec![spec("b")]], None);
    // Records: created, a started, a succeeded, b started, cancel requested: crash there.
    let plan = FaultPlan::new().cancel_at("b", When::Before).crash_after(5);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let run = runtime.block_on(shape.check().run(&plan)).unwrap_or_else(|e| panic!("{e}"));
    assert!(run.recovered);
    assert!(matches!(run.outcome, Outcome::RolledBack { cause: RollbackCause::Cancelled { .. } }));
    assert!(run.after.is_empty());
}

/// Past the point of no return, a step that runs out of its retry policy needs attention: the
/// operator retries (the step then succeeds) or abandons the Operation (nothing is rolled back,
/// nothing after it starts); before it, a step that fails without effect is left alone (fixed
/// cases of the model property, with their outcomes).
#[test]
fn attention_and_failures_without_effect_match_the_model() {
    use saga_core::StepKind;
    use saga_testkit::StepSpec;
    let spec = |name: &str, kind| StepSpec { name: name.into(), kind };
    let shape = SagaShape::new(
        vec![
            vec![spec("a", StepKind::Compensable)],
            vec![spec("b", StepKind::Irreversible)],
            vec![spec("c", StepKind::Compensable), spec("d", StepKind::Compensable)],
            vec![spec("e", StepKind::Compensable)],
        ],
        Some(1),
    );
    let runs_out = FaultPlan::new().fail_times("c", 3).transient("d", 3);
    let cases = [
        (runs_out.clone().on_attention(Attention::Retry), saga_core::Status::Succeeded),
        (runs_out.on_attention(Attention::Abandon), saga_core::Status::Abandoned),
        (
            FaultPlan::new().fail("c", When::After).on_attention(Attention::Abandon),
            saga_core::Status::Abandoned,
        ),
        (
            FaultPlan::new().fail_without_effect("e").on_attention(Attention::Abandon),
            saga_core::Status::Abandoned,
        ),
        (
            FaultPlan::new().fail_times("e", 2).on_attention(Attention::Retry),
            saga_core::Status::Succeeded,
        ),
        (FaultPlan::new().fail_without_effect("b"), saga_core::Status::RolledBack),
        (FaultPlan::new().fail_without_effect("a"), saga_core::Status::RolledBack),
        (FaultPlan::new().fail("b", When::Before), saga_core::Status::RollbackIncomplete),
    ];
    for (plan, status) in cases {
        let case = Case { shape: shape.clone(), plan };
        let run = run(&case, Backend::Memory).unwrap();
        assert_eq!(run.outcome.status(), status, "{case:?}: {}", run.outcome);
        matches_model(&case, Backend::Memory).unwrap();
        // The same, crashing after every record (retries that run out are left to the
        // property without crashes, see `without_exhausted_retries`).
        let plan = without_exhausted_retries(&case.plan);
        for r in 1..run.records.len() as u64 {
            let crashed = Case { shape: shape.clone(), plan: plan.clone().crash_after(r) };
            matches_model(&crashed, Backend::Memory).unwrap();
        }
    }
}
