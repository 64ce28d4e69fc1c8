//! The rest of the API surface (issue 17): the operation table against the botocore
//! models, `NotImplementedException` for every modeled operation this server does not
//! implement, KVS JSON for a wrong method, the model's tag character classes, the ARN
//! partition of the region, the resource-tagging operations through boto3, and a key
//! limited to `cam-*` that tries to tag another stream by name and by ARN.

mod common;

use common::clients::{BOTO3_PRELUDE, python_or_skip, run};
use common::*;
use serde_json::Value;
use streamvault::operations::OPERATIONS;
use tokio::process::Command;

const LIMITED: (&str, &str) = ("LIMITEDTAGKEY1", "limitedtagsecretlimitedtagsecret");

/// Runs a Python script with boto3 (`argv[1]` is the endpoint); its stdout as JSON.
async fn boto3(script: &str, endpoint: &str) -> Option<Value> {
    let python = python_or_skip().await?;
    let mut cmd = Command::new(&python);
    cmd.args(["-c", script, endpoint]);
    let r = run(cmd, "boto3 script").await;
    assert!(
        r.ok,
        "boto3 script failed\nstdout: {}\nstderr: {}",
        r.stdout, r.stderr
    );
    Some(
        serde_json::from_str(r.stdout.trim())
            .unwrap_or_else(|e| panic!("boto3 output is not JSON ({e}): {}", r.stdout)),
    )
}

fn error_type(headers: &[(String, String)], body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    let t = v["__type"].as_str().expect("__type").to_owned();
    assert_eq!(header(headers, "x-amzn-errortype"), Some(t.as_str()));
    assert!(v["Message"].is_string(), "{body}");
    t
}

const MODELS: &str = r#"
import json, botocore.session
s = botocore.session.get_session()
out = []
for svc in ["kinesisvideo", "kinesis-video-media", "kinesis-video-archived-media",
            "kinesis-video-signaling", "kinesis-video-webrtc-storage"]:
    m = s.get_service_model(svc)
    for name in m.operation_names:
        op = m.operation_model(name)
        out.append({"name": name, "path": op.http["requestUri"],
                    "errors": [e.name for e in op.error_shapes]})
print(json.dumps(out))
"#;

/// Every modeled operation is in the table with the model's path and denial exception,
/// and every one the table marks unimplemented answers `NotImplementedException`.
#[tokio::test]
async fn every_modeled_operation_is_known_and_unimplemented_ones_say_so() {
    let srv = TestServer::start().await;
    let Some(models) = boto3(MODELS, &srv.url()).await else {
        return;
    };
    let models = models.as_array().expect("list");
    assert!(models.len() >= 43, "{} operations", models.len());
    for m in models {
        let name = m["name"].as_str().unwrap();
        let op = streamvault::operations::by_name(name)
            .unwrap_or_else(|| panic!("{name} is modeled but not in operations::OPERATIONS"));
        assert_eq!(op.path, m["path"].as_str().unwrap(), "{name}");
        let errors: Vec<&str> = m["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        let declares_denied = errors.contains(&"AccessDeniedException");
        assert_eq!(op.access_denied, declares_denied, "{name}: {errors:?}");
    }
    let mut unimplemented = 0;
    for op in OPERATIONS.iter().filter(|o| !o.implemented) {
        unimplemented += 1;
        let (status, h, body) = srv.post_raw(op.path, "{}").await;
        assert_eq!(status, 501, "{}: {body}", op.name);
        assert_eq!(
            error_type(&h, &body),
            "NotImplementedException",
            "{}",
            op.name
        );
    }
    assert_eq!(unimplemented, 17);
    // A path no model names is still an unknown operation.
    let (status, h, body) = srv.post_raw("/noSuchOperation", "{}").await;
    assert_eq!(status, 404);
    assert_eq!(error_type(&h, &body), "UnknownOperationException");
}

#[tokio::test]
async fn a_wrong_method_gets_a_kvs_json_error() {
    let srv = TestServer::start().await;
    for (method, path) in [
        ("GET", "/createStream"),
        ("PUT", "/describeStream"),
        ("GET", "/putMedia"),
        ("DELETE", "/TagResource"),
    ] {
        let (status, h, body) = raw_http(srv.addr, method, path, "").await;
        assert_eq!(status, 405, "{method} {path}: {body}");
        assert_eq!(
            error_type(&h, &body),
            "MethodNotAllowedException",
            "{method} {path}"
        );
        assert_eq!(header(&h, "content-type"), Some("application/json"));
    }
}

#[tokio::test]
async fn tag_keys_and_values_follow_the_model_classes() {
    let srv = TestServer::start().await;
    srv.create_stream("cam-1", 1).await;
    for (k, v) in [
        ("tab\tkey", "v"),
        ("k", "line\nbreak"),
        ("nul\u{0}", "v"),
        ("k", "bell\u{7}"),
        ("zero\u{200B}width", "v"),
    ] {
        let body = serde_json::json!({"StreamName": "cam-1", "Tags": {k: v}}).to_string();
        let (status, h, resp) = srv.post_raw("/tagStream", &body).await;
        assert_eq!(status, 400, "{k:?}={v:?}: {resp}");
        assert_eq!(error_type(&h, &resp), "InvalidArgumentException");
        let body = serde_json::json!({"StreamName": "cam-1-x", "Tags": {k: v}}).to_string();
        let (status, _, _) = srv.post_raw("/createStream", &body).await;
        assert_eq!(status, 400, "CreateStream {k:?}={v:?}");
    }
    let ok = serde_json::json!({"StreamName": "cam-1", "Tags": {"Ort Süd 東京": "٣ x:y/z=+-@_."}});
    let (status, _, resp) = srv.post_raw("/tagStream", &ok.to_string()).await;
    assert_eq!(status, 200, "{resp}");
}

#[tokio::test]
async fn the_arn_partition_follows_the_region() {
    for (region, partition) in [
        ("cn-north-1", "aws-cn"),
        ("us-gov-west-1", "aws-us-gov"),
        ("eu-west-1", "aws"),
    ] {
        let srv = TestServer::start_with(|s| {
            s.region = region.into();
            s.auth.enabled = false;
            s.access_key_id = None;
            s.secret_access_key = None;
        })
        .await;
        let (status, _, body) = raw_http_signed(
            srv.addr,
            "POST",
            "/createStream",
            r#"{"StreamName":"c"}"#,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let arn = serde_json::from_str::<Value>(&body).unwrap()["StreamARN"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            arn.starts_with(&format!("arn:{partition}:kinesisvideo:{region}:")),
            "{arn}"
        );
        let by_arn = serde_json::json!({ "StreamARN": arn }).to_string();
        let (status, _, body) =
            raw_http_signed(srv.addr, "POST", "/describeStream", &by_arn, None).await;
        assert_eq!(status, 200, "{body}");
        // The same ARN in another partition names no stream here.
        let other = arn.replacen(&format!("arn:{partition}:"), "arn:aws-iso:", 1);
        let by_other = serde_json::json!({ "StreamARN": other }).to_string();
        let (status, _, body) =
            raw_http_signed(srv.addr, "POST", "/describeStream", &by_other, None).await;
        assert_eq!(status, 404, "{body}");
    }
}

/// Follows [`BOTO3_PRELUDE`].
const BOTO3_TAGS: &str = r#"
arn = kv.create_stream(StreamName="tag-cam", DataRetentionInHours=1,
                       Tags={"site": "north"})["StreamARN"]
kv.tag_resource(ResourceARN=arn, Tags=[{"Key": "owner", "Value": "team a"},
                                       {"Key": "site", "Value": "south"}])
after_tag = kv.list_tags_for_resource(ResourceARN=arn)["Tags"]
kv.tag_stream(StreamName="tag-cam", Tags={"floor": "2"})
via_stream = kv.list_tags_for_stream(StreamARN=arn)["Tags"]
kv.untag_resource(ResourceARN=arn, TagKeyList=["owner", "absent"])
after_untag = kv.list_tags_for_resource(ResourceARN=arn)["Tags"]
err("too_many", kv.tag_resource, ResourceARN=arn,
    Tags=[{"Key": "k%d" % i, "Value": ""} for i in range(49)])
err("missing", kv.list_tags_for_resource,
    ResourceARN=arn.replace("/tag-cam/", "/no-such-cam/"))
err("bad_arn", kv.list_tags_for_resource, ResourceARN="arn:aws:kinesisvideo:us-east-1:1:stream/x")
print(json.dumps({"after_tag": after_tag, "via_stream": via_stream,
                  "after_untag": after_untag, "errors": errors}))
"#;

#[tokio::test]
async fn boto3_resource_tagging_round_trip() {
    let srv = TestServer::start().await;
    let script = format!("{BOTO3_PRELUDE}{BOTO3_TAGS}");
    let Some(out) = boto3(&script, &srv.url()).await else {
        return;
    };
    assert_eq!(
        out["after_tag"],
        serde_json::json!({"site": "south", "owner": "team a"})
    );
    assert_eq!(
        out["via_stream"],
        serde_json::json!({"site": "south", "owner": "team a", "floor": "2"})
    );
    assert_eq!(
        out["after_untag"],
        serde_json::json!({"site": "south", "floor": "2"})
    );
    assert_eq!(
        out["errors"]["too_many"],
        "TagsPerResourceExceededLimitException"
    );
    assert_eq!(out["errors"]["missing"], "ResourceNotFoundException");
    assert!(
        out["errors"]["bad_arn"] == "InvalidArgumentException"
            || out["errors"]["bad_arn"] == "ParamValidation",
        "{}",
        out["errors"]
    );
}

/// A key limited to `cam-*` cannot tag, untag or read the tags of `door`, by name or by
/// ARN, through either family; the resource family answers `AccessDeniedException` (as
/// its model declares), the stream family `NotAuthorizedException`. door is unchanged.
#[tokio::test]
async fn a_limited_key_cannot_tag_another_stream() {
    let srv = TestServer::start_with(|s| {
        s.auth.keys.push(limited_key(LIMITED, &["cam-*"]));
    })
    .await;
    srv.create_stream("cam-1", 1).await;
    let c = srv.control().await;
    let door = c
        .create_stream()
        .stream_name("door")
        .tags("k", "orig")
        .send()
        .await
        .unwrap()
        .stream_arn
        .unwrap();
    let cam = c
        .describe_stream()
        .stream_name("cam-1")
        .send()
        .await
        .unwrap()
        .stream_info
        .unwrap()
        .stream_arn
        .unwrap();
    let j = |v: Value| v.to_string();
    let attempts = [
        (
            "/TagResource",
            j(serde_json::json!({"ResourceARN": door, "Tags": [{"Key": "k", "Value": "x"}]})),
            "AccessDeniedException",
        ),
        (
            "/UntagResource",
            j(serde_json::json!({"ResourceARN": door, "TagKeyList": ["k"]})),
            "AccessDeniedException",
        ),
        (
            "/ListTagsForResource",
            j(serde_json::json!({"ResourceARN": door})),
            "AccessDeniedException",
        ),
        (
            "/tagStream",
            j(serde_json::json!({"StreamName": "door", "Tags": {"k": "x"}})),
            "NotAuthorizedException",
        ),
        (
            "/tagStream",
            j(serde_json::json!({"StreamARN": door, "Tags": {"k": "x"}})),
            "NotAuthorizedException",
        ),
        (
            "/untagStream",
            j(serde_json::json!({"StreamARN": door, "TagKeyList": ["k"]})),
            "NotAuthorizedException",
        ),
        // A cam- name with door's ARN: the two must agree, and door is still refused.
        (
            "/tagStream",
            j(serde_json::json!({"StreamName": "cam-1", "StreamARN": door, "Tags": {"k": "x"}})),
            "InvalidArgumentException",
        ),
        // door's ARN with the name part rewritten to a nonexistent cam- stream: not found.
        (
            "/TagResource",
            j(
                serde_json::json!({"ResourceARN": door.replace("/door/", "/cam-9/"), "Tags": [{"Key": "k", "Value": "x"}]}),
            ),
            "ResourceNotFoundException",
        ),
    ];
    for (path, body, want) in attempts {
        let (status, h, resp) = raw_http_signed(srv.addr, "POST", path, &body, Some(LIMITED)).await;
        assert!(
            matches!(status, 400 | 401 | 404),
            "{path} {body}: {status} {resp}"
        );
        assert_eq!(error_type(&h, &resp), want, "{path} {body}");
    }
    let tags = c
        .list_tags_for_stream()
        .stream_name("door")
        .send()
        .await
        .unwrap()
        .tags
        .unwrap();
    assert_eq!(tags.get("k").map(String::as_str), Some("orig"));
    assert_eq!(tags.len(), 1);
    // The same key may tag its own stream through both families.
    let ok = j(serde_json::json!({"ResourceARN": cam, "Tags": [{"Key": "a", "Value": "1"}]}));
    let (status, _, resp) =
        raw_http_signed(srv.addr, "POST", "/TagResource", &ok, Some(LIMITED)).await;
    assert_eq!(status, 200, "{resp}");
}
