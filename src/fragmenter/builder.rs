//! One fragment being assembled: its items in arrival order, and how it becomes exactly
//! one cluster — the producer's bytes verbatim when the fragment is one whole producer
//! cluster, otherwise a rebuilt known-size cluster with re-based block timecodes.

use std::collections::HashSet;

use bytes::{Bytes, BytesMut};

use super::{Fragment, Frame, TrackTiming};
use crate::mkv;

/// A cluster child in arrival order.
#[derive(Debug, Clone)]
pub(super) enum Item {
    /// Timecode, CRC-32, Position, PrevSize, Void, …: kept only for verbatim clusters.
    Child(Bytes),
    /// A SimpleBlock or BlockGroup with its absolute timecode (TimecodeScale units).
    Block { block: mkv::Block, abs: i64 },
}

impl Item {
    pub(super) fn len(&self) -> usize {
        match self {
            Item::Child(b) => b.len(),
            Item::Block { block, .. } => block.raw.len(),
        }
    }
}

#[derive(Debug)]
struct StoredBlock {
    /// Raw bytes re-based onto the fragment's cluster timecode.
    raw: Bytes,
    abs: i64,
    track: u64,
    duration: Option<u64>,
}

/// A fragment under construction.
#[derive(Debug)]
pub(super) struct Builder {
    pub local_id: u64,
    pub cluster_timecode: u64,
    pub timecode_scale_ns: u64,
    /// The producer's cluster header, when the fragment began at a cluster start.
    header: Option<Bytes>,
    /// Still exactly one whole producer cluster.
    pub verbatim: bool,
    pub server_ts_ms: i64,
    pub producer_ts_ms: i64,
    pub metadata: Vec<(String, String)>,
    /// Verbatim view: every child in order (blocks as received).
    raw_items: Vec<Bytes>,
    blocks: Vec<StoredBlock>,
    /// Bytes held (drives the size limit and memory accounting).
    pub bytes: u64,
    pub tracks_seen: HashSet<u64>,
}

impl Builder {
    pub fn new(
        local_id: u64,
        cluster_timecode: u64,
        timecode_scale_ns: u64,
        header: Option<Bytes>,
    ) -> Self {
        Self {
            local_id,
            cluster_timecode,
            timecode_scale_ns,
            verbatim: header.is_some(),
            bytes: header.as_ref().map_or(0, |h| h.len() as u64),
            header,
            server_ts_ms: 0,
            producer_ts_ms: 0,
            metadata: Vec::new(),
            raw_items: Vec::new(),
            blocks: Vec::new(),
            tracks_seen: HashSet::new(),
        }
    }

    /// Adds an item; a block yields the frame for the live hand-off. Errors when a block
    /// lies too far from the fragment start for a 16-bit relative timecode.
    pub fn push(&mut self, item: Item) -> Result<Option<Frame>, String> {
        match item {
            Item::Child(raw) => {
                self.bytes += raw.len() as u64;
                if self.verbatim {
                    self.raw_items.push(raw);
                }
                Ok(None)
            }
            Item::Block { block, abs } => {
                let rel = i128::from(abs) - i128::from(self.cluster_timecode);
                let rel16 = i16::try_from(rel).map_err(|_| {
                    format!(
                        "block timecode too far from the fragment start for one cluster: offset_ticks={rel} timecode={abs}"
                    )
                })?;
                let raw = if rel16 == block.timecode {
                    block.raw.clone()
                } else {
                    mkv::writer::rebase_block(&block, rel16)
                };
                self.bytes += block.raw.len() as u64;
                if self.verbatim {
                    self.raw_items.push(block.raw.clone());
                }
                self.tracks_seen.insert(block.track);
                self.blocks.push(StoredBlock {
                    raw: raw.clone(),
                    abs,
                    track: block.track,
                    duration: block.duration,
                });
                Ok(Some(Frame {
                    local_id: self.local_id,
                    track: block.track,
                    keyframe: block.keyframe,
                    timecode: abs,
                    block: raw,
                }))
            }
        }
    }

    /// The finished fragment; `next_start` is the next fragment's first presentation
    /// time when a keyframe (or, audio only, a cluster) ends this one.
    pub fn finish(self, timing: &TrackTiming, next_start: Option<i64>) -> Fragment {
        let duration_ms = self.duration_ticks(timing, next_start) as i128
            * self.timecode_scale_ns as i128
            / 1_000_000;
        let frame_count = self.blocks.len();
        let cluster = match (&self.header, self.verbatim) {
            (Some(h), true) => {
                let mut out = BytesMut::with_capacity(self.bytes as usize);
                out.extend_from_slice(h);
                for r in &self.raw_items {
                    out.extend_from_slice(r);
                }
                out.freeze()
            }
            _ => {
                let children: Vec<Bytes> = self.blocks.iter().map(|b| b.raw.clone()).collect();
                Bytes::from(mkv::writer::build_cluster(self.cluster_timecode, &children))
            }
        };
        Fragment {
            local_id: self.local_id,
            cluster_timecode: self.cluster_timecode,
            producer_ts_ms: self.producer_ts_ms,
            server_ts_ms: self.server_ts_ms,
            duration_ms: duration_ms.clamp(0, i64::MAX as i128) as i64,
            cluster,
            verbatim: self.verbatim && self.header.is_some(),
            metadata: self.metadata,
            frame_count,
        }
    }

    /// The fragment's presentation span, in TimecodeScale units: from its earliest to its
    /// latest presentation time plus that last frame's length. Block timecodes are
    /// presentation times, so B-frames need nothing special. It is measured on the video
    /// frames when there are any: audio is interleaved by decode time (ffmpeg's AAC blocks
    /// lead a B-frame stream's clusters by up to three frames) and is not what the
    /// fragment shows. A frame's length is its BlockDuration, else its track's
    /// DefaultDuration, else the distance to `next_start` (the next fragment's first
    /// presentation time) when that is at most two frame intervals, else the smallest
    /// interval between the measured presentation times, else 0.
    fn duration_ticks(&self, timing: &TrackTiming, next_start: Option<i64>) -> i64 {
        let has_video = self.blocks.iter().any(|b| timing.video.contains(&b.track));
        let measured: Vec<&StoredBlock> = self
            .blocks
            .iter()
            .filter(|b| !has_video || timing.video.contains(&b.track))
            .collect();
        let mut pts: Vec<i64> = measured.iter().map(|b| b.abs).collect();
        pts.sort_unstable();
        let (Some(&first), Some(&last)) = (pts.first(), pts.last()) else {
            return 0;
        };
        let gap = pts
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]))
            .filter(|d| *d > 0)
            .min()
            .unwrap_or(0);
        let to_next = next_start
            .map(|n| n.saturating_sub(last))
            .filter(|d| *d > 0 && *d <= gap.saturating_mul(2));
        let end = measured
            .iter()
            .filter(|b| b.abs == last)
            .map(|b| {
                let length = b
                    .duration
                    .or_else(|| timing.default_ticks.get(&b.track).copied())
                    .map(|d| i64::try_from(d).unwrap_or(i64::MAX))
                    .or(to_next)
                    .unwrap_or(gap);
                last.saturating_add(length)
            })
            .max()
            .unwrap_or(last);
        end.saturating_sub(first).max(0)
    }
}
