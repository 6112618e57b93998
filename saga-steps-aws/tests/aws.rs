//! The AWS steps against a local AWS API emulator (moto), run through `saga_core::Executor`.
//!
//! `scripts/services/moto.sh start` installs and starts the emulator and writes
//! `SAGA_TEST_AWS_ENDPOINT` to `target/services/moto.env`; `scripts/test.sh` does both. Tests
//! share the emulator and reset it, so they run one at a time. Without the emulator a test prints
//! why it skips; under CI (`saga_testkit::ci::under_ci`: `CI` set to anything but empty, `0` or
//! `false`) it fails instead.

mod support;

use std::time::{Duration, Instant};

use saga_core::{NotUndone, NotUndoneReason, Outcome, RollbackCause, Saga};
use saga_steps_aws::{
    AttachVolume, DeregisterTargets, DetachVolume, Input, ModifyVolumeSize, RegisterTargets,
    SwapTargets, Target, TargetSet, TargetSwap, VolumeAttachment, VolumeOnInstance, VolumeSize,
    WaitInstanceRunning,
};
use serde::{Deserialize, Serialize};
use support::{emulator, inject, quick, run, Emulator, Fail, Fault, Invariant, TestResult};

/// The params of the volume move.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Move {
    volume: String,
    from: String,
    to: String,
}

fn wait_running(e: &Emulator) -> WaitInstanceRunning {
    WaitInstanceRunning::new(e.ec2.clone(), Input::<Move>::params().map(|m| m.to))
        .wait_policy(quick())
}

fn detach(e: &Emulator) -> DetachVolume {
    let input = Input::<Move>::params().map(|m| VolumeOnInstance::new(m.volume, m.from));
    DetachVolume::new(e.ec2.clone(), input).wait_policy(quick())
}

fn attach(e: &Emulator) -> AttachVolume {
    let input = Input::from_fn(|ctx| {
        let m: Move = ctx.params()?;
        let was: VolumeAttachment = ctx.output("detach")?;
        Ok(VolumeAttachment::new(m.volume, m.to, was.device))
    });
    AttachVolume::new(e.ec2.clone(), input).wait_policy(quick())
}

/// Where a fault goes in the volume move.
#[derive(Clone, Copy, Debug)]
enum MoveFault {
    /// The precondition fails: the new instance is stopped.
    NewInstanceStopped,
    /// A failing step after the step of this index (0 wait, 1 detach, 2 attach).
    FailingStepAfter(usize),
    /// The detach takes effect, then reports a failure.
    DetachFailsAfterEffect,
    /// The attach takes effect, then reports a failure.
    AttachFailsAfterEffect,
}

/// The saga: the new instance runs, detach from the old, attach to the new; with a fault.
fn move_saga(e: &Emulator, fault: Option<MoveFault>) -> Result<Saga, saga_core::Error> {
    let mut saga = Saga::builder("move-volume", 1).step("new-running", wait_running(e));
    if let Some(MoveFault::FailingStepAfter(0)) = fault {
        saga = saga.step("fail", Fail);
    }
    saga = match fault {
        Some(MoveFault::DetachFailsAfterEffect) => {
            saga.step("detach", inject("detach", detach(e), Fault::FailAfter))
        }
        _ => saga.step("detach", detach(e)),
    };
    if let Some(MoveFault::FailingStepAfter(1)) = fault {
        saga = saga.step("fail", Fail);
    }
    saga = match fault {
        Some(MoveFault::AttachFailsAfterEffect) => {
            saga.step("attach", inject("attach", attach(e), Fault::FailAfter))
        }
        _ => saga.step("attach", attach(e)),
    };
    if let Some(MoveFault::FailingStepAfter(2)) = fault {
        saga = saga.step("fail", Fail);
    }
    saga.build()
}

/// Two instances and a 10 GiB volume attached to the first at /dev/sdf.
async fn volume_on_a(e: &Emulator) -> Result<Move, Box<dyn std::error::Error + Send + Sync>> {
    let instances = e.instances(2).await?;
    let (a, b) = (instances[0].clone(), instances[1].clone());
    let volume = e.volume(10).await?;
    e.attach(&volume, &a, "/dev/sdf").await?;
    Ok(Move { volume, from: a, to: b })
}

fn attached(instance: &str, device: &str) -> Vec<(String, String, String)> {
    vec![(instance.to_owned(), device.to_owned(), "attached".to_owned())]
}

#[tokio::test]
async fn moves_a_volume_from_one_instance_to_another() -> TestResult {
    let Some(e) = emulator("moves_a_volume_from_one_instance_to_another").await else {
        return Ok(());
    };
    let params = volume_on_a(&e).await?;

    let outcome = run(move_saga(&e, None)?, &params).await?;
    assert_eq!(outcome, Outcome::Succeeded);
    let (attachments, _) = e.volume_state(&params.volume).await?;
    assert_eq!(attachments, attached(&params.to, "/dev/sdf"));

    // And back again, as a second Operation.
    let back =
        Move { volume: params.volume.clone(), from: params.to.clone(), to: params.from.clone() };
    assert_eq!(run(move_saga(&e, None)?, &back).await?, Outcome::Succeeded);
    assert_eq!(e.volume_state(&params.volume).await?.0, attached(&params.from, "/dev/sdf"));
    Ok(())
}

#[tokio::test]
async fn a_failure_at_each_step_leaves_the_volume_where_it_started() -> TestResult {
    let Some(e) = emulator("a_failure_at_each_step_leaves_the_volume_where_it_started").await
    else {
        return Ok(());
    };
    let faults = [
        MoveFault::NewInstanceStopped,
        MoveFault::FailingStepAfter(0),
        MoveFault::FailingStepAfter(1),
        MoveFault::FailingStepAfter(2),
        MoveFault::DetachFailsAfterEffect,
        MoveFault::AttachFailsAfterEffect,
    ];
    for fault in faults {
        let params = volume_on_a(&e).await?;
        if let MoveFault::NewInstanceStopped = fault {
            e.stop_instance(&params.to).await?;
        }
        let outcome = run(move_saga(&e, Some(fault))?, &params).await?;
        let Outcome::RolledBack { cause: RollbackCause::StepFailed { step, error } } = &outcome
        else {
            panic!("{fault:?}: expected a complete rollback, got {outcome:?}");
        };
        let expected_step = match fault {
            MoveFault::NewInstanceStopped => "new-running",
            MoveFault::FailingStepAfter(_) => "fail",
            MoveFault::DetachFailsAfterEffect => "detach",
            MoveFault::AttachFailsAfterEffect => "attach",
        };
        assert_eq!(step, expected_step, "{fault:?}: {error}");
        if let MoveFault::NewInstanceStopped = fault {
            assert!(error.contains("is stopped"), "{error}");
        }
        let (attachments, _) = e.volume_state(&params.volume).await?;
        assert_eq!(attachments, attached(&params.from, "/dev/sdf"), "{fault:?}");
    }
    Ok(())
}

#[tokio::test]
async fn steps_run_twice_give_the_same_result() -> TestResult {
    let Some(e) = emulator("steps_run_twice_give_the_same_result").await else { return Ok(()) };
    let params = volume_on_a(&e).await?;
    // Each step runs twice in one attempt, as after a crash that lost its outcome; the second
    // detach finds the volume already detached and knows the device from its marker tag.
    let saga = Saga::builder("move-volume", 1)
        .step("detach", inject("detach", detach(&e), Fault::Twice))
        .step("attach", inject("attach", attach(&e), Fault::Twice))
        .step("fail", Fail)
        .build()?;
    let outcome = run(saga, &params).await?;
    assert_eq!(outcome.status(), saga_core::Status::RolledBack, "{outcome:?}");
    assert_eq!(e.volume_state(&params.volume).await?.0, attached(&params.from, "/dev/sdf"));

    let saga = Saga::builder("move-volume", 1)
        .step("detach", inject("detach", detach(&e), Fault::Twice))
        .step("attach", inject("attach", attach(&e), Fault::Twice))
        .build()?;
    assert_eq!(run(saga, &params).await?, Outcome::Succeeded);
    assert_eq!(e.volume_state(&params.volume).await?.0, attached(&params.to, "/dev/sdf"));
    Ok(())
}

#[tokio::test]
async fn attach_succeeds_if_already_there_and_refuses_a_volume_attached_elsewhere() -> TestResult {
    let Some(e) =
        emulator("attach_succeeds_if_already_there_and_refuses_a_volume_attached_elsewhere").await
    else {
        return Ok(());
    };
    let params = volume_on_a(&e).await?;
    let attach_to = |instance: &str, device: &str| {
        let input = Input::value(VolumeAttachment::new(&params.volume, instance, device));
        Saga::builder("attach", 1)
            .step("attach", AttachVolume::new(e.ec2.clone(), input).wait_policy(quick()))
            .build()
    };

    // Already attached to that instance at that device: success, nothing changes.
    assert_eq!(run(attach_to(&params.from, "/dev/sdf")?, &()).await?, Outcome::Succeeded);
    assert_eq!(e.volume_state(&params.volume).await?.0, attached(&params.from, "/dev/sdf"));

    // Attached elsewhere (the emulator would let the attach through; real AWS refuses it): a
    // permanent error, and the rollback leaves the other attachment alone.
    for (instance, device) in [(params.to.as_str(), "/dev/sdf"), (params.from.as_str(), "/dev/sdg")]
    {
        let outcome = run(attach_to(instance, device)?, &()).await?;
        let Outcome::RolledBack { cause: RollbackCause::StepFailed { error, .. } } = &outcome
        else {
            panic!("expected a rollback, got {outcome:?}");
        };
        assert!(error.contains("is attached to") || error.contains("attached to"), "{error}");
        assert_eq!(e.volume_state(&params.volume).await?.0, attached(&params.from, "/dev/sdf"));
    }

    // Detaching from an instance the volume is not on is a permanent error, and changes nothing.
    let input = Input::value(VolumeOnInstance::new(&params.volume, &params.to));
    let saga = Saga::builder("detach", 1)
        .step("detach", DetachVolume::new(e.ec2.clone(), input))
        .build()?;
    let outcome = run(saga, &()).await?;
    assert_eq!(outcome.status(), saga_core::Status::RolledBack, "{outcome:?}");
    assert_eq!(e.volume_state(&params.volume).await?.0, attached(&params.from, "/dev/sdf"));
    Ok(())
}

#[tokio::test]
async fn growing_a_volume_is_irreversible_and_never_shrinks() -> TestResult {
    let Some(e) = emulator("growing_a_volume_is_irreversible_and_never_shrinks").await else {
        return Ok(());
    };
    let volume = e.volume(10).await?;
    let grow = |size: i32| {
        ModifyVolumeSize::new(e.ec2.clone(), Input::value(VolumeSize::new(&volume, size)))
            .wait_policy(quick())
    };

    // Grown, then a later step fails: the rollback reports the growth as not undone.
    let saga = Saga::builder("grow", 1).step("grow", grow(20)).step("fail", Fail).build()?;
    let outcome = run(saga, &()).await?;
    let Outcome::RollbackIncomplete { not_undone, .. } = &outcome else {
        panic!("expected an incomplete rollback, got {outcome:?}");
    };
    assert_eq!(
        not_undone,
        &[NotUndone { step: "grow".into(), reason: NotUndoneReason::Irreversible }]
    );
    assert_eq!(e.volume_state(&volume).await?.1, 20);

    // Growing to the size it has: success, idempotent.
    let saga = Saga::builder("grow", 1).step("grow", grow(20)).build()?;
    assert_eq!(run(saga, &()).await?, Outcome::Succeeded);

    // Shrinking: a permanent error, and the emulator (which would shrink) is never asked.
    let saga = Saga::builder("grow", 1).step("grow", grow(15)).build()?;
    let outcome = run(saga, &()).await?;
    let cause = match &outcome {
        Outcome::RolledBack { cause } | Outcome::RollbackIncomplete { cause, .. } => cause,
        Outcome::Succeeded => panic!("shrinking must fail"),
        _ => panic!("shrinking must roll back, got {outcome:?}"),
    };
    assert!(cause.to_string().contains("cannot shrink"), "{cause}");
    assert_eq!(e.volume_state(&volume).await?.1, 20);
    Ok(())
}

#[tokio::test]
async fn register_and_deregister_undo_each_other() -> TestResult {
    let Some(e) = emulator("register_and_deregister_undo_each_other").await else { return Ok(()) };
    let ids = e.instances(2).await?;
    let group = e.target_group("web").await?;
    e.register(&group, &ids[0]).await?;
    let set = |id: &str| Input::value(TargetSet::new(&group, vec![Target::new(id)]));

    let register = RegisterTargets::new(e.elb.clone(), set(&ids[1])).wait_policy(quick());
    let saga = Saga::builder("register", 1).step("register", register).build()?;
    assert_eq!(run(saga, &()).await?, Outcome::Succeeded);
    let mut healthy = e.healthy(&group).await?;
    healthy.sort();
    let mut both = ids.clone();
    both.sort();
    assert_eq!(healthy, both);

    // Deregister, then fail: the target comes back, healthy.
    let deregister = DeregisterTargets::new(e.elb.clone(), set(&ids[1])).wait_policy(quick());
    let saga =
        Saga::builder("deregister", 1).step("deregister", deregister).step("fail", Fail).build()?;
    assert_eq!(run(saga, &()).await?.status(), saga_core::Status::RolledBack);
    let mut healthy = e.healthy(&group).await?;
    healthy.sort();
    assert_eq!(healthy, both);

    // Register (already there), then fail: the rollback deregisters it.
    let register = RegisterTargets::new(e.elb.clone(), set(&ids[1])).wait_policy(quick());
    let saga =
        Saga::builder("register", 1).step("register", register).step("fail", Fail).build()?;
    assert_eq!(run(saga, &()).await?.status(), saga_core::Status::RolledBack);
    assert_eq!(e.healthy(&group).await?, vec![ids[0].clone()]);

    // An unknown target group is a permanent error naming the AWS error code.
    let missing = format!("{group}-missing");
    let input = Input::value(TargetSet::new(missing, vec![Target::new(&ids[1])]));
    let saga = Saga::builder("register", 1)
        .step("register", RegisterTargets::new(e.elb.clone(), input).wait_policy(quick()))
        .build()?;
    let outcome = run(saga, &()).await?;
    let Outcome::RolledBack { cause } = &outcome else {
        panic!("expected a rollback, got {outcome:?}")
    };
    assert!(cause.to_string().contains("TargetGroupNotFound"), "{cause}");
    Ok(())
}

/// Where a fault goes in the target swap.
#[derive(Clone, Copy, Debug)]
enum SwapFault {
    FailingStepAfterRegister,
    FailingStepAfterDeregister,
    RegisterFailsAfterEffect,
    DeregisterFailsAfterEffect,
}

/// Old target registered and healthy, a new instance, and an invariant on the group.
async fn swap_setup(
    e: &Emulator,
    name: &str,
) -> Result<(SwapTargets, Invariant), Box<dyn std::error::Error + Send + Sync>> {
    let ids = e.instances(2).await?;
    let group = e.target_group(name).await?;
    e.register(&group, &ids[0]).await?;
    let swap = SwapTargets {
        target_group_arn: group.clone(),
        old: vec![Target::new(&ids[0])],
        new: vec![Target::new(&ids[1])],
    };
    let elb = e.elb.clone();
    let invariant = Invariant::new(move || {
        let (elb, group) = (elb.clone(), group.clone());
        async move {
            let answer = elb
                .describe_target_health()
                .target_group_arn(&group)
                .send()
                .await
                .map_err(|err| format!("DescribeTargetHealth failed: {err}"))?;
            let healthy = answer
                .target_health_descriptions()
                .iter()
                .filter(|d| {
                    d.target_health()
                        .and_then(|h| h.state())
                        .is_some_and(|s| s.as_str() == "healthy")
                })
                .count();
            if healthy == 0 {
                Err("no healthy target registered".to_owned())
            } else {
                Ok(())
            }
        }
    });
    Ok((swap, invariant))
}

fn swap_saga(
    e: &Emulator,
    invariant: &Invariant,
    fault: Option<SwapFault>,
) -> Result<Saga, saga_core::Error> {
    let swap = TargetSwap::new(e.elb.clone(), Input::<SwapTargets>::params()).wait_policy(quick());
    let mut saga = Saga::builder("swap", 1);
    saga = match fault {
        Some(SwapFault::RegisterFailsAfterEffect) => saga.step(
            "register-new",
            invariant.wrap(inject("register-new", swap.register_step(), Fault::FailAfter)),
        ),
        _ => saga.step("register-new", invariant.wrap(swap.register_step())),
    };
    if let Some(SwapFault::FailingStepAfterRegister) = fault {
        saga = saga.step("fail", invariant.wrap(Fail));
    }
    saga = match fault {
        Some(SwapFault::DeregisterFailsAfterEffect) => saga.step(
            "deregister-old",
            invariant.wrap(inject("deregister-old", swap.deregister_step(), Fault::FailAfter)),
        ),
        _ => saga.step("deregister-old", invariant.wrap(swap.deregister_step())),
    };
    if let Some(SwapFault::FailingStepAfterDeregister) = fault {
        saga = saga.step("fail", invariant.wrap(Fail));
    }
    saga.build()
}

#[tokio::test]
async fn target_swap_keeps_a_healthy_target_after_every_step() -> TestResult {
    let Some(e) = emulator("target_swap_keeps_a_healthy_target_after_every_step").await else {
        return Ok(());
    };
    let faults = [
        None,
        Some(SwapFault::FailingStepAfterRegister),
        Some(SwapFault::FailingStepAfterDeregister),
        Some(SwapFault::RegisterFailsAfterEffect),
        Some(SwapFault::DeregisterFailsAfterEffect),
    ];
    for (n, fault) in faults.into_iter().enumerate() {
        let (swap, invariant) = swap_setup(&e, &format!("web-{n}")).await?;
        let outcome = run(swap_saga(&e, &invariant, fault)?, &swap).await?;
        invariant.settled().await;
        invariant.verify("at the end".into()).await;
        assert_eq!(invariant.violations(), Vec::<String>::new(), "{fault:?}");
        let steps_checked = invariant.checks().len();
        let healthy = e.healthy(&swap.target_group_arn).await?;
        let targets = e.targets(&swap.target_group_arn).await?;
        match fault {
            None => {
                assert_eq!(outcome, Outcome::Succeeded);
                assert_eq!(steps_checked, 3, "{:?}", invariant.checks());
                assert_eq!(healthy, vec![swap.new[0].id.clone()]);
            }
            Some(fault) => {
                assert_eq!(
                    outcome.status(),
                    saga_core::Status::RolledBack,
                    "{fault:?}: {outcome:?}"
                );
                assert_eq!(healthy, vec![swap.old[0].id.clone()], "{fault:?}: {targets:?}");
                assert_eq!(targets.len(), 1, "{fault:?}: {targets:?}");
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn swap_rollback_never_removes_the_last_healthy_target() -> TestResult {
    let Some(e) = emulator("swap_rollback_never_removes_the_last_healthy_target").await else {
        return Ok(());
    };
    let (swap, invariant) = swap_setup(&e, "web").await?;
    // The old instance stops after the swap: its re-registration fails on rollback, so the new
    // target must stay although its step is rolled back.
    let old = swap.old[0].id.clone();
    let ec2 = e.ec2.clone();
    let saga = {
        let swap_steps =
            TargetSwap::new(e.elb.clone(), Input::<SwapTargets>::params()).wait_policy(quick());
        Saga::builder("swap", 1)
            .step("register-new", invariant.wrap(swap_steps.register_step()))
            .step("deregister-old", invariant.wrap(swap_steps.deregister_step()))
            .step("stop-old-then-fail", invariant.wrap(StopThenFail { ec2, instance: old }))
            .build()?
    };
    let outcome = run(saga, &swap).await?;
    invariant.settled().await;
    invariant.verify("at the end".into()).await;
    assert_eq!(invariant.violations(), Vec::<String>::new());
    let Outcome::RollbackIncomplete { not_undone, .. } = &outcome else {
        panic!("expected an incomplete rollback, got {outcome:?}");
    };
    let steps: Vec<&str> = not_undone.iter().map(|n| n.step.as_str()).collect();
    assert!(steps.contains(&"register-new"), "{not_undone:?}");
    assert_eq!(e.healthy(&swap.target_group_arn).await?, vec![swap.new[0].id.clone()]);
    Ok(())
}

/// Stops an instance, then fails.
#[derive(Debug)]
struct StopThenFail {
    ec2: aws_sdk_ec2::Client,
    instance: String,
}

#[saga_core::async_trait]
impl saga_core::Step for StopThenFail {
    type Output = ();
    async fn execute(&self, _: &saga_core::StepContext) -> Result<(), saga_core::StepError> {
        self.ec2
            .stop_instances()
            .instance_ids(&self.instance)
            .send()
            .await
            .map_err(|e| saga_steps_aws::classify_sdk_error("StopInstances", &e))?;
        Err(saga_core::StepError::permanent("injected failure after stopping the old instance"))
    }
}

#[tokio::test]
async fn cancel_during_a_health_wait_rolls_back_promptly() -> TestResult {
    let Some(e) = emulator("cancel_during_a_health_wait_rolls_back_promptly").await else {
        return Ok(());
    };
    let (swap, invariant) = swap_setup(&e, "web").await?;
    // The new target is registered but its instance is stopped: it never gets healthy, so the
    // register step waits (polling every 50 ms, for up to a minute) until the cancel.
    e.register(&swap.target_group_arn, &swap.new[0].id).await?;
    e.stop_instance(&swap.new[0].id).await?;

    let executor = support::executor(swap_saga(&e, &invariant, None)?)?;
    let id = support::start(&executor, "swap", &swap).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = executor.status(id).await?;
        let running = state.step("register-new").is_some_and(|s| s.attempts > 0);
        if running {
            break;
        }
        assert!(Instant::now() < deadline, "register-new never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    executor.cancel(id, "tester", "changed my mind").await?;
    // Promptly: a wait that ignored the cancel would poll for its policy's 60 s; a loaded machine
    // takes seconds at most.
    let outcome = tokio::time::timeout(Duration::from_secs(30), executor.wait(id))
        .await
        .map_err(|_| "the rollback did not end within 30 s of the cancel")??;
    let Outcome::RolledBack { cause: RollbackCause::Cancelled { actor, .. } } = &outcome else {
        panic!("expected a rollback after the cancel, got {outcome:?}");
    };
    assert_eq!(actor, "tester");
    // The check of the cancelled step runs in a task of its own: wait for it, not for a while.
    invariant.settled().await;
    invariant.verify("at the end".into()).await;
    assert_eq!(invariant.violations(), Vec::<String>::new());
    assert_eq!(
        e.targets(&swap.target_group_arn).await?,
        vec![(swap.old[0].id.clone(), "healthy".to_owned())]
    );
    Ok(())
}
