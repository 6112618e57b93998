//! The lease and the stops: renewals, the deadline past which nothing more is sent, a
//! shutdown's boundary and its deadline.

use super::*;

impl Driver {
    /// The instant past which this executor no longer acts on its lease: five sixths of the lease
    /// time after it was last granted or renewed. The store's lease runs from the store's own
    /// grant, which comes after the request was sent, so it expires later still: the sixth left
    /// over is the margin for the step tokens to fire and for clocks that run at slightly
    /// different rates, and renewals (every third of the lease) get two tries before it.
    pub(super) fn lease_deadline(&self) -> tokio::time::Instant {
        self.clock.deadline()
    }

    /// The lease's deadline passed without a renewal: nothing more is sent for the Operation.
    /// While the lease is still surely held (before its [cutoff](LeaseClock::cutoff): the
    /// store did not answer the renewals in time), the running steps' tokens fire and their
    /// futures may run until the cutoff, so that a step watching its token can stop; past it
    /// (the process was paused, and another executor may run the steps already), they are
    /// dropped at once, without another poll. Nothing new starts and nothing more is recorded
    /// (what the steps return is not: the next owner runs them again). Says so in the log
    /// (the lines go to `tracing`, since the store's log may be another executor's now). The
    /// error halts the Operation here; whoever claims it next resumes it from its log.
    pub(super) async fn lease_expiring(&mut self) -> Error {
        let running: Vec<String> = self.flight.running.iter().cloned().collect();
        let mut futures = std::mem::take(&mut self.running);
        let cutoff = self.clock.cutoff();
        let graced = tokio::time::Instant::now() < cutoff;
        if graced {
            self.cancel.cancel();
            // The futures are fenced themselves (`WithinLease`): none is polled past the cutoff.
            let _ =
                tokio::time::timeout_at(cutoff, async { while futures.next().await.is_some() {} })
                    .await;
        }
        drop(futures);
        self.timers = FuturesUnordered::new();
        self.pending.clear();
        let since = self.clock.granted().elapsed();
        let dropped = match (running.is_empty(), graced) {
            (true, _) => String::new(),
            (false, true) => format!(
                " and dropping {} (their tokens fired; the lease was still held)",
                running.join(", ")
            ),
            (false, false) => format!(
                " and dropping {} at once, without a grace period: the lease may have passed to \
                 another executor",
                running.join(", ")
            ),
        };
        self.log.line(
            LogLevel::Warn,
            None,
            format!(
                "the lease could not be renewed before it expires (last renewed {:.1} s ago); \
                 stopping here{dropped}: another executor may take the Operation over and \
                 resumes it from its log",
                since.as_secs_f64(),
            ),
        );
        Error::LeaseExpiring { operation: self.state.id, since }
    }

    /// The shutdown's deadline passed: fires the running executes' tokens (each has its grace
    /// period to return) and stops recording their failures, which may only say that they were
    /// interrupted. Compensations are not fired: they run on until the grace period ends.
    pub(super) fn interrupt_steps(&mut self) {
        self.interrupted = true;
        self.cancel.cancel();
        self.log.line(
            LogLevel::Warn,
            None,
            "the shutdown's deadline passed; interrupting the running steps".into(),
        );
    }

    /// Stops starting anything new: running steps and compensations finish and are recorded.
    pub(super) fn begin_stopping(&mut self) {
        self.stopping = true;
        self.timers.clear();
        self.flight.waiting.clear();
        self.log.line(
            LogLevel::Info,
            None,
            "executor shutting down; stopping at the next step boundary".into(),
        );
    }

    /// Renews the lease; a transient store error is logged and tried again soon (a twelfth of
    /// the lease later), a lost lease (fenced) or a permanent error halts the Operation. A store
    /// that does not answer before the lease deadline stops the Operation
    /// ([`Driver::lease_expiring`]).
    pub(super) async fn renew(&mut self, renew: &mut tokio::time::Interval) -> Result<(), Error> {
        let sent = tokio::time::Instant::now();
        if sent >= self.lease_deadline() {
            return Err(Box::pin(self.lease_expiring()).await);
        }
        let renewed = tokio::time::timeout_at(
            self.lease_deadline(),
            self.shared.store.renew(&self.lease, self.shared.lease_ttl),
        )
        .await;
        match renewed {
            Ok(Ok(lease)) => {
                self.lease = lease;
                self.clock.granted_at(sent);
            }
            Ok(Err(e)) if e.is_transient() => {
                self.log.line(
                    LogLevel::Warn,
                    None,
                    format!("lease renewal failed, trying again shortly: {e}"),
                );
                renew.reset_after(self.shared.lease_ttl / 12);
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(Box::pin(self.lease_expiring()).await),
        }
        Ok(())
    }
}

/// Whether the Operation halted because its lease was lost: fenced by the store, or not renewed
/// in time.
pub(super) fn lost_lease(exit: &Exit) -> bool {
    matches!(exit, Exit::Halted(cause) if is_lost_lease(cause))
}

/// Whether a driver's error says its lease was lost (fenced by the store, or not renewed in
/// time): the Operation is another executor's, or will be, and was not stopped by a failure.
pub(crate) fn is_lost_lease(cause: &Error) -> bool {
    matches!(cause, Error::LeaseExpiring { .. } | Error::Store(StoreError::Fenced { .. }))
}
