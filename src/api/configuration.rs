//! Per-stream configuration operations of the control plane:
//! `UpdateStreamStorageConfiguration` / `DescribeStreamStorageConfiguration` (one tier in
//! fact; the requested `DefaultStorageTier` is stored and described, see
//! `streams::Catalog::storage_tier`) and `UpdateNotificationConfiguration` /
//! `DescribeNotificationConfiguration` (validation and delivery in `notify`). Streams are
//! resolved, and the caller checked, by `streams::Catalog::resolve` like everywhere else.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::archived::require_retention;
use super::control::{StorageConfigInput, required_version};
use super::json::KvsJson;
use super::stream_ref::StreamRef;
use crate::auth::Access;
use crate::error::{Error, ErrorKind, Result};
use crate::model;
use crate::notify;

/// Routes of this family.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/updateStreamStorageConfiguration", post(update_storage))
        .route(
            "/describeStreamStorageConfiguration",
            post(describe_storage),
        )
        .route(
            "/updateNotificationConfiguration",
            post(update_notification),
        )
        .route(
            "/describeNotificationConfiguration",
            post(describe_notification),
        )
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateStorageInput {
    #[serde(flatten)]
    stream: StreamRef,
    current_version: Option<String>,
    stream_storage_configuration: Option<StorageConfigInput>,
}

async fn update_storage(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<UpdateStorageInput>,
) -> Result<Json<Value>> {
    let version = required_version(i.current_version)?;
    let cfg = i
        .stream_storage_configuration
        .ok_or_else(|| Error::invalid("StreamStorageConfiguration is required"))?;
    let tier = model::check_storage_tier(cfg.default_storage_tier.as_deref())?;
    let s = i
        .stream
        .resolve(&state, &access, ErrorKind::InvalidArgument)
        .await?;
    state.catalog.set_storage_tier(&s, &version, &tier).await?;
    Ok(Json(json!({})))
}

async fn describe_storage(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<StreamRef>,
) -> Result<Json<Value>> {
    let s = i
        .resolve(&state, &access, ErrorKind::InvalidArgument)
        .await?;
    let tier = state.catalog.storage_tier(&s).await?;
    Ok(Json(json!({
        "StreamName": s.name.as_str(),
        "StreamARN": state.catalog.arn(&s),
        "StreamStorageConfiguration": { "DefaultStorageTier": tier },
    })))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DestinationInput {
    uri: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NotificationInput {
    status: Option<String>,
    destination_config: Option<DestinationInput>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateNotificationInput {
    #[serde(flatten)]
    stream: StreamRef,
    notification_configuration: Option<NotificationInput>,
}

/// Sets the stream's configuration; without `NotificationConfiguration` it is removed.
/// Enabling one on a stream that keeps no data is `NoDataRetentionException` (nothing is
/// ever persisted there to notify about).
async fn update_notification(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<UpdateNotificationInput>,
) -> Result<Json<Value>> {
    let cfg = i
        .notification_configuration
        .map(|n| {
            let d = n.destination_config.ok_or_else(|| {
                Error::invalid("NotificationConfiguration.DestinationConfig is required")
            })?;
            notify::validate(n.status, d.uri, &state.settings.notifications)
        })
        .transpose()?;
    let s = i
        .stream
        .resolve(&state, &access, ErrorKind::InvalidArgument)
        .await?;
    let body = match cfg {
        Some(c) => {
            if c.status == "ENABLED" {
                require_retention(&s)?;
            }
            Some(serde_json::to_string(&c).map_err(|e| Error::internal(e.to_string()))?)
        }
        None => None,
    };
    state
        .catalog
        .index()
        .put_stream_config(&s.stream_id, notify::CONFIG_KIND, body)
        .await?;
    Ok(Json(json!({})))
}

async fn describe_notification(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<StreamRef>,
) -> Result<Json<Value>> {
    let s = i
        .resolve(&state, &access, ErrorKind::InvalidArgument)
        .await?;
    let stored = state
        .catalog
        .index()
        .get_stream_config(&s.stream_id, notify::CONFIG_KIND)
        .await?;
    Ok(Json(match stored {
        Some(body) => {
            let cfg: notify::NotificationConfig = serde_json::from_str(&body)
                .map_err(|e| Error::internal(format!("stored notification configuration: {e}")))?;
            json!({ "NotificationConfiguration": cfg })
        }
        None => json!({}),
    }))
}
