//! H.265, and the H.264 streams OpenH264 cannot decode (4:2:2, 4:4:4, more than 8 bits),
//! through FFmpeg's libavcodec (ffmpeg-next; cargo feature `hevc`).
//!
//! Each packet carries its frame's id as its pts; libavcodec reorders to display order
//! and hands the pts back on the picture made from that packet, which is the id given to
//! the sink.

use ffmpeg_next as ff;

use super::convert::Rgb;
use super::decode::{DecodeError, Picture, Sink, VideoDecoder, parse_avcc};
use super::sps::{self, Codec};

pub struct Libav {
    codec: Codec,
    decoder: ff::decoder::Video,
    frame: ff::frame::Video,
    /// From the avcC / hvcC record (0 without a record: Annex-B frames).
    nal_length_size: usize,
    /// Set after `send_eof`: the next packet needs a codec flush first.
    drained: bool,
}

fn err(what: &str, e: ff::Error) -> DecodeError {
    DecodeError(format!("libavcodec {what}: {e}"))
}

impl Libav {
    pub fn new(codec: Codec, codec_private: &[u8]) -> Result<Self, DecodeError> {
        let (id, nal_length_size) = match codec {
            Codec::H264 => {
                let (params, n) = if codec_private.is_empty() {
                    (Vec::new(), 0)
                } else {
                    let c = parse_avcc(codec_private)?;
                    (c.annexb_params, c.nal_length_size)
                };
                sps::check_nals(codec, sps::nal_units(&params, 0))?;
                (ff::codec::Id::H264, n)
            }
            Codec::H265 => {
                let (params, n) = sps::hvcc_nals(codec_private);
                sps::check_nals(codec, params)?;
                (ff::codec::Id::HEVC, n)
            }
        };
        ff::init().map_err(|e| err("init", e))?;
        let found = ff::decoder::find(id)
            .ok_or_else(|| DecodeError(format!("libavcodec has no {id:?} decoder")))?;
        let mut ctx = ff::codec::context::Context::new_with_codec(found);
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
            codec,
            decoder,
            frame: ff::frame::Video::empty(),
            nal_length_size,
            drained: false,
        })
    }

    fn receive(&mut self, sink: &mut Sink<'_>) -> Result<(), DecodeError> {
        loop {
            match self.decoder.receive_frame(&mut self.frame) {
                Ok(()) => {
                    let id = self
                        .frame
                        .pts()
                        .and_then(|p| u64::try_from(p).ok())
                        .ok_or_else(|| DecodeError("libavcodec lost a picture's pts".into()))?;
                    sink(id, &FfPicture(&self.frame));
                }
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

impl VideoDecoder for Libav {
    fn decode(
        &mut self,
        frame: &[u8],
        id: u64,
        _pts: i64,
        sink: &mut Sink<'_>,
    ) -> Result<(), DecodeError> {
        sps::check_nals(self.codec, sps::nal_units(frame, self.nal_length_size))?;
        if self.drained {
            self.decoder.flush();
            self.drained = false;
        }
        let mut pkt = ff::Packet::copy(frame);
        let pts = i64::try_from(id).map_err(|_| DecodeError("frame id out of range".into()))?;
        pkt.set_pts(Some(pts));
        pkt.set_dts(None);
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
