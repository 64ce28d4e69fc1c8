//! PutMedia ingest: per-stream runtime state shared by upload sessions (connection count,
//! rate cap, the fragment-number allocator, the live hand-off), the global ingest memory
//! budget ([`budget`]), and the session driver ([`session`]) that runs one upload. The
//! live hand-off is a byte-bounded broadcast ([`hub`]) plus the stream's live state
//! below; GetMedia readers drain it into byte-bounded output queues ([`reader_queue`]).

pub mod ack;
pub mod budget;
pub mod commit;
pub mod hub;
pub mod reader_queue;
pub mod session;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use self::budget::Budget;
pub use self::hub::LiveReceiver;
use self::hub::{FragmentMemory, Hub};
pub use self::reader_queue::{QueueReceiver, QueueSender, reader_queue};

use crate::config::IngestSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::index::Index;

/// How many live events a slow reader may lag before it must catch up from storage
/// (besides the byte cap `ingest.live_buffer_bytes`).
pub const LIVE_CHANNEL: usize = 4096;
/// Fragment numbers reserved per index write.
const SEQ_BLOCK: u64 = 64;

/// The header elements of one producer session, shared by its fragments.
#[derive(Debug)]
pub struct SessionHeaderBytes {
    pub session_id: u64,
    /// EBML header followed by the pre-cluster level-1 elements.
    pub bytes: Bytes,
    pub ebml_header_len: usize,
}

/// What the live hand-off publishes, in ingestion order.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// A fragment began (BUFFERING).
    FragmentStart(Arc<FragmentInfo>),
    /// One frame of the open fragment, re-based onto its cluster timecode.
    Frame { seq: u64, block: Bytes },
    /// The fragment is complete (RECEIVED), with the producer metadata that follows it.
    FragmentEnd {
        seq: u64,
        metadata: Arc<Vec<(String, String)>>,
    },
    /// The fragment is durable and listed (PERSISTED).
    FragmentPersisted { seq: u64 },
    /// The fragment was rejected and will never be stored.
    FragmentDropped { seq: u64 },
}

/// Identity and timing of a live fragment.
#[derive(Debug)]
pub struct FragmentInfo {
    pub seq: u64,
    pub header: Arc<SessionHeaderBytes>,
    pub cluster_timecode: u64,
    pub producer_ts_ms: i64,
    pub server_ts_ms: i64,
}

/// A fragment held in memory for live readers.
#[derive(Debug, Clone)]
pub struct LiveFragment {
    pub info: Arc<FragmentInfo>,
    pub frames: Vec<Bytes>,
    /// `Some` once complete (RECEIVED).
    pub metadata: Option<Arc<Vec<(String, String)>>>,
    bytes: usize,
    /// The frames' share of the memory budget, held while any copy of them lives.
    mem: FragmentMemory,
}

/// What a new live reader starts from: the last completed fragments (which may not be
/// persisted yet) and the open one, oldest first.
#[derive(Debug, Clone, Default)]
pub struct LiveSnapshot {
    pub fragments: Vec<LiveFragment>,
}

/// Completed fragments kept for live readers: the persist queue (complete but not yet
/// listed; a fragment leaves at PERSISTED), so a reader switching from storage to live
/// never misses one; also the whole live buffer of retention-0 streams, which never
/// persist. Bounded by count and bytes either way.
const RECENT_FRAGMENTS: usize = 8;
const RECENT_BYTES: usize = 64 << 20;

#[derive(Debug, Default)]
struct LiveState {
    recent: VecDeque<LiveFragment>,
    open: Option<LiveFragment>,
}

impl LiveState {
    /// Applies an event; returns the memory a frame event's bytes are counted in.
    fn apply(&mut self, ev: &LiveEvent, budget: &Budget) -> Option<FragmentMemory> {
        match ev {
            LiveEvent::FragmentStart(info) => {
                self.open = Some(LiveFragment {
                    info: info.clone(),
                    frames: Vec::new(),
                    metadata: None,
                    bytes: 0,
                    mem: Arc::new(Mutex::new(budget.charge(0))),
                });
            }
            LiveEvent::Frame { seq, block } => {
                if let Some(f) = self.open.as_mut().filter(|f| f.info.seq == *seq) {
                    f.bytes += block.len();
                    f.frames.push(block.clone());
                    f.mem.lock().expect("fragment memory").grow(block.len());
                    return Some(f.mem.clone());
                }
            }
            LiveEvent::FragmentEnd { seq, metadata } => {
                if let Some(mut f) = self.open.take_if(|f| f.info.seq == *seq) {
                    f.metadata = Some(metadata.clone());
                    self.recent.push_back(f);
                    let mut total: usize = self.recent.iter().map(|f| f.bytes).sum();
                    while self.recent.len() > RECENT_FRAGMENTS
                        || (total > RECENT_BYTES && self.recent.len() > 1)
                    {
                        total -= self.recent.pop_front().map_or(0, |f| f.bytes);
                    }
                }
            }
            LiveEvent::FragmentDropped { seq } => {
                self.open.take_if(|f| f.info.seq == *seq);
                self.recent.retain(|f| f.info.seq != *seq);
            }
            // Listed now: a reader's catch-up after subscribing finds it in the index, so
            // memory need not hold it (this keeps a stream's live state to the open
            // fragment and the persist queue, instead of the last 8 fragments).
            LiveEvent::FragmentPersisted { seq } => self.recent.retain(|f| f.info.seq != *seq),
        }
        None
    }
}

/// Runtime state of one stream.
#[derive(Debug)]
pub struct StreamRuntime {
    connections: AtomicUsize,
    readers: AtomicUsize,
    rate: Mutex<TokenBucket>,
    seq: tokio::sync::Mutex<SeqBlock>,
    live: Arc<Hub>,
    state: Mutex<LiveState>,
    budget: Budget,
    /// Cancelled when the stream is deleted: live readers end.
    deleted: CancellationToken,
}

#[derive(Debug, Default)]
struct SeqBlock {
    next: u64,
    end: u64,
}

/// Holds one GetMedia reader slot of a stream; released on drop.
#[derive(Debug)]
pub struct ReaderGuard(Arc<StreamRuntime>);

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, Ordering::SeqCst);
    }
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

    /// Takes a GetMedia reader slot or fails with `ConnectionLimitExceededException`.
    pub fn add_reader(self: &Arc<Self>, max: usize, stream_name: &str) -> Result<ReaderGuard> {
        let prev = self.readers.fetch_add(1, Ordering::SeqCst);
        let guard = ReaderGuard(self.clone());
        if prev >= max {
            return Err(Error::new(
                ErrorKind::ConnectionLimitExceeded,
                format!(
                    "too many GetMedia connections for this stream: stream={stream_name} max={max}"
                ),
            ));
        }
        Ok(guard)
    }

    /// Next fragment sequence number; reservations are durable before use.
    pub(crate) async fn next_seq(&self, index: &dyn Index, stream_id: &str) -> Result<u64> {
        let mut b = self.seq.lock().await;
        if b.next == b.end {
            let first = index.reserve_fragment_seqs(stream_id, SEQ_BLOCK).await?;
            b.next = first;
            b.end = first + SEQ_BLOCK;
        }
        let n = b.next;
        b.next += 1;
        Ok(n)
    }

    /// How long to wait before `bytes` more may be ingested under the rate cap.
    pub(crate) fn rate_delay(&self, bytes: usize) -> Duration {
        self.rate
            .lock()
            .expect("rate bucket")
            .take(bytes as f64, std::time::Instant::now())
    }
}

/// Token bucket with one second of burst.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Option<std::time::Instant>,
}

impl TokenBucket {
    fn take(&mut self, n: f64, now: std::time::Instant) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        if let Some(last) = self.last {
            self.tokens =
                (self.tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.rate);
        }
        self.last = Some(now);
        self.tokens -= n;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Shared ingest state of the server.
#[derive(Debug)]
pub struct Ingest {
    pub settings: IngestSettings,
    streams: Mutex<HashMap<String, Arc<StreamRuntime>>>,
    /// The memory budget of everything streams hold (see [`budget`]).
    budget: Budget,
    /// Queue of the image generator (persisted fragments tagged for image generation).
    image_jobs: std::sync::OnceLock<tokio::sync::mpsc::Sender<crate::images::generation::Job>>,
    /// The group committer every persister hands its sealed fragments to.
    committer: std::sync::OnceLock<commit::Committer>,
}

/// Holds one PutMedia connection slot of a stream; released on drop.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<StreamRuntime>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!(crate::metrics::INGEST_SESSIONS).decrement(1.0);
    }
}

impl Ingest {
    pub fn new(settings: IngestSettings) -> Self {
        Self {
            budget: Budget::new(
                usize::try_from(settings.memory_budget_bytes).unwrap_or(usize::MAX),
            ),
            settings,
            streams: Mutex::default(),
            image_jobs: std::sync::OnceLock::new(),
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

    /// Connects the image generator (once, at server start).
    pub fn set_image_jobs(&self, tx: tokio::sync::mpsc::Sender<crate::images::generation::Job>) {
        let _ = self.image_jobs.set(tx);
    }

    /// The image-generation job for a fragment about to be persisted, when the producer
    /// tagged it and the generator runs (the record is cloned only then). Queue it with
    /// [`Ingest::queue_image_job`] once the fragment is persisted.
    pub fn image_job(
        &self,
        stream: &crate::index::StreamRecord,
        f: &crate::index::FragmentRecord,
    ) -> Option<crate::images::generation::Job> {
        use crate::images::generation::Job;
        (Job::wanted(f) && self.image_jobs.get().is_some()).then(|| Job {
            stream: stream.clone(),
            fragment: f.clone(),
        })
    }

    /// Queues an image-generation job. Never waits; a full queue drops the job with a
    /// warning.
    pub fn queue_image_job(&self, job: crate::images::generation::Job) {
        let Some(tx) = self.image_jobs.get() else {
            return;
        };
        let (name, seq) = (job.stream.name.clone(), job.fragment.seq);
        if tx.try_send(job).is_err() {
            tracing::warn!(stream = %name, fragment_seq = seq, "image generation queue full; fragment skipped");
        }
    }

    /// Runtime state of a stream (created on first use).
    pub fn runtime(&self, stream_id: &str) -> Arc<StreamRuntime> {
        let mut m = self.streams.lock().expect("ingest registry");
        m.entry(stream_id.to_owned())
            .or_insert_with(|| {
                Arc::new(StreamRuntime {
                    connections: AtomicUsize::new(0),
                    readers: AtomicUsize::new(0),
                    state: Mutex::default(),
                    deleted: CancellationToken::new(),
                    rate: Mutex::new(TokenBucket {
                        rate: self.settings.max_bytes_per_second as f64,
                        tokens: self.settings.max_bytes_per_second as f64,
                        last: None,
                    }),
                    seq: tokio::sync::Mutex::default(),
                    live: Arc::new(Hub::new(
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

    /// Takes a connection slot or fails with `ConnectionLimitExceededException`.
    pub fn connect(
        &self,
        stream_id: &str,
        stream_name: &str,
    ) -> Result<(Arc<StreamRuntime>, ConnectionGuard)> {
        let rt = self.runtime(stream_id);
        let max = self.settings.max_connections_per_stream;
        let prev = rt.connections.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!(crate::metrics::INGEST_SESSIONS).increment(1.0);
        let guard = ConnectionGuard(rt.clone());
        if prev >= max {
            return Err(Error::new(
                ErrorKind::ConnectionLimitExceeded,
                format!(
                    "too many PutMedia connections for this stream: stream={stream_name} max={max}"
                ),
            ));
        }
        Ok((rt, guard))
    }

    /// The memory budget.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Drops every stream's buffered live events (the budget is exhausted): readers
    /// behind the live edge continue from storage.
    pub(crate) fn shed_live_buffers(&self) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_paces_to_the_rate() {
        let mut b = TokenBucket {
            rate: 1000.0,
            tokens: 1000.0,
            last: None,
        };
        let t0 = std::time::Instant::now();
        assert_eq!(b.take(1000.0, t0), Duration::ZERO);
        let d = b.take(500.0, t0);
        assert!((d.as_secs_f64() - 0.5).abs() < 1e-6, "{d:?}");
        // After waiting, the debt is paid.
        assert_eq!(b.take(0.0, t0 + Duration::from_secs(2)), Duration::ZERO);
        let mut off = TokenBucket {
            rate: 0.0,
            tokens: 0.0,
            last: None,
        };
        assert_eq!(off.take(1e12, t0), Duration::ZERO);
    }

    #[test]
    fn connection_limit() {
        let ing = Ingest::new(IngestSettings::default());
        let (_rt, g1) = ing.connect("s", "cam").unwrap();
        let e = ing.connect("s", "cam").unwrap_err();
        assert_eq!(e.kind, ErrorKind::ConnectionLimitExceeded);
        drop(g1);
        assert!(ing.connect("s", "cam").is_ok());
    }
}
