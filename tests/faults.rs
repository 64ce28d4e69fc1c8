//! Broken storage: a fault-injecting object store under the real server (failed, torn
//! and "lost-ack" puts, a slow store, failing deletes), startup recovery of what the
//! failures leave, and `streamvault check` finding every kind of inconsistency with the
//! right exit code. See "What each test proves" in docs/design/storage.md.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use streamvault::clock::ManualClock;
use streamvault::store::faults::{FaultyStore, Op, PutFault};

async fn create(srv: &TestServer, name: &str, retention: i32) {
    srv.control()
        .await
        .create_stream()
        .stream_name(name)
        .data_retention_in_hours(retention)
        .send()
        .await
        .unwrap();
}

async fn upload(srv: &TestServer, stream: &str, body: &[u8], start: &str) -> PutResult {
    let r = put_media(
        srv.addr,
        &[
            ("x-amzn-stream-name", stream),
            ("x-amzn-producer-start-timestamp", start),
        ],
        body,
        65536,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r
}

fn numbers(r: &PutResult, kind: &str) -> Vec<String> {
    r.events(kind)
        .iter()
        .map(|a| a["FragmentNumber"].as_str().unwrap().to_owned())
        .collect()
}

fn seq_of(n: &str) -> u64 {
    streamvault::model::FragmentNumber::parse(n)
        .unwrap()
        .unwrap()
        .seq
}

async fn stream_id(dd: &DataDir, name: &str) -> String {
    dd.index
        .get_stream(&streamvault::model::StreamName::parse(name).unwrap())
        .await
        .unwrap()
        .unwrap()
        .stream_id
}

/// A server whose local segment writes and group commit follow a fault plan, persisting
/// up to `pipeline_depth` fragments of an upload at once.
async fn segment_faulty_server(
    dir: &std::path::Path,
    pipeline_depth: usize,
) -> (TestServer, Arc<streamvault::store::faults::Faults>) {
    let faults = Arc::new(streamvault::store::faults::Faults::default());
    let f2 = faults.clone();
    let (srv, _h) = TestServer::start_built(
        dir.to_owned(),
        |s| s.ingest.pipeline_depth = pipeline_depth,
        move |b| b.with_segment_faults(f2),
    )
    .await;
    (srv, faults)
}

/// A server over `<dir>/objects` through a fault-injecting store.
async fn faulty_server(
    dir: &std::path::Path,
    tweak: impl FnOnce(&mut streamvault::config::Settings),
) -> (TestServer, Handles, Arc<streamvault::store::faults::Faults>) {
    let store = FaultyStore::new(local_objects(dir));
    let faults = store.faults();
    let (srv, h) = TestServer::start_built(dir.to_owned(), tweak, |b| {
        b.with_object_store(Arc::new(store))
    })
    .await;
    (srv, h, faults)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_puts_are_error_5001_with_no_row_and_recovery_removes_their_residue() {
    let tmp = tempfile::tempdir().unwrap();
    let (srv, _h, faults) = faulty_server(tmp.path(), |s| {
        s.ingest.max_connections_per_stream = 4;
        // One fragment per batch, so each injected fault hits one fragment.
        s.ingest.pipeline_depth = 1;
    })
    .await;
    create(&srv, "f", 24).await;
    let src = sample("h264_720p_gop1s.mkv");
    let want = clusters_of(&src);

    // The first fragment's put fails: nothing is written.
    faults.fail_next(Op::Put, 1);
    let r = upload(&srv, "f", &src, "1795600000").await;
    let buffering = numbers(&r, "BUFFERING");
    let errors = r.events("ERROR");
    assert_eq!(errors.len(), 1, "{:?}", r.acks);
    assert_eq!(errors[0]["ErrorId"], 5001);
    assert_eq!(errors[0]["FragmentNumber"], buffering[0].as_str());
    assert_eq!(errors[0]["FragmentTimecode"], want[0].0);
    let persisted = numbers(&r, "PERSISTED");
    assert_eq!(
        persisted,
        buffering[1..],
        "the upload goes on after the failure"
    );

    let dd = DataDir::open(tmp.path()).await;
    let sid = stream_id(&dd, "f").await;
    let rows = dd.fragments("f").await;
    assert_eq!(rows.len(), 9);
    assert!(rows.iter().all(|(r, _)| r.seq != seq_of(&buffering[0])));
    assert!(
        dd.index
            .get_fragment(&sid, seq_of(&buffering[0]))
            .await
            .unwrap()
            .is_none(),
        "no index row for the failed fragment"
    );
    // An injected store runs object-store segments: one segment object per batch (here
    // one fragment each: the persister has one fragment in flight).
    assert!(dd.store.list(Some(&sid)).await.unwrap().is_empty());
    assert_eq!(dd.store.list_segments().await.unwrap().len(), 9);

    // A torn put (half an object at the key) and a put whose acknowledgement is lost
    // (whole object written, error returned): ERROR 5001, no row, residue in the store.
    faults.put_fault_next(PutFault::Torn, 1);
    faults.put_fault_next(PutFault::Lost, 1);
    let r = upload(&srv, "f", &src, "1795600100").await;
    assert_eq!(r.error_ids(), vec![5001, 5001], "{:?}", r.acks);
    assert_eq!(numbers(&r, "PERSISTED").len(), 8);
    assert_eq!(dd.fragments("f").await.len(), 17);
    assert_eq!(dd.store.list_segments().await.unwrap().len(), 19);
    let report = streamvault::check::check(dd.index.as_ref(), &dd.store, true)
        .await
        .unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(
        report.unreferenced_objects.len(),
        2,
        "objects without rows are garbage, not violations"
    );
    assert_eq!(faults.injected(), 3);
    srv.stop().await.unwrap();

    // Restart: recovery deletes the objects without rows (min age 0 here); every
    // acknowledged fragment is still there, bit for bit.
    let (srv, h, _f) = faulty_server(tmp.path(), |s| {
        s.gc.orphan_min_age = Duration::ZERO;
    })
    .await;
    create(&srv, "after-restart", 24).await; // the server serves while recovery runs
    h.sweep().await; // the first sweep pass comes after recovery
    assert_eq!(dd.store.list_segments().await.unwrap().len(), 17);
    let report = streamvault::check::check(dd.index.as_ref(), &dd.store, true)
        .await
        .unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert!(report.unreferenced_objects.is_empty());
    assert_eq!(report.fragments_decrypted, 17);
    for (row, bytes) in dd.fragments("f").await {
        assert!(want.iter().any(|(_, c)| c[..] == bytes[..]), "{}", row.seq);
    }
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_store_slows_acks_but_loses_nothing() {
    const LATENCY: Duration = Duration::from_millis(250);
    let tmp = tempfile::tempdir().unwrap();
    // One fragment at a time: each one waits for the slow store.
    let (srv, _h, faults) = faulty_server(tmp.path(), |s| s.ingest.pipeline_depth = 1).await;
    create(&srv, "slow", 24).await;
    faults.set_latency(Op::Put, LATENCY);
    let src = sample("h264_720p_gop1s.mkv");
    let started = Instant::now();
    let r = upload(&srv, "slow", &src, "1795600000").await;
    let took = started.elapsed();
    assert!(r.error_ids().is_empty(), "{:?}", r.acks);
    assert_eq!(numbers(&r, "PERSISTED"), numbers(&r, "BUFFERING"));
    assert_eq!(numbers(&r, "PERSISTED").len(), 10);
    // Every PERSISTED waits for its put; the persister is sequential.
    for n in numbers(&r, "PERSISTED") {
        let at = |k: &str| {
            let i = r
                .acks
                .iter()
                .position(|a| a["EventType"] == k && a["FragmentNumber"] == n.as_str())
                .unwrap();
            r.ack_times[i]
        };
        assert!(
            at("PERSISTED").duration_since(at("RECEIVED")) >= LATENCY - Duration::from_millis(20),
            "PERSISTED came before the slow put finished"
        );
    }
    assert!(took >= LATENCY * 10, "{took:?}");
    let dd = DataDir::open(tmp.path()).await;
    let stored = dd.fragments("slow").await;
    let want = clusters_of(&src);
    assert_eq!(stored.len(), 10);
    for ((_, got), (_, w)) in stored.iter().zip(&want) {
        assert_eq!(&got[..], &w[..]);
    }
    assert!(faults.calls(Op::Put) >= 10);
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deletes_leave_garbage_rows_that_a_restart_completes() {
    const H: i64 = 3_600_000;
    const T0: i64 = 1_795_600_000_000;
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = FaultyStore::new(local_objects(tmp.path()));
    let faults = store.faults();
    let (srv, h) = TestServer::start_built(
        tmp.path().to_owned(),
        |s| {
            s.retention.interval = Duration::from_secs(3600);
            s.gc.interval = Duration::from_secs(3600);
            // One fragment per batch: ten one-batch segments.
            s.ingest.pipeline_depth = 1;
        },
        |b| {
            b.with_clock(Arc::new(clock.clone()))
                .with_object_store(Arc::new(store))
        },
    )
    .await;
    create(&srv, "g", 1).await;
    let src = sample("h264_720p_gop1s.mkv");
    upload(&srv, "g", &src, "1795600000").await;
    let dd = DataDir::open(tmp.path()).await;
    let sid = stream_id(&dd, "g").await;
    assert_eq!(dd.fragments("g").await.len(), 10);

    // Retention runs while every object delete fails: the rows go (step 1 commits),
    // the objects and garbage rows stay.
    clock.set_ms(T0 + 2 * H);
    faults.fail_always(Op::Delete, true);
    h.retention_pass().await;
    h.sweep().await;
    assert!(dd.fragments("g").await.is_empty());
    // Ten one-batch segments, each left without rows: ten garbage rows (I9).
    assert_eq!(dd.store.list_segments().await.unwrap().len(), 10);
    assert_eq!(dd.index.list_garbage(100).await.unwrap().len(), 10);
    let report = streamvault::check::check(dd.index.as_ref(), &dd.store, true)
        .await
        .unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.pending_garbage_rows, 10);
    srv.stop().await.unwrap();

    // A restart (with a healthy store) completes the pending deletes.
    let (srv, h) = TestServer::start_built(
        tmp.path().to_owned(),
        |_| {},
        |b| b.with_clock(Arc::new(clock.clone())),
    )
    .await;
    h.sweep().await;
    assert!(dd.index.list_garbage(100).await.unwrap().is_empty());
    assert!(dd.store.list_segments().await.unwrap().is_empty());
    assert!(dd.store.list(Some(&sid)).await.unwrap().is_empty());
    srv.stop().await.unwrap();
}

/// Runs `streamvault check` on a data dir; returns (exit code, stdout and stderr).
fn cli_check(dir: &std::path::Path, deep: bool) -> (i32, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_streamvault"));
    c.arg("check").arg("--data-dir").arg(dir);
    if deep {
        c.arg("--deep");
    }
    let out = c.env("STREAMVAULT_LOG", "warn").output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_every_inconsistency_with_an_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let srv = TestServer::start_in(dir.clone(), |_| {}).await;
    create(&srv, "c", 24).await;
    let src = sample("h264_720p_gop1s.mkv");
    upload(&srv, "c", &src, "1795600000").await;
    // A live data dir checks clean.
    let (code, out) = cli_check(&dir, true);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("checked 10 fragments (10 decrypted)"), "{out}");
    srv.stop().await.unwrap();

    let dd = DataDir::open(&dir).await;
    let rows = dd.fragments("c").await;
    let s = dd
        .index
        .get_stream(&streamvault::model::StreamName::parse("c").unwrap())
        .await
        .unwrap()
        .unwrap();
    let objects = dir.join("objects");
    // A staged write a crash left: information, not a problem.
    let staged =
        objects.join(streamvault::store::keys::fragment_key(&s.stream_id, 99).to_string() + "#1");
    std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
    std::fs::write(&staged, b"partial").unwrap();
    let (code, out) = cli_check(&dir, false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 interrupted staged writes"), "{out}");

    // The ten fragments share one segment (one upload, one open segment).
    let seg = rows[0].0.object_key.clone();
    assert!(
        rows.iter()
            .all(|(r, _)| r.object_key == seg && r.object_offset.is_some())
    );
    let seg_path = objects.join(&seg);
    let write_at = |off: u64, bytes: &[u8]| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&seg_path)
            .unwrap();
        f.write_all_at(bytes, off).unwrap();
    };
    let key = dd
        .store
        .keyring()
        .unwrap_data_key(&s.kms_key_id, &s.stream_id, &s.wrapped_key)
        .unwrap();
    // 1: one byte flipped in its blob.
    let r1 = &rows[1].0;
    let mid = r1.object_offset.unwrap() + r1.object_size / 2;
    let mut byte = [0u8; 1];
    {
        use std::os::unix::fs::FileExt;
        std::fs::File::open(&seg_path)
            .unwrap()
            .read_exact_at(&mut byte, mid)
            .unwrap();
    }
    write_at(mid, &[byte[0] ^ 0x40]);
    // 2: re-sealed in place with the right key but other plaintext of the same length.
    let mut other = rows[2].1.to_vec();
    other[100] ^= 1;
    let resealed = dd.store.seal_fragment(&key, rows[2].0.seq, &other).unwrap();
    assert_eq!(resealed.len() as u64, rows[2].0.object_size);
    write_at(rows[2].0.object_offset.unwrap(), &resealed);
    // 3: the row names a segment that does not exist (and is no segment key).
    // 4: a legacy row whose object is missing; 5: a legacy row whose object is short.
    let legacy5 = dd
        .store
        .put_fragment(&key, rows[5].0.seq, &rows[5].1)
        .await
        .unwrap();
    let p5 = objects.join(&legacy5.key);
    let mut b = std::fs::read(&p5).unwrap();
    b.truncate(b.len() - 10);
    std::fs::write(&p5, &b).unwrap();
    // 9: the segment's durable end is pulled inside the last fragment.
    // The session rows are gone; the reservation is pulled below the stored numbers.
    let db = rusqlite::Connection::open(dir.join("index.sqlite3")).unwrap();
    let set_row = |seq: u64, key: &str, offset: Option<i64>, size: u64| {
        db.execute(
            "UPDATE fragments SET object_key = ?1, object_offset = ?2, object_size = ?3 WHERE stream_id = ?4 AND seq = ?5",
            rusqlite::params![key, offset, size as i64, s.stream_id, seq as i64],
        )
        .unwrap();
    };
    set_row(
        rows[3].0.seq,
        "segments/r1d/not-a-segment.seg",
        Some(0),
        rows[3].0.object_size,
    );
    let legacy4 = streamvault::store::keys::fragment_key(&s.stream_id, rows[4].0.seq).to_string();
    set_row(rows[4].0.seq, &legacy4, None, rows[4].0.object_size);
    set_row(rows[5].0.seq, &legacy5.key, None, legacy5.size);
    db.execute(
        "UPDATE segments SET durable_end = ?1 WHERE object_key = ?2",
        rusqlite::params![rows[9].0.object_offset.unwrap() as i64 + 1, seg],
    )
    .unwrap();
    db.execute("PRAGMA foreign_keys=OFF", []).unwrap();
    db.execute("DELETE FROM sessions WHERE stream_id = ?1", [&s.stream_id])
        .unwrap();
    db.execute(
        "UPDATE streams SET seq_reserved = 3 WHERE stream_id = ?1",
        [&s.stream_id],
    )
    .unwrap();
    drop(db);

    let (code, out) = cli_check(&dir, false);
    assert_eq!(code, 1, "{out}");
    for needle in [
        "PROBLEM: indexed fragment has no object",
        "PROBLEM: object size differs from index",
        "PROBLEM: object key is not the layout's key",
        "PROBLEM: fragment's segment has no index record",
        "PROBLEM: fragment ends past its segment's durable end",
        "PROBLEM: fragment's session header is missing",
        "PROBLEM: fragment numbers reach the reservation",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    assert!(
        !out.contains("does not decrypt"),
        "shallow check does not decrypt"
    );
    let (code, out) = cli_check(&dir, true);
    assert_eq!(code, 1, "{out}");
    for needle in [
        "PROBLEM: object does not decrypt",
        "PROBLEM: plaintext hash differs from index",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    // Nothing to check: exit 2.
    let empty = tempfile::tempdir().unwrap();
    let (code, _) = cli_check(empty.path(), false);
    assert_eq!(code, 2);
}

/// The local append backend under faults: a failed append, a torn append, a failed
/// `fdatasync` and a failed index commit each fail their batch (ERROR 5001, no row, no
/// PERSISTED); the upload goes on; every PERSISTED fragment reads back bit-exact and
/// `check --deep` is clean. Then a torn tail on a segment left open (as a kill -9 leaves
/// it) is reported as information, never served, and cut by the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_write_faults_fail_their_batch_and_torn_tails_are_cut_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    // One fragment per batch, so each injected fault hits one fragment.
    let (srv, faults) = segment_faulty_server(&dir, 1).await;
    create(&srv, "s", 24).await;
    let src = sample("h264_720p_gop1s.mkv");
    let want = clusters_of(&src);
    faults.fail_next(Op::Append, 1); // fragment 0: nothing written
    faults.fault_next(Op::Append, PutFault::Torn, 1); // 1: half written, then an error
    faults.fail_next(Op::Sync, 1); // 2: written, fdatasync fails
    faults.fail_next(Op::IndexCommit, 1); // 3: durable, the transaction fails
    let r = upload(&srv, "s", &src, "1795600000").await;
    let buffering = numbers(&r, "BUFFERING");
    assert_eq!(r.error_ids(), vec![5001; 4], "{:?}", r.acks);
    let errored: Vec<&str> = r
        .events("ERROR")
        .iter()
        .map(|e| e["FragmentNumber"].as_str().unwrap())
        .collect();
    assert_eq!(
        errored,
        buffering[..4]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    assert_eq!(numbers(&r, "PERSISTED"), buffering[4..]);
    assert_eq!(faults.injected(), 4);

    let dd = DataDir::open(&dir).await;
    let stored = dd.fragments("s").await;
    assert_eq!(stored.len(), 6, "no row for a failed batch");
    for (row, bytes) in &stored {
        let i = want
            .iter()
            .position(|(_, c)| c[..] == bytes[..])
            .expect("bit-exact");
        assert!(i >= 4, "fragment {i} was not acknowledged: {}", row.seq);
    }
    // The segments a failed write or sync touched were closed and, holding no row,
    // deleted; the rows live in one segment.
    let segs = dd.store.list_segments().await.unwrap();
    assert_eq!(segs.len(), 1, "{segs:?}");
    let (code, out) = cli_check(&dir, true);
    assert_eq!(code, 0, "{out}");
    srv.stop().await.unwrap();

    // A kill -9 in the middle of a batch: the segment is still open in the index and
    // has bytes past its durable end.
    let seg = segs[0].key.clone();
    let path = dir.join("objects").join(&seg);
    let durable = std::fs::metadata(&path).unwrap().len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&[0xa5; 1000]).unwrap();
    }
    let db = rusqlite::Connection::open(dir.join("index.sqlite3")).unwrap();
    db.execute("UPDATE segments SET sealed = 0", []).unwrap();
    drop(db);
    let (code, out) = cli_check(&dir, true);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("segment tail: {seg} (1000 bytes")),
        "{out}"
    );
    let srv = TestServer::start_in(dir.clone(), |_| {}).await;
    create(&srv, "after", 24).await; // served: start-up recovery ran before
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        durable,
        "tail cut at start"
    );
    let (code, out) = cli_check(&dir, true);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 segment tails"), "{out}");
    assert_eq!(dd.fragments("s").await.len(), 6);
    srv.stop().await.unwrap();
}

/// Pipelining (docs/design/ingest.md, P2–P3): with a slow disk, one stream's fragments
/// queue at the committer while a batch is being synced, so several of them share one
/// `fdatasync` (a persister with one fragment in flight needs one sync per fragment);
/// a failed batch gets ERROR and the later fragments still get PERSISTED, every
/// fragment's final ack in fragment order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_shares_batches_and_acks_stay_in_fragment_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let (srv, faults) = segment_faulty_server(
        &dir,
        streamvault::config::IngestSettings::default().pipeline_depth,
    )
    .await;
    create(&srv, "s", 24).await;
    let src = sample("h264_720p_gop1s.mkv");
    let n = clusters_of(&src).len();
    assert!(n >= 6, "{n}");
    faults.set_latency(Op::Sync, Duration::from_millis(150));
    faults.fail_next(Op::Sync, 1); // the first batch fails
    let r = upload(&srv, "s", &src, "1795600000").await;
    let buffering = numbers(&r, "BUFFERING");
    assert_eq!(buffering.len(), n);
    // The final ack of each fragment, in the order they were sent.
    let finals: Vec<(String, String)> = r
        .acks
        .iter()
        .filter(|a| matches!(a["EventType"].as_str(), Some("PERSISTED" | "ERROR")))
        .map(|a| {
            (
                a["EventType"].as_str().unwrap().to_owned(),
                a["FragmentNumber"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let order: Vec<&str> = finals.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        order,
        buffering.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let failed = finals.iter().filter(|(k, _)| k == "ERROR").count();
    assert!(failed >= 1, "{finals:?}");
    assert!(
        finals[failed..].iter().all(|(k, _)| k == "PERSISTED") && failed < n,
        "ERRORs first (the failed batch), then PERSISTED: {finals:?}"
    );
    let syncs = faults.calls(Op::Sync) as usize;
    assert!(
        syncs < n,
        "{syncs} fdatasyncs for {n} fragments of one stream: no fragment shared a batch"
    );
    assert_eq!(dd_rows(&dir, "s").await, n - failed);
    let (code, out) = cli_check(&dir, true);
    assert_eq!(code, 0, "{out}");
    srv.stop().await.unwrap();
}

async fn dd_rows(dir: &std::path::Path, stream: &str) -> usize {
    DataDir::open(dir).await.fragments(stream).await.len()
}
