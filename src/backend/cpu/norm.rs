//! Normalisation kernels on f32 slices: layer norm and RMS norm over the last dim, and the
//! channel-first RMS norm of the Wan VAE.
//!
//! Statistics are accumulated in f64: DiT rows hold 1536–5120 values and the whole-model
//! fixtures compare at rel_l2 1e-4, so an f32 running sum would be the largest error source.
//! Rows sit in L1/L2 while they are processed, so the two passes of the layer norm cost little.

use rayon::prelude::*;

/// Rows handed to one rayon task at a time (keeps scheduling overhead small for short rows).
const MIN_ROWS_PER_TASK: usize = 8;

/// Sum of `x` in f64, with eight independent accumulators so the loop vectorises.
fn sum_f64(x: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v as f64;
        }
    }
    acc.iter().sum::<f64>() + tail.iter().map(|&v| v as f64).sum::<f64>()
}

/// Sum of `(x - center)^2` in f64.
fn sum_sq_dev_f64(x: &[f32], center: f64) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            let d = v as f64 - center;
            *a += d * d;
        }
    }
    acc.iter().sum::<f64>()
        + tail
            .iter()
            .map(|&v| (v as f64 - center) * (v as f64 - center))
            .sum::<f64>()
}

/// Layer norm over rows of `dim` values: `(x - mean) / sqrt(var + eps) * weight + bias`
/// (biased variance, as PyTorch). `weight` and `bias`, when given, hold `dim` values.
/// Rows are processed in parallel.
///
/// # Panics
/// If the slice lengths disagree (a bug in the caller; the tensor op checks shapes).
pub fn layer_norm(
    x: &[f32],
    out: &mut [f32],
    dim: usize,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f32,
) {
    assert_eq!(x.len(), out.len(), "layer_norm: output size");
    assert!(weight.is_none_or(|w| w.len() == dim) && bias.is_none_or(|b| b.len() == dim));
    if dim == 0 {
        return;
    }
    out.par_chunks_mut(dim)
        .zip(x.par_chunks(dim))
        .with_min_len(MIN_ROWS_PER_TASK)
        .for_each(|(o, r)| {
            let mean = sum_f64(r) / dim as f64;
            let var = sum_sq_dev_f64(r, mean) / dim as f64;
            let inv = (1.0 / (var + eps as f64).sqrt()) as f32;
            let mean = mean as f32;
            match (weight, bias) {
                (Some(w), Some(b)) => {
                    for (((o, &v), &w), &b) in o.iter_mut().zip(r).zip(w).zip(b) {
                        *o = (v - mean) * inv * w + b;
                    }
                }
                (Some(w), None) => {
                    for ((o, &v), &w) in o.iter_mut().zip(r).zip(w) {
                        *o = (v - mean) * inv * w;
                    }
                }
                (None, Some(b)) => {
                    for ((o, &v), &b) in o.iter_mut().zip(r).zip(b) {
                        *o = (v - mean) * inv + b;
                    }
                }
                (None, None) => {
                    for (o, &v) in o.iter_mut().zip(r) {
                        *o = (v - mean) * inv;
                    }
                }
            }
        });
}

/// RMS norm over rows of `dim` values: `x / sqrt(mean(x^2) + eps) * weight`.
/// Rows are processed in parallel.
///
/// # Panics
/// If the slice lengths disagree (a bug in the caller).
pub fn rms_norm(x: &[f32], out: &mut [f32], dim: usize, weight: Option<&[f32]>, eps: f32) {
    assert_eq!(x.len(), out.len(), "rms_norm: output size");
    assert!(weight.is_none_or(|w| w.len() == dim));
    if dim == 0 {
        return;
    }
    out.par_chunks_mut(dim)
        .zip(x.par_chunks(dim))
        .with_min_len(MIN_ROWS_PER_TASK)
        .for_each(|(o, r)| {
            let ms = sum_sq_dev_f64(r, 0.0) / dim as f64;
            let inv = (1.0 / (ms + eps as f64).sqrt()) as f32;
            match weight {
                Some(w) => {
                    for ((o, &v), &w) in o.iter_mut().zip(r).zip(w) {
                        *o = v * inv * w;
                    }
                }
                None => {
                    for (o, &v) in o.iter_mut().zip(r) {
                        *o = v * inv;
                    }
                }
            }
        });
}

/// Positions per task in the statistics pass of [`channel_rms_norm`].
const CHANNEL_NORM_TILE: usize = 1024;

/// The Wan VAE's RMS norm: `x` is `[batch, channels, positions]`; at every position the channel
/// vector is divided by `max(||x||_2, 1e-12)` and multiplied by `sqrt(channels) * gamma[c]`.
///
/// Two passes keep every write contiguous: first the inverse norm of each position (squares
/// accumulated in f64, tile by tile), then each channel row scaled in parallel.
///
/// # Panics
/// If the slice lengths disagree (a bug in the caller).
pub fn channel_rms_norm(
    x: &[f32],
    out: &mut [f32],
    batch: usize,
    channels: usize,
    positions: usize,
    gamma: &[f32],
) {
    assert_eq!(
        x.len(),
        batch * channels * positions,
        "channel_rms_norm: input size"
    );
    assert_eq!(x.len(), out.len(), "channel_rms_norm: output size");
    assert_eq!(gamma.len(), channels, "channel_rms_norm: gamma size");
    if x.is_empty() {
        return;
    }
    let mut inv = vec![0f32; batch * positions];
    inv.par_chunks_mut(positions)
        .enumerate()
        .for_each(|(b, inv_b)| {
            let xb = &x[b * channels * positions..(b + 1) * channels * positions];
            inv_b
                .par_chunks_mut(CHANNEL_NORM_TILE)
                .enumerate()
                .for_each(|(tile, inv_t)| {
                    let p0 = tile * CHANNEL_NORM_TILE;
                    let mut acc = vec![0f64; inv_t.len()];
                    for c in 0..channels {
                        let row = &xb[c * positions + p0..c * positions + p0 + inv_t.len()];
                        for (a, &v) in acc.iter_mut().zip(row) {
                            *a += v as f64 * v as f64;
                        }
                    }
                    for (i, a) in inv_t.iter_mut().zip(acc) {
                        *i = (1.0 / a.sqrt().max(1e-12)) as f32;
                    }
                });
        });
    let root_c = (channels as f32).sqrt();
    out.par_chunks_mut(positions)
        .zip(x.par_chunks(positions))
        .enumerate()
        .for_each(|(row, (o, r))| {
            let (b, c) = (row / channels, row % channels);
            let g = gamma[c] * root_c;
            let inv_b = &inv[b * positions..(b + 1) * positions];
            for ((o, &v), &i) in o.iter_mut().zip(r).zip(inv_b) {
                *o = v * i * g;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn sums_match_f64_reference_for_every_tail_length() {
        for n in 0..40 {
            let x = lcg(n, n as u64 + 1);
            let s: f64 = x.iter().map(|&v| v as f64).sum();
            assert!((sum_f64(&x) - s).abs() < 1e-12);
            let q: f64 = x.iter().map(|&v| (v as f64 - 0.5).powi(2)).sum();
            assert!((sum_sq_dev_f64(&x, 0.5) - q).abs() < 1e-12);
        }
    }

    #[test]
    fn layer_norm_keeps_precision_with_a_large_offset() {
        // A row with a big common offset: the variance must come out of the deviations, not of
        // E[x^2] - mean^2 in f32.
        let dim = 5120;
        let x: Vec<f32> = lcg(dim, 7).iter().map(|v| v + 100.0).collect();
        let mut out = vec![0.0; dim];
        layer_norm(&x, &mut out, dim, None, None, 1e-6);
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
        for (o, &v) in out.iter().zip(&x) {
            let r = (v as f64 - mean) / (var + 1e-6).sqrt();
            assert!((*o as f64 - r).abs() < 2e-5, "{o} vs {r}");
        }
    }
}
