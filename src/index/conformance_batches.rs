//! The conformance cases of the group commit, segments and retention (see
//! `conformance.rs`): batch outcomes and in-batch dedupe, segment records and their
//! garbage, expiry, the size cap, and concurrent writers that must keep the rules of
//! SQLite's single writer.

use super::*;

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

const S1: &str = "segments/r1d/0000000000001-0000000000000001.seg";
const S2: &str = "segments/r1d/0000000000002-0000000000000002.seg";
const S3: &str = "segments/r1d/0000000000003-0000000000000003.seg";

pub(in crate::index) async fn expire_trim_and_stats_follow_the_delete_protocol(b: &dyn Backend) {
    let idx = b.open().await;
    idx.create_stream(new_stream("cam1", A), 10).await.unwrap(); // 24 h
    idx.reserve_fragment_seqs(A, 64).await.unwrap();
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
    assert_eq!(st.len(), 1);
    assert_eq!((st[0].stream_id.as_str(), st[0].retention_hours), (A, 24));
    assert_eq!(st[0].fragments, 48);
    assert_eq!(st[0].bytes, 48 * 140);
    assert_eq!((st[0].max_seq, st[0].seq_reserved), (Some(47), 64));
    // Minimum age protects hours >= 10 even though 0..23 are expired.
    let r = idx.expire_fragments(48 * H, 10 * H, 1000).await.unwrap();
    assert_eq!(r.rows, 10);
    let g = r.garbage;
    assert_eq!(g.len(), 10);
    assert_eq!(g[0].object_key.as_deref(), Some("obj/0"));
    assert_eq!(g[9].object_key.as_deref(), Some("obj/9"));
    assert!(g.windows(2).all(|w| w[0].id < w[1].id));
    assert!(g.iter().all(|g| g.stream_id == A && g.created_ms == 48 * H));
    assert_eq!(idx.list_garbage(100).await.unwrap(), g);
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
    let r = idx
        .trim_stream(A, 10 * 140, 40 * H, 1000, 48 * H)
        .await
        .unwrap();
    assert_eq!((r.rows, r.garbage.len()), (14, 14), "24 left, down to 10");
    assert_eq!(r.garbage[0].object_key.as_deref(), Some("obj/24"));
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
    // Under the cap, or a stream that does not exist: nothing.
    assert_eq!(
        idx.trim_stream(A, 1 << 40, 48 * H, 1000, 48 * H)
            .await
            .unwrap(),
        Retired::default()
    );
    assert_eq!(
        idx.trim_stream(B, 0, 48 * H, 1000, 48 * H).await.unwrap(),
        Retired::default()
    );
    let st = idx.stream_stats().await.unwrap();
    assert_eq!((st[0].fragments, st[0].bytes), (8, 8 * 140));
}

pub(in crate::index) async fn batches_commit_once_dedupe_inside_and_dead_segments_become_garbage(
    b: &dyn Backend,
) {
    let idx = b.open().await;
    idx.create_stream(new_stream("cam1", A), 10).await.unwrap();
    idx.reserve_fragment_seqs(A, 100).await.unwrap();
    // One batch: two rows, the second a re-send of the first (same ts and hash), and a
    // row of a stream that does not exist.
    let mut gone = in_segment(3, 10, S1, 280);
    gone.row.stream_id = B.into();
    let out = idx
        .commit_batch(
            None,
            vec![segment(S1, 420, false)],
            vec![in_segment(1, 10, S1, 0), in_segment(2, 10, S1, 140), gone],
        )
        .await
        .unwrap();
    assert_eq!(out[0], RowOutcome::Inserted);
    assert!(
        matches!(&out[1], RowOutcome::Duplicate(f) if *f == in_segment(1, 10, S1, 0).row),
        "{out:?}"
    );
    assert_eq!(out[2], RowOutcome::StreamGone);
    let seg = idx.get_segment(S1).await.unwrap().unwrap();
    assert_eq!(seg, segment(S1, 420, false));
    let got = idx.get_fragment(A, 1).await.unwrap().unwrap();
    assert_eq!((got.object_key.as_str(), got.object_offset), (S1, Some(0)));
    // A later batch raises the durable end; another segment gets row 4.
    idx.commit_batch(
        None,
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
    assert_eq!(r.garbage[0].stream_id, "");
    assert!(idx.get_segment(S2).await.unwrap().is_none());
    let g = idx.seal_segment(S1, 30 * H).await.unwrap().unwrap();
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].object_key.as_deref(), Some(S1));
    assert!(idx.segments().await.unwrap().is_empty());
    assert_eq!(
        idx.seal_segment("segments/r1d/none.seg", 0).await.unwrap(),
        None
    );
    // Startup: open segments are sealed and returned (as they were); one with rows stays.
    idx.commit_batch(
        None,
        vec![segment(S2, 140, false), segment(S3, 0, false)],
        vec![in_segment(6, 31 * H, S2, 0)],
    )
    .await
    .unwrap();
    let (open, garbage) = idx.seal_open_segments(31 * H).await.unwrap();
    assert_eq!(open, vec![segment(S2, 140, false), segment(S3, 0, false)]);
    assert_eq!(garbage.len(), 1, "S3 has no row");
    assert_eq!(garbage[0].object_key.as_deref(), Some(S3));
    assert!(idx.get_segment(S2).await.unwrap().unwrap().sealed);
    assert_eq!(
        idx.seal_open_segments(31 * H).await.unwrap(),
        (vec![], vec![])
    );
    // DeleteStream: its segments left without rows become garbage in the same transaction.
    idx.delete_stream(A, None, 32 * H).await.unwrap();
    let g = idx.list_garbage(10).await.unwrap();
    assert!(
        g.iter().any(|g| g.object_key.as_deref() == Some(S2)),
        "{g:?}"
    );
    assert!(idx.segments().await.unwrap().is_empty());
}

pub(in crate::index) async fn batch_outcomes_for_taken_numbers_windows_and_repeated_segments(
    b: &dyn Backend,
) {
    let idx = b.open().await;
    idx.create_stream(new_stream("cam1", A), 10).await.unwrap();
    idx.create_stream(new_stream("cam2", B), 10).await.unwrap();
    let mut stored = in_segment(1, 100, S1, 0);
    stored.row.content_hash = "s".into();
    idx.commit_batch(None, vec![segment(S1, 140, false)], vec![stored.clone()])
        .await
        .unwrap();
    // A taken number (stored, or earlier in the batch) is SeqTaken; no dedupe window
    // means no dedupe; the window bounds in-batch matches too; another stream's equal
    // row is no duplicate; the same segment twice: the later record wins.
    let mut taken = in_segment(1, 200, S1, 140);
    taken.row.content_hash = "t".into();
    let mut fresh = in_segment(2, 300, S1, 280);
    fresh.row.content_hash = "f".into();
    fresh.row.server_ts_ms = 1000;
    let mut same_number = fresh.clone();
    same_number.row.content_hash = "g".into();
    let mut no_window = stored.clone();
    no_window.row.seq = 3;
    no_window.dedupe_since_ms = None;
    let mut late_window = fresh.clone();
    late_window.row.seq = 4;
    late_window.dedupe_since_ms = Some(1001);
    let mut in_window = fresh.clone();
    in_window.row.seq = 5;
    in_window.dedupe_since_ms = Some(1000);
    let mut other_stream = stored.clone();
    other_stream.row.stream_id = B.into();
    let out = idx
        .commit_batch(
            None,
            vec![
                segment(S1, 560, false),
                segment(S2, 1, false),
                segment(S1, 700, true),
            ],
            vec![
                taken,
                fresh.clone(),
                same_number,
                no_window,
                late_window,
                in_window,
                other_stream,
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            RowOutcome::SeqTaken,
            RowOutcome::Inserted,
            RowOutcome::SeqTaken,
            RowOutcome::Inserted,
            RowOutcome::Inserted,
            RowOutcome::Duplicate(fresh.row.clone()),
            RowOutcome::Inserted,
        ]
    );
    assert_eq!(
        idx.get_segment(S1).await.unwrap(),
        Some(segment(S1, 700, true))
    );
    assert_eq!(
        idx.get_segment(S2).await.unwrap(),
        Some(segment(S2, 1, false))
    );
    assert_eq!(
        seqs(&idx.fragments_after(A, None, 100).await.unwrap()),
        vec![1, 2, 3, 4]
    );
    // Earliest by seq: a later re-send of "s" names row 1, not row 3.
    let mut resend = stored.clone();
    resend.row.seq = 9;
    let out = idx.commit_batch(None, vec![], vec![resend]).await.unwrap();
    assert_eq!(out, vec![RowOutcome::Duplicate(stored.row.clone())]);
    // Empty batches are fine.
    assert!(
        idx.commit_batch(None, vec![], vec![])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        idx.commit_batch(None, vec![segment(S3, 0, false)], vec![])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(idx.segments().await.unwrap().len(), 3);
}

pub(in crate::index) async fn trim_and_expire_retire_segment_rows_and_spare_open_segments(
    b: &dyn Backend,
) {
    let idx = b.open().await;
    idx.create_stream(new_stream("cam1", A), 10).await.unwrap();
    // Rows 0..4 in sealed S1, rows 4..8 in open S2, row 8 a legacy object.
    let mut rows: Vec<BatchRow> = (0..8u64)
        .map(|s| {
            let key = if s < 4 { S1 } else { S2 };
            let mut r = in_segment(s, s as i64 * 1000, key, (s % 4) * 140);
            r.row.content_hash = format!("h{s}");
            r
        })
        .collect();
    let mut legacy = frag(A, 8, 8000);
    legacy.content_hash = "h8".into();
    rows.push(BatchRow {
        row: legacy,
        dedupe_since_ms: None,
    });
    let out = idx
        .commit_batch(
            None,
            vec![segment(S1, 560, true), segment(S2, 560, false)],
            rows,
        )
        .await
        .unwrap();
    assert!(out.iter().all(|o| *o == RowOutcome::Inserted));
    // The cap takes rows 0..=4: S1 dies (garbage), S2 is open and keeps its record.
    let r = idx
        .trim_stream(A, 4 * 140, i64::MAX, 1000, 77)
        .await
        .unwrap();
    assert_eq!(r.rows, 5);
    assert_eq!(
        r.garbage
            .iter()
            .map(|g| (g.stream_id.as_str(), g.object_key.as_deref()))
            .collect::<Vec<_>>(),
        vec![("", Some(S1))]
    );
    assert!(idx.get_segment(S1).await.unwrap().is_none());
    assert!(idx.get_segment(S2).await.unwrap().is_some());
    // Expiry limited to 2 rows: rows 5, 6 go, S2 (open) stays.
    let r = idx.expire_fragments(100 * H, 100 * H, 2).await.unwrap();
    assert_eq!((r.rows, r.garbage.len()), (2, 0));
    // The rest: row 7 (segment) and row 8 (legacy object, garbage).
    let r = idx.expire_fragments(100 * H, 100 * H, 100).await.unwrap();
    assert_eq!(r.rows, 2);
    assert_eq!(
        r.garbage
            .iter()
            .map(|g| (g.stream_id.as_str(), g.object_key.as_deref()))
            .collect::<Vec<_>>(),
        vec![(A, Some("k/8"))]
    );
    assert_eq!(
        idx.expire_fragments(100 * H, 100 * H, 100).await.unwrap(),
        Retired::default()
    );
    let g = idx.seal_segment(S2, 100 * H).await.unwrap().unwrap();
    assert_eq!(g[0].object_key.as_deref(), Some(S2));
    assert_eq!(g[0].created_ms, 100 * H);
}

/// Writers that SQLite runs one at a time, started together: the results must be those
/// of some order of them.
pub(in crate::index) async fn concurrent_writers_keep_the_single_writer_rules(b: &dyn Backend) {
    let idx = b.open().await;
    // The stream limit holds under concurrent creations, and so does name uniqueness.
    let creates = (0..12).map(|i| {
        let idx = idx.clone();
        tokio::spawn(async move {
            let name = if i < 8 {
                format!("cam{i}")
            } else {
                "cam0".into()
            };
            idx.create_stream(new_stream(&name, &format!("{i:032x}")), 5)
                .await
        })
    });
    let results = futures::future::join_all(creates).await;
    let ok = results
        .iter()
        .filter(|r| r.as_ref().unwrap().is_ok())
        .count();
    assert_eq!(ok, 5, "{results:?}");
    assert!(results.iter().all(|r| matches!(
        r.as_ref().unwrap(),
        Ok(_) | Err(IndexError::StreamLimit(5) | IndexError::StreamExists(_))
    )));
    assert_eq!(idx.stream_count().await.unwrap(), 5);
    let id = idx.stream_ids().await.unwrap()[0].clone();
    // Reservations never overlap.
    let reserves = (0..10).map(|_| {
        let (idx, id) = (idx.clone(), id.clone());
        tokio::spawn(async move { idx.reserve_fragment_seqs(&id, 7).await.unwrap() })
    });
    let mut firsts: Vec<u64> = futures::future::join_all(reserves)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    firsts.sort_unstable();
    assert_eq!(firsts, (0..10).map(|i| i * 7).collect::<Vec<_>>());
    // The same fragment uploaded concurrently under different numbers is stored once,
    // single inserts and batches alike; every other call names the stored one.
    let uploads = (0..8u64).map(|i| {
        let (idx, id) = (idx.clone(), id.clone());
        tokio::spawn(async move {
            let mut f = frag(&id, i, 5000);
            f.content_hash = "same".into();
            if i % 2 == 0 {
                match idx.insert_fragment_unless_duplicate(f, 0).await.unwrap() {
                    None => None,
                    Some(orig) => Some(orig.seq),
                }
            } else {
                let row = BatchRow {
                    row: f,
                    dedupe_since_ms: Some(0),
                };
                match idx
                    .commit_batch(None, vec![], vec![row])
                    .await
                    .unwrap()
                    .remove(0)
                {
                    RowOutcome::Inserted => None,
                    RowOutcome::Duplicate(orig) => Some(orig.seq),
                    o => panic!("{o:?}"),
                }
            }
        })
    });
    let outcomes: Vec<Option<u64>> = futures::future::join_all(uploads)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let stored = idx.fragments_after(&id, None, 100).await.unwrap();
    assert_eq!(stored.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| o.is_none()).count(), 1);
    assert!(outcomes.iter().flatten().all(|&s| s == stored[0].seq));
    // Deleting a stream while fragments are committed: each write either lands before
    // the delete (and goes with the stream) or finds the stream gone.
    let writes = (100..110u64).map(|seq| {
        let (idx, id) = (idx.clone(), id.clone());
        tokio::spawn(async move {
            let mut f = frag(&id, seq, seq as i64);
            f.content_hash = format!("x{seq}");
            let row = BatchRow {
                row: f,
                dedupe_since_ms: Some(0),
            };
            idx.commit_batch(None, vec![], vec![row])
                .await
                .unwrap()
                .remove(0)
        })
    });
    let delete = {
        let (idx, id) = (idx.clone(), id.clone());
        tokio::spawn(async move { idx.delete_stream(&id, None, 1).await })
    };
    for o in futures::future::join_all(writes).await {
        let o = o.unwrap();
        assert!(
            matches!(o, RowOutcome::Inserted | RowOutcome::StreamGone),
            "{o:?}"
        );
    }
    delete.await.unwrap().unwrap();
    assert!(
        idx.fragments_after(&id, None, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        idx.scan_fragments(None, 100)
            .await
            .unwrap()
            .iter()
            .all(|f| f.stream_id != id)
    );
}
