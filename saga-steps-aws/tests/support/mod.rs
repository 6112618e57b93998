//! Shared by the tests: the AWS API emulator (moto), fixtures made through the SDK, an executor
//! runner, and steps that inject failures or check an invariant around a real step.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::pin::Pin;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_ec2::config::{Credentials, Region};
use aws_sdk_ec2::types::InstanceType;
use aws_sdk_elasticloadbalancingv2::types::{ProtocolEnum, TargetDescription};
use saga_core::{
    async_trait, Executed, Executor, MemoryStore, OperationId, Outcome, Resource, Saga, Start,
    Step, StepContext, StepError,
};
use saga_steps_aws::WaitPolicy;
use saga_testkit::{FaultPlan, Faults, Faulty, When};
use serde::Serialize;
use tokio::sync::{Mutex, MutexGuard};

/// Tests that use the emulator share it and reset it: they run one at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The emulator, reset, with SDK clients pointed at it. Holding it holds the serial lock.
pub struct Emulator {
    _serial: MutexGuard<'static, ()>,
    pub endpoint: String,
    pub ec2: aws_sdk_ec2::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
}

/// The emulator for test `test`, or `None` (with the reason printed) when it is not there outside
/// CI. Under CI (see [`saga_testkit::ci::under_ci`]) a missing emulator fails the test.
pub async fn emulator(test: &str) -> Option<Emulator> {
    let serial = SERIAL.lock().await;
    let endpoint = match std::env::var("SAGA_TEST_AWS_ENDPOINT") {
        Ok(endpoint) if !endpoint.trim().is_empty() => endpoint.trim().to_owned(),
        _ => return unavailable(test, "SAGA_TEST_AWS_ENDPOINT is not set"),
    };
    if let Err(e) = reset(&endpoint) {
        return unavailable(test, &format!("the emulator at {endpoint} does not answer: {e}"));
    }
    let config = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "saga-tests"))
        .load()
        .await;
    Some(Emulator {
        _serial: serial,
        endpoint,
        ec2: aws_sdk_ec2::Client::new(&config),
        elb: aws_sdk_elasticloadbalancingv2::Client::new(&config),
    })
}

/// A missing emulator: fails the test under CI, else says why it skips (the workspace's one
/// rule, [`saga_testkit::ci`]).
fn unavailable(test: &str, why: &str) -> Option<Emulator> {
    saga_testkit::ci::unavailable(
        test,
        &format!(
            "{why}; run `bash scripts/services/moto.sh start` and export the variables of \
             target/services/moto.env"
        ),
    )
}

/// `POST /moto-api/reset`: forgets every resource.
fn reset(endpoint: &str) -> std::io::Result<()> {
    let authority = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| std::io::Error::other(format!("{endpoint} is not an http:// URL")))?
        .trim_end_matches('/');
    let mut stream = TcpStream::connect(authority)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "POST /moto-api/reset HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    if answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        let first = answer.lines().next().unwrap_or("no answer");
        Err(std::io::Error::other(format!("reset answered {first:?}")))
    }
}

/// Waits that suit an emulator whose state changes are instant.
pub fn quick() -> WaitPolicy {
    WaitPolicy::fixed(Duration::from_millis(50), Duration::from_secs(60))
}

impl Emulator {
    /// Starts `n` instances in us-east-1a.
    pub async fn instances(
        &self,
        n: i32,
    ) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
        let answer = self
            .ec2
            .run_instances()
            .image_id("ami-12345678")
            .instance_type(InstanceType::T3Micro)
            .min_count(n)
            .max_count(n)
            .placement(
                aws_sdk_ec2::types::Placement::builder().availability_zone("us-east-1a").build(),
            )
            .send()
            .await?;
        Ok(answer.instances().iter().filter_map(|i| i.instance_id()).map(str::to_owned).collect())
    }

    pub async fn stop_instance(&self, id: &str) -> TestResult {
        self.ec2.stop_instances().instance_ids(id).send().await?;
        Ok(())
    }

    pub async fn volume(
        &self,
        size_gib: i32,
    ) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
        let answer =
            self.ec2.create_volume().availability_zone("us-east-1a").size(size_gib).send().await?;
        Ok(answer.volume_id().ok_or("no volume id")?.to_owned())
    }

    pub async fn attach(&self, volume: &str, instance: &str, device: &str) -> TestResult {
        self.ec2
            .attach_volume()
            .volume_id(volume)
            .instance_id(instance)
            .device(device)
            .send()
            .await?;
        Ok(())
    }

    /// The volume's live attachments as `(instance, device, state)`, and its size.
    pub async fn volume_state(
        &self,
        volume: &str,
    ) -> Result<(Vec<(String, String, String)>, i32), Box<dyn std::error::Error + Send + Sync>>
    {
        let answer = self.ec2.describe_volumes().volume_ids(volume).send().await?;
        let v = answer.volumes().first().ok_or("volume not found")?;
        let attachments = v
            .attachments()
            .iter()
            .filter(|a| a.state().is_some_and(|s| s.as_str() != "detached"))
            .map(|a| {
                (
                    a.instance_id().unwrap_or_default().to_owned(),
                    a.device().unwrap_or_default().to_owned(),
                    a.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                )
            })
            .collect();
        Ok((attachments, v.size().unwrap_or_default()))
    }

    pub async fn target_group(
        &self,
        name: &str,
    ) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
        let vpcs = self.ec2.describe_vpcs().send().await?;
        let vpc = vpcs.vpcs().first().and_then(|v| v.vpc_id()).ok_or("no default VPC")?.to_owned();
        let answer = self
            .elb
            .create_target_group()
            .name(name)
            .protocol(ProtocolEnum::Http)
            .port(80)
            .vpc_id(vpc)
            .send()
            .await?;
        let arn = answer.target_groups().first().and_then(|g| g.target_group_arn());
        Ok(arn.ok_or("no target group ARN")?.to_owned())
    }

    pub async fn register(&self, group: &str, id: &str) -> TestResult {
        let target = TargetDescription::builder().id(id).build();
        self.elb.register_targets().target_group_arn(group).targets(target).send().await?;
        Ok(())
    }

    /// Every registered target as `(id, state)`.
    pub async fn targets(
        &self,
        group: &str,
    ) -> Result<Vec<(String, String)>, Box<dyn std::error::Error + Send + Sync>> {
        let answer = self.elb.describe_target_health().target_group_arn(group).send().await?;
        Ok(answer
            .target_health_descriptions()
            .iter()
            .map(|d| {
                (
                    d.target().and_then(|t| t.id()).unwrap_or_default().to_owned(),
                    d.target_health()
                        .and_then(|h| h.state())
                        .map(|s| s.as_str().to_owned())
                        .unwrap_or_default(),
                )
            })
            .collect())
    }

    /// The ids of the healthy registered targets.
    pub async fn healthy(
        &self,
        group: &str,
    ) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self
            .targets(group)
            .await?
            .into_iter()
            .filter(|(_, s)| s == "healthy")
            .map(|(id, _)| id)
            .collect())
    }
}

/// An executor on a memory store running `saga`.
pub fn executor(saga: Saga) -> Result<Executor, saga_core::Error> {
    Executor::builder(Arc::new(MemoryStore::new())).saga(saga).build()
}

/// Starts an Operation of the executor's saga `name` and returns its id.
pub async fn start<P: Serialize>(
    executor: &Executor,
    name: &str,
    params: &P,
) -> Result<OperationId, saga_core::Error> {
    executor
        .start(
            Start::new(name, Resource::new("database", "db1"))
                .params(params)
                .environment("test")
                .actor("tester"),
        )
        .await
}

/// Runs one Operation of `saga` to its outcome, with a bound on the time it may take.
pub async fn run<P: Serialize>(
    saga: Saga,
    params: &P,
) -> Result<Outcome, Box<dyn std::error::Error + Send + Sync>> {
    let name = saga.name().to_owned();
    let executor = executor(saga)?;
    let id = start(&executor, &name, params).await?;
    let outcome = tokio::time::timeout(Duration::from_secs(60), executor.wait(id)).await??;
    Ok(outcome)
}

/// A step that always fails, permanently.
#[derive(Debug)]
pub struct Fail;

#[async_trait]
impl Step for Fail {
    type Output = ();
    async fn execute(&self, ctx: &StepContext) -> Result<(), StepError> {
        Err(StepError::permanent(format!("injected failure at {}", ctx.step_name())))
    }
}

/// How [`inject`] changes the step it wraps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Runs `execute`, then reports a permanent failure: an effect that happened but whose
    /// outcome is an error (compensate gets `Executed::Failed`).
    FailAfter,
    /// Runs `execute` twice with the same context, returning the second result (a retry after
    /// a lost outcome).
    Twice,
}

/// `step`, which the saga names `name`, with `fault` injected: saga-testkit's [`Faulty`], so
/// that every setting of the step (kind, retry policies, timeouts, cancel grace) is the step's
/// own.
pub fn inject<S: Step>(name: &str, step: S, fault: Fault) -> Faulty<S> {
    let plan = match fault {
        Fault::FailAfter => FaultPlan::new().fail(name, When::After),
        Fault::Twice => FaultPlan::new().execute_twice(name),
    };
    Faulty::new(name, step, &Faults::new(plan))
}

type CheckFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Checks an invariant after each `execute` and `compensate` of a step, recording violations.
#[derive(Clone)]
pub struct Invariant {
    check: CheckFn,
    pub violations: Arc<StdMutex<Vec<String>>>,
    pub checks: Arc<StdMutex<Vec<String>>>,
    /// The checks spawned when a step's future was dropped, still to be awaited.
    spawned: Arc<StdMutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Invariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invariant").finish_non_exhaustive()
    }
}

impl Invariant {
    pub fn new<F, Fut>(check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Invariant {
            check: Arc::new(move || Box::pin(check())),
            violations: Arc::new(StdMutex::new(Vec::new())),
            checks: Arc::new(StdMutex::new(Vec::new())),
            spawned: Arc::new(StdMutex::new(Vec::new())),
        }
    }

    /// Waits for every check spawned so far (after a cancelled step) to finish, so that its
    /// violation, if any, is in [`violations`](Self::violations).
    pub async fn settled(&self) {
        loop {
            let spawned =
                std::mem::take(&mut *self.spawned.lock().unwrap_or_else(|p| p.into_inner()));
            if spawned.is_empty() {
                return;
            }
            for check in spawned {
                check.await.expect("a spawned check panicked");
            }
        }
    }

    pub async fn verify(&self, when: String) {
        let result = (self.check)().await;
        if let Ok(mut checks) = self.checks.lock() {
            checks.push(when.clone());
        }
        if let Err(why) = result {
            if let Ok(mut violations) = self.violations.lock() {
                violations.push(format!("{when}: {why}"));
            }
        }
    }

    pub fn wrap<S: Step>(&self, inner: S) -> Checked<S> {
        Checked { inner, invariant: self.clone() }
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().map(|v| v.clone()).unwrap_or_default()
    }

    pub fn checks(&self) -> Vec<String> {
        self.checks.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// A step whose every `execute` and `compensate` is followed by a check of an invariant.
#[derive(Debug)]
pub struct Checked<S> {
    inner: S,
    invariant: Invariant,
}

/// Checks the invariant even when the engine drops the step's future (a cancel).
struct CheckOnDrop {
    invariant: Invariant,
    when: Option<String>,
}

impl Drop for CheckOnDrop {
    fn drop(&mut self) {
        if let Some(when) = self.when.take() {
            let invariant = self.invariant.clone();
            let check = tokio::spawn(async move { invariant.verify(when).await });
            self.invariant.spawned.lock().unwrap_or_else(|p| p.into_inner()).push(check);
        }
    }
}

#[async_trait]
impl<S: Step> Step for Checked<S> {
    type Output = S::Output;

    async fn execute(&self, ctx: &StepContext) -> Result<S::Output, StepError> {
        let mut guard = CheckOnDrop {
            invariant: self.invariant.clone(),
            when: Some(format!("after {} was cancelled", ctx.step_name())),
        };
        let result = self.inner.execute(ctx).await;
        guard.when = None;
        let how = if result.is_ok() { "succeeded" } else { "failed" };
        self.invariant.verify(format!("after {} {how}", ctx.step_name())).await;
        result
    }

    async fn compensate(
        &self,
        ctx: &StepContext,
        executed: Executed<S::Output>,
    ) -> Result<(), StepError> {
        let result = self.inner.compensate(ctx, executed).await;
        self.invariant.verify(format!("after compensating {}", ctx.step_name())).await;
        result
    }

    saga_core::forward_step_settings!(inner);
}
