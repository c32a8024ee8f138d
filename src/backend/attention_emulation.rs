//! A CPU emulation of the arithmetic of the CUDA attention kernel (`kernels/attention.cu`), so
//! that its numerics are checked on machines without a GPU and the GPU tests have a reference
//! that rounds where the kernel rounds.
//!
//! The kernel walks the keys of each query row in tiles of [`BLOCK_N`]; per tile it forms the
//! logits in f32, scales them by `scale·log2(e)`, takes the running maximum over the tile, turns
//! the logits into `p = 2^(s − max)` in f32, adds the f32 `p` to the running row sum (rescaled by
//! `2^(old max − new max)`), and accumulates `bf16(p) · v` into an f32 output that is rescaled the
//! same way. The output is divided by the row sum and rounded to bf16 once. Inputs are bf16. The
//! only freedom the emulation does not pin is the order of f32 sums inside one mma (the hardware
//! does not specify it), which moves results by an f32 rounding, far below a bf16 step.

use half::bf16;

use super::cpu::attention::AttnDims;
use crate::error::Result;

/// Keys per tile of the kernel (`BLOCK_N` in `kernels/attention.cu`).
pub const BLOCK_N: usize = 64;

/// The kernel's result for bf16 `q`, `k`, `v` (layouts as
/// [`crate::backend::cpu::attention::attention`]: q and the output `[batch, q_len, heads,
/// head_dim]`, k and v `[batch, kv_len, heads, head_dim]`), every value of the output a bf16
/// widened to f32. With no keys the output is zero, as the kernel's.
pub fn flash_attention_bf16(
    q: &[bf16],
    k: &[bf16],
    v: &[bf16],
    dims: AttnDims,
    scale: f32,
) -> Result<Vec<f32>> {
    let AttnDims {
        batch,
        q_len,
        kv_len,
        heads,
        head_dim: d,
    } = dims;
    let row = heads * d;
    let mut out = vec![0f32; q.len()];
    dims.check_buffers("flash_attention_bf16", q, k, v, &out)?;
    let scale_log2 = scale * std::f32::consts::LOG2_E;
    let mut s = vec![0f32; BLOCK_N];
    let mut o = vec![0f32; d];
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..q_len {
                let qi = &q[(b * q_len + i) * row + h * d..][..d];
                let (mut row_max, mut row_sum) = (f32::NEG_INFINITY, 0f32);
                o.fill(0.0);
                for key0 in (0..kv_len).step_by(BLOCK_N) {
                    let keys = BLOCK_N.min(kv_len - key0);
                    let mut tile_max = row_max;
                    for (j, sj) in s[..keys].iter_mut().enumerate() {
                        let kj = &k[(b * kv_len + key0 + j) * row + h * d..][..d];
                        let dot: f32 = qi
                            .iter()
                            .zip(kj)
                            .map(|(a, c)| a.to_f32() * c.to_f32())
                            .sum();
                        *sj = dot * scale_log2;
                        tile_max = tile_max.max(*sj);
                    }
                    let correction = (row_max - tile_max).exp2();
                    row_max = tile_max;
                    let mut tile_sum = 0f32;
                    o.iter_mut().for_each(|x| *x *= correction);
                    for (j, &sj) in s[..keys].iter().enumerate() {
                        let p = (sj - tile_max).exp2();
                        tile_sum += p;
                        let p = bf16::from_f32(p).to_f32();
                        let vj = &v[(b * kv_len + key0 + j) * row + h * d..][..d];
                        o.iter_mut().zip(vj).for_each(|(x, c)| *x += p * c.to_f32());
                    }
                    row_sum = row_sum * correction + tile_sum;
                }
                let inv = if row_sum > 0.0 { 1.0 / row_sum } else { 0.0 };
                let dst = &mut out[(b * q_len + i) * row + h * d..][..d];
                for (y, x) in dst.iter_mut().zip(&o) {
                    *y = bf16::from_f32(x * inv).to_f32();
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::random;

    /// Softmax attention in f64 on the same (bf16) inputs, with no intermediate rounding.
    fn exact(q: &[bf16], k: &[bf16], v: &[bf16], dims: AttnDims, scale: f64) -> Vec<f64> {
        let AttnDims {
            batch,
            q_len,
            kv_len,
            heads,
            head_dim: d,
        } = dims;
        let row = heads * d;
        let mut out = vec![0f64; q.len()];
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..q_len {
                    let qi = &q[(b * q_len + i) * row + h * d..][..d];
                    let logits: Vec<f64> = (0..kv_len)
                        .map(|j| {
                            let kj = &k[(b * kv_len + j) * row + h * d..][..d];
                            let dot: f64 = qi
                                .iter()
                                .zip(kj)
                                .map(|(a, c)| a.to_f64() * c.to_f64())
                                .sum();
                            dot * scale
                        })
                        .collect();
                    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let w: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                    let sum: f64 = w.iter().sum();
                    let dst = &mut out[(b * q_len + i) * row + h * d..][..d];
                    for (j, wj) in w.iter().enumerate() {
                        let vj = &v[(b * kv_len + j) * row + h * d..][..d];
                        for (y, c) in dst.iter_mut().zip(vj) {
                            *y += wj / sum * c.to_f64();
                        }
                    }
                }
            }
        }
        out
    }

    fn rel_l2(a: &[f32], b: &[f64]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).powi(2)).sum();
        let den: f64 = b.iter().map(|y| y * y).sum();
        (num / den).sqrt()
    }

    /// bf16 values of standard deviation `amplitude` (uniform: √3 times the amplitude).
    fn bf16_values(n: usize, seed: u32, amplitude: f32) -> Vec<bf16> {
        random::values(n, seed)
            .into_iter()
            .map(|x| bf16::from_f32(x * amplitude * 3f32.sqrt()))
            .collect()
    }

    /// The emulated kernel against exact attention over shapes the tiles do not divide, cross
    /// attention (q_len ≠ kv_len), both head dims, and logits from flat to peaked (amplitude 4
    /// gives logits with a spread of ~16, where the online rescaling matters). The bound is two
    /// bf16 steps (2^-8 relative): P and the output are rounded to bf16 once each.
    #[test]
    fn emulated_kernel_matches_exact_attention() {
        let shapes = [
            (1, 1, 1, 1, 64),
            (1, 63, 65, 2, 64),
            (2, 100, 37, 3, 64),
            (1, 130, 130, 2, 128),
            (1, 77, 512, 2, 128),
            (1, 5, 200, 1, 128),
        ];
        for (seed, &(batch, q_len, kv_len, heads, head_dim)) in shapes.iter().enumerate() {
            for amplitude in [0.5f32, 1.0, 4.0] {
                let dims = AttnDims {
                    batch,
                    q_len,
                    kv_len,
                    heads,
                    head_dim,
                };
                let seed = seed as u32 * 10;
                let q = bf16_values(batch * q_len * heads * head_dim, seed + 1, amplitude);
                let k = bf16_values(batch * kv_len * heads * head_dim, seed + 2, amplitude);
                let v = bf16_values(batch * kv_len * heads * head_dim, seed + 3, 1.0);
                let scale = 1.0 / (head_dim as f32).sqrt();
                let got = flash_attention_bf16(&q, &k, &v, dims, scale).unwrap();
                let want = exact(&q, &k, &v, dims, scale as f64);
                let err = rel_l2(&got, &want);
                println!("{dims:?} amplitude {amplitude}: rel_l2 {err:.3e}");
                assert!(
                    err < 2.0f64.powi(-8),
                    "{dims:?} amplitude {amplitude}: rel_l2 {err:.3e}"
                );
            }
        }
    }

    /// No keys: zeros, as the kernel writes; wrong sizes: a typed error.
    #[test]
    fn no_keys_and_bad_sizes() {
        let dims = AttnDims {
            batch: 1,
            q_len: 3,
            kv_len: 0,
            heads: 1,
            head_dim: 64,
        };
        let q = vec![bf16::ONE; 3 * 64];
        assert_eq!(
            flash_attention_bf16(&q, &[], &[], dims, 0.125).unwrap(),
            vec![0.0; 3 * 64]
        );
        assert!(flash_attention_bf16(&q[1..], &[], &[], dims, 0.125).is_err());
    }
}
