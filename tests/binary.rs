//! The `streamvault` binary as an operator runs it (issue 17): `--version` names the git
//! commit, and SIGTERM during a 100-camera upload is a graceful shutdown. Every fragment
//! that got a RECEIVED ack before the signal either gets its PERSISTED ack before the
//! process exits, or, re-sent by its camera after a restart, is stored once; no fragment
//! is stored twice; the process exits 0 and logs one line per ended PutMedia session.
//! `streamvault put` and `streamvault images` draw progress on a terminal (a pty from
//! `script`) and print none when standard error is a pipe.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use tokio::process::{Child, Command};

const CAMERAS: usize = 100;
const T0_HEADER: &str = "1795600000";

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_streamvault")
}

#[test]
fn version_names_the_commit() {
    let out = std::process::Command::new(binary())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.starts_with(&format!(
            "streamvault {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    if let Ok(h) = head
        && h.status.success()
    {
        let commit = String::from_utf8_lossy(&h.stdout).trim().to_owned();
        assert!(
            text.contains(&format!("(commit {commit})")),
            "{text} vs {commit}"
        );
    }
}

/// Runs the binary with `args` against `srv`: with stderr piped, or (`tty`) under
/// `script`, which gives it a terminal and copies what it draws to its stdout. Returns
/// (success, everything it wrote to stderr / the terminal).
async fn client(srv: &TestServer, args: &[&str], tty: bool) -> (bool, String) {
    let mut cmd = if tty {
        let line: Vec<String> = std::iter::once(binary().to_owned())
            .chain(args.iter().map(|a| format!("'{a}'")))
            .collect();
        let mut c = Command::new("script");
        c.args(["-qefc", &line.join(" "), "/dev/null"]);
        c
    } else {
        let mut c = Command::new(binary());
        c.args(args);
        c
    };
    let out = cmd
        .env("STREAMVAULT_ENDPOINT", srv.url())
        .env("AWS_ACCESS_KEY_ID", TEST_KEY.0)
        .env("AWS_SECRET_ACCESS_KEY", TEST_KEY.1)
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let text = if tty { out.stdout } else { out.stderr };
    (
        out.status.success(),
        String::from_utf8_lossy(&text).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_images_show_progress_on_a_terminal_only() {
    if !have_tool("script") {
        return;
    }
    let srv = TestServer::start().await;
    srv.create_stream("cam-p", 1).await;
    srv.create_stream("cam-q", 1).await;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), sample("h264_720p_gop1s.mkv")).unwrap();
    let path = file.path().to_str().unwrap();
    let start = "--start-timestamp=1795600000";
    let (ok, term) = client(&srv, &["put", "--stream", "cam-p", start, path], true).await;
    assert!(ok, "{term}");
    assert!(
        term.contains("fragments persisted, ack latency"),
        "{term:?}"
    );
    assert!(term.contains(" sent ("), "bytes and rate: {term:?}");
    assert!(term.contains("done: "), "{term:?}");
    let (ok, piped) = client(&srv, &["put", "--stream", "cam-q", start, path], false).await;
    assert!(ok, "{piped}");
    assert_eq!(
        piped.lines().count(),
        1,
        "only the summary when piped: {piped:?}"
    );
    assert!(piped.starts_with("done: "), "{piped:?}");
    assert!(
        !piped.contains('\r') && !piped.contains('\u{1b}'),
        "{piped:?}"
    );

    let out = tempfile::tempdir().unwrap();
    let o = out.path().to_str().unwrap();
    let images = [
        "images",
        "--stream",
        "cam-p",
        "--from",
        "1795600000",
        "--to",
        "1795600004",
        "--every",
        "1s",
        "--width",
        "64",
        "-o",
        o,
    ];
    let (ok, term) = client(&srv, &images, true).await;
    assert!(ok, "{term}");
    assert!(term.contains("instants ("), "{term:?}");
    let (ok, piped) = client(&srv, &images, false).await;
    assert!(ok, "{piped}");
    assert_eq!(
        piped.lines().count(),
        1,
        "only the summary when piped: {piped:?}"
    );
    assert!(piped.contains("images and index.json written"), "{piped:?}");
}

/// One run of `streamvault serve` with the test key, logging to `log`.
async fn serve(dir: &Path, log: &Path, drain: &str) -> (Child, SocketAddr) {
    let logf = std::fs::File::create(log).unwrap();
    let mut child = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args([
            "--access-key-id",
            TEST_KEY.0,
            "--secret-access-key",
            TEST_KEY.1,
        ])
        .env("STREAMVAULT_LOG", "info")
        .env("STREAMVAULT_HTTP__SHUTDOWN_DRAIN_TIMEOUT", drain)
        .stdout(Stdio::null())
        .stderr(logf)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some((_, rest)) = text.split_once("listening on http://") {
            let addr: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            return (child, addr.parse().unwrap());
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "server exited:\n{text}"
        );
        assert!(Instant::now() < deadline, "server did not start:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sigterm(child: &Child) {
    let pid = child.id().expect("running") as libc::pid_t;
    // SAFETY: kill(2) with a pid we spawned and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

async fn exit_status(child: &mut Child, log: &Path) -> std::process::ExitStatus {
    match tokio::time::timeout(Duration::from_secs(120), child.wait()).await {
        Ok(s) => s.unwrap(),
        Err(_) => panic!(
            "no exit after SIGTERM:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

/// Uploads `header` + `clusters` as one PutMedia session, one cluster every `pace`.
async fn upload(
    addr: SocketAddr,
    stream: String,
    header: Vec<u8>,
    clusters: Vec<Vec<u8>>,
    pace: Duration,
) -> PutResult {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        if tx.send(header).await.is_err() {
            return;
        }
        for c in clusters {
            tokio::time::sleep(pace).await;
            if tx.send(c).await.is_err() {
                return;
            }
        }
    });
    let headers = [
        ("x-amzn-stream-name", stream.as_str()),
        ("x-amzn-fragment-timecode-type", "RELATIVE"),
        ("x-amzn-producer-start-timestamp", T0_HEADER),
    ];
    put_media_stream(addr, &headers, rx).await
}

/// `streamvault_ingest_fragments_persisted_total` of the server at `addr`.
async fn persisted_total(addr: SocketAddr) -> u64 {
    let (_, _, text) = raw_http(addr, "GET", "/metrics", "").await;
    text.lines()
        .find_map(|l| l.strip_prefix("streamvault_ingest_fragments_persisted_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn timecodes(r: &PutResult, kind: &str, before: Option<Instant>) -> BTreeSet<i64> {
    r.acks
        .iter()
        .zip(&r.ack_times)
        .filter(|(a, t)| a["EventType"] == kind && before.is_none_or(|b| **t < b))
        .map(|(a, _)| a["FragmentTimecode"].as_i64().unwrap())
        .collect()
}

/// The drain time covers the whole shutdown: every RECEIVED fragment gets PERSISTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_a_100_camera_upload_loses_no_received_fragment() {
    sigterm_during_upload("60s", true).await;
}

/// A drain time too short to wait for the uploads: whatever a camera had RECEIVED but
/// no PERSISTED ack for when the process exited is re-sent after the restart and stored
/// once (a fragment whose row was committed but whose ack was lost is recognised by
/// content). The signal is sent into a wave of RECEIVED acks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_a_short_drain_time_loses_nothing_once_cameras_resend() {
    sigterm_during_upload("1ms", false).await;
}

async fn sigterm_during_upload(drain: &str, complete: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("serve-1.log");
    let (mut child, addr) = serve(&data, &log, drain).await;
    for i in 0..CAMERAS {
        let body = format!(r#"{{"StreamName":"cam-{i}","DataRetentionInHours":1}}"#);
        let (status, _, resp) = raw_http(addr, "POST", "/createStream", &body).await;
        assert_eq!(status, 200, "{resp}");
    }
    let (header, clusters) = split_sample(&sample("h264_720p_gop1s.mkv"));
    assert!(clusters.len() >= 8, "{} clusters", clusters.len());
    // Each camera sends a cluster every 400 ms; the signal comes once the cameras have
    // fragments persisted between them (so every one is mid-upload, with clusters left).
    let pace = Duration::from_millis(400);
    let uploads: Vec<_> = (0..CAMERAS)
        .map(|i| {
            tokio::spawn(upload(
                addr,
                format!("cam-{i}"),
                header.clone(),
                clusters.clone(),
                pace,
            ))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while persisted_total(addr).await < CAMERAS as u64 {
        assert!(Instant::now() < deadline, "uploads do not progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !complete {
        // Into the next wave of RECEIVED acks, whose PERSISTED the cut-off may lose.
        tokio::time::sleep(pace + Duration::from_millis(150)).await;
    }
    let signalled = Instant::now();
    sigterm(&child);
    let mut results = Vec::new();
    for u in uploads {
        results.push(u.await.unwrap());
    }
    let status = exit_status(&mut child, &log).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "exit {status}:\n{text}");
    let ended = text.matches("PutMedia session ended").count();
    if complete {
        assert_eq!(ended, CAMERAS, "one line per session:\n{text}");
        assert!(text.contains("reason=server shutdown"), "{text}");
    }

    // What each camera must re-send: RECEIVED before the signal, no PERSISTED seen.
    let mut received_before = 0;
    let mut resend: BTreeMap<usize, BTreeSet<i64>> = BTreeMap::new();
    for (i, r) in results.iter().enumerate() {
        let rec = timecodes(r, "RECEIVED", Some(signalled));
        let per = timecodes(r, "PERSISTED", None);
        received_before += rec.len();
        let missing: BTreeSet<i64> = rec.difference(&per).copied().collect();
        if !missing.is_empty() {
            resend.insert(i, missing);
        }
    }
    assert!(
        received_before > 0,
        "the signal must come mid-upload: {received_before} RECEIVED before it"
    );
    eprintln!(
        "drain {drain}: {received_before} fragments RECEIVED before SIGTERM; {} cameras re-send {} after restart",
        resend.len(),
        resend.values().map(BTreeSet::len).sum::<usize>()
    );
    if complete {
        assert!(resend.is_empty(), "all persisted before exit: {resend:?}");
    }

    // Restart; cameras re-send what was not acknowledged as persisted.
    let log2 = tmp.path().join("serve-2.log");
    let (mut child, addr) = serve(&data, &log2, "60s").await;
    let tcs: Vec<u64> = clusters_of(&sample("h264_720p_gop1s.mkv"))
        .iter()
        .map(|(tc, _)| *tc)
        .collect();
    for (i, missing) in &resend {
        let again: Vec<Vec<u8>> = clusters
            .iter()
            .zip(&tcs)
            .filter(|(_, tc)| missing.contains(&(**tc as i64)))
            .map(|(c, _)| c.clone())
            .collect();
        let r = upload(
            addr,
            format!("cam-{i}"),
            header.clone(),
            again,
            Duration::ZERO,
        )
        .await;
        assert!(r.error_ids().is_empty(), "cam-{i}: {:?}", r.error_ids());
        assert_eq!(&timecodes(&r, "PERSISTED", None), missing, "cam-{i}");
    }
    sigterm(&child);
    assert!(exit_status(&mut child, &log2).await.success());

    // Every fragment RECEIVED before the signal is stored exactly once.
    let dir = DataDir::open(&data).await;
    for (i, r) in results.iter().enumerate() {
        let stored = dir.fragments(&format!("cam-{i}")).await;
        let mut count: BTreeMap<i64, usize> = BTreeMap::new();
        for (f, _) in &stored {
            *count.entry(f.producer_timecode).or_default() += 1;
        }
        for tc in timecodes(r, "RECEIVED", Some(signalled)) {
            assert_eq!(count.get(&tc), Some(&1), "cam-{i} timecode {tc}: {count:?}");
        }
        assert!(
            count.values().all(|n| *n == 1),
            "cam-{i} duplicates: {count:?}"
        );
    }
}
