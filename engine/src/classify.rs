//! From an image to ranked classes, shared by `resnet-native classify` and the
//! browser package so that both see the same pixels and report the same
//! probabilities: decode, composite transparency onto white, resize, convert
//! to the model's channels, normalise; then softmax and top-k.
//!
//! Every image becomes RGB first: grey images are replicated, and transparency
//! is composited onto white (how a transparent picture looks on a page, and what
//! keeps a transparent background from turning into an arbitrary colour). It is
//! then resized, aspect ratio not preserved, with a triangle (bilinear) filter,
//! which the `image` crate widens when shrinking so that every source pixel
//! contributes; an image already at the model's size is kept bit for bit.
//! Greyscale models read the result's luma (ITU-R BT.601 weights).

use crate::model::ModelSpec;
use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageReader, Limits, RgbImage, RgbaImage};
use std::io::Cursor;
use thiserror::Error;

/// Largest accepted width or height: beyond it decoding would need gigabytes.
pub const MAX_IMAGE_SIDE: u32 = 12_000;
/// Most memory one decode may allocate (an 8000x8000 RGBA image is 244 MiB).
const MAX_DECODE_BYTES: u64 = 600 << 20;

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("not an image format this decoder reads (PNG, JPEG, GIF, BMP or WebP)")]
    Unrecognised,
    #[error("the image is corrupt or truncated: {0}")]
    Corrupt(String),
    #[error("the image is {width}x{height}; the largest accepted is {MAX_IMAGE_SIDE} pixels per side")]
    TooLarge { width: u32, height: u32 },
    #[error("the image has no pixels ({width}x{height})")]
    Empty { width: u32, height: u32 },
    #[error("{len} bytes of pixels do not hold a {width}x{height} RGBA image")]
    PixelCount { len: usize, width: u32, height: u32 },
    #[error("this model takes {0} input channels; images give 1 (grey) or 3 (RGB)")]
    Channels(usize),
}

/// Decodes an encoded image (format told by its content) into RGB, with
/// transparency composited onto white.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    let corrupt = |e: image::ImageError| ImageError::Corrupt(e.to_string());
    let reader = || {
        let mut reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| ImageError::Corrupt(e.to_string()))?;
        if reader.format().is_none() {
            return Err(ImageError::Unrecognised);
        }
        // Sides are checked by `check_size`, which names the problem.
        let mut limits = Limits::no_limits();
        limits.max_alloc = Some(MAX_DECODE_BYTES);
        reader.limits(limits);
        Ok(reader)
    };
    // The header first, so that a huge or empty image is named as such.
    let (width, height) = reader()?.into_dimensions().map_err(corrupt)?;
    check_size(width, height)?;
    Ok(onto_white(reader()?.decode().map_err(corrupt)?))
}

fn check_size(width: u32, height: u32) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::Empty { width, height });
    }
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(ImageError::TooLarge { width, height });
    }
    Ok(())
}

/// RGB from raw RGBA pixels (a canvas' `ImageData`), composited onto white.
pub fn from_rgba(pixels: Vec<u8>, width: u32, height: u32) -> Result<RgbImage, ImageError> {
    check_size(width, height)?;
    let len = pixels.len();
    let rgba = RgbaImage::from_raw(width, height, pixels).ok_or(ImageError::PixelCount { len, width, height })?;
    Ok(onto_white(DynamicImage::ImageRgba8(rgba)))
}

fn onto_white(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let blend = |c: u8| ((c as u32 * a as u32 + 255 * (255 - a as u32) + 127) / 255) as u8;
        image::Rgb([blend(r), blend(g), blend(b)])
    })
}

/// The image resized to `[channels, height, width]` as CHW bytes (channels 3,
/// or 1 for the luma).
pub fn to_chw(rgb: &RgbImage, [channels, height, width]: [usize; 3]) -> Result<Vec<u8>, ImageError> {
    if channels != 1 && channels != 3 {
        return Err(ImageError::Channels(channels));
    }
    let (w, h) = (width as u32, height as u32);
    let resized;
    let rgb = if rgb.dimensions() == (w, h) {
        rgb
    } else {
        resized = imageops::resize(rgb, w, h, FilterType::Triangle);
        &resized
    };
    let plane = height * width;
    let mut chw = vec![0; channels * plane];
    for (i, pixel) in rgb.pixels().enumerate() {
        let [r, g, b] = pixel.0;
        if channels == 1 {
            chw[i] = (0.299 * r as f32 + 0.587 * g as f32 + 0.114 * b as f32).round() as u8;
        } else {
            chw[i] = r;
            chw[plane + i] = g;
            chw[2 * plane + i] = b;
        }
    }
    Ok(chw)
}

/// The normalised network input for one image.
pub fn model_input(rgb: &RgbImage, spec: &ModelSpec) -> Result<Vec<f32>, ImageError> {
    let chw = to_chw(rgb, spec.input)?;
    Ok(spec.normalization.apply(&chw, spec.input[0]))
}

/// `ln(sum(exp(logits)))` in f64, stable for large logits.
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    max + logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()
}

/// Softmax of one row of logits, in f64.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let lse = log_sum_exp(logits);
    logits.iter().map(|&v| (v as f64 - lse).exp()).collect()
}

/// The `k` most probable classes, most probable first (ties: lower index first).
pub fn top_k(probabilities: &[f64], k: usize) -> Vec<(usize, f64)> {
    let mut ranked: Vec<(usize, f64)> = probabilities.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(k);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageFormat;

    fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Vec::new();
        image.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
        bytes
    }

    fn rgba(width: u32, height: u32, pixels: Vec<u8>) -> DynamicImage {
        DynamicImage::ImageRgba8(RgbaImage::from_vec(width, height, pixels).unwrap())
    }

    #[test]
    fn transparency_is_composited_onto_white() {
        // Opaque red, half-transparent red, fully transparent.
        let image = rgba(3, 1, vec![255, 0, 0, 255, 255, 0, 0, 128, 10, 20, 30, 0]);
        let rgb = decode(&encode(image, ImageFormat::Png)).unwrap();
        let chw = to_chw(&rgb, [3, 1, 3]).unwrap();
        // Half-transparent red over white: 255 * 127/255 = 127 in G and B.
        assert_eq!(chw, [255, 255, 255, 0, 127, 255, 0, 127, 255]);
        // Raw RGBA pixels (a canvas' ImageData) give the same.
        let raw = from_rgba(vec![255, 0, 0, 255, 255, 0, 0, 128, 10, 20, 30, 0], 3, 1).unwrap();
        assert_eq!(raw, rgb);
    }

    #[test]
    fn resizing_keeps_orientation_and_grey_models_read_luma() {
        // 8 wide, 6 high: left half black, right half white; shrunk to 2x4
        // (height x width) it stays dark left and bright right.
        let image = RgbImage::from_fn(8, 6, |x, _| image::Rgb(if x < 4 { [0; 3] } else { [255; 3] }));
        let chw = to_chw(&image, [3, 2, 4]).unwrap();
        for c in 0..3 {
            for y in 0..2 {
                let row = &chw[c * 8 + y * 4..c * 8 + y * 4 + 4];
                assert!(row[0] < 30 && row[1] < 128 && row[2] > 128 && row[3] > 225, "{row:?}");
            }
        }
        let pure = RgbImage::from_pixel(2, 2, image::Rgb([200, 100, 50]));
        // 0.299*200 + 0.587*100 + 0.114*50 = 124.2
        assert_eq!(to_chw(&pure, [1, 2, 2]).unwrap(), [124; 4]);
        assert!(matches!(to_chw(&pure, [4, 2, 2]), Err(ImageError::Channels(4))));
    }

    #[test]
    fn an_image_at_the_model_size_is_kept_bit_for_bit() {
        let image = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 70, 9]));
        let decoded = decode(&encode(DynamicImage::ImageRgb8(image.clone()), ImageFormat::Png)).unwrap();
        let chw = to_chw(&decoded, [3, 3, 5]).unwrap();
        for (i, p) in image.pixels().enumerate() {
            assert_eq!([chw[i], chw[15 + i], chw[30 + i]], p.0);
        }
    }

    #[test]
    fn bad_images_are_named_errors() {
        assert!(matches!(decode(b"hello, not an image"), Err(ImageError::Unrecognised)));
        let mut png = encode(rgba(4, 4, vec![7; 64]), ImageFormat::Png);
        png.truncate(png.len() / 2);
        assert!(matches!(decode(&png), Err(ImageError::Corrupt(_))));
        // A wide PNG is refused from its header, before the pixels are decoded.
        let wide = encode(
            rgba(MAX_IMAGE_SIDE + 1, 1, vec![7; 4 * (MAX_IMAGE_SIDE as usize + 1)]),
            ImageFormat::Png,
        );
        let err = decode(&wide).unwrap_err();
        assert!(
            matches!(err, ImageError::TooLarge { width, height: 1 } if width == MAX_IMAGE_SIDE + 1),
            "{err}"
        );
        assert!(matches!(
            from_rgba(vec![0; 12], 2, 2),
            Err(ImageError::PixelCount { .. })
        ));
        assert!(matches!(from_rgba(Vec::new(), 0, 5), Err(ImageError::Empty { .. })));
    }

    #[test]
    fn softmax_is_stable_and_top_k_ranks_ties_by_index() {
        let p = softmax(&[1000.0, 1000.0, 0.0]);
        assert!((p[0] - 0.5).abs() < 1e-12 && (p[1] - 0.5).abs() < 1e-12 && p[2] < 1e-300);
        let q = softmax(&[0.0, (2.0f32).ln()]);
        assert!((q[1] - 2.0 / 3.0).abs() < 1e-7);
        assert_eq!(top_k(&[0.1, 0.3, 0.3, 0.2], 3), vec![(1, 0.3), (2, 0.3), (3, 0.2)]);
    }
}
