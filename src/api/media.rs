//! `POST /getMedia` (kinesis-video-media): validates the request, picks the start point
//! for every StartSelectorType, and streams `media::Reader`'s chunks as `video/webm`.
//! Errors before the first byte are JSON errors; later ones are error chunks.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;

use super::AppState;
use crate::auth::Access;
use crate::clock::epoch_ms_from_json_secs;
use crate::error::{Error, ErrorKind, Result};
use crate::index::{StreamRecord, TimestampKind};
use crate::media::{self, Start};
use crate::model::FragmentNumber;

pub fn router() -> Router<AppState> {
    Router::new().route("/getMedia", post(get_media))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct StartSelector {
    start_selector_type: Option<String>,
    after_fragment_number: Option<String>,
    start_timestamp: Option<f64>,
    continuation_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetMediaInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    start_selector: Option<StartSelector>,
}

/// A fragment number of this stream (any of its fragments, stored or not).
pub fn own_fragment_seq(stream: &StreamRecord, member: &str, value: &str) -> Result<u64> {
    match FragmentNumber::parse(value)? {
        Some(n) if n.stream_creation_ms == stream.creation_ms => Ok(n.seq),
        _ => Err(Error::invalid(format!(
            "{member} is not a fragment number of this stream: stream={} value={value}",
            stream.name
        ))),
    }
}

async fn start_of(state: &AppState, stream: &StreamRecord, sel: StartSelector) -> Result<Start> {
    let kind = sel
        .start_selector_type
        .ok_or_else(|| Error::invalid("StartSelector.StartSelectorType is required"))?;
    let after = |seq: u64| Start::After(seq.checked_sub(1));
    Ok(match kind.as_str() {
        "NOW" => Start::Now,
        "EARLIEST" => Start::After(None),
        "FRAGMENT_NUMBER" => {
            let n = sel.after_fragment_number.ok_or_else(|| {
                Error::invalid("AfterFragmentNumber is required for FRAGMENT_NUMBER")
            })?;
            Start::After(Some(own_fragment_seq(stream, "AfterFragmentNumber", &n)?))
        }
        "CONTINUATION_TOKEN" => {
            let t = sel.continuation_token.ok_or_else(|| {
                Error::invalid("ContinuationToken is required for CONTINUATION_TOKEN")
            })?;
            Start::After(Some(own_fragment_seq(stream, "ContinuationToken", &t)?))
        }
        "SERVER_TIMESTAMP" | "PRODUCER_TIMESTAMP" => {
            let ts = sel
                .start_timestamp
                .and_then(epoch_ms_from_json_secs)
                .ok_or_else(|| Error::invalid(format!("StartTimestamp is required for {kind}")))?;
            let tk = if kind == "SERVER_TIMESTAMP" {
                TimestampKind::Server
            } else {
                TimestampKind::Producer
            };
            let max_ms = state.settings.ingest.max_fragment_duration.as_millis() as i64;
            match media::fragment_at(
                state.catalog.index().as_ref(),
                &stream.stream_id,
                tk,
                ts,
                max_ms,
            )
            .await?
            {
                Some(seq) => after(seq),
                // Past the last fragment: continue with what arrives next.
                None => Start::After(
                    state
                        .catalog
                        .index()
                        .last_fragment(&stream.stream_id)
                        .await?
                        .map(|f| f.seq),
                ),
            }
        }
        other => {
            return Err(Error::invalid(format!(
                "StartSelectorType must be NOW, EARLIEST, FRAGMENT_NUMBER, SERVER_TIMESTAMP, PRODUCER_TIMESTAMP or CONTINUATION_TOKEN: value={other}"
            )));
        }
    })
}

async fn get_media(
    State(state): State<AppState>,
    access: Access,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response> {
    let raw = super::json::read_body(&state, body).await?;
    let i: GetMediaInput = super::json::parse_json(&raw)?;
    let stream = state
        .catalog
        .resolve(
            &access,
            i.stream_name.as_deref(),
            i.stream_arn.as_deref(),
            ErrorKind::InvalidArgument,
        )
        .await?;
    // A cluster serves the live tail where the stream is ingested: a stream another live
    // node owns is read through that node (`docs/design/cluster.md`, Routing).
    if let Some(m) = &state.cluster
        && !crate::cluster::forward::is_forwarded(&headers)
        && let Some(owner) = m.media_node_elsewhere(&stream.stream_id).await?
    {
        return m
            .forward(
                &owner,
                axum::http::Method::POST,
                &uri,
                &headers,
                axum::body::Body::from(raw),
            )
            .await;
    }
    let sel = i
        .start_selector
        .ok_or_else(|| Error::invalid("StartSelector is required"))?;
    let start = start_of(&state, &stream, sel).await?;
    let runtime = state.ingest.runtime(&stream.stream_id);
    let guard = runtime.add_reader(
        state.settings.media.max_readers_per_stream,
        stream.name.as_str(),
    )?;
    let key = state.catalog.data_key(&stream)?;
    // Bounded in bytes and counted in the ingest memory budget (see `ingest::reader_queue`).
    let (tx, rx) = crate::ingest::reader_queue(
        state.ingest.budget().clone(),
        state.settings.media.max_reader_queue_bytes as usize,
    );
    let reader = media::Reader::new(
        state.catalog.clone(),
        stream,
        key,
        runtime,
        tx,
        state.settings.media.max_idle,
    );
    tokio::spawn(async move {
        reader.run(start).await;
        drop(guard);
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "video/webm")],
        axum::body::Body::from_stream(rx),
    )
        .into_response())
}
