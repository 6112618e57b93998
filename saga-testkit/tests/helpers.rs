//! The checks catch real bugs in users' sagas, with clear messages; the fault plan does what it
//! says.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use saga_core::{
    async_trait, Executed, Outcome, RecordKind, RollbackCause, Step, StepContext, StepError,
    StepKind,
};
use saga_testkit::{CancelAnswer, Error, FaultPlan, SagaCheck, When, World};

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
            &"fail b after its effect: world not compared, irreversible steps ran: grow".to_owned()
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
