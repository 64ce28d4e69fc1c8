//! The processes under test: the release `streamvault` binary started on a fresh (or a
//! prepared) data dir, and the nginx baseline with a generated discard-only config. Both
//! listen on a loopback port picked here; "ready" is the first answered request, so the
//! same code times the restart scenario. CPU and peak RSS come from `/proc`
//! ([`crate::stats`]); for nginx the master and its workers are summed.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::http::{JsonClient, Target};
use crate::stats;

/// A free loopback port (bound, then released: the child binds it next).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A running server child.
pub struct Child {
    pub child: std::process::Child,
    pub pid: u32,
    pub target: Target,
    /// Process start → first request answered.
    pub ready: Duration,
    /// Process start → "listening on" in its log (streamvault only).
    pub listening: Option<Duration>,
    /// The child's log (stderr), copied to `last-server.log` when it stops.
    pub log: PathBuf,
}

impl Child {
    /// CPU seconds of the process (and, for nginx, its workers).
    pub fn cpu_seconds(&self) -> f64 {
        Self::cpu_of(self.pid)
    }

    /// CPU seconds of `pid` and its child processes.
    pub fn cpu_of(pid: u32) -> f64 {
        let mut t = stats::cpu_seconds(&pid.to_string(), false).unwrap_or(0.0);
        for c in children(pid) {
            t += stats::cpu_seconds(&c.to_string(), false).unwrap_or(0.0);
        }
        t
    }

    /// Peak RSS (the largest of the process and its workers).
    pub fn peak_rss(&self) -> u64 {
        std::iter::once(self.pid)
            .chain(children(self.pid))
            .filter_map(|p| stats::peak_rss(&p.to_string()))
            .max()
            .unwrap_or(0)
    }

    /// SIGTERM, then wait (SIGKILL after 20 s).
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.keep_log();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Keeps a copy of the server log next to the temp dirs (the data dir is deleted).
    fn keep_log(&self) {
        let _ = std::fs::copy(
            &self.log,
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("last-server.log"),
        );
    }
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Polls until a signed ListStreams answers (any HTTP status counts as "accepting").
async fn wait_ready(
    target: &Target,
    started: Instant,
    child: &mut std::process::Child,
) -> anyhow::Result<Duration> {
    loop {
        if let Ok(mut c) = JsonClient::connect(target).await {
            if c.post("/listStreams", "{}").await.is_ok() {
                return Ok(started.elapsed());
            }
        }
        if let Some(st) = child.try_wait()? {
            anyhow::bail!("server exited early: {st}");
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "server not ready after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Starts `streamvault serve` on `data_dir` with the generator's key; `env` adds settings.
pub async fn start_streamvault(
    bin: &Path,
    data_dir: &Path,
    key: &(String, String),
    env: &[(String, String)],
) -> anyhow::Result<Child> {
    let addr = free_addr()?;
    let log = data_dir.with_extension("log");
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--listen", &addr.to_string(), "--data-dir"])
        .arg(data_dir)
        .env("STREAMVAULT_ACCESS_KEY_ID", &key.0)
        .env("STREAMVAULT_SECRET_ACCESS_KEY", &key.1)
        .env(
            "STREAMVAULT_LOG",
            std::env::var("LOAD_SERVER_LOG")
                .unwrap_or_else(|_| "warn,streamvault::server=info".into()),
        )
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let mut file = std::fs::File::create(&log)?;
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(started.elapsed());
            }
            let _ = writeln!(file, "{line}");
        }
    });
    let target = Target {
        addr,
        key: Some(key.clone()),
    };
    ready_child(child, target, started, log, Some(rx)).await
}

/// Waits for the child to answer, then wraps it.
async fn ready_child(
    mut child: std::process::Child,
    target: Target,
    started: Instant,
    log: PathBuf,
    listening: Option<std::sync::mpsc::Receiver<Duration>>,
) -> anyhow::Result<Child> {
    let ready = wait_ready(&target, started, &mut child).await?;
    Ok(Child {
        pid: child.id(),
        child,
        target,
        ready,
        listening: listening.and_then(|rx| rx.try_recv().ok()),
        log,
    })
}

/// Starts nginx (one worker) answering 200 to every request and discarding its body.
pub async fn start_nginx(dir: &Path) -> anyhow::Result<Child> {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| anyhow::anyhow!("nginx not installed (apt-get install -y nginx-light)"))?;
    let addr = free_addr()?;
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           lingering_time 3600s;\n  lingering_timeout 60s;\n  keepalive_timeout 3600s;\n\
           client_body_timeout 60s;\n\
           server {{\n    listen {addr};\n    client_max_body_size 0;\n\
             client_body_buffer_size 1m;\n    location / {{ return 200; }}\n  }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let log = dir.join("error.log");
    let started = Instant::now();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let target = Target { addr, key: None };
    ready_child(child, target, started, log, None).await
}
