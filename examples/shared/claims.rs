//! [`Claims`]: how a worker example learns which Operations its executor claimed. Shared by the
//! quickstart's `worker` and the `fleet` example (each includes this file as a module).

use std::sync::Arc;
use std::time::Duration;

use saga_core::store::{Lease, Store, StoreError};
use saga_core::{async_trait, OperationId};
use tokio::sync::mpsc;

/// A store that passes every call to `inner` and sends the id of every Operation claimed
/// through it.
pub(crate) struct Claims {
    inner: Arc<dyn Store>,
    claimed: mpsc::UnboundedSender<OperationId>,
}

impl Claims {
    /// Wraps `inner`; the receiver hears of every claim that succeeds.
    pub(crate) fn new(inner: Arc<dyn Store>) -> (Claims, mpsc::UnboundedReceiver<OperationId>) {
        let (claimed, receiver) = mpsc::unbounded_channel();
        (Claims { inner, claimed }, receiver)
    }
}

#[async_trait]
impl saga_core::store::StoreWrapper for Claims {
    fn inner(&self) -> &dyn Store {
        self.inner.as_ref()
    }

    async fn claim(
        &self,
        operation: OperationId,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let lease = self.inner.claim(operation, owner, ttl).await?;
        // Nobody listening any more is fine: the worker is stopping.
        let _ = self.claimed.send(operation);
        Ok(lease)
    }
}
