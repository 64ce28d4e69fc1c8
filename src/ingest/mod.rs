//! PutMedia ingest: the registry of per-stream runtime state shared by upload sessions
//! and live readers ([`StreamRuntime`]), and the server-wide ingest state ([`Ingest`]).
//! Each job has its own module: admission (connection and reader slots, the rate cap),
//! the fragment-number allocator, the live hand-off (a byte-bounded broadcast, [`hub`],
//! plus the stream's in-memory live state, `live`), the global memory budget
//! ([`budget`]), the session driver ([`session`]) that runs one upload and its pipelined
//! persister (`pipeline`), and the "fragment persisted" events ([`persisted`]) that
//! image generation subscribes to. GetMedia readers drain the hand-off into byte-bounded
//! output queues ([`reader_queue`]).

pub mod ack;
mod admission;
mod allocator;
pub mod budget;
pub mod commit;
pub mod hub;
mod live;
pub mod persisted;
mod pipeline;
pub mod reader_queue;
pub mod session;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use self::admission::TokenBucket;
pub use self::admission::{Connection, ConnectionGuard, ReaderGuard};
use self::allocator::SeqBlock;
use self::budget::Budget;
use self::hub::Hub;
pub use self::hub::LiveReceiver;
use self::live::LiveState;
pub use self::live::{FragmentInfo, LiveEvent, LiveFragment, LiveSnapshot, SessionHeaderBytes};
pub use self::reader_queue::{QueueReceiver, QueueSender, reader_queue};

use crate::config::IngestSettings;

/// How many live events a slow reader may lag before it must catch up from storage
/// (besides the byte cap `ingest.live_buffer_bytes`).
pub const LIVE_CHANNEL: usize = 4096;

/// Runtime state of one stream.
#[derive(Debug)]
pub struct StreamRuntime {
    /// Open PutMedia connections, oldest first: (connection id, ends it when a newer
    /// connection supersedes it).
    uploads: Mutex<VecDeque<(u64, CancellationToken)>>,
    readers: AtomicUsize,
    rate: Mutex<TokenBucket>,
    seq: tokio::sync::Mutex<SeqBlock>,
    live: Arc<Hub>,
    state: Mutex<LiveState>,
    budget: Budget,
    /// Cancelled when the stream is deleted: live readers end.
    deleted: CancellationToken,
}

impl StreamRuntime {
    /// Subscribes to the live hand-off and returns what is in memory right now; no event
    /// falls between the snapshot and the subscription.
    pub fn subscribe(&self) -> (LiveSnapshot, LiveReceiver) {
        let st = self.state.lock().expect("live state");
        let rx = self.live.subscribe();
        let fragments = st.recent.iter().chain(st.open.iter()).cloned().collect();
        (LiveSnapshot { fragments }, rx)
    }

    /// Completes when the stream is deleted.
    pub fn deleted(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.deleted.cancelled()
    }

    pub(crate) fn publish(&self, ev: LiveEvent) {
        let mut st = self.state.lock().expect("live state");
        let mem = st.apply(&ev, &self.budget);
        self.live.publish(ev, mem);
    }
}

/// Shared ingest state of the server.
#[derive(Debug)]
pub struct Ingest {
    pub settings: IngestSettings,
    streams: Mutex<HashMap<String, Arc<StreamRuntime>>>,
    /// The memory budget of everything streams hold (see [`budget`]).
    budget: Budget,
    /// Bytes buffered in all streams' live hubs.
    live_bytes: hub::LiveBytes,
    /// Fragments being hashed and sealed at once, all streams (one per core).
    sealers: Arc<tokio::sync::Semaphore>,
    /// "Fragment persisted" events (image generation subscribes).
    persisted: persisted::PersistedEvents,
    /// The group committer every persister hands its sealed fragments to.
    committer: std::sync::OnceLock<commit::Committer>,
}

impl Ingest {
    pub fn new(settings: IngestSettings) -> Self {
        Self {
            budget: Budget::new(
                usize::try_from(settings.memory_budget_bytes).unwrap_or(usize::MAX),
            ),
            settings,
            streams: Mutex::default(),
            live_bytes: hub::LiveBytes::default(),
            sealers: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            persisted: persisted::PersistedEvents::default(),
            committer: std::sync::OnceLock::new(),
        }
    }

    /// Connects the group committer (once, at server start).
    pub fn set_committer(&self, c: commit::Committer) {
        let _ = self.committer.set(c);
    }

    /// The group committer; `None` before the server connected it.
    pub fn committer(&self) -> Option<&commit::Committer> {
        self.committer.get()
    }

    /// The "fragment persisted" events of every stream.
    pub fn persisted_events(&self) -> &persisted::PersistedEvents {
        &self.persisted
    }

    /// Runtime state of a stream (created on first use).
    pub fn runtime(&self, stream_id: &str) -> Arc<StreamRuntime> {
        let mut m = self.streams.lock().expect("ingest registry");
        m.entry(stream_id.to_owned())
            .or_insert_with(|| {
                Arc::new(StreamRuntime {
                    uploads: Mutex::default(),
                    readers: AtomicUsize::new(0),
                    state: Mutex::default(),
                    deleted: CancellationToken::new(),
                    rate: Mutex::new(TokenBucket::new(self.settings.max_bytes_per_second as f64)),
                    seq: tokio::sync::Mutex::default(),
                    live: Arc::new(Hub::sharing(
                        self.live_bytes.clone(),
                        usize::try_from(self.settings.live_buffer_bytes).unwrap_or(usize::MAX),
                        LIVE_CHANNEL,
                    )),
                    budget: self.budget.clone(),
                })
            })
            .clone()
    }

    /// Forgets a deleted stream's runtime state.
    pub fn forget(&self, stream_id: &str) {
        self.streams
            .lock()
            .expect("ingest registry")
            .remove(stream_id);
    }

    /// A turn to hash and seal one fragment on the blocking pool. At most one fragment
    /// per core is sealed at once: with a task per fragment, 1,000 cameras kept the
    /// blocking pool at its 512 threads, each with its own allocator cache (3.3 GB RSS).
    pub async fn sealing_turn(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.sealers
            .clone()
            .acquire_owned()
            .await
            .expect("the sealing semaphore is never closed")
    }

    /// The memory budget.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Drops every stream's buffered live events (the budget is exhausted): readers
    /// behind the live edge continue from storage.
    pub(crate) fn shed_live_buffers(&self) {
        if self.live_bytes.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return;
        }
        let runtimes: Vec<_> = self
            .streams
            .lock()
            .expect("ingest registry")
            .values()
            .cloned()
            .collect();
        for rt in runtimes {
            rt.live.shed();
        }
    }
}
