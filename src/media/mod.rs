//! GetMedia output: the chunk layout ([`chunk`]) and [`Reader`], which streams a stream's
//! fragments to one consumer — first from storage, then from the live hand-off frame by
//! frame — without gaps or duplicates.
//!
//! The hand-off: the reader catches up from the index, then takes a live snapshot (the
//! open fragment and the last completed ones, which may not be persisted yet) together
//! with a subscription, catches up once more, emits the snapshot's newer fragments and
//! follows live events. Everything is keyed by fragment sequence number, and `after`
//! (the last fragment fully sent) only moves forward. A reader that lags behind the live
//! channel starts the hand-off again; a fragment it had sent in part is continued from
//! the frame where it stopped (from memory, or from storage once persisted).

pub mod chunk;
pub mod demux;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::index::StreamRecord;
use crate::index::{FragmentRecord, Index};
use crate::ingest::{
    LiveEvent, LiveFragment, LiveReceiver, QueueSender, SessionHeaderBytes, StreamRuntime,
};
use crate::mkv;
use crate::model::FragmentNumber;
use crate::store::{DataKey, StoreError};
use crate::streams::Catalog;

/// Where a GetMedia session starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The open fragment, or the next one to start.
    Now,
    /// The first fragment with a sequence number above this (`None`: the earliest).
    After(Option<u64>),
}

/// Why a reader stopped.
#[derive(Debug)]
enum Stop {
    ClientGone,
    /// Nothing to send for `max_idle`: the response ends normally.
    Idle,
    Deleted,
    Failed(String),
}

/// One GetMedia consumer.
pub struct Reader {
    catalog: Catalog,
    stream: StreamRecord,
    key: Arc<DataKey>,
    runtime: Arc<StreamRuntime>,
    out: QueueSender,
    /// The last fragment sent completely.
    after: Option<u64>,
    /// A fragment sent in part: (seq, frames sent).
    partial: Option<(u64, usize)>,
    /// Whether the stream stores fragments (retention > 0).
    stored: bool,
    /// End the response after this long with nothing to send (at a fragment boundary).
    max_idle: Option<Duration>,
}

/// How long a reader waits for a fragment it sent in part to appear in storage.
const PARTIAL_WAIT: Duration = Duration::from_secs(10);

impl Reader {
    pub fn new(
        catalog: Catalog,
        stream: StreamRecord,
        key: Arc<DataKey>,
        runtime: Arc<StreamRuntime>,
        out: QueueSender,
        max_idle: Option<Duration>,
    ) -> Self {
        let stored = stream.retention_hours > 0;
        Self {
            catalog,
            stream,
            key,
            runtime,
            out,
            after: None,
            partial: None,
            stored,
            max_idle,
        }
    }

    /// Streams until the client goes away, the stream is deleted or a failure occurs
    /// (reported as an error chunk).
    pub async fn run(mut self, start: Start) {
        let r = match start {
            Start::Now => self.follow(true).await,
            Start::After(a) => {
                self.after = a;
                self.follow(false).await
            }
        };
        match r {
            Err(Stop::Failed(msg)) => {
                tracing::error!(stream = %self.stream.name, error = %msg, "GetMedia failed");
                let mut b = Vec::new();
                let n = self.after.map(|s| self.number(s));
                chunk::error(&mut b, n.as_deref(), "internal error", 5000);
                let _ = self.out.send(Bytes::from(b)).await;
            }
            Err(Stop::Deleted) => {
                let mut b = Vec::new();
                chunk::error(&mut b, None, "stream deleted", 4000);
                let _ = self.out.send(Bytes::from(b)).await;
            }
            Err(Stop::ClientGone | Stop::Idle) | Ok(()) => {}
        }
    }

    fn number(&self, seq: u64) -> String {
        FragmentNumber::new(self.stream.creation_ms, seq).to_string()
    }

    async fn send(&self, b: Vec<u8>) -> Result<(), Stop> {
        self.out
            .send(Bytes::from(b))
            .await
            .map_err(|_| Stop::ClientGone)
    }

    async fn follow(&mut self, mut now: bool) -> Result<(), Stop> {
        loop {
            if !now {
                // Bulk catch-up without a subscription, so a long replay cannot lag.
                self.catch_up(&[]).await?;
            }
            let (snapshot, mut rx) = self.runtime.subscribe();
            if now {
                // Skip what is complete; start at the open fragment or the next one.
                let complete = snapshot
                    .fragments
                    .iter()
                    .filter(|f| f.metadata.is_some())
                    .map(|f| f.info.seq)
                    .max();
                let stored = self
                    .catalog
                    .index()
                    .last_fragment(&self.stream.stream_id)
                    .await
                    .map_err(|e| Stop::Failed(e.to_string()))?;
                self.after = complete.max(stored.map(|f| f.seq));
                now = false;
            } else {
                self.catch_up(&snapshot.fragments).await?;
            }
            for f in &snapshot.fragments {
                if self.after.is_none_or(|a| f.info.seq > a) && !self.expired(f.info.server_ts_ms) {
                    self.emit_live(f).await?;
                }
            }
            // Its frames count in the memory budget while held: not kept while following.
            drop(snapshot);
            if !self.live(&mut rx).await? {
                return Ok(());
            }
            tracing::debug!(stream = %self.stream.name, "GetMedia reader lagged; resuming from storage");
        }
    }

    /// Sends stored fragments after `after`; a fragment sent in part that is not in
    /// `snapshot` is completed from storage (waiting for it to be persisted).
    async fn catch_up(&mut self, snapshot: &[LiveFragment]) -> Result<(), Stop> {
        if !self.stored {
            return Ok(());
        }
        let index = self.catalog.index().clone();
        if let Some((seq, _)) = self.partial
            && !snapshot.iter().any(|f| f.info.seq == seq)
        {
            let deadline = tokio::time::Instant::now() + PARTIAL_WAIT;
            loop {
                match index
                    .get_fragment(&self.stream.stream_id, seq)
                    .await
                    .map_err(|e| Stop::Failed(e.to_string()))?
                {
                    Some(row) => {
                        self.emit_stored(&row).await?;
                        break;
                    }
                    None if tokio::time::Instant::now() >= deadline => {
                        // Never persisted (dropped): leave it cut short.
                        self.partial = None;
                        self.after = self.after.max(Some(seq));
                        break;
                    }
                    None => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
        loop {
            let page = index
                .fragments_after(&self.stream.stream_id, self.after, 32)
                .await
                .map_err(|e| Stop::Failed(e.to_string()))?;
            if page.is_empty() {
                return Ok(());
            }
            for row in &page {
                self.emit_stored(row).await?;
            }
        }
    }

    async fn session(&mut self, session_id: u64) -> Result<Arc<SessionHeaderBytes>, Stop> {
        self.catalog
            .store()
            .session_headers()
            .get(self.catalog.index().as_ref(), &self.key, session_id)
            .await
            .map_err(|e| Stop::Failed(e.to_string()))
    }

    /// Whether a fragment of the live snapshot (which holds the last fragments in
    /// memory, however old) is past the stream's retention. Stored fragments are
    /// filtered by the index's retention view; this is the same rule for memory.
    /// Retention-0 streams store nothing, so their live fragments never expire.
    fn expired(&self, server_ts_ms: i64) -> bool {
        self.stored
            && server_ts_ms
                < crate::index::retention_cutoff_ms(
                    self.catalog.clock().now_ms(),
                    self.stream.retention_hours,
                )
    }

    fn millis_behind(&self, server_ts_ms: i64, duration_ms: i64) -> i64 {
        self.catalog.clock().now_ms() - server_ts_ms - duration_ms
    }

    /// One stored fragment as a chunk (or the rest of it, when sent in part).
    async fn emit_stored(&mut self, row: &FragmentRecord) -> Result<(), Stop> {
        let cluster = match self.catalog.store().get_fragment(&self.key, row).await {
            Ok(c) => c,
            // Removed by retention between listing and reading: nothing to send.
            Err(StoreError::NotFound(_)) => {
                self.after = self.after.max(Some(row.seq));
                return Ok(());
            }
            Err(e) => return Err(Stop::Failed(e.to_string())),
        };
        let number = self.number(row.seq);
        let mut b = Vec::with_capacity(cluster.len() + 1024);
        match self.partial.take() {
            Some((seq, sent)) if seq == row.seq => {
                for block in cluster_blocks(&cluster).into_iter().skip(sent) {
                    b.extend_from_slice(&block);
                }
            }
            _ => {
                let h = self.session(row.session_id).await?;
                chunk::prefix(
                    &mut b,
                    &h.bytes,
                    h.ebml_header_len,
                    &number,
                    row.server_ts_ms,
                    row.producer_ts_ms,
                );
                b.extend_from_slice(&cluster);
            }
        }
        chunk::metadata(&mut b, &row.metadata);
        chunk::trailer(
            &mut b,
            self.millis_behind(row.server_ts_ms, row.duration_ms),
            &number,
        );
        self.after = Some(row.seq);
        self.send(b).await
    }

    /// A fragment from the live snapshot: complete, or open (then followed by events).
    async fn emit_live(&mut self, f: &LiveFragment) -> Result<(), Stop> {
        let seq = f.info.seq;
        let mut b = Vec::new();
        let skip = match self.partial {
            Some((p, sent)) if p == seq => sent,
            _ => {
                self.start_live_chunk(&mut b, &f.info);
                0
            }
        };
        for frame in f.frames.iter().skip(skip) {
            b.extend_from_slice(frame);
        }
        match &f.metadata {
            Some(meta) => {
                chunk::metadata(&mut b, meta);
                chunk::trailer(&mut b, 0, &self.number(seq));
                self.partial = None;
                self.after = Some(seq);
            }
            None => self.partial = Some((seq, f.frames.len())),
        }
        self.send(b).await
    }

    fn start_live_chunk(&mut self, b: &mut Vec<u8>, info: &crate::ingest::FragmentInfo) {
        let h = &info.header;
        chunk::prefix(
            b,
            &h.bytes,
            h.ebml_header_len,
            &self.number(info.seq),
            info.server_ts_ms,
            info.producer_ts_ms,
        );
        chunk::live_cluster_start(b, info.cluster_timecode);
        self.partial = Some((info.seq, 0));
    }

    /// Follows live events. `Ok(true)`: lagged, start the hand-off again.
    async fn live(&mut self, rx: &mut LiveReceiver) -> Result<bool, Stop> {
        loop {
            let idle = match (self.max_idle, self.partial) {
                (Some(d), None) => d,
                _ => Duration::from_secs(86_400 * 365),
            };
            let ev = tokio::select! {
                r = rx.recv() => r,
                _ = tokio::time::sleep(idle) => return Err(Stop::Idle),
                _ = self.runtime.deleted() => return Err(Stop::Deleted),
                _ = self.out.closed() => return Err(Stop::ClientGone),
            };
            match ev {
                Ok(LiveEvent::FragmentStart(info)) => {
                    if self.after.is_some_and(|a| info.seq <= a) {
                        continue;
                    }
                    let mut b = Vec::new();
                    self.start_live_chunk(&mut b, &info);
                    self.send(b).await?;
                }
                Ok(LiveEvent::Frame { seq, block }) => {
                    if let Some((p, sent)) = self.partial.as_mut()
                        && *p == seq
                    {
                        *sent += 1;
                        self.out.send(block).await.map_err(|_| Stop::ClientGone)?;
                    }
                }
                Ok(LiveEvent::FragmentEnd { seq, metadata }) => {
                    if self.partial.is_some_and(|(p, _)| p == seq) {
                        let mut b = Vec::new();
                        chunk::metadata(&mut b, &metadata);
                        chunk::trailer(&mut b, 0, &self.number(seq));
                        self.partial = None;
                        self.after = Some(seq);
                        self.send(b).await?;
                    }
                }
                Ok(LiveEvent::FragmentDropped { seq }) => {
                    // Rejected after its first frames went out: it stays cut short (the
                    // next chunk's EBML header ends its cluster) and is never resent.
                    if self.partial.is_some_and(|(p, _)| p == seq) {
                        self.partial = None;
                        self.after = self.after.max(Some(seq));
                    }
                }
                Ok(LiveEvent::FragmentPersisted { .. }) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return Ok(true),
                Err(broadcast::error::RecvError::Closed) => return Err(Stop::Deleted),
            }
        }
    }
}

/// The raw SimpleBlock/BlockGroup elements of a stored cluster, in order.
fn cluster_blocks(cluster: &[u8]) -> Vec<Bytes> {
    let mut r = demux::bare_cluster_reader(cluster);
    let mut out = Vec::new();
    while let Ok(Some(ev)) = r.next_event() {
        if let mkv::Event::Block(b) = ev {
            out.push(b.raw);
        }
    }
    while let Ok(Some(ev)) = r.finish() {
        if let mkv::Event::Block(b) = ev {
            out.push(b.raw);
        }
    }
    out
}

/// The fragment whose time span contains `ts_ms` (or the first after it), for the
/// timestamp start selectors. Returns its sequence number.
pub async fn fragment_at(
    index: &dyn Index,
    stream_id: &str,
    kind: crate::index::TimestampKind,
    ts_ms: i64,
    max_fragment_ms: i64,
) -> crate::error::Result<Option<u64>> {
    let mut cursor = None;
    loop {
        let page = index
            .fragments_in_range(
                stream_id,
                kind,
                ts_ms - max_fragment_ms,
                i64::MAX,
                cursor,
                256,
            )
            .await?;
        let Some(last) = page.last() else {
            return Ok(None);
        };
        let ts_of = |f: &FragmentRecord| match kind {
            crate::index::TimestampKind::Producer => f.producer_ts_ms,
            crate::index::TimestampKind::Server => f.server_ts_ms,
        };
        if let Some(f) = page
            .iter()
            .find(|f| ts_of(f) + f.duration_ms.max(1) > ts_ms)
        {
            return Ok(Some(f.seq));
        }
        cursor = Some((ts_of(last), last.seq));
    }
}
