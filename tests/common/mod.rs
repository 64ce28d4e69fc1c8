//! Shared fixture for end-to-end tests: the real server on 127.0.0.1:0 with a temporary
//! data dir, and AWS SDK clients pointed at it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use streamvault::config::Settings;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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

    /// Starts a server on `data_dir`, letting the test adjust settings.
    pub async fn start_in(data_dir: PathBuf, tweak: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = Settings::default();
        settings.data_dir = data_dir.clone();
        settings.listen = "127.0.0.1:0".parse().unwrap();
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
                "AKIDSTREAMVAULTTEST",
                "testsecretkeytestsecretkey",
                None,
                None,
                "test",
            ))
            .load()
            .await
    }

    pub async fn control(&self) -> aws_sdk_kinesisvideo::Client {
        aws_sdk_kinesisvideo::Client::new(&self.sdk_config().await)
    }

    /// A raw JSON POST, for cases the SDK cannot express.
    pub async fn post_raw(&self, path: &str, body: &str) -> (u16, Vec<(String, String)>, String) {
        raw_http(self.addr, "POST", path, body).await
    }
}

/// Minimal HTTP/1.1 request over a TCP socket (no client crate needed).
pub async fn raw_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
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
