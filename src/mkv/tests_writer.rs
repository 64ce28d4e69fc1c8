//! Writer tests: the AWS GetMedia tag layout byte for byte, SimpleTag re-emission,
//! scalar/header encodings, block rebasing and built Clusters read back by the Reader,
//! plus block lacing flags and NUL-padded strings in the element parsers.

use bytes::Bytes;

use super::tests::{ebml, kinds, read_all, sample_stream, simple_block};
use super::writer::*;
use super::*;

#[test]
fn writer_tags_match_aws_layout_and_parse_back() {
    let mut out = Vec::new();
    let fnum = "91343852333181432392682062607743920146159169392";
    write_tags(
        &mut out,
        &[
            ("AWS_KINESISVIDEO_FRAGMENT_NUMBER", fnum),
            ("AWS_KINESISVIDEO_SERVER_TIMESTAMP", "1511852109.126"),
            ("AWS_KINESISVIDEO_PRODUCER_TIMESTAMP", "1511852108.513"),
        ],
    );
    let expect_prefix = [
        0x12, 0x54, 0xC3, 0x67, 0x10, 0x00, 0x00, 0xEB, 0x73, 0x73, 0x10, 0x00, 0x00, 0xE5, 0x67,
        0xC8, 0x10, 0x00, 0x00, 0x5B, 0x45, 0xA3, 0x10, 0x00, 0x00, 0x20,
    ];
    assert_eq!(out[..expect_prefix.len()], expect_prefix);
    assert_eq!(out.len(), 8 + 0xEB);
    let tags = parse_tags(&out).unwrap();
    assert_eq!(tags.len(), 3);
    assert_eq!(tags[0].name, "AWS_KINESISVIDEO_FRAGMENT_NUMBER");
    assert_eq!(tags[0].as_str(), Some(fnum));
    assert_eq!(tags[2].as_str(), Some("1511852108.513"));
}

#[test]
fn writer_simple_tags_raw_round_trip() {
    let tags = vec![
        SimpleTag {
            name: "EVENT".into(),
            value: TagValue::Empty,
            children: vec![SimpleTag::string("kind", "motion")],
        },
        SimpleTag {
            name: "BIN".into(),
            value: TagValue::Binary(Bytes::from_static(&[0, 1, 2])),
            children: vec![],
        },
        SimpleTag::string("AWS_KINESISVIDEO_END_OF_FRAGMENT", ""),
    ];
    let mut out = Vec::new();
    write_simple_tags_raw(&mut out, &tags);
    assert_eq!(parse_tags(&out).unwrap(), tags);
    let mut none = Vec::new();
    write_simple_tags_raw(&mut none, &[]);
    assert!(none.is_empty());
}

#[test]
fn writer_scalars_and_headers() {
    let mut out = Vec::new();
    segment_header_unknown(&mut out);
    assert_eq!(
        out,
        [
            0x18, 0x53, 0x80, 0x67, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF
        ]
    );
    let mut out = Vec::new();
    write_uint(&mut out, ids::TIMECODE, 0);
    write_uint(&mut out, ids::TIMECODE, 0x1_0000);
    assert_eq!(out, [0xE7, 0x81, 0x00, 0xE7, 0x83, 0x01, 0x00, 0x00]);
    let mut out = Vec::new();
    write_float(&mut out, ids::DURATION, 1.5);
    assert_eq!(ebml::read_float(&out[3..], 0), Ok(1.5));
    let mut out = Vec::new();
    cluster_header_known(&mut out, 300);
    assert_eq!(out, [0x1F, 0x43, 0xB6, 0x75, 0x41, 0x2C]);
}

#[test]
fn rebase_block_and_build_cluster_round_trip() {
    let d = sample_stream();
    let (evs, _) = read_all(&d, Limits::default());
    let blocks: Vec<Block> = evs
        .iter()
        .filter_map(|e| {
            if let Event::Block(b) = e {
                Some(b.clone())
            } else {
                None
            }
        })
        .collect();
    let rebased: Vec<Bytes> = blocks
        .iter()
        .map(|b| rebase_block(b, b.timecode - 7))
        .collect();
    for (b, r) in blocks.iter().zip(&rebased) {
        let p = parse_block_header(r.clone()).unwrap();
        assert_eq!(p.timecode, b.timecode - 7);
        assert_eq!(
            (p.track, p.keyframe, p.simple, p.frame()),
            (b.track, b.keyframe, b.simple, b.frame())
        );
        assert_eq!(r.len(), b.raw.len());
    }
    let mut s = Vec::new();
    ebml(&mut s);
    segment_header_unknown(&mut s);
    let cl = build_cluster(123_456, &rebased);
    s.extend_from_slice(&cl);
    let (evs, end) = read_all(&s, Limits::default());
    assert_eq!(end, Ok(()));
    assert_eq!(
        kinds(&evs),
        [
            "ebml", "seg", "cl", "tc", "block", "block", "block", "/cl", "/seg"
        ]
    );
    let Event::ClusterTimecode { value, .. } = &evs[3] else {
        panic!()
    };
    assert_eq!(*value, 123_456);
    let got: Vec<Bytes> = evs
        .iter()
        .filter_map(|e| {
            if let Event::Block(b) = e {
                Some(b.raw.clone())
            } else {
                None
            }
        })
        .collect();
    assert_eq!(got, rebased);
}

#[test]
fn lacing_flags_and_nul_padded_strings() {
    for (flags, lacing) in [
        (0x00, Lacing::None),
        (0x02, Lacing::Xiph),
        (0x04, Lacing::Fixed),
        (0x06, Lacing::Ebml),
    ] {
        let b = parse_block_header(Bytes::from(simple_block(2, -5, flags, &[1, 9, 9]))).unwrap();
        assert_eq!(
            (b.lacing, b.timecode, b.track, b.frame_offset),
            (lacing, -5, 2, 6)
        );
    }
    let mut info = Vec::new();
    let mut p = Vec::new();
    write_element(&mut p, ids::WRITING_APP, b"gst\0\0");
    write_element(&mut p, ids::CRC32, &[1, 2, 3, 4]);
    write_element(&mut info, ids::INFO, &p);
    let i = parse_info(&info).unwrap();
    assert_eq!(
        (i.timecode_scale, i.writing_app.as_deref()),
        (1_000_000, Some("gst"))
    );
}

/// mkvmerge's per-track statistics Tags (Targets with a TagTrackUID) describe a track,
/// not the fragment: they are skipped; Tags with no UID target (or a zero one) are read.
#[test]
fn tags_targeting_a_track_are_not_fragment_tags() {
    let tag = |targets: &[(u32, u64)], name: &str| {
        let mut t = Vec::new();
        for &(id, v) in targets {
            write_uint(&mut t, id, v);
        }
        let mut tag = Vec::new();
        write_element(&mut tag, ids::TARGETS, &t);
        write_simple_tag_for_test(&mut tag, name);
        let mut out = Vec::new();
        write_element(&mut out, ids::TAG, &tag);
        out
    };
    let mut payload = Vec::new();
    payload.extend(tag(
        &[(0x68CA, 50), (ids::TAG_TRACK_UID, 2_506_826_037)],
        "BPS",
    ));
    payload.extend(tag(&[(ids::TAG_CHAPTER_UID, 7)], "CHAPTER_NAME"));
    payload.extend(tag(&[], "MOTION"));
    payload.extend(tag(&[(0x68CA, 50), (ids::TAG_TRACK_UID, 0)], "WHOLE"));
    let mut out = Vec::new();
    write_element(&mut out, ids::TAGS, &payload);
    let names: Vec<_> = parse_tags(&out)
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["MOTION", "WHOLE"]);
}

fn write_simple_tag_for_test(out: &mut Vec<u8>, name: &str) {
    let mut p = Vec::new();
    write_string(&mut p, ids::TAG_NAME, name);
    write_string(&mut p, ids::TAG_STRING, "1");
    write_element(out, ids::SIMPLE_TAG, &p);
}
