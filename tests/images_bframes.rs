//! GetImages on streams with B-frames, as real producers make them by default (ffmpeg's
//! libx264 and GStreamer's x264enc), and on H.264 profiles OpenH264 cannot decode.
//!
//! The media is encoded at test time. Every image is compared with ffmpeg's decode of the
//! frame on screen at the instant (the last frame whose presentation time is at or before
//! it): PSNR ≥ 35 dB, and neither neighbouring frame may match better. Samples are
//! uploaded in RELATIVE mode with producer start [`T0`], so producer time `T0 + t` is file
//! time `t`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::{Value, json};

const T0: i64 = 1_795_600_000_000;
const T0_HEADER: &str = "1795600000";
const W: usize = 640;
const H: usize = 360;

fn run(cmd: &mut Command) {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// ffmpeg's libx264 defaults (3 B-frames, High profile), 1 s GOP, 4 s.
fn ffmpeg_sample(dir: &Path) -> PathBuf {
    let p = dir.join("ffmpeg.mkv");
    run(Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={W}x{H}:rate=30"))
        .args(["-t", "4", "-pix_fmt", "yuv420p", "-c:v", "libx264"])
        .args([
            "-profile:v",
            "high",
            "-g",
            "30",
            "-bf",
            "3",
            "-f",
            "matroska",
        ])
        .arg(&p));
    p
}

/// GStreamer's x264enc defaults (medium preset: B-frames), 1 s GOP, 4 s.
fn gstreamer_sample(dir: &Path) -> PathBuf {
    let p = dir.join("gst.mkv");
    let pipeline = format!(
        "videotestsrc pattern=ball num-buffers=120 ! \
         video/x-raw,width={W},height={H},framerate=30/1,format=I420 ! \
         x264enc key-int-max=30 ! h264parse ! matroskamux ! filesink location={}",
        p.display()
    );
    run(Command::new("gst-launch-1.0")
        .args(["-q", "-e"])
        .args(pipeline.split_whitespace()));
    p
}

/// Presentation times (ms) of the video frames, in presentation order.
fn frame_pts(sample: &Path) -> Vec<i64> {
    let o = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["frame=pts", "-of", "csv=p=0"])
        .arg(sample)
        .output()
        .unwrap();
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.trim().trim_end_matches(','))
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().unwrap())
        .collect()
}

/// Every frame ffmpeg decodes, in presentation order, as packed RGB.
fn ffmpeg_frames(sample: &Path) -> Vec<Vec<u8>> {
    let o = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(sample)
        .args(["-map", "0:v:0", "-fps_mode", "passthrough"])
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o.stdout.chunks(W * H * 3).map(<[u8]>::to_vec).collect()
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let sse: u64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| u64::from(x.abs_diff(*y)).pow(2))
        .sum();
    if sse == 0 {
        99.0
    } else {
        10.0 * (255.0f64 * 255.0 * a.len() as f64 / sse as f64).log10()
    }
}

async fn server_with_stream() -> TestServer {
    // 100 ms sampling: below the default minimum (200 ms).
    let srv = TestServer::start_with(|s| {
        s.images.min_sampling_interval = Duration::from_millis(100);
    })
    .await;
    srv.create_stream("cam", 24).await;
    srv
}

async fn upload(srv: &TestServer, sample: &Path) {
    let body = std::fs::read(sample).unwrap();
    let r = put_media(
        srv.addr,
        &[
            ("x-amzn-stream-name", "cam"),
            ("x-amzn-producer-start-timestamp", T0_HEADER),
        ],
        &body,
        65536,
    )
    .await;
    assert!(r.error_ids().is_empty(), "{:?}", r.error_ids());
}

/// Every (file-time ms, image or error) of a PNG request, following NextToken.
async fn images(
    srv: &TestServer,
    from_ms: i64,
    to_ms: i64,
    every_ms: i64,
) -> Vec<(i64, Result<Vec<u8>, String>)> {
    let mut body = json!({
        "StreamName": "cam",
        "ImageSelectorType": "PRODUCER_TIMESTAMP",
        "StartTimestamp": (T0 + from_ms) as f64 / 1000.0,
        "EndTimestamp": (T0 + to_ms) as f64 / 1000.0,
        "SamplingInterval": every_ms,
        "Format": "PNG",
        "MaxResults": 100,
    });
    let mut out = Vec::new();
    loop {
        let (status, _, text) = srv.post_raw("/getImages", &body.to_string()).await;
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        for img in v["Images"].as_array().unwrap() {
            let ms = (img["TimeStamp"].as_f64().unwrap() * 1000.0).round() as i64 - T0;
            out.push(match img["ImageContent"].as_str() {
                Some(b) => (
                    ms,
                    Ok(base64::engine::general_purpose::STANDARD.decode(b).unwrap()),
                ),
                None => (ms, Err(img["Error"].as_str().unwrap().to_owned())),
            });
        }
        match v["NextToken"].as_str() {
            Some(t) => body["NextToken"] = json!(t),
            None => return out,
        }
    }
}

/// Uploads a B-frame sample and checks an image for every 100 ms instant (on frame times
/// and between them) against ffmpeg's decode of the frame on screen. Returns the PSNRs.
async fn every_instant_shows_the_frame_on_screen(name: &str, sample: &Path) -> Vec<f64> {
    let logs = captured_logs();
    let pts = frame_pts(sample);
    let frames = ffmpeg_frames(sample);
    assert_eq!(pts.len(), frames.len());
    assert!(pts.len() >= 100, "{name}: {} frames", pts.len());
    assert!(pts.windows(2).all(|w| w[0] < w[1]));
    let srv = server_with_stream().await;
    upload(&srv, sample).await;
    let end = *pts.last().unwrap();

    let mut got = images(&srv, 0, end, 100).await;
    got.extend(images(&srv, 50, end, 100).await);
    let instants = (0..end).step_by(100).count() + (50..end).step_by(100).count();
    assert_eq!(got.len(), instants, "{name}");
    let mut failures = Vec::new();
    let mut values = Vec::new();
    for (t, r) in &got {
        let png = match r {
            Ok(png) => png,
            Err(e) => {
                failures.push(format!("{t} ms: {e}"));
                continue;
            }
        };
        let img = image::load_from_memory(png).unwrap().to_rgb8();
        assert_eq!((img.width() as usize, img.height() as usize), (W, H));
        let rgb = img.into_raw();
        // The frame on screen: the last with pts ≤ t (the first before any frame).
        let want = pts.iter().rposition(|p| *p <= *t).unwrap_or(0);
        let p = psnr(&rgb, &frames[want]);
        let best = (0..frames.len())
            .filter(|i| i.abs_diff(want) <= 1)
            .max_by(|a, b| psnr(&rgb, &frames[*a]).total_cmp(&psnr(&rgb, &frames[*b])))
            .unwrap();
        if p < 35.0 || best != want {
            failures.push(format!(
                "{t} ms: PSNR {p:.1} dB against frame {want} (pts {}), best match frame {best} (pts {})",
                pts[want], pts[best]
            ));
        }
        values.push(p);
    }
    srv.stop().await.unwrap();
    let (min, mean) = (
        values.iter().copied().fold(f64::INFINITY, f64::min),
        values.iter().sum::<f64>() / values.len().max(1) as f64,
    );
    eprintln!(
        "{name}: {} images, PSNR min {min:.1} dB, mean {mean:.1} dB",
        values.len()
    );
    if !failures.is_empty() {
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        let mut why: Vec<&str> = text.lines().filter(|l| l.contains("no image")).collect();
        why.dedup_by_key(|l| l.split("error=").nth(1).map(str::to_owned));
        panic!(
            "{name}: {} of {} instants wrong:\n{}\nserver log:\n{}",
            failures.len(),
            got.len(),
            failures.join("\n"),
            why.join("\n")
        );
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_b_frames_give_an_image_at_every_instant() {
    if !have_tool("ffmpeg") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sample = ffmpeg_sample(dir.path());
    every_instant_shows_the_frame_on_screen("ffmpeg libx264", &sample).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gstreamer_b_frames_give_an_image_at_every_instant() {
    if !have_tool("ffmpeg") || !have_tool("gst-launch-1.0") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sample = gstreamer_sample(dir.path());
    every_instant_shows_the_frame_on_screen("GStreamer x264enc", &sample).await;
}

/// Log lines of the whole test binary (the server logs from runtime and blocking-pool
/// threads, so the subscriber must be the global one).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// High 4:4:4 Predictive at 10 bits: OpenH264 decodes only 4:2:0 at 8 bits. Without the
/// `hevc` feature every covered instant is MEDIA_ERROR and the log says why; with it
/// libavcodec decodes the stream and the images match ffmpeg's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_444_10_bit_is_a_logged_media_error_or_decoded_by_ffmpeg() {
    if !have_tool("ffmpeg") {
        return;
    }
    let logs = captured_logs();
    let dir = tempfile::tempdir().unwrap();
    let sample = dir.path().join("hi444.mkv");
    run(Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={W}x{H}:rate=30"))
        .args(["-t", "2", "-pix_fmt", "yuv444p10le", "-c:v", "libx264"])
        .args(["-profile:v", "high444", "-g", "30", "-f", "matroska"])
        .arg(&sample));
    let srv = server_with_stream().await;
    upload(&srv, &sample).await;
    let got = images(&srv, 0, 1900, 100).await;
    assert_eq!(got.len(), 19);
    if cfg!(feature = "hevc") {
        let pts = frame_pts(&sample);
        let frames = ffmpeg_frames(&sample);
        for (t, r) in &got {
            let png = r.as_ref().unwrap_or_else(|e| panic!("{t} ms: {e}"));
            let rgb = image::load_from_memory(png).unwrap().to_rgb8().into_raw();
            let want = pts.iter().rposition(|p| *p <= *t).unwrap_or(0);
            let p = psnr(&rgb, &frames[want]);
            assert!(p >= 35.0, "{t} ms: PSNR {p:.1} dB");
        }
    } else {
        assert!(
            got.iter()
                .all(|(_, r)| r.as_ref().err().map(String::as_str) == Some("MEDIA_ERROR")),
            "{:?}",
            got.iter()
                .map(|(t, r)| (t, r.as_ref().err()))
                .collect::<Vec<_>>()
        );
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains("no image for an instant") && l.contains("profile"))
            .unwrap_or_else(|| panic!("no log line with the reason:\n{text}"));
        for want in ["High 4:4:4", "4:4:4", "10-bit"] {
            assert!(line.contains(want), "{want} missing: {line}");
        }
    }
    // The server is still up and answers.
    let (status, _, _) = srv.post_raw("/getImages", "{}").await;
    assert_eq!(status, 400);
    srv.stop().await.unwrap();
}
