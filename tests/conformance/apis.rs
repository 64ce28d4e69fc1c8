//! One check per consumer API: each returns the matrix cell for one source, decided by
//! what the server answered and what ffmpeg decoded.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesisvideoarchivedmedia::error::ProvideErrorMetadata;
use aws_sdk_kinesisvideoarchivedmedia::types::{
    ClipFragmentSelector, ClipFragmentSelectorType, ClipTimestampRange,
};
use aws_sdk_kinesisvideomedia::types::{StartSelector, StartSelectorType};
use aws_smithy_types::DateTime;
use base64::Engine;
use serde_json::{Value, json};

use super::common::{self, PutResult};
use super::media::{self, Md5s, VideoInfo, same_frames, short};

/// A matrix cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Pass,
    /// Not applicable: a container limit or a documented server limitation, confirmed by
    /// the server's answer.
    Na(String),
    Fail(String),
}

/// Producer time (ms) of file time 0 for sources uploaded in RELATIVE mode.
pub const T0_MS: i64 = 1_795_600_000_000;

/// The error code a documented "cannot package this codec" answer carries.
const UNSUPPORTED: &str = "UnsupportedStreamMediaTypeException";

/// A source as generated and decoded by ffmpeg, ready to check the server against.
pub struct Prepared {
    pub stream: String,
    pub path: std::path::PathBuf,
    pub bytes: Vec<u8>,
    /// Captures carry absolute (epoch ms) timecodes; generated sources start at 0.
    pub absolute: bool,
    pub pix_fmt: &'static str,
    pub has_audio: bool,
    pub md5: Md5s,
    pub info: VideoInfo,
    pub keyframes: usize,
    /// (first, last) block timecode of the file, ms.
    pub span: (i64, i64),
}

impl Prepared {
    pub fn producer_ms(&self, file_ms: i64) -> i64 {
        if self.absolute {
            file_ms
        } else {
            T0_MS + file_ms
        }
    }

    /// A producer-time range holding every fragment, 1 s of margin each side (epoch s).
    fn range_secs(&self) -> (f64, f64) {
        (
            (self.producer_ms(self.span.0) - 1000) as f64 / 1000.0,
            (self.producer_ms(self.span.1) + 1000) as f64 / 1000.0,
        )
    }
}

/// Clients for one server, cheap to clone into spawned checks.
#[derive(Clone)]
pub struct Ctx {
    pub addr: SocketAddr,
    pub media: aws_sdk_kinesisvideomedia::Client,
    pub archived: aws_sdk_kinesisvideoarchivedmedia::Client,
}

fn cell(r: Result<(), String>) -> Cell {
    match r {
        Ok(()) => Cell::Pass,
        Err(e) => Cell::Fail(short(&e)),
    }
}

/// PutMedia: no ERROR ack, every fragment PERSISTED, one fragment per video keyframe.
pub async fn put(ctx: &Ctx, p: &Prepared) -> (Cell, usize) {
    let start = (T0_MS / 1000).to_string();
    let mut headers = vec![("x-amzn-stream-name", p.stream.as_str())];
    if p.absolute {
        headers.push(("x-amzn-fragment-timecode-type", "ABSOLUTE"));
    } else {
        headers.push(("x-amzn-fragment-timecode-type", "RELATIVE"));
        headers.push(("x-amzn-producer-start-timestamp", start.as_str()));
    }
    let r: PutResult = common::put_media(ctx.addr, &headers, &p.bytes, 65536).await;
    let persisted = r.events("PERSISTED").len();
    let check = || {
        if r.status != 200 {
            return Err(format!("HTTP {} {}", r.status, r.body));
        }
        if let Some(e) = r.events("ERROR").first() {
            return Err(format!("ERROR ack, ErrorId {}", e["ErrorId"]));
        }
        let buffering = r.events("BUFFERING").len();
        if persisted != buffering || persisted == 0 {
            return Err(format!("{persisted} of {buffering} fragments PERSISTED"));
        }
        if persisted != p.keyframes {
            return Err(format!(
                "{persisted} fragments for {} keyframes",
                p.keyframes
            ));
        }
        Ok(())
    };
    (cell(check()), persisted)
}

/// GetMedia from EARLIEST: all `n` fragments arrive and ffmpeg decodes the response to the
/// source's frames (video and audio).
pub async fn get_media(ctx: Ctx, p: Arc<Prepared>, n: usize) -> Cell {
    let out = match ctx
        .media
        .get_media()
        .stream_name(&p.stream)
        .start_selector(
            StartSelector::builder()
                .start_selector_type(StartSelectorType::Earliest)
                .build()
                .unwrap(),
        )
        .send()
        .await
    {
        Ok(o) => o,
        Err(e) => return Cell::Fail(format!("GetMedia: {:?}", e.code())),
    };
    let mut payload = out.payload;
    let (parsed, raw) = common::read_chunks(&mut payload, n, Duration::from_secs(60)).await;
    if parsed.complete() != n {
        return Cell::Fail(format!("{} of {n} fragments arrived", parsed.complete()));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("getmedia.mkv");
    std::fs::write(&file, &raw).unwrap();
    cell(compare(file.to_str().unwrap(), &p, p.has_audio).await)
}

/// Decodes `input` and compares its frames with the source's.
async fn compare(input: &str, p: &Prepared, audio: bool) -> Result<(), String> {
    let got = media::framemd5(input, p.pix_fmt, audio).await?;
    same_frames("video", &got.video, &p.md5.video)?;
    if audio {
        same_frames("audio", &got.audio, &p.md5.audio)?;
    }
    Ok(())
}

/// Why a consumer API cannot carry a source's audio, when it cannot.
pub fn audio_na(audio: super::Audio, api: &str) -> Option<&'static str> {
    use super::Audio::{Alaw, Mulaw, Opus};
    match (audio, api) {
        (Opus, _) => Some(
            "Opus: AWS packages AAC (and G.711 in GetClip/DASH) only; server answers UnsupportedStreamMediaTypeException",
        ),
        (Alaw | Mulaw, "HLS fMP4" | "HLS TS") => Some(
            "G.711: AWS HLS carries AAC only; server answers UnsupportedStreamMediaTypeException",
        ),
        (Alaw | Mulaw, _) => Some(
            "G.711: MP4 has no standard G.711 sample entry (`ffmpeg -c copy` refuses it); AWS accepts it in GetClip/DASH (docs/api.md); server answers UnsupportedStreamMediaTypeException",
        ),
        _ => None,
    }
}

/// The n/a cell when the server refused with the documented error and the refusal was
/// expected; a failure otherwise.
fn refused(code: Option<&str>, status: &str, na: Option<&str>) -> Cell {
    match (code, na) {
        (Some(UNSUPPORTED), Some(reason)) => Cell::Na(reason.to_owned()),
        _ => Cell::Fail(format!("{status} {}", code.unwrap_or(""))),
    }
}

/// GetClip over every fragment: an MP4 whose frames are the source's.
pub async fn get_clip(ctx: Ctx, p: Arc<Prepared>, audio: super::Audio) -> Cell {
    let (from, to) = p.range_secs();
    let na = audio_na(audio, "GetClip");
    let res = ctx
        .archived
        .get_clip()
        .stream_name(&p.stream)
        .clip_fragment_selector(
            ClipFragmentSelector::builder()
                .fragment_selector_type(ClipFragmentSelectorType::ProducerTimestamp)
                .timestamp_range(
                    ClipTimestampRange::builder()
                        .start_timestamp(DateTime::from_secs_f64(from))
                        .end_timestamp(DateTime::from_secs_f64(to))
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await;
    let out = match res {
        Ok(o) => o,
        Err(e) => {
            let status = e
                .raw_response()
                .map(|r| format!("HTTP {}", r.status().as_u16()))
                .unwrap_or_else(|| "error".into());
            return refused(e.code(), &status, na);
        }
    };
    let mp4 = out.payload.collect().await.unwrap().into_bytes();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clip.mp4");
    std::fs::write(&file, &mp4).unwrap();
    cell(compare(file.to_str().unwrap(), &p, p.has_audio).await)
}

/// An ON_DEMAND HLS (`container` = FRAGMENTED_MP4 | MPEG_TS) or DASH (`container` = None)
/// session over every fragment, played by ffmpeg. Returns the cell and the session URL.
pub async fn session(
    ctx: Ctx,
    p: Arc<Prepared>,
    audio: super::Audio,
    container: Option<&'static str>,
) -> (Cell, Option<String>) {
    let (from, to) = p.range_secs();
    let range = json!({"StartTimestamp": from, "EndTimestamp": to});
    let (op, api, body) = match container {
        Some(c) => (
            "/getHLSStreamingSessionURL",
            if c == "MPEG_TS" { "HLS TS" } else { "HLS fMP4" },
            json!({"StreamName": p.stream, "PlaybackMode": "ON_DEMAND", "ContainerFormat": c,
                "HLSFragmentSelector": {"FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": range},
                "MaxMediaPlaylistFragmentResults": 1000}),
        ),
        None => (
            "/getDASHStreamingSessionURL",
            "DASH",
            json!({"StreamName": p.stream, "PlaybackMode": "ON_DEMAND",
                "DASHFragmentSelector": {"FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": range},
                "MaxManifestFragmentResults": 1000}),
        ),
    };
    let (status, headers, text) = common::raw_http(ctx.addr, "POST", op, &body.to_string()).await;
    if status != 200 {
        let code = common::header(&headers, "x-amzn-errortype");
        return (
            refused(code, &format!("HTTP {status}"), audio_na(audio, api)),
            None,
        );
    }
    let v: Value = serde_json::from_str(&text).unwrap();
    let url = v
        .as_object()
        .and_then(|o| o.values().next())
        .and_then(Value::as_str)
        .unwrap()
        .to_owned();
    let mut r = compare(&url, &p, p.has_audio).await;
    if r.is_err()
        && let Some(e) = first_http_error(&url).await
    {
        r = Err(e);
    }
    (cell(r), Some(url))
}

/// After a player failed: the first playlist, manifest, init or media segment (of the
/// first fragment) the server did not answer with 200, and its status.
async fn first_http_error(url: &str) -> Option<String> {
    let get = |u: String| async move {
        let r = reqwest::get(&u).await.ok()?;
        Some((r.status().as_u16(), r.text().await.unwrap_or_default()))
    };
    let base = &url[..url[..url.find('?')?].rfind('/')? + 1];
    let (s, top) = get(url.to_owned()).await?;
    if s != 200 {
        return Some(format!("session resource HTTP {s}"));
    }
    let mut wanted: Vec<(&str, String)> = Vec::new();
    if url.contains(".m3u8") {
        let media = top.lines().find(|l| !l.starts_with('#') && !l.is_empty())?;
        let (s, pl) = get(format!("{base}{media}")).await?;
        if s != 200 {
            return Some(format!("media playlist HTTP {s}"));
        }
        if let Some(init) = pl.lines().find_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\"")) {
            wanted.push(("init segment", init.trim_end_matches('"').to_owned()));
        }
        if let Some(seg) = pl.lines().find(|l| !l.starts_with('#') && !l.is_empty()) {
            wanted.push(("first segment", seg.to_owned()));
        }
    } else {
        // The manifest's own templates (first adaptation set), at its first segment time.
        let attr = |name: &str| -> Option<String> {
            let v = top.split(&format!("{name}=\"")).nth(1)?.split('"').next()?;
            Some(v.replace("&amp;", "&"))
        };
        let t = attr("<S t")?;
        wanted.push(("init segment", attr("initialization")?));
        wanted.push(("first segment", attr("media")?.replace("$Time$", &t)));
    }
    for (what, rel) in wanted {
        let (s, body) = get(format!("{base}{rel}")).await?;
        if s != 200 && s != 404 {
            let code = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["__type"].as_str().map(str::to_owned))
                .unwrap_or_default();
            return Some(format!("{what} HTTP {s} {code}"));
        }
    }
    None
}

/// Whether GetImages is expected to decline a source (MEDIA_ERROR on every instant).
pub fn images_na(decode: super::Decode) -> Option<&'static str> {
    match decode {
        super::Decode::Full => None,
        super::Decode::Hevc if cfg!(feature = "hevc") => None,
        super::Decode::Hevc => {
            Some("H.265 decoding needs the `hevc` build feature (README); without it MEDIA_ERROR")
        }
        super::Decode::RemuxOnly => {
            Some("remux-only source: OpenH264 decodes 8-bit 4:2:0 H.264 only; MEDIA_ERROR")
        }
    }
}

/// GetImages every 200 ms over the video: one PNG per instant, each within 35 dB PSNR of
/// ffmpeg's decode of the frame on screen (the last frame with pts ≤ the instant).
pub async fn get_images(ctx: Ctx, p: Arc<Prepared>, decode: super::Decode) -> Cell {
    let pts = &p.info.pts_ms;
    let (first, last) = (pts[0], *pts.last().unwrap());
    let start = p.producer_ms(first);
    let mut body = json!({
        "StreamName": p.stream, "ImageSelectorType": "PRODUCER_TIMESTAMP",
        "StartTimestamp": start as f64 / 1000.0,
        "EndTimestamp": (p.producer_ms(last) + 1) as f64 / 1000.0,
        "SamplingInterval": 200, "Format": "PNG", "MaxResults": 100,
    });
    // (instant, PNG bytes or the entry's error)
    let mut images: Vec<(i64, Result<Vec<u8>, String>)> = Vec::new();
    loop {
        let (status, _, text) =
            common::raw_http(ctx.addr, "POST", "/getImages", &body.to_string()).await;
        if status != 200 {
            return Cell::Fail(format!("HTTP {status}: {}", short(&text)));
        }
        let v: Value = serde_json::from_str(&text).unwrap();
        for img in v["Images"].as_array().unwrap() {
            let ms = (img["TimeStamp"].as_f64().unwrap() * 1000.0).round() as i64;
            let r = match img["ImageContent"].as_str() {
                Some(b) => Ok(base64::engine::general_purpose::STANDARD.decode(b).unwrap()),
                None => Err(img["Error"].as_str().unwrap_or("?").to_owned()),
            };
            images.push((ms, r));
        }
        match v["NextToken"].as_str() {
            Some(t) => body["NextToken"] = json!(t),
            None => break,
        }
    }
    let want_n = ((last - first) / 200 + 1) as usize;
    if images.len() != want_n {
        return Cell::Fail(format!("{} images for {want_n} instants", images.len()));
    }
    let errors: Vec<&(i64, Result<Vec<u8>, String>)> =
        images.iter().filter(|(_, r)| r.is_err()).collect();
    if let Some(reason) = images_na(decode) {
        return if errors.len() == images.len()
            && errors
                .iter()
                .all(|(_, r)| r.as_ref().err().unwrap() == "MEDIA_ERROR")
        {
            Cell::Na(reason.to_owned())
        } else {
            Cell::Fail(format!(
                "expected MEDIA_ERROR on every instant, got {} images",
                images.len() - errors.len()
            ))
        };
    }
    if let Some((ms, e)) = errors.first() {
        return Cell::Fail(format!(
            "{} of {} instants {} (first at +{:.1} s)",
            errors.len(),
            images.len(),
            e.as_ref().err().unwrap(),
            (ms - start) as f64 / 1000.0
        ));
    }
    // The frame on screen at each instant, by decode-order index.
    let mut by_frame: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (k, (ms, _)) in images.iter().enumerate() {
        let file_ms = ms - p.producer_ms(0);
        let idx = pts.partition_point(|t| *t <= file_ms).saturating_sub(1);
        by_frame.entry(idx).or_default().push(k);
    }
    let want: BTreeSet<usize> = by_frame.keys().copied().collect();
    let (w, h) = (p.info.width, p.info.height);
    let mut worst: Option<(f64, usize)> = None;
    let mut seen = 0;
    media::rgb_frames(&p.path, w * h * 3, &want, |idx, rgb| {
        for &k in &by_frame[&idx] {
            seen += 1;
            let png = images[k].1.as_ref().unwrap();
            let got = image::load_from_memory(png).map(|i| i.to_rgb8());
            let v = match got {
                Ok(i) if (i.width() as usize, i.height() as usize) == (w, h) => {
                    common::psnr(&i.into_raw(), rgb)
                }
                _ => 0.0,
            };
            if worst.is_none_or(|(x, _)| v < x) {
                worst = Some((v, k));
            }
        }
    })
    .await;
    match worst {
        _ if seen != images.len() => Cell::Fail(format!(
            "reference decode gave {seen} of {} frames",
            images.len()
        )),
        Some((v, k)) if v < 35.0 => Cell::Fail(format!(
            "PSNR {v:.1} dB at +{:.1} s (< 35 dB)",
            (images[k].0 - start) as f64 / 1000.0
        )),
        Some((v, _)) => {
            eprintln!("  GetImages: {} images, min PSNR {v:.1} dB", images.len());
            Cell::Pass
        }
        None => Cell::Fail("no images".into()),
    }
}
