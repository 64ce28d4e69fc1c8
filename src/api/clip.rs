//! `POST /getClip` (kinesis-video-archived-media): a classic faststart MP4 of a
//! timestamp range. Two passes over the fragments: the first demuxes them to lay out
//! the `moov` (and fails with a modeled JSON error before any byte is sent), the second
//! streams the sample data. Memory per clip is bounded: sample metadata for the whole
//! clip plus at most `playback.clip_buffer_bytes` of fragments kept between the passes
//! (the rest are read again).

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use super::AppState;
use super::archived::require_retention;
use super::json::KvsJson;
use crate::auth::Access;
use crate::clock::epoch_ms_from_json_secs;
use crate::error::{Error, ErrorKind, Result};
use crate::index::TimestampKind;
use crate::media::demux::FragmentLoader;
use crate::playback::mp4::{self, FragmentMeta};
use crate::playback::{Dedup, Packaged, select_fragments};

/// Longest range a clip (or an HLS/DASH session range) may span.
pub const MAX_RANGE_MS: i64 = 24 * 3600 * 1000;
/// Bytes per body chunk of the streamed MP4.
const CHUNK: usize = 256 * 1024;

pub fn router() -> Router<AppState> {
    Router::new().route("/getClip", post(get_clip))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct TimestampRange {
    pub start_timestamp: Option<f64>,
    pub end_timestamp: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct FragmentSelector {
    pub fragment_selector_type: Option<String>,
    pub timestamp_range: Option<TimestampRange>,
}

/// `PRODUCER_TIMESTAMP` | `SERVER_TIMESTAMP` (`member` names the field in errors).
pub fn selector_kind(v: Option<&str>, member: &str) -> Result<Option<TimestampKind>> {
    match v {
        None => Ok(None),
        Some("PRODUCER_TIMESTAMP") => Ok(Some(TimestampKind::Producer)),
        Some("SERVER_TIMESTAMP") => Ok(Some(TimestampKind::Server)),
        Some(other) => Err(Error::invalid(format!(
            "{member} must be PRODUCER_TIMESTAMP or SERVER_TIMESTAMP: value={other}"
        ))),
    }
}

/// A timestamp member in epoch ms.
pub fn ts_member(v: Option<f64>, name: &str) -> Result<Option<i64>> {
    match v {
        None => Ok(None),
        Some(v) => epoch_ms_from_json_secs(v)
            .map(Some)
            .ok_or_else(|| Error::invalid(format!("{name} is not a valid timestamp"))),
    }
}

/// Checks `End > Start` and `End − Start ≤ 24 h`.
pub fn check_range(start: i64, end: i64) -> Result<()> {
    if end <= start {
        return Err(Error::invalid(
            "EndTimestamp must be later than StartTimestamp",
        ));
    }
    if end - start > MAX_RANGE_MS {
        return Err(Error::invalid(
            "the timestamp range must not exceed 24 hours",
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetClipInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    clip_fragment_selector: Option<FragmentSelector>,
}

async fn get_clip(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<GetClipInput>,
) -> Result<Response> {
    let sel = i
        .clip_fragment_selector
        .ok_or_else(|| Error::invalid("ClipFragmentSelector is required"))?;
    let kind = selector_kind(
        sel.fragment_selector_type.as_deref(),
        "ClipFragmentSelector.FragmentSelectorType",
    )?
    .ok_or_else(|| Error::invalid("ClipFragmentSelector.FragmentSelectorType is required"))?;
    let range = sel
        .timestamp_range
        .ok_or_else(|| Error::invalid("ClipFragmentSelector.TimestampRange is required"))?;
    let start = ts_member(range.start_timestamp, "StartTimestamp")?
        .ok_or_else(|| Error::invalid("TimestampRange.StartTimestamp is required"))?;
    let end = ts_member(range.end_timestamp, "EndTimestamp")?
        .ok_or_else(|| Error::invalid("TimestampRange.EndTimestamp is required"))?;
    check_range(start, end)?;
    let stream = state
        .catalog
        .resolve(
            &access,
            i.stream_name.as_deref(),
            i.stream_arn.as_deref(),
            ErrorKind::InvalidArgument,
        )
        .await?;
    require_retention(&stream)?;
    // Held until the whole clip is sent (moved into the sending task below).
    let slot = state.playback.clip_slot()?;
    let limits = state.playback.settings.clone();
    let rows = select_fragments(
        &state.catalog,
        &stream,
        kind,
        start,
        end,
        limits.clip_max_fragments,
        Dedup::Oldest,
    )
    .await?;
    if rows.is_empty() {
        return Err(Error::not_found(format!(
            "no fragments in the timestamp range: stream={} start_ms={start} end_ms={end}",
            stream.name
        )));
    }
    // Pass 1: lay out the file.
    let pb = state.playback.clone();
    let mut loader = FragmentLoader::new(state.catalog.clone(), stream.clone())?;
    let mut metas = Vec::with_capacity(rows.len());
    let mut parts: Vec<(crate::index::FragmentRecord, Option<Packaged>)> =
        Vec::with_capacity(rows.len());
    let (mut bytes, mut buffered) = (0u64, 0u64);
    for row in rows {
        let p = pb.load(&mut loader, &row).await?;
        let m = FragmentMeta::of(&p);
        let n = m.bytes();
        if !metas.is_empty() && bytes + n > limits.clip_max_bytes {
            break;
        }
        bytes += n;
        metas.push((m, p.config.clone()));
        let keep = buffered + n <= limits.clip_buffer_bytes;
        if keep {
            buffered += n;
        }
        parts.push((row, keep.then_some(p)));
    }
    let layout = mp4::clip_layout(&metas)?;
    let total = layout.total;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::result::Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let _slot = slot;
        let mut buf = BytesMut::with_capacity(CHUNK);
        buf.extend_from_slice(&layout.head);
        for ((row, kept), (meta, _)) in parts.into_iter().zip(metas) {
            let p = match kept {
                Some(p) => p,
                None => match pb.load(&mut loader, &row).await {
                    Ok(p) if FragmentMeta::of(&p).bytes() == meta.bytes() => p,
                    Ok(_) | Err(_) => {
                        tracing::error!(stream = %stream.name, seq = row.seq, "fragment changed or vanished while a clip was sent; clip cut short");
                        let _ = tx
                            .send(Err(std::io::Error::other("fragment unreadable")))
                            .await;
                        return;
                    }
                },
            };
            for data in mp4::clip_payload(&p) {
                buf.extend_from_slice(&data);
                if buf.len() >= CHUNK && tx.send(Ok(buf.split().freeze())).await.is_err() {
                    return;
                }
            }
        }
        if !buf.is_empty() {
            let _ = tx.send(Ok(buf.freeze())).await;
        }
    });
    let body = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "video/mp4")
        .header(header::CONTENT_LENGTH, total)
        .body(Body::from_stream(body))
        .map_err(|e| Error::internal(e.to_string()))
}
