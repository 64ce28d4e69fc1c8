//! The segment side of the SQLite index (issue 14): the group commit of a batch of
//! fragment rows with their segments' new durable ends in one transaction, closing
//! segments, startup sealing of segments a previous process left open, and retiring
//! fragment rows (retention, size cap, DeleteStream) so that a segment left sealed with
//! no row gets a garbage row in the same transaction (`docs/design/storage.md`, I8, I9).

use std::collections::BTreeSet;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::sql::in_transaction;
use super::{db_err, find_by_content, insert_fragment_row};
use crate::clock::EpochMillis;
use crate::index::{
    BatchRow, GarbageRecord, IndexError, IndexResult, Retired, RowOutcome, SegmentRecord,
    retention_cutoff_ms,
};

const SEGMENT_COLS: &str = "object_key, class, created_ms, durable_end, sealed";

fn segment_from_row(r: &rusqlite::Row) -> rusqlite::Result<SegmentRecord> {
    Ok(SegmentRecord {
        key: r.get(0)?,
        class: r.get(1)?,
        created_ms: r.get(2)?,
        durable_end: r.get::<_, i64>(3)? as u64,
        sealed: r.get::<_, i64>(4)? != 0,
    })
}

/// See [`crate::index::Index::commit_batch`]. `now` is the retention view's clock
/// (dedupe lookups only see visible rows).
pub(super) fn commit_batch(
    c: &Connection,
    segments: &[SegmentRecord],
    rows: &[BatchRow],
    now: Option<EpochMillis>,
) -> IndexResult<Vec<RowOutcome>> {
    in_transaction(c, |tx| {
        for s in segments {
            tx.prepare_cached(
                "INSERT INTO segments (object_key, class, created_ms, durable_end, sealed)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (object_key) DO UPDATE SET durable_end = excluded.durable_end,
                 sealed = excluded.sealed",
            )
            .and_then(|mut st| {
                st.execute(params![
                    s.key,
                    s.class,
                    s.created_ms,
                    s.durable_end as i64,
                    s.sealed as i64
                ])
            })
            .map_err(db_err)?;
        }
        let mut out = Vec::with_capacity(rows.len());
        for b in rows {
            let f = &b.row;
            if let Some(since) = b.dedupe_since_ms
                && let Some(orig) = find_by_content(
                    tx,
                    &f.stream_id,
                    f.producer_ts_ms,
                    &f.content_hash,
                    since,
                    now,
                )?
            {
                out.push(RowOutcome::Duplicate(orig));
                continue;
            }
            out.push(match insert_fragment_row(tx, f) {
                Ok(()) => RowOutcome::Inserted,
                Err(IndexError::StreamNotFound(_)) => RowOutcome::StreamGone,
                Err(IndexError::DuplicateFragment { .. }) => RowOutcome::SeqTaken,
                Err(e) => return Err(e),
            });
        }
        Ok(out)
    })
}

pub(super) fn get_segment(c: &Connection, key: &str) -> IndexResult<Option<SegmentRecord>> {
    c.prepare_cached(&format!(
        "SELECT {SEGMENT_COLS} FROM segments WHERE object_key = ?1"
    ))
    .and_then(|mut st| st.query_row([key], segment_from_row).optional())
    .map_err(db_err)
}

pub(super) fn list_segments(c: &Connection) -> IndexResult<Vec<SegmentRecord>> {
    let mut st = c
        .prepare_cached(&format!(
            "SELECT {SEGMENT_COLS} FROM segments ORDER BY object_key"
        ))
        .map_err(db_err)?;
    let rows = st.query_map([], segment_from_row).map_err(db_err)?;
    rows.collect::<Result<_, _>>().map_err(db_err)
}

/// For each of `keys`: a sealed segment that no row names loses its record and gets a
/// garbage row (I9). The caller holds the transaction.
pub(super) fn retire_dead_segments(
    tx: &Connection,
    keys: &BTreeSet<String>,
    now_ms: EpochMillis,
) -> IndexResult<Vec<GarbageRecord>> {
    let mut out = Vec::new();
    for key in keys {
        let dead: bool = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM segments s WHERE s.object_key = ?1 AND s.sealed = 1
                 AND NOT EXISTS (SELECT 1 FROM fragments f WHERE f.object_key = ?1))",
            )
            .and_then(|mut st| st.query_row([key], |r| r.get(0)))
            .map_err(db_err)?;
        if !dead {
            continue;
        }
        tx.execute("DELETE FROM segments WHERE object_key = ?1", [key])
            .map_err(db_err)?;
        tx.execute(
            "INSERT INTO garbage (stream_id, object_key, created_ms) VALUES ('', ?1, ?2)",
            params![key, now_ms],
        )
        .map_err(db_err)?;
        out.push(GarbageRecord {
            id: tx.last_insert_rowid(),
            stream_id: String::new(),
            object_key: Some(key.clone()),
            created_ms: now_ms,
        });
    }
    Ok(out)
}

/// One fragment row to retire: (seq, object key, offset).
pub(super) type Victim = (i64, String, Option<i64>);

/// Step 1 of the single-fragment delete protocol for rows of one stream: each row goes;
/// a legacy row's object gets a garbage row; the segments the others were in are
/// collected into `touched` for [`retire_dead_segments`]. The caller holds the
/// transaction.
pub(super) fn retire_rows(
    tx: &Connection,
    stream_id: &str,
    victims: Vec<Victim>,
    touched: &mut BTreeSet<String>,
    now_ms: EpochMillis,
) -> IndexResult<Vec<GarbageRecord>> {
    let mut out = Vec::new();
    for (seq, key, offset) in victims {
        tx.execute(
            "DELETE FROM fragments WHERE stream_id = ?1 AND seq = ?2",
            params![stream_id, seq],
        )
        .map_err(db_err)?;
        if offset.is_some() {
            touched.insert(key);
            continue;
        }
        tx.execute(
            "INSERT INTO garbage (stream_id, object_key, created_ms) VALUES (?1, ?2, ?3)",
            params![stream_id, key, now_ms],
        )
        .map_err(db_err)?;
        out.push(GarbageRecord {
            id: tx.last_insert_rowid(),
            stream_id: stream_id.to_owned(),
            object_key: Some(key),
            created_ms: now_ms,
        });
    }
    Ok(out)
}

/// The segments a stream's rows are in (DeleteStream, before its rows go).
pub(super) fn stream_segments(tx: &Connection, stream_id: &str) -> IndexResult<BTreeSet<String>> {
    let mut st = tx
        .prepare_cached(
            "SELECT DISTINCT object_key FROM fragments WHERE stream_id = ?1 AND object_offset IS NOT NULL",
        )
        .map_err(db_err)?;
    let rows = st
        .query_map([stream_id], |r| r.get::<_, String>(0))
        .map_err(db_err)?;
    rows.collect::<Result<_, _>>().map_err(db_err)
}

/// See [`crate::index::Index::seal_segment`].
pub(super) fn seal_segment(
    c: &Connection,
    key: &str,
    now_ms: EpochMillis,
) -> IndexResult<Option<Vec<GarbageRecord>>> {
    in_transaction(c, |tx| {
        let n = tx
            .execute(
                "UPDATE segments SET sealed = 1 WHERE object_key = ?1",
                [key],
            )
            .map_err(db_err)?;
        if n == 0 {
            return Ok(None);
        }
        let keys = BTreeSet::from([key.to_owned()]);
        retire_dead_segments(tx, &keys, now_ms).map(Some)
    })
}

/// See [`crate::index::Index::seal_open_segments`].
pub(super) fn seal_open_segments(
    c: &Connection,
    now_ms: EpochMillis,
) -> IndexResult<(Vec<SegmentRecord>, Vec<GarbageRecord>)> {
    in_transaction(c, |tx| {
        let open: Vec<SegmentRecord> = {
            let mut st = tx
                .prepare_cached(&format!(
                    "SELECT {SEGMENT_COLS} FROM segments WHERE sealed = 0 ORDER BY object_key"
                ))
                .map_err(db_err)?;
            let rows = st.query_map([], segment_from_row).map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)?
        };
        tx.execute("UPDATE segments SET sealed = 1 WHERE sealed = 0", [])
            .map_err(db_err)?;
        let keys: BTreeSet<String> = open.iter().map(|s| s.key.clone()).collect();
        let garbage = retire_dead_segments(tx, &keys, now_ms)?;
        Ok((open, garbage))
    })
}

/// See [`crate::index::Index::expire_fragments`].
pub(super) fn expire(
    c: &mut Connection,
    now_ms: EpochMillis,
    protect_from_ms: EpochMillis,
    limit: usize,
) -> IndexResult<Retired> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let streams: Vec<(String, i64)> = {
        let mut st = tx
            .prepare_cached("SELECT stream_id, retention_hours FROM streams ORDER BY stream_id")
            .map_err(db_err)?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)?
    };
    let mut out = Vec::new();
    let mut touched = std::collections::BTreeSet::new();
    let mut expired = 0;
    for (id, hours) in streams {
        let before = retention_cutoff_ms(now_ms, hours).min(protect_from_ms);
        if expired < limit {
            let victims: Vec<Victim> = {
                let mut st = tx
                    .prepare_cached(
                        "SELECT seq, object_key, object_offset FROM fragments WHERE stream_id = ?1 AND server_ts_ms < ?2
                         ORDER BY server_ts_ms, seq LIMIT ?3",
                    )
                    .map_err(db_err)?;
                let rows = st
                    .query_map(params![id, before, (limit - expired) as i64], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .map_err(db_err)?;
                rows.collect::<Result<_, _>>().map_err(db_err)?
            };
            // A whole batch counts against the limit, legacy or segment rows.
            let n = victims.len();
            let legacy = retire_rows(&tx, &id, victims, &mut touched, now_ms)?;
            expired += n;
            out.extend(legacy);
        }
        tx.execute(
            "DELETE FROM sessions WHERE stream_id = ?1 AND created_ms < ?2 AND NOT EXISTS
             (SELECT 1 FROM fragments f WHERE f.stream_id = ?1 AND f.session_id = sessions.session_id)",
            params![id, before],
        )
        .map_err(db_err)?;
    }
    out.extend(retire_dead_segments(&tx, &touched, now_ms)?);
    tx.commit().map_err(db_err)?;
    Ok(Retired {
        rows: expired,
        garbage: out,
    })
}
