//! The fleet's saga and its step journal: four steps that only sleep (`prepare` → `reserve` →
//! point of no return → `commit` → `finish`), each `execute` and `compensate` writing a line
//! when it starts and when it ends to a journal file shared by every process of the fleet. Needs
//! nothing but a writable file; the `fleet` example and the `fleet` process tests include it.
//!
//! # The journal
//!
//! One line per event, appended with a single `write(2)` to a file opened with `O_APPEND`, so
//! that the lines of several processes (and threads) never interleave and their order in the
//! file is the order in which the writes happened:
//!
//! ```text
//! <unix µs> start <execute|compensate> <operation> <step> by=<executor> epoch=<lease epoch> attempt=<n>
//! <unix µs> end <execute|compensate> <operation> <step> by=<executor> epoch=<lease epoch> attempt=<n> result=<ok|cancelled>
//! ```
//!
//! The epoch is the one of [`StepContext::fencing_token`]: it grows with every claim of the
//! Operation, so a line of an older epoch written after a line of a newer one is a step that ran
//! beside (or after) its successor. The time is the wall clock, read just before the write.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use saga_core::{async_trait, Executed, Saga, Step, StepContext, StepError};
use serde::{Deserialize, Serialize};

/// The saga's name.
pub(crate) const SAGA: &str = "fleet";

/// The steps, in order; the point of no return is passed after the second, `reserve`.
pub(crate) const STEPS: [&str; 4] = ["prepare", "reserve", "commit", "finish"];

/// An Operation's params: how long each step sleeps.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Params {
    /// Every step (and compensation) sleeps this long...
    pub(crate) step_ms: u64,
    /// ...plus a random extra of up to this, drawn at every attempt.
    pub(crate) jitter_ms: u64,
}

impl Params {
    fn pause(&self) -> Duration {
        let extra = if self.jitter_ms == 0 { 0 } else { fastrand::u64(0..=self.jitter_ms) };
        Duration::from_millis(self.step_ms.saturating_add(extra))
    }
}

/// Where the steps of one process write their lines, and the executor name they write.
#[derive(Clone, Debug)]
pub(crate) struct Journal {
    file: Option<Arc<File>>,
    executor: String,
}

impl Journal {
    /// The journal at `path` (created if missing, appended to), written as `executor`.
    pub(crate) fn open(path: &Path, executor: &str) -> std::io::Result<Journal> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Journal { file: Some(Arc::new(file)), executor: executor.to_owned() })
    }

    /// No journal: for an executor that never runs a step (one that only submits or cancels).
    pub(crate) fn none() -> Journal {
        Journal { file: None, executor: String::new() }
    }

    /// Appends one line about the step of `ctx`; `result` only for an `end`.
    fn write(
        &self,
        ctx: &StepContext,
        event: &str,
        kind: &str,
        result: Option<&str>,
    ) -> Result<(), StepError> {
        let Some(file) = &self.file else { return Ok(()) };
        let micros = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
        let mut line = format!(
            "{micros} {event} {kind} {} {} by={} epoch={} attempt={}",
            ctx.operation_id(),
            ctx.step_name(),
            self.executor,
            ctx.fencing_token().epoch,
            ctx.attempt()
        );
        if let Some(result) = result {
            line.push_str(" result=");
            line.push_str(result);
        }
        line.push('\n');
        // One write(2): with O_APPEND the whole line lands at the end at once. A short write
        // (a full disk) would leave half a line, which the reader reports.
        match (&**file).write(line.as_bytes()) {
            Ok(n) if n == line.len() => Ok(()),
            Ok(n) => Err(StepError::transient(format!(
                "the journal took {n} of {} bytes of a line",
                line.len()
            ))),
            Err(e) => Err(StepError::transient(format!("cannot write the journal: {e}"))),
        }
    }
}

/// The saga, its steps writing to `journal`.
pub(crate) fn saga(journal: &Journal) -> Result<Saga, saga_core::Error> {
    let step = || Sleep(journal.clone());
    Saga::builder(SAGA, 1)
        .step(STEPS[0], step())
        .step(STEPS[1], step())
        .point_of_no_return()
        .step(STEPS[2], step())
        .step(STEPS[3], step())
        .build()
}

/// A step that sleeps for the Operation's step time (stopping early when cancelled), between a
/// `start` and an `end` line in the journal.
struct Sleep(Journal);

#[async_trait]
impl Step for Sleep {
    type Output = ();

    async fn execute(&self, ctx: &StepContext) -> Result<(), StepError> {
        let params: Params = ctx.params()?;
        self.0.write(ctx, "start", "execute", None)?;
        tokio::select! {
            _ = tokio::time::sleep(params.pause()) => {}
            _ = ctx.cancellation().cancelled() => {
                self.0.write(ctx, "end", "execute", Some("cancelled"))?;
                return Err(StepError::cancelled());
            }
        }
        self.0.write(ctx, "end", "execute", Some("ok"))
    }

    async fn compensate(&self, ctx: &StepContext, _: Executed<()>) -> Result<(), StepError> {
        let params: Params = ctx.params()?;
        self.0.write(ctx, "start", "compensate", None)?;
        tokio::time::sleep(params.pause()).await;
        self.0.write(ctx, "end", "compensate", Some("ok"))
    }
}
