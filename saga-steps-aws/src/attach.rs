//! `DetachVolume` and `AttachVolume`: each undoes the other.

use aws_sdk_ec2::types::Tag;
use aws_sdk_ec2::Client;
use saga_core::{async_trait, CancellationToken, Executed, Input, Step, StepContext, StepError};

use crate::error::classify_sdk_error;
use crate::volume::{
    attach_progress, describe_volume, describe_volume_if_any, detach_progress, plan_attach,
    plan_detach, AttachPlan, DetachPlan, VolumeAttachment, VolumeOnInstance, DETACH_MARKER_TAG,
};
use crate::wait::{wait_for, Progress, WaitPolicy};

/// Detaches an EBS volume from an instance and waits until it has left the instance.
///
/// Its output, a [`VolumeAttachment`], records the instance and the device the volume was at;
/// `compensate` re-attaches it there and waits until it is attached.
///
/// Idempotent through state checks: a volume detaching from the instance is waited for; a volume
/// no longer on the instance counts as detached only if this very step (same Operation, same step
/// name) detached it, which it knows from the tag `saga-steps-aws:detached-from` it sets on the
/// volume before detaching (`<instance> <device> <idempotency key>`). That tag also tells a
/// compensation after a crash where to re-attach. Anything else (the volume is not on that
/// instance) is a permanent error. Needs `ec2:DescribeVolumes`, `ec2:CreateTags`,
/// `ec2:DetachVolume` and, to compensate, `ec2:AttachVolume`.
///
/// ```no_run
/// use saga_steps_aws::{DetachVolume, VolumeOnInstance};
/// # async fn f(ec2: aws_sdk_ec2::Client) {
/// let step = DetachVolume::new(ec2, VolumeOnInstance::new("vol-1", "i-old"));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct DetachVolume {
    client: Client,
    input: Input<VolumeOnInstance>,
    wait: WaitPolicy,
}

impl DetachVolume {
    /// Detaches the volume named by `input` from its instance.
    pub fn new(client: Client, input: impl Into<Input<VolumeOnInstance>>) -> Self {
        DetachVolume { client, input: input.into(), wait: WaitPolicy::default() }
    }

    /// How the step polls until the volume is detached (and, compensating, attached).
    pub fn wait_policy(mut self, policy: WaitPolicy) -> Self {
        self.wait = policy;
        self
    }

    async fn mark(&self, on: &VolumeOnInstance, device: &str, key: &str) -> Result<(), StepError> {
        let tag = Tag::builder()
            .key(DETACH_MARKER_TAG)
            .value(format!("{} {device} {key}", on.instance_id))
            .build();
        self.client
            .create_tags()
            .resources(&on.volume_id)
            .tags(tag)
            .send()
            .await
            .map_err(|e| classify_sdk_error("CreateTags", &e))?;
        Ok(())
    }
}

#[async_trait]
impl Step for DetachVolume {
    type Output = VolumeAttachment;

    async fn execute(&self, ctx: &StepContext) -> Result<VolumeAttachment, StepError> {
        let on = self.input.resolve(ctx)?;
        let key = ctx.idempotency_key();
        let volume = describe_volume(&self.client, &on.volume_id).await?;
        let device = match plan_detach(&volume, &on.instance_id) {
            DetachPlan::Detach { device } => {
                self.mark(&on, &device, &key).await?;
                tracing::info!(volume = %on.volume_id, instance = %on.instance_id, %device, "detaching volume");
                self.client
                    .detach_volume()
                    .volume_id(&on.volume_id)
                    .instance_id(&on.instance_id)
                    .device(&device)
                    .send()
                    .await
                    .map_err(|e| classify_sdk_error("DetachVolume", &e))?;
                device
            }
            DetachPlan::Wait { device } => {
                self.mark(&on, &device, &key).await?;
                device
            }
            DetachPlan::NotAttached => match volume.detach_marker(&on.instance_id, &key) {
                Some(device) => device,
                None => {
                    return Err(StepError::permanent(format!(
                        "volume {} is not attached to instance {}",
                        on.volume_id, on.instance_id
                    )));
                }
            },
        };
        wait_detached(&self.client, &self.wait, ctx.cancellation(), &on).await?;
        Ok(VolumeAttachment::new(on.volume_id, on.instance_id, device))
    }

    async fn compensate(
        &self,
        ctx: &StepContext,
        executed: Executed<VolumeAttachment>,
    ) -> Result<(), StepError> {
        let was = match executed {
            Executed::Succeeded(was) => was,
            Executed::Failed(_) | Executed::Unknown => {
                let on = self.input.resolve(ctx)?;
                // No volume (the input named none that exists): nothing was detached.
                let Some(volume) = describe_volume_if_any(&self.client, &on.volume_id).await?
                else {
                    return Ok(());
                };
                let device = match plan_detach(&volume, &on.instance_id) {
                    // The detach never took effect.
                    DetachPlan::Detach { .. } => return Ok(()),
                    DetachPlan::Wait { device } => device,
                    DetachPlan::NotAttached => {
                        match volume.detach_marker(&on.instance_id, &ctx.idempotency_key()) {
                            Some(device) => device,
                            // Not detached by this step: nothing to undo.
                            None => return Ok(()),
                        }
                    }
                };
                VolumeAttachment::new(on.volume_id, on.instance_id, device)
            }
        };
        tracing::info!(volume = %was.volume_id, instance = %was.instance_id, device = %was.device, "re-attaching volume");
        ensure_attached(&self.client, &self.wait, ctx.cancellation(), &was).await
    }
}

/// Attaches an EBS volume to an instance at a device and waits until it is attached.
///
/// `compensate` detaches it from there (only from that instance and device) and waits until it
/// has left the instance.
///
/// Idempotent through state checks: a volume already attached to that instance at that device
/// succeeds, one attaching there is waited for, one still being created or detaching is waited
/// for until it settles; a volume attached elsewhere (another instance, another device) is a
/// permanent error. `AttachVolume` takes no client token. Needs `ec2:DescribeVolumes`,
/// `ec2:AttachVolume` and, to compensate, `ec2:DetachVolume`.
///
/// ```no_run
/// use saga_steps_aws::{AttachVolume, VolumeAttachment};
/// # async fn f(ec2: aws_sdk_ec2::Client) {
/// let step = AttachVolume::new(ec2, VolumeAttachment::new("vol-1", "i-new", "/dev/sdf"));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct AttachVolume {
    client: Client,
    input: Input<VolumeAttachment>,
    wait: WaitPolicy,
}

impl AttachVolume {
    /// Attaches the volume named by `input` to its instance at its device.
    pub fn new(client: Client, input: impl Into<Input<VolumeAttachment>>) -> Self {
        AttachVolume { client, input: input.into(), wait: WaitPolicy::default() }
    }

    /// How the step polls until the volume is attached (and, compensating, detached).
    pub fn wait_policy(mut self, policy: WaitPolicy) -> Self {
        self.wait = policy;
        self
    }
}

#[async_trait]
impl Step for AttachVolume {
    type Output = VolumeAttachment;

    async fn execute(&self, ctx: &StepContext) -> Result<VolumeAttachment, StepError> {
        let to = self.input.resolve(ctx)?;
        ensure_attached(&self.client, &self.wait, ctx.cancellation(), &to).await?;
        Ok(to)
    }

    async fn compensate(
        &self,
        ctx: &StepContext,
        executed: Executed<VolumeAttachment>,
    ) -> Result<(), StepError> {
        let at = match executed {
            Executed::Succeeded(at) => at,
            Executed::Failed(_) | Executed::Unknown => self.input.resolve(ctx)?,
        };
        // No volume: it is attached nowhere.
        let Some(volume) = describe_volume_if_any(&self.client, &at.volume_id).await? else {
            return Ok(());
        };
        match plan_detach(&volume, &at.instance_id) {
            DetachPlan::Detach { device } if device == at.device => {
                tracing::info!(volume = %at.volume_id, instance = %at.instance_id, %device, "detaching volume");
                self.client
                    .detach_volume()
                    .volume_id(&at.volume_id)
                    .instance_id(&at.instance_id)
                    .device(&device)
                    .send()
                    .await
                    .map_err(|e| classify_sdk_error("DetachVolume", &e))?;
            }
            DetachPlan::Wait { device } if device == at.device => {}
            // Not attached there (never was, or someone else's attachment): nothing to undo.
            _ => return Ok(()),
        }
        let on = VolumeOnInstance::new(at.volume_id, at.instance_id);
        wait_detached(&self.client, &self.wait, ctx.cancellation(), &on).await
    }
}

/// Attaches the volume there unless it already is, and waits until it is attached.
async fn ensure_attached(
    client: &Client,
    policy: &WaitPolicy,
    cancel: &CancellationToken,
    to: &VolumeAttachment,
) -> Result<(), StepError> {
    let (volume_id, instance, device) = (&to.volume_id, &to.instance_id, &to.device);
    let what = format!("volume {volume_id} to settle before attaching it to {instance}");
    // A volume still being created, or detaching, settles first.
    let plan = wait_for(policy, cancel, &what, || async move {
        let volume = describe_volume(client, volume_id).await?;
        Ok(match plan_attach(&volume, instance, device) {
            AttachPlan::NotYet(why) => Progress::Waiting(why),
            plan => Progress::Done(plan),
        })
    })
    .await?;
    match plan {
        AttachPlan::Done => return Ok(()),
        AttachPlan::Wait => {}
        AttachPlan::Attach => {
            tracing::info!(volume = %volume_id, %instance, %device, "attaching volume");
            client
                .attach_volume()
                .volume_id(volume_id)
                .instance_id(instance)
                .device(device)
                .send()
                .await
                .map_err(|e| classify_sdk_error("AttachVolume", &e))?;
        }
        AttachPlan::Refuse(why) => return Err(StepError::permanent(why)),
        AttachPlan::NotYet(why) => return Err(StepError::transient(why)),
    }
    let what = format!("volume {volume_id} to attach to {instance} at {device}");
    wait_for(policy, cancel, &what, || async move {
        let volume = describe_volume(client, volume_id).await?;
        Ok(attach_progress(&volume, instance, device))
    })
    .await
}

/// Waits until the volume has left the instance.
async fn wait_detached(
    client: &Client,
    policy: &WaitPolicy,
    cancel: &CancellationToken,
    on: &VolumeOnInstance,
) -> Result<(), StepError> {
    let (volume_id, instance) = (&on.volume_id, &on.instance_id);
    let what = format!("volume {volume_id} to detach from {instance}");
    wait_for(policy, cancel, &what, || async move {
        let volume = describe_volume(client, volume_id).await?;
        Ok(detach_progress(&volume, instance))
    })
    .await
}
