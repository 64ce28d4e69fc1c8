//! The persister of one upload session, pipelined (`docs/design/ingest.md`, P1–P4): up
//! to `ingest.pipeline_depth` (default 8) complete fragments are in flight at once. Each one is hashed and
//! sealed on the blocking pool (several at a time, so one stream can use every core),
//! handed to the node's group committer (`super::commit`) in fragment order, and its
//! answer is taken in fragment order, so PERSISTED / ERROR acks never overtake each
//! other. PERSISTED is sent only once the committer answered that the fragment's batch is
//! durable and its row committed (the order of `docs/design/storage.md`).
//!
//! Memory: a fragment's job carries its whole budget share until its ack, reserved by
//! the driver before the job was queued: the plaintext and the sealed copy. Once sealed,
//! the plaintext is dropped and the share shrinks to the sealed copy, which sits in the
//! committer's queue and batch until it answers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::LiveEvent;
use super::ack::Ack;
use super::budget::Reservation;
use super::commit::CommitResult;
use super::session::{SessionContext, error_id};
use crate::check::content_hash;
use crate::fragmenter::Fragment;
use crate::index::{FragmentRecord, RowOutcome, SessionRecord};
use crate::model::FragmentNumber;

/// Persist jobs queued at most between the driver and the persister.
pub const PERSIST_QUEUE: usize = 4;

/// Bytes sealing adds to a fragment at most (envelope header with a stream id of up to
/// 255 bytes, nonce, tag), reserved with it.
pub const SEAL_OVERHEAD: usize = 320;

/// What the driver hands the persister, in the session's order.
pub enum Job {
    Session(SessionRecord),
    Fragment(FragmentJob),
}

/// One complete fragment.
pub struct FragmentJob {
    /// The fragment; its cluster bytes are taken for sealing and dropped after.
    pub fragment: Fragment,
    /// The cluster's size in bytes (plaintext).
    pub size: usize,
    pub seq: u64,
    pub session_id: u64,
    pub buffering_at: Instant,
    pub received_at: Instant,
    /// The fragment's plaintext and sealed copy under the budget (draining); shrinks to
    /// the sealed copy once sealed, held until the ack.
    pub mem: Reservation,
}

/// A job after sealing (stage 1).
enum Sealed {
    Session(SessionRecord),
    Fragment {
        job: FragmentJob,
        /// (content hash, sealed bytes) or why sealing failed.
        sealed: Result<(String, Bytes), String>,
    },
}

/// A fragment handed to the committer (stage 2), waiting for its answer.
struct Done {
    job: FragmentJob,
    result: Result<Persisted, PersistError>,
}

enum PersistError {
    StreamGone,
    Failed(String),
}

enum Persisted {
    /// Stored now; the row as committed.
    New(FragmentRecord),
    /// Same stream, producer timestamp and bytes as the stored fragment `original`.
    Duplicate { original: u64 },
}

/// Runs the persister until the driver closes the queue and everything in flight is
/// answered.
pub async fn run(ctx: Arc<SessionContext>, mut rx: mpsc::Receiver<Job>, abort: CancellationToken) {
    // Retention 0: live hand-off only; never PERSISTED.
    let keep = ctx.stream.retention_hours > 0;
    let mut sealing: FuturesOrdered<BoxFuture<'static, Sealed>> = FuturesOrdered::new();
    let mut committing: FuturesOrdered<BoxFuture<'static, Done>> = FuturesOrdered::new();
    let mut failed_sessions = HashSet::new();
    let depth = ctx.ingest.settings.pipeline_depth.max(1);
    let mut open = true;
    loop {
        let room = sealing.len() + committing.len() < depth;
        tokio::select! {
            biased;
            Some(done) = committing.next(), if !committing.is_empty() => {
                acknowledge(&ctx, done, &abort);
            }
            Some(s) = sealing.next(), if !sealing.is_empty() => {
                if let Some(f) = submit(&ctx, s, &mut failed_sessions, &abort).await {
                    committing.push_back(f);
                }
            }
            job = rx.recv(), if open && room => match job {
                None => open = false,
                Some(job) if keep && !abort.is_cancelled() => sealing.push_back(seal(&ctx, job)),
                Some(_) => {}
            },
            else => break,
        }
    }
}

/// Stage 1: hash and seal a fragment on the blocking pool, then drop its plaintext.
fn seal(ctx: &Arc<SessionContext>, job: Job) -> BoxFuture<'static, Sealed> {
    let mut job = match job {
        Job::Session(rec) => return futures::future::ready(Sealed::Session(rec)).boxed(),
        Job::Fragment(job) => job,
    };
    let ctx = ctx.clone();
    async move {
        let (cluster, seq) = (std::mem::take(&mut job.fragment.cluster), job.seq);
        let turn = ctx.ingest.sealing_turn().await;
        let work = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let hash = content_hash(&cluster);
            ctx.catalog
                .store()
                .seal_fragment(&ctx.key, seq, &cluster)
                .map(|sealed| (hash, sealed))
                .map_err(|e| e.to_string())
        });
        let sealed = match work.await {
            Ok(r) => r,
            Err(e) => Err(format!("sealing task failed: {e}")),
        };
        // The plaintext is gone; the sealed copy remains until the committer answers.
        if let Ok((_, b)) = &sealed {
            job.mem.shrink_to(b.len());
        }
        Sealed::Fragment { job, sealed }
    }
    .boxed()
}

/// Stage 2, in the session's order: records a session header, or hands a sealed fragment
/// to the committer and returns the future of its answer. With a dedupe window the
/// re-upload check runs in the batch transaction: a fragment equal to a stored one (or to
/// one earlier in the same batch) inserts nothing, and its bytes in the segment are
/// garbage no row names (I4).
async fn submit(
    ctx: &SessionContext,
    s: Sealed,
    failed_sessions: &mut HashSet<u64>,
    abort: &CancellationToken,
) -> Option<BoxFuture<'static, Done>> {
    let (job, sealed) = match s {
        Sealed::Session(rec) => {
            let id = rec.session_id;
            if let Err(e) = ctx.catalog.index().insert_session(rec).await {
                tracing::error!(stream = %ctx.stream.name, error = %e, "cannot record upload session");
                failed_sessions.insert(id);
            }
            return None;
        }
        Sealed::Fragment { job, sealed } => (job, sealed),
    };
    if abort.is_cancelled() {
        return None;
    }
    let failed = |job: FragmentJob, msg: String| {
        let done = Done {
            job,
            result: Err(PersistError::Failed(msg)),
        };
        Some(futures::future::ready(done).boxed())
    };
    if failed_sessions.contains(&job.session_id) {
        return failed(job, "its upload session was not recorded".into());
    }
    let (hash, sealed) = match sealed {
        Ok(v) => v,
        Err(msg) => return failed(job, msg),
    };
    let Some(committer) = ctx.ingest.committer() else {
        return failed(job, "no committer running".into());
    };
    let window = ctx.ingest.settings.dedupe_window;
    let dedupe_since =
        (!window.is_zero()).then(|| ctx.catalog.clock().now_ms() - window.as_millis() as i64);
    let f = &job.fragment;
    let rec = FragmentRecord {
        stream_id: ctx.stream.stream_id.clone(),
        seq: job.seq,
        session_id: job.session_id,
        producer_ts_ms: f.producer_ts_ms,
        server_ts_ms: f.server_ts_ms,
        duration_ms: f.duration_ms,
        producer_timecode: f.cluster_timecode as i64,
        size: job.size as u64,
        // The committer fills in the place (segment, offset, sealed length).
        object_key: String::new(),
        object_size: 0,
        object_offset: None,
        content_hash: hash,
        metadata: f.metadata.clone(),
    };
    let class = crate::store::keys::retention_class(ctx.stream.retention_hours);
    let reply = match committer
        .submit(class, sealed, rec, dedupe_since, ctx.epoch)
        .await
    {
        Ok(reply) => reply,
        Err(msg) => return failed(job, msg),
    };
    let stream_id = ctx.stream.stream_id.clone();
    Some(
        async move {
            let result = answer(reply, &stream_id, job.seq).await;
            Done { job, result }
        }
        .boxed(),
    )
}

/// Waits for the committer's answer to one fragment.
async fn answer(
    reply: oneshot::Receiver<CommitResult>,
    stream_id: &str,
    seq: u64,
) -> Result<Persisted, PersistError> {
    let (outcome, stored) = reply
        .await
        .map_err(|_| {
            PersistError::Failed("the committer stopped before the batch committed".into())
        })?
        .map_err(PersistError::Failed)?;
    match outcome {
        RowOutcome::Inserted => Ok(Persisted::New(stored)),
        RowOutcome::Duplicate(orig) => Ok(Persisted::Duplicate { original: orig.seq }),
        RowOutcome::StreamGone => Err(PersistError::StreamGone),
        RowOutcome::NotOwner => Err(PersistError::Failed(format!(
            "this node no longer owns the stream (another node took it over): stream_id={stream_id} seq={seq}"
        ))),
        RowOutcome::SeqTaken => Err(PersistError::Failed(format!(
            "fragment number already used: stream_id={stream_id} seq={seq}"
        ))),
    }
}

/// Stage 3, in the session's order: the fragment's ack. The only place that sends
/// PERSISTED, and so the publisher of the "fragment persisted" events.
fn acknowledge(ctx: &SessionContext, done: Done, abort: &CancellationToken) {
    if abort.is_cancelled() {
        // The stream is gone: the session is ending, the rest gets no ack.
        return;
    }
    let Done { job, result } = done;
    let seq = job.seq;
    let number = FragmentNumber::new(ctx.stream.creation_ms, seq);
    let tc = job.fragment.cluster_timecode;
    let fail = |id: u32| {
        metrics::counter!(crate::metrics::INGEST_ERRORS, "error_id" => id.to_string()).increment(1);
        ctx.acks.send(Ack::Error {
            timecode: Some(tc),
            number: Some(number),
            error_id: id,
        });
        ctx.runtime.publish(LiveEvent::FragmentDropped { seq });
    };
    match result {
        Ok(Persisted::Duplicate { original }) => {
            // Stored before (a producer re-sending after a lost ack): no new row;
            // PERSISTED names the stored fragment. The number of this upload's
            // BUFFERING/RECEIVED acks is never used.
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
        Ok(Persisted::New(stored)) => {
            metrics::counter!(crate::metrics::INGEST_FRAGMENTS).increment(1);
            metrics::histogram!(crate::metrics::ACK_BUFFERING_TO_PERSISTED)
                .record(job.buffering_at.elapsed().as_secs_f64());
            metrics::histogram!(crate::metrics::ACK_CLOSE_TO_PERSISTED)
                .record(job.received_at.elapsed().as_secs_f64());
            ctx.acks.send(Ack::Persisted {
                timecode: tc,
                number,
            });
            ctx.runtime.publish(LiveEvent::FragmentPersisted { seq });
            ctx.ingest.persisted_events().publish(&ctx.stream, stored);
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
