//! HLS playlists (m3u8-rs): the master playlist (one variant: video and audio are muxed
//! in every segment) and media playlists rendered from a [`Window`]. URLs inside the
//! playlists are relative, so they resolve against whatever host the player used, and
//! keep the resource's extension before the query string (`getMP4MediaFragment.mp4?…`)
//! for players that check extensions.

use m3u8_rs::{
    ExtTag, Map, MasterPlaylist, MediaPlaylist, MediaPlaylistType, MediaSegment, Resolution,
    VariantStream,
};

use super::MediaConfig;
use super::timeline::Window;
use super::token::{Claims, Container, Mode, Selector};
use crate::model::FragmentNumber;

/// Resource names under `/hls/v1/`.
pub const MASTER: &str = "getHLSMasterPlaylist.m3u8";
pub const MEDIA: &str = "getHLSMediaPlaylist.m3u8";
pub const INIT: &str = "getMP4InitFragment.mp4";
pub const MP4_FRAGMENT: &str = "getMP4MediaFragment.mp4";
pub const TS_FRAGMENT: &str = "getTSFragment.ts";

/// Content type of playlists.
pub const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";

/// An estimate of a stream's bit rate from fragment sizes (bits per second).
pub fn bandwidth(bytes: u64, duration_ms: i64) -> u64 {
    if duration_ms <= 0 {
        return 1_000_000;
    }
    (bytes.saturating_mul(8_000) / duration_ms as u64).max(1000)
}

/// The master playlist.
pub fn master(token: &str, config: &MediaConfig, bandwidth: u64) -> String {
    let codecs = config.codecs();
    let p = MasterPlaylist {
        version: Some(3),
        independent_segments: true,
        variants: vec![VariantStream {
            uri: format!("{MEDIA}?SessionToken={token}"),
            bandwidth,
            codecs: (!codecs.is_empty()).then_some(codecs),
            resolution: config.video.as_ref().map(|v| Resolution {
                width: u64::from(v.width),
                height: u64::from(v.height),
            }),
            ..VariantStream::default()
        }],
        ..MasterPlaylist::default()
    };
    let mut out = Vec::new();
    p.write_to(&mut out).expect("write to Vec");
    String::from_utf8(out).expect("m3u8 is UTF-8")
}

/// A media playlist for `window`.
pub fn media(token: &str, c: &Claims, window: &Window, stream_creation_ms: i64) -> String {
    let fmp4 = c.container == Container::Fmp4;
    let mut segments = Vec::with_capacity(window.entries.len());
    let mut current_init = None;
    let mut longest_ms = 1000;
    for e in &window.entries {
        let number = FragmentNumber::new(stream_creation_ms, e.row.seq).to_string();
        let map = (fmp4 && current_init != Some(e.init)).then(|| Map {
            uri: format!("{INIT}?SessionToken={token}&SequenceNumber={}", e.init),
            ..Map::default()
        });
        current_init = Some(e.init);
        longest_ms = longest_ms.max(e.row.duration_ms);
        let shown_ms = match c.selector {
            Selector::Producer => e.row.producer_ts_ms,
            Selector::Server => e.row.server_ts_ms,
        };
        segments.push(MediaSegment {
            uri: if fmp4 {
                format!("{MP4_FRAGMENT}?SessionToken={token}&FragmentNumber={number}")
            } else {
                format!("{TS_FRAGMENT}?SessionToken={token}&FragmentNumber={number}")
            },
            duration: e.row.duration_ms.max(1) as f32 / 1000.0,
            discontinuity: e.discontinuity,
            map,
            program_date_time: c
                .display_timestamp
                .then(|| chrono::DateTime::from_timestamp_millis(shown_ms))
                .flatten()
                .map(|t| t.fixed_offset()),
            ..MediaSegment::default()
        });
    }
    let p = MediaPlaylist {
        version: Some(if fmp4 { 7 } else { 3 }),
        target_duration: ((longest_ms + 999) / 1000) as u64,
        media_sequence: window.entries.first().map_or(0, |e| e.msn),
        discontinuity_sequence: window.discontinuity_sequence(),
        segments,
        end_list: window.ended,
        playlist_type: (c.mode == Mode::OnDemand).then_some(MediaPlaylistType::Vod),
        independent_segments: true,
        unknown_tags: Vec::<ExtTag>::new(),
        ..MediaPlaylist::default()
    };
    let mut out = Vec::new();
    p.write_to(&mut out).expect("write to Vec");
    String::from_utf8(out).expect("m3u8 is UTF-8")
}
