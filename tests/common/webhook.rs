//! A local HTTP receiver for webhook tests: records every request's headers and body and
//! answers with the statuses it is given (then `204`), so a test can check signatures and
//! watch retries.

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// Lower-case header names.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The status it was answered with.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        super::header(&self.headers, name)
    }
}

/// Starts a receiver on 127.0.0.1; the n-th request is answered `statuses[n]` (`204`
/// once they run out). Returns its URL (`http://…/hook`) and the requests in order.
pub async fn receiver(statuses: Vec<u16>) -> (String, mpsc::Receiver<Received>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let (tx, rx) = mpsc::channel(64);
    let statuses = std::sync::Arc::new(std::sync::Mutex::new(statuses.into_iter()));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (tx, statuses) = (tx.clone(), statuses.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 8192];
                loop {
                    let n = s.read(&mut tmp).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let headers: Vec<(String, String)> = head
                        .lines()
                        .skip(1)
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                        .collect();
                    let len = super::header(&headers, "content-length")
                        .map_or(0, |v| v.parse::<usize>().unwrap());
                    if body.len() < len {
                        continue;
                    }
                    let status = statuses.lock().unwrap().next().unwrap_or(204);
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                                .as_bytes(),
                        )
                        .await;
                    let body = body[..len].to_owned();
                    let _ = tx
                        .send(Received {
                            headers,
                            body,
                            status,
                        })
                        .await;
                    break;
                }
            });
        }
    });
    (url, rx)
}

/// A receiver that answers every request `204` and yields the bodies as JSON.
pub async fn json_sink() -> (String, mpsc::Receiver<Value>) {
    let (url, mut raw) = receiver(Vec::new()).await;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(r) = raw.recv().await {
            let _ = tx.send(serde_json::from_str(&r.body).unwrap()).await;
        }
    });
    (url, rx)
}
