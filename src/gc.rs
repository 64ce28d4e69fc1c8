//! The garbage sweeper: the second half of the delete protocol in
//! `docs/design/storage.md`. It deletes the objects that garbage rows name (a whole
//! stream's prefix after DeleteStream, or single objects), then drops the rows; and it
//! removes orphans (objects of streams the index no longer knows, or fragment objects
//! without a row) once they are older than `gc.orphan_min_age`, so an upload in flight
//! is never touched.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::clock::SharedClock;
use crate::index::Index;
use crate::store::{FragmentStore, keys};

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    pub garbage_rows_done: usize,
    pub objects_deleted: usize,
    pub orphans_deleted: usize,
}

/// Sweeper state.
#[derive(Debug, Clone)]
pub struct Sweeper {
    pub index: Arc<dyn Index>,
    pub store: FragmentStore,
    pub clock: SharedClock,
    pub orphan_min_age: Duration,
}

impl Sweeper {
    /// Processes every garbage row.
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
        let cutoff = self.clock.now_ms() - self.orphan_min_age.as_millis() as i64;
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

    /// Runs until `stop` fires: an orphan sweep at start, then garbage sweeps every
    /// `interval` or when woken.
    pub async fn run(
        self,
        interval: Duration,
        wake: Arc<Notify>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        match self.sweep_orphans().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(orphans = n, "startup recovery removed orphan objects"),
            Err(e) => tracing::warn!(error = %e, "orphan sweep failed"),
        }
        loop {
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
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}
