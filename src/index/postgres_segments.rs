//! The segment side of the PostgreSQL index (issue 14, as `sqlite_segments.rs` is for
//! SQLite): the group commit of a batch of fragment rows with their segments' new durable
//! ends in one transaction, with every row inserted by one `UNNEST` statement; closing
//! segments; startup sealing of segments left open; and retiring fragment rows
//! (retention, size cap, DeleteStream) so that a segment left sealed with no row gets a
//! garbage row in the same transaction (`docs/design/storage.md`, I8, I9). Every function
//! runs inside the caller's transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use sqlx::{PgConnection, Row};

use super::TxResult;
use super::sql::*;
use super::writes::lock_streams;
use crate::clock::EpochMillis;
use crate::index::{
    BatchRow, FragmentRecord, GarbageRecord, IndexError, Retired, RowOutcome, SegmentRecord,
    retention_cutoff_ms,
};

/// See [`crate::index::Index::commit_batch`]. `now` is the retention view's clock
/// (dedupe lookups only see visible rows).
///
/// SQLite checks and inserts row by row; here the stored rows a batch can meet are read
/// with two statements (content matches, taken numbers) under the locks of the batch's
/// streams, the outcomes are decided in order in memory (rows inserted earlier in the
/// batch count as stored, exactly as in SQLite's loop), and the inserted rows go in with
/// one statement.
pub(super) async fn commit_batch(
    c: &mut PgConnection,
    segments: &[SegmentRecord],
    rows: &[BatchRow],
    now: Option<EpochMillis>,
    not_owned: &HashSet<String>,
) -> TxResult<Vec<RowOutcome>> {
    // 1. The batch's streams, locked in id order: no other writer adds, deletes or
    //    renumbers their rows until this commits. Absent ones are gone.
    let ids: BTreeSet<&str> = rows.iter().map(|b| b.row.stream_id.as_str()).collect();
    let retention = if ids.is_empty() {
        HashMap::new()
    } else {
        lock_streams(c, ids.into_iter().map(str::to_owned).collect()).await?
    };

    // 2. Segment records, applied in order: the last record of a key wins.
    let by_key: BTreeMap<&str, &SegmentRecord> =
        segments.iter().map(|s| (s.key.as_str(), s)).collect();
    if !by_key.is_empty() {
        let segs: Vec<&SegmentRecord> = by_key.into_values().collect();
        sqlx::query(UPSERT_SEGMENTS)
            .bind(segs.iter().map(|s| s.key.clone()).collect::<Vec<_>>())
            .bind(segs.iter().map(|s| s.class.clone()).collect::<Vec<_>>())
            .bind(segs.iter().map(|s| s.created_ms).collect::<Vec<_>>())
            .bind(
                segs.iter()
                    .map(|s| s.durable_end as i64)
                    .collect::<Vec<_>>(),
            )
            .bind(segs.iter().map(|s| s.sealed).collect::<Vec<_>>())
            .execute(&mut *c)
            .await?;
    }

    // 3. What the stored rows say about each row of a live stream.
    let live: Vec<usize> = (0..rows.len())
        .filter(|&i| retention.contains_key(&rows[i].row.stream_id))
        .collect();
    let stored_dup = stored_duplicates(c, rows, &live, now).await?;
    let taken: HashSet<usize> = if live.is_empty() {
        HashSet::new()
    } else {
        let ordinals: Vec<i64> = sqlx::query_scalar(TAKEN_SEQS)
            .bind(
                live.iter()
                    .map(|&i| rows[i].row.stream_id.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(
                live.iter()
                    .map(|&i| rows[i].row.seq as i64)
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut *c)
            .await?;
        ordinals.into_iter().map(|o| live[o as usize - 1]).collect()
    };

    // 4. Outcomes in batch order.
    let visible = |f: &FragmentRecord| match now {
        None => true,
        Some(n) => f.server_ts_ms >= retention_cutoff_ms(n, retention[&f.stream_id]),
    };
    let mut inserted: HashMap<(&str, i64, &str), Vec<&FragmentRecord>> = HashMap::new();
    let mut numbers: HashSet<(&str, u64)> = HashSet::new();
    let mut cols = FragmentColumns::default();
    let mut out = Vec::with_capacity(rows.len());
    for (i, b) in rows.iter().enumerate() {
        let f = &b.row;
        if not_owned.contains(&f.stream_id) && retention.contains_key(&f.stream_id) {
            out.push(RowOutcome::NotOwner);
            continue;
        }
        let key = (
            f.stream_id.as_str(),
            f.producer_ts_ms,
            f.content_hash.as_str(),
        );
        if let Some(since) = b.dedupe_since_ms {
            let earlier = inserted.get(&key).into_iter().flatten().copied();
            let orig = stored_dup
                .get(&i)
                .into_iter()
                .chain(earlier.filter(|g| g.server_ts_ms >= since && visible(g)))
                .min_by_key(|g| g.seq);
            if let Some(orig) = orig {
                out.push(RowOutcome::Duplicate(orig.clone()));
                continue;
            }
        }
        if !retention.contains_key(&f.stream_id) {
            out.push(RowOutcome::StreamGone);
            continue;
        }
        if taken.contains(&i) || !numbers.insert((f.stream_id.as_str(), f.seq)) {
            out.push(RowOutcome::SeqTaken);
            continue;
        }
        cols.push(f)?;
        inserted.entry(key).or_default().push(f);
        out.push(RowOutcome::Inserted);
    }

    // 5. One statement for every inserted row.
    let want = cols.len() as u64;
    if want > 0 {
        let n = cols.insert().execute(&mut *c).await?.rows_affected();
        if n != want {
            return Err(IndexError::Db(format!(
                "batch insert wrote {n} of {want} fragment rows under its stream locks"
            ))
            .into());
        }
    }
    Ok(out)
}

/// For each row (index into `rows`) of `live` with a dedupe window: the earliest stored
/// fragment (by seq) it repeats, if any.
async fn stored_duplicates(
    c: &mut PgConnection,
    rows: &[BatchRow],
    live: &[usize],
    now: Option<EpochMillis>,
) -> TxResult<HashMap<usize, FragmentRecord>> {
    let candidates: Vec<usize> = live
        .iter()
        .copied()
        .filter(|&i| rows[i].dedupe_since_ms.is_some())
        .collect();
    if candidates.is_empty() {
        return Ok(HashMap::new());
    }
    let col =
        |f: fn(&BatchRow) -> String| candidates.iter().map(|&i| f(&rows[i])).collect::<Vec<_>>();
    let found = sqlx::query(FIND_MANY_BY_CONTENT)
        .bind(col(|b| b.row.stream_id.clone()))
        .bind(
            candidates
                .iter()
                .map(|&i| rows[i].row.producer_ts_ms)
                .collect::<Vec<_>>(),
        )
        .bind(col(|b| b.row.content_hash.clone()))
        .bind(
            candidates
                .iter()
                .map(|&i| rows[i].dedupe_since_ms.unwrap_or(i64::MIN))
                .collect::<Vec<_>>(),
        )
        .bind(now)
        .fetch_all(&mut *c)
        .await?;
    let mut out = HashMap::new();
    for r in &found {
        let ordinal: i64 = r.try_get(0)?;
        out.insert(candidates[ordinal as usize - 1], fragment_at(r, 1)?);
    }
    Ok(out)
}

/// Inserts one garbage row per `(stream id, object key)` created at `now_ms`, returning
/// them in id (= array) order.
async fn insert_garbage(
    c: &mut PgConnection,
    rows: Vec<(String, Option<String>)>,
    now_ms: EpochMillis,
) -> TxResult<Vec<GarbageRecord>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, keys): (Vec<String>, Vec<Option<String>>) = rows.into_iter().unzip();
    let found = sqlx::query(INSERT_GARBAGE)
        .bind(ids)
        .bind(keys)
        .bind(now_ms)
        .fetch_all(&mut *c)
        .await?;
    let mut out = found
        .iter()
        .map(|r| {
            Ok(GarbageRecord {
                id: r.try_get(0)?,
                stream_id: r.try_get(1)?,
                object_key: r.try_get(2)?,
                created_ms: now_ms,
            })
        })
        .collect::<TxResult<Vec<_>>>()?;
    out.sort_by_key(|g| g.id);
    Ok(out)
}

/// For each of `keys`: a sealed segment that no row names loses its record and gets a
/// garbage row (I9). The segment rows are locked (in key order) before the fragments are
/// counted, so a batch committing rows into one of them is waited for and then seen.
pub(super) async fn retire_dead_segments(
    c: &mut PgConnection,
    keys: &BTreeSet<String>,
    now_ms: EpochMillis,
) -> TxResult<Vec<GarbageRecord>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let all: Vec<String> = keys.iter().cloned().collect();
    let sealed: Vec<String> = sqlx::query_scalar(
        "SELECT object_key FROM segments WHERE object_key = ANY($1::text[]) AND sealed \
         ORDER BY object_key FOR UPDATE",
    )
    .bind(all)
    .fetch_all(&mut *c)
    .await?;
    if sealed.is_empty() {
        return Ok(Vec::new());
    }
    let dead: BTreeSet<String> = sqlx::query_scalar(
        "SELECT u.k FROM UNNEST($1::text[]) AS u(k) \
         WHERE NOT EXISTS (SELECT 1 FROM fragments f WHERE f.object_key = u.k)",
    )
    .bind(sealed)
    .fetch_all(&mut *c)
    .await?
    .into_iter()
    .collect();
    if dead.is_empty() {
        return Ok(Vec::new());
    }
    let dead: Vec<String> = dead.into_iter().collect();
    sqlx::query("DELETE FROM segments WHERE object_key = ANY($1::text[])")
        .bind(&dead)
        .execute(&mut *c)
        .await?;
    let rows = dead.into_iter().map(|k| (String::new(), Some(k))).collect();
    insert_garbage(c, rows, now_ms).await
}

/// A fragment row a retention step deleted.
struct Deleted {
    stream_id: String,
    seq: i64,
    server_ts_ms: EpochMillis,
    object_key: String,
    object_offset: Option<i64>,
}

fn deleted_from_rows(rows: &[sqlx::postgres::PgRow]) -> TxResult<Vec<Deleted>> {
    rows.iter()
        .map(|r| {
            Ok(Deleted {
                stream_id: r.try_get(0)?,
                seq: r.try_get(1)?,
                server_ts_ms: r.try_get(2)?,
                object_key: r.try_get(3)?,
                object_offset: r.try_get(4)?,
            })
        })
        .collect()
}

/// Step 1 of the single-fragment delete protocol, after the rows went: a legacy row's
/// object gets a garbage row; the segments the others were in are collected into
/// `touched` for [`retire_dead_segments`].
async fn retire_deleted(
    c: &mut PgConnection,
    deleted: Vec<Deleted>,
    touched: &mut BTreeSet<String>,
    now_ms: EpochMillis,
) -> TxResult<Vec<GarbageRecord>> {
    let mut legacy = Vec::new();
    for d in deleted {
        if d.object_offset.is_some() {
            touched.insert(d.object_key);
        } else {
            legacy.push((d.stream_id, Some(d.object_key)));
        }
    }
    insert_garbage(c, legacy, now_ms).await
}

/// See [`crate::index::Index::seal_segment`].
pub(super) async fn seal_segment(
    c: &mut PgConnection,
    key: &str,
    now_ms: EpochMillis,
) -> TxResult<Option<Vec<GarbageRecord>>> {
    let n = sqlx::query("UPDATE segments SET sealed = true WHERE object_key = $1")
        .bind(key)
        .execute(&mut *c)
        .await?
        .rows_affected();
    if n == 0 {
        return Ok(None);
    }
    let keys = BTreeSet::from([key.to_owned()]);
    retire_dead_segments(c, &keys, now_ms).await.map(Some)
}

/// See [`crate::index::Index::seal_open_segments`]: the records are returned as they
/// were (open).
pub(super) async fn seal_open_segments(
    c: &mut PgConnection,
    now_ms: EpochMillis,
) -> TxResult<(Vec<SegmentRecord>, Vec<GarbageRecord>)> {
    let rows = sqlx::query(OPEN_SEGMENTS).fetch_all(&mut *c).await?;
    let open = rows
        .iter()
        .map(segment_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    if open.is_empty() {
        return Ok((open, Vec::new()));
    }
    let keys: BTreeSet<String> = open.iter().map(|s| s.key.clone()).collect();
    sqlx::query("UPDATE segments SET sealed = true WHERE object_key = ANY($1::text[])")
        .bind(keys.iter().cloned().collect::<Vec<_>>())
        .execute(&mut *c)
        .await?;
    let garbage = retire_dead_segments(c, &keys, now_ms).await?;
    Ok((open, garbage))
}

/// See [`crate::index::Index::expire_fragments`].
pub(super) async fn expire(
    c: &mut PgConnection,
    now_ms: EpochMillis,
    protect_from_ms: EpochMillis,
    limit: usize,
) -> TxResult<Retired> {
    let limit = limit.min(i64::MAX as usize) as i64;
    let mut deleted = if limit > 0 {
        let rows = sqlx::query(EXPIRE_ROWS)
            .bind(now_ms)
            .bind(protect_from_ms)
            .bind(limit)
            .fetch_all(&mut *c)
            .await?;
        deleted_from_rows(&rows)?
    } else {
        Vec::new()
    };
    // RETURNING has no order: put the rows back in SQLite's (streams by id, each by
    // server timestamp and seq), which the garbage ids follow.
    deleted.sort_by(|a, b| {
        (a.stream_id.as_str(), a.server_ts_ms, a.seq).cmp(&(
            b.stream_id.as_str(),
            b.server_ts_ms,
            b.seq,
        ))
    });
    let rows = deleted.len();
    let mut touched = BTreeSet::new();
    let mut garbage = retire_deleted(c, deleted, &mut touched, now_ms).await?;
    sqlx::query(EXPIRE_SESSIONS)
        .bind(now_ms)
        .bind(protect_from_ms)
        .execute(&mut *c)
        .await?;
    garbage.extend(retire_dead_segments(c, &touched, now_ms).await?);
    Ok(Retired { rows, garbage })
}

/// See [`crate::index::Index::trim_stream`]. The stream row is locked, so the sum and
/// the victims stay true until commit.
pub(super) async fn trim(
    c: &mut PgConnection,
    stream_id: &str,
    max_bytes: u64,
    protect_from_ms: EpochMillis,
    limit: usize,
    now_ms: EpochMillis,
) -> TxResult<Retired> {
    lock_streams(c, vec![stream_id.to_owned()]).await?;
    let total: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(object_size), 0)::int8 FROM fragments WHERE stream_id = $1",
    )
    .bind(stream_id)
    .fetch_one(&mut *c)
    .await?;
    let mut excess = total - max_bytes.min(i64::MAX as u64) as i64;
    let mut victims: Vec<i64> = Vec::new();
    if excess > 0 {
        let oldest = sqlx::query(
            "SELECT seq, object_size, server_ts_ms FROM fragments WHERE stream_id = $1 \
             ORDER BY seq LIMIT $2",
        )
        .bind(stream_id)
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&mut *c)
        .await?;
        for r in &oldest {
            let (seq, size, server_ts): (i64, i64, i64) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            if excess <= 0 || server_ts >= protect_from_ms {
                break;
            }
            victims.push(seq);
            excess -= size;
        }
    }
    if victims.is_empty() {
        return Ok(Retired::default());
    }
    let rows = sqlx::query(DELETE_FRAGMENTS)
        .bind(vec![stream_id.to_owned(); victims.len()])
        .bind(victims)
        .fetch_all(&mut *c)
        .await?;
    let mut deleted = deleted_from_rows(&rows)?;
    deleted.sort_by_key(|d| d.seq);
    let rows = deleted.len();
    let mut touched = BTreeSet::new();
    let mut garbage = retire_deleted(c, deleted, &mut touched, now_ms).await?;
    garbage.extend(retire_dead_segments(c, &touched, now_ms).await?);
    Ok(Retired { rows, garbage })
}
