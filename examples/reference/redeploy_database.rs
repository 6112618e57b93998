//! Database redeploy to a bigger instance with minimal downtime: the database container and its
//! EBS volume move from instance A to instance B.
//!
//! ```text
//! cargo run -p saga-reference --example redeploy_database -- --aws-endpoint URL \
//!     --registry HOST:PORT [--registry HOST:PORT] [--data DIR] [--fail-at STEP] [--crash-at STEP]
//!     [--cancel-after MS] [--cleanup]
//! ```
//!
//! Needs the local Docker Engine, an image registry serving the test image
//! (`scripts/services/registry.sh start`) and the AWS API emulator (`scripts/services/moto.sh
//! start`). Both instances are emulator instances and both "engines" are the local Docker Engine;
//! a "mount" is a directory under `DIR/hosts/<instance>` (see [`saga_reference::database`]).
//!
//! Every precondition comes first — B is running, the image is pulled on B's engine, the new
//! container is created — and only then the downtime starts: stop the old container, unmount and
//! detach the volume, attach and mount it on B, start the new container and wait until it serves.
//! The example prints the downtime window (old stopped .. new healthy) and the steps inside it,
//! read from the Operation's log: no image pull, no instance start. A failure at any step rolls
//! back to the database serving on A with its volume. The first run sets up the two instances
//! (t3.micro and t3.large), a 10 GiB volume attached and mounted on the small one and the
//! database serving there; each later run moves the database to the other instance.

use std::process::ExitCode;
use std::time::Duration;

use aws_sdk_ec2::types::InstanceType;
use saga_core::log::RecordKind;
use saga_core::saga::DefineSaga;
use saga_core::{
    async_trait, Executed, Input, OperationId, Resource, Step, StepContext, StepError,
};
use saga_reference::database::{Layout, DATA_FILE};
use saga_reference::{
    containers, emulator, say, Args, BoxError, Cli, Clients, FaultFlags, Injected, Recorded, Runner,
};
use saga_steps_aws::{
    AttachVolume, DetachVolume, VolumeAttachment, VolumeOnInstance, WaitInstanceRunning, WaitPolicy,
};
use saga_steps_docker::{
    CreateContainer, HealthProbe, PullImage, PulledImage, StartContainer, StopContainer,
    WaitHealthy,
};
use serde::{Deserialize, Serialize};

/// The saga's name.
pub(crate) const SAGA: &str = "redeploy-database";

/// The step names, in order.
pub(crate) const STEPS: [&str; 10] = [
    "instance-running",
    "pull",
    "create-new",
    "stop-old",
    "unmount-old",
    "detach",
    "attach",
    "mount-new",
    "start-new",
    "healthy-new",
];

/// The Operation's params.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Redeploy {
    /// The app (names and labels the containers).
    pub(crate) app: String,
    /// The image path and tag inside the registries.
    pub(crate) image: String,
    /// The database's EBS volume.
    pub(crate) volume: String,
    /// The instance it runs on now.
    pub(crate) from: String,
    /// The instance it moves to.
    pub(crate) to: String,
    /// The container serving now.
    pub(crate) old_container: String,
    /// The container to serve from B.
    pub(crate) new_container: String,
    /// `--fail-at` and `--crash-at`.
    #[serde(flatten)]
    pub(crate) faults: FaultFlags,
}

fn params() -> Input<Redeploy> {
    Input::params()
}

/// The saga over `clients`, pulling from `registries`, mounting under `layout`.
pub(crate) fn define<B: DefineSaga>(
    saga: B,
    clients: &Clients,
    registries: &[String],
    layout: &Layout,
) -> B {
    let docker = &clients.docker;
    let wait = WaitPolicy::fixed(Duration::from_millis(100), Duration::from_secs(60));
    let layout_for_create = layout.clone();
    let create = CreateContainer::new(
        docker.clone(),
        Input::from_fn(move |ctx| {
            let p: Redeploy = ctx.params()?;
            let pulled: PulledImage = ctx.output("pull")?;
            Ok(layout_for_create.container(&p.app, &p.new_container, &pulled.reference, &p.to))
        }),
    );
    let attach = AttachVolume::new(
        clients.ec2.clone(),
        Input::from_fn(|ctx| {
            let p: Redeploy = ctx.params()?;
            let was: VolumeAttachment = ctx.output("detach")?;
            Ok(VolumeAttachment::new(p.volume, p.to, was.device))
        }),
    )
    .wait_policy(wait.clone());
    let healthy = WaitHealthy::new(
        docker.clone(),
        params().map(|p| p.new_container),
        HealthProbe::http(containers::HTTP_PORT, DATA_FILE),
    )
    .timeout(Duration::from_secs(30))
    .interval(Duration::from_millis(100));
    saga.step(
        "instance-running",
        Injected::new(
            WaitInstanceRunning::new(clients.ec2.clone(), params().map(|p| p.to))
                .wait_policy(wait.clone()),
        ),
    )
    .step(
        "pull",
        Injected::new(PullImage::new(
            docker.clone(),
            registries.to_vec(),
            params().map(|p| p.image),
        )),
    )
    .step("create-new", Injected::new(create))
    // The downtime starts here.
    .step(
        "stop-old",
        Injected::new(
            StopContainer::new(docker.clone(), params().map(|p| p.old_container))
                .grace(Duration::from_secs(5)),
        ),
    )
    .step(
        "unmount-old",
        Injected::new(Unmount { layout: layout.clone(), clients: clients.clone() }),
    )
    .step(
        "detach",
        Injected::new(
            DetachVolume::new(
                clients.ec2.clone(),
                params().map(|p| VolumeOnInstance::new(p.volume, p.from)),
            )
            .wait_policy(wait),
        ),
    )
    .step("attach", Injected::new(attach))
    .step("mount-new", Injected::new(Mount { layout: layout.clone(), clients: clients.clone() }))
    .step(
        "start-new",
        Injected::new(StartContainer::new(docker.clone(), params().map(|p| p.new_container))),
    )
    .step("healthy-new", Injected::new(healthy))
}

fn io_error(what: &str, e: std::io::Error) -> StepError {
    StepError::transient(format!("{what}: {e}"))
}

/// Fails unless the volume is attached to the instance: a mount needs the device.
async fn ensure_attached(clients: &Clients, volume: &str, instance: &str) -> Result<(), StepError> {
    let (_, attachments) = emulator::volume_state(clients, volume)
        .await
        .map_err(|e| StepError::transient(format!("describe volume {volume}: {e}")))?;
    if attachments.iter().any(|(i, _)| i == instance) {
        Ok(())
    } else {
        Err(StepError::permanent(format!(
            "cannot mount {volume} on {instance}: it is not attached there ({attachments:?})"
        )))
    }
}

/// Mounts the volume on the new instance; the undo unmounts it.
struct Mount {
    layout: Layout,
    clients: Clients,
}

#[async_trait]
impl Step for Mount {
    type Output = String;

    async fn execute(&self, ctx: &StepContext) -> Result<String, StepError> {
        let p: Redeploy = ctx.params()?;
        ensure_attached(&self.clients, &p.volume, &p.to).await?;
        self.layout.mount(&p.volume, &p.to).map_err(|e| io_error("mount", e))?;
        let at = self.layout.mount_point(&p.to).display().to_string();
        tracing::info!(volume = %p.volume, instance = %p.to, %at, "volume mounted");
        Ok(at)
    }

    async fn compensate(&self, ctx: &StepContext, _: Executed<String>) -> Result<(), StepError> {
        let p: Redeploy = ctx.params()?;
        self.layout.unmount(&p.volume, &p.to).map_err(|e| io_error("unmount", e))?;
        tracing::info!(volume = %p.volume, instance = %p.to, "volume unmounted");
        Ok(())
    }
}

/// Unmounts the volume from the old instance; the undo mounts it there again.
struct Unmount {
    layout: Layout,
    clients: Clients,
}

#[async_trait]
impl Step for Unmount {
    type Output = ();

    async fn execute(&self, ctx: &StepContext) -> Result<(), StepError> {
        let p: Redeploy = ctx.params()?;
        self.layout.unmount(&p.volume, &p.from).map_err(|e| io_error("unmount", e))?;
        tracing::info!(volume = %p.volume, instance = %p.from, "volume unmounted");
        Ok(())
    }

    async fn compensate(&self, ctx: &StepContext, _: Executed<()>) -> Result<(), StepError> {
        let p: Redeploy = ctx.params()?;
        ensure_attached(&self.clients, &p.volume, &p.from).await?;
        self.layout.mount(&p.volume, &p.from).map_err(|e| io_error("mount", e))?;
        tracing::info!(volume = %p.volume, instance = %p.from, "volume mounted again");
        Ok(())
    }
}

/// What the first run set up, recorded in `DIR/database-setup.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Setup {
    /// The small instance, where the database starts.
    pub(crate) small: String,
    /// The big instance.
    pub(crate) large: String,
    /// The database's volume.
    pub(crate) volume: String,
}

/// The recorded setup, made (idempotently) if missing or forgotten by the emulator: the two
/// instances, the volume attached and mounted on the small one, the database serving there.
pub(crate) async fn set_up(
    clients: &Clients,
    args: &Args,
    layout: &Layout,
) -> Result<Setup, BoxError> {
    let record = Recorded::new(&args.data, "database-setup");
    let setup = match record.load::<Setup>() {
        Some(s)
            if emulator::instance_exists(clients, &s.small).await
                && emulator::instance_exists(clients, &s.large).await
                && emulator::volume_state(clients, &s.volume).await.is_ok() =>
        {
            s
        }
        _ => {
            let small =
                emulator::instance(clients, &args.app, "small", InstanceType::T3Micro).await?;
            let large =
                emulator::instance(clients, &args.app, "large", InstanceType::T3Large).await?;
            let volume = emulator::volume(clients, &args.app, "data", 10).await?;
            emulator::ensure_attached(clients, &volume, &small, "/dev/sdf").await?;
            let setup = Setup { small, large, volume };
            record.save(&setup)?;
            say(&format!(
                "set up instances {} (t3.micro) and {} (t3.large), volume {} (recorded in {})",
                setup.small,
                setup.large,
                setup.volume,
                record.path().display()
            ));
            setup
        }
    };
    // The database serves where its volume is attached; at first, on the small instance.
    let (_, attachments) = emulator::volume_state(clients, &setup.volume).await?;
    let on = match attachments.first() {
        Some((instance, _)) => instance.clone(),
        None => {
            emulator::ensure_attached(clients, &setup.volume, &setup.small, "/dev/sdf").await?;
            setup.small.clone()
        }
    };
    let running = containers::list(&clients.docker, &args.app).await?;
    if !running.iter().any(|c| c.running) {
        layout.format(&setup.volume, &on)?;
        layout.mount(&setup.volume, &on)?;
        let reference =
            containers::ensure_image(&clients.docker, &args.registries, &args.image).await?;
        let spec = layout.container(&args.app, &container_name(&args.app, &on), &reference, &on);
        containers::ensure_running(&clients.docker, &spec).await?;
        let port = containers::published_port(&clients.docker, &spec.name).await?;
        containers::wait_answering(port, DATA_FILE, Duration::from_secs(30)).await?;
        say(&format!("the database serves on {on} ({})", spec.name));
    }
    Ok(setup)
}

/// The database container's name on an instance.
pub(crate) fn container_name(app: &str, instance: &str) -> String {
    format!("{app}-db-{instance}")
}

/// The next move: from where the volume is attached to the other instance. Removes the stopped
/// containers of earlier moves first.
pub(crate) async fn plan(
    clients: &Clients,
    setup: &Setup,
    args: &Args,
) -> Result<Redeploy, BoxError> {
    for old in
        containers::list(&clients.docker, &args.app).await?.into_iter().filter(|c| !c.running)
    {
        containers::remove(&clients.docker, &old.name).await?;
    }
    let (_, attachments) = emulator::volume_state(clients, &setup.volume).await?;
    let from = attachments.first().map(|(i, _)| i.clone()).ok_or("the volume is not attached")?;
    let to = if from == setup.small { setup.large.clone() } else { setup.small.clone() };
    Ok(Redeploy {
        app: args.app.clone(),
        image: args.image.clone(),
        volume: setup.volume.clone(),
        old_container: container_name(&args.app, &from),
        new_container: container_name(&args.app, &to),
        from,
        to,
        faults: FaultFlags { fail_at: args.fail_at.clone(), crash_at: args.crash_at.clone() },
    })
}

/// The downtime window, read from the Operation's log: from the old container stopped to the
/// new one healthy, with the steps that ran inside it. `None` if the Operation did not get there.
pub(crate) async fn downtime(
    runner: &Runner,
    id: OperationId,
) -> Result<Option<(u64, Vec<String>)>, BoxError> {
    let records = runner.executor().store().read(id).await?;
    let succeeded = |name: &str| {
        records.iter().find_map(|r| match &r.kind {
            RecordKind::StepSucceeded { step, .. } if step == name => Some(r.at_ms),
            _ => None,
        })
    };
    let (Some(start), Some(end)) = (succeeded("stop-old"), succeeded("healthy-new")) else {
        return Ok(None);
    };
    let inside = records
        .iter()
        .filter(|r| (start..=end).contains(&r.at_ms))
        .filter_map(|r| match &r.kind {
            RecordKind::StepStarted { step, .. } if !step.is_empty() => Some(step.clone()),
            _ => None,
        })
        .collect();
    Ok(Some((end - start, inside)))
}

async fn cleanup(args: &Args) -> Result<bool, BoxError> {
    let docker = bollard::Docker::connect_with_local_defaults()?.negotiate_version().await?;
    for name in containers::remove_all(&docker, &args.app).await? {
        say(&format!("removed container {name}"));
    }
    Ok(true)
}

fn main() -> ExitCode {
    Runner::exit_code("redeploy_database", run())
}

fn run() -> Result<bool, BoxError> {
    let cli = Cli::new(
        "redeploy_database",
        "moves a database container and its EBS volume to the other instance, with every \
         precondition met before the downtime starts",
        &STEPS,
    );
    let Some(args) = cli.parse(std::env::args().skip(1))? else { return Ok(true) };
    Runner::capture_step_logs();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async_main(args))
}

async fn async_main(args: Args) -> Result<bool, BoxError> {
    if args.cleanup {
        return cleanup(&args).await;
    }
    let clients = Clients::connect(&args.aws_endpoint).await?;
    let layout = Layout::new(&args.data)?;
    let saga =
        define(saga_core::Saga::builder(SAGA, 1), &clients, &args.registries, &layout).build()?;
    let runner = Runner::open(&args.data, "redeploy_database", "examples", saga)?;
    let (resumed, unrecoverable) = runner.resume().await?;
    let mut all_succeeded = !unrecoverable;
    for (id, outcome) in &resumed {
        all_succeeded &= outcome.status() == saga_core::Status::Succeeded;
        report(&runner, *id).await?;
    }
    if !resumed.is_empty() || unrecoverable {
        runner.shutdown().await;
        return Ok(all_succeeded);
    }
    let setup = set_up(&clients, &args, &layout).await?;
    let p = plan(&clients, &setup, &args).await?;
    say(&format!(
        "moving {} and volume {} from {} to {} (as {})",
        p.old_container, p.volume, p.from, p.to, p.new_container
    ));
    let resource = Resource::new("database", &args.app);
    let (id, outcome) = runner.run(SAGA, &p, resource, args.cancel_after).await?;
    report(&runner, id).await?;
    runner.shutdown().await;
    Ok(outcome.status() == saga_core::Status::Succeeded)
}

/// Prints the downtime window and what happened inside it.
async fn report(runner: &Runner, id: OperationId) -> Result<(), BoxError> {
    let Some((ms, inside)) = downtime(runner, id).await? else {
        say("downtime: the old database was not replaced");
        return Ok(());
    };
    say(&format!("downtime: {ms} ms (stop-old succeeded .. healthy-new succeeded)"));
    let heavy: Vec<&String> =
        inside.iter().filter(|s| *s == "pull" || *s == "instance-running").collect();
    if heavy.is_empty() {
        say(&format!(
            "inside the downtime: {}; no image pull, no instance start",
            inside.join(", ")
        ));
    } else {
        say(&format!(
            "inside the downtime: {}; WARNING: {heavy:?} ran inside it",
            inside.join(", ")
        ));
    }
    Ok(())
}
