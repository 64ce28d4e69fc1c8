//! The incremental, sans-IO MKV [`Reader`]: bytes go in with [`Reader::push`] in any
//! chunking, [`Event`]s come out of [`Reader::next_event`]. It keeps a stack of the open
//! Segment/Cluster (known or unknown size), buffers exactly one element at a time
//! (EBML header, a level-1 header element, or one Cluster child) and skips Void, Cues
//! and large unknown level-1 elements without buffering them. All limits are checked
//! against declared sizes before any byte of an element is buffered.
//!
//! Rules (see also `docs/design/mkv-reader.md`):
//! - The stream must start with the EBML magic `1A 45 DF A3`.
//! - Level 0 may hold EBML headers, Segments and Void. Anything else is invalid.
//! - Only Segment and Cluster may have unknown size. An unknown-size Cluster ends at the
//!   next level-0/level-1 ID; an unknown-size Segment ends at the next EBML header or
//!   Segment; both end at [`Reader::finish`].
//! - A known-size element ends at its size; a child running past any known-size
//!   ancestor is invalid, and so is a level-0/level-1 ID inside a known-size parent
//!   that cannot hold it.

use bytes::{Buf, Bytes, BytesMut};

use super::block::parse_block_header;
use super::ebml::{Header, read_header, read_uint};
use super::elements::parse_ebml_header;
use super::ids;
use super::vint::Size;
use super::{Error, Event, Limits};

const MAGIC: [u8; 4] = [0x1A, 0x45, 0xDF, 0xA3];

/// Bytes of element header the reader may hold beyond one element (ID 4 + size 8).
pub const MAX_HEADER_LEN: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Segment,
    Cluster,
}

#[derive(Debug, Clone, Copy)]
struct Open {
    kind: Container,
    start: u64,
    /// Absolute end offset for known sizes.
    end: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    EbmlHeader,
    TopLevel,
    Timecode,
    Block,
    ClusterChild,
}

#[derive(Debug)]
enum State {
    /// Waiting for the next element header.
    Header,
    /// Waiting until the whole element (`total` bytes from `pos`) is buffered.
    Buffer { id: u32, total: usize, kind: Kind },
    /// Discarding the payload of a skipped element; the header is already consumed.
    Skip {
        id: u32,
        start: u64,
        raw_header: Bytes,
        size: u64,
        remaining: u64,
    },
}

/// Incremental MKV reader. See the module docs for the structural rules.
///
/// Memory: after `next_event` returned `Ok(None)`, [`Reader::buffered`] is at most the
/// largest allowed element plus [`MAX_HEADER_LEN`]; between those calls it also holds
/// whatever was pushed and not yet consumed, so push in bounded chunks and drain.
#[derive(Debug)]
pub struct Reader {
    limits: Limits,
    buf: BytesMut,
    /// Absolute offset of `buf[0]`, i.e. bytes consumed so far.
    pos: u64,
    stack: Vec<Open>,
    state: State,
    error: Option<Error>,
}

impl Reader {
    pub fn new(limits: Limits) -> Self {
        Reader {
            limits,
            buf: BytesMut::new(),
            pos: 0,
            stack: Vec::new(),
            state: State::Header,
            error: None,
        }
    }

    /// Appends newly arrived bytes. Bytes of a skipped element are dropped right away,
    /// and so is everything pushed after an error.
    pub fn push(&mut self, mut data: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if let State::Skip { remaining, .. } = &mut self.state
            && self.buf.is_empty()
        {
            let n = (*remaining).min(data.len() as u64) as usize;
            *remaining -= n as u64;
            self.pos += n as u64;
            data = &data[n..];
        }
        self.buf.extend_from_slice(data);
    }

    /// Absolute byte offset consumed so far (start of the next event's element).
    pub fn offset(&self) -> u64 {
        self.pos
    }

    /// Bytes currently held.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next event, `Ok(None)` if more input is needed. Errors are sticky.
    pub fn next_event(&mut self) -> Result<Option<Event>, Error> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let r = self.step();
        if let Err(e) = &r {
            self.fail(e.clone());
        }
        r
    }

    /// Records a sticky error and releases the buffer.
    fn fail(&mut self, e: Error) {
        self.error = Some(e);
        self.buf = BytesMut::new();
    }

    /// Call once the input has ended (repeatedly, until `Ok(None)`): first returns any
    /// events still decodable from buffered bytes, then one end event per open
    /// unknown-size Cluster/Segment, then `Ok(None)`. If the input stopped inside an
    /// element or inside a known-size Segment/Cluster: `Err(Truncated)` with the start
    /// offset of the innermost such element. An empty input gives `Ok(None)`.
    pub fn finish(&mut self) -> Result<Option<Event>, Error> {
        if let Some(ev) = self.next_event()? {
            return Ok(Some(ev));
        }
        let truncated = match &self.state {
            State::Skip { start, .. } => Some(*start),
            State::Buffer { .. } => Some(self.pos),
            State::Header if !self.buf.is_empty() => Some(self.pos),
            State::Header => None,
        };
        let result = if let Some(offset) = truncated {
            Err(Error::Truncated { offset })
        } else {
            match self.stack.pop() {
                None => Ok(None),
                Some(open) if open.end.is_some() => Err(Error::Truncated { offset: open.start }),
                Some(open) => Ok(Some(end_event(open.kind, self.pos))),
            }
        };
        if let Err(e) = &result {
            self.fail(e.clone());
        }
        result
    }

    fn step(&mut self) -> Result<Option<Event>, Error> {
        loop {
            // Known-size containers that end exactly here.
            if let Some(top) = self.stack.last()
                && top.end == Some(self.pos)
                && matches!(self.state, State::Header)
            {
                let kind = top.kind;
                self.stack.pop();
                return Ok(Some(end_event(kind, self.pos)));
            }
            match &mut self.state {
                State::Skip {
                    id,
                    start,
                    raw_header,
                    size,
                    remaining,
                } => {
                    let n = (*remaining).min(self.buf.len() as u64) as usize;
                    self.buf.advance(n);
                    self.pos += n as u64;
                    *remaining -= n as u64;
                    if *remaining > 0 {
                        return Ok(None);
                    }
                    let ev = Event::Skipped {
                        offset: *start,
                        id: *id,
                        raw_header: raw_header.clone(),
                        size: *size,
                    };
                    self.state = State::Header;
                    return Ok(Some(ev));
                }
                State::Buffer { id, total, kind } => {
                    if self.buf.len() < *total {
                        return Ok(None);
                    }
                    let (id, total, kind) = (*id, *total, *kind);
                    let raw = self.buf.split_to(total).freeze();
                    let offset = self.pos;
                    self.pos += total as u64;
                    self.state = State::Header;
                    return complete(kind, id, offset, raw).map(Some);
                }
                State::Header => {
                    if self.pos == 0 && self.stack.is_empty() {
                        let n = self.buf.len().min(4);
                        if self.buf[..n] != MAGIC[..n] {
                            return Err(Error::invalid(0, "not an EBML stream (wrong magic)"));
                        }
                    }
                    let Some(h) = read_header(&self.buf, self.pos)? else {
                        return Ok(None);
                    };
                    if let Some(ev) = self.on_header(h)? {
                        return Ok(Some(ev));
                    }
                }
            }
        }
    }

    /// Decides what to do with the element whose header was just read. Returns an
    /// event to emit now, or `None` to continue the loop with the new state.
    fn on_header(&mut self, h: Header) -> Result<Option<Event>, Error> {
        let at = self.pos;
        let top = self.stack.last().copied();
        let parent = top.map(|o| o.kind);
        // IDs that end an unknown-size parent.
        match (parent, top) {
            (Some(Container::Cluster), Some(open))
                if ids::is_level0(h.id) || ids::is_level1(h.id) =>
            {
                if open.end.is_some() {
                    return Err(Error::invalid(
                        at,
                        format!("element {:#X} inside a known-size Cluster", h.id),
                    ));
                }
                self.stack.pop();
                return Ok(Some(Event::ClusterEnd { offset: at }));
            }
            (Some(Container::Segment), Some(open)) if ids::is_level0(h.id) => {
                if open.end.is_some() {
                    return Err(Error::invalid(
                        at,
                        format!("element {:#X} inside a known-size Segment", h.id),
                    ));
                }
                self.stack.pop();
                return Ok(Some(Event::SegmentEnd { offset: at }));
            }
            _ => {}
        }
        let known = match h.size {
            Size::Known(s) => Some(s),
            Size::Unknown => None,
        };
        let end = match known {
            Some(s) => Some(
                at.checked_add(h.header_len as u64)
                    .and_then(|v| v.checked_add(s))
                    .ok_or_else(|| Error::invalid(at, "element size overflows"))?,
            ),
            None => None,
        };
        // A child may not run past any known-size ancestor.
        let header_end = at + h.header_len as u64;
        for open in &self.stack {
            if let Some(pe) = open.end
                && end.unwrap_or(header_end) > pe
            {
                return Err(Error::invalid(
                    at,
                    format!("element {:#X} runs past the end of its parent", h.id),
                ));
            }
        }
        let is_container = matches!(
            (parent, h.id),
            (None, ids::SEGMENT) | (Some(Container::Segment), ids::CLUSTER)
        );
        if is_container {
            let kind = if h.id == ids::SEGMENT {
                Container::Segment
            } else {
                Container::Cluster
            };
            let raw_header = self.buf.split_to(h.header_len).freeze();
            self.pos = header_end;
            self.stack.push(Open {
                kind,
                start: at,
                end,
            });
            return Ok(Some(match kind {
                Container::Segment => Event::SegmentStart {
                    offset: at,
                    raw_header,
                    size: known,
                },
                Container::Cluster => Event::ClusterStart {
                    offset: at,
                    raw_header,
                    size: known,
                },
            }));
        }
        let Some(size) = known else {
            return Err(Error::invalid(
                at,
                format!("unknown size not allowed for element {:#X}", h.id),
            ));
        };
        let (kind, limit, skippable) = match parent {
            None => match h.id {
                ids::EBML => (Kind::EbmlHeader, self.header_limit(), false),
                ids::VOID => return Ok(self.skip(h, size)),
                id => {
                    return Err(Error::invalid(
                        at,
                        format!("unexpected element {id:#X} at top level"),
                    ));
                }
            },
            Some(Container::Segment) => match h.id {
                ids::VOID | ids::CUES => return Ok(self.skip(h, size)),
                ids::INFO | ids::TRACKS | ids::TAGS | ids::SEEK_HEAD | ids::CHAPTERS => {
                    (Kind::TopLevel, self.header_limit(), false)
                }
                _ => (Kind::TopLevel, self.header_limit(), true),
            },
            Some(Container::Cluster) => {
                let kind = match h.id {
                    ids::TIMECODE => Kind::Timecode,
                    ids::SIMPLE_BLOCK | ids::BLOCK_GROUP => Kind::Block,
                    _ => Kind::ClusterChild,
                };
                (kind, self.limits.max_element_size, false)
            }
        };
        if size > limit {
            if skippable {
                return Ok(self.skip(h, size));
            }
            return Err(Error::TooLarge {
                offset: at,
                id: h.id,
                size,
                limit,
            });
        }
        // size <= limit <= u64, and total fits in memory by the limit check.
        let total = usize::try_from(size)
            .ok()
            .and_then(|s| s.checked_add(h.header_len))
            .ok_or_else(|| Error::invalid(at, "element too large for this platform"))?;
        self.state = State::Buffer {
            id: h.id,
            total,
            kind,
        };
        Ok(None)
    }

    fn header_limit(&self) -> u64 {
        self.limits
            .max_header_element_size
            .min(self.limits.max_element_size)
    }

    /// Consumes the header and switches to skipping `size` payload bytes.
    fn skip(&mut self, h: Header, size: u64) -> Option<Event> {
        let start = self.pos;
        let raw_header = self.buf.split_to(h.header_len).freeze();
        self.pos += h.header_len as u64;
        self.state = State::Skip {
            id: h.id,
            start,
            raw_header,
            size,
            remaining: size,
        };
        None
    }
}

fn end_event(kind: Container, offset: u64) -> Event {
    match kind {
        Container::Segment => Event::SegmentEnd { offset },
        Container::Cluster => Event::ClusterEnd { offset },
    }
}

/// Builds the event for a fully buffered element.
fn complete(kind: Kind, id: u32, offset: u64, raw: Bytes) -> Result<Event, Error> {
    Ok(match kind {
        Kind::EbmlHeader => {
            let h = parse_ebml_header(&raw).map_err(|e| e.rebased(offset))?;
            Event::EbmlHeader {
                offset,
                raw,
                doc_type: h.doc_type,
            }
        }
        Kind::TopLevel => Event::TopLevel { offset, id, raw },
        Kind::Timecode => {
            let hl = match read_header(&raw, offset)? {
                Some(h) => h.header_len,
                None => return Err(Error::Truncated { offset }),
            };
            let value = read_uint(&raw[hl..], hl).map_err(|e| e.rebased(offset))?;
            Event::ClusterTimecode { offset, raw, value }
        }
        Kind::Block => {
            let mut b = parse_block_header(raw).map_err(|e| e.rebased(offset))?;
            b.offset = offset;
            Event::Block(b)
        }
        Kind::ClusterChild => Event::ClusterChild { offset, id, raw },
    })
}
