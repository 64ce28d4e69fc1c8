//! Frames out of stored fragments, for the packagers (GetClip, HLS/DASH, GetImages):
//! [`FragmentLoader`] reads and decrypts a fragment and its session header, and
//! [`demux_cluster`] turns a cluster into frames with absolute timestamps.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::index::{FragmentRecord, StreamRecord};
use crate::mkv::{self, Event, ids};
use crate::store::DataKey;
use crate::streams::Catalog;

/// What a session header says about its tracks.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub timecode_scale_ns: u64,
    pub tracks: Vec<mkv::TrackEntry>,
}

impl SessionInfo {
    /// The first track of a type (1 video, 2 audio).
    pub fn track_of_type(&self, track_type: u64) -> Option<&mkv::TrackEntry> {
        self.tracks.iter().find(|t| t.track_type == track_type)
    }
}

/// One frame (a block's payload; laced blocks are split into their frames).
#[derive(Debug, Clone)]
pub struct Frame {
    pub track: u64,
    /// Absolute timestamp: cluster timecode + block offset, × TimecodeScale, in ns.
    /// For ABSOLUTE producers this is epoch time; for RELATIVE ones an offset from the
    /// upload's start (add the fragment's producer timestamp minus its cluster time).
    pub pts_ns: i64,
    pub keyframe: bool,
    pub data: Bytes,
}

/// A stored fragment with its frames.
#[derive(Debug, Clone)]
pub struct LoadedFragment {
    pub row: FragmentRecord,
    pub session: Arc<SessionInfo>,
    /// The cluster timecode in ns (frames' `pts_ns` are relative to the same origin).
    pub cluster_ns: i64,
    pub frames: Vec<Frame>,
}

impl LoadedFragment {
    /// Producer time (epoch ms) of a frame of this fragment (saturating: stored times are
    /// hostile input).
    pub fn frame_producer_ms(&self, f: &Frame) -> i64 {
        let ms = i128::from(self.row.producer_ts_ms)
            + (i128::from(f.pts_ns) - i128::from(self.cluster_ns)).div_euclid(1_000_000);
        ms.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }
}

/// Parses a session header blob (EBML header + level-1 elements).
pub fn parse_session_header(header: &[u8]) -> Result<SessionInfo> {
    let mut info = SessionInfo {
        timecode_scale_ns: 1_000_000,
        tracks: Vec::new(),
    };
    let bad = |e: mkv::Error| Error::internal(format!("stored session header unreadable: {e}"));
    // The stored blob has no Segment header; give the reader one after the EBML header.
    let ebml_len = super::chunk::ebml_header_len(header);
    let mut buf = header[..ebml_len].to_vec();
    mkv::writer::segment_header_unknown(&mut buf);
    buf.extend_from_slice(&header[ebml_len..]);
    let mut r = mkv::Reader::new(mkv::Limits::default());
    r.push(&buf);
    while let Some(ev) = r.next_event().map_err(bad)? {
        match ev {
            Event::TopLevel {
                id: ids::INFO, raw, ..
            } => {
                info.timecode_scale_ns = mkv::parse_info(&raw).map_err(bad)?.timecode_scale.max(1);
            }
            Event::TopLevel {
                id: ids::TRACKS,
                raw,
                ..
            } => info.tracks = mkv::parse_tracks(&raw).map_err(bad)?,
            _ => {}
        }
    }
    Ok(info)
}

/// A reader over one stored cluster: stored fragments are bare clusters, so the reader
/// is first given an EBML header and an unknown-size Segment.
pub fn bare_cluster_reader(cluster: &[u8]) -> mkv::Reader {
    let mut r = mkv::Reader::new(mkv::Limits {
        max_element_size: u64::MAX >> 8,
        ..mkv::Limits::default()
    });
    let mut h = Vec::new();
    mkv::writer::write_ebml_header(&mut h, "matroska");
    mkv::writer::segment_header_unknown(&mut h);
    r.push(&h);
    r.push(cluster);
    r
}

/// The frames of one stored cluster. Times are checked: a cluster or block time that
/// does not fit in i64 nanoseconds at `timecode_scale_ns` is an error, like a bad lace
/// table (see [`mkv::Block::laces`]).
pub fn demux_cluster(
    cluster: &[u8],
    timecode_scale_ns: u64,
) -> std::result::Result<(i64, Vec<Frame>), mkv::Error> {
    let mut r = bare_cluster_reader(cluster);
    let mut tc = 0i64;
    let mut frames = Vec::new();
    let mut on = |ev: Event, tc: &mut i64| -> std::result::Result<(), mkv::Error> {
        match ev {
            Event::ClusterTimecode { value, offset, .. } => {
                *tc = i64::try_from(value).map_err(|_| out_of_range(offset, value as i128))?;
                ticks_to_ns(i128::from(*tc), timecode_scale_ns, offset)?;
            }
            Event::Block(b) => {
                let pts_ns = ticks_to_ns(
                    i128::from(*tc) + i128::from(b.timecode),
                    timecode_scale_ns,
                    b.offset,
                )?;
                let data = b.frame_bytes();
                for lace in b.laces()? {
                    frames.push(Frame {
                        track: b.track,
                        pts_ns,
                        keyframe: b.keyframe,
                        data: data.slice(lace),
                    });
                }
            }
            _ => {}
        }
        Ok(())
    };
    while let Some(ev) = r.next_event()? {
        on(ev, &mut tc)?;
    }
    while let Some(ev) = r.finish()? {
        on(ev, &mut tc)?;
    }
    Ok((ticks_to_ns(i128::from(tc), timecode_scale_ns, 0)?, frames))
}

/// `ticks × scale` in ns, or an error when it does not fit in i64.
fn ticks_to_ns(ticks: i128, scale_ns: u64, offset: u64) -> std::result::Result<i64, mkv::Error> {
    let ns = ticks.saturating_mul(i128::from(scale_ns));
    i64::try_from(ns).map_err(|_| out_of_range(offset, ns))
}

fn out_of_range(offset: u64, ns: i128) -> mkv::Error {
    mkv::Error::Invalid {
        offset,
        reason: format!("timestamp out of range: ns={ns}"),
    }
}

/// Loads stored fragments of one stream, caching session headers.
pub struct FragmentLoader {
    catalog: Catalog,
    stream: StreamRecord,
    key: Arc<DataKey>,
    sessions: HashMap<u64, Arc<SessionInfo>>,
}

impl FragmentLoader {
    pub fn new(catalog: Catalog, stream: StreamRecord) -> Result<Self> {
        let key = catalog.data_key(&stream)?;
        Ok(Self {
            catalog,
            stream,
            key,
            sessions: HashMap::new(),
        })
    }

    pub fn stream(&self) -> &StreamRecord {
        &self.stream
    }

    /// The session a fragment belongs to.
    pub async fn session(&mut self, session_id: u64) -> Result<Arc<SessionInfo>> {
        if let Some(s) = self.sessions.get(&session_id) {
            return Ok(s.clone());
        }
        let header = self
            .catalog
            .store()
            .session_headers()
            .get(self.catalog.index().as_ref(), &self.key, session_id)
            .await
            .map_err(|e| Error::internal(e.to_string()))?;
        let info = Arc::new(parse_session_header(&header.bytes)?);
        self.sessions.insert(session_id, info.clone());
        Ok(info)
    }

    /// Reads, decrypts and demuxes one fragment. A cluster that cannot be demuxed is an
    /// `Err` whose message says so (callers map it to their media error).
    pub async fn load(&mut self, row: &FragmentRecord) -> Result<LoadedFragment> {
        let session = self.session(row.session_id).await?;
        let cluster = self.catalog.store().get_fragment(&self.key, row).await?;
        let (cluster_ns, frames) =
            demux_cluster(&cluster, session.timecode_scale_ns).map_err(|e| {
                Error::internal(format!(
                    "fragment does not demux: seq={} error={e}",
                    row.seq
                ))
            })?;
        Ok(LoadedFragment {
            row: row.clone(),
            session,
            cluster_ns,
            frames,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demuxes_a_built_cluster_and_laced_blocks() {
        // A SimpleBlock with Xiph lacing of 3 frames (sizes 2, 3, rest 1).
        let mut payload = vec![0x81, 0x00, 0x05, 0x82, 2, 2, 3];
        payload.extend_from_slice(b"aabbbc");
        let mut el = Vec::new();
        mkv::writer::write_element(&mut el, 0xA3, &payload);
        let cluster = mkv::writer::build_cluster(100, &[Bytes::from(el)]);
        let (cluster_ns, frames) = demux_cluster(&cluster, 1_000_000).unwrap();
        assert_eq!(cluster_ns, 100_000_000);
        let data: Vec<&[u8]> = frames.iter().map(|f| &f.data[..]).collect();
        assert_eq!(data, vec![&b"aa"[..], b"bbb", b"c"]);
        assert!(
            frames
                .iter()
                .all(|f| f.pts_ns == 105_000_000 && f.keyframe && f.track == 1)
        );
    }

    /// A cluster holding one SimpleBlock (track 1, timecode 5, keyframe) with `flags`
    /// lacing bits and `body` after the flags.
    fn one_block_cluster(lacing_flags: u8, body: &[u8], cluster_tc: u64) -> Vec<u8> {
        let mut payload = vec![0x81, 0x00, 0x05, 0x80 | lacing_flags];
        payload.extend_from_slice(body);
        let mut el = Vec::new();
        mkv::writer::write_element(&mut el, 0xA3, &payload);
        mkv::writer::build_cluster(cluster_tc, &[Bytes::from(el)])
    }

    #[test]
    fn a_wrapping_ebml_lace_table_is_an_error_not_a_panic() {
        // 256 laces; the first size is 2^56 - 2 and 254 zero deltas repeat it: the sizes
        // sum past i64::MAX. The old code wrapped the sum, then sliced past the end.
        let mut body = vec![0xFF, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE];
        body.extend(std::iter::repeat_n(0xBF, 254));
        body.extend_from_slice(b"tail");
        let err = demux_cluster(&one_block_cluster(0x06, &body, 0), 1_000_000).unwrap_err();
        assert!(err.to_string().contains("bad lacing"), "{err}");
    }

    #[test]
    fn hostile_lace_tables_are_errors() {
        let cases: [(u8, &[u8]); 7] = [
            // Xiph: a size past the end; sizes truncated.
            (0x02, &[1, 200, 1, 2]),
            (0x02, &[2, 255, 255]),
            // EBML: a negative delta; a size past the end; a delta that is no vint.
            (0x06, &[2, 0x82, 0x80, 1, 2, 3]),
            (0x06, &[1, 0x90, 1, 2]),
            (0x06, &[2, 0x81, 0x00]),
            // Fixed: sizes that do not divide the data; no lace count.
            (0x04, &[1, 1, 2, 3]),
            (0x04, &[]),
        ];
        for (flags, body) in cases {
            let cluster = one_block_cluster(flags, body, 0);
            assert!(
                demux_cluster(&cluster, 1_000_000).is_err(),
                "{flags:#x} {body:?}"
            );
        }
        // Well-formed EBML lacing (sizes 2, 3 via delta +1, rest 1) and fixed lacing.
        let cluster = one_block_cluster(
            0x06,
            &[2, 0x82, 0xC0, b'a', b'a', b'b', b'b', b'b', b'c'],
            0,
        );
        let (_, frames) = demux_cluster(&cluster, 1_000_000).unwrap();
        let data: Vec<&[u8]> = frames.iter().map(|f| &f.data[..]).collect();
        assert_eq!(data, vec![&b"aa"[..], b"bbb", b"c"]);
        let (_, frames) = demux_cluster(&one_block_cluster(0x04, b"\x01abcd", 0), 1).unwrap();
        assert_eq!(frames.len(), 2);
    }

    #[test]
    fn times_near_the_limits_are_errors_not_overflows() {
        let plain = one_block_cluster(0, b"x", 1);
        // Cluster timecode 1 × TimecodeScale u64::MAX, and the block offset on top.
        assert!(demux_cluster(&plain, u64::MAX).is_err());
        assert!(demux_cluster(&plain, i64::MAX as u64).is_err());
        // A cluster timecode above i64::MAX ticks.
        assert!(demux_cluster(&one_block_cluster(0, b"x", u64::MAX - 1), 1).is_err());
        // At the edge: i64::MAX ns is representable.
        let edge = one_block_cluster(0, b"x", (i64::MAX as u64) / 1_000_000 - 10);
        assert!(demux_cluster(&edge, 1_000_000).is_ok());
    }
}
