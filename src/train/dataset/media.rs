//! Training media as pixels: images read through the `image` crate (PNG, JPEG, WebP), frames
//! resized and centre-cropped into their bucket as musubi-tuner does it (Lanczos when
//! enlarging, pixel-area averaging, OpenCV's `INTER_AREA`, when shrinking), and stacked into
//! the VAE's input `[1, 3, T, H, W]` in `[-1, 1]` (`x / 127.5 − 1`).

use std::io::BufReader;
use std::path::Path;

use image::imageops::FilterType;

use super::buckets::{fit_to_bucket, FitGeometry, Size};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The widest or tallest image accepted.
const MAX_IMAGE_SIDE: u32 = 16384;

/// The most memory one image may decode into.
const MAX_IMAGE_ALLOC: u64 = 1 << 30;

/// An 8-bit RGB picture: `height × width × 3` bytes, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The pixels.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// The size as `(width, height)`.
    pub fn size(&self) -> Size {
        (self.width, self.height)
    }
}

/// Reads a PNG, JPEG or WebP image (recognised by its bytes, not its name) as RGB; alpha is
/// dropped. Damaged or unsupported files are errors naming the file.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let bad = |e: &dyn std::fmt::Display| Error::bad_file(path, format!("image: {e}"));
    let file = crate::io::input::open_regular(path)?;
    let mut reader = image::ImageReader::new(BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    if reader.format().is_none() {
        return Err(bad(&"not a PNG, JPEG or WebP image"));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_ALLOC);
    reader.limits(limits);
    let rgb = reader.decode().map_err(|e| bad(&e))?.into_rgb8();
    if rgb.width() == 0 || rgb.height() == 0 {
        return Err(bad(&"an empty image"));
    }
    Ok(RgbImage {
        width: rgb.width(),
        height: rgb.height(),
        data: rgb.into_raw(),
    })
}

/// Resizes and centre-crops `image` into `bucket` (see [`fit_to_bucket`]).
pub fn fit_image(image: &RgbImage, bucket: Size) -> Result<RgbImage> {
    let fit = fit_to_bucket(image.size(), bucket)?;
    Ok(apply_fit(image, &fit))
}

/// Applies a fit computed for `image`'s size (a video's frames share their first frame's).
pub fn apply_fit(image: &RgbImage, fit: &FitGeometry) -> RgbImage {
    let (nw, nh) = fit.resize;
    let resized = if fit.resize == image.size() {
        image.data.clone()
    } else if fit.upscale {
        let src = image::RgbImage::from_raw(image.width, image.height, image.data.clone())
            .expect("an RgbImage holds width × height × 3 bytes");
        image::imageops::resize(&src, nw, nh, FilterType::Lanczos3).into_raw()
    } else {
        area_resize(image, fit.resize)
    };
    let c = fit.crop;
    let row = nw as usize * 3;
    let mut data = Vec::with_capacity(c.width as usize * c.height as usize * 3);
    for y in c.top..c.top + c.height {
        let start = y as usize * row + c.left as usize * 3;
        data.extend_from_slice(&resized[start..start + c.width as usize * 3]);
    }
    RgbImage {
        width: c.width,
        height: c.height,
        data,
    }
}

/// For each output index, the input indices it averages and their weights: output pixel `o`
/// covers input `[o·s, (o+1)·s)` with `s = input / output ≥ 1`.
fn area_weights(input: u32, output: u32) -> Vec<Vec<(usize, f32)>> {
    let s = f64::from(input) / f64::from(output);
    (0..output)
        .map(|o| {
            let (a, b) = (f64::from(o) * s, f64::from(o + 1) * s);
            let first = a.floor() as usize;
            let last = (b.ceil() as usize).min(input as usize);
            (first..last)
                .filter_map(|i| {
                    let overlap = (b.min(i as f64 + 1.0) - a.max(i as f64)) / s;
                    (overlap > 1e-12).then_some((i, overlap as f32))
                })
                .collect()
        })
        .collect()
}

/// Shrinks by pixel-area averaging (each side at most its original), rounding to the nearest
/// byte.
fn area_resize(image: &RgbImage, (nw, nh): Size) -> Vec<u8> {
    let (w, h) = (image.width as usize, image.height as usize);
    let (xs, ys) = (
        area_weights(image.width, nw),
        area_weights(image.height, nh),
    );
    let nw = nw as usize;
    // Rows first: [h, nw, 3] in f32.
    let mut rows = vec![0f32; h * nw * 3];
    for y in 0..h {
        for (ox, taps) in xs.iter().enumerate() {
            for c in 0..3 {
                rows[(y * nw + ox) * 3 + c] = taps
                    .iter()
                    .map(|&(x, wt)| wt * f32::from(image.data[(y * w + x) * 3 + c]))
                    .sum();
            }
        }
    }
    let mut out = Vec::with_capacity(ys.len() * nw * 3);
    for taps in &ys {
        for i in 0..nw * 3 {
            let v: f32 = taps.iter().map(|&(y, wt)| wt * rows[y * nw * 3 + i]).sum();
            out.push(v.round().clamp(0.0, 255.0) as u8);
        }
    }
    out
}

/// Stacks same-sized frames into the VAE's input `[1, 3, T, H, W]`, `x / 127.5 − 1`.
pub fn frames_to_tensor(frames: &[RgbImage]) -> Result<Tensor> {
    let first = frames
        .first()
        .ok_or_else(|| Error::InvalidArgument("no frames to encode".into()))?;
    let (w, h, t) = (first.width as usize, first.height as usize, frames.len());
    let plane = w * h;
    let mut data = vec![0f32; 3 * t * plane];
    for (k, f) in frames.iter().enumerate() {
        if f.size() != first.size() {
            return Err(Error::InvalidArgument(format!(
                "frame {k} is {}x{}, the first {w}x{h}",
                f.width, f.height
            )));
        }
        for (p, px) in f.data.chunks_exact(3).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                data[(c * t + k) * plane + p] = f32::from(v) / 127.5 - 1.0;
            }
        }
    }
    Tensor::from_f32(data, &[1, 3, t, h, w][..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn image(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> RgbImage {
        let data = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .flat_map(|(x, y)| f(x, y))
            .collect();
        RgbImage {
            width: w,
            height: h,
            data,
        }
    }

    #[test]
    fn area_shrink_by_two_averages_blocks() {
        let img = image(4, 2, |x, _| [(x * 10) as u8, 100, 7]);
        let out = area_resize(&img, (2, 1));
        // (0 + 10) / 2 = 5, (20 + 30) / 2 = 25.
        assert_eq!(out, [5, 100, 7, 25, 100, 7]);
        // A non-integer ratio weights the shared pixel by its overlap: 3 → 2.
        let img = image(3, 1, |x, _| [[0, 90, 180][x as usize], 0, 0]);
        // [0, 1.5): 0·(1/1.5) + 90·(0.5/1.5) = 30; [1.5, 3): 90/3 + 180·(2/3) = 150.
        assert_eq!(area_resize(&img, (2, 1))[..4], [30, 0, 0, 150]);
    }

    #[test]
    fn fitting_crops_the_centre_of_the_cover() {
        // 8x4 into 4x4: shrink to 8x4 (scale 1, already covering), crop columns 2..6.
        let img = image(8, 4, |x, y| [x as u8, y as u8, 0]);
        let out = fit_image(&img, (4, 4)).unwrap();
        assert_eq!(out.size(), (4, 4));
        assert_eq!(&out.data[..6], &[2, 0, 0, 3, 0, 0]);
        // Enlarging a flat image keeps it flat (Lanczos preserves constants).
        let flat = image(3, 5, |_, _| [40, 80, 120]);
        let big = fit_image(&flat, (16, 16)).unwrap();
        assert_eq!(big.size(), (16, 16));
        assert!(big.data.chunks(3).all(|p| p == [40, 80, 120]));
    }

    #[test]
    fn frames_become_the_vae_input_layout() {
        let a = image(2, 1, |x, _| [0, 255, x as u8]);
        let t = frames_to_tensor(&[a.clone(), a]).unwrap();
        assert_eq!(t.dims(), &[1, 3, 2, 1, 2]);
        let v = t.to_f32_vec().unwrap();
        assert_eq!(&v[..4], &[-1.0; 4]);
        assert_eq!(&v[4..8], &[1.0; 4]);
        assert!(frames_to_tensor(&[]).is_err());
    }

    #[test]
    fn images_read_back_and_bad_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(5, 3, |x, y| [x as u8 * 40, y as u8 * 60, 9]);
        let png = dir.path().join("a.png");
        image::RgbImage::from_raw(5, 3, img.data.clone())
            .unwrap()
            .save(&png)
            .unwrap();
        assert_eq!(load_image(&png).unwrap(), img);
        let jpg = dir.path().join("b.jpg");
        image::RgbImage::from_raw(5, 3, img.data.clone())
            .unwrap()
            .save(&jpg)
            .unwrap();
        assert_eq!(load_image(&jpg).unwrap().size(), (5, 3));
        let txt = dir.path().join("c.png");
        std::fs::write(&txt, "hello").unwrap();
        let e = load_image(&txt).unwrap_err().to_string();
        assert!(e.contains("c.png"), "{e}");
        assert!(load_image(dir.path()).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// A PNG or JPEG cut short or with bytes overwritten is an image or an error, never a
        /// panic.
        #[test]
        fn damaged_images_never_panic(
            jpeg in any::<bool>(),
            cut in 0usize..200,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        ) {
            let img = image(9, 7, |x, y| [(x * 20) as u8, (y * 30) as u8, 5]);
            let mut bytes = Vec::new();
            let format = if jpeg { image::ImageFormat::Jpeg } else { image::ImageFormat::Png };
            image::RgbImage::from_raw(9, 7, img.data)
                .unwrap()
                .write_to(&mut std::io::Cursor::new(&mut bytes), format)
                .unwrap();
            for (at, b) in flips {
                let n = bytes.len();
                bytes[at % n] = b;
            }
            bytes.truncate(bytes.len().saturating_sub(cut));
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("x");
            std::fs::write(&path, &bytes).unwrap();
            let _ = load_image(&path);
        }
    }
}
