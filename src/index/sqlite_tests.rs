//! Tests of the SQLite index: persistence across reopen, version checks, fragment
//! queries, stream listing.

use super::*;

fn new_stream(name: &str, id: &str) -> NewStream {
    NewStream {
        stream_id: id.to_owned(),
        name: StreamName::parse(name).unwrap(),
        device_name: None,
        media_type: Some("video/h264".into()),
        kms_key_id: "k".into(),
        version: "v1".into(),
        creation_ms: 1000,
        retention_hours: 24,
        wrapped_key: vec![1; 60],
        tags: BTreeMap::from([("a".into(), "b".into())]),
    }
}

fn frag(id: &str, seq: u64, ts: i64) -> FragmentRecord {
    FragmentRecord {
        stream_id: id.into(),
        seq,
        session_id: 1,
        producer_ts_ms: ts,
        server_ts_ms: ts + 5,
        duration_ms: 1000,
        producer_timecode: ts,
        size: 100,
        object_key: format!("k/{seq}"),
        object_size: 140,
        content_hash: "00".into(),
        metadata: vec![("n".into(), "v".into())],
        object_offset: None,
    }
}

const A: &str = "0000000000000000000000000000000a";

#[tokio::test]
async fn streams_survive_reopen_and_versions_guard_updates() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("i.sqlite3");
    {
        let idx = SqliteIndex::open(&p).unwrap();
        idx.create_stream(new_stream("cam1", A), 10).await.unwrap();
        let e = idx
            .create_stream(new_stream("cam1", A), 10)
            .await
            .unwrap_err();
        assert!(matches!(e, IndexError::StreamExists(_)));
        let e = idx
            .update_stream(
                A,
                Some("stale"),
                StreamUpdate::Retention { hours: 48 },
                "v2",
            )
            .await
            .unwrap_err();
        assert!(matches!(e, IndexError::VersionMismatch { .. }));
        idx.update_stream(A, Some("v1"), StreamUpdate::Retention { hours: 48 }, "v2")
            .await
            .unwrap();
        idx.close();
    }
    let idx = SqliteIndex::open(&p).unwrap();
    let s = idx
        .get_stream(&StreamName::parse("cam1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((s.retention_hours, s.version.as_str()), (48, "v2"));
    assert_eq!(s.tags.get("a").map(String::as_str), Some("b"));
}

#[tokio::test]
async fn fragment_queries() {
    let dir = tempfile::tempdir().unwrap();
    let idx = SqliteIndex::open(&dir.path().join("i.sqlite3")).unwrap();
    idx.create_stream(new_stream("cam1", A), 10).await.unwrap();
    assert_eq!(idx.reserve_fragment_seqs(A, 100).await.unwrap(), 0);
    assert_eq!(idx.reserve_fragment_seqs(A, 100).await.unwrap(), 100);
    for (seq, ts) in [(1, 0), (2, 2000), (3, 4000), (4, 6000)] {
        idx.insert_fragment(frag(A, seq, ts)).await.unwrap();
    }
    assert!(matches!(
        idx.insert_fragment(frag(A, 1, 0)).await,
        Err(IndexError::DuplicateFragment { .. })
    ));
    let r = idx
        .fragments_in_range(A, TimestampKind::Producer, 1000, 4000, None, 10)
        .await
        .unwrap();
    assert_eq!(r.iter().map(|f| f.seq).collect::<Vec<_>>(), vec![2, 3]);
    let page = idx
        .fragments_in_range(A, TimestampKind::Server, 0, 10_000, Some((2005, 2)), 10)
        .await
        .unwrap();
    assert_eq!(page.iter().map(|f| f.seq).collect::<Vec<_>>(), vec![3, 4]);
    assert_eq!(idx.fragments_after(A, Some(2), 1).await.unwrap()[0].seq, 3);
    assert_eq!(idx.last_fragment(A).await.unwrap().unwrap().seq, 4);
    assert_eq!(
        idx.get_fragment(A, 3).await.unwrap().unwrap().metadata,
        vec![("n".into(), "v".into())]
    );
    idx.delete_stream(A, None, 5).await.unwrap();
    assert!(idx.get_fragment(A, 3).await.unwrap().is_none());
    let g = idx.list_garbage(10).await.unwrap();
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].stream_id, A);
    idx.drop_garbage(g[0].id).await.unwrap();
    assert!(idx.list_garbage(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn retention_view_hides_expired_fragments_from_every_read() {
    let dir = tempfile::tempdir().unwrap();
    let raw = SqliteIndex::open(&dir.path().join("i.sqlite3")).unwrap();
    let clock = crate::clock::ManualClock::new(0);
    let view = raw.retention_view(Arc::new(clock.clone()));
    raw.create_stream(new_stream("cam1", A), 10).await.unwrap(); // 24 h
    raw.reserve_fragment_seqs(A, 64).await.unwrap();
    const H: i64 = 3_600_000;
    // Server timestamps (ts + 5) at hours 0..48.
    for h in 0..48u64 {
        raw.insert_fragment(frag(A, h, h as i64 * H - 5))
            .await
            .unwrap();
    }
    clock.set_ms(48 * H);
    // Cutoff 24 h: seqs 24..47 visible.
    let all = view.fragments_after(A, None, 1000).await.unwrap();
    assert_eq!(all.first().map(|f| f.seq), Some(24));
    assert_eq!(all.len(), 24);
    assert!(view.get_fragment(A, 23).await.unwrap().is_none());
    assert!(view.get_fragment(A, 24).await.unwrap().is_some());
    let r = view
        .fragments_in_range(A, TimestampKind::Producer, 0, i64::MAX, None, 1000)
        .await
        .unwrap();
    assert_eq!(r.len(), 24);
    assert!(r.iter().all(|f| f.seq >= 24));
    let r = view
        .fragments_in_range(A, TimestampKind::Server, 0, 30 * H, None, 1000)
        .await
        .unwrap();
    assert_eq!(
        r.iter().map(|f| f.seq).collect::<Vec<_>>(),
        (24..=30).collect::<Vec<_>>()
    );
    assert_eq!(view.last_fragment(A).await.unwrap().unwrap().seq, 47);
    // The raw index sees everything.
    assert_eq!(raw.fragments_after(A, None, 1000).await.unwrap().len(), 48);
    // Everything expired: nothing at all.
    clock.set_ms(100 * H);
    assert!(view.last_fragment(A).await.unwrap().is_none());
    assert!(view.fragments_after(A, None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn expire_trim_and_stats_follow_the_delete_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let idx = SqliteIndex::open(&dir.path().join("i.sqlite3")).unwrap();
    idx.create_stream(new_stream("cam1", A), 10).await.unwrap(); // 24 h
    idx.reserve_fragment_seqs(A, 64).await.unwrap();
    const H: i64 = 3_600_000;
    for h in 0..48u64 {
        let mut f = frag(A, h, h as i64 * H - 5);
        f.session_id = h / 10;
        f.object_key = format!("obj/{h}");
        idx.insert_fragment(f).await.unwrap();
    }
    for sid in 0..5u64 {
        idx.insert_session(SessionRecord {
            stream_id: A.into(),
            session_id: sid,
            created_ms: sid as i64 * 10 * H,
            header_sealed: vec![1],
        })
        .await
        .unwrap();
    }
    let st = idx.stream_stats().await.unwrap();
    assert_eq!(st[0].fragments, 48);
    assert_eq!(st[0].bytes, 48 * 140);
    assert_eq!((st[0].max_seq, st[0].seq_reserved), (Some(47), 64));
    // Minimum age protects hours >= 10 even though 0..23 are expired.
    let g = idx
        .expire_fragments(48 * H, 10 * H, 1000)
        .await
        .unwrap()
        .garbage;
    assert_eq!(g.len(), 10);
    assert_eq!(g[0].object_key.as_deref(), Some("obj/0"));
    assert_eq!(idx.list_garbage(100).await.unwrap().len(), 10);
    let g = idx
        .expire_fragments(48 * H, 48 * H, 5)
        .await
        .unwrap()
        .garbage;
    assert_eq!(g.len(), 5, "limit");
    let g = idx
        .expire_fragments(48 * H, 48 * H, 1000)
        .await
        .unwrap()
        .garbage;
    assert_eq!(g.len(), 9);
    let left = idx.fragments_after(A, None, 1000).await.unwrap();
    assert_eq!(left.first().unwrap().seq, 24);
    // Sessions 0 and 1 (all their fragments gone, created before the cutoff) went;
    // session 2 still has fragments 24..29.
    assert!(idx.get_session(A, 0).await.unwrap().is_none());
    assert!(idx.get_session(A, 1).await.unwrap().is_none());
    assert!(idx.get_session(A, 2).await.unwrap().is_some());
    // Size cap: 10 fragments' worth, oldest first, protected ones kept.
    let g = idx
        .trim_stream(A, 10 * 140, 40 * H, 1000, 48 * H)
        .await
        .unwrap()
        .garbage;
    assert_eq!(g.len(), 14, "24 left, down to 10 (seqs 24..37)");
    let g = idx
        .trim_stream(A, 140, 40 * H, 1000, 48 * H)
        .await
        .unwrap()
        .garbage;
    assert_eq!(
        g.len(),
        2,
        "38 and 39; 40.. are younger than the minimum age"
    );
    assert_eq!(idx.list_garbage(1000).await.unwrap().len(), 40);
}

#[tokio::test]
async fn dedupe_lookup_and_atomic_insert() {
    let dir = tempfile::tempdir().unwrap();
    let idx = SqliteIndex::open(&dir.path().join("i.sqlite3")).unwrap();
    idx.create_stream(new_stream("cam1", A), 10).await.unwrap();
    let mut f = frag(A, 1, 1000);
    f.content_hash = "aa".into();
    assert!(
        idx.insert_fragment_unless_duplicate(f.clone(), 0)
            .await
            .unwrap()
            .is_none()
    );
    let found = idx
        .find_fragment_by_content(A, 1000, "aa", 0)
        .await
        .unwrap();
    assert_eq!(found.map(|f| f.seq), Some(1));
    // Outside the window, or other bytes: not a duplicate.
    assert!(
        idx.find_fragment_by_content(A, 1000, "aa", 2000)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        idx.find_fragment_by_content(A, 1000, "bb", 0)
            .await
            .unwrap()
            .is_none()
    );
    let mut again = f.clone();
    again.seq = 2;
    let dup = idx
        .insert_fragment_unless_duplicate(again.clone(), 0)
        .await
        .unwrap();
    assert_eq!(dup.map(|f| f.seq), Some(1));
    assert!(idx.get_fragment(A, 2).await.unwrap().is_none());
    again.content_hash = "bb".into();
    assert!(
        idx.insert_fragment_unless_duplicate(again, 0)
            .await
            .unwrap()
            .is_none()
    );
    assert!(idx.get_fragment(A, 2).await.unwrap().is_some());
    // A vanished stream is reported as such.
    let mut orphan = frag("0000000000000000000000000000000b", 1, 0);
    orphan.content_hash = "cc".into();
    assert!(matches!(
        idx.insert_fragment(orphan).await,
        Err(IndexError::StreamNotFound(_))
    ));
}

#[tokio::test]
async fn stream_listing_by_prefix_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let idx = SqliteIndex::open(&dir.path().join("i.sqlite3")).unwrap();
    for (i, n) in ["cam-a", "cam-b", "door", "cam-c"].iter().enumerate() {
        idx.create_stream(new_stream(n, &format!("{i:032x}")), 10)
            .await
            .unwrap();
    }
    let l = idx.list_streams(Some("cam-"), None, 2).await.unwrap();
    assert_eq!(
        l.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        vec!["cam-a", "cam-b"]
    );
    let l = idx
        .list_streams(Some("cam-"), Some("cam-b"), 2)
        .await
        .unwrap();
    assert_eq!(
        l.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        vec!["cam-c"]
    );
    assert!(matches!(
        idx.create_stream(new_stream("x", &format!("{:032x}", 99)), 4)
            .await,
        Err(IndexError::StreamLimit(4))
    ));
}

#[tokio::test]
async fn stream_configs_persist_and_go_with_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i.db");
    let id = "0123456789abcdef0123456789abcdef";
    {
        let ix = SqliteIndex::open(&path).unwrap();
        ix.create_stream(new_stream("cam", id), 10).await.unwrap();
        assert_eq!(ix.get_stream_config(id, "k").await.unwrap(), None);
        ix.put_stream_config(id, "k", Some("{\"a\":1}".into()))
            .await
            .unwrap();
        ix.put_stream_config(id, "k", Some("{\"a\":2}".into()))
            .await
            .unwrap();
        assert!(matches!(
            ix.put_stream_config("ffffffffffffffffffffffffffffffff", "k", Some("x".into()))
                .await,
            Err(IndexError::StreamNotFound(_))
        ));
        ix.close();
    }
    let ix = SqliteIndex::open(&path).unwrap();
    assert_eq!(
        ix.get_stream_config(id, "k").await.unwrap().as_deref(),
        Some("{\"a\":2}")
    );
    ix.put_stream_config(id, "k", None).await.unwrap();
    assert_eq!(ix.get_stream_config(id, "k").await.unwrap(), None);
    ix.put_stream_config(id, "k", Some("x".into()))
        .await
        .unwrap();
    ix.delete_stream(id, None, 1).await.unwrap();
    let n: i64 = ix
        .reader
        .lock()
        .unwrap()
        .query_row("SELECT COUNT(*) FROM stream_configs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
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

#[tokio::test]
async fn range_pages_continue_after_ties_and_stop_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let idx = SqliteIndex::open(&dir.path().join("i.sqlite3")).unwrap();
    idx.create_stream(new_stream("cam1", A), 10).await.unwrap();
    idx.reserve_fragment_seqs(A, 100).await.unwrap();
    // Three fragments per producer timestamp: pages must split inside a tie.
    for seq in 0..30u64 {
        let mut f = frag(A, seq, (seq / 3) as i64 * 1000);
        f.metadata = Vec::new();
        idx.insert_fragment(f).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = idx
            .fragments_in_range(A, TimestampKind::Producer, 1000, 8000, after, 4)
            .await
            .unwrap();
        assert!(page.len() <= 4);
        let page_of_4 = RangePage {
            kind: TimestampKind::Producer,
            start_ms: 1000,
            end_ms: 8000,
            after,
            limit: 4,
        };
        let times = idx.fragment_times_in_range(A, page_of_4).await.unwrap();
        assert_eq!(
            times,
            page.iter().map(FragmentTimes::from).collect::<Vec<_>>()
        );
        let Some(last) = page.last() else { break };
        after = Some((last.producer_ts_ms, last.seq));
        seen.extend(page.iter().map(|f| f.seq));
        assert!(page.iter().all(|f| f.metadata.is_empty()));
    }
    assert_eq!(seen, (3..27).collect::<Vec<_>>());
    let after5 = idx.fragments_after(A, Some(5), 7).await.unwrap();
    assert_eq!(
        after5.iter().map(|f| f.seq).collect::<Vec<_>>(),
        (6..13).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn dedupe_respects_the_retention_view_and_rolls_back_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let raw = SqliteIndex::open(&dir.path().join("i.sqlite3")).unwrap();
    let clock = crate::clock::ManualClock::new(1000);
    let view = raw.retention_view(Arc::new(clock.clone()));
    raw.create_stream(new_stream("cam1", A), 10).await.unwrap(); // 24 h
    let mut f = frag(A, 1, 1000);
    f.content_hash = "aa".into();
    assert!(
        view.insert_fragment_unless_duplicate(f.clone(), 0)
            .await
            .unwrap()
            .is_none()
    );
    let mut again = f.clone();
    again.seq = 2;
    // A primary-key clash inside the transaction: an error, and nothing left open.
    let mut clash = f.clone();
    clash.content_hash = "bb".into();
    assert!(matches!(
        view.insert_fragment_unless_duplicate(clash, 0).await,
        Err(IndexError::DuplicateFragment { seq: 1, .. })
    ));
    assert!(raw.writer.lock().unwrap().is_autocommit());
    assert_eq!(
        view.find_fragment_by_content(A, 1000, "aa", 0)
            .await
            .unwrap()
            .map(|f| f.seq),
        Some(1)
    );
    // Once the original has expired from the view it is no duplicate; the raw index
    // still finds it.
    clock.set_ms(25 * 3_600_000 + 1006);
    assert!(
        view.find_fragment_by_content(A, 1000, "aa", 0)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        raw.find_fragment_by_content(A, 1000, "aa", 0)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        view.insert_fragment_unless_duplicate(again, 0)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(raw.fragments_after(A, None, 10).await.unwrap().len(), 2);
}

const B: &str = "0000000000000000000000000000000b";

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

fn in_segment(seq: u64, ts: i64, key: &str, offset: u64) -> BatchRow {
    let mut row = frag(A, seq, ts);
    row.object_key = key.into();
    row.object_offset = Some(offset);
    BatchRow {
        row,
        dedupe_since_ms: Some(0),
    }
}

fn segment(key: &str, end: u64, sealed: bool) -> SegmentRecord {
    SegmentRecord {
        key: key.into(),
        class: "r1d".into(),
        created_ms: 0,
        durable_end: end,
        sealed,
    }
}

#[tokio::test]
async fn batches_commit_once_dedupe_inside_and_dead_segments_become_garbage() {
    const H: i64 = 3_600_000;
    const S1: &str = "segments/r1d/0000000000001-0000000000000001.seg";
    const S2: &str = "segments/r1d/0000000000002-0000000000000002.seg";
    let dir = tempfile::tempdir().unwrap();
    let idx = SqliteIndex::open(&dir.path().join("i.sqlite3")).unwrap();
    idx.create_stream(new_stream("cam1", A), 10).await.unwrap();
    idx.reserve_fragment_seqs(A, 100).await.unwrap();
    // One batch: two rows, the second a re-send of the first (same ts and hash), and a
    // row of a stream that does not exist.
    let mut gone = in_segment(3, 10, S1, 280);
    gone.row.stream_id = "0000000000000000000000000000000b".into();
    let out = idx
        .commit_batch(
            vec![segment(S1, 420, false)],
            vec![in_segment(1, 10, S1, 0), in_segment(2, 10, S1, 140), gone],
        )
        .await
        .unwrap();
    assert_eq!(out[0], RowOutcome::Inserted);
    assert!(
        matches!(&out[1], RowOutcome::Duplicate(f) if f.seq == 1),
        "{out:?}"
    );
    assert_eq!(out[2], RowOutcome::StreamGone);
    let seg = idx.get_segment(S1).await.unwrap().unwrap();
    assert_eq!((seg.durable_end, seg.sealed), (420, false));
    let got = idx.get_fragment(A, 1).await.unwrap().unwrap();
    assert_eq!((got.object_key.as_str(), got.object_offset), (S1, Some(0)));
    // A later batch raises the durable end; another segment gets row 4.
    idx.commit_batch(
        vec![segment(S1, 560, false), segment(S2, 140, true)],
        vec![in_segment(4, 20, S2, 0), in_segment(5, 30, S1, 420)],
    )
    .await
    .unwrap();
    assert_eq!(idx.get_segment(S1).await.unwrap().unwrap().durable_end, 560);
    // Row 4 expires: its sealed segment dies with it; S1 is open, so it stays even once
    // its rows are gone, until sealed (then it is garbage at once).
    let r = idx.expire_fragments(30 * H, 30 * H, 100).await.unwrap();
    assert_eq!(r.rows, 3);
    let keys: Vec<_> = r
        .garbage
        .iter()
        .filter_map(|g| g.object_key.clone())
        .collect();
    assert_eq!(keys, vec![S2.to_owned()]);
    assert!(idx.get_segment(S2).await.unwrap().is_none());
    let g = idx.seal_segment(S1, 30 * H).await.unwrap().unwrap();
    assert_eq!(g.len(), 1);
    assert!(idx.segments().await.unwrap().is_empty());
    assert_eq!(
        idx.seal_segment("segments/r1d/none.seg", 0).await.unwrap(),
        None
    );
    // Startup: open segments are sealed and returned; one with rows stays.
    idx.commit_batch(
        vec![segment(S2, 140, false)],
        vec![in_segment(6, 31 * H, S2, 0)],
    )
    .await
    .unwrap();
    let (open, garbage) = idx.seal_open_segments(31 * H).await.unwrap();
    assert_eq!(open.len(), 1);
    assert!(garbage.is_empty());
    assert!(idx.get_segment(S2).await.unwrap().unwrap().sealed);
    // DeleteStream: its segments left without rows become garbage in the same transaction.
    idx.delete_stream(A, None, 32 * H).await.unwrap();
    let g = idx.list_garbage(10).await.unwrap();
    assert!(
        g.iter().any(|g| g.object_key.as_deref() == Some(S2)),
        "{g:?}"
    );
}
