//! Spatial tiling of the decode for machines with little memory.
//!
//! The latent is cut into overlapping tiles; each tile is decoded on its own through all frames
//! (with its own causal state, so only tile-sized caches and activations exist at a time), and
//! the decoded tiles are blended with linear ramps across the overlaps into one video
//! (`[B, 3, F, H, W]`, held as frames on the tiles' device, tensor ops only), which is then
//! emitted frame by frame. Tiles are not exactly the untiled
//! decode: the decoder's receptive field (its middle attention sees the whole frame) is cut at
//! the tile borders, which the blending hides.

use crate::error::{Error, Result};

use super::layers::dims5;
use crate::backend::Device;
use crate::tensor::Tensor;

/// Tile size and overlap in latent pixels (×8 in the decoded video).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// Tile height and width (latent pixels); a latent no larger is decoded in one piece.
    pub tile: usize,
    /// Minimum overlap of neighbouring tiles (latent pixels), blended linearly; below `tile`.
    pub overlap: usize,
}

impl Default for Tiling {
    /// 32 latent pixels (256 video pixels) with an overlap of 8 (64 video pixels), as diffusers'
    /// Wan VAE tiling: at 832×480 a frame is 3 × 4 tiles, for about twice the compute, and the
    /// peak memory about a quarter of the untiled decode's (1.4 against 5.0 GiB with the real
    /// model's weights, docs/PERF.md).
    fn default() -> Tiling {
        Tiling {
            tile: 32,
            overlap: 8,
        }
    }
}

impl Tiling {
    /// Fails unless the tile is positive and larger than the overlap.
    pub fn validate(&self) -> Result<()> {
        if self.tile == 0 || self.overlap >= self.tile {
            return Err(Error::InvalidArgument(format!(
                "VAE tiling: tile {} must be positive and larger than the overlap {}",
                self.tile, self.overlap
            )));
        }
        Ok(())
    }

    /// The tiles `(start, len)` along an axis of `len` latent pixels: as few as cover it with
    /// at least `overlap` between neighbours, spread evenly.
    pub(super) fn spans(&self, len: usize) -> Vec<(usize, usize)> {
        if len <= self.tile {
            return vec![(0, len)];
        }
        let stride = self.tile - self.overlap;
        let n = (len - self.overlap).div_ceil(stride);
        let room = len - self.tile;
        // Even spacing room/(n-1) <= stride, so neighbours overlap by at least `overlap`.
        (0..n)
            .map(|i| ((i * room + (n - 1) / 2) / (n - 1), self.tile))
            .collect()
    }
}

/// Blend weights along one axis of a tile of `len` pixels: linear ramps of `ramp` pixels on the
/// sides that meet a neighbouring tile, 1 elsewhere (always positive).
pub(super) fn ramp(len: usize, ramp: usize, before: bool, after: bool) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let mut w = 1.0f32;
            if ramp > 0 && before {
                w = w.min((i as f32 + 0.5) / ramp as f32);
            }
            if ramp > 0 && after {
                w = w.min(((len - i) as f32 - 0.5) / ramp as f32);
            }
            w
        })
        .collect()
}

/// The weighted sum of the decoded tiles and the sum of their weights, as tensors on the tiles'
/// device: a tile's contribution is zero-padded to the frame and added, so every sum takes the
/// tiles in the order they were added (`0 + a + b + …` as a host loop would).
pub(super) struct Blend {
    /// `[B, C, F, H, W]`.
    dims: [usize; 5],
    /// Per frame, `[B, C, 1, H, W]` (`None` until a tile reaches it).
    sum: Vec<Option<Tensor>>,
    /// `[H, W]`, the same for every frame and channel.
    weight: Option<Tensor>,
}

impl Blend {
    pub fn new(dims: [usize; 5]) -> Blend {
        Blend {
            dims,
            sum: vec![None; dims[2]],
            weight: None,
        }
    }

    /// Adds a tile's weights `wy[i]·wx[j]` at pixel offset `(y0, x0)` (once per tile) and
    /// returns them as a `[th, tw]` tensor on `device` in `dtype`, for [`Blend::add`].
    pub fn add_weights(
        &mut self,
        (y0, x0): (usize, usize),
        wy: &[f32],
        wx: &[f32],
        device: Device,
    ) -> Result<Tensor> {
        let [_, _, _, h, w] = self.dims;
        let (th, tw) = (wy.len(), wx.len());
        if y0 + th > h || x0 + tw > w {
            return Err(self.outside(&[th, tw], 0, (y0, x0)));
        }
        let outer = wy.iter().flat_map(|&a| wx.iter().map(move |&b| a * b));
        let tile = Tensor::from_f32(outer.collect(), [th, tw])?.to_device(device)?;
        let placed = tile.pad_zeros(&[(y0, h - y0 - th), (x0, w - x0 - tw)])?;
        self.weight = Some(accumulate(self.weight.take(), placed)?);
        Ok(tile)
    }

    /// Adds a tile's output chunk `[B, C, n, th, tw]` for frames `f0..f0 + n` at `(y0, x0)`,
    /// weighted by the tile's `weights` `[th, tw]` (from [`Blend::add_weights`]).
    pub fn add(
        &mut self,
        chunk: &Tensor,
        f0: usize,
        (y0, x0): (usize, usize),
        weights: &Tensor,
    ) -> Result<()> {
        let [b, c, n, th, tw] = dims5(chunk)?;
        let [_, _, f, h, w] = self.dims;
        if [b, c] != self.dims[..2]
            || f0 + n > f
            || y0 + th > h
            || x0 + tw > w
            || weights.dims() != [th, tw]
        {
            return Err(self.outside(chunk.dims(), f0, (y0, x0)));
        }
        let weighted = chunk.mul(&weights.to_dtype(chunk.dtype())?)?;
        let placed =
            weighted.pad_zeros(&[(0, 0), (0, 0), (0, 0), (y0, h - y0 - th), (x0, w - x0 - tw)])?;
        for t in 0..n {
            let frame = placed.narrow(2, t, 1)?;
            let slot = &mut self.sum[f0 + t];
            *slot = Some(accumulate(slot.take(), frame)?);
        }
        Ok(())
    }

    /// The frames of the blended video in order, each `[B, C, 1, H, W]`: the weighted sum over
    /// the sum of the weights (an error for a frame no tile reached).
    pub fn into_frames(self) -> impl Iterator<Item = Result<Tensor>> {
        let weight = self.weight;
        self.sum.into_iter().map(move |sum| match (sum, &weight) {
            (Some(s), Some(w)) => s.div(&w.to_dtype(s.dtype())?),
            _ => Err(Error::InvalidArgument(
                "VAE tiling: a frame no tile covered".into(),
            )),
        })
    }

    fn outside(&self, got: &[usize], f0: usize, (y0, x0): (usize, usize)) -> Error {
        Error::InvalidArgument(format!(
            "VAE tiling: tile output {got:?} at frame {f0}, ({y0}, {x0}) outside {:?}",
            self.dims
        ))
    }
}

/// `sum + x`, or `x` for the first term (`0 + x` is `x`).
fn accumulate(sum: Option<Tensor>, x: Tensor) -> Result<Tensor> {
    match sum {
        Some(s) => s.add(&x),
        None => Ok(x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_with_the_overlap() {
        let t = Tiling::default();
        assert_eq!(t.spans(20), vec![(0, 20)]);
        assert_eq!(t.spans(32), vec![(0, 32)]);
        assert_eq!(t.spans(60), vec![(0, 32), (14, 32), (28, 32)]);
        assert_eq!(t.spans(104), vec![(0, 32), (24, 32), (48, 32), (72, 32)]);
        for len in 33..300 {
            for (tile, overlap) in [(32, 8), (7, 3), (5, 0), (16, 15)] {
                let tl = Tiling { tile, overlap };
                let s = tl.spans(len);
                assert_eq!(s[0].0, 0);
                assert_eq!(s.last().map(|(a, l)| a + l), Some(len));
                for p in s.windows(2) {
                    assert!(p[0].0 + p[0].1 >= p[1].0 + overlap, "{len} {tl:?} {s:?}");
                    assert!(p[1].0 > p[0].0);
                }
            }
        }
    }

    #[test]
    fn ramps_cross_fade_to_one() {
        let a = ramp(16, 8, false, true);
        let b = ramp(16, 8, true, false);
        // Tile b starts 8 pixels before a ends: over the overlap the weights sum to 1.
        for i in 0..8 {
            assert!((a[8 + i] + b[i] - 1.0).abs() < 1e-6);
        }
        assert!(a[..8].iter().all(|&w| w == 1.0));
        assert!(ramp(5, 0, true, true).iter().all(|&w| w == 1.0));
        assert!(ramp(3, 8, true, true).iter().all(|&w| w > 0.0));
    }

    #[test]
    fn blending_identical_tiles_gives_the_tile() {
        let (h, w) = (6, 7);
        let full: Vec<f32> = (0..2 * h * w).map(|i| i as f32).collect();
        let video = Tensor::from_f32(full.clone(), [1, 2, 1, h, w]).unwrap();
        let mut blend = Blend::new([1, 2, 1, h, w]);
        for (y0, th) in [(0, 4), (2, 4)] {
            for (x0, tw) in [(0, 5), (2, 5)] {
                let tile = video.narrow(3, y0, th).unwrap().narrow(4, x0, tw).unwrap();
                let (wy, wx) = (ramp(th, 2, y0 > 0, y0 == 0), ramp(tw, 2, x0 > 0, x0 == 0));
                let weights = blend.add_weights((y0, x0), &wy, &wx, Device::Cpu).unwrap();
                blend.add(&tile, 0, (y0, x0), &weights).unwrap();
            }
        }
        let frames: Vec<_> = blend.into_frames().collect();
        assert_eq!(frames.len(), 1);
        let got = frames[0].as_ref().unwrap().to_f32_vec().unwrap();
        for (g, e) in got.iter().zip(&full) {
            assert!((g - e).abs() < 1e-4, "{g} vs {e}");
        }
    }
}
