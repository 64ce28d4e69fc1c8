//! The authentication middleware: every API request must carry a valid SigV4 signature
//! (header or presigned query) by a known key allowed the operation; it leaves an
//! [`Access`] in the request for `streams::Catalog`, which decides on the stream the
//! handler resolves. Exempt: `GET /metrics`, and the HLS/DASH media GETs under `/hls/`
//! and `/dash/`, which carry their own session token.
//!
//! The key, scope and date are checked before any body byte is read. JSON bodies
//! (≤ `max_json_body_bytes`, within `http.body_read_timeout`) are then buffered, and the
//! signature must cover their hash; presigned URLs are refused on them. The PutMedia
//! body is never buffered: its signature covers the empty payload (as the KVS C producer
//! signs it), `UNSIGNED-PAYLOAD` (presigned URLs), or what the client states in
//! `x-amz-content-sha256`; the headers that choose its stream and timecodes must be
//! signed.

use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::auth::access::Method;
use crate::auth::sigv4::{self, Presented, RequestParts, SigError};
use crate::auth::{Access, Principal};
use crate::error::{Error, ErrorKind};

/// Paths that are not SigV4-authenticated.
fn exempt(path: &str) -> bool {
    path == "/metrics" || path.starts_with("/hls/") || path.starts_with("/dash/")
}

/// The action a path names (`/createStream` → `CreateStream`; see `operations`).
fn operation(path: &str) -> String {
    crate::operations::action_of_path(path)
}

fn sig_error(e: SigError) -> Error {
    match e {
        SigError::Missing => Error::new(
            ErrorKind::MissingAuthenticationToken,
            "request is not signed: an Authorization header or a presigned URL is required",
        ),
        SigError::Malformed(m) => Error::new(
            ErrorKind::InvalidSignature,
            format!("malformed signature: {m}"),
        ),
        SigError::Expired(m) => Error::new(ErrorKind::InvalidSignature, m),
        SigError::Mismatch => Error::new(
            ErrorKind::InvalidSignature,
            "the request signature does not match; check the secret key and signing method",
        ),
    }
}

/// PutMedia parameters that choose what a request does: when sent as headers they must be
/// signed (named in `SignedHeaders`), and a presigned URL binds them in its query.
pub const PUT_MEDIA_BOUND: [&str; 4] = [
    "x-amzn-stream-name",
    "x-amzn-stream-arn",
    "x-amzn-fragment-timecode-type",
    "x-amzn-producer-start-timestamp",
];

/// The middleware. Every non-exempt request leaves it with an [`Access`] in its
/// extensions (unrestricted when auth is off); which streams it may touch is decided by
/// `streams::Catalog` on the stream record the handler resolves.
pub async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if exempt(req.uri().path()) {
        return next.run(req).await;
    }
    if !state.auth.enabled {
        let mut req = req;
        let op = operation(req.uri().path());
        req.extensions_mut().insert(Access::unrestricted(&op));
        return next.run(req).await;
    }
    match check(&state, req).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn invalid_sig(m: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidSignature, m)
}

async fn check(state: &AppState, req: Request) -> Result<Request, Error> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let put_media = path == "/putMedia";
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect();
    let header = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    let query_str = parts.uri.query().unwrap_or("").to_owned();
    let presigned = sigv4::parse_presigned(&query_str).map_err(sig_error)?;
    let (presented, query): (Presented, Vec<(String, String)>) = match presigned {
        Some(p) => p,
        None => {
            let auth = header("authorization").ok_or_else(|| sig_error(SigError::Missing))?;
            let p = sigv4::parse_authorization(auth, header("x-amz-date")).map_err(sig_error)?;
            (
                p,
                form_urlencoded::parse(query_str.as_bytes())
                    .into_owned()
                    .collect(),
            )
        }
    };
    let method = if presented.expires.is_some() {
        Method::Presigned
    } else {
        Method::Header
    };

    // Key, scope and time first: nothing of the body is read for a request that cannot
    // be valid, so unsigned clients cannot make the server buffer anything.
    let secret = state
        .auth
        .keys
        .secret(&presented.access_key_id)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::UnrecognizedClient,
                "the access key id is not known to this server",
            )
        })?
        .to_owned();
    if presented.service != sigv4::SERVICE {
        return Err(invalid_sig(format!(
            "credential must be scoped to the service 'kinesisvideo': service={}",
            presented.service
        )));
    }
    if !presented.amz_date.starts_with(&presented.scope_date) {
        return Err(invalid_sig(
            "credential scope date does not match X-Amz-Date",
        ));
    }
    let signed_at = sigv4::parse_amz_date(&presented.amz_date).ok_or_else(|| {
        sig_error(SigError::Malformed(
            "X-Amz-Date must be YYYYMMDD'T'HHMMSS'Z'".into(),
        ))
    })?;
    let signed_ms = signed_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let now = state.catalog.clock().now_ms();
    let skew = state.auth.max_skew.as_millis() as i64;
    match presented.expires {
        Some(exp) => {
            if now > signed_ms + Duration::from_secs(exp).as_millis() as i64
                || signed_ms > now + skew
            {
                return Err(sig_error(SigError::Expired(
                    "the presigned URL has expired or is not valid yet".into(),
                )));
            }
        }
        None => {
            if (now - signed_ms).abs() > skew {
                return Err(sig_error(SigError::Expired(format!(
                    "signature expired: X-Amz-Date is more than {} s from the server time",
                    skew / 1000
                ))));
            }
        }
    }
    // A presigned URL signs no body: it is accepted only where there is no JSON body to
    // choose the stream (PutMedia binds its parameters in the signed query).
    if method == Method::Presigned && !put_media {
        return Err(Error::new(
            ErrorKind::NotAuthorized,
            "presigned URLs are accepted for PutMedia only: sign JSON requests in the Authorization header",
        ));
    }
    if method == Method::Header && put_media {
        for name in PUT_MEDIA_BOUND {
            if header(name).is_some() && !presented.signed_headers.iter().any(|h| h == name) {
                return Err(Error::new(
                    ErrorKind::NotAuthorized,
                    format!("header must be signed: {name} is not in SignedHeaders"),
                ));
            }
        }
    }

    // The streamed PutMedia body passes through untouched; JSON bodies are read (with a
    // size limit and a deadline) and hashed, and the signature must cover them.
    let (payload_hash, body) = if put_media {
        let hash = match (method, header("x-amz-content-sha256")) {
            (Method::Presigned, _) => sigv4::UNSIGNED_PAYLOAD.to_owned(),
            (_, Some(h)) => h.to_owned(),
            (_, None) => sigv4::EMPTY_SHA256.to_owned(),
        };
        (hash, body)
    } else {
        let b = super::json::read_body(state, body).await?;
        let actual = sigv4::payload_hash(&b);
        if let Some(h) = header("x-amz-content-sha256")
            && h != actual
        {
            return Err(invalid_sig(if h == sigv4::UNSIGNED_PAYLOAD {
                "JSON request bodies must be signed: UNSIGNED-PAYLOAD is accepted for PutMedia only"
            } else {
                "x-amz-content-sha256 does not match the request body"
            }));
        }
        (actual, Body::from(b))
    };

    let parts_for_sig = RequestParts {
        method: parts.method.as_str(),
        path: &path,
        query: &query,
        headers: &headers,
        payload_hash: &payload_hash,
    };
    sigv4::verify(&presented, &parts_for_sig, &secret).map_err(sig_error)?;

    let who = Principal {
        access_key_id: presented.access_key_id.clone(),
    };
    let policy = state
        .auth
        .keys
        .policy(&who.access_key_id)
        .ok_or_else(|| Error::new(ErrorKind::UnrecognizedClient, "unknown access key"))?;
    let access = Access::for_key(who, policy, &operation(&path), method);
    // The action alone is checked here; the stream, on the record the handler resolves.
    access.check_action()?;
    parts.extensions.insert(access);
    Ok(Request::from_parts(parts, body))
}
