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
use streamvault::index::Index;
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

    let dd = DataDir::open(tmp.path());
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
    assert_eq!(dd.store.list(Some(&sid)).await.unwrap().len(), 9);

    // A torn put (half an object at the key) and a put whose acknowledgement is lost
    // (whole object written, error returned): ERROR 5001, no row, residue in the store.
    faults.put_fault_next(PutFault::Torn, 1);
    faults.put_fault_next(PutFault::Lost, 1);
    let r = upload(&srv, "f", &src, "1795600100").await;
    assert_eq!(r.error_ids(), vec![5001, 5001], "{:?}", r.acks);
    assert_eq!(numbers(&r, "PERSISTED").len(), 8);
    assert_eq!(dd.fragments("f").await.len(), 17);
    assert_eq!(dd.store.list(Some(&sid)).await.unwrap().len(), 19);
    let report = streamvault::check::check(&dd.index, &dd.store, true)
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
    assert_eq!(dd.store.list(Some(&sid)).await.unwrap().len(), 17);
    let report = streamvault::check::check(&dd.index, &dd.store, true)
        .await
        .unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert!(report.unreferenced_objects.is_empty());
    assert_eq!(report.fragments_decrypted, 17);
    for (row, bytes) in dd.fragments("f").await {
        assert!(
            want.iter().any(|(_, c)| &c[..] == &bytes[..]),
            "{}",
            row.seq
        );
    }
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_store_slows_acks_but_loses_nothing() {
    const LATENCY: Duration = Duration::from_millis(250);
    let tmp = tempfile::tempdir().unwrap();
    let (srv, _h, faults) = faulty_server(tmp.path(), |_| {}).await;
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
    let dd = DataDir::open(tmp.path());
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
    let dd = DataDir::open(tmp.path());
    let sid = stream_id(&dd, "g").await;
    assert_eq!(dd.fragments("g").await.len(), 10);

    // Retention runs while every object delete fails: the rows go (step 1 commits),
    // the objects and garbage rows stay.
    clock.set_ms(T0 + 2 * H);
    faults.fail_always(Op::Delete, true);
    h.retention_pass().await;
    h.sweep().await;
    assert!(dd.fragments("g").await.is_empty());
    assert_eq!(dd.store.list(Some(&sid)).await.unwrap().len(), 10);
    assert_eq!(dd.index.list_garbage(100).await.unwrap().len(), 10);
    let report = streamvault::check::check(&dd.index, &dd.store, true)
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
    assert!(dd.store.list(Some(&sid)).await.unwrap().is_empty());
    srv.stop().await.unwrap();
}

/// Runs `streamvault check` on a data dir; returns (exit code, stdout).
fn cli_check(dir: &std::path::Path, deep: bool) -> (i32, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_streamvault"));
    c.arg("check").arg("--data-dir").arg(dir);
    if deep {
        c.arg("--deep");
    }
    let out = c.env("STREAMVAULT_LOG", "warn").output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
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

    let dd = DataDir::open(&dir);
    let rows = dd.fragments("c").await;
    let path = |i: usize| dir.join("objects").join(&rows[i].0.object_key);
    // A staged write a crash left: information, not a problem.
    std::fs::write(format!("{}#1", path(9).display()), b"partial").unwrap();
    let (code, out) = cli_check(&dir, false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 interrupted staged writes"), "{out}");

    // 0: object deleted. 1: object truncated. 2: one byte flipped (same size).
    std::fs::remove_file(path(0)).unwrap();
    let mut b = std::fs::read(path(1)).unwrap();
    b.truncate(b.len() - 10);
    std::fs::write(path(1), &b).unwrap();
    let mut b = std::fs::read(path(2)).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    std::fs::write(path(2), &b).unwrap();
    // 3: re-sealed with the right key but other plaintext of the same length.
    let s = dd
        .index
        .get_stream(&streamvault::model::StreamName::parse("c").unwrap())
        .await
        .unwrap()
        .unwrap();
    let key = dd
        .store
        .keyring()
        .unwrap_data_key(&s.kms_key_id, &s.stream_id, &s.wrapped_key)
        .unwrap();
    let mut other = rows[3].1.to_vec();
    other[100] ^= 1;
    dd.store
        .put_fragment(&key, rows[3].0.seq, &other)
        .await
        .unwrap();
    // 4: the row names another key; 5: its session row is gone; the reservation is
    // pulled below the stored numbers.
    let db = rusqlite::Connection::open(dir.join("index.sqlite3")).unwrap();
    db.execute(
        "UPDATE fragments SET object_key = ?1 WHERE stream_id = ?2 AND seq = ?3",
        rusqlite::params![rows[5].0.object_key, s.stream_id, rows[4].0.seq as i64],
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
