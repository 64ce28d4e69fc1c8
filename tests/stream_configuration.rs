//! Per-stream configuration (issue 17) through boto3: the stream storage configuration
//! (CreateStream's `StreamStorageConfiguration`, Update/Describe, version checks) and the
//! notification configuration, then its webhook delivery: a producer tags a fragment
//! `AWS_KINESISVIDEO_NOTIFICATION` (and asks for images), a receiver in this test refuses
//! the first attempt with a 500, and the retried event arrives signed with the configured
//! secret, which the test verifies with its own HMAC. A key limited to `cam-*` cannot read
//! or change either configuration of another stream.

mod common;

use std::time::Duration;

use aws_lc_rs::hmac;
use common::clients::{BOTO3_PRELUDE, python_or_skip, run};
use common::fragment_tags::tag_clusters;
use common::webhook::Received;
use common::*;
use serde_json::{Value, json};
use streamvault::config::Secret;
use tokio::process::Command;

const SECRET: &str = "webhook-secret-for-the-test-0123";
const LIMITED: (&str, &str) = ("LIMITEDCFGKEY1", "limitedcfgsecretlimitedcfgsecret");

/// Follows [`BOTO3_PRELUDE`]; `argv[2]` is the webhook URL.
const BOTO3_CONFIG: &str = r#"
hook = sys.argv[2]
out = {}
arn = kv.create_stream(StreamName="cfg-cam", DataRetentionInHours=1,
                       StreamStorageConfiguration={"DefaultStorageTier": "WARM"})["StreamARN"]
kv.create_stream(StreamName="plain-cam", DataRetentionInHours=1)
d = kv.describe_stream_storage_configuration(StreamName="cfg-cam")
out["created"] = {k: d[k] for k in ("StreamName", "StreamARN", "StreamStorageConfiguration")}
out["plain"] = kv.describe_stream_storage_configuration(StreamName="plain-cam")["StreamStorageConfiguration"]
v1 = kv.describe_stream(StreamName="cfg-cam")["StreamInfo"]["Version"]
err("stale", kv.update_stream_storage_configuration, StreamARN=arn, CurrentVersion="0" * 32,
    StreamStorageConfiguration={"DefaultStorageTier": "HOT"})
kv.update_stream_storage_configuration(StreamARN=arn, CurrentVersion=v1,
                                       StreamStorageConfiguration={"DefaultStorageTier": "HOT"})
out["updated"] = kv.describe_stream_storage_configuration(StreamARN=arn)["StreamStorageConfiguration"]
v2 = kv.describe_stream(StreamName="cfg-cam")["StreamInfo"]["Version"]
out["version_changed"] = v1 != v2
err("cold", kv.update_stream_storage_configuration, StreamARN=arn, CurrentVersion=v2,
    StreamStorageConfiguration={"DefaultStorageTier": "COLD"})
err("create_cold", kv.create_stream, StreamName="cold-cam",
    StreamStorageConfiguration={"DefaultStorageTier": "COLD"})

kv.update_notification_configuration(StreamName="cfg-cam", NotificationConfiguration={
    "Status": "ENABLED", "DestinationConfig": {"Uri": hook}})
out["hook"] = kv.describe_notification_configuration(StreamARN=arn)["NotificationConfiguration"]
sns = "arn:aws:sns:us-east-1:000000000000:kvs-topic"
kv.update_notification_configuration(StreamName="plain-cam", NotificationConfiguration={
    "Status": "ENABLED", "DestinationConfig": {"Uri": sns}})
out["sns"] = kv.describe_notification_configuration(StreamName="plain-cam")["NotificationConfiguration"]
kv.create_stream(StreamName="none-cam", DataRetentionInHours=1)
out["none"] = "NotificationConfiguration" in kv.describe_notification_configuration(StreamName="none-cam")
err("ftp", kv.update_notification_configuration, StreamName="none-cam", NotificationConfiguration={
    "Status": "ENABLED", "DestinationConfig": {"Uri": "ftp://example.com/x"}})
err("status", kv.update_notification_configuration, StreamName="none-cam", NotificationConfiguration={
    "Status": "ON", "DestinationConfig": {"Uri": sns}})
kv.create_stream(StreamName="zero-cam", DataRetentionInHours=0)
err("zero", kv.update_notification_configuration, StreamName="zero-cam", NotificationConfiguration={
    "Status": "ENABLED", "DestinationConfig": {"Uri": sns}})
out["errors"] = errors
print(json.dumps(out))
"#;

/// Checks `X-Streamvault-Signature: t=<secs>,v1=<hex>` against our own HMAC of the body.
fn verify_signature(r: &Received) {
    let sig = r
        .header("x-streamvault-signature")
        .expect("signature header");
    let (t, v1) = sig
        .split_once(",v1=")
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v)))
        .unwrap_or_else(|| panic!("signature format: {sig}"));
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag = hex::decode(v1).expect("hex");
    hmac::verify(&key, format!("{t}.{}", r.body).as_bytes(), &tag)
        .expect("the signature verifies with the configured secret");
    let wrong = hmac::Key::new(hmac::HMAC_SHA256, b"another secret entirely");
    assert!(hmac::verify(&wrong, format!("{t}.{}", r.body).as_bytes(), &tag).is_err());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - t.parse::<i64>().unwrap()).abs() < 120, "{t}");
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<Received>) -> Received {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("a webhook request")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_configuration_round_trips_and_a_signed_notification_for_a_tagged_fragment() {
    // The first delivery attempt is refused with a 500: the event must come again.
    let (hook, mut rx) = webhook::receiver(vec![500]).await;
    let tmp = tempfile::tempdir().unwrap();
    let images_dir = tmp.path().join("images");
    let srv = TestServer::start_in(tmp.path().join("data"), move |s| {
        s.notifications.webhook_secret = Some(Secret(SECRET.into()));
        s.notifications.initial_backoff = Duration::from_millis(200);
        s.images.local_dir = Some(images_dir);
    })
    .await;
    let Some(python) = python_or_skip().await else {
        return;
    };
    let mut cmd = Command::new(&python);
    let script = format!("{BOTO3_PRELUDE}{BOTO3_CONFIG}");
    cmd.args(["-c", &script, &srv.url(), &hook]);
    let r = run(cmd, "boto3 script").await;
    assert!(
        r.ok,
        "boto3 failed\nstdout: {}\nstderr: {}",
        r.stdout, r.stderr
    );
    let out: Value = serde_json::from_str(r.stdout.trim()).unwrap();

    assert_eq!(out["created"]["StreamName"], "cfg-cam");
    assert!(
        out["created"]["StreamARN"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:kinesisvideo:us-east-1:000000000000:stream/cfg-cam/")
    );
    assert_eq!(
        out["created"]["StreamStorageConfiguration"],
        json!({"DefaultStorageTier": "WARM"})
    );
    assert_eq!(out["plain"], json!({"DefaultStorageTier": "HOT"}));
    assert_eq!(out["updated"], json!({"DefaultStorageTier": "HOT"}));
    assert_eq!(out["version_changed"], true);
    assert_eq!(
        out["hook"],
        json!({"Status": "ENABLED", "DestinationConfig": {"Uri": hook}})
    );
    assert_eq!(
        out["sns"]["DestinationConfig"]["Uri"],
        "arn:aws:sns:us-east-1:000000000000:kvs-topic"
    );
    assert_eq!(out["none"], false);
    let e = &out["errors"];
    assert_eq!(e["stale"], "VersionMismatchException", "{e}");
    assert_eq!(e["cold"], "InvalidArgumentException", "{e}");
    assert_eq!(e["create_cold"], "InvalidArgumentException", "{e}");
    assert_eq!(e["ftp"], "InvalidArgumentException", "{e}");
    assert_eq!(e["status"], "InvalidArgumentException", "{e}");
    assert_eq!(e["zero"], "NoDataRetentionException", "{e}");

    // Images too, so that image generation's event is seen as well.
    let generation = json!({
        "StreamName": "cfg-cam",
        "ImageGenerationConfiguration": {
            "Status": "ENABLED", "ImageSelectorType": "PRODUCER_TIMESTAMP",
            "DestinationConfig": {"Uri": "file://cams/site", "DestinationRegion": "us-east-1"},
            "SamplingInterval": 500, "Format": "JPEG", "WidthPixels": 160,
        }
    });
    let (s, _, t) = srv
        .post_raw(
            "/updateImageGenerationConfiguration",
            &generation.to_string(),
        )
        .await;
    assert_eq!(s, 200, "{t}");

    let tags = [
        ("AWS_KINESISVIDEO_NOTIFICATION", "motion"),
        ("AWS_KINESISVIDEO_IMAGE_GENERATION", ""),
    ];
    let body = tag_clusters(&sample("h264_720p_gop1s.mkv"), &[2000], &tags);
    let put = put_media(srv.addr, &[("x-amzn-stream-name", "cfg-cam")], &body, 65536).await;
    assert!(put.error_ids().is_empty(), "{:?}", put.error_ids());
    let persisted: Vec<String> = put
        .events("PERSISTED")
        .iter()
        .map(|a| a["FragmentNumber"].as_str().unwrap().to_owned())
        .collect();
    // An SNS destination is stored, not delivered: this upload causes no request.
    let plain = tag_clusters(&sample("h264_720p_gop1s.mkv"), &[1000], &tags[..1]);
    let put2 = put_media(
        srv.addr,
        &[("x-amzn-stream-name", "plain-cam")],
        &plain,
        65536,
    )
    .await;
    assert!(put2.error_ids().is_empty());

    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next(&mut rx).await);
    }
    for r in &got {
        verify_signature(r);
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    let events: Vec<Value> = got
        .iter()
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect();
    let tagged: Vec<(usize, &Value)> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e["EventType"] == "FRAGMENT_TAGGED")
        .collect();
    assert_eq!(tagged.len(), 2, "refused once, then delivered: {events:?}");
    let (first, second) = (&got[tagged[0].0], &got[tagged[1].0]);
    assert_eq!(first.status, 500);
    assert_ne!(second.status, 500);
    assert_eq!(first.body, second.body, "a retry resends the same event");
    assert_eq!(
        first.header("x-streamvault-event-id"),
        second.header("x-streamvault-event-id")
    );
    assert_eq!(second.header("x-streamvault-delivery-attempt"), Some("2"));
    let ev = tagged[1].1;
    assert_eq!(ev["StreamName"], "cfg-cam");
    assert_eq!(ev["Tags"]["AWS_KINESISVIDEO_NOTIFICATION"], "motion");
    assert!(persisted.contains(&ev["FragmentNumber"].as_str().unwrap().to_owned()));
    let images = events
        .iter()
        .find(|e| e["EventType"] == "IMAGES_GENERATED")
        .expect("image generation's event");
    assert_eq!(images["FragmentNumber"], ev["FragmentNumber"]);
    assert_eq!(images["Format"], "JPEG");
    assert!(
        images["Images"][0]["ImageUri"]
            .as_str()
            .unwrap()
            .starts_with("file://")
    );
    // Nothing else arrives (the SNS stream's tagged fragment is not delivered).
    assert!(
        tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .is_err()
    );
    let (_, _, metrics) = raw_http(srv.addr, "GET", "/metrics", "").await;
    for line in [
        "streamvault_notifications_total{outcome=\"delivered\"}",
        "streamvault_notifications_total{outcome=\"sns_not_delivered\"}",
        "streamvault_notification_retries_total",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    srv.stop().await.unwrap();
}

/// A key limited to `cam-*` can neither read nor change the storage or notification
/// configuration of `door`, by name or by ARN; the model's `AccessDeniedException` is
/// the answer, and door's configuration is unchanged.
#[tokio::test]
async fn a_limited_key_cannot_configure_another_stream() {
    let srv = TestServer::start_with(|s| {
        s.notifications.webhook_secret = Some(Secret(SECRET.into()));
        s.auth.keys.push(limited_key(LIMITED, &["cam-*"]));
    })
    .await;
    srv.create_stream("cam-1", 1).await;
    let (_, _, b) = srv
        .post_raw(
            "/createStream",
            r#"{"StreamName":"door","DataRetentionInHours":1}"#,
        )
        .await;
    let door = serde_json::from_str::<Value>(&b).unwrap()["StreamARN"]
        .as_str()
        .unwrap()
        .to_owned();
    let d = srv
        .control()
        .await
        .describe_stream()
        .stream_name("door")
        .send()
        .await
        .unwrap();
    let version = d.stream_info.unwrap().version.unwrap();
    let note = json!({"Status": "ENABLED", "DestinationConfig": {"Uri": "http://127.0.0.1:9/x"}});
    let storage = json!({"DefaultStorageTier": "WARM"});
    for by in [json!({"StreamName": "door"}), json!({"StreamARN": door})] {
        let with = |extra: Value| {
            let mut v = by.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v.to_string()
        };
        for (path, body) in [
            (
                "/updateNotificationConfiguration",
                with(json!({"NotificationConfiguration": note})),
            ),
            ("/describeNotificationConfiguration", by.to_string()),
            (
                "/updateStreamStorageConfiguration",
                with(json!({"CurrentVersion": version, "StreamStorageConfiguration": storage})),
            ),
            ("/describeStreamStorageConfiguration", by.to_string()),
        ] {
            let (status, h, resp) =
                raw_http_signed(srv.addr, "POST", path, &body, Some(LIMITED)).await;
            assert_eq!(status, 401, "{path} {body}: {resp}");
            assert_eq!(
                header(&h, "x-amzn-errortype"),
                Some("AccessDeniedException")
            );
        }
    }
    let (_, _, b) = srv
        .post_raw(
            "/describeNotificationConfiguration",
            r#"{"StreamName":"door"}"#,
        )
        .await;
    assert_eq!(b, "{}");
    let (_, _, b) = srv
        .post_raw(
            "/describeStreamStorageConfiguration",
            r#"{"StreamName":"door"}"#,
        )
        .await;
    assert!(b.contains("\"HOT\""), "{b}");
    // Its own stream it may configure.
    let own = json!({"StreamName": "cam-1", "NotificationConfiguration": note}).to_string();
    let (status, _, resp) = raw_http_signed(
        srv.addr,
        "POST",
        "/updateNotificationConfiguration",
        &own,
        Some(LIMITED),
    )
    .await;
    assert_eq!(status, 200, "{resp}");
}
