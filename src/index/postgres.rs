//! The PostgreSQL index (`index.backend = "postgres"`, `docs/design/index-postgres.md`):
//! the same [`Index`] as the embedded SQLite one, on a database several processes can
//! share. sqlx (`postgres` feature only) with a pool of `index.postgres.max_connections`
//! connections; every method is one statement or one transaction, and a commit that
//! returned is durable (PostgreSQL's commit, `synchronous_commit` as the server sets it,
//! on by default). Schema changes are numbered migrations recorded in
//! `streamvault_schema`, applied at open under a transaction-scoped advisory lock, so
//! processes opening one database at once apply each exactly once. SQLite runs one
//! writer at a time; here writes run concurrently, and each keeps SQLite's semantics by
//! locking what it decides on (the stream rows a fragment write checks numbers and
//! duplicates against, a global lock for the stream count); a deadlock or serialization
//! failure re-runs the whole transaction. Errors never carry the connection URL: logs and
//! messages name host, port and database only.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, Row};

use super::*;
use crate::clock::SharedClock;

#[path = "postgres_sql.rs"]
mod sql;
use sql::*;
#[path = "postgres_segments.rs"]
mod segments;
#[path = "postgres_writes.rs"]
mod writes;

use writes::*;

/// Advisory lock keys (one namespace per database, shared with other applications:
/// spelled from ASCII so they are unlikely to collide). Both are transaction-scoped.
const MIGRATE_LOCK: i64 = 0x7376_5f6d_6967_7261; // "sv_migra"
const CREATE_LOCK: i64 = 0x7376_5f63_7265_6174; // "sv_creat"
/// Tries of one transaction that keeps failing with a deadlock or serialization failure.
const MAX_ATTEMPTS: u32 = 5;

/// PostgreSQL-backed [`Index`].
#[derive(Clone)]
pub struct PostgresIndex {
    pool: PgPool,
    /// Set on a retention view: the clock whose "now" hides expired fragments.
    view: Option<SharedClock>,
    /// `host:port/database`, for logs and errors (never the URL: it may hold a password).
    target: Arc<str>,
}

impl std::fmt::Debug for PostgresIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresIndex")
            .field("target", &self.target)
            .field("retention_view", &self.view.is_some())
            .finish()
    }
}

fn db_err(e: impl std::fmt::Display) -> IndexError {
    IndexError::Db(e.to_string())
}

/// A failure inside a transaction: a decision of the index, or a database error kept
/// whole so that a deadlock can be retried.
#[derive(Debug)]
enum TxError {
    Index(IndexError),
    Db(sqlx::Error),
}

impl From<sqlx::Error> for TxError {
    fn from(e: sqlx::Error) -> Self {
        TxError::Db(e)
    }
}

impl From<IndexError> for TxError {
    fn from(e: IndexError) -> Self {
        TxError::Index(e)
    }
}

impl From<serde_json::Error> for TxError {
    fn from(e: serde_json::Error) -> Self {
        TxError::Index(db_err(e))
    }
}

impl TxError {
    /// Serialization failure or deadlock: the transaction was rolled back and may be
    /// run again as a whole.
    fn retryable(&self) -> bool {
        match self {
            TxError::Db(sqlx::Error::Database(e)) => {
                matches!(e.code().as_deref(), Some("40001" | "40P01"))
            }
            _ => false,
        }
    }

    fn into_index(self) -> IndexError {
        match self {
            TxError::Index(e) => e,
            TxError::Db(e) => db_err(e),
        }
    }
}

type TxResult<T> = Result<T, TxError>;

/// Runs `$body` (an expression of type `TxResult<T>` using `$c: &mut PgConnection`) in a
/// transaction, committing when it is `Ok`, rolling back otherwise; a deadlock or a
/// serialization failure runs the whole transaction again (at most [`MAX_ATTEMPTS`]).
macro_rules! transaction {
    ($pool:expr, |$c:ident| $body:expr) => {{
        let mut attempt = 1;
        loop {
            let r: TxResult<_> = async {
                let mut tx = $pool.begin().await?;
                let v: TxResult<_> = {
                    let $c: &mut PgConnection = &mut tx;
                    $body
                };
                let v = v?;
                tx.commit().await?;
                Ok(v)
            }
            .await;
            match r {
                Err(e) if attempt < MAX_ATTEMPTS && e.retryable() => attempt += 1,
                r => break r.map_err(TxError::into_index),
            }
        }
    }};
}

// After the macro: the cluster transactions use it.
#[path = "postgres_cluster.rs"]
mod cluster;

/// `host:port/database` of `o` (or the socket path), without user or password.
fn describe(o: &PgConnectOptions) -> String {
    let db = o.get_database().unwrap_or(o.get_username());
    match o.get_socket() {
        Some(s) => format!("{}/{db}", s.display()),
        None => format!("{}:{}/{db}", o.get_host(), o.get_port()),
    }
}

/// Parses `index.postgres.url`; the message names the setting, never the URL.
pub fn connect_options(url: &str) -> IndexResult<PgConnectOptions> {
    PgConnectOptions::from_str(url)
        .map(|o| o.application_name("streamvault"))
        .map_err(|e| {
            IndexError::Db(format!(
                "index.postgres.url is not a usable PostgreSQL URL: {e}"
            ))
        })
}

impl PostgresIndex {
    /// Connects to `url` (a pool of at most `max_connections`) and applies pending
    /// migrations.
    pub async fn open(url: &str, max_connections: u32) -> IndexResult<Self> {
        Self::open_with(connect_options(url)?, max_connections).await
    }

    /// [`PostgresIndex::open`] with parsed options.
    pub async fn open_with(opts: PgConnectOptions, max_connections: u32) -> IndexResult<Self> {
        let this = Self::connect(opts, max_connections).await?;
        migrate(&this.pool).await.map_err(|e| {
            let e = match e.into_index() {
                IndexError::Db(m) => m,
                e => e.to_string(),
            };
            IndexError::Db(format!("migrating the index at {}: {e}", this.target))
        })?;
        let sync: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&this.pool)
            .await
            .map_err(db_err)?;
        if sync == "off" {
            tracing::warn!(
                target = %this.target,
                "PostgreSQL has synchronous_commit=off: a commit the index reported may be lost in a crash of the database server"
            );
        }
        tracing::info!(target = %this.target, max_connections, "index: PostgreSQL");
        Ok(this)
    }

    /// Opens an existing index for reading only (`streamvault check` beside live
    /// servers): every transaction is read-only (`default_transaction_read_only`), no
    /// migration runs, and the schema must be the one this binary writes.
    pub async fn open_read_only(url: &str) -> IndexResult<Self> {
        Self::open_read_only_with(connect_options(url)?).await
    }

    /// [`PostgresIndex::open_read_only`] with parsed options.
    pub async fn open_read_only_with(opts: PgConnectOptions) -> IndexResult<Self> {
        let opts = opts.options([("default_transaction_read_only", "on")]);
        let this = Self::connect(opts, 2).await?;
        let exists: bool = sqlx::query_scalar(SCHEMA_EXISTS)
            .fetch_one(&this.pool)
            .await
            .map_err(db_err)?;
        let version: i64 = if exists {
            sqlx::query_scalar(SCHEMA_VERSION)
                .fetch_one(&this.pool)
                .await
                .map_err(db_err)?
        } else {
            0
        };
        if version as usize != MIGRATIONS.len() {
            return Err(IndexError::Db(format!(
                "index schema version {version} at {} is not this binary's ({}); run `serve` once to migrate",
                this.target,
                MIGRATIONS.len()
            )));
        }
        Ok(this)
    }

    async fn connect(opts: PgConnectOptions, max_connections: u32) -> IndexResult<Self> {
        let target: Arc<str> = describe(&opts).into();
        // One connection first, so that a wrong URL or a server that is down fails the
        // start at once (the pool would retry until its acquire timeout).
        let first = PgConnection::connect_with(&opts).await.map_err(|e| {
            IndexError::Db(format!("cannot connect to PostgreSQL at {target}: {e}"))
        })?;
        let _ = first.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .connect_lazy_with(opts);
        Ok(Self {
            pool,
            view: None,
            target,
        })
    }

    /// "Now" of the retention view, `None` on the raw index.
    fn view_now(&self) -> Option<EpochMillis> {
        self.view.as_ref().map(|c| c.now_ms())
    }

    /// Runs the `(producer, server)` statement of `sqls` that `page.kind` selects (one
    /// of the `*_IN_*_RANGE` pairs) for `page`, decoding rows with `decode`.
    async fn range_query<T>(
        &self,
        sqls: (&'static str, &'static str),
        stream_id: &str,
        page: RangePage,
        decode: fn(&PgRow) -> Result<T, sqlx::Error>,
    ) -> IndexResult<Vec<T>> {
        let sql = match page.kind {
            TimestampKind::Producer => sqls.0,
            TimestampKind::Server => sqls.1,
        };
        let (after_ts, after_seq) = page
            .after
            .map(|(t, s)| (t, s as i64))
            .unwrap_or((i64::MIN, -1));
        // `(ts, seq) > (after_ts, after_seq)` implies `ts >= after_ts`: starting the index
        // range there skips the rows of the earlier pages (same rows selected).
        let start_ms = page.start_ms.max(after_ts);
        let rows = sqlx::query(sql)
            .bind(stream_id)
            .bind(start_ms)
            .bind(page.end_ms)
            .bind(after_ts)
            .bind(after_seq)
            .bind(self.view_now())
            .bind(sql_limit(page.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(|r| decode(r).map_err(db_err)).collect()
    }

    /// The row `q` selects, if any, decoded by `from_row`.
    async fn optional<T>(
        &self,
        q: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
        from_row: impl Fn(&PgRow) -> Result<T, sqlx::Error>,
    ) -> IndexResult<Option<T>> {
        let row = q.fetch_optional(&self.pool).await.map_err(db_err)?;
        row.as_ref().map(from_row).transpose().map_err(db_err)
    }

    async fn fragments(
        &self,
        q: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> IndexResult<Vec<FragmentRecord>> {
        let rows = q.fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter()
            .map(|r| fragment_from_row(r).map_err(db_err))
            .collect()
    }
}

/// A `usize` limit as a `LIMIT` value.
fn sql_limit(limit: usize) -> i64 {
    limit.min(i64::MAX as usize) as i64
}

/// Applies the pending migrations in one transaction under [`MIGRATE_LOCK`]: a second
/// process opening the same database waits, then finds nothing to do.
async fn migrate(pool: &PgPool) -> TxResult<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATE_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::query(SCHEMA_TABLE).execute(&mut *tx).await?;
    let current: i64 = sqlx::query_scalar(SCHEMA_VERSION)
        .fetch_one(&mut *tx)
        .await?;
    if current as usize > MIGRATIONS.len() {
        return Err(IndexError::Db(format!(
            "index schema version {current} is newer than this binary supports ({})",
            MIGRATIONS.len()
        ))
        .into());
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        sqlx::raw_sql(*sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO streamvault_schema (version) VALUES ($1)")
            .bind(i as i32 + 1)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[async_trait]
impl Index for PostgresIndex {
    fn retention_view(&self, clock: SharedClock) -> Arc<dyn Index> {
        Arc::new(Self {
            view: Some(clock),
            ..self.clone()
        })
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    fn coordinator(&self) -> Option<Arc<dyn crate::cluster::Coordinator>> {
        Some(Arc::new(Self {
            view: None,
            ..self.clone()
        }))
    }

    async fn create_stream(&self, s: NewStream, max_streams: u64) -> IndexResult<StreamRecord> {
        transaction!(self.pool, |c| create_stream_tx(c, &s, max_streams).await)?;
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
    }

    async fn get_stream(&self, name: &StreamName) -> IndexResult<Option<StreamRecord>> {
        self.optional(
            sqlx::query(STREAM_BY_NAME).bind(name.as_str()),
            stream_from_row,
        )
        .await
    }

    async fn get_stream_by_id(&self, stream_id: &str) -> IndexResult<Option<StreamRecord>> {
        self.optional(sqlx::query(STREAM_BY_ID).bind(stream_id), stream_from_row)
            .await
    }

    async fn list_streams(
        &self,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> IndexResult<Vec<StreamRecord>> {
        let prefix = prefix.unwrap_or("");
        // Names are [a-zA-Z0-9_.-], so a range scan implements BEGINS_WITH exactly
        // ('~' sorts after every allowed character in the "C" collation).
        let upper = format!("{prefix}~");
        let rows = sqlx::query(LIST_STREAMS)
            .bind(prefix)
            .bind(upper)
            .bind(after.unwrap_or(""))
            .bind(sql_limit(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| stream_from_row(r).map_err(db_err))
            .collect()
    }

    async fn update_stream(
        &self,
        stream_id: &str,
        expected_version: Option<&str>,
        update: StreamUpdate,
        new_version: &str,
    ) -> IndexResult<StreamRecord> {
        transaction!(self.pool, |c| {
            update_stream_tx(c, stream_id, expected_version, &update, new_version).await
        })
    }

    async fn delete_stream(
        &self,
        stream_id: &str,
        expected_version: Option<&str>,
        now_ms: EpochMillis,
    ) -> IndexResult<()> {
        transaction!(self.pool, |c| {
            delete_stream_tx(c, stream_id, expected_version, now_ms).await
        })
    }

    async fn stream_count(&self) -> IndexResult<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM streams")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(n as u64)
    }

    async fn reserve_fragment_seqs(&self, stream_id: &str, count: u64) -> IndexResult<u64> {
        // One statement: the row lock of the UPDATE serializes concurrent reservations.
        let first: Option<i64> = sqlx::query_scalar(
            "UPDATE streams SET seq_reserved = seq_reserved + $2 WHERE stream_id = $1 \
             RETURNING seq_reserved - $2",
        )
        .bind(stream_id)
        .bind(count as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        first
            .map(|f| f as u64)
            .ok_or_else(|| IndexError::StreamNotFound(stream_id.to_owned()))
    }

    async fn insert_session(&self, s: SessionRecord) -> IndexResult<()> {
        sqlx::query(
            "INSERT INTO sessions (stream_id, session_id, created_ms, header_sealed) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&s.stream_id)
        .bind(s.session_id as i64)
        .bind(s.created_ms)
        .bind(&s.header_sealed)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn get_session(
        &self,
        stream_id: &str,
        session_id: u64,
    ) -> IndexResult<Option<SessionRecord>> {
        self.optional(
            sqlx::query(GET_SESSION)
                .bind(stream_id)
                .bind(session_id as i64),
            session_from_row,
        )
        .await
    }

    async fn insert_fragment(&self, f: FragmentRecord) -> IndexResult<()> {
        transaction!(self.pool, |c| {
            lock_stream(c, &f.stream_id).await?;
            insert_fragment_locked(c, &f).await
        })
    }

    async fn get_fragment(&self, stream_id: &str, seq: u64) -> IndexResult<Option<FragmentRecord>> {
        let q = sqlx::query(GET_FRAGMENT)
            .bind(stream_id)
            .bind(seq as i64)
            .bind(self.view_now());
        Ok(self.fragments(q).await?.pop())
    }

    async fn fragments_after(
        &self,
        stream_id: &str,
        after_seq: Option<u64>,
        limit: usize,
    ) -> IndexResult<Vec<FragmentRecord>> {
        let q = sqlx::query(FRAGMENTS_AFTER)
            .bind(stream_id)
            .bind(after_seq.map(|s| s as i64).unwrap_or(-1))
            .bind(self.view_now())
            .bind(sql_limit(limit));
        self.fragments(q).await
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
        let q = sqlx::query(LAST_FRAGMENT)
            .bind(stream_id)
            .bind(self.view_now());
        Ok(self.fragments(q).await?.pop())
    }

    async fn scan_fragments(
        &self,
        after: Option<(String, u64)>,
        limit: usize,
    ) -> IndexResult<Vec<FragmentRecord>> {
        let (aid, aseq) = after
            .map(|(a, s)| (a, s as i64))
            .unwrap_or((String::new(), -1));
        let q = sqlx::query(SCAN_FRAGMENTS)
            .bind(aid)
            .bind(aseq)
            .bind(sql_limit(limit));
        self.fragments(q).await
    }

    async fn stream_ids(&self) -> IndexResult<Vec<String>> {
        sqlx::query_scalar("SELECT stream_id FROM streams ORDER BY stream_id")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)
    }

    async fn list_garbage(&self, limit: usize) -> IndexResult<Vec<GarbageRecord>> {
        let rows = sqlx::query(
            "SELECT id, stream_id, object_key, created_ms FROM garbage ORDER BY id LIMIT $1",
        )
        .bind(sql_limit(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| garbage_from_row(r).map_err(db_err))
            .collect()
    }

    async fn drop_garbage(&self, id: i64) -> IndexResult<()> {
        sqlx::query("DELETE FROM garbage WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn insert_fragment_unless_duplicate(
        &self,
        f: FragmentRecord,
        dedupe_since_ms: EpochMillis,
    ) -> IndexResult<Option<FragmentRecord>> {
        let now = self.view_now();
        transaction!(self.pool, |c| {
            // The stream lock keeps other writers of this stream out between the check
            // and the insert (SQLite's single writer does the same).
            lock_stream(c, &f.stream_id).await?;
            let existing = find_by_content(c, &f, dedupe_since_ms, now).await?;
            if existing.is_none() {
                insert_fragment_locked(c, &f).await?;
            }
            Ok(existing)
        })
    }

    async fn find_fragment_by_content(
        &self,
        stream_id: &str,
        producer_ts_ms: EpochMillis,
        content_hash: &str,
        since_ms: EpochMillis,
    ) -> IndexResult<Option<FragmentRecord>> {
        let q = sqlx::query(FIND_BY_CONTENT)
            .bind(stream_id)
            .bind(producer_ts_ms)
            .bind(content_hash)
            .bind(since_ms)
            .bind(self.view_now());
        Ok(self.fragments(q).await?.pop())
    }

    async fn expire_fragments(
        &self,
        now_ms: EpochMillis,
        protect_from_ms: EpochMillis,
        limit: usize,
    ) -> IndexResult<Retired> {
        transaction!(self.pool, |c| {
            segments::expire(c, now_ms, protect_from_ms, limit).await
        })
    }

    async fn trim_stream(
        &self,
        stream_id: &str,
        max_bytes: u64,
        protect_from_ms: EpochMillis,
        limit: usize,
        now_ms: EpochMillis,
    ) -> IndexResult<Retired> {
        transaction!(self.pool, |c| {
            segments::trim(c, stream_id, max_bytes, protect_from_ms, limit, now_ms).await
        })
    }

    async fn commit_batch(
        &self,
        fence: Option<&Fence>,
        segs: Vec<SegmentRecord>,
        rows: Vec<BatchRow>,
    ) -> IndexResult<Vec<RowOutcome>> {
        let now = self.view_now();
        transaction!(self.pool, |c| {
            let not_owned = match fence {
                Some(f) => cluster::fence_commit(c, f, &rows).await?,
                None => HashSet::new(),
            };
            segments::commit_batch(c, &segs, &rows, now, &not_owned).await
        })
    }

    async fn seal_segment(
        &self,
        key: &str,
        now_ms: EpochMillis,
    ) -> IndexResult<Option<Vec<GarbageRecord>>> {
        transaction!(self.pool, |c| segments::seal_segment(c, key, now_ms).await)
    }

    async fn seal_open_segments(
        &self,
        now_ms: EpochMillis,
    ) -> IndexResult<(Vec<SegmentRecord>, Vec<GarbageRecord>)> {
        transaction!(self.pool, |c| {
            segments::seal_open_segments(c, now_ms).await
        })
    }

    async fn segments(&self) -> IndexResult<Vec<SegmentRecord>> {
        let rows = sqlx::query(LIST_SEGMENTS)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| segment_from_row(r).map_err(db_err))
            .collect()
    }

    async fn get_segment(&self, key: &str) -> IndexResult<Option<SegmentRecord>> {
        self.optional(sqlx::query(GET_SEGMENT).bind(key), segment_from_row)
            .await
    }

    async fn stream_stats(&self) -> IndexResult<Vec<StreamStats>> {
        let rows = sqlx::query(
            "SELECT s.stream_id, s.retention_hours, s.seq_reserved, COUNT(f.seq), \
             COALESCE(SUM(f.object_size), 0)::int8, MAX(f.seq) \
             FROM streams s LEFT JOIN fragments f ON f.stream_id = s.stream_id \
             GROUP BY s.stream_id ORDER BY s.stream_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let decode = |r: &PgRow| -> Result<StreamStats, sqlx::Error> {
            Ok(StreamStats {
                stream_id: r.try_get(0)?,
                retention_hours: r.try_get(1)?,
                seq_reserved: r.try_get::<i64, _>(2)? as u64,
                fragments: r.try_get::<i64, _>(3)? as u64,
                bytes: r.try_get::<i64, _>(4)? as u64,
                max_seq: r.try_get::<Option<i64>, _>(5)?.map(|v| v as u64),
            })
        };
        rows.iter().map(|r| decode(r).map_err(db_err)).collect()
    }

    async fn get_stream_config(&self, stream_id: &str, kind: &str) -> IndexResult<Option<String>> {
        sqlx::query_scalar("SELECT body FROM stream_configs WHERE stream_id = $1 AND kind = $2")
            .bind(stream_id)
            .bind(kind)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)
    }

    async fn put_stream_config(
        &self,
        stream_id: &str,
        kind: &str,
        body: Option<String>,
    ) -> IndexResult<()> {
        transaction!(self.pool, |c| {
            // Key-share: the stream cannot be deleted before this commits.
            let found: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM streams WHERE stream_id = $1 FOR KEY SHARE")
                    .bind(stream_id)
                    .fetch_optional(&mut *c)
                    .await?;
            if found.is_none() {
                return Err(IndexError::StreamNotFound(stream_id.to_owned()).into());
            }
            set_config(c, stream_id, kind, body.as_deref()).await
        })
    }
}

#[cfg(test)]
#[path = "postgres_tests.rs"]
mod tests;
