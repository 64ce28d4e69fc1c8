//! EBML variable-length integers: decoding of element IDs (1–4 bytes, marker bit kept)
//! and element sizes / block track numbers (1–8 bytes, marker bit stripped, all-ones =
//! "unknown size"), plus the matching encoders used by the writer. Pure functions on
//! byte slices; nothing here allocates except the encoders' output `Vec`s.

/// Result of trying to decode a vint from the front of a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VintRead<T> {
    /// Decoded value and the number of bytes it occupied.
    Ok(T, usize),
    /// The slice ends before the vint does; more input is needed.
    Incomplete,
    /// The bytes cannot be a vint of the allowed length.
    Invalid(&'static str),
}

/// A decoded element size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Known(u64),
    /// All value bits set (`0xFF`, `0x7F 0xFF`, …, `0x01 FF FF FF FF FF FF FF`).
    Unknown,
}

/// Length in bytes of a vint whose first byte is `first` (1..=8), or `None` for `0x00`.
#[inline]
pub fn vint_len(first: u8) -> Option<usize> {
    if first == 0 {
        None
    } else {
        Some(first.leading_zeros() as usize + 1)
    }
}

/// Decodes an element ID (marker bit kept, as IDs are conventionally written).
/// IDs longer than 4 bytes and the reserved all-zero / all-one values are invalid.
pub fn read_id(buf: &[u8]) -> VintRead<u32> {
    let Some(&first) = buf.first() else {
        return VintRead::Incomplete;
    };
    let len = match vint_len(first) {
        Some(l) if l <= 4 => l,
        _ => return VintRead::Invalid("element ID longer than 4 bytes"),
    };
    let Some(bytes) = buf.get(..len) else {
        return VintRead::Incomplete;
    };
    let mut id: u32 = 0;
    for &b in bytes {
        id = (id << 8) | u32::from(b);
    }
    let value_mask: u32 = (1u32 << (7 * len)) - 1;
    let value = id & value_mask;
    if value == 0 || value == value_mask {
        return VintRead::Invalid("reserved element ID");
    }
    VintRead::Ok(id, len)
}

/// Decodes a size vint (1–8 bytes). All value bits set means [`Size::Unknown`].
pub fn read_size(buf: &[u8]) -> VintRead<Size> {
    match read_vint(buf) {
        VintRead::Ok((value, unknown), len) => {
            let size = if unknown {
                Size::Unknown
            } else {
                Size::Known(value)
            };
            VintRead::Ok(size, len)
        }
        VintRead::Incomplete => VintRead::Incomplete,
        VintRead::Invalid(r) => VintRead::Invalid(r),
    }
}

/// Decodes a generic vint (marker stripped). Returns `(value, all_value_bits_set)`.
pub fn read_vint(buf: &[u8]) -> VintRead<(u64, bool)> {
    let Some(&first) = buf.first() else {
        return VintRead::Incomplete;
    };
    let Some(len) = vint_len(first) else {
        return VintRead::Invalid("vint longer than 8 bytes");
    };
    let Some(bytes) = buf.get(..len) else {
        return VintRead::Incomplete;
    };
    // len <= 8, so 7 * len <= 56 and the shift cannot overflow.
    let value_mask: u64 = (1u64 << (7 * len)) - 1;
    let mut v: u64 = 0;
    for &b in bytes {
        v = (v << 8) | u64::from(b);
    }
    let v = v & value_mask;
    VintRead::Ok((v, v == value_mask), len)
}

/// Number of bytes of the shortest size vint that can hold `value` (1..=8).
/// Values that would collide with the unknown-size marker get one more byte.
/// Returns `None` if `value` needs more than 8 bytes (>= 2^56 - 1).
pub fn size_len(value: u64) -> Option<usize> {
    (1..=8usize).find(|&len| value < (1u64 << (7 * len)) - 1)
}

/// Appends `value` as a size vint of exactly `len` bytes. Returns `false` (and writes
/// nothing) if it does not fit (the all-ones pattern is reserved for "unknown").
pub fn write_size_len(out: &mut Vec<u8>, value: u64, len: usize) -> bool {
    if !(1..=8).contains(&len) || value >= (1u64 << (7 * len)) - 1 {
        return false;
    }
    let marked = value | (1u64 << (7 * len));
    out.extend_from_slice(&marked.to_be_bytes()[8 - len..]);
    true
}

/// Appends `value` as the shortest size vint. Values that need more than 8 bytes
/// cannot be represented; they are clamped to the largest known size (never happens
/// for in-memory payloads).
pub fn write_size(out: &mut Vec<u8>, value: u64) {
    let len = size_len(value).unwrap_or(8);
    let value = value.min((1u64 << 56) - 2);
    write_size_len(out, value, len);
}

/// Appends the unknown-size marker of `len` bytes (`0xFF` or `0x01 FF FF FF FF FF FF FF`, …).
pub fn write_unknown_size(out: &mut Vec<u8>, len: usize) {
    let len = len.clamp(1, 8);
    let marked = (1u64 << (7 * len)) | ((1u64 << (7 * len)) - 1);
    out.extend_from_slice(&marked.to_be_bytes()[8 - len..]);
}

/// Byte length of an element ID as written (IDs keep their marker bit).
pub fn id_len(id: u32) -> usize {
    match id {
        0..=0xFF => 1,
        0x100..=0xFFFF => 2,
        0x1_0000..=0xFF_FFFF => 3,
        _ => 4,
    }
}

/// Appends an element ID in its natural (marker-included) byte form.
pub fn write_id(out: &mut Vec<u8>, id: u32) {
    let len = id_len(id);
    out.extend_from_slice(&id.to_be_bytes()[4 - len..]);
}

/// Appends a plain (non-size) vint such as a block's track number, shortest form.
pub fn write_vint(out: &mut Vec<u8>, value: u64) {
    write_size(out, value);
}
