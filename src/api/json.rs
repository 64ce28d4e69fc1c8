//! `KvsJson<T>`: the JSON body extractor for every JSON API. It bounds the body size
//! and the time to receive it, refuses any body that is not a JSON object, and turns
//! malformed JSON or wrongly typed members into a `SerializationException` JSON error
//! instead of axum's plain-text rejection. Each handler parses its input once, into its
//! typed struct, here.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use super::AppState;
use crate::error::{Error, ErrorKind};

/// A deserialized JSON request body.
#[derive(Debug)]
pub struct KvsJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for KvsJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let body = read_body(state, req.into_body()).await?;
        parse_json(&body).map(KvsJson)
    }
}

/// Reads a JSON API body: at most `max_json_body_bytes`, within `http.body_read_timeout`.
pub async fn read_body(state: &AppState, body: axum::body::Body) -> Result<Bytes, Error> {
    let limit = state.settings.max_json_body_bytes;
    let deadline = state.settings.http.body_read_timeout;
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => Err(Error::invalid(format!(
            "request body unreadable or larger than {limit} bytes: {e}"
        ))),
        Err(_) => Err(Error::invalid(format!(
            "request body not received within {} s",
            deadline.as_secs()
        ))),
    }
}

/// Parses a JSON body; an empty body counts as `{}` (some clients send nothing for
/// operations without members). Anything but an object is refused before serde sees it:
/// serde would fill a struct from an array by position.
pub fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, Error> {
    let text: &[u8] = if body.iter().all(|b| b.is_ascii_whitespace()) {
        b"{}"
    } else {
        body
    };
    if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Error::new(
            ErrorKind::Serialization,
            "request body must be a JSON object",
        ));
    }
    serde_json::from_slice(text).map_err(|e| {
        Error::new(
            ErrorKind::Serialization,
            format!("request body is not valid JSON for this operation: {e}"),
        )
    })
}
