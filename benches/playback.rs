//! Playback packaging speed against `ffmpeg -c copy`, on the same input in the same run.
//!
//! Input: `media-samples/h264_aac_720p_gop1s.mkv` concatenated six times with
//! `ffmpeg -c copy` (60 s of 720p30 H.264 + AAC, one 1 s GOP per cluster). The bench
//! starts the real server (release build, temporary data dir, local encrypted store),
//! uploads that file once through PutMedia (60 fragments), then times, each as the median
//! of `RUNS` runs:
//!
//! - streamvault `GetClip` over HTTP for the whole range (faststart MP4, read to the end);
//! - streamvault HLS segment production: every `getMP4MediaFragment.mp4` (fMP4) or
//!   `getTSFragment.ts` (MPEG-TS) of an ON_DEMAND session, fetched one after another;
//! - ffmpeg remuxing the same MKV with `-c copy` into a faststart MP4, into fMP4 HLS
//!   segments (`-hls_time 1`), and into MPEG-TS HLS segments.
//!
//! The server side includes HTTP on loopback, reading and decrypting each fragment,
//! demuxing the MKV cluster and muxing; the ffmpeg side includes its process start (also
//! reported on its own). Ratios are ffmpeg time / streamvault time (> 1: streamvault is
//! faster).
//!
//!     cargo bench --bench playback

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const RUNS: usize = 7;
const COPIES: usize = 6;
const T0: i64 = 1_795_600_000;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ffmpeg(args: &[&str]) {
    let o = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-v", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg runs");
    assert!(
        o.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn time_ffmpeg(args: &[&str], clean: &Path) -> Duration {
    median(
        (0..RUNS)
            .map(|_| {
                let _ = std::fs::remove_dir_all(clean);
                std::fs::create_dir_all(clean).unwrap();
                let t = Instant::now();
                ffmpeg(args);
                t.elapsed()
            })
            .collect(),
    )
}

/// The 60 s input file.
fn make_input(dir: &Path) -> PathBuf {
    let sample =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("media-samples/h264_aac_720p_gop1s.mkv");
    let list = dir.join("list.txt");
    let line = format!("file '{}'\n", sample.display());
    std::fs::write(&list, line.repeat(COPIES)).unwrap();
    let out = dir.join("input.mkv");
    ffmpeg(&[
        "-f",
        "concat",
        "-safe",
        "0",
        "-i",
        list.to_str().unwrap(),
        "-c",
        "copy",
        "-f",
        "matroska",
        "-live",
        "1",
        "-cluster_time_limit",
        "10000",
        "-cluster_size_limit",
        "10000000",
        out.to_str().unwrap(),
    ]);
    out
}

async fn post(c: &reqwest::Client, base: &str, op: &str, body: Value) -> Value {
    let r = c
        .post(format!("{base}/{op}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let s = r.status();
    let text = r.text().await.unwrap();
    assert!(s.is_success(), "{op}: {s} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

async fn put_media(c: &reqwest::Client, base: &str, stream: &str, body: Vec<u8>) -> usize {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let r = c
        .post(format!("{base}/putMedia"))
        .header("x-amzn-stream-name", stream)
        .header("x-amzn-producer-start-timestamp", T0.to_string())
        .header("user-agent", "streamvault-bench")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let acks = r.text().await.unwrap();
    assert!(!acks.contains("\"ERROR\""), "{acks}");
    acks.matches("PERSISTED").count()
}

async fn fetch(c: &reqwest::Client, url: &str) -> usize {
    let r = c.get(url).send().await.unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r.bytes().await.unwrap().len()
}

async fn time_async<F, Fut>(mut f: F) -> (Duration, usize)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let _ = f().await; // warm-up
    let mut times = Vec::with_capacity(RUNS);
    let mut bytes = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        bytes = f().await;
        times.push(t.elapsed());
    }
    (median(times), bytes)
}

fn main() {
    if Command::new("ffmpeg").arg("-version").output().is_err() {
        eprintln!("SKIP: ffmpeg not installed");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let tmp = tempfile::tempdir().unwrap();
    let input = make_input(tmp.path());
    let input_bytes = std::fs::read(&input).unwrap();
    let mut settings = streamvault::config::Settings::default();
    settings.data_dir = tmp.path().join("data");
    settings.listen = "127.0.0.1:0".parse().unwrap();
    // The bench measures packaging against ffmpeg; requests go unsigned (SigV4
    // verification is a fixed per-request cost measured elsewhere).
    settings.auth.enabled = false;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(streamvault::server::run(listener, settings, async {
        let _ = stopped.await;
    }));
    let c = reqwest::Client::new();
    post(
        &c,
        &base,
        "createStream",
        json!({"StreamName": "bench", "DataRetentionInHours": 24}),
    )
    .await;
    let persisted = put_media(&c, &base, "bench", input_bytes.clone()).await;
    let range = json!({"StartTimestamp": T0 - 1, "EndTimestamp": T0 + 3600});
    let clip_req = json!({"StreamName": "bench", "ClipFragmentSelector":
        {"FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": range}});
    let segments = |container: &'static str| {
        let c = c.clone();
        let base = base.clone();
        let range = range.clone();
        async move {
            let v = post(&c, &base, "getHLSStreamingSessionURL", json!({"StreamName": "bench",
                "PlaybackMode": "ON_DEMAND", "ContainerFormat": container,
                "HLSFragmentSelector": {"FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": range}}))
            .await;
            let url = v["HLSStreamingSessionURL"].as_str().unwrap().to_owned();
            let media = url.replace("getHLSMasterPlaylist.m3u8", "getHLSMediaPlaylist.m3u8");
            let playlist = c.get(&media).send().await.unwrap().text().await.unwrap();
            let dir = &media[..media.find("getHLSMediaPlaylist").unwrap()];
            playlist
                .lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .map(|l| format!("{dir}{l}"))
                .collect::<Vec<_>>()
        }
    };
    let fmp4_urls = segments("FRAGMENTED_MP4").await;
    let ts_urls = segments("MPEG_TS").await;
    assert_eq!(fmp4_urls.len(), persisted);

    let (clip, clip_bytes) = time_async(|| {
        let c = c.clone();
        let url = format!("{base}/getClip");
        let body = clip_req.to_string();
        async move {
            let r = c
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            r.bytes().await.unwrap().len()
        }
    })
    .await;
    let all = |urls: Vec<String>| {
        let c = c.clone();
        move || {
            let c = c.clone();
            let urls = urls.clone();
            async move {
                let mut n = 0;
                for u in &urls {
                    n += fetch(&c, u).await;
                }
                n
            }
        }
    };
    let (fmp4, fmp4_bytes) = time_async(all(fmp4_urls.clone())).await;
    let (ts, ts_bytes) = time_async(all(ts_urls.clone())).await;
    let _ = stop.send(());
    let _ = server.await;

    let out = tmp.path().join("out");
    let inp = input.to_str().unwrap();
    let o = |f: &str| out.join(f).to_str().unwrap().to_owned();
    let ff_start = time_ffmpeg(&["-version"], &out);
    let ff_mp4 = time_ffmpeg(
        &[
            "-i",
            inp,
            "-c",
            "copy",
            "-movflags",
            "+faststart",
            "-f",
            "mp4",
            &o("clip.mp4"),
        ],
        &out,
    );
    let ff_fmp4 = time_ffmpeg(
        &[
            "-i",
            inp,
            "-c",
            "copy",
            "-f",
            "hls",
            "-hls_time",
            "1",
            "-hls_playlist_type",
            "vod",
            "-hls_segment_type",
            "fmp4",
            "-hls_segment_filename",
            &o("s%03d.m4s"),
            &o("p.m3u8"),
        ],
        &out,
    );
    let ff_ts = time_ffmpeg(
        &[
            "-i",
            inp,
            "-c",
            "copy",
            "-f",
            "hls",
            "-hls_time",
            "1",
            "-hls_playlist_type",
            "vod",
            "-hls_segment_filename",
            &o("s%03d.ts"),
            &o("p.m3u8"),
        ],
        &out,
    );
    let ratio = |ff: Duration, sv: Duration| ff.as_secs_f64() / sv.as_secs_f64();
    println!(
        "input: {} bytes, {persisted} fragments ({COPIES} x h264_aac_720p_gop1s.mkv, 60 s); median of {RUNS} runs",
        input_bytes.len()
    );
    println!("| job | streamvault | ffmpeg -c copy | ffmpeg / streamvault |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| faststart MP4 of the whole range (GetClip, {clip_bytes} B) | {:.1} ms | {:.1} ms | {:.1}x |",
        ms(clip),
        ms(ff_mp4),
        ratio(ff_mp4, clip)
    );
    println!(
        "| HLS fMP4 segments, all {} (getMP4MediaFragment, {fmp4_bytes} B) | {:.1} ms | {:.1} ms | {:.1}x |",
        fmp4_urls.len(),
        ms(fmp4),
        ms(ff_fmp4),
        ratio(ff_fmp4, fmp4)
    );
    println!(
        "| HLS MPEG-TS segments, all {} (getTSFragment, {ts_bytes} B) | {:.1} ms | {:.1} ms | {:.1}x |",
        ts_urls.len(),
        ms(ts),
        ms(ff_ts),
        ratio(ff_ts, ts)
    );
    println!(
        "ffmpeg process start alone (`ffmpeg -version`): {:.1} ms",
        ms(ff_start)
    );
}
