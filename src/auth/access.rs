//! What the caller of one request may do. The authentication middleware builds an
//! [`Access`] from the verified key and the operation the path names and puts it in the
//! request's extensions; handlers take it as an extractor and hand it to
//! `streams::Catalog`, which checks it on exactly the stream record it resolves, creates
//! or lists. Nothing else decides whether a key may touch a stream, so a handler cannot
//! act on a stream it did not check. A request without an `Access` (a route the
//! middleware did not see) is refused: the default is deny.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::{Policy, Principal};
use crate::error::{Error, Result};

/// How the request was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `serve --no-auth`: nobody is checked.
    Unauthenticated,
    /// An `Authorization` header.
    Header,
    /// A presigned URL: only its signed query binds the request (see `api::put_media`).
    Presigned,
}

/// The rights of one request's caller for one operation.
#[derive(Debug, Clone)]
pub struct Access {
    who: Option<Principal>,
    /// `None`: unrestricted (auth off).
    policy: Option<Arc<Policy>>,
    /// `kinesisvideo:<Operation>`.
    action: String,
    method: Method,
}

impl Access {
    /// Auth is off: every operation on every stream.
    pub fn unrestricted(operation: &str) -> Self {
        Self {
            who: None,
            policy: None,
            action: format!("kinesisvideo:{operation}"),
            method: Method::Unauthenticated,
        }
    }

    /// A verified key with its policy, for `operation` (e.g. `GetMedia`).
    pub fn for_key(who: Principal, policy: Arc<Policy>, operation: &str, method: Method) -> Self {
        Self {
            who: Some(who),
            policy: Some(policy),
            action: format!("kinesisvideo:{operation}"),
            method,
        }
    }

    /// The authenticated key, if auth is on.
    pub fn principal(&self) -> Option<&Principal> {
        self.who.as_ref()
    }

    pub fn method(&self) -> Method {
        self.method
    }

    /// `NotAuthorized`, or `AccessDenied` on the operations whose model declares it.
    fn denied(&self, stream: Option<&str>) -> Error {
        let op = self.action.trim_start_matches("kinesisvideo:");
        Error::new(
            crate::operations::denial_kind(op),
            format!(
                "access key is not allowed to do this: key={} action={} stream={}",
                self.who.as_ref().map_or("-", |w| w.access_key_id.as_str()),
                self.action,
                stream.unwrap_or("-")
            ),
        )
    }

    /// The key may run this operation at all (on some stream, or on none).
    pub fn check_action(&self) -> Result<()> {
        match &self.policy {
            Some(p) if !p.allows_action(&self.action) => Err(self.denied(None)),
            _ => Ok(()),
        }
    }

    /// The key may run this operation on the stream named `name`. Called by the catalog
    /// on the name of the record it resolved (or is about to create).
    pub fn check_stream(&self, name: &str) -> Result<()> {
        if self.may_see(name) {
            Ok(())
        } else {
            Err(self.denied(Some(name)))
        }
    }

    /// Whether a listing for this operation may include the stream `name`.
    pub fn may_see(&self, name: &str) -> bool {
        match &self.policy {
            None => true,
            Some(p) => p.allows_action(&self.action) && p.allows_stream(name),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Access {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self> {
        // Fail closed: every authenticated route has one; a missing one is a wiring bug.
        parts.extensions.get::<Access>().cloned().ok_or_else(|| {
            Error::internal(
                "no access decision was made for this request (route not authenticated)",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn limited(op: &str) -> Access {
        let policy = Arc::new(Policy {
            actions: vec![
                "kinesisvideo:GetMedia".into(),
                "kinesisvideo:ListStreams".into(),
            ],
            streams: vec!["cam-*".into()],
        });
        let who = Principal {
            access_key_id: "K".into(),
        };
        Access::for_key(who, policy, op, Method::Header)
    }

    #[test]
    fn checks_action_and_stream_together() {
        let a = limited("GetMedia");
        assert!(a.check_action().is_ok());
        assert!(a.check_stream("cam-1").is_ok());
        assert_eq!(
            a.check_stream("door").unwrap_err().kind,
            ErrorKind::NotAuthorized
        );
        assert_eq!(
            limited("TagResource")
                .check_stream("cam-1")
                .unwrap_err()
                .kind,
            ErrorKind::AccessDenied
        );
        let d = limited("DeleteStream");
        assert!(d.check_action().is_err());
        assert!(d.check_stream("cam-1").is_err(), "stream ok, action not");
        assert!(limited("ListStreams").may_see("cam-2"));
        assert!(!limited("ListStreams").may_see("door"));
        assert!(
            Access::unrestricted("DeleteStream")
                .check_stream("door")
                .is_ok()
        );
    }
}
