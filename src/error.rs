//! The service-level error: a small, stable set of kinds named after the KVS exceptions
//! a real client understands, plus a message. Lower layers (`store`, `index`, `mkv`, …)
//! have their own error enums and convert into this one; `api::error` holds the single
//! exhaustive mapping from [`ErrorKind`] to HTTP status and `x-amzn-ErrorType`.
//!
//! Messages follow one style: lowercase, what went wrong, then `key=value` details.

use std::fmt;

/// What kind of failure, as the client should see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A member is missing, malformed, out of range or contradicts another.
    InvalidArgument,
    /// The request body is not valid JSON or a member has the wrong JSON type.
    Serialization,
    /// No such stream (or fragment, or session).
    ResourceNotFound,
    /// The stream name is taken, or the stream is not in a state that allows the call.
    ResourceInUse,
    /// `CurrentVersion` does not match the stream's version.
    VersionMismatch,
    /// More than 50 tags would be on the stream.
    TagsPerResourceExceededLimit,
    /// A configured stream-count limit was reached.
    AccountStreamLimitExceeded,
    /// Too many requests, or a rate limit was hit.
    ClientLimitExceeded,
    /// Too many concurrent connections for this stream and API.
    ConnectionLimitExceeded,
    /// An ARN could not be parsed (tag operations).
    InvalidResourceFormat,
    /// The stream keeps no data (retention 0) and the API needs archived data.
    NoDataRetention,
    /// The stream's codecs or track layout cannot be packaged (GetClip, HLS, DASH).
    UnsupportedStreamMediaType,
    /// A track lacks the codec private data packaging needs.
    MissingCodecPrivateData,
    /// A track's codec private data cannot be parsed.
    InvalidCodecPrivateData,
    /// A frame cannot be read (GetClip).
    InvalidMediaFrame,
    /// The caller is authenticated but not allowed to do this.
    NotAuthorized,
    /// The same, on an operation whose model declares `AccessDeniedException` instead
    /// (see `operations`).
    AccessDenied,
    /// The request carries no signature at all.
    MissingAuthenticationToken,
    /// The access key is not known.
    UnrecognizedClient,
    /// The signature does not match, is malformed, or is outside its validity window.
    InvalidSignature,
    /// The path names no operation this server implements.
    UnknownOperation,
    /// A known AWS operation this server does not implement.
    NotImplemented,
    /// A known path called with an HTTP method it does not take.
    MethodNotAllowed,
    /// Something failed inside the server; the request may be retried.
    Internal,
}

impl ErrorKind {
    /// All kinds, for tests that check the mapping is total and distinct.
    pub const ALL: [ErrorKind; 24] = [
        ErrorKind::InvalidArgument,
        ErrorKind::Serialization,
        ErrorKind::ResourceNotFound,
        ErrorKind::ResourceInUse,
        ErrorKind::VersionMismatch,
        ErrorKind::TagsPerResourceExceededLimit,
        ErrorKind::AccountStreamLimitExceeded,
        ErrorKind::ClientLimitExceeded,
        ErrorKind::ConnectionLimitExceeded,
        ErrorKind::InvalidResourceFormat,
        ErrorKind::NoDataRetention,
        ErrorKind::UnsupportedStreamMediaType,
        ErrorKind::MissingCodecPrivateData,
        ErrorKind::InvalidCodecPrivateData,
        ErrorKind::InvalidMediaFrame,
        ErrorKind::NotAuthorized,
        ErrorKind::AccessDenied,
        ErrorKind::MissingAuthenticationToken,
        ErrorKind::UnrecognizedClient,
        ErrorKind::InvalidSignature,
        ErrorKind::UnknownOperation,
        ErrorKind::NotImplemented,
        ErrorKind::MethodNotAllowed,
        ErrorKind::Internal,
    ];
}

/// A service error: a kind plus a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ResourceNotFound, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    /// The standard "stream not found" error.
    pub fn stream_not_found(name: &str) -> Self {
        Self::not_found(format!("stream not found: stream={name}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Error {}

/// Result with the service error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
