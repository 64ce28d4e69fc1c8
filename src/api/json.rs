//! `KvsJson<T>`: the JSON body extractor for every JSON API. It bounds the body size,
//! and turns malformed JSON or wrongly typed members into a `SerializationException`
//! JSON error instead of axum's plain-text rejection.

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
        let limit = state.settings.max_json_body_bytes;
        let body = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!("request body unreadable or larger than {limit} bytes: {e}"),
                )
            })?;
        parse_json(&body).map(KvsJson)
    }
}

/// Parses a JSON body; an empty body counts as `{}` (some clients send nothing for
/// operations without members).
pub fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, Error> {
    let text: &[u8] = if body.iter().all(|b| b.is_ascii_whitespace()) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(text).map_err(|e| {
        Error::new(
            ErrorKind::Serialization,
            format!("request body is not valid JSON for this operation: {e}"),
        )
    })
}
