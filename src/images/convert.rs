//! Pixels to files: output-size rules, resizing (fast_image_resize) and encoding (JPEG
//! with jpeg-encoder, PNG with `image`).

use bytes::Bytes;
use fast_image_resize as fr;

/// A decoded picture as packed 8-bit RGB, rows without padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// Image file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "JPEG" => Some(Self::Jpeg),
            "PNG" => Some(Self::Png),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jpeg => "JPEG",
            Self::Png => "PNG",
        }
    }

    /// File name extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Jpeg => "jpg",
            Self::Png => "png",
        }
    }
}

/// What to make of each chosen frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputSpec {
    pub format: Format,
    /// JPEG quality 1–100 (ignored for PNG).
    pub quality: u8,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

impl Default for OutputSpec {
    fn default() -> Self {
        Self {
            format: Format::Jpeg,
            quality: 80,
            width: None,
            height: None,
        }
    }
}

impl OutputSpec {
    /// The output size for a source of `w`×`h`: both given → exactly that (stretched);
    /// one given → the other from the source's aspect ratio (rounded, at least 1);
    /// neither → the source size.
    pub fn target_size(&self, w: u32, h: u32) -> (u32, u32) {
        let scaled = |num: u32, a: u32, b: u32| -> u32 {
            ((u64::from(num) * u64::from(a) + u64::from(b) / 2) / u64::from(b.max(1))).max(1) as u32
        };
        match (self.width, self.height) {
            (Some(tw), Some(th)) => (tw, th),
            (Some(tw), None) => (tw, scaled(tw, h, w)),
            (None, Some(th)) => (scaled(th, w, h), th),
            (None, None) => (w, h),
        }
    }
}

/// Resizes (when the spec asks for another size) and encodes one picture.
pub fn encode(rgb: Rgb, spec: &OutputSpec) -> Result<Bytes, String> {
    let (tw, th) = spec.target_size(rgb.width, rgb.height);
    let rgb = if (tw, th) != (rgb.width, rgb.height) {
        resize(rgb, tw, th)?
    } else {
        rgb
    };
    match spec.format {
        Format::Jpeg => {
            if rgb.width > u32::from(u16::MAX) || rgb.height > u32::from(u16::MAX) {
                return Err("picture too large for JPEG".into());
            }
            let mut out = Vec::with_capacity(rgb.data.len() / 8);
            jpeg_encoder::Encoder::new(&mut out, spec.quality.clamp(1, 100))
                .encode(
                    &rgb.data,
                    rgb.width as u16,
                    rgb.height as u16,
                    jpeg_encoder::ColorType::Rgb,
                )
                .map_err(|e| format!("jpeg encoding failed: {e}"))?;
            Ok(Bytes::from(out))
        }
        Format::Png => {
            use image::ImageEncoder;
            let mut out = Vec::with_capacity(rgb.data.len() / 4);
            image::codecs::png::PngEncoder::new_with_quality(
                &mut out,
                image::codecs::png::CompressionType::Fast,
                image::codecs::png::FilterType::Adaptive,
            )
            .write_image(
                &rgb.data,
                rgb.width,
                rgb.height,
                image::ExtendedColorType::Rgb8,
            )
            .map_err(|e| format!("png encoding failed: {e}"))?;
            Ok(Bytes::from(out))
        }
    }
}

/// Bilinear resize with fast_image_resize.
pub fn resize(rgb: Rgb, w: u32, h: u32) -> Result<Rgb, String> {
    let src = fr::images::Image::from_vec_u8(rgb.width, rgb.height, rgb.data, fr::PixelType::U8x3)
        .map_err(|e| format!("resize source: {e}"))?;
    let mut dst = fr::images::Image::new(w, h, fr::PixelType::U8x3);
    fr::Resizer::new()
        .resize(
            &src,
            &mut dst,
            &fr::ResizeOptions::new()
                .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear)),
        )
        .map_err(|e| format!("resize failed: {e}"))?;
    Ok(Rgb {
        width: w,
        height: h,
        data: dst.into_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_aspect_ratio_rule() {
        let s = |w, h| OutputSpec {
            width: w,
            height: h,
            ..OutputSpec::default()
        };
        assert_eq!(s(None, None).target_size(1280, 720), (1280, 720));
        assert_eq!(s(Some(640), None).target_size(1280, 720), (640, 360));
        assert_eq!(s(None, Some(100)).target_size(1280, 720), (178, 100));
        assert_eq!(s(Some(10), Some(10)).target_size(1280, 720), (10, 10));
        assert_eq!(s(Some(1), None).target_size(1280, 720), (1, 1));
    }

    #[test]
    fn encodes_jpeg_and_png_at_the_requested_size() {
        let rgb = Rgb {
            width: 64,
            height: 32,
            data: (0..64 * 32 * 3).map(|i| (i % 251) as u8).collect(),
        };
        let jpeg = encode(
            rgb.clone(),
            &OutputSpec {
                width: Some(32),
                ..OutputSpec::default()
            },
        )
        .unwrap();
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        let png = encode(
            rgb,
            &OutputSpec {
                format: Format::Png,
                ..OutputSpec::default()
            },
        )
        .unwrap();
        let img = image::load_from_memory(&png).unwrap();
        assert_eq!((img.width(), img.height()), (64, 32));
    }
}
