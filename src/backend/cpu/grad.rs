//! Backward kernels for training: the gradients of a linear layer, of the layer and RMS norms,
//! of the tanh GELU and of attention. Statistics and reductions over a row are taken in f64.

use rayon::prelude::*;

use super::gemm::{sgemm, MatRef};
use crate::error::Result;
use crate::tensor::Weight;

/// Weight rows widened at a time by [`linear_input_grad`]: bounds the f32 copy of the weight.
const WIDEN_PANEL_BYTES: usize = 4 << 20;

/// Rows handed to one rayon task by the row-wise kernels.
const MIN_ROWS_PER_TASK: usize = 16;

/// `dx = dy · W` for a linear layer `y = x · Wᵀ + b`: `dy` is `[rows, n_out]`, `weight`
/// `[n_out, n_in]` in any float dtype (widened panel by panel, never whole), `dx`
/// `[rows, n_in]`.
///
/// # Panics
/// If the slice lengths disagree with the weight (a bug in the caller).
pub fn linear_input_grad(dy: &[f32], rows: usize, weight: &Weight, dx: &mut [f32]) -> Result<()> {
    let (n_out, n_in) = (weight.dims()[0], weight.dims()[1]);
    assert!(dy.len() == rows * n_out && dx.len() == rows * n_in);
    dx.fill(0.0);
    if rows == 0 || n_out == 0 || n_in == 0 {
        return Ok(());
    }
    let threads = rayon::current_num_threads();
    let panel = (WIDEN_PANEL_BYTES / 4 / n_in).clamp(1, n_out);
    let mut w = vec![0.0f32; panel * n_in];
    for o0 in (0..n_out).step_by(panel) {
        let n = panel.min(n_out - o0);
        let w = &mut w[..n * n_in];
        weight.widen_rows(o0..o0 + n, w)?;
        let dy_cols = MatRef {
            data: &dy[o0..],
            rows,
            cols: n,
            row_stride: n_out,
            col_stride: 1,
        };
        sgemm(dy_cols, MatRef::row_major(w, n, n_in), dx, true, threads);
    }
    Ok(())
}

/// `dW = dyᵀ · x` for a linear layer `y = x · Wᵀ`: `dy` is `[rows, n_out]`, `x` `[rows, n_in]`,
/// `dw` `[n_out, n_in]`.
///
/// # Panics
/// If the slice lengths disagree (a bug in the caller).
pub fn linear_weight_grad(dy: &[f32], x: &[f32], rows: usize, dw: &mut [f32]) {
    let (n_out, n_in) = (dy.len() / rows.max(1), x.len() / rows.max(1));
    assert!(dy.len() == rows * n_out && x.len() == rows * n_in && dw.len() == n_out * n_in);
    let threads = rayon::current_num_threads();
    sgemm(
        MatRef::row_major(dy, rows, n_out).t(),
        MatRef::row_major(x, rows, n_in),
        dw,
        false,
        threads,
    );
}

/// The input gradient of layer norm (`centered`) or RMS norm over rows of `dim` values:
/// `y = x̂·w (+ b)` with `x̂ = (x − mean)·r` (layer norm) or `x̂ = x·r` (RMS norm),
/// `r = 1/sqrt(var + eps)` (`var` the mean square of `x − mean` or of `x`); then
/// `dx = r·(g − mean(g) − x̂·mean(g·x̂))` (layer norm) or `dx = r·(g − x̂·mean(g·x̂))` with
/// `g = dy·w`. Rows are processed in parallel.
///
/// # Panics
/// If the slice lengths disagree (a bug in the caller).
pub fn norm_grad(
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dim: usize,
    weight: Option<&[f32]>,
    eps: f32,
    centered: bool,
) {
    assert!(x.len() == dy.len() && x.len() == dx.len());
    assert!(weight.is_none_or(|w| w.len() == dim));
    if dim == 0 {
        return;
    }
    let n = dim as f64;
    dx.par_chunks_mut(dim)
        .zip(x.par_chunks(dim).zip(dy.par_chunks(dim)))
        .with_min_len(MIN_ROWS_PER_TASK)
        .for_each(|(dx, (x, dy))| {
            let mean = if centered {
                x.iter().map(|&v| v as f64).sum::<f64>() / n
            } else {
                0.0
            };
            let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            let r = 1.0 / (var + eps as f64).sqrt();
            let g = |i: usize| dy[i] as f64 * weight.map_or(1.0, |w| w[i] as f64);
            let (mut g_sum, mut gx_sum) = (0.0, 0.0);
            for (i, &v) in x.iter().enumerate() {
                g_sum += g(i);
                gx_sum += g(i) * (v as f64 - mean) * r;
            }
            let g_mean = if centered { g_sum / n } else { 0.0 };
            let gx_mean = gx_sum / n;
            for (i, (d, &v)) in dx.iter_mut().zip(x).enumerate() {
                let xhat = (v as f64 - mean) * r;
                *d = (r * (g(i) - g_mean - xhat * gx_mean)) as f32;
            }
        });
}

/// `dx = dy · gelu_tanh'(x)`, elementwise.
///
/// # Panics
/// If the slice lengths disagree (a bug in the caller).
pub fn gelu_tanh_grad(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
    const A: f64 = 0.044715;
    assert!(x.len() == dy.len() && x.len() == dx.len());
    dx.par_iter_mut()
        .zip(x.par_iter().zip(dy.par_iter()))
        .with_min_len(4096)
        .for_each(|(d, (&x, &g))| {
            let xd = x as f64;
            let u = SQRT_2_OVER_PI * (xd + A * xd * xd * xd);
            // gelu_tanh(x) = x·s with s = sigmoid(2u); s' = 2·s·(1 − s)·u'.
            let s = 1.0 / (1.0 + (-2.0 * u).exp());
            let du = SQRT_2_OVER_PI * (1.0 + 3.0 * A * xd * xd);
            *d = (g as f64 * (s + xd * 2.0 * s * (1.0 - s) * du)) as f32;
        });
}

/// The shape of one [`attention_grad`] call: q `[batch, q_len, heads, head_dim]`, k and v
/// `[batch, kv_len, heads, head_dim]`.
#[derive(Debug, Clone, Copy)]
pub struct AttentionDims {
    /// Batch entries.
    pub batch: usize,
    /// Query tokens.
    pub q_len: usize,
    /// Key/value tokens.
    pub kv_len: usize,
    /// Heads.
    pub heads: usize,
    /// Channels per head.
    pub head_dim: usize,
}

/// Query rows whose logits [`attention_grad`] holds at once per head: bounds its memory to
/// `QUERY_TILE · kv_len` values per task.
const QUERY_TILE: usize = 128;

/// The gradients of `o = softmax(scale · q kᵀ) v` (no mask, no bias) with respect to q, k and v,
/// given `dout = do`: the probabilities are recomputed tile by tile (nothing from the forward is
/// kept), then `dv = Pᵀ do`, `dP = do vᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))`,
/// `dq = scale · dS k`, `dk = scale · dSᵀ q`. Heads run in parallel.
///
/// # Panics
/// If the slice lengths disagree with `d` (a bug in the caller).
#[allow(clippy::too_many_arguments)]
pub fn attention_grad<'a>(
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    dout: &'a [f32],
    d: AttentionDims,
    scale: f32,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let AttentionDims {
        batch,
        q_len,
        kv_len,
        heads,
        head_dim: hd,
    } = d;
    let row = heads * hd;
    assert!(q.len() == batch * q_len * row && dout.len() == q.len() && dq.len() == q.len());
    assert!(k.len() == batch * kv_len * row && v.len() == k.len());
    assert!(dk.len() == k.len() && dv.len() == k.len());
    if q_len == 0 || kv_len == 0 || hd == 0 {
        dq.fill(0.0);
        dk.fill(0.0);
        dv.fill(0.0);
        return;
    }
    let per_head: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..batch * heads)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / heads, bh % heads);
            // Rows `r0..r0 + rows` of head `h` of batch entry `b`, as a strided [rows, hd] view.
            let head = |data: &'a [f32], len: usize, r0: usize, rows: usize| MatRef {
                data: &data[(b * len + r0) * row + h * hd..],
                rows,
                cols: hd,
                row_stride: row,
                col_stride: 1,
            };
            let (kh, vh) = (head(k, kv_len, 0, kv_len), head(v, kv_len, 0, kv_len));
            let mut dq_h = vec![0.0f32; q_len * hd];
            let mut dk_h = vec![0.0f32; kv_len * hd];
            let mut dv_h = vec![0.0f32; kv_len * hd];
            let mut p = vec![0.0f32; QUERY_TILE.min(q_len) * kv_len];
            let mut dp = vec![0.0f32; p.len()];
            for r0 in (0..q_len).step_by(QUERY_TILE) {
                let rows = QUERY_TILE.min(q_len - r0);
                let (qt, dot) = (head(q, q_len, r0, rows), head(dout, q_len, r0, rows));
                let (p, dp) = (&mut p[..rows * kv_len], &mut dp[..rows * kv_len]);
                sgemm(qt, kh.t(), p, false, 1);
                for pr in p.chunks_exact_mut(kv_len) {
                    let max = pr.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s * scale));
                    let mut sum = 0.0f64;
                    for s in pr.iter_mut() {
                        *s = (*s * scale - max).exp();
                        sum += *s as f64;
                    }
                    let inv = (1.0 / sum) as f32;
                    pr.iter_mut().for_each(|s| *s *= inv);
                }
                sgemm(dot, vh.t(), dp, false, 1);
                for (pr, dpr) in p.chunks_exact(kv_len).zip(dp.chunks_exact_mut(kv_len)) {
                    let delta: f64 = pr
                        .iter()
                        .zip(dpr.iter())
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum();
                    for (d, &pv) in dpr.iter_mut().zip(pr) {
                        *d = pv * (*d - delta as f32) * scale;
                    }
                }
                let ds = MatRef::row_major(dp, rows, kv_len);
                let pm = MatRef::row_major(p, rows, kv_len);
                sgemm(ds, kh, &mut dq_h[r0 * hd..(r0 + rows) * hd], false, 1);
                sgemm(ds.t(), qt, &mut dk_h, true, 1);
                sgemm(pm.t(), dot, &mut dv_h, true, 1);
            }
            (dq_h, dk_h, dv_h)
        })
        .collect();
    for (bh, (dq_h, dk_h, dv_h)) in per_head.iter().enumerate() {
        let (b, h) = (bh / heads, bh % heads);
        scatter_head(dq, dq_h, b * q_len, row, h * hd, hd);
        scatter_head(dk, dk_h, b * kv_len, row, h * hd, hd);
        scatter_head(dv, dv_h, b * kv_len, row, h * hd, hd);
    }
}

/// Writes a head's `[tokens, hd]` rows into `[.., tokens, heads·hd]` at token `t0`, column `c0`.
fn scatter_head(out: &mut [f32], head: &[f32], t0: usize, row: usize, c0: usize, hd: usize) {
    for (t, src) in head.chunks_exact(hd).enumerate() {
        let at = (t0 + t) * row + c0;
        out[at..at + hd].copy_from_slice(src);
    }
}
