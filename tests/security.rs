//! Authentication and authorization against the real server (auth on, the default):
//! the KVS C producer's exact PutMedia signature, key policies, presigned URLs, and each
//! way a request can be wrongly signed, with the error a client sees.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use streamvault::auth::sigv4::EMPTY_SHA256;
use streamvault::config::{KeySpec, Secret};

/// A PutMedia request head exactly as the KVS C producer 1.6 signs it.
fn c_producer_head(
    addr: std::net::SocketAddr,
    stream: &str,
    tamper: Option<(&str, &str)>,
) -> String {
    // The C SDK signs Host without the port; the request sends the same value.
    let host = "127.0.0.1";
    let date = streamvault::auth::sigv4::format_amz_date(SystemTime::now());
    let mut headers: Vec<(&str, String)> = vec![
        ("connection", "keep-alive".into()),
        ("transfer-encoding", "chunked".into()),
        (
            "user-agent",
            "AWS-SDK-KVS/1.6.4 GCC/12.2.0 Linux/6.1".into(),
        ),
        ("x-amzn-fragment-acknowledgment-required", "1".into()),
        ("x-amzn-fragment-timecode-type", "ABSOLUTE".into()),
        ("x-amzn-producer-start-timestamp", "1700000000.5".into()),
        ("x-amzn-stream-name", stream.into()),
    ];
    let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let sig = streamvault::auth::sigv4::sign_headers(
        "POST",
        host,
        "/putMedia",
        &refs,
        EMPTY_SHA256,
        &(TEST_KEY.0.to_owned(), TEST_KEY.1.to_owned()),
        "us-west-2",
        SystemTime::now(),
    )
    .unwrap();
    let auth = sig
        .iter()
        .find(|(k, _)| k == "authorization")
        .unwrap()
        .1
        .clone();
    let amz_date = sig
        .iter()
        .find(|(k, _)| k == "x-amz-date")
        .unwrap()
        .1
        .clone();
    assert_eq!(
        auth.split("SignedHeaders=")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap(),
        "connection;host;transfer-encoding;user-agent;x-amz-date;x-amzn-fragment-acknowledgment-required;x-amzn-fragment-timecode-type;x-amzn-producer-start-timestamp;x-amzn-stream-name"
    );
    let _ = date;
    if let Some((k, v)) = tamper {
        headers.iter_mut().find(|(n, _)| *n == k).unwrap().1 = v.into();
    }
    let mut head = format!("POST /putMedia HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in &headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    // Added after signing, unsigned, as the C SDK does; also not signed: content-type.
    head.push_str("x-amz-security-token: FQoGZXIvYXdzEXAMPLETOKEN\r\ncontent-type: application/json\r\nExpect: 100-continue\r\n");
    head.push_str(&format!(
        "X-Amz-Date: {amz_date}\r\nAuthorization: {auth}\r\n\r\n"
    ));
    let _ = addr;
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvs_c_producer_signature_is_accepted_and_any_change_rejected() {
    let Some(body) = shared_media("kvs-captures/producer-c-1.6.4-putmedia.mkv") else {
        return;
    };
    let srv = TestServer::start().await;
    srv.control()
        .await
        .create_stream()
        .stream_name("cprod")
        .send()
        .await
        .unwrap();
    let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
    chunked.extend_from_slice(&body);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let (status, text) =
        send_raw(srv.addr, c_producer_head(srv.addr, "cprod", None), &chunked).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(text.matches("\"PERSISTED\"").count(), 7, "{text}");
    // The acks arrive; the fragments are stored.
    let dd = DataDir::open(&srv.data_dir).await;
    let mut n = 0;
    for _ in 0..100 {
        n = dd.fragments("cprod").await.len();
        if n == 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(n, 7);
    for (k, v) in [
        ("x-amzn-stream-name", "cprod2"),
        ("x-amzn-producer-start-timestamp", "1700000000.6"),
        ("user-agent", "AWS-SDK-KVS/1.6.5"),
        ("connection", "close"),
    ] {
        let (status, text) = send_raw(
            srv.addr,
            c_producer_head(srv.addr, "cprod", Some((k, v))),
            &chunked,
        )
        .await;
        assert_eq!(status, 403, "changed {k}: {text}");
        assert!(text.contains("InvalidSignatureException"), "{text}");
    }
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_limit_actions_and_streams() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = TestServer::start_in(tmp.path().to_owned(), |s| {
        s.auth.keys.push(KeySpec {
            access_key_id: "READERKEY".into(),
            secret_access_key: Secret("readersecret".into()),
            actions: vec!["kinesisvideo:GetMedia".into()],
            streams: vec!["cam-*".into()],
        });
    })
    .await;
    let kv = srv.control().await;
    for n in ["cam-1", "door-1"] {
        kv.create_stream().stream_name(n).send().await.unwrap();
    }
    let reader = ("READERKEY", "readersecret");
    let get_media = |stream: &str| {
        format!(r#"{{"StreamName":"{stream}","StartSelector":{{"StartSelectorType":"NOW"}}}}"#)
    };
    // Allowed: GetMedia on cam-1 (the response streams; only the status matters here).
    let host = srv.addr.to_string();
    let signed_get = |stream: &str| {
        let body = get_media(stream);
        let len = body.len().to_string();
        let sig = sign_with(
            reader,
            "POST",
            &host,
            "/getMedia",
            &[
                ("content-type", "application/json"),
                ("content-length", &len),
            ],
            &sha256_hex(body.as_bytes()),
            SystemTime::now(),
        );
        let mut head = format!(
            "POST /getMedia HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n"
        );
        for (k, v) in sig {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        (head, body)
    };
    let (h, b) = signed_get("cam-1");
    let (status, text) = send_raw(srv.addr, h, b.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let (h, b) = signed_get("door-1");
    let (status, text) = send_raw(srv.addr, h, b.as_bytes()).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("NotAuthorizedException"));
    // Not allowed to PutMedia, even on cam-1.
    let sig = sign_with(
        reader,
        "POST",
        &host,
        "/putMedia",
        &[
            ("transfer-encoding", "chunked"),
            ("x-amzn-stream-name", "cam-1"),
        ],
        EMPTY_SHA256,
        SystemTime::now(),
    );
    let mut head = format!(
        "POST /putMedia HTTP/1.1\r\nHost: {host}\r\ntransfer-encoding: chunked\r\nx-amzn-stream-name: cam-1\r\n"
    );
    for (k, v) in sig {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let (status, text) = send_raw(srv.addr, head, b"0\r\n\r\n").await;
    assert_eq!(status, 401, "{text}");
    // Nor CreateStream.
    let (status, h, _) = raw_http_signed(
        srv.addr,
        "POST",
        "/createStream",
        r#"{"StreamName":"cam-9"}"#,
        Some(reader),
    )
    .await;
    assert_eq!(
        (status, header(&h, "x-amzn-errortype")),
        (401, Some("NotAuthorizedException"))
    );
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrongly_signed_requests_get_the_documented_errors() {
    let srv = TestServer::start().await;
    let host = srv.addr.to_string();
    let body = r#"{"StreamName":"x"}"#;
    let len = body.len().to_string();
    let base = [
        ("content-type", "application/json"),
        ("content-length", len.as_str()),
    ];
    let request = |sig: Vec<(String, String)>, body: &str| {
        let mut head = format!(
            "POST /describeStream HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in sig {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        head
    };
    let hash = sha256_hex(body.as_bytes());
    let now = SystemTime::now();
    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        (
            "wrong secret",
            request(
                sign_with(
                    (TEST_KEY.0, "not-the-secret"),
                    "POST",
                    &host,
                    "/describeStream",
                    &base,
                    &hash,
                    now,
                ),
                body,
            ),
            body,
            403,
            "InvalidSignatureException",
        ),
        (
            "unknown key",
            request(
                sign_with(
                    ("AKIDUNKNOWN", TEST_KEY.1),
                    "POST",
                    &host,
                    "/describeStream",
                    &base,
                    &hash,
                    now,
                ),
                body,
            ),
            body,
            403,
            "UnrecognizedClientException",
        ),
        (
            "tampered body",
            request(
                sign_with(
                    TEST_KEY,
                    "POST",
                    &host,
                    "/describeStream",
                    &base,
                    &hash,
                    now,
                ),
                body,
            ),
            r#"{"StreamName":"y"}"#,
            403,
            "InvalidSignatureException",
        ),
        (
            "date 20 min off",
            request(
                sign_with(
                    TEST_KEY,
                    "POST",
                    &host,
                    "/describeStream",
                    &base,
                    &hash,
                    now - Duration::from_secs(20 * 60),
                ),
                body,
            ),
            body,
            403,
            "InvalidSignatureException",
        ),
        (
            "missing Authorization",
            request(vec![], body),
            body,
            403,
            "MissingAuthenticationTokenException",
        ),
    ];
    for (what, head, sent_body, status, kind) in cases {
        let (got, text) = send_raw(srv.addr, head, sent_body.as_bytes()).await;
        assert_eq!(got, status, "{what}: {text}");
        assert!(text.contains(kind), "{what}: {text}");
    }
    // Wrong service in the credential scope.
    let good = sign_with(
        TEST_KEY,
        "POST",
        &host,
        "/describeStream",
        &base,
        &hash,
        now,
    );
    let bad: Vec<(String, String)> = good
        .into_iter()
        .map(|(k, v)| {
            if k == "authorization" {
                (k, v.replace("/kinesisvideo/", "/s3/"))
            } else {
                (k, v)
            }
        })
        .collect();
    let (got, text) = send_raw(srv.addr, request(bad, body), body.as_bytes()).await;
    assert_eq!(got, 403, "{text}");
    assert!(
        text.contains("InvalidSignatureException") && text.contains("kinesisvideo"),
        "{text}"
    );
    // The same request signed right is answered (404: no such stream).
    let (got, text) = send_raw(
        srv.addr,
        request(
            sign_with(
                TEST_KEY,
                "POST",
                &host,
                "/describeStream",
                &base,
                &hash,
                now,
            ),
            body,
        ),
        body.as_bytes(),
    )
    .await;
    assert_eq!(got, 404, "{text}");
    // /metrics stays open for scrapers.
    let (got, _, _) = raw_http_signed(srv.addr, "GET", "/metrics", "", None).await;
    assert_eq!(got, 200);
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_urls_expire_and_resist_tampering() {
    let srv = TestServer::start().await;
    srv.control()
        .await
        .create_stream()
        .stream_name("pre")
        .send()
        .await
        .unwrap();
    let post = |url: String| async move {
        let path_q = url
            .split_once(&format!("{}", srv.addr))
            .unwrap()
            .1
            .to_owned();
        let head = format!(
            "POST {path_q} HTTP/1.1\r\nHost: {}\r\ntransfer-encoding: chunked\r\n\r\n",
            srv.addr
        );
        send_raw(srv.addr, head, b"0\r\n\r\n").await
    };
    let ok = presigned_put_url(
        srv.addr,
        &[("x-amzn-stream-name", "pre")],
        Duration::from_secs(60),
    );
    let (status, text) = post(ok.clone()).await;
    assert_eq!(status, 200, "{text}");
    // One character of the query changed.
    let (status, text) = post(ok.replace("x-amzn-stream-name=pre", "x-amzn-stream-name=prf")).await;
    assert_eq!(status, 403, "{text}");
    let sig_pos = ok.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let mut altered = ok.clone().into_bytes();
    altered[sig_pos] = if altered[sig_pos] == b'a' { b'b' } else { b'a' };
    let (status, text) = post(String::from_utf8(altered).unwrap()).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("InvalidSignatureException"));
    // Expired: signed 2 h ago for 1 h.
    let q = vec![("x-amzn-stream-name".to_string(), "pre".to_string())];
    let old = streamvault::auth::sigv4::presign(
        &srv.url(),
        "/putMedia",
        &q,
        &(TEST_KEY.0.to_owned(), TEST_KEY.1.to_owned()),
        "us-east-1",
        SystemTime::now() - Duration::from_secs(7200),
        Duration::from_secs(3600),
    )
    .unwrap();
    let (status, text) = post(old).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("expired"), "{text}");
    srv.stop().await.unwrap();
}
