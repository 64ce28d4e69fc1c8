//! Authorization as an attacker tries to sidestep it (issue 12): a key limited to
//! `cam-*` sends other body shapes (arrays, duplicate members, name and ARN naming
//! different streams), lists streams, re-points a presigned PutMedia URL with headers,
//! and leaves the deciding parts of a signed request unsigned. Each attempt must be
//! refused with 400/401/403 and change nothing; the legitimate calls of the same key
//! keep working.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use streamvault::config::{KeySpec, Secret};

const LIMITED: (&str, &str) = ("LIMITEDKEY01", "limitedsecretlimitedsecret");
/// The key of the issue's report: these actions on `cam-*`.
const ISSUE_KEY: (&str, &str) = ("ISSUEKEY0001", "issuesecretissuesecret");

async fn server() -> TestServer {
    TestServer::start_with(|s| {
        s.auth.keys.push(KeySpec {
            access_key_id: LIMITED.0.into(),
            secret_access_key: Secret(LIMITED.1.into()),
            actions: vec!["kinesisvideo:*".into()],
            streams: vec!["cam-*".into()],
        });
        s.auth.keys.push(KeySpec {
            access_key_id: ISSUE_KEY.0.into(),
            secret_access_key: Secret(ISSUE_KEY.1.into()),
            actions: [
                "GetMedia",
                "DescribeStream",
                "DeleteStream",
                "ListStreams",
                "PutMedia",
            ]
            .iter()
            .map(|a| format!("kinesisvideo:{a}"))
            .collect(),
            streams: vec!["cam-*".into()],
        });
    })
    .await
}

/// Creates the streams every test uses; returns door's ARN.
async fn streams(srv: &TestServer) -> String {
    for n in ["cam-1", "cam-2", "door2"] {
        srv.create_stream(n, 24).await;
    }
    srv.control()
        .await
        .create_stream()
        .stream_name("door")
        .data_retention_in_hours(24)
        .send()
        .await
        .unwrap()
        .stream_arn
        .unwrap()
}

/// door's description as the root key sees it (version, retention).
async fn door_state(srv: &TestServer) -> (String, i32) {
    let d = srv
        .control()
        .await
        .describe_stream()
        .stream_name("door")
        .send()
        .await
        .expect("door must still exist")
        .stream_info
        .unwrap();
    (d.version.unwrap(), d.data_retention_in_hours.unwrap())
}

fn refused(status: u16) -> bool {
    matches!(status, 400 | 401 | 403)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reported_attacks_are_refused_and_change_nothing() {
    let srv = server().await;
    let door_arn = streams(&srv).await;
    let before = door_state(&srv).await;

    // 1. An array body, read by position into the handler's struct.
    let (status, _, body) = raw_http_signed(
        srv.addr,
        "POST",
        "/describeStream",
        r#"["door", null]"#,
        Some(ISSUE_KEY),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("SerializationException"), "{body}");
    assert!(
        !body.contains(&door_arn),
        "door's description leaked: {body}"
    );

    // 2. Authorized by the name, executed on the ARN.
    let both = format!(r#"{{"StreamName":"cam-1","StreamARN":"{door_arn}"}}"#);
    let (status, _, body) =
        raw_http_signed(srv.addr, "POST", "/deleteStream", &both, Some(ISSUE_KEY)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("InvalidArgumentException"), "{body}");
    // The ARN alone: the stream it names is checked.
    let arn_only = format!(r#"{{"StreamARN":"{door_arn}"}}"#);
    let (status, _, body) = raw_http_signed(
        srv.addr,
        "POST",
        "/deleteStream",
        &arn_only,
        Some(ISSUE_KEY),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("NotAuthorizedException"), "{body}");
    assert_eq!(door_state(&srv).await, before, "door changed");

    // 3. ListStreams lists only what the key may see.
    let (status, _, body) =
        raw_http_signed(srv.addr, "POST", "/listStreams", "{}", Some(ISSUE_KEY)).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = v["StreamInfoList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["StreamName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cam-1", "cam-2"], "{body}");
    assert!(!body.contains("door"), "{body}");

    // The key's legitimate calls still work.
    let (status, _, body) = raw_http_signed(
        srv.addr,
        "POST",
        "/describeStream",
        r#"{"StreamName":"cam-1"}"#,
        Some(ISSUE_KEY),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_body_shape_reaches_a_stream_the_key_may_not_touch() {
    let srv = server().await;
    let door_arn = streams(&srv).await;
    let before = door_state(&srv).await;
    // Every JSON operation that acts on one stream, with the members it needs besides
    // the stream (so only the stream decides).
    let ops: &[(&str, &str)] = &[
        ("/describeStream", ""),
        (
            "/updateStream",
            r#","CurrentVersion":"x","DeviceName":"pwned""#,
        ),
        ("/deleteStream", ""),
        (
            "/updateDataRetention",
            r#","CurrentVersion":"x","Operation":"DECREASE_DATA_RETENTION","DataRetentionChangeInHours":23"#,
        ),
        ("/tagStream", r#","Tags":{"owner":"attacker"}"#),
        ("/untagStream", r#","TagKeyList":["owner"]"#),
        ("/listTagsForStream", ""),
        ("/getDataEndpoint", r#","APIName":"GET_MEDIA""#),
        (
            "/getMedia",
            r#","StartSelector":{"StartSelectorType":"EARLIEST"}"#,
        ),
        (
            "/listFragments",
            r#","FragmentSelector":{"FragmentSelectorType":"SERVER_TIMESTAMP","TimestampRange":{"StartTimestamp":0,"EndTimestamp":4000000000}}"#,
        ),
        (
            "/getMediaForFragmentList",
            r#","Fragments":["91343852333181432392682062607743920146264772040"]"#,
        ),
        ("/getHLSStreamingSessionURL", r#","PlaybackMode":"LIVE""#),
        ("/getDASHStreamingSessionURL", r#","PlaybackMode":"LIVE""#),
        (
            "/getClip",
            r#","ClipFragmentSelector":{"FragmentSelectorType":"SERVER_TIMESTAMP","TimestampRange":{"StartTimestamp":0,"EndTimestamp":100}}"#,
        ),
        (
            "/getImages",
            r#","ImageSelectorType":"SERVER_TIMESTAMP","StartTimestamp":0,"EndTimestamp":10,"SamplingInterval":3000,"Format":"JPEG""#,
        ),
        ("/describeImageGenerationConfiguration", ""),
        ("/updateImageGenerationConfiguration", ""),
    ];
    let mut tried = 0;
    for (path, rest) in ops {
        let shapes = [
            format!(r#"{{"StreamName":"door"{rest}}}"#),
            format!(r#"{{"StreamARN":"{door_arn}"{rest}}}"#),
            format!(r#"{{"StreamName":"cam-1","StreamARN":"{door_arn}"{rest}}}"#),
            format!(r#"{{"StreamName":"cam-1","StreamName":"door"{rest}}}"#),
            format!(r#"["door", "{door_arn}", null]"#),
            format!(r#"  [{{"StreamName":"door"{rest}}}]"#),
            r#""door""#.to_string(),
            "null".to_string(),
        ];
        for body in shapes {
            let (status, _, text) =
                raw_http_signed(srv.addr, "POST", path, &body, Some(LIMITED)).await;
            assert!(
                refused(status),
                "{path} with {body} answered {status}: {text}"
            );
            // An error body only: nothing of door's description or data.
            assert!(
                text.contains("Exception") && !text.contains("\"StreamInfo\""),
                "{path} with {body}: {text}"
            );
            tried += 1;
        }
    }
    println!("{tried} attempts refused");
    assert_eq!(door_state(&srv).await, before, "door changed");
    let tags = srv
        .control()
        .await
        .list_tags_for_stream()
        .stream_name("door")
        .send()
        .await
        .unwrap();
    assert!(tags.tags.unwrap_or_default().is_empty());

    // CreateStream of a name outside the key's patterns.
    let (status, _, text) = raw_http_signed(
        srv.addr,
        "POST",
        "/createStream",
        r#"{"StreamName":"door3"}"#,
        Some(LIMITED),
    )
    .await;
    assert_eq!(status, 401, "{text}");
    let (status, _, text) = raw_http_signed(
        srv.addr,
        "POST",
        "/createStream",
        r#"{"StreamName":"cam-3"}"#,
        Some(LIMITED),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_streams_pages_only_through_visible_streams() {
    let srv = server().await;
    let kv = srv.control().await;
    // Interleaved names, so that pages of the index mix visible and hidden streams.
    for i in 0..7 {
        for prefix in ["a", "cam-", "door"] {
            kv.create_stream()
                .stream_name(format!("{prefix}{i}"))
                .send()
                .await
                .unwrap();
        }
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..20 {
        let body = match &token {
            Some(t) => format!(r#"{{"MaxResults":2,"NextToken":"{t}"}}"#),
            None => r#"{"MaxResults":2}"#.to_string(),
        };
        let (status, _, text) =
            raw_http_signed(srv.addr, "POST", "/listStreams", &body, Some(LIMITED)).await;
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let page = v["StreamInfoList"].as_array().unwrap();
        assert!(page.len() <= 2);
        seen.extend(
            page.iter()
                .map(|s| s["StreamName"].as_str().unwrap().to_owned()),
        );
        token = v["NextToken"].as_str().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    let want: Vec<String> = (0..7).map(|i| format!("cam-{i}")).collect();
    assert_eq!(seen, want);
    srv.stop().await.unwrap();
}

/// Fragments of `stream` as the root key lists them.
async fn fragment_count(srv: &TestServer, stream: &str) -> usize {
    let body = format!(
        r#"{{"StreamName":"{stream}","FragmentSelector":{{"FragmentSelectorType":"SERVER_TIMESTAMP","TimestampRange":{{"StartTimestamp":0,"EndTimestamp":4000000000}}}}}}"#
    );
    let (status, _, text) = srv.post_raw("/listFragments", &body).await;
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["Fragments"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_urls_bind_their_stream_timecodes_and_api() {
    let srv = server().await;
    streams(&srv).await;
    let media = sample("h264_720p_gop1s.mkv");
    let url = presigned_put_url(
        srv.addr,
        &[
            ("x-amzn-stream-name", "cam-1"),
            ("x-amzn-fragment-timecode-type", "RELATIVE"),
        ],
        Duration::from_secs(300),
    );
    let path_q = url.split_once(&srv.addr.to_string()).unwrap().1.to_owned();
    let head = |extra: &str| {
        format!(
            "POST {path_q} HTTP/1.1\r\nHost: {}\r\ncontent-length: {}\r\n{extra}\r\n",
            srv.addr,
            media.len()
        )
    };
    // Re-pointed by a header, by an ARN header, or with other timecodes or start time.
    for extra in [
        "x-amzn-stream-name: door2\r\n",
        "X-Amzn-Stream-Name: door2\r\n",
        "x-amzn-stream-arn: arn:aws:kinesisvideo:us-east-1:000000000000:stream/door2/1\r\n",
        "x-amzn-fragment-timecode-type: ABSOLUTE\r\n",
        "x-amzn-producer-start-timestamp: 1000000000\r\n",
    ] {
        let (status, text) = send_raw(srv.addr, head(extra), &media).await;
        assert!(refused(status), "{extra:?} answered {status}: {text}");
    }
    assert_eq!(
        fragment_count(&srv, "door2").await,
        0,
        "door2 got fragments"
    );

    // A presigned URL is for PutMedia only: a JSON API signs its body.
    let q = vec![("x-amzn-stream-name".to_string(), "cam-1".to_string())];
    for path in ["/getMedia", "/describeStream", "/deleteStream"] {
        let url = streamvault::auth::sigv4::presign(
            &srv.url(),
            path,
            &q,
            &(TEST_KEY.0.to_owned(), TEST_KEY.1.to_owned()),
            "us-east-1",
            SystemTime::now(),
            Duration::from_secs(300),
        )
        .unwrap();
        let path_q = url.split_once(&srv.addr.to_string()).unwrap().1.to_owned();
        let body = r#"{"StreamName":"door","StartSelector":{"StartSelectorType":"EARLIEST"}}"#;
        let head = format!(
            "POST {path_q} HTTP/1.1\r\nHost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            srv.addr,
            body.len()
        );
        let (status, text) = send_raw(srv.addr, head, body.as_bytes()).await;
        assert!(refused(status), "{path}: {status} {text}");
    }
    door_state(&srv).await;

    // The same URL, unaltered, still uploads (the legitimate flow).
    let (status, text) = send_raw(srv.addr, head(""), &media).await;
    assert_eq!(status, 200, "{text}");
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_parts_of_a_signed_request_cannot_choose_the_stream() {
    let srv = server().await;
    streams(&srv).await;
    let host = srv.addr.to_string();
    // PutMedia signed over its other headers, with the stream header left unsigned.
    let signed = [("user-agent", "test")];
    let sig = sign_with(
        TEST_KEY,
        "POST",
        &host,
        "/putMedia",
        &signed,
        streamvault::auth::sigv4::EMPTY_SHA256,
        SystemTime::now(),
    );
    let mut head = format!(
        "POST /putMedia HTTP/1.1\r\nHost: {host}\r\nuser-agent: test\r\nx-amzn-stream-name: door2\r\ncontent-length: 0\r\n"
    );
    for (k, v) in &sig {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let (status, text) = send_raw(srv.addr, head, b"").await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("x-amzn-stream-name"), "{text}");

    // A JSON body declared UNSIGNED-PAYLOAD: the body would be the attacker's.
    let body = r#"{"StreamName":"door"}"#;
    let len = body.len().to_string();
    let hdrs = [
        ("content-type", "application/json"),
        ("content-length", len.as_str()),
        ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
    ];
    let sig = sign_with(
        TEST_KEY,
        "POST",
        &host,
        "/describeStream",
        &hdrs,
        "UNSIGNED-PAYLOAD",
        SystemTime::now(),
    );
    let mut head = format!("POST /describeStream HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in hdrs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(sig)
    {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let (status, text) = send_raw(srv.addr, head, body.as_bytes()).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("UNSIGNED-PAYLOAD"), "{text}");
    srv.stop().await.unwrap();
}
