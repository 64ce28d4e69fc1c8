//! The index-heavy scenarios: `list-fragments` (ListFragments over random 1-hour windows
//! of a stream holding 7 days of 2-second fragments) and `restart` (time from process
//! start to the first answered request with 1 M fragments indexed).
//!
//! Populating through PutMedia would take days of stream time, so the stream is created
//! through the API (real stream row, key and ARN), the server is stopped, and the rows are
//! written straight into its `index.sqlite3` in one transaction with the same columns and
//! value formats `SqliteIndex::insert_fragment` writes (like `benches/store.rs`), with
//! `seq_reserved` moved past them. Server timestamps end "now" so the retention view
//! (stream retention 8 days) shows them all. ListFragments needs no objects; for
//! `restart` the objects can also be created (`--objects`: empty files, mtime 2 h ago, so
//! startup recovery lists and checks every one as it would real fragments). With
//! `--segments` the rows are addressed into shared segments instead, as ingest writes them
//! since issue 14 (256 MiB segments of the stream's retention class, sealed, with their
//! `segments` rows); `--objects` then creates the segment files (sparse, at their durable
//! length).

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use crate::http::{JsonClient, Target, create_stream};
use crate::stats::Samples;

pub const FRAGMENT_MS: i64 = 2_000;
/// The stream's retention (8 days: every row is in the retention view).
const RETENTION_HOURS: i64 = 192;
/// A row's sealed fragment size.
const SEALED_SIZE: i64 = 250_060;
/// Fragments per 256 MiB segment.
const PER_SEGMENT: u64 = (256 << 20) / SEALED_SIZE as u64;

/// Writes `rows` fragments of stream `name` into a stopped server's index; returns the
/// stream id and the first producer/server timestamp (ms).
pub fn populate(
    data_dir: &Path,
    name: &str,
    rows: u64,
    objects: bool,
    segments: bool,
) -> anyhow::Result<(String, i64)> {
    let mut c = Connection::open(data_dir.join("index.sqlite3"))?;
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")?;
    let id: String = c.query_row(
        "SELECT stream_id FROM streams WHERE name = ?1",
        [name],
        |r| r.get(0),
    )?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let t0 = now - rows as i64 * FRAGMENT_MS - 60_000;
    let hash = "ab".repeat(32);
    let tx = c.transaction()?;
    {
        let mut st = tx.prepare(
            "INSERT INTO fragments (stream_id, seq, session_id, producer_ts_ms, server_ts_ms, \
             duration_ms, producer_timecode, size, object_key, object_size, content_hash, metadata, \
             object_offset) VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, '[]', ?11)",
        )?;
        let mut seg = tx.prepare(
            "INSERT INTO segments (object_key, class, created_ms, durable_end, sealed) \
             VALUES (?1, ?2, ?3, ?4, 1)",
        )?;
        let class = streamvault::store::keys::retention_class(RETENTION_HOURS);
        // The key of the segment the current rows go into.
        let mut segment = String::new();
        for seq in 0..rows {
            let ts = t0 + seq as i64 * FRAGMENT_MS;
            let (key, offset) = if segments {
                let (nr, k) = (seq / PER_SEGMENT, seq % PER_SEGMENT);
                if k == 0 {
                    segment = streamvault::store::keys::segment_key(class, ts, nr).to_string();
                    let end = (rows - seq).min(PER_SEGMENT) as i64 * SEALED_SIZE;
                    seg.execute(params![segment, class, ts, end])?;
                    if objects {
                        // Sparse: the right length, no disk space.
                        let path = data_dir.join("objects").join(&segment);
                        std::fs::create_dir_all(path.parent().expect("segment dir"))?;
                        std::fs::File::create(&path)?.set_len(end as u64)?;
                    }
                }
                (segment.clone(), Some(k as i64 * SEALED_SIZE))
            } else {
                let key = streamvault::store::keys::fragment_key(&id, seq).to_string();
                (key, None)
            };
            st.execute(params![
                id,
                seq as i64,
                ts,
                ts + 40,
                FRAGMENT_MS,
                seq as i64 * FRAGMENT_MS,
                250_000i64,
                key,
                SEALED_SIZE,
                hash,
                offset
            ])?;
        }
        tx.execute(
            "UPDATE streams SET seq_reserved = ?2 WHERE stream_id = ?1",
            params![id, rows as i64],
        )?;
    }
    tx.commit()?;
    c.execute_batch("ANALYZE; PRAGMA wal_checkpoint(TRUNCATE);")?;
    if objects && !segments {
        let dir = data_dir
            .join("objects")
            .join("streams")
            .join(&id)
            .join("fragments");
        std::fs::create_dir_all(&dir)?;
        let old = std::time::SystemTime::now() - Duration::from_secs(7200);
        for seq in 0..rows {
            let f = std::fs::File::create(dir.join(format!("{seq:020}.mkv.sv")))?;
            f.set_modified(old)?;
        }
    }
    Ok((id, t0))
}

/// Creates the stream through the API of a running server.
pub async fn create(target: &Target, name: &str) -> anyhow::Result<()> {
    let mut c = JsonClient::connect(target).await?;
    create_stream(&mut c, name, RETENTION_HOURS as u32).await
}

/// Result of the ListFragments measurement.
pub struct ListResult {
    pub calls: usize,
    pub fragments: u64,
    pub latency: Samples,
    pub wall: Duration,
}

/// `windows` random 1-hour windows, each read completely (MaxResults 1000: two pages
/// for the 1,801 fragments of an hour), every call timed on one keep-alive connection.
pub async fn list_windows(
    target: &Target,
    name: &str,
    t0: i64,
    rows: u64,
    windows: usize,
) -> anyhow::Result<ListResult> {
    let mut c = JsonClient::connect(target).await?;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let span = rows as i64 * FRAGMENT_MS - 3_600_000;
    let mut r = ListResult {
        calls: 0,
        fragments: 0,
        latency: Samples::default(),
        wall: Duration::ZERO,
    };
    let started = Instant::now();
    for _ in 0..windows {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let start = t0 + (rng % span as u64) as i64;
        let mut body = serde_json::json!({
            "StreamName": name, "MaxResults": 1000,
            "FragmentSelector": {"FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": {
                "StartTimestamp": start as f64 / 1000.0, "EndTimestamp": (start + 3_600_000) as f64 / 1000.0}}
        });
        loop {
            let t = Instant::now();
            let (status, text) = c.post("/listFragments", &body.to_string()).await?;
            r.latency.push(t.elapsed());
            r.calls += 1;
            anyhow::ensure!(status == 200, "ListFragments: {status} {text}");
            let v: serde_json::Value = serde_json::from_str(&text)?;
            r.fragments += v["Fragments"].as_array().map_or(0, |a| a.len() as u64);
            match v["NextToken"].as_str() {
                Some(tok) => {
                    body = serde_json::json!({"StreamName": name, "NextToken": tok, "MaxResults": 1000})
                }
                None => break,
            }
        }
    }
    r.wall = started.elapsed();
    Ok(r)
}
