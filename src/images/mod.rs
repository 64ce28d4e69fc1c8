//! Still images out of stored video: GetImages and image generation.
//!
//! - [`convert`]: output size rules, resizing, JPEG/PNG encoding;
//! - [`decode`]: H.264 (OpenH264) and, with the `hevc` feature, H.265 (libavcodec)
//!   decoders behind one trait, and a pool of idle decoders;
//! - `libav` (feature `hevc`): the libavcodec decoder, for H.265 and the H.264 profiles
//!   OpenH264 cannot decode;
//! - [`sps`]: the decoded-size cap and the H.264 sample format, checked on the SPS before
//!   a decoder sees a frame;
//! - [`render`]: which frame an instant shows and decoding just far enough for it;
//! - [`ImageService`]: instants → covering fragments → pictures, with the CPU work on
//!   the blocking pool and at most `images.max_concurrent_decodes` fragments decoding at
//!   once (server-wide);
//! - [`generation`]: per-stream image generation to a sink (UpdateImageGenerationConfiguration).

pub mod convert;
pub mod decode;
pub mod generation;
#[cfg(feature = "hevc")]
pub mod libav;
pub mod render;
pub mod sps;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::config::Settings;
use crate::error::{Error, Result};
use crate::index::{FragmentRecord, StreamRecord, TimestampKind};
use crate::media::demux::FragmentLoader;
use crate::streams::Catalog;
pub use convert::{Format, OutputSpec};
use decode::DecoderPool;
use render::VideoFrame;

/// Parses `Format`, `FormatConfig`, `WidthPixels` and `HeightPixels` (GetImages and
/// image generation share the rules): `FormatConfig` holds at most the key `JPEGQuality`
/// with a string value `"1"`–`"100"` (default 80; ignored for PNG); widths 1–3840,
/// heights 1–2160; one of the two alone keeps the source's aspect ratio.
pub fn output_spec(
    format: &str,
    format_config: Option<&BTreeMap<String, String>>,
    width: Option<i64>,
    height: Option<i64>,
) -> Result<OutputSpec> {
    let format = Format::parse(format)
        .ok_or_else(|| Error::invalid(format!("Format must be JPEG or PNG: value={format}")))?;
    let mut quality = 80u8;
    if let Some(cfg) = format_config {
        if cfg.len() > 1 {
            return Err(Error::invalid("FormatConfig takes one entry, JPEGQuality"));
        }
        for (k, v) in cfg {
            if k != "JPEGQuality" {
                return Err(Error::invalid(format!(
                    "FormatConfig key must be JPEGQuality: key={k}"
                )));
            }
            quality = v
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|q| (1..=100).contains(q))
                .ok_or_else(|| {
                    Error::invalid(format!("JPEGQuality must be \"1\" to \"100\": value={v}"))
                })?;
        }
    }
    let dim = |v: Option<i64>, name: &str, max: i64| -> Result<Option<u32>> {
        match v {
            None => Ok(None),
            Some(n) if (1..=max).contains(&n) => Ok(Some(n as u32)),
            Some(n) => Err(Error::invalid(format!(
                "{name} must be between 1 and {max}: value={n}"
            ))),
        }
    };
    Ok(OutputSpec {
        format,
        quality,
        width: dim(width, "WidthPixels", 3840)?,
        height: dim(height, "HeightPixels", 2160)?,
    })
}

/// What one sampling instant yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Image(Bytes),
    /// No fragment covers the instant.
    NoMedia,
    /// A fragment covers it but no picture could be made (unreadable fragment, no video
    /// track, unsupported codec, decoding failure).
    MediaError,
}

/// Shared image machinery of one server.
#[derive(Debug, Clone)]
pub struct ImageService {
    permits: Arc<Semaphore>,
    pool: Arc<DecoderPool>,
    /// How far before an instant a covering fragment may start.
    max_fragment_ms: i64,
}

impl ImageService {
    pub fn new(settings: &Settings) -> Self {
        let n = match settings.images.max_concurrent_decodes {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        Self {
            permits: Arc::new(Semaphore::new(n)),
            pool: Arc::new(DecoderPool::new(n * 2)),
            max_fragment_ms: settings.ingest.max_fragment_duration.as_millis() as i64,
        }
    }

    /// The fragment each instant falls in: the one whose `[start, start + length)`
    /// contains it (start = the `kind` timestamp); among overlapping ones the latest
    /// start, then the newest fragment number.
    pub async fn covering(
        &self,
        catalog: &Catalog,
        stream: &StreamRecord,
        kind: TimestampKind,
        instants: &[i64],
    ) -> Result<Vec<Option<FragmentRecord>>> {
        let (Some(lo), Some(hi)) = (instants.iter().min(), instants.iter().max()) else {
            return Ok(Vec::new());
        };
        let ts = |f: &FragmentRecord| match kind {
            TimestampKind::Producer => f.producer_ts_ms,
            TimestampKind::Server => f.server_ts_ms,
        };
        let mut rows = Vec::new();
        let mut after = None;
        loop {
            let page = catalog
                .index()
                .fragments_in_range(
                    &stream.stream_id,
                    kind,
                    lo.saturating_sub(self.max_fragment_ms),
                    *hi,
                    after,
                    1000,
                )
                .await?;
            let done = page.len() < 1000;
            after = page.last().map(|f| (ts(f), f.seq));
            rows.extend(page);
            if done {
                break;
            }
        }
        Ok(instants
            .iter()
            .map(|&t| {
                rows.iter()
                    .filter(|f| ts(f) <= t && t < ts(f).saturating_add(f.duration_ms.max(1)))
                    .max_by_key(|f| (ts(f), f.seq))
                    .cloned()
            })
            .collect())
    }

    /// One outcome per instant (epoch ms of the `kind` timestamp).
    pub async fn render(
        &self,
        catalog: &Catalog,
        stream: &StreamRecord,
        kind: TimestampKind,
        instants: &[i64],
        spec: OutputSpec,
    ) -> Result<Vec<Outcome>> {
        let covering = self.covering(catalog, stream, kind, instants).await?;
        let mut out = vec![Outcome::NoMedia; instants.len()];
        // Fragment seq → (row, [(slot, producer-time target)]).
        let mut groups: BTreeMap<u64, (FragmentRecord, Vec<(usize, i64)>)> = BTreeMap::new();
        for (slot, (t, row)) in instants.iter().zip(covering).enumerate() {
            let Some(row) = row else { continue };
            let target = match kind {
                TimestampKind::Producer => *t,
                TimestampKind::Server => row
                    .producer_ts_ms
                    .saturating_add(t.saturating_sub(row.server_ts_ms)),
            };
            groups
                .entry(row.seq)
                .or_insert_with(|| (row, Vec::new()))
                .1
                .push((slot, target));
        }
        if groups.is_empty() {
            return Ok(out);
        }
        let mut loader = FragmentLoader::new(catalog.clone(), stream.clone())?;
        let mut tasks = Vec::new();
        for (_, (row, wants)) in groups {
            let permit = self
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Error::internal("image decoder semaphore closed"))?;
            let loaded = loader.load(&row).await;
            let pool = self.pool.clone();
            let stream_name = stream.name.to_string();
            let seq = row.seq;
            let task_slots: Vec<usize> = wants.iter().map(|w| w.0).collect();
            let task = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let slots: Vec<usize> = wants.iter().map(|w| w.0).collect();
                let results = match loaded {
                    Ok(f) => render_loaded(&pool, &f, &wants, &spec),
                    Err(e) => vec![Err(e.message); wants.len()],
                };
                slots
                    .into_iter()
                    .zip(results)
                    .map(|(slot, r)| match r {
                        Ok(b) => (slot, Outcome::Image(b)),
                        Err(why) => {
                            tracing::warn!(stream = %stream_name, fragment_seq = row.seq, error = %why, "no image for an instant");
                            (slot, Outcome::MediaError)
                        }
                    })
                    .collect::<Vec<_>>()
            });
            tasks.push((seq, task_slots, task));
        }
        for (seq, slots, t) in tasks {
            match t.await {
                Ok(done) => {
                    for (slot, o) in done {
                        out[slot] = o;
                    }
                }
                // A decoder that panics on one fragment fails that fragment's instants.
                Err(e) => {
                    metrics::counter!(crate::metrics::IMAGE_PANICS, "stage" => "decode")
                        .increment(1);
                    tracing::error!(stream = %stream.name, fragment_seq = seq, error = %e, "image decoding panicked");
                    for slot in slots {
                        out[slot] = Outcome::MediaError;
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Renders the wanted instants of a loaded fragment (blocking, CPU-heavy).
fn render_loaded(
    pool: &DecoderPool,
    f: &crate::media::demux::LoadedFragment,
    wants: &[(usize, i64)],
    spec: &OutputSpec,
) -> Vec<Result<Bytes, String>> {
    let Some(track) = f.session.track_of_type(1) else {
        return vec![Err("the fragment has no video track".into()); wants.len()];
    };
    if !decode::supported(&track.codec_id) {
        return vec![Err(format!("no decoder for codec {}", track.codec_id)); wants.len()];
    }
    let frames: Vec<VideoFrame> = f
        .frames
        .iter()
        .filter(|fr| fr.track == track.number)
        .map(|fr| VideoFrame {
            ms: f.frame_producer_ms(fr),
            keyframe: fr.keyframe,
            data: fr.data.clone(),
        })
        .collect();
    let instants: Vec<i64> = wants.iter().map(|w| w.1).collect();
    let cp = track.codec_private.clone().unwrap_or_default();
    render::render_fragment(pool, &track.codec_id, &cp, &frames, &instants, spec)
}
