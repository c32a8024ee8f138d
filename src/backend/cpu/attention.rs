//! Scaled dot-product attention in tiles with an online softmax (the flash-attention scheme).
//!
//! Each parallel job owns one (batch, head, query tile). It walks the keys in tiles: the logits
//! of a tile come from one sgemm on strided views of q and k (the `[S, H, D]` layout has row
//! stride `H·D`), are folded into a running row maximum and row sum, and the softmax-weighted
//! values are accumulated with a second sgemm. Memory is O(tile) per job and O(tokens·D) overall,
//! never O(tokens²). The exponentials, the other hot loop, use a polynomial that vectorises.

use rayon::prelude::*;

use super::gemm::{sgemm, MatRef, RawMatMut};
use crate::error::{Error, Result};

/// Queries per job.
const TILE_Q: usize = 128;
/// Keys per logits tile.
const TILE_K: usize = 256;

/// The sizes of an attention call: q is `[batch, q_len, heads, head_dim]`, k and v are
/// `[batch, kv_len, heads, head_dim]`, all row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    /// Batch size.
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

/// What changes the logits: `softmax(scale · q kᵀ + bias)`, keys limited per batch.
#[derive(Clone, Copy, Debug)]
pub struct AttnOpts<'a> {
    /// Multiplier of q kᵀ.
    pub scale: f32,
    /// Batch `b` attends only to its first `kv_lens[b]` keys.
    pub kv_lens: Option<&'a [usize]>,
    /// Added to the logits: `[heads, q_len, kv_len]`, or `[batch, heads, q_len, kv_len]` when
    /// `bias_per_batch`.
    pub bias: Option<&'a [f32]>,
    /// Whether `bias` has a batch dimension.
    pub bias_per_batch: bool,
}

/// Computes attention into `out` (`[batch, q_len, heads, head_dim]`). A query row whose keys are
/// all masked (`kv_lens[b] == 0`, or a bias of `-inf` everywhere) gets zeros.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: AttnDims,
    opts: &AttnOpts<'_>,
    out: &mut [f32],
) -> Result<()> {
    let AttnDims {
        batch,
        q_len,
        kv_len,
        heads,
        head_dim: d,
    } = dims;
    let q_size = batch * q_len * heads * d;
    let kv_size = batch * kv_len * heads * d;
    let bias_size = if opts.bias_per_batch { batch } else { 1 } * heads * q_len * kv_len;
    if q.len() != q_size || out.len() != q_size || k.len() != kv_size || v.len() != kv_size {
        return Err(Error::InvalidArgument(format!(
            "attention: buffer sizes do not match {dims:?}"
        )));
    }
    if opts.bias.is_some_and(|b| b.len() != bias_size) {
        return Err(Error::InvalidArgument(format!(
            "attention: bias size does not match {dims:?}"
        )));
    }
    if let Some(lens) = opts.kv_lens {
        if lens.len() != batch || lens.iter().any(|&l| l > kv_len) {
            return Err(Error::InvalidArgument(format!(
                "attention: kv_lens {lens:?} for batch {batch} and {kv_len} keys"
            )));
        }
    }
    if q_size == 0 {
        return Ok(());
    }
    let q_tiles = q_len.div_ceil(TILE_Q);
    let row = heads * d;
    let out_all = RawMatMut {
        ptr: out.as_mut_ptr(),
        rows: batch * q_len,
        cols: row,
        row_stride: row,
    };
    (0..batch * heads * q_tiles).into_par_iter().for_each_init(
        || Scratch::new(d),
        |scratch, job| {
            let (b, h, t) = (
                job / (heads * q_tiles),
                job / q_tiles % heads,
                job % q_tiles,
            );
            let q0 = t * TILE_Q;
            let tq = TILE_Q.min(q_len - q0);
            let dst = out_all.block(b * q_len + q0, h * d, tq, d);
            let job = Job {
                q: &q[(b * q_len + q0) * row + h * d..],
                k: &k[b * kv_len * row + h * d..],
                v: &v[b * kv_len * row + h * d..],
                bias: opts.bias.map(|bias| {
                    let plane = if opts.bias_per_batch {
                        b * heads + h
                    } else {
                        h
                    };
                    &bias[(plane * q_len + q0) * kv_len..]
                }),
                tq,
                keys: opts.kv_lens.map_or(kv_len, |l| l[b]),
                kv_len,
                row,
                d,
                scale: opts.scale,
            };
            // SAFETY: jobs write disjoint blocks (distinct batch, head or query rows) of `out`,
            // which this function borrows exclusively for the whole parallel loop.
            unsafe { job.run(scratch, dst) };
        },
    );
    Ok(())
}

/// Per-thread buffers, reused across jobs.
struct Scratch {
    /// Scaled queries `[TILE_Q, d]`.
    q: Vec<f32>,
    /// Logits, then probabilities `[TILE_Q, TILE_K]`.
    s: Vec<f32>,
    /// Unnormalised output `[TILE_Q, d]`.
    o: Vec<f32>,
    /// Running row maxima and sums.
    m: Vec<f32>,
    l: Vec<f32>,
}

impl Scratch {
    fn new(d: usize) -> Self {
        Scratch {
            q: vec![0.0; TILE_Q * d],
            s: vec![0.0; TILE_Q * TILE_K],
            o: vec![0.0; TILE_Q * d],
            m: vec![0.0; TILE_Q],
            l: vec![0.0; TILE_Q],
        }
    }
}

/// One (batch, head, query tile): slices start at the job's first element.
struct Job<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    /// Row `i` of the tile's bias starts at `i * kv_len`.
    bias: Option<&'a [f32]>,
    tq: usize,
    /// Keys attended to (`kv_lens[b]`).
    keys: usize,
    kv_len: usize,
    /// Stride between tokens in q, k, v and the output (`heads · d`).
    row: usize,
    d: usize,
    scale: f32,
}

impl<'a> Job<'a> {
    /// # Safety
    /// `dst` must be valid for writes and not accessed by anyone else during the call.
    unsafe fn run(&self, s: &mut Scratch, dst: RawMatMut) {
        let (tq, d) = (self.tq, self.d);
        let qs = &mut s.q[..tq * d];
        for (i, r) in qs.chunks_exact_mut(d).enumerate() {
            let src = &self.q[i * self.row..i * self.row + d];
            r.iter_mut()
                .zip(src)
                .for_each(|(o, &x)| *o = x * self.scale);
        }
        let o = &mut s.o[..tq * d];
        o.fill(0.0);
        s.m[..tq].fill(f32::NEG_INFINITY);
        s.l[..tq].fill(0.0);
        let qv = MatRef::row_major(qs, tq, d);
        for k0 in (0..self.keys).step_by(TILE_K) {
            let tk = TILE_K.min(self.keys - k0);
            let kv = |data: &'a [f32]| MatRef {
                data: &data[k0 * self.row..],
                rows: tk,
                cols: d,
                row_stride: self.row,
                col_stride: 1,
            };
            let logits = &mut s.s[..tq * tk];
            sgemm(qv, kv(self.k).t(), logits, false, 1);
            let bias = self.bias.map(|b| (&b[k0..], self.kv_len));
            softmax_update(logits, tk, bias, &mut s.m[..tq], &mut s.l[..tq], o, d);
            sgemm(MatRef::row_major(logits, tq, tk), kv(self.v), o, true, 1);
        }
        for (i, r) in o.chunks_exact(d).enumerate() {
            let l = s.l[i];
            let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
            // SAFETY: row `i < tq` of `dst` holds `d` elements we may write (the caller's contract).
            let out = unsafe { std::slice::from_raw_parts_mut(dst.ptr.add(i * dst.row_stride), d) };
            out.iter_mut().zip(r).for_each(|(y, &x)| *y = x * inv);
        }
    }
}

/// Folds a logits tile (`rows × tk`, row-major) into the running softmax: adds the bias rows
/// (`(slice, row stride)`), updates the row maxima `m` and sums `l`, rescales the accumulated
/// output rows `o` (`d` wide) and leaves `exp(logit - m)` in `s` for the value GEMM.
fn softmax_update(
    s: &mut [f32],
    tk: usize,
    bias: Option<(&[f32], usize)>,
    m: &mut [f32],
    l: &mut [f32],
    o: &mut [f32],
    d: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature.
            return unsafe { softmax_update_avx512(s, tk, bias, m, l, o, d) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features.
            return unsafe { softmax_update_avx2(s, tk, bias, m, l, o, d) };
        }
    }
    softmax_update_generic(s, tk, bias, m, l, o, d)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn softmax_update_avx512(
    s: &mut [f32],
    tk: usize,
    bias: Option<(&[f32], usize)>,
    m: &mut [f32],
    l: &mut [f32],
    o: &mut [f32],
    d: usize,
) {
    softmax_update_generic(s, tk, bias, m, l, o, d)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_update_avx2(
    s: &mut [f32],
    tk: usize,
    bias: Option<(&[f32], usize)>,
    m: &mut [f32],
    l: &mut [f32],
    o: &mut [f32],
    d: usize,
) {
    softmax_update_generic(s, tk, bias, m, l, o, d)
}

/// Lanes of the manual reductions: wide enough for AVX-512, and the compiler splits it for
/// narrower vectors.
const LANES: usize = 16;

#[inline(always)]
fn softmax_update_generic(
    s: &mut [f32],
    tk: usize,
    bias: Option<(&[f32], usize)>,
    m: &mut [f32],
    l: &mut [f32],
    o: &mut [f32],
    d: usize,
) {
    for (i, row) in s.chunks_exact_mut(tk).enumerate() {
        if let Some((b, stride)) = bias {
            row.iter_mut()
                .zip(&b[i * stride..i * stride + tk])
                .for_each(|(x, &y)| *x += y);
        }
        let m_new = row_max(row).max(m[i]);
        if m_new == f32::NEG_INFINITY {
            // Every key so far is masked: nothing to add, and exp(-inf - -inf) would be NaN.
            row.fill(0.0);
            continue;
        }
        let sum = exp_sub_sum(row, m_new);
        let corr = exp_approx(m[i] - m_new);
        l[i] = l[i] * corr + sum;
        m[i] = m_new;
        if corr != 1.0 {
            o[i * d..(i + 1) * d].iter_mut().for_each(|x| *x *= corr);
        }
    }
}

#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a });
    acc.iter().fold(tail, |a, &x| if x > a { x } else { a })
}

/// Replaces each `x` by `exp(x - max)` and returns their sum.
#[inline(always)]
fn exp_sub_sum(row: &mut [f32], max: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (a, x) in acc.iter_mut().zip(c.iter_mut()) {
            *x = exp_approx(*x - max);
            *a += *x;
        }
    }
    let mut sum = 0.0;
    for x in chunks.into_remainder() {
        *x = exp_approx(*x - max);
        sum += *x;
    }
    sum + acc.iter().sum::<f32>()
}

/// `e^x` for `x <= 0` to about 2e-7 relative error, branch-free so that loops vectorise:
/// `e^x = 2^n · 2^f` with `n` the nearest integer to `x·log2(e)` and a degree-6 polynomial for
/// `2^f`, `|f| <= 1/2`. Below -87 (where `e^x` nears the smallest normal float) it returns 0.
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    // Adding 1.5·2^23 rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // A comparison, not f32::max, so that NaN propagates.
    let t = if x < -87.0 { -87.0 } else { x } * std::f32::consts::LOG2_E;
    let r = t + ROUND;
    let n = r - ROUND;
    let f = (t - n) * std::f32::consts::LN_2;
    let p = 1.0
        + f * (1.0
            + f * (0.5
                + f * (1.0 / 6.0 + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f * (1.0 / 720.0))))));
    let pow2n = f32::from_bits(r.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    if x < -87.0 {
        0.0
    } else {
        p * pow2n
    }
}
