//! Spatial tiling of the decode for machines with little memory.
//!
//! The latent is cut into overlapping tiles; each tile is decoded on its own through all frames
//! (with its own causal state, so only tile-sized caches and activations exist at a time), and
//! the decoded tiles are blended with linear ramps across the overlaps into one f32 video
//! (`[B, 3, F, H, W]`), which is then emitted frame by frame. Tiles are not exactly the untiled
//! decode: the decoder's receptive field (its middle attention sees the whole frame) is cut at
//! the tile borders, which the blending hides.

use crate::error::{Error, Result};

use super::layers::dims5;
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

/// The weighted sum of the decoded tiles and the sum of their weights.
pub(super) struct Blend {
    /// `[B, C, F, H, W]`.
    dims: [usize; 5],
    sum: Vec<f32>,
    /// `[H, W]`, the same for every frame and channel.
    weight: Vec<f32>,
}

impl Blend {
    pub fn new(dims: [usize; 5]) -> Blend {
        Blend {
            dims,
            sum: vec![0.0; dims.iter().product()],
            weight: vec![0.0; dims[3] * dims[4]],
        }
    }

    /// Adds a tile's weights at pixel offset `(y0, x0)` (once per tile).
    pub fn add_weights(&mut self, y0: usize, x0: usize, wy: &[f32], wx: &[f32]) {
        let w = self.dims[4];
        for (i, &a) in wy.iter().enumerate() {
            let row = &mut self.weight[(y0 + i) * w + x0..][..wx.len()];
            for (d, &b) in row.iter_mut().zip(wx) {
                *d += a * b;
            }
        }
    }

    /// Adds a tile's output chunk `[B, C, n, th, tw]` for frames `f0..f0 + n` at `(y0, x0)`.
    pub fn add(
        &mut self,
        chunk: &Tensor,
        f0: usize,
        (y0, x0): (usize, usize),
        (wy, wx): (&[f32], &[f32]),
    ) -> Result<()> {
        let [b, c, n, th, tw] = dims5(chunk)?;
        let [_, _, f, h, w] = self.dims;
        if [b, c] != self.dims[..2] || f0 + n > f || y0 + th > h || x0 + tw > w {
            return Err(Error::InvalidArgument(format!(
                "VAE tiling: tile output {:?} at frame {f0}, ({y0}, {x0}) outside {:?}",
                chunk.dims(),
                self.dims
            )));
        }
        let src = chunk.f32_data()?;
        for (p, tile_plane) in src.chunks_exact(th * tw).enumerate() {
            let (bc, t) = (p / n, p % n);
            let plane = &mut self.sum[(bc * f + f0 + t) * h * w..][..h * w];
            for (i, src_row) in tile_plane.chunks_exact(tw).enumerate() {
                let row = &mut plane[(y0 + i) * w + x0..][..tw];
                for ((d, &v), &b) in row.iter_mut().zip(src_row).zip(wx) {
                    *d += wy[i] * b * v;
                }
            }
        }
        Ok(())
    }

    /// Frame `t` of the blended video, `[B, C, 1, H, W]`.
    pub fn frame(&self, t: usize) -> Result<Tensor> {
        let [b, c, f, h, w] = self.dims;
        let mut out = Vec::with_capacity(b * c * h * w);
        for bc in 0..b * c {
            let plane = &self.sum[(bc * f + t) * h * w..][..h * w];
            out.extend(plane.iter().zip(&self.weight).map(|(s, wt)| s / wt));
        }
        Tensor::from_f32(out, [b, c, 1, h, w])
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
                blend.add_weights(y0, x0, &wy, &wx);
                blend.add(&tile, 0, (y0, x0), (&wy, &wx)).unwrap();
            }
        }
        let got = blend.frame(0).unwrap().to_f32_vec().unwrap();
        for (g, e) in got.iter().zip(&full) {
            assert!((g - e).abs() < 1e-4, "{g} vs {e}");
        }
    }
}
