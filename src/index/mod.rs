//! The fragment index: streams (metadata, tags, wrapped data keys, fragment-number
//! reservations), upload sessions (sealed header elements), fragments (numbers,
//! timestamps, sizes, object keys, content hashes, metadata tags) and pending garbage.
//!
//! [`Index`] is an async trait with two implementations: the embedded SQLite one
//! ([`sqlite::SqliteIndex`], the default) and PostgreSQL ([`postgres::PostgresIndex`],
//! for several nodes; `docs/design/index-postgres.md`). [`open`] builds the one the
//! settings name; both pass one conformance suite (`conformance.rs`). A committed write
//! is durable: SQLite runs in WAL mode with `synchronous=FULL`, PostgreSQL commits with
//! the server's `synchronous_commit` (on by default).

pub mod postgres;
pub mod sqlite;

#[cfg(test)]
mod conformance;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::{EpochMillis, SharedClock};
use crate::config::{IndexBackend, Settings};
use crate::error::{Error, ErrorKind};
use crate::model::StreamName;

/// Opens the index `settings.index` names, creating it or applying pending migrations:
/// `<data_dir>/index.sqlite3` (`sqlite`) or the database at `index.postgres.url`
/// (`postgres`). This is the raw index; [`Index::retention_view`] gives the view the read
/// APIs use.
pub async fn open(settings: &Settings) -> IndexResult<Arc<dyn Index>> {
    match settings.index.backend {
        IndexBackend::Sqlite => Ok(Arc::new(sqlite::SqliteIndex::open(&settings.index_path())?)),
        IndexBackend::Postgres => {
            let pg = &settings.index.postgres;
            // A node paused inside a transaction (SIGSTOP, a stalled VM) would hold its
            // commit fence's lock, and so any takeover of it, for as long as it stays
            // paused: PostgreSQL ends such a session after one lease TTL.
            let idle = format!("{}ms", settings.cluster.lease_ttl.as_millis().max(1));
            let opts = postgres::connect_options(postgres_url(settings)?)?
                .options([("idle_in_transaction_session_timeout", idle.as_str())]);
            let index = postgres::PostgresIndex::open_with(opts, pg.max_connections).await?;
            Ok(Arc::new(index))
        }
    }
}

/// Opens an existing index for reading only (`streamvault check` beside a live server):
/// nothing is created or migrated and no write lock is ever taken. SQLite: the file must
/// exist; PostgreSQL: every transaction is read-only. The schema must be this binary's.
pub async fn open_read_only(settings: &Settings) -> IndexResult<Arc<dyn Index>> {
    match settings.index.backend {
        IndexBackend::Sqlite => {
            let path = settings.index_path();
            if !path.exists() {
                return Err(IndexError::Db(format!(
                    "no index at {}: is --data-dir right?",
                    path.display()
                )));
            }
            Ok(Arc::new(sqlite::SqliteIndex::open_read_only(&path)?))
        }
        IndexBackend::Postgres => Ok(Arc::new(
            postgres::PostgresIndex::open_read_only(postgres_url(settings)?).await?,
        )),
    }
}

fn postgres_url(settings: &Settings) -> IndexResult<&str> {
    match &settings.index.postgres.url {
        Some(u) if !u.0.is_empty() => Ok(&u.0),
        _ => Err(IndexError::Db(
            "index.postgres.url is required for index.backend = \"postgres\"".into(),
        )),
    }
}

/// Index failures.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("stream not found: stream={0}")]
    StreamNotFound(String),
    #[error("stream already exists: stream={0}")]
    StreamExists(String),
    #[error("version mismatch: stream={stream} expected={expected} current={current}")]
    VersionMismatch {
        stream: String,
        expected: String,
        current: String,
    },
    #[error("stream limit reached: limit={0}")]
    StreamLimit(u64),
    #[error("fragment already indexed: stream_id={stream_id} seq={seq}")]
    DuplicateFragment { stream_id: String, seq: u64 },
    /// The commit fence failed: the node's lease (`node_id`, epoch) is not live (see
    /// `docs/design/cluster.md`); nothing of the transaction was written.
    #[error("fenced: {0}")]
    Fenced(String),
    #[error("index database: {0}")]
    Db(String),
}

impl From<IndexError> for Error {
    fn from(e: IndexError) -> Self {
        let kind = match &e {
            IndexError::StreamNotFound(_) => ErrorKind::ResourceNotFound,
            IndexError::StreamExists(_) => ErrorKind::ResourceInUse,
            IndexError::VersionMismatch { .. } => ErrorKind::VersionMismatch,
            IndexError::StreamLimit(_) => ErrorKind::AccountStreamLimitExceeded,
            IndexError::DuplicateFragment { .. } | IndexError::Fenced(_) | IndexError::Db(_) => {
                ErrorKind::Internal
            }
        };
        Error::new(kind, e.to_string())
    }
}

pub type IndexResult<T> = Result<T, IndexError>;

/// Lifecycle state of a stream, as DescribeStream reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStatus {
    Active,
}

impl StreamStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamStatus::Active => "ACTIVE",
        }
    }
}

/// One stream as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRecord {
    /// 32 hex digits; names the stream's objects and binds its encryption.
    pub stream_id: String,
    pub name: StreamName,
    pub device_name: Option<String>,
    pub media_type: Option<String>,
    /// Id of the master key that wraps this stream's data key.
    pub kms_key_id: String,
    /// Changes on every metadata change.
    pub version: String,
    pub status: StreamStatus,
    pub creation_ms: EpochMillis,
    pub retention_hours: i64,
    /// The data key wrapped by `kms_key_id`.
    pub wrapped_key: Vec<u8>,
    pub tags: BTreeMap<String, String>,
}

/// Input of [`Index::create_stream`].
#[derive(Debug, Clone)]
pub struct NewStream {
    pub stream_id: String,
    pub name: StreamName,
    pub device_name: Option<String>,
    pub media_type: Option<String>,
    pub kms_key_id: String,
    pub version: String,
    pub creation_ms: EpochMillis,
    pub retention_hours: i64,
    pub wrapped_key: Vec<u8>,
    pub tags: BTreeMap<String, String>,
}

/// A metadata change; each one also sets a new version.
#[derive(Debug, Clone)]
pub enum StreamUpdate {
    /// UpdateStream: `None` leaves a field as it is.
    Metadata {
        device_name: Option<String>,
        media_type: Option<String>,
    },
    /// UpdateDataRetention, with the resulting value.
    Retention { hours: i64 },
    /// TagStream / UntagStream. Fails with [`IndexError::StreamLimit`]-like
    /// `TooManyTags` semantics handled by the caller before calling.
    Tags {
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    },
    /// Sets (`Some`) or removes (`None`) a configuration document of one kind (see
    /// [`Index::put_stream_config`]) as a version-checked change
    /// (UpdateStreamStorageConfiguration).
    Config { kind: String, body: Option<String> },
}

/// Which timestamp a fragment query selects on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampKind {
    Producer,
    Server,
}

/// One indexed fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentRecord {
    pub stream_id: String,
    pub seq: u64,
    /// Upload session whose header elements precede this fragment in GetMedia output.
    pub session_id: u64,
    pub producer_ts_ms: EpochMillis,
    pub server_ts_ms: EpochMillis,
    pub duration_ms: i64,
    /// The raw cluster timecode the producer sent (echoed in acks).
    pub producer_timecode: i64,
    /// Plaintext size of the stored fragment (cluster bytes).
    pub size: u64,
    pub object_key: String,
    /// Size of the sealed blob in the store (in its segment, or the whole legacy object).
    pub object_size: u64,
    /// Offset of the sealed blob in the segment `object_key`; `None` for a legacy row
    /// whose `object_key` is one object holding only this fragment (before migration 4).
    pub object_offset: Option<u64>,
    /// Hash of the plaintext: `b3:` + BLAKE3 hex (older rows: bare SHA-256 hex); see
    /// [`crate::check::content_hash`].
    pub content_hash: String,
    /// Producer fragment metadata (Tags after the cluster), name → value, in order.
    pub metadata: Vec<(String, String)>,
}

/// One page of a timestamp-range read: `kind` timestamps in `[start_ms, end_ms]`, in
/// (timestamp, seq) order, strictly after the cursor `after` when given, at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangePage {
    pub kind: TimestampKind,
    pub start_ms: EpochMillis,
    pub end_ms: EpochMillis,
    pub after: Option<(EpochMillis, u64)>,
    pub limit: usize,
}

/// The part of a [`FragmentRecord`] a fragment listing shows: no strings, no metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentTimes {
    pub seq: u64,
    pub producer_ts_ms: EpochMillis,
    pub server_ts_ms: EpochMillis,
    pub duration_ms: i64,
    pub size: u64,
}

impl From<&FragmentRecord> for FragmentTimes {
    fn from(f: &FragmentRecord) -> Self {
        Self {
            seq: f.seq,
            producer_ts_ms: f.producer_ts_ms,
            server_ts_ms: f.server_ts_ms,
            duration_ms: f.duration_ms,
            size: f.size,
        }
    }
}

/// One upload session: the producer's header elements, sealed with the stream's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub stream_id: String,
    pub session_id: u64,
    pub created_ms: EpochMillis,
    pub header_sealed: Vec<u8>,
}

/// One segment's index record (`docs/design/storage.md`, I8 and I9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRecord {
    pub key: String,
    /// Retention class (`store::keys::retention_class`).
    pub class: String,
    pub created_ms: EpochMillis,
    /// Bytes durable and committed: no row of this segment ends past it.
    pub durable_end: u64,
    /// Closed: never appended to again; deleted once no row names it.
    pub sealed: bool,
}

/// One fragment of a group commit: its row (with its place in `segment`) and, with a
/// dedupe window, the earliest server timestamp a stored equal fragment may have.
#[derive(Debug, Clone)]
pub struct BatchRow {
    pub row: FragmentRecord,
    pub dedupe_since_ms: Option<EpochMillis>,
}

/// What happened to one row of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    Inserted,
    /// Same stream, producer timestamp and content as this stored fragment (I7): nothing
    /// inserted.
    Duplicate(FragmentRecord),
    /// The stream row is gone (DeleteStream during the upload): nothing inserted.
    StreamGone,
    /// The number is already used by a row (a bug or a replay): nothing inserted.
    SeqTaken,
    /// Cluster: the fence's node does not own the stream at the fence's epoch (another
    /// node took it over): nothing inserted.
    NotOwner,
}

/// The commit fence of a cluster node (`docs/design/cluster.md`, C1): a fragment commit
/// under it succeeds only while `node_id` holds a live lease at `epoch`, and inserts a
/// row only for streams that node owns at that epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub node_id: String,
    pub epoch: i64,
}

/// What a retention step retired: how many fragment rows went, and the garbage rows
/// (legacy objects, segments left without rows) whose objects are to be deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retired {
    pub rows: usize,
    pub garbage: Vec<GarbageRecord>,
}

/// Objects awaiting deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GarbageRecord {
    pub id: i64,
    /// A whole stream's prefix (`stream_id` set, `object_key` empty) or one object.
    pub stream_id: String,
    pub object_key: Option<String>,
    pub created_ms: EpochMillis,
}

/// Per-stream figures: for the size cap, `check` (I3) and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStats {
    pub stream_id: String,
    pub retention_hours: i64,
    /// First fragment sequence number not yet reserved (I3: every stored `seq` is below).
    pub seq_reserved: u64,
    pub fragments: u64,
    /// Sum of the sealed object sizes.
    pub bytes: u64,
    pub max_seq: Option<u64>,
}

/// UpdateStream / DeleteStream with a `CurrentVersion`: `VersionMismatch` unless it is
/// the stream's version now (both backends, inside their write transaction).
fn check_version(s: &StreamRecord, expected: Option<&str>) -> IndexResult<()> {
    match expected {
        Some(v) if v != s.version => Err(IndexError::VersionMismatch {
            stream: s.name.to_string(),
            expected: v.to_owned(),
            current: s.version.clone(),
        }),
        _ => Ok(()),
    }
}

/// The earliest server timestamp a stream with `retention_hours` still serves at `now_ms`:
/// a fragment is expired (never returned by a read, deleted by the retention task) when
/// its server timestamp is below this.
pub fn retention_cutoff_ms(now_ms: EpochMillis, retention_hours: i64) -> EpochMillis {
    now_ms.saturating_sub(retention_hours.saturating_mul(3_600_000))
}

/// The index interface. Every method is a single transaction.
///
/// **Retention view.** The index the catalog (and so every read API) uses is a *retention
/// view* ([`Index::retention_view`]): [`Index::get_fragment`],
/// [`Index::fragments_after`], [`Index::fragments_in_range`], [`Index::last_fragment`] and
/// [`Index::find_fragment_by_content`] never return a fragment whose server timestamp is
/// below [`retention_cutoff_ms`] of its stream at the view's clock, whether or not the
/// retention task deleted it yet. The raw index (no view) returns every row; `check`, the
/// sweeper and the retention task use it.
#[async_trait]
pub trait Index: Send + Sync + std::fmt::Debug {
    /// The same index (same connections) as a retention view at `clock`: fragment reads
    /// never return a fragment older than its stream's retention (see above).
    fn retention_view(&self, clock: SharedClock) -> Arc<dyn Index>;
    /// The cluster tables of the same database, for an index several nodes share
    /// (PostgreSQL); `None` for the embedded one.
    fn coordinator(&self) -> Option<Arc<dyn crate::cluster::Coordinator>> {
        None
    }
    /// Shutdown, after the last write: SQLite checkpoints its WAL into the file,
    /// PostgreSQL closes its connections. Views share the raw index's connections.
    async fn close(&self);

    /// Creates a stream; fails when the name is taken or `max_streams` would be exceeded.
    async fn create_stream(&self, s: NewStream, max_streams: u64) -> IndexResult<StreamRecord>;
    async fn get_stream(&self, name: &StreamName) -> IndexResult<Option<StreamRecord>>;
    async fn get_stream_by_id(&self, stream_id: &str) -> IndexResult<Option<StreamRecord>>;
    /// Streams in name order, after `after` (exclusive), names starting with `prefix`.
    async fn list_streams(
        &self,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> IndexResult<Vec<StreamRecord>>;
    /// Applies `update` if `expected_version` (when given) matches; sets `new_version`.
    async fn update_stream(
        &self,
        stream_id: &str,
        expected_version: Option<&str>,
        update: StreamUpdate,
        new_version: &str,
    ) -> IndexResult<StreamRecord>;
    /// Deletes the stream in one transaction: its wrapped data key goes first
    /// (crypto-shred), its rows go, and one garbage row records its object prefix.
    async fn delete_stream(
        &self,
        stream_id: &str,
        expected_version: Option<&str>,
        now_ms: EpochMillis,
    ) -> IndexResult<()>;
    async fn stream_count(&self) -> IndexResult<u64>;

    /// Reserves `count` fragment sequence numbers, durably; returns the first. Numbers
    /// handed out are never handed out again, even after a crash.
    async fn reserve_fragment_seqs(&self, stream_id: &str, count: u64) -> IndexResult<u64>;
    async fn insert_session(&self, s: SessionRecord) -> IndexResult<()>;
    async fn get_session(
        &self,
        stream_id: &str,
        session_id: u64,
    ) -> IndexResult<Option<SessionRecord>>;
    /// Commits a fragment row (durable on return).
    async fn insert_fragment(&self, f: FragmentRecord) -> IndexResult<()>;
    async fn get_fragment(&self, stream_id: &str, seq: u64) -> IndexResult<Option<FragmentRecord>>;
    /// Fragments with `seq > after_seq`, in sequence order.
    async fn fragments_after(
        &self,
        stream_id: &str,
        after_seq: Option<u64>,
        limit: usize,
    ) -> IndexResult<Vec<FragmentRecord>>;
    /// Fragments whose `kind` timestamp lies in `[start, end]`, ordered by
    /// (timestamp, seq), strictly after the cursor `after` when given.
    async fn fragments_in_range(
        &self,
        stream_id: &str,
        kind: TimestampKind,
        start_ms: EpochMillis,
        end_ms: EpochMillis,
        after: Option<(EpochMillis, u64)>,
        limit: usize,
    ) -> IndexResult<Vec<FragmentRecord>>;
    /// The same rows as [`Index::fragments_in_range`] for `page`, reading only the
    /// columns of [`FragmentTimes`] (ListFragments pages).
    async fn fragment_times_in_range(
        &self,
        stream_id: &str,
        page: RangePage,
    ) -> IndexResult<Vec<FragmentTimes>>;
    /// The last fragment of the stream, if any.
    async fn last_fragment(&self, stream_id: &str) -> IndexResult<Option<FragmentRecord>>;
    /// Every fragment row, in (stream_id, seq) order after the cursor; for `check`.
    async fn scan_fragments(
        &self,
        after: Option<(String, u64)>,
        limit: usize,
    ) -> IndexResult<Vec<FragmentRecord>>;
    /// Ids of every live stream; for `check` and orphan detection.
    async fn stream_ids(&self) -> IndexResult<Vec<String>>;

    async fn list_garbage(&self, limit: usize) -> IndexResult<Vec<GarbageRecord>>;
    async fn drop_garbage(&self, id: i64) -> IndexResult<()>;

    /// Commits a fragment row unless a row of the same stream with the same producer
    /// timestamp and content hash, and a server timestamp at or after
    /// `dedupe_since_ms`, exists; then nothing is written and that row is returned. The
    /// check and the insert are one transaction (idempotent re-upload).
    async fn insert_fragment_unless_duplicate(
        &self,
        f: FragmentRecord,
        dedupe_since_ms: EpochMillis,
    ) -> IndexResult<Option<FragmentRecord>>;
    /// The fragment of a stream with this producer timestamp and content hash whose
    /// server timestamp is at or after `since_ms` (the earliest by seq).
    async fn find_fragment_by_content(
        &self,
        stream_id: &str,
        producer_ts_ms: EpochMillis,
        content_hash: &str,
        since_ms: EpochMillis,
    ) -> IndexResult<Option<FragmentRecord>>;

    /// Retention, step 1 of the single-fragment delete protocol: in one transaction,
    /// deletes the rows of up to `limit` fragments (all streams, oldest first) whose
    /// server timestamp is below their stream's [`retention_cutoff_ms`] at `now_ms` and
    /// below `protect_from_ms` (the minimum age), inserts one garbage row per object, and
    /// deletes sessions that no fragment uses any more and that were created before both
    /// bounds. Sealed segments left without rows get garbage rows too (I9).
    async fn expire_fragments(
        &self,
        now_ms: EpochMillis,
        protect_from_ms: EpochMillis,
        limit: usize,
    ) -> IndexResult<Retired>;
    /// The size cap, same protocol: deletes a stream's oldest fragments (by seq) until
    /// the sum of its object sizes is at most `max_bytes`, never one with a server
    /// timestamp at or after `protect_from_ms`; at most `limit` per call.
    async fn trim_stream(
        &self,
        stream_id: &str,
        max_bytes: u64,
        protect_from_ms: EpochMillis,
        limit: usize,
        now_ms: EpochMillis,
    ) -> IndexResult<Retired>;
    /// Group commit: in ONE transaction, records each segment's state (insert, or raise
    /// `durable_end` / set `sealed`) and inserts every row (with its dedupe check, which
    /// also sees rows inserted earlier in the batch). A row that cannot be inserted gets
    /// its outcome; the others are inserted. Durable on return.
    ///
    /// With a `fence` (cluster nodes; PostgreSQL only) the transaction first checks the
    /// node's lease, failing whole with [`IndexError::Fenced`], and a row of a stream the
    /// node does not own at the fence's epoch gets [`RowOutcome::NotOwner`].
    async fn commit_batch(
        &self,
        fence: Option<&Fence>,
        segments: Vec<SegmentRecord>,
        rows: Vec<BatchRow>,
    ) -> IndexResult<Vec<RowOutcome>>;
    /// Closes a segment. If no row names it, the same transaction deletes its record
    /// and inserts its garbage row, which is returned. `Ok(None)` with no garbage row
    /// when the segment has no record (no batch committed in it): the caller deletes it.
    async fn seal_segment(
        &self,
        key: &str,
        now_ms: EpochMillis,
    ) -> IndexResult<Option<Vec<GarbageRecord>>>;
    /// Startup: seals every segment left open, returns them (for tail truncation) and
    /// the garbage rows of those left without rows.
    async fn seal_open_segments(
        &self,
        now_ms: EpochMillis,
    ) -> IndexResult<(Vec<SegmentRecord>, Vec<GarbageRecord>)>;
    /// Every segment record, by key.
    async fn segments(&self) -> IndexResult<Vec<SegmentRecord>>;
    async fn get_segment(&self, key: &str) -> IndexResult<Option<SegmentRecord>>;

    /// Figures of every live stream, in stream id order.
    async fn stream_stats(&self) -> IndexResult<Vec<StreamStats>>;
    /// A stream's configuration document of one kind (e.g. image generation), as stored.
    async fn get_stream_config(&self, stream_id: &str, kind: &str) -> IndexResult<Option<String>>;
    /// Sets (`Some`) or removes (`None`) a configuration document; fails with
    /// [`IndexError::StreamNotFound`] when the stream is gone. Deleted with the stream.
    async fn put_stream_config(
        &self,
        stream_id: &str,
        kind: &str,
        body: Option<String>,
    ) -> IndexResult<()>;
}
