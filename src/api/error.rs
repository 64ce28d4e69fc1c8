//! The one mapping from service errors to what AWS clients parse: HTTP status,
//! `x-amzn-ErrorType` header and a `{"__type", "Message"}` JSON body. The `match` has no
//! wildcard arm, so every new [`ErrorKind`] needs a decision here.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::{Error, ErrorKind};

/// HTTP status and modeled exception name of an error kind.
pub fn wire(kind: ErrorKind) -> (StatusCode, &'static str) {
    use ErrorKind::*;
    match kind {
        InvalidArgument => (StatusCode::BAD_REQUEST, "InvalidArgumentException"),
        Serialization => (StatusCode::BAD_REQUEST, "SerializationException"),
        ResourceNotFound => (StatusCode::NOT_FOUND, "ResourceNotFoundException"),
        ResourceInUse => (StatusCode::BAD_REQUEST, "ResourceInUseException"),
        VersionMismatch => (StatusCode::BAD_REQUEST, "VersionMismatchException"),
        TagsPerResourceExceededLimit => (
            StatusCode::BAD_REQUEST,
            "TagsPerResourceExceededLimitException",
        ),
        AccountStreamLimitExceeded => (
            StatusCode::BAD_REQUEST,
            "AccountStreamLimitExceededException",
        ),
        ClientLimitExceeded => (StatusCode::BAD_REQUEST, "ClientLimitExceededException"),
        ConnectionLimitExceeded => (StatusCode::BAD_REQUEST, "ConnectionLimitExceededException"),
        InvalidResourceFormat => (StatusCode::BAD_REQUEST, "InvalidResourceFormatException"),
        NoDataRetention => (StatusCode::BAD_REQUEST, "NoDataRetentionException"),
        UnsupportedStreamMediaType => (
            StatusCode::BAD_REQUEST,
            "UnsupportedStreamMediaTypeException",
        ),
        MissingCodecPrivateData => (StatusCode::BAD_REQUEST, "MissingCodecPrivateDataException"),
        InvalidCodecPrivateData => (StatusCode::BAD_REQUEST, "InvalidCodecPrivateDataException"),
        InvalidMediaFrame => (StatusCode::BAD_REQUEST, "InvalidMediaFrameException"),
        NotAuthorized => (StatusCode::UNAUTHORIZED, "NotAuthorizedException"),
        AccessDenied => (StatusCode::UNAUTHORIZED, "AccessDeniedException"),
        MissingAuthenticationToken => {
            (StatusCode::FORBIDDEN, "MissingAuthenticationTokenException")
        }
        UnrecognizedClient => (StatusCode::FORBIDDEN, "UnrecognizedClientException"),
        InvalidSignature => (StatusCode::FORBIDDEN, "InvalidSignatureException"),
        UnknownOperation => (StatusCode::NOT_FOUND, "UnknownOperationException"),
        NotImplemented => (StatusCode::NOT_IMPLEMENTED, "NotImplementedException"),
        // Not modeled; named like the rest so clients parse it as a KVS error.
        MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowedException"),
        Internal => (StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure"),
    }
}

/// Attached to error responses so the logging middleware can record the error once.
#[derive(Debug, Clone)]
pub struct LoggedError(pub Error);

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, name) = wire(self.kind);
        let body = serde_json::json!({ "__type": name, "Message": self.message }).to_string();
        let mut resp = (status, body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert("x-amzn-ErrorType", HeaderValue::from_static(name));
        resp.extensions_mut().insert(LoggedError(self));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn mapping_is_distinct_and_models_statuses() {
        let names: HashSet<_> = ErrorKind::ALL.iter().map(|k| wire(*k).1).collect();
        assert_eq!(names.len(), ErrorKind::ALL.len());
        assert_eq!(wire(ErrorKind::ResourceNotFound).0, StatusCode::NOT_FOUND);
        assert_eq!(wire(ErrorKind::NotAuthorized).0, StatusCode::UNAUTHORIZED);
        for k in ErrorKind::ALL {
            assert!(wire(k).0.is_client_error() || wire(k).0.is_server_error());
        }
    }
}
