//! Settings: plain data loaded from an optional TOML file, overlaid by `STREAMVAULT_*`
//! environment variables, overlaid by command-line flags. Unknown keys are rejected at
//! every level. Every field's default is documented here and in `docs/config.md`.
//!
//! Components (object store, index, clock) are not settings: `server::Server::builder`
//! builds them from these settings or takes injected ones.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Prefix of the environment variables that overlay the file. Nested keys use `__`:
/// `STREAMVAULT_STORE__BACKEND=s3` sets `store.backend`.
pub const ENV_PREFIX: &str = "STREAMVAULT_";

/// All settings of one server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address to listen on. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Directory for the embedded index, the local object store and generated keys.
    /// Default `./streamvault-data`.
    pub data_dir: PathBuf,
    /// Base URL returned by GetDataEndpoint and used in HLS/DASH session URLs, without a
    /// trailing slash. Default: `http://<listen address>`.
    pub public_url: Option<String>,
    /// Region written into stream ARNs. Default `us-east-1`.
    pub region: String,
    /// 12-digit account id written into stream ARNs. Default `000000000000`.
    #[serde(deserialize_with = "string_from_scalar")]
    pub account_id: String,
    /// Retention (hours) for CreateStream calls that omit `DataRetentionInHours`.
    /// Default 24 (AWS uses 0). Must be 0 or 1…87600.
    pub default_retention_hours: i64,
    /// Root access key id: every action on every stream. Set with `secret_access_key`
    /// (or `--access-key-id` / `STREAMVAULT_ACCESS_KEY_ID`). Default: none; then, with auth
    /// on and no `auth.keys`, a root key is generated into `<data_dir>/credentials`.
    pub access_key_id: Option<String>,
    /// Secret of the root key. Never logged.
    pub secret_access_key: Option<Secret>,
    /// Request authentication and access keys.
    pub auth: AuthSettings,
    /// HTTPS: serve TLS with this certificate and key.
    pub tls: TlsSettings,
    /// Connection-level limits of the HTTP listener (timeouts, connection cap).
    pub http: HttpSettings,
    /// Most streams this server will hold; CreateStream beyond it answers
    /// `AccountStreamLimitExceededException`. Default 100000.
    pub max_streams: u64,
    /// Largest JSON request body accepted by the JSON APIs. Default 1 MiB.
    pub max_json_body_bytes: usize,
    /// Where fragments are stored.
    pub store: StoreSettings,
    /// The fragment index: embedded SQLite (default) or PostgreSQL.
    pub index: IndexSettings,
    /// Cluster membership (on with `index.backend = "postgres"`).
    pub cluster: ClusterSettings,
    /// Master keys that wrap the per-stream data keys.
    pub keys: KeySettings,
    /// PutMedia ingest limits.
    pub ingest: IngestSettings,
    /// Read API limits (GetMedia, ListFragments, GetMediaForFragmentList).
    pub media: MediaSettings,
    /// The retention task (expiry by `DataRetentionInHours`, optional size cap).
    pub retention: RetentionSettings,
    /// Background deletion (DeleteStream sweeps, orphan clean-up).
    pub gc: GcSettings,
    /// GetClip, HLS and DASH limits.
    pub playback: PlaybackSettings,
    /// GetImages and image generation.
    pub images: ImageSettings,
    /// Webhook delivery of UpdateNotificationConfiguration events.
    pub notifications: NotificationSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("valid default"),
            data_dir: PathBuf::from("./streamvault-data"),
            public_url: None,
            access_key_id: None,
            secret_access_key: None,
            auth: AuthSettings::default(),
            tls: TlsSettings::default(),
            http: HttpSettings::default(),
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
            default_retention_hours: 24,
            max_streams: 100_000,
            max_json_body_bytes: 1 << 20,
            store: StoreSettings::default(),
            index: IndexSettings::default(),
            cluster: ClusterSettings::default(),
            keys: KeySettings::default(),
            ingest: IngestSettings::default(),
            media: MediaSettings::default(),
            retention: RetentionSettings::default(),
            gc: GcSettings::default(),
            playback: PlaybackSettings::default(),
            images: ImageSettings::default(),
            notifications: NotificationSettings::default(),
        }
    }
}

/// A secret string: deserializes like a string, never shows in `Debug` output.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Authentication settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Verify SigV4 on every API request. Default true; `serve --no-auth` turns it off
    /// (for throwaway local use only).
    pub enabled: bool,
    /// Largest accepted difference between `X-Amz-Date` and the server clock. Default `15m`.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// Access keys with limited rights.
    pub keys: Vec<KeySpec>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_clock_skew: Duration::from_secs(15 * 60),
            keys: Vec::new(),
        }
    }
}

/// One access key and what it may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// Allowed actions: `kinesisvideo:<Operation>` (e.g. `kinesisvideo:GetMedia`),
    /// `kinesisvideo:*` or `*`. Default `["*"]`.
    #[serde(default = "everything")]
    pub actions: Vec<String>,
    /// Stream-name patterns with `*` wildcards. Default `["*"]`.
    #[serde(default = "everything")]
    pub streams: Vec<String>,
}

fn everything() -> Vec<String> {
    vec!["*".into()]
}

/// TLS settings: both files set turns HTTPS on (HTTP/1.1 only, as PutMedia needs).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// PEM certificate chain. Default: none (plain HTTP).
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Default: none.
    pub key_file: Option<PathBuf>,
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some()
    }
}

/// Connection-level limits of the listener, so that clients that send nothing, or
/// send slowly, cannot hold sockets and memory forever (see `docs/security.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// A connection must send a request's whole header within this time; the same clock
    /// runs while a kept-alive connection waits for its next request, so it is also the
    /// keep-alive idle timeout. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A JSON API request must deliver its whole body within this time (PutMedia bodies
    /// are streams, bounded by `ingest.idle_timeout` instead). Default 20 s.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Most open client connections; at the cap the listener stops accepting (new
    /// connections wait in the kernel's backlog) until one closes, and logs a warning at
    /// most once a minute. Default 16384.
    pub max_connections: usize,
    /// On SIGTERM/SIGINT the server stops accepting, lets open requests finish and waits
    /// for PutMedia sessions to persist their received fragments (and send their
    /// PERSISTED acks) for at most this long before it closes the index and exits.
    /// Open GetMedia streams hold a connection until then too. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub shutdown_drain_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(20),
            max_connections: 16_384,
            shutdown_drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Object store backend and segments (`docs/design/storage.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// `local` (default: `<data_dir>/objects`, every write fsync'd) or `s3`.
    pub backend: StoreBackend,
    /// Directory for the `local` backend. Default `<data_dir>/objects`.
    pub local_path: Option<PathBuf>,
    /// Settings for the `s3` backend.
    pub s3: S3Settings,
    /// Local backend: an open segment is closed at this size. Default 256 MiB.
    pub segment_max_bytes: u64,
    /// Local backend: an open segment is closed at this age (server clock); part of the
    /// bound on how long deleted bytes stay on disk. Default `10m`.
    #[serde(with = "humantime_serde")]
    pub segment_max_age: Duration,
    /// Object-store segments: a batch is flushed as one object once it holds this many
    /// bytes. Default 8 MiB.
    pub flush_bytes: u64,
    /// Object-store segments: ... or once its oldest fragment waited this long. Default
    /// `250ms`; `0s` flushes whatever is queued at once (like the local backend).
    #[serde(with = "humantime_serde")]
    pub flush_age: Duration,
    /// Local backend: append to segments with direct I/O (`O_DIRECT`, batches padded to
    /// 4 KiB), skipping the page-cache copy. Default `true`; a file system that refuses
    /// it gets buffered writes.
    pub direct_io: bool,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            backend: StoreBackend::default(),
            local_path: None,
            s3: S3Settings::default(),
            segment_max_bytes: 256 << 20,
            segment_max_age: Duration::from_secs(600),
            flush_bytes: 8 << 20,
            flush_age: Duration::from_millis(250),
            direct_io: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    #[default]
    Local,
    S3,
}

/// S3-compatible store settings. Credentials may also come from the usual `AWS_*`
/// environment variables.
#[derive(Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct S3Settings {
    /// Bucket name (required for `s3`).
    #[serde(deserialize_with = "string_from_scalar")]
    pub bucket: String,
    /// Endpoint URL for non-AWS stores, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// Region of the bucket. Default: the server's `region`.
    pub region: Option<String>,
    /// Access key id; default from `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// Secret key; default from `AWS_SECRET_ACCESS_KEY`. Never logged.
    pub secret_access_key: Option<String>,
    /// Allow `http://` endpoints. Default false.
    pub allow_http: bool,
    /// Key prefix inside the bucket. Default none.
    pub prefix: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field(
                "access_key_id",
                &self.access_key_id.as_ref().map(|_| "<set>"),
            )
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The fragment index (`docs/design/index-postgres.md`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct IndexSettings {
    /// `sqlite` (default: embedded, `<data_dir>/index.sqlite3`) or `postgres`.
    pub backend: IndexBackend,
    /// Settings of the `postgres` backend.
    pub postgres: PostgresSettings,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IndexBackend {
    #[default]
    Sqlite,
    Postgres,
}

/// PostgreSQL index settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSettings {
    /// Connection URL, `postgres://user:password@host:port/database?sslmode=...` (required
    /// for `postgres`). It may carry a password: never logged (only host, port and
    /// database are).
    pub url: Option<Secret>,
    /// Size of the connection pool. Default 10.
    pub max_connections: u32,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 10,
        }
    }
}

/// The keyring of master keys (key-encryption keys).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeySettings {
    /// Key id used for streams whose CreateStream names no `KmsKeyId`.
    /// Default `streamvault-local`.
    pub default_key_id: String,
    /// Extra master keys: key id → path of a file holding 32 random bytes (raw, or 64
    /// hex characters). The default key, when not listed here, lives at
    /// `<data_dir>/keys/<default_key_id>.key` and is generated (0600) on first start.
    /// Cluster nodes must list the default key here (every node reads the same file).
    pub files: BTreeMap<String, PathBuf>,
    /// The HLS/DASH session-token key (32 bytes, raw or hex). Default:
    /// `<data_dir>/keys/session-token.key`, generated on first start; cluster nodes must
    /// set it (a URL one node signed is served by any node).
    pub session_token_file: Option<PathBuf>,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            default_key_id: "streamvault-local".into(),
            files: BTreeMap::new(),
            session_token_file: None,
        }
    }
}

/// PutMedia limits. Defaults follow AWS's published limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    /// Largest fragment, bytes (ErrorId 4001). Default 50,000,000.
    pub max_fragment_bytes: u64,
    /// Longest fragment (ErrorId 4002). Default `20s`.
    #[serde(with = "humantime_serde")]
    pub max_fragment_duration: Duration,
    /// Most tracks in a session header (ErrorId 4012). Default 3.
    pub max_tracks: usize,
    /// Most fragment-metadata tags per fragment (ErrorId 4009). Default 10.
    pub max_metadata_tags: usize,
    /// Concurrent PutMedia connections per stream; one more is accepted and ends the
    /// oldest (the newest connection wins, as on AWS). Default 1.
    pub max_connections_per_stream: usize,
    /// Per-stream ingest rate cap in bytes/s; 0 turns it off. Default 12,500,000.
    pub max_bytes_per_second: u64,
    /// Bytes all streams together may hold in memory (upload buffers and open fragments,
    /// live frames and live buffers, the persist queues and sealed copies, GetMedia
    /// output queues) before uploads are slowed (socket back-pressure). Default 512 MiB.
    pub memory_budget_bytes: u64,
    /// Per stream, most bytes of frames the live hand-off keeps for GetMedia readers that
    /// have not received them yet; a reader further behind continues from storage.
    /// Default 8 MiB.
    pub live_buffer_bytes: u64,
    /// Interval of IDLE acks while a connection is open but sends nothing. Default `3s`.
    #[serde(with = "humantime_serde")]
    pub idle_ack_interval: Duration,
    /// How long a PutMedia connection may send nothing before the server ends it.
    /// Default `30s`.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Idempotent re-upload: a fragment whose producer timestamp and bytes equal those
    /// of a fragment of the same stream stored (server timestamp) within this window is
    /// not stored again; its PERSISTED ack carries the original fragment number. `0s`
    /// turns it off (every fragment is new, as on AWS). Default `24h`.
    #[serde(with = "humantime_serde")]
    pub dedupe_window: Duration,
    /// Complete fragments of one upload being sealed or committed at once (their acks
    /// stay in fragment order). 1 persists one fragment at a time. Default 8.
    pub pipeline_depth: usize,
    /// How often freed heap memory is given back to the operating system (`memtrim`;
    /// Linux with glibc). `0s` turns it off. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub memory_trim_interval: Duration,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            max_fragment_bytes: 50_000_000,
            max_fragment_duration: Duration::from_secs(20),
            max_tracks: 3,
            max_metadata_tags: 10,
            max_connections_per_stream: 1,
            max_bytes_per_second: 12_500_000,
            memory_budget_bytes: 512 << 20,
            live_buffer_bytes: 8 << 20,
            idle_ack_interval: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(30),
            dedupe_window: Duration::from_secs(24 * 3600),
            pipeline_depth: 8,
            memory_trim_interval: Duration::from_secs(1),
        }
    }
}

/// Read API limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaSettings {
    /// Concurrent GetMedia connections per stream; one more answers
    /// `ConnectionLimitExceededException`. Default 64 (AWS: 3).
    pub max_readers_per_stream: usize,
    /// End a GetMedia response after this long at the live edge with nothing to send
    /// (for one-shot downloads such as `aws kinesis-video-media get-media`). Default:
    /// never — a live reader stays open across quiet periods.
    #[serde(with = "humantime_serde")]
    pub max_idle: Option<Duration>,
    /// Most bytes waiting in one GetMedia response for the client to read (one larger
    /// chunk is still let in); a reader with a full queue falls behind the live buffer and
    /// later continues from storage. Default 2 MiB.
    pub max_reader_queue_bytes: u64,
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self {
            max_readers_per_stream: 64,
            max_idle: None,
            max_reader_queue_bytes: 2 << 20,
        }
    }
}

/// The retention task.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// Interval between retention passes (UpdateDataRetention with DECREASE also starts
    /// one at once). Reads hide expired fragments whenever the pass runs. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Fragments younger than this (by server timestamp) are never deleted, whatever the
    /// retention or the size cap say. Default `5m`.
    #[serde(with = "humantime_serde")]
    pub min_age: Duration,
    /// Per-stream cap on stored bytes (sealed object sizes); a stream above it loses its
    /// oldest fragments first. `0` turns the cap off. Default 0.
    pub max_stream_bytes: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            min_age: Duration::from_secs(300),
            max_stream_bytes: 0,
        }
    }
}

/// Garbage collection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcSettings {
    /// Objects without an index row are deleted only once older than this, so a
    /// fragment being written right now is never touched. Default `1h`.
    #[serde(with = "humantime_serde")]
    pub orphan_min_age: Duration,
    /// Interval of the background sweep. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for GcSettings {
    fn default() -> Self {
        Self {
            orphan_min_age: Duration::from_secs(3600),
            interval: Duration::from_secs(30),
        }
    }
}

/// Packager limits (GetClip, HLS, DASH).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlaybackSettings {
    /// Most fragments in one GetClip; a longer range is cut after this many (as AWS
    /// cuts at 200). Default 7200.
    pub clip_max_fragments: usize,
    /// Most media bytes in one GetClip; the clip ends before the fragment that would
    /// pass it (AWS: 100 MB). Default 4 GiB.
    pub clip_max_bytes: u64,
    /// GetClip reads every fragment once to lay out the MP4 header and once more to
    /// send the samples; up to this many bytes of fragments are kept in memory between
    /// the two passes instead of being read again. Default 64 MiB.
    pub clip_buffer_bytes: u64,
    /// LIVE and LIVE_REPLAY sessions stay valid while used: each request extends the
    /// session by its `Expires`. Default true.
    pub renew_live_sessions: bool,
    /// Most live sessions whose state (timeline, renewal) is kept in memory; the least
    /// recently used beyond it are dropped (and rebuilt on their next request).
    /// Default 10000.
    pub max_sessions: usize,
    /// Most playlist entries (fragments) kept in the timelines of all live sessions
    /// together; beyond it the least recently used sessions are dropped (and rebuilt on
    /// their next request). Default 200000 (about 75 MiB).
    pub max_session_entries: usize,
    /// Interval of the task that forgets expired sessions. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub session_purge_interval: Duration,
    /// Absolute lifetime of an HLS/DASH session token from its creation, renewals
    /// included. Default `12h` (AWS's largest `Expires`).
    #[serde(with = "humantime_serde")]
    pub max_session_lifetime: Duration,
    /// GetClip requests built at the same time; one more answers
    /// `ClientLimitExceededException`. Default 8.
    pub max_concurrent_clips: usize,
    /// `Access-Control-Allow-Origin` on `/hls/v1/*` and `/dash/v1/*`. Default `*`.
    pub cors_allow_origin: String,
}

impl Default for PlaybackSettings {
    fn default() -> Self {
        Self {
            clip_max_fragments: 7200,
            clip_max_bytes: 4 << 30,
            clip_buffer_bytes: 64 << 20,
            renew_live_sessions: true,
            max_sessions: 10_000,
            max_session_entries: 200_000,
            session_purge_interval: Duration::from_secs(60),
            max_session_lifetime: Duration::from_secs(12 * 3600),
            max_concurrent_clips: 8,
            cors_allow_origin: "*".into(),
        }
    }
}

/// GetImages and image generation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageSettings {
    /// Longest `EndTimestamp - StartTimestamp` GetImages accepts. Default `300s` (AWS).
    #[serde(with = "humantime_serde")]
    pub max_range: Duration,
    /// Smallest `SamplingInterval` accepted (GetImages and image generation).
    /// Default `200ms` (AWS).
    #[serde(with = "humantime_serde")]
    pub min_sampling_interval: Duration,
    /// `SamplingInterval` used when a GetImages request omits it. Default `3s`.
    #[serde(with = "humantime_serde")]
    pub default_sampling_interval: Duration,
    /// Most images in one GetImages response; a larger `MaxResults` is capped to it.
    /// Default 25 (AWS).
    pub max_page_size: usize,
    /// Fragments decoded at the same time, server-wide (GetImages and image generation
    /// together); 0 means one per CPU core. Default 0.
    pub max_concurrent_decodes: usize,
    /// Root directory of image generation's `file://<dir>/<prefix>` destinations (images
    /// go to `<local_dir>/<dir>/<prefix>/<stream>/<ms>.jpg`). Default `<data_dir>/images`.
    pub local_dir: Option<PathBuf>,
    /// URL that image generation POSTs one JSON notification to per generated batch
    /// (one batch per tagged fragment). Default: none.
    pub webhook_url: Option<String>,
}

impl Default for ImageSettings {
    fn default() -> Self {
        Self {
            max_range: Duration::from_secs(300),
            min_sampling_interval: Duration::from_millis(200),
            default_sampling_interval: Duration::from_secs(3),
            max_page_size: 25,
            max_concurrent_decodes: 0,
            local_dir: None,
            webhook_url: None,
        }
    }
}

/// Webhook delivery of stream notifications (UpdateNotificationConfiguration with an
/// `http://` or `https://` destination; see docs/api.md, Notifications).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationSettings {
    /// HMAC-SHA256 key that signs every delivery (`X-Streamvault-Signature`). Webhook
    /// destinations are refused while it is unset. Never logged. Default: none.
    pub webhook_secret: Option<Secret>,
    /// URL prefixes a webhook destination must start with (e.g.
    /// `https://hooks.example.com/`); empty allows any `http(s)://` URL. Default: empty.
    pub allowed_destinations: Vec<String>,
    /// Attempts per event (the first plus retries). Default 6.
    pub max_attempts: u32,
    /// Wait before the first retry; doubles after each, up to `max_backoff`. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest wait between two attempts. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Deadline of one attempt (connect to response head). Default 10 s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Events being delivered or waiting for a retry, server-wide; an event beyond it is
    /// dropped and counted. Default 1024.
    pub max_pending: usize,
}

impl Default for NotificationSettings {
    fn default() -> Self {
        Self {
            webhook_secret: None,
            allowed_destinations: Vec::new(),
            max_attempts: 6,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            max_pending: 1024,
        }
    }
}

/// Errors while loading settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid settings: {0}")]
    Invalid(String),
}

impl Settings {
    /// Loads settings: defaults ← `file` (if any) ← `STREAMVAULT_*` from `env`.
    /// Command-line flags are applied by the caller afterwards.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|source| ConfigError::Parse {
                        path: path.to_owned(),
                        source,
                    })?
            }
            None => toml::Table::new(),
        };
        for (key, value) in env {
            let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            // Variables read elsewhere (the CLI, the test suite), not settings.
            if matches!(
                rest,
                "LOG"
                    | "CONFIG"
                    | "ENDPOINT"
                    | "AWS_CLI"
                    | "PYTHON"
                    | "SOAK_CYCLES"
                    | "CRASH_SEED"
                    | "TEST_POSTGRES_URL"
                    | "TEST_S3_ENDPOINT"
                    | "TEST_CLUSTER"
            ) {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            set_path(&mut table, &path, env_value(&value)).map_err(ConfigError::Invalid)?;
        }
        let settings: Settings = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks cross-field rules that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let r = self.default_retention_hours;
        if !(0..=crate::model::MAX_RETENTION_HOURS).contains(&r) {
            return Err(ConfigError::Invalid(format!(
                "default_retention_hours must be 0..=87600, got {r}"
            )));
        }
        if self.account_id.len() != 12 || !self.account_id.chars().all(|c| c.is_ascii_digit()) {
            return Err(ConfigError::Invalid("account_id must be 12 digits".into()));
        }
        if self.region.is_empty()
            || !self
                .region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(ConfigError::Invalid("region must be [a-z0-9-]+".into()));
        }
        if self.http.max_connections == 0
            || self.http.header_read_timeout.is_zero()
            || self.http.body_read_timeout.is_zero()
        {
            return Err(ConfigError::Invalid(
                "http.max_connections, http.header_read_timeout and http.body_read_timeout must be positive".into(),
            ));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(ConfigError::Invalid(
                "tls.cert_file and tls.key_file must be set together".into(),
            ));
        }
        if self.index.backend == IndexBackend::Postgres
            && self
                .index
                .postgres
                .url
                .as_ref()
                .is_none_or(|u| u.0.is_empty())
        {
            return Err(ConfigError::Invalid(
                "index.postgres.url is required for index.backend = \"postgres\" (STREAMVAULT_INDEX__POSTGRES__URL)".into(),
            ));
        }
        if self.cluster_enabled() {
            self.validate_cluster()?;
        }
        if self.index.postgres.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "index.postgres.max_connections must be at least 1".into(),
            ));
        }
        if self.store.backend == StoreBackend::S3 && self.store.s3.bucket.is_empty() {
            return Err(ConfigError::Invalid(
                "store.s3.bucket is required for the s3 backend".into(),
            ));
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(
                "public_url must start with http:// or https://".into(),
            ));
        }
        crate::model::check_name("keys.default_key_id", &self.keys.default_key_id, 128)
            .map_err(|e| ConfigError::Invalid(e.message))?;
        if self.ingest.memory_budget_bytes < 2 * self.ingest.max_fragment_bytes {
            return Err(ConfigError::Invalid(
                "ingest.memory_budget_bytes must be at least twice ingest.max_fragment_bytes"
                    .into(),
            ));
        }
        if self.ingest.max_tracks == 0 || self.ingest.max_connections_per_stream == 0 {
            return Err(ConfigError::Invalid(
                "ingest.max_tracks and ingest.max_connections_per_stream must be at least 1".into(),
            ));
        }
        if self.playback.clip_max_fragments == 0
            || self.playback.max_sessions == 0
            || self.playback.max_session_entries == 0
            || self.playback.max_concurrent_clips == 0
        {
            return Err(ConfigError::Invalid(
                "playback.clip_max_fragments, playback.max_sessions, playback.max_session_entries and playback.max_concurrent_clips must be at least 1".into(),
            ));
        }
        if self.ingest.live_buffer_bytes == 0
            || self.media.max_reader_queue_bytes == 0
            || self.playback.session_purge_interval.is_zero()
            || self.playback.max_session_lifetime < Duration::from_secs(300)
        {
            return Err(ConfigError::Invalid(
                "ingest.live_buffer_bytes, media.max_reader_queue_bytes and playback.session_purge_interval must be above 0, playback.max_session_lifetime at least 300s".into(),
            ));
        }
        if axum::http::HeaderValue::from_str(&self.playback.cors_allow_origin).is_err() {
            return Err(ConfigError::Invalid(
                "playback.cors_allow_origin must be a valid header value".into(),
            ));
        }
        if self.images.max_page_size == 0 || self.images.min_sampling_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "images.max_page_size and images.min_sampling_interval must be positive".into(),
            ));
        }
        if self.images.default_sampling_interval < self.images.min_sampling_interval {
            return Err(ConfigError::Invalid(
                "images.default_sampling_interval must not be below images.min_sampling_interval"
                    .into(),
            ));
        }
        if let Some(url) = &self.images.webhook_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(
                "images.webhook_url must start with http:// or https://".into(),
            ));
        }
        let n = &self.notifications;
        if n.max_attempts == 0 || n.max_pending == 0 || n.timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "notifications.max_attempts, notifications.max_pending and notifications.timeout must be positive".into(),
            ));
        }
        if n.webhook_secret.as_ref().is_some_and(|s| s.0.len() < 16) {
            return Err(ConfigError::Invalid(
                "notifications.webhook_secret must be at least 16 characters".into(),
            ));
        }
        Ok(())
    }

    /// Directory image generation writes `file://` destinations under.
    pub fn images_local_dir(&self) -> PathBuf {
        self.images
            .local_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("images"))
    }

    /// The base URL clients should use: `public_url`, or `http://<listen>` where the
    /// listen address is the one actually bound.
    pub fn public_base_url(&self, bound: SocketAddr) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None if self.tls.enabled() => format!("https://{bound}"),
            None => format!("http://{bound}"),
        }
    }

    /// Path of the embedded SQLite index.
    pub fn index_path(&self) -> PathBuf {
        self.data_dir.join("index.sqlite3")
    }

    /// Directory of the local object store.
    pub fn local_store_path(&self) -> PathBuf {
        self.store
            .local_path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("objects"))
    }
}

/// Accepts a string, or a number or boolean (as an all-digit environment value arrives),
/// for string settings.
fn string_from_scalar<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        F(f64),
        B(bool),
    }
    Ok(match Scalar::deserialize(d)? {
        Scalar::S(s) => s,
        Scalar::I(i) => i.to_string(),
        Scalar::F(f) => f.to_string(),
        Scalar::B(b) => b.to_string(),
    })
}

/// Environment values are TOML scalars when they parse as one (numbers, booleans),
/// otherwise plain strings.
fn env_value(raw: &str) -> toml::Value {
    let probe = format!("v = {raw}");
    match probe.parse::<toml::Table>() {
        Ok(mut t) => match t.remove("v") {
            Some(
                v @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)),
            ) => v,
            _ => toml::Value::String(raw.to_owned()),
        },
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty settings key")?;
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("settings key {p} is not a table"))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

mod cluster;
pub use cluster::ClusterSettings;

#[cfg(test)]
mod tests;
