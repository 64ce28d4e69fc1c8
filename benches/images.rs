//! Keyframe-to-JPEG extraction, streamvault against ffmpeg on the same input in the same
//! run. For each input, every fragment's keyframe becomes one JPEG file:
//!
//! - `streamvault`: the GetImages path (MKV demux → OpenH264 with a reused decoder →
//!   RGB → jpeg-encoder q80 → file), sequentially on one thread, and on 2 threads (the
//!   server decodes fragments in parallel, up to `images.max_concurrent_decodes`);
//! - `ffmpeg`: `ffmpeg -skip_frame nokey -i IN -vsync 0 out%04d.jpg` (its defaults), and
//!   the same with `-threads 1`.
//!
//! Inputs: `media-samples/h264_720p_gop1s.mkv` (10 s, 10 keyframes) and a 60 s 720p
//! testsrc2 stream with a 1 s GOP made on the fly with ffmpeg (60 keyframes). Wall time,
//! median of 7 runs, output written to a temporary directory each time.
//!
//!     cargo bench --bench images
//!
//! Not a criterion bench: one side is an external process, timed as a whole.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use bytes::Bytes;
use streamvault::images::decode::DecoderPool;
use streamvault::images::render::{VideoFrame, render_fragment};
use streamvault::images::{Format, OutputSpec};
use streamvault::mkv::{self, Event, ids};

const RUNS: usize = 7;

/// The video track's codec and its frames, grouped by cluster.
struct Demuxed {
    codec_id: String,
    codec_private: Bytes,
    clusters: Vec<Vec<VideoFrame>>,
}

fn demux(bytes: &[u8]) -> Demuxed {
    let mut r = mkv::Reader::new(mkv::Limits::default());
    r.push(bytes);
    let mut track = None;
    let mut clusters: Vec<Vec<VideoFrame>> = Vec::new();
    let mut tc = 0i64;
    let mut on = |ev: Event| match ev {
        Event::TopLevel {
            id: ids::TRACKS,
            raw,
            ..
        } => {
            let t = mkv::parse_tracks(&raw).unwrap();
            track = t.into_iter().find(|t| t.track_type == 1);
        }
        Event::ClusterStart { .. } => clusters.push(Vec::new()),
        Event::ClusterTimecode { value, .. } => tc = value as i64,
        Event::Block(b) => {
            if track.as_ref().is_some_and(|t| t.number == b.track)
                && let Some(c) = clusters.last_mut()
            {
                c.push(VideoFrame {
                    ms: tc + i64::from(b.timecode),
                    keyframe: b.keyframe,
                    data: Bytes::copy_from_slice(b.frame()),
                });
            }
        }
        _ => {}
    };
    while let Some(ev) = r.next_event().unwrap() {
        on(ev);
    }
    while let Some(ev) = r.finish().unwrap() {
        on(ev);
    }
    let t = track.expect("a video track");
    Demuxed {
        codec_id: t.codec_id,
        codec_private: t.codec_private.unwrap_or_default(),
        clusters,
    }
}

/// streamvault: each cluster's keyframe to a JPEG file, on `threads` threads.
fn ours(input: &[u8], out: &Path, threads: usize) -> usize {
    let d = demux(input);
    let pool = DecoderPool::new(threads * 2);
    let spec = OutputSpec {
        format: Format::Jpeg,
        quality: 80,
        width: None,
        height: None,
    };
    let work: Vec<(usize, &Vec<VideoFrame>)> = d.clusters.iter().enumerate().collect();
    let chunk = work.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        for part in work.chunks(chunk) {
            let (pool, d) = (&pool, &d);
            s.spawn(move || {
                for (i, frames) in part {
                    let Some(key) = frames.iter().find(|f| f.keyframe) else {
                        continue;
                    };
                    let r = render_fragment(
                        pool,
                        &d.codec_id,
                        &d.codec_private,
                        frames,
                        &[key.ms],
                        &spec,
                    );
                    let jpeg = r.into_iter().next().unwrap().unwrap();
                    std::fs::write(out.join(format!("sv{:04}.jpg", i + 1)), &jpeg).unwrap();
                }
            });
        }
    });
    d.clusters.len()
}

fn ffmpeg(input: &Path, out: &Path, threads1: bool) {
    let mut c = Command::new("ffmpeg");
    c.args(["-nostdin", "-v", "error", "-y"]);
    if threads1 {
        c.args(["-threads", "1"]);
    }
    c.args(["-skip_frame", "nokey", "-i"])
        .arg(input)
        .args(["-vsync", "0"])
        .arg(out.join("out%04d.jpg"));
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(mut f: impl FnMut(&Path)) -> f64 {
    let mut v = Vec::new();
    for _ in 0..RUNS {
        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        f(dir.path());
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    median(v)
}

fn dir_bytes(f: impl Fn(&Path)) -> (usize, u64) {
    let dir = tempfile::tempdir().unwrap();
    f(dir.path());
    let mut n = 0;
    let mut b = 0;
    for e in std::fs::read_dir(dir.path()).unwrap() {
        n += 1;
        b += e.unwrap().metadata().unwrap().len();
    }
    (n, b)
}

fn main() {
    if Command::new("ffmpeg").arg("-version").output().is_err() {
        eprintln!("SKIPPED: ffmpeg not installed");
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let long = tmp.path().join("h264_720p_60s_gop1s.mkv");
    let o = Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=30",
            "-t",
            "60",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-profile:v",
            "main",
            "-pix_fmt",
            "yuv420p",
            "-b:v",
            "1M",
            "-bf",
            "0",
            "-g",
            "30",
            "-keyint_min",
            "30",
            "-sc_threshold",
            "0",
            "-f",
            "matroska",
            "-live",
            "1",
            "-cluster_time_limit",
            "10000",
            "-cluster_size_limit",
            "10000000",
        ])
        .arg(&long)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let inputs = [root.join("media-samples/h264_720p_gop1s.mkv"), long];
    println!(
        "| input | keyframes | streamvault 1 thread (ms) | streamvault 2 threads (ms) | ffmpeg default (ms) | ffmpeg -threads 1 (ms) | ffmpeg / streamvault (1 thr) | ffmpeg / streamvault (2 thr) | ffmpeg -threads 1 / streamvault (1 thr) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for path in &inputs {
        let bytes = std::fs::read(path).unwrap();
        let n = ours(&bytes, tmp.path(), 1);
        let sv1 = time(|d| {
            ours(&bytes, d, 1);
        });
        let sv2 = time(|d| {
            ours(&bytes, d, 2);
        });
        let ff = time(|d| ffmpeg(path, d, false));
        let ff1 = time(|d| ffmpeg(path, d, true));
        let (nf, bf) = dir_bytes(|d| ffmpeg(path, d, false));
        let (ns, bs) = dir_bytes(|d| {
            ours(&bytes, d, 1);
        });
        assert_eq!(nf, ns, "same number of images");
        println!(
            "| {} | {n} | {sv1:.1} | {sv2:.1} | {ff:.1} | {ff1:.1} | {:.2} | {:.2} | {:.2} |",
            path.file_name().unwrap().to_string_lossy(),
            ff / sv1,
            ff / sv2,
            ff1 / sv1
        );
        eprintln!(
            "  output: streamvault {ns} files, {} KiB; ffmpeg {nf} files, {} KiB",
            bs / 1024,
            bf / 1024
        );
    }
}
