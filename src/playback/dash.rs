//! DASH manifests rendered from a [`Window`]. One Period; one AdaptationSet per track
//! (video `TrackNumber=1`, audio `TrackNumber=2`), each with a `SegmentTemplate` whose
//! `SegmentTimeline` lists every fragment with an explicit `t` (producer time in ms) so
//! gaps need no extra periods. Media segments are addressed by `$Time$`, which the
//! server maps back to the fragment with that producer timestamp; they are the same
//! fMP4 segments HLS serves, restricted to one track. ON_DEMAND manifests are static;
//! LIVE and LIVE_REPLAY ones are dynamic with segment times on the wall clock
//! (`availabilityStartTime` is the epoch for LIVE and shifted by the replay offset for
//! LIVE_REPLAY). `DisplayFragmentTimestamp`/`DisplayFragmentNumber` add `kvs:ts` (epoch
//! ms of the selector's timestamp) and `kvs:fn` to each `S`.

use std::fmt::Write;

use super::MediaConfig;
use super::timeline::Window;
use super::token::{Claims, Mode, Selector};
use crate::clock::EpochMillis;
use crate::model::FragmentNumber;

/// Resource names under `/dash/v1/`.
pub const MANIFEST: &str = "getDASHManifest.mpd";
pub const INIT: &str = "getMP4InitFragment.mp4";
pub const FRAGMENT: &str = "getMP4MediaFragment.mp4";
/// Content type of manifests.
pub const MANIFEST_TYPE: &str = "application/dash+xml";
/// Namespace of the `kvs:` attributes.
pub const KVS_NS: &str = "urn:streamvault:kvs:2026";

fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    format!("PT{}.{:03}S", ms / 1000, ms % 1000)
}

fn datetime(ms: EpochMillis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Escapes text for an XML attribute value.
fn attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The manifest. `config` is the codec configuration of the first listed fragment
/// (DASH sessions cannot change it); `now` stamps `publishTime`; `replay_shift_ms` is
/// added to media times to place LIVE_REPLAY segments on the wall clock.
pub fn manifest(
    token: &str,
    c: &Claims,
    window: &Window,
    config: Option<&MediaConfig>,
    stream_creation_ms: i64,
    now: EpochMillis,
    replay_shift_ms: i64,
) -> String {
    let dynamic = c.mode != Mode::OnDemand && !window.ended;
    let first_t = window.entries.first().map_or(0, |e| e.row.producer_ts_ms);
    let total_ms: i64 = window.entries.iter().map(|e| e.row.duration_ms).sum();
    let span_ms = window
        .entries
        .last()
        .map_or(0, |e| e.row.producer_ts_ms + e.row.duration_ms - first_t);
    let longest = window
        .entries
        .iter()
        .map(|e| e.row.duration_ms)
        .max()
        .unwrap_or(1000)
        .max(1000);
    let bytes: u64 = window.entries.iter().map(|e| e.row.size).sum();
    let bandwidth = super::hls::bandwidth(bytes, total_ms);
    let mut x = String::with_capacity(2048 + window.entries.len() * 160);
    let _ = writeln!(x, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = write!(
        x,
        r#"<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" xmlns:kvs="{KVS_NS}" profiles="urn:mpeg:dash:profile:isoff-live:2011" minBufferTime="PT2S""#
    );
    if dynamic {
        let ast = if c.mode == Mode::LiveReplay {
            replay_shift_ms
        } else {
            0
        };
        let _ = write!(
            x,
            r#" type="dynamic" availabilityStartTime="{}" publishTime="{}" minimumUpdatePeriod="{}" timeShiftBufferDepth="{}" suggestedPresentationDelay="{}">"#,
            datetime(ast),
            datetime(now),
            duration(longest),
            duration(span_ms.max(longest)),
            duration(longest * 3),
        );
    } else {
        let _ = write!(
            x,
            r#" type="static" mediaPresentationDuration="{}">"#,
            duration(span_ms)
        );
    }
    let _ = write!(x, r#"<Period id="0" start="PT0S">"#);
    let pto = if dynamic { 0 } else { first_t };
    let init = window.entries.first().map_or(0, |e| e.init);
    let timeline = |x: &mut String| {
        x.push_str("<SegmentTimeline>");
        for e in &window.entries {
            let _ = write!(
                x,
                r#"<S t="{}" d="{}""#,
                e.row.producer_ts_ms,
                e.row.duration_ms.max(1)
            );
            if c.display_timestamp {
                let ts = match c.selector {
                    Selector::Producer => e.row.producer_ts_ms,
                    Selector::Server => e.row.server_ts_ms,
                };
                let _ = write!(x, r#" kvs:ts="{ts}""#);
            }
            if c.display_number {
                let _ = write!(
                    x,
                    r#" kvs:fn="{}""#,
                    FragmentNumber::new(stream_creation_ms, e.row.seq)
                );
            }
            x.push_str("/>");
        }
        x.push_str("</SegmentTimeline>");
    };
    let template = |x: &mut String, track: u8| {
        let _ = write!(
            x,
            r#"<SegmentTemplate timescale="1000" presentationTimeOffset="{pto}" initialization="{}" media="{}">"#,
            attr(&format!(
                "{INIT}?SessionToken={token}&TrackNumber={track}&SequenceNumber={init}"
            )),
            attr(&format!(
                "{FRAGMENT}?SessionToken={token}&TrackNumber={track}&Time=$Time$"
            )),
        );
        timeline(x);
        x.push_str("</SegmentTemplate>");
    };
    if let Some(cfg) = config {
        let codecs = |e| shiguredo_mp4::codec_string::from_sample_entry(e).unwrap_or_default();
        if let Some(v) = &cfg.video {
            let _ = write!(
                x,
                r#"<AdaptationSet id="1" contentType="video" mimeType="video/mp4" segmentAlignment="true" startWithSAP="1">"#
            );
            template(&mut x, 1);
            let _ = write!(
                x,
                r#"<Representation id="video" codecs="{}" width="{}" height="{}" bandwidth="{}"/></AdaptationSet>"#,
                attr(&codecs(&v.entry)),
                v.width,
                v.height,
                bandwidth
            );
        }
        if let Some(a) = &cfg.audio {
            let _ = write!(
                x,
                r#"<AdaptationSet id="2" contentType="audio" mimeType="audio/mp4" lang="und" segmentAlignment="true" startWithSAP="1">"#
            );
            template(&mut x, 2);
            let _ = write!(
                x,
                r#"<Representation id="audio" codecs="{}" audioSamplingRate="{}" bandwidth="{}"><AudioChannelConfiguration schemeIdUri="urn:mpeg:dash:23003:3:audio_channel_configuration:2011" value="{}"/></Representation></AdaptationSet>"#,
                attr(&codecs(&a.entry)),
                a.sample_rate,
                u32::from(a.channels) * 64_000,
                a.channels
            );
        }
    }
    x.push_str("</Period></MPD>\n");
    x
}
