//! Real producers against the real server: ffmpeg as a live camera (GOP clusters, and
//! its default ~120 ms clusters over its own HTTP client), the vogels capture and the
//! keyframe-less-cluster sample, and GStreamer piped into curl.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;

async fn create(srv: &TestServer, name: &str) {
    srv.control()
        .await
        .create_stream()
        .stream_name(name)
        .data_retention_in_hours(24)
        .send()
        .await
        .unwrap();
}

fn video_tracks(src: &[u8]) -> std::collections::HashSet<u64> {
    tracks_of(src)
        .into_iter()
        .filter(|t| t.1 == 1)
        .map(|t| t.0)
        .collect()
}

/// One fragment per video keyframe, each starting with it, and the stored frames
/// concatenated equal the source's frames (bytes and timestamps).
async fn assert_refragmented(srv: &TestServer, stream: &str, src: &[u8]) {
    let video = video_tracks(src);
    let want = frames_of(src);
    let keyframes = want.iter().filter(|f| video.contains(&f.0) && f.2).count();
    let stored = DataDir::open(&srv.data_dir).await.fragments(stream).await;
    assert_eq!(
        stored.len(),
        keyframes,
        "{stream}: one fragment per keyframe"
    );
    let mut got = Vec::new();
    for (row, bytes) in &stored {
        let fr = frames_of(bytes);
        let first_video = fr
            .iter()
            .find(|f| video.contains(&f.0))
            .expect("video frame");
        assert!(
            first_video.2,
            "{stream}: fragment {} must start with a keyframe",
            row.seq
        );
        got.extend(fr);
    }
    // Frames before the first keyframe cannot start a fragment; the samples have none.
    assert_eq!(got.len(), want.len(), "{stream}: frame count");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!((g.0, g.1, g.2), (w.0, w.1, w.2), "{stream}: frame {i}");
        assert!(g.3 == w.3, "{stream}: frame {i} bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_live_camera_one_cluster_per_gop() {
    if !have_tool("ffmpeg") {
        return;
    }
    let srv = TestServer::start().await;
    create(&srv, "cam1").await;
    let start = "1795600000.250";
    let mut ff = tokio::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=30",
        ])
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=1000:sample_rate=48000",
            "-t",
            "5",
            "-map",
            "0:v",
            "-map",
            "1:a",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-tune",
            "zerolatency",
            "-pix_fmt",
            "yuv420p",
            "-g",
            "30",
        ])
        .args([
            "-keyint_min",
            "30",
            "-sc_threshold",
            "0",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
        ])
        .args([
            "-f",
            "matroska",
            "-live",
            "1",
            "-cluster_time_limit",
            "1100",
            "-cluster_size_limit",
            "50000000",
            "pipe:1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = ff.stdout.take().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let capture = tokio::spawn(async move {
        let mut all = Vec::new();
        let mut buf = vec![0u8; 32768];
        loop {
            let n = out.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            tx.send(buf[..n].to_vec()).await.unwrap();
        }
        all
    });
    let r = put_media_stream(
        srv.addr,
        &[
            ("x-amzn-stream-name", "cam1"),
            ("x-amzn-fragment-timecode-type", "RELATIVE"),
            ("x-amzn-producer-start-timestamp", start),
        ],
        rx,
    )
    .await;
    assert!(ff.wait().await.unwrap().success());
    let sent = capture.await.unwrap();
    let clusters = clusters_of(&sent);
    assert!(clusters.len() >= 5, "{} clusters", clusters.len());
    assert!(r.error_ids().is_empty(), "{:?}", r.acks);
    // Every fragment: BUFFERING, RECEIVED, PERSISTED, in order.
    let buffering = r.events("BUFFERING");
    assert_eq!(buffering.len(), clusters.len());
    for b in &buffering {
        let n = &b["FragmentNumber"];
        let order: Vec<_> = r
            .acks
            .iter()
            .filter(|a| a["FragmentNumber"] == *n)
            .map(|a| a["EventType"].as_str().unwrap())
            .collect();
        assert_eq!(order, ["BUFFERING", "RECEIVED", "PERSISTED"]);
    }
    // The index matches what ffmpeg sent: count, producer timestamps, durations, bytes.
    let stored = DataDir::open(&srv.data_dir).await.fragments("cam1").await;
    assert_eq!(stored.len(), clusters.len());
    for (i, ((row, bytes), (tc, cluster))) in stored.iter().zip(&clusters).enumerate() {
        assert_eq!(
            row.producer_ts_ms,
            1_795_600_000_250 + *tc as i64,
            "fragment {i} producer ts"
        );
        assert_eq!(
            &bytes[..],
            &cluster[..],
            "fragment {i} must be ffmpeg's cluster verbatim"
        );
        if let Some((next_tc, _)) = clusters.get(i + 1) {
            let span = (*next_tc - *tc) as i64;
            assert!(
                (row.duration_ms - span).abs() <= 34,
                "fragment {i}: duration {} vs cluster span {span}",
                row.duration_ms
            );
        }
    }
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_http_post_with_default_clusters() {
    if !have_tool("ffmpeg") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src_path = tmp.path().join("src.mkv");
    // A 4 s source with a 1 s GOP; ffmpeg then streams it with its default live
    // clusters (~120 ms, most not starting at a keyframe) through its own HTTP client.
    let ok = std::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=30",
            "-t",
            "4",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-pix_fmt",
            "yuv420p",
            "-g",
            "30",
            "-keyint_min",
            "30",
            "-sc_threshold",
            "0",
            "-bf",
            "0",
        ])
        .arg(&src_path)
        .status()
        .unwrap();
    assert!(ok.success());
    let srv = TestServer::start().await;
    create(&srv, "ffpost").await;
    // ffmpeg cannot sign: a presigned URL carries the auth and the PutMedia parameters.
    let url = presigned_put_url(
        srv.addr,
        &[
            ("x-amzn-stream-name", "ffpost"),
            ("x-amzn-fragment-timecode-type", "RELATIVE"),
            ("x-amzn-producer-start-timestamp", "1795600000"),
        ],
        Duration::from_secs(600),
    );
    let status = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re", "-i"])
        .arg(&src_path)
        .args([
            "-c",
            "copy",
            "-f",
            "matroska",
            "-live",
            "1",
            "-method",
            "POST",
            "-chunked_post",
            "1",
        ])
        .arg(&url)
        .status()
        .await
        .unwrap();
    assert!(status.success(), "ffmpeg failed to upload");
    // ffmpeg does not read acks and closes right after the last chunk; persisting
    // continues server-side.
    let src = std::fs::read(&src_path).unwrap();
    let keyframes = frames_of(&src).iter().filter(|f| f.2).count();
    let dd = DataDir::open(&srv.data_dir).await;
    for _ in 0..100 {
        if dd.fragments("ffpost").await.len() == keyframes {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The bytes ffmpeg sent are a remux of the source: same frames and timestamps.
    assert_refragmented(&srv, "ffpost", &src).await;
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misaligned_clusters_are_refragmented_at_keyframes() {
    let srv = TestServer::start().await;
    let mut inputs = vec![("nokey".to_string(), sample("h264_cluster_nokey.mkv"))];
    if let Some(v) = shared_media("kvs-captures/vogels_330.mkv") {
        inputs.push(("vogels".into(), v));
    }
    for (name, src) in inputs {
        create(&srv, &name).await;
        let r = put_media(srv.addr, &[("x-amzn-stream-name", &name)], &src, 7000).await;
        assert!(r.error_ids().is_empty(), "{name}: {:?}", r.error_ids());
        assert_eq!(r.events("PERSISTED").len(), r.events("BUFFERING").len());
        assert_refragmented(&srv, &name, &src).await;
    }
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gstreamer_piped_into_curl() {
    if !have_tool("gst-launch-1.0") || !have_tool("curl") {
        return;
    }
    let srv = TestServer::start().await;
    create(&srv, "gst").await;
    let pipeline = format!(
        "gst-launch-1.0 -q -e videotestsrc is-live=true pattern=ball num-buffers=150 ! video/x-raw,width=640,height=360,framerate=30/1 ! videoconvert ! \
         x264enc tune=zerolatency speed-preset=veryfast bitrate=800 key-int-max=30 option-string=scenecut=0 ! h264parse ! \
         video/x-h264,stream-format=avc,alignment=au ! matroskamux name=mux streamable=true ! fdsink fd=1 \
         audiotestsrc is-live=true wave=sine freq=1000 num-buffers=235 ! audio/x-raw,rate=48000,channels=1 ! audioconvert ! avenc_aac bitrate=64000 ! aacparse ! mux. \
         | curl -sS --fail-with-body -X POST -T - -H 'Transfer-Encoding: chunked' -H 'Content-Type: video/webm' '{}'",
        presigned_put_url(
            srv.addr,
            &[
                ("x-amzn-stream-name", "gst"),
                ("x-amzn-fragment-timecode-type", "RELATIVE"),
                ("x-amzn-producer-start-timestamp", "1795600000.5")
            ],
            Duration::from_secs(600),
        )
    );
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("bash")
            .args(["-c", &pipeline])
            .output(),
    )
    .await
    .expect("gst | curl finished")
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acks: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count = |k: &str| acks.iter().filter(|a| a["EventType"] == k).count();
    assert!(count("BUFFERING") >= 4, "{acks:?}");
    assert_eq!(count("PERSISTED"), count("BUFFERING"), "{acks:?}");
    assert_eq!(count("ERROR"), 0, "{acks:?}");
    let stored = DataDir::open(&srv.data_dir).await.fragments("gst").await;
    assert_eq!(stored.len(), count("PERSISTED"));
    for (row, bytes) in &stored {
        assert!(
            frames_of(bytes).iter().any(|f| f.2),
            "fragment {} has a keyframe",
            row.seq
        );
        assert!(row.producer_ts_ms >= 1_795_600_000_500);
    }
    srv.stop().await.unwrap();
}
