//! Raw HTTP/1.1 over tokio TCP sockets for the load generator (no client crate: the
//! generator must stay cheap and see every byte as it arrives): SigV4 signing through
//! the library's own `sign_headers` (as the tests and the KVS C producer do), request
//! heads for PutMedia/GetMedia, a response-head reader, an incremental chunked-body
//! decoder, and a keep-alive JSON client for control-plane and ListFragments calls.

use std::net::SocketAddr;
use std::time::SystemTime;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where requests go and how they are signed (`key: None` = unsigned, `--no-auth`).
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub key: Option<(String, String)>,
}

impl Target {
    /// Signature headers (`authorization`, `x-amz-date`) as header lines, or nothing.
    fn sign(&self, path: &str, headers: &[(&str, &str)], payload_hash: &str) -> String {
        let Some(key) = &self.key else {
            return String::new();
        };
        let host = self.addr.to_string();
        streamvault::auth::sigv4::sign_headers(
            "POST",
            &host,
            path,
            headers,
            payload_hash,
            key,
            "us-east-1",
            SystemTime::now(),
        )
        .expect("sign")
        .into_iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect()
    }

    /// Head of a chunked PutMedia upload, signed once over the empty payload like the
    /// KVS C producer (every header but Host is listed and signed).
    pub fn put_media_head(&self, stream: &str, start_ts: f64) -> String {
        let start = format!("{start_ts:.3}");
        let h = [
            ("transfer-encoding", "chunked"),
            ("user-agent", "streamvault-load"),
            ("x-amzn-stream-name", stream),
            ("x-amzn-fragment-timecode-type", "RELATIVE"),
            ("x-amzn-producer-start-timestamp", start.as_str()),
        ];
        let mut req = format!("POST /putMedia HTTP/1.1\r\nhost: {}\r\n", self.addr);
        for (k, v) in h {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&self.sign("/putMedia", &h, streamvault::auth::sigv4::EMPTY_SHA256));
        req.push_str("\r\n");
        req
    }

    /// A complete signed JSON POST (head and body).
    pub fn json_request(&self, path: &str, body: &str, close: bool) -> String {
        let len = body.len().to_string();
        let h = [
            ("content-type", "application/json"),
            ("content-length", len.as_str()),
        ];
        let sig = self.sign(
            path,
            &h,
            &streamvault::auth::sigv4::payload_hash(body.as_bytes()),
        );
        let conn = if close { "connection: close\r\n" } else { "" };
        format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n{sig}{conn}\r\n{body}",
            self.addr
        )
    }
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub chunked: bool,
    pub content_length: Option<usize>,
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Reads a response head (skipping `100 Continue`); returns it and the bytes read past it.
pub async fn read_head(s: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<(Head, Vec<u8>)> {
    let mut buf = Vec::with_capacity(4096);
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
            let rest = buf[p + 4..].to_vec();
            if head.starts_with("http/1.1 100") {
                buf = rest;
                continue;
            }
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
            let hv = |name: &str| {
                head.lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            };
            return Ok((
                Head {
                    status,
                    chunked: hv("transfer-encoding:").is_some_and(|v| v.contains("chunked")),
                    content_length: hv("content-length:").and_then(|v| v.parse().ok()),
                },
                rest,
            ));
        }
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// Incremental decoder of a chunked body.
#[derive(Debug, Default)]
pub struct Dechunker {
    line: Vec<u8>,
    /// Data bytes left in the current chunk, then its CRLF.
    left: usize,
    crlf: usize,
    pub done: bool,
}

impl Dechunker {
    /// Decodes `input`, handing each run of payload bytes to `out`.
    pub fn feed(&mut self, mut input: &[u8], mut out: impl FnMut(&[u8])) {
        while !input.is_empty() && !self.done {
            if self.left > 0 {
                let n = self.left.min(input.len());
                out(&input[..n]);
                self.left -= n;
                input = &input[n..];
                if self.left == 0 {
                    self.crlf = 2;
                }
            } else if self.crlf > 0 {
                let n = self.crlf.min(input.len());
                self.crlf -= n;
                input = &input[n..];
            } else {
                let Some(p) = input.iter().position(|&b| b == b'\n') else {
                    self.line.extend_from_slice(input);
                    return;
                };
                self.line.extend_from_slice(&input[..p]);
                input = &input[p + 1..];
                let text = String::from_utf8_lossy(&self.line);
                let size = text.trim().split(';').next().unwrap_or("");
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                self.line.clear();
                if n == 0 {
                    self.done = true;
                } else {
                    self.left = n;
                }
            }
        }
    }
}

/// A keep-alive connection for JSON requests.
pub struct JsonClient {
    target: Target,
    conn: TcpStream,
}

impl JsonClient {
    pub async fn connect(target: &Target) -> std::io::Result<Self> {
        let conn = TcpStream::connect(target.addr).await?;
        conn.set_nodelay(true)?;
        Ok(JsonClient {
            target: target.clone(),
            conn,
        })
    }

    /// POSTs `body` to `path`; returns the status and the response body.
    pub async fn post(&mut self, path: &str, body: &str) -> std::io::Result<(u16, String)> {
        let req = self.target.json_request(path, body, false);
        self.conn.write_all(req.as_bytes()).await?;
        let (head, mut rest) = read_head(&mut self.conn).await?;
        let mut tmp = vec![0u8; 65536];
        let mut body = Vec::new();
        if head.chunked {
            let mut d = Dechunker::default();
            loop {
                d.feed(&rest, |b| body.extend_from_slice(b));
                if d.done {
                    break;
                }
                let n = self.conn.read(&mut tmp).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                rest = tmp[..n].to_vec();
            }
        } else {
            let want = head.content_length.unwrap_or(0);
            body = rest;
            while body.len() < want {
                let n = self.conn.read(&mut tmp).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                body.extend_from_slice(&tmp[..n]);
            }
        }
        Ok((head.status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// CreateStream with a retention in hours; an existing stream is fine.
pub async fn create_stream(
    c: &mut JsonClient,
    name: &str,
    retention_hours: u32,
) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "StreamName": name, "MediaType": "video/h264", "DataRetentionInHours": retention_hours
    })
    .to_string();
    let (status, text) = c.post("/createStream", &body).await?;
    anyhow::ensure!(
        status == 200 || text.contains("ResourceInUseException"),
        "CreateStream {name}: {status} {text}"
    );
    Ok(())
}
