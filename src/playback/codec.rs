//! Video codec configuration: an MKV track's `avcC` / `hvcC` CodecPrivate turned into the
//! MP4 sample entry (`avc1` / `hvc1`) every packager uses. Records are taken as ISO/IEC
//! 14496-15 readers take them: a complete record passes through field for field (its
//! bytes re-encode unchanged), and a record that lacks what the sample entry needs is
//! completed from its own SPS. The case that matters is the `avcC` of GStreamer's
//! `h264parse`, which omits the High-profile extension (chroma format, bit depths,
//! SPS-ext list) for profile_idc 100, 110, 122, 144, 244, …; an `hvcC` whose profile
//! header is zeroed is filled the same way. SPS parsing is `shiguredo_mp4::bitstream`
//! (see `docs/design/codecs.md`).

use bytes::Bytes;
use shiguredo_mp4::bitstream::{h264, h265};
use shiguredo_mp4::boxes::{
    Avc1Box, AvccBox, Hvc1Box, HvccBox, SampleEntry, VisualSampleEntryFields,
};
use shiguredo_mp4::{Decode, Uint};

use super::{VideoCodec, VideoConfig, codec_private, invalid_private};
use crate::error::{Error, ErrorKind, Result};
use crate::mkv::TrackEntry;

/// `box_type` header + payload, so a CodecPrivate record decodes as its MP4 box.
fn as_box(box_type: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(payload.len() + 8);
    b.extend_from_slice(&((payload.len() + 8) as u32).to_be_bytes());
    b.extend_from_slice(box_type);
    b.extend_from_slice(payload);
    b
}

fn visual(width: u16, height: u16) -> VisualSampleEntryFields {
    VisualSampleEntryFields {
        data_reference_index: VisualSampleEntryFields::DEFAULT_DATA_REFERENCE_INDEX,
        width,
        height,
        horizresolution: VisualSampleEntryFields::DEFAULT_HORIZRESOLUTION,
        vertresolution: VisualSampleEntryFields::DEFAULT_VERTRESOLUTION,
        frame_count: VisualSampleEntryFields::DEFAULT_FRAME_COUNT,
        compressorname: VisualSampleEntryFields::NULL_COMPRESSORNAME,
        depth: VisualSampleEntryFields::DEFAULT_DEPTH,
    }
}

fn clamp16(v: u64) -> u16 {
    v.min(u64::from(u16::MAX)) as u16
}

/// profile_idc values whose avcC has no High-profile extension (ISO/IEC 14496-15 5.3.3.1.2).
fn avcc_has_no_extension(profile_idc: u8) -> bool {
    matches!(profile_idc, 66 | 77 | 88)
}

/// Fills the avcC High-profile extension (chroma_format, bit depths; SPS-ext list left
/// empty) from the record's first SPS when the record omits it. Returns whether it did;
/// a complete record is not touched.
pub fn complete_avcc(avcc: &mut AvccBox) -> std::result::Result<bool, String> {
    if avcc_has_no_extension(avcc.avc_profile_indication) || avcc.chroma_format.is_some() {
        return Ok(false);
    }
    let sps = avcc.sps_list.first().ok_or("avcC holds no SPS")?;
    let s = h264::parse_sps(sps).map_err(|e| {
        format!("avcC lacks the High-profile fields and its SPS does not parse: {e}")
    })?;
    avcc.chroma_format = Some(Uint::new(s.chroma_format_idc));
    avcc.bit_depth_luma_minus8 = Some(Uint::new(s.bit_depth_luma_minus8));
    avcc.bit_depth_chroma_minus8 = Some(Uint::new(s.bit_depth_chroma_minus8));
    avcc.sps_ext_list.clear();
    Ok(true)
}

/// Fills a zeroed hvcC profile header (profile, tier, level, compatibility and
/// constraint flags, chroma format, bit depths) from `sps`. Returns whether it did; a
/// record naming a profile is not touched.
pub fn complete_hvcc(hvcc: &mut HvccBox, sps: &[u8]) -> std::result::Result<bool, String> {
    if hvcc.general_profile_idc.get() != 0 || hvcc.general_profile_compatibility_flags != 0 {
        return Ok(false);
    }
    let s = h265::parse_sps(sps)
        .map_err(|e| format!("hvcC names no profile and its SPS does not parse: {e}"))?;
    hvcc.general_profile_space = Uint::new(s.general_profile_space);
    hvcc.general_tier_flag = Uint::new(s.general_tier_flag);
    hvcc.general_profile_idc = Uint::new(s.general_profile_idc);
    hvcc.general_profile_compatibility_flags = s.general_profile_compatibility_flags;
    hvcc.general_constraint_indicator_flags = Uint::new(s.general_constraint_indicator_flags);
    hvcc.general_level_idc = s.general_level_idc;
    hvcc.chroma_format_idc = Uint::new(s.chroma_format_idc);
    hvcc.bit_depth_luma_minus8 = Uint::new(s.bit_depth_luma_minus8);
    hvcc.bit_depth_chroma_minus8 = Uint::new(s.bit_depth_chroma_minus8);
    Ok(true)
}

/// The packageable video track of `t`: H.264 or H.265 with an avcC/hvcC CodecPrivate.
pub(super) fn video_config(t: &TrackEntry) -> Result<VideoConfig> {
    let codec = match t.codec_id.as_str() {
        "V_MPEG4/ISO/AVC" | "V_MPEG/ISO/AVC" => VideoCodec::H264,
        "V_MPEGH/ISO/HEVC" | "V_MPEG/ISO/HEVC" => VideoCodec::H265,
        other => {
            return Err(Error::new(
                ErrorKind::UnsupportedStreamMediaType,
                format!(
                    "video codec cannot be packaged (H.264 and H.265 can): track={} codec={other}",
                    t.number
                ),
            ));
        }
    };
    let cp = codec_private(t)?;
    let mkv_size = t
        .video
        .as_ref()
        .map(|v| (clamp16(v.pixel_width), clamp16(v.pixel_height)))
        .unwrap_or((0, 0));
    match codec {
        VideoCodec::H264 => h264_config(t, cp, mkv_size),
        VideoCodec::H265 => h265_config(t, cp, mkv_size),
    }
}

fn h264_config(t: &TrackEntry, cp: &[u8], mkv_size: (u16, u16)) -> Result<VideoConfig> {
    let (mut avcc, _) = AvccBox::decode(&as_box(b"avcC", cp)).map_err(|e| invalid_private(t, e))?;
    let sps = avcc
        .sps_list
        .first()
        .ok_or_else(|| invalid_private(t, "avcC holds no SPS"))?;
    if avcc.pps_list.is_empty() {
        return Err(invalid_private(t, "avcC holds no PPS"));
    }
    let (w, h) = h264::parse_sps(sps).map_or(mkv_size, |s| (s.width, s.height));
    complete_avcc(&mut avcc).map_err(|e| invalid_private(t, e))?;
    let nal_length_size = usize::from(avcc.length_size_minus_one.get()) + 1;
    let parameter_sets = avcc
        .sps_list
        .iter()
        .chain(&avcc.pps_list)
        .map(|s| Bytes::copy_from_slice(s))
        .collect();
    Ok(VideoConfig {
        track: t.number,
        codec: VideoCodec::H264,
        width: w,
        height: h,
        nal_length_size,
        parameter_sets,
        entry: SampleEntry::Avc1(Avc1Box {
            visual: visual(w, h),
            avcc_box: avcc,
            unknown_boxes: Vec::new(),
        }),
    })
}

fn h265_config(t: &TrackEntry, cp: &[u8], mkv_size: (u16, u16)) -> Result<VideoConfig> {
    let (mut hvcc, _) = HvccBox::decode(&as_box(b"hvcC", cp)).map_err(|e| invalid_private(t, e))?;
    let mut parameter_sets: Vec<Bytes> = Vec::new();
    let mut sps = None;
    // VPS (32), SPS (33), PPS (34), in that order.
    for want in [32u8, 33, 34] {
        for a in &hvcc.nalu_arrays {
            if a.nal_unit_type.get() == want {
                for n in &a.nalus {
                    if want == 33 && sps.is_none() {
                        sps = Some(n.clone());
                    }
                    parameter_sets.push(Bytes::copy_from_slice(n));
                }
            }
        }
    }
    let sps = sps.ok_or_else(|| invalid_private(t, "hvcC holds no SPS"))?;
    let (w, h) = h265::parse_sps(&sps).map_or(mkv_size, |s| (s.width, s.height));
    complete_hvcc(&mut hvcc, &sps).map_err(|e| invalid_private(t, e))?;
    let nal_length_size = usize::from(hvcc.length_size_minus_one.get()) + 1;
    Ok(VideoConfig {
        track: t.number,
        codec: VideoCodec::H265,
        width: w,
        height: h,
        nal_length_size,
        parameter_sets,
        entry: SampleEntry::Hvc1(Hvc1Box {
            visual: visual(w, h),
            hvcc_box: hvcc,
            unknown_boxes: Vec::new(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shiguredo_mp4::Encode;

    /// avcC of GStreamer 1.22 `x264enc ! h264parse`, High 4:2:0 8-bit: no extension.
    const GST_AVCC: &str = "0164001effe1001e6764001eacd940a02ff97016a0c0c0d4a0000003002000000791e2c5b2c001000568ebecb22c";
    /// avcC of ffmpeg 5.1 libx264, High 4:4:4 Predictive 10-bit: complete.
    const FFMPEG_444_AVCC: &str = "01f4000dffe1001967f4000d90d9b28283f60220000003002000000781e28532c001000668ebe3c44844fffafa00";
    /// hvcC of GStreamer 1.22 `x265enc ! h265parse`, Main.
    const GST_HVCC: &str = "0101600000009000000000003ff000fcfdf8f800000f03200001001840010c01ffff01600000030090000003000003003f959809210001003142010101600000030090000003000003003fa00502016965959a4932bffc00040005a830303020000003002000000303c122000100074401c172b46240";

    fn payload_of(b: &impl Encode) -> Vec<u8> {
        b.encode_to_vec().unwrap()[8..].to_vec()
    }

    #[test]
    fn incomplete_avcc_gets_the_extension_from_its_sps() {
        let record = hex::decode(GST_AVCC).unwrap();
        let (mut avcc, _) = AvccBox::decode(&as_box(b"avcC", &record)).unwrap();
        assert!(avcc.encode_to_vec().is_err(), "the muxer refuses it as is");
        assert_eq!(complete_avcc(&mut avcc), Ok(true));
        let mut want = record;
        want.extend_from_slice(&[0xFD, 0xF8, 0xF8, 0x00]);
        assert_eq!(payload_of(&avcc), want);
    }

    #[test]
    fn complete_records_pass_through_unchanged() {
        let record = hex::decode(FFMPEG_444_AVCC).unwrap();
        let (mut avcc, _) = AvccBox::decode(&as_box(b"avcC", &record)).unwrap();
        assert_eq!(complete_avcc(&mut avcc), Ok(false));
        assert_eq!(payload_of(&avcc), record);
        let record = hex::decode(GST_HVCC).unwrap();
        let (mut hvcc, _) = HvccBox::decode(&as_box(b"hvcC", &record)).unwrap();
        let sps = hvcc.nalu_arrays[1].nalus[0].clone();
        assert_eq!(complete_hvcc(&mut hvcc, &sps), Ok(false));
        assert_eq!(payload_of(&hvcc), record);
    }

    #[test]
    fn zeroed_hvcc_profile_header_is_filled_from_the_sps() {
        let record = hex::decode(GST_HVCC).unwrap();
        let mut zeroed = record.clone();
        // profile space/tier/idc, compatibility, constraints, level; chroma and depths
        // keep their reserved bits only.
        zeroed[1..13].fill(0);
        zeroed[16] = 0xFC;
        zeroed[17] = 0xF8;
        zeroed[18] = 0xF8;
        let (mut hvcc, _) = HvccBox::decode(&as_box(b"hvcC", &zeroed)).unwrap();
        let sps = hvcc.nalu_arrays[1].nalus[0].clone();
        assert_eq!(complete_hvcc(&mut hvcc, &sps), Ok(true));
        assert_eq!(payload_of(&hvcc), record);
    }
}
