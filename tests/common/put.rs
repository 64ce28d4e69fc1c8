//! The PutMedia client of the end-to-end tests: a chunked upload over raw TCP, signed like
//! the KVS C producer, reading acks while it sends (full duplex), and the parsed result.

use std::net::SocketAddr;

use super::{TEST_KEY, sign_with};

/// What a PutMedia upload got back.
#[derive(Debug, Default)]
pub struct PutResult {
    pub status: u16,
    pub head: String,
    /// Each ack line parsed as JSON, in arrival order.
    pub acks: Vec<serde_json::Value>,
    /// Error body for non-200 answers.
    pub body: String,
    /// When each ack line arrived (same order as `acks`).
    pub ack_times: Vec<std::time::Instant>,
}

impl PutResult {
    pub fn events(&self, kind: &str) -> Vec<&serde_json::Value> {
        self.acks
            .iter()
            .filter(|a| a["EventType"] == kind)
            .collect()
    }
    pub fn error_ids(&self) -> Vec<i64> {
        self.events("ERROR")
            .iter()
            .map(|a| a["ErrorId"].as_i64().unwrap())
            .collect()
    }
}

/// A chunked PutMedia upload that reads acks while it sends (full duplex). `chunks`
/// yields the body pieces; each becomes one HTTP chunk.
pub async fn put_media_stream(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    mut chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> PutResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let mut req = format!(
        "POST /putMedia HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nUser-Agent: streamvault-test\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    // Signed like the KVS C producer: every header but Expect, over the empty payload.
    let mut to_sign: Vec<(&str, &str)> = vec![
        ("transfer-encoding", "chunked"),
        ("user-agent", "streamvault-test"),
    ];
    to_sign.extend(
        headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("expect"))
            .map(|(k, v)| (*k, *v)),
    );
    let host = addr.to_string();
    for (n, v) in sign_with(
        TEST_KEY,
        "POST",
        &host,
        "/putMedia",
        &to_sign,
        streamvault::auth::sigv4::EMPTY_SHA256,
        std::time::SystemTime::now(),
    ) {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    wr.write_all(req.as_bytes()).await.unwrap();
    let writer = tokio::spawn(async move {
        while let Some(c) = chunks.recv().await {
            if c.is_empty() {
                continue;
            }
            let mut frame = format!("{:x}\r\n", c.len()).into_bytes();
            frame.extend_from_slice(&c);
            frame.extend_from_slice(b"\r\n");
            if wr.write_all(&frame).await.is_err() {
                return;
            }
        }
        let _ = wr.write_all(b"0\r\n\r\n").await;
        let _ = wr.flush().await;
        // Keep the write half open until the reader is done (no half-close surprises).
        tokio::time::sleep(std::time::Duration::from_secs(120)).await;
    });
    let mut buf = Vec::new();
    let mut tmp = vec![0u8; 65536];
    let mut times = Vec::new();
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(60), rd.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
        }
        // Every ack ends with "}\n"; stamp the new ones.
        let lines = buf.windows(2).filter(|w| w == b"}\n").count();
        while times.len() < lines {
            times.push(std::time::Instant::now());
        }
        if response_complete(&buf) {
            break;
        }
    }
    writer.abort();
    let mut r = parse_put_response(&buf);
    times.truncate(r.acks.len());
    r.ack_times = times;
    r
}

fn response_complete(mut buf: &[u8]) -> bool {
    // Skip interim `100 Continue` responses.
    while buf.starts_with(b"HTTP/1.1 100") {
        let Some(p) = find(buf, b"\r\n\r\n") else {
            return false;
        };
        buf = &buf[p + 4..];
    }
    let Some(pos) = find(buf, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..pos]).to_ascii_lowercase();
    if head.contains("transfer-encoding: chunked") {
        find(&buf[pos..], b"\r\n0\r\n\r\n").is_some() || buf[pos + 4..].starts_with(b"0\r\n\r\n")
    } else if let Some(cl) = head.lines().find_map(|l| l.strip_prefix("content-length:")) {
        buf.len() >= pos + 4 + cl.trim().parse::<usize>().unwrap_or(0)
    } else {
        false
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn parse_put_response(buf: &[u8]) -> PutResult {
    let mut out = PutResult::default();
    // Skip interim 100 responses.
    let mut rest = buf;
    loop {
        let Some(pos) = find(rest, b"\r\n\r\n") else {
            return out;
        };
        let head = String::from_utf8_lossy(&rest[..pos]).to_string();
        rest = &rest[pos + 4..];
        if head.starts_with("HTTP/1.1 100") {
            continue;
        }
        out.status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        out.head = head;
        break;
    }
    let body = if out
        .head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut body = Vec::new();
        let mut r = rest;
        while let Some(p) = find(r, b"\r\n") {
            let n = usize::from_str_radix(std::str::from_utf8(&r[..p]).unwrap_or("0").trim(), 16)
                .unwrap_or(0);
            if n == 0 || r.len() < p + 2 + n {
                break;
            }
            body.extend_from_slice(&r[p + 2..p + 2 + n]);
            r = &r[p + 2 + n + 2..];
        }
        body
    } else {
        rest.to_vec()
    };
    let text = String::from_utf8_lossy(&body).to_string();
    if out.status == 200 {
        out.acks = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    }
    out.body = text;
    out
}

/// Uploads `body` to `stream` with a producer start timestamp (seconds), in 64 KiB
/// chunks, and checks that no ERROR ack came back.
pub async fn put_media_at(
    addr: SocketAddr,
    stream: &str,
    body: &[u8],
    start_secs: i64,
) -> PutResult {
    let start = start_secs.to_string();
    let r = put_media(
        addr,
        &[
            ("x-amzn-stream-name", stream),
            ("x-amzn-producer-start-timestamp", &start),
        ],
        body,
        65536,
    )
    .await;
    assert!(r.error_ids().is_empty(), "{:?}", r.error_ids());
    r
}

/// Uploads `body` in chunks of `chunk` bytes (optionally paced).
pub async fn put_media(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    body: &[u8],
    chunk: usize,
) -> PutResult {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let pieces: Vec<Vec<u8>> = body.chunks(chunk.max(1)).map(|c| c.to_vec()).collect();
    tokio::spawn(async move {
        for p in pieces {
            if tx.send(p).await.is_err() {
                break;
            }
        }
    });
    put_media_stream(addr, headers, rx).await
}
