//! Helpers for tests that run the real `streamvault` binary as separate processes: a
//! free loopback port, waiting for a server's "listening on" line, and one signed KVS
//! JSON call over HTTP.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::{TEST_KEY, sha256_hex, sign_with};

/// The `streamvault` binary cargo built for the integration tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_streamvault");

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (30 s at most) for a spawned `serve` (stderr piped) to print
/// "listening on <scheme>://", then keeps draining its stderr.
pub async fn wait_listening(child: &mut tokio::process::Child, scheme: &str) {
    let mut lines = BufReader::new(child.stderr.take().expect("stderr piped")).lines();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("server did not start within 30 s: {seen:#?}"))
            .unwrap();
        let Some(line) = line else {
            panic!("server exited before listening: {seen:#?}");
        };
        if line.contains(&format!("listening on {scheme}://")) {
            break;
        }
        seen.push(line);
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
}

/// Waits (90 s at most) for a `streamvault put` whose connection was broken on purpose:
/// it must succeed after reconnecting. Returns its log (standard error).
pub async fn resumed_put(put: tokio::process::Child) -> String {
    let out = tokio::time::timeout(Duration::from_secs(90), put.wait_with_output())
        .await
        .expect("put finished")
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("reconnecting"),
        "the upload must have been interrupted and resumed: {log}"
    );
    log
}

/// Signs (with [`TEST_KEY`]) and sends one KVS JSON call; returns the status and body.
pub async fn signed_call(
    client: &reqwest::Client,
    endpoint: &str,
    op: &str,
    body: &str,
) -> (u16, String) {
    let (s, b) = signed_call_bytes(client, endpoint, op, body).await;
    (s, String::from_utf8_lossy(&b).into_owned())
}

/// [`signed_call`] with the body's bytes as they came (media).
pub async fn signed_call_bytes(
    client: &reqwest::Client,
    endpoint: &str,
    op: &str,
    body: &str,
) -> (u16, bytes::Bytes) {
    let host = endpoint.split_once("://").unwrap().1.to_owned();
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
    let r = req.body(body.to_owned()).send().await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap())
}
