//! Owned background tasks: everything a service spawns goes through [`Tasks::spawn`], shares
//! one cancellation token, and is waited for (up to a grace period) at shutdown.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    token: CancellationToken,
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// The token every task watches; cancelled at shutdown.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Spawns a named, tracked task. The name shows in the logs when it outlives the grace period.
    pub fn spawn<F>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let span = tracing::info_span!("task", task = name);
        self.tracker.spawn(fut.instrument(span));
    }

    /// Cancels every task and waits up to `grace` for them to finish.
    pub async fn shutdown(&self, grace: Duration) {
        self.token.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.tracker.len(),
                grace_ms = grace.as_millis() as u64,
                "tasks still running after the grace period; abandoning them"
            );
        }
    }
}
