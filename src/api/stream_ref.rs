//! The `StreamName | StreamARN` pair that stream operations take (flattened into their
//! input structs), resolved — and the caller's access checked — by
//! `streams::Catalog::resolve`, the one place that does both.

use serde::Deserialize;

use super::AppState;
use crate::auth::Access;
use crate::error::{ErrorKind, Result};
use crate::index::StreamRecord;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StreamRef {
    pub stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
}

impl StreamRef {
    /// The stream, if `access` may run its operation on it; `arn_kind` is the error kind
    /// of a malformed ARN (see `Catalog::resolve`).
    pub async fn resolve(
        &self,
        state: &AppState,
        access: &Access,
        arn_kind: ErrorKind,
    ) -> Result<StreamRecord> {
        state
            .catalog
            .resolve(
                access,
                self.stream_name.as_deref(),
                self.stream_arn.as_deref(),
                arn_kind,
            )
            .await
    }
}
