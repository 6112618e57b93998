//! What the Docker tests share: the environment (Docker Engine, two local registries, the test
//! image), a cleanup guard, saga helpers and fault-injecting wrapper steps.
#![allow(unreachable_pub)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bollard::models::{HealthConfig, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateImageOptionsBuilder, ListContainersOptionsBuilder, ListImagesOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use saga_core::state::{Execution, OperationState};
use saga_core::{
    async_trait, Executed, Executor, MemoryStore, OperationId, Outcome, Resource, Saga, Start,
    Step, StepContext, StepError,
};
use saga_steps_docker::{ContainerSpec, PULL_MARKER_REPOSITORY};
use saga_testkit::{FaultPlan, Faults, Faulty, When};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, MutexGuard};

/// Where the tests run: the engine and the registries that `scripts/services/registry.sh` started.
#[derive(Clone)]
pub struct Env {
    pub docker: Docker,
    /// `127.0.0.1:PORT` of the first registry.
    pub registry_a: String,
    /// `127.0.0.1:PORT` of the second registry.
    pub registry_b: String,
    /// The test image's path and tag inside both registries.
    pub image: String,
}

impl Env {
    /// The test image's reference in `registry`.
    pub fn reference(&self, registry: &str) -> String {
        format!("{registry}/{}", self.image)
    }
}

/// The tests share the test image on one engine, so they run one at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// A missing Docker Engine or registry: fails the test under CI, else says why it skips (the
/// workspace's one rule, [`saga_testkit::ci`]).
fn unavailable(test: &str, why: &str) -> Option<(Env, MutexGuard<'static, ()>)> {
    saga_testkit::ci::unavailable(
        test,
        &format!(
            "{why}; start the services with `scripts/services/registry.sh start` (or run \
             scripts/test.sh)"
        ),
    )
}

/// The variables of registry.env: from the environment, else from the file the script wrote.
fn settings() -> Result<(String, String, String), String> {
    let names = ["SAGA_TEST_REGISTRY_A", "SAGA_TEST_REGISTRY_B", "SAGA_TEST_IMAGE"];
    let mut values: HashMap<String, String> =
        names.iter().filter_map(|n| Some((n.to_string(), std::env::var(n).ok()?))).collect();
    if values.len() < names.len() {
        let dir = std::env::var("SAGA_SERVICES_DIR")
            .unwrap_or_else(|_| format!("{}/../target/services", env!("CARGO_MANIFEST_DIR")));
        let file = format!("{dir}/registry.env");
        if let Ok(text) = std::fs::read_to_string(&file) {
            for line in text.lines() {
                if let Some((k, v)) = line.split_once('=') {
                    values.entry(k.trim().to_owned()).or_insert_with(|| v.trim().to_owned());
                }
            }
        }
    }
    let get = |n: &str| {
        values
            .get(n)
            .cloned()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("{n} is not set and no registry.env names it"))
    };
    Ok((get(names[0])?, get(names[1])?, get(names[2])?))
}

/// Connects to the local engine, negotiating the API version (the engine may be older than
/// bollard's default).
pub async fn connect() -> Result<Docker, String> {
    let docker = Docker::connect_with_local_defaults()
        .map_err(|e| format!("cannot connect to the Docker Engine: {e}"))?;
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|e| format!("the Docker Engine does not answer: {e}"))?;
    docker.ping().await.map_err(|e| format!("the Docker Engine does not answer ping: {e}"))?;
    Ok(docker)
}

async fn reachable(address: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(address)).await,
        Ok(Ok(_))
    )
}

/// The environment, holding the lock that runs the tests one at a time; `None` (after saying
/// why) when a service is missing outside CI. Under CI a missing service panics.
pub async fn env(test: &str) -> Option<(Env, MutexGuard<'static, ()>)> {
    let serial = SERIAL.lock().await;
    let (registry_a, registry_b, image) = match settings() {
        Ok(s) => s,
        Err(why) => return unavailable(test, &why),
    };
    let docker = match connect().await {
        Ok(d) => d,
        Err(why) => return unavailable(test, &why),
    };
    for registry in [&registry_a, &registry_b] {
        if !reachable(registry).await {
            return unavailable(test, &format!("the registry at {registry} does not answer"));
        }
    }
    Some((Env { docker, registry_a, registry_b, image }, serial))
}

/// Gets the environment or ends the test (having said why).
#[macro_export]
macro_rules! require_env {
    ($test:expr) => {
        match support::env($test).await {
            Some(found) => found,
            None => return,
        }
    };
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Removes, when dropped (on failure too), every container whose name starts with its prefix,
/// every test image reference on the engine and the pull markers of the Operations it tracked.
pub struct Cleanup {
    pub prefix: String,
    references: Vec<String>,
    operations: std::sync::Mutex<Vec<OperationId>>,
}

impl Cleanup {
    pub fn new(env: &Env, test: &str) -> Self {
        let prefix = format!(
            "saga-test-{}-{}-{test}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let cleanup = Cleanup {
            prefix,
            references: vec![env.reference(&env.registry_a), env.reference(&env.registry_b)],
            operations: std::sync::Mutex::new(Vec::new()),
        };
        // Start from an engine without the test image, whatever an earlier run left.
        cleanup.clean_now();
        cleanup
    }

    /// A container name under this test's prefix.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    pub fn track(&self, id: OperationId) {
        self.operations.lock().unwrap_or_else(|p| p.into_inner()).push(id);
    }

    fn marker_prefixes(&self) -> Vec<String> {
        self.operations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|id| format!("{PULL_MARKER_REPOSITORY}:{id}-"))
            .collect()
    }

    /// What is left: containers under the prefix, test image references and this test's markers.
    pub async fn leftovers(&self, docker: &Docker) -> Vec<String> {
        let mut left = Vec::new();
        for name in containers_with_prefix(docker, &self.prefix).await {
            left.push(format!("container {name}"));
        }
        let markers = self.marker_prefixes();
        for image in list_images(docker).await {
            for tag in image.repo_tags {
                if self.references.contains(&tag) || markers.iter().any(|m| tag.starts_with(m)) {
                    left.push(format!("image {tag} ({})", image.id));
                }
            }
        }
        left
    }

    /// Removes everything this test may have left, in a thread of its own (usable from `Drop`).
    pub fn clean_now(&self) {
        let prefix = self.prefix.clone();
        let references = self.references.clone();
        let markers = self.marker_prefixes();
        let done = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let Ok(runtime) = runtime else { return };
            runtime.block_on(async {
                let Ok(docker) = connect().await else { return };
                for name in containers_with_prefix(&docker, &prefix).await {
                    let options = RemoveContainerOptionsBuilder::default().force(true).build();
                    if let Err(e) = docker.remove_container(&name, Some(options)).await {
                        eprintln!("cleanup: cannot remove container {name}: {e}");
                    }
                }
                for image in list_images(&docker).await {
                    let ours = image.repo_tags.iter().any(|t| {
                        references.contains(t) || markers.iter().any(|m| t.starts_with(m))
                    });
                    if ours {
                        let options = RemoveImageOptionsBuilder::default().force(true).build();
                        if let Err(e) = docker.remove_image(&image.id, Some(options), None).await {
                            eprintln!("cleanup: cannot remove image {}: {e}", image.id);
                        }
                    }
                }
            });
        });
        let _ = done.join();
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.clean_now();
    }
}

async fn containers_with_prefix(docker: &Docker, prefix: &str) -> Vec<String> {
    let filters = HashMap::from([("name", vec![prefix])]);
    let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    let containers = match docker.list_containers(Some(options)).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot list containers: {e}");
            return Vec::new();
        }
    };
    containers
        .into_iter()
        .flat_map(|c| c.names.unwrap_or_default())
        .map(|n| n.trim_start_matches('/').to_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

async fn list_images(docker: &Docker) -> Vec<bollard::models::ImageSummary> {
    match docker.list_images(Some(ListImagesOptionsBuilder::default().build())).await {
        Ok(images) => images,
        Err(e) => {
            eprintln!("cannot list images: {e}");
            Vec::new()
        }
    }
}

/// Whether the engine has an image under `reference`.
pub async fn image_present(docker: &Docker, reference: &str) -> bool {
    docker.inspect_image(reference).await.is_ok()
}

/// Pulls `reference` directly (fixtures that the sagas under test did not create).
pub async fn pull(docker: &Docker, reference: &str) {
    let options = CreateImageOptionsBuilder::default().from_image(reference).build();
    let mut stream = docker.create_image(Some(options), None, None);
    while let Some(progress) = stream.next().await {
        if let Err(e) = progress {
            panic!("pull {reference}: {e}");
        }
    }
}

/// The spec of a test container: the test image from `reference`, port 8080 published on a
/// random 127.0.0.1 port, docker-init as PID 1 so that a stop is quick.
pub fn spec(name: &str, reference: &str) -> ContainerSpec {
    let mut spec = ContainerSpec::new(name, reference);
    spec.config.host_config = Some(HostConfig {
        port_bindings: Some(HashMap::from([(
            "8080/tcp".to_owned(),
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some(String::new()),
            }]),
        )])),
        init: Some(true),
        ..Default::default()
    });
    spec
}

/// The same with a health check that never passes.
pub fn never_healthy(name: &str, reference: &str) -> ContainerSpec {
    let mut spec = spec(name, reference);
    spec.config.healthcheck = Some(HealthConfig {
        test: Some(vec!["CMD".into(), "/bin/busybox".into(), "false".into()]),
        interval: Some(500_000_000),
        timeout: Some(1_000_000_000),
        retries: Some(1),
        start_period: Some(0),
        start_interval: None,
    });
    spec
}

/// Creates (and optionally starts) a fixture container directly, not through a step.
pub async fn fixture_container(docker: &Docker, spec: ContainerSpec, start: bool) -> String {
    let options = bollard::query_parameters::CreateContainerOptionsBuilder::default()
        .name(&spec.name)
        .build();
    let created = docker
        .create_container(Some(options), spec.config)
        .await
        .unwrap_or_else(|e| panic!("create fixture {}: {e}", spec.name));
    if start {
        docker
            .start_container(&created.id, None)
            .await
            .unwrap_or_else(|e| panic!("start fixture {}: {e}", spec.name));
    }
    created.id
}

/// Whether the container runs; `None` if it does not exist.
pub async fn running(docker: &Docker, name: &str) -> Option<bool> {
    let container = docker.inspect_container(name, None).await.ok()?;
    Some(container.state.and_then(|s| s.running).unwrap_or(false))
}

/// Runs one Operation of `saga` on a fresh executor over a `MemoryStore`, to its outcome.
pub async fn run(cleanup: &Cleanup, saga: Saga) -> (Outcome, OperationState) {
    let (executor, id) = start(cleanup, saga).await;
    let outcome = tokio::time::timeout(Duration::from_secs(180), executor.wait(id))
        .await
        .expect("the Operation did not finish within 180 s")
        .expect("wait");
    let state = executor.status(id).await.expect("status");
    (outcome, state)
}

/// Starts one Operation of `saga`; returns the executor and its id.
pub async fn start(cleanup: &Cleanup, saga: Saga) -> (Executor, OperationId) {
    let name = saga.name().to_owned();
    let executor =
        Executor::builder(Arc::new(MemoryStore::new())).saga(saga).build().expect("executor");
    let id = executor
        .start(
            Start::new(&name, Resource::new("app", cleanup.prefix.clone()))
                .params(&())
                .environment("test")
                .actor("tests"),
        )
        .await
        .expect("start");
    cleanup.track(id);
    (executor, id)
}

/// The recorded output of `step`.
pub fn output<T: DeserializeOwned>(state: &OperationState, step: &str) -> T {
    let s = state.step(step).unwrap_or_else(|| panic!("no step {step}"));
    match &s.execution {
        Execution::Succeeded { .. } => state.output(step).expect("output decodes"),
        other => panic!("step {step} did not succeed: {other:?}"),
    }
}

/// The last error of `step`, which must have failed.
pub fn failure(state: &OperationState, step: &str) -> String {
    let s = state.step(step).unwrap_or_else(|| panic!("no step {step}"));
    match &s.execution {
        Execution::Failed { error } => error.clone(),
        other => panic!("step {step} did not fail: {other:?}"),
    }
}

/// A step that fails permanently.
pub struct Fail;

#[async_trait]
impl Step for Fail {
    type Output = ();
    async fn execute(&self, _: &StepContext) -> Result<(), StepError> {
        Err(StepError::permanent("injected failure"))
    }
}

/// `step`, which the saga names `name`, failing permanently after its effect: a failure after
/// the effect, which the compensation (told `Executed::Failed`) must clean up. saga-testkit's
/// [`Faulty`], so that every setting of the step (kind, retry policies, timeouts, cancel grace)
/// is the step's own.
pub fn fail_after<S: Step>(name: &str, step: S) -> Faulty<S> {
    Faulty::new(name, step, &Faults::new(FaultPlan::new().fail(name, When::After)))
}

/// Runs the inner step, and on the first attempt reports a transient error anyway: the second
/// attempt must find the first one's effect and succeed. (saga-testkit's `Faulty` injects
/// transient errors before the step runs, not after its effect.) Every setting is the inner
/// step's: its retry policy must allow a second attempt, as the defaults do.
pub struct RetryAfterEffect<S>(pub S);

#[async_trait]
impl<S: Step> Step for RetryAfterEffect<S> {
    type Output = S::Output;
    async fn execute(&self, ctx: &StepContext) -> Result<S::Output, StepError> {
        let output = self.0.execute(ctx).await?;
        if ctx.attempt() == 1 {
            return Err(StepError::transient("injected transient failure after the effect"));
        }
        Ok(output)
    }
    async fn compensate(
        &self,
        ctx: &StepContext,
        executed: Executed<S::Output>,
    ) -> Result<(), StepError> {
        self.0.compensate(ctx, executed).await
    }
    saga_core::forward_step_settings!(0);
}

/// A port on 127.0.0.1 that nothing listens on ("registry down").
pub async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    drop(listener);
    address
}

/// A server on 127.0.0.1 that answers every request with 500; counts the connections. It stops
/// when the returned handle is dropped.
pub struct Answers500 {
    pub address: String,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Answers500 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn answers_500() -> Answers500 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    let task = tokio::spawn(async move {
        // Bounded: a test makes a handful of connections.
        for _ in 0..1000 {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_secs(2), socket.read(&mut buf)).await;
                let body = "registry broken";
                let answer = format!(
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    Answers500 { address, connections, task }
}
