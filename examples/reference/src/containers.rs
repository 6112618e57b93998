//! The examples' containers: specs with the app's label, listing, waiting and cleanup.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerSummaryStateEnum, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use saga_steps_docker::ContainerSpec;
use tokio::time::Instant;

use crate::http::http_get_local;
use crate::BoxError;

/// The label that names the app a container belongs to: `--cleanup` removes by it.
pub const APP_LABEL: &str = "io.saga.example.app";

/// The port the test image serves HTTP on inside the container.
pub const HTTP_PORT: u16 = 8080;

/// A container of app `app` named `name` running `image` (a full reference), under
/// `docker-init` (so that it stops promptly on SIGTERM), serving HTTP on
/// [`HTTP_PORT`], published on `127.0.0.1:host_port` (0: a port Docker picks), with `binds`
/// (`HOST_DIR:CONTAINER_DIR`) and `cmd` (empty: the image's).
pub fn spec(
    app: &str,
    name: &str,
    image: &str,
    host_port: u16,
    binds: &[String],
    cmd: &[&str],
) -> ContainerSpec {
    let mut spec = ContainerSpec::new(name, image);
    let published = if host_port == 0 { String::new() } else { host_port.to_string() };
    spec.config.labels = Some(HashMap::from([(APP_LABEL.to_owned(), app.to_owned())]));
    if !cmd.is_empty() {
        spec.config.cmd = Some(cmd.iter().map(|s| s.to_string()).collect());
    }
    spec.config.host_config = Some(HostConfig {
        port_bindings: Some(HashMap::from([(
            format!("{HTTP_PORT}/tcp"),
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some(published),
            }]),
        )])),
        binds: (!binds.is_empty()).then(|| binds.to_vec()),
        init: Some(true),
        ..Default::default()
    });
    spec
}

/// One of an app's containers, as `docker ps -a` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppContainer {
    /// Its name.
    pub name: String,
    /// Whether it runs.
    pub running: bool,
    /// The host port (on 127.0.0.1) of [`HTTP_PORT`], while it runs.
    pub port: Option<u16>,
    /// Its labels.
    pub labels: HashMap<String, String>,
}

/// The app's containers, by name.
pub async fn list(docker: &Docker, app: &str) -> Result<Vec<AppContainer>, BoxError> {
    let label = format!("{APP_LABEL}={app}");
    let filters = HashMap::from([("label", vec![label.as_str()])]);
    let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    let mut found: Vec<AppContainer> = docker
        .list_containers(Some(options))
        .await?
        .into_iter()
        .map(|c| AppContainer {
            name: c
                .names
                .unwrap_or_default()
                .first()
                .map(|n| n.trim_start_matches('/').to_owned())
                .unwrap_or_default(),
            running: c.state == Some(ContainerSummaryStateEnum::RUNNING),
            port: c
                .ports
                .unwrap_or_default()
                .iter()
                .find(|p| p.private_port == HTTP_PORT)
                .and_then(|p| p.public_port),
            labels: c.labels.unwrap_or_default(),
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// Removes the container (forcibly); one already gone is fine.
pub async fn remove(docker: &Docker, name: &str) -> Result<(), BoxError> {
    let options = RemoveContainerOptionsBuilder::default().force(true).build();
    match docker.remove_container(name, Some(options)).await {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
        Err(e) => Err(format!("remove container {name}: {e}").into()),
    }
}

/// Removes every container of the app; returns their names.
pub async fn remove_all(docker: &Docker, app: &str) -> Result<Vec<String>, BoxError> {
    let mut removed = Vec::new();
    for container in list(docker, app).await? {
        remove(docker, &container.name).await?;
        removed.push(container.name);
    }
    Ok(removed)
}

/// Creates the container of `spec` if there is none of its name, and starts it.
pub async fn ensure_running(docker: &Docker, spec: &ContainerSpec) -> Result<(), BoxError> {
    if docker.inspect_container(&spec.name, None).await.is_err() {
        let options = CreateContainerOptionsBuilder::default().name(&spec.name).build();
        docker
            .create_container(Some(options), spec.config.clone())
            .await
            .map_err(|e| format!("create container {}: {e}", spec.name))?;
    }
    docker
        .start_container(&spec.name, None)
        .await
        .map_err(|e| format!("start container {}: {e}", spec.name))?;
    Ok(())
}

/// The host port on 127.0.0.1 that Docker publishes the running container's [`HTTP_PORT`] on.
pub async fn published_port(docker: &Docker, name: &str) -> Result<u16, BoxError> {
    let container = docker.inspect_container(name, None).await?;
    container
        .network_settings
        .and_then(|n| n.ports)
        .and_then(|ports| ports.get(&format!("{HTTP_PORT}/tcp")).cloned().flatten())
        .and_then(|bindings| bindings.iter().find_map(|b| b.host_port.as_deref()?.parse().ok()))
        .ok_or_else(|| format!("container {name} publishes no port for {HTTP_PORT}/tcp").into())
}

/// Waits until `GET path` on `127.0.0.1:port` answers 2xx, for at most `timeout`.
pub async fn wait_answering(port: u16, path: &str, timeout: Duration) -> Result<(), BoxError> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match http_get_local(port, path, Duration::from_secs(1)).await {
            Ok(code) if (200..300).contains(&code) => return Ok(()),
            Ok(code) => format!("HTTP {code}"),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!("127.0.0.1:{port}{path} does not answer: {last}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Makes sure `REGISTRY/image` of one of `registries` is on the engine, pulling it from the first
/// that serves it. Returns the reference.
pub async fn ensure_image(
    docker: &Docker,
    registries: &[String],
    image: &str,
) -> Result<String, BoxError> {
    use futures_util::StreamExt as _;
    let mut errors = Vec::new();
    for registry in registries {
        let reference = format!("{registry}/{image}");
        if docker.inspect_image(&reference).await.is_ok() {
            return Ok(reference);
        }
        let options = CreateImageOptionsBuilder::default().from_image(&reference).build();
        let mut pull = docker.create_image(Some(options), None, None);
        let mut failed = None;
        while let Some(progress) = pull.next().await {
            if let Err(e) = progress {
                failed = Some(e.to_string());
                break;
            }
        }
        match failed {
            None => return Ok(reference),
            Some(e) => errors.push(format!("{registry}: {e}")),
        }
    }
    Err(format!("no registry serves {image}: {}", errors.join("; ")).into())
}
