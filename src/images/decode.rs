//! Video decoders behind one small trait: H.264 through OpenH264 (always built) and H.265
//! through FFmpeg's libavcodec (cargo feature `hevc`). Frames arrive as stored in
//! Matroska (length-prefixed NAL units, AVCC/HVCC), with the track's CodecPrivate
//! (`avcC` / `hvcC` record) given when the decoder is made.
//!
//! A decoder hands each picture it outputs to a callback as a [`Picture`]; converting to
//! RGB costs time, so it happens only for the pictures the caller asks for.

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

/// Receives each picture a decoder outputs, in display order.
pub type Sink<'a> = dyn FnMut(&dyn Picture) + 'a;

/// A video decoder for one codec configuration.
pub trait VideoDecoder: Send {
    /// Decodes one stored frame.
    fn decode(&mut self, frame: &[u8], sink: &mut Sink<'_>) -> Result<(), DecodeError>;
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
        CODEC_H264 => Ok(Box::new(H264::new(codec_private)?)),
        #[cfg(feature = "hevc")]
        CODEC_H265 => Ok(Box::new(hevc::Hevc::new(codec_private)?)),
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

/// Whether a frame is already Annex-B (starts with a start code).
fn is_annexb(frame: &[u8]) -> bool {
    frame.starts_with(&[0, 0, 0, 1]) || frame.starts_with(&[0, 0, 1])
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
pub struct H264 {
    decoder: openh264::decoder::Decoder,
    config: AvcConfig,
    buf: Vec<u8>,
}

// SAFETY: the OpenH264 decoder instance is plain heap state owned by this value; it is
// used by one thread at a time (`&mut self`), never shared.
unsafe impl Send for H264 {}

impl H264 {
    pub fn new(codec_private: &[u8]) -> Result<Self, DecodeError> {
        let config = if codec_private.is_empty() {
            // Annex-B producers carry SPS/PPS in band.
            AvcConfig {
                nal_length_size: 0,
                annexb_params: Vec::new(),
            }
        } else {
            parse_avcc(codec_private)?
        };
        let decoder = openh264::decoder::Decoder::new()
            .map_err(|e| DecodeError(format!("openh264 init: {e}")))?;
        Ok(Self {
            decoder,
            config,
            buf: Vec::new(),
        })
    }
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
    fn decode(&mut self, frame: &[u8], sink: &mut Sink<'_>) -> Result<(), DecodeError> {
        self.buf.clear();
        // Parameter sets go in front of every access unit: they are tiny, and a decoder
        // reused from another fragment (or a keyframe-only decode) then always has them.
        self.buf.extend_from_slice(&self.config.annexb_params);
        if self.config.nal_length_size == 0 || is_annexb(frame) {
            self.buf.extend_from_slice(frame);
        } else {
            length_prefixed_to_annexb(frame, self.config.nal_length_size, &mut self.buf)?;
        }
        // The decoded-size cap, before OpenH264 sizes its buffers from the SPS.
        sps::check_nals(Codec::H264, sps::nal_units(&self.buf, 0))?;
        match self.decoder.decode(&self.buf) {
            Ok(Some(yuv)) => {
                sink(&YuvPicture(&yuv));
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(DecodeError(format!("openh264: {e}"))),
        }
    }

    fn flush(&mut self, sink: &mut Sink<'_>) -> Result<(), DecodeError> {
        let rest = self
            .decoder
            .flush_remaining()
            .map_err(|e| DecodeError(format!("openh264 flush: {e}")))?;
        for yuv in &rest {
            sink(&YuvPicture(yuv));
        }
        Ok(())
    }
}

#[cfg(feature = "hevc")]
mod hevc {
    //! H.265 through libavcodec (ffmpeg-next).

    use ffmpeg_next as ff;

    use super::{Codec, DecodeError, Picture, Rgb, Sink, VideoDecoder, sps};

    pub struct Hevc {
        decoder: ff::decoder::Video,
        frame: ff::frame::Video,
        /// From the hvcC record (4 without one; Annex-B frames are recognised).
        nal_length_size: usize,
        /// Set after `send_eof`: the next packet needs a codec flush first.
        drained: bool,
    }

    fn err(what: &str, e: ff::Error) -> DecodeError {
        DecodeError(format!("libavcodec {what}: {e}"))
    }

    impl Hevc {
        pub fn new(codec_private: &[u8]) -> Result<Self, DecodeError> {
            let (params, nal_length_size) = sps::hvcc_nals(codec_private);
            sps::check_nals(Codec::H265, params)?;
            ff::init().map_err(|e| err("init", e))?;
            let codec = ff::decoder::find(ff::codec::Id::HEVC)
                .ok_or_else(|| DecodeError("libavcodec has no HEVC decoder".into()))?;
            let mut ctx = ff::codec::context::Context::new_with_codec(codec);
            if !codec_private.is_empty() {
                // SAFETY: extradata is allocated with av_mallocz (padding included, as
                // libavcodec requires) and owned by the context, which frees it.
                unsafe {
                    let raw = ctx.as_mut_ptr();
                    let pad = ff::ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize;
                    let p = ff::ffi::av_mallocz(codec_private.len() + pad) as *mut u8;
                    if p.is_null() {
                        return Err(DecodeError("out of memory".into()));
                    }
                    std::ptr::copy_nonoverlapping(codec_private.as_ptr(), p, codec_private.len());
                    (*raw).extradata = p;
                    (*raw).extradata_size = codec_private.len() as i32;
                }
            }
            // SAFETY: a plain field of the context this function owns. libavcodec refuses
            // larger pictures itself too (the SPS check below covers in-band SPS first).
            unsafe {
                (*ctx.as_mut_ptr()).max_pixels = sps::MAX_PICTURE_PIXELS as i64;
            }
            ctx.set_threading(ff::threading::Config {
                kind: ff::threading::Type::None,
                count: 1,
                ..Default::default()
            });
            let decoder = ctx.decoder().video().map_err(|e| err("open", e))?;
            Ok(Self {
                decoder,
                frame: ff::frame::Video::empty(),
                nal_length_size,
                drained: false,
            })
        }

        fn receive(&mut self, sink: &mut Sink<'_>) -> Result<(), DecodeError> {
            loop {
                match self.decoder.receive_frame(&mut self.frame) {
                    Ok(()) => sink(&FfPicture(&self.frame)),
                    Err(ff::Error::Other { errno }) if errno == ff::util::error::EAGAIN => {
                        return Ok(());
                    }
                    Err(ff::Error::Eof) => return Ok(()),
                    Err(e) => return Err(err("decode", e)),
                }
            }
        }
    }

    struct FfPicture<'a>(&'a ff::frame::Video);

    impl Picture for FfPicture<'_> {
        fn to_rgb(&self) -> Result<Rgb, DecodeError> {
            let f = self.0;
            let (w, h) = (f.width(), f.height());
            let mut sws = ff::software::scaling::Context::get(
                f.format(),
                w,
                h,
                ff::format::Pixel::RGB24,
                w,
                h,
                ff::software::scaling::Flags::BILINEAR,
            )
            .map_err(|e| err("swscale", e))?;
            let mut out = ff::frame::Video::empty();
            sws.run(f, &mut out).map_err(|e| err("swscale", e))?;
            let stride = out.stride(0);
            let row = w as usize * 3;
            let src = out.data(0);
            let mut data = Vec::with_capacity(row * h as usize);
            for y in 0..h as usize {
                data.extend_from_slice(&src[y * stride..y * stride + row]);
            }
            Ok(Rgb {
                width: w,
                height: h,
                data,
            })
        }
    }

    impl VideoDecoder for Hevc {
        fn decode(&mut self, frame: &[u8], sink: &mut Sink<'_>) -> Result<(), DecodeError> {
            sps::check_nals(Codec::H265, sps::nal_units(frame, self.nal_length_size))?;
            if self.drained {
                self.decoder.flush();
                self.drained = false;
            }
            let pkt = ff::Packet::copy(frame);
            self.decoder.send_packet(&pkt).map_err(|e| err("send", e))?;
            self.receive(sink)
        }

        fn flush(&mut self, sink: &mut Sink<'_>) -> Result<(), DecodeError> {
            if self.drained {
                return Ok(());
            }
            self.decoder.send_eof().map_err(|e| err("eof", e))?;
            self.drained = true;
            self.receive(sink)
        }
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
