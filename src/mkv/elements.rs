//! Parsers for the header elements the reader hands over whole: the EBML header,
//! Segment Info, Tracks and Tags. Each takes the element's exact raw bytes (ID and size
//! included, as in [`super::Event::TopLevel`]), tolerates CRC-32/Void and unknown
//! children, strips NUL padding from strings, and applies the Matroska defaults.

use bytes::Bytes;

use super::Error;
use super::ebml::{Children, read_float, read_string, read_uint};
use super::ids;

/// Decoded EBML header (Matroska defaults for absent fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbmlHeader {
    pub version: u64,
    pub read_version: u64,
    pub max_id_length: u64,
    pub max_size_length: u64,
    /// `matroska` or `webm` normally; trailing NULs stripped.
    pub doc_type: String,
    pub doc_type_version: u64,
    pub doc_type_read_version: u64,
}

/// Parses an EBML header element (`1A 45 DF A3 …`).
pub fn parse_ebml_header(raw: &[u8]) -> Result<EbmlHeader, Error> {
    let mut h = EbmlHeader {
        version: 1,
        read_version: 1,
        max_id_length: 4,
        max_size_length: 8,
        doc_type: "matroska".to_owned(),
        doc_type_version: 1,
        doc_type_read_version: 1,
    };
    for c in Children::of(raw, ids::EBML)? {
        let c = c?;
        match c.id {
            ids::EBML_VERSION => h.version = read_uint(c.data, c.offset)?,
            ids::EBML_READ_VERSION => h.read_version = read_uint(c.data, c.offset)?,
            ids::EBML_MAX_ID_LENGTH => h.max_id_length = read_uint(c.data, c.offset)?,
            ids::EBML_MAX_SIZE_LENGTH => h.max_size_length = read_uint(c.data, c.offset)?,
            ids::DOC_TYPE => h.doc_type = read_string(c.data),
            ids::DOC_TYPE_VERSION => h.doc_type_version = read_uint(c.data, c.offset)?,
            ids::DOC_TYPE_READ_VERSION => h.doc_type_read_version = read_uint(c.data, c.offset)?,
            _ => {}
        }
    }
    Ok(h)
}

/// Segment Info.
#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    /// Nanoseconds per timecode unit; default 1,000,000 (1 ms).
    pub timecode_scale: u64,
    pub duration: Option<f64>,
    pub muxing_app: Option<String>,
    pub writing_app: Option<String>,
    pub title: Option<String>,
    pub segment_uid: Option<Bytes>,
}

/// Parses a Segment Info element (`15 49 A9 66 …`). A TimecodeScale of 0 is invalid.
pub fn parse_info(raw: &[u8]) -> Result<Info, Error> {
    let mut info = Info {
        timecode_scale: 1_000_000,
        duration: None,
        muxing_app: None,
        writing_app: None,
        title: None,
        segment_uid: None,
    };
    for c in Children::of(raw, ids::INFO)? {
        let c = c?;
        match c.id {
            ids::TIMECODE_SCALE => {
                info.timecode_scale = read_uint(c.data, c.offset)?;
                if info.timecode_scale == 0 {
                    return Err(Error::invalid(c.offset as u64, "TimecodeScale 0"));
                }
            }
            ids::DURATION => info.duration = Some(read_float(c.data, c.offset)?),
            ids::MUXING_APP => info.muxing_app = Some(read_string(c.data)),
            ids::WRITING_APP => info.writing_app = Some(read_string(c.data)),
            ids::TITLE => info.title = Some(read_string(c.data)),
            ids::SEGMENT_UID => info.segment_uid = Some(Bytes::copy_from_slice(c.data)),
            _ => {}
        }
    }
    Ok(info)
}

/// Video settings of a track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoInfo {
    pub pixel_width: u64,
    pub pixel_height: u64,
}

/// Audio settings of a track.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioInfo {
    /// Hz; default 8000.
    pub sampling_frequency: f64,
    /// Default 1.
    pub channels: u64,
    pub bit_depth: Option<u64>,
}

/// One TrackEntry.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackEntry {
    pub number: u64,
    pub uid: u64,
    /// 1 video, 2 audio, 17 subtitle, …; 0 if absent.
    pub track_type: u64,
    /// NUL padding stripped; empty if absent.
    pub codec_id: String,
    pub codec_private: Option<Bytes>,
    pub name: Option<String>,
    /// Nanoseconds per frame.
    pub default_duration: Option<u64>,
    pub video: Option<VideoInfo>,
    pub audio: Option<AudioInfo>,
}

/// Parses a Tracks element (`16 54 AE 6B …`). A TrackEntry without a non-zero
/// TrackNumber is invalid.
pub fn parse_tracks(raw: &[u8]) -> Result<Vec<TrackEntry>, Error> {
    let mut out = Vec::new();
    for c in Children::of(raw, ids::TRACKS)? {
        let c = c?;
        if c.id == ids::TRACK_ENTRY {
            out.push(parse_track_entry(
                raw,
                c.offset,
                c.header_len,
                c.data.len(),
            )?);
        }
    }
    Ok(out)
}

fn parse_track_entry(
    raw: &[u8],
    at: usize,
    header_len: usize,
    len: usize,
) -> Result<TrackEntry, Error> {
    let start = at + header_len;
    let mut t = TrackEntry {
        number: 0,
        uid: 0,
        track_type: 0,
        codec_id: String::new(),
        codec_private: None,
        name: None,
        default_duration: None,
        video: None,
        audio: None,
    };
    for c in Children::new(raw, start, start + len) {
        let c = c?;
        match c.id {
            ids::TRACK_NUMBER => t.number = read_uint(c.data, c.offset)?,
            ids::TRACK_UID => t.uid = read_uint(c.data, c.offset)?,
            ids::TRACK_TYPE => t.track_type = read_uint(c.data, c.offset)?,
            ids::CODEC_ID => t.codec_id = read_string(c.data),
            ids::CODEC_PRIVATE => t.codec_private = Some(Bytes::copy_from_slice(c.data)),
            ids::NAME => t.name = Some(read_string(c.data)),
            ids::DEFAULT_DURATION => t.default_duration = Some(read_uint(c.data, c.offset)?),
            ids::VIDEO => {
                let mut v = VideoInfo {
                    pixel_width: 0,
                    pixel_height: 0,
                };
                let s = c.offset + c.header_len;
                for g in Children::new(raw, s, s + c.data.len()) {
                    let g = g?;
                    match g.id {
                        ids::PIXEL_WIDTH => v.pixel_width = read_uint(g.data, g.offset)?,
                        ids::PIXEL_HEIGHT => v.pixel_height = read_uint(g.data, g.offset)?,
                        _ => {}
                    }
                }
                t.video = Some(v);
            }
            ids::AUDIO => {
                let mut a = AudioInfo {
                    sampling_frequency: 8000.0,
                    channels: 1,
                    bit_depth: None,
                };
                let s = c.offset + c.header_len;
                for g in Children::new(raw, s, s + c.data.len()) {
                    let g = g?;
                    match g.id {
                        ids::SAMPLING_FREQUENCY => {
                            a.sampling_frequency = read_float(g.data, g.offset)?
                        }
                        ids::CHANNELS => a.channels = read_uint(g.data, g.offset)?,
                        ids::BIT_DEPTH => a.bit_depth = Some(read_uint(g.data, g.offset)?),
                        _ => {}
                    }
                }
                t.audio = Some(a);
            }
            _ => {}
        }
    }
    if t.number == 0 {
        return Err(Error::invalid(
            at as u64,
            "TrackEntry without a TrackNumber",
        ));
    }
    Ok(t)
}

/// Value of a SimpleTag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagValue {
    /// TagString (NUL padding stripped; may be empty).
    String(String),
    Binary(Bytes),
    /// Neither TagString nor TagBinary present.
    Empty,
}

/// A SimpleTag with its nested SimpleTags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimpleTag {
    pub name: String,
    pub value: TagValue,
    pub children: Vec<SimpleTag>,
}

impl SimpleTag {
    /// Convenience constructor for a string tag without children.
    pub fn string(name: impl Into<String>, value: impl Into<String>) -> Self {
        SimpleTag {
            name: name.into(),
            value: TagValue::String(value.into()),
            children: Vec::new(),
        }
    }

    /// The string value, if this is a TagString.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            TagValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Nesting limit for SimpleTags inside SimpleTags (bounds recursion depth).
pub const MAX_TAG_DEPTH: usize = 16;

/// Parses a Tags element (`12 54 C3 67 …`) into the SimpleTags of its Tag children that
/// describe the whole segment, in order (nested SimpleTags become `children`). A Tag whose
/// Targets name a track, edition, chapter or attachment by a non-zero UID describes that
/// item, not the stream: mkvmerge writes its per-track statistics (`BPS`, `DURATION`,
/// `NUMBER_OF_FRAMES`, …) that way. Such Tags are skipped; KVS fragment metadata and the
/// end-of-fragment marker come in Tags without a UID target (the KVS producers write an
/// empty Targets).
pub fn parse_tags(raw: &[u8]) -> Result<Vec<SimpleTag>, Error> {
    let mut out = Vec::new();
    for tag in Children::of(raw, ids::TAGS)? {
        let tag = tag?;
        if tag.id != ids::TAG {
            continue;
        }
        let s = tag.offset + tag.header_len;
        if targets_an_item(raw, s, s + tag.data.len())? {
            continue;
        }
        for st in Children::new(raw, s, s + tag.data.len()) {
            let st = st?;
            if st.id == ids::SIMPLE_TAG {
                out.push(parse_simple_tag(
                    raw,
                    st.offset,
                    st.header_len,
                    st.data.len(),
                    0,
                )?);
            }
        }
    }
    Ok(out)
}

/// Whether the Tag whose children span `raw[start..end]` has Targets with a non-zero
/// track, edition, chapter or attachment UID.
fn targets_an_item(raw: &[u8], start: usize, end: usize) -> Result<bool, Error> {
    for c in Children::new(raw, start, end) {
        let c = c?;
        if c.id != ids::TARGETS {
            continue;
        }
        let s = c.offset + c.header_len;
        for t in Children::new(raw, s, s + c.data.len()) {
            let t = t?;
            if matches!(
                t.id,
                ids::TAG_TRACK_UID
                    | ids::TAG_EDITION_UID
                    | ids::TAG_CHAPTER_UID
                    | ids::TAG_ATTACHMENT_UID
            ) && read_uint(t.data, t.offset)? != 0
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn parse_simple_tag(
    raw: &[u8],
    at: usize,
    header_len: usize,
    len: usize,
    depth: usize,
) -> Result<SimpleTag, Error> {
    if depth >= MAX_TAG_DEPTH {
        return Err(Error::invalid(at as u64, "SimpleTags nested too deeply"));
    }
    let start = at + header_len;
    let mut tag = SimpleTag {
        name: String::new(),
        value: TagValue::Empty,
        children: Vec::new(),
    };
    for c in Children::new(raw, start, start + len) {
        let c = c?;
        match c.id {
            ids::TAG_NAME => tag.name = read_string(c.data),
            ids::TAG_STRING => tag.value = TagValue::String(read_string(c.data)),
            ids::TAG_BINARY => tag.value = TagValue::Binary(Bytes::copy_from_slice(c.data)),
            ids::SIMPLE_TAG => tag.children.push(parse_simple_tag(
                raw,
                c.offset,
                c.header_len,
                c.data.len(),
                depth + 1,
            )?),
            _ => {}
        }
    }
    Ok(tag)
}
