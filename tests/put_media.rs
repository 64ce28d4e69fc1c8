//! PutMedia end to end against the real server: the KVS producer SDK's own streams,
//! ffmpeg as a live camera, GStreamer + curl, bad inputs, limits and the HTTP details
//! real producers depend on.

mod common;

use std::time::Duration;

use common::*;

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

/// Every fragment number gets BUFFERING, RECEIVED, PERSISTED in that order.
fn assert_ack_lifecycle(r: &PutResult, expect: usize) {
    assert_eq!(r.status, 200, "{}", r.body);
    let b = r.events("BUFFERING");
    assert_eq!(b.len(), expect, "BUFFERING acks: {:?}", r.acks);
    for ack in &b {
        let n = ack["FragmentNumber"].as_str().unwrap();
        assert_eq!(n.len(), 47);
        let pos: Vec<usize> = ["BUFFERING", "RECEIVED", "PERSISTED"]
            .iter()
            .map(|k| {
                r.acks
                    .iter()
                    .position(|a| a["EventType"] == *k && a["FragmentNumber"] == n)
                    .unwrap_or_else(|| panic!("no {k} for {n}"))
            })
            .collect();
        assert!(
            pos[0] < pos[1] && pos[1] < pos[2],
            "ack order for {n}: {pos:?}"
        );
        let tc: Vec<_> = r
            .acks
            .iter()
            .filter(|a| a["FragmentNumber"] == n)
            .map(|a| a["FragmentTimecode"].clone())
            .collect();
        assert!(
            tc.iter().all(|t| *t == tc[0] && t.is_u64()),
            "FragmentTimecode must be one integer: {tc:?}"
        );
    }
    // Numbers strictly increase.
    let nums: Vec<&str> = b
        .iter()
        .map(|a| a["FragmentNumber"].as_str().unwrap())
        .collect();
    assert!(nums.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvs_producer_sdk_stream_all_persisted() {
    let Some(src) = shared_media("kvs-captures/producer-sdk-test-stream-1_0.mkv") else {
        return;
    };
    let srv = TestServer::start().await;
    create(&srv, "sdk", 24).await;
    let r = put_media(
        srv.addr,
        &[
            ("x-amzn-stream-name", "sdk"),
            ("x-amzn-fragment-timecode-type", "ABSOLUTE"),
            ("x-amzn-producer-start-timestamp", "1500000000.5"),
        ],
        &src,
        8192,
    )
    .await;
    assert_ack_lifecycle(&r, 37);
    assert!(r.error_ids().is_empty(), "{:?}", r.error_ids());

    let dd = DataDir::open(&srv.data_dir).await;
    let stored = dd.fragments("sdk").await;
    let clusters = clusters_of(&src);
    assert_eq!(stored.len(), 37);
    assert_eq!(clusters.len(), 37);
    let mut metadata = 0;
    for ((row, bytes), (tc, cluster)) in stored.iter().zip(&clusters) {
        assert_eq!(
            row.producer_ts_ms, *tc as i64,
            "ABSOLUTE: producer ts = cluster timecode (ms)"
        );
        assert_eq!(
            &bytes[..],
            &cluster[..],
            "stored fragment must be the producer's cluster, byte for byte"
        );
        assert!(
            row.metadata
                .iter()
                .all(|(n, _)| n != "AWS_KINESISVIDEO_END_OF_FRAGMENT")
        );
        metadata += row.metadata.len();
    }
    assert_eq!(metadata, 27, "custom fragment metadata stored");
    let report = streamvault::check::check(dd.index.as_ref(), &dd.store, true)
        .await
        .unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.fragments_decrypted, 37);
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvs_c_producer_end_of_fragment_gets_persisted_before_body_ends() {
    let Some(src) = shared_media("kvs-captures/producer-c-1.6.4-putmedia.mkv") else {
        return;
    };
    let srv = TestServer::start().await;
    create(&srv, "cprod", 24).await;
    // Send everything, but keep the body open (like the SDK at stop): the last fragment
    // must still be PERSISTED because its END_OF_FRAGMENT tag closed it.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let addr = srv.addr;
    let up = tokio::spawn(async move {
        put_media_stream(
            addr,
            &[
                ("x-amzn-stream-name", "cprod"),
                ("x-amzn-fragment-timecode-type", "ABSOLUTE"),
                ("Expect", "100-continue"),
            ],
            rx,
        )
        .await
    });
    tx.send(src.clone()).await.unwrap();
    // Wait until the index holds all 7 fragments, without ending the body.
    let dd = DataDir::open(&srv.data_dir).await;
    let mut n = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let s = dd
            .index
            .get_stream(&streamvault::model::StreamName::parse("cprod").unwrap())
            .await
            .unwrap()
            .unwrap();
        n = dd
            .index
            .fragments_after(&s.stream_id, None, 100)
            .await
            .unwrap()
            .len();
        if n == 7 {
            break;
        }
    }
    assert_eq!(n, 7, "all fragments persisted while the body is still open");
    drop(tx);
    let r = up.await.unwrap();
    assert_ack_lifecycle(&r, 7);
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_before_200_are_json() {
    let srv = TestServer::start().await;
    create(&srv, "one", 24).await;
    let r = put_media(srv.addr, &[("x-amzn-stream-name", "nope")], b"x", 1).await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("ResourceNotFoundException"));
    let r = put_media(
        srv.addr,
        &[
            ("x-amzn-stream-name", "one"),
            ("x-amzn-fragment-timecode-type", "SIDEWAYS"),
        ],
        b"x",
        1,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("InvalidArgumentException"));
    let r = put_media(srv.addr, &[], b"x", 1).await;
    assert_eq!(r.status, 400);

    srv.stop().await.unwrap();
}

/// The newest PutMedia connection wins, as on AWS: a camera whose old connection is still
/// open (half-open behind a NAT, or just slow to notice) reconnects and re-sends from its
/// last PERSISTED fragment. The old session ends: what it completed stays PERSISTED, its
/// open fragment is dropped; the re-sent fragments are stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_putmedia_connection_wins() {
    let srv = TestServer::start().await;
    create(&srv, "cam", 24).await;
    create(&srv, "other", 24).await;
    let (header, clusters) = split_sample(&sample("h264_720p_gop1s.mkv"));
    assert!(clusters.len() >= 4);
    let start = "1700000000.000";
    let headers = [
        ("x-amzn-stream-name", "cam"),
        ("x-amzn-fragment-timecode-type", "RELATIVE"),
        ("x-amzn-producer-start-timestamp", start),
    ];
    let addr = srv.addr;

    // Another stream's upload is open meanwhile and must not be touched.
    let (other_tx, other_rx) = tokio::sync::mpsc::channel(4);
    let other = tokio::spawn(async move {
        put_media_stream(addr, &[("x-amzn-stream-name", "other")], other_rx).await
    });
    other_tx.send(header.clone()).await.unwrap();
    other_tx.send(clusters[0].clone()).await.unwrap();

    // The old connection: two whole fragments and half of the third, then silence
    // (the body stays open, as a half-open connection's would).
    let (old_tx, old_rx) = tokio::sync::mpsc::channel(8);
    let hs: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let old = tokio::spawn(async move {
        let h: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        put_media_stream(addr, &h, old_rx).await
    });
    old_tx.send(header.clone()).await.unwrap();
    old_tx.send(clusters[0].clone()).await.unwrap();
    old_tx.send(clusters[1].clone()).await.unwrap();
    old_tx
        .send(clusters[2][..clusters[2].len() / 2].to_vec())
        .await
        .unwrap();
    let dd = DataDir::open(&srv.data_dir).await;
    for _ in 0..100 {
        if dd.fragments("cam").await.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        dd.fragments("cam").await.len(),
        2,
        "the old session persisted its two whole fragments"
    );

    // The camera comes back on a new connection and re-sends everything.
    let mut body = header.clone();
    for c in &clusters {
        body.extend_from_slice(c);
    }
    let new = put_media(srv.addr, &headers, &body, 64 * 1024).await;
    assert_eq!(new.status, 200, "{}", new.body);
    // (Re-sent fragments are PERSISTED under the stored fragment's number, so the
    // BUFFERING numbers of the first two differ from their PERSISTED ones.)
    assert_eq!(
        new.events("PERSISTED").len(),
        clusters.len(),
        "{:?}",
        new.acks
    );
    assert!(new.error_ids().is_empty(), "{:?}", new.acks);

    // The old session ended by itself (its body is still open): its two fragments
    // PERSISTED, the open one neither PERSISTED nor an error.
    let old = tokio::time::timeout(Duration::from_secs(10), old)
        .await
        .expect("the superseded session ends")
        .unwrap();
    assert_eq!(old.status, 200);
    assert_eq!(old.events("PERSISTED").len(), 2, "{:?}", old.acks);
    assert_eq!(old.events("BUFFERING").len(), 3, "{:?}", old.acks);
    assert!(old.error_ids().is_empty(), "{:?}", old.acks);
    drop(old_tx);
    // The re-sent fragments are the stored ones: same numbers, stored once.
    let num = |r: &PutResult, i: usize| r.events("PERSISTED")[i]["FragmentNumber"].clone();
    assert_eq!(num(&new, 0), num(&old, 0));
    assert_eq!(num(&new, 1), num(&old, 1));
    let rows = dd.fragments("cam").await;
    assert_eq!(
        rows.len(),
        clusters.len(),
        "every fragment stored exactly once"
    );

    // The other stream's upload went on: it completes normally.
    other_tx.send(clusters[1].clone()).await.unwrap();
    drop(other_tx);
    let other = other.await.unwrap();
    assert_ack_lifecycle(&other, 2);
    let report = streamvault::check::check(dd.index.as_ref(), &dd.store, true)
        .await
        .unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = TestServer::start().await;
    create(&srv, "cont", 24).await;
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let host = srv.addr.to_string();
    let sig = sign_with(
        TEST_KEY,
        "POST",
        &host,
        "/putMedia",
        &[
            ("transfer-encoding", "chunked"),
            ("x-amzn-stream-name", "cont"),
        ],
        streamvault::auth::sigv4::EMPTY_SHA256,
        std::time::SystemTime::now(),
    );
    let sig: String = sig.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let req = format!(
        "POST /putMedia HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\nx-amzn-stream-name: cont\r\n{sig}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf))
        .await
        .expect("100 Continue within 500 ms")
        .unwrap();
    assert!(
        std::str::from_utf8(&buf[..n])
            .unwrap()
            .starts_with("HTTP/1.1 100"),
        "{:?}",
        std::str::from_utf8(&buf[..n])
    );
    srv.stop().await.unwrap();
}

/// Bad bodies get the documented ErrorId; the server and a concurrent healthy upload on
/// another stream are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_error_acks_and_harm_nothing_else() {
    let Some(good) = shared_media("kvs-captures/producer-sdk-test-stream-1_0.mkv") else {
        return;
    };
    let srv = TestServer::start().await;
    create(&srv, "healthy", 24).await;
    // A healthy upload, paced, running the whole time.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let addr = srv.addr;
    let healthy = tokio::spawn(async move {
        put_media_stream(
            addr,
            &[
                ("x-amzn-stream-name", "healthy"),
                ("x-amzn-fragment-timecode-type", "ABSOLUTE"),
            ],
            rx,
        )
        .await
    });
    let pieces: Vec<Vec<u8>> = good
        .chunks(good.len() / 40 + 1)
        .map(|c| c.to_vec())
        .collect();
    let feeder = tokio::spawn(async move {
        for p in pieces {
            tx.send(p).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    let sdk = shared_media("kvs-captures/producer-sdk-test-stream-1_0.mkv").unwrap();
    let mut cases: Vec<(String, Vec<u8>, Vec<i64>)> = Vec::new();
    // Generated bad inputs.
    let mut wrong_magic = sdk.clone();
    wrong_magic[3] ^= 0xFF;
    cases.push(("wrong EBML magic".into(), wrong_magic, vec![4006]));
    let truncated = sample("h264_truncated.mkv");
    cases.push(("truncated mid-block".into(), truncated, vec![4006]));
    cases.push((
        "block for track 9".into(),
        synth::block_for_track_9(),
        vec![4010],
    ));
    cases.push((
        "cluster timecode backwards".into(),
        synth::backwards(),
        vec![4004],
    ));
    cases.push((
        "51 MB cluster".into(),
        synth::big_cluster(51 << 20),
        vec![4001],
    ));
    cases.push(("4-track header".into(), synth::four_tracks(), vec![4012]));
    // The third-party malformed corpus.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/media/malformed");
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if !n.starts_with("LICENSE") {
                cases.push((n, std::fs::read(e.path()).unwrap(), vec![]));
            }
        }
    }
    for (i, (what, body, want)) in cases.iter().enumerate() {
        let name = format!("bad-{i}");
        create(&srv, &name, 24).await;
        let r = put_media(
            srv.addr,
            &[
                ("x-amzn-stream-name", &name),
                ("x-amzn-fragment-timecode-type", "ABSOLUTE"),
            ],
            body,
            65536,
        )
        .await;
        assert_eq!(r.status, 200, "{what}");
        let ids = r.error_ids();
        if want.is_empty() {
            // Third-party files: an error, or only whole fragments persisted.
            assert!(
                !ids.is_empty() || !r.events("PERSISTED").is_empty(),
                "{what}: {:?}",
                r.acks
            );
        } else {
            assert!(
                want.iter().all(|w| ids.contains(w)),
                "{what}: want {want:?} got {ids:?}"
            );
        }
        // Whatever was PERSISTED reads back.
        let dd = DataDir::open(&srv.data_dir).await;
        for (row, bytes) in dd.fragments(&name).await {
            assert!(
                !frames_of(&bytes).is_empty(),
                "{what}: fragment {} unreadable",
                row.seq
            );
        }
        assert_eq!(
            dd.fragments(&name).await.len(),
            r.events("PERSISTED").len(),
            "{what}"
        );
    }
    feeder.await.unwrap();
    let h = healthy.await.unwrap();
    assert_ack_lifecycle(&h, 37);
    assert!(h.error_ids().is_empty());
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_zero_never_persists() {
    let Some(src) = shared_media("kvs-captures/producer-c-1.6.4-putmedia.mkv") else {
        return;
    };
    let srv = TestServer::start().await;
    create(&srv, "live-only", 0).await;
    let r = put_media(
        srv.addr,
        &[
            ("x-amzn-stream-name", "live-only"),
            ("x-amzn-fragment-timecode-type", "ABSOLUTE"),
        ],
        &src,
        4096,
    )
    .await;
    assert_eq!(r.events("BUFFERING").len(), 7);
    assert_eq!(r.events("RECEIVED").len(), 7);
    assert!(r.events("PERSISTED").is_empty());
    let dd = DataDir::open(&srv.data_dir).await;
    assert!(dd.fragments("live-only").await.is_empty());
    assert!(
        dd.store.list(None).await.unwrap().is_empty()
            && dd.store.list_segments().await.unwrap().is_empty(),
        "nothing at rest for retention 0"
    );
    srv.stop().await.unwrap();
}

/// Synthetic bad bodies.
mod synth {
    use bytes::Bytes;
    use streamvault::mkv::{ids, writer};

    fn header(tracks: u64) -> Vec<u8> {
        let mut body = Vec::new();
        writer::write_ebml_header(&mut body, "matroska");
        writer::segment_header_unknown(&mut body);
        let mut info = Vec::new();
        writer::write_uint(&mut info, ids::TIMECODE_SCALE, 1_000_000);
        writer::write_element(&mut body, ids::INFO, &info);
        let mut t = Vec::new();
        for n in 1..=tracks {
            let mut e = Vec::new();
            writer::write_uint(&mut e, ids::TRACK_NUMBER, n);
            writer::write_uint(&mut e, ids::TRACK_UID, n);
            writer::write_uint(&mut e, ids::TRACK_TYPE, if n == 1 { 1 } else { 2 });
            writer::write_string(
                &mut e,
                ids::CODEC_ID,
                if n == 1 { "V_MPEG4/ISO/AVC" } else { "A_AAC" },
            );
            writer::write_element(&mut t, ids::TRACK_ENTRY, &e);
        }
        writer::write_element(&mut body, ids::TRACKS, &t);
        body
    }

    fn block(track: u8, rel: i16, key: bool, len: usize) -> Bytes {
        let mut b = vec![0x80 | track];
        b.extend_from_slice(&rel.to_be_bytes());
        b.push(if key { 0x80 } else { 0 });
        b.extend(std::iter::repeat_n(0x42, len));
        let mut el = Vec::new();
        writer::write_element(&mut el, 0xA3, &b);
        Bytes::from(el)
    }

    fn cluster(out: &mut Vec<u8>, tc: u64, blocks: &[Bytes]) {
        out.extend(writer::build_cluster(tc, blocks));
    }

    pub fn block_for_track_9() -> Vec<u8> {
        let mut b = header(1);
        cluster(
            &mut b,
            0,
            &[block(1, 0, true, 100), block(1, 33, false, 100)],
        );
        cluster(
            &mut b,
            1000,
            &[block(1, 0, true, 100), block(9, 33, false, 100)],
        );
        b
    }

    pub fn backwards() -> Vec<u8> {
        let mut b = header(1);
        cluster(&mut b, 5000, &[block(1, 0, true, 100)]);
        cluster(&mut b, 1000, &[block(1, 0, true, 100)]);
        b
    }

    pub fn big_cluster(bytes: usize) -> Vec<u8> {
        let mut b = header(1);
        let per = 1 << 20;
        let blocks: Vec<Bytes> = (0..bytes / per)
            .map(|i| block(1, i as i16, i == 0, per))
            .collect();
        cluster(&mut b, 0, &blocks);
        b
    }

    pub fn four_tracks() -> Vec<u8> {
        let mut b = header(4);
        cluster(&mut b, 0, &[block(1, 0, true, 10)]);
        b
    }
}
