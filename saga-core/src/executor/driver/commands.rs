//! Commands from outside the driver: a cancel, asked here or found in the store.

use super::*;

impl Driver {
    pub(super) async fn on_command(&mut self, command: Command) -> Result<(), Error> {
        match command {
            Command::Cancel { actor, reason, requested_ms, reply } => {
                match self.cancel(actor, reason, requested_ms).await {
                    // The cancel could not be recorded: the canceller is told why, and the
                    // Operation halts with the same cause.
                    Err(Error::Store(e)) => {
                        let cause = Arc::new(Error::Store(e));
                        let _ = reply.send(Err(Error::Halted {
                            operation: self.state.id,
                            cause: cause.clone(),
                        }));
                        return Err(Error::Halted { operation: self.state.id, cause });
                    }
                    answer => {
                        let _ = reply.send(answer);
                    }
                }
            }
        }
        Ok(())
    }

    /// Answers a cancel, asked here or found in the store: past the point of no return, its
    /// refusal is recorded (`CancelRefused`, which also answers the store's pending request)
    /// and it is refused; while rolling back already, nothing more is recorded (the store's
    /// request, if any, is answered by the rollback's finish); otherwise `CancelRequested` is
    /// recorded (answering the store's request), and once it is durable the running steps'
    /// tokens fire and the rollback starts.
    pub(super) async fn cancel(
        &mut self,
        actor: String,
        reason: String,
        requested_ms: u64,
    ) -> Result<CancelAnswer, Error> {
        if let Err(refused) = plan::refuse_cancel(Some(&self.saga), &self.state) {
            if let Error::PastPointOfNoReturn { step, .. } = &refused {
                let refusal = format!("past the point of no return (step {step})");
                self.log.line(
                    LogLevel::Warn,
                    None,
                    format!("cancel requested by {actor} ({reason}) refused: {refusal}"),
                );
                self.record(RecordKind::CancelRefused { actor, reason, requested_ms, refusal })?;
                self.commit().await?;
            }
            return Err(refused);
        }
        if self.state.phase() == Phase::RollingBack {
            self.log.line(
                LogLevel::Info,
                None,
                format!("cancel requested by {actor} ({reason}): already rolling back"),
            );
            return Ok(CancelAnswer::AlreadyRollingBack);
        }
        self.record(RecordKind::CancelRequested { actor: actor.clone(), reason: reason.clone() })?;
        self.log.line(
            LogLevel::Warn,
            None,
            format!("cancel requested by {actor}: {reason}; rolling back"),
        );
        self.commit().await?;
        self.cancel.cancel();
        self.timers.clear();
        self.flight.waiting.clear();
        self.flight.due.clear();
        Ok(CancelAnswer::RollingBack)
    }
}
