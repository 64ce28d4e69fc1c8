//! Shared fixture for end-to-end tests: the real server on 127.0.0.1:0 with a temporary
//! data dir, and AWS SDK clients pointed at it.
#![allow(dead_code)]

pub mod clients;
pub mod fragment_tags;
pub mod process;
pub mod put;
pub mod webhook;

#[allow(unused_imports)]
pub use put::*;

use std::net::SocketAddr;
use std::path::PathBuf;

use streamvault::config::Settings;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The root key every test server is started with (auth is on, as by default).
pub const TEST_KEY: (&str, &str) = ("AKIDSTREAMVAULTTEST", "testsecretkeytestsecretkey");

/// SigV4 headers (authorization, x-amz-date) for a request, signed with `key` the way
/// the KVS C producer signs: every header sent is signed, the payload hash is given.
pub fn sign_with(
    key: (&str, &str),
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    payload_hash: &str,
    time: std::time::SystemTime,
) -> Vec<(String, String)> {
    streamvault::auth::sigv4::sign_headers(
        method,
        host,
        path,
        headers,
        payload_hash,
        &(key.0.to_owned(), key.1.to_owned()),
        "us-east-1",
        time,
    )
    .unwrap()
}

/// SHA-256 hex of a body.
pub fn sha256_hex(b: &[u8]) -> String {
    streamvault::auth::sigv4::payload_hash(b)
}

/// A presigned PutMedia URL carrying its parameters in the query string.
pub fn presigned_put_url(
    addr: SocketAddr,
    params: &[(&str, &str)],
    expires: std::time::Duration,
) -> String {
    let q: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    streamvault::auth::sigv4::presign(
        &format!("http://{addr}"),
        "/putMedia",
        &q,
        &(TEST_KEY.0.to_owned(), TEST_KEY.1.to_owned()),
        "us-east-1",
        std::time::SystemTime::now(),
        expires,
    )
    .unwrap()
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts a server with default settings on a fresh data dir.
    pub async fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut s = Self::start_in(dir, |_| {}).await;
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on a fresh data dir, letting the test adjust settings.
    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut s = Self::start_in(dir, tweak).await;
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on `data_dir`, letting the test adjust settings.
    pub async fn start_in(data_dir: PathBuf, tweak: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = settings_for(&data_dir).await;
        settings.listen = "127.0.0.1:0".parse().unwrap();
        settings.access_key_id = Some(TEST_KEY.0.to_owned());
        settings.secret_access_key = Some(streamvault::config::Secret(TEST_KEY.1.to_owned()));
        tweak(&mut settings);
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(streamvault::server::run(listener, settings, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            data_dir,
            _tmp: None,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Starts a server with default settings on a fresh data dir and an injected clock.
    pub async fn start_with_clock(clock: streamvault::clock::SharedClock) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let mut settings = settings_for(tmp.path()).await;
        settings.listen = "127.0.0.1:0".parse().unwrap();
        // Auth stays on: the tests that use this move the clock by minutes, well inside
        // the SigV4 skew window.
        settings.access_key_id = Some(TEST_KEY.0.to_owned());
        settings.secret_access_key = Some(streamvault::config::Secret(TEST_KEY.1.to_owned()));
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let server = streamvault::server::Server::builder(settings)
            .with_clock(clock)
            .build()
            .await
            .unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            data_dir: tmp.path().to_owned(),
            _tmp: Some(tmp),
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful shutdown; returns the server's result.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.take().unwrap().send(()).ok();
        self.task.take().unwrap().await.unwrap()
    }

    /// Stops the server but keeps the data dir alive (for restart tests).
    pub async fn stop_keep_dir(mut self) -> Option<tempfile::TempDir> {
        self.stop.take().unwrap().send(()).ok();
        self.task.take().unwrap().await.unwrap().unwrap();
        self._tmp.take()
    }

    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(self.url())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_kinesisvideo::config::Credentials::new(
                TEST_KEY.0, TEST_KEY.1, None, None, "test",
            ))
            .load()
            .await
    }

    pub async fn control(&self) -> aws_sdk_kinesisvideo::Client {
        aws_sdk_kinesisvideo::Client::new(&self.sdk_config().await)
    }

    /// CreateStream with a retention (hours), through the SDK.
    pub async fn create_stream(&self, name: &str, retention_hours: i32) {
        self.control()
            .await
            .create_stream()
            .stream_name(name)
            .data_retention_in_hours(retention_hours)
            .send()
            .await
            .unwrap();
    }

    /// DeleteStream by ARN (looked up with DescribeStream), through the SDK.
    pub async fn delete_stream(&self, name: &str) {
        let c = self.control().await;
        let d = c.describe_stream().stream_name(name).send().await.unwrap();
        let arn = d.stream_info().unwrap().stream_arn().unwrap();
        c.delete_stream().stream_arn(arn).send().await.unwrap();
    }

    /// A raw JSON POST, for cases the SDK cannot express.
    pub async fn post_raw(&self, path: &str, body: &str) -> (u16, Vec<(String, String)>, String) {
        raw_http(self.addr, "POST", path, body).await
    }
}

/// A key allowed every action (`kinesisvideo:*`) on the streams matching `streams` only:
/// the attacker of the authorization tests.
pub fn limited_key(key: (&str, &str), streams: &[&str]) -> streamvault::config::KeySpec {
    streamvault::config::KeySpec {
        access_key_id: key.0.into(),
        secret_access_key: streamvault::config::Secret(key.1.into()),
        actions: vec!["kinesisvideo:*".into()],
        streams: streams.iter().map(|s| s.to_string()).collect(),
    }
}

/// Minimal HTTP/1.1 request over a TCP socket (no client crate needed).
pub async fn raw_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    raw_http_signed(addr, method, path, body, Some(TEST_KEY)).await
}

/// Like [`raw_http`], signed with `key` (or unsigned with `None`).
pub async fn raw_http_signed(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    key: Option<(&str, &str)>,
) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let host = addr.to_string();
    let len = body.len().to_string();
    let base = [
        ("content-type", "application/json"),
        ("content-length", len.as_str()),
    ];
    let mut extra = String::new();
    if let Some(k) = key {
        for (n, v) in sign_with(
            k,
            method,
            &host,
            path,
            &base,
            &sha256_hex(body.as_bytes()),
            std::time::SystemTime::now(),
        ) {
            extra.push_str(&format!("{n}: {v}\r\n"));
        }
    }
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect();
    let body = if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, headers, body)
}

/// Sends raw request bytes and returns (status, head+body text).
pub async fn send_raw(addr: std::net::SocketAddr, raw: String, body: &[u8]) -> (u16, String) {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    // A rejected request may be closed before its body is read.
    let _ = s.write_all(body).await;
    // Read the whole response (a streamed ack body ends with the last chunk), so the
    // connection is not closed with data unread.
    let mut all = Vec::new();
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&all);
        let final_head = text
            .split("\r\n\r\n")
            .any(|h| h.starts_with("HTTP/1.1 ") && !h.starts_with("HTTP/1.1 100"));
        let streamed_done = text.ends_with("0\r\n\r\n");
        let plain_done = final_head && !text.contains("HTTP/1.1 200") && text.contains("}");
        let media_started = final_head && text.contains("video/webm");
        if streamed_done || plain_done || media_started {
            break;
        }
    }
    let text = String::from_utf8_lossy(&all).to_string();
    let status = text
        .split("\r\n\r\n")
        .filter(|h| h.starts_with("HTTP/1.1 ") && !h.starts_with("HTTP/1.1 100"))
        .find_map(|h| h.split(' ').nth(1).and_then(|x| x.parse().ok()))
        .unwrap_or(0);
    (status, text)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

pub fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Read access to a (running or stopped) server's data dir (and, under the cluster
/// configuration, its database and bucket).
pub struct DataDir {
    pub index: std::sync::Arc<dyn streamvault::index::Index>,
    pub store: streamvault::store::FragmentStore,
}

impl DataDir {
    pub async fn open(dir: &std::path::Path) -> Self {
        use std::sync::Arc;
        let settings = settings_for(dir).await;
        let key = dir
            .join("keys")
            .join(format!("{}.key", settings.keys.default_key_id));
        let (ring, _) = streamvault::store::Keyring::load(
            &settings.keys.default_key_id,
            &key,
            &settings.keys.files,
        )
        .unwrap();
        let objects = streamvault::store::object_store_from_settings(&settings).unwrap();
        Self {
            index: streamvault::index::open_read_only(&settings).await.unwrap(),
            store: streamvault::store::FragmentStore::new(objects, Arc::new(ring)),
        }
    }

    /// How many segment objects the store holds.
    pub async fn segment_count(&self) -> usize {
        self.store.list_segments().await.unwrap().len()
    }

    /// Waits (up to 10 s) until the store holds `n` segment objects: the open segment
    /// of a class is closed (and, without rows, deleted) by the committer within about a
    /// second of reaching `store.segment_max_age` on the server clock.
    pub async fn wait_segments(&self, n: usize) {
        let t0 = std::time::Instant::now();
        loop {
            let have = self.segment_count().await;
            if have == n {
                return;
            }
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "{have} segments, want {n}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Every fragment of a stream, in order, with its decrypted bytes.
    pub async fn fragments(
        &self,
        stream: &str,
    ) -> Vec<(streamvault::index::FragmentRecord, bytes::Bytes)> {
        let name = streamvault::model::StreamName::parse(stream).unwrap();
        let s = self
            .index
            .get_stream(&name)
            .await
            .unwrap()
            .expect("stream exists");
        let key = self
            .store
            .keyring()
            .unwrap_data_key(&s.kms_key_id, &s.stream_id, &s.wrapped_key)
            .unwrap();
        let rows = self
            .index
            .fragments_after(&s.stream_id, None, 1_000_000)
            .await
            .unwrap();
        let mut out = Vec::new();
        for r in rows {
            let b = self.store.get_fragment(&key, &r).await.unwrap();
            out.push((r, b));
        }
        out
    }
}

/// `STREAMVAULT_TEST_CLUSTER` set: every [`TestServer`] (and [`DataDir`]) runs as a cluster
/// node on PostgreSQL (`STREAMVAULT_TEST_POSTGRES_URL`) and the S3-compatible server
/// (`STREAMVAULT_TEST_S3_ENDPOINT`), with a database, a bucket and shared key files of its
/// data dir's own (the same dir gets the same ones back, so restart tests work). `.ci/run`
/// runs the end-to-end suites a second time this way.
pub fn cluster_config() -> Option<(String, String)> {
    std::env::var_os("STREAMVAULT_TEST_CLUSTER").filter(|v| !v.is_empty())?;
    let var = |n: &str| {
        std::env::var(n)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| panic!("STREAMVAULT_TEST_CLUSTER is set but {n} is not"))
    };
    Some((
        var("STREAMVAULT_TEST_POSTGRES_URL"),
        var("STREAMVAULT_TEST_S3_ENDPOINT"),
    ))
}

/// Creates database `name` on the PostgreSQL server at `server` (dropping an earlier one
/// first when `fresh`, else keeping one that exists) and returns its URL.
pub async fn test_database(server: &str, name: &str, fresh: bool) -> String {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(server).await.unwrap();
    if fresh {
        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
            .execute(&mut c)
            .await
            .unwrap();
    }
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut c)
        .await
        .unwrap();
    if exists.is_none() {
        let create = format!("CREATE DATABASE \"{name}\"");
        sqlx::raw_sql(sqlx::AssertSqlSafe(create))
            .execute(&mut c)
            .await
            .unwrap();
    }
    let _ = c.close().await;
    let (base, query) = match server.split_once('?') {
        Some((b, q)) => (b.to_owned(), format!("?{q}")),
        None => (server.to_owned(), String::new()),
    };
    let base = base
        .rsplit_once('/')
        .map_or(base.clone(), |(b, _)| b.to_owned());
    format!("{base}/{name}{query}")
}

/// Creates `bucket` on the S3-compatible server at `endpoint` (one that exists is fine).
pub async fn test_bucket(endpoint: &str, bucket: &str) {
    let r = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success() || r.status() == 409,
        "creating bucket {bucket}: {}",
        r.status()
    );
}

/// Default settings for a test server on `dir`: the embedded defaults, or under
/// [`cluster_config`] a cluster node's.
pub async fn settings_for(dir: &std::path::Path) -> Settings {
    use streamvault::config::{IndexBackend, Secret, StoreBackend};
    let mut s = Settings {
        data_dir: dir.to_owned(),
        ..Settings::default()
    };
    let Some((pg, s3)) = cluster_config() else {
        return s;
    };
    let tag = blake3::hash(dir.as_os_str().as_encoded_bytes()).to_hex()[..16].to_string();
    let db_url = test_database(&pg, &format!("svc_{tag}"), false).await;
    let bucket = format!("svc-{tag}");
    test_bucket(&s3, &bucket).await;
    let keys = dir.join("cluster-keys");
    std::fs::create_dir_all(&keys).unwrap();
    for (f, byte) in [("master.key", "3c"), ("token.key", "5a")] {
        if !keys.join(f).exists() {
            std::fs::write(keys.join(f), byte.repeat(32)).unwrap();
        }
    }
    s.index.backend = IndexBackend::Postgres;
    s.index.postgres.url = Some(Secret(db_url));
    s.store.backend = StoreBackend::S3;
    s.store.s3.bucket = bucket;
    s.store.s3.endpoint = Some(s3);
    s.store.s3.allow_http = true;
    s.store.s3.access_key_id = Some("test".into());
    s.store.s3.secret_access_key = Some("test".into());
    s.keys
        .files
        .insert(s.keys.default_key_id.clone(), keys.join("master.key"));
    s.keys.session_token_file = Some(keys.join("token.key"));
    s.cluster.node_id = Some(format!("node-{tag}"));
    s
}

/// ffmpeg's `framemd5` of the first video stream of `input` (file or URL): one hash per
/// decoded frame, in output order (timestamps are not compared: they move to the
/// producer clock).
pub fn framemd5(input: &str) -> Vec<String> {
    let o = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i", input])
        .args("-map 0:v:0 -fps_mode passthrough -f framemd5 -".split_whitespace())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "framemd5 of {input}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit(',').next().map(|h| h.trim().to_owned()))
        .collect()
}

pub fn shared_media(rel: &str) -> Option<Vec<u8>> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/media")
        .join(rel);
    match std::fs::read(&p) {
        Ok(b) => Some(b),
        Err(_) => {
            eprintln!("SKIP: {} not found", p.display());
            None
        }
    }
}

pub fn sample(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("media-samples")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Whether a command-line tool is available; when not, prints why the test skips.
/// Under CI the tools are installed by .ci/run, so absence there is a failure.
pub fn have_tool(name: &str) -> bool {
    let ok = std::process::Command::new(name)
        .arg(if name == "gst-launch-1.0" {
            "--version"
        } else {
            "-version"
        })
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("{name} is required in CI (.ci/run installs it)");
        }
        eprintln!("SKIP: {name} not installed");
    }
    ok
}

/// PSNR (dB) of two equally sized 8-bit pictures; 99 when identical, 0 when the sizes differ.
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    if a.len() != b.len() {
        return 0.0;
    }
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| {
            let d = f64::from(*x) - f64::from(*y);
            d * d
        })
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        99.0
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// (number, type: 1 video, 2 audio) of every track of an MKV byte string.
pub fn tracks_of(bytes: &[u8]) -> Vec<(u64, u64)> {
    use streamvault::mkv::{self, Event, ids};
    let mut r = mkv::Reader::new(mkv::Limits::default());
    r.push(bytes);
    while let Ok(Some(ev)) = r.next_event() {
        if let Event::TopLevel {
            id: ids::TRACKS,
            raw,
            ..
        } = ev
        {
            return mkv::parse_tracks(&raw)
                .unwrap()
                .iter()
                .map(|t| (t.number, t.track_type))
                .collect();
        }
    }
    Vec::new()
}

/// (track, absolute timecode, keyframe, frame bytes) of every block of an MKV byte
/// string (a whole file, or one bare stored cluster).
pub type FrameKey = (u64, i64, bool, Vec<u8>);

pub fn frames_of(bytes: &[u8]) -> Vec<FrameKey> {
    use streamvault::mkv::{self, Event, writer};
    let mut r = mkv::Reader::new(mkv::Limits::default());
    if !bytes.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        let mut h = Vec::new();
        writer::write_ebml_header(&mut h, "matroska");
        writer::segment_header_unknown(&mut h);
        r.push(&h);
    }
    r.push(bytes);
    let mut tc = 0i64;
    let mut out = Vec::new();
    let mut on = |ev: Event, tc: &mut i64| match ev {
        Event::ClusterTimecode { value, .. } => *tc = value as i64,
        Event::Block(b) => out.push((
            b.track,
            *tc + i64::from(b.timecode),
            b.keyframe,
            b.frame().to_vec(),
        )),
        _ => {}
    };
    while let Ok(Some(ev)) = r.next_event() {
        on(ev, &mut tc);
    }
    while let Ok(Some(ev)) = r.finish() {
        on(ev, &mut tc);
    }
    out
}

/// Clusters of an MKV byte string: (cluster timecode, exact cluster bytes).
pub fn clusters_of(bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
    use streamvault::mkv::{self, Event};
    let mut r = mkv::Reader::new(mkv::Limits::default());
    r.push(bytes);
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut cur: Option<(u64, Vec<u8>)> = None;
    let on = |ev: Event, cur: &mut Option<(u64, Vec<u8>)>, out: &mut Vec<(u64, Vec<u8>)>| match ev {
        Event::ClusterStart { raw_header, .. } => *cur = Some((0, raw_header.to_vec())),
        Event::ClusterTimecode { raw, value, .. } => {
            if let Some(c) = cur.as_mut() {
                c.0 = value;
                c.1.extend_from_slice(&raw);
            }
        }
        Event::Block(b) => {
            if let Some(c) = cur.as_mut() {
                c.1.extend_from_slice(&b.raw);
            }
        }
        Event::ClusterChild { raw, .. } => {
            if let Some(c) = cur.as_mut() {
                c.1.extend_from_slice(&raw);
            }
        }
        Event::ClusterEnd { .. } => {
            if let Some(c) = cur.take() {
                out.push(c);
            }
        }
        _ => {}
    };
    while let Ok(Some(ev)) = r.next_event() {
        on(ev, &mut cur, &mut out);
    }
    while let Ok(Some(ev)) = r.finish() {
        on(ev, &mut cur, &mut out);
    }
    out
}

impl TestServer {
    pub async fn media(&self) -> aws_sdk_kinesisvideomedia::Client {
        let conf = aws_sdk_kinesisvideomedia::config::Builder::from(&self.sdk_config().await)
            .stalled_stream_protection(
                aws_sdk_kinesisvideomedia::config::StalledStreamProtectionConfig::disabled(),
            )
            .build();
        aws_sdk_kinesisvideomedia::Client::from_conf(conf)
    }

    pub async fn archived(&self) -> aws_sdk_kinesisvideoarchivedmedia::Client {
        aws_sdk_kinesisvideoarchivedmedia::Client::new(&self.sdk_config().await)
    }
}

/// Incremental parse of a GetMedia response: chunks with their tags and frames.
#[derive(Debug, Default, Clone)]
pub struct Chunk {
    /// Top-level element kinds in order: "EBML", "Segment", "Info", "Tracks", "Tags", "Cluster", …
    pub layout: Vec<String>,
    /// (tag name, value) in order.
    pub tags: Vec<(String, String)>,
    pub frames: Vec<FrameKey>,
}

impl Chunk {
    pub fn tag(&self, name: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
pub struct ChunkParser {
    reader: streamvault::mkv::Reader,
    tc: i64,
    pub chunks: Vec<Chunk>,
}

impl Default for ChunkParser {
    fn default() -> Self {
        Self {
            reader: streamvault::mkv::Reader::new(streamvault::mkv::Limits::default()),
            tc: 0,
            chunks: Vec::new(),
        }
    }
}

impl ChunkParser {
    pub fn push(&mut self, b: &[u8]) {
        self.reader.push(b);
        while let Ok(Some(ev)) = self.reader.next_event() {
            self.on(ev);
        }
    }

    pub fn finish(&mut self) {
        while let Ok(Some(ev)) = self.reader.finish() {
            self.on(ev);
        }
    }

    fn on(&mut self, ev: streamvault::mkv::Event) {
        use streamvault::mkv::{self, Event, ids};
        match ev {
            Event::EbmlHeader { .. } => {
                self.chunks.push(Chunk::default());
                self.layout("EBML");
            }
            Event::SegmentStart { .. } => self.layout("Segment"),
            Event::TopLevel { id, raw, .. } => {
                let name = match id {
                    ids::INFO => "Info",
                    ids::TRACKS => "Tracks",
                    ids::TAGS => "Tags",
                    ids::SEEK_HEAD => "SeekHead",
                    _ => "Other",
                };
                self.layout(name);
                if id == ids::TAGS {
                    let tags = mkv::parse_tags(&raw).unwrap();
                    if let Some(c) = self.chunks.last_mut() {
                        c.tags.extend(
                            tags.into_iter()
                                .map(|t| (t.name.clone(), t.as_str().unwrap_or("").to_owned())),
                        );
                    }
                }
            }
            Event::Skipped { .. } => {}
            Event::ClusterStart { .. } => self.layout("Cluster"),
            Event::ClusterTimecode { value, .. } => self.tc = value as i64,
            Event::Block(b) => {
                let tc = self.tc;
                if let Some(c) = self.chunks.last_mut() {
                    c.frames.push((
                        b.track,
                        tc + i64::from(b.timecode),
                        b.keyframe,
                        b.frame().to_vec(),
                    ));
                }
            }
            _ => {}
        }
    }

    fn layout(&mut self, s: &str) {
        if let Some(c) = self.chunks.last_mut() {
            c.layout.push(s.to_owned());
        }
    }

    /// Chunks whose trailing CONTINUATION_TOKEN arrived (complete GetMedia chunks).
    pub fn complete(&self) -> usize {
        self.chunks
            .iter()
            .filter(|c| c.tag("AWS_KINESISVIDEO_CONTINUATION_TOKEN").is_some())
            .count()
    }
}

/// Reads a GetMedia payload until `n` complete chunks arrived (or `limit` passes).
pub async fn read_chunks(
    payload: &mut aws_sdk_kinesisvideomedia::primitives::ByteStream,
    n: usize,
    limit: std::time::Duration,
) -> (ChunkParser, Vec<u8>) {
    let mut p = ChunkParser::default();
    let mut raw = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while p.complete() < n {
        match tokio::time::timeout_at(deadline, payload.next()).await {
            Ok(Some(Ok(b))) => {
                raw.extend_from_slice(&b);
                p.push(&b);
            }
            _ => break,
        }
    }
    (p, raw)
}

/// Handles to a built server's background tasks (see `TestServer::start_built`).
#[derive(Clone)]
pub struct Handles {
    pub gc: streamvault::gc::Trigger,
    pub retention: streamvault::gc::Trigger,
}

impl Handles {
    /// Runs one retention pass now and waits for it.
    pub async fn retention_pass(&self) {
        tokio::time::timeout(std::time::Duration::from_secs(30), self.retention.run_now())
            .await
            .expect("retention pass within 30 s");
    }

    /// Runs one garbage sweep now and waits for it.
    pub async fn sweep(&self) {
        tokio::time::timeout(std::time::Duration::from_secs(30), self.gc.run_now())
            .await
            .expect("garbage sweep within 30 s");
    }
}

impl TestServer {
    /// Starts a server on `data_dir` built with injected components (`build` adds a
    /// clock, an object store, ...), returning handles to its background tasks.
    pub async fn start_built(
        data_dir: PathBuf,
        tweak: impl FnOnce(&mut Settings),
        build: impl FnOnce(streamvault::server::ServerBuilder) -> streamvault::server::ServerBuilder,
    ) -> (Self, Handles) {
        let mut settings = settings_for(&data_dir).await;
        settings.listen = "127.0.0.1:0".parse().unwrap();
        // Servers built with injected components run on simulated clocks hours away from
        // real time, which the SigV4 skew check rightly refuses; these tests are about
        // durability, so auth is off (clients still sign, which is harmless).
        settings.auth.enabled = false;
        tweak(&mut settings);
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let server = build(streamvault::server::Server::builder(settings))
            .build()
            .await
            .unwrap();
        let handles = Handles {
            gc: server.gc_trigger(),
            retention: server.retention_trigger(),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async {
            let _ = rx.await;
        }));
        (
            Self {
                addr,
                data_dir,
                _tmp: None,
                stop: Some(tx),
                task: Some(task),
            },
            handles,
        )
    }
}

/// A local object store over `<data_dir>/objects` (where `DataDir` and `check` look),
/// for wrapping in a `FaultyStore`.
pub fn local_objects(data_dir: &std::path::Path) -> std::sync::Arc<dyn object_store::ObjectStore> {
    let dir = data_dir.join("objects");
    std::fs::create_dir_all(&dir).unwrap();
    std::sync::Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(&dir)
            .unwrap()
            .with_fsync(true)
            .with_automatic_cleanup(true),
    )
}

/// A sample file split into its header (everything before the first cluster) and its
/// clusters (exact bytes), so tests can upload single fragments.
pub fn split_sample(bytes: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let clusters: Vec<Vec<u8>> = clusters_of(bytes).into_iter().map(|(_, c)| c).collect();
    let first = &clusters[0];
    let at = bytes
        .windows(first.len().min(64))
        .position(|w| w == &first[..first.len().min(64)])
        .expect("first cluster in file");
    (bytes[..at].to_vec(), clusters)
}
