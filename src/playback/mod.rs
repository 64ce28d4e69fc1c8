//! Playback packagers: GetClip (faststart MP4), HLS (fMP4 or MPEG-TS segments) and DASH
//! (fMP4 segments) built on the fly from stored fragments. This module holds what they
//! share: the codec configuration of an upload session ([`MediaConfig`], validated into
//! the modeled codec errors), one fragment turned into timed samples ([`Packaged`]),
//! fragment selection with producer-timestamp de-duplication ([`select_fragments`]), and
//! the per-server state ([`Playback`]: the token signer, live-session state and a cache
//! of codec configurations). Muxing is in [`mp4`] and [`ts`], playlists in [`hls`] and
//! [`dash`], session tokens in [`token`], live timelines in [`timeline`].
//!
//! Times: every sample is placed on the producer clock. Video uses a 90 kHz timescale,
//! audio its sample rate; a sample's time is the fragment's producer timestamp plus the
//! frame's offset from the cluster timecode, so segments of one stream line up without
//! any per-session state.

pub mod codec;
pub mod dash;
pub mod hls;
pub mod mp4;
pub mod timeline;
pub mod token;
pub mod ts;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use shiguredo_mp4::boxes::{AudioSampleEntryFields, EsdsBox, Mp4aBox, SampleEntry};
use shiguredo_mp4::descriptors::{
    DecoderConfigDescriptor, DecoderSpecificInfo, EsDescriptor, SlConfigDescriptor,
};
use shiguredo_mp4::{FixedPointNumber, Uint};

use crate::clock::EpochMillis;
use crate::config::PlaybackSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::index::{FragmentRecord, StreamRecord, TimestampKind};
use crate::media::demux::{FragmentLoader, LoadedFragment, SessionInfo, demux_cluster};
use crate::streams::Catalog;

/// Timescale of video tracks (ticks per second).
pub const VIDEO_TIMESCALE: u32 = 90_000;

/// The video codecs the packagers accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    H264,
    H265,
}

/// A packageable video track.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoConfig {
    /// MKV track number.
    pub track: u64,
    pub codec: VideoCodec,
    pub width: u16,
    pub height: u16,
    /// Bytes per NAL length prefix in frames (1, 2 or 4).
    pub nal_length_size: usize,
    /// VPS (H.265), SPS and PPS NAL units, in that order (for MPEG-TS).
    pub parameter_sets: Vec<Bytes>,
    pub entry: SampleEntry,
}

/// A packageable AAC track.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioConfig {
    /// MKV track number.
    pub track: u64,
    pub sample_rate: u32,
    pub channels: u16,
    /// From the AudioSpecificConfig, for ADTS headers.
    pub object_type: u8,
    pub frequency_index: u8,
    pub channel_config: u8,
    /// PCM samples per AAC frame (1024, or 960).
    pub frame_samples: u32,
    pub entry: SampleEntry,
}

/// What an upload session's tracks are, as the packagers need them.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaConfig {
    pub video: Option<VideoConfig>,
    pub audio: Option<AudioConfig>,
}

impl MediaConfig {
    /// Validates a session's tracks: the first video track must be H.264 or H.265 with
    /// an avcC/hvcC CodecPrivate, the first audio track (optional, or alone) AAC with an
    /// AudioSpecificConfig. Anything else is one of the modeled codec errors.
    pub fn from_session(info: &SessionInfo) -> Result<Self> {
        let video = match info.track_of_type(1) {
            Some(t) => Some(codec::video_config(t)?),
            None => None,
        };
        let audio = match info.track_of_type(2) {
            Some(t) => Some(audio_config(t)?),
            None => None,
        };
        if video.is_none() && audio.is_none() {
            return Err(Error::new(
                ErrorKind::UnsupportedStreamMediaType,
                "the stream has neither a video nor an audio track",
            ));
        }
        Ok(Self { video, audio })
    }

    /// RFC 6381 `CODECS` value (`avc1.64001f,mp4a.40.2`).
    pub fn codecs(&self) -> String {
        let mut v = Vec::new();
        for e in [
            self.video.as_ref().map(|t| &t.entry),
            self.audio.as_ref().map(|t| &t.entry),
        ]
        .into_iter()
        .flatten()
        {
            if let Ok(s) = shiguredo_mp4::codec_string::from_sample_entry(e) {
                v.push(s);
            }
        }
        v.join(",")
    }
}

fn codec_private(t: &crate::mkv::TrackEntry) -> Result<&Bytes> {
    t.codec_private
        .as_ref()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::MissingCodecPrivateData,
                format!(
                    "track has no codec private data: track={} codec={}",
                    t.number, t.codec_id
                ),
            )
        })
}

fn invalid_private(t: &crate::mkv::TrackEntry, why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::InvalidCodecPrivateData,
        format!(
            "codec private data does not parse: track={} codec={} error={why}",
            t.number, t.codec_id
        ),
    )
}

/// AAC sampling frequencies by index (ISO/IEC 14496-3).
const AAC_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

fn audio_config(t: &crate::mkv::TrackEntry) -> Result<AudioConfig> {
    if !t.codec_id.starts_with("A_AAC") {
        return Err(Error::new(
            ErrorKind::UnsupportedStreamMediaType,
            format!(
                "audio codec cannot be packaged (AAC can): track={} codec={}",
                t.number, t.codec_id
            ),
        ));
    }
    let asc = codec_private(t)?;
    if asc.len() < 2 {
        return Err(invalid_private(
            t,
            "AudioSpecificConfig shorter than 2 bytes",
        ));
    }
    let object_type = asc[0] >> 3;
    let frequency_index = ((asc[0] & 0x07) << 1) | (asc[1] >> 7);
    let channel_config = (asc[1] >> 3) & 0x0F;
    let frame_length_flag = (asc[1] >> 2) & 1;
    if object_type == 0 || object_type == 31 {
        return Err(invalid_private(
            t,
            format!("unsupported audio object type {object_type}"),
        ));
    }
    let sample_rate = match AAC_RATES.get(usize::from(frequency_index)) {
        Some(r) => *r,
        None if frequency_index == 15 && asc.len() >= 5 => {
            let v = u32::from_be_bytes([0, asc[1], asc[2], asc[3]]);
            (v >> 7) & 0x00FF_FFFF
        }
        None => return Err(invalid_private(t, "bad sampling frequency index")),
    };
    if sample_rate == 0 {
        return Err(invalid_private(t, "sampling frequency 0"));
    }
    let channels = match channel_config {
        0 => t.audio.as_ref().map(|a| a.channels).unwrap_or(2) as u16,
        7 => 8,
        c => u16::from(c),
    };
    let entry = SampleEntry::Mp4a(Mp4aBox {
        audio: AudioSampleEntryFields {
            data_reference_index: AudioSampleEntryFields::DEFAULT_DATA_REFERENCE_INDEX,
            channelcount: channels,
            samplesize: AudioSampleEntryFields::DEFAULT_SAMPLESIZE,
            samplerate: FixedPointNumber::new(u16::try_from(sample_rate).unwrap_or(0), 0),
        },
        esds_box: EsdsBox {
            es: EsDescriptor {
                es_id: EsDescriptor::MIN_ES_ID,
                stream_priority: EsDescriptor::LOWEST_STREAM_PRIORITY,
                depends_on_es_id: None,
                url_string: None,
                ocr_es_id: None,
                dec_config_descr: DecoderConfigDescriptor {
                    object_type_indication:
                        DecoderConfigDescriptor::OBJECT_TYPE_INDICATION_AUDIO_ISO_IEC_14496_3,
                    stream_type: DecoderConfigDescriptor::STREAM_TYPE_AUDIO,
                    up_stream: DecoderConfigDescriptor::UP_STREAM_FALSE,
                    buffer_size_db: Uint::new(0),
                    max_bitrate: 0,
                    avg_bitrate: 0,
                    dec_specific_info: Some(DecoderSpecificInfo {
                        payload: asc.to_vec(),
                    }),
                },
                sl_config_descr: SlConfigDescriptor,
            },
        },
        unknown_boxes: Vec::new(),
    });
    Ok(AudioConfig {
        track: t.number,
        sample_rate,
        channels,
        object_type,
        frequency_index,
        channel_config,
        frame_samples: if frame_length_flag == 1 { 960 } else { 1024 },
        entry,
    })
}

/// One media sample on the producer clock, in its track's timescale.
#[derive(Debug, Clone)]
pub struct Sample {
    pub data: Bytes,
    /// Decode time.
    pub dts: i64,
    /// Presentation time minus decode time (≥ 0).
    pub cto: i64,
    pub duration: u32,
    pub keyframe: bool,
}

/// One fragment's samples, by track.
#[derive(Debug, Clone)]
pub struct Packaged {
    pub row: FragmentRecord,
    pub config: Arc<MediaConfig>,
    pub video: Vec<Sample>,
    pub audio: Vec<Sample>,
}

impl Packaged {
    /// Bytes of sample data.
    pub fn media_bytes(&self) -> u64 {
        self.video
            .iter()
            .chain(&self.audio)
            .map(|s| s.data.len() as u64)
            .sum()
    }
}

/// `ns` in `timescale` units, saturating at the i64 range (stored times are hostile input).
fn ticks(ns: i128, timescale: u32) -> i64 {
    let t = ns
        .saturating_mul(i128::from(timescale))
        .div_euclid(1_000_000_000);
    t.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// Turns a loaded fragment into samples: video in decode order with decode times from
/// the sorted presentation times (so B-frames get composition offsets), audio with one
/// AAC frame duration per sample from its first frame's time.
pub fn package(f: &LoadedFragment, config: Arc<MediaConfig>) -> Result<Packaged> {
    let base_ns = i128::from(f.row.producer_ts_ms) * 1_000_000 - i128::from(f.cluster_ns);
    let mut video = Vec::new();
    if let Some(v) = &config.video {
        let frames: Vec<_> = f.frames.iter().filter(|fr| fr.track == v.track).collect();
        let pts: Vec<i64> = frames
            .iter()
            .map(|fr| ticks(base_ns + i128::from(fr.pts_ns), VIDEO_TIMESCALE))
            .collect();
        let mut sorted = pts.clone();
        sorted.sort_unstable();
        let delay = sorted
            .iter()
            .zip(&pts)
            .map(|(s, p)| s.saturating_sub(*p))
            .max()
            .unwrap_or(0)
            .max(0);
        // The fragment's duration is its video presentation span: it ends that long
        // after its earliest presentation time.
        let span = ticks(
            i128::from(f.row.duration_ms.max(0)) * 1_000_000,
            VIDEO_TIMESCALE,
        );
        let end = sorted
            .first()
            .map_or(0, |first| first.saturating_add(span))
            .saturating_sub(delay);
        let n = frames.len();
        for (i, fr) in frames.iter().enumerate() {
            let dts = sorted[i].saturating_sub(delay);
            let next = if i + 1 < n {
                sorted[i + 1].saturating_sub(delay)
            } else {
                end
            };
            let mut duration = next.saturating_sub(dts);
            if duration <= 0 {
                // Last frame with no usable fragment end: repeat the previous interval.
                duration = if i > 0 {
                    sorted[i].saturating_sub(sorted[i - 1])
                } else {
                    3000
                };
            }
            video.push(Sample {
                data: fr.data.clone(),
                dts,
                cto: pts[i].saturating_sub(dts),
                duration: duration.clamp(1, i64::from(u32::MAX)) as u32,
                keyframe: fr.keyframe,
            });
        }
        if let Some(first) = video.first()
            && !first.keyframe
        {
            return Err(Error::new(
                ErrorKind::InvalidMediaFrame,
                format!(
                    "fragment does not start with a video keyframe: seq={}",
                    f.row.seq
                ),
            ));
        }
    }
    let mut audio = Vec::new();
    if let Some(a) = &config.audio {
        let mut t = None;
        for fr in f.frames.iter().filter(|fr| fr.track == a.track) {
            let dts =
                *t.get_or_insert_with(|| ticks(base_ns + i128::from(fr.pts_ns), a.sample_rate));
            audio.push(Sample {
                data: fr.data.clone(),
                dts,
                cto: 0,
                duration: a.frame_samples,
                keyframe: true,
            });
            t = Some(dts.saturating_add(i64::from(a.frame_samples)));
        }
    }
    Ok(Packaged {
        row: f.row.clone(),
        config,
        video,
        audio,
    })
}

/// Which duplicate survives when fragments share a producer timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dedup {
    /// The oldest ingested (lowest fragment number): GetClip.
    Oldest,
    /// The newest ingested (highest fragment number): HLS and DASH.
    Newest,
}

/// Drops fragments whose producer timestamp another kept fragment has.
pub fn dedup(rows: Vec<FragmentRecord>, policy: Dedup) -> Vec<FragmentRecord> {
    let mut keep: HashMap<EpochMillis, u64> = HashMap::with_capacity(rows.len());
    for r in &rows {
        keep.entry(r.producer_ts_ms)
            .and_modify(|s| {
                *s = match policy {
                    Dedup::Oldest => (*s).min(r.seq),
                    Dedup::Newest => (*s).max(r.seq),
                }
            })
            .or_insert(r.seq);
    }
    rows.into_iter()
        .filter(|r| keep.get(&r.producer_ts_ms) == Some(&r.seq))
        .collect()
}

/// Fragments whose `kind` timestamp is in `[start, end]`, in (timestamp, number) order,
/// de-duplicated, at most `limit` (after de-duplication).
pub async fn select_fragments(
    catalog: &Catalog,
    stream: &StreamRecord,
    kind: TimestampKind,
    start_ms: EpochMillis,
    end_ms: EpochMillis,
    limit: usize,
    policy: Dedup,
) -> Result<Vec<FragmentRecord>> {
    const PAGE: usize = 1000;
    let mut out: Vec<FragmentRecord> = Vec::new();
    let mut after = None;
    loop {
        let page = catalog
            .index()
            .fragments_in_range(&stream.stream_id, kind, start_ms, end_ms, after, PAGE)
            .await?;
        let full = page.len() == PAGE;
        if let Some(last) = page.last() {
            after = Some((ts_of(last, kind), last.seq));
        }
        out.extend(page);
        // Duplicates may straddle a page boundary: keep one extra page of headroom.
        if !full || out.len() >= limit + PAGE {
            break;
        }
    }
    let mut out = dedup(out, policy);
    out.truncate(limit);
    Ok(out)
}

/// A fragment's timestamp of `kind`.
pub fn ts_of(r: &FragmentRecord, kind: TimestampKind) -> EpochMillis {
    match kind {
        TimestampKind::Producer => r.producer_ts_ms,
        TimestampKind::Server => r.server_ts_ms,
    }
}

/// An upload session's header and codec configuration.
type SessionEntry = (Arc<SessionInfo>, Arc<MediaConfig>);

/// Per-server playback state.
#[derive(Debug)]
pub struct Playback {
    pub settings: PlaybackSettings,
    pub signer: token::TokenSigner,
    pub sessions: timeline::Sessions,
    catalog: Catalog,
    /// Upload sessions by (stream id, session id); bounded, cleared when full.
    configs: Mutex<HashMap<(String, u64), SessionEntry>>,
    /// GetClip builds in progress (`playback.max_concurrent_clips`).
    clips: Arc<tokio::sync::Semaphore>,
}

/// GetClip requests refused because `playback.max_concurrent_clips` were running.
pub const CLIPS_REFUSED_METRIC: &str = "streamvault_clips_refused_total";

impl Playback {
    pub fn new(settings: PlaybackSettings, signer: token::TokenSigner, catalog: Catalog) -> Self {
        let sessions = timeline::Sessions::new(settings.max_sessions, settings.max_session_entries);
        Self {
            signer,
            sessions,
            catalog,
            configs: Mutex::new(HashMap::new()),
            clips: Arc::new(tokio::sync::Semaphore::new(
                settings.max_concurrent_clips.max(1),
            )),
            settings,
        }
    }

    /// A GetClip build slot, held until the clip is sent; when all are taken,
    /// `ClientLimitExceededException` (the client retries later).
    pub fn clip_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit> {
        self.clips.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!(CLIPS_REFUSED_METRIC).increment(1);
            Error::new(
                ErrorKind::ClientLimitExceeded,
                format!(
                    "too many GetClip requests in progress: max={}",
                    self.settings.max_concurrent_clips
                ),
            )
        })
    }

    /// Forgets expired HLS/DASH sessions every `playback.session_purge_interval` until
    /// `stop` (spawned once by the server).
    pub async fn purge_expired(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.session_purge_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    let n = self.sessions.purge(self.catalog.clock().now_ms());
                    if n > 0 {
                        tracing::debug!(sessions = n, "forgot expired playback sessions");
                    }
                }
            }
        }
    }

    async fn session(&self, loader: &mut FragmentLoader, session_id: u64) -> Result<SessionEntry> {
        let key = (loader.stream().stream_id.clone(), session_id);
        if let Some(c) = self.configs.lock().expect("config cache").get(&key) {
            return Ok(c.clone());
        }
        let info = loader.session(session_id).await?;
        let c = Arc::new(MediaConfig::from_session(&info)?);
        let mut m = self.configs.lock().expect("config cache");
        if m.len() >= 4096 {
            m.clear();
        }
        m.insert(key, (info.clone(), c.clone()));
        Ok((info, c))
    }

    /// The codec configuration of an upload session (cached).
    pub async fn config(
        &self,
        loader: &mut FragmentLoader,
        session_id: u64,
    ) -> Result<Arc<MediaConfig>> {
        Ok(self.session(loader, session_id).await?.1)
    }

    /// Reads, demuxes (`demux_cluster`) and packages one fragment; the session header
    /// comes from the cache, so a segment request costs one object read. A fragment that
    /// does not demux is an `InvalidMediaFrame` error.
    pub async fn load(
        &self,
        loader: &mut FragmentLoader,
        row: &FragmentRecord,
    ) -> Result<Packaged> {
        let (session, config) = self.session(loader, row.session_id).await?;
        let key = self.catalog.data_key(loader.stream())?;
        let cluster = self.catalog.store().get_fragment(&key, row).await?;
        let (cluster_ns, frames) =
            demux_cluster(&cluster, session.timecode_scale_ns).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidMediaFrame,
                    format!("fragment does not demux: seq={} error={e}", row.seq),
                )
            })?;
        let f = LoadedFragment {
            row: row.clone(),
            session,
            cluster_ns,
            frames,
        };
        package(&f, config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: u64, ts: i64) -> FragmentRecord {
        FragmentRecord {
            stream_id: "s".into(),
            seq,
            session_id: 1,
            producer_ts_ms: ts,
            server_ts_ms: ts,
            duration_ms: 1000,
            producer_timecode: ts,
            size: 1,
            object_key: String::new(),
            object_size: 1,
            content_hash: String::new(),
            object_offset: None,
            metadata: Vec::new(),
        }
    }

    #[test]
    fn dedup_keeps_oldest_or_newest() {
        let rows = vec![row(1, 0), row(2, 1000), row(5, 1000), row(3, 2000)];
        let seqs = |v: Vec<FragmentRecord>| v.iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(dedup(rows.clone(), Dedup::Oldest)), vec![1, 2, 3]);
        assert_eq!(seqs(dedup(rows, Dedup::Newest)), vec![1, 5, 3]);
    }

    #[test]
    fn ticks_round_down_on_the_producer_clock() {
        assert_eq!(ticks(1_000_000_000, 90_000), 90_000);
        assert_eq!(
            ticks(1_795_600_000_123_000_000, 90_000),
            161_604_000_011_070
        );
        assert_eq!(ticks(33_000_000, 48_000), 1584);
    }
}
