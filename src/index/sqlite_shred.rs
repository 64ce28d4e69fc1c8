//! Crypto-shred leaves no copy. DeleteStream zeroes the stream's wrapped data key and
//! deletes its row; `secure_delete` (set on every connection) makes SQLite overwrite
//! freed cells and pages with zeros, so the database file keeps no old key bytes. Older
//! page images still sit in the WAL until it is checkpointed and truncated: right after
//! the delete commits, [`SqliteIndex::shred_wal`] runs `wal_checkpoint(TRUNCATE)`, which
//! copies the zeroed pages into the file and truncates the WAL to zero bytes. A reader
//! whose transaction began before the delete pins the WAL; the checkpoint waits
//! [`SHRED_WAIT`] for it, and then a background task retries (backoff up to
//! [`RETRY_MAX`]) until one succeeds: the copies live as long as the oldest such reader,
//! plus at most [`RETRY_MAX`]. In-process readers hold a transaction for one query only.
//! A crash before that loses only the retry: [`SqliteIndex::open`] truncates the WAL too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::Connection;

use super::{IndexResult, SqliteIndex, db_err};

/// How long a shred checkpoint waits for readers before leaving it to the retry task.
const SHRED_WAIT: Duration = Duration::from_millis(200);
/// Longest pause between two retries.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// The busy timeout of the index connections, restored after a checkpoint.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a retry task is running (or about to).
#[derive(Debug, Default)]
pub(super) struct ShredState {
    pending: AtomicBool,
}

/// Checkpoints every WAL frame into the database file and truncates the WAL, waiting
/// `wait` for readers and writers; `Ok(false)` when one still held it.
pub(super) fn truncate_wal(c: &Connection, wait: Duration) -> IndexResult<bool> {
    c.busy_timeout(wait).map_err(db_err)?;
    let r = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    });
    c.busy_timeout(BUSY_TIMEOUT).map_err(db_err)?;
    match r {
        Ok(busy) => Ok(busy == 0),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::DatabaseBusy =>
        {
            Ok(false)
        }
        Err(e) => Err(db_err(e)),
    }
}

impl ShredState {
    /// Truncates the WAL after a crypto-shred, on the writer connection (`c`, locked by
    /// the caller), so no write of this process interleaves. Returns whether a retry
    /// task must be started ([`SqliteIndex::retry_shred`]); the flag is read and set
    /// under the writer lock, so a delete whose checkpoint failed is always covered by a
    /// task whose successful checkpoint comes later.
    pub(super) fn after_delete(&self, c: &Connection) -> bool {
        match truncate_wal(c, SHRED_WAIT) {
            Ok(true) => false,
            Ok(false) => !self.pending.swap(true, Ordering::SeqCst),
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint after DeleteStream failed; retrying");
                !self.pending.swap(true, Ordering::SeqCst)
            }
        }
    }
}

impl SqliteIndex {
    /// Retries the truncation in the background until it succeeds.
    pub(super) fn retry_shred(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(50);
            loop {
                tokio::time::sleep(pause).await;
                let pending = this.shred.clone();
                let done = this
                    .write(move |c| {
                        let done = truncate_wal(c, SHRED_WAIT)?;
                        if done {
                            pending.pending.store(false, Ordering::SeqCst);
                        }
                        Ok(done)
                    })
                    .await;
                match done {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "WAL checkpoint after DeleteStream failed; retrying")
                    }
                }
                pause = (pause * 2).min(RETRY_MAX);
            }
        });
    }
}
