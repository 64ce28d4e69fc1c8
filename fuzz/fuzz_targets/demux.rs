//! Fuzz target for the demuxer behind GetClip, HLS, DASH and GetImages: the input is a
//! stored fragment (a bare cluster) whose first byte picks the session (H.264 + AAC or
//! H.264 alone, from `media-samples/`), the TimecodeScale (ordinary values and values
//! near the limits) and the fragment's producer time. The demuxed frames then go through
//! the cheap consumers: frame producer times, the GetImages frame choice, packaging into
//! samples, fMP4 media segments (HLS, DASH video/audio), the GetClip layout and payload,
//! and MPEG-TS segments. Checks: no panic anywhere; every frame lies inside the input.

#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use streamvault::images::render::{VideoFrame, choose_frames};
use streamvault::index::FragmentRecord;
use streamvault::media::demux::{LoadedFragment, SessionInfo, demux_cluster};
use streamvault::mkv::{self, Event, ids};
use streamvault::playback::{self, MediaConfig, mp4, ts};

const SCALES: [u64; 8] = [
    1_000_000,
    1,
    100,
    1_000_000_000,
    u64::MAX,
    i64::MAX as u64,
    i64::MAX as u64 + 1,
    3,
];
const PRODUCER_MS: [i64; 4] = [1_795_600_000_000, 0, i64::MAX, i64::MIN];

/// Session info and packaging config from the head of a sample file.
fn session(sample: &[u8]) -> (Arc<SessionInfo>, Arc<MediaConfig>) {
    let mut r = mkv::Reader::new(mkv::Limits::default());
    r.push(&sample[..sample.len().min(1 << 16)]);
    let mut info = SessionInfo {
        timecode_scale_ns: 1_000_000,
        tracks: Vec::new(),
    };
    while let Ok(Some(ev)) = r.next_event() {
        match ev {
            Event::TopLevel {
                id: ids::TRACKS,
                raw,
                ..
            } => {
                info.tracks = mkv::parse_tracks(&raw).expect("sample tracks");
            }
            Event::ClusterStart { .. } => break,
            _ => {}
        }
    }
    let config = MediaConfig::from_session(&info).expect("sample config");
    (Arc::new(info), Arc::new(config))
}

fn sessions() -> &'static [(Arc<SessionInfo>, Arc<MediaConfig>); 2] {
    static S: OnceLock<[(Arc<SessionInfo>, Arc<MediaConfig>); 2]> = OnceLock::new();
    S.get_or_init(|| {
        [
            session(include_bytes!(
                "../../media-samples/h264_aac_720p_gop1s.mkv"
            )),
            session(include_bytes!("../../media-samples/h264_720p_gop1s.mkv")),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, cluster)) = data.split_first() else {
        return;
    };
    let scale = SCALES[usize::from(sel & 7)];
    let producer_ts_ms = PRODUCER_MS[usize::from((sel >> 3) & 3)];
    let (session, config) = sessions()[usize::from(sel >> 7)].clone();
    let Ok((cluster_ns, frames)) = demux_cluster(cluster, scale) else {
        return;
    };
    for f in &frames {
        assert!(f.data.len() <= cluster.len(), "frame larger than the input");
    }
    let row = FragmentRecord {
        stream_id: "s".into(),
        seq: 1,
        session_id: 0,
        producer_ts_ms,
        server_ts_ms: producer_ts_ms,
        duration_ms: 1000,
        producer_timecode: 0,
        size: cluster.len() as u64,
        object_key: String::new(),
        object_size: 0,
        content_hash: String::new(),
        metadata: Vec::new(),
    };
    let f = LoadedFragment {
        row,
        session,
        cluster_ns,
        frames,
    };
    // GetImages: producer times and the frame each instant shows.
    let video: Vec<VideoFrame> = f
        .frames
        .iter()
        .filter(|fr| fr.track == 1)
        .map(|fr| VideoFrame {
            ms: f.frame_producer_ms(fr),
            keyframe: fr.keyframe,
            data: Bytes::new(),
        })
        .collect();
    let instants = [
        producer_ts_ms,
        producer_ts_ms.saturating_add(500),
        i64::MAX,
        i64::MIN,
    ];
    let _ = choose_frames(&video, &instants);
    // GetClip, HLS, DASH.
    let Ok(p) = playback::package(&f, config.clone()) else {
        return;
    };
    for which in [mp4::Tracks::All, mp4::Tracks::Video, mp4::Tracks::Audio] {
        let _ = mp4::media_segment(&p, which, 1);
    }
    let meta = mp4::FragmentMeta::of(&p);
    let _ = mp4::clip_layout(&[(meta, config)]);
    let _ = mp4::clip_payload(&p);
    let _ = ts::segment(&p);
});
