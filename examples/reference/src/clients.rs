//! The clients of the two services: the local Docker Engine and the AWS API emulator.

use std::fmt;

use aws_config::{BehaviorVersion, Region};
use bollard::Docker;

use crate::BoxError;

/// A Docker client and the EC2 and ELBv2 clients of the emulator.
#[derive(Clone)]
pub struct Clients {
    /// The local Docker Engine, API version negotiated.
    pub docker: Docker,
    /// EC2 at the emulator.
    pub ec2: aws_sdk_ec2::Client,
    /// ELBv2 at the emulator.
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
}

impl fmt::Debug for Clients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clients").finish_non_exhaustive()
    }
}

impl Clients {
    /// Connects to the local Docker Engine (negotiating the API version: the engine may be older
    /// than bollard's default) and builds AWS clients for the emulator at `aws_endpoint`, in
    /// `us-east-1`. The credentials come from the usual AWS environment; when none are set, dummy
    /// ones (an emulator accepts anything).
    pub async fn connect(aws_endpoint: &str) -> Result<Clients, BoxError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| format!("cannot connect to the Docker Engine: {e}"))?
            .negotiate_version()
            .await
            .map_err(|e| format!("the Docker Engine does not answer: {e}"))?;
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).endpoint_url(aws_endpoint).region(
                Region::new(std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_owned())),
            );
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            loader = loader.credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "testing", "testing", None, None, "emulator",
            ));
        }
        let config = loader.load().await;
        Ok(Clients {
            docker,
            ec2: aws_sdk_ec2::Client::new(&config),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(&config),
        })
    }
}
