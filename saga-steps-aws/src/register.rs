//! `RegisterTargets` and `DeregisterTargets`: each undoes the other.

use aws_sdk_elasticloadbalancingv2::Client;
use saga_core::{async_trait, CancellationToken, Executed, Input, Step, StepContext, StepError};

use crate::error::classify_sdk_error;
use crate::targets::{
    describe_targets, describe_targets_if_any, describe_views, gone_progress, healthy_others,
    healthy_progress, not_registered, registered, Target, TargetSet,
};
use crate::wait::{wait_for, WaitPolicy};

/// Registers targets with an ELBv2 target group and waits until every one is healthy.
///
/// `compensate` deregisters them and waits until they are gone (drained). The targets are the
/// Operation's: a rollback deregisters all of them, also one that was registered before the step
/// ran. With [`RegisterTargets::keep_one_healthy`], the compensation refuses (with a transient
/// error, so it is retried and, if it persists, reported as not undone) to deregister them while
/// no other healthy target remains in the group.
///
/// Idempotent through state checks: targets already registered are not registered again (their
/// health is waited for); `RegisterTargets` takes no client token. Needs
/// `elasticloadbalancing:DescribeTargetHealth`, `RegisterTargets` and `DeregisterTargets`.
///
/// ```no_run
/// use saga_steps_aws::{RegisterTargets, Target, TargetSet};
/// # async fn f(elb: aws_sdk_elasticloadbalancingv2::Client) {
/// let step = RegisterTargets::new(elb, TargetSet::new("arn:...", vec![Target::new("i-new")]));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct RegisterTargets {
    client: Client,
    input: Input<TargetSet>,
    wait: WaitPolicy,
    keep_one_healthy: bool,
}

impl RegisterTargets {
    /// Registers the targets `input` names.
    pub fn new(client: Client, input: impl Into<Input<TargetSet>>) -> Self {
        RegisterTargets {
            client,
            input: input.into(),
            wait: WaitPolicy::default(),
            keep_one_healthy: false,
        }
    }

    /// How the step polls until the targets are healthy (and, compensating, gone).
    pub fn wait_policy(mut self, policy: WaitPolicy) -> Self {
        self.wait = policy;
        self
    }

    /// Never let the compensation leave the target group without a healthy target.
    pub fn keep_one_healthy(mut self) -> Self {
        self.keep_one_healthy = true;
        self
    }
}

#[async_trait]
impl Step for RegisterTargets {
    type Output = TargetSet;

    async fn execute(&self, ctx: &StepContext) -> Result<TargetSet, StepError> {
        let set = self.input.resolve(ctx)?;
        ensure_registered(&self.client, &self.wait, ctx.cancellation(), &set).await?;
        Ok(set)
    }

    async fn compensate(
        &self,
        ctx: &StepContext,
        executed: Executed<TargetSet>,
    ) -> Result<(), StepError> {
        let set = match executed {
            Executed::Succeeded(set) => set,
            Executed::Failed(_) | Executed::Unknown => self.input.resolve(ctx)?,
        };
        ensure_deregistered(
            &self.client,
            &self.wait,
            ctx.cancellation(),
            &set,
            self.keep_one_healthy,
        )
        .await
    }
}

/// Deregisters targets from an ELBv2 target group and waits until they are gone (drained).
///
/// `compensate` registers them again and waits until they are healthy. With
/// [`DeregisterTargets::keep_one_healthy`], `execute` refuses (with a transient error) to
/// deregister while no healthy target outside the set remains in the group.
///
/// Idempotent through state checks: targets not registered (or already draining) are not
/// deregistered again. Needs `elasticloadbalancing:DescribeTargetHealth`, `DeregisterTargets`
/// and `RegisterTargets`.
#[derive(Clone, Debug)]
pub struct DeregisterTargets {
    client: Client,
    input: Input<TargetSet>,
    wait: WaitPolicy,
    keep_one_healthy: bool,
}

impl DeregisterTargets {
    /// Deregisters the targets `input` names.
    pub fn new(client: Client, input: impl Into<Input<TargetSet>>) -> Self {
        DeregisterTargets {
            client,
            input: input.into(),
            wait: WaitPolicy::default(),
            keep_one_healthy: false,
        }
    }

    /// How the step polls until the targets are gone (and, compensating, healthy).
    pub fn wait_policy(mut self, policy: WaitPolicy) -> Self {
        self.wait = policy;
        self
    }

    /// Never deregister while no healthy target outside the set remains in the group.
    pub fn keep_one_healthy(mut self) -> Self {
        self.keep_one_healthy = true;
        self
    }
}

#[async_trait]
impl Step for DeregisterTargets {
    type Output = TargetSet;

    async fn execute(&self, ctx: &StepContext) -> Result<TargetSet, StepError> {
        let set = self.input.resolve(ctx)?;
        ensure_deregistered(
            &self.client,
            &self.wait,
            ctx.cancellation(),
            &set,
            self.keep_one_healthy,
        )
        .await?;
        Ok(set)
    }

    async fn compensate(
        &self,
        ctx: &StepContext,
        executed: Executed<TargetSet>,
    ) -> Result<(), StepError> {
        let set = match executed {
            Executed::Succeeded(set) => set,
            Executed::Failed(_) | Executed::Unknown => self.input.resolve(ctx)?,
        };
        ensure_registered(&self.client, &self.wait, ctx.cancellation(), &set).await
    }
}

/// Registers the targets of `set` that are not registered, then waits until all are healthy.
async fn ensure_registered(
    client: &Client,
    policy: &WaitPolicy,
    cancel: &CancellationToken,
    set: &TargetSet,
) -> Result<(), StepError> {
    let group = set.target_group_arn.as_str();
    let views = describe_targets(client, group).await?;
    let missing = not_registered(&views, &set.targets);
    if !missing.is_empty() {
        tracing::info!(target_group = %group, targets = ?missing, "registering targets");
        client
            .register_targets()
            .target_group_arn(group)
            .set_targets(Some(missing.iter().map(Target::to_sdk).collect()))
            .send()
            .await
            .map_err(|e| classify_sdk_error("RegisterTargets", &e))?;
    }
    let targets = set.targets.as_slice();
    let what = format!("targets of {group} to be healthy");
    wait_for(policy, cancel, &what, || async move {
        Ok(healthy_progress(&describe_targets(client, group).await?, targets))
    })
    .await
}

/// Deregisters the targets of `set` that are registered, then waits until all are gone. With
/// `keep_one_healthy`, refuses while no healthy target outside `set` remains.
async fn ensure_deregistered(
    client: &Client,
    policy: &WaitPolicy,
    cancel: &CancellationToken,
    set: &TargetSet,
    keep_one_healthy: bool,
) -> Result<(), StepError> {
    let group = set.target_group_arn.as_str();
    // No target group: none of its targets is registered.
    let Some(views) = describe_targets_if_any(client, group).await? else { return Ok(()) };
    let present = registered(&views, &set.targets);
    if !present.is_empty() {
        if keep_one_healthy && healthy_others(&views, &set.targets).is_empty() {
            let all: Vec<_> = views.iter().collect();
            return Err(StepError::transient(format!(
                "deregistering {} would leave target group {group} without a healthy target \
                 (targets now: {})",
                present.iter().map(|t| t.id.as_str()).collect::<Vec<_>>().join(", "),
                describe_views(&all)
            )));
        }
        tracing::info!(target_group = %group, targets = ?present, "deregistering targets");
        client
            .deregister_targets()
            .target_group_arn(group)
            .set_targets(Some(present.iter().map(Target::to_sdk).collect()))
            .send()
            .await
            .map_err(|e| classify_sdk_error("DeregisterTargets", &e))?;
    }
    let targets = set.targets.as_slice();
    let what = format!("targets to leave {group}");
    wait_for(policy, cancel, &what, || async move {
        Ok(gone_progress(&describe_targets(client, group).await?, targets))
    })
    .await
}
