//! The HTTP API: one router per API family, merged here, with the middleware every
//! response passes through (request id, metrics, one log line per failed request) and
//! JSON fallbacks for unknown paths, unimplemented modeled operations and wrong methods.

pub mod archived;
pub mod auth;
pub mod clip;
pub mod configuration;
pub mod control;
pub mod error;
pub mod images;
pub mod json;
pub mod media;
pub mod playback;
pub mod put_media;
pub mod stream_ref;
pub mod tagging;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::error::{Error, ErrorKind};
use crate::ingest::Ingest;
use crate::streams::Catalog;

/// Shared state of every handler.
#[derive(Clone, Debug)]
pub struct AppState {
    pub settings: Arc<Settings>,
    /// Base URL returned by GetDataEndpoint (`public_url` or `http://<bound addr>`).
    pub public_url: Arc<str>,
    pub catalog: Catalog,
    pub metrics: PrometheusHandle,
    /// Wakes the garbage sweeper (after DeleteStream).
    pub gc_wake: Arc<Notify>,
    /// PutMedia runtime state.
    pub ingest: Arc<Ingest>,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// PutMedia sessions still running; shutdown waits for them (bounded).
    pub sessions: tokio_util::task::TaskTracker,
    /// Request authentication.
    pub auth: Arc<crate::auth::Auth>,
    /// GetClip/HLS/DASH state: session token signer, live-session timelines.
    pub playback: Arc<crate::playback::Playback>,
    /// GetImages / image generation decoding.
    pub images: crate::images::ImageService,
    /// This node's cluster membership (`index.backend = "postgres"`); `None` alone.
    pub cluster: Option<Arc<crate::cluster::Membership>>,
}

/// The whole router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(control::router())
        .merge(tagging::router())
        .merge(configuration::router())
        .merge(put_media::router())
        .merge(media::router())
        .merge(archived::router())
        .merge(clip::router())
        .merge(playback::router())
        .merge(images::router())
        .route("/metrics", get(render_metrics))
        .fallback(fallback)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

/// A `200` whose body is the chunks sent on `rx`, in order, until the sender is dropped.
pub fn streamed(
    mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    content_type: &'static str,
) -> Response {
    let body = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|o| o.map(Ok::<_, std::convert::Infallible>))
    });
    (
        [(header::CONTENT_TYPE, content_type)],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Unknown paths: `NotImplementedException` for a modeled operation this server does not
/// implement (see `operations`), else `UnknownOperationException`.
async fn fallback(method: Method, uri: axum::http::Uri) -> Error {
    let path = uri.path();
    if crate::operations::by_path(path).is_some_and(|o| !o.implemented) {
        return Error::new(
            ErrorKind::NotImplemented,
            format!("operation is not implemented by this server: path={path}"),
        );
    }
    Error::new(
        ErrorKind::UnknownOperation,
        format!("no operation at this path: method={method} path={path}"),
    )
}

/// A known path with a method it does not take: a KVS JSON error, not a bare 405.
async fn wrong_method(method: Method, uri: axum::http::Uri) -> Error {
    Error::new(
        ErrorKind::MethodNotAllowed,
        format!(
            "this path does not take this HTTP method: method={method} path={}",
            uri.path()
        ),
    )
}

/// Adds `x-amzn-RequestId`, records metrics, logs failed requests once.
async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let op: String = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().trim_start_matches('/').to_owned())
        .unwrap_or_else(|| "unknown".into());
    let request_id = uuid::Uuid::new_v4().to_string();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut resp = next.run(req).await;
    let status = resp.status().as_u16();
    metrics::counter!(crate::metrics::REQUESTS, "operation" => op.clone(), "status" => status.to_string()).increment(1);
    metrics::histogram!(crate::metrics::REQUEST_SECONDS, "operation" => op)
        .record(started.elapsed().as_secs_f64());
    if let Some(error::LoggedError(e)) = resp.extensions().get::<error::LoggedError>() {
        if e.kind == ErrorKind::Internal {
            tracing::error!(%request_id, %method, %path, status, error = %e.message, "request failed");
        } else {
            tracing::info!(%request_id, %method, %path, status, kind = ?e.kind, error = %e.message, "request rejected");
        }
    } else {
        tracing::debug!(%request_id, %method, %path, status, elapsed_ms = started.elapsed().as_millis() as u64, "request");
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-amzn-RequestId", v);
    }
    resp
}
