//! A real executor on the sled store in a temporary directory, served by the router on
//! 127.0.0.1 by a real axum server; the sagas its tests run; an HTTP client.

use std::net::SocketAddr;
use std::sync::{Arc, Once};
use std::time::Duration;

use saga_admin::{router, Admin, BearerTokens, Grant};
use saga_core::log::{FollowEvent, OperationLogLayer};
use saga_core::{
    async_trait, Executed, Executor, OperationId, Resource, Saga, Start, Step, StepContext,
    StepError, StepKind,
};
use saga_store::SledStore;
use serde::{Deserialize, Serialize};
use tracing_subscriber::prelude::*;

/// Sees every environment, may cancel.
pub(crate) const ADMIN: &str = "admin-token-0123456789";
/// Sees `staging` only, may cancel.
pub(crate) const STAGING: &str = "staging-token-0123456789";
/// Sees `prod` only, read-only.
pub(crate) const VIEWER: &str = "viewer-token-0123456789";

/// What the test sagas' steps do.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Params {
    /// `rollout` waits until the Operation is cancelled.
    pub block: bool,
    /// `rollout` fails for good.
    pub fail: bool,
}

struct Prepare;
#[async_trait]
impl Step for Prepare {
    type Output = String;
    async fn execute(&self, ctx: &StepContext) -> Result<String, StepError> {
        tracing::info!("preparing {}", ctx.resource().name);
        Ok("ready".into())
    }
    async fn compensate(&self, _: &StepContext, _: Executed<String>) -> Result<(), StepError> {
        tracing::info!("unpreparing");
        Ok(())
    }
}

struct Rollout;
#[async_trait]
impl Step for Rollout {
    type Output = ();
    async fn execute(&self, ctx: &StepContext) -> Result<(), StepError> {
        let params: Params = ctx.params()?;
        if params.fail {
            return Err(StepError::permanent("health check failed"));
        }
        if params.block {
            tracing::info!("rolling out; waiting until cancelled");
            ctx.cancellation().cancelled().await;
            return Err(StepError::cancelled());
        }
        Ok(())
    }
    async fn compensate(&self, _: &StepContext, _: Executed<()>) -> Result<(), StepError> {
        tracing::info!("rolling the rollout back");
        Ok(())
    }
}

struct Migrate;
#[async_trait]
impl Step for Migrate {
    type Output = ();
    async fn execute(&self, _: &StepContext) -> Result<(), StepError> {
        Ok(())
    }
    fn kind(&self) -> StepKind {
        StepKind::Irreversible
    }
}

struct Verify;
#[async_trait]
impl Step for Verify {
    type Output = ();
    async fn execute(&self, _: &StepContext) -> Result<(), StepError> {
        Err(StepError::permanent("schema check failed"))
    }
}

/// A running server over a fresh store.
pub(crate) struct Server {
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    /// The executor behind it.
    pub(crate) executor: Executor,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

static TRACING: Once = Once::new();

/// Starts a server.
pub(crate) async fn server() -> Server {
    TRACING.call_once(|| {
        let _ = tracing_subscriber::registry().with(OperationLogLayer::new()).try_init();
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SledStore::open(dir.path().join("store")).expect("sled store");
    let deploy = Saga::builder("deploy", 1)
        .step("prepare", Prepare)
        .step("rollout", Rollout)
        .build()
        .expect("deploy saga");
    let migrate = Saga::builder("migrate", 1)
        .step("migrate", Migrate)
        .step("verify", Verify)
        .build()
        .expect("migrate saga");
    let executor = Executor::builder(Arc::new(store))
        .owner("admin-test")
        .saga(deploy)
        .saga(migrate)
        .build()
        .expect("executor");
    let tokens = BearerTokens::new()
        .token(ADMIN, Grant::all("root"))
        .token(STAGING, Grant::only("stager", ["staging"]))
        .token(VIEWER, Grant::only("viewer", ["prod"]).read_only());
    let app = router(Admin::new(executor.clone(), Arc::new(tokens)));
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server { url, executor, _dir: dir, task }
}

impl Server {
    /// Starts an Operation of `saga` on `resource` in `environment`.
    pub(crate) async fn start(
        &self,
        saga: &str,
        environment: &str,
        resource: &str,
        params: Params,
    ) -> OperationId {
        self.executor
            .start(
                Start::new(saga, Resource::new("app", resource))
                    .params(&params)
                    .environment(environment)
                    .actor("alice"),
            )
            .await
            .expect("start")
    }

    /// Starts an Operation and waits for its outcome.
    pub(crate) async fn finished(
        &self,
        saga: &str,
        environment: &str,
        resource: &str,
        params: Params,
    ) -> OperationId {
        let id = self.start(saga, environment, resource, params).await;
        self.executor.wait(id).await.expect("outcome");
        id
    }

    /// Starts an Operation whose `rollout` waits until cancelled, and waits until it does.
    pub(crate) async fn blocked(&self, environment: &str, resource: &str) -> OperationId {
        let id =
            self.start("deploy", environment, resource, Params { block: true, fail: false }).await;
        let mut follower = self.executor.follow(id).await.expect("follow");
        let reached = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(event) = follower.next().await {
                if let FollowEvent::Line(line) = event {
                    if line.message.contains("waiting until cancelled") {
                        return true;
                    }
                }
            }
            false
        })
        .await;
        assert_eq!(reached.ok(), Some(true), "operation {id} did not reach its waiting step");
        id
    }

    /// `GET` with a token.
    pub(crate) async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = http().get(format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request")
    }

    /// `POST` JSON with a token.
    pub(crate) async fn post(
        &self,
        path: &str,
        token: &str,
        body: serde_json::Value,
    ) -> reqwest::Response {
        http()
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("request")
    }
}

/// A client with a timeout, so that a hung endpoint fails the test instead of hanging it.
pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client")
}

/// The JSON of a response, with its status.
pub(crate) async fn json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, value)
}
