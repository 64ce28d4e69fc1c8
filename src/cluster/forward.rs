//! Forwarding a request for a stream another node owns (`docs/design/cluster.md`,
//! Routing): a PutMedia or GetMedia that reaches a node other than the stream's owner is
//! passed to the owner as it came (method, path, query, headers including `Host` and the
//! client's SigV4 signature, body streamed) and the owner's response is streamed back.
//! The receiving node has already authenticated the client and authorized the stream;
//! the owner checks the same signature again, so forwarding grants nothing a direct
//! request would not. A forwarded request carries [`FORWARDED_BY`]; a node never forwards
//! such a request again (no loops while ownership moves), it answers it itself.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, Method, Uri, header};
use axum::response::Response;
use futures::TryStreamExt;

use super::{Membership, NodeInfo};
use crate::error::{Error, ErrorKind, Result};

/// Marks a request one node forwarded to another (value: the forwarding node's id).
pub const FORWARDED_BY: &str = "x-streamvault-forwarded-by";

/// Hop-by-hop headers (RFC 9110 §7.6.1) and `Expect` (the receiving node already
/// answered it): never passed on.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::EXPECT,
];

/// Whether another node already forwarded this request.
pub fn is_forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED_BY)
}

/// The HTTP client nodes forward with: no overall timeout (uploads and live tails last),
/// a short connect timeout (a dead owner answers with an error the client retries).
pub(super) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .build()
        .expect("forwarding HTTP client")
}

fn pass_on(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        if !HOP_BY_HOP.contains(k) && !k.as_str().starts_with("keep-alive") {
            to.append(k.clone(), v.clone());
        }
    }
}

impl Membership {
    /// Forwards the request to `owner` and streams its answer back. A failure to reach
    /// the owner is a retriable `ClientLimitExceededException` (the client re-resolves
    /// its endpoint; the owner's lease expires if it is gone).
    pub async fn forward(
        &self,
        owner: &NodeInfo,
        method: Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response> {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let url = format!("{}{path}", owner.url);
        let mut out = HeaderMap::new();
        pass_on(headers, &mut out);
        out.insert(
            HeaderName::from_static(FORWARDED_BY),
            self.node_id
                .parse()
                .map_err(|_| Error::internal("node id is not a header value"))?,
        );
        metrics::counter!(crate::metrics::CLUSTER_FORWARDED, "path" => uri.path().to_owned())
            .increment(1);
        let body = reqwest::Body::wrap_stream(body.into_data_stream());
        let resp = self
            .http
            .request(method, &url)
            .headers(out)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::ClientLimitExceeded,
                    format!(
                        "the stream's owner, node {} at {}, cannot be reached right now ({e}): retry",
                        owner.node_id, owner.url
                    ),
                )
            })?;
        let mut builder = Response::builder().status(resp.status());
        if let Some(h) = builder.headers_mut() {
            pass_on(resp.headers(), h);
        }
        let stream = resp.bytes_stream().map_err(std::io::Error::other);
        builder
            .body(Body::from_stream(stream))
            .map_err(|e| Error::internal(e.to_string()))
    }
}
