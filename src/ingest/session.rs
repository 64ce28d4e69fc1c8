//! One PutMedia upload: reads the request body as it arrives, feeds the fragmenter,
//! sends BUFFERING / RECEIVED / ERROR / IDLE acks, and hands complete fragments, in
//! order, to the session's pipelined persister (`super::pipeline`), which seals them,
//! hands them to the node's group committer (bytes durable in a segment, row committed)
//! and only then sends PERSISTED, in fragment order.
//!
//! Back-pressure: body chunks are read only after the stream's rate cap allows them
//! and the global memory budget has room; a slow store fills the persister's bounded
//! queue, which stops the reading loop. Acks never block (see `ack`).
//!
//! Memory: the driver reserves a chunk's bytes before parsing it and keeps as much as
//! the fragmenter buffers; a complete fragment takes its share along to the persister,
//! after the driver reserved (waiting if need be) the rest of its footprint there, the
//! sealed copy. The live copies of frames
//! are counted by the live state (`super::LiveState`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ack::{Ack, AckSender};
use super::budget::Reservation;
use super::pipeline::{self, FragmentJob, Job, PERSIST_QUEUE};
use super::{FragmentInfo, Ingest, LiveEvent, SessionHeaderBytes, StreamRuntime};
use crate::fragmenter::{self, Fragmenter, Output, TimecodeMode};
use crate::index::{SessionRecord, StreamRecord};
use crate::model::FragmentNumber;
use crate::store::DataKey;
use crate::streams::Catalog;

/// ErrorIds sent by the driver itself.
pub mod error_id {
    pub const READ_ERROR: u32 = 4000;
    pub const STREAM_DELETED: u32 = 4008;
    pub const INTERNAL: u32 = 5000;
    pub const PERSIST_FAILED: u32 = 5001;
}

/// Everything a session needs.
pub struct SessionContext {
    pub catalog: Catalog,
    pub ingest: Arc<Ingest>,
    pub runtime: Arc<StreamRuntime>,
    pub stream: StreamRecord,
    pub key: Arc<DataKey>,
    pub mode: TimecodeMode,
    pub acks: AckSender,
    /// Server shutdown: finish the open fragment, persist, end.
    pub shutdown: CancellationToken,
    /// A newer PutMedia connection for the stream took this one's place: stop reading,
    /// drop the open fragment (the producer re-sends it), persist what was completed, end.
    pub superseded: CancellationToken,
    /// Cluster nodes: the lease epoch the stream was claimed under. Its fragment numbers
    /// come from blocks reserved under it and its commits are fenced with it.
    pub epoch: Option<i64>,
}

struct Driver {
    ctx: Arc<SessionContext>,
    fragmenter: Fragmenter,
    /// Fragmenter-local id → (sequence number, BUFFERING time).
    open: HashMap<u64, (u64, Instant)>,
    session_id: Option<u64>,
    header: Option<Arc<SessionHeaderBytes>>,
    persist: mpsc::Sender<Job>,
    /// Budget held for what the fragmenter buffers.
    held: Reservation,
    /// Set by the persister when the stream was deleted under us.
    abort: CancellationToken,
}

/// Runs the session to the end of the body (or an error, idle timeout, shutdown).
pub async fn run<S>(ctx: SessionContext, first: Option<Bytes>, mut body: S)
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    let ctx = Arc::new(ctx);
    let s = &ctx.ingest.settings;
    let limits = fragmenter::Limits {
        max_fragment_bytes: s.max_fragment_bytes,
        max_fragment_duration_ms: s.max_fragment_duration.as_millis() as i64,
        max_tracks: s.max_tracks,
        max_metadata_tags: s.max_metadata_tags,
        ..fragmenter::Limits::default()
    };
    let (persist_tx, persist_rx) = mpsc::channel(PERSIST_QUEUE);
    let abort = CancellationToken::new();
    let persister = tokio::spawn(pipeline::run(ctx.clone(), persist_rx, abort.clone()));
    let mut d = Driver {
        fragmenter: Fragmenter::new(limits, ctx.mode),
        ctx: ctx.clone(),
        open: HashMap::new(),
        session_id: None,
        header: None,
        persist: persist_tx,
        held: ctx.ingest.budget().charge(0),
        abort: abort.clone(),
    };
    let idle_interval = ctx.ingest.settings.idle_ack_interval;
    let idle_timeout = ctx.ingest.settings.idle_timeout;
    let mut last_data = Instant::now();
    if let Some(chunk) = first {
        d.on_data(chunk).await;
    }
    while !d.fragmenter.is_fatal() {
        let next = tokio::select! {
            _ = ctx.shutdown.cancelled() => {
                tracing::info!(stream = %ctx.stream.name, "server shutting down: closing upload after its open fragment");
                d.fragmenter.close_open_fragment();
                d.drain().await;
                break;
            }
            _ = ctx.superseded.cancelled() => {
                tracing::info!(stream = %ctx.stream.name, "a newer PutMedia connection replaced this one: ending it, its open fragment dropped");
                d.drain().await;
                d.drop_open_fragments();
                break;
            }
            _ = abort.cancelled() => break,
            r = tokio::time::timeout(idle_interval, body.next()) => r,
        };
        match next {
            Err(_) => {
                if last_data.elapsed() >= idle_timeout {
                    tracing::info!(stream = %ctx.stream.name, "upload idle too long: closing");
                    d.fragmenter.close_open_fragment();
                    d.drain().await;
                    break;
                }
                ctx.acks.send(Ack::Idle);
            }
            Ok(None) => {
                d.fragmenter.finish(ctx.catalog.clock().now_ms());
                d.drain().await;
                break;
            }
            Ok(Some(Err(e))) => {
                // The connection broke mid-body: the open fragment is incomplete.
                tracing::info!(stream = %ctx.stream.name, error = %e, "upload connection failed");
                d.fail_open_fragments(error_id::READ_ERROR);
                break;
            }
            Ok(Some(Ok(chunk))) => {
                last_data = Instant::now();
                d.on_data(chunk).await;
            }
        }
    }
    let dropped = d.fragmenter.dropped_leading_frames;
    if dropped > 0 {
        tracing::info!(stream = %ctx.stream.name, frames = dropped, "dropped video frames that preceded the first keyframe");
    }
    drop(d);
    let _ = persister.await;
}

impl Driver {
    async fn on_data(&mut self, chunk: Bytes) {
        metrics::counter!(crate::metrics::INGEST_BYTES).increment(chunk.len() as u64);
        let delay = self.ctx.runtime.rate_delay(chunk.len());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let budget = self.ctx.ingest.budget();
        let want = chunk.len().min((budget.limit() / 2).max(1));
        let ingest = self.ctx.ingest.clone();
        // Exhausted: first make slow live readers fall back to storage, then wait
        // (the socket is not read meanwhile).
        let r = budget.reserve(want, || ingest.shed_live_buffers()).await;
        self.held.merge(r);
        self.fragmenter
            .push(&chunk, self.ctx.catalog.clock().now_ms());
        self.drain().await;
        // Give back what the fragmenter no longer holds.
        self.held.shrink_to(self.fragmenter.buffered_bytes());
    }

    async fn drain(&mut self) {
        while let Some(out) = self.fragmenter.poll() {
            if let Err(e) = self.handle(out).await {
                tracing::error!(stream = %self.ctx.stream.name, error = %e, "ingest failure");
                self.ctx.acks.send(Ack::Error {
                    timecode: None,
                    number: None,
                    error_id: error_id::INTERNAL,
                });
                self.abort.cancel();
                return;
            }
        }
    }

    fn number(&self, seq: u64) -> FragmentNumber {
        FragmentNumber::new(self.ctx.stream.creation_ms, seq)
    }

    async fn handle(&mut self, out: Output) -> crate::error::Result<()> {
        let ctx = self.ctx.clone();
        match out {
            Output::Session(h) => {
                let session_id = ctx
                    .runtime
                    .next_seq(
                        ctx.catalog.index().as_ref(),
                        &ctx.stream.stream_id,
                        ctx.epoch,
                    )
                    .await?;
                self.session_id = Some(session_id);
                let (sealed, header) = ctx
                    .catalog
                    .store()
                    .session_headers()
                    .seal(&ctx.key, session_id, h.header, h.ebml_header_len)
                    .map_err(|e| crate::error::Error::internal(e.to_string()))?;
                self.header = Some(header);
                let rec = SessionRecord {
                    stream_id: ctx.stream.stream_id.clone(),
                    session_id,
                    created_ms: ctx.catalog.clock().now_ms(),
                    header_sealed: sealed,
                };
                let _ = self.persist.send(Job::Session(rec)).await;
            }
            Output::FragmentStart(s) => {
                let seq = ctx
                    .runtime
                    .next_seq(
                        ctx.catalog.index().as_ref(),
                        &ctx.stream.stream_id,
                        ctx.epoch,
                    )
                    .await?;
                self.open.insert(s.local_id, (seq, Instant::now()));
                ctx.acks.send(Ack::Buffering {
                    timecode: s.cluster_timecode,
                    number: self.number(seq),
                });
                if let Some(header) = &self.header {
                    ctx.runtime
                        .publish(LiveEvent::FragmentStart(Arc::new(FragmentInfo {
                            seq,
                            header: header.clone(),
                            cluster_timecode: s.cluster_timecode,
                            producer_ts_ms: s.producer_ts_ms,
                            server_ts_ms: s.server_ts_ms,
                        })));
                }
            }
            Output::Frame(f) => {
                if let Some((seq, _)) = self.open.get(&f.local_id) {
                    ctx.runtime.publish(LiveEvent::Frame {
                        seq: *seq,
                        block: f.block,
                    });
                }
            }
            Output::FragmentEnd(fragment) => {
                let Some((seq, buffering_at)) = self.open.remove(&fragment.local_id) else {
                    return Ok(());
                };
                ctx.acks.send(Ack::Received {
                    timecode: fragment.cluster_timecode,
                    number: self.number(seq),
                });
                ctx.runtime.publish(LiveEvent::FragmentEnd {
                    seq,
                    metadata: Arc::new(fragment.metadata.clone()),
                });
                // The complete fragment is a new copy: it takes the budget the builder
                // held. Its footprint in the persister (the rest of its size and the
                // sealed copy) is reserved before it is handed on, waiting if need be:
                // a slow store slows the producer instead of growing memory.
                let len = fragment.cluster.len();
                let mut mem = self.held.split(len);
                let more = len - mem.bytes() + len + pipeline::SEAL_OVERHEAD;
                let ingest = ctx.ingest.clone();
                mem.merge(
                    ctx.ingest
                        .budget()
                        .reserve(more, || ingest.shed_live_buffers())
                        .await,
                );
                mem.set_draining();
                let job = Job::Fragment(FragmentJob {
                    size: len,
                    fragment,
                    seq,
                    session_id: self.session_id.unwrap_or_default(),
                    buffering_at,
                    received_at: Instant::now(),
                    mem,
                });
                // A full queue (slow store) waits here: back-pressure on the socket.
                let _ = self.persist.send(job).await;
            }
            Output::Error(e) => {
                let seq = e
                    .local_id
                    .and_then(|id| self.open.remove(&id))
                    .map(|(s, _)| s);
                metrics::counter!(crate::metrics::INGEST_ERRORS, "error_id" => e.error_id.to_string()).increment(1);
                tracing::info!(
                    stream = %ctx.stream.name,
                    error_id = e.error_id,
                    fatal = e.fatal,
                    fragment = ?seq.map(|s| self.number(s).to_string()),
                    "{}", e.message
                );
                ctx.acks.send(Ack::Error {
                    timecode: e.timecode,
                    number: seq.map(|s| self.number(s)),
                    error_id: e.error_id,
                });
                if let Some(seq) = seq {
                    ctx.runtime.publish(LiveEvent::FragmentDropped { seq });
                }
            }
        }
        Ok(())
    }

    /// Sends ERROR for every fragment that started but will not complete.
    /// Drops the open fragments without an ack (the connection is being replaced): live
    /// readers are told, the fragment numbers are skipped.
    fn drop_open_fragments(&mut self) {
        for (_, (seq, _)) in self.open.drain() {
            self.ctx.runtime.publish(LiveEvent::FragmentDropped { seq });
        }
    }

    fn fail_open_fragments(&mut self, error_id: u32) {
        for (_, (seq, _)) in self.open.drain() {
            metrics::counter!(crate::metrics::INGEST_ERRORS, "error_id" => error_id.to_string())
                .increment(1);
            self.ctx.acks.send(Ack::Error {
                timecode: None,
                number: Some(FragmentNumber::new(self.ctx.stream.creation_ms, seq)),
                error_id,
            });
            self.ctx.runtime.publish(LiveEvent::FragmentDropped { seq });
        }
    }
}
