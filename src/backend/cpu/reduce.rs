//! CPU kernels for reductions over one dim and the last-dim softmax, on f32 slices.
//!
//! A reduction over one dim of a contiguous tensor views it as `[outer, n, inner]`. With
//! `inner == 1` every output reduces one contiguous row, using independent lanes so that the loop
//! vectorizes; otherwise whole rows of `inner` elements are combined, which vectorizes across
//! `inner`. Sums accumulate in f32 over short blocks and in f64 across blocks, so long
//! reductions keep their accuracy at almost no cost.

use rayon::prelude::*;

use super::elementwise::{exp, simd, PAR_CHUNK};

/// A reduction over one dim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// The sum (0 over an empty dim).
    Sum,
    /// The mean (NaN over an empty dim).
    Mean,
    /// The maximum (NaN if any element is NaN; -inf over an empty dim).
    Max,
}

/// Independent accumulators per row: enough for the compiler to fill one AVX-512 register.
const LANES: usize = 16;
/// Elements (or rows) summed in f32 before the partial sum is folded into f64.
const BLOCK: usize = 512;
/// Columns per task in the strided case: the f32 and f64 accumulators stay in L1.
const COLS: usize = 1024;

/// Reduces `x`, viewed as `[outer, n, inner]`, over its middle dim into `out` (`[outer, inner]`).
///
/// # Panics
/// If the slice lengths do not match `outer`, `n` and `inner` (a bug in the caller).
pub fn reduce(op: ReduceOp, x: &[f32], outer: usize, n: usize, inner: usize, out: &mut [f32]) {
    assert_eq!(x.len(), outer * n * inner, "reduce: input length");
    assert_eq!(out.len(), outer * inner, "reduce: output length");
    if out.is_empty() {
        return;
    }
    let finish = |s: f64| match op {
        ReduceOp::Mean => (s / n as f64) as f32,
        _ => s as f32,
    };
    if inner == 1 {
        let rows = (PAR_CHUNK / n.max(1)).max(1);
        let task = |i: usize, out: &mut [f32]| {
            simd(
                #[inline(always)]
                || {
                    for (j, o) in out.iter_mut().enumerate() {
                        let row = &x[(i * rows + j) * n..][..n];
                        *o = if op == ReduceOp::Max {
                            row_max(row)
                        } else {
                            finish(row_sum(row))
                        };
                    }
                },
            )
        };
        if outer <= rows {
            task(0, out);
        } else {
            out.par_chunks_mut(rows)
                .enumerate()
                .for_each(|(i, o)| task(i, o));
        }
        return;
    }
    // Strided: out[o, c] combines x[o, k, c] over k, in column blocks.
    let task = |o: usize, c0: usize, out: &mut [f32]| {
        let w = out.len();
        let rows = (0..n).map(|k| &x[(o * n + k) * inner + c0..][..w]);
        simd(
            #[inline(always)]
            || {
                if op == ReduceOp::Max {
                    out.fill(f32::NEG_INFINITY);
                    for row in rows {
                        for (m, &v) in out.iter_mut().zip(row) {
                            *m = max_nan(*m, v);
                        }
                    }
                } else {
                    let mut total = vec![0f64; w];
                    out.fill(0.0);
                    for (k, row) in rows.enumerate() {
                        for (s, &v) in out.iter_mut().zip(row) {
                            *s += v;
                        }
                        if (k + 1) % BLOCK == 0 || k + 1 == n {
                            for (t, s) in total.iter_mut().zip(out.iter_mut()) {
                                *t += *s as f64;
                                *s = 0.0;
                            }
                        }
                    }
                    for (s, &t) in out.iter_mut().zip(&total) {
                        *s = finish(t);
                    }
                }
            },
        )
    };
    // Tasks of whole outer indices (`group` of them, at least PAR_CHUNK inputs); when one outer
    // index is already that large, its column blocks run in parallel too.
    let group = (PAR_CHUNK / (n * inner).max(1)).max(1);
    let seq = |o0: usize, out: &mut [f32]| {
        for (j, out) in out.chunks_mut(inner).enumerate() {
            for (b, out) in out.chunks_mut(COLS).enumerate() {
                task(o0 + j, b * COLS, out);
            }
        }
    };
    if outer * n * inner <= PAR_CHUNK {
        seq(0, out);
    } else if group > 1 {
        out.par_chunks_mut(group * inner)
            .enumerate()
            .for_each(|(i, out)| seq(i * group, out));
    } else {
        out.par_chunks_mut(inner).enumerate().for_each(|(o, out)| {
            out.par_chunks_mut(COLS)
                .enumerate()
                .for_each(|(b, out)| task(o, b * COLS, out));
        });
    }
}

/// The larger of `m` and `v`; NaN once either is NaN (`m` is the running maximum).
#[inline(always)]
fn max_nan(m: f32, v: f32) -> f32 {
    // Comparisons with NaN are false: a NaN `v` is taken by the second test, and a NaN `m` is
    // kept because neither test holds.
    if v > m || v.is_nan() {
        v
    } else {
        m
    }
}

/// The maximum of a row (NaN if it holds a NaN, -inf if empty).
#[inline(always)]
fn row_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = max_nan(*a, v);
        }
    }
    let m = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| max_nan(m, v));
    acc.iter().fold(m, |m, &v| max_nan(m, v))
}

/// The sum of a row, in f32 lanes per block and f64 across blocks.
#[inline(always)]
fn row_sum(x: &[f32]) -> f64 {
    let mut total = 0f64;
    for block in x.chunks(BLOCK) {
        let mut acc = [0f32; LANES];
        let mut chunks = block.chunks_exact(LANES);
        for c in &mut chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += v;
            }
        }
        total += acc
            .iter()
            .chain(chunks.remainder())
            .map(|&v| v as f64)
            .sum::<f64>();
    }
    total
}

/// Softmax over rows of `n` elements: `out = e^(x - max) / sum(e^(x - max))` per row.
///
/// # Panics
/// If the lengths differ or are not a multiple of `n` (a bug in the caller).
pub fn softmax_last(x: &[f32], n: usize, out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "softmax: lengths differ");
    if out.is_empty() {
        return;
    }
    assert!(n > 0 && x.len().is_multiple_of(n), "softmax: row length");
    let task = |x: &[f32], out: &mut [f32]| {
        simd(
            #[inline(always)]
            || {
                for (x, out) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
                    let m = row_max(x);
                    for (o, &v) in out.iter_mut().zip(x) {
                        *o = exp(v - m);
                    }
                    let scale = (1.0 / row_sum(out)) as f32;
                    for o in out.iter_mut() {
                        *o *= scale;
                    }
                }
            },
        )
    };
    let chunk = (PAR_CHUNK / n).max(1) * n;
    if x.len() <= chunk {
        task(x, out);
    } else {
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(o, x)| task(x, o));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::random::values;

    /// Naive reduction in f64 by explicit indices.
    fn reduce_ref(op: ReduceOp, x: &[f32], outer: usize, n: usize, inner: usize) -> Vec<f64> {
        let mut out = Vec::new();
        for o in 0..outer {
            for i in 0..inner {
                let vals = (0..n).map(|k| x[(o * n + k) * inner + i] as f64);
                out.push(match op {
                    ReduceOp::Sum => vals.sum(),
                    ReduceOp::Mean => vals.sum::<f64>() / n as f64,
                    ReduceOp::Max => vals.fold(f64::NEG_INFINITY, f64::max),
                });
            }
        }
        out
    }

    #[test]
    fn reductions_match_reference() {
        let shapes = [
            (1, 1, 1),
            (3, 5, 1),
            (2, 37, 1),
            (4, 3, 7),
            (1, 100, 1500),
            (5, 1000, 1),
            (3, 1, 9),
            (2, 0, 3),
            (0, 4, 2),
            (64, 2000, 1),
            (3, 600, 100),
            (5000, 4, 3),
        ];
        for (s, &(outer, n, inner)) in shapes.iter().enumerate() {
            let x = values(outer * n * inner, s as u32);
            for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
                let mut out = vec![f32::NAN; outer * inner];
                reduce(op, &x, outer, n, inner, &mut out);
                let want = reduce_ref(op, &x, outer, n, inner);
                // f32 rounding of the partial sums: a few ulp of the sum of magnitudes.
                let abs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
                let scale = reduce_ref(ReduceOp::Mean, &abs, outer, n, inner);
                for ((g, w), s) in out.iter().zip(&want).zip(&scale) {
                    if op == ReduceOp::Max || n == 0 {
                        assert!(
                            *g as f64 == *w || (g.is_nan() && w.is_nan()),
                            "{op:?} {outer} {n} {inner}"
                        );
                    } else {
                        let tol = 2e-7 * s * if op == ReduceOp::Sum { n as f64 } else { 1.0 };
                        assert!(
                            (*g as f64 - w).abs() <= tol + 1e-30,
                            "{op:?} {outer} {n} {inner}: {g} {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn max_propagates_nan() {
        for pos in [0, 7, 16, 40] {
            let mut x = values(41, 9);
            x[pos] = f32::NAN;
            let mut out = [0.0];
            reduce(ReduceOp::Max, &x, 1, 41, 1, &mut out);
            assert!(out[0].is_nan(), "row, NaN at {pos}");
            let mut cols = [0.0; 41];
            reduce(ReduceOp::Max, &x, 1, 1, 41, &mut cols);
            assert!(cols[pos].is_nan() && cols.iter().filter(|v| v.is_nan()).count() == 1);
        }
        let x = [1.0, f32::NAN, 3.0, 2.0, -1.0, 5.0];
        let mut out = [0.0; 2];
        reduce(ReduceOp::Max, &x, 1, 3, 2, &mut out);
        assert!(out[1].is_nan() && out[0] == 3.0);
    }

    #[test]
    fn long_sums_stay_accurate() {
        // 1 + 2^-24 repeated: a plain f32 running sum stalls once it reaches 2^24.
        let x = vec![1.0f32; 1 << 25];
        let mut out = [0.0];
        reduce(ReduceOp::Sum, &x, 1, x.len(), 1, &mut out);
        assert_eq!(out[0], (1u32 << 25) as f32);
        let mut out = [0.0; 2];
        reduce(ReduceOp::Sum, &x, 1, x.len() / 2, 2, &mut out);
        assert_eq!(out, [(1u32 << 24) as f32; 2]);
    }

    #[test]
    fn softmax_matches_reference() {
        for &(rows, n) in &[(1, 1), (3, 5), (7, 33), (2, 1000), (300, 257)] {
            let x: Vec<f32> = values(rows * n, n as u32)
                .iter()
                .map(|v| v * 30.0)
                .collect();
            let mut out = vec![0.0; x.len()];
            softmax_last(&x, n, &mut out);
            for (x, out) in x.chunks(n).zip(out.chunks(n)) {
                let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
                let s: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
                for (&v, &o) in x.iter().zip(out) {
                    let w = (v as f64 - m).exp() / s;
                    // `v - max` is rounded to f32: an error that grows with its size.
                    let tol = (5e-7 + 1.2e-7 * (v as f64 - m).abs()) * w;
                    assert!((o as f64 - w).abs() <= tol + 1e-30, "{o} {w}");
                }
            }
        }
        // Large logits do not overflow.
        let mut out = [0.0; 2];
        softmax_last(&[1000.0, 1000.0], 2, &mut out);
        assert_eq!(out, [0.5, 0.5]);
    }
}
