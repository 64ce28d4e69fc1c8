//! Real AWS clients against the real server: the AWS CLI (`aws kinesisvideo ...`) and
//! boto3, run as subprocesses, with their JSON output parsed and checked.
//!
//! Where the clients come from: `STREAMVAULT_AWS_CLI` / `STREAMVAULT_PYTHON` (set by
//! `.ci/run`), else `<repo>/.venv/bin/aws` / `<repo>/.venv/bin/python`, else `aws` /
//! `python3` on `PATH`. When none works the tests skip with a message, except under CI
//! (`CI` set), where a missing client is a failure.

mod common;

use common::clients::*;
use common::{ChunkParser, TestServer, put_media, sample};
use serde_json::Value;
use std::ffi::OsString;
use tokio::process::Command;

struct Cli {
    program: OsString,
    endpoint: String,
}

impl Cli {
    /// Runs `aws kinesisvideo <args>` against the server; returns the raw result.
    async fn call(&self, args: &[&str]) -> CallResult {
        let mut cmd = Command::new(&self.program);
        cmd.arg("kinesisvideo").args(args).args([
            "--endpoint-url",
            &self.endpoint,
            "--region",
            "us-east-1",
            "--output",
            "json",
        ]);
        run(cmd, &format!("aws kinesisvideo {}", args.join(" "))).await
    }

    /// Runs a call that must succeed and parses its JSON output (`{}` for empty output).
    async fn json(&self, args: &[&str]) -> Value {
        let r = self.call(args).await;
        assert!(
            r.ok,
            "aws kinesisvideo {} failed\nstdout: {}\nstderr: {}",
            args.join(" "),
            r.stdout,
            r.stderr
        );
        let text = r.stdout.trim();
        if text.is_empty() {
            return Value::Object(Default::default());
        }
        serde_json::from_str(text).unwrap_or_else(|e| {
            panic!(
                "aws kinesisvideo {}: output is not JSON ({e}): {text}",
                args.join(" ")
            )
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn aws_cli_control_plane_round_trip() {
    let Some(program) = tool_or_skip(
        "the AWS CLI",
        "STREAMVAULT_AWS_CLI",
        candidates("STREAMVAULT_AWS_CLI", ".venv/bin/aws", "aws"),
        &["--version"],
    )
    .await
    else {
        return;
    };
    let srv = TestServer::start().await;
    let cli = Cli {
        program,
        endpoint: srv.url(),
    };

    // CreateStream
    let created = cli
        .json(&[
            "create-stream",
            "--stream-name",
            "cli-cam-1",
            "--data-retention-in-hours",
            "24",
            "--media-type",
            "video/h264",
        ])
        .await;
    let arn = created["StreamARN"]
        .as_str()
        .expect("StreamARN in create-stream output")
        .to_owned();
    let prefix = "arn:aws:kinesisvideo:us-east-1:000000000000:stream/cli-cam-1/";
    assert!(arn.starts_with(prefix), "unexpected ARN shape: {arn}");
    let suffix = &arn[prefix.len()..];
    assert!(
        !suffix.is_empty() && suffix.chars().all(|c| c.is_ascii_digit()),
        "ARN must end in the creation time in ms: {arn}"
    );

    // DescribeStream
    let info = cli
        .json(&["describe-stream", "--stream-name", "cli-cam-1"])
        .await["StreamInfo"]
        .clone();
    assert_eq!(info["StreamName"], "cli-cam-1");
    assert_eq!(info["StreamARN"], arn.as_str());
    assert_eq!(info["Status"], "ACTIVE");
    assert_eq!(info["MediaType"], "video/h264");
    assert_eq!(info["DataRetentionInHours"], 24);
    assert!(
        info.get("CreationTime").is_some(),
        "CreationTime missing: {info}"
    );
    let version = info["Version"]
        .as_str()
        .expect("Version is a string")
        .to_owned();
    assert!(!version.is_empty());

    // ListStreams
    cli.json(&["create-stream", "--stream-name", "cli-cam-2"])
        .await;
    let listed = cli.json(&["list-streams"]).await;
    let names: Vec<&str> = listed["StreamInfoList"]
        .as_array()
        .expect("StreamInfoList array")
        .iter()
        .filter_map(|s| s["StreamName"].as_str())
        .collect();
    assert_eq!(names, vec!["cli-cam-1", "cli-cam-2"], "{listed}");

    // UpdateDataRetention (needs the current version)
    cli.json(&[
        "update-data-retention",
        "--stream-name",
        "cli-cam-1",
        "--current-version",
        &version,
        "--operation",
        "INCREASE_DATA_RETENTION",
        "--data-retention-change-in-hours",
        "48",
    ])
    .await;
    let info = cli.json(&["describe-stream", "--stream-arn", &arn]).await["StreamInfo"].clone();
    assert_eq!(info["DataRetentionInHours"], 72, "{info}");
    assert_ne!(
        info["Version"],
        version.as_str(),
        "the version must change on update"
    );

    // A stale version is refused with the modeled error.
    let stale = cli
        .call(&[
            "update-data-retention",
            "--stream-name",
            "cli-cam-1",
            "--current-version",
            &version,
            "--operation",
            "DECREASE_DATA_RETENTION",
            "--data-retention-change-in-hours",
            "1",
        ])
        .await;
    assert!(!stale.ok, "stale version accepted: {}", stale.stdout);
    assert!(
        stale.stderr.contains("VersionMismatchException"),
        "{}",
        stale.stderr
    );

    // GetDataEndpoint
    let ep = cli
        .json(&[
            "get-data-endpoint",
            "--stream-name",
            "cli-cam-1",
            "--api-name",
            "GET_MEDIA",
        ])
        .await;
    assert_eq!(ep["DataEndpoint"], srv.url().as_str(), "{ep}");

    // DeleteStream, then the stream is gone.
    cli.json(&["delete-stream", "--stream-arn", &arn]).await;
    let listed = cli.json(&["list-streams"]).await;
    let names: Vec<&str> = listed["StreamInfoList"]
        .as_array()
        .expect("StreamInfoList array")
        .iter()
        .filter_map(|s| s["StreamName"].as_str())
        .collect();
    assert!(
        !names.contains(&"cli-cam-1"),
        "deleted stream still listed: {listed}"
    );

    // An error case: a stream that does not exist.
    let missing = cli
        .call(&["describe-stream", "--stream-name", "no-such-stream"])
        .await;
    assert!(
        !missing.ok,
        "describe of a missing stream succeeded: {}",
        missing.stdout
    );
    assert!(
        missing.stderr.contains("ResourceNotFoundException"),
        "stderr should name ResourceNotFoundException: {}",
        missing.stderr
    );

    srv.stop().await.unwrap();
}

const BOTO3_SCRIPT: &str = r#"
import json, sys
import boto3
kv = boto3.client("kinesisvideo", endpoint_url=sys.argv[1], region_name="us-east-1")
created = kv.create_stream(StreamName="boto-cam-1", DataRetentionInHours=2, MediaType="video/h264")
info = kv.describe_stream(StreamName="boto-cam-1")["StreamInfo"]
listed = kv.list_streams()["StreamInfoList"]
try:
    kv.describe_stream(StreamName="no-such-stream")
    error = None
except kv.exceptions.ResourceNotFoundException as e:
    error = e.response["Error"]["Code"]
print(json.dumps({
    "arn": created["StreamARN"],
    "info": info,
    "names": [s["StreamName"] for s in listed],
    "error": error,
}, default=str))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn boto3_create_describe_list() {
    let Some(python) = python_or_skip().await else {
        return;
    };
    let srv = TestServer::start().await;
    let mut cmd = Command::new(&python);
    cmd.args(["-c", BOTO3_SCRIPT, &srv.url()]);
    let r = run(cmd, "boto3 script").await;
    assert!(
        r.ok,
        "boto3 script failed\nstdout: {}\nstderr: {}",
        r.stdout, r.stderr
    );
    let out: Value = serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|e| panic!("boto3 script output is not JSON ({e}): {}", r.stdout));

    let arn = out["arn"].as_str().expect("arn");
    assert!(
        arn.starts_with("arn:aws:kinesisvideo:us-east-1:000000000000:stream/boto-cam-1/"),
        "{arn}"
    );
    assert_eq!(out["info"]["StreamName"], "boto-cam-1");
    assert_eq!(out["info"]["StreamARN"], arn);
    assert_eq!(out["info"]["DataRetentionInHours"], 2);
    assert_eq!(out["info"]["MediaType"], "video/h264");
    assert_eq!(out["info"]["Status"], "ACTIVE");
    // boto3 turns the epoch-seconds CreationTime into a timezone-aware datetime.
    let created = out["info"]["CreationTime"].as_str().expect("CreationTime");
    assert!(
        created.starts_with("20") && created.ends_with("+00:00"),
        "{created}"
    );
    assert_eq!(out["names"], serde_json::json!(["boto-cam-1"]));
    assert_eq!(out["error"], "ResourceNotFoundException");

    srv.stop().await.unwrap();
}

/// boto3 negative cases: each must fail with the documented error code.
const BOTO3_NEGATIVE: &str = r#"
import sys, json, datetime
import boto3, botocore, botocore.auth
from botocore.config import Config
url = sys.argv[1]
out = {}
def code(fn):
    try:
        fn()
        return "no error"
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
def client(key="AKIDSTREAMVAULTTEST", secret="testsecretkeytestsecretkey", **kw):
    return boto3.client("kinesisvideo", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=key, aws_secret_access_key=secret, **kw)
out["wrong_secret"] = code(lambda: client(secret="wrong").list_streams())
out["unknown_key"] = code(lambda: client(key="AKIDNOBODY").list_streams())
out["missing_auth"] = code(lambda: client(config=Config(signature_version=botocore.UNSIGNED)).list_streams())
c = client()
def tamper(request, **kw):
    request.body = request.body.replace(b"py-cam", b"py-cbm")
c.meta.events.register("before-send.kinesis-video.DescribeStream", tamper)
out["tampered_body"] = code(lambda: c.describe_stream(StreamName="py-cam"))
real = botocore.auth.get_current_datetime
botocore.auth.get_current_datetime = lambda *a, **k: real(*a, **k) - datetime.timedelta(minutes=20)
out["date_20_min_off"] = code(lambda: client().list_streams())
botocore.auth.get_current_datetime = real
out["good"] = code(lambda: client().list_streams())
# Last: this changes the (shared, cached) service model's signing name.
s3ish = client()
s3ish.meta.service_model._service_description["metadata"]["signingName"] = "s3"
s3ish._request_signer._signing_name = "s3"
out["wrong_service"] = code(lambda: s3ish.list_streams())
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn aws_cli_media_apis_and_boto3_bad_signatures() {
    let Some(aws) = tool_or_skip(
        "aws CLI",
        "STREAMVAULT_AWS_CLI",
        candidates("STREAMVAULT_AWS_CLI", ".venv/bin/aws", "aws"),
        &["--version"],
    )
    .await
    else {
        return;
    };
    let Some(python) = python_or_skip().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // One-shot GetMedia downloads end after a second at the live edge.
    let srv = TestServer::start_in(tmp.path().join("data"), |s| {
        s.media.max_idle = Some(std::time::Duration::from_secs(1));
    })
    .await;
    srv.control()
        .await
        .create_stream()
        .stream_name("py-cam")
        .send()
        .await
        .unwrap();
    let r = put_media(
        srv.addr,
        &[
            ("x-amzn-stream-name", "py-cam"),
            ("x-amzn-producer-start-timestamp", "1795600000"),
        ],
        &sample("h264_720p_gop1s.mkv"),
        65536,
    )
    .await;
    assert_eq!(r.events("PERSISTED").len(), 10);
    let cli = |service: &'static str| {
        let (aws, url) = (aws.clone(), srv.url());
        move |args: Vec<String>| {
            let (aws, url) = (aws.clone(), url.clone());
            async move {
                let mut cmd = Command::new(&aws);
                cmd.arg(service).args(&args).args([
                    "--endpoint-url",
                    &url,
                    "--region",
                    "us-east-1",
                    "--output",
                    "json",
                ]);
                run(cmd, &format!("aws {service} {}", args.join(" "))).await
            }
        }
    };
    let archived = cli("kinesis-video-archived-media");
    let r = archived(
        [
            "list-fragments",
            "--stream-name",
            "py-cam",
            "--fragment-selector",
            "FragmentSelectorType=PRODUCER_TIMESTAMP,TimestampRange={StartTimestamp=2026-11-24T00:00:00Z,EndTimestamp=2026-11-26T00:00:00Z}",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let mut numbers: Vec<String> = v["Fragments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["FragmentNumber"].as_str().unwrap().to_owned())
        .collect();
    numbers.sort();
    assert_eq!(numbers.len(), 10);

    let mkv = tmp.path().join("out.mkv");
    let r = cli("kinesis-video-media")(vec![
        "get-media".into(),
        "--stream-name".into(),
        "py-cam".into(),
        "--start-selector".into(),
        "StartSelectorType=EARLIEST".into(),
        mkv.display().to_string(),
    ])
    .await;
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("video/webm"), "{}", r.stdout);
    let saved = std::fs::read(&mkv).unwrap();
    let mut p = ChunkParser::default();
    p.push(&saved);
    assert_eq!(p.complete(), 10, "the CLI wrote all ten chunks");

    let list = tmp.path().join("list.mkv");
    let r = archived(vec![
        "get-media-for-fragment-list".into(),
        list.display().to_string(),
        "--stream-name".into(),
        "py-cam".into(),
        "--fragments".into(),
        numbers[2].clone(),
        numbers[5].clone(),
    ])
    .await;
    assert!(r.ok, "{}", r.stderr);
    let mut p = ChunkParser::default();
    p.push(&std::fs::read(&list).unwrap());
    p.finish();
    let got: Vec<&str> = p
        .chunks
        .iter()
        .map(|c| c.tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER").unwrap())
        .collect();
    assert_eq!(got, vec![numbers[2].as_str(), numbers[5].as_str()]);

    let mut cmd = Command::new(&python);
    cmd.args(["-c", BOTO3_NEGATIVE, &srv.url()]);
    let r = run(cmd, "boto3 negative script").await;
    assert!(r.ok, "{}\n{}", r.stdout, r.stderr);
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["wrong_secret"], "InvalidSignatureException", "{v}");
    assert_eq!(v["unknown_key"], "UnrecognizedClientException", "{v}");
    assert_eq!(
        v["missing_auth"], "MissingAuthenticationTokenException",
        "{v}"
    );
    assert_eq!(v["tampered_body"], "InvalidSignatureException", "{v}");
    assert_eq!(v["date_20_min_off"], "InvalidSignatureException", "{v}");
    assert_eq!(v["wrong_service"], "InvalidSignatureException", "{v}");
    assert_eq!(v["good"], "no error", "{v}");
    srv.stop().await.unwrap();
}
