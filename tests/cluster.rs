//! Two `streamvault serve` processes as cluster nodes on one PostgreSQL database
//! (`docs/design/cluster.md`): GetDataEndpoint sends a stream's producer to one owner,
//! the other node refuses to ingest it, and when the owner is `kill -9`ed mid-upload the
//! surviving node takes the stream over; `streamvault put` (which re-resolves its
//! endpoint on every reconnection, like the KVS SDKs) resumes there, and every cluster of
//! the camera is stored once, in order, with fragment numbers increasing across owners.
//!
//! The nodes share one local store directory here (the S3-compatible backend comes with
//! the CI server for it). The PostgreSQL server comes from `STREAMVAULT_TEST_POSTGRES_URL`
//! (`.ci/run` starts one); without it the test prints `SKIPPED` and passes, except under CI.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::process::{BIN, free_port, signed_call, wait_listening};
use common::{TEST_KEY, sha256_hex, sign_with};
use sqlx::{AssertSqlSafe, Connection};

const URL_VAR: &str = "STREAMVAULT_TEST_POSTGRES_URL";
const CAM: &str = "fleet-cam";

/// A database of this test's own on the test server, dropped at the end.
async fn test_database() -> Option<(String, String)> {
    let server = match std::env::var(URL_VAR) {
        Ok(u) if !u.is_empty() => u,
        _ => {
            let msg = format!("{URL_VAR} is not set (`bash .ci/run` starts a PostgreSQL)");
            if common::clients::under_ci() {
                panic!("CI is set, so this is a failure: {msg}");
            }
            eprintln!("SKIPPED: {msg}");
            return None;
        }
    };
    let name = format!("sv_cluster_{}", std::process::id());
    let mut c = sqlx::PgConnection::connect(&server).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\"")))
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut c)
        .await
        .unwrap();
    let (base, query) = match server.split_once('?') {
        Some((b, q)) => (b.to_owned(), format!("?{q}")),
        None => (server.clone(), String::new()),
    };
    let base = base
        .rsplit_once('/')
        .map_or(base.clone(), |(b, _)| b.to_owned());
    Some((server, format!("{base}/{name}{query}")))
}

async fn drop_database(server: &str, db_url: &str) {
    let name = db_url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap();
    let mut c = sqlx::PgConnection::connect(server).await.unwrap();
    let _ = sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut c)
    .await;
}

struct Shared {
    db_url: String,
    master_key: std::path::PathBuf,
    token_key: std::path::PathBuf,
    store: std::path::PathBuf,
}

/// Starts one node and waits for its "listening on" line.
async fn start_node(
    shared: &Shared,
    node: &str,
    port: u16,
    data: &std::path::Path,
) -> tokio::process::Child {
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data)
        .args([
            "--access-key-id",
            TEST_KEY.0,
            "--secret-access-key",
            TEST_KEY.1,
        ])
        .env("STREAMVAULT_INDEX__BACKEND", "postgres")
        .env("STREAMVAULT_INDEX__POSTGRES__URL", &shared.db_url)
        .env("STREAMVAULT_KEYS__DEFAULT_KEY_ID", "shared")
        .env("STREAMVAULT_KEYS__FILES__SHARED", &shared.master_key)
        .env("STREAMVAULT_KEYS__SESSION_TOKEN_FILE", &shared.token_key)
        .env("STREAMVAULT_STORE__LOCAL_PATH", &shared.store)
        .env("STREAMVAULT_CLUSTER__NODE_ID", node)
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

/// One signed KVS JSON call; returns the status and body.
async fn call(endpoint: &str, op: &str, body: &str) -> (u16, String) {
    signed_call(&reqwest::Client::new(), endpoint, op, body).await
}

/// A PutMedia with an empty body; returns the status and the body (with the error type).
async fn put_media_to(endpoint: &str) -> (u16, String) {
    let host = endpoint.split_once("://").unwrap().1.to_owned();
    let sig = sign_with(
        TEST_KEY,
        "POST",
        &host,
        "/putMedia",
        &[("x-amzn-stream-name", CAM)],
        &sha256_hex(b""),
        std::time::SystemTime::now(),
    );
    let mut req = reqwest::Client::new()
        .post(format!("{endpoint}/putMedia"))
        .header("x-amzn-stream-name", CAM);
    for (k, v) in sig {
        req = req.header(k, v);
    }
    let r = req.send().await.unwrap();
    let kind = r
        .headers()
        .get("x-amzn-errortype")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        r.status().as_u16(),
        format!("{kind} {}", r.text().await.unwrap()),
    )
}

async fn data_endpoint(endpoint: &str, api: &str) -> String {
    let (s, t) = call(
        endpoint,
        "getDataEndpoint",
        &format!(r#"{{"StreamName":"{CAM}","APIName":"{api}"}}"#),
    )
    .await;
    assert_eq!(s, 200, "{t}");
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    v["DataEndpoint"].as_str().unwrap().to_owned()
}

fn spawn_put(endpoint: &str) -> tokio::process::Child {
    let sample =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("media-samples/h264_720p_gop1s.mkv");
    tokio::process::Command::new(BIN)
        .args([
            "put",
            "--endpoint",
            endpoint,
            "--stream",
            CAM,
            "--realtime",
            "--start-timestamp",
            "1795600000",
        ])
        .arg(&sample)
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
    let (s, t) = call(
        endpoint,
        "listFragments",
        &format!(
            r#"{{"StreamName":"{CAM}","MaxResults":1000,"FragmentSelector":{{"FragmentSelectorType":"PRODUCER_TIMESTAMP","TimestampRange":{{"StartTimestamp":1795599000,"EndTimestamp":1795601000}}}}}}"#
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_killed_mid_upload_its_camera_moves_and_is_stored_once() {
    let Some((server, db_url)) = test_database().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let shared = Shared {
        db_url: db_url.clone(),
        master_key: tmp.path().join("master.key"),
        token_key: tmp.path().join("token.key"),
        store: tmp.path().join("objects"),
    };
    std::fs::write(&shared.master_key, "11".repeat(32)).unwrap();
    std::fs::write(&shared.token_key, "22".repeat(32)).unwrap();
    let ports = [free_port(), free_port()];
    let urls = ports.map(|p| format!("http://127.0.0.1:{p}"));
    let mut nodes = vec![
        Some(start_node(&shared, "node-0", ports[0], &tmp.path().join("d0")).await),
        Some(start_node(&shared, "node-1", ports[1], &tmp.path().join("d1")).await),
    ];
    let (s, t) = call(
        &urls[0],
        "createStream",
        &format!(r#"{{"StreamName":"{CAM}"}}"#),
    )
    .await;
    assert_eq!(s, 200, "{t}");

    // Both nodes send the producer to the same node; any node serves the archive APIs.
    let owner_url = data_endpoint(&urls[0], "PUT_MEDIA").await;
    assert_eq!(data_endpoint(&urls[1], "PUT_MEDIA").await, owner_url);
    assert_eq!(data_endpoint(&urls[1], "GET_MEDIA").await, owner_url);
    let owner = urls
        .iter()
        .position(|u| *u == owner_url)
        .expect("a node's URL");
    let other = 1 - owner;
    assert_eq!(
        data_endpoint(&urls[other], "LIST_FRAGMENTS").await,
        urls[other]
    );

    // The producer asks the non-owner (its control endpoint) and is sent to the owner.
    let upload = spawn_put(&urls[other]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The owner holds the stream now: a PutMedia straight to the other node is refused
    // with a retriable error that names the owner.
    let (s, t) = put_media_to(&urls[other]).await;
    assert_eq!(s, 400, "{t}");
    assert!(t.contains(&owner_url), "{t}");
    assert_eq!(data_endpoint(&urls[other], "PUT_MEDIA").await, owner_url);

    // kill -9 the owner 4.5 s into the 10 s camera.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let mut dead = nodes[owner].take().unwrap();
    dead.start_kill().unwrap();
    dead.wait().await.unwrap();
    let killed = std::time::Instant::now();
    let before = list_fragments(&urls[other]).await;
    assert!(
        !before.is_empty(),
        "fragments PERSISTED by the dead owner are served by the survivor"
    );

    // Within 10 s the survivor answers for the stream.
    loop {
        if data_endpoint(&urls[other], "PUT_MEDIA").await == urls[other] {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "no failover within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failover = killed.elapsed();
    eprintln!("failover: the survivor answered for the stream {failover:?} after the kill");

    let out = tokio::time::timeout(Duration::from_secs(90), upload.wait_with_output())
        .await
        .expect("put finished")
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("reconnecting"),
        "the upload must have been interrupted: {log}"
    );

    // Every cluster once, in order, numbers increasing across the two owners; nothing
    // the dead owner acknowledged is lost.
    let after = list_fragments(&urls[other]).await;
    let ts: Vec<i64> = after.iter().map(|(_, t)| *t).collect();
    assert_eq!(
        ts,
        (0..10)
            .map(|i| 1_795_600_000_000 + i * 1000)
            .collect::<Vec<_>>(),
        "every cluster stored once, in fragment-number order: {after:?}"
    );
    for f in &before {
        assert!(after.contains(f), "{f:?} was lost: {after:?}");
    }
    // And the whole stream reads back through the survivor.
    let numbers: Vec<String> = after.iter().map(|(n, _)| format!("\"{}\"", n.0)).collect();
    let (s, body) = call(
        &urls[other],
        "getMediaForFragmentList",
        &format!(
            r#"{{"StreamName":"{CAM}","Fragments":[{}]}}"#,
            numbers.join(",")
        ),
    )
    .await;
    assert_eq!(s, 200);
    assert!(body.len() > 100_000, "{} bytes", body.len());

    for n in nodes.iter_mut().flatten() {
        n.start_kill().unwrap();
        n.wait().await.unwrap();
    }
    drop_database(&server, &db_url).await;
}
