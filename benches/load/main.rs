//! The issue-9 load generator (`harness = false` bench): replays `media-samples/` as N
//! PutMedia producers with M GetMedia live readers per stream against the release
//! `streamvault` binary it starts itself (or a given `--endpoint`), runs the nginx and
//! bare-pipeline baselines with the same upload in the same run, and reports throughput,
//! PERSISTED-after-close latency, live-tail frame latency, server CPU per GB and peak RSS,
//! as a table and as JSON. See `docs/benchmarks.md` for the scenarios and figures.
//!
//! ```text
//! cargo bench --bench load -- <scenario> [options]
//!   scenarios: one-stream | cameras | readers | live-tail | list-fragments | restart | all
//!   --streams N --readers M --duration S --baseline-duration S --pace max|cluster|frame
//!   --sample FILE --merge N --rows N --windows N --starts N --objects --segments --quickack --no-baselines --s3
//!   --endpoint http://HOST:PORT [--server-pid PID] --no-auth --json out.json
//! ```

mod bare;
// The criterion helpers of the other benches; only `sys::cpu_ns` is used here.
#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;
mod http;
mod index;
mod mkv;
mod procs;
mod producer;
mod reader;
mod s3;
mod scenario;
mod stats;

use std::path::PathBuf;

use scenario::Opts;

fn usage() -> ! {
    eprintln!(
        "usage: cargo bench --bench load -- <one-stream|cameras|readers|live-tail|list-fragments|restart|all> \
         [--streams N] [--readers M] [--duration S] [--baseline-duration S] [--pace max|cluster|frame] \
         [--sample FILE] [--merge N] [--rows N] [--windows N] [--starts N] [--objects] [--segments] [--quickack] [--no-baselines] [--s3] \
         [--endpoint URL] [--server-pid PID] [--no-auth] [--json FILE]"
    );
    std::process::exit(2)
}

fn parse() -> (Vec<String>, Opts) {
    let mut o = Opts::default();
    let mut names = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |a: &str| {
            args.next().unwrap_or_else(|| {
                eprintln!("{a} needs a value");
                usage()
            })
        };
        let num = |v: String| -> u64 { v.parse().unwrap_or_else(|_| usage()) };
        match a.as_str() {
            "--bench" => {} // added by `cargo bench`
            "--streams" => o.streams = Some(num(val(&a)) as usize),
            "--readers" => o.readers = Some(num(val(&a)) as usize),
            "--duration" => o.duration = Some(num(val(&a))),
            "--baseline-duration" => o.baseline_duration = Some(num(val(&a))),
            "--pace" => {
                o.pace = Some(match val(&a).as_str() {
                    "max" => producer::Pace::Max,
                    "cluster" => producer::Pace::Cluster,
                    "frame" => producer::Pace::Frame,
                    _ => usage(),
                })
            }
            "--sample" => o.sample = Some(PathBuf::from(val(&a))),
            "--rows" => o.rows = Some(num(val(&a))),
            "--windows" => o.windows = Some(num(val(&a)) as usize),
            "--starts" => o.starts = Some(num(val(&a)) as usize),
            "--objects" => o.objects = true,
            "--segments" => o.segments = true,
            "--quickack" => o.quickack = true,
            "--s3" => o.s3 = true,
            "--merge" => o.merge = Some(num(val(&a)) as usize),
            "--no-baselines" => o.no_baselines = true,
            "--endpoint" => o.endpoint = Some(val(&a)),
            "--server-pid" => o.server_pid = Some(num(val(&a)) as u32),
            "--no-auth" => o.no_auth = true,
            "--json" => o.json = Some(PathBuf::from(val(&a))),
            "-h" | "--help" => usage(),
            s if !s.starts_with('-') => names.push(s.to_owned()),
            _ => usage(),
        }
    }
    if names.is_empty() {
        usage();
    }
    (names, o)
}

fn main() {
    let (names, opts) = parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let all = [
        "one-stream",
        "cameras",
        "readers",
        "live-tail",
        "list-fragments",
        "restart",
    ];
    let names: Vec<String> = if names.iter().any(|n| n == "all") {
        all.iter().map(|s| s.to_string()).collect()
    } else {
        names
    };
    let mut reports = Vec::new();
    for n in &names {
        if !all.contains(&n.as_str()) {
            eprintln!("unknown scenario {n}");
            usage();
        }
        eprintln!("== {n} (load average {:.1})", stats::loadavg());
        match rt.block_on(scenario::run(n, &opts)) {
            Ok(r) => {
                scenario::print(&r);
                reports.push(r);
            }
            Err(e) => {
                eprintln!("{n}: FAILED: {e:#}");
                reports.push(serde_json::json!({"scenario": n, "error": format!("{e:#}")}));
            }
        }
    }
    if let Some(p) = &opts.json {
        let text = serde_json::to_string_pretty(&reports).unwrap();
        std::fs::write(p, text + "\n").expect("write json");
        eprintln!("JSON written to {}", p.display());
    }
}
