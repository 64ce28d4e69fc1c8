//! Real AWS clients against the real server: the AWS CLI (`aws kinesisvideo ...`) and
//! boto3, run as subprocesses, with their JSON output parsed and checked.
//!
//! Where the clients come from: `STREAMVAULT_AWS_CLI` / `STREAMVAULT_PYTHON` (set by
//! `.ci/run`), else `<repo>/.venv/bin/aws` / `<repo>/.venv/bin/python`, else `aws` /
//! `python3` on `PATH`. When none works the tests skip with a message, except under CI
//! (`CI` set), where a missing client is a failure.

mod common;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{ChunkParser, TestServer, put_media, sample};
use serde_json::Value;
use tokio::process::Command;

/// Longest any one client call may take (the CLI's start-up alone is about a second).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

fn under_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Candidates in order: the env override, the repo's venv, then a name looked up on PATH.
fn candidates(env_var: &str, venv_rel: &str, path_name: &str) -> Vec<OsString> {
    let mut c = Vec::new();
    if let Some(v) = std::env::var_os(env_var).filter(|v| !v.is_empty()) {
        c.push(v);
    }
    c.push(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(venv_rel)
            .into_os_string(),
    );
    c.push(OsString::from(path_name));
    c
}

/// First candidate for which `probe` exits 0.
async fn first_working(cands: &[OsString], probe: &[&str]) -> Option<OsString> {
    for c in cands {
        let ok = Command::new(c)
            .args(probe)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status();
        if let Ok(Ok(s)) = tokio::time::timeout(CALL_TIMEOUT, ok).await
            && s.success()
        {
            return Some(c.clone());
        }
    }
    None
}

/// `Some(program)`, or `None` after printing why the test is skipped; panics under CI.
async fn tool_or_skip(
    what: &str,
    env_var: &str,
    cands: Vec<OsString>,
    probe: &[&str],
) -> Option<OsString> {
    if let Some(p) = first_working(&cands, probe).await {
        return Some(p);
    }
    let tried: Vec<_> = cands
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let msg = format!(
        "{what} not usable (tried {}); set {env_var} or run `bash .ci/run`, which installs it into .venv",
        tried.join(", ")
    );
    if under_ci() {
        panic!("CI is set, so this is a failure: {msg}");
    }
    // Straight to the process's stderr, so libtest's capture does not hide the skip.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {msg}");
    None
}

/// Environment that keeps a developer's own AWS profile, credentials and endpoints out.
fn hermetic(cmd: &mut Command) {
    for v in [
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_KINESIS_VIDEO",
        "AWS_CA_BUNDLE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("AWS_ACCESS_KEY_ID", "AKIDSTREAMVAULTTEST")
        .env("AWS_SECRET_ACCESS_KEY", "testsecretkeytestsecretkey")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_PAGER", "")
        .env("AWS_MAX_ATTEMPTS", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
}

struct CallResult {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn run(mut cmd: Command, what: &str) -> CallResult {
    hermetic(&mut cmd);
    let out = tokio::time::timeout(CALL_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {CALL_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    CallResult {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

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
    let Some(python) = tool_or_skip(
        "Python with boto3",
        "STREAMVAULT_PYTHON",
        candidates("STREAMVAULT_PYTHON", ".venv/bin/python", "python3"),
        &["-c", "import boto3"],
    )
    .await
    else {
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
    let Some(python) = tool_or_skip(
        "Python with boto3",
        "STREAMVAULT_PYTHON",
        candidates("STREAMVAULT_PYTHON", ".venv/bin/python", "python3"),
        &["-c", "import boto3"],
    )
    .await
    else {
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
