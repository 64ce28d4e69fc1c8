//! Unit tests on generated input: vint coding (with proptest), reader structure rules
//! (unknown/known sizes, limits, errors, truncation), block and element parsing, and the
//! writer (AWS tag layout, round trips through the reader and parsers).

use bytes::Bytes;
use proptest::prelude::*;

use super::vint::{self, Size, VintRead};
use super::writer::*;
use super::*;

/// Drains a reader fed with `data` in one push; returns events and the final result.
pub(super) fn read_all(data: &[u8], limits: Limits) -> (Vec<Event>, Result<(), Error>) {
    let mut r = Reader::new(limits);
    r.push(data);
    let mut evs = Vec::new();
    loop {
        match r.finish() {
            Ok(Some(e)) => evs.push(e),
            Ok(None) => return (evs, Ok(())),
            Err(e) => return (evs, Err(e)),
        }
    }
}

pub(super) fn ebml(out: &mut Vec<u8>) {
    write_ebml_header(out, "matroska");
}

pub(super) fn simple_block(track: u64, tc: i16, flags: u8, frame: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    vint::write_vint(&mut p, track);
    p.extend_from_slice(&tc.to_be_bytes());
    p.push(flags);
    p.extend_from_slice(frame);
    let mut out = Vec::new();
    write_element(&mut out, ids::SIMPLE_BLOCK, &p);
    out
}

pub(super) fn kinds(evs: &[Event]) -> Vec<&'static str> {
    evs.iter()
        .map(|e| match e {
            Event::EbmlHeader { .. } => "ebml",
            Event::SegmentStart { .. } => "seg",
            Event::TopLevel { .. } => "top",
            Event::Skipped { .. } => "skip",
            Event::ClusterStart { .. } => "cl",
            Event::ClusterTimecode { .. } => "tc",
            Event::Block(_) => "block",
            Event::ClusterChild { .. } => "child",
            Event::ClusterEnd { .. } => "/cl",
            Event::SegmentEnd { .. } => "/seg",
        })
        .collect()
}

#[test]
fn vint_sizes_round_trip_all_lengths() {
    for len in 1..=8usize {
        let max = (1u64 << (7 * len)) - 2;
        for v in [0, 1, max / 2, max] {
            let mut out = Vec::new();
            assert!(vint::write_size_len(&mut out, v, len));
            assert_eq!(out.len(), len);
            assert_eq!(vint::read_size(&out), VintRead::Ok(Size::Known(v), len));
        }
        let mut out = Vec::new();
        assert!(
            !vint::write_size_len(&mut out, max + 1, len),
            "all-ones is reserved"
        );
        vint::write_unknown_size(&mut out, len);
        assert_eq!(vint::read_size(&out), VintRead::Ok(Size::Unknown, len));
    }
    let mut out = Vec::new();
    vint::write_size_len(&mut out, 0x20, 8);
    assert_eq!(out, [0x01, 0, 0, 0, 0, 0, 0, 0x20]);
    assert_eq!(
        vint::read_size(&[0x00, 1]),
        VintRead::Invalid("vint longer than 8 bytes")
    );
    assert_eq!(vint::read_size(&[0x01, 0, 0]), VintRead::Incomplete);
    assert_eq!(vint::size_len(126), Some(1));
    assert_eq!(vint::size_len(127), Some(2), "0xFF would mean unknown size");
}

#[test]
fn ids_decode_and_reject() {
    assert_eq!(
        vint::read_id(&[0x1A, 0x45, 0xDF, 0xA3]),
        VintRead::Ok(ids::EBML, 4)
    );
    assert_eq!(vint::read_id(&[0xA3, 0x00]), VintRead::Ok(0xA3, 1));
    assert_eq!(vint::read_id(&[0x1A, 0x45]), VintRead::Incomplete);
    assert!(matches!(
        vint::read_id(&[0x08, 0, 0, 0, 0]),
        VintRead::Invalid(_)
    ));
    assert!(matches!(vint::read_id(&[0x00]), VintRead::Invalid(_)));
    assert!(matches!(vint::read_id(&[0xFF]), VintRead::Invalid(_)));
    assert!(matches!(vint::read_id(&[0x80]), VintRead::Invalid(_)));
    let mut out = Vec::new();
    write_id(&mut out, ids::TAG_STRING);
    assert_eq!(out, [0x44, 0x87]);
}

proptest! {
    #[test]
    fn vint_round_trip(v in 0u64..(1u64 << 56) - 1, extra in 0usize..8) {
        let min = vint::size_len(v).unwrap();
        let len = (min + extra).min(8);
        let mut out = Vec::new();
        prop_assert!(vint::write_size_len(&mut out, v, len));
        prop_assert_eq!(vint::read_size(&out), VintRead::Ok(Size::Known(v), len));
        let mut shortest = Vec::new();
        write_size(&mut shortest, v);
        prop_assert_eq!(shortest.len(), min);
    }

    #[test]
    fn vint_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
        let _ = vint::read_size(&bytes);
        let _ = vint::read_id(&bytes);
        let _ = vint::read_vint(&bytes);
    }

    #[test]
    fn reader_never_panics_and_stays_bounded(
        prefix in 0usize..3,
        body in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let mut data = Vec::new();
        ebml(&mut data);
        if prefix > 0 { segment_header_unknown(&mut data); }
        if prefix > 1 { write_id(&mut data, ids::CLUSTER); vint::write_unknown_size(&mut data, 1); }
        data.extend_from_slice(&body);
        let limits = Limits { max_element_size: 64, max_header_element_size: 48 };
        let mut r = Reader::new(limits);
        for chunk in data.chunks(7) {
            r.push(chunk);
            loop {
                match r.next_event() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => break,
                }
            }
            prop_assert!(r.buffered() <= 64 + reader::MAX_HEADER_LEN + 7);
        }
        while let Ok(Some(_)) = r.finish() {}
        let _ = parse_tags(&data);
        let _ = parse_tracks(&data);
        let _ = parse_block_header(Bytes::from(data));
    }
}

/// EBML + unknown Segment + Info + Tracks + unknown Cluster (Timecode, Position,
/// SimpleBlock, BlockGroup, Void) + Tags + known Cluster + Cues.
pub(super) fn sample_stream() -> Vec<u8> {
    let mut d = Vec::new();
    ebml(&mut d);
    segment_header_unknown(&mut d);
    let mut info = Vec::new();
    write_uint(&mut info, ids::TIMECODE_SCALE, 1_000_000);
    write_string(&mut info, ids::MUXING_APP, "test");
    write_element(&mut d, ids::INFO, &info);
    let mut te = Vec::new();
    write_uint(&mut te, ids::TRACK_NUMBER, 1);
    write_uint(&mut te, ids::TRACK_TYPE, 1);
    write_element(&mut te, ids::CODEC_ID, b"V_MPEG4/ISO/AVC\0");
    let mut tracks = Vec::new();
    write_element(&mut tracks, ids::TRACK_ENTRY, &te);
    write_element(&mut d, ids::TRACKS, &tracks);
    write_id(&mut d, ids::CLUSTER);
    vint::write_unknown_size(&mut d, 1);
    write_uint(&mut d, ids::TIMECODE, 5000);
    write_uint(&mut d, ids::POSITION, 0);
    d.extend_from_slice(&simple_block(1, 0, 0x80, b"key"));
    let mut bg = Vec::new();
    write_element(&mut bg, ids::BLOCK, &simple_block(1, 40, 0, b"delta")[2..]);
    write_uint(&mut bg, ids::BLOCK_DURATION, 40);
    write_element(&mut bg, ids::REFERENCE_BLOCK, &[0xD8]);
    write_element(&mut d, ids::BLOCK_GROUP, &bg);
    write_element(&mut d, ids::VOID, &[0; 3]);
    write_tags(&mut d, &[("AWS_KINESISVIDEO_END_OF_FRAGMENT", "")]);
    let blk = Bytes::from(simple_block(1, 0, 0x80, b"k2"));
    let mut prev = Vec::new();
    write_uint(&mut prev, ids::PREV_SIZE, 1234);
    d.extend_from_slice(&build_cluster(6000, &[Bytes::from(prev), blk]));
    write_element(&mut d, ids::CUES, &[0xBB, 0x80]);
    d
}

#[test]
fn sample_stream_events() {
    let d = sample_stream();
    let (evs, end) = read_all(&d, Limits::default());
    assert_eq!(end, Ok(()));
    assert_eq!(
        kinds(&evs),
        [
            "ebml", "seg", "top", "top", "cl", "tc", "child", "block", "block", "child", "/cl",
            "top", "cl", "tc", "child", "block", "/cl", "skip", "/seg"
        ]
    );
    let Event::Block(b) = &evs[7] else { panic!() };
    assert!(b.simple && b.keyframe && b.track == 1 && b.timecode == 0);
    assert_eq!(b.frame(), b"key");
    let Event::Block(g) = &evs[8] else { panic!() };
    assert!(!g.simple && !g.keyframe);
    assert_eq!(
        (g.timecode, g.duration, g.frame()),
        (40, Some(40), &b"delta"[..])
    );
    let Event::TopLevel { raw, .. } = &evs[3] else {
        panic!()
    };
    assert_eq!(parse_tracks(raw).unwrap()[0].codec_id, "V_MPEG4/ISO/AVC");
    let Event::ClusterTimecode { value, .. } = &evs[13] else {
        panic!()
    };
    assert_eq!(*value, 6000);
    assert_eq!(evs.last().unwrap().offset(), d.len() as u64);
    // Same events byte by byte.
    let mut r = Reader::new(Limits::default());
    let mut evs2 = Vec::new();
    for b in &d {
        r.push(std::slice::from_ref(b));
        while let Some(e) = r.next_event().unwrap() {
            evs2.push(e);
        }
    }
    while let Some(e) = r.finish().unwrap() {
        evs2.push(e);
    }
    assert_eq!(evs, evs2);
}

#[test]
fn wrong_magic_is_invalid_immediately() {
    let mut r = Reader::new(Limits::default());
    r.push(&[0x1A, 0x45, 0x00]);
    assert!(matches!(
        r.next_event(),
        Err(Error::Invalid { offset: 0, .. })
    ));
    // Sticky.
    assert!(matches!(
        r.next_event(),
        Err(Error::Invalid { offset: 0, .. })
    ));
    let (_, end) = read_all(b"RIFF....WAVE", Limits::default());
    assert!(matches!(end, Err(Error::Invalid { offset: 0, .. })));
}

#[test]
fn truncated_mid_block_reports_block_offset() {
    let d = sample_stream();
    let (evs, _) = read_all(&d, Limits::default());
    let Event::Block(b) = &evs[7] else { panic!() };
    let cut = b.offset as usize + 4;
    let (evs, end) = read_all(&d[..cut], Limits::default());
    assert_eq!(end, Err(Error::Truncated { offset: b.offset }));
    assert_eq!(evs.len(), 7);
    // Cut inside a header: truncated at the header start.
    let (_, end) = read_all(&d[..b.offset as usize + 1], Limits::default());
    assert_eq!(end, Err(Error::Truncated { offset: b.offset }));
}

#[test]
fn finish_emits_end_events_one_per_call() {
    let mut d = Vec::new();
    ebml(&mut d);
    segment_header_unknown(&mut d);
    write_id(&mut d, ids::CLUSTER);
    vint::write_unknown_size(&mut d, 8);
    write_uint(&mut d, ids::TIMECODE, 1);
    let mut r = Reader::new(Limits::default());
    r.push(&d);
    while r.next_event().unwrap().is_some() {}
    let end = d.len() as u64;
    assert_eq!(r.finish(), Ok(Some(Event::ClusterEnd { offset: end })));
    assert_eq!(r.finish(), Ok(Some(Event::SegmentEnd { offset: end })));
    assert_eq!(r.finish(), Ok(None));
    assert_eq!(r.finish(), Ok(None));
    assert_eq!(read_all(&[], Limits::default()).1, Ok(()));
}

#[test]
fn known_size_segment_incomplete_is_truncated() {
    let mut d = Vec::new();
    ebml(&mut d);
    let seg_at = d.len() as u64;
    write_id(&mut d, ids::SEGMENT);
    write_size(&mut d, 100);
    let (_, end) = read_all(&d, Limits::default());
    assert_eq!(end, Err(Error::Truncated { offset: seg_at }));
}

#[test]
fn element_over_limit_is_too_large_without_buffering() {
    let mut d = Vec::new();
    ebml(&mut d);
    segment_header_unknown(&mut d);
    write_id(&mut d, ids::CLUSTER);
    vint::write_unknown_size(&mut d, 1);
    let at = d.len() as u64;
    write_id(&mut d, ids::SIMPLE_BLOCK);
    vint::write_size_len(&mut d, 1 << 40, 8);
    let mut r = Reader::new(Limits::default());
    r.push(&d);
    let err = loop {
        match r.next_event() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("needs no more input"),
            Err(e) => break e,
        }
    };
    let limit = 64 << 20;
    assert_eq!(
        err,
        Error::TooLarge {
            offset: at,
            id: 0xA3,
            size: 1 << 40,
            limit
        }
    );
    assert!(r.buffered() <= reader::MAX_HEADER_LEN);
    // Tracks above the header limit.
    let mut d = Vec::new();
    ebml(&mut d);
    segment_header_unknown(&mut d);
    write_id(&mut d, ids::TRACKS);
    write_size(&mut d, 2 << 20);
    let (_, end) = read_all(&d, Limits::default());
    assert!(matches!(
        end,
        Err(Error::TooLarge {
            id: ids::TRACKS,
            limit: 1048576,
            ..
        })
    ));
}

#[test]
fn void_cues_and_huge_unknown_are_skipped_unbuffered() {
    let mut d = Vec::new();
    ebml(&mut d);
    segment_header_unknown(&mut d);
    let hdr = d.len();
    let mut r = Reader::new(Limits::default());
    r.push(&d);
    while r.next_event().unwrap().is_some() {}
    let mut h = Vec::new();
    write_id(&mut h, 0x1234_5678);
    write_size(&mut h, 10 << 20);
    r.push(&h);
    assert_eq!(r.next_event(), Ok(None));
    let chunk = vec![0u8; 64 << 10];
    for _ in 0..159 {
        r.push(&chunk);
        assert_eq!(r.next_event(), Ok(None));
        assert_eq!(r.buffered(), 0);
    }
    r.push(&chunk);
    assert_eq!(r.buffered(), 0);
    let ev = r.next_event().unwrap().unwrap();
    assert_eq!(
        ev,
        Event::Skipped {
            offset: hdr as u64,
            id: 0x1234_5678,
            raw_header: Bytes::from(h),
            size: 10 << 20
        }
    );
}

#[test]
fn structural_errors() {
    let base = {
        let mut d = Vec::new();
        ebml(&mut d);
        segment_header_unknown(&mut d);
        d
    };
    let check = |tail: &[u8], want: &str| {
        let mut d = base.clone();
        d.extend_from_slice(tail);
        let (_, end) = read_all(&d, Limits::default());
        match end {
            Err(Error::Invalid { offset, reason }) => {
                assert_eq!(offset, base.len() as u64, "{want}: {reason}");
                assert!(reason.contains(want), "{reason} !~ {want}");
            }
            other => panic!("{want}: {other:?}"),
        }
    };
    check(&[0x12, 0x54, 0xC3, 0x67, 0xFF], "unknown size");
    check(&[0x08, 0, 0, 0, 0, 0x80], "longer than 4");
    check(&[0xEC, 0x00, 1, 2, 3, 4, 5, 6, 7, 8], "longer than 8");
    // Known-size Cluster whose child runs past it.
    let mut t = Vec::new();
    cluster_header_known(&mut t, 4);
    write_element(&mut t, ids::SIMPLE_BLOCK, &[0x81, 0, 0, 0x80, 1, 2]);
    let mut d = base.clone();
    d.extend_from_slice(&t);
    let (_, end) = read_all(&d, Limits::default());
    assert!(matches!(end, Err(Error::Invalid { offset, .. }) if offset == base.len() as u64 + 5));
    // BlockGroup without Block; laced block without lace count; track 0.
    for payload in [vec![0x9B, 0x81, 0x01], vec![]] {
        let mut c = Vec::new();
        write_id(&mut c, ids::CLUSTER);
        vint::write_unknown_size(&mut c, 1);
        if payload.is_empty() {
            c.extend_from_slice(&simple_block(1, 0, 0x06, b""));
        } else {
            write_element(&mut c, ids::BLOCK_GROUP, &payload);
        }
        let mut d = base.clone();
        d.extend_from_slice(&c);
        assert!(matches!(
            read_all(&d, Limits::default()).1,
            Err(Error::Invalid { .. })
        ));
    }
    let mut d = base.clone();
    write_id(&mut d, ids::CLUSTER);
    vint::write_unknown_size(&mut d, 1);
    d.extend_from_slice(&simple_block(0, 0, 0x80, b"x"));
    assert!(matches!(
        read_all(&d, Limits::default()).1,
        Err(Error::Invalid { .. })
    ));
}

#[test]
fn new_ebml_header_ends_unknown_cluster_and_segment() {
    let mut d2 = Vec::new();
    ebml(&mut d2);
    segment_header_unknown(&mut d2);
    write_id(&mut d2, ids::CLUSTER);
    vint::write_unknown_size(&mut d2, 8);
    write_uint(&mut d2, ids::TIMECODE, 7);
    let second = d2.len();
    d2.extend_from_slice(&d2.clone()[..second]);
    let (evs, end) = read_all(&d2, Limits::default());
    assert_eq!(end, Ok(()));
    assert_eq!(
        kinds(&evs),
        [
            "ebml", "seg", "cl", "tc", "/cl", "/seg", "ebml", "seg", "cl", "tc", "/cl", "/seg"
        ]
    );
    assert_eq!(evs[4].offset(), second as u64);
    assert_eq!(evs[6].offset(), second as u64);
}
