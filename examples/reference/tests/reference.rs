//! The reference examples against the real services: the local Docker Engine, the two local
//! registries and the AWS API emulator (`scripts/services/registry.sh start`,
//! `scripts/services/moto.sh start`, then the variables of `target/services/*.env`).
//!
//! Each example runs as a user runs it (its binary, with `--fail-at`, `--crash-at`,
//! `--cancel-after`), and its saga — the very definition the example runs, written once against
//! [`saga_core::saga::DefineSaga`] — is checked with `saga-testkit`: every step fails in turn (before
//! and after its effect) and rolls back to the world it started from; a crash recovers to the
//! outcome and world of an uninterrupted run. `crash_anywhere` over every record takes too long
//! against real Docker (each run creates and stops containers), so the crash check covers a
//! documented subset: every third record position of the run without faults (see
//! [`crash_subset`]).
//!
//! While the zero-downtime deploy runs (from the command line and under the checks), a probe
//! loops: it asks the target group for its registered targets and GETs each one's container at
//! `127.0.0.1:<port>`, and the test fails on any failed request.
//!
//! Tests share the services and run one at a time. Without a service, a test prints
//! `SKIPPED <test>: <why>` to stderr and returns; under CI (`saga_testkit::ci`: `CI` set to
//! anything but empty, `0` or `false`) it fails.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "../zero_downtime_deploy.rs"]
mod zero_downtime_deploy;

#[allow(dead_code)]
#[path = "../redeploy_database.rs"]
mod redeploy_database;

#[allow(dead_code)]
#[path = "../resize_volume.rs"]
mod resize_volume;

#[path = "reference/support.rs"]
mod support;

use std::time::Duration;

use saga_core::{Outcome, RollbackCause};
use saga_reference::database::Layout;
use saga_reference::{containers, emulator, Clients};
use saga_testkit::{FaultPlan, SagaCheck};
use support::{crash_subset, example, Guard, Probe};

/// The zero-downtime deploy from its command line: a deploy, failures at several steps, a cancel
/// midway, a crash and its resumption; the probe never sees a failed request.
#[test]
fn zero_downtime_deploy_keeps_the_app_reachable_from_the_command_line() {
    let test = "zero_downtime_deploy_keeps_the_app_reachable_from_the_command_line";
    let Some((services, _serial)) = support::services(test) else { return };
    let guard = Guard::new(&services, "zddcli");
    let runtime = support::runtime();
    let deploy = |extra: &[&str]| example("zero_downtime_deploy", &guard, &services, extra);

    // The first run sets up the emulator and release 1, then deploys release 2.
    let out = deploy(&["--drain-ms", "1000"]);
    assert!(out.stdout.ends_with(": succeeded\n"), "{}", out.all());
    let setup: zero_downtime_deploy::Setup =
        saga_reference::Recorded::new(&guard.data, "deploy-setup").load().unwrap();
    let clients = runtime.block_on(Clients::connect(&services.endpoint)).unwrap();
    let probe = Probe::start(&runtime, clients.clone(), &setup);

    for step in ["healthy-2", "register-new", "deregister-old", "stop-1"] {
        let out = deploy(&["--drain-ms", "1000", "--fail-at", step]);
        assert!(out.stdout.ends_with(": rolled back\n"), "--fail-at {step}: {}", out.all());
    }
    let out = deploy(&["--drain-ms", "1000", "--cancel-after", "1200"]);
    assert!(out.stdout.contains("cancelled operation"), "{}", out.all());
    assert!(out.stdout.ends_with(": rolled back\n"), "{}", out.all());

    let crashed = deploy(&["--drain-ms", "1000", "--crash-at", "register-new"]);
    assert!(!crashed.status.success(), "{}", crashed.all());
    assert!(crashed.stderr.contains("crashing after the effect of register-new"));
    let resumed = deploy(&["--drain-ms", "1000"]);
    assert!(resumed.stdout.contains("resuming operation"), "{}", resumed.all());
    assert!(resumed.stdout.ends_with(": succeeded\n"), "{}", resumed.all());
    let out = deploy(&["--drain-ms", "1000"]);
    assert!(out.stdout.ends_with(": succeeded\n"), "{}", out.all());

    let seen = probe.stop(&runtime);
    println!("probe: {} requests answered, {} failed", seen.answered, seen.failed.len());
    assert!(seen.failed.is_empty(), "the app was unreachable: {:#?}", seen.failed);
    assert!(seen.answered > 50, "the probe hardly ran: {seen:?}");

    let help = example("zero_downtime_deploy", &guard, &services, &["--help"]);
    assert!(help.stdout.contains("pull, create-1, create-2, start-1"), "{}", help.all());
}

/// The deploy saga, checked: every step fails in turn and rolls back while the probe runs; a
/// crash recovers.
#[test]
fn zero_downtime_deploy_saga_rolls_back_from_every_step_and_recovers_from_crashes() {
    let test = "zero_downtime_deploy_saga_rolls_back_from_every_step_and_recovers_from_crashes";
    let Some((services, _serial)) = support::services(test) else { return };
    let guard = Guard::new(&services, "zddchk");
    let runtime = support::runtime();
    let args = guard.args(&services);
    let clients = runtime.block_on(Clients::connect(&services.endpoint)).unwrap();
    let (setup, deploy) = runtime.block_on(async {
        let setup = zero_downtime_deploy::set_up(&clients, &args).await.unwrap();
        let deploy = zero_downtime_deploy::plan(&clients, &setup, &args, 1000).await.unwrap();
        (setup, deploy)
    });
    let world = support::DeployWorld::new(&services, deploy.clone());
    let registries = services.registries.clone();
    let step_clients = clients.clone();
    let check = SagaCheck::new(
        zero_downtime_deploy::SAGA,
        move || world.reset(),
        move |_, saga| zero_downtime_deploy::define(saga, &step_clients, &registries),
    )
    .params(&deploy)
    .timeout(Duration::from_secs(120));
    let probe = Probe::start(&runtime, clients.clone(), &setup);
    runtime.block_on(async {
        let report = check.assert_each_step_can_fail().await;
        println!("each_step_can_fail: {} scenarios", report.scenarios.len());
        let crashes = crash_subset(&check, FaultPlan::new(), 3).await;
        println!("crash subset: {crashes} crashes recovered");
    });
    let seen = probe.stop(&runtime);
    println!("probe: {} requests answered, {} failed", seen.answered, seen.failed.len());
    assert!(seen.failed.is_empty(), "the app was unreachable: {:#?}", seen.failed);
}

/// The database redeploy from its command line, then its saga checked.
#[test]
fn redeploy_database_has_no_pull_in_its_downtime_and_rolls_back_to_a() {
    let test = "redeploy_database_has_no_pull_in_its_downtime_and_rolls_back_to_a";
    let Some((services, _serial)) = support::services(test) else { return };
    let guard = Guard::new(&services, "dbchk");
    let out = example("redeploy_database", &guard, &services, &[]);
    assert!(out.stdout.contains(": succeeded\ndowntime: "), "{}", out.all());
    assert!(
        out.stdout.contains(
            "inside the downtime: unmount-old, detach, attach, mount-new, start-new, healthy-new; \
             no image pull, no instance start"
        ),
        "{}",
        out.all()
    );
    let out = example("redeploy_database", &guard, &services, &["--fail-at", "healthy-new"]);
    assert!(out.stdout.contains(": rolled back\n"), "{}", out.all());

    let runtime = support::runtime();
    let args = guard.args(&services);
    let clients = runtime.block_on(Clients::connect(&services.endpoint)).unwrap();
    let layout = Layout::new(&guard.data).unwrap();
    let (setup, params) = runtime.block_on(async {
        let setup = redeploy_database::set_up(&clients, &args, &layout).await.unwrap();
        let params = redeploy_database::plan(&clients, &setup, &args).await.unwrap();
        (setup, params)
    });
    let _ = setup;
    let world = support::DatabaseWorld::new(&services, layout.clone(), params.clone());
    let registries = services.registries.clone();
    let step_clients = clients.clone();
    let check = SagaCheck::new(
        redeploy_database::SAGA,
        move || world.reset(),
        move |_, saga| redeploy_database::define(saga, &step_clients, &registries, &layout),
    )
    .params(&params)
    .timeout(Duration::from_secs(120));
    runtime.block_on(async {
        let report = check.assert_each_step_can_fail().await;
        println!("each_step_can_fail: {} scenarios", report.scenarios.len());
        let crashes = crash_subset(&check, FaultPlan::new(), 3).await;
        println!("crash subset: {crashes} crashes recovered");
    });
}

/// The resize from its command line: a failure after the grow is a rollback incomplete that
/// names the grow and the sizes; then its saga checked.
#[test]
fn resize_volume_reports_the_grow_as_not_undone() {
    let test = "resize_volume_reports_the_grow_as_not_undone";
    let Some((services, _serial)) = support::services(test) else { return };
    let guard = Guard::new(&services, "rschk");
    let out = example("resize_volume", &guard, &services, &[]);
    assert!(out.stdout.contains("from 10 GiB to 15 GiB"), "{}", out.all());
    assert!(out.stdout.ends_with(": succeeded\n"), "{}", out.all());
    let out = example("resize_volume", &guard, &services, &["--fail-at", "start"]);
    assert!(out.stdout.contains(": rollback incomplete: grow (irreversible)\n"), "{}", out.all());
    assert!(out.stdout.contains("at 20 GiB (it was 15 GiB)"), "{}", out.all());

    let runtime = support::runtime();
    let args = guard.args(&services);
    let clients = runtime.block_on(Clients::connect(&services.endpoint)).unwrap();
    let layout = Layout::new(&guard.data).unwrap();
    let setup = runtime.block_on(resize_volume::set_up(&clients, &args, &layout)).unwrap();
    let (size, _) = runtime.block_on(emulator::volume_state(&clients, &setup.volume)).unwrap();
    assert_eq!(size, 20, "the volume stays grown after the rollback");
    let params = resize_volume::Resize {
        instance: setup.instance.clone(),
        volume: setup.volume.clone(),
        container: resize_volume::container_name(&guard.app),
        size_gib: size + 5,
        faults: Default::default(),
    };
    let world = support::ResizeWorld::new(&services, params.clone());
    let step_clients = clients.clone();
    let check = SagaCheck::new(
        resize_volume::SAGA,
        move || world.reset(),
        move |_, saga| resize_volume::define(saga, &step_clients),
    )
    .params(&params)
    .timeout(Duration::from_secs(120));
    runtime.block_on(async {
        // The grow's change (the size) is excluded from the comparison of worlds; the rest (the
        // database running) must be restored by every rollback, through the grow too.
        let report = check.assert_each_step_can_fail().await;
        println!("each_step_can_fail: {} scenarios", report.scenarios.len());
        assert!(report.notes.is_empty(), "every world was compared: {report}");
        let run = check.run(&FaultPlan::new().fail("healthy", saga_testkit::When::Before)).await;
        let run = run.unwrap();
        let Outcome::RollbackIncomplete { cause, not_undone } = &run.outcome else {
            panic!("{:?}", run.outcome)
        };
        assert!(matches!(cause, RollbackCause::StepFailed { step, .. } if step == "healthy"));
        assert_eq!(not_undone.len(), 1);
        assert_eq!(not_undone[0].step, "grow");
        assert_eq!(run.after.1, Some(params.size_gib), "the volume stays grown");
        assert_eq!(run.excluding_irreversible, Some(((true, None), (true, None))));
        let crashes = crash_subset(&check, FaultPlan::new(), 2).await;
        println!("crash subset: {crashes} crashes recovered");
    });
    let running = runtime.block_on(containers::list(&clients.docker, &guard.app)).unwrap();
    assert!(running.iter().any(|c| c.running), "the database runs again: {running:?}");
}
