//! MKV writing for GetMedia chunks and re-clustered fragments: element/ID/size encoding,
//! scalar elements, the unknown-size Segment header, known-size Clusters, AWS-style
//! Tags (4-byte size vints everywhere, no Targets, byte-compatible with real GetMedia
//! output), re-emission of producer SimpleTags, and block timecode rebasing.

use bytes::Bytes;

use super::block::Block;
use super::elements::{SimpleTag, TagValue};
use super::ids;
use super::vint;

pub use super::vint::{write_id, write_size, write_unknown_size};

/// Appends `id`, the shortest size vint for `payload.len()`, and `payload`.
pub fn write_element(out: &mut Vec<u8>, id: u32, payload: &[u8]) {
    write_id(out, id);
    write_size(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// Appends an element whose size vint is exactly 4 bytes (`10 xx xx xx`) when the
/// payload fits (< 2^28 - 1 bytes), else the shortest form. AWS writes its tags so.
pub fn write_element_4(out: &mut Vec<u8>, id: u32, payload: &[u8]) {
    write_id(out, id);
    if !vint::write_size_len(out, payload.len() as u64, 4) {
        write_size(out, payload.len() as u64);
    }
    out.extend_from_slice(payload);
}

/// Unsigned integer element in the fewest bytes (at least one).
pub fn write_uint(out: &mut Vec<u8>, id: u32, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = (value.leading_zeros() / 8).min(7) as usize;
    write_element(out, id, &bytes[skip..]);
}

/// String / UTF-8 element (no NUL terminator).
pub fn write_string(out: &mut Vec<u8>, id: u32, value: &str) {
    write_element(out, id, value.as_bytes());
}

/// 8-byte float element.
pub fn write_float(out: &mut Vec<u8>, id: u32, value: f64) {
    write_element(out, id, &value.to_be_bytes());
}

/// `18 53 80 67 01 FF FF FF FF FF FF FF`: a Segment of unknown size, as AWS GetMedia
/// writes it.
pub fn segment_header_unknown(out: &mut Vec<u8>) {
    write_id(out, ids::SEGMENT);
    write_unknown_size(out, 8);
}

/// Cluster ID and the shortest size vint for a payload of `size` bytes.
pub fn cluster_header_known(out: &mut Vec<u8>, size: u64) {
    write_id(out, ids::CLUSTER);
    write_size(out, size);
}

/// A minimal Matroska EBML header (version 1, MaxIDLength 4, MaxSizeLength 8,
/// DocTypeVersion/ReadVersion 2), as the KVS producer SDK writes it.
pub fn write_ebml_header(out: &mut Vec<u8>, doc_type: &str) {
    let mut p = Vec::with_capacity(32);
    write_uint(&mut p, ids::EBML_VERSION, 1);
    write_uint(&mut p, ids::EBML_READ_VERSION, 1);
    write_uint(&mut p, ids::EBML_MAX_ID_LENGTH, 4);
    write_uint(&mut p, ids::EBML_MAX_SIZE_LENGTH, 8);
    write_string(&mut p, ids::DOC_TYPE, doc_type);
    write_uint(&mut p, ids::DOC_TYPE_VERSION, 2);
    write_uint(&mut p, ids::DOC_TYPE_READ_VERSION, 2);
    write_element(out, ids::EBML, &p);
}

/// One `Tags > Tag > SimpleTag{TagName, TagString}…` element exactly like AWS GetMedia:
/// 4-byte size vints on every element, no Targets, one SimpleTag per pair in order.
pub fn write_tags(out: &mut Vec<u8>, tags: &[(&str, &str)]) {
    let mut tag = Vec::new();
    for (name, value) in tags {
        let mut st = Vec::with_capacity(name.len() + value.len() + 16);
        write_element_4(&mut st, ids::TAG_NAME, name.as_bytes());
        write_element_4(&mut st, ids::TAG_STRING, value.as_bytes());
        write_element_4(&mut tag, ids::SIMPLE_TAG, &st);
    }
    let mut tags_payload = Vec::with_capacity(tag.len() + 8);
    write_element_4(&mut tags_payload, ids::TAG, &tag);
    write_element_4(out, ids::TAGS, &tags_payload);
}

/// Re-emits SimpleTags (with nested children and string/binary/empty values) as one
/// `Tags > Tag` element with shortest size vints. Does nothing for an empty slice.
pub fn write_simple_tags_raw(out: &mut Vec<u8>, tags: &[SimpleTag]) {
    if tags.is_empty() {
        return;
    }
    let mut tag = Vec::new();
    for t in tags {
        write_simple_tag(&mut tag, t);
    }
    let mut tags_payload = Vec::with_capacity(tag.len() + 8);
    write_element(&mut tags_payload, ids::TAG, &tag);
    write_element(out, ids::TAGS, &tags_payload);
}

fn write_simple_tag(out: &mut Vec<u8>, t: &SimpleTag) {
    let mut p = Vec::new();
    write_string(&mut p, ids::TAG_NAME, &t.name);
    match &t.value {
        TagValue::String(s) => write_string(&mut p, ids::TAG_STRING, s),
        TagValue::Binary(b) => write_element(&mut p, ids::TAG_BINARY, b),
        TagValue::Empty => {}
    }
    for c in &t.children {
        write_simple_tag(&mut p, c);
    }
    write_element(out, ids::SIMPLE_TAG, &p);
}

/// A copy of the block's raw SimpleBlock/BlockGroup bytes with the int16 relative
/// timecode replaced by `new_timecode`. Everything else is kept byte for byte.
pub fn rebase_block(block: &Block, new_timecode: i16) -> Bytes {
    let mut raw = block.raw.to_vec();
    let at = block.timecode_offset();
    if let Some(slot) = raw.get_mut(at..at + 2) {
        slot.copy_from_slice(&new_timecode.to_be_bytes());
    }
    Bytes::from(raw)
}

/// A known-size Cluster: header, `Timecode(timecode)` first, then `children_raw`
/// (complete raw elements such as blocks from [`rebase_block`]) verbatim.
pub fn build_cluster(timecode: u64, children_raw: &[Bytes]) -> Vec<u8> {
    let mut tc = Vec::with_capacity(11);
    write_uint(&mut tc, ids::TIMECODE, timecode);
    let size = tc.len() + children_raw.iter().map(|c| c.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size + 12);
    cluster_header_known(&mut out, size as u64);
    out.extend_from_slice(&tc);
    for c in children_raw {
        out.extend_from_slice(c);
    }
    out
}
