//! Waiting for the Operation's turn on its resource.

use super::*;

impl Driver {
    /// Whether nothing of the Operation ran yet, so that it still waits for its resource.
    pub(super) fn is_fresh(&self) -> bool {
        self.state.steps.is_empty() && self.state.cancel.is_none() && self.state.outcome.is_none()
    }

    /// Waits until the Operation heads its resource's queue (every Operation created earlier on
    /// the same resource finished), saying in the log what it waits for. A cancel ends the wait
    /// (the Operation then rolls back with nothing to undo), and so does a shutdown; the lease
    /// is renewed meanwhile.
    pub(super) async fn wait_turn(
        &mut self,
        renew: &mut tokio::time::Interval,
        mut expiring: Pin<&mut tokio::time::Sleep>,
    ) -> Result<(), Error> {
        let mut waiting_for = None;
        let commands = self.commands.clone();
        loop {
            let queue = match tokio::time::timeout_at(
                self.lease_deadline(),
                self.shared.store.resource_queue(&self.state.resource),
            )
            .await
            {
                Ok(queue) => queue?,
                Err(_) => return Err(Box::pin(self.lease_expiring()).await),
            };
            let ahead = super::super::ahead_of(&queue, self.state.id);
            let Some(ahead) = ahead else {
                if waiting_for.is_some() {
                    self.log.line(
                        LogLevel::Info,
                        None,
                        format!("{} is free; starting", self.state.resource),
                    );
                }
                return Ok(());
            };
            if waiting_for != Some(ahead) {
                self.log.line(
                    LogLevel::Info,
                    None,
                    format!("waiting for operation {ahead} on {} to finish", self.state.resource),
                );
                self.log.flush(self.shared.store.as_ref(), &self.lease).await?;
                waiting_for = Some(ahead);
            }
            tokio::select! {
                biased;
                _ = &mut expiring => return Err(Box::pin(self.lease_expiring()).await),
                _ = tokio::time::sleep(self.shared.cancel_poll) => {}
                command = commands.recv() => {
                    Box::pin(self.on_command(command)).await?;
                    if self.state.cancel.is_some() {
                        return Ok(());
                    }
                }
                _ = self.shared.shutdown.cancelled() => {
                    self.begin_stopping();
                    return Ok(());
                }
                _ = renew.tick() => {
                    Box::pin(self.renew(renew)).await?;
                    expiring.as_mut().reset(self.lease_deadline());
                }
            }
        }
    }
}
