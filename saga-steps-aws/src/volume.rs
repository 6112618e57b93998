//! What an EBS volume looks like to the steps, read with `DescribeVolumes`, and the pure decisions
//! the attach and detach steps take from it.

use aws_sdk_ec2::types::{Tag, Volume};
use aws_sdk_ec2::Client;
use saga_core::StepError;
use serde::{Deserialize, Serialize};

use crate::error::{classify_sdk_error, code_of};
use crate::wait::Progress;

/// A volume and the instance it is (or is to be) detached from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeOnInstance {
    /// The volume id (`vol-...`).
    pub volume_id: String,
    /// The instance id (`i-...`).
    pub instance_id: String,
}

impl VolumeOnInstance {
    /// A volume on an instance.
    pub fn new(volume_id: impl Into<String>, instance_id: impl Into<String>) -> Self {
        VolumeOnInstance { volume_id: volume_id.into(), instance_id: instance_id.into() }
    }
}

/// A volume attached to an instance at a device: the input of `AttachVolume`, and the output of
/// both `AttachVolume` and `DetachVolume` (where the volume was).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeAttachment {
    /// The volume id (`vol-...`).
    pub volume_id: String,
    /// The instance id (`i-...`).
    pub instance_id: String,
    /// The device name (`/dev/sdf`, `xvdf`).
    pub device: String,
}

impl VolumeAttachment {
    /// A volume at a device of an instance.
    pub fn new(
        volume_id: impl Into<String>,
        instance_id: impl Into<String>,
        device: impl Into<String>,
    ) -> Self {
        VolumeAttachment {
            volume_id: volume_id.into(),
            instance_id: instance_id.into(),
            device: device.into(),
        }
    }
}

/// The tag in which `DetachVolume` notes, before detaching, where the volume was; its value is
/// `<instance> <device> <idempotency key>`. A retry or a compensation after a crash reads it back.
pub(crate) const DETACH_MARKER_TAG: &str = "saga-steps-aws:detached-from";

/// One attachment of a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AttachmentView {
    pub(crate) instance_id: String,
    pub(crate) device: String,
    /// `attaching`, `attached`, `busy`, `detaching`, `detached`.
    pub(crate) state: String,
}

/// A volume as `DescribeVolumes` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VolumeView {
    pub(crate) volume_id: String,
    /// `creating`, `available`, `in-use`, `deleting`, `deleted`, `error`.
    pub(crate) state: String,
    pub(crate) size_gib: Option<i32>,
    pub(crate) attachments: Vec<AttachmentView>,
    pub(crate) tags: Vec<(String, String)>,
}

impl VolumeView {
    pub(crate) fn from_sdk(volume: &Volume) -> Self {
        VolumeView {
            volume_id: volume.volume_id().unwrap_or_default().to_owned(),
            state: volume.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
            size_gib: volume.size(),
            attachments: volume
                .attachments()
                .iter()
                .map(|a| AttachmentView {
                    instance_id: a.instance_id().unwrap_or_default().to_owned(),
                    device: a.device().unwrap_or_default().to_owned(),
                    state: a.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                })
                .collect(),
            tags: volume.tags().iter().map(tag_pair).collect(),
        }
    }

    /// The live attachment (not `detached`) of the volume to `instance`, if any.
    fn attachment_to(&self, instance: &str) -> Option<&AttachmentView> {
        self.attachments.iter().find(|a| a.instance_id == instance && a.state != "detached")
    }

    /// A live attachment to an instance other than `instance`, if any.
    fn attachment_elsewhere(&self, instance: &str) -> Option<&AttachmentView> {
        self.attachments.iter().find(|a| a.instance_id != instance && a.state != "detached")
    }

    /// The device noted by `DetachVolume` for this instance and idempotency key, if any.
    pub(crate) fn detach_marker(&self, instance: &str, key: &str) -> Option<String> {
        let (_, value) = self.tags.iter().find(|(k, _)| k == DETACH_MARKER_TAG)?;
        let mut parts = value.splitn(3, ' ');
        let (marked_instance, device, marked_key) = (parts.next()?, parts.next()?, parts.next()?);
        (marked_instance == instance && marked_key == key).then(|| device.to_owned())
    }

    fn describe(&self) -> String {
        let attachments: Vec<String> = self
            .attachments
            .iter()
            .map(|a| format!("{} at {} ({})", a.instance_id, a.device, a.state))
            .collect();
        if attachments.is_empty() {
            format!("{} is {}", self.volume_id, self.state)
        } else {
            format!("{} is {}, attached to {}", self.volume_id, self.state, attachments.join(", "))
        }
    }
}

fn tag_pair(tag: &Tag) -> (String, String) {
    (tag.key().unwrap_or_default().to_owned(), tag.value().unwrap_or_default().to_owned())
}

/// Reads one volume.
pub(crate) async fn describe_volume(
    client: &Client,
    volume_id: &str,
) -> Result<VolumeView, StepError> {
    let answer = client
        .describe_volumes()
        .volume_ids(volume_id)
        .send()
        .await
        .map_err(|e| classify_sdk_error("DescribeVolumes", &e))?;
    answer
        .volumes()
        .iter()
        .find(|v| v.volume_id() == Some(volume_id))
        .map(VolumeView::from_sdk)
        .ok_or_else(|| StepError::permanent(format!("volume {volume_id} not found")))
}

/// Like [`describe_volume`], but `None` when the volume does not exist.
pub(crate) async fn describe_volume_if_any(
    client: &Client,
    volume_id: &str,
) -> Result<Option<VolumeView>, StepError> {
    match client.describe_volumes().volume_ids(volume_id).send().await {
        Ok(answer) => Ok(answer
            .volumes()
            .iter()
            .find(|v| v.volume_id() == Some(volume_id))
            .map(VolumeView::from_sdk)),
        Err(e) if code_of(&e) == Some("InvalidVolume.NotFound") => Ok(None),
        Err(e) => Err(classify_sdk_error("DescribeVolumes", &e)),
    }
}

/// What `AttachVolume` (or the re-attach of a compensation) does, given the volume's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AttachPlan {
    /// Attached there already.
    Done,
    /// Attaching there: wait.
    Wait,
    /// Available: call `AttachVolume`.
    Attach,
    /// Not now (still creating, or detaching): a transient error.
    NotYet(String),
    /// Never (attached elsewhere, or the volume is gone): a permanent error.
    Refuse(String),
}

pub(crate) fn plan_attach(v: &VolumeView, instance: &str, device: &str) -> AttachPlan {
    if let Some(a) = v.attachment_to(instance) {
        if a.device != device {
            return AttachPlan::Refuse(format!(
                "{} is attached to {instance} at {}, not at {device}",
                v.volume_id, a.device
            ));
        }
        return match a.state.as_str() {
            "attached" | "busy" => AttachPlan::Done,
            "attaching" => AttachPlan::Wait,
            "detaching" => AttachPlan::NotYet(format!("{} is still detaching", v.describe())),
            _ => AttachPlan::NotYet(v.describe()),
        };
    }
    if let Some(a) = v.attachment_elsewhere(instance) {
        return if a.state == "detaching" {
            AttachPlan::NotYet(format!("{}; waiting for it to be available", v.describe()))
        } else {
            AttachPlan::Refuse(format!("{}, not to {instance}", v.describe()))
        };
    }
    match v.state.as_str() {
        "available" => AttachPlan::Attach,
        // Detached an instant ago: the state catches up.
        "in-use" | "creating" => AttachPlan::NotYet(v.describe()),
        _ => AttachPlan::Refuse(v.describe()),
    }
}

/// Whether the attachment waited for is there.
pub(crate) fn attach_progress(v: &VolumeView, instance: &str, device: &str) -> Progress<()> {
    match plan_attach(v, instance, device) {
        AttachPlan::Done => Progress::Done(()),
        AttachPlan::Refuse(why) => Progress::Failed(why),
        // `available` right after `AttachVolume` is eventual consistency: keep looking.
        AttachPlan::Wait | AttachPlan::Attach | AttachPlan::NotYet(_) => {
            Progress::Waiting(v.describe())
        }
    }
}

/// What `DetachVolume` (or the detach of a compensation) does, given the volume's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DetachPlan {
    /// Attached to the instance at this device: call `DetachVolume`.
    Detach { device: String },
    /// Detaching from the instance at this device: wait.
    Wait { device: String },
    /// Not attached to the instance.
    NotAttached,
}

pub(crate) fn plan_detach(v: &VolumeView, instance: &str) -> DetachPlan {
    match v.attachment_to(instance) {
        Some(a) if a.state == "detaching" => DetachPlan::Wait { device: a.device.clone() },
        Some(a) => DetachPlan::Detach { device: a.device.clone() },
        None => DetachPlan::NotAttached,
    }
}

/// Whether the volume has left the instance.
pub(crate) fn detach_progress(v: &VolumeView, instance: &str) -> Progress<()> {
    if matches!(v.state.as_str(), "deleting" | "deleted" | "error") {
        return Progress::Failed(v.describe());
    }
    match v.attachment_to(instance) {
        Some(_) => Progress::Waiting(v.describe()),
        None => Progress::Done(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(state: &str, attachments: &[(&str, &str, &str)]) -> VolumeView {
        VolumeView {
            volume_id: "vol-1".into(),
            state: state.into(),
            size_gib: Some(10),
            attachments: attachments
                .iter()
                .map(|(i, d, s)| AttachmentView {
                    instance_id: (*i).into(),
                    device: (*d).into(),
                    state: (*s).into(),
                })
                .collect(),
            tags: Vec::new(),
        }
    }

    #[test]
    fn attach_is_idempotent_and_refuses_other_places() {
        let attached_here = volume("in-use", &[("i-b", "/dev/sdf", "attached")]);
        assert_eq!(plan_attach(&attached_here, "i-b", "/dev/sdf"), AttachPlan::Done);
        assert!(matches!(plan_attach(&attached_here, "i-b", "/dev/sdg"), AttachPlan::Refuse(_)));
        let AttachPlan::Refuse(why) = plan_attach(&attached_here, "i-a", "/dev/sdf") else {
            panic!("attached elsewhere must be refused");
        };
        assert!(why.contains("i-b"), "{why}");
        assert_eq!(plan_attach(&volume("available", &[]), "i-b", "/dev/sdf"), AttachPlan::Attach);
        assert!(matches!(plan_attach(&volume("creating", &[]), "i-b", "x"), AttachPlan::NotYet(_)));
        assert!(matches!(plan_attach(&volume("deleted", &[]), "i-b", "x"), AttachPlan::Refuse(_)));
        let detaching_elsewhere = volume("in-use", &[("i-a", "/dev/sdf", "detaching")]);
        assert!(matches!(
            plan_attach(&detaching_elsewhere, "i-b", "/dev/sdf"),
            AttachPlan::NotYet(_)
        ));
        let attaching = volume("in-use", &[("i-b", "/dev/sdf", "attaching")]);
        assert_eq!(plan_attach(&attaching, "i-b", "/dev/sdf"), AttachPlan::Wait);
    }

    /// Recorded `DescribeVolumes` states during an attach: available, attaching, attached.
    #[test]
    fn attach_wait_follows_the_transitional_states() {
        let seen = [
            volume("available", &[]),
            volume("in-use", &[("i-b", "/dev/sdf", "attaching")]),
            volume("in-use", &[("i-b", "/dev/sdf", "busy")]),
            volume("in-use", &[("i-b", "/dev/sdf", "attached")]),
        ];
        let progress: Vec<bool> = seen
            .iter()
            .map(|v| attach_progress(v, "i-b", "/dev/sdf") == Progress::Done(()))
            .collect();
        assert_eq!(progress, [false, false, true, true]);
        assert!(matches!(attach_progress(&seen[0], "i-b", "/dev/sdf"), Progress::Waiting(_)));
        let stolen = volume("in-use", &[("i-c", "/dev/sdf", "attached")]);
        assert!(matches!(attach_progress(&stolen, "i-b", "/dev/sdf"), Progress::Failed(_)));
    }

    /// Recorded `DescribeVolumes` states during a detach: attached, detaching, available.
    #[test]
    fn detach_plan_and_wait_follow_the_transitional_states() {
        let attached = volume("in-use", &[("i-a", "/dev/sdf", "attached")]);
        assert_eq!(plan_detach(&attached, "i-a"), DetachPlan::Detach { device: "/dev/sdf".into() });
        let detaching = volume("in-use", &[("i-a", "/dev/sdf", "detaching")]);
        assert_eq!(plan_detach(&detaching, "i-a"), DetachPlan::Wait { device: "/dev/sdf".into() });
        assert_eq!(plan_detach(&volume("available", &[]), "i-a"), DetachPlan::NotAttached);
        assert_eq!(plan_detach(&attached, "i-b"), DetachPlan::NotAttached);

        assert!(matches!(detach_progress(&attached, "i-a"), Progress::Waiting(_)));
        assert!(matches!(detach_progress(&detaching, "i-a"), Progress::Waiting(_)));
        let detached = volume("in-use", &[("i-a", "/dev/sdf", "detached")]);
        assert_eq!(detach_progress(&detached, "i-a"), Progress::Done(()));
        assert_eq!(detach_progress(&volume("available", &[]), "i-a"), Progress::Done(()));
        assert!(matches!(detach_progress(&volume("deleted", &[]), "i-a"), Progress::Failed(_)));
    }

    #[test]
    fn detach_marker_matches_instance_and_key() {
        let mut v = volume("available", &[]);
        v.tags.push((DETACH_MARKER_TAG.into(), "i-a /dev/sdf op-1-detach step".into()));
        assert_eq!(v.detach_marker("i-a", "op-1-detach step"), Some("/dev/sdf".into()));
        assert_eq!(v.detach_marker("i-a", "op-2-detach"), None);
        assert_eq!(v.detach_marker("i-b", "op-1-detach step"), None);
    }
}
