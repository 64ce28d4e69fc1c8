//! Crash test: the real `streamvault` binary is killed with SIGKILL at random moments
//! while several producers upload, and restarted. After every restart:
//!
//! - `streamvault check --deep` on the live data dir exits 0;
//! - every fragment whose PERSISTED ack a producer received is listed by ListFragments
//!   and reads back bit-exact (decrypted through `DataDir`) with its producer timestamp;
//! - no fragment is stored twice (producers re-send what was not PERSISTED, with the
//!   same timecodes, as the KVS SDK does after a reconnect: the idempotent re-upload
//!   acknowledges those that were stored with their original numbers).
//!
//! Throughout, fragment numbers handed out in BUFFERING acks only increase, across
//! restarts (I3). `STREAMVAULT_SOAK_CYCLES=<n>` runs `n` kill/restart cycles instead of
//! 20; `STREAMVAULT_CRASH_SEED=<u64>` replays a run's kill timings.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesisvideoarchivedmedia::types::{
    FragmentSelector, FragmentSelectorType, TimestampRange,
};
use aws_smithy_types::DateTime;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STREAMS: &[&str] = &["crash-a", "crash-b", "crash-c"];
/// Pause between two clusters of an upload (a camera sends in real time, faster here).
const PACE: Duration = Duration::from_millis(60);

/// xorshift64*: reproducible kill timings without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// One run of the server binary.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_streamvault")
}

/// `serve --no-auth` once the server has authentication (merged from main); nothing
/// before that.
fn auth_args() -> Vec<&'static str> {
    let help = Command::new(binary())
        .args(["serve", "--help"])
        .output()
        .expect("run streamvault serve --help");
    if String::from_utf8_lossy(&help.stdout).contains("--no-auth") {
        vec!["--no-auth"]
    } else {
        vec![]
    }
}

fn start_server(dir: &Path, log: &Path) -> ServerProcess {
    let logf = std::fs::File::create(log).unwrap();
    let child = Command::new(binary())
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(auth_args())
        .env("STREAMVAULT_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("STREAMVAULT_SOAK_CYCLES")
        .env_remove("STREAMVAULT_CRASH_SEED")
        // Recovery runs before the server accepts requests, so every object without a
        // row is residue of a crash: clean all of it.
        .env("STREAMVAULT_GC__ORPHAN_MIN_AGE", "0s")
        .env("STREAMVAULT_INGEST__MAX_CONNECTIONS_PER_STREAM", "2")
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .expect("start streamvault serve");
    let mut child = child;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "server exited at startup ({status}); log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(i) = text.find("listening on http://") {
            let rest = &text[i + "listening on http://".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                .unwrap_or(rest.len());
            return ServerProcess {
                child,
                addr: rest[..end].parse().expect("listening address"),
            };
        }
        assert!(
            Instant::now() < deadline,
            "server did not start; log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What the producers saw, shared with the checker.
#[derive(Default)]
struct Observed {
    /// stream → fragment number → (cluster index, producer timestamp ms) of every
    /// PERSISTED ack received.
    persisted: BTreeMap<String, BTreeMap<String, (usize, i64)>>,
    /// stream → last BUFFERING number.
    last_buffering: HashMap<String, String>,
    buffering_acks: u64,
    /// PERSISTED acks whose number was not the upload's own (re-sent fragments
    /// recognised as stored).
    deduplicated: u64,
    error_acks: Vec<String>,
    sessions: u64,
    broken_sessions: u64,
    violations: Vec<String>,
}

/// One chunked PutMedia upload; acks are handed to `on_ack` as they arrive. Returns
/// whether the response completed (false: connection failed or broke).
async fn put_session(
    addr: SocketAddr,
    stream: &str,
    start_ms: i64,
    parts: Vec<Vec<u8>>,
    mut on_ack: impl FnMut(serde_json::Value),
) -> bool {
    let Ok(Ok(sock)) =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await
    else {
        return false;
    };
    let (mut rd, mut wr) = sock.into_split();
    let head = format!(
        "POST /putMedia HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nUser-Agent: streamvault-crash-test\r\n\
         x-amzn-stream-name: {stream}\r\nx-amzn-producer-start-timestamp: {}.{:03}\r\n\r\n",
        start_ms / 1000,
        start_ms % 1000
    );
    let writer = tokio::spawn(async move {
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for p in parts {
            let mut frame = format!("{:x}\r\n", p.len()).into_bytes();
            frame.extend_from_slice(&p);
            frame.extend_from_slice(b"\r\n");
            if wr.write_all(&frame).await.is_err() {
                return;
            }
            tokio::time::sleep(PACE).await;
        }
        let _ = wr.write_all(b"0\r\n\r\n").await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let mut buf = Vec::new();
    let mut tmp = vec![0u8; 16384];
    let mut body_at: Option<usize> = None;
    let mut pos = 0;
    let mut complete = false;
    'read: loop {
        match tokio::time::timeout(Duration::from_secs(20), rd.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
        }
        if body_at.is_none() {
            let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..p]).to_string();
            if !head.starts_with("HTTP/1.1 200") {
                eprintln!("crash test: PutMedia refused: {head}");
                break;
            }
            body_at = Some(p + 4);
            pos = p + 4;
        }
        // Complete chunks → ack lines.
        loop {
            let Some(nl) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let size = usize::from_str_radix(
                std::str::from_utf8(&buf[pos..pos + nl])
                    .unwrap_or("")
                    .trim(),
                16,
            )
            .unwrap_or(usize::MAX);
            if size == 0 {
                complete = true;
                break 'read;
            }
            let start = pos + nl + 2;
            if size == usize::MAX || buf.len() < start + size + 2 {
                break;
            }
            for line in buf[start..start + size].split(|b| *b == b'\n') {
                if !line.iter().all(u8::is_ascii_whitespace) {
                    on_ack(serde_json::from_slice(line).expect("ack is JSON"));
                }
            }
            pos = start + size + 2;
        }
    }
    writer.abort();
    complete
}

/// A camera: uploads rounds of the sample's clusters (each round a new producer start
/// time), re-sending whatever was not PERSISTED after a broken connection.
async fn producer(
    stream: &'static str,
    index: usize,
    addr: Arc<Mutex<Option<SocketAddr>>>,
    header: Arc<Vec<u8>>,
    clusters: Arc<Vec<(u64, Vec<u8>)>>,
    observed: Arc<Mutex<Observed>>,
    stop: Arc<AtomicBool>,
) {
    let by_tc: HashMap<u64, usize> = clusters
        .iter()
        .enumerate()
        .map(|(i, (tc, _))| (*tc, i))
        .collect();
    let mut round: i64 = 0;
    while !stop.load(Ordering::SeqCst) {
        // Producer start time of this round: far apart per stream and round.
        let start_ms = 1_795_600_000_000 + index as i64 * 1_000_000_000 + round * 60_000;
        let mut remaining: Vec<usize> = (0..clusters.len()).collect();
        let mut attempts = 0;
        while !remaining.is_empty() {
            let Some(a) = *addr.lock().unwrap() else {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            attempts += 1;
            assert!(attempts < 200, "{stream}: round {round} never completes");
            let mut parts = vec![header.to_vec()];
            parts.extend(remaining.iter().map(|&i| clusters[i].1.clone()));
            let mut own: HashMap<u64, String> = HashMap::new();
            let mut done: HashSet<usize> = HashSet::new();
            let obs = observed.clone();
            let complete = put_session(a, stream, start_ms, parts, |ack| {
                let kind = ack["EventType"].as_str().unwrap_or_default().to_owned();
                let tc = ack["FragmentTimecode"].as_u64();
                let num = ack["FragmentNumber"].as_str().map(str::to_owned);
                let mut o = obs.lock().unwrap();
                match (kind.as_str(), tc, num) {
                    ("BUFFERING", Some(tc), Some(n)) => {
                        o.buffering_acks += 1;
                        if let Some(prev) = o.last_buffering.get(stream)
                            && n <= *prev
                        {
                            let v = format!(
                                "{stream}: BUFFERING number went backwards: {prev} then {n}"
                            );
                            o.violations.push(v);
                        }
                        o.last_buffering.insert(stream.to_owned(), n.clone());
                        own.insert(tc, n);
                    }
                    ("PERSISTED", Some(tc), Some(n)) => {
                        let Some(&i) = by_tc.get(&tc) else {
                            o.violations
                                .push(format!("{stream}: PERSISTED for unknown timecode {tc}"));
                            return;
                        };
                        if own.get(&tc) != Some(&n) {
                            o.deduplicated += 1;
                        }
                        let ts = start_ms + tc as i64;
                        let entry = o.persisted.entry(stream.to_owned()).or_default();
                        if let Some(prev) = entry.insert(n.clone(), (i, ts))
                            && prev != (i, ts)
                        {
                            let v = format!("{stream}: number {n} acknowledged for two fragments");
                            o.violations.push(v);
                        }
                        done.insert(i);
                    }
                    ("ERROR", _, _) => o.error_acks.push(format!("{stream}: {ack}")),
                    _ => {}
                }
            })
            .await;
            {
                let mut o = observed.lock().unwrap();
                o.sessions += 1;
                if !complete {
                    o.broken_sessions += 1;
                }
            }
            remaining.retain(|i| !done.contains(i));
            if !remaining.is_empty() {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
        round += 1;
    }
}

fn cli_check(dir: &Path) -> (i32, String) {
    let out = Command::new(binary())
        .args(["check", "--deep", "--data-dir"])
        .arg(dir)
        .env("STREAMVAULT_LOG", "warn")
        .output()
        .unwrap();
    // Keep stderr: exit 2 ("could not run") says why only there.
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.stderr.is_empty() {
        text.push_str("\n--- stderr ---\n");
        text.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    (out.status.code().unwrap_or(-1), text)
}

async fn list_all(addr: SocketAddr, stream: &str) -> HashSet<String> {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(format!("http://{addr}"))
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kinesisvideo::config::Credentials::new(
            "AKIDSTREAMVAULTTEST",
            "testsecretkeytestsecretkey",
            None,
            None,
            "test",
        ))
        .load()
        .await;
    let am = aws_sdk_kinesisvideoarchivedmedia::Client::new(&conf);
    let sel = FragmentSelector::builder()
        .fragment_selector_type(FragmentSelectorType::ServerTimestamp)
        .timestamp_range(
            TimestampRange::builder()
                .start_timestamp(DateTime::from_millis(0))
                .end_timestamp(DateTime::from_millis(4_000_000_000_000))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let mut out = HashSet::new();
    let mut token: Option<String> = None;
    loop {
        let mut req = am.list_fragments().stream_name(stream).max_results(1000);
        req = match &token {
            Some(t) => req.next_token(t),
            None => req.fragment_selector(sel.clone()),
        };
        let page = req.send().await.expect("ListFragments");
        out.extend(
            page.fragments()
                .iter()
                .map(|f| f.fragment_number().unwrap().to_owned()),
        );
        match page.next_token() {
            Some(t) => token = Some(t.to_owned()),
            None => return out,
        }
    }
}

/// Every acknowledged fragment is listed and reads back bit-exact; no fragment is
/// stored twice. Returns how many acknowledged fragments were verified.
async fn verify(
    dir: &Path,
    addr: SocketAddr,
    observed: &Mutex<Observed>,
    clusters: &[(u64, Vec<u8>)],
) -> u64 {
    let acked = observed.lock().unwrap().persisted.clone();
    let dd = DataDir::open(dir).await;
    let mut checked = 0;
    for (stream, frags) in &acked {
        let listed = list_all(addr, stream).await;
        let s = dd
            .index
            .get_stream(&streamvault::model::StreamName::parse(stream).unwrap())
            .await
            .unwrap()
            .expect("stream exists");
        let key = dd
            .store
            .keyring()
            .unwrap_data_key(&s.kms_key_id, &s.stream_id, &s.wrapped_key)
            .unwrap();
        for (number, (idx, ts)) in frags {
            assert!(
                listed.contains(number),
                "{stream}: acknowledged fragment {number} is not listed"
            );
            let seq = streamvault::model::FragmentNumber::parse(number)
                .unwrap()
                .unwrap()
                .seq;
            let row = dd
                .index
                .get_fragment(&s.stream_id, seq)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{stream}: acknowledged fragment {number} has no row"));
            assert_eq!(row.producer_ts_ms, *ts, "{stream} {number}");
            let bytes = dd.store.get_fragment(&key, &row).await.unwrap_or_else(|e| {
                panic!("{stream}: acknowledged fragment {number} unreadable: {e}")
            });
            assert!(
                bytes[..] == clusters[*idx].1[..],
                "{stream}: acknowledged fragment {number} altered"
            );
            checked += 1;
        }
        // Stored once: one row per producer timestamp.
        let rows = dd
            .index
            .fragments_after(&s.stream_id, None, 1_000_000)
            .await
            .unwrap();
        let mut seen = HashMap::new();
        for r in &rows {
            if let Some(other) = seen.insert(r.producer_ts_ms, r.seq) {
                panic!(
                    "{stream}: fragments {other} and {} have the same producer timestamp {}",
                    r.seq, r.producer_ts_ms
                );
            }
        }
    }
    checked
}

#[test]
fn kill_9_at_random_moments_loses_no_acknowledged_fragment() {
    let cycles: u32 = std::env::var("STREAMVAULT_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("STREAMVAULT_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test: {cycles} cycles, STREAMVAULT_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let src = sample("h264_720p_gop1s.mkv");
    let (header, _) = split_sample(&src);
    let clusters = Arc::new(clusters_of(&src));
    let header = Arc::new(header);
    let addr: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let observed: Arc<Mutex<Observed>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let verified_total = AtomicU64::new(0);
    let started = Instant::now();

    // First start: create the streams.
    let mut server = start_server(&dir, &logs.join("server-000.log"));
    rt.block_on(async {
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(format!("http://{}", server.addr))
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_kinesisvideo::config::Credentials::new(
                "AKIDSTREAMVAULTTEST",
                "testsecretkeytestsecretkey",
                None,
                None,
                "test",
            ))
            .load()
            .await;
        let c = aws_sdk_kinesisvideo::Client::new(&conf);
        for s in STREAMS {
            c.create_stream()
                .stream_name(*s)
                .data_retention_in_hours(24)
                .send()
                .await
                .unwrap();
        }
    });
    *addr.lock().unwrap() = Some(server.addr);
    let producers: Vec<_> = STREAMS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            rt.spawn(producer(
                s,
                i,
                addr.clone(),
                header.clone(),
                clusters.clone(),
                observed.clone(),
                stop.clone(),
            ))
        })
        .collect();

    let mut checks = Vec::new();
    for cycle in 1..=cycles {
        // Let the producers run, then kill at a random moment.
        std::thread::sleep(Duration::from_millis(rng.range(200, 1200)));
        *addr.lock().unwrap() = None;
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        // Sometimes restart at once, sometimes after the producers gave up a while.
        std::thread::sleep(Duration::from_millis(rng.range(0, 300)));
        server = start_server(&dir, &logs.join(format!("server-{cycle:03}.log")));
        *addr.lock().unwrap() = Some(server.addr);
        // Check the live data dir: the producers are reconnecting and uploading.
        let (code, out) = cli_check(&dir);
        assert_eq!(code, 0, "cycle {cycle}: check --deep is not clean:\n{out}");
        checks.push(out.lines().next().unwrap_or_default().to_owned());
        let n = rt.block_on(verify(&dir, server.addr, &observed, &clusters));
        verified_total.fetch_add(n, Ordering::SeqCst);
        let o = observed.lock().unwrap();
        assert!(o.violations.is_empty(), "{:?}", o.violations);
        eprintln!(
            "cycle {cycle}: {} acknowledged fragments verified, {} deduplicated so far; check: {}",
            n,
            o.deduplicated,
            checks.last().unwrap()
        );
    }

    // Let the producers finish their rounds against the last server, then verify all.
    stop.store(true, Ordering::SeqCst);
    rt.block_on(async {
        for p in producers {
            tokio::time::timeout(Duration::from_secs(60), p)
                .await
                .expect("producers finish")
                .expect("producer panicked");
        }
    });
    let (code, out) = cli_check(&dir);
    assert_eq!(code, 0, "final check --deep is not clean:\n{out}");
    let n = rt.block_on(verify(&dir, server.addr, &observed, &clusters));
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let recovered: usize = (0..=cycles)
        .map(|c| {
            std::fs::read_to_string(logs.join(format!("server-{c:03}.log")))
                .unwrap_or_default()
                .matches("startup recovery removed")
                .count()
        })
        .sum();
    let o = observed.lock().unwrap();
    assert!(o.violations.is_empty(), "{:?}", o.violations);
    assert!(o.error_acks.is_empty(), "ERROR acks: {:?}", o.error_acks);
    let acked: usize = o.persisted.values().map(BTreeMap::len).sum();
    assert!(acked > 0);
    assert_eq!(
        n as usize, acked,
        "every acknowledged fragment verified at the end"
    );
    eprintln!(
        "crash test done in {:.1}s: {cycles} kill -9/restart cycles, {acked} acknowledged fragments \
         (all listed and bit-exact after the last restart; {} verifications over all cycles), \
         {} BUFFERING acks, {} re-sent fragments acknowledged with their original number, \
         {} upload sessions ({} broken by a kill), {} startups removed crash residue, \
         check --deep clean {} times. seed={seed}",
        started.elapsed().as_secs_f64(),
        verified_total.load(Ordering::SeqCst) + n,
        o.buffering_acks,
        o.deduplicated,
        o.sessions,
        o.broken_sessions,
        recovered,
        checks.len() + 1,
    );
}
