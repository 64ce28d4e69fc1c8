//! Fragmenter tests: real producer captures (KVS SDK, ffmpeg, vogels), a chunking
//! property, and one synthetic body per ErrorId.

use super::*;
use crate::mkv::{ids, writer};
use proptest::prelude::*;

pub(crate) fn media(rel: &str) -> Option<Vec<u8>> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    match std::fs::read(&p) {
        Ok(b) => Some(b),
        Err(_) => {
            eprintln!("SKIP: {} not found", p.display());
            None
        }
    }
}

fn shared(name: &str) -> Option<Vec<u8>> {
    media(&format!("../shared/media/{name}"))
}

/// Runs a whole body through a fragmenter in chunks of `chunk` bytes.
fn run(body: &[u8], chunk: usize, limits: Limits, mode: TimecodeMode) -> Vec<Output> {
    let mut f = Fragmenter::new(limits, mode);
    let mut out = Vec::new();
    for (i, c) in body.chunks(chunk.max(1)).enumerate() {
        f.push(c, i as i64);
        while let Some(o) = f.poll() {
            out.push(o);
        }
    }
    f.finish(1_000_000);
    while let Some(o) = f.poll() {
        out.push(o);
    }
    out
}

fn fragments(out: &[Output]) -> Vec<&Fragment> {
    out.iter()
        .filter_map(|o| match o {
            Output::FragmentEnd(f) => Some(f),
            _ => None,
        })
        .collect()
}

fn errors(out: &[Output]) -> Vec<&FragmentError> {
    out.iter()
        .filter_map(|o| match o {
            Output::Error(e) => Some(e),
            _ => None,
        })
        .collect()
}

/// (track, absolute timecode, keyframe, frame bytes) of every block, read with the
/// plain reader: the source of truth the fragments are compared against.
type FrameKey = (u64, i64, bool, Vec<u8>);

fn frames_of(bytes: &[u8]) -> Vec<FrameKey> {
    let mut r = mkv::Reader::new(mkv::Limits::default());
    if !bytes.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        // A bare stored cluster: give it the header a reader needs.
        let mut h = Vec::new();
        writer::write_ebml_header(&mut h, "matroska");
        writer::segment_header_unknown(&mut h);
        r.push(&h);
    }
    r.push(bytes);
    let mut tc = 0i64;
    let mut out = Vec::new();
    let mut handle = |ev: Event, tc: &mut i64| match ev {
        Event::ClusterTimecode { value, .. } => *tc = value as i64,
        Event::Block(b) => out.push((
            b.track,
            *tc + i64::from(b.timecode),
            b.keyframe,
            b.frame().to_vec(),
        )),
        _ => {}
    };
    while let Ok(Some(ev)) = r.next_event() {
        handle(ev, &mut tc);
    }
    while let Ok(Some(ev)) = r.finish() {
        handle(ev, &mut tc);
    }
    out
}

fn video_tracks(body: &[u8]) -> HashSet<u64> {
    let mut r = mkv::Reader::new(mkv::Limits::default());
    r.push(body);
    while let Ok(Some(ev)) = r.next_event() {
        if let Event::TopLevel {
            id: ids::TRACKS,
            raw,
            ..
        } = ev
        {
            return mkv::parse_tracks(&raw)
                .unwrap()
                .iter()
                .filter(|t| t.track_type == 1)
                .map(|t| t.number)
                .collect();
        }
    }
    HashSet::new()
}

/// Checks the core promises: every fragment is one cluster starting (in video) with a
/// keyframe, and the fragments' frames concatenated equal the source's frames.
fn assert_frames_preserved(src: &[u8], out: &[Output]) {
    let video = video_tracks(src);
    let mut got = Vec::new();
    for f in fragments(out) {
        let fr = frames_of(&f.cluster);
        assert!(!fr.is_empty());
        if !video.is_empty() {
            let first_video = fr
                .iter()
                .find(|x| video.contains(&x.0))
                .expect("a video frame");
            assert!(
                first_video.2,
                "fragment {} does not start with a keyframe",
                f.local_id
            );
        }
        // One cluster per fragment.
        assert_eq!(&f.cluster[..4], &[0x1F, 0x43, 0xB6, 0x75]);
        let mut r = mkv::Reader::new(mkv::Limits::default());
        let mut h = Vec::new();
        writer::write_ebml_header(&mut h, "matroska");
        writer::segment_header_unknown(&mut h);
        r.push(&h);
        r.push(&f.cluster);
        let mut clusters = 0;
        while let Ok(Some(ev)) = r.next_event() {
            clusters += matches!(ev, Event::ClusterStart { .. }) as usize;
        }
        while let Ok(Some(ev)) = r.finish() {
            clusters += matches!(ev, Event::ClusterStart { .. }) as usize;
        }
        assert_eq!(clusters, 1);
        got.extend(fr);
    }
    let want = frames_of(src);
    assert_eq!(got.len(), want.len(), "frame count");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            (g.0, g.1, g.2),
            (w.0, w.1, w.2),
            "frame {i} track/timecode/key"
        );
        assert!(g.3 == w.3, "frame {i} bytes differ");
    }
}

#[test]
fn kvs_producer_sdk_stream() {
    let Some(src) = shared("kvs-captures/producer-sdk-test-stream-1_0.mkv") else {
        return;
    };
    let out = run(&src, 4096, Limits::default(), TimecodeMode::Absolute);
    assert!(errors(&out).is_empty(), "{:?}", errors(&out));
    let frags = fragments(&out);
    assert_eq!(frags.len(), 37);
    assert!(frags.iter().all(|f| f.verbatim));
    // Absolute epoch-ms cluster timecodes are the producer timestamps.
    for f in &frags {
        assert_eq!(f.producer_ts_ms, f.cluster_timecode as i64);
        assert!(f.producer_ts_ms > 1_500_000_000_000);
    }
    let meta: usize = frags.iter().map(|f| f.metadata.len()).sum();
    assert_eq!(meta, 27, "custom metadata tags");
    assert!(
        frags
            .iter()
            .flat_map(|f| &f.metadata)
            .all(|(n, _)| n != END_OF_FRAGMENT)
    );
    assert_eq!(
        frags[0].metadata,
        vec![("metadata_key_1".to_string(), "metadata_value_1".to_string())]
    );
    assert_frames_preserved(&src, &out);
    // Verbatim clusters equal the source's cluster bytes.
    for f in &frags {
        assert!(
            src.windows(f.cluster.len().min(64))
                .any(|w| w == &f.cluster[..f.cluster.len().min(64)])
        );
    }
}

#[test]
fn kvs_c_producer_end_of_fragment_closes_at_once() {
    let Some(src) = shared("kvs-captures/producer-c-1.6.4-putmedia.mkv") else {
        return;
    };
    // Feed everything but the last byte-range after the first END_OF_FRAGMENT and
    // check the first fragment is already complete (no next cluster needed).
    let mut f = Fragmenter::new(Limits::default(), TimecodeMode::Absolute);
    let eof = b"AWS_KINESISVIDEO_END_OF_FRAGMENT";
    let pos = src.windows(eof.len()).position(|w| w == eof).unwrap();
    // The tag element ends shortly after its name (TagString is empty).
    f.push(&src[..pos + eof.len() + 16], 0);
    let mut done = 0;
    while let Some(o) = f.poll() {
        done += matches!(o, Output::FragmentEnd(_)) as usize;
    }
    assert_eq!(
        done, 1,
        "END_OF_FRAGMENT must close the fragment without waiting"
    );
    let out = run(&src, 777, Limits::default(), TimecodeMode::Absolute);
    assert!(errors(&out).is_empty(), "{:?}", errors(&out));
    let frags = fragments(&out);
    assert_eq!(frags.len(), 7);
    assert!(frags.iter().all(|f| f.metadata.len() == 9));
    assert_frames_preserved(&src, &out);
}

#[test]
fn vogels_reclusters_at_keyframes() {
    let Some(src) = shared("kvs-captures/vogels_330.mkv") else {
        return;
    };
    let out = run(
        &src,
        1000,
        Limits::default(),
        TimecodeMode::Relative {
            start_ms: 1_700_000_000_000,
        },
    );
    assert!(errors(&out).is_empty(), "{:?}", errors(&out));
    let video = video_tracks(&src);
    let keyframes = frames_of(&src)
        .iter()
        .filter(|x| video.contains(&x.0) && x.2)
        .count();
    assert_eq!(fragments(&out).len(), keyframes);
    assert_frames_preserved(&src, &out);
    for f in fragments(&out) {
        assert!(f.producer_ts_ms >= 1_700_000_000_000);
    }
}

#[test]
fn ffmpeg_samples() {
    for (name, clusters_align) in [
        ("media-samples/h264_720p_gop1s.mkv", true),
        ("media-samples/h264_aac_720p_gop1s.mkv", true),
        ("media-samples/h265_720p_gop1s.mkv", true),
        ("media-samples/h264_cluster_nokey.mkv", false),
    ] {
        let Some(src) = media(name) else { continue };
        let out = run(
            &src,
            32768,
            Limits::default(),
            TimecodeMode::Relative { start_ms: 0 },
        );
        assert!(errors(&out).is_empty(), "{name}: {:?}", errors(&out));
        let video = video_tracks(&src);
        let keyframes = frames_of(&src)
            .iter()
            .filter(|x| video.contains(&x.0) && x.2)
            .count();
        let frags = fragments(&out);
        assert_eq!(frags.len(), keyframes, "{name}");
        assert!(frags.iter().all(|f| f.verbatim == clusters_align), "{name}");
        assert_frames_preserved(&src, &out);
        // Durations tile the stream: each fragment lasts until the next one starts
        // (within one frame), so no time is lost or double counted.
        for w in frags.windows(2) {
            let gap = w[1].producer_ts_ms - w[0].producer_ts_ms;
            assert!(
                (w[0].duration_ms - gap).abs() <= 34,
                "{name}: duration {} vs gap {gap}",
                w[0].duration_ms
            );
        }
    }
}

#[test]
fn truncated_and_corrupt_samples() {
    if let Some(src) = media("media-samples/h264_truncated.mkv") {
        let out = run(&src, 4096, Limits::default(), TimecodeMode::Absolute);
        assert_eq!(fragments(&out).len(), 5, "the five whole clusters survive");
        let e = errors(&out);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].error_id, e[0].fatal), (error_id::INVALID_MKV, true));
    }
    if let Some(src) = media("media-samples/h264_corrupt.mkv") {
        let out = run(&src, 4096, Limits::default(), TimecodeMode::Absolute);
        let e = errors(&out);
        assert!(!e.is_empty() && e.iter().any(|e| e.fatal), "{e:?}");
        // Fragments before the corrupt cluster are whole and valid.
        assert!(fragments(&out).len() >= 3);
        for f in fragments(&out) {
            assert!(!frames_of(&f.cluster).is_empty());
        }
    }
}

#[test]
fn malformed_corpus_gives_errors_never_panics() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/media/malformed");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("SKIP: {} not found", dir.display());
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("LICENSE") {
            continue;
        }
        let src = std::fs::read(e.path()).unwrap();
        for chunk in [1, 13, 4096] {
            let out = run(&src, chunk, Limits::default(), TimecodeMode::Absolute);
            let errs = errors(&out);
            // Either an error, or only whole fragments that read back.
            for f in fragments(&out) {
                assert!(!frames_of(&f.cluster).is_empty(), "{name}");
            }
            assert!(
                !errs.is_empty() || !fragments(&out).is_empty(),
                "{name}: neither error nor fragment"
            );
            if !errs.is_empty() {
                assert!(
                    errs.iter()
                        .all(|e| [4001, 4002, 4004, 4006, 4010, 4011, 4012].contains(&e.error_id)),
                    "{name}: {errs:?}"
                );
            }
        }
    }
}

// ---- synthetic bodies ----

struct Synth {
    body: Vec<u8>,
}

impl Synth {
    /// EBML header + unknown-size Segment + Info (1 ms) + Tracks (1 video, optional audio).
    fn new(tracks: &[(u64, u64)]) -> Self {
        Self::scaled(tracks, 1_000_000)
    }

    /// [`Synth::new`] with another TimecodeScale.
    fn scaled(tracks: &[(u64, u64)], timecode_scale_ns: u64) -> Self {
        let mut body = Vec::new();
        writer::write_ebml_header(&mut body, "matroska");
        writer::segment_header_unknown(&mut body);
        let mut info = Vec::new();
        writer::write_uint(&mut info, ids::TIMECODE_SCALE, timecode_scale_ns);
        writer::write_element(&mut body, ids::INFO, &info);
        let mut t = Vec::new();
        for (num, kind) in tracks {
            let mut e = Vec::new();
            writer::write_uint(&mut e, ids::TRACK_NUMBER, *num);
            writer::write_uint(&mut e, ids::TRACK_UID, *num);
            writer::write_uint(&mut e, ids::TRACK_TYPE, *kind);
            writer::write_string(
                &mut e,
                ids::CODEC_ID,
                if *kind == 1 {
                    "V_MPEG4/ISO/AVC"
                } else {
                    "A_AAC"
                },
            );
            writer::write_element(&mut t, ids::TRACK_ENTRY, &e);
        }
        writer::write_element(&mut body, ids::TRACKS, &t);
        Self { body }
    }

    /// A known-size cluster with SimpleBlocks (track, relative tc, key, payload size).
    fn cluster(mut self, tc: u64, blocks: &[(u64, i16, bool, usize)]) -> Self {
        let mut children = Vec::new();
        for (track, rel, key, len) in blocks {
            let mut b = vec![0x80 | *track as u8];
            b.extend_from_slice(&rel.to_be_bytes());
            b.push(if *key { 0x80 } else { 0 });
            b.extend(std::iter::repeat_n((*rel as u8) ^ 0x5a, *len));
            let mut el = Vec::new();
            writer::write_element(&mut el, 0xA3, &b);
            children.push(Bytes::from(el));
        }
        self.body.extend(writer::build_cluster(tc, &children));
        self
    }

    /// A known-size cluster with one SimpleBlock (track 1, keyframe, relative tc 0) whose
    /// lacing bits and bytes after the flags are given.
    fn laced_cluster(mut self, tc: u64, lacing_flags: u8, body: &[u8]) -> Self {
        let mut b = vec![0x81, 0, 0, 0x80 | lacing_flags];
        b.extend_from_slice(body);
        let mut el = Vec::new();
        writer::write_element(&mut el, 0xA3, &b);
        self.body
            .extend(writer::build_cluster(tc, &[Bytes::from(el)]));
        self
    }

    fn tags(mut self, tags: &[(&str, &str)]) -> Self {
        writer::write_tags(&mut self.body, tags);
        self
    }

    fn run(&self) -> Vec<Output> {
        run(&self.body, 100, Limits::default(), TimecodeMode::Absolute)
    }
}

/// Ten video frames 33 ms apart, the first a keyframe; sizes vary with `tc`.
fn gop(tc: u64) -> Vec<(u64, i16, bool, usize)> {
    (0..10)
        .map(|i| (1, i * 33, i == 0, 50 + (tc % 3) as usize))
        .collect()
}

fn ids_of(out: &[Output]) -> Vec<u32> {
    errors(out).iter().map(|e| e.error_id).collect()
}

#[test]
fn undeclared_track_is_4010_and_later_fragments_survive() {
    let s = Synth::new(&[(1, 1)])
        .cluster(0, &gop(0))
        .cluster(1000, &[(1, 0, true, 10), (9, 5, false, 10)])
        .cluster(2000, &gop(2000));
    let out = s.run();
    assert_eq!(ids_of(&out), vec![error_id::UNDECLARED_TRACK]);
    let ts: Vec<_> = fragments(&out).iter().map(|f| f.cluster_timecode).collect();
    assert_eq!(ts, vec![0, 2000]);
}

#[test]
fn backwards_cluster_is_4004_equal_is_fine() {
    let s = Synth::new(&[(1, 1)])
        .cluster(5000, &gop(0))
        .cluster(5000, &gop(1))
        .cluster(3000, &gop(2))
        .cluster(7000, &gop(3));
    let out = s.run();
    assert_eq!(ids_of(&out), vec![error_id::TIMECODE_NOT_MONOTONIC]);
    assert_eq!(errors(&out)[0].timecode, Some(3000));
    let ts: Vec<_> = fragments(&out).iter().map(|f| f.cluster_timecode).collect();
    assert_eq!(ts, vec![5000, 5000, 7000]);
}

#[test]
fn four_tracks_is_4012_fatal() {
    let s = Synth::new(&[(1, 1), (2, 2), (3, 2), (4, 2)]).cluster(0, &gop(0));
    let out = s.run();
    assert_eq!(ids_of(&out), vec![error_id::TOO_MANY_TRACKS]);
    assert!(errors(&out)[0].fatal);
    assert!(fragments(&out).is_empty());
}

#[test]
fn wrong_magic_and_truncation_are_4006() {
    let out = run(
        b"\x1A\x45\xDF\xA4garbage-not-mkv",
        3,
        Limits::default(),
        TimecodeMode::Absolute,
    );
    assert_eq!(ids_of(&out), vec![error_id::INVALID_MKV]);
    let s = Synth::new(&[(1, 1)])
        .cluster(0, &gop(0))
        .cluster(1000, &gop(1000));
    let cut = &s.body[..s.body.len() - 20];
    let out = run(cut, 64, Limits::default(), TimecodeMode::Absolute);
    assert_eq!(fragments(&out).len(), 1);
    assert_eq!(ids_of(&out), vec![error_id::INVALID_MKV]);
}

#[test]
fn inconsistent_lace_tables_are_4006_and_never_stored() {
    // EBML lacing whose sizes sum past i64::MAX (GetClip/GetImages panicked on it once
    // stored), and Xiph lacing whose size runs past the block.
    let mut wrapping = vec![0xFF, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE];
    wrapping.extend(std::iter::repeat_n(0xBF, 254));
    for (flags, body) in [(0x06, wrapping), (0x02, vec![1, 200, 1, 2])] {
        let s = Synth::new(&[(1, 1)])
            .cluster(0, &gop(0))
            .laced_cluster(1000, flags, &body)
            .cluster(2000, &gop(2000));
        let out = s.run();
        assert_eq!(ids_of(&out), vec![error_id::INVALID_MKV], "{flags:#x}");
        assert!(
            errors(&out)[0].message.contains("bad lacing"),
            "{:?}",
            errors(&out)
        );
        assert!(errors(&out)[0].fatal);
        assert!(fragments(&out).iter().all(|f| f.cluster_timecode < 1000));
    }
    // A consistent lace table is stored as sent.
    let s = Synth::new(&[(1, 1)]).laced_cluster(0, 0x02, &[1, 2, b'a', b'a', b'b']);
    let out = s.run();
    assert!(errors(&out).is_empty(), "{:?}", errors(&out));
    assert_eq!(fragments(&out).len(), 1);
}

#[test]
fn times_beyond_i64_ns_are_4006_not_overflows() {
    // TimecodeScale u64::MAX: cluster 0 is fine, a block 1 tick later is not.
    let s = Synth::scaled(&[(1, 1)], u64::MAX).cluster(0, &[(1, 0, true, 5), (1, 1, false, 5)]);
    let out = s.run();
    assert_eq!(ids_of(&out), vec![error_id::INVALID_MKV]);
    assert!(errors(&out)[0].message.contains("block time out of range"));
    // A cluster timecode near u64::MAX at 1 ns ticks; then i64::MAX itself with a block
    // offset on top (the old `tc as i64 + offset` overflowed).
    for tc in [u64::MAX - 5, i64::MAX as u64] {
        let s = Synth::scaled(&[(1, 1)], 1).cluster(tc, &[(1, 5, true, 5)]);
        let out = s.run();
        assert_eq!(ids_of(&out), vec![error_id::INVALID_MKV], "{tc}");
        assert!(fragments(&out).is_empty());
    }
    // Just inside the range.
    let tc = i64::MAX as u64 / 1_000_000 - 1000;
    let s = Synth::new(&[(1, 1)]).cluster(tc, &gop(tc));
    let out = s.run();
    assert!(errors(&out).is_empty(), "{:?}", errors(&out));
    assert_eq!(fragments(&out).len(), 1);
}

#[test]
fn oversized_fragment_is_4001_without_holding_it() {
    let big: Vec<_> = (0..60).map(|i| (1u64, i as i16, i == 0, 1 << 20)).collect();
    let s = Synth::new(&[(1, 1)])
        .cluster(0, &gop(0))
        .cluster(1000, &big)
        .cluster(2000, &gop(2000));
    let limits = Limits {
        max_fragment_bytes: 50 << 20,
        ..Limits::default()
    };
    let mut f = Fragmenter::new(limits, TimecodeMode::Absolute);
    let mut out = Vec::new();
    let mut peak = 0;
    for c in s.body.chunks(65536) {
        f.push(c, 0);
        peak = peak.max(f.buffered_bytes());
        while let Some(o) = f.poll() {
            out.push(o);
        }
    }
    f.finish(0);
    while let Some(o) = f.poll() {
        out.push(o);
    }
    assert_eq!(ids_of(&out), vec![error_id::FRAGMENT_TOO_LARGE]);
    assert!(peak <= (51 << 20), "peak {peak}");
    let ts: Vec<_> = fragments(&out).iter().map(|f| f.cluster_timecode).collect();
    assert_eq!(ts, vec![0, 2000]);
}

#[test]
fn metadata_limits_and_end_of_fragment() {
    let many: Vec<(String, String)> = (0..11).map(|i| (format!("k{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let s = Synth::new(&[(1, 1)])
        .cluster(0, &gop(0))
        .tags(&[("a", "1"), (END_OF_FRAGMENT, "")])
        .cluster(1000, &gop(1000))
        .tags(&many)
        .cluster(2000, &gop(2000));
    let out = s.run();
    assert_eq!(ids_of(&out), vec![error_id::METADATA_LIMIT]);
    let f = fragments(&out);
    assert_eq!(f.len(), 2);
    assert_eq!(f[0].metadata, vec![("a".to_string(), "1".to_string())]);
}

#[test]
fn missing_audio_is_4011_and_long_fragment_is_4002() {
    let s = Synth::new(&[(1, 1), (2, 2)])
        .cluster(0, &[(1, 0, true, 10), (2, 1, false, 5)])
        .cluster(1000, &[(1, 0, true, 10), (1, 33, false, 10)])
        .cluster(2000, &[(1, 0, true, 10), (2, 3, false, 5)]);
    let out = s.run();
    assert_eq!(ids_of(&out), vec![error_id::MISSING_TRACK_FRAMES]);
    assert_eq!(fragments(&out).len(), 2);
    let s = Synth::new(&[(1, 1)])
        .cluster(0, &[(1, 0, true, 10)])
        .cluster(10_000, &[(1, 0, false, 10)])
        .cluster(21_000, &[(1, 0, false, 10)]);
    let out = s.run();
    assert_eq!(ids_of(&out), vec![error_id::FRAGMENT_TOO_LONG]);
}

/// A closed B-frame GOP of ten video frames 33 ms apart from `rel`, in decode order
/// (I P B B P B B P B B): block timecodes are presentation times, not monotonic.
fn bframe_gop(rel: i16) -> Vec<(u64, i16, bool, usize)> {
    [0i16, 3, 1, 2, 6, 4, 5, 9, 7, 8]
        .iter()
        .enumerate()
        .map(|(i, k)| (1, rel + k * 33, i == 0, 40))
        .collect()
}

/// AAC-like blocks 21 ms apart from `rel`.
fn audio_run(rel: i16, n: i16) -> Vec<(u64, i16, bool, usize)> {
    (0..n).map(|i| (2, rel + i * 21, false, 10)).collect()
}

#[test]
fn durations_are_video_presentation_spans_with_b_frames_and_leading_audio() {
    // Like ffmpeg's B-frame + AAC clusters: audio is interleaved by decode time, so each
    // cluster after the first starts with audio 50 ms before its keyframe's presentation
    // time. Each fragment shows 10 frames × 33 ms = 330 ms of video (the old
    // cluster-timecode-to-last-block rule gave 330, 380, 380).
    let cluster = |lead: i16| {
        let mut b = audio_run(0, 2);
        b.extend(bframe_gop(lead));
        b.extend(audio_run(42, 13));
        b
    };
    let out = Synth::new(&[(1, 1), (2, 2)])
        .cluster(0, &cluster(0))
        .cluster(280, &cluster(50))
        .cluster(610, &cluster(50))
        .run();
    assert!(errors(&out).is_empty(), "{:?}", errors(&out));
    let got: Vec<(u64, i64)> = fragments(&out)
        .iter()
        .map(|f| (f.cluster_timecode, f.duration_ms))
        .collect();
    // The last frame's length: the next fragment's first presentation time (33 ms away)
    // for the first two, the frame interval for the last.
    assert_eq!(got, vec![(0, 330), (280, 330), (610, 330)]);
}

#[test]
fn new_ebml_header_starts_a_new_session() {
    let a = Synth::new(&[(1, 1)]).cluster(0, &gop(0));
    let b = Synth::new(&[(1, 1), (2, 2)]).cluster(100, &[(1, 0, true, 10), (2, 0, false, 5)]);
    let mut body = a.body.clone();
    body.extend(&b.body);
    let out = run(&body, 50, Limits::default(), TimecodeMode::Absolute);
    assert!(errors(&out).is_empty(), "{:?}", errors(&out));
    let sessions: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Session(s) => Some(s.tracks.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sessions, vec![1, 2]);
    assert_eq!(fragments(&out).len(), 2);
}

fn digest(out: &[Output]) -> Vec<String> {
    out.iter()
        .map(|o| match o {
            Output::Session(s) => format!("S{}", s.header.len()),
            Output::FragmentStart(s) => format!("B{}:{}", s.local_id, s.cluster_timecode),
            Output::Frame(f) => format!("F{}:{}:{}", f.local_id, f.timecode, f.block.len()),
            Output::FragmentEnd(f) => format!(
                "E{}:{}:{}:{:?}",
                f.local_id,
                f.duration_ms,
                crate::check::content_hash(&f.cluster),
                f.metadata
            ),
            Output::Error(e) => format!("X{}", e.error_id),
        })
        .collect()
}

fn chunked(body: &[u8], cuts: &[usize]) -> Vec<Output> {
    let mut f = Fragmenter::new(Limits::default(), TimecodeMode::Absolute);
    let mut out = Vec::new();
    let mut pos = 0;
    for &c in cuts {
        let end = (pos + c).min(body.len());
        f.push(&body[pos..end], 0);
        pos = end;
        while let Some(o) = f.poll() {
            out.push(o);
        }
    }
    f.push(&body[pos..], 0);
    f.finish(0);
    while let Some(o) = f.poll() {
        out.push(o);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn any_chunking_yields_the_same_fragments(cuts in proptest::collection::vec(1usize..5000, 1..400)) {
        let Some(src) = shared("kvs-captures/vogels_330.mkv") else { return Ok(()) };
        let whole = digest(&chunked(&src, &[]));
        let split = digest(&chunked(&src, &cuts));
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn tiny_chunks_on_the_sdk_stream(cuts in proptest::collection::vec(1usize..40, 1..2000)) {
        let Some(src) = shared("kvs-captures/producer-c-1.6.4-putmedia.mkv") else { return Ok(()) };
        prop_assert_eq!(digest(&chunked(&src, &[])), digest(&chunked(&src, &cuts)));
    }
}
