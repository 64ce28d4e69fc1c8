//! Walking inside one fully buffered EBML element: checking that a byte slice is exactly
//! one element of an expected ID, iterating its children with strict bounds checks
//! (a child that runs past its parent or has an unknown size is an error), and decoding
//! the scalar types (unsigned int, float, NUL-padded string). Offsets in errors are
//! relative to the start of the slice the walk began on.

use super::Error;
use super::vint::{self, Size, VintRead};

/// A parsed element header: ID, header length (ID + size bytes) and declared size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u32,
    pub header_len: usize,
    pub size: Size,
}

/// Parses an element header at the front of `buf`. `Ok(None)` = more bytes needed.
/// `offset` is only used for error reporting.
pub fn read_header(buf: &[u8], offset: u64) -> Result<Option<Header>, Error> {
    let (id, id_len) = match vint::read_id(buf) {
        VintRead::Ok(id, len) => (id, len),
        VintRead::Incomplete => return Ok(None),
        VintRead::Invalid(r) => return Err(Error::invalid(offset, r)),
    };
    let rest = buf.get(id_len..).unwrap_or(&[]);
    let (size, size_len) = match vint::read_size(rest) {
        VintRead::Ok(s, len) => (s, len),
        VintRead::Incomplete => return Ok(None),
        VintRead::Invalid(r) => {
            return Err(Error::invalid(offset, format!("element {id:#X}: {r}")));
        }
    };
    Ok(Some(Header {
        id,
        header_len: id_len + size_len,
        size,
    }))
}

/// Checks that `raw` is exactly one complete element with ID `expected` and returns its
/// header length (the payload is `raw[header_len..]`).
pub fn open(raw: &[u8], expected: u32) -> Result<usize, Error> {
    let h = match read_header(raw, 0)? {
        Some(h) => h,
        None => return Err(Error::Truncated { offset: 0 }),
    };
    if h.id != expected {
        return Err(Error::invalid(
            0,
            format!("expected element {expected:#X}, found {:#X}", h.id),
        ));
    }
    let Size::Known(size) = h.size else {
        return Err(Error::invalid(0, "unknown size not allowed here"));
    };
    let payload = raw.len() - h.header_len;
    if size != payload as u64 {
        return Err(if size > payload as u64 {
            Error::Truncated { offset: 0 }
        } else {
            Error::invalid(0, "trailing bytes after element")
        });
    }
    Ok(h.header_len)
}

/// One child element found by [`Children`].
#[derive(Debug, Clone, Copy)]
pub struct Child<'a> {
    pub id: u32,
    /// Offset of the child's first header byte, relative to the iterated slice.
    pub offset: usize,
    pub header_len: usize,
    /// The child's payload.
    pub data: &'a [u8],
}

/// Iterator over the children of a master element held in `buf[start..end]`.
/// Yields an error (and then stops) on a malformed or overflowing child.
pub struct Children<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Children<'a> {
    /// Children of the payload `buf[start..end]`; `end` is clamped to `buf.len()`.
    pub fn new(buf: &'a [u8], start: usize, end: usize) -> Self {
        let end = end.min(buf.len());
        Children {
            buf,
            pos: start.min(end),
            end,
        }
    }

    /// Children of the element `raw` (which must be exactly one element of `id`).
    pub fn of(raw: &'a [u8], id: u32) -> Result<Self, Error> {
        let hl = open(raw, id)?;
        Ok(Children::new(raw, hl, raw.len()))
    }
}

impl<'a> Iterator for Children<'a> {
    type Item = Result<Child<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.end {
            return None;
        }
        let at = self.pos;
        let window = self.buf.get(at..self.end).unwrap_or(&[]);
        let result = match read_header(window, at as u64) {
            Err(e) => Err(e),
            Ok(None) => Err(Error::invalid(
                at as u64,
                "element header runs past its parent",
            )),
            Ok(Some(h)) => match h.size {
                Size::Unknown => Err(Error::invalid(
                    at as u64,
                    format!("unknown size not allowed for element {:#X}", h.id),
                )),
                Size::Known(size) => {
                    let avail = (window.len() - h.header_len) as u64;
                    if size > avail {
                        Err(Error::invalid(
                            at as u64,
                            format!("element {:#X} runs past the end of its parent", h.id),
                        ))
                    } else {
                        let size = size as usize;
                        let data_start = h.header_len;
                        self.pos = at + h.header_len + size;
                        Ok(Child {
                            id: h.id,
                            offset: at,
                            header_len: h.header_len,
                            data: &window[data_start..data_start + size],
                        })
                    }
                }
            },
        };
        if result.is_err() {
            self.pos = self.end;
        }
        Some(result)
    }
}

/// Big-endian unsigned integer of 0–8 bytes.
pub fn read_uint(data: &[u8], offset: usize) -> Result<u64, Error> {
    if data.len() > 8 {
        return Err(Error::invalid(
            offset as u64,
            "unsigned integer longer than 8 bytes",
        ));
    }
    Ok(data.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
}

/// IEEE float of 0, 4 or 8 bytes (0 bytes = 0.0).
pub fn read_float(data: &[u8], offset: usize) -> Result<f64, Error> {
    match data.len() {
        0 => Ok(0.0),
        4 => Ok(f64::from(f32::from_be_bytes([
            data[0], data[1], data[2], data[3],
        ]))),
        8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(data);
            Ok(f64::from_be_bytes(b))
        }
        n => Err(Error::invalid(offset as u64, format!("float of {n} bytes"))),
    }
}

/// String or UTF-8 element: everything from the first NUL on is padding (GStreamer
/// writes `V_MPEG4/ISO/AVC\0`). Invalid UTF-8 is replaced, never rejected.
pub fn read_string(data: &[u8]) -> String {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}
