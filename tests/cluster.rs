//! Cluster nodes (`docs/design/cluster.md`): three `streamvault serve` processes on one
//! PostgreSQL database and one S3-compatible bucket. GetDataEndpoint sends a stream's
//! producer to one owner and the other node refuses to ingest it; when the owner is
//! `kill -9`ed, or paused (SIGSTOP) past its lease and then continued, mid-upload, the
//! surviving node takes the stream over, `streamvault put` (which re-resolves its endpoint
//! on every reconnection, like the KVS SDKs, and reconnects when acks stop coming) resumes
//! there, every cluster of the camera is stored once, in order, with fragment numbers
//! increasing across owners, and a continued old owner commits nothing more. A PutMedia
//! or live GetMedia that reaches the node that does not own the stream is forwarded to the
//! owner; the forwarded live tail's lag behind the owner's own is measured.
//!
//! The PostgreSQL server comes from `STREAMVAULT_TEST_POSTGRES_URL` and the S3-compatible
//! server (moto) from `STREAMVAULT_TEST_S3_ENDPOINT` (`.ci/run` starts both; each test makes
//! its own database and bucket); without them a test prints `SKIPPED` and passes, except
//! under CI.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::process::{BIN, free_port, resumed_put, signed_call, wait_listening};
use common::{TEST_KEY, sign_with};
use sqlx::{AssertSqlSafe, Connection};

const CAM: &str = "fleet-cam";

/// The test services' addresses, or `None` after a `SKIPPED` line (a panic under CI).
fn services() -> Option<(String, String)> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (
        var("STREAMVAULT_TEST_POSTGRES_URL"),
        var("STREAMVAULT_TEST_S3_ENDPOINT"),
    ) {
        (Some(pg), Some(s3)) => Some((pg, s3)),
        _ => {
            let msg = "STREAMVAULT_TEST_POSTGRES_URL and STREAMVAULT_TEST_S3_ENDPOINT must name a \
                       PostgreSQL and an S3-compatible server (`bash .ci/run` starts both)";
            if common::clients::under_ci() {
                panic!("CI is set, so this is a failure: {msg}");
            }
            eprintln!("SKIPPED: {msg}");
            None
        }
    }
}

/// Cluster nodes on a database and a bucket of their own.
struct Cluster {
    pg_server: String,
    db_url: String,
    s3: String,
    bucket: String,
    tmp: tempfile::TempDir,
    nodes: Vec<Option<tokio::process::Child>>,
    urls: Vec<String>,
}

impl Cluster {
    async fn start(test: &str, n: usize) -> Option<Self> {
        let (pg_server, s3) = services()?;
        let name = format!("sv_{test}_{}", std::process::id());
        let db_url = common::test_database(&pg_server, &name, true).await;
        let bucket = name.replace('_', "-");
        common::test_bucket(&s3, &bucket).await;
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("master.key"), "11".repeat(32)).unwrap();
        std::fs::write(tmp.path().join("token.key"), "22".repeat(32)).unwrap();
        let mut cluster = Self {
            db_url,
            pg_server,
            s3,
            bucket,
            tmp,
            nodes: Vec::new(),
            urls: Vec::new(),
        };
        for i in 0..n {
            let port = free_port();
            cluster.urls.push(format!("http://127.0.0.1:{port}"));
            let node = cluster.start_node(i, port).await;
            cluster.nodes.push(Some(node));
        }
        Some(cluster)
    }

    /// Starts node `i` and waits for its "listening on" line.
    async fn start_node(&self, i: usize, port: u16) -> tokio::process::Child {
        let t = self.tmp.path();
        let mut child = tokio::process::Command::new(BIN)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(t.join(format!("node-{i}")))
            .args([
                "--access-key-id",
                TEST_KEY.0,
                "--secret-access-key",
                TEST_KEY.1,
            ])
            .env("STREAMVAULT_INDEX__BACKEND", "postgres")
            .env("STREAMVAULT_INDEX__POSTGRES__URL", &self.db_url)
            .env("STREAMVAULT_KEYS__DEFAULT_KEY_ID", "shared")
            .env("STREAMVAULT_KEYS__FILES__SHARED", t.join("master.key"))
            .env("STREAMVAULT_KEYS__SESSION_TOKEN_FILE", t.join("token.key"))
            .env("STREAMVAULT_STORE__BACKEND", "s3")
            .env("STREAMVAULT_STORE__S3__BUCKET", &self.bucket)
            .env("STREAMVAULT_STORE__S3__ENDPOINT", &self.s3)
            .env("STREAMVAULT_STORE__S3__ALLOW_HTTP", "true")
            .env("STREAMVAULT_STORE__S3__ACCESS_KEY_ID", "test")
            .env("STREAMVAULT_STORE__S3__SECRET_ACCESS_KEY", "test")
            .env("STREAMVAULT_CLUSTER__NODE_ID", format!("node-{i}"))
            .env("STREAMVAULT_CLUSTER__LEASE_TTL", "3s")
            .env("STREAMVAULT_CLUSTER__LEASE_RENEW", "1s")
            .env("STREAMVAULT_CLUSTER__TAKEOVER_SCAN", "500ms")
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        wait_listening(&mut child, "http").await;
        child
    }

    /// SIGTERM node `i` (it drains and leaves the cluster), waits for it to exit, and
    /// starts it again on the same address and data dir.
    async fn restart(&mut self, i: usize) {
        let mut child = self.nodes[i].take().unwrap();
        // SAFETY: a plain signal to a child process this test started.
        assert_eq!(
            unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) },
            0
        );
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("node drained and exited within 30 s")
            .unwrap();
        assert!(status.success(), "node {i} exited with {status}");
        let port: u16 = self.urls[i].rsplit(':').next().unwrap().parse().unwrap();
        self.nodes[i] = Some(self.start_node(i, port).await);
    }

    fn pid(&self, i: usize) -> i32 {
        self.nodes[i].as_ref().unwrap().id().unwrap() as i32
    }

    /// Creates the camera's stream and returns (owner, other): the node GetDataEndpoint
    /// names for its producer (both nodes agree) and the other one.
    async fn camera(&self) -> (usize, usize) {
        let (s, t) = call(
            &self.urls[0],
            "createStream",
            &format!(r#"{{"StreamName":"{CAM}"}}"#),
        )
        .await;
        assert_eq!(s, 200, "{t}");
        let owner_url = data_endpoint(&self.urls[0], "PUT_MEDIA").await;
        assert_eq!(data_endpoint(&self.urls[1], "PUT_MEDIA").await, owner_url);
        assert_eq!(data_endpoint(&self.urls[1], "GET_MEDIA").await, owner_url);
        let owner = self
            .urls
            .iter()
            .position(|u| *u == owner_url)
            .expect("a node's URL");
        let other = (owner + 1) % self.urls.len();
        // Any node answers the archive APIs itself.
        assert_eq!(
            data_endpoint(&self.urls[other], "LIST_FRAGMENTS").await,
            self.urls[other]
        );
        (owner, other)
    }

    /// Waits (10 s at most from `since`) until the live nodes other than `gone` agree
    /// that one of them ingests the camera; returns when, and which.
    async fn failover_from(&self, gone: usize, since: std::time::Instant) -> (Duration, usize) {
        let live: Vec<usize> = (0..self.urls.len()).filter(|&i| i != gone).collect();
        loop {
            let mut answers = Vec::new();
            for &i in &live {
                answers.push(data_endpoint(&self.urls[i], "PUT_MEDIA").await);
            }
            if answers
                .iter()
                .all(|a| *a == answers[0] && *a != self.urls[gone])
            {
                let to = self.urls.iter().position(|u| *u == answers[0]).unwrap();
                return (since.elapsed(), to);
            }
            assert!(
                since.elapsed() < Duration::from_secs(10),
                "no failover within 10 s: {answers:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(mut self) {
        for n in self.nodes.iter_mut().flatten() {
            let _ = n.start_kill();
            let _ = n.wait().await;
        }
        let name = self
            .db_url
            .rsplit('/')
            .next()
            .unwrap()
            .split('?')
            .next()
            .unwrap()
            .to_owned();
        let mut c = sqlx::PgConnection::connect(&self.pg_server).await.unwrap();
        let _ = sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
        )))
        .execute(&mut c)
        .await;
    }
}

/// One signed KVS JSON call; returns the status and body.
async fn call(endpoint: &str, op: &str, body: &str) -> (u16, String) {
    signed_call(&reqwest::Client::new(), endpoint, op, body).await
}

/// One PutMedia of the whole sample to `endpoint` (signed like the KVS C producer:
/// headers only); returns the status and the response body (the acks).
async fn put_direct(endpoint: &str, stream: &str) -> (u16, String) {
    put_as(endpoint, stream, TEST_KEY, &[]).await
}

/// [`put_direct`] signed with `key`, with `extra` headers (signed too).
async fn put_as(
    endpoint: &str,
    stream: &str,
    key: (&str, &str),
    extra: &[(&str, &str)],
) -> (u16, String) {
    let host = endpoint.split_once("://").unwrap().1.to_owned();
    let mut params = vec![
        ("x-amzn-stream-name", stream),
        ("x-amzn-fragment-timecode-type", "RELATIVE"),
        ("x-amzn-producer-start-timestamp", "1795600000.000"),
    ];
    params.extend_from_slice(extra);
    let sig = sign_with(
        key,
        "POST",
        &host,
        "/putMedia",
        &params,
        streamvault::auth::sigv4::EMPTY_SHA256,
        std::time::SystemTime::now(),
    );
    let mut req = reqwest::Client::new().post(format!("{endpoint}/putMedia"));
    for (k, v) in &params {
        req = req.header(*k, *v);
    }
    for (k, v) in sig {
        req = req.header(k, v);
    }
    let sample = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("media-samples/h264_720p_gop1s.mkv"),
    )
    .unwrap();
    let r = req.body(sample).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn data_endpoint_of(endpoint: &str, stream: &str) -> String {
    endpoint_for(endpoint, stream, "PUT_MEDIA").await
}

async fn data_endpoint(endpoint: &str, api: &str) -> String {
    endpoint_for(endpoint, CAM, api).await
}

/// GetDataEndpoint of `stream` for `api`, asked at `endpoint`.
async fn endpoint_for(endpoint: &str, stream: &str, api: &str) -> String {
    let (s, t) = call(
        endpoint,
        "getDataEndpoint",
        &format!(r#"{{"StreamName":"{stream}","APIName":"{api}"}}"#),
    )
    .await;
    assert_eq!(s, 200, "{t}");
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    v["DataEndpoint"].as_str().unwrap().to_owned()
}

fn spawn_put(endpoint: &str, extra: &[&str]) -> tokio::process::Child {
    let sample =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("media-samples/h264_720p_gop1s.mkv");
    put_camera(endpoint, CAM, &sample, extra)
}

/// `streamvault put --realtime` of `sample` to `stream`, resolving its data endpoint at
/// `endpoint`.
fn put_camera(
    endpoint: &str,
    stream: &str,
    sample: &std::path::Path,
    extra: &[&str],
) -> tokio::process::Child {
    tokio::process::Command::new(BIN)
        .args([
            "put",
            "--endpoint",
            endpoint,
            "--stream",
            stream,
            "--realtime",
            "--start-timestamp",
            "1795600000",
        ])
        .args(extra)
        .arg(sample)
        .env("AWS_ACCESS_KEY_ID", TEST_KEY.0)
        .env("AWS_SECRET_ACCESS_KEY", TEST_KEY.1)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// A fragment number (up to 48 digits): ordered as the number it spells.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Number(String);

impl Ord for Number {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0.len(), &self.0).cmp(&(o.0.len(), &o.0))
    }
}

impl PartialOrd for Number {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// (fragment number, producer timestamp) of every fragment ListFragments shows, in
/// fragment-number order.
async fn list_fragments(endpoint: &str) -> Vec<(Number, i64)> {
    fragments_of(endpoint, CAM).await
}

/// [`list_fragments`] of any stream.
async fn fragments_of(endpoint: &str, stream: &str) -> Vec<(Number, i64)> {
    let (s, t) = call(
        endpoint,
        "listFragments",
        &format!(
            r#"{{"StreamName":"{stream}","MaxResults":1000,"FragmentSelector":{{"FragmentSelectorType":"PRODUCER_TIMESTAMP","TimestampRange":{{"StartTimestamp":1795599000,"EndTimestamp":1795601000}}}}}}"#
        ),
    )
    .await;
    assert_eq!(s, 200, "{t}");
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    let mut out: Vec<(Number, i64)> = v["Fragments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let n = Number(f["FragmentNumber"].as_str().unwrap().to_owned());
            let ts = (f["ProducerTimestamp"].as_f64().unwrap() * 1000.0).round() as i64;
            (n, ts)
        })
        .collect();
    out.sort();
    out
}

/// A live GetMedia (StartSelector NOW) through `endpoint`, read for 12 s: (time since
/// `t0`, bytes so far) at every chunk.
fn live_reader(
    endpoint: &str,
    t0: tokio::time::Instant,
) -> tokio::task::JoinHandle<Vec<(Duration, usize)>> {
    let endpoint = endpoint.to_owned();
    tokio::spawn(async move {
        let body =
            format!(r#"{{"StreamName":"{CAM}","StartSelector":{{"StartSelectorType":"NOW"}}}}"#);
        let host = endpoint.split_once("://").unwrap().1.to_owned();
        let sig = sign_with(
            TEST_KEY,
            "POST",
            &host,
            "/getMedia",
            &[("content-type", "application/json")],
            &common::sha256_hex(body.as_bytes()),
            std::time::SystemTime::now(),
        );
        let mut req = reqwest::Client::new()
            .post(format!("{endpoint}/getMedia"))
            .header("content-type", "application/json");
        for (k, v) in sig {
            req = req.header(k, v);
        }
        let r = req.body(body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let mut stream = r.bytes_stream();
        let mut got = Vec::new();
        let mut n = 0;
        let end = t0 + Duration::from_secs(12);
        while let Ok(Some(Ok(chunk))) =
            tokio::time::timeout_at(end, futures::StreamExt::next(&mut stream)).await
        {
            n += chunk.len();
            got.push((t0.elapsed(), n));
        }
        got
    })
}

/// Every cluster of the 10-s sample once, in fragment-number order (so numbers increase
/// with producer time across owners), nothing of `before` lost, and the whole stream
/// readable through `node`.
async fn stored_once_in_order(node: &str, before: &[(Number, i64)]) {
    let after = list_fragments(node).await;
    let ts: Vec<i64> = after.iter().map(|(_, t)| *t).collect();
    assert_eq!(
        ts,
        (0..10)
            .map(|i| 1_795_600_000_000 + i * 1000)
            .collect::<Vec<_>>(),
        "every cluster stored once, in fragment-number order: {after:?}"
    );
    for f in before {
        assert!(after.contains(f), "{f:?} was lost: {after:?}");
    }
    let body = read_back(node).await;
    assert!(body.len() > 100_000, "{} bytes", body.len());
}

/// The camera's whole stream as GetMediaForFragmentList answers it through `node`.
async fn read_back(node: &str) -> bytes::Bytes {
    let numbers: Vec<String> = list_fragments(node)
        .await
        .iter()
        .map(|(n, _)| format!("\"{}\"", n.0))
        .collect();
    let (s, body) = common::process::signed_call_bytes(
        &reqwest::Client::new(),
        node,
        "getMediaForFragmentList",
        &format!(
            r#"{{"StreamName":"{CAM}","Fragments":[{}]}}"#,
            numbers.join(",")
        ),
    )
    .await;
    assert_eq!(s, 200);
    body
}

/// A node's `/metrics` page.
async fn metrics_of(node: &str) -> String {
    reqwest::get(format!("{node}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_killed_mid_upload_its_camera_moves_and_is_stored_once() {
    let Some(mut cluster) = Cluster::start("kill", 3).await else {
        return;
    };
    let (owner, other) = cluster.camera().await;
    let urls = cluster.urls.clone();
    let third = 3 - owner - other;

    // The producer asks a non-owner (its control endpoint) and is sent to the owner.
    let upload = spawn_put(&urls[other], &[]);
    // kill -9 the owner 4.5 s into the 10 s camera.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let mut dead = cluster.nodes[owner].take().unwrap();
    dead.start_kill().unwrap();
    dead.wait().await.unwrap();
    let killed = std::time::Instant::now();
    let before = list_fragments(&urls[other]).await;
    assert!(
        !before.is_empty(),
        "fragments PERSISTED by the dead owner are served by the survivors"
    );
    // Within 10 s a survivor answers for the stream (both survivors agree which).
    let (failover, to) = cluster.failover_from(owner, killed).await;
    eprintln!("failover: node {to} answered for the stream {failover:?} after the kill");

    resumed_put(upload).await;
    // Every cluster once, in order, through each survivor; and the frames read back
    // through a survivor are the camera's own, bit for bit.
    stored_once_in_order(&urls[other], &before).await;
    stored_once_in_order(&urls[third], &before).await;
    if common::have_tool("ffmpeg") {
        let mkv = read_back(&urls[third]).await;
        let stored = cluster.tmp.path().join("stored.mkv");
        std::fs::write(&stored, &mkv).unwrap();
        let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("media-samples/h264_720p_gop1s.mkv");
        let want = common::framemd5(source.to_str().unwrap());
        assert_eq!(want.len(), 300);
        assert!(
            common::framemd5(stored.to_str().unwrap()) == want,
            "the frames read back differ from the camera's"
        );
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_paused_past_its_lease_commits_nothing_after_it_continues() {
    let Some(cluster) = Cluster::start("pause", 3).await else {
        return;
    };
    let (owner, other) = cluster.camera().await;
    let urls = cluster.urls.clone();
    let upload = spawn_put(&urls[other], &["--stale-after", "2s"]);
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let before = list_fragments(&urls[other]).await;
    assert!(!before.is_empty());
    // SAFETY: plain signals to a child process this test started.
    assert_eq!(unsafe { libc::kill(cluster.pid(owner), libc::SIGSTOP) }, 0);
    let paused = std::time::Instant::now();
    let (failover, _) = cluster.failover_from(owner, paused).await;
    eprintln!("failover: the other node answered for the stream {failover:?} after the pause");
    // Let the producer move and send more, then wake the old owner up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(unsafe { libc::kill(cluster.pid(owner), libc::SIGCONT) }, 0);

    let log = resumed_put(upload).await;
    assert!(
        log.contains("stale"),
        "put noticed the silent connection: {log}"
    );
    stored_once_in_order(&urls[other], &before).await;
    // The woken node knows it lost its lease (whatever it had in flight was fenced), and
    // the nodes agree on one owner (the woken node may be it again, under a new epoch, if
    // the producer's queued connection reached it first).
    let metrics = metrics_of(&urls[owner]).await;
    let lost = metrics
        .lines()
        .find(|l| l.starts_with("streamvault_cluster_leases_lost_total"))
        .unwrap_or_else(|| panic!("no lease loss counted: {metrics}"));
    assert!(!lost.ends_with(" 0"), "{lost}");
    let answers = [
        data_endpoint(&urls[0], "PUT_MEDIA").await,
        data_endpoint(&urls[1], "PUT_MEDIA").await,
        data_endpoint(&urls[2], "PUT_MEDIA").await,
    ];
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    // Nothing it did after waking changed the stream.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stored_once_in_order(&urls[other], &before).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_own_the_stream_forwards_uploads_and_live_reads() {
    let Some(cluster) = Cluster::start("forward", 3).await else {
        return;
    };
    let (owner, other) = cluster.camera().await;
    let urls = cluster.urls.clone();
    // Live readers through the owner and through the other node, then the camera.
    let t0 = tokio::time::Instant::now();
    let readers = [live_reader(&urls[owner], t0), live_reader(&urls[other], t0)];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let upload = spawn_put(&urls[owner], &[]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // An uploader holding a stale endpoint sends the same camera straight to the
    // non-owner: forwarded to the owner (not refused) and acknowledged end to end.
    let (s, acks) = put_direct(&urls[other], CAM).await;
    assert_eq!(s, 200, "{acks}");
    assert_eq!(acks.matches("\"PERSISTED\"").count(), 10, "{acks}");
    let metrics = metrics_of(&urls[other]).await;
    assert!(
        metrics.contains("streamvault_cluster_forwarded_total{path=\"/putMedia\"}"),
        "{metrics}"
    );
    let forwarded = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("streamvault_cluster_forwarded_total{path=\"/putMedia\"}"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
    };
    let before = forwarded(&metrics);
    // Getting around it: a wrong secret is refused by the receiving node itself (nothing
    // forwarded), and a client's own hop marker does not make the non-owner ingest.
    let (s, t) = put_as(&urls[other], CAM, (TEST_KEY.0, "not-the-secret"), &[]).await;
    assert_eq!(s, 403, "{t}");
    let (s, t) = put_as(
        &urls[other],
        CAM,
        TEST_KEY,
        &[("x-streamvault-forwarded-by", "node-x")],
    )
    .await;
    assert_eq!(s, 400, "{t}");
    assert!(t.contains(&urls[owner]), "{t}");
    let metrics = metrics_of(&urls[other]).await;
    assert_eq!(
        forwarded(&metrics),
        before,
        "a refused request was forwarded"
    );
    // The forwarded upload did not move the stream, and it is stored once: both
    // uploaders sent the same 10 clusters.
    assert_eq!(data_endpoint(&urls[other], "PUT_MEDIA").await, urls[owner]);
    let _ = upload.wait_with_output().await;
    stored_once_in_order(&urls[other], &[]).await;

    // The forwarded live tail keeps pace with the owner's own: the same bytes arrive
    // within a fraction of a second of each other.
    let [direct, forwarded] = readers;
    let (direct, forwarded) = (direct.await.unwrap(), forwarded.await.unwrap());
    let total = |v: &[(Duration, usize)]| v.last().map_or(0, |l| l.1);
    let (a, b) = (total(&direct), total(&forwarded));
    assert!(
        a > 500_000 && b > 500_000,
        "live bytes: direct {a}, forwarded {b}"
    );
    let when = |v: &[(Duration, usize)], n: usize| v.iter().find(|c| c.1 >= n).map(|c| c.0);
    let lags: Vec<f64> = (1..=a.min(b) / 100_000)
        .filter_map(|k| {
            let n = k * 100_000;
            Some((when(&forwarded, n)?.as_secs_f64() - when(&direct, n)?.as_secs_f64()) * 1e3)
        })
        .collect();
    let max = lags.iter().copied().fold(f64::MIN, f64::max);
    let mean = lags.iter().sum::<f64>() / lags.len() as f64;
    eprintln!(
        "live GetMedia through the non-owner vs the owner: {} byte marks, lag mean {mean:.1} ms, max {max:.1} ms",
        lags.len()
    );
    assert!(max < 1000.0, "the forwarded tail lags by {max:.0} ms");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_three_nodes_under_100_cameras_loses_nothing() {
    const CAMERAS: usize = 100;
    if !common::have_tool("ffmpeg") {
        return;
    }
    let Some(mut cluster) = Cluster::start("rolling", 3).await else {
        return;
    };
    // A field-like camera: H.264 High with B-frames, 1-s GOP, 30 s, made here.
    let sample = cluster.tmp.path().join("cam30.mkv");
    let ok = std::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg("testsrc2=size=320x240:rate=15")
        .args([
            "-t",
            "30",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-profile:v",
            "high",
        ])
        .args([
            "-pix_fmt",
            "yuv420p",
            "-bf",
            "2",
            "-g",
            "15",
            "-keyint_min",
            "15",
        ])
        .args([
            "-sc_threshold",
            "0",
            "-b:v",
            "200k",
            "-threads",
            "1",
            "-f",
            "matroska",
        ])
        .args(["-live", "1", "-cluster_time_limit", "10000"])
        .arg(&sample)
        .status()
        .unwrap();
    assert!(ok.success());
    let urls = cluster.urls.clone();
    let names: Vec<String> = (0..CAMERAS).map(|i| format!("fleet-{i:03}")).collect();
    for n in &names {
        let (s, t) = call(
            &urls[0],
            "createStream",
            &format!(r#"{{"StreamName":"{n}"}}"#),
        )
        .await;
        assert_eq!(s, 200, "{t}");
    }
    // Each camera asks one of the nodes for its data endpoint, as a fleet behind a
    // load balancer would.
    let uploads: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| put_camera(&urls[i % 3], n, &sample, &["--stale-after", "5s"]))
        .collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    for i in 0..3 {
        let t = std::time::Instant::now();
        cluster.restart(i).await;
        eprintln!("node {i} restarted in {:?}", t.elapsed());
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let mut interrupted = 0;
    for (n, u) in names.iter().zip(uploads) {
        let out = tokio::time::timeout(Duration::from_secs(120), u.wait_with_output())
            .await
            .expect("put finished")
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{n}: {log}");
        interrupted += usize::from(log.contains("reconnecting"));
    }
    // Every node went down once, so (nearly) every camera lost its connection at least once.
    eprintln!("{interrupted} of {CAMERAS} cameras reconnected during the rolling restart");
    assert!(
        interrupted >= CAMERAS * 9 / 10,
        "{interrupted} cameras interrupted"
    );
    // Every camera: all 30 clusters stored once, in fragment-number order, read through
    // any node.
    let want: Vec<i64> = (0..30).map(|i| 1_795_600_000_000 + i * 1000).collect();
    let mut disagree = 0;
    for (i, n) in names.iter().enumerate() {
        let got: Vec<i64> = fragments_of(&urls[(i + 1) % 3], n)
            .await
            .iter()
            .map(|f| f.1)
            .collect();
        assert_eq!(got, want, "{n}: every cluster stored once, in order");
        disagree +=
            usize::from(data_endpoint_of(&urls[0], n).await != data_endpoint_of(&urls[1], n).await);
    }
    assert_eq!(disagree, 0, "the nodes disagree on an owner");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_objects_cannot_be_overwritten_on_the_s3_server() {
    let Some((_, s3)) = services() else {
        return;
    };
    let bucket = format!("sv-create-{}", std::process::id());
    common::test_bucket(&s3, &bucket).await;
    let mut settings = streamvault::config::Settings::default();
    settings.store.backend = streamvault::config::StoreBackend::S3;
    settings.store.s3.bucket = bucket;
    settings.store.s3.endpoint = Some(s3);
    settings.store.s3.allow_http = true;
    settings.store.s3.access_key_id = Some("test".into());
    settings.store.s3.secret_access_key = Some("test".into());
    let objects = streamvault::store::object_store_from_settings(&settings).unwrap();
    // The CI server refuses a second create of one key (If-None-Match: *), so the
    // segment writer uses it: no two writers (a fenced-off node and its successor) can
    // ever replace each other's segment objects.
    assert!(streamvault::store::segment::probe_conditional_create(objects.as_ref()).await);
}
