//! The byte layout of one GetMedia chunk, as real AWS GetMedia output lays it out:
//!
//! ```text
//! EBML header (the producer's)  Segment (8-byte unknown size)
//!   producer header elements (Info, Tracks, … verbatim)
//!   Tags: AWS_KINESISVIDEO_FRAGMENT_NUMBER, _SERVER_TIMESTAMP, _PRODUCER_TIMESTAMP
//!   Cluster (stored bytes verbatim; or, live, unknown size streamed frame by frame)
//!   Tags: producer fragment metadata (if any)
//!   Tags: AWS_KINESISVIDEO_MILLIS_BEHIND_NOW, _CONTINUATION_TOKEN   (GetMedia only)
//! ```
//!
//! AWS tag elements use 4-byte size fields, like AWS's own output.

use crate::clock::format_epoch_secs;
use crate::mkv::{ids, vint, writer};

pub const FRAGMENT_NUMBER: &str = "AWS_KINESISVIDEO_FRAGMENT_NUMBER";
pub const SERVER_TIMESTAMP: &str = "AWS_KINESISVIDEO_SERVER_TIMESTAMP";
pub const PRODUCER_TIMESTAMP: &str = "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP";
pub const MILLIS_BEHIND_NOW: &str = "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW";
pub const CONTINUATION_TOKEN: &str = "AWS_KINESISVIDEO_CONTINUATION_TOKEN";
pub const ERROR_CODE: &str = "AWS_KINESISVIDEO_ERROR_CODE";
pub const ERROR_ID: &str = "AWS_KINESISVIDEO_ERROR_ID";

/// Start of a chunk, up to the cluster: the producer's EBML header, a new unknown-size
/// Segment, the producer's header elements and the AWS identity tags.
pub fn prefix(
    out: &mut Vec<u8>,
    header: &[u8],
    ebml_len: usize,
    number: &str,
    server_ms: i64,
    producer_ms: i64,
) {
    let ebml_len = ebml_len.min(header.len());
    out.extend_from_slice(&header[..ebml_len]);
    writer::segment_header_unknown(out);
    out.extend_from_slice(&header[ebml_len..]);
    writer::write_tags(
        out,
        &[
            (FRAGMENT_NUMBER, number),
            (SERVER_TIMESTAMP, &format_epoch_secs(server_ms)),
            (PRODUCER_TIMESTAMP, &format_epoch_secs(producer_ms)),
        ],
    );
}

/// The producer's fragment metadata, as one Tags element (nothing when there is none).
pub fn metadata(out: &mut Vec<u8>, meta: &[(String, String)]) {
    if !meta.is_empty() {
        let pairs: Vec<(&str, &str)> = meta.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        writer::write_tags(out, &pairs);
    }
}

/// The trailing AWS tags of a GetMedia chunk.
pub fn trailer(out: &mut Vec<u8>, millis_behind_now: i64, continuation_token: &str) {
    writer::write_tags(
        out,
        &[
            (MILLIS_BEHIND_NOW, &millis_behind_now.max(0).to_string()),
            (CONTINUATION_TOKEN, continuation_token),
        ],
    );
}

/// Header of a live cluster: unknown size, then its Timecode.
pub fn live_cluster_start(out: &mut Vec<u8>, timecode: u64) {
    vint::write_id(out, ids::CLUSTER);
    vint::write_unknown_size(out, 8);
    writer::write_uint(out, ids::TIMECODE, timecode);
}

/// An error chunk: a fresh EBML header and Segment holding only the error tags, the way
/// the KVS parser library expects errors after the response has started.
pub fn error(out: &mut Vec<u8>, fragment_number: Option<&str>, code: &str, error_id: u32) {
    writer::write_ebml_header(out, "matroska");
    writer::segment_header_unknown(out);
    let id = error_id.to_string();
    let mut tags = Vec::new();
    if let Some(n) = fragment_number {
        tags.push((FRAGMENT_NUMBER, n));
    }
    tags.push((ERROR_CODE, code));
    tags.push((ERROR_ID, id.as_str()));
    writer::write_tags(out, &tags);
}

/// Length of the EBML header element at the start of a session header blob.
pub fn ebml_header_len(header: &[u8]) -> usize {
    match crate::mkv::ebml::read_header(header, 0) {
        Ok(Some(h)) => match h.size {
            vint::Size::Known(n) => (h.header_len + n as usize).min(header.len()),
            vint::Size::Unknown => 0,
        },
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mkv::{self, Event};

    #[test]
    fn a_chunk_reads_back_with_the_aws_tags_in_place() {
        let mut header = Vec::new();
        writer::write_ebml_header(&mut header, "matroska");
        let ebml_len = header.len();
        let mut info = Vec::new();
        writer::write_uint(&mut info, ids::TIMECODE_SCALE, 1_000_000);
        writer::write_element(&mut header, ids::INFO, &info);
        assert_eq!(ebml_header_len(&header), ebml_len);
        let mut out = Vec::new();
        prefix(&mut out, &header, ebml_len, "9100", 1_511_852_109_126, 5);
        live_cluster_start(&mut out, 42);
        metadata(&mut out, &[("k".into(), "v".into())]);
        trailer(&mut out, 15, "9100");
        let mut r = mkv::Reader::new(mkv::Limits::default());
        r.push(&out);
        let mut kinds = Vec::new();
        let mut tags = Vec::new();
        while let Ok(Some(ev)) = r.next_event() {
            match ev {
                Event::EbmlHeader { .. } => kinds.push("EBML"),
                Event::SegmentStart { size, .. } => {
                    assert_eq!(size, None);
                    kinds.push("Segment")
                }
                Event::TopLevel { id, raw, .. } if id == ids::TAGS => {
                    kinds.push("Tags");
                    tags.extend(
                        mkv::parse_tags(&raw)
                            .unwrap()
                            .into_iter()
                            .map(|t| (t.name.clone(), t.as_str().unwrap().to_owned())),
                    );
                }
                Event::TopLevel { id: ids::INFO, .. } => kinds.push("Info"),
                Event::ClusterStart { .. } => kinds.push("Cluster"),
                Event::ClusterTimecode { value, .. } => assert_eq!(value, 42),
                _ => {}
            }
        }
        assert_eq!(
            kinds,
            ["EBML", "Segment", "Info", "Tags", "Cluster", "Tags", "Tags"]
        );
        let t: Vec<(&str, &str)> = tags.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(
            t,
            [
                (FRAGMENT_NUMBER, "9100"),
                (SERVER_TIMESTAMP, "1511852109.126"),
                (PRODUCER_TIMESTAMP, "0.005"),
                ("k", "v"),
                (MILLIS_BEHIND_NOW, "15"),
                (CONTINUATION_TOKEN, "9100")
            ]
        );
    }
}
