//! Playback end to end against the real server: GetClip (through the AWS SDK for Rust)
//! decoded by ffmpeg, HLS (ON_DEMAND, LIVE_REPLAY, LIVE; fMP4 and MPEG-TS) and DASH
//! sessions played by ffmpeg, session-token rules, CORS, codec changes inside a session,
//! live sessions across a gap, and a headless Chromium + hls.js player on a LIVE session
//! fed by a running ffmpeg producer.

#[path = "playback/browser.rs"]
mod browser;
#[path = "playback/codecs.rs"]
mod codecs;
mod common;
#[path = "browser/player.rs"]
mod player;

use std::process::Command;
use std::time::Duration;

use aws_sdk_kinesisvideoarchivedmedia::error::ProvideErrorMetadata;
use aws_sdk_kinesisvideoarchivedmedia::types::{
    ClipFragmentSelector, ClipFragmentSelectorType, ClipTimestampRange, ContainerFormat,
    HlsFragmentSelector, HlsFragmentSelectorType, HlsPlaybackMode, HlsTimestampRange,
};
use aws_smithy_types::DateTime;
use common::*;
use serde_json::{Value, json};

const T0: i64 = 1_795_600_000;

async fn create(srv: &TestServer, name: &str, retention: i32) {
    srv.control()
        .await
        .create_stream()
        .stream_name(name)
        .data_retention_in_hours(retention)
        .send()
        .await
        .unwrap();
}

async fn upload_at(srv: &TestServer, name: &str, body: &[u8], start_secs: i64) -> PutResult {
    put_media_at(srv.addr, name, body, start_secs).await
}

/// A server with one stream holding `sample` at producer time `T0`.
async fn server_with(name: &str, sample_name: &str) -> TestServer {
    let srv = TestServer::start().await;
    create(&srv, name, 24).await;
    let r = upload_at(&srv, name, &sample(sample_name), T0).await;
    assert_eq!(r.events("PERSISTED").len(), 10);
    srv
}

/// (video frames, audio frames) of an MKV sample.
fn source_frames(name: &str) -> (usize, usize) {
    let f = frames_of(&sample(name));
    (
        f.iter().filter(|x| x.0 == 1).count(),
        f.iter().filter(|x| x.0 == 2).count(),
    )
}

/// `ffmpeg -v error -i INPUT -f null -`: its stderr (empty = no decode error).
/// Input options for `input`: a live HLS playlist is read from its first segment (ffmpeg
/// starts 3 segments from the end by default, which skips segments when the player
/// first looks late, e.g. on a loaded machine).
fn input_args(input: &str) -> Vec<&str> {
    let mut a = Vec::new();
    if input.contains(".m3u8") {
        a.extend(["-live_start_index", "0"]);
    }
    a.extend(["-i", input]);
    a
}

fn ffmpeg_errors(input: &str) -> String {
    let o = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error"])
        .args(input_args(input))
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ffmpeg failed on {input}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// ffprobe's decoded frame count per stream type and the container duration.
fn probe(input: &str) -> (Vec<(String, u64)>, Option<f64>) {
    let o = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_type,nb_read_frames:format=duration",
            "-of",
            "json",
        ])
        .args(input_args(input))
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    let streams = v["streams"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            (
                s["codec_type"].as_str().unwrap_or("").to_owned(),
                s["nb_read_frames"]
                    .as_str()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
            )
        })
        .collect();
    let duration = v["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok());
    (streams, duration)
}

fn frames(p: &[(String, u64)], kind: &str) -> u64 {
    p.iter().filter(|(k, _)| k == kind).map(|(_, n)| n).sum()
}

/// Top-level MP4 box types, in order.
fn boxes(b: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 8 <= b.len() {
        let mut size = u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as u64;
        let ty = String::from_utf8_lossy(&b[at + 4..at + 8]).into_owned();
        if size == 1 {
            size = u64::from_be_bytes(b[at + 8..at + 16].try_into().unwrap());
        }
        out.push(ty);
        if size < 8 {
            break;
        }
        at += size as usize;
    }
    out
}

async fn get_clip_sdk(
    srv: &TestServer,
    name: &str,
    start: i64,
    end: i64,
) -> (Option<String>, Vec<u8>) {
    let out = srv
        .archived()
        .await
        .get_clip()
        .stream_name(name)
        .clip_fragment_selector(
            ClipFragmentSelector::builder()
                .fragment_selector_type(ClipFragmentSelectorType::ProducerTimestamp)
                .timestamp_range(
                    ClipTimestampRange::builder()
                        .start_timestamp(DateTime::from_secs(start))
                        .end_timestamp(DateTime::from_secs(end))
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let ct = out.content_type.clone();
    (
        ct,
        out.payload.collect().await.unwrap().into_bytes().to_vec(),
    )
}

/// Time the stored fragments span (first start to last end, ms) via ListFragments.
async fn stored_duration_ms(srv: &TestServer, name: &str) -> i64 {
    let (status, _, body) = srv
        .post_raw(
            "/listFragments",
            &json!({"StreamName": name, "FragmentSelector": {"FragmentSelectorType": "PRODUCER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": T0 - 100, "EndTimestamp": T0 + 100}}})
            .to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let spans: Vec<(i64, i64)> = v["Fragments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let start = (f["ProducerTimestamp"].as_f64().unwrap() * 1000.0).round() as i64;
            (
                start,
                start + f["FragmentLengthInMilliseconds"].as_i64().unwrap(),
            )
        })
        .collect();
    spans.iter().map(|s| s.1).max().unwrap() - spans.iter().map(|s| s.0).min().unwrap()
}

async fn clip_decodes(sample_name: &str, want_audio: bool) {
    let srv = server_with("cam", sample_name).await;
    // End is compared with fragment starts (the last one starts at T0 + 9.002 s).
    let (ct, mp4) = get_clip_sdk(&srv, "cam", T0, T0 + 10).await;
    assert_eq!(ct.as_deref(), Some("video/mp4"));
    let layout = boxes(&mp4);
    let moov = layout.iter().position(|b| b == "moov").expect("moov");
    let mdat = layout.iter().position(|b| b == "mdat").expect("mdat");
    assert!(moov < mdat, "faststart: {layout:?}");
    if !have_tool("ffmpeg") || !have_tool("ffprobe") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    std::fs::write(&path, &mp4).unwrap();
    let p = path.to_str().unwrap();
    assert_eq!(ffmpeg_errors(p), "", "decode errors in the clip");
    let (streams, duration) = probe(p);
    let (v, a) = source_frames(sample_name);
    assert_eq!(frames(&streams, "video"), v as u64, "{streams:?}");
    assert_eq!(
        frames(&streams, "audio"),
        if want_audio { a as u64 } else { 0 }
    );
    let stored = stored_duration_ms(&srv, "cam").await as f64 / 1000.0;
    let d = duration.unwrap();
    assert!(
        (d - stored).abs() < 0.1,
        "clip {d} s vs fragments {stored} s"
    );
    eprintln!(
        "clip {sample_name}: {} bytes, video {} frames, audio {} frames, {d:.3} s (fragments {stored:.3} s), 0 decode errors",
        mp4.len(),
        frames(&streams, "video"),
        frames(&streams, "audio")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_clip_h264_aac_decodes_with_all_frames() {
    clip_decodes("h264_aac_720p_gop1s.mkv", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_clip_h265_decodes_with_all_frames() {
    clip_decodes("h265_720p_gop1s.mkv", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_clip_deduplicates_producer_timestamps_and_cuts_ranges() {
    let srv = server_with("cam", "h264_720p_gop1s.mkv").await;
    // The same media again at the same producer times: duplicates.
    upload_at(&srv, "cam", &sample("h264_720p_gop1s.mkv"), T0).await;
    let (_, mp4) = get_clip_sdk(&srv, "cam", T0, T0 + 9).await;
    // A sub-range: fragments starting at T0+2 .. T0+4 (inclusive on fragment start).
    let (_, part) = get_clip_sdk(&srv, "cam", T0 + 2, T0 + 4).await;
    if !have_tool("ffprobe") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (bytes, want) in [(&mp4, 300), (&part, 90)] {
        let path = dir.path().join("c.mp4");
        std::fs::write(&path, bytes).unwrap();
        let (streams, _) = probe(path.to_str().unwrap());
        assert_eq!(frames(&streams, "video"), want, "{streams:?}");
    }
}

fn clip_body(name: &str, start: i64, end: i64) -> String {
    json!({"StreamName": name, "ClipFragmentSelector": {"FragmentSelectorType": "SERVER_TIMESTAMP",
        "TimestampRange": {"StartTimestamp": start, "EndTimestamp": end}}})
    .to_string()
}

/// Rewrites the first CodecPrivate element of an MKV: `None` renames it to an unknown
/// element (so the track has none), `Some(b)` overwrites its first payload byte.
fn tamper_codec_private(mkv: &[u8], first_byte: Option<u8>) -> Vec<u8> {
    let mut m = mkv.to_vec();
    let at = m
        .windows(2)
        .position(|w| w == [0x63, 0xA2])
        .expect("CodecPrivate");
    match first_byte {
        None => m[at + 1] = 0xA3,
        Some(b) => {
            let len_byte = m[at + 2];
            let hdr = 2 + (len_byte.leading_zeros() as usize + 1);
            m[at + hdr] = b;
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_clip_errors_are_modeled() {
    let srv = TestServer::start().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    create(&srv, "empty", 24).await;
    let (s, h, _) = srv
        .post_raw("/getClip", &clip_body("empty", now - 60, now))
        .await;
    assert_eq!(
        (s, header(&h, "x-amzn-errortype")),
        (404, Some("ResourceNotFoundException"))
    );
    create(&srv, "noret", 0).await;
    let (s, h, _) = srv
        .post_raw("/getClip", &clip_body("noret", now - 60, now))
        .await;
    assert_eq!(
        (s, header(&h, "x-amzn-errortype")),
        (400, Some("NoDataRetentionException"))
    );
    let (s, _, _) = srv
        .post_raw("/getClip", &clip_body("empty", now, now - 1))
        .await;
    assert_eq!(s, 400);
    let (s, _, _) = srv
        .post_raw("/getClip", &clip_body("empty", now - 90_000, now))
        .await;
    assert_eq!(s, 400, "more than 24 h");
    let (s, h, _) = srv
        .post_raw("/getClip", &clip_body("nope", now - 60, now))
        .await;
    assert_eq!(
        (s, header(&h, "x-amzn-errortype")),
        (404, Some("ResourceNotFoundException"))
    );

    let src = sample("h264_720p_gop1s.mkv");
    for (name, mkv, want) in [
        (
            "nocp",
            tamper_codec_private(&src, None),
            "MissingCodecPrivateDataException",
        ),
        (
            "badcp",
            tamper_codec_private(&src, Some(0x07)),
            "InvalidCodecPrivateDataException",
        ),
    ] {
        create(&srv, name, 24).await;
        upload_at(&srv, name, &mkv, T0).await;
        let (s, h, body) = srv
            .post_raw("/getClip", &clip_body(name, now - 60, now + 5))
            .await;
        assert_eq!(
            (s, header(&h, "x-amzn-errortype")),
            (400, Some(want)),
            "{body}"
        );
        // The SDK maps it to the modeled error too.
        let e = srv
            .archived()
            .await
            .get_hls_streaming_session_url()
            .stream_name(name)
            .send()
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(want));
    }
}

// ---- HLS / DASH ---------------------------------------------------------------------

async fn session_url(srv: &TestServer, op: &str, body: Value) -> String {
    let (s, _, text) = srv.post_raw(op, &body.to_string()).await;
    assert_eq!(s, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let key = if op.contains("HLS") {
        "HLSStreamingSessionURL"
    } else {
        "DASHStreamingSessionURL"
    };
    v[key].as_str().unwrap().to_owned()
}

fn hls_body(name: &str, mode: &str, container: &str, end: Option<i64>) -> Value {
    let mut range = json!({"StartTimestamp": T0});
    if let Some(e) = end {
        range["EndTimestamp"] = json!(e);
    }
    json!({"StreamName": name, "PlaybackMode": mode, "ContainerFormat": container,
        "HLSFragmentSelector": {"FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": range},
        "DisplayFragmentTimestamp": "ALWAYS", "MaxMediaPlaylistFragmentResults": 1000})
}

async fn get(url: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = reqwest::get(url).await.unwrap();
    let s = r.status().as_u16();
    let h = r.headers().clone();
    (s, h, r.bytes().await.unwrap().to_vec())
}

async fn text(url: &str) -> String {
    let (s, _, b) = get(url).await;
    let t = String::from_utf8(b).unwrap();
    assert_eq!(s, 200, "{url}: {t}");
    t
}

/// Resolves a playlist-relative URL against the playlist's URL.
fn resolve(base: &str, rel: &str) -> String {
    let dir = &base[..base[..base.find('?').unwrap_or(base.len())]
        .rfind('/')
        .unwrap()
        + 1];
    format!("{dir}{rel}")
}

/// The media playlist URL of an HLS session URL.
fn media_of(session_url: &str) -> String {
    session_url.replace("getHLSMasterPlaylist.m3u8", "getHLSMediaPlaylist.m3u8")
}

/// ffmpeg decodes `url` with no error and ffprobe (at the same time, so both follow a
/// live playlist) counts the wanted frames. Blocking threads keep the server's runtime
/// free to serve them.
async fn plays(url: String, video: u64, audio: u64) {
    let u = url.clone();
    let decode = tokio::task::spawn_blocking(move || ffmpeg_errors(&u));
    let u = url.clone();
    let count = tokio::task::spawn_blocking(move || probe(&u).0);
    let (errors, streams) = (decode.await.unwrap(), count.await.unwrap());
    assert_eq!(errors, "", "decode errors from {url}");
    assert_eq!(frames(&streams, "video"), video, "{url}: {streams:?}");
    assert_eq!(frames(&streams, "audio"), audio, "{url}: {streams:?}");
    eprintln!("played {url}: {streams:?}, 0 decode errors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_on_demand_plays_in_both_containers() {
    let srv = server_with("cam", "h264_aac_720p_gop1s.mkv").await;
    let (v, a) = source_frames("h264_aac_720p_gop1s.mkv");
    // Through the SDK (defaults: SERVER_TIMESTAMP selector, ALWAYS discontinuities).
    let now = DateTime::from_secs(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            + 5,
    );
    let sdk_url = srv
        .archived()
        .await
        .get_hls_streaming_session_url()
        .stream_name("cam")
        .playback_mode(HlsPlaybackMode::OnDemand)
        .container_format(ContainerFormat::FragmentedMp4)
        .hls_fragment_selector(
            HlsFragmentSelector::builder()
                .fragment_selector_type(HlsFragmentSelectorType::ServerTimestamp)
                .timestamp_range(
                    HlsTimestampRange::builder()
                        .start_timestamp(DateTime::from_secs(now.secs() - 3600))
                        .end_timestamp(now)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap()
        .hls_streaming_session_url
        .unwrap();
    assert!(
        sdk_url.starts_with(&format!(
            "{}/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken=",
            srv.url()
        )),
        "{sdk_url}"
    );
    let ts_url = session_url(
        &srv,
        "/getHLSStreamingSessionURL",
        hls_body("cam", "ON_DEMAND", "MPEG_TS", Some(T0 + 10)),
    )
    .await;
    let fmp4_url = session_url(
        &srv,
        "/getHLSStreamingSessionURL",
        hls_body("cam", "ON_DEMAND", "FRAGMENTED_MP4", Some(T0 + 10)),
    )
    .await;

    // Playlist shapes.
    let master = text(&fmp4_url).await;
    assert!(master.contains("CODECS=\"avc1."), "{master}");
    assert!(master.contains("mp4a.40.2"), "{master}");
    assert!(master.contains("RESOLUTION=1280x720"), "{master}");
    let media_rel = master
        .lines()
        .find(|l| l.starts_with("getHLSMediaPlaylist.m3u8"))
        .unwrap();
    let media = text(&resolve(&fmp4_url, media_rel)).await;
    assert!(
        media.contains("#EXT-X-ENDLIST") && media.contains("#EXT-X-PLAYLIST-TYPE:VOD"),
        "{media}"
    );
    assert_eq!(media.matches("#EXTINF:").count(), 10, "{media}");
    assert_eq!(
        media.matches("#EXT-X-PROGRAM-DATE-TIME:2026-").count(),
        10,
        "{media}"
    );
    assert_eq!(
        media
            .matches("#EXT-X-MAP:URI=\"getMP4InitFragment.mp4?")
            .count(),
        1,
        "{media}"
    );
    assert!(
        media.contains("getMP4MediaFragment.mp4?SessionToken="),
        "{media}"
    );
    let sdk_media = text(&media_of(&sdk_url)).await;
    assert_eq!(
        sdk_media.matches("#EXT-X-DISCONTINUITY\n").count(),
        9,
        "ALWAYS: {sdk_media}"
    );
    let ts_media = text(&media_of(&ts_url)).await;
    assert!(
        ts_media.contains("getTSFragment.ts?SessionToken="),
        "{ts_media}"
    );
    assert!(!ts_media.contains("EXT-X-MAP"), "{ts_media}");

    if !have_tool("ffmpeg") || !have_tool("ffprobe") {
        return;
    }
    let (v, a) = (v as u64, a as u64);
    tokio::join!(
        plays(fmp4_url, v, a),
        plays(ts_url, v, a),
        plays(sdk_url, v, a)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_live_replay_plays_in_both_containers() {
    let srv = server_with("cam", "h264_aac_720p_gop1s.mkv").await;
    let (v, a) = source_frames("h264_aac_720p_gop1s.mkv");
    let ts_url = session_url(
        &srv,
        "/getHLSStreamingSessionURL",
        hls_body("cam", "LIVE_REPLAY", "MPEG_TS", Some(T0 + 10)),
    )
    .await;
    let fmp4_url = session_url(
        &srv,
        "/getHLSStreamingSessionURL",
        hls_body("cam", "LIVE_REPLAY", "FRAGMENTED_MP4", Some(T0 + 10)),
    )
    .await;
    // At first only the first fragment is visible and the playlist is open.
    let media = text(&media_of(&fmp4_url)).await;
    assert_eq!(media.matches("#EXTINF:").count(), 1, "{media}");
    assert!(!media.contains("#EXT-X-ENDLIST"), "{media}");
    if !have_tool("ffmpeg") || !have_tool("ffprobe") {
        return;
    }
    let (v, a) = (v as u64, a as u64);
    // ffmpeg and ffprobe follow the growing playlists until ENDLIST (about 10 s).
    let started = std::time::Instant::now();
    tokio::join!(plays(fmp4_url.clone(), v, a), plays(ts_url, v, a));
    assert!(
        started.elapsed() >= Duration::from_secs(7),
        "replay is paced"
    );
    let media = text(&media_of(&fmp4_url)).await;
    assert!(media.contains("#EXT-X-ENDLIST"), "{media}");
    assert_eq!(media.matches("#EXTINF:").count(), 10, "{media}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dash_on_demand_and_h265_hls_play() {
    let srv = server_with("cam", "h264_aac_720p_gop1s.mkv").await;
    create(&srv, "hevc", 24).await;
    upload_at(&srv, "hevc", &sample("h265_720p_gop1s.mkv"), T0).await;
    let (v, a) = source_frames("h264_aac_720p_gop1s.mkv");
    let mpd_url = session_url(
        &srv,
        "/getDASHStreamingSessionURL",
        json!({"StreamName": "cam", "PlaybackMode": "ON_DEMAND", "DisplayFragmentTimestamp": "ALWAYS",
            "DisplayFragmentNumber": "ALWAYS",
            "DASHFragmentSelector": {"FragmentSelectorType": "PRODUCER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": T0, "EndTimestamp": T0 + 10}}}),
    )
    .await;
    assert!(
        mpd_url.contains("/dash/v1/getDASHManifest.mpd?SessionToken="),
        "{mpd_url}"
    );
    let (s, h, mpd) = get(&mpd_url).await;
    let mpd = String::from_utf8(mpd).unwrap();
    assert_eq!(s, 200, "{mpd}");
    assert_eq!(h["content-type"], "application/dash+xml");
    assert!(mpd.contains(r#"type="static""#), "{mpd}");
    assert_eq!(mpd.matches("<S t=").count(), 20, "{mpd}");
    assert!(
        mpd.contains("kvs:fn=\"91") && mpd.contains("kvs:ts=\""),
        "{mpd}"
    );
    let hevc_url = session_url(
        &srv,
        "/getHLSStreamingSessionURL",
        hls_body("hevc", "ON_DEMAND", "FRAGMENTED_MP4", Some(T0 + 9)),
    )
    .await;
    let hevc_ts = session_url(
        &srv,
        "/getHLSStreamingSessionURL",
        hls_body("hevc", "ON_DEMAND", "MPEG_TS", Some(T0 + 9)),
    )
    .await;
    let hevc_master = text(&hevc_url).await;
    assert!(hevc_master.contains("CODECS=\"hvc1."), "{hevc_master}");
    eprintln!("{hevc_master}");
    if !have_tool("ffmpeg") || !have_tool("ffprobe") {
        return;
    }
    let (hv, _) = source_frames("h265_720p_gop1s.mkv");
    tokio::join!(
        plays(mpd_url, v as u64, a as u64),
        plays(hevc_url, hv as u64, 0),
        plays(hevc_ts, hv as u64, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_tokens_are_checked_and_resources_carry_cors() {
    let srv = server_with("cam", "h264_720p_gop1s.mkv").await;
    let url = session_url(
        &srv,
        "/getHLSStreamingSessionURL",
        hls_body("cam", "ON_DEMAND", "FRAGMENTED_MP4", Some(T0 + 10)),
    )
    .await;
    let (s, h, _) = get(&url).await;
    assert_eq!(s, 200);
    assert_eq!(h["access-control-allow-origin"], "*");
    assert_eq!(h["content-type"], "application/vnd.apple.mpegurl");
    // A flipped character in the token: 403 JSON, no data.
    let token = url.split("SessionToken=").nth(1).unwrap();
    let mut forged = token.as_bytes().to_vec();
    forged[20] = if forged[20] == b'A' { b'B' } else { b'A' };
    let forged_url = url.replace(token, std::str::from_utf8(&forged).unwrap());
    for u in [
        forged_url.clone(),
        forged_url.replace("getHLSMasterPlaylist.m3u8", "getHLSMediaPlaylist.m3u8"),
        forged_url.replace("getHLSMasterPlaylist.m3u8", "getMP4MediaFragment.mp4")
            + "&FragmentNumber=1",
        format!(
            "{}/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken=abc",
            srv.url()
        ),
    ] {
        let (s, h, b) = get(&u).await;
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(s, 403, "{u}");
        assert_eq!(v["__type"], "NotAuthorizedException");
        assert_eq!(h["access-control-allow-origin"], "*");
    }
    // An HLS token does not open DASH resources.
    let dash = url.replace(
        "/hls/v1/getHLSMasterPlaylist.m3u8",
        "/dash/v1/getDASHManifest.mpd",
    );
    assert_eq!(get(&dash).await.0, 403);
    // Fragments outside the session's range are not served.
    let (s, _, b) = get(&format!(
        "{}&FragmentNumber=9{}",
        url.replace("getHLSMasterPlaylist.m3u8", "getMP4MediaFragment.mp4"),
        "1".repeat(46)
    ))
    .await;
    assert_eq!(s, 404, "{}", String::from_utf8_lossy(&b));
    // CORS preflight.
    let r = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, &url)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert!(
        r.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("GET")
    );
    // Bad requests to the session APIs.
    for body in [
        json!({"StreamName": "cam", "PlaybackMode": "ON_DEMAND"}),
        json!({"StreamName": "cam", "Expires": 10}),
        json!({"StreamName": "cam", "PlaybackMode": "LIVE", "HLSFragmentSelector": {"TimestampRange": {"StartTimestamp": T0}}}),
        json!({"StreamName": "cam", "ContainerFormat": "MKV"}),
    ] {
        let (s, h, _) = srv
            .post_raw("/getHLSStreamingSessionURL", &body.to_string())
            .await;
        assert_eq!(
            (s, header(&h, "x-amzn-errortype")),
            (400, Some("InvalidArgumentException")),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_are_refused_live_ones_renew_while_used() {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let clock = std::sync::Arc::new(streamvault::clock::ManualClock::new(now_ms));
    let srv = TestServer::start_with_clock(clock.clone()).await;
    create(&srv, "cam", 24).await;
    upload_at(&srv, "cam", &sample("h264_720p_gop1s.mkv"), T0).await;
    let od = session_url(
        &srv,
        "/getHLSStreamingSessionURL",
        hls_body("cam", "ON_DEMAND", "FRAGMENTED_MP4", Some(T0 + 10)),
    )
    .await;
    let live = session_url(
        &srv,
        "/getHLSStreamingSessionURL",
        json!({"StreamName": "cam", "Expires": 300}),
    )
    .await;
    assert_eq!(get(&od).await.0, 200);
    assert_eq!(get(&live).await.0, 200);
    clock.advance_ms(250_000);
    assert_eq!(get(&live).await.0, 200, "used at 250 s: renewed to 550 s");
    clock.advance_ms(100_000);
    let (s, _, b) = get(&od).await;
    assert_eq!(s, 403, "ON_DEMAND expired at 300 s");
    assert!(String::from_utf8_lossy(&b).contains("expired"));
    assert_eq!(
        get(&live).await.0,
        200,
        "LIVE renewed: still valid at 350 s"
    );
    clock.advance_ms(400_000);
    assert_eq!(get(&live).await.0, 403, "unused for more than Expires");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_session_survives_a_gap_and_codec_change_gets_a_new_init() {
    let srv = server_with("cam", "h264_720p_gop1s.mkv").await;
    let url = session_url(
        &srv,
        "/getHLSStreamingSessionURL",
        json!({"StreamName": "cam", "PlaybackMode": "LIVE", "DiscontinuityMode": "ON_DISCONTINUITY",
            "MaxMediaPlaylistFragmentResults": 20,
            "HLSFragmentSelector": {"FragmentSelectorType": "PRODUCER_TIMESTAMP"}}),
    )
    .await;
    let media_url = media_of(&url);
    let first = text(&media_url).await;
    assert_eq!(first.matches("#EXTINF:").count(), 10, "{first}");
    assert!(!first.contains("#EXT-X-DISCONTINUITY\n"), "{first}");
    assert!(!first.contains("ENDLIST"));
    // 40 s later (producer time) the camera comes back with other encoder settings.
    let other = if have_tool("ffmpeg") {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("small.mkv");
        let ok = Command::new("ffmpeg")
            .args([
                "-nostdin",
                "-v",
                "error",
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=640x360:rate=30",
                "-t",
                "3",
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-g",
                "30",
                "-keyint_min",
                "30",
                "-bf",
                "0",
                "-sc_threshold",
                "0",
                "-f",
                "matroska",
                "-live",
                "1",
                "-cluster_time_limit",
                "10000",
            ])
            .arg(&p)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        std::fs::read(&p).unwrap()
    } else {
        sample("h264_720p_gop1s.mkv")
    };
    upload_at(&srv, "cam", &other, T0 + 50).await;
    let second = text(&media_url).await;
    let n = second.matches("#EXTINF:").count();
    assert!(n >= 13, "{second}");
    assert_eq!(
        second.matches("#EXT-X-DISCONTINUITY\n").count(),
        1,
        "{second}"
    );
    // Media sequence numbers of the first ten segments did not move.
    assert!(
        !second.contains("#EXT-X-MEDIA-SEQUENCE")
            || first.contains(
                second
                    .lines()
                    .find(|l| l.starts_with("#EXT-X-MEDIA-SEQUENCE"))
                    .unwrap()
            ),
        "{first}\n{second}"
    );
    if have_tool("ffmpeg") {
        assert_eq!(
            second.matches("#EXT-X-MAP:").count(),
            2,
            "new init segment: {second}"
        );
        let maps: Vec<&str> = second
            .lines()
            .filter(|l| l.starts_with("#EXT-X-MAP:"))
            .collect();
        assert_ne!(maps[0], maps[1]);
        // Both init segments are served and differ.
        let init = |l: &str| resolve(&url, l.split('"').nth(1).unwrap());
        let a = get(&init(maps[0])).await;
        let b = get(&init(maps[1])).await;
        assert_eq!((a.0, b.0), (200, 200));
        assert_ne!(a.2, b.2);
        // Players cross the change: an ON_DEMAND session over both uploads decodes
        // every frame (300 at 1280x720, then 90 at 640x360) in both containers.
        if have_tool("ffprobe") {
            let body = |container: &str| {
                json!({"StreamName": "cam", "PlaybackMode": "ON_DEMAND", "ContainerFormat": container,
                    "HLSFragmentSelector": {"FragmentSelectorType": "PRODUCER_TIMESTAMP",
                        "TimestampRange": {"StartTimestamp": T0, "EndTimestamp": T0 + 60}}})
            };
            let fmp4 =
                session_url(&srv, "/getHLSStreamingSessionURL", body("FRAGMENTED_MP4")).await;
            let ts = session_url(&srv, "/getHLSStreamingSessionURL", body("MPEG_TS")).await;
            tokio::join!(plays(fmp4, 390, 0), plays(ts, 390, 0));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_only_streams_and_dash_live_manifests() {
    if !have_tool("ffmpeg") || !have_tool("ffprobe") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("aac.mkv");
    let ok = Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=44100",
            "-t",
            "4",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
            "-f",
            "matroska",
            "-live",
            "1",
            "-cluster_time_limit",
            "1000",
        ])
        .arg(&p)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let mkv = std::fs::read(&p).unwrap();
    let want_audio = frames_of(&mkv).len() as u64;
    let srv = TestServer::start().await;
    create(&srv, "mic", 24).await;
    upload_at(&srv, "mic", &mkv, T0).await;
    let (ct, mp4) = get_clip_sdk(&srv, "mic", T0 - 1, T0 + 10).await;
    assert_eq!(ct.as_deref(), Some("video/mp4"));
    let clip = dir.path().join("clip.mp4");
    std::fs::write(&clip, &mp4).unwrap();
    assert_eq!(ffmpeg_errors(clip.to_str().unwrap()), "");
    assert_eq!(
        frames(&probe(clip.to_str().unwrap()).0, "audio"),
        want_audio
    );
    let body = |c: &str| {
        json!({"StreamName": "mic", "PlaybackMode": "ON_DEMAND", "ContainerFormat": c,
            "HLSFragmentSelector": {"FragmentSelectorType": "PRODUCER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": T0 - 1, "EndTimestamp": T0 + 10}}})
    };
    let fmp4 = session_url(&srv, "/getHLSStreamingSessionURL", body("FRAGMENTED_MP4")).await;
    let ts = session_url(&srv, "/getHLSStreamingSessionURL", body("MPEG_TS")).await;
    let master = text(&fmp4).await;
    assert!(
        master.contains("CODECS=\"mp4a.40.2\"") && !master.contains("RESOLUTION"),
        "{master}"
    );
    tokio::join!(plays(fmp4, 0, want_audio), plays(ts, 0, want_audio));

    // A LIVE DASH manifest of a video stream is dynamic, lists the newest fragments,
    // and its $Time$ segment URLs resolve.
    create(&srv, "cam", 24).await;
    upload_at(&srv, "cam", &sample("h264_aac_720p_gop1s.mkv"), T0).await;
    let url = session_url(
        &srv,
        "/getDASHStreamingSessionURL",
        json!({"StreamName": "cam", "PlaybackMode": "LIVE", "DisplayFragmentNumber": "ALWAYS"}),
    )
    .await;
    let mpd = text(&url).await;
    assert!(mpd.contains(r#"type="dynamic""#), "{mpd}");
    assert!(
        mpd.contains(r#"availabilityStartTime="1970-01-01T00:00:00.000Z""#),
        "{mpd}"
    );
    assert_eq!(
        mpd.matches("<S t=").count(),
        10,
        "5 per adaptation set: {mpd}"
    );
    let t: i64 = mpd
        .split("<S t=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let base = &url[..url.find("getDASHManifest.mpd").unwrap()];
    let token = url.split("SessionToken=").nth(1).unwrap();
    for track in [1, 2] {
        let seg = format!(
            "{base}getMP4MediaFragment.mp4?SessionToken={token}&TrackNumber={track}&Time={t}"
        );
        let (s, h, b) = get(&seg).await;
        assert_eq!((s, h["content-type"].to_str().unwrap()), (200, "video/mp4"));
        assert_eq!(boxes(&b), vec!["moof", "mdat"]);
        let init = format!(
            "{base}getMP4InitFragment.mp4?SessionToken={token}&TrackNumber={track}&SequenceNumber=999999"
        );
        assert_eq!(get(&init).await.0, 404, "no such upload session");
    }
}
