//! Stream tags, both API families over one store (the stream's tags in the index):
//! `TagStream` / `UntagStream` / `ListTagsForStream` (stream name or ARN, tags as a map)
//! and `TagResource` / `UntagResource` / `ListTagsForResource` (a resource ARN, tags as a
//! list of `{Key, Value}`). Keys and values are checked with the model's character
//! classes (`model::check_tags`); a stream holds at most 50 tags either way.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::control::decode_token;
use super::json::KvsJson;
use super::stream_ref::StreamRef;
use crate::auth::Access;
use crate::error::{Error, ErrorKind, Result};
use crate::index::{StreamRecord, StreamUpdate};
use crate::model::{self, MAX_TAGS};

/// Routes of this family.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tagStream", post(tag_stream))
        .route("/untagStream", post(untag_stream))
        .route("/listTagsForStream", post(list_tags_for_stream))
        .route("/TagResource", post(tag_resource))
        .route("/UntagResource", post(untag_resource))
        .route("/ListTagsForResource", post(list_tags_for_resource))
}

/// Adds or overwrites `tags` on the stream, keeping it at 50 tags at most.
async fn apply_tags(
    state: &AppState,
    s: &StreamRecord,
    tags: BTreeMap<String, String>,
) -> Result<()> {
    let after = s
        .tags
        .keys()
        .chain(tags.keys())
        .collect::<BTreeSet<_>>()
        .len();
    if after > MAX_TAGS {
        return Err(Error::new(
            ErrorKind::TagsPerResourceExceededLimit,
            format!(
                "a stream can have at most {MAX_TAGS} tags: current={} after={after}",
                s.tags.len()
            ),
        ));
    }
    let update = StreamUpdate::Tags {
        set: tags,
        remove: vec![],
    };
    state.catalog.update(s, None, update).await?;
    Ok(())
}

/// Checks a `TagKeyList` (1–50 valid keys).
fn check_key_list(keys: Option<Vec<String>>) -> Result<Vec<String>> {
    let keys = keys.ok_or_else(|| Error::invalid("TagKeyList is required"))?;
    if keys.is_empty() || keys.len() > MAX_TAGS {
        return Err(Error::invalid(format!(
            "TagKeyList must hold 1 to {MAX_TAGS} keys: count={}",
            keys.len()
        )));
    }
    for k in &keys {
        model::check_tag_key(k)?;
    }
    Ok(keys)
}

/// Removes `keys` from the stream (absent keys are ignored).
async fn remove_tags(state: &AppState, s: &StreamRecord, keys: Vec<String>) -> Result<()> {
    let update = StreamUpdate::Tags {
        set: BTreeMap::new(),
        remove: keys,
    };
    state.catalog.update(s, None, update).await?;
    Ok(())
}

/// The stream's tags, after the key a `NextToken` names. At most 50 tags exist, so one
/// page always holds the rest and no `NextToken` is returned.
fn list_tags(s: StreamRecord, next_token: Option<&str>) -> Result<Json<Value>> {
    let after = next_token
        .filter(|t| !t.is_empty())
        .map(decode_token)
        .transpose()?;
    let tags: BTreeMap<_, _> = s
        .tags
        .into_iter()
        .filter(|(k, _)| after.as_ref().is_none_or(|a| k > a))
        .collect();
    Ok(Json(json!({ "Tags": tags })))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagStreamInput {
    #[serde(flatten)]
    stream: StreamRef,
    tags: Option<BTreeMap<String, String>>,
}

async fn tag_stream(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<TagStreamInput>,
) -> Result<Json<Value>> {
    let tags = i.tags.ok_or_else(|| Error::invalid("Tags is required"))?;
    model::check_tags(&tags)?;
    let s = i
        .stream
        .resolve(&state, &access, ErrorKind::InvalidResourceFormat)
        .await?;
    apply_tags(&state, &s, tags).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UntagStreamInput {
    #[serde(flatten)]
    stream: StreamRef,
    tag_key_list: Option<Vec<String>>,
}

async fn untag_stream(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<UntagStreamInput>,
) -> Result<Json<Value>> {
    let keys = check_key_list(i.tag_key_list)?;
    let s = i
        .stream
        .resolve(&state, &access, ErrorKind::InvalidResourceFormat)
        .await?;
    remove_tags(&state, &s, keys).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListTagsInput {
    #[serde(flatten)]
    stream: StreamRef,
    next_token: Option<String>,
}

async fn list_tags_for_stream(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<ListTagsInput>,
) -> Result<Json<Value>> {
    let s = i
        .stream
        .resolve(&state, &access, ErrorKind::InvalidResourceFormat)
        .await?;
    list_tags(s, i.next_token.as_deref())
}

/// Resolves a `ResourceARN` (required; the only resources here are streams).
async fn resolve_resource(
    state: &AppState,
    access: &Access,
    arn: Option<&str>,
) -> Result<StreamRecord> {
    let arn = arn.ok_or_else(|| Error::invalid("ResourceARN is required"))?;
    state
        .catalog
        .resolve(access, None, Some(arn), ErrorKind::InvalidArgument)
        .await
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagInput {
    key: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagResourceInput {
    #[serde(rename = "ResourceARN")]
    resource_arn: Option<String>,
    tags: Option<Vec<TagInput>>,
}

/// A `TagList` as a map: 1–50 entries, each with a `Key` and a `Value`, no key twice.
fn tag_list(list: Option<Vec<TagInput>>) -> Result<BTreeMap<String, String>> {
    let list = list.ok_or_else(|| Error::invalid("Tags is required"))?;
    if list.is_empty() || list.len() > MAX_TAGS {
        return Err(Error::invalid(format!(
            "Tags must hold 1 to {MAX_TAGS} tags: count={}",
            list.len()
        )));
    }
    let mut map = BTreeMap::new();
    for t in list {
        let key = t.key.ok_or_else(|| Error::invalid("Tag.Key is required"))?;
        let value = t
            .value
            .ok_or_else(|| Error::invalid(format!("Tag.Value is required: key={key:?}")))?;
        if map.insert(key.clone(), value).is_some() {
            return Err(Error::invalid(format!(
                "Tags names a key twice: key={key:?}"
            )));
        }
    }
    model::check_tags(&map)?;
    Ok(map)
}

async fn tag_resource(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<TagResourceInput>,
) -> Result<Json<Value>> {
    let tags = tag_list(i.tags)?;
    let s = resolve_resource(&state, &access, i.resource_arn.as_deref()).await?;
    apply_tags(&state, &s, tags).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UntagResourceInput {
    #[serde(rename = "ResourceARN")]
    resource_arn: Option<String>,
    tag_key_list: Option<Vec<String>>,
}

async fn untag_resource(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<UntagResourceInput>,
) -> Result<Json<Value>> {
    let keys = check_key_list(i.tag_key_list)?;
    let s = resolve_resource(&state, &access, i.resource_arn.as_deref()).await?;
    remove_tags(&state, &s, keys).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListTagsForResourceInput {
    #[serde(rename = "ResourceARN")]
    resource_arn: Option<String>,
    next_token: Option<String>,
}

async fn list_tags_for_resource(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<ListTagsForResourceInput>,
) -> Result<Json<Value>> {
    let s = resolve_resource(&state, &access, i.resource_arn.as_deref()).await?;
    list_tags(s, i.next_token.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(k: &str, v: &str) -> TagInput {
        TagInput {
            key: Some(k.into()),
            value: Some(v.into()),
        }
    }

    #[test]
    fn tag_lists() {
        let m = tag_list(Some(vec![t("a", "1"), t("b", "")])).unwrap();
        assert_eq!(m.len(), 2);
        assert!(tag_list(Some(vec![])).is_err());
        assert!(tag_list(None).is_err());
        assert!(tag_list(Some(vec![t("a", "1"), t("a", "2")])).is_err());
        assert!(tag_list(Some(vec![t("a\n", "1")])).is_err());
        let missing = TagInput {
            key: Some("a".into()),
            value: None,
        };
        assert!(tag_list(Some(vec![missing])).is_err());
        assert!(check_key_list(Some(vec![])).is_err());
        assert!(check_key_list(Some(vec!["ok key".into()])).is_ok());
    }
}
