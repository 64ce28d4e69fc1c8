//! The browser acceptance test: headless Debian Chromium with hls.js (driven by
//! `tests/browser/play.mjs` through playwright-core) plays a LIVE session fed by a running
//! ffmpeg camera; the camera stops for 40 s and comes back, and playback must go on in the
//! same session with no fatal hls.js error. Needs chromium, node and `npm ci` in
//! `tests/browser` (`.ci/run` installs them; under `CI` their absence is a failure).

use std::time::Duration;

use serde_json::{Value, json};

use super::common::{TestServer, presigned_put_url};
use super::create;
use super::player::{Player, PlayerState, have_browser_and};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_live_session_survives_a_40s_pause() {
    if !have_browser_and(&["ffmpeg"]) {
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
    let mut player = Player::start(&url, 150);
    let mut last: PlayerState;
    // Reads player reports until `until` holds or `limit` passes; never a fatal error.
    macro_rules! watch {
        ($limit:expr, $until:expr) => {{
            let r = player.watch($limit, $until).await;
            last = player.last.clone();
            r.unwrap()
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
    player.stop().await;
    cam.kill().await.unwrap();
}
