//! The fragmenter: turns one PutMedia body (pushed in arbitrary chunks) into sessions,
//! fragments and errors. Sans-IO like `mkv`: the async driver in `ingest` pushes bytes
//! with their arrival time and drains [`Output`]s.
//!
//! The cutting rule (see `docs/design/ingest.md`): a fragment begins at every video
//! keyframe, at the start of a cluster or inside one; the cluster's *first video block*
//! decides (audio may come first). A cluster without a video keyframe is merged into the
//! current fragment; a stream without a video track cuts one fragment per cluster. A
//! fragment that is exactly one producer cluster is kept verbatim; any other is rebuilt
//! as one known-size cluster whose block timecodes are re-based, so every stored fragment
//! is one keyframe-led cluster.

mod builder;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::Bytes;

use crate::mkv::{self, Event, ids};
use builder::{Builder, Item};

/// `AWS_KINESISVIDEO_END_OF_FRAGMENT`: closes the current fragment; never stored.
pub const END_OF_FRAGMENT: &str = "AWS_KINESISVIDEO_END_OF_FRAGMENT";

/// PutMedia ErrorIds this module produces.
pub mod error_id {
    pub const FRAGMENT_TOO_LARGE: u32 = 4001;
    pub const FRAGMENT_TOO_LONG: u32 = 4002;
    pub const TIMECODE_NOT_MONOTONIC: u32 = 4004;
    pub const INVALID_MKV: u32 = 4006;
    pub const METADATA_LIMIT: u32 = 4009;
    pub const UNDECLARED_TRACK: u32 = 4010;
    pub const MISSING_TRACK_FRAMES: u32 = 4011;
    pub const TOO_MANY_TRACKS: u32 = 4012;
}

/// Limits the fragmenter enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_fragment_bytes: u64,
    pub max_fragment_duration_ms: i64,
    pub max_tracks: usize,
    pub max_metadata_tags: usize,
    pub max_tag_name_bytes: usize,
    pub max_tag_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_fragment_bytes: 50_000_000,
            max_fragment_duration_ms: 20_000,
            max_tracks: 3,
            max_metadata_tags: 10,
            max_tag_name_bytes: 128,
            max_tag_value_bytes: 256,
        }
    }
}

/// How cluster timecodes map to producer time (`x-amzn-fragment-timecode-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimecodeMode {
    /// Cluster timecodes are epoch time.
    Absolute,
    /// Cluster timecodes are offsets from the producer start time (epoch ms).
    Relative { start_ms: i64 },
}

/// A new producer session: its header elements and track list.
#[derive(Debug, Clone)]
pub struct SessionHeader {
    /// The EBML header element followed by the Segment's pre-cluster level-1 elements
    /// (SeekHead, Info, Tracks, Tags, …), all verbatim.
    pub header: Bytes,
    pub ebml_header_len: usize,
    pub timecode_scale_ns: u64,
    pub tracks: Vec<mkv::TrackEntry>,
}

/// The start of a fragment (BUFFERING).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentStart {
    /// Fragmenter-local id linking the outputs of one fragment.
    pub local_id: u64,
    /// Cluster timecode of the fragment (the producer's, or the re-based one), as sent in acks.
    pub cluster_timecode: u64,
    pub producer_ts_ms: i64,
    pub server_ts_ms: i64,
}

/// One frame of an open fragment, for the live hand-off.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub local_id: u64,
    pub track: u64,
    pub keyframe: bool,
    /// Absolute timecode in TimecodeScale units.
    pub timecode: i64,
    /// The SimpleBlock/BlockGroup, relative timecode re-based onto the fragment's cluster timecode.
    pub block: Bytes,
}

/// A complete fragment (RECEIVED), ready to persist.
#[derive(Debug, Clone, PartialEq)]
pub struct Fragment {
    pub local_id: u64,
    pub cluster_timecode: u64,
    pub producer_ts_ms: i64,
    pub server_ts_ms: i64,
    pub duration_ms: i64,
    /// Exactly one cluster.
    pub cluster: Bytes,
    /// Whether `cluster` is the producer's cluster byte for byte.
    pub verbatim: bool,
    pub metadata: Vec<(String, String)>,
    pub frame_count: usize,
}

/// A rejected fragment or session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentError {
    pub error_id: u32,
    /// The fragment it concerns, if it had started.
    pub local_id: Option<u64>,
    /// Cluster timecode to echo in the ack.
    pub timecode: Option<u64>,
    pub message: String,
    /// The body cannot be read further; the session ends.
    pub fatal: bool,
}

/// What the fragmenter produces, in order.
#[derive(Debug, Clone)]
pub enum Output {
    Session(SessionHeader),
    FragmentStart(FragmentStart),
    Frame(Frame),
    FragmentEnd(Fragment),
    Error(FragmentError),
}

#[derive(Debug, Default)]
struct Session {
    header: Vec<u8>,
    ebml_header_len: usize,
    in_segment: bool,
    timecode_scale_ns: u64,
    tracks: Vec<mkv::TrackEntry>,
    timing: TrackTiming,
    announced: bool,
    last_cluster_tc: Option<u64>,
}

/// The cluster being read.
#[derive(Debug, Default)]
struct ClusterState {
    header: Bytes,
    timecode: Option<u64>,
    arrival_ms: i64,
    /// Items not yet given to a fragment: children before the first video block, and
    /// audio blocks that precede it.
    lead: Vec<Item>,
    /// A fragment owns this cluster's items from now on (it started here, or the
    /// cluster was merged into the open one).
    attached: bool,
    /// Blocks of this cluster are ignored (its timecode went backwards).
    skip: bool,
}

/// Per-session timing facts the builder needs for durations.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrackTiming {
    /// Track → DefaultDuration in TimecodeScale units.
    pub default_ticks: HashMap<u64, u64>,
    pub video: HashSet<u64>,
}

/// The PutMedia body → fragments state machine.
#[derive(Debug)]
pub struct Fragmenter {
    reader: mkv::Reader,
    limits: Limits,
    mode: TimecodeMode,
    session: Option<Session>,
    cluster: Option<ClusterState>,
    current: Option<Builder>,
    /// Producer metadata that arrived between fragments; goes to the next one.
    pending_metadata: Vec<(String, String)>,
    /// Blocks are dropped until the next fragment start (after a fragment error).
    skipping: bool,
    next_local_id: u64,
    last_fragment_producer_ms: Option<i64>,
    out: VecDeque<Output>,
    fatal: bool,
    now_ms: i64,
    /// Video frames dropped because no keyframe had started a fragment yet.
    pub dropped_leading_frames: u64,
}

impl Fragmenter {
    pub fn new(limits: Limits, mode: TimecodeMode) -> Self {
        let reader_limits = mkv::Limits {
            // A single block may be as large as a fragment, plus headroom for headers.
            max_element_size: limits.max_fragment_bytes.saturating_add(1 << 20),
            ..mkv::Limits::default()
        };
        Self {
            reader: mkv::Reader::new(reader_limits),
            limits,
            mode,
            session: None,
            cluster: None,
            current: None,
            pending_metadata: Vec::new(),
            skipping: false,
            next_local_id: 0,
            last_fragment_producer_ms: None,
            out: VecDeque::new(),
            fatal: false,
            now_ms: 0,
            dropped_leading_frames: 0,
        }
    }

    /// Whether a fatal error ended the session; further input is ignored.
    pub fn is_fatal(&self) -> bool {
        self.fatal
    }

    /// Bytes held in memory (reader buffer, the open fragment, the cluster lead).
    pub fn buffered_bytes(&self) -> usize {
        let lead: usize = self
            .cluster
            .as_ref()
            .map_or(0, |c| c.lead.iter().map(Item::len).sum());
        self.reader.buffered() + self.current.as_ref().map_or(0, |b| b.bytes as usize) + lead
    }

    /// Feeds bytes that arrived at `now_ms`.
    pub fn push(&mut self, data: &[u8], now_ms: i64) {
        if self.fatal {
            return;
        }
        self.now_ms = now_ms;
        self.reader.push(data);
        while !self.fatal {
            match self.reader.next_event() {
                Ok(Some(ev)) => self.on_event(ev),
                Ok(None) => break,
                Err(e) => self.fail_mkv(e),
            }
        }
    }

    /// The body ended: closes open elements and the last fragment.
    pub fn finish(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
        while !self.fatal {
            match self.reader.finish() {
                Ok(Some(ev)) => self.on_event(ev),
                Ok(None) => break,
                Err(e) => self.fail_mkv(e),
            }
        }
        self.close_open_fragment();
    }

    /// Closes the open fragment without more input (idle timeout, shutdown): the blocks
    /// received so far are whole, so the fragment is complete.
    pub fn close_open_fragment(&mut self) {
        if !self.fatal {
            self.close_cluster();
            self.complete_current();
        }
    }

    /// Next output, if any.
    pub fn poll(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn fail_mkv(&mut self, e: mkv::Error) {
        let b = self.current.as_ref();
        let (id, tc) = (b.map(|b| b.local_id), b.map(|b| b.cluster_timecode));
        self.fatal_error(
            error_id::INVALID_MKV,
            id,
            tc,
            format!("input is not valid MKV: {e}"),
        );
    }

    fn fatal_error(
        &mut self,
        error_id: u32,
        local_id: Option<u64>,
        timecode: Option<u64>,
        message: String,
    ) {
        self.fatal = true;
        self.current = None;
        self.cluster = None;
        self.out.push_back(Output::Error(FragmentError {
            error_id,
            local_id,
            timecode,
            message,
            fatal: true,
        }));
    }

    fn error(
        &mut self,
        error_id: u32,
        local_id: Option<u64>,
        timecode: Option<u64>,
        message: String,
    ) {
        self.out.push_back(Output::Error(FragmentError {
            error_id,
            local_id,
            timecode,
            message,
            fatal: false,
        }));
    }

    /// Rejects the open fragment and drops input until the next fragment starts.
    fn reject_current(&mut self, error_id: u32, timecode: Option<u64>, message: String) {
        let b = self.current.take();
        self.skipping = true;
        let (id, tc) = (
            b.as_ref().map(|b| b.local_id),
            timecode.or(b.as_ref().map(|b| b.cluster_timecode)),
        );
        self.error(error_id, id, tc, message);
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::EbmlHeader { raw, .. } => {
                self.close_open_fragment();
                self.session = Some(Session {
                    ebml_header_len: raw.len(),
                    header: raw.to_vec(),
                    timecode_scale_ns: 1_000_000,
                    ..Session::default()
                });
                self.skipping = false;
                self.last_fragment_producer_ms = None;
            }
            Event::SegmentStart { offset, .. } => match self.session.as_mut() {
                Some(s) if !s.in_segment => s.in_segment = true,
                _ => self.fatal_error(
                    error_id::INVALID_MKV,
                    None,
                    None,
                    format!("Segment without its own EBML header: offset={offset}"),
                ),
            },
            Event::TopLevel { id, raw, offset } => self.on_top_level(id, raw, offset),
            Event::Skipped { .. } => {}
            Event::ClusterStart {
                raw_header, offset, ..
            } => self.on_cluster_start(raw_header, offset),
            Event::ClusterTimecode { raw, value, .. } => self.on_cluster_timecode(raw, value),
            Event::Block(b) => self.on_block(b),
            Event::ClusterChild { raw, .. } => {
                let Some(c) = self.cluster.as_mut() else {
                    return;
                };
                if c.skip {
                } else if c.attached {
                    self.append(Item::Child(raw));
                } else {
                    c.lead.push(Item::Child(raw));
                }
            }
            Event::ClusterEnd { .. } => self.close_cluster(),
            Event::SegmentEnd { .. } => self.close_open_fragment(),
        }
    }

    fn on_top_level(&mut self, id: u32, raw: Bytes, offset: u64) {
        let Some(s) = self.session.as_mut() else {
            let msg = format!("element before the EBML header: offset={offset}");
            return self.fatal_error(error_id::INVALID_MKV, None, None, msg);
        };
        if !s.announced {
            // Header elements of the session, kept verbatim for GetMedia.
            match id {
                ids::INFO => match mkv::parse_info(&raw) {
                    Ok(info) => s.timecode_scale_ns = info.timecode_scale.max(1),
                    Err(e) => {
                        return self.fatal_error(
                            error_id::INVALID_MKV,
                            None,
                            None,
                            format!("bad Info: {e}"),
                        );
                    }
                },
                ids::TRACKS => match mkv::parse_tracks(&raw) {
                    Ok(tracks) if tracks.len() > self.limits.max_tracks => {
                        let msg = format!(
                            "too many tracks: tracks={} max={}",
                            tracks.len(),
                            self.limits.max_tracks
                        );
                        return self.fatal_error(error_id::TOO_MANY_TRACKS, None, None, msg);
                    }
                    Ok(tracks) => {
                        s.timing.video = tracks
                            .iter()
                            .filter(|t| t.track_type == 1)
                            .map(|t| t.number)
                            .collect();
                        s.timing.default_ticks = tracks
                            .iter()
                            .filter_map(|t| {
                                t.default_duration
                                    .map(|d| (t.number, d / s.timecode_scale_ns.max(1)))
                            })
                            .collect();
                        s.tracks = tracks;
                    }
                    Err(e) => {
                        return self.fatal_error(
                            error_id::INVALID_MKV,
                            None,
                            None,
                            format!("bad Tracks: {e}"),
                        );
                    }
                },
                _ => {}
            }
            s.header.extend_from_slice(&raw);
            return;
        }
        if id == ids::TAGS {
            match mkv::parse_tags(&raw) {
                Ok(tags) => self.on_fragment_tags(tags),
                Err(e) => {
                    self.fatal_error(error_id::INVALID_MKV, None, None, format!("bad Tags: {e}"))
                }
            }
        }
        // Other level-1 elements after the first cluster (Cues, SeekHead, …) belong to
        // no fragment.
    }

    fn on_fragment_tags(&mut self, tags: Vec<mkv::SimpleTag>) {
        let (end, meta): (Vec<_>, Vec<_>) = flatten(tags)
            .into_iter()
            .partition(|(n, _)| n == END_OF_FRAGMENT);
        if !meta.is_empty() {
            let lim = &self.limits;
            let held = self
                .current
                .as_ref()
                .map_or(self.pending_metadata.len(), |b| b.metadata.len());
            let too_long = meta
                .iter()
                .find(|(n, v)| {
                    n.len() > lim.max_tag_name_bytes || v.len() > lim.max_tag_value_bytes
                })
                .map(|(n, v)| {
                    format!(
                        "metadata tag too long: name_bytes={} value_bytes={}",
                        n.len(),
                        v.len()
                    )
                });
            let too_many = (held + meta.len() > lim.max_metadata_tags).then(|| {
                format!(
                    "too many metadata tags: count={} max={}",
                    held + meta.len(),
                    lim.max_metadata_tags
                )
            });
            match (too_long.or(too_many), self.current.as_mut()) {
                (Some(msg), Some(_)) => self.reject_current(error_id::METADATA_LIMIT, None, msg),
                (Some(msg), None) => {
                    self.pending_metadata.clear();
                    self.error(error_id::METADATA_LIMIT, None, None, msg);
                }
                (None, Some(b)) => b.metadata.extend(meta),
                (None, None) => self.pending_metadata.extend(meta),
            }
        }
        if !end.is_empty() {
            self.complete_current();
        }
    }

    fn on_cluster_start(&mut self, raw_header: Bytes, offset: u64) {
        self.close_cluster();
        let s = match self.session.as_mut() {
            Some(s) if s.in_segment && !s.tracks.is_empty() => s,
            _ => {
                let msg =
                    format!("Cluster before EBML header, Segment and Tracks: offset={offset}");
                return self.fatal_error(error_id::INVALID_MKV, None, None, msg);
            }
        };
        if !s.announced {
            s.announced = true;
            let header = SessionHeader {
                header: Bytes::from(std::mem::take(&mut s.header)),
                ebml_header_len: s.ebml_header_len,
                timecode_scale_ns: s.timecode_scale_ns,
                tracks: s.tracks.clone(),
            };
            self.out.push_back(Output::Session(header));
        }
        self.cluster = Some(ClusterState {
            header: raw_header,
            arrival_ms: self.now_ms,
            ..ClusterState::default()
        });
    }

    fn on_cluster_timecode(&mut self, raw: Bytes, value: u64) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if c.timecode.is_some() {
            return self.fatal_error(
                error_id::INVALID_MKV,
                None,
                Some(value),
                "Cluster has two Timecode elements".into(),
            );
        }
        let s = self.session.as_mut().expect("cluster implies session");
        if ticks_to_ns(i128::from(value), s.timecode_scale_ns).is_none() {
            let msg = format!(
                "cluster time out of range: timecode={value} timecode_scale_ns={}",
                s.timecode_scale_ns
            );
            return self.fatal_error(error_id::INVALID_MKV, None, Some(value), msg);
        }
        c.timecode = Some(value);
        c.lead.push(Item::Child(raw));
        if let Some(prev) = s.last_cluster_tc
            && value < prev
        {
            c.skip = true;
            c.lead.clear();
            // The open fragment ends before the out-of-order cluster.
            self.complete_current();
            let msg = format!("cluster timecode went backwards: timecode={value} previous={prev}");
            return self.error(error_id::TIMECODE_NOT_MONOTONIC, None, Some(value), msg);
        }
        s.last_cluster_tc = Some(value);
        if s.timing.video.is_empty() {
            // No video track: every cluster is a fragment.
            self.complete_current_before(Some(value as i64));
            self.start_fragment(None);
        }
    }

    fn on_block(&mut self, block: mkv::Block) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if c.skip {
            return;
        }
        let Some(tc) = c.timecode else {
            let msg = format!("block before the Cluster Timecode: offset={}", block.offset);
            return self.fatal_error(error_id::INVALID_MKV, None, None, msg);
        };
        let s = self.session.as_ref().expect("cluster implies session");
        if !s.tracks.iter().any(|t| t.number == block.track) {
            let msg = format!(
                "block for undeclared track: track={} offset={}",
                block.track, block.offset
            );
            return self.reject_current(error_id::UNDECLARED_TRACK, Some(tc), msg);
        }
        // Readers demux what is stored (`media::demux`): the lace table must describe
        // the block, and the block's time must fit in i64 ns.
        if let Err(e) = block.laces() {
            return self.fail_mkv(e);
        }
        let abs = i128::from(tc) + i128::from(block.timecode);
        if ticks_to_ns(abs, s.timecode_scale_ns).is_none() {
            let msg = format!(
                "block time out of range: timecode={abs} timecode_scale_ns={} offset={}",
                s.timecode_scale_ns, block.offset
            );
            return self.fatal_error(error_id::INVALID_MKV, None, Some(tc), msg);
        }
        let abs = abs as i64;
        let is_video = s.timing.video.contains(&block.track);
        let key = is_video && block.keyframe;
        let item = Item::Block { block, abs };
        if c.attached {
            if key {
                // A keyframe inside the cluster: the open fragment ends here.
                if let Some(b) = self.current.as_mut() {
                    b.verbatim = false;
                }
                self.complete_current_before(Some(abs));
                self.start_fragment(Some(abs));
            }
            return self.append(item);
        }
        if !is_video {
            // Audio before the cluster's first video block waits for it.
            c.lead.push(item);
            return;
        }
        c.attached = true;
        if key {
            self.complete_current_before(Some(abs));
            self.start_fragment(None);
        } else {
            let lead = std::mem::take(&mut c.lead);
            self.merge_into_current(lead);
        }
        self.append(item);
    }

    /// Items of a cluster that did not start a fragment join the open one, which is then
    /// no longer a single producer cluster.
    fn merge_into_current(&mut self, lead: Vec<Item>) {
        if let Some(b) = self.current.as_mut() {
            b.verbatim = false;
        }
        for item in lead {
            self.append(item);
        }
    }

    fn close_cluster(&mut self) {
        let Some(mut c) = self.cluster.take() else {
            return;
        };
        if !c.skip && !c.attached && c.lead.iter().any(|i| matches!(i, Item::Block { .. })) {
            // A cluster with no video block: merged into the open fragment.
            let lead = std::mem::take(&mut c.lead);
            self.merge_into_current(lead);
        }
    }

    /// Starts a fragment in the current cluster: at its start (`None`, taking the lead
    /// items) or at a keyframe inside it (`Some(absolute timecode)`).
    fn start_fragment(&mut self, mid_cluster: Option<i64>) {
        self.skipping = false;
        let local_id = self.next_local_id;
        self.next_local_id += 1;
        let c = self
            .cluster
            .as_mut()
            .expect("fragment starts inside a cluster");
        c.attached = true;
        let (cluster_timecode, server_ts_ms, lead, header) = match mid_cluster {
            None => (
                c.timecode.unwrap_or(0),
                c.arrival_ms,
                std::mem::take(&mut c.lead),
                Some(c.header.clone()),
            ),
            Some(abs) => (abs.max(0) as u64, self.now_ms, Vec::new(), None),
        };
        let s = self.session.as_ref().expect("cluster implies session");
        let producer_ts_ms = self.producer_ms(cluster_timecode, s.timecode_scale_ns);
        let mut b = Builder::new(local_id, cluster_timecode, s.timecode_scale_ns, header);
        b.server_ts_ms = server_ts_ms;
        b.producer_ts_ms = producer_ts_ms;
        b.metadata = std::mem::take(&mut self.pending_metadata);
        self.current = Some(b);
        self.out.push_back(Output::FragmentStart(FragmentStart {
            local_id,
            cluster_timecode,
            producer_ts_ms,
            server_ts_ms,
        }));
        for item in lead {
            self.append(item);
        }
    }

    /// Adds an item to the open fragment (dropping it when there is none).
    fn append(&mut self, item: Item) {
        let Some(b) = self.current.as_mut().filter(|_| !self.skipping) else {
            if matches!(item, Item::Block { .. }) {
                self.dropped_leading_frames += 1;
            }
            return;
        };
        match b.push(item) {
            Ok(Some(frame)) => self.out.push_back(Output::Frame(frame)),
            Ok(None) => {}
            Err(msg) => return self.reject_current(error_id::FRAGMENT_TOO_LONG, None, msg),
        }
        if b.bytes > self.limits.max_fragment_bytes {
            let msg = format!(
                "fragment larger than the limit: bytes>{} max={}",
                b.bytes, self.limits.max_fragment_bytes
            );
            self.reject_current(error_id::FRAGMENT_TOO_LARGE, None, msg);
        }
    }

    fn producer_ms(&self, cluster_timecode: u64, scale_ns: u64) -> i64 {
        let ms = (u128::from(cluster_timecode) * u128::from(scale_ns) / 1_000_000)
            .min(i64::MAX as u128) as i64;
        match self.mode {
            TimecodeMode::Absolute => ms,
            TimecodeMode::Relative { start_ms } => start_ms.saturating_add(ms),
        }
    }

    fn complete_current(&mut self) {
        self.complete_current_before(None);
    }

    /// Closes the open fragment; `next_start` is the presentation time of the frame that
    /// begins the next one, when known (it can give the last frame its length).
    fn complete_current_before(&mut self, next_start: Option<i64>) {
        let Some(b) = self.current.take() else { return };
        let s = self.session.as_ref().expect("fragment implies session");
        let (id, tc) = (Some(b.local_id), Some(b.cluster_timecode));
        let missing: Vec<u64> = s
            .tracks
            .iter()
            .map(|t| t.number)
            .filter(|t| !b.tracks_seen.contains(t))
            .collect();
        if !missing.is_empty() {
            let msg = format!("fragment has no frame for declared tracks: tracks={missing:?}");
            return self.error(error_id::MISSING_TRACK_FRAMES, id, tc, msg);
        }
        let frag = b.finish(&s.timing, next_start);
        if frag.duration_ms > self.limits.max_fragment_duration_ms {
            let msg = format!(
                "fragment longer than the limit: duration_ms={} max_ms={}",
                frag.duration_ms, self.limits.max_fragment_duration_ms
            );
            return self.error(error_id::FRAGMENT_TOO_LONG, id, tc, msg);
        }
        if let Some(prev) = self.last_fragment_producer_ms
            && frag.producer_ts_ms < prev
        {
            let msg = format!(
                "fragment starts before the previous one: producer_ms={} previous_ms={prev}",
                frag.producer_ts_ms
            );
            return self.error(error_id::TIMECODE_NOT_MONOTONIC, id, tc, msg);
        }
        self.last_fragment_producer_ms = Some(frag.producer_ts_ms);
        self.out.push_back(Output::FragmentEnd(frag));
    }
}

/// `ticks × scale_ns` when it fits in i64 ns (the range stored times must keep).
fn ticks_to_ns(ticks: i128, scale_ns: u64) -> Option<i64> {
    ticks
        .checked_mul(i128::from(scale_ns))
        .and_then(|ns| i64::try_from(ns).ok())
}

/// Flattens Tags into (name, string value) pairs; nested SimpleTags follow their parent.
fn flatten(tags: Vec<mkv::SimpleTag>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(t: mkv::SimpleTag, out: &mut Vec<(String, String)>) {
        let v = match &t.value {
            mkv::TagValue::String(s) => s.clone(),
            mkv::TagValue::Binary(b) => hex::encode(b),
            mkv::TagValue::Empty => String::new(),
        };
        out.push((t.name.clone(), v));
        for c in t.children {
            walk(c, out);
        }
    }
    for t in tags {
        walk(t, &mut out);
    }
    out
}
