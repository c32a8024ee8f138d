//! Aspect-ratio buckets (musubi-tuner's `BucketSelector` with Wan's step of 16) and the
//! resize + centre-crop geometry that fits an image or a clip's frames into its bucket.

use crate::error::{Error, Result};

/// Bucket sides are multiples of this (the VAE's 8× downsampling times the DiT's 2× patches).
pub const BUCKET_STEP: u32 = 16;

/// A width and a height, in pixels.
pub type Size = (u32, u32);

fn floor_step(x: u64) -> u64 {
    x - x % u64::from(BUCKET_STEP)
}

/// The buckets of one dataset and the rule that picks an item's bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketSelector {
    area: u64,
    no_upscale: bool,
    buckets: Vec<Size>,
}

impl BucketSelector {
    /// Buckets for `resolution` (width, height). Without `enable_bucket` the only bucket is the
    /// resolution itself (and `no_upscale` is ignored); with it, every `(w, h)` and `(h, w)` with
    /// `w` from `⌊⌊√A⌋/2⌋₁₆` to `⌊√A⌋` in steps of 16 and `h = ⌊A / w⌋₁₆`, where `A` is the
    /// resolution's area, sorted by width then height. Every bucket's area is at most `A`.
    ///
    /// A resolution with a zero side, or too small to give buckets at least 16 pixels wide
    /// (area under 32 × 32), is an [`Error::InvalidArgument`].
    pub fn new(resolution: Size, enable_bucket: bool, no_upscale: bool) -> Result<Self> {
        let (w, h) = resolution;
        let area = u64::from(w) * u64::from(h);
        if area == 0 {
            return Err(Error::InvalidArgument(format!(
                "resolution {w}x{h} has a zero side"
            )));
        }
        if !enable_bucket {
            return Ok(Self {
                area,
                no_upscale: false,
                buckets: vec![resolution],
            });
        }
        let side = area.isqrt();
        let min = floor_step(side / 2);
        if min == 0 {
            return Err(Error::InvalidArgument(format!(
                "resolution {w}x{h} is too small for aspect-ratio buckets (its area must be at \
                 least 32x32 pixels)"
            )));
        }
        let mut buckets = Vec::new();
        let mut bw = min;
        while bw < side + u64::from(BUCKET_STEP) {
            let bh = floor_step(area / bw);
            let (a, b) = (to_u32(bw), to_u32(bh));
            buckets.extend([(a, b), (b, a)]);
            bw += u64::from(BUCKET_STEP);
        }
        buckets.sort_unstable();
        buckets.dedup();
        Ok(Self {
            area,
            no_upscale,
            buckets,
        })
    }

    /// The buckets, sorted by width then height.
    pub fn buckets(&self) -> &[Size] {
        &self.buckets
    }

    /// The bucket of an image (or a clip's first frame) of `size`: with `no_upscale` and an
    /// image no larger in area than the resolution, the image's own size rounded down to
    /// multiples of 16; otherwise the bucket whose aspect ratio is nearest (the first on ties).
    ///
    /// A zero side, or an image smaller than 16 pixels on a side under `no_upscale`, is an
    /// [`Error::InvalidArgument`].
    pub fn select(&self, size: Size) -> Result<Size> {
        let (w, h) = size;
        if w == 0 || h == 0 {
            return Err(Error::InvalidArgument(format!(
                "image size {w}x{h} has a zero side"
            )));
        }
        if self.no_upscale && u64::from(w) * u64::from(h) <= self.area {
            let own = (to_u32(floor_step(w.into())), to_u32(floor_step(h.into())));
            if own.0 == 0 || own.1 == 0 {
                return Err(Error::InvalidArgument(format!(
                    "image size {w}x{h} is under {BUCKET_STEP} pixels on a side; \
                     bucket_no_upscale cannot give it a bucket"
                )));
            }
            return Ok(own);
        }
        let aspect = f64::from(w) / f64::from(h);
        let error = |&(bw, bh): &Size| (f64::from(bw) / f64::from(bh) - aspect).abs();
        let mut best = self.buckets[0];
        for bucket in &self.buckets[1..] {
            if error(bucket) < error(&best) {
                best = *bucket;
            }
        }
        Ok(best)
    }
}

fn to_u32(x: u64) -> u32 {
    // Bucket sides never exceed a side of the u32 resolution they come from.
    u32::try_from(x).unwrap_or(u32::MAX)
}

/// A rectangle in pixels: `left`, `top`, `width`, `height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// First column.
    pub left: u32,
    /// First row.
    pub top: u32,
    /// Number of columns.
    pub width: u32,
    /// Number of rows.
    pub height: u32,
}

/// How an image is fitted into its bucket: resized to `resize` (the smallest size that covers
/// the bucket at the image's aspect ratio), then `crop` is cut from its centre.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FitGeometry {
    /// The size to resize to.
    pub resize: Size,
    /// Whether that is an enlargement (musubi-tuner uses Lanczos then, area averaging
    /// otherwise).
    pub upscale: bool,
    /// The bucket-sized rectangle to keep, in the resized image.
    pub crop: Rect,
}

/// The resize and centre crop that fit an image of `image` size into `bucket`, as
/// musubi-tuner's `resize_image_to_bucket`: `scale = max(bw/iw, bh/ih)`, each side resized to
/// `⌊side · scale + 0.5⌋`, then the crop offset by half the excess (rounded down).
///
/// A zero side on either size is an [`Error::InvalidArgument`].
pub fn fit_to_bucket(image: Size, bucket: Size) -> Result<FitGeometry> {
    let ((iw, ih), (bw, bh)) = (image, bucket);
    if iw == 0 || ih == 0 || bw == 0 || bh == 0 {
        return Err(Error::InvalidArgument(format!(
            "cannot fit a {iw}x{ih} image into a {bw}x{bh} bucket"
        )));
    }
    let scale = (f64::from(bw) / f64::from(iw)).max(f64::from(bh) / f64::from(ih));
    // `scale` covers the bucket, so each side rounds to at least the bucket's side.
    let side = |i: u32, b: u32| ((f64::from(i) * scale + 0.5) as u32).max(b);
    let (nw, nh) = (side(iw, bw), side(ih, bh));
    Ok(FitGeometry {
        resize: (nw, nh),
        upscale: scale > 1.0,
        crop: Rect {
            left: (nw - bw) / 2,
            top: (nh - bh) / 2,
            width: bw,
            height: bh,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_for_960x544_match_musubi() {
        let s = BucketSelector::new((960, 544), true, false).unwrap();
        let b = s.buckets();
        // A = 522240, ⌊√A⌋ = 722, widths 352..=720 in steps of 16, h = ⌊A/w⌋₁₆.
        assert_eq!(b.first(), Some(&(352, 1472)));
        assert_eq!(b.last(), Some(&(1472, 352)));
        assert!(b.contains(&(720, 720)));
        assert!(b.contains(&(960, 544)));
        assert_eq!(b.len(), 2 * 24 - 1); // (720, 720) once
        assert_eq!(s.select((1920, 1080)).unwrap(), (960, 544));
        assert_eq!(s.select((1080, 1920)).unwrap(), (544, 960));
        assert_eq!(s.select((500, 500)).unwrap(), (720, 720));
    }

    #[test]
    fn without_buckets_the_resolution_is_the_only_bucket() {
        let s = BucketSelector::new((832, 480), false, true).unwrap();
        assert_eq!(s.buckets(), &[(832, 480)]);
        // no_upscale is ignored without buckets.
        assert_eq!(s.select((100, 900)).unwrap(), (832, 480));
    }

    #[test]
    fn no_upscale_keeps_small_images_at_their_own_size() {
        let s = BucketSelector::new((512, 512), true, true).unwrap();
        assert_eq!(s.select((300, 200)).unwrap(), (288, 192));
        assert_eq!(s.select((1024, 1024)).unwrap(), (512, 512));
        assert!(s.select((10, 300)).is_err());
        assert!(s.select((0, 300)).is_err());
    }

    #[test]
    fn tiny_resolutions_are_refused() {
        assert!(BucketSelector::new((16, 16), true, false).is_err());
        assert!(BucketSelector::new((0, 16), false, false).is_err());
        assert!(BucketSelector::new((32, 32), true, false).is_ok());
    }

    #[test]
    fn fit_resizes_to_cover_then_centre_crops() {
        let g = fit_to_bucket((1920, 1080), (960, 544)).unwrap();
        // scale = max(0.5, 0.5037…) → 967x544, crop 3 columns from the left.
        assert_eq!(g.resize, (967, 544));
        assert!(!g.upscale);
        assert_eq!(
            g.crop,
            Rect {
                left: 3,
                top: 0,
                width: 960,
                height: 544
            }
        );
        let g = fit_to_bucket((100, 50), (320, 192)).unwrap();
        assert_eq!(g.resize, (384, 192));
        assert!(g.upscale);
        assert_eq!(g.crop.left, 32);
        assert!(fit_to_bucket((0, 5), (16, 16)).is_err());
    }

    proptest! {
        #[test]
        fn buckets_are_steps_of_16_within_the_area(w in 32u32..2048, h in 32u32..2048, iw in 1u32..4096, ih in 1u32..4096, no_upscale: bool) {
            let s = BucketSelector::new((w, h), true, no_upscale).unwrap();
            for &(bw, bh) in s.buckets() {
                prop_assert!(bw > 0 && bh > 0 && bw % 16 == 0 && bh % 16 == 0);
                prop_assert!(u64::from(bw) * u64::from(bh) <= u64::from(w) * u64::from(h));
            }
            if let Ok(bucket) = s.select((iw, ih)) {
                prop_assert!(bucket.0 % 16 == 0 && bucket.1 % 16 == 0);
                prop_assert!(u64::from(bucket.0) * u64::from(bucket.1) <= u64::from(w) * u64::from(h));
                let g = fit_to_bucket((iw, ih), bucket).unwrap();
                prop_assert!(g.crop.left + g.crop.width <= g.resize.0);
                prop_assert!(g.crop.top + g.crop.height <= g.resize.1);
                prop_assert_eq!((g.crop.width, g.crop.height), bucket);
            }
        }
    }
}
