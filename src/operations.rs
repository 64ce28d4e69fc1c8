//! The catalogue of AWS operations this server answers for: every operation the AWS
//! models of the five KVS services declare (kinesisvideo, kinesis-video-media,
//! kinesis-video-archived-media, kinesis-video-signaling, kinesis-video-webrtc-storage),
//! with its request path, whether this server implements it, and which exception the
//! model declares for a caller who is not allowed (`AccessDeniedException` on the newer
//! operations, `NotAuthorizedException` on the older ones). The authentication
//! middleware names a request's action from here, `auth::Access` picks its denial
//! exception from here, and the router's fallback answers the unimplemented ones with
//! `NotImplementedException`. `tests/api_surface.rs` checks this table against the
//! botocore models.

use crate::error::ErrorKind;

/// One modeled operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation {
    /// The model's operation name, e.g. `TagResource` (the IAM action after `kinesisvideo:`).
    pub name: &'static str,
    /// The model's `requestUri`, e.g. `/TagResource`.
    pub path: &'static str,
    /// Served by this server (otherwise: `NotImplementedException`).
    pub implemented: bool,
    /// The model declares `AccessDeniedException` (not `NotAuthorizedException`).
    pub access_denied: bool,
}

const fn op(name: &'static str, path: &'static str, implemented: bool, ad: bool) -> Operation {
    Operation {
        name,
        path,
        implemented,
        access_denied: ad,
    }
}

/// Every modeled operation, plus `PutMedia` (which the models leave out).
#[rustfmt::skip]
pub const OPERATIONS: &[Operation] = &[
    // kinesisvideo (control plane)
    op("CreateSignalingChannel", "/createSignalingChannel", false, true),
    op("CreateStream", "/createStream", true, false),
    op("DeleteEdgeConfiguration", "/deleteEdgeConfiguration", false, true),
    op("DeleteSignalingChannel", "/deleteSignalingChannel", false, true),
    op("DeleteStream", "/deleteStream", true, false),
    op("DescribeEdgeConfiguration", "/describeEdgeConfiguration", false, true),
    op("DescribeImageGenerationConfiguration", "/describeImageGenerationConfiguration", true, true),
    op("DescribeMappedResourceConfiguration", "/describeMappedResourceConfiguration", false, true),
    op("DescribeMediaStorageConfiguration", "/describeMediaStorageConfiguration", false, true),
    op("DescribeNotificationConfiguration", "/describeNotificationConfiguration", true, true),
    op("DescribeSignalingChannel", "/describeSignalingChannel", false, true),
    op("DescribeStream", "/describeStream", true, false),
    op("DescribeStreamStorageConfiguration", "/describeStreamStorageConfiguration", true, true),
    op("GetDataEndpoint", "/getDataEndpoint", true, false),
    op("GetSignalingChannelEndpoint", "/getSignalingChannelEndpoint", false, true),
    op("ListEdgeAgentConfigurations", "/listEdgeAgentConfigurations", false, false),
    op("ListSignalingChannels", "/listSignalingChannels", false, true),
    op("ListStreams", "/listStreams", true, false),
    op("ListTagsForResource", "/ListTagsForResource", true, true),
    op("ListTagsForStream", "/listTagsForStream", true, false),
    op("StartEdgeConfigurationUpdate", "/startEdgeConfigurationUpdate", false, true),
    op("TagResource", "/TagResource", true, true),
    op("TagStream", "/tagStream", true, false),
    op("UntagResource", "/UntagResource", true, true),
    op("UntagStream", "/untagStream", true, false),
    op("UpdateDataRetention", "/updateDataRetention", true, false),
    op("UpdateImageGenerationConfiguration", "/updateImageGenerationConfiguration", true, true),
    op("UpdateMediaStorageConfiguration", "/updateMediaStorageConfiguration", false, true),
    op("UpdateNotificationConfiguration", "/updateNotificationConfiguration", true, true),
    op("UpdateSignalingChannel", "/updateSignalingChannel", false, true),
    op("UpdateStream", "/updateStream", true, false),
    op("UpdateStreamStorageConfiguration", "/updateStreamStorageConfiguration", true, true),
    // kinesis-video-media
    op("GetMedia", "/getMedia", true, false),
    op("PutMedia", "/putMedia", true, false),
    // kinesis-video-archived-media
    op("GetClip", "/getClip", true, false),
    op("GetDASHStreamingSessionURL", "/getDASHStreamingSessionURL", true, false),
    op("GetHLSStreamingSessionURL", "/getHLSStreamingSessionURL", true, false),
    op("GetImages", "/getImages", true, false),
    op("GetMediaForFragmentList", "/getMediaForFragmentList", true, false),
    op("ListFragments", "/listFragments", true, false),
    // kinesis-video-signaling
    op("GetIceServerConfig", "/v1/get-ice-server-config", false, false),
    op("SendAlexaOfferToMaster", "/v1/send-alexa-offer-to-master", false, false),
    // kinesis-video-webrtc-storage
    op("JoinStorageSession", "/joinStorageSession", false, true),
    op("JoinStorageSessionAsViewer", "/joinStorageSessionAsViewer", false, true),
];

/// The operation at `path`, if it is a modeled one.
pub fn by_path(path: &str) -> Option<&'static Operation> {
    OPERATIONS.iter().find(|o| o.path == path)
}

/// The operation named `name` (case-insensitive, as IAM compares actions).
pub fn by_name(name: &str) -> Option<&'static Operation> {
    OPERATIONS
        .iter()
        .find(|o| o.name.eq_ignore_ascii_case(name))
}

/// The error kind a caller who may not run operation `name` gets.
pub fn denial_kind(name: &str) -> ErrorKind {
    match by_name(name) {
        Some(o) if o.access_denied => ErrorKind::AccessDenied,
        _ => ErrorKind::NotAuthorized,
    }
}

/// The action name of a request path: the modeled operation's name, else the path with
/// its first letter capitalised (`/createStream` → `CreateStream`), for paths outside the
/// models (the HLS/DASH media GETs are exempt from authentication anyway).
pub fn action_of_path(path: &str) -> String {
    if let Some(o) = by_path(path) {
        return o.name.to_owned();
    }
    let op = path.trim_start_matches('/');
    let mut c = op.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_are_unique() {
        let names: std::collections::HashSet<_> = OPERATIONS.iter().map(|o| o.name).collect();
        let paths: std::collections::HashSet<_> = OPERATIONS.iter().map(|o| o.path).collect();
        assert_eq!(names.len(), OPERATIONS.len());
        assert_eq!(paths.len(), OPERATIONS.len());
    }

    #[test]
    fn actions_and_denials() {
        assert_eq!(action_of_path("/TagResource"), "TagResource");
        assert_eq!(
            action_of_path("/v1/get-ice-server-config"),
            "GetIceServerConfig"
        );
        assert_eq!(
            action_of_path("/getHLSStreamingSessionURL"),
            "GetHLSStreamingSessionURL"
        );
        assert_eq!(action_of_path("/somethingElse"), "SomethingElse");
        assert_eq!(denial_kind("TagResource"), ErrorKind::AccessDenied);
        assert_eq!(denial_kind("tagresource"), ErrorKind::AccessDenied);
        assert_eq!(denial_kind("TagStream"), ErrorKind::NotAuthorized);
        assert_eq!(denial_kind("Unknown"), ErrorKind::NotAuthorized);
    }
}
