//! `POST /putMedia`: validates the request headers (errors before the `200` are normal
//! JSON errors), reads the first body chunk (so a client that sent
//! `Expect: 100-continue` gets its `100 Continue` before the `200`), then answers `200`
//! with a streamed body of acks while `ingest::session` consumes the upload.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use futures::StreamExt;

use super::AppState;
use super::auth::PUT_MEDIA_BOUND;
use crate::auth::Access;
use crate::auth::access::Method;
use crate::error::{Error, ErrorKind, Result};
use crate::fragmenter::TimecodeMode;
use crate::ingest::ack::AckSender;
use crate::ingest::session::{self, SessionContext};

pub fn router() -> Router<AppState> {
    Router::new().route("/putMedia", post(put_media))
}

/// PutMedia parameters: request headers, or the same names in the query string (so a
/// presigned URL can carry them for producers that cannot set headers). A header and a
/// query parameter that disagree are refused; on a presigned URL the signed query alone
/// binds the stream and timecodes ([`PUT_MEDIA_BOUND`]): a header that differs from it,
/// or sets what it left out, gets `NotAuthorized`.
struct Params<'a> {
    headers: &'a HeaderMap,
    query: Vec<(String, String)>,
    presigned: bool,
}

impl Params<'_> {
    fn get(&self, name: &str) -> Result<Option<String>> {
        let header =
            match self.headers.get(name) {
                Some(v) => Some(v.to_str().map(|s| s.trim().to_owned()).map_err(|_| {
                    Error::invalid(format!("header is not valid text: header={name}"))
                })?),
                None => None,
            };
        let query = self
            .query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone());
        let bound = self.presigned && PUT_MEDIA_BOUND.contains(&name);
        match (header, query) {
            (Some(h), q) if bound && q.as_deref() != Some(h.as_str()) => Err(Error::new(
                ErrorKind::NotAuthorized,
                format!(
                    "header {name} is not what the presigned URL signed; the URL's query binds it"
                ),
            )),
            (Some(h), Some(q)) if h != q => Err(Error::invalid(format!(
                "header and query parameter disagree: name={name}"
            ))),
            (h, q) => Ok(h.or(q)),
        }
    }
}

/// Parses `x-amzn-producer-start-timestamp` (decimal epoch seconds) into milliseconds.
/// The KVS C producer writes `<secs>.<millis>` without zero-padding the milliseconds
/// (5 ms as `.5`), so for its User-Agent a fraction of fewer than three digits is read as
/// a whole number of milliseconds; every other client's value is a plain decimal.
pub fn parse_start_timestamp(raw: &str, kvs_c_producer: bool) -> Result<i64> {
    let bad = || {
        Error::invalid(format!(
            "x-amzn-producer-start-timestamp must be decimal epoch seconds: value={raw}"
        ))
    };
    let (secs, frac) = raw.split_once('.').unwrap_or((raw, ""));
    if secs.is_empty()
        || secs.len() > 12
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let secs: i64 = secs.parse().map_err(|_| bad())?;
    let millis: i64 = if frac.is_empty() {
        0
    } else if kvs_c_producer && frac.len() < 3 {
        frac.parse().map_err(|_| bad())?
    } else {
        let mut three: String = frac.chars().take(3).collect();
        while three.len() < 3 {
            three.push('0');
        }
        three.parse().map_err(|_| bad())?
    };
    Ok(secs * 1000 + millis)
}

async fn put_media(
    State(state): State<AppState>,
    access: Access,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let p = Params {
        headers: &headers,
        query: form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect(),
        presigned: access.method() == Method::Presigned,
    };
    let name = p.get("x-amzn-stream-name")?;
    let arn = p.get("x-amzn-stream-arn")?;
    let stream = state
        .catalog
        .resolve(
            &access,
            name.as_deref(),
            arn.as_deref(),
            ErrorKind::InvalidArgument,
        )
        .await?;
    let user_agent = p.get("user-agent")?.unwrap_or_default();
    let kvs_sdk = user_agent.starts_with("AWS-SDK-KVS");
    // ffmpeg (libavformat) never reads the response; see `AckSender::channel`.
    let quiet = user_agent.starts_with("Lavf/");
    let start = p
        .get("x-amzn-producer-start-timestamp")?
        .map(|v| parse_start_timestamp(&v, kvs_sdk))
        .transpose()?;
    let mode = match p.get("x-amzn-fragment-timecode-type")?.as_deref() {
        Some(v) if v.eq_ignore_ascii_case("ABSOLUTE") => TimecodeMode::Absolute,
        Some(v) if v.eq_ignore_ascii_case("RELATIVE") => TimecodeMode::Relative {
            start_ms: start.unwrap_or_else(|| state.catalog.clock().now_ms()),
        },
        // Not sent (plain ffmpeg/GStreamer): relative to the given start, else to now.
        None => TimecodeMode::Relative {
            start_ms: start.unwrap_or_else(|| state.catalog.clock().now_ms()),
        },
        Some(v) => {
            return Err(Error::invalid(format!(
                "x-amzn-fragment-timecode-type must be ABSOLUTE or RELATIVE: value={v}"
            )));
        }
    };
    let conn = state
        .ingest
        .connect(&stream.stream_id, stream.name.as_str());
    let key = state.catalog.data_key(&stream)?;

    // Reading the first chunk makes hyper answer `Expect: 100-continue` before our 200.
    let mut data = body.into_data_stream();
    let first = match tokio::time::timeout(state.ingest.settings.idle_timeout, data.next()).await {
        Ok(Some(Ok(b))) => Some(b),
        Ok(Some(Err(e))) => return Err(Error::invalid(format!("request body unreadable: {e}"))),
        Ok(None) | Err(_) => None,
    };

    let (acks, rx) = AckSender::channel(quiet);
    let ctx = SessionContext {
        catalog: state.catalog.clone(),
        ingest: state.ingest.clone(),
        runtime: conn.runtime,
        stream: stream.clone(),
        key,
        mode,
        acks,
        shutdown: state.shutdown.clone(),
        superseded: conn.superseded,
    };
    tracing::info!(stream = %stream.name, ?mode, acks = !quiet, "PutMedia session started");
    tokio::spawn(async move {
        session::run(ctx, first, data).await;
        drop(conn.guard);
    });
    let stream_body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream_body))
        .map_err(|e| Error::internal(e.to_string()))?;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_timestamps() {
        assert_eq!(
            parse_start_timestamp("1700000000.123", false).unwrap(),
            1_700_000_000_123
        );
        assert_eq!(
            parse_start_timestamp("1700000000.5", false).unwrap(),
            1_700_000_000_500
        );
        assert_eq!(
            parse_start_timestamp("1700000000.5", true).unwrap(),
            1_700_000_000_005
        );
        assert_eq!(
            parse_start_timestamp("1700000000.05", true).unwrap(),
            1_700_000_000_005
        );
        assert_eq!(
            parse_start_timestamp("1700000000.123456", false).unwrap(),
            1_700_000_000_123
        );
        assert_eq!(
            parse_start_timestamp("1700000000", false).unwrap(),
            1_700_000_000_000
        );
        assert!(parse_start_timestamp("-1", false).is_err());
        assert!(parse_start_timestamp("1e9", false).is_err());
        assert!(parse_start_timestamp("", false).is_err());
    }
}
