//! The authentication middleware: every API request must carry a valid SigV4 signature
//! (header or presigned query) by a known key, and that key must be allowed the
//! operation on the stream it names. Exempt: `GET /metrics`, and the HLS/DASH media GETs
//! under `/hls/` and `/dash/`, which carry their own session token.
//!
//! JSON bodies (≤ `max_json_body_bytes`) are buffered to hash them, then handed on. The
//! PutMedia body is never buffered: its signature covers the empty payload (as the KVS C
//! producer signs it), `UNSIGNED-PAYLOAD` (presigned URLs), or what the client states in
//! `x-amz-content-sha256` when that is not a digest of a streamed body.

use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::auth::Principal;
use crate::auth::sigv4::{self, Presented, RequestParts, SigError};
use crate::error::{Error, ErrorKind};

/// Paths that are not SigV4-authenticated.
fn exempt(path: &str) -> bool {
    path == "/metrics" || path.starts_with("/hls/") || path.starts_with("/dash/")
}

/// `/createStream` → `CreateStream`.
fn operation(path: &str) -> String {
    let op = path.trim_start_matches('/');
    let mut c = op.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
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

/// The stream a request names: from the JSON body, or PutMedia's headers / query.
fn stream_of(
    path: &str,
    headers: &[(String, String)],
    query: &[(String, String)],
    body: Option<&[u8]>,
) -> Option<String> {
    let from_arn = |arn: &str| arn.rsplit('/').nth(1).map(str::to_owned);
    if path == "/putMedia" {
        let get = |k: &str| {
            headers
                .iter()
                .chain(query.iter())
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        return get("x-amzn-stream-name")
            .or_else(|| get("x-amzn-stream-arn").and_then(|a| from_arn(&a)));
    }
    let v: serde_json::Value = serde_json::from_slice(body?).ok()?;
    v["StreamName"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| v["StreamARN"].as_str().and_then(from_arn))
}

/// The middleware.
pub async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !state.auth.enabled || exempt(req.uri().path()) {
        return next.run(req).await;
    }
    match check(&state, req).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

async fn check(state: &AppState, req: Request) -> Result<Request, Error> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
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
    // The streamed PutMedia body passes through untouched; JSON bodies are hashed.
    let (body_bytes, passthrough) = if path == "/putMedia" {
        (None, Some(body))
    } else {
        let limit = state.settings.max_json_body_bytes;
        let b = axum::body::to_bytes(body, limit).await.map_err(|e| {
            Error::invalid(format!(
                "request body unreadable or larger than {limit} bytes: {e}"
            ))
        })?;
        (Some(b), None)
    };
    let actual_hash = body_bytes.as_ref().map(|b| crate::check::content_hash(b));
    let payload_hash = match (
        presented.expires,
        header("x-amz-content-sha256"),
        &actual_hash,
    ) {
        (Some(_), _, _) => sigv4::UNSIGNED_PAYLOAD.to_owned(),
        (None, Some(h), Some(actual)) if h != sigv4::UNSIGNED_PAYLOAD && h != actual => {
            return Err(Error::new(
                ErrorKind::InvalidSignature,
                "x-amz-content-sha256 does not match the request body",
            ));
        }
        (None, Some(h), _) => h.to_owned(),
        (None, None, Some(actual)) => actual.clone(),
        (None, None, None) => sigv4::EMPTY_SHA256.to_owned(),
    };

    // Key, scope and time before the signature itself.
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
        return Err(Error::new(
            ErrorKind::InvalidSignature,
            format!(
                "credential must be scoped to the service 'kinesisvideo': service={}",
                presented.service
            ),
        ));
    }
    if !presented.amz_date.starts_with(&presented.scope_date) {
        return Err(Error::new(
            ErrorKind::InvalidSignature,
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
    let stream = stream_of(&path, &headers, &query, body_bytes.as_deref());
    state
        .auth
        .keys
        .authorize(&who, &operation(&path), stream.as_deref())?;
    parts.extensions.insert(who);
    let body = match (body_bytes, passthrough) {
        (Some(b), _) => Body::from(b),
        (None, Some(b)) => b,
        (None, None) => Body::empty(),
    };
    Ok(Request::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_and_streams() {
        assert_eq!(
            operation("/getHLSStreamingSessionURL"),
            "GetHLSStreamingSessionURL"
        );
        assert_eq!(operation("/putMedia"), "PutMedia");
        let h = vec![("x-amzn-stream-name".to_string(), "cam1".to_string())];
        assert_eq!(
            stream_of("/putMedia", &h, &[], None).as_deref(),
            Some("cam1")
        );
        let q = vec![(
            "x-amzn-stream-arn".to_string(),
            "arn:aws:kinesisvideo:us-east-1:000000000000:stream/cam2/1".to_string(),
        )];
        assert_eq!(
            stream_of("/putMedia", &[], &q, None).as_deref(),
            Some("cam2")
        );
        assert_eq!(
            stream_of("/getMedia", &[], &[], Some(br#"{"StreamName":"c3"}"#)).as_deref(),
            Some("c3")
        );
        assert_eq!(stream_of("/listStreams", &[], &[], Some(b"{}")), None);
    }
}
