//! Frames out of stored fragments, for the packagers (GetClip, HLS/DASH, GetImages):
//! [`FragmentLoader`] reads and decrypts a fragment and its session header, and
//! [`demux_cluster`] turns a cluster into frames with absolute timestamps.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::index::{FragmentRecord, StreamRecord};
use crate::mkv::{self, Event, ids};
use crate::store::{BlobKind, DataKey};
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
    /// Producer time (epoch ms) of a frame of this fragment.
    pub fn frame_producer_ms(&self, f: &Frame) -> i64 {
        self.row.producer_ts_ms + (f.pts_ns - self.cluster_ns).div_euclid(1_000_000)
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

/// The frames of one stored cluster.
pub fn demux_cluster(
    cluster: &[u8],
    timecode_scale_ns: u64,
) -> std::result::Result<(i64, Vec<Frame>), mkv::Error> {
    let mut r = bare_cluster_reader(cluster);
    let scale = timecode_scale_ns as i64;
    let mut tc = 0i64;
    let mut frames = Vec::new();
    let mut on = |ev: Event, tc: &mut i64| -> std::result::Result<(), mkv::Error> {
        match ev {
            Event::ClusterTimecode { value, .. } => *tc = value as i64,
            Event::Block(b) => {
                let pts_ns = (*tc + i64::from(b.timecode)) * scale;
                for data in split_lacing(&b)? {
                    frames.push(Frame {
                        track: b.track,
                        pts_ns,
                        keyframe: b.keyframe,
                        data,
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
    Ok((tc * scale, frames))
}

/// The frames of a block: one, or several for laced blocks (all with the block's time).
fn split_lacing(b: &mkv::Block) -> std::result::Result<Vec<Bytes>, mkv::Error> {
    let data = b
        .raw
        .slice(b.frame_offset.min(b.raw.len())..b.frame_end.min(b.raw.len()));
    let bad = |why: &str| mkv::Error::Invalid {
        offset: b.offset,
        reason: format!("bad lacing: {why}"),
    };
    match b.lacing {
        mkv::Lacing::None => Ok(vec![data]),
        mkv::Lacing::Fixed => {
            let n = *data.first().ok_or_else(|| bad("empty"))? as usize + 1;
            let body = data.slice(1..);
            if body.len() % n != 0 {
                return Err(bad("fixed sizes do not divide the block"));
            }
            let each = body.len() / n;
            Ok((0..n)
                .map(|i| body.slice(i * each..(i + 1) * each))
                .collect())
        }
        mkv::Lacing::Xiph => {
            let n = *data.first().ok_or_else(|| bad("empty"))? as usize + 1;
            let mut pos = 1;
            let mut sizes = Vec::with_capacity(n);
            for _ in 0..n - 1 {
                let mut size = 0usize;
                loop {
                    let v = *data.get(pos).ok_or_else(|| bad("truncated sizes"))? as usize;
                    pos += 1;
                    size += v;
                    if v != 255 {
                        break;
                    }
                }
                sizes.push(size);
            }
            let used: usize = sizes.iter().sum();
            let last = data
                .len()
                .checked_sub(pos + used)
                .ok_or_else(|| bad("sizes exceed the block"))?;
            sizes.push(last);
            let mut out = Vec::with_capacity(n);
            for s in sizes {
                out.push(data.slice(pos..pos + s));
                pos += s;
            }
            Ok(out)
        }
        mkv::Lacing::Ebml => {
            let n = *data.first().ok_or_else(|| bad("empty"))? as usize + 1;
            let mut pos = 1;
            let mut sizes = Vec::with_capacity(n);
            let (first, len) = match mkv::vint::read_vint(&data[pos..]) {
                mkv::vint::VintRead::Ok((v, _), l) => (v as i64, l),
                _ => return Err(bad("first size")),
            };
            pos += len;
            sizes.push(first);
            for _ in 1..n - 1 {
                let (raw, len) = match mkv::vint::read_vint(&data[pos..]) {
                    mkv::vint::VintRead::Ok((v, _), l) => (v as i64, l),
                    _ => return Err(bad("size delta")),
                };
                pos += len;
                let bias = (1i64 << (7 * len - 1)) - 1;
                let prev = *sizes.last().expect("one size");
                sizes.push(prev + raw - bias);
            }
            if sizes.iter().any(|s| *s < 0) {
                return Err(bad("negative size"));
            }
            let used: i64 = sizes.iter().sum();
            let last = (data.len() as i64) - (pos as i64) - used;
            if last < 0 {
                return Err(bad("sizes exceed the block"));
            }
            sizes.push(last);
            let mut out = Vec::with_capacity(n);
            for s in sizes {
                let s = s as usize;
                out.push(data.slice(pos..pos + s));
                pos += s;
            }
            Ok(out)
        }
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
        let rec = self
            .catalog
            .index()
            .get_session(&self.stream.stream_id, session_id)
            .await?
            .ok_or_else(|| {
                Error::internal(format!("session header missing: session={session_id}"))
            })?;
        let bytes = self
            .key
            .open(BlobKind::SessionHeader, session_id, &rec.header_sealed)
            .map_err(|e| Error::internal(e.to_string()))?;
        let info = Arc::new(parse_session_header(&bytes)?);
        self.sessions.insert(session_id, info.clone());
        Ok(info)
    }

    /// Reads, decrypts and demuxes one fragment. A cluster that cannot be demuxed is an
    /// `Err` whose message says so (callers map it to their media error).
    pub async fn load(&mut self, row: &FragmentRecord) -> Result<LoadedFragment> {
        let session = self.session(row.session_id).await?;
        let cluster = self
            .catalog
            .store()
            .get_fragment(&self.key, row.seq)
            .await?;
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
}
