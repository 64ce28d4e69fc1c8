//! One PutMedia upload: reads the request body as it arrives, feeds the fragmenter,
//! sends BUFFERING / RECEIVED / ERROR / IDLE acks, and hands complete fragments to a
//! sequential persister that seals them, hands them to the node's group committer
//! (`super::commit`: bytes durable in a segment, row committed) and only then sends
//! PERSISTED (the order of `docs/design/storage.md`).
//!
//! Back-pressure: body chunks are read only after the stream's rate cap allows them
//! and the global memory budget has room; a slow store fills the persister's bounded
//! queue, which stops the reading loop. Acks never block (see `ack`).
//!
//! Memory: the driver reserves a chunk's bytes before parsing it and keeps as much as
//! the fragmenter buffers; a complete fragment takes its share along to the persister,
//! which also charges the sealed copy while it is written. The live copies of frames
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
use super::{FragmentInfo, Ingest, LiveEvent, SessionHeaderBytes, StreamRuntime};
use crate::check::content_hash;
use crate::fragmenter::{self, Fragment, Fragmenter, Output, TimecodeMode};
use crate::index::{FragmentRecord, RowOutcome, SessionRecord, StreamRecord};
use crate::model::FragmentNumber;
use crate::store::{BlobKind, DataKey};
use crate::streams::Catalog;

/// Persist jobs queued at most (each holds one complete fragment).
const PERSIST_QUEUE: usize = 4;

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
}

enum Job {
    Session(SessionRecord),
    Fragment {
        fragment: Fragment,
        seq: u64,
        session_id: u64,
        buffering_at: Instant,
        received_at: Instant,
        _mem: Reservation,
    },
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
    let persister = tokio::spawn(persist_loop(ctx.clone(), persist_rx, abort.clone()));
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
                    .next_seq(ctx.catalog.index().as_ref(), &ctx.stream.stream_id)
                    .await?;
                self.session_id = Some(session_id);
                let sealed = ctx
                    .key
                    .seal(BlobKind::SessionHeader, session_id, &h.header)
                    .map_err(|e| crate::error::Error::internal(e.to_string()))?;
                self.header = Some(Arc::new(SessionHeaderBytes {
                    session_id,
                    bytes: h.header,
                    ebml_header_len: h.ebml_header_len,
                }));
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
                    .next_seq(ctx.catalog.index().as_ref(), &ctx.stream.stream_id)
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
                // held, charged up to its size.
                let mut mem = self.held.split(fragment.cluster.len());
                mem.grow(fragment.cluster.len() - mem.bytes());
                let job = Job::Fragment {
                    fragment,
                    seq,
                    session_id: self.session_id.unwrap_or_default(),
                    buffering_at,
                    received_at: Instant::now(),
                    _mem: mem,
                };
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

/// Persists jobs in order; PERSISTED only after object and row are durable.
async fn persist_loop(
    ctx: Arc<SessionContext>,
    mut rx: mpsc::Receiver<Job>,
    abort: CancellationToken,
) {
    let keep = ctx.stream.retention_hours > 0;
    let mut failed_sessions = std::collections::HashSet::new();
    while let Some(job) = rx.recv().await {
        if abort.is_cancelled() {
            continue;
        }
        match job {
            Job::Session(rec) => {
                if !keep {
                    continue;
                }
                let id = rec.session_id;
                if let Err(e) = ctx.catalog.index().insert_session(rec).await {
                    tracing::error!(stream = %ctx.stream.name, error = %e, "cannot record upload session");
                    failed_sessions.insert(id);
                }
            }
            Job::Fragment {
                fragment,
                seq,
                session_id,
                buffering_at,
                received_at,
                _mem,
            } => {
                let number = FragmentNumber::new(ctx.stream.creation_ms, seq);
                let tc = fragment.cluster_timecode;
                if !keep {
                    // Retention 0: live hand-off only; never PERSISTED.
                    continue;
                }
                let fail = |id: u32| {
                    metrics::counter!(crate::metrics::INGEST_ERRORS, "error_id" => id.to_string())
                        .increment(1);
                    ctx.acks.send(Ack::Error {
                        timecode: Some(tc),
                        number: Some(number),
                        error_id: id,
                    });
                    ctx.runtime.publish(LiveEvent::FragmentDropped { seq });
                };
                if failed_sessions.contains(&session_id) {
                    fail(error_id::PERSIST_FAILED);
                    continue;
                }
                match persist_fragment(&ctx, &fragment, seq, session_id).await {
                    Ok(Persisted::Duplicate { original }) => {
                        // Stored before (a producer re-sending after a lost ack): no new
                        // object or row; PERSISTED names the stored fragment. The number
                        // of this upload's BUFFERING/RECEIVED acks is never used.
                        metrics::counter!(crate::metrics::INGEST_DUPLICATES).increment(1);
                        tracing::info!(
                            stream = %ctx.stream.name,
                            fragment = %number,
                            original = %FragmentNumber::new(ctx.stream.creation_ms, original),
                            "re-sent fragment already stored; acknowledged with its original number"
                        );
                        ctx.acks.send(Ack::Persisted {
                            timecode: tc,
                            number: FragmentNumber::new(ctx.stream.creation_ms, original),
                        });
                        ctx.runtime.publish(LiveEvent::FragmentDropped { seq });
                    }
                    Ok(Persisted::New) => {
                        metrics::counter!(crate::metrics::INGEST_FRAGMENTS).increment(1);
                        metrics::histogram!(crate::metrics::ACK_BUFFERING_TO_PERSISTED)
                            .record(buffering_at.elapsed().as_secs_f64());
                        metrics::histogram!(crate::metrics::ACK_CLOSE_TO_PERSISTED)
                            .record(received_at.elapsed().as_secs_f64());
                        ctx.acks.send(Ack::Persisted {
                            timecode: tc,
                            number,
                        });
                        ctx.runtime.publish(LiveEvent::FragmentPersisted { seq });
                    }
                    Err(PersistError::StreamGone) => {
                        tracing::info!(stream = %ctx.stream.name, "stream deleted during upload");
                        fail(error_id::STREAM_DELETED);
                        abort.cancel();
                    }
                    Err(PersistError::Failed(msg)) => {
                        tracing::error!(stream = %ctx.stream.name, fragment = %number, error = %msg, "fragment not persisted");
                        fail(error_id::PERSIST_FAILED);
                    }
                }
            }
        }
    }
}

enum PersistError {
    StreamGone,
    Failed(String),
}

enum Persisted {
    New,
    /// Same stream, producer timestamp and bytes as the stored fragment `original`.
    Duplicate {
        original: u64,
    },
}

/// Hash and seal, then hand the fragment to the group committer, which makes its batch
/// durable and commits the rows in one transaction (the create order of
/// `docs/design/storage.md`). With a dedupe window the re-upload check runs in that
/// transaction: a fragment equal to a stored one (or to one earlier in the same batch)
/// inserts nothing, and its bytes in the segment are garbage no row names (I4).
async fn persist_fragment(
    ctx: &SessionContext,
    f: &Fragment,
    seq: u64,
    session_id: u64,
) -> Result<Persisted, PersistError> {
    let store = ctx.catalog.store();
    let committer = ctx
        .ingest
        .committer()
        .ok_or_else(|| PersistError::Failed("no committer running".into()))?;
    let hash = content_hash(&f.cluster);
    let window = ctx.ingest.settings.dedupe_window;
    let dedupe_since =
        (!window.is_zero()).then(|| ctx.catalog.clock().now_ms() - window.as_millis() as i64);
    // The sealed copy exists until its batch is written.
    let _sealing = ctx.ingest.budget().charge(f.cluster.len() + 64);
    let sealed = store
        .seal_fragment(&ctx.key, seq, &f.cluster)
        .map_err(|e| PersistError::Failed(e.to_string()))?;
    let rec = FragmentRecord {
        stream_id: ctx.stream.stream_id.clone(),
        seq,
        session_id,
        producer_ts_ms: f.producer_ts_ms,
        server_ts_ms: f.server_ts_ms,
        duration_ms: f.duration_ms,
        producer_timecode: f.cluster_timecode as i64,
        size: f.cluster.len() as u64,
        // The committer fills in the place (segment, offset, sealed length).
        object_key: String::new(),
        object_size: 0,
        object_offset: None,
        content_hash: hash,
        metadata: f.metadata.clone(),
    };
    let class = crate::store::keys::retention_class(ctx.stream.retention_hours);
    let (outcome, stored) = committer
        .commit(class, sealed, rec, dedupe_since)
        .await
        .map_err(PersistError::Failed)?;
    match outcome {
        RowOutcome::Inserted => {
            if let Some(job) = ctx.ingest.image_job(&ctx.stream, &stored) {
                ctx.ingest.queue_image_job(job);
            }
            Ok(Persisted::New)
        }
        RowOutcome::Duplicate(orig) => Ok(Persisted::Duplicate { original: orig.seq }),
        RowOutcome::StreamGone => Err(PersistError::StreamGone),
        RowOutcome::SeqTaken => Err(PersistError::Failed(format!(
            "fragment number already used: stream_id={} seq={seq}",
            ctx.stream.stream_id
        ))),
    }
}
