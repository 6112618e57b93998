//! Volume resize: an Operation that cannot be fully undone. It grows the database's EBS volume
//! (a volume cannot shrink) and restarts the database container so that it sees the new size.
//!
//! ```text
//! cargo run -p saga-reference --example resize_volume -- --aws-endpoint URL \
//!     --registry HOST:PORT [--data DIR] [--grow-by GIB] [--fail-at STEP] [--crash-at STEP]
//!     [--cancel-after MS] [--cleanup]
//! ```
//!
//! Needs the local Docker Engine, an image registry serving the test image
//! (`scripts/services/registry.sh start`) and the AWS API emulator
//! (`scripts/services/moto.sh start`). The first run sets up an instance, a 10 GiB volume
//! attached and mounted there (see [`saga_reference::database`]) and the database serving it.
//!
//! A failure after the grow rolls back everything else — the container runs again — and ends with
//! `rollback incomplete: grow (irreversible)`; the example then prints the volume's sizes, which
//! stay grown.

use std::process::ExitCode;
use std::time::Duration;

use aws_sdk_ec2::types::InstanceType;
use saga_core::saga::DefineSaga;
use saga_core::{Input, OperationId, Outcome, Resource};
use saga_reference::database::{Layout, DATA_FILE};
use saga_reference::{
    containers, emulator, say, Args, BoxError, Cli, Clients, FaultFlags, Injected, Recorded, Runner,
};
use saga_steps_aws::{
    ModifyVolumeSize, VolumeResized, VolumeSize, WaitInstanceRunning, WaitPolicy,
};
use saga_steps_docker::{HealthProbe, StartContainer, StopContainer, WaitHealthy};
use serde::{Deserialize, Serialize};

/// The saga's name.
pub(crate) const SAGA: &str = "resize-volume";

/// The step names, in order.
pub(crate) const STEPS: [&str; 5] = ["instance-running", "grow", "stop", "start", "healthy"];

/// The Operation's params.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Resize {
    /// The instance the database runs on.
    pub(crate) instance: String,
    /// Its volume.
    pub(crate) volume: String,
    /// The database container.
    pub(crate) container: String,
    /// The size wanted, in GiB.
    pub(crate) size_gib: i32,
    /// `--fail-at` and `--crash-at`.
    #[serde(flatten)]
    pub(crate) faults: FaultFlags,
}

fn params() -> Input<Resize> {
    Input::params()
}

/// The saga over `clients`.
pub(crate) fn define<B: DefineSaga>(saga: B, clients: &Clients) -> B {
    let docker = &clients.docker;
    let wait = WaitPolicy::fixed(Duration::from_millis(100), Duration::from_secs(60));
    let container = params().map(|p| p.container);
    saga.step(
        "instance-running",
        Injected::new(
            WaitInstanceRunning::new(clients.ec2.clone(), params().map(|p| p.instance))
                .wait_policy(wait.clone()),
        ),
    )
    .step(
        "grow",
        Injected::new(
            ModifyVolumeSize::new(
                clients.ec2.clone(),
                params().map(|p| VolumeSize::new(p.volume, p.size_gib)),
            )
            .wait_policy(wait),
        ),
    )
    .step(
        "stop",
        Injected::new(
            StopContainer::new(docker.clone(), container.clone()).grace(Duration::from_secs(5)),
        ),
    )
    .step("start", Injected::new(StartContainer::new(docker.clone(), container.clone())))
    .step(
        "healthy",
        Injected::new(
            WaitHealthy::new(
                docker.clone(),
                container,
                HealthProbe::http(containers::HTTP_PORT, DATA_FILE),
            )
            .timeout(Duration::from_secs(30))
            .interval(Duration::from_millis(100)),
        ),
    )
}

/// What the first run set up, recorded in `DIR/resize-setup.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Setup {
    /// The instance.
    pub(crate) instance: String,
    /// The volume attached and mounted there.
    pub(crate) volume: String,
}

/// The recorded setup, made (idempotently) if missing or forgotten by the emulator, with the
/// database serving.
pub(crate) async fn set_up(
    clients: &Clients,
    args: &Args,
    layout: &Layout,
) -> Result<Setup, BoxError> {
    let record = Recorded::new(&args.data, "resize-setup");
    let setup = match record.load::<Setup>() {
        Some(s)
            if emulator::instance_exists(clients, &s.instance).await
                && emulator::volume_state(clients, &s.volume).await.is_ok() =>
        {
            s
        }
        _ => {
            let instance =
                emulator::instance(clients, &args.app, "db", InstanceType::T3Micro).await?;
            let volume = emulator::volume(clients, &args.app, "data", 10).await?;
            emulator::ensure_attached(clients, &volume, &instance, "/dev/sdf").await?;
            let setup = Setup { instance, volume };
            record.save(&setup)?;
            say(&format!(
                "set up instance {} with volume {} (recorded in {})",
                setup.instance,
                setup.volume,
                record.path().display()
            ));
            setup
        }
    };
    layout.format(&setup.volume, &setup.instance)?;
    layout.mount(&setup.volume, &setup.instance)?;
    let name = container_name(&args.app);
    if !containers::list(&clients.docker, &args.app).await?.iter().any(|c| c.running) {
        let reference =
            containers::ensure_image(&clients.docker, &args.registries, &args.image).await?;
        let spec = layout.container(&args.app, &name, &reference, &setup.instance);
        containers::ensure_running(&clients.docker, &spec).await?;
        let port = containers::published_port(&clients.docker, &name).await?;
        containers::wait_answering(port, DATA_FILE, Duration::from_secs(30)).await?;
        say(&format!("the database serves on {} ({name})", setup.instance));
    }
    Ok(setup)
}

/// The database container's name.
pub(crate) fn container_name(app: &str) -> String {
    format!("{app}-db")
}

/// The grow's recorded sizes `(from, to)`, if it succeeded.
pub(crate) async fn grown(
    runner: &Runner,
    id: OperationId,
) -> Result<Option<VolumeResized>, BoxError> {
    let state = runner.executor().status(id).await?;
    Ok(state.output::<VolumeResized>("grow").ok())
}

async fn cleanup(args: &Args) -> Result<bool, BoxError> {
    let docker = bollard::Docker::connect_with_local_defaults()?.negotiate_version().await?;
    for name in containers::remove_all(&docker, &args.app).await? {
        say(&format!("removed container {name}"));
    }
    Ok(true)
}

fn main() -> ExitCode {
    Runner::exit_code("resize_volume", run())
}

fn run() -> Result<bool, BoxError> {
    let cli = Cli::new(
        "resize_volume",
        "grows the database's volume (irreversible) and restarts the database",
        &STEPS,
    )
    .flag("--grow-by", "GIB", "how much to grow the volume (default 5)");
    let Some(args) = cli.parse(std::env::args().skip(1))? else { return Ok(true) };
    Runner::capture_step_logs();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async_main(args))
}

async fn async_main(args: Args) -> Result<bool, BoxError> {
    if args.cleanup {
        return cleanup(&args).await;
    }
    let grow_by = i32::try_from(args.number("--grow-by", 5)?)?;
    let clients = Clients::connect(&args.aws_endpoint).await?;
    let layout = Layout::new(&args.data)?;
    let saga = define(saga_core::Saga::builder(SAGA, 1), &clients).build()?;
    let runner = Runner::open(&args.data, "resize_volume", "examples", saga)?;
    let (resumed, unrecoverable) = runner.resume().await?;
    let mut all_succeeded = !unrecoverable;
    for (id, outcome) in &resumed {
        all_succeeded &= report(&runner, *id, outcome).await?;
    }
    if !resumed.is_empty() || unrecoverable {
        runner.shutdown().await;
        return Ok(all_succeeded);
    }
    let setup = set_up(&clients, &args, &layout).await?;
    let (size, _) = emulator::volume_state(&clients, &setup.volume).await?;
    let resize = Resize {
        instance: setup.instance.clone(),
        volume: setup.volume.clone(),
        container: container_name(&args.app),
        size_gib: size + grow_by,
        faults: FaultFlags { fail_at: args.fail_at.clone(), crash_at: args.crash_at.clone() },
    };
    say(&format!("growing {} from {size} GiB to {} GiB", resize.volume, resize.size_gib));
    let resource = Resource::new("volume", &setup.volume);
    let (id, outcome) = runner.run(SAGA, &resize, resource, args.cancel_after).await?;
    let succeeded = report(&runner, id, &outcome).await?;
    runner.shutdown().await;
    Ok(succeeded)
}

/// Says what stays of the grow after a rollback. True if the Operation succeeded.
async fn report(runner: &Runner, id: OperationId, outcome: &Outcome) -> Result<bool, BoxError> {
    if let Outcome::RollbackIncomplete { not_undone, .. } = outcome {
        if not_undone.iter().any(|n| n.step == "grow") {
            match grown(runner, id).await? {
                Some(r) => say(&format!(
                    "not undone: grow left volume {} at {} GiB (it was {} GiB); a volume cannot \
                     shrink",
                    r.volume_id,
                    r.to_gib,
                    r.from_gib.map_or_else(|| "?".to_owned(), |g| g.to_string())
                )),
                None => say("not undone: grow may have grown the volume; a volume cannot shrink"),
            }
        }
    }
    Ok(*outcome == Outcome::Succeeded)
}
