//! One GetMedia live reader (`StartSelectorType: NOW`): reads the chunked `video/webm`
//! response, scans it for blocks ([`BlockScanner`]) and, for each block whose write time
//! the stream's producer logged ([`FrameLog`]), records frame-in → frame-out latency:
//! from just before the producer's write of the block to the arrival of the block's last
//! byte at the reader.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::{Dechunker, Target, read_head};
use crate::mkv::BlockScanner;
use crate::producer::FrameLog;
use crate::stats::Samples;

#[derive(Debug, Default)]
pub struct ReaderResult {
    pub bytes: u64,
    pub blocks: u64,
    /// Blocks whose write time was no longer (or not yet) in the log.
    pub unmatched: u64,
    pub latency: Samples,
    pub failure: Option<String>,
}

/// One live reader: the stream, its producer's frame log, when latencies start to
/// count (`warm`: the first frames at connect time are a catch-up burst, not live tail),
/// when to stop, and whether to set TCP_QUICKACK after every read (`--quickack`).
pub struct Live {
    pub target: Target,
    pub stream: String,
    pub frames: Arc<FrameLog>,
    pub warm: Instant,
    pub until: Instant,
    pub quickack: bool,
}

/// Reads the stream live from now until `until`.
pub async fn read_live(l: Live) -> ReaderResult {
    let mut r = ReaderResult::default();
    if let Err(e) = read_inner(&l, &mut r).await {
        r.failure = Some(format!("{}: {e}", l.stream));
    }
    r
}

async fn read_inner(l: &Live, r: &mut ReaderResult) -> anyhow::Result<()> {
    let (target, stream, frames, warm, until) = (&l.target, &l.stream, &l.frames, l.warm, l.until);
    let mut conn = TcpStream::connect(target.addr).await?;
    conn.set_nodelay(true)?;
    let body = serde_json::json!({
        "StreamName": stream, "StartSelector": {"StartSelectorType": "NOW"}
    })
    .to_string();
    conn.write_all(target.json_request("/getMedia", &body, true).as_bytes())
        .await?;
    let (head, rest) = read_head(&mut conn).await?;
    anyhow::ensure!(head.status == 200, "GetMedia answered {}", head.status);
    let mut d = Dechunker::default();
    let mut scan = BlockScanner::default();
    let mut tmp = vec![0u8; 65536.max(rest.len())];
    let mut len = rest.len();
    tmp[..len].copy_from_slice(&rest);
    loop {
        let now = Instant::now();
        d.feed(&tmp[..len], |b| {
            scan.feed(b, |tc| {
                r.blocks += 1;
                match frames.get(tc) {
                    Some(t) if now >= warm => r.latency.push(now.saturating_duration_since(t)),
                    Some(_) => {}
                    None => r.unmatched += 1,
                }
            })
        });
        if d.done {
            break;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let got =
            tokio::time::timeout(left.min(Duration::from_secs(30)), conn.read(&mut tmp)).await;
        if l.quickack {
            crate::producer::quickack(std::os::fd::AsRawFd::as_raw_fd(&conn));
        }
        match got {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => len = n,
        }
    }
    r.bytes = scan.bytes;
    Ok(())
}
