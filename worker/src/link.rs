//! The worker's way to the broker across sessions. A job outlives the session it was delivered
//! on once its message is acked (it lives on its lease from then on), so its later events —
//! progress, checkpoints, its outcome — go out on whichever session is up when they are sent:
//! the current session's publisher, or none while the worker reconnects.

use std::sync::Arc;
use std::time::Duration;

use shared::amqp::{Outgoing, PublishError, Publisher};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument as _;

/// Keeps a session's publisher on the link; dropping it takes it off.
#[derive(Debug)]
pub struct Up<'a>(&'a Link);

impl Drop for Up<'_> {
    fn drop(&mut self) {
        self.0.0.send_replace(None);
    }
}

/// The current session's publisher, shared by every job task.
#[derive(Debug, Clone)]
pub struct Link(Arc<watch::Sender<Option<Publisher>>>);

impl Default for Link {
    fn default() -> Self {
        Self(Arc::new(watch::channel(None).0))
    }
}

impl Link {
    /// A session is up: publish on `publisher` until the returned guard is dropped (the session
    /// is over, however it ends).
    #[must_use = "the link goes down when the guard is dropped"]
    pub fn up(&self, publisher: Publisher) -> Up<'_> {
        self.0.send_replace(Some(publisher));
        Up(self)
    }

    /// The current publisher, if a session is up.
    pub fn current(&self) -> Option<Publisher> {
        self.0.borrow().clone()
    }

    /// Publishes `msg` and waits for its confirm, on whichever session is up, trying again
    /// (after a pause) when a publish fails, until `deadline`: an outcome reported late is
    /// still better than one lost, as long as the attempt's lease holds.
    pub async fn publish_until(
        &self,
        msg: Outgoing,
        span: &tracing::Span,
        deadline: Instant,
    ) -> Result<(), PublishError> {
        let mut ready = self.0.subscribe();
        loop {
            let publisher = tokio::select! {
                p = ready.wait_for(Option::is_some) => p.ok().and_then(|p| p.clone()),
                () = tokio::time::sleep_until(deadline) => None,
            };
            let Some(publisher) = publisher else {
                return Err(PublishError::NoSession);
            };
            match publisher
                .publish(msg.clone())
                .instrument(span.clone())
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "publish failed; trying again on the next session");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(200)) => {},
                        () = tokio::time::sleep_until(deadline) => return Err(e),
                    }
                }
            }
        }
    }
}
