//! Prometheus metrics. One process-wide recorder (the `metrics` facade is global), a
//! handle to render it at `GET /metrics`, and the metric names used across modules.
//! Labels never carry credentials or stream data, only operation names, statuses and
//! error ids.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Requests by operation and status.
pub const REQUESTS: &str = "streamvault_requests_total";
/// Time to response headers, seconds, by operation.
pub const REQUEST_SECONDS: &str = "streamvault_request_duration_seconds";

/// Notification events by outcome: `delivered`, `failed` (attempts exhausted or refused),
/// `dropped` (`notifications.max_pending` reached), `abandoned` (server shutdown),
/// `sns_not_delivered` (SNS destination: stored, never sent).
pub const NOTIFICATIONS: &str = "streamvault_notifications_total";
/// Webhook delivery attempts after the first of an event.
pub const NOTIFICATION_RETRIES: &str = "streamvault_notification_retries_total";
/// Notification events being delivered or waiting for a retry.
pub const NOTIFICATIONS_PENDING: &str = "streamvault_notifications_pending";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder on first use and returns the shared handle.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (e.g. by an embedding program);
            // then our handle renders an empty registry, which is harmless.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// PutMedia bytes received.
pub const INGEST_BYTES: &str = "streamvault_ingest_bytes_total";
/// Fragments persisted (PERSISTED sent, or stored for retention-0 streams: never).
pub const INGEST_FRAGMENTS: &str = "streamvault_ingest_fragments_persisted_total";
/// Re-sent fragments recognised as already stored (idempotent re-upload).
pub const INGEST_DUPLICATES: &str = "streamvault_ingest_fragments_deduplicated_total";
/// ERROR acks by ErrorId.
pub const INGEST_ERRORS: &str = "streamvault_ingest_errors_total";
/// Open PutMedia sessions.
pub const INGEST_SESSIONS: &str = "streamvault_ingest_sessions";
/// PutMedia sessions ended because a newer connection for the same stream arrived.
pub const INGEST_SESSIONS_SUPERSEDED: &str = "streamvault_ingest_sessions_superseded_total";
/// Seconds from BUFFERING to PERSISTED.
pub const ACK_BUFFERING_TO_PERSISTED: &str = "streamvault_ack_buffering_to_persisted_seconds";
/// Seconds from fragment close (RECEIVED) to PERSISTED.
pub const ACK_CLOSE_TO_PERSISTED: &str = "streamvault_ack_close_to_persisted_seconds";
/// Fragments per group commit (one durable write and one index transaction each).
pub const COMMIT_BATCH_FRAGMENTS: &str = "streamvault_commit_batch_fragments";
/// Seconds a group commit spent making its batch's bytes durable (segment appends and
/// `fdatasync`, or the PUT).
pub const COMMIT_WRITE_SECONDS: &str = "streamvault_commit_write_seconds";
/// Seconds a group commit spent in its index transaction.
pub const COMMIT_INDEX_SECONDS: &str = "streamvault_commit_index_seconds";
/// Bytes per group commit.
pub const COMMIT_BATCH_BYTES: &str = "streamvault_commit_batch_bytes";
/// Acks dropped because the client did not read them.
pub const ACKS_DROPPED: &str = "streamvault_ingest_acks_dropped_total";
/// GetImages instants answered, by outcome (`image`, `no_media`, `media_error`).
pub const IMAGES_SERVED: &str = "streamvault_images_total";
/// Image generation: instants processed for tagged fragments.
pub const IMAGES_GENERATED: &str = "streamvault_images_generated_total";
/// Image work that panicked and was contained (the job or the instants failed, the
/// worker and the request went on), by `stage` (`generation_job`, `decode`).
pub const IMAGE_PANICS: &str = "streamvault_image_panics_total";
/// Cluster leases this node lost (a renewal or a fenced commit found another epoch).
pub const CLUSTER_LEASES_LOST: &str = "streamvault_cluster_leases_lost_total";
/// Nodes whose expired lease this node took over.
pub const CLUSTER_TAKEOVERS: &str = "streamvault_cluster_takeovers_total";
/// Fragments refused by the commit fence (the lease or the stream's ownership is gone).
pub const CLUSTER_FENCED_FRAGMENTS: &str = "streamvault_cluster_fenced_fragments_total";
/// Requests this node forwarded to the stream's owner, by `path` (`/putMedia`, `/getMedia`).
pub const CLUSTER_FORWARDED: &str = "streamvault_cluster_forwarded_total";
