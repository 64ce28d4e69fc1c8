//! Tests on real media from `shared/media` (real KVS producer bodies, real AWS GetMedia
//! output, libwebm/go-mkvparse malformed files): exact structure counts, tag contents,
//! chunking invariance, verbatim byte coverage, truncation and malformed-input errors.
//! The folder is `$STREAMVAULT_SHARED_MEDIA`, else `$CARGO_MANIFEST_DIR/../shared/media`;
//! tests print a message and pass when it is absent.

use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;

use super::tests::read_all;
use super::*;

fn media_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("STREAMVAULT_SHARED_MEDIA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/media")));
    if dir.join("kvs-captures").is_dir() {
        Some(dir)
    } else {
        eprintln!("skipping: shared media not found at {}", dir.display());
        None
    }
}

fn load(sub: &str, name: &str) -> Option<Vec<u8>> {
    let path = media_dir()?.join(sub).join(name);
    match std::fs::read(&path) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipping: {}: {e}", path.display());
            None
        }
    }
}

struct Expect {
    name: &'static str,
    ebml: usize,
    clusters: usize,
    blocks: usize,
    tags: usize,
    /// `None` = finish() ends cleanly, `Some(o)` = Truncated at `o`.
    truncated_at: Option<u64>,
}

const fn e(name: &'static str, ebml: usize, clusters: usize, blocks: usize, tags: usize) -> Expect {
    Expect {
        name,
        ebml,
        clusters,
        blocks,
        tags,
        truncated_at: None,
    }
}

/// Counts found by inspection (this reader, cross-checked with an independent walker).
const CAPTURES: [Expect; 12] = [
    e("clusters.mkv", 1, 8, 444, 1),
    e("empty-mkv-with-tags.mkv", 1, 0, 0, 1),
    e("kinesis_video_renderer_example_output.mkv", 8, 8, 444, 16),
    Expect {
        truncated_at: Some(1_272_988),
        ..e("output-get-media-equal-timecode.mkv", 2, 2, 239, 5)
    },
    Expect {
        truncated_at: Some(1_912_925),
        ..e(
            "output-get-media-non-increasing-timecode.mkv",
            12,
            12,
            358,
            24,
        )
    },
    e("output_get_media.mkv", 5, 5, 300, 15),
    e("output_get_media_sparse_fragments.mkv", 3, 3, 180, 9),
    e("producer-c-1.6.4-putmedia.mkv", 1, 7, 289, 70),
    e("producer-sdk-test-stream-1_0.mkv", 1, 37, 1640, 28),
    e("test_mixed_tags.mkv", 10, 10, 100, 75),
    e("test_tags_empty_cluster.mkv", 1, 0, 0, 5),
    e("vogels_330.mkv", 1, 9, 2334, 1),
];

type Parsed = (Vec<u8>, Vec<Event>, Result<(), Error>);

/// Each capture parsed once with a single push (shared by the tests).
fn parsed() -> &'static Vec<(&'static str, Parsed)> {
    static P: OnceLock<Vec<(&'static str, Parsed)>> = OnceLock::new();
    P.get_or_init(|| {
        CAPTURES
            .iter()
            .filter_map(|x| {
                let d = load("kvs-captures", x.name)?;
                let (evs, end) = read_all(&d, Limits::default());
                Some((x.name, (d, evs, end)))
            })
            .collect()
    })
}

fn tags_of(evs: &[Event]) -> Vec<SimpleTag> {
    evs.iter()
        .filter_map(|e| match e {
            Event::TopLevel {
                id: ids::TAGS, raw, ..
            } => Some(parse_tags(raw).unwrap()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn timecodes(evs: &[Event]) -> Vec<u64> {
    evs.iter()
        .filter_map(|e| {
            if let Event::ClusterTimecode { value, .. } = e {
                Some(*value)
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn captures_parse_with_expected_counts() {
    for (x, (name, (_, evs, end))) in CAPTURES.iter().zip(parsed()) {
        assert_eq!(x.name, *name);
        let count = |f: fn(&Event) -> bool| evs.iter().filter(|e| f(e)).count();
        let got = (
            count(|e| matches!(e, Event::EbmlHeader { .. })),
            count(|e| matches!(e, Event::SegmentStart { .. })),
            count(|e| matches!(e, Event::ClusterStart { .. })),
            count(|e| matches!(e, Event::ClusterTimecode { .. })),
            count(|e| matches!(e, Event::Block(_))),
            count(|e| matches!(e, Event::TopLevel { id: ids::TAGS, .. })),
        );
        assert_eq!(
            got,
            (x.ebml, x.ebml, x.clusters, x.clusters, x.blocks, x.tags),
            "{name}"
        );
        match x.truncated_at {
            None => assert_eq!(*end, Ok(()), "{name}"),
            Some(o) => assert_eq!(*end, Err(Error::Truncated { offset: o }), "{name}"),
        }
        // Every header element parses.
        for ev in evs {
            if let Event::TopLevel { id, raw, .. } = ev {
                match *id {
                    ids::INFO => assert!(parse_info(raw).is_ok(), "{name}"),
                    ids::TRACKS => assert!(!parse_tracks(raw).unwrap().is_empty(), "{name}"),
                    ids::TAGS => assert!(!parse_tags(raw).unwrap().is_empty(), "{name}"),
                    _ => {}
                }
            }
            if let Event::EbmlHeader { raw, doc_type, .. } = ev {
                assert_eq!(doc_type, "matroska");
                assert_eq!(parse_ebml_header(raw).unwrap().doc_type, "matroska");
            }
        }
    }
}

fn find(name: &str) -> Option<&'static Parsed> {
    parsed().iter().find(|(n, _)| *n == name).map(|(_, p)| p)
}

#[test]
fn kvs_producer_sdk_stream() {
    let Some((_, evs, _)) = find("producer-sdk-test-stream-1_0.mkv") else {
        return;
    };
    let tcs = timecodes(evs);
    assert_eq!(tcs.len(), 37);
    assert_eq!(tcs[0], 1_703_120_790_149, "absolute epoch ms");
    assert!(tcs.windows(2).all(|w| w[1] - w[0] == 1500));
    let tags = tags_of(evs);
    assert_eq!(tags.len(), 28);
    assert_eq!(
        tags[0],
        SimpleTag::string("metadata_key_1", "metadata_value_1")
    );
    assert_eq!(
        tags[27],
        SimpleTag::string("AWS_KINESISVIDEO_END_OF_FRAGMENT", "")
    );
    let unknown = evs
        .iter()
        .filter(|e| matches!(e, Event::ClusterStart { size: None, .. }))
        .count();
    assert_eq!(unknown, 37);
    let info = evs.iter().find_map(|e| match e {
        Event::TopLevel {
            id: ids::INFO, raw, ..
        } => Some(parse_info(raw).unwrap()),
        _ => None,
    });
    assert_eq!(info.unwrap().timecode_scale, 1_000_000);
}

#[test]
fn kvs_producer_c_body() {
    let Some((_, evs, _)) = find("producer-c-1.6.4-putmedia.mkv") else {
        return;
    };
    let eof = tags_of(evs)
        .iter()
        .filter(|t| t.name == "AWS_KINESISVIDEO_END_OF_FRAGMENT")
        .count();
    assert_eq!(eof, 7);
    assert_eq!(timecodes(evs)[0], 1_795_629_031_314);
    let blocks: Vec<&Block> = evs
        .iter()
        .filter_map(|e| {
            if let Event::Block(b) = e {
                Some(b)
            } else {
                None
            }
        })
        .collect();
    assert!(blocks.iter().all(|b| b.simple && b.track == 1));
    // 8-byte size vints on SimpleBlocks: ID (1) + size (8) + track (1) + tc (2) + flags (1).
    assert!(blocks.iter().all(|b| b.frame_offset == 13));
    let clusters: Vec<usize> = evs
        .iter()
        .enumerate()
        .filter_map(|(i, e)| matches!(e, Event::ClusterTimecode { .. }).then_some(i))
        .collect();
    for i in clusters {
        let Some(Event::Block(b)) = evs[i + 1..].iter().find(|e| matches!(e, Event::Block(_)))
        else {
            panic!()
        };
        assert!(b.keyframe, "every fragment starts with a keyframe");
    }
}

#[test]
fn aws_get_media_output() {
    let Some((_, evs, _)) = find("output_get_media.mkv") else {
        return;
    };
    let names: Vec<String> = tags_of(evs).into_iter().map(|t| t.name).collect();
    for n in [
        "AWS_KINESISVIDEO_FRAGMENT_NUMBER",
        "AWS_KINESISVIDEO_SERVER_TIMESTAMP",
        "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP",
        "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW",
        "AWS_KINESISVIDEO_CONTINUATION_TOKEN",
    ] {
        assert_eq!(names.iter().filter(|x| *x == n).count(), 5, "{n}");
    }
    assert_eq!(timecodes(evs), [0, 2000, 4000, 6000, 8000]);
    // AWS's own Tags use 4-byte size vints: `12 54 C3 67 10 ..`.
    let aws = evs.iter().find_map(|e| match e {
        Event::TopLevel {
            id: ids::TAGS, raw, ..
        } if parse_tags(raw).unwrap()[0].name == "AWS_KINESISVIDEO_FRAGMENT_NUMBER" => {
            Some(raw.clone())
        }
        _ => None,
    });
    let aws = aws.unwrap();
    assert_eq!(aws[4], 0x10);
    let values: Vec<(&str, &str)> = vec![
        (
            "AWS_KINESISVIDEO_FRAGMENT_NUMBER",
            "91343852333181432392682062607743920146159169392",
        ),
        ("AWS_KINESISVIDEO_SERVER_TIMESTAMP", "1511852109.126"),
        ("AWS_KINESISVIDEO_PRODUCER_TIMESTAMP", "1511852108.513"),
    ];
    let mut ours = Vec::new();
    writer::write_tags(&mut ours, &values);
    assert_eq!(
        &aws[..],
        &ours[..],
        "writer reproduces AWS's tag bytes exactly"
    );
}

#[test]
fn vogels_two_tracks() {
    let Some((_, evs, _)) = find("vogels_330.mkv") else {
        return;
    };
    let tracks = evs
        .iter()
        .find_map(|e| match e {
            Event::TopLevel {
                id: ids::TRACKS,
                raw,
                ..
            } => Some(parse_tracks(raw).unwrap()),
            _ => None,
        })
        .unwrap();
    assert_eq!(tracks.len(), 2);
    assert_eq!(
        (
            tracks[0].codec_id.as_str(),
            tracks[0].video.clone().unwrap().pixel_height
        ),
        ("V_MPEG4/ISO/AVC", 330)
    );
    assert_eq!(tracks[1].codec_id, "A_AAC");
    assert_eq!(
        tracks[1].audio.as_ref().unwrap().sampling_frequency,
        48000.0
    );
    assert!(tracks[0].codec_private.is_some());
}

/// Every byte of the input is accounted for by exactly one event, in order; and each
/// Cluster's pieces concatenate to the original Cluster bytes.
#[test]
fn events_cover_input_verbatim() {
    for (name, (d, evs, end)) in parsed() {
        let mut cursor = 0usize;
        let mut cluster: Option<(usize, Option<u64>, Vec<u8>)> = None;
        for ev in evs {
            let piece: Option<&[u8]> = match ev {
                Event::EbmlHeader { raw, .. }
                | Event::TopLevel { raw, .. }
                | Event::ClusterTimecode { raw, .. }
                | Event::ClusterChild { raw, .. } => Some(raw),
                Event::Block(b) => Some(&b.raw),
                Event::SegmentStart { raw_header, .. } | Event::ClusterStart { raw_header, .. } => {
                    Some(raw_header)
                }
                Event::Skipped {
                    raw_header,
                    size,
                    offset,
                    ..
                } => {
                    assert_eq!(*offset as usize, cursor, "{name}");
                    assert_eq!(&d[cursor..cursor + raw_header.len()], &raw_header[..]);
                    cursor += raw_header.len() + *size as usize;
                    None
                }
                Event::ClusterEnd { offset } | Event::SegmentEnd { offset } => {
                    assert_eq!(*offset as usize, cursor, "{name}");
                    None
                }
            };
            if let Event::ClusterStart { offset, size, .. } = ev {
                cluster = Some((*offset as usize, *size, Vec::new()));
            }
            if let Some(p) = piece {
                assert_eq!(ev.offset() as usize, cursor, "{name}");
                assert_eq!(&d[cursor..cursor + p.len()], p, "{name} at {cursor}");
                cursor += p.len();
                if let Some((_, _, bytes)) = &mut cluster {
                    bytes.extend_from_slice(p);
                }
            }
            if let Event::ClusterEnd { offset } = ev {
                let (start, size, bytes) = cluster.take().unwrap();
                assert_eq!(&bytes[..], &d[start..*offset as usize], "{name}");
                if let Some(s) = size {
                    let hl = bytes.len() - s as usize;
                    assert!(hl <= 12, "{name}: known-size cluster ends by its size");
                }
            }
        }
        match end {
            Ok(()) => assert_eq!(cursor, d.len(), "{name}"),
            Err(Error::Truncated { offset }) => assert_eq!(cursor as u64, *offset, "{name}"),
            Err(e) => panic!("{name}: {e}"),
        }
    }
}

fn read_chunked(data: &[u8], max_chunk: usize, seed: u64) -> (Vec<Event>, Result<(), Error>) {
    let mut r = Reader::new(Limits::default());
    let mut evs = Vec::new();
    let mut state = seed | 1;
    let mut pos = 0;
    while pos < data.len() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = (1 + (state % max_chunk as u64) as usize).min(data.len() - pos);
        r.push(&data[pos..pos + n]);
        pos += n;
        loop {
            match r.next_event() {
                Ok(Some(e)) => evs.push(e),
                Ok(None) => break,
                Err(e) => return (evs, Err(e)),
            }
        }
        assert!(r.buffered() <= (64 << 20) + 12 + max_chunk);
    }
    loop {
        match r.finish() {
            Ok(Some(e)) => evs.push(e),
            Ok(None) => return (evs, Ok(())),
            Err(e) => return (evs, Err(e)),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn any_chunking_gives_the_same_events(
        file in 0usize..CAPTURES.len(),
        max_chunk in prop_oneof![1usize..=16, 17usize..=4096, 4097usize..=100_000],
        seed in any::<u64>(),
    ) {
        let Some((_, (d, evs, end))) = parsed().get(file) else { return Ok(()) };
        let (evs2, end2) = read_chunked(d, max_chunk, seed);
        prop_assert_eq!(&end2, end);
        prop_assert!(evs2 == *evs, "events differ");
    }
}

#[test]
fn tiny_chunks_all_files() {
    for (name, (d, evs, end)) in parsed() {
        let max_chunk = if d.len() > 100_000 { 16 } else { 1 };
        let (evs2, end2) = read_chunked(d, max_chunk, 1);
        assert_eq!(&end2, end, "{name}");
        assert!(evs2 == *evs, "{name}");
    }
}

/// Any prefix of a valid stream is either complete or Truncated, never Invalid, and
/// yields a prefix of the full event list.
#[test]
fn prefixes_are_truncated_never_invalid() {
    for name in ["test_tags_empty_cluster.mkv", "test_mixed_tags.mkv"] {
        let Some((d, evs, _)) = find(name) else {
            return;
        };
        let step = if d.len() < 1000 { 1 } else { 37 };
        for cut in (0..d.len()).step_by(step) {
            let (evs2, end2) = read_all(&d[..cut], Limits::default());
            assert!(
                matches!(end2, Ok(()) | Err(Error::Truncated { .. })),
                "{name}[..{cut}]: {end2:?}"
            );
            let n = evs2.len();
            let ends_ok =
                |e: &Event| matches!(e, Event::ClusterEnd { .. } | Event::SegmentEnd { .. });
            // finish() may close unknown-size elements early; everything else matches.
            let same = evs2.iter().zip(evs).take_while(|(a, b)| a == b).count();
            assert!(
                evs2[same..].iter().all(ends_ok),
                "{name}[..{cut}]: {same}/{n}"
            );
        }
    }
}

#[test]
fn malformed_files_give_errors() {
    let expected: [(&str, Error); 6] = [
        ("block_ends_beyond_cluster.mkv", Error::invalid(10479, "")),
        (
            "blockgroup_block_ends_beyond_blockgroup.mkv",
            Error::invalid(10921, ""),
        ),
        (
            "chapters_truncated_chapter_string.mkv",
            Error::Truncated { offset: 24 },
        ),
        ("live-then-junk.mkv", Error::invalid(35, "")),
        (
            "primarychromaticity_fieldtoolarge.webm",
            Error::invalid(137, ""),
        ),
        (
            "projection_float_overflow.webm",
            Error::Truncated { offset: 166 },
        ),
    ];
    for (name, want) in expected {
        let Some(d) = load("malformed", name) else {
            return;
        };
        let (evs, end) = read_all(&d, Limits::default());
        let err = end.expect_err(name);
        assert_eq!(
            std::mem::discriminant(&err),
            std::mem::discriminant(&want),
            "{name}: {err}"
        );
        assert_eq!(err.offset(), want.offset(), "{name}: {err}");
        let (_, end1) = read_chunked(&d, 1, 7);
        assert_eq!(end1, Err(err), "{name}: same error byte by byte");
        if name == "projection_float_overflow.webm" {
            let bad = evs.iter().any(|e| {
                matches!(e, Event::TopLevel { id: ids::TRACKS, raw, .. } if parse_tracks(raw).is_err())
            });
            assert!(bad, "its Tracks element is itself malformed");
        }
    }
}
