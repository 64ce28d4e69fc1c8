//! Control-plane operations (`kinesisvideo`): CreateStream, DescribeStream, ListStreams,
//! UpdateStream, DeleteStream, UpdateDataRetention, GetDataEndpoint (tags are in
//! `api::tagging`). Each is `POST /<lowerCamelName>` with a JSON body;
//! validation happens here and in `model`, business rules in `streams::Catalog`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::json::KvsJson;
use super::stream_ref::StreamRef;
use crate::auth::Access;
use crate::clock::epoch_secs_json;
use crate::error::{Error, ErrorKind, Result};
use crate::index::{StreamRecord, StreamUpdate};
use crate::model::{self, MAX_RETENTION_HOURS};
use crate::streams::CreateStream;

/// Routes of this family.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/createStream", post(create_stream))
        .route("/describeStream", post(describe_stream))
        .route("/listStreams", post(list_streams))
        .route("/updateStream", post(update_stream))
        .route("/deleteStream", post(delete_stream))
        .route("/updateDataRetention", post(update_data_retention))
        .route("/getDataEndpoint", post(get_data_endpoint))
}

/// Every `APIName` GetDataEndpoint accepts.
pub const API_NAMES: [&str; 8] = [
    "PUT_MEDIA",
    "GET_MEDIA",
    "LIST_FRAGMENTS",
    "GET_MEDIA_FOR_FRAGMENT_LIST",
    "GET_HLS_STREAMING_SESSION_URL",
    "GET_DASH_STREAMING_SESSION_URL",
    "GET_CLIP",
    "GET_IMAGES",
];

fn stream_info(state: &AppState, s: &StreamRecord) -> Value {
    let mut v = json!({
        "StreamName": s.name.as_str(),
        "StreamARN": state.catalog.arn(s),
        "KmsKeyId": s.kms_key_id,
        "Version": s.version,
        "Status": s.status.as_str(),
        "CreationTime": epoch_secs_json(s.creation_ms),
        "DataRetentionInHours": s.retention_hours,
    });
    if let Some(d) = &s.device_name {
        v["DeviceName"] = json!(d);
    }
    if let Some(m) = &s.media_type {
        v["MediaType"] = json!(m);
    }
    v
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateStreamInput {
    stream_name: Option<String>,
    device_name: Option<String>,
    media_type: Option<String>,
    kms_key_id: Option<String>,
    data_retention_in_hours: Option<i64>,
    tags: Option<BTreeMap<String, String>>,
    stream_storage_configuration: Option<StorageConfigInput>,
}

/// `StreamStorageConfiguration` (CreateStream, UpdateStreamStorageConfiguration).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct StorageConfigInput {
    pub default_storage_tier: Option<String>,
}

async fn create_stream(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<CreateStreamInput>,
) -> Result<Json<Value>> {
    let name = i
        .stream_name
        .ok_or_else(|| Error::invalid("StreamName is required"))?;
    let storage_tier = i
        .stream_storage_configuration
        .map(|c| model::check_storage_tier(c.default_storage_tier.as_deref()))
        .transpose()?;
    let s = state
        .catalog
        .create(
            &access,
            CreateStream {
                name,
                device_name: i.device_name,
                media_type: i.media_type,
                kms_key_id: i.kms_key_id,
                retention_hours: i.data_retention_in_hours,
                tags: i.tags,
                storage_tier,
            },
        )
        .await?;
    tracing::info!(stream = %s.name, retention_hours = s.retention_hours, "stream created");
    Ok(Json(json!({ "StreamARN": state.catalog.arn(&s) })))
}

async fn describe_stream(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<StreamRef>,
) -> Result<Json<Value>> {
    let s = i
        .resolve(&state, &access, ErrorKind::InvalidArgument)
        .await?;
    Ok(Json(json!({ "StreamInfo": stream_info(&state, &s) })))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StreamNameCondition {
    comparison_operator: Option<String>,
    comparison_value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListStreamsInput {
    max_results: Option<i64>,
    next_token: Option<String>,
    stream_name_condition: Option<StreamNameCondition>,
}

pub(super) fn encode_token(last: &str) -> String {
    B64.encode(last.as_bytes())
}

pub(super) fn decode_token(token: &str) -> Result<String> {
    let bad = || Error::invalid("NextToken is not a token this server issued");
    if token.len() > 1024 {
        return Err(bad());
    }
    let raw = B64.decode(token).map_err(|_| bad())?;
    String::from_utf8(raw).map_err(|_| bad())
}

async fn list_streams(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<ListStreamsInput>,
) -> Result<Json<Value>> {
    let limit = i.max_results.unwrap_or(10_000);
    if !(1..=10_000).contains(&limit) {
        return Err(Error::invalid(format!(
            "MaxResults must be between 1 and 10000: value={limit}"
        )));
    }
    let prefix = match i.stream_name_condition {
        Some(c) => {
            match c.comparison_operator.as_deref() {
                None | Some("BEGINS_WITH") => {}
                Some(o) => {
                    return Err(Error::invalid(format!(
                        "ComparisonOperator must be BEGINS_WITH: value={o}"
                    )));
                }
            }
            match c.comparison_value {
                Some(v) => {
                    model::check_name("ComparisonValue", &v, 256)?;
                    Some(v)
                }
                None => None,
            }
        }
        None => None,
    };
    let after = i
        .next_token
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(decode_token)
        .transpose()?;
    let limit = limit as usize;
    // Only the streams this key may see: a key limited to `cam-*` lists only those.
    let (page, more) = state
        .catalog
        .list(&access, prefix.as_deref(), after.as_deref(), limit)
        .await?;
    let list: Vec<Value> = page.iter().map(|s| stream_info(&state, s)).collect();
    let mut out = json!({ "StreamInfoList": list });
    if more && let Some(last) = page.last() {
        out["NextToken"] = json!(encode_token(last.name.as_str()));
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateStreamInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    current_version: Option<String>,
    device_name: Option<String>,
    media_type: Option<String>,
}

pub(super) fn required_version(v: Option<String>) -> Result<String> {
    v.ok_or_else(|| Error::invalid("CurrentVersion is required"))
}

async fn update_stream(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<UpdateStreamInput>,
) -> Result<Json<Value>> {
    let version = required_version(i.current_version)?;
    if let Some(d) = &i.device_name {
        model::check_name("DeviceName", d, 128)?;
    }
    if let Some(m) = &i.media_type {
        model::check_media_type(m)?;
    }
    let s = state
        .catalog
        .resolve(
            &access,
            i.stream_name.as_deref(),
            i.stream_arn.as_deref(),
            ErrorKind::InvalidArgument,
        )
        .await?;
    let update = StreamUpdate::Metadata {
        device_name: i.device_name,
        media_type: i.media_type,
    };
    state.catalog.update(&s, Some(&version), update).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DeleteStreamInput {
    /// Not in the AWS model; accepted only when it names the same stream as the ARN.
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    current_version: Option<String>,
}

async fn delete_stream(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<DeleteStreamInput>,
) -> Result<Json<Value>> {
    let arn = i
        .stream_arn
        .ok_or_else(|| Error::invalid("StreamARN is required"))?;
    let s = state
        .catalog
        .resolve(
            &access,
            i.stream_name.as_deref(),
            Some(&arn),
            ErrorKind::InvalidArgument,
        )
        .await?;
    state
        .catalog
        .delete(&s, i.current_version.as_deref())
        .await?;
    state.gc_wake.notify_one();
    tracing::info!(stream = %s.name, "stream deleted");
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateDataRetentionInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    current_version: Option<String>,
    operation: Option<String>,
    data_retention_change_in_hours: Option<i64>,
}

async fn update_data_retention(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<UpdateDataRetentionInput>,
) -> Result<Json<Value>> {
    let version = required_version(i.current_version)?;
    let sign = match i.operation.as_deref() {
        Some("INCREASE_DATA_RETENTION") => 1,
        Some("DECREASE_DATA_RETENTION") => -1,
        Some(o) => {
            return Err(Error::invalid(format!(
                "Operation must be INCREASE_DATA_RETENTION or DECREASE_DATA_RETENTION: value={o}"
            )));
        }
        None => return Err(Error::invalid("Operation is required")),
    };
    let change = i
        .data_retention_change_in_hours
        .ok_or_else(|| Error::invalid("DataRetentionChangeInHours is required"))?;
    if change < 1 {
        return Err(Error::invalid(format!(
            "DataRetentionChangeInHours must be at least 1: value={change}"
        )));
    }
    let s = state
        .catalog
        .resolve(
            &access,
            i.stream_name.as_deref(),
            i.stream_arn.as_deref(),
            ErrorKind::InvalidArgument,
        )
        .await?;
    let hours = s.retention_hours.saturating_add(sign * change);
    if !(0..=MAX_RETENTION_HOURS).contains(&hours) {
        return Err(Error::invalid(format!(
            "resulting retention must be between 0 and {MAX_RETENTION_HOURS} hours: current={} change={}{change}",
            s.retention_hours,
            if sign > 0 { "+" } else { "-" }
        )));
    }
    state
        .catalog
        .update(&s, Some(&version), StreamUpdate::Retention { hours })
        .await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetDataEndpointInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    #[serde(rename = "APIName")]
    api_name: Option<String>,
}

async fn get_data_endpoint(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<GetDataEndpointInput>,
) -> Result<Json<Value>> {
    let api = i
        .api_name
        .ok_or_else(|| Error::invalid("APIName is required"))?;
    if !API_NAMES.contains(&api.as_str()) {
        return Err(Error::invalid(format!(
            "APIName must be one of {}: value={api}",
            API_NAMES.join(", ")
        )));
    }
    let stream = state
        .catalog
        .resolve(
            &access,
            i.stream_name.as_deref(),
            i.stream_arn.as_deref(),
            ErrorKind::InvalidArgument,
        )
        .await?;
    // A cluster sends producers and live readers to the stream's owner; any node serves
    // the rest (`docs/design/cluster.md`, Routing).
    let endpoint = match &state.cluster {
        Some(m) if matches!(api.as_str(), "PUT_MEDIA" | "GET_MEDIA") => {
            m.data_endpoint(&stream.stream_id).await?
        }
        _ => state.public_url.to_string(),
    };
    Ok(Json(json!({ "DataEndpoint": endpoint })))
}
