//! Just enough Matroska for the load generator, with no dependency on the server's own
//! parser (so a parser bug cannot hide in both ends):
//!
//! - [`Sample`]: a media sample split into its header (everything before the first
//!   Cluster, sent verbatim once per connection) and its clusters. Each cluster is
//!   rebuilt once with an 8-byte size and an 8-byte Timecode, so a producer can loop the
//!   sample forever by patching 8 bytes per cluster (`timecode + loop × span`) and send
//!   the blocks themselves from shared, never-copied buffers. Each cluster also keeps the
//!   byte range of every block, for frame-by-frame pacing.
//! - [`BlockScanner`]: a streaming scanner for GetMedia output (any chunking, clusters of
//!   unknown size) that reports each block's absolute timecode (cluster Timecode + block
//!   relative timecode) when the block's last byte has arrived.

use std::ops::Range;

use bytes::Bytes;

const EBML: u32 = 0x1A45_DFA3;
const SEGMENT: u32 = 0x1853_8067;
const CLUSTER: u32 = 0x1F43_B675;
const TIMECODE: u32 = 0xE7;
const SIMPLE_BLOCK: u32 = 0xA3;
const BLOCK_GROUP: u32 = 0xA0;
const BLOCK: u32 = 0xA1;
const INFO: u32 = 0x1549_A966;
const TIMECODE_SCALE: u32 = 0x2AD7B1;

/// An element header: id, payload size (`None` = unknown), header length.
fn header(b: &[u8]) -> Option<(u32, Option<u64>, usize)> {
    let first = *b.first()?;
    let idlen = first.leading_zeros() as usize + 1;
    if idlen > 4 || b.len() < idlen + 1 {
        return None;
    }
    let id = b[..idlen].iter().fold(0u32, |a, &x| (a << 8) | x as u32);
    let s0 = b[idlen];
    let slen = s0.leading_zeros() as usize + 1;
    if slen > 8 || b.len() < idlen + slen {
        return None;
    }
    let mut v = (s0 as u64) & (0xFF >> slen);
    let mut all_ones = v == (0xFF >> slen) as u64;
    for &x in &b[idlen + 1..idlen + slen] {
        v = (v << 8) | x as u64;
        all_ones &= x == 0xFF;
    }
    Some((id, (!all_ones).then_some(v), idlen + slen))
}

fn uint(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |a, &x| (a << 8) | x as u64)
}

/// Relative timecode of a (Simple)Block payload: track vint, then a big-endian i16.
fn block_timecode(p: &[u8]) -> Option<i16> {
    let tl = p.first()?.leading_zeros() as usize + 1;
    let b = p.get(tl..tl + 2)?;
    Some(i16::from_be_bytes([b[0], b[1]]))
}

/// One rebuilt cluster of a sample.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The cluster's timecode in the sample (TimecodeScale units, checked to be 1 ms).
    pub timecode: i64,
    /// The element's blocks (everything after the Timecode), shared by every connection.
    pub body: Bytes,
    /// Per block: its byte range in `body` and its relative timecode (ms).
    pub blocks: Vec<(Range<usize>, i16)>,
    /// Offset in `body` of the first SimpleBlock's flags byte (keyframe bit 0x80).
    first_flags: Option<usize>,
}

impl Cluster {
    /// Cluster ID, 8-byte size, then Timecode with an 8-byte value: 22 bytes.
    pub fn head(&self, timecode: u64) -> [u8; 22] {
        let mut h = [0u8; 22];
        h[..4].copy_from_slice(&CLUSTER.to_be_bytes());
        let size = (10 + self.body.len()) as u64;
        h[4] = 0x01;
        h[5..12].copy_from_slice(&size.to_be_bytes()[1..]);
        h[12] = 0xE7;
        h[13] = 0x88;
        h[14..].copy_from_slice(&timecode.to_be_bytes());
        h
    }
}

/// A sample ready for replay.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub header: Bytes,
    pub clusters: Vec<Cluster>,
    /// Time one pass of the sample covers (ms): a loop adds this to every timecode.
    pub span_ms: i64,
    /// Bytes one pass sends (header excluded).
    pub pass_bytes: u64,
}

impl Sample {
    pub fn load(path: &std::path::Path) -> anyhow::Result<Sample> {
        let data = std::fs::read(path)?;
        let bad = |what: &str| anyhow::anyhow!("{}: {what}", path.display());
        let (id, size, hl) = header(&data).ok_or_else(|| bad("no EBML header"))?;
        anyhow::ensure!(id == EBML, bad("not EBML"));
        let mut pos = hl + size.ok_or_else(|| bad("EBML header of unknown size"))? as usize;
        let (id, _, hl) = header(&data[pos..]).ok_or_else(|| bad("no Segment"))?;
        anyhow::ensure!(id == SEGMENT, bad("no Segment"));
        pos += hl;
        let mut first_cluster = None;
        let mut clusters = Vec::new();
        while pos < data.len() {
            let (id, size, hl) = header(&data[pos..]).ok_or_else(|| bad("truncated"))?;
            let size = size.ok_or_else(|| bad("unknown-size element in Segment"))? as usize;
            let payload = &data[pos + hl..pos + hl + size];
            if id == INFO {
                check_timecode_scale(payload).map_err(|e| bad(&e))?;
            }
            if id == CLUSTER {
                first_cluster.get_or_insert(pos);
                clusters.push(rebuild_cluster(payload).ok_or_else(|| bad("bad cluster"))?);
            }
            pos += hl + size;
        }
        let first = first_cluster.ok_or_else(|| bad("no cluster"))?;
        let last = clusters.last().unwrap();
        let interval = clusters[0]
            .blocks
            .get(1)
            .map(|b| b.1 as i64 - clusters[0].blocks[0].1 as i64)
            .unwrap_or(33)
            .max(1);
        let span_ms =
            last.timecode + last.blocks.last().map(|b| b.1 as i64).unwrap_or(0) + interval;
        let pass_bytes = clusters.iter().map(|c| 22 + c.body.len() as u64).sum();
        Ok(Sample {
            name: path.file_name().unwrap().to_string_lossy().into_owned(),
            header: Bytes::copy_from_slice(&data[..first]),
            clusters,
            span_ms,
            pass_bytes,
        })
    }

    /// A variant whose fragments span `n` clusters: the keyframe flag of the first block
    /// is cleared in every cluster but each `n`-th, so the server merges the clusters in
    /// between into one fragment (re-clustered, not verbatim; docs/api.md). For measuring
    /// how ingest scales with fragment size; the video is no longer decodable as sent.
    pub fn merged(&self, n: usize) -> Sample {
        let mut s = self.clone();
        for (i, c) in s.clusters.iter_mut().enumerate() {
            if n > 1 && i % n != 0 {
                if let Some(f) = c.first_flags {
                    let mut b = c.body.to_vec();
                    b[f] &= !0x80;
                    c.body = Bytes::from(b);
                }
            }
        }
        if n > 1 {
            s.name = format!("{} (keyframe every {n} clusters)", s.name);
        }
        s
    }

    /// Average bit rate of the sample (bits per second).
    pub fn bitrate(&self) -> f64 {
        self.pass_bytes as f64 * 8.0 / (self.span_ms as f64 / 1000.0)
    }
}

fn check_timecode_scale(info: &[u8]) -> Result<(), String> {
    let mut p = 0;
    while p < info.len() {
        let (id, size, hl) = header(&info[p..]).ok_or("bad Info")?;
        let size = size.ok_or("bad Info")? as usize;
        if id == TIMECODE_SCALE && uint(&info[p + hl..p + hl + size]) != 1_000_000 {
            return Err("TimecodeScale is not 1 ms".into());
        }
        p += hl + size;
    }
    Ok(())
}

fn rebuild_cluster(payload: &[u8]) -> Option<Cluster> {
    let mut p = 0;
    let mut timecode = None;
    let mut body = Vec::with_capacity(payload.len());
    let mut blocks: Vec<(Range<usize>, i16)> = Vec::new();
    let mut first_flags = None;
    while p < payload.len() {
        let (id, size, hl) = header(&payload[p..])?;
        let size = size? as usize;
        let el = &payload[p..p + hl + size];
        match id {
            TIMECODE => timecode = Some(uint(&el[hl..]) as i64),
            SIMPLE_BLOCK | BLOCK_GROUP => {
                let inner = if id == SIMPLE_BLOCK {
                    &el[hl..]
                } else {
                    let (bid, _, bhl) = header(&el[hl..])?;
                    if bid != BLOCK {
                        return None;
                    }
                    &el[hl + bhl..]
                };
                // Elements before the first block (e.g. Position) ride with it.
                let start = if blocks.is_empty() { 0 } else { body.len() };
                if blocks.is_empty() && id == SIMPLE_BLOCK {
                    let tl = inner.first()?.leading_zeros() as usize + 1;
                    first_flags = Some(body.len() + hl + tl + 2);
                }
                body.extend_from_slice(el);
                blocks.push((start..body.len(), block_timecode(inner)?));
            }
            _ => {
                // Anything else rides with the previous block (or the first one).
                body.extend_from_slice(el);
                if let Some(b) = blocks.last_mut() {
                    b.0.end = body.len();
                }
            }
        }
        p += hl + size;
    }
    Some(Cluster {
        timecode: timecode?,
        body: Bytes::from(body),
        blocks,
        first_flags,
    })
}

/// Streaming scanner of GetMedia output (see the module doc).
#[derive(Debug, Default)]
pub struct BlockScanner {
    buf: Vec<u8>,
    /// Payload bytes still to drop.
    skip: u64,
    /// Absolute timecode of the block being skipped; reported when its last byte is in.
    pending: Option<i64>,
    cluster_tc: i64,
    pub bytes: u64,
}

impl BlockScanner {
    /// Feeds bytes; calls `on_block(absolute timecode)` for every block completed.
    pub fn feed(&mut self, data: &[u8], mut on_block: impl FnMut(i64)) {
        self.bytes += data.len() as u64;
        // Skip straight through the input while nothing is buffered.
        let mut data = data;
        if self.buf.is_empty() && self.skip > 0 {
            let n = (self.skip as usize).min(data.len());
            data = &data[n..];
            self.skip -= n as u64;
            if self.skip > 0 {
                return;
            }
            if let Some(tc) = self.pending.take() {
                on_block(tc);
            }
        }
        self.buf.extend_from_slice(data);
        let mut p = 0;
        loop {
            if self.skip > 0 {
                let n = (self.skip as usize).min(self.buf.len() - p);
                p += n;
                self.skip -= n as u64;
                if self.skip > 0 {
                    break;
                }
                if let Some(tc) = self.pending.take() {
                    on_block(tc);
                }
            }
            let b = &self.buf[p..];
            let Some((id, size, hl)) = header(b) else {
                break;
            };
            match (id, size) {
                (SEGMENT | CLUSTER | BLOCK_GROUP, _) | (_, None) => p += hl,
                (TIMECODE, Some(n)) => {
                    let n = n as usize;
                    if b.len() < hl + n {
                        break;
                    }
                    self.cluster_tc = uint(&b[hl..hl + n]) as i64;
                    p += hl + n;
                }
                (SIMPLE_BLOCK | BLOCK, Some(n)) => {
                    if b.len() < hl + 4 {
                        break;
                    }
                    let rel = block_timecode(&b[hl..]).unwrap_or(0);
                    p += hl;
                    if n == 0 {
                        on_block(self.cluster_tc + rel as i64);
                    } else {
                        self.pending = Some(self.cluster_tc + rel as i64);
                        self.skip = n;
                    }
                }
                (_, Some(n)) => {
                    p += hl;
                    self.skip = n;
                }
            }
        }
        self.buf.drain(..p);
    }
}
