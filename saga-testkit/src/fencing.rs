//! Fencing a resource against a stale executor: a [`FencedResource`] that keeps the highest
//! [`FencingToken`] it has seen per Operation and refuses a write with a lower one, and the check
//! [`stale_write_is_refused`], which shows that the tokens an executor hands its steps fence
//! such a resource on any store.
//!
//! No engine can stop a process in the middle of a write it already sent: an executor paused
//! (SIGSTOP, a VM migration) between deciding and writing may deliver its write after another
//! executor took the Operation over. The resource itself must refuse it, and the token is how
//! it tells: it grows with every claim of the Operation (see the `Step` docs in saga-core).
//!
//! ```
//! use saga_core::{FencingToken, OperationId};
//! use saga_testkit::fencing::FencedResource;
//!
//! let resource = FencedResource::default();
//! let op = OperationId::from_u128(1);
//! let old = FencingToken { operation: op, epoch: 1 };
//! let new = FencingToken { operation: op, epoch: 2 };
//! resource.write(new, "from the new owner")?;
//! assert!(resource.write(old, "from a stale executor").is_err());
//! assert_eq!(resource.value().as_deref(), Some("from the new owner"));
//! # Ok::<(), saga_testkit::fencing::StaleToken>(())
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use saga_core::store::Store;
use saga_core::{
    async_trait, Executor, FencingToken, OperationId, Outcome, Resource, Saga, Start, Step,
    StepContext, StepError,
};
use tokio::sync::Notify;

/// A write refused by a [`FencedResource`]: its token is older than one the resource has seen
/// for the same Operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stale write: token {presented} is older than {seen}, which the resource has seen")]
pub struct StaleToken {
    /// The token of the refused write.
    pub presented: FencingToken,
    /// The highest token seen for that Operation.
    pub seen: FencingToken,
}

/// A resource that refuses a stale executor's write: it keeps the highest fencing token seen
/// per Operation, and a write with a lower one is [`StaleToken`]. Its value is the last write
/// accepted; it keeps every write, accepted or refused, in order. Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct FencedResource {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    highest: HashMap<OperationId, FencingToken>,
    value: Option<String>,
    writes: Vec<(FencingToken, String, bool)>,
}

impl FencedResource {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes `value` under `token`, unless a newer token of the same Operation was seen.
    ///
    /// # Errors
    ///
    /// [`StaleToken`] when `token` is older than the highest seen for its Operation; nothing
    /// is written.
    pub fn write(&self, token: FencingToken, value: impl Into<String>) -> Result<(), StaleToken> {
        let value = value.into();
        let mut inner = self.lock();
        let seen = *inner.highest.entry(token.operation).or_insert(token);
        if token < seen {
            inner.writes.push((token, value, false));
            return Err(StaleToken { presented: token, seen });
        }
        inner.highest.insert(token.operation, token);
        inner.value = Some(value.clone());
        inner.writes.push((token, value, true));
        Ok(())
    }

    /// The last value written (accepted).
    pub fn value(&self) -> Option<String> {
        self.lock().value.clone()
    }

    /// Every write in the order it arrived: its token, its value, and whether it was accepted.
    pub fn writes(&self) -> Vec<(FencingToken, String, bool)> {
        self.lock().writes.clone()
    }
}

/// What went wrong in [`stale_write_is_refused`].
#[derive(Debug, thiserror::Error)]
#[error("check `a stale executor's write is refused by a fenced resource` failed: {0}")]
pub struct FencingCheckFailed(String);

/// Writes sent and not delivered yet, each a task that delivers it when let through.
type LateWrites = Arc<Mutex<Vec<tokio::task::JoinHandle<Result<(), StaleToken>>>>>;

/// The step of the check: its first attempt sends its write but the write is delivered late (it
/// waits, "in the network", until the check lets it through) and the attempt never ends; a
/// later attempt writes at once.
struct Writer {
    resource: FencedResource,
    late: LateWrites,
    deliver: Arc<Notify>,
}

#[async_trait]
impl Step for Writer {
    type Output = u64;

    async fn execute(&self, ctx: &StepContext) -> Result<u64, StepError> {
        let token = ctx.fencing_token();
        if ctx.attempt() == 1 {
            let (resource, deliver) = (self.resource.clone(), self.deliver.clone());
            let sent = tokio::spawn(async move {
                deliver.notified().await;
                resource.write(token, format!("written by epoch {}", token.epoch))
            });
            self.late.lock().unwrap_or_else(|p| p.into_inner()).push(sent);
            std::future::pending::<()>().await;
        }
        self.resource
            .write(token, format!("written by epoch {}", token.epoch))
            .map_err(StepError::permanent)?;
        Ok(token.epoch)
    }

    /// The stopped attempt is dropped at once.
    fn cancel_grace(&self) -> Duration {
        Duration::from_millis(10)
    }
}

/// The check **a stale executor's write is refused by a fenced resource**, on `store` (an
/// empty one): an executor runs a step whose write is sent under its fencing token and
/// delivered late; the executor stops (a shutdown past its deadline drops the step, as a lost
/// lease would) and a second executor takes the Operation over, runs the step again with its
/// own, higher token and finishes; only then is the first write delivered, and the resource
/// refuses it. The resource ends with the second executor's value.
///
/// # Errors
///
/// [`FencingCheckFailed`] saying what differed (an engine whose tokens do not grow, a store
/// that repeats an epoch).
pub async fn stale_write_is_refused(store: Arc<dyn Store>) -> Result<(), FencingCheckFailed> {
    let fail = |what: String| Err(FencingCheckFailed(what));
    let resource = FencedResource::default();
    let late: LateWrites = Arc::default();
    let deliver = Arc::new(Notify::new());
    let saga = || {
        let step =
            Writer { resource: resource.clone(), late: late.clone(), deliver: deliver.clone() };
        Saga::builder("fenced-write", 1).step("write", step).build()
    };
    let executor = |owner: &str| -> Result<Executor, FencingCheckFailed> {
        let saga = saga().map_err(|e| FencingCheckFailed(e.to_string()))?;
        Executor::builder(store.clone())
            .owner(owner)
            .lease_ttl(Duration::from_secs(5))
            .takeover_interval(None)
            .saga(saga)
            .build()
            .map_err(|e| FencingCheckFailed(e.to_string()))
    };
    let first = executor("first")?;
    let request = Start::new("fenced-write", Resource::new("resource", "fenced")).actor("check");
    let id = first.start(request).await.map_err(|e| FencingCheckFailed(e.to_string()))?;
    let sent = tokio::time::timeout(Duration::from_secs(10), async {
        while late.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    if sent.is_err() {
        return fail("the first attempt never sent its write".into());
    }
    // The first executor stops; the step is dropped, its write still on its way.
    let report = first.shutdown(Duration::from_millis(10)).await;
    if report.left != [id] {
        return fail(format!("the first executor left {:?}, not the Operation", report.left));
    }
    let second = executor("second")?;
    let recovered = second.recover().await.map_err(|e| FencingCheckFailed(e.to_string()))?;
    if recovered.resumed != [id] {
        return fail(format!("the second executor resumed {:?}", recovered.resumed));
    }
    let outcome = second
        .wait_timeout(id, Duration::from_secs(20))
        .await
        .map_err(|e| FencingCheckFailed(e.to_string()))?;
    if outcome != Outcome::Succeeded {
        return fail(format!("the Operation ended {outcome}"));
    }
    // Now the stale write arrives.
    deliver.notify_waiters();
    let sent = late.lock().unwrap_or_else(|p| p.into_inner()).pop();
    let Some(sent) = sent else { return fail("no late write".into()) };
    let delivered = sent.await.map_err(|e| FencingCheckFailed(e.to_string()))?;
    match delivered {
        Err(StaleToken { presented, seen }) if presented.epoch < seen.epoch => {}
        Err(other) => return fail(format!("refused, but with {other}")),
        Ok(()) => {
            return fail(format!(
                "the stale write was accepted after the takeover: {:?}",
                resource.writes()
            ))
        }
    }
    match resource.value() {
        Some(value) if value.starts_with("written by epoch") && !value.ends_with("epoch 1") => {
            Ok(())
        }
        other => fail(format!("the resource ended with {other:?}")),
    }
}
