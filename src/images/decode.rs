//! Video decoders behind one small trait: H.264 through OpenH264 (always built) and H.265
//! through FFmpeg's libavcodec (cargo feature `hevc`, [`super::libav`]), which with that
//! feature also takes the H.264 streams OpenH264 cannot decode (4:2:2, 4:4:4, more than 8
//! bits; see [`sps::H264Format`]). Without it those are refused with the reason. Frames
//! arrive as stored in Matroska (length-prefixed NAL units, AVCC/HVCC), in decode order,
//! with the track's CodecPrivate (`avcC` / `hvcC` record) given when the decoder is made.
//!
//! The caller tags each frame with an id and its presentation time; a decoder hands each
//! picture it outputs (in display order, after its reorder delay) to a callback as a
//! [`Picture`] with the id of the frame it was decoded from, so the caller picks pictures
//! by the frames' presentation times. Converting to RGB costs time, so it happens only
//! for the pictures the caller asks for.

use std::sync::Mutex;

use bytes::Bytes;

use super::convert::Rgb;
use super::sps::{self, Codec};

/// Matroska codec ids.
pub const CODEC_H264: &str = "V_MPEG4/ISO/AVC";
pub const CODEC_H265: &str = "V_MPEGH/ISO/HEVC";

/// A decoding failure (the media is broken or unsupported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One decoded picture, converted to RGB on request.
pub trait Picture {
    fn to_rgb(&self) -> Result<Rgb, DecodeError>;
}

/// Receives each picture a decoder outputs, with the id of the frame it came from.
pub type Sink<'a> = dyn FnMut(u64, &dyn Picture) + 'a;

/// A video decoder for one codec configuration.
pub trait VideoDecoder: Send {
    /// Decodes one stored frame (the next in decode order), tagged `id`, whose
    /// presentation time is `pts`.
    fn decode(
        &mut self,
        frame: &[u8],
        id: u64,
        pts: i64,
        sink: &mut Sink<'_>,
    ) -> Result<(), DecodeError>;
    /// Outputs every picture still held for reordering. The decoder can be fed a new
    /// keyframe afterwards.
    fn flush(&mut self, sink: &mut Sink<'_>) -> Result<(), DecodeError>;
}

/// Whether this build can decode a codec.
pub fn supported(codec_id: &str) -> bool {
    codec_id == CODEC_H264 || (cfg!(feature = "hevc") && codec_id == CODEC_H265)
}

/// Makes a decoder for a track.
pub fn new_decoder(
    codec_id: &str,
    codec_private: &[u8],
) -> Result<Box<dyn VideoDecoder>, DecodeError> {
    match codec_id {
        CODEC_H264 => match H264::new(codec_private) {
            #[cfg(feature = "hevc")]
            Err(H264Error::Refused(_)) => Ok(Box::new(super::libav::Libav::new(
                Codec::H264,
                codec_private,
            )?)),
            Err(H264Error::Refused(why)) | Err(H264Error::Other(why)) => Err(why),
            Ok(d) => Ok(Box::new(d)),
        },
        #[cfg(feature = "hevc")]
        CODEC_H265 => Ok(Box::new(super::libav::Libav::new(
            Codec::H265,
            codec_private,
        )?)),
        #[cfg(not(feature = "hevc"))]
        CODEC_H265 => Err(DecodeError(
            "H.265 decoding is not built in (cargo feature `hevc`)".into(),
        )),
        other => Err(DecodeError(format!("no decoder for codec {other}"))),
    }
}

/// Idle decoders kept for reuse, keyed by codec id and CodecPrivate: making an OpenH264
/// decoder costs several milliseconds, about as much as decoding a 720p keyframe.
#[derive(Default)]
pub struct DecoderPool {
    idle: Mutex<Vec<(String, Bytes, Box<dyn VideoDecoder>)>>,
    max_idle: usize,
}

impl std::fmt::Debug for DecoderPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecoderPool")
            .field("max_idle", &self.max_idle)
            .finish()
    }
}

impl DecoderPool {
    pub fn new(max_idle: usize) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    /// An idle decoder for this configuration, or a new one.
    pub fn take(
        &self,
        codec_id: &str,
        codec_private: &Bytes,
    ) -> Result<Box<dyn VideoDecoder>, DecodeError> {
        {
            let mut idle = self.idle.lock().expect("decoder pool");
            if let Some(i) = idle
                .iter()
                .position(|(c, p, _)| c == codec_id && p == codec_private)
            {
                return Ok(idle.swap_remove(i).2);
            }
        }
        new_decoder(codec_id, codec_private)
    }

    /// Returns a decoder that finished cleanly (flushed) for reuse.
    pub fn give(&self, codec_id: &str, codec_private: Bytes, d: Box<dyn VideoDecoder>) {
        let mut idle = self.idle.lock().expect("decoder pool");
        if idle.len() >= self.max_idle {
            idle.remove(0);
        }
        idle.push((codec_id.to_owned(), codec_private, d));
    }
}

/// The parameter sets and NAL length size of an `avcC` record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AvcConfig {
    pub nal_length_size: usize,
    /// SPS and PPS NAL units, each with a 4-byte start code, concatenated.
    pub annexb_params: Vec<u8>,
}

/// Parses an `avcC` (AVCDecoderConfigurationRecord).
pub fn parse_avcc(cp: &[u8]) -> Result<AvcConfig, DecodeError> {
    let bad = || DecodeError("CodecPrivate is not a valid avcC record".into());
    if cp.len() < 7 || cp[0] != 1 {
        return Err(bad());
    }
    let nal_length_size = usize::from(cp[4] & 3) + 1;
    let mut out = Vec::new();
    let mut pos = 5;
    let mut sets = |count: usize, pos: &mut usize| -> Result<(), DecodeError> {
        for _ in 0..count {
            let len = usize::from(u16::from_be_bytes(
                cp.get(*pos..*pos + 2).ok_or_else(bad)?.try_into().unwrap(),
            ));
            let nal = cp.get(*pos + 2..*pos + 2 + len).ok_or_else(bad)?;
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
            *pos += 2 + len;
        }
        Ok(())
    };
    let nsps = usize::from(cp[5] & 0x1F);
    pos += 1;
    sets(nsps, &mut pos)?;
    let npps = usize::from(*cp.get(pos).ok_or_else(bad)?);
    pos += 1;
    sets(npps, &mut pos)?;
    Ok(AvcConfig {
        nal_length_size,
        annexb_params: out,
    })
}

/// Rewrites length-prefixed NAL units as Annex-B into `out` (appending).
pub fn length_prefixed_to_annexb(
    frame: &[u8],
    nal_length_size: usize,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    let mut pos = 0;
    while pos < frame.len() {
        let hdr = frame
            .get(pos..pos + nal_length_size)
            .ok_or_else(|| DecodeError("truncated NAL length".into()))?;
        let len = hdr.iter().fold(0usize, |a, b| (a << 8) | usize::from(*b));
        pos += nal_length_size;
        let nal = frame
            .get(pos..pos + len)
            .ok_or_else(|| DecodeError("NAL unit runs past the frame".into()))?;
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(nal);
        pos += len;
    }
    Ok(())
}

/// H.264 through OpenH264.
///
/// OpenH264 reorders to display order itself (no flush after each frame: that would push
/// a picture out ahead of the B-frames shown before it). It does not hand back a tag, so
/// each output picture is matched to the frame with the smallest presentation time among
/// those fed and not yet output; a frame fed after a later-shown picture already came out
/// would break that and is a decoding error instead of a wrong picture.
///
/// After a flush that emptied pictures out of its reorder buffer the OpenH264 instance is
/// replaced: single-threaded OpenH264 (2.x) does not release the picture buffers such a
/// flush hands out, and a reused instance runs out of them a few frames later
/// (`dsOutOfMemory`, "PrefetchPic ERROR").
pub struct H264 {
    decoder: openh264::decoder::Decoder,
    config: AvcConfig,
    buf: Vec<u8>,
    /// The next frame starts a GOP (new decoder, or flushed): the parameter sets go first.
    at_gop_start: bool,
    /// (pts, id) of the frames fed and not yet output.
    pending: Vec<(i64, u64)>,
    /// Presentation time of the last picture output since the last flush.
    last_out: Option<i64>,
}

/// Why an OpenH264 decoder was not made.
#[derive(Debug)]
pub enum H264Error {
    /// The SPS declares a profile or format OpenH264 cannot decode.
    Refused(DecodeError),
    Other(DecodeError),
}

// SAFETY: the OpenH264 decoder instance is plain heap state owned by this value; it is
// used by one thread at a time (`&mut self`), never shared.
unsafe impl Send for H264 {}

fn openh264_decoder() -> Result<openh264::decoder::Decoder, DecodeError> {
    use openh264::decoder::{Decoder, DecoderConfig, Flush};
    Decoder::with_api_config(
        openh264::OpenH264API::from_source(),
        DecoderConfig::new().flush_after_decode(Flush::NoFlush),
    )
    .map_err(|e| DecodeError(format!("openh264 init: {e}")))
}

impl H264 {
    pub fn new(codec_private: &[u8]) -> Result<Self, H264Error> {
        let config = if codec_private.is_empty() {
            // Annex-B producers carry SPS/PPS in band.
            AvcConfig {
                nal_length_size: 0,
                annexb_params: Vec::new(),
            }
        } else {
            parse_avcc(codec_private).map_err(H264Error::Other)?
        };
        if let Some(why) = sps::openh264_refusal(sps::nal_units(&config.annexb_params, 0)) {
            return Err(H264Error::Refused(DecodeError(why)));
        }
        Ok(Self {
            decoder: openh264_decoder().map_err(H264Error::Other)?,
            config,
            buf: Vec::new(),
            at_gop_start: true,
            pending: Vec::new(),
            last_out: None,
        })
    }
}

/// The id of the picture OpenH264 just output: the pending frame shown first (see
/// [`H264`]).
fn next_out(pending: &mut Vec<(i64, u64)>, last_out: &mut Option<i64>) -> Result<u64, DecodeError> {
    let i = (0..pending.len())
        .min_by_key(|&i| pending[i])
        .ok_or_else(|| DecodeError("openh264 output more pictures than frames".into()))?;
    let (pts, id) = pending.swap_remove(i);
    *last_out = Some(pts);
    Ok(id)
}

struct YuvPicture<'a>(&'a openh264::decoder::DecodedYUV<'a>);

impl Picture for YuvPicture<'_> {
    fn to_rgb(&self) -> Result<Rgb, DecodeError> {
        use openh264::formats::YUVSource;
        let (w, h) = self.0.dimensions();
        let mut data = vec![0u8; w * h * 3];
        self.0.write_rgb8(&mut data);
        Ok(Rgb {
            width: w as u32,
            height: h as u32,
            data,
        })
    }
}

impl VideoDecoder for H264 {
    fn decode(
        &mut self,
        frame: &[u8],
        id: u64,
        pts: i64,
        sink: &mut Sink<'_>,
    ) -> Result<(), DecodeError> {
        if self.last_out.is_some_and(|last| pts < last) {
            return Err(DecodeError(format!(
                "openh264 output a later picture before this frame's (pts {pts})"
            )));
        }
        self.buf.clear();
        // Parameter sets go in front of each GOP's keyframe: a decoder reused from
        // another fragment then always has them.
        if std::mem::take(&mut self.at_gop_start) {
            self.buf.extend_from_slice(&self.config.annexb_params);
        }
        if sps::is_annexb(frame, self.config.nal_length_size) {
            self.buf.extend_from_slice(frame);
        } else {
            length_prefixed_to_annexb(frame, self.config.nal_length_size, &mut self.buf)?;
        }
        // The decoded-size cap, before OpenH264 sizes its buffers from the SPS, and the
        // format check for in-band SPS (Annex-B producers).
        let nals = sps::nal_units(&self.buf, 0);
        sps::check_nals(Codec::H264, nals.iter().copied())?;
        if let Some(why) = sps::openh264_refusal(nals) {
            return Err(DecodeError(why));
        }
        self.pending.push((pts, id));
        match self.decoder.decode(&self.buf) {
            Ok(Some(yuv)) => {
                let id = next_out(&mut self.pending, &mut self.last_out)?;
                sink(id, &YuvPicture(&yuv));
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(DecodeError(format!("openh264: {e}"))),
        }
    }

    fn flush(&mut self, sink: &mut Sink<'_>) -> Result<(), DecodeError> {
        self.at_gop_start = true;
        self.last_out = None;
        let rest = self
            .decoder
            .flush_remaining()
            .map_err(|e| DecodeError(format!("openh264 flush: {e}")))?;
        let n = rest.len();
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_unstable();
        for (yuv, (_, id)) in rest.iter().zip(&pending) {
            sink(*id, &YuvPicture(yuv));
        }
        drop(rest);
        if n > 0 {
            self.decoder = openh264_decoder()?;
        }
        if n > pending.len() {
            return Err(DecodeError(
                "openh264 output more pictures than frames".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avcc_and_length_prefixes_become_annexb() {
        // version 1, profile/compat/level, 4-byte lengths, 1 SPS (3 bytes), 1 PPS (2 bytes).
        let cp = [
            1, 0x4D, 0, 0x1F, 0xFF, 0xE1, 0, 3, 0x67, 1, 2, 1, 0, 2, 0x68, 9,
        ];
        let c = parse_avcc(&cp).unwrap();
        assert_eq!(c.nal_length_size, 4);
        assert_eq!(
            c.annexb_params,
            vec![0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x68, 9]
        );
        let mut out = Vec::new();
        length_prefixed_to_annexb(&[0, 0, 0, 2, 0x65, 7, 0, 0, 0, 1, 0x06], 4, &mut out).unwrap();
        assert_eq!(out, vec![0, 0, 0, 1, 0x65, 7, 0, 0, 0, 1, 0x06]);
        assert!(length_prefixed_to_annexb(&[0, 0, 0, 9, 1], 4, &mut out).is_err());
        assert!(parse_avcc(&[1, 2, 3]).is_err());
    }

    #[test]
    fn unknown_codecs_have_no_decoder() {
        assert!(new_decoder("V_VP8", &[]).is_err());
        assert!(supported(CODEC_H264));
        assert!(!supported("V_VP9"));
    }
}
