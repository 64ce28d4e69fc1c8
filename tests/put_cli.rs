//! `streamvault put` over TLS against the server binary, which is killed (-9) and
//! restarted mid-upload: the client resumes and no persisted fragment is duplicated.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_streamvault");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `streamvault serve` with TLS and waits for its "listening on" line.
async fn start_server(
    dir: &std::path::Path,
    port: u16,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> tokio::process::Child {
    let mut child = tokio::process::Command::new(BIN)
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
        .env("STREAMVAULT_TLS__CERT_FILE", cert)
        .env("STREAMVAULT_TLS__KEY_FILE", key)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("server start")
            .unwrap()
            .expect("server output");
        if line.contains("listening on https://") {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
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
    let mut server = start_server(&data, port, &cert, &key).await;

    // CreateStream over HTTPS, signed; GetDataEndpoint answers https.
    let pem = std::fs::read(&ca).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let call = |op: &'static str, body: String| {
        let client = client.clone();
        let endpoint = endpoint.clone();
        async move {
            let host = endpoint.trim_start_matches("https://").to_owned();
            let sig = sign_with(
                TEST_KEY,
                "POST",
                &host,
                &format!("/{op}"),
                &[("content-type", "application/json")],
                &sha256_hex(body.as_bytes()),
                std::time::SystemTime::now(),
            );
            let mut req = client
                .post(format!("{endpoint}/{op}"))
                .header("content-type", "application/json");
            for (k, v) in sig {
                req = req.header(k, v);
            }
            let r = req.body(body).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (s, t) = call("createStream", r#"{"StreamName":"tls-cam"}"#.into()).await;
    assert_eq!(s, 200, "{t}");
    let (s, t) = call(
        "getDataEndpoint",
        r#"{"StreamName":"tls-cam","APIName":"PUT_MEDIA"}"#.into(),
    )
    .await;
    assert_eq!(s, 200, "{t}");
    assert!(t.contains(&format!("\"https://127.0.0.1:{port}\"")), "{t}");

    // A 10 s sample replayed in real time; the server dies 4.5 s in and is back 1 s later.
    let sample =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("media-samples/h264_720p_gop1s.mkv");
    let put = tokio::process::Command::new(BIN)
        .args([
            "put",
            "--endpoint",
            &endpoint,
            "--stream",
            "tls-cam",
            "--realtime",
            "--start-timestamp",
            "1795600000",
            "--ca-file",
        ])
        .arg(&ca)
        .arg(&sample)
        .env("AWS_ACCESS_KEY_ID", TEST_KEY.0)
        .env("AWS_SECRET_ACCESS_KEY", TEST_KEY.1)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    server.start_kill().unwrap();
    server.wait().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut server = start_server(&data, port, &cert, &key).await;
    let out = tokio::time::timeout(Duration::from_secs(90), put.wait_with_output())
        .await
        .expect("put finished")
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("reconnecting"),
        "the upload must have been interrupted and resumed: {log}"
    );
    server.start_kill().unwrap();
    server.wait().await.unwrap();

    let dd = DataDir::open(&data);
    let frags = dd.fragments("tls-cam").await;
    let ts: Vec<i64> = frags.iter().map(|(r, _)| r.producer_ts_ms).collect();
    let mut unique = ts.clone();
    unique.dedup();
    assert_eq!(ts, unique, "no fragment stored twice: {ts:?}");
    assert_eq!(
        ts,
        (0..10)
            .map(|i| 1_795_600_000_000 + i * 1000)
            .collect::<Vec<_>>(),
        "every cluster stored once"
    );
    let report = streamvault::check::check(&dd.index, &dd.store, true)
        .await
        .unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}
