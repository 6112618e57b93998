//! Launching an attempt of a step's `execute` or `compensate`, and retry timers.

use super::*;

impl Driver {
    /// Adds a step's recorded output to the outputs that later contexts see. Copies the map only
    /// when a running step still holds the previous one (a sibling in a parallel stage).
    pub(super) fn add_output(&mut self, step: &str) {
        if let Some(Execution::Succeeded { output }) = self.state.step(step).map(|s| &s.execution) {
            let output = output.clone();
            Arc::make_mut(&mut self.outputs).insert(step.to_owned(), output);
        }
    }

    pub(super) fn context(
        &mut self,
        step: &str,
        attempt: u32,
        cancel: CancellationToken,
    ) -> StepContext {
        let stage = self.saga.stage_of(step).unwrap_or(0);
        StepContext {
            operation: self.info.clone(),
            step: Arc::from(step),
            stage,
            attempt,
            outputs: self.outputs.clone(),
            saga: self.saga.clone(),
            cancel,
        }
    }

    pub(super) fn begin_execute(&mut self, step: String) -> Result<EventFuture, Error> {
        let attempt = self.state.step(&step).map_or(0, |s| s.attempts) + 1;
        let unknown = self.state.step(&step).is_some_and(|s| s.execution == Execution::Running);
        self.record(RecordKind::StepStarted { step: step.clone(), attempt })?;
        self.flight.due.remove(&step);
        self.flight.running.insert(step.clone());
        let note = if unknown { " (its last attempt's outcome was lost in a crash)" } else { "" };
        self.log.line(
            LogLevel::Info,
            Some(&step),
            format!("step {step} started (attempt {attempt}){note}"),
        );
        let ctx = self.context(&step, attempt, self.cancel.child_token());
        let entry = self.saga.entry(&step).ok_or_else(|| self.unknown_step(&step))?;
        let runner = entry.step.clone();
        let timeout = runner.timeout();
        let grace = runner.cancel_grace();
        let span = tracing::info_span!("saga_step", operation = %self.state.id, step = %step, phase = "execute");
        let clock = self.clock.clone();
        Ok(Box::pin(
            async move {
                let run = with_timeout(timeout, unwind(runner.execute(&ctx)));
                tokio::pin!(run);
                let mut run = WithinLease::new(clock, run);
                let result = tokio::select! {
                    biased;
                    result = &mut run => result,
                    // Cancelled: the step sees its token and has its grace period to return.
                    _ = ctx.cancel.cancelled() => match tokio::time::timeout(grace, &mut run).await {
                        Ok(result) => result,
                        Err(_) => Err(StepError::cancelled()),
                    },
                };
                Event::Executed { step, result }
            }
            .instrument(span),
        ))
    }

    pub(super) fn begin_compensate(&mut self, step: String) -> Result<EventFuture, Error> {
        let s = self.state.step(&step).ok_or_else(|| self.unknown_step(&step))?;
        let attempt = s.compensation_attempts + 1;
        let executed = match &s.execution {
            Execution::Succeeded { output } => ExecutedBytes::Succeeded(output.clone()),
            Execution::Failed { error } | Execution::Retrying { error } => {
                ExecutedBytes::Failed(error.clone())
            }
            Execution::Running => ExecutedBytes::Unknown,
        };
        self.record(RecordKind::CompensationStarted { step: step.clone(), attempt })?;
        self.flight.due.remove(&step);
        self.flight.running.insert(step.clone());
        self.log.line(
            LogLevel::Info,
            Some(&step),
            format!("compensating {step} (attempt {attempt})"),
        );
        // Nothing cancels a compensation: its token is never cancelled.
        let ctx = self.context(&step, attempt, CancellationToken::new());
        let entry = self.saga.entry(&step).ok_or_else(|| self.unknown_step(&step))?;
        let runner = entry.step.clone();
        let timeout = runner.compensation_timeout();
        let clock = self.clock.clone();
        let span = tracing::info_span!("saga_step", operation = %self.state.id, step = %step, phase = "compensate");
        Ok(Box::pin(
            async move {
                let run = with_timeout(timeout, unwind(runner.compensate(&ctx, executed)));
                tokio::pin!(run);
                let result = WithinLease::new(clock, run).await;
                Event::Compensated { step, result }
            }
            .instrument(span),
        ))
    }

    pub(super) fn unknown_step(&self, step: &str) -> Error {
        Error::UnknownStep {
            operation: self.state.id,
            seq: self.state.next_seq,
            step: step.to_owned(),
            saga: self.saga.name().to_owned(),
            version: self.saga.version(),
        }
    }

    /// Sets a timer for the next attempt of a step (or of its compensation).
    pub(super) fn schedule_retry(&mut self, step: &str, compensation: bool) {
        let Some(s) = self.state.step(step) else { return };
        let attempts = if compensation { s.compensation_attempts } else { s.attempts };
        let reason = match (&s.execution, &s.compensation) {
            (_, crate::fold::Compensation::Retrying { error }) if compensation => error.clone(),
            (Execution::Retrying { error }, _) => error.clone(),
            _ => "an earlier attempt failed".to_owned(),
        };
        // An execute's policy counts from its start (an operator's retry starts it over).
        let counted = if compensation {
            attempts
        } else {
            attempts.saturating_sub(s.policy_start.attempts_before)
        };
        let policy = self.policy(step, compensation);
        let delay = policy.delay(counted);
        self.flight.waiting.insert(step.to_owned());
        let what = if compensation { "compensation of " } else { "" };
        let bound = format!("attempt {} of {}", counted + 1, policy.max_attempts);
        self.log.line(
            LogLevel::Warn,
            Some(step),
            format!(
                "retrying {what}{step} in {:.1} s ({bound}) because: {reason}",
                delay.as_secs_f64()
            ),
        );
        let step = step.to_owned();
        self.timers.push(Box::pin(async move {
            tokio::time::sleep(delay).await;
            Event::RetryDue { step }
        }));
    }
}

/// Runs a step's future, turning a panic into a failed attempt with a permanent error, so that
/// the Operation and the executor go on.
async fn unwind<T>(future: impl Future<Output = Result<T, StepError>>) -> Result<T, StepError> {
    match std::panic::AssertUnwindSafe(future).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            Err(StepError::permanent(format!("step panicked: {message}")))
        }
    }
}

async fn with_timeout<T>(
    timeout: Option<Duration>,
    future: impl Future<Output = Result<T, StepError>>,
) -> Result<T, StepError> {
    match timeout {
        None => future.await,
        Some(limit) => tokio::time::timeout(limit, future).await.unwrap_or_else(|_| {
            Err(StepError::transient(format!("timed out after {:.1} s", limit.as_secs_f64())))
        }),
    }
}
