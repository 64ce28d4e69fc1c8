//! `streamvault images`: frames for ML pipelines. Calls GetImages over a time range
//! (split into windows the server accepts, each followed through its pages) and writes
//! numbered image files plus `index.json` (timestamp → file, or the error of instants
//! without an image) into a directory.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use super::consume::{Endpoint, parse_time, post};
use crate::clock::format_epoch_secs;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ImageFormat {
    Jpeg,
    Png,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Selector {
    Producer,
    Server,
}

#[derive(Args, Debug)]
pub struct ImagesArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// Stream name.
    #[arg(long)]
    stream: String,
    /// Range start (RFC 3339 or epoch seconds), inclusive.
    #[arg(long)]
    from: String,
    /// Range end (RFC 3339 or epoch seconds), exclusive.
    #[arg(long)]
    to: String,
    /// Sampling interval, e.g. `1s`, `500ms` (server minimum: 200ms by default).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    every: Duration,
    /// Output width in pixels (the height follows the aspect ratio unless given).
    #[arg(long)]
    width: Option<u32>,
    /// Output height in pixels (the width follows the aspect ratio unless given).
    #[arg(long)]
    height: Option<u32>,
    #[arg(long, value_enum, default_value = "jpeg")]
    format: ImageFormat,
    /// JPEG quality, 1–100.
    #[arg(long, default_value_t = 80)]
    quality: u8,
    /// Which timestamps `--from`/`--to` refer to.
    #[arg(long, value_enum, default_value = "producer")]
    selector: Selector,
    /// Longest range per GetImages call (the server's `images.max_range`, 300s by default).
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Output directory (created if missing).
    #[arg(short, long)]
    output: PathBuf,
}

/// `streamvault images`.
pub async fn images(a: ImagesArgs) -> anyhow::Result<()> {
    let every_ms = a.every.as_millis() as i64;
    if every_ms <= 0 {
        bail!("--every must be positive");
    }
    if !(1..=100).contains(&a.quality) {
        bail!("--quality must be 1 to 100");
    }
    let from_ms = (parse_time(&a.from)? * 1000.0).round() as i64;
    let to_ms = (parse_time(&a.to)? * 1000.0).round() as i64;
    if to_ms < from_ms {
        bail!("--to is before --from");
    }
    let total = (((to_ms - from_ms) + every_ms - 1) / every_ms).max(1);
    // Windows hold a whole number of intervals, so instants stay on one grid.
    let per_window = ((a.window.as_millis() as i64) / every_ms).max(1);
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("cannot create {}", a.output.display()))?;
    let (format, ext) = match a.format {
        ImageFormat::Jpeg => ("JPEG", "jpg"),
        ImageFormat::Png => ("PNG", "png"),
    };
    let selector = match a.selector {
        Selector::Producer => "PRODUCER_TIMESTAMP",
        Selector::Server => "SERVER_TIMESTAMP",
    };
    let client = reqwest::Client::new();
    let progress = super::progress::Progress::instants(total as u64);
    let mut entries = Vec::with_capacity(total as usize);
    let (mut written, mut missing) = (0u64, 0u64);
    let mut window_start = 0i64;
    while window_start < total {
        let n = per_window.min(total - window_start);
        let start = from_ms + window_start * every_ms;
        let end = if window_start + n >= total {
            to_ms.max(start)
        } else {
            start + n * every_ms
        };
        let mut body = json!({
            "StreamName": a.stream,
            "ImageSelectorType": selector,
            "StartTimestamp": start as f64 / 1000.0,
            "EndTimestamp": end as f64 / 1000.0,
            "SamplingInterval": every_ms,
            "Format": format,
            "MaxResults": 100,
        });
        if matches!(a.format, ImageFormat::Jpeg) {
            body["FormatConfig"] = json!({"JPEGQuality": a.quality.to_string()});
        }
        if let Some(w) = a.width {
            body["WidthPixels"] = json!(w);
        }
        if let Some(h) = a.height {
            body["HeightPixels"] = json!(h);
        }
        loop {
            let v: Value = serde_json::from_slice(
                &post(&client, &a.endpoint, "getImages", &body)
                    .await?
                    .bytes()
                    .await?,
            )
            .context("GetImages answered something that is not JSON")?;
            for img in v["Images"].as_array().cloned().unwrap_or_default() {
                let ts_ms = (img["TimeStamp"].as_f64().unwrap_or(0.0) * 1000.0).round() as i64;
                let number = entries.len() + 1;
                let mut e = json!({
                    "n": number,
                    "timestamp": ts_ms as f64 / 1000.0,
                    "time": format_epoch_secs(ts_ms),
                });
                match (img["ImageContent"].as_str(), img["Error"].as_str()) {
                    (Some(b64), _) => {
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(b64)
                            .context("ImageContent is not base64")?;
                        let name = format!("{number:06}.{ext}");
                        std::fs::write(a.output.join(&name), &bytes)
                            .with_context(|| format!("cannot write {name}"))?;
                        e["file"] = json!(name);
                        written += 1;
                    }
                    (None, err) => {
                        e["error"] = json!(err.unwrap_or("UNKNOWN"));
                        missing += 1;
                    }
                }
                entries.push(e);
            }
            progress.set_position(entries.len() as u64);
            progress.set_message(format!("{written} written, {missing} without image"));
            match v["NextToken"].as_str() {
                Some(t) => body["NextToken"] = json!(t),
                None => break,
            }
        }
        window_start += n;
    }
    progress.finish();
    let index = json!({
        "stream": a.stream,
        "selector": selector,
        "from": from_ms as f64 / 1000.0,
        "to": to_ms as f64 / 1000.0,
        "every_ms": every_ms,
        "format": format,
        "images": entries,
    });
    let path = a.output.join("index.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&index)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "{written} images and index.json written to {} ({missing} instants without image)",
        a.output.display()
    );
    Ok(())
}
