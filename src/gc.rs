//! The garbage sweeper: the second half of the delete protocols in
//! `docs/design/storage.md`. It deletes the objects that garbage rows name (a whole
//! stream's prefix after DeleteStream, or single objects after retention), then drops the
//! rows; and at startup ([`Sweeper::recover`], in the background) it removes orphans
//! (objects of streams the index no longer knows, fragment objects without a row, and the
//! local backend's staged writes a crash left behind) that are older than
//! `gc.orphan_min_age` and predate the server's start, so an upload in flight is never
//! touched.
//!
//! Object ages are measured against the system clock, not the injected [`Clock`]: they
//! are the store's own modification times, so comparing them with simulated time would
//! make a test clock that runs ahead delete objects still being written.
//!
//! [`Clock`]: crate::clock::Clock

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};

use crate::clock::{Clock, SystemClock};
use crate::index::Index;
use crate::store::{FragmentStore, keys};

/// Wakes a background task and lets a caller wait for a whole pass: the hook tests (and
/// UpdateDataRetention) use to see a sweep or retention pass happen now.
#[derive(Debug, Clone)]
pub struct Trigger(Arc<TriggerInner>);

#[derive(Debug)]
struct TriggerInner {
    wake: Arc<Notify>,
    requested: AtomicU64,
    done: watch::Sender<u64>,
}

impl Default for Trigger {
    fn default() -> Self {
        Self::new(Arc::new(Notify::new()))
    }
}

impl Trigger {
    /// A trigger that also fires when `wake` is notified directly.
    pub fn new(wake: Arc<Notify>) -> Self {
        Self(Arc::new(TriggerInner {
            wake,
            requested: AtomicU64::new(0),
            done: watch::channel(0).0,
        }))
    }

    /// The notifier that wakes the task (without waiting for it).
    pub fn notify_handle(&self) -> Arc<Notify> {
        self.0.wake.clone()
    }

    /// Asks for a pass soon; does not wait.
    pub fn wake(&self) {
        self.0.requested.fetch_add(1, Ordering::SeqCst);
        self.0.wake.notify_one();
    }

    /// Asks for a pass and waits until a pass that began after this call has finished.
    /// Waits forever when the task is not running: callers bound it with a timeout.
    pub async fn run_now(&self) {
        let n = self.0.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rx = self.0.done.subscribe();
        self.0.wake.notify_one();
        let _ = rx.wait_for(|d| *d >= n).await;
    }

    /// Task side: call at the start of a pass; pass the value to [`Trigger::finish`].
    pub fn begin(&self) -> u64 {
        self.0.requested.load(Ordering::SeqCst)
    }

    /// Task side: the pass that began with `begin` value `n` is complete.
    pub fn finish(&self, n: u64) {
        self.0.done.send_if_modified(|d| {
            if n > *d {
                *d = n;
                true
            } else {
                false
            }
        });
    }

    /// Task side: completes when woken.
    pub async fn notified(&self) {
        self.0.wake.notified().await
    }
}

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    pub garbage_rows_done: usize,
    pub objects_deleted: usize,
    pub orphans_deleted: usize,
    pub staging_files_deleted: usize,
}

/// Sweeper state.
#[derive(Debug, Clone)]
pub struct Sweeper {
    /// The raw index (no retention view).
    pub index: Arc<dyn Index>,
    pub store: FragmentStore,
    pub orphan_min_age: Duration,
    /// Root directory of the local backend, whose crash-interrupted staged writes
    /// (`<key>#<n>`, invisible to listings) [`Sweeper::recover`] removes.
    pub local_root: Option<PathBuf>,
    /// Cluster nodes: sweeps run only on the node holding the `gc` singleton.
    pub cluster: Option<std::sync::Arc<crate::cluster::Membership>>,
}

impl Sweeper {
    /// Processes every garbage row: deletes the objects it names, then drops it.
    pub async fn sweep_garbage(&self) -> anyhow::Result<SweepReport> {
        let mut report = SweepReport::default();
        loop {
            let rows = self.index.list_garbage(100).await?;
            if rows.is_empty() {
                break;
            }
            for g in rows {
                match &g.object_key {
                    Some(k) => {
                        self.store.delete(k).await?;
                        report.objects_deleted += 1;
                    }
                    None => {
                        report.objects_deleted +=
                            self.store.delete_stream_objects(&g.stream_id).await?;
                        if let Some(root) = &self.local_root {
                            report.staging_files_deleted +=
                                remove_stream_dir(root, &g.stream_id).await?;
                        }
                    }
                }
                self.index.drop_garbage(g.id).await?;
                report.garbage_rows_done += 1;
            }
        }
        Ok(report)
    }

    /// Deletes objects with no index row that are older than the minimum age and were
    /// last modified before `before_ms` (system time; see [`Sweeper::recover`]).
    ///
    /// The index is read once per stream, in seq order, and merged with the sorted
    /// candidate list (not one lookup per object: a million objects would take a minute).
    pub async fn sweep_orphans(&self, before_ms: i64) -> anyhow::Result<usize> {
        self.sweep_orphans_paged(before_ms, 10_000).await
    }

    async fn sweep_orphans_paged(&self, before_ms: i64, page: usize) -> anyhow::Result<usize> {
        let live: HashSet<String> = self.index.stream_ids().await?.into_iter().collect();
        let old_enough = SystemClock.now_ms() - self.orphan_min_age.as_millis() as i64;
        // Candidates: old enough; per stream, by seq.
        let mut unparsed = Vec::new();
        let mut by_stream: std::collections::BTreeMap<String, Vec<(u64, String)>> =
            Default::default();
        for o in self.store.list(None).await? {
            if o.last_modified_ms > old_enough || o.last_modified_ms >= before_ms {
                continue;
            }
            match keys::parse_fragment_key(&object_store::path::Path::from(o.key.as_str())) {
                Some((sid, seq)) => by_stream.entry(sid).or_default().push((seq, o.key)),
                None => unparsed.push(o.key),
            }
        }
        let mut orphans = unparsed;
        for (sid, mut cands) in by_stream {
            if !live.contains(&sid) {
                orphans.extend(cands.into_iter().map(|(_, k)| k));
                continue;
            }
            cands.sort_unstable();
            let mut rows: Vec<u64> = Vec::new();
            let (mut next_row, mut after) = (0usize, None);
            for (seq, key) in cands {
                // Advance the row cursor to the first row seq >= seq, paging as needed.
                loop {
                    while next_row < rows.len() && rows[next_row] < seq {
                        next_row += 1;
                    }
                    if next_row < rows.len() {
                        break;
                    }
                    let batch = self.index.fragments_after(&sid, after, page).await?;
                    if batch.is_empty() {
                        break;
                    }
                    after = batch.last().map(|f| f.seq);
                    rows = batch.into_iter().map(|f| f.seq).collect();
                    next_row = 0;
                }
                if rows.get(next_row) != Some(&seq) {
                    orphans.push(key);
                }
            }
        }
        // Segment objects with no index record: a batch whose commit never happened.
        let known: HashSet<String> = self
            .index
            .segments()
            .await?
            .into_iter()
            .map(|s| s.key)
            .collect();
        for o in self.store.list_segments().await? {
            if o.last_modified_ms <= old_enough
                && o.last_modified_ms < before_ms
                && !known.contains(&o.key)
            {
                orphans.push(o.key);
            }
        }
        let mut deleted = 0;
        for key in orphans {
            tracing::info!(key = %key, "deleting orphan object");
            self.store.delete(&key).await?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Startup recovery of the object store (`docs/design/storage.md`): orphans and the
    /// local backend's interrupted staged writes. It runs in the background while the
    /// server already serves, so it only touches objects and staged files last modified
    /// before `started_ms` (the server's start, system time): an upload of this process
    /// is never in its scope, whatever `gc.orphan_min_age` is; the minimum age protects
    /// uploads of other nodes sharing the store. Pending garbage rows are completed by
    /// the background loop right after.
    pub async fn recover(&self, started_ms: i64) -> anyhow::Result<SweepReport> {
        let mut report = SweepReport {
            orphans_deleted: self.sweep_orphans(started_ms).await?,
            ..SweepReport::default()
        };
        if let Some(root) = &self.local_root {
            let leftovers = staging_leftovers(root, self.orphan_min_age, started_ms).await?;
            for p in &leftovers {
                tracing::info!(path = %p.display(), "deleting interrupted staged write");
                match tokio::fs::remove_file(p).await {
                    Ok(()) => report.staging_files_deleted += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(report)
    }

    /// Whether this node runs the sweeps (always, unless another cluster node holds the
    /// `gc` singleton).
    async fn singleton(&self, interval: Duration) -> bool {
        match &self.cluster {
            Some(m) => m.singleton("gc", 2 * interval).await,
            None => true,
        }
    }

    /// Runs until `stop` fires: startup recovery first when `recover_first` holds the
    /// server's start time (a trigger's `run_now` issued meanwhile completes only after
    /// it), a garbage sweep, then a sweep every `interval` or when triggered.
    pub async fn run(
        self,
        recover_first: Option<i64>,
        interval: Duration,
        trigger: Trigger,
        stop: tokio_util::sync::CancellationToken,
    ) {
        if let Some(started_ms) = recover_first
            && self.singleton(interval).await
        {
            let t0 = std::time::Instant::now();
            match self.recover(started_ms).await {
                Ok(r) if r.orphans_deleted + r.staging_files_deleted > 0 => tracing::info!(
                    orphans = r.orphans_deleted,
                    staged = r.staging_files_deleted,
                    seconds = t0.elapsed().as_secs_f64(),
                    "startup recovery removed objects without index rows"
                ),
                Ok(_) => tracing::info!(
                    seconds = t0.elapsed().as_secs_f64(),
                    "startup recovery done: nothing to remove"
                ),
                Err(e) => tracing::warn!(error = %e, "startup recovery of the object store failed"),
            }
        }
        loop {
            let n = trigger.begin();
            let sweep = if self.singleton(interval).await {
                self.sweep_garbage().await
            } else {
                Ok(SweepReport::default())
            };
            match sweep {
                Ok(r) if r.garbage_rows_done > 0 => {
                    tracing::info!(
                        rows = r.garbage_rows_done,
                        objects = r.objects_deleted,
                        "garbage swept"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "garbage sweep failed; will retry"),
            }
            trigger.finish(n);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = trigger.notified() => {}
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// Whether a local-backend file name is a staged write (`<name>#<digits>`), which the
/// backend hides from listings and renames into place when the write completes.
fn is_staging_name(name: &str) -> bool {
    match name.rsplit_once('#') {
        Some((_, n)) => !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

/// Staged writes under the local backend's `streams/` that are older than `min_age`: the
/// residue of a process killed mid-write (the object never became visible).
pub async fn staging_leftovers(
    root: &std::path::Path,
    min_age: Duration,
    before_ms: i64,
) -> anyhow::Result<Vec<PathBuf>> {
    let base = root.join(keys::all_streams_prefix().as_ref());
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut stack = vec![base];
        let now = SystemTime::now();
        while let Some(dir) = stack.pop() {
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            // A live server renames staged writes and deletes files while we walk: an
            // entry that vanished between the listing and its `stat` is skipped (this
            // race made `check` exit 2 in a crash soak; issue 14).
            let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
            for entry in rd {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) if gone(&e) => continue,
                    Err(e) => return Err(e.into()),
                };
                let ft = match entry.file_type() {
                    Ok(t) => t,
                    Err(e) if gone(&e) => continue,
                    Err(e) => return Err(e.into()),
                };
                if ft.is_dir() {
                    stack.push(entry.path());
                } else if ft.is_file() && is_staging_name(&entry.file_name().to_string_lossy()) {
                    let meta = match entry.metadata() {
                        Ok(m) => m,
                        Err(e) if gone(&e) => continue,
                        Err(e) => return Err(e.into()),
                    };
                    let modified = meta.modified().ok();
                    let age = modified
                        .and_then(|m| now.duration_since(m).ok())
                        .unwrap_or_default();
                    let modified_ms = modified
                        .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .map_or(i64::MAX, |d| d.as_millis() as i64);
                    if age >= min_age && modified_ms < before_ms {
                        out.push(entry.path());
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    })
    .await?
}

/// After a stream's objects are deleted, removes what listings cannot see under its
/// prefix (staged writes) and the directory itself. Returns the files removed.
async fn remove_stream_dir(root: &std::path::Path, stream_id: &str) -> anyhow::Result<usize> {
    if !keys::is_stream_id(stream_id) {
        return Ok(0);
    }
    let dir = root.join(keys::stream_prefix(stream_id).as_ref());
    tokio::task::spawn_blocking(move || {
        let mut n = 0;
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            let rd = match std::fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            for entry in rd {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    stack.push(entry.path());
                } else {
                    std::fs::remove_file(entry.path())?;
                    n += 1;
                }
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(n),
            Err(e) => Err(e.into()),
        }
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names() {
        assert!(is_staging_name("00000000000000000001.mkv.sv#1"));
        assert!(is_staging_name("x#12"));
        assert!(!is_staging_name("00000000000000000001.mkv.sv"));
        assert!(!is_staging_name("x#"));
        assert!(!is_staging_name("x#1a"));
    }

    #[tokio::test]
    async fn run_now_waits_for_a_pass_that_began_after_the_call() {
        let t = Trigger::default();
        let passes = Arc::new(AtomicU64::new(0));
        let (t2, p2) = (t.clone(), passes.clone());
        let task = tokio::spawn(async move {
            loop {
                let n = t2.begin();
                p2.fetch_add(1, Ordering::SeqCst);
                t2.finish(n);
                t2.notified().await;
            }
        });
        for i in 1..=3u64 {
            tokio::time::timeout(Duration::from_secs(5), t.run_now())
                .await
                .unwrap();
            assert!(passes.load(Ordering::SeqCst) > i);
        }
        task.abort();
    }

    #[tokio::test]
    async fn orphan_sweep_merges_with_the_index_and_spares_new_objects() {
        use crate::index::sqlite::SqliteIndex;
        use crate::index::{FragmentRecord, NewStream};
        use object_store::{ObjectStore, ObjectStoreExt};
        const SID: &str = "0000000000000000000000000000000a";
        const GONE: &str = "0000000000000000000000000000000b";
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(SqliteIndex::open(&dir.path().join("i.db")).unwrap());
        index
            .create_stream(
                NewStream {
                    stream_id: SID.into(),
                    name: crate::model::StreamName::parse("cam").unwrap(),
                    device_name: None,
                    media_type: None,
                    kms_key_id: "k".into(),
                    version: "v1".into(),
                    creation_ms: 1000,
                    retention_hours: 24,
                    wrapped_key: vec![1; 60],
                    tags: Default::default(),
                },
                10,
            )
            .await
            .unwrap();
        for seq in [1u64, 3, 4, 5, 9] {
            index
                .insert_fragment(FragmentRecord {
                    stream_id: SID.into(),
                    seq,
                    session_id: 1,
                    producer_ts_ms: seq as i64,
                    server_ts_ms: SystemClock.now_ms(),
                    duration_ms: 1,
                    producer_timecode: 0,
                    size: 1,
                    object_key: keys::fragment_key(SID, seq).to_string(),
                    object_size: 1,
                    content_hash: "00".into(),
                    object_offset: None,
                    metadata: vec![],
                })
                .await
                .unwrap();
        }
        let objects: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let put = |k: object_store::path::Path| {
            let o = objects.clone();
            async move { o.put(&k, b"x".to_vec().into()).await.unwrap() }
        };
        // Rows 1, 3, 4, 5, 9; objects 1..=10 of the stream, one of a deleted stream and
        // one unparseable key: orphans are 2, 6, 7, 8, 10 and the other two.
        for seq in 1..=10 {
            put(keys::fragment_key(SID, seq)).await;
        }
        put(keys::fragment_key(GONE, 1)).await;
        put(object_store::path::Path::from("streams/junk")).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let started = SystemClock.now_ms();
        tokio::time::sleep(Duration::from_millis(5)).await;
        put(keys::fragment_key(SID, 11)).await; // written after the start: spared
        let sweeper = Sweeper {
            index: index.clone(),
            store: FragmentStore::new(
                objects.clone(),
                Arc::new(crate::store::Keyring::ephemeral("k")),
            ),
            orphan_min_age: Duration::ZERO,
            local_root: None,
            cluster: None,
        };
        // A page of 2 rows makes the merge cross page boundaries.
        assert_eq!(sweeper.sweep_orphans_paged(started, 2).await.unwrap(), 7);
        let mut left: Vec<String> = sweeper
            .store
            .list(None)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        left.sort();
        let want: Vec<String> = [1u64, 3, 4, 5, 9, 11]
            .iter()
            .map(|&s| keys::fragment_key(SID, s).to_string())
            .collect();
        assert_eq!(left, want);
    }
}
