//! Archived media (kinesis-video-archived-media): `POST /listFragments` and
//! `POST /getMediaForFragmentList`. Both read only what is persisted: a fragment is
//! listed as soon as its PERSISTED ack is sent (its index row is committed first).

use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::json::KvsJson;
use super::media::own_fragment_seq;
use crate::auth::Access;
use crate::clock::{EpochSecs, epoch_ms_from_json_secs};
use crate::error::{Error, ErrorKind, Result};
use crate::index::{FragmentTimes, RangePage, StreamRecord, TimestampKind};
use crate::media::chunk;
use crate::model::FragmentNumber;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/listFragments", post(list_fragments))
        .route(
            "/getMediaForFragmentList",
            post(get_media_for_fragment_list),
        )
}

/// Archived APIs need stored data.
pub fn require_retention(s: &StreamRecord) -> Result<()> {
    if s.retention_hours == 0 {
        return Err(Error::new(
            ErrorKind::NoDataRetention,
            format!("stream keeps no data (retention 0): stream={}", s.name),
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TimestampRange {
    start_timestamp: Option<f64>,
    end_timestamp: Option<f64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct FragmentSelector {
    fragment_selector_type: Option<String>,
    timestamp_range: Option<TimestampRange>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListFragmentsInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    max_results: Option<i64>,
    next_token: Option<String>,
    fragment_selector: Option<FragmentSelector>,
}

/// The query a ListFragments page continues.
#[derive(Debug, Clone, PartialEq)]
struct Cursor {
    kind: TimestampKind,
    start_ms: i64,
    end_ms: i64,
    after: Option<(i64, u64)>,
}

impl Cursor {
    fn token(&self) -> String {
        let k = match self.kind {
            TimestampKind::Producer => "P",
            TimestampKind::Server => "S",
        };
        let (t, s) = self.after.unwrap_or((i64::MIN, 0));
        B64.encode(format!("v1 {k} {} {} {t} {s}", self.start_ms, self.end_ms))
    }

    fn parse(token: &str) -> Result<Self> {
        let bad = || Error::invalid("NextToken is not a token this server issued");
        let raw = String::from_utf8(B64.decode(token).map_err(|_| bad())?).map_err(|_| bad())?;
        let p: Vec<&str> = raw.split(' ').collect();
        if p.len() != 6 || p[0] != "v1" {
            return Err(bad());
        }
        let kind = match p[1] {
            "P" => TimestampKind::Producer,
            "S" => TimestampKind::Server,
            _ => return Err(bad()),
        };
        let n = |s: &str| s.parse::<i64>().map_err(|_| bad());
        Ok(Self {
            kind,
            start_ms: n(p[2])?,
            end_ms: n(p[3])?,
            after: Some((n(p[4])?, p[5].parse().map_err(|_| bad())?)),
        })
    }
}

/// One fragment of a ListFragments page (kvs-api.md §5.1). The members are in
/// alphabetical order, the order in which the earlier `serde_json::Value` maps wrote them:
/// the wire bytes stay the same.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct FragmentOut {
    fragment_length_in_milliseconds: i64,
    #[serde(serialize_with = "display_str")]
    fragment_number: FragmentNumber,
    fragment_size_in_bytes: u64,
    producer_timestamp: EpochSecs,
    server_timestamp: EpochSecs,
}

impl FragmentOut {
    fn new(stream: &StreamRecord, f: &FragmentTimes) -> Self {
        Self {
            fragment_length_in_milliseconds: f.duration_ms,
            fragment_number: FragmentNumber::new(stream.creation_ms, f.seq),
            fragment_size_in_bytes: f.size,
            producer_timestamp: EpochSecs(f.producer_ts_ms),
            server_timestamp: EpochSecs(f.server_ts_ms),
        }
    }
}

/// A fragment number as its JSON string, written straight into the output.
fn display_str<S: serde::Serializer>(n: &FragmentNumber, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(n)
}

/// The ListFragments response; `NextToken` is absent on the last page.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListFragmentsOutput {
    fragments: Vec<FragmentOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

/// A required `[StartTimestamp, EndTimestamp]` pair in epoch ms, end not before start
/// (ListFragments, GetImages); `prefix` names the enclosing member in error messages.
pub(super) fn required_range(
    start: Option<f64>,
    end: Option<f64>,
    prefix: &str,
) -> Result<(i64, i64)> {
    let ms = |v: Option<f64>, name: &str| {
        v.and_then(epoch_ms_from_json_secs)
            .ok_or_else(|| Error::invalid(format!("{prefix}{name} is required")))
    };
    let (start_ms, end_ms) = (ms(start, "StartTimestamp")?, ms(end, "EndTimestamp")?);
    if end_ms < start_ms {
        return Err(Error::invalid(
            "EndTimestamp must not be before StartTimestamp",
        ));
    }
    Ok((start_ms, end_ms))
}

async fn list_fragments(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<ListFragmentsInput>,
) -> Result<Json<ListFragmentsOutput>> {
    let limit = i.max_results.unwrap_or(1000);
    if !(1..=1000).contains(&limit) {
        return Err(Error::invalid(format!(
            "MaxResults must be between 1 and 1000: value={limit}"
        )));
    }
    let cursor = match (
        i.next_token.as_deref().filter(|t| !t.is_empty()),
        i.fragment_selector,
    ) {
        (Some(t), _) => Cursor::parse(t)?,
        (None, Some(sel)) => {
            let kind = match sel.fragment_selector_type.as_deref() {
                Some("PRODUCER_TIMESTAMP") => TimestampKind::Producer,
                Some("SERVER_TIMESTAMP") => TimestampKind::Server,
                other => {
                    return Err(Error::invalid(format!(
                        "FragmentSelectorType must be PRODUCER_TIMESTAMP or SERVER_TIMESTAMP: value={other:?}"
                    )));
                }
            };
            let r = sel
                .timestamp_range
                .ok_or_else(|| Error::invalid("TimestampRange is required"))?;
            let (start_ms, end_ms) =
                required_range(r.start_timestamp, r.end_timestamp, "TimestampRange.")?;
            Cursor {
                kind,
                start_ms,
                end_ms,
                after: None,
            }
        }
        (None, None) => {
            return Err(Error::invalid(
                "FragmentSelector is required when NextToken is absent",
            ));
        }
    };
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
    let limit = limit as usize;
    let mut rows = state
        .catalog
        .index()
        .fragment_times_in_range(
            &stream.stream_id,
            RangePage {
                kind: cursor.kind,
                start_ms: cursor.start_ms,
                end_ms: cursor.end_ms,
                after: cursor.after,
                limit: limit + 1,
            },
        )
        .await?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let mut next_token = None;
    if more && let Some(last) = rows.last() {
        let ts = match cursor.kind {
            TimestampKind::Producer => last.producer_ts_ms,
            TimestampKind::Server => last.server_ts_ms,
        };
        next_token = Some(
            Cursor {
                after: Some((ts, last.seq)),
                ..cursor
            }
            .token(),
        );
    }
    Ok(Json(ListFragmentsOutput {
        fragments: rows.iter().map(|f| FragmentOut::new(&stream, f)).collect(),
        next_token,
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct FragmentListInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    fragments: Option<Vec<String>>,
}

async fn get_media_for_fragment_list(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<FragmentListInput>,
) -> Result<Response> {
    let numbers = i
        .fragments
        .ok_or_else(|| Error::invalid("Fragments is required"))?;
    if numbers.is_empty() || numbers.len() > 1000 {
        return Err(Error::invalid(format!(
            "Fragments must hold 1 to 1000 fragment numbers: count={}",
            numbers.len()
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
    require_retention(&stream)?;
    // Resolve every number before answering, so unknown ones are a clear error.
    let mut rows = Vec::with_capacity(numbers.len());
    let mut missing = Vec::new();
    for n in &numbers {
        let row = match own_fragment_seq(&stream, "Fragments", n) {
            Ok(seq) => {
                state
                    .catalog
                    .index()
                    .get_fragment(&stream.stream_id, seq)
                    .await?
            }
            Err(_) => None,
        };
        match row {
            Some(r) => rows.push(r),
            None => missing.push(n.clone()),
        }
    }
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(10).map(String::as_str).collect();
        return Err(Error::not_found(format!(
            "fragments not found: count={} fragments={}",
            missing.len(),
            shown.join(",")
        )));
    }
    let key = state.catalog.data_key(&stream)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
    let catalog = state.catalog.clone();
    tokio::spawn(async move {
        for row in rows {
            let number = FragmentNumber::new(stream.creation_ms, row.seq).to_string();
            let mut b = Vec::new();
            let header = catalog
                .store()
                .session_headers()
                .get(catalog.index().as_ref(), &key, row.session_id)
                .await
                .map_err(|e| e.to_string());
            let cluster = catalog.store().get_fragment(&key, &row).await;
            match (header, cluster) {
                (Ok(h), Ok(cluster)) => {
                    chunk::prefix(
                        &mut b,
                        &h.bytes,
                        h.ebml_header_len,
                        &number,
                        row.server_ts_ms,
                        row.producer_ts_ms,
                    );
                    b.extend_from_slice(&cluster);
                    chunk::metadata(&mut b, &row.metadata);
                }
                (h, c) => {
                    let why = h
                        .err()
                        .or(c.err().map(|e| e.to_string()))
                        .unwrap_or_default();
                    tracing::error!(fragment = %number, error = %why, "fragment unreadable");
                    chunk::error(&mut b, Some(&number), "fragment unreadable", 5000);
                }
            }
            if tx.send(bytes::Bytes::from(b)).await.is_err() {
                return;
            }
        }
    });
    Ok(super::streamed(rx, "video/webm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let c = Cursor {
            kind: TimestampKind::Server,
            start_ms: 1,
            end_ms: 2,
            after: Some((1_700_000_000_000, 42)),
        };
        let t = c.token();
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        );
        assert_eq!(Cursor::parse(&t).unwrap(), c);
        assert!(Cursor::parse("bm9wZQ==").is_err());
        assert!(Cursor::parse("!!").is_err());
    }

    /// The response as the earlier `serde_json::Value` code built it.
    fn value_response(
        stream: &StreamRecord,
        rows: &[FragmentTimes],
        token: Option<&str>,
    ) -> serde_json::Value {
        use crate::clock::epoch_secs_json;
        use serde_json::json;
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|f| {
                json!({
                    "FragmentNumber": FragmentNumber::new(stream.creation_ms, f.seq).to_string(),
                    "FragmentSizeInBytes": f.size,
                    "ProducerTimestamp": epoch_secs_json(f.producer_ts_ms),
                    "ServerTimestamp": epoch_secs_json(f.server_ts_ms),
                    "FragmentLengthInMilliseconds": f.duration_ms,
                })
            })
            .collect();
        let mut out = json!({ "Fragments": list });
        if let Some(t) = token {
            out["NextToken"] = json!(t);
        }
        out
    }

    #[test]
    fn response_bytes_match_the_value_encoding() {
        let stream = StreamRecord {
            stream_id: "sid".into(),
            name: crate::model::StreamName::parse("s").unwrap(),
            device_name: None,
            media_type: None,
            kms_key_id: String::new(),
            version: "v".into(),
            status: crate::index::StreamStatus::Active,
            creation_ms: 1_795_632_000_123,
            retention_hours: 24,
            wrapped_key: Vec::new(),
            tags: Default::default(),
        };
        let rows: Vec<FragmentTimes> = (0..1500u64)
            .map(|i| FragmentTimes {
                seq: i * 7919,
                producer_ts_ms: 1_795_632_709_000 + i as i64 * 333,
                server_ts_ms: 1_795_632_709_369 + i as i64 * 1001,
                duration_ms: 2000 - i as i64,
                size: 129_414 + i * 1_000_000_007,
            })
            .collect();
        for (rows, token) in [
            (&rows[..], Some("djEgUyAxIDIgMyA0")),
            (&rows[..], None),
            (&rows[..0], None),
        ] {
            let ours = ListFragmentsOutput {
                fragments: rows.iter().map(|f| FragmentOut::new(&stream, f)).collect(),
                next_token: token.map(str::to_owned),
            };
            assert_eq!(
                serde_json::to_vec(&ours).unwrap(),
                serde_json::to_vec(&value_response(&stream, rows, token)).unwrap()
            );
        }
    }
}
