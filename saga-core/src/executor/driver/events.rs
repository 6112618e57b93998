//! What a step's result, a retry timer or the end of the plan records and says.

use super::*;

impl Driver {
    /// Whether the step runs after the point of no return, so that its failures retry forward.
    pub(super) fn runs_past_point_of_no_return(&self, step: &str) -> bool {
        self.saga
            .point_of_no_return_stage()
            .is_some_and(|p| self.saga.stage_of(step).is_some_and(|stage| stage > p))
    }

    /// The retry policy of the step's `execute`, or of its `compensate`.
    pub(super) fn policy(&self, step: &str, compensation: bool) -> crate::RetryPolicy {
        let Some(entry) = self.saga.entry(step) else { return crate::RetryPolicy::default() };
        if compensation {
            entry.step.compensation_retry_policy()
        } else {
            entry.step.retry_policy()
        }
    }

    /// Queues the outcome (one that is no cancel barrier: a rollback's) for the next commit.
    pub(super) fn finish(&mut self, outcome: Outcome) -> Result<(), Error> {
        self.log_irreversible(&outcome);
        self.outcome_line = Some(outcome_line(&outcome));
        self.record(RecordKind::OperationFinished { outcome })
    }

    /// Says in the log which steps of an incomplete rollback were irreversible.
    pub(super) fn log_irreversible(&self, outcome: &Outcome) {
        if let Outcome::RollbackIncomplete { not_undone, .. } = outcome {
            for item in not_undone {
                if item.reason == crate::record::NotUndoneReason::Irreversible {
                    self.log.line(
                        LogLevel::Warn,
                        Some(&item.step),
                        format!("{} is irreversible and was not undone", item.step),
                    );
                }
            }
        }
    }

    pub(super) fn on_event(&mut self, event: Event) -> Result<(), Error> {
        match event {
            Event::RetryDue { step } => {
                self.flight.waiting.remove(&step);
                self.flight.due.insert(step);
            }
            Event::Executed { step, result } => {
                self.flight.running.remove(&step);
                match result {
                    Ok(output) => {
                        self.record(RecordKind::StepSucceeded { step: step.clone(), output })?;
                        self.add_output(&step);
                        self.log.line(
                            LogLevel::Info,
                            Some(&step),
                            format!("step {step} succeeded"),
                        );
                    }
                    Err(error) if self.interrupted => self.log.line(
                        LogLevel::Warn,
                        Some(&step),
                        format!(
                            "step {step} was interrupted by the shutdown ({error}); nothing is \
                             recorded of this attempt and recover() runs it again"
                        ),
                    ),
                    Err(error) => self.on_execute_error(step, error)?,
                }
            }
            Event::Compensated { step, result } => {
                self.flight.running.remove(&step);
                match result {
                    Ok(()) => {
                        self.record(RecordKind::CompensationSucceeded { step: step.clone() })?;
                        self.log.line(LogLevel::Info, Some(&step), format!("compensated {step}"));
                    }
                    Err(error) => {
                        let retry = self.may_retry(&step, &error, true, false);
                        let message = error.to_string();
                        self.record(RecordKind::CompensationFailed {
                            step: step.clone(),
                            error: message.clone(),
                            retryable: retry,
                        })?;
                        if retry {
                            self.log.line(
                                LogLevel::Warn,
                                Some(&step),
                                format!("compensation of {step} failed: {message}"),
                            );
                            self.schedule_retry(&step, true);
                        } else {
                            self.log.line(LogLevel::Error, Some(&step), format!("compensation of {step} failed for good: {message}; its change stays"));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn on_execute_error(&mut self, step: String, error: StepError) -> Result<(), Error> {
        let message = error.to_string();
        let forward_only = self.runs_past_point_of_no_return(&step);
        // Past the point of no return every error is retried forward within the step's retry
        // policy; when the policy runs out, the Operation needs attention. A sibling that fails
        // while another step needs attention waits with the Operation.
        let (retry, attention) = match self.state.phase() {
            Phase::Running if forward_only => {
                let allowed = self.may_retry(&step, &error, false, true);
                (true, !allowed)
            }
            Phase::Running => (self.may_retry(&step, &error, false, false), false),
            Phase::NeedsAttention => (true, false),
            Phase::RollingBack | Phase::Finished => (false, false),
        };
        let no_effect = error.has_no_effect();
        self.record(if no_effect {
            RecordKind::StepFailedWithoutEffect {
                step: step.clone(),
                error: message.clone(),
                retryable: retry,
            }
        } else {
            RecordKind::StepFailed { step: step.clone(), error: message.clone(), retryable: retry }
        })?;
        let effect = if no_effect { " (without effect)" } else { "" };
        if attention {
            self.record(RecordKind::AttentionNeeded {
                step: step.clone(),
                error: message.clone(),
            })?;
            self.timers.clear();
            self.flight.waiting.clear();
            self.flight.due.clear();
            self.log.line(
                LogLevel::Error,
                Some(&step),
                format!(
                    "step {step} failed{effect}: {message}; past the point of no return it ran \
                     out of its retry policy, so the operation needs attention: retry the step \
                     or abandon the operation"
                ),
            );
        } else if retry && self.state.phase() == Phase::NeedsAttention {
            self.log.line(
                LogLevel::Warn,
                Some(&step),
                format!("step {step} failed{effect}: {message}; it runs again if the operation is retried"),
            );
        } else if retry {
            let why = if forward_only && !error.is_transient() {
                " (past the point of no return, so forward)"
            } else {
                ""
            };
            self.log.line(
                LogLevel::Warn,
                Some(&step),
                format!("step {step} failed{effect}: {message}{why}"),
            );
            self.schedule_retry(&step, false);
        } else if self.state.cancel.is_some() {
            self.log.line(
                LogLevel::Warn,
                Some(&step),
                format!("step {step} ended{effect}: {message}"),
            );
        } else if self.state.failure.as_ref().is_some_and(|(s, _)| *s == step) {
            let undo =
                if no_effect { " (it changed nothing, so nothing of it is undone)" } else { "" };
            self.log.line(
                LogLevel::Error,
                Some(&step),
                format!("step {step} failed{effect}: {message}; rolling back{undo}"),
            );
            // Running siblings are cancelled the same way as by a cancel (their tokens fire, they
            // have their grace period); siblings waiting for a retry will not run again and are
            // compensated at once. Either way they are compensated in reverse order of when
            // their execute ended, as every started step is.
            self.cancel.cancel();
            self.timers.clear();
            self.flight.waiting.clear();
            self.flight.due.clear();
        } else {
            self.log.line(
                LogLevel::Warn,
                Some(&step),
                format!("step {step} failed{effect}: {message}"),
            );
        }
        Ok(())
    }

    /// Whether the step's policy allows another attempt of its execute (or compensation) after
    /// `error`. Transient errors are retried; so are a compensation's permanent errors (giving
    /// up leaves a change in place, which is worse than one more try) and, with `forward_only`,
    /// an execute's past the point of no return. An execute's policy counts from
    /// [`StepState::policy_start`](crate::state::StepState::policy_start).
    pub(super) fn may_retry(
        &self,
        step: &str,
        error: &StepError,
        compensation: bool,
        forward_only: bool,
    ) -> bool {
        let Some(s) = self.state.step(step) else { return false };
        let (attempts, first) = if compensation {
            (s.compensation_attempts, s.compensation_first_started_ms)
        } else {
            (s.attempts.saturating_sub(s.policy_start.attempts_before), s.policy_start.at_ms)
        };
        let elapsed = Duration::from_millis(now_ms().saturating_sub(first));
        (error.is_transient() || compensation || forward_only)
            && self.policy(step, compensation).allows_another(attempts, elapsed)
    }
}

/// The log line that says how the Operation ended, written once the outcome is durable.
pub(super) fn outcome_line(outcome: &Outcome) -> (LogLevel, String) {
    match outcome {
        Outcome::Succeeded => (LogLevel::Info, "operation succeeded".to_owned()),
        Outcome::RolledBack { cause } => (LogLevel::Warn, format!("rollback succeeded ({cause})")),
        Outcome::RollbackIncomplete { cause, not_undone } => {
            let items: Vec<String> = not_undone.iter().map(|n| n.to_string()).collect();
            (
                LogLevel::Error,
                format!("rollback incomplete ({cause}): could not undo {}", items.join(", ")),
            )
        }
        abandoned @ Outcome::Abandoned { .. } => {
            (LogLevel::Error, format!("operation {abandoned}"))
        }
    }
}
