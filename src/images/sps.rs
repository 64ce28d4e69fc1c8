//! What a stream's sequence parameter sets declare, checked before a decoder sees a
//! frame (or a CodecPrivate record):
//!
//! - the decoded-size cap: the picture size an H.264 or H.265 SPS declares is checked
//!   against [`MAX_PICTURE_PIXELS`] and [`MAX_PICTURE_SIDE`], so a hostile stream cannot
//!   make a decoder allocate frame buffers for a giant picture;
//! - the H.264 sample format ([`H264Format`]: profile, chroma format, bit depth), so a
//!   stream OpenH264 cannot decode (it decodes 4:2:0 and 4:0:0 at 8 bits, profiles
//!   Baseline to High) is refused with the reason, not fed to it.
//!
//! Only the SPS fields up to the picture size are parsed; an SPS too broken to read that
//! far is left to the decoder.

use super::decode::DecodeError;

/// Most luma samples in one picture: 8192 × 4320 (8K UHD, the largest H.264 level 6.2 and
/// H.265 level 6.x picture), 35.4 Mpx.
pub const MAX_PICTURE_PIXELS: u64 = 8192 * 4320;
/// Longest picture side, in luma samples.
pub const MAX_PICTURE_SIDE: u64 = 16_384;

/// Which bitstream syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    H264,
    H265,
}

/// Checks every SPS among `nals` (NAL units without start codes or lengths).
pub fn check_nals<'a>(
    codec: Codec,
    nals: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(), DecodeError> {
    for nal in nals {
        let size = match codec {
            Codec::H264 if nal.first().is_some_and(|h| h & 0x1F == 7) => h264_sps_size(nal),
            Codec::H265 if nal.first().is_some_and(|h| (h >> 1) & 0x3F == 33) => h265_sps_size(nal),
            _ => continue,
        };
        if let Some((w, h)) = size
            && (w.saturating_mul(h) > MAX_PICTURE_PIXELS
                || w > MAX_PICTURE_SIDE
                || h > MAX_PICTURE_SIDE)
        {
            return Err(DecodeError(format!(
                "picture size above the cap: width={w} height={h} max_pixels={MAX_PICTURE_PIXELS} max_side={MAX_PICTURE_SIDE}"
            )));
        }
    }
    Ok(())
}

/// Whether a frame is Annex-B (start codes) rather than `nal_length_size`-byte
/// length-prefixed NAL units: always when `nal_length_size` is 0; else only when the
/// length prefixes do not span the frame exactly and it starts with a start code. The
/// start alone does not tell: a 4-byte length of 256 to 511 (`00 00 01 xx`) reads as a
/// start code, and such NAL units are common (OpenH264's P-slices at low rates).
pub fn is_annexb(frame: &[u8], nal_length_size: usize) -> bool {
    if nal_length_size == 0 {
        return true;
    }
    let starts = frame.starts_with(&[0, 0, 1]) || frame.starts_with(&[0, 0, 0, 1]);
    starts && !spans_exactly(frame, nal_length_size)
}

/// Whether `nal_length_size`-byte length prefixes walk `frame` to its exact end.
fn spans_exactly(frame: &[u8], nal_length_size: usize) -> bool {
    let mut pos = 0usize;
    while pos < frame.len() {
        let Some(hdr) = frame.get(pos..pos.saturating_add(nal_length_size)) else {
            return false;
        };
        let len = hdr.iter().fold(0usize, |a, b| (a << 8) | usize::from(*b));
        pos = match (pos + nal_length_size).checked_add(len) {
            Some(end) if end <= frame.len() => end,
            _ => return false,
        };
    }
    true
}

/// The NAL units of a frame: Annex-B (start codes) when [`is_annexb`], else
/// length-prefixed (a truncated tail is dropped).
pub fn nal_units(frame: &[u8], nal_length_size: usize) -> Vec<&[u8]> {
    if is_annexb(frame, nal_length_size) {
        return frame
            .split_start_codes()
            .filter(|n| !n.is_empty())
            .collect();
    }
    let mut out = Vec::new();
    let mut pos = 0usize;
    while let Some(hdr) = frame.get(pos..pos.saturating_add(nal_length_size)) {
        let len = hdr.iter().fold(0usize, |a, b| (a << 8) | usize::from(*b));
        let start = pos + nal_length_size;
        let Some(nal) = start.checked_add(len).and_then(|end| frame.get(start..end)) else {
            break;
        };
        out.push(nal);
        pos = start + len;
    }
    out
}

trait StartCodes {
    fn split_start_codes(&self) -> impl Iterator<Item = &[u8]>;
}

impl StartCodes for [u8] {
    /// The pieces between `00 00 01` start codes (trailing zero bytes of a 4-byte start
    /// code stay on the previous piece; SPS parsing does not read that far).
    fn split_start_codes(&self) -> impl Iterator<Item = &[u8]> {
        let mut starts = Vec::new();
        let mut i = 0;
        while i + 3 <= self.len() {
            if self[i] == 0 && self[i + 1] == 0 && self[i + 2] == 1 {
                starts.push(i + 3);
                i += 3;
            } else {
                i += 1;
            }
        }
        let ends: Vec<usize> = starts
            .iter()
            .skip(1)
            .map(|s| s - 3)
            .chain(std::iter::once(self.len()))
            .collect();
        starts.into_iter().zip(ends).map(|(s, e)| &self[s..e])
    }
}

/// An RBSP bit reader (emulation prevention bytes removed up front).
struct Bits {
    data: Vec<u8>,
    pos: usize,
}

impl Bits {
    fn new(nal_payload: &[u8]) -> Self {
        let mut data = Vec::with_capacity(nal_payload.len());
        let mut zeros = 0;
        for &b in nal_payload {
            if zeros >= 2 && b == 3 {
                zeros = 0;
                continue;
            }
            zeros = if b == 0 { zeros + 1 } else { 0 };
            data.push(b);
        }
        Self { data, pos: 0 }
    }

    fn bit(&mut self) -> Option<u64> {
        let byte = *self.data.get(self.pos / 8)?;
        let v = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(u64::from(v))
    }

    fn bits(&mut self, n: u32) -> Option<u64> {
        (0..n).try_fold(0u64, |a, _| Some((a << 1) | self.bit()?))
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.pos = self.pos.checked_add(n)?;
        (self.pos <= self.data.len() * 8).then_some(())
    }

    /// Exp-Golomb ue(v), at most 32 leading zeros.
    fn ue(&mut self) -> Option<u64> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 32 {
                return None;
            }
        }
        Some((1u64 << zeros) - 1 + self.bits(zeros)?)
    }

    fn se(&mut self) -> Option<i64> {
        let k = self.ue()?;
        let m = k.div_ceil(2) as i64;
        Some(if k % 2 == 1 { m } else { -m })
    }
}

/// The sample format an H.264 SPS declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H264Format {
    pub profile_idc: u8,
    /// 0 = 4:0:0, 1 = 4:2:0, 2 = 4:2:2, 3 = 4:4:4.
    pub chroma_format_idc: u64,
    pub bit_depth_luma: u64,
    pub bit_depth_chroma: u64,
}

impl H264Format {
    /// Why OpenH264 cannot decode this format, or `None` when it can: it takes profiles
    /// Baseline, Main, Extended and High (and the SVC ones) with 4:2:0 or 4:0:0 samples
    /// of 8 bits.
    pub fn openh264_refusal(&self) -> Option<String> {
        let profile_ok = [66, 77, 88, 100, 83, 86].contains(&self.profile_idc);
        let format_ok =
            self.chroma_format_idc <= 1 && self.bit_depth_luma == 8 && self.bit_depth_chroma == 8;
        (!profile_ok || !format_ok).then(|| {
            format!(
                "OpenH264 cannot decode this H.264 stream (it decodes Baseline to High, 4:2:0, 8-bit): profile={} ({}) chroma={} bit_depth={}-bit",
                profile_name(self.profile_idc),
                self.profile_idc,
                ["4:0:0", "4:2:0", "4:2:2", "4:4:4"]
                    .get(self.chroma_format_idc as usize)
                    .unwrap_or(&"invalid"),
                self.bit_depth_luma.max(self.bit_depth_chroma),
            )
        })
    }
}

/// The name of an H.264 `profile_idc`.
pub fn profile_name(profile_idc: u8) -> &'static str {
    match profile_idc {
        66 => "Baseline",
        77 => "Main",
        88 => "Extended",
        100 => "High",
        110 => "High 10",
        122 => "High 4:2:2",
        244 => "High 4:4:4 Predictive",
        44 => "CAVLC 4:4:4 Intra",
        83 | 86 => "Scalable",
        118 | 128 | 134 | 135 | 138 | 139 => "Multiview/3D",
        _ => "unknown",
    }
}

/// The first SPS among `nals` (H.264) that OpenH264 cannot decode, as the reason.
pub fn openh264_refusal<'a>(nals: impl IntoIterator<Item = &'a [u8]>) -> Option<String> {
    nals.into_iter()
        .filter(|n| n.first().is_some_and(|h| h & 0x1F == 7))
        .filter_map(|n| h264_sps_head(&mut Bits::new(n.get(1..)?)))
        .find_map(|f| f.openh264_refusal())
}

/// Profiles whose SPS carries chroma format, bit depths and scaling lists.
const HIGH_PROFILES: [u8; 13] = [100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135];

/// Reads an H.264 SPS up to and including the bit depths (`r` at the NAL payload).
fn h264_sps_head(r: &mut Bits) -> Option<H264Format> {
    let profile_idc = r.bits(8)? as u8;
    r.skip(16)?; // constraint flags, level
    r.ue()?; // seq_parameter_set_id
    let mut f = H264Format {
        profile_idc,
        chroma_format_idc: 1,
        bit_depth_luma: 8,
        bit_depth_chroma: 8,
    };
    if HIGH_PROFILES.contains(&profile_idc) {
        f.chroma_format_idc = r.ue()?;
        if f.chroma_format_idc == 3 {
            r.skip(1)?; // separate_colour_plane_flag
        }
        f.bit_depth_luma = r.ue()?.saturating_add(8);
        f.bit_depth_chroma = r.ue()?.saturating_add(8);
    }
    Some(f)
}

/// Width and height in luma samples (before cropping) an H.264 SPS declares.
pub fn h264_sps_size(nal: &[u8]) -> Option<(u64, u64)> {
    let mut r = Bits::new(nal.get(1..)?);
    let f = h264_sps_head(&mut r)?;
    if HIGH_PROFILES.contains(&f.profile_idc) {
        r.skip(1)?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? == 1 {
            let lists = if f.chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i64, 8i64);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + r.se()? + 256).rem_euclid(256);
                        }
                        if next != 0 {
                            last = next;
                        }
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.skip(1)?;
            r.se()?;
            r.se()?;
            let n = r.ue()?;
            if n > 255 {
                return None;
            }
            for _ in 0..n {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.skip(1)?; // gaps_in_frame_num_value_allowed_flag
    let w = r.ue()? + 1;
    let h = r.ue()? + 1;
    let frame_mbs_only = r.bit()?;
    Some((w * 16, h * 16 * (2 - frame_mbs_only)))
}

/// Width and height in luma samples (before cropping) an H.265 SPS declares.
pub fn h265_sps_size(nal: &[u8]) -> Option<(u64, u64)> {
    let mut r = Bits::new(nal.get(2..)?);
    r.skip(4)?; // sps_video_parameter_set_id
    let sub_layers = r.bits(3)? as usize; // sps_max_sub_layers_minus1
    r.skip(1)?; // temporal_id_nesting
    r.skip(96)?; // general profile (88 bits) and level (8 bits)
    let mut present = Vec::with_capacity(sub_layers);
    for _ in 0..sub_layers {
        present.push((r.bit()?, r.bit()?));
    }
    if sub_layers > 0 {
        r.skip(2 * (8 - sub_layers))?;
    }
    for (profile, level) in present {
        r.skip(88 * profile as usize + 8 * level as usize)?;
    }
    r.ue()?; // sps_seq_parameter_set_id
    if r.ue()? == 3 {
        r.skip(1)?; // separate_colour_plane_flag
    }
    Some((r.ue()?, r.ue()?))
}

/// The parameter-set NAL units of an `hvcC` record, and its NAL length size.
pub fn hvcc_nals(cp: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut out = Vec::new();
    let nal_length_size = cp.get(21).map_or(4, |b| usize::from(b & 3) + 1);
    let Some(&arrays) = cp.get(22) else {
        return (out, nal_length_size);
    };
    let mut pos = 23usize;
    for _ in 0..arrays {
        let Some(n) = cp.get(pos + 1..pos + 3) else {
            break;
        };
        let n = u16::from_be_bytes([n[0], n[1]]);
        pos += 3;
        for _ in 0..n {
            let Some(l) = cp.get(pos..pos + 2) else {
                return (out, nal_length_size);
            };
            let l = usize::from(u16::from_be_bytes([l[0], l[1]]));
            let Some(nal) = cp.get(pos + 2..pos + 2 + l) else {
                return (out, nal_length_size);
            };
            out.push(nal);
            pos += 2 + l;
        }
    }
    (out, nal_length_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A length-prefixed P-slice of 300 bytes starts `00 00 01 2C`, which also reads as a
    /// start code: the length walk decides (OpenH264 via GStreamer writes such frames).
    #[test]
    fn length_prefixes_that_look_like_start_codes() {
        let mut frame = vec![0, 0, 1, 0x2C, 0x61];
        frame.resize(4 + 300, 0x9A);
        assert!(!is_annexb(&frame, 4));
        assert_eq!(nal_units(&frame, 4), vec![&frame[4..]]);
        // Two NAL units, the second also 256–511 bytes long.
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        assert_eq!(nal_units(&two, 4).len(), 2);
        // Real Annex-B (the prefixes do not span the frame) and no avcC.
        let annexb = [0, 0, 0, 1, 0x67, 0x42, 0, 0, 1, 0x68, 0xCE];
        assert!(is_annexb(&annexb, 4));
        assert_eq!(nal_units(&annexb, 4).len(), 2);
        assert!(is_annexb(&frame, 0));
        // Length-prefixed with a first length that is no start code.
        assert!(!is_annexb(&[0, 0, 0, 2, 0x65, 7], 4));
    }

    /// Bits written MSB first.
    #[derive(Default)]
    struct W(Vec<bool>);

    impl W {
        fn u(&mut self, v: u64, n: u32) -> &mut Self {
            for i in (0..n).rev() {
                self.0.push((v >> i) & 1 == 1);
            }
            self
        }
        fn ue(&mut self, v: u64) -> &mut Self {
            let x = v + 1;
            let n = 64 - x.leading_zeros();
            self.u(0, n - 1).u(x, n)
        }
        fn bytes(&self) -> Vec<u8> {
            let mut out = vec![0u8; self.0.len().div_ceil(8) + 1];
            for (i, b) in self.0.iter().enumerate() {
                if *b {
                    out[i / 8] |= 0x80 >> (i % 8);
                }
            }
            out
        }
    }

    /// A baseline-profile H.264 SPS NAL for `mbs_w × mbs_h` macroblocks (progressive).
    fn h264_sps(mbs_w: u64, mbs_h: u64) -> Vec<u8> {
        let mut w = W::default();
        w.u(66, 8).u(0, 8).u(40, 8).ue(0).ue(0).ue(2).ue(1).u(0, 1);
        w.ue(mbs_w - 1).ue(mbs_h - 1).u(1, 1);
        let mut nal = vec![0x67];
        nal.extend(w.bytes());
        nal
    }

    #[test]
    fn h264_sizes_and_the_cap() {
        assert_eq!(h264_sps_size(&h264_sps(80, 45)), Some((1280, 720)));
        assert!(check_nals(Codec::H264, [&h264_sps(80, 45)[..]]).is_ok());
        assert!(check_nals(Codec::H264, [&h264_sps(512, 270)[..]]).is_ok()); // 8192×4320
        let err = check_nals(Codec::H264, [&h264_sps(513, 270)[..]]).unwrap_err();
        assert!(err.0.contains("width=8208 height=4320"), "{err}");
        // One side over the cap with few pixels, and the largest a ue(v) can say.
        assert!(check_nals(Codec::H264, [&h264_sps(1100, 1)[..]]).is_err());
        assert!(check_nals(Codec::H264, [&h264_sps(1 << 32, 1 << 32)[..]]).is_err());
        // Length-prefixed and Annex-B frames both reach the SPS.
        let sps = h264_sps(2000, 2000);
        let mut lp = (sps.len() as u32).to_be_bytes().to_vec();
        lp.extend_from_slice(&sps);
        assert!(check_nals(Codec::H264, nal_units(&lp, 4)).is_err());
        let mut ab = vec![0, 0, 0, 1];
        ab.extend_from_slice(&sps);
        ab.extend_from_slice(&[0, 0, 1, 0x65, 1, 2]);
        assert_eq!(nal_units(&ab, 4).len(), 2);
        assert!(check_nals(Codec::H264, nal_units(&ab, 4)).is_err());
        // Garbage is left to the decoder.
        assert!(check_nals(Codec::H264, [&[0x67u8][..], &[0x67, 0xFF][..]]).is_ok());
        assert!(nal_units(&[0, 0, 0, 9, 1], 4).is_empty());
    }

    /// A High-family SPS (`profile`, chroma format, bit depth) for 80×45 macroblocks.
    fn h264_high_sps(profile: u64, chroma: u64, depth: u64) -> Vec<u8> {
        let mut w = W::default();
        w.u(profile, 8).u(0, 8).u(40, 8).ue(0).ue(chroma);
        if chroma == 3 {
            w.u(0, 1);
        }
        w.ue(depth - 8).ue(depth - 8).u(0, 1).u(0, 1); // no scaling matrices
        w.ue(0).ue(0).ue(2).ue(1).u(0, 1).ue(79).ue(44).u(1, 1);
        let mut nal = vec![0x67];
        nal.extend(w.bytes());
        nal
    }

    #[test]
    fn openh264_formats() {
        let ok = h264_high_sps(100, 1, 8);
        assert_eq!(h264_sps_size(&ok), Some((1280, 720)));
        assert_eq!(openh264_refusal([&ok[..], &h264_sps(80, 45)[..]]), None);
        let hi444 = h264_high_sps(244, 3, 10);
        assert_eq!(h264_sps_size(&hi444), Some((1280, 720)));
        let why = openh264_refusal([&hi444[..]]).unwrap();
        assert!(
            why.contains("profile=High 4:4:4 Predictive (244) chroma=4:4:4 bit_depth=10-bit"),
            "{why}"
        );
        let why = openh264_refusal([&h264_high_sps(122, 2, 8)[..]]).unwrap();
        assert!(
            why.contains("High 4:2:2 (122) chroma=4:2:2 bit_depth=8-bit"),
            "{why}"
        );
        // High 10 is refused by profile even for 8-bit content (OpenH264 checks it).
        assert!(openh264_refusal([&h264_high_sps(110, 1, 8)[..]]).is_some());
        // Non-SPS NAL units and unreadable SPS are left alone.
        assert_eq!(openh264_refusal([&[0x65u8, 1, 2][..], &[0x67u8][..]]), None);
    }

    #[test]
    fn h265_sizes_and_the_cap() {
        let sps = |width: u64, height: u64, sub_layers: u64| {
            let mut w = W::default();
            w.u(0, 4).u(sub_layers, 3).u(1, 1).u(0, 48).u(0, 48);
            for _ in 0..sub_layers {
                w.u(1, 1).u(1, 1);
            }
            if sub_layers > 0 {
                w.u(0, 2 * (8 - sub_layers as u32));
            }
            for _ in 0..sub_layers {
                w.u(0, 48).u(0, 48);
            }
            w.ue(0).ue(1).ue(width).ue(height);
            let mut nal = vec![0x42, 0x01];
            nal.extend(w.bytes());
            nal
        };
        assert_eq!(h265_sps_size(&sps(1280, 720, 0)), Some((1280, 720)));
        assert_eq!(h265_sps_size(&sps(1920, 1080, 2)), Some((1920, 1080)));
        assert!(check_nals(Codec::H265, [&sps(7680, 4320, 0)[..]]).is_ok());
        assert!(check_nals(Codec::H265, [&sps(16_384, 16_384, 1)[..]]).is_err());
    }

    #[test]
    fn the_samples_are_under_the_cap() {
        for (file, codec) in [
            ("media-samples/h264_720p_gop1s.mkv", Codec::H264),
            ("media-samples/h265_720p_gop1s.mkv", Codec::H265),
        ] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let Ok(bytes) = std::fs::read(&path) else {
                eprintln!("SKIP: {} not found", path.display());
                continue;
            };
            let mut r = crate::mkv::Reader::new(crate::mkv::Limits::default());
            r.push(&bytes[..1 << 16]);
            let tracks = loop {
                match r.next_event().unwrap().expect("tracks") {
                    crate::mkv::Event::TopLevel { id, raw, .. }
                        if id == crate::mkv::ids::TRACKS =>
                    {
                        break crate::mkv::parse_tracks(&raw).unwrap();
                    }
                    _ => {}
                }
            };
            let cp = tracks[0].codec_private.clone().unwrap();
            let size = match codec {
                Codec::H264 => {
                    let c = super::super::decode::parse_avcc(&cp).unwrap();
                    nal_units(&c.annexb_params, 0)
                        .into_iter()
                        .find_map(h264_sps_size)
                }
                Codec::H265 => hvcc_nals(&cp).0.into_iter().find_map(|n| {
                    ((n[0] >> 1) & 0x3F == 33)
                        .then(|| h265_sps_size(n))
                        .flatten()
                }),
            };
            assert_eq!(size, Some((1280, 720)), "{file}");
        }
    }
}
