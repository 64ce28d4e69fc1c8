//! Tests of the SQLite index: the conformance suite (`conformance.rs`) run against it,
//! and what only SQLite has: query plans, transactions left open, the crypto-shred of
//! the file and its WAL.

use async_trait::async_trait;

use super::*;
use crate::index::conformance::{A, B, Backend, frag, new_stream};

/// A fresh index file per test, reopened at the same path.
struct SqliteBackend {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn open(&self) -> Arc<dyn Index> {
        Arc::new(SqliteIndex::open(&self.path).unwrap())
    }
}

async fn sqlite_backend(_test: &str) -> Option<SqliteBackend> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i.sqlite3");
    Some(SqliteBackend { _dir: dir, path })
}

crate::index::conformance::run_conformance_suite!(sqlite_backend);

#[tokio::test]
async fn an_error_inside_a_transaction_leaves_none_open() {
    let dir = tempfile::tempdir().unwrap();
    let raw = SqliteIndex::open(&dir.path().join("i.sqlite3")).unwrap();
    raw.create_stream(new_stream("cam1", A), 10).await.unwrap();
    let mut f = frag(A, 1, 1000);
    f.content_hash = "aa".into();
    raw.insert_fragment_unless_duplicate(f.clone(), 0)
        .await
        .unwrap();
    f.content_hash = "bb".into();
    assert!(matches!(
        raw.insert_fragment_unless_duplicate(f, 0).await,
        Err(IndexError::DuplicateFragment { seq: 1, .. })
    ));
    assert!(raw.writer.lock().unwrap().is_autocommit());
}

/// The `EXPLAIN QUERY PLAN` lines of `sql` (its parameters bound to NULL: the plan
/// does not read them).
fn query_plan(c: &Connection, sql: &str) -> Vec<String> {
    let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let nulls = std::iter::repeat_n(rusqlite::types::Null, st.parameter_count());
    st.query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn hot_statements_walk_an_index_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let idx = SqliteIndex::open(&dir.path().join("i.sqlite3")).unwrap();
    idx.create_stream(new_stream("cam1", A), 10).await.unwrap();
    idx.reserve_fragment_seqs(A, 2000).await.unwrap();
    for seq in 0..2000u64 {
        idx.insert_fragment(frag(A, seq, seq as i64 * 2000))
            .await
            .unwrap();
    }
    let hot = [
        TIMES_IN_PRODUCER_RANGE,
        TIMES_IN_SERVER_RANGE,
        FIND_BY_CONTENT,
        GET_FRAGMENT,
        FRAGMENTS_AFTER,
        FRAGMENTS_IN_PRODUCER_RANGE,
        FRAGMENTS_IN_SERVER_RANGE,
        LAST_FRAGMENT,
    ];
    for analyzed in [false, true] {
        let c = idx.reader.lock().unwrap();
        if analyzed {
            c.execute_batch("ANALYZE").unwrap();
        }
        for sql in hot {
            let plan = query_plan(&c, sql);
            let fragments = plan.iter().find(|l| l.contains("fragments")).unwrap();
            assert!(
                fragments.starts_with("SEARCH fragments USING"),
                "{sql}: {plan:?}"
            );
            // The content lookup sorts only the rows equal on all three index columns.
            assert!(
                sql == FIND_BY_CONTENT || !plan.iter().any(|l| l.contains("TEMP B-TREE")),
                "{sql}: {plan:?}"
            );
        }
        let plan = |sql: &str| query_plan(&c, sql).join("; ");
        assert!(plan(FRAGMENTS_IN_SERVER_RANGE).contains("fragments_by_server"));
        assert!(plan(TIMES_IN_SERVER_RANGE).contains("fragments_by_server"));
        assert!(plan(FRAGMENTS_IN_PRODUCER_RANGE).contains("fragments_by_producer"));
        assert!(plan(FIND_BY_CONTENT).contains(
            "fragments_by_content (stream_id=? AND producer_ts_ms=? AND content_hash=?)"
        ));
    }
}

/// The files of the index at `p` (database, `-wal`, `-shm`) that hold any 16-byte
/// window of `needle`.
fn files_holding(p: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let dir = p.parent().unwrap();
    let base = p.file_name().unwrap().to_str().unwrap();
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if !name.starts_with(base) {
            continue;
        }
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        if needle
            .windows(16)
            .any(|w| bytes.windows(16).any(|b| b == w))
        {
            found.push(name);
        }
    }
    found
}

/// A wrapped key no other byte run of the index resembles.
fn distinctive_key(seed: u8) -> Vec<u8> {
    (0..60u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(seed) ^ 0xa5)
        .collect()
}

fn stream_with_key(name: &str, id: &str, key: &[u8]) -> NewStream {
    NewStream {
        wrapped_key: key.to_vec(),
        ..new_stream(name, id)
    }
}

#[tokio::test]
async fn delete_stream_leaves_no_copy_of_the_wrapped_key_in_the_file_or_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("i.sqlite3");
    let idx = SqliteIndex::open(&p).unwrap();
    let (ka, kb) = (distinctive_key(1), distinctive_key(2));
    // A: its row rewritten (a wider retention moves the cell, leaving the old one in the
    // page's free space), then checkpointed into the database file.
    idx.create_stream(stream_with_key("cam-a", A, &ka), 10)
        .await
        .unwrap();
    idx.update_stream(A, None, StreamUpdate::Retention { hours: 100_000 }, "v2")
        .await
        .unwrap();
    idx.close();
    // B: only in the WAL.
    idx.create_stream(stream_with_key("cam-b", B, &kb), 10)
        .await
        .unwrap();
    assert!(
        !files_holding(&p, &ka).is_empty(),
        "the scan finds a live key"
    );
    assert!(
        !files_holding(&p, &kb).is_empty(),
        "the scan finds a live key"
    );

    idx.delete_stream(A, None, 5).await.unwrap();
    idx.delete_stream(B, None, 5).await.unwrap();
    assert_eq!(files_holding(&p, &ka), Vec::<String>::new());
    assert_eq!(files_holding(&p, &kb), Vec::<String>::new());
    assert_eq!(idx.stream_count().await.unwrap(), 0);
}

#[tokio::test]
async fn a_reader_holding_the_wal_delays_the_shred_checkpoint_until_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("i.sqlite3");
    let idx = SqliteIndex::open(&p).unwrap();
    let ka = distinctive_key(3);
    idx.create_stream(stream_with_key("cam-a", A, &ka), 10)
        .await
        .unwrap();
    // Another connection (say `streamvault check`) reads in a transaction that began
    // before the delete: the WAL cannot be reset under it.
    let other = Connection::open(&p).unwrap();
    other.execute_batch("BEGIN").unwrap();
    let n: i64 = other
        .query_row("SELECT COUNT(*) FROM streams", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    let started = std::time::Instant::now();
    idx.delete_stream(A, None, 5).await.unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "DeleteStream does not wait for the reader"
    );
    assert!(
        files_holding(&p, &ka).contains(&"i.sqlite3-wal".to_owned()),
        "the reader still pins the WAL"
    );
    other.execute_batch("COMMIT").unwrap();
    drop(other);
    // The background retry truncates the WAL soon after the reader ends.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !files_holding(&p, &ka).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "still on disk: {:?}",
            files_holding(&p, &ka)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
