//! One PutMedia producer connection: replays a [`Sample`] in a loop (timecodes advance by
//! the sample's span each pass, so one connection can run for any length of time), paced
//! like a camera or as fast as the server reads, and reads the ack lines on the same
//! connection while it sends.
//!
//! **PERSISTED latency after fragment close.** The server closes fragment N when the
//! first block of the next cluster arrives (docs/design/ingest.md: RECEIVED when "the
//! next fragment starts"; these samples start every cluster with a keyframe), or when
//! the body ends. The generator stamps `Instant::now()` just *before* it writes that
//! first block (so the stamp can never be later than the server's close) and measures
//! from there to the arrival of fragment N's PERSISTED ack line. In frame pacing a write
//! is one block; in cluster pacing and at full rate the cluster head plus its first
//! block is one write and the rest of the cluster a second one.
//!
//! **Frame-in time** for the live-tail measurement: the instant just before a block's
//! write, logged per stream in a [`FrameLog`] by absolute timecode.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::io::IoSlice;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::{Dechunker, Target, read_head};
use crate::mkv::Sample;
use crate::stats::Samples;

/// How a producer paces its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// As fast as the server reads.
    Max,
    /// Each cluster at its timecode (a whole fragment per write burst).
    Cluster,
    /// Each block at its own timecode, like a camera.
    Frame,
}

/// When each block of a stream was written, by absolute timecode (bounded).
#[derive(Debug, Default)]
pub struct FrameLog {
    inner: Mutex<VecDeque<(i64, Instant)>>,
}

impl FrameLog {
    fn push(&self, tc: i64, at: Instant) {
        let mut q = self.inner.lock().unwrap();
        if q.len() >= 8192 {
            q.pop_front();
        }
        q.push_back((tc, at));
    }

    /// Write time of the block with timecode `tc`, if still logged.
    pub fn get(&self, tc: i64) -> Option<Instant> {
        let q = self.inner.lock().unwrap();
        let i = q.partition_point(|e| e.0 < tc);
        q.get(i).filter(|e| e.0 == tc).map(|e| e.1)
    }
}

/// What one producer connection did.
#[derive(Debug, Default)]
pub struct ProducerResult {
    pub status: u16,
    pub bytes: u64,
    pub clusters: u64,
    pub persisted: u64,
    pub received: u64,
    pub errors: Vec<i64>,
    pub persisted_latency: Samples,
    pub failure: Option<String>,
}

#[derive(Deserialize)]
struct Ack {
    #[serde(rename = "EventType")]
    event: String,
    #[serde(rename = "FragmentTimecode")]
    timecode: Option<i64>,
    #[serde(rename = "ErrorId")]
    error_id: Option<i64>,
}

/// Settings of one producer.
#[derive(Clone)]
pub struct Producer {
    pub target: Target,
    pub stream: String,
    pub sample: Arc<Sample>,
    pub pace: Pace,
    /// Writing stops at this instant (then the body is ended and the acks drained).
    pub until: Instant,
    /// Time the first cluster is due (lets many producers start staggered).
    pub start: Instant,
    pub frames: Option<Arc<FrameLog>>,
    /// Expect acks (false for the nginx and bare-pipeline baselines).
    pub acks: bool,
    /// Set TCP_QUICKACK after every read of the ack stream (`--quickack`), so our ACKs of
    /// the server's ack lines are never delayed: a diagnostic for Nagle's algorithm on
    /// the server's side (it does not set TCP_NODELAY).
    pub quickack: bool,
}

/// `setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, 1)`; Linux re-arms delayed ACKs on its
/// own, so this is repeated after every read.
pub fn quickack(fd: i32) {
    unsafe extern "C" {
        fn setsockopt(fd: i32, level: i32, name: i32, val: *const i32, len: u32) -> i32;
    }
    let one = 1i32;
    // SAFETY: a valid pointer to an int of the given length; a bad fd only fails.
    unsafe { setsockopt(fd, 6, 12, &one, 4) };
}

/// Writes one HTTP chunk made of `parts` with vectored writes (the parts are not copied).
async fn write_chunk<W: AsyncWrite + Unpin>(w: &mut W, parts: &[&[u8]]) -> std::io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let head = format!("{len:x}\r\n");
    let mut bufs: Vec<&[u8]> = Vec::with_capacity(parts.len() + 2);
    bufs.push(head.as_bytes());
    bufs.extend(parts.iter().copied().filter(|p| !p.is_empty()));
    bufs.push(b"\r\n");
    let (mut idx, mut off) = (0, 0);
    while idx < bufs.len() {
        let slices: Vec<IoSlice<'_>> = std::iter::once(&bufs[idx][off..])
            .chain(bufs[idx + 1..].iter().copied())
            .map(IoSlice::new)
            .collect();
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let rem = bufs[idx].len() - off;
            if n >= rem {
                n -= rem;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

impl Producer {
    pub async fn run(self) -> ProducerResult {
        let mut r = ProducerResult::default();
        match self.run_inner(&mut r).await {
            Ok(()) => {}
            Err(e) => r.failure = Some(format!("{}: {e}", self.stream)),
        }
        r
    }

    async fn run_inner(&self, r: &mut ProducerResult) -> anyhow::Result<()> {
        tokio::time::sleep_until(self.start.into()).await;
        let conn = TcpStream::connect(self.target.addr).await?;
        conn.set_nodelay(true)?;
        let (mut rd, mut wr) = conn.into_split();
        let start_ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs_f64();
        wr.write_all(
            self.target
                .put_media_head(&self.stream, start_ts)
                .as_bytes(),
        )
        .await?;
        let closes: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();

        let acks = self.acks;
        let qa = self
            .quickack
            .then(|| std::os::fd::AsRawFd::as_raw_fd(rd.as_ref()));
        let closes_r = closes.clone();
        let reader = tokio::spawn(async move {
            let mut out = ProducerResult::default();
            let (head, rest) = match read_head(&mut rd).await {
                Ok(h) => h,
                Err(e) => {
                    out.failure = Some(format!("no response: {e}"));
                    return out;
                }
            };
            out.status = head.status;
            if !head.chunked {
                // nginx and the bare pipeline answer at once with an empty body.
                return out;
            }
            let mut d = Dechunker::default();
            let mut line = Vec::new();
            let mut tmp = vec![0u8; 16384.max(rest.len())];
            let mut len = rest.len();
            tmp[..len].copy_from_slice(&rest);
            loop {
                d.feed(&tmp[..len], |b| line.extend_from_slice(b));
                while let Some(p) = line.iter().position(|&b| b == b'\n') {
                    if acks {
                        let now = Instant::now();
                        if let Ok(a) = serde_json::from_slice::<Ack>(&line[..p]) {
                            match a.event.as_str() {
                                "PERSISTED" => {
                                    out.persisted += 1;
                                    let t = a
                                        .timecode
                                        .and_then(|tc| closes_r.lock().unwrap().remove(&tc));
                                    if let Some(t) = t {
                                        out.persisted_latency
                                            .push(now.saturating_duration_since(t));
                                    }
                                }
                                "RECEIVED" => out.received += 1,
                                "ERROR" => out.errors.push(a.error_id.unwrap_or(-1)),
                                _ => {}
                            }
                        }
                    }
                    line.drain(..=p);
                }
                if d.done {
                    break;
                }
                let got = rd.read(&mut tmp).await;
                if let Some(fd) = qa {
                    quickack(fd);
                }
                match got {
                    Ok(0) | Err(_) => break,
                    Ok(n) => len = n,
                }
            }
            out
        });

        let s = &self.sample;
        write_chunk(&mut wr, &[&s.header]).await?;
        r.bytes += s.header.len() as u64;
        let t0 = self.start;
        let mut prev_tc: Option<i64> = None;
        'outer: for pass in 0i64.. {
            for (ci, c) in s.clusters.iter().enumerate() {
                let tc = c.timecode + pass * s.span_ms;
                let due = t0 + Duration::from_millis(tc as u64);
                // Stop at `until`: a paced cluster is sent only if the time it covers
                // ends by then, so the rate driven is the sample's own.
                let next = s.clusters.get(ci + 1).map_or(s.span_ms, |n| n.timecode);
                let end = t0 + Duration::from_millis((next + pass * s.span_ms) as u64);
                let stop = match self.pace {
                    Pace::Max => Instant::now() >= self.until,
                    Pace::Cluster => end > self.until,
                    Pace::Frame => due >= self.until,
                };
                if stop {
                    break 'outer;
                }
                if self.pace != Pace::Max {
                    tokio::time::sleep_until(due.into()).await;
                }
                let head = c.head(tc as u64);
                for (i, (range, rel)) in c.blocks.iter().enumerate() {
                    let block = &c.body[range.clone()];
                    if self.pace == Pace::Frame && i > 0 {
                        tokio::time::sleep_until((due + Duration::from_millis(*rel as u64)).into())
                            .await;
                    }
                    let now = Instant::now();
                    if i == 0 {
                        if let Some(p) = prev_tc.replace(tc) {
                            closes.lock().unwrap().insert(p, now);
                        }
                    }
                    if let Some(f) = &self.frames {
                        f.push(tc + *rel as i64, now);
                    }
                    match (self.pace, i) {
                        (Pace::Frame, 0) => write_chunk(&mut wr, &[&head, block]).await?,
                        (Pace::Frame, _) => write_chunk(&mut wr, &[block]).await?,
                        (_, 0) => {
                            write_chunk(&mut wr, &[&head, block]).await?;
                            let rest = &c.body[range.end..];
                            if !rest.is_empty() {
                                if let Some(f) = &self.frames {
                                    let now = Instant::now();
                                    for (_, rel) in &c.blocks[1..] {
                                        f.push(tc + *rel as i64, now);
                                    }
                                }
                                write_chunk(&mut wr, &[rest]).await?;
                            }
                            break;
                        }
                        _ => unreachable!(),
                    }
                }
                r.bytes += 22 + c.body.len() as u64;
                r.clusters += 1;
            }
        }
        if let Some(p) = prev_tc {
            closes.lock().unwrap().insert(p, Instant::now());
        }
        wr.write_all(b"0\r\n\r\n").await?;
        wr.flush().await?;
        let out = match tokio::time::timeout(Duration::from_secs(60), reader).await {
            Ok(Ok(o)) => o,
            _ => anyhow::bail!("acks did not end within 60 s"),
        };
        drop(wr);
        r.status = out.status;
        r.persisted = out.persisted;
        r.received = out.received;
        r.errors = out.errors;
        r.persisted_latency = out.persisted_latency;
        if r.failure.is_none() {
            r.failure = out.failure;
        }
        Ok(())
    }
}
