//! The garbage sweeper: the second half of the delete protocols in
//! `docs/design/storage.md`. It deletes the objects that garbage rows name (a whole
//! stream's prefix after DeleteStream, or single objects after retention), then drops the
//! rows; and at startup ([`Sweeper::recover`]) it removes orphans (objects of streams the
//! index no longer knows, fragment objects without a row, and the local backend's staged
//! writes a crash left behind) once they are older than `gc.orphan_min_age`, so an
//! upload in flight is never touched.
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

    /// Deletes objects with no index row that are older than the minimum age.
    pub async fn sweep_orphans(&self) -> anyhow::Result<usize> {
        let live: HashSet<String> = self.index.stream_ids().await?.into_iter().collect();
        let cutoff = SystemClock.now_ms() - self.orphan_min_age.as_millis() as i64;
        let mut deleted = 0;
        for o in self.store.list(None).await? {
            if o.last_modified_ms > cutoff {
                continue;
            }
            let orphan =
                match keys::parse_fragment_key(&object_store::path::Path::from(o.key.as_str())) {
                    Some((sid, seq)) => {
                        !live.contains(&sid) || self.index.get_fragment(&sid, seq).await?.is_none()
                    }
                    None => true,
                };
            if orphan {
                tracing::info!(key = %o.key, "deleting orphan object");
                self.store.delete(&o.key).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Startup recovery of the object store (`docs/design/storage.md`): orphans and the
    /// local backend's interrupted staged writes. The server runs it before it accepts
    /// requests, so no upload of this node is in flight; the minimum age protects
    /// uploads of other nodes sharing the store. Pending garbage rows are completed by
    /// the background loop right after.
    pub async fn recover(&self) -> anyhow::Result<SweepReport> {
        let mut report = SweepReport {
            orphans_deleted: self.sweep_orphans().await?,
            ..SweepReport::default()
        };
        if let Some(root) = &self.local_root {
            let leftovers = staging_leftovers(root, self.orphan_min_age).await?;
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

    /// Runs until `stop` fires: a garbage sweep at start, then every `interval` or when
    /// triggered.
    pub async fn run(
        self,
        interval: Duration,
        trigger: Trigger,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let n = trigger.begin();
            match self.sweep_garbage().await {
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
            for entry in rd {
                let entry = entry?;
                let ft = entry.file_type()?;
                if ft.is_dir() {
                    stack.push(entry.path());
                } else if ft.is_file() && is_staging_name(&entry.file_name().to_string_lossy()) {
                    let age = entry
                        .metadata()?
                        .modified()
                        .ok()
                        .and_then(|m| now.duration_since(m).ok())
                        .unwrap_or_default();
                    if age >= min_age {
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
}
