//! `POST /putMedia`: validates the request headers (errors before the `200` are normal
//! JSON errors), reads the first body chunk (so a client that sent
//! `Expect: 100-continue` gets its `100 Continue` before the `200`), then answers `200`
//! with a streamed body of acks while `ingest::session` consumes the upload. The session
//! runs on the server's session tracker (graceful shutdown waits for it), and its end is
//! logged once: fragments, bytes, duration, errors and why it ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Instant;

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
use crate::cluster::{Ownership, forward};
use crate::error::{Error, ErrorKind, Result};
use crate::fragmenter::TimecodeMode;
use crate::ingest::ack::{AckSender, AckTally};
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
    // A cluster node ingests only the streams it owns; another live owner gets the
    // upload forwarded (`docs/design/cluster.md`, Routing).
    let lease = match &state.cluster {
        Some(m) => match m.claim(&stream.stream_id).await? {
            Ownership::Mine(lease) => Some(lease),
            Ownership::Elsewhere(owner) if !forward::is_forwarded(&headers) => {
                return m
                    .forward(&owner, axum::http::Method::POST, &uri, &headers, body)
                    .await;
            }
            Ownership::Elsewhere(owner) => {
                return Err(Error::new(
                    ErrorKind::ClientLimitExceeded,
                    format!(
                        "this stream is ingested by node {} at {}: call GetDataEndpoint again and connect there",
                        owner.node_id, owner.url
                    ),
                ));
            }
        },
        None => None,
    };
    let conn = state.ingest.connect_under(
        &stream.stream_id,
        stream.name.as_str(),
        lease.as_ref().map(|l| &l.token),
    );
    let key = state.catalog.data_key(&stream)?;

    // Reading the first chunk makes hyper answer `Expect: 100-continue` before our 200.
    let mut data = body.into_data_stream();
    let first = match tokio::time::timeout(state.ingest.settings.idle_timeout, data.next()).await {
        Ok(Some(Ok(b))) => Some(b),
        Ok(Some(Err(e))) => return Err(Error::invalid(format!("request body unreadable: {e}"))),
        Ok(None) | Err(_) => None,
    };

    let (acks, rx) = AckSender::channel(quiet);
    let summary = SessionSummary {
        stream: stream.name.to_string(),
        started: Instant::now(),
        body: Arc::default(),
        acks: acks.tally(),
        shutdown: state.shutdown.clone(),
        superseded: conn.superseded.clone(),
    };
    if let Some(b) = &first {
        summary
            .body
            .bytes
            .fetch_add(b.len() as u64, Ordering::Relaxed);
    }
    let data = summary.body.clone().watch(data);
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
        epoch: lease.map(|l| l.epoch),
    };
    tracing::info!(stream = %stream.name, ?mode, acks = !quiet, "PutMedia session started");
    state.sessions.spawn(async move {
        session::run(ctx, first, data).await;
        drop(conn.guard);
        summary.log();
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

/// What the request body did, seen from outside the session.
#[derive(Debug, Default)]
struct BodyWatch {
    bytes: AtomicU64,
    /// 0 while open, then [`BODY_ENDED`] or [`BODY_FAILED`].
    end: AtomicU8,
}

const BODY_ENDED: u8 = 1;
const BODY_FAILED: u8 = 2;

impl BodyWatch {
    /// The body stream, counting its bytes and noting how it ends.
    fn watch<S>(
        self: Arc<Self>,
        mut body: S,
    ) -> impl futures::Stream<Item = Result<bytes::Bytes, axum::Error>> + Unpin
    where
        S: futures::Stream<Item = Result<bytes::Bytes, axum::Error>> + Unpin,
    {
        futures::stream::poll_fn(move |cx| {
            let item = futures::ready!(body.poll_next_unpin(cx));
            match &item {
                Some(Ok(b)) => {
                    self.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
                Some(Err(_)) => self.end.store(BODY_FAILED, Ordering::Relaxed),
                None => self.end.store(BODY_ENDED, Ordering::Relaxed),
            }
            std::task::Poll::Ready(item)
        })
    }
}

/// The one log line of a finished PutMedia session.
struct SessionSummary {
    stream: String,
    started: Instant,
    body: Arc<BodyWatch>,
    acks: Arc<AckTally>,
    shutdown: tokio_util::sync::CancellationToken,
    /// Cancelled when a newer connection to the stream took over (see `ingest::admission`).
    superseded: tokio_util::sync::CancellationToken,
}

impl SessionSummary {
    /// Why the session ended, from what was observed: the body's end, the server's
    /// shutdown, a newer connection, the last ERROR ack, else the idle timeout.
    fn reason(&self) -> String {
        let last_error = self.acks.last_error_id.load(Ordering::Relaxed);
        match self.body.end.load(Ordering::Relaxed) {
            BODY_ENDED => "upload complete".into(),
            BODY_FAILED => "connection failed".into(),
            _ if self.shutdown.is_cancelled() => "server shutdown".into(),
            _ if self.superseded.is_cancelled() => "superseded by a newer connection".into(),
            _ if last_error != 0 => format!("error (ErrorId {last_error})"),
            _ => "idle timeout".into(),
        }
    }

    fn log(&self) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        tracing::info!(
            stream = %self.stream,
            fragments_received = load(&self.acks.received),
            fragments_persisted = load(&self.acks.persisted),
            errors = load(&self.acks.errors),
            bytes = load(&self.body.bytes),
            duration_ms = self.started.elapsed().as_millis() as u64,
            reason = %self.reason(),
            "PutMedia session ended"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_summary_counts_body_bytes_and_names_the_end() {
        let watch = Arc::new(BodyWatch::default());
        let chunks: Vec<Result<bytes::Bytes, axum::Error>> = vec![
            Ok(bytes::Bytes::from_static(b"abc")),
            Ok(bytes::Bytes::from_static(b"de")),
        ];
        let mut s = watch.clone().watch(futures::stream::iter(chunks));
        while s.next().await.is_some() {}
        let tally = Arc::new(AckTally::default());
        let summary = SessionSummary {
            stream: "s".into(),
            started: Instant::now(),
            body: watch,
            acks: tally.clone(),
            shutdown: Default::default(),
            superseded: Default::default(),
        };
        assert_eq!(summary.body.bytes.load(Ordering::Relaxed), 5);
        assert_eq!(summary.reason(), "upload complete");
        summary.body.end.store(0, Ordering::Relaxed);
        assert_eq!(summary.reason(), "idle timeout");
        tally.last_error_id.store(4002, Ordering::Relaxed);
        assert_eq!(summary.reason(), "error (ErrorId 4002)");
        summary.superseded.cancel();
        assert_eq!(summary.reason(), "superseded by a newer connection");
        summary.shutdown.cancel();
        assert_eq!(summary.reason(), "server shutdown");
    }

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
