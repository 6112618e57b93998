//! The `Step` trait, its context and what `compensate` is told of the execute.

use std::any::type_name;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use crate::error::ContextError;
use crate::error::StepError;
use crate::id::OperationId;
use crate::record::Resource;
use crate::retry::RetryPolicy;
use crate::saga::Saga;

/// What kind of change a step makes, which decides what the rollback does with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StepKind {
    /// The step has a real undo: the rollback runs `compensate`.
    Compensable,
    /// The step cannot be undone (a migration, a grown volume): the rollback skips it and the
    /// outcome names it as not undone.
    Irreversible,
    /// The step changes nothing: the rollback skips it and reports nothing.
    ReadOnly,
}

/// What is known of a step's `execute` when `compensate` runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Executed<O> {
    /// `execute` returned this output.
    Succeeded(O),
    /// `execute` returned this error (its last attempt). The effect may still have happened in part.
    Failed(String),
    /// An attempt started but its outcome was never recorded (a crash): it may or may not have run.
    Unknown,
}

/// One step of a saga: a side effect and its undo.
///
/// # Contract
///
/// - `execute` runs **at least once** per successful step: an attempt whose start is durable but
///   whose outcome is not may run again after a crash. It must be idempotent; use
///   [`StepContext::idempotency_key`] for APIs that take a client token.
/// - Its output is serialized (JSON) and recorded durably before any later step starts; later
///   steps read it with [`StepContext::output`] and `compensate` receives it.
/// - `compensate` runs when the Operation rolls back, for every step that *started* — also the
///   one that failed and one whose outcome a crash left unknown — so it receives [`Executed`] and
///   must cope with a partial or absent effect. It is retried like `execute` and must be idempotent
///   too. Nothing cancels a compensation.
/// - `execute` should watch [`StepContext::cancellation`] in long waits; when the Operation is
///   cancelled the engine also stops polling `execute` and records it as failed ("cancelled").
/// - Return [`StepError::transient`] for errors worth retrying and [`StepError::permanent`]
///   otherwise.
///
/// # Leases, and fencing the systems a step changes
///
/// An executor runs a step only while it holds the Operation's lease. It renews the lease while
/// the step runs; when it sees (after any pause of the process, at any wake-up) that it could no
/// longer be sure to hold it, it stops polling `execute` (or `compensate`) at once, so no more of
/// the step's code runs there, sends nothing more for the Operation, and another executor may
/// take it over and run the step again. While the lease is still held (a store that does not
/// answer renewals), the step's token fires first and it gets what is left of the lease, at
/// most [`cancel_grace`](Step::cancel_grace), to return.
///
/// No engine can stop a process in the middle of a write it already sent: a process paused
/// (SIGSTOP, a VM migration, a stalled host) between deciding and writing may still deliver that
/// write after another executor took over. The pattern every lease-based system needs is a
/// **fencing token**: [`StepContext::fencing_token`] grows with every claim of the Operation;
/// hand it to the system the step changes, which keeps the highest token it has seen per
/// Operation and refuses a change that carries a lower one (a conditional write, a version
/// column, a tag compared before the change). saga-testkit's `fencing` module has such a
/// resource and the check `stale_write_is_refused`; the reference deploy labels its containers
/// with the token and checks the label before it changes one.
///
/// ```
/// use async_trait::async_trait;
/// use saga_core::{Executed, Step, StepContext, StepError};
///
/// struct CreateUser;
///
/// #[async_trait]
/// impl Step for CreateUser {
///     type Output = u64;
///
///     async fn execute(&self, ctx: &StepContext) -> Result<u64, StepError> {
///         let name: String = ctx.params()?;
///         // Call an API that creates the user, passing ctx.idempotency_key() as the client token.
///         Ok(name.len() as u64)
///     }
///
///     async fn compensate(&self, _ctx: &StepContext, executed: Executed<u64>) -> Result<(), StepError> {
///         match executed {
///             Executed::Succeeded(_user_id) => { /* delete that user */ }
///             Executed::Failed(_) | Executed::Unknown => { /* look the user up by token, delete if present */ }
///         }
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Step: Send + Sync + 'static {
    /// What `execute` returns, recorded in the log.
    type Output: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Makes the change.
    async fn execute(&self, ctx: &StepContext) -> Result<Self::Output, StepError>;

    /// Undoes the change, given what is known of `execute`. Not called for irreversible and
    /// read-only steps. The default does nothing.
    async fn compensate(
        &self,
        ctx: &StepContext,
        executed: Executed<Self::Output>,
    ) -> Result<(), StepError> {
        let _ = (ctx, executed);
        Ok(())
    }

    /// What kind of change it makes. The default is [`StepKind::Compensable`].
    fn kind(&self) -> StepKind {
        StepKind::Compensable
    }

    /// How `execute` is retried. The default is [`RetryPolicy::default`].
    ///
    /// Before the saga's point of no return, transient errors are retried within this policy and
    /// a permanent error (or the policy running out) starts the rollback. After it, the
    /// Operation can only go forward: every error is retried within this policy, and when the
    /// policy runs out the Operation stops and needs attention
    /// ([`Phase::NeedsAttention`](crate::state::Phase::NeedsAttention),
    /// [`Error::NeedsAttention`](crate::Error::NeedsAttention)) until an operator retries the
    /// step ([`Executor::retry`](crate::Executor::retry), which starts this policy over) or
    /// abandons the Operation ([`Executor::abandon`](crate::Executor::abandon)). Give a step
    /// past the point of no return the patience it deserves here.
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::default()
    }

    /// How long one attempt of `execute` may take before it fails with a transient error. The
    /// default is none.
    fn timeout(&self) -> Option<Duration> {
        None
    }

    /// How long `execute` may go on once the Operation is cancelled (or a sibling branch of its
    /// parallel group failed): the step's [`cancellation`](StepContext::cancellation) token fires,
    /// and a step that watches it may clean up and return within this time. What it returns then
    /// is recorded as it returned (`StepSucceeded` or `StepFailed`); a step still running when
    /// the grace period ends is dropped and recorded as failed with `cancelled`. Either way it
    /// started, so the rollback compensates it. The default is 5 s.
    ///
    /// A shutdown past its deadline ([`Executor::shutdown`](crate::Executor::shutdown)) fires
    /// the same token with the same grace period, but rolls nothing back: a success is recorded,
    /// anything else is not, and `recover()` runs the step again.
    fn cancel_grace(&self) -> Duration {
        DEFAULT_CANCEL_GRACE
    }

    /// How `compensate` is retried; the default is the step's [`retry_policy`](Step::retry_policy).
    /// A compensation is retried on any error (a permanent one too) while this policy allows,
    /// since giving up leaves a change in place; once it no longer does, the change is reported
    /// as not undone. Give a slow or flaky cleanup more room here than its `execute` has.
    fn compensation_retry_policy(&self) -> RetryPolicy {
        self.retry_policy()
    }

    /// How long one attempt of `compensate` may take before it fails with a transient error; the
    /// default is the step's [`timeout`](Step::timeout).
    fn compensation_timeout(&self) -> Option<Duration> {
        self.timeout()
    }
}

/// Forwards every setting of [`Step`] (`kind`, `retry_policy`, `timeout`, `cancel_grace`,
/// `compensation_retry_policy`, `compensation_timeout`) to the step in field `$inner`: for a
/// wrapper that changes only `execute` and `compensate`, so that a setting added to `Step` is
/// forwarded by every wrapper at once instead of silently taking its default.
///
/// ```
/// use saga_core::{async_trait, forward_step_settings, Step, StepContext, StepError};
///
/// /// Logs around the step it wraps, and is that step in every other way.
/// struct Logged<S>(S);
///
/// #[async_trait]
/// impl<S: Step> Step for Logged<S> {
///     type Output = S::Output;
///     async fn execute(&self, ctx: &StepContext) -> Result<S::Output, StepError> {
///         tracing::info!("running");
///         self.0.execute(ctx).await
///     }
///     async fn compensate(
///         &self,
///         ctx: &StepContext,
///         executed: saga_core::Executed<S::Output>,
///     ) -> Result<(), StepError> {
///         self.0.compensate(ctx, executed).await
///     }
///     forward_step_settings!(0);
/// }
/// ```
#[macro_export]
macro_rules! forward_step_settings {
    ($inner:tt) => {
        fn kind(&self) -> $crate::StepKind {
            self.$inner.kind()
        }

        fn retry_policy(&self) -> $crate::RetryPolicy {
            self.$inner.retry_policy()
        }

        fn timeout(&self) -> ::std::option::Option<::std::time::Duration> {
            self.$inner.timeout()
        }

        fn cancel_grace(&self) -> ::std::time::Duration {
            self.$inner.cancel_grace()
        }

        fn compensation_retry_policy(&self) -> $crate::RetryPolicy {
            self.$inner.compensation_retry_policy()
        }

        fn compensation_timeout(&self) -> ::std::option::Option<::std::time::Duration> {
            self.$inner.compensation_timeout()
        }
    };
}

/// How long a cancelled step's `execute` may go on by default: see [`Step::cancel_grace`].
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(5);

/// The fencing token of one claim of an Operation: its id and the lease's epoch, which grows with
/// every claim (see [the `Step` docs](Step#leases-and-fencing-the-systems-a-step-changes)).
///
/// Tokens of one Operation compare by epoch: a system that keeps the highest token it has seen
/// for an Operation refuses a write with a lower one, which can only come from an executor that
/// lost the Operation to another. Written as `<operation>/<epoch>`, and read back with
/// [`str::parse`].
///
/// ```
/// use saga_core::{FencingToken, OperationId};
/// let token = FencingToken { operation: OperationId::from_u128(7), epoch: 3 };
/// let text = token.to_string();
/// assert!(text.ends_with("/3"));
/// assert_eq!(text.parse::<FencingToken>()?, token);
/// assert!(FencingToken { epoch: 4, ..token } > token);
/// # Ok::<(), saga_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FencingToken {
    /// The Operation.
    pub operation: OperationId,
    /// The epoch of the lease that the executor running the step holds.
    pub epoch: u64,
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.operation, self.epoch)
    }
}

impl std::str::FromStr for FencingToken {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || crate::error::Error::InvalidFencingToken(s.to_owned());
        let (operation, epoch) = s.split_once('/').ok_or_else(invalid)?;
        Ok(FencingToken {
            operation: operation.parse().map_err(|_| invalid())?,
            epoch: epoch.parse().map_err(|_| invalid())?,
        })
    }
}

/// What a step may read while it runs: the Operation's params, earlier steps' outputs, a
/// cancellation token, an idempotency key and a fencing token.
#[derive(Clone)]
pub struct StepContext {
    pub(crate) operation: Arc<OperationInfo>,
    pub(crate) step: Arc<str>,
    pub(crate) stage: usize,
    pub(crate) attempt: u32,
    pub(crate) outputs: Arc<Outputs>,
    pub(crate) saga: Arc<Saga>,
    pub(crate) cancel: CancellationToken,
}

/// Recorded outputs (JSON) of the steps that succeeded, by step name.
pub(crate) type Outputs = HashMap<String, Arc<[u8]>>;

/// What every step of one Operation shares.
#[derive(Debug)]
pub(crate) struct OperationInfo {
    pub(crate) id: OperationId,
    /// The epoch of the lease the driver holds.
    pub(crate) epoch: u64,
    pub(crate) environment: String,
    pub(crate) resource: Resource,
    pub(crate) actor: String,
    pub(crate) params: Arc<[u8]>,
}

impl fmt::Debug for StepContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepContext")
            .field("operation", &self.operation.id)
            .field("step", &self.step)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl StepContext {
    /// The Operation's id.
    pub fn operation_id(&self) -> OperationId {
        self.operation.id
    }

    /// This step's name.
    pub fn step_name(&self) -> &str {
        &self.step
    }

    /// The attempt, from 1 (for `compensate`, the compensation attempt).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The Operation's environment.
    pub fn environment(&self) -> &str {
        &self.operation.environment
    }

    /// The resource the Operation changes.
    pub fn resource(&self) -> &Resource {
        &self.operation.resource
    }

    /// Who started the Operation.
    pub fn actor(&self) -> &str {
        &self.operation.actor
    }

    /// The fencing token of the executor running this attempt: the Operation and its lease's
    /// epoch, which grows with every claim. Hand it to the system the step changes so that it
    /// can refuse a write from an executor that lost the Operation (see
    /// [the `Step` docs](Step#leases-and-fencing-the-systems-a-step-changes)).
    pub fn fencing_token(&self) -> FencingToken {
        FencingToken { operation: self.operation.id, epoch: self.operation.epoch }
    }

    /// A key stable across retries and crashes: the Operation id and the step name. Pass it as the
    /// client token of APIs that take one.
    pub fn idempotency_key(&self) -> String {
        format!("{}-{}", self.operation.id, self.step)
    }

    /// Cancelled when the Operation is cancelled while `execute` runs. Never cancelled during
    /// `compensate`.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The Operation's params, as type `P`.
    pub fn params<P: DeserializeOwned>(&self) -> Result<P, ContextError> {
        serde_json::from_slice(&self.operation.params).map_err(|e| ContextError::WrongType {
            asking: self.step.to_string(),
            what: "the params".into(),
            type_name: type_name::<P>(),
            problem: e.to_string(),
        })
    }

    /// The recorded output of step `name`, which must run in an earlier stage of the saga.
    pub fn output<T: DeserializeOwned>(&self, name: &str) -> Result<T, ContextError> {
        let asking = || self.step.to_string();
        match self.saga.stage_of(name) {
            None => {
                return Err(ContextError::UnknownStep { asking: asking(), name: name.into() });
            }
            Some(stage) if stage >= self.stage => {
                return Err(ContextError::NotEarlier { asking: asking(), name: name.into() });
            }
            Some(_) => {}
        }
        let bytes = self
            .outputs
            .get(name)
            .ok_or_else(|| ContextError::NoOutput { asking: asking(), name: name.into() })?;
        serde_json::from_slice(bytes).map_err(|e| ContextError::WrongType {
            asking: asking(),
            what: format!("the output of {name}"),
            type_name: type_name::<T>(),
            problem: e.to_string(),
        })
    }
}

/// What `compensate` is told, before decoding into the step's output type.
#[derive(Clone, Debug)]
pub(crate) enum ExecutedBytes {
    Succeeded(Arc<[u8]>),
    Failed(String),
    Unknown,
}

/// A `Step` with its output type erased to JSON bytes, so that a saga can hold steps of any type.
#[async_trait]
pub(crate) trait ErasedStep: Send + Sync + 'static {
    async fn execute(&self, ctx: &StepContext) -> Result<Vec<u8>, StepError>;
    async fn compensate(&self, ctx: &StepContext, executed: ExecutedBytes)
        -> Result<(), StepError>;
    fn kind(&self) -> StepKind;
    fn retry_policy(&self) -> RetryPolicy;
    fn timeout(&self) -> Option<Duration>;
    fn compensation_retry_policy(&self) -> RetryPolicy;
    fn compensation_timeout(&self) -> Option<Duration>;
    fn cancel_grace(&self) -> Duration;
}

#[async_trait]
impl<S: Step> ErasedStep for S {
    async fn execute(&self, ctx: &StepContext) -> Result<Vec<u8>, StepError> {
        let output = Step::execute(self, ctx).await?;
        serde_json::to_vec(&output).map_err(|e| {
            StepError::permanent(format!("step {}: output does not serialize: {e}", ctx.step))
        })
    }

    async fn compensate(
        &self,
        ctx: &StepContext,
        executed: ExecutedBytes,
    ) -> Result<(), StepError> {
        let executed = match executed {
            ExecutedBytes::Succeeded(bytes) => {
                Executed::Succeeded(serde_json::from_slice(&bytes).map_err(|e| {
                    StepError::permanent(ContextError::WrongType {
                        asking: ctx.step.to_string(),
                        what: format!("the recorded output of {}", ctx.step),
                        type_name: type_name::<S::Output>(),
                        problem: e.to_string(),
                    })
                })?)
            }
            ExecutedBytes::Failed(error) => Executed::Failed(error),
            ExecutedBytes::Unknown => Executed::Unknown,
        };
        Step::compensate(self, ctx, executed).await
    }

    fn kind(&self) -> StepKind {
        Step::kind(self)
    }

    fn retry_policy(&self) -> RetryPolicy {
        Step::retry_policy(self)
    }

    fn timeout(&self) -> Option<Duration> {
        Step::timeout(self)
    }

    fn compensation_retry_policy(&self) -> RetryPolicy {
        Step::compensation_retry_policy(self)
    }

    fn compensation_timeout(&self) -> Option<Duration> {
        Step::compensation_timeout(self)
    }

    fn cancel_grace(&self) -> Duration {
        Step::cancel_grace(self)
    }
}
