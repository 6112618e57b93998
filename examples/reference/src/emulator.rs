//! Resources in the AWS API emulator that the examples set up once: instances, volumes, target
//! groups. Each is tagged (or named) by app and role, so that set-up finds what it made before.

use aws_sdk_ec2::types::{Filter, InstanceType, Placement, ResourceType, Tag, TagSpecification};
use aws_sdk_elasticloadbalancingv2::types::ProtocolEnum;

use crate::{BoxError, Clients};

/// The availability zone of every instance and volume (a volume attaches only in its zone).
pub const ZONE: &str = "us-east-1a";

const APP_TAG: &str = "saga-example-app";
const ROLE_TAG: &str = "saga-example-role";

fn tags(resource: ResourceType, app: &str, role: &str) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(resource)
        .tags(Tag::builder().key(APP_TAG).value(app).build())
        .tags(Tag::builder().key(ROLE_TAG).value(role).build())
        .build()
}

fn tag_filters(app: &str, role: &str) -> [Filter; 2] {
    [
        Filter::builder().name(format!("tag:{APP_TAG}")).values(app).build(),
        Filter::builder().name(format!("tag:{ROLE_TAG}")).values(role).build(),
    ]
}

/// The running (or stopped) instance of app `app` in role `role`, started now if there is none.
pub async fn instance(
    clients: &Clients,
    app: &str,
    role: &str,
    kind: InstanceType,
) -> Result<String, BoxError> {
    let [by_app, by_role] = tag_filters(app, role);
    let alive = Filter::builder()
        .name("instance-state-name")
        .values("pending")
        .values("running")
        .values("stopping")
        .values("stopped")
        .build();
    let found = clients
        .ec2
        .describe_instances()
        .filters(by_app)
        .filters(by_role)
        .filters(alive)
        .send()
        .await?;
    if let Some(id) =
        found.reservations().iter().flat_map(|r| r.instances()).find_map(|i| i.instance_id())
    {
        return Ok(id.to_owned());
    }
    let started = clients
        .ec2
        .run_instances()
        .image_id("ami-12345678")
        .instance_type(kind)
        .min_count(1)
        .max_count(1)
        .placement(Placement::builder().availability_zone(ZONE).build())
        .tag_specifications(tags(ResourceType::Instance, app, role))
        .send()
        .await?;
    let id = started.instances().first().and_then(|i| i.instance_id());
    Ok(id.ok_or("RunInstances returned no instance")?.to_owned())
}

/// Whether the instance exists (and is not terminated): the emulator forgets everything when it
/// restarts, and then a recorded set-up is made again.
pub async fn instance_exists(clients: &Clients, id: &str) -> bool {
    match clients.ec2.describe_instances().instance_ids(id).send().await {
        Ok(answer) => {
            answer.reservations().iter().flat_map(|r| r.instances()).any(|i| {
                i.state().and_then(|s| s.name()).is_some_and(|s| s.as_str() != "terminated")
            })
        }
        Err(_) => false,
    }
}

/// The volume of app `app` in role `role`, created now (`size_gib` GiB, in [`ZONE`]) if there is
/// none.
pub async fn volume(
    clients: &Clients,
    app: &str,
    role: &str,
    size_gib: i32,
) -> Result<String, BoxError> {
    let [by_app, by_role] = tag_filters(app, role);
    let found = clients.ec2.describe_volumes().filters(by_app).filters(by_role).send().await?;
    if let Some(id) = found.volumes().iter().find_map(|v| v.volume_id()) {
        return Ok(id.to_owned());
    }
    let created = clients
        .ec2
        .create_volume()
        .availability_zone(ZONE)
        .size(size_gib)
        .tag_specifications(tags(ResourceType::Volume, app, role))
        .send()
        .await?;
    Ok(created.volume_id().ok_or("CreateVolume returned no volume id")?.to_owned())
}

/// The volume's size in GiB and its live attachments as `(instance, device)`.
pub async fn volume_state(
    clients: &Clients,
    volume: &str,
) -> Result<(i32, Vec<(String, String)>), BoxError> {
    let answer = clients.ec2.describe_volumes().volume_ids(volume).send().await?;
    let v = answer.volumes().first().ok_or_else(|| format!("no volume {volume}"))?;
    let attachments = v
        .attachments()
        .iter()
        .filter(|a| a.state().is_some_and(|s| s.as_str() != "detached"))
        .map(|a| {
            let instance = a.instance_id().unwrap_or_default().to_owned();
            (instance, a.device().unwrap_or_default().to_owned())
        })
        .collect();
    Ok((v.size().unwrap_or_default(), attachments))
}

/// Attaches the volume to the instance at `device` unless it is attached somewhere already.
pub async fn ensure_attached(
    clients: &Clients,
    volume: &str,
    instance: &str,
    device: &str,
) -> Result<(), BoxError> {
    let (_, attachments) = volume_state(clients, volume).await?;
    if attachments.is_empty() {
        clients
            .ec2
            .attach_volume()
            .volume_id(volume)
            .instance_id(instance)
            .device(device)
            .send()
            .await?;
    }
    Ok(())
}

/// The HTTP target group named `name` (instance targets, port 80, in the default VPC), created
/// now if there is none. Returns its ARN.
pub async fn target_group(clients: &Clients, name: &str) -> Result<String, BoxError> {
    if let Ok(found) = clients.elb.describe_target_groups().names(name).send().await {
        if let Some(arn) = found.target_groups().first().and_then(|g| g.target_group_arn()) {
            return Ok(arn.to_owned());
        }
    }
    let vpcs = clients.ec2.describe_vpcs().send().await?;
    let vpc = vpcs.vpcs().first().and_then(|v| v.vpc_id()).ok_or("no default VPC")?;
    let created = clients
        .elb
        .create_target_group()
        .name(name)
        .protocol(ProtocolEnum::Http)
        .port(80)
        .vpc_id(vpc)
        .send()
        .await?;
    let arn = created.target_groups().first().and_then(|g| g.target_group_arn());
    Ok(arn.ok_or("CreateTargetGroup returned no ARN")?.to_owned())
}

/// The target group's registered targets as `(id, state)`, or `None` if it does not exist.
pub async fn targets(
    clients: &Clients,
    target_group_arn: &str,
) -> Result<Option<Vec<(String, String)>>, BoxError> {
    let answer = match clients
        .elb
        .describe_target_health()
        .target_group_arn(target_group_arn)
        .send()
        .await
    {
        Ok(answer) => answer,
        Err(e) if format!("{e:?}").contains("TargetGroupNotFound") => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(Some(
        answer
            .target_health_descriptions()
            .iter()
            .map(|d| {
                let id = d.target().and_then(|t| t.id()).unwrap_or_default().to_owned();
                let state = d.target_health().and_then(|h| h.state());
                (id, state.map(|s| s.as_str().to_owned()).unwrap_or_default())
            })
            .collect(),
    ))
}
