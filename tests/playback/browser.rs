//! The browser acceptance test: headless Debian Chromium with hls.js (driven by
//! `tests/browser/play.mjs` through playwright-core) plays a LIVE session fed by a running
//! ffmpeg camera; the camera stops for 40 s and comes back, and playback must go on in the
//! same session with no fatal hls.js error. Needs chromium, node and `npm ci` in
//! `tests/browser` (`.ci/run` installs them; under `CI` their absence is a failure).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::common::{TestServer, presigned_put_url};
use super::create;

/// A live camera: ffmpeg encoding a test pattern with audio in real time, POSTing live
/// MKV (one cluster per 1 s GOP) to PutMedia.
fn camera(srv: &TestServer, stream: &str) -> tokio::process::Child {
    tokio::process::Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", "300", "-map", "0:v", "-map", "1:a"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-profile:v",
            "main",
        ])
        .args([
            "-pix_fmt",
            "yuv420p",
            "-b:v",
            "600k",
            "-g",
            "30",
            "-keyint_min",
            "30",
            "-sc_threshold",
            "0",
        ])
        .args(["-c:a", "aac", "-b:a", "64k"])
        .args([
            "-f",
            "matroska",
            "-live",
            "1",
            "-cluster_time_limit",
            "1100",
            "-cluster_size_limit",
            "50000000",
        ])
        .args([
            "-method",
            "POST",
            "-chunked_post",
            "1",
            "-content_type",
            "video/webm",
        ])
        // ffmpeg cannot sign: a presigned URL carries the auth and the stream name.
        .arg(presigned_put_url(
            srv.addr,
            &[("x-amzn-stream-name", stream)],
            std::time::Duration::from_secs(900),
        ))
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Whether the browser test can run: chromium, node and the npm packages. Under CI
/// they are installed by .ci/run, so absence there is a failure.
fn have_browser() -> bool {
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/node_modules/hls.js");
    let missing: Vec<&str> = [
        ("chromium", Path::new("/usr/bin/chromium").exists()),
        (
            "node",
            Command::new("node").arg("--version").output().is_ok(),
        ),
        (
            "ffmpeg",
            Command::new("ffmpeg").arg("-version").output().is_ok(),
        ),
        ("tests/browser/node_modules (npm ci)", modules.exists()),
    ]
    .into_iter()
    .filter(|(_, ok)| !ok)
    .map(|(n, _)| n)
    .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("the browser test needs {missing:?} in CI (.ci/run installs them)");
    }
    eprintln!("SKIP: browser test needs {missing:?}");
    false
}

#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlayerState {
    t: f64,
    current_time: f64,
    fatal: Vec<String>,
    errors: u64,
    last: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_live_session_survives_a_40s_pause() {
    use tokio::io::AsyncBufReadExt;
    if !have_browser() {
        return;
    }
    let started = std::time::Instant::now();
    let srv = TestServer::start().await;
    create(&srv, "live", 24).await;
    let mut cam = camera(&srv, "live");
    // The session can be created once the first fragment is stored.
    let body = json!({"StreamName": "live", "PlaybackMode": "LIVE"}).to_string();
    let url = loop {
        let (s, _, text) = srv.post_raw("/getHLSStreamingSessionURL", &body).await;
        if s == 200 {
            let v: Value = serde_json::from_str(&text).unwrap();
            break v["HLSStreamingSessionURL"].as_str().unwrap().to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no fragment from the camera: {text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/play.mjs");
    let mut node = tokio::process::Command::new("node")
        .arg(&script)
        .arg(&url)
        .arg("150")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(node.stdout.take().unwrap()).lines();
    let mut last = PlayerState::default();
    // Reads player reports until `until` holds or `limit` passes; never a fatal error.
    macro_rules! watch {
        ($limit:expr, $until:expr) => {{
            let deadline = tokio::time::Instant::now() + $limit;
            loop {
                let line = match tokio::time::timeout_at(deadline, lines.next_line()).await {
                    Ok(Ok(Some(l))) => l,
                    Ok(_) => panic!("the player exited early; last state {last:?}"),
                    Err(_) => break false,
                };
                let Ok(s) = serde_json::from_str::<PlayerState>(&line) else {
                    continue;
                };
                assert!(s.fatal.is_empty(), "fatal hls.js error: {s:?}");
                last = s;
                let until: &dyn Fn(&PlayerState) -> bool = &$until;
                if until(&last) {
                    break true;
                }
            }
        }};
    }
    assert!(
        watch!(Duration::from_secs(30), |s: &PlayerState| s.current_time
            >= 3.0),
        "playback did not start: {last:?}"
    );
    let before_pause = last.clone();
    eprintln!(
        "browser: playing, currentTime {:.2} s after {:.1} s",
        before_pause.current_time, before_pause.t
    );
    // The camera stops for 40 s.
    cam.kill().await.unwrap();
    let _ = watch!(Duration::from_secs(40), |_: &PlayerState| false);
    let during_pause = last.clone();
    eprintln!(
        "browser: after the 40 s pause currentTime {:.2} s, {} non-fatal errors (last {})",
        during_pause.current_time, during_pause.errors, during_pause.last
    );
    // The camera comes back (a new upload); playback continues in the same session.
    let mut cam = camera(&srv, "live");
    let resumed_at = during_pause.current_time;
    assert!(
        watch!(Duration::from_secs(30), move |s: &PlayerState| s
            .current_time
            >= resumed_at + 3.0),
        "playback did not resume after the pause: {last:?}"
    );
    eprintln!(
        "browser: resumed, currentTime {:.2} s ({:.1} s into the run), no fatal hls.js error; test took {:.0} s",
        last.current_time,
        last.t,
        started.elapsed().as_secs_f64()
    );
    drop(node.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), node.wait()).await;
    cam.kill().await.unwrap();
}
