//! Images: `POST /getImages` (kinesis-video-archived-media) and the image generation
//! configuration of the control plane, `POST /updateImageGenerationConfiguration` and
//! `POST /describeImageGenerationConfiguration`. See docs/api.md for the rules and every
//! difference from AWS.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::archived::{require_retention, required_range};
use super::json::KvsJson;
use crate::auth::Access;
use crate::clock::epoch_secs_json;
use crate::error::{Error, ErrorKind, Result};
use crate::images::generation::{self, DestinationConfig, GenerationConfig};
use crate::images::{Outcome, output_spec};
use crate::index::TimestampKind;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/getImages", post(get_images))
        .route(
            "/updateImageGenerationConfiguration",
            post(update_generation),
        )
        .route(
            "/describeImageGenerationConfiguration",
            post(describe_generation),
        )
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetImagesInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    image_selector_type: Option<String>,
    start_timestamp: Option<f64>,
    end_timestamp: Option<f64>,
    sampling_interval: Option<i64>,
    format: Option<String>,
    format_config: Option<BTreeMap<String, String>>,
    width_pixels: Option<i64>,
    height_pixels: Option<i64>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

fn selector(v: Option<&str>) -> Result<TimestampKind> {
    v.and_then(generation::selector_kind).ok_or_else(|| {
        Error::invalid(format!(
            "ImageSelectorType must be PRODUCER_TIMESTAMP or SERVER_TIMESTAMP: value={v:?}"
        ))
    })
}

/// The sampling plan of a request: instants `start + i × step` for `i` in `0..count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    kind: TimestampKind,
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
}

impl Plan {
    /// Instants in `[start, end)`, and always `start` itself (AWS: a range shorter than
    /// the interval returns the image at StartTimestamp).
    fn count(&self) -> i64 {
        // i128: the old `end - start + step - 1` overflowed for a SamplingInterval near
        // i64::MAX.
        let span = i128::from(self.end_ms) - i128::from(self.start_ms);
        let step = i128::from(self.step_ms.max(1));
        ((span + step - 1) / step).clamp(1, i128::from(i64::MAX)) as i64
    }

    fn token(&self, next: i64) -> String {
        let k = match self.kind {
            TimestampKind::Producer => "P",
            TimestampKind::Server => "S",
        };
        B64.encode(format!(
            "i1 {k} {} {} {} {next}",
            self.start_ms, self.end_ms, self.step_ms
        ))
    }

    /// The next instant index a token continues at; the token must belong to this plan
    /// (the same selector, range and interval: clients resend them with the token).
    fn parse_token(&self, token: &str) -> Result<i64> {
        let bad = || Error::invalid("NextToken is not a token this server issued for this request");
        let raw = String::from_utf8(B64.decode(token).map_err(|_| bad())?).map_err(|_| bad())?;
        let (head, next) = raw.rsplit_once(' ').ok_or_else(bad)?;
        let mine =
            String::from_utf8(B64.decode(self.token(0)).map_err(|_| bad())?).map_err(|_| bad())?;
        if Some(head) != mine.rsplit_once(' ').map(|(h, _)| h) {
            return Err(bad());
        }
        let next: i64 = next.parse().map_err(|_| bad())?;
        if !(0..self.count()).contains(&next) {
            return Err(bad());
        }
        Ok(next)
    }
}

async fn get_images(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<GetImagesInput>,
) -> Result<Json<Value>> {
    let cfg = &state.settings.images;
    let kind = selector(i.image_selector_type.as_deref())?;
    let (start_ms, end_ms) = required_range(i.start_timestamp, i.end_timestamp, "")?;
    let max_range = cfg.max_range.as_millis() as i64;
    if end_ms - start_ms > max_range {
        return Err(Error::invalid(format!(
            "EndTimestamp - StartTimestamp must be at most {max_range} ms: value={}",
            end_ms - start_ms
        )));
    }
    let step_ms = match i.sampling_interval {
        Some(v) => v,
        None => cfg.default_sampling_interval.as_millis() as i64,
    };
    let min = cfg.min_sampling_interval.as_millis() as i64;
    if step_ms < min {
        return Err(Error::invalid(format!(
            "SamplingInterval must be at least {min} ms: value={step_ms}"
        )));
    }
    let format = i
        .format
        .as_deref()
        .ok_or_else(|| Error::invalid("Format is required"))?;
    let spec = output_spec(
        format,
        i.format_config.as_ref(),
        i.width_pixels,
        i.height_pixels,
    )?;
    let page = match i.max_results {
        None => cfg.max_page_size,
        Some(n) if (1..=100).contains(&n) => (n as usize).min(cfg.max_page_size),
        Some(n) => {
            return Err(Error::invalid(format!(
                "MaxResults must be between 1 and 100: value={n}"
            )));
        }
    };
    let plan = Plan {
        kind,
        start_ms,
        end_ms,
        step_ms,
    };
    let first = match i.next_token.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => plan.parse_token(t)?,
        None => 0,
    };
    let stream = state
        .catalog
        .resolve(
            &access,
            i.stream_name.as_deref(),
            i.stream_arn.as_deref(),
            ErrorKind::InvalidArgument,
        )
        .await?;
    require_retention(&stream)?;
    let last = (first + page as i64).min(plan.count());
    let instants: Vec<i64> = (first..last).map(|k| start_ms + k * step_ms).collect();
    let outcomes = state
        .images
        .render(&state.catalog, &stream, kind, &instants, spec)
        .await?;
    let images: Vec<Value> = instants
        .iter()
        .zip(outcomes)
        .map(|(t, o)| {
            let ts = epoch_secs_json(*t);
            let (label, v) = match o {
                Outcome::Image(b) => (
                    "image",
                    json!({"TimeStamp": ts, "ImageContent": B64.encode(&b)}),
                ),
                Outcome::NoMedia => ("no_media", json!({"TimeStamp": ts, "Error": "NO_MEDIA"})),
                Outcome::MediaError => (
                    "media_error",
                    json!({"TimeStamp": ts, "Error": "MEDIA_ERROR"}),
                ),
            };
            metrics::counter!(crate::metrics::IMAGES_SERVED, "outcome" => label).increment(1);
            v
        })
        .collect();
    let mut out = json!({ "Images": images });
    if last < plan.count() {
        out["NextToken"] = json!(plan.token(last));
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DestinationInput {
    uri: Option<String>,
    destination_region: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GenerationInput {
    status: Option<String>,
    image_selector_type: Option<String>,
    destination_config: Option<DestinationInput>,
    sampling_interval: Option<i64>,
    format: Option<String>,
    format_config: Option<BTreeMap<String, String>>,
    width_pixels: Option<i64>,
    height_pixels: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateGenerationInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    image_generation_configuration: Option<GenerationInput>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeGenerationInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
}

fn validate_generation(state: &AppState, g: GenerationInput) -> Result<GenerationConfig> {
    let req = |v: Option<String>, name: &str| {
        v.ok_or_else(|| Error::invalid(format!("ImageGenerationConfiguration.{name} is required")))
    };
    let status = req(g.status, "Status")?;
    if status != "ENABLED" && status != "DISABLED" {
        return Err(Error::invalid(format!(
            "Status must be ENABLED or DISABLED: value={status}"
        )));
    }
    let image_selector_type = req(g.image_selector_type, "ImageSelectorType")?;
    selector(Some(&image_selector_type))?;
    let d = g.destination_config.ok_or_else(|| {
        Error::invalid("ImageGenerationConfiguration.DestinationConfig is required")
    })?;
    let uri = req(d.uri, "DestinationConfig.Uri")?;
    generation::destination(&uri, &state.settings)?;
    let destination_region = req(d.destination_region, "DestinationConfig.DestinationRegion")?;
    if destination_region != state.settings.region {
        return Err(Error::invalid(format!(
            "DestinationRegion must be the stream's region: value={destination_region} region={}",
            state.settings.region
        )));
    }
    let sampling_interval = g.sampling_interval.ok_or_else(|| {
        Error::invalid("ImageGenerationConfiguration.SamplingInterval is required")
    })?;
    let min = state.settings.images.min_sampling_interval.as_millis() as i64;
    if sampling_interval < min {
        return Err(Error::invalid(format!(
            "SamplingInterval must be at least {min} ms: value={sampling_interval}"
        )));
    }
    let format = req(g.format, "Format")?;
    output_spec(
        &format,
        g.format_config.as_ref(),
        g.width_pixels,
        g.height_pixels,
    )?;
    Ok(GenerationConfig {
        status,
        image_selector_type,
        destination_config: DestinationConfig {
            uri,
            destination_region,
        },
        sampling_interval,
        format,
        format_config: g.format_config,
        width_pixels: g.width_pixels,
        height_pixels: g.height_pixels,
    })
}

async fn update_generation(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<UpdateGenerationInput>,
) -> Result<Json<Value>> {
    let stream = state
        .catalog
        .resolve(
            &access,
            i.stream_name.as_deref(),
            i.stream_arn.as_deref(),
            ErrorKind::InvalidArgument,
        )
        .await?;
    let body = match i.image_generation_configuration {
        Some(g) => {
            require_retention(&stream)?;
            let cfg = validate_generation(&state, g)?;
            Some(serde_json::to_string(&cfg).map_err(|e| Error::internal(e.to_string()))?)
        }
        None => None,
    };
    state
        .catalog
        .index()
        .put_stream_config(&stream.stream_id, generation::CONFIG_KIND, body)
        .await?;
    Ok(Json(json!({})))
}

async fn describe_generation(
    State(state): State<AppState>,
    access: Access,
    KvsJson(i): KvsJson<DescribeGenerationInput>,
) -> Result<Json<Value>> {
    let stream = state
        .catalog
        .resolve(
            &access,
            i.stream_name.as_deref(),
            i.stream_arn.as_deref(),
            ErrorKind::InvalidArgument,
        )
        .await?;
    let stored = state
        .catalog
        .index()
        .get_stream_config(&stream.stream_id, generation::CONFIG_KIND)
        .await?;
    Ok(Json(match stored {
        Some(body) => {
            let cfg: Value =
                serde_json::from_str(&body).map_err(|e| Error::internal(e.to_string()))?;
            json!({ "ImageGenerationConfiguration": cfg })
        }
        None => json!({}),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_count_instants_and_tokens_bind_to_the_plan() {
        let p = Plan {
            kind: TimestampKind::Producer,
            start_ms: 1000,
            end_ms: 6000,
            step_ms: 500,
        };
        assert_eq!(p.count(), 10);
        assert_eq!(Plan { end_ms: 1000, ..p }.count(), 1);
        assert_eq!(Plan { end_ms: 1001, ..p }.count(), 1);
        assert_eq!(Plan { end_ms: 1501, ..p }.count(), 2);
        let t = p.token(3);
        assert_eq!(p.parse_token(&t).unwrap(), 3);
        assert!(Plan { step_ms: 400, ..p }.parse_token(&t).is_err());
        assert!(p.parse_token(&p.token(10)).is_err());
        assert!(p.parse_token("!!").is_err());
    }

    #[test]
    fn a_huge_sampling_interval_is_one_instant_not_an_overflow() {
        let p = Plan {
            kind: TimestampKind::Producer,
            start_ms: 1_795_600_000_000,
            end_ms: 1_795_600_060_000,
            step_ms: i64::MAX,
        };
        assert_eq!(p.count(), 1);
        assert_eq!(
            Plan {
                step_ms: i64::MAX - 1,
                ..p
            }
            .count(),
            1
        );
        let t = p.token(0);
        assert_eq!(p.parse_token(&t).unwrap(), 0);
    }
}
