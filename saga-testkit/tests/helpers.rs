//! The checks catch real bugs in users' sagas, with clear messages; the fault plan does what it
//! says.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_core::log::RecordKind;
use saga_core::saga::{DefineGroup, DefineSaga};
use saga_core::{
    async_trait, Error as EngineError, Executed, Executor, MemoryStore, Outcome, Resource,
    RetryPolicy, RollbackCause, Saga, Start, Step, StepContext, StepError, StepKind,
};
use saga_testkit::{
    Attention, CancelAnswer, Error, FaultPlan, Faults, SagaCheck, TestSagaBuilder, When, World,
};

/// Effects in place (a set) and a ledger of amounts (a list, so that doubles show).
#[derive(Clone, Default)]
struct Shop {
    effects: Arc<Mutex<BTreeSet<String>>>,
    ledger: Arc<Mutex<Vec<i64>>>,
}

#[derive(Debug, PartialEq)]
struct Seen {
    effects: BTreeSet<String>,
    balance: i64,
}

#[async_trait]
impl World for Shop {
    type Snapshot = Seen;
    async fn snapshot(&self) -> Seen {
        Seen {
            effects: self.effects.lock().unwrap().clone(),
            balance: self.ledger.lock().unwrap().iter().sum(),
        }
    }
}

/// Puts its effect; compensation takes away `undo` (its own effect unless buggy).
struct Put {
    shop: Shop,
    effect: &'static str,
    undo: &'static str,
    kind: StepKind,
}

fn put(shop: &Shop, effect: &'static str) -> Put {
    Put { shop: shop.clone(), effect, undo: effect, kind: StepKind::Compensable }
}

#[async_trait]
impl Step for Put {
    type Output = ();
    async fn execute(&self, _: &StepContext) -> Result<(), StepError> {
        self.shop.effects.lock().unwrap().insert(self.effect.into());
        Ok(())
    }
    async fn compensate(&self, _: &StepContext, _: Executed<()>) -> Result<(), StepError> {
        self.shop.effects.lock().unwrap().remove(self.undo);
        Ok(())
    }
    fn kind(&self) -> StepKind {
        self.kind
    }
}

/// Charges 10: appends to the ledger (execute idempotent only if `idempotent_execute`); the
/// compensation appends a refund every time it runs after a charge, which is not idempotent.
struct Charge {
    shop: Shop,
    idempotent_execute: bool,
}

#[async_trait]
impl Step for Charge {
    type Output = ();
    async fn execute(&self, _: &StepContext) -> Result<(), StepError> {
        let mut ledger = self.shop.ledger.lock().unwrap();
        if !self.idempotent_execute || ledger.is_empty() {
            ledger.push(10);
        }
        Ok(())
    }
    async fn compensate(&self, _: &StepContext, _: Executed<()>) -> Result<(), StepError> {
        let mut ledger = self.shop.ledger.lock().unwrap();
        if ledger.contains(&10) {
            ledger.push(-10);
        }
        Ok(())
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn wrong_undo() -> SagaCheck<Shop> {
    SagaCheck::new("wrong-undo", Shop::default, |shop: &Shop, saga| {
        let mut b = put(shop, "b");
        b.undo = "a"; // the bug: undoes a's effect instead of its own
        saga.step("a", put(shop, "a")).step("b", b).step("c", put(shop, "c"))
    })
}

#[test]
fn each_step_can_fail_reports_a_compensation_that_undoes_the_wrong_thing() {
    let err = runtime().block_on(wrong_undo().each_step_can_fail()).unwrap_err();
    let Error::Check(failures) = &err else { panic!("unexpected {err}") };
    assert_eq!(failures.check, "each_step_can_fail");
    let scenarios: Vec<&str> = failures.failures.iter().map(|f| f.scenario.as_str()).collect();
    // Failing b before its effect leaves nothing of b to leak; the other rollbacks through b do.
    assert_eq!(
        scenarios,
        ["fail b after its effect", "fail c before its effect", "fail c after its effect"]
    );
    let message = err.to_string();
    assert!(
        message.starts_with("saga wrong-undo: each_step_can_fail failed in 3 of 7 scenarios:"),
        "{message}"
    );
    assert!(
        message.contains(
            "- fail b after its effect: the rollback did not restore the world:\n    \
             before: Seen { effects: {}, balance: 0 }\n    \
             after:  Seen { effects: {\"b\"}, balance: 0 }"
        ),
        "{message}"
    );
}

#[tokio::test]
#[should_panic(expected = "fail c after its effect: the rollback did not restore the world")]
async fn assert_each_step_can_fail_panics_with_the_message() {
    wrong_undo().assert_each_step_can_fail().await;
}

fn refund_twice(idempotent_execute: bool) -> SagaCheck<Shop> {
    SagaCheck::new("shop", Shop::default, move |shop: &Shop, saga| {
        saga.step("reserve", put(shop, "reserved"))
            .step("charge", Charge { shop: shop.clone(), idempotent_execute })
            .step("ship", put(shop, "shipped"))
    })
}

#[test]
fn steps_are_idempotent_reports_a_compensation_that_is_not() {
    let check = refund_twice(true);
    let rt = runtime();
    // Each step can fail: the compensation is right when it runs once.
    rt.block_on(check.assert_each_step_can_fail());
    let err = rt.block_on(check.steps_are_idempotent()).unwrap_err();
    let Error::Check(failures) = &err else { panic!("unexpected {err}") };
    assert_eq!(failures.failures.len(), 1, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(
            "- fail ship after its effect, compensate charge twice: running the compensation of \
             charge twice leaves another world than running it once:\n    \
             once:  Seen { effects: {}, balance: 0 }\n    \
             twice: Seen { effects: {}, balance: -10 }"
        ),
        "{message}"
    );
}

#[tokio::test]
#[should_panic(expected = "running the execute of charge twice leaves another world")]
async fn assert_steps_are_idempotent_panics_on_an_execute_that_is_not() {
    refund_twice(false).assert_steps_are_idempotent().await;
}

#[test]
fn crash_anywhere_reports_an_execute_that_is_not_idempotent() {
    let err = runtime().block_on(refund_twice(false).crash_anywhere()).unwrap_err();
    let message = err.to_string();
    // Crashing after charge started, before its end was recorded, runs it again.
    assert!(
        message.contains(
            "no faults, crash after record 4 (StepStarted charge): the world differs from an \
             uninterrupted run:\n    \
             uninterrupted: Seen { effects: {\"reserved\", \"shipped\"}, balance: 10 }\n    \
             recovered:     Seen { effects: {\"reserved\", \"shipped\"}, balance: 20 }"
        ),
        "{message}"
    );
}

#[test]
fn irreversible_steps_are_reported_and_the_point_of_no_return_retries_forward() {
    let check = SagaCheck::new("mixed", Shop::default, |shop: &Shop, saga| {
        let mut grow = put(shop, "grown");
        grow.kind = StepKind::Irreversible;
        saga.step("a", put(shop, "a"))
            .step("grow", grow)
            .step("b", put(shop, "b"))
            .point_of_no_return()
            .step("c", put(shop, "c"))
    });
    let report = runtime().block_on(check.each_step_can_fail()).unwrap();
    assert!(report.scenarios.contains(&"fail c once (past the point of no return)".to_owned()));
    assert!(
        report.notes.contains(
            &"fail b after its effect: world not compared, irreversible steps ran: grow (the \
              world does not exclude their changes, see World::excluding)"
                .to_owned()
        ),
        "{report}"
    );
    let report = runtime().block_on(check.steps_are_idempotent()).unwrap();
    assert_eq!(
        report.notes,
        ["c is never compensated: it runs past the point of no return".to_owned()]
    );
}

#[test]
fn a_plan_cancels_crashes_and_counts() {
    let rt = runtime();
    let check = refund_twice(true);
    let plan = FaultPlan::new().transient("reserve", 2).cancel_at("charge", When::After);
    let run = rt.block_on(check.run(&plan)).unwrap();
    assert!(matches!(run.outcome, Outcome::RolledBack { cause: RollbackCause::Cancelled { .. } }));
    assert_eq!(run.cancel, Some(CancelAnswer::Accepted));
    assert_eq!(run.stats["reserve"].attempts, 3);
    assert_eq!(run.stats["reserve"].executions, 1);
    assert_eq!(run.stats["charge"].compensations, 1);
    assert!(!run.stats.contains_key("ship"));
    assert_eq!(run.after, run.before);
    assert!(!run.recovered);

    let run = rt.block_on(check.run(&FaultPlan::new().crash_after(3))).unwrap();
    assert!(run.recovered);
    assert_eq!(run.outcome, Outcome::Succeeded);
    let starts = run
        .records
        .iter()
        .filter(|r| matches!(&r.kind, RecordKind::StepStarted { step, .. } if step == "reserve"))
        .count();
    assert_eq!(starts, 1, "record 3 is reserve's end, so it did not run again");

    let err = rt.block_on(check.run(&FaultPlan::new().crash_after(0))).unwrap_err();
    assert!(matches!(err, Error::InvalidPlan(_)), "{err}");
}

// ------------------------------------------------------------------ one factory, two builders

/// The shop's saga, written once against `DefineSaga`: the production saga and the saga under
/// test are this very definition.
fn shop_saga<B: DefineSaga>(shop: &Shop, saga: B) -> B {
    let mut receipt = put(shop, "receipt");
    receipt.kind = StepKind::Irreversible;
    saga.step("reserve", put(shop, "reserved"))
        .parallel(|g| {
            g.step("charge", Charge { shop: shop.clone(), idempotent_execute: true })
                .needs(&["reserve"])
                .step("label", put(shop, "labelled"))
        })
        .point_of_no_return()
        .step("ship", put(shop, "shipped"))
        .needs(&["label"])
        .step("mail", receipt)
}

#[test]
fn one_factory_builds_the_production_saga_and_the_saga_under_test() {
    let rt = runtime();
    // Production: `Saga::builder`, run by an executor.
    let shop = Shop::default();
    let saga = shop_saga(&shop, Saga::builder("shop", 1)).build().unwrap();
    // Under test: the same factory over a `TestSagaBuilder`, whose steps inject faults.
    let faults = Faults::new(FaultPlan::new().fail("label", When::After));
    let tested = shop_saga(&Shop::default(), TestSagaBuilder::new("shop", 1, &faults));
    let tested = tested.build().unwrap();
    assert_eq!(tested.steps(), saga.steps());
    assert_eq!(tested.point_of_no_return(), Some("label"));
    assert_eq!(tested.point_of_no_return(), saga.point_of_no_return());

    let outcome = rt.block_on(async {
        let executor = Executor::builder(Arc::new(MemoryStore::new())).saga(saga).build().unwrap();
        let start = Start::new("shop", Resource::new("order", "1")).actor("tester");
        let id = executor.start(start).await.unwrap();
        executor.wait(id).await.unwrap()
    });
    assert_eq!(outcome, Outcome::Succeeded);
    let seen = rt.block_on(shop.snapshot());
    assert_eq!(seen.balance, 10);
    assert_eq!(seen.effects.len(), 4, "{seen:?}");

    // The checks run the very same factory, with its faults injected.
    let check = SagaCheck::new("shop", Shop::default, |shop: &Shop, saga| shop_saga(shop, saga));
    let run = rt.block_on(check.run(&FaultPlan::new().fail("label", When::After))).unwrap();
    assert!(
        matches!(&run.outcome, Outcome::RolledBack { cause: RollbackCause::StepFailed { step, .. } } if step == "label"),
        "{:?}",
        run.outcome
    );
    assert_eq!(run.after, run.before);
    assert_eq!(run.stats["label"].executions, 1);
    let report = rt.block_on(check.assert_each_step_can_fail());
    assert!(report.scenarios.contains(&"fail ship once (past the point of no return)".to_owned()));
    assert!(report.scenarios.contains(&"fail charge after its effect".to_owned()));
}

// ------------------------------------------------- excluding the changes of irreversible steps

/// Effects by name, each with the step that made it (the step tells its own name).
#[derive(Clone, Default)]
struct Ledger(Arc<Mutex<BTreeMap<String, String>>>);

#[async_trait]
impl World for Ledger {
    type Snapshot = BTreeMap<String, String>;

    async fn snapshot(&self) -> Self::Snapshot {
        self.0.lock().unwrap().clone()
    }

    fn excluding(
        &self,
        snapshot: &Self::Snapshot,
        steps: &BTreeSet<String>,
    ) -> Option<Self::Snapshot> {
        let mut kept = snapshot.clone();
        kept.retain(|_, by| !steps.contains(by));
        Some(kept)
    }
}

/// Puts its effect into the ledger; compensation takes it away unless `leaks`.
struct Mark {
    ledger: Ledger,
    effect: &'static str,
    kind: StepKind,
    leaks: bool,
}

#[async_trait]
impl Step for Mark {
    type Output = ();
    async fn execute(&self, ctx: &StepContext) -> Result<(), StepError> {
        self.ledger.0.lock().unwrap().insert(self.effect.into(), ctx.step_name().into());
        Ok(())
    }
    async fn compensate(&self, _: &StepContext, _: Executed<()>) -> Result<(), StepError> {
        if !self.leaks {
            self.ledger.0.lock().unwrap().remove(self.effect);
        }
        Ok(())
    }
    fn kind(&self) -> StepKind {
        self.kind
    }
}

/// `a`, then the irreversible `grow`, then `b`; `a`'s compensation leaks if `leaks`.
fn with_grow(leaks: bool) -> SagaCheck<Ledger> {
    SagaCheck::new("grow", Ledger::default, move |ledger: &Ledger, saga| {
        let mark = |effect, kind, leaks| Mark { ledger: ledger.clone(), effect, kind, leaks };
        saga.step("a", mark("disk", StepKind::Compensable, leaks))
            .step("grow", mark("extra-gib", StepKind::Irreversible, false))
            .step("b", mark("restarted", StepKind::Compensable, false))
    })
}

#[test]
fn a_leftover_is_caught_when_an_irreversible_step_ran() {
    let err = runtime().block_on(with_grow(true).each_step_can_fail()).unwrap_err();
    let Error::Check(failures) = &err else { panic!("unexpected {err}") };
    let scenarios: Vec<&str> = failures.failures.iter().map(|f| f.scenario.as_str()).collect();
    // Every rollback through a leaks; from grow and b on, grow's change is excluded.
    assert_eq!(
        scenarios,
        [
            "fail a after its effect",
            "fail grow before its effect",
            "fail grow after its effect",
            "fail b before its effect",
            "fail b after its effect",
        ],
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains(
            "- fail b before its effect: the rollback did not restore the world (the changes of \
             irreversible steps excluded: grow):\n    \
             before: {}\n    \
             after:  {\"disk\": \"a\"}"
        ),
        "{message}"
    );
}

#[test]
fn the_changes_of_irreversible_steps_are_excluded_and_the_rest_compared() {
    let rt = runtime();
    let check = with_grow(false);
    let report = rt.block_on(check.assert_each_step_can_fail());
    assert!(report.notes.is_empty(), "every world was compared: {report}");
    let run = rt.block_on(check.run(&FaultPlan::new().fail("b", When::Before))).unwrap();
    assert_eq!(run.irreversible, BTreeSet::from(["grow".to_owned()]));
    let (before, after) = run.excluding_irreversible.clone().unwrap();
    assert_eq!(before, after);
    assert_eq!(after, BTreeMap::new());
    assert_eq!(run.after, BTreeMap::from([("extra-gib".to_owned(), "grow".to_owned())]));
    // grow failing without effect changed nothing: nothing is excluded, nothing reported.
    let plan = FaultPlan::new().fail_without_effect("grow");
    let run = rt.block_on(check.run(&plan)).unwrap();
    assert!(run.irreversible.is_empty());
    assert!(run.excluding_irreversible.is_none());
    assert!(matches!(run.outcome, Outcome::RolledBack { .. }), "{:?}", run.outcome);
    assert_eq!(run.after, run.before);
}

// --------------------------------------------------------- failures without effect, attention

#[test]
fn a_step_that_fails_without_effect_is_left_alone() {
    let rt = runtime();
    let check = refund_twice(true);
    let run = rt.block_on(check.run(&FaultPlan::new().fail_without_effect("charge"))).unwrap();
    let Outcome::RolledBack { cause: RollbackCause::StepFailed { step, .. } } = &run.outcome else {
        panic!("{:?}", run.outcome)
    };
    assert_eq!(step, "charge");
    assert_eq!(run.stats["charge"].executions, 0);
    assert_eq!(run.stats["charge"].compensation_attempts, 0, "not compensated");
    assert_eq!(run.stats["reserve"].compensations, 1);
    assert!(run.records.iter().any(
        |r| matches!(&r.kind, RecordKind::StepFailedWithoutEffect { step, .. } if step == "charge")
    ));
    assert_eq!(run.after, run.before);
}

/// `a`, point of no return, `b` with the given retry policy.
fn forward(policy: RetryPolicy) -> SagaCheck<Shop> {
    struct Policy(Put, RetryPolicy);
    #[async_trait]
    impl Step for Policy {
        type Output = ();
        async fn execute(&self, ctx: &StepContext) -> Result<(), StepError> {
            self.0.execute(ctx).await
        }
        fn retry_policy(&self) -> RetryPolicy {
            self.1.clone()
        }
    }
    SagaCheck::new("forward", Shop::default, move |shop: &Shop, saga| {
        saga.step("a", put(shop, "a"))
            .point_of_no_return()
            .step("b", Policy(put(shop, "b"), policy.clone()))
    })
}

#[test]
fn past_the_point_of_no_return_a_step_without_retries_needs_attention() {
    let rt = runtime();
    let check = forward(RetryPolicy::none());
    let report = rt.block_on(check.assert_each_step_can_fail());
    assert_eq!(
        report.notes,
        ["fail b once (past the point of no return): the retry policy of b allows no retry, so \
          the Operation needed attention and an operator's retry finished it"
            .to_owned()],
        "{report}"
    );

    // Without a decision, the run ends with the engine's error.
    let err = rt.block_on(check.run(&FaultPlan::new().fail_times("b", 1))).unwrap_err();
    assert!(
        matches!(&err, Error::Engine { source, .. } if matches!(&**source, EngineError::NeedsAttention { step, .. } if step == "b")),
        "{err}"
    );

    // Retried by the operator as often as needed (here twice).
    let plan = FaultPlan::new().fail_times("b", 2).on_attention(Attention::Retry);
    let run = rt.block_on(check.run(&plan)).unwrap();
    assert_eq!(run.outcome, Outcome::Succeeded);
    assert_eq!(run.attention, ["b", "b"]);
    let retried = run
        .records
        .iter()
        .filter(|r| matches!(r.kind, RecordKind::AttentionRetried { .. }))
        .count();
    assert_eq!(retried, 2);

    // More than `Attention::MAX_RETRIES` retries fail the run.
    let plan = FaultPlan::new().fail("b", When::Before).on_attention(Attention::Retry);
    let err = rt.block_on(check.run(&plan)).unwrap_err();
    assert!(
        matches!(&err, Error::Engine { source, .. } if matches!(**source, EngineError::NeedsAttention { .. })),
        "{err}"
    );
}

#[test]
fn an_abandoned_operation_keeps_what_it_did() {
    let rt = runtime();
    let check = forward(RetryPolicy::exponential(2, Duration::from_millis(1)));
    // Within its policy, b is retried forward.
    let run = rt.block_on(check.run(&FaultPlan::new().fail_times("b", 1))).unwrap();
    assert_eq!(run.outcome, Outcome::Succeeded);
    assert!(run.attention.is_empty());
    // Failing on every attempt, after its effect: the Operation needs attention, is abandoned.
    let plan = FaultPlan::new().fail("b", When::After).on_attention(Attention::Abandon);
    let run = rt.block_on(check.run(&plan)).unwrap();
    let Outcome::Abandoned { step, actor, .. } = &run.outcome else { panic!("{:?}", run.outcome) };
    assert_eq!((step.as_str(), actor.as_str()), ("b", "saga-testkit"));
    assert_eq!(run.attention, ["b"]);
    assert_eq!(run.stats["b"].attempts, 2);
    assert!(run.stats.values().all(|s| s.compensation_attempts == 0), "nothing rolled back");
    let effects: Vec<&str> = run.after.effects.iter().map(String::as_str).collect();
    assert_eq!(effects, ["a", "b"]);
    // A crash anywhere in it recovers to the same outcome.
    for r in 1..run.records.len() as u64 {
        let crashed = rt.block_on(check.run(&plan.clone().crash_after(r))).unwrap();
        assert_eq!(crashed.outcome.status(), saga_core::Status::Abandoned, "crash after {r}");
        assert_eq!(crashed.after, run.after, "crash after {r}");
    }
}

/// The fencing check holds on the in-memory store and on the sled store: the second executor's
/// token is higher, and the first executor's late write is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_executors_write_is_refused_by_a_fenced_resource() {
    saga_testkit::fencing::stale_write_is_refused(Arc::new(MemoryStore::new())).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sled = saga_store::SledStore::open(dir.path().join("store")).unwrap();
    saga_testkit::fencing::stale_write_is_refused(Arc::new(sled)).await.unwrap();
}
