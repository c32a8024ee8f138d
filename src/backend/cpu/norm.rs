//! Normalisation kernels on f32 slices: layer norm and RMS norm over the last dim, and the
//! channel-first RMS norm of the Wan VAE.
//!
//! Statistics are accumulated in f64: DiT rows hold 1536–5120 values and the whole-model
//! fixtures compare at rel_l2 1e-4, so an f32 running sum would be the largest error source.
//! Squares of f32 values are exact in f64, so the variance comes from one pass of `Σx` and `Σx²`
//! (`E[x²] − mean²` loses nothing visible in f64 unless `mean²/var` exceeds ~1e8).
//!
//! The crate is built for baseline x86-64, where f64 arithmetic runs two lanes wide and these
//! kernels would be compute-bound; `simd_dispatch!` compiles them again for AVX-512 and AVX2
//! and picks one at run time.

use rayon::prelude::*;

/// Defines `fn $name(args)` that runs `$generic(args)` (an `#[inline(always)]` kernel) compiled
/// for AVX-512 or AVX2+FMA when the CPU has them, and for the baseline target otherwise.
macro_rules! simd_dispatch {
    ($(#[$m:meta])* fn $name:ident($($a:ident: $t:ty),* $(,)?) => $generic:path) => {
        $(#[$m])*
        fn $name($($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn v4($($a: $t),*) {
                    $generic($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($a: $t),*) {
                    $generic($($a),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports the features `v4` is compiled for.
                    return unsafe { v4($($a),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports the features `v3` is compiled for.
                    return unsafe { v3($($a),*) };
                }
            }
            $generic($($a),*)
        }
    };
}

/// Values handed to one rayon task at a time (keeps scheduling overhead small for short rows).
const VALUES_PER_TASK: usize = 16 * 1024;

/// Rows of `dim` values per rayon task.
fn rows_per_task(dim: usize) -> usize {
    (VALUES_PER_TASK / dim.max(1)).max(1)
}

/// Lanes of the f64 accumulators: four AVX-512 registers per sum keep the adds pipelined.
const LANES: usize = 32;

/// `(Σx, Σx²)` of a row in f64.
#[inline(always)]
fn moments(x: &[f32]) -> (f64, f64) {
    let (mut s, mut q) = ([0f64; LANES], [0f64; LANES]);
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            let v = c[i] as f64;
            s[i] += v;
            q[i] += v * v;
        }
    }
    let (mut s1, mut s2) = (s.iter().sum::<f64>(), q.iter().sum::<f64>());
    for &v in tail {
        s1 += v as f64;
        s2 += v as f64 * v as f64;
    }
    (s1, s2)
}

/// `Σx²` of a row in f64.
#[inline(always)]
fn sum_squares(x: &[f32]) -> f64 {
    let mut q = [0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            let v = c[i] as f64;
            q[i] += v * v;
        }
    }
    q.iter().sum::<f64>() + tail.iter().map(|&v| v as f64 * v as f64).sum::<f64>()
}

/// Layer norm of consecutive rows of `dim` values (see [`layer_norm`]).
#[inline(always)]
fn layer_norm_rows_generic(
    x: &[f32],
    out: &mut [f32],
    dim: usize,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f32,
) {
    for (o, r) in out.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
        let (s1, s2) = moments(r);
        let mean = s1 / dim as f64;
        let var = (s2 / dim as f64 - mean * mean).max(0.0);
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
    }
}

simd_dispatch! {
    fn layer_norm_rows(
        x: &[f32],
        out: &mut [f32],
        dim: usize,
        weight: Option<&[f32]>,
        bias: Option<&[f32]>,
        eps: f32,
    ) => layer_norm_rows_generic
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
    let block = dim * rows_per_task(dim);
    out.par_chunks_mut(block)
        .zip(x.par_chunks(block))
        .for_each(|(o, r)| layer_norm_rows(r, o, dim, weight, bias, eps));
}

/// RMS norm of consecutive rows of `dim` values (see [`rms_norm`]).
#[inline(always)]
fn rms_norm_rows_generic(x: &[f32], out: &mut [f32], dim: usize, weight: Option<&[f32]>, eps: f32) {
    for (o, r) in out.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
        let inv = (1.0 / (sum_squares(r) / dim as f64 + eps as f64).sqrt()) as f32;
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
    }
}

simd_dispatch! {
    fn rms_norm_rows(x: &[f32], out: &mut [f32], dim: usize, weight: Option<&[f32]>, eps: f32)
        => rms_norm_rows_generic
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
    let block = dim * rows_per_task(dim);
    out.par_chunks_mut(block)
        .zip(x.par_chunks(block))
        .for_each(|(o, r)| rms_norm_rows(r, o, dim, weight, eps));
}

/// Positions per task in the statistics pass of [`channel_rms_norm`].
const CHANNEL_NORM_TILE: usize = 1024;

/// Inverse channel norms of positions `p0..p0 + inv.len()` of one batch item `xb`
/// (`[channels, positions]`): squares summed over channels in f64.
#[inline(always)]
fn inverse_norms_generic(xb: &[f32], positions: usize, p0: usize, inv: &mut [f32]) {
    let mut acc = [0f64; CHANNEL_NORM_TILE];
    let acc = &mut acc[..inv.len()];
    for row in xb.chunks_exact(positions) {
        for (a, &v) in acc.iter_mut().zip(&row[p0..p0 + inv.len()]) {
            *a += v as f64 * v as f64;
        }
    }
    for (i, &a) in inv.iter_mut().zip(acc.iter()) {
        *i = (1.0 / a.sqrt().max(1e-12)) as f32;
    }
}

simd_dispatch! {
    fn inverse_norms(xb: &[f32], positions: usize, p0: usize, inv: &mut [f32])
        => inverse_norms_generic
}

/// The Wan VAE's RMS norm: `x` is `[batch, channels, positions]`; at every position the channel
/// vector is divided by `max(||x||_2, 1e-12)` and multiplied by `sqrt(channels) * gamma[c]`.
///
/// Two passes keep every write contiguous: first the inverse norm of each position (tile by
/// tile), then each channel row scaled in parallel.
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
        .zip(x.par_chunks(channels * positions))
        .for_each(|(inv_b, xb)| {
            inv_b
                .par_chunks_mut(CHANNEL_NORM_TILE)
                .enumerate()
                .for_each(|(tile, inv_t)| {
                    inverse_norms(xb, positions, tile * CHANNEL_NORM_TILE, inv_t)
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
        for n in 0..100 {
            let x = lcg(n, n as u64 + 1);
            let s: f64 = x.iter().map(|&v| v as f64).sum();
            let q: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum();
            let (s1, s2) = moments(&x);
            assert!((s1 - s).abs() < 1e-12 && (s2 - q).abs() < 1e-12);
            assert!((sum_squares(&x) - q).abs() < 1e-12);
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
