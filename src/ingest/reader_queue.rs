//! The output queue of one GetMedia reader: chunks waiting for the HTTP response to
//! take them, bounded in bytes (`media.max_reader_queue_bytes`; a larger chunk is still
//! let into an empty queue) and counted in the ingest memory budget until the response
//! body takes them. A reader whose client does not read blocks on a full queue; it stops
//! following the live buffer meanwhile, so it lags there and later resumes from storage
//! (see [`super::hub`]): a client that never reads pins at most this queue, one chunk
//! and its share of the stream's live buffer.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

use super::budget::{Budget, Reservation};

/// Bytes queued for GetMedia responses, all readers (gauge).
pub const QUEUED_METRIC: &str = "streamvault_media_reader_queued_bytes";

struct Shared {
    queued: Mutex<usize>,
    taken: Notify,
    cap: usize,
}

/// Byte-sized slot in the queue; returns its bytes to the queue and the budget on drop.
struct Item {
    bytes: Bytes,
    shared: Arc<Shared>,
    _mem: Reservation,
}

impl Drop for Item {
    fn drop(&mut self) {
        *self.shared.queued.lock().expect("reader queue") -= self.bytes.len();
        metrics::gauge!(QUEUED_METRIC).decrement(self.bytes.len() as f64);
        self.shared.taken.notify_waiters();
    }
}

/// The reader's end.
pub struct QueueSender {
    tx: mpsc::UnboundedSender<Item>,
    shared: Arc<Shared>,
    budget: Budget,
}

/// The response body's end: a stream of chunks.
pub struct QueueReceiver {
    rx: mpsc::UnboundedReceiver<Item>,
}

/// The client went away.
#[derive(Debug)]
pub struct Closed;

/// A queue holding at most `cap` bytes (at least one chunk).
pub fn reader_queue(budget: Budget, cap: usize) -> (QueueSender, QueueReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        queued: Mutex::new(0),
        taken: Notify::new(),
        cap: cap.max(1),
    });
    (QueueSender { tx, shared, budget }, QueueReceiver { rx })
}

impl QueueSender {
    /// Queues a chunk, waiting while the queue is full.
    pub async fn send(&self, bytes: Bytes) -> Result<(), Closed> {
        let n = bytes.len();
        loop {
            let taken = self.shared.taken.notified();
            tokio::pin!(taken);
            taken.as_mut().enable();
            {
                let mut q = self.shared.queued.lock().expect("reader queue");
                if *q == 0 || *q + n <= self.shared.cap {
                    *q += n;
                    break;
                }
            }
            tokio::select! {
                _ = taken => {}
                _ = self.tx.closed() => return Err(Closed),
            }
        }
        metrics::gauge!(QUEUED_METRIC).increment(n as f64);
        let item = Item {
            _mem: self.budget.charge(n),
            bytes,
            shared: self.shared.clone(),
        };
        self.tx.send(item).map_err(|_| Closed)
    }

    /// Completes when the client goes away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

impl futures::Stream for QueueReceiver {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx
            .poll_recv(cx)
            .map(|o| o.map(|item| Ok(item.bytes.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn bounded_in_bytes_and_counted_until_taken() {
        let budget = Budget::new(1 << 30);
        let (tx, mut rx) = reader_queue(budget.clone(), 1000);
        tx.send(Bytes::from(vec![0; 5000])).await.unwrap();
        assert_eq!(budget.used(), 5000, "a large chunk enters an empty queue");
        let blocked = futures::FutureExt::now_or_never(tx.send(Bytes::from_static(b"x")));
        assert!(blocked.is_none(), "a full queue waits");
        assert_eq!(rx.next().await.unwrap().unwrap().len(), 5000);
        assert_eq!(budget.used(), 0);
        tx.send(Bytes::from(vec![0; 600])).await.unwrap();
        drop(rx);
        assert!(tx.send(Bytes::from(vec![0; 600])).await.is_err());
        assert_eq!(budget.used(), 0, "dropped with the receiver");
    }
}
