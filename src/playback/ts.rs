//! MPEG-TS segments for HLS `MPEG_TS` sessions, one per stored fragment, written with
//! the mpeg2ts crate at packet level: PAT + PMT, then PES packets interleaved by decode
//! time. Video access units get an AUD, the parameter sets before keyframes and Annex-B
//! start codes; AAC frames get ADTS headers. PCR rides on the video PID (audio PID for
//! audio-only streams). Each segment stands alone: the first packet of every PID sets
//! the discontinuity indicator so demuxers accept continuity counters that restart.
//! PTS/DTS are the producer time at 90 kHz modulo 2^33.

use mpeg2ts::es::{StreamId, StreamType};
use mpeg2ts::pes::PesHeader;
use mpeg2ts::time::{ClockReference, Timestamp};
use mpeg2ts::ts::payload::{self, Pat, Pmt};
use mpeg2ts::ts::{
    AdaptationField, ContinuityCounter, EsInfo, Pid, ProgramAssociation,
    TransportScramblingControl, TsHeader, TsPacket, TsPacketWriter, TsPayload, VersionNumber,
    WriteTsPacket,
};

use super::{AudioConfig, Packaged, Sample, VIDEO_TIMESCALE, VideoCodec, VideoConfig};
use crate::error::{Error, Result};

const PMT_PID: u16 = 0x1000;
const VIDEO_PID: u16 = 0x100;
const AUDIO_PID: u16 = 0x101;
const PTS_WRAP: i64 = 1 << 33;

fn ts_err(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("MPEG-TS muxing failed: {e}"))
}

fn pid(v: u16) -> Pid {
    Pid::new(v).expect("valid PID")
}

fn stamp(t90: i64) -> Timestamp {
    Timestamp::new(t90.rem_euclid(PTS_WRAP) as u64).expect("33-bit timestamp")
}

/// One PES packet waiting to be written.
struct Pes {
    pid: u16,
    stream_id: u8,
    dts: i64,
    pts: i64,
    with_dts: bool,
    pcr: bool,
    random_access: bool,
    data: Vec<u8>,
}

struct Writer {
    out: TsPacketWriter<Vec<u8>>,
    cc: [(u16, u8, bool); 4],
}

impl Writer {
    /// Next continuity counter of `pid` and whether this is its first packet.
    fn cc(&mut self, pid: u16) -> (ContinuityCounter, bool) {
        let slot = self.cc.iter_mut().find(|c| c.0 == pid).expect("known PID");
        let v = slot.1;
        slot.1 = (slot.1 + 1) & 0x0F;
        let first = !slot.2;
        slot.2 = true;
        (ContinuityCounter::from_u8(v).expect("4-bit"), first)
    }

    fn header(&mut self, p: u16) -> (TsHeader, bool) {
        let (continuity_counter, first) = self.cc(p);
        (
            TsHeader {
                transport_error_indicator: false,
                transport_priority: false,
                pid: pid(p),
                transport_scrambling_control: TransportScramblingControl::NotScrambled,
                continuity_counter,
            },
            first,
        )
    }

    fn adaptation(discontinuity: bool, random_access: bool, pcr: Option<i64>) -> AdaptationField {
        AdaptationField {
            discontinuity_indicator: discontinuity,
            random_access_indicator: random_access,
            es_priority_indicator: false,
            pcr: pcr.map(|t| {
                ClockReference::new(t.rem_euclid(PTS_WRAP) as u64 * 300).expect("PCR range")
            }),
            opcr: None,
            splice_countdown: None,
            transport_private_data: Vec::new(),
            extension: None,
        }
    }

    fn psi(&mut self, p: u16, payload: TsPayload) -> Result<()> {
        let (header, first) = self.header(p);
        self.out
            .write_ts_packet(&TsPacket {
                header,
                adaptation_field: first.then(|| Self::adaptation(true, false, None)),
                payload: Some(payload),
            })
            .map_err(ts_err)
    }

    fn pes(&mut self, pes: Pes) -> Result<()> {
        let header = PesHeader {
            stream_id: StreamId::new(pes.stream_id),
            priority: false,
            data_alignment_indicator: true,
            copyright: false,
            original_or_copy: false,
            pts: Some(stamp(pes.pts)),
            dts: pes.with_dts.then(|| stamp(pes.dts)),
            escr: None,
        };
        let optional = 3 + 5 + if pes.with_dts { 5 } else { 0 };
        let total = optional + pes.data.len();
        // Video PES may be longer than the 16-bit length field: 0 means "unbounded".
        let pes_packet_len = if pes.pid == VIDEO_PID || total > usize::from(u16::MAX) {
            0
        } else {
            total as u16
        };
        let (h, first) = self.header(pes.pid);
        let af = (first || pes.pcr || pes.random_access)
            .then(|| Self::adaptation(first, pes.random_access, pes.pcr.then_some(pes.dts)));
        let af_len = af.as_ref().map_or(0, |_| 2 + if pes.pcr { 6 } else { 0 });
        let room = payload::Bytes::MAX_SIZE - 6 - optional - af_len;
        let n = room.min(pes.data.len());
        self.out
            .write_ts_packet(&TsPacket {
                header: h,
                adaptation_field: af,
                payload: Some(TsPayload::PesStart(payload::Pes {
                    header,
                    pes_packet_len,
                    data: payload::Bytes::new(&pes.data[..n]).map_err(ts_err)?,
                })),
            })
            .map_err(ts_err)?;
        for chunk in pes.data[n..].chunks(payload::Bytes::MAX_SIZE) {
            let (h, _) = self.header(pes.pid);
            self.out
                .write_ts_packet(&TsPacket {
                    header: h,
                    adaptation_field: None,
                    payload: Some(TsPayload::PesContinuation(
                        payload::Bytes::new(chunk).map_err(ts_err)?,
                    )),
                })
                .map_err(ts_err)?;
        }
        Ok(())
    }
}

fn annex_b_access_unit(v: &VideoConfig, s: &Sample) -> Result<Vec<u8>> {
    const SC: [u8; 4] = [0, 0, 0, 1];
    let mut out = Vec::with_capacity(s.data.len() + 64);
    match v.codec {
        VideoCodec::H264 => out.extend_from_slice(&[0, 0, 0, 1, 0x09, 0xF0]),
        VideoCodec::H265 => out.extend_from_slice(&[0, 0, 0, 1, 0x46, 0x01, 0x50]),
    }
    if s.keyframe {
        for ps in &v.parameter_sets {
            out.extend_from_slice(&SC);
            out.extend_from_slice(ps);
        }
    }
    let d = &s.data[..];
    let mut at = 0;
    while at < d.len() {
        if at + v.nal_length_size > d.len() {
            return Err(Error::new(
                crate::error::ErrorKind::InvalidMediaFrame,
                "video frame has a truncated NAL length prefix",
            ));
        }
        let len = d[at..at + v.nal_length_size]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        at += v.nal_length_size;
        if len == 0 || at + len > d.len() {
            return Err(Error::new(
                crate::error::ErrorKind::InvalidMediaFrame,
                "video frame NAL unit exceeds the frame",
            ));
        }
        let nal = &d[at..at + len];
        let is_aud = match v.codec {
            VideoCodec::H264 => nal[0] & 0x1F == 9,
            VideoCodec::H265 => (nal[0] >> 1) & 0x3F == 35,
        };
        if !is_aud {
            out.extend_from_slice(&SC);
            out.extend_from_slice(nal);
        }
        at += len;
    }
    Ok(out)
}

fn adts(a: &AudioConfig, raw: &[u8]) -> Vec<u8> {
    let len = raw.len() + 7;
    let profile = a.object_type.saturating_sub(1).min(3);
    let mut h = vec![
        0xFF,
        0xF1,
        (profile << 6) | ((a.frequency_index & 0x0F) << 2) | ((a.channel_config >> 2) & 1),
        ((a.channel_config & 3) << 6) | ((len >> 11) as u8 & 0x03),
        (len >> 3) as u8,
        (((len & 7) as u8) << 5) | 0x1F,
        0xFC,
    ];
    h.extend_from_slice(raw);
    h
}

/// The MPEG-TS segment of one packaged fragment.
pub fn segment(p: &Packaged) -> Result<Vec<u8>> {
    let video = p.config.video.as_ref();
    let audio = p.config.audio.as_ref();
    let pcr_pid = if video.is_some() {
        VIDEO_PID
    } else {
        AUDIO_PID
    };
    let mut w = Writer {
        out: TsPacketWriter::new(Vec::with_capacity(
            (p.media_bytes() as usize) * 188 / 180 + 4096,
        )),
        cc: [
            (0, 0, false),
            (PMT_PID, 0, false),
            (VIDEO_PID, 0, false),
            (AUDIO_PID, 0, false),
        ],
    };
    w.psi(
        0,
        TsPayload::Pat(Pat {
            transport_stream_id: 1,
            version_number: VersionNumber::default(),
            table: vec![ProgramAssociation {
                program_num: 1,
                program_map_pid: pid(PMT_PID),
            }],
        }),
    )?;
    let mut es_info = Vec::new();
    if let Some(v) = video {
        es_info.push(EsInfo {
            stream_type: match v.codec {
                VideoCodec::H264 => StreamType::H264,
                VideoCodec::H265 => StreamType::H265,
            },
            elementary_pid: pid(VIDEO_PID),
            descriptors: Vec::new(),
        });
    }
    if audio.is_some() {
        es_info.push(EsInfo {
            stream_type: StreamType::AdtsAac,
            elementary_pid: pid(AUDIO_PID),
            descriptors: Vec::new(),
        });
    }
    w.psi(
        PMT_PID,
        TsPayload::Pmt(Pmt {
            program_num: 1,
            pcr_pid: Some(pid(pcr_pid)),
            version_number: VersionNumber::default(),
            program_info: Vec::new(),
            es_info,
        }),
    )?;
    // Merge the two tracks by decode time (both converted to 90 kHz).
    let mut vi = p.video.iter().peekable();
    let mut ai = p.audio.iter().peekable();
    let a_rate = audio.map_or(1, |a| a.sample_rate.max(1)) as i64;
    let to90 = |t: i64| (i128::from(t) * i128::from(VIDEO_TIMESCALE) / i128::from(a_rate)) as i64;
    loop {
        let take_video = match (vi.peek(), ai.peek()) {
            (Some(v), Some(a)) => v.dts <= to90(a.dts),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        if take_video {
            let (Some(s), Some(v)) = (vi.next(), video) else {
                break;
            };
            w.pes(Pes {
                pid: VIDEO_PID,
                stream_id: 0xE0,
                dts: s.dts,
                pts: s.dts.saturating_add(s.cto),
                with_dts: true,
                pcr: true,
                random_access: s.keyframe,
                data: annex_b_access_unit(v, s)?,
            })?;
        } else {
            let (Some(s), Some(a)) = (ai.next(), audio) else {
                break;
            };
            let t = to90(s.dts);
            w.pes(Pes {
                pid: AUDIO_PID,
                stream_id: 0xC0,
                dts: t,
                pts: t,
                with_dts: false,
                pcr: video.is_none(),
                random_access: false,
                data: adts(a, &s.data),
            })?;
        }
    }
    Ok(w.out.into_stream())
}
