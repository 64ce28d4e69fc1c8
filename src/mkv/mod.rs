//! Matroska (MKV/WebM) support for streamvault: a sans-IO incremental reader that turns
//! a PutMedia body (any chunking, down to one byte) into a flat sequence of [`Event`]s
//! with the exact original bytes of every element, parsers for the buffered header
//! elements (EBML header, Info, Tracks, Tags) and SimpleBlock/BlockGroup headers, and
//! a small writer used to build GetMedia chunks and re-clustered fragments.
//!
//! Layout: [`vint`] (EBML variable-length integers), [`ids`] (element IDs),
//! [`ebml`] (child iteration and scalar decoding inside a buffered element),
//! [`block`] (block headers), [`elements`] (Info/Tracks/Tags parsers), [`reader`]
//! (the incremental [`Reader`]) and [`writer`]. The design decision (hand-written
//! reader rather than `ebml-iterable`) is recorded in `docs/design/mkv-reader.md`.
//!
//! Error offsets: errors from the [`Reader`] carry absolute stream offsets; errors from
//! the element parsers carry offsets relative to the start of the `raw` slice given to
//! them (the reader rebases them when it parses an element itself).

pub mod block;
pub mod ebml;
pub mod elements;
pub mod ids;
pub mod reader;
pub mod vint;
pub mod writer;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_captures;
#[cfg(test)]
mod tests_writer;

use bytes::Bytes;

pub use block::{Block, Lacing, parse_block_header};
pub use elements::{
    AudioInfo, EbmlHeader, Info, SimpleTag, TagValue, TrackEntry, VideoInfo, parse_ebml_header,
    parse_info, parse_tags, parse_tracks,
};
pub use reader::Reader;

/// Errors of the reader and the element parsers. Never produced by a panic path: every
/// malformed input maps to one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The bytes are not valid EBML/Matroska at `offset`.
    #[error("invalid MKV at offset {offset}: {reason}")]
    Invalid { offset: u64, reason: String },
    /// An element declares a size above the configured limit; nothing was allocated.
    #[error("MKV element {id:#X} at offset {offset} declares {size} bytes, limit is {limit}")]
    TooLarge {
        offset: u64,
        id: u32,
        size: u64,
        limit: u64,
    },
    /// The input ended inside the element (or open known-size Segment/Cluster) that
    /// starts at `offset`.
    #[error("MKV input truncated inside the element starting at offset {offset}")]
    Truncated { offset: u64 },
}

impl Error {
    pub(crate) fn invalid(offset: u64, reason: impl Into<String>) -> Self {
        Error::Invalid {
            offset,
            reason: reason.into(),
        }
    }

    /// The same error with its offset moved by `base` (relative → absolute).
    pub fn rebased(self, base: u64) -> Self {
        match self {
            Error::Invalid { offset, reason } => Error::Invalid {
                offset: offset.saturating_add(base),
                reason,
            },
            Error::TooLarge {
                offset,
                id,
                size,
                limit,
            } => Error::TooLarge {
                offset: offset.saturating_add(base),
                id,
                size,
                limit,
            },
            Error::Truncated { offset } => Error::Truncated {
                offset: offset.saturating_add(base),
            },
        }
    }

    /// Offset carried by the error.
    pub fn offset(&self) -> u64 {
        match self {
            Error::Invalid { offset, .. }
            | Error::TooLarge { offset, .. }
            | Error::Truncated { offset } => *offset,
        }
    }
}

/// Memory limits of the [`Reader`]. Declared sizes are checked before anything is
/// buffered, so an oversized element costs no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest element the reader will buffer (blocks, BlockGroups, other Cluster
    /// children). Default 64 MiB.
    pub max_element_size: u64,
    /// Largest EBML header or buffered level-1 element (Info, Tracks, Tags, SeekHead,
    /// Chapters, small unknown ones). Default 1 MiB.
    pub max_header_element_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_element_size: 64 << 20,
            max_header_element_size: 1 << 20,
        }
    }
}

/// One step of the reader's walk over the stream. `offset`s are absolute positions in
/// the pushed byte stream; `raw`/`raw_header` are the exact original bytes (including
/// element ID and size), so a consumer can store elements verbatim.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An EBML header (the first element, and again at the start of every new session
    /// or GetMedia chunk). `doc_type` has trailing NULs stripped.
    EbmlHeader {
        offset: u64,
        raw: Bytes,
        doc_type: String,
    },
    /// Header of a Segment; `size` is `None` for unknown size.
    SegmentStart {
        offset: u64,
        raw_header: Bytes,
        size: Option<u64>,
    },
    /// A complete level-1 child of the Segment other than Cluster, Void and Cues:
    /// Info, Tracks, Tags, SeekHead, Chapters, Attachments, CRC-32, unknown IDs.
    TopLevel { offset: u64, id: u32, raw: Bytes },
    /// A level-1 element that was skipped without being buffered: always Void and
    /// Cues, and Attachments / unknown IDs larger than `max_header_element_size`.
    /// Emitted once the whole element has been consumed; only the header is kept.
    Skipped {
        offset: u64,
        id: u32,
        raw_header: Bytes,
        size: u64,
    },
    /// Header of a Cluster; `size` is `None` for unknown size.
    ClusterStart {
        offset: u64,
        raw_header: Bytes,
        size: Option<u64>,
    },
    /// The Cluster's Timecode element.
    ClusterTimecode { offset: u64, raw: Bytes, value: u64 },
    /// A SimpleBlock or BlockGroup.
    Block(Block),
    /// Any other Cluster child (PrevSize, Position, CRC-32, Void, SilentTracks, unknown).
    ClusterChild { offset: u64, id: u32, raw: Bytes },
    /// The Cluster ended; `offset` is its end offset.
    ClusterEnd { offset: u64 },
    /// The Segment ended; `offset` is its end offset.
    SegmentEnd { offset: u64 },
}

impl Event {
    /// Absolute offset of the event (start of the element, or end for *End events).
    pub fn offset(&self) -> u64 {
        match self {
            Event::EbmlHeader { offset, .. }
            | Event::SegmentStart { offset, .. }
            | Event::TopLevel { offset, .. }
            | Event::Skipped { offset, .. }
            | Event::ClusterStart { offset, .. }
            | Event::ClusterTimecode { offset, .. }
            | Event::ClusterChild { offset, .. }
            | Event::ClusterEnd { offset }
            | Event::SegmentEnd { offset } => *offset,
            Event::Block(b) => b.offset,
        }
    }
}
