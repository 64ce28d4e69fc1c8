//! Group commit (`docs/design/storage.md`, "Create a fragment"): one task per node takes
//! every sealed fragment the persisters queued, appends each retention class's share to
//! that class's open segment and makes it durable (local: one `fdatasync` per class;
//! objects: one PUT), then commits all of the batch's rows and the segments' new durable
//! ends in ONE index transaction (the re-upload check runs inside it), and only then
//! answers each persister, which sends PERSISTED. Requests are committed in the order
//! they were submitted. Batches form by themselves: while one commit is in flight the
//! next fragments queue up, and the next batch takes them all.
//! Object-store segments also wait for `store.flush_bytes` or `store.flush_age`.
//! On a cluster node every index transaction is fenced with the node's lease
//! (`docs/design/cluster.md`): a fragment admitted under an epoch the node no longer
//! holds fails before its bytes are written, and a commit the fence refuses fails whole.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::{EpochMillis, SharedClock};
use crate::cluster::Membership;
use crate::config::StoreSettings;
use crate::index::{BatchRow, FragmentRecord, Index, IndexError, RowOutcome, SegmentRecord};
use crate::store::faults::{Faults, Op};
use crate::store::{FragmentStore, segment};

/// Most bytes one local batch takes from the queue (the rest waits for the next one).
const MAX_BATCH_BYTES: usize = 64 << 20;
/// Requests queued at most (each persister has up to `ingest.pipeline_depth` in
/// flight; a full queue makes `submit` wait).
const QUEUE: usize = 4096;

/// What a persister gets back: the outcome and the row as stored (with its place), or
/// why the batch failed.
pub type CommitResult = Result<(RowOutcome, FragmentRecord), String>;

struct Request {
    class: &'static str,
    sealed: Bytes,
    row: FragmentRecord,
    dedupe_since_ms: Option<EpochMillis>,
    /// Cluster: the lease epoch its stream was claimed under.
    epoch: Option<i64>,
    reply: oneshot::Sender<CommitResult>,
}

/// Handle to the committer task.
#[derive(Debug, Clone)]
pub struct Committer {
    tx: mpsc::Sender<Request>,
}

struct Task {
    store: FragmentStore,
    index: Arc<dyn Index>,
    clock: SharedClock,
    writer: segment::SegmentWriter,
    faults: Option<Arc<Faults>>,
    flush_bytes: usize,
    flush_age: Duration,
    membership: Option<Arc<Membership>>,
}

impl Committer {
    /// Starts the committer (after probing the object store, see
    /// [`segment::SegmentWriter::prepare`]). Call after [`recover_open_segments`].
    pub async fn spawn(
        store: FragmentStore,
        index: Arc<dyn Index>,
        clock: SharedClock,
        settings: &StoreSettings,
        faults: Option<Arc<Faults>>,
        membership: Option<Arc<Membership>>,
        stop: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let limits = segment::Limits {
            max_bytes: settings.segment_max_bytes,
            max_age_ms: settings.segment_max_age.as_millis() as i64,
            direct_io: settings.direct_io,
        };
        let mut writer = store.segment_writer(limits, faults.clone());
        writer.prepare().await;
        let task = Task {
            store,
            index,
            clock,
            writer,
            faults,
            flush_bytes: usize::try_from(settings.flush_bytes).unwrap_or(usize::MAX),
            flush_age: settings.flush_age,
            membership,
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self { tx }, tokio::spawn(task.run(rx, stop)))
    }

    /// Queues one sealed fragment of retention class `class` and returns at once with the
    /// receiver of its answer (when its batch is durable and committed, or failed).
    /// Requests are committed in the order they are submitted (a later request never goes
    /// in an earlier batch), so a caller that submits in fragment order gets its rows
    /// committed in that order.
    pub async fn submit(
        &self,
        class: &'static str,
        sealed: Bytes,
        row: FragmentRecord,
        dedupe_since_ms: Option<EpochMillis>,
        epoch: Option<i64>,
    ) -> Result<oneshot::Receiver<CommitResult>, String> {
        let (reply, rx) = oneshot::channel();
        let req = Request {
            class,
            sealed,
            row,
            dedupe_since_ms,
            epoch,
            reply,
        };
        self.tx
            .send(req)
            .await
            .map_err(|_| "the committer has stopped".to_owned())?;
        Ok(rx)
    }
}

/// Startup (before the committer runs): seals every segment a previous process left
/// open and cuts its torn tail (I8). Garbage rows it creates are left to the sweeper.
pub async fn recover_open_segments(
    store: &FragmentStore,
    index: &dyn Index,
    now_ms: EpochMillis,
) -> anyhow::Result<()> {
    let (open, _garbage) = index.seal_open_segments(now_ms).await?;
    for s in open {
        let cut = store.truncate_segment_tail(&s.key, s.durable_end).await?;
        if cut > 0 {
            tracing::info!(segment = %s.key, bytes = cut, "cut the torn tail of a segment left open by a crash");
        }
    }
    Ok(())
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Request>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => r,
                    None => break,
                },
                _ = tick.tick() => {
                    self.close_due(false).await;
                    continue;
                }
                _ = stop.cancelled() => break,
            };
            let mut bytes = first.sealed.len();
            let mut batch = vec![first];
            if !self.writer.is_local() && !self.flush_age.is_zero() {
                let deadline = tokio::time::Instant::now() + self.flush_age;
                while bytes < self.flush_bytes {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(r)) => {
                            bytes += r.sealed.len();
                            batch.push(r);
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            let cap = if self.writer.is_local() {
                MAX_BATCH_BYTES
            } else {
                self.flush_bytes
            };
            while bytes < cap {
                match rx.try_recv() {
                    Ok(r) => {
                        bytes += r.sealed.len();
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch).await;
            self.close_due(false).await;
        }
        self.close_due(true).await;
    }

    /// Cluster: splits off the requests admitted under an epoch this node no longer
    /// holds (answered at once: their bytes are never written) and returns the fence the
    /// rest commit under. Not a cluster node: everything, no fence.
    fn fence(&self, batch: Vec<Request>) -> (Vec<Request>, Option<crate::index::Fence>) {
        let Some(m) = &self.membership else {
            return (batch, None);
        };
        let lease = m.lease();
        let fence = lease.as_ref().and_then(|l| m.fence_for(l.epoch));
        let (keep, stale): (Vec<Request>, Vec<Request>) = batch
            .into_iter()
            .partition(|r| fence.is_some() && r.epoch == fence.as_ref().map(|f| f.epoch));
        if !stale.is_empty() {
            metrics::counter!(crate::metrics::CLUSTER_FENCED_FRAGMENTS)
                .increment(stale.len() as u64);
        }
        for r in stale {
            let _ = r.reply.send(Err(
                "this node no longer holds the cluster lease the upload was admitted under"
                    .to_owned(),
            ));
        }
        (keep, fence)
    }

    /// Writes and commits one batch, then answers every request of it.
    async fn commit(&mut self, batch: Vec<Request>) {
        let (batch, fence) = self.fence(batch);
        if batch.is_empty() {
            return;
        }
        metrics::histogram!(crate::metrics::COMMIT_BATCH_FRAGMENTS).record(batch.len() as f64);
        metrics::histogram!(crate::metrics::COMMIT_BATCH_BYTES)
            .record(batch.iter().map(|r| r.sealed.len()).sum::<usize>() as f64);
        // A segment past its age or size takes no more bytes.
        self.close_due(false).await;
        let write_started = std::time::Instant::now();
        let now = self.clock.now_ms();
        let mut classes: Vec<&'static str> = batch.iter().map(|r| r.class).collect();
        classes.sort_unstable();
        classes.dedup();
        // Per request: Ok(row with its place) or the failure.
        let mut placed: Vec<Result<FragmentRecord, String>> = vec![Err(String::new()); batch.len()];
        let mut segments = Vec::new();
        for class in classes {
            let idx: Vec<usize> = (0..batch.len())
                .filter(|&i| batch[i].class == class)
                .collect();
            let blobs = idx.iter().map(|&i| batch[i].sealed.clone()).collect();
            match self.writer.write(class, now, blobs).await {
                Ok(w) => {
                    for (k, &i) in idx.iter().enumerate() {
                        let mut row = batch[i].row.clone();
                        row.object_key = w.key.clone();
                        row.object_offset = Some(w.offsets[k]);
                        row.object_size = batch[i].sealed.len() as u64;
                        placed[i] = Ok(row);
                    }
                    segments.push(SegmentRecord {
                        key: w.key,
                        class: class.to_owned(),
                        created_ms: w.created_ms,
                        durable_end: w.durable_end,
                        sealed: w.sealed,
                    });
                }
                Err(f) => {
                    tracing::error!(class, error = %f.error, "segment write failed; its batch is not persisted");
                    for &i in &idx {
                        placed[i] = Err(format!("segment write failed: {}", f.error));
                    }
                    if let Some(key) = f.closed {
                        self.seal(&key).await;
                    }
                }
            }
        }
        metrics::histogram!(crate::metrics::COMMIT_WRITE_SECONDS)
            .record(write_started.elapsed().as_secs_f64());
        let rows: Vec<BatchRow> = placed
            .iter()
            .zip(&batch)
            .filter_map(|(p, r)| {
                p.as_ref().ok().map(|row| BatchRow {
                    row: row.clone(),
                    dedupe_since_ms: r.dedupe_since_ms,
                })
            })
            .collect();
        let outcomes = if rows.is_empty() {
            Ok(Vec::new())
        } else if self
            .faults
            .as_ref()
            .is_some_and(|f| f.enter(Op::IndexCommit).1.is_some())
        {
            Err("injected failure: op=IndexCommit".to_owned())
        } else {
            let started = std::time::Instant::now();
            let r = self
                .index
                .commit_batch(fence.as_ref(), segments.clone(), rows)
                .await;
            if let (Err(IndexError::Fenced(why)), Some(m), Some(f)) = (&r, &self.membership, &fence)
            {
                metrics::counter!(crate::metrics::CLUSTER_FENCED_FRAGMENTS)
                    .increment(batch.len() as u64);
                m.lost(f.epoch, why);
            }
            let r = r.map_err(|e| e.to_string());
            metrics::histogram!(crate::metrics::COMMIT_INDEX_SECONDS)
                .record(started.elapsed().as_secs_f64());
            r
        };
        let mut outcomes = match outcomes {
            Ok(o) => o.into_iter(),
            Err(e) => {
                tracing::error!(error = %e, "index commit of a batch failed; its fragments are not persisted");
                // Objects: the new segment objects have no record and never will.
                for s in segments.iter().filter(|s| s.sealed) {
                    let _ = self.store.delete(&s.key).await;
                }
                for (p, r) in placed.into_iter().zip(batch) {
                    let msg = p
                        .err()
                        .unwrap_or_else(|| format!("index commit failed: {e}"));
                    let _ = r.reply.send(Err(msg));
                }
                return;
            }
        };
        for (p, r) in placed.into_iter().zip(batch) {
            let answer = match p {
                Ok(row) => match outcomes.next() {
                    Some(o) => Ok((o, row)),
                    None => Err("index returned too few outcomes".to_owned()),
                },
                Err(e) => Err(e),
            };
            let _ = r.reply.send(answer);
        }
    }

    async fn close_due(&mut self, all: bool) {
        let now = self.clock.now_ms();
        for key in self.writer.close_due(now, all) {
            self.seal(&key).await;
        }
    }

    /// Seals a closed segment in the index and deletes it at once when no row names it.
    async fn seal(&self, key: &str) {
        match self.index.seal_segment(key, self.clock.now_ms()).await {
            Ok(None) => {
                // No batch committed in it: no row can name it.
                let _ = self.store.delete(key).await;
            }
            Ok(Some(garbage)) => {
                for g in garbage {
                    if let Some(k) = &g.object_key
                        && self.store.delete(k).await.is_ok()
                    {
                        let _ = self.index.drop_garbage(g.id).await;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(segment = %key, error = %e, "segment not sealed in the index; the next start seals it");
            }
        }
    }
}
