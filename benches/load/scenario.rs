//! The named scenarios and their report. An ingest scenario is a [`Shape`] (streams,
//! readers per stream, pacing, duration); it runs against streamvault first, then the
//! same upload (no readers, shorter) against nginx and against the bare pipeline, each
//! measured on its own, so every CPU-per-GB figure has same-run baselines next to it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::bare::Bare;
use crate::http::{JsonClient, Target, create_stream};
use crate::mkv::Sample;
use crate::procs::{self, Child};
use crate::producer::{FrameLog, Pace, Producer, ProducerResult};
use crate::reader::{Live, ReaderResult, read_live};
use crate::stats::{self, Samples};

const KEY: (&str, &str) = (
    "AKIDSTREAMVAULTLOAD",
    "loadgeneratorsecretloadgeneratorsecret",
);

#[derive(Debug, Default)]
pub struct Opts {
    pub streams: Option<usize>,
    pub readers: Option<usize>,
    pub duration: Option<u64>,
    pub baseline_duration: Option<u64>,
    pub pace: Option<Pace>,
    pub sample: Option<PathBuf>,
    pub rows: Option<u64>,
    pub windows: Option<usize>,
    pub starts: Option<usize>,
    pub objects: bool,
    /// `restart`: rows addressed into shared segments ([`crate::index::populate`]).
    pub segments: bool,
    pub quickack: bool,
    /// Store fragments in an S3-compatible server started here ([`crate::s3`]).
    pub s3: bool,
    /// Fragments of this many clusters ([`Sample::merged`]).
    pub merge: Option<usize>,
    pub no_baselines: bool,
    pub endpoint: Option<String>,
    pub server_pid: Option<u32>,
    pub no_auth: bool,
    pub json: Option<PathBuf>,
}

/// An ingest scenario.
#[derive(Debug, Clone)]
struct Shape {
    /// The default sample (under `media-samples/`), unless `--sample`.
    sample: &'static str,
    streams: usize,
    readers: usize,
    pace: Pace,
    duration: u64,
    baseline: u64,
    quickack: bool,
}

fn key() -> (String, String) {
    (KEY.0.to_owned(), KEY.1.to_owned())
}

fn tmp() -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))?)
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_streamvault"))
}

/// Settings for every streamvault the generator starts: no per-stream rate cap (the
/// one-stream scenario measures the maximum), everything else default.
fn server_env(o: &Opts) -> Vec<(String, String)> {
    let mut v = vec![(
        "STREAMVAULT_INGEST__MAX_BYTES_PER_SECOND".into(),
        "0".into(),
    )];
    if o.no_auth {
        v.push(("STREAMVAULT_AUTH__ENABLED".into(), "false".into()));
    }
    v
}

fn machine() -> Value {
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg_1m": stats::loadavg(),
    })
}

pub async fn run(name: &str, o: &Opts) -> anyhow::Result<Value> {
    let shape = |streams, readers, pace, duration, baseline| Shape {
        sample: "h264_720p_gop1s.mkv",
        streams: o.streams.unwrap_or(streams),
        readers: o.readers.unwrap_or(readers),
        pace: o.pace.unwrap_or(pace),
        duration: o.duration.unwrap_or(duration),
        baseline: if o.no_baselines {
            0
        } else {
            o.baseline_duration.unwrap_or(baseline)
        },
        quickack: o.quickack,
    };
    let mut r = match name {
        "one-stream" => ingest(o, shape(1, 0, Pace::Max, 20, 10)).await?,
        // Cameras at the goal's 2 Mbit/s (H.264 High, B-frames, 1 s GOP).
        "cameras" => {
            let s = Shape {
                sample: "h264_high_2mbps_gop1s.mkv",
                ..shape(1000, 0, Pace::Cluster, 60, 20)
            };
            ingest(o, s).await?
        }
        "readers" => ingest(o, shape(100, 10, Pace::Frame, 30, 15)).await?,
        "live-tail" => ingest(o, shape(1, 3, Pace::Frame, 30, 0)).await?,
        "list-fragments" => list_fragments(o).await?,
        "restart" => restart(o).await?,
        _ => anyhow::bail!("unknown scenario {name}"),
    };
    r["scenario"] = json!(name);
    r["machine_after"] = machine();
    Ok(r)
}

fn target_of(o: &Opts) -> anyhow::Result<Option<Target>> {
    let Some(ep) = &o.endpoint else {
        return Ok(None);
    };
    let hostport = ep.trim_start_matches("http://").trim_end_matches('/');
    let addr = std::net::ToSocketAddrs::to_socket_addrs(hostport)?
        .next()
        .ok_or_else(|| anyhow::anyhow!("cannot resolve {hostport}"))?;
    let key = if o.no_auth {
        None
    } else {
        Some((
            std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| KEY.0.into()),
            std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| KEY.1.into()),
        ))
    };
    Ok(Some(Target { addr, key }))
}

/// What one run of producers (and readers) against one receiver gave.
#[derive(Default)]
struct Run {
    bytes: u64,
    clusters: u64,
    persisted: u64,
    received: u64,
    errors: Vec<i64>,
    failures: Vec<String>,
    persisted_latency: Samples,
    live: Samples,
    reader_blocks: u64,
    reader_unmatched: u64,
    reader_bytes: u64,
    write_secs: f64,
    wall_secs: f64,
    gen_cpu: f64,
    server_cpu: Option<f64>,
}

async fn drive(
    target: &Target,
    sample: &Arc<Sample>,
    s: &Shape,
    duration: u64,
    readers: usize,
    acks: bool,
    prefix: &str,
    server_cpu: &dyn Fn() -> Option<f64>,
) -> Run {
    let gen0 = stats::cpu_seconds("self", false).unwrap_or(0.0);
    let srv0 = server_cpu();
    let t0 = Instant::now() + Duration::from_millis(500);
    let until = t0 + Duration::from_secs(duration);
    let mut ptasks = Vec::new();
    let mut rtasks = Vec::new();
    for i in 0..s.streams {
        let stream = format!("{prefix}-{i}");
        let frames = (readers > 0).then(|| Arc::new(FrameLog::default()));
        for _ in 0..readers {
            let warm = t0 + Duration::from_secs(2);
            rtasks.push(tokio::spawn(read_live(Live {
                target: target.clone(),
                stream: stream.clone(),
                frames: frames.clone().unwrap(),
                warm,
                until: until + Duration::from_secs(2),
                quickack: s.quickack,
            })));
        }
        // Paced producers start spread over one second, like independent cameras.
        let stagger = if s.pace == Pace::Max {
            Duration::ZERO
        } else {
            Duration::from_micros(1_000_000 * i as u64 / s.streams as u64)
        };
        let p = Producer {
            target: target.clone(),
            stream,
            sample: sample.clone(),
            pace: s.pace,
            until,
            start: t0 + stagger,
            frames,
            acks,
            quickack: s.quickack && acks,
        };
        ptasks.push(tokio::spawn(p.run()));
    }
    let mut run = Run::default();
    for t in ptasks {
        let p: ProducerResult = t.await.unwrap_or_default();
        run.bytes += p.bytes;
        run.clusters += p.clusters;
        run.persisted += p.persisted;
        run.received += p.received;
        run.errors.extend(p.errors);
        run.failures.extend(p.failure);
        if acks && p.status != 200 {
            run.failures.push(format!("status {}", p.status));
        }
        run.persisted_latency.extend(p.persisted_latency);
    }
    run.write_secs = until.saturating_duration_since(t0).as_secs_f64();
    run.wall_secs = t0.elapsed().as_secs_f64();
    for t in rtasks {
        let r: ReaderResult = t.await.unwrap_or_default();
        run.reader_blocks += r.blocks;
        run.reader_unmatched += r.unmatched;
        run.reader_bytes += r.bytes;
        run.live.extend(r.latency);
        run.failures.extend(r.failure);
    }
    run.gen_cpu = stats::cpu_seconds("self", false).unwrap_or(0.0) - gen0;
    run.server_cpu = match (srv0, server_cpu()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    run
}

fn per_gb(cpu: f64, bytes: u64) -> f64 {
    cpu / (bytes as f64 / 1e9)
}

fn run_json(r: &mut Run, with_server: bool) -> Value {
    let mut errors = std::collections::BTreeMap::<i64, u64>::new();
    for e in &r.errors {
        *errors.entry(*e).or_default() += 1;
    }
    let mut v = json!({
        "bytes": r.bytes,
        "write_seconds": r.write_secs,
        "wall_seconds": r.wall_secs,
        "throughput_MBps": r.bytes as f64 / 1e6 / r.write_secs,
        "clusters_sent": r.clusters,
        "generator_cpu_seconds": r.gen_cpu,
        "generator_core_fraction": r.gen_cpu / r.wall_secs,
        "failures": r.failures.len(),
        "first_failures": r.failures.iter().take(3).collect::<Vec<_>>(),
    });
    if with_server {
        v["fragments_received"] = json!(r.received);
        v["fragments_persisted"] = json!(r.persisted);
        v["error_acks"] = json!(errors);
        v["persisted_after_close"] = r
            .persisted_latency
            .summary()
            .map_or(Value::Null, |s| s.json());
        if r.reader_blocks > 0 {
            v["live_tail"] = r.live.summary().map_or(Value::Null, |s| s.json());
            v["reader_blocks"] = json!(r.reader_blocks);
            v["reader_unmatched_blocks"] = json!(r.reader_unmatched);
            v["reader_bytes"] = json!(r.reader_bytes);
        }
    }
    if let Some(c) = r.server_cpu {
        v["cpu_seconds"] = json!(c);
        v["cpu_seconds_per_GB"] = json!(per_gb(c, r.bytes));
        v["core_fraction"] = json!(c / r.wall_secs);
    }
    v
}

async fn create_streams(target: &Target, prefix: &str, n: usize) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for w in 0..4usize {
        let target = target.clone();
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut c = JsonClient::connect(&target).await?;
            for i in (w..n).step_by(4) {
                create_stream(&mut c, &format!("{prefix}-{i}"), 24).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn ingest(o: &Opts, s: Shape) -> anyhow::Result<Value> {
    let path = o.sample.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("media-samples")
            .join(s.sample)
    });
    let sample = Arc::new(Sample::load(&path)?.merged(o.merge.unwrap_or(1)));
    let dir = tmp()?;
    let machine_before = machine();
    eprintln!(
        "   {} streams x {} readers, pace {:?}, {} s, sample {} ({:.2} Mbit/s)",
        s.streams,
        s.readers,
        s.pace,
        s.duration,
        sample.name,
        sample.bitrate() / 1e6
    );
    // streamvault (on an in-process S3 server with --s3)
    let s3 = match o.s3 && o.endpoint.is_none() {
        true => Some(crate::s3::S3Server::start(&dir.path().join("s3")).await?),
        false => None,
    };
    let mut env = server_env(o);
    env.extend(s3.iter().flat_map(|s| s.server_env()));
    let (child, target) = match target_of(o)? {
        Some(t) => (None, t),
        None => {
            let c =
                procs::start_streamvault(&bin(), &dir.path().join("data"), &key(), &env).await?;
            let t = c.target.clone();
            (Some(c), t)
        }
    };
    let prefix = format!("load{}", std::process::id());
    create_streams(&target, &prefix, s.streams).await?;
    let pid = child.as_ref().map(|c| c.pid).or(o.server_pid);
    let cpu = move || pid.map(|p| stats::cpu_seconds(&p.to_string(), false).unwrap_or(0.0));
    let mut sv = drive(
        &target, &sample, &s, s.duration, s.readers, true, &prefix, &cpu,
    )
    .await;
    let rss = pid.and_then(|p| stats::peak_rss(&p.to_string()));
    let ready = child.as_ref().map(|c| c.ready.as_secs_f64());
    if let Some(c) = child {
        c.stop();
    }
    let mut svj = run_json(&mut sv, true);
    svj["peak_rss_MiB"] = json!(rss.map(|b| b as f64 / 1048576.0));
    svj["ready_seconds"] = json!(ready);
    svj["per_stream_Mbps"] = json!(sv.bytes as f64 * 8.0 / 1e6 / sv.write_secs / s.streams as f64);
    if let Some(s3) = &s3 {
        // Every request since the server started, stream creation included; the run's
        // camera-hours are the upload's wall time times the cameras.
        let requests = s3.counts.json();
        let writes = requests["writes"].as_f64().unwrap_or(0.0);
        let camera_hours = s.streams as f64 * sv.write_secs / 3600.0;
        svj["object_store"] =
            json!({"server": "s3s-fs 0.14, in-process, SigV4", "requests": requests});
        svj["object_writes_per_camera_hour"] = json!(writes / camera_hours);
    }
    let mut out = json!({
        "machine_before": machine_before,
        "config": {
            "streams": s.streams, "readers_per_stream": s.readers, "pace": format!("{:?}", s.pace),
            "duration_s": s.duration, "baseline_duration_s": s.baseline, "sample": sample.name,
            "sample_Mbps": sample.bitrate() / 1e6,
            "auth": if o.no_auth { "off" } else { "SigV4" },
            "merge_clusters_per_fragment": o.merge.unwrap_or(1), "quickack": o.quickack,
        },
        "streamvault": svj,
    });
    if s.baseline == 0 {
        return Ok(out);
    }
    // nginx, discard only
    let ndir = tmp()?;
    match procs::start_nginx(ndir.path()).await {
        Ok(n) => {
            let ncpu = |n: &Child| {
                let pid = n.pid;
                move || Some(Child::cpu_of(pid))
            };
            let f = ncpu(&n);
            let mut r = drive(&n.target, &sample, &s, s.baseline, 0, false, "nginx", &f).await;
            n.stop();
            out["nginx"] = run_json(&mut r, false);
        }
        Err(e) => out["nginx"] = json!({"error": e.to_string()}),
    }
    // bare pipeline
    // Pieces of the mean fragment size (clusters per fragment with --merge).
    let per_fragment = o.merge.unwrap_or(1).clamp(1, sample.clusters.len()) as u64;
    let piece = (sample.pass_bytes * per_fragment / sample.clusters.len() as u64) as usize;
    let bare = Bare::start(dir.path().join("bare.ring"), piece)?;
    let bt = Target {
        addr: bare.addr,
        key: None,
    };
    let mut r = drive(&bt, &sample, &s, s.baseline, 0, false, "bare", &|| None).await;
    let b = bare.finish();
    r.gen_cpu -= b.cpu_seconds;
    r.server_cpu = Some(b.cpu_seconds);
    let mut bj = run_json(&mut r, false);
    bj["pieces_sealed_fsynced"] = json!(b.pieces);
    bj["bytes_sealed"] = json!(b.bytes);
    bj["piece_bytes"] = json!(piece);
    out["bare_pipeline"] = bj;
    let sv_gb = out["streamvault"]["cpu_seconds_per_GB"].as_f64();
    let ratio = |k: &str| match (sv_gb, out[k]["cpu_seconds_per_GB"].as_f64()) {
        (Some(a), Some(b)) if b > 0.0 => json!(a / b),
        _ => Value::Null,
    };
    let (vs_nginx, vs_bare) = (ratio("nginx"), ratio("bare_pipeline"));
    out["ratio_cpu_per_GB_vs_nginx"] = vs_nginx;
    out["ratio_cpu_per_GB_vs_bare"] = vs_bare;
    Ok(out)
}

async fn prepared_server(
    o: &Opts,
    dir: &std::path::Path,
    rows: u64,
    objects: bool,
) -> anyhow::Result<(String, i64)> {
    let data = dir.join("data");
    let c = procs::start_streamvault(&bin(), &data, &key(), &server_env(o)).await?;
    crate::index::create(&c.target, "indexed").await?;
    c.stop();
    let t = Instant::now();
    let (id, t0) = crate::index::populate(&data, "indexed", rows, objects, o.segments)?;
    eprintln!(
        "   populated {rows} rows{}{} in {:.1?}",
        if o.segments { " in segments" } else { "" },
        if objects { " and objects" } else { "" },
        t.elapsed()
    );
    Ok((id, t0))
}

async fn list_fragments(o: &Opts) -> anyhow::Result<Value> {
    let rows = o.rows.unwrap_or(302_400);
    let windows = o.windows.unwrap_or(500);
    let dir = tmp()?;
    let before = machine();
    let (_, t0) = prepared_server(o, dir.path(), rows, false).await?;
    let c =
        procs::start_streamvault(&bin(), &dir.path().join("data"), &key(), &server_env(o)).await?;
    let cpu0 = c.cpu_seconds();
    let gen0 = stats::cpu_seconds("self", false).unwrap_or(0.0);
    // Warm-up: a few windows not counted (page cache, statement cache).
    crate::index::list_windows(&c.target, "indexed", t0, rows, 20).await?;
    let mut r = crate::index::list_windows(&c.target, "indexed", t0, rows, windows).await?;
    let cpu = c.cpu_seconds() - cpu0;
    let gen_cpu = stats::cpu_seconds("self", false).unwrap_or(0.0) - gen0;
    let rss = c.peak_rss();
    c.stop();
    Ok(json!({
        "machine_before": before,
        "config": {"rows": rows, "fragment_ms": crate::index::FRAGMENT_MS, "windows": windows, "max_results": 1000,
                   "selector": "PRODUCER_TIMESTAMP", "window": "1 h, random start"},
        "streamvault": {
            "calls": r.calls, "fragments_returned": r.fragments,
            "latency": r.latency.summary().map(|s| s.json()),
            "cpu_ms_per_call": cpu * 1000.0 / r.calls as f64,
            "peak_rss_MiB": rss as f64 / 1048576.0,
            "generator_cpu_seconds": gen_cpu,
            "wall_seconds": r.wall.as_secs_f64(),
        }
    }))
}

async fn restart(o: &Opts) -> anyhow::Result<Value> {
    let rows = o.rows.unwrap_or(1_000_000);
    let starts = o.starts.unwrap_or(3);
    let dir = tmp()?;
    let before = machine();
    prepared_server(o, dir.path(), rows, o.objects).await?;
    let mut runs = Vec::new();
    for _ in 0..starts {
        let t0 = std::time::Instant::now();
        let mut env = server_env(o);
        // The recovery's end is logged by `streamvault::gc` at info.
        env.push((
            "STREAMVAULT_LOG".into(),
            "warn,streamvault::server=info,streamvault::gc=info".into(),
        ));
        let c = procs::start_streamvault(&bin(), &dir.path().join("data"), &key(), &env).await?;
        let (ready_cpu, ready_rss) = (c.cpu_seconds(), c.peak_rss() as f64 / 1048576.0);
        // Start-up recovery (orphan objects) runs in the background after the listener
        // is up; its end is logged. Wait for it (up to 10 min) to report how long it took.
        let mut recovery = None;
        while t0.elapsed() < std::time::Duration::from_secs(600) {
            let log = std::fs::read_to_string(&c.log).unwrap_or_default();
            if log.contains("startup recovery") {
                recovery = Some(t0.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        runs.push(json!({
            "ready_seconds": c.ready.as_secs_f64(),
            "listening_log_seconds": c.listening.map(|d| d.as_secs_f64()),
            "cpu_seconds_at_ready": ready_cpu,
            "peak_rss_MiB_at_ready": ready_rss,
            "recovery_done_seconds": recovery,
            "cpu_seconds_after_recovery": c.cpu_seconds(),
            "peak_rss_MiB_after_recovery": c.peak_rss() as f64 / 1048576.0,
        }));
        c.stop();
    }
    let mut ready: Vec<f64> = runs
        .iter()
        .filter_map(|r| r["ready_seconds"].as_f64())
        .collect();
    ready.sort_by(f64::total_cmp);
    Ok(json!({
        "machine_before": before,
        "config": {"rows": rows, "objects": o.objects, "segments": o.segments, "starts": starts},
        "streamvault": {"starts": runs, "ready_seconds_median": ready.get(ready.len() / 2), "ready_seconds_max": ready.last()},
    }))
}

/// Prints the headline figures of a report.
pub fn print(r: &Value) {
    let f = |v: &Value| match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if x.fract() == 0.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.3}")
            }
        }
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    println!("\n### {}", r["scenario"].as_str().unwrap_or("?"));
    println!("| who | metric | value |\n|---|---|---:|");
    for who in ["streamvault", "nginx", "bare_pipeline"] {
        let Some(m) = r[who].as_object() else {
            continue;
        };
        for (k, v) in m {
            match v {
                Value::Object(o) if o.contains_key("p99_ms") => println!(
                    "| {who} | {k} p50 / p99 / max ms (n) | {} / {} / {} ({}) |",
                    f(&o["p50_ms"]),
                    f(&o["p99_ms"]),
                    f(&o["max_ms"]),
                    f(&o["count"])
                ),
                Value::Array(_) | Value::Object(_) => println!("| {who} | {k} | {v} |"),
                _ => println!("| {who} | {k} | {} |", f(v)),
            }
        }
    }
    for k in ["ratio_cpu_per_GB_vs_nginx", "ratio_cpu_per_GB_vs_bare"] {
        if !r[k].is_null() {
            println!("| ratio | {k} | {} |", f(&r[k]));
        }
    }
}
