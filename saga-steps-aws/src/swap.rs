//! `TargetSwap`: replaces a target group's targets without a moment with no healthy target.

use aws_sdk_elasticloadbalancingv2::Client;
use saga_core::saga::SagaBuilder;
use saga_core::Input;
use serde::{Deserialize, Serialize};

use crate::register::{DeregisterTargets, RegisterTargets};
use crate::targets::{Target, TargetSet};
use crate::wait::WaitPolicy;

/// The targets to swap in a target group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapTargets {
    /// The target group's ARN.
    pub target_group_arn: String,
    /// The targets serving now, deregistered once the new ones are healthy.
    pub old: Vec<Target>,
    /// The targets to serve from now on.
    pub new: Vec<Target>,
}

/// A zero-downtime swap of load balancer targets, as two steps of a saga: register the new
/// targets and wait until they are healthy, then deregister the old ones and wait until they
/// have drained.
///
/// At every moment at least one healthy target stays registered (provided one was healthy at the
/// start), whichever step fails and whenever the Operation is cancelled:
///
/// - the old targets are deregistered only once the new ones are healthy, and only while some
///   target other than them is healthy (both steps are [`keep_one_healthy`]);
/// - on rollback, the old targets are registered again and waited for until healthy before the
///   new ones are deregistered (the reverse order of the saga), and the new ones are never
///   deregistered while no other healthy target remains: if the old ones cannot come back, the
///   new ones stay and the rollback reports that step as not undone.
///
/// ```no_run
/// use saga_core::Saga;
/// use saga_steps_aws::{Input, SwapTargets, TargetSwap};
/// # fn f(elb: aws_sdk_elasticloadbalancingv2::Client) -> Result<(), saga_core::Error> {
/// let swap = TargetSwap::new(elb, Input::<SwapTargets>::params());
/// let saga = swap.add_to(Saga::builder("swap", 1), "register-new", "deregister-old").build()?;
/// # Ok(()) }
/// ```
///
/// [`keep_one_healthy`]: RegisterTargets::keep_one_healthy
#[derive(Clone, Debug)]
pub struct TargetSwap {
    client: Client,
    input: Input<SwapTargets>,
    wait: WaitPolicy,
}

impl TargetSwap {
    /// Swaps the targets `input` names.
    pub fn new(client: Client, input: impl Into<Input<SwapTargets>>) -> Self {
        TargetSwap { client, input: input.into(), wait: WaitPolicy::default() }
    }

    /// How both steps poll until targets are healthy or gone.
    pub fn wait_policy(mut self, policy: WaitPolicy) -> Self {
        self.wait = policy;
        self
    }

    /// The first step: register the new targets and wait until they are healthy.
    pub fn register_step(&self) -> RegisterTargets {
        let input = self.input.clone().map(|s| TargetSet::new(s.target_group_arn, s.new));
        RegisterTargets::new(self.client.clone(), input)
            .wait_policy(self.wait.clone())
            .keep_one_healthy()
    }

    /// The second step: deregister the old targets and wait until they are gone.
    pub fn deregister_step(&self) -> DeregisterTargets {
        let input = self.input.clone().map(|s| TargetSet::new(s.target_group_arn, s.old));
        DeregisterTargets::new(self.client.clone(), input)
            .wait_policy(self.wait.clone())
            .keep_one_healthy()
    }

    /// Adds both steps to a saga, in order, under these names.
    pub fn add_to(
        self,
        saga: SagaBuilder,
        register_name: impl Into<String>,
        deregister_name: impl Into<String>,
    ) -> SagaBuilder {
        saga.step(register_name, self.register_step()).step(deregister_name, self.deregister_step())
    }
}
