//! Proptest strategies: random saga shapes and random fault plans.

use proptest::prelude::*;
use saga_core::{Saga, StepKind};

use crate::faults::{Attention, FaultPlan, When};
use crate::shape::{SagaShape, StepSpec};

/// The name of the `i`-th step of a generated shape: `a`..`z`, then `s26`, `s27`...
fn step_name(i: usize) -> String {
    match u8::try_from(i) {
        Ok(i) if i < 26 => char::from(b'a' + i).to_string(),
        _ => format!("s{i}"),
    }
}

fn step_kind() -> impl Strategy<Value = StepKind> {
    prop_oneof![
        7 => Just(StepKind::Compensable),
        2 => Just(StepKind::Irreversible),
        1 => Just(StepKind::ReadOnly),
    ]
}

/// Random saga shapes of 1 to 5 stages, a third of them parallel groups of 2 or 3 steps, mostly
/// compensable steps with some irreversible and read-only ones, and a point of no return in about
/// a third of them.
pub fn saga_shapes() -> BoxedStrategy<SagaShape> {
    saga_shapes_up_to(5, 3)
}

/// Random saga shapes of 1 to `max_stages` stages, groups of up to `max_group` steps.
pub fn saga_shapes_up_to(max_stages: usize, max_group: usize) -> BoxedStrategy<SagaShape> {
    let max_stages = max_stages.max(1);
    let max_group = max_group.max(1);
    let group = if max_group > 1 {
        prop_oneof![2 => Just(1usize), 1 => 2..=max_group].boxed()
    } else {
        Just(1usize).boxed()
    };
    let stage = group.prop_flat_map(|n| proptest::collection::vec(step_kind(), n));
    proptest::collection::vec(stage, 1..=max_stages)
        .prop_flat_map(|stages| {
            let n = stages.len();
            (Just(stages), proptest::option::weighted(0.3, 0..n))
        })
        .prop_map(|(kinds, point_of_no_return)| {
            let mut i = 0;
            let stages = kinds
                .into_iter()
                .map(|stage| {
                    stage
                        .into_iter()
                        .map(|kind| {
                            i += 1;
                            StepSpec { name: step_name(i - 1), kind }
                        })
                        .collect()
                })
                .collect();
            SagaShape::new(stages, point_of_no_return)
        })
        .boxed()
}

/// A step a fault plan may name: its name and whether it runs past the point of no return.
#[derive(Clone, Debug)]
struct Target {
    name: String,
    forward_only: bool,
}

fn plans(targets: Vec<Target>) -> BoxedStrategy<FaultPlan> {
    if targets.is_empty() {
        return Just(FaultPlan::new()).boxed();
    }
    let n = targets.len();
    let fault = (0..n, 0..8u8, 1..=3u32, any::<bool>());
    (proptest::collection::vec(fault, 0..=3), any::<bool>())
        .prop_map(move |(faults, abandon)| {
            let mut plan = FaultPlan::new();
            let mut forward_faults = false;
            for (i, kind, times, late) in faults {
                let t = &targets[i];
                let when = if late { When::After } else { When::Before };
                forward_faults |= t.forward_only && matches!(kind, 0 | 1 | 2 | 7);
                plan = match kind {
                    // Past the point of no return, a step failing on every attempt needs
                    // attention until the Operation is abandoned; an operator's retry would not
                    // finish it.
                    1 if t.forward_only && abandon => plan.fail(&t.name, when),
                    7 if t.forward_only && abandon => plan.fail_without_effect(&t.name),
                    0 | 1 | 7 if t.forward_only => plan.fail_times(&t.name, times),
                    0 | 1 => plan.fail(&t.name, when),
                    2 => plan.transient(&t.name, times),
                    3 => plan.fail_compensation(&t.name),
                    4 => plan.execute_twice(&t.name),
                    5 => plan.compensate_twice(&t.name),
                    6 => plan.cancel_at(&t.name, when),
                    _ => plan.fail_without_effect(&t.name),
                };
            }
            if forward_faults {
                plan =
                    plan.on_attention(if abandon { Attention::Abandon } else { Attention::Retry });
            }
            plan
        })
        .boxed()
}

/// Random fault plans for a shape: up to three faults among a permanent failure (before or after
/// the effect), a failure without effect, 1 to 3 transient failures, a failing compensation, a
/// doubled execute or compensate, and a cancel while a step runs. Past the point of no return a
/// failure is of 1 to 3 attempts, or of every attempt; a plan with such faults says what the
/// operator decides when the Operation needs attention: an operator's retry (never with a
/// failure of every attempt) or abandoning it. No crash: add one with [`FaultPlan::crash_after`]
/// (every plan finishes).
pub fn fault_plans(shape: &SagaShape) -> BoxedStrategy<FaultPlan> {
    let targets = shape
        .steps()
        .map(|(stage, s)| Target {
            name: s.name.clone(),
            forward_only: shape.past_point_of_no_return(stage),
        })
        .collect();
    plans(targets)
}

/// Random fault plans, as [`fault_plans`], for the steps of a user's saga.
pub fn fault_plans_for(saga: &Saga) -> BoxedStrategy<FaultPlan> {
    let point_of_no_return = saga.point_of_no_return().and_then(|s| saga.stage_of(s));
    let targets = saga
        .steps()
        .into_iter()
        .map(|s| Target {
            forward_only: point_of_no_return.is_some_and(|p| s.stage > p),
            name: s.name,
        })
        .collect();
    plans(targets)
}

/// Random shapes, each with a random fault plan for it.
pub fn shapes_and_plans() -> BoxedStrategy<(SagaShape, FaultPlan)> {
    saga_shapes()
        .prop_flat_map(|shape| {
            let plans = fault_plans(&shape);
            (Just(shape), plans)
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    use super::*;

    #[test]
    fn shapes_have_unique_names_and_a_valid_point_of_no_return() {
        let mut runner = TestRunner::deterministic();
        for _ in 0..200 {
            let (shape, plan) = shapes_and_plans().new_tree(&mut runner).expect("tree").current();
            let names: Vec<_> = shape.steps().map(|(_, s)| s.name.clone()).collect();
            let unique: std::collections::BTreeSet<_> = names.iter().collect();
            assert_eq!(unique.len(), names.len(), "{shape}");
            assert!(shape.point_of_no_return().is_none_or(|p| p < shape.stages().len()));
            for (step, faults) in plan.steps() {
                assert!(names.iter().any(|n| n == step), "{plan} names {step}, not in {shape}");
                let forward =
                    shape.stage_of(step).is_some_and(|s| shape.past_point_of_no_return(s));
                let every_attempt = matches!(
                    faults.execute,
                    Some(crate::ExecuteFault::Fail(_) | crate::ExecuteFault::FailWithoutEffect)
                );
                if forward && faults.execute.is_some() {
                    assert!(plan.attention().is_some(), "{plan} decides nothing for {shape}");
                }
                if forward && every_attempt {
                    assert_eq!(plan.attention(), Some(Attention::Abandon), "{plan} for {shape}");
                }
            }
        }
    }
}
