//! Stream notifications (AWS's UpdateNotificationConfiguration): the stored
//! configuration, its validation, the events and their webhook delivery.
//!
//! A stream's configuration (`stream_configs`, kind `notification`) names one destination.
//! AWS accepts an SNS topic ARN; streamvault stores and describes such an ARN but sends
//! nothing to it. An `http://` or `https://` URL receives a `POST` with a JSON event
//! - when a fragment whose producer metadata carries `AWS_KINESISVIDEO_NOTIFICATION` is
//!   persisted (`FRAGMENT_TAGGED`), and
//! - when image generation wrote images for a fragment (`IMAGES_GENERATED`),
//!
//! while the configuration is `ENABLED`. Every delivery is signed: header
//! `X-Streamvault-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`
//! with `notifications.webhook_secret` (webhook destinations are refused while it is
//! unset). A delivery that fails (connection error, timeout, 408, 429 or 5xx) is retried
//! with doubling back-off up to `notifications.max_attempts`; other statuses are final.
//! Delivery never slows ingest: events beyond `notifications.max_pending` are dropped.
//! Outcomes are counted in `streamvault_notifications_total{outcome}`.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use aws_lc_rs::hmac;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::clock::epoch_secs_json;
use crate::config::NotificationSettings;
use crate::error::{Error, Result};
use crate::index::{FragmentRecord, StreamRecord};
use crate::model::FragmentNumber;
use crate::streams::Catalog;

/// `stream_configs.kind` of the stored configuration.
pub const CONFIG_KIND: &str = "notification";
/// The producer metadata tag that asks for a notification.
pub const FRAGMENT_TAG: &str = "AWS_KINESISVIDEO_NOTIFICATION";
/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-streamvault-signature";
/// Header carrying the event id (the same on every attempt of one event).
pub const EVENT_ID_HEADER: &str = "x-streamvault-event-id";

/// `NotificationConfiguration`, as stored and described.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NotificationConfig {
    pub status: String,
    pub destination_config: NotificationDestination,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NotificationDestination {
    pub uri: String,
}

/// Where a destination URI sends events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// POSTed to this URL.
    Webhook(String),
    /// An SNS topic: stored and described, not delivered.
    Sns,
}

/// Classifies and checks a `DestinationConfig.Uri`: the model's length (1–255) and
/// pattern, then an `http(s)://` URL (allowed by `notifications.allowed_destinations`,
/// with a webhook secret configured) or an SNS topic ARN.
pub fn target(uri: &str, settings: &NotificationSettings) -> Result<Target> {
    static PATTERN: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r"^[a-zA-Z_0-9]+:(//)?([^/]+)/?([^*]*)$").expect("uri regex")
    });
    let bad = |why: &str| Error::invalid(format!("DestinationConfig.Uri {why}: uri={uri}"));
    if uri.is_empty() || uri.chars().count() > 255 {
        return Err(bad("must be 1 to 255 characters"));
    }
    if !PATTERN.is_match(uri) {
        return Err(bad("does not match the model's pattern"));
    }
    if uri.starts_with("http://") || uri.starts_with("https://") {
        let url = reqwest::Url::parse(uri).map_err(|e| bad(&format!("is not a URL ({e})")))?;
        if url.host_str().is_none_or(str::is_empty) || !url.username().is_empty() {
            return Err(bad("needs a host and no user information"));
        }
        if settings.webhook_secret.is_none() {
            return Err(bad(
                "is a webhook, but this server has no notifications.webhook_secret to sign deliveries",
            ));
        }
        let allowed = &settings.allowed_destinations;
        if !allowed.is_empty() && !allowed.iter().any(|p| uri.starts_with(p.as_str())) {
            return Err(bad("is not under notifications.allowed_destinations"));
        }
        return Ok(Target::Webhook(uri.to_owned()));
    }
    let parts: Vec<&str> = uri.splitn(6, ':').collect();
    if parts.len() == 6 && parts[0] == "arn" && parts[2] == "sns" {
        return Ok(Target::Sns);
    }
    Err(bad(
        "must be an SNS topic ARN or an http:// or https:// URL",
    ))
}

/// Checks a configuration as sent by UpdateNotificationConfiguration.
pub fn validate(
    status: Option<String>,
    uri: Option<String>,
    settings: &NotificationSettings,
) -> Result<NotificationConfig> {
    let status =
        status.ok_or_else(|| Error::invalid("NotificationConfiguration.Status is required"))?;
    if status != "ENABLED" && status != "DISABLED" {
        return Err(Error::invalid(format!(
            "Status must be ENABLED or DISABLED: value={status}"
        )));
    }
    let uri = uri.ok_or_else(|| Error::invalid("DestinationConfig.Uri is required"))?;
    target(&uri, settings)?;
    Ok(NotificationConfig {
        status,
        destination_config: NotificationDestination { uri },
    })
}

/// The signature header value of `body` sent at `unix_secs`.
pub fn sign(secret: &str, unix_secs: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(format!("{unix_secs}.").as_bytes());
    ctx.update(body);
    format!("t={unix_secs},v1={}", hex::encode(ctx.sign().as_ref()))
}

/// Whether the producer asked for a notification for this fragment.
pub fn wanted(f: &FragmentRecord) -> bool {
    f.metadata.iter().any(|(k, _)| k == FRAGMENT_TAG)
}

/// Sends events; cheap to clone.
#[derive(Debug, Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    catalog: Catalog,
    settings: NotificationSettings,
    client: reqwest::Client,
    pending: Arc<Semaphore>,
    stop: CancellationToken,
}

enum Outcome {
    Delivered,
    Failed,
    Abandoned,
}

impl Notifier {
    /// A notifier whose retries end at `stop`.
    pub fn new(catalog: Catalog, settings: NotificationSettings, stop: CancellationToken) -> Self {
        let pending = Arc::new(Semaphore::new(settings.max_pending));
        Self {
            inner: Arc::new(Inner {
                catalog,
                settings,
                client: reqwest::Client::new(),
                pending,
                stop,
            }),
        }
    }

    fn base_event(&self, kind: &str, stream: &StreamRecord, f: &FragmentRecord) -> Value {
        json!({
            "Version": 1,
            "EventId": uuid::Uuid::new_v4().to_string(),
            "EventType": kind,
            "EventTime": epoch_secs_json(self.inner.catalog.clock().now_ms()),
            "StreamName": stream.name.as_str(),
            "StreamARN": self.inner.catalog.arn(stream),
            "FragmentNumber": FragmentNumber::new(stream.creation_ms, f.seq).to_string(),
            "ProducerTimestamp": epoch_secs_json(f.producer_ts_ms),
            "ServerTimestamp": epoch_secs_json(f.server_ts_ms),
            "FragmentLengthInMilliseconds": f.duration_ms,
        })
    }

    /// Follows the "fragment persisted" events (`ingest::persisted`) until `stop`: each
    /// fragment tagged `AWS_KINESISVIDEO_NOTIFICATION` gets its `FRAGMENT_TAGGED` event.
    /// Never slows ingest (a full delivery queue drops the event with a warning).
    pub fn follow(
        &self,
        events: &crate::ingest::persisted::PersistedEvents,
        stop: CancellationToken,
    ) {
        let this = self.clone();
        events.follow("notifications", stop, move |ev| {
            if wanted(&ev.fragment) {
                this.fragment_persisted(&ev.stream, &ev.fragment);
            }
        });
    }

    /// A tagged fragment was persisted (call only when [`wanted`]).
    pub fn fragment_persisted(&self, stream: &StreamRecord, f: &FragmentRecord) {
        let mut event = self.base_event("FRAGMENT_TAGGED", stream, f);
        let tags: serde_json::Map<String, Value> = f
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        event["Tags"] = Value::Object(tags);
        self.submit(stream, event);
    }

    /// Image generation wrote images for `f`; `images` is its per-instant list.
    pub fn images_generated(
        &self,
        stream: &StreamRecord,
        f: &FragmentRecord,
        format: &str,
        images: &[Value],
    ) {
        let mut event = self.base_event("IMAGES_GENERATED", stream, f);
        event["Format"] = json!(format);
        event["Images"] = json!(images);
        self.submit(stream, event);
    }

    /// Queues delivery of `event` per the stream's configuration at delivery time.
    fn submit(&self, stream: &StreamRecord, event: Value) {
        let Ok(permit) = self.inner.pending.clone().try_acquire_owned() else {
            metrics::counter!(crate::metrics::NOTIFICATIONS, "outcome" => "dropped").increment(1);
            tracing::warn!(stream = %stream.name, "notification dropped: notifications.max_pending reached");
            return;
        };
        let this = self.clone();
        let stream = stream.clone();
        tokio::spawn(async move {
            metrics::gauge!(crate::metrics::NOTIFICATIONS_PENDING).increment(1.0);
            let outcome = this.dispatch(&stream, &event).await;
            metrics::gauge!(crate::metrics::NOTIFICATIONS_PENDING).decrement(1.0);
            if let Some(label) = outcome {
                metrics::counter!(crate::metrics::NOTIFICATIONS, "outcome" => label).increment(1);
            }
            drop(permit);
        });
    }

    /// Loads the configuration and delivers; the metric label of the outcome (`None`:
    /// no enabled configuration, nothing to count).
    async fn dispatch(&self, stream: &StreamRecord, event: &Value) -> Option<&'static str> {
        let stored = self
            .inner
            .catalog
            .index()
            .get_stream_config(&stream.stream_id, CONFIG_KIND)
            .await;
        let cfg: NotificationConfig = match stored {
            Ok(Some(body)) => serde_json::from_str(&body).ok()?,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(stream = %stream.name, error = %e, "notification configuration unreadable");
                return Some("failed");
            }
        };
        if cfg.status != "ENABLED" {
            return None;
        }
        match target(&cfg.destination_config.uri, &self.inner.settings) {
            Ok(Target::Sns) => Some("sns_not_delivered"),
            Ok(Target::Webhook(url)) => Some(match self.deliver(stream, &url, event).await {
                Outcome::Delivered => "delivered",
                Outcome::Failed => "failed",
                Outcome::Abandoned => "abandoned",
            }),
            Err(e) => {
                // Settings changed since the configuration was stored (secret removed,
                // destination no longer allowed).
                tracing::warn!(stream = %stream.name, error = %e.message, "notification destination no longer accepted");
                Some("failed")
            }
        }
    }

    async fn deliver(&self, stream: &StreamRecord, url: &str, event: &Value) -> Outcome {
        let s = &self.inner.settings;
        let Some(secret) = &s.webhook_secret else {
            return Outcome::Failed;
        };
        let body = event.to_string();
        let id = event["EventId"].as_str().unwrap_or_default().to_owned();
        for attempt in 1..=s.max_attempts {
            if attempt > 1 {
                metrics::counter!(crate::metrics::NOTIFICATION_RETRIES).increment(1);
                tokio::select! {
                    _ = self.inner.stop.cancelled() => return Outcome::Abandoned,
                    _ = tokio::time::sleep(backoff(s, attempt - 1)) => {}
                }
            }
            let now = self.inner.catalog.clock().now_ms().div_euclid(1000);
            let resp = self
                .inner
                .client
                .post(url)
                .header("content-type", "application/json")
                .header(SIGNATURE_HEADER, sign(&secret.0, now, body.as_bytes()))
                .header(EVENT_ID_HEADER, &id)
                .header("x-streamvault-delivery-attempt", attempt.to_string())
                .timeout(s.timeout)
                .body(body.clone())
                .send()
                .await;
            let retry = match resp {
                Ok(r) if r.status().is_success() => return Outcome::Delivered,
                Ok(r) => {
                    let st = r.status().as_u16();
                    tracing::info!(stream = %stream.name, %url, status = st, attempt, "notification refused");
                    st == 408 || st == 429 || st >= 500
                }
                Err(e) => {
                    tracing::info!(stream = %stream.name, %url, error = %e, attempt, "notification delivery failed");
                    true
                }
            };
            if !retry {
                break;
            }
        }
        tracing::warn!(stream = %stream.name, %url, event_id = %id, "notification not delivered; giving up");
        Outcome::Failed
    }
}

/// The wait before retry `n` (1-based): `initial_backoff × 2^(n-1)`, at most `max_backoff`.
pub fn backoff(settings: &NotificationSettings, retry: u32) -> Duration {
    let factor = 2u32.saturating_pow(retry.saturating_sub(1));
    settings
        .initial_backoff
        .saturating_mul(factor)
        .min(settings.max_backoff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn with_secret() -> NotificationSettings {
        NotificationSettings {
            webhook_secret: Some(Secret("0123456789abcdef".into())),
            ..NotificationSettings::default()
        }
    }

    #[test]
    fn destinations() {
        let s = with_secret();
        assert_eq!(
            target("https://hooks.example.com/kvs", &s).unwrap(),
            Target::Webhook("https://hooks.example.com/kvs".into())
        );
        assert_eq!(
            target("arn:aws:sns:us-east-1:123456789012:topic", &s).unwrap(),
            Target::Sns
        );
        for bad in [
            "",
            "ftp://x/y",
            "https://user:pw@example.com/",
            "https://example.com/a*b",
            "not a uri",
            &format!("https://example.com/{}", "a".repeat(250)),
        ] {
            assert!(target(bad, &s).is_err(), "{bad}");
        }
        // No secret: webhooks are refused, SNS is still stored.
        let none = NotificationSettings::default();
        assert!(target("http://127.0.0.1:9/x", &none).is_err());
        assert!(target("arn:aws:sns:us-east-1:1:t", &none).is_ok());
        let only = NotificationSettings {
            allowed_destinations: vec!["https://hooks.example.com/".into()],
            ..with_secret()
        };
        assert!(target("https://hooks.example.com/a", &only).is_ok());
        assert!(target("https://hooks.example.com.evil/a", &only).is_err());
        assert!(target("http://169.254.169.254/latest", &only).is_err());
    }

    #[test]
    fn signatures_are_hmac_sha256_over_time_and_body() {
        let sig = sign("key", 1_700_000_000, b"{}");
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"key");
        let want = hex::encode(hmac::sign(&key, b"1700000000.{}").as_ref());
        assert_eq!(sig, format!("t=1700000000,v1={want}"));
        assert_ne!(sig, sign("key", 1_700_000_001, b"{}"));
    }

    #[test]
    fn back_off_doubles_up_to_the_cap() {
        let s = NotificationSettings::default();
        assert_eq!(backoff(&s, 1), Duration::from_secs(1));
        assert_eq!(backoff(&s, 3), Duration::from_secs(4));
        assert_eq!(backoff(&s, 40), Duration::from_secs(60));
    }
}
