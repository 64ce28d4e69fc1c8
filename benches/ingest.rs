//! Ingest throughput over real MKV bodies, each against a same-run memcpy floor.
//!
//! For every input file, one criterion group `ingest/<file>` with `Throughput::Bytes`:
//! - `memcpy`: `copy_from_slice` of the whole body into a pre-allocated `Vec` (the floor:
//!   any ingest path touches every byte at least once);
//! - `reader`: `mkv::Reader` alone, fed 32 KiB chunks, draining every event;
//! - `fragmenter`: the whole `Fragmenter` (reader + cutting + re-clustering where the
//!   producer's clusters do not start at keyframes), 32 KiB chunks, draining outputs.
//!
//! Inputs: the valid `media-samples/*.mkv` and, when present, two KVS captures from
//! `../shared/media/kvs-captures/` (skipped with a message otherwise).
//!
//!     cargo bench --bench ingest -- --warm-up-time 1 --measurement-time 3
//!     SV_BENCH_CLOCK=cpu cargo bench --bench ingest -- ...   # thread CPU time instead of wall

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Clock;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use streamvault::fragmenter::{Fragmenter, Limits, Output, TimecodeMode};
use streamvault::mkv;

mod common;

const CHUNK: usize = 32 * 1024;
const START_MS: i64 = 1_700_000_000_000;

struct Input {
    name: &'static str,
    path: PathBuf,
    mode: TimecodeMode,
}

fn inputs() -> Vec<(Input, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rel = TimecodeMode::Relative { start_ms: START_MS };
    let list = [
        ("h264_720p_gop1s", "media-samples/h264_720p_gop1s.mkv", rel),
        (
            "h264_aac_720p_gop1s",
            "media-samples/h264_aac_720p_gop1s.mkv",
            rel,
        ),
        ("h265_720p_gop1s", "media-samples/h265_720p_gop1s.mkv", rel),
        (
            "h264_cluster_nokey",
            "media-samples/h264_cluster_nokey.mkv",
            rel,
        ),
        (
            "kvs_producer_sdk_test_stream",
            "../shared/media/kvs-captures/producer-sdk-test-stream-1_0.mkv",
            TimecodeMode::Absolute,
        ),
        (
            "kvs_vogels_330",
            "../shared/media/kvs-captures/vogels_330.mkv",
            rel,
        ),
    ];
    let mut out = Vec::new();
    for (name, p, mode) in list {
        let path = root.join(p);
        match std::fs::read(&path) {
            Ok(bytes) => out.push((Input { name, path, mode }, bytes)),
            Err(e) => eprintln!("SKIP ingest/{name}: {} not readable ({e})", path.display()),
        }
    }
    out
}

/// Reader alone: push in CHUNK pieces, drain after each, then `finish`. Returns the
/// number of events so the work is observable.
fn run_reader(data: &[u8]) -> usize {
    let mut r = mkv::Reader::new(mkv::Limits::default());
    let mut n = 0usize;
    for c in data.chunks(CHUNK) {
        r.push(c);
        loop {
            match r.next_event() {
                Ok(Some(ev)) => {
                    black_box(&ev);
                    n += 1;
                }
                Ok(None) => break,
                Err(e) => panic!("reader error: {e}"),
            }
        }
    }
    loop {
        match r.finish() {
            Ok(Some(ev)) => {
                black_box(&ev);
                n += 1;
            }
            Ok(None) => break,
            Err(e) => panic!("reader finish error: {e}"),
        }
    }
    n
}

#[derive(Debug, Default, Clone, Copy)]
struct FragStats {
    outputs: usize,
    fragments: usize,
    verbatim: usize,
    errors: usize,
    fragment_bytes: usize,
}

/// Whole fragmenter: push in CHUNK pieces, drain outputs after each, then `finish`.
fn run_fragmenter(data: &[u8], mode: TimecodeMode) -> FragStats {
    let mut f = Fragmenter::new(Limits::default(), mode);
    let mut s = FragStats::default();
    let take = |f: &mut Fragmenter, s: &mut FragStats| {
        while let Some(o) = f.poll() {
            s.outputs += 1;
            match &o {
                Output::FragmentEnd(fr) => {
                    s.fragments += 1;
                    s.verbatim += usize::from(fr.verbatim);
                    s.fragment_bytes += fr.cluster.len();
                }
                Output::Error(_) => s.errors += 1,
                _ => {}
            }
            black_box(o);
        }
    };
    for (i, c) in data.chunks(CHUNK).enumerate() {
        f.push(c, START_MS + i as i64);
        take(&mut f, &mut s);
    }
    f.finish(START_MS + 1_000_000);
    take(&mut f, &mut s);
    s
}

fn bench_ingest(c: &mut Criterion<Clock>) {
    for (input, data) in inputs() {
        // Sanity check once, outside the measurement: the body must be clean.
        let events = run_reader(&data);
        let st = run_fragmenter(&data, input.mode);
        assert_eq!(st.errors, 0, "{}: fragmenter errors", input.path.display());
        eprintln!(
            "ingest/{}: {} bytes, {} reader events, {} fragments ({} verbatim, {} re-clustered), {} fragment bytes",
            input.name,
            data.len(),
            events,
            st.fragments,
            st.verbatim,
            st.fragments - st.verbatim,
            st.fragment_bytes
        );

        let mut g = c.benchmark_group(format!("ingest/{}", input.name));
        g.throughput(Throughput::Bytes(data.len() as u64));
        let mut dst = vec![0u8; data.len()];
        g.bench_function("memcpy", |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&data[..]));
                black_box(&mut dst);
            })
        });
        g.bench_function("reader", |b| b.iter(|| run_reader(black_box(&data))));
        g.bench_function("fragmenter", |b| {
            b.iter(|| run_fragmenter(black_box(&data), input.mode))
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .with_measurement(Clock::from_env(false))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_ingest
}
criterion_main!(benches);
