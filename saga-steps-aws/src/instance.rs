//! `WaitInstanceRunning`: a read-only precondition.

use aws_sdk_ec2::Client;
use saga_core::{async_trait, Input, Step, StepContext, StepError, StepKind};
use serde::{Deserialize, Serialize};

use crate::error::classify_sdk_error;
use crate::wait::{wait_for, Progress, WaitPolicy};

/// An instance found running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningInstance {
    /// The instance id.
    pub instance_id: String,
    /// Its availability zone (a volume attaches only to an instance of its zone).
    pub availability_zone: Option<String>,
}

/// Waits until an EC2 instance is `running`; fails permanently if it is stopping, stopped,
/// shutting down or terminated. [`StepKind::ReadOnly`]: nothing to undo. Needs
/// `ec2:DescribeInstances`.
///
/// ```no_run
/// use saga_steps_aws::WaitInstanceRunning;
/// # async fn f(ec2: aws_sdk_ec2::Client) {
/// let step = WaitInstanceRunning::new(ec2, "i-new");
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct WaitInstanceRunning {
    client: Client,
    input: Input<String>,
    wait: WaitPolicy,
}

impl WaitInstanceRunning {
    /// Waits for the instance whose id `input` gives.
    pub fn new(client: Client, input: impl Into<Input<String>>) -> Self {
        WaitInstanceRunning { client, input: input.into(), wait: WaitPolicy::default() }
    }

    /// How the step polls until the instance runs.
    pub fn wait_policy(mut self, policy: WaitPolicy) -> Self {
        self.wait = policy;
        self
    }
}

#[async_trait]
impl Step for WaitInstanceRunning {
    type Output = RunningInstance;

    async fn execute(&self, ctx: &StepContext) -> Result<RunningInstance, StepError> {
        let instance_id = self.input.resolve(ctx)?;
        let (client, id) = (&self.client, instance_id.as_str());
        let what = format!("instance {id} to run");
        wait_for(&self.wait, ctx.cancellation(), &what, || async move {
            let answer = client
                .describe_instances()
                .instance_ids(id)
                .send()
                .await
                .map_err(|e| classify_sdk_error("DescribeInstances", &e))?;
            let instance = answer
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .find(|i| i.instance_id() == Some(id))
                .ok_or_else(|| StepError::permanent(format!("instance {id} not found")))?;
            let state = instance.state().and_then(|s| s.name()).map_or("", |n| n.as_str());
            Ok(match instance_progress(state) {
                Progress::Done(()) => Progress::Done(RunningInstance {
                    instance_id: id.to_owned(),
                    availability_zone: instance
                        .placement()
                        .and_then(|p| p.availability_zone())
                        .map(str::to_owned),
                }),
                Progress::Waiting(why) => Progress::Waiting(format!("instance {id} is {why}")),
                Progress::Failed(why) => Progress::Failed(format!("instance {id} is {why}")),
            })
        })
        .await
    }

    fn kind(&self) -> StepKind {
        StepKind::ReadOnly
    }
}

/// Whether an instance in this state is running, will be, or will not be.
pub(crate) fn instance_progress(state: &str) -> Progress<()> {
    match state {
        "running" => Progress::Done(()),
        "pending" | "" => {
            Progress::Waiting(if state.is_empty() { "in no state yet" } else { state }.to_owned())
        }
        other => Progress::Failed(other.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_waits_running_is_done_the_rest_fail() {
        assert_eq!(instance_progress("running"), Progress::Done(()));
        assert_eq!(instance_progress("pending"), Progress::Waiting("pending".into()));
        for state in ["stopping", "stopped", "shutting-down", "terminated"] {
            assert_eq!(instance_progress(state), Progress::Failed(state.into()));
        }
    }
}
