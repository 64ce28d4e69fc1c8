//! ffmpeg / ffprobe helpers of the conformance matrix: making sources, per-frame MD5s,
//! frame timestamps, reference RGB frames and PSNR.

use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncReadExt;

/// Shell variables every source command may use (`$OUT` is the file to write, `$DIR` a
/// scratch directory). Short clips, 1 s GOPs, explicit pixel formats.
pub const PRELUDE: &str = r#"set -e
FF="ffmpeg -nostdin -hide_banner -v error -y"
V="-f lavfi -i testsrc2=size=320x240:rate=30"
A="-f lavfi -i sine=frequency=1000:sample_rate=48000"
T="-t 2.5"
GOP="-g 30 -keyint_min 30 -sc_threshold 0"
X264="-c:v libx264 -preset veryfast $GOP"
LIVE="-f matroska -live 1 -cluster_time_limit 1100 -cluster_size_limit 50000000"
GST="gst-launch-1.0 -q -e"
GV="videotestsrc pattern=ball num-buffers=75 ! video/x-raw,width=320,height=240,framerate=30/1,format=I420"
GA="audiotestsrc wave=sine freq=1000 num-buffers=118 ! audio/x-raw,rate=48000,channels=1 ! audioconvert ! avenc_aac bitrate=64000 ! aacparse"
H264="h264parse ! video/x-h264,stream-format=avc,alignment=au"
MUX="matroskamux name=mux streamable=true ! filesink location=$OUT"
"#;

/// Runs a source command (bash, after [`PRELUDE`]) writing `out`.
pub async fn make(cmd: &str, out: &Path, dir: &Path) -> Result<(), String> {
    let o = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(format!("{PRELUDE}{cmd}"))
        .env("OUT", out)
        .env("DIR", dir)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if !o.status.success() || !out.exists() {
        return Err(format!(
            "source command failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(())
}

/// Per-frame MD5s of a decode: video (first video stream, in `pix_fmt`) and, when
/// `audio`, the first audio stream.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Md5s {
    pub video: Vec<String>,
    pub audio: Vec<String>,
}

/// `ffmpeg -i INPUT -map 0:v:0 -f framemd5` (and `-map 0:a:0`). Any line ffmpeg prints at
/// level `error` (a decode or demux error) makes it an `Err`.
///
/// A DASH manifest (`.mpd`) is read once per adaptation set, as DASH players fetch them:
/// ffmpeg's DASH demuxer, reading both at once, ends the whole input when the video
/// representation ends and drops the audio frames that play after the last picture
/// (checked with the audio-only read, which returns them all).
pub async fn framemd5(input: &str, pix_fmt: &str, audio: bool) -> Result<Md5s, String> {
    let dir = tempfile::tempdir().unwrap();
    let (v, a) = (dir.path().join("v.md5"), dir.path().join("a.md5"));
    let video_args = |out: &Path| -> Vec<String> {
        [
            "-map",
            "0:v:0",
            "-fps_mode",
            "passthrough",
            "-pix_fmt",
            pix_fmt,
            "-f",
            "framemd5",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain([out.to_string_lossy().into_owned()])
        .collect()
    };
    let audio_args = |out: &Path| -> Vec<String> {
        ["-map", "0:a:0", "-f", "framemd5"]
            .into_iter()
            .map(str::to_owned)
            .chain([out.to_string_lossy().into_owned()])
            .collect()
    };
    if audio && input.contains(".mpd") {
        run_ffmpeg(input, video_args(&v)).await?;
        run_ffmpeg(input, audio_args(&a)).await?;
    } else if audio {
        let mut args = video_args(&v);
        args.extend(audio_args(&a));
        run_ffmpeg(input, args).await?;
    } else {
        run_ffmpeg(input, video_args(&v)).await?;
    }
    let read = |p: &Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit(',').next().map(|m| m.trim().to_owned()))
            .collect()
    };
    Ok(Md5s {
        video: read(&v),
        audio: if audio { read(&a) } else { Vec::new() },
    })
}

/// `ffmpeg -i input <outputs>`; `Err` with ffmpeg's first error line on any error output.
async fn run_ffmpeg(input: &str, outputs: Vec<String>) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new("ffmpeg");
    cmd.args(["-nostdin", "-v", "error"]);
    if input.contains(".m3u8") {
        // Read a live playlist from its first segment (ffmpeg starts 3 from the end).
        cmd.args(["-live_start_index", "0"]);
    }
    cmd.args(["-i", input]).args(outputs);
    let o = cmd.output().await.map_err(|e| e.to_string())?;
    // A GetMedia response is a sequence of MKV documents (as AWS's is); ffmpeg's demuxer
    // reports each further Segment header as an error and reads on. Nothing else is let
    // through.
    let err: Vec<String> = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| !l.contains("Found unknown-length element with ID 0x18538067"))
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    if !o.status.success() || !err.is_empty() {
        let first = err.first().map(String::as_str).unwrap_or("exit status");
        // Drop ffmpeg's "[demuxer @ 0x…] " prefix: addresses change between runs.
        let first = match first.split_once("] ") {
            Some((pre, rest)) if pre.starts_with('[') => {
                format!("{} {rest}", pre.split(" @").next().unwrap_or(pre))
            }
            _ => first.to_owned(),
        };
        return Err(format!("ffmpeg: {}", short(&first)));
    }
    Ok(())
}

/// Keeps a message to one short line for a table cell.
pub fn short(s: &str) -> String {
    // URLs carry the server's port and session tokens, which change between runs.
    let mut s = s.replace('|', "/");
    while let Some(at) = s.find("http://") {
        let end = s[at..].find(['\'', '"', ' ']).map_or(s.len(), |e| at + e);
        s.replace_range(at..end, "<url>");
    }
    let s = s.trim();
    if s.chars().count() > 90 {
        format!("{}…", s.chars().take(90).collect::<String>())
    } else {
        s.to_owned()
    }
}

/// Compares per-frame MD5 lists: `Ok` when equal, else where they first differ.
pub fn same_frames(what: &str, got: &[String], want: &[String]) -> Result<(), String> {
    if got.len() != want.len() {
        // Say which end lost (or gained) frames when the rest lines up.
        let n = got.len().min(want.len());
        let end = if got[..n] == want[..n] {
            ", the rest equal from the start"
        } else if got[got.len() - n..] == want[want.len() - n..] {
            ", the rest equal up to the end"
        } else {
            ""
        };
        return Err(format!(
            "{what}: {} frames, source {}{end}",
            got.len(),
            want.len()
        ));
    }
    match got.iter().zip(want).position(|(g, w)| g != w) {
        None => Ok(()),
        Some(i) => Err(format!(
            "{what}: frame {i} of {} differs from the source",
            want.len()
        )),
    }
}

/// Video geometry and decoded frames' presentation times (ms, decode output order).
pub struct VideoInfo {
    pub width: usize,
    pub height: usize,
    pub pts_ms: Vec<i64>,
}

pub async fn video_info(path: &Path) -> VideoInfo {
    let probe = |args: &'static [&'static str]| {
        let mut c = tokio::process::Command::new("ffprobe");
        c.args(["-v", "error", "-select_streams", "v:0"])
            .args(args)
            .args(["-of", "csv=p=0"])
            .arg(path);
        c
    };
    let o = probe(&["-show_entries", "stream=width,height"])
        .output()
        .await
        .unwrap();
    let wh: Vec<usize> = String::from_utf8_lossy(&o.stdout)
        .trim()
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect();
    let o = probe(&["-show_entries", "frame=pts_time"])
        .output()
        .await
        .unwrap();
    let pts_ms = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse::<f64>().ok())
        .map(|s| (s * 1000.0).round() as i64)
        .collect();
    VideoInfo {
        width: wh[0],
        height: wh[1],
        pts_ms,
    }
}

/// Streams ffmpeg's decode of `path` (first video stream, as RGB24, in decode output
/// order) and calls `on(index, rgb)` for every frame whose index `want` holds.
pub async fn rgb_frames(
    path: &Path,
    size: usize,
    want: &std::collections::BTreeSet<usize>,
    mut on: impl FnMut(usize, &[u8]),
) {
    let mut child = tokio::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0:v:0", "-fps_mode", "passthrough"])
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; size];
    let last = want.iter().next_back().copied().unwrap_or(0);
    for i in 0..=last {
        if out.read_exact(&mut buf).await.is_err() {
            break;
        }
        if want.contains(&i) {
            on(i, &buf);
        }
    }
    drop(out);
    let _ = child.kill().await;
}
