//! The SQLite index's schema (numbered migrations) and its fragment and stream statements
//! as constant SQL text, with the row decoders and paged query runner they share. Every
//! statement here is a fixed string run through rusqlite's per-connection statement cache
//! (`prepare_cached`), so the ingest and list paths parse no SQL after their first call.
//! Paged fragment reads carry no `LIMIT ?N` parameter: the bundled SQLite marks a bound
//! LIMIT as plan-relevant and re-prepares the statement on the first step after every new
//! binding, so the caller stops stepping after `limit` rows instead (each such query walks
//! an index in its `ORDER BY` order, so it reads no further than that; `sqlite_tests.rs`
//! checks the plans).

use std::collections::BTreeMap;

use rusqlite::{Connection, Row};

use super::{FragmentRecord, FragmentTimes, IndexResult, StreamName, StreamRecord, StreamStatus};

macro_rules! stream_cols {
    () => {
        "stream_id, name, device_name, media_type, kms_key_id, version, creation_ms, retention_hours, wrapped_key"
    };
}

macro_rules! fragment_cols {
    () => {
        "stream_id, seq, session_id, producer_ts_ms, server_ts_ms, duration_ms, producer_timecode, size, object_key, object_size, content_hash, metadata, object_offset"
    };
}

/// `AND` clause that hides the expired fragments of stream `?1` at time `?{now}`; a NULL
/// `now` (the raw index) hides nothing. Every fragment read of the retention view goes
/// through it: the one place expiry is applied to reads.
macro_rules! visible {
    ($now:literal) => {
        concat!(
            " AND (?",
            $now,
            " IS NULL OR server_ts_ms >= ?",
            $now,
            " - (SELECT s.retention_hours FROM streams s WHERE s.stream_id = ?1) * 3600000)"
        )
    };
}

/// The columns [`stream_from_row`] decodes, in order.
/// Migrations, in order; `user_version` counts how many ran.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE streams (
    stream_id       TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    device_name     TEXT,
    media_type      TEXT,
    kms_key_id      TEXT NOT NULL,
    version         TEXT NOT NULL,
    creation_ms     INTEGER NOT NULL,
    retention_hours INTEGER NOT NULL,
    wrapped_key     BLOB NOT NULL,
    seq_reserved    INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE stream_tags (
    stream_id TEXT NOT NULL REFERENCES streams(stream_id) ON DELETE CASCADE,
    tag_key   TEXT NOT NULL,
    tag_value TEXT NOT NULL,
    PRIMARY KEY (stream_id, tag_key)
);
CREATE TABLE sessions (
    stream_id     TEXT NOT NULL REFERENCES streams(stream_id) ON DELETE CASCADE,
    session_id    INTEGER NOT NULL,
    created_ms    INTEGER NOT NULL,
    header_sealed BLOB NOT NULL,
    PRIMARY KEY (stream_id, session_id)
);
CREATE TABLE fragments (
    stream_id         TEXT NOT NULL REFERENCES streams(stream_id) ON DELETE CASCADE,
    seq               INTEGER NOT NULL,
    session_id        INTEGER NOT NULL,
    producer_ts_ms    INTEGER NOT NULL,
    server_ts_ms      INTEGER NOT NULL,
    duration_ms       INTEGER NOT NULL,
    producer_timecode INTEGER NOT NULL,
    size              INTEGER NOT NULL,
    object_key        TEXT NOT NULL,
    object_size       INTEGER NOT NULL,
    content_hash      TEXT NOT NULL,
    metadata          TEXT NOT NULL,
    PRIMARY KEY (stream_id, seq)
);
CREATE INDEX fragments_by_server ON fragments (stream_id, server_ts_ms, seq);
CREATE INDEX fragments_by_producer ON fragments (stream_id, producer_ts_ms, seq);
CREATE TABLE garbage (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id  TEXT NOT NULL,
    object_key TEXT,
    created_ms INTEGER NOT NULL
);
"#,
    // 2: idempotent re-upload looks fragments up by content; retention drops sessions
    // no fragment uses.
    r#"
CREATE INDEX fragments_by_content ON fragments (stream_id, producer_ts_ms, content_hash);
CREATE INDEX fragments_by_session ON fragments (stream_id, session_id);
"#,
    // 3: per-stream configuration documents (image generation), deleted with the stream.
    r#"
CREATE TABLE stream_configs (
    stream_id TEXT NOT NULL REFERENCES streams(stream_id) ON DELETE CASCADE,
    kind      TEXT NOT NULL,
    body      TEXT NOT NULL,
    PRIMARY KEY (stream_id, kind)
);
"#,
    // 4: shared segments (issue 14). A row with an offset names a sealed blob inside the
    // segment `object_key`; older rows (offset NULL) keep naming one object each and stay
    // readable as they are.
    r#"
ALTER TABLE fragments ADD COLUMN object_offset INTEGER;
CREATE INDEX fragments_by_object ON fragments (object_key);
CREATE TABLE segments (
    object_key  TEXT PRIMARY KEY,
    class       TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    durable_end INTEGER NOT NULL,
    sealed      INTEGER NOT NULL
);
"#,
];

pub(super) const STREAM_COLS: &str = stream_cols!();

pub(super) const STREAM_BY_NAME: &str =
    concat!("SELECT ", stream_cols!(), " FROM streams WHERE name = ?1");

pub(super) const STREAM_BY_ID: &str = concat!(
    "SELECT ",
    stream_cols!(),
    " FROM streams WHERE stream_id = ?1"
);

/// `?1 <= name < ?2`, after `?3`, at most `?4` (not on a hot path).
pub(super) const LIST_STREAMS: &str = concat!(
    "SELECT ",
    stream_cols!(),
    " FROM streams WHERE name >= ?1 AND name < ?2 AND name > ?3 ORDER BY name LIMIT ?4"
);

pub(super) const INSERT_FRAGMENT: &str = concat!(
    "INSERT INTO fragments (",
    fragment_cols!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
);

pub(super) const STREAM_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM streams WHERE stream_id = ?1)";

/// `?1` stream, `?2` producer timestamp, `?3` content hash, `?4` not before this server
/// timestamp, `?5` retention-view now. The index is named: left to itself the planner
/// (without `ANALYZE` statistics) walks `fragments_by_server` over the whole dedupe
/// window, every fragment of it, on every insert; the equality lookup finds the one or
/// two candidate rows directly.
pub(super) const FIND_BY_CONTENT: &str = concat!(
    "SELECT ",
    fragment_cols!(),
    " FROM fragments INDEXED BY fragments_by_content WHERE stream_id = ?1 AND producer_ts_ms = ?2 AND content_hash = ?3",
    " AND server_ts_ms >= ?4",
    visible!(5),
    " ORDER BY seq LIMIT 1"
);

/// `?1` stream, `?2` seq, `?3` retention-view now.
pub(super) const GET_FRAGMENT: &str = concat!(
    "SELECT ",
    fragment_cols!(),
    " FROM fragments WHERE stream_id = ?1 AND seq = ?2",
    visible!(3)
);

/// `?1` stream, `?2` after this seq, `?3` retention-view now; paged by the caller.
pub(super) const FRAGMENTS_AFTER: &str = concat!(
    "SELECT ",
    fragment_cols!(),
    " FROM fragments WHERE stream_id = ?1 AND seq > ?2",
    visible!(3),
    " ORDER BY seq"
);

/// `?1` stream, `?2`..`?3` the inclusive timestamp range, `(?4, ?5)` the (timestamp, seq)
/// of the last row of the previous page, `?6` retention-view now; paged by the caller.
macro_rules! in_range {
    ($cols:expr, $col:literal) => {
        concat!(
            "SELECT ",
            $cols,
            " FROM fragments WHERE stream_id = ?1 AND ",
            $col,
            " >= ?2 AND ",
            $col,
            " <= ?3 AND (",
            $col,
            ", seq) > (?4, ?5)",
            visible!(6),
            " ORDER BY ",
            $col,
            ", seq"
        )
    };
}

pub(super) const FRAGMENTS_IN_PRODUCER_RANGE: &str = in_range!(fragment_cols!(), "producer_ts_ms");

pub(super) const FRAGMENTS_IN_SERVER_RANGE: &str = in_range!(fragment_cols!(), "server_ts_ms");

/// The columns [`times_from_row`] decodes, in order.
macro_rules! times_cols {
    () => {
        "seq, producer_ts_ms, server_ts_ms, duration_ms, size"
    };
}

pub(super) const TIMES_IN_PRODUCER_RANGE: &str = in_range!(times_cols!(), "producer_ts_ms");

pub(super) const TIMES_IN_SERVER_RANGE: &str = in_range!(times_cols!(), "server_ts_ms");

/// `?1` stream, `?2` retention-view now.
pub(super) const LAST_FRAGMENT: &str = concat!(
    "SELECT ",
    fragment_cols!(),
    " FROM fragments WHERE stream_id = ?1",
    visible!(2),
    " ORDER BY seq DESC LIMIT 1"
);

/// `(?1, ?2)` the (stream, seq) last seen, `?3` page size (not on a hot path).
pub(super) const SCAN_FRAGMENTS: &str = concat!(
    "SELECT ",
    fragment_cols!(),
    " FROM fragments WHERE stream_id > ?1 OR (stream_id = ?1 AND seq > ?2)",
    " ORDER BY stream_id, seq LIMIT ?3"
);

pub(super) fn stream_from_row(r: &Row) -> rusqlite::Result<StreamRecord> {
    let name: String = r.get(1)?;
    Ok(StreamRecord {
        stream_id: r.get(0)?,
        name: StreamName::parse(&name).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Text,
                e.message.into(),
            )
        })?,
        device_name: r.get(2)?,
        media_type: r.get(3)?,
        kms_key_id: r.get(4)?,
        version: r.get(5)?,
        status: StreamStatus::Active,
        creation_ms: r.get(6)?,
        retention_hours: r.get(7)?,
        wrapped_key: r.get(8)?,
        tags: BTreeMap::new(),
    })
}

pub(super) fn times_from_row(r: &Row) -> rusqlite::Result<FragmentTimes> {
    Ok(FragmentTimes {
        seq: r.get::<_, i64>(0)? as u64,
        producer_ts_ms: r.get(1)?,
        server_ts_ms: r.get(2)?,
        duration_ms: r.get(3)?,
        size: r.get::<_, i64>(4)? as u64,
    })
}

pub(super) fn fragment_from_row(r: &Row) -> rusqlite::Result<FragmentRecord> {
    // Most fragments carry no metadata tags: skip the JSON parser for the empty list.
    let metadata = match r.get_ref(11)?.as_str()? {
        "[]" => Vec::new(),
        meta => serde_json::from_str(meta).unwrap_or_default(),
    };
    Ok(FragmentRecord {
        stream_id: r.get(0)?,
        seq: r.get::<_, i64>(1)? as u64,
        session_id: r.get::<_, i64>(2)? as u64,
        producer_ts_ms: r.get(3)?,
        server_ts_ms: r.get(4)?,
        duration_ms: r.get(5)?,
        producer_timecode: r.get(6)?,
        size: r.get::<_, i64>(7)? as u64,
        object_key: r.get(8)?,
        object_size: r.get::<_, i64>(9)? as u64,
        content_hash: r.get(10)?,
        metadata,
        object_offset: r.get::<_, Option<i64>>(12)?.map(|o| o as u64),
    })
}

/// Runs the cached statement `sql` and decodes at most `limit` fragment rows, stepping no
/// further than that.
pub(super) fn query_fragments(
    c: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
    limit: usize,
) -> IndexResult<Vec<FragmentRecord>> {
    query_rows(c, sql, args, limit, fragment_from_row)
}

/// Runs the cached statement `sql` and decodes at most `limit` rows with `decode`.
pub(super) fn query_rows<T>(
    c: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
    limit: usize,
    decode: fn(&Row) -> rusqlite::Result<T>,
) -> IndexResult<Vec<T>> {
    let mut st = c.prepare_cached(sql).map_err(super::db_err)?;
    let mut rows = st.query(args).map_err(super::db_err)?;
    let mut out = Vec::with_capacity(limit.min(1024));
    while out.len() < limit {
        match rows.next().map_err(super::db_err)? {
            Some(r) => out.push(decode(r).map_err(super::db_err)?),
            None => break,
        }
    }
    Ok(out)
}

/// Runs `f` in a deferred transaction, committing if it returns `Ok`, rolling back
/// otherwise (as rusqlite's `Transaction` does), with `BEGIN` and `COMMIT` taken from the
/// statement cache instead of parsed on every call; for the per-fragment writes.
pub(super) fn in_transaction<T>(
    c: &Connection,
    f: impl FnOnce(&Connection) -> IndexResult<T>,
) -> IndexResult<T> {
    let run = |sql: &str| {
        c.prepare_cached(sql)
            .and_then(|mut st| st.execute([]))
            .map_err(super::db_err)
    };
    run("BEGIN DEFERRED")?;
    let r = f(c).and_then(|v| run("COMMIT").map(|_| v));
    if r.is_err() && !c.is_autocommit() {
        let _ = run("ROLLBACK");
    }
    r
}
