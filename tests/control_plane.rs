//! Every control-plane operation driven through the AWS SDK for Rust against the real
//! server, including the typed errors, plus wire details the SDK hides (error headers,
//! malformed JSON, unknown paths) and persistence across a restart.

mod common;

use std::collections::HashMap;

use aws_sdk_kinesisvideo::types::{
    ApiName, ComparisonOperator, StreamNameCondition, UpdateDataRetentionOperation,
};
use common::{TestServer, header};

#[tokio::test]
async fn create_describe_list_update_delete() {
    let srv = TestServer::start().await;
    let kv = srv.control().await;

    let arn = kv
        .create_stream()
        .stream_name("cam-1")
        .media_type("video/h264")
        .device_name("dev-1")
        .send()
        .await
        .unwrap()
        .stream_arn
        .unwrap();
    assert!(
        arn.starts_with("arn:aws:kinesisvideo:us-east-1:000000000000:stream/cam-1/"),
        "{arn}"
    );
    let creation_ms: i64 = arn.rsplit('/').next().unwrap().parse().unwrap();

    let info = kv
        .describe_stream()
        .stream_name("cam-1")
        .send()
        .await
        .unwrap()
        .stream_info
        .unwrap();
    assert_eq!(info.stream_name(), Some("cam-1"));
    assert_eq!(info.stream_arn(), Some(arn.as_str()));
    assert_eq!(
        info.data_retention_in_hours(),
        Some(24),
        "product default retention is 24 h"
    );
    assert_eq!(info.status().map(|s| s.as_str()), Some("ACTIVE"));
    assert_eq!(info.media_type(), Some("video/h264"));
    assert_eq!(info.device_name(), Some("dev-1"));
    assert_eq!(
        info.creation_time().unwrap().to_millis().unwrap(),
        creation_ms
    );
    let v1 = info.version().unwrap().to_owned();

    // Describe by ARN works too.
    let by_arn = kv
        .describe_stream()
        .stream_arn(&arn)
        .send()
        .await
        .unwrap()
        .stream_info
        .unwrap();
    assert_eq!(by_arn.stream_name(), Some("cam-1"));

    for n in ["cam-2", "cam-3", "door-1"] {
        kv.create_stream()
            .stream_name(n)
            .data_retention_in_hours(0)
            .send()
            .await
            .unwrap();
    }
    let all = kv.list_streams().send().await.unwrap();
    assert_eq!(all.stream_info_list().len(), 4);
    let cams = kv
        .list_streams()
        .stream_name_condition(
            StreamNameCondition::builder()
                .comparison_operator(ComparisonOperator::BeginsWith)
                .comparison_value("cam-")
                .build(),
        )
        .max_results(2)
        .send()
        .await
        .unwrap();
    assert_eq!(cams.stream_info_list().len(), 2);
    let token = cams.next_token().expect("a second page").to_owned();
    let page2 = kv
        .list_streams()
        .stream_name_condition(
            StreamNameCondition::builder()
                .comparison_operator(ComparisonOperator::BeginsWith)
                .comparison_value("cam-")
                .build(),
        )
        .max_results(2)
        .next_token(token)
        .send()
        .await
        .unwrap();
    let names: Vec<_> = page2
        .stream_info_list()
        .iter()
        .filter_map(|s| s.stream_name())
        .collect();
    assert_eq!(names, vec!["cam-3"]);
    assert!(page2.next_token().is_none());

    // UpdateStream changes the version; the old version is now stale.
    kv.update_stream()
        .stream_name("cam-1")
        .current_version(&v1)
        .media_type("video/h265")
        .send()
        .await
        .unwrap();
    let info = kv
        .describe_stream()
        .stream_name("cam-1")
        .send()
        .await
        .unwrap()
        .stream_info
        .unwrap();
    assert_eq!(info.media_type(), Some("video/h265"));
    let v2 = info.version().unwrap().to_owned();
    assert_ne!(v1, v2);
    let err = kv
        .update_stream()
        .stream_name("cam-1")
        .current_version(&v1)
        .device_name("x")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_version_mismatch_exception(), "{err:?}");

    // Retention: increase, decrease, out of range.
    kv.update_data_retention()
        .stream_name("cam-1")
        .current_version(&v2)
        .operation(UpdateDataRetentionOperation::IncreaseDataRetention)
        .data_retention_change_in_hours(24)
        .send()
        .await
        .unwrap();
    let info = kv
        .describe_stream()
        .stream_name("cam-1")
        .send()
        .await
        .unwrap()
        .stream_info
        .unwrap();
    assert_eq!(info.data_retention_in_hours(), Some(48));
    let v3 = info.version().unwrap().to_owned();
    let err = kv
        .update_data_retention()
        .stream_name("cam-1")
        .current_version(&v3)
        .operation(UpdateDataRetentionOperation::DecreaseDataRetention)
        .data_retention_change_in_hours(49)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_invalid_argument_exception(), "{err:?}");
    let err = kv
        .update_data_retention()
        .stream_name("cam-1")
        .current_version(&v3)
        .operation(UpdateDataRetentionOperation::IncreaseDataRetention)
        .data_retention_change_in_hours(87_600)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_invalid_argument_exception(), "{err:?}");

    // GetDataEndpoint for every API name returns this server's base URL.
    for api in ApiName::values() {
        let ep = kv
            .get_data_endpoint()
            .stream_name("cam-1")
            .api_name(ApiName::from(*api))
            .send()
            .await
            .unwrap();
        assert_eq!(ep.data_endpoint(), Some(srv.url().as_str()), "api {api}");
    }

    // DeleteStream: stale version refused, right version accepted, then 404.
    let err = kv
        .delete_stream()
        .stream_arn(&arn)
        .current_version(&v1)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_version_mismatch_exception(), "{err:?}");
    kv.delete_stream()
        .stream_arn(&arn)
        .current_version(&v3)
        .send()
        .await
        .unwrap();
    let err = kv
        .describe_stream()
        .stream_name("cam-1")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_resource_not_found_exception(), "{err:?}");
    // A re-created stream of the same name is a new stream with a new ARN.
    let arn2 = kv
        .create_stream()
        .stream_name("cam-1")
        .send()
        .await
        .unwrap()
        .stream_arn
        .unwrap();
    assert_ne!(arn, arn2);
    let err = kv
        .describe_stream()
        .stream_arn(&arn)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        err.is_resource_not_found_exception(),
        "old ARN must not find the new stream: {err:?}"
    );
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn typed_errors() {
    let srv = TestServer::start().await;
    let kv = srv.control().await;

    let raw = kv
        .describe_stream()
        .stream_name("nope")
        .send()
        .await
        .unwrap_err();
    let http_status = raw.raw_response().map(|r| r.status().as_u16());
    assert_eq!(http_status, Some(404));
    assert!(raw.into_service_error().is_resource_not_found_exception());

    kv.create_stream().stream_name("dup").send().await.unwrap();
    let err = kv
        .create_stream()
        .stream_name("dup")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_resource_in_use_exception(), "{err:?}");

    for bad in ["has space", "", "slash/name", &"x".repeat(257)] {
        let err = kv
            .create_stream()
            .stream_name(bad)
            .send()
            .await
            .unwrap_err()
            .into_service_error();
        assert!(err.is_invalid_argument_exception(), "name {bad:?}: {err:?}");
    }
    for bad in [-1, 87_601] {
        let err = kv
            .create_stream()
            .stream_name("r")
            .data_retention_in_hours(bad)
            .send()
            .await
            .unwrap_err()
            .into_service_error();
        assert!(
            err.is_invalid_argument_exception(),
            "retention {bad}: {err:?}"
        );
    }
    let err = kv
        .create_stream()
        .stream_name("m")
        .media_type("not a media type")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_invalid_argument_exception(), "{err:?}");
    let err = kv
        .create_stream()
        .stream_name("k")
        .kms_key_id("no-such-key")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_invalid_argument_exception(), "{err:?}");

    // Tags: 50 allowed, a 51st refused.
    let fifty: HashMap<String, String> = (0..50)
        .map(|i| (format!("k{i:02}"), format!("v{i}")))
        .collect();
    kv.create_stream()
        .stream_name("tagged")
        .set_tags(Some(fifty))
        .send()
        .await
        .unwrap();
    let err = kv
        .tag_stream()
        .stream_name("tagged")
        .tags("one-more", "x")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        err.is_tags_per_resource_exceeded_limit_exception(),
        "{err:?}"
    );
    // Overwriting an existing key is not a new tag.
    kv.tag_stream()
        .stream_name("tagged")
        .tags("k00", "new")
        .send()
        .await
        .unwrap();
    let tags = kv
        .list_tags_for_stream()
        .stream_name("tagged")
        .send()
        .await
        .unwrap();
    assert_eq!(tags.tags().unwrap().len(), 50);
    assert_eq!(
        tags.tags().unwrap().get("k00").map(String::as_str),
        Some("new")
    );
    kv.untag_stream()
        .stream_name("tagged")
        .tag_key_list("k00")
        .tag_key_list("absent")
        .send()
        .await
        .unwrap();
    let tags = kv
        .list_tags_for_stream()
        .stream_name("tagged")
        .send()
        .await
        .unwrap();
    assert_eq!(tags.tags().unwrap().len(), 49);
    let err = kv
        .tag_stream()
        .stream_name("tagged")
        .tags("bad*key", "x")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_invalid_argument_exception(), "{err:?}");
    let err = kv
        .list_tags_for_stream()
        .stream_arn("arn:aws:s3:::not-a-stream")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_invalid_resource_format_exception(), "{err:?}");
    let many: HashMap<String, String> = (0..51).map(|i| (format!("t{i}"), String::new())).collect();
    let err = kv
        .create_stream()
        .stream_name("too-many")
        .set_tags(Some(many))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        err.is_tags_per_resource_exceeded_limit_exception(),
        "{err:?}"
    );
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn wire_level_errors_are_kvs_json() {
    let srv = TestServer::start().await;
    let (status, h, body) = srv
        .post_raw("/describeStream", r#"{"StreamName":"x""#)
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        header(&h, "x-amzn-errortype"),
        Some("SerializationException")
    );
    assert!(header(&h, "x-amzn-requestid").is_some());
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["__type"], "SerializationException");
    assert!(v["Message"].as_str().unwrap().contains("JSON"));

    // Wrong JSON type for a member.
    let (status, h, _) = srv
        .post_raw(
            "/createStream",
            r#"{"StreamName":"a","DataRetentionInHours":"ten"}"#,
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        header(&h, "x-amzn-errortype"),
        Some("SerializationException")
    );

    let (status, h, body) = srv.post_raw("/noSuchOperation", "{}").await;
    assert_eq!(status, 404);
    assert_eq!(
        header(&h, "x-amzn-errortype"),
        Some("UnknownOperationException")
    );
    assert!(body.starts_with('{'));
    assert!(header(&h, "x-amzn-requestid").is_some());

    let (status, h, _) = srv.post_raw("/createSignalingChannel", "{}").await;
    assert_eq!(status, 501);
    assert_eq!(
        header(&h, "x-amzn-errortype"),
        Some("NotImplementedException")
    );

    // Missing required member, and both name and a contradicting ARN.
    let (status, h, _) = srv.post_raw("/describeStream", "{}").await;
    assert_eq!(
        (status, header(&h, "x-amzn-errortype")),
        (400, Some("InvalidArgumentException"))
    );
    let (status, h, _) = srv
        .post_raw("/getDataEndpoint", r#"{"StreamName":"a","APIName":"NOPE"}"#)
        .await;
    assert_eq!(
        (status, header(&h, "x-amzn-errortype")),
        (400, Some("InvalidArgumentException"))
    );

    // Success responses carry a request id too, and metrics count requests.
    let (status, h, _) = srv.post_raw("/listStreams", "").await;
    assert_eq!(status, 200);
    assert!(header(&h, "x-amzn-requestid").is_some());
    let (status, _, metrics) = common::raw_http(srv.addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("streamvault_requests_total"), "{metrics}");
    assert!(metrics.contains("operation=\"listStreams\""), "{metrics}");
    assert!(
        metrics.contains("streamvault_request_duration_seconds"),
        "{metrics}"
    );
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn streams_survive_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let srv = TestServer::start_in(dir.clone(), |_| {}).await;
    let kv = srv.control().await;
    kv.create_stream()
        .stream_name("persist")
        .data_retention_in_hours(5)
        .tags("site", "north")
        .send()
        .await
        .unwrap();
    let before = kv
        .describe_stream()
        .stream_name("persist")
        .send()
        .await
        .unwrap()
        .stream_info
        .unwrap();
    kv.update_data_retention()
        .stream_name("persist")
        .current_version(before.version().unwrap())
        .operation(UpdateDataRetentionOperation::IncreaseDataRetention)
        .data_retention_change_in_hours(7)
        .send()
        .await
        .unwrap();
    let before = kv
        .describe_stream()
        .stream_name("persist")
        .send()
        .await
        .unwrap()
        .stream_info
        .unwrap();
    srv.stop().await.unwrap();

    let srv = TestServer::start_in(dir, |_| {}).await;
    let kv = srv.control().await;
    let after = kv
        .describe_stream()
        .stream_name("persist")
        .send()
        .await
        .unwrap()
        .stream_info
        .unwrap();
    assert_eq!(after.version(), before.version());
    assert_eq!(after.data_retention_in_hours(), Some(12));
    assert_eq!(after.stream_arn(), before.stream_arn());
    assert_eq!(after.creation_time(), before.creation_time());
    let tags = kv
        .list_tags_for_stream()
        .stream_name("persist")
        .send()
        .await
        .unwrap();
    assert_eq!(
        tags.tags().unwrap().get("site").map(String::as_str),
        Some("north")
    );
    srv.stop().await.unwrap();
}
