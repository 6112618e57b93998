//! The Docker steps against the real Docker Engine of this machine and two local registries
//! (started by `scripts/services/registry.sh`), run through `saga_core::Executor` on a
//! `MemoryStore`. Under CI (`saga_testkit::ci::under_ci`: `CI` set to anything but empty, `0` or
//! `false`) a missing engine or registry fails; elsewhere a test skips and says why.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use saga_core::store::Store;
use saga_core::{
    async_trait, Executed, Executor, FencingToken, MemoryStore, NotUndoneReason, Outcome, Resource,
    RetryPolicy, RollbackCause, Saga, Start, Step, StepContext, StepError,
};
use saga_steps_docker::{
    CreateContainer, CreatedContainer, HealthProbe, Healthy, PullImage, PulledImage,
    RemoveContainer, RemovedContainer, StartContainer, StartedContainer, StopContainer,
    StoppedContainer, WaitHealthy, CREATED_BY_LABEL, FENCING_TOKEN_LABEL,
};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use support::{fail_after, Cleanup, Fail, RetryAfterEffect};

const GRACE: Duration = Duration::from_secs(1);

fn quick() -> RetryPolicy {
    RetryPolicy::exponential(2, Duration::from_millis(10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepull_fails_over_from_a_registry_that_is_down_and_the_reverse() {
    let (env, _serial) =
        require_env!("prepull_fails_over_from_a_registry_that_is_down_and_the_reverse");
    let cleanup = Cleanup::new(&env, "failover");
    let down = support::closed_port().await;

    // Primary down, mirror serves.
    let saga = Saga::builder("pull", 1)
        .step(
            "pull",
            PullImage::new(
                env.docker.clone(),
                [down.clone(), env.registry_a.clone()],
                env.image.clone(),
            ),
        )
        .build()
        .expect("saga");
    let (outcome, state) = support::run(&cleanup, saga).await;
    assert_eq!(outcome, Outcome::Succeeded);
    let pulled: PulledImage = support::output(&state, "pull");
    assert_eq!(pulled.registry, env.registry_a);
    assert_eq!(pulled.reference, env.reference(&env.registry_a));
    assert!(pulled.pulled);
    assert_eq!(pulled.skipped.len(), 1, "{pulled:?}");
    assert_eq!(pulled.skipped[0].registry, down);
    assert!(pulled.skipped[0].transient);
    assert!(pulled.skipped[0].error.contains("connection refused"), "{pulled:?}");
    assert!(support::image_present(&env.docker, &pulled.reference).await);

    // Pulled again: present, nothing pulled.
    let saga = Saga::builder("pull", 1)
        .step(
            "pull",
            PullImage::new(
                env.docker.clone(),
                [down.clone(), env.registry_a.clone()],
                env.image.clone(),
            ),
        )
        .build()
        .expect("saga");
    let (outcome, state) = support::run(&cleanup, saga).await;
    assert_eq!(outcome, Outcome::Succeeded);
    let again: PulledImage = support::output(&state, "pull");
    assert!(!again.pulled);
    assert_eq!(again.id, pulled.id);
    cleanup.clean_now();

    // The reverse: the other registry first and up, the one after it down; and the other
    // registry serving when the first of the list is down.
    let saga = Saga::builder("pull", 1)
        .step(
            "pull",
            PullImage::new(
                env.docker.clone(),
                [env.registry_b.clone(), down.clone()],
                env.image.clone(),
            ),
        )
        .build()
        .expect("saga");
    let (outcome, state) = support::run(&cleanup, saga).await;
    assert_eq!(outcome, Outcome::Succeeded);
    let pulled: PulledImage = support::output(&state, "pull");
    assert_eq!(pulled.registry, env.registry_b);
    assert!(pulled.skipped.is_empty());
    assert!(support::image_present(&env.docker, &env.reference(&env.registry_b)).await);
    cleanup.clean_now();

    let saga = Saga::builder("pull", 1)
        .step(
            "pull",
            PullImage::new(
                env.docker.clone(),
                [down.clone(), env.registry_b.clone()],
                env.image.clone(),
            ),
        )
        .build()
        .expect("saga");
    let (outcome, state) = support::run(&cleanup, saga).await;
    assert_eq!(outcome, Outcome::Succeeded);
    let pulled: PulledImage = support::output(&state, "pull");
    assert_eq!(pulled.registry, env.registry_b);
    assert_eq!(pulled.skipped.len(), 1);
    let left = cleanup.leftovers(&env.docker).await;
    assert!(left.iter().any(|l| l.contains(&env.reference(&env.registry_b))), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepull_fails_over_from_a_registry_answering_5xx() {
    let (env, _serial) = require_env!("prepull_fails_over_from_a_registry_answering_5xx");
    let cleanup = Cleanup::new(&env, "fivexx");
    let broken = support::answers_500().await;

    let saga = Saga::builder("pull", 1)
        .step(
            "pull",
            PullImage::new(
                env.docker.clone(),
                [broken.address.clone(), env.registry_b.clone()],
                env.image.clone(),
            ),
        )
        .build()
        .expect("saga");
    let (outcome, state) = support::run(&cleanup, saga).await;
    assert_eq!(outcome, Outcome::Succeeded);
    let pulled: PulledImage = support::output(&state, "pull");
    assert_eq!(pulled.registry, env.registry_b);
    assert_eq!(pulled.skipped.len(), 1, "{pulled:?}");
    assert!(pulled.skipped[0].transient, "{pulled:?}");
    assert!(pulled.skipped[0].error.contains("500"), "{pulled:?}");
    assert!(broken.connections.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert!(support::image_present(&env.docker, &env.reference(&env.registry_b)).await);

    // Only broken registries: transient, retried by the policy, then the rollback.
    let down = support::closed_port().await;
    let saga = Saga::builder("pull", 1)
        .step(
            "pull",
            PullImage::new(
                env.docker.clone(),
                [broken.address.clone(), down.clone()],
                "saga-test/other:1",
            )
            .retry_policy(quick()),
        )
        .build()
        .expect("saga");
    let (outcome, state) = support::run(&cleanup, saga).await;
    assert_eq!(outcome.status(), saga_core::Status::RolledBack);
    assert_eq!(state.step("pull").map(|s| s.attempts), Some(2), "transient: retried");
    let error = support::failure(&state, "pull");
    assert!(error.contains(&broken.address) && error.contains(&down), "{error}");
    assert!(error.contains("connection refused"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_missing_from_every_registry_is_permanent() {
    let (env, _serial) = require_env!("an_image_missing_from_every_registry_is_permanent");
    let cleanup = Cleanup::new(&env, "missing");
    let saga = Saga::builder("pull", 1)
        .step(
            "pull",
            PullImage::new(
                env.docker.clone(),
                [env.registry_a.clone(), env.registry_b.clone()],
                "saga-test/nope:1",
            )
            .retry_policy(quick()),
        )
        .build()
        .expect("saga");
    let (outcome, state) = support::run(&cleanup, saga).await;
    assert_eq!(outcome.status(), saga_core::Status::RolledBack);
    assert_eq!(state.step("pull").map(|s| s.attempts), Some(1), "permanent: not retried");
    let error = support::failure(&state, "pull");
    assert!(error.contains(&env.registry_a) && error.contains(&env.registry_b), "{error}");
    assert!(error.contains("manifest unknown") || error.contains("not found"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_is_undone_only_if_the_step_pulled() {
    let (env, _serial) = require_env!("a_pull_is_undone_only_if_the_step_pulled");
    let cleanup = Cleanup::new(&env, "undo-pull");
    let reference = env.reference(&env.registry_a);
    let pull = || PullImage::new(env.docker.clone(), [env.registry_a.clone()], env.image.clone());

    // Pulled by the step, then the saga fails: the image leaves.
    let saga =
        Saga::builder("pull", 1).step("pull", pull()).step("fail", Fail).build().expect("saga");
    let (outcome, _) = support::run(&cleanup, saga).await;
    assert_eq!(outcome.status(), saga_core::Status::RolledBack);
    assert!(!support::image_present(&env.docker, &reference).await);
    assert_eq!(cleanup.leftovers(&env.docker).await, Vec::<String>::new());

    // The step fails after pulling (Executed::Failed): its marker proves it pulled; it leaves.
    let saga =
        Saga::builder("pull", 1).step("pull", fail_after("pull", pull())).build().expect("saga");
    let (outcome, _) = support::run(&cleanup, saga).await;
    assert_eq!(outcome.status(), saga_core::Status::RolledBack);
    assert_eq!(cleanup.leftovers(&env.docker).await, Vec::<String>::new());

    // Already on the host: the rollback keeps it.
    support::pull(&env.docker, &reference).await;
    let saga =
        Saga::builder("pull", 1).step("pull", pull()).step("fail", Fail).build().expect("saga");
    let (outcome, state) = support::run(&cleanup, saga).await;
    assert_eq!(outcome.status(), saga_core::Status::RolledBack);
    let output: PulledImage = support::output(&state, "pull");
    assert!(!output.pulled);
    assert!(support::image_present(&env.docker, &reference).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_and_stop_round_trips_with_their_compensations() {
    let (env, _serial) = require_env!("start_and_stop_round_trips_with_their_compensations");
    let cleanup = Cleanup::new(&env, "startstop");
    let reference = env.reference(&env.registry_a);
    support::pull(&env.docker, &reference).await;
    let name = cleanup.name("app");
    support::fixture_container(&env.docker, support::spec(&name, &reference), false).await;
    let docker = &env.docker;
    let start = || StartContainer::new(docker.clone(), name.clone()).stop_grace(GRACE);
    let stop = || StopContainer::new(docker.clone(), name.clone()).grace(GRACE);

    // Start, then a failure: the compensation stops it again.
    let saga =
        Saga::builder("s", 1).step("start", start()).step("fail", Fail).build().expect("saga");
    let (outcome, state) = support::run(&cleanup, saga).await;
    assert_eq!(outcome.status(), saga_core::Status::RolledBack);
    let started: StartedContainer = support::output(&state, "start");
    assert!(!started.already_running);
    assert_eq!(support::running(docker, &name).await, Some(false));

    // Start for good, then start again: already running, and the rollback leaves it running.
    let saga = Saga::builder("s", 1).step("start", start()).build().expect("saga");
    assert_eq!(support::run(&cleanup, saga).await.0, Outcome::Succeeded);
    assert_eq!(support::running(docker, &name).await, Some(true));
    let saga =
        Saga::builder("s", 1).step("start", start()).step("fail", Fail).build().expect("saga");
    let (outcome, state) = support::run(&cleanup, saga).await;
    assert_eq!(outcome.status(), saga_core::Status::RolledBack);
    assert!(support::output::<StartedContainer>(&state, "start").already_running);
    assert_eq!(support::running(docker, &name).await, Some(true));

    // Stop, then a failure: the compensation starts it again.
    let saga = Saga::builder("s", 1).step("stop", stop()).step("fail", Fail).build().expect("saga");
    let (outcome, state) = support::run(&cleanup, saga).await;
    assert_eq!(outcome.status(), saga_core::Status::RolledBack);
    assert!(support::output::<StoppedContainer>(&state, "stop").was_running);
    assert_eq!(support::running(docker, &name).await, Some(true));

    // A stop that fails after taking effect is undone too.
    let saga =
        Saga::builder("s", 1).step("stop", fail_after("stop", stop())).build().expect("saga");
    let (outcome, _) = support::run(&cleanup, saga).await;
    assert_eq!(outcome.status(), saga_core::Status::RolledBack);
    assert_eq!(support::running(docker, &name).await, Some(true));

    // Stop for good, then stop again: already stopped, and the rollback leaves it stopped.
    let saga = Saga::builder("s", 1).step("stop", stop()).build().expect("saga");
    assert_eq!(support::run(&cleanup, saga).await.0, Outcome::Succeeded);
    assert_eq!(support::running(docker, &name).await, Some(false));
    let saga = Saga::builder("s", 1).step("stop", stop()).step("fail", Fail).build().expect("saga");
    let (outcome, state) = support::run(&cleanup, saga).await;
    assert_eq!(outcome.status(), saga_core::Status::RolledBack);
    assert!(!support::output::<StoppedContainer>(&state, "stop").was_running);
    assert_eq!(support::running(docker, &name).await, Some(false));

    // A container that does not exist: permanent, the Docker message in the error.
    let missing = cleanup.name("missing");
    let saga = Saga::builder("s", 1)
        .step("start", StartContainer::new(docker.clone(), missing.clone()))
        .build()
        .expect("saga");
    let (outcome, state) = support::run(&cleanup, saga).await;
    assert_eq!(outcome.status(), saga_core::Status::RolledBack);
    assert_eq!(state.step("start").map(|s| s.attempts), Some(1));
    assert!(support::failure(&state, "start").contains("no such container"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_is_idempotent_by_name_and_refuses_a_foreign_container() {
    let (env, _serial) =
        require_env!("create_is_idempotent_by_name_and_refuses_a_foreign_container");
    let cleanup = Cleanup::new(&env, "create");
    let reference = env.reference(&env.registry_a);
    support::pull(&env.docker, &reference).await;
    let docker = &env.docker;
    let name = cleanup.name("web");

    // The first attempt creates it and reports a transient error; the retry finds it and succeeds.
    let saga = Saga::builder("c", 1)
        .step(
            "create",
            RetryAfterEffect(CreateContainer::new(
                docker.clone(),
                support::spec(&name, &reference),
            )),
        )
        .build()
        .expect("saga");
    let (outcome, state) = support::run(&cleanup, saga).await;
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(state.step("create").map(|s| s.attempts), Some(2));
    let created: CreatedContainer = support::output(&state, "create");
    let inspected = docker.inspect_container(&name, None).await.expect("created");
    assert_eq!(inspected.id.as_deref(), Some(created.id.as_str()));
    let label =
        inspected.config.and_then(|c| c.labels).and_then(|l| l.get(CREATED_BY_LABEL).cloned());
    assert_eq!(label, Some(format!("{}-create", state.id())));

    // Another Operation wanting the same name: a conflict that cannot resolve; the container
    // that is not its own stays.
    let saga = Saga::builder("c", 1)
        .step("create", CreateContainer::new(docker.clone(), support::spec(&name, &reference)))
        .build()
        .expect("saga");
    let (outcome, state2) = support::run(&cleanup, saga).await;
    assert_eq!(outcome.status(), saga_core::Status::RolledBack);
    assert_eq!(state2.step("create").map(|s| s.attempts), Some(1));
    let error = support::failure(&state2, "create");
    assert!(error.contains("already exists") && error.contains("is already in use"), "{error}");
    let still = docker.inspect_container(&name, None).await.expect("still there");
    assert_eq!(still.id.as_deref(), Some(created.id.as_str()));

    // Created, then a failure after the effect (Executed::Failed): removed by name and label.
    let other = cleanup.name("other");
    let saga = Saga::builder("c", 1)
        .step(
            "create",
            fail_after(
                "create",
                CreateContainer::new(docker.clone(), support::spec(&other, &reference)),
            ),
        )
        .build()
        .expect("saga");
    let (outcome, _) = support::run(&cleanup, saga).await;
    assert_eq!(outcome.status(), saga_core::Status::RolledBack);
    assert_eq!(support::running(docker, &other).await, None);

    // An image that is not on the host: permanent, with Docker's message.
    let saga = Saga::builder("c", 1)
        .step(
            "create",
            CreateContainer::new(
                docker.clone(),
                support::spec(&cleanup.name("noimage"), "saga-test/absent:1"),
            ),
        )
        .build()
        .expect("saga");
    let (outcome, state) = support::run(&cleanup, saga).await;
    assert_eq!(outcome.status(), saga_core::Status::RolledBack);
    assert_eq!(state.step("create").map(|s| s.attempts), Some(1));
    assert!(support::failure(&state, "create").contains("No such image"), "{state:?}");

    // Removal: irreversible, idempotent.
    let saga = Saga::builder("c", 1)
        .step("remove", RemoveContainer::new(docker.clone(), name.clone()))
        .step("again", RemoveContainer::new(docker.clone(), name.clone()))
        .build()
        .expect("saga");
    let (outcome, state) = support::run(&cleanup, saga).await;
    assert_eq!(outcome, Outcome::Succeeded);
    assert!(support::output::<RemovedContainer>(&state, "remove").existed);
    assert!(!support::output::<RemovedContainer>(&state, "again").existed);
    assert_eq!(support::running(docker, &name).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_waits_succeed_time_out_and_end_on_cancel() {
    let (env, _serial) = require_env!("health_waits_succeed_time_out_and_end_on_cancel");
    let cleanup = Cleanup::new(&env, "health");
    let reference = env.reference(&env.registry_a);
    support::pull(&env.docker, &reference).await;
    let docker = &env.docker;

    // Healthy by Docker's status and by HTTP.
    let good = cleanup.name("good");
    support::fixture_container(docker, support::spec(&good, &reference), true).await;
    let saga = Saga::builder("h", 1)
        .step(
            "docker",
            WaitHealthy::new(docker.clone(), good.clone(), HealthProbe::Docker)
                .timeout(Duration::from_secs(30)),
        )
        .step(
            "http",
            WaitHealthy::new(docker.clone(), good.clone(), HealthProbe::http(8080, "/"))
                .timeout(Duration::from_secs(30)),
        )
        .build()
        .expect("saga");
    let (outcome, state) = support::run(&cleanup, saga).await;
    assert_eq!(outcome, Outcome::Succeeded, "{state:?}");
    assert_eq!(support::output::<Healthy>(&state, "docker").seen, "healthy");
    assert!(support::output::<Healthy>(&state, "http")
        .seen
        .starts_with("HTTP 200 from 127.0.0.1:"));

    // Never healthy: the wait times out, permanently, with the last status.
    let bad = cleanup.name("bad");
    support::fixture_container(docker, support::never_healthy(&bad, &reference), true).await;
    let timeout = Duration::from_secs(3);
    let saga = Saga::builder("h", 1)
        .step(
            "docker",
            WaitHealthy::new(docker.clone(), bad.clone(), HealthProbe::Docker).timeout(timeout),
        )
        .build()
        .expect("saga");
    let began = Instant::now();
    let (outcome, state) = support::run(&cleanup, saga).await;
    let took = began.elapsed();
    assert_eq!(outcome.status(), saga_core::Status::RolledBack);
    assert!(took >= timeout && took < timeout + Duration::from_secs(10), "took {took:?}");
    assert_eq!(state.step("docker").map(|s| s.attempts), Some(1));
    let error = support::failure(&state, "docker");
    assert!(error.contains("not healthy after 3s"), "{error}");

    // An HTTP probe on a path that answers 404 times out too.
    let saga = Saga::builder("h", 1)
        .step(
            "http",
            WaitHealthy::new(docker.clone(), good.clone(), HealthProbe::http(8080, "/missing"))
                .timeout(Duration::from_secs(2)),
        )
        .build()
        .expect("saga");
    let (outcome, state) = support::run(&cleanup, saga).await;
    assert_eq!(outcome.status(), saga_core::Status::RolledBack);
    assert!(support::failure(&state, "http").contains("HTTP 404"), "{state:?}");

    // A cancel ends a long wait promptly.
    let saga = Saga::builder("h", 1)
        .step(
            "docker",
            WaitHealthy::new(docker.clone(), bad.clone(), HealthProbe::Docker)
                .timeout(Duration::from_secs(300)),
        )
        .build()
        .expect("saga");
    let (executor, id) = support::start(&cleanup, saga).await;
    // The event, not a guess of how long it takes: the wait's attempt has started.
    tokio::time::timeout(Duration::from_secs(60), async {
        while executor.status(id).await.expect("status").step("docker").map(|s| s.attempts)
            < Some(1)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the wait started");
    executor.cancel(id, "tests", "enough").await.expect("cancel");
    // Promptly: a wait that ignored the cancel would run to its 300 s timeout; a loaded machine
    // takes seconds at most.
    let outcome = tokio::time::timeout(Duration::from_secs(60), executor.wait(id))
        .await
        .expect("the wait ended on the cancel, long before its timeout")
        .expect("wait");
    assert!(
        matches!(&outcome, Outcome::RolledBack { cause: RollbackCause::Cancelled { .. } }),
        "{outcome:?}"
    );

    // A container that does not exist fails the wait at once.
    let saga = Saga::builder("h", 1)
        .step(
            "docker",
            WaitHealthy::new(docker.clone(), cleanup.name("nobody"), HealthProbe::Docker),
        )
        .build()
        .expect("saga");
    let (outcome, state) = support::run(&cleanup, saga).await;
    assert_eq!(outcome.status(), saga_core::Status::RolledBack);
    assert!(support::failure(&state, "docker").contains("no such container"));
}

/// The database-redeploy shape: preconditions (pull, create, start, healthy), then stop and
/// remove the old container. Failing at each step in turn (after its effect), the rollback
/// leaves no container or image that the saga created, and the old container running unless
/// the irreversible removal already happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_failing_at_each_step_leaves_nothing_it_created() {
    let (env, _serial) = require_env!("a_saga_failing_at_each_step_leaves_nothing_it_created");
    let cleanup = Cleanup::new(&env, "saga");
    let docker = &env.docker;
    let down = support::closed_port().await;
    // The old container runs from registry B's reference; the saga pulls registry A's.
    let old_reference = env.reference(&env.registry_b);
    let new_reference = env.reference(&env.registry_a);
    support::pull(docker, &old_reference).await;
    let old = cleanup.name("old");
    let new = cleanup.name("new");
    let steps = ["pull", "create", "start", "healthy", "http", "stop-old", "remove-old"];

    for fail_at in 0..=steps.len() {
        if support::running(docker, &old).await != Some(true) {
            let _ = docker.remove_container(&old, None).await;
            support::fixture_container(docker, support::spec(&old, &old_reference), true).await;
        }
        let pull = PullImage::new(
            docker.clone(),
            [down.clone(), env.registry_a.clone()],
            env.image.clone(),
        );
        let create = CreateContainer::new(docker.clone(), support::spec(&new, &new_reference));
        let start = StartContainer::new(docker.clone(), new.clone()).stop_grace(GRACE);
        let healthy = WaitHealthy::new(docker.clone(), new.clone(), HealthProbe::Docker)
            .timeout(Duration::from_secs(30));
        let http = WaitHealthy::new(docker.clone(), new.clone(), HealthProbe::http(8080, "/"))
            .timeout(Duration::from_secs(30));
        let stop_old = StopContainer::new(docker.clone(), old.clone()).grace(GRACE);
        let remove_old = RemoveContainer::new(docker.clone(), old.clone());

        let mut builder = Saga::builder("redeploy", 1);
        macro_rules! add {
            ($i:expr, $name:expr, $step:expr) => {
                builder = if fail_at == $i {
                    builder.step($name, fail_after($name, $step))
                } else {
                    builder.step($name, $step)
                };
            };
        }
        add!(0, "pull", pull);
        add!(1, "create", create);
        add!(2, "start", start);
        add!(3, "healthy", healthy);
        add!(4, "http", http);
        add!(5, "stop-old", stop_old);
        add!(6, "remove-old", remove_old);
        if fail_at == steps.len() {
            builder = builder.step("fail", Fail);
        }
        let saga = builder.build().expect("saga");
        let (outcome, state) = support::run(&cleanup, saga).await;
        let failed_step = steps.get(fail_at).copied().unwrap_or("fail");

        let expected_cause = state.rollback_cause();
        assert!(
            matches!(&expected_cause, Some(RollbackCause::StepFailed { step, .. }) if step == failed_step),
            "fail at {failed_step}: {outcome:?}"
        );
        if fail_at >= 6 {
            // The removal is irreversible, and so the stop before it cannot be undone either:
            // the outcome says both, truthfully.
            match &outcome {
                Outcome::RollbackIncomplete { not_undone, .. } => {
                    assert_eq!(not_undone.len(), 2, "{outcome:?}");
                    assert_eq!(not_undone[0].step, "remove-old");
                    assert_eq!(not_undone[0].reason, NotUndoneReason::Irreversible);
                    assert_eq!(not_undone[1].step, "stop-old");
                    assert!(
                        matches!(&not_undone[1].reason, NotUndoneReason::CompensationFailed(e) if e.contains("No such container")),
                        "{outcome:?}"
                    );
                }
                other => {
                    panic!("fail at {failed_step}: expected rollback incomplete, got {other:?}")
                }
            }
            assert_eq!(support::running(docker, &old).await, None, "the old container was removed");
        } else {
            assert_eq!(
                outcome.status(),
                saga_core::Status::RolledBack,
                "fail at {failed_step}: {outcome:?}"
            );
            assert_eq!(
                support::running(docker, &old).await,
                Some(true),
                "fail at {failed_step}: old runs"
            );
        }
        if fail_at > 0 {
            let pulled: PulledImage = support::output(&state, "pull");
            assert!(pulled.pulled && pulled.registry == env.registry_a, "{pulled:?}");
        }

        // Nothing the saga created is left: no new container, no reference of registry A, no marker.
        assert_eq!(support::running(docker, &new).await, None, "fail at {failed_step}");
        assert!(!support::image_present(docker, &new_reference).await, "fail at {failed_step}");
        let left: Vec<String> = cleanup
            .leftovers(docker)
            .await
            .into_iter()
            .filter(|l| !l.contains(&old) && !l.contains(&old_reference))
            .collect();
        assert!(left.is_empty(), "fail at {failed_step}: left {left:?}");
        // The old container's image is still there: the saga did not create it.
        assert!(support::image_present(docker, &old_reference).await);
    }
}

/// A request on its way: the late `execute` of a first attempt.
type LateRequest = JoinHandle<Result<CreatedContainer, StepError>>;

/// Wraps a `CreateContainer` whose first attempt sends its request but has it delivered late: a
/// detached task holding a clone of the attempt's context waits on the gate and only then calls
/// the inner `execute`, while the attempt itself returns nothing until its token fires (the
/// executor's shutdown), and then only a transient error that says it was interrupted (which
/// the engine does not record: the attempt's outcome stays unknown). Every later attempt runs
/// the inner step at once. Keeps the context of every attempt, in order. Every setting is the
/// inner step's.
#[derive(Clone)]
struct DeliveredLate {
    inner: CreateContainer,
    gate: Arc<Semaphore>,
    contexts: Arc<Mutex<Vec<StepContext>>>,
    late: Arc<Mutex<Option<LateRequest>>>,
}

impl DeliveredLate {
    fn new(inner: CreateContainer) -> Self {
        DeliveredLate {
            inner,
            gate: Arc::new(Semaphore::new(0)),
            contexts: Arc::default(),
            late: Arc::default(),
        }
    }

    fn contexts(&self) -> Vec<StepContext> {
        self.contexts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn take_late(&self) -> Option<LateRequest> {
        self.late.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[async_trait]
impl Step for DeliveredLate {
    type Output = CreatedContainer;

    async fn execute(&self, ctx: &StepContext) -> Result<CreatedContainer, StepError> {
        let first = {
            let mut contexts = self.contexts.lock().unwrap_or_else(|p| p.into_inner());
            contexts.push(ctx.clone());
            contexts.len() == 1
        };
        if first {
            let (inner, gate, sent) = (self.inner.clone(), self.gate.clone(), ctx.clone());
            let request = tokio::spawn(async move {
                let _open = gate.acquire().await.expect("the gate is never closed");
                inner.execute(&sent).await
            });
            *self.late.lock().unwrap_or_else(|p| p.into_inner()) = Some(request);
            ctx.cancellation().cancelled().await;
            return Err(StepError::transient("interrupted; the create is still on its way"));
        }
        self.inner.execute(ctx).await
    }

    async fn compensate(
        &self,
        ctx: &StepContext,
        executed: Executed<CreatedContainer>,
    ) -> Result<(), StepError> {
        self.inner.compensate(ctx, executed).await
    }

    saga_core::forward_step_settings!(inner);
}

/// The container's id and labels; `None` if it does not exist.
async fn id_and_labels(docker: &Docker, name: &str) -> Option<(String, HashMap<String, String>)> {
    let container = docker.inspect_container(name, None).await.ok()?;
    let labels = container.config.and_then(|c| c.labels).unwrap_or_default();
    Some((container.id.unwrap_or_default(), labels))
}

/// A fixture container of this name carrying these labels, not through the step.
async fn labelled_fixture(docker: &Docker, name: &str, reference: &str, labels: &[(&str, &str)]) {
    let mut spec = support::spec(name, reference);
    spec.config.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    support::fixture_container(docker, spec, false).await;
}

/// Executor A runs the step's first attempt (epoch 1), whose create is delivered late; A shuts
/// down, B recovers the Operation (epoch 2) and creates the container for real; then A's
/// create arrives and is refused as stale, as is a compensation under A's token, and B's
/// container stays. Then the labels: none (an older release) and a lower epoch are adopted as
/// before, a label that is not a token is a permanent error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_executors_late_create_and_compensation_are_refused() {
    let (env, _serial) = require_env!("a_stale_executors_late_create_and_compensation_are_refused");
    let cleanup = Cleanup::new(&env, "fenced");
    let reference = env.reference(&env.registry_a);
    support::pull(&env.docker, &reference).await;
    let docker = &env.docker;
    let name = cleanup.name("web");
    let inner = CreateContainer::new(docker.clone(), support::spec(&name, &reference));
    let step = DeliveredLate::new(inner.clone());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let executor = |owner: &str| {
        let saga = Saga::builder("fenced", 1).step("create", step.clone()).build().expect("saga");
        Executor::builder(store.clone())
            .owner(owner)
            .lease_ttl(Duration::from_secs(5))
            .takeover_interval(None)
            .saga(saga)
            .build()
            .expect("executor")
    };

    // A starts the Operation; its attempt sends the create, which is delayed "in the network".
    let a = executor("a");
    let request = Start::new("fenced", Resource::new("app", cleanup.prefix.clone()))
        .params(&())
        .environment("test")
        .actor("tests");
    let id = a.start(request).await.expect("start");
    cleanup.track(id);
    tokio::time::timeout(Duration::from_secs(10), async {
        while step.late.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the first attempt sent its create");
    let late = step.take_late().expect("the late create");

    // A stops: its step is dropped and its lease released; the create is still on its way.
    let report = a.shutdown(Duration::from_millis(10)).await;
    assert_eq!(report.left, [id], "{report:?}");
    assert!(report.interrupted, "{report:?}");
    assert_eq!(support::running(docker, &name).await, None, "nothing created yet");

    // B takes the Operation over and runs the step for real.
    let b = executor("b");
    let recovered = b.recover().await.expect("recover");
    assert_eq!(recovered.resumed, [id], "{recovered:?}");
    let outcome = b.wait_timeout(id, Duration::from_secs(60)).await.expect("wait");
    assert_eq!(outcome, Outcome::Succeeded);
    let state = b.status(id).await.expect("status");
    let created: CreatedContainer = support::output(&state, "create");
    let contexts = step.contexts();
    assert_eq!(contexts.len(), 2, "{contexts:?}");
    let (a_ctx, b_ctx) = (&contexts[0], &contexts[1]);
    let a_token = a_ctx.fencing_token();
    let b_token = b_ctx.fencing_token();
    assert_eq!(a_token, FencingToken { operation: id, epoch: 1 });
    assert_eq!(b_token, FencingToken { operation: id, epoch: 2 });
    let (b_id, labels) = id_and_labels(docker, &name).await.expect("B's container");
    assert_eq!(b_id, created.id);
    assert_eq!(labels.get(FENCING_TOKEN_LABEL), Some(&b_token.to_string()));
    assert_eq!(labels.get(CREATED_BY_LABEL), Some(&format!("{id}-create")));

    // Only now does A's create arrive: refused as stale, permanently; B's container untouched.
    step.gate.add_permits(1);
    let delivered = tokio::time::timeout(Duration::from_secs(30), late)
        .await
        .expect("the late create ended")
        .expect("the late create did not panic");
    let error = delivered.expect_err("a stale executor's create is refused");
    assert!(!error.is_transient(), "{error:?}");
    let message = error.message();
    assert!(message.contains("stale executor"), "{message}");
    assert!(message.contains(&name) && message.contains(&created.id), "{message}");
    assert!(
        message.contains(&a_token.to_string()) && message.contains(&b_token.to_string()),
        "{message}"
    );
    let unchanged = || async {
        let (now_id, labels) = id_and_labels(docker, &name).await.expect("B's container stays");
        assert_eq!(now_id, created.id);
        assert_eq!(labels.get(FENCING_TOKEN_LABEL), Some(&b_token.to_string()));
        let containers: Vec<String> = cleanup
            .leftovers(docker)
            .await
            .into_iter()
            .filter(|l| l.starts_with("container "))
            .collect();
        assert_eq!(containers, [format!("container {name}")]);
    };
    unchanged().await;

    // A stale compensation, told of B's container or of nothing: refused, the container stays.
    for executed in [Executed::Succeeded(created.clone()), Executed::Unknown] {
        let what = format!("{executed:?}");
        let error = inner.compensate(a_ctx, executed).await.expect_err("stale compensation");
        assert!(!error.is_transient(), "{what}: {error:?}");
        let message = error.message();
        assert!(message.starts_with(&format!("remove container {name}")), "{what}: {message}");
        assert!(message.contains("stale executor"), "{what}: {message}");
        assert!(
            message.contains(&a_token.to_string()) && message.contains(&b_token.to_string()),
            "{what}: {message}"
        );
        unchanged().await;
    }
    // B's own compensation is not stale: it removes the container.
    inner.compensate(b_ctx, Executed::Succeeded(created.clone())).await.expect("B compensates");
    assert_eq!(support::running(docker, &name).await, None);

    // A container of this step without the token label (an older release): adopted as before.
    let key = format!("{id}-create");
    let unlabelled = cleanup.name("unlabelled");
    labelled_fixture(docker, &unlabelled, &reference, &[(CREATED_BY_LABEL, &key)]).await;
    let create = CreateContainer::new(docker.clone(), support::spec(&unlabelled, &reference));
    let adopted = create.execute(a_ctx).await.expect("adopted");
    assert_eq!(Some(adopted.id), id_and_labels(docker, &unlabelled).await.map(|(id, _)| id));

    // Created under A's token and taken over by B (a lower epoch): adopted, and removable by B.
    let older = cleanup.name("older");
    let a_text = a_token.to_string();
    let labels = [(CREATED_BY_LABEL, key.as_str()), (FENCING_TOKEN_LABEL, a_text.as_str())];
    labelled_fixture(docker, &older, &reference, &labels).await;
    let create = CreateContainer::new(docker.clone(), support::spec(&older, &reference));
    let adopted = create.execute(b_ctx).await.expect("adopted by a newer executor");
    create.compensate(b_ctx, Executed::Succeeded(adopted)).await.expect("removed");
    assert_eq!(support::running(docker, &older).await, None);

    // A token label that does not parse: a permanent error naming the container and the label,
    // for the create and the compensation alike; the container stays.
    let garbled = cleanup.name("garbled");
    let labels = [(CREATED_BY_LABEL, key.as_str()), (FENCING_TOKEN_LABEL, "not-a-token")];
    labelled_fixture(docker, &garbled, &reference, &labels).await;
    let create = CreateContainer::new(docker.clone(), support::spec(&garbled, &reference));
    let errors = [
        create.execute(b_ctx).await.expect_err("not a token"),
        create.compensate(b_ctx, Executed::Unknown).await.expect_err("not a token"),
    ];
    for error in errors {
        assert!(!error.is_transient(), "{error:?}");
        let message = error.message();
        assert!(message.contains(&garbled) && message.contains(FENCING_TOKEN_LABEL), "{message}");
        assert!(message.contains("not-a-token"), "{message}");
    }
    assert!(support::running(docker, &garbled).await.is_some());
    let _ = b.shutdown(Duration::from_secs(5)).await;
}
