//! Blocks: the [`Block`] record the reader emits for every SimpleBlock (0xA3) and
//! BlockGroup (0xA0), and [`parse_block_header`], which decodes the block header (track
//! number vint, relative int16 timecode, flags) from an element's exact raw bytes. For a
//! BlockGroup it also finds the Block (0xA1), BlockDuration and ReferenceBlock children.

use bytes::Bytes;

use super::Error;
use super::ebml::{self, Children};
use super::ids;
use super::vint::{self, VintRead};

/// Lacing mode from the block flags (bits 0x06).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lacing {
    None,
    Xiph,
    Fixed,
    Ebml,
}

/// One SimpleBlock or BlockGroup, with its exact original bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// Absolute offset of the element (0 when parsed outside the reader).
    pub offset: u64,
    /// The whole SimpleBlock/BlockGroup element, ID and size header included.
    pub raw: Bytes,
    /// SimpleBlock (`true`) or BlockGroup (`false`).
    pub simple: bool,
    pub track: u64,
    /// Timecode relative to the Cluster Timecode, in TimecodeScale units.
    pub timecode: i16,
    /// SimpleBlock: flag 0x80. BlockGroup: no ReferenceBlock child.
    pub keyframe: bool,
    pub lacing: Lacing,
    /// BlockGroup's BlockDuration, if any.
    pub duration: Option<u64>,
    /// Offset in `raw` of the byte after the flags: the frame data, or for laced blocks
    /// the lacing header. The int16 timecode sits at `frame_offset - 3`.
    pub frame_offset: usize,
    /// End (exclusive) in `raw` of the block data: `raw.len()` for a SimpleBlock, the
    /// end of the Block child for a BlockGroup.
    pub frame_end: usize,
}

impl Block {
    /// Bytes after the block header up to the end of the block (for a BlockGroup, up to
    /// the end of its Block child).
    pub fn frame(&self) -> &[u8] {
        self.raw
            .get(self.frame_offset..self.frame_end)
            .unwrap_or(&[])
    }

    /// Offset in `raw` of the big-endian int16 relative timecode.
    pub fn timecode_offset(&self) -> usize {
        self.frame_offset.saturating_sub(3)
    }

    /// The raw flags byte (0x80 keyframe in SimpleBlocks, 0x08 invisible, 0x06 lacing,
    /// 0x01 discardable).
    pub fn flags(&self) -> u8 {
        self.raw
            .get(self.frame_offset.wrapping_sub(1))
            .copied()
            .unwrap_or(0)
    }
}

/// Decoded block header fields shared by SimpleBlock and Block.
struct Head {
    track: u64,
    timecode: i16,
    flags: u8,
    /// Offset of the byte after the flags within the block payload.
    after_flags: usize,
}

/// Decodes `track vint | int16 timecode | flags` at the front of a block payload.
fn read_head(payload: &[u8], offset: usize) -> Result<Head, Error> {
    let (track, tlen) = match vint::read_vint(payload) {
        VintRead::Ok((v, _), len) => (v, len),
        VintRead::Incomplete => {
            return Err(Error::invalid(
                offset as u64,
                "block shorter than its header",
            ));
        }
        VintRead::Invalid(r) => {
            return Err(Error::invalid(
                offset as u64,
                format!("block track number: {r}"),
            ));
        }
    };
    let Some(rest) = payload.get(tlen..tlen + 3) else {
        return Err(Error::invalid(
            offset as u64,
            "block shorter than its header",
        ));
    };
    if track == 0 {
        return Err(Error::invalid(offset as u64, "block track number 0"));
    }
    let flags = rest[2];
    let after_flags = tlen + 3;
    if flags & 0x06 != 0 && payload.len() <= after_flags {
        return Err(Error::invalid(
            offset as u64,
            "laced block without a lace count",
        ));
    }
    Ok(Head {
        track,
        timecode: i16::from_be_bytes([rest[0], rest[1]]),
        flags,
        after_flags,
    })
}

fn lacing(flags: u8) -> Lacing {
    match (flags >> 1) & 0x03 {
        0 => Lacing::None,
        1 => Lacing::Xiph,
        2 => Lacing::Fixed,
        _ => Lacing::Ebml,
    }
}

/// Parses a complete SimpleBlock or BlockGroup element (`raw` must be exactly the
/// element, header included). The returned block has `offset` 0; error offsets are
/// relative to `raw`.
pub fn parse_block_header(raw: Bytes) -> Result<Block, Error> {
    let h = match ebml::read_header(&raw, 0)? {
        Some(h) => h,
        None => return Err(Error::Truncated { offset: 0 }),
    };
    match h.id {
        ids::SIMPLE_BLOCK => {
            let hl = ebml::open(&raw, ids::SIMPLE_BLOCK)?;
            let head = read_head(&raw[hl..], hl)?;
            Ok(Block {
                offset: 0,
                simple: true,
                track: head.track,
                timecode: head.timecode,
                keyframe: head.flags & 0x80 != 0,
                lacing: lacing(head.flags),
                duration: None,
                frame_offset: hl + head.after_flags,
                frame_end: raw.len(),
                raw,
            })
        }
        ids::BLOCK_GROUP => parse_block_group(raw),
        other => Err(Error::invalid(
            0,
            format!("expected SimpleBlock or BlockGroup, found {other:#X}"),
        )),
    }
}

fn parse_block_group(raw: Bytes) -> Result<Block, Error> {
    let mut head = None;
    let mut duration = None;
    let mut referenced = false;
    for child in Children::of(&raw, ids::BLOCK_GROUP)? {
        let c = child?;
        match c.id {
            ids::BLOCK => {
                if head.is_some() {
                    return Err(Error::invalid(
                        c.offset as u64,
                        "BlockGroup with two Blocks",
                    ));
                }
                let data_at = c.offset + c.header_len;
                let h = read_head(c.data, data_at)?;
                head = Some((data_at, h, data_at + c.data.len()));
            }
            ids::BLOCK_DURATION => {
                duration = Some(ebml::read_uint(c.data, c.offset)?);
            }
            ids::REFERENCE_BLOCK => referenced = true,
            _ => {}
        }
    }
    let Some((data_at, h, end)) = head else {
        return Err(Error::invalid(0, "BlockGroup without a Block"));
    };
    Ok(Block {
        offset: 0,
        simple: false,
        track: h.track,
        timecode: h.timecode,
        keyframe: !referenced,
        lacing: lacing(h.flags),
        duration,
        frame_offset: data_at + h.after_flags,
        frame_end: end,
        raw,
    })
}
