//! MP4 output with shiguredo_mp4: fMP4 init segments (`ftyp`+`moov` from
//! `Fmp4SegmentMuxer`), fMP4 media segments (one `moof`+`mdat` per stored fragment, the
//! `moof` assembled from shiguredo's box types so `tfdt` carries the sample's producer
//! time and every segment stands alone; keyframes carry the parameter sets in-band), and the faststart MP4 of GetClip
//! ([`ClipLayout`]: all sample metadata goes through `Mp4FileMuxer` first, so the
//! `moov` is known before the first `mdat` byte is sent and the sample data can be
//! streamed afterwards).

use std::num::NonZeroU32;

use shiguredo_mp4::boxes::{MfhdBox, MoofBox, TfdtBox, TfhdBox, TrafBox, TrunBox, TrunSample};
use shiguredo_mp4::mux::{self, Fmp4SegmentMuxer, Mp4FileMuxer, Mp4FileMuxerOptions};
use shiguredo_mp4::{Encode, SampleFlags, TrackKind};

use super::{MediaConfig, Packaged, Sample, VIDEO_TIMESCALE, VideoCodec, VideoConfig};
use crate::error::{Error, Result};

/// Which tracks an fMP4 resource carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracks {
    /// Video and audio in one segment (HLS).
    All,
    /// Only the video track (DASH `TrackNumber=1`).
    Video,
    /// Only the audio track (DASH `TrackNumber=2`).
    Audio,
}

impl Tracks {
    fn video(self) -> bool {
        matches!(self, Tracks::All | Tracks::Video)
    }
    fn audio(self) -> bool {
        matches!(self, Tracks::All | Tracks::Audio)
    }
}

fn mux_err(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("mp4 muxing failed: {e}"))
}

fn nz(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN)
}

/// The tracks present for `which`, with their kind, timescale and sample entry, in track
/// id order (video is track 1 when present).
fn layout(
    config: &MediaConfig,
    which: Tracks,
) -> Vec<(TrackKind, u32, shiguredo_mp4::boxes::SampleEntry)> {
    let mut v = Vec::new();
    if which.video()
        && let Some(t) = &config.video
    {
        v.push((TrackKind::Video, VIDEO_TIMESCALE, t.entry.clone()));
    }
    if which.audio()
        && let Some(a) = &config.audio
    {
        v.push((TrackKind::Audio, a.sample_rate, a.entry.clone()));
    }
    v
}

/// `ftyp` + `moov` for `config`. `None` when `which` selects no track of the stream.
pub fn init_segment(config: &MediaConfig, which: Tracks) -> Result<Option<Vec<u8>>> {
    let tracks = layout(config, which);
    if tracks.is_empty() {
        return Ok(None);
    }
    let mut m = Fmp4SegmentMuxer::new().map_err(mux_err)?;
    // One empty sample per track teaches the muxer the tracks (ids in this order).
    let samples: Vec<mux::Sample> = tracks
        .into_iter()
        .map(|(kind, ts, entry)| mux::Sample {
            track_kind: kind,
            sample_entry: Some(entry),
            keyframe: true,
            timescale: nz(ts),
            duration: 1,
            composition_time_offset: None,
            data_offset: 0,
            data_size: 0,
        })
        .collect();
    m.create_media_segment_metadata(&samples).map_err(mux_err)?;
    m.init_segment_bytes().map(Some).map_err(mux_err)
}

fn sample_flags(keyframe: bool) -> SampleFlags {
    if keyframe {
        SampleFlags::from_fields(0, 2, 0, 0, 0, false, 0)
    } else {
        SampleFlags::from_fields(0, 1, 0, 0, 0, true, 0)
    }
}

/// One fMP4 media segment (`moof` + `mdat`, complete) for a packaged fragment.
/// `None` when the fragment has no sample of the selected tracks.
pub fn media_segment(p: &Packaged, which: Tracks, sequence_number: u32) -> Result<Option<Vec<u8>>> {
    let mut runs: Vec<(u32, &[Sample])> = Vec::new();
    let mut id = 0;
    let video = match &p.config.video {
        Some(v) if which.video() => with_parameter_sets(v, &p.video),
        _ => Vec::new(),
    };
    if which.video() && p.config.video.is_some() {
        id += 1;
        if !video.is_empty() {
            runs.push((id, &video));
        }
    }
    if which.audio() && p.config.audio.is_some() {
        id += 1;
        if !p.audio.is_empty() {
            runs.push((id, &p.audio));
        }
    }
    if runs.is_empty() {
        return Ok(None);
    }
    let build = |offsets: &[i32]| -> MoofBox {
        let traf_boxes = runs
            .iter()
            .zip(offsets)
            .map(|((track_id, samples), off)| {
                let any_cto = samples.iter().any(|s| s.cto != 0);
                TrafBox {
                    tfhd_box: TfhdBox {
                        track_id: *track_id,
                        base_data_offset: None,
                        sample_description_index: None,
                        default_sample_duration: None,
                        default_sample_size: None,
                        default_sample_flags: None,
                        duration_is_empty: false,
                        default_base_is_moof: true,
                    },
                    tfdt_box: Some(TfdtBox {
                        version: 1,
                        base_media_decode_time: samples[0].dts.max(0) as u64,
                    }),
                    trun_boxes: vec![TrunBox {
                        data_offset: Some(*off),
                        first_sample_flags: None,
                        samples: samples
                            .iter()
                            .map(|s| TrunSample {
                                duration: Some(s.duration),
                                size: Some(s.data.len() as u32),
                                flags: Some(sample_flags(s.keyframe)),
                                composition_time_offset: any_cto.then_some(s.cto),
                            })
                            .collect(),
                    }],
                    unknown_boxes: Vec::new(),
                }
            })
            .collect();
        MoofBox {
            mfhd_box: MfhdBox { sequence_number },
            traf_boxes,
            unknown_boxes: Vec::new(),
        }
    };
    let placeholder = vec![0i32; runs.len()];
    let moof_len = build(&placeholder).encode_to_vec().map_err(mux_err)?.len();
    let payload: usize = runs
        .iter()
        .flat_map(|(_, s)| s.iter())
        .map(|s| s.data.len())
        .sum();
    let mut offsets = Vec::with_capacity(runs.len());
    let mut at = moof_len + 8;
    for (_, samples) in &runs {
        offsets.push(i32::try_from(at).map_err(mux_err)?);
        at += samples.iter().map(|s| s.data.len()).sum::<usize>();
    }
    let mut out = build(&offsets).encode_to_vec().map_err(mux_err)?;
    out.reserve(8 + payload);
    out.extend_from_slice(&u32::try_from(8 + payload).map_err(mux_err)?.to_be_bytes());
    out.extend_from_slice(b"mdat");
    for (_, samples) in &runs {
        for s in samples.iter() {
            out.extend_from_slice(&s.data);
        }
    }
    Ok(Some(out))
}

/// The video samples with the codec's parameter sets (VPS/SPS/PPS, NAL length
/// prefixed) in front of every keyframe that does not carry them already. A segment then
/// decodes with whatever init segment the player holds, so a codec private data change
/// inside a session works even in players (ffmpeg 5.1) that keep the first `EXT-X-MAP`.
fn with_parameter_sets(v: &VideoConfig, samples: &[Sample]) -> Vec<Sample> {
    let sps_type = |nal: &[u8]| match v.codec {
        VideoCodec::H264 => nal.first().is_some_and(|b| b & 0x1F == 7),
        VideoCodec::H265 => nal.first().is_some_and(|b| (b >> 1) & 0x3F == 33),
    };
    let has_sps = |d: &[u8]| {
        let mut at = 0;
        while at + v.nal_length_size <= d.len() {
            let len = d[at..at + v.nal_length_size]
                .iter()
                .fold(0usize, |a, b| (a << 8) | usize::from(*b));
            at += v.nal_length_size;
            if at + len > d.len() {
                return false;
            }
            if sps_type(&d[at..at + len]) {
                return true;
            }
            at += len;
        }
        false
    };
    samples
        .iter()
        .map(|s| {
            if !s.keyframe || has_sps(&s.data) {
                return s.clone();
            }
            let extra: usize = v
                .parameter_sets
                .iter()
                .map(|ps| ps.len() + v.nal_length_size)
                .sum();
            let mut d = Vec::with_capacity(extra + s.data.len());
            for ps in &v.parameter_sets {
                let len = ps.len().to_be_bytes();
                d.extend_from_slice(&len[len.len() - v.nal_length_size..]);
                d.extend_from_slice(ps);
            }
            d.extend_from_slice(&s.data);
            Sample {
                data: d.into(),
                ..s.clone()
            }
        })
        .collect()
}

/// Per-sample metadata of a clip, kept between GetClip's two passes.
#[derive(Debug, Clone, Copy)]
pub struct SampleMeta {
    pub size: u32,
    pub duration: u32,
    pub cto: i64,
    pub keyframe: bool,
}

/// What one fragment contributes to a clip: its samples' metadata, video first, and
/// the sample entries they use.
#[derive(Debug, Clone)]
pub struct FragmentMeta {
    pub video: Vec<SampleMeta>,
    pub audio: Vec<SampleMeta>,
}

impl FragmentMeta {
    pub fn of(p: &Packaged) -> Self {
        let meta = |v: &[Sample]| {
            v.iter()
                .map(|s| SampleMeta {
                    size: s.data.len() as u32,
                    duration: s.duration,
                    cto: s.cto,
                    keyframe: s.keyframe,
                })
                .collect()
        };
        Self {
            video: meta(&p.video),
            audio: meta(&p.audio),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.video
            .iter()
            .chain(&self.audio)
            .map(|s| u64::from(s.size))
            .sum()
    }
}

/// The byte layout of a faststart MP4: `head` (ftyp, moov, free, mdat header) followed
/// by each fragment's video samples then audio samples, in fragment order.
#[derive(Debug)]
pub struct ClipLayout {
    pub head: Vec<u8>,
    /// Total file size.
    pub total: u64,
}

/// Builds the faststart head of a clip from every fragment's sample metadata and the
/// codec configuration each fragment uses (a change of configuration becomes a new
/// sample entry).
pub fn clip_layout(
    fragments: &[(FragmentMeta, std::sync::Arc<MediaConfig>)],
) -> Result<ClipLayout> {
    let counts = [
        fragments.iter().map(|(m, _)| m.video.len()).sum::<usize>(),
        fragments.iter().map(|(m, _)| m.audio.len()).sum::<usize>(),
    ];
    let mut m = Mp4FileMuxer::with_options(Mp4FileMuxerOptions {
        reserved_moov_box_size: mux::estimate_maximum_moov_box_size(&counts),
        creation_timestamp: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
        ..Default::default()
    })
    .map_err(mux_err)?;
    let mut head = m.initial_boxes_bytes().to_vec();
    let mut pos = head.len() as u64;
    for (meta, config) in fragments {
        let tracks = [
            (
                TrackKind::Video,
                &meta.video,
                config
                    .video
                    .as_ref()
                    .map(|v| (VIDEO_TIMESCALE, v.entry.clone())),
            ),
            (
                TrackKind::Audio,
                &meta.audio,
                config
                    .audio
                    .as_ref()
                    .map(|a| (a.sample_rate, a.entry.clone())),
            ),
        ];
        for (kind, samples, entry) in tracks {
            let Some((timescale, entry)) = entry else {
                continue;
            };
            for (i, s) in samples.iter().enumerate() {
                m.append_sample(&mux::Sample {
                    track_kind: kind,
                    sample_entry: (i == 0).then(|| entry.clone()),
                    keyframe: s.keyframe,
                    timescale: nz(timescale),
                    duration: s.duration,
                    composition_time_offset: (s.cto != 0).then_some(s.cto),
                    data_offset: pos,
                    data_size: s.size as usize,
                })
                .map_err(mux_err)?;
                pos += u64::from(s.size);
            }
        }
    }
    let fin = m.finalize().map_err(mux_err)?;
    if !fin.is_faststart_enabled() {
        return Err(Error::internal("clip moov did not fit the reserved space"));
    }
    for (off, bytes) in fin.offset_and_bytes_pairs() {
        let off = off as usize;
        if off + bytes.len() > head.len() {
            return Err(Error::internal("clip patch lies beyond the head"));
        }
        head[off..off + bytes.len()].copy_from_slice(bytes);
    }
    Ok(ClipLayout { head, total: pos })
}

/// The mdat payload of one fragment in clip order (video samples, then audio).
pub fn clip_payload(p: &Packaged) -> Vec<bytes::Bytes> {
    let mut v = Vec::with_capacity(p.video.len() + p.audio.len());
    if p.config.video.is_some() {
        v.extend(p.video.iter().map(|s| s.data.clone()));
    }
    if p.config.audio.is_some() {
        v.extend(p.audio.iter().map(|s| s.data.clone()));
    }
    v
}
