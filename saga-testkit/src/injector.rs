//! The shared state of one run: the plan, what each wrapped step did, and the cancel channel.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use saga_core::{Error as EngineError, Executor, OperationId};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::faults::{FaultPlan, StepFaults, When};

/// What the wrapped steps of one run did, by step name, counted across crashes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StepStats {
    /// Calls of the wrapper's `execute` (engine attempts that ran).
    pub attempts: u32,
    /// Runs of the step's own `execute` (twice per attempt when doubled, none when a fault
    /// fired before it).
    pub executions: u32,
    /// Calls of the wrapper's `compensate` (engine compensation attempts that ran).
    pub compensation_attempts: u32,
    /// Runs of the step's own `compensate`.
    pub compensations: u32,
}

/// How an injected cancel was answered by the executor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelAnswer {
    /// `cancel` returned `Ok`: the cancel is durable (or the Operation was already rolling back).
    Accepted,
    /// `cancel` was refused, with the engine's message (past the point of no return, finished).
    Refused(String),
}

/// The shared fault state of one run: the [`FaultPlan`] that every [`Faulty`] step consults, and
/// what each step did ([`StepStats`]). Cloning shares it.
///
/// A cancel planned with [`FaultPlan::cancel_at`] is asked of the executor given to
/// [`Faults::serve_cancels`].
///
/// [`Faulty`]: crate::Faulty
#[derive(Clone, Default)]
pub struct Faults {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    plan: FaultPlan,
    stats: BTreeMap<String, StepStats>,
    cancel_answer: Option<CancelAnswer>,
    canceller: Option<(u64, mpsc::UnboundedSender<CancelRequest>)>,
    servers: u64,
}

struct CancelRequest {
    operation: OperationId,
    reply: oneshot::Sender<()>,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Faults")
            .field("plan", &state.plan)
            .field("stats", &state.stats)
            .field("cancel_answer", &state.cancel_answer)
            .finish_non_exhaustive()
    }
}

impl Faults {
    /// Shared state for a run with this plan.
    pub fn new(plan: FaultPlan) -> Self {
        Faults { inner: Arc::new(Mutex::new(State { plan, ..State::default() })) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A step that panicked while holding the lock leaves counters that are still meaningful.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The plan.
    pub fn plan(&self) -> FaultPlan {
        self.lock().plan.clone()
    }

    /// What `step` did so far.
    pub fn stats(&self, step: &str) -> StepStats {
        self.lock().stats.get(step).copied().unwrap_or_default()
    }

    /// What every step that ran did, by name.
    pub fn all_stats(&self) -> BTreeMap<String, StepStats> {
        self.lock().stats.clone()
    }

    /// How the planned cancel was answered, once it was.
    pub fn cancel_answer(&self) -> Option<CancelAnswer> {
        self.lock().cancel_answer.clone()
    }

    /// Serves the planned cancel with `executor` until the returned guard is dropped. Must be
    /// called within a Tokio runtime. A run over several executors (a crash) serves each in turn.
    pub fn serve_cancels(&self, executor: &Executor) -> CancelServer {
        let (tx, mut rx) = mpsc::unbounded_channel::<CancelRequest>();
        let generation = {
            let mut state = self.lock();
            state.servers += 1;
            state.canceller = Some((state.servers, tx));
            state.servers
        };
        let executor = executor.clone();
        let faults = self.clone();
        let task = tokio::spawn(async move {
            while let Some(request) = rx.recv().await {
                let answer = match executor
                    .cancel(request.operation, "saga-testkit", "injected cancel")
                    .await
                {
                    Ok(_) => Some(CancelAnswer::Accepted),
                    Err(
                        e @ (EngineError::PastPointOfNoReturn { .. }
                        | EngineError::AlreadyFinished { .. }),
                    ) => Some(CancelAnswer::Refused(e.to_string())),
                    // Lost in a crash: ask again when the step runs again.
                    Err(_) => None,
                };
                // Recorded here: an accepted cancel ends the asking step's future before it
                // hears the answer.
                if let Some(answer) = answer {
                    faults.lock().cancel_answer.get_or_insert(answer);
                }
                let _ = request.reply.send(());
            }
        });
        CancelServer { faults: self.clone(), generation, task }
    }

    pub(crate) fn begin_execute(&self, step: &str) -> (StepFaults, Option<When>) {
        let mut state = self.lock();
        state.stats.entry(step.to_owned()).or_default().attempts += 1;
        let cancel = match (&state.plan.cancel(), &state.cancel_answer) {
            (Some((at, when)), None) if *at == step => Some(*when),
            _ => None,
        };
        (state.plan.step(step), cancel)
    }

    pub(crate) fn begin_compensate(&self, step: &str) -> StepFaults {
        let mut state = self.lock();
        state.stats.entry(step.to_owned()).or_default().compensation_attempts += 1;
        state.plan.step(step)
    }

    pub(crate) fn note_execution(&self, step: &str) {
        self.lock().stats.entry(step.to_owned()).or_default().executions += 1;
    }

    pub(crate) fn note_compensation(&self, step: &str) {
        self.lock().stats.entry(step.to_owned()).or_default().compensations += 1;
    }

    /// Asks the executor to cancel, once per run, and waits for its answer.
    pub(crate) async fn cancel_now(&self, operation: OperationId) {
        let (reply, answer) = oneshot::channel();
        let sent = {
            let state = self.lock();
            if state.cancel_answer.is_some() {
                return;
            }
            state
                .canceller
                .as_ref()
                .is_some_and(|(_, c)| c.send(CancelRequest { operation, reply }).is_ok())
        };
        if !sent {
            return;
        }
        let _ = answer.await;
    }
}

/// Serves planned cancels for one executor; see [`Faults::serve_cancels`]. Dropping it stops.
#[derive(Debug)]
pub struct CancelServer {
    faults: Faults,
    generation: u64,
    task: JoinHandle<()>,
}

impl Drop for CancelServer {
    fn drop(&mut self) {
        let mut state = self.faults.lock();
        if state.canceller.as_ref().is_some_and(|(g, _)| *g == self.generation) {
            state.canceller = None;
        }
        drop(state);
        self.task.abort();
    }
}
