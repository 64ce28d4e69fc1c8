//! HLS and DASH sessions: `POST /getHLSStreamingSessionURL` and
//! `POST /getDASHStreamingSessionURL` validate the request, check the stream's media
//! once and return a URL carrying a signed session token; the session resources under
//! `/hls/v1/` and `/dash/v1/` are plain GETs authorised only by that token, plus a
//! re-check of the access key that asked for the session (carried in the token): once
//! that key is removed or may no longer open sessions on the stream, its sessions stop.
//! A token that does not verify, belongs to the other protocol, has expired, is past its
//! absolute lifetime or whose key is no longer allowed is answered 403
//! with a JSON error and no data; a deleted stream or an unknown fragment is 404. Every
//! resource answer (errors included) carries CORS headers.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::archived::require_retention;
use super::clip::{FragmentSelector, check_range, selector_kind, ts_member};
use super::json::KvsJson;
use super::media::own_fragment_seq;
use crate::auth::Access;
use crate::error::{Error, ErrorKind, Result};
use crate::index::{FragmentRecord, StreamRecord, TimestampKind};
use crate::media::demux::FragmentLoader;
use crate::playback::mp4::{self, Tracks};
use crate::playback::timeline::{self, Live, Window};
use crate::playback::token::{
    Claims, Container, Discontinuity, Mode, Protocol, Selector, TokenError, random_bytes,
};
use crate::playback::{Dedup, MediaConfig, dash, hls, select_fragments, ts, ts_of};

pub fn router() -> Router<AppState> {
    let hls_path = |r: &str| format!("/hls/v1/{r}");
    let dash_path = |r: &str| format!("/dash/v1/{r}");
    Router::new()
        .route("/getHLSStreamingSessionURL", post(hls_session_url))
        .route("/getDASHStreamingSessionURL", post(dash_session_url))
        .route(&hls_path(hls::MASTER), get(hls_master).options(preflight))
        .route(&hls_path(hls::MEDIA), get(hls_media).options(preflight))
        .route(&hls_path(hls::INIT), get(hls_init).options(preflight))
        .route(
            &hls_path(hls::MP4_FRAGMENT),
            get(hls_mp4).options(preflight),
        )
        .route(&hls_path(hls::TS_FRAGMENT), get(hls_ts).options(preflight))
        .route(
            &dash_path(dash::MANIFEST),
            get(dash_manifest).options(preflight),
        )
        .route(&dash_path(dash::INIT), get(dash_init).options(preflight))
        .route(
            &dash_path(dash::FRAGMENT),
            get(dash_fragment).options(preflight),
        )
}

// ---- session URLs ---------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HlsInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    playback_mode: Option<String>,
    #[serde(rename = "HLSFragmentSelector")]
    hls_fragment_selector: Option<FragmentSelector>,
    container_format: Option<String>,
    discontinuity_mode: Option<String>,
    display_fragment_timestamp: Option<String>,
    expires: Option<i64>,
    max_media_playlist_fragment_results: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DashInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    playback_mode: Option<String>,
    #[serde(rename = "DASHFragmentSelector")]
    dash_fragment_selector: Option<FragmentSelector>,
    display_fragment_timestamp: Option<String>,
    display_fragment_number: Option<String>,
    expires: Option<i64>,
    max_manifest_fragment_results: Option<i64>,
}

fn always_never(v: Option<&str>, member: &str) -> Result<bool> {
    match v {
        None | Some("NEVER") => Ok(false),
        Some("ALWAYS") => Ok(true),
        Some(other) => Err(Error::invalid(format!(
            "{member} must be ALWAYS or NEVER: value={other}"
        ))),
    }
}

/// The members both session APIs share.
struct Common<'a> {
    protocol: Protocol,
    stream_name: Option<&'a str>,
    stream_arn: Option<&'a str>,
    mode: Option<&'a str>,
    selector: Option<FragmentSelector>,
    selector_member: &'a str,
    expires: Option<i64>,
    max_results: Option<i64>,
    max_member: &'a str,
    /// The access key that signed the request (none with auth off).
    key_id: Option<String>,
}

/// The signing access key of a request (none with auth off).
fn key_id(access: &Access) -> Option<String> {
    access.principal().map(|p| p.access_key_id.clone())
}

/// The operation whose permission a session of `protocol` needs.
fn session_operation(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Hls => "GetHLSStreamingSessionURL",
        Protocol::Dash => "GetDASHStreamingSessionURL",
    }
}

/// Validates a session request, checks the stream's media and returns the claims
/// (container and display options are filled in by the caller).
async fn new_session(state: &AppState, access: &Access, i: Common<'_>) -> Result<Claims> {
    let mode = match i.mode {
        None | Some("LIVE") => Mode::Live,
        Some("LIVE_REPLAY") => Mode::LiveReplay,
        Some("ON_DEMAND") => Mode::OnDemand,
        Some(other) => {
            return Err(Error::invalid(format!(
                "PlaybackMode must be LIVE, LIVE_REPLAY or ON_DEMAND: value={other}"
            )));
        }
    };
    let sel = i.selector.unwrap_or_default();
    let kind = selector_kind(
        sel.fragment_selector_type.as_deref(),
        &format!("{}.FragmentSelectorType", i.selector_member),
    )?
    .unwrap_or(TimestampKind::Server);
    let (start, end) = match (mode, sel.timestamp_range) {
        (Mode::Live, None) => (None, None),
        (Mode::Live, Some(_)) => {
            return Err(Error::invalid(
                "TimestampRange must not be set when PlaybackMode is LIVE",
            ));
        }
        (_, None) => {
            return Err(Error::invalid(format!(
                "{}.TimestampRange is required for ON_DEMAND and LIVE_REPLAY",
                i.selector_member
            )));
        }
        (m, Some(r)) => {
            let start = ts_member(r.start_timestamp, "StartTimestamp")?
                .ok_or_else(|| Error::invalid("TimestampRange.StartTimestamp is required"))?;
            let end = ts_member(r.end_timestamp, "EndTimestamp")?;
            match end {
                Some(e) => check_range(start, e)?,
                None if m == Mode::OnDemand => {
                    return Err(Error::invalid(
                        "TimestampRange.EndTimestamp is required for ON_DEMAND",
                    ));
                }
                None => {}
            }
            (Some(start), end)
        }
    };
    let expires = i.expires.unwrap_or(300);
    if !(300..=43_200).contains(&expires) {
        return Err(Error::invalid(format!(
            "Expires must be between 300 and 43200: value={expires}"
        )));
    }
    let max_results = i
        .max_results
        .unwrap_or(if mode == Mode::OnDemand { 1000 } else { 5 });
    if !(1..=5000).contains(&max_results) {
        return Err(Error::invalid(format!(
            "{} must be between 1 and 5000: value={max_results}",
            i.max_member
        )));
    }
    let stream = state
        .catalog
        .resolve(
            access,
            i.stream_name,
            i.stream_arn,
            ErrorKind::InvalidArgument,
        )
        .await?;
    require_retention(&stream)?;
    let probe = match mode {
        Mode::Live => state
            .catalog
            .index()
            .last_fragment(&stream.stream_id)
            .await?
            .ok_or_else(|| {
                Error::not_found(format!(
                    "the stream has no fragments: stream={}",
                    stream.name
                ))
            })?,
        _ => select_fragments(
            &state.catalog,
            &stream,
            kind,
            start.unwrap_or(i64::MIN),
            end.unwrap_or(i64::MAX),
            1,
            Dedup::Newest,
        )
        .await?
        .pop()
        .ok_or_else(|| {
            Error::not_found(format!(
                "no fragments in the timestamp range: stream={}",
                stream.name
            ))
        })?,
    };
    let mut loader = FragmentLoader::new(state.catalog.clone(), stream.clone())?;
    state.playback.config(&mut loader, probe.session_id).await?;
    let now = state.catalog.clock().now_ms();
    Ok(Claims {
        protocol: i.protocol,
        session_id: random_bytes::<12>(),
        stream_id: stream.stream_id,
        mode,
        selector: match kind {
            TimestampKind::Producer => Selector::Producer,
            TimestampKind::Server => Selector::Server,
        },
        start_ms: start,
        end_ms: end,
        container: Container::Fmp4,
        discontinuity: match kind {
            TimestampKind::Producer => Discontinuity::Never,
            TimestampKind::Server => Discontinuity::Always,
        },
        display_timestamp: false,
        display_number: false,
        max_results: max_results as u32,
        created_ms: now,
        expires_ms: now + expires * 1000,
        key_id: i.key_id,
    })
}

async fn hls_session_url(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<HlsInput>,
) -> Result<Json<serde_json::Value>> {
    let container = match i.container_format.as_deref() {
        None | Some("FRAGMENTED_MP4") => Container::Fmp4,
        Some("MPEG_TS") => Container::Ts,
        Some(other) => {
            return Err(Error::invalid(format!(
                "ContainerFormat must be FRAGMENTED_MP4 or MPEG_TS: value={other}"
            )));
        }
    };
    let discontinuity = match i.discontinuity_mode.as_deref() {
        None => None,
        Some("ALWAYS") => Some(Discontinuity::Always),
        Some("NEVER") => Some(Discontinuity::Never),
        Some("ON_DISCONTINUITY") => Some(Discontinuity::OnDiscontinuity),
        Some(other) => {
            return Err(Error::invalid(format!(
                "DiscontinuityMode must be ALWAYS, NEVER or ON_DISCONTINUITY: value={other}"
            )));
        }
    };
    let display = always_never(
        i.display_fragment_timestamp.as_deref(),
        "DisplayFragmentTimestamp",
    )?;
    let mut c = new_session(
        &state,
        &access,
        Common {
            protocol: Protocol::Hls,
            stream_name: i.stream_name.as_deref(),
            stream_arn: i.stream_arn.as_deref(),
            mode: i.playback_mode.as_deref(),
            selector: i.hls_fragment_selector,
            selector_member: "HLSFragmentSelector",
            expires: i.expires,
            max_results: i.max_media_playlist_fragment_results,
            max_member: "MaxMediaPlaylistFragmentResults",
            key_id: key_id(&access),
        },
    )
    .await?;
    c.container = container;
    if let Some(d) = discontinuity {
        c.discontinuity = d;
    }
    c.display_timestamp = display;
    let token = state.playback.signer.sign(&c);
    Ok(Json(json!({
        "HLSStreamingSessionURL": format!(
            "{}/hls/v1/{}?SessionToken={token}",
            state.public_url,
            hls::MASTER
        )
    })))
}

async fn dash_session_url(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<DashInput>,
) -> Result<Json<serde_json::Value>> {
    let display_ts = always_never(
        i.display_fragment_timestamp.as_deref(),
        "DisplayFragmentTimestamp",
    )?;
    let display_fn = always_never(
        i.display_fragment_number.as_deref(),
        "DisplayFragmentNumber",
    )?;
    let mut c = new_session(
        &state,
        &access,
        Common {
            protocol: Protocol::Dash,
            stream_name: i.stream_name.as_deref(),
            stream_arn: i.stream_arn.as_deref(),
            mode: i.playback_mode.as_deref(),
            selector: i.dash_fragment_selector,
            selector_member: "DASHFragmentSelector",
            expires: i.expires,
            max_results: i.max_manifest_fragment_results,
            max_member: "MaxManifestFragmentResults",
            key_id: key_id(&access),
        },
    )
    .await?;
    c.display_timestamp = display_ts;
    c.display_number = display_fn;
    let token = state.playback.signer.sign(&c);
    Ok(Json(json!({
        "DASHStreamingSessionURL": format!(
            "{}/dash/v1/{}?SessionToken={token}",
            state.public_url,
            dash::MANIFEST
        )
    })))
}

// ---- session resources ----------------------------------------------------------------

/// A failed session request.
enum Fail {
    Api(Error),
    /// 403: the token does not verify, is for the other protocol, or expired.
    Forbidden(String),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Api(e)
    }
}

impl From<crate::index::IndexError> for Fail {
    fn from(e: crate::index::IndexError) -> Self {
        Fail::Api(e.into())
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        match self {
            Fail::Api(e) => e.into_response(),
            Fail::Forbidden(msg) => {
                let name = "NotAuthorizedException";
                let body = json!({ "__type": name, "Message": msg }).to_string();
                let mut r = (StatusCode::FORBIDDEN, body).into_response();
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r.headers_mut()
                    .insert("x-amzn-ErrorType", HeaderValue::from_static(name));
                r.extensions_mut()
                    .insert(super::error::LoggedError(Error::new(
                        ErrorKind::NotAuthorized,
                        msg,
                    )));
                r
            }
        }
    }
}

type Q = Query<HashMap<String, String>>;

/// A verified session.
struct Ctx {
    claims: Claims,
    token: String,
    stream: StreamRecord,
    slot: Option<Arc<tokio::sync::Mutex<Option<Live>>>>,
}

async fn open(
    state: &AppState,
    q: &HashMap<String, String>,
    protocol: Protocol,
) -> std::result::Result<Ctx, Fail> {
    let token = q
        .get("SessionToken")
        .ok_or_else(|| Error::invalid("SessionToken is required"))?;
    let now = state.catalog.clock().now_ms();
    let max_life = state.playback.settings.max_session_lifetime.as_millis() as i64;
    let claims = state
        .playback
        .signer
        .verify(token, now, max_life)
        .map_err(|e| {
            Fail::Forbidden(match e {
                TokenError::Invalid => "session token is not valid".into(),
                TokenError::Expired => "session token is past its lifetime".into(),
            })
        })?;
    if claims.protocol != protocol {
        return Err(Fail::Forbidden(
            "session token belongs to another protocol".into(),
        ));
    }
    let slot = state
        .playback
        .sessions
        .access(&claims, now, state.playback.settings.renew_live_sessions)
        .map_err(|_| Fail::Forbidden("session expired".into()))?;
    let stream = state
        .catalog
        .index()
        .get_stream_by_id(&claims.stream_id)
        .await
        .map_err(Error::from)?
        .ok_or_else(|| Error::not_found("the session's stream no longer exists"))?;
    require_retention(&stream)?;
    if let Some(k) = claims.key_id.as_ref().filter(|_| state.auth.enabled) {
        let who = crate::auth::Principal {
            access_key_id: k.clone(),
        };
        state
            .auth
            .keys
            .authorize(
                &who,
                session_operation(protocol),
                Some(stream.name.as_str()),
            )
            .map_err(|_| {
                Fail::Forbidden(
                    "the access key that opened this session is no longer allowed to".into(),
                )
            })?;
    }
    Ok(Ctx {
        claims,
        token: token.clone(),
        stream,
        slot,
    })
}

fn kind(c: &Claims) -> TimestampKind {
    match c.selector {
        Selector::Producer => TimestampKind::Producer,
        Selector::Server => TimestampKind::Server,
    }
}

/// Whether a fragment belongs to the session's range.
fn in_session(c: &Claims, r: &FragmentRecord) -> bool {
    if c.mode == Mode::Live {
        return true;
    }
    let t = ts_of(r, kind(c));
    c.start_ms.is_none_or(|s| t >= s) && c.end_ms.is_none_or(|e| t <= e)
}

fn loader(state: &AppState, ctx: &Ctx) -> Result<FragmentLoader> {
    FragmentLoader::new(state.catalog.clone(), ctx.stream.clone())
}

async fn window(state: &AppState, ctx: &Ctx, l: &mut FragmentLoader) -> Result<Window> {
    match &ctx.slot {
        Some(slot) => {
            let now = state.catalog.clock().now_ms();
            timeline::live(&state.playback, &state.catalog, l, &ctx.claims, slot, now).await
        }
        None => timeline::on_demand(&state.playback, &state.catalog, l, &ctx.claims).await,
    }
}

/// The fragment a `FragmentNumber` names, if it is one of the session's.
async fn fragment_by_number(
    state: &AppState,
    ctx: &Ctx,
    q: &HashMap<String, String>,
) -> Result<FragmentRecord> {
    let n = q
        .get("FragmentNumber")
        .ok_or_else(|| Error::invalid("FragmentNumber is required"))?;
    let seq = own_fragment_seq(&ctx.stream, "FragmentNumber", n)
        .map_err(|_| Error::not_found(format!("fragment not found: fragment={n}")))?;
    state
        .catalog
        .index()
        .get_fragment(&ctx.stream.stream_id, seq)
        .await?
        .filter(|r| in_session(&ctx.claims, r))
        .ok_or_else(|| Error::not_found(format!("fragment not in this session: fragment={n}")))
}

fn tracks_param(q: &HashMap<String, String>, default: Tracks) -> Result<Tracks> {
    match q.get("TrackNumber").map(String::as_str) {
        None => Ok(default),
        Some("1") => Ok(Tracks::Video),
        Some("2") => Ok(Tracks::Audio),
        Some(other) => Err(Error::not_found(format!(
            "no such track: TrackNumber={other}"
        ))),
    }
}

fn body(content_type: &'static str, bytes: impl Into<axum::body::Body>) -> Response {
    let mut r = Response::new(bytes.into());
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Adds the CORS headers to any answer of a session resource.
fn cors(state: &AppState, r: std::result::Result<Response, Fail>) -> Response {
    let mut resp = match r {
        Ok(r) => r,
        Err(f) => f.into_response(),
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&state.playback.settings.cors_allow_origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(
            "Content-Length, Content-Type, x-amzn-RequestId, x-amzn-ErrorType",
        ),
    );
    resp
}

async fn preflight(State(state): State<AppState>) -> Response {
    let mut r = cors(&state, Ok(StatusCode::NO_CONTENT.into_response()));
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Range, Content-Type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    r
}

/// A fragment of the session's range for the master playlist's codec list and bit rate.
async fn probe(
    state: &AppState,
    ctx: &Ctx,
    l: &mut FragmentLoader,
) -> Result<(FragmentRecord, Arc<MediaConfig>)> {
    let c = &ctx.claims;
    let row = match c.mode {
        Mode::Live => {
            state
                .catalog
                .index()
                .last_fragment(&ctx.stream.stream_id)
                .await?
        }
        _ => select_fragments(
            &state.catalog,
            &ctx.stream,
            kind(c),
            c.start_ms.unwrap_or(i64::MIN),
            c.end_ms.unwrap_or(i64::MAX),
            1,
            Dedup::Newest,
        )
        .await?
        .pop(),
    }
    .ok_or_else(|| Error::not_found("the session has no fragments"))?;
    let config = state.playback.config(l, row.session_id).await?;
    Ok((row, config))
}

async fn hls_master(State(state): State<AppState>, Query(q): Q) -> Response {
    let r = async {
        let ctx = open(&state, &q, Protocol::Hls).await?;
        let mut l = loader(&state, &ctx)?;
        let (row, config) = probe(&state, &ctx, &mut l).await?;
        let bw = hls::bandwidth(row.size, row.duration_ms) * 5 / 4;
        Ok::<_, Fail>(body(
            hls::PLAYLIST_TYPE,
            hls::master(&ctx.token, &config, bw),
        ))
    }
    .await;
    cors(&state, r)
}

async fn hls_media(State(state): State<AppState>, Query(q): Q) -> Response {
    let r = async {
        let ctx = open(&state, &q, Protocol::Hls).await?;
        let mut l = loader(&state, &ctx)?;
        let w = window(&state, &ctx, &mut l).await?;
        let text = hls::media(&ctx.token, &ctx.claims, &w, ctx.stream.creation_ms);
        Ok::<_, Fail>(body(hls::PLAYLIST_TYPE, text))
    }
    .await;
    cors(&state, r)
}

async fn init(
    state: &AppState,
    q: &HashMap<String, String>,
    protocol: Protocol,
    default: Tracks,
) -> std::result::Result<Response, Fail> {
    let ctx = open(state, q, protocol).await?;
    let sid: u64 = q
        .get("SequenceNumber")
        .ok_or_else(|| Error::invalid("SequenceNumber is required"))?
        .parse()
        .map_err(|_| Error::not_found("no such init fragment"))?;
    state
        .catalog
        .index()
        .get_session(&ctx.stream.stream_id, sid)
        .await
        .map_err(Error::from)?
        .ok_or_else(|| Error::not_found("no such init fragment"))?;
    let mut l = loader(state, &ctx)?;
    let config = state.playback.config(&mut l, sid).await?;
    let which = tracks_param(q, default)?;
    let bytes = mp4::init_segment(&config, which)?
        .ok_or_else(|| Error::not_found("the stream has no such track"))?;
    Ok(body("video/mp4", bytes))
}

async fn hls_init(State(state): State<AppState>, Query(q): Q) -> Response {
    let r = init(&state, &q, Protocol::Hls, Tracks::All).await;
    cors(&state, r)
}

async fn dash_init(State(state): State<AppState>, Query(q): Q) -> Response {
    let r = init(&state, &q, Protocol::Dash, Tracks::Video).await;
    cors(&state, r)
}

async fn hls_mp4(State(state): State<AppState>, Query(q): Q) -> Response {
    let r = async {
        let ctx = open(&state, &q, Protocol::Hls).await?;
        let row = fragment_by_number(&state, &ctx, &q).await?;
        let mut l = loader(&state, &ctx)?;
        let p = state.playback.load(&mut l, &row).await?;
        let which = tracks_param(&q, Tracks::All)?;
        let seg = mp4::media_segment(&p, which, (row.seq % u64::from(u32::MAX)) as u32 + 1)?
            .ok_or_else(|| Error::not_found("the fragment has no media of that track"))?;
        Ok::<_, Fail>(body("video/mp4", seg))
    }
    .await;
    cors(&state, r)
}

async fn hls_ts(State(state): State<AppState>, Query(q): Q) -> Response {
    let r = async {
        let ctx = open(&state, &q, Protocol::Hls).await?;
        let row = fragment_by_number(&state, &ctx, &q).await?;
        let mut l = loader(&state, &ctx)?;
        let p = state.playback.load(&mut l, &row).await?;
        Ok::<_, Fail>(body("video/mp2t", ts::segment(&p)?))
    }
    .await;
    cors(&state, r)
}

async fn dash_manifest(State(state): State<AppState>, Query(q): Q) -> Response {
    let r = async {
        let ctx = open(&state, &q, Protocol::Dash).await?;
        let mut l = loader(&state, &ctx)?;
        let w = window(&state, &ctx, &mut l).await?;
        let config = match w.entries.first() {
            Some(e) => Some(e.config.clone()),
            None => Some(probe(&state, &ctx, &mut l).await?.1),
        };
        let now = state.catalog.clock().now_ms();
        let shift = w.replay_origin_ms.map_or(0, |o| ctx.claims.created_ms - o);
        let text = dash::manifest(
            &ctx.token,
            &ctx.claims,
            &w,
            config.as_deref(),
            ctx.stream.creation_ms,
            now,
            shift,
        );
        Ok::<_, Fail>(body(dash::MANIFEST_TYPE, text))
    }
    .await;
    cors(&state, r)
}

async fn dash_fragment(State(state): State<AppState>, Query(q): Q) -> Response {
    let r = async {
        let ctx = open(&state, &q, Protocol::Dash).await?;
        let which = tracks_param(&q, Tracks::Video)?;
        let row = match q.get("Time") {
            Some(t) => {
                let t: i64 = t
                    .parse()
                    .map_err(|_| Error::not_found(format!("no fragment at Time={t}")))?;
                state
                    .catalog
                    .index()
                    .fragments_in_range(
                        &ctx.stream.stream_id,
                        TimestampKind::Producer,
                        t,
                        t,
                        None,
                        64,
                    )
                    .await?
                    .into_iter()
                    .filter(|r| in_session(&ctx.claims, r))
                    .max_by_key(|r| r.seq)
                    .ok_or_else(|| Error::not_found(format!("no fragment at Time={t}")))?
            }
            None => fragment_by_number(&state, &ctx, &q).await?,
        };
        let mut l = loader(&state, &ctx)?;
        let p = state.playback.load(&mut l, &row).await?;
        let seg = mp4::media_segment(&p, which, (row.seq % u64::from(u32::MAX)) as u32 + 1)?
            .ok_or_else(|| Error::not_found("the fragment has no media of that track"))?;
        Ok::<_, Fail>(body("video/mp4", seg))
    }
    .await;
    cors(&state, r)
}
