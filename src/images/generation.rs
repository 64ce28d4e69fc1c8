//! Image generation to a sink (AWS's UpdateImageGenerationConfiguration): when a stream's
//! configuration is `ENABLED`, every persisted fragment whose producer metadata carries
//! the tag `AWS_KINESISVIDEO_IMAGE_GENERATION` gets one image per sampling instant of its
//! time range, written to the configured destination, followed by one webhook
//! notification for the batch when `images.webhook_url` is set, and an `IMAGES_GENERATED`
//! event to the stream's notification destination (`notify`) when images were written.
//!
//! Destinations (`DestinationConfig.Uri`):
//! - `s3://<bucket>/<prefix>`: the server's own object store (the one holding the
//!   fragments), key `<prefix>/<stream id>/<epoch ms>.<jpg|png>.sv`, sealed with the
//!   stream's data key like a fragment (`store::FragmentStore::put_image`). The bucket part is
//!   not used (the server has one store); the prefix must not be empty nor start with
//!   `streams` (where fragments live).
//! - `file://<dir>/<prefix>`: a local directory,
//!   `<images.local_dir>/<dir>/<prefix>/<stream name>/<epoch ms>.<jpg|png>`, not
//!   encrypted (streams named `.` and `..` get `%2E` and `%2E%2E`).
//!
//! The configuration is stored in the index (`stream_configs`, kind `image_generation`)
//! and goes away with the stream. The generator subscribes to ingest's "fragment
//! persisted" events (published after each PERSISTED ack, `ingest::persisted`) and never
//! slows ingest: when its queue is full the fragment is skipped with a warning.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ImageService, Outcome, OutputSpec};
use crate::clock::epoch_secs_json;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::index::{FragmentRecord, StreamRecord, TimestampKind};
use crate::ingest::persisted::PersistedEvents;
use crate::model::FragmentNumber;
use crate::streams::Catalog;

/// The producer metadata tag that asks for images.
pub const TAG: &str = "AWS_KINESISVIDEO_IMAGE_GENERATION";
/// `stream_configs.kind` of the stored configuration.
pub const CONFIG_KIND: &str = "image_generation";
/// Queue length between the event subscription and the generator.
const QUEUE: usize = 256;
/// Most images generated for one fragment.
const MAX_IMAGES_PER_FRAGMENT: usize = 1000;

/// `ImageGenerationConfiguration`, as stored and as DescribeImageGenerationConfiguration
/// returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GenerationConfig {
    pub status: String,
    pub image_selector_type: String,
    pub destination_config: DestinationConfig,
    pub sampling_interval: i64,
    pub format: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub format_config: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub width_pixels: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub height_pixels: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DestinationConfig {
    pub uri: String,
    pub destination_region: String,
}

/// Where images go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Object store key prefix.
    Store(String),
    /// Local directory (already joined onto `images.local_dir`).
    Dir(PathBuf),
}

/// Parses a destination URI (see the module docs).
pub fn destination(uri: &str, settings: &Settings) -> Result<Destination> {
    let bad = |why: &str| Error::invalid(format!("DestinationConfig.Uri {why}: uri={uri}"));
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| bad("must be scheme://host/prefix"))?;
    let (host, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_matches('/');
    if host.is_empty() {
        return Err(bad("names no bucket or directory"));
    }
    let parts: Vec<&str> = prefix.split('/').filter(|p| !p.is_empty()).collect();
    if parts
        .iter()
        .chain(std::iter::once(&host))
        .any(|p| *p == "." || *p == ".." || p.contains('\\') || p.contains('*'))
    {
        return Err(bad("has a forbidden path component"));
    }
    match scheme {
        "s3" => {
            if parts.is_empty() || parts[0] == "streams" || parts[0] == "segments" {
                return Err(bad(
                    "needs a key prefix after the bucket that does not start with `streams` or `segments`",
                ));
            }
            Ok(Destination::Store(parts.join("/")))
        }
        "file" => {
            let mut p = settings.images_local_dir().join(host);
            for part in parts {
                p.push(part);
            }
            Ok(Destination::Dir(p))
        }
        _ => Err(bad("must use s3:// or file://")),
    }
}

/// The selector type of a configuration.
pub fn selector_kind(s: &str) -> Option<TimestampKind> {
    match s {
        "PRODUCER_TIMESTAMP" => Some(TimestampKind::Producer),
        "SERVER_TIMESTAMP" => Some(TimestampKind::Server),
        _ => None,
    }
}

/// A persisted, tagged fragment waiting for images.
#[derive(Debug, Clone)]
pub struct Job {
    pub stream: StreamRecord,
    pub fragment: FragmentRecord,
}

impl Job {
    /// Whether the producer asked for images for this fragment.
    pub fn wanted(f: &FragmentRecord) -> bool {
        f.metadata.iter().any(|(k, _)| k == TAG)
    }
}

/// The generator task: consumes jobs until `stop`.
#[derive(Debug, Clone)]
pub struct Generator {
    pub catalog: Catalog,
    pub images: ImageService,
    pub settings: Arc<Settings>,
    /// Sends `IMAGES_GENERATED` to the stream's notification destination.
    pub notifier: crate::notify::Notifier,
}

impl Generator {
    /// Starts the task, fed by the "fragment persisted" events (`ingest::persisted`).
    /// Never slows ingest: a full queue skips the fragment with a warning.
    pub fn spawn(self, events: &PersistedEvents, stop: CancellationToken) {
        let (tx, rx) = mpsc::channel::<Job>(QUEUE);
        events.follow("image generation", stop.clone(), move |ev| {
            if !Job::wanted(&ev.fragment) {
                return;
            }
            let job = Job {
                stream: ev.stream.clone(),
                fragment: ev.fragment.clone(),
            };
            if tx.try_send(job).is_err() {
                tracing::warn!(stream = %ev.stream.name, fragment_seq = ev.fragment.seq, "image generation queue full; fragment skipped");
            }
        });
        let client = reqwest::Client::new();
        let this = Arc::new(self);
        run_isolated(
            rx,
            stop,
            |job: &Job| (job.stream.name.to_string(), job.fragment.seq),
            move |job: Job| {
                let (this, client) = (this.clone(), client.clone());
                async move {
                    if let Err(e) = this.handle(&client, &job).await {
                        tracing::warn!(stream = %job.stream.name, fragment_seq = job.fragment.seq, error = %e, "image generation failed");
                    }
                }
            },
        );
    }

    async fn handle(&self, client: &reqwest::Client, job: &Job) -> Result<()> {
        let Some(body) = self
            .catalog
            .index()
            .get_stream_config(&job.stream.stream_id, CONFIG_KIND)
            .await?
        else {
            return Ok(());
        };
        let cfg: GenerationConfig = serde_json::from_str(&body)
            .map_err(|e| Error::internal(format!("stored image generation config: {e}")))?;
        if cfg.status != "ENABLED" {
            return Ok(());
        }
        let kind = selector_kind(&cfg.image_selector_type)
            .ok_or_else(|| Error::internal("stored ImageSelectorType invalid"))?;
        let spec = super::output_spec(
            &cfg.format,
            cfg.format_config.as_ref(),
            cfg.width_pixels,
            cfg.height_pixels,
        )?;
        let dest = destination(&cfg.destination_config.uri, &self.settings)?;
        let f = &job.fragment;
        let start = match kind {
            TimestampKind::Producer => f.producer_ts_ms,
            TimestampKind::Server => f.server_ts_ms,
        };
        let instants = sampling_instants(start, f.duration_ms, cfg.sampling_interval);
        let outcomes = self
            .images
            .render(&self.catalog, &job.stream, kind, &instants, spec)
            .await?;
        let mut listed = Vec::new();
        for (t, o) in instants.iter().zip(outcomes) {
            let entry = match o {
                Outcome::Image(bytes) => {
                    match self.write(&dest, &job.stream, *t, spec, bytes).await {
                        Ok(uri) => json!({"TimeStamp": epoch_secs_json(*t), "ImageUri": uri}),
                        Err(e) => {
                            tracing::warn!(stream = %job.stream.name, error = %e, "image not written");
                            json!({"TimeStamp": epoch_secs_json(*t), "Error": "WRITE_ERROR"})
                        }
                    }
                }
                Outcome::NoMedia => json!({"TimeStamp": epoch_secs_json(*t), "Error": "NO_MEDIA"}),
                Outcome::MediaError => {
                    json!({"TimeStamp": epoch_secs_json(*t), "Error": "MEDIA_ERROR"})
                }
            };
            listed.push(entry);
        }
        metrics::counter!(crate::metrics::IMAGES_GENERATED).increment(listed.len() as u64);
        if listed.iter().any(|e| e.get("ImageUri").is_some()) {
            self.notifier
                .images_generated(&job.stream, f, &cfg.format, &listed);
        }
        if let Some(url) = &self.settings.images.webhook_url {
            let note = json!({
                "StreamName": job.stream.name.as_str(),
                "StreamARN": self.catalog.arn(&job.stream),
                "FragmentNumber": FragmentNumber::new(job.stream.creation_ms, f.seq).to_string(),
                "ImageSelectorType": cfg.image_selector_type,
                "Format": cfg.format,
                "Images": listed,
            });
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(note.to_string())
                .timeout(std::time::Duration::from_secs(10))
                .send()
                .await;
            match r {
                Ok(resp) if resp.status().is_success() => {}
                Ok(resp) => {
                    tracing::warn!(url = %url, status = %resp.status(), "image webhook refused the notification")
                }
                Err(e) => tracing::warn!(url = %url, error = %e, "image webhook unreachable"),
            }
        }
        Ok(())
    }

    /// Writes one image; returns where it went (`s3://…`-style store key or `file://` path).
    async fn write(
        &self,
        dest: &Destination,
        stream: &StreamRecord,
        ts_ms: i64,
        spec: OutputSpec,
        bytes: bytes::Bytes,
    ) -> Result<String> {
        let name = format!("{ts_ms}.{}", spec.format.extension());
        match dest {
            Destination::Store(prefix) => {
                let dek = self.catalog.data_key(stream)?;
                let store = self.catalog.store();
                let key = store.put_image(&dek, prefix, &name, &bytes).await?;
                Ok(format!("store:///{key}"))
            }
            Destination::Dir(dir) => {
                let dir =
                    dir.join(crate::store::keys::name_component(stream.name.as_str()).as_ref());
                let path = dir.join(&name);
                let tmp = dir.join(format!(".{name}.tmp"));
                let io = |e: std::io::Error| Error::internal(format!("{}: {e}", path.display()));
                tokio::fs::create_dir_all(&dir).await.map_err(io)?;
                tokio::fs::write(&tmp, &bytes).await.map_err(io)?;
                tokio::fs::rename(&tmp, &path).await.map_err(io)?;
                Ok(format!("file://{}", path.display()))
            }
        }
    }
}

/// The instants `start + i × interval` inside a fragment's `[start, start + duration)`
/// (at least `start`), at most [`MAX_IMAGES_PER_FRAGMENT`]. Checked: a stored interval or
/// time near the i64 limits ends the list instead of overflowing.
fn sampling_instants(start: i64, duration_ms: i64, interval_ms: i64) -> Vec<i64> {
    let step = interval_ms.max(1);
    let end = start.saturating_add(duration_ms.max(1));
    (0..MAX_IMAGES_PER_FRAGMENT as i64)
        .map_while(|i| i.checked_mul(step).and_then(|d| start.checked_add(d)))
        .take_while(|t| *t < end)
        .collect()
}

/// The worker loop: takes jobs until `stop` or the queue closes, each on its own task, so
/// a panic while handling one (whatever its fragment contains) fails that job only: it is
/// logged with its stream and fragment (`label`), counted in
/// [`crate::metrics::IMAGE_PANICS`], and the next job runs.
fn run_isolated<T, F, Fut>(
    mut rx: mpsc::Receiver<T>,
    stop: CancellationToken,
    label: impl Fn(&T) -> (String, u64) + Send + 'static,
    work: F,
) -> tokio::task::JoinHandle<()>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let job = tokio::select! {
                j = rx.recv() => j,
                _ = stop.cancelled() => None,
            };
            let Some(job) = job else { break };
            let (stream, fragment_seq) = label(&job);
            if let Err(e) = tokio::spawn(work(job)).await {
                metrics::counter!(crate::metrics::IMAGE_PANICS, "stage" => "generation_job")
                    .increment(1);
                tracing::error!(stream = %stream, fragment_seq, error = %e, "image generation job panicked; going on with the next");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_instants_are_checked_near_the_limits() {
        assert_eq!(sampling_instants(1000, 1000, 400), vec![1000, 1400, 1800]);
        // The old `start + i * step` overflowed at i = 1 (and `start + duration` too).
        assert_eq!(sampling_instants(1000, 1000, i64::MAX), vec![1000]);
        assert_eq!(
            sampling_instants(i64::MAX - 10, i64::MAX, 200),
            vec![i64::MAX - 10]
        );
        assert_eq!(sampling_instants(i64::MIN, 1, i64::MAX), vec![i64::MIN]);
        assert_eq!(
            sampling_instants(0, i64::MAX, 1).len(),
            MAX_IMAGES_PER_FRAGMENT
        );
    }

    #[tokio::test]
    async fn a_panicking_job_does_not_stop_the_worker() {
        let (tx, rx) = mpsc::channel::<(&'static str, u64)>(4);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let worker = run_isolated(
            rx,
            CancellationToken::new(),
            |j: &(&str, u64)| (j.0.to_owned(), j.1),
            move |(stream, seq): (&'static str, u64)| {
                let done = done_tx.clone();
                async move {
                    assert!(stream != "hostile", "decoder blew up on seq {seq}");
                    done.send((stream, seq)).unwrap();
                }
            },
        );
        tx.send(("hostile", 1)).await.unwrap();
        tx.send(("good", 7)).await.unwrap();
        drop(tx);
        worker.await.unwrap();
        assert_eq!(done_rx.recv().await, Some(("good", 7)));
    }

    #[test]
    fn destinations() {
        let s = Settings {
            data_dir: "/d".into(),
            ..Settings::default()
        };
        assert_eq!(
            destination("s3://bucket/kvs/images", &s).unwrap(),
            Destination::Store("kvs/images".into())
        );
        assert_eq!(
            destination("file://out/x/", &s).unwrap(),
            Destination::Dir("/d/images/out/x".into())
        );
        for bad in [
            "s3://bucket",
            "s3://bucket/streams/x",
            "file://../x",
            "file://a/../../x",
            "http://x/y",
            "nothing",
        ] {
            assert!(destination(bad, &s).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_tagged_fragments_are_wanted() {
        let mut f = FragmentRecord {
            stream_id: String::new(),
            seq: 1,
            session_id: 0,
            producer_ts_ms: 0,
            server_ts_ms: 0,
            duration_ms: 1000,
            producer_timecode: 0,
            size: 0,
            object_key: String::new(),
            object_size: 0,
            content_hash: String::new(),
            object_offset: None,
            metadata: vec![("x".into(), "y".into())],
        };
        assert!(!Job::wanted(&f));
        f.metadata.push((TAG.into(), "1".into()));
        assert!(Job::wanted(&f));
    }
}
