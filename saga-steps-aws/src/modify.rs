//! `ModifyVolumeSize`: grows an EBS volume. Irreversible: a volume cannot shrink.

use aws_sdk_ec2::types::VolumeModification;
use aws_sdk_ec2::Client;
use saga_core::{async_trait, Input, Step, StepContext, StepError, StepKind};
use serde::{Deserialize, Serialize};

use crate::error::{classify_sdk_error, code_of};
use crate::volume::describe_volume;
use crate::wait::{wait_for, Progress, WaitPolicy};

/// A volume and the size it should have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSize {
    /// The volume id (`vol-...`).
    pub volume_id: String,
    /// The size wanted, in GiB.
    pub size_gib: i32,
}

impl VolumeSize {
    /// `volume_id` at `size_gib` GiB.
    pub fn new(volume_id: impl Into<String>, size_gib: i32) -> Self {
        VolumeSize { volume_id: volume_id.into(), size_gib }
    }
}

/// What `ModifyVolumeSize` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeResized {
    /// The volume id.
    pub volume_id: String,
    /// The size before, in GiB, when known.
    pub from_gib: Option<i32>,
    /// The size now, in GiB.
    pub to_gib: i32,
    /// The modification state when the step ended: `optimizing` or `completed` (or `unchanged`
    /// when the volume already had the size).
    pub state: String,
}

/// Grows an EBS volume to a size and waits until the modification is `optimizing` or
/// `completed` (from `optimizing` on, the new size is usable by the instance).
///
/// [`StepKind::Irreversible`]: a volume cannot shrink, so a rollback leaves it grown and the
/// Operation's outcome names this step as not undone.
///
/// Idempotent through state checks: a volume that already has the size succeeds; a modification
/// to that size in progress is waited for; a volume larger than asked is a permanent error (it
/// would mean shrinking), and so is another modification in progress. `ModifyVolume` takes no
/// client token. Needs `ec2:DescribeVolumes`, `ec2:DescribeVolumesModifications` and
/// `ec2:ModifyVolume`.
#[derive(Clone, Debug)]
pub struct ModifyVolumeSize {
    client: Client,
    input: Input<VolumeSize>,
    wait: WaitPolicy,
}

impl ModifyVolumeSize {
    /// Grows the volume named by `input` to its size.
    pub fn new(client: Client, input: impl Into<Input<VolumeSize>>) -> Self {
        ModifyVolumeSize { client, input: input.into(), wait: WaitPolicy::default() }
    }

    /// How the step polls until the modification is optimizing or completed.
    pub fn wait_policy(mut self, policy: WaitPolicy) -> Self {
        self.wait = policy;
        self
    }
}

#[async_trait]
impl Step for ModifyVolumeSize {
    type Output = VolumeResized;

    async fn execute(&self, ctx: &StepContext) -> Result<VolumeResized, StepError> {
        let want = self.input.resolve(ctx)?;
        let volume = describe_volume(&self.client, &want.volume_id).await?;
        let latest = latest_modification(&self.client, &want.volume_id).await?;
        let from_gib = match &latest {
            Some(m) if m.target_size == Some(want.size_gib) => m.original_size.or(volume.size_gib),
            _ => volume.size_gib,
        };
        match plan_resize(volume.size_gib, latest.as_ref(), want.size_gib) {
            ResizePlan::Unchanged => {
                return Ok(VolumeResized {
                    volume_id: want.volume_id,
                    from_gib,
                    to_gib: want.size_gib,
                    state: "unchanged".into(),
                });
            }
            ResizePlan::Refuse(why) => return Err(StepError::permanent(why)),
            ResizePlan::Wait => {}
            ResizePlan::Modify => {
                tracing::info!(volume = %want.volume_id, size_gib = want.size_gib, "modifying volume size");
                self.client
                    .modify_volume()
                    .volume_id(&want.volume_id)
                    .size(want.size_gib)
                    .send()
                    .await
                    .map_err(|e| classify_sdk_error("ModifyVolume", &e))?;
            }
        }
        let (client, volume_id, size) = (&self.client, &want.volume_id, want.size_gib);
        let what = format!("volume {volume_id} to grow to {size} GiB");
        let state = wait_for(&self.wait, ctx.cancellation(), &what, || async move {
            let latest = latest_modification(client, volume_id).await?;
            Ok(modification_progress(latest.as_ref(), size))
        })
        .await?;
        Ok(VolumeResized { volume_id: want.volume_id, from_gib, to_gib: want.size_gib, state })
    }

    fn kind(&self) -> StepKind {
        StepKind::Irreversible
    }
}

/// The latest size modification of a volume, as `DescribeVolumesModifications` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ModificationView {
    pub(crate) target_size: Option<i32>,
    pub(crate) original_size: Option<i32>,
    /// `modifying`, `optimizing`, `completed`, `failed`.
    pub(crate) state: Option<String>,
    pub(crate) status_message: Option<String>,
}

impl ModificationView {
    fn from_sdk(m: &VolumeModification) -> Self {
        ModificationView {
            target_size: m.target_size(),
            original_size: m.original_size(),
            state: m.modification_state().map(|s| s.as_str().to_owned()),
            status_message: m.status_message().map(str::to_owned),
        }
    }
}

/// The latest modification of the volume, or none if it was never modified.
async fn latest_modification(
    client: &Client,
    volume_id: &str,
) -> Result<Option<ModificationView>, StepError> {
    let answer = match client.describe_volumes_modifications().volume_ids(volume_id).send().await {
        Ok(answer) => answer,
        // AWS answers this for a volume that was never modified.
        Err(e) if code_of(&e) == Some("InvalidVolumeModification.NotFound") => return Ok(None),
        Err(e) => return Err(classify_sdk_error("DescribeVolumesModifications", &e)),
    };
    // AWS lists the latest per volume; an emulator may list them all, oldest first.
    let latest = answer
        .volumes_modifications()
        .iter()
        .filter(|m| m.volume_id() == Some(volume_id))
        .fold(None::<&VolumeModification>, |best, m| match best {
            Some(b) if b.start_time() > m.start_time() => Some(b),
            _ => Some(m),
        });
    Ok(latest.map(ModificationView::from_sdk))
}

/// What `ModifyVolumeSize` does, given the volume's size and its latest modification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ResizePlan {
    /// The volume has the size, and no modification to it is under way.
    Unchanged,
    /// A modification to the size is under way (or done): wait for it.
    Wait,
    /// Call `ModifyVolume`.
    Modify,
    /// A permanent error.
    Refuse(String),
}

pub(crate) fn plan_resize(
    size: Option<i32>,
    latest: Option<&ModificationView>,
    want: i32,
) -> ResizePlan {
    let latest_state = latest.and_then(|m| m.state.as_deref());
    if let Some(m) = latest {
        if m.target_size == Some(want) && latest_state != Some("failed") {
            return ResizePlan::Wait;
        }
        if latest_state == Some("modifying") {
            return ResizePlan::Refuse(format!(
                "another modification (to {} GiB) is in progress",
                m.target_size.map_or_else(|| "?".to_owned(), |s| s.to_string())
            ));
        }
    }
    match size {
        Some(size) if size == want => ResizePlan::Unchanged,
        Some(size) if size > want => {
            ResizePlan::Refuse(format!("the volume has {size} GiB; it cannot shrink to {want} GiB"))
        }
        _ => ResizePlan::Modify,
    }
}

/// Whether the modification to `want` GiB is far enough along: `optimizing` or `completed`.
pub(crate) fn modification_progress(
    latest: Option<&ModificationView>,
    want: i32,
) -> Progress<String> {
    let Some(m) = latest.filter(|m| m.target_size == Some(want)) else {
        return Progress::Waiting("the modification is not listed yet".into());
    };
    match m.state.as_deref() {
        Some(state @ ("optimizing" | "completed")) => Progress::Done(state.to_owned()),
        Some("failed") => Progress::Failed(format!(
            "the modification failed: {}",
            m.status_message.as_deref().unwrap_or("no reason given")
        )),
        Some(state) => Progress::Waiting(format!("the modification is {state}")),
        None => Progress::Waiting("the modification has no state yet".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modification(target: i32, state: &str) -> ModificationView {
        ModificationView {
            target_size: Some(target),
            original_size: Some(10),
            state: Some(state.into()),
            status_message: (state == "failed").then(|| "capacity".into()),
        }
    }

    #[test]
    fn plan_never_shrinks_and_is_idempotent() {
        assert_eq!(plan_resize(Some(10), None, 20), ResizePlan::Modify);
        assert_eq!(plan_resize(Some(20), None, 20), ResizePlan::Unchanged);
        assert!(matches!(plan_resize(Some(30), None, 20), ResizePlan::Refuse(_)));
        assert_eq!(
            plan_resize(Some(20), Some(&modification(20, "optimizing")), 20),
            ResizePlan::Wait
        );
        assert_eq!(
            plan_resize(Some(10), Some(&modification(20, "modifying")), 20),
            ResizePlan::Wait
        );
        assert_eq!(
            plan_resize(Some(10), Some(&modification(20, "failed")), 20),
            ResizePlan::Modify
        );
        assert!(matches!(
            plan_resize(Some(10), Some(&modification(40, "modifying")), 20),
            ResizePlan::Refuse(_)
        ));
        assert_eq!(
            plan_resize(Some(20), Some(&modification(20, "completed")), 30),
            ResizePlan::Modify
        );
    }

    /// Recorded `DescribeVolumesModifications` states: modifying, optimizing, completed, failed.
    #[test]
    fn progress_is_done_from_optimizing_on() {
        assert!(matches!(modification_progress(None, 20), Progress::Waiting(_)));
        assert!(matches!(
            modification_progress(Some(&modification(20, "modifying")), 20),
            Progress::Waiting(_)
        ));
        assert_eq!(
            modification_progress(Some(&modification(20, "optimizing")), 20),
            Progress::Done("optimizing".into())
        );
        assert_eq!(
            modification_progress(Some(&modification(20, "completed")), 20),
            Progress::Done("completed".into())
        );
        assert_eq!(
            modification_progress(Some(&modification(20, "failed")), 20),
            Progress::Failed("the modification failed: capacity".into())
        );
        // An older modification to another size is not the one waited for.
        assert!(matches!(
            modification_progress(Some(&modification(15, "completed")), 20),
            Progress::Waiting(_)
        ));
    }
}
