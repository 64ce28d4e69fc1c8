//! The retention task: deletes fragments that are past their stream's
//! `DataRetentionInHours` (by server timestamp) and, with `retention.max_stream_bytes`,
//! a stream's oldest fragments beyond its size cap. Deletion follows the single-fragment
//! protocol of `docs/design/storage.md`: garbage row + fragment row delete in one index
//! transaction, then the object delete, then the garbage row drop; a crash anywhere
//! leaves a garbage row the sweeper completes. Fragments younger than
//! `retention.min_age` are never touched.
//!
//! Reads do not wait for this task: the catalog's index is a retention view that hides
//! expired fragments at once (see [`crate::index::Index`]). Time comes from the injected
//! clock, so tests move a [`crate::clock::ManualClock`] by days and call
//! [`Trigger::run_now`] to see a pass.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::clock::SharedClock;
use crate::config::RetentionSettings;
use crate::gc::Trigger;
use crate::index::{GarbageRecord, Index};
use crate::store::FragmentStore;

/// Rows retired per index transaction.
const BATCH: usize = 500;
/// Object deletes in flight at once.
const DELETES_IN_FLIGHT: usize = 8;

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RetentionReport {
    /// Fragments past their retention, deleted from the index.
    pub expired: usize,
    /// Fragments deleted for the size cap.
    pub trimmed: usize,
    /// Objects deleted (and garbage rows dropped).
    pub objects_deleted: usize,
    /// Object deletes that failed; their garbage rows stay for the sweeper.
    pub delete_failures: usize,
}

/// The retention task's state.
#[derive(Debug, Clone)]
pub struct Retention {
    /// The raw index (no retention view).
    pub index: Arc<dyn Index>,
    pub store: FragmentStore,
    pub clock: SharedClock,
    pub settings: RetentionSettings,
    /// Cluster nodes: passes run only on the node holding the `retention` singleton.
    pub cluster: Option<Arc<crate::cluster::Membership>>,
}

impl Retention {
    /// One pass over every stream.
    pub async fn pass(&self) -> anyhow::Result<RetentionReport> {
        let mut report = RetentionReport::default();
        let now = self.clock.now_ms();
        let protect_from = now - self.settings.min_age.as_millis() as i64;
        loop {
            let r = self
                .index
                .expire_fragments(now, protect_from, BATCH)
                .await?;
            let n = r.rows;
            report.expired += n;
            self.delete_objects(r.garbage, &mut report).await;
            if n < BATCH {
                break;
            }
        }
        let cap = self.settings.max_stream_bytes;
        if cap > 0 {
            for st in self.index.stream_stats().await? {
                if st.bytes <= cap {
                    continue;
                }
                loop {
                    let r = self
                        .index
                        .trim_stream(&st.stream_id, cap, protect_from, BATCH, now)
                        .await?;
                    let n = r.rows;
                    report.trimmed += n;
                    self.delete_objects(r.garbage, &mut report).await;
                    if n < BATCH {
                        break;
                    }
                }
            }
        }
        Ok(report)
    }

    /// Steps 2 and 3 of the protocol for rows whose step 1 committed.
    async fn delete_objects(&self, rows: Vec<GarbageRecord>, report: &mut RetentionReport) {
        let results: Vec<bool> = futures::stream::iter(rows)
            .map(|g| async move {
                let Some(key) = &g.object_key else {
                    return false;
                };
                if let Err(e) = self.store.delete(key).await {
                    tracing::warn!(key = %key, error = %e, "retention: object delete failed; the sweeper retries");
                    return false;
                }
                match self.index.drop_garbage(g.id).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "retention: garbage row not dropped; the sweeper retries");
                        false
                    }
                }
            })
            .buffer_unordered(DELETES_IN_FLIGHT)
            .collect()
            .await;
        let ok = results.iter().filter(|b| **b).count();
        report.objects_deleted += ok;
        report.delete_failures += results.len() - ok;
    }

    /// Runs until `stop` fires: a pass at start, then every `interval` or when triggered
    /// (UpdateDataRetention with DECREASE triggers one).
    pub async fn run(self, trigger: Trigger, stop: tokio_util::sync::CancellationToken) {
        let interval: Duration = self.settings.interval;
        loop {
            let n = trigger.begin();
            let mine = match &self.cluster {
                Some(m) => m.singleton("retention", 2 * interval).await,
                None => true,
            };
            match if mine {
                self.pass().await
            } else {
                Ok(RetentionReport::default())
            } {
                Ok(r) if r.expired + r.trimmed > 0 => tracing::info!(
                    expired = r.expired,
                    trimmed = r.trimmed,
                    objects = r.objects_deleted,
                    failures = r.delete_failures,
                    "retention removed fragments"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention pass failed; will retry"),
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
