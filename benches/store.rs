//! Store-side costs, each against a same-run floor:
//! - `seal/*`: sealing a 512 KiB fragment with `DataKey::seal` vs raw aws-lc-rs
//!   AES-256-GCM `seal_in_place_separate_tag` on the same bytes (plus an intermediate
//!   "allocate + copy + seal" variant to attribute the difference);
//! - `index/insert_1000`: 1000 `SqliteIndex::insert_fragment` calls (one durable commit
//!   each) into a fresh index vs 1000 autocommit rusqlite INSERTs into the same schema
//!   (the index's own DDL, read back from `sqlite_master`) with the same pragmas (WAL,
//!   `synchronous=FULL`, foreign keys on), prepared once;
//! - `index/range_1h`: `fragments_in_range` over a 1-hour window of a stream holding
//!   50,000 2-second fragments vs the same SELECT through rusqlite directly.
//!
//! Databases live under `CARGO_TARGET_TMPDIR` (the repository's filesystem).
//!
//!     cargo bench --bench store -- --warm-up-time 1 --measurement-time 3
//!
//! `SV_BENCH_CLOCK=cpu` measures the `seal` group in thread CPU time and `index/range_1h`
//! in process CPU time (the query runs on a `spawn_blocking` thread);
//! `index/insert_1000` always uses wall time (it is fsync-bound).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rusqlite::{Connection, params};
use streamvault::index::sqlite::SqliteIndex;
use streamvault::index::{FragmentRecord, Index, NewStream, TimestampKind};
use streamvault::model::StreamName;
use streamvault::store::keys::fragment_key;
use streamvault::store::{BlobKind, Keyring};
use tokio::runtime::Runtime;

use common::Clock;

mod common;

const FRAGMENT_BYTES: usize = 512 * 1024;
const STREAM_ID: &str = "0123456789abcdef0123456789abcdef";
const T0: i64 = 1_700_000_000_000;
const POPULATED: u64 = 50_000;
const FRAGMENT_MS: i64 = 2_000;

fn tmp_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir")
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

// ---------------------------------------------------------------------------------
// Sealing

fn bench_seal(c: &mut Criterion<Clock>) {
    let plaintext: Vec<u8> = (0..FRAGMENT_BYTES)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8)
        .collect();
    let keyring = Keyring::ephemeral("bench");
    let (dek, _wrapped) = keyring.new_data_key("bench", STREAM_ID).expect("data key");

    let raw_key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).expect("key"));
    let aad = [0u8; 64]; // about the size of DataKey's header + identity AAD

    let mut g = c.benchmark_group("seal");
    g.throughput(Throughput::Bytes(FRAGMENT_BYTES as u64));

    let mut seq = 0u64;
    g.bench_function("datakey_seal_512k", |b| {
        b.iter(|| {
            seq += 1;
            let sealed = dek
                .seal(BlobKind::Fragment, seq, black_box(&plaintext))
                .expect("seal");
            black_box(sealed)
        })
    });

    // Floor: the AEAD alone, in place on a pre-allocated buffer (no copy, no alloc).
    let mut buf = plaintext.clone();
    let mut ctr = 0u64;
    g.bench_function("aead_in_place_512k", |b| {
        b.iter(|| {
            ctr += 1;
            let mut n = [0u8; NONCE_LEN];
            n[4..].copy_from_slice(&ctr.to_be_bytes());
            let tag = raw_key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(n),
                    Aad::from(&aad[..]),
                    black_box(&mut buf[..]),
                )
                .expect("seal");
            black_box(tag)
        })
    });

    // Intermediate: fresh Vec + one copy + AEAD + tag append (what a minimal
    // "plaintext slice in, sealed Vec out" API must do).
    g.bench_function("aead_alloc_copy_512k", |b| {
        b.iter(|| {
            ctr += 1;
            let mut n = [0u8; NONCE_LEN];
            n[4..].copy_from_slice(&ctr.to_be_bytes());
            let mut out = Vec::with_capacity(FRAGMENT_BYTES + 16);
            out.extend_from_slice(black_box(&plaintext));
            let tag = raw_key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(n),
                    Aad::from(&aad[..]),
                    &mut out[..],
                )
                .expect("seal");
            out.extend_from_slice(tag.as_ref());
            black_box(out)
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------
// Index

fn new_stream() -> NewStream {
    NewStream {
        stream_id: STREAM_ID.to_owned(),
        name: StreamName::parse("bench-cam").expect("name"),
        device_name: None,
        media_type: Some("video/h264".into()),
        kms_key_id: "bench".into(),
        version: "v1".into(),
        creation_ms: T0,
        retention_hours: 24,
        wrapped_key: vec![1; 60],
        tags: BTreeMap::new(),
    }
}

fn fragment(seq: u64) -> FragmentRecord {
    let ts = T0 + seq as i64 * FRAGMENT_MS;
    FragmentRecord {
        stream_id: STREAM_ID.to_owned(),
        seq,
        session_id: 1,
        producer_ts_ms: ts,
        server_ts_ms: ts + 40,
        duration_ms: FRAGMENT_MS,
        producer_timecode: ts,
        size: 500_000,
        object_key: fragment_key(STREAM_ID, seq).to_string(),
        object_size: 500_000 + 67,
        content_hash: format!("{:064x}", seq.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        object_offset: None,
        metadata: Vec::new(),
    }
}

/// A fresh index with the bench stream created.
fn fresh_index(rt: &Runtime, dir: &Path) -> SqliteIndex {
    let idx = SqliteIndex::open(&dir.join("index.sqlite3")).expect("open index");
    rt.block_on(idx.create_stream(new_stream(), 10))
        .expect("create stream");
    idx
}

/// The DDL of the `streams` and `fragments` tables and their indexes exactly as
/// `SqliteIndex` creates them (read back from `sqlite_master` of a fresh index), so the
/// raw rusqlite floor keeps the same keys and secondary indexes as the schema evolves.
fn index_schema() -> String {
    let dir = tmp_dir();
    let path = dir.path().join("schema.sqlite3");
    SqliteIndex::open(&path).expect("open index").close();
    let c = Connection::open(&path).expect("open");
    let mut st = c
        .prepare(
            "SELECT sql FROM sqlite_master WHERE tbl_name IN ('streams', 'fragments') \
             AND sql IS NOT NULL ORDER BY rowid",
        )
        .expect("prepare");
    let ddl: Vec<String> = st
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    ddl.join(";\n") + ";"
}

const INSERT_SQL: &str = "INSERT INTO fragments (stream_id, seq, session_id, producer_ts_ms, \
    server_ts_ms, duration_ms, producer_timecode, size, object_key, object_size, content_hash, \
    metadata) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

fn raw_conn(path: &Path) -> Connection {
    let c = Connection::open(path).expect("open");
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
        .expect("pragmas");
    c
}

fn raw_insert(c: &Connection, f: &FragmentRecord) {
    let mut st = c.prepare_cached(INSERT_SQL).expect("prepare");
    st.execute(params![
        f.stream_id,
        f.seq as i64,
        f.session_id as i64,
        f.producer_ts_ms,
        f.server_ts_ms,
        f.duration_ms,
        f.producer_timecode,
        f.size as i64,
        f.object_key,
        f.object_size as i64,
        f.content_hash,
        "[]"
    ])
    .expect("insert");
}

fn bench_index_insert(c: &mut Criterion) {
    let rt = &runtime();
    const N: u64 = 1000;
    let rows: Vec<FragmentRecord> = (0..N).map(fragment).collect();
    let schema = index_schema();
    let mut g = c.benchmark_group("index");
    g.sample_size(10)
        .sampling_mode(criterion::SamplingMode::Flat);

    g.bench_function(BenchmarkId::new("insert_1000", "sqlite_index"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tmp_dir();
                let idx = fresh_index(rt, dir.path());
                let rows = rows.clone();
                let t = Instant::now();
                rt.block_on(async {
                    for f in rows {
                        idx.insert_fragment(f).await.expect("insert");
                    }
                });
                total += t.elapsed();
                idx.close();
            }
            total
        })
    });

    g.bench_function(BenchmarkId::new("insert_1000", "raw_rusqlite_floor"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tmp_dir();
                let conn = raw_conn(&dir.path().join("raw.sqlite3"));
                conn.execute_batch(&schema).expect("schema");
                conn.execute(
                    "INSERT INTO streams (stream_id, name, kms_key_id, version, creation_ms, \
                     retention_hours, wrapped_key) VALUES (?1, 'bench-cam', 'bench', 'v1', ?2, 24, x'01')",
                    params![STREAM_ID, T0],
                )
                .expect("stream row");
                let t = Instant::now();
                for f in &rows {
                    raw_insert(&conn, f);
                }
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

fn bench_index_range(c: &mut Criterion<Clock>) {
    let rt = &runtime();
    let dir = tmp_dir();
    let path = dir.path().join("index.sqlite3");
    let setup = Instant::now();
    let idx = fresh_index(rt, dir.path());
    {
        // Populate with batch SQL in one transaction (50,000 durable commits would take
        // minutes); same columns and value formats as `insert_fragment` writes.
        let mut conn = raw_conn(&path);
        let tx = conn.transaction().expect("tx");
        for seq in 0..POPULATED {
            raw_insert(&tx, &fragment(seq));
        }
        tx.commit().expect("commit");
        conn.execute_batch("ANALYZE; PRAGMA wal_checkpoint(TRUNCATE);")
            .expect("analyze");
    }
    let start = T0 + 25_000 * FRAGMENT_MS; // middle of the stream
    let end = start + 3_600_000;
    let all = rt
        .block_on(idx.fragments_in_range(
            STREAM_ID,
            TimestampKind::Producer,
            start,
            end,
            None,
            10_000,
        ))
        .expect("range");
    eprintln!(
        "index/range_1h: populated {POPULATED} rows in {:.1?}; window returns {} rows",
        setup.elapsed(),
        all.len()
    );
    assert_eq!(all.len(), 1801);

    let mut g = c.benchmark_group("index/range_1h");
    for (label, limit) in [("all_rows", 10_000usize), ("page_1000", 1000)] {
        g.bench_function(BenchmarkId::new("sqlite_index", label), |b| {
            b.iter(|| {
                let v = rt
                    .block_on(idx.fragments_in_range(
                        STREAM_ID,
                        TimestampKind::Producer,
                        black_box(start),
                        end,
                        None,
                        limit,
                    ))
                    .expect("range");
                black_box(v)
            })
        });
        // Floor: the same SELECT through a prepared rusqlite statement on this thread,
        // reading every column into owned values (no spawn_blocking, no JSON).
        let conn = raw_conn(&path);
        g.bench_function(BenchmarkId::new("raw_rusqlite_floor", label), |b| {
            b.iter(|| {
                let mut st = conn
                    .prepare_cached(
                        "SELECT stream_id, seq, session_id, producer_ts_ms, server_ts_ms, \
                         duration_ms, producer_timecode, size, object_key, object_size, \
                         content_hash, metadata FROM fragments WHERE stream_id = ?1 AND \
                         producer_ts_ms >= ?2 AND producer_ts_ms <= ?3 AND (producer_ts_ms > ?4 \
                         OR (producer_ts_ms = ?4 AND seq > ?5)) ORDER BY producer_ts_ms, seq LIMIT ?6",
                    )
                    .expect("prepare");
                let rows = st
                    .query_map(
                        params![STREAM_ID, black_box(start), end, i64::MIN, -1i64, limit as i64],
                        |r| {
                            Ok((
                                r.get::<_, String>(0)?,
                                r.get::<_, i64>(1)?,
                                r.get::<_, i64>(2)?,
                                r.get::<_, i64>(3)?,
                                r.get::<_, i64>(4)?,
                                r.get::<_, i64>(5)?,
                                r.get::<_, i64>(6)?,
                                r.get::<_, i64>(7)?,
                                r.get::<_, String>(8)?,
                                r.get::<_, i64>(9)?,
                                r.get::<_, String>(10)?,
                                r.get::<_, String>(11)?,
                            ))
                        },
                    )
                    .expect("query")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("rows");
                black_box(rows)
            })
        });
    }
    g.finish();
    idx.close();
}

criterion_group! {
    name = seal;
    config = Criterion::default()
        .with_measurement(Clock::from_env(false))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_seal
}
criterion_group! {
    name = index_insert;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_index_insert
}
criterion_group! {
    name = index_range;
    config = Criterion::default()
        .with_measurement(Clock::from_env(true))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_index_range
}
criterion_main!(seal, index_insert, index_range);
