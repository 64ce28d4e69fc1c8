//! Consumers end to end through the AWS SDK for Rust: GetMedia (every start selector,
//! resumption, live tail), ListFragments paging, GetMediaForFragmentList, and the GetMedia
//! layout compared with real AWS output.

mod common;

use std::time::Duration;

use aws_sdk_kinesisvideoarchivedmedia::types::{
    FragmentSelector, FragmentSelectorType, TimestampRange,
};
use aws_sdk_kinesisvideomedia::types::{StartSelector, StartSelectorType};
use aws_smithy_types::DateTime;
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

async fn upload(srv: &TestServer, name: &str, body: &[u8]) -> PutResult {
    let r = put_media(
        srv.addr,
        &[
            ("x-amzn-stream-name", name),
            ("x-amzn-producer-start-timestamp", "1795600000"),
        ],
        body,
        65536,
    )
    .await;
    assert!(r.error_ids().is_empty(), "{:?}", r.error_ids());
    r
}

fn selector(
    kind: StartSelectorType,
) -> aws_sdk_kinesisvideomedia::types::builders::StartSelectorBuilder {
    StartSelector::builder().start_selector_type(kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_media_earliest_returns_the_source_frames() {
    let srv = TestServer::start().await;
    create(&srv, "cam", 24).await;
    let src = sample("h264_aac_720p_gop1s.mkv");
    let r = upload(&srv, "cam", &src).await;
    let n = r.events("PERSISTED").len();
    assert_eq!(n, 10);
    let out = srv
        .media()
        .await
        .get_media()
        .stream_name("cam")
        .start_selector(selector(StartSelectorType::Earliest).build().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(out.content_type(), Some("video/webm"));
    let mut payload = out.payload;
    let (p, raw) = read_chunks(&mut payload, n, Duration::from_secs(20)).await;
    assert_eq!(p.complete(), n);
    let got: Vec<_> = p.chunks.iter().flat_map(|c| c.frames.clone()).collect();
    let want = frames_of(&src);
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!((g.0, g.1, g.2), (w.0, w.1, w.2), "frame {i}");
        assert!(g.3 == w.3, "frame {i} bytes");
    }
    // Chunks carry increasing fragment numbers; the continuation token equals each.
    let nums: Vec<&str> = p
        .chunks
        .iter()
        .map(|c| c.tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER").unwrap())
        .collect();
    assert!(nums.windows(2).all(|w| w[0] < w[1]));
    for c in &p.chunks {
        assert_eq!(
            c.tag("AWS_KINESISVIDEO_CONTINUATION_TOKEN"),
            c.tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER")
        );
    }

    // ffprobe reads the saved response and counts the source's frames.
    if have_tool("ffprobe") {
        let dir = tempfile::tempdir().unwrap();
        let saved = dir.path().join("getmedia.mkv");
        let srcp = dir.path().join("src.mkv");
        std::fs::write(&saved, &raw).unwrap();
        std::fs::write(&srcp, &src).unwrap();
        let count = |p: &std::path::Path| {
            let o = std::process::Command::new("ffprobe")
                .args([
                    "-v",
                    "error",
                    "-count_packets",
                    "-show_entries",
                    "stream=codec_type,nb_read_packets",
                    "-of",
                    "csv=p=0",
                ])
                .arg(p)
                .output()
                .unwrap();
            let mut lines: Vec<String> = String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_owned)
                .collect();
            lines.sort();
            lines
        };
        let (a, b) = (count(&saved), count(&srcp));
        assert_eq!(a, b, "ffprobe packet counts of GetMedia output vs source");
        assert!(a.iter().any(|l| l.starts_with("video,300")), "{a:?}");
    }
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumption_by_token_and_fragment_number_has_no_gap_or_duplicate() {
    let srv = TestServer::start().await;
    create(&srv, "res", 24).await;
    upload(&srv, "res", &sample("h264_720p_gop1s.mkv")).await;
    let media = srv.media().await;
    let read = |sel: StartSelector, n: usize| {
        let media = media.clone();
        async move {
            let out = media
                .get_media()
                .stream_name("res")
                .start_selector(sel)
                .send()
                .await
                .unwrap();
            let mut payload = out.payload;
            read_chunks(&mut payload, n, Duration::from_secs(20))
                .await
                .0
        }
    };
    let all = read(selector(StartSelectorType::Earliest).build().unwrap(), 10).await;
    let nums: Vec<String> = all
        .chunks
        .iter()
        .map(|c| {
            c.tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER")
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(nums.len(), 10);
    // A reader that dropped after 4 chunks resumes with its last continuation token...
    let first = read(selector(StartSelectorType::Earliest).build().unwrap(), 4).await;
    let token = first.chunks[3]
        .tag("AWS_KINESISVIDEO_CONTINUATION_TOKEN")
        .unwrap()
        .to_owned();
    let rest = read(
        selector(StartSelectorType::ContinuationToken)
            .continuation_token(&token)
            .build()
            .unwrap(),
        6,
    )
    .await;
    let mut seen: Vec<String> = first.chunks[..4]
        .iter()
        .map(|c| {
            c.tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER")
                .unwrap()
                .to_owned()
        })
        .collect();
    seen.extend(rest.chunks.iter().map(|c| {
        c.tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER")
            .unwrap()
            .to_owned()
    }));
    assert_eq!(seen, nums, "continuation token: no gap, no duplicate");
    // ...or with the last fragment number it saw.
    let rest = read(
        selector(StartSelectorType::FragmentNumber)
            .after_fragment_number(&nums[6])
            .build()
            .unwrap(),
        3,
    )
    .await;
    let tail: Vec<String> = rest
        .chunks
        .iter()
        .map(|c| {
            c.tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER")
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(tail, nums[7..].to_vec());
    // Timestamp selectors start at the fragment containing the instant.
    let rest = read(
        selector(StartSelectorType::ProducerTimestamp)
            .start_timestamp(DateTime::from_millis(1_795_600_000_000 + 2_500))
            .build()
            .unwrap(),
        1,
    )
    .await;
    assert_eq!(
        rest.chunks[0]
            .tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER")
            .unwrap(),
        nums[2]
    );
    assert_eq!(
        rest.chunks[0]
            .tag("AWS_KINESISVIDEO_PRODUCER_TIMESTAMP")
            .unwrap(),
        "1795600002.000"
    );
    // Bad selectors are refused before the stream starts.
    let err = media
        .get_media()
        .stream_name("res")
        .start_selector(selector(StartSelectorType::FragmentNumber).build().unwrap())
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_invalid_argument_exception(), "{err:?}");
    let err = media
        .get_media()
        .stream_name("nope")
        .start_selector(selector(StartSelectorType::Now).build().unwrap())
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_resource_not_found_exception(), "{err:?}");
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_fragments_pages_2500_fragments_exactly_once() {
    let srv = TestServer::start().await;
    create(&srv, "many", 24).await;
    let body = synth_many_fragments(2500);
    let r = put_media(
        srv.addr,
        &[
            ("x-amzn-stream-name", "many"),
            ("x-amzn-fragment-timecode-type", "ABSOLUTE"),
        ],
        &body,
        65536,
    )
    .await;
    assert_eq!(r.events("PERSISTED").len(), 2500);
    let persisted: std::collections::BTreeSet<String> = r
        .events("PERSISTED")
        .iter()
        .map(|a| a["FragmentNumber"].as_str().unwrap().to_owned())
        .collect();
    let am = srv.archived().await;
    let sel = FragmentSelector::builder()
        .fragment_selector_type(FragmentSelectorType::ProducerTimestamp)
        .timestamp_range(
            TimestampRange::builder()
                .start_timestamp(DateTime::from_millis(1_700_000_000_000))
                .end_timestamp(DateTime::from_millis(1_700_000_000_000 + 10_000_000))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut req = am.list_fragments().stream_name("many").max_results(100);
        req = match &token {
            Some(t) => req.next_token(t),
            None => req.fragment_selector(sel.clone()),
        };
        let out = req.send().await.unwrap();
        pages += 1;
        assert!(out.fragments().len() <= 100);
        for f in out.fragments() {
            seen.push(f.fragment_number().unwrap().to_owned());
            assert!(f.fragment_size_in_bytes() > 0);
            assert!(f.producer_timestamp().is_some() && f.server_timestamp().is_some());
        }
        match out.next_token() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 25);
    assert_eq!(seen.len(), 2500);
    let unique: std::collections::BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique, persisted, "every fragment exactly once");

    // Inclusive range on fragment start: fragments at +1000 .. +3000 ms → 3 of them.
    let out = am
        .list_fragments()
        .stream_name("many")
        .fragment_selector(
            FragmentSelector::builder()
                .fragment_selector_type(FragmentSelectorType::ProducerTimestamp)
                .timestamp_range(
                    TimestampRange::builder()
                        .start_timestamp(DateTime::from_millis(1_700_000_001_000))
                        .end_timestamp(DateTime::from_millis(1_700_000_003_000))
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let ts: Vec<i64> = out
        .fragments()
        .iter()
        .map(|f| f.producer_timestamp().unwrap().to_millis().unwrap())
        .collect();
    assert_eq!(
        ts,
        vec![1_700_000_001_000, 1_700_000_002_000, 1_700_000_003_000]
    );
    assert!(
        out.fragments()
            .iter()
            .all(|f| f.fragment_length_in_milliseconds() == 1000)
    );

    // GetMediaForFragmentList returns exactly the requested fragments, in order.
    let want: Vec<String> = vec![seen[7].clone(), seen[3].clone(), seen[2400].clone()];
    let out = am
        .get_media_for_fragment_list()
        .stream_name("many")
        .set_fragments(Some(want.clone()))
        .send()
        .await
        .unwrap();
    let raw = out.payload.collect().await.unwrap().into_bytes();
    let mut p = ChunkParser::default();
    p.push(&raw);
    p.finish();
    let got: Vec<&str> = p
        .chunks
        .iter()
        .map(|c| c.tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER").unwrap())
        .collect();
    assert_eq!(got, want.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        p.chunks
            .iter()
            .all(|c| c.tag("AWS_KINESISVIDEO_CONTINUATION_TOKEN").is_none()),
        "no trailing AWS tags"
    );
    assert!(p.chunks.iter().all(|c| c.frames.len() == 1));
    let err = am
        .get_media_for_fragment_list()
        .stream_name("many")
        .fragments(&seen[0])
        .fragments("91000000000000000000000000000000000000000000000")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_resource_not_found_exception(), "{err:?}");
    srv.stop().await.unwrap();
}

/// A body with `n` one-second fragments of one tiny keyframe each (ABSOLUTE ms).
fn synth_many_fragments(n: usize) -> Vec<u8> {
    use streamvault::mkv::{ids, writer};
    let mut body = Vec::new();
    writer::write_ebml_header(&mut body, "matroska");
    writer::segment_header_unknown(&mut body);
    let mut info = Vec::new();
    writer::write_uint(&mut info, ids::TIMECODE_SCALE, 1_000_000);
    writer::write_element(&mut body, ids::INFO, &info);
    let mut e = Vec::new();
    writer::write_uint(&mut e, ids::TRACK_NUMBER, 1);
    writer::write_uint(&mut e, ids::TRACK_UID, 1);
    writer::write_uint(&mut e, ids::TRACK_TYPE, 1);
    writer::write_string(&mut e, ids::CODEC_ID, "V_MPEG4/ISO/AVC");
    let mut t = Vec::new();
    writer::write_element(&mut t, ids::TRACK_ENTRY, &e);
    writer::write_element(&mut body, ids::TRACKS, &t);
    for i in 0..n {
        let mut b = vec![0x81, 0, 0, 0x80];
        b.extend_from_slice(&(i as u32).to_be_bytes());
        let mut block = Vec::new();
        writer::write_element(&mut block, 0xA3, &b);
        // BlockGroup-free SimpleBlock; one frame per fragment, 1 s apart.
        let mut group = Vec::new();
        writer::write_element(&mut group, 0xA0, &{
            let mut g = Vec::new();
            writer::write_element(&mut g, 0xA1, &b);
            writer::write_uint(&mut g, 0x9B, 1000);
            g
        });
        body.extend(writer::build_cluster(
            1_700_000_000_000 + i as u64 * 1000,
            &[bytes::Bytes::from(group)],
        ));
        let _ = block;
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_matches_real_aws_get_media_output() {
    let Some(aws) = shared_media("kvs-captures/output_get_media.mkv") else {
        return;
    };
    let srv = TestServer::start().await;
    create(&srv, "lay", 24).await;
    upload(&srv, "lay", &sample("h264_720p_gop1s.mkv")).await;
    let out = srv
        .media()
        .await
        .get_media()
        .stream_name("lay")
        .start_selector(selector(StartSelectorType::Earliest).build().unwrap())
        .send()
        .await
        .unwrap();
    let mut payload = out.payload;
    let (ours, _) = read_chunks(&mut payload, 3, Duration::from_secs(20)).await;
    let mut theirs = ChunkParser::default();
    theirs.push(&aws);
    theirs.finish();
    assert_eq!(theirs.chunks.len(), 5);
    // Abstract shape per chunk: the AWS tag groups around the one cluster.
    fn shape(c: &Chunk) -> (Vec<String>, usize, Vec<&str>, usize) {
        let aws_tags: Vec<&str> = c
            .tags
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| n.starts_with("AWS_KINESISVIDEO"))
            .collect();
        let cluster_pos = c.layout.iter().position(|l| l == "Cluster").unwrap();
        let tags_after = c.layout[cluster_pos + 1..]
            .iter()
            .filter(|l| *l == "Tags")
            .count();
        (
            c.layout[..2].to_vec(),
            c.layout.iter().filter(|l| *l == "Cluster").count(),
            aws_tags,
            tags_after,
        )
    }
    for (a, o) in theirs.chunks.iter().zip(&ours.chunks) {
        assert_eq!(
            shape(a),
            shape(o),
            "AWS chunk layout {:?} vs ours {:?}",
            a.layout,
            o.layout
        );
        // Same value formats.
        for name in [
            "AWS_KINESISVIDEO_SERVER_TIMESTAMP",
            "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP",
        ] {
            let fmt = |v: &str| {
                v.split_once('.')
                    .map(|(s, f)| (s.chars().all(|c| c.is_ascii_digit()), f.len()))
            };
            assert_eq!(
                fmt(a.tag(name).unwrap()),
                fmt(o.tag(name).unwrap()),
                "{name}"
            );
        }
        for name in [
            "AWS_KINESISVIDEO_FRAGMENT_NUMBER",
            "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW",
            "AWS_KINESISVIDEO_CONTINUATION_TOKEN",
        ] {
            assert!(
                a.tag(name).unwrap().chars().all(|c| c.is_ascii_digit()),
                "{name}"
            );
            assert!(
                o.tag(name).unwrap().chars().all(|c| c.is_ascii_digit()),
                "{name}"
            );
        }
        assert_eq!(
            a.tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER").unwrap().len(),
            o.tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER").unwrap().len()
        );
    }
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_zero_serves_now_from_memory_only() {
    let srv = TestServer::start().await;
    create(&srv, "mem", 0).await;
    let media = srv.media().await;
    let out = media
        .get_media()
        .stream_name("mem")
        .start_selector(selector(StartSelectorType::Now).build().unwrap())
        .send()
        .await
        .unwrap();
    let mut payload = out.payload;
    let reader = tokio::spawn(async move {
        read_chunks(&mut payload, 5, Duration::from_secs(20))
            .await
            .0
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    upload(&srv, "mem", &sample("h264_720p_gop1s.mkv")).await;
    let p = reader.await.unwrap();
    assert!(
        p.complete() >= 5,
        "live chunks from memory: {}",
        p.complete()
    );
    assert!(
        p.chunks
            .iter()
            .take(5)
            .all(|c| !c.frames.is_empty() && c.frames[0].2)
    );
    let err = srv
        .archived()
        .await
        .list_fragments()
        .stream_name("mem")
        .fragment_selector(
            FragmentSelector::builder()
                .fragment_selector_type(FragmentSelectorType::ServerTimestamp)
                .timestamp_range(
                    TimestampRange::builder()
                        .start_timestamp(DateTime::from_secs(0))
                        .end_timestamp(DateTime::from_secs(2_000_000_000))
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    use aws_sdk_kinesisvideoarchivedmedia::error::ProvideErrorMetadata;
    assert_eq!(err.code(), Some("NoDataRetentionException"), "{err:?}");
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tail_sees_each_frame_before_its_fragment_is_persisted() {
    use std::process::Stdio;
    use std::time::Instant;
    use tokio::io::AsyncReadExt;
    if !have_tool("ffmpeg") {
        return;
    }
    let srv = TestServer::start().await;
    create(&srv, "live", 24).await;
    // The reader is at the live edge before the camera starts.
    let out = srv
        .media()
        .await
        .get_media()
        .stream_name("live")
        .start_selector(selector(StartSelectorType::Now).build().unwrap())
        .send()
        .await
        .unwrap();
    let mut payload = out.payload;
    let reader = tokio::spawn(async move {
        let mut p = ChunkParser::default();
        // Per fragment number: arrival time of each frame.
        let mut seen: Vec<(String, Vec<Instant>)> = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while p.complete() < 4 {
            let Ok(Some(Ok(b))) = tokio::time::timeout_at(deadline, payload.next()).await else {
                break;
            };
            p.push(&b);
            let now = Instant::now();
            for (i, c) in p.chunks.iter().enumerate() {
                if seen.len() <= i {
                    seen.push((
                        c.tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER")
                            .unwrap_or_default()
                            .to_owned(),
                        Vec::new(),
                    ));
                }
                while seen[i].1.len() < c.frames.len() {
                    seen[i].1.push(now);
                }
            }
        }
        seen
    });
    let mut ff = tokio::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=30",
            "-t",
            "6",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-pix_fmt",
            "yuv420p",
            "-g",
            "30",
            "-keyint_min",
            "30",
        ])
        .args([
            "-sc_threshold",
            "0",
            "-f",
            "matroska",
            "-live",
            "1",
            "-cluster_time_limit",
            "1100",
            "-cluster_size_limit",
            "50000000",
            "pipe:1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = ff.stdout.take().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32768];
        while let Ok(n) = stdout.read(&mut buf).await {
            if n == 0 || tx.send(buf[..n].to_vec()).await.is_err() {
                break;
            }
        }
    });
    let acks = put_media_stream(srv.addr, &[("x-amzn-stream-name", "live")], rx).await;
    assert!(ff.wait().await.unwrap().success());
    let seen = reader.await.unwrap();
    assert!(seen.len() >= 4, "live chunks: {}", seen.len());
    let mut checked = 0;
    for (number, frames) in seen.iter().take(4) {
        let persisted = acks
            .acks
            .iter()
            .zip(&acks.ack_times)
            .find(|(a, _)| a["EventType"] == "PERSISTED" && a["FragmentNumber"] == number.as_str())
            .map(|(_, t)| *t)
            .unwrap_or_else(|| panic!("no PERSISTED for {number}"));
        assert_eq!(frames.len(), 30, "fragment {number}: one GOP of frames");
        for (i, t) in frames.iter().enumerate() {
            assert!(
                *t < persisted,
                "fragment {number}: frame {i} reached the reader only after PERSISTED"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 4);
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_get_media_and_list_fragments() {
    let srv = TestServer::start().await;
    create(&srv, "clicam", 24).await;
    upload(&srv, "clicam", &sample("h264_720p_gop1s.mkv")).await;
    let bin = env!("CARGO_BIN_EXE_streamvault");
    let env = [
        ("AWS_ACCESS_KEY_ID", TEST_KEY.0),
        ("AWS_SECRET_ACCESS_KEY", TEST_KEY.1),
    ];
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.mkv");
    let o = tokio::process::Command::new(bin)
        .envs(env)
        .args([
            "get-media",
            "--endpoint",
            &srv.url(),
            "--stream",
            "clicam",
            "--start",
            "earliest",
            "-o",
        ])
        .arg(&out_path)
        .output()
        .await
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("10 fragments written"));
    let mut p = ChunkParser::default();
    p.push(&std::fs::read(&out_path).unwrap());
    assert_eq!(p.complete(), 10);
    assert_eq!(p.chunks.iter().map(|c| c.frames.len()).sum::<usize>(), 300);

    let o = tokio::process::Command::new(bin)
        .envs(env)
        .args([
            "list-fragments",
            "--endpoint",
            &srv.url(),
            "--stream",
            "clicam",
            "--selector",
            "producer",
        ])
        .args([
            "--from",
            "2026-11-24T00:00:00Z",
            "--to",
            "1795700000",
            "--json",
        ])
        .output()
        .await
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 10);
    let o = tokio::process::Command::new(bin)
        .envs(env)
        .args([
            "list-fragments",
            "--endpoint",
            &srv.url(),
            "--stream",
            "nope",
            "--from",
            "0",
            "--to",
            "1",
        ])
        .output()
        .await
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("ResourceNotFoundException"));
    srv.stop().await.unwrap();
}
