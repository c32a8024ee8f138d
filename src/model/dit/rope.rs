//! The 3-D rotary position embedding of the Wan DiT (wan-architecture.md §1.5).
//!
//! Each head's channels are split into complex pairs for three axes: time gets
//! `d − 4·(d/6)` channels, height and width `2·(d/6)` each, in that order. Pair `j` of an axis
//! with `d_a` channels turns by `pos · 10000^(−2j/d_a)`. Angles, cosines and sines are computed in
//! f64 (upstream uses complex128) and handed to `rope_interleaved` as f32 tables.

use crate::backend::Device;
use crate::error::Result;
use crate::tensor::Tensor;

/// Cosine and sine tables `[S, head_dim/2]` for one token grid, rows in `(f, hh, ww)` order.
#[derive(Debug, Clone)]
pub struct RopeTable {
    /// The token grid `(frames, rows, columns)` the table was built for.
    pub grid: [usize; 3],
    /// `cos(angle)`, `[S, head_dim/2]`.
    pub cos: Tensor,
    /// `sin(angle)`, `[S, head_dim/2]`.
    pub sin: Tensor,
}

/// Pairs per axis `(t, h, w)` for a head dim `d` (even).
pub fn axis_pairs(head_dim: usize) -> [usize; 3] {
    let hw = 2 * (head_dim / 6);
    [(head_dim - 2 * hw) / 2, hw / 2, hw / 2]
}

impl RopeTable {
    /// Builds the tables for `grid` and a head dim `head_dim`.
    pub fn new(grid: [usize; 3], head_dim: usize) -> Result<RopeTable> {
        let pairs = axis_pairs(head_dim);
        // Per axis, the frequency of each pair: θ_j = 10000^(−2j/d_a) with d_a = 2·pairs.
        let freqs: Vec<Vec<f64>> = pairs
            .iter()
            .map(|&n| {
                (0..n)
                    .map(|j| 10000f64.powf(-((2 * j) as f64) / (2 * n) as f64))
                    .collect()
            })
            .collect();
        let half = head_dim / 2;
        let s = grid[0] * grid[1] * grid[2];
        let (mut cos, mut sin) = (Vec::with_capacity(s * half), Vec::with_capacity(s * half));
        for f in 0..grid[0] {
            for h in 0..grid[1] {
                for w in 0..grid[2] {
                    for (pos, fr) in [f, h, w].into_iter().zip(&freqs) {
                        for &theta in fr {
                            let (sn, cs) = (pos as f64 * theta).sin_cos();
                            cos.push(cs as f32);
                            sin.push(sn as f32);
                        }
                    }
                }
            }
        }
        Ok(RopeTable {
            grid,
            cos: Tensor::from_f32(cos, [s, half])?,
            sin: Tensor::from_f32(sin, [s, half])?,
        })
    }

    /// The tables on `device` (computed on the host, uploaded once per grid).
    pub fn to_device(&self, device: Device) -> Result<RopeTable> {
        Ok(RopeTable {
            grid: self.grid,
            cos: self.cos.to_device(device)?,
            sin: self.sin.to_device(device)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_matches_the_spec() {
        assert_eq!(axis_pairs(128), [22, 21, 21]);
        assert_eq!(axis_pairs(16), [4, 2, 2]);
    }

    #[test]
    fn table_angles() {
        let t = RopeTable::new([2, 3, 4], 16).unwrap();
        let cos = t.cos.f32_data().unwrap();
        let sin = t.sin.f32_data().unwrap();
        // token (f=1, hh=2, ww=3) is row 1·12 + 2·4 + 3 = 23
        let row = 23 * 8;
        let expect =
            |pos: f64, j: usize, d: usize| pos * 10000f64.powf(-((2 * j) as f64) / d as f64);
        let angles = [
            expect(1.0, 0, 8),
            expect(1.0, 1, 8),
            expect(1.0, 2, 8),
            expect(1.0, 3, 8),
            expect(2.0, 0, 4),
            expect(2.0, 1, 4),
            expect(3.0, 0, 4),
            expect(3.0, 1, 4),
        ];
        for (k, a) in angles.iter().enumerate() {
            assert!((cos[row + k] as f64 - a.cos()).abs() < 1e-7);
            assert!((sin[row + k] as f64 - a.sin()).abs() < 1e-7);
        }
    }
}
