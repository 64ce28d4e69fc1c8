//! The live hand-off's data: what a session publishes (`LiveEvent`), the fragments a
//! stream holds in memory for GetMedia live readers (the open one and the persist queue),
//! and the snapshot a new reader starts from. The byte-bounded broadcast itself is
//! [`super::hub`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::budget::Budget;
use super::hub::FragmentMemory;

/// The header elements of one producer session, shared by its fragments.
pub use crate::store::session_headers::SessionHeaderBytes;

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
pub(super) struct LiveState {
    pub(super) recent: VecDeque<LiveFragment>,
    pub(super) open: Option<LiveFragment>,
}

impl LiveState {
    /// Applies an event; returns the memory a frame event's bytes are counted in.
    pub(super) fn apply(&mut self, ev: &LiveEvent, budget: &Budget) -> Option<FragmentMemory> {
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
