//! The PostgreSQL index's schema (numbered migrations) and statements as constant SQL
//! text, with the row decoders they share. Every statement is a fixed `&'static str`, so
//! sqlx prepares it once per pooled connection (its statement cache) and only binds
//! values afterwards. Multi-row writes pass one array per column and expand them with
//! `UNNEST` (one statement, one round trip, whatever the row count). Text key columns are
//! `COLLATE "C"`: names, stream ids and object keys compare and sort bytewise, as in
//! SQLite, whatever the database's default collation (a `BEGINS_WITH` listing is a range
//! scan that relies on it).

use std::collections::BTreeMap;

use sqlx::Row;
use sqlx::postgres::PgRow;

use super::{FragmentRecord, FragmentTimes, GarbageRecord, SegmentRecord, SessionRecord};
use super::{StreamName, StreamRecord, StreamStatus};

/// Migrations, in order; `streamvault_schema` holds one row per migration applied.
/// PostgreSQL's own history starts at the schema SQLite reached with its migration 4, so
/// the numbers of the two backends are independent.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE streams (
    stream_id       TEXT COLLATE "C" PRIMARY KEY,
    name            TEXT COLLATE "C" NOT NULL UNIQUE,
    device_name     TEXT,
    media_type      TEXT,
    kms_key_id      TEXT NOT NULL,
    version         TEXT NOT NULL,
    creation_ms     BIGINT NOT NULL,
    retention_hours BIGINT NOT NULL,
    wrapped_key     BYTEA NOT NULL,
    seq_reserved    BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE stream_tags (
    stream_id TEXT COLLATE "C" NOT NULL REFERENCES streams (stream_id) ON DELETE CASCADE,
    tag_key   TEXT COLLATE "C" NOT NULL,
    tag_value TEXT NOT NULL,
    PRIMARY KEY (stream_id, tag_key)
);
CREATE TABLE sessions (
    stream_id     TEXT COLLATE "C" NOT NULL REFERENCES streams (stream_id) ON DELETE CASCADE,
    session_id    BIGINT NOT NULL,
    created_ms    BIGINT NOT NULL,
    header_sealed BYTEA NOT NULL,
    PRIMARY KEY (stream_id, session_id)
);
CREATE TABLE fragments (
    stream_id         TEXT COLLATE "C" NOT NULL REFERENCES streams (stream_id) ON DELETE CASCADE,
    seq               BIGINT NOT NULL,
    session_id        BIGINT NOT NULL,
    producer_ts_ms    BIGINT NOT NULL,
    server_ts_ms      BIGINT NOT NULL,
    duration_ms       BIGINT NOT NULL,
    producer_timecode BIGINT NOT NULL,
    size              BIGINT NOT NULL,
    object_key        TEXT COLLATE "C" NOT NULL,
    object_size       BIGINT NOT NULL,
    content_hash      TEXT COLLATE "C" NOT NULL,
    metadata          TEXT NOT NULL,
    object_offset     BIGINT,
    PRIMARY KEY (stream_id, seq)
);
CREATE INDEX fragments_by_server ON fragments (stream_id, server_ts_ms, seq);
CREATE INDEX fragments_by_producer ON fragments (stream_id, producer_ts_ms, seq);
CREATE INDEX fragments_by_content ON fragments (stream_id, producer_ts_ms, content_hash);
CREATE INDEX fragments_by_session ON fragments (stream_id, session_id);
CREATE INDEX fragments_by_object ON fragments (object_key);
CREATE TABLE garbage (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id  TEXT COLLATE "C" NOT NULL,
    object_key TEXT COLLATE "C",
    created_ms BIGINT NOT NULL
);
CREATE TABLE stream_configs (
    stream_id TEXT COLLATE "C" NOT NULL REFERENCES streams (stream_id) ON DELETE CASCADE,
    kind      TEXT COLLATE "C" NOT NULL,
    body      TEXT NOT NULL,
    PRIMARY KEY (stream_id, kind)
);
CREATE TABLE segments (
    object_key  TEXT COLLATE "C" PRIMARY KEY,
    class       TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    durable_end BIGINT NOT NULL,
    sealed      BOOLEAN NOT NULL
);
"#,
    r#"
-- 2: cluster membership (docs/design/cluster.md). Times are the database's now().
CREATE TABLE cluster_nodes (
    node_id    TEXT COLLATE "C" PRIMARY KEY,
    url        TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('live', 'dead', 'left'))
);
CREATE TABLE stream_owners (
    stream_id   TEXT COLLATE "C" PRIMARY KEY REFERENCES streams (stream_id) ON DELETE CASCADE,
    node_id     TEXT COLLATE "C" NOT NULL REFERENCES cluster_nodes (node_id),
    node_epoch  BIGINT NOT NULL,
    assigned_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX stream_owners_by_node ON stream_owners (node_id);
"#,
    r#"
-- 3: singleton leases (retention, gc): one node runs each at a time.
CREATE TABLE cluster_singletons (
    name       TEXT COLLATE "C" PRIMARY KEY,
    node_id    TEXT COLLATE "C" NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
"#,
];

/// The migration bookkeeping table; created (if missing) under the migration lock.
pub(super) const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS streamvault_schema (
    version    INTEGER PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)";

pub(super) const SCHEMA_VERSION: &str =
    "SELECT COALESCE(MAX(version), 0)::int8 FROM streamvault_schema";

/// Whether the bookkeeping table exists (the read-only open creates nothing).
pub(super) const SCHEMA_EXISTS: &str = "SELECT to_regclass('streamvault_schema') IS NOT NULL";

macro_rules! stream_cols {
    () => {
        "stream_id, name, device_name, media_type, kms_key_id, version, creation_ms, retention_hours, wrapped_key, \
         ARRAY(SELECT t.tag_key FROM stream_tags t WHERE t.stream_id = streams.stream_id ORDER BY t.tag_key), \
         ARRAY(SELECT t.tag_value FROM stream_tags t WHERE t.stream_id = streams.stream_id ORDER BY t.tag_key)"
    };
}

macro_rules! fragment_cols {
    () => {
        "stream_id, seq, session_id, producer_ts_ms, server_ts_ms, duration_ms, producer_timecode, size, object_key, object_size, content_hash, metadata, object_offset"
    };
}

/// `AND` clause that hides the expired fragments of stream `$1` at time `$now`; a NULL
/// `now` (the raw index) hides nothing. Every fragment read of the retention view goes
/// through it.
macro_rules! visible {
    ($now:literal) => {
        concat!(
            " AND ($",
            $now,
            "::int8 IS NULL OR server_ts_ms >= $",
            $now,
            "::int8 - (SELECT s.retention_hours FROM streams s WHERE s.stream_id = $1) * 3600000)"
        )
    };
}

pub(super) const STREAM_BY_NAME: &str =
    concat!("SELECT ", stream_cols!(), " FROM streams WHERE name = $1");

pub(super) const STREAM_BY_ID: &str = concat!(
    "SELECT ",
    stream_cols!(),
    " FROM streams WHERE stream_id = $1"
);

/// [`STREAM_BY_ID`], locking the row against every other change until commit.
pub(super) const STREAM_BY_ID_FOR_UPDATE: &str = concat!(
    "SELECT ",
    stream_cols!(),
    " FROM streams WHERE stream_id = $1 FOR UPDATE"
);

/// `$1 <= name < $2`, after `$3`, at most `$4`.
pub(super) const LIST_STREAMS: &str = concat!(
    "SELECT ",
    stream_cols!(),
    " FROM streams WHERE name >= $1 AND name < $2 AND name > $3 ORDER BY name LIMIT $4"
);

pub(super) const INSERT_STREAM: &str = "INSERT INTO streams (stream_id, name, device_name, media_type, kms_key_id, version, creation_ms, retention_hours, wrapped_key) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// `$1` stream, `$2` keys, `$3` values.
pub(super) const UPSERT_TAGS: &str = "INSERT INTO stream_tags (stream_id, tag_key, tag_value) \
     SELECT $1, k, v FROM UNNEST($2::text[], $3::text[]) AS t(k, v) \
     ON CONFLICT (stream_id, tag_key) DO UPDATE SET tag_value = excluded.tag_value";

/// The rows of the streams `$1` (an array) that exist, locked in id order against
/// concurrent fragment writes, updates and deletion of the same streams (the dedupe
/// check and the number check of a write then see every row that can clash), with their
/// retention. Locks are taken in id order everywhere, so two such writers never deadlock.
pub(super) const LOCK_STREAMS: &str = "SELECT stream_id, retention_hours FROM streams \
     WHERE stream_id = ANY($1::text[]) ORDER BY stream_id FOR NO KEY UPDATE";

/// Every fragment write: one row per array element. `ON CONFLICT DO NOTHING` reports a
/// taken number as fewer rows inserted instead of aborting the transaction.
pub(super) const INSERT_FRAGMENTS: &str = concat!(
    "INSERT INTO fragments (",
    fragment_cols!(),
    ") SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], \
     $7::int8[], $8::int8[], $9::text[], $10::int8[], $11::text[], $12::text[], $13::int8[]) \
     ON CONFLICT (stream_id, seq) DO NOTHING"
);

/// Ordinals (1-based) of the `($1[i], $2[i])` (stream, seq) pairs already stored.
pub(super) const TAKEN_SEQS: &str = "SELECT v.i FROM UNNEST($1::text[], $2::int8[]) WITH ORDINALITY AS v(stream_id, seq, i) \
     WHERE EXISTS (SELECT 1 FROM fragments f WHERE f.stream_id = v.stream_id AND f.seq = v.seq)";

/// `$1` stream, `$2` producer timestamp, `$3` content hash, `$4` not before this server
/// timestamp, `$5` retention-view now.
pub(super) const FIND_BY_CONTENT: &str = concat!(
    "SELECT ",
    fragment_cols!(),
    " FROM fragments WHERE stream_id = $1 AND producer_ts_ms = $2 AND content_hash = $3",
    " AND server_ts_ms >= $4",
    visible!(5),
    " ORDER BY seq LIMIT 1"
);

/// [`FIND_BY_CONTENT`] for many candidates at once: `($1[i], $2[i], $3[i], $4[i])`, `$5`
/// the retention-view now; returns the ordinal `i` then the fragment's columns.
pub(super) const FIND_MANY_BY_CONTENT: &str = concat!(
    "SELECT c.i, f.* FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::int8[]) \
     WITH ORDINALITY AS c(stream_id, producer_ts_ms, content_hash, since, i) \
     CROSS JOIN LATERAL (SELECT ",
    fragment_cols!(),
    " FROM fragments g WHERE g.stream_id = c.stream_id AND g.producer_ts_ms = c.producer_ts_ms \
     AND g.content_hash = c.content_hash AND g.server_ts_ms >= c.since \
     AND ($5::int8 IS NULL OR g.server_ts_ms >= $5::int8 - \
     (SELECT s.retention_hours FROM streams s WHERE s.stream_id = c.stream_id) * 3600000) \
     ORDER BY g.seq LIMIT 1) f"
);

/// `$1` stream, `$2` seq, `$3` retention-view now.
pub(super) const GET_FRAGMENT: &str = concat!(
    "SELECT ",
    fragment_cols!(),
    " FROM fragments WHERE stream_id = $1 AND seq = $2",
    visible!(3)
);

/// `$1` stream, `$2` after this seq, `$3` retention-view now, `$4` limit.
pub(super) const FRAGMENTS_AFTER: &str = concat!(
    "SELECT ",
    fragment_cols!(),
    " FROM fragments WHERE stream_id = $1 AND seq > $2",
    visible!(3),
    " ORDER BY seq LIMIT $4"
);

/// `$1` stream, `$2`..`$3` the inclusive timestamp range, `($4, $5)` the (timestamp, seq)
/// of the last row of the previous page, `$6` retention-view now, `$7` limit.
macro_rules! in_range {
    ($cols:expr, $col:literal) => {
        concat!(
            "SELECT ",
            $cols,
            " FROM fragments WHERE stream_id = $1 AND ",
            $col,
            " >= $2 AND ",
            $col,
            " <= $3 AND (",
            $col,
            ", seq) > ($4, $5)",
            visible!(6),
            " ORDER BY ",
            $col,
            ", seq LIMIT $7"
        )
    };
}

pub(super) const FRAGMENTS_IN_PRODUCER_RANGE: &str = in_range!(fragment_cols!(), "producer_ts_ms");

pub(super) const FRAGMENTS_IN_SERVER_RANGE: &str = in_range!(fragment_cols!(), "server_ts_ms");

macro_rules! times_cols {
    () => {
        "seq, producer_ts_ms, server_ts_ms, duration_ms, size"
    };
}

pub(super) const TIMES_IN_PRODUCER_RANGE: &str = in_range!(times_cols!(), "producer_ts_ms");

pub(super) const TIMES_IN_SERVER_RANGE: &str = in_range!(times_cols!(), "server_ts_ms");

/// `$1` stream, `$2` retention-view now.
pub(super) const LAST_FRAGMENT: &str = concat!(
    "SELECT ",
    fragment_cols!(),
    " FROM fragments WHERE stream_id = $1",
    visible!(2),
    " ORDER BY seq DESC LIMIT 1"
);

/// `($1, $2)` the (stream, seq) last seen, `$3` page size.
pub(super) const SCAN_FRAGMENTS: &str = concat!(
    "SELECT ",
    fragment_cols!(),
    " FROM fragments WHERE (stream_id, seq) > ($1, $2) ORDER BY stream_id, seq LIMIT $3"
);

pub(super) const GET_SESSION: &str = "SELECT stream_id, session_id, created_ms, header_sealed \
     FROM sessions WHERE stream_id = $1 AND session_id = $2";

macro_rules! segment_cols {
    () => {
        "object_key, class, created_ms, durable_end, sealed"
    };
}

pub(super) const LIST_SEGMENTS: &str = concat!(
    "SELECT ",
    segment_cols!(),
    " FROM segments ORDER BY object_key"
);

pub(super) const GET_SEGMENT: &str = concat!(
    "SELECT ",
    segment_cols!(),
    " FROM segments WHERE object_key = $1"
);

/// Startup: the segments left open, locked (in key order) until they are sealed.
pub(super) const OPEN_SEGMENTS: &str = concat!(
    "SELECT ",
    segment_cols!(),
    " FROM segments WHERE NOT sealed ORDER BY object_key FOR UPDATE"
);

/// Records each segment's state: `($1[i], ..., $5[i])`, keys unique and in order (row
/// locks are taken in that order).
pub(super) const UPSERT_SEGMENTS: &str = "INSERT INTO segments (object_key, class, created_ms, durable_end, sealed) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::bool[]) \
     ON CONFLICT (object_key) DO UPDATE SET durable_end = excluded.durable_end, sealed = excluded.sealed";

/// Retention step 1 for every stream at once: deletes up to `$3` fragments whose server
/// timestamp is below both their stream's retention cutoff at `$1` and `$2` (the minimum
/// age), taking streams in id order and each stream's rows in (server timestamp, seq)
/// order (as SQLite's per-stream loop does), and returns them.
pub(super) const EXPIRE_ROWS: &str = "WITH v AS MATERIALIZED ( \
     SELECT e.stream_id, e.seq FROM streams s CROSS JOIN LATERAL ( \
       SELECT f.stream_id, f.seq, f.server_ts_ms FROM fragments f \
       WHERE f.stream_id = s.stream_id AND f.server_ts_ms < LEAST($1::int8 - s.retention_hours * 3600000, $2::int8) \
       ORDER BY f.server_ts_ms, f.seq LIMIT $3) e \
     ORDER BY e.stream_id, e.server_ts_ms, e.seq LIMIT $3) \
     DELETE FROM fragments d USING v WHERE d.stream_id = v.stream_id AND d.seq = v.seq \
     RETURNING d.stream_id, d.seq, d.server_ts_ms, d.object_key, d.object_offset";

/// Sessions no fragment uses any more, created before both their stream's cutoff at `$1`
/// and `$2`.
pub(super) const EXPIRE_SESSIONS: &str = "DELETE FROM sessions se USING streams s \
     WHERE se.stream_id = s.stream_id \
     AND se.created_ms < LEAST($1::int8 - s.retention_hours * 3600000, $2::int8) \
     AND NOT EXISTS (SELECT 1 FROM fragments f WHERE f.stream_id = se.stream_id AND f.session_id = se.session_id)";

/// Garbage rows `($1[i], $2[i])` (stream id, object key or NULL) created at `$3`, ids
/// assigned in array order.
pub(super) const INSERT_GARBAGE: &str = "INSERT INTO garbage (stream_id, object_key, created_ms) \
     SELECT g.stream_id, g.object_key, $3 FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS g(stream_id, object_key, i) \
     ORDER BY g.i RETURNING id, stream_id, object_key";

/// Deletes the fragment rows `($1[i], $2[i])`, returning those it deleted (a concurrent
/// retention pass may have taken some).
pub(super) const DELETE_FRAGMENTS: &str = "DELETE FROM fragments f USING UNNEST($1::text[], $2::int8[]) AS v(stream_id, seq) \
     WHERE f.stream_id = v.stream_id AND f.seq = v.seq \
     RETURNING f.stream_id, f.seq, f.server_ts_ms, f.object_key, f.object_offset";

pub(super) fn stream_from_row(r: &PgRow) -> Result<StreamRecord, sqlx::Error> {
    let name: String = r.try_get(1)?;
    let keys: Vec<String> = r.try_get(9)?;
    let values: Vec<String> = r.try_get(10)?;
    Ok(StreamRecord {
        stream_id: r.try_get(0)?,
        name: StreamName::parse(&name).map_err(|e| sqlx::Error::Decode(e.message.into()))?,
        device_name: r.try_get(2)?,
        media_type: r.try_get(3)?,
        kms_key_id: r.try_get(4)?,
        version: r.try_get(5)?,
        status: StreamStatus::Active,
        creation_ms: r.try_get(6)?,
        retention_hours: r.try_get(7)?,
        wrapped_key: r.try_get(8)?,
        tags: keys.into_iter().zip(values).collect::<BTreeMap<_, _>>(),
    })
}

pub(super) fn times_from_row(r: &PgRow) -> Result<FragmentTimes, sqlx::Error> {
    Ok(FragmentTimes {
        seq: r.try_get::<i64, _>(0)? as u64,
        producer_ts_ms: r.try_get(1)?,
        server_ts_ms: r.try_get(2)?,
        duration_ms: r.try_get(3)?,
        size: r.try_get::<i64, _>(4)? as u64,
    })
}

/// Decodes the [`fragment_cols!`] columns starting at column `at`.
pub(super) fn fragment_at(r: &PgRow, at: usize) -> Result<FragmentRecord, sqlx::Error> {
    // Most fragments carry no metadata tags: skip the JSON parser for the empty list.
    let meta: &str = r.try_get(at + 11)?;
    let metadata = match meta {
        "[]" => Vec::new(),
        meta => serde_json::from_str(meta).unwrap_or_default(),
    };
    Ok(FragmentRecord {
        stream_id: r.try_get(at)?,
        seq: r.try_get::<i64, _>(at + 1)? as u64,
        session_id: r.try_get::<i64, _>(at + 2)? as u64,
        producer_ts_ms: r.try_get(at + 3)?,
        server_ts_ms: r.try_get(at + 4)?,
        duration_ms: r.try_get(at + 5)?,
        producer_timecode: r.try_get(at + 6)?,
        size: r.try_get::<i64, _>(at + 7)? as u64,
        object_key: r.try_get(at + 8)?,
        object_size: r.try_get::<i64, _>(at + 9)? as u64,
        content_hash: r.try_get(at + 10)?,
        metadata,
        object_offset: r.try_get::<Option<i64>, _>(at + 12)?.map(|o| o as u64),
    })
}

pub(super) fn fragment_from_row(r: &PgRow) -> Result<FragmentRecord, sqlx::Error> {
    fragment_at(r, 0)
}

pub(super) fn session_from_row(r: &PgRow) -> Result<SessionRecord, sqlx::Error> {
    Ok(SessionRecord {
        stream_id: r.try_get(0)?,
        session_id: r.try_get::<i64, _>(1)? as u64,
        created_ms: r.try_get(2)?,
        header_sealed: r.try_get(3)?,
    })
}

pub(super) fn segment_from_row(r: &PgRow) -> Result<SegmentRecord, sqlx::Error> {
    Ok(SegmentRecord {
        key: r.try_get(0)?,
        class: r.try_get(1)?,
        created_ms: r.try_get(2)?,
        durable_end: r.try_get::<i64, _>(3)? as u64,
        sealed: r.try_get(4)?,
    })
}

pub(super) fn garbage_from_row(r: &PgRow) -> Result<GarbageRecord, sqlx::Error> {
    Ok(GarbageRecord {
        id: r.try_get(0)?,
        stream_id: r.try_get(1)?,
        object_key: r.try_get(2)?,
        created_ms: r.try_get(3)?,
    })
}

/// The columns of [`INSERT_FRAGMENTS`], one array per column.
#[derive(Default)]
pub(super) struct FragmentColumns {
    stream_id: Vec<String>,
    seq: Vec<i64>,
    session_id: Vec<i64>,
    producer_ts_ms: Vec<i64>,
    server_ts_ms: Vec<i64>,
    duration_ms: Vec<i64>,
    producer_timecode: Vec<i64>,
    size: Vec<i64>,
    object_key: Vec<String>,
    object_size: Vec<i64>,
    content_hash: Vec<String>,
    metadata: Vec<String>,
    object_offset: Vec<Option<i64>>,
}

impl FragmentColumns {
    pub(super) fn push(&mut self, f: &FragmentRecord) -> Result<(), serde_json::Error> {
        self.metadata.push(serde_json::to_string(&f.metadata)?);
        self.stream_id.push(f.stream_id.clone());
        self.seq.push(f.seq as i64);
        self.session_id.push(f.session_id as i64);
        self.producer_ts_ms.push(f.producer_ts_ms);
        self.server_ts_ms.push(f.server_ts_ms);
        self.duration_ms.push(f.duration_ms);
        self.producer_timecode.push(f.producer_timecode);
        self.size.push(f.size as i64);
        self.object_key.push(f.object_key.clone());
        self.object_size.push(f.object_size as i64);
        self.content_hash.push(f.content_hash.clone());
        self.object_offset.push(f.object_offset.map(|o| o as i64));
        Ok(())
    }

    pub(super) fn len(&self) -> usize {
        self.seq.len()
    }

    /// [`INSERT_FRAGMENTS`] with these rows bound.
    pub(super) fn insert(
        self,
    ) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
        sqlx::query(INSERT_FRAGMENTS)
            .bind(self.stream_id)
            .bind(self.seq)
            .bind(self.session_id)
            .bind(self.producer_ts_ms)
            .bind(self.server_ts_ms)
            .bind(self.duration_ms)
            .bind(self.producer_timecode)
            .bind(self.size)
            .bind(self.object_key)
            .bind(self.object_size)
            .bind(self.content_hash)
            .bind(self.metadata)
            .bind(self.object_offset)
    }
}
