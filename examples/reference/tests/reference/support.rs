//! What the reference tests share: the services, the examples' binaries, cleanup, the probe, the
//! crash subset and the worlds the checks reset and snapshot.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aws_sdk_elasticloadbalancingv2::types::TargetDescription;
use saga_core::async_trait;
use saga_reference::database::{Layout, DATA_FILE};
use saga_reference::{containers, emulator, http_get_local, Args, Clients};
use saga_testkit::{FaultPlan, SagaCheck, World};

use crate::redeploy_database::Redeploy;
use crate::resize_volume::Resize;
use crate::zero_downtime_deploy::{Deploy, Setup};

/// The tests share the services: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Where the services are.
#[derive(Clone, Debug)]
pub(crate) struct Services {
    pub(crate) endpoint: String,
    pub(crate) registries: Vec<String>,
    pub(crate) image: String,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The services and the serial lock, or `None` after saying why (a failure under CI).
pub(crate) fn services(test: &str) -> Option<(Services, MutexGuard<'static, ()>)> {
    let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let found = (|| {
        let endpoint = var("SAGA_TEST_AWS_ENDPOINT").ok_or("SAGA_TEST_AWS_ENDPOINT is not set")?;
        let a = var("SAGA_TEST_REGISTRY_A").ok_or("SAGA_TEST_REGISTRY_A is not set")?;
        let b = var("SAGA_TEST_REGISTRY_B").ok_or("SAGA_TEST_REGISTRY_B is not set")?;
        let image = var("SAGA_TEST_IMAGE").unwrap_or_else(|| "saga-test/httpd:1".into());
        let authority = endpoint.trim_start_matches("http://").trim_end_matches('/').to_owned();
        for address in [&authority, &a, &b] {
            let socket = address.parse().map_err(|_| format!("{address} is not HOST:PORT"))?;
            std::net::TcpStream::connect_timeout(&socket, Duration::from_secs(2))
                .map_err(|e| format!("{address} does not answer: {e}"))?;
        }
        runtime()
            .block_on(async {
                let docker = bollard::Docker::connect_with_local_defaults()?;
                docker.negotiate_version().await?.ping().await
            })
            .map_err(|e| format!("the Docker Engine does not answer: {e}"))?;
        Ok::<_, String>(Services { endpoint, registries: vec![a, b], image })
    })();
    match found {
        Ok(services) => Some((services, serial)),
        // Under CI (the workspace's one rule) a missing service fails the test.
        Err(why) => saga_testkit::ci::unavailable(
            test,
            &format!(
                "{why}; start scripts/services/registry.sh and moto.sh and export the variables \
                 of target/services/*.env"
            ),
        ),
    }
}

/// A runtime for a test.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A unique app name and data directory; removes the app's containers when dropped, on failure
/// too.
pub(crate) struct Guard {
    pub(crate) app: String,
    pub(crate) data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Guard {
    pub(crate) fn new(_services: &Services, test: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let app = format!("{test}-{}", std::process::id() % 100_000);
        Guard { app, data: dir.path().join("data"), _dir: dir }
    }

    /// The flags a user would pass.
    pub(crate) fn args(&self, services: &Services) -> Args {
        let cli = saga_reference::Cli::new("test", "test", &[]);
        let mut args =
            cli.parse(["--aws-endpoint".to_owned(), services.endpoint.clone()]).unwrap().unwrap();
        args.data = self.data.clone();
        args.app = self.app.clone();
        args.registries = services.registries.clone();
        args.image = services.image.clone();
        args
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let app = self.app.clone();
        let _ = std::thread::spawn(move || {
            runtime().block_on(async {
                let docker = bollard::Docker::connect_with_local_defaults()?;
                containers::remove_all(&docker.negotiate_version().await?, &app).await
            })
        })
        .join();
    }
}

/// What an example's process did.
#[derive(Debug)]
pub(crate) struct Out {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Out {
    pub(crate) fn all(&self) -> String {
        format!("{}\nstdout:\n{}\nstderr:\n{}", self.status, self.stdout, self.stderr)
    }
}

/// Runs example `name` (built by `cargo test` next to this test) with the guard's data and app.
pub(crate) fn example(name: &str, guard: &Guard, services: &Services, extra: &[&str]) -> Out {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().and_then(Path::parent).unwrap();
    let mut command = Command::new(debug.join("examples").join(name));
    command
        .arg("--data")
        .arg(&guard.data)
        .args(["--app", &guard.app, "--aws-endpoint", &services.endpoint, "--image"])
        .arg(&services.image);
    for registry in &services.registries {
        command.args(["--registry", registry]);
    }
    let output = command.args(extra).env("USER", "tester").output().unwrap();
    Out {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// What the probe saw.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub(crate) answered: u64,
    pub(crate) failed: Vec<String>,
}

/// Loops: the target group's registered targets, then a GET to each one's container, always at
/// `127.0.0.1:<port>` (the port paired with the instance in the setup).
pub(crate) struct Probe {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Seen>,
}

impl Probe {
    pub(crate) fn start(
        runtime: &tokio::runtime::Runtime,
        clients: Clients,
        setup: &Setup,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let setup = setup.clone();
        let stopping = stop.clone();
        let task = runtime.spawn(async move {
            let mut seen = Seen::default();
            let started = Instant::now();
            while !stopping.load(Ordering::Relaxed) {
                let targets = match emulator::targets(&clients, &setup.target_group_arn).await {
                    Ok(targets) => targets.unwrap_or_default(),
                    Err(e) => {
                        seen.failed.push(format!("describe target health: {e}"));
                        Vec::new()
                    }
                };
                let healthy: Vec<_> = targets.iter().filter(|(_, s)| s == "healthy").collect();
                if healthy.is_empty() {
                    seen.failed
                        .push(format!("{:?}: no healthy target ({targets:?})", started.elapsed()));
                }
                for (id, _) in healthy {
                    let Some(slot) = setup.slots.iter().find(|s| &s.instance == id) else {
                        seen.failed.push(format!("target {id} is no slot's instance"));
                        continue;
                    };
                    match http_get_local(slot.port, "/", Duration::from_secs(1)).await {
                        Ok(200) => seen.answered += 1,
                        other => seen.failed.push(format!(
                            "{:?}: {id} ({}): {other:?}",
                            started.elapsed(),
                            slot.name
                        )),
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        });
        Probe { stop, task }
    }

    pub(crate) fn stop(self, runtime: &tokio::runtime::Runtime) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        runtime.block_on(self.task).unwrap()
    }
}

/// Crashes after every `stride`-th record position of a run of `base` (from the first), recovers,
/// and checks the outcome and world against the uninterrupted run. Returns how many crashed.
pub(crate) async fn crash_subset<W: World>(
    check: &SagaCheck<W>,
    base: FaultPlan,
    stride: usize,
) -> usize {
    let reference = check.run(&base).await.unwrap();
    let mut crashed = 0;
    for r in (1..reference.records.len()).step_by(stride) {
        let run = check.run(&base.clone().crash_after(r as u64)).await.unwrap();
        assert_eq!(run.outcome, reference.outcome, "crash after record {r}");
        assert_eq!(run.after, reference.after, "crash after record {r}: the world differs");
        crashed += usize::from(run.recovered);
    }
    crashed
}

/// Runs `f` on a thread of its own with a runtime of its own, with clients of its own: a world
/// factory is synchronous and is called inside the test's runtime.
fn on_thread<F, Fut>(endpoint: &str, f: F)
where
    F: FnOnce(Clients) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), saga_reference::BoxError>>,
{
    let endpoint = endpoint.to_owned();
    std::thread::spawn(move || {
        runtime().block_on(async move { f(Clients::connect(&endpoint).await?).await })
    })
    .join()
    .unwrap()
    .unwrap_or_else(|e| panic!("resetting the world: {e}"));
}

async fn start_container(clients: &Clients, name: &str) -> Result<(), saga_reference::BoxError> {
    match clients.docker.start_container(name, None).await {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn app_containers(clients: &Clients, app: &str) -> Vec<(String, bool)> {
    let list = containers::list(&clients.docker, app).await.unwrap();
    list.into_iter().map(|c| (c.name, c.running)).collect()
}

/// The deploy's world: the app's containers and the registered targets.
#[derive(Clone)]
pub(crate) struct DeployWorld {
    services: Services,
    clients: Clients,
    deploy: Deploy,
}

impl DeployWorld {
    pub(crate) fn new(services: &Services, deploy: Deploy) -> Self {
        let clients = Clients {
            docker: bollard::Docker::connect_with_local_defaults().unwrap(),
            ..futures_clients(services)
        };
        DeployWorld { services: services.clone(), clients, deploy }
    }

    /// Back to the old release serving alone, keeping it reachable throughout.
    pub(crate) fn reset(&self) -> Self {
        let deploy = self.deploy.clone();
        on_thread(&self.services.endpoint, move |c| async move {
            for r in &deploy.old {
                start_container(&c, &r.container).await?;
                containers::wait_answering(r.port, "/", Duration::from_secs(30)).await?;
            }
            let old: Vec<&str> = deploy.old.iter().map(|r| r.instance.as_str()).collect();
            let mut register = c.elb.register_targets().target_group_arn(&deploy.target_group_arn);
            for id in &old {
                register = register.targets(TargetDescription::builder().id(*id).build());
            }
            register.send().await?;
            let others: Vec<TargetDescription> = emulator::targets(&c, &deploy.target_group_arn)
                .await?
                .unwrap_or_default()
                .into_iter()
                .filter(|(id, _)| !old.contains(&id.as_str()))
                .map(|(id, _)| TargetDescription::builder().id(id).build())
                .collect();
            if !others.is_empty() {
                c.elb
                    .deregister_targets()
                    .target_group_arn(&deploy.target_group_arn)
                    .set_targets(Some(others))
                    .send()
                    .await?;
                tokio::time::sleep(Duration::from_millis(deploy.drain_ms)).await;
            }
            for r in &deploy.new {
                containers::remove(&c.docker, &r.container).await?;
            }
            Ok(())
        });
        self.clone()
    }
}

#[async_trait]
impl World for DeployWorld {
    type Snapshot = (Vec<(String, bool)>, Vec<String>);

    async fn snapshot(&self) -> Self::Snapshot {
        let docker = self.clients.docker.clone().negotiate_version().await.unwrap();
        let clients = Clients { docker, ..self.clients.clone() };
        let mut targets: Vec<String> = emulator::targets(&clients, &self.deploy.target_group_arn)
            .await
            .unwrap()
            .unwrap_or_default()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        targets.sort();
        (app_containers(&clients, &self.deploy.app).await, targets)
    }
}

/// Clients whose AWS side is built without a runtime (the SDK builds lazily); the Docker side is
/// replaced by the caller.
fn futures_clients(services: &Services) -> Clients {
    let handle = std::thread::spawn({
        let endpoint = services.endpoint.clone();
        move || runtime().block_on(Clients::connect(&endpoint)).unwrap()
    });
    handle.join().unwrap()
}

/// The database redeploy's world: containers, the volume's attachments and where it is mounted.
#[derive(Clone)]
pub(crate) struct DatabaseWorld {
    services: Services,
    clients: Clients,
    layout: Layout,
    params: Redeploy,
}

impl DatabaseWorld {
    pub(crate) fn new(services: &Services, layout: Layout, params: Redeploy) -> Self {
        DatabaseWorld {
            services: services.clone(),
            clients: futures_clients(services),
            layout,
            params,
        }
    }

    /// Back to the database serving on `from` with its volume.
    pub(crate) fn reset(&self) -> Self {
        let (layout, p) = (self.layout.clone(), self.params.clone());
        on_thread(&self.services.endpoint, move |c| async move {
            containers::remove(&c.docker, &p.new_container).await?;
            layout.unmount(&p.volume, &p.to)?;
            let (_, attachments) = emulator::volume_state(&c, &p.volume).await?;
            for (instance, _) in attachments.iter().filter(|(i, _)| *i != p.from) {
                c.ec2.detach_volume().volume_id(&p.volume).instance_id(instance).send().await?;
            }
            emulator::ensure_attached(&c, &p.volume, &p.from, "/dev/sdf").await?;
            layout.mount(&p.volume, &p.from)?;
            start_container(&c, &p.old_container).await?;
            let port = containers::published_port(&c.docker, &p.old_container).await?;
            containers::wait_answering(port, DATA_FILE, Duration::from_secs(30)).await
        });
        self.clone()
    }
}

#[async_trait]
impl World for DatabaseWorld {
    type Snapshot = (Vec<(String, bool)>, Vec<(String, String)>, bool, bool);

    async fn snapshot(&self) -> Self::Snapshot {
        let docker = bollard::Docker::connect_with_local_defaults().unwrap();
        let clients =
            Clients { docker: docker.negotiate_version().await.unwrap(), ..self.clients.clone() };
        let p = &self.params;
        let (_, attachments) = emulator::volume_state(&clients, &p.volume).await.unwrap();
        (
            app_containers(&clients, &p.app).await,
            attachments,
            self.layout.is_mounted(&p.from),
            self.layout.is_mounted(&p.to),
        )
    }
}

/// The resize's world: the database container and the volume's size, which only the
/// irreversible grow changes: a rollback through the grow is compared without the size, and must
/// still leave the database running.
#[derive(Clone)]
pub(crate) struct ResizeWorld {
    services: Services,
    clients: Clients,
    params: Resize,
}

impl ResizeWorld {
    pub(crate) fn new(services: &Services, params: Resize) -> Self {
        ResizeWorld { services: services.clone(), clients: futures_clients(services), params }
    }

    /// The database running.
    pub(crate) fn reset(&self) -> Self {
        let container = self.params.container.clone();
        on_thread(&self.services.endpoint, move |c| async move {
            start_container(&c, &container).await?;
            let port = containers::published_port(&c.docker, &container).await?;
            containers::wait_answering(port, DATA_FILE, Duration::from_secs(30)).await
        });
        self.clone()
    }
}

#[async_trait]
impl World for ResizeWorld {
    /// Whether the database runs, and the volume's size in GiB (`None` once excluded).
    type Snapshot = (bool, Option<i32>);

    async fn snapshot(&self) -> Self::Snapshot {
        let docker = bollard::Docker::connect_with_local_defaults().unwrap();
        let clients =
            Clients { docker: docker.negotiate_version().await.unwrap(), ..self.clients.clone() };
        let inspect = clients.docker.inspect_container(&self.params.container, None).await.unwrap();
        let running = inspect.state.and_then(|s| s.running).unwrap_or(false);
        let (size, _) = emulator::volume_state(&clients, &self.params.volume).await.unwrap();
        (running, Some(size))
    }

    fn excluding(
        &self,
        snapshot: &Self::Snapshot,
        steps: &BTreeSet<String>,
    ) -> Option<Self::Snapshot> {
        let (running, size) = *snapshot;
        Some((running, if steps.contains("grow") { None } else { size }))
    }
}
