//! "Fragment persisted" events: the persister publishes one for every new fragment it
//! acknowledged PERSISTED (from the one place that sends PERSISTED, `super::pipeline`), on
//! a node-wide broadcast. Subscribers (image generation) react to them; ingest does not
//! know who listens and never waits: a subscriber that falls more than [`CAPACITY`]
//! events behind loses the oldest ones and is told how many.

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::index::{FragmentRecord, StreamRecord};

/// Events a subscriber may lag before it loses some.
pub const CAPACITY: usize = 1024;

/// One new fragment, durable and committed, after its PERSISTED ack.
#[derive(Debug, Clone)]
pub struct FragmentPersisted {
    pub stream: StreamRecord,
    /// The row as committed (with its place in its segment).
    pub fragment: FragmentRecord,
}

/// The broadcast of [`FragmentPersisted`] events.
#[derive(Debug)]
pub struct PersistedEvents {
    tx: broadcast::Sender<Arc<FragmentPersisted>>,
}

impl Default for PersistedEvents {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl PersistedEvents {
    /// A new subscriber; it sees the events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FragmentPersisted>> {
        self.tx.subscribe()
    }

    /// Subscribes now and spawns a task that calls `on_event` for every event until
    /// `stop` (or the broadcast closes). `on_event` must not wait: a follower that falls
    /// more than [`CAPACITY`] events behind loses the oldest, with a warning naming `what`.
    pub fn follow(
        &self,
        what: &'static str,
        stop: CancellationToken,
        mut on_event: impl FnMut(&FragmentPersisted) + Send + 'static,
    ) {
        let mut events = self.subscribe();
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    _ = stop.cancelled() => return,
                    ev = events.recv() => ev,
                };
                match ev {
                    Ok(ev) => on_event(&ev),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(events = n, "{what} fell behind; fragments skipped");
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }

    /// Publishes one event (nothing is built when nobody listens). Never waits.
    pub fn publish(&self, stream: &StreamRecord, fragment: FragmentRecord) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let _ = self.tx.send(Arc::new(FragmentPersisted {
            stream: stream.clone(),
            fragment,
        }));
    }
}
