//! The end of data, and data stored once: retention with a simulated clock (expired
//! fragments are invisible to every read API before they are deleted, then deleted by
//! the crash-safe protocol), UpdateDataRetention DECREASE, the size cap, DeleteStream,
//! and idempotent re-upload. See "What each test proves" in docs/design/storage.md.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesisvideo::types::UpdateDataRetentionOperation;
use aws_sdk_kinesisvideoarchivedmedia::types::{
    FragmentSelector, FragmentSelectorType, TimestampRange,
};
use aws_sdk_kinesisvideomedia::types::{StartSelector, StartSelectorType};
use aws_smithy_types::DateTime;
use common::*;
use streamvault::clock::ManualClock;

const H: i64 = 3_600_000;
/// Simulated start: 2026-11-25.
const T0: i64 = 1_795_600_000_000;

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

fn start_header(ms: i64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// Uploads `body` with a producer start timestamp; asserts no ERROR ack.
async fn upload(srv: &TestServer, stream: &str, body: &[u8], start_ms: i64) -> PutResult {
    let start = start_header(start_ms);
    let r = put_media(
        srv.addr,
        &[
            ("x-amzn-stream-name", stream),
            ("x-amzn-producer-start-timestamp", start.as_str()),
        ],
        body,
        65536,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.error_ids().is_empty(), "{:?}", r.acks);
    r
}

fn numbers(r: &PutResult, kind: &str) -> Vec<String> {
    r.events(kind)
        .iter()
        .map(|a| a["FragmentNumber"].as_str().unwrap().to_owned())
        .collect()
}

/// Uploads one fragment (the sample's header + one cluster); returns its number.
async fn upload_one(
    srv: &TestServer,
    stream: &str,
    header: &[u8],
    cluster: &[u8],
    start_ms: i64,
) -> String {
    let mut body = header.to_vec();
    body.extend_from_slice(cluster);
    let r = upload(srv, stream, &body, start_ms).await;
    let p = numbers(&r, "PERSISTED");
    assert_eq!(p.len(), 1, "{:?}", r.acks);
    p[0].clone()
}

async fn stream_id(dd: &DataDir, name: &str) -> String {
    dd.index
        .get_stream(&streamvault::model::StreamName::parse(name).unwrap())
        .await
        .unwrap()
        .unwrap()
        .stream_id
}

/// Fragment numbers ListFragments returns for a server-timestamp range (all pages).
async fn list_numbers(srv: &TestServer, stream: &str, kind: FragmentSelectorType) -> Vec<String> {
    let am = srv.archived().await;
    let sel = FragmentSelector::builder()
        .fragment_selector_type(kind)
        .timestamp_range(
            TimestampRange::builder()
                .start_timestamp(DateTime::from_millis(T0 - 100 * H))
                .end_timestamp(DateTime::from_millis(T0 + 1000 * H))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut req = am.list_fragments().stream_name(stream).max_results(7);
        req = match &token {
            Some(t) => req.next_token(t),
            None => req.fragment_selector(sel.clone()),
        };
        let page = req.send().await.unwrap();
        out.extend(
            page.fragments()
                .iter()
                .map(|f| f.fragment_number().unwrap().to_owned()),
        );
        match page.next_token() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    out.sort();
    out
}

/// Fragment numbers of the chunks a GetMedia session returns within `wait`.
async fn get_media_numbers(srv: &TestServer, stream: &str, sel: StartSelector) -> Vec<String> {
    let out = srv
        .media()
        .await
        .get_media()
        .stream_name(stream)
        .start_selector(sel)
        .send()
        .await
        .unwrap();
    let mut payload = out.payload;
    let (p, _) = read_chunks(&mut payload, usize::MAX, Duration::from_millis(1500)).await;
    p.chunks
        .iter()
        .filter_map(|c| c.tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER").map(str::to_owned))
        .collect()
}

/// One fragment per simulated hour at hours `hours`; returns the numbers in order.
async fn upload_hourly(
    srv: &TestServer,
    clock: &ManualClock,
    stream: &str,
    hours: impl Iterator<Item = i64>,
) -> Vec<(i64, String)> {
    let (header, clusters) = split_sample(&sample("h264_720p_gop1s.mkv"));
    let mut out = Vec::new();
    for h in hours {
        clock.set_ms(T0 + h * H);
        let c = &clusters[h as usize % clusters.len()];
        out.push((h, upload_one(srv, stream, &header, c, T0 + h * H).await));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_24h_keeps_24h_and_drops_the_rest_hidden_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (srv, tasks) = TestServer::start_built(
        tmp.path().to_owned(),
        |s| {
            s.ingest.max_connections_per_stream = 4;
            // Only explicit passes delete: what reads see before that is the filter.
            s.retention.interval = Duration::from_secs(3600);
        },
        |b| b.with_clock(Arc::new(clock.clone())),
    )
    .await;
    create(&srv, "ret", 24).await;
    let up = upload_hourly(&srv, &clock, "ret", 0..48).await;
    clock.set_ms(T0 + 48 * H);
    // Cutoff T0 + 24 h: hours 24..47 are kept (24 h of data), 0..23 are expired.
    let kept: Vec<String> = up
        .iter()
        .filter(|(h, _)| *h >= 24)
        .map(|(_, n)| n.clone())
        .collect();
    let expired: Vec<String> = up
        .iter()
        .filter(|(h, _)| *h < 24)
        .map(|(_, n)| n.clone())
        .collect();
    assert_eq!((kept.len(), expired.len()), (24, 24));

    // Before any deletion: all 48 rows and objects are still there...
    let dd = DataDir::open(tmp.path()).await;
    let sid = stream_id(&dd, "ret").await;
    assert_eq!(dd.fragments("ret").await.len(), 48);
    // One segment per simulated hour: the open one closes at `store.segment_max_age`.
    assert!(dd.store.list(Some(&sid)).await.unwrap().is_empty());
    dd.wait_segments(48).await;
    // ...but no read API returns an expired fragment.
    assert_eq!(
        list_numbers(&srv, "ret", FragmentSelectorType::ServerTimestamp).await,
        kept
    );
    assert_eq!(
        list_numbers(&srv, "ret", FragmentSelectorType::ProducerTimestamp).await,
        kept
    );
    let sel = |t: StartSelectorType| StartSelector::builder().start_selector_type(t);
    let earliest = get_media_numbers(
        &srv,
        "ret",
        sel(StartSelectorType::Earliest).build().unwrap(),
    )
    .await;
    assert_eq!(
        earliest, kept,
        "GetMedia EARLIEST starts at the oldest kept fragment"
    );
    let after_expired = get_media_numbers(
        &srv,
        "ret",
        sel(StartSelectorType::FragmentNumber)
            .after_fragment_number(&expired[3])
            .build()
            .unwrap(),
    )
    .await;
    assert_eq!(after_expired, kept);
    let by_ts = get_media_numbers(
        &srv,
        "ret",
        sel(StartSelectorType::ProducerTimestamp)
            .start_timestamp(DateTime::from_millis(T0))
            .build()
            .unwrap(),
    )
    .await;
    assert_eq!(by_ts, kept);
    let am = srv.archived().await;
    for n in [&expired[0], &expired[23]] {
        let e = am
            .get_media_for_fragment_list()
            .stream_name("ret")
            .fragments(n)
            .send()
            .await
            .unwrap_err()
            .into_service_error();
        assert!(e.is_resource_not_found_exception(), "{e:?}");
    }
    let ok = am
        .get_media_for_fragment_list()
        .stream_name("ret")
        .fragments(&kept[0])
        .fragments(&kept[23])
        .send()
        .await
        .unwrap();
    let mut p = ChunkParser::default();
    p.push(&ok.payload.collect().await.unwrap().into_bytes());
    p.finish();
    assert_eq!(p.chunks.len(), 2);

    // One retention pass: exactly the expired fragments go, rows and objects.
    tasks.retention_pass().await;
    let left = dd.fragments("ret").await;
    assert_eq!(left.len(), 24);
    assert!(left.iter().all(|(r, _)| r.server_ts_ms >= T0 + 24 * H));
    dd.wait_segments(24).await;
    assert!(dd.index.list_garbage(10).await.unwrap().is_empty());
    let report = streamvault::check::check(dd.index.as_ref(), &dd.store, true)
        .await
        .unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert!(report.unreferenced_objects.is_empty());

    // A day later everything is past retention.
    clock.set_ms(T0 + 72 * H);
    assert!(
        list_numbers(&srv, "ret", FragmentSelectorType::ServerTimestamp)
            .await
            .is_empty()
    );
    tasks.retention_pass().await;
    assert!(dd.fragments("ret").await.is_empty());
    dd.wait_segments(0).await;
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrease_48_to_24_drops_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (srv, _tasks) = TestServer::start_built(
        tmp.path().to_owned(),
        |s| {
            s.ingest.max_connections_per_stream = 4;
            // No periodic pass during the test: only DECREASE's trigger can delete.
            s.retention.interval = Duration::from_secs(3600);
        },
        |b| b.with_clock(Arc::new(clock.clone())),
    )
    .await;
    create(&srv, "dec", 48).await;
    let up = upload_hourly(&srv, &clock, "dec", (0..48).step_by(3)).await;
    clock.set_ms(T0 + 48 * H);
    let all: Vec<String> = up.iter().map(|(_, n)| n.clone()).collect();
    assert_eq!(
        list_numbers(&srv, "dec", FragmentSelectorType::ServerTimestamp).await,
        all
    );

    let control = srv.control().await;
    let version = control
        .describe_stream()
        .stream_name("dec")
        .send()
        .await
        .unwrap()
        .stream_info()
        .unwrap()
        .version()
        .unwrap()
        .to_owned();
    control
        .update_data_retention()
        .stream_name("dec")
        .current_version(version)
        .operation(UpdateDataRetentionOperation::DecreaseDataRetention)
        .data_retention_change_in_hours(24)
        .send()
        .await
        .unwrap();
    // Reads see the new retention at once.
    let kept: Vec<String> = up
        .iter()
        .filter(|(h, _)| *h >= 24)
        .map(|(_, n)| n.clone())
        .collect();
    assert_eq!(kept.len(), 8);
    assert_eq!(
        list_numbers(&srv, "dec", FragmentSelectorType::ServerTimestamp).await,
        kept
    );
    assert_eq!(
        get_media_numbers(
            &srv,
            "dec",
            StartSelector::builder()
                .start_selector_type(StartSelectorType::Earliest)
                .build()
                .unwrap()
        )
        .await,
        kept
    );
    // And the data goes without waiting for the hourly pass: DECREASE triggered one.
    let dd = DataDir::open(tmp.path()).await;
    let sid = stream_id(&dd, "dec").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let _ = &sid;
        let objects = dd.segment_count().await;
        if dd.fragments("dec").await.len() == 8 && objects == 8 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "DECREASE did not delete the expired fragments: objects={objects}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_cap_drops_oldest_first_but_never_young_fragments() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (header, clusters) = split_sample(&sample("h264_720p_gop1s.mkv"));
    let biggest = clusters.iter().map(Vec::len).max().unwrap() as u64;
    let (srv, tasks) = TestServer::start_built(
        tmp.path().to_owned(),
        |s| {
            s.ingest.max_connections_per_stream = 4;
            s.retention.interval = Duration::from_secs(3600);
            // Room for about three fragments.
            s.retention.max_stream_bytes = 3 * biggest + 200;
            s.retention.min_age = Duration::from_secs(600);
        },
        |b| b.with_clock(Arc::new(clock.clone())),
    )
    .await;
    create(&srv, "cap", 24 * 30).await;
    let mut nums = Vec::new();
    for i in 0..8i64 {
        // One fragment per simulated hour, except the last two: one minute apart.
        let t = if i < 6 {
            T0 + i * H
        } else {
            T0 + 5 * H + (i - 5) * 60_000
        };
        clock.set_ms(t);
        nums.push(upload_one(&srv, "cap", &header, &clusters[i as usize], t).await);
    }
    // Now is one minute after the last: the last three are younger than 10 min.
    clock.set_ms(T0 + 5 * H + 4 * 60_000);
    tasks.retention_pass().await;
    let dd = DataDir::open(tmp.path()).await;
    let left: Vec<u64> = dd
        .fragments("cap")
        .await
        .iter()
        .map(|(r, _)| r.seq)
        .collect();
    let bytes: u64 = dd
        .fragments("cap")
        .await
        .iter()
        .map(|(r, _)| r.object_size)
        .sum();
    assert!(bytes <= 3 * biggest + 200, "under the cap: {bytes}");
    assert!(left.len() >= 3, "{left:?}");
    let all: Vec<u64> = nums
        .iter()
        .map(|n| {
            streamvault::model::FragmentNumber::parse(n)
                .unwrap()
                .unwrap()
                .seq
        })
        .collect();
    assert_eq!(left, all[all.len() - left.len()..], "the oldest went first");
    // A segment goes when none of its fragments is left (I9).
    let live: std::collections::BTreeSet<String> = dd
        .fragments("cap")
        .await
        .into_iter()
        .map(|(r, _)| r.object_key)
        .collect();
    let on_disk: std::collections::BTreeSet<String> = dd
        .store
        .list_segments()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(live.is_subset(&on_disk));

    // Lower the cap below the young fragments: they stay until they are old enough.
    srv.stop().await.unwrap();
    let (srv, tasks) = TestServer::start_built(
        tmp.path().to_owned(),
        |s| {
            s.retention.interval = Duration::from_secs(3600);
            s.retention.max_stream_bytes = 1;
            s.retention.min_age = Duration::from_secs(600);
        },
        |b| b.with_clock(Arc::new(clock.clone())),
    )
    .await;
    tasks.retention_pass().await;
    let young = dd.fragments("cap").await;
    assert_eq!(
        young.len(),
        3,
        "fragments younger than retention.min_age are never deleted"
    );
    clock.advance_ms(11 * 60_000);
    tasks.retention_pass().await;
    assert!(dd.fragments("cap").await.is_empty());
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_stream_unreadable_at_once_swept_after_and_recreated_sees_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (srv, tasks) = TestServer::start_built(
        tmp.path().to_owned(),
        |s| s.gc.interval = Duration::from_secs(3600),
        |b| b,
    )
    .await;
    create(&srv, "del", 24).await;
    let src = sample("h264_720p_gop1s.mkv");
    let r = upload(&srv, "del", &src, 1_795_600_000_000).await;
    let old = numbers(&r, "PERSISTED");
    assert_eq!(old.len(), 10);
    let dd = DataDir::open(tmp.path()).await;
    let old_id = stream_id(&dd, "del").await;
    assert_eq!(dd.segment_count().await, 1, "one upload, one open segment");

    let control = srv.control().await;
    let arn = control
        .describe_stream()
        .stream_name("del")
        .send()
        .await
        .unwrap()
        .stream_info()
        .unwrap()
        .stream_arn()
        .unwrap()
        .to_owned();
    control
        .delete_stream()
        .stream_arn(&arn)
        .send()
        .await
        .unwrap();
    // Unreadable at once: no API finds the stream, no row or key is left.
    let e = control
        .describe_stream()
        .stream_name("del")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(e.is_resource_not_found_exception(), "{e:?}");
    let e = srv
        .archived()
        .await
        .get_media_for_fragment_list()
        .stream_name("del")
        .fragments(&old[0])
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(e.is_resource_not_found_exception(), "{e:?}");
    assert!(dd.index.get_stream_by_id(&old_id).await.unwrap().is_none());
    assert!(
        dd.index
            .fragments_after(&old_id, None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // The sweep removes the objects (and the stream's directory).
    tasks.sweep().await;
    assert!(dd.store.list(Some(&old_id)).await.unwrap().is_empty());
    assert!(dd.index.list_garbage(10).await.unwrap().is_empty());
    assert!(!tmp.path().join("objects/streams").join(&old_id).exists());

    // Same name again: a new stream that sees nothing of the old one.
    create(&srv, "del", 24).await;
    let new_id = stream_id(&dd, "del").await;
    assert_ne!(new_id, old_id);
    assert!(
        get_media_numbers(
            &srv,
            "del",
            StartSelector::builder()
                .start_selector_type(StartSelectorType::Earliest)
                .build()
                .unwrap()
        )
        .await
        .is_empty()
    );
    assert!(
        list_numbers(&srv, "del", FragmentSelectorType::ServerTimestamp)
            .await
            .is_empty()
    );
    let am = srv.archived().await;
    let listed = am
        .list_fragments()
        .stream_name("del")
        .fragment_selector(
            FragmentSelector::builder()
                .fragment_selector_type(FragmentSelectorType::ProducerTimestamp)
                .timestamp_range(
                    TimestampRange::builder()
                        .start_timestamp(DateTime::from_millis(0))
                        .end_timestamp(DateTime::from_millis(4_000_000_000_000))
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert!(listed.fragments().is_empty());
    let e = am
        .get_media_for_fragment_list()
        .stream_name("del")
        .fragments(&old[0])
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        e.is_resource_not_found_exception() || e.is_invalid_argument_exception(),
        "{e:?}"
    );
    // An upload of the same bytes is new data for the new stream (no dedupe across
    // incarnations).
    let r = upload(&srv, "del", &src, 1_795_600_000_000).await;
    assert_eq!(numbers(&r, "PERSISTED"), numbers(&r, "BUFFERING"));
    assert_eq!(dd.fragments("del").await.len(), 10);
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_sample_twice_is_stored_once_with_the_same_persisted_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let (srv, _tasks) = TestServer::start_built(
        tmp.path().to_owned(),
        |s| s.ingest.max_connections_per_stream = 4,
        |b| b,
    )
    .await;
    create(&srv, "dup", 24).await;
    let src = sample("h264_720p_gop1s.mkv");
    let start = 1_795_600_000_000;
    let first = upload(&srv, "dup", &src, start).await;
    let second = upload(&srv, "dup", &src, start).await;
    let p1 = numbers(&first, "PERSISTED");
    let p2 = numbers(&second, "PERSISTED");
    assert_eq!(p1.len(), 10);
    assert_eq!(
        p1, p2,
        "the re-upload is acknowledged with the original numbers"
    );
    assert_eq!(p1, numbers(&first, "BUFFERING"));
    // The re-upload's BUFFERING/RECEIVED numbers were allocated before its fragments were
    // complete: new, higher, and never stored (I3 skips them).
    let b2 = numbers(&second, "BUFFERING");
    assert!(b2.iter().all(|n| n > p1.last().unwrap()), "{b2:?}");
    // The producer matches acks by FragmentTimecode: every PERSISTED has the timecode
    // of a fragment of this upload.
    let tc = |r: &PutResult, k: &str| -> Vec<u64> {
        r.events(k)
            .iter()
            .map(|a| a["FragmentTimecode"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(tc(&second, "PERSISTED"), tc(&second, "BUFFERING"));

    let dd = DataDir::open(tmp.path()).await;
    let stored = dd.fragments("dup").await;
    assert_eq!(stored.len(), 10, "each fragment stored once");
    let sid = stream_id(&dd, "dup").await;
    let places: std::collections::BTreeSet<(String, u64)> = stored
        .iter()
        .map(|(r, _)| (r.object_key.clone(), r.object_offset.unwrap()))
        .collect();
    assert_eq!(places.len(), 10, "ten rows, ten places");
    assert!(dd.store.list(Some(&sid)).await.unwrap().is_empty());
    for ((row, bytes), (_, cluster)) in stored.iter().zip(clusters_of(&src)) {
        assert_eq!(&bytes[..], &cluster[..]);
        assert_eq!(streamvault::check::content_hash(bytes), row.content_hash);
    }

    // Same timestamp, different bytes: a new fragment, as on AWS.
    let (header, clusters) = split_sample(&src);
    let mut body = header.clone();
    let mut changed = clusters[0].clone();
    let last = changed.len() - 1;
    changed[last] ^= 0x01; // inside the last frame's payload
    body.extend_from_slice(&changed);
    let third = upload(&srv, "dup", &body, start).await;
    let p3 = numbers(&third, "PERSISTED");
    assert_eq!(p3, numbers(&third, "BUFFERING"));
    assert!(!p1.contains(&p3[0]));
    assert_eq!(dd.fragments("dup").await.len(), 11);
    let report = streamvault::check::check(dd.index.as_ref(), &dd.store, true)
        .await
        .unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    srv.stop().await.unwrap();

    // With the window off, every upload is new data.
    let tmp2 = tempfile::tempdir().unwrap();
    let (srv, _t) = TestServer::start_built(
        tmp2.path().to_owned(),
        |s| {
            s.ingest.max_connections_per_stream = 4;
            s.ingest.dedupe_window = Duration::ZERO;
        },
        |b| b,
    )
    .await;
    create(&srv, "nodup", 24).await;
    let mut body = header.clone();
    body.extend_from_slice(&clusters[0]);
    body.extend_from_slice(&clusters[1]);
    let a = upload(&srv, "nodup", &body, start).await;
    let b = upload(&srv, "nodup", &body, start).await;
    assert_ne!(numbers(&a, "PERSISTED"), numbers(&b, "PERSISTED"));
    assert_eq!(
        DataDir::open(tmp2.path())
            .await
            .fragments("nodup")
            .await
            .len(),
        4
    );
    srv.stop().await.unwrap();
}

/// The bound of `docs/design/storage.md` ("How long deleted bytes stay on disk"): the
/// bytes of a deleted stream and of expired fragments leave the disk once their segment
/// dies — at most `store.segment_max_age` + the class bound (here 1 h) + one retention
/// pass after the segment opened — while a long-retention stream, in its own class's
/// segment, does not pin them. DeleteStream makes the bytes unreadable at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_bytes_of_deleted_and_expired_data_leave_the_disk_within_the_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (srv, tasks) = TestServer::start_built(
        tmp.path().to_owned(),
        |s| {
            s.ingest.max_connections_per_stream = 4;
            s.retention.interval = Duration::from_secs(3600);
            s.gc.interval = Duration::from_secs(3600);
        },
        |b| b.with_clock(Arc::new(clock.clone())),
    )
    .await;
    let max_age = streamvault::config::Settings::default()
        .store
        .segment_max_age;
    create(&srv, "gone", 1).await;
    create(&srv, "short", 1).await;
    create(&srv, "long", 24 * 365).await;
    let src = sample("h264_720p_gop1s.mkv");
    upload(&srv, "gone", &src, T0).await;
    upload(&srv, "short", &src, T0).await;
    upload(&srv, "long", &src, T0).await;
    let dd = DataDir::open(tmp.path()).await;
    let key_of = |rows: &Vec<(streamvault::index::FragmentRecord, bytes::Bytes)>| {
        let keys: std::collections::BTreeSet<String> =
            rows.iter().map(|(r, _)| r.object_key.clone()).collect();
        assert_eq!(keys.len(), 1, "{keys:?}");
        keys.into_iter().next().unwrap()
    };
    let shared = key_of(&dd.fragments("gone").await);
    assert_eq!(
        key_of(&dd.fragments("short").await),
        shared,
        "same class, same segment"
    );
    let long = key_of(&dd.fragments("long").await);
    assert!(shared.starts_with("segments/r1h/"), "{shared}");
    assert!(long.starts_with("segments/r1y/"), "{long}");
    let path = |k: &str| tmp.path().join("objects").join(k);

    // DeleteStream: unreadable at once (no row, no key), the bytes stay in the shared
    // segment, which still holds live fragments of another stream.
    let gone_id = stream_id(&dd, "gone").await;
    let control = srv.control().await;
    control
        .delete_stream()
        .stream_arn(arn(&srv, "gone").await)
        .send()
        .await
        .unwrap();
    assert!(dd.index.get_stream_by_id(&gone_id).await.unwrap().is_none());
    assert!(
        dd.index
            .fragments_after(&gone_id, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    tasks.sweep().await;
    assert!(
        path(&shared).exists(),
        "live fragments of `short` keep the segment"
    );

    // Within the bound: the class bound plus the segment's open period plus one pass.
    clock.set_ms(T0 + H + max_age.as_millis() as i64 + 1000);
    tasks.retention_pass().await;
    assert!(dd.fragments("short").await.is_empty());
    let t0 = std::time::Instant::now();
    while path(&shared).exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "segment still on disk"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(path(&long).exists(), "long retention keeps its own segment");
    assert_eq!(dd.fragments("long").await.len(), 10);
    let report = streamvault::check::check(dd.index.as_ref(), &dd.store, true)
        .await
        .unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    srv.stop().await.unwrap();
}

async fn arn(srv: &TestServer, name: &str) -> String {
    srv.control()
        .await
        .describe_stream()
        .stream_name(name)
        .send()
        .await
        .unwrap()
        .stream_info()
        .unwrap()
        .stream_arn()
        .unwrap()
        .to_owned()
}
