//! Zero-downtime deploy: a new release of a two-replica web app replaces the old one behind a load
//! balancer, and at every instant — whichever step fails, wherever the process crashes, whenever
//! the Operation is cancelled — the registered targets answer.
//!
//! ```text
//! cargo run -p saga-reference --example zero_downtime_deploy -- --aws-endpoint URL \
//!     --registry HOST:PORT [--registry HOST:PORT] [--data DIR] [--fail-at STEP] [--crash-at STEP]
//!     [--cancel-after MS] [--drain-ms MS] [--cleanup]
//! ```
//!
//! Needs the local Docker Engine, an image registry serving the test image (an HTTP server on port
//! 8080; `scripts/services/registry.sh start` runs two) and the AWS API emulator
//! (`scripts/services/moto.sh start`).
//!
//! The saga: pre-pull the image (failing over between registries), create and start the new
//! containers, wait until they answer HTTP, register them in the target group, deregister the old
//! ones and let them drain, then stop them. Rolling back runs the same dance in reverse: an old
//! container is started and answering before it is registered again, and a new one is
//! deregistered and drained before it is stopped.
//!
//! The emulator's ELBv2 knows only its own EC2 instances, so each container is paired with an
//! emulator instance (its "host"): the instance is the target, the container publishes its port
//! on `127.0.0.1`, and the pairing is recorded in `DIR/deploy-setup.json` and in the Operation's
//! params. (The emulator keys targets by id alone, so `ip` targets at `127.0.0.1` on several
//! ports would collapse into one.) The first run sets up four instances in two slots, blue and
//! green, a target group, and release 1 on blue; each run deploys the next release to the other
//! slot.

use std::net::TcpListener;
use std::process::ExitCode;
use std::time::Duration;

use aws_sdk_ec2::types::InstanceType;
use aws_sdk_elasticloadbalancingv2::types::TargetDescription;
use bollard::Docker;
use saga_core::saga::{DefineGroup, DefineSaga};
use saga_core::{async_trait, Executed, Input, Resource, Step, StepContext, StepError};
use saga_reference::{
    containers, emulator, say, Args, BoxError, Cli, Clients, FaultFlags, Injected, Recorded, Runner,
};
use saga_steps_aws::{SwapTargets, Target, TargetSwap, WaitPolicy};
use saga_steps_docker::{
    CreateContainer, HealthProbe, PullImage, PulledImage, StartContainer, StopContainer,
    WaitHealthy,
};
use serde::{Deserialize, Serialize};

/// The saga's name.
pub(crate) const SAGA: &str = "zero-downtime-deploy";

/// The step names, in order.
pub(crate) const STEPS: [&str; 11] = [
    "pull",
    "create-1",
    "create-2",
    "start-1",
    "start-2",
    "healthy-1",
    "healthy-2",
    "register-new",
    "deregister-old",
    "stop-1",
    "stop-2",
];

/// The label naming a container's slot (`blue-1` ...).
const SLOT_LABEL: &str = "io.saga.example.slot";
/// The label naming a container's release.
const RELEASE_LABEL: &str = "io.saga.example.release";
/// The two slots; a deploy goes to the one that does not serve.
const SLOTS: [[&str; 2]; 2] = [["blue-1", "blue-2"], ["green-1", "green-2"]];

/// One replica: a container, the emulator instance it is paired with, its port on 127.0.0.1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Replica {
    /// Its slot (`blue-1` ...).
    pub(crate) slot: String,
    /// The container's name.
    pub(crate) container: String,
    /// The emulator instance registered as its target.
    pub(crate) instance: String,
    /// The host port (on 127.0.0.1) that serves its HTTP.
    pub(crate) port: u16,
}

/// The Operation's params: everything a step needs, recorded with the Operation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Deploy {
    /// The app (names and labels its containers).
    pub(crate) app: String,
    /// The release deployed.
    pub(crate) release: u32,
    /// The image path and tag inside the registries.
    pub(crate) image: String,
    /// The target group's ARN.
    pub(crate) target_group_arn: String,
    /// The replicas serving now.
    pub(crate) old: Vec<Replica>,
    /// The replicas to serve from now on.
    pub(crate) new: Vec<Replica>,
    /// How long a deregistered target keeps serving requests already sent to it.
    pub(crate) drain_ms: u64,
    /// `--fail-at` and `--crash-at`.
    #[serde(flatten)]
    pub(crate) faults: FaultFlags,
}

impl Deploy {
    fn swap(&self) -> SwapTargets {
        let targets = |rs: &[Replica]| rs.iter().map(|r| Target::new(&r.instance)).collect();
        SwapTargets {
            target_group_arn: self.target_group_arn.clone(),
            old: targets(&self.old),
            new: targets(&self.new),
        }
    }
}

/// The replica `i` of `old` or `new`, from the params.
fn replica(new: bool, i: usize) -> Input<Replica> {
    Input::from_fn(move |ctx| {
        let deploy: Deploy = ctx.params()?;
        let list = if new { deploy.new } else { deploy.old };
        list.into_iter()
            .nth(i)
            .ok_or_else(|| StepError::permanent(format!("the params name no replica {}", i + 1)))
    })
}

/// The saga over `docker` and `clients.elb`, pulling from `registries`. Written against
/// [`DefineSaga`] so that the test checks this very definition with `saga-testkit`.
pub(crate) fn define<B: DefineSaga>(saga: B, clients: &Clients, registries: &[String]) -> B {
    let docker = &clients.docker;
    let http = HealthProbe::http(containers::HTTP_PORT, "/");
    let healthy = |name: Input<String>| {
        WaitHealthy::new(docker.clone(), name, http.clone())
            .timeout(Duration::from_secs(30))
            .interval(Duration::from_millis(100))
    };
    let pull = PullImage::new(docker.clone(), registries.to_vec(), deploy().map(|d| d.image));
    let name = |new: bool, i: usize| replica(new, i).map(|r| r.container);
    let swap = TargetSwap::new(clients.elb.clone(), deploy().map(|d| d.swap()))
        .wait_policy(WaitPolicy::fixed(Duration::from_millis(100), Duration::from_secs(60)));
    let drain = deploy().map(|d| Duration::from_millis(d.drain_ms));
    let stop = |i: usize| StopServing {
        stop: StopContainer::new(docker.clone(), name(false, i)).grace(Duration::from_secs(5)),
        healthy: healthy(name(false, i)),
    };
    saga.step("pull", Injected::new(pull))
        .parallel(|g| {
            g.step("create-1", Injected::new(create(docker, 0)))
                .step("create-2", Injected::new(create(docker, 1)))
        })
        .parallel(|g| {
            g.step("start-1", Injected::new(StartContainer::new(docker.clone(), name(true, 0))))
                .step("start-2", Injected::new(StartContainer::new(docker.clone(), name(true, 1))))
        })
        .parallel(|g| {
            g.step("healthy-1", Injected::new(healthy(name(true, 0))))
                .step("healthy-2", Injected::new(healthy(name(true, 1))))
        })
        .step("register-new", Injected::new(Drained::on_undo(swap.register_step(), drain.clone())))
        .step("deregister-old", Injected::new(Drained::on_execute(swap.deregister_step(), drain)))
        .parallel(|g| {
            g.step("stop-1", Injected::new(stop(0))).step("stop-2", Injected::new(stop(1)))
        })
}

fn deploy() -> Input<Deploy> {
    Input::params()
}

/// Creates new replica `i`: the pulled image, published on its port, labelled with its slot and
/// release.
fn create(docker: &Docker, i: usize) -> CreateContainer {
    CreateContainer::new(
        docker.clone(),
        Input::from_fn(move |ctx| {
            let deploy: Deploy = ctx.params()?;
            let pulled: PulledImage = ctx.output("pull")?;
            let r = replica(true, i).resolve(ctx)?;
            let mut spec =
                containers::spec(&deploy.app, &r.container, &pulled.reference, r.port, &[], &[]);
            let labels = spec.config.labels.get_or_insert_with(Default::default);
            labels.insert(SLOT_LABEL.into(), r.slot.clone());
            labels.insert(RELEASE_LABEL.into(), deploy.release.to_string());
            Ok(spec)
        }),
    )
}

/// Lets a target group's removed targets drain: after the wrapped step's `execute` (a
/// deregistration) or after its `compensate` (the undo of a registration), waits the drain time,
/// so that requests a load balancer already sent to those targets end before they stop.
struct Drained<S> {
    inner: S,
    drain: Input<Duration>,
    after_execute: bool,
}

impl<S: Step> Drained<S> {
    fn on_execute(inner: S, drain: Input<Duration>) -> Self {
        Drained { inner, drain, after_execute: true }
    }

    fn on_undo(inner: S, drain: Input<Duration>) -> Self {
        Drained { inner, drain, after_execute: false }
    }
}

#[async_trait]
impl<S: Step> Step for Drained<S> {
    type Output = S::Output;

    async fn execute(&self, ctx: &StepContext) -> Result<S::Output, StepError> {
        let output = self.inner.execute(ctx).await?;
        if self.after_execute {
            let drain = self.drain.resolve(ctx)?;
            tracing::info!(
                drain_ms = drain.as_millis() as u64,
                "draining the deregistered targets"
            );
            tokio::select! {
                _ = tokio::time::sleep(drain) => {}
                _ = ctx.cancellation().cancelled() => return Err(StepError::cancelled()),
            }
        }
        Ok(output)
    }

    async fn compensate(
        &self,
        ctx: &StepContext,
        executed: Executed<S::Output>,
    ) -> Result<(), StepError> {
        self.inner.compensate(ctx, executed).await?;
        if !self.after_execute {
            let drain = self.drain.resolve(ctx)?;
            tracing::info!(
                drain_ms = drain.as_millis() as u64,
                "draining the deregistered targets"
            );
            tokio::time::sleep(drain).await;
        }
        Ok(())
    }

    // Every setting of the wrapped step, not the defaults (its timeouts, cancel grace and
    // compensation policy too).
    saga_core::forward_step_settings!(inner);
}

/// Stops an old replica; the undo starts it and waits until it answers, so that the rollback
/// registers it again only once it serves.
struct StopServing {
    stop: StopContainer,
    healthy: WaitHealthy,
}

#[async_trait]
impl Step for StopServing {
    type Output = <StopContainer as Step>::Output;

    async fn execute(&self, ctx: &StepContext) -> Result<Self::Output, StepError> {
        self.stop.execute(ctx).await
    }

    async fn compensate(
        &self,
        ctx: &StepContext,
        executed: Executed<Self::Output>,
    ) -> Result<(), StepError> {
        self.stop.compensate(ctx, executed).await?;
        self.healthy.execute(ctx).await.map(|_| ())
    }
}

/// What the first run set up in the emulator, recorded in `DIR/deploy-setup.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Setup {
    /// The target group's ARN.
    pub(crate) target_group_arn: String,
    /// Each slot's instance and host port.
    pub(crate) slots: Vec<Slot>,
}

/// A place for one replica: an emulator instance and a port on 127.0.0.1.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Slot {
    /// `blue-1` ...
    pub(crate) name: String,
    /// The emulator instance.
    pub(crate) instance: String,
    /// The host port.
    pub(crate) port: u16,
}

/// The recorded setup, made (idempotently) if missing or if the emulator forgot it.
pub(crate) async fn set_up(clients: &Clients, args: &Args) -> Result<Setup, BoxError> {
    let record = Recorded::new(&args.data, "deploy-setup");
    if let Some(setup) = record.load::<Setup>() {
        let mut present = emulator::targets(clients, &setup.target_group_arn).await?.is_some();
        for slot in &setup.slots {
            present &= emulator::instance_exists(clients, &slot.instance).await;
        }
        if present {
            return Ok(setup);
        }
    }
    let target_group_arn = emulator::target_group(clients, &format!("{}-web", args.app)).await?;
    let mut slots = Vec::new();
    for name in SLOTS.iter().flatten() {
        let instance = emulator::instance(clients, &args.app, name, InstanceType::T3Micro).await?;
        // A free port now; Docker binds it when the slot's container starts.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        slots.push(Slot { name: (*name).to_owned(), instance, port });
    }
    let setup = Setup { target_group_arn, slots };
    record.save(&setup)?;
    say(&format!("set up {} (recorded in {})", describe(&setup), record.path().display()));
    Ok(setup)
}

fn describe(setup: &Setup) -> String {
    let slots: Vec<String> = setup
        .slots
        .iter()
        .map(|s| format!("{} = {} at 127.0.0.1:{}", s.name, s.instance, s.port))
        .collect();
    format!("target group {}, slots {}", setup.target_group_arn, slots.join(", "))
}

/// The next deploy: what serves now (bringing release 1 up on blue if nothing does), and the
/// other slot for the new release. Removes the stopped containers of earlier releases first.
pub(crate) async fn plan(
    clients: &Clients,
    setup: &Setup,
    args: &Args,
    drain_ms: u64,
) -> Result<Deploy, BoxError> {
    let docker = &clients.docker;
    for old in containers::list(docker, &args.app).await?.into_iter().filter(|c| !c.running) {
        containers::remove(docker, &old.name).await?;
    }
    let registered: Vec<String> = emulator::targets(clients, &setup.target_group_arn)
        .await?
        .unwrap_or_default()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let slot = |name: &str| setup.slots.iter().find(|s| s.name == name);
    let live = SLOTS.iter().position(|pair| {
        pair.iter().any(|n| slot(n).is_some_and(|s| registered.contains(&s.instance)))
    });
    let live = match live {
        Some(live) => live,
        None => {
            bootstrap(clients, setup, args).await?;
            0
        }
    };
    let running = containers::list(docker, &args.app).await?;
    let release = running
        .iter()
        .filter_map(|c| c.labels.get(RELEASE_LABEL)?.parse::<u32>().ok())
        .max()
        .unwrap_or(1)
        + 1;
    let mut old = Vec::new();
    for name in SLOTS[live] {
        let s = slot(name).ok_or_else(|| format!("the setup has no slot {name}"))?;
        let container = running
            .iter()
            .find(|c| c.running && c.labels.get(SLOT_LABEL).map(String::as_str) == Some(name))
            .ok_or_else(|| {
                format!("slot {name} serves but runs no container; --cleanup starts over")
            })?;
        old.push(Replica {
            slot: name.to_owned(),
            container: container.name.clone(),
            instance: s.instance.clone(),
            port: s.port,
        });
    }
    let mut new = Vec::new();
    for name in SLOTS[1 - live] {
        let s = slot(name).ok_or_else(|| format!("the setup has no slot {name}"))?;
        let container = format!("{}-r{release}-{name}", args.app);
        new.push(Replica {
            slot: name.to_owned(),
            container,
            instance: s.instance.clone(),
            port: s.port,
        });
    }
    Ok(Deploy {
        app: args.app.clone(),
        release,
        image: args.image.clone(),
        target_group_arn: setup.target_group_arn.clone(),
        old,
        new,
        drain_ms,
        faults: FaultFlags { fail_at: args.fail_at.clone(), crash_at: args.crash_at.clone() },
    })
}

/// Release 1 on the blue slot, serving and registered: the state a deploy starts from.
pub(crate) async fn bootstrap(
    clients: &Clients,
    setup: &Setup,
    args: &Args,
) -> Result<(), BoxError> {
    let reference =
        containers::ensure_image(&clients.docker, &args.registries, &args.image).await?;
    for name in SLOTS[0] {
        let slot = setup
            .slots
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| format!("the setup has no slot {name}"))?;
        let container = format!("{}-r1-{name}", args.app);
        let mut spec = containers::spec(&args.app, &container, &reference, slot.port, &[], &[]);
        let labels = spec.config.labels.get_or_insert_with(Default::default);
        labels.insert(SLOT_LABEL.into(), name.to_owned());
        labels.insert(RELEASE_LABEL.into(), "1".into());
        containers::ensure_running(&clients.docker, &spec).await?;
        containers::wait_answering(slot.port, "/", Duration::from_secs(30)).await?;
        clients
            .elb
            .register_targets()
            .target_group_arn(&setup.target_group_arn)
            .targets(TargetDescription::builder().id(&slot.instance).build())
            .send()
            .await?;
    }
    say("release 1 serves on slot blue");
    Ok(())
}

/// Removes the app's containers and deregisters its targets, so that the next run starts over.
async fn cleanup(args: &Args) -> Result<bool, BoxError> {
    let docker = Docker::connect_with_local_defaults()?.negotiate_version().await?;
    for name in containers::remove_all(&docker, &args.app).await? {
        say(&format!("removed container {name}"));
    }
    if let (Some(setup), false) =
        (Recorded::new(&args.data, "deploy-setup").load::<Setup>(), args.aws_endpoint.is_empty())
    {
        let clients = Clients::connect(&args.aws_endpoint).await?;
        let registered = emulator::targets(&clients, &setup.target_group_arn).await?;
        let targets: Vec<TargetDescription> = registered
            .unwrap_or_default()
            .into_iter()
            .map(|(id, _)| TargetDescription::builder().id(id).build())
            .collect();
        if !targets.is_empty() {
            clients
                .elb
                .deregister_targets()
                .target_group_arn(&setup.target_group_arn)
                .set_targets(Some(targets))
                .send()
                .await?;
            say("deregistered the app's targets");
        }
    }
    Ok(true)
}

fn main() -> ExitCode {
    Runner::exit_code("zero_downtime_deploy", run())
}

fn run() -> Result<bool, BoxError> {
    let cli = Cli::new(
        "zero_downtime_deploy",
        "deploys the next release of a two-replica web app behind a load balancer, with no \
         moment without a serving target",
        &STEPS,
    )
    .flag(
        "--drain-ms",
        "MS",
        "how long deregistered targets drain before they stop (default 2000)",
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
    let drain_ms = args.number("--drain-ms", 2000)?;
    let clients = Clients::connect(&args.aws_endpoint).await?;
    let saga = define(saga_core::Saga::builder(SAGA, 1), &clients, &args.registries).build()?;
    let runner = Runner::open(&args.data, "zero_downtime_deploy", "examples", saga)?;
    // A rerun after --crash-at (or a kill) finishes what was interrupted, and only that.
    let (resumed, unrecoverable) = runner.resume().await?;
    if !resumed.is_empty() || unrecoverable {
        runner.shutdown().await;
        return Ok(!unrecoverable
            && resumed.iter().all(|(_, o)| o.status() == saga_core::Status::Succeeded));
    }
    let setup = set_up(&clients, &args).await?;
    let deploy = plan(&clients, &setup, &args, drain_ms).await?;
    let show = |rs: &[Replica]| {
        rs.iter()
            .map(|r| format!("{} ({} at 127.0.0.1:{})", r.container, r.instance, r.port))
            .collect::<Vec<_>>()
            .join(", ")
    };
    say(&format!(
        "deploying release {}: {} replace {}",
        deploy.release,
        show(&deploy.new),
        show(&deploy.old)
    ));
    let resource = Resource::new("app", &args.app);
    let (_, outcome) = runner.run(SAGA, &deploy, resource, args.cancel_after).await?;
    runner.shutdown().await;
    Ok(outcome.status() == saga_core::Status::Succeeded)
}
