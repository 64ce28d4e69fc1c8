//! The embedded index: SQLite through rusqlite (bundled), WAL mode, `synchronous=FULL`
//! so a commit that returned is on disk. One writer connection and one reader
//! connection, each behind a mutex and used from `spawn_blocking` (callers queue for a
//! turn first, so waiting costs no blocking thread). Schema changes are
//! numbered migrations tracked in `PRAGMA user_version`. `secure_delete` is on, and
//! DeleteStream truncates the WAL, so a shredded key leaves no copy ([`shred`]).

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::*;
use crate::clock::SharedClock;

#[path = "sqlite_sql.rs"]
mod sql;
use sql::*;
#[path = "sqlite_segments.rs"]
mod segments;
#[path = "sqlite_shred.rs"]
mod shred;

/// SQLite-backed [`Index`].
#[derive(Debug, Clone)]
pub struct SqliteIndex {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
    /// Turns at each connection, taken before a blocking thread is: callers queue here
    /// instead of each holding a blocking-pool thread that waits on the mutex (1,000
    /// uploads starting at once grew the pool to its 512 threads).
    writer_turn: Arc<tokio::sync::Semaphore>,
    reader_turn: Arc<tokio::sync::Semaphore>,
    /// Set on a retention view: the clock whose "now" hides expired fragments.
    view: Option<SharedClock>,
    shred: Arc<shred::ShredState>,
}

fn db_err(e: impl std::fmt::Display) -> IndexError {
    IndexError::Db(e.to_string())
}

fn open_conn(path: &Path) -> IndexResult<Connection> {
    let c = Connection::open(path).map_err(db_err)?;
    c.busy_timeout(shred::BUSY_TIMEOUT).map_err(db_err)?;
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; \
         PRAGMA secure_delete=ON;",
    )
    .map_err(db_err)?;
    Ok(c)
}

impl SqliteIndex {
    /// Opens (creating if needed) the index at `path` and runs pending migrations.
    pub fn open(path: &Path) -> IndexResult<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(db_err)?;
        }
        let mut w = open_conn(path)?;
        migrate(&mut w)?;
        // A crash may have cut a shred retry short (see [`shred`]); best effort.
        let _ = shred::truncate_wal(&w, std::time::Duration::from_millis(200));
        let r = open_conn(path)?;
        Ok(Self {
            writer: Arc::new(Mutex::new(w)),
            reader: Arc::new(Mutex::new(r)),
            writer_turn: Arc::new(tokio::sync::Semaphore::new(1)),
            reader_turn: Arc::new(tokio::sync::Semaphore::new(1)),
            view: None,
            shred: Arc::default(),
        })
    }

    /// Opens an existing index for reading only (`streamvault check` on a live data dir):
    /// no migration, no WAL checkpoint, no write lock ever taken, so a running server's
    /// commits are never made to wait or fail because of it. The schema must be the one
    /// this binary writes.
    pub fn open_read_only(path: &Path) -> IndexResult<Self> {
        let open = || -> IndexResult<Connection> {
            let c = Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(db_err)?;
            c.busy_timeout(shred::BUSY_TIMEOUT).map_err(db_err)?;
            Ok(c)
        };
        let r = open()?;
        let version: i64 = r
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(db_err)?;
        if version as usize != MIGRATIONS.len() {
            return Err(IndexError::Db(format!(
                "index schema version {version} is not this binary's ({}); run `serve` once to migrate",
                MIGRATIONS.len()
            )));
        }
        Ok(Self {
            writer: Arc::new(Mutex::new(open()?)),
            reader: Arc::new(Mutex::new(r)),
            writer_turn: Arc::new(tokio::sync::Semaphore::new(1)),
            reader_turn: Arc::new(tokio::sync::Semaphore::new(1)),
            view: None,
            shred: Arc::default(),
        })
    }

    /// The same index (same connections) as a retention view at `clock`: fragment reads
    /// never return a fragment older than its stream's retention (see [`Index`]).
    pub fn retention_view(&self, clock: SharedClock) -> Self {
        Self {
            view: Some(clock),
            ..self.clone()
        }
    }

    /// "Now" of the retention view, `None` on the raw index.
    fn view_now(&self) -> Option<EpochMillis> {
        self.view.as_ref().map(|c| c.now_ms())
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> IndexResult<T> + Send + 'static,
    ) -> IndexResult<T> {
        let c = self.writer.clone();
        let turn = self
            .writer_turn
            .clone()
            .acquire_owned()
            .await
            .map_err(db_err)?;
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let mut guard = c.lock().map_err(|_| db_err("writer connection poisoned"))?;
            f(&mut guard)
        })
        .await
        .map_err(db_err)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> IndexResult<T> + Send + 'static,
    ) -> IndexResult<T> {
        let c = self.reader.clone();
        let turn = self
            .reader_turn
            .clone()
            .acquire_owned()
            .await
            .map_err(db_err)?;
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let guard = c.lock().map_err(|_| db_err("reader connection poisoned"))?;
            f(&guard)
        })
        .await
        .map_err(db_err)?
    }

    /// Runs the `(producer, server)` statement of `sqls` that `page.kind` selects (one
    /// of the `*_IN_*_RANGE` pairs) for `page`, decoding rows with `decode`.
    async fn range_query<T: Send + 'static>(
        &self,
        sqls: (&'static str, &'static str),
        stream_id: &str,
        page: RangePage,
        decode: fn(&rusqlite::Row) -> rusqlite::Result<T>,
    ) -> IndexResult<Vec<T>> {
        let sql = match page.kind {
            TimestampKind::Producer => sqls.0,
            TimestampKind::Server => sqls.1,
        };
        let id = stream_id.to_owned();
        let (after_ts, after_seq) = page
            .after
            .map(|(t, s)| (t, s as i64))
            .unwrap_or((i64::MIN, -1));
        // `(ts, seq) > (after_ts, after_seq)` implies `ts >= after_ts`: starting the index
        // range there skips the rows of the earlier pages (same rows selected).
        let start_ms = page.start_ms.max(after_ts);
        let (end_ms, limit, now) = (page.end_ms, page.limit, self.view_now());
        self.read(move |c| {
            let args = params![id, start_ms, end_ms, after_ts, after_seq, now];
            query_rows(c, sql, args, limit, decode)
        })
        .await
    }

    /// Closes both connections, checkpointing the WAL; used at shutdown.
    pub fn close(&self) {
        if let Ok(c) = self.writer.lock() {
            let _ = c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
        }
    }
}

fn migrate(c: &mut Connection) -> IndexResult<()> {
    let current: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db_err)?;
    if current as usize > MIGRATIONS.len() {
        return Err(IndexError::Db(format!(
            "index schema version {current} is newer than this binary supports ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        tx.execute_batch(sql).map_err(db_err)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
    }
    Ok(())
}

fn load_tags(c: &Connection, s: &mut StreamRecord) -> IndexResult<()> {
    let mut st = c
        .prepare_cached("SELECT tag_key, tag_value FROM stream_tags WHERE stream_id = ?1")
        .map_err(db_err)?;
    let rows = st
        .query_map([&s.stream_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(db_err)?;
    for row in rows {
        let (k, v) = row.map_err(db_err)?;
        s.tags.insert(k, v);
    }
    Ok(())
}

/// The stream that `sql` ([`STREAM_BY_NAME`] or [`STREAM_BY_ID`]) selects, with its tags.
fn stream_where(c: &Connection, sql: &str, arg: &str) -> IndexResult<Option<StreamRecord>> {
    let mut s = c
        .prepare_cached(sql)
        .and_then(|mut st| st.query_row([arg], stream_from_row).optional())
        .map_err(db_err)?;
    if let Some(s) = s.as_mut() {
        load_tags(c, s)?;
    }
    Ok(s)
}

fn insert_fragment_row(c: &Connection, f: &FragmentRecord) -> IndexResult<()> {
    let meta = serde_json::to_string(&f.metadata).map_err(db_err)?;
    let r = c.prepare_cached(INSERT_FRAGMENT).and_then(|mut st| {
        st.execute(params![
            f.stream_id,
            f.seq as i64,
            f.session_id as i64,
            f.producer_ts_ms,
            f.server_ts_ms,
            f.duration_ms,
            f.producer_timecode,
            f.size as i64,
            f.object_key,
            f.object_size as i64,
            f.content_hash,
            meta,
            f.object_offset.map(|o| o as i64)
        ])
    });
    match r {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            // A primary-key clash, or the stream row is gone (foreign key).
            let stream_exists: bool = c
                .query_row(STREAM_EXISTS, [&f.stream_id], |r| r.get(0))
                .map_err(db_err)?;
            if stream_exists {
                Err(IndexError::DuplicateFragment {
                    stream_id: f.stream_id.clone(),
                    seq: f.seq,
                })
            } else {
                Err(IndexError::StreamNotFound(f.stream_id.clone()))
            }
        }
        Err(e) => Err(db_err(e)),
    }
}

fn find_by_content(
    c: &Connection,
    stream_id: &str,
    producer_ts_ms: EpochMillis,
    content_hash: &str,
    since_ms: EpochMillis,
    now: Option<EpochMillis>,
) -> IndexResult<Option<FragmentRecord>> {
    let mut v = query_fragments(
        c,
        FIND_BY_CONTENT,
        params![stream_id, producer_ts_ms, content_hash, since_ms, now],
        1,
    )?;
    Ok(v.pop())
}

/// Sets or removes one configuration document of a stream.
fn set_config(c: &Connection, id: &str, kind: &str, body: Option<&str>) -> IndexResult<()> {
    match body {
        Some(b) => c.execute(
            "INSERT INTO stream_configs (stream_id, kind, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (stream_id, kind) DO UPDATE SET body = excluded.body",
            params![id, kind, b],
        ),
        None => c.execute(
            "DELETE FROM stream_configs WHERE stream_id = ?1 AND kind = ?2",
            params![id, kind],
        ),
    }
    .map_err(db_err)?;
    Ok(())
}

#[async_trait]
impl Index for SqliteIndex {
    fn retention_view(&self, clock: SharedClock) -> Arc<dyn Index> {
        Arc::new(SqliteIndex::retention_view(self, clock))
    }

    async fn close(&self) {
        SqliteIndex::close(self);
    }

    async fn create_stream(&self, s: NewStream, max_streams: u64) -> IndexResult<StreamRecord> {
        self.write(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let count: i64 = tx.query_row("SELECT COUNT(*) FROM streams", [], |r| r.get(0)).map_err(db_err)?;
            if count as u64 >= max_streams {
                return Err(IndexError::StreamLimit(max_streams));
            }
            let exists: Option<String> = tx
                .query_row("SELECT stream_id FROM streams WHERE name = ?1", [s.name.as_str()], |r| r.get(0))
                .optional()
                .map_err(db_err)?;
            if exists.is_some() {
                return Err(IndexError::StreamExists(s.name.to_string()));
            }
            tx.execute(
                &format!("INSERT INTO streams ({STREAM_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![
                    s.stream_id,
                    s.name.as_str(),
                    s.device_name,
                    s.media_type,
                    s.kms_key_id,
                    s.version,
                    s.creation_ms,
                    s.retention_hours,
                    s.wrapped_key
                ],
            )
            .map_err(db_err)?;
            for (k, v) in &s.tags {
                tx.execute(
                    "INSERT INTO stream_tags (stream_id, tag_key, tag_value) VALUES (?1, ?2, ?3)",
                    params![s.stream_id, k, v],
                )
                .map_err(db_err)?;
            }
            tx.commit().map_err(db_err)?;
            Ok(StreamRecord {
                stream_id: s.stream_id,
                name: s.name,
                device_name: s.device_name,
                media_type: s.media_type,
                kms_key_id: s.kms_key_id,
                version: s.version,
                status: StreamStatus::Active,
                creation_ms: s.creation_ms,
                retention_hours: s.retention_hours,
                wrapped_key: s.wrapped_key,
                tags: s.tags,
            })
        })
        .await
    }

    async fn get_stream(&self, name: &StreamName) -> IndexResult<Option<StreamRecord>> {
        let name = name.as_str().to_owned();
        self.read(move |c| stream_where(c, STREAM_BY_NAME, &name))
            .await
    }

    async fn get_stream_by_id(&self, stream_id: &str) -> IndexResult<Option<StreamRecord>> {
        let id = stream_id.to_owned();
        self.read(move |c| stream_where(c, STREAM_BY_ID, &id)).await
    }

    async fn list_streams(
        &self,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> IndexResult<Vec<StreamRecord>> {
        let prefix = prefix.unwrap_or("").to_owned();
        let after = after.unwrap_or("").to_owned();
        self.read(move |c| {
            // Names are [a-zA-Z0-9_.-], so a range scan implements BEGINS_WITH exactly
            // ('~' sorts after every allowed character).
            let upper = format!("{prefix}~");
            let mut st = c.prepare_cached(LIST_STREAMS).map_err(db_err)?;
            let rows = st
                .query_map(params![prefix, upper, after, limit as i64], stream_from_row)
                .map_err(db_err)?;
            let mut out: Vec<StreamRecord> = rows.collect::<Result<_, _>>().map_err(db_err)?;
            for s in &mut out {
                load_tags(c, s)?;
            }
            Ok(out)
        })
        .await
    }

    async fn update_stream(
        &self,
        stream_id: &str,
        expected_version: Option<&str>,
        update: StreamUpdate,
        new_version: &str,
    ) -> IndexResult<StreamRecord> {
        let (id, expected, new_version) = (
            stream_id.to_owned(),
            expected_version.map(str::to_owned),
            new_version.to_owned(),
        );
        self.write(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let cur = stream_where(&tx, STREAM_BY_ID, &id)?.ok_or_else(|| IndexError::StreamNotFound(id.clone()))?;
            super::check_version(&cur, expected.as_deref())?;
            match &update {
                StreamUpdate::Metadata { device_name, media_type } => {
                    tx.execute(
                        "UPDATE streams SET device_name = COALESCE(?2, device_name), media_type = COALESCE(?3, media_type) WHERE stream_id = ?1",
                        params![id, device_name, media_type],
                    )
                    .map_err(db_err)?;
                }
                StreamUpdate::Retention { hours } => {
                    tx.execute("UPDATE streams SET retention_hours = ?2 WHERE stream_id = ?1", params![id, hours])
                        .map_err(db_err)?;
                }
                StreamUpdate::Tags { set, remove } => {
                    for k in remove {
                        tx.execute("DELETE FROM stream_tags WHERE stream_id = ?1 AND tag_key = ?2", params![id, k])
                            .map_err(db_err)?;
                    }
                    for (k, v) in set {
                        tx.execute(
                            "INSERT INTO stream_tags (stream_id, tag_key, tag_value) VALUES (?1, ?2, ?3)
                             ON CONFLICT (stream_id, tag_key) DO UPDATE SET tag_value = excluded.tag_value",
                            params![id, k, v],
                        )
                        .map_err(db_err)?;
                    }
                }
                StreamUpdate::Config { kind, body } => set_config(&tx, &id, kind, body.as_deref())?,
            }
            tx.execute("UPDATE streams SET version = ?2 WHERE stream_id = ?1", params![id, new_version])
                .map_err(db_err)?;
            let out = stream_where(&tx, STREAM_BY_ID, &id)?.ok_or_else(|| IndexError::StreamNotFound(id.clone()))?;
            tx.commit().map_err(db_err)?;
            Ok(out)
        })
        .await
    }

    async fn delete_stream(
        &self,
        stream_id: &str,
        expected_version: Option<&str>,
        now_ms: EpochMillis,
    ) -> IndexResult<()> {
        let (id, expected) = (stream_id.to_owned(), expected_version.map(str::to_owned));
        let shred = self.shred.clone();
        let retry = self.write(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let cur = stream_where(&tx, STREAM_BY_ID, &id)?.ok_or_else(|| IndexError::StreamNotFound(id.clone()))?;
            super::check_version(&cur, expected.as_deref())?;
            let touched = segments::stream_segments(&tx, &id)?;
            // Crypto-shred first: the wrapped data key is overwritten before the row goes,
            // so even a page of the old row surviving in the file holds no usable key.
            tx.execute("UPDATE streams SET wrapped_key = zeroblob(length(wrapped_key)) WHERE stream_id = ?1", [&id])
                .map_err(db_err)?;
            tx.execute(
                "INSERT INTO garbage (stream_id, object_key, created_ms) VALUES (?1, NULL, ?2)",
                params![id, now_ms],
            )
            .map_err(db_err)?;
            tx.execute("DELETE FROM streams WHERE stream_id = ?1", [&id]).map_err(db_err)?;
            segments::retire_dead_segments(&tx, &touched, now_ms)?;
            tx.commit().map_err(db_err)?;
            Ok(shred.after_delete(c))
        })
        .await?;
        if retry {
            self.retry_shred();
        }
        Ok(())
    }

    async fn stream_count(&self) -> IndexResult<u64> {
        self.read(|c| {
            let n: i64 = c
                .query_row("SELECT COUNT(*) FROM streams", [], |r| r.get(0))
                .map_err(db_err)?;
            Ok(n as u64)
        })
        .await
    }

    async fn reserve_fragment_seqs(&self, stream_id: &str, count: u64) -> IndexResult<u64> {
        let id = stream_id.to_owned();
        self.write(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let first: Option<i64> = tx
                .query_row(
                    "SELECT seq_reserved FROM streams WHERE stream_id = ?1",
                    [&id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            let first = first.ok_or_else(|| IndexError::StreamNotFound(id.clone()))?;
            tx.execute(
                "UPDATE streams SET seq_reserved = seq_reserved + ?2 WHERE stream_id = ?1",
                params![id, count as i64],
            )
            .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(first as u64)
        })
        .await
    }

    async fn insert_session(&self, s: SessionRecord) -> IndexResult<()> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO sessions (stream_id, session_id, created_ms, header_sealed) VALUES (?1, ?2, ?3, ?4)",
                params![s.stream_id, s.session_id as i64, s.created_ms, s.header_sealed],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn get_session(
        &self,
        stream_id: &str,
        session_id: u64,
    ) -> IndexResult<Option<SessionRecord>> {
        let id = stream_id.to_owned();
        self.read(move |c| {
            c.query_row(
                "SELECT stream_id, session_id, created_ms, header_sealed FROM sessions WHERE stream_id = ?1 AND session_id = ?2",
                params![id, session_id as i64],
                |r| {
                    Ok(SessionRecord {
                        stream_id: r.get(0)?,
                        session_id: r.get::<_, i64>(1)? as u64,
                        created_ms: r.get(2)?,
                        header_sealed: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn insert_fragment(&self, f: FragmentRecord) -> IndexResult<()> {
        self.write(move |c| insert_fragment_row(c, &f)).await
    }

    async fn get_fragment(&self, stream_id: &str, seq: u64) -> IndexResult<Option<FragmentRecord>> {
        let id = stream_id.to_owned();
        let now = self.view_now();
        self.read(move |c| {
            let mut v = query_fragments(c, GET_FRAGMENT, params![id, seq as i64, now], 1)?;
            Ok(v.pop())
        })
        .await
    }

    async fn fragments_after(
        &self,
        stream_id: &str,
        after_seq: Option<u64>,
        limit: usize,
    ) -> IndexResult<Vec<FragmentRecord>> {
        let id = stream_id.to_owned();
        let after = after_seq.map(|s| s as i64).unwrap_or(-1);
        let now = self.view_now();
        self.read(move |c| query_fragments(c, FRAGMENTS_AFTER, params![id, after, now], limit))
            .await
    }

    async fn fragments_in_range(
        &self,
        stream_id: &str,
        kind: TimestampKind,
        start_ms: EpochMillis,
        end_ms: EpochMillis,
        after: Option<(EpochMillis, u64)>,
        limit: usize,
    ) -> IndexResult<Vec<FragmentRecord>> {
        let page = RangePage {
            kind,
            start_ms,
            end_ms,
            after,
            limit,
        };
        let sqls = (FRAGMENTS_IN_PRODUCER_RANGE, FRAGMENTS_IN_SERVER_RANGE);
        self.range_query(sqls, stream_id, page, fragment_from_row)
            .await
    }

    async fn fragment_times_in_range(
        &self,
        stream_id: &str,
        page: RangePage,
    ) -> IndexResult<Vec<FragmentTimes>> {
        let sqls = (TIMES_IN_PRODUCER_RANGE, TIMES_IN_SERVER_RANGE);
        self.range_query(sqls, stream_id, page, times_from_row)
            .await
    }

    async fn last_fragment(&self, stream_id: &str) -> IndexResult<Option<FragmentRecord>> {
        let id = stream_id.to_owned();
        let now = self.view_now();
        self.read(move |c| {
            let mut v = query_fragments(c, LAST_FRAGMENT, params![id, now], 1)?;
            Ok(v.pop())
        })
        .await
    }

    async fn scan_fragments(
        &self,
        after: Option<(String, u64)>,
        limit: usize,
    ) -> IndexResult<Vec<FragmentRecord>> {
        let (aid, aseq) = after
            .map(|(a, s)| (a, s as i64))
            .unwrap_or((String::new(), -1));
        self.read(move |c| {
            query_fragments(c, SCAN_FRAGMENTS, params![aid, aseq, limit as i64], limit)
        })
        .await
    }

    async fn stream_ids(&self) -> IndexResult<Vec<String>> {
        self.read(|c| {
            let mut st = c
                .prepare_cached("SELECT stream_id FROM streams ORDER BY stream_id")
                .map_err(db_err)?;
            let rows = st.query_map([], |r| r.get(0)).map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn list_garbage(&self, limit: usize) -> IndexResult<Vec<GarbageRecord>> {
        self.read(move |c| {
            let mut st = c
                .prepare_cached("SELECT id, stream_id, object_key, created_ms FROM garbage ORDER BY id LIMIT ?1")
                .map_err(db_err)?;
            let rows = st
                .query_map([limit as i64], |r| {
                    Ok(GarbageRecord {
                        id: r.get(0)?,
                        stream_id: r.get(1)?,
                        object_key: r.get(2)?,
                        created_ms: r.get(3)?,
                    })
                })
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn drop_garbage(&self, id: i64) -> IndexResult<()> {
        self.write(move |c| {
            c.execute("DELETE FROM garbage WHERE id = ?1", [id])
                .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn insert_fragment_unless_duplicate(
        &self,
        f: FragmentRecord,
        dedupe_since_ms: EpochMillis,
    ) -> IndexResult<Option<FragmentRecord>> {
        let now = self.view_now();
        self.write(move |c| {
            in_transaction(c, |tx| {
                let existing = find_by_content(
                    tx,
                    &f.stream_id,
                    f.producer_ts_ms,
                    &f.content_hash,
                    dedupe_since_ms,
                    now,
                )?;
                if existing.is_none() {
                    insert_fragment_row(tx, &f)?;
                }
                Ok(existing)
            })
        })
        .await
    }

    async fn find_fragment_by_content(
        &self,
        stream_id: &str,
        producer_ts_ms: EpochMillis,
        content_hash: &str,
        since_ms: EpochMillis,
    ) -> IndexResult<Option<FragmentRecord>> {
        let (id, hash) = (stream_id.to_owned(), content_hash.to_owned());
        let now = self.view_now();
        self.read(move |c| find_by_content(c, &id, producer_ts_ms, &hash, since_ms, now))
            .await
    }

    async fn expire_fragments(
        &self,
        now_ms: EpochMillis,
        protect_from_ms: EpochMillis,
        limit: usize,
    ) -> IndexResult<Retired> {
        self.write(move |c| segments::expire(c, now_ms, protect_from_ms, limit))
            .await
    }

    async fn trim_stream(
        &self,
        stream_id: &str,
        max_bytes: u64,
        protect_from_ms: EpochMillis,
        limit: usize,
        now_ms: EpochMillis,
    ) -> IndexResult<Retired> {
        let id = stream_id.to_owned();
        self.write(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let total: i64 = tx
                .query_row(
                    "SELECT COALESCE(SUM(object_size), 0) FROM fragments WHERE stream_id = ?1",
                    [&id],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            let mut excess = total - max_bytes.min(i64::MAX as u64) as i64;
            let mut victims: Vec<segments::Victim> = Vec::new();
            if excess > 0 {
                let oldest: Vec<(i64, String, i64, i64, Option<i64>)> = {
                    let mut st = tx
                        .prepare_cached(
                            "SELECT seq, object_key, object_size, server_ts_ms, object_offset FROM fragments
                             WHERE stream_id = ?1 ORDER BY seq LIMIT ?2",
                        )
                        .map_err(db_err)?;
                    let rows = st
                        .query_map(params![id, limit as i64], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                        })
                        .map_err(db_err)?;
                    rows.collect::<Result<_, _>>().map_err(db_err)?
                };
                for (seq, key, size, server_ts, offset) in oldest {
                    if excess <= 0 || server_ts >= protect_from_ms {
                        break;
                    }
                    victims.push((seq, key, offset));
                    excess -= size;
                }
            }
            let rows = victims.len();
            let mut touched = std::collections::BTreeSet::new();
            let mut garbage = segments::retire_rows(&tx, &id, victims, &mut touched, now_ms)?;
            garbage.extend(segments::retire_dead_segments(&tx, &touched, now_ms)?);
            tx.commit().map_err(db_err)?;
            Ok(Retired { rows, garbage })
        })
        .await
    }

    async fn commit_batch(
        &self,
        fence: Option<&Fence>,
        segs: Vec<SegmentRecord>,
        rows: Vec<BatchRow>,
    ) -> IndexResult<Vec<RowOutcome>> {
        if fence.is_some() {
            // Settings validation keeps cluster nodes off SQLite; never commit unfenced.
            return Err(IndexError::Fenced(
                "the embedded SQLite index cannot check a cluster fence".into(),
            ));
        }
        let now = self.view_now();
        self.write(move |c| segments::commit_batch(c, &segs, &rows, now))
            .await
    }

    async fn seal_segment(
        &self,
        key: &str,
        now_ms: EpochMillis,
    ) -> IndexResult<Option<Vec<GarbageRecord>>> {
        let key = key.to_owned();
        self.write(move |c| segments::seal_segment(c, &key, now_ms))
            .await
    }

    async fn seal_open_segments(
        &self,
        now_ms: EpochMillis,
    ) -> IndexResult<(Vec<SegmentRecord>, Vec<GarbageRecord>)> {
        self.write(move |c| segments::seal_open_segments(c, now_ms))
            .await
    }

    async fn segments(&self) -> IndexResult<Vec<SegmentRecord>> {
        self.read(segments::list_segments).await
    }

    async fn get_segment(&self, key: &str) -> IndexResult<Option<SegmentRecord>> {
        let key = key.to_owned();
        self.read(move |c| segments::get_segment(c, &key)).await
    }

    async fn stream_stats(&self) -> IndexResult<Vec<StreamStats>> {
        self.read(|c| {
            let mut st = c
                .prepare_cached(
                    "SELECT s.stream_id, s.retention_hours, s.seq_reserved, COUNT(f.seq), COALESCE(SUM(f.object_size), 0), MAX(f.seq)
                     FROM streams s LEFT JOIN fragments f ON f.stream_id = s.stream_id
                     GROUP BY s.stream_id ORDER BY s.stream_id",
                )
                .map_err(db_err)?;
            let rows = st
                .query_map([], |r| {
                    Ok(StreamStats {
                        stream_id: r.get(0)?,
                        retention_hours: r.get(1)?,
                        seq_reserved: r.get::<_, i64>(2)? as u64,
                        fragments: r.get::<_, i64>(3)? as u64,
                        bytes: r.get::<_, i64>(4)? as u64,
                        max_seq: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
                    })
                })
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn get_stream_config(&self, stream_id: &str, kind: &str) -> IndexResult<Option<String>> {
        let (id, kind) = (stream_id.to_owned(), kind.to_owned());
        self.read(move |c| {
            c.query_row(
                "SELECT body FROM stream_configs WHERE stream_id = ?1 AND kind = ?2",
                params![id, kind],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn put_stream_config(
        &self,
        stream_id: &str,
        kind: &str,
        body: Option<String>,
    ) -> IndexResult<()> {
        let (id, kind) = (stream_id.to_owned(), kind.to_owned());
        self.write(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            if stream_where(&tx, STREAM_BY_ID, &id)?.is_none() {
                return Err(IndexError::StreamNotFound(id));
            }
            set_config(&tx, &id, &kind, body.as_deref())?;
            tx.commit().map_err(db_err)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
#[path = "sqlite_tests.rs"]
mod tests;
