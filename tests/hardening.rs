//! Keys, files and logs (docs/security.md): streams named `.` and `..` work end to end
//! and never become path components, and the binary's log, when stderr is not a
//! terminal, carries no ANSI escape codes, no generated root secret, and a warning (path
//! and mode only) for each secret file others can read.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_kinesisvideomedia::types::{StartSelector, StartSelectorType};
use common::*;

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_owned());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_named_dot_and_dotdot_work_end_to_end_inside_their_own_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (srv, tasks) = TestServer::start_built(data.clone(), |_| {}, |b| b).await;
    let names = [".", "..", "..."];
    for name in names {
        srv.create_stream(name, 24).await;
    }
    let src = sample("h264_720p_gop1s.mkv");
    for name in names {
        let r = put_media(srv.addr, &[("x-amzn-stream-name", name)], &src, 65536).await;
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        assert_eq!(r.events("PERSISTED").len(), 10, "{name}: {:?}", r.acks);
    }
    for name in names {
        let out = srv
            .media()
            .await
            .get_media()
            .stream_name(name)
            .start_selector(
                StartSelector::builder()
                    .start_selector_type(StartSelectorType::Earliest)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
        let mut payload = out.payload;
        let (p, _) = read_chunks(&mut payload, usize::MAX, Duration::from_millis(1500)).await;
        assert_eq!(
            p.complete(),
            10,
            "{name}: GetMedia returns its own fragments"
        );
    }
    // Nothing outside the data dir; every object is a segment (named by its class, never
    // by a stream name).
    let top: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(top, vec![std::ffi::OsString::from("data")]);
    let objects = files_under(&data.join("objects"));
    assert_eq!(objects.len(), 1, "the three streams share one open segment");
    for o in &objects {
        let key = o.to_str().unwrap();
        assert!(
            streamvault::store::keys::parse_segment_key(key).is_some(),
            "{o:?}"
        );
    }
    for name in names {
        srv.delete_stream(name).await;
    }
    tasks.sweep().await;
    // Stopping closes the open segment; with no row left in it, it is deleted.
    srv.stop().await.unwrap();
    assert_eq!(files_under(&data.join("objects")), Vec::<PathBuf>::new());
}

/// Runs `streamvault serve` on `data` with stderr into a file until it logs that it
/// listens; returns the log.
fn serve_log(data: &Path) -> String {
    let log_path = data.with_extension("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_streamvault"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env_remove("STREAMVAULT_CONFIG")
        .env("STREAMVAULT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("listening on") {
            break text;
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("server did not start: {text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    text
}

#[cfg(unix)]
#[test]
fn piped_log_has_no_colour_no_root_secret_and_warns_about_exposed_key_files() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");

    // First start: a root key is generated; stderr is a file, so no secret in it.
    let log = serve_log(&data);
    assert!(!log.contains("\x1b["), "ANSI escape in a piped log:\n{log}");
    let creds = std::fs::read_to_string(data.join("credentials")).unwrap();
    let secret = creds
        .lines()
        .find_map(|l| l.strip_prefix("secret_access_key = \""))
        .and_then(|s| s.strip_suffix('"'))
        .expect("secret in the credentials file");
    assert!(!log.contains(secret), "root secret in the log:\n{log}");
    assert!(log.contains("generated a root access key"), "{log}");
    assert!(!log.contains("accessible to other users"), "{log}");

    // Second start with secret files readable by others: one warning each, with path
    // and mode, never the contents.
    let exposed = [
        data.join("credentials"),
        data.join("keys/session-token.key"),
        data.join("keys/streamvault-local.key"),
    ];
    for p in &exposed {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let log = serve_log(&data);
    assert!(!log.contains("\x1b["), "ANSI escape in a piped log:\n{log}");
    assert!(!log.contains(secret), "root secret in the log:\n{log}");
    for p in &exposed {
        let line = log
            .lines()
            .find(|l| l.contains("accessible to other users") && l.contains(p.to_str().unwrap()))
            .unwrap_or_else(|| panic!("no warning for {}:\n{log}", p.display()));
        assert!(line.contains("0644"), "{line}");
        let contents = std::fs::read_to_string(p).unwrap();
        for word in contents.split(['"', '\n', ' ']).filter(|w| w.len() >= 16) {
            assert!(
                !log.contains(word),
                "contents of {} logged:\n{log}",
                p.display()
            );
        }
    }
}
