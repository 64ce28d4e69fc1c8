//! `streamvault put` against the server binary, which is killed (-9) and restarted
//! mid-upload (over TLS, and behind a separate control endpoint that only answers
//! GetDataEndpoint): the client resolves its data endpoint like the KVS SDKs, again on
//! every reconnection, resumes, and no persisted fragment is duplicated.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::process::{BIN, free_port, resumed_put, signed_call, wait_listening};
use common::*;

/// Starts `streamvault serve` (with TLS when `tls` names a certificate and key) and
/// waits for its "listening on" line.
async fn start_server(
    dir: &std::path::Path,
    port: u16,
    tls: Option<(&std::path::Path, &std::path::Path)>,
) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(BIN);
    if let Some((cert, key)) = tls {
        cmd.env("STREAMVAULT_TLS__CERT_FILE", cert)
            .env("STREAMVAULT_TLS__KEY_FILE", key);
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut child = cmd
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir)
        .args([
            "--access-key-id",
            TEST_KEY.0,
            "--secret-access-key",
            TEST_KEY.1,
        ])
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_listening(&mut child, scheme).await;
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_over_tls_resumes_after_a_server_crash() {
    if !have_tool("openssl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // A throwaway CA and a server certificate for 127.0.0.1 signed by it.
    let (ca, cert, key) = (
        tmp.path().join("ca.pem"),
        tmp.path().join("cert.pem"),
        tmp.path().join("key.pem"),
    );
    let d = tmp.path().display().to_string();
    let script = format!(
        "set -e; cd {d}; \
         openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout ca.key -out ca.pem 2>/dev/null; \
         openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout key.pem -out srv.csr 2>/dev/null; \
         printf 'basicConstraints=CA:FALSE\\nsubjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ext.cnf; \
         openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile ext.cnf -out cert.pem 2>/dev/null"
    );
    let ok = std::process::Command::new("bash")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(ok.success());
    let data = tmp.path().join("data");
    let port = free_port();
    let endpoint = format!("https://127.0.0.1:{port}");
    let server = start_server(&data, port, Some((&cert, &key))).await;

    // CreateStream over HTTPS, signed; GetDataEndpoint answers https.
    let pem = std::fs::read(&ca).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let (s, t) = signed_call(
        &client,
        &endpoint,
        "createStream",
        r#"{"StreamName":"tls-cam"}"#,
    )
    .await;
    assert_eq!(s, 200, "{t}");
    let (s, t) = signed_call(
        &client,
        &endpoint,
        "getDataEndpoint",
        r#"{"StreamName":"tls-cam","APIName":"PUT_MEDIA"}"#,
    )
    .await;
    assert_eq!(s, 200, "{t}");
    assert!(t.contains(&format!("\"https://127.0.0.1:{port}\"")), "{t}");

    // A 10 s sample replayed in real time; the server dies 4.5 s in and is back 1 s later.
    let put = spawn_put(&endpoint, "tls-cam", Some(&ca));
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let server = crash_and_restart(server, &data, port, Some((&cert, &key))).await;
    finish(put, server).await;
    stored_once(&data, "tls-cam").await;
}

/// `streamvault put --realtime` of the 10-s sample (10 one-second clusters) to `stream`.
fn spawn_put(
    endpoint: &str,
    stream: &str,
    ca_file: Option<&std::path::Path>,
) -> tokio::process::Child {
    let sample =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("media-samples/h264_720p_gop1s.mkv");
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args([
        "put",
        "--endpoint",
        endpoint,
        "--stream",
        stream,
        "--realtime",
        "--start-timestamp",
        "1795600000",
    ]);
    if let Some(ca) = ca_file {
        cmd.arg("--ca-file").arg(ca);
    }
    cmd.arg(&sample)
        .env("AWS_ACCESS_KEY_ID", TEST_KEY.0)
        .env("AWS_SECRET_ACCESS_KEY", TEST_KEY.1)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Kills the server (-9), waits a second and starts it again on the same port and data.
async fn crash_and_restart(
    mut server: tokio::process::Child,
    data: &std::path::Path,
    port: u16,
    tls: Option<(&std::path::Path, &std::path::Path)>,
) -> tokio::process::Child {
    server.start_kill().unwrap();
    server.wait().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    start_server(data, port, tls).await
}

/// Waits for an interrupted `put` to succeed, then stops the server; returns put's log.
async fn finish(put: tokio::process::Child, mut server: tokio::process::Child) -> String {
    let log = resumed_put(put).await;
    server.start_kill().unwrap();
    server.wait().await.unwrap();
    log
}

/// The 10 clusters of the sample are stored once each, in order, and `check --deep`
/// finds the data dir clean.
async fn stored_once(data: &std::path::Path, stream: &str) {
    let dd = DataDir::open(data).await;
    let ts: Vec<i64> = dd
        .fragments(stream)
        .await
        .iter()
        .map(|(r, _)| r.producer_ts_ms)
        .collect();
    assert_eq!(
        ts,
        (0..10)
            .map(|i| 1_795_600_000_000 + i * 1000)
            .collect::<Vec<_>>(),
        "every cluster stored once, in order"
    );
    let report = streamvault::check::check(dd.index.as_ref(), &dd.store, true)
        .await
        .unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

/// `--endpoint` names a control endpoint that answers only GetDataEndpoint (with the
/// real server's URL) and refuses everything else, as a load balancer in front of a
/// cluster might: `put` must send its PutMedia where GetDataEndpoint says, signed for that
/// host, and ask again after the server dies under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_sends_where_get_data_endpoint_says_and_asks_again_on_reconnect() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();
    let data_endpoint = format!("http://127.0.0.1:{port}");
    let server = start_server(&data, port, None).await;

    let asked = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let control = {
        let (asked, refused, data_endpoint) =
            (asked.clone(), refused.clone(), data_endpoint.clone());
        axum::Router::new()
            .route(
                "/getDataEndpoint",
                axum::routing::post(move |body: String| {
                    let asked = asked.clone();
                    let data_endpoint = data_endpoint.clone();
                    async move {
                        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                        assert_eq!(v["APIName"], "PUT_MEDIA", "{body}");
                        if v["StreamName"] != "routed-cam" {
                            return (
                                axum::http::StatusCode::NOT_FOUND,
                                [("x-amzn-ErrorType", "ResourceNotFoundException")],
                                r#"{"Message":"The requested stream is not found"}"#.to_owned(),
                            );
                        }
                        asked.fetch_add(1, Ordering::SeqCst);
                        (
                            axum::http::StatusCode::OK,
                            [("x-amzn-ErrorType", "")],
                            serde_json::json!({ "DataEndpoint": data_endpoint }).to_string(),
                        )
                    }
                }),
            )
            .fallback(move || {
                let refused = refused.clone();
                async move {
                    refused.fetch_add(1, Ordering::SeqCst);
                    (axum::http::StatusCode::NOT_FOUND, "not a data endpoint")
                }
            })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, control).await });

    let client = reqwest::Client::new();
    let (s, t) = signed_call(
        &client,
        &data_endpoint,
        "createStream",
        r#"{"StreamName":"routed-cam"}"#,
    )
    .await;
    assert_eq!(s, 200, "{t}");

    // A stream GetDataEndpoint does not know: a clear error at once, no retries.
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        spawn_put(&control_url, "no-such-cam", None).wait_with_output(),
    )
    .await
    .expect("put gave up")
    .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("ResourceNotFoundException"), "{log}");
    assert!(!log.contains("reconnecting"), "not retried: {log}");

    // A 10 s sample in real time; the server dies 4.5 s in and is back 1 s later.
    let upload = spawn_put(&control_url, "routed-cam", None);
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(asked.load(Ordering::SeqCst), 1, "resolved once to start");
    let server = crash_and_restart(server, &data, port, None).await;
    let log = finish(upload, server).await;
    assert!(
        asked.load(Ordering::SeqCst) >= 2,
        "GetDataEndpoint asked again before reconnecting: {log}"
    );
    assert_eq!(
        refused.load(Ordering::SeqCst),
        0,
        "nothing but GetDataEndpoint went to the control endpoint"
    );
    stored_once(&data, "routed-cam").await;
}
