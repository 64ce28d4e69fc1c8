//! Blocks: the [`Block`] record the reader emits for every SimpleBlock (0xA3) and
//! BlockGroup (0xA0), and [`parse_block_header`], which decodes the block header (track
//! number vint, relative int16 timecode, flags) from an element's exact raw bytes. For a
//! BlockGroup it also finds the Block (0xA1), BlockDuration and ReferenceBlock children.
//! [`Block::laces`] splits a laced block into its frames; every size in the lace table
//! is checked against the block, so a hostile table is an error, never a panic.

use std::ops::Range;

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

    /// [`Block::frame`] as a shared slice of `raw`.
    pub fn frame_bytes(&self) -> Bytes {
        match self.raw.get(self.frame_offset..self.frame_end) {
            Some(_) => self.raw.slice(self.frame_offset..self.frame_end),
            None => Bytes::new(),
        }
    }

    /// Offset in `raw` of the big-endian int16 relative timecode.
    pub fn timecode_offset(&self) -> usize {
        self.frame_offset.saturating_sub(3)
    }

    /// Where the frames of the block lie, as ranges into [`Block::frame`]: one range for
    /// an unlaced block, else one per lace (the lace table excluded). A lace table that
    /// does not describe the block exactly (truncated, sizes past the end, sizes that
    /// overflow, negative EBML sizes, fixed sizes that do not divide the data) is
    /// [`Error::Invalid`] at the block's offset.
    pub fn laces(&self) -> Result<Vec<Range<usize>>, Error> {
        lace_ranges(self.lacing, self.frame())
            .map_err(|why| Error::invalid(self.offset, format!("bad lacing: {why}")))
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

/// The lace table of `data` (a block's bytes after its flags), checked against it.
fn lace_ranges(lacing: Lacing, data: &[u8]) -> Result<Vec<Range<usize>>, &'static str> {
    if lacing == Lacing::None {
        return Ok(std::iter::once(0..data.len()).collect());
    }
    let (&count, _) = data.split_first().ok_or("no lace count")?;
    let n = usize::from(count) + 1;
    let mut pos = 1usize;
    // Sizes of all laces but the last (which takes the rest).
    let mut sizes: Vec<usize> = Vec::with_capacity(n - 1);
    match lacing {
        Lacing::None => {}
        Lacing::Fixed => {
            let body = data.len() - 1;
            if !body.is_multiple_of(n) {
                return Err("fixed-size laces do not divide the block");
            }
            sizes.resize(n - 1, body / n);
        }
        Lacing::Xiph => {
            for _ in 1..n {
                let mut size = 0usize;
                loop {
                    let v = *data.get(pos).ok_or("lace sizes truncated")?;
                    pos += 1;
                    size = size
                        .checked_add(usize::from(v))
                        .ok_or("lace size overflows")?;
                    if v != 255 {
                        break;
                    }
                }
                sizes.push(size);
            }
        }
        Lacing::Ebml => {
            let mut prev = 0i128;
            for i in 1..n {
                let (v, len) = match vint::read_vint(data.get(pos..).unwrap_or(&[])) {
                    VintRead::Ok((v, _), len) => (i128::from(v), len),
                    _ => return Err("lace size is not a vint"),
                };
                pos += len;
                // The first size is unsigned; the others are signed deltas (value minus
                // half the vint's range).
                let size = if i == 1 {
                    v
                } else {
                    prev + v - ((1i128 << (7 * len - 1)) - 1)
                };
                sizes.push(usize::try_from(size).map_err(|_| "lace size out of range")?);
                prev = size;
            }
        }
    }
    let mut out = Vec::with_capacity(n);
    for s in sizes {
        let end = pos
            .checked_add(s)
            .filter(|e| *e <= data.len())
            .ok_or("lace sizes exceed the block")?;
        out.push(pos..end);
        pos = end;
    }
    out.push(pos..data.len());
    Ok(out)
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
