//! The index conformance suite: every backend-independent test of [`Index`], written
//! once against `&dyn Index` and run against each backend by [`run_conformance_suite!`]
//! (in `sqlite_tests.rs` and `postgres_tests.rs`). A backend supplies a [`Backend`] that
//! opens its index, again after `close` on the same data (persistence across reopen).
//! Backend-specific tests (SQLite query plans and WAL shredding, PostgreSQL migrations
//! and URL handling) stay beside their backend.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::*;
use crate::clock::ManualClock;

/// How a backend's tests open the index under test.
#[async_trait]
pub(super) trait Backend: Send + Sync {
    /// Opens (creating on first use) the index; a second call after [`Index::close`]
    /// opens the same data.
    async fn open(&self) -> Arc<dyn Index>;
}

/// Defines one `#[tokio::test]` per conformance case in the calling module, each getting
/// its backend from `$backend(test_name).await` (an `Option<impl Backend>`: `None` skips
/// the case, as when PostgreSQL is not available).
macro_rules! run_conformance_suite {
    ($backend:path) => {
        $crate::index::conformance::run_conformance_suite!(@cases $backend;
            streams_survive_reopen_and_versions_guard_updates,
            fragment_queries,
            retention_view_hides_expired_fragments_from_every_read,
            expire_trim_and_stats_follow_the_delete_protocol,
            dedupe_lookup_and_atomic_insert,
            stream_listing_by_prefix_and_limit,
            stream_configs_persist_and_go_with_the_stream,
            range_pages_continue_after_ties_and_stop_at_the_limit,
            dedupe_respects_the_retention_view_and_rolls_back_on_error,
            batches_commit_once_dedupe_inside_and_dead_segments_become_garbage,
            missing_streams_and_stale_versions_are_reported,
            metadata_tags_and_config_updates_set_a_new_version,
            sessions_scans_and_garbage_pages,
            batch_outcomes_for_taken_numbers_windows_and_repeated_segments,
            trim_and_expire_retire_segment_rows_and_spare_open_segments,
            concurrent_writers_keep_the_single_writer_rules,
        );
    };
    (@cases $backend:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                if let Some(b) = $backend(stringify!($case)).await {
                    $crate::index::conformance::$case(&b).await;
                }
            }
        )*
    };
}
pub(super) use run_conformance_suite;

#[path = "conformance_batches.rs"]
mod batches;
pub(super) use batches::*;

pub(super) fn new_stream(name: &str, id: &str) -> NewStream {
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

pub(super) fn frag(id: &str, seq: u64, ts: i64) -> FragmentRecord {
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

pub(super) const A: &str = "0000000000000000000000000000000a";
pub(super) const B: &str = "0000000000000000000000000000000b";
const H: i64 = 3_600_000;

fn seqs(v: &[FragmentRecord]) -> Vec<u64> {
    v.iter().map(|f| f.seq).collect()
}

pub(super) async fn streams_survive_reopen_and_versions_guard_updates(b: &dyn Backend) {
    {
        let idx = b.open().await;
        idx.create_stream(new_stream("cam1", A), 10).await.unwrap();
        let e = idx
            .create_stream(new_stream("cam1", B), 10)
            .await
            .unwrap_err();
        assert!(matches!(e, IndexError::StreamExists(_)), "{e}");
        let e = idx
            .update_stream(
                A,
                Some("stale"),
                StreamUpdate::Retention { hours: 48 },
                "v2",
            )
            .await
            .unwrap_err();
        assert!(matches!(e, IndexError::VersionMismatch { .. }), "{e}");
        idx.update_stream(A, Some("v1"), StreamUpdate::Retention { hours: 48 }, "v2")
            .await
            .unwrap();
        idx.close().await;
    }
    let idx = b.open().await;
    let s = idx
        .get_stream(&StreamName::parse("cam1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((s.retention_hours, s.version.as_str()), (48, "v2"));
    assert_eq!(s.tags.get("a").map(String::as_str), Some("b"));
    assert_eq!(s.wrapped_key, vec![1; 60]);
    assert_eq!(idx.get_stream_by_id(A).await.unwrap(), Some(s));
    idx.close().await;
}

pub(super) async fn fragment_queries(b: &dyn Backend) {
    let idx = b.open().await;
    idx.create_stream(new_stream("cam1", A), 10).await.unwrap();
    assert_eq!(idx.reserve_fragment_seqs(A, 100).await.unwrap(), 0);
    assert_eq!(idx.reserve_fragment_seqs(A, 100).await.unwrap(), 100);
    for (seq, ts) in [(1, 0), (2, 2000), (3, 4000), (4, 6000)] {
        idx.insert_fragment(frag(A, seq, ts)).await.unwrap();
    }
    assert!(matches!(
        idx.insert_fragment(frag(A, 1, 0)).await,
        Err(IndexError::DuplicateFragment { seq: 1, .. })
    ));
    let r = idx
        .fragments_in_range(A, TimestampKind::Producer, 1000, 4000, None, 10)
        .await
        .unwrap();
    assert_eq!(seqs(&r), vec![2, 3]);
    let page = idx
        .fragments_in_range(A, TimestampKind::Server, 0, 10_000, Some((2005, 2)), 10)
        .await
        .unwrap();
    assert_eq!(seqs(&page), vec![3, 4]);
    assert_eq!(idx.fragments_after(A, Some(2), 1).await.unwrap()[0].seq, 3);
    assert_eq!(idx.last_fragment(A).await.unwrap().unwrap().seq, 4);
    assert_eq!(
        idx.get_fragment(A, 3).await.unwrap().unwrap(),
        frag(A, 3, 4000)
    );
    idx.delete_stream(A, None, 5).await.unwrap();
    assert!(idx.get_fragment(A, 3).await.unwrap().is_none());
    let g = idx.list_garbage(10).await.unwrap();
    assert_eq!(g.len(), 1);
    assert_eq!(
        (
            g[0].stream_id.as_str(),
            g[0].object_key.as_deref(),
            g[0].created_ms
        ),
        (A, None, 5)
    );
    idx.drop_garbage(g[0].id).await.unwrap();
    assert!(idx.list_garbage(10).await.unwrap().is_empty());
}

pub(super) async fn retention_view_hides_expired_fragments_from_every_read(b: &dyn Backend) {
    let raw = b.open().await;
    let clock = ManualClock::new(0);
    let view = raw.retention_view(Arc::new(clock.clone()));
    raw.create_stream(new_stream("cam1", A), 10).await.unwrap(); // 24 h
    raw.reserve_fragment_seqs(A, 64).await.unwrap();
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
    assert_eq!(seqs(&r), (24..=30).collect::<Vec<_>>());
    let page = RangePage {
        kind: TimestampKind::Server,
        start_ms: 0,
        end_ms: 30 * H,
        after: None,
        limit: 1000,
    };
    assert_eq!(
        view.fragment_times_in_range(A, page).await.unwrap().len(),
        7
    );
    assert_eq!(view.last_fragment(A).await.unwrap().unwrap().seq, 47);
    // The raw index sees everything.
    assert_eq!(raw.fragments_after(A, None, 1000).await.unwrap().len(), 48);
    // Everything expired: nothing at all.
    clock.set_ms(100 * H);
    assert!(view.last_fragment(A).await.unwrap().is_none());
    assert!(view.fragments_after(A, None, 10).await.unwrap().is_empty());
    // A longer retention shows them again (reads apply the current retention).
    raw.update_stream(A, None, StreamUpdate::Retention { hours: 96 }, "v2")
        .await
        .unwrap();
    assert_eq!(view.fragments_after(A, None, 1000).await.unwrap().len(), 44);
}

pub(super) async fn dedupe_lookup_and_atomic_insert(b: &dyn Backend) {
    let idx = b.open().await;
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
    assert_eq!(dup, Some(f.clone()));
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
    let mut orphan = frag(B, 1, 0);
    orphan.content_hash = "cc".into();
    assert!(matches!(
        idx.insert_fragment(orphan.clone()).await,
        Err(IndexError::StreamNotFound(_))
    ));
    assert!(matches!(
        idx.insert_fragment_unless_duplicate(orphan, 0).await,
        Err(IndexError::StreamNotFound(_))
    ));
}

pub(super) async fn stream_listing_by_prefix_and_limit(b: &dyn Backend) {
    let idx = b.open().await;
    // Byte order: upper case before lower case, '-' and '.' before digits.
    for (i, n) in ["cam-a", "cam-b", "door", "cam-c", "Cam-Z", "cam.x", "cama"]
        .iter()
        .enumerate()
    {
        idx.create_stream(new_stream(n, &format!("{i:032x}")), 10)
            .await
            .unwrap();
    }
    let names = |l: Vec<StreamRecord>| {
        l.iter()
            .map(|s| s.name.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    let l = idx.list_streams(Some("cam-"), None, 2).await.unwrap();
    assert_eq!(names(l), vec!["cam-a", "cam-b"]);
    let l = idx
        .list_streams(Some("cam-"), Some("cam-b"), 2)
        .await
        .unwrap();
    assert_eq!(names(l), vec!["cam-c"]);
    let l = idx.list_streams(None, None, 100).await.unwrap();
    assert_eq!(
        names(l),
        vec!["Cam-Z", "cam-a", "cam-b", "cam-c", "cam.x", "cama", "door"]
    );
    let l = idx
        .list_streams(Some("cam"), Some("cam-c"), 100)
        .await
        .unwrap();
    assert_eq!(names(l), vec!["cam.x", "cama"]);
    assert_eq!(idx.stream_count().await.unwrap(), 7);
    assert!(matches!(
        idx.create_stream(new_stream("x", &format!("{:032x}", 99)), 7)
            .await,
        Err(IndexError::StreamLimit(7))
    ));
    assert_eq!(idx.stream_count().await.unwrap(), 7);
    let ids = idx.stream_ids().await.unwrap();
    assert_eq!(ids, (0..7).map(|i| format!("{i:032x}")).collect::<Vec<_>>());
}

pub(super) async fn stream_configs_persist_and_go_with_the_stream(b: &dyn Backend) {
    let id = "0123456789abcdef0123456789abcdef";
    {
        let ix = b.open().await;
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
        ix.close().await;
    }
    let ix = b.open().await;
    assert_eq!(
        ix.get_stream_config(id, "k").await.unwrap().as_deref(),
        Some("{\"a\":2}")
    );
    ix.put_stream_config(id, "k", None).await.unwrap();
    assert_eq!(ix.get_stream_config(id, "k").await.unwrap(), None);
    ix.put_stream_config(id, "k", Some("x".into()))
        .await
        .unwrap();
    ix.put_stream_config(id, "other", Some("y".into()))
        .await
        .unwrap();
    ix.delete_stream(id, None, 1).await.unwrap();
    // A new stream with the same id starts without them.
    ix.create_stream(new_stream("cam", id), 10).await.unwrap();
    assert_eq!(ix.get_stream_config(id, "k").await.unwrap(), None);
    assert_eq!(ix.get_stream_config(id, "other").await.unwrap(), None);
    assert!(ix.get_session(id, 1).await.unwrap().is_none());
}

pub(super) async fn range_pages_continue_after_ties_and_stop_at_the_limit(b: &dyn Backend) {
    let idx = b.open().await;
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
    assert_eq!(seqs(&after5), (6..13).collect::<Vec<_>>());
    assert!(
        idx.fragments_after(A, None, 0).await.unwrap().is_empty(),
        "limit 0"
    );
}

pub(super) async fn dedupe_respects_the_retention_view_and_rolls_back_on_error(b: &dyn Backend) {
    let raw = b.open().await;
    let clock = ManualClock::new(1000);
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
    // A primary-key clash inside the transaction: an error, and nothing left open (the
    // next write goes through).
    let mut clash = f.clone();
    clash.content_hash = "bb".into();
    assert!(matches!(
        view.insert_fragment_unless_duplicate(clash, 0).await,
        Err(IndexError::DuplicateFragment { seq: 1, .. })
    ));
    assert!(
        raw.find_fragment_by_content(A, 1000, "bb", 0)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        view.find_fragment_by_content(A, 1000, "aa", 0)
            .await
            .unwrap()
            .map(|f| f.seq),
        Some(1)
    );
    // Once the original has expired from the view it is no duplicate; the raw index
    // still finds it.
    clock.set_ms(25 * H + 1006);
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

pub(super) async fn missing_streams_and_stale_versions_are_reported(b: &dyn Backend) {
    let idx = b.open().await;
    let missing = |e: IndexError| matches!(e, IndexError::StreamNotFound(_));
    assert!(missing(idx.reserve_fragment_seqs(A, 1).await.unwrap_err()));
    assert!(missing(
        idx.update_stream(A, None, StreamUpdate::Retention { hours: 1 }, "v2")
            .await
            .unwrap_err()
    ));
    assert!(missing(idx.delete_stream(A, None, 1).await.unwrap_err()));
    assert!(missing(
        idx.put_stream_config(A, "k", None).await.unwrap_err()
    ));
    assert!(idx.get_stream_by_id(A).await.unwrap().is_none());
    assert!(
        idx.get_stream(&StreamName::parse("cam1").unwrap())
            .await
            .unwrap()
            .is_none()
    );
    assert!(idx.stream_stats().await.unwrap().is_empty());
    idx.create_stream(new_stream("cam1", A), 10).await.unwrap();
    // The failed calls changed nothing.
    assert_eq!(idx.reserve_fragment_seqs(A, 5).await.unwrap(), 0);
    let e = idx.delete_stream(A, Some("v0"), 1).await.unwrap_err();
    assert!(
        matches!(&e, IndexError::VersionMismatch { stream, expected, current }
            if stream == "cam1" && expected == "v0" && current == "v1"),
        "{e}"
    );
    assert!(idx.get_stream_by_id(A).await.unwrap().is_some());
    idx.delete_stream(A, Some("v1"), 1).await.unwrap();
    assert!(idx.get_stream_by_id(A).await.unwrap().is_none());
    assert_eq!(idx.stream_count().await.unwrap(), 0);
    assert!(missing(idx.reserve_fragment_seqs(A, 1).await.unwrap_err()));
}

pub(super) async fn metadata_tags_and_config_updates_set_a_new_version(b: &dyn Backend) {
    let idx = b.open().await;
    idx.create_stream(new_stream("cam1", A), 10).await.unwrap();
    let s = idx
        .update_stream(
            A,
            Some("v1"),
            StreamUpdate::Metadata {
                device_name: Some("dev".into()),
                media_type: None,
            },
            "v2",
        )
        .await
        .unwrap();
    assert_eq!(
        (
            s.device_name.as_deref(),
            s.media_type.as_deref(),
            s.version.as_str()
        ),
        (Some("dev"), Some("video/h264"), "v2")
    );
    let s = idx
        .update_stream(
            A,
            Some("v2"),
            StreamUpdate::Tags {
                set: BTreeMap::from([("a".into(), "c".into()), ("z".into(), "1".into())]),
                remove: vec!["nope".into()],
            },
            "v3",
        )
        .await
        .unwrap();
    assert_eq!(
        s.tags,
        BTreeMap::from([("a".into(), "c".into()), ("z".into(), "1".into())])
    );
    let s = idx
        .update_stream(
            A,
            None,
            StreamUpdate::Tags {
                set: BTreeMap::new(),
                remove: vec!["a".into()],
            },
            "v4",
        )
        .await
        .unwrap();
    assert_eq!(s.tags, BTreeMap::from([("z".into(), "1".into())]));
    let s = idx
        .update_stream(
            A,
            Some("v4"),
            StreamUpdate::Config {
                kind: "images".into(),
                body: Some("{}".into()),
            },
            "v5",
        )
        .await
        .unwrap();
    assert_eq!(s.version, "v5");
    assert_eq!(
        idx.get_stream_config(A, "images").await.unwrap().as_deref(),
        Some("{}")
    );
    idx.update_stream(
        A,
        Some("v5"),
        StreamUpdate::Config {
            kind: "images".into(),
            body: None,
        },
        "v6",
    )
    .await
    .unwrap();
    assert_eq!(idx.get_stream_config(A, "images").await.unwrap(), None);
    // A rejected update changes nothing.
    assert!(matches!(
        idx.update_stream(A, Some("v5"), StreamUpdate::Retention { hours: 1 }, "v7")
            .await,
        Err(IndexError::VersionMismatch { .. })
    ));
    let s = idx.get_stream_by_id(A).await.unwrap().unwrap();
    assert_eq!((s.version.as_str(), s.retention_hours), ("v6", 24));
    assert_eq!(s.device_name.as_deref(), Some("dev"));
}

pub(super) async fn sessions_scans_and_garbage_pages(b: &dyn Backend) {
    let idx = b.open().await;
    idx.create_stream(new_stream("cam-a", A), 10).await.unwrap();
    idx.create_stream(new_stream("cam-b", B), 10).await.unwrap();
    let s = SessionRecord {
        stream_id: A.into(),
        session_id: u64::MAX - 1,
        created_ms: 7,
        header_sealed: vec![0, 1, 2, 255],
    };
    idx.insert_session(s.clone()).await.unwrap();
    assert_eq!(
        idx.get_session(A, u64::MAX - 1).await.unwrap(),
        Some(s.clone())
    );
    assert!(idx.get_session(B, u64::MAX - 1).await.unwrap().is_none());
    assert!(matches!(
        idx.insert_session(s.clone()).await,
        Err(IndexError::Db(_))
    ));
    let mut orphan = s.clone();
    orphan.stream_id = "0000000000000000000000000000000c".into();
    assert!(matches!(
        idx.insert_session(orphan).await,
        Err(IndexError::Db(_))
    ));
    for id in [A, B] {
        for seq in 0..5u64 {
            let mut f = frag(id, seq, seq as i64 * 1000);
            f.metadata = vec![("k\"1".into(), "v\n1".into()), ("k2".into(), String::new())];
            f.object_offset = (seq % 2 == 0).then_some(seq * 1000);
            f.size = u64::from(u32::MAX) + seq;
            idx.insert_fragment(f).await.unwrap();
        }
    }
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = idx.scan_fragments(after.clone(), 3).await.unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = Some((last.stream_id.clone(), last.seq));
        all.extend(page);
    }
    let keys: Vec<_> = all.iter().map(|f| (f.stream_id.as_str(), f.seq)).collect();
    let want: Vec<_> = [A, B]
        .iter()
        .flat_map(|id| (0..5u64).map(move |s| (*id, s)))
        .collect();
    assert_eq!(keys, want);
    assert_eq!(all[2].metadata[0], ("k\"1".into(), "v\n1".into()));
    assert_eq!(
        (all[2].object_offset, all[3].object_offset),
        (Some(2000), None)
    );
    assert_eq!(all[4].size, u64::from(u32::MAX) + 4);
    // Garbage pages in id order.
    idx.delete_stream(A, None, 10).await.unwrap();
    idx.delete_stream(B, None, 11).await.unwrap();
    let g = idx.list_garbage(1).await.unwrap();
    assert_eq!((g.len(), g[0].stream_id.as_str()), (1, A));
    let g = idx.list_garbage(usize::MAX).await.unwrap();
    assert_eq!(g.len(), 2);
    assert!(g[0].id < g[1].id);
    assert!(idx.get_session(A, u64::MAX - 1).await.unwrap().is_none());
    assert!(idx.scan_fragments(None, 100).await.unwrap().is_empty());
}
