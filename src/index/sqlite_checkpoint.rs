//! WAL checkpoints off the commit path. SQLite's automatic checkpoint runs inside the
//! COMMIT that takes the WAL past 1,000 pages, on the committing connection: under a
//! 1,000-camera load that put a copy of the WAL into the database file, and its
//! `fsync`, inside the group commit every few batches. Instead the writer connection's
//! WAL hook (which replaces the automatic checkpoint) only wakes a thread that runs the
//! same PASSIVE checkpoint on its own connection while commits go on. A PASSIVE
//! checkpoint blocks neither writers nor readers; frames it could not copy wait for the
//! next one, and the next write transaction after a complete one restarts the WAL from
//! its start, as with the automatic checkpoint. Durability is unchanged: a commit is
//! durable once its WAL frames are synced (`synchronous=FULL`).

use std::os::raw::c_int;
use std::path::Path;

use rusqlite::Connection;

use super::{IndexResult, db_err, open_conn};

/// WAL size (pages) past which a commit wakes the checkpointer (SQLite's default).
const CHECKPOINT_PAGES: c_int = 1000;

/// Starts the checkpointer for the database at `path` and hands the writer connection's
/// WAL hook to it. The thread ends when `writer` is dropped.
pub(super) fn install(writer: &mut Connection, path: &Path) -> IndexResult<()> {
    let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
    let c = open_conn(path)?;
    std::thread::Builder::new()
        .name("sv-index-checkpoint".into())
        .spawn(move || {
            while woken.recv().is_ok() {
                let started = std::time::Instant::now();
                let r = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                });
                match r {
                    Ok(_) => metrics::histogram!(crate::metrics::INDEX_CHECKPOINT_SECONDS)
                        .record(started.elapsed().as_secs_f64()),
                    Err(e) => tracing::warn!(error = %e, "index WAL checkpoint failed; the next commit retries"),
                }
            }
        })
        .map_err(db_err)?;
    writer
        .wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: c_int| {
            if pages >= CHECKPOINT_PAGES {
                // Full: a checkpoint is already due.
                let _ = wake.try_send(());
            }
            Ok(())
        }))
        .map_err(db_err)
}
