//! Headless Debian Chromium with hls.js, driven by `tests/browser/play.mjs` through
//! playwright-core: start it on an HLS URL and read its once-a-second player reports.
//! Shared by the browser tests (`tests/playback/browser.rs`, `tests/conformance.rs`).
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// Whether the browser tests can run: chromium, node and the npm packages (and `extra`
/// tools). Under CI they are installed by .ci/run, so absence there is a failure.
pub fn have_browser_and(extra: &[&str]) -> bool {
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/node_modules/hls.js");
    let mut missing: Vec<&str> = [
        ("chromium", Path::new("/usr/bin/chromium").exists()),
        (
            "node",
            Command::new("node").arg("--version").output().is_ok(),
        ),
        ("tests/browser/node_modules (npm ci)", modules.exists()),
    ]
    .into_iter()
    .filter(|(_, ok)| !ok)
    .map(|(n, _)| n)
    .collect();
    missing.extend(
        extra
            .iter()
            .filter(|t| Command::new(t).arg("-version").output().is_err()),
    );
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("the browser test needs {missing:?} in CI (.ci/run installs them)");
    }
    eprintln!("SKIP: browser test needs {missing:?}");
    false
}

pub fn have_browser() -> bool {
    have_browser_and(&[])
}

#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlayerState {
    pub t: f64,
    pub current_time: f64,
    pub fatal: Vec<String>,
    pub errors: u64,
    pub last: String,
}

/// A running player (node + Chromium), killed on drop.
pub struct Player {
    node: Child,
    lines: Lines<BufReader<ChildStdout>>,
    pub last: PlayerState,
}

impl Player {
    /// Plays `url` for at most `max_secs`.
    pub fn start(url: &str, max_secs: u32) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/play.mjs");
        let mut node = tokio::process::Command::new("node")
            .arg(&script)
            .arg(url)
            .arg(max_secs.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(node.stdout.take().unwrap()).lines();
        Self {
            node,
            lines,
            last: PlayerState::default(),
        }
    }

    /// Reads player reports until `until` holds (`Ok(true)`) or `limit` passes
    /// (`Ok(false)`); a fatal hls.js error or an early exit of the player is an `Err`.
    pub async fn watch(
        &mut self,
        limit: Duration,
        until: impl Fn(&PlayerState) -> bool,
    ) -> Result<bool, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let line = match tokio::time::timeout_at(deadline, self.lines.next_line()).await {
                Ok(Ok(Some(l))) => l,
                Ok(_) => {
                    return Err(format!(
                        "the player exited early; last state {:?}",
                        self.last
                    ));
                }
                Err(_) => return Ok(false),
            };
            let Ok(s) = serde_json::from_str::<PlayerState>(&line) else {
                continue;
            };
            if !s.fatal.is_empty() {
                return Err(format!("fatal hls.js error: {:?}", s.fatal));
            }
            self.last = s;
            if until(&self.last) {
                return Ok(true);
            }
        }
    }

    /// Closes the player's stdin (it exits) and waits a little for it.
    pub async fn stop(&mut self) {
        drop(self.node.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.node.wait()).await;
    }
}
