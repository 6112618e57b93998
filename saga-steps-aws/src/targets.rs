//! Load balancer targets as `DescribeTargetHealth` shows them, and the pure decisions the
//! register and deregister steps take from them.

use aws_sdk_elasticloadbalancingv2::types::{TargetDescription, TargetHealthDescription};
use aws_sdk_elasticloadbalancingv2::Client;
use saga_core::StepError;
use serde::{Deserialize, Serialize};

use crate::error::{classify_sdk_error, code_of};
use crate::wait::Progress;

/// One target of a target group: an instance id, an IP address or a Lambda ARN, and a port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    /// The target's id.
    pub id: String,
    /// Its port; `None` means the target group's port (and matches any port when looking).
    pub port: Option<i32>,
}

impl Target {
    /// A target on the target group's port.
    pub fn new(id: impl Into<String>) -> Self {
        Target { id: id.into(), port: None }
    }

    /// A target on this port.
    pub fn with_port(id: impl Into<String>, port: i32) -> Self {
        Target { id: id.into(), port: Some(port) }
    }

    pub(crate) fn to_sdk(&self) -> TargetDescription {
        TargetDescription::builder().id(&self.id).set_port(self.port).build()
    }
}

/// Targets of one target group: the input and output of `RegisterTargets` and `DeregisterTargets`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetSet {
    /// The target group's ARN.
    pub target_group_arn: String,
    /// The targets.
    pub targets: Vec<Target>,
}

impl TargetSet {
    /// These targets of this target group.
    pub fn new(target_group_arn: impl Into<String>, targets: Vec<Target>) -> Self {
        TargetSet { target_group_arn: target_group_arn.into(), targets }
    }
}

/// A registered target and its health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TargetView {
    pub(crate) id: String,
    pub(crate) port: Option<i32>,
    /// `initial`, `healthy`, `unhealthy`, `unhealthy.draining`, `unused`, `draining`,
    /// `unavailable`.
    pub(crate) state: String,
    /// `Target.NotRegistered`, `Target.FailedHealthChecks`, ...
    pub(crate) reason: Option<String>,
}

impl TargetView {
    fn from_sdk(d: &TargetHealthDescription) -> Self {
        let target = d.target();
        let health = d.target_health();
        TargetView {
            id: target.and_then(|t| t.id()).unwrap_or_default().to_owned(),
            port: target.and_then(|t| t.port()),
            state: health
                .and_then(|h| h.state())
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            reason: health.and_then(|h| h.reason()).map(|r| r.as_str().to_owned()),
        }
    }

    fn is(&self, target: &Target) -> bool {
        self.id == target.id && target.port.is_none_or(|p| self.port == Some(p))
    }

    /// Registered and staying: not on its way out, and not reported as unregistered.
    fn is_registered(&self) -> bool {
        !self.is_leaving() && self.reason.as_deref() != Some("Target.NotRegistered")
    }

    fn is_leaving(&self) -> bool {
        matches!(self.state.as_str(), "draining" | "unhealthy.draining")
    }

    /// Healthy, or not health-checked at all.
    fn is_healthy(&self) -> bool {
        self.state == "healthy"
            || (self.state == "unavailable"
                && self.reason.as_deref() == Some("Target.HealthCheckDisabled"))
    }

    fn describe(&self) -> String {
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        match &self.reason {
            Some(reason) => format!("{}{port} {} ({reason})", self.id, self.state),
            None => format!("{}{port} {}", self.id, self.state),
        }
    }
}

/// Every target registered with the target group (draining ones included), with its health.
pub(crate) async fn describe_targets(
    client: &Client,
    target_group_arn: &str,
) -> Result<Vec<TargetView>, StepError> {
    let answer = client
        .describe_target_health()
        .target_group_arn(target_group_arn)
        .send()
        .await
        .map_err(|e| classify_sdk_error("DescribeTargetHealth", &e))?;
    Ok(answer.target_health_descriptions().iter().map(TargetView::from_sdk).collect())
}

/// Like [`describe_targets`], but `None` when the target group does not exist.
pub(crate) async fn describe_targets_if_any(
    client: &Client,
    target_group_arn: &str,
) -> Result<Option<Vec<TargetView>>, StepError> {
    match client.describe_target_health().target_group_arn(target_group_arn).send().await {
        Ok(answer) => {
            Ok(Some(answer.target_health_descriptions().iter().map(TargetView::from_sdk).collect()))
        }
        Err(e) if code_of(&e) == Some("TargetGroupNotFound") => Ok(None),
        Err(e) => Err(classify_sdk_error("DescribeTargetHealth", &e)),
    }
}

/// The targets of `wanted` that are not registered (absent, or on their way out).
pub(crate) fn not_registered(views: &[TargetView], wanted: &[Target]) -> Vec<Target> {
    wanted.iter().filter(|t| !views.iter().any(|v| v.is(t) && v.is_registered())).cloned().collect()
}

/// The targets of `wanted` that are registered, with the port they are registered on.
pub(crate) fn registered(views: &[TargetView], wanted: &[Target]) -> Vec<Target> {
    views
        .iter()
        .filter(|v| v.is_registered() && wanted.iter().any(|t| v.is(t)))
        .map(|v| Target { id: v.id.clone(), port: v.port })
        .collect()
}

/// The healthy targets that are not in `excluded`.
pub(crate) fn healthy_others<'a>(
    views: &'a [TargetView],
    excluded: &[Target],
) -> Vec<&'a TargetView> {
    views.iter().filter(|v| v.is_healthy() && !excluded.iter().any(|t| v.is(t))).collect()
}

/// Whether every target of `wanted` is registered and healthy.
pub(crate) fn healthy_progress(views: &[TargetView], wanted: &[Target]) -> Progress<()> {
    let pending: Vec<String> = wanted
        .iter()
        .filter_map(|t| match views.iter().find(|v| v.is(t)) {
            Some(v) if v.is_healthy() => None,
            Some(v) => Some(v.describe()),
            None => Some(format!("{} not registered", t.id)),
        })
        .collect();
    if pending.is_empty() {
        Progress::Done(())
    } else {
        Progress::Waiting(pending.join(", "))
    }
}

/// Whether every target of `wanted` is gone from the target group (drained).
pub(crate) fn gone_progress(views: &[TargetView], wanted: &[Target]) -> Progress<()> {
    let staying: Vec<String> = views
        .iter()
        .filter(|v| {
            v.reason.as_deref() != Some("Target.NotRegistered") && wanted.iter().any(|t| v.is(t))
        })
        .map(TargetView::describe)
        .collect();
    if staying.is_empty() {
        Progress::Done(())
    } else {
        Progress::Waiting(staying.join(", "))
    }
}

/// Text listing targets, for messages.
pub(crate) fn describe_views(views: &[&TargetView]) -> String {
    if views.is_empty() {
        "none".into()
    } else {
        views.iter().map(|v| v.describe()).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: &str, state: &str, reason: Option<&str>) -> TargetView {
        TargetView {
            id: id.into(),
            port: Some(80),
            state: state.into(),
            reason: reason.map(str::to_owned),
        }
    }

    /// Recorded `DescribeTargetHealth` states after a registration: initial, unhealthy, healthy.
    #[test]
    fn healthy_wait_follows_the_transitional_states() {
        let wanted = [Target::new("i-new")];
        assert_eq!(
            healthy_progress(&[], &wanted),
            Progress::Waiting("i-new not registered".into())
        );
        let initial = [view("i-new", "initial", Some("Elb.RegistrationInProgress"))];
        assert_eq!(
            healthy_progress(&initial, &wanted),
            Progress::Waiting("i-new:80 initial (Elb.RegistrationInProgress)".into())
        );
        let unhealthy = [view("i-new", "unhealthy", Some("Target.FailedHealthChecks"))];
        assert!(matches!(healthy_progress(&unhealthy, &wanted), Progress::Waiting(_)));
        let healthy = [view("i-old", "healthy", None), view("i-new", "healthy", None)];
        assert_eq!(healthy_progress(&healthy, &wanted), Progress::Done(()));
        let unchecked = [view("i-new", "unavailable", Some("Target.HealthCheckDisabled"))];
        assert_eq!(healthy_progress(&unchecked, &wanted), Progress::Done(()));
        // Ports must match when given.
        assert!(matches!(
            healthy_progress(&healthy, &[Target::with_port("i-new", 8080)]),
            Progress::Waiting(_)
        ));
    }

    /// Recorded `DescribeTargetHealth` states after a deregistration: draining, then absent.
    #[test]
    fn gone_wait_follows_the_transitional_states() {
        let wanted = [Target::new("i-old")];
        let draining = [view("i-old", "draining", Some("Target.DeregistrationInProgress"))];
        assert!(matches!(gone_progress(&draining, &wanted), Progress::Waiting(_)));
        assert_eq!(gone_progress(&[view("i-new", "healthy", None)], &wanted), Progress::Done(()));
        let unused = [view("i-old", "unused", Some("Target.NotRegistered"))];
        assert_eq!(gone_progress(&unused, &wanted), Progress::Done(()));
        assert!(matches!(
            gone_progress(&[view("i-old", "healthy", None)], &wanted),
            Progress::Waiting(_)
        ));
    }

    #[test]
    fn registration_checks_and_the_healthy_guard() {
        let views = [
            view("i-old", "healthy", None),
            view("i-new", "initial", None),
            view("i-gone", "draining", None),
        ];
        let wanted = [Target::new("i-new"), Target::new("i-gone"), Target::new("i-other")];
        assert_eq!(
            not_registered(&views, &wanted),
            [Target::new("i-gone"), Target::new("i-other")]
        );
        assert_eq!(registered(&views, &wanted), [Target::with_port("i-new", 80)]);
        assert_eq!(healthy_others(&views, &[Target::new("i-new")]).len(), 1);
        assert!(healthy_others(&views, &[Target::new("i-old")]).is_empty());
    }
}
