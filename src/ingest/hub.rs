//! The live hand-off buffer of one stream: a broadcast of [`LiveEvent`]s to GetMedia
//! live readers, bounded in bytes as well as in events. An event stays while some
//! reader has not received it, but the buffer never holds more than `max_bytes` of
//! frames (`media.max_live_lag_bytes`) or [`super::LIVE_CHANNEL`] events: past that the
//! oldest events go, and a reader that had not received them is told it lagged (tokio's
//! `RecvError::Lagged`), after which it continues from storage (see `media::Reader`).
//! When the ingest memory budget is exhausted, [`Hub::shed`] drops every buffered event
//! at once (slow readers go to storage catch-up before any upload is slowed down).
//!
//! Frames keep their fragment's [`Reservation`] alive, so the buffer is counted in the
//! ingest memory budget for as long as it holds them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::sync::broadcast::error::RecvError;

use super::LiveEvent;
use super::budget::Reservation;

/// Readers that lagged behind the live buffer and went back to storage (counter).
pub const LAGGED_METRIC: &str = "streamvault_media_readers_lagged_total";
/// Bytes of frames held in live buffers, all streams (gauge).
pub const BUFFER_METRIC: &str = "streamvault_live_buffer_bytes";

/// Bookkeeping bytes counted per buffered event besides its frame.
const EVENT_OVERHEAD: usize = 64;

/// The memory of one live fragment's frames, shared by everything that holds them.
pub type FragmentMemory = Arc<Mutex<Reservation>>;

struct Slot {
    ev: LiveEvent,
    bytes: usize,
    _mem: Option<FragmentMemory>,
}

#[derive(Default)]
struct Inner {
    slots: VecDeque<Slot>,
    /// Position of `slots[0]`.
    head: u64,
    bytes: usize,
    /// Receiver id → position of the next event it will receive.
    cursors: HashMap<u64, u64>,
    next_id: u64,
}

impl Inner {
    fn tail(&self) -> u64 {
        self.head + self.slots.len() as u64
    }

    fn pop(&mut self, total: &AtomicUsize) {
        if let Some(s) = self.slots.pop_front() {
            self.head += 1;
            self.bytes -= s.bytes;
            total.fetch_sub(s.bytes, Ordering::Relaxed);
            metrics::gauge!(BUFFER_METRIC).decrement(s.bytes as f64);
        }
    }

    /// Drops what every reader has received, and whatever is over the caps.
    fn trim(&mut self, max_bytes: usize, max_events: usize, total: &AtomicUsize) {
        let min = self.cursors.values().copied().min().unwrap_or(u64::MAX);
        while !self.slots.is_empty()
            && (self.head < min || self.bytes > max_bytes || self.slots.len() > max_events)
        {
            self.pop(total);
        }
    }
}

/// One stream's live broadcast.
pub struct Hub {
    inner: Mutex<Inner>,
    published: Notify,
    max_bytes: usize,
    max_events: usize,
    /// Bytes buffered by every hub sharing it (see [`LiveBytes`]).
    total: LiveBytes,
}

/// The bytes buffered by a set of hubs (one node's streams), so that shedding them all
/// costs nothing when none holds anything: under overload the ingest sheds on every
/// budget wait, and walking 1,000 streams' hubs each time took 6 % of the server's CPU.
pub type LiveBytes = Arc<AtomicUsize>;

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = self.inner.lock().expect("live hub");
        f.debug_struct("Hub")
            .field("events", &i.slots.len())
            .field("bytes", &i.bytes)
            .field("receivers", &i.cursors.len())
            .finish()
    }
}

impl Hub {
    pub fn new(max_bytes: usize, max_events: usize) -> Self {
        Self::sharing(LiveBytes::default(), max_bytes, max_events)
    }

    /// A hub whose buffered bytes are also counted in `total`.
    pub fn sharing(total: LiveBytes, max_bytes: usize, max_events: usize) -> Self {
        Self {
            inner: Mutex::default(),
            published: Notify::new(),
            max_bytes: max_bytes.max(1),
            max_events: max_events.max(1),
            total,
        }
    }

    /// Sends an event to every receiver; `mem` is the memory its frame lives in. With no
    /// receiver, nothing is kept.
    pub fn publish(&self, ev: LiveEvent, mem: Option<FragmentMemory>) {
        let mut i = self.inner.lock().expect("live hub");
        if i.cursors.is_empty() {
            return;
        }
        let bytes = EVENT_OVERHEAD
            + match &ev {
                LiveEvent::Frame { block, .. } => block.len(),
                _ => 0,
            };
        i.bytes += bytes;
        self.total.fetch_add(bytes, Ordering::Relaxed);
        metrics::gauge!(BUFFER_METRIC).increment(bytes as f64);
        i.slots.push_back(Slot {
            ev,
            bytes,
            _mem: mem,
        });
        i.trim(self.max_bytes, self.max_events, &self.total);
        drop(i);
        self.published.notify_waiters();
    }

    /// A receiver of the events published from now on.
    pub fn subscribe(self: &Arc<Self>) -> LiveReceiver {
        let mut i = self.inner.lock().expect("live hub");
        let (id, next) = (i.next_id, i.tail());
        i.next_id += 1;
        i.cursors.insert(id, next);
        LiveReceiver {
            hub: self.clone(),
            id,
            next,
        }
    }

    /// Drops every buffered event: receivers that had not received them lag.
    pub fn shed(&self) {
        let mut i = self.inner.lock().expect("live hub");
        while !i.slots.is_empty() {
            i.pop(&self.total);
        }
    }

    /// Bytes buffered now.
    pub fn buffered_bytes(&self) -> usize {
        self.inner.lock().expect("live hub").bytes
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.shed();
    }
}

/// One reader's position in a [`Hub`].
#[derive(Debug)]
pub struct LiveReceiver {
    hub: Arc<Hub>,
    id: u64,
    next: u64,
}

impl LiveReceiver {
    /// The next event; `Err(Lagged(n))` when `n` events were dropped before this
    /// receiver got them (it then continues with the oldest buffered one).
    pub async fn recv(&mut self) -> Result<LiveEvent, RecvError> {
        loop {
            let published = self.hub.published.notified();
            tokio::pin!(published);
            published.as_mut().enable();
            {
                let mut i = self.hub.inner.lock().expect("live hub");
                if self.next < i.head {
                    let missed = i.head - self.next;
                    self.next = i.head;
                    i.cursors.insert(self.id, self.next);
                    metrics::counter!(LAGGED_METRIC).increment(1);
                    return Err(RecvError::Lagged(missed));
                }
                if self.next < i.tail() {
                    let ev = i.slots[(self.next - i.head) as usize].ev.clone();
                    let was_oldest = self.next == i.head;
                    self.next += 1;
                    i.cursors.insert(self.id, self.next);
                    if was_oldest {
                        i.trim(self.hub.max_bytes, self.hub.max_events, &self.hub.total);
                    }
                    return Ok(ev);
                }
            }
            published.await;
        }
    }
}

impl Drop for LiveReceiver {
    fn drop(&mut self) {
        let mut i = self.hub.inner.lock().expect("live hub");
        i.cursors.remove(&self.id);
        i.trim(self.hub.max_bytes, self.hub.max_events, &self.hub.total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::budget::Budget;
    use bytes::Bytes;

    fn frame(n: usize) -> LiveEvent {
        LiveEvent::Frame {
            seq: 1,
            block: Bytes::from(vec![0u8; n]),
        }
    }

    #[tokio::test]
    async fn a_reader_that_never_reads_pins_at_most_max_bytes() {
        let budget = Budget::new(1 << 30);
        let hub = Arc::new(Hub::new(100_000, 4096));
        let mut slow = hub.subscribe();
        let mut fast = hub.subscribe();
        for _ in 0..1000 {
            let mem = Arc::new(Mutex::new(budget.charge(10_000)));
            hub.publish(frame(10_000), Some(mem));
            assert!(matches!(fast.recv().await, Ok(LiveEvent::Frame { .. })));
        }
        let held = hub.buffered_bytes();
        println!(
            "live buffer after 10 MB with a reader that never reads: {held} bytes, budget {} bytes",
            budget.used()
        );
        assert!(held <= 100_000 && budget.used() <= 100_000, "{held}");
        assert!(matches!(slow.recv().await, Err(RecvError::Lagged(_))));
        assert!(matches!(slow.recv().await, Ok(LiveEvent::Frame { .. })));
        drop(slow);
        assert_eq!(
            hub.buffered_bytes(),
            0,
            "everything received by the remaining reader"
        );
        assert_eq!(budget.used(), 0);
        hub.publish(frame(10), None);
        hub.shed();
        assert!(matches!(fast.recv().await, Err(RecvError::Lagged(1))));
    }

    #[test]
    fn nothing_is_kept_without_receivers() {
        let hub = Arc::new(Hub::new(1000, 10));
        hub.publish(frame(100), None);
        assert_eq!(hub.buffered_bytes(), 0);
        let _r = hub.subscribe();
        for _ in 0..20 {
            hub.publish(LiveEvent::FragmentPersisted { seq: 1 }, None);
        }
        assert_eq!(hub.buffered_bytes(), 10 * EVENT_OVERHEAD, "event cap");
    }

    #[tokio::test]
    async fn hubs_sharing_a_total_count_what_they_buffer_until_it_is_received_or_shed() {
        let total = LiveBytes::default();
        let a = Arc::new(Hub::sharing(total.clone(), 1 << 20, 100));
        let b = Arc::new(Hub::sharing(total.clone(), 1 << 20, 100));
        let mut ra = a.subscribe();
        let _rb = b.subscribe();
        a.publish(frame(1000), None);
        b.publish(frame(500), None);
        let now = || total.load(Ordering::Relaxed);
        assert_eq!(now(), 1500 + 2 * EVENT_OVERHEAD);
        assert!(matches!(ra.recv().await, Ok(LiveEvent::Frame { .. })));
        assert_eq!(now(), 500 + EVENT_OVERHEAD, "a's only reader received it");
        b.shed();
        assert_eq!(now(), 0);
        assert_eq!(a.buffered_bytes() + b.buffered_bytes(), 0);
    }
}
