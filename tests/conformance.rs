//! The producer conformance matrix (issue 13 parts 4 and 5). Every source — made at test
//! time by ffmpeg, GStreamer or mkvmerge, or a KVS producer SDK capture — is pushed through
//! PutMedia and read back through every consumer API; each (source, API) cell is decided by
//! assertions: `pass`, `n/a` (a container limit or a documented server limitation, and
//! only when the server answered exactly that), or `FAIL`. The table is written to
//! `target/tmp/compatibility.md` and must equal the committed `docs/compatibility.md`
//! (`STREAMVAULT_UPDATE_COMPATIBILITY=1` rewrites it). `STREAMVAULT_CONFORMANCE_ONLY=<substring>`
//! runs the sources whose name contains it (and skips the doc comparison).

#[path = "conformance/apis.rs"]
mod apis;
mod common;
#[path = "conformance/media.rs"]
mod media;
#[path = "browser/player.rs"]
mod player;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use apis::{Cell, Ctx, Prepared};
use common::*;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Audio {
    None,
    Aac,
    AacLaced,
    Opus,
    Alaw,
    Mulaw,
}

impl Audio {
    fn label(self) -> &'static str {
        match self {
            Audio::None => "none",
            Audio::Aac => "AAC",
            Audio::AacLaced => "AAC, laced",
            Audio::Opus => "Opus",
            Audio::Alaw => "G.711 A-law",
            Audio::Mulaw => "G.711 µ-law",
        }
    }
}

/// What GetImages can be expected to decode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decode {
    Full,
    Hevc,
    /// High 4:2:2 / 4:4:4 10-bit: carried through (remuxed) but not decoded.
    RemuxOnly,
}

enum Make {
    /// A bash command (after `media::PRELUDE`) writing `$OUT`.
    Cmd(&'static str),
    /// A file under `../shared/media/` (absolute timecodes).
    Capture(&'static str),
}

struct Source {
    name: &'static str,
    muxer: &'static str,
    video: &'static str,
    audio: Audio,
    pix_fmt: &'static str,
    decode: Decode,
    make: Make,
    /// Also played in Chromium with hls.js (HLS fMP4).
    browser: bool,
}

const FFMPEG: &str = "ffmpeg `-f matroska -live 1`";
const GST: &str = "GStreamer `matroskamux streamable=true`";

#[rustfmt::skip]
const SOURCES: &[Source] = &[
    Source { name: "ffmpeg-x264-baseline-aac", muxer: FFMPEG, video: "H.264 Baseline 320×240", audio: Audio::Aac,
        pix_fmt: "yuv420p", decode: Decode::Full, browser: false,
        make: Make::Cmd(r#"$FF $V $A $T -map 0:v -map 1:a $X264 -profile:v baseline -pix_fmt yuv420p -c:a aac -b:a 64k $LIVE "$OUT""#) },
    Source { name: "ffmpeg-x264-main-bf0-opus", muxer: FFMPEG, video: "H.264 Main, 0 B-frames", audio: Audio::Opus,
        pix_fmt: "yuv420p", decode: Decode::Full, browser: false,
        make: Make::Cmd(r#"$FF $V $A $T -map 0:v -map 1:a $X264 -profile:v main -bf 0 -pix_fmt yuv420p -c:a libopus -b:a 48k $LIVE "$OUT""#) },
    Source { name: "ffmpeg-x264-main-bf3-alaw", muxer: FFMPEG, video: "H.264 Main, 3 B-frames", audio: Audio::Alaw,
        pix_fmt: "yuv420p", decode: Decode::Full, browser: false,
        make: Make::Cmd(r#"$FF $V $A $T -map 0:v -map 1:a $X264 -profile:v main -bf 3 -pix_fmt yuv420p -c:a pcm_alaw -ar 8000 -ac 1 $LIVE "$OUT""#) },
    Source { name: "ffmpeg-x264-high-bf0-mulaw", muxer: FFMPEG, video: "H.264 High, 0 B-frames", audio: Audio::Mulaw,
        pix_fmt: "yuv420p", decode: Decode::Full, browser: false,
        make: Make::Cmd(r#"$FF $V $A $T -map 0:v -map 1:a $X264 -profile:v high -bf 0 -pix_fmt yuv420p -c:a pcm_mulaw -ar 8000 -ac 1 $LIVE "$OUT""#) },
    Source { name: "ffmpeg-x264-high-bf3", muxer: FFMPEG, video: "H.264 High, 3 B-frames", audio: Audio::None,
        pix_fmt: "yuv420p", decode: Decode::Full, browser: false,
        make: Make::Cmd(r#"$FF $V $T $X264 -profile:v high -bf 3 -pix_fmt yuv420p $LIVE "$OUT""#) },
    Source { name: "ffmpeg-x264-high422-10bit", muxer: FFMPEG, video: "H.264 High 4:2:2 10-bit", audio: Audio::None,
        pix_fmt: "yuv422p10le", decode: Decode::RemuxOnly, browser: false,
        make: Make::Cmd(r#"$FF $V $T $X264 -profile:v high422 -pix_fmt yuv422p10le $LIVE "$OUT""#) },
    Source { name: "ffmpeg-x264-high444-10bit", muxer: FFMPEG, video: "H.264 High 4:4:4 10-bit", audio: Audio::None,
        pix_fmt: "yuv444p10le", decode: Decode::RemuxOnly, browser: false,
        make: Make::Cmd(r#"$FF $V $T $X264 -profile:v high444 -pix_fmt yuv444p10le $LIVE "$OUT""#) },
    Source { name: "ffmpeg-x264-642x362-aac", muxer: FFMPEG, video: "H.264 Main 642×362, 0 B-frames", audio: Audio::Aac,
        pix_fmt: "yuv420p", decode: Decode::Full, browser: false,
        make: Make::Cmd(r#"$FF -f lavfi -i testsrc2=size=642x362:rate=30 $A $T -map 0:v -map 1:a $X264 -profile:v main -bf 0 -pix_fmt yuv420p -c:a aac -b:a 64k $LIVE "$OUT""#) },
    Source { name: "ffmpeg-x264-1080p", muxer: FFMPEG, video: "H.264 High 1920×1080, 1 s", audio: Audio::None,
        pix_fmt: "yuv420p", decode: Decode::Full, browser: false,
        make: Make::Cmd(r#"$FF -f lavfi -i testsrc2=size=1920x1080:rate=30 -t 1 $X264 -profile:v high -bf 0 -pix_fmt yuv420p $LIVE "$OUT""#) },
    Source { name: "ffmpeg-x265-aac", muxer: FFMPEG, video: "H.265 Main", audio: Audio::Aac,
        pix_fmt: "yuv420p", decode: Decode::Hevc, browser: false,
        make: Make::Cmd(r#"$FF $V $A $T -map 0:v -map 1:a -c:v libx265 -preset ultrafast -pix_fmt yuv420p -x265-params keyint=30:min-keyint=30:scenecut=0:log-level=error -c:a aac -b:a 64k $LIVE "$OUT""#) },
    Source { name: "gst-x264enc-default-aac", muxer: GST, video: "H.264 High (x264enc default, B-frames)", audio: Audio::Aac,
        pix_fmt: "yuv420p", decode: Decode::Full, browser: true,
        make: Make::Cmd(r#"$GST $GV ! x264enc key-int-max=30 option-string=scenecut=0 ! $H264 ! $MUX $GA ! mux."#) },
    Source { name: "gst-x264enc-zerolatency", muxer: GST, video: "H.264 High (x264enc tune=zerolatency)", audio: Audio::None,
        pix_fmt: "yuv420p", decode: Decode::Full, browser: false,
        make: Make::Cmd(r#"$GST $GV ! x264enc tune=zerolatency key-int-max=30 option-string=scenecut=0 ! $H264 ! $MUX"#) },
    Source { name: "gst-openh264enc-aac", muxer: GST, video: "H.264 Constrained Baseline (openh264enc)", audio: Audio::Aac,
        pix_fmt: "yuv420p", decode: Decode::Full, browser: false,
        make: Make::Cmd(r#"$GST $GV ! openh264enc gop-size=30 ! $H264 ! $MUX $GA ! mux."#) },
    Source { name: "gst-x265enc", muxer: GST, video: "H.265 Main (x265enc)", audio: Audio::None,
        pix_fmt: "yuv420p", decode: Decode::Hevc, browser: false,
        make: Make::Cmd(r#"$GST $GV ! x265enc key-int-max=30 option-string=scenecut=0 ! h265parse ! video/x-h265,stream-format=hvc1,alignment=au ! $MUX"#) },
    Source { name: "mkvmerge-x264-aac-laced", muxer: "mkvmerge (remux of ffmpeg output)", video: "H.264 Main", audio: Audio::AacLaced,
        pix_fmt: "yuv420p", decode: Decode::Full, browser: false,
        make: Make::Cmd(r#"$FF $V $A $T -map 0:v -map 1:a $X264 -profile:v main -pix_fmt yuv420p -c:a aac -b:a 64k -f matroska "$DIR/in.mkv"
mkvmerge -q -o "$OUT" "$DIR/in.mkv""#) },
    Source { name: "kvs-producer-sdk-cpp", muxer: "KVS producer SDK (C++) capture", video: "H.264 Baseline 640×480", audio: Audio::None,
        pix_fmt: "yuv420p", decode: Decode::Full, browser: false,
        make: Make::Capture("kvs-captures/producer-sdk-test-stream-1_0.mkv") },
    Source { name: "kvs-producer-c", muxer: "KVS producer C 1.6.4 capture", video: "H.264 High 640×480", audio: Audio::None,
        pix_fmt: "yuv420p", decode: Decode::Full, browser: false,
        make: Make::Capture("kvs-captures/producer-c-1.6.4-putmedia.mkv") },
];

const APIS: [&str; 7] = [
    "PutMedia",
    "GetMedia",
    "GetClip",
    "HLS fMP4",
    "HLS TS",
    "DASH",
    "GetImages",
];

/// Generates a source and decodes it with ffmpeg; `None` when a capture is absent.
async fn prepare(s: &Source, dir: &Path) -> Option<Prepared> {
    let path = dir.join(format!("{}.mkv", s.name));
    let absolute = match s.make {
        Make::Cmd(cmd) => {
            let scratch = dir.join(s.name);
            std::fs::create_dir_all(&scratch).unwrap();
            media::make(cmd, &path, &scratch)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", s.name));
            false
        }
        Make::Capture(rel) => {
            std::fs::write(&path, shared_media(rel)?).unwrap();
            true
        }
    };
    let bytes = std::fs::read(&path).unwrap();
    let frames = frames_of(&bytes);
    let tracks = tracks_of(&bytes);
    let video: Vec<u64> = tracks.iter().filter(|t| t.1 == 1).map(|t| t.0).collect();
    let has_audio = tracks.iter().any(|t| t.1 == 2);
    assert_eq!(
        has_audio,
        s.audio != Audio::None,
        "{}: audio track presence",
        s.name
    );
    if s.audio == Audio::AacLaced {
        assert!(
            laced_blocks(&bytes) > 0,
            "{}: the source must really carry laced blocks",
            s.name
        );
    }
    let keyframes = frames
        .iter()
        .filter(|f| video.contains(&f.0) && f.2)
        .count();
    let span = (
        frames.iter().map(|f| f.1).min().unwrap(),
        frames.iter().map(|f| f.1).max().unwrap(),
    );
    let md5 = media::framemd5(path.to_str().unwrap(), s.pix_fmt, has_audio)
        .await
        .unwrap_or_else(|e| panic!("{}: source decode: {e}", s.name));
    let info = media::video_info(&path).await;
    assert_eq!(info.pts_ms.len(), md5.video.len(), "{}", s.name);
    Some(Prepared {
        stream: s.name.to_owned(),
        path,
        bytes,
        absolute,
        pix_fmt: s.pix_fmt,
        has_audio,
        md5,
        info,
        keyframes,
        span,
    })
}

/// Blocks with lacing, as our own MKV reader sees them.
fn laced_blocks(bytes: &[u8]) -> usize {
    use streamvault::mkv::{self, Event, Lacing};
    let mut r = mkv::Reader::new(mkv::Limits::default());
    r.push(bytes);
    let laced = |ev: Event| matches!(ev, Event::Block(b) if b.lacing != Lacing::None);
    let mut n = 0;
    while let Ok(Some(ev)) = r.next_event() {
        n += usize::from(laced(ev));
    }
    while let Ok(Some(ev)) = r.finish() {
        n += usize::from(laced(ev));
    }
    n
}

/// Runs one check on its own task, so a panic becomes a FAIL cell, not a lost matrix.
async fn guarded<T: Send + 'static>(
    f: impl std::future::Future<Output = T> + Send + 'static,
    on_panic: impl FnOnce(Cell) -> T,
) -> T {
    match tokio::spawn(f).await {
        Ok(v) => v,
        Err(e) => {
            let msg = e
                .try_into_panic()
                .ok()
                .and_then(|p| {
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                })
                .unwrap_or_default();
            on_panic(Cell::Fail(media::short(&format!("panic: {msg}"))))
        }
    }
}

struct Row {
    source: &'static Source,
    cells: Vec<Cell>,
    browser: Option<Cell>,
}

async fn run_source(ctx: &Ctx, srv: &TestServer, s: &'static Source, p: Prepared) -> Row {
    srv.control()
        .await
        .create_stream()
        .stream_name(s.name)
        .data_retention_in_hours(24)
        .send()
        .await
        .unwrap();
    let (put, n) = apis::put(ctx, &p).await;
    let p = Arc::new(p);
    let mut cells = vec![put];
    cells.push(guarded(apis::get_media(ctx.clone(), p.clone(), n), |c| c).await);
    cells.push(guarded(apis::get_clip(ctx.clone(), p.clone(), s.audio), |c| c).await);
    let mut fmp4_url = None;
    for container in [Some("FRAGMENTED_MP4"), Some("MPEG_TS"), None] {
        let (c, url) = guarded(
            apis::session(ctx.clone(), p.clone(), s.audio, container),
            |c| (c, None),
        )
        .await;
        if container == Some("FRAGMENTED_MP4") {
            fmp4_url = url.filter(|_| c == Cell::Pass);
        }
        cells.push(c);
    }
    cells.push(guarded(apis::get_images(ctx.clone(), p.clone(), s.decode), |c| c).await);
    let browser = if s.browser {
        Some(match fmp4_url {
            Some(url) => browser_plays(&url, &p).await,
            None => Cell::Fail("the HLS fMP4 session does not play in ffmpeg".into()),
        })
    } else {
        None
    };
    Row {
        source: s,
        cells,
        browser,
    }
}

/// Chromium + hls.js plays the session to (near) its end with no fatal error.
async fn browser_plays(url: &str, p: &Prepared) -> Cell {
    if !player::have_browser() {
        return Cell::Fail("browser not available".into());
    }
    let pts = &p.info.pts_ms;
    let end = (pts.last().unwrap() - pts[0]) as f64 / 1000.0;
    let mut pl = player::Player::start(url, 60);
    let r = pl
        .watch(std::time::Duration::from_secs(45), |s| {
            s.current_time >= end - 0.5
        })
        .await;
    pl.stop().await;
    match r {
        Ok(true) => Cell::Pass,
        Ok(false) => Cell::Fail(format!(
            "stalled at {:.2} s of {end:.2} s",
            pl.last.current_time
        )),
        Err(e) => Cell::Fail(media::short(&e)),
    }
}

fn render(rows: &[Row]) -> (String, Vec<String>) {
    let mut reasons: Vec<String> = Vec::new();
    let mut fails = Vec::new();
    let mut note = |r: &str| -> usize {
        match reasons.iter().position(|x| x == r) {
            Some(i) => i + 1,
            None => {
                reasons.push(r.to_owned());
                reasons.len()
            }
        }
    };
    let mut t = String::from(
        "# Producer compatibility\n\n\
         Generated by `tests/conformance.rs` (`cargo test --test conformance`; \
         `STREAMVAULT_UPDATE_COMPATIBILITY=1` rewrites this file, and the test fails when the \
         file differs from its run). Each source is pushed through PutMedia and read back \
         through every consumer API:\n\n\
         - **PutMedia**: no ERROR ack, every fragment PERSISTED, one fragment per video keyframe.\n\
         - **GetMedia** (EARLIEST), **GetClip** (MP4), **HLS fMP4**, **HLS TS**, **DASH** (ON_DEMAND \
         sessions over every fragment, played by ffmpeg from the session URL; DASH video and audio \
         adaptation sets read one at a time, as DASH players fetch them): ffmpeg decodes the \
         answer without an error and every video frame's MD5 (`-f framemd5`, source pixel format) and \
         every audio frame's MD5 equal those of ffmpeg's decode of the source.\n\
         - **GetImages**: a PNG for every 200 ms instant from the first to the last video frame, each \
         at least 35 dB PSNR against ffmpeg's decode of the frame on screen at that instant (the last \
         frame with pts ≤ the instant).\n\n\
         `n/a` is given only when the server answered exactly the documented refusal; the number \
         points at the reason below the table. The default build is shown (no `hevc` feature).\n\n\
         | source | muxer | video | audio |",
    );
    for a in APIS {
        t.push_str(&format!(" {a} |"));
    }
    t.push_str("\n|---|---|---|---|");
    t.push_str(&"---|".repeat(APIS.len()));
    t.push('\n');
    let mut browser_lines = Vec::new();
    for r in rows {
        let s = r.source;
        t.push_str(&format!(
            "| {} | {} | {} | {} |",
            s.name,
            s.muxer,
            s.video,
            s.audio.label()
        ));
        for (api, c) in APIS.iter().zip(&r.cells) {
            let text = match c {
                Cell::Pass => "pass".to_owned(),
                Cell::Na(why) => format!("n/a ({})", note(why)),
                Cell::Fail(why) => {
                    fails.push(format!("{} × {api}: {why}", s.name));
                    format!("**FAIL** ({})", note(why))
                }
            };
            t.push_str(&format!(" {text} |"));
        }
        t.push('\n');
        if let Some(c) = &r.browser {
            let text = match c {
                Cell::Pass => "pass".to_owned(),
                Cell::Na(w) => format!("n/a: {w}"),
                Cell::Fail(w) => {
                    fails.push(format!("{} × Chromium hls.js: {w}", s.name));
                    format!("**FAIL**: {w}")
                }
            };
            browser_lines.push(format!(
                "| {} | HLS fMP4 in headless Chromium with hls.js, played to the end without a fatal error | {text} |\n",
                s.name
            ));
        }
    }
    t.push('\n');
    for (i, r) in reasons.iter().enumerate() {
        t.push_str(&format!("{}. {r}\n", i + 1));
    }
    if !browser_lines.is_empty() {
        t.push_str("\n| source | browser check | result |\n|---|---|---|\n");
        for l in browser_lines {
            t.push_str(&l);
        }
    }
    (t, fails)
}

// Runs in `cargo test` (CI installs every tool it needs; there a missing tool fails the
// test instead of skipping it). `STREAMVAULT_CONFORMANCE_ONLY=<substring>` runs a subset,
// `STREAMVAULT_UPDATE_COMPATIBILITY=1` rewrites docs/compatibility.md from the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_conformance_matrix() {
    for tool in ["ffmpeg", "ffprobe", "gst-launch-1.0", "mkvmerge"] {
        if !have_tool(tool) {
            assert!(
                std::env::var_os("CI").is_none(),
                "the conformance matrix needs {tool}, and CI must have it"
            );
            eprintln!("SKIPPED: the conformance matrix needs {tool}");
            return;
        }
    }
    let only = std::env::var("STREAMVAULT_CONFORMANCE_ONLY").ok();
    let started = Instant::now();
    let srv = TestServer::start().await;
    let ctx = Ctx {
        addr: srv.addr,
        media: srv.media().await,
        archived: srv.archived().await,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    let mut complete = only.is_none();
    for s in SOURCES {
        if only.as_deref().is_some_and(|o| !s.name.contains(o)) {
            continue;
        }
        let t = Instant::now();
        let Some(p) = prepare(s, dir.path()).await else {
            eprintln!("SKIPPED: {}: capture not found", s.name);
            complete = false;
            continue;
        };
        let made = t.elapsed().as_secs_f64();
        let row = run_source(&ctx, &srv, s, p).await;
        eprintln!(
            "{:<28} {:>5.1} s (source {made:.1} s): {}",
            s.name,
            t.elapsed().as_secs_f64(),
            row.cells
                .iter()
                .zip(APIS)
                .map(|(c, a)| format!("{a}={c:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        rows.push(row);
    }
    let (doc, fails) = render(&rows);
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("compatibility.md");
    std::fs::write(&out, &doc).unwrap();
    eprintln!(
        "matrix: {} sources in {:.0} s; table in {}",
        rows.len(),
        started.elapsed().as_secs_f64(),
        out.display()
    );
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/compatibility.md");
    if complete && !cfg!(feature = "hevc") {
        if std::env::var_os("STREAMVAULT_UPDATE_COMPATIBILITY").is_some() {
            std::fs::write(&committed, &doc).unwrap();
            eprintln!("rewrote {}", committed.display());
        }
        let old = std::fs::read_to_string(&committed).unwrap_or_default();
        assert!(
            fails.is_empty(),
            "{} FAIL cells:\n{}",
            fails.len(),
            fails.join("\n")
        );
        assert!(
            old == doc,
            "docs/compatibility.md differs from this run ({}); rerun with STREAMVAULT_UPDATE_COMPATIBILITY=1",
            out.display()
        );
    } else {
        eprintln!("subset run (or `hevc` build): docs/compatibility.md not compared");
        assert!(
            fails.is_empty(),
            "{} FAIL cells:\n{}",
            fails.len(),
            fails.join("\n")
        );
    }
    srv.stop().await.unwrap();
}
