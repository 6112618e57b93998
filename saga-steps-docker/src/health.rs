//! `WaitHealthy`: wait until a container is healthy, by Docker's health status or an HTTP probe.

use std::fmt;
use std::time::Duration;

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum};
use bollard::Docker;
use saga_core::{async_trait, Step, StepContext, StepError, StepKind};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::container::inspect;
use crate::http::http_get_status;
use saga_core::Input;

/// How [`WaitHealthy`] tells that a container is healthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthProbe {
    /// Docker's health status (the `HEALTHCHECK` of the image or the container) is `healthy`.
    Docker,
    /// An HTTP GET answers 2xx or 3xx. It goes to `host` at the host port that Docker publishes
    /// the container's `port`/tcp on (so no container network address is needed).
    Http {
        /// The Docker host's address as this process reaches it. `127.0.0.1` for a local engine.
        host: String,
        /// The container port (published with a host port binding).
        port: u16,
        /// The request path, from `/`.
        path: String,
    },
}

impl HealthProbe {
    /// An HTTP probe of `path` on the local host port published for container `port`/tcp.
    pub fn http(port: u16, path: impl Into<String>) -> Self {
        HealthProbe::Http { host: "127.0.0.1".into(), port, path: path.into() }
    }
}

/// Waits until a container is healthy, up to a timeout. Read-only ([`StepKind::ReadOnly`]).
///
/// - Polls every [`WaitHealthy::interval`]: it inspects the container (a container that exited
///   or is gone fails the wait at once, permanently) and asks the probe.
/// - Ends promptly when the Operation is cancelled (it watches the step's cancellation token).
/// - Not healthy within [`WaitHealthy::timeout`]: a permanent error with the last status seen
///   (Docker's health log, or the HTTP answer), so the rollback starts instead of waiting again.
///   Transient Docker errors while polling are retried within the timeout.
///
/// ```no_run
/// use std::time::Duration;
/// use bollard::Docker;
/// use saga_steps_docker::{HealthProbe, WaitHealthy};
///
/// let docker = Docker::connect_with_local_defaults()?;
/// let by_docker = WaitHealthy::new(docker.clone(), "web-v2", HealthProbe::Docker);
/// let by_http = WaitHealthy::new(docker, "web-v2", HealthProbe::http(8080, "/healthz"))
///     .timeout(Duration::from_secs(30));
/// # let _ = (by_docker, by_http);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct WaitHealthy {
    docker: Docker,
    container: Input<String>,
    probe: HealthProbe,
    timeout: Duration,
    interval: Duration,
}

/// What [`WaitHealthy`] saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthy {
    /// The container id.
    pub id: String,
    /// How long the wait took, in milliseconds.
    pub waited_ms: u64,
    /// What the probe saw last ("healthy", or "HTTP 200 from 127.0.0.1:32768/").
    pub seen: String,
}

impl fmt::Debug for WaitHealthy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitHealthy")
            .field("container", &self.container)
            .field("probe", &self.probe)
            .field("timeout", &self.timeout)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// The answer of one poll.
enum Poll {
    Healthy(String),
    NotYet(String),
}

impl WaitHealthy {
    /// Waits until `container` (a name or id) is healthy by `probe`, through `docker`. Default
    /// timeout 60 s, interval 500 ms.
    pub fn new(docker: Docker, container: impl Into<Input<String>>, probe: HealthProbe) -> Self {
        WaitHealthy {
            docker,
            container: container.into(),
            probe,
            timeout: Duration::from_secs(60),
            interval: Duration::from_millis(500),
        }
    }

    /// How long to wait in all.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long between two polls.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }

    async fn poll(
        &self,
        name: &str,
        container: &ContainerInspectResponse,
        per_probe: Duration,
    ) -> Result<Poll, StepError> {
        let state = container.state.clone().unwrap_or_default();
        match state.status {
            Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD) => {
                return Err(StepError::permanent(format!(
                    "wait for {name} to be healthy: the container is {} (exit code {})",
                    state.status.map(|s| s.to_string()).unwrap_or_default(),
                    state.exit_code.unwrap_or_default()
                )));
            }
            Some(ContainerStateStatusEnum::RUNNING) => {}
            other => {
                let status = other.map(|s| s.to_string()).unwrap_or_else(|| "unknown".into());
                return Ok(Poll::NotYet(format!("container is {status}")));
            }
        }
        match &self.probe {
            HealthProbe::Docker => {
                let Some(health) = state.health else {
                    return Err(StepError::permanent(format!(
                        "wait for {name} to be healthy: the container has no HEALTHCHECK; \
                         use an HTTP probe"
                    )));
                };
                match health.status {
                    Some(HealthStatusEnum::HEALTHY) => Ok(Poll::Healthy("healthy".into())),
                    Some(HealthStatusEnum::NONE) => Err(StepError::permanent(format!(
                        "wait for {name} to be healthy: the container has no HEALTHCHECK; \
                         use an HTTP probe"
                    ))),
                    status => {
                        let status = status.map(|s| s.to_string()).unwrap_or_default();
                        let last = health
                            .log
                            .as_ref()
                            .and_then(|log| log.last())
                            .map(|r| {
                                format!(
                                    "; last check exited {}: {}",
                                    r.exit_code.unwrap_or_default(),
                                    r.output.as_deref().unwrap_or("").trim()
                                )
                            })
                            .unwrap_or_default();
                        Ok(Poll::NotYet(format!("health {status}{last}")))
                    }
                }
            }
            HealthProbe::Http { host, port, path } => {
                let Some(host_port) = published_port(container, *port) else {
                    return Err(StepError::permanent(format!(
                        "wait for {name} to be healthy: container port {port}/tcp is not published \
                         on the host"
                    )));
                };
                let address = if host.contains(':') && !host.starts_with('[') {
                    format!("[{host}]:{host_port}")
                } else {
                    format!("{host}:{host_port}")
                };
                match http_get_status(&address, path, per_probe).await {
                    Ok(code) if (200..400).contains(&code) => {
                        Ok(Poll::Healthy(format!("HTTP {code} from {address}{path}")))
                    }
                    Ok(code) => Ok(Poll::NotYet(format!("HTTP {code} from {address}{path}"))),
                    Err(e) => Ok(Poll::NotYet(format!("GET {address}{path}: {e}"))),
                }
            }
        }
    }
}

/// The host port Docker publishes container `port`/tcp on, if any.
fn published_port(container: &ContainerInspectResponse, port: u16) -> Option<u16> {
    let ports = container.network_settings.as_ref()?.ports.as_ref()?;
    let bindings = ports.get(&format!("{port}/tcp"))?.as_ref()?;
    bindings.iter().find_map(|b| b.host_port.as_deref()?.parse().ok())
}

#[async_trait]
impl Step for WaitHealthy {
    type Output = Healthy;

    async fn execute(&self, ctx: &StepContext) -> Result<Healthy, StepError> {
        let name = self.container.resolve(ctx)?;
        let started = Instant::now();
        let deadline = started + self.timeout;
        let per_probe = self.interval.clamp(Duration::from_millis(500), Duration::from_secs(5));
        let mut last = String::from("not polled yet");
        loop {
            let poll = async {
                match inspect(&self.docker, &name).await {
                    Ok(Some(container)) => {
                        let id = container.id.clone().unwrap_or_else(|| name.clone());
                        self.poll(&name, &container, per_probe).await.map(|p| (id, p))
                    }
                    Ok(None) => Err(StepError::permanent(format!(
                        "wait for {name} to be healthy: no such container"
                    ))),
                    Err(e) if e.is_transient() => {
                        Ok((name.clone(), Poll::NotYet(e.message().to_owned())))
                    }
                    Err(e) => Err(e),
                }
            };
            let result = tokio::select! {
                result = tokio::time::timeout_at(deadline, poll) => result,
                _ = ctx.cancellation().cancelled() => return Err(StepError::cancelled()),
            };
            match result {
                Ok(Ok((id, Poll::Healthy(seen)))) => {
                    let waited_ms =
                        u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    tracing::info!(container = %name, waited_ms, %seen, "container healthy");
                    return Ok(Healthy { id, waited_ms, seen });
                }
                Ok(Ok((_, Poll::NotYet(seen)))) => {
                    tracing::debug!(container = %name, %seen, "not healthy yet");
                    last = seen;
                }
                Ok(Err(e)) => return Err(e),
                Err(_elapsed) => {}
            }
            if Instant::now() >= deadline {
                return Err(StepError::permanent(format!(
                    "wait for {name} to be healthy: not healthy after {:?} (last: {last})",
                    self.timeout
                )));
            }
            tokio::select! {
                _ = tokio::time::sleep_until((Instant::now() + self.interval).min(deadline)) => {}
                _ = ctx.cancellation().cancelled() => return Err(StepError::cancelled()),
            }
        }
    }

    fn kind(&self) -> StepKind {
        StepKind::ReadOnly
    }
}
